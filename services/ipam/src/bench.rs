//! `ipam bench`: end-to-end figures of the whole pipeline measured on this machine, the embedded
//! log and (with `--kafka BROKERS`) Kafka back to back in one run, printed as one table so that
//! their ratios come from the same conditions.
//!
//! Both stacks get the same workload, played as an engine would play it: through `POST /v1/events`
//! in batches, on [`CONNECTIONS`] connections at once, the bodies encoded before the clock starts
//! (so that the client is not what is measured). A host attached to 20 networks with a /16 subnet
//! each, served by one host agent with the files backend; then N vNIC starts, measured until the
//! allocator has committed them, until the API's read model shows them all and until the host
//! agent's dnsmasq files hold them all; the same with one event per POST; then single starts one
//! at a time, timed stage by stage the same way on both logs ([`stages`]): from its post until the
//! API answered it, until the start is visible on the input topic, until its reservation is
//! committed in the log, until the API answers it (`GET /v1/vnics/{id}`: the read model's lag
//! behind the log is the difference) and until its `dhcp-host=` line is in the file; a burst; the time to ready of a restarted allocator after SIGKILL; and, on Kafka, Apache's own producer and
//! consumer performance tools on the same broker (`bench_kafka.rs`) as the ceiling to compare
//! with, and 1, 2 and 4 allocator processes sharing the partitions.
//!
//! Progress is read where an operator would read it: the API, the log (the allocator group's
//! position) and the files themselves, every few milliseconds; `/metrics` (consumer lag,
//! read-model lag) twice a second, since a scrape weighs on what it measures. Every process started is stopped by pid at the end,
//! on failure too; with `--keep` the services' logs and a timeline of each load stay on disk.

// Printing the figures is this command's job.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use ipam_core::event::Owner;
use ipam_core::event::{HostNetwork, HostStatus, HostUpserted, NetworkUpserted, SubnetAdded, VnicUp};
use ipam_core::{Envelope, Event, HostId, Mac, NetworkId, SubnetId, Topic, VmId, VnicId};
use ipam_log::sqlite::{Durability, SqliteLog};
use ipam_log::{EventLog, Position};
use ipam_runtime::Topics;
use serde_json::Value;

use crate::bench_kafka;
use crate::child::UpProcess;
use crate::client::{self, Api};

pub(crate) const NETWORKS: u64 = 20;
pub(crate) const HOST: HostId = HostId::from_u128(0xbe0c);
/// Events per `POST /v1/events`, as an engine batching its requests would send them.
pub(crate) const BATCH: usize = 1000;
/// Connections a load posts on at once, as an engine's several workers would.
pub(crate) const CONNECTIONS: usize = 4;
/// The single-event load is this fraction of the main load (at least [`SINGLES_MIN`] events).
const SINGLES_SHARE: usize = 10;
const SINGLES_MIN: usize = 1000;
/// How often progress is sampled while a load runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How often `/metrics` is scraped while a load runs (for the lags' maxima and the timeline). A
/// scrape is not free (it asks the log for every lag and the read model for its gauges, under the
/// read model's lock), so it is kept rare enough not to weigh on what it measures.
const SCRAPE_EVERY: Duration = Duration::from_millis(500);
/// The longest any phase may take before the bench gives up.
const PHASE_DEADLINE: Duration = Duration::from_secs(1800);
/// The MAC prefix of every bench vNIC: its `dhcp-host=` lines are the ones counted.
const MAC_PREFIX: &str = "dhcp-host=52:54:";

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    pub events: usize,
    pub burst: usize,
    pub samples: usize,
    pub perf_records: usize,
    pub scale_out_events: usize,
    pub kafka: Option<String>,
    pub keep: bool,
    /// The batch policy every service it starts is given (`--batch-max-steps`,
    /// `--batch-max-delay-ms`), so that the bench can compare policies.
    pub batch: ipam_log::BatchPolicy,
}

impl Options {
    /// The settings every service process of the bench gets before its command.
    pub(crate) fn service_args(&self) -> Vec<String> {
        vec![
            "--batch-max-steps".to_owned(),
            self.batch.max_steps.to_string(),
            "--batch-max-delay-ms".to_owned(),
            self.batch.max_delay.as_millis().to_string(),
        ]
    }
}

/// The figures of one stack.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub raw: Option<bench_kafka::RawFigures>,
    pub setup: Duration,
    pub load: Load,
    /// The same workload with one event per POST.
    pub singles: Load,
    /// Single starts, one at a time, stage by stage.
    pub stages: Stages,
    pub burst: Load,
    /// Which process was killed and restarted, and how long it took to be ready again.
    pub restarted: &'static str,
    pub restart_ready: Duration,
    /// From the restart until a vNIC start posted after it is shown by the API.
    pub restart_serving: Option<Duration>,
    /// What the restarted process's log says about its rebuild.
    pub restart_note: String,
    /// (allocator processes, events, time until the allocator group committed them all).
    pub scale_out: Vec<(usize, usize, Duration)>,
}

/// One load of N vNIC starts.
#[derive(Debug, Default, Clone)]
pub(crate) struct Load {
    /// Every `POST /v1/events` answered 202.
    pub posted: Duration,
    /// The allocator group's committed position at the end of its input (after the last post).
    pub committed: Option<Duration>,
    /// `/metrics` shows every new reservation.
    pub shown: Option<Duration>,
    /// The host agent's files hold a `dhcp-host=` line for each.
    pub in_files: Option<Duration>,
    /// Reservations added (each one an output record).
    pub outputs: u64,
    /// Offsets the log's topics advanced by (on Kafka, transaction markers take offsets too).
    pub offsets: u64,
    pub max_allocator_lag: u64,
    pub max_read_model_lag: u64,
    /// How long one `GET /metrics` took on average during the load.
    pub scrape_mean: Option<Duration>,
}

/// A running stack as the workload sees it.
pub(crate) struct Target<'a> {
    pub api: Api,
    pub files: PathBuf,
    pub log: &'a dyn EventLog,
    pub topics: Topics,
    /// The allocator's consumer group, as `/metrics` labels it.
    pub allocator_group: String,
    /// Where the load timelines go.
    pub dir: PathBuf,
}

/// The vNICs played so far: each start gets a fresh vNIC, VM and MAC.
#[derive(Debug, Default)]
pub(crate) struct Workload {
    next: u64,
}

