//! The simulation's invariants, read from the committed log only (what any consumer would see).
//!
//! After every action ([`Checker::after_action`]): no address is reserved twice in a subnet along
//! the reservation stream (the property tests' `follow`), every output id appears once in the
//! whole log, and no vNIC holds two reservations of one family (a dual-stack vNIC holds one of
//! each). Once the drivers have settled ([`settled`]): every vNIC that is up holds exactly one
//! reservation in each subnet it named and every other none, and every
//! IPAM-enabled network with a subnet has min(servers_count, eligible hosts) servers, all
//! eligible (the placement property test's model, fed the committed `ipam.hosts`). At the end:
//! outputs and states of a replay equal the live ones ([`replay_matches`]), and the outputs of the
//! run with faults equal those of the same script without them ([`same_as_without_faults`]).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail};
use ipam_core::StateMachine;
use ipam_core::allocator::Allocator;
use ipam_core::event::{Owner, Topic};
use ipam_core::{Envelope, Event, EventId, HostId, NetworkId, SubnetId, VnicId};
use ipam_log::dead_letter::{Ingested, ingest};
use ipam_log::{EventLog, Record};
use ipam_runtime::Topics;

use super::world::{Replay, World, read_all};
use crate::properties::{allocator, placement};

/// What the checks have read of the output topics so far.
#[derive(Default)]
pub(crate) struct Checker {
    /// Next offset to read, per output topic partition.
    read: BTreeMap<(String, u32), u64>,
    /// Every output id, with where it was first seen.
    ids: BTreeMap<EventId, String>,
    /// The reservations along the output stream.
    reservations: allocator::Model,
    /// Every allocator output on `ipam.reservations`, by id.
    allocator_outputs: BTreeMap<EventId, Event>,
    /// The live server assignments along `ipam.dhcp-servers`.
    assignments: BTreeMap<(NetworkId, HostId), u64>,
    /// How many reservations and server assignments were made (that the script does exercise them).
    pub(crate) reserved: u64,
    pub(crate) assigned: u64,
}

/// The topics whose records are outputs (on `ipam.hosts`, those whose source is a driver).
const OUTPUT_TOPICS: [Topic; 3] = [Topic::Reservations, Topic::DhcpServers, Topic::Hosts];

fn is_output(envelope: &Envelope) -> bool {
    envelope.source.starts_with("ipam/")
}

impl Checker {
    pub(crate) fn after_action(&mut self, world: &World) -> anyhow::Result<()> {
        let log = &*world.log;
        for topic in OUTPUT_TOPICS {
            let name = world.topics.name(topic);
            for partition in 0..log.partition_count(&name)? {
                let from = self.read.entry((name.clone(), partition)).or_insert(0);
                let records = log.read(&name, partition, *from, usize::MAX, std::time::Duration::ZERO)?;
                *from += records.len() as u64;
                for record in records {
                    self.output(topic, &record)?;
                }
            }
        }
        let mut holding: BTreeMap<(NetworkId, VnicId, bool), (SubnetId, std::net::IpAddr)> = BTreeMap::new();
        for ((network_id, subnet_id, ip), owner) in &self.reservations.held {
            if let Owner::Vnic { vnic_id, .. } = owner
                && let Some(other) = holding.insert((*network_id, *vnic_id, ip.is_ipv4()), (*subnet_id, *ip))
            {
                bail!(
                    "vNIC {vnic_id} of {network_id} holds two reservations of one family: {other:?} and {:?}",
                    (subnet_id, ip)
                );
            }
        }
        Ok(())
    }

    fn output(&mut self, topic: Topic, record: &Record) -> anyhow::Result<()> {
        let at = format!("{}/{}@{}", record.topic, record.partition, record.offset);
        let envelope = match Envelope::decode(&record.value) {
            Ok(envelope) => envelope,
            // The simulation's own garbage on the input topic `ipam.hosts`.
            Err(_) if topic == Topic::Hosts => return Ok(()),
            Err(error) => bail!("the output at {at} does not decode: {error:?}"),
        };
        if !is_output(&envelope) {
            return Ok(());
        }
        if let Some(first) = self.ids.insert(envelope.id, at.clone()) {
            bail!(
                "output id {} appears twice in the log: at {first} and at {at} ({})",
                envelope.id,
                envelope.event.type_name()
            );
        }
        match envelope.event {
            Event::ReservationAdded(_) => self.reserved += 1,
            Event::DhcpServerAssigned(_) => self.assigned += 1,
            _ => {}
        }
        match (topic, &envelope.event) {
            (Topic::Reservations, event) => {
                allocator::follow(&mut self.reservations, event)
                    .map_err(|error| anyhow!("invariant 1 along {at}: {error}"))?;
                self.allocator_outputs.insert(envelope.id, envelope.event);
            }
            (Topic::DhcpServers, Event::DhcpServerAssigned(a)) => {
                self.assignments.insert((a.network_id, a.host_id), a.epoch);
            }
            (Topic::DhcpServers, Event::DhcpServerUnassigned(u)) => {
                self.assignments.remove(&(u.network_id, u.host_id));
            }
            (Topic::DhcpServers, other) => bail!("placement wrote {} at {at}", other.type_name()),
            _ => {}
        }
        Ok(())
    }
}

