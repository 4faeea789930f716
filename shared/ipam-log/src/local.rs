//! What the two local backends (memory and SQLite) share: the [`EventLog`] and [`Member`] logic on
//! top of a store that can append atomically, read, and hold one open batch per member.
//!
//! A local log has one member per consumer group that owns every partition of its topics (there is
//! nobody to share them with in one process). Fencing still applies: joining with a
//! `transactional_id` raises that id's epoch in the store, and a batch opened or committed under an
//! older epoch is refused, exactly as Kafka fences a zombie producer.
//!
//! # Commits in flight
//! A batch the policy closes (its steps or its delay reached, at [`Member::step`] or
//! [`Member::poll`]) is written on a thread of its own while the caller goes on polling and
//! stepping into the next batch, as the Kafka member does: under load the allocator waited on
//! its commits for half of its time (the store's one writer, which the API's appends share). One
//! batch is in flight at a time, so batches reach the store in order; a failed one discards the
//! batch opened behind it too and is answered by the member's next call, after which reading
//! rewinds to the committed positions (the runtime rebuilds, as for any failed commit).
//! [`Member::commit`] and [`Member::abort`] wait for the batch in flight first, and so does
//! dropping the member, so what the runtime asks for explicitly is written when they return.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::{
    Appended, EventLog, Follower, LogError, Member, MemberConfig, OutRecord, Polled, Position, Record, TopicPartition,
    TopicSpec, partition,
};

/// A record with its partition resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub topic: String,
    pub partition: u32,
    pub key: String,
    pub value: Vec<u8>,
}

/// The storage a local log is built on.
pub trait LocalStore: Send + Sync + 'static {
    /// See [`EventLog::identity`].
    fn identity(&self) -> Result<String, LogError>;
    fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), LogError>;
    fn partition_count(&self, topic: &str) -> Result<u32, LogError>;
    /// Committed records, without waiting.
    fn read(&self, topic: &str, partition: u32, from: u64, max: usize) -> Result<Vec<Record>, LogError>;
    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError>;
    fn committed_position(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, LogError>;
    /// Appends atomically.
    fn append(&self, records: &[Placed]) -> Result<Vec<Appended>, LogError>;
    /// Raises the epoch of `transactional_id` and returns it; older holders are fenced from now on.
    fn register_producer(&self, transactional_id: &str) -> Result<u64, LogError>;
    /// Appends `outputs` and sets `group`'s `positions` in one atomic write, if `transactional_id`
    /// still has `epoch`; otherwise writes nothing and answers `Fenced`.
    fn commit_batch(&self, batch: &Batch) -> Result<(), LogError>;
}

/// Called with each batch before a [`HookedStore`] commits it; an error is the commit's, and nothing
/// of the batch is written.
pub type CommitHook = Box<dyn Fn(&Batch) -> Result<(), LogError> + Send + Sync>;

/// A store whose batch commits pass a hook first: a test makes commits fail (a torn write, a full
/// disk) or wait, with everything else the inner store's.
pub struct HookedStore<S> {
    pub inner: S,
    pub before_commit: CommitHook,
}

impl<S: std::fmt::Debug> std::fmt::Debug for HookedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedStore").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S: LocalStore> LocalStore for HookedStore<S> {
    fn identity(&self) -> Result<String, LogError> {
        self.inner.identity()
    }
    fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), LogError> {
        self.inner.create_topics(topics)
    }
    fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        self.inner.partition_count(topic)
    }
    fn read(&self, topic: &str, partition: u32, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        self.inner.read(topic, partition, from, max)
    }
    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        self.inner.end_offset(topic, partition)
    }
    fn committed_position(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, LogError> {
        self.inner.committed_position(group, topic, partition)
    }
    fn append(&self, records: &[Placed]) -> Result<Vec<Appended>, LogError> {
        self.inner.append(records)
    }
    fn register_producer(&self, transactional_id: &str) -> Result<u64, LogError> {
        self.inner.register_producer(transactional_id)
    }
    fn commit_batch(&self, batch: &Batch) -> Result<(), LogError> {
        (self.before_commit)(batch)?;
        self.inner.commit_batch(batch)
    }
}

