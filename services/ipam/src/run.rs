//! Starts the chosen components on one log, waits for SIGTERM or SIGINT, and stops them cleanly:
//! each driver commits its open batch and snapshots before the process exits. With
//! `--metrics-bind`, the process also serves `/health` and `/metrics` (see
//! [`ipam_runtime::monitor`]) from the moment it starts, so a probe sees it starting.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow};
use ipam_core::placement::PlacementConfig;
use ipam_core::{HostId, Topic};
use ipam_host_agent::probe::ProbeSettings;
use ipam_host_agent::{DnsmasqBackend, DnsmasqOptions, FilesBackend, HostAgentConfig};
use ipam_log::EventLog;
use ipam_runtime::allocator::AllocatorMachines;
use ipam_runtime::monitor::{self, Monitor};
use ipam_runtime::placement::PlacementMachines;
use ipam_runtime::{ComponentState, Driver, DriverConfig, Health, Readiness, SnapshotStore, Topics};

use crate::config::Config;

/// What one process runs.
#[derive(Debug, Default)]
pub struct Components {
    pub allocator: bool,
    pub placement: bool,
    pub api: bool,
    pub host_agents: Vec<HostAgentSpec>,
}

/// Which DHCP backend a host agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DhcpBackendKind {
    /// Run one dnsmasq per served network.
    Dnsmasq,
    /// Only write each served network's dnsmasq configuration file.
    Files,
}

/// One host agent to run.
#[derive(Debug, Clone)]
pub struct HostAgentSpec {
    pub host_id: HostId,
    /// The files backend's directory, or the dnsmasq backend's state directory.
    pub dir: PathBuf,
    pub backend: DhcpBackendKind,
    pub heartbeat_interval_ms: Option<u64>,
    /// Run the DHCP servers in this network namespace.
    pub netns: Option<String>,
    /// At most this many dnsmasq processes per served network.
    pub dnsmasq_max_shards: usize,
    /// How newly reserved addresses are probed before they are served.
    pub probe: ProbeSettings,
}

