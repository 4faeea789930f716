//! The event contract: every message IPAM reads or writes, in a CloudEvents 1.0 envelope.
//!
//! Each event type is one Rust struct, named once in the [`events!`] table below together with its
//! wire name (`ipam.<entity>.<verb>.v<N>`) and its topic. Everything else (decoding by type name,
//! schemas, routing) is derived from that table, so a type cannot be half-registered.
//!
//! # Unknown fields
//! Readers are tolerant: unknown `data` fields and unknown envelope attributes (CloudEvents
//! extensions) are ignored. The contract says fields may be added to a `v1` type but never change
//! meaning, so an engine one release ahead must not be refused. A field whose meaning changes gets a
//! new type version instead.
//!
//! # Bad input
//! [`Envelope::decode`] never panics. A record whose envelope is unreadable, or whose type is
//! unknown, becomes a dead-letter record; a well-formed engine request with a bad field (say a
//! multicast MAC) becomes an `ipam.request.rejected.v1` naming the field, see [`DecodeError`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ids::{EventId, HostId, NetworkId, SubnetId, VmId, VnicId};
use crate::mac::Mac;
use crate::net::{Cidr, InterfaceName, IpRange};
use crate::rejection::RejectionCode;
use crate::time::Timestamp;

/// A topic of the log. Each is partitioned by the key [`Event::key`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Topic {
    /// Engine requests about networks, subnets and vNICs, and host agents' port requests. Key: network.
    Networks,
    /// Host inventory, heartbeats, DHCP server status and placement ticks. Key: host.
    Hosts,
    /// The allocator's decisions: subnet activation, reservations, rejections. Key: network.
    Reservations,
    /// Placement's decisions: which host serves DHCP for which network. Key: network.
    DhcpServers,
    /// Records that could not be decoded or validated, with the reason.
    DeadLetter,
}

impl Topic {
    pub const ALL: [Topic; 5] =
        [Topic::Networks, Topic::Hosts, Topic::Reservations, Topic::DhcpServers, Topic::DeadLetter];

    pub fn name(self) -> &'static str {
        match self {
            Topic::Networks => "ipam.networks",
            Topic::Hosts => "ipam.hosts",
            Topic::Reservations => "ipam.reservations",
            Topic::DhcpServers => "ipam.dhcp-servers",
            Topic::DeadLetter => "ipam.dead-letter",
        }
    }
}

// ---- Engine → IPAM --------------------------------------------------------------------------

/// A network was created or changed in the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkUpserted {
    pub network_id: NetworkId,
    pub name: String,
    pub ipam_enabled: bool,
    /// How many hosts should run a DHCP server for the network; the configured default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers_count: Option<u8>,
}

/// A network was deleted in the engine: its reservations are released and its servers stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkRemoved {
    pub network_id: NetworkId,
}

/// A subnet was defined on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubnetAdded {
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
    pub cidr: Cidr,
    pub gateway: IpAddr,
    #[serde(default)]
    pub dns_servers: Vec<IpAddr>,
    #[serde(default)]
    pub ntp_servers: Vec<IpAddr>,
    /// Ranges for dynamic allocation; the whole subnet when absent. Fixed IPs may lie outside them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_pools: Option<Vec<IpRange>>,
}

/// A subnet was deleted; refused while vNICs hold addresses in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubnetRemoved {
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
}

/// The engine's view of a host's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    Up,
    Down,
    Maintenance,
}

/// A network attached to a host, through the named interface (usually a bridge).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct HostNetwork {
    pub network_id: NetworkId,
    pub interface: InterfaceName,
}

/// A host was added or changed: its status and the networks attached to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostUpserted {
    pub host_id: HostId,
    pub name: String,
    pub status: HostStatus,
    #[serde(default)]
    pub networks: Vec<HostNetwork>,
}

/// A host was deleted from the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostRemoved {
    pub host_id: HostId,
}

/// A vNIC came up (VM start, hot-plug or link up): it should hold an address in each subnet it
/// names (`subnet_id` and `subnet_ids` together): at most one IPv4 and one IPv6 subnet of its
/// network, so a dual-stack vNIC holds one address of each family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VnicUp {
    pub vnic_id: VnicId,
    pub vm_id: VmId,
    pub network_id: NetworkId,
    /// The subnet to reserve in (the single-stack form, kept for the producers that send it); a
    /// vNIC that names no subnet here nor in `subnet_ids` gets no IPAM service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<SubnetId>,
    /// The subnets to reserve in: at most one IPv4 and one IPv6 subnet of the network (a
    /// dual-stack vNIC names both). Taken together with `subnet_id` (their union), so an event may
    /// use either or both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnet_ids: Vec<SubnetId>,
    pub mac: Mac,
    /// A fixed IP to reserve instead of a dynamic one, in the named subnet of its family (the
    /// other family's address, if any, is allocated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_ip: Option<IpAddr>,
}

impl VnicUp {
    /// Every subnet the vNIC asks for: `subnet_id` and `subnet_ids` together, each once, in id
    /// order. The one way the core reads them, so that the two fields never mean two things.
    pub fn subnets(&self) -> BTreeSet<SubnetId> {
        self.subnet_id.iter().chain(&self.subnet_ids).copied().collect()
    }

    /// The one subnet the vNIC asks for, when it asks for exactly one (what a rejection names).
    pub fn single_subnet(&self) -> Option<SubnetId> {
        let subnets = self.subnets();
        match subnets.len() {
            1 => subnets.first().copied(),
            _ => None,
        }
    }
}

/// A vNIC went down (VM stop, unplug or link down): its address is released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VnicDown {
    pub vnic_id: VnicId,
    pub network_id: NetworkId,
}

// ---- Host agents → IPAM ---------------------------------------------------------------------

/// A host agent asks for the address its DHCP server uses in a subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DhcpPortRequested {
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
    pub host_id: HostId,
    pub mac: Mac,
}

/// The `type` of [`DhcpPortRequested`], for readers of rejections (`request_type`); the events
/// table below is the one definition, and a test holds this to it.
pub const DHCP_PORT_REQUESTED_TYPE: &str = "ipam.dhcp_port.requested.v1";

