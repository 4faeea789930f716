//! DHCP server placement: which hosts run a DHCP server for which network.
//!
//! Placement is one pure state machine fed by the host inventory and liveness (`ipam.hosts`), the
//! network-level engine events (`ipam.networks`), subnet activation (`ipam.reservations`) and clock
//! ticks. It keeps every IPAM-enabled network that has an active subnet served by exactly
//! `min(servers_count, eligible hosts)` eligible hosts (invariant 5), and says so with
//! `ipam.dhcp_server.assigned.v1` / `unassigned.v1` events whose `cause` is the input's id.
//!
//! A host is eligible for a network when the engine says it is up, it has not missed its heartbeat
//! for longer than the timeout, and the network is attached to it. Servers on hosts that stop being
//! eligible are taken away and replaced by the least loaded eligible hosts; healthy servers are never
//! moved, because moving one costs a DHCP outage for nothing. Each assignment takes the next value of
//! the network's epoch, a counter that only grows (even across the network's removal), so a host
//! agent holding an older epoch knows it was superseded.
//!
//! Each input reconciles only the networks it can affect (its dirty set), found through indexes
//! (network → attached hosts, host → served networks, the under-served networks, hosts by last
//! heartbeat), so one host loss costs time proportional to what that host served, not to the size
//! of the fleet. The indexes are derived state: a snapshot holds only the primary state and
//! [`Placement::restore`] rebuilds them.
//!
//! An input whose id is among the last [`INPUT_WINDOW`] placement applied is a retry (or a tick or
//! heartbeat written twice) and is ignored: no state change, no output ([`RecentInputs`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::event::{
    AssignReason, ClockTicked, DhcpServerAssigned, DhcpServerUnassigned, Envelope, Event, HostHeartbeat, HostRemoved,
    HostStatus, HostUpserted, NetworkRemoved, NetworkUpserted, SubnetActivated, SubnetDeactivated, UnassignReason,
};
use crate::ids::{EventId, HostId, NetworkId, SubnetId};
use crate::net::InterfaceName;
use crate::recent::{INPUT_WINDOW, RecentInputs};

/// How placement decides; not part of the snapshot, so it can change across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PlacementConfig {
    /// A host whose last heartbeat (or up-upsert) is older than this, at a tick, is lost.
    pub heartbeat_timeout_ms: u64,
    /// The number of DHCP servers of a network whose `servers_count` is absent.
    pub default_servers_count: u8,
}

impl Default for PlacementConfig {
    fn default() -> PlacementConfig {
        // Two servers, so one host loss leaves a server answering while the replacement starts.
        PlacementConfig { heartbeat_timeout_ms: 15_000, default_servers_count: 2 }
    }
}

/// Why a snapshot could not be restored. The caller should rebuild state by replaying the log
/// from the beginning instead.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are not a placement snapshot (corrupt, truncated, or another machine's).
    #[error("the placement snapshot is unreadable: {0}")]
    Decode(#[from] serde_json::Error),
    /// The snapshot was written by a version of placement whose state layout this one does not read.
    #[error("the placement snapshot has format version {found}; this build reads version {expected}")]
    Version { found: u32, expected: u32 },
}

/// The format version of [`Placement::snapshot`]; bump it when [`State`] changes shape.
const SNAPSHOT_VERSION: u32 = 1;

/// The DHCP server placement state machine. See the module documentation.
#[derive(Debug, Clone)]
pub struct Placement {
    config: PlacementConfig,
    state: State,
    index: Index,
}

