//! The actix side of the agent: a [`Supervisor`] on the system thread, and one [`Provisioner`] per
//! served network, each on an arbiter (a thread) of its own.
//!
//! The supervisor starts a provisioner when the plan gains a network, forwards every changed
//! configuration to it, and asks it to stop when the plan loses the network; it also sends the
//! heartbeat and notices when the agent must shut down. A provisioner owns its network's backend
//! instance and applies configurations through it. Backend calls may block (files, a dnsmasq
//! reload), which is why each provisioner has its own thread: a slow server delays neither the
//! others nor the heartbeat. Nothing here reads the log; writes go through the [`Outbox`] thread.
//!
//! Per network, stopping and starting are ordered: a network planned again while its previous
//! provisioner is still stopping waits for that stop to finish, so an old `stop` can never remove
//! the file a new `apply` just wrote.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Addr, Arbiter, AsyncContext, Context, Handler, Message, SpawnHandle, System};
use ipam_core::NetworkId;
use ipam_core::dhcp_plan::{HostChange, NetworkDhcpConfig};
use ipam_core::event::{DhcpServerState, DhcpServerSynced, ServedNetwork};

use crate::backend::{ConfigChange, DhcpBackend, one_line};
use crate::outbox::Outbox;

mod probing;
pub(crate) use probing::ProbeSetup;

/// At most this many characters of a status detail: a few refused subnets, each with dnsmasq's words.
const MAX_DETAIL_CHARS: usize = 1000;

/// How often the supervisor checks whether the agent must stop.
const STOP_POLL: Duration = Duration::from_millis(50);

/// At most one `synced` report per network this often: a burst of VM starts is one report.
const SYNCED_COALESCE: Duration = Duration::from_millis(100);

/// After a backend applied a change of hosts, the next apply waits at least this many times as
/// long as that took (at most [`MAX_APPLY_WAIT`]): under a stream of changes a server whose every
/// change costs much (a file of thousands of hosts written whole) takes a fifth of a thread at
/// most, the changes meanwhile coming together in its next apply, while a change after a quiet
/// spell is applied at once. On `ipam bench`'s files backend (20 networks of 10,000 hosts) the
/// provisioners' rewrites took a third of both cores during the load otherwise. A whole
/// configuration (a server started, which may take a while) holds nothing back.
const APPLY_SPACING: u32 = 4;

/// The longest [`APPLY_SPACING`] holds a change back.
const MAX_APPLY_WAIT: Duration = Duration::from_secs(1);

/// Makes the backend instance of one network's provisioner.
pub type BackendFactory = Box<dyn FnMut(NetworkId) -> Box<dyn DhcpBackend> + Send>;

/// From the follower: what changed in the plan since its previous message.
#[derive(Debug, Default, Message)]
#[rtype(result = "()")]
pub(crate) struct Desired {
    /// What changed in each network's configuration: whole (new networks among them), or hosts.
    pub(crate) changed: Vec<ServerChange>,
    /// Networks no longer planned, with the epoch they were last assigned under: their servers
    /// stop (including servers a previous run of the agent left behind).
    pub(crate) gone: Vec<(NetworkId, u64)>,
    /// Per changed network, the next offset of its `ipam.reservations` partition the follower had
    /// read: once the change is applied, the server serves every reservation before it.
    pub(crate) reservations_offsets: BTreeMap<NetworkId, u64>,
}

impl Desired {
    pub(crate) fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.gone.is_empty()
    }
}

/// A change of one network's server configuration, as the view said it (see
/// [`ipam_core::dhcp_plan::PlanChange`]).
#[derive(Debug)]
pub(crate) enum ServerChange {
    /// The whole configuration: the network's first, or the server itself changed (epoch,
    /// subnets, options, its own address, probing).
    Whole(NetworkDhcpConfig),
    /// Only these hosts came or went, in the plan's order; the rest is as sent before.
    Hosts { network_id: NetworkId, hosts: Vec<HostChange> },
}

