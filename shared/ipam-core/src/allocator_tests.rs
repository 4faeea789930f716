//! Given/when/then tests of the allocator: a history of inputs, one input, the expected outputs.
//! Every rejection code and every lifecycle transition has a test here.

use expect_test::{Expect, expect};

use super::*;
use crate::event::{
    DhcpPortReleased, DhcpPortRequested, NetworkRemoved, NetworkUpserted, SubnetAdded, SubnetRemoved, VnicDown, VnicUp,
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

fn subnet(subnet_id: SubnetId, cidr: &str, gateway: &str) -> SubnetAdded {
    SubnetAdded {
        network_id: NET,
        subnet_id,
        cidr: cidr.parse().unwrap(),
        gateway: gateway.parse().unwrap(),
        dns_servers: vec!["192.0.2.53".parse().unwrap()],
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
/// must leave the state exactly as it was.
fn check(history: Vec<Event>, input: Event, expected: Expect) {
    let mut allocator = Allocator::new();
    for (n, event) in history.into_iter().enumerate() {
        allocator.apply(&envelope(n as u128, event));
    }
    let before = allocator.snapshot();
    let outputs = allocator.apply(&envelope(999, input));
    if outputs.iter().any(|output| matches!(output, Event::RequestRejected(_))) {
        assert_eq!(outputs.len(), 1, "a rejection comes alone");
        assert_eq!(String::from_utf8(before).unwrap(), String::from_utf8(allocator.snapshot()).unwrap());
    }
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
        subnet.activated {allocation_pools:[{end:2001:db8::ffff:ffff:ffff:ffff,start:2001:db8::1}],cidr:2001:db8::/64,dns_servers:[192.0.2.53],gateway:2001:db8::1,network_id:#1,ntp_servers:[],subnet_id:#12}
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
        request.rejected {code:unknown_network,message:network #1 is not known to IPAM,network_id:#1,request_type:ipam.subnet.added.v1}
    "#]],
    );
}

#[test]
fn rejects_gateway_outside_subnet() {
    check(
        vec![network(true)],
        add(S1, "10.0.0.0/24", "10.0.1.1"),
        expect![[r#"
        request.rejected {code:invalid_gateway,message:gateway 10.0.1.1 is outside 10.0.0.0/24,network_id:#1,request_type:ipam.subnet.added.v1}
    "#]],
    );
}

#[test]
fn rejects_bad_pools() {
    check(
        vec![network(true)],
        with_pools(S1, "10.0.0.0/24", "10.0.0.1", &[("10.0.0.9", "10.0.1.9")]),
        expect![[r#"
        request.rejected {code:invalid_pool,message:pool 10.0.0.9-10.0.1.9 is not inside 10.0.0.0/24,network_id:#1,request_type:ipam.subnet.added.v1}
    "#]],
    );
}

#[test]
fn rejects_ipv4_wider_than_slash_8() {
    check(
        vec![network(true)],
        add(S1, "10.0.0.0/7", "10.0.0.1"),
        expect![[r#"
        request.rejected {code:subnet_too_large,message:10.0.0.0/7 is wider than /8,network_id:#1,request_type:ipam.subnet.added.v1}
    "#]],
    );
}

#[test]
fn rejects_subnet_without_room_for_hosts() {
    check(
        vec![network(true)],
        add(S1, "10.0.0.0/31", "10.0.0.1"),
        expect![[r#"
        request.rejected {code:subnet_too_small,message:10.0.0.0/31 has no room for hosts besides the gateway,network_id:#1,request_type:ipam.subnet.added.v1}
    "#]],
    );
}

#[test]
fn rejects_overlapping_subnet() {
    check(
        small_network(),
        add(S2, "10.0.0.0/24", "10.0.0.1"),
        expect![[r#"
        request.rejected {code:overlapping_subnet,message:10.0.0.0/24 overlaps subnet #11 (10.0.0.0/29) of this network,network_id:#1,request_type:ipam.subnet.added.v1}
    "#]],
    );
}

#[test]
fn rejects_redefining_a_subnet() {
    check(
        small_network(),
        add(S1, "10.0.0.0/28", "10.0.0.1"),
        expect![[r#"
        request.rejected {code:subnet_conflict,message:subnet #11 exists as 10.0.0.0/29 with gateway 10.0.0.1; only its DNS and NTP servers may change,network_id:#1,request_type:ipam.subnet.added.v1}
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
        request.rejected {code:subnet_in_use,message:subnet #11 still holds 1 vNIC reservations,network_id:#1,request_type:ipam.subnet.removed.v1}
    "#]],
    );
}

#[test]
fn rejects_removing_an_unknown_subnet() {
    check(
        small_network(),
        Event::SubnetRemoved(SubnetRemoved { network_id: NET, subnet_id: S2 }),
        expect![[r#"
        request.rejected {code:unknown_subnet,message:subnet #12 is not defined on network #1,network_id:#1,request_type:ipam.subnet.removed.v1}
    "#]],
    );
}

#[test]
fn rejects_vnic_on_unknown_network() {
    check(
        vec![],
        start(1),
        expect![[r#"
        request.rejected {code:unknown_network,message:network #1 is not known to IPAM,network_id:#1,request_type:ipam.vnic.started.v1}
    "#]],
    );
}

#[test]
fn rejects_vnic_when_ipam_disabled() {
    check(
        history(small_network(), [network(false)]),
        start(1),
        expect![[r#"
        request.rejected {code:ipam_disabled,message:IPAM is disabled on network #1,network_id:#1,request_type:ipam.vnic.started.v1}
    "#]],
    );
}

#[test]
fn rejects_vnic_on_unknown_subnet() {
    check(
        small_network(),
        Event::VnicStarted(up(1, Some(S2), None)),
        expect![[r#"
        request.rejected {code:unknown_subnet,message:subnet #12 is not defined on network #1,network_id:#1,request_type:ipam.vnic.started.v1}
    "#]],
    );
}

#[test]
fn rejects_when_subnet_exhausted() {
    check(
        history(small_network(), (1..=5).map(start)),
        start(6),
        expect![[r#"
        request.rejected {code:subnet_exhausted,message:no free address is left in the allocation pools of 10.0.0.0/29,network_id:#1,request_type:ipam.vnic.started.v1}
    "#]],
    );
}

#[test]
fn rejects_fixed_ip_in_use() {
    check(
        history(small_network(), [start(1)]),
        Event::VnicStarted(up(2, Some(S1), Some("10.0.0.2"))),
        expect![[r#"
        request.rejected {code:ip_in_use,message:10.0.0.2 is already reserved in 10.0.0.0/29,network_id:#1,request_type:ipam.vnic.started.v1}
    "#]],
    );
}

#[test]
fn rejects_fixed_ip_outside_subnet() {
    check(
        small_network(),
        Event::VnicStarted(up(1, Some(S1), Some("10.0.1.2"))),
        expect![[r#"
        request.rejected {code:ip_outside_subnet,message:10.0.1.2 is not inside 10.0.0.0/29,network_id:#1,request_type:ipam.vnic.started.v1}
    "#]],
    );
}

#[test]
fn rejects_fixed_ip_that_is_the_gateway_or_broadcast() {
    check(
        small_network(),
        Event::VnicStarted(up(1, Some(S1), Some("10.0.0.1"))),
        expect![[r#"
        request.rejected {code:ip_not_assignable,message:10.0.0.1 is the network, broadcast or gateway address of 10.0.0.0/29,network_id:#1,request_type:ipam.vnic.started.v1}
    "#]],
    );
    check(
        small_network(),
        Event::VnicStarted(up(1, Some(S1), Some("10.0.0.7"))),
        expect![[r#"
        request.rejected {code:ip_not_assignable,message:10.0.0.7 is the network, broadcast or gateway address of 10.0.0.0/29,network_id:#1,request_type:ipam.vnic.started.v1}
    "#]],
    );
}

#[test]
fn rejects_duplicate_mac() {
    let same_mac = VnicUp { mac: mac(1), ..up(2, Some(S1), None) };
    check(
        history(small_network(), [start(1)]),
        Event::VnicStarted(same_mac),
        expect![[r#"
        request.rejected {code:duplicate_mac,message:MAC 52:54:00:00:00:01 is already used on network #1 by vNIC #1,network_id:#1,request_type:ipam.vnic.started.v1}
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
        request.rejected {code:duplicate_mac,message:MAC 52:54:00:00:00:aa is already used on network #1 by the DHCP server of host #31,network_id:#1,request_type:ipam.vnic.started.v1}
    "#]],
    );
}

#[test]
fn rejects_vnic_coming_up_again_with_another_address() {
    check(
        history(small_network(), [start(1)]),
        Event::VnicStarted(up(1, Some(S1), Some("10.0.0.6"))),
        expect![[r#"
        request.rejected {code:vnic_conflict,message:vNIC #1 already holds 10.0.0.2 (MAC 52:54:00:00:00:01) in subnet #11 and asked for another subnet, MAC or IP; send a down event first,network_id:#1,request_type:ipam.vnic.started.v1}
    "#]],
    );
}

#[test]
fn rejects_dhcp_port_when_ipam_disabled() {
    check(
        history(small_network(), [network(false)]),
        port(S1),
        expect![[r#"
        request.rejected {code:ipam_disabled,message:IPAM is disabled on network #1,network_id:#1,request_type:ipam.dhcp_port.requested.v1}
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