/// A host agent gives back its DHCP server's address in a subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DhcpPortReleased {
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
    pub host_id: HostId,
    pub mac: Mac,
}

/// A DHCP server a host runs, named by the epoch of its assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct ServedNetwork {
    pub network_id: NetworkId,
    pub epoch: u64,
}

/// A host agent is alive, and serves these networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostHeartbeat {
    pub host_id: HostId,
    #[serde(default)]
    pub serving: Vec<ServedNetwork>,
}

/// What a DHCP server process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DhcpServerState {
    Starting,
    Running,
    /// Running, but not serving all it should: dnsmasq refused a subnet, or the server holds no
    /// address of its own in one (the allocator refused it one); the detail says which and why.
    Degraded,
    Restarting,
    Failed,
    Stopped,
}

/// A host agent reports on one of its DHCP servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DhcpServerStatus {
    pub host_id: HostId,
    pub network_id: NetworkId,
    pub epoch: u64,
    pub state: DhcpServerState,
    #[serde(default)]
    pub detail: String,
}

/// Placement's clock: the shell appends one every tick interval, so time is part of the log and a
/// replay sees exactly the instants the live run saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClockTicked {
    pub now: Timestamp,
}

// ---- Observations and per-network policy (issue 14) ------------------------------------------
//
// What the system *observed* (leases, address conflicts) travels on `ipam.networks`, keyed by
// network, like the host agents' port requests: the network's allocator then reads it in order
// with its own decisions. None of it changes an allocation, except a probe's conflict, which takes
// the address out of use until an operator clears it.

/// One DHCP lease as a host agent read it from its dnsmasq's lease database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LeaseObserved {
    pub network_id: NetworkId,
    /// The host whose DHCP server holds the lease.
    pub host_id: HostId,
    pub mac: Mac,
    pub ip: IpAddr,
    /// When the agent saw the change (its clock: an observation, not a decision input).
    pub observed_at: Timestamp,
    /// When the lease ends unless renewed; absent for infinite leases and for ended ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// The client's hostname, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The client identifier (DHCPv4 option 61) or DUID (DHCPv6), hex, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// How an address conflict was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConflictProbe {
    /// An ARP probe (RFC 5227) was answered.
    Arp,
    /// An IPv6 neighbour solicitation (duplicate address detection) was answered.
    NeighbourSolicitation,
}

/// A host agent probed an address before serving it and another MAC answered for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IpConflictDetected {
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
    pub ip: IpAddr,
    /// The host whose agent probed.
    pub host_id: HostId,
    /// The MAC that answered for the address.
    pub answered_by: Mac,
    /// The MAC the address is reserved for, when it is reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_for: Option<Mac>,
    pub probe: ConflictProbe,
}

/// An operator says an address found in conflict is free to use again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IpConflictCleared {
    pub network_id: NetworkId,
    pub ip: IpAddr,
}

/// IPAM's own per-network policy, set by an operator (the engine's network events do not carry
/// it). Every field absent keeps its default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkPolicy {
    /// Seconds a released address is kept from other vNICs (default 0: reused at once, by next-fit
    /// last). Time comes from the log's clock ticks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_quarantine_s: Option<u32>,
    /// Whether serving agents probe a newly reserved address before serving it (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_probe: Option<bool>,
    /// Seconds after which a reserved vNIC without a lease is reported unleased (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unleased_after_s: Option<u32>,
    /// Utilization percentages (1 to 100) whose crossing is reported (default 80, 90, 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_thresholds: Option<Vec<u8>>,
}

/// An operator sets a network's policy (replacing the previous one as a whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkPolicySet {
    pub network_id: NetworkId,
    #[serde(default)]
    pub policy: NetworkPolicy,
}

/// The clock's tick on one partition of a network-keyed topic, so that each network's allocator
/// sees time pass in its own input order (quarantine, unleased vNICs). The clock appends one per
/// partition per interval, with a key the partitioner maps to `partition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PartitionClockTicked {
    pub now: Timestamp,
    pub partition: u32,
}

/// A host agent's DHCP server for a network now serves every reservation of the network up to
/// `reservations_offset` (the next offset of the network's `ipam.reservations` partition it has
/// applied): what makes a reserved vNIC "served".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DhcpServerSynced {
    pub host_id: HostId,
    pub network_id: NetworkId,
    pub epoch: u64,
    pub reservations_offset: u64,
}

// ---- IPAM → everyone ------------------------------------------------------------------------

/// A subnet is ready to serve, with its DHCP options and resolved allocation pools. Sent again when
/// its DNS or NTP servers change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubnetActivated {
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
    pub cidr: Cidr,
    pub gateway: IpAddr,
    pub dns_servers: Vec<IpAddr>,
    pub ntp_servers: Vec<IpAddr>,
    pub allocation_pools: Vec<IpRange>,
    pub cause: EventId,
}

/// A subnet is gone (removed, or its network removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubnetDeactivated {
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
    pub cause: EventId,
}

// Written as `{"kind": "vnic", "vnic_id": …, "vm_id": …}` in human-readable formats (JSON, the
// contract's). An internally tagged enum is read through a buffer of its fields, which in a binary
// snapshot (a million owners in the API's read model) cost more than the rest of the owner: binary
// formats carry the variant and its ids as an externally tagged tuple instead (`CompactOwner`).
// (Not a doc comment: the schema of the contract takes the type's documentation.)
/// Who holds a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Owner {
    /// A VM's vNIC.
    Vnic { vnic_id: VnicId, vm_id: VmId },
    /// The DHCP server a host runs for the network (one address per subnet).
    DhcpServer { host_id: HostId },
}

/// [`Owner`] as the contract writes it.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum TaggedOwner {
    Vnic { vnic_id: VnicId, vm_id: VmId },
    DhcpServer { host_id: HostId },
}

