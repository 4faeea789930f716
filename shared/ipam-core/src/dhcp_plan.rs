//! The DHCP configuration a host should run, decided from the events its agent reads.
//!
//! A host agent runs one DHCP server per network that placement assigns to it, answering only the
//! MACs that hold a reservation (restricted mode). Which servers to run, with which options and
//! which hosts, is a decision, so it lives here in the pure core rather than in the agent:
//! [`HostDhcpView`] folds the agent's inputs (`ipam.dhcp-servers` and `ipam.reservations`) into
//! ordered state, [`plan`] turns that state into the desired configuration as data (rendering a
//! dnsmasq file is the backend's job), and [`port_requests`] / [`port_releases`] say which DHCP-port
//! addresses the host must ask the allocator for or give back. The view keeps the reservations of
//! every network, served or not, so a server that starts on this host has every reservation at
//! once, without anyone asking again; and because the view is rebuilt by replay (or snapshot plus
//! tail), a restarted agent plans exactly what the live one did.
//!
//! Each input answers what it changed in the plan ([`PlanChange`]): a client that came or went, or
//! a server to plan anew. A shell that holds the plan applies host changes to it
//! ([`NetworkDhcpConfig::apply_hosts`]) rather than planning and comparing the whole network, so
//! one VM start costs the same on a network of 65,000 hosts as on one of ten; only the rare
//! changes of a server itself (an assignment, a subnet's options, the server's own address) cost
//! the size of the network.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::event::{
    DHCP_PORT_REQUESTED_TYPE, DhcpPortReleased, DhcpPortRequested, DhcpServerAssigned, DhcpServerUnassigned,
    NetworkPolicyApplied, Owner, RequestRejected, ReservationAdded, ReservationRemoved, SubnetActivated,
    SubnetDeactivated,
};
use crate::ids::{HostId, NetworkId, SubnetId};
use crate::mac::Mac;
use crate::machine::{InvariantViolation, SnapshotError, StateMachine, ensure};
use crate::net::{Cidr, InterfaceName};
use crate::{Envelope, Event};

/// The lease time handed to clients when the configuration does not say otherwise (one hour).
pub const DEFAULT_LEASE_SECS: u32 = 3600;

/// The version written into every snapshot; a snapshot of another version is refused, and the
/// shell rebuilds the view by replaying the log instead.
const SNAPSHOT_VERSION: u32 = 1;

/// What one host agent knows: its own DHCP server assignments, and the active subnets and
/// reservations of every network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDhcpView {
    host_id: HostId,
    /// This host's assignments by network. An unassigned network keeps its entry (not serving) so
    /// that a replayed or late assignment of the same or an older epoch cannot bring it back.
    assignments: BTreeMap<NetworkId, Assignment>,
    /// Every network that has an active subnet or a reservation; empty entries are removed, so equal
    /// knowledge is equal state (and equal snapshot bytes), whatever history led to it.
    networks: BTreeMap<NetworkId, NetworkView>,
    /// Why the allocator refused this host's server its own address in a subnet, until it grants
    /// one or the subnet goes away: the server reports it rather than `running`.
    refused_ports: BTreeMap<(NetworkId, SubnetId), String>,
    /// The networks whose effective policy turns conflict probing off (the default is on), from
    /// the allocator's latest `NetworkPolicyApplied` of each: only exceptions are kept, so a
    /// network back at the default leaves no trace.
    probe_off: BTreeSet<NetworkId>,
    /// This host's own DHCP-port reservations by subnet, derived from `networks` and kept in step
    /// with it (so not in the snapshot): the server's address and the ports to give back are found
    /// without scanning a subnet's reservations, which every VM start would otherwise pay for.
    own_ports: BTreeMap<(NetworkId, SubnetId), BTreeSet<(IpAddr, Mac)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Assignment {
    epoch: u64,
    interface: InterfaceName,
    serving: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NetworkView {
    subnets: BTreeMap<SubnetId, SubnetOptions>,
    /// Kept apart from `subnets`: a reservation is held even if its subnet is not (yet) active.
    /// Keyed by IP then MAC, which is the order the plan lists hosts in.
    reservations: BTreeMap<SubnetId, BTreeMap<(IpAddr, Mac), Owner>>,
}

impl NetworkView {
    fn is_empty(&self) -> bool {
        self.subnets.is_empty() && self.reservations.is_empty()
    }
}

/// A subnet's DHCP options as its latest `SubnetActivated` gave them. Allocation pools are left
/// out: in restricted mode the server hands out reserved addresses only.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SubnetOptions {
    cidr: Cidr,
    gateway: IpAddr,
    dns_servers: Vec<IpAddr>,
    ntp_servers: Vec<IpAddr>,
}

