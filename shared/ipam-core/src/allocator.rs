//! The allocator: one state machine per network that turns vNIC and DHCP-port lifecycle events into
//! reservations, and subnet definitions into activated subnets.
//!
//! Every handler checks everything before it changes anything, so a refused request leaves the state
//! exactly as it was (invariant 7) and yields one `ipam.request.rejected.v1`. Requests are idempotent:
//! a vNIC that comes up twice holds one reservation, and a down event for an owner that holds nothing
//! yields nothing.
//!
//! # Dual-stack vNICs
//! A vNIC holds at most one address per family: its holdings are keyed by (vNIC, family), and a
//! `VnicUp` may name one IPv4 and one IPv6 subnet ([`VnicUp::subnets`]). Such a request is all or
//! nothing: every address is checked before any is taken, so a refusal of either family (pool
//! full, fixed IP taken, ...) reserves neither and yields one rejection, naming the subnet that
//! failed. Accepted, it yields one `ipam.reservation.added.v1` per address, IPv4 first; a down
//! event releases every address of the vNIC, IPv4 first. A vNIC that comes up again while it holds
//! addresses is a no-op when it asks for exactly what it holds (the same subnets and MAC, and a
//! fixed IP, if any, that it holds), and refused with `vnic_conflict` otherwise, a family added or
//! dropped included: as for a single-stack vNIC, a change waits for a down event.
//!
//! # Disabling IPAM
//! `ipam_enabled: false` on a network refuses new reservations (`ipam_disabled`) but keeps the ones
//! that exist, and they are released as their vNICs go down as usual. Disabling is often temporary
//! (maintenance, a switch to an external DHCP service); releasing would renumber running VMs when it
//! is turned back on. Placement stops the network's DHCP servers, so no guest is answered meanwhile.
//! Removing the network releases everything.
//!
//! # Replay
//! State is rebuilt from the machine's *inputs* (its partition of `ipam.networks`), not its outputs:
//! not every input leaves a trace in the outputs (network settings, an idempotent repeat), while the
//! machine is deterministic, so the same inputs rebuild the same state and, as a check, re-derive the
//! outputs already in the log. A [`Allocator::snapshot`] taken at an input offset shortens the replay
//! to the tail after it.
//!
//! # Retries
//! Each network's machine remembers the ids of its last [`INPUT_WINDOW`] inputs ([`RecentInputs`])
//! and ignores an input whose id it holds: a retry has no second effect and writes no output id
//! twice. The window survives the network's removal (the machine stays as a tombstone that holds
//! only the window), so a late retry of one of its requests is not answered `unknown_network` under
//! an id already used. An input about no network reaches no machine and has no effect anyway.
//!
//! # Time, policy, quarantine, conflicts (issue 14)
//! The machine never reads a clock: a network's *now* is the last `ipam.clock.partition_ticked.v1`
//! of its partition, which [`Allocator`] hands to every network it holds (ticks enter no window of
//! input ids: they are many, carry no request, and applying one twice to a network changes
//! nothing, since now only moves forward). A known limit: a tick appended twice (the clock appends
//! each once) would reach, the second time, the networks made since; their now would be set to it,
//! and their outputs for it would reuse output ids. An operator's `ipam.network.policy_set.v1` (validated: thresholds 1 to 100,
//! none twice) is kept and answered with the effective policy, defaults filled in.
//!
//! With `release_quarantine_s` above 0, an address a vNIC released is withheld from every other
//! vNIC and DHCP port until `now >= released_at + release_quarantine_s` (stale ARP and conntrack
//! entries elsewhere still point at the old guest); the same MAC coming up again in the subnet gets
//! it back (a VM restart). A release before the network's first tick is dated by the next tick. The
//! length is read from the policy when a tick or a policy change sweeps the quarantine, so a
//! shorter policy frees addresses at once.
//!
//! An address a host agent's probe found answered by another MAC (`ipam.ip.conflict.v1`) is
//! withheld until an operator clears it. A vNIC holding it by dynamic allocation is moved to
//! another address of its subnet (when one is free); a fixed-IP holder keeps it: it asked for that
//! address, and the conflict is reported, not resolved.
//!
//! After every input that changes how many addresses a subnet holds, the share held is compared,
//! before and after, with the network's utilization thresholds: each one crossed yields one
//! `ipam.subnet.utilization_crossed.v1`, rising or falling.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::event::{
    DhcpPortReleased, DhcpPortRequested, Envelope, Event, IpConflictCleared, IpConflictDetected, NetworkPolicy,
    NetworkPolicyApplied, NetworkPolicySet, NetworkRemoved, NetworkUpserted, Owner, PartitionClockTicked,
    ReleaseReason, RequestRejected, ReservationAdded, ReservationRemoved, SubnetActivated, SubnetAdded,
    SubnetDeactivated, SubnetRemoved, SubnetUtilizationCrossed, VnicDown, VnicUp,
};
use crate::ids::{EventId, HostId, NetworkId, SubnetId, VmId, VnicId};
use crate::lease_watch::{LeaseWatch, LeaseWatchSnapshot, Reserved};
use crate::mac::Mac;
use crate::machine::{InvariantViolation, SnapshotError, StateMachine, ensure};
use crate::net::{IpFamily, SpecialBlock, SubnetSpec};
use crate::pool::{AddressPool, PoolError};
use crate::recent::{INPUT_WINDOW, RecentInputs};
use crate::rejection::{Rejection, RejectionCode};
use crate::time::Timestamp;

/// The longest network name accepted.
pub const MAX_NAME_LEN: usize = 255;

/// The utilization percentages reported when the network's policy does not say.
pub const DEFAULT_UTILIZATION_THRESHOLDS: [u8; 3] = [80, 90, 100];

/// Seconds after which a reserved vNIC without a lease is reported, when the network's policy does
/// not say.
pub const DEFAULT_UNLEASED_AFTER_S: u32 = 300;

/// A network's policy with every default filled in: what the allocator acts on, and what
/// `ipam.network.policy_applied.v1` tells.
pub fn effective_policy(policy: &NetworkPolicy) -> NetworkPolicy {
    let mut thresholds =
        policy.utilization_thresholds.clone().unwrap_or_else(|| DEFAULT_UTILIZATION_THRESHOLDS.to_vec());
    thresholds.sort_unstable();
    NetworkPolicy {
        release_quarantine_s: Some(policy.release_quarantine_s.unwrap_or(0)),
        conflict_probe: Some(policy.conflict_probe.unwrap_or(true)),
        unleased_after_s: Some(policy.unleased_after_s.unwrap_or(DEFAULT_UNLEASED_AFTER_S)),
        utilization_thresholds: Some(thresholds),
    }
}

/// Refuses a policy no network can follow: a threshold outside 1 to 100, or one given twice.
fn validate_policy(policy: &NetworkPolicy) -> Result<(), Rejection> {
    let thresholds = policy.utilization_thresholds.as_deref().unwrap_or_default();
    if let Some(bad) = thresholds.iter().find(|t| !(1..=100).contains(*t)) {
        let message = format!("utilization threshold {bad} is outside 1 to 100 (percent)");
        return Err(Rejection::new(RejectionCode::InvalidPolicy, message));
    }
    let mut seen = BTreeSet::new();
    if let Some(twice) = thresholds.iter().find(|t| !seen.insert(**t)) {
        let message = format!("utilization threshold {twice} is given twice");
        return Err(Rejection::new(RejectionCode::InvalidPolicy, message));
    }
    Ok(())
}

/// Who holds a reservation, as the allocator indexes it: a vNIC holds one address per family (a
/// dual-stack vNIC two; IPv4 orders first), a host's DHCP server one per subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum OwnerKey {
    Vnic(VnicId, IpFamily),
    DhcpPort(HostId, SubnetId),
}

/// One reservation, less its owner key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holding {
    subnet_id: SubnetId,
    ip: IpAddr,
    mac: Mac,
    /// The VM of a vNIC owner; `None` for a DHCP port.
    vm_id: Option<VmId>,
    /// Whether the owner asked for this address (a fixed IP): such a holder keeps it through a
    /// conflict, where a dynamically allocated one is moved.
    fixed: bool,
}

/// A released address sitting out its quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Quarantined {
    /// The MAC that held it: the one owner that may have it back before the end.
    mac: Mac,
    /// The network's now at the release; `None` until the network's first tick dates it.
    released_at: Option<Timestamp>,
}

/// A network's settings as the engine last sent them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSettings {
    pub name: String,
    pub ipam_enabled: bool,
    pub servers_count: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Subnet {
    spec: SubnetSpec,
    pool: AddressPool,
    vnic_holdings: u32,
}

