//! The partition driver: one consumer-group member on one blocking thread, feeding a set of
//! partition states (see [`Machines`]) and performing atomic steps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ipam_core::{Envelope, Event, EventId, NetworkId};
use ipam_log::dead_letter::{Ingested, ingest};
use ipam_log::{BatchPolicy, EventLog, LogError, Member, MemberConfig, OutRecord, Position, Record, TopicPartition};

use crate::health::{ComponentState, Health};
use crate::snapshot::{Anchor, Snapshot, SnapshotStore};
use crate::topics::Topics;

/// One input for the machines.
// Almost every input is an event; boxing it would cost an allocation per input to shrink the rare
// refusal.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An event to apply.
    Event(Envelope),
    /// An engine request refused before any machine saw it (a readable request with a bad field):
    /// nothing to apply, but its id joins its network's memory of request ids, so that a retry of
    /// it is answered once.
    Refused { network_id: NetworkId, id: EventId },
}

/// What one input produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Its outputs, each for its own topic.
    pub outputs: Vec<Event>,
    /// Events for `ipam.hosts` besides (the allocator forwards facts to placement).
    pub forwarded: Vec<Event>,
    /// False for a retry (an input id the state already holds): a refused request's rejection is
    /// written only when this is true.
    pub fresh: bool,
}

/// The state machines a driver feeds, partition by partition.
pub trait Machines: Send + Sync {
    /// A partition's state read from its snapshot, not installed yet.
    type Decoded: Send;
    /// Reads a snapshot's state. It takes `&self` only, so that the driver reads the snapshots of
    /// several partitions at once, one per core: with a million reservations, reading them is
    /// most of a rebuild.
    fn decode(&self, snapshot: &[u8]) -> anyhow::Result<Self::Decoded>;
    /// Installs a partition's state: a decoded snapshot's, or empty.
    fn restore(&mut self, partition: &TopicPartition, state: Option<Self::Decoded>) -> anyhow::Result<()>;
    /// Forgets a partition's state (it moved to another member).
    fn forget(&mut self, partition: &TopicPartition);
    /// Applies `inputs` (each with its partition) and answers what each produced, in the same
    /// order. Inputs of different states (the allocator's networks) may be applied in parallel;
    /// each state sees its own inputs in order, so the answers are those of applying one by one.
    fn apply(&mut self, inputs: &[(TopicPartition, Input)]) -> anyhow::Result<Vec<Applied>>;
    /// The canonical snapshot of a partition's state.
    fn snapshot(&mut self, partition: &TopicPartition) -> anyhow::Result<Vec<u8>>;
}

/// What the driver does with one polled record once the machines have answered.
enum Planned {
    /// The input at this index of the batch given to the machines.
    Input(usize),
    /// A refused request (the input at this index) and its rejection, written if it is fresh.
    Refused(usize, OutRecord),
    /// An unusable record's dead letter.
    DeadLetter(OutRecord),
}

/// How a driver runs.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// `allocator` or `placement`: names snapshots and is the `source` of outputs (`ipam/<name>`).
    pub name: String,
    pub group: String,
    pub transactional_id: String,
    pub input_topic: String,
    pub batch: BatchPolicy,
    pub snapshot_every_records: u64,
    pub snapshot_every: Duration,
    /// A snapshot waits at least this many times as long as the last one took
    /// ([`SNAPSHOT_SPACING`] in the services; 0 where snapshots must come by count alone, as in
    /// the simulation, whose runs are decided by their script and not by timing).
    pub snapshot_spacing: u32,
}

impl DriverConfig {
    /// Whether a snapshot is due, `inputs` applied and `since` elapsed since the last one ended,
    /// which took `took`: after `snapshot_every_records` inputs or `snapshot_every`, whichever
    /// comes first, but never sooner than `snapshot_spacing` times the last one's own time.
    ///
    /// A snapshot stops the driver while every state is encoded and written, and costs what the
    /// state weighs, not what came since: with a million reservations, a snapshot every 50,000
    /// inputs took 0.8 to 1.3 s and more than half of the allocator's time deciding a backlog
    /// (`ipam bench --recovery`, its "Took snapshots" lines). Spacing them by their own cost keeps
    /// them to a tenth of the time at most; the replay they spare grows with the load instead.
    pub fn snapshot_due(&self, inputs: u64, since: Duration, took: Duration) -> bool {
        let due = inputs >= self.snapshot_every_records || (inputs > 0 && since >= self.snapshot_every);
        due && since >= took * self.snapshot_spacing
    }
}

