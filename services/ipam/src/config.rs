//! The configuration of every `ipam` command, in one typed struct.
//!
//! Precedence, lowest first: built-in defaults → the TOML file given by `--config` →
//! `IPAM_*` environment variables → command-line flags. clap reads a flag or, when it is absent,
//! its environment variable; [`Config::apply`] lays whatever it found over the file.
//!
//! A setting is a field of [`Config`] (its TOML key) and an `Option` of [`Overrides`] (its flag
//! and variable, declared together in one `#[arg]`). A test checks that the two stay in step:
//! every flag names a key, and every single-value key has a flag and an `IPAM_*` variable of the
//! same name (lists such as `[[api-tokens]]` are the file's only). [`Sources`] asks clap whether a
//! value came from a flag or a variable, so `ipam config show` can say where each one came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use anyhow::Context;
use ipam_core::HostId;
use ipam_log_kafka::{KafkaOptions, KafkaSecurity};
use serde::{Deserialize, Serialize, Serializer};

/// Everything the services need to know. Unknown keys in the file are errors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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
    #[serde(serialize_with = "hidden")]
    pub api_token: Option<String>,
    /// More API tokens, each with a role (`[[api-tokens]]`: `role` = "read" or "write", `token` or
    /// `token-file`, optional `expires`); `api-token` above is one more write token.
    #[serde(serialize_with = "token_entries")]
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
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
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
    #[serde(serialize_with = "hidden")]
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
    #[serde(serialize_with = "hidden")]
    pub ssl_key_password: Option<String>,
    /// Raw librdkafka settings (tuning, and security settings the typed ones do not cover); one
    /// that clashes with a typed setting is an error. Printed by key only: values may be secrets.
    #[serde(serialize_with = "hidden_values")]
    pub passthrough: BTreeMap<String, String>,
}

/// What `ipam config show` prints instead of a secret.
const HIDDEN: &str = "<hidden>";

/// A secret is printed as `<hidden>` when set (and left out when not).
fn hidden<S: Serializer>(secret: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    secret.as_ref().map(|_| HIDDEN).serialize(serializer)
}

/// Pass-through settings by key, each value hidden: `sasl.password` may be among them.
fn hidden_values<S: Serializer>(map: &BTreeMap<String, String>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(map.keys().map(|key| (key, HIDDEN)))
}

/// API tokens as written in the file, the secret itself hidden (`TokenEntry` only deserializes).
fn token_entries<S: Serializer>(entries: &[ipam_api::auth::TokenEntry], serializer: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[serde(rename_all = "kebab-case")]
    struct Shown<'a> {
        role: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        token_file: Option<&'a PathBuf>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expires: Option<String>,
    }
    serializer.collect_seq(entries.iter().map(|e| Shown {
        role: format!("{:?}", e.role).to_lowercase(),
        token: e.token.as_ref().map(|_| HIDDEN),
        token_file: e.token_file.as_ref(),
        expires: e.expires.map(|t| t.to_rfc3339()),
    }))
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
        set(&mut self.transaction_timeout_ms, &o.kafka_transaction_timeout_ms);
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
    /// How long an open transaction of a dead instance holds its partitions (10000 by default).
    #[arg(long, env = "IPAM_KAFKA_TRANSACTION_TIMEOUT_MS", global = true)]
    pub kafka_transaction_timeout_ms: Option<u32>,
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
            .field("kafka_transaction_timeout_ms", &self.kafka_transaction_timeout_ms)
            .finish()
    }
}

/// One in-process host agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Clone, Default, clap::Args)]
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
    /// Steps per transaction at most (500 by default).
    #[arg(long, env = "IPAM_BATCH_MAX_STEPS", global = true)]
    pub batch_max_steps: Option<usize>,
    /// The longest a batch stays open, in milliseconds (5 by default).
    #[arg(long, env = "IPAM_BATCH_MAX_DELAY_MS", global = true)]
    pub batch_max_delay_ms: Option<u64>,
    /// DHCP servers per network when the engine does not say (2 by default).
    #[arg(long, env = "IPAM_DEFAULT_SERVERS_COUNT", global = true)]
    pub default_servers_count: Option<u8>,
    /// fsync the embedded log at each batch, to survive power loss too: `--fsync` or `--fsync=false`.
    #[arg(long, env = "IPAM_FSYNC", global = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub fsync: Option<bool>,
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

/// The file and the secrets only: the token is never printed.
impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overrides")
            .field("config", &self.config)
            .field("api_token", &self.api_token.as_ref().map(|_| HIDDEN))
            .field("kafka_settings", &self.kafka_settings)
            .finish_non_exhaustive()
    }
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
        set(&mut self.batch_max_steps, &o.batch_max_steps);
        set(&mut self.batch_max_delay_ms, &o.batch_max_delay_ms);
        set(&mut self.default_servers_count, &o.default_servers_count);
        set(&mut self.fsync, &o.fsync);
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

