//! The driver's rebuild against snapshots that do and do not belong to its log, with a counting
//! state machine over the in-memory log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ipam_core::event::{ClockTicked, Topic};
use ipam_core::{Envelope, Event, EventId, Timestamp};
use ipam_log::{BatchPolicy, EventLog, MemoryLog, OutRecord, TopicPartition};

use super::*;
use crate::health::Health;
use crate::snapshot::{Anchor, SnapshotStore};

/// Counts the inputs of each partition; its snapshot is the count in decimal. It refuses an input
/// of a partition it was never given a state for, and fails its next `restore_failures` restores
/// as a log would that fails while a partition is rebuilt.
#[derive(Debug, Default)]
struct Counter {
    counts: BTreeMap<TopicPartition, u64>,
    restore_failures: u32,
}

impl Machines for Counter {
    type Decoded = u64;

    fn decode(&self, snapshot: &[u8]) -> anyhow::Result<u64> {
        Ok(std::str::from_utf8(snapshot)?.parse()?)
    }

    fn restore(&mut self, partition: &TopicPartition, count: Option<u64>) -> anyhow::Result<()> {
        if self.restore_failures > 0 {
            self.restore_failures -= 1;
            return Err(LogError::Storage("the log went away during the rebuild".to_owned()).into());
        }
        self.counts.insert(partition.clone(), count.unwrap_or(0));
        Ok(())
    }

    fn forget(&mut self, partition: &TopicPartition) {
        self.counts.remove(partition);
    }

    fn apply(&mut self, inputs: &[(TopicPartition, Input)]) -> anyhow::Result<Vec<Applied>> {
        for (partition, _) in inputs {
            let count = self
                .counts
                .get_mut(partition)
                .ok_or_else(|| anyhow::anyhow!("an input of {partition:?}, whose state was never restored"))?;
            *count += 1;
        }
        Ok(vec![Applied { fresh: true, ..Applied::default() }; inputs.len()])
    }

    fn snapshot(&mut self, partition: &TopicPartition) -> anyhow::Result<Vec<u8>> {
        Ok(self.counts.get(partition).copied().unwrap_or(0).to_string().into_bytes())
    }
}

const NAME: &str = "counter-ipam.hosts-0";

fn hosts() -> TopicPartition {
    TopicPartition { topic: Topic::Hosts.name().to_owned(), partition: 0 }
}

fn log_with_ticks(count: u64) -> Arc<dyn EventLog> {
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    log.create_topics(&Topics::new("", 1).specs()).unwrap();
    append_ticks(&*log, 0..count);
    log
}

fn append_ticks(log: &dyn EventLog, range: std::ops::Range<u64>) {
    log.append(&tick_records(range, Topic::Hosts.name(), |_| "clock".to_owned())).unwrap();
}

/// Clock ticks numbered by `range` (tick n has id n + 1 and time 1,000 + n ms), for `topic`, each
/// with the key `key(n)`.
fn tick_records(range: std::ops::Range<u64>, topic: &str, key: impl Fn(u64) -> String) -> Vec<OutRecord> {
    range
        .map(|n| {
            let now = Timestamp::from_unix_ms(1_000 + n as i64);
            let envelope = Envelope {
                id: EventId::from_u128(u128::from(n) + 1),
                source: "test".to_owned(),
                time: now,
                subject: None,
                event: Event::ClockTicked(ClockTicked { now }),
            };
            OutRecord { topic: topic.to_owned(), key: key(n), value: envelope.to_bytes() }
        })
        .collect()
}

/// The counter's driver configuration: a step per batch, snapshots only when a test stops it.
fn counter_config() -> DriverConfig {
    DriverConfig {
        name: "counter".to_owned(),
        group: "counter".to_owned(),
        transactional_id: "counter-0".to_owned(),
        input_topic: Topic::Hosts.name().to_owned(),
        batch: BatchPolicy { max_steps: 1, max_delay: Duration::ZERO },
        snapshot_every_records: u64::MAX,
        snapshot_every: Duration::from_secs(3600),
        snapshot_spacing: 0,
    }
}

fn driver(log: &Arc<dyn EventLog>, snapshots: &std::path::Path) -> anyhow::Result<Driver<Counter>> {
    let store = SnapshotStore::open(snapshots, log.identity().unwrap())?;
    Driver::new(Arc::clone(log), Topics::new("", 1), counter_config(), Counter::default(), store, Health::new())
}

/// Turns until the driver has consumed `count` inputs.
fn consume(driver: &mut Driver<Counter>, count: u64) -> anyhow::Result<()> {
    for _ in 0..100 {
        driver.turn()?;
        if driver.next_offsets.get(&hosts()) == Some(&count) {
            return Ok(());
        }
    }
    anyhow::bail!("the driver never consumed {count} inputs: {:?}", driver.next_offsets)
}