/// The services' `snapshot_spacing`: at most a tenth of a driver's time goes to snapshots (see
/// [`DriverConfig::snapshot_due`]).
pub const SNAPSHOT_SPACING: u32 = 9;

/// How long a replay may go without a record before it is taken for a failing log.
const REPLAY_STALL: Duration = Duration::from_secs(60);
/// Records asked of one poll. A poll that returns fewer found the input drained, and its batch
/// commits at once.
const POLL_MAX: usize = 1000;
/// Records read ahead per batch while replaying: larger batches than a live poll's, since replay
/// only applies them.
const REPLAY_BATCH: usize = 8192;

/// Counts drivers that have rebuilt their first assignment: the process is ready when all have.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicUsize,
}

impl Readiness {
    pub fn ready_count(&self) -> usize {
        self.ready.load(Ordering::SeqCst)
    }
}

/// One member of a consumer group feeding [`Machines`].
pub struct Driver<M> {
    log: Arc<dyn EventLog>,
    topics: Topics,
    config: DriverConfig,
    machines: M,
    snapshots: SnapshotStore,
    member: Box<dyn Member>,
    /// The partitions the member has given this driver and not taken back, rebuilt or not: what a
    /// rebuild after a failure must rebuild. A partition whose rebuild failed is here but not in
    /// `next_offsets`, so the next try rebuilds it too.
    owned: BTreeSet<TopicPartition>,
    /// The next input offset of each owned partition whose state is rebuilt (the position its next
    /// step commits).
    next_offsets: BTreeMap<TopicPartition, u64>,
    /// The offset of the last input applied to each owned partition's state: a snapshot names
    /// that record, so it is only ever applied to the log it was taken from.
    last_applied: BTreeMap<TopicPartition, u64>,
    since_snapshot: u64,
    /// When the last snapshot ended, and how long it took.
    last_snapshot: Instant,
    last_snapshot_took: Duration,
    health: Health,
    /// Consecutive storage failures, for the back-off before the next try.
    failures: u32,
    /// A storage failure left the states possibly ahead of the log: rebuild before going on.
    must_rebuild: bool,
}

impl<M> std::fmt::Debug for Driver<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("config", &self.config).field("owned", &self.next_offsets).finish()
    }
}

impl<M: Machines> Driver<M> {
    pub fn new(
        log: Arc<dyn EventLog>,
        topics: Topics,
        config: DriverConfig,
        machines: M,
        snapshots: SnapshotStore,
        health: Health,
    ) -> anyhow::Result<Driver<M>> {
        health.set(&config.name, ComponentState::Starting("joining the consumer group".to_owned()));
        let member = log
            .join(MemberConfig {
                group: config.group.clone(),
                topics: vec![config.input_topic.clone()],
                transactional_id: config.transactional_id.clone(),
                batch: config.batch,
            })
            .with_context(|| format!("{} joining group {}", config.name, config.group))?;
        Ok(Driver {
            log,
            topics,
            config,
            machines,
            snapshots,
            member,
            owned: BTreeSet::new(),
            next_offsets: BTreeMap::new(),
            last_applied: BTreeMap::new(),
            since_snapshot: 0,
            last_snapshot: Instant::now(),
            last_snapshot_took: Duration::ZERO,
            health,
            failures: 0,
            must_rebuild: false,
        })
    }

    fn snapshot_name(&self, partition: &TopicPartition) -> String {
        format!("{}-{}-{}", self.config.name, partition.topic, partition.partition)
    }

