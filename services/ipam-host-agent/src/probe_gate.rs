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

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipam_core::dhcp_plan::NetworkDhcpConfig;
use ipam_core::{Mac, SubnetId};

/// One reserved client of a network: its subnet, address and MAC.
pub(crate) type HostKey = (SubnetId, IpAddr, Mac);

/// What one probe of a host found: the MAC that claimed the address besides the reserved one.
pub(crate) type ProbeResult = (HostKey, Option<Mac>);

#[derive(Debug, Default)]
pub(crate) struct ProbeGate {
    /// Whether a first configuration was seen (see the module documentation).
    seeded: bool,
    /// Hosts the server may serve.
    cleared: BTreeSet<HostKey>,
    /// Hosts whose probe is under way.
    probing: BTreeSet<HostKey>,
    /// Hosts kept out, with the MAC last found holding their address.
    conflicts: BTreeMap<HostKey, Mac>,
}

impl ProbeGate {
    /// `config` without the hosts that may not be served yet, and the hosts to probe now (each
    /// once: a host already being probed is not listed again).
    pub(crate) fn admit(&mut self, config: &NetworkDhcpConfig) -> (NetworkDhcpConfig, Vec<HostKey>) {
        let present: BTreeSet<HostKey> = config
            .subnets
            .iter()
            .flat_map(|subnet| subnet.hosts.iter().map(move |host| (subnet.subnet_id, host.ip, host.mac)))
            .collect();
        self.cleared.retain(|key| present.contains(key));
        self.probing.retain(|key| present.contains(key));
        self.conflicts.retain(|key, _| present.contains(key));
        let mut to_probe = Vec::new();
        if !self.seeded || !config.conflict_probe {
            // Probing off serves everything, conflicts found earlier included: the operator chose.
            self.seeded = true;
            self.cleared.clone_from(&present);
            self.probing.clear();
            self.conflicts.clear();
        } else {
            for key in present {
                if !self.cleared.contains(&key) && !self.conflicts.contains_key(&key) && self.probing.insert(key) {
                    to_probe.push(key);
                }
            }
        }
        let mut admitted = config.clone();
        for subnet in &mut admitted.subnets {
            let subnet_id = subnet.subnet_id;
            subnet.hosts.retain(|host| self.cleared.contains(&(subnet_id, host.ip, host.mac)));
        }
        (admitted, to_probe)
    }

    /// Takes in what probes found. Answers the conflicts to report: hosts found held by another
    /// MAC, unless the same MAC was reported for them already. Hosts that left the plan while
    /// being probed are forgotten.
    pub(crate) fn probed(&mut self, results: impl IntoIterator<Item = ProbeResult>) -> Vec<(HostKey, Mac)> {
        let mut new = Vec::new();
        for (key, answered_by) in results {
            if !self.probing.remove(&key) {
                continue;
            }
            match answered_by {
                None => {
                    self.conflicts.remove(&key);
                    self.cleared.insert(key);
                }
                Some(mac) => {
                    if self.conflicts.insert(key, mac) != Some(mac) {
                        new.push((key, mac));
                    }
                }
            }
        }
        new
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

    fn served(config: &NetworkDhcpConfig) -> Vec<u8> {
        config.subnets[0].hosts.iter().map(|host| host.mac.octets()[5]).collect()
    }

    fn key(n: u8) -> HostKey {
        (S1, ip(n), mac(n))
    }

    #[test]
    fn the_first_configuration_is_served_whole_and_later_hosts_wait_for_their_probe() {
        let mut gate = ProbeGate::default();
        let (admitted, to_probe) = gate.admit(&config(&[10, 11], true));
        assert_eq!((served(&admitted), to_probe), (vec![10, 11], vec![]));
        let (admitted, to_probe) = gate.admit(&config(&[10, 11, 12, 13], true));
        assert_eq!((served(&admitted), to_probe), (vec![10, 11], vec![key(12), key(13)]));
        // Asked again while probing (another change of the plan): not probed twice.
        let (admitted, to_probe) = gate.admit(&config(&[10, 12, 13], true));
        assert_eq!((served(&admitted), to_probe), (vec![10], vec![]));
        let conflicts = gate.probed([(key(12), None), (key(13), Some(mac(99)))]);
        assert_eq!(conflicts, vec![(key(13), mac(99))]);
        let (admitted, to_probe) = gate.admit(&config(&[10, 12, 13], true));
        assert_eq!((served(&admitted), to_probe), (vec![10, 12], vec![]));
    }

    #[test]
    fn a_conflict_is_probed_again_reported_once_per_mac_and_served_once_free() {
        let mut gate = ProbeGate::default();
        gate.admit(&config(&[], true));
        gate.admit(&config(&[12], true));
        assert_eq!(gate.probed([(key(12), Some(mac(99)))]), vec![(key(12), mac(99))]);
        assert_eq!(gate.recheck(), vec![key(12)]);
        assert_eq!(gate.recheck(), vec![], "already being probed");
        assert_eq!(gate.probed([(key(12), Some(mac(99)))]), vec![], "the same squatter is reported once");
        gate.recheck();
        assert_eq!(gate.probed([(key(12), Some(mac(98)))]), vec![(key(12), mac(98))], "another one is news");
        gate.recheck();
        assert_eq!(gate.probed([(key(12), None)]), vec![]);
        assert_eq!(served(&gate.admit(&config(&[12], true)).0), vec![12]);
    }

    #[test]
    fn with_probing_off_every_host_is_served_at_once() {
        let mut gate = ProbeGate::default();
        gate.admit(&config(&[], true));
        gate.admit(&config(&[12], true));
        gate.probed([(key(12), Some(mac(99)))]);
        let (admitted, to_probe) = gate.admit(&config(&[12, 13], false));
        assert_eq!((served(&admitted), to_probe), (vec![12, 13], vec![]));
    }

    #[test]
    fn a_host_that_left_while_probed_is_forgotten() {
        let mut gate = ProbeGate::default();
        gate.admit(&config(&[], true));
        gate.admit(&config(&[12], true));
        gate.admit(&config(&[], true));
        assert_eq!(gate.probed([(key(12), Some(mac(99)))]), vec![]);
        // Reserved again later: probed again.
        assert_eq!(gate.admit(&config(&[12], true)).1, vec![key(12)]);
    }
}
