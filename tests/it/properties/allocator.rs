//! The allocator under random sequences of engine and host-agent requests, raw bytes included.
//!
//! Checked after every step: invariant 1 (no IP reserved twice in a subnet, both in the state and
//! along the output stream), invariant 2 (every vNIC whose up was accepted holds exactly one
//! reservation in each subnet it named, at most one per family, every other none), invariant 7 (a rejected or undecodable input leaves the state
//! byte-for-byte as it was, and every refusal is justified by the state), and invariant 6 for the
//! data side (the DHCP plan of a server of every network lists exactly its vNIC reservations).
//! At the end: replaying the input log from zero, and from a snapshot plus the tail, gives the same
//! state and the same output stream. A second test sends duplicates of earlier records among the
//! others: each has no output and no effect, and the run ends as the one without them.
//!
//! A vNIC up names one subnet or two (dual-stack: an IPv4 and the IPv6 subnet of the catalog, or
//! sometimes two of one family, refused), through `subnet_id`, `subnet_ids` or both.
//!
//! The inputs of issue 14 are among them: network policies (quarantines of 0 to 60 s, thresholds,
//! some refused), partition ticks two seconds apart, conflicts found and cleared.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use ipam_core::StateMachine;
use ipam_core::allocator::Allocator;
use ipam_core::dhcp_plan::{HostDhcpView, PlanOptions, plan};
use ipam_core::event::*;
use ipam_core::{
    Envelope, EventId, HostId, InterfaceName, IpRange, Mac, NetworkId, RejectionCode, SubnetId, Timestamp, VmId, VnicId,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

pub(crate) const NETWORKS: u8 = 3;
pub(crate) const VNICS: u8 = 40;
const MACS: u8 = 48;
const HOSTS: u8 = 3;
const SERVER: HostId = HostId::from_u128(0xdddd);

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Network {
        net: u8,
        enabled: bool,
    },
    RemoveNetwork {
        net: u8,
    },
    AddSubnet {
        net: u8,
        which: u8,
        dns: u8,
    },
    RemoveSubnet {
        net: u8,
        which: u8,
    },
    /// `also`: a second subnet (dual-stack when of the other family); `form` says whether the
    /// first goes in `subnet_id` (0), `subnet_ids` (1) or both (2).
    Up {
        kind: u8,
        net: u8,
        vnic: u8,
        subnet: Option<u8>,
        also: Option<u8>,
        form: u8,
        mac: u8,
        requested: Option<u8>,
    },
    Down {
        kind: u8,
        net: u8,
        vnic: u8,
    },
    PortRequested {
        net: u8,
        which: u8,
        host: u8,
    },
    PortReleased {
        net: u8,
        which: u8,
        host: u8,
    },
    Garbage {
        net: u8,
        which: u8,
    },
    Policy {
        net: u8,
        quarantine: u8,
        thresholds: u8,
    },
    Tick,
    Conflict {
        net: u8,
        which: u8,
        offset: u8,
    },
    Cleared {
        net: u8,
        which: u8,
        offset: u8,
    },
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    let net = 1..=NETWORKS;
    prop_oneof![
        3 => (net.clone(), prop::bool::weighted(0.85)).prop_map(|(net, enabled)| Op::Network { net, enabled }),
        1 => net.clone().prop_map(|net| Op::RemoveNetwork { net }),
        4 => (net.clone(), 0..4u8, 0..2u8).prop_map(|(net, which, dns)| Op::AddSubnet { net, which, dns }),
        2 => (net.clone(), 0..4u8).prop_map(|(net, which)| Op::RemoveSubnet { net, which }),
        40 => (
            (0..3u8, net.clone(), 0..VNICS, prop::option::weighted(0.95, 0..4u8)),
            (prop::option::weighted(0.3, prop_oneof![4 => Just(2u8), 1 => 0..4u8]), 0..3u8),
            (0..MACS, prop::option::weighted(0.15, 0..20u8)),
        )
            .prop_map(|((kind, net, vnic, subnet), (also, form), (mac, requested))| Op::Up {
                kind,
                net,
                vnic,
                subnet,
                also,
                form,
                mac,
                requested
            }),
        30 => (0..3u8, net.clone(), 0..VNICS).prop_map(|(kind, net, vnic)| Op::Down { kind, net, vnic }),
        3 => (net.clone(), 0..4u8, 0..HOSTS).prop_map(|(net, which, host)| Op::PortRequested { net, which, host }),
        2 => (net.clone(), 0..4u8, 0..HOSTS).prop_map(|(net, which, host)| Op::PortReleased { net, which, host }),
        3 => (net.clone(), 0..6u8).prop_map(|(net, which)| Op::Garbage { net, which }),
        2 => (net.clone(), 0..3u8, 0..4u8).prop_map(|(net, quarantine, thresholds)| Op::Policy { net, quarantine, thresholds }),
        6 => Just(Op::Tick),
        2 => (net.clone(), 0..4u8, 0..20u8).prop_map(|(net, which, offset)| Op::Conflict { net, which, offset }),
        1 => (net, 0..4u8, 0..20u8).prop_map(|(net, which, offset)| Op::Cleared { net, which, offset }),
    ]
}

