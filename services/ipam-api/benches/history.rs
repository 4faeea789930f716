//! As-of queries on a big history: who held an address (or what a vNIC or a MAC held) at an
//! instant, with 1,000,000 reservations (each later released) in the read model's history.
//! Run: `cargo bench -p ipam-api --bench history`.
//!
//! The history is 1M holdings of 10,000 vNICs cycling through a /16 (about 15 holdings per
//! address, all kept: the per-address bound is 256). An as-of query on an address is a map lookup
//! and a binary search on the holdings' starts; one on a vNIC or MAC looks at each address it held.

// A benchmark fixture that fails to build is a broken benchmark, not bad input.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use ipam_api::model::ReadModel;
use ipam_core::event::{Owner, ReleaseReason, ReservationAdded, ReservationRemoved, SubnetActivated};
use ipam_core::{Envelope, Event, EventId, Mac, NetworkId, SubnetId, Timestamp, Topic, VmId, VnicId};

const RESERVATIONS: u64 = 1_000_000;
const VNICS: u64 = 10_000;
const ADDRESSES: u64 = 65_534;
const NETWORK: NetworkId = NetworkId::from_u128(1);
const SUBNET: SubnetId = SubnetId::from_u128(2);
/// Each holding lasts 10 s; a new one starts every second.
const HOLD_SECS: i64 = 10;

fn envelope(n: u64, time_secs: i64, event: Event) -> Envelope {
    Envelope {
        id: EventId::from_u128(u128::from(n) + 1_000),
        source: "bench".to_owned(),
        time: Timestamp::from_unix_ms(1_700_000_000_000 + time_secs * 1000),
        subject: None,
        event,
    }
}

fn ip(i: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 1)) + (i % ADDRESSES) as u32))
}

fn mac(vnic: u64) -> Mac {
    format!("52:54:00:{:02x}:{:02x}:{:02x}", (vnic >> 16) & 0xff, (vnic >> 8) & 0xff, vnic & 0xff).parse().unwrap()
}

fn owner(vnic: u64) -> Owner {
    Owner::Vnic { vnic_id: VnicId::from_u128(u128::from(vnic) + 0x10_0000), vm_id: VmId::from_u128(7) }
}

/// The model after `RESERVATIONS` holdings, each released `HOLD_SECS` after it started.
fn model() -> ReadModel {
    let mut model = ReadModel::new();
    let activated = SubnetActivated {
        network_id: NETWORK,
        subnet_id: SUBNET,
        cidr: "10.0.0.0/16".parse().unwrap(),
        gateway: "10.0.0.1".parse().unwrap(),
        dns_servers: vec![],
        ntp_servers: vec![],
        allocation_pools: vec![],
        cause: EventId::from_u128(1),
    };
    model.apply(Topic::Reservations, &envelope(0, 0, Event::SubnetActivated(activated)));
    let hold = HOLD_SECS as u64;
    for i in 0..RESERVATIONS + hold {
        if i >= hold {
            let j = i - hold;
            let removed = ReservationRemoved {
                network_id: NETWORK,
                subnet_id: SUBNET,
                owner: owner(j % VNICS),
                mac: mac(j % VNICS),
                ip: ip(j),
                reason: ReleaseReason::VnicDown,
                cause: EventId::from_u128(u128::from(j) << 1 | 1),
            };
            model.apply(Topic::Reservations, &envelope(2 * i + 1, i as i64, Event::ReservationRemoved(removed)));
        }
        if i < RESERVATIONS {
            let added = ReservationAdded {
                network_id: NETWORK,
                subnet_id: SUBNET,
                owner: owner(i % VNICS),
                mac: mac(i % VNICS),
                ip: ip(i),
                cause: EventId::from_u128(u128::from(i) << 1),
            };
            model.apply(Topic::Reservations, &envelope(2 * i, i as i64, Event::ReservationAdded(added)));
        }
    }
    model
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_unix_ms(1_700_000_000_000 + secs as i64 * 1000 + 500)
}

fn as_of(c: &mut Criterion) {
    let started = Instant::now();
    let model = model();
    println!("history of {RESERVATIONS} reservations built in {:.1} s", started.elapsed().as_secs_f64());
    // A check that the figures measure real answers: the holder of an address in mid-history.
    let probe = RESERVATIONS / 2;
    let held = model.ip_history(ip(probe), Some(at(probe))).unwrap();
    assert_eq!(held.len(), 1, "one holder at that instant");
    assert_eq!(held[0].mac, mac(probe % VNICS));

    let mut n = 0u64;
    c.bench_function("ip history as of an instant, 1M reservations", |b| {
        b.iter(|| {
            n = (n + 7_919) % RESERVATIONS;
            black_box(model.ip_history(black_box(ip(n)), Some(at(n))))
        })
    });
    c.bench_function("vNIC history as of an instant, 1M reservations", |b| {
        b.iter(|| {
            n = (n + 7_919) % RESERVATIONS;
            black_box(model.vnic_history(VnicId::from_u128(u128::from(n % VNICS) + 0x10_0000), Some(at(n))))
        })
    });
    c.bench_function("MAC history as of an instant, 1M reservations", |b| {
        b.iter(|| {
            n = (n + 7_919) % RESERVATIONS;
            black_box(model.mac_history(mac(n % VNICS), Some(at(n))))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = as_of
}
criterion_main!(benches);