/// One vNIC start, its network and its MAC.
pub(crate) struct Start {
    pub json: Value,
    pub network_id: NetworkId,
    pub mac: Mac,
    pub vnic_id: VnicId,
}

pub(crate) fn network(net: u64) -> NetworkId {
    NetworkId::from_u128(u128::from(net) + 1)
}

impl Workload {
    pub fn start(&mut self) -> Start {
        let i = self.next;
        self.next += 1;
        let net = i % NETWORKS;
        let b = i.to_be_bytes();
        let mac = Mac::from_octets([0x52, 0x54, b[4], b[5], b[6], b[7]]).expect("a unicast MAC");
        let vnic_id = VnicId::from_u128(0x5000_0000 + u128::from(i));
        let event = Event::VnicStarted(VnicUp {
            vnic_id,
            vm_id: VmId::from_u128(0x6000_0000 + u128::from(i)),
            network_id: network(net),
            subnet_id: Some(SubnetId::from_u128(u128::from(net) + 1)),
            subnet_ids: Vec::new(),
            mac,
            requested_ip: None,
        });
        Start { json: client::envelope("ipam-bench", event), network_id: network(net), mac, vnic_id }
    }

    pub fn starts(&mut self, n: usize) -> Vec<Value> {
        (0..n).map(|_| self.start().json).collect()
    }
}

/// The size in bytes of a vNIC started record as the API writes it to the log.
pub(crate) fn vnic_record_size() -> anyhow::Result<usize> {
    let start = Workload::default().start();
    Ok(Envelope::decode_value(start.json).map_err(|e| anyhow::anyhow!("{e:?}"))?.to_bytes().len())
}

/// Asks again for up to 60 s when a look at the API fails: on a loaded machine a request may time
/// out (408) or a broker stall fail one; the pipeline carries on, and so does the bench. Posting
/// again is safe too: an input id seen again is a retry with no effect.
pub(crate) fn retrying<T>(what: &str, mut call: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match call() {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() < deadline => {
                println!("  ({what} failed: {error:#}; trying again)");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(error) => return Err(error).context(format!("{what}, for 60 s")),
        }
    }
}

/// What `/metrics` says about the pipeline.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Scrape {
    pub reservations: u64,
    pub allocator_lag: u64,
    pub read_model_lag: u64,
}

pub(crate) fn scrape(api: &Api, allocator_group: &str) -> anyhow::Result<Scrape> {
    let (status, body) = retrying("GET /metrics", || {
        let (status, body) = api.request("GET", "/metrics", None)?;
        if status >= 400 {
            bail!("GET /metrics: {status}");
        }
        Ok((status, body))
    })?;
    if status != 200 {
        bail!("GET /metrics: {status}");
    }
    let mut scrape = Scrape::default();
    let lag_label = format!("group=\"{allocator_group}\"");
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let value: u64 = value.parse::<f64>().map(|v| v as u64).unwrap_or(0);
        if name.starts_with("ipam_reservations{") {
            scrape.reservations += value;
        } else if name.starts_with("ipam_consumer_lag{") && name.contains(&lag_label) {
            scrape.allocator_lag += value;
        } else if name.starts_with("ipam_read_model_lag{") {
            scrape.read_model_lag += value;
        }
    }
    Ok(scrape)
}

/// Counts the bench's `dhcp-host=` lines in a files backend's directory, reading again only the
/// files that changed (they are replaced atomically, so their metadata changes with them).
///
/// The watcher looks every few milliseconds while the files grow to megabytes, so it reads into
/// one buffer it keeps and counts with `memchr`: reading each file into a fresh string made the
/// kernel clear pages for every read, and the watcher took a sixth of a core from the load it
/// measured (`perf` over `ipam bench --events 200000`, 5 December).
#[derive(Debug, Default)]
pub(crate) struct LineCounter {
    seen: HashMap<PathBuf, (SystemTime, u64, usize)>,
    buffer: Vec<u8>,
}

impl LineCounter {
    pub fn count(&mut self, dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "conf") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
            if self.seen.get(&path).is_some_and(|(m, l, _)| (*m, *l) == stamp) {
                continue;
            }
            self.buffer.clear();
            let read = std::fs::File::open(&path).and_then(|mut file| file.read_to_end(&mut self.buffer));
            if read.is_ok() {
                self.seen.insert(path, (stamp.0, stamp.1, bench_lines(&self.buffer)));
            }
        }
        self.seen.values().map(|(_, _, n)| n).sum()
    }

    pub fn files(&self) -> usize {
        self.seen.len()
    }
}

/// The lines of `text` that start with [`MAC_PREFIX`].
fn bench_lines(text: &[u8]) -> usize {
    let prefix = MAC_PREFIX.as_bytes();
    let after_newline = memchr::memmem::Finder::new(&[b"\n", prefix].concat()).find_iter(text).count();
    after_newline + usize::from(text.starts_with(prefix))
}

/// Sum of the end offsets of every topic of the deployment. A broker that stalls may answer
/// "not leader" for a moment (a single broker fences itself when its controller lags): asked
/// again for up to 60 s before the error counts.
fn offsets(log: &dyn EventLog, topics: &Topics) -> anyhow::Result<u64> {
    let once = || -> Result<u64, ipam_log::LogError> {
        let mut total = 0;
        for spec in topics.specs() {
            total += log.end_offsets(&spec.name)?.iter().sum::<u64>();
        }
        Ok(total)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match once() {
            Ok(total) => return Ok(total),
            Err(error) if Instant::now() < deadline => {
                println!("  (the log's end offsets: {error}; asking again)");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(error) => return Err(error).context("reading the log's end offsets"),
        }
    }
}

fn wait_until<T>(what: &str, mut probe: impl FnMut() -> anyhow::Result<Option<T>>) -> anyhow::Result<T> {
    let deadline = Instant::now() + PHASE_DEADLINE;
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
}

/// A host attached to every network, the networks and their subnets; done when the host agent has
/// a file for every network and the reservations of its servers' own addresses have settled.
pub(crate) fn setup(target: &Target) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut events = vec![client::envelope(
        "ipam-bench",
        Event::HostUpserted(HostUpserted {
            host_id: HOST,
            name: "bench".to_owned(),
            status: HostStatus::Up,
            networks: (0..NETWORKS)
                .map(|net| HostNetwork {
                    network_id: network(net),
                    interface: format!("br{net}").parse().expect("a valid interface name"),
                })
                .collect(),
        }),
    )];
    for net in 0..NETWORKS {
        events.push(client::envelope(
            "ipam-bench",
            Event::NetworkUpserted(NetworkUpserted {
                network_id: network(net),
                name: format!("bench-{net}"),
                ipam_enabled: true,
                servers_count: Some(1),
            }),
        ));
        events.push(client::envelope(
            "ipam-bench",
            Event::SubnetAdded(SubnetAdded {
                network_id: network(net),
                subnet_id: SubnetId::from_u128(u128::from(net) + 1),
                cidr: format!("10.{}.0.0/16", net + 1).parse()?,
                gateway: format!("10.{}.0.1", net + 1).parse()?,
                dns_servers: vec![],
                ntp_servers: vec![],
                allocation_pools: None,
            }),
        ));
    }
    target.api.publish(&events)?;
    let mut counter = LineCounter::default();
    wait_until("the host agent serves every network", || {
        counter.count(&target.files);
        Ok((counter.files() as u64 >= NETWORKS).then_some(()))
    })?;
    // The servers' own addresses are reservations too: wait until their count stays put.
    let mut last = (u64::MAX, Instant::now());
    wait_until("the servers' addresses are reserved", || {
        let now = shown(&target.api)?;
        if now != last.0 {
            last = (now, Instant::now());
        }
        Ok((now >= NETWORKS && last.1.elapsed() > Duration::from_secs(1)).then_some(()))
    })?;
    Ok(started.elapsed())
}