/// A member's batch of steps, buffered until it commits in one write. Holding nothing in the
/// store meanwhile means an open batch never blocks other writers, and a member that dies or is
/// fenced leaves nothing behind.
#[derive(Debug, Clone)]
pub struct Batch {
    pub transactional_id: String,
    pub epoch: u64,
    pub group: String,
    pub outputs: Vec<Placed>,
    pub positions: Vec<Position>,
}

/// How often a waiting reader looks at every partition of the store again without a wake-up:
/// another process sharing the embedded log (a test, `ipam bench`) cannot reach this process's
/// notifier.
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(2);

/// A reader woken by this process's writes reads the partitions written to; under a steady stream
/// of them it is never left waiting for [`CROSS_PROCESS_POLL`], so it still reads every partition
/// at least this often, for other processes' records.
const EVERY_PARTITION_AT_LEAST: Duration = Duration::from_millis(20);

/// Wakes readers waiting for new records, and says which partitions this process wrote to since a
/// reader last looked, so that a woken reader reads those only. A read of a partition is an SQLite
/// query of 60 to 90 µs on the development machine: the allocator read its 8 partitions, the host
/// agent 16 and the API 17 at every wake-up, about 1 ms each, three times on a lone start's way
/// from its POST to its `dhcp-host=` line (`ipam bench`).
#[derive(Debug, Default)]
pub struct Notifier {
    written: Mutex<Written>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Written {
    /// Raised at every write.
    generation: u64,
    /// The generation of the last write to each partition this process wrote to, by topic (looked
    /// up by a record's topic without a copy of its name: a batch holds thousands of records).
    partitions: BTreeMap<String, BTreeMap<u32, u64>>,
}

impl Notifier {
    /// Says that records were written to `partitions` (committed, readable) and wakes the readers.
    fn notify<'a>(&self, partitions: impl IntoIterator<Item = (&'a str, u32)>) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.generation += 1;
        let generation = written.generation;
        for (topic, partition) in partitions {
            match written.partitions.get_mut(topic) {
                Some(by_partition) => {
                    by_partition.insert(partition, generation);
                }
                None => {
                    written.partitions.insert(topic.to_owned(), BTreeMap::from([(partition, generation)]));
                }
            }
        }
        self.changed.notify_all();
    }

    fn generation(&self) -> u64 {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).generation
    }

    /// Which of `partitions` were written to after generation `seen`.
    fn written_since<'a>(
        &self,
        seen: u64,
        partitions: impl IntoIterator<Item = &'a TopicPartition>,
    ) -> Vec<&'a TopicPartition> {
        let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let written_at = |tp: &TopicPartition| written.partitions.get(tp.topic.as_str())?.get(&tp.partition).copied();
        partitions.into_iter().filter(|tp| written_at(tp).is_some_and(|at| at > seen)).collect()
    }

    /// Waits until the generation moves past `seen` or `timeout` passes.
    fn wait(&self, seen: u64, timeout: Duration) {
        let guard = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.changed.wait_timeout_while(guard, timeout, |written| written.generation == seen);
    }
}

/// A reader's place in each partition it reads (a member's or a follower's), and which partitions
/// its next collect must read: every one at the first, after a seek or rewind, when this process
/// wrote nothing since the last collect (the reader waited [`CROSS_PROCESS_POLL`] in vain, or
/// calls without waiting: other processes' records) and at least every
/// [`EVERY_PARTITION_AT_LEAST`]; otherwise those this process wrote to since the last collect, and
/// those the last one did not read to their end (it had `max`).
#[derive(Debug, Default)]
struct Cursors {
    next: BTreeMap<TopicPartition, u64>,
    /// Which partition is read first on the next collect, so that a busy partition cannot starve
    /// the others when `max` is reached.
    turn: usize,
    /// The notifier's generation before the last collect, and when every partition was last read;
    /// `None` when the next collect must read every partition.
    read: Option<(u64, Instant)>,
    /// Partitions the last collects left with records possibly unread.
    unfinished: BTreeSet<TopicPartition>,
}

