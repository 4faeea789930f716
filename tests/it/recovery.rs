//! Recovery: the whole system, killed with SIGKILL at random points and restarted, ends with the
//! same state and the same ordered output streams as a run that was never killed (invariants 3
//! and 4).
//!
//! A generated workload (seeded) sets up 6 hosts, 20 networks and 40 subnets, then plays 10,000
//! vNIC lifecycle events with heartbeats and clock ticks interleaved; one host stops heartbeating
//! halfway, so placement moves its DHCP servers. The test process writes the inputs straight into
//! the log (the embedded SQLite file, or the Kafka broker) while the services run in child
//! processes (`ipam up`, or `ipam allocator` and `ipam placement`).
//!
//! Determinism needs one total order per input partition: vNIC events go to `ipam.networks`
//! (written by this process in order), heartbeats and ticks to the single partition of `ipam.hosts`
//! (also written here in order), and the facts the allocator forwards to placement are all settled
//! during setup, one network at a time, before the churn starts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use ipam_core::event::*;
use ipam_core::{Envelope, EventId, HostId, Mac, NetworkId, SubnetId, Timestamp, Topic, VmId, VnicId};
use ipam_log::{EventLog, OutRecord};
use ipam_tests::rng::SplitMix64;

const HOSTS: u64 = 6;
const NETWORKS: u64 = 20;
const VNICS_PER_NETWORK: u64 = 150;
const CHURN_EVENTS: usize = 10_000;
pub(crate) const CHUNK: usize = 100;
const PARTITIONS: u32 = 4;
const HEARTBEAT_TIMEOUT_MS: i64 = 5_000;
const LOST_HOST: u64 = 2;
const T0_MS: i64 = 1_764_000_000_000;

/// The inputs: setup events grouped so that each group is processed before the next is written,
/// then the churn.
pub struct Workload {
    pub(crate) setup: Vec<Vec<Envelope>>,
    pub(crate) churn: Vec<Envelope>,
    /// Records no decoder accepts, mixed into the churn (index in churn, bytes).
    pub(crate) garbage: Vec<(usize, Vec<u8>)>,
}

fn host_id(n: u64) -> HostId {
    HostId::from_u128(0x4000 + u128::from(n))
}

fn network_id(n: u64) -> NetworkId {
    NetworkId::from_u128(0x1000 + u128::from(n))
}

fn subnet_id(network: u64, n: u64) -> SubnetId {
    SubnetId::from_u128(0x2000 + u128::from(network * 2 + n))
}

