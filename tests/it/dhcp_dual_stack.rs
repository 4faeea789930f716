//! A dual-stack vNIC end to end, as root: one network with an IPv4 and an IPv6 subnet, one vNIC
//! started in both (`subnet_ids`) through the API. In ONE guest namespace a real `busybox udhcpc`
//! gets the reserved IPv4 address and a real `dhclient -6` the reserved IPv6 address, from the
//! host agent's real dnsmasq, which holds both in one `dhcp-host=MAC,IPv4,[IPv6]` line. The API
//! then shows both addresses leased; a vNIC stop releases both, and the API lists neither any more.
//! The namespaces (and every process left in them) and the services are ended by name and pid when
//! the test ends, passed or failed (`Fabric` and `Service` drop guards).

use std::time::{Duration, Instant};

use ipam_core::{HostId, Mac, NetworkId, SubnetId};
use ipam_tests::netns::{Fabric, dhcp, prerequisites};
use ipam_tests::wait_until;
use serde_json::{Value, json};

use crate::api::{event, ipam_up_with_api_and};
use crate::dhcp_v6::{Shard, dhclient, host_agent, link_local, require_dhclient};
use crate::vnic_state::{publish, until};

const NETWORK: NetworkId = NetworkId::from_u128(0xd5_01);
const SUBNET6: SubnetId = SubnetId::from_u128(0xd5_06);
const SUBNET4: SubnetId = SubnetId::from_u128(0xd5_04);
const HOST: HostId = HostId::from_u128(0xd5_03);
const VNIC: &str = "00000000-0000-0000-0000-0000000d5e01";
const PREFIX: &str = "2001:db8:79::";

/// The addresses `GET /v1/vnics/{id}` lists, with their states.
fn addresses(view: &Value) -> Vec<(String, String)> {
    let listed = view["addresses"].as_array().cloned().unwrap_or_default();
    let text = |value: &Value| value.as_str().unwrap_or("null").to_owned();
    listed.iter().map(|address| (text(&address["ip"]), text(&address["state"]))).collect()
}