/// The allocator of one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAllocator {
    network_id: NetworkId,
    settings: Option<NetworkSettings>,
    subnets: BTreeMap<SubnetId, Subnet>,
    holdings: BTreeMap<OwnerKey, Holding>,
    macs: BTreeMap<Mac, MacUser>,
    /// The ids of the inputs this network's machine applied last; kept across the network's removal.
    recent_inputs: RecentInputs,
    /// The operator's policy as last set (absent fields keep their defaults).
    policy: NetworkPolicy,
    /// The last partition tick this network saw: its notion of now. Kept across the network's
    /// removal (time belongs to the partition).
    now: Option<Timestamp>,
    /// Released addresses withheld for `release_quarantine_s`, by subnet and address.
    quarantine: BTreeMap<(SubnetId, IpAddr), Quarantined>,
    /// The quarantined addresses of each MAC and subnet: a MAC asking again gets its lowest back.
    /// Derived from `quarantine` alone, so that a snapshot restores it as it was.
    quarantined_by_mac: BTreeSet<(Mac, SubnetId, IpAddr)>,
    /// Addresses another MAC answered for, withheld until cleared: the MAC that answered.
    conflicts: BTreeMap<(SubnetId, IpAddr), Mac>,
    /// What the guests' leases say of the vNIC reservations (observed, never decided on).
    lease_watch: LeaseWatch,
}

/// Who uses a MAC on the network, and for how many reservations. A vNIC's MAC is unique on its
/// network (a dual-stack vNIC uses it for both its addresses); a host's DHCP server uses its
/// interface's one MAC for its address in every subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MacUser {
    Vnic { vnic_id: VnicId, reservations: u32 },
    DhcpServer { host_id: HostId, reservations: u32 },
}

impl MacUser {
    /// Whether `key` may reserve with a MAC this user already has: the same vNIC or host.
    fn admits(self, key: OwnerKey) -> bool {
        match (self, key) {
            (MacUser::Vnic { vnic_id, .. }, OwnerKey::Vnic(vnic, _)) => vnic_id == vnic,
            (MacUser::DhcpServer { host_id, .. }, OwnerKey::DhcpPort(host, _)) => host_id == host,
            _ => false,
        }
    }

    fn reservations(self) -> u32 {
        match self {
            MacUser::Vnic { reservations, .. } | MacUser::DhcpServer { reservations, .. } => reservations,
        }
    }
}

/// The part of a request that says what to reserve.
struct ReserveRequest {
    key: OwnerKey,
    subnet_id: SubnetId,
    mac: Mac,
    vm_id: Option<VmId>,
    requested_ip: Option<IpAddr>,
}

/// A request checked against the state ([`NetworkAllocator::prepare`]): taking it cannot fail, so
/// a request of several addresses checks them all before it takes any.
struct Prepared {
    request: ReserveRequest,
    /// The address to take (the fixed IP, or the one this MAC left in quarantine), or `None` for
    /// the next free one.
    address: Option<IpAddr>,
    /// Whether `address` comes out of quarantine.
    reclaimed: bool,
}

impl NetworkAllocator {
    pub fn new(network_id: NetworkId) -> NetworkAllocator {
        NetworkAllocator::with_input_window(network_id, INPUT_WINDOW)
    }

    /// A machine that remembers the ids of its last `input_window` inputs ([`INPUT_WINDOW`] in
    /// production; tests use small windows).
    fn with_input_window(network_id: NetworkId, input_window: usize) -> NetworkAllocator {
        NetworkAllocator {
            network_id,
            settings: None,
            subnets: BTreeMap::new(),
            holdings: BTreeMap::new(),
            macs: BTreeMap::new(),
            recent_inputs: RecentInputs::with_capacity(input_window),
            policy: NetworkPolicy::default(),
            now: None,
            quarantine: BTreeMap::new(),
            quarantined_by_mac: BTreeSet::new(),
            conflicts: BTreeMap::new(),
            lease_watch: LeaseWatch::new(),
        }
    }

    pub fn network_id(&self) -> NetworkId {
        self.network_id
    }

    pub fn settings(&self) -> Option<&NetworkSettings> {
        self.settings.as_ref()
    }

    /// Whether the machine holds no network (never upserted, or removed); it may still remember
    /// input ids.
    pub fn is_empty(&self) -> bool {
        self.settings.is_none() && self.subnets.is_empty() && self.holdings.is_empty()
    }

    /// The ids of the inputs applied last, oldest first.
    pub fn recent_inputs(&self) -> &RecentInputs {
        &self.recent_inputs
    }

    /// The network's now: its partition's last tick, if one came.
    pub fn now(&self) -> Option<Timestamp> {
        self.now
    }

    /// The policy in force, defaults filled in.
    pub fn policy(&self) -> NetworkPolicy {
        effective_policy(&self.policy)
    }

    fn quarantine_s(&self) -> u32 {
        self.policy.release_quarantine_s.unwrap_or(0)
    }

