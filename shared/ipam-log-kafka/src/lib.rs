//! The Kafka backend of the event log: [`KafkaLog`] implements [`ipam_log::EventLog`] on a Kafka
//! cluster through rdkafka (librdkafka, built from the bundled sources). It is the only crate that
//! links rdkafka, so the rest of the system builds and tests without a broker.
//!
//! # How the semantics of `ipam_log` map onto Kafka
//! - Partitioning: every record is produced to the partition [`ipam_log::partition::for_key`]
//!   chose (Kafka's murmur2), never to one librdkafka picks (its default partitioner differs).
//! - `append` uses one idempotent producer (acks=all) and returns when every record is
//!   acknowledged. Unlike the local backends it is **not atomic across records**: if it fails,
//!   some records may have been written (their partitions keep order), and a retry may write
//!   them again.
//! - Readers see committed records only (`isolation.level=read_committed`), and never the
//!   *seals* members write to end hanging transactions (`record.rs`): a key `ipam.seal` with no
//!   value, which consumers of the topics outside this project skip too.
//! - Offsets grow within a partition but **skip**: each transaction writes a commit or abort
//!   marker that takes an offset, and aborted records keep theirs, invisibly.
//! - [`EventLog::end_offset`] is the **last stable offset** (LSO): the offset below which every
//!   transaction is decided, as a read_committed `ListOffsets` reports it. It is at most the high
//!   watermark, and lower while a transaction that wrote to the partition is open. It may lie
//!   past the last committed record (a marker, or aborted records, sit in between), so reading
//!   from `last.offset + 1 < end_offset` can legitimately return nothing.
//! - A [`Member`] is a consumer in the group (cooperative-sticky assignment) plus a
//!   transactional producer with the member's `transactional_id`. A batch of steps is one Kafka
//!   transaction: its outputs and its positions (`send_offsets_to_transaction`, KIP-447) commit
//!   together. Joining calls `init_transactions`, which fences any older producer with the same
//!   id and aborts its open transaction; the older member then answers [`LogError::Fenced`] and
//!   leaves the group so its partitions move on.
//! - Rebalances: a revoked partition's open batch is committed before the partition is handed
//!   over (`revoked`); a lost partition's open batch is aborted (`lost`). When an open batch is
//!   aborted by a rebalance, the partitions the member keeps are reported in `lost` **and** in
//!   `assigned` of the same [`ipam_log::Polled`], since their state may hold aborted steps: the
//!   runtime applies `revoked` and `lost` before `assigned` (drop the state, then rebuild it).
//! - A broker away (restarted, or a coordinator moving): a transaction the coordinator aborted on
//!   timeout meanwhile (librdkafka reports it as fenced; `member.rs` says how it is told from a
//!   real fence), or one that cannot be ended, discards the open batch and re-creates the
//!   producer; the member answers [`LogError::Storage`] until it can write again, and then reports
//!   its partitions in `lost` and `assigned` as above. Nothing ends the member but a real fence or
//!   a fatal error that a new producer does not cure.
//! - Positions: besides the group's offsets, every transaction writes the positions it commits to
//!   the group's own compacted topic `<group>.positions`, and `committed_position` and the members
//!   read them there (`positions.rs`: the group coordinator withheld them for minutes after a
//!   broker restart). A partition with no record there falls back to the group's offsets.
//! - Every method blocks, on broker round trips of up to 30 s, or up to the transaction timeout
//!   for transactional calls: the runtime calls them off its actor threads.

mod append;
mod errors;
mod follow;
mod member;
mod options;
mod positions;
mod reach;
mod read;
mod record;
mod topics;

pub use member::KafkaMember;
pub use options::{KafkaOptions, KafkaSecurity, RESERVED_KEYS, SaslMechanism, SecurityProtocol};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ipam_log::{
    Appended, EventLog, Follower, LogError, Member, MemberConfig, OutRecord, Position, Record, TopicSpec, partition,
};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::append::{AppendContext, AppendProducer, Placed};
use crate::errors::{client_creation, storage};
use crate::positions::Positions;
use crate::read::Readers;
use crate::topics::{REQUEST_TIMEOUT, Topics};

/// The event log on a Kafka cluster. Share it (`Arc`) rather than connecting twice: it holds a
/// producer, an admin client and a few consumers, each with its broker connections.
pub struct KafkaLog {
    options: KafkaOptions,
    topics: Arc<Topics>,
    admin: AdminClient<DefaultClientContext>,
    producer: AppendProducer,
    readers: Readers,
    positions: Arc<Positions>,
}

impl fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaLog").field("options", &self.options).finish_non_exhaustive()
    }
}

