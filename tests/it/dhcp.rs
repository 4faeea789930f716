//! End to end, as root: real dnsmasq servers run by host agents in network namespaces, and a real
//! DHCP client (busybox udhcpc) in VM namespaces, joined by a bridge, with `ipam up` on the
//! embedded log deciding everything. `./test.sh` installs dnsmasq and busybox.
//!
//! Topology: a fabric namespace holding bridge `br0` (the network), three host namespaces whose
//! `eth1` and two VM namespaces whose `eth0` are veth pairs into the bridge. Each host runs
//! `ipam host-agent` inside its namespace, so the dnsmasq it starts binds there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ipam_core::event::*;
use ipam_core::{Envelope, Event, EventId, HostId, Mac, NetworkId, SubnetId, Timestamp, VmId, VnicId};
use ipam_log::{EventLog, OutRecord};

use crate::recovery::Service;
use ipam_tests::netns::{Fabric, Lease, dhcp, must, prerequisites};
use ipam_tests::{event_record, wait_until};

pub(crate) const NETWORK: NetworkId = NetworkId::from_u128(0xd1);
pub(crate) const SUBNET: SubnetId = SubnetId::from_u128(0xd2);
const HEARTBEAT_TIMEOUT_MS: u64 = 2000;
const TICK_MS: u64 = 300;

pub(crate) struct Stack {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) up: Service,
    pub(crate) log: std::sync::Arc<dyn EventLog>,
    n: u128,
    /// The high bits of the ids of the events this stack publishes: fixed on the embedded log, unique
    /// to the run on Kafka, whose unprefixed topics outlive a run on a developer's broker (the
    /// allocator takes an id it has seen for a retry, so a second run reusing ids decides nothing).
    id_base: u128,
    /// Set when the services run against Kafka: the broker, and the services besides `up`.
    kafka: Option<String>,
    others: Vec<Service>,
}

impl Stack {
    pub(crate) fn start() -> Stack {
        Stack::start_with_heartbeat_timeout(HEARTBEAT_TIMEOUT_MS)
    }