    /// Runs until `stop` is set (then commits, snapshots and returns) or the log fails for good.
    ///
    /// A storage failure (a full disk, a broker away) is not the end: the open batch is discarded,
    /// every owned partition is rebuilt from the committed log, and the driver tries again after a
    /// back-off, reporting itself degraded meanwhile. Fencing and fatal errors end the driver.
    pub fn run(mut self, stop: &AtomicBool, readiness: &Readiness) -> anyhow::Result<()> {
        let mut announced = false;
        let result = loop {
            if stop.load(Ordering::SeqCst) {
                break self.stop();
            }
            match self.turn() {
                Ok(()) => {
                    if self.failures > 0 {
                        tracing::info!(driver = %self.config.name, "The log answers again; carrying on.");
                        self.failures = 0;
                    }
                    self.health.set(&self.config.name, ComponentState::Ok);
                    crate::metrics::for_driver(&self.config.name).round_done(&self.next_offsets);
                    if !announced {
                        announced = true;
                        readiness.ready.fetch_add(1, Ordering::SeqCst);
                        tracing::info!(driver = %self.config.name, partitions = self.next_offsets.len(), "Ready.");
                    }
                }
                Err(error) if is_transient(&error) && !stop.load(Ordering::SeqCst) => self.recover(&error, stop),
                Err(error) => break Err(error),
            }
        };
        if let Err(error) = &result {
            self.health.set(&self.config.name, ComponentState::Failed(format!("{error:#}")));
        }
        result
    }

    /// Commits the open batch and snapshots every owned partition.
    fn stop(&mut self) -> anyhow::Result<()> {
        if self.must_rebuild {
            // The states may hold steps the log does not: neither commit nor snapshot them.
            self.member.abort().context("discarding the open batch")?;
            return Ok(());
        }
        self.member.commit().context("committing the last batch")?;
        self.take_snapshots()?;
        tracing::info!(driver = %self.config.name, "Stopped cleanly.");
        Ok(())
    }

    /// One round: poll, rebuild what was newly assigned, apply and step every polled record, and
    /// snapshot when it is due. After a storage failure (an error it answers) the states may hold
    /// steps the log does not, so the next round first discards the open batch and rebuilds every
    /// owned partition from the committed log.
    pub fn turn(&mut self) -> anyhow::Result<()> {
        let result = self.round();
        if let Err(error) = &result {
            if is_transient(error) {
                self.must_rebuild = true;
            }
            // The member hands out records of a partition it never reported: it owns it, so the
            // rebuild takes it in rather than meeting its records again at every round.
            if let Some(not_rebuilt) = error.chain().find_map(|cause| cause.downcast_ref::<NotRebuilt>()) {
                self.owned.insert(not_rebuilt.partition.clone());
            }
        }
        result
    }