/// [`Owner`] in binary formats, its variant named by a letter (a MessagePack encoder writes the
/// name with every owner).
#[derive(Serialize, Deserialize)]
enum CompactOwner {
    #[serde(rename = "v")]
    Vnic(VnicId, VmId),
    #[serde(rename = "d")]
    DhcpServer(HostId),
}

impl Serialize for Owner {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (*self, serializer.is_human_readable()) {
            (Owner::Vnic { vnic_id, vm_id }, true) => TaggedOwner::Vnic { vnic_id, vm_id }.serialize(serializer),
            (Owner::DhcpServer { host_id }, true) => TaggedOwner::DhcpServer { host_id }.serialize(serializer),
            (Owner::Vnic { vnic_id, vm_id }, false) => CompactOwner::Vnic(vnic_id, vm_id).serialize(serializer),
            (Owner::DhcpServer { host_id }, false) => CompactOwner::DhcpServer(host_id).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Owner, D::Error> {
        Ok(if deserializer.is_human_readable() {
            match TaggedOwner::deserialize(deserializer)? {
                TaggedOwner::Vnic { vnic_id, vm_id } => Owner::Vnic { vnic_id, vm_id },
                TaggedOwner::DhcpServer { host_id } => Owner::DhcpServer { host_id },
            }
        } else {
            match CompactOwner::deserialize(deserializer)? {
                CompactOwner::Vnic(vnic_id, vm_id) => Owner::Vnic { vnic_id, vm_id },
                CompactOwner::DhcpServer(host_id) => Owner::DhcpServer { host_id },
            }
        })
    }
}

/// An address was reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReservationAdded {
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
    pub owner: Owner,
    pub mac: Mac,
    pub ip: IpAddr,
    pub cause: EventId,
}

/// Why a reservation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The vNIC stopped, was unplugged or lost its link.
    VnicDown,
    /// The host agent gave its DHCP port back.
    PortReleased,
    /// The DHCP port's subnet was removed.
    SubnetRemoved,
    /// The whole network was removed.
    NetworkRemoved,
    /// A host agent's probe found another MAC answering for the dynamically allocated address
    /// (`ipam.ip.conflict.v1`): the vNIC is given another address at once.
    IpConflict,
}

/// A reservation ended; the address is free again (and handed out last, by next-fit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReservationRemoved {
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
    pub owner: Owner,
    pub mac: Mac,
    pub ip: IpAddr,
    pub reason: ReleaseReason,
    pub cause: EventId,
}

/// A request was refused and changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RequestRejected {
    pub network_id: NetworkId,
    /// The `type` of the refused event.
    pub request_type: String,
    pub code: RejectionCode,
    pub message: String,
    pub cause: EventId,
    /// The vNIC the refused request named (added later: absent in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnic_id: Option<VnicId>,
    /// The MAC the refused request named (added later: absent in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// The subnet the refused request named (added later: absent in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<SubnetId>,
    /// The host whose DHCP server's own address the refused request was about (a DHCP-port
    /// request or release; added later: absent in older records), so that agent can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<HostId>,
}

/// Why placement gave a network a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssignReason {
    /// The network needs more servers than it has (new, re-enabled, count raised, host came back).
    Placed,
    /// Another host's server was taken away by the same decision.
    Replacement,
}

/// Why placement took a server away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnassignReason {
    HostDown,
    HostMaintenance,
    HostRemoved,
    HeartbeatLost,
    NetworkDetached,
    IpamDisabled,
    NoSubnet,
    NetworkRemoved,
    ServersCountReduced,
}

/// A host is to run a DHCP server for a network. `epoch` grows with every assignment of the network,
/// so a server holding an older epoch knows it was superseded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DhcpServerAssigned {
    pub network_id: NetworkId,
    pub host_id: HostId,
    pub interface: InterfaceName,
    pub epoch: u64,
    pub reason: AssignReason,
    pub cause: EventId,
}

/// A host is to stop its DHCP server for a network (best effort: the host may be gone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DhcpServerUnassigned {
    pub network_id: NetworkId,
    pub host_id: HostId,
    pub epoch: u64,
    pub reason: UnassignReason,
    pub cause: EventId,
}

/// The effective policy of a network, after an operator set it (or the network was removed:
/// then the defaults); agents read it to know whether to probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkPolicyApplied {
    pub network_id: NetworkId,
    pub policy: NetworkPolicy,
    pub cause: EventId,
}

/// A vNIC holds a reservation but no guest took a lease of it within the network's
/// `unleased_after_s`: a warning, with what an operator needs to look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VnicUnleased {
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
    pub vnic_id: VnicId,
    pub vm_id: VmId,
    pub mac: Mac,
    pub ip: IpAddr,
    /// The log's time when the address was reserved.
    pub reserved_at: Timestamp,
    /// The log's time when the warning was raised.
    pub now: Timestamp,
    pub cause: EventId,
}

/// What is wrong with an observed lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseConflictKind {
    /// The lease's address is not the one reserved for its MAC.
    WrongAddress,
    /// The lease's MAC holds no reservation in the network.
    NoReservation,
}

/// A lease disagrees with the reservations (an observation: no allocation changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LeaseConflict {
    pub network_id: NetworkId,
    pub host_id: HostId,
    pub mac: Mac,
    pub leased_ip: IpAddr,
    /// The address reserved for the MAC, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnic_id: Option<VnicId>,
    pub kind: LeaseConflictKind,
    pub cause: EventId,
}

/// What happened to a lease, as a host agent observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseChange {
    Granted,
    Renewed,
    Released,
    Expired,
}

/// An observed lease matched to the vNIC it belongs to (its MAC and reserved address agree): the
/// allocator's echo of `ipam.lease.*`, in order with the vNIC's reservations on its
/// `ipam.reservations` partition, so that readers (the API) know which vNIC is leased without
/// matching leases themselves. A lease that does not match raises `ipam.lease.conflict.v1` instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VnicLeaseChanged {
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
    pub vnic_id: VnicId,
    pub vm_id: VmId,
    pub mac: Mac,
    pub ip: IpAddr,
    /// The host whose DHCP server holds (or held) the lease.
    pub host_id: HostId,
    pub change: LeaseChange,
    /// When the agent saw the change (its clock).
    pub observed_at: Timestamp,
    /// When the lease ends unless renewed; absent for infinite and ended leases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    pub cause: EventId,
}

