//! The agent end to end on the in-memory log: events appended by hand stand in for the allocator
//! and placement, a `FilesBackend` in a temporary directory stands in for dnsmasq, and every wait
//! polls against a deadline.

// Helpers outside `#[test]` functions are test code too (as in the workspace's `tests/it`).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ipam_core::event::{
    AssignReason, DhcpServerAssigned, DhcpServerState, DhcpServerUnassigned, Owner, ReleaseReason, ReservationAdded,
    ReservationRemoved, ServedNetwork, SubnetActivated, UnassignReason,
};
use ipam_core::{Envelope, Event, EventId, HostId, Mac, NetworkId, SubnetId, Timestamp, Topic, VmId, VnicId};
use ipam_host_agent::{
    BackendError, DhcpBackend, DnsmasqBackend, DnsmasqOptions, FilesBackend, HostAgentConfig, LockError, lock_state_dir,
};
use ipam_log::{EventLog, MemoryLog, OutRecord};
use ipam_runtime::Topics;

const HOST: HostId = HostId::from_u128(0xa1);
const OTHER_HOST: HostId = HostId::from_u128(0xa2);
const NETWORK: NetworkId = NetworkId::from_u128(0xb1);
const SUBNET: SubnetId = SubnetId::from_u128(0xc1);
const DEADLINE: Duration = Duration::from_secs(10);

fn port_mac() -> Mac {
    "52:54:00:aa:bb:cc".parse().unwrap()
}

/// The topics of the tests' deployment: no prefix, four partitions.
fn topics() -> Topics {
    Topics::new("", 4)
}

fn memory_log() -> Arc<MemoryLog> {
    let log = Arc::new(MemoryLog::new());
    log.create_topics(&topics().specs()).unwrap();
    log
}

/// Appends `event` as placement or the allocator would: on its topic, keyed by its key (the
/// network id here, so it lands on `partition::for_key(network id, 4)`).
fn append(log: &dyn EventLog, event: Event) {
    append_to(log, &topics(), event);
}

/// [`append`] to the topics `topics` names.
fn append_to(log: &dyn EventLog, topics: &Topics, event: Event) {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = EventId::from_u128(u128::from(NEXT_ID.fetch_add(1, Ordering::Relaxed)));
    let envelope = Envelope { id, source: "test".to_owned(), time: Timestamp::from_unix_ms(0), subject: None, event };
    let record =
        OutRecord { topic: topics.name(envelope.event.topic()), key: envelope.event.key(), value: envelope.to_bytes() };
    assert_eq!(record.key, NETWORK.to_string());
    log.append(&[record]).unwrap();
}

/// Every event of `topic`, partition by partition.
fn events(log: &dyn EventLog, topic: Topic) -> Vec<Envelope> {
    events_in(log, &topics(), topic)
}

