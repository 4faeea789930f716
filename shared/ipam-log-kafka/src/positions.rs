//! A group's positions, kept in a topic of the log beside the group coordinator's offsets, and
//! read from there: `<group>.positions`, one partition, compacted, written by the group's members
//! inside the transactions that commit their outputs.
//!
//! # Why the group coordinator's offsets are not enough
//! KIP-447 puts a member's positions in its transaction (`send_offsets_to_transaction`), and a
//! read_committed client asks for them with `require_stable`: while a transaction that commits a
//! position is undecided, the group coordinator answers `UNSTABLE_OFFSET_COMMIT`. After the broker
//! was killed (kill -9) and restarted under load, it kept answering that for minutes in about one
//! run in seventeen of `tests/it/kafka_restart.rs`, while Kafka's own tools listed every
//! transactional id as complete. The cause, seen once positions lived here: a *hanging
//! transaction*, a partition that keeps one of our transactions open behind a marker that never
//! reached it (`member.rs`, "Hanging transactions"). On `__consumer_offsets` the only cure a
//! client has is a marker of the same producer id, which the group coordinator applies to every
//! pending offset of that producer id at once; an abort there discarded positions whose
//! transaction had committed (tried: it duplicated a reservation). On a topic of our own the
//! member can write a marker that says what its transaction really did, and a reader sees plain
//! records and the log's own stable offset.
//!
//! So each transaction also writes, for every input partition it consumed, a record whose key is
//! `<topic>:<partition>` and whose value is the next offset to read there (decimal text). It is an
//! ordinary record of the transaction: visible to read_committed readers exactly when the outputs
//! it goes with are, once the transaction's markers are written, which is the log's own rule and
//! does not wait on the group coordinator. The group's offsets are still committed in the same
//! transaction: the generation check of their `TxnOffsetCommit` is what fences a zombie member
//! (KIP-447), and operators' tools show them. But positions are read here; a partition with no
//! record here (a group that committed before this topic existed) falls back to the group's
//! offsets.
//!
//! # Reading a stable position
//! A position is final only when no transaction that may still write one is undecided.
//! [`Positions::read`] takes the partition's high watermark first and waits until its last stable
//! offset reaches it: every transaction that had written a position by then is decided. A member
//! writes its positions and waits for them to be acknowledged before it sends its offsets to the
//! group (`member.rs`, `commit_batch`), so any transaction whose offsets the group coordinator
//! accepted, a zombie's before the rebalance fenced it included, has its positions below that
//! watermark: the guarantee `require_stable` gave, without its coordinator.
//!
//! Only the partition's tail is read, since every transaction of the group writes to it; all of
//! it when a wanted partition's record is older. Compaction keeps the topic to about one record
//! per partition of the group's inputs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipam_log::LogError;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;

use crate::errors::storage;
use crate::options::KafkaOptions;
use crate::read::Readers;
use crate::topics::{self, REQUEST_TIMEOUT, Stable, Topics};

/// How long a reader waits for the transactions that wrote positions to be decided; callers retry.
pub(crate) const STABLE_WAIT: Duration = Duration::from_secs(10);

/// The positions topic's only partition.
pub(crate) const PARTITION: i32 = 0;

/// How many records at the end of the positions topic are read before all of it.
const TAIL: u64 = 4096;

/// How many records one read of the topic returns at most.
const READ_BATCH: usize = 8192;

/// The positions topic of `group`.
pub(crate) fn topic_of(group: &str) -> String {
    format!("{group}.positions")
}

/// The key of `topic`/`partition`'s position.
pub(crate) fn key_of(topic: &str, partition: i32) -> String {
    format!("{topic}:{partition}")
}

/// The value of a position: the next offset to read, as decimal text.
pub(crate) fn value_of(next: i64) -> String {
    next.to_string()
}

/// Reads the groups' positions topics.
pub(crate) struct Positions {
    topics: Arc<Topics>,
    readers: Readers,
}

impl Positions {
    pub(crate) fn new(options: &KafkaOptions, topics: Arc<Topics>) -> Positions {
        let reader_group = format!("{}.positions-reader.{}", options.client_id, std::process::id());
        Positions { topics, readers: Readers::new(options.reader_config(&reader_group)) }
    }