pub fn workload(seed: u64) -> Workload {
    let mut rng = SplitMix64(seed);
    let mut n: u128 = 0;
    let mut clock_ms = T0_MS;
    let mut envelope = |event: Event, time_ms: i64| {
        n += 1;
        Envelope {
            id: EventId::from_u128((u128::from(seed) << 64) | n),
            source: "recovery-test".to_owned(),
            time: Timestamp::from_unix_ms(time_ms),
            subject: Some(event.key()),
            event,
        }
    };
    let mut setup = Vec::new();
    let mut hosts = Vec::new();
    for h in 0..HOSTS {
        let networks = (0..NETWORKS)
            .filter(|net| (net + h) % 3 != 0 || h == 0)
            .map(|net| HostNetwork { network_id: network_id(net), interface: format!("br{net}").parse().unwrap() })
            .collect();
        hosts.push(envelope(
            Event::HostUpserted(HostUpserted {
                host_id: host_id(h),
                name: format!("host-{h}"),
                status: HostStatus::Up,
                networks,
            }),
            clock_ms,
        ));
    }
    hosts.push(envelope(Event::ClockTicked(ClockTicked { now: Timestamp::from_unix_ms(clock_ms) }), clock_ms));
    setup.push(hosts);
    for net in 0..NETWORKS {
        let mut group = vec![envelope(
            Event::NetworkUpserted(NetworkUpserted {
                network_id: network_id(net),
                name: format!("net-{net}"),
                ipam_enabled: true,
                servers_count: Some(if net % 5 == 0 { 3 } else { 2 }),
            }),
            clock_ms,
        )];
        for s in 0..2 {
            // Network 0 is small, so the churn exhausts it and collects `subnet_exhausted`.
            let (cidr, gateway) = if net == 0 {
                (format!("10.0.{s}.0/28"), format!("10.0.{s}.1"))
            } else {
                (format!("10.{net}.{}.0/23", s * 2), format!("10.{net}.{}.1", s * 2))
            };
            group.push(envelope(
                Event::SubnetAdded(SubnetAdded {
                    network_id: network_id(net),
                    subnet_id: subnet_id(net, s),
                    cidr: cidr.parse().unwrap(),
                    gateway: gateway.parse().unwrap(),
                    dns_servers: vec!["192.0.2.53".parse().unwrap()],
                    ntp_servers: vec![],
                    allocation_pools: None,
                }),
                clock_ms,
            ));
        }
        setup.push(group);
    }

    let mut up = vec![false; (NETWORKS * VNICS_PER_NETWORK) as usize];
    let mut churn = Vec::with_capacity(CHURN_EVENTS + CHURN_EVENTS / 10);
    let mut garbage = Vec::new();
    let mut vnic_events = 0;
    while vnic_events < CHURN_EVENTS {
        if vnic_events % 40 == 0 {
            clock_ms += 1000;
            for h in 0..HOSTS {
                if h != LOST_HOST || vnic_events < CHURN_EVENTS / 2 {
                    churn.push(envelope(
                        Event::HostHeartbeat(HostHeartbeat { host_id: host_id(h), serving: vec![] }),
                        clock_ms,
                    ));
                }
            }
            churn.push(envelope(Event::ClockTicked(ClockTicked { now: Timestamp::from_unix_ms(clock_ms) }), clock_ms));
        }
        if rng.below(400) == 0 {
            garbage.push((churn.len(), b"{\"specversion\":\"1.0\",\"this is\":\"not an event\"".to_vec()));
        }
        let vnic = rng.below(NETWORKS * VNICS_PER_NETWORK);
        let (net, index) = (vnic / VNICS_PER_NETWORK, vnic % VNICS_PER_NETWORK);
        let vnic_id = VnicId::from_u128(0x10_0000 + u128::from(vnic));
        let event = if up[vnic as usize] {
            let down = VnicDown { vnic_id, network_id: network_id(net) };
            match rng.below(3) {
                0 => Event::VnicStopped(down),
                1 => Event::VnicUnplugged(down),
                _ => Event::VnicUnlinked(down),
            }
        } else {
            let subnet = index % 2;
            let requested_ip = (rng.below(20) == 0 && net != 0)
                .then(|| format!("10.{net}.{}.{}", subnet * 2, 2 + rng.below(200)).parse().unwrap());
            let mac = if rng.below(200) == 0 {
                // Another vNIC's MAC: `duplicate_mac` when that one is up.
                Mac::from_octets([0x52, 0x54, 0, net as u8, 0, 0]).unwrap()
            } else {
                Mac::from_octets([0x52, 0x54, 0, net as u8, (index >> 8) as u8, index as u8]).unwrap()
            };
            let vnic_up = VnicUp {
                vnic_id,
                vm_id: VmId::from_u128(0x20_0000 + u128::from(vnic)),
                network_id: network_id(net),
                subnet_id: Some(subnet_id(net, subnet)),
                subnet_ids: Vec::new(),
                mac,
                requested_ip,
            };
            match rng.below(3) {
                0 => Event::VnicStarted(vnic_up),
                1 => Event::VnicPlugged(vnic_up),
                _ => Event::VnicLinked(vnic_up),
            }
        };
        // The generator flips its own view; a refused up leaves the vNIC down in the allocator,
        // and the next event for it is then an up again or a harmless down.
        up[vnic as usize] = !up[vnic as usize];
        churn.push(envelope(event, clock_ms));
        vnic_events += 1;
    }
    Workload { setup, churn, garbage }
}

/// Where the services run and how the test reaches their log.
pub trait Deployment {
    fn log(&self) -> Arc<dyn EventLog>;
    fn topic(&self, topic: Topic) -> String;
    /// Starts the services and waits until they are ready.
    fn start(&mut self);
    /// Kills every service process with SIGKILL.
    fn kill(&mut self);
    /// Stops every service process with SIGTERM and waits for it.
    fn stop(&mut self);
    /// Snapshot files written by the services (for comparing final states).
    fn snapshot_dirs(&self) -> Vec<PathBuf>;
    fn groups(&self) -> (String, String);
}

pub use ipam_tests::ipam_binary;