    /// The addresses in quarantine, as (subnet, IP, MAC that released it, when).
    pub fn quarantined(&self) -> impl Iterator<Item = (SubnetId, IpAddr, Mac, Option<Timestamp>)> + '_ {
        self.quarantine.iter().map(|((subnet_id, ip), q)| (*subnet_id, *ip, q.mac, q.released_at))
    }

    /// The addresses found in conflict and not cleared, as (subnet, IP, MAC that answered).
    pub fn conflicts(&self) -> impl Iterator<Item = (SubnetId, IpAddr, Mac)> + '_ {
        self.conflicts.iter().map(|((subnet_id, ip), mac)| (*subnet_id, *ip, *mac))
    }

    /// Applies one input and returns the outputs, in order. Events of other networks or of types
    /// the allocator does not handle yield nothing, and so does an input whose id is among the
    /// last [`INPUT_WINDOW`] this network applied (a retry): it changes nothing either.
    ///
    /// A partition tick has no network: every network of the partition is given it (see
    /// [`Allocator`]), and it enters no window.
    pub fn apply(&mut self, input: &Envelope) -> Vec<Event> {
        if let Event::PartitionClockTicked(tick) = &input.event {
            return self.tick(tick, input.id);
        }
        if input.event.network_id() != Some(self.network_id) {
            return Vec::new();
        }
        if !self.recent_inputs.record(input.id) {
            return Vec::new();
        }
        let cause = input.id;
        let held_before = self.held_counts();
        let result = match &input.event {
            Event::NetworkUpserted(e) => self.upsert_network(e),
            Event::NetworkRemoved(e) => Ok(self.remove_network(e, cause)),
            Event::SubnetAdded(e) => self.add_subnet(e, cause),
            Event::SubnetRemoved(e) => self.remove_subnet(e, cause),
            Event::VnicStarted(e) | Event::VnicPlugged(e) | Event::VnicLinked(e) => self.vnic_up(e, cause),
            Event::VnicStopped(e) | Event::VnicUnplugged(e) | Event::VnicUnlinked(e) => Ok(self.vnic_down(e, cause)),
            Event::DhcpPortRequested(e) => self.port_requested(e, cause),
            Event::DhcpPortReleased(e) => Ok(self.port_released(e, cause)),
            Event::NetworkPolicySet(e) => self.set_policy(e, cause),
            Event::IpConflictDetected(e) => self.conflict_detected(e, cause),
            Event::IpConflictCleared(e) => Ok(self.conflict_cleared(e)),
            Event::LeaseGranted(e) => Ok(self.lease_observed(crate::event::LeaseChange::Granted, e, cause)),
            Event::LeaseRenewed(e) => Ok(self.lease_observed(crate::event::LeaseChange::Renewed, e, cause)),
            Event::LeaseReleased(e) => Ok(self.lease_observed(crate::event::LeaseChange::Released, e, cause)),
            Event::LeaseExpired(e) => Ok(self.lease_observed(crate::event::LeaseChange::Expired, e, cause)),
            _ => Ok(Vec::new()),
        };
        let result = result.map(|mut outputs| {
            outputs.extend(self.utilization_crossings(&held_before, cause));
            outputs
        });
        result.unwrap_or_else(|rejection| {
            let (vnic_id, mac, subnet_id) = input.event.request_names();
            let subnet_id = rejection.subnet_id.or(subnet_id);
            vec![Event::RequestRejected(RequestRejected {
                network_id: self.network_id,
                request_type: input.event.type_name().to_owned(),
                code: rejection.code,
                message: rejection.message,
                cause,
                vnic_id,
                mac,
                subnet_id,
                host_id: input.event.request_host(),
            })]
        })
    }

    fn upsert_network(&mut self, e: &NetworkUpserted) -> Result<Vec<Event>, Rejection> {
        if e.name.trim().is_empty() || e.name.len() > MAX_NAME_LEN {
            let message = format!("the network name must be 1 to {MAX_NAME_LEN} bytes and not blank");
            return Err(Rejection::new(RejectionCode::InvalidRequest, message));
        }
        self.settings = Some(NetworkSettings {
            name: e.name.clone(),
            ipam_enabled: e.ipam_enabled,
            servers_count: e.servers_count,
        });
        Ok(Vec::new())
    }

    fn remove_network(&mut self, e: &NetworkRemoved, cause: EventId) -> Vec<Event> {
        let mut outputs: Vec<Event> = std::mem::take(&mut self.holdings)
            .into_iter()
            .map(|(key, holding)| self.removed(key, holding, ReleaseReason::NetworkRemoved, cause))
            .collect();
        outputs.extend(std::mem::take(&mut self.subnets).into_keys().map(|subnet_id| {
            Event::SubnetDeactivated(SubnetDeactivated { network_id: e.network_id, subnet_id, cause })
        }));
        // Everything goes but the window of input ids (so a late retry is still recognised) and
        // now (the partition's).
        self.settings = None;
        debug_assert!(self.macs.is_empty(), "every MAC user held a reservation, and all are released");
        self.macs.clear();
        self.quarantine.clear();
        self.quarantined_by_mac.clear();
        self.conflicts.clear();
        self.lease_watch.clear();
        if std::mem::take(&mut self.policy) != NetworkPolicy::default() {
            outputs.push(self.policy_applied(cause));
        }
        outputs
    }

    fn policy_applied(&self, cause: EventId) -> Event {
        Event::NetworkPolicyApplied(NetworkPolicyApplied { network_id: self.network_id, policy: self.policy(), cause })
    }

    fn set_policy(&mut self, e: &NetworkPolicySet, cause: EventId) -> Result<Vec<Event>, Rejection> {
        self.require_network()?;
        validate_policy(&e.policy)?;
        self.policy = e.policy.clone();
        // A shorter quarantine (or none) frees what it no longer covers at once.
        self.end_quarantines();
        Ok(vec![self.policy_applied(cause)])
    }

    /// Time passes: now moves forward (never back: a stale or repeated tick changes nothing),
    /// releases made before the first tick are dated, and quarantines that are over end.
    fn tick(&mut self, tick: &PartitionClockTicked, cause: EventId) -> Vec<Event> {
        if self.now.is_some_and(|now| now >= tick.now) {
            return Vec::new();
        }
        self.now = Some(tick.now);
        for quarantined in self.quarantine.values_mut() {
            quarantined.released_at.get_or_insert(tick.now);
        }
        self.end_quarantines();
        let unleased_after_s = self.policy.unleased_after_s.unwrap_or(DEFAULT_UNLEASED_AFTER_S);
        self.lease_watch.tick(self.network_id, tick.now, unleased_after_s, cause)
    }

    /// A host agent's lease observation, matched against the vNIC reservations ([`LeaseWatch`]):
    /// an observation, so never refused; about a network IPAM does not know, it says nothing.
    fn lease_observed(
        &mut self,
        change: crate::event::LeaseChange,
        lease: &crate::event::LeaseObserved,
        cause: EventId,
    ) -> Vec<Event> {
        if self.settings.is_none() {
            return Vec::new();
        }
        self.lease_watch.observe(change, lease, cause).into_iter().collect()
    }

    /// Every vNIC reservation, as the lease watch follows it.
    fn vnic_reservations(&self) -> impl Iterator<Item = (VnicId, Reserved)> + '_ {
        self.holdings.iter().filter_map(|(key, holding)| match (key, holding.vm_id) {
            (OwnerKey::Vnic(vnic_id, _), Some(vm_id)) => {
                Some((*vnic_id, Reserved { subnet_id: holding.subnet_id, vm_id, mac: holding.mac, ip: holding.ip }))
            }
            _ => None,
        })
    }

    /// Gives back to allocation every quarantined address whose time is over.
    fn end_quarantines(&mut self) {
        if self.quarantine.is_empty() {
            return;
        }
        let (now, length_ms) = (self.now, i64::from(self.quarantine_s()) * 1000);
        let over = |q: &Quarantined| match (q.released_at, now) {
            _ if length_ms == 0 => true,
            (Some(released_at), Some(now)) => now.unix_ms() >= released_at.unix_ms().saturating_add(length_ms),
            _ => false,
        };
        let ended: Vec<(SubnetId, IpAddr)> =
            self.quarantine.iter().filter(|(_, q)| over(q)).map(|(place, _)| *place).collect();
        for (subnet_id, ip) in ended {
            self.unquarantine(subnet_id, ip);
        }
    }

    /// The lowest address `mac` released in `subnet_id` that is still in quarantine.
    fn quarantined_of(&self, mac: Mac, subnet_id: SubnetId) -> Option<IpAddr> {
        let from = (mac, subnet_id, IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let first = self.quarantined_by_mac.range(from..).next()?;
        (first.0 == mac && first.1 == subnet_id).then_some(first.2)
    }

    /// Ends `ip`'s quarantine, if it is in one.
    fn unquarantine(&mut self, subnet_id: SubnetId, ip: IpAddr) -> Option<Quarantined> {
        let quarantined = self.quarantine.remove(&(subnet_id, ip))?;
        self.quarantined_by_mac.remove(&(quarantined.mac, subnet_id, ip));
        if let Some(subnet) = self.subnets.get_mut(&subnet_id) {
            subnet.pool.unwithhold(ip);
        }
        Some(quarantined)
    }

    fn conflict_detected(&mut self, e: &IpConflictDetected, cause: EventId) -> Result<Vec<Event>, Rejection> {
        self.require_network()?;
        let subnet = self.require_subnet(e.subnet_id)?;
        if !subnet.spec.cidr.contains(e.ip) {
            let message = format!("{} is not inside {}", e.ip, subnet.spec.cidr);
            return Err(Rejection::new(RejectionCode::IpOutsideSubnet, message));
        }
        if !subnet.spec.is_assignable(e.ip) {
            let message = format!("{} is the network, broadcast or gateway address of {}", e.ip, subnet.spec.cidr);
            return Err(Rejection::new(RejectionCode::IpNotAssignable, message));
        }
        let place = (e.subnet_id, e.ip);
        if self.conflicts.contains_key(&place) {
            return Ok(Vec::new());
        }
        // A conflict outlasts a quarantine: the address stays withheld, now until it is cleared.
        self.unquarantine(e.subnet_id, e.ip);
        self.conflicts.insert(place, e.answered_by);
        let subnet = self.subnets.get_mut(&e.subnet_id).expect("required above");
        subnet.pool.withhold(e.ip);
        let holder = self
            .holdings
            .iter()
            .find(|(key, holding)| {
                matches!(key, OwnerKey::Vnic(..)) && holding.subnet_id == e.subnet_id && holding.ip == e.ip
            })
            .map(|(key, holding)| (*key, *holding));
        // A dynamic holder moves when another address is free; otherwise it keeps the address (a
        // vNIC without any would be worse off), and so does a fixed holder.
        let Some((key, holding)) = holder.filter(|(_, holding)| !holding.fixed && subnet.pool.free_count() > 0) else {
            return Ok(Vec::new());
        };
        let removed = self.release(key, ReleaseReason::IpConflict, cause);
        let request = ReserveRequest {
            key,
            subnet_id: holding.subnet_id,
            mac: holding.mac,
            vm_id: holding.vm_id,
            requested_ip: None,
        };
        let added = self.reserve(request, cause).expect("a free address was counted, and the vNIC's MAC is its own");
        Ok(removed.into_iter().chain([added]).collect())
    }

    fn conflict_cleared(&mut self, e: &IpConflictCleared) -> Vec<Event> {
        let found = self.conflicts.keys().find(|(_, ip)| *ip == e.ip).copied();
        if let Some((subnet_id, ip)) = found {
            self.conflicts.remove(&(subnet_id, ip));
            if let Some(subnet) = self.subnets.get_mut(&subnet_id) {
                subnet.pool.unwithhold(ip);
            }
        }
        Vec::new()
    }

    /// How many addresses each subnet holds.
    fn held_counts(&self) -> Vec<(SubnetId, u128)> {
        self.subnets.iter().map(|(id, subnet)| (*id, subnet.pool.used_count())).collect()
    }

    /// The thresholds crossed since `before` (subnets added or removed meanwhile cross none):
    /// rising ones in increasing order, falling ones in decreasing order.
    fn utilization_crossings(&self, before: &[(SubnetId, u128)], cause: EventId) -> Vec<Event> {
        let changed = |(subnet_id, used_before): &&(SubnetId, u128)| {
            self.subnets.get(subnet_id).is_some_and(|subnet| subnet.pool.used_count() != *used_before)
        };
        // Most inputs (ticks, leases, refusals) change no count: they cost no copy of the policy.
        if !before.iter().any(|held| changed(&held)) {
            return Vec::new();
        }
        let mut outputs = Vec::new();
        let thresholds = self.policy().utilization_thresholds.unwrap_or_default();
        for (subnet_id, used_before) in before {
            let Some(subnet) = self.subnets.get(subnet_id) else { continue };
            let (used, size) = (subnet.pool.used_count(), subnet.pool.capacity());
            if used == *used_before || size == 0 {
                continue;
            }
            let reached = |used: u128, threshold: u8| used * 100 >= u128::from(threshold) * size;
            let rising = used > *used_before;
            let crossed = thresholds.iter().filter(|t| reached(*used_before, **t) != reached(used, **t));
            let crossed: Vec<u8> = if rising { crossed.copied().collect() } else { crossed.rev().copied().collect() };
            outputs.extend(crossed.into_iter().map(|threshold| {
                Event::SubnetUtilizationCrossed(SubnetUtilizationCrossed {
                    network_id: self.network_id,
                    subnet_id: *subnet_id,
                    threshold,
                    rising,
                    used: u64::try_from(used).unwrap_or(u64::MAX),
                    size: u64::try_from(size).unwrap_or(u64::MAX),
                    cause,
                })
            }));
        }
        outputs
    }

    fn require_network(&self) -> Result<&NetworkSettings, Rejection> {
        self.settings.as_ref().ok_or_else(|| {
            Rejection::new(RejectionCode::UnknownNetwork, format!("network {} is not known to IPAM", self.network_id))
        })
    }

    fn require_enabled(&self) -> Result<(), Rejection> {
        if self.require_network()?.ipam_enabled {
            Ok(())
        } else {
            Err(Rejection::new(RejectionCode::IpamDisabled, format!("IPAM is disabled on network {}", self.network_id)))
        }
    }

    fn add_subnet(&mut self, e: &SubnetAdded, cause: EventId) -> Result<Vec<Event>, Rejection> {
        self.require_network()?;
        let spec = SubnetSpec::new(
            e.cidr,
            e.gateway,
            e.dns_servers.clone(),
            e.ntp_servers.clone(),
            e.allocation_pools.clone(),
        )?;
        if let Some(existing) = self.subnets.get_mut(&e.subnet_id) {
            if existing.spec == spec {
                return Ok(Vec::new());
            }
            if !existing.spec.differs_only_in_options(&spec) {
                let message = format!(
                    "subnet {} exists as {} with gateway {}; only its DNS and NTP servers may change",
                    e.subnet_id, existing.spec.cidr, existing.spec.gateway
                );
                return Err(Rejection::new(RejectionCode::SubnetConflict, message));
            }
            existing.spec = spec;
            return Ok(vec![self.activated(e.subnet_id, cause)]);
        }
        if let Some((other_id, other)) = self.subnets.iter().find(|(_, other)| other.spec.cidr.overlaps(spec.cidr)) {
            let message = format!("{} overlaps subnet {other_id} ({}) of this network", spec.cidr, other.spec.cidr);
            return Err(Rejection::new(RejectionCode::OverlappingSubnet, message));
        }
        let pool = AddressPool::new(&spec);
        self.subnets.insert(e.subnet_id, Subnet { spec, pool, vnic_holdings: 0 });
        Ok(vec![self.activated(e.subnet_id, cause)])
    }

    fn activated(&self, subnet_id: SubnetId, cause: EventId) -> Event {
        let spec = &self.subnets[&subnet_id].spec;
        Event::SubnetActivated(SubnetActivated {
            network_id: self.network_id,
            subnet_id,
            cidr: spec.cidr,
            gateway: spec.gateway,
            dns_servers: spec.dns_servers.clone(),
            ntp_servers: spec.ntp_servers.clone(),
            allocation_pools: spec.allocation_pools.clone(),
            cause,
        })
    }

    fn remove_subnet(&mut self, e: &SubnetRemoved, cause: EventId) -> Result<Vec<Event>, Rejection> {
        self.require_network()?;
        let subnet = self.require_subnet(e.subnet_id)?;
        if subnet.vnic_holdings > 0 {
            let message = format!("subnet {} still holds {} vNIC reservations", e.subnet_id, subnet.vnic_holdings);
            return Err(Rejection::new(RejectionCode::SubnetInUse, message));
        }
        // DHCP servers' own addresses do not keep a subnet alive: they go with it.
        let ports: Vec<OwnerKey> = self
            .holdings
            .iter()
            .filter(|(key, holding)| matches!(key, OwnerKey::DhcpPort(..)) && holding.subnet_id == e.subnet_id)
            .map(|(key, _)| *key)
            .collect();
        let mut outputs: Vec<Event> =
            ports.into_iter().filter_map(|key| self.release(key, ReleaseReason::SubnetRemoved, cause)).collect();
        self.subnets.remove(&e.subnet_id);
        self.quarantine.retain(|(subnet_id, _), _| *subnet_id != e.subnet_id);
        self.quarantined_by_mac.retain(|(_, subnet_id, _)| *subnet_id != e.subnet_id);
        self.conflicts.retain(|(subnet_id, _), _| *subnet_id != e.subnet_id);
        outputs.push(Event::SubnetDeactivated(SubnetDeactivated {
            network_id: self.network_id,
            subnet_id: e.subnet_id,
            cause,
        }));
        Ok(outputs)
    }

    fn require_subnet(&self, subnet_id: SubnetId) -> Result<&Subnet, Rejection> {
        self.subnets.get(&subnet_id).ok_or_else(|| {
            let message = format!("subnet {subnet_id} is not defined on network {}", self.network_id);
            Rejection::new(RejectionCode::UnknownSubnet, message)
        })
    }

    /// A vNIC came up: it gets an address in each subnet it names, all or nothing (see the module
    /// documentation on dual-stack vNICs).
    fn vnic_up(&mut self, e: &VnicUp, cause: EventId) -> Result<Vec<Event>, Rejection> {
        self.require_enabled()?;
        let subnets = e.subnets();
        let held: Vec<Holding> = self.vnic_holdings(e.vnic_id).map(|(_, holding)| *holding).collect();
        if !held.is_empty() {
            // Coming up again: a no-op when it asks for exactly what it holds.
            let asks_held = |holding: &Holding| {
                holding.mac == e.mac
                    && subnets.contains(&holding.subnet_id)
                    && e.requested_ip.is_none_or(|ip| IpFamily::of(ip) != IpFamily::of(holding.ip) || ip == holding.ip)
            };
            let requested_held = e.requested_ip.is_none_or(|ip| held.iter().any(|holding| holding.ip == ip));
            let same = held.len() == subnets.len() && held.iter().all(asks_held) && requested_held;
            let asked = if subnets.is_empty() { "no subnet" } else { "another subnet, MAC or IP" };
            return if same { Ok(Vec::new()) } else { Err(vnic_conflict(e.vnic_id, &held, asked)) };
        }
        // A vNIC on no subnet gets no IPAM service.
        let mut by_family: BTreeMap<IpFamily, SubnetId> = BTreeMap::new();
        for &subnet_id in &subnets {
            let family = self.require_subnet(subnet_id).map_err(|r| r.in_subnet(subnet_id))?.spec.cidr.family();
            if let Some(other) = by_family.insert(family, subnet_id) {
                let message = format!(
                    "subnets {other} and {subnet_id} are both {family}; a vNIC holds at most one address of each family"
                );
                return Err(Rejection::new(RejectionCode::DuplicateFamily, message).in_subnet(subnet_id));
            }
        }
        if let Some(ip) = e.requested_ip
            && !subnets.is_empty()
            && !by_family.contains_key(&IpFamily::of(ip))
        {
            let cidrs: Vec<String> = by_family.values().map(|id| self.subnets[id].spec.cidr.to_string()).collect();
            let message = format!("{ip} is not inside {}", cidrs.join(" or "));
            return Err(Rejection::new(RejectionCode::IpOutsideSubnet, message));
        }
        let mut prepared = Vec::with_capacity(by_family.len());
        for (family, subnet_id) in by_family {
            let request = ReserveRequest {
                key: OwnerKey::Vnic(e.vnic_id, family),
                subnet_id,
                mac: e.mac,
                vm_id: Some(e.vm_id),
                requested_ip: e.requested_ip.filter(|ip| IpFamily::of(*ip) == family),
            };
            prepared.push(self.prepare(request).map_err(|r| r.in_subnet(subnet_id))?);
        }
        Ok(prepared.into_iter().map(|prepared| self.take(prepared, cause)).collect())
    }

    /// The vNIC's holdings, IPv4 first.
    fn vnic_holdings(&self, vnic_id: VnicId) -> impl Iterator<Item = (&OwnerKey, &Holding)> + '_ {
        self.holdings.range(OwnerKey::Vnic(vnic_id, IpFamily::Ipv4)..=OwnerKey::Vnic(vnic_id, IpFamily::Ipv6))
    }

    fn port_requested(&mut self, e: &DhcpPortRequested, cause: EventId) -> Result<Vec<Event>, Rejection> {
        self.require_enabled()?;
        let key = OwnerKey::DhcpPort(e.host_id, e.subnet_id);
        if let Some(held) = self.holdings.get(&key) {
            let same = held.subnet_id == e.subnet_id && held.mac == e.mac;
            return if same { Ok(Vec::new()) } else { Err(conflict(key, held, "another subnet, MAC or IP")) };
        }
        let request = ReserveRequest { key, subnet_id: e.subnet_id, mac: e.mac, vm_id: None, requested_ip: None };
        Ok(vec![self.reserve(request, cause)?])
    }

    /// Checks and takes one address for an owner that holds none under its key.
    fn reserve(&mut self, request: ReserveRequest, cause: EventId) -> Result<Event, Rejection> {
        let prepared = self.prepare(request)?;
        Ok(self.take(prepared, cause))
    }

    /// Checks everything that could refuse `request`, changing nothing; the owner holds nothing
    /// under its key.
    fn prepare(&self, request: ReserveRequest) -> Result<Prepared, Rejection> {
        let ReserveRequest { key, subnet_id, mac, requested_ip, .. } = request;
        debug_assert!(!self.holdings.contains_key(&key), "{} holds an address already", describe(key));
        let network_id = self.network_id;
        let subnet = self.require_subnet(subnet_id)?;
        if let Some(user) = self.macs.get(&mac).filter(|user| !user.admits(key)) {
            let who = match user {
                MacUser::Vnic { vnic_id, .. } => format!("vNIC {vnic_id}"),
                MacUser::DhcpServer { host_id, .. } => format!("the DHCP server of host {host_id}"),
            };
            let message = format!("MAC {mac} is already used on network {network_id} by {who}");
            return Err(Rejection::new(RejectionCode::DuplicateMac, message));
        }
        if let Some((ip, block)) = requested_ip.and_then(|ip| Some((ip, SpecialBlock::of(ip)?))) {
            // Subnets in these blocks are refused, but one accepted by an older version may be in
            // one, and an address outside every subnet is better told why it never fits.
            let message = format!("{ip} is in {}; no host may hold it", block.describe());
            return Err(Rejection::new(RejectionCode::IpNotAssignable, message));
        }
        // A withheld address that is not used: why, and whether this MAC may have it all the same.
        if let Some(ip) = requested_ip.filter(|ip| !subnet.pool.is_used(*ip)) {
            if let Some(answered_by) = self.conflicts.get(&(subnet_id, ip)) {
                let message = format!(
                    "{ip} was found answered by MAC {answered_by}; it is out of use until the conflict is cleared"
                );
                return Err(Rejection::new(RejectionCode::IpInConflict, message));
            }
            if let Some(quarantined) = self.quarantine.get(&(subnet_id, ip)).filter(|q| q.mac != mac) {
                let until = match quarantined.released_at {
                    Some(at) => format!(
                        "until {}",
                        Timestamp::from_unix_ms(at.unix_ms() + 1000 * i64::from(self.quarantine_s()))
                    ),
                    None => format!("for {} s from the network's next clock tick", self.quarantine_s()),
                };
                let message =
                    format!("{ip} was released by MAC {} and is kept from other MACs {until}", quarantined.mac);
                return Err(Rejection::new(RejectionCode::IpQuarantined, message));
            }
        }
        // The address this MAC released in the subnet, still in quarantine: a VM restart gets it back.
        let reclaimed = match requested_ip {
            Some(ip) => self.quarantine.contains_key(&(subnet_id, ip)).then_some(ip),
            None => self.quarantined_of(mac, subnet_id),
        };
        let address = requested_ip.or(reclaimed);
        let cidr = subnet.spec.cidr;
        match address {
            Some(ip) => subnet.pool.check_reserve(ip).map_err(|error| match error {
                PoolError::OutsideSubnet => {
                    Rejection::new(RejectionCode::IpOutsideSubnet, format!("{ip} is not inside {cidr}"))
                }
                PoolError::NotAssignable => Rejection::new(
                    RejectionCode::IpNotAssignable,
                    format!("{ip} is the network, broadcast or gateway address of {cidr}"),
                ),
                PoolError::InUse => {
                    Rejection::new(RejectionCode::IpInUse, format!("{ip} is already reserved in {cidr}"))
                }
            })?,
            None if subnet.pool.free_count() == 0 => {
                let message = format!("no free address is left in the allocation pools of {cidr}");
                return Err(Rejection::new(RejectionCode::SubnetExhausted, message));
            }
            None => {}
        }
        Ok(Prepared { request, address, reclaimed: reclaimed.is_some() })
    }

    /// Takes what [`NetworkAllocator::prepare`] checked, and describes it.
    fn take(&mut self, prepared: Prepared, cause: EventId) -> Event {
        let Prepared { request: ReserveRequest { key, subnet_id, mac, vm_id, requested_ip }, address, reclaimed } =
            prepared;
        if let (true, Some(ip)) = (reclaimed, address) {
            self.unquarantine(subnet_id, ip);
        }
        let network_id = self.network_id;
        let subnet = self.subnets.get_mut(&subnet_id).expect("checked by prepare");
        let ip = match address {
            Some(ip) => {
                subnet.pool.reserve(ip).expect("checked by prepare");
                ip
            }
            None => subnet.pool.allocate().expect("prepare counted a free address"),
        };
        if matches!(key, OwnerKey::Vnic(..)) {
            subnet.vnic_holdings += 1;
        }
        let holding = Holding { subnet_id, ip, mac, vm_id, fixed: requested_ip.is_some() };
        self.holdings.insert(key, holding);
        self.use_mac(mac, key);
        if let (OwnerKey::Vnic(vnic_id, _), Some(vm_id)) = (key, vm_id) {
            self.lease_watch.reserved(vnic_id, Reserved { subnet_id, vm_id, mac, ip }, self.now);
        }
        Event::ReservationAdded(ReservationAdded { network_id, subnet_id, owner: owner(key, &holding), mac, ip, cause })
    }

    /// Releases every address of the vNIC, IPv4 first.
    fn vnic_down(&mut self, e: &VnicDown, cause: EventId) -> Vec<Event> {
        let keys: Vec<OwnerKey> = self.vnic_holdings(e.vnic_id).map(|(key, _)| *key).collect();
        keys.into_iter().filter_map(|key| self.release(key, ReleaseReason::VnicDown, cause)).collect()
    }

    fn port_released(&mut self, e: &DhcpPortReleased, cause: EventId) -> Vec<Event> {
        self.release(OwnerKey::DhcpPort(e.host_id, e.subnet_id), ReleaseReason::PortReleased, cause)
            .into_iter()
            .collect()
    }

    fn use_mac(&mut self, mac: Mac, key: OwnerKey) {
        let user = self.macs.entry(mac).or_insert(match key {
            OwnerKey::Vnic(vnic_id, _) => MacUser::Vnic { vnic_id, reservations: 0 },
            OwnerKey::DhcpPort(host_id, _) => MacUser::DhcpServer { host_id, reservations: 0 },
        });
        match user {
            MacUser::Vnic { reservations, .. } | MacUser::DhcpServer { reservations, .. } => *reservations += 1,
        }
    }

    fn unuse_mac(&mut self, mac: Mac) {
        if let Some(MacUser::Vnic { reservations, .. } | MacUser::DhcpServer { reservations, .. }) =
            self.macs.get_mut(&mac)
        {
            *reservations -= 1;
            if *reservations > 0 {
                return;
            }
        }
        self.macs.remove(&mac);
    }

    /// Ends `key`'s reservation, if it holds one.
    fn release(&mut self, key: OwnerKey, reason: ReleaseReason, cause: EventId) -> Option<Event> {
        let holding = self.holdings.remove(&key)?;
        Some(self.removed(key, holding, reason, cause))
    }

    /// Frees what `holding` took (it is already out of `holdings`) and describes it.
    fn removed(&mut self, key: OwnerKey, holding: Holding, reason: ReleaseReason, cause: EventId) -> Event {
        self.unuse_mac(holding.mac);
        if let OwnerKey::Vnic(vnic_id, family) = key {
            self.lease_watch.released(vnic_id, family);
        }
        let quarantine =
            matches!((key, reason), (OwnerKey::Vnic(..), ReleaseReason::VnicDown)) && self.quarantine_s() > 0;
        if let Some(subnet) = self.subnets.get_mut(&holding.subnet_id) {
            let was_used = subnet.pool.release(holding.ip);
            debug_assert!(was_used, "a held address must be marked used");
            if matches!(key, OwnerKey::Vnic(..)) {
                subnet.vnic_holdings -= 1;
            }
            // An address in conflict is withheld already, and stays so.
            if quarantine && subnet.pool.withhold(holding.ip) {
                let place = (holding.subnet_id, holding.ip);
                self.quarantine.insert(place, Quarantined { mac: holding.mac, released_at: self.now });
                self.quarantined_by_mac.insert((holding.mac, holding.subnet_id, holding.ip));
            }
        }
        Event::ReservationRemoved(ReservationRemoved {
            network_id: self.network_id,
            subnet_id: holding.subnet_id,
            owner: owner(key, &holding),
            mac: holding.mac,
            ip: holding.ip,
            reason,
            cause,
        })
    }

    /// Every reservation as (subnet, owner, MAC, IP), ordered by owner.
    pub fn reservations(&self) -> impl Iterator<Item = (SubnetId, Owner, Mac, IpAddr)> + '_ {
        self.holdings.iter().map(|(key, holding)| (holding.subnet_id, owner(*key, holding), holding.mac, holding.ip))
    }

    /// The reservations a vNIC holds (one per family), IPv4 first: (subnet, MAC, IP).
    pub fn reservations_of(&self, vnic_id: VnicId) -> Vec<(SubnetId, Mac, IpAddr)> {
        self.vnic_holdings(vnic_id).map(|(_, holding)| (holding.subnet_id, holding.mac, holding.ip)).collect()
    }

    /// The subnets, with how many addresses are used and still free for dynamic allocation.
    pub fn subnets(&self) -> impl Iterator<Item = (SubnetId, &SubnetSpec, u128, u128)> + '_ {
        self.subnets.iter().map(|(id, subnet)| (*id, &subnet.spec, subnet.pool.used_count(), subnet.pool.free_count()))
    }

    /// The network's invariants: every holding sits in a known subnet, on an assignable address its
    /// pool marks used, held once; each pool's used count and each subnet's vNIC count equal what
    /// the holdings say; a vNIC's MAC belongs to it alone, and a DHCP server's MAC counts exactly
    /// the reservations made with it.
    fn check(&self) -> Result<(), InvariantViolation> {
        let network = self.network_id;
        let mut held = BTreeSet::new();
        let mut per_subnet: BTreeMap<SubnetId, (u128, u32)> = BTreeMap::new();
        let mut per_mac: BTreeMap<Mac, u32> = BTreeMap::new();
        for (key, holding) in &self.holdings {
            let Holding { subnet_id, ip, mac, .. } = *holding;
            let subnet = self.subnets.get(&subnet_id);
            ensure(subnet.is_some(), || format!("network {network}: {ip} is held in unknown subnet {subnet_id}"))?;
            let subnet = subnet.map(|s| (&s.spec, &s.pool));
            if let Some((spec, pool)) = subnet {
                ensure(spec.is_assignable(ip) && pool.is_used(ip), || {
                    format!("network {network}: {ip} is held but not assignable and used in {}", spec.cidr)
                })?;
            }
            ensure(held.insert((subnet_id, ip)), || format!("network {network}: {ip} is held twice"))?;
            let counts = per_subnet.entry(subnet_id).or_default();
            counts.0 += 1;
            counts.1 += u32::from(matches!(key, OwnerKey::Vnic(..)));
            *per_mac.entry(mac).or_default() += 1;
            let user = self.macs.get(&mac).copied();
            let consistent = match (key, user) {
                (OwnerKey::Vnic(vnic_id, family), Some(MacUser::Vnic { vnic_id: user, .. })) => {
                    *vnic_id == user && IpFamily::of(ip) == *family
                }
                (OwnerKey::DhcpPort(host_id, _), Some(MacUser::DhcpServer { host_id: user, .. })) => *host_id == user,
                _ => false,
            };
            ensure(consistent, || {
                format!("network {network}: MAC {mac} of {} is recorded as {user:?}", describe(*key))
            })?;
        }
        for (subnet_id, subnet) in &self.subnets {
            let (count, vnics) = per_subnet.get(subnet_id).copied().unwrap_or_default();
            ensure(subnet.pool.used_count() == count && subnet.vnic_holdings == vnics, || {
                format!(
                    "network {network}, subnet {subnet_id}: the pool counts {} used and {} vNICs, the holdings {count} and {vnics}",
                    subnet.pool.used_count(),
                    subnet.vnic_holdings
                )
            })?;
        }
        let mut withheld: BTreeMap<SubnetId, u128> = BTreeMap::new();
        for ((subnet_id, ip), quarantined) in &self.quarantine {
            let pool = self.subnets.get(subnet_id).map(|subnet| &subnet.pool);
            ensure(pool.is_some_and(|pool| pool.is_withheld(*ip) && !pool.is_used(*ip)), || {
                format!("network {network}: quarantined {ip} is not a withheld, unused address of subnet {subnet_id}")
            })?;
            ensure(!self.conflicts.contains_key(&(*subnet_id, *ip)), || {
                format!("network {network}: {ip} is both quarantined and in conflict")
            })?;
            ensure(quarantined.released_at.is_some() || self.now.is_none(), || {
                format!("network {network}: quarantined {ip} is not dated though a tick came")
            })?;
            *withheld.entry(*subnet_id).or_default() += 1;
        }
        for (mac, subnet_id, ip) in &self.quarantined_by_mac {
            ensure(self.quarantine.get(&(*subnet_id, *ip)).is_some_and(|q| q.mac == *mac), || {
                format!("network {network}: MAC {mac} is indexed as quarantining {ip}, which it does not")
            })?;
        }
        ensure(self.quarantined_by_mac.len() == self.quarantine.len(), || {
            format!("network {network}: the quarantine's index by MAC misses addresses")
        })?;
        for (subnet_id, ip) in self.conflicts.keys() {
            let pool = self.subnets.get(subnet_id).map(|subnet| &subnet.pool);
            ensure(pool.is_some_and(|pool| pool.is_withheld(*ip)), || {
                format!("network {network}: {ip} in conflict is not withheld in subnet {subnet_id}")
            })?;
            *withheld.entry(*subnet_id).or_default() += 1;
        }
        for (subnet_id, subnet) in &self.subnets {
            let count = withheld.get(subnet_id).copied().unwrap_or(0);
            ensure(subnet.pool.withheld_count() == count, || {
                format!(
                    "network {network}, subnet {subnet_id}: the pool withholds {} addresses, quarantine and conflicts {count}",
                    subnet.pool.withheld_count()
                )
            })?;
        }
        for (mac, user) in &self.macs {
            let uses = per_mac.get(mac).copied().unwrap_or(0);
            let recorded = user.reservations();
            ensure(uses == recorded, || {
                format!("network {network}: MAC {mac} is recorded {recorded} times, used {uses}")
            })?;
        }
        self.lease_watch.check(network, self.vnic_reservations())
    }

    fn to_snapshot(&self) -> NetworkSnapshot {
        NetworkSnapshot {
            network_id: self.network_id,
            settings: self.settings.clone(),
            subnets: self
                .subnets
                .iter()
                .map(|(id, subnet)| SubnetSnapshot {
                    subnet_id: *id,
                    spec: subnet.spec.clone(),
                    next_candidate: subnet.pool.next_candidate(),
                })
                .collect(),
            reservations: self
                .holdings
                .iter()
                .map(|(key, holding)| ReservationSnapshot {
                    subnet_id: holding.subnet_id,
                    owner: owner(*key, holding),
                    mac: holding.mac,
                    ip: holding.ip,
                    fixed: holding.fixed,
                })
                .collect(),
            recent_inputs: self.recent_inputs.clone(),
            policy: self.policy.clone(),
            now: self.now,
            quarantine: self
                .quarantine
                .iter()
                .map(|((subnet_id, ip), q)| QuarantineSnapshot {
                    subnet_id: *subnet_id,
                    ip: *ip,
                    mac: q.mac,
                    released_at: q.released_at,
                })
                .collect(),
            conflicts: self
                .conflicts
                .iter()
                .map(|((subnet_id, ip), answered_by)| ConflictSnapshot {
                    subnet_id: *subnet_id,
                    ip: *ip,
                    answered_by: *answered_by,
                })
                .collect(),
            lease_watch: self.lease_watch.to_snapshot(),
        }
    }

    fn from_snapshot(snapshot: NetworkSnapshot) -> Result<NetworkAllocator, SnapshotError> {
        let network_id = snapshot.network_id;
        let mut allocator = NetworkAllocator::new(network_id);
        allocator.settings = snapshot.settings;
        allocator.recent_inputs = snapshot.recent_inputs;
        validate_policy(&snapshot.policy)
            .map_err(|rejection| SnapshotError::Inconsistent(format!("network {network_id}: {}", rejection.message)))?;
        allocator.policy = snapshot.policy;
        allocator.now = snapshot.now;
        for SubnetSnapshot { subnet_id, spec, next_candidate } in snapshot.subnets {
            spec.check_shape().map_err(|rejection| {
                SnapshotError::Inconsistent(format!("network {network_id}, subnet {subnet_id}: {}", rejection.message))
            })?;
            let mut pool = AddressPool::new(&spec);
            pool.set_next_candidate(next_candidate);
            allocator.subnets.insert(subnet_id, Subnet { spec, pool, vnic_holdings: 0 });
        }
        // A million reservations are restored in bulk: the maps are built from sorted runs
        // (`BTreeMap::from_iter`) rather than by a million inserts, and the checks the inserts made
        // (an owner twice, a MAC of two owners) are made on those runs.
        let inconsistent = |what: &str| SnapshotError::Inconsistent(format!("network {network_id}: {what}"));
        let count = snapshot.reservations.len();
        let mut holdings = Vec::with_capacity(count);
        let mut macs = Vec::with_capacity(count);
        for ReservationSnapshot { subnet_id, owner, mac, ip, fixed } in snapshot.reservations {
            let (key, vm_id) = match owner {
                Owner::Vnic { vnic_id, vm_id } => (OwnerKey::Vnic(vnic_id, IpFamily::of(ip)), Some(vm_id)),
                Owner::DhcpServer { host_id } => (OwnerKey::DhcpPort(host_id, subnet_id), None),
            };
            let subnet = allocator.subnets.get_mut(&subnet_id).ok_or_else(|| inconsistent("unknown subnet"))?;
            subnet.pool.reserve(ip).map_err(|_| inconsistent(&format!("{ip} cannot be held")))?;
            if let OwnerKey::Vnic(..) = key {
                subnet.vnic_holdings += 1;
            }
            macs.push((mac, key));
            holdings.push((key, Holding { subnet_id, ip, mac, vm_id, fixed }));
        }
        allocator.holdings = holdings.into_iter().collect();
        if allocator.holdings.len() != count {
            return Err(inconsistent("an owner holds two reservations"));
        }
        // Stable: each MAC's first owner is the one a reservation-by-reservation restore met first.
        macs.sort_by_key(|(mac, _)| *mac);
        let mut users = Vec::with_capacity(macs.len());
        for run in macs.chunk_by(|a, b| a.0 == b.0) {
            let (mac, first) = run[0];
            let reservations =
                u32::try_from(run.len()).map_err(|_| inconsistent(&format!("MAC {mac} held too often")))?;
            let user = match first {
                OwnerKey::Vnic(vnic_id, _) => MacUser::Vnic { vnic_id, reservations },
                OwnerKey::DhcpPort(host_id, _) => MacUser::DhcpServer { host_id, reservations },
            };
            if run.iter().any(|(_, key)| !user.admits(*key)) {
                return Err(inconsistent(&format!("MAC {mac} held twice")));
            }
            users.push((mac, user));
        }
        allocator.macs = users.into_iter().collect();
        let inconsistent = |what: String| SnapshotError::Inconsistent(format!("network {network_id}: {what}"));
        for QuarantineSnapshot { subnet_id, ip, mac, released_at } in snapshot.quarantine {
            let subnet = allocator.subnets.get_mut(&subnet_id);
            if !subnet.is_some_and(|subnet| !subnet.pool.is_used(ip) && subnet.pool.withhold(ip)) {
                return Err(inconsistent(format!("quarantined {ip} is used, withheld twice or in no subnet")));
            }
            allocator.quarantine.insert((subnet_id, ip), Quarantined { mac, released_at });
            allocator.quarantined_by_mac.insert((mac, subnet_id, ip));
        }
        for ConflictSnapshot { subnet_id, ip, answered_by } in snapshot.conflicts {
            let subnet = allocator.subnets.get_mut(&subnet_id);
            if !subnet.is_some_and(|subnet| subnet.spec.is_assignable(ip) && subnet.pool.withhold(ip)) {
                return Err(inconsistent(format!("{ip} in conflict is withheld twice or not in its subnet")));
            }
            allocator.conflicts.insert((subnet_id, ip), answered_by);
        }
        allocator.lease_watch =
            LeaseWatch::from_snapshot(snapshot.lease_watch, allocator.vnic_reservations()).map_err(inconsistent)?;
        Ok(allocator)
    }
}

