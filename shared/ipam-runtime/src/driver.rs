//! The partition driver: one consumer-group member on one blocking thread, feeding a set of
//! partition states (see [`Machines`]) and performing atomic steps.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ipam_core::{Envelope, Event};
use ipam_log::dead_letter::{Ingested, ingest};
use ipam_log::{BatchPolicy, EventLog, Member, MemberConfig, OutRecord, Position, TopicPartition};

use crate::snapshot::SnapshotStore;
use crate::topics::Topics;

/// The state machines a driver feeds, partition by partition.
pub trait Machines: Send {
    /// Installs a partition's state: from a snapshot, or empty.
    fn restore(&mut self, partition: &TopicPartition, snapshot: Option<&[u8]>) -> anyhow::Result<()>;
    /// Forgets a partition's state (it moved to another member).
    fn forget(&mut self, partition: &TopicPartition);
    /// Applies one input of a partition; answers the outputs.
    fn apply(&mut self, partition: &TopicPartition, input: &Envelope) -> anyhow::Result<Vec<Event>>;
    /// The canonical snapshot of a partition's state.
    fn snapshot(&mut self, partition: &TopicPartition) -> anyhow::Result<Vec<u8>>;
    /// Events to append besides the outputs (the allocator forwards facts to placement); they go to
    /// `ipam.hosts`.
    fn forwarded(&self, _input: &Envelope, _outputs: &[Event]) -> Vec<Event> {
        Vec::new()
    }
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
}

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
    /// The next input offset of each owned partition (the position its next step commits).
    next_offsets: BTreeMap<TopicPartition, u64>,
    since_snapshot: u64,
    last_snapshot: Instant,
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
    ) -> anyhow::Result<Driver<M>> {
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
            next_offsets: BTreeMap::new(),
            since_snapshot: 0,
            last_snapshot: Instant::now(),
        })
    }

    fn snapshot_name(&self, partition: &TopicPartition) -> String {
        format!("{}-{}-{}", self.config.name, partition.topic, partition.partition)
    }

    /// Runs until `stop` is set (then commits, snapshots and returns) or the log fails.
    pub fn run(mut self, stop: &AtomicBool, readiness: &Readiness) -> anyhow::Result<()> {
        let mut announced = false;
        loop {
            if stop.load(Ordering::SeqCst) {
                self.member.commit().context("committing the last batch")?;
                self.take_snapshots()?;
                tracing::info!(driver = %self.config.name, "Stopped cleanly.");
                return Ok(());
            }
            let polled = self.member.poll(1000, Duration::from_millis(100)).context("polling")?;
            for partition in polled.revoked.iter().chain(&polled.lost) {
                self.machines.forget(partition);
                self.next_offsets.remove(partition);
            }
            if !polled.assigned.is_empty() {
                // A rebuild can take a while (on Kafka, until a dead member's transaction times
                // out); an open batch must not outlive its transaction timeout meanwhile.
                self.member.commit().context("committing before a rebuild")?;
            }
            for partition in &polled.assigned {
                self.rebuild(partition)?;
            }
            if !announced {
                announced = true;
                readiness.ready.fetch_add(1, Ordering::SeqCst);
                tracing::info!(driver = %self.config.name, partitions = self.next_offsets.len(), "Ready.");
            }
            let metrics = crate::metrics::for_driver(&self.config.name);
            for record in polled.records {
                let started = Instant::now();
                let partition = TopicPartition { topic: record.topic.clone(), partition: record.partition };
                let outputs = match ingest(&record) {
                    Ingested::Event(input) => self.outputs(&partition, &input)?,
                    Ingested::Rejected(rejection) => vec![self.prefixed(rejection)],
                    Ingested::DeadLetter(letter) => {
                        tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset,
                                       "Dead-lettering an unusable record.");
                        vec![self.prefixed(letter)]
                    }
                };
                let position = Position {
                    topic: record.topic.clone(),
                    partition: record.partition,
                    next_offset: record.offset + 1,
                };
                self.member.step(&outputs, &[position]).context("performing a step")?;
                metrics.observe(started.elapsed());
                self.next_offsets.insert(partition, record.offset + 1);
                self.since_snapshot += 1;
            }
            if self.since_snapshot >= self.config.snapshot_every_records
                || (self.since_snapshot > 0 && self.last_snapshot.elapsed() >= self.config.snapshot_every)
            {
                self.member.commit().context("committing before a snapshot")?;
                self.take_snapshots()?;
            }
        }
    }

    fn prefixed(&self, record: OutRecord) -> OutRecord {
        OutRecord { topic: self.topics.resolve(&record.topic), ..record }
    }

    /// The records one input produces: its outputs, then what is forwarded to placement.
    fn outputs(&mut self, partition: &TopicPartition, input: &Envelope) -> anyhow::Result<Vec<OutRecord>> {
        let outputs = self.machines.apply(partition, input)?;
        let forwarded = self.machines.forwarded(input, &outputs);
        let source = format!("ipam/{}", self.config.name);
        let hosts = self.topics.name(ipam_core::Topic::Hosts);
        let mut records = Vec::with_capacity(outputs.len() + forwarded.len());
        let mut index = 0;
        for event in outputs {
            let topic = self.topics.name(event.topic());
            let envelope = Envelope::output(input, index, &source, event);
            records.push(OutRecord { topic, key: envelope.event.key(), value: envelope.to_bytes() });
            index += 1;
        }
        for event in forwarded {
            let envelope = Envelope::output(input, index, &source, event);
            records.push(OutRecord { topic: hosts.clone(), key: envelope.event.key(), value: envelope.to_bytes() });
            index += 1;
        }
        Ok(records)
    }

    /// Rebuilds a newly owned partition: the latest snapshot, then the inputs from its offset up to
    /// the group's committed position, whose outputs are already in the log and are dropped.
    fn rebuild(&mut self, partition: &TopicPartition) -> anyhow::Result<()> {
        let started = Instant::now();
        let committed = self.committed_position(partition)?;
        let snapshot = self.snapshots.load(&self.snapshot_name(partition)).filter(|(offset, _)| *offset <= committed);
        let mut from = snapshot.as_ref().map_or(0, |(offset, _)| *offset);
        self.machines
            .restore(partition, snapshot.as_ref().map(|(_, state)| state.as_slice()))
            .with_context(|| format!("restoring {partition:?}"))?;
        let mut replayed = 0u64;
        while from < committed {
            let records = self.log.read(&partition.topic, partition.partition, from, 1000, Duration::ZERO)?;
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            for record in records.into_iter().filter(|record| record.offset < committed) {
                if let Ingested::Event(input) = ingest(&record) {
                    self.machines.apply(partition, &input)?;
                }
                replayed += 1;
            }
        }
        self.next_offsets.insert(partition.clone(), committed);
        tracing::info!(driver = %self.config.name, topic = %partition.topic, partition = partition.partition,
                       snapshot_offset = snapshot.as_ref().map(|(offset, _)| *offset), replayed,
                       elapsed_ms = started.elapsed().as_millis() as u64, "Rebuilt partition state.");
        Ok(())
    }

    /// The group's committed position, waiting out transient failures: right after another member
    /// died, Kafka answers only once that member's open transaction is aborted (after the
    /// transaction timeout), since the position is not stable before.
    fn committed_position(&self, partition: &TopicPartition) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            match self.log.committed_position(&self.config.group, &partition.topic, partition.partition) {
                Ok(position) => return Ok(position.unwrap_or(0)),
                Err(ipam_log::LogError::Storage(error)) if Instant::now() < deadline => {
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
        for (partition, offset) in partitions {
            let state = self.machines.snapshot(&partition)?;
            self.snapshots.save(&self.snapshot_name(&partition), offset, &state)?;
        }
        self.since_snapshot = 0;
        self.last_snapshot = Instant::now();
        Ok(())
    }
}