impl ServerChange {
    pub(crate) fn network_id(&self) -> NetworkId {
        match self {
            ServerChange::Whole(config) => config.network_id,
            ServerChange::Hosts { network_id, .. } => *network_id,
        }
    }
}

/// From a provisioner: its server is stopped and the actor is ending.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Stopped {
    network_id: NetworkId,
}

/// To a provisioner: make the server match this change of its configuration, which then holds the
/// reservations read up to this offset, when known (see [`Desired::reservations_offsets`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Apply(ServerChange, Option<u64>);

/// To a provisioner, from itself: apply what was received. An [`Apply`] (or a probe's answer) only
/// takes its change in and sends this once; actix handles a notification after the messages
/// already queued, so the changes of a backlog of messages (a server slower than the changes
/// coming, a file of thousands of hosts written whole) are applied together, and a lone change at
/// once.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Reconcile;

/// To a provisioner: the network is no longer served here; stop the server, then the actor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Unassign {
    /// The epoch the network was last assigned under, for the status report.
    epoch: u64,
}

/// A provisioner and the arbiter it runs on.
#[derive(Debug)]
struct Running {
    addr: Addr<Provisioner>,
    arbiter: Arbiter,
    epoch: u64,
}

/// Starts, feeds and stops the provisioners, and sends heartbeats.
pub(crate) struct Supervisor {
    factory: BackendFactory,
    outbox: Outbox,
    heartbeat_interval: Duration,
    retry_interval: Duration,
    /// Checked every [`STOP_POLL`]: the caller's stop flag, and the follower's "I ended" flag.
    stops: [Arc<AtomicBool>; 2],
    live: BTreeMap<NetworkId, Running>,
    /// Provisioners told to stop that have not reported back yet.
    stopping: BTreeMap<NetworkId, Running>,
    /// Configurations of networks planned again while their previous provisioner is stopping.
    deferred: BTreeMap<NetworkId, (NetworkDhcpConfig, Option<u64>)>,
    /// Where the arbiters still running at shutdown are handed over, for [`crate::run`] to join.
    leftovers: Arc<Mutex<Vec<Arbiter>>>,
    /// How every provisioner probes newly reserved addresses.
    probe: ProbeSetup,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("live", &self.live.keys().collect::<Vec<_>>())
            .field("stopping", &self.stopping.keys().collect::<Vec<_>>())
            .field("deferred", &self.deferred.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    pub(crate) fn new(
        factory: BackendFactory,
        outbox: Outbox,
        heartbeat_interval: Duration,
        stops: [Arc<AtomicBool>; 2],
        leftovers: Arc<Mutex<Vec<Arbiter>>>,
        probe: ProbeSetup,
    ) -> Supervisor {
        Supervisor {
            factory,
            outbox,
            heartbeat_interval,
            // A failed apply is retried at the heartbeat's pace: often enough to recover soon from
            // a transient error, rarely enough not to hammer a broken one.
            retry_interval: heartbeat_interval,
            stops,
            live: BTreeMap::new(),
            stopping: BTreeMap::new(),
            deferred: BTreeMap::new(),
            leftovers,
            probe,
        }
    }

    fn heartbeat(&self) {
        let serving =
            self.live.iter().map(|(&network_id, running)| ServedNetwork { network_id, epoch: running.epoch }).collect();
        self.outbox.heartbeat(serving);
    }

    fn start_provisioner(&mut self, network_id: NetworkId, epoch: u64, ctx: &mut Context<Self>) -> Running {
        let backend = (self.factory)(network_id);
        let arbiter = Arbiter::new();
        let supervisor = ctx.address();
        let outbox = self.outbox.clone();
        let retry_interval = self.retry_interval;
        let probes = probing::Probes::new(self.probe.clone());
        let addr = Provisioner::start_in_arbiter(&arbiter.handle(), move |_| Provisioner {
            network_id,
            backend,
            outbox,
            supervisor,
            retry_interval,
            desired: None,
            admitted: None,
            unapplied: None,
            applied_epoch: None,
            failure: None,
            reported_running: None,
            retry: None,
            reconcile_due: false,
            apply_not_before: None,
            synced: Synced::default(),
            probes,
        });
        Running { addr, arbiter, epoch }
    }

    fn serve(&mut self, config: NetworkDhcpConfig, offset: Option<u64>, ctx: &mut Context<Self>) {
        let network_id = config.network_id;
        let (epoch, interface) = (config.epoch, &config.interface);
        tracing::info!(network = %network_id, epoch, interface = %interface, "Starting the DHCP server.");
        let running = self.start_provisioner(network_id, config.epoch, ctx);
        running.addr.do_send(Apply(ServerChange::Whole(config), offset));
        self.live.insert(network_id, running);
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.heartbeat();
        ctx.run_interval(self.heartbeat_interval, |this, _| this.heartbeat());
        ctx.run_interval(STOP_POLL, |this, ctx| {
            if this.stops.iter().any(|stop| stop.load(Ordering::SeqCst)) {
                ctx.stop();
            }
        });
    }

    /// Shutting the agent down leaves the DHCP servers as they are: a restart (an upgrade, a crash)
    /// must not interrupt DHCP, and the next agent re-applies the same files as no-ops. Only an
    /// unassignment stops a server.
    fn stopped(&mut self, _: &mut Context<Self>) {
        let mut leftovers = self.leftovers.lock().unwrap_or_else(|e| e.into_inner());
        for (_, running) in std::mem::take(&mut self.live).into_iter().chain(std::mem::take(&mut self.stopping)) {
            running.arbiter.stop();
            leftovers.push(running.arbiter);
        }
        System::current().stop();
    }
}

impl Handler<Desired> for Supervisor {
    type Result = ();