/// A service process whose stderr is watched for readiness.
pub struct Service {
    child: Child,
    lines: Receiver<String>,
}

impl Service {
    pub fn spawn(args: &[String]) -> Service {
        Service::spawn_program(&ipam_binary().display().to_string(), args)
    }

    /// Any program (such as `ip netns exec NS ipam ...`) whose stderr carries the service's log.
    pub fn spawn_program(program: &str, args: &[String]) -> Service {
        let mut child = Command::new(program)
            .args(args)
            .env("IPAM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = channel();
        let stderr = child.stderr.take().unwrap();
        // Every line also goes to a file, for reading after a failure.
        let log_path = Service::log_path_of(child.id());
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(file) = file.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                }
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Service { child, lines }
    }

    /// `ipam <command>` as one of the split services on the Kafka at `bootstrap`, under topic
    /// prefix `prefix`, with instance `instance` and its data directory in `dir`.
    pub fn spawn_on_kafka(bootstrap: &str, prefix: &str, dir: &Path, instance: &str, command: &[&str]) -> Service {
        let mut args = ipam_tests::kafka_service_args(bootstrap, prefix, dir, instance);
        args.extend(command.iter().map(|arg| (*arg).to_owned()));
        Service::spawn(&args)
    }

    /// Waits for a stderr line containing `text` followed by `http://ADDRESS`; returns the address.
    pub fn address_after(&mut self, text: &str, within: Duration) -> SocketAddr {
        let line = self.wait_for_line(text, within);
        let rest = line.split("http://").nth(1).unwrap_or_else(|| panic!("no address in {line}"));
        let address: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
        address.parse().unwrap_or_else(|e| panic!("`{address}` in {line}: {e}"))
    }

    /// Waits for a stderr line containing `text`; returns how long it took.
    pub fn wait_for(&mut self, text: &str, within: Duration) -> Duration {
        let started = Instant::now();
        self.wait_for_line(text, within);
        started.elapsed()
    }

    /// Waits for a stderr line containing `text`; returns the line.
    pub fn wait_for_line(&mut self, text: &str, within: Duration) -> String {
        let started = Instant::now();
        let mut seen = Vec::new();
        loop {
            let left = within.checked_sub(started.elapsed()).unwrap_or_else(|| {
                panic!(
                    "no `{text}` within {within:?}; last lines:\n{}",
                    seen[seen.len().saturating_sub(20)..].join("\n")
                )
            });
            match self.lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) if line.contains(text) => return line,
                Ok(line) => seen.push(line),
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!("the service exited ({status}) before `{text}`:\n{}", seen.join("\n"));
                    }
                }
            }
        }
    }

    /// How the process ended, if it did.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself; its status and every stderr line it wrote.
    pub fn wait_exit(&mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let started = Instant::now();
        let mut seen = Vec::new();
        loop {
            seen.extend(self.lines.try_iter());
            if let Ok(Some(status)) = self.child.try_wait() {
                // The reader thread sends what is left, then the channel closes.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    seen.push(line);
                }
                return (status, seen.join("\n"));
            }
            assert!(started.elapsed() < within, "still running after {within:?}:\n{}", seen.join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id, for signals.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The file that holds every line the service wrote to stderr.
    pub fn log_path(&self) -> PathBuf {
        Service::log_path_of(self.child.id())
    }

    fn log_path_of(pid: u32) -> PathBuf {
        std::env::temp_dir().join(format!("ipam-service-{pid}.log"))
    }

    pub fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the service did not stop cleanly: {status}");
    }
}

impl Drop for Service {
    /// Stops the process, and removes its log file unless the test is failing (the file is for
    /// reading after a failure; a passing suite left hundreds in the temporary directory).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(self.log_path());
        }
    }
}

/// `ipam up` on the embedded log in a temporary directory.
pub struct Embedded {
    dir: tempfile::TempDir,
    service: Option<Service>,
    log: Option<Arc<dyn EventLog>>,
}

impl Embedded {
    pub fn new() -> Embedded {
        Embedded { dir: tempfile::tempdir().unwrap(), service: None, log: None }
    }

