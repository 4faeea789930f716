//! Raw throughput of every log backend, side by side in one run: appends and reads of 200-byte
//! records, and atomic steps (outputs + one position, each step committed on its own) with 1, 100
//! and 1,000 output records. These are the figures the pipeline is measured against.
//!
//! Run: `cargo bench -p ipam-tests --bench log`. Kafka is included when `IPAM_KAFKA_BOOTSTRAP`
//! names a broker (`scripts/kafka-broker.sh start` prints one). Without `--bench` (as under
//! `cargo test --all-targets`) it runs a tiny smoke pass.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipam_log::{BatchPolicy, EventLog, MemberConfig, OutRecord, Position, TopicSpec};
use ipam_tests::BackendSpec;

const RECORD_BYTES: usize = 200;

struct Scale {
    records: usize,
    step_budget: Duration,
}

fn rate(count: usize, elapsed: Duration) -> String {
    let per_second = count as f64 / elapsed.as_secs_f64();
    if per_second >= 10_000.0 { format!("{:.0}k/s", per_second / 1000.0) } else { format!("{per_second:.0}/s") }
}

fn run(name: &str, log: Arc<dyn EventLog>, scale: &Scale) {
    let tag = format!("bench-{}", std::process::id());
    let data = format!("{tag}.data");
    log.create_topics(&[TopicSpec { name: data.clone(), partitions: 4 }]).unwrap();
    let value = vec![b'x'; RECORD_BYTES];

    let started = Instant::now();
    for chunk in 0..scale.records / 1000 {
        let records: Vec<OutRecord> = (0..1000)
            .map(|i| OutRecord {
                topic: data.clone(),
                key: format!("key-{}", (chunk * 1000 + i) % 64),
                value: value.clone(),
            })
            .collect();
        log.append(&records).unwrap();
    }
    let append = rate(scale.records, started.elapsed());

    let started = Instant::now();
    let mut read = 0;
    for partition in 0..4 {
        let end = log.end_offset(&data, partition).unwrap();
        let mut from = 0;
        while from < end {
            let records = log.read(&data, partition, from, 1000, Duration::from_millis(100)).unwrap();
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            read += records.len();
        }
    }
    assert_eq!(read, scale.records, "every appended record reads back");
    let read_rate = rate(read, started.elapsed());

    let mut steps = Vec::new();
    for outputs_per_step in [1usize, 100, 1000] {
        let output = format!("{tag}.out{outputs_per_step}");
        log.create_topics(&[TopicSpec { name: output.clone(), partitions: 4 }]).unwrap();
        let mut member = log
            .join(MemberConfig {
                group: format!("{tag}.group{outputs_per_step}"),
                topics: vec![data.clone()],
                transactional_id: format!("{tag}.txn{outputs_per_step}"),
                batch: BatchPolicy { max_steps: 1, max_delay: Duration::from_secs(60) },
            })
            .unwrap();
        // A member steps with positions of partitions it owns (the driver polls first): on Kafka a
        // static member's offsets are refused until the group has given it its partitions.
        let joined = Instant::now();
        while member.assignment().is_empty() {
            assert!(joined.elapsed() < Duration::from_secs(120), "no partition assigned within 120 s");
            member.poll(1, Duration::from_millis(100)).unwrap();
        }
        let outputs: Vec<OutRecord> = (0..outputs_per_step)
            .map(|i| OutRecord { topic: output.clone(), key: format!("key-{i}"), value: value.clone() })
            .collect();
        let started = Instant::now();
        let mut count = 0;
        let mut next_offset = 0;
        while started.elapsed() < scale.step_budget {
            next_offset += 1;
            member.step(&outputs, &[Position { topic: data.clone(), partition: 0, next_offset }]).unwrap();
            count += 1;
        }
        steps.push(format!(
            "{} ({} records/s)",
            rate(count, started.elapsed()),
            rate(count * outputs_per_step, started.elapsed()).trim_end_matches("/s")
        ));
    }
    println!(
        "log/{name}: append {append} | read {read_rate} | steps of 1: {} | steps of 100: {} | steps of 1000: {}",
        steps[0], steps[1], steps[2]
    );
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let scale = if full {
        Scale { records: 200_000, step_budget: Duration::from_secs(3) }
    } else {
        Scale { records: 2_000, step_budget: Duration::from_millis(100) }
    };
    println!("log benchmark: {} records of {RECORD_BYTES} bytes, {:?} per step size", scale.records, scale.step_budget);
    let dir = tempfile::tempdir().unwrap();
    let mut backends = vec![("memory", BackendSpec::Memory), ("embedded", BackendSpec::Sqlite(dir.path().to_owned()))];
    if let Ok(bootstrap) = std::env::var("IPAM_KAFKA_BOOTSTRAP") {
        backends.push(("kafka", BackendSpec::parse(&format!("kafka:{bootstrap}")).unwrap()));
    } else {
        println!("log/kafka: skipped (set IPAM_KAFKA_BOOTSTRAP; scripts/kafka-broker.sh start prints it)");
    }
    for (name, spec) in backends {
        run(name, spec.open().unwrap(), &scale);
    }
}
