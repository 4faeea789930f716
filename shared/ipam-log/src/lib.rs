//! The event log: ordered, partitioned topics with consumer-group positions, and one atomic step
//! that appends a state machine's outputs and commits its input positions together, or does
//! neither.
//!
//! The [`EventLog`] trait is the only thing the runtime knows about storage. Three backends keep
//! the same semantics: Kafka (crate `ipam-log-kafka`, the distributed engine), the embedded
//! [`sqlite::SqliteLog`] (the durable single-machine default), and [`memory::MemoryLog`] (tests).
//! The core crate stays free of all of this; this crate knows the event contract only to route
//! unreadable records to the dead-letter topic ([`dead_letter`]).
//!
//! # Semantics every backend keeps
//! - A record's partition is [`partition::for_key`] of its key: Kafka's own murmur2 partitioner,
//!   computed here, so a key lands on the same partition number on every backend.
//! - Offsets grow strictly within a partition. They are contiguous on the local backends and may
//!   skip on Kafka (transaction markers take offsets), so code never assumes `offset + 1` exists.
//! - Readers see committed records only (Kafka's `read_committed`).
//! - A [`Member`] of a consumer group reads the partitions assigned to it and performs steps. Steps
//!   are batched (by count or age, [`BatchPolicy`]): a batch becomes visible as a whole when it
//!   commits, or not at all. A member whose `transactional_id` was taken over by a newer member is
//!   fenced: its open batch is discarded and every later call answers [`LogError::Fenced`].

pub mod backlog;
pub mod dead_letter;
pub mod memory;
pub mod partition;
pub mod sqlite;

mod local;

pub use backlog::Backlog;
pub use local::{Batch, CommitHook, HookedStore, LocalLog, LocalStore, Placed};
pub use memory::MemoryLog;
pub use sqlite::SqliteLog;

use std::time::Duration;

/// A topic and how many partitions it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
}

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

/// A record to append: the log picks its partition from the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: String,
    pub key: String,
    pub value: Vec<u8>,
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: String,
    pub value: Vec<u8>,
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub partition: u32,
    pub offset: u64,
}

/// A consumer group's position in a partition: the offset of the next record it will read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub topic: String,
    pub partition: u32,
    pub next_offset: u64,
}

impl Position {
    /// The position `next_offset` in `partition`.
    pub fn at(partition: &TopicPartition, next_offset: u64) -> Position {
        Position { topic: partition.topic.clone(), partition: partition.partition, next_offset }
    }
}

/// When a member's open batch of steps commits: after `max_steps` steps or `max_delay` after its
/// first step, whichever comes first. `max_steps: 1` commits every step on its own. The delay is
/// for loads: a lone input does not wait it out. The local backends commit at every poll that
/// finds the input drained, since their commits are cheap; Kafka commits once drained a batch
/// whose first input came after a quiet spell (see `ipam-log-kafka`'s member).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_steps: usize,
    pub max_delay: Duration,
}

impl Default for BatchPolicy {
    fn default() -> BatchPolicy {
        // Under load on Kafka, where a transaction costs 25 to 45 ms of waiting, 20 ms batches of
        // up to 2,000 steps gave the allocator 1.3 to 2 times the rate of 5 ms and 500 steps in
        // paired runs (`ipam bench --kafka --batch-max-delay-ms`, README); a lone input commits
        // once drained, not after the delay.
        BatchPolicy { max_steps: 2000, max_delay: Duration::from_millis(20) }
    }
}

/// How a member joins a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    /// The consumer group whose positions the member commits.
    pub group: String,
    /// The topics it reads.
    pub topics: Vec<String>,
    /// Stable across restarts of the same instance: a newer member with the same id fences the
    /// older one, so a zombie can never commit.
    pub transactional_id: String,
    pub batch: BatchPolicy,
}

/// What a poll brought: records of the member's partitions, in offset order within each partition,
/// and the changes of assignment since the previous poll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Polled {
    pub records: Vec<Record>,
    /// Partitions the member now owns: rebuild their state before applying their records.
    pub assigned: Vec<TopicPartition>,
    /// Partitions handed over cleanly (the open batch was committed first).
    pub revoked: Vec<TopicPartition>,
    /// Partitions taken away without a clean handover (the open batch was aborted): drop their state.
    pub lost: Vec<TopicPartition>,
}

/// Why a log operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// Another member took over this member's `transactional_id`: its open batch is gone and it
    /// must stop; the newer member carries on.
    #[error("fenced: a newer member took over transactional id `{0}`; this one must stop")]
    Fenced(String),
    /// The topic does not exist; create it first.
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    /// The partition number is outside the topic.
    #[error("topic `{topic}` has no partition {partition}")]
    NoSuchPartition { topic: String, partition: u32 },
    /// The topic exists with another partition count; the key-to-partition mapping would change.
    #[error("topic `{topic}` has {existing} partitions, not {wanted}")]
    PartitionCountMismatch { topic: String, existing: u32, wanted: u32 },
    /// The configuration is contradictory or incomplete.
    #[error("bad log configuration: {0}")]
    Config(String),
    /// The storage failed (disk, database, broker); the operation may be retried.
    #[error("log storage failed: {0}")]
    Storage(String),
    /// The backend cannot go on (a fatal broker error, a corrupt store): stop the process.
    #[error("fatal log error: {0}")]
    Fatal(String),
}