pub(crate) fn network_id(net: u8) -> NetworkId {
    NetworkId::from_u128(u128::from(net))
}

pub(crate) fn subnet_id(net: u8, which: u8) -> SubnetId {
    SubnetId::from_u128(u128::from(net) * 10 + u128::from(which))
}

/// The DNS server of a subnet of the catalog: of the subnet's family, as the allocator requires.
fn dns_server(net: u8, which: u8, dns: u8) -> IpAddr {
    let (cidr, _, _) = subnet_catalog(net, which);
    let text = if cidr.contains(':') { format!("2001:db8:53::{dns}") } else { format!("192.0.2.{dns}") };
    text.parse().unwrap()
}

/// Small subnets, so that exhaustion, overlap and fixed-IP collisions happen often.
fn subnet_catalog(net: u8, which: u8) -> (String, String, Option<Vec<IpRange>>) {
    let range = |a: String, b: String| Some(vec![IpRange { start: a.parse().unwrap(), end: b.parse().unwrap() }]);
    match which {
        0 => (format!("10.{net}.0.0/28"), format!("10.{net}.0.1"), None),
        1 => (
            format!("10.{net}.1.0/29"),
            format!("10.{net}.1.1"),
            range(format!("10.{net}.1.2"), format!("10.{net}.1.4")),
        ),
        2 => (format!("2001:db8:{net}::/125"), format!("2001:db8:{net}::1"), None),
        _ => (format!("10.{net}.0.0/24"), format!("10.{net}.0.1"), None),
    }
}

fn mac(n: u8) -> Mac {
    Mac::from_octets([0x52, 0x54, 0, 0, 0x10, n]).unwrap()
}

fn nth_address(net: u8, which: u8, offset: u8) -> IpAddr {
    let (cidr, _, _) = subnet_catalog(net, which);
    match cidr.parse::<ipam_core::Cidr>().unwrap().network() {
        IpAddr::V4(ip) => IpAddr::V4((u32::from(ip) + u32::from(offset)).into()),
        IpAddr::V6(ip) => IpAddr::V6((u128::from(ip) + u128::from(offset)).into()),
    }
}