    fn handle(&mut self, desired: Desired, ctx: &mut Context<Self>) {
        for (network_id, epoch) in desired.gone {
            self.deferred.remove(&network_id);
            if self.stopping.contains_key(&network_id) {
                continue;
            }
            // A network without a provisioner is a leftover of a previous run: one is started
            // just to stop it, so that the stop is ordered with a later start like any other.
            let running = match self.live.remove(&network_id) {
                Some(running) => running,
                None => self.start_provisioner(network_id, epoch, ctx),
            };
            tracing::info!(network = %network_id, epoch, "Stopping the DHCP server.");
            running.addr.do_send(Unassign { epoch });
            self.stopping.insert(network_id, running);
        }
        for change in desired.changed {
            let network_id = change.network_id();
            let offset = desired.reservations_offsets.get(&network_id).copied();
            if self.stopping.contains_key(&network_id) {
                match change {
                    ServerChange::Whole(config) => {
                        self.deferred.insert(network_id, (config, offset));
                    }
                    ServerChange::Hosts { hosts, .. } => {
                        if let Some((config, deferred_offset)) = self.deferred.get_mut(&network_id) {
                            config.apply_hosts(&hosts);
                            *deferred_offset = offset.or(*deferred_offset);
                        }
                    }
                }
            } else if let Some(running) = self.live.get_mut(&network_id) {
                if let ServerChange::Whole(config) = &change {
                    running.epoch = config.epoch;
                }
                running.addr.do_send(Apply(change, offset));
            } else if let ServerChange::Whole(config) = change {
                self.serve(config, offset, ctx);
            }
            // Hosts of a network without a provisioner cannot come: the follower sends a network's
            // hosts only after its whole configuration.
        }
    }
}

impl Handler<Stopped> for Supervisor {
    type Result = ();