impl HostDhcpView {
    /// The view of a host that has seen no event yet.
    pub fn new(host_id: HostId) -> HostDhcpView {
        HostDhcpView {
            host_id,
            assignments: BTreeMap::new(),
            networks: BTreeMap::new(),
            refused_ports: BTreeMap::new(),
            probe_off: BTreeSet::new(),
            own_ports: BTreeMap::new(),
        }
    }

    pub fn host_id(&self) -> HostId {
        self.host_id
    }

    /// Placement's epochs only grow per network, so an assignment older than the one held is a
    /// stale duplicate. An equal epoch refreshes a live assignment (a redelivery) but cannot revive
    /// one that was unassigned: that epoch is over.
    fn assign(&mut self, event: &DhcpServerAssigned) {
        if event.host_id != self.host_id {
            return;
        }
        let fresh = match self.assignments.get(&event.network_id) {
            None => true,
            Some(current) => event.epoch > current.epoch || (event.epoch == current.epoch && current.serving),
        };
        if fresh {
            let assignment = Assignment { epoch: event.epoch, interface: event.interface.clone(), serving: true };
            self.assignments.insert(event.network_id, assignment);
        }
    }

    /// Only the epoch being served can be ended: an unassignment of another epoch is about a server
    /// this host no longer (or never) ran under that epoch.
    fn unassign(&mut self, event: &DhcpServerUnassigned) {
        if event.host_id != self.host_id {
            return;
        }
        if let Some(current) = self.assignments.get_mut(&event.network_id)
            && current.epoch == event.epoch
        {
            current.serving = false;
        }
    }

    fn activate(&mut self, event: &SubnetActivated) {
        let options = SubnetOptions {
            cidr: event.cidr,
            gateway: event.gateway,
            dns_servers: event.dns_servers.clone(),
            ntp_servers: event.ntp_servers.clone(),
        };
        self.networks.entry(event.network_id).or_default().subnets.insert(event.subnet_id, options);
    }

    /// A deactivated subnet holds no addresses: the allocator refuses to remove a subnet that vNICs
    /// use and releases its DHCP ports with it. Its reservations are dropped here as well, so the
    /// view cannot keep a leftover that a later removal event would never clear.
    fn deactivate(&mut self, event: &SubnetDeactivated) {
        self.refused_ports.remove(&(event.network_id, event.subnet_id));
        self.own_ports.remove(&(event.network_id, event.subnet_id));
        if let Some(network) = self.networks.get_mut(&event.network_id) {
            network.subnets.remove(&event.subnet_id);
            network.reservations.remove(&event.subnet_id);
            if network.is_empty() {
                self.networks.remove(&event.network_id);
            }
        }
    }

    fn reserve(&mut self, event: &ReservationAdded) {
        if event.owner == self.own_port() {
            self.refused_ports.remove(&(event.network_id, event.subnet_id));
        }
        let network = self.networks.entry(event.network_id).or_default();
        network.reservations.entry(event.subnet_id).or_default().insert((event.ip, event.mac), event.owner);
        self.index_own_port(event.network_id, event.subnet_id, (event.ip, event.mac));
    }

    /// Keeps [`HostDhcpView::own_ports`] in step for one reservation key after it changed.
    fn index_own_port(&mut self, network_id: NetworkId, subnet_id: SubnetId, key: (IpAddr, Mac)) {
        let own = self.holder(network_id, subnet_id, key.0, key.1) == Some(self.own_port());
        if own {
            self.own_ports.entry((network_id, subnet_id)).or_default().insert(key);
        } else if let Some(ports) = self.own_ports.get_mut(&(network_id, subnet_id)) {
            ports.remove(&key);
            if ports.is_empty() {
                self.own_ports.remove(&(network_id, subnet_id));
            }
        }
    }

