//! One conformance suite for every `EventLog` backend: the same checks, generated per backend by
//! the `conformance!` macro at the bottom. Durable backends also run the crash checks, in which a
//! child process (`log-child`) is killed with SIGKILL between append and commit.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipam_log::dead_letter::{DeadLetter, Ingested, ingest};
use ipam_log::{
    BatchPolicy, EventLog, Follower, LogError, Member, MemberConfig, OutRecord, Position, Record, TopicSpec, partition,
};
use ipam_tests::BackendSpec;

/// A backend under test, with names unique to this test so that tests can share a broker.
pub struct Harness {
    spec: BackendSpec,
    log: Arc<dyn EventLog>,
    prefix: String,
    _dir: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("t{}-{}-{name}", nanos % 1_000_000_000_000, COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl Harness {
    pub fn memory() -> Harness {
        Harness::with(BackendSpec::Memory, None)
    }

    pub fn kafka() -> Harness {
        Harness::with(BackendSpec::Kafka(ipam_tests::kafka_bootstrap()), None)
    }

    pub fn embedded() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Harness::with(BackendSpec::Sqlite(dir.path().to_owned()), Some(dir))
    }

    fn with(spec: BackendSpec, dir: Option<tempfile::TempDir>) -> Harness {
        let log = spec.open().unwrap();
        Harness { spec, log, prefix: unique("conformance"), _dir: dir }
    }

    fn topic(&self, name: &str, partitions: u32) -> String {
        let topic = format!("{}.{name}", self.prefix);
        self.log.create_topics(&[TopicSpec { name: topic.clone(), partitions }]).unwrap();
        topic
    }

    fn name(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// The log as a new process would see it.
    fn reopen(&self) -> Arc<dyn EventLog> {
        if self.spec.is_durable() { self.spec.open().unwrap() } else { Arc::clone(&self.log) }
    }

    fn member(&self, group: &str, topics: &[&str], transactional_id: &str, max_steps: usize) -> Box<dyn Member> {
        self.log
            .join(MemberConfig {
                group: self.name(group),
                topics: topics.iter().map(|t| t.to_string()).collect(),
                transactional_id: self.name(transactional_id),
                batch: BatchPolicy { max_steps, max_delay: Duration::from_secs(600) },
            })
            .unwrap()
    }
}

fn out(topic: &str, key: &str, value: &str) -> OutRecord {
    OutRecord { topic: topic.to_owned(), key: key.to_owned(), value: value.as_bytes().to_vec() }
}

fn next(record: &Record) -> Position {
    Position { topic: record.topic.clone(), partition: record.partition, next_offset: record.offset + 1 }
}

/// Every committed record of a topic, partition by partition.
fn read_all(log: &dyn EventLog, topic: &str) -> Vec<Record> {
    let partitions = log.partition_count(topic).unwrap();
    let mut all = Vec::new();
    for partition in 0..partitions {
        let end = log.end_offset(topic, partition).unwrap();
        let mut from = 0;
        while from < end {
            let batch = log.read(topic, partition, from, 1000, Duration::from_millis(500)).unwrap();
            let Some(last) = batch.last() else { break };
            from = last.offset + 1;
            all.extend(batch);
        }
    }
    all
}

/// Polls until `count` records arrived, or fails at a deadline.
fn poll_records(member: &mut dyn Member, count: usize) -> Vec<Record> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = Vec::new();
    while records.len() < count {
        assert!(Instant::now() < deadline, "only {} of {count} records arrived", records.len());
        records.extend(member.poll(1000, Duration::from_millis(200)).unwrap().records);
    }
    assert_eq!(records.len(), count, "more records than expected");
    records
}

fn values(records: &[Record]) -> Vec<String> {
    let mut values: Vec<String> = records.iter().map(|r| String::from_utf8_lossy(&r.value).into_owned()).collect();
    values.sort();
    values
}

pub fn keeps_per_partition_order_and_offsets(h: &Harness) {
    let topic = h.topic("ordered", 4);
    let mut sent: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for batch in 0..3 {
        let records: Vec<OutRecord> = (0..40)
            .map(|i| {
                let n = batch * 40 + i;
                let key = format!("network-{}", n % 6);
                sent.entry(key.clone()).or_default().push(n.to_string());
                out(&topic, &key, &n.to_string())
            })
            .collect();
        let appended = h.log.append(&records).unwrap();
        for (record, at) in records.iter().zip(&appended) {
            assert_eq!(at.partition, partition::for_key(record.key.as_bytes(), 4));
        }
    }
    let mut received: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for p in 0..4 {
        let end = h.log.end_offset(&topic, p).unwrap();
        let records = h.log.read(&topic, p, 0, 1000, Duration::from_millis(500)).unwrap();
        assert!(records.windows(2).all(|w| w[0].offset < w[1].offset), "offsets grow within a partition");
        if let Some(last) = records.last() {
            assert!(end > last.offset, "end offset {end} is past the last record {}", last.offset);
            let tail = h.log.read(&topic, p, records[1].offset, 1000, Duration::ZERO).unwrap();
            assert_eq!(tail, records[1..], "reading from an offset returns the rest");
        }
        for record in records {
            assert_eq!(record.partition, p);
            assert_eq!(partition::for_key(record.key.as_bytes(), 4), p, "the key decides the partition");
            received.entry(record.key).or_default().push(String::from_utf8(record.value).unwrap());
        }
    }
    assert_eq!(received, sent, "every key's records come back in the order they were appended");
    h.log.create_topics(&[TopicSpec { name: topic.clone(), partitions: 4 }]).unwrap();
    let mismatch = h.log.create_topics(&[TopicSpec { name: topic.clone(), partitions: 8 }]);
    assert!(matches!(mismatch, Err(LogError::PartitionCountMismatch { .. })), "{mismatch:?}");
}

/// Takes records from a follower until `count` came (within a generous deadline).
fn follow_records(follower: &mut dyn Follower, count: usize) -> Vec<Record> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = Vec::new();
    while records.len() < count {
        assert!(Instant::now() < deadline, "only {} of {count} records were handed out", records.len());
        records.extend(follower.next(count - records.len(), Duration::from_millis(200)).unwrap());
    }
    assert_eq!(records.len(), count, "more records than asked for");
    records
}

