//! The vNIC's lease state and the subnets' forecasts through the read model: events in (with
//! their offsets), views and metrics out.

use std::net::IpAddr;

use ipam_core::event::{
    AssignReason, ClockTicked, DhcpServerAssigned, DhcpServerSynced, LeaseConflict, Owner, ReleaseReason,
    ReservationAdded, ReservationRemoved, SubnetActivated, VnicUnleased,
};
use ipam_core::{Envelope, Event, EventId, IpRange, Mac, SubnetId, Topic, VmId};

use super::*;
use crate::model::ReadModel;

const NET: NetworkId = NetworkId::from_u128(1);
const SUBNET: SubnetId = SubnetId::from_u128(2);
const HOST: HostId = HostId::from_u128(3);
const VNIC: VnicId = VnicId::from_u128(4);
const VM: VmId = VmId::from_u128(5);

/// An event whose record time is `seconds` after the epoch.
fn at(seconds: i64, event: Event) -> Envelope {
    Envelope {
        id: EventId::from_u128(0xe000 + seconds as u128),
        source: "test".to_owned(),
        time: Timestamp::from_unix_ms(seconds * 1000),
        subject: None,
        event,
    }
}

fn ts(seconds: i64) -> Timestamp {
    Timestamp::from_unix_ms(seconds * 1000)
}

fn mac(n: u8) -> Mac {
    Mac::from_octets([0x52, 0x54, 0, 0, 0, n]).unwrap()
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, n])
}

fn activated() -> Event {
    Event::SubnetActivated(SubnetActivated {
        network_id: NET,
        subnet_id: SUBNET,
        cidr: "10.0.0.0/24".parse().unwrap(),
        gateway: ip(1),
        dns_servers: vec![],
        ntp_servers: vec![],
        allocation_pools: vec![IpRange { start: ip(2), end: ip(254) }],
        cause: EventId::from_u128(1),
    })
}

fn assigned(epoch: u64) -> Event {
    Event::DhcpServerAssigned(DhcpServerAssigned {
        network_id: NET,
        host_id: HOST,
        interface: "eth0".parse().unwrap(),
        epoch,
        reason: AssignReason::Placed,
        cause: EventId::from_u128(1),
    })
}

fn added(vnic: u128, n: u8) -> Event {
    Event::ReservationAdded(ReservationAdded {
        network_id: NET,
        subnet_id: SUBNET,
        owner: Owner::Vnic { vnic_id: VnicId::from_u128(vnic), vm_id: VM },
        mac: mac(n),
        ip: ip(n),
        cause: EventId::from_u128(0x100 + vnic),
    })
}

fn removed(vnic: u128, n: u8) -> Event {
    Event::ReservationRemoved(ReservationRemoved {
        network_id: NET,
        subnet_id: SUBNET,
        owner: Owner::Vnic { vnic_id: VnicId::from_u128(vnic), vm_id: VM },
        mac: mac(n),
        ip: ip(n),
        reason: ReleaseReason::VnicDown,
        cause: EventId::from_u128(0x200 + vnic),
    })
}

fn synced(epoch: u64, reservations_offset: u64) -> Event {
    Event::DhcpServerSynced(DhcpServerSynced { host_id: HOST, network_id: NET, epoch, reservations_offset })
}

fn lease(change: LeaseChange) -> Event {
    Event::VnicLeaseChanged(VnicLeaseChanged {
        network_id: NET,
        subnet_id: SUBNET,
        vnic_id: VNIC,
        vm_id: VM,
        mac: mac(4),
        ip: ip(4),
        host_id: HOST,
        change,
        observed_at: ts(40),
        expires_at: matches!(change, LeaseChange::Granted | LeaseChange::Renewed).then(|| ts(3640)),
        cause: EventId::from_u128(9),
    })
}

fn unleased() -> Event {
    Event::VnicUnleased(VnicUnleased {
        network_id: NET,
        subnet_id: SUBNET,
        vnic_id: VNIC,
        vm_id: VM,
        mac: mac(4),
        ip: ip(4),
        reserved_at: ts(10),
        now: ts(310),
        cause: EventId::from_u128(10),
    })
}