pub fn run(log: Arc<dyn EventLog>, config: &Config, components: Components) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing a signal handler")?;
    }
    let topics = Topics::new(&config.topic_prefix, config.partitions);
    // The deciding services own the topics; a host agent or the API waits for them to exist.
    if components.allocator || components.placement {
        log.create_topics(&topics.specs()).context("creating the topics")?;
    }
    let health = Health::new();
    ipam_runtime::metrics::set_build_info(env!("CARGO_PKG_VERSION"), option_env!("IPAM_REVISION").unwrap_or("unknown"));
    // Every component is on the board, starting, before `/health` can first be asked.
    for (enabled, name) in [(components.allocator, "allocator"), (components.placement, "placement")] {
        if enabled {
            health.set(name, ComponentState::Starting("opening the log".to_owned()));
            ipam_runtime::metrics::for_driver(name).started();
        }
    }
    for agent in &components.host_agents {
        ipam_runtime::metrics::host_agent_started(&agent.host_id.to_string());
    }
    let mut threads: Vec<(String, JoinHandle<anyhow::Result<()>>)> = Vec::new();
    if let Some(address) = config.metrics_bind {
        let monitor = Monitor { health: health.clone(), log: Arc::clone(&log), stale_after: monitor::STALE_AFTER };
        let (_, thread) = monitor::spawn(address, monitor, Arc::clone(&stop))?;
        threads.push(("monitor".to_owned(), thread));
    }
    // The deciding services keep snapshots of their state, the API of its read model (so that a
    // restart reads only the log after it, on Kafka as on the embedded log); they refuse to start
    // on snapshots of another log.
    let snapshots = if components.allocator || components.placement || components.api {
        let identity = log.identity().context("asking the log for its identity")?;
        Some(SnapshotStore::open(config.data_dir.join("snapshots"), identity)?)
    } else {
        None
    };
    let readiness = Arc::new(Readiness::default());
    let batch = config.batch_policy();
    let driver_config = |name: &str, topic: Topic| DriverConfig {
        name: name.to_owned(),
        group: format!("{}ipam-{name}", config.topic_prefix),
        transactional_id: format!("{}ipam-{name}-{}", config.topic_prefix, config.instance),
        input_topic: topics.name(topic),
        batch,
        snapshot_every_records: config.snapshot_every_records,
        snapshot_every: Duration::from_secs(config.snapshot_every_secs),
        snapshot_spacing: ipam_runtime::driver::SNAPSHOT_SPACING,
    };

    let system = actix::System::new();
    system.block_on(async {
        let arbiter = actix::Arbiter::current();
        // The allocator's network actors are spread over one arbiter thread per core.
        let cores = std::thread::available_parallelism().map_or(1, usize::from).min(16);
        let pool: Vec<actix::Arbiter> =
            if components.allocator { (0..cores).map(|_| actix::Arbiter::new()).collect() } else { Vec::new() };
        let mut drivers = 0;
        if components.allocator {
            drivers += 1;
            let machines = AllocatorMachines::new(pool.iter().map(actix::Arbiter::handle).collect());
            let driver = Driver::new(
                Arc::clone(&log),
                topics.clone(),
                driver_config("allocator", Topic::Networks),
                machines,
                snapshots.clone().context("the allocator's snapshots")?,
                health.clone(),
            )?;
            let (driver_stop, readiness) = (Arc::clone(&stop), Arc::clone(&readiness));
            threads.push(("allocator".to_owned(), spawn("allocator", move || driver.run(&driver_stop, &readiness))?));
        }
        if components.placement {
            drivers += 1;
            let placement_config = PlacementConfig {
                heartbeat_timeout_ms: config.heartbeat_timeout_ms,
                default_servers_count: config.default_servers_count,
            };
            let machines = PlacementMachines::new(arbiter.clone(), placement_config);
            let driver = Driver::new(
                Arc::clone(&log),
                topics.clone(),
                driver_config("placement", Topic::Hosts),
                machines,
                snapshots.clone().context("placement's snapshots")?,
                health.clone(),
            )?;
            let (driver_stop, readiness) = (Arc::clone(&stop), Arc::clone(&readiness));
            threads.push(("placement".to_owned(), spawn("placement", move || driver.run(&driver_stop, &readiness))?));
            if config.tick_interval_ms > 0 {
                let (log, topics, clock_stop) = (Arc::clone(&log), topics.clone(), Arc::clone(&stop));
                let (instance, interval) = (config.instance.clone(), Duration::from_millis(config.tick_interval_ms));
                threads.push((
                    "clock".to_owned(),
                    spawn("clock", move || {
                        ipam_runtime::clock::run(log, topics, &instance, interval, &clock_stop);
                        Ok(())
                    })?,
                ));
            }
        }
        if components.api {
            let tls = match (&config.api_tls_cert_file, &config.api_tls_key_file) {
                (Some(cert), Some(key)) => Some(ipam_api::tls::TlsFiles { cert: cert.clone(), key: key.clone() }),
                _ => None,
            };
            if let Some(files) = &tls {
                // Bad files stop `ipam` here (exit 1), not later in the API's own thread.
                ipam_api::tls::load(files)?;
            }
            let api_config = ipam_api::ApiConfig {
                bind: config.api_bind,
                bearer_token: config.api_token.clone(),
                tokens: ipam_api::auth::load_tokens(&config.api_tokens)?,
                tls,
                // Beside the deciding services' own: a restart reads only the log after it.
                snapshots: snapshots
                    .clone()
                    .map(|store| ipam_api::Snapshots { store, every: Duration::from_secs(config.snapshot_every_secs) }),
                ..ipam_api::ApiConfig::default()
            };
            let (log, topics, api_stop, api_health) =
                (Arc::clone(&log), topics.clone(), Arc::clone(&stop), health.clone());
            let groups = ipam_api::Groups::with_prefix(&config.topic_prefix);
            threads.push((
                "api".to_owned(),
                spawn("api", move || ipam_api::run(log, topics, groups, api_config, api_stop, api_health))?,
            ));
        }
        for agent in &components.host_agents {
            let mut agent_config = HostAgentConfig::new(agent.host_id);
            // Its probes go where its DHCP servers run.
            agent_config.netns.clone_from(&agent.netns);
            agent_config.probe = agent.probe;
            if let Some(interval) = agent.heartbeat_interval_ms {
                agent_config.heartbeat_interval_ms = interval;
            }
            // Before anything touches the directory: a second agent on it is refused here, and the
            // process exits with the error (which names the directory and the holder's pid).
            let lock = ipam_host_agent::lock_state_dir(&agent.dir).context("cannot start the host agent")?;
            let (log, agent_stop, agent) = (Arc::clone(&log), Arc::clone(&stop), agent.clone());
            let agent_topics = topics.clone();
            let name = format!("host-agent-{}", agent.host_id);
            threads.push((
                name.clone(),
                spawn(&name, move || {
                    let (dir, backend, netns) = (agent.dir.clone(), agent.backend, agent.netns.clone());
                    let max_shards = agent.dnsmasq_max_shards;
                    let factory = Box::new(move |_| match backend {
                        DhcpBackendKind::Files => {
                            Box::new(FilesBackend::new(dir.clone())) as Box<dyn ipam_host_agent::DhcpBackend>
                        }
                        DhcpBackendKind::Dnsmasq => {
                            let options =
                                DnsmasqOptions { netns: netns.clone(), max_shards, ..DnsmasqOptions::new(dir.clone()) };
                            Box::new(DnsmasqBackend::new(options))
                        }
                    });
                    ipam_host_agent::run(log, agent_topics, agent_config, lock, factory, agent_stop)
                })?,
            ));
        }

        // Wait for a signal or a component that ends by itself (an error), keeping this thread's
        // actors answering the drivers meanwhile.
        let mut announced = false;
        while !stop.load(Ordering::SeqCst) && threads.iter().all(|(_, thread)| !thread.is_finished()) {
            // Ready once every driver has rebuilt and every component on the board is ok (the API
            // listening, its read model caught up), so the line never precedes the API's address.
            if !announced && readiness.ready_count() >= drivers && health.all_ok() {
                announced = true;
                tracing::info!(partitions = config.partitions, "ipam is ready.");
            }
            actix::clock::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::SeqCst);
        while threads.iter().any(|(_, thread)| !thread.is_finished()) {
            actix::clock::sleep(Duration::from_millis(20)).await;
        }
        let mut failure = None;
        for (name, thread) in threads.drain(..) {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    health.set(&name, ComponentState::Failed(format!("{error:#}")));
                    tracing::error!(component = %name, error = format!("{error:#}"), "Component failed.");
                    failure.get_or_insert(error.context(format!("{name} failed")));
                }
                Err(_) => {
                    failure.get_or_insert(anyhow!("{name} panicked"));
                }
            }
        }
        for arbiter in pool {
            arbiter.stop();
            let _ = arbiter.join();
        }
        failure.map_or(Ok(()), Err)
    })
}

fn spawn(
    name: &str,
    body: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    std::thread::Builder::new().name(name.to_owned()).spawn(body).with_context(|| format!("starting {name}"))
}
