//! The metrics every process of a deployment exposes, in the Prometheus text format (0.0.4):
//! the drivers' pipeline (records processed, processing latency, rounds, owned partitions,
//! rejections by code), the host agents' DHCP servers (state, restarts), the build and the
//! process itself (from `/proc`).
//!
//! They are process-wide statics, so that whatever serves `/metrics` in a process (the API, or the
//! monitor of a service that runs alone, see [`crate::monitor`]) exposes them through this one
//! [`render`] without being handed a registry. Written by hand: a few series do not justify a
//! metrics crate, and the format is a page long.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipam_core::event::DhcpServerState;
use ipam_core::{Envelope, Event, RejectionCode};
use ipam_log::{OutRecord, TopicPartition};

use crate::driver::Applied;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 10] = [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25];

/// The instant the metrics' clock counts from (the first use), so times fit in an atomic.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// One driver's counters.
#[derive(Debug)]
pub struct DriverMetrics {
    /// Set once the process created this driver: only then are its gauges exposed.
    started: AtomicBool,
    processed: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    sum_ns: AtomicU64,
    /// When the driver started, or last finished a round the log accepted ([`epoch`] ns).
    last_round_ns: AtomicU64,
    /// Whether a round has finished since the driver started.
    rounds: AtomicU64,
    /// The next input offset of each partition it owned at its last round.
    positions: Mutex<BTreeMap<TopicPartition, u64>>,
    /// Rejections it wrote, by code.
    rejections: Mutex<BTreeMap<&'static str, u64>>,
}

impl DriverMetrics {
    const fn new() -> DriverMetrics {
        DriverMetrics {
            started: AtomicBool::new(false),
            processed: AtomicU64::new(0),
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            sum_ns: AtomicU64::new(0),
            last_round_ns: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
            positions: Mutex::new(BTreeMap::new()),
            rejections: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records one input record processed in `elapsed`.
    pub fn observe(&self, elapsed: Duration) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The process runs this driver: its gauges are exposed from now on, and the age of its last
    /// round counts from now until it finishes one.
    pub fn started(&self) {
        self.last_round_ns.store(since_epoch_ns(), Ordering::Relaxed);
        self.started.store(true, Ordering::Relaxed);
    }

    /// The driver finished a round the log accepted, owning the partitions of `positions` (each
    /// with its next input offset). Its poll commits every batch whose delay has passed, so
    /// everything the driver stepped up to a batch delay before this moment is committed.
    pub fn round_done(&self, positions: &BTreeMap<TopicPartition, u64>) {
        self.last_round_ns.store(since_epoch_ns(), Ordering::Relaxed);
        self.rounds.fetch_add(1, Ordering::Relaxed);
        let mut held = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        if *held != *positions {
            held.clone_from(positions);
        }
    }

    /// Whether the process runs this driver (see [`DriverMetrics::started`]).
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Whether the driver has finished a round yet.
    pub fn has_run(&self) -> bool {
        self.rounds.load(Ordering::Relaxed) > 0
    }

    /// How long since the driver last finished a round (or started, before its first).
    pub fn last_round_age(&self) -> Duration {
        let last = self.last_round_ns.load(Ordering::Relaxed);
        Duration::from_nanos(since_epoch_ns().saturating_sub(last))
    }

    /// The partitions the driver owned at its last round.
    pub fn owned_partitions(&self) -> u64 {
        self.positions.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    /// The partitions the driver owned at its last round, each with its next input offset.
    pub fn positions(&self) -> BTreeMap<TopicPartition, u64> {
        self.positions.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts the rejections among what the machines answered to one batch.
    pub fn count_rejections(&self, applied: &[Applied]) {
        for output in applied.iter().flat_map(|applied| &applied.outputs) {
            if let Event::RequestRejected(rejected) = output {
                self.rejected(rejected.code);
            }
        }
    }

    /// Counts a rejection written as a record (a request refused before any machine saw it).
    pub fn count_rejection_record(&self, record: &OutRecord) {
        if let Ok(Envelope { event: Event::RequestRejected(rejected), .. }) = Envelope::decode(&record.value) {
            self.rejected(rejected.code);
        }
    }

    fn rejected(&self, code: RejectionCode) {
        *self.rejections.lock().unwrap_or_else(|e| e.into_inner()).entry(code.as_str()).or_default() += 1;
    }
}

pub static ALLOCATOR: DriverMetrics = DriverMetrics::new();
pub static PLACEMENT: DriverMetrics = DriverMetrics::new();

/// The drivers, by name.
pub const DRIVERS: [(&str, &DriverMetrics); 2] = [("allocator", &ALLOCATOR), ("placement", &PLACEMENT)];

/// The driver metrics of `name` (`allocator` or `placement`).
pub fn for_driver(name: &str) -> &'static DriverMetrics {
    if name == "placement" { &PLACEMENT } else { &ALLOCATOR }
}

/// What a host agent last reported about one of its DHCP servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpServerReport {
    pub state: DhcpServerState,
    /// The status's detail (dnsmasq's words when it fails).
    pub detail: String,
    /// Times it reported `restarting`.
    pub restarts: u64,
}

/// The DHCP servers of the host agents in this process, by (host, network).
static DHCP_SERVERS: Mutex<BTreeMap<(String, String), DhcpServerReport>> = Mutex::new(BTreeMap::new());

/// A host agent reports a DHCP server's new state (the same status it appends to the log).
pub fn dhcp_server_status(host: &str, network: &str, state: DhcpServerState, detail: &str) {
    let mut servers = DHCP_SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    let report = servers.entry((host.to_owned(), network.to_owned())).or_insert(DhcpServerReport {
        state,
        detail: String::new(),
        restarts: 0,
    });
    report.state = state;
    detail.clone_into(&mut report.detail);
    if state == DhcpServerState::Restarting {
        report.restarts += 1;
    }
}

/// Every DHCP server reported in this process: ((host, network), report).
pub fn dhcp_servers() -> Vec<((String, String), DhcpServerReport)> {
    let servers = DHCP_SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    servers.iter().map(|(key, report)| (key.clone(), report.clone())).collect()
}

/// The wire name of a DHCP server state.
pub fn dhcp_state_name(state: DhcpServerState) -> &'static str {
    match state {
        DhcpServerState::Starting => "starting",
        DhcpServerState::Running => "running",
        DhcpServerState::Degraded => "degraded",
        DhcpServerState::Restarting => "restarting",
        DhcpServerState::Failed => "failed",
        DhcpServerState::Stopped => "stopped",
    }
}

const DHCP_STATES: [DhcpServerState; 6] = [
    DhcpServerState::Starting,
    DhcpServerState::Running,
    DhcpServerState::Degraded,
    DhcpServerState::Restarting,
    DhcpServerState::Failed,
    DhcpServerState::Stopped,
];

/// What the metrics know of a host agent of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAgentReport {
    /// Its follower has read the log up to where it was when the agent started.
    pub caught_up: bool,
    /// When it started.
    pub started: SystemTime,
    /// When the log last accepted one of its heartbeats.
    pub last_heartbeat: Option<SystemTime>,
}

