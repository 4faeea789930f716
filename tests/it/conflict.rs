//! Conflict probing end to end, as root: `ipam up` on the embedded log, a host agent running real
//! dnsmasq in a host namespace, and a "squatter" namespace on the same bridge that holds an address
//! configured by hand, as a forgotten VM or a static host would. The agent must find it by ARP (or
//! IPv6 duplicate address detection) before serving that address to the vNIC reserved it, report
//! `ipam.ip.conflict.v1` naming the squatter's MAC, and keep the address out of dnsmasq's files;
//! with probing off in the network's policy, it serves without asking.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipam_core::event::*;
use ipam_core::{Envelope, Event, HostId, Mac, VmId, VnicId};

use crate::dhcp::{NETWORK, SUBNET, Stack, host_id, network, start};
use ipam_tests::netns::{Fabric, must, prerequisites};
use ipam_tests::wait_until;

/// Every `ipam.ip.conflict.v1` on `ipam.networks` so far.
fn conflicts(stack: &Stack) -> Vec<IpConflictDetected> {
    let mut found = Vec::new();
    for partition in 0..stack.log.partition_count("ipam.networks").unwrap() {
        for record in stack.log.read("ipam.networks", partition, 0, usize::MAX, Duration::ZERO).unwrap() {
            if let Ok(Envelope { event: Event::IpConflictDetected(conflict), .. }) = Envelope::decode(&record.value) {
                found.push(conflict);
            }
        }
    }
    found
}

fn fixed(vnic: VnicId, mac: Mac, ip: &str) -> Event {
    Event::VnicStarted(VnicUp {
        vnic_id: vnic,
        vm_id: VmId::from_u128(vnic.0.as_u128()),
        network_id: NETWORK,
        subnet_id: Some(SUBNET),
        subnet_ids: Vec::new(),
        mac,
        requested_ip: Some(ip.parse().unwrap()),
    })
}

/// A host namespace with its agent, serving a network of one subnet, and a squatter holding
/// `squatted` (an address in that subnet, with its prefix) on the same bridge.
struct Setup {
    fabric: Fabric,
    stack: Stack,
    host: HostId,
    agent: crate::recovery::Service,
    squatter: String,
    squatter_mac: Mac,
}

fn set_up(cidr: &str, gateway: &str, squatted: &[&str]) -> Setup {
    prerequisites();
    let mut fabric = Fabric::new();
    let host_ns = fabric.node("ch", "eth1", None);
    let squatter_mac: Mac = "52:54:00:5a:00:01".parse().unwrap();
    let squatter = fabric.node("cs", "eth0", Some(squatter_mac));
    for address in squatted {
        let family = if address.contains(':') { "-6" } else { "-4" };
        // `nodad`: the squatter holds the address at once, as one that had it for long would.
        let mut args = vec!["ip", "-n", &squatter, family, "addr", "add", address, "dev", "eth0"];
        if family == "-6" {
            args.push("nodad");
        }
        must(&args);
    }
    let mut stack = Stack::start();
    let host = host_id(0x70);
    let agent = stack.agent(&host_ns, host);
    stack.publish(vec![
        Event::HostUpserted(HostUpserted {
            host_id: host,
            name: "conflict-host".to_owned(),
            status: HostStatus::Up,
            networks: vec![HostNetwork { network_id: NETWORK, interface: "eth1".parse().unwrap() }],
        }),
        network(1),
        Event::SubnetAdded(SubnetAdded {
            network_id: NETWORK,
            subnet_id: SUBNET,
            cidr: cidr.parse().unwrap(),
            gateway: gateway.parse().unwrap(),
            dns_servers: vec![],
            ntp_servers: vec![],
            allocation_pools: None,
        }),
    ]);
    wait_until("the server is placed", Duration::from_secs(20), || stack.servers() == [host]);
    // The server's first configuration is taken as served already (see probe_gate.rs): wait until
    // it runs, so that the vNICs below are new to it.
    wait_until("the server runs", Duration::from_secs(20), || {
        stack.dnsmasq_log(host).contains("sockets bound exclusively")
    });
    Setup { fabric, stack, host, agent, squatter, squatter_mac }
}