/// A subnet's utilization crossed one of its network's thresholds, upwards or back down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubnetUtilizationCrossed {
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
    /// The threshold crossed, in percent.
    pub threshold: u8,
    /// True when utilization rose to or above the threshold, false when it fell below it.
    pub rising: bool,
    /// Addresses held, and addresses the subnet's pools can hand out (fixed IPs outside the pools
    /// count as held but not in the size).
    pub used: u64,
    pub size: u64,
    pub cause: EventId,
}

macro_rules! events {
    ($($variant:ident($data:ty) = $type_name:literal on $topic:ident;)*) => {
        /// One event of the contract: the `type` and `data` of a CloudEvent.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Event {
            $($variant($data),)*
        }

        impl Event {
            /// Every type name of the contract, in table order.
            pub const TYPES: &'static [&'static str] = &[$($type_name),*];

            /// The CloudEvents `type`, such as `ipam.vnic.started.v1`.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Event::$variant(_) => $type_name,)*
                }
            }

            /// The topic this event type is written to.
            pub fn topic(&self) -> Topic {
                match self {
                    $(Event::$variant(_) => Topic::$topic,)*
                }
            }

            /// The topic events of `type_name` are written to, if the type is known.
            pub fn topic_of(type_name: &str) -> Option<Topic> {
                match type_name {
                    $($type_name => Some(Topic::$topic),)*
                    _ => None,
                }
            }

            /// Writes the event's `data` straight to `serializer` (no JSON tree in between).
            fn serialize_data<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(Event::$variant(data) => data.serialize(serializer),)*
                }
            }

            fn data_from_json(
                type_name: &str,
                data: Value,
            ) -> Option<Result<Event, serde_path_to_error::Error<serde_json::Error>>> {
                match type_name {
                    $($type_name => Some(serde_path_to_error::deserialize(data).map(Event::$variant)),)*
                    _ => None,
                }
            }

            /// Reads the `data` of an event of `type_name` from its own JSON text (the fast path of
            /// [`Envelope::decode`] when `data` came before `type`); `None` for an unknown type.
            fn data_from_str(type_name: &str, text: &str) -> Option<Result<Event, serde_json::Error>> {
                match type_name {
                    $($type_name => Some(serde_json::from_str::<$data>(text).map(Event::$variant)),)*
                    _ => None,
                }
            }

            /// Reads the `data` of an event of `type_name` straight from the envelope being parsed
            /// (the fast path of [`Envelope::decode`]); `None` for an unknown type.
            fn data_from_map<'de, A: serde::de::MapAccess<'de>>(
                type_name: &str,
                map: &mut A,
            ) -> Option<Result<Event, A::Error>> {
                match type_name {
                    $($type_name => Some(map.next_value::<$data>().map(Event::$variant)),)*
                    _ => None,
                }
            }

            fn data_schema(type_name: &str, generator: &mut SchemaGenerator) -> Option<Schema> {
                match type_name {
                    $($type_name => Some(generator.root_schema_for::<$data>()),)*
                    _ => None,
                }
            }
        }
    };
}

events! {
    NetworkUpserted(NetworkUpserted) = "ipam.network.upserted.v1" on Networks;
    NetworkRemoved(NetworkRemoved) = "ipam.network.removed.v1" on Networks;
    SubnetAdded(SubnetAdded) = "ipam.subnet.added.v1" on Networks;
    SubnetRemoved(SubnetRemoved) = "ipam.subnet.removed.v1" on Networks;
    VnicStarted(VnicUp) = "ipam.vnic.started.v1" on Networks;
    VnicPlugged(VnicUp) = "ipam.vnic.plugged.v1" on Networks;
    VnicLinked(VnicUp) = "ipam.vnic.linked.v1" on Networks;
    VnicStopped(VnicDown) = "ipam.vnic.stopped.v1" on Networks;
    VnicUnplugged(VnicDown) = "ipam.vnic.unplugged.v1" on Networks;
    VnicUnlinked(VnicDown) = "ipam.vnic.unlinked.v1" on Networks;
    DhcpPortRequested(DhcpPortRequested) = "ipam.dhcp_port.requested.v1" on Networks;
    DhcpPortReleased(DhcpPortReleased) = "ipam.dhcp_port.released.v1" on Networks;
    LeaseGranted(LeaseObserved) = "ipam.lease.granted.v1" on Networks;
    LeaseRenewed(LeaseObserved) = "ipam.lease.renewed.v1" on Networks;
    LeaseReleased(LeaseObserved) = "ipam.lease.released.v1" on Networks;
    LeaseExpired(LeaseObserved) = "ipam.lease.expired.v1" on Networks;
    IpConflictDetected(IpConflictDetected) = "ipam.ip.conflict.v1" on Networks;
    IpConflictCleared(IpConflictCleared) = "ipam.ip.conflict_cleared.v1" on Networks;
    NetworkPolicySet(NetworkPolicySet) = "ipam.network.policy_set.v1" on Networks;
    PartitionClockTicked(PartitionClockTicked) = "ipam.clock.partition_ticked.v1" on Networks;
    HostUpserted(HostUpserted) = "ipam.host.upserted.v1" on Hosts;
    HostRemoved(HostRemoved) = "ipam.host.removed.v1" on Hosts;
    HostHeartbeat(HostHeartbeat) = "ipam.host.heartbeat.v1" on Hosts;
    DhcpServerStatus(DhcpServerStatus) = "ipam.dhcp_server.status.v1" on Hosts;
    ClockTicked(ClockTicked) = "ipam.clock.ticked.v1" on Hosts;
    DhcpServerSynced(DhcpServerSynced) = "ipam.dhcp_server.synced.v1" on Hosts;
    SubnetActivated(SubnetActivated) = "ipam.subnet.activated.v1" on Reservations;
    SubnetDeactivated(SubnetDeactivated) = "ipam.subnet.deactivated.v1" on Reservations;
    ReservationAdded(ReservationAdded) = "ipam.reservation.added.v1" on Reservations;
    ReservationRemoved(ReservationRemoved) = "ipam.reservation.removed.v1" on Reservations;
    RequestRejected(RequestRejected) = "ipam.request.rejected.v1" on Reservations;
    NetworkPolicyApplied(NetworkPolicyApplied) = "ipam.network.policy_applied.v1" on Reservations;
    VnicUnleased(VnicUnleased) = "ipam.vnic.unleased.v1" on Reservations;
    LeaseConflict(LeaseConflict) = "ipam.lease.conflict.v1" on Reservations;
    VnicLeaseChanged(VnicLeaseChanged) = "ipam.vnic.lease_changed.v1" on Reservations;
    SubnetUtilizationCrossed(SubnetUtilizationCrossed) = "ipam.subnet.utilization_crossed.v1" on Reservations;
    DhcpServerAssigned(DhcpServerAssigned) = "ipam.dhcp_server.assigned.v1" on DhcpServers;
    DhcpServerUnassigned(DhcpServerUnassigned) = "ipam.dhcp_server.unassigned.v1" on DhcpServers;
}