fn owner(key: OwnerKey, holding: &Holding) -> Owner {
    match key {
        OwnerKey::Vnic(vnic_id, _) => Owner::Vnic { vnic_id, vm_id: holding.vm_id.unwrap_or(VmId::from_u128(0)) },
        OwnerKey::DhcpPort(host_id, _) => Owner::DhcpServer { host_id },
    }
}

fn describe(key: OwnerKey) -> String {
    match key {
        OwnerKey::Vnic(vnic_id, _) => format!("vNIC {vnic_id}"),
        OwnerKey::DhcpPort(host_id, subnet_id) => format!("the DHCP server of host {host_id} in subnet {subnet_id}"),
    }
}

fn conflict(key: OwnerKey, held: &Holding, asked: &str) -> Rejection {
    conflict_of(&describe(key), std::slice::from_ref(held), asked)
}

/// `vnic_conflict` for a vNIC that holds `held` (one address per family).
fn vnic_conflict(vnic_id: VnicId, held: &[Holding], asked: &str) -> Rejection {
    conflict_of(&format!("vNIC {vnic_id}"), held, asked)
}

fn conflict_of(who: &str, held: &[Holding], asked: &str) -> Rejection {
    let holdings: Vec<String> =
        held.iter().map(|held| format!("{} (MAC {}) in subnet {}", held.ip, held.mac, held.subnet_id)).collect();
    let message =
        format!("{who} already holds {} and asked for {asked}; send a down event first", holdings.join(" and "));
    Rejection::new(RejectionCode::VnicConflict, message)
}

