//! The runtime: drives the core's pure state machines over the event log.
//!
//! A [`driver::Driver`] is one member of a consumer group on one blocking thread. It polls input
//! records, turns each into an event ([`ipam_log::dead_letter::ingest`]), hands it to the actor that
//! owns the event's state (one actix actor per network for the allocator, one for placement), and
//! performs the atomic step: the outputs and the input position together. When it gains a
//! partition, it first rebuilds that partition's state from the latest snapshot plus the tail of
//! the input log up to the group's committed position, so that state and log always agree. It takes
//! snapshots every N records or T seconds, right after a commit, so a snapshot never runs ahead of
//! what the log holds.
//!
//! Blocking log calls happen on driver threads only; actors only compute. `stop` makes a driver
//! commit its open batch, snapshot, and return.

pub mod actors;
pub mod allocator;
pub mod clock;
pub mod dir_lock;
pub mod driver;
pub mod health;
pub mod metrics;
pub mod monitor;
pub mod placement;
pub mod process_metrics;
pub mod snapshot;
pub mod topics;

pub use driver::{Driver, DriverConfig, Readiness};
pub use health::{ComponentState, Health};
pub use snapshot::SnapshotStore;
pub use topics::Topics;

/// How many records of `topic` the consumer group `group` has not consumed yet, over all
/// partitions. On Kafka a transaction's commit marker counts as one record at the end of a
/// partition it wrote, so a topic written in transactions never reaches zero there.
pub fn lag(log: &dyn ipam_log::EventLog, group: &str, topic: &str) -> Result<u64, ipam_log::LogError> {
    let ends = log.end_offsets(topic)?;
    let committed = log.committed_positions(group, topic)?;
    Ok(ends.iter().zip(committed).map(|(end, committed)| end.saturating_sub(committed.unwrap_or(0))).sum())
}
