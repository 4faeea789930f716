//! The `ipam` binary. `ipam up` runs everything in one process on the embedded log; `ipam
//! allocator`, `ipam placement` and `ipam host-agent` each run one service against Kafka. See
//! `config.rs` for the configuration and its precedence.

mod bench;
mod bench_kafka;
mod bench_recovery;
mod child;
mod client;
mod config;
mod ctl;
mod demo;
mod exit;
mod logging;
mod output;
mod publish;
mod run;
mod tools;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ipam_core::HostId;
use ipam_host_agent::probe::ProbeSettings;
use ipam_log::EventLog;
use ipam_log::sqlite::{Durability, SqliteLog};
use ipam_log_kafka::{KafkaLog, KafkaOptions};
use ipam_runtime::dir_lock::{self, DirLock};

use crate::config::{Config, HostAgentEntry, Overrides};
use crate::output::Format;
use crate::run::{Components, DhcpBackendKind, HostAgentSpec};

#[derive(Debug, Parser)]
#[command(name = "ipam", version = tools::VERSION, about = "IP address management for VM networks", after_help = exit::HELP)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Command,
}

/// Where the API is, for the commands that talk to it.
#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// The API's URL: http://HOST:PORT or https://HOST:PORT (the token is --api-token).
    #[arg(long, env = "IPAM_API", default_value = "http://127.0.0.1:8080", global = true)]
    api: String,
    /// A PEM file of the CA certificates (or the self-signed certificate) to trust for an https://
    /// API, instead of the public web roots.
    #[arg(long, env = "IPAM_API_CA_CERT", global = true)]
    api_ca_cert: Option<PathBuf>,
}

impl ApiArgs {
    fn client(&self, config: &Config) -> anyhow::Result<client::Api> {
        client::Api::with_ca_cert(&self.api, config.api_token.clone(), self.api_ca_cert.as_deref())
    }
}

