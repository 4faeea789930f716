//! The embedded system in one process, as `ipam up` wires it: a memory log behind a store that
//! tears batches on demand, an allocator driver and a placement driver with their snapshots, and
//! the simulation itself as the engine, the host agents and the clock.
//!
//! Drivers are turned one `Driver::turn` at a time from the test thread, only when they have
//! something to read (a turn with nothing to read waits for its poll timeout), so what happens is
//! decided by the script and not by timing: batches commit by step count and snapshots by record
//! count, never by age.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::ArbiterHandle;
use anyhow::{Context, bail};
use ipam_core::event::Topic;
use ipam_log::memory::MemoryStore;
use ipam_log::{Batch, BatchPolicy, EventLog, HookedStore, LocalLog, LogError, OutRecord, Record};
use ipam_runtime::allocator::AllocatorMachines;
use ipam_runtime::driver::Machines;
use ipam_runtime::placement::PlacementMachines;
use ipam_runtime::{Driver, DriverConfig, Health, Readiness, SnapshotStore, Topics};

use super::script::{Damage, Input, Which};
use crate::properties::placement;

/// Every record of a partition.
pub(crate) fn read_all(log: &dyn EventLog, topic: &str, partition: u32) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    loop {
        let batch = log.read(topic, partition, records.len() as u64, 1000, Duration::ZERO)?;
        if batch.is_empty() {
            return Ok(records);
        }
        records.extend(batch);
    }
}

/// True when the error is a storage failure, the kind `Driver::run` recovers from.
fn is_storage_failure(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| matches!(cause.downcast_ref::<LogError>(), Some(LogError::Storage(_))))
}

/// What happened to a driver in one action, for the statistics.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) turns: u64,
    pub(crate) crashes: u64,
    pub(crate) torn_commits: u64,
    pub(crate) clean_stops: u64,
    pub(crate) idle_rebuilds: u64,
}

/// One driver and the process it lives in: started on demand, crashed by dropping it.
pub(crate) struct Node<M: Machines + 'static> {
    config: DriverConfig,
    topics: Topics,
    snapshots: PathBuf,
    make: Box<dyn Fn() -> M>,
    driver: Option<Driver<M>>,
    /// The input offsets the running driver has read up to (its member's cursors).
    seen: BTreeMap<u32, u64>,
    /// The last thing this node did was a clean stop: its snapshots hold its live state.
    pub(crate) stopped_cleanly: bool,
}