/// A model with the subnet and host's server (epoch 1), and vNIC 4's reservation at offset 7,
/// record time 10 s.
fn reserved_model() -> ReadModel {
    let mut model = ReadModel::new();
    model.apply_at(Topic::Reservations, Some(0), &at(0, activated()));
    model.apply_at(Topic::DhcpServers, Some(0), &at(1, assigned(1)));
    model.apply_at(Topic::Reservations, Some(7), &at(10, added(4, 4)));
    model
}

fn progress(model: &ReadModel) -> VnicProgress {
    model.vnic(VNIC).expect("the vNIC is known").progress.expect("it holds a reservation")
}

#[test]
fn a_vnic_goes_from_reserved_to_served_to_leased_with_the_time_of_each_step() {
    let mut model = reserved_model();
    let view = model.vnic(VNIC).unwrap();
    assert_eq!(view.state, Some(VnicState::Reserved));
    assert_eq!(progress(&model).reserved_at, ts(10));

    // A mark up to the reservation's own offset does not hold it yet; one past it does.
    model.apply_at(Topic::Hosts, Some(0), &at(12, synced(1, 7)));
    assert_eq!(model.vnic(VNIC).unwrap().state, Some(VnicState::Reserved));
    model.apply_at(Topic::Hosts, Some(1), &at(15, synced(1, 8)));
    assert_eq!(model.vnic(VNIC).unwrap().state, Some(VnicState::Served));
    assert_eq!(progress(&model).served_at, Some(ts(15)));

    model.apply_at(Topic::Reservations, Some(8), &at(42, lease(LeaseChange::Granted)));
    let view = model.vnic(VNIC).unwrap();
    assert_eq!(view.state, Some(VnicState::Leased));
    let progress_now = view.progress.unwrap();
    assert_eq!(progress_now.leased_at, Some(ts(42)));
    assert_eq!(progress_now.lease, Some(LeaseView { host_id: HOST, expires_at: Some(ts(3640)), observed_at: ts(40) }));
    let json = serde_json::to_value(model.vnic(VNIC).unwrap()).unwrap();
    assert_eq!(json["state"], "leased", "{json}");
    // The network's list of reservations says the same, for the page's column.
    let page = model.reservations_page(NET, None, 10).expect("the network is known");
    let states: Vec<_> = page.0.iter().map(|r| (r.mac, r.state)).collect();
    assert!(states.contains(&(mac(4), Some(VnicState::Leased))), "{states:?}");
    assert_eq!(json["progress"]["served_at"], "1970-01-01T00:00:15Z", "{json}");

    // The lease ends: served again, and the histogram counted the first lease only.
    model.apply_at(Topic::Reservations, Some(9), &at(50, lease(LeaseChange::Expired)));
    assert_eq!(model.vnic(VNIC).unwrap().state, Some(VnicState::Served));
    assert_eq!(progress(&model).leased_at, None);
    model.apply_at(Topic::Reservations, Some(10), &at(60, lease(LeaseChange::Granted)));
    let latency = model.lease_states().latency();
    assert_eq!((latency.count, latency.sum_seconds), (1, 32.0), "reserved at 10 s, first leased at 42 s");

    // The release ends it all.
    model.apply_at(Topic::Reservations, Some(11), &at(70, removed(4, 4)));
    let view = model.vnic(VNIC).unwrap();
    assert_eq!((view.state, view.progress), (None, None));
}

#[test]
fn a_synced_mark_of_another_epoch_serves_nothing() {
    let mut model = reserved_model();
    model.apply_at(Topic::Hosts, Some(0), &at(15, synced(2, 100)));
    assert_eq!(model.vnic(VNIC).unwrap().state, Some(VnicState::Reserved));
}