    fn handle(&mut self, stopped: Stopped, ctx: &mut Context<Self>) {
        // The provisioner stops its own arbiter; the handle is dropped, and the thread ends alone.
        self.stopping.remove(&stopped.network_id);
        if let Some((config, offset)) = self.deferred.remove(&stopped.network_id) {
            self.serve(config, offset, ctx);
        }
    }
}

/// Keeps one network's DHCP server at its desired configuration.
struct Provisioner {
    network_id: NetworkId,
    backend: Box<dyn DhcpBackend>,
    outbox: Outbox,
    supervisor: Addr<Supervisor>,
    retry_interval: Duration,
    /// The newest configuration received, kept current with the host changes received since.
    desired: Option<NetworkDhcpConfig>,
    /// `desired` without the hosts held back while probed: what the backend is asked to serve.
    admitted: Option<NetworkDhcpConfig>,
    /// What changed in `admitted` since the backend last applied it; `None` when it applied all.
    unapplied: Option<Unapplied>,
    /// The epoch of the configuration the backend last applied.
    applied_epoch: Option<u64>,
    /// The failure last reported, so a retry that fails the same way is not reported again.
    failure: Option<String>,
    /// The epoch and subnet count last reported `running`: a status is a change of state, so a
    /// configuration that only gained or lost hosts is not reported again (at 65k reservations
    /// that would be one event on `ipam.hosts` per VM start).
    /// What the server does not serve is part of that state.
    reported_running: Option<(u64, usize, Option<String>)>,
    retry: Option<SpawnHandle>,
    /// A [`Reconcile`] is on its way: the changes received until it comes are applied with it.
    reconcile_due: bool,
    /// When the backend may apply again (see [`APPLY_SPACING`]).
    apply_not_before: Option<Instant>,
    synced: Synced,
    /// Newly reserved hosts are probed before they are served.
    probes: probing::Probes,
}

/// What a provisioner reports as `ipam.dhcp_server.synced.v1`: at most one report per
/// [`SYNCED_COALESCE`], of the newest configuration applied.
#[derive(Debug, Default)]
struct Synced {
    /// The offset of the newest configuration received (see [`Apply`]).
    received: Option<u64>,
    /// Applied and not reported yet: (epoch, offset).
    due: Option<(u64, u64)>,
    last_sent: Option<Instant>,
    timer: Option<SpawnHandle>,
}

/// What changed in a provisioner's admitted configuration since its backend last applied it.
#[derive(Debug)]
enum Unapplied {
    /// Anything may have: a new configuration, or an apply that failed.
    Whole,
    /// Only these hosts, in order.
    Hosts(Vec<HostChange>),
}

impl Unapplied {
    /// `unapplied` with `hosts` changed too.
    fn add_hosts(unapplied: &mut Option<Unapplied>, hosts: impl IntoIterator<Item = HostChange>) {
        match unapplied.get_or_insert_with(|| Unapplied::Hosts(Vec::new())) {
            Unapplied::Whole => {}
            Unapplied::Hosts(changes) => changes.extend(hosts),
        }
    }

    fn change(&self) -> ConfigChange<'_> {
        match self {
            Unapplied::Whole => ConfigChange::Whole,
            Unapplied::Hosts(hosts) => ConfigChange::Hosts(hosts),
        }
    }
}

impl Provisioner {
    /// Takes in a change of the configuration: hosts new to it are held back while probed, and
    /// what may be served at once goes to the backend's next apply.
    fn receive(&mut self, change: ServerChange, ctx: &mut Context<Self>) {
        match change {
            ServerChange::Whole(config) => {
                if self.desired.as_ref() == Some(&config) {
                    return;
                }
                let previous = self.desired.take();
                self.admitted = Some(self.admit(previous.as_ref(), &config, ctx));
                self.desired = Some(config);
                self.unapplied = Some(Unapplied::Whole);
            }
            ServerChange::Hosts { hosts, .. } => {
                let Some(desired) = self.desired.as_mut() else { return };
                desired.apply_hosts(&hosts);
                let (interface, probe_on) = (desired.interface.clone(), desired.conflict_probe);
                let served = self.admit_changes(&hosts, interface, probe_on, ctx);
                // New hosts all held back while probed change nothing the server serves yet.
                if !served.is_empty() {
                    if let Some(admitted) = self.admitted.as_mut() {
                        admitted.apply_hosts(&served);
                    }
                    Unapplied::add_hosts(&mut self.unapplied, served);
                }
            }
        }
    }