    /// `ipam up` declaring a host lost after `heartbeat_timeout_ms` without a heartbeat.
    pub(crate) fn start_with_heartbeat_timeout(heartbeat_timeout_ms: u64) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data").display().to_string();
        let args: Vec<String> = [
            "--data-dir",
            &data,
            "--partitions",
            "2",
            "--tick-interval-ms",
            &TICK_MS.to_string(),
            "--heartbeat-timeout-ms",
            &heartbeat_timeout_ms.to_string(),
            // Tests run side by side: each API takes a free port.
            "--api-bind",
            "127.0.0.1:0",
            "up",
        ]
        .map(str::to_owned)
        .to_vec();
        let mut up = Service::spawn(&args);
        up.wait_for("ipam is ready", Duration::from_secs(60));
        let log = ipam_tests::BackendSpec::Sqlite(dir.path().join("data").join("log")).open().unwrap();
        Stack { dir, up, log, n: 0, id_base: 0xd4c7 << 64, kafka: None, others: Vec::new() }
    }

    /// `ipam allocator` and `ipam placement` against the Kafka broker (unprefixed topics: this is
    /// the one test that uses them, with ids unique to the run: `run`, the test's own).
    fn kafka(run: u128) -> Stack {
        let bootstrap = ipam_tests::kafka_bootstrap();
        let dir = tempfile::tempdir().unwrap();
        let spawn = |name: &str, command: &str| {
            let data = dir.path().join(name).display().to_string();
            let args: Vec<String> = [
                "--kafka",
                &bootstrap,
                "--kafka-session-timeout-ms",
                "6000",
                "--instance",
                &format!("e2e-{name}-{}", std::process::id()),
                "--data-dir",
                &data,
                "--tick-interval-ms",
                &TICK_MS.to_string(),
                "--heartbeat-timeout-ms",
                &HEARTBEAT_TIMEOUT_MS.to_string(),
                command,
            ]
            .map(str::to_owned)
            .to_vec();
            let mut service = Service::spawn(&args);
            service.wait_for("ipam is ready", Duration::from_secs(60));
            service
        };
        let up = spawn("allocator", "allocator");
        let placement = spawn("placement", "placement");
        let log = ipam_tests::BackendSpec::Kafka(bootstrap.clone()).open().unwrap();
        let id_base = (0xd4c8 << 112) | (run << 48);
        Stack { dir, up, log, n: 0, id_base, kafka: Some(bootstrap), others: vec![placement] }
    }

    pub(crate) fn publish(&mut self, events: Vec<Event>) {
        let records: Vec<OutRecord> = events
            .into_iter()
            .map(|event| {
                self.n += 1;
                let id = EventId::from_u128(self.id_base | self.n);
                event_record(id, "dhcp-test", Timestamp::from_unix_ms(1_764_000_000_000 + self.n as i64), event)
            })
            .collect();
        self.log.append(&records).unwrap();
    }

    /// The host agent of `host`: inside `namespace` on the embedded log; on Kafka, outside it
    /// (a namespace has no route to the broker on loopback) with its servers inside it.
    pub(crate) fn agent(&self, namespace: &str, host: HostId) -> Service {
        let ipam = crate::recovery::ipam_binary();
        if let Some(bootstrap) = &self.kafka {
            let args: Vec<String> = [
                "--kafka",
                bootstrap,
                "--data-dir",
                &self.dir.path().join("agent").display().to_string(),
                "host-agent",
                "--host-id",
                &host.to_string(),
                "--netns",
                namespace,
                "--dhcp-dir",
                &self.dhcp_dir(host).display().to_string(),
                "--heartbeat-interval-ms",
                "500",
            ]
            .map(str::to_owned)
            .to_vec();
            let mut agent = Service::spawn(&args);
            agent.wait_for("ipam is ready", Duration::from_secs(30));
            return agent;
        }
        let args: Vec<String> = [
            "netns",
            "exec",
            namespace,
            &ipam.display().to_string(),
            "--data-dir",
            &self.dir.path().join("data").display().to_string(),
            "host-agent",
            "--host-id",
            &host.to_string(),
            "--dhcp-dir",
            &self.dhcp_dir(host).display().to_string(),
            "--heartbeat-interval-ms",
            "500",
        ]
        .map(str::to_owned)
        .to_vec();
        let mut agent = Service::spawn_program("ip", &args);
        agent.wait_for("ipam is ready", Duration::from_secs(30));
        agent
    }

    pub(crate) fn dhcp_dir(&self, host: HostId) -> PathBuf {
        self.dir.path().join(format!("dhcp-{host}"))
    }

    /// The directory of the one dnsmasq shard of `host`'s server of the network (a server this
    /// small has one shard).
    pub(crate) fn shard_dir(&self, host: HostId) -> PathBuf {
        self.dhcp_dir(host).join(NETWORK.to_string()).join("shard-00")
    }

    /// The hosts file lines of `host`'s server of the network (base file and additions).
    pub(crate) fn served_lines(&self, host: HostId) -> String {
        let dir = self.shard_dir(host);
        let mut text = std::fs::read_to_string(dir.join("hosts")).unwrap_or_default();
        if let Ok(entries) = std::fs::read_dir(dir.join("hosts.d")) {
            for entry in entries.flatten() {
                text += &std::fs::read_to_string(entry.path()).unwrap_or_default();
            }
        }
        text
    }

    pub(crate) fn dnsmasq_log(&self, host: HostId) -> String {
        std::fs::read_to_string(self.shard_dir(host).join("dnsmasq.log")).unwrap_or_default()
    }

    pub(crate) fn reserved_ip(&self, vnic: VnicId) -> Option<String> {
        let mut ip = None;
        for event in self.reservation_events() {
            match event {
                Event::ReservationAdded(added) if added.owner == vm_owner(vnic) => ip = Some(added.ip.to_string()),
                Event::ReservationRemoved(removed) if removed.owner == vm_owner(vnic) => ip = None,
                _ => {}
            }
        }
        ip
    }

    /// The lease changes the allocator matched to `vnic` (`ipam.vnic.lease_changed.v1`), in order:
    /// what a host agent's lease events became once they went through the log.
    pub(crate) fn lease_changes(&self, vnic: VnicId) -> Vec<VnicLeaseChanged> {
        self.reservation_events()
            .filter_map(|event| match event {
                Event::VnicLeaseChanged(changed) if changed.vnic_id == vnic => Some(changed),
                _ => None,
            })
            .collect()
    }

    /// Every event of `ipam.reservations`, partition by partition.
    fn reservation_events(&self) -> impl Iterator<Item = Event> {
        let partitions = self.log.partition_count("ipam.reservations").unwrap();
        let records: Vec<_> = (0..partitions)
            .flat_map(|partition| self.log.read("ipam.reservations", partition, 0, usize::MAX, Duration::ZERO).unwrap())
            .collect();
        records.into_iter().filter_map(|record| Envelope::decode(&record.value).ok().map(|envelope| envelope.event))
    }

    /// The hosts placement currently has serving the network, from `ipam.dhcp-servers`.
    pub(crate) fn servers(&self) -> Vec<HostId> {
        let mut servers = std::collections::BTreeSet::new();
        for partition in 0..self.log.partition_count("ipam.dhcp-servers").unwrap() {
            for record in self.log.read("ipam.dhcp-servers", partition, 0, usize::MAX, Duration::ZERO).unwrap() {
                match Envelope::decode(&record.value).map(|e| e.event) {
                    Ok(Event::DhcpServerAssigned(a)) => {
                        servers.insert(a.host_id);
                    }
                    Ok(Event::DhcpServerUnassigned(u)) => {
                        servers.remove(&u.host_id);
                    }
                    _ => {}
                }
            }
        }
        servers.into_iter().collect()
    }
}

