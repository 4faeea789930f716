//! Shared by the integration tests, the benchmarks and the `log-child` helper process: how to open
//! each log backend from a one-line spec (so a child process opens the same log as its parent),
//! network namespaces for the DHCP tests ([`netns`]), and a Kafka broker a test may kill
//! ([`kafka_broker`]).

pub mod kafka_broker;
pub mod netns;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use ipam_core::{Envelope, Event, EventId, Timestamp};
use ipam_log::sqlite::Durability;
use ipam_log::{EventLog, MemoryLog, OutRecord, SqliteLog};
use ipam_log_kafka::{KafkaLog, KafkaOptions};

/// The `ipam` binary next to the running test or benchmark executable (`target/<profile>/ipam`).
pub fn ipam_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable has a path");
    let binary = exe.parent().and_then(std::path::Path::parent).expect("target/<profile>/deps").join("ipam");
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