/// The host agents of this process, by host.
static HOST_AGENTS: Mutex<BTreeMap<String, HostAgentReport>> = Mutex::new(BTreeMap::new());

fn with_host_agent(host: &str, change: impl FnOnce(&mut HostAgentReport)) {
    let mut agents = HOST_AGENTS.lock().unwrap_or_else(|e| e.into_inner());
    let report = agents.entry(host.to_owned()).or_insert_with(|| HostAgentReport {
        caught_up: false,
        started: SystemTime::now(),
        last_heartbeat: None,
    });
    change(report);
}

/// The host agent of `host` starts: not caught up, no heartbeat yet.
pub fn host_agent_started(host: &str) {
    with_host_agent(host, |report| {
        *report = HostAgentReport { caught_up: false, started: SystemTime::now(), last_heartbeat: None };
    });
}

/// The host agent of `host` has read the log up to where it was at its start, and provisions.
pub fn host_agent_caught_up(host: &str) {
    with_host_agent(host, |report| report.caught_up = true);
}

/// The log accepted a heartbeat of the host agent of `host`.
pub fn heartbeat_appended(host: &str) {
    with_host_agent(host, |report| report.last_heartbeat = Some(SystemTime::now()));
}

/// Every host agent of this process: (host, report).
pub fn host_agents() -> Vec<(String, HostAgentReport)> {
    let agents = HOST_AGENTS.lock().unwrap_or_else(|e| e.into_inner());
    agents.iter().map(|(host, report)| (host.clone(), report.clone())).collect()
}

/// What a host agent's conflict probes did (see the host agent's `probe.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProbeCounts {
    /// Probe windows run (one per change that added hosts, probing all of them at once).
    pub probes: u64,
    /// Addresses probed.
    pub addresses: u64,
    /// Wall time spent in probe windows.
    pub seconds: f64,
    /// Addresses another MAC answered for.
    pub conflicts: u64,
}