/// An allocator's snapshot: MessagePack with field names (`rmp_serde::to_vec_named`; the optional
/// fields are left out when empty, which needs names), ids, MACs and times in their binary forms.
/// It had been JSON, which a restore of a million reservations spent about 1.1 s parsing (`ipam
/// bench --recovery`); a JSON snapshot, written before, still restores.
#[derive(Serialize, Deserialize)]
struct AllocatorSnapshot {
    networks: Vec<NetworkSnapshot>,
}

impl AllocatorSnapshot {
    fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("an allocator snapshot holds nothing MessagePack cannot encode")
    }

    fn decode(bytes: &[u8]) -> Result<AllocatorSnapshot, SnapshotError> {
        // A MessagePack snapshot starts with a map's marker, never with `{`.
        if bytes.first() == Some(&b'{') {
            return Ok(serde_json::from_slice(bytes)?);
        }
        rmp_serde::from_slice(bytes).map_err(|error| SnapshotError::Unreadable(error.to_string()))
    }
}

/// What an allocator's snapshot holds, as JSON (ids, MACs and addresses as the contract writes
/// them): for people and tests to read.
pub fn snapshot_as_json(bytes: &[u8]) -> Result<serde_json::Value, SnapshotError> {
    Ok(serde_json::to_value(AllocatorSnapshot::decode(bytes)?)?)
}