#[test]
fn a_snapshot_of_its_own_log_shortens_replay() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_ticks(3);
    let mut first = driver(&log, dir.path()).unwrap();
    consume(&mut first, 3).unwrap();
    first.stop().unwrap();
    let snapshot = SnapshotStore::open(dir.path(), log.identity().unwrap()).unwrap().load(NAME).unwrap().unwrap();
    assert_eq!((snapshot.offset, snapshot.anchor.map(|a| a.offset)), (3, Some(2)));

    append_ticks(&*log, 3..5);
    let mut second = driver(&log, dir.path()).unwrap();
    consume(&mut second, 5).unwrap();
    assert_eq!(second.machines.counts[&hosts()], 5);
}

/// Seen on Kafka when the broker restarted while a member took partitions over
/// (`tests/it/kafka_restart.rs`): the rebuild of a newly assigned partition failed, the rebuild
/// after the failure covered only the partitions rebuilt before, and the partition's inputs were
/// then decided on an empty state, writing outputs the log held already under the same ids.
#[test]
fn a_partition_whose_rebuild_failed_is_rebuilt_before_any_input_of_it_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_ticks(3);
    let mut driver = driver(&log, dir.path()).unwrap();
    driver.machines.restore_failures = 1;
    let error = driver.turn().unwrap_err();
    assert!(is_transient(&error), "a log failure during a rebuild is worth another try: {error:#}");
    consume(&mut driver, 3).unwrap();
    assert_eq!(driver.machines.counts[&hosts()], 3);
}

/// What `check_positions` makes of a poll: records of a partition with no rebuilt state are a
/// transient failure, records before their partition's next offset are dropped, the rest kept.
#[test]
fn polled_records_are_checked_against_the_rebuilt_states() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_ticks(3);
    let mut driver = driver(&log, dir.path()).unwrap();
    consume(&mut driver, 3).unwrap();
    let record = |partition: u32, offset: u64| Record {
        topic: Topic::Hosts.name().to_owned(),
        partition,
        offset,
        key: String::new(),
        value: Vec::new(),
    };
    let mut polled = vec![record(0, 1), record(0, 2), record(0, 3), record(0, 4)];
    driver.check_positions(&mut polled).unwrap();
    assert_eq!(polled.iter().map(|r| r.offset).collect::<Vec<_>>(), [3, 4], "offsets 1 and 2 are applied already");

    let mut unowned = vec![record(0, 3), record(1, 0)];
    let error = driver.check_positions(&mut unowned).unwrap_err();
    assert!(error.to_string().contains("ipam.hosts/1 (offset 0)"), "{error}");
    assert!(is_transient(&error), "a rebuild cures it: {error:#}");
}

/// A member that hands out records of a partition it never reported assigned (a member bug, not
/// seen): the driver does not decide them on an empty state, and takes the partition in at the
/// next rebuild instead of failing on it at every round.
#[test]
fn records_of_a_partition_never_reported_are_rebuilt_before_they_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_ticks(3);
    let mut driver = driver(&log, dir.path()).unwrap();
    consume(&mut driver, 3).unwrap();
    // As if the member had never reported the partition: the driver holds nothing of it.
    driver.owned.clear();
    driver.next_offsets.clear();
    driver.machines.forget(&hosts());
    append_ticks(&*log, 3..5);
    let error = driver.turn().unwrap_err();
    assert!(error.chain().any(|cause| cause.is::<NotRebuilt>()), "{error:#}");
    consume(&mut driver, 5).unwrap();
    assert_eq!(driver.machines.counts[&hosts()], 5, "rebuilt from the log, then the new inputs");
}

#[test]
fn a_snapshot_whose_last_input_is_another_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_ticks(3);
    let mut first = driver(&log, dir.path()).unwrap();
    consume(&mut first, 3).unwrap();
    first.stop().unwrap();
    // Same log, but the snapshot says its last input was another record.
    let store = SnapshotStore::open(dir.path(), log.identity().unwrap()).unwrap();
    let other = Anchor { offset: 2, digest: "0".repeat(64) };
    store.save(NAME, 3, Some(other), b"3".to_vec()).unwrap();

    let error = consume(&mut driver(&log, dir.path()).unwrap(), 3).unwrap_err();
    assert!(format!("{error:#}").contains("is another record in the log"), "{error:#}");
}

