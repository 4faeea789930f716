//! The configuration of every `ipam` command, in one typed struct.
//!
//! Precedence, lowest first: built-in defaults → the TOML file given by `--config` →
//! `IPAM_*` environment variables → command-line flags. clap reads a flag or, when it is absent,
//! its environment variable; [`Config::apply`] lays whatever it found over the file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use anyhow::Context;
use ipam_core::HostId;
use ipam_log_kafka::{KafkaOptions, KafkaSecurity};
use serde::Deserialize;

/// Everything the services need to know. Unknown keys in the file are errors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// Where `ipam up` keeps its embedded log and snapshots.
    pub data_dir: PathBuf,
    /// Partitions of the network-keyed topics (fixed once topics exist).
    pub partitions: u32,
    /// Prefixed to every topic name, so deployments can share a Kafka cluster.
    pub topic_prefix: String,
    /// This instance's name: part of its transactional ids, so it must be stable across restarts.
    pub instance: String,
    /// Steps per transaction at most, and the longest a batch stays open.
    pub batch_max_steps: usize,
    pub batch_max_delay_ms: u64,
    /// A snapshot after this many input records, or this many seconds, whichever comes first.
    pub snapshot_every_records: u64,
    pub snapshot_every_secs: u64,
    /// Placement's clock; 0 turns it off (tests feed ticks themselves).
    pub tick_interval_ms: u64,
    /// A host whose heartbeat is older than this at a tick loses its DHCP servers.
    pub heartbeat_timeout_ms: u64,
    /// DHCP servers per network when the engine does not say.
    pub default_servers_count: u8,
    /// `fsync` also survives power loss, at the cost of an fsync per batch; the default survives a
    /// crash of the process at any point.
    pub fsync: bool,
    pub kafka: KafkaConfig,
    /// Where the HTTP API listens (`ipam up`, `ipam api`).
    pub api_bind: std::net::SocketAddr,
    /// When set, every API endpoint but `/health` requires `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
    /// More API tokens, each with a role (`[[api-tokens]]`: `role` = "read" or "write", `token` or
    /// `token-file`, optional `expires`); `api-token` above is one more write token.
    pub api_tokens: Vec<ipam_api::auth::TokenEntry>,
    /// PEM certificate chain and key: when both are set the API serves HTTPS only, and picks up
    /// new files a few seconds after they change.
    pub api_tls_cert_file: Option<PathBuf>,
    pub api_tls_key_file: Option<PathBuf>,
    /// Host agents `ipam up` runs in-process, each writing dnsmasq files into its own directory.
    pub host_agents: Vec<HostAgentEntry>,
    /// Where `/health` and `/metrics` of this process are served (allocator, placement, host
    /// agent, `ipam up`); none when unset.
    pub metrics_bind: Option<std::net::SocketAddr>,
}

