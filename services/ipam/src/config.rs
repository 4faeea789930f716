//! The configuration of every `ipam` command, in one typed struct.
//!
//! Precedence, lowest first: built-in defaults → the TOML file given by `--config` →
//! `IPAM_*` environment variables → command-line flags. clap reads a flag or, when it is absent,
//! its environment variable; the generated `apply` lays whatever it found over the file.
//!
//! # Each setting is declared once
//! A setting has a TOML key, a flag, a variable, a default, a doc, and a line that copies the flag
//! over the file's value. Written by hand in three places (a field, a flag, an apply line), a
//! forgotten apply line silently ignored a flag. So each setting is one line of a `settings!`
//! table, as each event is one line of the core's `events!` table, and the macro derives the rest:
//! the field of [`Config`] (its key: the field name in kebab-case), the field of [`ConfigFlags`]
//! (`--` the key, and `IPAM_` the key in upper case, for the sub-table `[kafka]` with a `kafka-`
//! and `IPAM_KAFKA_` prefix), the apply line, the default, `Debug` and the serialization
//! `ipam config show` prints, which hide secrets. A setting cannot be half-registered.
//!
//! The special cases, each said in the table where it occurs:
//! - `secret` instead of `setting`: printed as `<hidden>` by `Debug` and `config show`, and its
//!   variable's value is not shown by `--help`.
//! - `arg(...)` after the default: clap settings placed after the derived ones, so they can replace
//!   them. `--kafka` (`[kafka] bootstrap-servers`) names itself there, `--fsync` takes an optional
//!   value, `--kafka-retention-ms` accepts a negative one.
//! - `tables`: a sub-table (`[kafka]`), itself a `settings!` table whose flags are flattened in.
//! - `file only`: lists (`[[api-tokens]]`, `[[host-agents]]`, `[kafka.passthrough]`) have no flag;
//!   `shown as` names the function that hides their secrets when printed.
//!
//! A new setting is one line in a table and one row in README's configuration table; the tests
//! walk the table and check that each flag sets its key and nothing else, and that each key, flag
//! and variable has its row in the README (where operators look them up).
//!
//! [`Overrides`] is the command line's part: the file to read, every setting's flag, and the log
//! format (which is not in the file: logging starts before the file is read). [`Sources`] asks
//! clap whether a value came from a flag or a variable, so `ipam config show` can say where each
//! one came from. No layered-configuration crate: clap already reads flags and variables and knows
//! which it used, serde reads the file, and the table joins them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use ipam_api::auth::TokenEntry;
use ipam_core::HostId;
use ipam_log_kafka::{KafkaOptions, KafkaSecurity};
use serde::{Deserialize, Serialize, Serializer};

/// A setting's type in the file, and the type its flag parses: the same, or what an `Option`
/// holds (`--api-token X` sets `Some(X)`).
pub trait Setting {
    type Flag;
    /// A value different from every default, for the test that every flag is applied.
    #[cfg(test)]
    const EXAMPLE: &'static str;
    fn from_flag(flag: Self::Flag) -> Self;
}

impl<T: Setting<Flag = T>> Setting for Option<T> {
    type Flag = T;
    #[cfg(test)]
    const EXAMPLE: &'static str = T::EXAMPLE;
    fn from_flag(flag: T) -> Option<T> {
        Some(flag)
    }
}

/// The types a setting may have, each with its test example.
macro_rules! plain_settings {
    ($($ty:ty = $example:literal),* $(,)?) => {
        $(
            impl Setting for $ty {
                type Flag = $ty;
                #[cfg(test)]
                const EXAMPLE: &'static str = $example;
                fn from_flag(flag: $ty) -> $ty {
                    flag
                }
            }
        )*
    };
}

plain_settings!(
    PathBuf = "/example",
    String = "example",
    bool = "true",
    u8 = "7",
    u32 = "7",
    u64 = "7",
    usize = "7",
    i32 = "7",
    i64 = "7",
    SocketAddr = "127.0.0.7:7",
);

