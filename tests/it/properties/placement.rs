//! Placement under random sequences of host, network, subnet, heartbeat and clock events.
//!
//! The test keeps its own model of the fleet (host status, attachments, liveness by the heartbeat
//! rule, network settings, active subnets) and checks after every step: invariant 5 (every
//! IPAM-enabled network with a subnet is served by min(servers_count, eligible hosts) hosts, all up,
//! alive and attached), that liveness agrees with the model, that epochs only grow and every
//! unassignment ends a live assignment, and invariant 7 (undecodable records change nothing). At
//! the end, replaying the input log from zero and from a snapshot plus the tail gives the same
//! state and the same outputs.

use std::collections::{BTreeMap, BTreeSet};

use ipam_core::StateMachine;
use ipam_core::event::*;
use ipam_core::placement::{Placement, PlacementConfig};
use ipam_core::{Envelope, EventId, HostId, NetworkId, SubnetId, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

pub(crate) const HOSTS: u8 = 8;
pub(crate) const NETWORKS: u8 = 5;
pub(crate) const CONFIG: PlacementConfig = PlacementConfig { heartbeat_timeout_ms: 10_000, default_servers_count: 2 };

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Host { host: u8, status: u8, attached: u8, interface: u8 },
    RemoveHost { host: u8 },
    Heartbeat { host: u8 },
    Tick { advance_ms: u16 },
    Network { net: u8, enabled: bool, count: Option<u8> },
    RemoveNetwork { net: u8 },
    Activate { net: u8, subnet: u8 },
    Deactivate { net: u8, subnet: u8 },
    Garbage,
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..HOSTS, 0..6u8, any::<u8>(), 0..2u8)
            .prop_map(|(host, status, attached, interface)| Op::Host { host, status, attached, interface }),
        1 => (0..HOSTS).prop_map(|host| Op::RemoveHost { host }),
        25 => (0..HOSTS).prop_map(|host| Op::Heartbeat { host }),
        20 => (0..4000u16).prop_map(|advance_ms| Op::Tick { advance_ms }),
        6 => (0..NETWORKS, prop::bool::weighted(0.8), prop::option::of(0..4u8))
            .prop_map(|(net, enabled, count)| Op::Network { net, enabled, count }),
        1 => (0..NETWORKS).prop_map(|net| Op::RemoveNetwork { net }),
        5 => (0..NETWORKS, 0..2u8).prop_map(|(net, subnet)| Op::Activate { net, subnet }),
        2 => (0..NETWORKS, 0..2u8).prop_map(|(net, subnet)| Op::Deactivate { net, subnet }),
        1 => Just(Op::Garbage),
    ]
}

fn host_id(host: u8) -> HostId {
    HostId::from_u128(100 + u128::from(host))
}

pub(crate) fn network_id(net: u8) -> NetworkId {
    NetworkId::from_u128(1 + u128::from(net))
}

fn subnet_id(net: u8, subnet: u8) -> SubnetId {
    SubnetId::from_u128(1000 + u128::from(net) * 10 + u128::from(subnet))
}

