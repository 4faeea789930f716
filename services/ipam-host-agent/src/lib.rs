//! The host agent: the thin shell that makes a host run the DHCP servers placement gave it.
//!
//! Every decision is the core's ([`ipam_core::dhcp_plan`]): which networks this host serves, what
//! each server answers, which DHCP-port addresses to ask for or give back. The agent only moves data
//! between the log, that core and the DHCP backends:
//!
//! ```text
//!  ipam.dhcp-servers ─┐  follower thread       Desired    actix system (calling thread)
//!  ipam.reservations ─┴► HostDhcpView → changes ────────► Supervisor ─► Provisioner per network
//!                         │ port_requests/_releases          │ heartbeat     │ DhcpBackend::apply/stop
//!                         ▼                                  ▼               ▼
//!                    ipam.networks                     writer thread ─► ipam.hosts (heartbeat, status)
//! ```
//!
//! Blocking log reads happen on the follower thread and blocking appends of heartbeats and
//! statuses on the writer thread, never on an actor thread; see [`run`].

mod actors;
pub mod backend;
pub mod config;
pub mod dhcp_relay;
pub mod dnsmasq;
pub mod dnsmasq_server;
pub mod dnsmasq_shards;
mod follower;
pub mod lease_reporter;
mod leases;
mod outbox;
pub mod probe;
mod probe_gate;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ipam_core::dhcp_plan::PlanOptions;
use ipam_log::EventLog;
use ipam_runtime::Topics;

pub use actors::BackendFactory;
pub use backend::{BackendError, ConfigChange, DhcpBackend};
pub use config::HostAgentConfig;
pub use dnsmasq::{FilesBackend, render};
pub use dnsmasq_server::{DnsmasqBackend, DnsmasqOptions};
pub use ipam_runtime::dir_lock::{DirLock, LockError};

use crate::actors::Supervisor;
use crate::follower::{Follower, Tracker};
use crate::lease_reporter::LeaseReporter;

/// Locks a host agent's state directory for this process (see [`ipam_runtime::dir_lock`]): a
/// second agent on it is refused with an error naming the directory and the holder's pid.
pub fn lock_state_dir(dir: impl Into<std::path::PathBuf>) -> Result<DirLock, LockError> {
    DirLock::acquire(ipam_runtime::dir_lock::HOST_AGENT_DIR, dir)
}

/// Runs the agent of `config.host_id` until `stop` is set, then stops cleanly and returns.
///
/// `lock` is the agent's hold on its state directory (the backends' directory): taking it with
/// [`lock_state_dir`] before anything else touches the directory is what keeps a second agent off
/// it. `run` keeps it until it returns.
///
/// Every topic it reads or writes is named by `topics` (the deployment's prefix included), the same
/// [`Topics`] the drivers and the API are given, so that all processes of one deployment agree.
///
/// The calling thread runs an actix `System`: a supervisor actor, and one provisioning actor per
/// served network, each with its own backend instance made by `backend` and its own arbiter
/// thread. A follower thread reads `ipam.dhcp-servers` and `ipam.reservations` from offset 0 and
/// sends the supervisor each change of the plan; it also appends the DHCP-port requests and
/// releases to `ipam.networks`. A writer thread appends heartbeats (every
/// `heartbeat_interval_ms`) and server statuses to `ipam.hosts`. Topics that do not exist yet are
/// waited for.
///
/// Stopping leaves the DHCP servers running (their files in place): a restarted agent takes them
/// over without interrupting DHCP. `stop` is noticed within about 100 ms.
///
/// # Errors
/// When the configuration is unusable, a thread cannot be started, or the log fails in a way it
/// cannot recover from (anything but a missing topic or a storage error, which are retried).
pub fn run(
    log: Arc<dyn EventLog>,
    topics: Topics,
    config: HostAgentConfig,
    lock: DirLock,
    backend: BackendFactory,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    if config.heartbeat_interval_ms == 0 {
        bail!("heartbeat-interval-ms must be at least 1");
    }
    if config.lease_secs == 0 {
        bail!("lease-secs must be at least 1");
    }
    let host_id = config.host_id;
    let port_mac = config.port_mac();
    tracing::info!(host = %host_id, port_mac = %port_mac, dir = %lock.dir().display(), "Host agent starting.");
    // Not ready (in `/health`) until its follower has caught up with the log.
    ipam_runtime::metrics::host_agent_started(&host_id.to_string());

    let (outbox, writer) =
        outbox::spawn_writer(Arc::clone(&log), topics.clone(), host_id).context("cannot start the writer thread")?;
    // Set when the follower ends (on its own, by an error) or when the actor system ended first.
    let follower_done = Arc::new(AtomicBool::new(false));
    let system_done = Arc::new(AtomicBool::new(false));
    let leftovers = Arc::new(Mutex::new(Vec::new()));

    // Lease events from the servers' lease files, kept apart from the actors: it blocks on the
    // outbox's answer before it records what it reported.
    let reporter = {
        let stops = vec![Arc::clone(&stop), Arc::clone(&follower_done), Arc::clone(&system_done)];
        let reporter = LeaseReporter::new(lock.dir().to_owned(), host_id, outbox.clone(), stops);
        thread::Builder::new()
            .name("ipam-agent-leases".to_owned())
            .spawn(move || reporter.run())
            .context("cannot start the lease reporter thread")?
    };

    let system = actix::System::new();
    let supervisor = system.block_on({
        let supervisor = Supervisor::new(
            backend,
            outbox.clone(),
            Duration::from_millis(config.heartbeat_interval_ms),
            [Arc::clone(&stop), Arc::clone(&follower_done)],
            Arc::clone(&leftovers),
            actors::ProbeSetup { settings: config.probe, netns: config.netns.clone() },
        );
        async move { actix::Actor::start(supervisor) }
    });
    let follower = {
        let tracker = Tracker::new(host_id, topics, port_mac, PlanOptions { lease_secs: config.lease_secs });
        let follower = Follower::new(log, tracker, supervisor, [Arc::clone(&stop), Arc::clone(&system_done)]);
        let done = Arc::clone(&follower_done);
        thread::Builder::new().name("ipam-agent-follower".to_owned()).spawn(move || {
            let result = follower.run();
            done.store(true, Ordering::SeqCst);
            result
        })
    };
    let follower = match follower {
        Ok(handle) => Some(handle),
        Err(error) => {
            // Without a follower there is nothing to do: end the system at once.
            follower_done.store(true, Ordering::SeqCst);
            tracing::error!(error = %error, "Cannot start the follower thread.");
            None
        }
    };

    let system_result = system.run();
    system_done.store(true, Ordering::SeqCst);

    let follower_result = match follower {
        None => Err(anyhow::anyhow!("cannot start the follower thread")),
        Some(handle) => handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the follower thread panicked"))),
    };
    for arbiter in std::mem::take(&mut *leftovers.lock().unwrap_or_else(|e| e.into_inner())) {
        if arbiter.join().is_err() {
            tracing::error!("A provisioning thread panicked.");
        }
    }
    if reporter.join().is_err() {
        tracing::error!("The lease reporter thread panicked.");
    }
    outbox.shutdown();
    drop(outbox);
    if writer.join().is_err() {
        tracing::error!("The writer thread panicked.");
    }
    tracing::info!(host = %host_id, "Host agent stopped.");
    // Released only now: every thread that could touch the directory has ended.
    drop(lock);
    follower_result.context("the log follower failed")?;
    system_result.context("the actor system failed")?;
    Ok(())
}