    /// Removes the reservation only if it is the one held (same IP, MAC and owner), so a removal
    /// that does not match what the log added cannot take away someone else's address.
    fn release(&mut self, event: &ReservationRemoved) {
        let Some(network) = self.networks.get_mut(&event.network_id) else { return };
        if let Some(subnet) = network.reservations.get_mut(&event.subnet_id) {
            let key = (event.ip, event.mac);
            if subnet.get(&key) == Some(&event.owner) {
                subnet.remove(&key);
            }
            if subnet.is_empty() {
                network.reservations.remove(&event.subnet_id);
            }
        }
        if network.is_empty() {
            self.networks.remove(&event.network_id);
        }
        self.index_own_port(event.network_id, event.subnet_id, (event.ip, event.mac));
    }

    /// A refused request for this host's own address in a subnet is remembered until the address is
    /// granted; any other rejection is not this view's business.
    fn refused(&mut self, event: &RequestRejected) -> Option<NetworkId> {
        let subnet_id = event.subnet_id?;
        if event.host_id != Some(self.host_id) || event.request_type != DHCP_PORT_REQUESTED_TYPE {
            return None;
        }
        let why = format!("{}: {}", event.code.as_str(), event.message);
        self.refused_ports.insert((event.network_id, subnet_id), why);
        Some(event.network_id)
    }

    /// The policy's `conflict_probe` (absent: on) decides whether this host's agent probes the
    /// network's newly reserved addresses before serving them.
    fn set_policy(&mut self, event: &NetworkPolicyApplied) {
        if event.policy.conflict_probe.unwrap_or(true) {
            self.probe_off.remove(&event.network_id);
        } else {
            self.probe_off.insert(event.network_id);
        }
    }

    /// The networks this host serves now, with their assignment.
    fn served(&self) -> impl Iterator<Item = (NetworkId, &Assignment)> {
        self.assignments.iter().filter(|(_, assignment)| assignment.serving).map(|(&id, assignment)| (id, assignment))
    }

    fn own_port(&self) -> Owner {
        Owner::DhcpServer { host_id: self.host_id }
    }

    /// This host's DHCP-port address in a subnet: the lowest, should the allocator ever grant two.
    fn own_port_in(&self, network_id: NetworkId, subnet_id: SubnetId) -> Option<(IpAddr, Mac)> {
        self.own_ports.get(&(network_id, subnet_id))?.first().copied()
    }

    /// [`HostDhcpView::own_ports`] as the reservations say it should be.
    fn own_ports_of_reservations(&self) -> BTreeMap<(NetworkId, SubnetId), BTreeSet<(IpAddr, Mac)>> {
        let own = self.own_port();
        let mut ports: BTreeMap<(NetworkId, SubnetId), BTreeSet<(IpAddr, Mac)>> = BTreeMap::new();
        for (&network_id, network) in &self.networks {
            for (&subnet_id, held) in &network.reservations {
                for (&key, _) in held.iter().filter(|(_, owner)| **owner == own) {
                    ports.entry((network_id, subnet_id)).or_default().insert(key);
                }
            }
        }
        ports
    }
}

/// The stored form of a [`HostDhcpView`]: flat lists in key order, so the bytes are canonical.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    host_id: HostId,
    assignments: Vec<AssignmentRecord>,
    subnets: Vec<SubnetRecord>,
    reservations: Vec<ReservationRecord>,
    /// Absent from snapshots written before it existed (and when empty): they restore with none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    refused_ports: Vec<RefusedPortRecord>,
    /// Networks whose policy turns conflict probing off; absent from older snapshots (none was).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    probe_off: Vec<NetworkId>,
}

#[derive(Serialize, Deserialize)]
struct RefusedPortRecord {
    network_id: NetworkId,
    subnet_id: SubnetId,
    why: String,
}

/// Read first, so a snapshot of another version is reported as such rather than as malformed.
#[derive(Deserialize)]
struct SnapshotHeader {
    version: u32,
}

#[derive(Serialize, Deserialize)]
struct AssignmentRecord {
    network_id: NetworkId,
    epoch: u64,
    interface: InterfaceName,
    serving: bool,
}

