//! Subnets, address ranges and interface names, as values that cannot be wrong.
//!
//! Syntax is checked when a value is parsed ([`Cidr`] refuses host bits, [`InterfaceName`] refuses
//! anything a shell or a dnsmasq file could misread). The rules that tie several fields together
//! (the gateway inside the subnet, pools inside it and apart) are checked by [`SubnetSpec::new`],
//! which answers with a [`Rejection`] code so the engine learns exactly what to fix.
//!
//! # What the DHCP backend can serve
//! A subnet that passes [`SubnetSpec::new`] must be one that dnsmasq 2.90, as the host agent
//! configures it, serves: one it refuses makes dnsmasq exit at start, which takes DHCP down for the
//! whole network. Observed with `dnsmasq --test` and by starting dnsmasq on a veth in a network
//! namespace, with files written the way `ipam-host-agent`'s `dnsmasq::render` writes them:
//! - an IPv6 `dhcp-range=…,static,<prefix>` with a prefix shorter than /64 is refused ("prefix
//!   length must be at least 64", exit status 1); /64 to /126 start;
//! - a DNS or NTP server of the other family is refused for IPv4 options and IPv6 DNS ("bad IP
//!   address", exit status 1), and accepted for IPv6 NTP, where no DHCPv6 client can use it;
//! - multicast, loopback, unspecified, reserved (240/4), link-local and IPv4-mapped subnets, and
//!   unspecified, multicast or loopback option servers, all start. They are refused anyway (see
//!   [`SpecialBlock`]): no guest can use such an address, and dnsmasq reads `0.0.0.0` and `::` in an
//!   option as "this server", which answers neither DNS nor NTP (the agent runs it with `port=0`).

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::rejection::{Rejection, RejectionCode};

/// A subnet prefix such as `10.0.0.0/24` or `2001:db8::/64`, with no host bits set. Written as text
/// in human-readable formats (JSON, the contract's); binary formats (the API's MessagePack
/// snapshot) carry the network address and the prefix length, read back without parsing text and
/// checked the same way.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(IpNet);

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            (self.0.addr(), self.0.prefix_len()).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Cidr, D::Error> {
        use serde::de::Error;
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            return text.parse().map_err(D::Error::custom);
        }
        let (addr, prefix): (IpAddr, u8) = Deserialize::deserialize(deserializer)?;
        // Formatted only for an error: a snapshot holds a CIDR per reservation.
        let given = || format!("{addr}/{prefix}");
        let net = IpNet::new(addr, prefix).map_err(|_| D::Error::custom(CidrError::Syntax(given())))?;
        Cidr::of_net(net, given).map_err(D::Error::custom)
    }
}

/// Why a string is not a usable CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not `address/prefix-length`; the sender must fix the value.
    #[error("`{0}` is not a CIDR (expected an address and a prefix length, like 10.0.0.0/24)")]
    Syntax(String),
    /// Bits below the prefix are set, so the value names a host, not a subnet.
    #[error("`{given}` has host bits set; the subnet is {network}")]
    HostBits { given: String, network: String },
}

/// An address family. A vNIC holds at most one address of each on its network (a dual-stack vNIC
/// one of both); IPv4 orders first, so a vNIC's addresses are reserved, released and listed IPv4
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpFamily {
    Ipv4,
    Ipv6,
}

impl IpFamily {
    pub fn of(ip: IpAddr) -> IpFamily {
        if ip.is_ipv4() { IpFamily::Ipv4 } else { IpFamily::Ipv6 }
    }

