//! Allocation speed: the address pool's next-fit search alone, and whole requests through the
//! allocator state machine. Run: `cargo bench -p ipam-core --bench allocator`.
//!
//! Each iteration of a cycle is two operations (one allocation, one release of the oldest
//! reservation), so criterion's `elem/s` figure is operations per second on one core.

// A benchmark fixture that fails to build is a broken benchmark, not bad input.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipam_core::StateMachine;
use ipam_core::allocator::Allocator;
use ipam_core::event::{Event, NetworkUpserted, SubnetAdded, VnicDown, VnicUp};
use ipam_core::pool::AddressPool;
use ipam_core::{Envelope, EventId, Mac, NetworkId, SubnetId, SubnetSpec, Timestamp, VmId, VnicId};

fn spec(cidr: &str, gateway: &str) -> SubnetSpec {
    SubnetSpec::new(cidr.parse().unwrap(), gateway.parse().unwrap(), vec![], vec![], None).unwrap()
}

/// A pool filled to `fill` of its dynamic capacity, with the held addresses oldest first.
fn filled(spec: &SubnetSpec, fill: f64) -> (AddressPool, VecDeque<IpAddr>) {
    let mut pool = AddressPool::new(spec);
    let target = (pool.free_count() as f64 * fill) as usize;
    let held: VecDeque<IpAddr> = (0..target).map(|_| pool.allocate().unwrap()).collect();
    (pool, held)
}

fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pool_cycles(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool");
    group.throughput(Throughput::Elements(2));
    for (name, cidr, gateway, fill) in [
        ("alloc_release_cycle_v4_slash16_90pct_full", "10.0.0.0/16", "10.0.0.1", 0.9),
        ("alloc_release_cycle_v4_slash8_90pct_full", "10.0.0.0/8", "10.0.0.1", 0.9),
        ("alloc_release_cycle_v4_slash8_10pct_full", "10.0.0.0/8", "10.0.0.1", 0.1),
    ] {
        let (mut pool, mut held) = filled(&spec(cidr, gateway), fill);
        group.bench_function(name, |b| {
            b.iter(|| {
                let ip = pool.allocate().unwrap();
                held.push_back(black_box(ip));
                pool.release(held.pop_front().unwrap());
            })
        });
    }
    // Releasing a random holder instead of the oldest scatters the free bits across the bitmap.
    let (mut pool, held) = filled(&spec("10.0.0.0/16", "10.0.0.1"), 0.9);
    let mut held: Vec<IpAddr> = held.into();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    group.bench_function("alloc_release_cycle_v4_slash16_90pct_full_random_release", |b| {
        b.iter(|| {
            held.push(black_box(pool.allocate().unwrap()));
            state = splitmix64(state);
            let victim = held.swap_remove((state % held.len() as u64) as usize);
            pool.release(victim);
        })
    });
    let v6 = spec("2001:db8::/64", "2001:db8::1");
    let mut pool = AddressPool::new(&v6);
    let mut held: VecDeque<IpAddr> = (0..100_000).map(|_| pool.allocate().unwrap()).collect();
    group.bench_function("alloc_release_cycle_v6_slash64_100k_held", |b| {
        b.iter(|| {
            held.push_back(black_box(pool.allocate().unwrap()));
            pool.release(held.pop_front().unwrap());
        })
    });
    group.finish();

    let mut group = c.benchmark_group("pool");
    group.sample_size(10);
    let slash8 = spec("10.0.0.0/8", "10.0.0.1");
    group.bench_function("create_v4_slash8", |b| b.iter(|| AddressPool::new(black_box(&slash8))));
    group.finish();
}

fn envelope(n: u64, event: Event) -> Envelope {
    Envelope {
        id: EventId::from_u128(u128::from(n)),
        source: "bench".to_owned(),
        time: Timestamp::from_unix_ms(n as i64),
        subject: None,
        event,
    }
}

fn mac(n: u64) -> Mac {
    let b = n.to_be_bytes();
    Mac::from_octets([0x52, 0x54, b[4], b[5], b[6], b[7]]).unwrap()
}

fn up(network_id: NetworkId, subnet_id: SubnetId, n: u64) -> Event {
    Event::VnicStarted(VnicUp {
        vnic_id: VnicId::from_u128(u128::from(n)),
        vm_id: VmId::from_u128(u128::from(n)),
        network_id,
        subnet_id: Some(subnet_id),
        subnet_ids: Vec::new(),
        mac: mac(n),
        requested_ip: None,
    })
}

fn down(network_id: NetworkId, n: u64) -> Event {
    Event::VnicStopped(VnicDown { vnic_id: VnicId::from_u128(u128::from(n)), network_id })
}

fn allocator_cycles(c: &mut Criterion) {
    let network_id = NetworkId::from_u128(1);
    let subnet_id = SubnetId::from_u128(2);
    let mut allocator = Allocator::new();
    allocator.apply(&envelope(
        0,
        Event::NetworkUpserted(NetworkUpserted {
            network_id,
            name: "bench".to_owned(),
            ipam_enabled: true,
            servers_count: None,
        }),
    ));
    // Every input has its own id: an id seen again is a retry, which the allocator ignores.
    allocator.apply(&envelope(
        1,
        Event::SubnetAdded(SubnetAdded {
            network_id,
            subnet_id,
            cidr: "10.0.0.0/16".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            dns_servers: vec![],
            ntp_servers: vec![],
            allocation_pools: None,
        }),
    ));
    let live = (65_533.0 * 0.9) as u64;
    for n in 1..=live {
        allocator.apply(&envelope(2 * n, up(network_id, subnet_id, n)));
    }
    // Inputs are built ahead, as the runtime hands the machine already-decoded envelopes. Their
    // 400,000 ids repeat only after the window (65,536 ids) has forgotten them.
    let inputs: Vec<(Envelope, Envelope)> = (live + 1..live + 1 + 200_000)
        .map(|n| (envelope(2 * n, up(network_id, subnet_id, n)), envelope(2 * n + 1, down(network_id, n - live))))
        .collect();
    let mut next = 0;
    let mut group = c.benchmark_group("allocator");
    group.throughput(Throughput::Elements(2));
    group.bench_function("vnic_up_down_cycle_v4_slash16_90pct_full", |b| {
        b.iter(|| {
            let (start, stop) = &inputs[next % inputs.len()];
            next += 1;
            black_box(allocator.apply(start));
            black_box(allocator.apply(stop));
        })
    });
    group.finish();
}

criterion_group!(benches, pool_cycles, allocator_cycles);
criterion_main!(benches);