/// The raw record an operation puts on `ipam.networks`. A policy has a quarantine of 0, 5 or 60 s
/// and thresholds (some refused); a tick is the partition's clock, two seconds per step.
pub(crate) fn record(step: usize, op: &Op) -> Vec<u8> {
    let event = match *op {
        Op::Network { net, enabled } => Event::NetworkUpserted(NetworkUpserted {
            network_id: network_id(net),
            name: format!("net-{net}"),
            ipam_enabled: enabled,
            servers_count: None,
        }),
        Op::RemoveNetwork { net } => Event::NetworkRemoved(NetworkRemoved { network_id: network_id(net) }),
        Op::AddSubnet { net, which, dns } => {
            let (cidr, gateway, allocation_pools) = subnet_catalog(net, which);
            Event::SubnetAdded(SubnetAdded {
                network_id: network_id(net),
                subnet_id: subnet_id(net, which),
                cidr: cidr.parse().unwrap(),
                gateway: gateway.parse().unwrap(),
                dns_servers: vec![dns_server(net, which, dns)],
                ntp_servers: vec![],
                allocation_pools,
            })
        }
        Op::RemoveSubnet { net, which } => {
            Event::SubnetRemoved(SubnetRemoved { network_id: network_id(net), subnet_id: subnet_id(net, which) })
        }
        Op::Up { kind, net, vnic, subnet, also, form, mac: m, requested } => {
            let first = subnet.map(|which| subnet_id(net, which));
            let second = also.map(|which| subnet_id(net, which));
            let (subnet_id, subnet_ids) = match form {
                0 => (first, second.into_iter().collect()),
                1 => (None, first.into_iter().chain(second).collect()),
                _ => (first.or(second), first.into_iter().chain(second).collect()),
            };
            let up = VnicUp {
                vnic_id: VnicId::from_u128(u128::from(vnic)),
                vm_id: VmId::from_u128(1000 + u128::from(vnic)),
                network_id: network_id(net),
                subnet_id,
                subnet_ids,
                mac: mac(m),
                requested_ip: requested.map(|offset| nth_address(net, subnet.unwrap_or(0), offset)),
            };
            [Event::VnicStarted, Event::VnicPlugged, Event::VnicLinked][usize::from(kind)](up)
        }
        Op::Down { kind, net, vnic } => {
            let down = VnicDown { vnic_id: VnicId::from_u128(u128::from(vnic)), network_id: network_id(net) };
            [Event::VnicStopped, Event::VnicUnplugged, Event::VnicUnlinked][usize::from(kind)](down)
        }
        Op::PortRequested { net, which, host } => Event::DhcpPortRequested(DhcpPortRequested {
            network_id: network_id(net),
            subnet_id: subnet_id(net, which),
            host_id: HostId::from_u128(500 + u128::from(host)),
            mac: Mac::from_octets([0x02, 0, 0, 0, net, host]).unwrap(),
        }),
        Op::PortReleased { net, which, host } => Event::DhcpPortReleased(DhcpPortReleased {
            network_id: network_id(net),
            subnet_id: subnet_id(net, which),
            host_id: HostId::from_u128(500 + u128::from(host)),
            mac: Mac::from_octets([0x02, 0, 0, 0, net, host]).unwrap(),
        }),
        Op::Garbage { net, which } => return garbage(step, net, which),
        Op::Policy { net, quarantine, thresholds } => Event::NetworkPolicySet(NetworkPolicySet {
            network_id: network_id(net),
            policy: NetworkPolicy {
                release_quarantine_s: Some([0, 5, 60][usize::from(quarantine)]),
                utilization_thresholds: [None, Some(vec![50, 75]), Some(vec![0]), Some(vec![90, 90])]
                    [usize::from(thresholds)]
                .clone(),
                ..NetworkPolicy::default()
            },
        }),
        Op::Tick => Event::PartitionClockTicked(PartitionClockTicked {
            now: Timestamp::from_unix_ms(1_700_000_000_000 + 2000 * step as i64),
            partition: 0,
        }),
        Op::Conflict { net, which, offset } => Event::IpConflictDetected(IpConflictDetected {
            network_id: network_id(net),
            subnet_id: subnet_id(net, which),
            ip: nth_address(net, which, offset),
            host_id: HostId::from_u128(500),
            answered_by: mac(MACS + 1),
            reserved_for: None,
            probe: ConflictProbe::Arp,
        }),
        Op::Cleared { net, which, offset } => Event::IpConflictCleared(IpConflictCleared {
            network_id: network_id(net),
            ip: nth_address(net, which, offset),
        }),
    };
    Envelope {
        id: EventId::from_u128(step as u128 + 1),
        source: "proptest".to_owned(),
        time: Timestamp::from_unix_ms(1_700_000_000_000 + step as i64),
        subject: None,
        event,
    }
    .to_bytes()
}

