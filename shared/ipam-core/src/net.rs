//! Subnets, address ranges and interface names, as values that cannot be wrong.
//!
//! Syntax is checked when a value is parsed ([`Cidr`] refuses host bits, [`InterfaceName`] refuses
//! anything a shell or a dnsmasq file could misread). The rules that tie several fields together
//! (the gateway inside the subnet, pools inside it and apart) are checked by [`SubnetSpec::new`],
//! which answers with a [`Rejection`] code so the engine learns exactly what to fix.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::rejection::{Rejection, RejectionCode};

/// A subnet prefix such as `10.0.0.0/24` or `2001:db8::/64`, with no host bits set.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(IpNet);

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

impl Cidr {
    pub fn net(self) -> IpNet {
        self.0
    }

    pub fn is_ipv4(self) -> bool {
        matches!(self.0, IpNet::V4(_))
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

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let net: IpNet = text.parse().map_err(|_| CidrError::Syntax(text.chars().take(64).collect()))?;
        if net.trunc() != net {
            return Err(CidrError::HostBits { given: text.to_owned(), network: net.trunc().to_string() });
        }
        Ok(Cidr(net))
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
/// At most this many DNS or NTP servers per subnet (DHCP options have a size limit).
pub const MAX_OPTION_SERVERS: usize = 8;
/// At most this many allocation pools per subnet.
pub const MAX_POOLS: usize = 64;

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
        let host_bits = if cidr.is_ipv4() { 32 } else { 128 } - cidr.prefix_len();
        if cidr.is_ipv4() && host_bits > MAX_IPV4_PREFIX_WIDTH {
            return reject(RejectionCode::SubnetTooLarge, format!("{cidr} is wider than /8"));
        }
        if host_bits < 2 {
            return reject(RejectionCode::SubnetTooSmall, format!("{cidr} has no room for hosts besides the gateway"));
        }
        if !cidr.contains(gateway) {
            return reject(RejectionCode::InvalidGateway, format!("gateway {gateway} is outside {cidr}"));
        }
        if cidr.is_reserved_address(gateway) {
            return reject(
                RejectionCode::InvalidGateway,
                format!("gateway {gateway} is the network or broadcast address of {cidr}"),
            );
        }
        for (what, servers) in [("dns_servers", &dns_servers), ("ntp_servers", &ntp_servers)] {
            if servers.len() > MAX_OPTION_SERVERS {
                return reject(
                    RejectionCode::InvalidRequest,
                    format!("{what} has {} entries; at most {MAX_OPTION_SERVERS} are allowed", servers.len()),
                );
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
                if pools.len() > MAX_POOLS {
                    return reject(
                        RejectionCode::InvalidPool,
                        format!("{} allocation pools given; at most {MAX_POOLS} are allowed", pools.len()),
                    );
                }
                pools.sort();
                for pool in &pools {
                    if pool.start > pool.end {
                        return reject(
                            RejectionCode::InvalidPool,
                            format!("pool {}-{} ends before it starts", pool.start, pool.end),
                        );
                    }
                    if !cidr.contains(pool.start) || !cidr.contains(pool.end) {
                        return reject(
                            RejectionCode::InvalidPool,
                            format!("pool {}-{} is not inside {cidr}", pool.start, pool.end),
                        );
                    }
                }
                if let Some(pair) = pools.windows(2).find(|pair| pair[1].start <= pair[0].end) {
                    return reject(
                        RejectionCode::InvalidPool,
                        format!(
                            "pools {}-{} and {}-{} overlap",
                            pair[0].start, pair[0].end, pair[1].start, pair[1].end
                        ),
                    );
                }
                pools
            }
        };
        Ok(SubnetSpec { cidr, gateway, dns_servers, ntp_servers, allocation_pools })
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
        assert!(spec("2001:db8::/48", "2001:db8::1", None).is_ok());
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