impl Cursors {
    /// Reading `partition` goes on from `next_offset`.
    fn set(&mut self, partition: TopicPartition, next_offset: u64) {
        self.next.insert(partition, next_offset);
        self.read = None;
    }

    fn positions(&self) -> Vec<Position> {
        self.next.iter().map(|(tp, next_offset)| Position::at(tp, *next_offset)).collect()
    }

    /// Up to `max` records from the partitions due, taking turns.
    fn collect<S: LocalStore + ?Sized>(
        &mut self,
        store: &S,
        notifier: &Notifier,
        max: usize,
    ) -> Result<Vec<Record>, LogError> {
        let generation = notifier.generation();
        let partitions: Vec<TopicPartition> = self.next.keys().cloned().collect();
        // Until this collect ends well, the next one reads everything (`read` is `None`).
        // `due`: the partitions written since the last collect and those it left unfinished, with
        // when every partition was last read; `None` when every partition is due now.
        let due = match self.read.take() {
            Some((seen, all_read)) if generation != seen && all_read.elapsed() < EVERY_PARTITION_AT_LEAST => {
                let mut due: BTreeSet<&TopicPartition> =
                    notifier.written_since(seen, &partitions).into_iter().collect();
                due.extend(partitions.iter().filter(|tp| self.unfinished.contains(*tp)));
                Some((due, all_read))
            }
            _ => None,
        };
        let started = Instant::now();
        let mut records = Vec::new();
        let count = partitions.len();
        for index in 0..count {
            let tp = &partitions[(self.turn + index) % count];
            if due.as_ref().is_some_and(|(due, _)| !due.contains(tp)) {
                continue;
            }
            if records.len() >= max {
                self.unfinished.insert(tp.clone());
                continue;
            }
            let wanted = max - records.len();
            let read = store.read(&tp.topic, tp.partition, self.next[tp], wanted)?;
            if read.len() >= wanted {
                self.unfinished.insert(tp.clone());
            } else {
                self.unfinished.remove(tp);
            }
            if let Some(last) = read.last() {
                self.next.insert(tp.clone(), last.offset + 1);
            }
            records.extend(read);
        }
        self.turn = self.turn.wrapping_add(1);
        let all_read = due.map_or(started, |(_, all_read)| all_read);
        self.read = Some((generation, all_read));
        Ok(records)
    }
}

/// An [`EventLog`] over a local store. Clones share the same log.
#[derive(Debug)]
pub struct LocalLog<S> {
    store: Arc<S>,
    notifier: Arc<Notifier>,
}

impl<S> Clone for LocalLog<S> {
    fn clone(&self) -> Self {
        LocalLog { store: Arc::clone(&self.store), notifier: Arc::clone(&self.notifier) }
    }
}

impl<S: LocalStore> LocalLog<S> {
    /// A log over `store`. Public so that a test can wrap a store (to inject storage failures, say).
    pub fn over(store: S) -> LocalLog<S> {
        LocalLog { store: Arc::new(store), notifier: Arc::new(Notifier::default()) }
    }

    fn place(&self, records: &[OutRecord]) -> Result<Vec<Placed>, LogError> {
        place(&*self.store, records)
    }

    /// The store beneath, for a backend's own tests.
    #[cfg(test)]
    pub(crate) fn store(&self) -> &S {
        &self.store
    }
}

fn place<S: LocalStore + ?Sized>(store: &S, records: &[OutRecord]) -> Result<Vec<Placed>, LogError> {
    let mut counts = BTreeMap::new();
    records
        .iter()
        .map(|record| {
            let partitions = match counts.get(&record.topic) {
                Some(count) => *count,
                None => *counts.entry(record.topic.clone()).or_insert(store.partition_count(&record.topic)?),
            };
            Ok(Placed {
                topic: record.topic.clone(),
                partition: partition::for_key(record.key.as_bytes(), partitions),
                key: record.key.clone(),
                value: record.value.clone(),
            })
        })
        .collect()
}