    /// The family as people write it: `IPv4`, `IPv6`.
    pub fn name(self) -> &'static str {
        match self {
            IpFamily::Ipv4 => "IPv4",
            IpFamily::Ipv6 => "IPv6",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Cidr {
    pub fn net(self) -> IpNet {
        self.0
    }

    pub fn is_ipv4(self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }

    pub fn family(self) -> IpFamily {
        if self.is_ipv4() { IpFamily::Ipv4 } else { IpFamily::Ipv6 }
    }

    pub fn prefix_len(self) -> u8 {
        self.0.prefix_len()
    }

    pub fn contains(self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }

    pub fn overlaps(self, other: Cidr) -> bool {
        self.0.contains(&other.0) || other.0.contains(&self.0)
    }

    /// The lowest address (the IPv4 network address, the IPv6 subnet-router anycast address).
    pub fn network(self) -> IpAddr {
        self.0.network()
    }

    /// The highest address (the IPv4 broadcast address).
    pub fn last(self) -> IpAddr {
        self.0.broadcast()
    }

    /// Whether `ip` is an address of this subnet that no host may hold: the network address, and
    /// for IPv4 the broadcast address.
    pub fn is_reserved_address(self, ip: IpAddr) -> bool {
        ip == self.network() || (self.is_ipv4() && ip == self.last())
    }
}

impl Cidr {
    /// `net` if it has no host bits set; `given` says how it was written, for the error.
    fn of_net(net: IpNet, given: impl FnOnce() -> String) -> Result<Cidr, CidrError> {
        if net.trunc() != net {
            return Err(CidrError::HostBits { given: given(), network: net.trunc().to_string() });
        }
        Ok(Cidr(net))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let net: IpNet = text.parse().map_err(|_| CidrError::Syntax(text.chars().take(64).collect()))?;
        Cidr::of_net(net, || text.to_owned())
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(text: String) -> Result<Cidr, CidrError> {
        text.parse()
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> String {
        cidr.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cidr({})", self.0)
    }
}

impl JsonSchema for Cidr {
    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "An IPv4 or IPv6 prefix with no host bits set, like 10.0.0.0/24 or 2001:db8::/64.",
            "pattern": "^[0-9A-Fa-f.:]+/[0-9]{1,3}$"
        })
    }
}

/// An inclusive range of addresses, `start` to `end`, both of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
pub struct IpRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.start <= ip && ip <= self.end
    }
}

/// A Linux interface name as the host reports it: 1 to 15 characters of `[A-Za-z0-9_.-]`, not
/// `.` or `..`. Nothing else can reach a command line or a dnsmasq file.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InterfaceName(String);

/// Why a string is not an interface name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an interface name (1 to 15 characters of letters, digits, '_', '.', '-')")]
pub struct InterfaceNameError(String);

impl InterfaceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for InterfaceName {
    type Err = InterfaceNameError;

    fn from_str(text: &str) -> Result<InterfaceName, InterfaceNameError> {
        let valid = (1..=15).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && text != "."
            && text != "..";
        if valid {
            Ok(InterfaceName(text.to_owned()))
        } else {
            Err(InterfaceNameError(text.chars().take(64).collect()))
        }
    }
}

impl TryFrom<String> for InterfaceName {
    type Error = InterfaceNameError;

    fn try_from(text: String) -> Result<InterfaceName, InterfaceNameError> {
        text.parse()
    }
}

impl From<InterfaceName> for String {
    fn from(name: InterfaceName) -> String {
        name.0
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InterfaceName({})", self.0)
    }
}

impl JsonSchema for InterfaceName {
    fn schema_name() -> Cow<'static, str> {
        "InterfaceName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A Linux interface name.",
            "pattern": "^[A-Za-z0-9_.-]{1,15}$"
        })
    }
}

/// The widest IPv4 subnet IPAM manages: a /8 keeps the address bitmap at 2 MiB.
pub const MAX_IPV4_PREFIX_WIDTH: u8 = 24;
/// The shortest IPv6 prefix IPAM manages: dnsmasq 2.90 refuses a DHCPv6 range shorter than /64
/// ("prefix length must be at least 64") and exits, so a /48 would stop the network's DHCP server.
pub const MIN_IPV6_PREFIX_LEN: u8 = 64;
/// At most this many DNS or NTP servers per subnet (DHCP options have a size limit).
pub const MAX_OPTION_SERVERS: usize = 8;
/// At most this many allocation pools per subnet.
pub const MAX_POOLS: usize = 64;

