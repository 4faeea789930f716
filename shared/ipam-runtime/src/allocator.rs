//! The allocator's partition states: one [`MachineActor`] per network, grouped by input partition,
//! the actors spread over a pool of arbiter threads. A polled batch is split by network, each
//! actor gets its share in one message, and all shares are sent before any answer is awaited, so
//! networks on different arbiters are decided in parallel; the answers are put back in input order.
//! A partition tick (`ipam.clock.partition_ticked.v1`, about no network) goes to every network
//! actor of its partition.

use std::collections::{BTreeMap, BTreeSet};

use actix::{Actor, Addr, ArbiterHandle};
use anyhow::Context;
use futures::executor::block_on;
use futures::future::join_all;
use ipam_core::allocator::Allocator;
use ipam_core::{Event, NetworkId, StateMachine};
use ipam_log::TopicPartition;

use crate::actors::{ApplyAll, Extract, MachineActor};
use crate::driver::{Applied, Input, Machines};

/// The allocator actors of the partitions one driver owns.
#[derive(Debug)]
pub struct AllocatorMachines {
    arbiters: Vec<ArbiterHandle>,
    /// The arbiter the next new actor is started on.
    next_arbiter: usize,
    partitions: BTreeMap<TopicPartition, BTreeMap<NetworkId, Addr<MachineActor<Allocator>>>>,
}

impl AllocatorMachines {
    /// Actors are started on `arbiters`' threads, in turn.
    ///
    /// # Panics
    /// When `arbiters` is empty.
    pub fn new(arbiters: Vec<ArbiterHandle>) -> AllocatorMachines {
        assert!(!arbiters.is_empty(), "the allocator needs at least one arbiter");
        AllocatorMachines { arbiters, next_arbiter: 0, partitions: BTreeMap::new() }
    }

    fn start(&mut self, allocator: Allocator) -> Addr<MachineActor<Allocator>> {
        let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
        self.next_arbiter = self.next_arbiter.wrapping_add(1);
        MachineActor::start_in_arbiter(arbiter, move |_| MachineActor { machine: allocator })
    }

    fn actor(&mut self, partition: &TopicPartition, network_id: NetworkId) -> Addr<MachineActor<Allocator>> {
        if let Some(actor) = self.partitions.get(partition).and_then(|actors| actors.get(&network_id)) {
            return actor.clone();
        }
        let actor = self.start(Allocator::new());
        self.partitions.entry(partition.clone()).or_default().insert(network_id, actor.clone());
        actor
    }
}

impl Machines for AllocatorMachines {
    type Decoded = Allocator;

    fn decode(&self, snapshot: &[u8]) -> anyhow::Result<Allocator> {
        Allocator::restore(&(), snapshot).context("reading an allocator snapshot")
    }

    fn restore(&mut self, partition: &TopicPartition, state: Option<Allocator>) -> anyhow::Result<()> {
        let allocator = state.unwrap_or_default();
        let mut actors = BTreeMap::new();
        for part in allocator.split() {
            let network_id = part.networks().next().map(|network| network.network_id());
            if let Some(network_id) = network_id {
                actors.insert(network_id, self.start(part));
            }
        }
        self.partitions.insert(partition.clone(), actors);
        Ok(())
    }

    fn forget(&mut self, partition: &TopicPartition) {
        // Dropping the last address stops each actor.
        self.partitions.remove(partition);
    }