impl<S: LocalStore> EventLog for LocalLog<S> {
    fn identity(&self) -> Result<String, LogError> {
        self.store.identity()
    }

    fn follow(&self, from: &[Position]) -> Result<Box<dyn Follower>, LogError> {
        let mut follower = LocalFollower {
            store: Arc::clone(&self.store),
            notifier: Arc::clone(&self.notifier),
            cursors: Cursors::default(),
        };
        for position in from {
            follower.seek(position)?;
        }
        Ok(Box::new(follower))
    }

    fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), LogError> {
        self.store.create_topics(topics)
    }

    fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        self.store.partition_count(topic)
    }

    fn append(&self, records: &[OutRecord]) -> Result<Vec<Appended>, LogError> {
        let placed = self.place(records)?;
        let appended = self.store.append(&placed)?;
        self.notifier.notify(placed.iter().map(|record| (record.topic.as_str(), record.partition)));
        Ok(appended)
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, LogError> {
        let deadline = Instant::now() + wait;
        loop {
            let seen = self.notifier.generation();
            let records = self.store.read(topic, partition, from, max)?;
            let now = Instant::now();
            if !records.is_empty() || now >= deadline {
                return Ok(records);
            }
            self.notifier.wait(seen, (deadline - now).min(CROSS_PROCESS_POLL));
        }
    }

    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        self.store.end_offset(topic, partition)
    }

    fn committed_position(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, LogError> {
        self.store.committed_position(group, topic, partition)
    }

    fn join(&self, config: MemberConfig) -> Result<Box<dyn Member>, LogError> {
        if config.batch.max_steps == 0 {
            return Err(LogError::Config("batch.max_steps must be at least 1".to_owned()));
        }
        let mut assignment = Vec::new();
        for topic in &config.topics {
            let partitions = self.store.partition_count(topic)?;
            assignment.extend((0..partitions).map(|partition| TopicPartition { topic: topic.clone(), partition }));
        }
        let epoch = self.store.register_producer(&config.transactional_id)?;
        let mut member = LocalMember {
            store: Arc::clone(&self.store),
            notifier: Arc::clone(&self.notifier),
            config,
            epoch,
            cursors: Cursors::default(),
            assignment,
            announced: false,
            batch: None,
            in_flight: None,
            fenced: false,
        };
        member.rewind()?;
        Ok(Box::new(member))
    }
}

struct OpenBatch {
    batch: Batch,
    opened: Instant,
    steps: usize,
}

/// A batch being written on a thread of its own (see "Commits in flight" above).
struct InFlight {
    written: mpsc::Receiver<Result<(), LogError>>,
    steps: usize,
}

impl InFlight {
    /// The write's outcome, once it is done.
    fn wait(self) -> Result<(), LogError> {
        self.written.recv().unwrap_or_else(|_| Err(died()))
    }

    /// The write's outcome if it is done already.
    fn outcome(&self) -> Option<Result<(), LogError>> {
        match self.written.try_recv() {
            Ok(result) => Some(result),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(died())),
        }
    }
}

fn died() -> LogError {
    LogError::Storage("the commit thread died".to_owned())
}

/// Commits `batch` to `store` and wakes the readers of the partitions it wrote.
fn write_batch<S: LocalStore>(store: &S, notifier: &Notifier, batch: &Batch) -> Result<(), LogError> {
    store.commit_batch(batch)?;
    notifier.notify(batch.outputs.iter().map(|record| (record.topic.as_str(), record.partition)));
    Ok(())
}

/// The one member of its group in this process.
struct LocalMember<S> {
    store: Arc<S>,
    notifier: Arc<Notifier>,
    config: MemberConfig,
    epoch: u64,
    assignment: Vec<TopicPartition>,
    cursors: Cursors,
    announced: bool,
    batch: Option<OpenBatch>,
    in_flight: Option<InFlight>,
    fenced: bool,
}

impl<S: LocalStore> LocalMember<S> {
    fn check_fenced(&self) -> Result<(), LogError> {
        if self.fenced { Err(LogError::Fenced(self.config.transactional_id.clone())) } else { Ok(()) }
    }

