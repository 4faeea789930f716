//! The projection thread: reads the topics the read model needs from offset 0 (every partition,
//! cursors in memory) and folds them into the shared [`ReadModel`].
//!
//! Blocking log reads happen here, on a plain thread, never on an HTTP worker. The model is
//! written under a short lock per batch of records, so readers see whole batches and the positions
//! that go with them.
//!
//! It reports to the process's health board as [`COMPONENT`]: starting until it has read what the
//! log held when it began, degraded with the error while the log cannot be read (a failing disk, a
//! corrupt database, a broker away), failed if it stops on an error it cannot recover from.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ipam_core::{Envelope, Topic};
use ipam_log::{EventLog, LogError};
use ipam_runtime::{ComponentState, Health, Topics};

use crate::model::ReadModel;

/// Records read from one partition at a time.
const READ_MAX: usize = 512;
/// How long a read waits when a whole round found nothing: bounds both the delay before a record
/// on another partition is seen and how late a stop is noticed.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long to wait before asking again about a topic that does not exist yet or a failing log.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The read model's name on the health board.
pub(crate) const COMPONENT: &str = "api-read-model";

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

/// What the read model last said on the health board; it writes only changes.
struct Report {
    health: Health,
    last: Option<ComponentState>,
}

impl Report {
    fn set(&mut self, state: ComponentState) {
        if self.last.as_ref() != Some(&state) {
            self.health.set(COMPONENT, state.clone());
            self.last = Some(state);
        }
    }
}

/// Follows the log into `model` until `stop` is set, reporting to `health`. Fails only on an error
/// the log cannot recover from (and says so on the board); a missing topic or a failing store is
/// retried.
pub(crate) fn run(
    log: Arc<dyn EventLog>,
    topics: Topics,
    model: Arc<RwLock<ReadModel>>,
    stop: Arc<AtomicBool>,
    health: Health,
) -> anyhow::Result<()> {
    let mut report = Report { health, last: None };
    report.set(ComponentState::Starting("waiting for the log's topics".to_owned()));
    let result = follow(&*log, &topics, &model, &stop, &mut report);
    if let Err(error) = &result {
        report.set(ComponentState::Failed(format!("{error:#}")));
    }
    result
}

fn follow(
    log: &dyn EventLog,
    topics: &Topics,
    model: &RwLock<ReadModel>,
    stop: &AtomicBool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Some(mut cursors) = cursors(log, topics, stop, report)? else { return Ok(()) };
    report.set(ComponentState::Starting("reading the log from the beginning".to_owned()));
    {
        let mut model = model.write().unwrap_or_else(|e| e.into_inner());
        for cursor in &cursors {
            model.advance(&cursor.topic, cursor.partition, 0);
        }
    }
    let mut caught_up = false;
    let mut next_wait = 0;
    // A failing log is reported at `warn` once per outage, then at `debug`.
    let mut warned = false;
    while !stop.load(Ordering::SeqCst) {
        let round = (|| {
            let mut read = 0;
            for cursor in &mut cursors {
                read += step(log, cursor, Duration::ZERO, model)?;
            }
            if read == 0 && !cursors.is_empty() {
                let index = next_wait % cursors.len();
                next_wait += 1;
                step(log, &mut cursors[index], IDLE_WAIT, model)?;
            }
            Ok::<_, (String, LogError)>(())
        })();
        if let Err((topic, error)) = round {
            let detail = format!("cannot read topic `{topic}`: {error}");
            retry(&topic, error, &mut warned)?;
            report.set(ComponentState::Degraded(detail));
            pause(stop, RETRY_PAUSE);
            continue;
        }
        if warned {
            warned = false;
            tracing::info!("The API's read model reads the log again.");
        }
        if !caught_up && cursors.iter().all(|cursor| cursor.next >= cursor.start_end) {
            caught_up = true;
            model.write().unwrap_or_else(|e| e.into_inner()).set_caught_up();
            tracing::info!("The API's read model caught up with the log.");
        }
        if caught_up {
            report.set(ComponentState::Ok);
        } else {
            report.set(ComponentState::Starting("reading the log from the beginning".to_owned()));
        }
    }
    Ok(())
}

/// A cursor at offset 0 for every partition of the followed topics, once they exist; `None` when
/// asked to stop first.
fn cursors(
    log: &dyn EventLog,
    topics: &Topics,
    stop: &AtomicBool,
    report: &mut Report,
) -> anyhow::Result<Option<Vec<Cursor>>> {
    let mut cursors = Vec::new();
    let mut warned = false;
    for kind in FOLLOWED {
        let topic = topics.name(kind);
        let partitions = loop {
            match log.partition_count(&topic) {
                Ok(count) => break count,
                Err(error) => {
                    report.set(waiting(&topic, &error));
                    retry(&topic, error, &mut warned)?;
                }
            }
            if pause(stop, RETRY_PAUSE) {
                return Ok(None);
            }
        };
        for partition in 0..partitions {
            let start_end = loop {
                match log.end_offset(&topic, partition) {
                    Ok(end) => break end,
                    Err(error) => {
                        report.set(waiting(&topic, &error));
                        retry(&topic, error, &mut warned)?;
                    }
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

/// What to say while a topic cannot be opened: starting while it does not exist yet (the services
/// create it), degraded when the log fails.
fn waiting(topic: &str, error: &LogError) -> ComponentState {
    match error {
        LogError::UnknownTopic(_) => ComponentState::Starting(format!("waiting for topic `{topic}`")),
        error => ComponentState::Degraded(format!("cannot read topic `{topic}`: {error}")),
    }
}

/// Reads one batch of the cursor's partition into the model; answers how many records it read, or
/// the topic and the error of a failed read.
fn step(
    log: &dyn EventLog,
    cursor: &mut Cursor,
    wait: Duration,
    model: &RwLock<ReadModel>,
) -> Result<usize, (String, LogError)> {
    let records = log
        .read(&cursor.topic, cursor.partition, cursor.next, READ_MAX, wait)
        .map_err(|error| (cursor.topic.clone(), error))?;
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
        std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
    true
}