/// Kafka settings for the services that run alone. Every unset one keeps the backend's default
/// (`ipam_log_kafka::KafkaOptions`).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct KafkaConfig {
    pub bootstrap_servers: Option<String>,
    /// How long the group waits for a silent member before moving its partitions (the broker
    /// allows 6000 at least); librdkafka's default is 45000, ours 10000 for faster failover.
    pub session_timeout_ms: Option<u32>,
    /// How long an open transaction of a dead instance holds its partitions back before the
    /// broker aborts it. Batches commit in milliseconds, so 10000 (Kafka's default is 60000)
    /// bounds a takeover without ever cutting a live batch short.
    pub transaction_timeout_ms: Option<u32>,
    /// Replicas of each topic created, and the least an existing topic must have (default 1;
    /// 3 in production).
    pub replication_factor: Option<i32>,
    /// `min.insync.replicas` of each topic created, and the least an existing one must have
    /// (default: the broker's; 2 with 3 replicas in production).
    pub min_insync_replicas: Option<i32>,
    /// How long the topics keep records; -1, the default, keeps them for ever (the state is
    /// rebuilt from them).
    pub retention_ms: Option<i64>,
    /// plaintext (default), ssl, sasl_plaintext or sasl_ssl.
    pub security_protocol: Option<String>,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a sasl_* protocol).
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    /// Never printed.
    pub sasl_password: Option<String>,
    /// A file holding the password (a mounted secret, a systemd credential): read at start, one
    /// trailing newline dropped. Either this or `sasl-password`.
    pub sasl_password_file: Option<PathBuf>,
    /// PEM file of the CA that signs the brokers' certificates (default: the system's CAs).
    pub ssl_ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    pub ssl_certificate_file: Option<PathBuf>,
    pub ssl_key_file: Option<PathBuf>,
    /// Passphrase of an encrypted key; never printed.
    pub ssl_key_password: Option<String>,
    /// Raw librdkafka settings (tuning, and security settings the typed ones do not cover); one
    /// that clashes with a typed setting is an error.
    pub passthrough: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Lays the flags and variables that were given over the file's values.
    fn apply(&mut self, o: &KafkaOverrides) {
        fn set<T: Clone>(field: &mut Option<T>, value: &Option<T>) {
            if value.is_some() {
                field.clone_from(value);
            }
        }
        set(&mut self.replication_factor, &o.kafka_replication_factor);
        set(&mut self.min_insync_replicas, &o.kafka_min_insync_replicas);
        set(&mut self.retention_ms, &o.kafka_retention_ms);
        set(&mut self.security_protocol, &o.kafka_security_protocol);
        set(&mut self.sasl_mechanism, &o.kafka_sasl_mechanism);
        set(&mut self.sasl_username, &o.kafka_sasl_username);
        set(&mut self.sasl_password, &o.kafka_sasl_password);
        set(&mut self.sasl_password_file, &o.kafka_sasl_password_file);
        set(&mut self.ssl_ca_file, &o.kafka_ssl_ca_file);
        set(&mut self.ssl_certificate_file, &o.kafka_ssl_certificate_file);
        set(&mut self.ssl_key_file, &o.kafka_ssl_key_file);
        set(&mut self.ssl_key_password, &o.kafka_ssl_key_password);
    }

    /// Sets the topic and security options these settings name; the others keep the backend's
    /// defaults. A protocol or mechanism that does not parse is an error naming the setting.
    pub fn apply_to(&self, options: &mut KafkaOptions) -> anyhow::Result<()> {
        if let Some(replication_factor) = self.replication_factor {
            options.replication_factor = replication_factor;
        }
        options.min_insync_replicas = self.min_insync_replicas;
        if let Some(retention_ms) = self.retention_ms {
            options.retention_ms = retention_ms;
        }
        let sasl_password = match (&self.sasl_password, &self.sasl_password_file) {
            (Some(_), Some(_)) => anyhow::bail!("kafka sasl-password and sasl-password-file are both set; keep one"),
            (Some(password), None) => Some(password.clone()),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading kafka sasl-password-file {}", file.display()))?;
                let password = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
                Some(password.to_owned())
            }
            (None, None) => None,
        };
        options.security = KafkaSecurity {
            protocol: self
                .security_protocol
                .as_deref()
                .map(str::parse)
                .transpose()
                .context("kafka security-protocol")?,
            sasl_mechanism: self
                .sasl_mechanism
                .as_deref()
                .map(str::parse)
                .transpose()
                .context("kafka sasl-mechanism")?,
            sasl_username: self.sasl_username.clone(),
            sasl_password,
            ssl_ca_file: self.ssl_ca_file.clone(),
            ssl_certificate_file: self.ssl_certificate_file.clone(),
            ssl_key_file: self.ssl_key_file.clone(),
            ssl_key_password: self.ssl_key_password.clone(),
        };
        Ok(())
    }
}