    fn args(&self) -> Vec<String> {
        [
            "--data-dir",
            &self.dir.path().display().to_string(),
            "--partitions",
            &PARTITIONS.to_string(),
            "--tick-interval-ms",
            "0",
            "--heartbeat-timeout-ms",
            &HEARTBEAT_TIMEOUT_MS.to_string(),
            "--snapshot-every-records",
            "1500",
            // Tests run side by side: each API takes a free port.
            "--api-bind",
            "127.0.0.1:0",
            "up",
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Deployment for Embedded {
    fn log(&self) -> Arc<dyn EventLog> {
        Arc::clone(self.log.as_ref().expect("started"))
    }

    fn topic(&self, topic: Topic) -> String {
        topic.name().to_owned()
    }

    fn start(&mut self) {
        let mut service = Service::spawn(&self.args());
        service.wait_for("ipam is ready", Duration::from_secs(120));
        self.service = Some(service);
        if self.log.is_none() {
            let spec = ipam_tests::BackendSpec::Sqlite(self.dir.path().join("log"));
            self.log = Some(spec.open().unwrap());
        }
    }

    fn kill(&mut self) {
        if let Some(mut service) = self.service.take() {
            service.kill();
        }
    }

    fn stop(&mut self) {
        if let Some(mut service) = self.service.take() {
            service.terminate();
        }
    }

    fn snapshot_dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.path().join("snapshots")]
    }

    fn groups(&self) -> (String, String) {
        ("ipam-allocator".to_owned(), "ipam-placement".to_owned())
    }
}

pub(crate) fn publish(
    deployment: &dyn Deployment,
    envelopes: &[Envelope],
    garbage: &[(usize, Vec<u8>)],
    offset: usize,
) {
    let mut records = Vec::with_capacity(envelopes.len());
    for (i, envelope) in envelopes.iter().enumerate() {
        for (_, bytes) in garbage.iter().filter(|(at, _)| *at == offset + i) {
            records.push(OutRecord {
                topic: deployment.topic(Topic::Networks),
                key: "garbage".to_owned(),
                value: bytes.clone(),
            });
        }
        records.push(OutRecord {
            topic: deployment.topic(envelope.event.topic()),
            key: envelope.event.key(),
            value: envelope.to_bytes(),
        });
    }
    deployment.log().append(&records).unwrap();
}

/// Waits until both groups have consumed every input record. It gives up only when a group makes
/// no progress for [`STALL_LIMIT`], so a loaded machine that is slow but moving still passes.
pub(crate) fn wait_processed(deployment: &dyn Deployment) {
    const STALL_LIMIT: Duration = Duration::from_secs(180);
    let log = deployment.log();
    let (allocator, placement) = deployment.groups();
    let inputs: Vec<(String, String, u32)> = (0..PARTITIONS)
        .map(|p| (allocator.clone(), deployment.topic(Topic::Networks), p))
        .chain([(placement, deployment.topic(Topic::Hosts), 0)])
        .collect();
    for (group, topic, partition) in inputs {
        // The offset after the last record (a Kafka end offset may also count a commit marker).
        let end = log.end_offset(&topic, partition).unwrap();
        let last = last_offset(&*log, &topic, partition, end);
        let (mut seen, mut progressed) = (None, Instant::now());
        loop {
            // A failed query (a broker busy with a takeover) counts as no progress.
            let committed = log.committed_position(&group, &topic, partition).ok().map(|p| p.unwrap_or(0));
            if let Some(committed) = committed {
                if last.is_none_or(|last| committed > last) {
                    break;
                }
                if seen != Some(committed) {
                    (seen, progressed) = (Some(committed), Instant::now());
                }
            }
            assert!(
                progressed.elapsed() < STALL_LIMIT,
                "{group} stuck at {seen:?} of {topic}/{partition} (last {last:?}) for {STALL_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn last_offset(log: &dyn EventLog, topic: &str, partition: u32, end: u64) -> Option<u64> {
    let mut from = end.saturating_sub(3);
    let mut last = None;
    loop {
        let records = log.read(topic, partition, from, 100, Duration::ZERO).unwrap();
        let Some(record) = records.last() else { break };
        last = Some(record.offset);
        from = record.offset + 1;
    }
    if last.is_none() && end > 0 {
        // Markers only at the end: look further back.
        return log.read(topic, partition, 0, usize::MAX, Duration::ZERO).unwrap().last().map(|r| r.offset);
    }
    last
}

/// Every record of every topic, partition by partition, as (topic, partition, value).
pub(crate) fn outputs(deployment: &dyn Deployment, prefix: &str) -> BTreeMap<(String, u32), Vec<String>> {
    let log = deployment.log();
    let mut all = BTreeMap::new();
    for topic in [Topic::Reservations, Topic::DhcpServers, Topic::DeadLetter, Topic::Hosts] {
        let name = deployment.topic(topic);
        for partition in 0..log.partition_count(&name).unwrap() {
            let end = log.end_offset(&name, partition).unwrap();
            let mut from = 0;
            let mut values = Vec::new();
            while from < end {
                let records = log.read(&name, partition, from, 5000, Duration::ZERO).unwrap();
                let Some(last) = records.last() else { break };
                from = last.offset + 1;
                values.extend(records.iter().map(|r| {
                    let text = String::from_utf8_lossy(&r.value).into_owned();
                    if prefix.is_empty() { text } else { text.replace(prefix, "") }
                }));
            }
            all.insert((topic.name().to_owned(), partition), values);
        }
    }
    all
}

fn snapshots(deployment: &dyn Deployment) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    for dir in deployment.snapshot_dirs() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            // The API's read model (MessagePack) is a view of the decisions, not a decided state;
            // the API's own tests check it.
            if name == "api-read-model" {
                continue;
            }
            // Names carry the topic name, which may be prefixed; keep the kind and partition.
            let key = name.split('-').next().unwrap().to_owned() + "-" + name.rsplit('-').next().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            // The state, without the header line: offsets differ between backends (Kafka's skip).
            let state = bytes.iter().position(|byte| *byte == b'\n').map_or(&bytes[..], |at| &bytes[at + 1..]);
            // The allocator's is MessagePack, shown as JSON for a readable difference.
            let state = if key.starts_with("allocator") {
                ipam_core::allocator::snapshot_as_json(state).unwrap().to_string()
            } else {
                String::from_utf8(state.to_vec()).unwrap()
            };
            all.insert(key, state);
        }
    }
    all
}

/// Plays the workload; kills and restarts the services after the chunks listed in `kills`.
pub fn play(
    deployment: &mut dyn Deployment,
    work: &Workload,
    kills: &[usize],
    mut on_kill: impl FnMut(&mut dyn Deployment),
) {
    deployment.start();
    for group in &work.setup {
        publish(deployment, group, &[], usize::MAX);
        wait_processed(deployment);
    }
    let mut rng = SplitMix64(0x5eed);
    for (chunk, envelopes) in work.churn.chunks(CHUNK).enumerate() {
        publish(deployment, envelopes, &work.garbage, chunk * CHUNK);
        if kills.contains(&chunk) {
            std::thread::sleep(Duration::from_millis(rng.below(200)));
            deployment.kill();
            on_kill(deployment);
            deployment.start();
        }
    }
    wait_processed(deployment);
    deployment.stop();
}

pub(crate) fn assert_same(
    reference: &BTreeMap<(String, u32), Vec<String>>,
    run: &BTreeMap<(String, u32), Vec<String>>,
) {
    assert_eq!(reference.keys().collect::<Vec<_>>(), run.keys().collect::<Vec<_>>());
    for (key, expected) in reference {
        let actual = &run[key];
        if let Some(at) = expected.iter().zip(actual).position(|(a, b)| a != b) {
            panic!("{key:?} differs at record {at}:\nexpected {}\nactual   {}", expected[at], actual[at]);
        }
        assert_eq!(expected.len(), actual.len(), "{key:?} has {} records instead of {}", actual.len(), expected.len());
    }
}

fn assert_same_states(expected: &BTreeMap<String, String>, actual: &BTreeMap<String, String>) {
    assert_eq!(expected.keys().collect::<Vec<_>>(), actual.keys().collect::<Vec<_>>(), "snapshot files differ");
    for (name, state) in expected {
        let other = &actual[name];
        if let Some(at) = state.bytes().zip(other.bytes()).position(|(a, b)| a != b) {
            let context = |s: &str| s.get(at.saturating_sub(80)..(at + 80).min(s.len())).unwrap_or("").to_owned();
            panic!(
                "final state {name} differs at byte {at}:\nexpected …{}…\nactual   …{}…",
                context(state),
                context(other)
            );
        }
        assert_eq!(state.len(), other.len(), "final state {name} differs in length");
    }
}

/// Every output record, by (topic, partition).
pub(crate) type Outputs = BTreeMap<(String, u32), Vec<String>>;
/// Final states, by snapshot name.
pub(crate) type States = BTreeMap<String, String>;

/// The reference run (never killed) is shared by the tests: its outputs and final snapshots.
pub(crate) fn reference() -> &'static (Outputs, States) {
    static REFERENCE: std::sync::OnceLock<(Outputs, States)> = std::sync::OnceLock::new();
    REFERENCE.get_or_init(|| {
        let work = workload(7);
        let mut embedded = Embedded::new();
        play(&mut embedded, &work, &[], |_| {});
        let outputs = outputs(&embedded, "");
        let text: String = outputs.values().flatten().map(String::as_str).collect();
        assert!(text.contains("ipam.reservation.added.v1") && text.contains("ipam.reservation.removed.v1"));
        assert!(text.contains("subnet_exhausted") && text.contains("invalid_mac") || text.contains("duplicate_mac"));
        assert!(text.contains("heartbeat_lost"), "the lost host's servers moved");
        assert!(!outputs[&("ipam.dead-letter".to_owned(), 0)].is_empty(), "garbage was dead-lettered");
        (outputs, snapshots(&embedded))
    })
}