/// Records a buggy or hostile producer might send.
fn garbage(step: usize, net: u8, which: u8) -> Vec<u8> {
    let id = format!("{}", uuid::Uuid::from_u128(step as u128 + 1));
    let network = network_id(net).to_string();
    let envelope = |type_name: &str, data: serde_json::Value| {
        serde_json::json!({"specversion": "1.0", "id": id, "source": "fuzz", "type": type_name,
                           "time": "2026-11-30T00:00:00Z", "data": data})
        .to_string()
        .into_bytes()
    };
    match which {
        0 => envelope(
            "ipam.vnic.started.v1",
            serde_json::json!({"vnic_id": id, "vm_id": id, "network_id": network, "mac": "ff:ff:ff:ff:ff:ff"}),
        ),
        1 => envelope(
            "ipam.subnet.added.v1",
            serde_json::json!({"network_id": network, "subnet_id": id, "cidr": "10.9.0.1/24", "gateway": "10.9.0.1"}),
        ),
        2 => envelope("ipam.vnic.started.v1", serde_json::json!({"network_id": network, "vnic_id": 7})),
        3 => envelope("ipam.nonsense.v1", serde_json::json!({"network_id": network})),
        4 => b"{\"specversion\": \"1.0\", \"id\": ".to_vec(),
        _ => vec![0xff, 0xfe, 0x00],
    }
}

/// What the pipeline does with one raw record: decode, then apply or refuse.
fn step(allocator: &mut Allocator, raw: &[u8]) -> (Vec<Event>, Option<Envelope>) {
    match Envelope::decode(raw) {
        Ok(input) => (allocator.apply(&input), Some(input)),
        Err(error) => (error.rejection().into_iter().collect(), None),
    }
}

/// The test's own record of which vNICs are up with service, built from the outputs.
#[derive(Default)]
pub(crate) struct Model {
    /// (network, vnic) → the subnets it named, for vNICs whose up was accepted.
    pub(crate) up: BTreeMap<(NetworkId, VnicId), BTreeSet<SubnetId>>,
    /// (network, subnet, ip) → owner, along the output stream.
    pub(crate) held: BTreeMap<(NetworkId, SubnetId, IpAddr), Owner>,
}

fn check_sequence(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut allocator = Allocator::new();
    let mut model = Model::default();
    let mut log: Vec<Vec<u8>> = Vec::new();
    let mut output_stream: Vec<Event> = Vec::new();
    let mut snapshot_midway = None;
    let mut view = HostDhcpView::new(SERVER);
    for net in 1..=NETWORKS {
        // The view of a host that serves every network, to check the DHCP plan against the state.
        view.apply(&Envelope {
            id: EventId::from_u128(0xa000 + u128::from(net)),
            source: "proptest".to_owned(),
            time: Timestamp::from_unix_ms(0),
            subject: None,
            event: Event::DhcpServerAssigned(DhcpServerAssigned {
                network_id: network_id(net),
                host_id: SERVER,
                interface: InterfaceName::try_from(format!("br{net}")).unwrap(),
                epoch: 1,
                reason: AssignReason::Placed,
                cause: EventId::from_u128(0),
            }),
        });
    }

    for (n, op) in ops.iter().enumerate() {
        let raw = record(n, op);
        let before = allocator.clone();
        let (outputs, input) = step(&mut allocator, &raw);
        log.push(raw);

        let refused = input.is_none() || outputs.iter().any(|o| matches!(o, Event::RequestRejected(_)));
        if refused {
            prop_assert!(outputs.len() <= 1, "a refusal yields one rejection at most: {outputs:?}");
            // A refused input changes nothing but its network's window of input ids, which must
            // hold it, so that a retry is not answered a second time.
            prop_assert!(
                allocator.same_state_but_inputs(&before),
                "step {n} ({op:?}) was refused but changed the state"
            );
            if let Some(input) = &input {
                let network = allocator.network(input.event.network_id().unwrap());
                prop_assert!(network.is_some_and(|network| network.recent_inputs().contains(input.id)));
            } else {
                prop_assert!(before == allocator, "step {n} ({op:?}) did not decode but changed the state");
            }
        }
        if let (Some(input), [Event::RequestRejected(rejected)]) = (&input, outputs.as_slice()) {
            justify(&allocator, input, rejected)?;
        }
        let cause = input.clone().unwrap_or_else(dummy);
        for (index, output) in outputs.iter().enumerate() {
            follow(&mut model, output)?;
            view.apply(&Envelope::output(&cause, index as u32, "allocator", output.clone()));
        }
        if let Some(input) = &input {
            track_up(&mut model, input, &outputs, &allocator);
            let is_up = matches!(input.event, Event::VnicStarted(_) | Event::VnicPlugged(_) | Event::VnicLinked(_));
            if is_up && outputs.iter().filter(|o| matches!(o, Event::ReservationAdded(_))).count() == 2 {
                DUAL_STACK_UPS.fetch_add(1, Ordering::Relaxed);
            }
        }
        check_state(&allocator, &model, &view)?;
        allocator.check().map_err(|violation| TestCaseError::fail(format!("step {n} ({op:?}): {violation}")))?;
        output_stream.extend(outputs);
        if n == ops.len() / 2 {
            snapshot_midway = Some((n + 1, allocator.snapshot()));
        }
    }

    // Invariant 3: replay from zero, and from the midway snapshot plus the tail.
    let mut replayed = Allocator::new();
    let replayed_stream: Vec<Event> = log.iter().flat_map(|raw| step(&mut replayed, raw).0).collect();
    prop_assert!(replayed == allocator, "replay from zero rebuilt another state");
    prop_assert!(replayed.snapshot() == allocator.snapshot());
    prop_assert!(replayed_stream == output_stream, "replay from zero produced other outputs");
    if let Some((offset, snapshot)) = snapshot_midway {
        let mut restored =
            Allocator::restore(&(), &snapshot).map_err(|e| TestCaseError::fail(format!("restore: {e}")))?;
        for raw in &log[offset..] {
            step(&mut restored, raw);
        }
        prop_assert!(restored.snapshot() == allocator.snapshot(), "snapshot + tail rebuilt another state");
        prop_assert!(restored == allocator, "snapshot + tail rebuilt another state (pools or cursors)");
    }
    Ok(())
}