/// Passwords and pass-through values (which may hold passwords) are never printed.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |secret: &Option<String>| secret.as_ref().map(|_| "<hidden>");
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("transaction_timeout_ms", &self.transaction_timeout_ms)
            .field("replication_factor", &self.replication_factor)
            .field("min_insync_replicas", &self.min_insync_replicas)
            .field("retention_ms", &self.retention_ms)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &hidden(&self.sasl_password))
            .field("sasl_password_file", &self.sasl_password_file)
            .field("ssl_ca_file", &self.ssl_ca_file)
            .field("ssl_certificate_file", &self.ssl_certificate_file)
            .field("ssl_key_file", &self.ssl_key_file)
            .field("ssl_key_password", &hidden(&self.ssl_key_password))
            .field("passthrough_keys", &self.passthrough.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The `[kafka]` settings of topics and security, as flags or `IPAM_KAFKA_*` variables.
#[derive(Clone, Default, clap::Args)]
pub struct KafkaOverrides {
    /// Replicas of each topic created; an existing topic must have at least as many.
    #[arg(long, env = "IPAM_KAFKA_REPLICATION_FACTOR", global = true)]
    pub kafka_replication_factor: Option<i32>,
    /// min.insync.replicas of each topic created; an existing topic must have at least as many.
    #[arg(long, env = "IPAM_KAFKA_MIN_INSYNC_REPLICAS", global = true)]
    pub kafka_min_insync_replicas: Option<i32>,
    /// retention.ms of the topics (-1, the default: never expire).
    #[arg(long, env = "IPAM_KAFKA_RETENTION_MS", global = true, allow_negative_numbers = true)]
    pub kafka_retention_ms: Option<i64>,
    /// plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long, env = "IPAM_KAFKA_SECURITY_PROTOCOL", global = true)]
    pub kafka_security_protocol: Option<String>,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long, env = "IPAM_KAFKA_SASL_MECHANISM", global = true)]
    pub kafka_sasl_mechanism: Option<String>,
    #[arg(long, env = "IPAM_KAFKA_SASL_USERNAME", global = true)]
    pub kafka_sasl_username: Option<String>,
    /// Prefer the variable or the file: a flag's value shows in the process list.
    #[arg(long, env = "IPAM_KAFKA_SASL_PASSWORD", global = true, hide_env_values = true)]
    pub kafka_sasl_password: Option<String>,
    /// A file holding the SASL password (one trailing newline dropped).
    #[arg(long, env = "IPAM_KAFKA_SASL_PASSWORD_FILE", global = true)]
    pub kafka_sasl_password_file: Option<PathBuf>,
    /// PEM file of the CA that signs the brokers' certificates.
    #[arg(long, env = "IPAM_KAFKA_SSL_CA_FILE", global = true)]
    pub kafka_ssl_ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS.
    #[arg(long, env = "IPAM_KAFKA_SSL_CERTIFICATE_FILE", global = true)]
    pub kafka_ssl_certificate_file: Option<PathBuf>,
    /// PEM client key, for mutual TLS.
    #[arg(long, env = "IPAM_KAFKA_SSL_KEY_FILE", global = true)]
    pub kafka_ssl_key_file: Option<PathBuf>,
    #[arg(long, env = "IPAM_KAFKA_SSL_KEY_PASSWORD", global = true, hide_env_values = true)]
    pub kafka_ssl_key_password: Option<String>,
}

/// Passwords are never printed.
impl fmt::Debug for KafkaOverrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |secret: &Option<String>| secret.as_ref().map(|_| "<hidden>");
        f.debug_struct("KafkaOverrides")
            .field("kafka_replication_factor", &self.kafka_replication_factor)
            .field("kafka_min_insync_replicas", &self.kafka_min_insync_replicas)
            .field("kafka_retention_ms", &self.kafka_retention_ms)
            .field("kafka_security_protocol", &self.kafka_security_protocol)
            .field("kafka_sasl_mechanism", &self.kafka_sasl_mechanism)
            .field("kafka_sasl_username", &self.kafka_sasl_username)
            .field("kafka_sasl_password", &hidden(&self.kafka_sasl_password))
            .field("kafka_sasl_password_file", &self.kafka_sasl_password_file)
            .field("kafka_ssl_ca_file", &self.kafka_ssl_ca_file)
            .field("kafka_ssl_certificate_file", &self.kafka_ssl_certificate_file)
            .field("kafka_ssl_key_file", &self.kafka_ssl_key_file)
            .field("kafka_ssl_key_password", &hidden(&self.kafka_ssl_key_password))
            .finish()
    }
}

/// One in-process host agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HostAgentEntry {
    pub host_id: HostId,
    pub files_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("./ipam-data"),
            // Eight partitions let up to eight allocator instances share the load.
            partitions: 8,
            topic_prefix: String::new(),
            instance: "ipam-0".to_owned(),
            // The log's own defaults: a few milliseconds of latency for many steps per commit.
            batch_max_steps: 500,
            batch_max_delay_ms: 5,
            snapshot_every_records: 50_000,
            snapshot_every_secs: 60,
            tick_interval_ms: 1000,
            // Five missed 3-second heartbeats.
            heartbeat_timeout_ms: 15_000,
            default_servers_count: 2,
            fsync: false,
            kafka: KafkaConfig::default(),
            api_bind: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_token: None,
            api_tokens: Vec::new(),
            api_tls_cert_file: None,
            api_tls_key_file: None,
            host_agents: Vec::new(),
            metrics_bind: None,
        }
    }
}