fn kill_points(seed: u64, count: usize) -> Vec<usize> {
    let mut rng = SplitMix64(seed);
    let chunks = (CHURN_EVENTS / CHUNK) as u64;
    let mut points: Vec<usize> = Vec::new();
    while points.len() < count {
        let point = rng.below(chunks - 1) as usize;
        if !points.contains(&point) {
            points.push(point);
        }
    }
    points.sort();
    points
}

#[test]
fn ipam_up_killed_at_ten_random_points_ends_like_a_run_never_killed() {
    let (expected_outputs, expected_snapshots) = reference();
    let work = workload(7);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let kills = kill_points(seed, 10);
    println!("kill points (chunks of {CHUNK} events): {kills:?} (seed {seed})");
    let mut embedded = Embedded::new();
    play(&mut embedded, &work, &kills, |_| {});
    assert_same(expected_outputs, &outputs(&embedded, ""));
    assert_same_states(expected_snapshots, &snapshots(&embedded));
}

/// `ipam allocator` instances and `ipam placement` against the Kafka broker, with their own topic
/// prefix and data directories.
pub struct Kafka {
    prefix: String,
    bootstrap: String,
    dir: tempfile::TempDir,
    allocators: Vec<(String, Option<Service>)>,
    placement: Option<Service>,
    log: Arc<dyn EventLog>,
    /// Global flags given to every service before its command.
    extra_args: Vec<String>,
}

