use std::fmt::Write;

use crate::event::{AssignReason, ReleaseReason, UnassignReason};
use crate::ids::{EventId, VmId, VnicId};
use crate::net::next_address;
use crate::testing::SplitMix64;
use crate::time::Timestamp;
use expect_test::{Expect, expect};

use super::*;

const H1: HostId = HostId::from_u128(1);
const H2: HostId = HostId::from_u128(2);
const N1: NetworkId = NetworkId::from_u128(1);
const N2: NetworkId = NetworkId::from_u128(2);
const S1: SubnetId = SubnetId::from_u128(1);
const S2: SubnetId = SubnetId::from_u128(2);
const S3: SubnetId = SubnetId::from_u128(3);

// ---- Building inputs ---------------------------------------------------------------------

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IPs are valid")
}

fn ips(texts: &[&str]) -> Vec<IpAddr> {
    texts.iter().map(|text| ip(text)).collect()
}

/// A vNIC's MAC, `02:00:00:00:00:nn`.
fn mac(n: u8) -> Mac {
    Mac::from_octets([0x02, 0, 0, 0, 0, n]).expect("a locally administered unicast MAC")
}

/// A DHCP server's MAC, `02:00:00:00:dd:nn`.
fn port_mac(n: u8) -> Mac {
    Mac::from_octets([0x02, 0, 0, 0, 0xdd, n]).expect("a locally administered unicast MAC")
}

fn cause() -> EventId {
    EventId::from_u128(999)
}

fn assigned(network_id: NetworkId, host_id: HostId, epoch: u64, interface: &str) -> Event {
    Event::DhcpServerAssigned(DhcpServerAssigned {
        network_id,
        host_id,
        interface: interface.parse().expect("test interface names are valid"),
        epoch,
        reason: AssignReason::Placed,
        cause: cause(),
    })
}

fn unassigned(network_id: NetworkId, host_id: HostId, epoch: u64) -> Event {
    Event::DhcpServerUnassigned(DhcpServerUnassigned {
        network_id,
        host_id,
        epoch,
        reason: UnassignReason::HostDown,
        cause: cause(),
    })
}

fn activated(network_id: NetworkId, subnet_id: SubnetId, cidr: &str, dns: &[&str], ntp: &[&str]) -> Event {
    let cidr: Cidr = cidr.parse().expect("test CIDRs are valid");
    let gateway = next_address(cidr.network()).expect("a subnet has a first host address");
    Event::SubnetActivated(SubnetActivated {
        network_id,
        subnet_id,
        cidr,
        gateway,
        dns_servers: ips(dns),
        ntp_servers: ips(ntp),
        allocation_pools: vec![],
        cause: cause(),
    })
}

fn deactivated(network_id: NetworkId, subnet_id: SubnetId) -> Event {
    Event::SubnetDeactivated(SubnetDeactivated { network_id, subnet_id, cause: cause() })
}

fn vnic(n: u8) -> Owner {
    Owner::Vnic { vnic_id: VnicId::from_u128(n.into()), vm_id: VmId::from_u128(n.into()) }
}

fn server(host_id: HostId) -> Owner {
    Owner::DhcpServer { host_id }
}

fn added(network_id: NetworkId, subnet_id: SubnetId, owner: Owner, mac: Mac, ip_text: &str) -> Event {
    Event::ReservationAdded(ReservationAdded { network_id, subnet_id, owner, mac, ip: ip(ip_text), cause: cause() })
}

fn removed(network_id: NetworkId, subnet_id: SubnetId, owner: Owner, mac: Mac, ip_text: &str) -> Event {
    Event::ReservationRemoved(ReservationRemoved {
        network_id,
        subnet_id,
        owner,
        mac,
        ip: ip(ip_text),
        reason: ReleaseReason::VnicDown,
        cause: cause(),
    })
}

fn view_after(history: &[Event]) -> HostDhcpView {
    let mut view = HostDhcpView::new(H1);
    for (index, event) in history.iter().enumerate() {
        let index = u128::try_from(index).expect("histories are short");
        view.apply(&Envelope {
            id: EventId::from_u128(1000 + index),
            source: "test".to_owned(),
            time: Timestamp::from_unix_ms(0),
            subject: None,
            event: event.clone(),
        });
    }
    view
}

// ---- Rendering ---------------------------------------------------------------------------

/// `n1` for `NetworkId::from_u128(1)` and so on; anything else prints in full.
fn short(prefix: &str, uuid: &impl std::fmt::Display, value: u128) -> String {
    if value < 1000 { format!("{prefix}{value}") } else { format!("{prefix}:{uuid}") }
}

fn net(id: NetworkId) -> String {
    short("n", &id, id.0.as_u128())
}

fn sub(id: SubnetId) -> String {
    short("s", &id, id.0.as_u128())
}

fn host(id: HostId) -> String {
    short("h", &id, id.0.as_u128())
}

