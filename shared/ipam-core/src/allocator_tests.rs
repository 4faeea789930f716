//! Given/when/then tests of the allocator: a history of inputs, one input, the expected outputs.
//! Every rejection code and every lifecycle transition has a test here.

use expect_test::{Expect, expect};

use super::*;
use crate::event::{
    DhcpPortReleased, DhcpPortRequested, IpConflictCleared, IpConflictDetected, NetworkPolicy, NetworkPolicySet,
    NetworkRemoved, NetworkUpserted, PartitionClockTicked, SubnetAdded, SubnetRemoved, VnicDown, VnicUp,
};
use crate::net::IpRange;
use crate::testing::{envelope, render};

const NET: NetworkId = NetworkId::from_u128(1);
const S1: SubnetId = SubnetId::from_u128(11);
const S2: SubnetId = SubnetId::from_u128(12);
const HOST: HostId = HostId::from_u128(31);

fn network(enabled: bool) -> Event {
    Event::NetworkUpserted(NetworkUpserted {
        network_id: NET,
        name: "ovirtmgmt".to_owned(),
        ipam_enabled: enabled,
        servers_count: None,
    })
}

/// A subnet with one DNS server of its family.
fn subnet(subnet_id: SubnetId, cidr: &str, gateway: &str) -> SubnetAdded {
    let cidr: crate::Cidr = cidr.parse().unwrap();
    let dns = if cidr.is_ipv4() { "192.0.2.53" } else { "2001:db8:53::53" };
    SubnetAdded {
        network_id: NET,
        subnet_id,
        cidr,
        gateway: gateway.parse().unwrap(),
        dns_servers: vec![dns.parse().unwrap()],
        ntp_servers: vec![],
        allocation_pools: None,
    }
}

fn add(subnet_id: SubnetId, cidr: &str, gateway: &str) -> Event {
    Event::SubnetAdded(subnet(subnet_id, cidr, gateway))
}

fn with_pools(subnet_id: SubnetId, cidr: &str, gateway: &str, pools: &[(&str, &str)]) -> Event {
    let pools = pools.iter().map(|(s, e)| IpRange { start: s.parse().unwrap(), end: e.parse().unwrap() }).collect();
    Event::SubnetAdded(SubnetAdded { allocation_pools: Some(pools), ..subnet(subnet_id, cidr, gateway) })
}

fn mac(n: u8) -> Mac {
    Mac::from_octets([0x52, 0x54, 0, 0, 0, n]).unwrap()
}

fn up(vnic: u128, subnet_id: Option<SubnetId>, requested_ip: Option<&str>) -> VnicUp {
    VnicUp {
        vnic_id: VnicId::from_u128(vnic),
        vm_id: VmId::from_u128(100 + vnic),
        network_id: NET,
        subnet_id,
        subnet_ids: Vec::new(),
        mac: mac(vnic as u8),
        requested_ip: requested_ip.map(|ip| ip.parse().unwrap()),
    }
}

fn start(vnic: u128) -> Event {
    Event::VnicStarted(up(vnic, Some(S1), None))
}

fn down(vnic: u128) -> VnicDown {
    VnicDown { vnic_id: VnicId::from_u128(vnic), network_id: NET }
}

fn stop(vnic: u128) -> Event {
    Event::VnicStopped(down(vnic))
}

fn port(subnet_id: SubnetId) -> Event {
    Event::DhcpPortRequested(DhcpPortRequested { network_id: NET, subnet_id, host_id: HOST, mac: mac(0xaa) })
}

/// A network with IPAM on and one /29 subnet (gateway .1, so .2 to .6 are free).
fn small_network() -> Vec<Event> {
    vec![network(true), add(S1, "10.0.0.0/29", "10.0.0.1")]
}

fn history(base: Vec<Event>, more: impl IntoIterator<Item = Event>) -> Vec<Event> {
    base.into_iter().chain(more).collect()
}

/// Applies `history`, then `input`, and compares the input's outputs with `expected`. A rejection
/// must leave the state exactly as it was, but for the input's id, which the network's window now
/// holds, so that a retry is not answered twice.
fn check(history: Vec<Event>, input: Event, expected: Expect) {
    let mut allocator = Allocator::new();
    for (n, event) in history.into_iter().enumerate() {
        allocator.apply(&envelope(n as u128, event));
        allocator.check().expect("the invariants hold after every input");
    }
    let before = allocator.clone();
    let input = envelope(999, input);
    let outputs = allocator.apply(&input);
    allocator.check().expect("the invariants hold after the input");
    if outputs.iter().any(|output| matches!(output, Event::RequestRejected(_))) {
        assert_eq!(outputs.len(), 1, "a rejection comes alone");
        assert!(allocator.same_state_but_inputs(&before), "a rejection changed more than the window");
    }
    let network = allocator.network(input.event.network_id().unwrap()).expect("the network's machine is kept");
    assert!(network.recent_inputs().contains(input.id), "the input's id is remembered");
    expected.assert_eq(&render(&outputs));
}

// ---- Lifecycle ------------------------------------------------------------------------------

#[test]
fn network_upsert_alone_emits_nothing() {
    check(vec![], network(true), expect![[""]]);
}