    fn fail(&mut self, error: LogError) -> LogError {
        if matches!(error, LogError::Fenced(_)) {
            self.fenced = true;
            self.batch = None;
        }
        error
    }

    /// Reading restarts at the committed positions.
    fn rewind(&mut self) -> Result<(), LogError> {
        for tp in &self.assignment {
            let position = self.store.committed_position(&self.config.group, &tp.topic, tp.partition)?.unwrap_or(0);
            self.cursors.set(tp.clone(), position);
        }
        Ok(())
    }

    /// Writes the open batch on a thread of its own, once the one in flight is written.
    fn start_commit(&mut self) -> Result<(), LogError> {
        self.settle()?;
        let Some(open) = self.batch.take() else { return Ok(()) };
        let (store, notifier) = (Arc::clone(&self.store), Arc::clone(&self.notifier));
        let (answer, written) = mpsc::channel();
        let (batch, steps) = (open.batch, open.steps);
        let job = move || {
            let _ = answer.send(write_batch(&*store, &notifier, &batch));
        };
        match std::thread::Builder::new().name("ipam-log-commit".to_owned()).spawn(job) {
            Ok(_) => {
                self.in_flight = Some(InFlight { written, steps });
                Ok(())
            }
            // The batch is lost with the closure: a failed commit, which the runtime rebuilds after.
            Err(error) => self.after_commit(Err(LogError::Storage(format!("cannot start a commit thread: {error}")))),
        }
    }

    /// Waits for the batch in flight, if any; its failure is this call's.
    fn settle(&mut self) -> Result<(), LogError> {
        let Some(in_flight) = self.in_flight.take() else { return Ok(()) };
        self.after_commit(in_flight.wait())
    }

    /// Answers the batch in flight's failure if it is written already; waits for nothing.
    fn settle_if_written(&mut self) -> Result<(), LogError> {
        let Some(result) = self.in_flight.as_ref().and_then(InFlight::outcome) else { return Ok(()) };
        self.in_flight = None;
        self.after_commit(result)
    }

    /// Writes the open batch on the caller's thread.
    fn commit_now(&mut self) -> Result<(), LogError> {
        let Some(open) = self.batch.take() else { return Ok(()) };
        let result = write_batch(&*self.store, &self.notifier, &open.batch);
        self.after_commit(result)
    }

    /// After a failed commit, the steps opened since are void too, and reading starts again from
    /// the committed positions (unless fenced: then nothing more is done).
    fn after_commit(&mut self, result: Result<(), LogError>) -> Result<(), LogError> {
        let Err(error) = result else { return Ok(()) };
        self.batch = None;
        let error = self.fail(error);
        if !self.fenced {
            self.rewind()?;
        }
        Err(error)
    }

    fn batch_overdue(&self) -> bool {
        self.batch.as_ref().is_some_and(|open| {
            open.steps >= self.config.batch.max_steps || open.opened.elapsed() >= self.config.batch.max_delay
        })
    }
}

impl<S: LocalStore> Member for LocalMember<S> {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Polled, LogError> {
        self.check_fenced()?;
        self.settle_if_written()?;
        let deadline = Instant::now() + timeout;
        let mut polled = Polled::default();
        if !self.announced {
            self.announced = true;
            polled.assigned = self.assignment.clone();
        }
        loop {
            if self.batch_overdue() {
                self.start_commit()?;
            }
            let seen = self.notifier.generation();
            polled.records = self.cursors.collect(&*self.store, &self.notifier, max)?;
            let now = Instant::now();
            if !polled.records.is_empty() || now >= deadline {
                return Ok(polled);
            }
            let mut wait = (deadline - now).min(CROSS_PROCESS_POLL);
            if let Some(open) = &self.batch {
                wait = wait.min(self.config.batch.max_delay.saturating_sub(open.opened.elapsed()));
            }
            self.notifier.wait(seen, wait);
        }
    }

