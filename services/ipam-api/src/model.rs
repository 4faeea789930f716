//! The read model: what the API answers `GET` requests from, folded from the system's decisions
//! on the log (`ipam.reservations`, `ipam.dhcp-servers`, and `ipam.hosts` for the host inventory,
//! heartbeats, server statuses and the network facts the allocator forwards there).
//!
//! It is a pure fold with no I/O, so it is tested without a log or a thread: [`ReadModel::apply`]
//! takes one decoded event and the topic it came from, [`ReadModel::advance`] records how far each
//! partition was read. Every answer carries those positions, so a client knows which prefix of the
//! log it reflects (and, after a `POST`, whether its event has been seen yet).
//!
//! # Order across topics
//! Partitions are read round-robin, so events of different topics interleave in no fixed order. The
//! model therefore keeps each fact where its own topic puts it in order: a network's name and IPAM
//! flag come from `ipam.hosts` (one partition), its subnets and reservations from its
//! `ipam.reservations` partition, its servers from its `ipam.dhcp-servers` partition. Whatever the
//! interleaving, once every partition is read to the same point, the model is the same.
//!
//! # Bounds
//! History and rejections are bounded ([`HISTORY_KEPT`] entries per IP, [`REJECTIONS_KEPT`] per
//! network), so the model grows with the live state and the number of addresses and vNICs ever seen,
//! not with the length of the log.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;

use ipam_core::event::{AssignReason, DhcpServerState, HostNetwork, HostStatus, Owner, ReleaseReason, ServedNetwork};
use ipam_core::{Cidr, Envelope, Event, EventId, HostId, InterfaceName, IpRange, Mac, NetworkId, SubnetId, Topic};
use ipam_core::{IpFamily, RejectionCode, Timestamp, VmId, VnicId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::views::*;

/// Entries of history kept per IP address; the oldest go first.
pub const HISTORY_KEPT: usize = 256;
/// Rejections kept per network; the oldest go first.
pub const REJECTIONS_KEPT: usize = 20;
/// Decisions kept by the id of the input that caused them (for `POST /v1/events?wait=`); the
/// oldest go first. A client waits seconds for its answer, so this only has to outlast a burst.
pub const DECISIONS_KEPT: usize = 200_000;
/// The largest count written as a JSON number: 2^53 − 1, the largest integer every JSON reader
/// (JavaScript's included) holds exactly. IPv6 pools are far larger, so their `size` and `free`
/// saturate here; `free_saturated: true` says so.
pub const MAX_JSON_COUNT: u128 = (1 << 53) - 1;

/// Where the model is in one partition: the offset of the next record it will read.
pub type Positions = BTreeMap<String, u64>;

/// The key of a partition in [`Positions`]: `topic/partition`.
pub fn position_key(topic: &str, partition: u32) -> String {
    format!("{topic}/{partition}")
}

/// The network facts the allocator accepted and forwarded to `ipam.hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, Deserialize)]
struct NetworkInfo {
    name: String,
    ipam_enabled: bool,
    servers_count: Option<u8>,
    updated: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, Deserialize)]
struct Subnet {
    cidr: Cidr,
    gateway: IpAddr,
    dns_servers: Vec<IpAddr>,
    ntp_servers: Vec<IpAddr>,
    allocation_pools: Vec<IpRange>,
    activated: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    owner: Owner,
    mac: Mac,
    since: Timestamp,
    cause: EventId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Server {
    interface: InterfaceName,
    epoch: u64,
    reason: AssignReason,
    since: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, Deserialize)]
pub(crate) struct Rejection {
    request_type: String,
    code: RejectionCode,
    message: String,
    cause: EventId,
    time: Timestamp,
    /// What the refused request named (null in rejections written before IPAM recorded it).
    vnic_id: Option<VnicId>,
    mac: Option<Mac>,
    subnet_id: Option<SubnetId>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Network {
    info: Option<NetworkInfo>,
    subnets: BTreeMap<SubnetId, Subnet>,
    #[serde(deserialize_with = "crate::bulk::map")]
    reservations: BTreeMap<(SubnetId, IpAddr), Reservation>,
    servers: BTreeMap<HostId, Server>,
    rejections: VecDeque<Rejection>,
}

impl Network {
    /// Known only from rejections (say, of a vNIC on a network the engine never told about): such
    /// a network is not listed, lest an operator see a network that does not exist.
    fn is_phantom(&self) -> bool {
        self.info.is_none() && self.subnets.is_empty() && self.reservations.is_empty() && self.servers.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.info.is_none()
            && self.subnets.is_empty()
            && self.reservations.is_empty()
            && self.servers.is_empty()
            && self.rejections.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, Deserialize)]
pub(crate) struct VnicReservation {
    network_id: NetworkId,
    subnet_id: SubnetId,
    /// The subnet's CIDR when the address was reserved.
    cidr: Option<Cidr>,
    mac: Mac,
    ip: IpAddr,
    since: Timestamp,
    cause: EventId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, Deserialize)]
pub(crate) struct VnicRelease {
    network_id: NetworkId,
    subnet_id: SubnetId,
    ip: IpAddr,
    at: Timestamp,
    reason: ReleaseReason,
    cause: EventId,
}

#[cfg(test)]
impl VnicReservation {
    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Vnic {
    vm_id: VmId,
    /// One per family: a dual-stack vNIC holds an IPv4 and an IPv6 address.
    reservations: ByFamily<VnicReservation>,
    /// Boxed, as the slots of [`ByFamily`] are: a vNIC that never gave an address back holds none.
    last_release: Option<Box<VnicRelease>>,
}

/// At most one value per address family, in two slots of their own. A vNIC's reservations were a
/// map, and a map allocates a B-tree node of eleven entries (about 1.3 KB here) for its first one:
/// about 1.3 GB of the read model's memory with a million vNICs, and a fifth of the time a
/// restarted API took to read its snapshot (`ipam bench --recovery`, README).
///
/// The values are boxed: in place, a vNIC took 304 bytes in its map's node, most of them for the
/// family it does not hold and a release it never had, and a restart read every one into a
/// temporary list before building the map. Memory is most of a restart's time (the kernel clears
/// each fresh page), so a vNIC is now 40 bytes and a box of what it holds. A box reads and writes
/// as its value: the snapshot's form is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ByFamily<T> {
    ipv4: Option<Box<T>>,
    ipv6: Option<Box<T>>,
}

