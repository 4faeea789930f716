//! How the Kafka backend is configured: typed options for what the backend needs (brokers,
//! timeouts, how topics are made, and how to reach a secured cluster: TLS, mTLS, SASL), a
//! pass-through map of raw librdkafka settings for everything else (buffering, tuning), and the
//! one place that turns them into the librdkafka configuration of each client the backend creates.
//!
//! The backend owns the settings its guarantees rest on (isolation level, idempotence, group and
//! transactional ids, ...). A pass-through key that names one of them is refused rather than
//! silently overridden or silently ignored: either way the log would not be what the caller
//! thinks it is.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use ipam_log::LogError;
use rdkafka::ClientConfig;

/// Settings the typed options or the backend itself control; the pass-through map must not name
/// them. Aliases that librdkafka accepts for the same setting are listed too.
pub const RESERVED_KEYS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "group.id",
    "group.instance.id",
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

/// How long a producer waits for more records before it sends what it holds (librdkafka's
/// `linger.ms`), unless the pass-through map sets it. librdkafka's default, 5 ms, sits on the
/// path of every event twice (the API's append, then the allocator's reservation inside its
/// transaction) and buys nothing here: the API appends a request's events together and the
/// allocator a batch's outputs together, and while one produce request is in flight librdkafka
/// gathers the records that follow into the next. Measured with `ipam bench --kafka` (the
/// stage-by-stage figures of single starts; README).
pub(crate) const PRODUCER_LINGER_MS: &str = "0";

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
    /// Replicas of each topic [`ipam_log::EventLog::create_topics`] creates, and the least an
    /// existing topic must have. Default 1, which suits the single-broker development and test
    /// setups; production clusters should set 3 (Kafka's usual choice, tolerating the loss of one
    /// broker with `min_insync_replicas` 2).
    pub replication_factor: i32,
    /// `min.insync.replicas` of each topic created, and the least an existing topic must have:
    /// with `acks=all` (every producer here), a write is acknowledged only once this many replicas
    /// hold it. Default `None`: the broker's `min.insync.replicas` applies (Kafka's default is 1).
    pub min_insync_replicas: Option<i32>,
    /// `retention.ms` of each topic created, and the least an existing topic must keep. Default
    /// -1, never expire: state is rebuilt by replaying the inputs, and snapshots are optional, so
    /// an input that expires is lost for good (Kafka's own default would drop it after 7 days).
    pub retention_ms: i64,
    /// How the clients authenticate and encrypt; every field unset means librdkafka's default
    /// (plaintext) or whatever the pass-through map says.
    pub security: KafkaSecurity,
    /// Raw librdkafka settings (`linger.ms`, `socket.keepalive.enable`, and security settings the
    /// typed ones do not cover), applied to every client the backend creates.
    pub passthrough: BTreeMap<String, String>,
}

/// How the clients talk to the brokers: librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No encryption, no authentication (librdkafka's default).
    Plaintext,
    /// TLS; with a client certificate and key, mutual TLS (the broker then knows the client by it).
    Ssl,
    /// SASL authentication without encryption: the password crosses the network in the clear
    /// with PLAIN. For networks the operator trusts.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// The value librdkafka takes.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Accepts librdkafka's spellings (`sasl_ssl`), Kafka's (`SASL_SSL`) and kebab case (`sasl-ssl`).
impl FromStr for SecurityProtocol {
    type Err = LogError;

    fn from_str(text: &str) -> Result<SecurityProtocol, LogError> {
        match text.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "plaintext" => Ok(SecurityProtocol::Plaintext),
            "ssl" => Ok(SecurityProtocol::Ssl),
            "sasl_plaintext" => Ok(SecurityProtocol::SaslPlaintext),
            "sasl_ssl" => Ok(SecurityProtocol::SaslSsl),
            _ => Err(LogError::Config(format!(
                "unknown kafka security protocol `{text}`; use plaintext, ssl, sasl_plaintext or sasl_ssl"
            ))),
        }
    }
}

/// The SASL mechanisms this build of librdkafka has (GSSAPI/Kerberos is not built in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// The password itself is sent: only over TLS (`sasl_ssl`) unless the network is trusted.
    Plain,
    /// Salted challenge-response (RFC 7677); the password never crosses the network.
    ScramSha256,
    /// The same with SHA-512.
    ScramSha512,
}

impl SaslMechanism {
    /// The value librdkafka's `sasl.mechanisms` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Case-insensitive; `_` may stand for `-` (`scram_sha_512`).
impl FromStr for SaslMechanism {
    type Err = LogError;

