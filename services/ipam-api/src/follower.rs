//! The projection thread: reads the topics the read model needs from offset 0 (every partition,
//! cursors in memory) and folds them into the shared [`ReadModel`].
//!
//! Blocking log reads happen here, on a plain thread, never on an HTTP worker. The model is
//! written under a short lock per batch of records, so readers see whole batches and the positions
//! that go with them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use ipam_core::{Envelope, Topic};
use ipam_log::{EventLog, LogError};
use ipam_runtime::Topics;

use crate::model::ReadModel;

/// Records read from one partition at a time.
const READ_MAX: usize = 512;
/// How long a read waits when a whole round found nothing: bounds both the delay before a record
/// on another partition is seen and how late a stop is noticed.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long to wait before asking again about a topic that does not exist yet or a failing log.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The topics the read model folds, with the contract topic each stands for.
pub(crate) const FOLLOWED: [Topic; 3] = [Topic::Reservations, Topic::DhcpServers, Topic::Hosts];

#[derive(Debug)]
struct Cursor {
    kind: Topic,
    topic: String,
    partition: u32,
    next: u64,
    /// The end offset found at start; the model is caught up once every cursor reached it.
    start_end: u64,
}

/// Follows the log into `model` until `stop` is set. Fails only on an error the log cannot recover
/// from; a missing topic or a failing store is retried.
pub(crate) fn run(
    log: Arc<dyn EventLog>,
    topics: Topics,
    model: Arc<RwLock<ReadModel>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let Some(mut cursors) = cursors(&*log, &topics, &stop)? else { return Ok(()) };
    {
        let mut model = model.write().unwrap_or_else(|e| e.into_inner());
        for cursor in &cursors {
            model.advance(&cursor.topic, cursor.partition, 0);
        }
    }
    let mut caught_up = false;
    let mut next_wait = 0;
    while !stop.load(Ordering::SeqCst) {
        let mut read = 0;
        for cursor in &mut cursors {
            read += step(&*log, cursor, Duration::ZERO, &model)?;
        }
        if read == 0 && !cursors.is_empty() {
            let index = next_wait % cursors.len();
            next_wait += 1;
            step(&*log, &mut cursors[index], IDLE_WAIT, &model)?;
        }
        if !caught_up && cursors.iter().all(|cursor| cursor.next >= cursor.start_end) {
            caught_up = true;
            model.write().unwrap_or_else(|e| e.into_inner()).set_caught_up();
            tracing::info!("The API's read model caught up with the log.");
        }
    }
    Ok(())
}

/// A cursor at offset 0 for every partition of the followed topics, once they exist; `None` when
/// asked to stop first.
fn cursors(log: &dyn EventLog, topics: &Topics, stop: &AtomicBool) -> anyhow::Result<Option<Vec<Cursor>>> {
    let mut cursors = Vec::new();
    let mut warned = false;
    for kind in FOLLOWED {
        let topic = topics.name(kind);
        let partitions = loop {
            match log.partition_count(&topic) {
                Ok(count) => break count,
                Err(error) => retry(&topic, error, &mut warned)?,
            }
            if pause(stop, RETRY_PAUSE) {
                return Ok(None);
            }
        };
        for partition in 0..partitions {
            let start_end = loop {
                match log.end_offset(&topic, partition) {
                    Ok(end) => break end,
                    Err(error) => retry(&topic, error, &mut warned)?,
                }
                if pause(stop, RETRY_PAUSE) {
                    return Ok(None);
                }
            };
            cursors.push(Cursor { kind, topic: topic.clone(), partition, next: 0, start_end });
        }
    }
    Ok(Some(cursors))
}

/// Reads one batch of the cursor's partition into the model; answers how many records it read.
fn step(log: &dyn EventLog, cursor: &mut Cursor, wait: Duration, model: &RwLock<ReadModel>) -> anyhow::Result<usize> {
    let records = match log.read(&cursor.topic, cursor.partition, cursor.next, READ_MAX, wait) {
        Ok(records) => records,
        Err(error) => {
            retry(&cursor.topic, error, &mut false)?;
            thread::sleep(RETRY_PAUSE);
            return Ok(0);
        }
    };
    if records.is_empty() {
        // Offsets may skip (Kafka's transaction markers), so "nothing more" also means "at the end".
        cursor.start_end = cursor.start_end.min(cursor.next);
        return Ok(0);
    }
    // Decode outside the lock; readers wait only for the fold.
    let decoded: Vec<Option<Envelope>> = records
        .iter()
        .map(|record| match Envelope::decode(&record.value) {
            Ok(envelope) => Some(envelope),
            Err(error) => {
                tracing::debug!(
                    topic = %record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    error = %error,
                    "The read model skipped a record that is not an event."
                );
                None
            }
        })
        .collect();
    let mut model = model.write().unwrap_or_else(|e| e.into_inner());
    for (record, envelope) in records.iter().zip(&decoded) {
        if let Some(envelope) = envelope {
            model.apply(cursor.kind, envelope);
        }
        cursor.next = record.offset + 1;
    }
    model.advance(&cursor.topic, cursor.partition, cursor.next);
    Ok(records.len())
}

/// Reports a failed log operation (at `warn` once while `warned` stays set, then at `debug`); an
/// error the log cannot recover from ends the read model.
fn retry(topic: &str, error: LogError, warned: &mut bool) -> anyhow::Result<()> {
    match error {
        LogError::UnknownTopic(_) | LogError::Storage(_) => {
            if *warned {
                tracing::debug!(topic, error = %error, "The read model still cannot read a topic; retrying.");
            } else {
                *warned = true;
                tracing::warn!(topic, error = %error, "The read model cannot read a topic; retrying.");
            }
            Ok(())
        }
        error => Err(anyhow::Error::new(error).context(format!("the read model cannot read topic `{topic}`"))),
    }
}

/// Sleeps `pause`, waking early when asked to stop. Answers whether it was.
pub(crate) fn pause(stop: &AtomicBool, pause: Duration) -> bool {
    let deadline = Instant::now() + pause;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
    true
}
