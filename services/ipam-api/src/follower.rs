//! The projection thread: follows the topics the read model needs from offset 0 (every partition,
//! through the log's one positioned [`ipam_log::Follower`]) and folds them into the shared
//! [`ReadModel`].
//!
//! Blocking log reads happen here, on a plain thread, never on an HTTP worker. The model is
//! written under a short lock per batch of records, so readers see whole batches and the positions
//! that go with them.
//!
//! It reports to the process's health board as [`COMPONENT`]: starting until it has read what the
//! log held when it began, degraded with the error while the log cannot be read (a failing disk, a
//! corrupt database, a broker away), failed if it stops on an error it cannot recover from.
//!
//! Given a snapshot store ([`Snapshots`]), it starts from the read model's snapshot when one
//! matches the log (see [`crate::snapshot`]), and writes one at most every `every` while it is
//! caught up and the model changed, and when it stops.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ipam_core::{Envelope, Topic};
use ipam_log::{Backlog, EventLog, LogError, Position, Record};
use ipam_runtime::{ComponentState, Health, SnapshotStore, Topics};

use crate::model::ReadModel;
use crate::snapshot::Restored;

/// Records taken from the follower at a time.
const READ_MAX: usize = 512;
/// How long the follower waits when nothing is ready. A record that commits meanwhile ends the
/// wait at once; the bound only says how late a stop is noticed.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long to wait before asking again about a topic that does not exist yet or a failing log.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The read model's name on the health board.
pub(crate) const COMPONENT: &str = "api-read-model";

/// Where and how often the read model is snapshotted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshots {
    pub store: SnapshotStore,
    /// At most one snapshot per this long (and one when the API stops).
    pub every: Duration,
}

/// The topics the read model folds, with the contract topic each stands for.
pub(crate) const FOLLOWED: [Topic; 3] = [Topic::Reservations, Topic::DhcpServers, Topic::Hosts];

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
    snapshots: Option<Snapshots>,
) -> anyhow::Result<()> {
    let mut report = Report { health, last: None };
    report.set(ComponentState::Starting("waiting for the log's topics".to_owned()));
    let result = follow(&*log, &topics, &model, &stop, &mut report, snapshots.as_ref());
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
    snapshots: Option<&Snapshots>,
) -> anyhow::Result<()> {
    let names: Vec<String> = FOLLOWED.iter().map(|kind| topics.name(*kind)).collect();
    let kinds: BTreeMap<String, Topic> = FOLLOWED.iter().map(|kind| (topics.name(*kind), *kind)).collect();
    let label = names.join(", ");
    let mut warned = false;
    // The topics are made by the deciding services: wait for them.
    // The size of the last snapshot (read or written): the room the next one's encoding starts with.
    let (from, mut snapshot_size, mut backlog, mut follower) = loop {
        let started = Backlog::from_zero(log, &names).and_then(|from| {
            let backlog = Backlog::at_start(log, &names)?;
            let (from, snapshot_size) = restore(log, snapshots, model, from)?;
            let follower = log.follow(&from)?;
            Ok((from, snapshot_size, backlog, follower))
        });
        match started {
            Ok(started) => break started,
            Err(error) => {
                report.set(waiting(&label, &error));
                retry(&label, error, &mut warned)?;
            }
        }
        if pause(stop, RETRY_PAUSE) {
            return Ok(());
        }
    };
    report.set(ComponentState::Starting("reading the log from the beginning".to_owned()));
    {
        let mut model = model.write().unwrap_or_else(|e| e.into_inner());
        for position in &from {
            model.advance(&position.topic, position.partition, position.next_offset);
        }
    }
    let mut caught_up = false;
    let (mut changed, mut last_snapshot) = (false, Instant::now());
    while !stop.load(Ordering::SeqCst) {
        let round = follower.next(READ_MAX, IDLE_WAIT).and_then(|records| {
            changed |= !records.is_empty();
            fold(&records, &kinds, model);
            if caught_up { Ok(true) } else { backlog.update(log, &*follower, records.is_empty()) }
        });
        let read = match round {
            Ok(read) => read,
            Err(error) => {
                let detail = format!("cannot read {label}: {error}");
                retry(&label, error, &mut warned)?;
                report.set(ComponentState::Degraded(detail));
                pause(stop, RETRY_PAUSE);
                continue;
            }
        };
        if warned {
            warned = false;
            tracing::info!("The API's read model reads the log again.");
        }
        if !caught_up && read {
            caught_up = true;
            model.write().unwrap_or_else(|e| e.into_inner()).set_caught_up();
            tracing::info!("The API's read model caught up with the log.");
        }
        if caught_up {
            report.set(ComponentState::Ok);
            if let Some(snapshots) = snapshots
                && changed
                && last_snapshot.elapsed() >= snapshots.every
            {
                snapshot_size = save(log, snapshots, &follower.positions(), model, snapshot_size);
                (changed, last_snapshot) = (false, Instant::now());
            }
        } else {
            report.set(ComponentState::Starting("reading the log from the beginning".to_owned()));
        }
    }
    // A snapshot of a model that never caught up would be no better than the last one.
    if let Some(snapshots) = snapshots
        && caught_up
        && changed
    {
        save(log, snapshots, &follower.positions(), model, snapshot_size);
    }
    Ok(())
}