/// Values from flags or `IPAM_*` variables; `None` leaves the file's value.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// A TOML configuration file.
    #[arg(long, env = "IPAM_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[arg(long, env = "IPAM_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "IPAM_PARTITIONS", global = true)]
    pub partitions: Option<u32>,
    #[arg(long, env = "IPAM_TOPIC_PREFIX", global = true)]
    pub topic_prefix: Option<String>,
    #[arg(long, env = "IPAM_INSTANCE", global = true)]
    pub instance: Option<String>,
    #[arg(long, env = "IPAM_TICK_INTERVAL_MS", global = true)]
    pub tick_interval_ms: Option<u64>,
    #[arg(long, env = "IPAM_HEARTBEAT_TIMEOUT_MS", global = true)]
    pub heartbeat_timeout_ms: Option<u64>,
    #[arg(long, env = "IPAM_SNAPSHOT_EVERY_RECORDS", global = true)]
    pub snapshot_every_records: Option<u64>,
    #[arg(long, env = "IPAM_SNAPSHOT_EVERY_SECS", global = true)]
    pub snapshot_every_secs: Option<u64>,
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long = "kafka", env = "IPAM_KAFKA", global = true)]
    pub kafka: Option<String>,
    #[arg(long, env = "IPAM_KAFKA_SESSION_TIMEOUT_MS", global = true)]
    pub kafka_session_timeout_ms: Option<u32>,
    #[command(flatten)]
    pub kafka_settings: KafkaOverrides,
    /// Where the HTTP API listens (127.0.0.1:8080 by default; port 0 picks a free one).
    #[arg(long, env = "IPAM_API_BIND", global = true)]
    pub api_bind: Option<std::net::SocketAddr>,
    #[arg(long, env = "IPAM_API_TOKEN", global = true, hide_env_values = true)]
    pub api_token: Option<String>,
    /// The API's HTTPS certificate chain (PEM); with --api-tls-key-file the API serves HTTPS.
    #[arg(long, env = "IPAM_API_TLS_CERT_FILE", global = true)]
    pub api_tls_cert_file: Option<PathBuf>,
    /// The API's HTTPS private key (PEM, unencrypted).
    #[arg(long, env = "IPAM_API_TLS_KEY_FILE", global = true)]
    pub api_tls_key_file: Option<PathBuf>,
    /// Serve /health and /metrics of this process here (e.g. 0.0.0.0:9090; port 0 picks a free one).
    #[arg(long, env = "IPAM_METRICS_BIND", global = true)]
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// How log lines are written to stderr: text, or one JSON object per line. Which lines is
    /// IPAM_LOG (a tracing filter such as `info` or `ipam_runtime=debug,info`; `info` by default).
    /// Not in the file: logging starts before the file is read.
    #[arg(long, env = "IPAM_LOG_FORMAT", global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log collectors.
    Json,
}