fn list(addresses: &[IpAddr]) -> String {
    addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn render_plan(plan: &DhcpPlan) -> String {
    let mut out = format!("plan for {}\n", host(plan.host_id));
    for network in &plan.networks {
        let _ = writeln!(out, "  {} epoch {} on {}", net(network.network_id), network.epoch, network.interface);
        for subnet in &network.subnets {
            let server = subnet.server_address.map_or("-".to_owned(), |ip| ip.to_string());
            let _ = writeln!(
                out,
                "    {} {} router {} dns [{}] ntp [{}] lease {}s server {server}",
                sub(subnet.subnet_id),
                subnet.cidr,
                subnet.router,
                list(&subnet.dns_servers),
                list(&subnet.ntp_servers),
                subnet.lease_secs,
            );
            for client in &subnet.hosts {
                let _ = writeln!(out, "      {} {}", client.ip, client.mac);
            }
        }
    }
    out
}

fn render_events(events: &[Event]) -> String {
    let mut out = String::new();
    for event in events {
        let _ = match event {
            Event::DhcpPortRequested(e) => {
                writeln!(out, "requested {} {} {} {}", net(e.network_id), sub(e.subnet_id), host(e.host_id), e.mac)
            }
            Event::DhcpPortReleased(e) => {
                writeln!(out, "released {} {} {} {}", net(e.network_id), sub(e.subnet_id), host(e.host_id), e.mac)
            }
            other => writeln!(out, "unexpected {other:?}"),
        };
    }
    if out.is_empty() { "none\n".to_owned() } else { out }
}

/// Given this history of inputs to host h1's view, then its plan (default options) is `expect`.
fn check(history: &[Event], expect: Expect) {
    expect.assert_eq(&render_plan(&plan(&view_after(history), &PlanOptions::default())));
}

/// Given this history, then h1's port requests (MAC known for every network but n2) and port
/// releases are `expect`.
fn check_ports(history: &[Event], expect: Expect) {
    let view = view_after(history);
    let requests = port_requests(&view, |network_id| (network_id != N2).then(|| port_mac(1)));
    let releases = port_releases(&view);
    expect.assert_eq(&format!("{}---\n{}", render_events(&requests), render_events(&releases)));
}

/// Two subnets of n1 with a few vNICs, added out of order.
fn n1_with_subnets() -> Vec<Event> {
    vec![
        activated(N1, S2, "2001:db8::/64", &["2001:db8::53"], &[]),
        activated(N1, S1, "10.1.0.0/24", &["10.1.0.53", "10.9.9.53"], &["10.1.0.123"]),
        added(N1, S1, vnic(3), mac(3), "10.1.0.30"),
        added(N1, S1, vnic(1), mac(1), "10.1.0.10"),
        added(N1, S2, vnic(2), mac(2), "2001:db8::20"),
    ]
}

// ---- The plan ----------------------------------------------------------------------------

#[test]
fn without_an_assignment_the_plan_is_empty() {
    let mut history = n1_with_subnets();
    history.push(assigned(N1, H2, 1, "br1"));
    check(
        &history,
        expect![[r#"
            plan for h1
        "#]],
    );
}

#[test]
fn an_assigned_network_is_planned_with_its_subnets_options_and_hosts() {
    let mut history = n1_with_subnets();
    history.push(assigned(N1, H1, 4, "br1"));
    check(
        &history,
        expect![[r#"
            plan for h1
              n1 epoch 4 on br1
                s1 10.1.0.0/24 router 10.1.0.1 dns [10.1.0.53,10.9.9.53] ntp [10.1.0.123] lease 3600s server -
                  10.1.0.10 02:00:00:00:00:01
                  10.1.0.30 02:00:00:00:00:03
                s2 2001:db8::/64 router 2001:db8::1 dns [2001:db8::53] ntp [] lease 3600s server -
                  2001:db8::20 02:00:00:00:00:02
        "#]],
    );
}

#[test]
fn a_dual_stack_vnic_is_planned_in_both_its_subnets_and_released_from_both() {
    let mut history = n1_with_subnets();
    history.extend([
        assigned(N1, H1, 4, "br1"),
        added(N1, S1, vnic(4), mac(4), "10.1.0.40"),
        added(N1, S2, vnic(4), mac(4), "2001:db8::40"),
    ]);
    check(
        &history,
        expect![[r#"
            plan for h1
              n1 epoch 4 on br1
                s1 10.1.0.0/24 router 10.1.0.1 dns [10.1.0.53,10.9.9.53] ntp [10.1.0.123] lease 3600s server -
                  10.1.0.10 02:00:00:00:00:01
                  10.1.0.30 02:00:00:00:00:03
                  10.1.0.40 02:00:00:00:00:04
                s2 2001:db8::/64 router 2001:db8::1 dns [2001:db8::53] ntp [] lease 3600s server -
                  2001:db8::20 02:00:00:00:00:02
                  2001:db8::40 02:00:00:00:00:04
        "#]],
    );
    history.extend([removed(N1, S1, vnic(4), mac(4), "10.1.0.40"), removed(N1, S2, vnic(4), mac(4), "2001:db8::40")]);
    check(
        &history,
        expect![[r#"
            plan for h1
              n1 epoch 4 on br1
                s1 10.1.0.0/24 router 10.1.0.1 dns [10.1.0.53,10.9.9.53] ntp [10.1.0.123] lease 3600s server -
                  10.1.0.10 02:00:00:00:00:01
                  10.1.0.30 02:00:00:00:00:03
                s2 2001:db8::/64 router 2001:db8::1 dns [2001:db8::53] ntp [] lease 3600s server -
                  2001:db8::20 02:00:00:00:00:02
        "#]],
    );
}

#[test]
fn the_lease_time_comes_from_the_options() {
    let mut history = n1_with_subnets();
    history.push(assigned(N1, H1, 1, "br1"));
    let plan = plan(&view_after(&history), &PlanOptions { lease_secs: 600 });
    let leases: Vec<u32> = plan.networks.iter().flat_map(|n| &n.subnets).map(|s| s.lease_secs).collect();
    assert_eq!(leases, [600, 600]);
}

#[test]
fn networks_are_planned_in_id_order() {
    let history = [
        activated(N2, S3, "10.2.0.0/24", &[], &[]),
        activated(N1, S1, "10.1.0.0/24", &[], &[]),
        assigned(N2, H1, 1, "br2"),
        assigned(N1, H1, 7, "br1"),
    ];
    check(
        &history,
        expect![[r#"
            plan for h1
              n1 epoch 7 on br1
                s1 10.1.0.0/24 router 10.1.0.1 dns [] ntp [] lease 3600s server -
              n2 epoch 1 on br2
                s3 10.2.0.0/24 router 10.2.0.1 dns [] ntp [] lease 3600s server -
        "#]],
    );
}

#[test]
fn reservations_added_and_removed_are_reflected() {
    let mut history = n1_with_subnets();
    history.extend([
        assigned(N1, H1, 1, "br1"),
        added(N1, S1, vnic(4), mac(4), "10.1.0.20"),
        // A redelivered addition changes nothing.
        added(N1, S1, vnic(4), mac(4), "10.1.0.20"),
        removed(N1, S1, vnic(3), mac(3), "10.1.0.30"),
        removed(N1, S2, vnic(2), mac(2), "2001:db8::20"),
        // A removal that does not match the holder is not applied.
        removed(N1, S1, vnic(9), mac(1), "10.1.0.10"),
    ]);
    check(
        &history,
        expect![[r#"
            plan for h1
              n1 epoch 1 on br1
                s1 10.1.0.0/24 router 10.1.0.1 dns [10.1.0.53,10.9.9.53] ntp [10.1.0.123] lease 3600s server -
                  10.1.0.10 02:00:00:00:00:01
                  10.1.0.20 02:00:00:00:00:04
                s2 2001:db8::/64 router 2001:db8::1 dns [2001:db8::53] ntp [] lease 3600s server -
        "#]],
    );
}

#[test]
fn own_dhcp_port_is_the_server_address_and_not_a_host() {
    let mut history = n1_with_subnets();
    history.extend([assigned(N1, H1, 1, "br1"), added(N1, S1, server(H1), port_mac(1), "10.1.0.2")]);
    check(
        &history,
        expect![[r#"
            plan for h1
              n1 epoch 1 on br1
                s1 10.1.0.0/24 router 10.1.0.1 dns [10.1.0.53,10.9.9.53] ntp [10.1.0.123] lease 3600s server 10.1.0.2
                  10.1.0.10 02:00:00:00:00:01
                  10.1.0.30 02:00:00:00:00:03
                s2 2001:db8::/64 router 2001:db8::1 dns [2001:db8::53] ntp [] lease 3600s server -
                  2001:db8::20 02:00:00:00:00:02
        "#]],
    );
}

#[test]
fn other_hosts_dhcp_ports_are_neither_server_address_nor_hosts() {
    let mut history = n1_with_subnets();
    history.extend([
        assigned(N1, H1, 2, "br1"),
        assigned(N1, H2, 3, "eth1"),
        added(N1, S1, server(H2), port_mac(2), "10.1.0.3"),
        added(N1, S2, server(H2), port_mac(2), "2001:db8::3"),
    ]);
    check(
        &history,
        expect![[r#"
            plan for h1
              n1 epoch 2 on br1
                s1 10.1.0.0/24 router 10.1.0.1 dns [10.1.0.53,10.9.9.53] ntp [10.1.0.123] lease 3600s server -
                  10.1.0.10 02:00:00:00:00:01
                  10.1.0.30 02:00:00:00:00:03
                s2 2001:db8::/64 router 2001:db8::1 dns [2001:db8::53] ntp [] lease 3600s server -
                  2001:db8::20 02:00:00:00:00:02
        "#]],
    );
}

#[test]
fn reservations_of_an_unserved_network_appear_as_soon_as_it_is_assigned() {
    let mut history = n1_with_subnets();
    history.extend([
        activated(N2, S3, "10.2.0.0/24", &["10.2.0.53"], &[]),
        added(N2, S3, vnic(7), mac(7), "10.2.0.70"),
        assigned(N2, H1, 5, "br2"),
    ]);
    check(
        &history,
        expect![[r#"
            plan for h1
              n2 epoch 5 on br2
                s3 10.2.0.0/24 router 10.2.0.1 dns [10.2.0.53] ntp [] lease 3600s server -
                  10.2.0.70 02:00:00:00:00:07
        "#]],
    );
}

#[test]
fn an_assigned_network_without_an_active_subnet_is_planned_empty() {
    check(
        &[assigned(N2, H1, 1, "br2")],
        expect![[r#"
            plan for h1
              n2 epoch 1 on br2
        "#]],
    );
}

#[test]
fn a_stale_assignment_is_ignored() {
    let mut history = n1_with_subnets();
    history.extend([
        assigned(N1, H1, 5, "br1"),
        assigned(N1, H1, 3, "old0"),
        // Stale for another network is judged per network: n2 has no epoch yet, so 1 is fresh.
        assigned(N2, H1, 1, "br2"),
    ]);
    check(
        &history,
        expect![[r#"
            plan for h1
              n1 epoch 5 on br1
                s1 10.1.0.0/24 router 10.1.0.1 dns [10.1.0.53,10.9.9.53] ntp [10.1.0.123] lease 3600s server -
                  10.1.0.10 02:00:00:00:00:01
                  10.1.0.30 02:00:00:00:00:03
                s2 2001:db8::/64 router 2001:db8::1 dns [2001:db8::53] ntp [] lease 3600s server -
                  2001:db8::20 02:00:00:00:00:02
              n2 epoch 1 on br2
        "#]],
    );
}

#[test]
fn an_ended_epoch_cannot_be_revived_but_a_newer_one_can() {
    let base = [assigned(N1, H1, 5, "br1"), unassigned(N1, H1, 5)];
    let mut stale = base.to_vec();
    stale.extend([assigned(N1, H1, 5, "br1"), assigned(N1, H1, 4, "br1")]);
    check(
        &stale,
        expect![[r#"
            plan for h1
        "#]],
    );
    let mut newer = base.to_vec();
    newer.push(assigned(N1, H1, 6, "br9"));
    check(
        &newer,
        expect![[r#"
            plan for h1
              n1 epoch 6 on br9
        "#]],
    );
}

#[test]
fn an_unassignment_of_another_epoch_or_host_is_ignored() {
    let history = [
        assigned(N1, H1, 5, "br1"),
        unassigned(N1, H1, 4),
        unassigned(N1, H1, 6),
        unassigned(N1, H2, 5),
        unassigned(N2, H1, 5),
    ];
    check(
        &history,
        expect![[r#"
            plan for h1
              n1 epoch 5 on br1
        "#]],
    );
    let mut ended = history.to_vec();
    ended.push(unassigned(N1, H1, 5));
    check(
        &ended,
        expect![[r#"
            plan for h1
        "#]],
    );
}

#[test]
fn a_deactivated_subnet_leaves_the_plan() {
    let mut history = n1_with_subnets();
    history.extend([assigned(N1, H1, 1, "br1"), deactivated(N1, S2)]);
    check(
        &history,
        expect![[r#"
            plan for h1
              n1 epoch 1 on br1
                s1 10.1.0.0/24 router 10.1.0.1 dns [10.1.0.53,10.9.9.53] ntp [10.1.0.123] lease 3600s server -
                  10.1.0.10 02:00:00:00:00:01
                  10.1.0.30 02:00:00:00:00:03
        "#]],
    );
}

#[test]
fn a_second_activation_updates_the_options() {
    let mut history = n1_with_subnets();
    history.extend([
        assigned(N1, H1, 1, "br1"),
        activated(N1, S1, "10.1.0.0/24", &["10.1.0.54"], &["10.1.0.124", "10.1.0.125"]),
    ]);
    check(
        &history,
        expect![[r#"
            plan for h1
              n1 epoch 1 on br1
                s1 10.1.0.0/24 router 10.1.0.1 dns [10.1.0.54] ntp [10.1.0.124,10.1.0.125] lease 3600s server -
                  10.1.0.10 02:00:00:00:00:01
                  10.1.0.30 02:00:00:00:00:03
                s2 2001:db8::/64 router 2001:db8::1 dns [2001:db8::53] ntp [] lease 3600s server -
                  2001:db8::20 02:00:00:00:00:02
        "#]],
    );
}

#[test]
fn the_plan_serializes_as_plain_data() {
    let history = [
        activated(N1, S1, "10.1.0.0/24", &[], &[]),
        added(N1, S1, vnic(1), mac(1), "10.1.0.10"),
        assigned(N1, H1, 1, "br1"),
    ];
    let json =
        serde_json::to_string(&plan(&view_after(&history), &PlanOptions::default())).expect("a plan always serializes");
    expect![[r#"{"host_id":"00000000-0000-0000-0000-000000000001","networks":[{"network_id":"00000000-0000-0000-0000-000000000001","epoch":1,"interface":"br1","subnets":[{"subnet_id":"00000000-0000-0000-0000-000000000001","cidr":"10.1.0.0/24","router":"10.1.0.1","dns_servers":[],"ntp_servers":[],"lease_secs":3600,"server_address":null,"server_address_refused":null,"hosts":[{"mac":"02:00:00:00:00:01","ip":"10.1.0.10"}]}],"conflict_probe":true}]}"#]]
        .assert_eq(&json);
}

// ---- DHCP ports --------------------------------------------------------------------------

#[test]
fn ports_are_requested_for_each_served_subnet_without_one() {
    let mut history = n1_with_subnets();
    history.extend([
        // n2 is served but its MAC is not known yet; n3's subnet is not served by h1.
        activated(N2, S3, "10.2.0.0/24", &[], &[]),
        activated(NetworkId::from_u128(3), SubnetId::from_u128(4), "10.3.0.0/24", &[], &[]),
        assigned(N1, H1, 1, "br1"),
        assigned(N2, H1, 1, "br2"),
        // h1 already holds a port in s1; h2's port in s2 does not count for h1.
        added(N1, S1, server(H1), port_mac(1), "10.1.0.2"),
        added(N1, S2, server(H2), port_mac(2), "2001:db8::3"),
    ]);
    check_ports(
        &history,
        expect![[r#"
            requested n1 s2 h1 02:00:00:00:dd:01
            ---
            none
        "#]],
    );
}

#[test]
fn ports_are_released_on_networks_no_longer_served() {
    let mut history = n1_with_subnets();
    history.extend([
        activated(N2, S3, "10.2.0.0/24", &[], &[]),
        assigned(N1, H1, 1, "br1"),
        assigned(N2, H1, 1, "br2"),
        added(N1, S1, server(H1), port_mac(1), "10.1.0.2"),
        added(N1, S2, server(H1), port_mac(1), "2001:db8::2"),
        added(N1, S1, server(H2), port_mac(2), "10.1.0.3"),
        added(N2, S3, server(H1), port_mac(1), "10.2.0.2"),
        unassigned(N1, H1, 1),
    ]);
    check_ports(
        &history,
        expect![[r#"
            none
            ---
            released n1 s1 h1 02:00:00:00:dd:01
            released n1 s2 h1 02:00:00:00:dd:01
        "#]],
    );
    // Once the allocator has removed them, nothing is left to release.
    history.extend([
        removed(N1, S1, server(H1), port_mac(1), "10.1.0.2"),
        removed(N1, S2, server(H1), port_mac(1), "2001:db8::2"),
    ]);
    check_ports(
        &history,
        expect![[r#"
            none
            ---
            none
        "#]],
    );
}

// ---- Snapshots ---------------------------------------------------------------------------

/// A history touching every part of the view.
fn rich_history() -> Vec<Event> {
    let mut history = n1_with_subnets();
    history.extend([
        activated(N2, S3, "10.2.0.0/24", &["10.2.0.53"], &[]),
        added(N2, S3, vnic(7), mac(7), "10.2.0.70"),
        added(N1, S1, server(H1), port_mac(1), "10.1.0.2"),
        added(N1, S1, server(H2), port_mac(2), "10.1.0.3"),
        assigned(N1, H1, 3, "br1"),
        assigned(N2, H1, 1, "br2"),
        unassigned(N2, H1, 1),
    ]);
    history
}

fn policy(network_id: NetworkId, conflict_probe: Option<bool>) -> Event {
    Event::NetworkPolicyApplied(NetworkPolicyApplied {
        network_id,
        policy: crate::event::NetworkPolicy { conflict_probe, ..Default::default() },
        cause: cause(),
    })
}

#[test]
fn conflict_probing_follows_the_networks_policy_and_is_on_by_default() {
    let probe = |history: &[Event]| {
        let view = view_after(history);
        plan(&view, &PlanOptions::default())
            .networks
            .iter()
            .map(|n| (net(n.network_id), n.conflict_probe))
            .collect::<Vec<_>>()
    };
    let mut history = two_served_networks();
    assert_eq!(probe(&history), vec![("n1".to_owned(), true), ("n2".to_owned(), true)]);
    history.push(policy(N1, Some(false)));
    assert_eq!(probe(&history), vec![("n1".to_owned(), false), ("n2".to_owned(), true)]);
    // A policy without the field is the default again; so is a network's policy reset.
    let mut reset = history.clone();
    reset.push(policy(N1, None));
    assert_eq!(probe(&reset), vec![("n1".to_owned(), true), ("n2".to_owned(), true)]);
    assert_eq!(view_after(&reset).snapshot(), view_after(&two_served_networks()).snapshot());
    // The policy is what the apply answers, so the agent re-plans that network.
    let mut view = view_after(&history);
    let touched = view.apply(&Envelope {
        id: EventId::from_u128(1),
        source: "test".to_owned(),
        time: Timestamp::from_unix_ms(0),
        subject: None,
        event: policy(N2, Some(false)),
    });
    assert_eq!(touched, Some(PlanChange::Server(N2)));
    // Kept in the snapshot.
    let bytes = view.snapshot();
    let restored = HostDhcpView::restore(&(), &bytes).expect("a snapshot restores");
    assert_eq!(restored, view);
    assert!(String::from_utf8_lossy(&bytes).contains(r#""probe_off":["#), "{}", String::from_utf8_lossy(&bytes));
}

fn two_served_networks() -> Vec<Event> {
    let mut history = n1_with_subnets();
    history.extend([assigned(N1, H1, 1, "br1"), assigned(N2, H1, 1, "br2")]);
    history
}

#[test]
fn snapshot_and_restore_round_trip_with_equal_bytes() {
    let view = view_after(&rich_history());
    let bytes = view.snapshot();
    let restored = HostDhcpView::restore(&(), &bytes).expect("a snapshot restores");
    assert_eq!(restored, view);
    assert_eq!(restored.snapshot(), bytes);
    // The ended epoch of n2 survives the round trip: it still cannot be revived.
    let mut revived = restored.clone();
    revived.apply(&Envelope {
        id: EventId::from_u128(1),
        source: "test".to_owned(),
        time: Timestamp::from_unix_ms(0),
        subject: None,
        event: assigned(N2, H1, 1, "br2"),
    });
    assert_eq!(revived, restored);
}

#[test]
fn equal_state_gives_equal_bytes_whatever_the_history() {
    let mut detour = rich_history();
    detour.extend([
        activated(NetworkId::from_u128(3), SubnetId::from_u128(4), "10.3.0.0/24", &[], &[]),
        added(NetworkId::from_u128(3), SubnetId::from_u128(4), vnic(8), mac(8), "10.3.0.80"),
        added(N1, S1, vnic(9), mac(9), "10.1.0.90"),
        removed(N1, S1, vnic(9), mac(9), "10.1.0.90"),
        deactivated(NetworkId::from_u128(3), SubnetId::from_u128(4)),
    ]);
    assert_eq!(view_after(&detour).snapshot(), view_after(&rich_history()).snapshot());
}

#[test]
fn the_snapshot_format_is_stable() {
    let history = [
        activated(N1, S1, "10.1.0.0/24", &["10.1.0.53"], &[]),
        added(N1, S1, server(H1), port_mac(1), "10.1.0.2"),
        assigned(N1, H1, 2, "br1"),
    ];
    let bytes = view_after(&history).snapshot();
    expect![[r#"{"version":1,"host_id":"00000000-0000-0000-0000-000000000001","assignments":[{"network_id":"00000000-0000-0000-0000-000000000001","epoch":2,"interface":"br1","serving":true}],"subnets":[{"network_id":"00000000-0000-0000-0000-000000000001","subnet_id":"00000000-0000-0000-0000-000000000001","cidr":"10.1.0.0/24","gateway":"10.1.0.1","dns_servers":["10.1.0.53"],"ntp_servers":[]}],"reservations":[{"network_id":"00000000-0000-0000-0000-000000000001","subnet_id":"00000000-0000-0000-0000-000000000001","ip":"10.1.0.2","mac":"02:00:00:00:dd:01","owner":{"kind":"dhcp_server","host_id":"00000000-0000-0000-0000-000000000001"}}]}"#]]
        .assert_eq(&String::from_utf8_lossy(&bytes));
}

#[test]
fn restore_refuses_what_is_not_a_snapshot_of_this_version() {
    let errors = [
        &b"not json"[..],
        br#"{"version":2,"host_id":"00000000-0000-0000-0000-000000000001"}"#,
        br#"{"version":1,"host_id":"00000000-0000-0000-0000-000000000001","assignments":[]}"#,
        br#"{"version":1,"host_id":"00000000-0000-0000-0000-000000000001","assignments":[
            {"network_id":"00000000-0000-0000-0000-000000000001","epoch":1,"interface":"br1","serving":true},
            {"network_id":"00000000-0000-0000-0000-000000000001","epoch":2,"interface":"br1","serving":true}
        ],"subnets":[],"reservations":[]}"#,
    ]
    .map(|bytes| HostDhcpView::restore(&(), bytes).map(|_| ()).map_err(|e| e.to_string()));
    expect![[r#"
        [
            Err(
                "the snapshot cannot be read: expected ident at line 1 column 2",
            ),
            Err(
                "the snapshot has format version 2; this build reads version 1",
            ),
            Err(
                "the snapshot cannot be read: missing field `subnets` at line 1 column 79",
            ),
            Err(
                "the snapshot is inconsistent: network 00000000-0000-0000-0000-000000000001 is assigned twice",
            ),
        ]
    "#]]
    .assert_debug_eq(&errors);
}

/// What a shell holds that plans a network anew on a server change and applies host changes to
/// what it holds (as the host agent does) equals the whole plan after every input, and the view's
/// invariants hold (its index of own ports among them). Panics with the input that broke it.
fn check_changes_keep_the_plan(history: &[Event]) -> BTreeMap<NetworkId, NetworkDhcpConfig> {
    let options = PlanOptions::default();
    let mut view = HostDhcpView::new(H1);
    let mut held: BTreeMap<NetworkId, NetworkDhcpConfig> = BTreeMap::new();
    for (index, event) in history.iter().enumerate() {
        let input = Envelope {
            id: EventId::from_u128(1000 + u128::try_from(index).expect("histories are short")),
            source: "test".to_owned(),
            time: Timestamp::from_unix_ms(0),
            subject: None,
            event: event.clone(),
        };
        match view.apply(&input) {
            Some(PlanChange::Server(network_id)) => match plan_network(&view, network_id, &options) {
                Some(config) => held.insert(network_id, config),
                None => held.remove(&network_id),
            },
            Some(PlanChange::Host(change)) => {
                let config = held.get_mut(&change.network_id).expect("host changes come for served networks only");
                config.apply_hosts(&[change]);
                None
            }
            None => None,
        };
        view.check().unwrap_or_else(|violation| panic!("after input {index}: {event:?}: {violation}"));
        let whole = plan(&view, &options).networks;
        assert_eq!(held.values().cloned().collect::<Vec<_>>(), whole, "after input {index}: {event:?}");
    }
    held
}

/// The view's changes keep a held plan whole through a history that assigns, unassigns, activates
/// and reserves on two networks (and on another host).
#[test]
fn applying_the_views_changes_keeps_the_whole_plan() {
    let mut history = rich_history();
    history.extend([
        added(N1, S1, vnic(8), mac(8), "10.1.0.80"),
        // Repeated: no change.
        added(N1, S1, vnic(8), mac(8), "10.1.0.80"),
        // A removal that does not match what is held changes nothing.
        removed(N1, S1, vnic(9), mac(8), "10.1.0.80"),
        removed(N1, S1, vnic(8), mac(8), "10.1.0.80"),
        added(N2, S3, vnic(9), mac(9), "10.2.0.90"),
    ]);
    assert!(!check_changes_keep_the_plan(&history).is_empty(), "the history leaves something served");
}

/// A client's coming and going is a host change; a server's own address, another host's port, an
/// unserved network and an inactive subnet are not.
#[test]
fn a_vnic_reservation_is_a_host_change_and_a_port_a_server_change() {
    let mut view = view_after(&n1_with_subnets());
    view.apply(&envelope_of(assigned(N1, H1, 1, "br1")));
    let change = view.apply(&envelope_of(added(N1, S1, vnic(8), mac(8), "10.1.0.80")));
    let host = DhcpHost { mac: mac(8), ip: ip("10.1.0.80") };
    assert_eq!(change, Some(PlanChange::Host(HostChange { network_id: N1, subnet_id: S1, host, served: true })));
    assert_eq!(view.apply(&envelope_of(added(N1, S1, vnic(8), mac(8), "10.1.0.80"))), None, "a repeat");
    let change = view.apply(&envelope_of(removed(N1, S1, vnic(8), mac(8), "10.1.0.80")));
    assert_eq!(change, Some(PlanChange::Host(HostChange { network_id: N1, subnet_id: S1, host, served: false })));
    let own = view.apply(&envelope_of(added(N1, S1, server(H1), port_mac(1), "10.1.0.2")));
    assert_eq!(own, Some(PlanChange::Server(N1)));
    assert_eq!(view.apply(&envelope_of(added(N1, S1, server(H2), port_mac(2), "10.1.0.3"))), None);
    assert_eq!(view.apply(&envelope_of(added(N2, S3, vnic(7), mac(7), "10.2.0.70"))), None, "n2 is not served");
}

fn envelope_of(event: Event) -> Envelope {
    Envelope {
        id: EventId::from_u128(1),
        source: "test".to_owned(),
        time: Timestamp::from_unix_ms(0),
        subject: None,
        event,
    }
}

/// Random histories over two networks (one served, one moving), three subnets and a handful of
/// MACs and addresses, with repeats and mismatched removals: the held plan stays whole after every
/// input, in 200 seeds.
#[test]
fn random_histories_keep_the_held_plan_whole() {
    let subnets = [(N1, S1, "10.1.0"), (N1, S2, "10.1.1"), (N2, S3, "10.2.0")];
    let mut host_changes = 0;
    for seed in 0..200 {
        let mut rng = SplitMix64(seed);
        let mut history = Vec::new();
        for _ in 0..120 {
            let (network_id, subnet_id, prefix) = subnets[rng.below(3) as usize];
            let n = 10 + rng.below(6) as u8;
            let address = format!("{prefix}.{}", 10 + rng.below(4));
            let owner = match rng.below(8) {
                0 => server(H1),
                1 => server(H2),
                _ => vnic(n),
            };
            let event = match rng.below(20) {
                0..=6 => added(network_id, subnet_id, owner, mac(n), &address),
                7..=12 => removed(network_id, subnet_id, owner, mac(n), &address),
                13 => assigned(network_id, H1, rng.below(4), "br1"),
                14 => unassigned(network_id, H1, rng.below(4)),
                15 | 16 => activated(network_id, subnet_id, &format!("{prefix}.0/24"), &[], &[]),
                17 => deactivated(network_id, subnet_id),
                18 => port_refused(network_id, subnet_id, H1),
                _ => policy(network_id, Some(rng.below(2) == 0)),
            };
            history.push(event);
        }
        let mut view = HostDhcpView::new(H1);
        host_changes += history
            .iter()
            .filter(|event| matches!(view.apply(&envelope_of((*event).clone())), Some(PlanChange::Host(_))))
            .count();
        check_changes_keep_the_plan(&history);
    }
    assert!(host_changes > 1000, "the histories make host changes: {host_changes}");
}

/// A batch larger than the merge threshold gives what the changes one by one give.
#[test]
fn a_large_batch_of_host_changes_is_merged_as_one_by_one() {
    let mut history = n1_with_subnets();
    history.push(assigned(N1, H1, 1, "br1"));
    let view = view_after(&history);
    let config = plan_network(&view, N1, &PlanOptions::default()).expect("n1 is served");
    let mut rng = SplitMix64(7);
    let changes: Vec<HostChange> = (0..300)
        .map(|_| {
            let n = rng.below(100) as u8;
            let host = DhcpHost { mac: mac(n), ip: ip(&format!("10.1.0.{}", rng.below(200))) };
            HostChange { network_id: N1, subnet_id: S1, host, served: rng.below(3) != 0 }
        })
        .collect();
    let mut merged = config.clone();
    merged.apply_hosts(&changes);
    let mut one_by_one = config;
    for change in &changes {
        one_by_one.apply_hosts(std::slice::from_ref(change));
    }
    assert_eq!(merged, one_by_one);
    assert!(merged.subnets[0].hosts.is_sorted_by_key(|host| (host.ip, host.mac)));
    assert!(merged.host_count() > 50, "{}", merged.host_count());
}

fn port_refused(network_id: NetworkId, subnet_id: SubnetId, host_id: HostId) -> Event {
    Event::RequestRejected(RequestRejected {
        network_id,
        request_type: DHCP_PORT_REQUESTED_TYPE.to_owned(),
        code: crate::RejectionCode::SubnetExhausted,
        message: "no free address".to_owned(),
        cause: cause(),
        vnic_id: None,
        mac: Some(port_mac(1)),
        subnet_id: Some(subnet_id),
        host_id: Some(host_id),
    })
}

/// A server refused its own address says so in its subnet's plan until the address is granted;
/// another host's refusal, or a refused vNIC, is not this host's concern.
#[test]
fn a_refused_own_address_is_in_the_plan_until_one_is_granted() {
    let port = DhcpPortRequested { network_id: N1, subnet_id: S1, host_id: H1, mac: port_mac(1) };
    assert_eq!(Event::DhcpPortRequested(port).type_name(), DHCP_PORT_REQUESTED_TYPE, "the constant is the table's");
    let served = [assigned(N1, H1, 1, "br0"), activated(N1, S1, "10.0.0.0/29", &[], &[])];
    let refused =
        |view: &HostDhcpView| plan(view, &PlanOptions::default()).networks[0].subnets[0].server_address_refused.clone();
    let view = view_after(&[&served[..], &[port_refused(N1, S1, H2)]].concat());
    assert_eq!(refused(&view), None, "another host's refusal");
    let view = view_after(&[&served[..], &[port_refused(N1, S1, H1)]].concat());
    assert_eq!(refused(&view).as_deref(), Some("subnet_exhausted: no free address"));
    let restored = HostDhcpView::restore(&(), &view.snapshot()).expect("restores");
    assert_eq!(restored, view, "the refusal survives a snapshot");
    let granted =
        [&served[..], &[port_refused(N1, S1, H1), added(N1, S1, server(H1), port_mac(1), "10.0.0.6")]].concat();
    let view = view_after(&granted);
    assert_eq!(refused(&view), None, "granted at last");
    assert_eq!(plan(&view, &PlanOptions::default()).networks[0].subnets[0].server_address, Some(ip("10.0.0.6")));
}
