//! How the Kafka backend is configured: typed options for what the backend needs, a pass-through
//! map of raw librdkafka settings for everything else (SASL, TLS, buffering), and the one place
//! that turns them into the librdkafka configuration of each client the backend creates.
//!
//! The backend owns the settings its guarantees rest on (isolation level, idempotence, group and
//! transactional ids, ...). A pass-through key that names one of them is refused rather than
//! silently overridden or silently ignored: either way the log would not be what the caller
//! thinks it is.

use std::collections::BTreeMap;
use std::fmt;

use ipam_log::LogError;
use rdkafka::ClientConfig;

/// Settings the typed options or the backend itself control; the pass-through map must not name
/// them. Aliases that librdkafka accepts for the same setting are listed too.
pub const RESERVED_KEYS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "group.id",
    // The classic protocol is what `partition.assignment.strategy` applies to.
    "group.protocol",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "transactional.id",
    "transaction.timeout.ms",
    "isolation.level",
    "enable.auto.commit",
    "auto.offset.reset",
    "enable.partition.eof",
    "allow.auto.create.topics",
    "enable.idempotence",
    "acks",
    "request.required.acks",
];

/// How to reach and use the Kafka cluster.
///
/// Precedence: the typed fields win; the pass-through map adds librdkafka settings the typed
/// fields do not cover, and naming a typed or backend-owned setting there is a
/// [`LogError::Config`].
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaOptions {
    /// `host:port[,host:port...]` of one or more brokers.
    pub bootstrap_servers: String,
    /// Sent to the brokers with every request, for their logs and quotas. Default `"ipam"` (the
    /// product name; librdkafka's own default, `"rdkafka"`, says nothing about who is calling).
    pub client_id: String,
    /// How long a member's transaction may stay open before the broker aborts it. Default 60000,
    /// librdkafka's default; it must not exceed the broker's `transaction.max.timeout.ms`
    /// (900000 by default). A batch's `max_delay` should stay well below it.
    pub transaction_timeout_ms: u32,
    /// How long a member may go without heartbeats before the group gives its partitions away.
    /// Default 10000: librdkafka's default before KIP-735 raised it to 45000; 10 s moves the
    /// partitions of a crashed member within seconds and is still far above the 3 s heartbeat.
    pub session_timeout_ms: u32,
    /// Replicas of each topic [`ipam_log::EventLog::create_topics`] creates. Default 1, which
    /// suits the single-broker development and test setups; production clusters should set 3
    /// (Kafka's usual choice, tolerating the loss of one broker with `min.insync.replicas=2`).
    pub replication_factor: i32,
    /// Raw librdkafka settings (`security.protocol`, `sasl.*`, `ssl.*`, `linger.ms`, ...), applied
    /// to every client the backend creates.
    pub passthrough: BTreeMap<String, String>,
}

impl KafkaOptions {
    /// Options with the defaults above for the given brokers.
    pub fn new(bootstrap_servers: impl Into<String>) -> KafkaOptions {
        KafkaOptions {
            bootstrap_servers: bootstrap_servers.into(),
            client_id: "ipam".to_owned(),
            transaction_timeout_ms: 60_000,
            session_timeout_ms: 10_000,
            replication_factor: 1,
            passthrough: BTreeMap::new(),
        }
    }

