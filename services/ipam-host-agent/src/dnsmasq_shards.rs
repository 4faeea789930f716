//! How one network's hosts are spread over several dnsmasq processes, and what each process must do
//! when the hosts change. Pure: no files, no processes, no clock (the caller says how long ago a
//! shard was started), so every decision of the dnsmasq backend is tested here without I/O.
//!
//! # Why shards (dnsmasq 2.90)
//! dnsmasq checks every `dhcp-host` line it loads against every one it already holds (a duplicate
//! address check), so loading n hosts costs time quadratic in n: about 6 s for 65k, during which
//! that process answers nobody. Lines added later as files in `--dhcp-hostsdir` cost the same per
//! line, and dropping a line needs a reload. Splitting a network's hosts by MAC over k processes
//! divides every load by k²: at 65k over 32 shards a shard holds about 2k hosts and loads in about
//! 10 ms, and a reload stops one shard for that long while the others keep answering.
//!
//! Every shard binds the same interface (dnsmasq sets `SO_REUSEADDR`/`SO_REUSEPORT` on its DHCP
//! socket under `bind-interfaces`), so each receives every broadcast DISCOVER and REQUEST and
//! answers only the MACs it holds (`dhcp-ignore=tag:!known`). A renewal unicast to the server
//! address would reach one shard only (the one bound last), so a sharded server also runs a relay
//! ([`crate::dhcp_relay`]) that takes unicast requests and broadcasts them to every shard.
//!
//! # What a shard does on a change ([`ShardState::decide`])
//! dnsmasq answers a MAC from its newest line and keeps every line until it reloads. So a new host
//! or a moved MAC is a newer line, a released MAC a newer `MAC,ignore` line (answered no more at
//! once), and a reload is needed only when dnsmasq would refuse a line (its address is still held
//! by an older one) or to drop stale lines, at most once per [`COMPACTION_INTERVAL`].
//!
//! # Dual-stack hosts
//! A MAC may hold one address of each family on a network (a dual-stack vNIC). Its two addresses
//! are one line, `MAC,IPv4,[IPv6]`, the form dnsmasq's manual gives for such a host ("a single
//! --dhcp-host may contain an IPv4 address or one or more IPv6 addresses, or both"). dnsmasq 2.90
//! also serves two lines of one MAC, one per family, when it loads them together
//! (`tests/it/dhcp_dual_stack.rs` passes either way); one line is kept because it keeps this
//! module's model exact: a MAC's newest line is everything it is answered, and one `MAC,ignore`
//! masks all of it. A host is therefore a MAC and its [`HostAddresses`]. A family added to a MAC
//! that already has a line is a newer line holding the older one's address again, which dnsmasq
//! refuses, so that reloads the shard; the allocator emits both reservations of a dual-stack vNIC
//! in one step, so an agent usually reads them together and writes one line.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ipam_core::IpFamily;

use ipam_core::Mac;
use ipam_core::dhcp_plan::{HostChange, NetworkDhcpConfig};

/// A fresh server gets enough shards for about this many hosts each (a load of ~10 ms).
pub const SHARD_TARGET_HOSTS: usize = 2048;
/// A growing server re-shards (every shard restarts) when its hosts average more than this per
/// shard, to the count a fresh server would get.
pub const SHARD_SPLIT_HOSTS: usize = 2 * SHARD_TARGET_HOSTS;
/// At most this many processes per network by default; beyond, shards grow instead.
pub const MAX_SHARDS: usize = 64;
/// A shard reloads to drop stale lines (released hosts, old addresses of moved hosts) at most this
/// often, so a burst of VM stops costs one reload, not one each. A released MAC is masked by a
/// `MAC,ignore` line at once, so this bounds only how long its address stays unusable for another
/// MAC of the same shard without a reload; such a re-use reloads the shard at once.
pub const COMPACTION_INTERVAL: Duration = Duration::from_secs(10);

/// The shard count for a server started with `hosts` hosts, at most `max_shards` (a power of two):
/// a power of two, so that doubling it splits every shard in two.
pub fn shard_count(hosts: usize, max_shards: usize) -> usize {
    debug_assert!(max_shards.is_power_of_two());
    hosts.div_ceil(SHARD_TARGET_HOSTS).next_power_of_two().clamp(1, max_shards)
}