fn vm_owner(vnic: VnicId) -> Owner {
    Owner::Vnic { vnic_id: vnic, vm_id: VmId::from_u128(vnic.0.as_u128()) }
}

pub(crate) fn host_id(n: u128) -> HostId {
    HostId::from_u128(0xd100 + n)
}

pub(crate) fn network(servers_count: u8) -> Event {
    Event::NetworkUpserted(NetworkUpserted {
        network_id: NETWORK,
        name: "e2e".to_owned(),
        ipam_enabled: true,
        servers_count: Some(servers_count),
    })
}

fn vnic_up(vnic: VnicId, mac: Mac) -> VnicUp {
    VnicUp {
        vnic_id: vnic,
        vm_id: VmId::from_u128(vnic.0.as_u128()),
        network_id: NETWORK,
        subnet_id: Some(SUBNET),
        subnet_ids: Vec::new(),
        mac,
        requested_ip: None,
    }
}

pub(crate) fn start(vnic: VnicId, mac: Mac) -> Event {
    Event::VnicStarted(vnic_up(vnic, mac))
}

#[test]
fn guests_get_their_reserved_ip_from_real_dnsmasq_and_servers_fail_over() {
    prerequisites();
    let mut fabric = Fabric::new();
    let hosts: Vec<(HostId, String)> =
        (1..=3).map(|n| (host_id(n), fabric.node(&format!("h{n}"), "eth1", None))).collect();
    let vm1_mac: Mac = "52:54:00:e2:00:01".parse().unwrap();
    let vm2_mac: Mac = "52:54:00:e2:00:02".parse().unwrap();
    let vm3_mac: Mac = "52:54:00:e2:00:03".parse().unwrap();
    let vm1 = fabric.node("v1", "eth0", Some(vm1_mac));
    let vm2 = fabric.node("v2", "eth0", Some(vm2_mac));
    let vm3 = fabric.node("v3", "eth0", Some(vm3_mac));
    let mut stack = Stack::start();
    let mut agents: Vec<Option<Service>> = hosts.iter().map(|(host, ns)| Some(stack.agent(ns, *host))).collect();

    let mut setup: Vec<Event> = hosts
        .iter()
        .enumerate()
        .map(|(n, (host, _))| {
            Event::HostUpserted(HostUpserted {
                host_id: *host,
                name: format!("host-{n}"),
                status: HostStatus::Up,
                networks: vec![HostNetwork { network_id: NETWORK, interface: "eth1".parse().unwrap() }],
            })
        })
        .collect();
    setup.push(network(2));
    setup.push(Event::SubnetAdded(SubnetAdded {
        network_id: NETWORK,
        subnet_id: SUBNET,
        cidr: "10.77.0.0/24".parse().unwrap(),
        gateway: "10.77.0.1".parse().unwrap(),
        dns_servers: vec!["10.77.0.53".parse().unwrap()],
        ntp_servers: vec![],
        allocation_pools: None,
    }));
    stack.publish(setup);
    wait_until("two servers are placed", Duration::from_secs(20), || stack.servers().len() == 2);
    let serving = stack.servers();

    // A vNIC's MAC gets exactly its reserved IP, with the subnet's router and DNS.
    let vnic1 = VnicId::from_u128(0xe1);
    stack.publish(vec![start(vnic1, vm1_mac)]);
    wait_until("the vNIC holds a reservation", Duration::from_secs(10), || stack.reserved_ip(vnic1).is_some());
    let reserved = stack.reserved_ip(vnic1).unwrap();
    for host in &serving {
        wait_until("both servers hold the reservation", Duration::from_secs(20), || {
            stack.served_lines(*host).contains(&vm1_mac.to_string())
        });
    }
    // A server restarts once when its own address is granted (its options change); both must be
    // past that, and listening, before the guest asks, or one of them may miss the request.
    for host in &serving {
        wait_until("both servers run with their own address", Duration::from_secs(20), || {
            let dir = stack.shard_dir(*host);
            let conf = std::fs::read_to_string(dir.join("dnsmasq.conf")).unwrap_or_default();
            conf.contains("server address 10.77.") && stack.dnsmasq_log(*host).contains("sockets bound exclusively")
        });
    }
    let lease = wait_for_lease(&vm1, stack.dir.path());
    assert_eq!(lease.ip, reserved, "the guest got its reserved IP");
    assert_eq!(lease.router, "10.77.0.1");
    assert_eq!(lease.dns, "10.77.0.53");

    // With servers_count = 2, both servers answer.
    for host in &serving {
        wait_until("each server offered", Duration::from_secs(5), || {
            stack.dnsmasq_log(*host).contains(&format!("DHCPOFFER(eth1) {reserved} {vm1_mac}"))
        });
    }

    // A dnsmasq that dies is restarted, and the agent says so.
    let pid_file = stack.shard_dir(serving[0]).join("dnsmasq.pid");
    let old_pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_owned();
    must(&["kill", "-KILL", &old_pid]);
    wait_until("dnsmasq is restarted", Duration::from_secs(10), || {
        std::fs::read_to_string(&pid_file)
            .is_ok_and(|pid| pid.trim() != old_pid && Path::new(&format!("/proc/{}", pid.trim())).exists())
    });
    let restarted = wait_for_lease(&vm1, stack.dir.path());
    assert_eq!(restarted.ip, reserved);
    wait_until("the restarted server offers again", Duration::from_secs(5), || {
        stack.dnsmasq_log(serving[0]).contains(&format!("DHCPOFFER(eth1) {reserved} {vm1_mac}"))
    });
    wait_until("the restart is reported", Duration::from_secs(10), || {
        stack.log.read("ipam.hosts", 0, 0, usize::MAX, Duration::ZERO).unwrap().iter().any(|record| {
            matches!(Envelope::decode(&record.value).map(|e| e.event),
                     Ok(Event::DhcpServerStatus(status)) if status.state == DhcpServerState::Restarting)
        })
    });

    // An unknown MAC gets no lease.
    assert!(dhcp(&vm2, stack.dir.path()).is_none(), "a MAC without a reservation got a lease");

    // After the vNIC stops, its MAC gets no lease.
    stack.publish(vec![Event::VnicStopped(VnicDown { vnic_id: vnic1, network_id: NETWORK })]);
    for host in &serving {
        wait_until("the servers dropped the MAC", Duration::from_secs(10), || {
            !stack.served_lines(*host).contains(&vm1_mac.to_string())
        });
    }
    assert!(dhcp(&vm1, stack.dir.path()).is_none(), "a released MAC still got a lease");

    // The released address, re-used by another MAC (a fixed-IP request), is served to that MAC.
    let vnic2 = VnicId::from_u128(0xe2);
    let reuse = VnicUp { requested_ip: Some(reserved.parse().unwrap()), ..vnic_up(vnic2, vm2_mac) };
    stack.publish(vec![Event::VnicStarted(reuse)]);
    for host in &serving {
        wait_until("the servers hold the new holder", Duration::from_secs(10), || {
            stack.served_lines(*host).contains(&vm2_mac.to_string())
        });
    }
    let lease = wait_for_lease(&vm2, stack.dir.path());
    assert_eq!(lease.ip, reserved, "the re-used address went to its new MAC");
    assert!(dhcp(&vm1, stack.dir.path()).is_none(), "the address's former MAC got a lease");

    // Failover: one server; its host agent is killed (its dnsmasq left running, stale).
    stack.publish(vec![network(1)]);
    wait_until("one server remains", Duration::from_secs(10), || stack.servers().len() == 1);
    let victim = stack.servers()[0];
    let index = hosts.iter().position(|(host, _)| *host == victim).unwrap();
    let killed_at = Instant::now();
    agents[index].take().unwrap().kill();
    wait_until("a replacement is placed", Duration::from_secs(20), || {
        let servers = stack.servers();
        servers.len() == 1 && servers[0] != victim
    });
    let replacement = stack.servers()[0];
    let vnic3 = VnicId::from_u128(0xe3);
    stack.publish(vec![start(vnic3, vm3_mac)]);
    wait_until("the replacement serves the new vNIC", Duration::from_secs(20), || {
        stack.served_lines(replacement).contains(&vm3_mac.to_string())
    });
    let failover = killed_at.elapsed();
    let lease = wait_for_lease(&vm3, stack.dir.path());
    assert_eq!(Some(lease.ip), stack.reserved_ip(vnic3), "the new vNIC got its IP from the replacement");
    println!("failover: a new vNIC served by the replacement {failover:?} after the serving agent was killed");
    assert!(
        failover < Duration::from_millis(HEARTBEAT_TIMEOUT_MS + TICK_MS + 1000 + 2000),
        "failover took {failover:?}"
    );

    // The replaced host comes back: it stops its stale server.
    let stale_pid = std::fs::read_to_string(stack.shard_dir(victim).join("dnsmasq.pid")).unwrap().trim().to_owned();
    assert!(Path::new(&format!("/proc/{stale_pid}")).exists(), "the stale dnsmasq was still running");
    let server_addresses = || {
        let output = Command::new("ip")
            .args(["-n", &hosts[index].1, "-4", "-o", "addr", "show", "dev", "eth1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).lines().filter(|line| line.contains("inet 10.77.")).count()
    };
    assert!(server_addresses() > 0, "the stale server's address was on its interface");
    agents[index] = Some(stack.agent(&hosts[index].1, victim));
    wait_until("the stale server stopped", Duration::from_secs(15), || {
        !Path::new(&format!("/proc/{stale_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{stale_pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    });
    wait_until("the stale server's address is off the interface", Duration::from_secs(5), || server_addresses() == 0);

    for agent in agents.iter_mut().flatten() {
        agent.terminate();
    }
    stack.up.terminate();
    drop(fabric);
}

#[test]
fn a_guest_gets_its_reserved_ip_with_the_services_on_kafka() {
    prerequisites();
    let mut fabric = Fabric::new();
    // Ids and MAC unique to the run: the unprefixed topics outlive it on a developer's broker.
    let run = u128::from(std::process::id()) << 32
        | u128::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos());
    let host_ns = fabric.node("kh", "eth1", None);
    let vm_mac = Mac::from_octets([0x52, 0x54, 0xe3, (run >> 16) as u8, (run >> 8) as u8, run as u8]).unwrap();
    let vm_ns = fabric.node("kv", "eth0", Some(vm_mac));
    let mut stack = Stack::kafka(run);
    let host = HostId::from_u128(run);
    let mut agent = stack.agent(&host_ns, host);
    stack.publish(vec![
        Event::HostUpserted(HostUpserted {
            host_id: host,
            name: "kafka-host".to_owned(),
            status: HostStatus::Up,
            networks: vec![HostNetwork { network_id: NETWORK, interface: "eth1".parse().unwrap() }],
        }),
        network(1),
        Event::SubnetAdded(SubnetAdded {
            network_id: NETWORK,
            subnet_id: SUBNET,
            cidr: "10.77.0.0/24".parse().unwrap(),
            gateway: "10.77.0.1".parse().unwrap(),
            dns_servers: vec!["10.77.0.53".parse().unwrap()],
            ntp_servers: vec![],
            allocation_pools: None,
        }),
    ]);
    let vnic = VnicId::from_u128(run + 1);
    stack.publish(vec![start(vnic, vm_mac)]);
    wait_until("the vNIC holds a reservation", Duration::from_secs(30), || stack.reserved_ip(vnic).is_some());
    let reserved = stack.reserved_ip(vnic).unwrap();
    wait_until("the server holds the reservation", Duration::from_secs(30), || {
        stack.served_lines(host).contains(&vm_mac.to_string())
    });
    let lease = wait_for_lease(&vm_ns, stack.dir.path());
    assert_eq!(lease.ip, reserved);
    assert_eq!(lease.router, "10.77.0.1");
    // Lease truth on Kafka: the agent reports the lease on ipam.networks, and the network's
    // allocator matches it to the vNIC's reservation.
    let mut granted = None;
    wait_until("the allocator matched the guest's lease to the vNIC", Duration::from_secs(30), || {
        granted = stack.lease_changes(vnic).into_iter().find(|changed| changed.change == LeaseChange::Granted);
        granted.is_some()
    });
    let granted = granted.expect("found by the wait");
    assert_eq!((granted.mac, granted.ip.to_string(), granted.host_id), (vm_mac, reserved.clone(), host));
    // Leave the shared network as it was found: the vNIC's address goes back.
    stack.publish(vec![Event::VnicStopped(VnicDown { vnic_id: vnic, network_id: NETWORK })]);
    wait_until("the address is released", Duration::from_secs(30), || stack.reserved_ip(vnic).is_none());
    agent.terminate();
    for service in &mut stack.others {
        service.terminate();
    }
    stack.up.terminate();
    drop(fabric);
}

/// The lease a real client (udhcpc) in `namespace` gets, asking again for up to 20 s.
pub(crate) fn wait_for_lease(namespace: &str, dir: &Path) -> Lease {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(lease) = dhcp(namespace, dir) {
            return lease;
        }
        assert!(Instant::now() < deadline, "no lease for {namespace}");
    }
}

#[test]
fn a_second_host_agent_on_one_state_directory_exits_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let dhcp = dir.path().join("dhcp");
    let args = |data: &str| -> Vec<String> {
        let data = dir.path().join(data).display().to_string();
        let host = host_id(0x10c).to_string();
        let dhcp = dhcp.display().to_string();
        ["--data-dir", &data, "host-agent", "--host-id", &host, "--dhcp-backend", "files", "--dhcp-dir", &dhcp]
            .map(str::to_owned)
            .to_vec()
    };
    let mut first = Service::spawn(&args("first"));
    first.wait_for("ipam is ready", Duration::from_secs(30));

    let mut second = Command::new(crate::recovery::ipam_binary())
        .args(args("second"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = second.kill();
            panic!("the second host agent did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "the second agent must fail: {stderr}");
    assert!(stderr.contains(&dhcp.display().to_string()), "the error names the directory: {stderr}");
    assert!(stderr.contains("another host agent (pid "), "the error names the holder: {stderr}");

    // The first runs on, untouched, and stops cleanly.
    first.terminate();
}
