//! What the two local backends (memory and SQLite) share: the [`EventLog`] and [`Member`] logic on
//! top of a store that can append atomically, read, and hold one open batch per member.
//!
//! A local log has one member per consumer group that owns every partition of its topics (there is
//! nobody to share them with in one process). Fencing still applies: joining with a
//! `transactional_id` raises that id's epoch in the store, and a batch opened or committed under an
//! older epoch is refused, exactly as Kafka fences a zombie producer.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
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

/// How often a waiting reader looks at the store again even without a wake-up: another process
/// sharing the embedded log (a host agent, `ipam bench`) cannot reach this process's notifier.
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(2);

/// Wakes readers waiting for new records.
#[derive(Debug, Default)]
pub struct Notifier {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Notifier {
    fn notify(&self) {
        let mut generation = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        *generation += 1;
        self.changed.notify_all();
    }

    fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the generation moves past `seen` or `timeout` passes.
    fn wait(&self, seen: u64, timeout: Duration) {
        let guard = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.changed.wait_timeout_while(guard, timeout, |generation| *generation == seen);
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
            cursors: BTreeMap::new(),
            turn: 0,
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
        let appended = self.store.append(&self.place(records)?)?;
        self.notifier.notify();
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
            cursors: BTreeMap::new(),
            assignment,
            announced: false,
            batch: None,
            fenced: false,
            next_partition: 0,
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

/// The one member of its group in this process.
struct LocalMember<S> {
    store: Arc<S>,
    notifier: Arc<Notifier>,
    config: MemberConfig,
    epoch: u64,
    assignment: Vec<TopicPartition>,
    cursors: BTreeMap<TopicPartition, u64>,
    announced: bool,
    batch: Option<OpenBatch>,
    fenced: bool,
    /// Where the next poll starts, so no partition starves the others.
    next_partition: usize,
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
            self.cursors.insert(tp.clone(), position);
        }
        Ok(())
    }

    fn batch_overdue(&self) -> bool {
        self.batch.as_ref().is_some_and(|open| {
            open.steps >= self.config.batch.max_steps || open.opened.elapsed() >= self.config.batch.max_delay
        })
    }

    fn collect(&mut self, max: usize) -> Result<Vec<Record>, LogError> {
        let mut records = Vec::new();
        let count = self.assignment.len();
        for i in 0..count {
            if records.len() >= max {
                break;
            }
            let tp = &self.assignment[(self.next_partition + i) % count];
            let from = self.cursors[tp];
            let batch = self.store.read(&tp.topic, tp.partition, from, max - records.len())?;
            if let Some(last) = batch.last() {
                self.cursors.insert(tp.clone(), last.offset + 1);
            }
            records.extend(batch);
        }
        self.next_partition = (self.next_partition + 1) % count.max(1);
        Ok(records)
    }
}

impl<S: LocalStore> Member for LocalMember<S> {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Polled, LogError> {
        self.check_fenced()?;
        let deadline = Instant::now() + timeout;
        let mut polled = Polled::default();
        if !self.announced {
            self.announced = true;
            polled.assigned = self.assignment.clone();
        }
        loop {
            if self.batch_overdue() {
                self.commit()?;
            }
            let seen = self.notifier.generation();
            polled.records = self.collect(max)?;
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
        if self.batch_overdue() { self.commit() } else { Ok(()) }
    }

    fn commit(&mut self) -> Result<(), LogError> {
        self.check_fenced()?;
        let Some(open) = self.batch.take() else { return Ok(()) };
        match self.store.commit_batch(&open.batch) {
            Ok(()) => {
                self.notifier.notify();
                Ok(())
            }
            Err(error) => {
                let error = self.fail(error);
                if !self.fenced {
                    self.rewind()?;
                }
                Err(error)
            }
        }
    }

    fn abort(&mut self) -> Result<(), LogError> {
        self.batch = None;
        self.rewind()
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.assignment.clone()
    }

    fn pending_steps(&self) -> usize {
        self.batch.as_ref().map_or(0, |open| open.steps)
    }

    /// One SQLite (or in-memory) transaction: microseconds.
    fn commits_cheaply(&self) -> bool {
        true
    }
}

/// The local backends' [`Follower`]: a cursor per partition, and the log's commit notifier to
/// wake it (with [`CROSS_PROCESS_POLL`] for writers in other processes).
struct LocalFollower<S> {
    store: Arc<S>,
    notifier: Arc<Notifier>,
    cursors: BTreeMap<TopicPartition, u64>,
    /// Which partition is read first on the next call, so that a busy partition cannot starve the
    /// others when `max` is reached.
    turn: usize,
}

impl<S: LocalStore> LocalFollower<S> {
    fn collect(&mut self, max: usize) -> Result<Vec<Record>, LogError> {
        let mut records = Vec::new();
        let count = self.cursors.len();
        let partitions: Vec<TopicPartition> = self.cursors.keys().cloned().collect();
        for index in 0..count {
            if records.len() >= max {
                break;
            }
            let partition = &partitions[(self.turn + index) % count];
            let cursor = self.cursors[partition];
            let read = self.store.read(&partition.topic, partition.partition, cursor, max - records.len())?;
            if let Some(last) = read.last() {
                self.cursors.insert(partition.clone(), last.offset + 1);
            }
            records.extend(read);
        }
        self.turn = self.turn.wrapping_add(1);
        Ok(records)
    }
}

impl<S: LocalStore> Follower for LocalFollower<S> {
    fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError> {
        let deadline = Instant::now() + wait;
        loop {
            let seen = self.notifier.generation();
            let records = self.collect(max)?;
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
        self.cursors.insert(partition, position.next_offset);
        Ok(())
    }

    fn positions(&self) -> Vec<Position> {
        self.cursors.iter().map(|(tp, next_offset)| Position::at(tp, *next_offset)).collect()
    }
}