/// The partition key of the one placement clock (ticks are not about a host).
pub const CLOCK_KEY: &str = "placement-clock";

impl Event {
    /// The vNIC, MAC and subnet a request names, for its rejection: a reader then sees what was
    /// refused without looking the request up.
    pub fn request_names(&self) -> (Option<VnicId>, Option<Mac>, Option<SubnetId>) {
        match self {
            Event::VnicStarted(e) | Event::VnicPlugged(e) | Event::VnicLinked(e) => {
                (Some(e.vnic_id), Some(e.mac), e.single_subnet())
            }
            Event::VnicStopped(e) | Event::VnicUnplugged(e) | Event::VnicUnlinked(e) => (Some(e.vnic_id), None, None),
            Event::DhcpPortRequested(e) => (None, Some(e.mac), Some(e.subnet_id)),
            Event::DhcpPortReleased(e) => (None, Some(e.mac), Some(e.subnet_id)),
            Event::SubnetAdded(e) => (None, None, Some(e.subnet_id)),
            Event::SubnetRemoved(e) => (None, None, Some(e.subnet_id)),
            _ => (None, None, None),
        }
    }

    /// The host a DHCP-port request or release is for: what a rejection of it names.
    pub fn request_host(&self) -> Option<HostId> {
        match self {
            Event::DhcpPortRequested(e) => Some(e.host_id),
            Event::DhcpPortReleased(e) => Some(e.host_id),
            _ => None,
        }
    }

    /// The network the event is about, if any.
    pub fn network_id(&self) -> Option<NetworkId> {
        Some(match self {
            Event::NetworkUpserted(e) => e.network_id,
            Event::NetworkRemoved(e) => e.network_id,
            Event::SubnetAdded(e) => e.network_id,
            Event::SubnetRemoved(e) => e.network_id,
            Event::VnicStarted(e) | Event::VnicPlugged(e) | Event::VnicLinked(e) => e.network_id,
            Event::VnicStopped(e) | Event::VnicUnplugged(e) | Event::VnicUnlinked(e) => e.network_id,
            Event::DhcpPortRequested(e) => e.network_id,
            Event::DhcpPortReleased(e) => e.network_id,
            Event::DhcpServerStatus(e) => e.network_id,
            Event::SubnetActivated(e) => e.network_id,
            Event::SubnetDeactivated(e) => e.network_id,
            Event::ReservationAdded(e) => e.network_id,
            Event::ReservationRemoved(e) => e.network_id,
            Event::RequestRejected(e) => e.network_id,
            Event::DhcpServerAssigned(e) => e.network_id,
            Event::DhcpServerUnassigned(e) => e.network_id,
            Event::LeaseGranted(e) | Event::LeaseRenewed(e) | Event::LeaseReleased(e) | Event::LeaseExpired(e) => {
                e.network_id
            }
            Event::IpConflictDetected(e) => e.network_id,
            Event::IpConflictCleared(e) => e.network_id,
            Event::NetworkPolicySet(e) => e.network_id,
            Event::DhcpServerSynced(e) => e.network_id,
            Event::NetworkPolicyApplied(e) => e.network_id,
            Event::VnicUnleased(e) => e.network_id,
            Event::LeaseConflict(e) => e.network_id,
            Event::VnicLeaseChanged(e) => e.network_id,
            Event::SubnetUtilizationCrossed(e) => e.network_id,
            Event::PartitionClockTicked(_) => return None,
            Event::HostUpserted(_) | Event::HostRemoved(_) | Event::HostHeartbeat(_) | Event::ClockTicked(_) => {
                return None;
            }
        })
    }

    /// The partition key: the network for network-keyed topics, the host for `ipam.hosts`.
    pub fn key(&self) -> String {
        match self {
            Event::HostUpserted(e) => e.host_id.to_string(),
            Event::HostRemoved(e) => e.host_id.to_string(),
            Event::HostHeartbeat(e) => e.host_id.to_string(),
            Event::DhcpServerStatus(e) => e.host_id.to_string(),
            Event::ClockTicked(_) => CLOCK_KEY.to_owned(),
            Event::DhcpServerSynced(e) => e.host_id.to_string(),
            // Nominal: the clock chooses, per partition, a key the partitioner maps there.
            Event::PartitionClockTicked(e) => format!("{CLOCK_KEY}/{}", e.partition),
            other => other.network_id().map(|id| id.to_string()).unwrap_or_default(),
        }
    }
}

/// The only CloudEvents version IPAM speaks.
pub const SPEC_VERSION: &str = "1.0";
/// The only `datacontenttype` IPAM speaks.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// An event with its CloudEvents attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: EventId,
    /// Who produced the event, such as `ovirt-engine` or `ipam/allocator`.
    pub source: String,
    pub time: Timestamp,
    pub subject: Option<String>,
    pub event: Event,
}

