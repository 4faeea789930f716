//! The pure core of IPAM: the domain types, the event contract, and the state machines that make
//! every decision (the per-network allocator, DHCP server placement, and each host's DHCP plan).
//!
//! Nothing here performs I/O, reads a clock, draws a random number or depends on hash order: time
//! and ids arrive as inputs, and every collection that reaches an output is ordered. That is what
//! lets the runtime rebuild state by replaying the log and get exactly the live state back, and
//! lets every decision be tested without a broker or a thread. The tidy test in `tests/it` keeps it
//! so.

pub mod allocator;
pub mod dhcp_plan;
pub mod event;
pub mod ids;
pub mod lease_watch;
pub mod mac;
pub mod machine;
pub mod net;
pub mod placement;
pub mod pool;
pub mod recent;
pub mod rejection;
pub mod time;

#[cfg(test)]
mod testing;

pub use event::{Envelope, Event, Topic};
pub use ids::{EventId, HostId, NetworkId, SubnetId, VmId, VnicId};
pub use mac::Mac;
pub use machine::{InvariantViolation, SnapshotError, StateMachine};
pub use net::{Cidr, InterfaceName, IpFamily, IpRange, SubnetSpec};
pub use rejection::{Rejection, RejectionCode};
pub use time::Timestamp;