pub fn follows_partitions_from_their_positions_and_hands_out_new_commits(h: &Harness) {
    let topic = h.topic("followed", 2);
    let other = h.topic("other", 1);
    let on = |partition: u32, i: usize| {
        (0..).map(|k| format!("k{i}-{k}")).find(|key| partition::for_key(key.as_bytes(), 2) == partition).unwrap()
    };
    let first: Vec<OutRecord> = (0..6).map(|i| out(&topic, &on(i as u32 % 2, i), &format!("first-{i}"))).collect();
    let appended = h.log.append(&first).unwrap();
    // Partition 0 from its start, partition 1 after its first record; `other` not followed.
    let skip = appended.iter().filter(|a| a.partition == 1).map(|a| a.offset).min().unwrap() + 1;
    let mut follower = h
        .log
        .follow(&[
            Position { topic: topic.clone(), partition: 0, next_offset: 0 },
            Position { topic: topic.clone(), partition: 1, next_offset: skip },
        ])
        .unwrap();
    h.log.append(&[out(&other, "k", "elsewhere")]).unwrap();
    let records = follow_records(&mut *follower, 5);
    assert_eq!(values(&records), ["first-0", "first-2", "first-3", "first-4", "first-5"]);
    for partition in 0..2 {
        let offsets: Vec<u64> = records.iter().filter(|r| r.partition == partition).map(|r| r.offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offset order within partition {partition}: {offsets:?}");
    }
    assert!(follower.next(10, Duration::from_millis(50)).unwrap().is_empty(), "nothing more yet");

    // A record committed while the follower waits is handed out in that same call.
    let log = Arc::clone(&h.log);
    let late = out(&topic, &on(1, 9), "late");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        log.append(&[late]).unwrap();
    });
    let started = Instant::now();
    let mut came = Vec::new();
    while came.is_empty() && started.elapsed() < Duration::from_secs(30) {
        came = follower.next(10, Duration::from_secs(30)).unwrap();
    }
    writer.join().unwrap();
    assert_eq!(values(&came), ["late"]);
    let last = came[0].clone();
    let positions = follower.positions();
    assert!(positions.contains(&next(&last)), "the position moves past what was handed out: {positions:?}");

    // Following another partition later, and moving one back.
    follower.seek(&Position { topic: other.clone(), partition: 0, next_offset: 0 }).unwrap();
    follower.seek(&Position { topic: topic.clone(), partition: 1, next_offset: last.offset }).unwrap();
    let again = follow_records(&mut *follower, 2);
    assert_eq!(values(&again), ["elsewhere", "late"]);
}