/// A wait such as `500ms`, `10s` or `1m` (a bare number is seconds): what the API itself takes.
fn parse_wait(text: &str) -> Result<Duration, String> {
    ipam_api::decision::parse_wait(text).map_err(|error| error.message)
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process on the embedded log (in --data-dir, ./ipam-data by default).
    Up {
        /// Also run a host agent in-process: HOST_ID=DIR writes that host's dnsmasq files into DIR.
        #[arg(long = "host-agent", value_name = "HOST_ID=DIR")]
        host_agents: Vec<String>,
    },
    /// Run the allocator against Kafka; instances share the partitions through the consumer group.
    Allocator,
    /// Run DHCP-server placement (and its clock) against Kafka.
    Placement,
    /// Run the HTTP API against Kafka (listening on --api-bind).
    Api,
    /// Build and publish an engine event through the API, and print its decision: the address
    /// reserved or released, or the rejection's code and message.
    #[command(after_help = exit::HELP)]
    Ctl {
        #[command(subcommand)]
        command: ctl::Ctl,
        #[command(flatten)]
        api: ApiArgs,
        /// Output format: table (the default on a terminal), json (the default when piped), yaml.
        #[arg(short = 'o', long = "output", value_enum, global = true)]
        output: Option<Format>,
        /// How long to wait for the decision (`500ms`, `10s`, `1m`; at most 60 s); `0` publishes
        /// without waiting.
        #[arg(long, default_value = "10s", value_parser = parse_wait, global = true)]
        wait: Duration,
    },
    /// Show networks, hosts, vNICs and IP history through the API.
    #[command(after_help = exit::HELP)]
    Show {
        #[command(subcommand)]
        what: ctl::Show,
        #[command(flatten)]
        api: ApiArgs,
        /// Output format: table (the default on a terminal), json (the default when piped), yaml.
        #[arg(short = 'o', long = "output", value_enum, global = true)]
        output: Option<Format>,
    },
    /// Publish a file of CloudEvents (one JSON object per line; `-` reads standard input) through
    /// the API. Each line is checked before it is sent; a bad line stops the run there, and the
    /// message says how to resume (`--from-line`).
    #[command(after_help = exit::HELP)]
    Publish {
        #[command(flatten)]
        args: publish::PublishArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Play a scripted story on a temporary all-in-one stack and tell what happens.
    Demo {
        /// Leave the stack running with its data afterwards, to look at in the web page (/ui/),
        /// until Ctrl-C; --api-token gives it a token.
        #[arg(long)]
        keep: bool,
    },
    /// Measure the pipeline end to end on this machine: `ipam up` on the embedded log, and with
    /// --kafka BROKERS (or IPAM_KAFKA) also Apache's own perf tools and the services as separate
    /// processes on that broker, back to back, in one table.
    Bench {
        /// How many vNIC starts the main load plays.
        #[arg(long, default_value_t = 10_000)]
        events: usize,
        /// How many vNIC starts the burst plays.
        #[arg(long, default_value_t = 5_000)]
        burst: usize,
        /// How many single vNIC starts the latency is measured over.
        #[arg(long, default_value_t = 30)]
        samples: usize,
        /// Records each run of Apache's producer and consumer performance tools plays (Kafka).
        #[arg(long, default_value_t = 200_000)]
        perf_records: usize,
        /// vNIC starts per scale-out run (1, 2 and 4 allocator processes; Kafka); 0 skips it.
        #[arg(long, default_value_t = 10_000)]
        scale_out_events: usize,
        /// Keep the services' logs, data and load timelines (else removed after a successful run).
        #[arg(long)]
        keep: bool,
        /// Measure recovery instead (bench_recovery.rs): replay and restart after kill -9 with
        /// --reservations live reservations, on the embedded log.
        #[arg(long)]
        recovery: bool,
        /// Live reservations the recovery bench recovers.
        #[arg(long, default_value_t = 1_000_000)]
        reservations: usize,
        /// Starts the recovery bench appends after the snapshots, before the kill -9.
        #[arg(long, default_value_t = 40_000)]
        tail: usize,
    },
    /// Run the host agent of one host: against Kafka with --kafka, else on the embedded log in
    /// --data-dir (shared with an `ipam up` on the same machine).
    HostAgent {
        #[arg(long, env = "IPAM_HOST_ID")]
        host_id: HostId,
        /// The DHCP backend: run dnsmasq, or only write its configuration files.
        #[arg(long, env = "IPAM_DHCP_BACKEND", value_enum, default_value = "dnsmasq")]
        dhcp_backend: DhcpBackendKind,
        /// The dnsmasq state directory (or the files backend's directory); <data-dir>/dhcp by default.
        #[arg(long, env = "IPAM_DHCP_DIR")]
        dhcp_dir: Option<PathBuf>,
        #[arg(long, env = "IPAM_HEARTBEAT_INTERVAL_MS")]
        heartbeat_interval_ms: Option<u64>,
        /// Run the DHCP servers in this network namespace (the agent stays in its own).
        #[arg(long, env = "IPAM_NETNS")]
        netns: Option<String>,
        /// At most this many dnsmasq processes per served network, each holding a share of its
        /// hosts (a power of two, 1 to 64; 1 runs a single process).
        #[arg(long, env = "IPAM_DNSMASQ_MAX_SHARDS", default_value = "64",
              value_parser = ipam_host_agent::dnsmasq_shards::parse_max_shards)]
        dnsmasq_max_shards: usize,
        /// Conflict probes sent per newly reserved address before it is served (ARP or IPv6
        /// duplicate address detection; on networks whose policy asks for it, the default).
        #[arg(long, env = "IPAM_PROBE_COUNT", default_value_t = ProbeSettings::default().count,
              value_parser = clap::value_parser!(u32).range(1..))]
        probe_count: u32,
        /// Milliseconds between two probes of an address.
        #[arg(long, env = "IPAM_PROBE_INTERVAL_MS", default_value_t = ProbeSettings::default().interval_ms)]
        probe_interval_ms: u64,
        /// Milliseconds answers are awaited after the last probe.
        #[arg(long, env = "IPAM_PROBE_WAIT_MS", default_value_t = ProbeSettings::default().wait_ms)]
        probe_wait_ms: u64,
    },
    #[command(flatten)]
    Tools(tools::Tools),
}

/// mimalloc rather than glibc's malloc: see the workspace's `Cargo.toml` and README, "Benchmarks".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    match real_main() {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("ipam: error: {error:#}");
            std::process::exit(exit::of_error(&error));
        }
    }
}

