//! A Kafka broker of a test's own, run by `scripts/kafka-broker.sh` from a state directory of its
//! own, for the tests that kill and restart the broker: the broker the other tests share
//! (`IPAM_KAFKA_BOOTSTRAP`) is left alone. Std only, since two test crates include this file:
//! `ipam-tests` as a module of its library, and `ipam-log-kafka`'s tests by path.

// A test fixture: a failure here is a broken test, not bad input.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A single-node broker; stopped (and its directory removed unless the test failed) when dropped.
#[derive(Debug)]
pub struct ScriptBroker {
    dir: PathBuf,
    bootstrap: String,
}

impl ScriptBroker {
    /// Starts a fresh broker on free 127.0.0.1 ports and waits until it answers.
    pub fn start() -> ScriptBroker {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "ipam-test-broker-{}-{}-{}",
            std::process::id(),
            nanos % 1_000_000_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let bootstrap = run(&dir, "start");
        assert!(bootstrap.starts_with("127.0.0.1:"), "kafka-broker.sh start printed no address: {bootstrap:?}");
        ScriptBroker { dir, bootstrap }
    }

    /// `host:port` of the broker.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Kills the broker with SIGKILL, like a crash.
    pub fn kill(&self) {
        run(&self.dir, "kill");
    }

    /// Starts the killed broker again on the same ports with the same data, and returns how long
    /// it took to answer (KRaft refuses the re-registration until the old session expires).
    pub fn restart(&self) -> Duration {
        let started = Instant::now();
        let bootstrap = run(&self.dir, "restart");
        assert_eq!(bootstrap, self.bootstrap, "the broker came back on another address");
        started.elapsed()
    }

    /// What Apache's `TransactionsCommand` says of the broker's transactions: every transactional
    /// id with its state, the transactions that hang (a partition holds an open transaction its
    /// coordinator does not know), the state of those not complete, and the producers of
    /// `partitions` (their open transactions' first offsets). For a failure's message.
    pub fn describe_transactions(&self, partitions: &[(&str, i32)]) -> String {
        let command = |args: &[&str]| {
            let mut full = vec!["org.apache.kafka.tools.TransactionsCommand", "--bootstrap-server", &self.bootstrap];
            full.extend_from_slice(args);
            format!("$ TransactionsCommand {}\n{}", args.join(" "), tool(&self.dir, &full))
        };
        let list = command(&["list"]);
        let mut said = vec![list.clone(), command(&["find-hanging", "--broker-id", "1"])];
        for line in list.lines().skip(2) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [id, _, _, state] = fields[..]
                && state != "CompleteCommit"
                && state != "CompleteAbort"
                && state != "Empty"
            {
                said.push(command(&["describe", "--transactional-id", id]));
            }
        }
        for (topic, partition) in partitions {
            said.push(command(&["describe-producers", "--topic", topic, "--partition", &partition.to_string()]));
        }
        said.join("\n")
    }
}

impl Drop for ScriptBroker {
    /// Stops the broker; its directory (data and logs) is removed, or kept and named when the test
    /// failed, so that what the broker held (its logs, `kafka-dump-log` of its topics, the state of
    /// its transactions after a restart on the same directory) can be read afterwards.
    fn drop(&mut self) {
        run(&self.dir, "stop");
        if std::thread::panicking() {
            eprintln!("the test failed: its broker's directory is kept at {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `scripts/kafka-broker.sh`, found above the crate.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("scripts/kafka-broker.sh"))
        .find(|script| script.exists())
        .expect("scripts/kafka-broker.sh above the crate")
}

/// What `scripts/kafka-broker.sh tool ARGS` printed (stdout, then stderr), for a failure's message:
/// a tool that fails says why there.
fn tool(dir: &Path, args: &[&str]) -> String {
    match Command::new("bash").arg(script()).arg("tool").args(args).env("IPAM_KAFKA_DIR", dir).output() {
        Ok(output) => {
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
        }
        Err(error) => format!("could not run kafka-broker.sh tool: {error}"),
    }
}

/// Runs `scripts/kafka-broker.sh command` for the state directory `dir`; returns the address of
/// its last stdout line (`KAFKA_BOOTSTRAP=...`), or "" when it prints none.
fn run(dir: &Path, command: &str) -> String {
    let output = Command::new("bash")
        .arg(script())
        .arg(command)
        .env("IPAM_KAFKA_DIR", dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/kafka-broker.sh");
    assert!(output.status.success(), "kafka-broker.sh {command} failed ({})", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    stdout.lines().last().unwrap_or_default().trim_start_matches("KAFKA_BOOTSTRAP=").to_owned()
}