impl<M: Machines + 'static> Node<M> {
    fn new(config: DriverConfig, topics: Topics, snapshots: &Path, make: Box<dyn Fn() -> M>) -> Node<M> {
        Node {
            config,
            topics,
            snapshots: snapshots.to_owned(),
            make,
            driver: None,
            seen: BTreeMap::new(),
            stopped_cleanly: false,
        }
    }

    fn ends(&self, log: &dyn EventLog) -> anyhow::Result<BTreeMap<u32, u64>> {
        let topic = &self.config.input_topic;
        (0..log.partition_count(topic)?).map(|p| Ok((p, log.end_offset(topic, p)?))).collect()
    }

    fn committed(&self, log: &dyn EventLog) -> anyhow::Result<BTreeMap<u32, u64>> {
        let topic = &self.config.input_topic;
        (0..log.partition_count(topic)?)
            .map(|p| Ok((p, log.committed_position(&self.config.group, topic, p)?.unwrap_or(0))))
            .collect()
    }

    /// Records of the input not read by the driver yet (not committed, when it is down).
    pub(crate) fn has_input(&self, log: &dyn EventLog) -> anyhow::Result<bool> {
        let read = if self.driver.is_some() { self.seen.clone() } else { self.committed(log)? };
        Ok(self.ends(log)?.iter().any(|(p, end)| read.get(p).copied().unwrap_or(0) < *end))
    }

    /// Records of the input the group has not committed.
    pub(crate) fn lag(&self, log: &dyn EventLog) -> anyhow::Result<u64> {
        let committed = self.committed(log)?;
        Ok(self.ends(log)?.iter().map(|(p, end)| end - committed.get(p).copied().unwrap_or(0)).sum())
    }

    fn start(&mut self, log: &Arc<dyn EventLog>) -> anyhow::Result<()> {
        let store = SnapshotStore::open(&self.snapshots, log.identity()?)?;
        let driver = Driver::new(
            Arc::clone(log),
            self.topics.clone(),
            self.config.clone(),
            (self.make)(),
            store,
            Health::new(),
        )?;
        self.driver = Some(driver);
        self.seen = self.committed(&**log)?;
        self.stopped_cleanly = false;
        Ok(())
    }

    /// One turn, starting the driver first if it is down. A storage failure is met as `ipam up`
    /// meets it: the driver stays, and its next turn discards the open batch and rebuilds every
    /// owned partition from the committed log (crashes are separate actions).
    pub(crate) fn turn(&mut self, log: &Arc<dyn EventLog>, counts: &mut Counts) -> anyhow::Result<()> {
        if self.driver.is_none() {
            self.start(log)?;
        }
        let ends = self.ends(&**log)?;
        counts.turns += 1;
        let driver = self.driver.as_mut().context("started above")?;
        match driver.turn() {
            Ok(()) => {
                self.seen = ends;
                Ok(())
            }
            Err(error) if is_storage_failure(&error) => {
                counts.torn_commits += 1;
                self.stopped_cleanly = false;
                Ok(())
            }
            Err(error) => Err(error.context(format!("{} turn", self.config.name))),
        }
    }

    pub(crate) fn crash(&mut self, counts: &mut Counts) {
        if self.driver.take().is_some() {
            counts.crashes += 1;
        }
        self.stopped_cleanly = false;
    }

    /// Stops the driver as on SIGTERM: commit the open batch, snapshot every partition.
    pub(crate) fn stop(&mut self, counts: &mut Counts) -> anyhow::Result<()> {
        let Some(driver) = self.driver.take() else { return Ok(()) };
        match driver.run(&AtomicBool::new(true), &Readiness::default()) {
            Ok(()) => {
                counts.clean_stops += 1;
                self.stopped_cleanly = true;
                Ok(())
            }
            Err(error) if is_storage_failure(&error) => {
                counts.torn_commits += 1;
                counts.crashes += 1;
                Ok(())
            }
            Err(error) => Err(error.context(format!("{} stop", self.config.name))),
        }
    }

    /// Starts the driver and has it rebuild with nothing to read (its poll waits its timeout).
    fn idle_rebuild(&mut self, log: &Arc<dyn EventLog>, counts: &mut Counts) -> anyhow::Result<()> {
        counts.idle_rebuilds += 1;
        self.turn(log, counts)
    }

    fn running(&self) -> bool {
        self.driver.is_some()
    }

    /// The snapshot files of this driver, in name order.
    fn snapshot_files(&self) -> Vec<PathBuf> {
        let prefix = format!("{}-", self.config.name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.snapshots)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| {
                        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                        name.starts_with(&prefix) && ipam_runtime::snapshot::is_snapshot_file(path)
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// The state part of each snapshot file, by file name.
    pub(crate) fn states(&self) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        self.snapshot_files()
            .into_iter()
            .map(|path| {
                let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let newline = bytes.iter().position(|b| *b == b'\n').context("a snapshot has a header line")?;
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned();
                Ok((name, bytes[newline + 1..].to_vec()))
            })
            .collect()
    }

    fn damage(&self, file: usize, damage: Damage) -> anyhow::Result<()> {
        let files = self.snapshot_files();
        let Some(path) = files.get(file % files.len().max(1)) else { return Ok(()) };
        let bytes = std::fs::read(path)?;
        match damage {
            Damage::Truncate(per_mille) => {
                // A tenth of the cuts fall in the header line, the rest in the state: where in the
                // file must not depend on the length of the log's identity.
                let header = bytes.iter().position(|b| *b == b'\n').unwrap_or(bytes.len());
                let per_mille = usize::from(per_mille);
                let length = if per_mille < 100 {
                    header * per_mille / 100
                } else {
                    header + 1 + bytes.len().saturating_sub(header + 1) * (per_mille - 100) / 900
                };
                std::fs::write(path, &bytes[..length.min(bytes.len().saturating_sub(1))])?;
            }
            Damage::Garble => {
                let newline = bytes.iter().position(|b| *b == b'\n').unwrap_or(bytes.len());
                let mut garbled = bytes[..newline].to_vec();
                garbled.extend_from_slice(b"\n{\"networks\": [\xff garbage");
                std::fs::write(path, garbled)?;
            }
            Damage::Delete => std::fs::remove_file(path)?,
        }
        Ok(())
    }
}