/// The run of `ops`, with after each record at `after` a duplicate of the record at `of` (an
/// earlier or the same one) sent again: each duplicate that decodes must have no output and leave
/// the state, windows included, exactly as it was, and the run must end with the state and
/// output stream of the run without duplicates. (A record that does not decode never reaches a
/// machine; the runtime answers it, not the allocator.)
fn check_duplicates(
    (ops, duplicates): (Vec<Op>, Vec<(prop::sample::Index, prop::sample::Index)>),
) -> Result<(), TestCaseError> {
    let log: Vec<Vec<u8>> = ops.iter().enumerate().map(|(n, op)| record(n, op)).collect();
    let mut plain = Allocator::new();
    let plain_stream: Vec<Event> = log.iter().flat_map(|raw| step(&mut plain, raw).0).collect();

    let mut resent: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (after, of) in duplicates {
        let after = after.index(log.len());
        resent.entry(after).or_default().push(of.index(after + 1));
    }
    let mut allocator = Allocator::new();
    let mut stream = Vec::new();
    let (mut checked, mut ticks) = (0, 0);
    for (n, raw) in log.iter().enumerate() {
        stream.extend(step(&mut allocator, raw).0);
        for &earlier in resent.get(&n).into_iter().flatten() {
            let Ok(input) = Envelope::decode(&log[earlier]) else { continue };
            // A partition tick enters no window (it is no request, and the clock appends each
            // once): sent again, it still reaches the networks made since, which never saw it.
            // A known limit (see the allocator's documentation), left out here.
            if matches!(input.event, Event::PartitionClockTicked(_)) {
                ticks += 1;
                continue;
            }
            let before = allocator.clone();
            let outputs = allocator.apply(&input);
            prop_assert!(outputs.is_empty(), "record {earlier} sent again after {n} yielded {outputs:?}");
            prop_assert!(before == allocator, "record {earlier} sent again after {n} changed the state");
            checked += 1;
        }
    }
    prop_assert!(stream == plain_stream, "duplicates changed the output stream");
    prop_assert!(allocator == plain, "duplicates changed the final state");
    // Duplicates that all happen to be ticks (left out above) say nothing of the generator.
    prop_assert!(
        resent.is_empty() || checked + ticks > 0 || log.len() < 100,
        "no duplicate decoded: the generator is broken"
    );
    Ok(())
}

fn dummy() -> Envelope {
    Envelope {
        id: EventId::from_u128(0),
        source: "t".to_owned(),
        time: Timestamp::from_unix_ms(0),
        subject: None,
        event: Event::NetworkRemoved(NetworkRemoved { network_id: network_id(0) }),
    }
}