#[derive(Serialize, Deserialize)]
struct NetworkSnapshot {
    network_id: NetworkId,
    settings: Option<NetworkSettings>,
    subnets: Vec<SubnetSnapshot>,
    reservations: Vec<ReservationSnapshot>,
    /// Oldest first. Absent from snapshots written before the window existed: those restore with
    /// an empty window (a retry of an input before the snapshot is then applied again, as it was
    /// by the version that wrote it).
    #[serde(default)]
    recent_inputs: RecentInputs,
    /// The following fields came with issue 14; older snapshots restore without them (the
    /// default policy, no time, nothing withheld), as the version that wrote them ran.
    #[serde(default, skip_serializing_if = "is_default_policy")]
    policy: NetworkPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    now: Option<Timestamp>,
    /// Oldest release first is not promised: ordered by subnet and address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    quarantine: Vec<QuarantineSnapshot>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    conflicts: Vec<ConflictSnapshot>,
    /// The lease watch's own part (the reservations say the rest).
    #[serde(default, skip_serializing_if = "LeaseWatchSnapshot::is_empty")]
    lease_watch: LeaseWatchSnapshot,
}

fn is_default_policy(policy: &NetworkPolicy) -> bool {
    *policy == NetworkPolicy::default()
}

fn is_false(value: &bool) -> bool {
    !*value
}

