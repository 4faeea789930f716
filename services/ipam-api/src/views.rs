//! What the API answers, as types: the pages of the lists, the views of networks, hosts, vNICs
//! and histories, and the filters and cursors of the lists. The read model (`model.rs`) builds
//! them; the OpenAPI document's answer schemas are generated from them (schemars), so the two
//! cannot drift apart.

use std::net::IpAddr;

use ipam_core::event::{AssignReason, HostNetwork, HostStatus, Owner, ReleaseReason};
use ipam_core::{Cidr, EventId, HostId, InterfaceName, IpRange, Mac, NetworkId, SubnetId, Timestamp, VmId, VnicId};
use schemars::JsonSchema;
use serde::Serialize;

use crate::model::{Rejection, ServerStatus, VnicRelease, VnicReservation};
use ipam_core::event::DhcpServerState;

/// A page of items and the key of its last item when more follow.
pub type Page<T, K> = (Vec<T>, Option<K>);

/// The cursor after a reservation: `subnet_id/ip`.
pub fn reservation_cursor(subnet_id: SubnetId, ip: IpAddr) -> String {
    format!("{subnet_id}/{ip}")
}

/// Reads a cursor made by [`reservation_cursor`].
pub fn parse_reservation_cursor(text: &str) -> Option<(SubnetId, IpAddr)> {
    let (subnet, ip) = text.split_once('/')?;
    Some((subnet.parse().ok()?, ip.parse().ok()?))
}

/// What `GET /v1/vnics` filters on; every given filter must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VnicFilter {
    pub network: Option<NetworkId>,
    pub subnet: Option<SubnetId>,
    /// vNICs on networks this host serves.
    pub host: Option<HostId>,
    pub vm: Option<VmId>,
    pub mac: Option<Mac>,
    pub ip: Option<IpAddr>,
}

/// A page of `GET /v1/networks`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NetworkList {
    pub networks: Vec<NetworkSummary>,
    /// The cursor of the next page; null on the last.
    pub next: Option<String>,
}

/// A page of `GET /v1/networks/{id}/reservations`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReservationPage {
    pub network_id: NetworkId,
    pub reservations: Vec<ReservationView>,
    /// The cursor of the next page; null on the last.
    pub next: Option<String>,
}

/// A page of `GET /v1/hosts`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HostList {
    pub hosts: Vec<HostView>,
    /// The cursor of the next page; null on the last.
    pub next: Option<String>,
}

/// A page of `GET /v1/vnics`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VnicList {
    pub vnics: Vec<VnicView>,
    /// The cursor of the next page; null on the last.
    pub next: Option<String>,
}

/// The answer of the history endpoints: what was asked about (`ip`, `vnic_id` or `mac`), the
/// instant asked for, and the holdings, oldest first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct History {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vnic_id: Option<VnicId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// The `at` asked for; null for the whole history.
    pub at: Option<Timestamp>,
    pub history: Vec<HistoryView>,
}

/// A host named beside its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct HostRef {
    pub host_id: HostId,
    /// Null when the engine never told the host's name.
    pub name: Option<String>,
}

/// A network in `GET /v1/networks`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NetworkSummary {
    pub network_id: NetworkId,
    pub name: Option<String>,
    pub ipam_enabled: Option<bool>,
    pub subnets: usize,
    pub reservations: usize,
    pub servers: Vec<HostRef>,
}

/// A network in `GET /v1/networks/{id}`. `name` and `ipam_enabled` are null when the network is
/// known only from its subnets, servers or rejections (say, a request for a removed network).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NetworkView {
    pub network_id: NetworkId,
    pub name: Option<String>,
    pub ipam_enabled: Option<bool>,
    pub servers_count: Option<u8>,
    pub subnets: Vec<SubnetView>,
    /// The first reservations (ordered by subnet and address); `reservations_next` is the cursor
    /// of the rest at `/v1/networks/{id}/reservations`, null when this is all of them.
    pub reservations: Vec<ReservationView>,
    pub reservations_next: Option<String>,
    pub servers: Vec<ServerView>,
    /// The most recent rejections, newest first.
    pub rejections: Vec<RejectionView>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SubnetView {
    pub subnet_id: SubnetId,
    pub cidr: Cidr,
    pub gateway: IpAddr,
    pub dns_servers: Vec<IpAddr>,
    pub ntp_servers: Vec<IpAddr>,
    pub allocation_pools: Vec<IpRange>,
    pub activated: Timestamp,
    /// Every reservation of the subnet: vNICs' and DHCP servers' own addresses.
    pub used: usize,
    /// The part of `used` the network's DHCP servers hold, one address per serving host.
    pub used_by_dhcp_servers: usize,
    /// The DHCP servers' own addresses in this subnet, by IP.
    pub dhcp_servers: Vec<ServerAddress>,
    pub size: u64,
    pub free: u64,
    pub free_saturated: bool,
    pub utilization: f64,
    /// The allocation rate over the last hour of the log and when the pools are full at it.
    pub forecast: crate::forecast::SubnetForecast,
}