/// The structured-mode JSON form; field order is fixed so equal envelopes give equal bytes.
#[derive(Serialize)]
struct WireEnvelope<'a> {
    specversion: &'static str,
    id: EventId,
    source: &'a str,
    #[serde(rename = "type")]
    type_name: &'static str,
    time: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    datacontenttype: &'static str,
    data: WireData<'a>,
}

/// An event's `data` as [`WireEnvelope`] writes it: the event's own struct, serialized in place.
struct WireData<'a>(&'a Event);

impl Serialize for WireData<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_data(serializer)
    }
}

#[derive(Deserialize)]
struct IncomingEnvelope {
    specversion: String,
    id: EventId,
    source: String,
    #[serde(rename = "type")]
    type_name: String,
    time: Timestamp,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    datacontenttype: Option<String>,
    data: Value,
}

/// Why a record is not a usable event, and what is known about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// The event's `id`, when the envelope was readable.
    pub cause: Option<EventId>,
    /// The event's `type`, when the envelope was readable.
    pub event_type: Option<String>,
    /// The event's `time`, when the envelope was readable.
    pub time: Option<Timestamp>,
    /// The network the event is about, when `data.network_id` was readable.
    pub network_id: Option<NetworkId>,
    /// The path of the offending field, such as `data.mac` or `time`.
    pub field: Option<String>,
    pub code: RejectionCode,
    pub message: String,
}

impl DecodeError {
    fn envelope(field: Option<String>, message: String) -> DecodeError {
        DecodeError {
            cause: None,
            event_type: None,
            time: None,
            network_id: None,
            field,
            code: RejectionCode::InvalidRequest,
            message,
        }
    }

    /// What to do with the record: a rejection event when the record is a readable engine request
    /// about a known network (so the engine hears back), otherwise `None`: dead-letter it.
    pub fn rejection(&self) -> Option<Event> {
        let (Some(cause), Some(event_type), Some(network_id)) = (self.cause, &self.event_type, self.network_id) else {
            return None;
        };
        (Event::topic_of(event_type) == Some(Topic::Networks)).then(|| {
            Event::RequestRejected(RequestRejected {
                network_id,
                request_type: event_type.clone(),
                code: self.code,
                message: self.message.clone(),
                cause,
                // The request did not decode, so what it names is not known.
                vnic_id: None,
                mac: None,
                subnet_id: None,
                host_id: None,
            })
        })
    }
}

/// The rejection code for a bad value in the `data` field named `field`.
fn code_for_field(field: &str) -> RejectionCode {
    match field {
        "mac" => RejectionCode::InvalidMac,
        "cidr" => RejectionCode::InvalidCidr,
        "gateway" | "requested_ip" | "dns_servers" | "ntp_servers" => RejectionCode::InvalidIp,
        "allocation_pools" => RejectionCode::InvalidPool,
        _ => RejectionCode::InvalidRequest,
    }
}

impl Envelope {
    /// The `index`-th output of the step that handled `cause`: its id is derived from the cause's id
    /// and its time is the cause's time, so outputs are a pure function of inputs.
    pub fn output(cause: &Envelope, index: u32, source: &str, event: Event) -> Envelope {
        let subject = Some(event.key());
        Envelope { id: EventId::derived(cause.id, index), source: source.to_owned(), time: cause.time, subject, event }
    }

    /// The structured-mode CloudEvents JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.wire()).expect("envelopes have string keys only, so they always serialize")
    }

    /// The structured-mode CloudEvents JSON, as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.wire()).expect("envelopes have string keys only, so they always serialize")
    }

    fn wire(&self) -> WireEnvelope<'_> {
        WireEnvelope {
            specversion: SPEC_VERSION,
            id: self.id,
            source: &self.source,
            type_name: self.event.type_name(),
            time: self.time,
            subject: self.subject.as_deref(),
            datacontenttype: DATA_CONTENT_TYPE,
            data: WireData(&self.event),
        }
    }

    /// Reads one structured-mode CloudEvent.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        // Nearly every record is a good event: read it in one pass first. Anything the fast path
        // does not accept (a bad field, a duplicate key, `data` before `type`) is read again the
        // careful way, which finds what is wrong and says it.
        if let Ok(FastEnvelope(envelope)) = serde_json::from_slice(bytes) {
            return Ok(envelope);
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::envelope(None, format!("the record is not JSON: {e}")))?;
        Envelope::decode_value(value)
    }

    /// Reads one structured-mode CloudEvent that is already parsed as JSON.
    pub fn decode_value(value: Value) -> Result<Envelope, DecodeError> {
        let incoming: IncomingEnvelope = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            DecodeError::envelope(Some(field.clone()), format!("bad CloudEvents envelope at `{field}`: {}", e.inner()))
        })?;
        let known = |code, field: &str, message: String| DecodeError {
            cause: Some(incoming.id),
            event_type: Some(incoming.type_name.clone()),
            time: Some(incoming.time),
            network_id: incoming.data.get("network_id").and_then(|v| serde_json::from_value(v.clone()).ok()),
            field: Some(field.to_owned()),
            code,
            message,
        };
        if incoming.specversion != SPEC_VERSION {
            let message = format!("specversion is `{}`; only `{SPEC_VERSION}` is supported", incoming.specversion);
            return Err(known(RejectionCode::InvalidRequest, "specversion", message));
        }
        if let Some(content_type) = incoming.datacontenttype.as_deref().filter(|t| *t != DATA_CONTENT_TYPE) {
            let message = format!("datacontenttype is `{content_type}`; only `{DATA_CONTENT_TYPE}` is supported");
            return Err(known(RejectionCode::InvalidRequest, "datacontenttype", message));
        }
        if incoming.source.is_empty() {
            return Err(known(RejectionCode::InvalidRequest, "source", "source is empty".to_owned()));
        }
        let event = match Event::data_from_json(&incoming.type_name, incoming.data.clone()) {
            None => {
                let message =
                    format!("unknown event type `{}`", incoming.type_name.chars().take(100).collect::<String>());
                return Err(known(RejectionCode::InvalidRequest, "type", message));
            }
            Some(Err(e)) => {
                let path = e.path().to_string();
                let field = e.path().iter().find_map(|segment| match segment {
                    serde_path_to_error::Segment::Map { key } => Some(key.as_str()),
                    _ => None,
                });
                let code = code_for_field(field.unwrap_or(""));
                let message = format!("data.{path}: {}", e.inner());
                return Err(known(code, &format!("data.{path}"), message));
            }
            Some(Ok(event)) => event,
        };
        Ok(Envelope { id: incoming.id, source: incoming.source, time: incoming.time, subject: incoming.subject, event })
    }
}

