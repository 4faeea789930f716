//! The actors that hold state: one per network for the allocator, spread over a pool of arbiter
//! threads (one per core), and one for placement. They only compute: a driver hands each actor its
//! share of a polled batch in one message, and every blocking call stays on the driver threads.

use actix::{Actor, Context, Handler, Message};
use ipam_core::allocator::Allocator;
use ipam_core::placement::Placement;

use crate::driver::{Applied, Input};

/// Apply a batch of inputs, each with its index in the driver's batch; answer what each produced,
/// with the same indexes.
#[derive(Debug)]
pub struct ApplyAll(pub Vec<(usize, Input)>);

impl Message for ApplyAll {
    type Result = Vec<(usize, Applied)>;
}

/// Answer the canonical snapshot of the actor's state.
#[derive(Debug)]
pub struct TakeSnapshot;

impl Message for TakeSnapshot {
    type Result = Vec<u8>;
}

/// Answer (a clone of) the actor's state, for a caller that needs the value itself.
#[derive(Debug)]
pub struct Extract;

impl Message for Extract {
    type Result = Allocator;
}

/// The allocator of one network.
#[derive(Debug)]
pub struct NetworkActor {
    pub allocator: Allocator,
}

impl Actor for NetworkActor {
    type Context = Context<Self>;
}

impl Handler<ApplyAll> for NetworkActor {
    type Result = actix::MessageResult<ApplyAll>;

    fn handle(&mut self, message: ApplyAll, _: &mut Context<Self>) -> Self::Result {
        let answers = message
            .0
            .into_iter()
            .map(|(index, input)| {
                let applied = match input {
                    Input::Event(input) => {
                        let fresh = !self.allocator.is_retry(&input);
                        let (outputs, forwarded) = self.allocator.apply_forwarding(&input);
                        Applied { outputs, forwarded, fresh }
                    }
                    Input::Refused { network_id, id } => {
                        Applied { fresh: self.allocator.record_refused(network_id, id), ..Applied::default() }
                    }
                };
                (index, applied)
            })
            .collect();
        actix::MessageResult(answers)
    }
}

impl Handler<Extract> for NetworkActor {
    type Result = actix::MessageResult<Extract>;

    fn handle(&mut self, _: Extract, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.allocator.clone())
    }
}

/// DHCP server placement.
#[derive(Debug)]
pub struct PlacementActor {
    pub placement: Placement,
}

impl Actor for PlacementActor {
    type Context = Context<Self>;
}

impl Handler<ApplyAll> for PlacementActor {
    type Result = actix::MessageResult<ApplyAll>;

    fn handle(&mut self, message: ApplyAll, _: &mut Context<Self>) -> Self::Result {
        let answers = message
            .0
            .into_iter()
            .map(|(index, input)| {
                let applied = match input {
                    Input::Event(input) => {
                        Applied { outputs: self.placement.apply(&input), forwarded: Vec::new(), fresh: true }
                    }
                    // Placement's inputs are host events and facts; a refused engine request is the
                    // allocator's to remember.
                    Input::Refused { .. } => Applied { fresh: true, ..Applied::default() },
                };
                (index, applied)
            })
            .collect();
        actix::MessageResult(answers)
    }
}

impl Handler<TakeSnapshot> for PlacementActor {
    type Result = Vec<u8>;

    fn handle(&mut self, _: TakeSnapshot, _: &mut Context<Self>) -> Vec<u8> {
        self.placement.snapshot()
    }
}