impl Config {
    /// Defaults, then the file (if any), then the overrides.
    pub fn load(overrides: &Overrides) -> anyhow::Result<Config> {
        let mut config = match &overrides.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, o: &Overrides) {
        fn set<T: Clone>(field: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *field = value.clone();
            }
        }
        set(&mut self.data_dir, &o.data_dir);
        set(&mut self.partitions, &o.partitions);
        set(&mut self.topic_prefix, &o.topic_prefix);
        set(&mut self.instance, &o.instance);
        set(&mut self.tick_interval_ms, &o.tick_interval_ms);
        set(&mut self.heartbeat_timeout_ms, &o.heartbeat_timeout_ms);
        set(&mut self.snapshot_every_records, &o.snapshot_every_records);
        set(&mut self.snapshot_every_secs, &o.snapshot_every_secs);
        if o.kafka.is_some() {
            self.kafka.bootstrap_servers = o.kafka.clone();
        }
        set(&mut self.api_bind, &o.api_bind);
        if o.api_token.is_some() {
            self.api_token = o.api_token.clone();
        }
        if o.api_tls_cert_file.is_some() {
            self.api_tls_cert_file.clone_from(&o.api_tls_cert_file);
        }
        if o.api_tls_key_file.is_some() {
            self.api_tls_key_file.clone_from(&o.api_tls_key_file);
        }
        if o.metrics_bind.is_some() {
            self.metrics_bind = o.metrics_bind;
        }
        if o.kafka_session_timeout_ms.is_some() {
            self.kafka.session_timeout_ms = o.kafka_session_timeout_ms;
        }
        self.kafka.apply(&o.kafka_settings);
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.partitions >= 1, "partitions must be at least 1");
        anyhow::ensure!(self.batch_max_steps >= 1, "batch-max-steps must be at least 1");
        anyhow::ensure!(!self.instance.is_empty(), "instance must not be empty");
        anyhow::ensure!(
            self.api_tls_cert_file.is_some() == self.api_tls_key_file.is_some(),
            "api-tls-cert-file and api-tls-key-file go together: set both for HTTPS, or neither"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_variables_win_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ipam.toml");
        std::fs::write(&file, "partitions = 4\ninstance = \"from-file\"\n[kafka]\nbootstrap-servers = \"file:9092\"\n")
            .unwrap();
        let overrides =
            Overrides { config: Some(file), instance: Some("from-flag".to_owned()), ..Overrides::default() };
        let config = Config::load(&overrides).unwrap();
        assert_eq!(config.partitions, 4, "the file beats the default");
        assert_eq!(config.instance, "from-flag", "a flag beats the file");
        assert_eq!(config.kafka.bootstrap_servers.as_deref(), Some("file:9092"));
        assert_eq!(config.tick_interval_ms, 1000, "untouched keys keep their defaults");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ipam.toml");
        std::fs::write(&file, "partitons = 4\n").unwrap();
        let error = Config::load(&Overrides { config: Some(file), ..Overrides::default() }).unwrap_err();
        assert!(format!("{error:#}").contains("partitons"), "{error:#}");
    }

    #[test]
    fn kafka_security_and_topic_settings_come_from_the_file_and_flags_and_reach_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ipam.toml");
        std::fs::write(
            &file,
            "[kafka]\nbootstrap-servers = \"b:9093\"\nsecurity-protocol = \"SASL_SSL\"\nsasl-mechanism = \"SCRAM-SHA-512\"\n\
             sasl-username = \"ipam\"\nsasl-password = \"from-file\"\nreplication-factor = 3\nmin-insync-replicas = 2\n",
        )
        .unwrap();
        let overrides = Overrides {
            config: Some(file),
            kafka_settings: KafkaOverrides {
                kafka_sasl_password: Some("hunter2".to_owned()),
                kafka_retention_ms: Some(86_400_000),
                ..KafkaOverrides::default()
            },
            ..Overrides::default()
        };
        let config = Config::load(&overrides).unwrap();
        let printed = format!("{config:?} {overrides:?}");
        assert!(!printed.contains("hunter2") && !printed.contains("from-file"), "{printed}");
        let mut options = KafkaOptions::new("b:9093");
        config.kafka.apply_to(&mut options).unwrap();
        assert_eq!(options.security.protocol, Some(ipam_log_kafka::SecurityProtocol::SaslSsl));
        assert_eq!(options.security.sasl_password.as_deref(), Some("hunter2"), "a flag or variable beats the file");
        assert_eq!(
            (options.replication_factor, options.min_insync_replicas, options.retention_ms),
            (3, Some(2), 86_400_000)
        );
        assert_eq!(options.validate(), Ok(()));

        let secret = dir.path().join("password");
        std::fs::write(&secret, "from-a-secret\n").unwrap();
        let mut from_file = config.kafka.clone();
        from_file.sasl_password = None;
        from_file.sasl_password_file = Some(secret);
        from_file.apply_to(&mut options).unwrap();
        assert_eq!(options.security.sasl_password.as_deref(), Some("from-a-secret"), "the newline is not part of it");
        from_file.sasl_password = Some("x".to_owned());
        assert!(format!("{:#}", from_file.apply_to(&mut options).unwrap_err()).contains("keep one"));

        let mut bad = config.kafka.clone();
        bad.sasl_mechanism = Some("GSSAPI".to_owned());
        let error = bad.apply_to(&mut options).unwrap_err();
        assert!(
            format!("{error:#}").contains("kafka sasl-mechanism: bad log configuration: unknown or unsupported"),
            "{error:#}"
        );
    }
}