/// A good envelope read in one pass, with its `data` read straight into its type (no
/// `serde_json::Value` in between): [`Envelope::decode`]'s fast path. It fails on whatever is not
/// plainly good, leaving every error to [`Envelope::decode_value`]: a key given twice (the careful
/// path keeps the last one), an unknown type, a bad field or envelope attribute. `data` is read
/// straight into its type when `type` came first (the order [`Envelope::to_bytes`] writes), and
/// from its borrowed text once `type` is known when it came first (keys sorted, as a JSON tree
/// writes them: the CLI, `ipam bench`, many clients), which reads it twice but builds no tree.
/// What it accepts, it reads as the careful path does (a test compares the two).
struct FastEnvelope(Envelope);

impl<'de> Deserialize<'de> for FastEnvelope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<FastEnvelope, D::Error> {
        deserializer.deserialize_map(FastEnvelopeVisitor)
    }
}

struct FastEnvelopeVisitor;

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum FastField {
    Specversion,
    Id,
    Source,
    Type,
    Time,
    Subject,
    Datacontenttype,
    Data,
    #[serde(other)]
    Other,
}

impl<'de> serde::de::Visitor<'de> for FastEnvelopeVisitor {
    type Value = FastEnvelope;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a CloudEvents envelope")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FastEnvelope, A::Error> {
        use serde::de::Error;
        fn once<T, E: Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
            match slot.replace(value) {
                Some(_) => Err(E::custom("a key given twice")),
                None => Ok(()),
            }
        }
        let (mut specversion, mut id, mut source, mut type_name, mut time) = (None, None, None, None, None);
        let (mut subject, mut datacontenttype, mut event, mut data_text) = (None, None, None, None);
        while let Some(field) = map.next_key::<FastField>()? {
            match field {
                FastField::Specversion => once(&mut specversion, map.next_value::<std::borrow::Cow<'_, str>>()?)?,
                FastField::Id => once(&mut id, map.next_value::<EventId>()?)?,
                FastField::Source => once(&mut source, map.next_value::<String>()?)?,
                FastField::Type => once(&mut type_name, map.next_value::<String>()?)?,
                FastField::Time => once(&mut time, map.next_value::<Timestamp>()?)?,
                FastField::Subject => once(&mut subject, map.next_value::<Option<String>>()?)?,
                FastField::Datacontenttype => once(&mut datacontenttype, map.next_value::<Option<String>>()?)?,
                FastField::Data => match type_name.as_deref() {
                    // The order `to_bytes` writes: the data is read straight into its type.
                    Some(type_name) => {
                        let data = Event::data_from_map(type_name, &mut map)
                            .ok_or_else(|| A::Error::custom("an unknown type"))??;
                        once(&mut event, data)?;
                    }
                    // Keys sorted, as a JSON tree writes them (`to_json`, most clients' JSON
                    // objects): the data's text is kept, borrowed, and read once the type is known.
                    None => once(&mut data_text, map.next_value::<&'de serde_json::value::RawValue>()?)?,
                },
                FastField::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        if let Some(text) = data_text {
            let type_name = type_name.as_deref().ok_or_else(|| A::Error::custom("no type"))?;
            let data = Event::data_from_str(type_name, text.get())
                .ok_or_else(|| A::Error::custom("an unknown type"))?
                .map_err(A::Error::custom)?;
            once(&mut event, data)?;
        }
        let plainly_good = specversion.as_deref() == Some(SPEC_VERSION)
            && datacontenttype.as_ref().is_none_or(|t| t.as_deref().is_none_or(|t| t == DATA_CONTENT_TYPE))
            && source.as_ref().is_some_and(|s: &String| !s.is_empty());
        match (id, source, time, event) {
            (Some(id), Some(source), Some(time), Some(event)) if plainly_good => {
                Ok(FastEnvelope(Envelope { id, source, time, subject: subject.flatten(), event }))
            }
            _ => Err(A::Error::custom("not plainly good")),
        }
    }
}

/// schemars writes `std::net::IpAddr` as `format: ip`, which no validator knows; JSON Schema's own
/// formats are `ipv4` and `ipv6`.
fn assert_ip_formats(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            if object.get("format").and_then(Value::as_str) == Some("ip") {
                object.remove("format");
                object.insert("anyOf".to_owned(), json!([{ "format": "ipv4" }, { "format": "ipv6" }]));
            }
            object.values_mut().for_each(assert_ip_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(assert_ip_formats),
        _ => {}
    }
}

/// The JSON Schema (draft 2020-12) of every event type, keyed by type name: a CloudEvents envelope
/// whose `type` is fixed and whose `data` is the type's struct.
pub fn event_schemas() -> BTreeMap<&'static str, Value> {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    Event::TYPES
        .iter()
        .map(|&type_name| {
            let data = Event::data_schema(type_name, &mut generator).expect("every listed type has a schema");
            let mut data = data.to_value();
            assert_ip_formats(&mut data);
            let object = data.as_object_mut().expect("a struct's schema is an object");
            object.remove("$schema");
            let defs = object.remove("$defs").unwrap_or_else(|| json!({}));
            let schema = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$id": format!("https://ipam.dev/schemas/{type_name}.json"),
                "title": type_name,
                "description": "A CloudEvents 1.0 structured-mode event. Unknown data fields and extension attributes are ignored.",
                "type": "object",
                "required": ["specversion", "id", "source", "type", "time", "data"],
                "properties": {
                    "specversion": { "const": SPEC_VERSION },
                    "id": { "type": "string", "format": "uuid" },
                    "source": { "type": "string", "minLength": 1 },
                    "type": { "const": type_name },
                    "time": { "type": "string", "format": "date-time" },
                    "subject": { "type": "string" },
                    "datacontenttype": { "const": DATA_CONTENT_TYPE },
                    "data": data,
                },
                "$defs": defs,
            });
            (type_name, schema)
        })
        .collect()
}

