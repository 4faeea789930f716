//! `ipam bench --recovery`: how fast `ipam up` gets its state back, with a million live
//! reservations, on the embedded log. Issue 11 sets two targets, replay at 1 M events/s or more and
//! back ready within 2 s of a `kill -9`; this command prints the figures that say whether they are
//! met, each with what it measured.
//!
//! The inputs are written straight into the log in large batches (the log's own `append`, as the
//! API would write them, one record per vNIC start) rather than through `POST /v1/events`: what is
//! measured is recovery, not ingestion, and `ipam bench` measures the API already. Then, one
//! `ipam up` after another on the same data directory:
//! 1. the allocator decides the whole backlog (its decision rate);
//! 2. a clean stop (its snapshots written), and a start from those snapshots with no tail;
//! 3. a tail of further starts, `kill -9`, and a start from the snapshots plus that tail: the time
//!    until the process says it is ready, `/health` answers 200 and a new vNIC start is answered
//!    with a reservation;
//! 4. a start with the snapshots moved aside: the replay of every input from offset zero.
//!
//! Rebuild figures come from the driver's own log lines (`Rebuilt partition state`, with the
//! records replayed and the milliseconds each partition took) and the API's (`The API's read
//! model starts from its snapshot`, with its milliseconds); times to ready from this process's
//! clock, from the moment the child is started. Every child is stopped by pid, on failure too.

// Printing the figures is this command's job.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ipam_core::event::{NetworkUpserted, SubnetAdded, VnicUp};
use ipam_core::{Envelope, Event, EventId, Mac, SubnetId, Timestamp, VmId, VnicId};
use ipam_log::sqlite::{Durability, SqliteLog};
use ipam_log::{EventLog, OutRecord};
use ipam_runtime::Topics;
use serde_json::Value;

use crate::bench::{Fleet, network};
use crate::child::UpProcess;
use crate::client::{self, Api};

/// Networks the reservations are spread over, each with one /12 IPv4 subnet (1,048,574 hosts), so
/// that a million fit in any one of them.
const NETWORKS: u64 = 16;
/// Partitions of `ipam.networks`, as `ipam bench` runs it.
const PARTITIONS: u32 = 8;
/// Records per `append` call while loading.
const LOAD_BATCH: usize = 20_000;
/// The allocator's consumer group, as `ipam up` names it.
const GROUP: &str = "ipam-allocator";
/// The longest any one phase may take before the bench gives up.
const PHASE_DEADLINE: Duration = Duration::from_secs(1800);

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Live reservations to recover.
    pub reservations: usize,
    /// Starts appended after the snapshots of a clean stop, before the `kill -9`: the tail that a
    /// restart replays on top of them.
    pub tail: usize,
    /// Keep the data directory and the logs.
    pub keep: bool,
}

/// What the driver's log lines say about one start's allocator rebuild.
#[derive(Debug, Default, Clone, Copy)]
struct Rebuild {
    partitions: u64,
    replayed: u64,
    elapsed_ms: u64,
    /// Of which reading and installing the snapshots (or the empty states).
    restore_ms: u64,
    /// How long the API's read model took to read its own snapshot, when it had one (it reads
    /// beside the allocator's rebuild).
    read_model_ms: Option<u64>,
    /// The allocator's rounds of snapshots while it ran (its "Took snapshots" lines), and their
    /// time: the driver stops while it takes them.
    snapshot_rounds: u64,
    snapshot_ms: u64,
}