/// Where each value of the effective configuration came from, by its key path (`partitions`,
/// `kafka.sasl-password`): the flag or variable that set it, else the file that has it, else the
/// default. Flags map onto keys by name (`--x-y` is `x-y`, `--kafka-x` is `[kafka] x`, `--kafka`
/// is `[kafka] bootstrap-servers`), which a test checks for every flag.
#[derive(Debug, Default)]
pub struct Sources {
    file: Option<PathBuf>,
    file_keys: std::collections::BTreeSet<String>,
    given: BTreeMap<String, String>,
}

/// The key a flag of [`Overrides`] sets; `None` for the flags that are not settings of the file.
fn key_of_flag(long: &str) -> Option<String> {
    match long {
        "config" | "log-format" => None,
        "kafka" => Some("kafka.bootstrap-servers".to_owned()),
        _ => Some(long.strip_prefix("kafka-").map_or_else(|| long.to_owned(), |rest| format!("kafka.{rest}"))),
    }
}

impl Sources {
    /// Reads which flags and variables were given from clap's matches of `command`, and which
    /// keys the file (if any) holds.
    pub fn of(overrides: &Overrides, command: &clap::Command, matches: &clap::ArgMatches) -> anyhow::Result<Sources> {
        let mut sources = Sources { file: overrides.config.clone(), ..Sources::default() };
        if let Some(path) = &overrides.config {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            fn walk(prefix: &str, table: &toml::Table, keys: &mut std::collections::BTreeSet<String>) {
                for (key, value) in table {
                    let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    if let toml::Value::Table(inner) = value {
                        walk(&path, inner, keys);
                    }
                    keys.insert(path);
                }
            }
            walk("", &table, &mut sources.file_keys);
        }
        for arg in command.get_arguments() {
            let (Some(long), Some(key)) = (arg.get_long(), arg.get_long().and_then(key_of_flag)) else { continue };
            let source = match matches.value_source(arg.get_id().as_str()) {
                Some(clap::parser::ValueSource::CommandLine) => format!("--{long}"),
                Some(clap::parser::ValueSource::EnvVariable) => {
                    arg.get_env().map_or_else(|| format!("--{long}"), |env| env.to_string_lossy().into_owned())
                }
                _ => continue,
            };
            sources.given.insert(key, source);
        }
        Ok(sources)
    }

    /// Where the value at `key` came from: `--flag`, `IPAM_X`, the file's path, or `default`. A key
    /// inside an array of tables (`api-tokens.role`) is the array's.
    pub fn of_key(&self, key: &str) -> String {
        if let Some(given) = self.given.get(key) {
            return given.clone();
        }
        let mut prefix = key;
        loop {
            if self.file_keys.contains(prefix) {
                return self.file.as_ref().map_or_else(String::new, |f| f.display().to_string());
            }
            match prefix.rsplit_once('.') {
                Some((parent, _)) => prefix = parent,
                None => return "default".to_owned(),
            }
        }
    }
}

impl Config {
    /// The effective configuration as TOML, each value followed by a comment saying where it came
    /// from; secrets print as `<hidden>`, unset optional settings are left out.
    pub fn show(&self, sources: &Sources) -> anyhow::Result<String> {
        let text = toml::to_string(self).context("printing the configuration")?;
        let mut out = String::new();
        let mut table = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if let Some(name) = trimmed.strip_prefix("[[").and_then(|t| t.strip_suffix("]]")) {
                table = name.to_owned();
            } else if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                table = name.to_owned();
            } else if let Some((key, _)) = trimmed.split_once(" = ") {
                let key = key.trim_matches('"');
                let path = if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") };
                out.push_str(&format!("{line}  # {}\n", sources.of_key(&path)));
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        Ok(out)
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

    /// The flags and variables as the binary has them.
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        overrides: Overrides,
    }

    /// Loads `args` (flags only: variables are the binary's test) and says where each key came from.
    fn load_with_sources(args: &[&str]) -> (Config, Sources) {
        use clap::{CommandFactory, FromArgMatches};
        let command = Flags::command();
        let matches =
            command.clone().try_get_matches_from(std::iter::once("ipam").chain(args.iter().copied())).unwrap();
        let flags = Flags::from_arg_matches(&matches).unwrap();
        let config = Config::load(&flags.overrides).unwrap();
        let sources = Sources::of(&flags.overrides, &command, &matches).unwrap();
        (config, sources)
    }