#[derive(Serialize, Deserialize)]
struct SubnetRecord {
    network_id: NetworkId,
    subnet_id: SubnetId,
    cidr: Cidr,
    gateway: IpAddr,
    dns_servers: Vec<IpAddr>,
    ntp_servers: Vec<IpAddr>,
}

#[derive(Serialize, Deserialize)]
struct ReservationRecord {
    network_id: NetworkId,
    subnet_id: SubnetId,
    ip: IpAddr,
    mac: Mac,
    owner: Owner,
}

impl HostDhcpView {
    /// The owner of the reservation of `ip` by `mac` in a subnet, if the view holds one.
    fn holder(&self, network_id: NetworkId, subnet_id: SubnetId, ip: IpAddr, mac: Mac) -> Option<Owner> {
        self.networks.get(&network_id)?.reservations.get(&subnet_id)?.get(&(ip, mac)).copied()
    }

    /// What a reservation event of `owner` did to the plan, given who held the address before: a
    /// server change when this host's own DHCP port is involved (its address is the server's, and
    /// a grant ends a refusal), a host change when a vNIC became or stopped being a client of a
    /// served network's active subnet, and nothing otherwise (another server's port, an unserved
    /// network, an inactive subnet, a repeated event).
    fn reservation_change(
        &self,
        (network_id, subnet_id, ip, mac): (NetworkId, SubnetId, IpAddr, Mac),
        owner: Owner,
        before: Option<Owner>,
    ) -> Option<PlanChange> {
        let after = self.holder(network_id, subnet_id, ip, mac);
        let own = self.own_port();
        if owner == own || before == Some(own) || after == Some(own) {
            return Some(PlanChange::Server(network_id));
        }
        let served = self.assignments.get(&network_id).is_some_and(|assignment| assignment.serving);
        let active = self.networks.get(&network_id).is_some_and(|network| network.subnets.contains_key(&subnet_id));
        let client = |owner: Option<Owner>| matches!(owner, Some(Owner::Vnic { .. }));
        let served_now = client(after);
        (served && active && client(before) != served_now).then_some(PlanChange::Host(HostChange {
            network_id,
            subnet_id,
            host: DhcpHost { mac, ip },
            served: served_now,
        }))
    }
}

impl StateMachine for HostDhcpView {
    type Config = ();
    /// What the input changed in this host's plan (see [`PlanChange`]); `None` when it changed
    /// nothing of it.
    type Decision = Option<PlanChange>;

    /// Folds one input into the view. Events a host agent does not act on are ignored, so the shell
    /// may feed it whole topics.
    fn apply(&mut self, input: &Envelope) -> Option<PlanChange> {
        match &input.event {
            Event::DhcpServerAssigned(event) => {
                self.assign(event);
                (event.host_id == self.host_id).then_some(PlanChange::Server(event.network_id))
            }
            Event::DhcpServerUnassigned(event) => {
                self.unassign(event);
                (event.host_id == self.host_id).then_some(PlanChange::Server(event.network_id))
            }
            Event::SubnetActivated(event) => {
                self.activate(event);
                Some(PlanChange::Server(event.network_id))
            }
            Event::SubnetDeactivated(event) => {
                self.deactivate(event);
                Some(PlanChange::Server(event.network_id))
            }
            Event::ReservationAdded(event) => {
                let key = (event.network_id, event.subnet_id, event.ip, event.mac);
                let before = self.holder(key.0, key.1, key.2, key.3);
                self.reserve(event);
                self.reservation_change(key, event.owner, before)
            }
            Event::ReservationRemoved(event) => {
                let key = (event.network_id, event.subnet_id, event.ip, event.mac);
                let before = self.holder(key.0, key.1, key.2, key.3);
                self.release(event);
                self.reservation_change(key, event.owner, before)
            }
            Event::RequestRejected(event) => self.refused(event).map(PlanChange::Server),
            Event::NetworkPolicyApplied(event) => {
                self.set_policy(event);
                Some(PlanChange::Server(event.network_id))
            }
            // Requests, inventory and status change nothing here by themselves: their effects reach
            // the host as the allocator's and placement's decisions above (a removed network, for
            // one, arrives as subnet deactivations, reservation removals and an unassignment).
            // Listed one by one so that a new event type is a compile error until someone decides.
            Event::NetworkUpserted(_)
            | Event::NetworkRemoved(_)
            | Event::SubnetAdded(_)
            | Event::SubnetRemoved(_)
            | Event::VnicStarted(_)
            | Event::VnicPlugged(_)
            | Event::VnicLinked(_)
            | Event::VnicStopped(_)
            | Event::VnicUnplugged(_)
            | Event::VnicUnlinked(_)
            | Event::DhcpPortRequested(_)
            | Event::DhcpPortReleased(_)
            | Event::HostUpserted(_)
            | Event::HostRemoved(_)
            | Event::HostHeartbeat(_)
            | Event::DhcpServerStatus(_)
            | Event::ClockTicked(_)
            // Observations and policy (issue 14) reach the agent's own watchers, not its plan.
            | Event::LeaseGranted(_)
            | Event::LeaseRenewed(_)
            | Event::LeaseReleased(_)
            | Event::LeaseExpired(_)
            | Event::IpConflictDetected(_)
            | Event::IpConflictCleared(_)
            | Event::NetworkPolicySet(_)
            | Event::PartitionClockTicked(_)
            | Event::DhcpServerSynced(_)
            | Event::VnicUnleased(_)
            | Event::LeaseConflict(_)
            | Event::VnicLeaseChanged(_)
            | Event::SubnetUtilizationCrossed(_) => None,
        }
    }