impl Rebuild {
    fn of(log: &Path) -> Rebuild {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let field = |line: &str, name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
                .and_then(|value| value.trim_matches('"').parse().ok())
                .unwrap_or(0)
        };
        let mut rebuild = Rebuild::default();
        for line in text.lines().filter(|l| l.contains("driver=allocator")) {
            if line.contains("Rebuilt partition state") {
                // One line per rebuild of every partition assigned at once (one per partition
                // before the partitions were replayed together, without `partitions=`).
                rebuild.partitions += field(line, "partitions").max(1);
                rebuild.replayed += field(line, "replayed");
                rebuild.elapsed_ms += field(line, "elapsed_ms");
                // The wall time of restoring the partitions, whose snapshots are read in parallel.
                rebuild.restore_ms += field(line, "restore_ms");
            }
            if line.contains("Took snapshots") {
                rebuild.snapshot_rounds += 1;
                rebuild.snapshot_ms += field(line, "elapsed_ms");
            }
        }
        let read_model = text.lines().find(|line| line.contains("The API's read model starts from its snapshot"));
        rebuild.read_model_ms = read_model.map(|line| field(line, "elapsed_ms"));
        rebuild
    }

    /// The time spent replaying, less restoring (the whole rebuild when the log says nothing of
    /// restores).
    fn replay_ms(&self) -> u64 {
        self.elapsed_ms.saturating_sub(self.restore_ms)
    }

    fn rate(&self) -> f64 {
        self.replayed as f64 / (self.replay_ms().max(1) as f64 / 1000.0)
    }

    fn describe(&self) -> String {
        let read_model = match self.read_model_ms {
            Some(ms) => format!("; the API's read model read its snapshot in {ms} ms"),
            None => String::new(),
        };
        format!(
            "{} partitions in {} ms: snapshots read and installed in {} ms, {} inputs replayed in {} ms ({:.0} \
             inputs/s){read_model}",
            self.partitions,
            self.elapsed_ms,
            self.restore_ms,
            self.replayed,
            self.replay_ms(),
            self.rate()
        )
    }
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ipam-bench-recovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "ipam bench --recovery: {} live reservations over {NETWORKS} networks (one /12 each), {PARTITIONS} \
         partitions, embedded log; a tail of {} starts before the kill -9; in {}",
        options.reservations,
        options.tail,
        dir.display()
    );
    let result = measure(&dir, options);
    if result.is_err() || options.keep {
        println!("data and logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn measure(dir: &Path, options: &Options) -> anyhow::Result<()> {
    let data = dir.join("data");
    let topics = Topics::new("", PARTITIONS);
    let log = SqliteLog::open(&data.join("log"), Durability::ProcessCrash)?;
    log.create_topics(&topics.specs())?;
    let mut fleet = Fleet::default();
    let mut starts = Starts::default();

    // 1. Load, and let the allocator decide it all.
    let started = Instant::now();
    let mut records = setup_records(&topics)?;
    append_in_batches(&log, &mut records)?;
    append_starts(&log, &topics, &mut starts, options.reservations)?;
    let loaded = started.elapsed();
    println!(
        "load: {} records appended straight to the log in {:.2} s ({:.0} records/s)",
        options.reservations + 2 * NETWORKS as usize,
        loaded.as_secs_f64(),
        (options.reservations as f64) / loaded.as_secs_f64()
    );
    let up = start(dir, &data, &mut fleet, "up-decide")?;
    let decided = wait_decided(&log, &topics, up.1)?;
    let snapshots = Rebuild::of(&dir.join("up-decide.log"));
    println!(
        "decide: the allocator decided {} inputs {:.2} s after its start ({:.0} inputs/s; {} rounds of snapshots \
         taking {:.2} s included)",
        options.reservations,
        decided.as_secs_f64(),
        options.reservations as f64 / decided.as_secs_f64(),
        snapshots.snapshot_rounds,
        snapshots.snapshot_ms as f64 / 1000.0
    );
    let api = up.0;
    let answer = reserve_one(&api, &mut starts)?;
    println!("decide: one more start answered {answer} (reservations live: {})", starts.next);
    let stopping = Instant::now();
    stop(&mut fleet)?;
    println!("stop: SIGTERM to exit (commit and every snapshot written) {:.2} s", stopping.elapsed().as_secs_f64());
    println!("snapshots: {}", describe_snapshots(&data.join("snapshots"))?);

    // 2. A start from the snapshots alone.
    let (api, since, log_file) = start_measured(dir, &data, &mut fleet, "up-snapshot")?;
    let rebuild = Rebuild::of(&log_file);
    println!(
        "start from snapshots, no tail: ready {:.2} s after its start; allocator rebuild: {}",
        since.as_secs_f64(),
        rebuild.describe()
    );
    drop(api);

    // 3. A tail on top of the snapshots, then kill -9.
    append_starts(&log, &topics, &mut starts, options.tail)?;
    wait_decided(&log, &topics, Instant::now())?;
    let live = starts.next;
    let mut up = fleet.take("up").context("ipam up")?;
    up.kill()?;
    let killed = Instant::now();
    let (api, ready, log_file) = start_measured(dir, &data, &mut fleet, "up-killed")?;
    let healthy = wait_health(&api, killed)?;
    let answer = reserve_one(&api, &mut starts)?;
    let serving = killed.elapsed();
    let rebuild = Rebuild::of(&log_file);
    println!(
        "kill -9 with {} live reservations, restart: ipam is ready {:.2} s after the kill, /health 200 at {:.2} s, a \
         new vNIC start answered {answer} at {:.2} s; allocator rebuild: {}",
        live,
        ready.as_secs_f64(),
        healthy.as_secs_f64(),
        serving.as_secs_f64(),
        rebuild.describe()
    );
    let target_met = if serving <= Duration::from_secs(2) { "met" } else { "NOT met" };
    println!(
        "target: back ready and serving after kill -9 with 1 M live reservations in <= 2 s: {target_met} with {live} \
         ({:.2} s)",
        serving.as_secs_f64()
    );
    stop(&mut fleet)?;

    // 4. No snapshot: replay every input from offset zero.
    let aside = dir.join("snapshots-aside");
    std::fs::rename(data.join("snapshots"), &aside).context("moving the snapshots aside")?;
    let (_api, ready, log_file) = start_measured(dir, &data, &mut fleet, "up-replay")?;
    let rebuild = Rebuild::of(&log_file);
    println!(
        "start without snapshots: ready {:.2} s after its start; allocator replay from zero: {}",
        ready.as_secs_f64(),
        rebuild.describe()
    );
    let target_met = if rebuild.rate() >= 1_000_000.0 { "met" } else { "NOT met" };
    println!("target: replay >= 1 M events/s: {target_met} ({:.0} inputs/s, inputs only)", rebuild.rate());
    println!(
        "  (the whole start without snapshots: {:.0} inputs/s from the process's start to ready)",
        rebuild.replayed as f64 / ready.as_secs_f64()
    );
    stop(&mut fleet)?;
    Ok(())
}

/// The vNIC starts played so far: each gets a fresh vNIC, VM and MAC, and a deterministic id.
#[derive(Debug, Default)]
struct Starts {
    next: u64,
}

impl Starts {
    fn event(&mut self) -> Event {
        let i = self.next;
        self.next += 1;
        let net = i % NETWORKS;
        let b = i.to_be_bytes();
        Event::VnicStarted(VnicUp {
            vnic_id: VnicId::from_u128(0x7000_0000_0000 + u128::from(i)),
            vm_id: VmId::from_u128(0x8000_0000_0000 + u128::from(i)),
            network_id: network(net),
            subnet_id: Some(subnet(net)),
            subnet_ids: Vec::new(),
            mac: Mac::from_octets([0x52, 0x54, b[4], b[5], b[6], b[7]]).expect("a unicast MAC"),
            requested_ip: None,
        })
    }
}

fn subnet(net: u64) -> SubnetId {
    SubnetId::from_u128(u128::from(net) + 1)
}

/// An input as the API writes it: the envelope's bytes, keyed by its network, on its topic.
fn record(topics: &Topics, id: u128, event: Event) -> OutRecord {
    let envelope = Envelope {
        id: EventId(uuid::Uuid::from_u128(id)),
        source: "ipam-bench-recovery".to_owned(),
        time: Timestamp::from_unix_ms(1_790_000_000_000),
        subject: Some(event.key()),
        event,
    };
    OutRecord { topic: topics.name(envelope.event.topic()), key: envelope.event.key(), value: envelope.to_bytes() }
}

fn setup_records(topics: &Topics) -> anyhow::Result<Vec<OutRecord>> {
    let mut records = Vec::new();
    for net in 0..NETWORKS {
        let id = 0xbe0c_0000_0000 + u128::from(net) * 2;
        records.push(record(
            topics,
            id,
            Event::NetworkUpserted(NetworkUpserted {
                network_id: network(net),
                name: format!("recovery-{net}"),
                ipam_enabled: true,
                servers_count: Some(1),
            }),
        ));
        let cidr = format!("10.{}.0.0/12", net * 16);
        records.push(record(
            topics,
            id + 1,
            Event::SubnetAdded(SubnetAdded {
                network_id: network(net),
                subnet_id: subnet(net),
                cidr: cidr.parse().with_context(|| cidr.clone())?,
                gateway: format!("10.{}.0.1", net * 16).parse().context("a gateway")?,
                dns_servers: vec![],
                ntp_servers: vec![],
                allocation_pools: None,
            }),
        ));
    }
    Ok(records)
}

fn append_in_batches(log: &SqliteLog, records: &mut Vec<OutRecord>) -> anyhow::Result<()> {
    for batch in records.chunks(LOAD_BATCH) {
        log.append(batch).context("appending to the log")?;
    }
    records.clear();
    Ok(())
}

fn append_starts(log: &SqliteLog, topics: &Topics, starts: &mut Starts, count: usize) -> anyhow::Result<()> {
    let mut records = Vec::with_capacity(LOAD_BATCH);
    for _ in 0..count {
        let id = 0x5eed_0000_0000_0000 + u128::from(starts.next);
        records.push(record(topics, id, starts.event()));
        if records.len() == LOAD_BATCH {
            append_in_batches(log, &mut records)?;
        }
    }
    append_in_batches(log, &mut records)
}

fn up_args(data: &Path) -> Vec<String> {
    [
        "--data-dir",
        &data.display().to_string(),
        "--partitions",
        &PARTITIONS.to_string(),
        "--api-bind",
        "127.0.0.1:0",
        "up",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Starts `ipam up` on `data`, its log in `dir/<name>.log`; answers its API and its start time.
fn start(dir: &Path, data: &Path, fleet: &mut Fleet, name: &str) -> anyhow::Result<(Api, Instant)> {
    let since = Instant::now();
    let up = UpProcess::start_service(&up_args(data), true, Some(&dir.join(format!("{name}.log"))))?;
    let api = Api::new(&up.api_url, None)?;
    fleet.processes.push(("up".to_owned(), up));
    Ok((api, since))
}

/// Starts `ipam up` and answers its API, how long it took to say it is ready, and its log file.
fn start_measured(dir: &Path, data: &Path, fleet: &mut Fleet, name: &str) -> anyhow::Result<(Api, Duration, PathBuf)> {
    let (api, since) = start(dir, data, fleet, name)?;
    let ready = since.elapsed();
    Ok((api, ready, dir.join(format!("{name}.log"))))
}

/// SIGTERM to the running `ipam up`, waiting for its clean exit.
fn stop(fleet: &mut Fleet) -> anyhow::Result<()> {
    fleet.take("up").context("ipam up")?.terminate()
}

/// Waits until the allocator group's committed position is the end of every partition of
/// `ipam.networks`; answers the time since `since`.
fn wait_decided(log: &SqliteLog, topics: &Topics, since: Instant) -> anyhow::Result<Duration> {
    let input = topics.name(ipam_core::Topic::Networks);
    loop {
        let mut behind = 0;
        for partition in 0..log.partition_count(&input)? {
            let end = log.end_offset(&input, partition)?;
            let committed = log.committed_position(GROUP, &input, partition)?.unwrap_or(0);
            behind += end.saturating_sub(committed);
        }
        if behind == 0 {
            return Ok(since.elapsed());
        }
        if since.elapsed() > PHASE_DEADLINE {
            bail!("the allocator is still {behind} inputs behind after {PHASE_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `/health` answers 200; answers the time since `since`.
fn wait_health(api: &Api, since: Instant) -> anyhow::Result<Duration> {
    loop {
        if let Ok((200, _)) = api.request("GET", "/health", None) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > PHASE_DEADLINE {
            bail!("/health did not answer 200 within {PHASE_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Publishes one more vNIC start and waits for its decision; answers its outcome, which must be a
/// reservation.
fn reserve_one(api: &Api, starts: &mut Starts) -> anyhow::Result<String> {
    let event = client::envelope("ipam-bench-recovery", starts.event());
    let answer = api.publish_and_wait(std::slice::from_ref(&event), Duration::from_secs(60))?;
    let outcome = match &answer {
        Value::Array(items) => items.first(),
        Value::Object(fields) => fields.get("outcomes").and_then(Value::as_array).and_then(|o| o.first()),
        _ => None,
    };
    let outcome = outcome.and_then(|o| o["outcome"].as_str()).unwrap_or("missing").to_owned();
    if outcome != "reserved" {
        bail!("a new vNIC start was answered {outcome}, not reserved: {answer}");
    }
    Ok(outcome)
}

fn describe_snapshots(dir: &Path) -> anyhow::Result<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("allocator-") {
            files.push(entry.metadata()?.len());
        }
    }
    let total: u64 = files.iter().sum();
    Ok(format!("{} allocator snapshots, {:.1} MB in all", files.len(), total as f64 / 1e6))
}