impl<T> Default for ByFamily<T> {
    fn default() -> Self {
        ByFamily { ipv4: None, ipv6: None }
    }
}

impl<T> ByFamily<T> {
    fn slot(&mut self, family: IpFamily) -> &mut Option<Box<T>> {
        match family {
            IpFamily::Ipv4 => &mut self.ipv4,
            IpFamily::Ipv6 => &mut self.ipv6,
        }
    }

    fn get(&self, family: IpFamily) -> Option<&T> {
        match family {
            IpFamily::Ipv4 => self.ipv4.as_deref(),
            IpFamily::Ipv6 => self.ipv6.as_deref(),
        }
    }

    fn insert(&mut self, family: IpFamily, value: T) {
        *self.slot(family) = Some(Box::new(value));
    }

    fn remove(&mut self, family: IpFamily) -> Option<T> {
        self.slot(family).take().map(|value| *value)
    }

    /// The values with their family, IPv4 first.
    fn iter(&self) -> impl Iterator<Item = (IpFamily, &T)> {
        let ipv4 = self.ipv4.as_deref().map(|value| (IpFamily::Ipv4, value));
        let ipv6 = self.ipv6.as_deref().map(|value| (IpFamily::Ipv6, value));
        ipv4.into_iter().chain(ipv6)
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.iter().map(|(_, value)| value)
    }
}

/// Addresses in order, each once: what a vNIC or a MAC ever held. Most hold one or two, for which
/// a set's B-tree node (eleven slots) cost ten times the memory.
type IpList = Vec<IpAddr>;

/// Adds `ip` to `list` unless it is there.
fn add_ip(list: &mut IpList, ip: IpAddr) {
    if let Err(at) = list.binary_search(&ip) {
        list.insert(at, ip);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, Deserialize)]
struct HostInfo {
    name: String,
    status: HostStatus,
    networks: Vec<HostNetwork>,
    updated: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, Deserialize)]
pub(crate) struct ServerStatus {
    epoch: u64,
    state: DhcpServerState,
    detail: String,
    time: Timestamp,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Host {
    info: Option<HostInfo>,
    last_heartbeat: Option<Timestamp>,
    serving: Vec<ServedNetwork>,
    statuses: BTreeMap<NetworkId, ServerStatus>,
}

/// One holder of an address, from its reservation to its release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, Deserialize)]
struct HistoryEntry {
    owner: Owner,
    mac: Mac,
    network_id: NetworkId,
    subnet_id: SubnetId,
    from: Timestamp,
    /// `None` while the reservation holds.
    to: Option<Timestamp>,
    /// The input that reserved the address.
    cause: EventId,
    reason: Option<ReleaseReason>,
    /// The input that released it.
    released_by: Option<EventId>,
    /// The subnet's CIDR when it was reserved.
    cidr: Option<Cidr>,
    /// The hosts placement had given a DHCP server of the network when it was reserved.
    served_by: Vec<HostId>,
}

/// What the system decided about one input, found by the input's id (the `cause` its outputs
/// name). A vNIC that moves is released and reserved under one cause: the reservation wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decided {
    /// The input got addresses (one, or one per family for a dual-stack vNIC, IPv4 first).
    Reserved { network_id: NetworkId, owner: Owner, mac: Mac, addresses: Vec<(SubnetId, IpAddr)> },
    /// The input gave addresses back (IPv4 first).
    Released { network_id: NetworkId, owner: Owner, mac: Mac, addresses: Vec<(SubnetId, IpAddr)> },
    /// The input was refused; the vNIC, MAC and subnet it named when the rejection says.
    Rejected {
        network_id: NetworkId,
        request_type: String,
        code: RejectionCode,
        message: String,
        vnic_id: Option<VnicId>,
        mac: Option<Mac>,
        subnet_id: Option<SubnetId>,
    },
}

/// The read model. See the module documentation.
///
/// Its serde form leaves out the vNICs' part (their reservations, the addresses each vNIC and MAC
/// held, their lease states): a snapshot writes that part apart ([`ReadModel::vnic_part`]), so
/// that the two halves are decoded on two threads.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ReadModel {
    /// Decisions by the id of their cause, and the causes in the order they were decided (for the
    /// bound [`DECISIONS_KEPT`]).
    #[serde(deserialize_with = "crate::bulk::map")]
    decisions: BTreeMap<EventId, Decided>,
    decided_order: VecDeque<EventId>,
    positions: Positions,
    networks: BTreeMap<NetworkId, Network>,
    #[serde(skip)]
    vnics: BTreeMap<VnicId, Vnic>,
    hosts: BTreeMap<HostId, Host>,
    /// Which networks each host is assigned a server for, and with which epoch.
    assignments: BTreeMap<HostId, BTreeMap<NetworkId, u64>>,
    /// Who held each address, ordered by the start of the holding, so that an as-of query is a
    /// binary search.
    #[serde(deserialize_with = "crate::bulk::map")]
    history: BTreeMap<IpAddr, VecDeque<HistoryEntry>>,
    /// The addresses each vNIC and each MAC ever held (their entries are in `history`).
    #[serde(skip)]
    vnic_ips: BTreeMap<VnicId, IpList>,
    #[serde(skip)]
    mac_ips: BTreeMap<Mac, IpList>,
    processed: u64,
    caught_up: bool,
    /// Each vNIC's way from reserved to served to leased (issue 14).
    #[serde(skip)]
    lease_states: crate::lease_state::LeaseStates,
    /// Each subnet's allocation rate and forecast.
    forecasts: crate::forecast::Forecasts,
}

