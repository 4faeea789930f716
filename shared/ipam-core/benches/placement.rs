//! How long placement takes to handle one host loss in a large fleet: 1,000 hosts, 5,000 networks
//! (each IPAM-enabled with one active subnet and 2 servers), every host attached to about 250
//! networks. The measured step is one `HostUpserted` that marks a serving host down: it must touch
//! only the networks that host is attached to or serves, so it stays well under a millisecond.

// A benchmark fixture that fails to build is a broken benchmark, not bad input.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ipam_core::StateMachine;
use ipam_core::event::{
    ClockTicked, Envelope, Event, HostNetwork, HostStatus, HostUpserted, NetworkUpserted, SubnetActivated,
};
use ipam_core::ids::{EventId, HostId, NetworkId, SubnetId};
use ipam_core::placement::{Placement, PlacementConfig};
use ipam_core::time::Timestamp;

const HOSTS: u64 = 1_000;
const NETWORKS: u64 = 5_000;
/// Each host is attached to a network with probability 1 in 20: about 250 networks per host.
const ATTACH_ONE_IN: u64 = 20;

/// A tiny deterministic generator (splitmix64), so the fleet is the same on every run.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn envelope(index: u64, event: Event) -> Envelope {
    Envelope {
        id: EventId::from_u128(u128::from(index)),
        source: "bench".to_owned(),
        time: Timestamp::from_unix_ms(0),
        subject: None,
        event,
    }
}

fn host_event(host: u64, status: HostStatus, networks: &[HostNetwork]) -> Event {
    Event::HostUpserted(HostUpserted {
        host_id: HostId::from_u128(u128::from(host)),
        name: format!("host-{host}"),
        status,
        networks: networks.to_vec(),
    })
}

/// The loaded fleet, and the `HostUpserted` that takes its busiest host down.
fn fleet() -> (Placement, Envelope, usize) {
    let mut rng = SplitMix64(0x1BA5_EBA1);
    let interface = "br0".parse().expect("a valid interface name");
    let attachments: Vec<Vec<HostNetwork>> = (0..HOSTS)
        .map(|_| {
            (1..=NETWORKS)
                .filter(|_| rng.next().is_multiple_of(ATTACH_ONE_IN))
                .map(|network| HostNetwork {
                    network_id: NetworkId::from_u128(u128::from(network)),
                    interface: Clone::clone(&interface),
                })
                .collect()
        })
        .collect();

    let mut placement = Placement::new(PlacementConfig::default());
    let mut index = 0;
    let mut apply = |placement: &mut Placement, event: Event| {
        index += 1;
        placement.apply(&envelope(index, event));
    };
    apply(&mut placement, Event::ClockTicked(ClockTicked { now: Timestamp::from_unix_ms(0) }));
    for (host, networks) in (1..=HOSTS).zip(&attachments) {
        apply(&mut placement, host_event(host, HostStatus::Up, networks));
    }
    for network in 1..=NETWORKS {
        let network_id = NetworkId::from_u128(u128::from(network));
        let upserted =
            NetworkUpserted { network_id, name: format!("net-{network}"), ipam_enabled: true, servers_count: Some(2) };
        apply(&mut placement, Event::NetworkUpserted(upserted));
        let activated = SubnetActivated {
            network_id,
            subnet_id: SubnetId::from_u128(u128::from(network)),
            cidr: "10.0.0.0/24".parse().expect("a valid CIDR"),
            gateway: "10.0.0.1".parse().expect("a valid IP"),
            dns_servers: Vec::new(),
            ntp_servers: Vec::new(),
            allocation_pools: Vec::new(),
            cause: EventId::from_u128(0),
        };
        apply(&mut placement, Event::SubnetActivated(activated));
    }

    let (victim, served) = (1..=HOSTS)
        .map(|host| (host, placement.load(HostId::from_u128(u128::from(host)))))
        .max_by_key(|&(host, load)| (load, std::cmp::Reverse(host)))
        .expect("the fleet has hosts");
    let victim_networks = &attachments[usize::try_from(victim - 1).expect("a small index")];
    let down = envelope(u64::MAX, host_event(victim, HostStatus::Down, victim_networks));
    (placement, down, served)
}

fn host_loss(c: &mut Criterion) {
    let (placement, down, served) = fleet();
    let attached = match &down.event {
        Event::HostUpserted(e) => e.networks.len(),
        _ => 0,
    };
    let outputs = placement.clone().apply(&down).len();
    eprintln!(
        "host loss: the lost host served {served} networks and was attached to {attached}; one loss emits {outputs} events"
    );

    let mut group = c.benchmark_group("placement");
    // Every iteration clones the whole fleet in setup (tens of milliseconds, which criterion counts
    // when it plans the run), so criterion ends up timing one host loss per sample: ask for enough
    // samples to make that a fair estimate.
    group.sample_size(50).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    group.bench_function("host_down_1000_hosts_5000_networks", |b| {
        b.iter_batched(
            || placement.clone(),
            |mut placement| {
                let outputs = placement.apply(black_box(&down));
                (placement, outputs)
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, host_loss);
criterion_main!(benches);
