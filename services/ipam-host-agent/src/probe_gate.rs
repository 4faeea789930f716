//! Which reserved addresses a network's server may serve yet: the bookkeeping between the plan and
//! [`crate::probe`], kept apart from the actor so that it is tested without threads or sockets.
//!
//! A host (a MAC and its address in a subnet) that the provisioner has not served before is held
//! back from the server's configuration while it is probed; the other hosts of the same change go
//! through at once. A probe that nobody but the reserved MAC answered clears the host; one that
//! another MAC answered keeps it out as a conflict (the allocator hears of it and moves a dynamic
//! vNIC elsewhere: that is a new host, probed in its turn). Conflicts are probed again from time
//! to time ([`ProbeGate::recheck`]), so an address the squatter gave up is served without a restart.
//!
//! "Not served before" is judged per provisioner: its first configuration is taken as served
//! (after an agent restart those lines are in the server's files already; on a network that moved
//! here from a lost host, its guests hold their addresses), so only later additions are probed.
//! The gate keeps only the hosts it holds back, and is told what changed (a whole configuration
//! beside the previous one, or host changes), so a VM start costs the same whatever the size of
//! the network.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipam_core::dhcp_plan::{HostChange, NetworkDhcpConfig};
use ipam_core::{Mac, SubnetId};

/// One reserved client of a network: its subnet, address and MAC.
pub(crate) type HostKey = (SubnetId, IpAddr, Mac);

/// What one probe of a host found: the MAC that claimed the address besides the reserved one.
pub(crate) type ProbeResult = (HostKey, Option<Mac>);

/// Every host of `config`, by its key.
fn keys(config: &NetworkDhcpConfig) -> impl Iterator<Item = HostKey> + '_ {
    config.subnets.iter().flat_map(|subnet| subnet.hosts.iter().map(move |host| (subnet.subnet_id, host.ip, host.mac)))
}

#[derive(Debug, Default)]
pub(crate) struct ProbeGate {
    /// Hosts whose probe is under way.
    probing: BTreeSet<HostKey>,
    /// Hosts kept out, with the MAC last found holding their address.
    conflicts: BTreeMap<HostKey, Mac>,
}

impl ProbeGate {
    fn holds(&self, key: &HostKey) -> bool {
        self.probing.contains(key) || self.conflicts.contains_key(key)
    }

    /// A whole new configuration, `previous` being the one before (`None` for the provisioner's
    /// first): `config` without the hosts that may not be served yet, and the hosts to probe now
    /// (those new since `previous`; each once: a host already being probed is not listed again).
    pub(crate) fn admit(
        &mut self,
        previous: Option<&NetworkDhcpConfig>,
        config: &NetworkDhcpConfig,
    ) -> (NetworkDhcpConfig, Vec<HostKey>) {
        let mut to_probe = Vec::new();
        match previous {
            // Probing off serves everything, conflicts found earlier included: the operator chose.
            Some(previous) if config.conflict_probe => {
                let present: BTreeSet<HostKey> = keys(config).collect();
                self.probing.retain(|key| present.contains(key));
                self.conflicts.retain(|key, _| present.contains(key));
                let before: BTreeSet<HostKey> = keys(previous).collect();
                for key in present {
                    if !before.contains(&key) && !self.conflicts.contains_key(&key) && self.probing.insert(key) {
                        to_probe.push(key);
                    }
                }
            }
            _ => {
                self.probing.clear();
                self.conflicts.clear();
            }
        }
        let mut admitted = config.clone();
        if !self.probing.is_empty() || !self.conflicts.is_empty() {
            for subnet in &mut admitted.subnets {
                let subnet_id = subnet.subnet_id;
                subnet.hosts.retain(|host| !self.holds(&(subnet_id, host.ip, host.mac)));
            }
        }
        (admitted, to_probe)
    }

    /// Host changes of the configuration: the changes the server may take at once (hosts gone
    /// that it served, new hosts when probing is off), and the new hosts to probe first.
    pub(crate) fn admit_changes(&mut self, changes: &[HostChange], probe_on: bool) -> (Vec<HostChange>, Vec<HostKey>) {
        let (mut served, mut to_probe) = (Vec::new(), Vec::new());
        for change in changes {
            let key = change.key();
            if !change.served {
                // A host held back was never served: it is only forgotten.
                let held = self.probing.remove(&key) | self.conflicts.remove(&key).is_some();
                if !held {
                    served.push(*change);
                }
            } else if !probe_on {
                served.push(*change);
            } else if !self.holds(&key) {
                self.probing.insert(key);
                to_probe.push(key);
            }
        }
        (served, to_probe)
    }