    /// The whole view in a canonical form: equal views give equal bytes, whatever history built them.
    fn snapshot(&self) -> Vec<u8> {
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            host_id: self.host_id,
            assignments: self
                .assignments
                .iter()
                .map(|(&network_id, assignment)| AssignmentRecord {
                    network_id,
                    epoch: assignment.epoch,
                    interface: assignment.interface.clone(),
                    serving: assignment.serving,
                })
                .collect(),
            subnets: self
                .networks
                .iter()
                .flat_map(|(&network_id, network)| {
                    network.subnets.iter().map(move |(&subnet_id, options)| SubnetRecord {
                        network_id,
                        subnet_id,
                        cidr: options.cidr,
                        gateway: options.gateway,
                        dns_servers: options.dns_servers.clone(),
                        ntp_servers: options.ntp_servers.clone(),
                    })
                })
                .collect(),
            reservations: self
                .networks
                .iter()
                .flat_map(|(&network_id, network)| {
                    network.reservations.iter().flat_map(move |(&subnet_id, held)| {
                        held.iter().map(move |(&(ip, mac), &owner)| ReservationRecord {
                            network_id,
                            subnet_id,
                            ip,
                            mac,
                            owner,
                        })
                    })
                })
                .collect(),
            refused_ports: self
                .refused_ports
                .iter()
                .map(|(&(network_id, subnet_id), why)| RefusedPortRecord { network_id, subnet_id, why: why.clone() })
                .collect(),
            probe_off: self.probe_off.iter().copied().collect(),
        };
        serde_json::to_vec(&snapshot).expect("a snapshot has string keys only, so it always serializes")
    }

    /// The view a [`snapshot`](HostDhcpView::snapshot) was taken of. On an error the shell should
    /// rebuild the view by replaying its topics from the start.
    fn restore(_: &(), bytes: &[u8]) -> Result<HostDhcpView, SnapshotError> {
        let header: SnapshotHeader = serde_json::from_slice(bytes)?;
        if header.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version { found: header.version, expected: SNAPSHOT_VERSION });
        }
        let snapshot: Snapshot = serde_json::from_slice(bytes)?;
        let mut view = HostDhcpView::new(snapshot.host_id);
        for record in snapshot.assignments {
            let assignment = Assignment { epoch: record.epoch, interface: record.interface, serving: record.serving };
            if view.assignments.insert(record.network_id, assignment).is_some() {
                return Err(SnapshotError::Inconsistent(format!("network {} is assigned twice", record.network_id)));
            }
        }
        for record in snapshot.subnets {
            let network = view.networks.entry(record.network_id).or_default();
            let options = SubnetOptions {
                cidr: record.cidr,
                gateway: record.gateway,
                dns_servers: record.dns_servers,
                ntp_servers: record.ntp_servers,
            };
            if network.subnets.insert(record.subnet_id, options).is_some() {
                return Err(SnapshotError::Inconsistent(format!("subnet {} appears twice", record.subnet_id)));
            }
        }
        for record in snapshot.reservations {
            let network = view.networks.entry(record.network_id).or_default();
            let held = network.reservations.entry(record.subnet_id).or_default();
            if held.insert((record.ip, record.mac), record.owner).is_some() {
                let what = format!("the reservation of {} by {} in subnet {}", record.ip, record.mac, record.subnet_id);
                return Err(SnapshotError::Inconsistent(format!("{what} appears twice")));
            }
        }
        for record in snapshot.refused_ports {
            if view.refused_ports.insert((record.network_id, record.subnet_id), record.why).is_some() {
                return Err(SnapshotError::Inconsistent(format!(
                    "the refusal in subnet {} appears twice",
                    record.subnet_id
                )));
            }
        }
        for network_id in snapshot.probe_off {
            if !view.probe_off.insert(network_id) {
                return Err(SnapshotError::Inconsistent(format!("network {network_id} has probing off twice")));
            }
        }
        view.own_ports = view.own_ports_of_reservations();
        Ok(view)
    }

    /// Equal knowledge is equal state: no network entry and no subnet's reservations are kept
    /// empty; and the index of this host's own ports is what the reservations say. (That an
    /// address is held once per subnet is the allocator's invariant, a property of the view's
    /// inputs rather than of the view.)
    fn check(&self) -> Result<(), InvariantViolation> {
        for (network_id, network) in &self.networks {
            ensure(!network.is_empty(), || format!("network {network_id} is kept with nothing in it"))?;
            for (subnet_id, held) in &network.reservations {
                ensure(!held.is_empty(), || format!("subnet {subnet_id} keeps an empty reservation list"))?;
            }
        }
        let indexed = self.own_ports_of_reservations();
        ensure(self.own_ports == indexed, || {
            format!("the index of own ports {:?} is not the reservations' {indexed:?}", self.own_ports)
        })
    }
}