/// Invariant 1 along the output stream: an address is added only when free, removed only by its holder.
pub(crate) fn follow(model: &mut Model, output: &Event) -> Result<(), TestCaseError> {
    match output {
        Event::ReservationAdded(added) => {
            let previous = model.held.insert((added.network_id, added.subnet_id, added.ip), added.owner);
            prop_assert!(previous.is_none(), "{} reserved twice: {previous:?} then {:?}", added.ip, added.owner);
        }
        Event::ReservationRemoved(removed) => {
            let previous = model.held.remove(&(removed.network_id, removed.subnet_id, removed.ip));
            prop_assert!(
                previous == Some(removed.owner),
                "{} released by {:?}, held by {previous:?}",
                removed.ip,
                removed.owner
            );
        }
        _ => {}
    }
    Ok(())
}

pub(crate) fn track_up(model: &mut Model, input: &Envelope, outputs: &[Event], allocator: &Allocator) {
    match &input.event {
        Event::VnicStarted(up) | Event::VnicPlugged(up) | Event::VnicLinked(up) => {
            let key = (up.network_id, up.vnic_id);
            let subnets = up.subnets();
            let added = outputs.iter().any(|o| matches!(o, Event::ReservationAdded(_)));
            let repeat = outputs.is_empty() && !subnets.is_empty() && model.up.get(&key) == Some(&subnets);
            if added || repeat {
                model.up.insert(key, subnets);
            }
            // Idempotence: a vNIC coming up again while up holds the same reservations.
            debug_assert!(!repeat || allocator.network(up.network_id).is_some());
        }
        Event::VnicStopped(down) | Event::VnicUnplugged(down) | Event::VnicUnlinked(down) => {
            model.up.remove(&(down.network_id, down.vnic_id));
        }
        Event::NetworkRemoved(removed) => model.up.retain(|(network, _), _| *network != removed.network_id),
        _ => {}
    }
}

/// Invariants 1, 2 and 6 on the state after a step.
fn check_state(allocator: &Allocator, model: &Model, view: &HostDhcpView) -> Result<(), TestCaseError> {
    let mut held_now = BTreeMap::new();
    let mut vnics_holding: BTreeMap<(NetworkId, VnicId), BTreeSet<SubnetId>> = BTreeMap::new();
    let mut families_held = BTreeSet::new();
    for network in allocator.networks() {
        let specs: BTreeMap<SubnetId, &ipam_core::SubnetSpec> =
            network.subnets().map(|(id, spec, _, _)| (id, spec)).collect();
        for (subnet_id, owner, _, ip) in network.reservations() {
            let spec = specs.get(&subnet_id).ok_or_else(|| TestCaseError::fail("reservation in unknown subnet"))?;
            prop_assert!(spec.is_assignable(ip), "{ip} is not assignable in {}", spec.cidr);
            let previous = held_now.insert((network.network_id(), subnet_id, ip), owner);
            prop_assert!(previous.is_none(), "invariant 1: {ip} held twice in the state");
            if let Owner::Vnic { vnic_id, .. } = owner {
                let family = (network.network_id(), vnic_id, ip.is_ipv4());
                prop_assert!(families_held.insert(family), "invariant 2: {vnic_id} holds two of a family");
                vnics_holding.entry((network.network_id(), vnic_id)).or_default().insert(subnet_id);
            }
        }
    }
    prop_assert!(held_now == model.held, "the state's reservations differ from the output stream's");
    prop_assert!(
        vnics_holding == model.up,
        "invariant 2: the vNICs hold {vnics_holding:?}, but the accepted ups name {:?}",
        model.up
    );
    // Invariant 6 (data side): a server of the network plans exactly the vNIC reservations.
    let planned: BTreeSet<(NetworkId, SubnetId, Mac, IpAddr)> = plan(view, &PlanOptions::default())
        .networks
        .iter()
        .flat_map(|n| {
            n.subnets.iter().flat_map(move |s| s.hosts.iter().map(move |h| (n.network_id, s.subnet_id, h.mac, h.ip)))
        })
        .collect();
    let reserved: BTreeSet<(NetworkId, SubnetId, Mac, IpAddr)> = allocator
        .networks()
        .flat_map(|n| {
            n.reservations()
                .filter(|(_, owner, _, _)| matches!(owner, Owner::Vnic { .. }))
                .map(move |(subnet_id, _, mac, ip)| (n.network_id(), subnet_id, mac, ip))
        })
        .collect();
    prop_assert!(planned == reserved, "invariant 6: the DHCP plan differs from the reservations");
    Ok(())
}