    /// Reconciles once the messages already queued are handled (see [`Reconcile`]).
    fn reconcile_soon(&mut self, ctx: &mut Context<Self>) {
        if !std::mem::replace(&mut self.reconcile_due, true) {
            ctx.notify(Reconcile);
        }
    }

    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.retry.take() {
            ctx.cancel_future(handle);
        }
        let (Some(config), Some(unapplied)) = (&self.admitted, &self.unapplied) else { return };
        let (started, hosts_only) = (Instant::now(), matches!(unapplied, Unapplied::Hosts(_)));
        let applied = self.backend.apply(config, unapplied.change());
        let spacing = (started.elapsed() * APPLY_SPACING).min(MAX_APPLY_WAIT);
        self.apply_not_before = hosts_only.then(|| Instant::now() + spacing);
        match applied {
            Ok(()) => {
                let hosts = config.host_count();
                let mut detail = format!("{} subnets, {hosts} hosts", config.subnets.len());
                // What the server cannot serve: subnets dnsmasq refused, and subnets where the
                // allocator refused the server an address of its own.
                let unaddressed =
                    config.subnets.iter().filter(|subnet| subnet.server_address.is_none()).filter_map(|subnet| {
                        let why = subnet.server_address_refused.as_ref()?;
                        Some(format!("no address of its own in {} ({why})", subnet.cidr))
                    });
                let reasons: Vec<String> = self.backend.degraded().into_iter().chain(unaddressed).collect();
                let degraded = (!reasons.is_empty()).then(|| reasons.join("; "));
                let server_state = match &degraded {
                    Some(why) => {
                        detail = one_line(&format!("degraded: {why} (asked: {detail})"), MAX_DETAIL_CHARS);
                        DhcpServerState::Degraded
                    }
                    None => DhcpServerState::Running,
                };
                let (network, epoch) = (self.network_id, config.epoch);
                tracing::debug!(network = %network, epoch, detail, "Applied the DHCP configuration.");
                let state = (config.epoch, config.subnets.len(), degraded);
                if self.reported_running.as_ref() != Some(&state) || self.failure.is_some() {
                    tracing::info!(network = %network, epoch, detail, state = ?server_state, "DHCP server serving.");
                    self.outbox.status(self.network_id, config.epoch, server_state, detail);
                    self.reported_running = Some(state);
                }
                self.unapplied = None;
                self.applied_epoch = Some(epoch);
                self.failure = None;
                // Hosts held back while probed are not served yet.
                if let Some(offset) = self.synced.received
                    && !self.probes.busy()
                {
                    self.synced.due = Some((epoch, offset));
                    self.report_synced(ctx);
                }
            }
            Err(error) => {
                let detail = one_line(&error_chain(&error), MAX_DETAIL_CHARS);
                if self.failure.as_deref() != Some(&detail) {
                    let (network, epoch) = (self.network_id, config.epoch);
                    tracing::warn!(network = %network, epoch, error = %detail, "Cannot apply the DHCP configuration.");
                    self.outbox.status(self.network_id, config.epoch, DhcpServerState::Failed, detail.clone());
                    self.failure = Some(detail);
                }
                // It may have been applied in part: the retry applies it whole.
                self.unapplied = Some(Unapplied::Whole);
                self.retry = Some(ctx.run_later(self.retry_interval, |this, ctx| {
                    this.retry = None;
                    this.reconcile(ctx);
                }));
            }
        }
    }
}

impl Provisioner {
    /// Reports the synced state due, now or, within [`SYNCED_COALESCE`] of the last report, once
    /// that much time has passed (with the newest state by then).
    fn report_synced(&mut self, ctx: &mut Context<Self>) {
        if self.synced.timer.is_some() {
            return;
        }
        let wait = self.synced.last_sent.map_or(Duration::ZERO, |sent| SYNCED_COALESCE.saturating_sub(sent.elapsed()));
        if !wait.is_zero() {
            self.synced.timer = Some(ctx.run_later(wait, |this, ctx| {
                this.synced.timer = None;
                this.report_synced(ctx);
            }));
            return;
        }
        let Some((epoch, reservations_offset)) = self.synced.due.take() else { return };
        let host_id = self.outbox.host_id();
        self.outbox.synced(DhcpServerSynced { host_id, network_id: self.network_id, epoch, reservations_offset });
        self.synced.last_sent = Some(Instant::now());
    }
}