/// The invariants that hold once every input is consumed and committed.
pub(crate) fn settled(world: &World, checker: &Checker) -> anyhow::Result<()> {
    let log = &*world.log;
    // Which vNICs are up: the property test's rule, over the committed inputs and their outputs.
    let outputs = &checker.allocator_outputs;
    let parts = world
        .allocator
        .states()?
        .values()
        .map(|state| Allocator::restore(&(), state).map_err(|e| anyhow!("the live allocator state: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let live = Allocator::merge(parts);
    // The machines ignore an input whose id they have seen (a retry): so do the models.
    let mut seen = BTreeSet::new();
    let mut up = allocator::Model::default();
    let networks = world.topics.name(Topic::Networks);
    for partition in 0..log.partition_count(&networks)? {
        for record in read_all(log, &networks, partition)? {
            if let Ingested::Event(input) = ingest(&record)
                && seen.insert(input.id)
            {
                let caused: Vec<Event> =
                    (0..).map_while(|index| outputs.get(&EventId::derived(input.id, index)).cloned()).collect();
                allocator::track_up(&mut up, &input, &caused, &live);
            }
        }
    }
    let mut holders: BTreeMap<(NetworkId, VnicId), Vec<SubnetId>> = BTreeMap::new();
    for ((network_id, subnet_id, _), owner) in &checker.reservations.held {
        if let Owner::Vnic { vnic_id, .. } = owner {
            holders.entry((*network_id, *vnic_id)).or_default().push(*subnet_id);
        }
    }
    for ((network_id, vnic_id), subnets) in &up.up {
        let held = holders.get(&(*network_id, *vnic_id));
        // One reservation in each subnet the vNIC named (`held` is in subnet order, as the set).
        let expected: Vec<SubnetId> = subnets.iter().copied().collect();
        if held != Some(&expected) {
            bail!("invariant 2: vNIC {vnic_id} is up on {subnets:?} of {network_id} but holds {held:?}");
        }
    }
    for (network_id, vnic_id) in holders.keys() {
        if !up.up.contains_key(&(*network_id, *vnic_id)) {
            bail!("invariant 2: vNIC {vnic_id} of {network_id} is down but holds a reservation");
        }
    }

    // Invariant 5, against the placement property test's model of the fleet.
    let mut fleet = placement::Model::default();
    for record in read_all(log, &world.topics.name(Topic::Hosts), 0)? {
        if let Ingested::Event(input) = ingest(&record)
            && seen.insert(input.id)
        {
            fleet.learn(&input.event);
        }
    }
    fleet.assigned = checker.assignments.clone();
    for net in 0..placement::NETWORKS {
        let network = placement::network_id(net);
        let eligible = fleet.hosts.values().filter(|host| fleet.eligible(host, network)).count();
        let expected = fleet.wanted(network).min(eligible);
        let served: Vec<HostId> = fleet.assigned.keys().filter(|(n, _)| *n == network).map(|(_, h)| *h).collect();
        if served.len() != expected {
            bail!(
                "invariant 5: {network} has {} servers, expected {expected}: {served:?}; the fleet: {:?}",
                served.len(),
                fleet.hosts
            );
        }
        for host in &served {
            let state = fleet.hosts.get(host).cloned().unwrap_or_default();
            if !fleet.eligible(&state, network) {
                bail!("invariant 5: {host} serves {network} but is not eligible");
            }
        }
    }
    Ok(())
}

/// The outputs of one deployment (one topic prefix) in a log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Outputs {
    reservations: BTreeMap<u32, Vec<(EventId, Event)>>,
    dhcp_servers: BTreeMap<u32, Vec<(EventId, Event)>>,
    /// What the allocator forwarded to `ipam.hosts`, by the input partition it came from (the
    /// allocator interleaves its partitions as it polls them, so only each one's order is fixed).
    forwarded: BTreeMap<u32, Vec<(EventId, Event)>>,
    /// Dead letters by key (source topic and partition), in order.
    dead_letters: BTreeMap<String, Vec<Vec<u8>>>,
}

pub(crate) fn outputs(log: &dyn EventLog, topics: &Topics) -> anyhow::Result<Outputs> {
    let stream = |topic: Topic, partition: u32| -> anyhow::Result<Vec<(EventId, Event)>> {
        Ok(read_all(log, &topics.name(topic), partition)?
            .iter()
            .filter_map(|record| Envelope::decode(&record.value).ok())
            .filter(|envelope| envelope.source == "ipam/allocator" || topic != Topic::Hosts)
            .map(|envelope| (envelope.id, envelope.event))
            .collect())
    };
    let partitions = log.partition_count(&topics.name(Topic::Reservations))?;
    let mut dead_letters: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for record in read_all(log, &topics.name(Topic::DeadLetter), 0)? {
        dead_letters.entry(record.key).or_default().push(record.value);
    }
    Ok(Outputs {
        reservations: (0..partitions)
            .map(|p| Ok((p, stream(Topic::Reservations, p)?)))
            .collect::<anyhow::Result<_>>()?,
        dhcp_servers: (0..partitions)
            .map(|p| Ok((p, stream(Topic::DhcpServers, p)?)))
            .collect::<anyhow::Result<_>>()?,
        forwarded: stream(Topic::Hosts, 0)?.into_iter().fold(BTreeMap::new(), |mut by_partition, (id, event)| {
            let partition = ipam_log::partition::for_key(event.key().as_bytes(), partitions);
            by_partition.entry(partition).or_insert_with(Vec::new).push((id, event));
            by_partition
        }),
        dead_letters,
    })
}

/// Fails with the first difference between two output streams.
fn same<T: std::fmt::Debug + PartialEq>(what: &str, live: &[T], other: &[T], other_name: &str) -> anyhow::Result<()> {
    if let Some(index) = (0..live.len().max(other.len())).find(|&i| live.get(i) != other.get(i)) {
        bail!(
            "{what}: the live run and {other_name} differ at output {index} (of {} and {}):\n  live: {:?}\n  {other_name}: {:?}",
            live.len(),
            other.len(),
            live.get(index),
            other.get(index)
        );
    }
    Ok(())
}

fn forwarded_same(live: &Outputs, other: &Outputs, other_name: &str) -> anyhow::Result<()> {
    let empty = Vec::new();
    for partition in live.forwarded.keys().chain(other.forwarded.keys()) {
        let (mine, theirs) = (live.forwarded.get(partition), other.forwarded.get(partition));
        let what = format!("facts forwarded to ipam.hosts from ipam.networks/{partition}");
        same(&what, mine.unwrap_or(&empty), theirs.unwrap_or(&empty), other_name)?;
    }
    Ok(())
}

/// A replay from zero ends with the live states (byte for byte) and wrote the live outputs.
pub(crate) fn replay_matches(world: &World, live: &Outputs, replay: &Replay) -> anyhow::Result<()> {
    for (live, replayed, name) in [
        (world.allocator.states()?, replay.allocator.states()?, "allocator"),
        (world.placement.states()?, replay.placement.states()?, "placement"),
    ] {
        if live.keys().ne(replayed.keys()) {
            bail!("{name}: the live snapshots {:?} and the replay's {:?} differ", live.keys(), replayed.keys());
        }
        for (file, state) in &live {
            if replayed[file] != *state {
                bail!(
                    "invariant 3: {name} state {file} after replay from zero differs from the live one:\n  live:   {}\n  replay: {}",
                    String::from_utf8_lossy(state),
                    String::from_utf8_lossy(&replayed[file])
                );
            }
        }
    }
    let replayed = outputs(&*world.log, &Topics::new("replay.", world.topics.partitions))?;
    for (partition, stream) in &live.reservations {
        same(&format!("ipam.reservations/{partition}"), stream, &replayed.reservations[partition], "the replay")?;
    }
    for (partition, stream) in &live.dhcp_servers {
        same(&format!("ipam.dhcp-servers/{partition}"), stream, &replayed.dhcp_servers[partition], "the replay")?;
    }
    forwarded_same(live, &replayed, "the replay")?;
    if live.dead_letters != replayed.dead_letters {
        bail!("the dead letters of the live run and of the replay differ");
    }
    Ok(())
}

/// Invariant 4: a crash, a torn batch or a lost snapshot changes no output. The allocator's
/// outputs are compared always; placement's only when `ipam.hosts` holds the same records in the
/// same order in both runs, since a crash of the allocator moves the facts it forwards there
/// relative to heartbeats and ticks, and placement decides on that order. Answers whether
/// placement's outputs were compared.
pub(crate) fn same_as_without_faults(world: &World, live: &Outputs, calm: &World) -> anyhow::Result<bool> {
    let reference = outputs(&*calm.log, &calm.topics)?;
    let without = "the run without faults";
    for (partition, stream) in &live.reservations {
        same(&format!("ipam.reservations/{partition}"), stream, &reference.reservations[partition], without)?;
    }
    forwarded_same(live, &reference, without)?;
    let engine = |outputs: &Outputs| -> Vec<(String, Vec<Vec<u8>>)> {
        outputs
            .dead_letters
            .iter()
            .filter(|(key, _)| key.starts_with(&world.topics.name(Topic::Networks)))
            .map(|(key, values)| (key.clone(), values.clone()))
            .collect()
    };
    same("dead letters of ipam.networks", &engine(live), &engine(&reference), without)?;
    let hosts = |world: &World| -> anyhow::Result<Vec<Vec<u8>>> {
        Ok(read_all(&*world.log, &world.topics.name(Topic::Hosts), 0)?.into_iter().map(|r| r.value).collect())
    };
    if hosts(world)? != hosts(calm)? {
        return Ok(false);
    }
    for (partition, stream) in &live.dhcp_servers {
        same(&format!("ipam.dhcp-servers/{partition}"), stream, &reference.dhcp_servers[partition], without)?;
    }
    if live.dead_letters != reference.dead_letters {
        bail!("the dead letters of the run with faults and of the run without differ");
    }
    Ok(true)
}
