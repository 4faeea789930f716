//! The allocator's partition states: one [`NetworkActor`] per network, grouped by input partition.

use std::collections::BTreeMap;

use actix::{Actor, Addr, ArbiterHandle};
use anyhow::Context;
use futures::executor::block_on;
use ipam_core::allocator::Allocator;
use ipam_core::{Envelope, Event, EventId, NetworkId};
use ipam_log::TopicPartition;

use crate::actors::{ApplyForwarding, Extract, NetworkActor};
use crate::driver::Machines;

/// The allocator actors of the partitions one driver owns.
#[derive(Debug)]
pub struct AllocatorMachines {
    arbiter: ArbiterHandle,
    partitions: BTreeMap<TopicPartition, BTreeMap<NetworkId, Addr<NetworkActor>>>,
    /// What placement must hear of the last input applied, decided with its outputs (nothing for
    /// a retry, which `placement_facts` alone cannot tell from a first application).
    last_facts: Option<(EventId, Vec<Event>)>,
}

impl AllocatorMachines {
    /// Actors are started on `arbiter`'s thread.
    pub fn new(arbiter: ArbiterHandle) -> AllocatorMachines {
        AllocatorMachines { arbiter, partitions: BTreeMap::new(), last_facts: None }
    }

    fn start(&self, allocator: Allocator) -> Addr<NetworkActor> {
        NetworkActor::start_in_arbiter(&self.arbiter, move |_| NetworkActor { allocator })
    }
}

impl Machines for AllocatorMachines {
    fn restore(&mut self, partition: &TopicPartition, snapshot: Option<&[u8]>) -> anyhow::Result<()> {
        let allocator = match snapshot {
            Some(bytes) => Allocator::restore(bytes).context("reading an allocator snapshot")?,
            None => Allocator::new(),
        };
        let actors = allocator
            .split()
            .into_iter()
            .filter_map(|part| {
                let network_id = part.networks().next()?.network_id();
                Some((network_id, self.start(part)))
            })
            .collect();
        self.partitions.insert(partition.clone(), actors);
        Ok(())
    }

    fn forget(&mut self, partition: &TopicPartition) {
        // Dropping the last address stops each actor.
        self.partitions.remove(partition);
    }

    fn apply(&mut self, partition: &TopicPartition, input: &Envelope) -> anyhow::Result<Vec<Event>> {
        self.last_facts = None;
        let Some(network_id) = input.event.network_id() else { return Ok(Vec::new()) };
        let arbiter = self.arbiter.clone();
        let actors = self.partitions.entry(partition.clone()).or_default();
        let actor = actors.entry(network_id).or_insert_with(|| {
            NetworkActor::start_in_arbiter(&arbiter, |_| NetworkActor { allocator: Allocator::new() })
        });
        let (outputs, facts) =
            block_on(actor.send(ApplyForwarding(input.clone()))).context("the network's allocator actor is gone")?;
        self.last_facts = Some((input.id, facts));
        Ok(outputs)
    }

    fn snapshot(&mut self, partition: &TopicPartition) -> anyhow::Result<Vec<u8>> {
        let actors =
            self.partitions.get(partition).map(|a| a.values().cloned().collect::<Vec<_>>()).unwrap_or_default();
        let parts = actors
            .iter()
            .map(|actor| block_on(actor.send(Extract)).context("an allocator actor is gone"))
            .collect::<anyhow::Result<Vec<Allocator>>>()?;
        Ok(Allocator::merge(parts).snapshot())
    }

    fn forwarded(&self, input: &Envelope, _outputs: &[Event]) -> Vec<Event> {
        match &self.last_facts {
            Some((id, facts)) if *id == input.id => facts.clone(),
            _ => Vec::new(),
        }
    }
}
