//! What only the Kafka backend has, against a real broker: consumer-group rebalancing between
//! members, batches committed by count or age in transactions, and option clashes. The semantics
//! every backend keeps are checked by the conformance suite in `tests/it/log.rs`, Kafka included.
//!
//! Start a broker with `scripts/kafka-broker.sh start` and export the address it prints as
//! `IPAM_KAFKA_BOOTSTRAP`. Every test uses its own topics, groups and transactional ids, so tests
//! share the broker and run in parallel; they wait by polling against deadlines.

// Fixtures outside #[test] functions unwrap freely: a failure there is a broken test, not bad input.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipam_log::{
    BatchPolicy, EventLog, LogError, Member, MemberConfig, OutRecord, Position, Record, TopicPartition, TopicSpec,
    partition,
};
use ipam_log_kafka::{KafkaLog, KafkaOptions};

/// The broker helper `ipam-tests` shares, for the test that kills its own broker.
#[path = "../../../tests/kafka_broker.rs"]
mod kafka_broker;

const DEADLINE: Duration = Duration::from_secs(60);

fn bootstrap() -> String {
    match std::env::var("IPAM_KAFKA_BOOTSTRAP") {
        Ok(address) if !address.trim().is_empty() => address,
        _ => panic!(
            "IPAM_KAFKA_BOOTSTRAP is not set. These tests need a Kafka broker: run \
             `eval \"$(scripts/kafka-broker.sh start | tail -n1 | sed 's/^KAFKA_BOOTSTRAP=/export IPAM_KAFKA_BOOTSTRAP=/')\"` \
             from the repository root (it needs Java 17+ and Maven Central), then run the tests again; \
             `scripts/kafka-broker.sh stop` stops the broker."
        ),
    }
}

fn options() -> KafkaOptions {
    let mut options = KafkaOptions::new(bootstrap());
    options.transaction_timeout_ms = 10_000;
    options
}