/// The probe counts of the host agents of this process, by host.
static PROBES: Mutex<BTreeMap<String, ProbeCounts>> = Mutex::new(BTreeMap::new());

/// The host agent of `host` probed `addresses` addresses in `elapsed`, and `conflicts` of them
/// were answered by another MAC.
pub fn probed(host: &str, addresses: usize, conflicts: usize, elapsed: Duration) {
    let mut probes = PROBES.lock().unwrap_or_else(|e| e.into_inner());
    let counts = probes.entry(host.to_owned()).or_default();
    counts.probes += 1;
    counts.addresses += addresses as u64;
    counts.conflicts += conflicts as u64;
    counts.seconds += elapsed.as_secs_f64();
}

/// A probe metric: its name, its help and its value from the counts.
type ProbeFamily = (&'static str, &'static str, fn(&ProbeCounts) -> f64);

fn probe_counts() -> Vec<(String, ProbeCounts)> {
    let probes = PROBES.lock().unwrap_or_else(|e| e.into_inner());
    probes.iter().map(|(host, counts)| (host.clone(), *counts)).collect()
}

fn unix_secs(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64())
}

/// The version and git revision `ipam_build_info` reports.
static BUILD: OnceLock<(String, String)> = OnceLock::new();

/// Sets the version and revision `ipam_build_info` reports (the binary's; once, at start).
pub fn set_build_info(version: &str, revision: &str) {
    let _ = BUILD.set((version.to_owned(), revision.to_owned()));
}

fn build_info() -> (String, String) {
    BUILD.get().cloned().unwrap_or_else(|| {
        (env!("CARGO_PKG_VERSION").to_owned(), option_env!("IPAM_REVISION").unwrap_or("unknown").to_owned())
    })
}

/// A label value with Prometheus' escapes.
pub fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes the `# HELP` and `# TYPE` lines of a metric.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The Prometheus text of every metric this module holds.
pub fn render() -> String {
    let mut out = String::new();
    render_drivers(&mut out);
    render_dhcp(&mut out);
    let (version, revision) = build_info();
    header(&mut out, "ipam_build_info", "gauge", "Always 1; the labels name the build.");
    let _ = writeln!(out, "ipam_build_info{{version=\"{}\",revision=\"{}\"}} 1", escape(&version), escape(&revision));
    crate::process_metrics::render(&mut out);
    out
}

fn render_drivers(out: &mut String) {
    header(out, "ipam_pipeline_events_processed_total", "counter", "Input records a driver of this process processed.");
    for (name, metrics) in DRIVERS {
        let _ = writeln!(
            out,
            "ipam_pipeline_events_processed_total{{driver=\"{name}\"}} {}",
            metrics.processed.load(Ordering::Relaxed)
        );
    }
    header(
        out,
        "ipam_pipeline_processing_seconds",
        "histogram",
        "Time from polling an input record to handing its step to the log.",
    );
    for (name, metrics) in DRIVERS {
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&metrics.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "ipam_pipeline_processing_seconds_bucket{{driver=\"{name}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = metrics.processed.load(Ordering::Relaxed);
        let _ = writeln!(out, "ipam_pipeline_processing_seconds_bucket{{driver=\"{name}\",le=\"+Inf\"}} {count}");
        let sum = metrics.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "ipam_pipeline_processing_seconds_sum{{driver=\"{name}\"}} {sum}");
        let _ = writeln!(out, "ipam_pipeline_processing_seconds_count{{driver=\"{name}\"}} {count}");
    }
    let running: Vec<(&str, &DriverMetrics)> = DRIVERS.into_iter().filter(|(_, m)| m.is_started()).collect();
    header(
        out,
        "ipam_driver_last_commit_age_seconds",
        "gauge",
        "Seconds since a driver last finished a round the log accepted (its poll commits every batch past its \
         delay), or since it started before its first.",
    );
    for (name, metrics) in &running {
        let _ = writeln!(
            out,
            "ipam_driver_last_commit_age_seconds{{driver=\"{name}\"}} {}",
            metrics.last_round_age().as_secs_f64()
        );
    }
    header(out, "ipam_driver_partitions_owned", "gauge", "Input partitions a driver owned at its last round.");
    for (name, metrics) in &running {
        let _ = writeln!(out, "ipam_driver_partitions_owned{{driver=\"{name}\"}} {}", metrics.owned_partitions());
    }
    header(out, "ipam_rejections_total", "counter", "Requests a driver refused, by rejection code.");
    for (name, metrics) in &running {
        let mut rejections = metrics.rejections.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if *name == "allocator" {
            // Present from the start, so that the first exhaustion is an increase an alert sees.
            rejections.entry(RejectionCode::SubnetExhausted.as_str()).or_default();
        }
        for (code, count) in rejections {
            let _ = writeln!(out, "ipam_rejections_total{{driver=\"{name}\",code=\"{code}\"}} {count}");
        }
    }
}