    fn step(&mut self, outputs: &[OutRecord], positions: &[Position]) -> Result<(), LogError> {
        self.check_fenced()?;
        self.settle_if_written()?;
        let placed = place(&*self.store, outputs)?;
        let (config, epoch) = (&self.config, self.epoch);
        let open = self.batch.get_or_insert_with(|| OpenBatch {
            batch: Batch {
                transactional_id: config.transactional_id.clone(),
                epoch,
                group: config.group.clone(),
                outputs: Vec::new(),
                positions: Vec::new(),
            },
            opened: Instant::now(),
            steps: 0,
        });
        open.batch.outputs.extend(placed);
        open.batch.positions.extend_from_slice(positions);
        open.steps += 1;
        if self.batch_overdue() { self.start_commit() } else { Ok(()) }
    }

    fn commit(&mut self) -> Result<(), LogError> {
        self.check_fenced()?;
        self.settle()?;
        self.commit_now()
    }

    fn abort(&mut self) -> Result<(), LogError> {
        // Written or not, the batch in flight is behind the positions reading rewinds to.
        drop(self.in_flight.take().map(InFlight::wait));
        self.batch = None;
        self.rewind()
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.assignment.clone()
    }

    fn pending_steps(&self) -> usize {
        self.batch.as_ref().map_or(0, |open| open.steps) + self.in_flight.as_ref().map_or(0, |f| f.steps)
    }

    /// One SQLite (or in-memory) transaction: microseconds.
    fn commits_cheaply(&self) -> bool {
        true
    }
}

impl<S> Drop for LocalMember<S> {
    /// The batch in flight is written before the member is gone (the open one is discarded).
    fn drop(&mut self) {
        drop(self.in_flight.take().map(InFlight::wait));
    }
}

/// The local backends' [`Follower`]: a cursor per partition, and the log's commit notifier to
/// wake it (with [`CROSS_PROCESS_POLL`] for writers in other processes).
struct LocalFollower<S> {
    store: Arc<S>,
    notifier: Arc<Notifier>,
    cursors: Cursors,
}

impl<S: LocalStore> Follower for LocalFollower<S> {
    fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError> {
        let deadline = Instant::now() + wait;
        loop {
            let seen = self.notifier.generation();
            let records = self.cursors.collect(&*self.store, &self.notifier, max)?;
            let now = Instant::now();
            if !records.is_empty() || now >= deadline || max == 0 {
                return Ok(records);
            }
            self.notifier.wait(seen, (deadline - now).min(CROSS_PROCESS_POLL));
        }
    }

    fn seek(&mut self, position: &Position) -> Result<(), LogError> {
        let count = self.store.partition_count(&position.topic)?;
        if position.partition >= count {
            return Err(LogError::NoSuchPartition { topic: position.topic.clone(), partition: position.partition });
        }
        let partition = TopicPartition { topic: position.topic.clone(), partition: position.partition };
        self.cursors.set(partition, position.next_offset);
        Ok(())
    }

