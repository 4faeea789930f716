//! Broker restarts: the Kafka broker, killed with SIGKILL while `ipam allocator` (two instances)
//! and `ipam placement` run, and started again on the same ports with the same data after about
//! 15 s (KRaft refuses the re-registration until the old session expires), longer than the
//! services' 10 s transaction timeout. Every service must resume by itself (no process exits, even
//! when the broker aborted its open transaction on timeout, which librdkafka reports like a
//! fence), and the output streams must end equal to a run never interrupted: nothing lost, nothing
//! twice.
//!
//! Three moments: quiet (everything processed, no transaction open), busy (right after a burst
//! of churn published in one append, while the services work through it) and in flight (right
//! after the last of [`IN_FLIGHT_CHUNKS`] chunks published [`IN_FLIGHT_GAP`] apart: each finds
//! the members idle or committing the one before, and commits as soon as it is stepped, a lone
//! input, see the Kafka member's module doc). The broker is killed at once, with nothing between
//! the last append and the kill: the members commit on threads of their own while they step, so
//! anything that waited (as reading their committed positions does, for the transactions in
//! flight) let them finish first. The test prints how long each resumption took, and how many
//! times the services' logs said the log failed under an open or committing batch, which they
//! discarded and rebuilt.
//!
//! The broker is this test's own (`ScriptBroker`), so killing it disturbs no other test.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipam_core::{Envelope, Topic};
use ipam_tests::kafka_broker::ScriptBroker;

use crate::recovery::{self, CHUNK, Deployment, Kafka, Outputs};

/// Where the broker is killed: the moment's name and the churn chunk it follows.
const MOMENTS: [(&str, usize); 3] = [("quiet", 15), ("busy", 40), ("in flight", 70)];

/// Chunks published in one append for the busy moment.
const BURST: usize = 10;

/// How long the services' batches stay open unless they are a lone input's.
const BATCH_DELAY_MS: u64 = 500;

/// Chunks published for the in-flight moment, and the time between two of them.
const IN_FLIGHT_CHUNKS: usize = 3;
const IN_FLIGHT_GAP: Duration = Duration::from_millis(20);

/// How long the log may take to answer again once the broker does.
const LOG_BACK_WITHIN: Duration = Duration::from_secs(60);

