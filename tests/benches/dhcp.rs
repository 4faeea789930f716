//! Reservation-to-served latency of the dnsmasq backend: the time from a reservation reaching the
//! log to dnsmasq having loaded it (the `read .../hosts.d/add-N` line dnsmasq logs when inotify
//! hands it the new file), with 1,000 and with 65,000 reservations already served on the network.
//! The first sample of each run is also checked with a real DHCP client.
//!
//! Run as root: `cargo bench -p ipam-tests --bench dhcp` (needs dnsmasq, busybox, iproute2;
//! `./test.sh` installs them). Without `--bench` it runs a small smoke pass.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipam_core::event::*;
use ipam_core::{Envelope, Event, EventId, HostId, Mac, NetworkId, SubnetId, Timestamp, VmId, VnicId};
use ipam_log::{OutRecord, TopicSpec};
use ipam_tests::ipam_binary;
use ipam_tests::netns::{Fabric, dhcp, prerequisites};

const NETWORK: NetworkId = NetworkId::from_u128(0xb1);
const SUBNET: SubnetId = SubnetId::from_u128(0xb2);
const HOST: HostId = HostId::from_u128(0xb3);

fn envelope(n: u128, event: Event) -> OutRecord {
    let envelope = Envelope {
        id: EventId::from_u128((0xbe7c << 64) | n),
        source: "dhcp-bench".to_owned(),
        time: Timestamp::from_unix_ms(1_764_000_000_000),
        subject: None,
        event,
    };
    OutRecord { topic: envelope.event.topic().name().to_owned(), key: envelope.event.key(), value: envelope.to_bytes() }
}

fn ip_of(n: u32) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 88, 0, 10)) + n))
}

fn reservation(n: u32, mac: Mac) -> Event {
    Event::ReservationAdded(ReservationAdded {
        network_id: NETWORK,
        subnet_id: SUBNET,
        owner: Owner::Vnic { vnic_id: VnicId::from_u128(u128::from(n)), vm_id: VmId::from_u128(u128::from(n)) },
        mac,
        ip: ip_of(n),
        cause: EventId::from_u128(u128::from(n)),
    })
}

fn synthetic_mac(n: u32) -> Mac {
    let b = n.to_be_bytes();
    Mac::from_octets([0x52, 0x54, b[0], b[1], b[2], b[3]]).unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn measure(preloaded: u32, samples: u32) {
    let mut fabric = Fabric::new();
    let host_ns = fabric.node("bh", "eth1", None);
    let vm_mac: Mac = "52:54:00:be:00:01".parse().unwrap();
    let vm_ns = fabric.node("bv", "eth0", Some(vm_mac));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = ipam_tests::BackendSpec::Sqlite(data.join("log")).open().unwrap();
    let topics: Vec<TopicSpec> =
        ["ipam.networks", "ipam.hosts", "ipam.reservations", "ipam.dhcp-servers", "ipam.dead-letter"]
            .iter()
            .map(|name| TopicSpec { name: (*name).to_owned(), partitions: 1 })
            .collect();
    log.create_topics(&topics).unwrap();
    let dhcp_dir = dir.path().join("dhcp");
    let mut agent: Child = Command::new("ip")
        .args(["netns", "exec", &host_ns])
        .arg(ipam_binary())
        .args(["--data-dir", &data.display().to_string(), "host-agent", "--host-id", &HOST.to_string()])
        .args(["--dhcp-dir", &dhcp_dir.display().to_string()])
        .env("IPAM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut n = 0u128;
    let mut next = || {
        n += 1;
        n
    };
    let mut records = vec![
        envelope(
            next(),
            Event::DhcpServerAssigned(DhcpServerAssigned {
                network_id: NETWORK,
                host_id: HOST,
                interface: "eth1".parse().unwrap(),
                epoch: 1,
                reason: AssignReason::Placed,
                cause: EventId::from_u128(0),
            }),
        ),
        envelope(
            next(),
            Event::SubnetActivated(SubnetActivated {
                network_id: NETWORK,
                subnet_id: SUBNET,
                cidr: "10.88.0.0/16".parse().unwrap(),
                gateway: "10.88.0.1".parse().unwrap(),
                dns_servers: vec![],
                ntp_servers: vec![],
                allocation_pools: vec![],
                cause: EventId::from_u128(0),
            }),
        ),
        envelope(
            next(),
            Event::ReservationAdded(ReservationAdded {
                network_id: NETWORK,
                subnet_id: SUBNET,
                owner: Owner::DhcpServer { host_id: HOST },
                mac: "02:00:00:00:be:01".parse().unwrap(),
                ip: "10.88.0.2".parse().unwrap(),
                cause: EventId::from_u128(0),
            }),
        ),
    ];
    for i in 0..preloaded {
        records.push(envelope(next(), reservation(100 + i, synthetic_mac(100 + i))));
    }
    log.append(&records).unwrap();
    let server_dir = dhcp_dir.join(NETWORK.to_string());
    let dnsmasq_log = server_dir.join("dnsmasq.log");
    let read_lines = || std::fs::read_to_string(&dnsmasq_log).unwrap_or_default().matches("hosts.d/add-").count();
    let loaded = Instant::now();
    // Ready: dnsmasq runs and has read every preloaded host (from its base file or additions).
    loop {
        let text = std::fs::read_to_string(server_dir.join("hosts")).unwrap_or_default();
        let extra: usize = std::fs::read_dir(server_dir.join("hosts.d"))
            .map(|d| d.flatten().map(|e| std::fs::read_to_string(e.path()).unwrap_or_default().lines().count()).sum())
            .unwrap_or(0);
        if text.lines().count() + extra >= preloaded as usize
            && std::fs::read_to_string(&dnsmasq_log).is_ok_and(|l| l.contains("read "))
        {
            break;
        }
        assert!(loaded.elapsed() < Duration::from_secs(300), "the server never loaded {preloaded} hosts");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut latencies = Vec::new();
    for sample in 0..samples {
        let before = read_lines();
        let id = 65_200 + sample;
        let mac = if sample == 0 { vm_mac } else { synthetic_mac(id) };
        let started = Instant::now();
        log.append(&[envelope(next(), reservation(id, mac))]).unwrap();
        while read_lines() <= before {
            assert!(started.elapsed() < Duration::from_secs(30), "dnsmasq never read the new reservation");
            std::thread::sleep(Duration::from_micros(500));
        }
        latencies.push(started.elapsed());
        if sample == 0 {
            let asked = Instant::now();
            let lease = loop {
                if let Some(lease) = dhcp(&vm_ns, dir.path()) {
                    break lease;
                }
                assert!(asked.elapsed() < Duration::from_secs(60), "the guest got no lease from the new reservation");
            };
            assert_eq!(lease.ip, ip_of(id).to_string());
            println!(
                "dhcp/first lease with {preloaded} reservations served: {:.2} s after asking",
                asked.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    latencies.sort();
    println!(
        "dhcp/reservation_to_served with {preloaded} reservations served: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({samples} samples; initial load {:.2} s)",
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().unwrap().as_secs_f64() * 1000.0,
        loaded.elapsed().as_secs_f64(),
    );
    let _ = agent.kill();
    let _ = agent.wait();
    drop(fabric);
}

fn main() {
    prerequisites();
    if std::env::args().any(|arg| arg == "--bench") {
        measure(1_000, 100);
        measure(65_000, 100);
    } else {
        measure(100, 5);
    }
}