impl KafkaLog {
    /// Creates the clients and checks that the cluster answers a metadata request.
    pub fn connect(options: KafkaOptions) -> Result<KafkaLog, LogError> {
        options.validate()?;
        // Fails fast on a refusal (wrong password, untrusted certificate) that librdkafka retries.
        reach::reach(&options)?;
        let metadata: BaseConsumer =
            options.metadata_config().create().map_err(|e| client_creation("metadata consumer", &e))?;
        let admin = options.base_config().create().map_err(|e| client_creation("admin client", &e))?;
        let producer = options
            .append_producer_config()
            .create_with_context(AppendContext)
            .map_err(|e| client_creation("producer", &e))?;
        let reader_group = format!("{}.reader.{}", options.client_id, std::process::id());
        let readers = Readers::new(options.reader_config(&reader_group));
        let mut uncommitted_config = options.consumer_config();
        uncommitted_config.set("isolation.level", "read_uncommitted");
        let uncommitted: BaseConsumer =
            uncommitted_config.create().map_err(|e| client_creation("watermark consumer", &e))?;
        let topics = Arc::new(Topics::new(metadata, uncommitted));
        let positions = Arc::new(Positions::new(&options, Arc::clone(&topics)));
        Ok(KafkaLog { topics, admin, producer, readers, positions, options })
    }

    /// The options the log was connected with.
    pub fn options(&self) -> &KafkaOptions {
        &self.options
    }
}

/// How long one `committed_position` call waits for a stable answer; callers retry.
const POSITION_WAIT: Duration = positions::STABLE_WAIT;

/// How long the second look that explains a failed `committed_position` waits.
const POSITION_PROBE_WAIT: Duration = Duration::from_secs(3);

/// The committed position of the group that `config` names, asked by a consumer made for it.
fn fetch_committed(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    wait: Duration,
) -> Result<Result<Option<u64>, KafkaError>, LogError> {
    let consumer: BaseConsumer = config.create().map_err(|e| client_creation("offsets consumer", &e))?;
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(topic, partition);
    let committed = match consumer.committed_offsets(wanted, wait) {
        Ok(committed) => committed,
        Err(error) => return Ok(Err(error)),
    };
    let offset = committed.find_partition(topic, partition).map(|element| element.offset());
    Ok(Ok(match offset {
        Some(Offset::Offset(next)) => u64::try_from(next).ok(),
        _ => None,
    }))
}

/// The latest offset of every partition of `topic` as `client` sees it ([`topics::latest_offsets`]),
/// by partition; `what` names that offset in the error of a partition whose leader did not answer.
fn latest_of_topic(topics: &Topics, client: &BaseConsumer, topic: &str, what: &str) -> Result<Vec<u64>, LogError> {
    let count = i32::try_from(topics.partition_count(topic)?).unwrap_or(i32::MAX);
    let latest = topics::latest_offsets(client, (0..count).map(|partition| (topic, partition)))?;
    (0..count)
        .map(|partition| match latest.get(&(topic.to_owned(), partition)) {
            Some(offset) => Ok(u64::try_from(*offset).unwrap_or_default()),
            None => {
                Err(LogError::Storage(format!("{what} of `{topic}` partition {partition}: its leader did not answer")))
            }
        })
        .collect()
}

impl EventLog for KafkaLog {
    fn identity(&self) -> Result<String, LogError> {
        // The cluster id is made when the cluster is formatted (KRaft) and kept for its life.
        self.admin
            .inner()
            .fetch_cluster_id(REQUEST_TIMEOUT)
            .map(|cluster_id| format!("kafka-{cluster_id}"))
            .ok_or_else(|| LogError::Storage("the Kafka cluster did not tell its cluster id".to_owned()))
    }

    fn follow(&self, from: &[Position]) -> Result<Box<dyn Follower>, LogError> {
        let group = format!("{}.follower.{}", self.options.client_id, std::process::id());
        Ok(Box::new(follow::KafkaFollower::new(&self.options.reader_config(&group), from)?))
    }

    fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), LogError> {
        self.topics.create(&self.admin, topics, &self.options)
    }

    fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        self.topics.partition_count(topic)
    }

    fn append(&self, records: &[OutRecord]) -> Result<Vec<Appended>, LogError> {
        let mut placed = Vec::with_capacity(records.len());
        for record in records {
            let count = self.topics.partition_count(&record.topic)?;
            let chosen = partition::for_key(record.key.as_bytes(), count);
            let chosen = i32::try_from(chosen)
                .map_err(|_| LogError::NoSuchPartition { topic: record.topic.clone(), partition: chosen })?;
            placed.push(Placed {
                topic: &record.topic,
                partition: chosen,
                key: record.key.as_bytes(),
                value: &record.value,
            });
        }
        append::append(&self.producer, &placed, Duration::from_millis(self.options.delivery_wait_ms()))
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, LogError> {
        let partition = self.topics.check_partition(topic, partition)?;
        self.readers.read(topic, partition, from, max, wait)
    }

    /// The last stable offset; see the crate doc for how it differs from the local backends.
    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        let p = self.topics.check_partition(topic, partition)?;
        let (_, stable) = self
            .topics
            .metadata_client()
            .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
            .map_err(|e| storage(&format!("end offset of `{topic}` partition {partition}"), &e))?;
        Ok(u64::try_from(stable).unwrap_or_default())
    }

    /// Every partition's last stable offset, in one [`topics::latest_offsets`].
    fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, LogError> {
        latest_of_topic(&self.topics, self.topics.metadata_client(), topic, "end offset")
    }

    /// Every partition's high watermark, in one [`topics::latest_offsets`] of a read_uncommitted
    /// client (which is answered the high watermark where a read_committed one is answered the
    /// last stable offset).
    fn written_ends(&self, topic: &str) -> Result<Vec<u64>, LogError> {
        latest_of_topic(&self.topics, self.topics.uncommitted_client(), topic, "high watermark")
    }

    /// Every partition's position in one read of the positions topic; the group coordinator is
    /// asked only for partitions the topic holds none of (as [`EventLog::committed_position`]).
    fn committed_positions(&self, group: &str, topic: &str) -> Result<Vec<Option<u64>>, LogError> {
        let count = i32::try_from(self.topics.partition_count(topic)?).unwrap_or(i32::MAX);
        self.positions_of(group, topic, (0..count).collect())
    }

    /// The position the group's positions topic holds (`positions.rs` says why there), once every
    /// transaction that wrote positions is decided; for a partition it holds none of, the group
    /// coordinator's, as [`KafkaLog::group_offset`] asks.
    fn committed_position(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, LogError> {
        let p = self.topics.check_partition(topic, partition)?;
        Ok(self.positions_of(group, topic, vec![p])?.pop().flatten())
    }

    fn join(&self, config: MemberConfig) -> Result<Box<dyn Member>, LogError> {
        self.positions.create(&self.admin, &config.group, &self.options)?;
        Ok(Box::new(KafkaMember::join(&self.options, Arc::clone(&self.topics), Arc::clone(&self.positions), config)?))
    }
}

impl KafkaLog {
    /// The group's positions in `partitions` of `topic`, in their order: one read of the positions
    /// topic for them all, and the group coordinator's offset ([`KafkaLog::group_offset`]) for a
    /// partition the topic holds none of.
    fn positions_of(&self, group: &str, topic: &str, partitions: Vec<i32>) -> Result<Vec<Option<u64>>, LogError> {
        let wanted: Vec<(String, i32)> =
            partitions.into_iter().map(|partition| (topic.to_owned(), partition)).collect();
        let mut found = self.positions.read(group, &wanted, POSITION_WAIT)?;
        wanted
            .into_iter()
            .map(|key| match found.remove(&key) {
                Some(position) => Ok(Some(position)),
                None => self.group_offset(group, topic, key.1),
            })
            .collect()
    }

    /// The group coordinator's committed offset: a fresh consumer of the group per call (nothing
    /// cached can point at a coordinator that moved or restarted), asking with a bounded wait. As a
    /// read_committed client it asks for a stable position (KIP-447 `require_stable`): while a
    /// transaction that commits the group's position is undecided, the coordinator answers
    /// `UNSTABLE_OFFSET_COMMIT` and librdkafka asks again until the wait ends. The error then says
    /// which of the two held it back: the coordinator not answering at all, or an undecided
    /// transaction.
    fn group_offset(&self, group: &str, topic: &str, partition: i32) -> Result<Option<u64>, LogError> {
        let stable = self.options.offsets_config(group);
        match fetch_committed(&stable, topic, partition, POSITION_WAIT)? {
            Ok(position) => Ok(position),
            Err(error) => {
                let mut unstable = self.options.offsets_config(group);
                unstable.set("isolation.level", "read_uncommitted");
                let why = match fetch_committed(&unstable, topic, partition, POSITION_PROBE_WAIT)? {
                    Ok(pending) => format!(
                        "the group coordinator answers, but a transaction that commits this position is still \
                         undecided (position with it: {pending:?}); Kafka withholds the position from read_committed \
                         readers until that transaction's commit or abort marker is written, and aborts the \
                         transaction of a producer that is gone once its transaction timeout has passed"
                    ),
                    Err(_) => "the group coordinator does not answer (a broker away, or a coordinator still loading \
                               the group's offsets)"
                        .to_owned(),
                };
                Err(LogError::Storage(format!(
                    "committed position of group `{group}` in `{topic}` partition {partition} not available within \
                     {POSITION_WAIT:?}: {error}; {why}"
                )))
            }
        }
    }
}