    /// The read_committed readers the positions are read with, for a member that reads one of
    /// its own records back.
    pub(crate) fn readers(&self) -> &Readers {
        &self.readers
    }

    /// Creates `group`'s positions topic if it is missing. Compacted: only the last record of
    /// each partition's key matters.
    pub(crate) fn create(
        &self,
        admin: &AdminClient<DefaultClientContext>,
        group: &str,
        options: &KafkaOptions,
    ) -> Result<(), LogError> {
        self.topics.create_positions(admin, &topic_of(group), options)
    }

    /// The stable positions of `group` in the `wanted` partitions that have one in its positions
    /// topic (none at all when the topic does not exist), waiting up to `wait` for transactions
    /// that wrote positions to be decided.
    pub(crate) fn read(
        &self,
        group: &str,
        wanted: &[(String, i32)],
        wait: Duration,
    ) -> Result<BTreeMap<(String, i32), u64>, LogError> {
        let topic = topic_of(group);
        match self.topics.partition_count(&topic) {
            Ok(_) => {}
            Err(LogError::UnknownTopic(_)) => return Ok(BTreeMap::new()),
            Err(error) => return Err(error),
        }
        let (low, stable) = self.await_stable(&topic, wait)?;
        let keys: BTreeMap<String, (String, i32)> =
            wanted.iter().map(|(t, p)| (key_of(t, *p), (t.clone(), *p))).collect();
        let tail_from = low.max(stable.saturating_sub(TAIL));
        let mut found = self.scan(&topic, tail_from, stable, &keys)?;
        if found.len() < keys.len() && tail_from > low {
            found = self.scan(&topic, low, stable, &keys)?;
        }
        Ok(found)
    }

    /// Waits until the positions topic's last stable offset reaches the high watermark it had
    /// when the call began; returns the low watermark and that stable offset.
    fn await_stable(&self, topic: &str, wait: Duration) -> Result<(u64, u64), LogError> {
        let deadline = Instant::now() + wait;
        let (_, high) = self
            .topics
            .uncommitted_client()
            .fetch_watermarks(topic, PARTITION, REQUEST_TIMEOUT)
            .map_err(|e| storage(&format!("watermarks of `{topic}`"), &e))?;
        let Stable { low, stable, reached } =
            topics::await_stable(self.topics.metadata_client(), topic, PARTITION, high, deadline)?;
        if !reached {
            return Err(LogError::Storage(format!(
                "positions in `{topic}` not stable within {wait:?}: a transaction that wrote positions up to offset \
                 {high} is still undecided (stable up to {stable}); Kafka aborts the transaction of a producer that \
                 is gone once its transaction timeout has passed"
            )));
        }
        let offset = |value: i64| u64::try_from(value).unwrap_or_default();
        Ok((offset(low), offset(stable)))
    }

    /// The last position of each of `keys` in the records from `from` up to `to` (and any
    /// committed since).
    fn scan(
        &self,
        topic: &str,
        from: u64,
        to: u64,
        keys: &BTreeMap<String, (String, i32)>,
    ) -> Result<BTreeMap<(String, i32), u64>, LogError> {
        let mut found = BTreeMap::new();
        let mut next = from;
        while next < to {
            let records = self.readers.read(topic, PARTITION, next, READ_BATCH, Duration::ZERO)?;
            let Some(last) = records.last() else { break };
            next = last.offset + 1;
            for record in &records {
                let Some(partition) = keys.get(&record.key) else { continue };
                let position = std::str::from_utf8(&record.value).ok().and_then(|text| text.parse::<u64>().ok());
                match position {
                    Some(position) => {
                        found.insert(partition.clone(), position);
                    }
                    None => {
                        return Err(LogError::Storage(format!(
                            "`{topic}` offset {} holds no position for `{}`: {:?}",
                            record.offset,
                            record.key,
                            String::from_utf8_lossy(&record.value)
                        )));
                    }
                }
            }
        }
        Ok(found)
    }
}
