//! What one VM start and stop costs a host agent's view on a served network of 1,000 and 65,000
//! hosts, the two ways a shell can follow the plan, side by side in one run:
//! - by plan changes (what the agent does): the view's `apply` answers the host that came or went,
//!   and `NetworkDhcpConfig::apply_hosts` folds it into the configuration held;
//! - by whole plans (what it did before): `plan_network` plans the network again after each input,
//!   and the result is compared with the configuration held and cloned into it, as the agent's
//!   follower did. Its provisioner and dnsmasq backend then made further passes over every host
//!   (the probe gate's set of hosts, another comparison, a merge of the old and new plans, two more
//!   clones), which are not counted here.

// A benchmark fixture that fails to build is a broken benchmark, not bad input.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ipam_core::StateMachine;
use ipam_core::dhcp_plan::{HostDhcpView, NetworkDhcpConfig, PlanChange, PlanOptions, plan_network};
use ipam_core::event::{
    AssignReason, DhcpServerAssigned, Envelope, Event, Owner, ReleaseReason, ReservationAdded, ReservationRemoved,
    SubnetActivated,
};
use ipam_core::ids::{EventId, HostId, NetworkId, SubnetId, VmId, VnicId};
use ipam_core::mac::Mac;
use ipam_core::time::Timestamp;

const HOST: HostId = HostId::from_u128(1);
const NETWORK: NetworkId = NetworkId::from_u128(2);
const SUBNET: SubnetId = SubnetId::from_u128(3);

fn envelope(event: Event) -> Envelope {
    Envelope {
        id: EventId::from_u128(9),
        source: "bench".to_owned(),
        time: Timestamp::from_unix_ms(0),
        subject: None,
        event,
    }
}

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 10)) + n))
}

fn mac(n: u32) -> Mac {
    let b = n.to_be_bytes();
    Mac::from_octets([0x52, 0x54, b[0], b[1], b[2], b[3]]).unwrap()
}

fn owner(n: u32) -> Owner {
    Owner::Vnic { vnic_id: VnicId::from_u128(u128::from(n)), vm_id: VmId::from_u128(u128::from(n)) }
}

/// The reservation of vNIC `n` added, or removed.
fn reservation(n: u32, added: bool) -> Envelope {
    let (network_id, subnet_id, owner, mac, ip, cause) =
        (NETWORK, SUBNET, owner(n), mac(n), ip(n), EventId::from_u128(1));
    envelope(if added {
        Event::ReservationAdded(ReservationAdded { network_id, subnet_id, owner, mac, ip, cause })
    } else {
        let reason = ReleaseReason::VnicDown;
        Event::ReservationRemoved(ReservationRemoved { network_id, subnet_id, owner, mac, ip, reason, cause })
    })
}

/// A view serving one /8 subnet with `hosts` reservations (vNICs 0, 2, 4, ...: every other
/// address), and its network's configuration.
fn served(hosts: u32) -> (HostDhcpView, NetworkDhcpConfig) {
    let mut view = HostDhcpView::new(HOST);
    view.apply(&envelope(Event::SubnetActivated(SubnetActivated {
        network_id: NETWORK,
        subnet_id: SUBNET,
        cidr: "10.0.0.0/8".parse().unwrap(),
        gateway: "10.0.0.1".parse().unwrap(),
        dns_servers: Vec::new(),
        ntp_servers: Vec::new(),
        allocation_pools: Vec::new(),
        cause: EventId::from_u128(1),
    })));
    view.apply(&envelope(Event::DhcpServerAssigned(DhcpServerAssigned {
        network_id: NETWORK,
        host_id: HOST,
        interface: "br0".parse().unwrap(),
        epoch: 1,
        reason: AssignReason::Placed,
        cause: EventId::from_u128(1),
    })));
    for n in 0..hosts {
        view.apply(&reservation(2 * n, true));
    }
    let config = plan_network(&view, NETWORK, &PlanOptions::default()).unwrap();
    (view, config)
}

fn bench(c: &mut Criterion) {
    let options = PlanOptions::default();
    for hosts in [1_000, 65_000] {
        // The new vNIC takes a free address in the middle of the network's (the host list's worst
        // case is the front, its best the end).
        let (start, stop) = (reservation(hosts + 1, true), reservation(hosts + 1, false));
        let (mut view, mut held) = served(hosts);
        c.bench_function(&format!("dhcp_plan/{hosts} hosts: a VM start and stop, by plan changes"), |b| {
            b.iter(|| {
                for input in [&start, &stop] {
                    match view.apply(input) {
                        Some(PlanChange::Host(change)) => held.apply_hosts(&[change]),
                        other => panic!("a vNIC's reservation is a host change, not {other:?}"),
                    }
                }
                black_box(&held);
            });
        });
        let (mut view, mut held) = served(hosts);
        c.bench_function(&format!("dhcp_plan/{hosts} hosts: a VM start and stop, by whole plans"), |b| {
            b.iter(|| {
                for input in [&start, &stop] {
                    view.apply(input);
                    let config = plan_network(&view, NETWORK, &options).unwrap();
                    if config != held {
                        held = config.clone();
                    }
                    black_box(config);
                }
                black_box(&held);
            });
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