#[test]
fn a_snapshot_ahead_of_the_committed_position_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_ticks(3);
    let store = SnapshotStore::open(dir.path(), log.identity().unwrap()).unwrap();
    store.save(NAME, 1002, None, b"1002".to_vec()).unwrap();

    let error = consume(&mut driver(&log, dir.path()).unwrap(), 3).unwrap_err();
    assert!(
        format!("{error:#}").contains("up to offset 1002, but the log's committed position there is 0"),
        "{error:#}"
    );
}

#[test]
fn a_snapshot_of_another_log_is_refused_before_the_driver_starts() {
    let dir = tempfile::tempdir().unwrap();
    let old = log_with_ticks(3);
    let mut first = driver(&old, dir.path()).unwrap();
    consume(&mut first, 3).unwrap();
    first.stop().unwrap();

    let error = driver(&log_with_ticks(3), dir.path()).unwrap_err();
    assert!(format!("{error:#}").contains("was lost or replaced"), "{error:#}");
}

#[test]
fn a_snapshot_whose_state_cannot_be_read_is_ignored_and_replay_starts_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_ticks(3);
    let mut first = driver(&log, dir.path()).unwrap();
    consume(&mut first, 3).unwrap();
    first.stop().unwrap();
    let store = SnapshotStore::open(dir.path(), log.identity().unwrap()).unwrap();
    let snapshot = store.load(NAME).unwrap().unwrap();
    store.save(NAME, snapshot.offset, snapshot.anchor, b"{garbage".to_vec()).unwrap();

    append_ticks(&*log, 3..4);
    let mut second = driver(&log, dir.path()).unwrap();
    consume(&mut second, 4).unwrap();
    assert_eq!(second.machines.counts[&hosts()], 4, "replayed from zero");
}

#[test]
fn placement_answers_an_empty_batch_before_it_owns_its_partition() {
    // On Kafka a driver polls before the group assigns it anything: an empty batch then reaches
    // machines that hold no partition yet.
    let system = actix::System::new();
    let arbiter = actix::Arbiter::new();
    let mut placement =
        crate::placement::PlacementMachines::new(arbiter.handle(), ipam_core::placement::PlacementConfig::default());
    assert_eq!(placement.apply(&[]).unwrap(), Vec::<Applied>::new());
    let mut allocator = crate::allocator::AllocatorMachines::new(vec![arbiter.handle()]);
    assert_eq!(allocator.apply(&[]).unwrap(), Vec::<Applied>::new());
    arbiter.stop();
    drop(system);
}

/// Remembers the ids of each partition's inputs, in the order applied.
#[derive(Debug, Default)]
struct Recorder {
    ids: BTreeMap<TopicPartition, Vec<EventId>>,
}

impl Machines for Recorder {
    type Decoded = ();

    fn decode(&self, _: &[u8]) -> anyhow::Result<()> {
        Ok(())
    }

    fn restore(&mut self, partition: &TopicPartition, _: Option<()>) -> anyhow::Result<()> {
        self.ids.insert(partition.clone(), Vec::new());
        Ok(())
    }

    fn forget(&mut self, partition: &TopicPartition) {
        self.ids.remove(partition);
    }

    fn apply(&mut self, inputs: &[(TopicPartition, Input)]) -> anyhow::Result<Vec<Applied>> {
        for (partition, input) in inputs {
            let Input::Event(envelope) = input else { anyhow::bail!("a refused input") };
            self.ids.entry(partition.clone()).or_default().push(envelope.id);
        }
        Ok(vec![Applied { fresh: true, ..Applied::default() }; inputs.len()])
    }

    fn snapshot(&mut self, _: &TopicPartition) -> anyhow::Result<Vec<u8>> {
        Ok(Vec::new())
    }
}