/// The topics of the deployment, and (under a prefix) those a replaying pair writes to.
const PARTITIONS: u32 = 2;

/// One run of a script: the log, the two drivers, their snapshots.
pub(crate) struct World {
    pub(crate) log: Arc<dyn EventLog>,
    tear_next_commit: Arc<AtomicBool>,
    pub(crate) topics: Topics,
    pub(crate) allocator: Node<AllocatorMachines>,
    pub(crate) placement: Node<PlacementMachines>,
    pub(crate) counts: Counts,
    arbiter: ArbiterHandle,
    batch: BatchPolicy,
    snapshot_every_records: u64,
    _snapshots: tempfile::TempDir,
}

impl World {
    pub(crate) fn new(
        arbiter: &ArbiterHandle,
        batch_steps: usize,
        snapshot_every_records: u64,
    ) -> anyhow::Result<World> {
        let tear_next_commit = Arc::new(AtomicBool::new(false));
        // The next batch commit fails as a torn write does when the switch is set: a storage
        // error, and nothing of the batch in the log.
        let tear = Arc::clone(&tear_next_commit);
        let before_commit = Box::new(move |_: &Batch| {
            if tear.swap(false, Ordering::SeqCst) {
                return Err(LogError::Storage(
                    "simulated torn batch: the write failed, nothing of it landed".to_owned(),
                ));
            }
            Ok(())
        });
        let store = HookedStore { inner: MemoryStore::default(), before_commit };
        let log: Arc<dyn EventLog> = Arc::new(LocalLog::over(store));
        let topics = Topics::new("", PARTITIONS);
        log.create_topics(&topics.specs())?;
        log.create_topics(&Topics::new("replay.", PARTITIONS).specs())?;
        // Time-based commits and snapshots never come: a batch commits by its step count.
        let batch = BatchPolicy { max_steps: batch_steps, max_delay: Duration::from_secs(3600) };
        let snapshots = snapshot_dir()?;
        let arbiter = arbiter.clone();
        let (allocator, placement) = pair(&arbiter, "", &topics, snapshots.path(), batch, snapshot_every_records);
        Ok(World {
            log,
            tear_next_commit,
            topics,
            allocator,
            placement,
            counts: Counts::default(),
            arbiter,
            batch,
            snapshot_every_records,
            _snapshots: snapshots,
        })
    }

    pub(crate) fn append(&self, inputs: &[Input]) -> anyhow::Result<()> {
        let records: Vec<OutRecord> = inputs
            .iter()
            .map(|input| OutRecord {
                topic: self.topics.name(input.topic),
                key: input.key.clone(),
                value: input.value.clone(),
            })
            .collect();
        self.log.append(&records)?;
        Ok(())
    }

    pub(crate) fn turn(&mut self, which: Which) -> anyhow::Result<()> {
        let log = Arc::clone(&self.log);
        match which {
            Which::Allocator if self.allocator.has_input(&*log)? => self.allocator.turn(&log, &mut self.counts),
            Which::Placement if self.placement.has_input(&*log)? => self.placement.turn(&log, &mut self.counts),
            _ => Ok(()),
        }
    }

    pub(crate) fn crash(&mut self, which: Which) {
        match which {
            Which::Allocator => self.allocator.crash(&mut self.counts),
            Which::Placement => self.placement.crash(&mut self.counts),
        }
    }

    pub(crate) fn restart(&mut self, which: Which) -> anyhow::Result<()> {
        match which {
            Which::Allocator => self.allocator.stop(&mut self.counts),
            Which::Placement => self.placement.stop(&mut self.counts),
        }
    }

    pub(crate) fn tear_next_commit(&self) {
        self.tear_next_commit.store(true, Ordering::SeqCst);
    }

    pub(crate) fn damage_snapshot(&mut self, which: Which, file: usize, damage: Damage) -> anyhow::Result<()> {
        match which {
            Which::Allocator => self.allocator.damage(file, damage)?,
            Which::Placement => self.placement.damage(file, damage)?,
        }
        self.crash(which);
        Ok(())
    }