/// The primary state: everything a snapshot holds. Ordered collections only, so equal states
/// serialize to equal bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    version: u32,
    /// The `now` of the latest tick (never moving backwards), in Unix milliseconds.
    now_ms: Option<i64>,
    hosts: BTreeMap<HostId, Host>,
    networks: BTreeMap<NetworkId, Network>,
    /// The last epoch given out per network. Kept when a network is removed, so a re-created network
    /// never reuses an epoch a host agent may still hold.
    epochs: BTreeMap<NetworkId, u64>,
    /// The ids of the inputs applied last, oldest first. Absent from snapshots written before the
    /// window existed (same format version): those restore with an empty window.
    #[serde(default)]
    recent_inputs: RecentInputs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Host {
    status: HostStatus,
    /// The attached networks and the interface each is reached through.
    networks: BTreeMap<NetworkId, InterfaceName>,
    /// When the host last showed it is alive; unset until the first tick after it appeared.
    last_seen_ms: Option<i64>,
    /// Missed its heartbeat; only a heartbeat brings it back.
    lost: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Network {
    ipam_enabled: bool,
    servers_count: Option<u8>,
    /// The activated subnets; the network needs one before it gets servers.
    subnets: BTreeSet<SubnetId>,
    servers: BTreeMap<HostId, Server>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Server {
    epoch: u64,
    interface: InterfaceName,
}

impl Host {
    /// Up and not lost: eligible for every network attached to it.
    fn is_available(&self) -> bool {
        self.status == HostStatus::Up && !self.lost
    }
}

/// How many servers a network wants: its count (or the default) when IPAM is enabled and it has an
/// active subnet, else none.
fn wanted(network: &Network, config: &PlacementConfig) -> usize {
    if network.ipam_enabled && !network.subnets.is_empty() {
        usize::from(network.servers_count.unwrap_or(config.default_servers_count))
    } else {
        0
    }
}

/// Indexes derived from [`State`], rebuilt on restore.
///
/// Choosing a replacement reads, for every host attached to the network, whether it is available
/// and how loaded it is. Those two facts live in one dense table of slots, one per host, so the
/// scan reads one small record per candidate instead of walking several trees keyed by UUID. Slot
/// numbers are private to the index and never decide anything: ties go by host id.
#[derive(Debug, Clone, Default)]
struct Index {
    slot_of: BTreeMap<HostId, usize>,
    slots: Vec<Slot>,
    /// Slots of removed hosts, reused before the table grows.
    free_slots: Vec<usize>,
    /// The slots of the hosts each network is attached to, whatever their status.
    attached: BTreeMap<NetworkId, BTreeSet<usize>>,
    /// `(last_seen_ms, host)` of every host that is not lost and has been seen, oldest first, so a
    /// tick finds the newly lost hosts without looking at the others.
    deadlines: BTreeSet<(i64, HostId)>,
    /// Hosts with no `last_seen_ms` yet: the next tick starts their grace period.
    unstamped: BTreeSet<HostId>,
    /// Networks with fewer servers than they want. Every eligible host already serves them, so a
    /// host that becomes eligible has to look only at these, not at all its attached networks.
    under_served: BTreeSet<NetworkId>,
}

#[derive(Debug, Clone)]
struct Slot {
    host_id: HostId,
    /// [`Host::is_available`], kept here for the candidate scan.
    available: bool,
    /// The networks the host serves; the length is its load.
    serving: BTreeSet<NetworkId>,
}

impl Slot {
    fn new(host_id: HostId) -> Slot {
        Slot { host_id, available: false, serving: BTreeSet::new() }
    }
}

impl Index {
    fn build(state: &State, config: &PlacementConfig) -> Index {
        let mut index = Index::default();
        for (&host_id, host) in &state.hosts {
            let slot = index.slot(host_id);
            if let Some(record) = index.slots.get_mut(slot) {
                record.available = host.is_available();
            }
            for &network_id in host.networks.keys() {
                index.attached.entry(network_id).or_default().insert(slot);
            }
            match host.last_seen_ms {
                None => {
                    index.unstamped.insert(host_id);
                }
                Some(seen) if !host.lost => {
                    index.deadlines.insert((seen, host_id));
                }
                Some(_) => {}
            }
        }
        for (&network_id, network) in &state.networks {
            // A server on a host the snapshot does not know gets an unavailable slot, so the next
            // input about its network takes it away (as `host_removed`) instead of panicking.
            for &host_id in network.servers.keys() {
                index.serve(host_id, network_id);
            }
            if network.servers.len() < wanted(network, config) {
                index.under_served.insert(network_id);
            }
        }
        index
    }

    /// The slot of `host_id`, taking one for a host seen for the first time.
    fn slot(&mut self, host_id: HostId) -> usize {
        if let Some(&slot) = self.slot_of.get(&host_id) {
            return slot;
        }
        let slot = match self.free_slots.pop() {
            Some(slot) if slot < self.slots.len() => {
                self.slots[slot] = Slot::new(host_id);
                slot
            }
            _ => {
                self.slots.push(Slot::new(host_id));
                self.slots.len() - 1
            }
        };
        self.slot_of.insert(host_id, slot);
        slot
    }

    fn get(&self, host_id: HostId) -> Option<&Slot> {
        self.slots.get(*self.slot_of.get(&host_id)?)
    }

    fn get_mut(&mut self, host_id: HostId) -> Option<&mut Slot> {
        self.slots.get_mut(*self.slot_of.get(&host_id)?)
    }

    /// Gives a removed host's slot back, once its servers are gone.
    fn forget(&mut self, host_id: HostId) {
        if !self.get(host_id).is_some_and(|slot| slot.serving.is_empty()) {
            return;
        }
        if let Some(slot) = self.slot_of.remove(&host_id) {
            self.free_slots.push(slot);
        }
    }

    fn load(&self, host_id: HostId) -> usize {
        self.get(host_id).map_or(0, |slot| slot.serving.len())
    }

    fn attach(&mut self, network_id: NetworkId, slot: usize) {
        self.attached.entry(network_id).or_default().insert(slot);
    }

    fn detach(&mut self, network_id: NetworkId, slot: usize) {
        if let Some(slots) = self.attached.get_mut(&network_id) {
            slots.remove(&slot);
            if slots.is_empty() {
                self.attached.remove(&network_id);
            }
        }
    }

    fn serve(&mut self, host_id: HostId, network_id: NetworkId) {
        let slot = self.slot(host_id);
        if let Some(record) = self.slots.get_mut(slot) {
            record.serving.insert(network_id);
        }
    }

    fn unserve(&mut self, host_id: HostId, network_id: NetworkId) {
        if let Some(slot) = self.get_mut(host_id) {
            slot.serving.remove(&network_id);
        }
    }
}

impl Placement {
    /// An empty machine: no hosts, no networks, no time yet.
    pub fn new(config: PlacementConfig) -> Placement {
        Placement::with_input_window(config, INPUT_WINDOW)
    }

    /// An empty machine that remembers only the ids of its last `input_window` inputs, for tests
    /// that watch ids being forgotten. A restored machine always has [`INPUT_WINDOW`].
    pub fn with_input_window(config: PlacementConfig, input_window: usize) -> Placement {
        let state = State {
            version: SNAPSHOT_VERSION,
            now_ms: None,
            hosts: BTreeMap::new(),
            networks: BTreeMap::new(),
            epochs: BTreeMap::new(),
            recent_inputs: RecentInputs::with_capacity(input_window),
        };
        Placement { config, state, index: Index::default() }
    }

    pub fn config(&self) -> PlacementConfig {
        self.config
    }

    /// Applies one input and returns the assignments and unassignments it causes: networks in id
    /// order; within a network, unassignments by host id, then assignments in the order they were
    /// made (ascending epoch). Event types placement does not follow produce nothing, and so does
    /// an input whose id is among the last [`INPUT_WINDOW`] applied (a retry).
    pub fn apply(&mut self, input: &Envelope) -> Vec<Event> {
        if !self.state.recent_inputs.record(input.id) {
            return Vec::new();
        }
        let dirty = match &input.event {
            Event::HostUpserted(event) => self.host_upserted(event),
            Event::HostRemoved(event) => self.host_removed(event),
            Event::HostHeartbeat(event) => self.host_heartbeat(event),
            Event::ClockTicked(event) => self.clock_ticked(event),
            Event::NetworkUpserted(event) => self.network_upserted(event),
            Event::NetworkRemoved(event) => return self.network_removed(event, input.id),
            Event::SubnetActivated(event) => self.subnet_activated(event),
            Event::SubnetDeactivated(event) => self.subnet_deactivated(event),
            _ => BTreeSet::new(),
        };
        let mut outputs = Vec::new();
        for network_id in dirty {
            self.reconcile(network_id, input.id, &mut outputs);
        }
        if let Event::HostRemoved(event) = &input.event {
            self.index.forget(event.host_id);
        }
        outputs
    }

    /// The primary state as canonical JSON bytes: equal states give equal bytes. The config is not
    /// included.
    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.state).expect("placement state has string map keys only, so it always serializes")
    }

    /// A machine with the state of `snapshot` and the given config.
    ///
    /// A changed `default_servers_count` applies to a network at the next input that concerns it.
    pub fn restore(config: PlacementConfig, snapshot: &[u8]) -> Result<Placement, SnapshotError> {
        let state: State = serde_json::from_slice(snapshot)?;
        if state.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version { found: state.version, expected: SNAPSHOT_VERSION });
        }
        let index = Index::build(&state, &config);
        Ok(Placement { config, state, index })
    }

    // ---- Read accessors -------------------------------------------------------------------------

    /// The networks placement knows (upserted, or with an activated subnet), in id order.
    pub fn network_ids(&self) -> Vec<NetworkId> {
        self.state.networks.keys().copied().collect()
    }

    /// The hosts serving `network` and the epoch of each assignment, by host id.
    pub fn servers(&self, network: NetworkId) -> Vec<(HostId, u64)> {
        self.state
            .networks
            .get(&network)
            .map(|n| n.servers.iter().map(|(&host, server)| (host, server.epoch)).collect())
            .unwrap_or_default()
    }

    /// The interface the server of `host` for `network` listens on, if the host serves it.
    pub fn server_interface(&self, network: NetworkId, host: HostId) -> Option<&InterfaceName> {
        self.state.networks.get(&network)?.servers.get(&host).map(|server| &server.interface)
    }

    /// The networks `host` serves, in id order.
    pub fn served_networks(&self, host: HostId) -> Vec<NetworkId> {
        self.index.get(host).map(|slot| slot.serving.iter().copied().collect()).unwrap_or_default()
    }

    /// The number of networks `host` serves.
    pub fn load(&self, host: HostId) -> usize {
        self.index.load(host)
    }

    /// How many servers `network` wants: its count (or the default) when IPAM is enabled and it has
    /// an active subnet, else 0.
    pub fn wanted_servers(&self, network: NetworkId) -> usize {
        self.state.networks.get(&network).map_or(0, |n| wanted(n, &self.config))
    }

    /// `min(wanted, eligible hosts)`: the number of servers invariant 5 demands. Computed from the
    /// primary state alone, so tests can hold the indexes to it.
    pub fn expected_servers(&self, network: NetworkId) -> usize {
        let eligible = self.state.hosts.keys().filter(|&&host| self.is_eligible(host, network)).count();
        self.wanted_servers(network).min(eligible)
    }

    /// Whether `host` may serve `network`: up, not lost, and the network attached.
    pub fn is_eligible(&self, host: HostId, network: NetworkId) -> bool {
        self.state.hosts.get(&host).is_some_and(|h| h.is_available() && h.networks.contains_key(&network))
    }

    /// Whether `host` missed its heartbeat and has not sent one since.
    pub fn is_lost(&self, host: HostId) -> bool {
        self.state.hosts.get(&host).is_some_and(|h| h.lost)
    }

    /// The last epoch given out for `network` (0 if none ever was).
    pub fn epoch(&self, network: NetworkId) -> u64 {
        self.state.epochs.get(&network).copied().unwrap_or(0)
    }

    /// The ids of the inputs applied last, oldest first.
    pub fn recent_inputs(&self) -> &RecentInputs {
        &self.state.recent_inputs
    }

    /// The latest `now` the ticks brought (time never moves back), in Unix milliseconds.
    pub fn now_ms(&self) -> Option<i64> {
        self.state.now_ms
    }

    // ---- Inputs: each updates the state and returns the networks to reconcile -------------------

    fn host_upserted(&mut self, event: &HostUpserted) -> BTreeSet<NetworkId> {
        let host_id = event.host_id;
        // What can change: the servers the host runs (it may have gone down, or lost a network or
        // the interface of one), and the under-served networks it may now be eligible for. Any other
        // network it is attached to already has all the servers it wants.
        let mut dirty = self.served(host_id);

        // Sorted, one entry per network; a network listed twice keeps its last interface.
        let mut attachments: Vec<(NetworkId, &InterfaceName)> =
            event.networks.iter().rev().map(|attachment| (attachment.network_id, &attachment.interface)).collect();
        attachments.sort_by_key(|&(network_id, _)| network_id);
        attachments.dedup_by_key(|&mut (network_id, _)| network_id);

        let slot = self.index.slot(host_id);
        let host = self.state.hosts.entry(host_id).or_insert_with(|| {
            self.index.unstamped.insert(host_id);
            Host { status: event.status, networks: BTreeMap::new(), last_seen_ms: None, lost: false }
        });
        host.status = event.status;
        // A status change (the common upsert) leaves the attachments alone: compare before rebuilding.
        let unchanged = host.networks.len() == attachments.len()
            && host.networks.iter().zip(&attachments).all(|((a, a_if), (b, b_if))| a == b && a_if == *b_if);
        if !unchanged {
            let networks: BTreeMap<NetworkId, InterfaceName> =
                attachments.iter().map(|&(network_id, interface)| (network_id, interface.clone())).collect();
            for &network_id in host.networks.keys() {
                if !networks.contains_key(&network_id) {
                    self.index.detach(network_id, slot);
                }
            }
            for &network_id in networks.keys() {
                if !host.networks.contains_key(&network_id) {
                    self.index.attach(network_id, slot);
                }
            }
            host.networks = networks;
        }
        let available = host.is_available();
        if let Some(record) = self.index.slots.get_mut(slot) {
            record.available = available;
        }
        if event.status == HostStatus::Up {
            self.seen(host_id);
        }
        dirty.extend(self.under_served_for(host_id));
        dirty
    }

    fn host_removed(&mut self, event: &HostRemoved) -> BTreeSet<NetworkId> {
        let host_id = event.host_id;
        let Some(host) = self.state.hosts.remove(&host_id) else {
            return BTreeSet::new();
        };
        match host.last_seen_ms {
            Some(seen) => self.index.deadlines.remove(&(seen, host_id)),
            None => self.index.unstamped.remove(&host_id),
        };
        // The slot itself stays until `apply` has taken the host's servers away.
        if let Some(&slot) = self.index.slot_of.get(&host_id) {
            for &network_id in host.networks.keys() {
                self.index.detach(network_id, slot);
            }
        }
        if let Some(slot) = self.index.get_mut(host_id) {
            slot.available = false;
        }
        self.served(host_id)
    }

    fn host_heartbeat(&mut self, event: &HostHeartbeat) -> BTreeSet<NetworkId> {
        // A heartbeat from a host the engine never told us about says nothing we could act on.
        let Some(host) = self.state.hosts.get_mut(&event.host_id) else {
            return BTreeSet::new();
        };
        let revived = std::mem::replace(&mut host.lost, false);
        let available = host.is_available();
        if let Some(slot) = self.index.get_mut(event.host_id) {
            slot.available = available;
        }
        self.seen(event.host_id);
        if revived { self.under_served_for(event.host_id) } else { BTreeSet::new() }
    }

    fn clock_ticked(&mut self, event: &ClockTicked) -> BTreeSet<NetworkId> {
        // Time never goes back: a late or duplicated tick must not make hosts look fresher or staler.
        let now = self.state.now_ms.map_or(event.now.unix_ms(), |before| before.max(event.now.unix_ms()));
        self.state.now_ms = Some(now);
        // Hosts that appeared before any tick (or never came up) start their grace period now.
        for host_id in std::mem::take(&mut self.index.unstamped) {
            if let Some(host) = self.state.hosts.get_mut(&host_id) {
                host.last_seen_ms = Some(now);
                if !host.lost {
                    self.index.deadlines.insert((now, host_id));
                }
            }
        }
        let timeout = i128::from(self.config.heartbeat_timeout_ms);
        let mut dirty = BTreeSet::new();
        while let Some(&(seen, host_id)) = self.index.deadlines.first() {
            if i128::from(now) - i128::from(seen) <= timeout {
                break;
            }
            self.index.deadlines.pop_first();
            if let Some(host) = self.state.hosts.get_mut(&host_id) {
                host.lost = true;
            }
            if let Some(slot) = self.index.get_mut(host_id) {
                slot.available = false;
            }
            dirty.extend(self.served(host_id));
        }
        dirty
    }

    fn network_upserted(&mut self, event: &NetworkUpserted) -> BTreeSet<NetworkId> {
        let network = self.state.networks.entry(event.network_id).or_default();
        network.ipam_enabled = event.ipam_enabled;
        network.servers_count = event.servers_count;
        BTreeSet::from([event.network_id])
    }

    fn network_removed(&mut self, event: &NetworkRemoved, cause: EventId) -> Vec<Event> {
        let network_id = event.network_id;
        // Only the epoch counter outlives the network (see `State::epochs`).
        let Some(network) = self.state.networks.remove(&network_id) else {
            return Vec::new();
        };
        self.index.under_served.remove(&network_id);
        network
            .servers
            .into_iter()
            .map(|(host_id, server)| {
                self.index.unserve(host_id, network_id);
                Event::DhcpServerUnassigned(DhcpServerUnassigned {
                    network_id,
                    host_id,
                    epoch: server.epoch,
                    reason: UnassignReason::NetworkRemoved,
                    cause,
                })
            })
            .collect()
    }

    fn subnet_activated(&mut self, event: &SubnetActivated) -> BTreeSet<NetworkId> {
        // The allocator's topic is not ordered with the engine's, so a subnet may arrive before its
        // network's upsert; remember it on a network that is not (yet) enabled.
        self.state.networks.entry(event.network_id).or_default().subnets.insert(event.subnet_id);
        BTreeSet::from([event.network_id])
    }

    fn subnet_deactivated(&mut self, event: &SubnetDeactivated) -> BTreeSet<NetworkId> {
        match self.state.networks.get_mut(&event.network_id) {
            Some(network) => {
                network.subnets.remove(&event.subnet_id);
                BTreeSet::from([event.network_id])
            }
            None => BTreeSet::new(),
        }
    }

    // ---- Decisions ------------------------------------------------------------------------------

    /// Brings one network to `min(wanted, eligible)` servers, all eligible, moving nothing healthy,
    /// and keeps the under-served index up to date.
    fn reconcile(&mut self, network_id: NetworkId, cause: EventId, outputs: &mut Vec<Event>) {
        self.place(network_id, cause, outputs);
        let short = self
            .state
            .networks
            .get(&network_id)
            .is_some_and(|network| network.servers.len() < wanted(network, &self.config));
        if short {
            self.index.under_served.insert(network_id);
        } else {
            self.index.under_served.remove(&network_id);
        }
    }

    fn place(&mut self, network_id: NetworkId, cause: EventId, outputs: &mut Vec<Event>) {
        let Some(network) = self.state.networks.get(&network_id) else {
            return;
        };
        let wanted = wanted(network, &self.config);

        // 1. Which servers go, and why.
        let mut leaving: Vec<(HostId, u64, UnassignReason)> = match network_reason(network) {
            Some(reason) => network.servers.iter().map(|(&host, server)| (host, server.epoch, reason)).collect(),
            None => network
                .servers
                .iter()
                .filter_map(|(&host, server)| {
                    self.ineligibility(host, network_id, &server.interface).map(|reason| (host, server.epoch, reason))
                })
                .collect(),
        };
        let staying = network.servers.len() - leaving.len();
        if staying > wanted {
            let mut healthy: Vec<(u64, HostId)> = network
                .servers
                .iter()
                .filter(|(host, _)| !leaving.iter().any(|(gone, _, _)| gone == *host))
                .map(|(&host, server)| (server.epoch, host))
                .collect();
            // The newest assignments go first: the oldest servers are the ones clients most likely
            // already lease from.
            healthy.sort_unstable_by(|a, b| b.cmp(a));
            let surplus = healthy.into_iter().take(staying - wanted);
            leaving.extend(surplus.map(|(epoch, host)| (host, epoch, UnassignReason::ServersCountReduced)));
        }
        leaving.sort_unstable_by_key(|&(host, _, _)| host);

        // 2. Take them away, so the loads below no longer count them (a host whose network moved to
        //    another interface competes for its replacement like any other).
        let replacing = !leaving.is_empty();
        if let Some(network) = self.state.networks.get_mut(&network_id) {
            for (host_id, epoch, reason) in leaving {
                network.servers.remove(&host_id);
                self.index.unserve(host_id, network_id);
                outputs.push(Event::DhcpServerUnassigned(DhcpServerUnassigned {
                    network_id,
                    host_id,
                    epoch,
                    reason,
                    cause,
                }));
            }
        }

        // 3. Fill up with the least loaded eligible hosts, smallest id first among equals.
        let Some(network) = self.state.networks.get(&network_id) else {
            return;
        };
        let missing = wanted.saturating_sub(network.servers.len());
        if missing == 0 {
            return;
        }
        let slots = &self.index.slots;
        let mut joining: Vec<(usize, HostId)> = self
            .index
            .attached
            .get(&network_id)
            .into_iter()
            .flatten()
            .filter_map(|&slot| slots.get(slot))
            .filter(|slot| slot.available && !network.servers.contains_key(&slot.host_id))
            .map(|slot| (slot.serving.len(), slot.host_id))
            .collect();
        joining.sort_unstable();
        joining.truncate(missing);

        let reason = if replacing { AssignReason::Replacement } else { AssignReason::Placed };
        let Some(network) = self.state.networks.get_mut(&network_id) else {
            return;
        };
        for (_, host_id) in joining {
            // The interface is read for the winners only; attachment is what put them in the index.
            let Some(interface) = self.state.hosts.get(&host_id).and_then(|host| host.networks.get(&network_id)) else {
                continue;
            };
            let counter = self.state.epochs.entry(network_id).or_insert(0);
            *counter = counter.saturating_add(1);
            let epoch = *counter;
            network.servers.insert(host_id, Server { epoch, interface: interface.clone() });
            self.index.serve(host_id, network_id);
            outputs.push(Event::DhcpServerAssigned(DhcpServerAssigned {
                network_id,
                host_id,
                interface: interface.clone(),
                epoch,
                reason,
                cause,
            }));
        }
    }

    /// Why the server of `host_id` for `network_id`, listening on `interface`, must stop; `None` if
    /// it is healthy.
    fn ineligibility(
        &self,
        host_id: HostId,
        network_id: NetworkId,
        interface: &InterfaceName,
    ) -> Option<UnassignReason> {
        let Some(host) = self.state.hosts.get(&host_id) else {
            return Some(UnassignReason::HostRemoved);
        };
        match host.status {
            HostStatus::Down => return Some(UnassignReason::HostDown),
            HostStatus::Maintenance => return Some(UnassignReason::HostMaintenance),
            HostStatus::Up => {}
        }
        if host.lost {
            return Some(UnassignReason::HeartbeatLost);
        }
        // A network moved to another interface is detached from the one the server listens on.
        match host.networks.get(&network_id) {
            Some(attached) if attached == interface => None,
            _ => Some(UnassignReason::NetworkDetached),
        }
    }

    /// The under-served networks `host_id` is eligible for: the only networks it could join.
    fn under_served_for(&self, host_id: HostId) -> BTreeSet<NetworkId> {
        let Some(host) = self.state.hosts.get(&host_id).filter(|host| host.is_available()) else {
            return BTreeSet::new();
        };
        let under_served = &self.index.under_served;
        // Walk the smaller side: usually few networks are under-served, but a fleet short of hosts
        // may have many.
        if under_served.len() <= host.networks.len() {
            under_served.iter().filter(|network| host.networks.contains_key(network)).copied().collect()
        } else {
            host.networks.keys().filter(|network| under_served.contains(network)).copied().collect()
        }
    }

    fn served(&self, host_id: HostId) -> BTreeSet<NetworkId> {
        self.index.get(host_id).map(|slot| slot.serving.clone()).unwrap_or_default()
    }

    /// Records that `host_id` is alive now (or, before the first tick, that its grace period starts
    /// at that tick).
    fn seen(&mut self, host_id: HostId) {
        let Some(host) = self.state.hosts.get_mut(&host_id) else {
            return;
        };
        match host.last_seen_ms {
            Some(seen) => self.index.deadlines.remove(&(seen, host_id)),
            None => self.index.unstamped.remove(&host_id),
        };
        host.last_seen_ms = self.state.now_ms;
        match host.last_seen_ms {
            Some(_) if host.lost => {}
            Some(seen) => {
                self.index.deadlines.insert((seen, host_id));
            }
            None => {
                self.index.unstamped.insert(host_id);
            }
        }
    }
}