/// Whether a server with `shards` shards must re-shard to hold `hosts` hosts.
pub fn must_split(shards: usize, hosts: usize, max_shards: usize) -> bool {
    shards < max_shards && hosts > shards * SHARD_SPLIT_HOSTS
}

/// Checks an operator's shard limit: a power of two from 1 to [`MAX_SHARDS`].
pub fn parse_max_shards(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n.is_power_of_two() && n <= MAX_SHARDS => Ok(n),
        _ => Err(format!("`{text}` is not a power of two from 1 to {MAX_SHARDS}")),
    }
}

/// The shard that holds `mac` among `shards` (a power of two). Fibonacci hashing of the six octets:
/// stable across runs and versions (shard directories outlive the process), and spread even for
/// MACs that differ in their last octets only.
pub fn shard_of(mac: Mac, shards: usize) -> usize {
    debug_assert!(shards.is_power_of_two());
    let mut octets = [0u8; 8];
    octets[2..].copy_from_slice(&mac.octets());
    let hash = u64::from_be_bytes(octets).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if shards <= 1 { 0 } else { (hash >> (64 - shards.trailing_zeros())) as usize }
}

/// The addresses a MAC is answered with on a network: at most one of each family (the allocator
/// gives a vNIC no more), written as one `dhcp-host` line (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostAddresses {
    pub ipv4: Option<IpAddr>,
    pub ipv6: Option<IpAddr>,
}

impl HostAddresses {
    /// One address.
    pub fn of(ip: IpAddr) -> HostAddresses {
        HostAddresses::default().with(ip)
    }

    /// These addresses with `ip` as the one of its family.
    pub fn with(mut self, ip: IpAddr) -> HostAddresses {
        match IpFamily::of(ip) {
            IpFamily::Ipv4 => self.ipv4 = Some(ip),
            IpFamily::Ipv6 => self.ipv6 = Some(ip),
        }
        self
    }

    /// The addresses, IPv4 first (the order of a `dhcp-host` line).
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4.iter().chain(&self.ipv6).copied()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.iter().any(|held| held == ip)
    }

    /// These addresses without `ip` (unchanged when `ip` is not among them).
    pub fn without(mut self, ip: IpAddr) -> HostAddresses {
        for held in [&mut self.ipv4, &mut self.ipv6] {
            if *held == Some(ip) {
                *held = None;
            }
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ipv4.is_none() && self.ipv6.is_none()
    }

    /// These addresses once `change` (a host of this MAC that came or went) is applied.
    pub fn changed_by(self, change: &HostChange) -> HostAddresses {
        if change.served { self.with(change.host.ip) } else { self.without(change.host.ip) }
    }
}

/// Splits the desired hosts of a network into its shards.
pub fn split(hosts: &BTreeMap<Mac, HostAddresses>, shards: usize) -> Vec<BTreeMap<Mac, HostAddresses>> {
    let mut split = vec![BTreeMap::new(); shards];
    for (mac, addresses) in hosts {
        split[shard_of(*mac, shards)].insert(*mac, *addresses);
    }
    split
}

/// Applies one host change of the plan to a network's (or a shard's) hosts by MAC: a served host
/// gives its MAC the address of its family, a host gone takes that address away (only if the MAC
/// still holds it: a MAC moved within its family has its new address already), and a MAC left
/// with no address is dropped. Exact while a MAC holds at most one address per family on a
/// network, which the allocator ensures (a second vNIC with the MAC is refused `duplicate_mac`);
/// a hostile writer of `ipam.reservations` breaking that gets the MAC's newest address served.
pub fn apply_host_change(hosts: &mut BTreeMap<Mac, HostAddresses>, change: &HostChange) {
    let mac = change.host.mac;
    let addresses = hosts.get(&mac).copied().unwrap_or_default().changed_by(change);
    if addresses.is_empty() {
        hosts.remove(&mac);
    } else {
        hosts.insert(mac, addresses);
    }
}