#[test]
fn a_dual_stack_vnic_gets_its_ipv4_and_ipv6_addresses_in_one_guest_and_releases_both() {
    prerequisites();
    require_dhclient();
    let dir = tempfile::tempdir().unwrap();
    let mut fabric = Fabric::new();
    let host_ns = fabric.node("hd", "eth1", None);
    let guest_mac: Mac = "52:54:00:d5:00:01".parse().unwrap();
    let guest_ns = fabric.node("vd", "eth0", Some(guest_mac));

    let data = dir.path().join("data");
    let (mut up, addr) = ipam_up_with_api_and(&data, &["--tick-interval-ms", "300"]);
    let dhcp_dir = dir.path().join("dhcp");
    let mut agent = host_agent(&host_ns, &data, &dhcp_dir, HOST);

    let network = NETWORK.to_string();
    let (subnet4, subnet6) = (SUBNET4.to_string(), SUBNET6.to_string());
    publish(
        addr,
        &[
            event(
                0xd501,
                "ipam.host.upserted.v1",
                json!({"host_id": HOST.to_string(), "name": "host-dual", "status": "up",
                       "networks": [{"network_id": network, "interface": "eth1"}]}),
            ),
            event(
                0xd502,
                "ipam.network.upserted.v1",
                json!({"network_id": network, "name": "e2e-dual", "ipam_enabled": true, "servers_count": 1}),
            ),
            event(
                0xd503,
                "ipam.subnet.added.v1",
                json!({"network_id": network, "subnet_id": subnet6, "cidr": format!("{PREFIX}/64"),
                       "gateway": format!("{PREFIX}1"), "dns_servers": [format!("{PREFIX}53")]}),
            ),
            event(
                0xd504,
                "ipam.subnet.added.v1",
                json!({"network_id": network, "subnet_id": subnet4, "cidr": "10.79.0.0/24",
                       "gateway": "10.79.0.1", "dns_servers": ["10.79.0.53"]}),
            ),
            event(
                0xd505,
                "ipam.vnic.started.v1",
                json!({"vnic_id": VNIC, "vm_id": VNIC, "network_id": network, "subnet_ids": [subnet6, subnet4],
                       "mac": guest_mac.to_string()}),
            ),
        ],
    );
    let vnic_path = format!("/v1/vnics/{VNIC}");
    let view = until(addr, &vnic_path, "the vNIC holds two addresses", |v| addresses(v).len() == 2);
    let held = addresses(&view);
    let (ip4, ip6) = (held[0].0.clone(), held[1].0.clone());
    assert!(ip4.starts_with("10.79.0.") && ip6.starts_with(PREFIX), "IPv4 first, then IPv6: {held:?}");
    assert_eq!(view["reservation"]["ip"], ip4.as_str(), "the single-stack field names the IPv4 address: {view}");

    // The server holds the guest's one line with both addresses, runs with its own address in
    // each subnet (it restarts once they are granted), and listens.
    let shard = Shard::of(&dhcp_dir, NETWORK);
    let reserved_at = Instant::now();
    wait_until("the server runs with the guest's dual-stack line", Duration::from_secs(30), || {
        shard.host_lines().contains(&format!("{guest_mac},{ip4},[{ip6}]"))
            && shard.read("dnsmasq.conf").contains(&format!("server address {PREFIX}"))
            && shard.read("dnsmasq.conf").contains("server address 10.79.")
            && shard.read("dnsmasq.log").contains("sockets bound exclusively")
    });

    // One guest, two real clients: udhcpc for IPv4, dhclient -6 for IPv6.
    let deadline = Instant::now() + Duration::from_secs(20);
    let lease4 = loop {
        if let Some(lease) = dhcp(&guest_ns, dir.path()) {
            break lease;
        }
        assert!(Instant::now() < deadline, "no DHCPv4 lease for the dual-stack guest");
    };
    assert_eq!(lease4.ip, ip4, "the guest got its reserved IPv4 address");
    assert_eq!((lease4.router.as_str(), lease4.dns.as_str()), ("10.79.0.1", "10.79.0.53"));
    link_local(&guest_ns, "eth0");
    let bound = dhclient(&guest_ns, dir.path(), 10, None).expect("the dual-stack guest got a DHCPv6 lease");
    assert_eq!(bound.get("new_ip6_address"), ip6, "the same guest got its reserved IPv6 address");
    assert_eq!(bound.get("new_dhcp6_name_servers"), format!("{PREFIX}53"));
    println!("dual-stack reservation → both leases: {:?}", reserved_at.elapsed());

    // The agent reports both leases; the allocator matches each to its reservation.
    let view = until(addr, &vnic_path, "both addresses leased", |v| {
        v["state"] == "leased" && addresses(v).iter().all(|(_, state)| state == "leased")
    });
    assert_eq!(addresses(&view).len(), 2, "{view}");

    // The vNIC stops: both addresses are released, and free again.
    publish(addr, &[event(0xd506, "ipam.vnic.stopped.v1", json!({"vnic_id": VNIC, "network_id": network}))]);
    let view = until(addr, &vnic_path, "both addresses released", |v| addresses(v).is_empty());
    assert!(view["reservation"].is_null() && view["state"].is_null(), "{view}");
    let reservations = until(addr, &format!("/v1/networks/{network}/reservations"), "the releases listed", |page| {
        let listed = page["reservations"].as_array().cloned().unwrap_or_default();
        !listed.iter().any(|r| r["ip"] == ip4.as_str() || r["ip"] == ip6.as_str())
    });
    // Only the DHCP server's own addresses are left.
    let owners: Vec<&str> =
        reservations["reservations"].as_array().unwrap().iter().filter_map(|r| r["owner"]["kind"].as_str()).collect();
    assert!(owners.iter().all(|kind| *kind == "dhcp_server"), "{reservations}");

    agent.terminate();
    up.terminate();
    drop(fabric);
}