/// Why a network wants no servers at all, if it is the network's own state that says so.
fn network_reason(network: &Network) -> Option<UnassignReason> {
    if !network.ipam_enabled {
        Some(UnassignReason::IpamDisabled)
    } else if network.subnets.is_empty() {
        Some(UnassignReason::NoSubnet)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::event::HostNetwork;
    use crate::time::Timestamp;
    use expect_test::{Expect, expect};

    use super::*;

    // ---- Given/when/then -------------------------------------------------------------------------

    const INPUT_ID: EventId = EventId::from_u128(0xC0FFEE);

    fn envelope(index: u128, event: Event) -> Envelope {
        Envelope {
            id: EventId::from_u128(index),
            source: "test".to_owned(),
            time: Timestamp::from_unix_ms(0),
            subject: None,
            event,
        }
    }

    fn given(history: &[Event]) -> Placement {
        let mut placement = Placement::new(PlacementConfig::default());
        for (i, event) in history.iter().enumerate() {
            placement.apply(&envelope(i as u128 + 1, event.clone()));
            assert_invariants(&placement, &format!("after history event {i}"));
        }
        placement
    }

    /// Applies `history`, then `input`, and compares the outputs of `input` with `expect`.
    fn check(history: &[Event], input: Event, expect: Expect) -> Placement {
        let mut placement = given(history);
        let outputs = placement.apply(&envelope(INPUT_ID.0.as_u128(), input));
        assert_invariants(&placement, "after the input");
        expect.assert_eq(&render(&outputs, INPUT_ID));
        placement
    }

    /// Invariant 5, checked over every network after every input, so a dirty set that misses a
    /// network shows up here.
    fn assert_invariants(placement: &Placement, context: &str) {
        for network in placement.network_ids() {
            let servers = placement.servers(network);
            assert_eq!(
                servers.len(),
                placement.expected_servers(network),
                "{context}: {} is served by {servers:?}",
                name(network)
            );
            for (host, _) in servers {
                assert!(
                    placement.is_eligible(host, network),
                    "{context}: {} serves {} but is not eligible",
                    short(host),
                    name(network)
                );
                assert!(placement.served_networks(host).contains(&network));
            }
        }
        let index = &placement.index;
        for (&host, &slot) in &index.slot_of {
            assert_eq!(index.slots[slot].host_id, host, "{context}: slot {slot} is not {}'s", short(host));
            assert!(!index.free_slots.contains(&slot), "{context}: slot {slot} is both used and free");
        }
        let rebuilt = Index::build(&placement.state, &placement.config);
        assert_eq!(view(&rebuilt), view(index), "{context}: the indexes drifted from the state");
    }

    /// An index with slot numbers replaced by host ids: what must not depend on history.
    #[allow(clippy::type_complexity)]
    fn view(
        index: &Index,
    ) -> (
        BTreeMap<NetworkId, BTreeSet<HostId>>,
        BTreeMap<HostId, (bool, BTreeSet<NetworkId>)>,
        &BTreeSet<(i64, HostId)>,
        &BTreeSet<HostId>,
        &BTreeSet<NetworkId>,
    ) {
        let attached = index
            .attached
            .iter()
            .map(|(&network, slots)| (network, slots.iter().map(|&slot| index.slots[slot].host_id).collect()))
            .collect();
        let hosts = index
            .slot_of
            .iter()
            .map(|(&host, &slot)| (host, (index.slots[slot].available, index.slots[slot].serving.clone())))
            .collect();
        (attached, hosts, &index.deadlines, &index.unstamped, &index.under_served)
    }

    fn render(outputs: &[Event], cause: EventId) -> String {
        let reason = |value: serde_json::Value| value.as_str().unwrap_or("?").to_owned();
        let mut text = String::new();
        for output in outputs {
            let line = match output {
                Event::DhcpServerAssigned(e) => {
                    assert_eq!(e.cause, cause);
                    let why = reason(serde_json::to_value(e.reason).unwrap_or_default());
                    format!(
                        "assigned {} {} epoch={} {} {why}",
                        name(e.network_id),
                        short(e.host_id),
                        e.epoch,
                        e.interface
                    )
                }
                Event::DhcpServerUnassigned(e) => {
                    assert_eq!(e.cause, cause);
                    let why = reason(serde_json::to_value(e.reason).unwrap_or_default());
                    format!("unassigned {} {} epoch={} {why}", name(e.network_id), short(e.host_id), e.epoch)
                }
                other => format!("unexpected {}", other.type_name()),
            };
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    fn name(network: NetworkId) -> String {
        format!("n{}", network.0.as_u128())
    }

    fn short(host: HostId) -> String {
        format!("h{}", host.0.as_u128())
    }

    // ---- Inputs ----------------------------------------------------------------------------------

    fn n(i: u128) -> NetworkId {
        NetworkId::from_u128(i)
    }

    fn h(i: u128) -> HostId {
        HostId::from_u128(i)
    }

    fn host_on(i: u128, status: HostStatus, attachments: &[(u128, &str)]) -> Event {
        Event::HostUpserted(HostUpserted {
            host_id: h(i),
            name: format!("host-{i}"),
            status,
            networks: attachments
                .iter()
                .map(|&(network, interface)| HostNetwork {
                    network_id: n(network),
                    interface: interface.parse().expect("test interface names are valid"),
                })
                .collect(),
        })
    }

    fn host(i: u128, status: HostStatus, networks: &[u128]) -> Event {
        let attachments: Vec<(u128, &str)> = networks.iter().map(|&network| (network, "eth0")).collect();
        host_on(i, status, &attachments)
    }

    fn up(i: u128, networks: &[u128]) -> Event {
        host(i, HostStatus::Up, networks)
    }

    fn host_removed(i: u128) -> Event {
        Event::HostRemoved(HostRemoved { host_id: h(i) })
    }

    fn heartbeat(i: u128) -> Event {
        Event::HostHeartbeat(HostHeartbeat { host_id: h(i), serving: Vec::new() })
    }

    fn tick(now_ms: i64) -> Event {
        Event::ClockTicked(ClockTicked { now: Timestamp::from_unix_ms(now_ms) })
    }

    fn network(i: u128, ipam_enabled: bool, servers_count: Option<u8>) -> Event {
        Event::NetworkUpserted(NetworkUpserted {
            network_id: n(i),
            name: format!("net-{i}"),
            ipam_enabled,
            servers_count,
        })
    }

    fn enabled(i: u128) -> Event {
        network(i, true, None)
    }

    fn network_removed(i: u128) -> Event {
        Event::NetworkRemoved(NetworkRemoved { network_id: n(i) })
    }

    fn subnet(network: u128, subnet: u128) -> Event {
        Event::SubnetActivated(SubnetActivated {
            network_id: n(network),
            subnet_id: SubnetId::from_u128(subnet),
            cidr: "10.0.0.0/24".parse().expect("a valid CIDR"),
            gateway: "10.0.0.1".parse().expect("a valid IP"),
            dns_servers: Vec::new(),
            ntp_servers: Vec::new(),
            allocation_pools: Vec::new(),
            cause: EventId::from_u128(0),
        })
    }

    fn subnet_gone(network: u128, subnet: u128) -> Event {
        Event::SubnetDeactivated(SubnetDeactivated {
            network_id: n(network),
            subnet_id: SubnetId::from_u128(subnet),
            cause: EventId::from_u128(0),
        })
    }

    /// Three up hosts attached to n1 (default count 2), served by h1 (epoch 1) and h2 (epoch 2).
    fn served() -> Vec<Event> {
        vec![tick(0), up(1, &[1]), up(2, &[1]), up(3, &[1]), enabled(1), subnet(1, 1)]
    }

    fn with(history: Vec<Event>, more: impl IntoIterator<Item = Event>) -> Vec<Event> {
        history.into_iter().chain(more).collect()
    }

    // ---- Networks --------------------------------------------------------------------------------

    #[test]
    fn enabled_network_with_subnet_gets_count_servers() {
        check(
            &[up(1, &[1]), up(2, &[1]), up(3, &[1]), enabled(1)],
            subnet(1, 1),
            expect![[r#"
            assigned n1 h1 epoch=1 eth0 placed
            assigned n1 h2 epoch=2 eth0 placed
        "#]],
        );
    }

    #[test]
    fn network_gets_no_more_servers_than_eligible_hosts() {
        check(
            &[up(1, &[1]), host(2, HostStatus::Down, &[1]), up(3, &[2])],
            network(1, true, Some(3)),
            expect![[r#""#]],
        );
        check(
            &[up(1, &[1]), up(2, &[1]), network(1, true, Some(3))],
            subnet(1, 1),
            expect![[r#"
            assigned n1 h1 epoch=1 eth0 placed
            assigned n1 h2 epoch=2 eth0 placed
        "#]],
        );
    }

    #[test]
    fn subnet_before_network_upsert_waits_for_ipam_enabled() {
        check(&[up(1, &[1]), subnet(1, 1)], network(1, false, None), expect![[r#""#]]);
        check(
            &[up(1, &[1]), subnet(1, 1)],
            enabled(1),
            expect![[r#"
            assigned n1 h1 epoch=1 eth0 placed
        "#]],
        );
    }

    #[test]
    fn least_loaded_host_is_chosen() {
        // h1 already serves n1, so n2's one server goes to h2 although h1 has the smaller id.
        check(
            &[up(1, &[1, 2]), up(2, &[2]), network(1, true, Some(1)), subnet(1, 1), network(2, true, Some(1))],
            subnet(2, 2),
            expect![[r#"
                assigned n2 h2 epoch=1 eth0 placed
            "#]],
        );
    }

    #[test]
    fn equally_loaded_hosts_go_by_smallest_id() {
        check(
            &[up(3, &[1]), up(2, &[1]), up(4, &[1]), network(1, true, Some(2))],
            subnet(1, 1),
            expect![[r#"
            assigned n1 h2 epoch=1 eth0 placed
            assigned n1 h3 epoch=2 eth0 placed
        "#]],
        );
    }

    #[test]
    fn raising_the_count_adds_servers() {
        check(
            &served(),
            network(1, true, Some(3)),
            expect![[r#"
            assigned n1 h3 epoch=3 eth0 placed
        "#]],
        );
        check(
            &served(),
            network(1, true, Some(9)),
            expect![[r#"
            assigned n1 h3 epoch=3 eth0 placed
        "#]],
        );
    }

    #[test]
    fn lowering_the_count_removes_the_newest_servers() {
        check(
            &served(),
            network(1, true, Some(1)),
            expect![[r#"
            unassigned n1 h2 epoch=2 servers_count_reduced
        "#]],
        );
        check(
            &with(served(), [network(1, true, Some(3))]),
            network(1, true, Some(1)),
            expect![[r#"
            unassigned n1 h2 epoch=2 servers_count_reduced
            unassigned n1 h3 epoch=3 servers_count_reduced
        "#]],
        );
        check(
            &served(),
            network(1, true, Some(0)),
            expect![[r#"
            unassigned n1 h1 epoch=1 servers_count_reduced
            unassigned n1 h2 epoch=2 servers_count_reduced
        "#]],
        );
    }

    #[test]
    fn disabling_ipam_unassigns_every_server() {
        check(
            &served(),
            network(1, false, None),
            expect![[r#"
            unassigned n1 h1 epoch=1 ipam_disabled
            unassigned n1 h2 epoch=2 ipam_disabled
        "#]],
        );
        check(
            &with(served(), [network(1, false, None)]),
            enabled(1),
            expect![[r#"
            assigned n1 h1 epoch=3 eth0 placed
            assigned n1 h2 epoch=4 eth0 placed
        "#]],
        );
    }

    #[test]
    fn deactivating_the_last_subnet_unassigns_every_server() {
        let history = with(served(), [subnet(1, 2)]);
        check(&history, subnet_gone(1, 1), expect![[r#""#]]);
        check(
            &with(history, [subnet_gone(1, 1)]),
            subnet_gone(1, 2),
            expect![[r#"
            unassigned n1 h1 epoch=1 no_subnet
            unassigned n1 h2 epoch=2 no_subnet
        "#]],
        );
    }

    #[test]
    fn removed_network_is_unserved_and_recreated_network_keeps_counting_epochs() {
        check(
            &served(),
            network_removed(1),
            expect![[r#"
            unassigned n1 h1 epoch=1 network_removed
            unassigned n1 h2 epoch=2 network_removed
        "#]],
        );
        let placement = check(
            &with(served(), [network_removed(1), enabled(1)]),
            subnet(1, 2),
            expect![[r#"
            assigned n1 h1 epoch=3 eth0 placed
            assigned n1 h2 epoch=4 eth0 placed
        "#]],
        );
        assert_eq!(placement.epoch(n(1)), 4);
    }

    #[test]
    fn removed_network_keeps_only_its_epoch() {
        let placement = given(&with(served(), [network_removed(1)]));
        assert_eq!(placement.network_ids(), Vec::<NetworkId>::new());
        assert_eq!(placement.epoch(n(1)), 2);
        assert_eq!(placement.load(h(1)), 0);
        check(&with(served(), [network_removed(1)]), subnet(1, 1), expect![[r#""#]]);
    }

    // ---- Hosts -----------------------------------------------------------------------------------

    #[test]
    fn host_down_is_replaced() {
        check(
            &served(),
            host(1, HostStatus::Down, &[1]),
            expect![[r#"
            unassigned n1 h1 epoch=1 host_down
            assigned n1 h3 epoch=3 eth0 replacement
        "#]],
        );
    }

    #[test]
    fn host_in_maintenance_is_replaced() {
        check(
            &served(),
            host(2, HostStatus::Maintenance, &[1]),
            expect![[r#"
            unassigned n1 h2 epoch=2 host_maintenance
            assigned n1 h3 epoch=3 eth0 replacement
        "#]],
        );
    }

    #[test]
    fn removed_host_is_replaced() {
        check(
            &served(),
            host_removed(1),
            expect![[r#"
            unassigned n1 h1 epoch=1 host_removed
            assigned n1 h3 epoch=3 eth0 replacement
        "#]],
        );
    }

    #[test]
    fn host_that_detaches_the_network_is_replaced() {
        check(
            &served(),
            up(1, &[]),
            expect![[r#"
            unassigned n1 h1 epoch=1 network_detached
            assigned n1 h3 epoch=3 eth0 replacement
        "#]],
        );
    }

    #[test]
    fn network_moved_to_another_interface_gets_a_new_assignment() {
        check(
            &served(),
            host_on(1, HostStatus::Up, &[(1, "eth1")]),
            expect![[r#"
                unassigned n1 h1 epoch=1 network_detached
                assigned n1 h1 epoch=3 eth1 replacement
            "#]],
        );
    }

    #[test]
    fn lost_server_without_an_eligible_host_left_is_only_unassigned() {
        check(
            &[up(1, &[1]), up(2, &[1]), enabled(1), subnet(1, 1)],
            host(2, HostStatus::Down, &[1]),
            expect![[r#"
            unassigned n1 h2 epoch=2 host_down
        "#]],
        );
    }

    #[test]
    fn host_that_comes_up_fills_an_under_served_network() {
        check(
            &[host(1, HostStatus::Down, &[1]), up(2, &[1]), enabled(1), subnet(1, 1)],
            up(1, &[1]),
            expect![[r#"
            assigned n1 h1 epoch=2 eth0 placed
        "#]],
        );
    }

    #[test]
    fn host_that_comes_up_does_not_take_a_healthy_server() {
        check(&[up(2, &[1]), up(3, &[1]), enabled(1), subnet(1, 1)], up(1, &[1]), expect![[r#""#]]);
    }

    #[test]
    fn network_without_eligible_host_gets_a_server_when_one_appears() {
        let history = [host(1, HostStatus::Down, &[1]), up(2, &[2]), enabled(1)];
        check(&history, subnet(1, 1), expect![[r#""#]]);
        check(
            &with(history.to_vec(), [subnet(1, 1)]),
            up(3, &[1]),
            expect![[r#"
            assigned n1 h3 epoch=1 eth0 placed
        "#]],
        );
    }

    #[test]
    fn repeated_inputs_change_nothing() {
        check(&served(), up(1, &[1]), expect![[r#""#]]);
        check(&served(), enabled(1), expect![[r#""#]]);
        check(&served(), subnet(1, 1), expect![[r#""#]]);
        check(&served(), heartbeat(1), expect![[r#""#]]);
        check(&served(), tick(0), expect![[r#""#]]);
    }

    #[test]
    fn unrelated_and_unknown_inputs_are_ignored() {
        use crate::event::{DhcpServerState, DhcpServerStatus};
        let status = Event::DhcpServerStatus(DhcpServerStatus {
            host_id: h(1),
            network_id: n(1),
            epoch: 1,
            state: DhcpServerState::Failed,
            detail: String::new(),
        });
        check(&served(), status, expect![[r#""#]]);
        check(&served(), heartbeat(9), expect![[r#""#]]);
        check(&served(), host_removed(9), expect![[r#""#]]);
        check(&served(), network_removed(9), expect![[r#""#]]);
        check(&served(), subnet_gone(9, 1), expect![[r#""#]]);
    }

    // ---- Heartbeats ------------------------------------------------------------------------------

    /// h2 and h3 heartbeat at 10 s; h1 last showed itself when it was upserted at 0.
    fn h1_goes_quiet() -> Vec<Event> {
        with(served(), [tick(5_000), tick(10_000), heartbeat(2), heartbeat(3), tick(15_000)])
    }

    #[test]
    fn host_is_not_lost_at_exactly_the_timeout() {
        let placement = check(
            &with(served(), [tick(5_000), tick(10_000), heartbeat(2), heartbeat(3)]),
            tick(15_000),
            expect![[r#""#]],
        );
        assert!(!placement.is_lost(h(1)));
    }

    #[test]
    fn host_that_misses_its_heartbeat_is_replaced_within_timeout_plus_one_tick() {
        let placement = check(
            &h1_goes_quiet(),
            tick(20_000),
            expect![[r#"
            unassigned n1 h1 epoch=1 heartbeat_lost
            assigned n1 h3 epoch=3 eth0 replacement
        "#]],
        );
        assert!(placement.is_lost(h(1)));
    }

    #[test]
    fn hosts_seen_before_the_first_tick_get_a_grace_period_from_it() {
        let history = [up(1, &[1]), up(2, &[1]), enabled(1), subnet(1, 1)];
        check(&history, tick(1_000_000), expect![[r#""#]]);
        check(
            &with(history.to_vec(), [tick(1_000_000)]),
            tick(1_015_001),
            expect![[r#"
            unassigned n1 h1 epoch=1 heartbeat_lost
            unassigned n1 h2 epoch=2 heartbeat_lost
        "#]],
        );
    }

    #[test]
    fn ticks_never_move_time_backwards() {
        let placement = given(&with(served(), [tick(10_000), tick(3_000), heartbeat(2), heartbeat(3)]));
        assert_eq!(placement.now_ms(), Some(10_000));
        check(
            &with(served(), [tick(10_000), tick(3_000), heartbeat(2), heartbeat(3)]),
            tick(20_000),
            expect![[r#"
            unassigned n1 h1 epoch=1 heartbeat_lost
            assigned n1 h3 epoch=3 eth0 replacement
        "#]],
        );
    }

    #[test]
    fn revived_host_fills_an_under_served_network_but_takes_no_healthy_server() {
        // n1 wants one server, n2 two; only h1 and h2 are attached to them.
        let history = vec![
            tick(0),
            up(1, &[1, 2]),
            up(2, &[1, 2]),
            network(1, true, Some(1)),
            subnet(1, 1),
            network(2, true, Some(2)),
            subnet(2, 2),
            tick(10_000),
            heartbeat(2),
        ];
        check(
            &history,
            tick(20_000),
            expect![[r#"
            unassigned n1 h1 epoch=1 heartbeat_lost
            assigned n1 h2 epoch=2 eth0 replacement
            unassigned n2 h1 epoch=2 heartbeat_lost
        "#]],
        );
        check(
            &with(history, [tick(20_000)]),
            heartbeat(1),
            expect![[r#"
            assigned n2 h1 epoch=3 eth0 placed
        "#]],
        );
    }

    #[test]
    fn lost_host_upserted_as_up_stays_lost_until_it_heartbeats() {
        let history = with(h1_goes_quiet(), [tick(20_000)]);
        check(&history, up(1, &[1]), expect![[r#""#]]);
        check(
            &with(history, [up(1, &[1]), host(3, HostStatus::Down, &[1])]),
            heartbeat(1),
            expect![[r#"
            assigned n1 h1 epoch=4 eth0 placed
        "#]],
        );
    }

    // ---- Snapshots -------------------------------------------------------------------------------

    #[test]
    fn restored_machine_has_equal_bytes_and_behaves_identically() {
        let history = with(h1_goes_quiet(), [tick(20_000), network(2, true, Some(1)), up(4, &[2]), subnet(2, 1)]);
        let mut live = given(&history);
        let bytes = live.snapshot();
        let mut restored = Placement::restore(PlacementConfig::default(), &bytes).expect("a fresh snapshot restores");
        assert_eq!(restored.snapshot(), bytes);
        assert_invariants(&restored, "after restore");

        let mut transcript = String::new();
        for (i, input) in
            [heartbeat(1), host(2, HostStatus::Down, &[1]), tick(40_000), heartbeat(1)].into_iter().enumerate()
        {
            let input = envelope(100 + i as u128, input);
            let outputs = render(&live.apply(&input), input.id);
            assert_eq!(outputs, render(&restored.apply(&input), input.id));
            assert_eq!(live.snapshot(), restored.snapshot());
            transcript.push_str(&outputs);
        }
        expect![[r#"
            unassigned n1 h2 epoch=2 host_down
            assigned n1 h1 epoch=4 eth0 replacement
            unassigned n1 h1 epoch=4 heartbeat_lost
            unassigned n1 h3 epoch=3 heartbeat_lost
            unassigned n2 h4 epoch=1 heartbeat_lost
            assigned n1 h1 epoch=5 eth0 placed
        "#]]
        .assert_eq(&transcript);
    }

    #[test]
    fn snapshot_leaves_the_config_out() {
        let live = given(&served());
        let config = PlacementConfig { heartbeat_timeout_ms: 1, default_servers_count: 5 };
        let restored = Placement::restore(config, &live.snapshot()).expect("a fresh snapshot restores");
        assert_eq!(restored.config(), config);
        assert_eq!(restored.snapshot(), live.snapshot());
    }

    #[test]
    fn unreadable_snapshots_are_errors() {
        let error = Placement::restore(PlacementConfig::default(), b"{not json").map(|_| ()).expect_err("garbage");
        assert!(matches!(error, SnapshotError::Decode(_)), "{error}");

        let bytes = String::from_utf8(given(&served()).snapshot()).expect("snapshots are UTF-8");
        let future = bytes.replacen("\"version\":1", "\"version\":2", 1);
        let error = Placement::restore(PlacementConfig::default(), future.as_bytes()).map(|_| ()).expect_err("v2");
        expect!["the placement snapshot has format version 2; this build reads version 1"]
            .assert_eq(&error.to_string());
    }

    // ---- Retries ---------------------------------------------------------------------------------

    /// `served()` (ids 1 to 6), then n1 disabled (id 50, both servers go) and enabled again (id 51,
    /// two new servers): a retry of id 50 would take them away again.
    fn disabled_and_enabled() -> Placement {
        let mut placement = given(&served());
        for (id, event) in [(50, network(1, false, None)), (51, enabled(1))] {
            assert_ne!(render(&placement.apply(&envelope(id, event)), EventId::from_u128(id)), "");
        }
        placement
    }

    /// Applies `input` with id `id` and checks that it yields nothing and leaves the state, window
    /// included, byte for byte as it was.
    fn assert_ignored(placement: &mut Placement, id: u128, input: Event) {
        let before = placement.snapshot();
        let outputs = placement.apply(&envelope(id, input));
        assert_eq!(render(&outputs, EventId::from_u128(id)), "", "a retry has no output");
        assert_eq!(String::from_utf8(before).unwrap(), String::from_utf8(placement.snapshot()).unwrap());
    }

    #[test]
    fn retried_input_has_no_second_effect() {
        let mut placement = disabled_and_enabled();
        assert_ignored(&mut placement, 50, network(1, false, None));
        assert_eq!(placement.servers(n(1)).len(), 2);
    }

    #[test]
    fn second_event_with_the_id_of_another_has_no_effect() {
        let mut placement = disabled_and_enabled();
        assert_ignored(&mut placement, 50, host_removed(1));
        assert_ignored(&mut placement, 4, tick(1_000_000));
        assert_eq!(placement.now_ms(), Some(0));
    }

    #[test]
    fn retry_is_recognised_after_a_restart_from_a_snapshot() {
        let live = disabled_and_enabled();
        let mut restored = Placement::restore(PlacementConfig::default(), &live.snapshot()).unwrap();
        assert_eq!(restored.recent_inputs(), live.recent_inputs());
        assert_ignored(&mut restored, 50, network(1, false, None));
    }

    #[test]
    fn window_forgets_the_oldest_id_after_as_many_newer_inputs_as_it_holds() {
        let mut placement = Placement::with_input_window(PlacementConfig::default(), 3);
        for (id, event) in [(1, tick(0)), (2, up(1, &[1])), (3, enabled(1)), (4, subnet(1, 1))] {
            placement.apply(&envelope(id, event));
        }
        let held =
            |placement: &Placement| placement.recent_inputs().iter().map(|id| id.0.as_u128()).collect::<Vec<_>>();
        assert_eq!(held(&placement), [2, 3, 4]);
        // Id 3 is still held; id 1 has three newer ids and is forgotten, so a tick with its id is
        // applied again.
        assert_ignored(&mut placement, 3, tick(5_000));
        placement.apply(&envelope(1, tick(5_000)));
        assert_eq!(placement.now_ms(), Some(5_000));
        assert_eq!(held(&placement), [3, 4, 1]);
    }

    #[test]
    fn production_machine_remembers_the_production_window() {
        assert_eq!(given(&served()).recent_inputs().capacity(), INPUT_WINDOW);
        let small = Placement::with_input_window(PlacementConfig::default(), 3);
        let restored = Placement::restore(PlacementConfig::default(), &small.snapshot()).unwrap();
        assert_eq!(restored.recent_inputs().capacity(), INPUT_WINDOW);
    }

    #[test]
    fn snapshot_from_before_the_window_restores_with_an_empty_one() {
        let live = given(&served());
        let mut old: serde_json::Value = serde_json::from_slice(&live.snapshot()).unwrap();
        old.as_object_mut().unwrap().remove("recent_inputs").expect("the window is in the snapshot");
        let restored = Placement::restore(PlacementConfig::default(), old.to_string().as_bytes()).unwrap();
        assert!(restored.recent_inputs().is_empty());
        assert_eq!(restored.servers(n(1)), live.servers(n(1)));
    }

    // ---- Randomized ------------------------------------------------------------------------------

    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    fn random_input(rng: &mut SplitMix64, now_ms: &mut i64) -> Event {
        let host_id = u128::from(rng.below(6)) + 1;
        let network_id = u128::from(rng.below(5)) + 1;
        match rng.below(12) {
            0..=2 => {
                let status =
                    [HostStatus::Up, HostStatus::Up, HostStatus::Down, HostStatus::Maintenance][rng.below(4) as usize];
                let mut attachments: Vec<(u128, &str)> = Vec::new();
                for network in 1..=5 {
                    if rng.below(2) == 0 {
                        attachments.push((network, if rng.below(4) == 0 { "eth1" } else { "eth0" }));
                    }
                }
                host_on(host_id, status, &attachments)
            }
            3 => host_removed(host_id),
            4 | 5 => heartbeat(host_id),
            6 | 7 => {
                *now_ms += rng.below(12_000) as i64;
                tick(*now_ms)
            }
            8 => {
                let count = match rng.below(5) {
                    0 => None,
                    c => Some(c as u8 - 1),
                };
                network(network_id, rng.below(4) != 0, count)
            }
            9 => network_removed(network_id),
            10 => subnet(network_id, u128::from(rng.below(2))),
            _ => subnet_gone(network_id, u128::from(rng.below(2))),
        }
    }

    #[test]
    fn random_histories_keep_every_network_served_without_moving_healthy_servers() {
        for seed in 0..64 {
            let mut rng = SplitMix64(seed);
            let mut placement = Placement::new(PlacementConfig::default());
            let mut now_ms = 0;
            for step in 0..400u128 {
                let input = envelope(step + 1, random_input(&mut rng, &mut now_ms));
                let before: Vec<(NetworkId, Vec<(HostId, u64)>)> =
                    placement.network_ids().into_iter().map(|network| (network, placement.servers(network))).collect();
                let last_epochs: BTreeMap<NetworkId, u64> = placement.state.epochs.clone();
                let outputs = placement.apply(&input);
                let context = format!("seed {seed}, step {step}, input {:?}", input.event);
                assert_invariants(&placement, &context);

                for output in &outputs {
                    match output {
                        Event::DhcpServerAssigned(e) => {
                            assert!(e.epoch > last_epochs.get(&e.network_id).copied().unwrap_or(0), "{context}");
                            assert_eq!(e.cause, input.id, "{context}");
                        }
                        Event::DhcpServerUnassigned(e) => {
                            // No rebalancing: a server only goes when its host stopped being eligible, its
                            // network wants fewer, or it listens on an interface the network left.
                            let healthy = placement.is_eligible(e.host_id, e.network_id)
                                && placement.wanted_servers(e.network_id) > 0;
                            if healthy {
                                assert!(
                                    matches!(
                                        e.reason,
                                        UnassignReason::ServersCountReduced | UnassignReason::NetworkDetached
                                    ),
                                    "{context}: healthy server taken away: {e:?}"
                                );
                            }
                            assert_eq!(e.cause, input.id, "{context}");
                        }
                        other => panic!("{context}: unexpected output {other:?}"),
                    }
                }
                // Every server that disappeared was unassigned, with the epoch it was assigned with.
                for (network, servers) in before {
                    for (host, epoch) in servers {
                        if placement.servers(network).contains(&(host, epoch)) {
                            continue;
                        }
                        let unassigned = outputs.iter().any(|output| {
                            matches!(output, Event::DhcpServerUnassigned(e)
                                if e.network_id == network && e.host_id == host && e.epoch == epoch)
                        });
                        assert!(unassigned, "{context}: {} {} vanished silently", name(network), short(host));
                    }
                }

                if step % 50 == 49 {
                    let bytes = placement.snapshot();
                    let restored = Placement::restore(placement.config(), &bytes).expect("a fresh snapshot restores");
                    assert_eq!(restored.snapshot(), bytes, "{context}");
                    placement = restored;
                }
            }
        }
    }
}
