//! Placement's state: one [`MachineActor`] for the single partition of `ipam.hosts`, handed each
//! polled batch in one message.

use actix::{Actor, Addr, ArbiterHandle};
use anyhow::{Context, anyhow};
use futures::executor::block_on;
use ipam_core::StateMachine;
use ipam_core::placement::{Placement, PlacementConfig};
use ipam_log::TopicPartition;

use crate::actors::{ApplyAll, MachineActor, TakeSnapshot};
use crate::driver::{Applied, Input, Machines};

#[derive(Debug)]
pub struct PlacementMachines {
    arbiter: ArbiterHandle,
    config: PlacementConfig,
    actor: Option<Addr<MachineActor<Placement>>>,
}

impl PlacementMachines {
    pub fn new(arbiter: ArbiterHandle, config: PlacementConfig) -> PlacementMachines {
        PlacementMachines { arbiter, config, actor: None }
    }

    fn actor(&self) -> anyhow::Result<&Addr<MachineActor<Placement>>> {
        self.actor.as_ref().ok_or_else(|| anyhow!("placement has no partition"))
    }
}

impl Machines for PlacementMachines {
    type Decoded = Placement;

    fn decode(&self, snapshot: &[u8]) -> anyhow::Result<Placement> {
        Placement::restore(&self.config, snapshot).context("reading a placement snapshot")
    }

    fn restore(&mut self, _partition: &TopicPartition, state: Option<Placement>) -> anyhow::Result<()> {
        let placement = state.unwrap_or_else(|| Placement::new(self.config));
        self.actor = Some(MachineActor::start_in_arbiter(&self.arbiter, move |_| MachineActor { machine: placement }));
        Ok(())
    }

    fn forget(&mut self, _partition: &TopicPartition) {
        self.actor = None;
    }

    fn apply(&mut self, inputs: &[(TopicPartition, Input)]) -> anyhow::Result<Vec<Applied>> {
        if inputs.is_empty() {
            // Before its partition is assigned (on Kafka, a while after joining) there is no actor.
            return Ok(Vec::new());
        }
        let batch: Vec<(usize, Input)> = inputs.iter().map(|(_, input)| input.clone()).enumerate().collect();
        let answers = block_on(self.actor()?.send(ApplyAll(batch))).context("the placement actor is gone")?;
        Ok(answers.into_iter().map(|(_, applied)| applied).collect())
    }

    fn snapshot(&mut self, _partition: &TopicPartition) -> anyhow::Result<Vec<u8>> {
        block_on(self.actor()?.send(TakeSnapshot)).context("the placement actor is gone")
    }
}