/// A subnet no wider than IPAM manages and with room for hosts.
fn check_size(cidr: Cidr) -> Result<(), Rejection> {
    let host_bits = if cidr.is_ipv4() { 32 } else { 128 } - cidr.prefix_len();
    if cidr.is_ipv4() && host_bits > MAX_IPV4_PREFIX_WIDTH {
        return Err(Rejection::new(RejectionCode::SubnetTooLarge, format!("{cidr} is wider than /8")));
    }
    if !cidr.is_ipv4() && cidr.prefix_len() < MIN_IPV6_PREFIX_LEN {
        let message = format!("{cidr} is wider than /{MIN_IPV6_PREFIX_LEN}, the widest DHCPv6 range dnsmasq serves");
        return Err(Rejection::new(RejectionCode::SubnetTooLarge, message));
    }
    if host_bits < 2 {
        let message = format!("{cidr} has no room for hosts besides the gateway");
        return Err(Rejection::new(RejectionCode::SubnetTooSmall, message));
    }
    Ok(())
}

/// A gateway inside the subnet, and not its network or broadcast address.
fn check_gateway(cidr: Cidr, gateway: IpAddr) -> Result<(), Rejection> {
    if !cidr.contains(gateway) {
        return Err(Rejection::new(RejectionCode::InvalidGateway, format!("gateway {gateway} is outside {cidr}")));
    }
    if cidr.is_reserved_address(gateway) {
        let message = format!("gateway {gateway} is the network or broadcast address of {cidr}");
        return Err(Rejection::new(RejectionCode::InvalidGateway, message));
    }
    Ok(())
}

/// Sorted pools: not too many, each in order and inside the subnet, none overlapping the next.
fn check_pools(cidr: Cidr, pools: &[IpRange]) -> Result<(), Rejection> {
    let reject = |message: String| Err(Rejection::new(RejectionCode::InvalidPool, message));
    if pools.len() > MAX_POOLS {
        return reject(format!("{} allocation pools given; at most {MAX_POOLS} are allowed", pools.len()));
    }
    for pool in pools {
        if pool.start > pool.end {
            return reject(format!("pool {}-{} ends before it starts", pool.start, pool.end));
        }
        if !cidr.contains(pool.start) || !cidr.contains(pool.end) {
            return reject(format!("pool {}-{} is not inside {cidr}", pool.start, pool.end));
        }
    }
    if let Some(pair) = pools.windows(2).find(|pair| pair[1].start <= pair[0].end) {
        return reject(format!(
            "pools {}-{} and {}-{} overlap",
            pair[0].start, pair[0].end, pair[1].start, pair[1].end
        ));
    }
    Ok(())
}

/// A subnet definition that has passed every check: what the allocator and DHCP servers use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetSpec {
    pub cidr: Cidr,
    pub gateway: IpAddr,
    pub dns_servers: Vec<IpAddr>,
    pub ntp_servers: Vec<IpAddr>,
    /// The ranges dynamic allocation draws from, sorted and disjoint. When the engine gives none,
    /// this is the whole subnet less its network (and IPv4 broadcast) address.
    pub allocation_pools: Vec<IpRange>,
}