/// [`events`] of the topic `topics` names; none when it does not exist.
fn events_in(log: &dyn EventLog, topics: &Topics, topic: Topic) -> Vec<Envelope> {
    let name = topics.name(topic);
    let Ok(partitions) = log.partition_count(&name) else { return Vec::new() };
    (0..partitions)
        .flat_map(|partition| log.read(&name, partition, 0, usize::MAX, Duration::ZERO).unwrap())
        .map(|record| Envelope::decode(&record.value).unwrap())
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn activated() -> Event {
    Event::SubnetActivated(SubnetActivated {
        network_id: NETWORK,
        subnet_id: SUBNET,
        cidr: "10.1.0.0/24".parse().unwrap(),
        gateway: "10.1.0.1".parse().unwrap(),
        dns_servers: vec!["10.1.0.53".parse().unwrap()],
        ntp_servers: Vec::new(),
        allocation_pools: Vec::new(),
        cause: EventId::from_u128(1),
    })
}

fn assigned(host_id: HostId, epoch: u64) -> Event {
    Event::DhcpServerAssigned(DhcpServerAssigned {
        network_id: NETWORK,
        host_id,
        interface: "br0".parse().unwrap(),
        epoch,
        reason: AssignReason::Placed,
        cause: EventId::from_u128(1),
    })
}

fn unassigned(epoch: u64) -> Event {
    Event::DhcpServerUnassigned(DhcpServerUnassigned {
        network_id: NETWORK,
        host_id: HOST,
        epoch,
        reason: UnassignReason::HostMaintenance,
        cause: EventId::from_u128(1),
    })
}

/// vNIC `n`'s reservation: MAC `02:00:00:00:00:nn`, IP `10.1.0.<10 + n>`.
fn vnic_reservation(n: u8) -> (Owner, Mac, std::net::IpAddr) {
    let owner = Owner::Vnic { vnic_id: VnicId::from_u128(u128::from(n)), vm_id: VmId::from_u128(u128::from(n)) };
    let mac = Mac::from_octets([0x02, 0, 0, 0, 0, n]).unwrap();
    (owner, mac, format!("10.1.0.{}", 10 + n).parse().unwrap())
}

fn reservation_added(n: u8) -> Event {
    let (owner, mac, ip) = vnic_reservation(n);
    Event::ReservationAdded(ReservationAdded {
        network_id: NETWORK,
        subnet_id: SUBNET,
        owner,
        mac,
        ip,
        cause: EventId::from_u128(1),
    })
}

fn reservation_removed(n: u8) -> Event {
    let (owner, mac, ip) = vnic_reservation(n);
    Event::ReservationRemoved(ReservationRemoved {
        network_id: NETWORK,
        subnet_id: SUBNET,
        owner,
        mac,
        ip,
        reason: ReleaseReason::VnicDown,
        cause: EventId::from_u128(1),
    })
}

/// The agent on its own thread.
struct Agent {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    fn start(log: Arc<dyn EventLog>, dir: &Path, backend: ipam_host_agent::BackendFactory) -> Agent {
        Agent::start_on(log, topics(), dir, backend)
    }

    /// An agent of a deployment whose topics `topics` names, on the state directory `dir`.
    fn start_on(log: Arc<dyn EventLog>, topics: Topics, dir: &Path, backend: ipam_host_agent::BackendFactory) -> Agent {
        let lock = lock_state_dir(dir).unwrap();
        let mut config = HostAgentConfig::new(HOST);
        config.heartbeat_interval_ms = 50;
        config.port_mac = Some(port_mac());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let stop = Arc::clone(&stop);
            move || ipam_host_agent::run(log, topics, config, lock, backend, stop)
        });
        Agent { stop, thread }
    }

    fn with_files(log: Arc<dyn EventLog>, dir: &Path) -> Agent {
        let files = dir.to_owned();
        Agent::start(log, dir, Box::new(move |_| Box::new(FilesBackend::new(&files))))
    }

    /// Sets `stop` and checks that the agent returns `Ok` within a second.
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.thread.is_finished() {
            assert!(Instant::now() < deadline, "the agent did not stop within a second");
            thread::sleep(Duration::from_millis(5));
        }
        if let Err(error) = self.thread.join().expect("the agent thread does not panic") {
            panic!("the agent failed: {error:#}");
        }
    }
}