/// A DHCP server's own address in a subnet.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ServerAddress {
    pub host_id: HostId,
    /// Null when the engine never told the host's name.
    pub name: Option<String>,
    pub ip: IpAddr,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReservationView {
    pub subnet_id: SubnetId,
    pub cidr: Option<Cidr>,
    pub ip: IpAddr,
    pub owner: Owner,
    pub mac: Mac,
    pub since: Timestamp,
    pub cause: EventId,
    /// A vNIC's reservation: reserved, served (a DHCP server holds its line) or leased (its guest
    /// holds the address), as in `GET /v1/vnics/{id}`; null for a DHCP server's own address.
    pub state: Option<crate::lease_state::VnicState>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ServerView {
    pub host_id: HostId,
    pub host_name: Option<String>,
    pub interface: InterfaceName,
    pub epoch: u64,
    pub reason: AssignReason,
    pub since: Timestamp,
    /// The host agent's last report for this epoch, if any.
    pub status: Option<DhcpServerState>,
    /// What that report says beside its state (what a degraded server cannot serve, and why).
    pub status_detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct RejectionView(pub(crate) Rejection);

/// A vNIC. A dual-stack vNIC holds two addresses, an IPv4 and an IPv6 one: `addresses` lists
/// every address with its own state; `reservation` and `progress` describe the first (IPv4
/// first), so that a single-stack caller reads them as before.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VnicView {
    pub vnic_id: VnicId,
    pub vm_id: VmId,
    /// The vNIC's first address (its only one when single-stack; IPv4 for a dual-stack vNIC);
    /// null without a reservation.
    pub reservation: Option<ReservationOf>,
    pub last_release: Option<ReleaseOf>,
    /// Where the reservation is: reserved, served (a DHCP server holds its line) or leased (a
    /// guest holds the address); for a dual-stack vNIC the least advanced of its addresses (leased
    /// when the guest holds both); null without a reservation.
    pub state: Option<crate::lease_state::VnicState>,
    /// The time of each step of the first address's reservation, and the guest's lease of it;
    /// null without a reservation.
    pub progress: Option<crate::lease_state::VnicProgress>,
    /// Every address the vNIC holds (one per family, IPv4 first), each with its state and
    /// progress; empty without a reservation.
    pub addresses: Vec<AddressView>,
}

/// One address of a vNIC: its reservation, where it is, and the time of each step.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AddressView {
    #[serde(flatten)]
    pub reservation: ReservationOf,
    pub state: Option<crate::lease_state::VnicState>,
    pub progress: Option<crate::lease_state::VnicProgress>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct ReservationOf(pub(crate) VnicReservation);

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct ReleaseOf(pub(crate) VnicRelease);

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HostView {
    pub host_id: HostId,
    pub name: Option<String>,
    pub status: Option<HostStatus>,
    pub networks: Vec<HostNetwork>,
    pub last_heartbeat: Option<Timestamp>,
    /// What the host said it serves in its last heartbeat.
    pub serving: Vec<ServedView>,
    /// What placement assigned it.
    pub assigned: Vec<ServedView>,
    pub server_statuses: Vec<ServerStatusView>,
}

/// A DHCP server of a network, by the epoch of its assignment, with the network's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ServedView {
    pub network_id: NetworkId,
    /// Null when the engine never named the network.
    pub network_name: Option<String>,
    pub epoch: u64,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ServerStatusView {
    pub(crate) network_id: NetworkId,
    #[serde(flatten)]
    pub(crate) status: ServerStatus,
}

/// One holding of an address: who (vNIC and VM, or a host's DHCP server), with which MAC, in
/// which subnet, from when to when (`to` null while it holds), and the hosts serving the network
/// when it was reserved.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HistoryView {
    pub ip: IpAddr,
    pub owner: Owner,
    pub vnic_id: Option<VnicId>,
    pub vm_id: Option<VmId>,
    /// The host whose DHCP server held the address.
    pub host_id: Option<HostId>,
    pub mac: Mac,
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
    pub cidr: Option<Cidr>,
    pub from: Timestamp,
    pub to: Option<Timestamp>,
    /// The input that reserved the address.
    pub cause: EventId,
    pub reason: Option<ReleaseReason>,
    /// The input that released it.
    pub released_by: Option<EventId>,
    pub served_by: Vec<HostRef>,
}