    fn from_str(text: &str) -> Result<SaslMechanism, LogError> {
        match text.trim().to_ascii_uppercase().replace('_', "-").as_str() {
            "PLAIN" => Ok(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Ok(SaslMechanism::ScramSha256),
            "SCRAM-SHA-512" => Ok(SaslMechanism::ScramSha512),
            _ => Err(LogError::Config(format!(
                "unknown or unsupported kafka SASL mechanism `{text}`; use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
            ))),
        }
    }
}

/// How to reach a secured cluster. Each field is one librdkafka setting ([`KafkaSecurity::settings`]
/// names it); an unset field leaves the setting to librdkafka's default or the pass-through map,
/// and naming a set one in the pass-through map as well is a [`LogError::Config`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    /// `security.protocol`.
    pub protocol: Option<SecurityProtocol>,
    /// `sasl.mechanisms`; needs a `sasl_*` protocol.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// `sasl.username`.
    pub sasl_username: Option<String>,
    /// `sasl.password`; never printed.
    pub sasl_password: Option<String>,
    /// `ssl.ca.location`: a PEM file of the CA certificates that sign the brokers' certificates.
    /// Unset, the system's trust store is used.
    pub ssl_ca_file: Option<PathBuf>,
    /// `ssl.certificate.location`: the client's PEM certificate, for mutual TLS.
    pub ssl_certificate_file: Option<PathBuf>,
    /// `ssl.key.location`: the client's PEM private key, for mutual TLS.
    pub ssl_key_file: Option<PathBuf>,
    /// `ssl.key.password`: the passphrase of an encrypted private key; never printed.
    pub ssl_key_password: Option<String>,
}

impl KafkaSecurity {
    /// The librdkafka settings the typed fields stand for, in one place: `(key, value)` of every
    /// field that is set.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        let mut settings = Vec::new();
        let mut add = |key: &'static str, value: Option<String>| {
            if let Some(value) = value {
                settings.push((key, value));
            }
        };
        add("security.protocol", self.protocol.map(|p| p.as_str().to_owned()));
        add("sasl.mechanisms", self.sasl_mechanism.map(|m| m.as_str().to_owned()));
        add("sasl.username", self.sasl_username.clone());
        add("sasl.password", self.sasl_password.clone());
        add("ssl.ca.location", self.ssl_ca_file.as_ref().map(path));
        add("ssl.certificate.location", self.ssl_certificate_file.as_ref().map(path));
        add("ssl.key.location", self.ssl_key_file.as_ref().map(path));
        add("ssl.key.password", self.ssl_key_password.clone());
        settings
    }

    /// Checks that the fields make sense together and with the pass-through map, and that the
    /// files they name can be read, so that a typo is an error at start rather than a TLS failure
    /// later.
    fn validate(&self, passthrough: &BTreeMap<String, String>) -> Result<(), LogError> {
        let passed = |key: &str| {
            passthrough.iter().find(|(k, _)| k.trim().eq_ignore_ascii_case(key)).map(|(_, value)| value.as_str())
        };
        for (key, _) in self.settings() {
            // `sasl.mechanism` is librdkafka's alias of `sasl.mechanisms`.
            let alias = if key == "sasl.mechanisms" { "sasl.mechanism" } else { key };
            let named = passthrough.keys().find(|k| {
                let k = k.trim();
                k.eq_ignore_ascii_case(key) || k.eq_ignore_ascii_case(alias)
            });
            if let Some(named) = named {
                return Err(LogError::Config(format!(
                    "kafka pass-through key `{named}` clashes with the typed security setting for `{key}`; keep one"
                )));
            }
        }
        let protocol = match self.protocol {
            Some(protocol) => Some(protocol),
            None => passed("security.protocol").map(SecurityProtocol::from_str).transpose()?,
        };
        let protocol_name = protocol.map_or("plaintext (the default)".to_owned(), |p| p.as_str().to_owned());
        let sasl = [
            ("sasl_mechanism", self.sasl_mechanism.is_some()),
            ("sasl_username", self.sasl_username.is_some()),
            ("sasl_password", self.sasl_password.is_some()),
        ];
        if let Some((field, _)) = sasl.iter().find(|(_, set)| *set)
            && !protocol.is_some_and(SecurityProtocol::uses_sasl)
        {
            return Err(LogError::Config(format!(
                "kafka {field} is set, but the security protocol is {protocol_name}; SASL needs sasl_ssl (or \
                 sasl_plaintext)"
            )));
        }
        if protocol.is_some_and(SecurityProtocol::uses_sasl) {
            // librdkafka would fall back to GSSAPI, which this build does not have.
            if self.sasl_mechanism.is_none() && passed("sasl.mechanisms").or(passed("sasl.mechanism")).is_none() {
                return Err(LogError::Config(format!(
                    "kafka security protocol {protocol_name} needs a sasl_mechanism (PLAIN, SCRAM-SHA-256 or \
                     SCRAM-SHA-512)"
                )));
            }
            let plain_or_scram = self.sasl_mechanism.is_some();
            if plain_or_scram && (self.sasl_username.is_none() && passed("sasl.username").is_none()) {
                return Err(LogError::Config("kafka SASL needs a sasl_username".to_owned()));
            }
            if plain_or_scram && (self.sasl_password.is_none() && passed("sasl.password").is_none()) {
                return Err(LogError::Config("kafka SASL needs a sasl_password".to_owned()));
            }
        }
        let tls = [
            ("ssl_ca_file", &self.ssl_ca_file),
            ("ssl_certificate_file", &self.ssl_certificate_file),
            ("ssl_key_file", &self.ssl_key_file),
        ];
        for (field, file) in tls {
            let Some(file) = file else { continue };
            if !protocol.is_some_and(SecurityProtocol::uses_tls) {
                return Err(LogError::Config(format!(
                    "kafka {field} is set, but the security protocol is {protocol_name}; TLS needs ssl or sasl_ssl"
                )));
            }
            if let Err(error) = std::fs::File::open(file) {
                return Err(LogError::Config(format!("kafka {field} `{}` cannot be read: {error}", file.display())));
            }
        }
        if self.ssl_certificate_file.is_some() != self.ssl_key_file.is_some() {
            return Err(LogError::Config(
                "kafka mutual TLS needs both ssl_certificate_file and ssl_key_file, or neither".to_owned(),
            ));
        }
        if self.ssl_key_password.is_some() && self.ssl_key_file.is_none() {
            return Err(LogError::Config("kafka ssl_key_password is set without an ssl_key_file".to_owned()));
        }
        Ok(())
    }
}