/// Runs the command; answers its exit code (`exit.rs`).
fn real_main() -> anyhow::Result<i32> {
    let command = <Cli as clap::CommandFactory>::command();
    let matches = command.clone().get_matches();
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    logging::init(cli.overrides.log_format);
    let mut config = Config::load(&cli.overrides)?;
    let ran = match cli.command {
        Command::Up { host_agents } => {
            for entry in host_agents {
                let (host, dir) = entry.split_once('=').context("--host-agent takes HOST_ID=DIR")?;
                let host_id = host.parse().with_context(|| format!("`{host}` is not a host id"))?;
                config.host_agents.push(HostAgentEntry { host_id, files_dir: PathBuf::from(dir) });
            }
            let _lock = lock_data_dir(&config)?;
            refuse_snapshots_without_their_log(&config)?;
            let log = embedded(&config)?;
            let components = Components {
                allocator: true,
                placement: true,
                api: true,
                host_agents: config
                    .host_agents
                    .iter()
                    .map(|e| HostAgentSpec {
                        host_id: e.host_id,
                        dir: e.files_dir.clone(),
                        backend: DhcpBackendKind::Files,
                        heartbeat_interval_ms: None,
                        netns: None,
                        dnsmasq_max_shards: ipam_host_agent::dnsmasq_shards::MAX_SHARDS,
                        probe: ProbeSettings::default(),
                    })
                    .collect(),
            };
            run::run(log, &config, components)
        }
        Command::Allocator => {
            let _lock = lock_data_dir(&config)?;
            run::run(kafka(&config)?, &config, Components { allocator: true, ..Components::default() })
        }
        Command::Placement => {
            let _lock = lock_data_dir(&config)?;
            run::run(kafka(&config)?, &config, Components { placement: true, ..Components::default() })
        }
        Command::Ctl { command, api, output, wait } => {
            let session = ctl::Session { api: api.client(&config)?, format: Format::chosen(output) };
            return ctl::ctl(&session, command, wait);
        }
        Command::Show { what, api, output } => {
            let session = ctl::Session { api: api.client(&config)?, format: Format::chosen(output) };
            return ctl::show(&session, what);
        }
        Command::Publish { args, api } => return publish::publish(|| api.client(&config), args),
        Command::Demo { keep } => demo::run(keep, config.api_token.clone()),
        Command::Tools(tools) => {
            let sources = config::Sources::of(&cli.overrides, &command, &matches)?;
            return tools::run(tools, command, &config, &sources);
        }
        Command::Api => run::run(kafka(&config)?, &config, Components { api: true, ..Components::default() }),
        Command::Bench { recovery: true, reservations, tail, keep, .. } => {
            bench_recovery::run(&bench_recovery::Options { reservations, tail, keep })
        }
        Command::Bench { events, burst, samples, perf_records, scale_out_events, keep, .. } => {
            let kafka = config.kafka.bootstrap_servers.clone();
            let batch = config.batch_policy();
            bench::run(&bench::Options { events, burst, samples, perf_records, scale_out_events, kafka, keep, batch })
        }
        Command::HostAgent {
            host_id,
            dhcp_backend,
            dhcp_dir,
            heartbeat_interval_ms,
            netns,
            dnsmasq_max_shards,
            probe_count,
            probe_interval_ms,
            probe_wait_ms,
        } => {
            let log = if config.kafka.bootstrap_servers.is_some() { kafka(&config)? } else { embedded(&config)? };
            let dir = dhcp_dir.unwrap_or_else(|| config.data_dir.join("dhcp"));
            let probe = ProbeSettings { count: probe_count, interval_ms: probe_interval_ms, wait_ms: probe_wait_ms };
            let agent = HostAgentSpec {
                host_id,
                dir,
                backend: dhcp_backend,
                heartbeat_interval_ms,
                netns,
                dnsmasq_max_shards,
                probe,
            };
            run::run(log, &config, Components { host_agents: vec![agent], ..Components::default() })
        }
    };
    ran.map(|()| exit::OK)
}

/// One deciding process per data directory (its snapshots, and the embedded log): taken before
/// anything in it is opened, held until the process exits.
fn lock_data_dir(config: &Config) -> anyhow::Result<DirLock> {
    DirLock::acquire(dir_lock::DATA_DIR, &config.data_dir)
        .context("refusing to start (give each allocator and placement instance its own --data-dir)")
}

/// A data directory whose embedded log is gone while its snapshots remain is refused before a new,
/// empty log is made there: the snapshots describe a log that no longer exists.
fn refuse_snapshots_without_their_log(config: &Config) -> anyhow::Result<()> {
    let (log, snapshots) = (config.data_dir.join("log").join("log.sqlite3"), config.data_dir.join("snapshots"));
    let has_snapshots = std::fs::read_dir(&snapshots)
        .map(|entries| entries.flatten().any(|entry| ipam_runtime::snapshot::is_snapshot_file(&entry.path())))
        .unwrap_or(false);
    if has_snapshots && !log.exists() {
        anyhow::bail!(
            "the embedded log {} is missing, but snapshots of it remain in {}: its state must not be applied to a new \
             log. Restore the log, or, to start afresh on purpose with an empty state, move {} aside",
            log.display(),
            snapshots.display(),
            snapshots.display()
        );
    }
    Ok(())
}

fn embedded(config: &Config) -> anyhow::Result<Arc<dyn EventLog>> {
    let durability = if config.fsync { Durability::Fsync } else { Durability::ProcessCrash };
    let log = SqliteLog::open(&config.data_dir.join("log"), durability)
        .with_context(|| format!("opening the embedded log in {}", config.data_dir.display()))?;
    Ok(Arc::new(log))
}

fn kafka(config: &Config) -> anyhow::Result<Arc<dyn EventLog>> {
    let bootstrap = config.kafka.bootstrap_servers.clone().context(
        "this command runs against Kafka: give --kafka BROKERS (or IPAM_KAFKA, or [kafka] bootstrap-servers)",
    )?;
    let mut options = KafkaOptions::new(&bootstrap);
    options.client_id = config.instance.clone();
    options.passthrough = config.kafka.passthrough.clone();
    if let Some(session_timeout_ms) = config.kafka.session_timeout_ms {
        options.session_timeout_ms = session_timeout_ms;
    }
    options.transaction_timeout_ms = config.kafka.transaction_timeout_ms.unwrap_or(10_000);
    config.kafka.apply_to(&mut options)?;
    options.validate()?;
    Ok(Arc::new(KafkaLog::connect(options).with_context(|| format!("connecting to Kafka at {bootstrap}"))?))
}