/// The positions to follow from: those of the read model's snapshot, when there is one that
/// matches the log (the model is then the snapshot's), else `from_zero`; and the snapshot's size (0
/// without one). Partitions the snapshot does not name are read from zero.
fn restore(
    log: &dyn EventLog,
    snapshots: Option<&Snapshots>,
    model: &RwLock<ReadModel>,
    from_zero: Vec<Position>,
) -> Result<(Vec<Position>, usize), LogError> {
    let Some(snapshots) = snapshots else { return Ok((from_zero, 0)) };
    let started = Instant::now();
    let loaded = crate::snapshot::load(&snapshots.store, log).map_err(|error| LogError::Fatal(error.to_string()))?;
    let Some(Restored { model: restored, positions, size }) = loaded else { return Ok((from_zero, 0)) };
    let restored_positions: BTreeMap<(String, u32), u64> =
        positions.into_iter().map(|p| ((p.topic, p.partition), p.next_offset)).collect();
    let from = from_zero
        .into_iter()
        .map(|p| {
            let next_offset = restored_positions.get(&(p.topic.clone(), p.partition)).copied().unwrap_or(0);
            Position { next_offset, ..p }
        })
        .collect();
    let events = restored.processed();
    *model.write().unwrap_or_else(|e| e.into_inner()) = restored;
    tracing::info!(
        events,
        elapsed_ms = started.elapsed().as_millis(),
        "The API's read model starts from its snapshot."
    );
    Ok((from, size))
}

/// Writes the read model's snapshot, its encoding given about the room of `size` (the last
/// one's); answers its size (`size` again when it failed). A failure is reported and the API goes
/// on without it.
fn save(
    log: &dyn EventLog,
    snapshots: &Snapshots,
    positions: &[Position],
    model: &RwLock<ReadModel>,
    size: usize,
) -> usize {
    let started = Instant::now();
    // A little more room than last time: the model grows between snapshots.
    let prepared = crate::snapshot::prepare(log, positions, size + size / 16);
    let prepared_ms = started.elapsed().as_millis();
    let encoded = prepared.and_then(|prepared| {
        // Readers go on meanwhile; only folding waits, and only for the encoding: the file is
        // written after the lock is let go (with a million reservations, 558 MB).
        let model = model.read().unwrap_or_else(|e| e.into_inner());
        crate::snapshot::encode_snapshot(prepared, &model)
    });
    let encode_ms = started.elapsed().as_millis() - prepared_ms;
    let written = encoded.and_then(|state| {
        let bytes = state.len();
        crate::snapshot::write(&snapshots.store, state).map(|()| bytes)
    });
    match written {
        Ok(bytes) => {
            tracing::debug!(
                prepared_ms,
                encode_ms,
                elapsed_ms = started.elapsed().as_millis(),
                bytes,
                "Wrote the read model's snapshot."
            );
            bytes
        }
        Err(error) => {
            tracing::warn!(error = %error, "Could not write the read model's snapshot; carrying on without it.");
            size
        }
    }
}

/// What to say while the topics cannot be opened: starting while they do not exist yet (the
/// services create them), degraded when the log fails.
fn waiting(topics: &str, error: &LogError) -> ComponentState {
    match error {
        LogError::UnknownTopic(_) => ComponentState::Starting(format!("waiting for the topics {topics}")),
        error => ComponentState::Degraded(format!("cannot read {topics}: {error}")),
    }
}

/// Folds records into the model and moves its positions past them.
fn fold(records: &[Record], kinds: &BTreeMap<String, Topic>, model: &RwLock<ReadModel>) {
    if records.is_empty() {
        return;
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
        if let (Some(envelope), Some(kind)) = (envelope, kinds.get(&record.topic)) {
            model.apply_at(*kind, Some(record.offset), envelope);
        }
        model.advance(&record.topic, record.partition, record.offset + 1);
    }
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