#[derive(Serialize, Deserialize)]
struct QuarantineSnapshot {
    subnet_id: SubnetId,
    ip: IpAddr,
    mac: Mac,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    released_at: Option<Timestamp>,
}

#[derive(Serialize, Deserialize)]
struct ConflictSnapshot {
    subnet_id: SubnetId,
    ip: IpAddr,
    answered_by: Mac,
}

#[derive(Serialize, Deserialize)]
struct SubnetSnapshot {
    subnet_id: SubnetId,
    spec: SubnetSpec,
    next_candidate: IpAddr,
}

#[derive(Serialize, Deserialize)]
struct ReservationSnapshot {
    subnet_id: SubnetId,
    owner: Owner,
    mac: Mac,
    ip: IpAddr,
    /// A fixed IP the owner asked for (absent: allocated, as every reservation of an older
    /// snapshot is taken to be).
    #[serde(default, skip_serializing_if = "is_false")]
    fixed: bool,
}

/// The allocators of every network one process owns (one partition's worth, or all of them),
/// routing each input to its network's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocator {
    networks: BTreeMap<NetworkId, NetworkAllocator>,
    /// The window size of the network machines this allocator creates.
    input_window: usize,
}

impl Default for Allocator {
    fn default() -> Allocator {
        Allocator { networks: BTreeMap::new(), input_window: INPUT_WINDOW }
    }
}