/// A network's hosts by MAC, each with its addresses (one per family).
pub fn desired_hosts(config: &NetworkDhcpConfig) -> BTreeMap<Mac, HostAddresses> {
    let mut hosts: BTreeMap<Mac, HostAddresses> = BTreeMap::new();
    for subnet in &config.subnets {
        for host in &subnet.hosts {
            let addresses = hosts.entry(host.mac).or_default();
            *addresses = addresses.with(host.ip);
        }
    }
    hosts
}

/// What one shard's dnsmasq holds: its base file plus every hosts-directory addition since it
/// started. dnsmasq answers a MAC from its newest line, and keeps every line until it reloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardState {
    /// Each MAC's newest line: the addresses it is answered with, or `None` when a `MAC,ignore`
    /// line masks it.
    pub newest: BTreeMap<Mac, Option<HostAddresses>>,
    /// Every address a line holds, masked or not, with its MAC: dnsmasq refuses a new line whose
    /// address is among them ("duplicate dhcp-host IP address").
    pub addresses: BTreeMap<IpAddr, Mac>,
}

impl ShardState {
    /// A shard started with `hosts` in its base file.
    pub fn loaded(hosts: &BTreeMap<Mac, HostAddresses>) -> ShardState {
        let mut state = ShardState::default();
        state.add(hosts, &BTreeSet::new());
        state
    }

    /// Records an addition dnsmasq has been given.
    pub fn add(&mut self, hosts: &BTreeMap<Mac, HostAddresses>, ignore: &BTreeSet<Mac>) {
        for (mac, addresses) in hosts {
            self.newest.insert(*mac, Some(*addresses));
            self.addresses.extend(addresses.iter().map(|ip| (ip, *mac)));
        }
        for mac in ignore {
            self.newest.insert(*mac, None);
        }
    }

    /// Decides what the shard does to answer exactly `desired` (its part of the plan), given how
    /// long ago it (re)started.
    pub fn decide(&self, desired: &BTreeMap<Mac, HostAddresses>, since_start: Duration) -> ShardAction {
        let mut hosts = BTreeMap::new();
        let mut collides = false;
        let mut wanted = 0;
        for (mac, addresses) in desired {
            wanted += addresses.iter().count();
            if self.newest.get(mac) != Some(&Some(*addresses)) {
                // New, moved to other addresses, a family added or dropped, or masked: a newer line
                // wins, unless dnsmasq still holds one of its addresses (even for this very MAC)
                // and refuses it.
                collides |= addresses.iter().any(|ip| self.addresses.contains_key(&ip));
                hosts.insert(*mac, *addresses);
            }
        }
        let ignore: BTreeSet<Mac> = self
            .newest
            .iter()
            .filter(|(mac, newest)| newest.is_some() && !desired.contains_key(mac))
            .map(|(mac, _)| *mac)
            .collect();
        // Every desired address is held after the addition; any other is a stale line.
        let added: usize = hosts.values().map(|addresses: &HostAddresses| addresses.iter().count()).sum();
        let stale = self.addresses.len() + added > wanted;
        if collides || (stale && since_start >= COMPACTION_INTERVAL) {
            ShardAction::Compact
        } else if hosts.is_empty() && ignore.is_empty() {
            ShardAction::Keep { stale }
        } else {
            ShardAction::Add { hosts, ignore, stale }
        }
    }
}

/// What one shard's dnsmasq must do to answer its desired hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardAction {
    /// Nothing to write. `stale` says dnsmasq holds lines no host needs, whose compaction is put
    /// off.
    Keep { stale: bool },
    /// One new hosts-directory file (read within milliseconds) with a line for each of `hosts`, and
    /// a `MAC,ignore` line for each MAC in `ignore` (released: no longer answered).
    Add { hosts: BTreeMap<Mac, HostAddresses>, ignore: BTreeSet<Mac>, stale: bool },
    /// Restart with exactly the desired hosts in the base file, an empty hosts directory and the
    /// leases of hosts that are gone dropped.
    Compact,
}

#[cfg(test)]
mod tests {
    use ipam_core::SubnetId;

    use super::*;