/// Every refusal must be true of the state it was made in (which the refusal left unchanged).
fn justify(allocator: &Allocator, input: &Envelope, rejected: &RequestRejected) -> Result<(), TestCaseError> {
    let network = allocator.network(rejected.network_id);
    let settings = network.and_then(|n| n.settings());
    match rejected.code {
        RejectionCode::UnknownNetwork => prop_assert!(settings.is_none()),
        RejectionCode::IpamDisabled => prop_assert!(settings.is_some_and(|s| !s.ipam_enabled)),
        RejectionCode::SubnetExhausted => {
            let subnet_id = match &input.event {
                Event::VnicStarted(_) | Event::VnicPlugged(_) | Event::VnicLinked(_) => rejected.subnet_id,
                Event::DhcpPortRequested(port) => Some(port.subnet_id),
                other => return Err(TestCaseError::fail(format!("subnet_exhausted for {other:?}"))),
            };
            let free = network.unwrap().subnets().find(|(id, ..)| Some(*id) == subnet_id).map(|(.., free)| free);
            prop_assert!(free == Some(0), "subnet_exhausted with {free:?} free");
        }
        RejectionCode::IpInUse => {
            let (Event::VnicStarted(up) | Event::VnicPlugged(up) | Event::VnicLinked(up)) = &input.event else {
                return Err(TestCaseError::fail("only a fixed-IP request can collide"));
            };
            let ip = up.requested_ip.unwrap();
            prop_assert!(
                network.unwrap().reservations().any(|(s, _, _, held)| up.subnets().contains(&s) && held == ip)
            );
        }
        RejectionCode::DuplicateFamily => {
            let (Event::VnicStarted(up) | Event::VnicPlugged(up) | Event::VnicLinked(up)) = &input.event else {
                return Err(TestCaseError::fail("only a vNIC names several subnets"));
            };
            let families: Vec<bool> = network
                .unwrap()
                .subnets()
                .filter(|(id, ..)| up.subnets().contains(id))
                .map(|(_, spec, ..)| spec.cidr.is_ipv4())
                .collect();
            let distinct: BTreeSet<bool> = families.iter().copied().collect();
            prop_assert!(distinct.len() < families.len(), "duplicate_family for subnets of distinct families");
        }
        RejectionCode::DuplicateMac => {
            let mac = match &input.event {
                Event::VnicStarted(up) | Event::VnicPlugged(up) | Event::VnicLinked(up) => up.mac,
                Event::DhcpPortRequested(port) => port.mac,
                other => return Err(TestCaseError::fail(format!("duplicate_mac for {other:?}"))),
            };
            prop_assert!(network.unwrap().reservations().any(|(_, _, held, _)| held == mac));
        }
        RejectionCode::UnknownSubnet | RejectionCode::SubnetInUse | RejectionCode::OverlappingSubnet => {
            prop_assert!(settings.is_some());
        }
        _ => {}
    }
    Ok(())
}

/// Dual-stack ups accepted over every sequence tried: the generator must make some.
static DUAL_STACK_UPS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn allocator_keeps_invariants_1_2_6_7_over_random_sequences_and_replays_exactly() {
    super::run("allocator", prop::collection::vec(op(), 1000..1400), check_sequence);
    let dual_stack_ups = DUAL_STACK_UPS.load(Ordering::Relaxed);
    println!("allocator: {dual_stack_ups} dual-stack vNIC ups accepted");
    assert!(dual_stack_ups > 0, "the generator made no dual-stack vNIC that the allocator accepted");
}

#[test]
fn allocator_ignores_duplicates_of_earlier_inputs() {
    let duplicates = prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..60);
    super::run("allocator duplicates", (prop::collection::vec(op(), 200..600), duplicates), check_duplicates);
}