fn file_text(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

fn statuses(log: &dyn EventLog) -> Vec<(u64, DhcpServerState, String)> {
    events(log, Topic::Hosts)
        .into_iter()
        .filter_map(|envelope| match envelope.event {
            Event::DhcpServerStatus(status) => {
                assert_eq!(status.host_id, HOST);
                assert_eq!(status.network_id, NETWORK);
                Some((status.epoch, status.state, status.detail))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn agent_serves_its_network_from_assignment_to_unassignment() {
    let log = memory_log();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join(format!("{NETWORK}.conf"));
    let agent = Agent::with_files(log.clone(), dir.path());

    // Before the assignment: the subnet and one reservation, and another host's assignment.
    append(&*log, activated());
    append(&*log, reservation_added(1));
    append(&*log, assigned(OTHER_HOST, 1));
    wait_until("the agent heartbeats", || events(&*log, Topic::Hosts).len() >= 2);
    assert!(!conf.exists(), "nothing is served before the assignment");

    // The reservation made before the assignment is in the file as soon as the assignment arrives.
    append(&*log, assigned(HOST, 1));
    wait_until("the file lists the first reservation", || {
        file_text(&conf).contains("dhcp-host=02:00:00:00:00:01,10.1.0.11\n")
    });
    let text = file_text(&conf);
    assert!(text.contains("interface=br0\n"), "{text}");
    assert!(text.contains("dhcp-option=tag:"), "{text}");

    append(&*log, reservation_added(2));
    wait_until("the file lists the second reservation", || {
        file_text(&conf).contains("dhcp-host=02:00:00:00:00:02,10.1.0.12\n")
    });

    // The server asked for its own address, with the configured MAC, once.
    wait_until("the port request is appended", || !events(&*log, Topic::Networks).is_empty());
    let requests = events(&*log, Topic::Networks);
    let [request] = &requests[..] else { panic!("one port request, not {requests:#?}") };
    let Event::DhcpPortRequested(port) = &request.event else { panic!("{request:?}") };
    assert_eq!((port.network_id, port.subnet_id, port.host_id, port.mac), (NETWORK, SUBNET, HOST, port_mac()));
    assert_eq!(request.source, format!("ipam/host-agent/{HOST}"));
    assert_eq!(request.subject.as_deref(), Some(NETWORK.to_string().as_str()));

    // Heartbeats list what the host serves.
    let serving = vec![ServedNetwork { network_id: NETWORK, epoch: 1 }];
    wait_until("a heartbeat lists the network", || {
        events(&*log, Topic::Hosts).iter().any(
            |envelope| matches!(&envelope.event, Event::HostHeartbeat(h) if h.host_id == HOST && h.serving == serving),
        )
    });

    append(&*log, reservation_removed(2));
    wait_until("the removed reservation leaves the file", || {
        let text = file_text(&conf);
        text.contains("02:00:00:00:00:01") && !text.contains("02:00:00:00:00:02")
    });

    append(&*log, unassigned(1));
    wait_until("the file is removed", || !conf.exists());
    wait_until("the stop is reported", || statuses(&*log).iter().any(|s| s.1 == DhcpServerState::Stopped));
    let states = statuses(&*log);
    assert!(states.iter().all(|(epoch, _, _)| *epoch == 1), "{states:?}");
    assert!(states.iter().any(|(_, state, _)| *state == DhcpServerState::Running), "{states:?}");
    wait_until("heartbeats list nothing any more", || {
        events(&*log, Topic::Hosts)
            .iter()
            .rev()
            .find_map(|envelope| match &envelope.event {
                Event::HostHeartbeat(h) => Some(h.serving.is_empty()),
                _ => None,
            })
            .unwrap_or(false)
    });
    // Still one request: nothing was sent twice.
    assert_eq!(events(&*log, Topic::Networks).len(), 1);

    agent.stop();
}

/// A server the allocator refused an address of its own (a /29 whose addresses vNICs hold, say)
/// reports that, not `running`, until the address is granted.
#[test]
fn a_server_refused_its_own_address_reports_so_until_it_gets_one() {
    let log = memory_log();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::with_files(log.clone(), dir.path());
    append(&*log, activated());
    append(&*log, assigned(HOST, 1));
    wait_until("the server runs", || statuses(&*log).iter().any(|s| s.1 == DhcpServerState::Running));
    append(
        &*log,
        Event::RequestRejected(ipam_core::event::RequestRejected {
            network_id: NETWORK,
            request_type: ipam_core::event::DHCP_PORT_REQUESTED_TYPE.to_owned(),
            code: ipam_core::RejectionCode::SubnetExhausted,
            message: "subnet 10.1.0.0/24 has no free address".to_owned(),
            cause: EventId::from_u128(2),
            vnic_id: None,
            mac: Some(port_mac()),
            subnet_id: Some(SUBNET),
            host_id: Some(HOST),
        }),
    );
    wait_until("the server reports it has no address", || {
        statuses(&*log).iter().any(|(_, state, detail)| {
            *state == DhcpServerState::Degraded
                && detail.contains(
                    "no address of its own in 10.1.0.0/24 (subnet_exhausted: subnet 10.1.0.0/24 has no free address)",
                )
        })
    });
    append(
        &*log,
        Event::ReservationAdded(ReservationAdded {
            network_id: NETWORK,
            subnet_id: SUBNET,
            owner: Owner::DhcpServer { host_id: HOST },
            mac: port_mac(),
            ip: "10.1.0.2".parse().unwrap(),
            cause: EventId::from_u128(3),
        }),
    );
    wait_until("the server runs again once it has its address", || {
        statuses(&*log).last().is_some_and(|s| s.1 == DhcpServerState::Running)
    });
    agent.stop();
}

#[test]
fn agent_waits_for_topics_created_after_it_started() {
    let log = Arc::new(MemoryLog::new());
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join(format!("{NETWORK}.conf"));
    let agent = Agent::with_files(log.clone(), dir.path());
    thread::sleep(Duration::from_millis(300)); // Let the agent find no topic for a while.

    log.create_topics(&topics().specs()).unwrap();
    append(&*log, activated());
    append(&*log, reservation_added(1));
    append(&*log, assigned(HOST, 3));
    wait_until("the file lists the reservation", || file_text(&conf).contains("dhcp-host=02:00:00:00:00:01,10.1.0.11"));
    wait_until("the port request is appended", || !events(&*log, Topic::Networks).is_empty());
    agent.stop();
}

#[test]
fn a_restarted_agent_keeps_the_server_repeats_its_port_request_and_sweeps_leftovers() {
    let log = memory_log();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join(format!("{NETWORK}.conf"));
    append(&*log, activated());
    append(&*log, reservation_added(1));
    append(&*log, assigned(HOST, 1));

    let agent = Agent::with_files(log.clone(), dir.path());
    wait_until("the file is written", || conf.exists());
    wait_until("the port request is appended", || !events(&*log, Topic::Networks).is_empty());
    agent.stop();
    // Stopping the agent leaves the server's configuration in place.
    let written = file_text(&conf);
    assert!(written.contains("dhcp-host=02:00:00:00:00:01,10.1.0.11"), "{written}");

    // No allocator answered, so the new agent asks again: the same request, under the same id, so
    // the allocator and any consumer see a repeat.
    let agent = Agent::with_files(log.clone(), dir.path());
    wait_until("the port request is repeated", || events(&*log, Topic::Networks).len() >= 2);
    agent.stop();
    let requests = events(&*log, Topic::Networks);
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0].id, requests[1].id);
    assert_eq!(requests[0].event, requests[1].event);
    assert_eq!(file_text(&conf), written);

    // Unassigned while no agent ran: the next agent removes what the last one left behind.
    append(&*log, unassigned(1));
    let agent = Agent::with_files(log.clone(), dir.path());
    wait_until("the leftover file is removed", || !conf.exists());
    agent.stop();
}

/// A backend whose applies fail while `broken` is set, and which records what it was asked.
#[derive(Debug, Clone, Default)]
struct Flaky {
    broken: Arc<AtomicBool>,
    applied: Arc<Mutex<Vec<usize>>>,
}

impl DhcpBackend for Flaky {
    fn apply(
        &mut self,
        config: &ipam_core::dhcp_plan::NetworkDhcpConfig,
        _: ipam_host_agent::ConfigChange<'_>,
    ) -> Result<(), BackendError> {
        if self.broken.load(Ordering::SeqCst) {
            let source = std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full");
            return Err(BackendError::Io { action: "cannot write", path: "/srv/dhcp/n.conf".into(), source });
        }
        self.applied.lock().unwrap().push(config.subnets.iter().map(|s| s.hosts.len()).sum());
        Ok(())
    }

    fn stop(&mut self, _: NetworkId) -> Result<(), BackendError> {
        Ok(())
    }
}

#[test]
fn a_failing_backend_is_reported_and_retried_until_it_recovers() {
    let log = memory_log();
    let flaky = Flaky::default();
    flaky.broken.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(log.clone(), dir.path(), {
        let flaky = flaky.clone();
        Box::new(move |_| Box::new(flaky.clone()))
    });
    append(&*log, activated());
    append(&*log, reservation_added(1));
    append(&*log, assigned(HOST, 1));
    wait_until("the failure is reported", || statuses(&*log).iter().any(|s| s.1 == DhcpServerState::Failed));
    let failed = statuses(&*log);
    assert_eq!(failed, [(1, DhcpServerState::Failed, "cannot write `/srv/dhcp/n.conf`: disk full".to_owned())]);

    flaky.broken.store(false, Ordering::SeqCst);
    wait_until("a retry succeeds", || statuses(&*log).iter().any(|s| s.1 == DhcpServerState::Running));
    assert_eq!(*flaky.applied.lock().unwrap(), [1]);
    // The same failure was reported once, however often it was retried.
    assert_eq!(statuses(&*log).iter().filter(|s| s.1 == DhcpServerState::Failed).count(), 1);
    agent.stop();
}

#[test]
fn an_agent_with_a_topic_prefix_reads_and_writes_only_the_prefixed_topics() {
    // Two deployments share one log: the unprefixed one and "blue.".
    let log = memory_log();
    let blue = Topics::new("blue.", 4);
    log.create_topics(&blue.specs()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join(format!("{NETWORK}.conf"));
    let agent = {
        let files = dir.path().to_owned();
        Agent::start_on(log.clone(), blue.clone(), dir.path(), Box::new(move |_| Box::new(FilesBackend::new(&files))))
    };

    // The unprefixed deployment assigns the network to this host too: the blue agent must not see it.
    append(&*log, activated());
    append(&*log, reservation_added(2));
    append(&*log, assigned(HOST, 1));
    append_to(&*log, &blue, activated());
    append_to(&*log, &blue, reservation_added(1));
    append_to(&*log, &blue, assigned(HOST, 7));

    wait_until("the blue reservation is served", || {
        file_text(&conf).contains("dhcp-host=02:00:00:00:00:01,10.1.0.11\n")
    });
    wait_until("the port request is appended to blue.ipam.networks", || {
        !events_in(&*log, &blue, Topic::Networks).is_empty()
    });
    wait_until("a heartbeat on blue.ipam.hosts lists the network", || {
        events_in(&*log, &blue, Topic::Hosts).iter().any(|envelope| {
            matches!(&envelope.event, Event::HostHeartbeat(h) if h.serving == [ServedNetwork { network_id: NETWORK, epoch: 7 }])
        })
    });
    wait_until("the running status is on blue.ipam.hosts", || {
        events_in(&*log, &blue, Topic::Hosts).iter().any(|envelope| {
            matches!(&envelope.event, Event::DhcpServerStatus(s) if s.state == DhcpServerState::Running && s.epoch == 7)
        })
    });
    agent.stop();

    assert!(!file_text(&conf).contains("02:00:00:00:00:02"), "the unprefixed reservation is not served");
    assert!(events(&*log, Topic::Hosts).is_empty(), "nothing written to the unprefixed ipam.hosts");
    assert!(events(&*log, Topic::Networks).is_empty(), "nothing written to the unprefixed ipam.networks");
}

#[test]
fn a_second_agent_on_the_same_directory_is_refused_and_the_first_serves_on() {
    let log = memory_log();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join(format!("{NETWORK}.conf"));
    append(&*log, activated());
    append(&*log, reservation_added(1));
    append(&*log, assigned(HOST, 1));
    let first = Agent::with_files(log.clone(), dir.path());
    wait_until("the first agent writes the file", || conf.exists());

    // The second agent is refused before it touches anything, with the directory and the holder.
    let error = lock_state_dir(dir.path()).unwrap_err();
    assert!(matches!(error, LockError::Held { holder: Some(pid), .. } if pid == std::process::id()), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&dir.path().display().to_string()), "{message}");
    assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");

    // The first is untouched: it still serves, and picks up a new reservation.
    append(&*log, reservation_added(2));
    wait_until("the first agent serves the new reservation", || {
        file_text(&conf).contains("dhcp-host=02:00:00:00:00:02,10.1.0.12\n")
    });
    first.stop();
    // Its lock went with it: the next agent starts.
    let next = Agent::with_files(log.clone(), dir.path());
    next.stop();
}

/// A network namespace of the test's own, with an interface `br0` (one end of a veth pair) for
/// dnsmasq to bind to; deleted on drop. Needs root and `ip`.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("ipamha-{tag}-{}", std::process::id());
        let ip = |args: &[&str]| {
            let output = std::process::Command::new("ip").args(args).output().unwrap();
            assert!(output.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        };
        let _ = std::process::Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let netns = Netns(name);
        ip(&["-n", &netns.0, "link", "add", "br0", "type", "veth", "peer", "name", "br0-peer"]);
        for link in ["br0", "br0-peer", "lo"] {
            ip(&["-n", &netns.0, "link", "set", link, "up"]);
        }
        netns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// The pid of the dnsmasq running shard 0 of the network's server, if one runs.
fn dnsmasq_pid(state: &Path) -> Option<u32> {
    let pid: u32 =
        file_text(&state.join(NETWORK.to_string()).join("shard-00").join("dnsmasq.pid")).trim().parse().ok()?;
    let comm = file_text(Path::new(&format!("/proc/{pid}/comm")));
    (comm.trim() == "dnsmasq").then_some(pid)
}

fn subnet_activated(subnet_id: SubnetId, cidr: &str, gateway: &str, dns: &str) -> Event {
    Event::SubnetActivated(SubnetActivated {
        network_id: NETWORK,
        subnet_id,
        cidr: cidr.parse().unwrap(),
        gateway: gateway.parse().unwrap(),
        dns_servers: vec![dns.parse().unwrap()],
        ntp_servers: Vec::new(),
        allocation_pools: Vec::new(),
        cause: EventId::from_u128(1),
    })
}

#[test]
fn a_subnet_dnsmasq_refuses_is_left_out_and_reported_while_the_others_are_served() {
    let which = std::process::Command::new("dnsmasq").arg("--version").output();
    assert!(which.is_ok_and(|output| output.status.success()), "this test needs dnsmasq (apt-get install dnsmasq)");
    let netns = Netns::new("refused");
    let log = memory_log();
    let state = tempfile::tempdir().unwrap();
    // The core refuses these upstream; the agent must hold even when such a plan reaches it. An
    // IPv6 prefix shorter than /64 makes dnsmasq refuse its whole configuration.
    const BAD: SubnetId = SubnetId::from_u128(0xc2);
    append(&*log, activated());
    append(&*log, subnet_activated(BAD, "2001:db8::/56", "2001:db8::1", "2001:db8::53"));
    append(&*log, reservation_added(1));
    append(&*log, assigned(HOST, 1));
    let agent = {
        let options =
            DnsmasqOptions { netns: Some(netns.0.clone()), max_shards: 1, ..DnsmasqOptions::new(state.path()) };
        Agent::start(log.clone(), state.path(), Box::new(move |_| Box::new(DnsmasqBackend::new(options.clone()))))
    };

    wait_until("the server runs, degraded, with dnsmasq's reason", || {
        statuses(&*log).iter().any(|(_, state, detail)| {
            *state == DhcpServerState::Degraded
                && detail.starts_with("degraded: ")
                && detail.contains(&format!("subnet {BAD} (2001:db8::/56) refused by dnsmasq"))
                && detail.contains("prefix length must be at least 64")
        })
    });
    wait_until("dnsmasq runs", || dnsmasq_pid(state.path()).is_some());
    let pid = dnsmasq_pid(state.path()).unwrap();
    let conf = file_text(&state.path().join(NETWORK.to_string()).join("shard-00").join("dnsmasq.conf"));
    assert!(conf.contains("dhcp-range=set:00000000-0000-0000-0000-0000000000c1,10.1.0.0,static"), "{conf}");
    assert!(!conf.contains("2001:db8::"), "the refused subnet is left out: {conf}");
    let hosts = file_text(&state.path().join(NETWORK.to_string()).join("shard-00").join("hosts"));
    assert_eq!(hosts, "02:00:00:00:00:01,10.1.0.11\n");

    // The good subnet's new settings are refused too (a DNS server of the other family): the
    // running server is left exactly as it was, and the status says why.
    append(&*log, subnet_activated(SUBNET, "10.1.0.0/24", "10.1.0.1", "2001:db8::53"));
    wait_until("the refusal of the new settings is reported", || {
        statuses(&*log).iter().any(|(_, _, detail)| {
            detail.contains(&format!("subnet {SUBNET} (10.1.0.0/24) refused by dnsmasq: bad IP address"))
                && detail.contains("still served with its previous settings")
        })
    });
    assert_eq!(dnsmasq_pid(state.path()), Some(pid), "the running dnsmasq is untouched");
    let after = file_text(&state.path().join(NETWORK.to_string()).join("shard-00").join("dnsmasq.conf"));
    assert_eq!(after, conf, "its configuration is untouched");
    assert!(
        statuses(&*log).iter().all(|(_, state, _)| *state != DhcpServerState::Restarting),
        "no restart: {:?}",
        statuses(&*log)
    );

    append(&*log, unassigned(1));
    wait_until("the server stops", || statuses(&*log).iter().any(|s| s.1 == DhcpServerState::Stopped));
    agent.stop();
    assert_eq!(dnsmasq_pid(state.path()), None);
}

#[test]
fn a_dnsmasq_that_dies_and_cannot_restart_is_reported_in_its_own_words() {
    let which = std::process::Command::new("dnsmasq").arg("--version").output();
    assert!(which.is_ok_and(|output| output.status.success()), "this test needs dnsmasq (apt-get install dnsmasq)");
    let netns = Netns::new("restart");
    let log = memory_log();
    let state = tempfile::tempdir().unwrap();
    append(&*log, activated());
    append(&*log, reservation_added(1));
    append(&*log, assigned(HOST, 1));
    let agent = {
        let options =
            DnsmasqOptions { netns: Some(netns.0.clone()), max_shards: 1, ..DnsmasqOptions::new(state.path()) };
        Agent::start(log.clone(), state.path(), Box::new(move |_| Box::new(DnsmasqBackend::new(options.clone()))))
    };
    wait_until("dnsmasq runs", || dnsmasq_pid(state.path()).is_some());
    let pid = dnsmasq_pid(state.path()).unwrap();

    // The interface goes away and dnsmasq dies: every restart fails, and dnsmasq says why.
    let output = std::process::Command::new("ip").args(["-n", &netns.0, "link", "del", "br0"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    wait_until("a failed restart is reported with dnsmasq's error", || {
        statuses(&*log).iter().any(|(_, state, detail)| {
            *state == DhcpServerState::Restarting && detail.contains("exited (exit status: 2: unknown interface br0)")
        })
    });
    // The same reports reach the process's metrics, which `/metrics` and `/health` answer from.
    let restarts = ipam_runtime::metrics::dhcp_servers()
        .into_iter()
        .filter(|((host, _), _)| *host == HOST.to_string())
        .map(|(_, report)| report.restarts)
        .sum::<u64>();
    assert!(restarts >= 1, "the restart is counted in the metrics");

    append(&*log, unassigned(1));
    wait_until("the server stops", || statuses(&*log).iter().any(|s| s.1 == DhcpServerState::Stopped));
    agent.stop();
}
