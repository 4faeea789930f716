//! `read`: committed records of one partition from an offset, by a consumer that is assigned just
//! that partition and never commits. Consumers are pooled, since creating one costs a broker
//! connection and a metadata round trip; a read that fails drops its consumer instead of returning
//! it, so a pooled consumer is always in a known state.
//!
//! When to stop: librdkafka signals "partition EOF" when a read_committed fetch reaches the last
//! stable offset. Records that were committed before the call are returned whatever `wait` says
//! (the call waits for the fetch, bounded by [`REQUEST_TIMEOUT`]); `wait` bounds only the wait for
//! records that do not exist yet.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipam_log::{LogError, Record};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::errors::{client_creation, storage};
use crate::topics::REQUEST_TIMEOUT;

/// Idle consumers kept for reuse; more concurrent reads create more, then drop the extra ones.
const POOL_SIZE: usize = 4;

/// How long to wait for more records once some have come, before answering with those.
const DRAIN_WAIT: Duration = Duration::from_millis(100);

/// The reader consumers of one log.
pub(crate) struct Readers {
    config: ClientConfig,
    idle: Mutex<Vec<BaseConsumer>>,
}

impl Readers {
    pub(crate) fn new(config: ClientConfig) -> Readers {
        Readers { config, idle: Mutex::new(Vec::new()) }
    }

    fn take(&self) -> Result<BaseConsumer, LogError> {
        if let Some(consumer) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(consumer);
        }
        self.config.create().map_err(|e| client_creation("reader consumer", &e))
    }

    fn give_back(&self, consumer: BaseConsumer) {
        if consumer.unassign().is_err() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL_SIZE {
            idle.push(consumer);
        }
    }

    /// Up to `max` committed records of `topic`/`partition` from `from` (see the module doc).
    pub(crate) fn read(
        &self,
        topic: &str,
        partition: i32,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, LogError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let consumer = self.take()?;
        let result = read_with(&consumer, topic, partition, from, max, wait);
        if result.is_ok() {
            self.give_back(consumer);
        }
        result
    }
}

fn read_with(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: u64,
    max: usize,
    wait: Duration,
) -> Result<Vec<Record>, LogError> {
    let start = Instant::now();
    let from_raw =
        i64::try_from(from).map_err(|_| LogError::Storage(format!("offset {from} is beyond any Kafka offset")))?;
    // For a read_committed client the "high" watermark is the last stable offset.
    let (low, stable_end) = consumer
        .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
        .map_err(|e| storage(&format!("watermarks of `{topic}` partition {partition}"), &e))?;
    if from_raw < low {
        return Err(LogError::Storage(format!(
            "offset {from} of `{topic}` partition {partition} was deleted (retention); the partition starts at {low}"
        )));
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(from_raw))
        .map_err(|e| storage("assign the reader", &e))?;
    consumer.assign(&assignment).map_err(|e| storage("assign the reader", &e))?;

    let wait_deadline = start + wait;
    let hard_deadline = start + wait.max(REQUEST_TIMEOUT);
    // Nothing committed is left to fetch: only new records can come.
    let mut at_end = from_raw >= stable_end;
    let mut records: Vec<Record> = Vec::new();
    let mut next = from_raw;
    while records.len() < max {
        let now = Instant::now();
        if at_end && (!records.is_empty() || now >= wait_deadline) {
            break;
        }
        if now >= hard_deadline {
            if records.is_empty() {
                return Err(LogError::Storage(format!(
                    "reading `{topic}` partition {partition} from {from} returned nothing within {:?} although \
                     committed records end at {stable_end}",
                    hard_deadline - start
                )));
            }
            break;
        }
        let mut timeout = if at_end { wait_deadline - now } else { hard_deadline - now };
        if !records.is_empty() {
            timeout = timeout.min(DRAIN_WAIT);
        }
        match consumer.poll(timeout) {
            None if !records.is_empty() && timeout == DRAIN_WAIT => break,
            None => {}
            Some(Ok(message)) => {
                // Anything else is left over from an earlier assignment of this pooled consumer.
                if message.topic() != topic || message.partition() != partition || message.offset() < next {
                    continue;
                }
                next = message.offset() + 1;
                records.push(Record {
                    topic: topic.to_owned(),
                    partition: u32::try_from(partition).unwrap_or_default(),
                    offset: u64::try_from(message.offset()).unwrap_or_default(),
                    key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
                    value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                });
            }
            // A stale end-of-partition signal from an earlier assignment can only make this read
            // stop early with fewer records, never return wrong ones.
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => at_end = true,
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                // `from` is past the end of the log: there is nothing there, now or soon.
                break;
            }
            Some(Err(error @ KafkaError::MessageConsumptionFatal(_))) => {
                return Err(LogError::Fatal(format!("reading `{topic}` partition {partition}: {error}")));
            }
            Some(Err(error)) => {
                tracing::warn!(topic, partition, error = %error, "Kafka reader reported an error; retrying.");
            }
        }
    }
    Ok(records)
}