    fn apply(&mut self, inputs: &[(TopicPartition, Input)]) -> anyhow::Result<Vec<Applied>> {
        // Any other input without a network produces nothing.
        let mut applied = vec![Applied { fresh: true, ..Applied::default() }; inputs.len()];
        let mut shares: BTreeMap<(TopicPartition, NetworkId), Vec<(usize, Input)>> = BTreeMap::new();
        for (index, (partition, input)) in inputs.iter().enumerate() {
            let network_id = match input {
                Input::Event(envelope) if matches!(envelope.event, Event::PartitionClockTicked(_)) => {
                    // A partition tick reaches every network of its partition that exists at that
                    // point of the batch (as the core's `Allocator` hands it to the networks it
                    // holds then); their outputs are joined in network order below.
                    let known = self.partitions.get(partition).into_iter().flat_map(|actors| actors.keys().copied());
                    let seen = shares.keys().filter(|(p, _)| p == partition).map(|(_, id)| *id);
                    let networks: BTreeSet<NetworkId> = known.chain(seen).collect();
                    for network_id in networks {
                        shares.entry((partition.clone(), network_id)).or_default().push((index, input.clone()));
                    }
                    None
                }
                Input::Event(envelope) => envelope.event.network_id(),
                Input::Refused { network_id, .. } => Some(*network_id),
            };
            if let Some(network_id) = network_id {
                shares.entry((partition.clone(), network_id)).or_default().push((index, input.clone()));
            }
        }
        let requests: Vec<_> = shares
            .into_iter()
            .map(|((partition, network_id), share)| self.actor(&partition, network_id).send(ApplyAll(share)))
            .collect();
        // Answers come in network order; a tick's several answers are joined in that order.
        for answer in block_on(join_all(requests)) {
            for (index, result) in answer.context("a network's allocator actor is gone")? {
                let slot = &mut applied[index];
                slot.outputs.extend(result.outputs);
                slot.forwarded.extend(result.forwarded);
                slot.fresh &= result.fresh;
            }
        }
        Ok(applied)
    }

    fn snapshot(&mut self, partition: &TopicPartition) -> anyhow::Result<Vec<u8>> {
        let actors =
            self.partitions.get(partition).map(|a| a.values().cloned().collect::<Vec<_>>()).unwrap_or_default();
        let parts = block_on(join_all(actors.iter().map(|actor| actor.send(Extract::default()))))
            .into_iter()
            .collect::<Result<Vec<Allocator>, _>>()
            .context("an allocator actor is gone")?;
        Ok(Allocator::merge(parts).snapshot())
    }
}

#[cfg(test)]
mod tests {
    use ipam_core::event::{NetworkUpserted, PartitionClockTicked, Topic};
    use ipam_core::{Envelope, EventId, Timestamp};

    use super::*;

    fn input(n: u128, event: Event) -> (TopicPartition, Input) {
        let partition = TopicPartition { topic: Topic::Networks.name().to_owned(), partition: 0 };
        let envelope = Envelope {
            id: EventId::from_u128(n),
            source: "test".to_owned(),
            time: Timestamp::from_unix_ms(0),
            subject: None,
            event,
        };
        (partition, Input::Event(envelope))
    }

    fn upsert(network: u128) -> Event {
        Event::NetworkUpserted(NetworkUpserted {
            network_id: NetworkId::from_u128(network),
            name: format!("n{network}"),
            ipam_enabled: true,
            servers_count: None,
        })
    }

    fn tick(ms: i64) -> Event {
        Event::PartitionClockTicked(PartitionClockTicked { now: Timestamp::from_unix_ms(ms), partition: 0 })
    }

    #[test]
    fn a_partition_tick_reaches_the_networks_of_its_partition_as_the_core_allocator_gives_it() {
        let _system = actix::System::new();
        let arbiter = actix::Arbiter::new();
        let mut machines = AllocatorMachines::new(vec![arbiter.handle()]);
        // Networks 1 and 2 have actors before the batch; 3 comes in the batch before the first
        // tick, 4 after it: it sees only the second, which is stale for the others.
        let batches = [
            vec![input(1, upsert(1)), input(2, upsert(2))],
            vec![input(3, upsert(3)), input(4, tick(5_000)), input(5, upsert(4)), input(6, tick(4_000))],
        ];
        let mut core = Allocator::new();
        for batch in &batches {
            let applied = machines.apply(batch).unwrap();
            assert_eq!(applied.len(), batch.len());
            for (_, input) in batch {
                let Input::Event(envelope) = input else { unreachable!() };
                core.apply(envelope);
            }
        }
        let partition = &batches[0][0].0;
        let runtime = Allocator::restore(&(), &machines.snapshot(partition).unwrap()).unwrap();
        assert_eq!(runtime, core);
        let now = |network: u128| runtime.network(NetworkId::from_u128(network)).unwrap().now();
        assert_eq!([now(1), now(2), now(3)], [Some(Timestamp::from_unix_ms(5_000)); 3]);
        assert_eq!(now(4), Some(Timestamp::from_unix_ms(4_000)), "network 4 came after the first tick");
        arbiter.stop();
    }
}