#[test]
fn subnet_added_is_activated_with_resolved_pools() {
    check(
        vec![network(true)],
        add(S1, "10.0.0.0/24", "10.0.0.1"),
        expect![[r#"
        subnet.activated {allocation_pools:[{end:10.0.0.254,start:10.0.0.1}],cidr:10.0.0.0/24,dns_servers:[192.0.2.53],gateway:10.0.0.1,network_id:#1,ntp_servers:[],subnet_id:#11}
    "#]],
    );
}

#[test]
fn same_subnet_added_twice_changes_nothing() {
    check(small_network(), add(S1, "10.0.0.0/29", "10.0.0.1"), expect![[""]]);
}

#[test]
fn subnet_options_may_change_and_are_activated_again() {
    let changed =
        SubnetAdded { ntp_servers: vec!["192.0.2.123".parse().unwrap()], ..subnet(S1, "10.0.0.0/29", "10.0.0.1") };
    check(
        small_network(),
        Event::SubnetAdded(changed),
        expect![[r#"
        subnet.activated {allocation_pools:[{end:10.0.0.6,start:10.0.0.1}],cidr:10.0.0.0/29,dns_servers:[192.0.2.53],gateway:10.0.0.1,network_id:#1,ntp_servers:[192.0.2.123],subnet_id:#11}
    "#]],
    );
}

#[test]
fn ipv6_subnet_is_activated() {
    check(
        vec![network(true)],
        add(S2, "2001:db8::/64", "2001:db8::1"),
        expect![[r#"
            subnet.activated {allocation_pools:[{end:2001:db8::ffff:ffff:ffff:ffff,start:2001:db8::1}],cidr:2001:db8::/64,dns_servers:[2001:db8:53::53],gateway:2001:db8::1,network_id:#1,ntp_servers:[],subnet_id:#12}
        "#]],
    );
}

#[test]
fn vnic_started_reserves_the_first_free_address() {
    check(
        small_network(),
        start(1),
        expect![[r#"
        reservation.added {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#11}
    "#]],
    );
}

#[test]
fn vnic_plugged_and_linked_reserve_like_started() {
    check(
        small_network(),
        Event::VnicPlugged(up(1, Some(S1), None)),
        expect![[r#"
        reservation.added {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#11}
    "#]],
    );
    check(
        small_network(),
        Event::VnicLinked(up(1, Some(S1), None)),
        expect![[r#"
        reservation.added {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#11}
    "#]],
    );
}

#[test]
fn vnic_coming_up_twice_holds_one_reservation() {
    check(history(small_network(), [start(1)]), Event::VnicLinked(up(1, Some(S1), None)), expect![[""]]);
}

#[test]
fn vnic_without_subnet_gets_no_service() {
    check(small_network(), Event::VnicStarted(up(1, None, None)), expect![[""]]);
}

#[test]
fn vnic_with_fixed_ip_gets_that_ip() {
    check(
        small_network(),
        Event::VnicStarted(up(1, Some(S1), Some("10.0.0.5"))),
        expect![[r#"
        reservation.added {ip:10.0.0.5,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#11}
    "#]],
    );
}

#[test]
fn ipv6_vnic_gets_an_address() {
    let v6 = Event::VnicStarted(up(1, Some(S2), None));
    check(
        vec![network(true), add(S2, "2001:db8::/64", "2001:db8::1")],
        v6,
        expect![[r#"
        reservation.added {ip:2001:db8::2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#12}
    "#]],
    );
}

#[test]
fn vnic_stopped_unplugged_or_unlinked_releases() {
    let held = history(small_network(), [start(1)]);
    check(
        held.clone(),
        stop(1),
        expect![[r#"
        reservation.removed {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},reason:vnic_down,subnet_id:#11}
    "#]],
    );
    check(
        held.clone(),
        Event::VnicUnplugged(down(1)),
        expect![[r#"
        reservation.removed {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},reason:vnic_down,subnet_id:#11}
    "#]],
    );
    check(
        held,
        Event::VnicUnlinked(down(1)),
        expect![[r#"
        reservation.removed {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},reason:vnic_down,subnet_id:#11}
    "#]],
    );
}

#[test]
fn down_event_for_a_vnic_holding_nothing_changes_nothing() {
    check(history(small_network(), [start(1), stop(1)]), stop(1), expect![[""]]);
    check(vec![], stop(7), expect![[""]]);
}

#[test]
fn released_address_is_not_handed_out_again_at_once() {
    check(
        history(small_network(), [start(1), stop(1)]),
        start(2),
        expect![[r#"
        reservation.added {ip:10.0.0.3,mac:52:54:00:00:00:02,network_id:#1,owner:{kind:vnic,vm_id:#102,vnic_id:#2},subnet_id:#11}
    "#]],
    );
}

#[test]
fn dhcp_port_is_reserved_like_a_vnic_and_idempotent() {
    check(
        small_network(),
        port(S1),
        expect![[r#"
        reservation.added {ip:10.0.0.2,mac:52:54:00:00:00:aa,network_id:#1,owner:{host_id:#31,kind:dhcp_server},subnet_id:#11}
    "#]],
    );
    check(history(small_network(), [port(S1)]), port(S1), expect![[""]]);
}

#[test]
fn dhcp_server_uses_one_mac_in_every_subnet() {
    let held = history(small_network(), [add(S2, "10.0.1.0/24", "10.0.1.1"), port(S1)]);
    check(
        held,
        port(S2),
        expect![[r#"
        reservation.added {ip:10.0.1.2,mac:52:54:00:00:00:aa,network_id:#1,owner:{host_id:#31,kind:dhcp_server},subnet_id:#12}
    "#]],
    );
}

#[test]
fn dhcp_port_released() {
    let released = DhcpPortReleased { network_id: NET, subnet_id: S1, host_id: HOST, mac: mac(0xaa) };
    check(
        history(small_network(), [port(S1)]),
        Event::DhcpPortReleased(released),
        expect![[r#"
        reservation.removed {ip:10.0.0.2,mac:52:54:00:00:00:aa,network_id:#1,owner:{host_id:#31,kind:dhcp_server},reason:port_released,subnet_id:#11}
    "#]],
    );
}

#[test]
fn removing_a_subnet_takes_dhcp_ports_with_it() {
    let removed = Event::SubnetRemoved(SubnetRemoved { network_id: NET, subnet_id: S1 });
    check(
        history(small_network(), [port(S1)]),
        removed,
        expect![[r#"
        reservation.removed {ip:10.0.0.2,mac:52:54:00:00:00:aa,network_id:#1,owner:{host_id:#31,kind:dhcp_server},reason:subnet_removed,subnet_id:#11}
        subnet.deactivated {network_id:#1,subnet_id:#11}
    "#]],
    );
}

#[test]
fn removing_a_network_releases_everything() {
    let removed = Event::NetworkRemoved(NetworkRemoved { network_id: NET });
    let held = history(small_network(), [add(S2, "10.0.1.0/24", "10.0.1.1"), start(1), port(S1)]);
    check(
        held,
        removed,
        expect![[r#"
        reservation.removed {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},reason:network_removed,subnet_id:#11}
        reservation.removed {ip:10.0.0.3,mac:52:54:00:00:00:aa,network_id:#1,owner:{host_id:#31,kind:dhcp_server},reason:network_removed,subnet_id:#11}
        subnet.deactivated {network_id:#1,subnet_id:#11}
        subnet.deactivated {network_id:#1,subnet_id:#12}
    "#]],
    );
}

#[test]
fn disabling_ipam_keeps_reservations_and_still_releases_them() {
    check(
        history(small_network(), [start(1), network(false)]),
        stop(1),
        expect![[r#"
        reservation.removed {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},reason:vnic_down,subnet_id:#11}
    "#]],
    );
}

// ---- Rejections -----------------------------------------------------------------------------

#[test]
fn rejects_blank_network_name() {
    let blank = Event::NetworkUpserted(NetworkUpserted {
        network_id: NET,
        name: " ".to_owned(),
        ipam_enabled: true,
        servers_count: None,
    });
    check(
        vec![],
        blank,
        expect![[r#"
        request.rejected {code:invalid_request,message:the network name must be 1 to 255 bytes and not blank,network_id:#1,request_type:ipam.network.upserted.v1}
    "#]],
    );
}

#[test]
fn rejects_subnet_on_unknown_network() {
    check(
        vec![],
        add(S1, "10.0.0.0/24", "10.0.0.1"),
        expect![[r#"
        request.rejected {code:unknown_network,message:network #1 is not known to IPAM,network_id:#1,request_type:ipam.subnet.added.v1,subnet_id:#11}
    "#]],
    );
}

#[test]
fn rejects_gateway_outside_subnet() {
    check(
        vec![network(true)],
        add(S1, "10.0.0.0/24", "10.0.1.1"),
        expect![[r#"
        request.rejected {code:invalid_gateway,message:gateway 10.0.1.1 is outside 10.0.0.0/24,network_id:#1,request_type:ipam.subnet.added.v1,subnet_id:#11}
    "#]],
    );
}

#[test]
fn rejects_bad_pools() {
    check(
        vec![network(true)],
        with_pools(S1, "10.0.0.0/24", "10.0.0.1", &[("10.0.0.9", "10.0.1.9")]),
        expect![[r#"
        request.rejected {code:invalid_pool,message:pool 10.0.0.9-10.0.1.9 is not inside 10.0.0.0/24,network_id:#1,request_type:ipam.subnet.added.v1,subnet_id:#11}
    "#]],
    );
}

#[test]
fn rejects_ipv4_wider_than_slash_8() {
    check(
        vec![network(true)],
        add(S1, "10.0.0.0/7", "10.0.0.1"),
        expect![[r#"
        request.rejected {code:subnet_too_large,message:10.0.0.0/7 is wider than /8,network_id:#1,request_type:ipam.subnet.added.v1,subnet_id:#11}
    "#]],
    );
}

#[test]
fn rejects_subnet_without_room_for_hosts() {
    check(
        vec![network(true)],
        add(S1, "10.0.0.0/31", "10.0.0.1"),
        expect![[r#"
        request.rejected {code:subnet_too_small,message:10.0.0.0/31 has no room for hosts besides the gateway,network_id:#1,request_type:ipam.subnet.added.v1,subnet_id:#11}
    "#]],
    );
}

#[test]
fn rejects_ipv6_wider_than_slash_64() {
    check(
        vec![network(true)],
        add(S2, "2001:db8:90::/48", "2001:db8:90::1"),
        expect![[r#"
        request.rejected {code:subnet_too_large,message:2001:db8:90::/48 is wider than /64, the widest DHCPv6 range dnsmasq serves,network_id:#1,request_type:ipam.subnet.added.v1,subnet_id:#12}
    "#]],
    );
}

#[test]
fn rejects_subnet_no_client_may_get_an_address_from() {
    check(
        vec![network(true)],
        add(S1, "224.0.0.0/24", "224.0.0.1"),
        expect![[r#"
        request.rejected {code:unsupported_subnet,message:224.0.0.0/24 overlaps the multicast block (224.0.0.0/4, ff00::/8), whose addresses no DHCP client may be given,network_id:#1,request_type:ipam.subnet.added.v1,subnet_id:#11}
    "#]],
    );
    let mapped = SubnetAdded { dns_servers: vec![], ..subnet(S2, "::ffff:10.0.0.0/120", "::ffff:10.0.0.1") };
    check(
        small_network(),
        Event::SubnetAdded(mapped),
        expect![[r#"
        request.rejected {code:unsupported_subnet,message:::ffff:10.0.0.0/120 overlaps the IPv4-mapped block (::ffff:0:0/96), whose addresses no DHCP client may be given,network_id:#1,request_type:ipam.subnet.added.v1,subnet_id:#12}
    "#]],
    );
}

#[test]
fn rejects_dns_server_of_the_other_family() {
    let v4_dns =
        SubnetAdded { dns_servers: vec!["192.0.2.53".parse().unwrap()], ..subnet(S2, "2001:db8::/64", "2001:db8::1") };
    check(
        vec![network(true)],
        Event::SubnetAdded(v4_dns),
        expect![[r#"
        request.rejected {code:address_family_mismatch,message:dns_servers holds 192.0.2.53, but 2001:db8::/64 is an IPv6 subnet,network_id:#1,request_type:ipam.subnet.added.v1,subnet_id:#12}
    "#]],
    );
}

#[test]
fn rejects_ntp_server_no_one_can_reach() {
    let unspecified =
        SubnetAdded { ntp_servers: vec!["0.0.0.0".parse().unwrap()], ..subnet(S1, "10.0.0.0/24", "10.0.0.1") };
    check(
        vec![network(true)],
        Event::SubnetAdded(unspecified),
        expect![[r#"
        request.rejected {code:reserved_address,message:ntp_servers holds 0.0.0.0, the unspecified block (0.0.0.0/8, ::), where no server can be reached,network_id:#1,request_type:ipam.subnet.added.v1,subnet_id:#11}
    "#]],
    );
}

#[test]
fn rejects_overlapping_subnet() {
    check(
        small_network(),
        add(S2, "10.0.0.0/24", "10.0.0.1"),
        expect![[r#"
        request.rejected {code:overlapping_subnet,message:10.0.0.0/24 overlaps subnet #11 (10.0.0.0/29) of this network,network_id:#1,request_type:ipam.subnet.added.v1,subnet_id:#12}
    "#]],
    );
}

#[test]
fn rejects_redefining_a_subnet() {
    check(
        small_network(),
        add(S1, "10.0.0.0/28", "10.0.0.1"),
        expect![[r#"
        request.rejected {code:subnet_conflict,message:subnet #11 exists as 10.0.0.0/29 with gateway 10.0.0.1; only its DNS and NTP servers may change,network_id:#1,request_type:ipam.subnet.added.v1,subnet_id:#11}
    "#]],
    );
}

#[test]
fn rejects_removing_a_subnet_in_use() {
    let removed = Event::SubnetRemoved(SubnetRemoved { network_id: NET, subnet_id: S1 });
    check(
        history(small_network(), [start(1)]),
        removed,
        expect![[r#"
        request.rejected {code:subnet_in_use,message:subnet #11 still holds 1 vNIC reservations,network_id:#1,request_type:ipam.subnet.removed.v1,subnet_id:#11}
    "#]],
    );
}

#[test]
fn rejects_removing_an_unknown_subnet() {
    check(
        small_network(),
        Event::SubnetRemoved(SubnetRemoved { network_id: NET, subnet_id: S2 }),
        expect![[r#"
        request.rejected {code:unknown_subnet,message:subnet #12 is not defined on network #1,network_id:#1,request_type:ipam.subnet.removed.v1,subnet_id:#12}
    "#]],
    );
}

#[test]
fn rejects_vnic_on_unknown_network() {
    check(
        vec![],
        start(1),
        expect![[r#"
        request.rejected {code:unknown_network,mac:52:54:00:00:00:01,message:network #1 is not known to IPAM,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#1}
    "#]],
    );
}

#[test]
fn rejects_vnic_when_ipam_disabled() {
    check(
        history(small_network(), [network(false)]),
        start(1),
        expect![[r#"
        request.rejected {code:ipam_disabled,mac:52:54:00:00:00:01,message:IPAM is disabled on network #1,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#1}
    "#]],
    );
}

#[test]
fn rejects_vnic_on_unknown_subnet() {
    check(
        small_network(),
        Event::VnicStarted(up(1, Some(S2), None)),
        expect![[r#"
        request.rejected {code:unknown_subnet,mac:52:54:00:00:00:01,message:subnet #12 is not defined on network #1,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#12,vnic_id:#1}
    "#]],
    );
}

#[test]
fn rejects_when_subnet_exhausted() {
    check(
        history(small_network(), (1..=5).map(start)),
        start(6),
        expect![[r#"
        request.rejected {code:subnet_exhausted,mac:52:54:00:00:00:06,message:no free address is left in the allocation pools of 10.0.0.0/29,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#6}
    "#]],
    );
}

#[test]
fn rejects_fixed_ip_in_use() {
    check(
        history(small_network(), [start(1)]),
        Event::VnicStarted(up(2, Some(S1), Some("10.0.0.2"))),
        expect![[r#"
        request.rejected {code:ip_in_use,mac:52:54:00:00:00:02,message:10.0.0.2 is already reserved in 10.0.0.0/29,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#2}
    "#]],
    );
}

#[test]
fn rejects_fixed_ip_outside_subnet() {
    check(
        small_network(),
        Event::VnicStarted(up(1, Some(S1), Some("10.0.1.2"))),
        expect![[r#"
        request.rejected {code:ip_outside_subnet,mac:52:54:00:00:00:01,message:10.0.1.2 is not inside 10.0.0.0/29,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#1}
    "#]],
    );
}

#[test]
fn rejects_fixed_ip_that_is_the_gateway_or_broadcast() {
    check(
        small_network(),
        Event::VnicStarted(up(1, Some(S1), Some("10.0.0.1"))),
        expect![[r#"
        request.rejected {code:ip_not_assignable,mac:52:54:00:00:00:01,message:10.0.0.1 is the network, broadcast or gateway address of 10.0.0.0/29,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#1}
    "#]],
    );
    check(
        small_network(),
        Event::VnicStarted(up(1, Some(S1), Some("10.0.0.7"))),
        expect![[r#"
        request.rejected {code:ip_not_assignable,mac:52:54:00:00:00:01,message:10.0.0.7 is the network, broadcast or gateway address of 10.0.0.0/29,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#1}
    "#]],
    );
}

#[test]
fn rejects_fixed_ip_no_host_may_hold() {
    check(
        small_network(),
        Event::VnicStarted(up(1, Some(S1), Some("224.0.0.5"))),
        expect![[r#"
        request.rejected {code:ip_not_assignable,mac:52:54:00:00:00:01,message:224.0.0.5 is in the multicast block (224.0.0.0/4, ff00::/8); no host may hold it,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#1}
    "#]],
    );
}

#[test]
fn rejects_multicast_fixed_ip_in_a_multicast_subnet_an_older_version_accepted() {
    let mut allocator = Allocator::new();
    for (n, event) in small_network().into_iter().enumerate() {
        allocator.apply(&envelope(n as u128, event));
    }
    // Snapshots are not validated again on restore, so state from before the subnet rules may hold
    // a subnet the rules now refuse.
    let snapshot = snapshot_as_json(&allocator.snapshot()).unwrap().to_string().replace("10.0.0.", "239.0.0.");
    let mut allocator = Allocator::restore(&(), snapshot.as_bytes()).unwrap();
    let outputs = allocator.apply(&envelope(999, Event::VnicStarted(up(1, Some(S1), Some("239.0.0.5")))));
    expect![[r#"
        request.rejected {code:ip_not_assignable,mac:52:54:00:00:00:01,message:239.0.0.5 is in the multicast block (224.0.0.0/4, ff00::/8); no host may hold it,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#1}
    "#]]
    .assert_eq(&render(&outputs));
}

#[test]
fn rejects_duplicate_mac() {
    let same_mac = VnicUp { mac: mac(1), ..up(2, Some(S1), None) };
    check(
        history(small_network(), [start(1)]),
        Event::VnicStarted(same_mac),
        expect![[r#"
        request.rejected {code:duplicate_mac,mac:52:54:00:00:00:01,message:MAC 52:54:00:00:00:01 is already used on network #1 by vNIC #1,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#2}
    "#]],
    );
}

#[test]
fn rejects_vnic_using_a_dhcp_servers_mac() {
    let same_mac = VnicUp { mac: mac(0xaa), ..up(1, Some(S1), None) };
    check(
        history(small_network(), [port(S1)]),
        Event::VnicStarted(same_mac),
        expect![[r#"
        request.rejected {code:duplicate_mac,mac:52:54:00:00:00:aa,message:MAC 52:54:00:00:00:aa is already used on network #1 by the DHCP server of host #31,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#1}
    "#]],
    );
}

#[test]
fn rejects_vnic_coming_up_again_with_another_address() {
    check(
        history(small_network(), [start(1)]),
        Event::VnicStarted(up(1, Some(S1), Some("10.0.0.6"))),
        expect![[r#"
        request.rejected {code:vnic_conflict,mac:52:54:00:00:00:01,message:vNIC #1 already holds 10.0.0.2 (MAC 52:54:00:00:00:01) in subnet #11 and asked for another subnet, MAC or IP; send a down event first,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#1}
    "#]],
    );
}

#[test]
fn rejects_dhcp_port_when_ipam_disabled() {
    check(
        history(small_network(), [network(false)]),
        port(S1),
        expect![[r#"
            request.rejected {code:ipam_disabled,host_id:#31,mac:52:54:00:00:00:aa,message:IPAM is disabled on network #1,network_id:#1,request_type:ipam.dhcp_port.requested.v1,subnet_id:#11}
        "#]],
    );
}

// ---- Bad fields become rejections naming the field -------------------------------------------

/// Decodes a raw engine event and renders the rejection it becomes.
fn check_decode(data: serde_json::Value, type_name: &str, expected: Expect) {
    let raw = serde_json::json!({
        "specversion": "1.0", "id": "00000000-0000-0000-0000-00000000e001", "source": "engine",
        "type": type_name, "time": "2026-11-30T00:00:00Z", "data": data,
    });
    let error = Envelope::decode(raw.to_string().as_bytes()).unwrap_err();
    let rejection = error.rejection().expect("a readable engine request about a network is rejected");
    expected.assert_eq(&format!("{} {}", error.field.unwrap_or_default(), render(&[rejection])));
}

#[test]
fn rejects_invalid_mac() {
    let data = serde_json::json!({
        "vnic_id": VnicId::from_u128(1), "vm_id": VmId::from_u128(2), "network_id": NET,
        "subnet_id": S1, "mac": "01:00:5e:00:00:01",
    });
    check_decode(
        data,
        "ipam.vnic.started.v1",
        expect![[r#"
        data.mac request.rejected {code:invalid_mac,message:data.mac: `01:00:5e:00:00:01` is a multicast MAC address and cannot hold a reservation,network_id:#1,request_type:ipam.vnic.started.v1}
    "#]],
    );
}

#[test]
fn rejects_invalid_cidr() {
    let data = serde_json::json!({
        "network_id": NET, "subnet_id": S1, "cidr": "10.0.0.5/24", "gateway": "10.0.0.1",
    });
    check_decode(
        data,
        "ipam.subnet.added.v1",
        expect![[r#"
        data.cidr request.rejected {code:invalid_cidr,message:data.cidr: `10.0.0.5/24` has host bits set; the subnet is 10.0.0.0/24,network_id:#1,request_type:ipam.subnet.added.v1}
    "#]],
    );
}

#[test]
fn rejects_invalid_ip() {
    let data = serde_json::json!({
        "network_id": NET, "subnet_id": S1, "cidr": "10.0.0.0/24", "gateway": "10.0.0.1",
        "dns_servers": ["10.0.0.300"],
    });
    check_decode(
        data,
        "ipam.subnet.added.v1",
        expect![[r#"
        data.dns_servers[0] request.rejected {code:invalid_ip,message:data.dns_servers[0]: invalid IP address syntax,network_id:#1,request_type:ipam.subnet.added.v1}
    "#]],
    );
}

#[test]
fn rejects_wrong_field_type_as_invalid_request() {
    let data = serde_json::json!({ "network_id": NET, "name": "n", "ipam_enabled": "yes" });
    check_decode(
        data,
        "ipam.network.upserted.v1",
        expect![[r#"
        data.ipam_enabled request.rejected {code:invalid_request,message:data.ipam_enabled: invalid type: string \yes\, expected a boolean,network_id:#1,request_type:ipam.network.upserted.v1}
    "#]],
    );
}

// ---- What placement hears -------------------------------------------------------------------

fn facts(history: Vec<Event>, input: Event) -> String {
    let mut allocator = Allocator::new();
    for (n, event) in history.into_iter().enumerate() {
        allocator.apply(&envelope(n as u128, event));
    }
    let outputs = allocator.apply(&envelope(999, input.clone()));
    render(&placement_facts(&input, &outputs))
}

#[test]
fn placement_hears_accepted_network_settings_and_subnet_activation() {
    expect![[r#"
        network.upserted {ipam_enabled:true,name:ovirtmgmt,network_id:#1}
    "#]]
    .assert_eq(&facts(vec![], network(true)));
    expect![[r#"
        subnet.activated {allocation_pools:[{end:10.0.0.6,start:10.0.0.1}],cidr:10.0.0.0/29,dns_servers:[192.0.2.53],gateway:10.0.0.1,network_id:#1,ntp_servers:[],subnet_id:#11}
    "#]].assert_eq(&facts(vec![network(true)], add(S1, "10.0.0.0/29", "10.0.0.1")));
    let removed = Event::NetworkRemoved(NetworkRemoved { network_id: NET });
    expect![[r#"
        network.removed {network_id:#1}
        subnet.deactivated {network_id:#1,subnet_id:#11}
    "#]]
    .assert_eq(&facts(small_network(), removed));
}

#[test]
fn a_request_refused_before_it_decoded_is_answered_once() {
    let mut allocator = applied(Allocator::new(), &started_and_stopped());
    let id = envelope(40, stop(1)).id;
    assert!(allocator.record_refused(NET, id), "the first time: write the rejection");
    assert!(!allocator.record_refused(NET, id), "a retry: write nothing");
    assert_ignored(&mut allocator, 40, start(1));
    let elsewhere = NetworkId::from_u128(9);
    assert!(allocator.record_refused(elsewhere, id), "windows are per network");
}

#[test]
fn placement_hears_nothing_of_a_retry() {
    let mut allocator = Allocator::new();
    let removed = Event::NetworkRemoved(NetworkRemoved { network_id: NET });
    for (id, event) in [(0, network(true)), (1, add(S1, "10.0.0.0/29", "10.0.0.1")), (2, removed)] {
        let input = envelope(id, event);
        assert!(!allocator.is_retry(&input));
        let (_, facts) = allocator.apply_forwarding(&input);
        assert_ne!(render(&facts), "", "input {id} is told the first time");
        assert!(allocator.is_retry(&input));
        assert_eq!(allocator.apply_forwarding(&input), (vec![], vec![]), "input {id} is not told again");
    }
}

#[test]
fn placement_hears_nothing_of_refusals_or_reservations() {
    let blank = Event::NetworkUpserted(NetworkUpserted {
        network_id: NET,
        name: String::new(),
        ipam_enabled: true,
        servers_count: None,
    });
    expect![[""]].assert_eq(&facts(vec![], blank));
    expect![[""]].assert_eq(&facts(small_network(), start(1)));
}

#[test]
fn split_and_merge_are_inverse() {
    let mut allocator = Allocator::new();
    let other = NetworkId::from_u128(2);
    for (n, event) in small_network().into_iter().chain([start(1)]).enumerate() {
        allocator.apply(&envelope(n as u128, event));
    }
    allocator.apply(&envelope(
        50,
        Event::NetworkUpserted(NetworkUpserted {
            network_id: other,
            name: "other".to_owned(),
            ipam_enabled: true,
            servers_count: None,
        }),
    ));
    let parts = allocator.clone().split();
    assert_eq!(parts.len(), 2);
    assert_eq!(Allocator::merge(parts), allocator);
}

// ---- Retries: an input id seen again has no second effect --------------------------------------

/// An allocator that applied `history`, each event with its given id.
fn applied(mut allocator: Allocator, history: &[(u128, Event)]) -> Allocator {
    for (id, event) in history {
        allocator.apply(&envelope(*id, event.clone()));
    }
    allocator
}

/// Network 1 with a subnet, vNIC 1 started (id 2) and stopped (id 3): a retry of the start would
/// reserve again.
fn started_and_stopped() -> Vec<(u128, Event)> {
    vec![(0, network(true)), (1, add(S1, "10.0.0.0/29", "10.0.0.1")), (2, start(1)), (3, stop(1))]
}

/// Applies `input` with id `id` and checks that it yields nothing and leaves the state, window
/// included, byte for byte as it was.
fn assert_ignored(allocator: &mut Allocator, id: u128, input: Event) {
    let before = allocator.snapshot();
    let outputs = allocator.apply(&envelope(id, input));
    assert_eq!(render(&outputs), "", "a retry has no output");
    assert_eq!(snapshot_as_json(&before).unwrap(), snapshot_as_json(&allocator.snapshot()).unwrap());
    assert_eq!(before, allocator.snapshot());
}

#[test]
fn retried_input_has_no_second_effect() {
    let mut allocator = applied(Allocator::new(), &started_and_stopped());
    assert_ignored(&mut allocator, 2, start(1));
    assert_eq!(allocator.network(NET).unwrap().reservations_of(VnicId::from_u128(1)), []);
}

#[test]
fn second_event_with_the_id_of_another_has_no_effect() {
    let mut allocator = applied(Allocator::new(), &started_and_stopped());
    assert_ignored(&mut allocator, 2, start(2));
    assert_ignored(&mut allocator, 0, Event::SubnetRemoved(SubnetRemoved { network_id: NET, subnet_id: S1 }));
}

#[test]
fn retry_is_recognised_after_a_restart_from_a_snapshot() {
    let allocator = applied(Allocator::new(), &started_and_stopped());
    let mut restored = Allocator::restore(&(), &allocator.snapshot()).unwrap();
    assert_eq!(restored, allocator);
    assert_ignored(&mut restored, 2, start(1));
}

#[test]
fn retry_is_recognised_after_split_and_merge() {
    let mut history = started_and_stopped();
    let other = NetworkId::from_u128(2);
    let upsert =
        NetworkUpserted { network_id: other, name: "other".to_owned(), ipam_enabled: true, servers_count: None };
    history.push((4, Event::NetworkUpserted(upsert)));
    let allocator = applied(Allocator::new(), &history);
    let parts = allocator.clone().split();
    assert_eq!(parts.len(), 2);
    let mut merged = Allocator::merge(parts);
    assert_eq!(merged, allocator);
    assert_ignored(&mut merged, 2, start(1));
}

#[test]
fn retry_after_the_network_is_removed_is_not_answered_again() {
    let mut history = started_and_stopped();
    history.push((4, Event::NetworkRemoved(NetworkRemoved { network_id: NET })));
    let mut allocator = applied(Allocator::new(), &history);
    // Without the window this would be an `unknown_network` rejection under an output id the
    // reservation of input 2 already used.
    assert_ignored(&mut allocator, 2, start(1));
    let mut restored = Allocator::restore(&(), &allocator.snapshot()).unwrap();
    assert_ignored(&mut restored, 2, start(1));
}

#[test]
fn retry_of_a_refused_input_is_not_answered_again() {
    let mut allocator = applied(Allocator::new(), &[(7, start(1))]);
    assert_ignored(&mut allocator, 7, start(1));
    // The network comes later; the retry must still not reserve under the rejection's output id.
    let mut allocator = applied(allocator, &[(0, network(true)), (1, add(S1, "10.0.0.0/29", "10.0.0.1"))]);
    assert_ignored(&mut allocator, 7, start(1));
}

#[test]
fn window_forgets_the_oldest_id_after_as_many_newer_inputs_as_it_holds() {
    let window = 3;
    // Ids 2 (the start) and 3 (the stop), then inputs 10, 11 that change nothing.
    let mut history = started_and_stopped();
    history.extend([(10, stop(7)), (11, stop(8))]);
    let mut allocator = applied(Allocator::with_input_window(window), &history);
    assert_eq!(allocator.network(NET).unwrap().recent_inputs().iter().collect::<Vec<_>>(), ids(&[3, 10, 11]));
    // Id 3 is still held: its retry is ignored. Id 2 has three newer ids and is forgotten: its
    // retry is applied again.
    assert_ignored(&mut allocator, 3, stop(1));
    let outputs = allocator.apply(&envelope(2, start(1)));
    expect![[r#"
        reservation.added {ip:10.0.0.3,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#11}
    "#]]
    .assert_eq(&render(&outputs));
    assert_eq!(allocator.network(NET).unwrap().recent_inputs().iter().collect::<Vec<_>>(), ids(&[10, 11, 2]));
}

fn ids(ns: &[u128]) -> Vec<EventId> {
    ns.iter().map(|&n| envelope(n, network(true)).id).collect()
}

#[test]
fn same_state_but_inputs_sees_every_change_but_the_windows() {
    let allocator = applied(Allocator::new(), &started_and_stopped());
    // Refused (unknown subnet, a fixed IP outside), or changing nothing (a vNIC that holds nothing).
    let refused = [
        (20, Event::VnicStarted(up(3, Some(S2), None))),
        (21, Event::VnicStarted(up(4, Some(S1), Some("10.9.9.9")))),
        (22, stop(9)),
    ];
    let refused = applied(allocator.clone(), &refused);
    assert!(refused.same_state_but_inputs(&allocator));
    let unknown = NetworkRemoved { network_id: NetworkId::from_u128(77) };
    assert!(applied(allocator.clone(), &[(23, Event::NetworkRemoved(unknown))]).same_state_but_inputs(&allocator));
    for change in [start(2), network(false), add(S2, "10.0.1.0/29", "10.0.1.1"), port(S1)] {
        assert!(!applied(allocator.clone(), &[(30, change.clone())]).same_state_but_inputs(&allocator), "{change:?}");
    }
    // A released address moves the allocation cursor only: still a change.
    let cursor_moved = applied(allocator.clone(), &[(31, start(2)), (32, stop(2))]);
    assert!(!cursor_moved.same_state_but_inputs(&allocator));
}

#[test]
fn production_machines_remember_the_production_window() {
    let allocator = applied(Allocator::new(), &started_and_stopped());
    assert_eq!(allocator.network(NET).unwrap().recent_inputs().capacity(), INPUT_WINDOW);
    let restored =
        Allocator::restore(&(), &applied(Allocator::with_input_window(3), &started_and_stopped()).snapshot());
    assert_eq!(restored.unwrap().network(NET).unwrap().recent_inputs().capacity(), INPUT_WINDOW);
}

#[test]
fn snapshot_from_before_the_window_restores_with_an_empty_one() {
    let allocator = applied(Allocator::new(), &started_and_stopped());
    let mut old = snapshot_as_json(&allocator.snapshot()).unwrap();
    for network in old["networks"].as_array_mut().unwrap() {
        network.as_object_mut().unwrap().remove("recent_inputs");
    }
    let restored = Allocator::restore(&(), old.to_string().as_bytes()).unwrap();
    assert!(restored.network(NET).unwrap().recent_inputs().is_empty());
    assert!(restored.same_state_but_inputs(&allocator));
    assert_ne!(restored, allocator);
}

#[test]
fn snapshot_holds_the_window_in_the_order_of_application() {
    let allocator = applied(Allocator::new(), &[(9, network(true)), (4, start(1)), (6, stop(1))]);
    let snapshot = snapshot_as_json(&allocator.snapshot()).unwrap();
    expect![[r#"["00000000-0000-0000-0000-00000000e009","00000000-0000-0000-0000-00000000e004","00000000-0000-0000-0000-00000000e006"]"#]]
        .assert_eq(&snapshot["networks"][0]["recent_inputs"].to_string());
}

#[test]
fn a_damaged_snapshot_with_a_subnet_no_pool_can_hold_is_refused_not_a_panic() {
    // Found by the fuzz tests: each made `AddressPool::new` panic before the shape was checked.
    let snapshot = |cidr: &str, gateway: &str, pools: &str| {
        format!(
            r#"{{"networks":[{{"network_id":"00000000-0000-0000-0000-000000000003","reservations":[],"settings":null,
            "subnets":[{{"next_candidate":"10.1.2.0","spec":{{"allocation_pools":{pools},"cidr":"{cidr}",
            "dns_servers":[],"gateway":"{gateway}","ntp_servers":[]}},
            "subnet_id":"00000000-0000-0000-0000-000000000064"}}]}}]}}"#
        )
    };
    for (cidr, gateway, pools) in [
        ("0.0.0.0/0", "10.1.0.1", "[]"),
        ("10.1.2.0/30", "10.1.2.1", r#"[{"start":"10.1.2.1","end":"0.0.0.0"}]"#),
        ("2001:db8::/64", "10.1.0.1", "[]"),
        ("10.1.2.0/30", "10.9.9.9", "[]"),
        ("10.1.2.0/29", "10.1.2.1", r#"[{"start":"10.1.2.5","end":"10.1.2.2"}]"#),
    ] {
        let bytes = snapshot(cidr, gateway, pools);
        assert!(Allocator::restore(&(), bytes.as_bytes()).is_err(), "{cidr} gateway {gateway} pools {pools} restored");
    }
    // The same shape, whole, restores.
    let good = snapshot("10.1.2.0/29", "10.1.2.1", r#"[{"start":"10.1.2.2","end":"10.1.2.5"}]"#);
    assert!(Allocator::restore(&(), good.as_bytes()).is_ok());
}

#[test]
fn the_invariant_check_sees_a_pool_or_a_mac_that_disagrees_with_the_holdings() {
    let mut allocator = Allocator::new();
    for (n, event) in history(small_network(), [start(1), start(2)]).into_iter().enumerate() {
        allocator.apply(&envelope(n as u128, event));
    }
    assert_eq!(allocator.check(), Ok(()));
    let network_id = allocator.networks().next().unwrap().network_id();

    let mut freed = allocator.clone();
    let network = freed.networks.get_mut(&network_id).unwrap();
    let holding = *network.holdings.values().next().unwrap();
    network.subnets.get_mut(&holding.subnet_id).unwrap().pool.release(holding.ip);
    let violation = freed.check().unwrap_err().to_string();
    assert!(violation.contains(&holding.ip.to_string()), "{violation}");

    let mut forgotten = allocator.clone();
    forgotten.networks.get_mut(&network_id).unwrap().macs.remove(&holding.mac);
    let violation = forgotten.check().unwrap_err().to_string();
    assert!(violation.contains(&holding.mac.to_string()), "{violation}");
}

// ---- Issue 14: policy, time, quarantine, conflicts, utilization -----------------------------------

fn policy(policy: NetworkPolicy) -> Event {
    Event::NetworkPolicySet(NetworkPolicySet { network_id: NET, policy })
}

fn quarantine(seconds: u32) -> Event {
    policy(NetworkPolicy { release_quarantine_s: Some(seconds), ..NetworkPolicy::default() })
}

/// The partition's clock at `seconds` after the epoch.
fn tick(seconds: i64) -> Event {
    Event::PartitionClockTicked(PartitionClockTicked { now: Timestamp::from_unix_ms(seconds * 1000), partition: 0 })
}

fn conflict(ip: &str) -> Event {
    Event::IpConflictDetected(IpConflictDetected {
        network_id: NET,
        subnet_id: S1,
        ip: ip.parse().unwrap(),
        host_id: HOST,
        answered_by: mac(0xee),
        reserved_for: None,
        probe: crate::event::ConflictProbe::Arp,
    })
}

fn cleared(ip: &str) -> Event {
    Event::IpConflictCleared(IpConflictCleared { network_id: NET, ip: ip.parse().unwrap() })
}

/// The /29 with vNICs 1 to 5 holding all of .2 to .6, under `policy`.
fn full_network(policy_event: Event) -> Vec<Event> {
    history(small_network(), [policy_event, tick(100), start(1), start(2), start(3), start(4), start(5)])
}

#[test]
fn policy_set_is_answered_with_the_effective_policy() {
    check(
        small_network(),
        policy(NetworkPolicy { release_quarantine_s: Some(30), ..NetworkPolicy::default() }),
        expect![[r#"
            network.policy_applied {network_id:#1,policy:{conflict_probe:true,release_quarantine_s:30,unleased_after_s:300,utilization_thresholds:[80,90,100]}}
        "#]],
    );
}

#[test]
fn policy_thresholds_are_kept_in_increasing_order() {
    check(
        small_network(),
        policy(NetworkPolicy { utilization_thresholds: Some(vec![95, 50]), ..NetworkPolicy::default() }),
        expect![[r#"
            network.policy_applied {network_id:#1,policy:{conflict_probe:true,release_quarantine_s:0,unleased_after_s:300,utilization_thresholds:[50,95]}}
        "#]],
    );
}

#[test]
fn rejects_policy_with_a_threshold_outside_1_to_100() {
    for bad in [0, 101] {
        check(
            small_network(),
            policy(NetworkPolicy { utilization_thresholds: Some(vec![50, bad]), ..NetworkPolicy::default() }),
            if bad == 0 {
                expect![[r#"
                    request.rejected {code:invalid_policy,message:utilization threshold 0 is outside 1 to 100 (percent),network_id:#1,request_type:ipam.network.policy_set.v1}
                "#]]
            } else {
                expect![[r#"
                    request.rejected {code:invalid_policy,message:utilization threshold 101 is outside 1 to 100 (percent),network_id:#1,request_type:ipam.network.policy_set.v1}
                "#]]
            },
        );
    }
}

#[test]
fn rejects_policy_with_a_threshold_given_twice() {
    check(
        small_network(),
        policy(NetworkPolicy { utilization_thresholds: Some(vec![80, 90, 80]), ..NetworkPolicy::default() }),
        expect![[r#"
            request.rejected {code:invalid_policy,message:utilization threshold 80 is given twice,network_id:#1,request_type:ipam.network.policy_set.v1}
        "#]],
    );
}

#[test]
fn rejects_policy_of_an_unknown_network() {
    check(
        vec![],
        quarantine(60),
        expect![[r#"
            request.rejected {code:unknown_network,message:network #1 is not known to IPAM,network_id:#1,request_type:ipam.network.policy_set.v1}
        "#]],
    );
}

#[test]
fn removing_a_network_puts_its_policy_back_to_the_defaults() {
    check(
        history(small_network(), [quarantine(60)]),
        Event::NetworkRemoved(NetworkRemoved { network_id: NET }),
        expect![[r#"
            subnet.deactivated {network_id:#1,subnet_id:#11}
            network.policy_applied {network_id:#1,policy:{conflict_probe:true,release_quarantine_s:0,unleased_after_s:300,utilization_thresholds:[80,90,100]}}
        "#]],
    );
}

#[test]
fn a_tick_reaches_every_network_moves_now_forward_only_and_enters_no_window() {
    let other = NetworkId::from_u128(2);
    let upsert =
        NetworkUpserted { network_id: other, name: "other".to_owned(), ipam_enabled: true, servers_count: None };
    let mut allocator = applied(Allocator::new(), &[(0, network(true)), (1, Event::NetworkUpserted(upsert))]);
    let now = |allocator: &Allocator| [NET, other].map(|id| allocator.network(id).unwrap().now());
    assert_eq!(now(&allocator), [None, None]);
    assert_eq!(render(&allocator.apply(&envelope(2, tick(50)))), "");
    let fifty = Some(Timestamp::from_unix_ms(50_000));
    assert_eq!(now(&allocator), [fifty, fifty]);
    allocator.apply(&envelope(3, tick(40)));
    assert_eq!(now(&allocator), [fifty, fifty], "a stale tick does not move time back");
    assert!(!allocator.network(NET).unwrap().recent_inputs().contains(envelope(2, tick(50)).id));
    assert!(!allocator.is_retry(&envelope(2, tick(50))));
    let restored = Allocator::restore(&(), &allocator.snapshot()).unwrap();
    assert_eq!(restored, allocator, "now is kept in snapshots");
}

#[test]
fn quarantined_address_is_not_given_to_another_vnic_until_its_time_is_over() {
    let mut allocator = applied(Allocator::new(), &numbered(full_network(quarantine(60))));
    let mut step = |n: u128, event: Event| {
        let outputs = render(&allocator.apply(&envelope(n, event)));
        allocator.check().unwrap();
        outputs
    };
    // .2 is released at 100 s and kept until 160 s; the subnet has nothing else to give.
    expect![[r#"
        reservation.removed {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},reason:vnic_down,subnet_id:#11}
        subnet.utilization_crossed {network_id:#1,rising:false,size:5,subnet_id:#11,threshold:100,used:4}
        subnet.utilization_crossed {network_id:#1,rising:false,size:5,subnet_id:#11,threshold:90,used:4}
    "#]]
    .assert_eq(&step(50, stop(1)));
    assert!(step(51, start(6)).contains("code:subnet_exhausted"));
    step(52, tick(159));
    assert!(step(53, start(6)).contains("code:subnet_exhausted"), "159 s: still in quarantine");
    step(54, tick(160));
    expect![[r#"
        reservation.added {ip:10.0.0.2,mac:52:54:00:00:00:06,network_id:#1,owner:{kind:vnic,vm_id:#106,vnic_id:#6},subnet_id:#11}
        subnet.utilization_crossed {network_id:#1,rising:true,size:5,subnet_id:#11,threshold:90,used:5}
        subnet.utilization_crossed {network_id:#1,rising:true,size:5,subnet_id:#11,threshold:100,used:5}
    "#]]
    .assert_eq(&step(55, start(6)));
}

/// Events numbered from 0, as `applied` takes them.
fn numbered(events: Vec<Event>) -> Vec<(u128, Event)> {
    events.into_iter().enumerate().map(|(n, event)| (n as u128, event)).collect()
}

#[test]
fn the_same_mac_gets_its_quarantined_address_back() {
    check(
        history(small_network(), [quarantine(60), tick(100), start(1), start(2), stop(1)]),
        start(1),
        expect![[r#"
            reservation.added {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#11}
        "#]],
    );
    // Another vNIC with the same MAC (the VM was recreated) too, by a fixed request as well.
    let recreated = VnicUp { mac: mac(1), ..up(7, Some(S1), Some("10.0.0.2")) };
    check(
        history(small_network(), [quarantine(60), tick(100), start(1), stop(1)]),
        Event::VnicStarted(recreated),
        expect![[r#"
            reservation.added {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#107,vnic_id:#7},subnet_id:#11}
        "#]],
    );
}

#[test]
fn rejects_fixed_ip_in_quarantine_from_another_mac() {
    check(
        history(small_network(), [quarantine(60), tick(100), start(1), stop(1)]),
        Event::VnicStarted(up(2, Some(S1), Some("10.0.0.2"))),
        expect![[r#"
            request.rejected {code:ip_quarantined,mac:52:54:00:00:00:02,message:10.0.0.2 was released by MAC 52:54:00:00:00:01 and is kept from other MACs until 1970-01-01T00:02:40+00:00,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#2}
        "#]],
    );
}

#[test]
fn a_release_before_the_first_tick_is_dated_by_the_next_one() {
    let events = history(small_network(), [quarantine(60), start(1), stop(1)]);
    let mut allocator = applied(Allocator::new(), &numbered(events));
    let network = allocator.network(NET).unwrap();
    assert_eq!(network.quarantined().map(|(_, _, _, at)| at).collect::<Vec<_>>(), [None]);
    allocator.apply(&envelope(20, tick(1000)));
    allocator.apply(&envelope(21, tick(1059)));
    allocator.check().unwrap();
    let network = allocator.network(NET).unwrap();
    assert_eq!(
        network.quarantined().map(|(_, _, _, at)| at).collect::<Vec<_>>(),
        [Some(Timestamp::from_unix_ms(1_000_000))]
    );
    allocator.apply(&envelope(22, tick(1060)));
    assert_eq!(allocator.network(NET).unwrap().quarantined().count(), 0);
}

#[test]
fn a_shorter_quarantine_frees_what_it_no_longer_covers_at_once() {
    let events = history(full_network(quarantine(600)), [stop(1), tick(200), quarantine(60)]);
    let mut allocator = applied(Allocator::new(), &numbered(events));
    allocator.check().unwrap();
    assert_eq!(allocator.network(NET).unwrap().quarantined().count(), 0);
    assert!(render(&allocator.apply(&envelope(90, start(6)))).contains("ip:10.0.0.2"));
}

#[test]
fn without_quarantine_nothing_is_withheld() {
    let events = history(full_network(quarantine(0)), [stop(1)]);
    let allocator = applied(Allocator::new(), &numbered(events));
    assert_eq!(allocator.network(NET).unwrap().quarantined().count(), 0);
    check(
        history(full_network(quarantine(0)), [stop(1)]),
        start(6),
        expect![[r#"
            reservation.added {ip:10.0.0.2,mac:52:54:00:00:00:06,network_id:#1,owner:{kind:vnic,vm_id:#106,vnic_id:#6},subnet_id:#11}
            subnet.utilization_crossed {network_id:#1,rising:true,size:5,subnet_id:#11,threshold:90,used:5}
            subnet.utilization_crossed {network_id:#1,rising:true,size:5,subnet_id:#11,threshold:100,used:5}
        "#]],
    );
}

#[test]
fn quarantine_conflicts_and_policy_survive_a_snapshot() {
    let events = history(
        small_network(),
        [quarantine(60), tick(100), start(1), Event::VnicStarted(up(2, Some(S1), Some("10.0.0.5"))), start(3), stop(3)],
    );
    let mut allocator = applied(Allocator::new(), &numbered(events));
    allocator.apply(&envelope(40, conflict("10.0.0.5")));
    allocator.apply(&envelope(41, conflict("10.0.0.6")));
    let restored = Allocator::restore(&(), &allocator.snapshot()).unwrap();
    assert_eq!(restored, allocator);
    restored.check().unwrap();
}

#[test]
fn snapshot_from_before_issue_14_restores_with_the_defaults() {
    let allocator = applied(Allocator::new(), &started_and_stopped());
    let snapshot = snapshot_as_json(&allocator.snapshot()).unwrap().to_string();
    for field in ["policy", "now", "quarantine", "conflicts", "fixed"] {
        assert!(!snapshot.contains(&format!("\"{field}\"")), "{field} is left out when it says nothing: {snapshot}");
        let name = rmp_serde::to_vec(field).unwrap();
        assert!(!allocator.snapshot().windows(name.len()).any(|window| window == name), "{field} is left out");
    }
    assert_eq!(Allocator::restore(&(), snapshot.as_bytes()).unwrap(), allocator);
}

#[test]
fn conflict_moves_a_dynamically_allocated_vnic_to_another_address() {
    check(
        history(small_network(), [start(1)]),
        conflict("10.0.0.2"),
        expect![[r#"
            reservation.removed {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},reason:ip_conflict,subnet_id:#11}
            reservation.added {ip:10.0.0.3,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#11}
        "#]],
    );
}

#[test]
fn conflict_leaves_a_fixed_ip_with_its_holder() {
    check(
        history(small_network(), [Event::VnicStarted(up(1, Some(S1), Some("10.0.0.4")))]),
        conflict("10.0.0.4"),
        expect![[""]],
    );
}

#[test]
fn conflict_leaves_the_holder_its_address_when_no_other_is_free() {
    check(full_network(quarantine(0)), conflict("10.0.0.2"), expect![[""]]);
}

#[test]
fn conflict_reported_twice_changes_nothing_more() {
    check(history(small_network(), [start(1), conflict("10.0.0.2")]), conflict("10.0.0.2"), expect![[""]]);
}

#[test]
fn address_in_conflict_is_withheld_until_cleared() {
    let events = history(small_network(), [conflict("10.0.0.2")]);
    check(
        events.clone(),
        start(1),
        expect![[r#"
        reservation.added {ip:10.0.0.3,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#11}
    "#]],
    );
    check(
        events.clone(),
        Event::VnicStarted(up(1, Some(S1), Some("10.0.0.2"))),
        expect![[r#"
        request.rejected {code:ip_in_conflict,mac:52:54:00:00:00:01,message:10.0.0.2 was found answered by MAC 52:54:00:00:00:ee; it is out of use until the conflict is cleared,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#1}
    "#]],
    );
    check(
        history(events, [cleared("10.0.0.2")]),
        start(1),
        expect![[r#"
        reservation.added {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#11}
    "#]],
    );
}

#[test]
fn clearing_an_address_not_in_conflict_changes_nothing() {
    check(small_network(), cleared("10.0.0.2"), expect![[""]]);
}

#[test]
fn a_conflict_outlasts_a_quarantine() {
    let events =
        history(small_network(), [quarantine(60), tick(100), start(1), stop(1), conflict("10.0.0.2"), tick(1000)]);
    let allocator = applied(Allocator::new(), &numbered(events.clone()));
    allocator.check().unwrap();
    assert_eq!(allocator.network(NET).unwrap().conflicts().count(), 1);
    assert!(check_outputs(events, start(1)).contains("ip:10.0.0.3"), "not back to its old MAC either");
}

/// Applies `history` then `input`, and renders the input's outputs.
fn check_outputs(history: Vec<Event>, input: Event) -> String {
    let mut allocator = applied(Allocator::new(), &numbered(history));
    let outputs = allocator.apply(&envelope(999, input));
    allocator.check().unwrap();
    render(&outputs)
}

#[test]
fn rejects_conflict_outside_its_subnet_or_on_its_gateway() {
    check(
        small_network(),
        conflict("10.0.1.2"),
        expect![[r#"
        request.rejected {code:ip_outside_subnet,message:10.0.1.2 is not inside 10.0.0.0/29,network_id:#1,request_type:ipam.ip.conflict.v1}
    "#]],
    );
    check(
        small_network(),
        conflict("10.0.0.1"),
        expect![[r#"
        request.rejected {code:ip_not_assignable,message:10.0.0.1 is the network, broadcast or gateway address of 10.0.0.0/29,network_id:#1,request_type:ipam.ip.conflict.v1}
    "#]],
    );
}

#[test]
fn utilization_crossings_are_reported_once_each_way() {
    // /29: five addresses. 4 of 5 is 80%; 5 of 5 crosses 90 and 100 at once.
    let base = history(small_network(), [start(1), start(2), start(3)]);
    check(
        base.clone(),
        start(4),
        expect![[r#"
            reservation.added {ip:10.0.0.5,mac:52:54:00:00:00:04,network_id:#1,owner:{kind:vnic,vm_id:#104,vnic_id:#4},subnet_id:#11}
            subnet.utilization_crossed {network_id:#1,rising:true,size:5,subnet_id:#11,threshold:80,used:4}
        "#]],
    );
    check(
        history(base.clone(), [start(4)]),
        stop(4),
        expect![[r#"
            reservation.removed {ip:10.0.0.5,mac:52:54:00:00:00:04,network_id:#1,owner:{kind:vnic,vm_id:#104,vnic_id:#4},reason:vnic_down,subnet_id:#11}
            subnet.utilization_crossed {network_id:#1,rising:false,size:5,subnet_id:#11,threshold:80,used:3}
        "#]],
    );
    check(
        base.clone(),
        stop(3),
        expect![[r#"
        reservation.removed {ip:10.0.0.4,mac:52:54:00:00:00:03,network_id:#1,owner:{kind:vnic,vm_id:#103,vnic_id:#3},reason:vnic_down,subnet_id:#11}
    "#]],
    );
    let thresholds = policy(NetworkPolicy { utilization_thresholds: Some(vec![20]), ..NetworkPolicy::default() });
    check(
        history(small_network(), [thresholds]),
        port(S1),
        expect![[r#"
            reservation.added {ip:10.0.0.2,mac:52:54:00:00:00:aa,network_id:#1,owner:{host_id:#31,kind:dhcp_server},subnet_id:#11}
            subnet.utilization_crossed {network_id:#1,rising:true,size:5,subnet_id:#11,threshold:20,used:1}
        "#]],
    );
}

#[test]
fn a_mac_with_two_addresses_in_quarantine_gets_the_lowest_back_and_a_snapshot_keeps_both() {
    // Found by the property test: the index of a MAC's quarantined addresses kept only the latest,
    // and a restored one kept another: the two machines then handed out different addresses.
    let fixed = |ip: &str| Event::VnicStarted(up(1, Some(S1), Some(ip)));
    let events =
        history(small_network(), [quarantine(60), tick(100), fixed("10.0.0.5"), stop(1), fixed("10.0.0.2"), stop(1)]);
    let allocator = applied(Allocator::new(), &numbered(events.clone()));
    allocator.check().unwrap();
    assert_eq!(allocator.network(NET).unwrap().quarantined().count(), 2);
    let restored = Allocator::restore(&(), &allocator.snapshot()).unwrap();
    assert_eq!(restored, allocator);
    assert!(check_outputs(events, start(1)).contains("ip:10.0.0.2"));
}

// ---- Dual-stack vNICs -----------------------------------------------------------------------

const S6: SubnetId = SubnetId::from_u128(16);

/// A network with IPAM on, an IPv4 /29 (S1: .2 to .6 free) and an IPv6 /125 (S6: ::2 to ::7 free).
fn dual_network() -> Vec<Event> {
    vec![network(true), add(S1, "10.0.0.0/29", "10.0.0.1"), add(S6, "2001:db8::/125", "2001:db8::1")]
}

/// A vNIC up in every subnet of `subnets`, named through `subnet_ids`.
fn up_in(vnic: u128, subnets: &[SubnetId], requested_ip: Option<&str>) -> VnicUp {
    VnicUp { subnet_id: None, subnet_ids: subnets.to_vec(), ..up(vnic, None, requested_ip) }
}

fn dual_start(vnic: u128) -> Event {
    Event::VnicStarted(up_in(vnic, &[S6, S1], None))
}

#[test]
fn dual_stack_vnic_gets_one_address_of_each_family_ipv4_first() {
    check(
        dual_network(),
        dual_start(1),
        expect![[r#"
        reservation.added {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#11}
        reservation.added {ip:2001:db8::2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#16}
    "#]],
    );
}

#[test]
fn subnet_id_and_subnet_ids_together_name_their_union() {
    let both = VnicUp { subnet_id: Some(S6), ..up_in(1, &[S1, S6], None) };
    check(
        dual_network(),
        Event::VnicPlugged(both),
        expect![[r#"
        reservation.added {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#11}
        reservation.added {ip:2001:db8::2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#16}
    "#]],
    );
}

#[test]
fn dual_stack_vnic_with_one_family_exhausted_reserves_nothing() {
    // Six vNICs take every IPv6 address (::2 to ::7): S6 is full, S1 is not.
    let fill_v6 = (10..16).map(|vnic| Event::VnicStarted(up(vnic, Some(S6), None)));
    check(
        history(dual_network(), fill_v6),
        dual_start(1),
        expect![[r#"
        request.rejected {code:subnet_exhausted,mac:52:54:00:00:00:01,message:no free address is left in the allocation pools of 2001:db8::/125,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#16,vnic_id:#1}
    "#]],
    );
}

#[test]
fn dual_stack_vnic_whose_fixed_ip_is_taken_reserves_nothing() {
    check(
        history(dual_network(), [Event::VnicStarted(up(9, Some(S6), Some("2001:db8::5")))]),
        Event::VnicStarted(up_in(1, &[S1, S6], Some("2001:db8::5"))),
        expect![[r#"
        request.rejected {code:ip_in_use,mac:52:54:00:00:00:01,message:2001:db8::5 is already reserved in 2001:db8::/125,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#16,vnic_id:#1}
    "#]],
    );
}

#[test]
fn fixed_ipv6_applies_to_its_family_and_ipv4_is_allocated() {
    check(
        dual_network(),
        Event::VnicStarted(up_in(1, &[S1, S6], Some("2001:db8::7"))),
        expect![[r#"
        reservation.added {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#11}
        reservation.added {ip:2001:db8::7,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#16}
    "#]],
    );
}

#[test]
fn fixed_ip_of_a_family_no_named_subnet_has_is_refused() {
    check(
        dual_network(),
        Event::VnicStarted(up_in(1, &[S1], Some("2001:db8::7"))),
        expect![[r#"
        request.rejected {code:ip_outside_subnet,mac:52:54:00:00:00:01,message:2001:db8::7 is not inside 10.0.0.0/29,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#11,vnic_id:#1}
    "#]],
    );
}

#[test]
fn two_subnets_of_one_family_are_refused() {
    check(
        history(dual_network(), [add(S2, "10.0.1.0/29", "10.0.1.1")]),
        Event::VnicStarted(up_in(1, &[S1, S2, S6], None)),
        expect![[r#"
        request.rejected {code:duplicate_family,mac:52:54:00:00:00:01,message:subnets #11 and #12 are both IPv4; a vNIC holds at most one address of each family,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#12,vnic_id:#1}
    "#]],
    );
}

#[test]
fn a_subnet_of_another_network_is_unknown_here() {
    check(
        dual_network(),
        Event::VnicStarted(up_in(1, &[S1, SubnetId::from_u128(99)], None)),
        expect![[r#"
        request.rejected {code:unknown_subnet,mac:52:54:00:00:00:01,message:subnet #99 is not defined on network #1,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#99,vnic_id:#1}
    "#]],
    );
}

#[test]
fn dual_stack_vnic_down_releases_both_ipv4_first() {
    check(
        history(dual_network(), [dual_start(1)]),
        stop(1),
        expect![[r#"
        reservation.removed {ip:10.0.0.2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},reason:vnic_down,subnet_id:#11}
        reservation.removed {ip:2001:db8::2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},reason:vnic_down,subnet_id:#16}
    "#]],
    );
}

#[test]
fn dual_stack_vnic_coming_up_again_with_the_same_subnets_is_a_no_op() {
    check(history(dual_network(), [dual_start(1)]), Event::VnicLinked(up_in(1, &[S1, S6], None)), expect![[""]]);
}

#[test]
fn vnic_coming_up_again_with_a_family_added_or_dropped_is_a_conflict() {
    check(
        history(dual_network(), [Event::VnicStarted(up(1, Some(S1), None))]),
        dual_start(1),
        expect![[r#"
        request.rejected {code:vnic_conflict,mac:52:54:00:00:00:01,message:vNIC #1 already holds 10.0.0.2 (MAC 52:54:00:00:00:01) in subnet #11 and asked for another subnet, MAC or IP; send a down event first,network_id:#1,request_type:ipam.vnic.started.v1,vnic_id:#1}
    "#]],
    );
    check(
        history(dual_network(), [dual_start(1)]),
        Event::VnicLinked(up(1, Some(S6), None)),
        expect![[r#"
        request.rejected {code:vnic_conflict,mac:52:54:00:00:00:01,message:vNIC #1 already holds 10.0.0.2 (MAC 52:54:00:00:00:01) in subnet #11 and 2001:db8::2 (MAC 52:54:00:00:00:01) in subnet #16 and asked for another subnet, MAC or IP; send a down event first,network_id:#1,request_type:ipam.vnic.linked.v1,subnet_id:#16,vnic_id:#1}
    "#]],
    );
}

#[test]
fn dual_stack_vnic_mac_is_still_its_own_on_the_network() {
    check(
        history(dual_network(), [dual_start(1)]),
        Event::VnicStarted(VnicUp { mac: mac(1), ..up(2, Some(S6), None) }),
        expect![[r#"
        request.rejected {code:duplicate_mac,mac:52:54:00:00:00:01,message:MAC 52:54:00:00:00:01 is already used on network #1 by vNIC #1,network_id:#1,request_type:ipam.vnic.started.v1,subnet_id:#16,vnic_id:#2}
    "#]],
    );
}

#[test]
fn a_conflict_moves_only_the_address_of_its_family() {
    let conflict = Event::IpConflictDetected(IpConflictDetected {
        network_id: NET,
        subnet_id: S6,
        ip: "2001:db8::2".parse().unwrap(),
        host_id: HOST,
        answered_by: mac(0xee),
        reserved_for: Some(mac(1)),
        probe: crate::event::ConflictProbe::NeighbourSolicitation,
    });
    check(
        history(dual_network(), [dual_start(1)]),
        conflict,
        expect![[r#"
        reservation.removed {ip:2001:db8::2,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},reason:ip_conflict,subnet_id:#16}
        reservation.added {ip:2001:db8::3,mac:52:54:00:00:00:01,network_id:#1,owner:{kind:vnic,vm_id:#101,vnic_id:#1},subnet_id:#16}
    "#]],
    );
}

#[test]
fn dual_stack_reservations_survive_a_snapshot_and_are_listed_ipv4_first() {
    let inputs: Vec<(u128, Event)> =
        history(dual_network(), [dual_start(1), Event::VnicStarted(up(2, Some(S6), None))])
            .into_iter()
            .zip(1..)
            .map(|(e, n)| (n, e))
            .collect();
    let allocator = applied(Allocator::new(), &inputs);
    let restored = Allocator::restore(&(), &allocator.snapshot()).unwrap();
    assert_eq!(restored, allocator);
    restored.check().unwrap();
    let held = restored.network(NET).unwrap().reservations_of(VnicId::from_u128(1));
    let ips: Vec<String> = held.iter().map(|(_, _, ip)| ip.to_string()).collect();
    assert_eq!(ips, ["10.0.0.2", "2001:db8::2"]);
}

#[test]
fn a_snapshot_is_messagepack_and_one_written_as_json_before_restores_the_same() {
    let allocator = applied(Allocator::new(), &[(9, network(true)), (4, start(1)), (6, start(2)), (7, stop(1))]);
    let snapshot = allocator.snapshot();
    assert_ne!(snapshot.first(), Some(&b'{'), "a snapshot is no longer JSON");
    let json = serde_json::to_vec(&snapshot_as_json(&snapshot).unwrap()).unwrap();
    assert!(snapshot.len() < json.len(), "{} bytes against {} as JSON", snapshot.len(), json.len());
    assert_eq!(Allocator::restore(&(), &snapshot).unwrap(), allocator);
    assert_eq!(Allocator::restore(&(), &json).unwrap(), allocator);
    let error = Allocator::restore(&(), &snapshot[..snapshot.len() / 2]).unwrap_err();
    assert!(matches!(error, SnapshotError::Unreadable(_)), "{error}");
}
