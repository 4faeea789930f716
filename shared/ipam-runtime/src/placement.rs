//! Placement's state: one [`PlacementActor`] for the single partition of `ipam.hosts`.

use actix::{Actor, Addr, ArbiterHandle};
use anyhow::{Context, anyhow};
use futures::executor::block_on;
use ipam_core::placement::{Placement, PlacementConfig};
use ipam_core::{Envelope, Event};
use ipam_log::TopicPartition;

use crate::actors::{Apply, PlacementActor, TakeSnapshot};
use crate::driver::Machines;

#[derive(Debug)]
pub struct PlacementMachines {
    arbiter: ArbiterHandle,
    config: PlacementConfig,
    actor: Option<Addr<PlacementActor>>,
}

impl PlacementMachines {
    pub fn new(arbiter: ArbiterHandle, config: PlacementConfig) -> PlacementMachines {
        PlacementMachines { arbiter, config, actor: None }
    }

    fn actor(&self) -> anyhow::Result<&Addr<PlacementActor>> {
        self.actor.as_ref().ok_or_else(|| anyhow!("placement has no partition"))
    }
}

impl Machines for PlacementMachines {
    fn restore(&mut self, _partition: &TopicPartition, snapshot: Option<&[u8]>) -> anyhow::Result<()> {
        let placement = match snapshot {
            Some(bytes) => Placement::restore(self.config, bytes).context("reading a placement snapshot")?,
            None => Placement::new(self.config),
        };
        self.actor = Some(PlacementActor::start_in_arbiter(&self.arbiter, move |_| PlacementActor { placement }));
        Ok(())
    }

    fn forget(&mut self, _partition: &TopicPartition) {
        self.actor = None;
    }

    fn apply(&mut self, _partition: &TopicPartition, input: &Envelope) -> anyhow::Result<Vec<Event>> {
        block_on(self.actor()?.send(Apply(input.clone()))).context("the placement actor is gone")
    }

    fn snapshot(&mut self, _partition: &TopicPartition) -> anyhow::Result<Vec<u8>> {
        block_on(self.actor()?.send(TakeSnapshot)).context("the placement actor is gone")
    }
}