    fn positions(&self) -> Vec<Position> {
        self.cursors.positions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::{BatchPolicy, Record};

    /// What a test's commit hook does: hold commits until the gate opens, and fail them while
    /// told to.
    #[derive(Default)]
    struct Gate {
        state: Mutex<GateState>,
        changed: Condvar,
    }

    #[derive(Default)]
    struct GateState {
        open: bool,
        fail: bool,
        /// Batch commits begun.
        begun: usize,
    }

    impl Gate {
        fn set(&self, change: impl FnOnce(&mut GateState)) {
            change(&mut self.state.lock().unwrap());
            self.changed.notify_all();
        }

        fn wait_until(&self, what: &str, done: impl Fn(&GateState) -> bool) {
            let state = self.state.lock().unwrap();
            let (_state, timeout) =
                self.changed.wait_timeout_while(state, Duration::from_secs(20), |state| !done(state)).unwrap();
            assert!(!timeout.timed_out(), "timed out waiting until {what}");
        }

        fn pass(&self) -> Result<(), LogError> {
            self.set(|state| state.begun += 1);
            let state = self.state.lock().unwrap();
            let (state, waited) =
                self.changed.wait_timeout_while(state, Duration::from_secs(20), |state| !state.open).unwrap();
            if waited.timed_out() {
                return Err(LogError::Storage("the test never opened the gate".to_owned()));
            }
            if state.fail { Err(LogError::Storage("the disk is full".to_owned())) } else { Ok(()) }
        }
    }

    type GateStore = HookedStore<MemoryStore>;

    fn out(topic: &str, value: &str) -> OutRecord {
        OutRecord { topic: topic.to_owned(), key: "k".to_owned(), value: value.as_bytes().to_vec() }
    }

    fn next(record: &Record) -> Position {
        Position { topic: record.topic.clone(), partition: record.partition, next_offset: record.offset + 1 }
    }

    /// A log whose commits pass a [`Gate`], with three records on `in`, and a member of it.
    fn setup(max_steps: usize) -> (LocalLog<GateStore>, Arc<Gate>, Box<dyn Member>, Vec<Record>) {
        let gate = Arc::new(Gate::default());
        let before_commit = {
            let gate = Arc::clone(&gate);
            Box::new(move |_: &Batch| gate.pass())
        };
        let log = LocalLog::over(HookedStore { inner: MemoryStore::default(), before_commit });
        let topics = ["in", "out"].map(|name| TopicSpec { name: name.to_owned(), partitions: 1 });
        log.create_topics(&topics).unwrap();
        log.append(&[out("in", "1"), out("in", "2"), out("in", "3")]).unwrap();
        let batch = BatchPolicy { max_steps, max_delay: Duration::from_secs(600) };
        let config = MemberConfig { group: "g".into(), topics: vec!["in".into()], transactional_id: "t".into(), batch };
        let mut member = log.join(config).unwrap();
        let records = member.poll(10, Duration::from_secs(5)).unwrap().records;
        assert_eq!(records.len(), 3);
        (log, gate, member, records)
    }

    fn values(log: &LocalLog<GateStore>) -> Vec<String> {
        let records = log.store.read("out", 0, 0, 100).unwrap();
        records.into_iter().map(|record| String::from_utf8(record.value).unwrap()).collect()
    }

    #[test]
    fn a_closed_batch_is_written_while_the_member_steps_on_and_commit_waits_for_it() {
        let (log, gate, mut member, records) = setup(2);
        member.step(&[out("out", "a")], &[next(&records[0])]).unwrap();
        // The second step closes the batch: it is written on its own thread, held at the gate.
        member.step(&[out("out", "b")], &[next(&records[1])]).unwrap();
        gate.wait_until("the batch is being written", |gate| gate.begun == 1);
        // The member steps on meanwhile; nothing of the batch in flight is visible yet.
        member.step(&[out("out", "c")], &[next(&records[2])]).unwrap();
        assert_eq!(member.pending_steps(), 3);
        assert!(values(&log).is_empty());
        gate.set(|gate| gate.open = true);
        member.commit().unwrap();
        assert_eq!(values(&log), ["a", "b", "c"], "batches written whole and in order");
        assert_eq!(log.committed_position("g", "in", 0).unwrap(), Some(3));
        assert_eq!(member.pending_steps(), 0);
    }

    #[test]
    fn a_batch_that_fails_in_flight_is_answered_by_the_next_call_and_reading_rewinds() {
        let (log, gate, mut member, records) = setup(1);
        gate.set(|gate| {
            gate.open = true;
            gate.fail = true;
        });
        member.step(&[out("out", "a")], &[next(&records[0])]).unwrap();
        assert!(matches!(member.commit(), Err(LogError::Storage(_))), "the failure is the next call's");
        assert!(values(&log).is_empty());
        gate.set(|gate| gate.fail = false);
        // Reading starts again at the committed position: the first record comes again.
        let again = member.poll(10, Duration::from_secs(5)).unwrap().records;
        assert_eq!(again.first().map(|record| record.offset), Some(0));
        member.step(&[out("out", "a")], &[next(&again[0])]).unwrap();
        member.commit().unwrap();
        assert_eq!(values(&log), ["a"]);
    }
}
