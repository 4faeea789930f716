//! Refusals are data: every request IPAM cannot honour becomes an `ipam.request.rejected.v1` event
//! with one of these codes, so the engine can react to it and an operator can trace it by `cause`.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::SubnetId;

/// Why a request was refused. The wire form is the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectionCode {
    /// A field is missing, has the wrong type or an impossible value.
    InvalidRequest,
    /// The MAC is malformed, all-zero, broadcast or multicast.
    InvalidMac,
    /// The CIDR is malformed or has host bits set.
    InvalidCidr,
    /// An IP address field is malformed.
    InvalidIp,
    /// The gateway is outside the subnet, of the other family, or its network/broadcast address.
    InvalidGateway,
    /// An allocation pool is reversed, outside the subnet, or overlaps another pool.
    InvalidPool,
    /// The subnet overlaps a block no DHCP client may get an address from: unspecified, loopback,
    /// link-local, multicast, reserved (240/4, broadcast) or IPv4-mapped IPv6.
    UnsupportedSubnet,
    /// A DNS or NTP server is of the other address family than its subnet.
    AddressFamilyMismatch,
    /// A DNS or NTP server is an address no server can be reached at: unspecified, loopback,
    /// reserved, broadcast, IPv4-mapped, or multicast (except an IPv6 NTP server, RFC 5908).
    ReservedAddress,
    /// An IPv4 subnet wider than /8 (its address bitmap would not be reasonable), or an IPv6 subnet
    /// wider than /64 (dnsmasq refuses such a DHCPv6 range and exits).
    SubnetTooLarge,
    /// A subnet with no room for hosts besides the gateway (IPv4 /31 and /32, IPv6 /127 and /128).
    SubnetTooSmall,
    /// The network has never been upserted, or was removed.
    UnknownNetwork,
    /// The subnet is not defined on this network.
    UnknownSubnet,
    /// The network has IPAM disabled, so it takes no new reservations.
    IpamDisabled,
    /// No free address is left in the subnet's allocation pools.
    SubnetExhausted,
    /// The requested fixed IP is held by another owner.
    IpInUse,
    /// The requested fixed IP is not inside the subnet.
    IpOutsideSubnet,
    /// The requested fixed IP is the subnet's network, broadcast or gateway address, or an address
    /// no host may hold (unspecified, loopback, link-local, multicast, reserved, IPv4-mapped).
    IpNotAssignable,
    /// Another owner on this network already holds a reservation with this MAC.
    DuplicateMac,
    /// The subnet overlaps another subnet of the same network.
    OverlappingSubnet,
    /// The subnet still holds vNIC reservations, so it cannot be removed.
    SubnetInUse,
    /// A subnet with this id exists with another CIDR, gateway or pools; only DNS and NTP may change.
    SubnetConflict,
    /// The owner already holds a reservation with another subnet, MAC or IP; send a down event first.
    VnicConflict,
    /// A network policy is out of range: a utilization threshold outside 1 to 100, or given twice.
    InvalidPolicy,
    /// The requested fixed IP was released by another MAC less than the network's
    /// `release_quarantine_s` ago; ask again later, or for another address.
    IpQuarantined,
    /// The requested fixed IP was found answered by another MAC (`ipam.ip.conflict.v1`) and is kept
    /// out of use until an operator clears the conflict (`ipam.ip.conflict_cleared.v1`).
    IpInConflict,
    /// A vNIC names two subnets of one address family: it may hold at most one IPv4 and one IPv6
    /// address on its network (a dual-stack vNIC); name one subnet of each family.
    DuplicateFamily,
}

impl RejectionCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionCode::InvalidRequest => "invalid_request",
            RejectionCode::InvalidMac => "invalid_mac",
            RejectionCode::InvalidCidr => "invalid_cidr",
            RejectionCode::InvalidIp => "invalid_ip",
            RejectionCode::InvalidGateway => "invalid_gateway",
            RejectionCode::InvalidPool => "invalid_pool",
            RejectionCode::UnsupportedSubnet => "unsupported_subnet",
            RejectionCode::AddressFamilyMismatch => "address_family_mismatch",
            RejectionCode::ReservedAddress => "reserved_address",
            RejectionCode::SubnetTooLarge => "subnet_too_large",
            RejectionCode::SubnetTooSmall => "subnet_too_small",
            RejectionCode::UnknownNetwork => "unknown_network",
            RejectionCode::UnknownSubnet => "unknown_subnet",
            RejectionCode::IpamDisabled => "ipam_disabled",
            RejectionCode::SubnetExhausted => "subnet_exhausted",
            RejectionCode::IpInUse => "ip_in_use",
            RejectionCode::IpOutsideSubnet => "ip_outside_subnet",
            RejectionCode::IpNotAssignable => "ip_not_assignable",
            RejectionCode::DuplicateMac => "duplicate_mac",
            RejectionCode::OverlappingSubnet => "overlapping_subnet",
            RejectionCode::SubnetInUse => "subnet_in_use",
            RejectionCode::SubnetConflict => "subnet_conflict",
            RejectionCode::VnicConflict => "vnic_conflict",
            RejectionCode::InvalidPolicy => "invalid_policy",
            RejectionCode::IpQuarantined => "ip_quarantined",
            RejectionCode::IpInConflict => "ip_in_conflict",
            RejectionCode::DuplicateFamily => "duplicate_family",
        }
    }
}

impl fmt::Display for RejectionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal before it is wrapped into an event: what went wrong, in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: RejectionCode,
    pub message: String,
    /// The subnet the refusal is about, when the request named several (a dual-stack vNIC) and
    /// one of them failed; `None` lets the rejection name the request's own subnet, if it has one.
    pub subnet_id: Option<SubnetId>,
}

impl Rejection {
    pub fn new(code: RejectionCode, message: impl Into<String>) -> Rejection {
        Rejection { code, message: message.into(), subnet_id: None }
    }

    /// The same refusal, about `subnet_id`.
    pub fn in_subnet(self, subnet_id: SubnetId) -> Rejection {
        Rejection { subnet_id: Some(subnet_id), ..self }
    }
}
