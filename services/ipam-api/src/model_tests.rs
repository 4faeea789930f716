use super::*;
use ipam_core::event::{ReservationAdded, ReservationRemoved, SubnetActivated};

fn envelope(n: u128, event: Event) -> Envelope {
    Envelope {
        id: EventId::from_u128(n),
        source: "test".to_owned(),
        time: Timestamp::from_unix_ms(n as i64 * 1000),
        subject: None,
        event,
    }
}

fn subnet(cidr: &str, gateway: &str, pools: &[(&str, &str)]) -> Subnet {
    Subnet {
        cidr: cidr.parse().expect("cidr"),
        gateway: gateway.parse().expect("gateway"),
        dns_servers: vec![],
        ntp_servers: vec![],
        allocation_pools: pools
            .iter()
            .map(|(s, e)| IpRange { start: s.parse().expect("start"), end: e.parse().expect("end") })
            .collect(),
        activated: Timestamp::from_unix_ms(0),
    }
}

#[test]
fn free_counts_pool_addresses_less_gateway_and_reservations_inside_pools() {
    let s = subnet("10.0.0.0/24", "10.0.0.1", &[("10.0.0.1", "10.0.0.254")]);
    let ips: Vec<IpAddr> = ["10.0.0.5", "10.0.0.6"].iter().map(|ip| ip.parse().expect("ip")).collect();
    assert_eq!(SubnetCounts::of(&s, &ips), SubnetCounts { used: 2, size: 253, free: 251 });

    // A fixed IP outside the pool is used, but takes nothing from the pool.
    let s = subnet("10.0.0.0/24", "10.0.0.1", &[("10.0.0.100", "10.0.0.109")]);
    let ips: Vec<IpAddr> = ["10.0.0.5", "10.0.0.100"].iter().map(|ip| ip.parse().expect("ip")).collect();
    assert_eq!(SubnetCounts::of(&s, &ips), SubnetCounts { used: 2, size: 10, free: 9 });
}

#[test]
fn ipv6_counts_saturate_as_json_numbers() {
    let s = subnet("2001:db8::/64", "2001:db8::1", &[("2001:db8::1", "2001:db8::ffff:ffff:ffff:ffff")]);
    let counts = SubnetCounts::of(&s, &[]);
    assert_eq!(counts.size, (1u128 << 64) - 2);
    assert_eq!(json_count(counts.free), MAX_JSON_COUNT as u64);
}

#[test]
fn history_closes_the_open_entry_and_vnic_keeps_its_last_release() {
    let network_id = NetworkId::from_u128(1);
    let subnet_id = SubnetId::from_u128(2);
    let owner = Owner::Vnic { vnic_id: VnicId::from_u128(3), vm_id: VmId::from_u128(4) };
    let mac: Mac = "52:54:00:00:00:01".parse().expect("mac");
    let ip: IpAddr = "10.0.0.2".parse().expect("ip");
    let mut model = ReadModel::new();
    model.apply(
        Topic::Reservations,
        &envelope(
            1,
            Event::SubnetActivated(SubnetActivated {
                network_id,
                subnet_id,
                cidr: "10.0.0.0/24".parse().expect("cidr"),
                gateway: "10.0.0.1".parse().expect("gw"),
                dns_servers: vec![],
                ntp_servers: vec![],
                allocation_pools: vec![],
                cause: EventId::from_u128(1),
            }),
        ),
    );
    let added = ReservationAdded { network_id, subnet_id, owner, mac, ip, cause: EventId::from_u128(10) };
    model.apply(Topic::Reservations, &envelope(2, Event::ReservationAdded(added.clone())));
    // Seen twice: still one entry.
    model.apply(Topic::Reservations, &envelope(2, Event::ReservationAdded(added)));
    model.apply(
        Topic::Reservations,
        &envelope(
            3,
            Event::ReservationRemoved(ReservationRemoved {
                network_id,
                subnet_id,
                owner,
                mac,
                ip,
                reason: ReleaseReason::VnicDown,
                cause: EventId::from_u128(11),
            }),
        ),
    );
    let history = model.ip_history(ip, None).expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].to, Some(Timestamp::from_unix_ms(3000)));
    let vnic = model.vnic(VnicId::from_u128(3)).expect("vnic");
    assert!(vnic.reservation.is_none());
    assert_eq!(vnic.last_release.expect("release").0.reason, ReleaseReason::VnicDown);
    assert!(model.network(network_id).expect("network").reservations.is_empty());
}