/// `from` with each `_` or `-` made `separator`, in upper case if asked: how a field name becomes
/// a key (`data-dir`), a flag (`--data-dir`) and a variable (`IPAM_DATA_DIR`), at compile time.
const fn spell<const N: usize>(from: &str, upper: bool, separator: u8) -> [u8; N] {
    let from = from.as_bytes();
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = match from[i] {
            b'_' | b'-' => separator,
            byte if upper => byte.to_ascii_uppercase(),
            byte => byte,
        };
        i += 1;
    }
    out
}

/// [`spell`] as a `&'static str`: `spelled!(concat!("IPAM_", "data_dir"), upper)` is `IPAM_DATA_DIR`,
/// `spelled!("data_dir", kebab)` is `data-dir`.
macro_rules! spelled {
    ($from:expr, $case:ident) => {{
        const FROM: &str = $from;
    const BYTES: [u8; FROM.len()] = spelled!(@spell FROM, $case);
        const SPELLED: &str = match std::str::from_utf8(&BYTES) {
            Ok(spelled) => spelled,
            Err(_) => panic!("a setting's name is ASCII"),
        };
        SPELLED
    }};
    (@spell $from:expr, kebab) => {
        spell($from, false, b'-')
    };
    (@spell $from:expr, upper) => {
        spell($from, true, b'_')
    };
}

/// Whether a setting's kind hides its value.
macro_rules! is_secret {
    (setting) => {
        false
    };
    (secret) => {
        true
    };
}

/// What `Debug` and `ipam config show` print of a setting: its value, or `<hidden>` for a secret.
macro_rules! shown {
    (setting $value:expr) => {
        $value
    };
    (secret $value:expr) => {
        &hidden($value)
    };
    // A file-only setting: its value, or what its `shown as` function makes of it.
    ($value:expr, $show:path) => {
        &$show($value)
    };
    ($value:expr) => {
        $value
    };
}