#[test]
fn partitions_rebuilt_together_each_replay_their_own_inputs_in_order_up_to_the_committed_position() {
    let topics = Topics::new("", 4);
    let topic = topics.name(Topic::Networks);
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    log.create_topics(&topics.specs()).unwrap();
    // Enough records that a replay takes several batches, over partitions of different lengths.
    let records = tick_records(0..40_000, &topic, |n| format!("k{}", n % 50));
    log.append(&records).unwrap();
    // The group committed a different share of each partition; what lies past it is not replayed.
    let batch = BatchPolicy { max_steps: 1, max_delay: Duration::ZERO };
    let config = MemberConfig {
        group: "recorder".to_owned(),
        topics: vec![topic.clone()],
        transactional_id: "setup".to_owned(),
        batch,
    };
    let mut member = log.join(config).unwrap();
    member.poll(1, Duration::from_millis(100)).unwrap();
    let partitions: Vec<TopicPartition> =
        (0..4).map(|partition| TopicPartition { topic: topic.clone(), partition }).collect();
    let mut committed = BTreeMap::new();
    for (index, partition) in partitions.iter().enumerate() {
        let end = log.end_offset(&topic, partition.partition).unwrap();
        let at = end * (index as u64 + 1) / 5;
        member.step(&[], &[Position::at(partition, at)]).unwrap();
        committed.insert(partition.clone(), at);
    }
    member.commit().unwrap();
    drop(member);
    assert!(committed.values().filter(|at| **at > 2 * REPLAY_BATCH as u64 / 4).count() >= 2, "{committed:?}");

    let dir = tempfile::tempdir().unwrap();
    let config = DriverConfig {
        name: "recorder".to_owned(),
        group: "recorder".to_owned(),
        transactional_id: "recorder-0".to_owned(),
        input_topic: topic.clone(),
        batch,
        snapshot_every_records: u64::MAX,
        snapshot_every: Duration::from_secs(3600),
        snapshot_spacing: 0,
    };
    let store = SnapshotStore::open(dir.path(), log.identity().unwrap()).unwrap();
    let mut driver = Driver::new(Arc::clone(&log), topics, config, Recorder::default(), store, Health::new()).unwrap();
    driver.rebuild(&partitions).unwrap();

    for partition in &partitions {
        let at = committed[partition];
        let expected: Vec<EventId> = log
            .read(&topic, partition.partition, 0, at as usize, Duration::ZERO)
            .unwrap()
            .iter()
            .map(|record| Envelope::decode(&record.value).unwrap().id)
            .collect();
        assert_eq!(expected.len() as u64, at);
        assert!(driver.machines.ids[partition] == expected, "partition {} replayed other inputs", partition.partition);
        assert_eq!(driver.next_offsets[partition], at);
        assert_eq!(driver.last_applied.get(partition).copied(), at.checked_sub(1));
    }
}

#[test]
fn snapshots_decoded_in_parallel_are_answered_in_the_order_of_their_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_ticks(0);
    let driver = driver(&log, dir.path()).unwrap();
    // Sizes out of order, so that the largest-first threads finish them out of order; one
    // partition without a snapshot and one whose state cannot be read.
    let states: [Option<&str>; 6] = [Some("7"), None, Some("123456789"), Some("42"), Some("not a count"), Some("1000")];
    let found: Vec<Found> = states
        .iter()
        .enumerate()
        .map(|(partition, state)| Found {
            partition: TopicPartition { topic: "t".to_owned(), partition: partition as u32 },
            name: format!("t-{partition}"),
            committed: 0,
            snapshot: state.map(|state| Snapshot {
                log: "l".to_owned(),
                offset: 0,
                anchor: None,
                state: state.as_bytes().to_vec().into(),
            }),
        })
        .collect();
    let decoded: Vec<Option<Result<u64, String>>> = driver
        .decode_all(&found)
        .into_iter()
        .map(|answer| answer.map(|(result, _)| result.map_err(|error| error.to_string())))
        .collect();
    assert_eq!(decoded.len(), 6);
    assert_eq!(decoded[0], Some(Ok(7)));
    assert_eq!(decoded[1], None);
    assert_eq!(decoded[2], Some(Ok(123_456_789)));
    assert_eq!(decoded[3], Some(Ok(42)));
    assert!(matches!(decoded[4], Some(Err(_))), "{:?}", decoded[4]);
    assert_eq!(decoded[5], Some(Ok(1000)));
}

#[test]
fn a_snapshot_is_due_by_inputs_or_time_and_waits_for_nine_times_the_last_ones_cost() {
    let config = DriverConfig {
        snapshot_every_records: 1000,
        snapshot_every: Duration::from_secs(60),
        snapshot_spacing: SNAPSHOT_SPACING,
        ..counter_config()
    };
    let ms = Duration::from_millis;
    // Cheap snapshots: due at the inputs' count, or at the interval with anything new.
    assert!(!config.snapshot_due(999, ms(10), ms(1)));
    assert!(config.snapshot_due(1000, ms(10), ms(1)));
    assert!(config.snapshot_due(1, ms(60_000), ms(1)));
    assert!(!config.snapshot_due(0, ms(600_000), ms(1)));
    // A snapshot that took a second: the next waits nine seconds after it, whatever came since.
    assert!(!config.snapshot_due(1_000_000, ms(8_999), ms(1000)));
    assert!(config.snapshot_due(1000, ms(9_000), ms(1000)));
    // The interval alone does not override the spacing either.
    assert!(!config.snapshot_due(1, ms(60_000), ms(10_000)));
    assert!(config.snapshot_due(1, ms(90_000), ms(10_000)));
    // Without spacing (the simulation's drivers), the count alone decides.
    let by_count = DriverConfig { snapshot_spacing: 0, ..config };
    assert!(by_count.snapshot_due(1000, ms(0), ms(10_000)));
}