    /// Checks what can be checked without a broker; librdkafka checks the pass-through values
    /// when [`crate::KafkaLog::connect`] creates the clients.
    pub fn validate(&self) -> Result<(), LogError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(LogError::Config("kafka bootstrap_servers is empty".to_owned()));
        }
        if self.client_id.trim().is_empty() {
            return Err(LogError::Config("kafka client_id is empty".to_owned()));
        }
        if self.transaction_timeout_ms == 0 {
            return Err(LogError::Config("kafka transaction_timeout_ms must be positive".to_owned()));
        }
        if self.session_timeout_ms == 0 {
            return Err(LogError::Config("kafka session_timeout_ms must be positive".to_owned()));
        }
        if self.replication_factor < 1 {
            return Err(LogError::Config(format!(
                "kafka replication_factor must be at least 1, not {}",
                self.replication_factor
            )));
        }
        for key in self.passthrough.keys() {
            let normalized = key.trim().to_ascii_lowercase();
            if normalized.is_empty() {
                return Err(LogError::Config("kafka pass-through has an empty key".to_owned()));
            }
            if let Some(reserved) = RESERVED_KEYS.iter().find(|reserved| **reserved == normalized) {
                return Err(LogError::Config(format!(
                    "kafka pass-through key `{key}` clashes with `{reserved}`, which the typed options or the \
                     backend set; use the typed option or drop the key"
                )));
            }
        }
        Ok(())
    }

    /// Settings every client shares: where the brokers are, who we are, and the pass-through.
    pub(crate) fn base_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.passthrough {
            config.set(key.trim(), value);
        }
        config.set("bootstrap.servers", &self.bootstrap_servers).set("client.id", &self.client_id);
        config
    }

    /// Settings every consumer shares. Consumers that never join a group still get the session
    /// timeout, since librdkafka checks pass-through settings such as `max.poll.interval.ms`
    /// against it in every consumer.
    pub(crate) fn consumer_config(&self) -> ClientConfig {
        let mut config = self.base_config();
        config.set("session.timeout.ms", self.session_timeout_ms.to_string()).set("allow.auto.create.topics", "false");
        config
    }

    /// A consumer that only asks for metadata and watermarks. For a read_committed client, the
    /// "high watermark" librdkafka reports is the last stable offset.
    pub(crate) fn metadata_config(&self) -> ClientConfig {
        let mut config = self.consumer_config();
        config.set("isolation.level", "read_committed");
        config
    }

    /// The producer behind `append`: idempotent, so librdkafka's retries neither duplicate nor
    /// reorder records within a partition, and acknowledged by all in-sync replicas.
    pub(crate) fn append_producer_config(&self) -> ClientConfig {
        let mut config = self.base_config();
        config.set("enable.idempotence", "true").set("acks", "all");
        config
    }

    /// A consumer that reads committed records only and never commits: it only looks
    /// (metadata, watermarks, `read`). librdkafka needs a `group.id` to `assign` partitions; the
    /// throwaway one given here never joins a group and never commits, so the broker never sees it.
    pub(crate) fn reader_config(&self, throwaway_group: &str) -> ClientConfig {
        let mut config = self.consumer_config();
        config
            .set("group.id", throwaway_group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            // An offset outside the log is an error to report, not a reason to jump elsewhere.
            .set("auto.offset.reset", "error");
        config
    }

    /// A consumer with `group.id = group` that only asks for the group's committed offsets.
    pub(crate) fn offsets_config(&self, group: &str) -> ClientConfig {
        let mut config = self.consumer_config();
        config.set("group.id", group).set("isolation.level", "read_committed").set("enable.auto.commit", "false");
        config
    }

    /// A member's consumer: joins `group`, gets partitions by cooperative rebalancing, reads
    /// committed records only, and commits nothing itself (its positions go into transactions).
    pub(crate) fn member_consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.consumer_config();
        config
            .set("group.id", group)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            // A group with no committed position starts at the beginning: every record matters.
            .set("auto.offset.reset", "earliest");
        config
    }

    /// A member's transactional producer. `transactional.id` is what fences zombies.
    pub(crate) fn member_producer_config(&self, transactional_id: &str) -> ClientConfig {
        let mut config = self.base_config();
        config
            .set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", self.transaction_timeout_ms.to_string())
            .set("enable.idempotence", "true")
            .set("acks", "all");
        config
    }

    /// How long `append` waits for delivery reports: librdkafka reports every message within
    /// `message.timeout.ms` (alias `delivery.timeout.ms`, default 300000), so a bit longer.
    pub(crate) fn delivery_wait_ms(&self) -> u64 {
        let configured = ["message.timeout.ms", "delivery.timeout.ms"]
            .iter()
            .find_map(|key| self.passthrough.get(*key).and_then(|value| value.trim().parse::<u64>().ok()));
        configured.unwrap_or(300_000) + 30_000
    }
}

/// Pass-through values may hold passwords (`sasl.password`, `ssl.key.password`): print keys only.
impl fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaOptions")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("client_id", &self.client_id)
            .field("transaction_timeout_ms", &self.transaction_timeout_ms)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("replication_factor", &self.replication_factor)
            .field("passthrough_keys", &self.passthrough.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let options = KafkaOptions::new("127.0.0.1:9092");
        assert_eq!(options.validate(), Ok(()));
        assert_eq!(options.client_id, "ipam");
    }

    #[test]
    fn a_reserved_pass_through_key_is_refused_by_name() {
        for key in ["isolation.level", " Group.Id ", "enable.idempotence", "session.timeout.ms"] {
            let mut options = KafkaOptions::new("127.0.0.1:9092");
            options.passthrough.insert(key.to_owned(), "x".to_owned());
            match options.validate() {
                Err(LogError::Config(message)) => assert!(message.contains(key), "{message}"),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn debug_hides_pass_through_values() {
        let mut options = KafkaOptions::new("b:1");
        options.passthrough.insert("sasl.password".to_owned(), "hunter2".to_owned());
        let printed = format!("{options:?}");
        assert!(printed.contains("sasl.password") && !printed.contains("hunter2"), "{printed}");
    }
}