#[test]
fn a_mark_read_before_the_reservation_it_covers_serves_it_at_the_marks_time() {
    let mut model = ReadModel::new();
    model.apply_at(Topic::Reservations, Some(0), &at(0, activated()));
    model.apply_at(Topic::DhcpServers, Some(0), &at(1, assigned(1)));
    model.apply_at(Topic::Hosts, Some(0), &at(20, synced(1, 8)));
    model.apply_at(Topic::Reservations, Some(7), &at(10, added(4, 4)));
    assert_eq!(model.vnic(VNIC).unwrap().state, Some(VnicState::Served));
    assert_eq!(progress(&model).served_at, Some(ts(20)));
}

#[test]
fn an_unleased_report_holds_until_a_lease_and_is_counted_per_network() {
    let mut model = reserved_model();
    model.apply_at(Topic::Reservations, Some(8), &at(310, unleased()));
    assert_eq!(progress(&model).unleased_reported_at, Some(ts(310)));
    assert_eq!(model.lease_states().unleased_counts(), &BTreeMap::from([(NET, 1)]));
    model.apply_at(Topic::Reservations, Some(9), &at(320, lease(LeaseChange::Granted)));
    assert_eq!(progress(&model).unleased_reported_at, None);
    assert!(model.lease_states().unleased_counts().is_empty());
}

#[test]
fn the_metrics_show_latency_unleased_vnics_states_conflicts_and_forecasts() {
    let mut model = reserved_model();
    model.apply_at(Topic::Reservations, Some(8), &at(310, unleased()));
    let conflict = Event::LeaseConflict(LeaseConflict {
        network_id: NET,
        host_id: HOST,
        mac: mac(9),
        leased_ip: ip(9),
        reserved_ip: None,
        vnic_id: None,
        kind: LeaseConflictKind::NoReservation,
        cause: EventId::from_u128(11),
    });
    model.apply_at(Topic::Reservations, Some(9), &at(311, conflict));
    let text = crate::metrics::render(&crate::metrics::Metrics::default(), &gauges(&model, &model.subnets()));
    let net = format!("network=\"{NET}\"");
    for line in [
        format!("ipam_vnics_unleased{{{net}}} 1\n"),
        format!("ipam_vnics{{{net},state=\"reserved\"}} 1\n"),
        format!("ipam_lease_conflicts_total{{{net},kind=\"no_reservation\"}} 1\n"),
        "ipam_vnic_lease_seconds_count 0\n".to_owned(),
        format!("ipam_subnet_full_in_seconds{{{net},subnet=\"{SUBNET}\"}} "),
    ] {
        assert!(text.contains(&line), "no {line:?} in\n{text}");
    }
}

#[test]
fn a_growing_subnet_is_forecast_full_at_its_rate_and_a_steady_one_is_not() {
    let mut model = ReadModel::new();
    model.apply_at(Topic::Reservations, Some(0), &at(0, activated()));
    // 30 reservations, one a minute for half an hour: 60 an hour, with 253 - 30 = 223 free.
    for n in 0..30u8 {
        model.apply_at(
            Topic::Reservations,
            Some(u64::from(n) + 1),
            &at(60 * i64::from(n) + 60, added(100 + u128::from(n), 10 + n)),
        );
    }
    let subnet = &model.network(NET).unwrap().subnets[0];
    assert_eq!(subnet.forecast.allocation_rate_per_hour, 60.0, "{:?}", subnet.forecast);
    assert_eq!(subnet.forecast.full_in_seconds, Some(223 * 60));
    assert_eq!(subnet.forecast.full_in.as_deref(), Some("about 4 hours"));

    // An hour later with no change, the window holds nothing: not growing.
    model.apply_at(Topic::Hosts, Some(0), &at(1800 + 3700, Event::ClockTicked(ClockTicked { now: ts(5500) })));
    let subnet = &model.network(NET).unwrap().subnets[0];
    assert_eq!(subnet.forecast.allocation_rate_per_hour, 0.0);
    assert_eq!((subnet.forecast.full_in_seconds, subnet.forecast.full_in.clone()), (None, None));

    // As many releases as reservations within the window: steady, not growing.
    for n in 0..10u8 {
        model.apply_at(
            Topic::Reservations,
            Some(100 + u64::from(n)),
            &at(5600 + i64::from(n), removed(100 + u128::from(n), 10 + n)),
        );
        model.apply_at(
            Topic::Reservations,
            Some(200 + u64::from(n)),
            &at(5600 + i64::from(n), added(200 + u128::from(n), 100 + n)),
        );
    }
    let subnet = &model.network(NET).unwrap().subnets[0];
    assert_eq!(subnet.forecast.full_in_seconds, None, "{:?}", subnet.forecast);
}