fn status(code: u8) -> HostStatus {
    match code {
        0..=3 => HostStatus::Up,
        4 => HostStatus::Down,
        _ => HostStatus::Maintenance,
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct ModelHost {
    status: Option<HostStatus>,
    attached: BTreeSet<NetworkId>,
    last_refresh_ms: Option<i64>,
    lost: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Model {
    now_ms: Option<i64>,
    pub(crate) hosts: BTreeMap<HostId, ModelHost>,
    networks: BTreeMap<NetworkId, (bool, Option<u8>)>,
    subnets: BTreeMap<NetworkId, BTreeSet<SubnetId>>,
    /// Live assignments along the output stream, and the highest epoch seen per network.
    pub(crate) assigned: BTreeMap<(NetworkId, HostId), u64>,
    epochs: BTreeMap<NetworkId, u64>,
}

impl Model {
    pub(crate) fn eligible(&self, host: &ModelHost, network: NetworkId) -> bool {
        host.status == Some(HostStatus::Up) && !host.lost && host.attached.contains(&network)
    }

    pub(crate) fn wanted(&self, network: NetworkId) -> usize {
        match self.networks.get(&network) {
            Some((true, count)) if self.subnets.get(&network).is_some_and(|s| !s.is_empty()) => {
                usize::from(count.unwrap_or(CONFIG.default_servers_count))
            }
            _ => 0,
        }
    }

    pub(crate) fn learn(&mut self, event: &Event) {
        match event {
            Event::ClockTicked(tick) => {
                let now = self.now_ms.map_or(tick.now.unix_ms(), |now| now.max(tick.now.unix_ms()));
                self.now_ms = Some(now);
                for host in self.hosts.values_mut() {
                    let last = *host.last_refresh_ms.get_or_insert(now);
                    if now - last > CONFIG.heartbeat_timeout_ms as i64 {
                        host.lost = true;
                    }
                }
            }
            Event::HostHeartbeat(beat) => {
                if let Some(host) = self.hosts.get_mut(&beat.host_id) {
                    host.last_refresh_ms = self.now_ms;
                    host.lost = false;
                }
            }
            Event::HostUpserted(upserted) => {
                let host = self.hosts.entry(upserted.host_id).or_default();
                host.status = Some(upserted.status);
                host.attached = upserted.networks.iter().map(|n| n.network_id).collect();
                if upserted.status == HostStatus::Up && self.now_ms.is_some() {
                    host.last_refresh_ms = self.now_ms;
                }
            }
            Event::HostRemoved(removed) => {
                self.hosts.remove(&removed.host_id);
            }
            Event::NetworkUpserted(network) => {
                self.networks.insert(network.network_id, (network.ipam_enabled, network.servers_count));
            }
            Event::NetworkRemoved(removed) => {
                self.networks.remove(&removed.network_id);
                self.subnets.remove(&removed.network_id);
            }
            Event::SubnetActivated(activated) => {
                self.subnets.entry(activated.network_id).or_default().insert(activated.subnet_id);
            }
            Event::SubnetDeactivated(deactivated) => {
                if let Some(subnets) = self.subnets.get_mut(&deactivated.network_id) {
                    subnets.remove(&deactivated.subnet_id);
                }
            }
            _ => {}
        }
    }
}

pub(crate) fn record(n: usize, op: &Op, now_ms: &mut i64) -> Vec<u8> {
    let event = match *op {
        Op::Host { host, status: code, attached, interface } => Event::HostUpserted(HostUpserted {
            host_id: host_id(host),
            name: format!("host-{host}"),
            status: status(code),
            networks: (0..NETWORKS)
                .filter(|net| attached & (1 << net) != 0)
                .map(|net| HostNetwork {
                    network_id: network_id(net),
                    interface: format!("br{}", net + interface * 10).parse().unwrap(),
                })
                .collect(),
        }),
        Op::RemoveHost { host } => Event::HostRemoved(HostRemoved { host_id: host_id(host) }),
        Op::Heartbeat { host } => Event::HostHeartbeat(HostHeartbeat { host_id: host_id(host), serving: vec![] }),
        Op::Tick { advance_ms } => {
            *now_ms += i64::from(advance_ms);
            Event::ClockTicked(ClockTicked { now: Timestamp::from_unix_ms(*now_ms) })
        }
        Op::Network { net, enabled, count } => Event::NetworkUpserted(NetworkUpserted {
            network_id: network_id(net),
            name: format!("net-{net}"),
            ipam_enabled: enabled,
            servers_count: count,
        }),
        Op::RemoveNetwork { net } => Event::NetworkRemoved(NetworkRemoved { network_id: network_id(net) }),
        Op::Activate { net, subnet } => Event::SubnetActivated(SubnetActivated {
            network_id: network_id(net),
            subnet_id: subnet_id(net, subnet),
            cidr: format!("10.{net}.{subnet}.0/24").parse().unwrap(),
            gateway: format!("10.{net}.{subnet}.1").parse().unwrap(),
            dns_servers: vec![],
            ntp_servers: vec![],
            allocation_pools: vec![],
            cause: EventId::from_u128(0),
        }),
        Op::Deactivate { net, subnet } => Event::SubnetDeactivated(SubnetDeactivated {
            network_id: network_id(net),
            subnet_id: subnet_id(net, subnet),
            cause: EventId::from_u128(0),
        }),
        Op::Garbage => return br#"{"specversion":"1.0","type":"ipam.host.heartbeat.v1","data":{}}"#.to_vec(),
    };
    Envelope {
        id: EventId::from_u128(n as u128 + 1),
        source: "proptest".to_owned(),
        time: Timestamp::from_unix_ms(*now_ms),
        subject: None,
        event,
    }
    .to_bytes()
}

fn step(placement: &mut Placement, raw: &[u8]) -> (Vec<Event>, Option<Envelope>) {
    match Envelope::decode(raw) {
        Ok(input) => (placement.apply(&input), Some(input)),
        Err(_) => (Vec::new(), None),
    }
}

fn check_sequence(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut placement = Placement::new(CONFIG);
    let mut model = Model::default();
    let mut now_ms = 1_700_000_000_000;
    let mut log = Vec::new();
    let mut stream = Vec::new();
    let mut midway = None;
    for (n, op) in ops.iter().enumerate() {
        let raw = record(n, op, &mut now_ms);
        let before = placement.snapshot();
        let (outputs, input) = step(&mut placement, &raw);
        log.push(raw);
        let Some(input) = input else {
            prop_assert!(
                outputs.is_empty() && before == placement.snapshot(),
                "an undecodable record changed placement"
            );
            continue;
        };
        model.learn(&input.event);
        for output in &outputs {
            match output {
                Event::DhcpServerAssigned(a) => {
                    let last = model.epochs.insert(a.network_id, a.epoch).unwrap_or(0);
                    prop_assert!(a.epoch > last, "epoch of {} went from {last} to {}", a.network_id, a.epoch);
                    let host = model.hosts.get(&a.host_id).cloned().unwrap_or_default();
                    prop_assert!(model.eligible(&host, a.network_id), "assigned to an ineligible host: {a:?}");
                    prop_assert!(model.assigned.insert((a.network_id, a.host_id), a.epoch).is_none(), "assigned twice");
                    prop_assert!(a.cause == input.id);
                }
                Event::DhcpServerUnassigned(u) => {
                    let live = model.assigned.remove(&(u.network_id, u.host_id));
                    prop_assert!(live == Some(u.epoch), "unassigned {u:?}, live epoch {live:?}");
                    prop_assert!(u.cause == input.id);
                }
                other => return Err(TestCaseError::fail(format!("placement emitted {other:?}"))),
            }
        }
        // Liveness follows the heartbeat rule.
        for (host_id, host) in &model.hosts {
            prop_assert!(
                placement.is_lost(*host_id) == host.lost,
                "step {n}: host {host_id} lost? model says {}",
                host.lost
            );
        }
        // Invariant 5.
        for net in 0..NETWORKS {
            let network = network_id(net);
            let eligible = model.hosts.values().filter(|h| model.eligible(h, network)).count();
            let servers = placement.servers(network);
            let expected = model.wanted(network).min(eligible);
            prop_assert!(
                servers.len() == expected,
                "step {n}: {network} has {} servers, expected {expected}",
                servers.len()
            );
            for (host, epoch) in &servers {
                let state = model.hosts.get(host).cloned().unwrap_or_default();
                prop_assert!(model.eligible(&state, network), "step {n}: {host} serves {network} but is not eligible");
                prop_assert!(model.assigned.get(&(network, *host)) == Some(epoch), "the output stream disagrees");
            }
        }
        prop_assert!(
            model.assigned.len() == (0..NETWORKS).map(|n| placement.servers(network_id(n)).len()).sum::<usize>()
        );
        stream.extend(outputs);
        if n == ops.len() / 2 {
            midway = Some((n + 1, placement.snapshot()));
        }
    }
    let placed = stream.iter().filter(|e| matches!(e, Event::DhcpServerAssigned(_))).count();
    prop_assert!(ops.len() < 1000 || placed > 0, "a long sequence placed no server: the generator is broken");
    let mut replayed = Placement::new(CONFIG);
    let replayed_stream: Vec<Event> = log.iter().flat_map(|raw| step(&mut replayed, raw).0).collect();
    prop_assert!(replayed.snapshot() == placement.snapshot(), "replay from zero rebuilt another state");
    prop_assert!(replayed_stream == stream, "replay from zero produced other outputs");
    if let Some((offset, snapshot)) = midway {
        let mut restored = Placement::restore(&CONFIG, &snapshot).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let tail: Vec<Event> = log[offset..].iter().flat_map(|raw| step(&mut restored, raw).0).collect();
        prop_assert!(restored.snapshot() == placement.snapshot(), "snapshot + tail rebuilt another state");
        prop_assert!(tail.as_slice() == &stream[stream.len() - tail.len()..], "snapshot + tail produced other outputs");
    }
    Ok(())
}

#[test]
fn placement_keeps_invariant_5_over_random_sequences_and_replays_exactly() {
    super::run("placement", prop::collection::vec(op(), 1000..1400), check_sequence);
}

/// The run of `ops`, with after each record at `after` a duplicate of the record at `of` (an
/// earlier or the same one: a heartbeat or tick written twice, a fact forwarded again): each has no
/// output and leaves the snapshot bytes as they were, and the run ends as the one without them.
fn check_duplicates(
    (ops, duplicates): (Vec<Op>, Vec<(prop::sample::Index, prop::sample::Index)>),
) -> Result<(), TestCaseError> {
    let mut now_ms = 1_700_000_000_000;
    let log: Vec<Vec<u8>> = ops.iter().enumerate().map(|(n, op)| record(n, op, &mut now_ms)).collect();
    let mut plain = Placement::new(CONFIG);
    let plain_stream: Vec<Event> = log.iter().flat_map(|raw| step(&mut plain, raw).0).collect();

    let mut resent: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (after, of) in duplicates {
        let after = after.index(log.len());
        resent.entry(after).or_default().push(of.index(after + 1));
    }
    let mut placement = Placement::new(CONFIG);
    let mut stream = Vec::new();
    for (n, raw) in log.iter().enumerate() {
        stream.extend(step(&mut placement, raw).0);
        for &earlier in resent.get(&n).into_iter().flatten() {
            let before = placement.snapshot();
            let (outputs, _) = step(&mut placement, &log[earlier]);
            prop_assert!(outputs.is_empty(), "record {earlier} sent again after {n} yielded {outputs:?}");
            prop_assert!(before == placement.snapshot(), "record {earlier} sent again after {n} changed the state");
        }
    }
    prop_assert!(stream == plain_stream, "duplicates changed the output stream");
    prop_assert!(placement.snapshot() == plain.snapshot(), "duplicates changed the final state");
    Ok(())
}

#[test]
fn placement_ignores_duplicates_of_earlier_inputs() {
    let duplicates = prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..60);
    super::run("placement duplicates", (prop::collection::vec(op(), 200..600), duplicates), check_duplicates);
}