    #[test]
    fn each_value_names_where_it_came_from_a_flag_the_file_or_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ipam.toml");
        std::fs::write(
            &file,
            "partitions = 4\ninstance = \"from-file\"\n[kafka]\nsasl-password = \"from-file-secret\"\n\
             [[api-tokens]]\nrole = \"read\"\ntoken = \"file-token\"\n",
        )
        .unwrap();
        let path = file.display().to_string();
        let (config, sources) = load_with_sources(&[
            "--config",
            &path,
            "--instance",
            "from-flag",
            "--kafka",
            "k:9092",
            "--fsync",
            "--kafka-transaction-timeout-ms",
            "7000",
        ]);
        assert_eq!((config.partitions, config.instance.as_str(), config.fsync), (4, "from-flag", true));
        assert_eq!(config.kafka.transaction_timeout_ms, Some(7000));
        assert_eq!(sources.of_key("partitions"), path);
        assert_eq!(sources.of_key("instance"), "--instance", "a flag beats the file");
        assert_eq!(sources.of_key("kafka.bootstrap-servers"), "--kafka");
        assert_eq!(sources.of_key("kafka.transaction-timeout-ms"), "--kafka-transaction-timeout-ms");
        assert_eq!(sources.of_key("fsync"), "--fsync");
        assert_eq!(sources.of_key("api-tokens.role"), path, "inside an array of tables, the array's source");
        assert_eq!(sources.of_key("tick-interval-ms"), "default");

        let shown = config.show(&sources).unwrap();
        assert!(shown.contains(&format!("partitions = 4  # {path}\n")), "{shown}");
        assert!(shown.contains("instance = \"from-flag\"  # --instance\n"), "{shown}");
        assert!(shown.contains("tick-interval-ms = 1000  # default\n"), "{shown}");
        assert!(shown.contains(&format!("sasl-password = \"<hidden>\"  # {path}\n")), "{shown}");
        assert!(!shown.contains("from-file-secret") && !shown.contains("file-token"), "{shown}");
        let again: toml::Table = toml::from_str(&shown).unwrap();
        assert_eq!(again["partitions"].as_integer(), Some(4), "what it prints is TOML");
    }

    #[test]
    fn every_flag_sets_a_key_of_the_file_and_every_single_value_key_has_a_flag_and_a_variable() {
        use clap::CommandFactory;
        let command = Flags::command();
        let mut flags = BTreeMap::new();
        for arg in command.get_arguments() {
            let long = arg.get_long().unwrap();
            let Some(key) = key_of_flag(long) else { continue };
            let (table, name) = key.split_once('.').map_or(("", key.as_str()), |(t, n)| (t, n));
            let text = if table.is_empty() { format!("{name} = []\n") } else { format!("[{table}]\n{name} = []\n") };
            let error = toml::from_str::<Config>(&text).unwrap_err().to_string();
            assert!(!error.contains("unknown field"), "--{long} names no key of the file: {error}");
            let env = arg.get_env().unwrap_or_else(|| panic!("--{long} has no variable"));
            flags.insert(key, env.to_string_lossy().into_owned());
        }
        // Every field, set: a struct literal without `..`, so a new setting must be listed here.
        let set = Some(String::new());
        let path = Some(PathBuf::new());
        let every = Config {
            data_dir: PathBuf::new(),
            partitions: 1,
            topic_prefix: String::new(),
            instance: String::new(),
            batch_max_steps: 1,
            batch_max_delay_ms: 1,
            snapshot_every_records: 1,
            snapshot_every_secs: 1,
            tick_interval_ms: 1,
            heartbeat_timeout_ms: 1,
            default_servers_count: 1,
            fsync: false,
            kafka: KafkaConfig {
                bootstrap_servers: set.clone(),
                session_timeout_ms: Some(1),
                transaction_timeout_ms: Some(1),
                replication_factor: Some(1),
                min_insync_replicas: Some(1),
                retention_ms: Some(1),
                security_protocol: set.clone(),
                sasl_mechanism: set.clone(),
                sasl_username: set.clone(),
                sasl_password: set.clone(),
                sasl_password_file: path.clone(),
                ssl_ca_file: path.clone(),
                ssl_certificate_file: path.clone(),
                ssl_key_file: path.clone(),
                ssl_key_password: set.clone(),
                passthrough: BTreeMap::new(),
            },
            api_bind: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            api_token: set.clone(),
            api_tokens: Vec::new(),
            api_tls_cert_file: path.clone(),
            api_tls_key_file: path,
            host_agents: Vec::new(),
            metrics_bind: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 1))),
        };
        let table = toml::Table::try_from(&every).unwrap();
        let mut keys = Vec::new();
        for (key, value) in &table {
            match value {
                toml::Value::Table(kafka) => keys.extend(kafka.keys().map(|k| format!("{key}.{k}"))),
                toml::Value::Array(_) => {} // api-tokens, host-agents: lists, in the file only
                _ => keys.push(key.clone()),
            }
        }
        keys.retain(|k| k != "kafka.passthrough");
        assert_eq!(keys.len(), 32, "{keys:?}");
        for key in keys {
            let env = flags.get(&key).unwrap_or_else(|| panic!("{key} has no flag"));
            let expected = match key.as_str() {
                "kafka.bootstrap-servers" => "IPAM_KAFKA".to_owned(),
                _ => format!("IPAM_{}", key.replace(['-', '.'], "_").to_uppercase()),
            };
            assert_eq!(env, &expected, "{key}");
        }
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