fn render_dhcp(out: &mut String) {
    let servers = dhcp_servers();
    header(
        out,
        "ipam_dhcp_server_state",
        "gauge",
        "1 for the state a host agent last reported for its DHCP server of a network, 0 for the others.",
    );
    for ((host, network), report) in &servers {
        for state in DHCP_STATES {
            let _ = writeln!(
                out,
                "ipam_dhcp_server_state{{host=\"{}\",network=\"{}\",state=\"{}\"}} {}",
                escape(host),
                escape(network),
                dhcp_state_name(state),
                u8::from(state == report.state)
            );
        }
    }
    let agents = host_agents();
    header(out, "ipam_host_agent_caught_up", "gauge", "1 once a host agent has caught up with the log and provisions.");
    for (host, report) in &agents {
        let _ = writeln!(out, "ipam_host_agent_caught_up{{host=\"{}\"}} {}", escape(host), u8::from(report.caught_up));
    }
    header(
        out,
        "ipam_host_heartbeat_timestamp_seconds",
        "gauge",
        "When the log last accepted a host agent's heartbeat (its start until the first), in Unix seconds.",
    );
    for (host, report) in &agents {
        let _ = writeln!(
            out,
            "ipam_host_heartbeat_timestamp_seconds{{host=\"{}\"}} {}",
            escape(host),
            unix_secs(report.last_heartbeat.unwrap_or(report.started))
        );
    }
    let probes = probe_counts();
    let families: [ProbeFamily; 4] = [
        (
            "ipam_host_probes_total",
            "Conflict probe windows a host agent ran (all the addresses one change added).",
            |c| c.probes as f64,
        ),
        ("ipam_host_probed_addresses_total", "Addresses a host agent probed before serving them.", |c| {
            c.addresses as f64
        }),
        ("ipam_host_probe_seconds_total", "Wall time a host agent's probe windows took.", |c| c.seconds),
        (
            "ipam_host_ip_conflicts_total",
            "Probed addresses another MAC answered for (reported as ipam.ip.conflict.v1).",
            |c| c.conflicts as f64,
        ),
    ];
    for (name, help, value) in families {
        header(out, name, "counter", help);
        for (host, counts) in &probes {
            let _ = writeln!(out, "{name}{{host=\"{}\"}} {}", escape(host), value(counts));
        }
    }
    header(out, "ipam_dhcp_server_restarts_total", "counter", "Times a host agent restarted a DHCP server that died.");
    for ((host, network), report) in &servers {
        let _ = writeln!(
            out,
            "ipam_dhcp_server_restarts_total{{host=\"{}\",network=\"{}\"}} {}",
            escape(host),
            escape(network),
            report.restarts
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_agents_probes_are_counted() {
        let host = "probe-metrics-test-host";
        probed(host, 3, 1, Duration::from_millis(200));
        probed(host, 2, 0, Duration::from_millis(300));
        let text = render();
        for line in [
            "ipam_host_probes_total{host=\"probe-metrics-test-host\"} 2",
            "ipam_host_probed_addresses_total{host=\"probe-metrics-test-host\"} 5",
            "ipam_host_probe_seconds_total{host=\"probe-metrics-test-host\"} 0.5",
            "ipam_host_ip_conflicts_total{host=\"probe-metrics-test-host\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }

    #[test]
    fn a_restarting_server_counts_a_restart_and_shows_one_state() {
        dhcp_server_status("h-test", "n-test", DhcpServerState::Running, "");
        dhcp_server_status("h-test", "n-test", DhcpServerState::Restarting, "exited");
        let text = render();
        assert!(text.contains("ipam_dhcp_server_restarts_total{host=\"h-test\",network=\"n-test\"} 1\n"), "{text}");
        assert!(
            text.contains("ipam_dhcp_server_state{host=\"h-test\",network=\"n-test\",state=\"restarting\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ipam_dhcp_server_state{host=\"h-test\",network=\"n-test\",state=\"running\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn the_exposition_names_the_build_and_the_process() {
        let text = render();
        assert!(text.contains("ipam_build_info{version=\""), "{text}");
        for name in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.lines().any(|line| line.starts_with(&format!("{name} "))), "{name} missing:\n{text}");
        }
    }
}