impl std::fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner").field("network_id", &self.network_id).finish_non_exhaustive()
    }
}

impl Actor for Provisioner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(probing::CONFLICT_RECHECK, |this, ctx| this.recheck_conflicts(ctx));
        // Supervision: a server that died is restarted (the backend applies its own backoff).
        ctx.run_interval(self.retry_interval, |this, _| {
            let Some(epoch) = this.applied_epoch else { return };
            match this.backend.check() {
                Ok(None) => {}
                Ok(Some(detail)) => {
                    tracing::warn!(network = %this.network_id, detail, "Restarted the DHCP server.");
                    let detail = one_line(&detail, MAX_DETAIL_CHARS);
                    this.outbox.status(this.network_id, epoch, DhcpServerState::Restarting, detail);
                }
                Err(error) => {
                    let detail = one_line(&error_chain(&error), MAX_DETAIL_CHARS);
                    tracing::warn!(network = %this.network_id, error = %detail, "Cannot restart the DHCP server.");
                    this.outbox.status(this.network_id, epoch, DhcpServerState::Failed, detail);
                }
            }
        });
    }

    /// The arbiter was made for this actor alone, so it ends with it.
    fn stopped(&mut self, _: &mut Context<Self>) {
        Arbiter::current().stop();
    }
}

impl Handler<Apply> for Provisioner {
    type Result = ();

    fn handle(&mut self, Apply(change, offset): Apply, ctx: &mut Context<Self>) {
        self.synced.received = offset.or(self.synced.received);
        self.receive(change, ctx);
        self.reconcile_soon(ctx);
    }
}

impl Handler<Reconcile> for Provisioner {
    type Result = ();

    fn handle(&mut self, _: Reconcile, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if let Some(wait) = self.apply_not_before.filter(|&at| at > now).map(|at| at - now) {
            // Still due: what comes meanwhile joins this apply.
            ctx.notify_later(Reconcile, wait);
            return;
        }
        self.reconcile_due = false;
        self.reconcile(ctx);
    }
}

impl Handler<Unassign> for Provisioner {
    type Result = ();

    fn handle(&mut self, Unassign { epoch }: Unassign, ctx: &mut Context<Self>) {
        if let Some(handle) = self.retry.take() {
            ctx.cancel_future(handle);
        }
        let epoch = self.desired.as_ref().map_or(epoch, |config| config.epoch);
        match self.backend.stop(self.network_id) {
            Ok(()) => {
                tracing::info!(network = %self.network_id, epoch, "Stopped the DHCP server.");
                // A sweep of a previous run's leftover (no configuration in this run) is not
                // reported: every start would otherwise report every network ever served.
                if self.desired.is_some() {
                    self.outbox.status(self.network_id, epoch, DhcpServerState::Stopped, String::new());
                }
            }
            Err(error) => {
                // Best effort, as DESIGN.md says of stopping: the network is served elsewhere now.
                let detail = error_chain(&error);
                tracing::warn!(network = %self.network_id, epoch, error = %detail, "Cannot stop the DHCP server.");
                self.outbox.status(self.network_id, epoch, DhcpServerState::Failed, detail);
            }
        }
        self.supervisor.do_send(Stopped { network_id: self.network_id });
        ctx.stop();
    }
}