/// A follower and a member asked for a few records at a time, over many partitions, hand out every
/// record once: what a call leaves unread for lack of room comes at the next calls, with nothing
/// new written meanwhile (the local backends read only the partitions written since their last
/// call, and those left unfinished).
pub fn hands_out_every_partition_a_few_records_at_a_time(h: &Harness) {
    let topic = h.topic("narrow", 8);
    let records: Vec<OutRecord> = (0..40).map(|i| out(&topic, &format!("key-{i}"), &format!("v{i:02}"))).collect();
    h.log.append(&records).unwrap();
    let expected: Vec<String> = (0..40).map(|i| format!("v{i:02}")).collect();
    let from_zero: Vec<Position> =
        (0..8).map(|partition| Position { topic: topic.clone(), partition, next_offset: 0 }).collect();
    let mut follower = h.log.follow(&from_zero).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut followed = Vec::new();
    while followed.len() < 40 {
        assert!(Instant::now() < deadline, "the follower handed out {} of 40 records", followed.len());
        let came = follower.next(3, Duration::from_millis(200)).unwrap();
        assert!(came.len() <= 3, "{} records for a max of 3", came.len());
        followed.extend(came);
    }
    assert_eq!(values(&followed), expected);

    let mut member = h.member("narrow-group", &[&topic], "narrow-tx", 100);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut polled = Vec::new();
    while polled.len() < 40 {
        assert!(Instant::now() < deadline, "the member polled {} of 40 records", polled.len());
        let came = member.poll(3, Duration::from_millis(200)).unwrap().records;
        assert!(came.len() <= 3, "{} records for a max of 3", came.len());
        polled.extend(came);
    }
    assert_eq!(values(&polled), expected);
}

