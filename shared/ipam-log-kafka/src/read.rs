//! `read`: committed records of one partition from an offset, by a consumer that never commits.
//! Consumers are pooled, since creating one costs a broker connection and a metadata round trip;
//! a read that fails drops its consumer instead of returning it, so a pooled consumer is always in
//! a known state.
//!
//! A pooled consumer keeps every partition it was ever given: a read positions it with a seek and
//! resumes it, and pauses it again when done. Partitions are only ever added
//! (`incremental_assign`), never taken away, because librdkafka 2.12 aborts the process when one
//! partition is removed from an assignment twice in quick succession (a second FETCH_STOP before
//! the first is answered: confluentinc/librdkafka#5573, fixed after 2.15), which an
//! assign-and-unassign per read did under a busy caller.
//!
//! When to stop: librdkafka signals "partition EOF" when a read_committed fetch reaches the last
//! stable offset. Records that were committed before the call are returned whatever `wait` says
//! (the call waits for the fetch, bounded by [`REQUEST_TIMEOUT`]); `wait` bounds only the wait for
//! records that do not exist yet. A seek or a pause makes librdkafka drop what it had fetched
//! before, end-of-partition signals included, so nothing from an earlier read reaches this one.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipam_log::{LogError, Record};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::errors::{client_creation, storage};
use crate::record::record_of;
use crate::topics::REQUEST_TIMEOUT;

/// Idle consumers kept for reuse; more concurrent reads create more, then drop the extra ones.
const POOL_SIZE: usize = 4;

/// How long to wait for more records once some have come, before answering with those.
const DRAIN_WAIT: Duration = Duration::from_millis(100);

/// The reader consumers of one log.
pub(crate) struct Readers {
    config: ClientConfig,
    idle: Mutex<Vec<Reader>>,
}

/// A reader's client context: the end of a partition is how a read knows it is done, not an error.
/// librdkafka also reports it as a global error when it comes for a partition paused meanwhile,
/// which rdkafka's default context logs at ERROR; here it is a debug line, and every other error
/// is logged as rdkafka logs it.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::debug!(error = %error, reason, "Kafka reader reached the end of a partition.");
        } else {
            tracing::error!(target: "rdkafka::client", "librdkafka: {}: {}", error, reason);
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A pooled consumer and the partitions it holds (all paused while it is idle).
struct Reader {
    consumer: BaseConsumer<ReaderContext>,
    assigned: BTreeSet<(String, i32)>,
}

impl Readers {
    pub(crate) fn new(mut config: ClientConfig) -> Readers {
        // A read that moves a partition waits for the fetch already at the broker to come back:
        // with librdkafka's default 500 ms long poll, each look at a partition that had been read
        // to its end cost half a second. Readers fetch only while a read runs, so a short long
        // poll costs nothing when idle.
        config.set("fetch.wait.max.ms", "10");
        Readers { config, idle: Mutex::new(Vec::new()) }
    }

    /// An idle reader, preferably one that already holds `topic`/`partition`.
    fn take(&self, topic: &str, partition: i32) -> Result<Reader, LogError> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let holder = idle.iter().position(|reader| reader.assigned.contains(&(topic.to_owned(), partition)));
        match holder.map(|at| idle.swap_remove(at)).or_else(|| idle.pop()) {
            Some(reader) => Ok(reader),
            None => self.create(),
        }
    }

    fn create(&self) -> Result<Reader, LogError> {
        let consumer =
            self.config.create_with_context(ReaderContext).map_err(|e| client_creation("reader consumer", &e))?;
        Ok(Reader { consumer, assigned: BTreeSet::new() })
    }

    fn give_back(&self, reader: Reader) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL_SIZE {
            idle.push(reader);
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
        let from =
            i64::try_from(from).map_err(|_| LogError::Storage(format!("offset {from} is beyond any Kafka offset")))?;
        let mut reader = self.take(topic, partition)?;
        if let Err(error) = reader.position(topic, partition, from) {
            // A partition whose last read ran off the log's end is no longer fetching and cannot
            // be sought: a fresh consumer reads it.
            tracing::debug!(topic, partition, error = %error, "A pooled reader could not be positioned; using a new one.");
            reader = self.create()?;
            reader.position(topic, partition, from)?;
        }
        let result = read_with(&reader.consumer, topic, partition, from, max, wait);
        if result.is_ok() && reader.pause(topic, partition).is_ok() {
            self.give_back(reader);
        }
        result
    }
}

impl Reader {
    /// Makes `topic`/`partition` fetch from `from`: a seek and a resume if this consumer holds
    /// it, an `incremental_assign` if not.
    fn position(&mut self, topic: &str, partition: i32, from: i64) -> Result<(), LogError> {
        let list = one_partition(topic, partition, from)?;
        let key = (topic.to_owned(), partition);
        if self.assigned.contains(&key) {
            self.consumer
                .seek(topic, partition, Offset::Offset(from), REQUEST_TIMEOUT)
                .map_err(|e| storage("position the reader", &e))?;
            self.consumer.resume(&list).map_err(|e| storage("resume the reader", &e))
        } else {
            self.consumer.incremental_assign(&list).map_err(|e| storage("assign the reader", &e))?;
            self.assigned.insert(key);
            Ok(())
        }
    }

    /// Stops `topic`/`partition` fetching until the next read of it.
    fn pause(&self, topic: &str, partition: i32) -> Result<(), LogError> {
        let list = one_partition(topic, partition, 0)?;
        self.consumer.pause(&list).map_err(|e| storage("pause the reader", &e))
    }
}

fn one_partition(topic: &str, partition: i32, from: i64) -> Result<TopicPartitionList, LogError> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(from)).map_err(|e| storage("assign the reader", &e))?;
    Ok(list)
}

fn read_with(
    consumer: &BaseConsumer<ReaderContext>,
    topic: &str,
    partition: i32,
    from_raw: i64,
    max: usize,
    wait: Duration,
) -> Result<Vec<Record>, LogError> {
    let start = Instant::now();
    // For a read_committed client the "high" watermark is the last stable offset.
    let (low, stable_end) = consumer
        .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
        .map_err(|e| storage(&format!("watermarks of `{topic}` partition {partition}"), &e))?;
    if from_raw < low {
        return Err(LogError::Storage(format!(
            "offset {from_raw} of `{topic}` partition {partition} was deleted (retention); the partition starts at {low}"
        )));
    }
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
                    "reading `{topic}` partition {partition} from {from_raw} returned nothing within {:?} although \
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
                // Paused partitions deliver nothing; this only guards the offsets handed out.
                if message.topic() != topic || message.partition() != partition || message.offset() < next {
                    continue;
                }
                next = message.offset() + 1;
                records.extend(record_of(&message));
            }
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