/// Declares a table of settings: the struct read from the file (`$config`), its flags and
/// variables (`$flags`), and everything that joins them (see the module doc). Each line of the
/// first block is `setting` or `secret`, the field's name and type, its default, and optionally
/// `arg(...)` with more clap settings.
macro_rules! settings {
    (
        $(#[$attr:meta])*
        pub struct $config:ident, flags $flags:ident, named $prefix:literal {
            $(
                $(#[doc = $doc:expr])*
                $kind:ident $name:ident: $ty:ty = $default:expr $(, arg($($arg:tt)*))?;
            )*
        }
        tables {
            $( $(#[doc = $table_doc:expr])* $table:ident: $table_ty:ident, flags $table_flags:ident; )*
        }
        file only {
            $( $(#[$file_attr:meta])* $file:ident: $file_ty:ty = $file_default:expr $(, shown as $show:path)?; )*
        }
    ) => {
        $(#[$attr])*
        #[derive(Clone, PartialEq, Eq, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
        pub struct $config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
            $( $(#[doc = $table_doc])* pub $table: $table_ty, )*
            $( $(#[$file_attr])* pub $file: $file_ty, )*
        }

        #[doc = concat!("The flags and `IPAM_*` variables of [`", stringify!($config), "`], one per setting; ")]
        #[doc = "`None` leaves the file's value."]
        #[derive(Clone, Default, clap::Args)]
        pub struct $flags {
            $(
                $(#[doc = $doc])*
                #[arg(
                    id = spelled!(concat!($prefix, stringify!($name)), kebab),
                    long = spelled!(concat!($prefix, stringify!($name)), kebab),
                    env = spelled!(concat!("IPAM_", $prefix, stringify!($name)), upper),
                    value_name = spelled!(concat!($prefix, stringify!($name)), upper),
                    global = true,
                    hide_env_values = is_secret!($kind),
                    $($($arg)*)?
                )]
                pub $name: Option<<$ty as Setting>::Flag>,
            )*
            $( #[command(flatten)] pub $table: $table_flags, )*
        }

        impl Default for $config {
            fn default() -> $config {
                $config {
                    $( $name: $default, )*
                    $( $table: $table_ty::default(), )*
                    $( $file: $file_default, )*
                }
            }
        }

        impl $config {
            /// Lays the flags and variables that were given over the file's values.
            fn apply(&mut self, flags: &$flags) {
                $(
                    if let Some(value) = &flags.$name {
                        self.$name = <$ty as Setting>::from_flag(value.clone());
                    }
                )*
                $( self.$table.apply(&flags.$table); )*
            }

            /// Each setting with a flag: its key path (`kafka.sasl-password`) under `table` (empty,
            /// or a sub-table's path and a dot), and its flag's clap id.
            fn flag_ids(table: &str, out: &mut Vec<(String, &'static str)>) {
                $( out.push((
                    format!("{table}{}", spelled!(stringify!($name), kebab)),
                    spelled!(concat!($prefix, stringify!($name)), kebab),
                )); )*
                $( $table_ty::flag_ids(&format!("{table}{}.", spelled!(stringify!($table), kebab)), out); )*
            }

            /// [`Self::flag_ids`] with each setting's [`Setting::EXAMPLE`].
            #[cfg(test)]
            fn examples(table: &str, out: &mut Vec<(String, &'static str, &'static str)>) {
                $( out.push((
                    format!("{table}{}", spelled!(stringify!($name), kebab)),
                    spelled!(concat!($prefix, stringify!($name)), kebab),
                    <$ty as Setting>::EXAMPLE,
                )); )*
                $( $table_ty::examples(&format!("{table}{}.", spelled!(stringify!($table), kebab)), out); )*
            }
        }

        /// Secrets print as `<hidden>`.
        impl Serialize for $config {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                const FIELDS: &[&str] = &[$(stringify!($name),)* $(stringify!($table),)* $(stringify!($file),)*];
                let mut out = serializer.serialize_struct(stringify!($config), FIELDS.len())?;
                $( out.serialize_field(spelled!(stringify!($name), kebab), shown!($kind &self.$name))?; )*
                $( out.serialize_field(spelled!(stringify!($table), kebab), &self.$table)?; )*
                $( out.serialize_field(spelled!(stringify!($file), kebab), shown!(&self.$file $(, $show)?))?; )*
                out.end()
            }
        }

        /// Secrets print as `<hidden>`.
        impl fmt::Debug for $config {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($config))
                    $( .field(stringify!($name), shown!($kind &self.$name)) )*
                    $( .field(stringify!($table), &self.$table) )*
                    $( .field(stringify!($file), shown!(&self.$file $(, $show)?)) )*
                    .finish()
            }
        }

        /// Secrets print as `<hidden>`.
        impl fmt::Debug for $flags {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($flags))
                    $( .field(stringify!($name), shown!($kind &self.$name)) )*
                    $( .field(stringify!($table), &self.$table) )*
                    .finish()
            }
        }
    };
}

settings! {
    /// Everything the services need to know. Unknown keys in the file are errors.
    pub struct Config, flags ConfigFlags, named "" {
        /// Where `ipam up` keeps its embedded log and snapshots (`./ipam-data` by default).
        setting data_dir: PathBuf = PathBuf::from("./ipam-data");
        /// Partitions of the network-keyed topics, fixed once topics exist (8 by default, so up to
        /// eight allocator instances share the load).
        setting partitions: u32 = 8;
        /// Prefixed to every topic name, so deployments can share a Kafka cluster (none by default).
        setting topic_prefix: String = String::new();
        /// This instance's name (`ipam-0` by default): part of its transactional ids, so it must be
        /// stable across restarts.
        setting instance: String = "ipam-0".to_owned();
        /// Steps per transaction at most (2000 by default).
        setting batch_max_steps: usize = 2000;
        /// The longest a batch stays open under load, in milliseconds (20 by default: on Kafka a
        /// transaction costs 25 to 45 ms of waiting, and longer batches gave the allocator 1.3 to
        /// 2 times the rate; a lone input does not wait for it, see `BatchPolicy`).
        setting batch_max_delay_ms: u64 = 20;
        /// A snapshot after this many input records (50000 by default), or after
        /// snapshot-every-secs, whichever comes first; never sooner after the last one than nine
        /// times the time it took (a large state's snapshots stay under a tenth of the time).
        setting snapshot_every_records: u64 = 50_000;
        /// A snapshot after this many seconds (60 by default), or after snapshot-every-records,
        /// whichever comes first.
        setting snapshot_every_secs: u64 = 60;
        /// Placement's clock, in milliseconds (1000 by default); 0 turns it off (tests feed ticks
        /// themselves).
        setting tick_interval_ms: u64 = 1000;
        /// A host whose heartbeat is older than this, in milliseconds, at a tick loses its DHCP
        /// servers (15000 by default: five missed 3-second heartbeats).
        setting heartbeat_timeout_ms: u64 = 15_000;
        /// DHCP servers per network when the engine does not say (2 by default).
        setting default_servers_count: u8 = 2;
        /// fsync the embedded log at each batch, to survive power loss too: `--fsync` or
        /// `--fsync=false`. Off by default, which survives a crash of the process at any point.
        setting fsync: bool = false,
            arg(num_args = 0..=1, require_equals = true, default_missing_value = "true");
        /// Where the HTTP API listens (`ipam up`, `ipam api`; 127.0.0.1:8080 by default; port 0
        /// picks a free one).
        setting api_bind: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080));
        /// When set, every API endpoint but /health requires `Authorization: Bearer <token>` (one
        /// more write token). Prefer the variable or the file: a flag's value shows in the process
        /// list.
        secret api_token: Option<String> = None;
        /// The API's HTTPS certificate chain (PEM): with api-tls-key-file the API serves HTTPS only,
        /// and picks up new files a few seconds after they change.
        setting api_tls_cert_file: Option<PathBuf> = None;
        /// The API's HTTPS private key (PEM, unencrypted), with api-tls-cert-file.
        setting api_tls_key_file: Option<PathBuf> = None;
        /// Serve /health and /metrics of this process here (allocator, placement, host agent,
        /// `ipam up`; e.g. 0.0.0.0:9090, port 0 picks a free one); none when unset.
        setting metrics_bind: Option<SocketAddr> = None;
    }
    tables {
        /// `[kafka]`, for the services that run alone.
        kafka: KafkaConfig, flags KafkaFlags;
    }
    file only {
        /// More API tokens, each with a role (`[[api-tokens]]`: `role` = "read" or "write", `token`
        /// or `token-file`, optional `expires`); `api-token` above is one more write token.
        api_tokens: Vec<TokenEntry> = Vec::new(), shown as token_entries;
        /// Host agents `ipam up` runs in-process, each writing dnsmasq files into its own directory.
        host_agents: Vec<HostAgentEntry> = Vec::new();
    }
}

settings! {
    /// Kafka settings for the services that run alone. Every unset one keeps the backend's default
    /// (`ipam_log_kafka::KafkaOptions`).
    pub struct KafkaConfig, flags KafkaFlags, named "kafka_" {
        /// Kafka bootstrap servers (host:port,...); when set, the services run on Kafka.
        setting bootstrap_servers: Option<String> = None,
            arg(long = "kafka", env = "IPAM_KAFKA", value_name = "KAFKA");
        /// How long the group waits for a silent member before moving its partitions, in
        /// milliseconds (the broker allows 6000 at least); librdkafka's default is 45000, ours 10000
        /// for faster failover.
        setting session_timeout_ms: Option<u32> = None;
        /// How long an open transaction of a dead instance holds its partitions back before the
        /// broker aborts it, in milliseconds. Batches commit in milliseconds, so 10000 (Kafka's
        /// default is 60000) bounds a takeover without ever cutting a live batch short.
        setting transaction_timeout_ms: Option<u32> = None;
        /// Replicas of each topic created, and the least an existing topic must have (1 by default;
        /// 3 in production).
        setting replication_factor: Option<i32> = None;
        /// min.insync.replicas of each topic created, and the least an existing one must have (the
        /// broker's by default; 2 with 3 replicas in production).
        setting min_insync_replicas: Option<i32> = None;
        /// retention.ms of the topics: -1, the default, keeps records for ever (the state is rebuilt
        /// from them).
        setting retention_ms: Option<i64> = None, arg(allow_negative_numbers = true);
        /// plaintext (default), ssl, sasl_plaintext or sasl_ssl.
        setting security_protocol: Option<String> = None;
        /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a sasl_* protocol).
        setting sasl_mechanism: Option<String> = None;
        /// The SASL user name.
        setting sasl_username: Option<String> = None;
        /// The SASL password. Prefer the variable or the file: a flag's value shows in the process
        /// list.
        secret sasl_password: Option<String> = None;
        /// A file holding the SASL password (a mounted secret, a systemd credential): read at
        /// start, one trailing newline dropped. Either this or sasl-password.
        setting sasl_password_file: Option<PathBuf> = None;
        /// PEM file of the CA that signs the brokers' certificates (default: the system's CAs).
        setting ssl_ca_file: Option<PathBuf> = None;
        /// PEM client certificate, for mutual TLS.
        setting ssl_certificate_file: Option<PathBuf> = None;
        /// PEM client key, for mutual TLS.
        setting ssl_key_file: Option<PathBuf> = None;
        /// Passphrase of an encrypted client key.
        secret ssl_key_password: Option<String> = None;
    }
    tables {}
    file only {
        /// Raw librdkafka settings (tuning, and security settings the typed ones do not cover); one
        /// that clashes with a typed setting is an error. Printed by key only: values may be
        /// secrets.
        passthrough: BTreeMap<String, String> = BTreeMap::new(), shown as hidden_values;
    }
}

/// What `ipam config show` prints instead of a secret.
const HIDDEN: &str = "<hidden>";

/// A secret as printed: `<hidden>` when set, nothing when not.
fn hidden(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| HIDDEN)
}

/// Pass-through settings by key, each value hidden: `sasl.password` may be among them.
fn hidden_values(map: &BTreeMap<String, String>) -> BTreeMap<&str, &'static str> {
    map.keys().map(|key| (key.as_str(), HIDDEN)).collect()
}

/// An API token as written in the file, the secret itself hidden (`TokenEntry` only deserializes).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct ShownToken<'a> {
    role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_file: Option<&'a PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
}