/// Settings of the plan that come from the agent's configuration rather than from events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    pub lease_secs: u32,
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions { lease_secs: DEFAULT_LEASE_SECS }
    }
}

/// What one input changed in its host's plan: the decision of [`HostDhcpView::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanChange {
    /// A network's server as a whole may have changed: whether this host serves it, under which
    /// epoch, on which interface, with which subnets and options, its own address, its probing
    /// policy, or the hosts of a subnet that came or went. Plan it anew ([`plan_network`]).
    Server(NetworkId),
    /// One client of a server this host runs came or went; nothing else of the server changed.
    Host(HostChange),
}

impl PlanChange {
    /// The network whose server changed.
    pub fn network_id(&self) -> NetworkId {
        match self {
            PlanChange::Server(network_id) => *network_id,
            PlanChange::Host(change) => change.network_id,
        }
    }
}

/// One client of a served network: in `subnet_id`, `host` is answered now (`served`), or no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostChange {
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
    pub host: DhcpHost,
    pub served: bool,
}

impl HostChange {
    /// The host's place in its subnet's list: the plan sorts hosts by IP, then MAC.
    pub fn key(&self) -> (SubnetId, IpAddr, Mac) {
        (self.subnet_id, self.host.ip, self.host.mac)
    }
}

/// Every DHCP server a host should run, and exactly what each should answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DhcpPlan {
    pub host_id: HostId,
    /// Sorted by network id.
    pub networks: Vec<NetworkDhcpConfig>,
}

/// One DHCP server: a network this host serves, under the epoch of its assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkDhcpConfig {
    pub network_id: NetworkId,
    pub epoch: u64,
    /// Where the server listens: the interface the host attaches the network through.
    pub interface: InterfaceName,
    /// The network's active subnets, sorted by subnet id; empty while none is active.
    pub subnets: Vec<SubnetDhcpConfig>,
    /// Whether the agent probes a newly reserved address (ARP, or IPv6 duplicate address
    /// detection) before serving it: the network's policy, on unless an operator turned it off.
    pub conflict_probe: bool,
}

/// Beyond this many changes to one subnet at once, [`NetworkDhcpConfig::apply_hosts`] merges them
/// into the host list in one pass instead of inserting each on its own (each insertion moves the
/// hosts after it).
const MERGE_CHANGES: usize = 32;

