//! The allocator's partition states: one [`MachineActor`] per network, grouped by input partition,
//! the actors spread over a pool of arbiter threads. A polled batch is split by network, each
//! actor gets its share in one message, and all shares are sent before any answer is awaited, so
//! networks on different arbiters are decided in parallel; the answers are put back in input order.

use std::collections::BTreeMap;

use actix::{Actor, Addr, ArbiterHandle};
use anyhow::Context;
use futures::executor::block_on;
use futures::future::join_all;
use ipam_core::allocator::Allocator;
use ipam_core::{NetworkId, StateMachine};
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
    fn restore(&mut self, partition: &TopicPartition, snapshot: Option<&[u8]>) -> anyhow::Result<()> {
        let allocator = match snapshot {
            Some(bytes) => Allocator::restore(&(), bytes).context("reading an allocator snapshot")?,
            None => Allocator::new(),
        };
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
        // An input without a network (none reaches the allocator today) produces nothing.
        let mut applied = vec![Applied { fresh: true, ..Applied::default() }; inputs.len()];
        let mut shares: BTreeMap<(TopicPartition, NetworkId), Vec<(usize, Input)>> = BTreeMap::new();
        for (index, (partition, input)) in inputs.iter().enumerate() {
            let network_id = match input {
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
        for answer in block_on(join_all(requests)) {
            for (index, result) in answer.context("a network's allocator actor is gone")? {
                applied[index] = result;
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