    fn mac(n: u32) -> Mac {
        let b = n.to_be_bytes();
        Mac::from_octets([0x52, 0x54, b[0], b[1], b[2], b[3]]).unwrap()
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn hosts(pairs: &[(u32, u8)]) -> BTreeMap<Mac, HostAddresses> {
        pairs.iter().map(|(m, i)| (mac(*m), HostAddresses::of(ip(*i)))).collect()
    }

    fn state(lines: &[(u32, Option<u8>)]) -> ShardState {
        let mut state = ShardState::default();
        for (m, line) in lines {
            match line {
                Some(i) => state.add(&hosts(&[(*m, *i)]), &BTreeSet::new()),
                None => state.add(&BTreeMap::new(), &BTreeSet::from([mac(*m)])),
            }
        }
        state
    }

    fn add(pairs: &[(u32, u8)], ignore: &[u32], stale: bool) -> ShardAction {
        ShardAction::Add { hosts: hosts(pairs), ignore: ignore.iter().map(|m| mac(*m)).collect(), stale }
    }

    /// Given the lines a shard's dnsmasq read (oldest first; `None` is a `MAC,ignore` line), when
    /// `desired` is its part of the plan, `since_start_ms` after it started: what it does.
    fn check(lines: &[(u32, Option<u8>)], desired: &[(u32, u8)], since_start_ms: u64) -> ShardAction {
        state(lines).decide(&hosts(desired), Duration::from_millis(since_start_ms))
    }

    #[test]
    fn shard_count_grows_in_powers_of_two_and_stops_at_the_maximum() {
        let counts: Vec<usize> =
            [0, 1, 2048, 2049, 8192, 65_000, 1_000_000].iter().map(|n| shard_count(*n, MAX_SHARDS)).collect();
        assert_eq!(counts, [1, 1, 1, 2, 4, 32, 64]);
        assert_eq!(shard_count(65_000, 1), 1);
        assert!(!must_split(1, SHARD_SPLIT_HOSTS, MAX_SHARDS));
        assert!(must_split(1, SHARD_SPLIT_HOSTS + 1, MAX_SHARDS));
        assert!(!must_split(1, SHARD_SPLIT_HOSTS + 1, 1));
        assert!(!must_split(MAX_SHARDS, usize::MAX / 2, MAX_SHARDS));
    }

    #[test]
    fn an_operator_shard_limit_must_be_a_power_of_two_up_to_the_maximum() {
        assert_eq!(parse_max_shards("1"), Ok(1));
        assert_eq!(parse_max_shards("64"), Ok(64));
        for bad in ["0", "3", "128", "-1", "many"] {
            assert!(parse_max_shards(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn macs_spread_evenly_and_stably_over_shards() {
        let macs: BTreeMap<Mac, HostAddresses> = (0..65_536u32).map(|n| (mac(n), HostAddresses::of(ip(1)))).collect();
        let sizes: Vec<usize> = split(&macs, 32).iter().map(BTreeMap::len).collect();
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(*min > 1900 && *max < 2200, "uneven shards: {sizes:?}");
        // Doubling splits a shard in two: a MAC of shard s goes to 2s or 2s+1.
        for n in 0..1000 {
            let (small, large) = (shard_of(mac(n), 8), shard_of(mac(n), 16));
            assert_eq!(large / 2, small);
        }
        assert_eq!(shard_of(mac(12345), 1), 0);
        // Pinned: shard directories outlive the process, so the hash must not change.
        assert_eq!([shard_of(mac(1), 64), shard_of(mac(2), 64), shard_of(mac(3), 64)], [15, 55, 30]);
    }

    fn config(hosts: &[(u128, u32, u8)]) -> NetworkDhcpConfig {
        use ipam_core::dhcp_plan::{DhcpHost, SubnetDhcpConfig};
        let mut subnets: Vec<SubnetDhcpConfig> = Vec::new();
        for (subnet, m, i) in hosts {
            let subnet_id = SubnetId::from_u128(*subnet);
            if subnets.last().is_none_or(|last| last.subnet_id != subnet_id) {
                subnets.push(SubnetDhcpConfig {
                    subnet_id,
                    cidr: "10.0.0.0/24".parse().unwrap(),
                    router: ip(1),
                    dns_servers: vec![],
                    ntp_servers: vec![],
                    lease_secs: 3600,
                    server_address: None,
                    server_address_refused: None,
                    hosts: vec![],
                });
            }
            subnets.last_mut().unwrap().hosts.push(DhcpHost { mac: mac(*m), ip: ip(*i) });
        }
        NetworkDhcpConfig {
            network_id: ipam_core::NetworkId::from_u128(1),
            epoch: 1,
            interface: "br0".parse().unwrap(),
            subnets,
            conflict_probe: true,
        }
    }

    /// The plan's hosts as a list of changes: every host of `config`, served.
    fn served(config: &NetworkDhcpConfig) -> Vec<HostChange> {
        config
            .subnets
            .iter()
            .flat_map(|subnet| {
                subnet.hosts.iter().map(|host| HostChange {
                    network_id: config.network_id,
                    subnet_id: subnet.subnet_id,
                    host: *host,
                    served: true,
                })
            })
            .collect()
    }

    fn gone(changes: Vec<HostChange>) -> Vec<HostChange> {
        changes.into_iter().map(|change| HostChange { served: false, ..change }).collect()
    }

    fn folded(hosts: &BTreeMap<Mac, HostAddresses>, changes: &[HostChange]) -> BTreeMap<Mac, HostAddresses> {
        let mut hosts = hosts.clone();
        for change in changes {
            apply_host_change(&mut hosts, change);
        }
        hosts
    }

    #[test]
    fn host_changes_folded_into_the_hosts_give_the_new_plans_hosts() {
        // MAC 3 moves to a higher address, MAC 8 to a lower one, in either order of the two events;
        // MAC 2 goes, 6 and 7 come.
        let old = config(&[(1, 1, 1), (1, 2, 2), (1, 3, 3), (1, 8, 8), (2, 4, 9)]);
        let new = config(&[(1, 1, 1), (1, 8, 4), (1, 3, 5), (1, 6, 6), (2, 4, 9), (2, 7, 10)]);
        let moved_in = served(&config(&[(1, 8, 4), (1, 3, 5), (1, 6, 6), (2, 7, 10)]));
        let moved_out = gone(served(&config(&[(1, 2, 2), (1, 3, 3), (1, 8, 8)])));
        let out_first: Vec<HostChange> = moved_out.iter().chain(&moved_in).copied().collect();
        let in_first: Vec<HostChange> = moved_in.iter().chain(&moved_out).copied().collect();
        assert_eq!(folded(&desired_hosts(&old), &out_first), desired_hosts(&new));
        assert_eq!(folded(&desired_hosts(&old), &in_first), desired_hosts(&new));
        // A removal of what the MAC does not hold changes nothing.
        assert_eq!(folded(&desired_hosts(&new), &gone(served(&config(&[(1, 1, 7)])))), desired_hosts(&new));
    }

    #[test]
    fn new_hosts_are_added_without_a_reload() {
        assert_eq!(check(&[(1, Some(1))], &[(1, 1), (2, 2)], 0), add(&[(2, 2)], &[], false));
        assert_eq!(check(&[(1, Some(1))], &[(1, 1)], 0), ShardAction::Keep { stale: false });
    }

    #[test]
    fn a_released_mac_is_masked_at_once_and_its_line_compacted_later() {
        assert_eq!(check(&[(1, Some(1)), (2, Some(2))], &[(1, 1)], 10), add(&[], &[2], true));
        // Masked: nothing more to write until the compaction interval has passed.
        assert_eq!(check(&[(1, Some(1)), (2, Some(2)), (2, None)], &[(1, 1)], 10), ShardAction::Keep { stale: true });
        assert_eq!(check(&[(1, Some(1)), (2, Some(2)), (2, None)], &[(1, 1)], 10_000), ShardAction::Compact);
    }

    #[test]
    fn an_address_reused_by_another_mac_of_the_same_shard_reloads_at_once() {
        // dnsmasq would refuse the new line: it still holds 10.0.0.2 for MAC 2.
        assert_eq!(check(&[(1, Some(1)), (2, Some(2))], &[(1, 1), (3, 2)], 10), ShardAction::Compact);
        assert_eq!(check(&[(1, Some(1)), (2, Some(2)), (2, None)], &[(1, 1), (3, 2)], 10), ShardAction::Compact);
    }

    #[test]
    fn a_masked_mac_back_on_its_old_address_reloads_at_once() {
        // Its old line holds the address, so dnsmasq would refuse the line that unmasks it.
        assert_eq!(check(&[(1, Some(1)), (1, None)], &[(1, 1)], 10), ShardAction::Compact);
        // On a new address, a newer line is enough.
        assert_eq!(check(&[(1, Some(1)), (1, None)], &[(1, 5)], 10), add(&[(1, 5)], &[], true));
    }

    #[test]
    fn a_mac_moved_to_a_free_address_gets_a_newer_line() {
        assert_eq!(check(&[(1, Some(1))], &[(1, 5)], 10), add(&[(1, 5)], &[], true));
        // ...which leaves its old address stale: another MAC taking it reloads.
        assert_eq!(check(&[(1, Some(1)), (1, Some(5))], &[(1, 5), (2, 1)], 10), ShardAction::Compact);
    }

    fn ip6(n: u8) -> IpAddr {
        IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(n)])
    }

    /// `config(v4)` with a second subnet (id 9) holding the IPv6 hosts `v6` (MAC, address).
    fn dual_config(v4: &[(u128, u32, u8)], v6: &[(u32, u8)]) -> NetworkDhcpConfig {
        use ipam_core::dhcp_plan::DhcpHost;
        let mut dual = config(v4);
        let mut subnet = config(&[(9, 0, 0)]).subnets.remove(0);
        subnet.cidr = "2001:db8::/64".parse().unwrap();
        subnet.hosts = v6.iter().map(|(m, i)| DhcpHost { mac: mac(*m), ip: ip6(*i) }).collect();
        dual.subnets.push(subnet);
        dual
    }

    #[test]
    fn a_dual_stack_mac_is_one_host_with_both_addresses() {
        let config = dual_config(&[(1, 1, 1), (1, 2, 2)], &[(1, 7)]);
        let hosts = desired_hosts(&config);
        assert_eq!(hosts[&mac(1)], HostAddresses { ipv4: Some(ip(1)), ipv6: Some(ip6(7)) });
        assert_eq!(hosts[&mac(2)], HostAddresses::of(ip(2)));
        assert_eq!(hosts[&mac(1)].iter().collect::<Vec<_>>(), [ip(1), ip6(7)], "IPv4 first");
    }

    #[test]
    fn a_family_added_or_dropped_changes_the_mac_with_all_its_addresses() {
        let v4_only = desired_hosts(&config(&[(1, 1, 1), (1, 2, 2)]));
        let v6 = served(&dual_config(&[], &[(1, 7)]));
        let both = HostAddresses { ipv4: Some(ip(1)), ipv6: Some(ip6(7)) };
        let dual = folded(&v4_only, &v6);
        assert_eq!(dual[&mac(1)], both);
        assert_eq!(folded(&dual, &gone(v6))[&mac(1)], HostAddresses::of(ip(1)));
        let v4 = gone(served(&config(&[(1, 1, 1)])));
        assert_eq!(folded(&v4_only, &v4).get(&mac(1)), None, "a MAC with no address left is gone");
    }

    #[test]
    fn a_new_dual_stack_host_is_one_added_line_and_a_family_added_later_reloads() {
        let both = BTreeMap::from([(mac(1), HostAddresses { ipv4: Some(ip(1)), ipv6: Some(ip6(7)) })]);
        let action = ShardState::default().decide(&both, Duration::ZERO);
        assert_eq!(action, ShardAction::Add { hosts: both.clone(), ignore: BTreeSet::new(), stale: false });
        let mut state = ShardState::default();
        state.add(&both, &BTreeSet::new());
        assert_eq!(state.decide(&both, Duration::ZERO), ShardAction::Keep { stale: false });
        // The IPv4 line came first: dnsmasq would refuse a newer line holding its address again.
        assert_eq!(ShardState::loaded(&hosts(&[(1, 1)])).decide(&both, Duration::ZERO), ShardAction::Compact);
        // Dropping the IPv6 address leaves its line's address stale, and re-uses the IPv4 one.
        assert_eq!(state.decide(&hosts(&[(1, 1)]), Duration::ZERO), ShardAction::Compact);
    }
}