/// The log. Every method may block; the runtime calls them off its actor threads.
pub trait EventLog: Send + Sync {
    /// What identifies this log for as long as it exists: created with it, never reused by
    /// another log (the embedded log's id is made when its database is created; Kafka's is the
    /// cluster id). State derived from one log (a snapshot) names it, so it is never applied to
    /// another one.
    fn identity(&self) -> Result<String, LogError>;

    /// Creates the topics that do not exist yet. A topic that exists with another partition count
    /// is an error, since keys would move between partitions.
    fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), LogError>;

    fn partition_count(&self, topic: &str) -> Result<u32, LogError>;

    /// Appends records outside any step (engine requests, heartbeats). When it returns, they are
    /// durable and visible; on the local backends the whole call is atomic.
    fn append(&self, records: &[OutRecord]) -> Result<Vec<Appended>, LogError>;

    /// Up to `max` committed records of one partition from offset `from`, waiting up to `wait` for
    /// the first one when there is none yet.
    fn read(&self, topic: &str, partition: u32, from: u64, max: usize, wait: Duration)
    -> Result<Vec<Record>, LogError>;

    /// The offset after the last committed record of the partition (0 when empty).
    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError>;

    /// The group's committed position in the partition, if it ever committed one.
    fn committed_position(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, LogError>;

    /// [`EventLog::end_offset`] of every partition of `topic`, by partition. A backend whose every
    /// question is a round trip asks them together (Kafka: one request per broker, where a scrape
    /// of `/metrics` asked two per partition and took a second under load).
    fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, LogError> {
        (0..self.partition_count(topic)?).map(|partition| self.end_offset(topic, partition)).collect()
    }

    /// The offset after the last record written to each partition of `topic`, by partition,
    /// whether the transaction that wrote it is decided or not. Records from
    /// [`EventLog::end_offsets`] (the last stable offset, on Kafka) up to here are held back from
    /// every reader until their transaction ends; on Kafka this is the high watermark. A log whose
    /// writes are atomic holds none back, which the default says.
    fn written_ends(&self, topic: &str) -> Result<Vec<u64>, LogError> {
        self.end_offsets(topic)
    }

    /// [`EventLog::committed_position`] of `group` in every partition of `topic`, by partition,
    /// asked together where the backend can.
    fn committed_positions(&self, group: &str, topic: &str) -> Result<Vec<Option<u64>>, LogError> {
        (0..self.partition_count(topic)?).map(|partition| self.committed_position(group, topic, partition)).collect()
    }

    /// Joins a consumer group as a member that reads and performs atomic steps.
    fn join(&self, config: MemberConfig) -> Result<Box<dyn Member>, LogError>;

    /// A [`Follower`] of the given partitions, each from its position (`next_offset`). Everything
    /// that follows the log (read models, event streams, host agents, rebuilds) uses one.
    fn follow(&self, from: &[Position]) -> Result<Box<dyn Follower>, LogError>;
}

/// A positioned reader of committed records, outside any consumer group: it keeps its place
/// across calls and is handed records as they are committed, without re-positioning per call (on
/// Kafka, one `read_committed` consumer assigned once; on the local backends, cursors woken by the
/// log's commit notifications). It never commits positions: its owner keeps them if it must.
pub trait Follower: Send {
    /// Up to `max` committed records of the followed partitions, in offset order within each
    /// partition, waiting up to `wait` when none is ready. Records already committed are returned
    /// at once; an empty answer means none came within `wait`.
    fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError>;

    /// Follows one more partition from `position`, or moves a followed one there.
    fn seek(&mut self, position: &Position) -> Result<(), LogError>;

    /// Where each followed partition stands: the offset after the last record handed out (or the
    /// offset it was started or moved to), by topic and partition.
    fn positions(&self) -> Vec<Position>;
}

/// A member of a consumer group: reads its partitions and performs atomic steps.
///
/// A member may discard its open batch by itself: a rebalance took partitions away without a
/// clean handover, or the storage failed under it (on Kafka, a broker away long enough for the
/// coordinator to abort the open transaction on timeout; the member then answers
/// [`LogError::Storage`] until it can write again). The caller's state then holds steps the log
/// does not, so the next [`Member::poll`] reports every partition the member still owns in `lost`
/// **and** in `assigned`: drop their state, then rebuild it from the committed log, as for any new
/// assignment. Reading restarts at the committed positions, so the discarded steps' inputs come
/// again and the deterministic machines re-derive the same outputs.
pub trait Member: Send {
    /// Up to `max` records, waiting up to `timeout` when none is ready. Also commits an open batch
    /// whose delay has passed.
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Polled, LogError>;

    /// Adds one step to the open batch: `outputs` to append, `positions` to commit. The batch
    /// commits as a whole when the policy says so, or at [`Member::commit`].
    fn step(&mut self, outputs: &[OutRecord], positions: &[Position]) -> Result<(), LogError>;

    /// Commits the open batch now (used at shutdown and before handing partitions over).
    fn commit(&mut self) -> Result<(), LogError>;

    /// Discards the open batch and rewinds reading to the last committed positions.
    fn abort(&mut self) -> Result<(), LogError>;

    /// The partitions this member owns.
    fn assignment(&self) -> Vec<TopicPartition>;

    /// Steps in the open batch.
    fn pending_steps(&self) -> usize;

    /// Whether a commit costs little (one local transaction) rather than round trips to brokers.
    /// A runtime may then commit as soon as its input is drained instead of letting the batch
    /// policy's delay group more steps into the batch.
    fn commits_cheaply(&self) -> bool;
}
