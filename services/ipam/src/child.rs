//! `ipam up` as a child process of this binary, for the commands that drive one (`bench`,
//! `demo`): started, watched until ready, its API address read from its log, stopped by pid.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a child may take to say it is ready (a rebuild of a million reservations included).
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// A running `ipam up`.
#[derive(Debug)]
pub struct UpProcess {
    pub child: Child,
    /// Where its API listens, such as `http://127.0.0.1:41234` (empty when it runs none).
    pub api_url: String,
    /// How long it took from start to ready.
    pub ready_after: Duration,
}

/// The log filter of a child: `info`, which says when it is ready and where its API listens (what
/// [`UpProcess::start_service`] waits for), with the per-target directives of the caller's own
/// `IPAM_LOG` (say `ipam_log_kafka::member=debug`, a line per Kafka commit). A bare level there is
/// the caller's own (tests run with `warn`) and is not passed on: it would silence the lines the
/// parent waits for.
fn child_filter(asked: Option<&str>) -> String {
    let mut filter = "info".to_owned();
    for directive in asked.unwrap_or("").split(',').map(str::trim).filter(|d| d.contains('=')) {
        filter.push(',');
        filter.push_str(directive);
    }
    filter
}

impl UpProcess {
    /// Starts `ipam <args>` (ending in `up ...`, with `--api-bind 127.0.0.1:0`) and waits until it
    /// says it is ready.
    pub fn start(args: &[String]) -> anyhow::Result<UpProcess> {
        UpProcess::start_service(args, true, None)
    }

    /// Starts `ipam <args>` (any command that says `ipam is ready`) and waits until it is ready;
    /// with `api`, also until it names its API address (empty otherwise). Its log lines are copied
    /// to `log_file` when one is given, else dropped.
    pub fn start_service(args: &[String], api: bool, log_file: Option<&Path>) -> anyhow::Result<UpProcess> {
        let started = Instant::now();
        let mut copy = match log_file {
            Some(path) => Some(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?),
            None => None,
        };
        let mut child = Command::new(std::env::current_exe().context("finding the ipam binary")?)
            .args(args)
            .env("IPAM_LOG", child_filter(std::env::var("IPAM_LOG").ok().as_deref()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ipam")?;
        let stderr = child.stderr.take().context("no stderr")?;
        // A thread reads its log for as long as it runs (so it never blocks on a full pipe),
        // copies it, and hands the lines over until it is ready: waiting here on the channel
        // rather than on the pipe keeps the deadline even when the child writes nothing.
        let (sender, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut sender = Some(sender);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(file) = copy.as_mut() {
                    let _ = writeln!(file, "{line}");
                }
                if sender.as_ref().is_some_and(|s| s.send(line).is_err()) {
                    sender = None;
                }
            }
        });
        let deadline = started + READY_TIMEOUT;
        let mut api_url = None;
        let mut ready = false;
        while !(ready && (api_url.is_some() || !api)) {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(rest) = line.split("API listening on ").nth(1) {
                        api_url = rest.split_whitespace().next().map(str::to_owned);
                    }
                    // A process without drivers says it is ready before its API listens.
                    ready |= line.contains("ipam is ready");
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("ipam {} did not become ready within {} s", args.join(" "), READY_TIMEOUT.as_secs());
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = child.wait();
                    bail!("ipam {} ended before it was ready", args.join(" "));
                }
            }
        }
        let api_url = api_url.unwrap_or_default();
        Ok(UpProcess { child, api_url, ready_after: started.elapsed() })
    }

    /// SIGKILL: no chance to commit or snapshot.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, and wait for the clean stop.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::child_filter;

    #[test]
    fn a_child_logs_at_info_with_the_callers_targets_but_not_its_level() {
        assert_eq!(child_filter(None), "info");
        assert_eq!(child_filter(Some("warn")), "info");
        assert_eq!(child_filter(Some("ipam_log_kafka::member=debug")), "info,ipam_log_kafka::member=debug");
        assert_eq!(child_filter(Some("warn, rdkafka=trace,")), "info,rdkafka=trace");
    }
}