#[test]
fn durations_read_as_people_say_them() {
    use crate::forecast::about;
    assert_eq!(about(0), "full now");
    assert_eq!(about(1), "about 1 second");
    assert_eq!(about(89), "about 1 minute");
    assert_eq!(about(91), "about 2 minutes");
    assert_eq!(about(13_380), "about 4 hours");
    assert_eq!(about(3 * 86_400 + 1), "about 3 days");
    assert_eq!(about(u64::MAX), "about 584942417355 years", "an IPv6 /64 filling slowly");
}

/// The counts the metrics read, by walking every vNIC (what the live counts replace).
fn recount(states: &LeaseStates) -> (BTreeMap<(NetworkId, VnicState), usize>, BTreeMap<NetworkId, usize>) {
    let mut by_state = BTreeMap::new();
    let mut unleased = BTreeMap::new();
    for (key, progress) in &states.vnics {
        *by_state.entry((progress.network_id, states.progress(*key).unwrap().state)).or_default() += 1;
        if progress.unleased_reported_at.is_some() {
            *unleased.entry(progress.network_id).or_default() += 1;
        }
    }
    (by_state, unleased)
}

#[test]
fn the_live_counts_equal_a_walk_over_every_vnic_after_each_change() {
    let other = NetworkId::from_u128(9);
    let vnic = |n: u128| VnicId::from_u128(0x100 + n);
    let changed = |n: u128, change: LeaseChange| VnicLeaseChanged {
        network_id: NET,
        subnet_id: SUBNET,
        vnic_id: vnic(n),
        vm_id: VM,
        mac: mac(n as u8),
        ip: ip(n as u8),
        host_id: HOST,
        change,
        observed_at: ts(50),
        expires_at: None,
        cause: EventId::from_u128(7),
    };
    let unleased = |n: u128, network_id: NetworkId| VnicUnleased {
        network_id,
        subnet_id: SUBNET,
        vnic_id: vnic(n),
        vm_id: VM,
        mac: mac(n as u8),
        ip: ip(n as u8),
        reserved_at: ts(0),
        now: ts(400),
        cause: EventId::from_u128(8),
    };
    let mut states = LeaseStates::default();
    type Step<'a> = Box<dyn Fn(&mut LeaseStates) + 'a>;
    let steps: Vec<Step> = vec![
        Box::new(|s| s.reserved((vnic(1), IpFamily::Ipv4), NET, Some(1), ts(1), &[(HOST, 1)])),
        Box::new(|s| s.reserved((vnic(2), IpFamily::Ipv4), NET, Some(2), ts(2), &[(HOST, 1)])),
        Box::new(|s| s.reserved((vnic(3), IpFamily::Ipv4), other, Some(1), ts(3), &[])),
        Box::new(|s| s.synced(NET, HOST, 1, 2, ts(4), true)),
        Box::new(|s| s.unleased(&unleased(2, NET), ts(400))),
        Box::new(|s| s.unleased(&unleased(3, other), ts(400))),
        Box::new(|s| s.lease_changed(&changed(1, LeaseChange::Granted), ts(10))),
        Box::new(|s| s.lease_changed(&changed(2, LeaseChange::Granted), ts(410))),
        Box::new(|s| s.lease_changed(&changed(1, LeaseChange::Released), ts(420))),
        Box::new(|s| s.synced(NET, HOST, 1, 3, ts(430), true)),
        Box::new(|s| s.released((vnic(2), IpFamily::Ipv4))),
        Box::new(|s| s.reserved((vnic(3), IpFamily::Ipv4), other, Some(5), ts(440), &[])),
        Box::new(|s| s.released((vnic(1), IpFamily::Ipv4))),
        Box::new(|s| s.released((vnic(3), IpFamily::Ipv4))),
    ];
    for (n, step) in steps.iter().enumerate() {
        step(&mut states);
        let (by_state, unleased) = recount(&states);
        assert_eq!(states.state_counts(), &by_state, "after step {n}");
        assert_eq!(states.unleased_counts(), &unleased, "after step {n}");
    }
    assert!(states.state_counts().is_empty() && states.unleased_counts().is_empty());
}