/// An error with its sources, `outer: inner: …`, as `{:#}` prints an anyhow chain.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Condvar;

    use ipam_core::dhcp_plan::{DhcpHost, SubnetDhcpConfig};
    use ipam_core::{HostId, Mac, SubnetId};
    use ipam_log::{EventLog, MemoryLog};
    use ipam_runtime::Topics;

    use super::*;
    use crate::backend::BackendError;
    use crate::outbox;

    const NETWORK: NetworkId = NetworkId::from_u128(1);
    const SUBNET: SubnetId = SubnetId::from_u128(2);

    /// What a [`Gated`] backend was asked: each apply's change (whole or how many hosts) and the
    /// hosts its configuration then held.
    #[derive(Default)]
    struct Calls {
        applies: Vec<(Option<usize>, usize)>,
        open: bool,
    }

    /// A backend that holds every apply until the test opens its gate, as a slow server would.
    struct Gated(Arc<(Mutex<Calls>, Condvar)>);

    impl DhcpBackend for Gated {
        fn apply(&mut self, config: &NetworkDhcpConfig, change: ConfigChange<'_>) -> Result<(), BackendError> {
            let (calls, opened) = &*self.0;
            let mut calls = calls.lock().unwrap();
            calls.applies.push((changed_hosts(change), config.host_count()));
            let _open = opened.wait_while(calls, |calls| !calls.open).unwrap();
            Ok(())
        }

        fn stop(&mut self, _: NetworkId) -> Result<(), BackendError> {
            Ok(())
        }
    }

    /// How many hosts a change of hosts holds; `None` for a whole configuration.
    fn changed_hosts(change: ConfigChange<'_>) -> Option<usize> {
        match change {
            ConfigChange::Whole => None,
            ConfigChange::Hosts(hosts) => Some(hosts.len()),
        }
    }

    fn host(n: u8) -> HostChange {
        let mac: Mac = format!("52:54:00:00:00:{n:02x}").parse().unwrap();
        let ip: IpAddr = format!("10.0.0.{}", 10 + n).parse().unwrap();
        HostChange { network_id: NETWORK, subnet_id: SUBNET, host: DhcpHost { mac, ip }, served: true }
    }

    fn config() -> NetworkDhcpConfig {
        let subnet = SubnetDhcpConfig {
            subnet_id: SUBNET,
            cidr: "10.0.0.0/24".parse().unwrap(),
            router: "10.0.0.1".parse().unwrap(),
            dns_servers: Vec::new(),
            ntp_servers: Vec::new(),
            lease_secs: 3600,
            server_address: None,
            server_address_refused: None,
            hosts: Vec::new(),
        };
        let interface = "br0".parse().unwrap();
        NetworkDhcpConfig { network_id: NETWORK, epoch: 1, interface, subnets: vec![subnet], conflict_probe: false }
    }

    /// Waits, on the actor system's own thread, until `done` holds; panics after 20 s.
    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
    }

    /// One apply a [`Slow`] backend was asked for: the change (whole, or how many hosts), the hosts
    /// the configuration then held, and when it began and ended.
    type SlowApply = (Option<usize>, usize, Instant, Instant);

    /// A backend whose every apply of host changes takes [`SLOW_APPLY`] (as a large file's would).
    struct Slow(Arc<Mutex<Vec<SlowApply>>>);

    const SLOW_APPLY: Duration = Duration::from_millis(250);

    impl DhcpBackend for Slow {
        fn apply(&mut self, config: &NetworkDhcpConfig, change: ConfigChange<'_>) -> Result<(), BackendError> {
            let (began, hosts) = (Instant::now(), changed_hosts(change));
            if hosts.is_some() {
                std::thread::sleep(SLOW_APPLY);
            }
            self.0.lock().unwrap().push((hosts, config.host_count(), began, Instant::now()));
            Ok(())
        }

        fn stop(&mut self, _: NetworkId) -> Result<(), BackendError> {
            Ok(())
        }
    }

    /// Runs a supervisor with `factory`'s backend, and `script` against it, on an actor system.
    fn with_supervisor<F: Future<Output = ()>>(factory: BackendFactory, script: impl FnOnce(Addr<Supervisor>) -> F) {
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
        let topics = Topics::new("", 4);
        log.create_topics(&topics.specs()).unwrap();
        let (outbox, writer) = outbox::spawn_writer(log, topics, HostId::from_u128(3)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let leftovers = Arc::new(Mutex::new(Vec::new()));
        let probe = ProbeSetup { settings: crate::probe::ProbeSettings::default(), netns: None };
        let system = System::new();
        system.block_on(async {
            let supervisor = Supervisor::new(
                factory,
                outbox.clone(),
                Duration::from_secs(3600),
                [Arc::clone(&stop), Arc::new(AtomicBool::new(false))],
                Arc::clone(&leftovers),
                probe,
            )
            .start();
            script(supervisor).await;
            stop.store(true, Ordering::SeqCst);
        });
        system.run().unwrap();
        for arbiter in std::mem::take(&mut *leftovers.lock().unwrap()) {
            arbiter.join().unwrap();
        }
        outbox.shutdown();
        writer.join().unwrap();
    }

    fn desired(change: ServerChange) -> Desired {
        Desired { changed: vec![change], ..Desired::default() }
    }

    fn hosts(range: std::ops::RangeInclusive<u8>) -> ServerChange {
        ServerChange::Hosts { network_id: NETWORK, hosts: range.map(host).collect() }
    }

    #[test]
    fn a_change_soon_after_a_costly_apply_waits_and_takes_the_next_changes_along() {
        let applies = Arc::new(Mutex::new(Vec::new()));
        let factory: BackendFactory = {
            let applies = Arc::clone(&applies);
            Box::new(move |_| Box::new(Slow(Arc::clone(&applies))) as Box<dyn DhcpBackend>)
        };
        let count = |applies: &Mutex<Vec<SlowApply>>| applies.lock().unwrap().len();
        let seen = Arc::clone(&applies);
        with_supervisor(factory, |supervisor| async move {
            let applies = seen;
            supervisor.send(desired(ServerChange::Whole(config()))).await.unwrap();
            wait_until("the server is started", || count(&applies) == 1).await;
            supervisor.send(desired(hosts(1..=1))).await.unwrap();
            wait_until("the first host is applied", || count(&applies) == 2).await;
            supervisor.send(desired(hosts(2..=2))).await.unwrap();
            supervisor.send(desired(hosts(3..=3))).await.unwrap();
            wait_until("every host is applied", || count(&applies) >= 3).await;
        });
        let applies = applies.lock().unwrap();
        let what: Vec<(Option<usize>, usize)> = applies.iter().map(|&(change, hosts, ..)| (change, hosts)).collect();
        assert_eq!(what, vec![(None, 0), (Some(1), 1), (Some(2), 3)], "the last two changes in one apply");
        // The first host's apply took 250 ms: the next began four times that (the most, a second)
        // after it ended, not at once. A busy machine only makes the gap longer.
        let gap = applies[2].2 - applies[1].3;
        assert!(gap >= Duration::from_millis(900), "the next apply began {gap:?} after a 250 ms one");
    }

    #[test]
    fn changes_that_came_while_the_backend_was_busy_are_applied_together() {
        let gate = Arc::new((Mutex::new(Calls::default()), Condvar::new()));
        let factory: BackendFactory = {
            let gate = Arc::clone(&gate);
            Box::new(move |_| Box::new(Gated(Arc::clone(&gate))) as Box<dyn DhcpBackend>)
        };
        let applies = |gate: &(Mutex<Calls>, Condvar)| gate.0.lock().unwrap().applies.clone();
        let held = Arc::clone(&gate);
        with_supervisor(factory, |supervisor| async move {
            let gate = held;
            supervisor.send(desired(ServerChange::Whole(config()))).await.unwrap();
            wait_until("the first apply is under way", || applies(&gate).len() == 1).await;
            // Ten changes of one host each, while the backend is still busy with the first: the
            // supervisor has handed each to the provisioner once its `send` is answered.
            for n in 1..=10 {
                supervisor.send(desired(hosts(n..=n))).await.unwrap();
            }
            {
                let (calls, opened) = &*gate;
                calls.lock().unwrap().open = true;
                opened.notify_all();
            }
            wait_until("every host is applied", || applies(&gate).last().is_some_and(|&(_, hosts)| hosts == 10)).await;
        });
        // The spacing after the first apply (which took as long as the test made it) may hold the
        // second back a while, never split it.
        assert_eq!(applies(&gate), vec![(None, 0), (Some(10), 10)], "the ten changes in one apply");
    }
}