/// A record another process appends (here another opening of the same log, with a notifier of its
/// own) reaches a follower even while this process keeps writing to another partition and waking
/// it: a woken local follower reads the partitions this process wrote to, and every partition at
/// least every few tens of milliseconds.
pub fn sees_another_process_records_while_its_own_keep_coming(h: &Harness) {
    let topic = h.topic("shared", 2);
    let on = |partition: u32, i: usize| {
        (0..).map(|k| format!("k{i}-{k}")).find(|key| partition::for_key(key.as_bytes(), 2) == partition).unwrap()
    };
    let from_zero: Vec<Position> =
        (0..2).map(|partition| Position { topic: topic.clone(), partition, next_offset: 0 }).collect();
    let mut follower = h.log.follow(&from_zero).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (log, writer_stop, own_key) = (Arc::clone(&h.log), Arc::clone(&stop), on(0, 0));
    let own_topic = topic.clone();
    let writer = std::thread::spawn(move || {
        let mut written = 0;
        while !writer_stop.load(Ordering::SeqCst) && written < 20_000 {
            log.append(&[out(&own_topic, &own_key, "own")]).unwrap();
            written += 1;
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    // Let the follower be woken by this process's writes before the other one writes.
    let mut own = follow_records(&mut *follower, 5);
    h.reopen().append(&[out(&topic, &on(1, 1), "foreign")]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !own.iter().any(|record| record.value == b"foreign") {
        assert!(Instant::now() < deadline, "the other process's record did not come within 30 s");
        own.extend(follower.next(100, Duration::from_millis(200)).unwrap());
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
}

/// Reads and seeks that hop between partitions and back, many times in a row, as the backlog
/// checks and rebuilds do. Each answer starts where it was asked to. (librdkafka 2.12 aborted the
/// whole process when a partition left a consumer's assignment twice in quick succession, which
/// the Kafka backend's assign-per-read once did.)
pub fn reads_and_seeks_back_and_forth_many_times(h: &Harness) {
    let topic = h.topic("hops", 3);
    let on = |partition: u32| {
        (0..).map(|k| format!("k{k}")).find(|key| partition::for_key(key.as_bytes(), 3) == partition).unwrap()
    };
    let records: Vec<OutRecord> = (0..3)
        .flat_map(|p| (0..5).map(move |i| (p, i)))
        .map(|(p, i)| out(&topic, &on(p), &format!("{p}-{i}")))
        .collect();
    h.log.append(&records).unwrap();
    for round in 0..60u64 {
        let partition = (round % 3) as u32;
        let from = (round * 7) % 5;
        let read = h.log.read(&topic, partition, from, 1, Duration::from_millis(500)).unwrap();
        assert_eq!(values(&read), [format!("{partition}-{from}")], "round {round}");
        // A look at the end returns at once, with nothing.
        assert!(h.log.read(&topic, partition, 5, 1, Duration::ZERO).unwrap().is_empty(), "round {round}");
    }
    let mut follower = h.log.follow(&[Position { topic: topic.clone(), partition: 0, next_offset: 5 }]).unwrap();
    for round in 0..30u64 {
        let partition = (round % 3) as u32;
        let from = (round * 3) % 5;
        follower.seek(&Position { topic: topic.clone(), partition, next_offset: from }).unwrap();
        // Other followed partitions may hand out what lies after their positions first.
        let deadline = Instant::now() + Duration::from_secs(60);
        let first = loop {
            assert!(Instant::now() < deadline, "round {round}: nothing came from partition {partition}");
            let came = follower.next(10, Duration::from_millis(200)).unwrap();
            if let Some(record) = came.into_iter().find(|r| r.partition == partition) {
                break record;
            }
        };
        assert_eq!(first.offset, from, "round {round}: partition {partition} starts where it was sought");
    }
}

pub fn reads_nothing_beyond_any_offset(h: &Harness) {
    let topic = h.topic("far", 1);
    h.log.append(&[out(&topic, "k", "only")]).unwrap();
    for from in [1, 1 << 40, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
        match h.log.read(&topic, 0, from, 10, Duration::ZERO) {
            Ok(records) => assert!(records.is_empty(), "nothing lies at offset {from}: {records:?}"),
            Err(error) => assert!(matches!(error, LogError::Storage(_)), "offset {from}: {error:?}"),
        }
    }
}

pub fn commits_positions_and_resumes_from_them(h: &Harness) {
    let input = h.topic("input", 2);
    h.log.append(&(0..10).map(|i| out(&input, &format!("k{i}"), &format!("first-{i}"))).collect::<Vec<_>>()).unwrap();
    let mut member = h.member("group", &[&input], "txn", 1000);
    let records = poll_records(&mut *member, 10);
    let positions: Vec<Position> = records.iter().map(next).collect();
    member.step(&[], &positions).unwrap();
    member.commit().unwrap();
    for p in 0..2 {
        let last = records.iter().filter(|r| r.partition == p).map(|r| r.offset).max();
        let committed = h.log.committed_position(&h.name("group"), &input, p).unwrap();
        assert_eq!(committed, last.map(|o| o + 1), "partition {p}");
    }
    drop(member);
    h.log.append(&(0..5).map(|i| out(&input, &format!("k{i}"), &format!("second-{i}"))).collect::<Vec<_>>()).unwrap();
    let mut resumed = h.member("group", &[&input], "txn", 1000);
    let records = poll_records(&mut *resumed, 5);
    assert!(records.iter().all(|r| r.value.starts_with(b"second")), "resumed at the committed positions");
}

pub fn makes_a_step_visible_only_when_it_commits(h: &Harness) {
    let input = h.topic("input", 1);
    let output = h.topic("output", 2);
    h.log.append(&(0..3).map(|i| out(&input, "k", &i.to_string())).collect::<Vec<_>>()).unwrap();
    let mut member = h.member("group", &[&input], "txn", 100);
    for record in poll_records(&mut *member, 3) {
        let value = format!("out-{}", String::from_utf8_lossy(&record.value));
        member.step(&[out(&output, &record.key, &value)], &[next(&record)]).unwrap();
    }
    assert_eq!(member.pending_steps(), 3);
    assert!(read_all(&*h.log, &output).is_empty(), "outputs of an open batch are invisible");
    assert_eq!(h.log.committed_position(&h.name("group"), &input, 0).unwrap(), None);
    member.commit().unwrap();
    assert_eq!(values(&read_all(&*h.log, &output)), ["out-0", "out-1", "out-2"]);
    let end = h.log.end_offset(&input, 0).unwrap();
    let committed = h.log.committed_position(&h.name("group"), &input, 0).unwrap().unwrap();
    assert!(committed <= end && committed > 2, "position {committed} is past the last input");
}

pub fn discards_an_aborted_step_and_delivers_its_inputs_again(h: &Harness) {
    let input = h.topic("input", 1);
    let output = h.topic("output", 1);
    h.log.append(&(0..3).map(|i| out(&input, "k", &i.to_string())).collect::<Vec<_>>()).unwrap();
    let mut member = h.member("group", &[&input], "txn", 100);
    let records = poll_records(&mut *member, 3);
    member.step(&[out(&output, "k", "doomed")], &[next(&records[2])]).unwrap();
    member.abort().unwrap();
    assert!(read_all(&*h.log, &output).is_empty(), "aborted outputs are invisible");
    assert_eq!(h.log.committed_position(&h.name("group"), &input, 0).unwrap(), None, "positions unchanged");
    let again = poll_records(&mut *member, 3);
    assert_eq!(values(&again), values(&records), "the inputs come again after an abort");
    member.step(&[out(&output, "k", "kept")], &[next(&again[2])]).unwrap();
    member.commit().unwrap();
    assert_eq!(values(&read_all(&*h.log, &output)), ["kept"]);
}

pub fn fences_a_zombie_member(h: &Harness) {
    let input = h.topic("input", 1);
    let output = h.topic("output", 1);
    h.log.append(&[out(&input, "k", "in")]).unwrap();
    let mut zombie = h.member("group", &[&input], "txn", 100);
    let records = poll_records(&mut *zombie, 1);
    zombie.step(&[out(&output, "k", "from the zombie")], &[next(&records[0])]).unwrap();
    let mut successor = h.member("group", &[&input], "txn", 100);
    let fenced = zombie.commit();
    assert!(matches!(fenced, Err(LogError::Fenced(_))), "the older member must be fenced: {fenced:?}");
    assert!(matches!(zombie.step(&[], &[]), Err(LogError::Fenced(_))), "and stay fenced");
    let records = poll_records(&mut *successor, 1);
    successor.step(&[out(&output, "k", "from the successor")], &[next(&records[0])]).unwrap();
    successor.commit().unwrap();
    assert_eq!(values(&read_all(&*h.log, &output)), ["from the successor"], "the zombie's outputs never appear");
}

pub fn dead_letters_bad_records_and_moves_on(h: &Harness) {
    let input = h.topic("networks", 1);
    let rejections = h.topic("reservations", 1);
    let dead = h.topic("dead-letter", 1);
    let network = "00000000-0000-0000-0000-000000000001";
    let valid = serde_json::json!({
        "specversion": "1.0", "id": "00000000-0000-0000-0000-00000000aaa1", "source": "engine",
        "type": "ipam.network.upserted.v1", "time": "2026-11-30T00:00:00Z",
        "data": {"network_id": network, "name": "n", "ipam_enabled": true},
    });
    let mut bad_mac = serde_json::json!({
        "specversion": "1.0", "id": "00000000-0000-0000-0000-00000000aaa2", "source": "engine",
        "type": "ipam.vnic.started.v1", "time": "2026-11-30T00:00:00Z",
        "data": {"network_id": network, "vnic_id": network, "vm_id": network, "mac": "ff:ff:ff:ff:ff:ff"},
    });
    h.log
        .append(&[
            OutRecord { topic: input.clone(), key: network.to_owned(), value: valid.to_string().into_bytes() },
            OutRecord { topic: input.clone(), key: network.to_owned(), value: b"\xff not json at all".to_vec() },
            OutRecord { topic: input.clone(), key: network.to_owned(), value: bad_mac.to_string().into_bytes() },
        ])
        .unwrap();
    let mut member = h.member("group", &[&input], "txn", 100);
    let mut events = 0;
    for record in poll_records(&mut *member, 3) {
        let outputs = match ingest(&record) {
            Ingested::Event(_) => {
                events += 1;
                vec![]
            }
            Ingested::Rejected { rejection, .. } => vec![OutRecord { topic: rejections.clone(), ..rejection }],
            Ingested::DeadLetter(letter) => vec![OutRecord { topic: dead.clone(), ..letter }],
        };
        member.step(&outputs, &[next(&record)]).unwrap();
    }
    member.commit().unwrap();
    assert_eq!(events, 1);
    let letters = read_all(&*h.log, &dead);
    assert_eq!(letters.len(), 1);
    let letter: DeadLetter = serde_json::from_slice(&letters[0].value).unwrap();
    assert_eq!((letter.source_topic.as_str(), letter.source_partition), (input.as_str(), 0));
    assert!(letter.reason.contains("not JSON"), "{}", letter.reason);
    assert_eq!(letter.value().unwrap(), b"\xff not json at all");
    let rejected = read_all(&*h.log, &rejections);
    assert_eq!(rejected.len(), 1);
    let rejection: serde_json::Value = serde_json::from_slice(&rejected[0].value).unwrap();
    assert_eq!(rejection["data"]["code"], "invalid_mac");
    assert_eq!(rejection["data"]["cause"], "00000000-0000-0000-0000-00000000aaa2");
    let end = h.log.end_offset(&input, 0).unwrap();
    assert_eq!(h.log.committed_position(&h.name("group"), &input, 0).unwrap(), Some(end), "the consumer moved on");
    bad_mac["data"]["mac"] = serde_json::json!("52:54:00:00:00:01");
}

pub fn leaves_nothing_of_a_step_killed_before_commit(h: &Harness) {
    let input = h.topic("input", 1);
    let output = h.topic("output", 1);
    h.log.append(&[out(&input, "k", "a"), out(&input, "k", "b")]).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_log-child"))
        .args(["step-then-wait", &h.spec.to_arg(), &input, &output, &h.name("group"), &h.name("txn")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("stepped 2"), "the child did not step: {line:?}");
    child.kill().unwrap(); // SIGKILL on Unix: no destructor, no rollback by the child.
    child.wait().unwrap();

    let log = h.reopen();
    assert!(read_all(&*log, &output).is_empty(), "outputs of the killed step are invisible");
    assert_eq!(log.committed_position(&h.name("group"), &input, 0).unwrap(), None, "positions unchanged");
    let mut successor = log
        .join(MemberConfig {
            group: h.name("group"),
            topics: vec![input.clone()],
            transactional_id: h.name("txn"),
            batch: BatchPolicy { max_steps: 1, max_delay: Duration::from_secs(1) },
        })
        .unwrap();
    let records = poll_records(&mut *successor, 2);
    successor.step(&[out(&output, "k", "after the crash")], &[next(&records[1])]).unwrap();
    // The policy closed the batch (one step); `commit` returns once it is written.
    successor.commit().unwrap();
    assert_eq!(values(&read_all(&*log, &output)), ["after the crash"]);
}

pub fn keeps_every_batch_whole_when_killed_mid_commit(h: &Harness) {
    const OUTPUTS_PER_INPUT: usize = 50;
    let input = h.topic("input", 1);
    let output = h.topic("output", 1);
    let inputs: Vec<OutRecord> = (0..3000).map(|i| out(&input, "k", &i.to_string())).collect();
    h.log.append(&inputs).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_log-child"))
        .args(["commit-loop", &h.spec.to_arg(), &input, &output, &h.name("group"), &h.name("txn")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "committing");
    // A pseudo-random moment, so that over many runs the kill lands at every point of a commit.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    std::thread::sleep(Duration::from_millis(50 + u64::from(nanos % 400)));
    child.kill().unwrap();
    child.wait().unwrap();

    let log = h.reopen();
    // A successor with the same transactional id settles whatever the killed one left open.
    let _successor = log
        .join(MemberConfig {
            group: h.name("group"),
            topics: vec![input.clone()],
            transactional_id: h.name("txn"),
            batch: BatchPolicy { max_steps: 1, max_delay: Duration::from_secs(1) },
        })
        .unwrap();
    let position = log.committed_position(&h.name("group"), &input, 0).unwrap().unwrap_or(0);
    let consumed: Vec<u64> =
        read_all(&*log, &input).iter().map(|r| r.offset).filter(|offset| *offset < position).collect();
    let mut per_input: std::collections::BTreeMap<u64, usize> = Default::default();
    for record in read_all(&*log, &output) {
        let value = String::from_utf8(record.value).unwrap();
        let offset: u64 = value.split('-').next().unwrap().parse().unwrap();
        *per_input.entry(offset).or_default() += 1;
    }
    assert!(!consumed.is_empty() && consumed.len() < 3000, "the kill landed mid-run ({} inputs done)", consumed.len());
    assert_eq!(per_input.keys().copied().collect::<Vec<_>>(), consumed, "outputs exist exactly for committed inputs");
    assert!(per_input.values().all(|n| *n == OUTPUTS_PER_INPUT), "every batch is whole");
}

pub fn keeps_records_and_positions_across_reopening(h: &Harness) {
    let input = h.topic("input", 1);
    h.log.append(&[out(&input, "k", "kept")]).unwrap();
    let mut member = h.member("group", &[&input], "txn", 1);
    let records = poll_records(&mut *member, 1);
    member.step(&[], &[next(&records[0])]).unwrap();
    drop(member);
    let log = h.reopen();
    assert_eq!(values(&read_all(&*log, &input)), ["kept"]);
    assert_eq!(log.committed_position(&h.name("group"), &input, 0).unwrap(), Some(records[0].offset + 1));
}

macro_rules! conformance {
    ($backend:ident, $harness:expr, [$($check:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[test]
                fn $check() {
                    super::$check(&$harness);
                }
            )*
        }
    };
}

conformance!(
    memory,
    super::Harness::memory(),
    [
        keeps_per_partition_order_and_offsets,
        follows_partitions_from_their_positions_and_hands_out_new_commits,
        hands_out_every_partition_a_few_records_at_a_time,
        reads_nothing_beyond_any_offset,
        reads_and_seeks_back_and_forth_many_times,
        commits_positions_and_resumes_from_them,
        makes_a_step_visible_only_when_it_commits,
        discards_an_aborted_step_and_delivers_its_inputs_again,
        fences_a_zombie_member,
        dead_letters_bad_records_and_moves_on,
    ]
);

conformance!(
    embedded,
    super::Harness::embedded(),
    [
        keeps_per_partition_order_and_offsets,
        follows_partitions_from_their_positions_and_hands_out_new_commits,
        hands_out_every_partition_a_few_records_at_a_time,
        reads_nothing_beyond_any_offset,
        reads_and_seeks_back_and_forth_many_times,
        commits_positions_and_resumes_from_them,
        makes_a_step_visible_only_when_it_commits,
        discards_an_aborted_step_and_delivers_its_inputs_again,
        fences_a_zombie_member,
        dead_letters_bad_records_and_moves_on,
        leaves_nothing_of_a_step_killed_before_commit,
        keeps_every_batch_whole_when_killed_mid_commit,
        keeps_records_and_positions_across_reopening,
        sees_another_process_records_while_its_own_keep_coming,
    ]
);

conformance!(
    kafka,
    super::Harness::kafka(),
    [
        keeps_per_partition_order_and_offsets,
        follows_partitions_from_their_positions_and_hands_out_new_commits,
        hands_out_every_partition_a_few_records_at_a_time,
        reads_nothing_beyond_any_offset,
        reads_and_seeks_back_and_forth_many_times,
        commits_positions_and_resumes_from_them,
        makes_a_step_visible_only_when_it_commits,
        discards_an_aborted_step_and_delivers_its_inputs_again,
        fences_a_zombie_member,
        dead_letters_bad_records_and_moves_on,
        leaves_nothing_of_a_step_killed_before_commit,
        keeps_every_batch_whole_when_killed_mid_commit,
        keeps_records_and_positions_across_reopening,
    ]
);
