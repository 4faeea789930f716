//! Shared by the integration tests, the benchmarks and the `log-child` helper process: how to open
//! each log backend from a one-line spec (so a child process opens the same log as its parent),
//! network namespaces for the DHCP tests ([`netns`]), a Kafka broker a test may kill
//! ([`kafka_broker`]), and the suite's one seeded generator ([`rng`]).

pub mod kafka_broker;
pub mod netns;
pub mod rng;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ipam_core::{Envelope, Event, EventId, Timestamp};
use ipam_log::sqlite::Durability;
use ipam_log::{EventLog, MemoryLog, OutRecord, SqliteLog};
use ipam_log_kafka::{KafkaLog, KafkaOptions};

/// The `ipam` binary next to the running test or benchmark executable (`target/<profile>/ipam`).
pub fn ipam_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable has a path");
    let binary = exe.parent().and_then(Path::parent).expect("target/<profile>/deps").join("ipam");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p ipam` (./test.sh builds it before testing)",
        binary.display()
    );
    binary
}

/// A record of `event` as a client would publish it, on the event's own topic (unprefixed) and
/// key, in an envelope with the given id, source and time.
pub fn event_record(id: EventId, source: &str, time: Timestamp, event: Event) -> OutRecord {
    let envelope = Envelope { id, source: source.to_owned(), time, subject: None, event };
    OutRecord { topic: envelope.event.topic().name().to_owned(), key: envelope.event.key(), value: envelope.to_bytes() }
}

/// The broker the Kafka tests use, from `IPAM_KAFKA_BOOTSTRAP`; the message says how to get one.
pub fn kafka_bootstrap() -> String {
    std::env::var("IPAM_KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!(
            "IPAM_KAFKA_BOOTSTRAP is not set. The Kafka tests need a broker: run ./test.sh, which starts one, \
             or `scripts/kafka-broker.sh start` and export the KAFKA_BOOTSTRAP address it prints"
        )
    })
}

/// A topic prefix no other test, nor an earlier run, uses on a shared broker: `{label}{digits}.`.
pub fn unique_prefix(label: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{label}{}.", nanos % 1_000_000_000_000)
}

/// The global flags that run an `ipam` service as `instance` of a test's deployment on Kafka:
/// the broker, the topic prefix, 2 partitions, a data directory of its own under `dir`, a 6 s
/// session timeout (the broker's least, for quick takeovers), and `/metrics` and the API on free
/// local ports. The subcommand and its own flags follow.
pub fn kafka_service_args(bootstrap: &str, prefix: &str, dir: &Path, instance: &str) -> Vec<String> {
    [
        "--kafka",
        bootstrap,
        "--kafka-session-timeout-ms",
        "6000",
        "--topic-prefix",
        prefix,
        "--partitions",
        "2",
        "--instance",
        instance,
        "--data-dir",
        &dir.join(instance).display().to_string(),
        "--metrics-bind",
        "127.0.0.1:0",
        "--api-bind",
        "127.0.0.1:0",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Waits until `done` holds, failing the test after `within`; answers how long it took.
pub fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "timed out after {within:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// Which backend and where: `memory`, `sqlite:<dir>`, `kafka:<bootstrap servers>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    Memory,
    Sqlite(PathBuf),
    Kafka(String),
}

impl BackendSpec {
    pub fn parse(text: &str) -> anyhow::Result<BackendSpec> {
        match text.split_once(':') {
            None if text == "memory" => Ok(BackendSpec::Memory),
            Some(("sqlite", dir)) => Ok(BackendSpec::Sqlite(PathBuf::from(dir))),
            Some(("kafka", bootstrap)) => Ok(BackendSpec::Kafka(bootstrap.to_owned())),
            _ => bail!("unknown backend spec `{text}` (expected memory, sqlite:<dir> or kafka:<bootstrap>)"),
        }
    }

    pub fn to_arg(&self) -> String {
        match self {
            BackendSpec::Memory => "memory".to_owned(),
            BackendSpec::Sqlite(dir) => format!("sqlite:{}", dir.display()),
            BackendSpec::Kafka(bootstrap) => format!("kafka:{bootstrap}"),
        }
    }

    /// Whether records survive the process (the crash tests need a durable backend).
    pub fn is_durable(&self) -> bool {
        !matches!(self, BackendSpec::Memory)
    }

    pub fn open(&self) -> anyhow::Result<Arc<dyn EventLog>> {
        Ok(match self {
            BackendSpec::Memory => Arc::new(MemoryLog::new()),
            BackendSpec::Sqlite(dir) => Arc::new(
                SqliteLog::open(dir, Durability::ProcessCrash)
                    .with_context(|| format!("opening the embedded log in {}", dir.display()))?,
            ),
            BackendSpec::Kafka(bootstrap) => {
                let mut options = KafkaOptions::new(bootstrap);
                // Short, so that a test's killed transaction is aborted in seconds, not a minute.
                options.transaction_timeout_ms = 10_000;
                Arc::new(KafkaLog::connect(options).with_context(|| format!("connecting to Kafka at {bootstrap}"))?)
            }
        })
    }
}