/// Reservations the API's read model holds, from `GET /v1/networks` (an in-memory read, unlike
/// `/metrics`, which asks the log for every lag and on Kafka takes a second or more).
pub(crate) fn shown(api: &Api) -> anyhow::Result<u64> {
    let body = retrying("GET /v1/networks", || api.get("/v1/networks"))?;
    Ok(body["networks"]
        .as_array()
        .map_or(0, |networks| networks.iter().map(|network| network["reservations"].as_u64().unwrap_or(0)).sum()))
}

/// What the `/metrics` sampler of a load saw.
#[derive(Debug, Default)]
struct Lags {
    max_allocator_lag: u64,
    max_read_model_lag: u64,
    scrapes: u32,
    scraping: Duration,
    timeline: String,
}

/// N vNIC starts posted in batches of [`BATCH`]; see [`load_in_posts`].
pub(crate) fn load(target: &Target, workload: &mut Workload, n: usize, name: &str) -> anyhow::Result<Load> {
    load_in_posts(target, workload, n, BATCH, name)
}

/// Posts encoded bodies on [`CONNECTIONS`] connections at once, each taking the next body in
/// turn; answers when every body is answered 202 (each retried as [`retrying`] says).
fn post_all(
    url: &str,
    bodies: Vec<(usize, Vec<u8>)>,
    posted_count: &AtomicU64,
    done: &AtomicBool,
) -> anyhow::Result<()> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .max_idle_connections_per_host(CONNECTIONS)
        .build()
        .new_agent();
    let events_url = format!("{url}/v1/events");
    std::thread::scope(|scope| {
        let posters: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let index = next.fetch_add(1, Ordering::SeqCst);
                        let Some((events, body)) = bodies.get(index) else { return Ok(()) };
                        if done.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                        retrying("POST /v1/events", || {
                            let mut answer = agent
                                .post(&events_url)
                                .header("Content-Type", "application/json")
                                .send(&body[..])
                                .context("POST /v1/events")?;
                            let status = answer.status().as_u16();
                            if status != 202 {
                                let text = answer.body_mut().read_to_string().unwrap_or_default();
                                bail!("POST /v1/events: {status} {}", text.chars().take(300).collect::<String>());
                            }
                            Ok(())
                        })?;
                        posted_count.fetch_add(*events as u64, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        posters.into_iter().try_for_each(|poster| poster.join().map_err(|_| anyhow::anyhow!("a poster panicked"))?)
    })
}