impl Allocator {
    pub fn new() -> Allocator {
        Allocator::default()
    }

    /// An allocator whose network machines remember only `input_window` input ids, for tests that
    /// watch ids being forgotten. A restored allocator always has [`INPUT_WINDOW`].
    pub fn with_input_window(input_window: usize) -> Allocator {
        Allocator { networks: BTreeMap::new(), input_window }
    }

    /// [`Allocator::apply`], with what placement must hear of the input ([`placement_facts`]):
    /// the runtime appends those to `ipam.hosts` in the same step. A retry (an id the network's
    /// window holds) has no effect and so nothing to tell: forwarding it again would write an
    /// output id twice, so this, not `placement_facts` alone, is what a runtime should call.
    pub fn apply_forwarding(&mut self, input: &Envelope) -> (Vec<Event>, Vec<Event>) {
        if self.is_retry(input) {
            return (Vec::new(), Vec::new());
        }
        let outputs = self.apply(input);
        let facts = placement_facts(&input.event, &outputs);
        (outputs, facts)
    }

    /// Records the id of a request refused before it could be applied (a readable engine request
    /// with a bad field, answered by `DecodeError::rejection`) in its network's window, and answers
    /// whether it is new. The rejection should be written only if it is: a retried bad request
    /// would otherwise be answered twice under one output id. The window is state, so a runtime
    /// that calls this live must call it on replay too.
    pub fn record_refused(&mut self, network_id: NetworkId, input_id: EventId) -> bool {
        let input_window = self.input_window;
        self.networks
            .entry(network_id)
            .or_insert_with(|| NetworkAllocator::with_input_window(network_id, input_window))
            .recent_inputs
            .record(input_id)
    }

    /// Whether `input`'s id is among the last its network applied, so that applying it would do
    /// nothing.
    pub fn is_retry(&self, input: &Envelope) -> bool {
        input
            .event
            .network_id()
            .and_then(|network_id| self.networks.get(&network_id))
            .is_some_and(|network| network.recent_inputs.contains(input.id))
    }

    pub fn network(&self, network_id: NetworkId) -> Option<&NetworkAllocator> {
        self.networks.get(&network_id)
    }

    /// Whether the two hold the same networks, subnets, pools and reservations, whatever input ids
    /// they remember: what a refused input must leave as it was (invariant 7), since it does
    /// enter its network's window (and may leave a machine that holds nothing else).
    pub fn same_state_but_inputs(&self, other: &Allocator) -> bool {
        fn held(allocator: &Allocator) -> Vec<&NetworkAllocator> {
            allocator.networks.values().filter(|network| !network.is_empty()).collect()
        }
        let (mine, theirs) = (held(self), held(other));
        mine.len() == theirs.len()
            && mine.iter().zip(&theirs).all(|(a, b)| {
                a.network_id == b.network_id
                    && a.settings == b.settings
                    && a.subnets == b.subnets
                    && a.holdings == b.holdings
                    && a.macs == b.macs
                    && a.policy == b.policy
                    && a.now == b.now
                    && a.quarantine == b.quarantine
                    && a.quarantined_by_mac == b.quarantined_by_mac
                    && a.conflicts == b.conflicts
            })
    }

    pub fn networks(&self) -> impl Iterator<Item = &NetworkAllocator> {
        self.networks.values()
    }

    /// One allocator per network, for a runtime that gives each network its own actor.
    pub fn split(self) -> Vec<Allocator> {
        let input_window = self.input_window;
        self.networks
            .into_iter()
            .map(|(network_id, allocator)| Allocator {
                networks: BTreeMap::from([(network_id, allocator)]),
                input_window,
            })
            .collect()
    }

    /// The union of allocators of distinct networks (the inverse of [`Allocator::split`]); a network
    /// found twice keeps its last copy. The window size is the first part's.
    pub fn merge(parts: impl IntoIterator<Item = Allocator>) -> Allocator {
        let mut merged: Option<Allocator> = None;
        for part in parts {
            match &mut merged {
                None => merged = Some(part),
                Some(merged) => merged.networks.extend(part.networks),
            }
        }
        merged.unwrap_or_default()
    }
}

impl StateMachine for Allocator {
    type Config = ();
    /// The outputs, in order.
    type Decision = Vec<Event>;

    /// Applies one input to its network's allocator. Events about no network yield nothing and
    /// leave no trace.
    ///
    /// A network's machine is kept once it has seen an input, even one refused with
    /// `unknown_network`, and after the network's removal: it holds the window of input ids that
    /// recognises a retry.
    ///
    /// A partition tick goes to every network this allocator holds, in network order (a runtime
    /// that holds one partition's networks per allocator gives each its own partition's ticks).
    fn apply(&mut self, input: &Envelope) -> Vec<Event> {
        if let Event::PartitionClockTicked(_) = &input.event {
            return self.networks.values_mut().flat_map(|network| network.apply(input)).collect();
        }
        let Some(network_id) = input.event.network_id() else { return Vec::new() };
        let input_window = self.input_window;
        self.networks
            .entry(network_id)
            .or_insert_with(|| NetworkAllocator::with_input_window(network_id, input_window))
            .apply(input)
    }

    fn snapshot(&self) -> Vec<u8> {
        AllocatorSnapshot { networks: self.networks.values().map(NetworkAllocator::to_snapshot).collect() }.encode()
    }

    fn restore(_: &(), bytes: &[u8]) -> Result<Allocator, SnapshotError> {
        let snapshot = AllocatorSnapshot::decode(bytes)?;
        let mut networks = BTreeMap::new();
        for network in snapshot.networks {
            let network_id = network.network_id;
            networks.insert(network_id, NetworkAllocator::from_snapshot(network)?);
        }
        Ok(Allocator { networks, input_window: INPUT_WINDOW })
    }

    fn check(&self) -> Result<(), InvariantViolation> {
        self.networks.values().try_for_each(NetworkAllocator::check)
    }
}

/// What placement must hear of an allocator step: the network-level requests the allocator accepted
/// (IPAM enabled, servers count, removal) and the subnets it activated or deactivated.
///
/// Placement reads one single-partition topic (`ipam.hosts`), so that its inputs have one total
/// order that a replay sees again; the allocator's runtime forwards these facts there, in the same
/// atomic step as the allocator's own outputs. It cannot tell a retry (no outputs, like an accepted
/// network upsert) from a first application: see [`Allocator::apply_forwarding`].
pub fn placement_facts(input: &Event, outputs: &[Event]) -> Vec<Event> {
    let rejected = outputs.iter().any(|output| matches!(output, Event::RequestRejected(_)));
    let forwarded_input = match input {
        Event::NetworkUpserted(_) | Event::NetworkRemoved(_) if !rejected => Some(input.clone()),
        _ => None,
    };
    forwarded_input
        .into_iter()
        .chain(
            outputs
                .iter()
                .filter(|output| matches!(output, Event::SubnetActivated(_) | Event::SubnetDeactivated(_)))
                .cloned(),
        )
        .collect()
}

#[cfg(test)]
#[path = "allocator_tests.rs"]
mod tests;
