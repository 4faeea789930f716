//! `append`: records produced outside any transaction by one shared idempotent producer, each to the
//! partition `partition::for_key` chose, and the call returns once every record has its delivery
//! report, i.e. is written to all in-sync replicas (acks=all). The delivery reports arrive on
//! rdkafka's polling thread; each carries the index of its record so the caller can answer in
//! input order.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ipam_log::{Appended, LogError};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

/// A record with its partition chosen.
pub(crate) struct Placed<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Where the delivery reports of one `append` call meet.
#[derive(Default)]
struct Waiter {
    state: Mutex<Reports>,
    changed: Condvar,
}

#[derive(Default)]
struct Reports {
    outcomes: Vec<Option<Result<(i32, i64), KafkaError>>>,
}

impl Waiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Reports> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The delivery opaque of one record: its call and its index in the call.
pub(crate) struct Slot {
    waiter: Arc<Waiter>,
    index: usize,
}

/// Routes delivery reports to the waiting `append` calls.
pub(crate) struct AppendContext;

impl ClientContext for AppendContext {}

impl ProducerContext for AppendContext {
    type DeliveryOpaque = Box<Slot>;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: Box<Slot>) {
        let outcome = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, _)) => Err(error.clone()),
        };
        let mut reports = slot.waiter.lock();
        if let Some(entry) = reports.outcomes.get_mut(slot.index) {
            *entry = Some(outcome);
        }
        slot.waiter.changed.notify_all();
    }
}

pub(crate) type AppendProducer = ThreadedProducer<AppendContext>;

/// Produces `records` and waits for all their delivery reports, at most `wait`.
pub(crate) fn append(
    producer: &AppendProducer,
    records: &[Placed<'_>],
    wait: Duration,
) -> Result<Vec<Appended>, LogError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + wait;
    let waiter = Arc::new(Waiter::default());
    waiter.lock().outcomes = vec![None; records.len()];
    let mut refused = None;
    for (index, record) in records.iter().enumerate() {
        let mut slot = Box::new(Slot { waiter: Arc::clone(&waiter), index });
        loop {
            let message = BaseRecord::with_opaque_to(record.topic, slot)
                .partition(record.partition)
                .key(record.key)
                .payload(record.value);
            match producer.send(message) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                    if Instant::now() < deadline =>
                {
                    // The local queue is full of earlier records: wait for some to be delivered.
                    slot = returned.delivery_opaque;
                    let reports = waiter.lock();
                    drop(waiter.changed.wait_timeout(reports, Duration::from_millis(20)));
                }
                Err((error, _)) => {
                    refused = Some((index, error));
                    break;
                }
            }
        }
        if refused.is_some() {
            break;
        }
    }
    // Wait for the reports of everything that was enqueued, even after a refusal, so that the
    // caller learns the fate of every record it may retry.
    let sent = refused.as_ref().map_or(records.len(), |(index, _)| *index);
    let mut reports = waiter.lock();
    loop {
        let arrived = reports.outcomes[..sent].iter().all(Option::is_some);
        let now = Instant::now();
        if arrived || now >= deadline {
            break;
        }
        reports = waiter.changed.wait_timeout(reports, deadline - now).map_or_else(|e| e.into_inner().0, |r| r.0);
    }
    if let Some((index, error)) = refused {
        return Err(produce_error(producer, records[index].topic, records[index].partition, &error));
    }
    let mut appended = Vec::with_capacity(records.len());
    for (record, outcome) in records.iter().zip(&reports.outcomes) {
        match outcome {
            Some(Ok((partition, offset))) => appended.push(Appended {
                partition: u32::try_from(*partition).unwrap_or_default(),
                offset: u64::try_from(*offset).unwrap_or_default(),
            }),
            Some(Err(error)) => return Err(produce_error(producer, record.topic, record.partition, error)),
            None => {
                return Err(LogError::Storage(format!(
                    "no delivery report for a record to `{}` partition {} within {wait:?}",
                    record.topic, record.partition
                )));
            }
        }
    }
    Ok(appended)
}

fn produce_error(producer: &AppendProducer, topic: &str, partition: i32, error: &KafkaError) -> LogError {
    if let Some((code, message)) = producer.client().fatal_error() {
        return LogError::Fatal(format!("the idempotent producer failed ({code}): {message}"));
    }
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            LogError::UnknownTopic(topic.to_owned())
        }
        Some(RDKafkaErrorCode::UnknownPartition) => LogError::NoSuchPartition {
            topic: topic.to_owned(),
            partition: u32::try_from(partition).unwrap_or_default(),
        },
        _ => LogError::Storage(format!("append to `{topic}` partition {partition} failed: {error}")),
    }
}