impl Kafka {
    pub fn new(allocators: usize) -> Kafka {
        Kafka::on_broker(&ipam_tests::kafka_bootstrap(), allocators, &[])
    }

    /// On the broker at `bootstrap`, every service started with `extra_args` as well.
    pub fn on_broker(bootstrap: &str, allocators: usize, extra_args: &[String]) -> Kafka {
        Kafka {
            prefix: ipam_tests::unique_prefix("recovery"),
            log: ipam_tests::BackendSpec::Kafka(bootstrap.to_owned()).open().unwrap(),
            bootstrap: bootstrap.to_owned(),
            dir: tempfile::tempdir().unwrap(),
            allocators: (0..allocators).map(|i| (format!("allocator-{i}"), None)).collect(),
            placement: None,
            extra_args: extra_args.to_vec(),
        }
    }

    /// The prefix of this deployment's topic and group names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Each running service with its name.
    pub fn services(&self) -> Vec<(String, &Service)> {
        let allocators = self.allocators.iter().filter_map(|(name, service)| Some((name.clone(), service.as_ref()?)));
        allocators.chain(self.placement.as_ref().map(|service| ("placement".to_owned(), service))).collect()
    }

    /// Each running service's name and log file, to name in a failure's message.
    pub fn service_logs(&self) -> Vec<(String, PathBuf)> {
        self.services().into_iter().map(|(name, service)| (name, service.log_path())).collect()
    }