/// The vNICs' part of a [`ReadModel`], as a snapshot writes it: about half of the model.
#[derive(Serialize)]
pub(crate) struct VnicPartRef<'a> {
    vnics: &'a BTreeMap<VnicId, Vnic>,
    vnic_ips: &'a BTreeMap<VnicId, IpList>,
    mac_ips: &'a BTreeMap<Mac, IpList>,
    lease_states: &'a crate::lease_state::LeaseStates,
}

/// [`VnicPartRef`] read back.
#[derive(Deserialize)]
pub(crate) struct VnicPart {
    #[serde(deserialize_with = "crate::bulk::map")]
    vnics: BTreeMap<VnicId, Vnic>,
    #[serde(deserialize_with = "crate::bulk::map")]
    vnic_ips: BTreeMap<VnicId, IpList>,
    #[serde(deserialize_with = "crate::bulk::map")]
    mac_ips: BTreeMap<Mac, IpList>,
    lease_states: crate::lease_state::LeaseStates,
}

impl ReadModel {
    pub fn new() -> ReadModel {
        ReadModel::default()
    }

    /// The part of the model its serde form leaves out.
    pub(crate) fn vnic_part(&self) -> VnicPartRef<'_> {
        VnicPartRef {
            vnics: &self.vnics,
            vnic_ips: &self.vnic_ips,
            mac_ips: &self.mac_ips,
            lease_states: &self.lease_states,
        }
    }

    /// The model read from its serde form, whole again with its vNICs' part.
    pub(crate) fn with_vnic_part(self, part: VnicPart) -> ReadModel {
        let VnicPart { vnics, vnic_ips, mac_ips, lease_states } = part;
        ReadModel { vnics, vnic_ips, mac_ips, lease_states, ..self }
    }

    /// Records that the partition was read up to, not including, `next_offset`.
    pub fn advance(&mut self, topic: &str, partition: u32, next_offset: u64) {
        let position = self.positions.entry(position_key(topic, partition)).or_insert(0);
        *position = (*position).max(next_offset);
    }

    pub fn positions(&self) -> &Positions {
        &self.positions
    }

    /// Events folded in since the start (ignored ones and exact duplicates not counted).
    pub fn processed(&self) -> u64 {
        self.processed
    }

    /// Whether every partition was read up to the end it had when the follower started.
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    pub fn set_caught_up(&mut self) {
        self.caught_up = true;
    }

    /// A model read from a snapshot: it has to catch up with the log again.
    pub(crate) fn restored(&mut self) {
        self.caught_up = false;
    }

    /// Folds one event read from `topic` into the model. Events that say nothing the model keeps
    /// (ticks, engine requests) are ignored.
    pub fn apply(&mut self, topic: Topic, envelope: &Envelope) {
        self.apply_at(topic, None, envelope);
    }

    /// [`ReadModel::apply`], knowing the record's offset in its partition (what a vNIC's
    /// reservation needs to be known served by a DHCP server's synced mark).
    pub fn apply_at(&mut self, topic: Topic, offset: Option<u64>, envelope: &Envelope) {
        let time = envelope.time;
        if self.lease_fact(topic, envelope) {
            self.processed += 1;
            return;
        }
        match (&envelope.event, topic) {
            // Network facts come from `ipam.hosts`, where the allocator forwards only accepted ones.
            (Event::NetworkUpserted(e), Topic::Hosts) => {
                self.networks.entry(e.network_id).or_default().info = Some(NetworkInfo {
                    name: e.name.clone(),
                    ipam_enabled: e.ipam_enabled,
                    servers_count: e.servers_count,
                    updated: time,
                });
            }
            (Event::NetworkRemoved(e), Topic::Hosts) => {
                self.edit_network(e.network_id, |network| network.info = None);
            }
            // Subnet facts come from `ipam.reservations`; the copies forwarded to placement on
            // `ipam.hosts` would only repeat them out of order.
            (Event::SubnetActivated(e), Topic::Reservations) => {
                let subnet = Subnet {
                    cidr: e.cidr,
                    gateway: e.gateway,
                    dns_servers: e.dns_servers.clone(),
                    ntp_servers: e.ntp_servers.clone(),
                    allocation_pools: e.allocation_pools.clone(),
                    activated: time,
                };
                self.networks.entry(e.network_id).or_default().subnets.insert(e.subnet_id, subnet);
            }
            (Event::SubnetDeactivated(e), Topic::Reservations) => {
                self.forecasts.removed(e.network_id, e.subnet_id);
                // Its reservations leave through their own `reservation.removed` events.
                self.edit_network(e.network_id, |network| {
                    network.subnets.remove(&e.subnet_id);
                });
            }
            (Event::ReservationAdded(e), Topic::Reservations) => {
                let reservation = Reservation { owner: e.owner, mac: e.mac, since: time, cause: e.cause };
                let network = self.networks.entry(e.network_id).or_default();
                if network.reservations.get(&(e.subnet_id, e.ip)) == Some(&reservation) {
                    return; // The same decision seen twice (an at-least-once reader): nothing new.
                }
                network.reservations.insert((e.subnet_id, e.ip), reservation);
                let cidr = network.subnets.get(&e.subnet_id).map(|subnet| subnet.cidr);
                let current_servers: Vec<(HostId, u64)> =
                    network.servers.iter().map(|(host_id, server)| (*host_id, server.epoch)).collect();
                self.forecasts.changed(e.network_id, e.subnet_id, time, 1);
                if let Owner::Vnic { vnic_id, .. } = e.owner {
                    let key = (vnic_id, IpFamily::of(e.ip));
                    self.lease_states.reserved(key, e.network_id, offset, time, &current_servers);
                }
                let served_by: Vec<HostId> = network.servers.keys().copied().collect();
                self.decide(
                    e.cause,
                    Decided::Reserved {
                        network_id: e.network_id,
                        owner: e.owner,
                        mac: e.mac,
                        addresses: vec![(e.subnet_id, e.ip)],
                    },
                );
                if let Owner::Vnic { vnic_id, vm_id } = e.owner {
                    let vnic = self.vnics.entry(vnic_id).or_insert(Vnic {
                        vm_id,
                        reservations: ByFamily::default(),
                        last_release: None,
                    });
                    vnic.vm_id = vm_id;
                    vnic.reservations.insert(
                        IpFamily::of(e.ip),
                        VnicReservation {
                            network_id: e.network_id,
                            subnet_id: e.subnet_id,
                            cidr,
                            mac: e.mac,
                            ip: e.ip,
                            since: time,
                            cause: e.cause,
                        },
                    );
                }
                if let Owner::Vnic { vnic_id, .. } = e.owner {
                    add_ip(self.vnic_ips.entry(vnic_id).or_default(), e.ip);
                }
                add_ip(self.mac_ips.entry(e.mac).or_default(), e.ip);
                // Most addresses keep one or two holders: room for one at first, not a vector's four.
                let history = self.history.entry(e.ip).or_insert_with(|| VecDeque::with_capacity(1));
                // Kept in start order (usually the end); a binary search finds the place.
                let at = history.partition_point(|entry| entry.from <= time);
                history.insert(
                    at,
                    HistoryEntry {
                        owner: e.owner,
                        mac: e.mac,
                        network_id: e.network_id,
                        subnet_id: e.subnet_id,
                        from: time,
                        to: None,
                        cause: e.cause,
                        reason: None,
                        released_by: None,
                        cidr,
                        served_by,
                    },
                );
                while history.len() > HISTORY_KEPT {
                    history.pop_front();
                }
            }
            (Event::ReservationRemoved(e), Topic::Reservations) => {
                let held = self.networks.get(&e.network_id).and_then(|n| n.reservations.get(&(e.subnet_id, e.ip)));
                if held.is_some_and(|r| r.owner == e.owner) {
                    self.forecasts.changed(e.network_id, e.subnet_id, time, -1);
                }
                self.decide(
                    e.cause,
                    Decided::Released {
                        network_id: e.network_id,
                        owner: e.owner,
                        mac: e.mac,
                        addresses: vec![(e.subnet_id, e.ip)],
                    },
                );
                self.edit_network(e.network_id, |network| {
                    if network.reservations.get(&(e.subnet_id, e.ip)).is_some_and(|r| r.owner == e.owner) {
                        network.reservations.remove(&(e.subnet_id, e.ip));
                    }
                });
                let family = IpFamily::of(e.ip);
                if let Owner::Vnic { vnic_id, .. } = e.owner
                    && let Some(vnic) = self.vnics.get_mut(&vnic_id)
                    && vnic.reservations.get(family).is_some_and(|r| r.ip == e.ip && r.network_id == e.network_id)
                {
                    vnic.reservations.remove(family);
                    self.lease_states.released((vnic_id, family));
                    vnic.last_release = Some(Box::new(VnicRelease {
                        network_id: e.network_id,
                        subnet_id: e.subnet_id,
                        ip: e.ip,
                        at: time,
                        reason: e.reason,
                        cause: e.cause,
                    }));
                }
                let open = self.history.get_mut(&e.ip).and_then(|history| {
                    history.iter_mut().rev().find(|entry| {
                        entry.to.is_none()
                            && entry.owner == e.owner
                            && entry.network_id == e.network_id
                            && entry.subnet_id == e.subnet_id
                    })
                });
                if let Some(entry) = open {
                    entry.to = Some(time);
                    entry.reason = Some(e.reason);
                    entry.released_by = Some(e.cause);
                }
            }
            (Event::RequestRejected(e), Topic::Reservations) => {
                self.decide(
                    e.cause,
                    Decided::Rejected {
                        network_id: e.network_id,
                        request_type: e.request_type.clone(),
                        code: e.code,
                        message: e.message.clone(),
                        vnic_id: e.vnic_id,
                        mac: e.mac,
                        subnet_id: e.subnet_id,
                    },
                );
                let rejections = &mut self.networks.entry(e.network_id).or_default().rejections;
                rejections.push_back(Rejection {
                    request_type: e.request_type.clone(),
                    code: e.code,
                    message: e.message.clone(),
                    cause: e.cause,
                    time,
                    vnic_id: e.vnic_id,
                    mac: e.mac,
                    subnet_id: e.subnet_id,
                });
                while rejections.len() > REJECTIONS_KEPT {
                    rejections.pop_front();
                }
            }
            (Event::DhcpServerAssigned(e), Topic::DhcpServers) => {
                let server = Server { interface: e.interface.clone(), epoch: e.epoch, reason: e.reason, since: time };
                self.networks.entry(e.network_id).or_default().servers.insert(e.host_id, server);
                self.assignments.entry(e.host_id).or_default().insert(e.network_id, e.epoch);
            }
            (Event::DhcpServerUnassigned(e), Topic::DhcpServers) => {
                self.edit_network(e.network_id, |network| {
                    if network.servers.get(&e.host_id).is_some_and(|server| server.epoch <= e.epoch) {
                        network.servers.remove(&e.host_id);
                    }
                });
                if self.networks.get(&e.network_id).is_none_or(|network| !network.servers.contains_key(&e.host_id)) {
                    self.lease_states.unassigned(e.network_id, e.host_id);
                }
                if let Some(assigned) = self.assignments.get_mut(&e.host_id) {
                    if assigned.get(&e.network_id).is_some_and(|epoch| *epoch <= e.epoch) {
                        assigned.remove(&e.network_id);
                    }
                    if assigned.is_empty() {
                        self.assignments.remove(&e.host_id);
                    }
                }
            }
            (Event::HostUpserted(e), Topic::Hosts) => {
                self.hosts.entry(e.host_id).or_default().info = Some(HostInfo {
                    name: e.name.clone(),
                    status: e.status,
                    networks: e.networks.clone(),
                    updated: time,
                });
            }
            (Event::HostRemoved(e), Topic::Hosts) => {
                self.hosts.remove(&e.host_id);
            }
            (Event::HostHeartbeat(e), Topic::Hosts) => {
                let host = self.hosts.entry(e.host_id).or_default();
                if host.last_heartbeat.is_none_or(|last| last <= time) {
                    host.last_heartbeat = Some(time);
                    host.serving = e.serving.clone();
                }
            }
            (Event::DhcpServerStatus(e), Topic::Hosts) => {
                let status = ServerStatus { epoch: e.epoch, state: e.state, detail: e.detail.clone(), time };
                self.hosts.entry(e.host_id).or_default().statuses.insert(e.network_id, status);
            }
            // Not a fact the model keeps: not counted as processed.
            _ => return,
        }
        self.processed += 1;
    }

    /// Folds the facts of a vNIC's lease state and of the forecasts' clock (see `lease_state.rs`
    /// and `forecast.rs`); answers whether the event was one of them and was kept.
    fn lease_fact(&mut self, topic: Topic, envelope: &Envelope) -> bool {
        let time = envelope.time;
        match (&envelope.event, topic) {
            (Event::VnicLeaseChanged(e), Topic::Reservations) => self.lease_states.lease_changed(e, time),
            (Event::VnicUnleased(e), Topic::Reservations) => self.lease_states.unleased(e, time),
            (Event::LeaseConflict(e), Topic::Reservations) => self.lease_states.conflict(e.network_id, e.kind),
            (Event::DhcpServerSynced(e), Topic::Hosts) => {
                let current = self
                    .networks
                    .get(&e.network_id)
                    .and_then(|network| network.servers.get(&e.host_id))
                    .is_some_and(|server| server.epoch == e.epoch);
                self.lease_states.synced(e.network_id, e.host_id, e.epoch, e.reservations_offset, time, current);
            }
            (Event::ClockTicked(_), Topic::Hosts) => {
                // Not a fact the model keeps: only the forecasts' clock moves.
                self.forecasts.saw(time);
                return false;
            }
            _ => return false,
        }
        true
    }

    /// A vNIC's way from reserved to served to leased in a family, while it holds a reservation
    /// of it.
    pub fn vnic_progress(&self, vnic_id: VnicId, family: IpFamily) -> Option<crate::lease_state::VnicProgress> {
        self.lease_states.progress((vnic_id, family))
    }

    /// The lease states, for the metrics.
    pub fn lease_states(&self) -> &crate::lease_state::LeaseStates {
        &self.lease_states
    }

    /// Remembers what `cause` decided; a release does not hide a reservation or rejection made
    /// under the same cause (a moved vNIC). The addresses one input reserves or releases for one
    /// owner (a dual-stack vNIC's two) are gathered into one decision.
    fn decide(&mut self, cause: EventId, decided: Decided) {
        match (self.decisions.get_mut(&cause), &decided) {
            (
                Some(Decided::Reserved { owner, addresses, .. }),
                Decided::Reserved { owner: same, addresses: more, .. },
            )
            | (
                Some(Decided::Released { owner, addresses, .. }),
                Decided::Released { owner: same, addresses: more, .. },
            ) if owner == same => {
                for address in more {
                    if !addresses.contains(address) {
                        addresses.push(*address);
                    }
                }
                return;
            }
            _ => {}
        }
        match self.decisions.get(&cause) {
            None => {
                self.decisions.insert(cause, decided);
                self.decided_order.push_back(cause);
                while self.decided_order.len() > DECISIONS_KEPT {
                    if let Some(oldest) = self.decided_order.pop_front() {
                        self.decisions.remove(&oldest);
                    }
                }
            }
            Some(Decided::Released { .. }) => {
                self.decisions.insert(cause, decided);
            }
            Some(_) => {}
        }
    }

    /// The CIDR of a subnet the model knows.
    pub fn subnet_cidr(&self, network_id: NetworkId, subnet_id: SubnetId) -> Option<Cidr> {
        self.networks.get(&network_id)?.subnets.get(&subnet_id).map(|subnet| subnet.cidr)
    }

    /// A host's name, as the engine last gave it.
    pub fn host_name(&self, host_id: HostId) -> Option<String> {
        self.hosts.get(&host_id)?.info.as_ref().map(|info| info.name.clone())
    }

    /// The host agent's last report on its server of `network_id`, if it is of `epoch`.
    fn server_status(&self, host_id: HostId, network_id: NetworkId, epoch: u64) -> Option<&ServerStatus> {
        self.hosts.get(&host_id)?.statuses.get(&network_id).filter(|status| status.epoch == epoch)
    }

    /// The hosts placement assigned a DHCP server of the network, with their names.
    pub fn served_by(&self, network_id: NetworkId) -> Vec<HostRef> {
        self.networks
            .get(&network_id)
            .map(|network| {
                network
                    .servers
                    .keys()
                    .map(|host_id| HostRef { host_id: *host_id, name: self.host_name(*host_id) })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A vNIC's current reservations (one per family, IPv4 first): (network, subnet, MAC, IP).
    pub fn vnic_reservations(&self, vnic_id: VnicId) -> Vec<(NetworkId, SubnetId, Mac, IpAddr)> {
        let Some(vnic) = self.vnics.get(&vnic_id) else { return Vec::new() };
        vnic.reservations.values().map(|r| (r.network_id, r.subnet_id, r.mac, r.ip)).collect()
    }

    /// What the input `cause` decided, if the model has seen a decision of it.
    pub fn decided(&self, cause: EventId) -> Option<&Decided> {
        self.decisions.get(&cause)
    }

    /// Changes a network that exists, and forgets it once nothing is known about it any more.
    fn edit_network(&mut self, network_id: NetworkId, edit: impl FnOnce(&mut Network)) {
        if let Some(network) = self.networks.get_mut(&network_id) {
            edit(network);
            if network.is_empty() {
                self.networks.remove(&network_id);
            }
        }
    }

    /// A page of networks with their counts, ordered by id, from after `after`; phantom networks
    /// (known only from rejections) are left out. Answers the page and the key of its last item
    /// when more follow.
    pub fn networks_page(&self, after: Option<NetworkId>, limit: usize) -> (Vec<NetworkSummary>, Option<NetworkId>) {
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let items = self.networks.range((start, std::ops::Bound::Unbounded)).filter(|(_, n)| !n.is_phantom()).map(
            |(id, network)| {
                let summary = NetworkSummary {
                    network_id: *id,
                    name: network.info.as_ref().map(|info| info.name.clone()),
                    ipam_enabled: network.info.as_ref().map(|info| info.ipam_enabled),
                    subnets: network.subnets.len(),
                    reservations: network.reservations.len(),
                    servers: network
                        .servers
                        .keys()
                        .map(|host_id| HostRef { host_id: *host_id, name: self.host_name(*host_id) })
                        .collect(),
                };
                (*id, summary)
            },
        );
        crate::query::page(items, limit)
    }

    /// A page of a network's reservations, ordered by subnet and address, from after `after`.
    /// `None` when the network is unknown.
    pub fn reservations_page(
        &self,
        network_id: NetworkId,
        after: Option<(SubnetId, IpAddr)>,
        limit: usize,
    ) -> Option<Page<ReservationView, (SubnetId, IpAddr)>> {
        let network = self.networks.get(&network_id).filter(|network| !network.is_phantom())?;
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let items = network.reservations.range((start, std::ops::Bound::Unbounded)).map(|((subnet_id, ip), r)| {
            let view = ReservationView {
                subnet_id: *subnet_id,
                cidr: network.subnets.get(subnet_id).map(|subnet| subnet.cidr),
                ip: *ip,
                owner: r.owner,
                mac: r.mac,
                since: r.since,
                cause: r.cause,
                state: match r.owner {
                    Owner::Vnic { vnic_id, .. } => self.lease_states.state((vnic_id, IpFamily::of(*ip))),
                    Owner::DhcpServer { .. } => None,
                },
            };
            ((*subnet_id, *ip), view)
        });
        Some(crate::query::page(items, limit))
    }

    /// A page of hosts (told by the engine, heard from, or assigned a server), ordered by id.
    pub fn hosts_page(&self, after: Option<HostId>, limit: usize) -> (Vec<HostView>, Option<HostId>) {
        let ids: std::collections::BTreeSet<HostId> =
            self.hosts.keys().chain(self.assignments.keys()).copied().collect();
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let items = ids.range((start, std::ops::Bound::Unbounded)).filter_map(|id| self.host(*id).map(|v| (*id, v)));
        crate::query::page(items, limit)
    }

    /// A page of vNICs matching `filter`, ordered by id. The filters on the reservation (network,
    /// subnet, host, MAC, IP) match only vNICs that hold an address.
    pub fn vnics_page(
        &self,
        filter: &VnicFilter,
        after: Option<VnicId>,
        limit: usize,
    ) -> (Vec<VnicView>, Option<VnicId>) {
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let served: Option<Option<&BTreeMap<NetworkId, u64>>> = filter.host.map(|host| self.assignments.get(&host));
        let items = self
            .vnics
            .range((start, std::ops::Bound::Unbounded))
            .filter(|(_, vnic)| {
                if filter.vm.is_some_and(|vm| vm != vnic.vm_id) {
                    return false;
                }
                let wants_reservation = filter.network.is_some()
                    || filter.subnet.is_some()
                    || filter.host.is_some()
                    || filter.mac.is_some()
                    || filter.ip.is_some();
                if !wants_reservation {
                    return true;
                }
                // A dual-stack vNIC matches when one of its addresses does.
                vnic.reservations.values().any(|held| {
                    filter.network.is_none_or(|n| n == held.network_id)
                        && filter.subnet.is_none_or(|s| s == held.subnet_id)
                        && filter.mac.is_none_or(|m| m == held.mac)
                        && filter.ip.is_none_or(|ip| ip == held.ip)
                        && served
                            .is_none_or(|served| served.is_some_and(|served| served.contains_key(&held.network_id)))
                })
            })
            .map(|(id, vnic)| (*id, self.vnic_view(*id, vnic)));
        crate::query::page(items, limit)
    }

    /// One network in full, if the model knows anything about it.
    pub fn network(&self, network_id: NetworkId) -> Option<NetworkView> {
        self.network_with(network_id, usize::MAX)
    }

    /// One network, with at most `limit` reservations and the cursor of the rest.
    pub fn network_with(&self, network_id: NetworkId, limit: usize) -> Option<NetworkView> {
        let network = self.networks.get(&network_id).filter(|network| !network.is_phantom())?;
        let subnets = self.subnet_views(network_id, network);
        let (reservations, next) = self.reservations_page(network_id, None, limit).unwrap_or_default();
        let servers = network
            .servers
            .iter()
            .map(|(host_id, server)| ServerView {
                host_id: *host_id,
                host_name: self.host_name(*host_id),
                interface: server.interface.clone(),
                epoch: server.epoch,
                reason: server.reason,
                since: server.since,
                status: self.server_status(*host_id, network_id, server.epoch).map(|status| status.state),
                status_detail: self
                    .server_status(*host_id, network_id, server.epoch)
                    .map(|status| status.detail.clone())
                    .filter(|detail| !detail.is_empty()),
            })
            .collect();
        let info = network.info.as_ref();
        Some(NetworkView {
            network_id,
            name: info.map(|info| info.name.clone()),
            ipam_enabled: info.map(|info| info.ipam_enabled),
            servers_count: info.and_then(|info| info.servers_count),
            subnets,
            reservations,
            reservations_next: next.map(|(subnet_id, ip)| reservation_cursor(subnet_id, ip)),
            servers,
            rejections: network.rejections.iter().rev().cloned().map(RejectionView).collect(),
        })
    }

    /// A network's subnets with their counts, DHCP servers' ports and forecasts (without its
    /// reservations: the metrics read these for every network at every scrape, and building every
    /// reservation's view for them cost a scrape the whole model, under its lock).
    fn subnet_views(&self, network_id: NetworkId, network: &Network) -> Vec<SubnetView> {
        network
            .subnets
            .iter()
            .map(|(subnet_id, subnet)| {
                let reserved: Vec<IpAddr> = network
                    .reservations
                    .range((*subnet_id, IpAddr::from([0; 4]))..)
                    .take_while(|((s, _), _)| s == subnet_id)
                    .map(|((_, ip), _)| *ip)
                    .collect();
                let counts = SubnetCounts::of(subnet, &reserved);
                let dhcp_servers: Vec<ServerAddress> = network
                    .reservations
                    .range((*subnet_id, IpAddr::from([0; 4]))..)
                    .take_while(|((s, _), _)| s == subnet_id)
                    .filter_map(|((_, ip), held)| match held.owner {
                        Owner::DhcpServer { host_id } => {
                            Some(ServerAddress { host_id, name: self.host_name(host_id), ip: *ip })
                        }
                        Owner::Vnic { .. } => None,
                    })
                    .collect();
                SubnetView {
                    subnet_id: *subnet_id,
                    cidr: subnet.cidr,
                    gateway: subnet.gateway,
                    dns_servers: subnet.dns_servers.clone(),
                    ntp_servers: subnet.ntp_servers.clone(),
                    allocation_pools: subnet.allocation_pools.clone(),
                    activated: subnet.activated,
                    used: counts.used,
                    used_by_dhcp_servers: dhcp_servers.len(),
                    dhcp_servers,
                    size: json_count(counts.size),
                    free: json_count(counts.free),
                    free_saturated: counts.free > MAX_JSON_COUNT,
                    utilization: counts.utilization(),
                    forecast: self.forecasts.forecast(network_id, *subnet_id, subnet.activated, counts.free),
                }
            })
            .collect()
    }

    /// A vNIC the model saw hold an address: its current reservation, if any, and its last release.
    pub fn vnic(&self, vnic_id: VnicId) -> Option<VnicView> {
        self.vnics.get(&vnic_id).map(|vnic| self.vnic_view(vnic_id, vnic))
    }

    /// The view of a vNIC: every address it holds with its own state and progress, and the
    /// single-stack fields (`reservation`, `state`, `progress`) of its first address, IPv4 first,
    /// but for `state`, which is the least advanced of its addresses' (a dual-stack vNIC is leased
    /// when both are).
    fn vnic_view(&self, vnic_id: VnicId, vnic: &Vnic) -> VnicView {
        let addresses: Vec<AddressView> = vnic
            .reservations
            .iter()
            .map(|(family, reservation)| {
                let progress = self.lease_states.progress((vnic_id, family));
                AddressView {
                    reservation: ReservationOf(reservation.clone()),
                    state: progress.as_ref().map(|progress| progress.state),
                    progress,
                }
            })
            .collect();
        let first = addresses.first();
        VnicView {
            vnic_id,
            vm_id: vnic.vm_id,
            reservation: first.map(|address| address.reservation.clone()),
            last_release: vnic.last_release.as_deref().cloned().map(ReleaseOf),
            state: addresses.iter().filter_map(|address| address.state).min(),
            progress: first.and_then(|address| address.progress.clone()),
            addresses,
        }
    }

    /// A host the engine told about, that sent a heartbeat, or that placement assigned a server.
    pub fn host(&self, host_id: HostId) -> Option<HostView> {
        let host = self.hosts.get(&host_id);
        let assigned = self.assignments.get(&host_id);
        if host.is_none() && assigned.is_none() {
            return None;
        }
        let info = host.and_then(|host| host.info.as_ref());
        Some(HostView {
            host_id,
            name: info.map(|info| info.name.clone()),
            status: info.map(|info| info.status),
            networks: info.map(|info| info.networks.clone()).unwrap_or_default(),
            last_heartbeat: host.and_then(|host| host.last_heartbeat),
            serving: host
                .map(|host| host.serving.iter().map(|served| self.served(served.network_id, served.epoch)).collect())
                .unwrap_or_default(),
            assigned: assigned
                .map(|assigned| assigned.iter().map(|(network_id, epoch)| self.served(*network_id, *epoch)).collect())
                .unwrap_or_default(),
            server_statuses: host
                .map(|host| {
                    host.statuses
                        .iter()
                        .map(|(network_id, status)| ServerStatusView {
                            network_id: *network_id,
                            status: status.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// A network's name, as the engine last gave it.
    pub fn network_name(&self, network_id: NetworkId) -> Option<String> {
        self.networks.get(&network_id)?.info.as_ref().map(|info| info.name.clone())
    }

    fn served(&self, network_id: NetworkId, epoch: u64) -> ServedView {
        ServedView { network_id, network_name: self.network_name(network_id), epoch }
    }

    /// Who held `ip`, oldest first, across every network (networks may reuse address space); with
    /// `at`, only who held it at that instant (a holding covers `from <= at < to`).
    pub fn ip_history(&self, ip: IpAddr, at: Option<Timestamp>) -> Option<Vec<HistoryView>> {
        let history = self.history.get(&ip)?;
        Some(self.held(ip, history, at, |_| true))
    }

    /// The holdings of `ip` kept in `history` that match `keep`, oldest first, those at `at` only
    /// when given. The entries are ordered by start: a binary search drops those that start after
    /// `at`, and only the (at most [`HISTORY_KEPT`]) earlier ones are looked at.
    fn held(
        &self,
        ip: IpAddr,
        history: &VecDeque<HistoryEntry>,
        at: Option<Timestamp>,
        keep: impl Fn(&HistoryEntry) -> bool,
    ) -> Vec<HistoryView> {
        let started = match at {
            Some(at) => history.partition_point(|entry| entry.from <= at),
            None => history.len(),
        };
        history
            .range(..started)
            .filter(|entry| at.is_none_or(|at| entry.to.is_none_or(|to| to > at)))
            .filter(|entry| keep(entry))
            .map(|entry| self.history_view(ip, entry))
            .collect()
    }

    fn history_view(&self, ip: IpAddr, entry: &HistoryEntry) -> HistoryView {
        let (vnic_id, vm_id, host_id) = match entry.owner {
            Owner::Vnic { vnic_id, vm_id } => (Some(vnic_id), Some(vm_id), None),
            Owner::DhcpServer { host_id } => (None, None, Some(host_id)),
        };
        HistoryView {
            ip,
            owner: entry.owner,
            vnic_id,
            vm_id,
            host_id,
            mac: entry.mac,
            network_id: entry.network_id,
            subnet_id: entry.subnet_id,
            cidr: entry.cidr,
            from: entry.from,
            to: entry.to,
            cause: entry.cause,
            reason: entry.reason,
            released_by: entry.released_by,
            served_by: entry
                .served_by
                .iter()
                .map(|host_id| HostRef { host_id: *host_id, name: self.host_name(*host_id) })
                .collect(),
        }
    }

    /// Every address a vNIC held (as far as the per-address history keeps), oldest first; with
    /// `at`, what it held then.
    pub fn vnic_history(&self, vnic_id: VnicId, at: Option<Timestamp>) -> Option<Vec<HistoryView>> {
        let ips = self.vnic_ips.get(&vnic_id)?;
        let owned = |entry: &HistoryEntry| matches!(entry.owner, Owner::Vnic { vnic_id: v, .. } if v == vnic_id);
        Some(self.gather(ips, at, owned))
    }

    /// Every address a MAC held, oldest first; with `at`, what it held then.
    pub fn mac_history(&self, mac: Mac, at: Option<Timestamp>) -> Option<Vec<HistoryView>> {
        let ips = self.mac_ips.get(&mac)?;
        Some(self.gather(ips, at, |entry| entry.mac == mac))
    }

    fn gather(&self, ips: &[IpAddr], at: Option<Timestamp>, keep: impl Fn(&HistoryEntry) -> bool) -> Vec<HistoryView> {
        let mut views: Vec<HistoryView> = ips
            .iter()
            .filter_map(|ip| self.history.get(ip).map(|history| self.held(*ip, history, at, &keep)))
            .flatten()
            .collect();
        views.sort_by_key(|view| (view.from, view.ip));
        views
    }

    /// Every subnet's view with its network, for the metrics (a scrape reads the utilizations and
    /// the forecasts from one pass over the subnets and their reservations).
    pub fn subnets(&self) -> Vec<(NetworkId, SubnetView)> {
        let shown = self.networks.iter().filter(|(_, network)| !network.is_phantom());
        shown
            .flat_map(|(network_id, network)| {
                self.subnet_views(*network_id, network).into_iter().map(|view| (*network_id, view))
            })
            .collect()
    }

    /// The number of reservations of each network, for the metrics.
    pub fn reservation_counts(&self) -> Vec<(NetworkId, usize)> {
        self.networks.iter().map(|(id, network)| (*id, network.reservations.len())).collect()
    }

    /// The name of each network that has one, for the metrics' labels.
    pub fn network_names(&self) -> Vec<(NetworkId, String)> {
        let named = self.networks.iter().filter_map(|(id, network)| network.info.as_ref().map(|info| (id, info)));
        named.map(|(id, info)| (*id, info.name.clone())).collect()
    }
}

/// A count as a JSON number, saturated at [`MAX_JSON_COUNT`].
fn json_count(count: u128) -> u64 {
    count.min(MAX_JSON_COUNT) as u64
}

fn to_number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// How full a subnet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetCounts {
    /// Every reservation, fixed IPs outside the pools and DHCP servers' ports included.
    pub used: usize,
    /// Addresses the pools offer for dynamic allocation: their sizes less the network, IPv4
    /// broadcast and gateway addresses where a pool holds them.
    pub size: u128,
    /// `size` less the reservations inside the pools: what dynamic allocation can still hand out.
    pub free: u128,
}

impl SubnetCounts {
    fn of(subnet: &Subnet, reserved: &[IpAddr]) -> SubnetCounts {
        let cidr = subnet.cidr;
        let in_pools = |ip: IpAddr| subnet.allocation_pools.iter().any(|pool| pool.contains(ip));
        let mut size: u128 = 0;
        for pool in &subnet.allocation_pools {
            // A /0 IPv6 pool would hold 2^128 addresses; saturating keeps the count meaningful.
            let count = (to_number(pool.end).saturating_sub(to_number(pool.start))).saturating_add(1);
            size = size.saturating_add(count);
        }
        let mut unassignable = vec![cidr.network(), subnet.gateway];
        if cidr.is_ipv4() {
            unassignable.push(cidr.last());
        }
        unassignable.sort();
        unassignable.dedup();
        let blocked = unassignable.iter().filter(|ip| in_pools(**ip)).count() as u128;
        let size = size.saturating_sub(blocked);
        let used_in_pools = reserved.iter().filter(|ip| in_pools(**ip)).count() as u128;
        SubnetCounts { used: reserved.len(), size, free: size.saturating_sub(used_in_pools) }
    }

    /// The share of the subnet in use: `used / (used + free)`, 0 for an empty subnet.
    pub fn utilization(&self) -> f64 {
        let total = self.used as f64 + self.free as f64;
        if total == 0.0 { 0.0 } else { self.used as f64 / total }
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
