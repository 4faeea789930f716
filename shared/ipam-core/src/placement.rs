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
use crate::machine::{InvariantViolation, SnapshotError, StateMachine, ensure};
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

/// The format version of placement snapshots; bump it when [`State`] changes shape.
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

/// An index with slot numbers replaced by host ids: what must not depend on history.
type IndexView<'a> = (
    BTreeMap<NetworkId, BTreeSet<HostId>>,
    BTreeMap<HostId, (bool, &'a BTreeSet<NetworkId>)>,
    &'a BTreeSet<(i64, HostId)>,
    &'a BTreeSet<HostId>,
    &'a BTreeSet<NetworkId>,
);

impl Index {
    fn view(&self) -> IndexView<'_> {
        let host = |slot: usize| self.slots.get(slot).map(|s| s.host_id);
        let attached = self
            .attached
            .iter()
            .map(|(&network, slots)| (network, slots.iter().filter_map(|&slot| host(slot)).collect()))
            .collect();
        let hosts = self
            .slot_of
            .iter()
            .filter_map(|(&host, &slot)| self.slots.get(slot).map(|s| (host, (s.available, &s.serving))))
            .collect();
        (attached, hosts, &self.deadlines, &self.unstamped, &self.under_served)
    }

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

impl StateMachine for Placement {
    type Config = PlacementConfig;
    /// The assignments and unassignments, in order.
    type Decision = Vec<Event>;

    /// Applies one input and returns the assignments and unassignments it causes: networks in id
    /// order; within a network, unassignments by host id, then assignments in the order they were
    /// made (ascending epoch). Event types placement does not follow produce nothing, and so does
    /// an input whose id is among the last [`INPUT_WINDOW`] applied (a retry).
    fn apply(&mut self, input: &Envelope) -> Vec<Event> {
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
    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.state).expect("placement state has string map keys only, so it always serializes")
    }

    /// A machine with the state of `snapshot` and the given config.
    ///
    /// A changed `default_servers_count` applies to a network at the next input that concerns it.
    fn restore(config: &PlacementConfig, snapshot: &[u8]) -> Result<Placement, SnapshotError> {
        let config = *config;
        let state: State = serde_json::from_slice(snapshot)?;
        if state.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version { found: state.version, expected: SNAPSHOT_VERSION });
        }
        let index = Index::build(&state, &config);
        Ok(Placement { config, state, index })
    }

    /// Invariant 5 (every network has `min(wanted, eligible)` servers, all eligible, at epochs no
    /// later than the network's), and the indexes equal what [`Index::build`] derives from the
    /// state, so a dirty set that misses a network, or an index update that drifts, shows here.
    fn check(&self) -> Result<(), InvariantViolation> {
        for network in self.network_ids() {
            let servers = self.servers(network);
            let expected = self.expected_servers(network);
            ensure(servers.len() == expected, || {
                format!("network {network} has servers {servers:?}, expected {expected}")
            })?;
            for (host, epoch) in servers {
                ensure(self.is_eligible(host, network), || {
                    format!("host {host} serves network {network} but is not eligible")
                })?;
                ensure(self.served_networks(host).contains(&network), || {
                    format!("the index misses host {host} serving network {network}")
                })?;
                ensure(epoch <= self.epoch(network), || {
                    format!("network {network}: epoch {epoch} is ahead of the network's {}", self.epoch(network))
                })?;
            }
        }
        let index = &self.index;
        for (&host, &slot) in &index.slot_of {
            ensure(index.slots.get(slot).is_some_and(|s| s.host_id == host), || {
                format!("slot {slot} is not host {host}'s")
            })?;
            ensure(!index.free_slots.contains(&slot), || format!("slot {slot} is both used and free"))?;
        }
        let rebuilt = Index::build(&self.state, &self.config);
        ensure(rebuilt.view() == index.view(), || "the indexes drifted from the state".to_owned())
    }
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