    /// The services that exited (name and status); none should while the test runs.
    pub fn exited(&mut self) -> Vec<String> {
        let mut exited = Vec::new();
        for (name, service) in &mut self.allocators {
            if let Some(status) = service.as_mut().and_then(Service::exited) {
                exited.push(format!("{name}: {status}"));
            }
        }
        if let Some(status) = self.placement.as_mut().and_then(Service::exited) {
            exited.push(format!("placement: {status}"));
        }
        exited
    }

    fn spawn(&self, instance: &str, command: &str) -> Service {
        let data_dir = self.dir.path().join(instance);
        let mut args: Vec<String> = [
            "--kafka",
            &self.bootstrap,
            "--kafka-session-timeout-ms",
            "6000",
            "--topic-prefix",
            &self.prefix,
            "--instance",
            instance,
            "--data-dir",
            &data_dir.display().to_string(),
            "--partitions",
            &PARTITIONS.to_string(),
            "--tick-interval-ms",
            "0",
            "--heartbeat-timeout-ms",
            &HEARTBEAT_TIMEOUT_MS.to_string(),
            "--snapshot-every-records",
            "1500",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(self.extra_args.iter().cloned());
        args.push(command.to_owned());
        let mut service = Service::spawn(&args);
        service.wait_for("ipam is ready", Duration::from_secs(120));
        service
    }

    /// Kills one allocator for good; the others must take over its partitions.
    pub fn kill_allocator(&mut self, index: usize) {
        if let Some(mut service) = self.allocators[index].1.take() {
            service.kill();
        }
        self.allocators.remove(index);
    }
}

impl Deployment for Kafka {
    fn log(&self) -> Arc<dyn EventLog> {
        Arc::clone(&self.log)
    }

    fn topic(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.name())
    }

    fn start(&mut self) {
        let instances: Vec<String> = self.allocators.iter().map(|(name, _)| name.clone()).collect();
        for (index, instance) in instances.iter().enumerate() {
            let service = self.spawn(instance, "allocator");
            self.allocators[index].1 = Some(service);
        }
        self.placement = Some(self.spawn("placement", "placement"));
    }

    fn kill(&mut self) {
        for (_, service) in &mut self.allocators {
            if let Some(mut service) = service.take() {
                service.kill();
            }
        }
        if let Some(mut service) = self.placement.take() {
            service.kill();
        }
    }

    fn stop(&mut self) {
        for (_, service) in &mut self.allocators {
            if let Some(mut service) = service.take() {
                service.terminate();
            }
        }
        if let Some(mut service) = self.placement.take() {
            service.terminate();
        }
    }

    fn snapshot_dirs(&self) -> Vec<PathBuf> {
        self.allocators
            .iter()
            .map(|(name, _)| self.dir.path().join(name).join("snapshots"))
            .chain([self.dir.path().join("placement").join("snapshots")])
            .collect()
    }

    fn groups(&self) -> (String, String) {
        (format!("{}ipam-allocator", self.prefix), format!("{}ipam-placement", self.prefix))
    }
}

#[test]
fn kafka_services_killed_at_ten_random_points_end_like_a_run_never_killed() {
    let (expected_outputs, expected_snapshots) = reference();
    let work = workload(7);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let kills = kill_points(seed, 10);
    println!("kill points (chunks of {CHUNK} events): {kills:?} (seed {seed})");
    let mut kafka = Kafka::new(1);
    play(&mut kafka, &work, &kills, |_| {});
    let prefix = kafka.prefix.clone();
    assert_same(expected_outputs, &outputs(&kafka, &prefix));
    assert_same_states(expected_snapshots, &snapshots(&kafka));
}

#[test]
fn a_second_allocator_takes_over_when_the_first_is_killed_mid_load() {
    let (expected_outputs, _) = reference();
    let work = workload(7);
    let mut kafka = Kafka::new(2);
    kafka.start();
    for group in &work.setup {
        publish(&kafka, group, &[], usize::MAX);
        wait_processed(&kafka);
    }
    let chunks: Vec<&[Envelope]> = work.churn.chunks(CHUNK).collect();
    for (chunk, envelopes) in chunks.iter().enumerate() {
        publish(&kafka, envelopes, &work.garbage, chunk * CHUNK);
        if chunk == chunks.len() / 2 {
            kafka.kill_allocator(0);
        }
    }
    wait_processed(&kafka);
    kafka.stop();
    let prefix = kafka.prefix.clone();
    assert_same(expected_outputs, &outputs(&kafka, &prefix));
}