    /// Takes in what probes found. Answers the conflicts to report (hosts found held by another
    /// MAC, unless the same MAC was reported for them already) and the hosts cleared, which the
    /// server may serve now. Hosts that left the configuration while being probed are forgotten.
    pub(crate) fn probed(
        &mut self,
        results: impl IntoIterator<Item = ProbeResult>,
    ) -> (Vec<(HostKey, Mac)>, Vec<HostKey>) {
        let (mut conflicts, mut cleared) = (Vec::new(), Vec::new());
        for (key, answered_by) in results {
            if !self.probing.remove(&key) {
                continue;
            }
            match answered_by {
                None => {
                    self.conflicts.remove(&key);
                    cleared.push(key);
                }
                Some(mac) => {
                    if self.conflicts.insert(key, mac) != Some(mac) {
                        conflicts.push((key, mac));
                    }
                }
            }
        }
        (conflicts, cleared)
    }

    /// Whether a probe of some host is under way.
    pub(crate) fn is_probing(&self) -> bool {
        !self.probing.is_empty()
    }

    /// The conflicts to probe again (those not being probed already).
    pub(crate) fn recheck(&mut self) -> Vec<HostKey> {
        let again: Vec<HostKey> = self.conflicts.keys().filter(|key| !self.probing.contains(key)).copied().collect();
        self.probing.extend(again.iter().copied());
        again
    }
}

#[cfg(test)]
mod tests {
    use ipam_core::NetworkId;
    use ipam_core::dhcp_plan::{DhcpHost, SubnetDhcpConfig};

    use super::*;

    const S1: SubnetId = SubnetId::from_u128(1);

