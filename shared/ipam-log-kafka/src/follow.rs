//! `follow`: a consumer of its own, assigned the followed partitions once, at their positions, and
//! kept positioned across calls. A seek moves an assigned partition with librdkafka's seek and adds
//! a new one with `incremental_assign`; nothing is ever taken out of the assignment, since
//! librdkafka 2.12 aborts the process when a partition is removed twice in quick succession
//! (confluentinc/librdkafka#5573; see `read`). A seek takes effect when the fetch already at the
//! broker comes back (at most `fetch.wait.max.ms`, 500 ms by default): seeks are rare, and a
//! shorter long poll would make every idle follower ask the broker more often. librdkafka prefetches into its queue while the caller works, so
//! a call hands out what arrived since the last one without a round trip, and a new record reaches
//! a waiting caller as soon as its transaction commits (`read_committed`). Compare `read`, which
//! asks for the watermarks and repositions a pooled consumer on every call: fine for a one-off
//! look, ruinous for a reader that follows the log.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ipam_log::{Follower, LogError, Position, Record, TopicPartition};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::errors::{client_creation, storage};
use crate::record::record_of;
use crate::topics::REQUEST_TIMEOUT;

/// The Kafka [`Follower`].
pub(crate) struct KafkaFollower {
    consumer: BaseConsumer,
    positions: BTreeMap<TopicPartition, u64>,
}

impl KafkaFollower {
    pub(crate) fn new(config: &ClientConfig, from: &[Position]) -> Result<KafkaFollower, LogError> {
        // A follower never stops at the end of a partition, so it does not ask to be told (the
        // signals would only be logged as errors by the client's default context).
        let mut config = config.clone();
        config.set("enable.partition.eof", "false");
        let consumer: BaseConsumer = config.create().map_err(|e| client_creation("follower consumer", &e))?;
        let mut follower = KafkaFollower { consumer, positions: BTreeMap::new() };
        for position in from {
            follower.positions.insert(
                TopicPartition { topic: position.topic.clone(), partition: position.partition },
                position.next_offset,
            );
        }
        let mut assignment = TopicPartitionList::new();
        for (tp, next) in &follower.positions {
            let (partition, offset) = kafka_position(tp, *next)?;
            assignment
                .add_partition_offset(&tp.topic, partition, offset)
                .map_err(|e| storage("assign the follower", &e))?;
        }
        follower.consumer.assign(&assignment).map_err(|e| storage("assign the follower", &e))?;
        Ok(follower)
    }

    /// Takes one message or error from the consumer's queue; `Ok(None)` when none came within
    /// `timeout`.
    fn poll_one(&mut self, timeout: Duration) -> Result<Option<Record>, LogError> {
        match self.consumer.poll(timeout) {
            None => Ok(None),
            Some(Ok(message)) => {
                let partition = u32::try_from(message.partition()).unwrap_or_default();
                let offset = u64::try_from(message.offset()).unwrap_or_default();
                let tp = TopicPartition { topic: message.topic().to_owned(), partition };
                // Anything before the position was fetched before a seek moved the partition.
                match self.positions.get_mut(&tp) {
                    Some(next) if offset >= *next => *next = offset + 1,
                    _ => return Ok(None),
                }
                // A seal moves the position on and is not handed over.
                Ok(record_of(&message))
            }
            Some(Err(KafkaError::PartitionEOF(_))) => Ok(None),
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => Err(LogError::Storage(
                "a followed position lies outside its partition (deleted by retention, or past the end)".to_owned(),
            )),
            Some(Err(error @ KafkaError::MessageConsumptionFatal(_))) => {
                Err(LogError::Fatal(format!("following the log: {error}")))
            }
            Some(Err(error)) => Err(LogError::Storage(format!("following the log: {error}"))),
        }
    }
}

/// A partition and a next offset as Kafka numbers them.
fn kafka_position(tp: &TopicPartition, next: u64) -> Result<(i32, Offset), LogError> {
    let partition = i32::try_from(tp.partition)
        .map_err(|_| LogError::NoSuchPartition { topic: tp.topic.clone(), partition: tp.partition })?;
    let offset =
        i64::try_from(next).map_err(|_| LogError::Storage(format!("offset {next} is beyond any Kafka offset")))?;
    Ok((partition, Offset::Offset(offset)))
}

impl Follower for KafkaFollower {
    fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError> {
        let deadline = Instant::now() + wait;
        let mut records = Vec::new();
        while records.len() < max {
            // Wait only for the first record; then take what is already queued.
            let timeout =
                if records.is_empty() { deadline.saturating_duration_since(Instant::now()) } else { Duration::ZERO };
            match self.poll_one(timeout) {
                Ok(Some(record)) => records.push(record),
                // A skipped message or an end-of-partition signal: look again while time is left.
                Ok(None) if records.is_empty() && Instant::now() < deadline => {}
                Ok(None) => break,
                // Records already handed over stay handed over; the error comes on the next call.
                Err(error) if records.is_empty() => return Err(error),
                Err(error) => {
                    tracing::debug!(error = %error, "Follower error after some records; reporting it next time.");
                    break;
                }
            }
        }
        Ok(records)
    }

    fn seek(&mut self, position: &Position) -> Result<(), LogError> {
        let tp = TopicPartition { topic: position.topic.clone(), partition: position.partition };
        let (partition, offset) = kafka_position(&tp, position.next_offset)?;
        if self.positions.contains_key(&tp) {
            self.consumer
                .seek(&tp.topic, partition, offset, REQUEST_TIMEOUT)
                .map_err(|e| storage("move the follower", &e))?;
        } else {
            let mut added = TopicPartitionList::new();
            added.add_partition_offset(&tp.topic, partition, offset).map_err(|e| storage("assign the follower", &e))?;
            self.consumer.incremental_assign(&added).map_err(|e| storage("assign the follower", &e))?;
        }
        self.positions.insert(tp, position.next_offset);
        Ok(())
    }

    fn positions(&self) -> Vec<Position> {
        self.positions.iter().map(|(tp, next_offset)| Position::at(tp, *next_offset)).collect()
    }
}