#[test]
fn a_squatted_address_is_reported_and_not_served_until_probing_is_turned_off() {
    let Setup { fabric, mut stack, host, mut agent, squatter, squatter_mac } =
        set_up("10.78.0.0/24", "10.78.0.1", &["10.78.0.50/24", "10.78.0.51/24"]);

    // A vNIC given the squatted address (a fixed-IP request): the probe finds the squatter.
    let (vnic_a, mac_a): (VnicId, Mac) = (VnicId::from_u128(0xc1), "52:54:00:c0:00:01".parse().unwrap());
    stack.publish(vec![fixed(vnic_a, mac_a, "10.78.0.50")]);
    wait_until("the conflict is reported", Duration::from_secs(20), || !conflicts(&stack).is_empty());
    let found = conflicts(&stack);
    assert_eq!(found.len(), 1, "{found:?}");
    let conflict = &found[0];
    assert_eq!(conflict.ip, "10.78.0.50".parse::<IpAddr>().unwrap());
    assert_eq!(conflict.answered_by, squatter_mac);
    assert_eq!(conflict.reserved_for, Some(mac_a));
    assert_eq!((conflict.network_id, conflict.subnet_id, conflict.host_id), (NETWORK, SUBNET, host));
    assert_eq!(conflict.probe, ConflictProbe::Arp);

    // A vNIC nobody squats is served after its probe (and so after the first one's verdict):
    // the squatted address is still out of the file then.
    let (vnic_b, mac_b): (VnicId, Mac) = (VnicId::from_u128(0xc2), "52:54:00:c0:00:02".parse().unwrap());
    let asked = Instant::now();
    stack.publish(vec![start(vnic_b, mac_b)]);
    wait_until("the free address is served", Duration::from_secs(20), || {
        stack.served_lines(host).contains(&mac_b.to_string())
    });
    println!("a new vNIC served {:?} after its start, probe included", asked.elapsed());
    let lines = stack.served_lines(host);
    assert!(!lines.contains(&mac_a.to_string()) && !lines.contains("10.78.0.50"), "squatted address served: {lines}");
    assert_eq!(conflicts(&stack).len(), 1, "one report per conflict");

    // A dynamic vNIC given a squatted address is moved by the allocator to another one, which is
    // probed in its turn and served. Allocation is next-fit: the next vNIC gets the address after
    // the last one's, which the squatter takes first.
    let last: std::net::Ipv4Addr = stack.reserved_ip(vnic_b).unwrap().parse().unwrap();
    let next = std::net::Ipv4Addr::from(u32::from(last) + 1);
    must(&["ip", "-n", &squatter, "-4", "addr", "add", &format!("{next}/24"), "dev", "eth0"]);
    let (vnic_d, mac_d): (VnicId, Mac) = (VnicId::from_u128(0xc4), "52:54:00:c0:00:04".parse().unwrap());
    stack.publish(vec![start(vnic_d, mac_d)]);
    wait_until("the dynamic vNIC's conflict is reported", Duration::from_secs(20), || {
        conflicts(&stack).iter().any(|conflict| conflict.reserved_for == Some(mac_d))
    });
    let conflict = conflicts(&stack).into_iter().find(|conflict| conflict.reserved_for == Some(mac_d)).unwrap();
    assert_eq!((conflict.ip, conflict.answered_by), (IpAddr::V4(next), squatter_mac));
    wait_until("the dynamic vNIC is moved and served", Duration::from_secs(20), || {
        let moved = stack.reserved_ip(vnic_d).filter(|ip| *ip != next.to_string());
        moved.is_some_and(|ip| {
            stack.served_lines(host).lines().any(|l| l.contains(&mac_d.to_string()) && l.contains(&ip))
        })
    });
    assert!(!stack.served_lines(host).contains(&next.to_string()), "{}", stack.served_lines(host));

    // With probing off, a vNIC given the other squatted address is served without a probe, and
    // the address held back before is served too: the operator chose.
    stack.publish(vec![Event::NetworkPolicySet(NetworkPolicySet {
        network_id: NETWORK,
        policy: NetworkPolicy { conflict_probe: Some(false), ..NetworkPolicy::default() },
    })]);
    let (vnic_c, mac_c): (VnicId, Mac) = (VnicId::from_u128(0xc3), "52:54:00:c0:00:03".parse().unwrap());
    stack.publish(vec![fixed(vnic_c, mac_c, "10.78.0.51")]);
    wait_until("the unprobed address is served", Duration::from_secs(20), || {
        let lines = stack.served_lines(host);
        lines.contains(&mac_c.to_string()) && lines.contains(&mac_a.to_string())
    });
    let found = conflicts(&stack);
    assert!(found.iter().all(|conflict| conflict.ip != "10.78.0.51".parse::<IpAddr>().unwrap()), "{found:?}");

    agent.terminate();
    stack.up.terminate();
    drop(fabric);
}

#[test]
fn a_squatted_ipv6_address_is_found_by_duplicate_address_detection() {
    let Setup { fabric, mut stack, host, mut agent, squatter_mac, .. } =
        set_up("fd00:78::/64", "fd00:78::1", &["fd00:78::50/64"]);
    let (vnic, mac): (VnicId, Mac) = (VnicId::from_u128(0xc6), "52:54:00:c0:00:06".parse().unwrap());
    stack.publish(vec![fixed(vnic, mac, "fd00:78::50")]);
    wait_until("the conflict is reported", Duration::from_secs(20), || !conflicts(&stack).is_empty());
    let conflict = &conflicts(&stack)[0];
    assert_eq!(conflict.ip, "fd00:78::50".parse::<IpAddr>().unwrap());
    assert_eq!(conflict.answered_by, squatter_mac);
    assert_eq!(conflict.probe, ConflictProbe::NeighbourSolicitation);
    // A free address is served, and the squatted one is not.
    let (free, free_mac): (VnicId, Mac) = (VnicId::from_u128(0xc7), "52:54:00:c0:00:07".parse().unwrap());
    stack.publish(vec![start(free, free_mac)]);
    wait_until("the free address is served", Duration::from_secs(20), || {
        stack.served_lines(host).contains(&free_mac.to_string())
    });
    assert!(!stack.served_lines(host).contains(&mac.to_string()), "{}", stack.served_lines(host));

    agent.terminate();
    stack.up.terminate();
    drop(fabric);
}