/// The API tokens as printed.
fn token_entries(entries: &[TokenEntry]) -> Vec<ShownToken<'_>> {
    entries
        .iter()
        .map(|e| ShownToken {
            role: format!("{:?}", e.role).to_lowercase(),
            token: hidden(&e.token),
            token_file: e.token_file.as_ref(),
            expires: e.expires.map(|t| t.to_rfc3339()),
        })
        .collect()
}

impl KafkaConfig {
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

/// One in-process host agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HostAgentEntry {
    pub host_id: HostId,
    pub files_dir: PathBuf,
}

/// The command line's part of the configuration: the file to read, every setting's flag and
/// variable, and how to log.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// A TOML configuration file.
    #[arg(long, env = "IPAM_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: ConfigFlags,
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
        config.apply(&overrides.settings);
        config.validate()?;
        Ok(config)
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
/// default. The settings' table says which flag sets which key.
#[derive(Debug, Default)]
pub struct Sources {
    file: Option<PathBuf>,
    file_keys: std::collections::BTreeSet<String>,
    given: BTreeMap<String, String>,
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
        let mut flags = Vec::new();
        Config::flag_ids("", &mut flags);
        for (key, id) in flags {
            let Some(arg) = command.get_arguments().find(|arg| arg.get_id() == id) else { continue };
            let long = arg.get_long().unwrap_or(id);
            let source = match matches.value_source(id) {
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
    /// The batch policy of the deciding services' drivers (and of those the bench starts).
    pub fn batch_policy(&self) -> ipam_log::BatchPolicy {
        ipam_log::BatchPolicy {
            max_steps: self.batch_max_steps,
            max_delay: std::time::Duration::from_millis(self.batch_max_delay_ms),
        }
    }

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
        let overrides = Overrides {
            config: Some(file),
            settings: ConfigFlags { instance: Some("from-flag".to_owned()), ..ConfigFlags::default() },
            ..Overrides::default()
        };
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

    /// The value at `key` (a path: `kafka.retention-ms`) of a configuration as printed.
    fn value_at<'a>(printed: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
        key.split('.').try_fold(printed, |value, part| value.get(part))
    }

    #[test]
    fn every_flag_of_the_tables_sets_its_key_and_nothing_else() {
        use clap::{CommandFactory, Parser};
        let command = Flags::command();
        let mut examples = Vec::new();
        Config::examples("", &mut examples);
        assert_eq!(examples.len(), 32, "{examples:?}");
        let default = toml::Value::try_from(Config::default()).unwrap();
        for (key, id, example) in &examples {
            let arg =
                command.get_arguments().find(|arg| arg.get_id() == *id).unwrap_or_else(|| panic!("{key}: no flag"));
            let flag = format!("--{}={example}", arg.get_long().unwrap());
            let flags = Flags::try_parse_from(["ipam", flag.as_str()]).unwrap_or_else(|e| panic!("{flag}: {e}"));
            let mut config = Config::default();
            config.apply(&flags.overrides.settings);
            let printed = toml::Value::try_from(&config).unwrap();
            let value = value_at(&printed, key).unwrap_or_else(|| panic!("{flag} did not set {key}"));
            let shown = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
            assert!(shown == *example || shown == HIDDEN, "{flag} set {key} to {shown}");
            for (other, _, _) in examples.iter().filter(|(other, _, _)| other != key) {
                assert_eq!(value_at(&printed, other), value_at(&default, other), "{flag} changed {other}");
            }
        }
    }

    #[test]
    fn every_setting_with_a_flag_has_its_row_in_the_readme_with_its_flag_and_variable() {
        use clap::CommandFactory;
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        let section = readme.split("\n## Configuration\n").nth(1).unwrap().split("\n## ").next().unwrap();
        let mut flags = Vec::new();
        Config::flag_ids("", &mut flags);
        let command = Flags::command();
        for (key, id) in flags {
            let arg = command.get_arguments().find(|arg| arg.get_id() == id).unwrap();
            let (long, env) = (arg.get_long().unwrap(), arg.get_env().unwrap().to_string_lossy());
            let key = key.rsplit_once('.').map_or_else(|| key.clone(), |(table, name)| format!("[{table}] {name}"));
            let start = format!("| `{key}` | `--{long}`");
            let row = section.lines().find(|line| line.starts_with(&start));
            let row = row.unwrap_or_else(|| panic!("README's configuration table has no row `{start} ...`"));
            assert!(row.contains(&format!("/ `{env}`")), "README's row of {key} does not name {env}: {row}");
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
            settings: ConfigFlags {
                api_token: Some("api-secret".to_owned()),
                kafka: KafkaFlags {
                    sasl_password: Some("hunter2".to_owned()),
                    retention_ms: Some(86_400_000),
                    ..KafkaFlags::default()
                },
                ..ConfigFlags::default()
            },
            ..Overrides::default()
        };
        let config = Config::load(&overrides).unwrap();
        let printed = format!("{config:?} {overrides:?}");
        assert!(!printed.contains("hunter2") && !printed.contains("from-file"), "{printed}");
        assert!(!printed.contains("api-secret") && printed.contains("<hidden>"), "{printed}");
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