/// Waits until the test's own client reads committed positions again; returns how long it took.
/// When it does not within [`LOG_BACK_WITHIN`], the failure says what the broker holds of the
/// transactions and what the services last logged, and keeps the services' thread stacks.
fn await_log(kafka: &Kafka, broker: &ScriptBroker) -> Duration {
    let started = Instant::now();
    let (group, _) = kafka.groups();
    let topic = kafka.topic(Topic::Networks);
    loop {
        match kafka.log().committed_position(&group, &topic, 0) {
            Ok(_) => return started.elapsed(),
            Err(error) if started.elapsed() >= LOG_BACK_WITHIN => {
                let positions = format!("{}.positions", group);
                let transactions = broker.describe_transactions(&[(&positions, 0)]);
                panic!(
                    "the log did not answer again: {error}\n\nthe broker's transactions:\n{transactions}\n\n{}",
                    services_state(kafka)
                );
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Lines of each service's log a failure shows.
const LOG_TAIL: usize = 40;

/// Each service's last log lines, and where its threads' stacks are kept (taken with `gdb`, when
/// there is one): what a service stuck in a call to the log was doing.
fn services_state(kafka: &Kafka) -> String {
    let mut said = Vec::new();
    for (name, service) in kafka.services() {
        let path = service.log_path();
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n");
        let pid = service.id().to_string();
        let stacks = path.with_extension("stacks");
        let taken = std::process::Command::new("gdb")
            .args(["-p", &pid, "-batch", "-ex", "thread apply all bt"])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|error| error.to_string())
            .and_then(|output| std::fs::write(&stacks, output.stdout).map_err(|error| error.to_string()));
        let stacks = match taken {
            Ok(()) => format!("its threads' stacks: {}", stacks.display()),
            Err(error) => format!("no stacks ({error})"),
        };
        said.push(format!("{name} (log {}, {stacks}), its last {LOG_TAIL} lines:\n{tail}", path.display()));
    }
    said.join("\n\n")
}

/// What a service logs when the log failed under its open or committing batch (the runtime's
/// driver, `recover`): the batch is discarded and the owned partitions rebuilt.
const DISCARDED: &str = "The log failed; discarding the open batch";

/// How many times the services' logs say so, so far.
fn batches_discarded(kafka: &Kafka) -> usize {
    kafka
        .service_logs()
        .iter()
        .map(|(_, path)| std::fs::read_to_string(path).unwrap_or_default().matches(DISCARDED).count())
        .sum()
}

/// No record id twice in any output topic. A duplicate is reported with the offsets of every
/// record that carries its id, and the services' log files, which say what each did around them.
fn assert_no_duplicate_ids(kafka: &Kafka, outputs: &Outputs, logs: &[(String, PathBuf)]) {
    for ((topic, partition), values) in outputs {
        let mut seen = BTreeSet::new();
        for value in values {
            let Ok(json) = serde_json::from_str::<serde_json::Value>(value) else { continue };
            if let Some(id) = json.get("id").and_then(serde_json::Value::as_str)
                && !seen.insert(id.to_owned())
            {
                let log = kafka.log();
                let name = format!("{}{topic}", kafka.prefix());
                let end = log.end_offset(&name, *partition).unwrap_or(0);
                let records =
                    log.read(&name, *partition, 0, usize::try_from(end).unwrap_or(usize::MAX), Duration::ZERO);
                let holders: Vec<String> = records
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|record| String::from_utf8_lossy(&record.value).contains(id))
                    .map(|record| format!("offset {}: {}", record.offset, String::from_utf8_lossy(&record.value)))
                    .collect();
                let logs: Vec<String> = logs.iter().map(|(name, path)| format!("{name}: {}", path.display())).collect();
                panic!(
                    "record {id} appears twice in {topic}/{partition}:\n{}\nservice logs: {}",
                    holders.join("\n"),
                    logs.join(", ")
                );
            }
        }
    }
}

#[test]
fn the_kafka_services_resume_by_themselves_after_the_broker_is_killed_quiet_busy_and_in_flight() {
    let (expected, _) = recovery::reference();
    let work = recovery::workload(7);
    let broker = ScriptBroker::start();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), format!("batch-max-delay-ms = {BATCH_DELAY_MS}\n")).unwrap();
    let mut kafka =
        Kafka::on_broker(broker.bootstrap(), 2, &["--config".to_owned(), config.path().display().to_string()]);
    kafka.start();
    for group in &work.setup {
        recovery::publish(&kafka, group, &[], usize::MAX);
        recovery::wait_processed(&kafka);
    }
    let chunks: Vec<&[Envelope]> = work.churn.chunks(CHUNK).collect();
    let publish = |kafka: &Kafka, chunk: usize| recovery::publish(kafka, chunks[chunk], &work.garbage, chunk * CHUNK);
    let mut next = 0;
    let mut figures = Vec::new();
    for (moment, at) in MOMENTS {
        while next < at {
            publish(&kafka, next);
            next += 1;
        }
        recovery::wait_processed(&kafka);
        let discarded_before = batches_discarded(&kafka);
        match moment {
            "busy" => {
                let burst = &work.churn[next * CHUNK..(next + BURST) * CHUNK];
                recovery::publish(&kafka, burst, &work.garbage, next * CHUNK);
                next += BURST;
            }
            "in flight" => {
                for chunk in 0..IN_FLIGHT_CHUNKS {
                    if chunk > 0 {
                        std::thread::sleep(IN_FLIGHT_GAP);
                    }
                    publish(&kafka, next);
                    next += 1;
                }
            }
            _ => {}
        }
        let killed = Instant::now();
        broker.kill();
        let restart = broker.restart();
        let away = killed.elapsed();
        let back = Instant::now();
        let log_back = await_log(&kafka, &broker);
        // The next chunk, and everything before it, processed: the services work again.
        publish(&kafka, next);
        next += 1;
        recovery::wait_processed(&kafka);
        let resumed = back.elapsed();
        let exited = kafka.exited();
        assert!(exited.is_empty(), "{moment}: services exited after the broker restart: {exited:?}");
        let discarded = batches_discarded(&kafka) - discarded_before;
        println!(
            "{moment}: the services discarded an open or committing batch {discarded} times; broker away \
             {away:.1?} (restart took {restart:.1?}); the test's client answered {log_back:.1?} and the services had \
             processed everything {resumed:.1?} after the broker was back"
        );
        figures.push((moment, resumed));
    }
    while next < chunks.len() {
        publish(&kafka, next);
        next += 1;
    }
    recovery::wait_processed(&kafka);
    let exited = kafka.exited();
    assert!(exited.is_empty(), "services exited: {exited:?}");
    let logs = kafka.service_logs();
    kafka.stop();
    let prefix = kafka.prefix().to_owned();
    let outputs = recovery::outputs(&kafka, &prefix);
    assert_no_duplicate_ids(&kafka, &outputs, &logs);
    recovery::assert_same(expected, &outputs);
    println!("time to resume after the broker was back: {figures:?}");
}