fn connect() -> KafkaLog {
    KafkaLog::connect(options()).expect("connect to the broker at IPAM_KAFKA_BOOTSTRAP")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test, or earlier run against the same broker, uses.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("t{}-{}-{}-{name}", nanos % 1_000_000_000_000, std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The topic where `group`'s members keep their positions (the member's `positions::topic_of`).
fn positions_topic(group: &str) -> String {
    format!("{group}.positions")
}

/// The key of the records a member seals a partition with (the backend's `record::SEAL_KEY`).
const SEAL_KEY: &[u8] = b"ipam.seal";

/// How many committed sealing records `topic` holds.
fn seals(log: &KafkaLog, topic: &str) -> usize {
    seal_offsets(log, topic).len()
}

/// Where `topic`'s committed sealing records are (partition, offset), read by a plain
/// read_committed consumer: the backend's own reads never hand one out.
fn seal_offsets(log: &KafkaLog, topic: &str) -> Vec<(i32, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let raw: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("seal-counter"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let partitions = log.partition_count(topic).unwrap();
    let mut assigned = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        assigned.add_partition_offset(topic, i32::try_from(partition).unwrap(), rdkafka::Offset::Beginning).unwrap();
    }
    raw.assign(&assigned).unwrap();
    let (mut seals, mut at_end) = (Vec::new(), BTreeSet::new());
    let deadline = Instant::now() + DEADLINE;
    while at_end.len() < usize::try_from(partitions).unwrap() {
        assert!(Instant::now() < deadline, "{topic} was not read to its end");
        match raw.poll(Duration::from_millis(100)) {
            Some(Ok(message)) if message.key() == Some(SEAL_KEY) => seals.push((message.partition(), message.offset())),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            _ => {}
        }
    }
    seals
}

fn topic(log: &KafkaLog, name: &str, partitions: u32) -> String {
    let topic = unique(name);
    log.create_topics(&[TopicSpec { name: topic.clone(), partitions }]).unwrap();
    topic
}

fn member(log: &KafkaLog, group: &str, topics: &[&str], transactional_id: &str, max_steps: usize) -> Box<dyn Member> {
    log.join(MemberConfig {
        group: group.to_owned(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        transactional_id: transactional_id.to_owned(),
        batch: BatchPolicy { max_steps, max_delay: Duration::from_secs(600) },
    })
    .unwrap()
}

fn out(topic: &str, key: &str, value: &str) -> OutRecord {
    OutRecord { topic: topic.to_owned(), key: key.to_owned(), value: value.as_bytes().to_vec() }
}

fn next(record: &Record) -> Position {
    Position { topic: record.topic.clone(), partition: record.partition, next_offset: record.offset + 1 }
}

/// Every committed record of a topic, partition by partition, read from the beginning.
fn read_all(log: &dyn EventLog, topic: &str) -> Vec<Record> {
    let partitions = log.partition_count(topic).unwrap();
    let mut all = Vec::new();
    for partition in 0..partitions {
        let end = log.end_offset(topic, partition).unwrap();
        let mut from = 0;
        while from < end {
            let batch = log.read(topic, partition, from, 1000, Duration::from_millis(200)).unwrap();
            let Some(last) = batch.last() else { break };
            from = last.offset + 1;
            all.extend(batch);
        }
    }
    all
}

/// Waits until `topic`/`partition` holds `count` records written, committed or not (the high
/// watermark a read_uncommitted client sees), so that an abort has something on the broker to hide.
fn await_written(bootstrap: &str, topic: &str, partition: i32, count: i64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let high = high_watermark(bootstrap, topic, partition);
        if high >= count {
            return;
        }
        assert!(Instant::now() < deadline, "{topic}/{partition} has {high} records, not {count}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How many records `topic`/`partition` holds written, committed or not, markers included.
fn high_watermark(bootstrap: &str, topic: &str, partition: i32) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let raw: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap();
    raw.fetch_watermarks(topic, partition, Duration::from_secs(10)).unwrap().1
}

/// Polls until `count` records arrived, or fails at the deadline.
fn poll_records(member: &mut dyn Member, count: usize) -> Vec<Record> {
    let deadline = Instant::now() + DEADLINE;
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

#[test]
fn unknown_topics_and_partitions_are_errors() {
    let log = connect();
    let missing = unique("missing");
    assert_eq!(log.partition_count(&missing), Err(LogError::UnknownTopic(missing.clone())));
    assert!(matches!(log.append(&[out(&missing, "k", "v")]), Err(LogError::UnknownTopic(_))));
    let topic = topic(&log, "small", 2);
    assert_eq!(log.partition_count(&topic), Ok(2));
    assert!(matches!(log.read(&topic, 2, 0, 10, Duration::ZERO), Err(LogError::NoSuchPartition { partition: 2, .. })));
    assert!(matches!(log.end_offset(&topic, 7), Err(LogError::NoSuchPartition { .. })));
    assert_eq!(log.committed_position(&unique("group"), &topic, 1), Ok(None), "no position before any commit");
}

#[test]
fn a_pass_through_key_that_clashes_is_a_config_error() {
    let mut options = KafkaOptions::new("127.0.0.1:1");
    options.passthrough.insert("isolation.level".to_owned(), "read_uncommitted".to_owned());
    let checked = options.validate();
    assert!(matches!(&checked, Err(LogError::Config(m)) if m.contains("isolation.level")), "{checked:?}");
    let connected = KafkaLog::connect(options);
    assert!(matches!(&connected, Err(LogError::Config(m)) if m.contains("isolation.level")), "{connected:?}");

    // A key librdkafka does not know is a configuration error too, found when the clients are made.
    let mut options = self::options();
    options.passthrough.insert("no.such.setting".to_owned(), "1".to_owned());
    let connected = KafkaLog::connect(options);
    assert!(matches!(&connected, Err(LogError::Config(m)) if m.contains("no.such.setting")), "{connected:?}");
}

#[test]
fn a_batch_commits_after_max_steps_or_max_delay() {
    let max_delay = Duration::from_millis(300);
    let log = connect();
    let input = topic(&log, "input", 1);
    let output = topic(&log, "output", 1);
    log.append(&(0..3).map(|i| out(&input, "k", &i.to_string())).collect::<Vec<_>>()).unwrap();
    let mut member = log
        .join(MemberConfig {
            group: unique("group"),
            topics: vec![input.clone()],
            transactional_id: unique("txn"),
            batch: BatchPolicy { max_steps: 2, max_delay },
        })
        .unwrap();
    let records = poll_records(&mut *member, 3);
    member.step(&[out(&output, "k", "a")], &[next(&records[0])]).unwrap();
    member.step(&[out(&output, "k", "b")], &[next(&records[1])]).unwrap();
    // The second step filled the batch: its commit is under way, and the next step queues behind
    // it until it is done.
    member.step(&[out(&output, "k", "c")], &[next(&records[2])]).unwrap();
    let queued = Instant::now();
    assert_eq!(member.pending_steps(), 3, "nothing was known committed yet");
    let deadline = Instant::now() + DEADLINE;
    while member.pending_steps() > 1 {
        assert!(Instant::now() < deadline, "the full batch never committed");
        member.poll(10, Duration::from_millis(10)).unwrap();
    }
    // Unless the full batch's commit took the delay (a loaded machine), the queued step's batch
    // was not due when the last poll opened it, and nothing commits it between calls.
    if queued.elapsed() < max_delay {
        assert_eq!(values(&read_all(&log, &output)), ["a", "b"], "the full batch alone is committed");
        assert_eq!(member.pending_steps(), 1);
    }
    let deadline = Instant::now() + DEADLINE;
    while member.pending_steps() > 0 {
        assert!(Instant::now() < deadline, "the overdue batch never committed");
        member.poll(10, Duration::from_millis(100)).unwrap();
    }
    assert_eq!(values(&read_all(&log, &output)), ["a", "b", "c"], "poll committed the overdue batch");
}

#[test]
fn steps_taken_while_a_commit_is_in_flight_go_out_in_the_next_transaction_in_order() {
    let log = connect();
    let input = topic(&log, "input", 1);
    let output = topic(&log, "output", 1);
    let group = unique("group");
    let count = 60;
    log.append(&(0..count).map(|i| out(&input, "k", &i.to_string())).collect::<Vec<_>>()).unwrap();
    let mut member = member(&log, &group, &[&input], &unique("txn"), 7);
    let records = poll_records(&mut *member, count);
    let mut most_pending = 0;
    let in_order = |records: &[Record]| -> Vec<String> {
        records.iter().map(|r| String::from_utf8_lossy(&r.value).into_owned()).collect()
    };
    for (record, value) in records.iter().zip(in_order(&records)) {
        member.step(&[out(&output, "k", &value)], &[next(record)]).unwrap();
        most_pending = most_pending.max(member.pending_steps());
    }
    // A full batch's commit was under way when the next step came: that step queued behind it.
    assert!(most_pending > 7, "no step was queued behind a commit in flight (at most {most_pending} pending)");
    member.commit().unwrap();
    assert_eq!(member.pending_steps(), 0, "the commit waited for everything stepped");
    let expected: Vec<String> = (0..count).map(|i| i.to_string()).collect();
    assert_eq!(in_order(&records), expected, "the input, as appended");
    assert_eq!(in_order(&read_all(&log, &output)), expected, "every output once, in step order");
    assert_eq!(log.committed_position(&group, &input, 0), Ok(Some(count as u64)));
}

/// Polls both members until `done` holds for their assignments, or fails at the deadline.
fn poll_until(
    members: &mut [&mut Box<dyn Member>],
    what: &str,
    done: impl Fn(&[Vec<TopicPartition>]) -> bool,
) -> Vec<ipam_log::Polled> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = vec![ipam_log::Polled::default(); members.len()];
    loop {
        let assignments: Vec<Vec<TopicPartition>> = members.iter().map(|m| m.assignment()).collect();
        if done(&assignments) {
            return seen;
        }
        assert!(Instant::now() < deadline, "{what}: assignments are {assignments:?}");
        for (member, seen) in members.iter_mut().zip(&mut seen) {
            let polled = member.poll(100, Duration::from_millis(100)).unwrap();
            seen.assigned.extend(polled.assigned);
            seen.revoked.extend(polled.revoked);
            seen.lost.extend(polled.lost);
            seen.records.extend(polled.records);
        }
    }
}

#[test]
fn two_members_split_four_partitions_and_one_takes_all_when_the_other_leaves() {
    let log = connect();
    let input = topic(&log, "input", 4);
    let group = unique("group");
    let mut a = member(&log, &group, &[&input], &unique("txn-a"), 100);
    poll_until(&mut [&mut a], "the first member gets every partition", |s| s[0].len() == 4);
    let mut b = member(&log, &group, &[&input], &unique("txn-b"), 100);
    let seen =
        poll_until(&mut [&mut a, &mut b], "two members split the partitions", |s| s[0].len() == 2 && s[1].len() == 2);
    let (left_a, left_b) = (a.assignment(), b.assignment());
    assert!(left_a.iter().all(|tp| !left_b.contains(tp)), "no partition has two owners: {left_a:?} {left_b:?}");
    assert_eq!(seen[0].revoked.len(), 2, "the first member handed two partitions over cleanly: {:?}", seen[0]);
    assert!(seen[0].lost.is_empty(), "{:?}", seen[0]);
    let mut moved = seen[1].assigned.clone();
    moved.sort();
    assert_eq!(moved, left_b, "the second member was told what it got");

    // Records of the second member's partitions reach it, and nobody else.
    let records: Vec<OutRecord> = (0..40).map(|i| out(&input, &format!("k{i}"), &i.to_string())).collect();
    log.append(&records).unwrap();
    let expected_b = records
        .iter()
        .filter(|r| left_b.iter().any(|tp| tp.partition == partition::for_key(r.key.as_bytes(), 4)))
        .count();
    let got_b = poll_records(&mut *b, expected_b);
    assert!(got_b.iter().all(|r| left_b.iter().any(|tp| tp.partition == r.partition)));
    let got_a = poll_records(&mut *a, records.len() - expected_b);
    assert!(got_a.iter().all(|r| left_a.iter().any(|tp| tp.partition == r.partition)));

    drop(b);
    let seen = poll_until(&mut [&mut a], "the remaining member takes every partition", |s| s[0].len() == 4);
    let mut regained = seen[0].assigned.clone();
    regained.sort();
    assert_eq!(regained, left_b, "the partitions of the member that left came back");
}

#[test]
fn a_member_that_stops_polling_loses_its_partitions_and_its_open_batch() {
    // The shortest intervals the broker allows (group.min.session.timeout.ms is 6 s), so that the
    // group gives up on a silent member quickly.
    let mut options = options();
    options.session_timeout_ms = 6_000;
    options.passthrough.insert("max.poll.interval.ms".to_owned(), "6000".to_owned());
    let log = KafkaLog::connect(options).unwrap();
    let input = topic(&log, "input", 1);
    let output = topic(&log, "output", 1);
    let group = unique("group");
    log.append(&[out(&input, "k", "in")]).unwrap();
    let mut silent = member(&log, &group, &[&input], &unique("txn-silent"), 100);
    let records = poll_records(&mut *silent, 1);
    silent.step(&[out(&output, "k", "from the silent member")], &[next(&records[0])]).unwrap();
    await_written(&bootstrap(), &output, 0, 1);

    // The silent member stops polling; another one gets the partition once the group gives up on it.
    let mut other = member(&log, &group, &[&input], &unique("txn-other"), 100);
    let again = poll_records(&mut *other, 1);
    assert_eq!(values(&again), ["in"], "the input comes again to the new owner");

    // The silent member learns it lost the partition, or, when the broker already fenced its
    // producer for the stale group generation, that it is fenced; either way its batch is gone.
    // Its transaction has outlived the 10 s timeout meanwhile, so the coordinator may have aborted
    // it: the member then says so as a storage error first, re-creates its producer, and goes on.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match silent.poll(10, Duration::from_millis(100)) {
            Ok(polled) => {
                assert!(polled.revoked.is_empty(), "{polled:?}");
                // Records only while it still takes itself for the owner (after a failed commit,
                // below), and never stepped.
                assert!(polled.records.is_empty() || !silent.assignment().is_empty(), "{polled:?}");
                if !polled.lost.is_empty() {
                    assert_eq!(polled.lost, [TopicPartition { topic: input.clone(), partition: 0 }]);
                    assert_eq!(silent.pending_steps(), 0, "the open batch was aborted");
                    if silent.assignment().is_empty() {
                        break;
                    }
                }
            }
            Err(LogError::Fenced(_)) => break,
            Err(LogError::Storage(message)) if message.contains("aborted it on timeout") => {}
            // Its lone step came after it had waited for input, so its batch commits once the
            // input is drained: its first poll may try before the group's verdict reaches it, and
            // the group no longer knows the member. The batch is aborted and its partition
            // reported lost (and, to be rebuilt, assigned again until the verdict comes).
            Err(LogError::Storage(message)) if message.contains("Unknown member") => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
        assert!(Instant::now() < deadline, "the silent member never learned it lost its partition");
    }
    other.step(&[out(&output, "k", "from the new owner")], &[next(&again[0])]).unwrap();
    other.commit().unwrap();
    assert_eq!(values(&read_all(&log, &output)), ["from the new owner"], "the lost batch never appears");
}

#[test]
fn a_member_whose_transaction_timed_out_while_the_broker_was_away_aborts_it_rereads_and_goes_on() {
    let broker = kafka_broker::ScriptBroker::start();
    let mut options = KafkaOptions::new(broker.bootstrap());
    options.transaction_timeout_ms = 10_000;
    options.session_timeout_ms = 6_000;
    let log = KafkaLog::connect(options).unwrap();
    let input = topic(&log, "input", 2);
    let output = topic(&log, "output", 1);
    let group = unique("group");
    let transactional_id = unique("txn");
    log.append(&(0..4).map(|i| out(&input, &format!("k{i}"), &format!("first {i}"))).collect::<Vec<_>>()).unwrap();
    let mut member = member(&log, &group, &[&input], &transactional_id, 1000);
    let records = poll_records(&mut *member, 4);
    for record in &records[..2] {
        member.step(&[out(&output, "k", &String::from_utf8_lossy(&record.value))], &[next(record)]).unwrap();
    }
    member.commit().unwrap();
    // The log's pooled readers hold consumers connected to the broker that is about to die.
    // The first two polled (their order across the two partitions is the broker's).
    assert_eq!(values(&read_all(&log, &output)), values(&records[..2]));
    // A transaction open with outputs on the broker when it dies.
    for record in &records[2..] {
        member.step(&[out(&output, "k", &String::from_utf8_lossy(&record.value))], &[next(record)]).unwrap();
    }
    // Two records, a commit marker, and the open transaction's two records.
    await_written(broker.bootstrap(), &output, 0, 5);

    let killed = Instant::now();
    broker.kill();
    // The transaction outlives its timeout while the broker is away.
    while killed.elapsed() < Duration::from_secs(12) {
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.restart();
    let back = Instant::now();
    println!("broker back {:?} after the kill", killed.elapsed());

    // The member's calls fail as storage errors (retryable) until the transaction is aborted and
    // the producer ready again; never as fencing. Then the partitions come as lost and assigned
    // again, and the records of the discarded batch come again.
    let mut again = Vec::new();
    let mut lost = Vec::new();
    let mut assigned = Vec::new();
    let mut errors = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while again.len() < 2 {
        assert!(Instant::now() < deadline, "the member never resumed: errors {errors:?}, again {again:?}");
        match member.commit().and_then(|()| member.poll(100, Duration::from_millis(200))) {
            Ok(polled) => {
                lost.extend(polled.lost);
                assigned.extend(polled.assigned);
                again.extend(polled.records);
            }
            Err(error @ LogError::Storage(_)) => {
                errors.push(error.to_string());
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => panic!("the member failed for good: {error}; before: {errors:?}"),
        }
    }
    println!("member resumed {:?} after the broker came back; errors on the way: {errors:#?}", back.elapsed());
    assert_eq!(values(&again), values(&records[2..]), "the discarded batch's inputs come again");
    assert!(!lost.is_empty() && !assigned.is_empty(), "the partitions were reported lost and assigned again");
    for record in &again {
        member.step(&[out(&output, "k", &String::from_utf8_lossy(&record.value))], &[next(record)]).unwrap();
    }
    member.commit().unwrap();
    // The pooled readers (reused) read again, and the outputs hold each input once.
    assert_eq!(values(&read_all(&log, &output)), ["first 0", "first 1", "first 2", "first 3"], "nothing lost or twice");
    let started = Instant::now();
    for partition in 0..2 {
        let position = log.committed_position(&group, &input, partition).unwrap_or_else(|error| {
            let positions = positions_topic(&group);
            panic!("{error}\nthe broker's transactions:\n{}", broker.describe_transactions(&[(&positions, 0)]))
        });
        assert!(position.is_some());
    }
    assert!(started.elapsed() < Duration::from_secs(10), "committed positions took {:?}", started.elapsed());
}

/// A group whose members would otherwise wait the whole session timeout (30 s here, longer than
/// the checks below allow) for a member that is gone.
fn slow_session_options() -> KafkaOptions {
    let mut options = options();
    options.session_timeout_ms = 30_000;
    options
}

#[test]
fn a_member_that_comes_back_under_its_instance_takes_its_partitions_over_at_once() {
    let log = KafkaLog::connect(slow_session_options()).unwrap();
    let input = topic(&log, "input", 4);
    let group = unique("group");
    let instance = unique("txn");
    let mut before = member(&log, &group, &[&input], &instance, 100);
    poll_until(&mut [&mut before], "the first member gets every partition", |s| s[0].len() == 4);
    // `before` stops polling without leaving, as a process killed with SIGKILL would (its client
    // still heartbeats here, so as a dynamic member it would hold the group up for the rebalance
    // timeout, 5 minutes). The same instance comes back and takes over without waiting.
    let started = Instant::now();
    let mut after = member(&log, &group, &[&input], &instance, 100);
    poll_until(&mut [&mut after], "the returning instance gets every partition", |s| s[0].len() == 4);
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    drop(before);
}

/// Members joined and dropped without a poll, at moments spread over their join: an assignment
/// still queued at the drop is served while the consumer closes, and its revocation once hung the
/// whole test run in librdkafka (#4884); a drop now returns after the close's bounded wait at
/// worst. The deadline is far beyond that wait, so it fails only on a hang.
#[test]
fn members_dropped_right_after_joining_return() {
    let log = connect();
    let input = topic(&log, "input", 2);
    let group = unique("group");
    for round in 0..6u64 {
        let joined = member(&log, &group, &[&input], &unique("txn"), 100);
        std::thread::sleep(Duration::from_millis(round * 150));
        let (dropped, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(joined);
            let _ = dropped.send(());
        });
        assert!(done.recv_timeout(Duration::from_secs(60)).is_ok(), "round {round}: dropping the member hung");
    }
}

#[test]
fn a_member_that_leaves_cleanly_hands_its_partitions_over_without_waiting_for_its_session() {
    let log = KafkaLog::connect(slow_session_options()).unwrap();
    let input = topic(&log, "input", 2);
    let group = unique("group");
    let mut a = member(&log, &group, &[&input], &unique("txn-a"), 100);
    poll_until(&mut [&mut a], "the first member gets every partition", |s| s[0].len() == 2);
    let mut b = member(&log, &group, &[&input], &unique("txn-b"), 100);
    poll_until(&mut [&mut a, &mut b], "two members split the partitions", |s| s[0].len() == 1 && s[1].len() == 1);
    // A static member that only closed would keep its partition for its 30 s session.
    let left = Instant::now();
    drop(a);
    poll_until(&mut [&mut b], "the remaining member takes every partition", |s| s[0].len() == 2);
    assert!(left.elapsed() < Duration::from_secs(20), "took {:?}", left.elapsed());
}

#[test]
fn a_lone_step_after_idleness_commits_once_the_input_is_drained_and_steps_under_load_wait_for_the_delay() {
    let log = connect();
    let input = topic(&log, "input", 1);
    let output = topic(&log, "output", 1);
    let max_delay = Duration::from_secs(2);
    let mut member = log
        .join(MemberConfig {
            group: unique("group"),
            topics: vec![input.clone()],
            transactional_id: unique("txn"),
            batch: BatchPolicy { max_steps: 100, max_delay },
        })
        .unwrap();
    poll_until(&mut [&mut member], "the member gets the partition", |s| s[0].len() == 1);
    // The member waits for input for the policy's delay: the stimulus, not a wait for a condition.
    let quiet = Instant::now();
    while quiet.elapsed() < max_delay {
        assert!(member.poll(10, Duration::from_millis(100)).unwrap().records.is_empty());
    }
    log.append(&[out(&input, "k", "lone")]).unwrap();
    let records = poll_records(&mut *member, 1);
    let stepped = Instant::now();
    member.step(&[out(&output, "k", "lone")], &[next(&records[0])]).unwrap();
    assert_eq!(member.pending_steps(), 1, "a step alone never commits before a poll");
    // Polls that do not wait: the first finds the input drained, the next commits. Waiting in a
    // poll after the commit would be a quiet spell again, and make the next input a lone one.
    let deadline = Instant::now() + DEADLINE;
    while member.pending_steps() > 0 {
        assert!(Instant::now() < deadline, "the lone step never committed");
        member.poll(10, Duration::ZERO).unwrap();
    }
    assert!(stepped.elapsed() < max_delay, "committed after {:?}, not at the delay", stepped.elapsed());
    assert_eq!(values(&read_all(&log, &output)), ["lone"]);

    // Input that is waiting when the member polls (as under load: it came while the member was
    // busy, not while it waited) opens a batch that waits for the delay as before.
    log.append(&[out(&input, "k", "next")]).unwrap();
    await_written(&bootstrap(), &input, 0, 2);
    let records = poll_records(&mut *member, 1);
    let polled = Instant::now();
    member.step(&[out(&output, "k", "next")], &[next(&records[0])]).unwrap();
    member.poll(10, Duration::from_millis(100)).unwrap();
    if polled.elapsed() < max_delay {
        assert_eq!(member.pending_steps(), 1, "a batch of input that was waiting waits for its delay");
    }
    member.commit().unwrap();
    assert_eq!(values(&read_all(&log, &output)), ["lone", "next"]);
}

/// A transactional producer of the test's own, beside the log: it writes what a member of `group`
/// writes at a commit (the group's offsets, and if asked its positions topic's record), and keeps
/// its transaction open until the caller decides it.
fn foreign_transaction(
    group: &str,
    input: &str,
    next: i64,
    with_positions_record: bool,
) -> rdkafka::producer::BaseProducer {
    use rdkafka::Offset;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", unique("foreign"))
        .set("transaction.timeout.ms", "300000")
        .create()
        .unwrap();
    producer.init_transactions(DEADLINE).unwrap();
    producer.begin_transaction().unwrap();
    if with_positions_record {
        let value = next.to_string();
        let key = format!("{input}:0");
        producer
            .send(BaseRecord::to(&positions_topic(group)).partition(0).key(key.as_str()).payload(value.as_str()))
            .map_err(|(error, _)| error)
            .unwrap();
        producer.flush(DEADLINE).unwrap();
    }
    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap()).set("group.id", group).create().unwrap();
    let mut offsets = rdkafka::TopicPartitionList::new();
    offsets.add_partition_offset(input, 0, Offset::Offset(next)).unwrap();
    producer.send_offsets_to_transaction(&offsets, &consumer.group_metadata().unwrap(), DEADLINE).unwrap();
    producer
}

/// Positions are read from the group's positions topic, not from the group coordinator, which
/// after a broker restart withheld them for minutes behind transactions that had ended (see
/// `positions.rs`); yet a transaction that wrote a position is waited for, as the coordinator's
/// stable read did.
#[test]
fn positions_come_from_the_positions_topic_and_an_undecided_transaction_that_wrote_one_is_waited_for() {
    use rdkafka::producer::Producer;
    let log = connect();
    let input = topic(&log, "input", 1);
    let output = topic(&log, "output", 1);
    let group = unique("group");
    let inputs: Vec<OutRecord> = ["a", "b", "c", "d", "e"].iter().map(|value| out(&input, "k", value)).collect();
    log.append(&inputs).unwrap();
    {
        let mut member = member(&log, &group, &[&input], &unique("txn"), 100);
        for record in poll_records(member.as_mut(), 5).iter().take(3) {
            member.step(&[out(&output, "k", "x")], &[next(record)]).unwrap();
        }
        member.commit().unwrap();
    }
    assert_eq!(log.committed_position(&group, &input, 0), Ok(Some(3)), "the member's position");

    // Offsets pending in the group coordinator alone (what it kept after the broker restart) do
    // not hold the position back: the group coordinator would answer UNSTABLE_OFFSET_COMMIT.
    let only_offsets = foreign_transaction(&group, &input, 4, false);
    assert_eq!(log.committed_position(&group, &input, 0), Ok(Some(3)), "answered beside pending offsets");
    only_offsets.abort_transaction(DEADLINE).unwrap();

    // A transaction that wrote a position is waited for until it is decided, and then counts.
    let undecided = foreign_transaction(&group, &input, 5, true);
    let waited = log.committed_position(&group, &input, 0);
    assert!(
        matches!(&waited, Err(LogError::Storage(message)) if message.contains("undecided")),
        "an undecided position is not answered: {waited:?}"
    );
    undecided.commit_transaction(DEADLINE).unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match log.committed_position(&group, &input, 0) {
            Ok(position) => {
                assert_eq!(position, Some(5), "the decided transaction's position");
                break;
            }
            Err(error) => assert!(Instant::now() < deadline, "the position never came: {error}"),
        }
    }
}

/// A member whose read of positions stays undecided at an assignment seals the positions topic
/// with a transaction of its own producer that ends as its last one did (committed here): on a
/// partition that kept that last transaction open behind a lost marker (seen after broker
/// restarts), the seal's marker ends it. Here the undecided transaction is someone else's, so the
/// member's own seal is what there is to see, committed once the other transaction is.
#[test]
fn a_member_whose_positions_stay_undecided_at_an_assignment_seals_them_as_its_last_transaction_ended() {
    use rdkafka::producer::Producer;
    let log = connect();
    let input = topic(&log, "input", 2);
    let output = topic(&log, "output", 1);
    let group = unique("group");
    let mut a = member(&log, &group, &[&input], &unique("txn-a"), 100);
    poll_until(&mut [&mut a], "the first member gets both partitions", |s| s[0].len() == 2);
    log.append(&[out(&input, "k1", "one"), out(&input, "k2", "two"), out(&input, "k3", "three")]).unwrap();
    for record in poll_records(a.as_mut(), 3) {
        a.step(&[out(&output, "k", "x")], &[next(&record)]).unwrap();
    }
    a.commit().unwrap();
    let mut b = member(&log, &group, &[&input], &unique("txn-b"), 100);
    poll_until(&mut [&mut a, &mut b], "two members split the partitions", |s| s[0].len() == 1 && s[1].len() == 1);

    let undecided = foreign_transaction(&group, &input, 1, true);
    let positions = positions_topic(&group);
    let before_seal = high_watermark(&bootstrap(), &positions, 0);
    drop(b);
    // While the other transaction is undecided the member cannot read its positions (as it could
    // not read the group's offsets before); it polls, fails to, and seals: a record and its
    // transaction's marker, the only writes to the topic meanwhile.
    let deadline = Instant::now() + Duration::from_secs(120);
    while high_watermark(&bootstrap(), &positions, 0) < before_seal + 2 {
        assert!(Instant::now() < deadline, "the member never sealed the positions topic");
        match a.poll(10, Duration::from_millis(100)) {
            Ok(_) | Err(LogError::Storage(_)) => {}
            Err(error) => panic!("the member failed: {error}"),
        }
    }
    undecided.commit_transaction(DEADLINE).unwrap();
    assert!(seals(&log, &positions) >= 1, "the member sealed the positions topic with a committed transaction");
    // And it goes on once they are decided, with both partitions.
    let deadline = Instant::now() + Duration::from_secs(120);
    while a.assignment().len() < 2 {
        match a.poll(10, Duration::from_millis(100)) {
            Ok(_) => {}
            Err(LogError::Storage(message)) => {
                assert!(Instant::now() < deadline, "the member never resumed: {message}")
            }
            Err(error) => panic!("the member failed: {error}"),
        }
        assert!(Instant::now() < deadline, "the member never got the partition back");
    }
}

/// A member whose committed batch is still invisible where it wrote when its visibility wait
/// (the transaction timeout) is over seals those partitions right away, with a committed
/// transaction of its own producer: after a single broker's restart the coordinator may complete
/// a commit without its markers, and a member with nothing more to write there would never end
/// the hang, while every other member's read of the positions, and every reader of the output
/// partition, waits. A lost marker cannot be made on purpose; here other producers' open
/// transactions hold the positions topic and the output partition back instead, which the seals
/// leave alone. The seals are committed records, and no read path of the backend hands one out.
#[test]
fn a_member_whose_commit_stays_invisible_seals_the_positions_topic_and_its_outputs_once_its_wait_is_over() {
    use rdkafka::producer::{BaseRecord, Producer};
    let log = connect();
    let input = topic(&log, "input", 1);
    let output = topic(&log, "output", 1);
    let group = unique("group");
    log.append(&[out(&input, "k", "one"), out(&input, "k", "two")]).unwrap();
    let mut member = member(&log, &group, &[&input], &unique("txn"), 100);
    let records = poll_records(member.as_mut(), 2);
    member.step(&[out(&output, "k", "x")], &[next(&records[0])]).unwrap();
    member.commit().unwrap();
    let positions = positions_topic(&group);
    assert_eq!((seals(&log, &positions), seals(&log, &output)), (0, 0), "nothing to seal after a visible commit");

    let undecided = foreign_transaction(&group, &input, 1, true);
    let undecided_output = foreign_transaction(&unique("other-group"), &input, 0, false);
    undecided_output
        .send(BaseRecord::to(&output).partition(0).key("k").payload("foreign"))
        .map_err(|(error, _)| error)
        .unwrap();
    undecided_output.flush(DEADLINE).unwrap();
    member.step(&[out(&output, "k", "y")], &[next(&records[1])]).unwrap();
    let started = Instant::now();
    member.commit().unwrap();
    println!("the commit returned {:?} after it was asked for", started.elapsed());
    undecided.abort_transaction(DEADLINE).unwrap();
    undecided_output.abort_transaction(DEADLINE).unwrap();
    assert_eq!(seals(&log, &positions), 1, "the member sealed the positions topic with a committed transaction");
    assert_eq!(seals(&log, &output), 1, "the member sealed the output partition with a committed transaction");
    assert_eq!(log.committed_position(&group, &input, 0), Ok(Some(2)), "the member's position");
    assert_eq!(values(&read_all(&log, &output)), ["x", "y"], "both batches, once each, and no seal");
    // A follower moves past the seal (its position says so) without handing it over.
    let seal = seal_offsets(&log, &output)[0].1;
    let mut follower = log.follow(&[Position { topic: output.clone(), partition: 0, next_offset: 0 }]).unwrap();
    let mut followed = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while follower.positions()[0].next_offset <= u64::try_from(seal).unwrap() {
        assert!(Instant::now() < deadline, "the follower never passed the seal; it handed over {followed:?}");
        followed.extend(follower.next(10, Duration::from_millis(200)).unwrap());
    }
    assert_eq!(values(&followed), ["x", "y"], "a follower hands over no seal either");
}

/// A topic's end offsets and a group's positions asked for all partitions at once (one
/// ListOffsets, one read of the positions topic) are what each partition answers alone: written
/// and consumed partitions, a written one the group never consumed, and an empty one. The
/// written ends pass the end offsets by what an open transaction wrote, until it ends.
#[test]
fn end_offsets_written_ends_and_committed_positions_of_a_topic_answer_as_each_partition_alone() {
    let log = connect();
    let input = topic(&log, "input", 3);
    let output = topic(&log, "output", 1);
    let group = unique("group");
    let records: Vec<OutRecord> = (0..12).map(|i| out(&input, &format!("k{i}"), &i.to_string())).collect();
    let appended = log.append(&records).unwrap();
    let written: BTreeSet<u32> = appended.iter().map(|a| a.partition).collect();
    assert!(written.len() >= 2, "the keys spread over partitions: {written:?}");
    {
        let mut member = member(&log, &group, &[&input], &unique("txn"), 100);
        let polled = poll_records(member.as_mut(), records.len());
        // Consume every record but those of the lowest written partition.
        let skipped = *written.first().unwrap();
        for record in polled.iter().filter(|record| record.partition != skipped) {
            member.step(&[out(&output, "k", "x")], &[next(record)]).unwrap();
        }
        member.commit().unwrap();
    }
    let alone_ends: Vec<u64> = (0..3).map(|p| log.end_offset(&input, p).unwrap()).collect();
    let alone_positions: Vec<Option<u64>> =
        (0..3).map(|p| log.committed_position(&group, &input, p).unwrap()).collect();
    assert_eq!(log.end_offsets(&input).unwrap(), alone_ends);
    assert_eq!(log.committed_positions(&group, &input).unwrap(), alone_positions);
    assert_eq!(
        alone_positions.iter().filter(|position| position.is_some()).count(),
        written.len() - 1,
        "{alone_positions:?}"
    );
    assert!(log.end_offsets("no-such-topic").is_err());

    // An open transaction's records are written (the high watermark) but held back (the last
    // stable offset) until it ends.
    use rdkafka::producer::Producer;
    let positions = positions_topic(&group);
    let stable = log.end_offsets(&positions).unwrap();
    assert_eq!(log.written_ends(&positions).unwrap(), stable, "nothing held back");
    let open = foreign_transaction(&group, &input, 1, true);
    assert_eq!(log.end_offsets(&positions).unwrap(), stable, "the open transaction's record is not stable");
    assert_eq!(log.written_ends(&positions).unwrap(), vec![stable[0] + 1], "but it is written");
    open.abort_transaction(DEADLINE).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while log.end_offsets(&positions).unwrap() != log.written_ends(&positions).unwrap() {
        assert!(Instant::now() < deadline, "the aborted transaction still holds records back");
        std::thread::sleep(Duration::from_millis(20));
    }
}