impl NetworkDhcpConfig {
    /// Whether [`NetworkDhcpConfig::apply_hosts`] takes `change` in: a host of this network in a
    /// subnet this configuration holds. Others are ignored, by it and by whatever keeps a copy of
    /// its hosts.
    pub fn concerns(&self, change: &HostChange) -> bool {
        change.network_id == self.network_id
            && self.subnets.binary_search_by_key(&change.subnet_id, |subnet| subnet.subnet_id).is_ok()
    }

    /// Applies host changes the view yielded for this network, in their order (a later change of a
    /// host wins); changes of other networks, or of a subnet the configuration lacks, are ignored.
    /// Costs a binary search per change, or one pass over a subnet's hosts for a large batch.
    pub fn apply_hosts(&mut self, changes: &[HostChange]) {
        let mut by_subnet: BTreeMap<SubnetId, BTreeMap<(IpAddr, Mac), bool>> = BTreeMap::new();
        for change in changes.iter().filter(|change| self.concerns(change)) {
            by_subnet.entry(change.subnet_id).or_default().insert((change.host.ip, change.host.mac), change.served);
        }
        for (subnet_id, changes) in by_subnet {
            let Ok(index) = self.subnets.binary_search_by_key(&subnet_id, |subnet| subnet.subnet_id) else { continue };
            let hosts = &mut self.subnets[index].hosts;
            if changes.len() > MERGE_CHANGES {
                merge_hosts(hosts, &changes);
                continue;
            }
            for ((ip, mac), served) in changes {
                match (hosts.binary_search_by_key(&(ip, mac), |host| (host.ip, host.mac)), served) {
                    (Err(at), true) => hosts.insert(at, DhcpHost { mac, ip }),
                    (Ok(at), false) => {
                        hosts.remove(at);
                    }
                    _ => {}
                }
            }
        }
    }

    /// How many hosts the server answers, over all its subnets.
    pub fn host_count(&self) -> usize {
        self.subnets.iter().map(|subnet| subnet.hosts.len()).sum()
    }
}

/// `hosts` (sorted by IP, then MAC) with `changes` applied, in one merge.
fn merge_hosts(hosts: &mut Vec<DhcpHost>, changes: &BTreeMap<(IpAddr, Mac), bool>) {
    let old = std::mem::take(hosts);
    hosts.reserve(old.len() + changes.len());
    let mut changes = changes.iter().peekable();
    for host in old {
        let key = (host.ip, host.mac);
        while let Some((&change, &served)) = changes.peek().copied().filter(|(change, _)| **change < key) {
            if served {
                hosts.push(DhcpHost { ip: change.0, mac: change.1 });
            }
            changes.next();
        }
        match changes.peek().copied() {
            Some((&change, &served)) if change == key => {
                if served {
                    hosts.push(host);
                }
                changes.next();
            }
            _ => hosts.push(host),
        }
    }
    hosts.extend(changes.filter(|(_, served)| **served).map(|(&(ip, mac), _)| DhcpHost { mac, ip }));
}

/// What a server answers in one subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubnetDhcpConfig {
    pub subnet_id: SubnetId,
    pub cidr: Cidr,
    /// The subnet's gateway, given to clients as their router.
    pub router: IpAddr,
    pub dns_servers: Vec<IpAddr>,
    pub ntp_servers: Vec<IpAddr>,
    pub lease_secs: u32,
    /// This host's own DHCP-port address in the subnet; `None` until the allocator grants it.
    pub server_address: Option<IpAddr>,
    /// Why the allocator refused this host's server an address in the subnet (`code: message`),
    /// while it holds none: the server cannot serve the subnet, and reports so.
    pub server_address_refused: Option<String>,
    /// The vNIC reservations of the subnet, sorted by IP then MAC. DHCP ports (this host's or
    /// another server's) are not clients and are left out.
    pub hosts: Vec<DhcpHost>,
}

/// One reserved client: the server answers this MAC with this IP, and no other MAC at all. A
/// dual-stack vNIC is a host in its IPv4 subnet and another in its IPv6 subnet, with one MAC; a
/// backend that answers a MAC from one line (dnsmasq) joins them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DhcpHost {
    pub mac: Mac,
    pub ip: IpAddr,
}