/// Passwords are printed as set or not, never their value.
impl fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |secret: &Option<String>| secret.as_ref().map(|_| "<hidden>");
        f.debug_struct("KafkaSecurity")
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &hidden(&self.sasl_password))
            .field("ssl_ca_file", &self.ssl_ca_file)
            .field("ssl_certificate_file", &self.ssl_certificate_file)
            .field("ssl_key_file", &self.ssl_key_file)
            .field("ssl_key_password", &hidden(&self.ssl_key_password))
            .finish()
    }
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
            min_insync_replicas: None,
            retention_ms: -1,
            security: KafkaSecurity::default(),
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
        if let Some(min_insync) = self.min_insync_replicas
            && !(1..=self.replication_factor).contains(&min_insync)
        {
            return Err(LogError::Config(format!(
                "kafka min_insync_replicas must be between 1 and the replication factor ({}), not {min_insync}",
                self.replication_factor
            )));
        }
        if self.retention_ms == 0 || self.retention_ms < -1 {
            return Err(LogError::Config(format!(
                "kafka retention_ms must be -1 (never expire) or positive, not {}",
                self.retention_ms
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
        self.security.validate(&self.passthrough)
    }

    /// Settings every client shares: where the brokers are, who we are, how to reach them
    /// securely, and the pass-through.
    pub(crate) fn base_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.passthrough {
            config.set(key.trim(), value);
        }
        for (key, value) in self.security.settings() {
            config.set(key, value);
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
        self.default_linger(&mut config);
        config
    }

    /// Sets `linger.ms` to [`PRODUCER_LINGER_MS`] unless the pass-through names it (or its alias
    /// `queue.buffering.max.ms`).
    fn default_linger(&self, config: &mut ClientConfig) {
        let named = self.passthrough.keys().any(|key| {
            let key = key.trim();
            key.eq_ignore_ascii_case("linger.ms") || key.eq_ignore_ascii_case("queue.buffering.max.ms")
        });
        if !named {
            config.set("linger.ms", PRODUCER_LINGER_MS);
        }
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

    /// A member's consumer: joins `group` as the static member `instance` (KIP-345), gets
    /// partitions by cooperative rebalancing, reads committed records only, and commits nothing
    /// itself (its positions go into transactions).
    ///
    /// Static membership is what lets a restarted member (after `kill -9`, a crash, a reboot)
    /// take its partitions back at once: the group hands the returning instance the assignment it
    /// held, where a new dynamic member would wait for the dead one's session to expire
    /// (`session_timeout_ms`, 10 s by default) before any rebalance could finish. The instance is
    /// the member's transactional id, which is already one per service instance and stable across
    /// restarts. `crate::member` leaves the group explicitly when a member stops cleanly, since a
    /// static member that merely closes does not (see `KafkaMember::leave`).
    pub(crate) fn member_consumer_config(&self, group: &str, instance: &str) -> ClientConfig {
        let mut config = self.consumer_config();
        config
            .set("group.id", group)
            .set("group.instance.id", instance)
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
        self.default_linger(&mut config);
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
            .field("min_insync_replicas", &self.min_insync_replicas)
            .field("retention_ms", &self.retention_ms)
            .field("security", &self.security)
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

    fn secured() -> KafkaOptions {
        let mut options = KafkaOptions::new("b:1");
        options.security = KafkaSecurity {
            protocol: Some(SecurityProtocol::SaslSsl),
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("ipam".to_owned()),
            sasl_password: Some("hunter2".to_owned()),
            ssl_key_password: Some("key-secret".to_owned()),
            ..KafkaSecurity::default()
        };
        options
    }

    #[test]
    fn debug_hides_the_typed_passwords_too() {
        let printed = format!("{:?}", secured());
        assert!(printed.contains("SaslSsl") && printed.contains("ipam"), "{printed}");
        assert!(!printed.contains("hunter2") && !printed.contains("key-secret"), "{printed}");
    }

    #[test]
    fn typed_security_settings_become_librdkafka_settings() {
        let mut options = secured();
        options.security.ssl_key_password = None;
        let config = options.base_config();
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.username"), Some("ipam"));
        assert_eq!(config.get("sasl.password"), Some("hunter2"));
        assert_eq!(options.validate(), Ok(()));
    }

    #[test]
    fn security_protocols_and_mechanisms_parse_in_every_usual_spelling() {
        for text in ["sasl_ssl", "SASL_SSL", "sasl-ssl"] {
            assert_eq!(text.parse::<SecurityProtocol>(), Ok(SecurityProtocol::SaslSsl));
        }
        for text in ["SCRAM-SHA-256", "scram-sha-256", "scram_sha_256"] {
            assert_eq!(text.parse::<SaslMechanism>(), Ok(SaslMechanism::ScramSha256));
        }
        assert!(matches!("GSSAPI".parse::<SaslMechanism>(), Err(LogError::Config(m)) if m.contains("GSSAPI")));
        assert!(matches!("tls".parse::<SecurityProtocol>(), Err(LogError::Config(m)) if m.contains("`tls`")));
    }

    fn refused(options: &KafkaOptions, expected: &str) {
        match options.validate() {
            Err(LogError::Config(message)) => assert!(message.contains(expected), "{message}"),
            other => panic!("expected an error about {expected}: {other:?}"),
        }
    }

    #[test]
    fn contradictory_security_settings_are_refused_with_the_setting_named() {
        let mut options = secured();
        options.security.protocol = None;
        refused(&options, "sasl_mechanism is set, but the security protocol is plaintext");

        let mut options = secured();
        options.security.sasl_mechanism = None;
        refused(&options, "needs a sasl_mechanism");

        let mut options = secured();
        options.security.sasl_password = None;
        refused(&options, "needs a sasl_password");

        let mut options = KafkaOptions::new("b:1");
        options.security.ssl_ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
        refused(&options, "TLS needs ssl or sasl_ssl");
        options.security.protocol = Some(SecurityProtocol::Ssl);
        refused(&options, "ssl_ca_file `/nonexistent/ca.pem` cannot be read");

        let mut options = KafkaOptions::new("b:1");
        options.security.protocol = Some(SecurityProtocol::Ssl);
        options.security.ssl_key_file = Some(PathBuf::from("/dev/null"));
        refused(&options, "needs both ssl_certificate_file and ssl_key_file");
    }

    #[test]
    fn a_typed_security_setting_named_again_in_the_pass_through_is_refused() {
        let mut options = secured();
        options.passthrough.insert("sasl.mechanism".to_owned(), "PLAIN".to_owned());
        refused(&options, "`sasl.mechanism` clashes");
        let mut options = secured();
        options.passthrough.insert("Security.Protocol".to_owned(), "ssl".to_owned());
        refused(&options, "`Security.Protocol` clashes");
    }

    #[test]
    fn security_through_the_pass_through_map_alone_still_works() {
        let mut options = KafkaOptions::new("b:1");
        for (key, value) in [
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanisms", "PLAIN"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ] {
            options.passthrough.insert(key.to_owned(), value.to_owned());
        }
        assert_eq!(options.validate(), Ok(()));
        assert_eq!(options.base_config().get("security.protocol"), Some("sasl_plaintext"));
    }

    #[test]
    fn topic_settings_are_checked() {
        let mut options = KafkaOptions::new("b:1");
        assert_eq!(options.retention_ms, -1, "inputs never expire by default");
        options.min_insync_replicas = Some(2);
        refused(&options, "min_insync_replicas must be between 1 and the replication factor (1), not 2");
        options.replication_factor = 3;
        assert_eq!(options.validate(), Ok(()));
        options.retention_ms = 0;
        refused(&options, "retention_ms must be -1");
    }
}