#[test]
fn a_rejection_written_before_it_named_the_vnic_still_decodes_and_shows() {
    let old = serde_json::json!({
        "specversion": "1.0", "id": "00000000-0000-0000-0000-000000000031", "source": "ipam/allocator",
        "type": "ipam.request.rejected.v1", "time": "2026-01-01T00:00:00Z",
        "data": {"network_id": "00000000-0000-0000-0000-000000000001", "request_type": "ipam.vnic.started.v1",
                 "code": "ip_in_use", "message": "taken", "cause": "00000000-0000-0000-0000-000000000030"}
    });
    let envelope = Envelope::decode(old.to_string().as_bytes()).expect("an old record decodes");
    let mut model = ReadModel::new();
    model.apply(Topic::Reservations, &envelope);
    let Some(Decided::Rejected { code, vnic_id, mac, .. }) = model.decided(EventId::from_u128(0x30)) else {
        panic!("the rejection is kept by its cause");
    };
    assert_eq!((*code, *vnic_id, *mac), (RejectionCode::IpInUse, None, None));
}

#[test]
fn the_metrics_subnet_figures_are_those_of_the_network_views() {
    let mut model = ReadModel::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    for net in 1..=2u128 {
        let network_id = NetworkId::from_u128(net);
        for (sub, cidr) in [(10, "10.0.0.0/24"), (11, "2001:db8::/64")] {
            let subnet_id = SubnetId::from_u128(net * 100 + sub);
            let cidr: Cidr = cidr.parse().expect("cidr");
            let (gateway, pool): (IpAddr, IpRange) = if cidr.is_ipv4() {
                (
                    "10.0.0.1".parse().expect("gw"),
                    IpRange { start: "10.0.0.2".parse().expect("s"), end: "10.0.0.200".parse().expect("e") },
                )
            } else {
                (
                    "2001:db8::1".parse().expect("gw"),
                    IpRange { start: "2001:db8::2".parse().expect("s"), end: "2001:db8::ff".parse().expect("e") },
                )
            };
            let activated = SubnetActivated {
                network_id,
                subnet_id,
                cidr,
                gateway,
                dns_servers: vec![],
                ntp_servers: vec![],
                allocation_pools: vec![pool],
                cause: EventId::from_u128(9000 + net),
            };
            model.apply(Topic::Reservations, &envelope(next(), Event::SubnetActivated(activated)));
            // A few reservations per subnet, inside the pool and one outside it (a fixed IP).
            for host in 0..(3 * net as u32 + sub as u32 - 9) {
                let ip = if cidr.is_ipv4() {
                    IpAddr::from([10, 0, 0, if host == 0 { 250 } else { 2 + host as u8 }])
                } else {
                    IpAddr::from(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2 + host as u16))
                };
                let vnic = net * 1000 + sub * 100 + u128::from(host);
                let added = ReservationAdded {
                    network_id,
                    subnet_id,
                    owner: Owner::Vnic { vnic_id: VnicId::from_u128(vnic), vm_id: VmId::from_u128(vnic) },
                    mac: Mac::from_octets([0x52, 0x54, 0, net as u8, sub as u8, host as u8]).expect("mac"),
                    ip,
                    cause: EventId::from_u128(vnic),
                };
                let id = next();
                model.apply(Topic::Reservations, &envelope(id, Event::ReservationAdded(added)));
            }
        }
    }
    // A network known from a rejection only has no subnets to show.
    let rejected = ipam_core::event::RequestRejected {
        network_id: NetworkId::from_u128(3),
        request_type: "ipam.vnic.started.v1".to_owned(),
        code: RejectionCode::UnknownNetwork,
        message: "unknown".to_owned(),
        cause: EventId::from_u128(77),
        vnic_id: None,
        mac: None,
        subnet_id: None,
        host_id: None,
    };
    model.apply(Topic::Reservations, &envelope(next(), Event::RequestRejected(rejected)));

    let mut utilizations = Vec::new();
    let mut forecasts = Vec::new();
    for network_id in [1, 2].map(NetworkId::from_u128) {
        for subnet in model.network(network_id).expect("network").subnets {
            utilizations.push((network_id, subnet.subnet_id, subnet.utilization));
            forecasts.push((network_id, subnet.subnet_id, subnet.forecast));
        }
    }
    assert_eq!(utilizations.len(), 4);
    assert!(utilizations.iter().all(|(_, _, ratio)| *ratio > 0.0), "{utilizations:?}");
    let figures = |(network_id, view): &(NetworkId, SubnetView)| {
        ((*network_id, view.subnet_id, view.utilization), (*network_id, view.subnet_id, view.forecast.clone()))
    };
    let (shown_utilizations, shown_forecasts): (Vec<_>, Vec<_>) = model.subnets().iter().map(figures).unzip();
    assert_eq!(shown_utilizations, utilizations);
    assert_eq!(shown_forecasts, forecasts);
}
