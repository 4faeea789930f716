//! The actors that hold state: one per network for the allocator, one for placement. They only
//! compute (apply an input, take a snapshot); every blocking call stays on the driver threads that
//! send them messages.

use actix::{Actor, Context, Handler, Message};
use ipam_core::allocator::Allocator;
use ipam_core::placement::Placement;
use ipam_core::{Envelope, Event};

/// Apply one input to placement; answer its outputs.
#[derive(Debug)]
pub struct Apply(pub Envelope);

impl Message for Apply {
    type Result = Vec<Event>;
}

/// Apply one input to a network's allocator; answer its outputs and what placement must hear of
/// it (nothing for a retry), decided together by the core.
#[derive(Debug)]
pub struct ApplyForwarding(pub Envelope);

impl Message for ApplyForwarding {
    type Result = (Vec<Event>, Vec<Event>);
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

impl Handler<ApplyForwarding> for NetworkActor {
    type Result = actix::MessageResult<ApplyForwarding>;

    fn handle(&mut self, message: ApplyForwarding, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.allocator.apply_forwarding(&message.0))
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

impl Handler<Apply> for PlacementActor {
    type Result = Vec<Event>;

    fn handle(&mut self, message: Apply, _: &mut Context<Self>) -> Vec<Event> {
        self.placement.apply(&message.0)
    }
}

impl Handler<TakeSnapshot> for PlacementActor {
    type Result = Vec<u8>;

    fn handle(&mut self, _: TakeSnapshot, _: &mut Context<Self>) -> Vec<u8> {
        self.placement.snapshot()
    }
}