impl SubnetSpec {
    /// Checks a subnet definition as a whole. `allocation_pools: None` means the whole subnet.
    pub fn new(
        cidr: Cidr,
        gateway: IpAddr,
        dns_servers: Vec<IpAddr>,
        ntp_servers: Vec<IpAddr>,
        allocation_pools: Option<Vec<IpRange>>,
    ) -> Result<SubnetSpec, Rejection> {
        let reject = |code, message: String| Err(Rejection::new(code, message));
        check_size(cidr)?;
        if let Some(block) = SpecialBlock::overlapping(cidr) {
            let message = format!("{cidr} overlaps {}, whose addresses no DHCP client may be given", block.describe());
            return reject(RejectionCode::UnsupportedSubnet, message);
        }
        check_gateway(cidr, gateway)?;
        for (what, servers) in [("dns_servers", &dns_servers), ("ntp_servers", &ntp_servers)] {
            if servers.len() > MAX_OPTION_SERVERS {
                return reject(
                    RejectionCode::InvalidRequest,
                    format!("{what} has {} entries; at most {MAX_OPTION_SERVERS} are allowed", servers.len()),
                );
            }
            for &server in servers.iter() {
                if server.is_ipv4() != cidr.is_ipv4() {
                    let family = if cidr.is_ipv4() { "IPv4" } else { "IPv6" };
                    let message = format!("{what} holds {server}, but {cidr} is an {family} subnet");
                    return reject(RejectionCode::AddressFamilyMismatch, message);
                }
                // DHCPv6 carries a multicast NTP address in its own suboption (RFC 5908), and
                // dnsmasq encodes it so; a multicast DNS server, or IPv4 NTP one, means nothing.
                let multicast_ntp = what == "ntp_servers" && server.is_ipv6() && server.is_multicast();
                match SpecialBlock::of(server) {
                    Some(SpecialBlock::LinkLocal) | None => {}
                    Some(SpecialBlock::Multicast) if multicast_ntp => {}
                    Some(block) => {
                        let message =
                            format!("{what} holds {server}, {}, where no server can be reached", block.describe());
                        return reject(RejectionCode::ReservedAddress, message);
                    }
                }
            }
        }
        let allocation_pools = match allocation_pools {
            None => {
                let start = next_address(cidr.network()).unwrap_or(cidr.network());
                let end =
                    if cidr.is_ipv4() { previous_address(cidr.last()).unwrap_or(cidr.last()) } else { cidr.last() };
                vec![IpRange { start, end }]
            }
            Some(mut pools) => {
                pools.sort();
                check_pools(cidr, &pools)?;
                pools
            }
        };
        Ok(SubnetSpec { cidr, gateway, dns_servers, ntp_servers, allocation_pools })
    }

    /// Checks the shape an address pool relies on (size, gateway, pools inside, sorted and
    /// disjoint), for a definition read back from a snapshot rather than made by [`SubnetSpec::new`]:
    /// a damaged snapshot must be refused, never make the allocator panic. The other rules (special
    /// blocks, DNS and NTP servers) are left out, so a subnet an earlier version accepted restores.
    pub fn check_shape(&self) -> Result<(), Rejection> {
        check_size(self.cidr)?;
        check_gateway(self.cidr, self.gateway)?;
        check_pools(self.cidr, &self.allocation_pools)?;
        if !self.allocation_pools.is_sorted() {
            return Err(Rejection::new(RejectionCode::InvalidPool, "the allocation pools are not in order".to_owned()));
        }
        Ok(())
    }

    /// Whether the allocator may hand out `ip` at all (pools aside): inside the subnet and not its
    /// network, broadcast or gateway address.
    pub fn is_assignable(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip) && !self.cidr.is_reserved_address(ip) && ip != self.gateway
    }

    /// Whether two definitions of one subnet differ only in what can change under live reservations.
    pub fn differs_only_in_options(&self, other: &SubnetSpec) -> bool {
        self.cidr == other.cidr && self.gateway == other.gateway && self.allocation_pools == other.allocation_pools
    }
}

