//! The actors that hold state: one per network for the allocator, spread over a pool of arbiter
//! threads (one per core), and one for placement. They only compute: a driver hands each actor its
//! share of a polled batch in one message, and every blocking call stays on the driver threads.
//!
//! One actor type, [`MachineActor`], serves every core [`StateMachine`]: what differs between the
//! allocator and placement is only how an [`Input`] becomes a decision ([`Decides`]). In debug
//! builds (and so in every test) the actor checks the machine's invariants after each input and
//! stops at the first one broken, naming the input; release builds skip the check.

use std::marker::PhantomData;

use actix::{Actor, Context, Handler, Message};
use ipam_core::StateMachine;
use ipam_core::allocator::Allocator;
use ipam_core::placement::Placement;

use crate::driver::{Applied, Input};

/// A core state machine as the runtime drives it: an [`Input`] in, an [`Applied`] out.
pub trait Decides: StateMachine + Unpin + Send + 'static {
    fn decide(&mut self, input: Input) -> Applied;
}

impl Decides for Allocator {
    fn decide(&mut self, input: Input) -> Applied {
        match input {
            Input::Event(input) => {
                let fresh = !self.is_retry(&input);
                let (outputs, forwarded) = self.apply_forwarding(&input);
                Applied { outputs, forwarded, fresh }
            }
            Input::Refused { network_id, id } => {
                Applied { fresh: self.record_refused(network_id, id), ..Applied::default() }
            }
        }
    }
}

impl Decides for Placement {
    fn decide(&mut self, input: Input) -> Applied {
        match input {
            Input::Event(input) => Applied { outputs: self.apply(&input), forwarded: Vec::new(), fresh: true },
            // Placement's inputs are host events and facts; a refused engine request is the
            // allocator's to remember.
            Input::Refused { .. } => Applied { fresh: true, ..Applied::default() },
        }
    }
}

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

/// Answer (a clone of) the actor's machine, for a caller that needs the value itself.
#[derive(Debug, Default)]
pub struct Extract<M>(PhantomData<M>);

impl<M: 'static> Message for Extract<M> {
    type Result = M;
}

/// The actor that holds one state machine.
#[derive(Debug)]
pub struct MachineActor<M> {
    pub machine: M,
}

impl<M: Decides> Actor for MachineActor<M> {
    type Context = Context<Self>;
}

impl<M: Decides> Handler<ApplyAll> for MachineActor<M> {
    type Result = actix::MessageResult<ApplyAll>;

    fn handle(&mut self, message: ApplyAll, _: &mut Context<Self>) -> Self::Result {
        let answers = message
            .0
            .into_iter()
            .map(|(index, input)| {
                let kept = cfg!(debug_assertions).then(|| input.clone());
                let applied = self.machine.decide(input);
                if let Some(input) = kept
                    && let Err(violation) = self.machine.check()
                {
                    panic!("{violation}, after applying {input:?}");
                }
                (index, applied)
            })
            .collect();
        actix::MessageResult(answers)
    }
}

impl<M: Decides> Handler<TakeSnapshot> for MachineActor<M> {
    type Result = Vec<u8>;

    fn handle(&mut self, _: TakeSnapshot, _: &mut Context<Self>) -> Vec<u8> {
        self.machine.snapshot()
    }
}

impl<M: Decides + Clone> Handler<Extract<M>> for MachineActor<M> {
    type Result = actix::MessageResult<Extract<M>>;

    fn handle(&mut self, _: Extract<M>, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.machine.clone())
    }
}