    /// Turns the drivers until each has read and committed every input, and ends with both
    /// stopped cleanly, so that their last snapshots hold their live states.
    pub(crate) fn quiesce(&mut self) -> anyhow::Result<()> {
        let log = Arc::clone(&self.log);
        for _ in 0..1000 {
            let mut moved = false;
            while self.allocator.has_input(&*log)? {
                self.allocator.turn(&log, &mut self.counts)?;
                moved = true;
            }
            while self.placement.has_input(&*log)? {
                self.placement.turn(&log, &mut self.counts)?;
                moved = true;
            }
            if moved {
                continue;
            }
            // Nothing left to read: a clean stop commits the open batches and snapshots the live
            // states. The allocator's commit may hand placement new facts, hence the loop.
            if self.allocator.running() || self.placement.running() {
                self.allocator.stop(&mut self.counts)?;
                self.placement.stop(&mut self.counts)?;
                continue;
            }
            // A driver that crashed with nothing left to read has no live state: restart it.
            if !self.allocator.stopped_cleanly {
                self.allocator.idle_rebuild(&log, &mut self.counts)?;
                continue;
            }
            if !self.placement.stopped_cleanly {
                self.placement.idle_rebuild(&log, &mut self.counts)?;
                continue;
            }
            let lag = (self.allocator.lag(&*log)?, self.placement.lag(&*log)?);
            if lag != (0, 0) {
                bail!("stopped cleanly with nothing to read, yet the groups lag by {lag:?}");
            }
            return Ok(());
        }
        bail!("the drivers did not settle in 1000 rounds")
    }

    /// A fresh allocator and placement (fresh snapshot directory, their own groups) that read the
    /// whole input log from zero and write under the `replay.` prefix; they end stopped cleanly.
    pub(crate) fn replay(&mut self) -> anyhow::Result<Replay> {
        self.tear_next_commit.store(false, Ordering::SeqCst);
        let snapshots = snapshot_dir()?;
        let topics = Topics::new("replay.", PARTITIONS);
        let (mut allocator, mut placement) =
            pair(&self.arbiter, "replay.", &topics, snapshots.path(), self.batch, self.snapshot_every_records);
        let log = Arc::clone(&self.log);
        let mut counts = Counts::default();
        while allocator.has_input(&*log)? {
            allocator.turn(&log, &mut counts)?;
        }
        allocator.stop(&mut counts)?;
        while placement.has_input(&*log)? {
            placement.turn(&log, &mut counts)?;
        }
        placement.stop(&mut counts)?;
        if counts.crashes > 0 || !allocator.stopped_cleanly || !placement.stopped_cleanly {
            bail!("the replaying drivers failed: {counts:?}");
        }
        Ok(Replay { allocator, placement, _snapshots: snapshots })
    }
}

/// The replaying pair, stopped, with the directory of their snapshots.
pub(crate) struct Replay {
    pub(crate) allocator: Node<AllocatorMachines>,
    pub(crate) placement: Node<PlacementMachines>,
    _snapshots: tempfile::TempDir,
}

/// Snapshots on tmpfs when there is one: they are synced on every save.
fn snapshot_dir() -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    dir.context("making a snapshot directory")
}

/// An allocator and a placement node as `ipam up` configures them (see `services/ipam/src/run.rs`),
/// writing to `topics` and reading the deployment's (unprefixed) input topics.
fn pair(
    arbiter: &ArbiterHandle,
    prefix: &str,
    topics: &Topics,
    snapshots: &Path,
    batch: BatchPolicy,
    snapshot_every_records: u64,
) -> (Node<AllocatorMachines>, Node<PlacementMachines>) {
    let config = |name: &str, topic: Topic| DriverConfig {
        name: name.to_owned(),
        group: format!("{prefix}ipam-{name}"),
        transactional_id: format!("{prefix}ipam-{name}-sim"),
        input_topic: topic.name().to_owned(),
        batch,
        snapshot_every_records,
        snapshot_every: Duration::from_secs(3600),
        // Snapshots come by record count alone: a run is decided by its script, not by timing.
        snapshot_spacing: 0,
    };
    let (a, p) = (arbiter.clone(), arbiter.clone());
    let allocator = Node::new(
        config("allocator", Topic::Networks),
        topics.clone(),
        snapshots,
        Box::new(move || AllocatorMachines::new(vec![a.clone()])),
    );
    let placement = Node::new(
        config("placement", Topic::Hosts),
        topics.clone(),
        snapshots,
        Box::new(move || PlacementMachines::new(p.clone(), placement::CONFIG)),
    );
    (allocator, placement)
}