/// A special-purpose address block (RFC 6890's registries) from which no DHCP client may be given
/// an address.
///
/// Subnets, fixed IPs and DNS/NTP servers in these blocks are refused. Link-local is refused for
/// subnets and fixed IPs (hosts configure 169.254/16 and fe80::/10 themselves, RFC 3927 §1.6 and
/// RFC 4862; a leased one would collide with a guest's own), but allowed for DNS and NTP servers,
/// which clouds put there (169.254.169.253, fe80::…). dnsmasq 2.90 starts with any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialBlock {
    /// 0.0.0.0/8 ("this network") and `::`.
    Unspecified,
    /// 127.0.0.0/8 and `::1`.
    Loopback,
    /// 169.254.0.0/16 and fe80::/10.
    LinkLocal,
    /// 224.0.0.0/4 and ff00::/8.
    Multicast,
    /// 240.0.0.0/4, with the limited broadcast address 255.255.255.255.
    Reserved,
    /// ::ffff:0:0/96: IPv4 addresses written as IPv6, never on an IPv6 wire (RFC 4291 §2.5.5.2).
    Ipv4Mapped,
}

impl SpecialBlock {
    /// The first address of each block (each block is a prefix, so a subnet overlaps a block iff
    /// the block holds the subnet's first address or the subnet holds the block's).
    const STARTS: [IpAddr; 10] = [
        IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
        IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)),
        IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)),
        IpAddr::V4(Ipv4Addr::new(240, 0, 0, 0)),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0)),
        IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
        IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)),
    ];

    /// The block `ip` is in, if any.
    pub fn of(ip: IpAddr) -> Option<SpecialBlock> {
        match ip {
            IpAddr::V4(v4) if v4.octets()[0] == 0 => Some(SpecialBlock::Unspecified),
            IpAddr::V4(v4) if v4.is_loopback() => Some(SpecialBlock::Loopback),
            IpAddr::V4(v4) if v4.is_link_local() => Some(SpecialBlock::LinkLocal),
            IpAddr::V4(v4) if v4.is_multicast() => Some(SpecialBlock::Multicast),
            IpAddr::V4(v4) if v4.octets()[0] >= 240 => Some(SpecialBlock::Reserved),
            IpAddr::V6(v6) if v6.is_unspecified() => Some(SpecialBlock::Unspecified),
            IpAddr::V6(v6) if v6.is_loopback() => Some(SpecialBlock::Loopback),
            IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some(SpecialBlock::LinkLocal),
            IpAddr::V6(v6) if v6.is_multicast() => Some(SpecialBlock::Multicast),
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some(SpecialBlock::Ipv4Mapped),
            _ => None,
        }
    }

    /// A block `cidr` shares an address with, if any.
    pub fn overlapping(cidr: Cidr) -> Option<SpecialBlock> {
        SpecialBlock::of(cidr.network())
            .or_else(|| SpecialBlock::STARTS.into_iter().find(|&start| cidr.contains(start)).and_then(SpecialBlock::of))
    }

    /// The block in words, for a rejection message.
    pub fn describe(self) -> &'static str {
        match self {
            SpecialBlock::Unspecified => "the unspecified block (0.0.0.0/8, ::)",
            SpecialBlock::Loopback => "the loopback block (127.0.0.0/8, ::1)",
            SpecialBlock::LinkLocal => "the link-local block (169.254.0.0/16, fe80::/10)",
            SpecialBlock::Multicast => "the multicast block (224.0.0.0/4, ff00::/8)",
            SpecialBlock::Reserved => "the reserved block (240.0.0.0/4, with broadcast 255.255.255.255)",
            SpecialBlock::Ipv4Mapped => "the IPv4-mapped block (::ffff:0:0/96)",
        }
    }
}

/// `ip + 1`, or `None` at the top of the family.
pub fn next_address(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).checked_add(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(v6) => u128::from(v6).checked_add(1).map(|n| IpAddr::V6(n.into())),
    }
}