    fn mac(n: u8) -> Mac {
        Mac::from_octets([0x02, 0, 0, 0, 0, n]).unwrap()
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn config(hosts: &[u8], conflict_probe: bool) -> NetworkDhcpConfig {
        NetworkDhcpConfig {
            network_id: NetworkId::from_u128(1),
            epoch: 1,
            interface: "br0".parse().unwrap(),
            subnets: vec![SubnetDhcpConfig {
                subnet_id: S1,
                cidr: "10.0.0.0/24".parse().unwrap(),
                router: ip(1),
                dns_servers: Vec::new(),
                ntp_servers: Vec::new(),
                lease_secs: 3600,
                server_address: Some(ip(2)),
                server_address_refused: None,
                hosts: hosts.iter().map(|&n| DhcpHost { mac: mac(n), ip: ip(n) }).collect(),
            }],
            conflict_probe,
        }
    }

    fn key(n: u8) -> HostKey {
        (S1, ip(n), mac(n))
    }

    /// A provisioner's bookkeeping around its gate: the configuration it was given, kept current
    /// with host changes, and what it serves.
    struct Served {
        gate: ProbeGate,
        desired: Option<NetworkDhcpConfig>,
        admitted: NetworkDhcpConfig,
    }

    impl Served {
        fn new() -> Served {
            Served { gate: ProbeGate::default(), desired: None, admitted: config(&[], true) }
        }

        /// A whole configuration with `hosts`; answers the hosts to probe.
        fn whole(&mut self, hosts: &[u8], conflict_probe: bool) -> Vec<HostKey> {
            let config = config(hosts, conflict_probe);
            let (admitted, to_probe) = self.gate.admit(self.desired.as_ref(), &config);
            (self.admitted, self.desired) = (admitted, Some(config));
            to_probe
        }

        /// Host `n` came (`served`) or went; answers the hosts to probe.
        fn host(&mut self, n: u8, served: bool) -> Vec<HostKey> {
            let host = DhcpHost { mac: mac(n), ip: ip(n) };
            let change = HostChange { network_id: NetworkId::from_u128(1), subnet_id: S1, host, served };
            let desired = self.desired.as_mut().expect("a whole configuration first");
            desired.apply_hosts(&[change]);
            let (admitted, to_probe) = self.gate.admit_changes(&[change], desired.conflict_probe);
            self.admitted.apply_hosts(&admitted);
            to_probe
        }

        fn probed(&mut self, results: impl IntoIterator<Item = ProbeResult>) -> Vec<(HostKey, Mac)> {
            let (conflicts, cleared) = self.gate.probed(results);
            let cleared: Vec<HostChange> = cleared
                .into_iter()
                .map(|(subnet_id, ip, mac)| HostChange {
                    network_id: NetworkId::from_u128(1),
                    subnet_id,
                    host: DhcpHost { mac, ip },
                    served: true,
                })
                .collect();
            self.admitted.apply_hosts(&cleared);
            conflicts
        }

        fn served(&self) -> Vec<u8> {
            self.admitted.subnets[0].hosts.iter().map(|host| host.mac.octets()[5]).collect()
        }
    }

    #[test]
    fn the_first_configuration_is_served_whole_and_later_hosts_wait_for_their_probe() {
        // Told whole configurations.
        let mut whole = Served::new();
        assert_eq!(whole.whole(&[10, 11], true), vec![]);
        assert_eq!(whole.served(), vec![10, 11]);
        assert_eq!(whole.whole(&[10, 11, 12, 13], true), vec![key(12), key(13)]);
        assert_eq!(whole.served(), vec![10, 11]);
        // Asked again while probing (another change of the plan): not probed twice.
        assert_eq!(whole.whole(&[10, 12, 13], true), vec![]);
        assert_eq!(whole.served(), vec![10]);
        assert_eq!(whole.probed([(key(12), None), (key(13), Some(mac(99)))]), vec![(key(13), mac(99))]);
        assert_eq!(whole.served(), vec![10, 12]);
        assert_eq!(whole.whole(&[10, 12, 13], true), vec![]);
        assert_eq!(whole.served(), vec![10, 12]);
        // The same told as host changes.
        let mut changes = Served::new();
        changes.whole(&[10, 11], true);
        assert_eq!([changes.host(12, true), changes.host(13, true)].concat(), vec![key(12), key(13)]);
        assert_eq!(changes.served(), vec![10, 11]);
        assert_eq!(changes.host(11, false), vec![]);
        assert_eq!(changes.host(12, true), vec![], "a repeat is not probed twice");
        assert_eq!(changes.probed([(key(12), None), (key(13), Some(mac(99)))]), vec![(key(13), mac(99))]);
        assert_eq!(changes.served(), vec![10, 12]);
    }

    #[test]
    fn a_conflict_is_probed_again_reported_once_per_mac_and_served_once_free() {
        let mut served = Served::new();
        served.whole(&[], true);
        assert_eq!(served.host(12, true), vec![key(12)]);
        assert_eq!(served.probed([(key(12), Some(mac(99)))]), vec![(key(12), mac(99))]);
        assert_eq!(served.gate.recheck(), vec![key(12)]);
        assert_eq!(served.gate.recheck(), vec![], "already being probed");
        assert_eq!(served.probed([(key(12), Some(mac(99)))]), vec![], "the same squatter is reported once");
        served.gate.recheck();
        assert_eq!(served.probed([(key(12), Some(mac(98)))]), vec![(key(12), mac(98))], "another one is news");
        assert_eq!(served.served(), Vec::<u8>::new());
        served.gate.recheck();
        assert_eq!(served.probed([(key(12), None)]), vec![]);
        assert_eq!(served.served(), vec![12]);
    }

    #[test]
    fn with_probing_off_every_host_is_served_at_once() {
        let mut served = Served::new();
        served.whole(&[], true);
        served.whole(&[12], true);
        served.probed([(key(12), Some(mac(99)))]);
        assert_eq!(served.whole(&[12, 13], false), vec![]);
        assert_eq!(served.served(), vec![12, 13]);
        assert_eq!(served.host(14, true), vec![]);
        assert_eq!(served.served(), vec![12, 13, 14]);
    }

    #[test]
    fn a_host_that_left_while_probed_is_forgotten() {
        let mut served = Served::new();
        served.whole(&[], true);
        served.host(12, true);
        served.host(12, false);
        assert_eq!(served.probed([(key(12), Some(mac(99)))]), vec![]);
        assert_eq!(served.served(), Vec::<u8>::new());
        // Reserved again later: probed again.
        assert_eq!(served.host(12, true), vec![key(12)]);
        // And the same through whole configurations.
        let mut whole = Served::new();
        whole.whole(&[], true);
        whole.whole(&[12], true);
        whole.whole(&[], true);
        assert_eq!(whole.probed([(key(12), None)]), vec![]);
        assert_eq!(whole.whole(&[12], true), vec![key(12)]);
    }
}