/// The DHCP configuration `view`'s host should run now: one server per network it serves, with
/// every active subnet's options and reservations.
pub fn plan(view: &HostDhcpView, options: &PlanOptions) -> DhcpPlan {
    let networks = view.served().filter_map(|(network_id, _)| plan_network(view, network_id, options)).collect();
    DhcpPlan { host_id: view.host_id, networks }
}

/// The part of [`plan`] for one network: its server's configuration, or `None` when this host does
/// not serve it. A shell that knows which networks an input touched (what
/// [`HostDhcpView::apply`] answers) plans only those.
pub fn plan_network(view: &HostDhcpView, network_id: NetworkId, options: &PlanOptions) -> Option<NetworkDhcpConfig> {
    let assignment = view.assignments.get(&network_id).filter(|assignment| assignment.serving)?;
    let subnets = match view.networks.get(&network_id) {
        None => Vec::new(),
        Some(network) => network
            .subnets
            .iter()
            .map(|(&subnet_id, subnet)| SubnetDhcpConfig {
                subnet_id,
                cidr: subnet.cidr,
                router: subnet.gateway,
                dns_servers: subnet.dns_servers.clone(),
                ntp_servers: subnet.ntp_servers.clone(),
                lease_secs: options.lease_secs,
                server_address: view.own_port_in(network_id, subnet_id).map(|(ip, _)| ip),
                server_address_refused: view.refused_ports.get(&(network_id, subnet_id)).cloned(),
                hosts: network
                    .reservations
                    .get(&subnet_id)
                    .into_iter()
                    .flatten()
                    .filter(|(_, owner)| matches!(owner, Owner::Vnic { .. }))
                    .map(|(&(ip, mac), _)| DhcpHost { mac, ip })
                    .collect(),
            })
            .collect(),
    };
    Some(NetworkDhcpConfig {
        network_id,
        epoch: assignment.epoch,
        interface: assignment.interface.clone(),
        subnets,
        conflict_probe: !view.probe_off.contains(&network_id),
    })
}

/// The DHCP-port addresses this host still lacks: one request per active subnet of every network
/// it serves where it holds no DHCP-port reservation yet, ordered by network then subnet.
/// `port_mac` gives the MAC the server uses on a network; a network it gives no MAC for (the
/// interface is not up yet, say) is skipped until it does.
///
/// The answer depends only on the view, so it repeats until the allocator's reservation arrives. The
/// shell drops requests it already sent, and the allocator treats a repeated identical request (same
/// network, subnet, host and MAC) as a no-op: it re-announces nothing and reserves no second
/// address, so a request repeated after a crash is harmless.
pub fn port_requests(view: &HostDhcpView, port_mac: impl Fn(NetworkId) -> Option<Mac>) -> Vec<Event> {
    let mut requests = Vec::new();
    for (network_id, _) in view.served() {
        let Some(network) = view.networks.get(&network_id) else { continue };
        let missing: Vec<SubnetId> = network
            .subnets
            .keys()
            .copied()
            .filter(|&subnet_id| view.own_port_in(network_id, subnet_id).is_none())
            .collect();
        if missing.is_empty() {
            continue;
        }
        let Some(mac) = port_mac(network_id) else { continue };
        requests.extend(missing.into_iter().map(|subnet_id| {
            Event::DhcpPortRequested(DhcpPortRequested { network_id, subnet_id, host_id: view.host_id, mac })
        }));
    }
    requests
}

/// The DHCP-port addresses this host holds on networks it no longer serves, to be given back,
/// ordered by network, subnet, then IP. Like requests, they repeat until the allocator's
/// `ReservationRemoved` arrives; the shell drops the ones it already sent.
///
/// Costs the number of this host's own ports, whatever the size of the cluster (they are indexed).
pub fn port_releases(view: &HostDhcpView) -> Vec<Event> {
    let served = |network_id: &NetworkId| view.assignments.get(network_id).is_some_and(|a| a.serving);
    view.own_ports
        .iter()
        .filter(|((network_id, _), _)| !served(network_id))
        .flat_map(|(&(network_id, subnet_id), ports)| {
            ports.iter().map(move |&(_, mac)| {
                Event::DhcpPortReleased(DhcpPortReleased { network_id, subnet_id, host_id: view.host_id, mac })
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "dhcp_plan_tests.rs"]
mod tests;