#[test]
fn a_dual_stack_vnic_shows_both_addresses_each_in_its_state_and_is_leased_when_both_are() {
    const SUBNET6: SubnetId = SubnetId::from_u128(6);
    let v6: IpAddr = "2001:db8::4".parse().unwrap();
    let mut model = reserved_model();
    let activated6 = match activated() {
        Event::SubnetActivated(e) => Event::SubnetActivated(SubnetActivated {
            subnet_id: SUBNET6,
            cidr: "2001:db8::/64".parse().unwrap(),
            gateway: "2001:db8::1".parse().unwrap(),
            allocation_pools: vec![],
            ..e
        }),
        _ => unreachable!(),
    };
    model.apply_at(Topic::Reservations, Some(1), &at(2, activated6));
    let (Event::ReservationAdded(v4_added), Event::VnicLeaseChanged(v4_lease)) =
        (added(4, 4), lease(LeaseChange::Granted))
    else {
        unreachable!()
    };
    // Both reservations come from one input (cause 0x104), the IPv6 one right after.
    let v6_added = ReservationAdded { subnet_id: SUBNET6, ip: v6, ..v4_added.clone() };
    model.apply_at(Topic::Reservations, Some(8), &at(11, Event::ReservationAdded(v6_added)));
    model.apply_at(Topic::Hosts, Some(0), &at(15, synced(1, 9)));
    let v6_lease = VnicLeaseChanged { subnet_id: SUBNET6, ip: v6, ..v4_lease.clone() };
    model.apply_at(Topic::Reservations, Some(9), &at(20, Event::VnicLeaseChanged(v6_lease)));

    let view = model.vnic(VNIC).unwrap();
    let states: Vec<(String, Option<VnicState>)> =
        view.addresses.iter().map(|address| (address.reservation.0.ip().to_string(), address.state)).collect();
    assert_eq!(
        states,
        [("10.0.0.4".to_owned(), Some(VnicState::Served)), ("2001:db8::4".to_owned(), Some(VnicState::Leased))]
    );
    assert_eq!(view.state, Some(VnicState::Served), "the least advanced address");
    assert_eq!(view.reservation.unwrap().0.ip(), ip(4), "the single-stack field is the IPv4 address");

    model.apply_at(Topic::Reservations, Some(10), &at(21, Event::VnicLeaseChanged(v4_lease)));
    assert_eq!(model.vnic(VNIC).unwrap().state, Some(VnicState::Leased));
    let Some(crate::model::Decided::Reserved { addresses, .. }) = model.decided(EventId::from_u128(0x104)) else {
        panic!("the start decided a reservation");
    };
    assert_eq!(addresses, &[(SUBNET, ip(4)), (SUBNET6, v6)], "one decision holds both addresses");

    let Event::ReservationRemoved(v4_removed) = removed(4, 4) else { unreachable!() };
    let v6_removed = ReservationRemoved { subnet_id: SUBNET6, ip: v6, ..v4_removed.clone() };
    model.apply_at(Topic::Reservations, Some(11), &at(30, Event::ReservationRemoved(v4_removed)));
    model.apply_at(Topic::Reservations, Some(12), &at(30, Event::ReservationRemoved(v6_removed)));
    let view = model.vnic(VNIC).unwrap();
    assert!(view.addresses.is_empty() && view.reservation.is_none() && view.state.is_none());
}