#[cfg(test)]
mod fast_decode_tests {
    use super::*;

    /// What the careful path alone answers.
    fn careful(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::envelope(None, format!("the record is not JSON: {e}")))?;
        Envelope::decode_value(value)
    }

    fn started(extra: &str, data_extra: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"00000000-0000-0000-0000-0000000000e1","source":"engine","type":"ipam.vnic.started.v1","time":"2026-01-02T03:04:05Z","subject":"n"{extra},"datacontenttype":"application/json","data":{{"vnic_id":"00000000-0000-0000-0000-000000000001","vm_id":"00000000-0000-0000-0000-000000000002","network_id":"00000000-0000-0000-0000-000000000003","subnet_id":null,"mac":"52:54:00:00:00:01"{data_extra}}}}}"#
        )
    }

    #[test]
    fn the_fast_path_reads_good_envelopes_as_the_careful_path_does() {
        let good = [
            started("", ""),
            started(r#","traceparent":"00-x","extra":{"a":[1,2]}"#, r#","future_field":true"#),
            started("", r#","requested_ip":"10.0.0.5""#),
            Envelope::decode(started("", "").as_bytes()).unwrap().to_bytes().iter().map(|b| *b as char).collect(),
            // Keys sorted, as a JSON tree writes them: `data` before `type`.
            Envelope::decode(started("", "").as_bytes()).unwrap().to_json().to_string(),
        ];
        for text in good {
            let fast: FastEnvelope = serde_json::from_slice(text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(Ok(fast.0), careful(text.as_bytes()), "{text}");
            assert_eq!(Envelope::decode(text.as_bytes()), careful(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn whatever_the_fast_path_refuses_is_answered_by_the_careful_path() {
        let good = started("", "");
        let sorted = Envelope::decode(good.as_bytes()).unwrap().to_json().to_string();
        assert!(sorted.starts_with(r#"{"data":"#) && sorted.contains(r#","type":"ipam.vnic.started.v1""#), "{sorted}");
        let cases = [
            good.replace(r#""subject":"n""#, r#""subject":"n","id":"00000000-0000-0000-0000-0000000000e2""#),
            good.replace(r#""mac":"52:54:00:00:00:01""#, r#""mac":"52:54:00:00:00:01","mac":"52:54:00:00:00:02""#),
            good.replace(r#""mac":"52:54:00:00:00:01""#, r#""mac":"ff:ff:ff:ff:ff:ff""#),
            good.replace(r#""specversion":"1.0""#, r#""specversion":"0.3""#),
            good.replace(r#""application/json""#, r#""text/plain""#),
            good.replace(r#""source":"engine""#, r#""source":"""#),
            good.replace("ipam.vnic.started.v1", "ipam.no.such.v1"),
            good.replace(r#""time":"2026-01-02T03:04:05Z""#, r#""time":"yesterday""#),
            format!(r#"{{"data":{{}},{}"#, &good[1..]),
            // `data` before `type` (keys sorted) with a bad value, and with an unknown type.
            sorted.replace(r#""mac":"52:54:00:00:00:01""#, r#""mac":"ff:ff:ff:ff:ff:ff""#),
            sorted.replace("ipam.vnic.started.v1", "ipam.no.such.v1"),
            sorted.replace(r#","type":"ipam.vnic.started.v1""#, ""),
            good.replace(r#""type":"ipam.vnic.started.v1","#, "") + "",
            good.clone() + " x",
            "[]".to_owned(),
        ];
        for text in cases {
            assert!(serde_json::from_slice::<FastEnvelope>(text.as_bytes()).is_err(), "fast path took {text}");
            assert_eq!(Envelope::decode(text.as_bytes()), careful(text.as_bytes()), "{text}");
        }
        // The careful path keeps the last of a key given twice.
        let twice = good.replace(r#""subject":"n""#, r#""subject":"n","id":"00000000-0000-0000-0000-0000000000e2""#);
        assert_eq!(Envelope::decode(twice.as_bytes()).unwrap().id, EventId(uuid::Uuid::from_u128(0xe2)));
    }
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    #[test]
    fn an_owner_is_tagged_in_json_and_a_tuple_in_messagepack() {
        let vnic = Owner::Vnic { vnic_id: VnicId::from_u128(1), vm_id: VmId::from_u128(2) };
        let server = Owner::DhcpServer { host_id: HostId::from_u128(3) };
        assert_eq!(
            serde_json::to_value(vnic).unwrap(),
            json!({"kind": "vnic", "vnic_id": "00000000-0000-0000-0000-000000000001",
                   "vm_id": "00000000-0000-0000-0000-000000000002"})
        );
        assert_eq!(
            serde_json::to_value(server).unwrap(),
            json!({"kind": "dhcp_server", "host_id": "00000000-0000-0000-0000-000000000003"})
        );
        for owner in [vnic, server] {
            assert_eq!(serde_json::from_value::<Owner>(serde_json::to_value(owner).unwrap()).unwrap(), owner);
            let binary = rmp_serde::to_vec(&owner).unwrap();
            assert_eq!(rmp_serde::from_slice::<Owner>(&binary).unwrap(), owner);
            assert!(!binary.windows(4).any(|window| window == b"kind"), "{binary:?}");
        }
        let binary = rmp_serde::to_vec(&vnic).unwrap();
        assert_eq!(binary, rmp_serde::to_vec(&CompactOwner::Vnic(VnicId::from_u128(1), VmId::from_u128(2))).unwrap());
    }
}