/// N vNIC starts posted `per_post` to a POST on [`CONNECTIONS`] connections while the files and
/// the read model are watched every few milliseconds, and `/metrics` (the lags) as often as it
/// answers. Each time is taken when the look that saw the condition returned.
pub(crate) fn load_in_posts(
    target: &Target,
    workload: &mut Workload,
    n: usize,
    per_post: usize,
    name: &str,
) -> anyhow::Result<Load> {
    let shown_before = shown(&target.api)?;
    let mut counter = LineCounter::default();
    let lines_before = counter.count(&target.files);
    let offsets_before = offsets(target.log, &target.topics)?;
    // Encoded before the clock starts: an engine has its events at hand, and encoding them here
    // would measure this client.
    let bodies: Vec<(usize, Vec<u8>)> = workload
        .starts(n)
        .chunks(per_post.max(1))
        .map(|chunk| {
            let body = if per_post == 1 { serde_json::to_vec(&chunk[0]) } else { serde_json::to_vec(chunk) };
            body.map(|body| (chunk.len(), body))
        })
        .collect::<Result<_, _>>()?;

    let started = Instant::now();
    let posted_ns = Arc::new(AtomicU64::new(0));
    let posted_count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let poster = {
        let (url, posted_ns, posted_count, done) =
            (target.api.url().to_owned(), Arc::clone(&posted_ns), Arc::clone(&posted_count), Arc::clone(&done));
        std::thread::spawn(move || -> anyhow::Result<()> {
            post_all(&url, bodies, &posted_count, &done)?;
            posted_ns.store(started.elapsed().as_nanos() as u64 + 1, Ordering::SeqCst);
            Ok(())
        })
    };
    let sampler = {
        let (api, group, posted_count, done) =
            (target.api.clone(), target.allocator_group.clone(), Arc::clone(&posted_count), Arc::clone(&done));
        std::thread::spawn(move || -> anyhow::Result<Lags> {
            let mut lags = Lags {
                timeline: "secs\tposted\tallocator_lag\tread_model_lag\treservations_total\n".to_owned(),
                ..Lags::default()
            };
            while !done.load(Ordering::SeqCst) {
                let asked = Instant::now();
                let scrape = scrape(&api, &group)?;
                lags.scrapes += 1;
                lags.scraping += asked.elapsed();
                let now = started.elapsed();
                lags.max_allocator_lag = lags.max_allocator_lag.max(scrape.allocator_lag);
                lags.max_read_model_lag = lags.max_read_model_lag.max(scrape.read_model_lag);
                lags.timeline.push_str(&format!(
                    "{:.3}\t{}\t{}\t{}\t{}\n",
                    now.as_secs_f64(),
                    posted_count.load(Ordering::SeqCst),
                    scrape.allocator_lag,
                    scrape.read_model_lag,
                    scrape.reservations
                ));
                let until = Instant::now() + SCRAPE_EVERY;
                while Instant::now() < until && !done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Ok(lags)
        })
    };

    let mut load = Load::default();
    let mut files_timeline = String::from("secs\tlines_in_files\treservations_shown\n");
    let mut last_row = Duration::ZERO;
    let mut last_lag_look: Option<Instant> = None;
    let input = target.topics.name(Topic::Networks);
    let watched = (|| -> anyhow::Result<()> {
        while load.shown.is_none() || load.in_files.is_none() || load.committed.is_none() {
            if started.elapsed() > PHASE_DEADLINE {
                bail!("the {name} load did not finish in {} s", PHASE_DEADLINE.as_secs());
            }
            if poster.is_finished() && posted_ns.load(Ordering::SeqCst) == 0 {
                bail!("posting the {name} load failed");
            }
            if sampler.is_finished() {
                bail!("scraping /metrics failed");
            }
            let lines = counter.count(&target.files) - lines_before;
            if lines >= n && load.in_files.is_none() {
                load.in_files = Some(started.elapsed());
            }
            let seen = shown(&target.api)?.saturating_sub(shown_before);
            if seen >= n as u64 && load.shown.is_none() {
                load.shown = Some(started.elapsed());
            }
            // The allocator group's position, read from the log itself (a look that fails, as
            // a broker's may for a moment, only does not count).
            if load.committed.is_none()
                && posted_ns.load(Ordering::SeqCst) > 0
                && last_lag_look.is_none_or(|at| at.elapsed() >= SAMPLE_EVERY)
            {
                last_lag_look = Some(Instant::now());
                if ipam_runtime::lag(target.log, &target.allocator_group, &input).is_ok_and(|lag| lag == 0) {
                    load.committed = Some(started.elapsed());
                }
            }
            if started.elapsed() >= last_row + Duration::from_millis(250) {
                last_row = started.elapsed();
                files_timeline.push_str(&format!("{:.3}\t{lines}\t{seen}\n", last_row.as_secs_f64()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })();
    done.store(true, Ordering::SeqCst);
    let posting = poster.join().map_err(|_| anyhow::anyhow!("the poster panicked"))?;
    let lags = sampler.join().map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    let _ = std::fs::write(target.dir.join(format!("timeline-{name}-files.tsv")), &files_timeline);
    posting.context("posting vNIC starts")?;
    watched?;
    let lags = lags.context("scraping /metrics")?;
    let _ = std::fs::write(target.dir.join(format!("timeline-{name}-metrics.tsv")), &lags.timeline);
    load.posted = Duration::from_nanos(posted_ns.load(Ordering::SeqCst) - 1);
    load.max_allocator_lag = lags.max_allocator_lag;
    load.max_read_model_lag = lags.max_read_model_lag;
    load.scrape_mean = (lags.scrapes > 0).then(|| lags.scraping / lags.scrapes);
    load.outputs = shown(&target.api)?.saturating_sub(shown_before);
    load.offsets = offsets(target.log, &target.topics)?.saturating_sub(offsets_before);
    Ok(load)
}

/// Single starts timed one at a time, at least this many when Kafka runs too (and then on both
/// stacks, so that the columns compare), so that a p99 is not just the maximum.
pub(crate) const STAGE_SAMPLES: usize = 100;

/// How many single starts [`stages`] times for these options.
pub(crate) fn stage_samples(options: &Options) -> usize {
    if options.kafka.is_some() { options.samples.max(STAGE_SAMPLES) } else { options.samples }
}

/// Where the time of one vNIC start goes, single starts timed one at a time, each stage from the
/// start of its `POST /v1/events`; each list sorted.
#[derive(Debug, Default)]
pub(crate) struct Stages {
    /// The API answered the POST (its record appended and acknowledged).
    pub posted: Vec<Duration>,
    /// The start visible to a follower of `ipam.networks` (read_committed on Kafka): what the
    /// allocator's consumer sees.
    pub input_visible: Vec<Duration>,
    /// Its reservation visible to a follower of `ipam.reservations`: committed in the log (on
    /// Kafka, the allocator's transaction committed), what the host agent's follower sees.
    pub to_log: Vec<Duration>,
    /// `GET /v1/vnics/{id}` answers it.
    pub to_api: Vec<Duration>,
    /// Its `dhcp-host=` line is in its network's file.
    pub to_file: Vec<Duration>,
    /// From the reservation committed in the log until the API answers it: the read model's lag
    /// behind the log, as a client sees it.
    pub log_to_api: Vec<Duration>,
    /// From the reservation committed in the log until its line is in the file: the host agent.
    pub log_to_file: Vec<Duration>,
}

/// The vNIC a record is about, if it is a vNIC start or a vNIC's reservation.
fn vnic_of(record: &ipam_log::Record) -> Option<VnicId> {
    match Envelope::decode(&record.value).ok()?.event {
        Event::VnicStarted(up) => Some(up.vnic_id),
        Event::ReservationAdded(added) => match added.owner {
            Owner::Vnic { vnic_id, .. } => Some(vnic_id),
            _ => None,
        },
        _ => None,
    }
}

/// What the bench's own follower saw: when a record reached it, its topic and its vNIC.
type Seen = (Instant, String, VnicId);

/// Follows the input and reservation topics from their ends on a thread of its own until `stop`,
/// so that the moment a record becomes visible is taken while the bench looks at the API and the
/// file.
fn watch_records(
    log: &dyn EventLog,
    topics: &Topics,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(std::sync::mpsc::Receiver<Seen>, std::thread::JoinHandle<()>)> {
    let mut from = Vec::new();
    for topic in [Topic::Networks, Topic::Reservations] {
        let name = topics.name(topic);
        for partition in 0..log.partition_count(&name)? {
            let next_offset = log.end_offset(&name, partition)?;
            from.push(Position { topic: name.clone(), partition, next_offset });
        }
    }
    let mut follower = log.follow(&from)?;
    let (sender, receiver) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match follower.next(512, Duration::from_millis(20)) {
                Ok(records) => {
                    let now = Instant::now();
                    for record in records {
                        let Some(vnic_id) = vnic_of(&record) else { continue };
                        if sender.send((now, record.topic, vnic_id)).is_err() {
                            return;
                        }
                    }
                }
                Err(error) => {
                    println!("  (the bench's follower: {error}; going on)");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    });
    Ok((receiver, thread))
}

/// One vNIC start at a time, each timed from its post until the API answered it, until the start
/// and then its reservation are visible to the bench's follower of the log (one thread, started
/// once, following `ipam.networks` and `ipam.reservations` from their ends; a record is matched to
/// its start by vNIC id), until the API answers `GET /v1/vnics/{id}` and until its `dhcp-host=`
/// line is in its network's file. The API and the file are looked at in turn about every
/// [`LOOK_EVERY`] plus the time the looks take, so those times are known to within one round of
/// looks (about a millisecond here).
pub(crate) fn stages(target: &Target, workload: &mut Workload, samples: usize) -> anyhow::Result<Stages> {
    const LOOK_EVERY: Duration = Duration::from_micros(200);
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, follower) = watch_records(target.log, &target.topics, Arc::clone(&stop))?;
    let (input_topic, output_topic) = (target.topics.name(Topic::Networks), target.topics.name(Topic::Reservations));
    let mut stages = Stages::default();
    let result = (|| -> anyhow::Result<()> {
        for _ in 0..samples {
            let start = workload.start();
            let file = target.files.join(format!("{}.conf", start.network_id));
            let line = format!("dhcp-host={},", start.mac);
            let path = format!("/v1/vnics/{}", start.vnic_id);
            let started = Instant::now();
            target.api.publish(std::slice::from_ref(&start.json))?;
            let posted = started.elapsed();
            let (mut input, mut in_log, mut in_api, mut in_file) = (None, None, None, None);
            while input.is_none() || in_log.is_none() || in_api.is_none() || in_file.is_none() {
                while let Ok((at, topic, vnic_id)) = seen.try_recv() {
                    if vnic_id != start.vnic_id {
                        continue;
                    }
                    let slot = if topic == input_topic {
                        &mut input
                    } else if topic == output_topic {
                        &mut in_log
                    } else {
                        continue;
                    };
                    slot.get_or_insert(at.saturating_duration_since(started));
                }
                if in_api.is_none() && target.api.request("GET", &path, None)?.0 == 200 {
                    in_api = Some(started.elapsed());
                }
                if in_file.is_none() && std::fs::read_to_string(&file).is_ok_and(|text| text.contains(&line)) {
                    in_file = Some(started.elapsed());
                }
                if follower.is_finished() {
                    bail!("the bench's follower of the log stopped");
                }
                if started.elapsed() > Duration::from_secs(300) {
                    bail!("vNIC {} was not in the log, the API and {} within 300 s", start.vnic_id, file.display());
                }
                std::thread::sleep(LOOK_EVERY);
            }
            let (input, in_log, in_api, in_file) = (
                input.unwrap_or_default(),
                in_log.unwrap_or_default(),
                in_api.unwrap_or_default(),
                in_file.unwrap_or_default(),
            );
            stages.posted.push(posted);
            stages.input_visible.push(input);
            stages.to_log.push(in_log);
            stages.to_api.push(in_api);
            stages.to_file.push(in_file);
            stages.log_to_api.push(in_api.saturating_sub(in_log));
            stages.log_to_file.push(in_file.saturating_sub(in_log));
        }
        Ok(())
    })();
    stop.store(true, Ordering::SeqCst);
    let _ = follower.join();
    result?;
    for list in [
        &mut stages.posted,
        &mut stages.input_visible,
        &mut stages.to_log,
        &mut stages.to_api,
        &mut stages.to_file,
        &mut stages.log_to_api,
        &mut stages.log_to_file,
    ] {
        list.sort();
    }
    Ok(stages)
}

/// The stages of one stack's single starts, p50 / p90 / p99 / max of each.
fn print_stages(name: &str, stages: &Stages) {
    let ms = |list: &[Duration], p: f64| {
        percentile(list, p).map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1000.0))
    };
    println!(
        "{name}: {} single starts, stage by stage, ms from the POST (p50 / p90 / p99 / max):",
        stages.to_file.len()
    );
    for (label, list) in [
        ("API answered (input appended)", &stages.posted),
        ("input visible to a follower of ipam.networks", &stages.input_visible),
        ("reservation visible (allocator committed)", &stages.to_log),
        ("API answers GET /v1/vnics/{id}", &stages.to_api),
        ("dhcp-host= line in the host agent's file", &stages.to_file),
    ] {
        println!(
            "{name}:   {label:45} {:>7} / {:>7} / {:>7} / {:>7}",
            ms(list, 0.5),
            ms(list, 0.9),
            ms(list, 0.99),
            ms(list, 1.0)
        );
    }
}

/// From `since` (a restart) until one vNIC start posted now is shown by the API.
pub(crate) fn serving_again(target: &Target, workload: &mut Workload, since: Instant) -> anyhow::Result<Duration> {
    let before = shown(&target.api)?;
    target.api.publish(&[workload.start().json])?;
    wait_until("a start posted after the restart is reserved", || {
        Ok((shown(&target.api)? > before).then(|| since.elapsed()))
    })
}

/// The rebuilds a driver's log reports: "N partitions rebuilt, R records replayed, T ms".
pub(crate) fn rebuild_note(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let field = |line: &str, name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let rebuilt: Vec<&str> = text.lines().filter(|l| l.contains("Rebuilt partition state")).collect();
    let replayed: u64 = rebuilt.iter().map(|l| field(l, "replayed")).sum();
    let elapsed: u64 = rebuilt.iter().map(|l| field(l, "elapsed_ms")).sum();
    format!("{} partition rebuilds, {replayed} records replayed, {elapsed} ms rebuilding", rebuilt.len())
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ipam-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let record_size = vnic_record_size()?;
    println!(
        "ipam bench: {} vNIC starts over {NETWORKS} networks through POST /v1/events (batches of {BATCH}), one host \
         agent (files backend); vNIC started record: {record_size} bytes; batches commit at {} steps or {} ms",
        options.events,
        options.batch.max_steps,
        options.batch.max_delay.as_millis()
    );
    let embedded = measure_embedded(&dir.join("embedded"), options);
    let kafka = match (&options.kafka, &embedded) {
        (Some(bootstrap), Ok(_)) => Some(bench_kafka::measure(bootstrap, &dir.join("kafka"), options, record_size)),
        _ => None,
    };
    let failed = embedded.is_err() || kafka.as_ref().is_some_and(Result::is_err);
    if let Ok(embedded) = &embedded {
        print_table(options, embedded, kafka.as_ref().and_then(|k| k.as_ref().ok()));
    }
    if failed || options.keep {
        println!("logs, data and load timelines kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    embedded.context("the embedded bench")?;
    if let Some(kafka) = kafka {
        kafka.context("the Kafka bench")?;
    }
    Ok(())
}

/// Processes of one stack, all stopped (SIGKILL, by pid) when dropped: on success they were
/// stopped cleanly before, on failure nothing is left behind.
#[derive(Debug, Default)]
pub(crate) struct Fleet {
    pub processes: Vec<(String, UpProcess)>,
}

impl Fleet {
    pub fn take(&mut self, name: &str) -> Option<UpProcess> {
        let index = self.processes.iter().position(|(n, _)| n == name)?;
        Some(self.processes.remove(index).1)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, process) in &mut self.processes {
            let _ = process.kill();
        }
    }
}

fn up_args(dir: &Path, options: &Options) -> Vec<String> {
    let mut args = options.service_args();
    args.extend(
        [
            "--data-dir",
            &dir.join("data").display().to_string(),
            "--partitions",
            "8",
            "--api-bind",
            "127.0.0.1:0",
            "up",
            "--host-agent",
            &format!("{HOST}={}", dir.join("files").display()),
        ]
        .map(str::to_owned),
    );
    args
}

fn measure_embedded(dir: &Path, options: &Options) -> anyhow::Result<Figures> {
    std::fs::create_dir_all(dir)?;
    println!("embedded: starting ipam up");
    let mut fleet = Fleet::default();
    let up = UpProcess::start_service(&up_args(dir, options), true, Some(&dir.join("up.log")))?;
    let api = Api::new(&up.api_url, None)?;
    fleet.processes.push(("up".to_owned(), up));
    let log = SqliteLog::open(&dir.join("data").join("log"), Durability::ProcessCrash)?;
    let target = Target {
        api,
        files: dir.join("files"),
        log: &log,
        topics: Topics::new("", 8),
        allocator_group: "ipam-allocator".to_owned(),
        dir: dir.to_owned(),
    };
    let mut workload = Workload::default();
    let figures = phases(&target, &mut workload, options, "embedded")?;
    let mut up = fleet.take("up").context("ipam up")?;
    up.kill()?;
    let since = Instant::now();
    let restarted = UpProcess::start_service(&up_args(dir, options), true, Some(&dir.join("up-restarted.log")))?;
    let restart_ready = restarted.ready_after;
    let target = Target { api: Api::new(&restarted.api_url, None)?, ..target };
    fleet.processes.push(("up".to_owned(), restarted));
    let restart_serving = serving_again(&target, &mut workload, since)?;
    println!(
        "embedded: ipam up ready again {:.2} s after SIGKILL, serving at {:.2} s",
        restart_ready.as_secs_f64(),
        restart_serving.as_secs_f64()
    );
    fleet.take("up").context("ipam up")?.terminate()?;
    Ok(Figures {
        restarted: "ipam up (whole process)",
        restart_ready,
        restart_serving: Some(restart_serving),
        restart_note: rebuild_note(&dir.join("up-restarted.log")),
        ..figures
    })
}

/// The phases both stacks share: setup, load, latency, burst.
pub(crate) fn phases(
    target: &Target,
    workload: &mut Workload,
    options: &Options,
    name: &str,
) -> anyhow::Result<Figures> {
    let setup = setup(target)?;
    println!("{name}: setup done in {:.2} s; loading {} vNIC starts", setup.as_secs_f64(), options.events);
    let load = load(target, workload, options.events, &format!("{name}-load"))?;
    println!(
        "{name}: {} starts posted in {:.2} s, shown by the API at {}, in the files at {}",
        options.events,
        load.posted.as_secs_f64(),
        secs(load.shown),
        secs(load.in_files)
    );
    let n_singles = (options.events / SINGLES_SHARE).max(SINGLES_MIN).min(options.events.max(1));
    let singles = load_in_posts(target, workload, n_singles, 1, &format!("{name}-singles"))?;
    println!(
        "{name}: {n_singles} starts posted one per POST in {:.2} s, shown by the API at {}, in the files at {}",
        singles.posted.as_secs_f64(),
        secs(singles.shown),
        secs(singles.in_files)
    );
    let stages = stages(target, workload, stage_samples(options))?;
    println!(
        "{name}: {} single starts, to the file p50 {}, committed → API p50 {} p99 {}",
        stages.to_file.len(),
        ms(percentile(&stages.to_file, 0.5)),
        ms(percentile(&stages.log_to_api, 0.5)),
        ms(percentile(&stages.log_to_api, 0.99))
    );
    print_stages(name, &stages);
    let burst = load_burst(target, workload, options.burst, name)?;
    Ok(Figures { setup, load, singles, stages, burst, ..Figures::default() })
}

fn load_burst(target: &Target, workload: &mut Workload, n: usize, name: &str) -> anyhow::Result<Load> {
    let burst = load(target, workload, n, &format!("{name}-burst"))?;
    println!("{name}: burst of {n} in the files at {}", secs(burst.in_files));
    Ok(burst)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".to_owned(), |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
}

/// 16151.3 → "16,151".
pub(crate) fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(n: f64, d: Option<Duration>) -> Option<f64> {
    d.filter(|d| !d.is_zero()).map(|d| n / d.as_secs_f64())
}

/// One line of the table: the figure of each stack, and Kafka's over the embedded log's.
struct Row {
    label: String,
    embedded: Option<f64>,
    kafka: Option<f64>,
    unit: Unit,
}

#[derive(Clone, Copy, PartialEq)]
enum Unit {
    PerSec,
    Secs,
    Millis,
    Count,
    Ratio,
}

impl Unit {
    fn show(self, value: Option<f64>) -> String {
        let Some(v) = value else { return "-".to_owned() };
        match self {
            Unit::PerSec => format!("{}/s", thousands(v)),
            Unit::Secs => format!("{v:.2} s"),
            Unit::Millis => format!("{v:.1} ms"),
            Unit::Count => thousands(v),
            Unit::Ratio => format!("{v:.3}"),
        }
    }
}

fn print_table(options: &Options, embedded: &Figures, kafka: Option<&Figures>) {
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |label: String, unit: Unit, value: &dyn Fn(&Figures) -> Option<f64>| {
        rows.push(Row { label, embedded: value(embedded), kafka: kafka.and_then(value), unit });
    };
    let raw_txn = kafka.and_then(|k| k.raw.as_ref()).map(|r| r.produce_transactional);
    if let Some(raw) = kafka.and_then(|k| k.raw.as_ref()) {
        let records = thousands(raw.records as f64);
        let size = raw.record_size;
        row(format!("Apache ProducerPerformance, {records} × {size} B, acks=all idempotent"), Unit::PerSec, &|f| {
            f.raw.as_ref().map(|r| r.produce_idempotent)
        });
        row(format!("Apache ProducerPerformance, same, transactional ({})", raw.transaction), Unit::PerSec, &|f| {
            f.raw.as_ref().map(|r| r.produce_transactional)
        });
        row("Apache ConsumerPerformance, the idempotent topic".to_owned(), Unit::PerSec, &|f| {
            f.raw.as_ref().map(|r| r.consume)
        });
        row("Apache ConsumerPerformance, the transactional topic, read_committed".to_owned(), Unit::PerSec, &|f| {
            f.raw.as_ref().map(|r| r.consume_committed)
        });
    }
    let n = options.events as f64;
    row(format!("setup: host + {NETWORKS} networks + subnets, until served"), Unit::Secs, &|f| {
        Some(f.setup.as_secs_f64())
    });
    row(format!("{} vNIC starts: all POSTs answered", thousands(n)), Unit::Secs, &|f| {
        Some(f.load.posted.as_secs_f64())
    });
    row("  allocator committed them all (its group's position in the log)".to_owned(), Unit::Secs, &|f| {
        f.load.committed.map(|d| d.as_secs_f64())
    });
    row("  API read model shows them all".to_owned(), Unit::Secs, &|f| f.load.shown.map(|d| d.as_secs_f64()));
    row("  host agent's files hold them all".to_owned(), Unit::Secs, &|f| f.load.in_files.map(|d| d.as_secs_f64()));
    row(
        format!("end to end (to the API), events/s, {BATCH} per POST on {CONNECTIONS} connections"),
        Unit::PerSec,
        &|f| rate(n, f.load.shown),
    );
    row("end to end (to the files), events/s".to_owned(), Unit::PerSec, &|f| rate(n, f.load.in_files));
    row("records written per event (input + reservation added)".to_owned(), Unit::Ratio, &|f| {
        Some((n + f.load.outputs as f64) / n)
    });
    row("end to end (to the API), records/s written".to_owned(), Unit::PerSec, &|f| {
        rate(n + f.load.outputs as f64, f.load.shown)
    });
    row("log offsets advanced during the load (all topics)".to_owned(), Unit::Count, &|f| Some(f.load.offsets as f64));
    if let Some(raw_txn) = raw_txn {
        row("  ÷ raw transactional produce, per event".to_owned(), Unit::Ratio, &|f| {
            f.raw.as_ref().and_then(|_| rate(n, f.load.shown)).map(|r| r / raw_txn)
        });
        row("  ÷ raw transactional produce, per record".to_owned(), Unit::Ratio, &|f| {
            f.raw.as_ref().and_then(|_| rate(n + f.load.outputs as f64, f.load.shown)).map(|r| r / raw_txn)
        });
    }
    row("one GET /metrics answered in (mean during the load)".to_owned(), Unit::Millis, &|f| {
        f.load.scrape_mean.map(|d| d.as_secs_f64() * 1000.0)
    });
    row("largest allocator lag seen (records)".to_owned(), Unit::Count, &|f| Some(f.load.max_allocator_lag as f64));
    row("largest read-model lag seen (records)".to_owned(), Unit::Count, &|f| Some(f.load.max_read_model_lag as f64));
    let singles = |f: &Figures| (f.singles.posted > Duration::ZERO).then_some(f.singles.clone());
    let n_singles = |f: &Figures| singles(f).map_or(0.0, |s| s.outputs as f64);
    row(format!("single-event POSTs on {CONNECTIONS} connections: all answered"), Unit::Secs, &|f| {
        singles(f).map(|s| s.posted.as_secs_f64())
    });
    row("  end to end (to the API), events/s".to_owned(), Unit::PerSec, &|f| {
        singles(f).and_then(|s| rate(n_singles(f), s.shown))
    });
    row("  end to end (to the files), events/s".to_owned(), Unit::PerSec, &|f| {
        singles(f).and_then(|s| rate(n_singles(f), s.in_files))
    });
    let samples = stage_samples(options);
    let stage = |list: &[Duration], p: f64| percentile(list, p).map(|d| d.as_secs_f64() * 1000.0);
    row(format!("one start → the API answered its POST, p50 ({samples} one at a time)"), Unit::Millis, &|f| {
        stage(&f.stages.posted, 0.5)
    });
    row("  p99".to_owned(), Unit::Millis, &|f| stage(&f.stages.posted, 0.99));
    row("one start → visible to a follower of ipam.networks, p50".to_owned(), Unit::Millis, &|f| {
        stage(&f.stages.input_visible, 0.5)
    });
    row("  p99".to_owned(), Unit::Millis, &|f| stage(&f.stages.input_visible, 0.99));
    row(format!("one start → reservation committed in the log, p50 ({samples} one at a time)"), Unit::Millis, &|f| {
        stage(&f.stages.to_log, 0.5)
    });
    row("  p99".to_owned(), Unit::Millis, &|f| stage(&f.stages.to_log, 0.99));
    row("committed → the API answers it (read-model lag), p50".to_owned(), Unit::Millis, &|f| {
        stage(&f.stages.log_to_api, 0.5)
    });
    row("  p99".to_owned(), Unit::Millis, &|f| stage(&f.stages.log_to_api, 0.99));
    row("  max".to_owned(), Unit::Millis, &|f| stage(&f.stages.log_to_api, 1.0));
    row("committed → its dhcp-host= line (host agent), p50".to_owned(), Unit::Millis, &|f| {
        stage(&f.stages.log_to_file, 0.5)
    });
    row("  p99".to_owned(), Unit::Millis, &|f| stage(&f.stages.log_to_file, 0.99));
    row(format!("one start → its dhcp-host= line, p50 ({samples} one at a time)"), Unit::Millis, &|f| {
        stage(&f.stages.to_file, 0.5)
    });
    row("  p99".to_owned(), Unit::Millis, &|f| stage(&f.stages.to_file, 0.99));
    row("  max".to_owned(), Unit::Millis, &|f| stage(&f.stages.to_file, 1.0));
    row(format!("burst of {} starts → all in the files", thousands(options.burst as f64)), Unit::Secs, &|f| {
        f.burst.in_files.map(|d| d.as_secs_f64())
    });
    row("  API shows them all".to_owned(), Unit::Secs, &|f| f.burst.shown.map(|d| d.as_secs_f64()));
    row("restarted after SIGKILL (see below): says it is ready".to_owned(), Unit::Secs, &|f| {
        Some(f.restart_ready.as_secs_f64())
    });
    row("  a start posted then is shown by the API".to_owned(), Unit::Secs, &|f| {
        f.restart_serving.map(|d| d.as_secs_f64())
    });
    let one = kafka.and_then(|k| k.scale_out.first().map(|(_, e, d)| *e as f64 / d.as_secs_f64()));
    for processes in [1, 2, 4] {
        let figure = |f: &Figures| {
            f.scale_out.iter().find(|(p, _, _)| *p == processes).map(|(_, e, d)| *e as f64 / d.as_secs_f64())
        };
        if kafka.is_some_and(|k| figure(k).is_some()) {
            row(
                format!("scale-out: {processes} allocator process(es), 8 partitions, committed"),
                Unit::PerSec,
                &figure,
            );
            if processes > 1 {
                row(format!("  ratio of {processes} to 1"), Unit::Ratio, &|f| figure(f).zip(one).map(|(x, o)| x / o));
            }
        }
    }

    let width = rows.iter().map(|r| r.label.chars().count()).max().unwrap_or(10);
    println!();
    println!("{:width$}  {:>16}  {:>16}  {:>10}", "", "embedded", if kafka.is_some() { "Kafka" } else { "" }, "");
    if kafka.is_some() {
        println!("{:width$}  {:>16}  {:>16}  {:>10}", "", "", "", "Kafka/emb.");
    }
    for row in &rows {
        let ratio = match (row.embedded, row.kafka, row.unit) {
            (Some(e), Some(k), Unit::PerSec | Unit::Secs | Unit::Millis) if e > 0.0 => format!("{:.2}×", k / e),
            _ => String::new(),
        };
        let kafka_text = if kafka.is_some() { row.unit.show(row.kafka) } else { String::new() };
        println!("{:width$}  {:>16}  {:>16}  {:>10}", row.label, row.unit.show(row.embedded), kafka_text, ratio);
    }
    println!();
    println!("restarted: embedded {} ({});", embedded.restarted, embedded.restart_note);
    if let Some(k) = kafka {
        println!("           Kafka {} ({}).", k.restarted, k.restart_note);
    }
    if let Some(k) = kafka {
        if let Some(raw) = &k.raw {
            println!(
                "Kafka record counts come from what each event produces; log offsets also count transaction markers."
            );
            println!("raw tools: {}", raw.command_note);
        }
        println!(
            "the allocator's commit is its group's position read from the log every 50 ms; the API (GET /v1/networks) \
             and the files are watched every few milliseconds; /metrics is scraped every 0.5 s for the lags' maxima."
        );
        if !k.scale_out.is_empty() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            println!(
                "scale-out: allocator processes share the 8 partitions through the consumer group; this machine has {cores} \
                 core(s) shared by the broker, the API, placement, the host agent and the bench itself, so a ratio near 1 \
                 here says the cores are saturated, not that the allocator does not scale; on {cores} cores the ceiling \
                 of the ratio is at most {cores}."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_counter_counts_the_bench_hosts_lines_of_changed_files_only() {
        let dir = tempfile::tempdir().expect("a directory");
        let host = |n: u8| format!("{MAC_PREFIX}00:00:00:{n:02x},10.0.0.{n}\n");
        let first = format!("{}# dhcp-host=52:54:00:00:00:99 in a comment\n{}", host(1), host(2));
        std::fs::write(dir.path().join("a.conf"), &first).expect("written");
        std::fs::write(dir.path().join("b.conf"), host(3)).expect("written");
        std::fs::write(dir.path().join("c.leases"), host(4)).expect("written");
        let mut counter = LineCounter::default();
        assert_eq!(counter.count(dir.path()), 3, "lines that start with the prefix, in .conf files");
        std::fs::write(dir.path().join("b.conf"), format!("{}{}{}", host(3), host(5), host(6))).expect("written");
        assert_eq!(counter.count(dir.path()), 5, "a changed file is read again");
        assert_eq!(counter.files(), 2);
        assert_eq!(bench_lines(b""), 0);
        assert_eq!(bench_lines(MAC_PREFIX.as_bytes()), 1, "a line at the very start, with no newline");
    }

    fn record(topic: &str, json: Value) -> ipam_log::Record {
        let value = Envelope::decode_value(json).expect("a valid envelope").to_bytes();
        ipam_log::Record { topic: topic.to_owned(), partition: 0, offset: 0, key: String::new(), value }
    }

    #[test]
    fn the_follower_matches_a_start_and_its_reservation_to_the_vnic_and_nothing_else() {
        let start = Workload::default().start();
        assert_eq!(vnic_of(&record("ipam.networks", start.json.clone())), Some(start.vnic_id));
        let added = |owner| {
            client::envelope(
                "ipam-bench",
                Event::ReservationAdded(ipam_core::event::ReservationAdded {
                    network_id: start.network_id,
                    subnet_id: SubnetId::from_u128(1),
                    owner,
                    mac: start.mac,
                    ip: "10.1.0.9".parse().expect("an address"),
                    cause: ipam_core::EventId::from_u128(1),
                }),
            )
        };
        let vnic = Owner::Vnic { vnic_id: start.vnic_id, vm_id: VmId::from_u128(1) };
        assert_eq!(vnic_of(&record("ipam.reservations", added(vnic))), Some(start.vnic_id));
        assert_eq!(vnic_of(&record("ipam.reservations", added(Owner::DhcpServer { host_id: HOST }))), None);
        let garbage = ipam_log::Record { value: b"not an envelope".to_vec(), ..record("ipam.networks", start.json) };
        assert_eq!(vnic_of(&garbage), None);
    }
}