    fn round(&mut self) -> anyhow::Result<()> {
        if self.must_rebuild {
            self.rebuild_all()?;
        }
        let mut polled = self.member.poll(POLL_MAX, Duration::from_millis(100)).context("polling")?;
        for partition in polled.revoked.iter().chain(&polled.lost) {
            self.owned.remove(partition);
            self.machines.forget(partition);
            self.next_offsets.remove(partition);
            self.last_applied.remove(partition);
        }
        // Owned from now on, even if the rebuild below fails: the rebuild after the failure
        // (`rebuild_all`) then rebuilds them too.
        self.owned.extend(polled.assigned.iter().cloned());
        if !polled.assigned.is_empty() {
            // A rebuild can take a while (on Kafka, until a dead member's transaction times
            // out); an open batch must not outlive its transaction timeout meanwhile.
            self.member.commit().context("committing before a rebuild")?;
        }
        self.rebuild(&polled.assigned)?;
        self.check_positions(&mut polled.records)?;
        let metrics = crate::metrics::for_driver(&self.config.name);
        let started = Instant::now();
        let (plans, inputs) = plan(&polled.records);
        let applied = self.machines.apply(&inputs)?;
        metrics.count_rejections(&applied);
        for (record, plan) in polled.records.iter().zip(plans) {
            let partition = TopicPartition { topic: record.topic.clone(), partition: record.partition };
            let outputs = match plan {
                Planned::Input(index) => match &inputs[index].1 {
                    Input::Event(input) => self.encode(input, &applied[index]),
                    Input::Refused { .. } => Vec::new(),
                },
                Planned::Refused(index, rejection) if applied[index].fresh => {
                    metrics.count_rejection_record(&rejection);
                    vec![self.prefixed(rejection)]
                }
                Planned::Refused(..) => Vec::new(),
                Planned::DeadLetter(letter) => {
                    tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset,
                                   "Dead-lettering an unusable record.");
                    vec![self.prefixed(letter)]
                }
            };
            let position =
                Position { topic: record.topic.clone(), partition: record.partition, next_offset: record.offset + 1 };
            self.member.step(&outputs, &[position]).context("performing a step")?;
            metrics.observe(started.elapsed());
            self.next_offsets.insert(partition.clone(), record.offset + 1);
            self.last_applied.insert(partition, record.offset);
            self.since_snapshot += 1;
        }
        if !polled.records.is_empty() && polled.records.len() < POLL_MAX && self.member.commits_cheaply() {
            // The input is drained and a commit costs microseconds: waiting for the batch's age
            // (the policy's delay) would only delay its outputs. Under load polls come back full
            // and batches grow to the policy's size. On Kafka a transaction costs 10 to 20 ms, and
            // committing at every drained poll made batches so small that the allocator's
            // throughput fell by half (`ipam bench --kafka`): there the policy's delay groups them.
            self.member.commit().context("committing a drained batch")?;
        }
        if self.config.snapshot_due(self.since_snapshot, self.last_snapshot.elapsed(), self.last_snapshot_took) {
            self.member.commit().context("committing before a snapshot")?;
            self.take_snapshots()?;
        }
        Ok(())
    }

    /// After a storage failure (the next turn discards the batch and rebuilds, see
    /// [`Driver::turn`]): reports it and backs off.
    fn recover(&mut self, error: &anyhow::Error, stop: &AtomicBool) {
        self.failures += 1;
        let detail = format!("{error:#}");
        tracing::warn!(driver = %self.config.name, error = %detail, failures = self.failures,
                       "The log failed; discarding the open batch and rebuilding from the committed log.");
        self.health.set(&self.config.name, ComponentState::Degraded(detail));
        let backoff = Duration::from_millis(100 * 2u64.pow(self.failures.min(5)));
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Discards the open batch and rebuilds every owned partition (see [`Driver::recover`]),
    /// including those whose rebuild had failed.
    fn rebuild_all(&mut self) -> anyhow::Result<()> {
        self.member.abort().context("discarding the open batch")?;
        let partitions: Vec<TopicPartition> = self.owned.iter().cloned().collect();
        for partition in &partitions {
            self.machines.forget(partition);
            self.next_offsets.remove(partition);
            self.last_applied.remove(partition);
        }
        self.rebuild(&partitions)?;
        self.must_rebuild = false;
        Ok(())
    }

    /// Checks the polled records against the rebuilt states before any is applied. A record of a
    /// partition whose state is not rebuilt would be decided on an empty state, re-deciding inputs
    /// whose outputs are in the log already (under the same output ids): that is a failure
    /// ([`NotRebuilt`], transient), and the next round rebuilds and rewinds. A record before its
    /// partition's next offset was applied already (a member that reads again from an older
    /// position than the committed one the state was rebuilt to): it is dropped, since only the
    /// machines' windows of input ids would otherwise keep it from counting twice, and partition
    /// ticks have none.
    fn check_positions(&self, records: &mut Vec<Record>) -> anyhow::Result<()> {
        let (polled, mut not_rebuilt) = (records.len(), None);
        records.retain(|record| {
            let partition = TopicPartition { topic: record.topic.clone(), partition: record.partition };
            match self.next_offsets.get(&partition) {
                Some(&next) => record.offset >= next,
                None => {
                    not_rebuilt.get_or_insert(NotRebuilt { partition, offset: record.offset });
                    true
                }
            }
        });
        if let Some(not_rebuilt) = not_rebuilt {
            return Err(not_rebuilt.into());
        }
        if records.len() < polled {
            tracing::debug!(driver = %self.config.name, stale = polled - records.len(),
                            "Dropping polled records that the states hold already.");
        }
        Ok(())
    }

    fn prefixed(&self, record: OutRecord) -> OutRecord {
        OutRecord { topic: self.topics.resolve(&record.topic), ..record }
    }

    /// The records one input produced: its outputs, then what is forwarded to placement.
    fn encode(&self, input: &Envelope, applied: &Applied) -> Vec<OutRecord> {
        let source = format!("ipam/{}", self.config.name);
        let hosts = self.topics.name(ipam_core::Topic::Hosts);
        let mut records = Vec::with_capacity(applied.outputs.len() + applied.forwarded.len());
        let mut index = 0;
        for event in &applied.outputs {
            let topic = self.topics.name(event.topic());
            let envelope = Envelope::output(input, index, &source, event.clone());
            records.push(OutRecord { topic, key: envelope.event.key(), value: envelope.to_bytes() });
            index += 1;
        }
        for event in &applied.forwarded {
            let envelope = Envelope::output(input, index, &source, event.clone());
            records.push(OutRecord { topic: hosts.clone(), key: envelope.event.key(), value: envelope.to_bytes() });
            index += 1;
        }
        records
    }

    /// Rebuilds newly owned partitions: each from its latest snapshot, then the inputs from its
    /// offset up to the group's committed position, whose outputs are already in the log and are
    /// dropped. A snapshot that does not belong to the log is refused (an error that stops the
    /// driver); one whose state cannot be read is ignored, and replay starts from zero.
    ///
    /// The partitions' tails are replayed together ([`Driver::replay`]), so that one batch feeds
    /// the states of several partitions at once.
    fn rebuild(&mut self, partitions: &[TopicPartition]) -> anyhow::Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut found = Vec::with_capacity(partitions.len());
        for partition in partitions {
            found.push(self.find_snapshot(partition)?);
        }
        let decoded = self.decode_all(&found);
        let mut tails = Vec::with_capacity(partitions.len());
        for (found, decoded) in found.into_iter().zip(decoded) {
            tails.push(self.restore(found, decoded)?);
        }
        let restore_ms = started.elapsed().as_millis() as u64;
        let replayed = self.replay(&mut tails)?;
        for tail in tails {
            self.next_offsets.insert(tail.partition.clone(), tail.committed);
            match tail.last_applied {
                Some(offset) => self.last_applied.insert(tail.partition, offset),
                None => self.last_applied.remove(&tail.partition),
            };
        }
        tracing::info!(driver = %self.config.name, partitions = partitions.len(), replayed, restore_ms,
                       elapsed_ms = started.elapsed().as_millis() as u64, "Rebuilt partition state.");
        Ok(())
    }

    /// A partition's committed position and its latest snapshot, if that belongs to the log.
    fn find_snapshot(&self, partition: &TopicPartition) -> anyhow::Result<Found> {
        self.health.set(
            &self.config.name,
            ComponentState::Starting(format!("rebuilding {}/{}", partition.topic, partition.partition)),
        );
        let name = self.snapshot_name(partition);
        let committed = self.committed_position(partition)?;
        let snapshot = self.snapshots.load(&name)?;
        if let Some(snapshot) = &snapshot {
            self.check_in_log(&name, partition, snapshot, committed)?;
        }
        Ok(Found { partition: partition.clone(), name, committed, snapshot })
    }

    /// Reads the states of the snapshots found, on up to one thread per core, each thread taking
    /// the largest snapshot left (their sizes differ by as much as their partitions' networks);
    /// each answer with how long it took, in the order of `found`.
    fn decode_all(&self, found: &[Found]) -> Vec<Option<(anyhow::Result<M::Decoded>, Duration)>> {
        let machines = &self.machines;
        let decode = |snapshot: &Snapshot| {
            let started = Instant::now();
            (machines.decode(&snapshot.state), started.elapsed())
        };
        let mut queue: Vec<(usize, &Snapshot)> =
            found.iter().enumerate().filter_map(|(index, found)| Some((index, found.snapshot.as_ref()?))).collect();
        queue.sort_by_key(|(_, snapshot)| std::cmp::Reverse(snapshot.state.len()));
        let threads = std::thread::available_parallelism().map_or(1, usize::from).min(queue.len()).max(1);
        let next = AtomicUsize::new(0);
        let work = || {
            let mut done = Vec::new();
            while let Some(&(index, snapshot)) = queue.get(next.fetch_add(1, Ordering::Relaxed)) {
                done.push((index, decode(snapshot)));
            }
            done
        };
        let done: Vec<_> = if threads == 1 {
            work()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads).map(|_| scope.spawn(work)).collect();
                handles
                    .into_iter()
                    .flat_map(|handle| handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                    .collect()
            })
        };
        let mut decoded: Vec<Option<_>> = found.iter().map(|_| None).collect();
        for (index, result) in done {
            decoded[index] = Some(result);
        }
        decoded
    }

    /// Installs a partition's snapshot state (or an empty state, when it had none or its state
    /// could not be read) and answers what is left to replay on top of it.
    fn restore(
        &mut self,
        found: Found,
        decoded: Option<(anyhow::Result<M::Decoded>, Duration)>,
    ) -> anyhow::Result<Tail> {
        let started = Instant::now();
        let Found { partition, name, committed, mut snapshot } = found;
        let (state, decode_ms) = match decoded {
            Some((Ok(state), took)) => (Some(state), took.as_millis() as u64),
            Some((Err(error), took)) => {
                tracing::warn!(driver = %self.config.name, snapshot = %name, error = format!("{error:#}"),
                               "Ignoring a snapshot whose state cannot be read; replaying from zero.");
                snapshot = None;
                (None, took.as_millis() as u64)
            }
            None => (None, 0),
        };
        self.machines.restore(&partition, state).with_context(|| format!("installing the state of {partition:?}"))?;
        let from = snapshot.as_ref().map_or(0, |found| found.offset);
        let last_applied = snapshot.as_ref().and_then(|found| found.anchor.as_ref()).map(|anchor| anchor.offset);
        tracing::info!(driver = %self.config.name, topic = %partition.topic, partition = partition.partition,
                       snapshot_offset = snapshot.as_ref().map(|found| found.offset), to_replay = committed.saturating_sub(from),
                       decode_ms, install_ms = started.elapsed().as_millis() as u64, "Restored partition state.");
        Ok(Tail { partition, from, committed, last_applied })
    }

    /// Replays every tail up to its committed position; answers how many records were replayed.
    ///
    /// A reader thread reads the tails in turn and decodes them while the machines apply the batch
    /// before: decoding costs about as much as deciding, so the two overlap. Each batch mixes the
    /// partitions', whose states the machines may apply in parallel; each partition's records stay
    /// in order. Outputs are dropped: they are in the log already.
    fn replay(&mut self, tails: &mut [Tail]) -> anyhow::Result<u64> {
        let mut sources = Vec::new();
        for tail in tails.iter().filter(|tail| tail.from < tail.committed) {
            let start = Position::at(&tail.partition, tail.from);
            sources.push(ReplaySource {
                partition: tail.partition.clone(),
                next: tail.from,
                committed: tail.committed,
                follower: self.log.follow(&[start])?,
            });
        }
        if sources.is_empty() {
            return Ok(0);
        }
        let (sender, receiver) = std::sync::mpsc::sync_channel(2);
        let machines = &mut self.machines;
        std::thread::scope(|scope| {
            scope.spawn(move || read_ahead(sources, &sender));
            let mut replayed = 0u64;
            for batch in receiver {
                let Decoded { inputs, last_offsets, records } = batch?;
                machines.apply(&inputs)?;
                replayed += records;
                for (partition, offset) in last_offsets {
                    if let Some(tail) = tails.iter_mut().find(|tail| tail.partition == partition) {
                        (tail.from, tail.last_applied) = (offset + 1, Some(offset));
                    }
                }
            }
            // The reader ends by itself once every tail is read (or at its first error, sent here).
            Ok(replayed)
        })
    }

    /// Refuses a snapshot that holds inputs the log does not: one ahead of the group's committed
    /// position (snapshots are taken right after a commit), or whose last input is not the record
    /// the log has at that offset.
    fn check_in_log(
        &self,
        name: &str,
        partition: &TopicPartition,
        snapshot: &Snapshot,
        committed: u64,
    ) -> anyhow::Result<()> {
        if snapshot.offset > committed {
            let reason = format!(
                "it holds the inputs of {}/{} up to offset {}, but the log's committed position there is {committed}",
                partition.topic, partition.partition, snapshot.offset
            );
            return Err(self.snapshots.not_in_log(name, reason).into());
        }
        if let Some(anchor) = &snapshot.anchor {
            match self.record_at(partition, anchor.offset)? {
                Some(record) if Anchor::of(&record) == *anchor => {}
                found => {
                    let what = if found.is_some() { "is another record" } else { "is missing" };
                    let reason = format!(
                        "its last input, offset {} of {}/{}, {what} in the log",
                        anchor.offset, partition.topic, partition.partition
                    );
                    return Err(self.snapshots.not_in_log(name, reason).into());
                }
            }
        }
        Ok(())
    }

    /// The record at `offset` of the partition, if the log has one there.
    fn record_at(&self, partition: &TopicPartition, offset: u64) -> anyhow::Result<Option<Record>> {
        let records = self.log.read(&partition.topic, partition.partition, offset, 1, Duration::ZERO)?;
        Ok(records.into_iter().next().filter(|record| record.offset == offset))
    }

    /// The group's committed position, waiting out transient failures: right after another member
    /// died, Kafka answers only once that member's open transaction is aborted (after the
    /// transaction timeout), since the position is not stable before.
    fn committed_position(&self, partition: &TopicPartition) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            match self.log.committed_position(&self.config.group, &partition.topic, partition.partition) {
                Ok(position) => return Ok(position.unwrap_or(0)),
                Err(LogError::Storage(error)) if Instant::now() < deadline => {
                    let detail = format!(
                        "the committed position of {}/{} is not available yet: {error}",
                        partition.topic, partition.partition
                    );
                    self.health.set(&self.config.name, ComponentState::Degraded(detail));
                    tracing::warn!(driver = %self.config.name, topic = %partition.topic, partition = partition.partition,
                                   error = %error, "Committed position not available yet; retrying.");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    fn take_snapshots(&mut self) -> anyhow::Result<()> {
        let partitions: Vec<(TopicPartition, u64)> = self.next_offsets.iter().map(|(p, o)| (p.clone(), *o)).collect();
        let (started, mut bytes, mut encoding) = (Instant::now(), 0, Duration::ZERO);
        for (partition, offset) in partitions {
            let anchor = match self.last_applied.get(&partition) {
                Some(&last) => {
                    let record = self.record_at(&partition, last)?.with_context(|| {
                        format!("reading back the last input of {partition:?} (offset {last}) for a snapshot")
                    })?;
                    Some(Anchor::of(&record))
                }
                None => None,
            };
            let encode_started = Instant::now();
            let state = self.machines.snapshot(&partition)?;
            encoding += encode_started.elapsed();
            bytes += state.len();
            if let Err(error) = self.snapshots.save(&self.snapshot_name(&partition), offset, anchor, state) {
                // Snapshots only shorten replay: a full disk must not stop the driver.
                tracing::warn!(driver = %self.config.name, error = %error, "Could not write a snapshot; carrying on without it.");
            }
        }
        let took = started.elapsed();
        if !self.next_offsets.is_empty() {
            // A member that owns no partition (another took them over) has nothing to report.
            tracing::info!(driver = %self.config.name, partitions = self.next_offsets.len(), bytes,
                           encode_ms = encoding.as_millis() as u64, elapsed_ms = took.as_millis() as u64,
                           "Took snapshots.");
        }
        self.since_snapshot = 0;
        self.last_snapshot = Instant::now();
        self.last_snapshot_took = took;
        Ok(())
    }
}

/// A partition about to be restored: its committed position and the snapshot to start from.
struct Found {
    partition: TopicPartition,
    /// The snapshot's name in the store.
    name: String,
    committed: u64,
    snapshot: Option<Snapshot>,
}

/// What is left to replay of one partition on top of its restored state.
#[derive(Debug)]
struct Tail {
    partition: TopicPartition,
    /// The next input to apply.
    from: u64,
    /// The group's committed position: replay ends there.
    committed: u64,
    /// The offset of the last input the state holds.
    last_applied: Option<u64>,
}

/// One tail as the reader thread reads it.
struct ReplaySource {
    partition: TopicPartition,
    next: u64,
    committed: u64,
    follower: Box<dyn ipam_log::Follower>,
}

/// A decoded batch of replayed records.
struct Decoded {
    inputs: Vec<(TopicPartition, Input)>,
    /// The last offset of each partition the batch holds records of.
    last_offsets: Vec<(TopicPartition, u64)>,
    records: u64,
}

/// The reader thread of a replay: reads every source in turn (up to [`REPLAY_BATCH`] records a
/// round), drops what lies at or past its committed position, decodes, and sends each batch; ends
/// when every source is read, or at the first error, which it sends. The group committed the
/// position after an input it consumed, so the record at `committed - 1` exists: reading until it
/// arrives ends, and a quiet spell only means the log is slow (an error after [`REPLAY_STALL`]).
fn read_ahead(mut sources: Vec<ReplaySource>, sender: &std::sync::mpsc::SyncSender<anyhow::Result<Decoded>>) {
    let mut last_progress = Instant::now();
    let mut idle = false;
    while !sources.is_empty() {
        let share = (REPLAY_BATCH / sources.len()).max(POLL_MAX);
        let mut records: Vec<Record> = Vec::new();
        let mut last_offsets = Vec::new();
        for (index, source) in sources.iter_mut().enumerate() {
            // After a round that found nothing anywhere, wait on one source (a commit wakes it)
            // rather than spin.
            let wait = if idle && index == 0 { Duration::from_millis(50) } else { Duration::ZERO };
            let read = match source.follower.next(share, wait) {
                Ok(read) => read,
                Err(error) => {
                    let _ = sender.send(Err(error.into()));
                    return;
                }
            };
            let before = records.len();
            records.extend(read.into_iter().filter(|record| record.offset < source.committed));
            if let Some(last) = records[before..].last() {
                source.next = last.offset + 1;
                last_offsets.push((source.partition.clone(), last.offset));
            }
        }
        sources.retain(|source| source.next < source.committed);
        idle = records.is_empty();
        if idle {
            if last_progress.elapsed() > REPLAY_STALL {
                let stalled: Vec<String> = sources
                    .iter()
                    .map(|s| format!("{}/{} after offset {}", s.partition.topic, s.partition.partition, s.next))
                    .collect();
                let error = LogError::Storage(format!(
                    "replaying: no record within {REPLAY_STALL:?} of {}, though the group's committed position lies \
                     past it",
                    stalled.join(", ")
                ));
                let _ = sender.send(Err(error.into()));
                return;
            }
            continue;
        }
        last_progress = Instant::now();
        let count = records.len() as u64;
        let inputs = plan(&records).1;
        if sender.send(Ok(Decoded { inputs, last_offsets, records: count })).is_err() {
            // The driver stopped listening (it failed applying): nothing more to do.
            return;
        }
    }
}

/// Decodes polled records: what to do with each, and the inputs for the machines.
fn plan(records: &[Record]) -> (Vec<Planned>, Vec<(TopicPartition, Input)>) {
    let mut inputs = Vec::with_capacity(records.len());
    let plans = records
        .iter()
        .map(|record| {
            let partition = TopicPartition { topic: record.topic.clone(), partition: record.partition };
            match ingest(record) {
                Ingested::Event(input) => {
                    inputs.push((partition, Input::Event(input)));
                    Planned::Input(inputs.len() - 1)
                }
                Ingested::Rejected { network_id, cause, rejection } => {
                    inputs.push((partition, Input::Refused { network_id, id: cause }));
                    Planned::Refused(inputs.len() - 1, rejection)
                }
                Ingested::DeadLetter(letter) => Planned::DeadLetter(letter),
            }
        })
        .collect();
    (plans, inputs)
}

/// A polled record of a partition whose state is not rebuilt (see [`Driver::check_positions`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "a record of {}/{} (offset {offset}) came before that partition's state was rebuilt",
    partition.topic,
    partition.partition
)]
struct NotRebuilt {
    partition: TopicPartition,
    offset: u64,
}

/// True for a failure the log may recover from by itself (a full disk, a broker away), or that a
/// rebuild cures ([`NotRebuilt`]): anything but fencing, a fatal log error, or a snapshot that does
/// not belong to the log.
fn is_transient(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| matches!(cause.downcast_ref::<LogError>(), Some(LogError::Storage(_))) || cause.is::<NotRebuilt>())
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