/// `ip - 1`, or `None` at the bottom of the family.
pub fn previous_address(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).checked_sub(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(v6) => u128::from(v6).checked_sub(1).map(|n| IpAddr::V6(n.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn a_cidr_is_text_in_json_and_address_and_prefix_in_messagepack_both_checked() {
        for text in ["10.1.0.0/16", "192.0.2.0/24", "2001:db8::/64", "0.0.0.0/0"] {
            let value = cidr(text);
            assert_eq!(serde_json::to_string(&value).unwrap(), format!("\"{text}\""));
            let binary = rmp_serde::to_vec(&value).unwrap();
            assert_eq!(rmp_serde::from_slice::<Cidr>(&binary).unwrap(), value, "{text}");
            assert_eq!(binary, rmp_serde::to_vec(&(value.network(), value.prefix_len())).unwrap());
        }
        let host_bits = rmp_serde::to_vec(&("10.1.0.1".parse::<IpAddr>().unwrap(), 16u8)).unwrap();
        let error = rmp_serde::from_slice::<Cidr>(&host_bits).unwrap_err().to_string();
        assert!(error.contains("10.1.0.1/16") && error.contains("10.1.0.0/16"), "{error}");
        let too_long = rmp_serde::to_vec(&("10.1.0.0".parse::<IpAddr>().unwrap(), 33u8)).unwrap();
        assert!(rmp_serde::from_slice::<Cidr>(&too_long).is_err());
        assert!(serde_json::from_str::<Cidr>("\"10.1.0.1/16\"").is_err());
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn spec(c: &str, gw: &str, pools: Option<Vec<(&str, &str)>>) -> Result<SubnetSpec, Rejection> {
        let pools = pools.map(|p| p.into_iter().map(|(s, e)| IpRange { start: ip(s), end: ip(e) }).collect());
        SubnetSpec::new(cidr(c), ip(gw), vec![], vec![], pools)
    }

    fn code(result: Result<SubnetSpec, Rejection>) -> RejectionCode {
        result.unwrap_err().code
    }

    #[test]
    fn cidr_refuses_host_bits_and_garbage() {
        assert!(matches!("10.0.0.5/24".parse::<Cidr>(), Err(CidrError::HostBits { .. })));
        assert!(matches!("10.0.0.0".parse::<Cidr>(), Err(CidrError::Syntax(_))));
        assert!(matches!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::Syntax(_))));
        assert_eq!(cidr("2001:db8::/64").to_string(), "2001:db8::/64");
    }

    #[test]
    fn default_pool_is_the_subnet_less_network_and_broadcast() {
        let v4 = spec("10.0.0.0/24", "10.0.0.1", None).unwrap();
        assert_eq!(v4.allocation_pools, vec![IpRange { start: ip("10.0.0.1"), end: ip("10.0.0.254") }]);
        let v6 = spec("2001:db8::/120", "2001:db8::1", None).unwrap();
        assert_eq!(v6.allocation_pools, vec![IpRange { start: ip("2001:db8::1"), end: ip("2001:db8::ff") }]);
    }

    #[test]
    fn gateway_must_be_a_host_address_of_the_subnet() {
        assert_eq!(code(spec("10.0.0.0/24", "10.0.1.1", None)), RejectionCode::InvalidGateway);
        assert_eq!(code(spec("10.0.0.0/24", "10.0.0.0", None)), RejectionCode::InvalidGateway);
        assert_eq!(code(spec("10.0.0.0/24", "10.0.0.255", None)), RejectionCode::InvalidGateway);
        assert_eq!(code(spec("10.0.0.0/24", "2001:db8::1", None)), RejectionCode::InvalidGateway);
    }

    #[test]
    fn size_limits() {
        assert_eq!(code(spec("10.0.0.0/7", "10.0.0.1", None)), RejectionCode::SubnetTooLarge);
        assert!(spec("10.0.0.0/8", "10.0.0.1", None).is_ok());
        assert_eq!(code(spec("10.0.0.0/31", "10.0.0.1", None)), RejectionCode::SubnetTooSmall);
        assert_eq!(code(spec("2001:db8::/127", "2001:db8::1", None)), RejectionCode::SubnetTooSmall);
    }

    /// dnsmasq 2.90 refuses a DHCPv6 range shorter than /64 and exits ("prefix length must be at
    /// least 64"); /64 to /126 start (checked by hand with the agent's rendering, see the module doc).
    #[test]
    fn ipv6_subnets_are_slash_64_or_narrower() {
        for wide in ["::/0", "2001:db8::/32", "2001:db8:90::/48", "2001:db8::/56", "2001:db8::/63"] {
            assert_eq!(code(spec(wide, "2001:db8::1", None)), RejectionCode::SubnetTooLarge, "{wide}");
        }
        for narrow in ["2001:db8::/64", "2001:db8::/65", "2001:db8::/80", "2001:db8::/112", "2001:db8::/126"] {
            assert!(spec(narrow, "2001:db8::1", None).is_ok(), "{narrow}");
        }
    }

    #[test]
    fn subnets_in_special_purpose_blocks_are_unsupported() {
        for (cidr, gateway) in [
            ("224.0.0.0/24", "224.0.0.1"),
            ("239.255.0.0/16", "239.255.0.1"),
            ("127.0.0.0/8", "127.0.0.1"),
            ("0.0.0.0/24", "0.0.0.1"),
            ("240.0.0.0/24", "240.0.0.1"),
            ("255.255.255.0/24", "255.255.255.1"),
            ("169.254.0.0/16", "169.254.0.1"),
            ("169.0.0.0/8", "169.0.0.1"),
            ("ff02::/64", "ff02::1"),
            ("::/64", "::2"),
            ("::/120", "::2"),
            ("::ffff:10.0.0.0/120", "::ffff:10.0.0.1"),
            ("::ffff:0:0/96", "::ffff:0:1"),
            ("fe80::/64", "fe80::1"),
            ("febf:ffff:ffff:ff00::/64", "febf:ffff:ffff:ff00::1"),
        ] {
            assert_eq!(code(spec(cidr, gateway, None)), RejectionCode::UnsupportedSubnet, "{cidr}");
        }
        for (cidr, gateway) in [
            ("10.0.0.0/8", "10.0.0.1"),
            ("126.0.0.0/8", "126.0.0.1"),
            ("169.253.0.0/16", "169.253.0.1"),
            ("223.255.255.0/24", "223.255.255.1"),
            ("100.64.0.0/10", "100.64.0.1"),
            ("fd00::/64", "fd00::1"),
            ("fec0::/64", "fec0::1"),
            ("0:0:0:1::/64", "0:0:0:1::1"),
        ] {
            assert!(spec(cidr, gateway, None).is_ok(), "{cidr}");
        }
    }

    fn with_options(c: &str, gw: &str, dns: &[&str], ntp: &[&str]) -> Result<SubnetSpec, Rejection> {
        let ips = |list: &[&str]| list.iter().map(|text| ip(text)).collect();
        SubnetSpec::new(cidr(c), ip(gw), ips(dns), ips(ntp), None)
    }

    #[test]
    fn dns_and_ntp_servers_are_of_the_subnets_family() {
        let mismatch = RejectionCode::AddressFamilyMismatch;
        assert_eq!(code(with_options("10.0.0.0/24", "10.0.0.1", &["2001:db8::53"], &[])), mismatch);
        assert_eq!(code(with_options("10.0.0.0/24", "10.0.0.1", &[], &["2001:db8::123"])), mismatch);
        assert_eq!(code(with_options("2001:db8::/64", "2001:db8::1", &["192.0.2.53"], &[])), mismatch);
        assert_eq!(code(with_options("2001:db8::/64", "2001:db8::1", &[], &["192.0.2.123"])), mismatch);
    }

    #[test]
    fn dns_and_ntp_servers_are_reachable_unicast_addresses() {
        let reserved = RejectionCode::ReservedAddress;
        for dns in ["0.0.0.0", "127.0.0.53", "224.0.0.251", "255.255.255.255", "240.0.0.1"] {
            assert_eq!(code(with_options("10.0.0.0/24", "10.0.0.1", &[dns], &[])), reserved, "{dns}");
            assert_eq!(code(with_options("10.0.0.0/24", "10.0.0.1", &[], &[dns])), reserved, "{dns}");
        }
        for dns in ["::", "::1", "ff02::fb", "::ffff:192.0.2.53"] {
            assert_eq!(code(with_options("2001:db8::/64", "2001:db8::1", &[dns], &[])), reserved, "{dns}");
        }
        for ntp in ["::", "::1", "::ffff:192.0.2.123"] {
            assert_eq!(code(with_options("2001:db8::/64", "2001:db8::1", &[], &[ntp])), reserved, "{ntp}");
        }
        // Link-local servers are common in clouds; a multicast NTP server has its own DHCPv6
        // suboption (RFC 5908).
        assert!(with_options("10.0.0.0/24", "10.0.0.1", &["169.254.169.253"], &["169.254.169.123"]).is_ok());
        assert!(with_options("2001:db8::/64", "2001:db8::1", &["fe80::53"], &["ff05::101", "fe80::123"]).is_ok());
    }

    #[test]
    fn special_blocks_of_single_addresses() {
        assert_eq!(SpecialBlock::of(ip("0.1.2.3")), Some(SpecialBlock::Unspecified));
        assert_eq!(SpecialBlock::of(ip("127.255.0.1")), Some(SpecialBlock::Loopback));
        assert_eq!(SpecialBlock::of(ip("169.254.255.255")), Some(SpecialBlock::LinkLocal));
        assert_eq!(SpecialBlock::of(ip("239.255.255.255")), Some(SpecialBlock::Multicast));
        assert_eq!(SpecialBlock::of(ip("255.255.255.255")), Some(SpecialBlock::Reserved));
        assert_eq!(SpecialBlock::of(ip("::")), Some(SpecialBlock::Unspecified));
        assert_eq!(SpecialBlock::of(ip("::1")), Some(SpecialBlock::Loopback));
        assert_eq!(SpecialBlock::of(ip("febf::1")), Some(SpecialBlock::LinkLocal));
        assert_eq!(SpecialBlock::of(ip("ff00::")), Some(SpecialBlock::Multicast));
        assert_eq!(SpecialBlock::of(ip("::ffff:10.0.0.1")), Some(SpecialBlock::Ipv4Mapped));
        for ordinary in ["1.0.0.0", "126.255.255.255", "223.255.255.255", "fec0::1", "feff::1", "::2", "2001:db8::"] {
            assert_eq!(SpecialBlock::of(ip(ordinary)), None, "{ordinary}");
        }
    }

    #[test]
    fn pools_must_be_inside_ordered_and_apart() {
        let ok = spec("10.0.0.0/24", "10.0.0.1", Some(vec![("10.0.0.100", "10.0.0.200"), ("10.0.0.10", "10.0.0.20")]));
        assert_eq!(ok.unwrap().allocation_pools[0].start, ip("10.0.0.10"), "pools are sorted");
        assert_eq!(
            code(spec("10.0.0.0/24", "10.0.0.1", Some(vec![("10.0.0.20", "10.0.0.10")]))),
            RejectionCode::InvalidPool
        );
        assert_eq!(
            code(spec("10.0.0.0/24", "10.0.0.1", Some(vec![("10.0.0.10", "10.0.1.10")]))),
            RejectionCode::InvalidPool
        );
        assert_eq!(
            code(spec("10.0.0.0/24", "10.0.0.1", Some(vec![("10.0.0.10", "10.0.0.20"), ("10.0.0.20", "10.0.0.30")]))),
            RejectionCode::InvalidPool
        );
    }

    #[test]
    fn interface_names() {
        assert!("eth0".parse::<InterfaceName>().is_ok());
        assert!("br-ovirt.100".parse::<InterfaceName>().is_ok());
        for bad in ["", "a-name-that-is-too-long", "eth0\n", "eth 0", "../x", "..", "eth0,x", "a=b"] {
            assert!(bad.parse::<InterfaceName>().is_err(), "{bad:?}");
        }
    }
}
