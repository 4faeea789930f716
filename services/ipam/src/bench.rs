//! `ipam bench`: end-to-end figures of `ipam up` on the embedded log, measured on this machine.
//!
//! It starts `ipam up` as a child process with one in-process host agent (files backend), sets up
//! 20 networks with a /16 subnet each, then publishes N `ipam.vnic.started.v1` events straight
//! into the log and measures (1) how fast the allocator consumes them, (2) how fast the host agent
//! has them all in its dnsmasq files, and (3) after a SIGKILL with N live reservations, how long
//! `ipam up` takes to be ready again.

// Printing the figures is this command's job.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipam_core::event::{HostNetwork, HostStatus, HostUpserted, NetworkUpserted, SubnetAdded, VnicUp};
use ipam_core::{Envelope, Event, EventId, HostId, Mac, NetworkId, SubnetId, Timestamp, Topic, VmId, VnicId};
use ipam_log::sqlite::{Durability, SqliteLog};
use ipam_log::{EventLog, OutRecord};

use crate::child::UpProcess;

const NETWORKS: u64 = 20;
const HOST: HostId = HostId::from_u128(0xbe0c);

fn start(dir: &Path) -> anyhow::Result<UpProcess> {
    let args: Vec<String> = [
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
    .map(str::to_owned)
    .to_vec();
    UpProcess::start(&args)
}

fn envelope(n: u128, event: Event) -> Envelope {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    Envelope {
        id: EventId::from_u128((0xbe << 96) | n),
        source: "ipam-bench".to_owned(),
        time: Timestamp::from_unix_ms(now),
        subject: Some(event.key()),
        event,
    }
}

fn records(envelopes: &[Envelope]) -> Vec<OutRecord> {
    envelopes
        .iter()
        .map(|e| OutRecord { topic: e.event.topic().name().to_owned(), key: e.event.key(), value: e.to_bytes() })
        .collect()
}

fn wait_consumed(log: &dyn EventLog) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    while ipam_runtime::lag(log, "ipam-allocator", Topic::Networks.name())? > 0 {
        anyhow::ensure!(Instant::now() < deadline, "the allocator did not catch up");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn served(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|text| text.lines().filter(|l| l.starts_with("dhcp-host=")).count())
                .sum()
        })
        .unwrap_or(0)
}

pub fn run(events: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ipam-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, events);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(dir: &Path, events: usize) -> anyhow::Result<()> {
    let mut child = start(dir)?;
    let log = SqliteLog::open(&dir.join("data").join("log"), Durability::ProcessCrash)?;
    let mut n = 0u128;
    let mut next = || {
        n += 1;
        n
    };
    let mut setup = vec![envelope(
        next(),
        Event::HostUpserted(HostUpserted {
            host_id: HOST,
            name: "bench".to_owned(),
            status: HostStatus::Up,
            networks: (0..NETWORKS)
                .map(|net| HostNetwork {
                    network_id: NetworkId::from_u128(u128::from(net) + 1),
                    interface: format!("br{net}").parse().expect("a valid interface name"),
                })
                .collect(),
        }),
    )];
    for net in 0..NETWORKS {
        let network_id = NetworkId::from_u128(u128::from(net) + 1);
        setup.push(envelope(
            next(),
            Event::NetworkUpserted(NetworkUpserted {
                network_id,
                name: format!("bench-{net}"),
                ipam_enabled: true,
                servers_count: Some(1),
            }),
        ));
        setup.push(envelope(
            next(),
            Event::SubnetAdded(SubnetAdded {
                network_id,
                subnet_id: SubnetId::from_u128(u128::from(net) + 1),
                cidr: format!("10.{}.0.0/16", net + 1).parse()?,
                gateway: format!("10.{}.0.1", net + 1).parse()?,
                dns_servers: vec![],
                ntp_servers: vec![],
                allocation_pools: None,
            }),
        ));
    }
    log.append(&records(&setup))?;
    wait_consumed(&log)?;

    let starts: Vec<Envelope> = (0..events as u64)
        .map(|i| {
            let net = i % NETWORKS;
            let b = i.to_be_bytes();
            envelope(
                next(),
                Event::VnicStarted(VnicUp {
                    vnic_id: VnicId::from_u128(0x5000_0000 + u128::from(i)),
                    vm_id: VmId::from_u128(0x6000_0000 + u128::from(i)),
                    network_id: NetworkId::from_u128(u128::from(net) + 1),
                    subnet_id: Some(SubnetId::from_u128(u128::from(net) + 1)),
                    mac: Mac::from_octets([0x52, 0x54, b[4], b[5], b[6], b[7]]).expect("unicast"),
                    requested_ip: None,
                }),
            )
        })
        .collect();
    let started = Instant::now();
    for chunk in starts.chunks(5000) {
        log.append(&records(chunk))?;
    }
    let published = started.elapsed();
    wait_consumed(&log)?;
    let consumed = started.elapsed();
    let files: PathBuf = dir.join("files");
    let deadline = Instant::now() + Duration::from_secs(1800);
    while served(&files) < events {
        anyhow::ensure!(Instant::now() < deadline, "the host agent did not catch up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let in_files = started.elapsed();
    println!("ipam bench: {events} vNIC started events over {NETWORKS} networks, embedded log, files backend");
    println!(
        "  published in {:.2} s ({:.0} events/s appended by the bench)",
        published.as_secs_f64(),
        events as f64 / published.as_secs_f64()
    );
    println!(
        "  allocator consumed them in {:.2} s: {:.0} vNIC events/s through ipam up",
        consumed.as_secs_f64(),
        events as f64 / consumed.as_secs_f64()
    );
    println!(
        "  host agent had all {events} reservations in its dnsmasq files after {:.2} s ({:.0} reservations/s)",
        in_files.as_secs_f64(),
        events as f64 / in_files.as_secs_f64()
    );

    child.kill()?;
    let mut restarted = start(dir)?;
    let ready = restarted.ready_after;
    println!("  after SIGKILL with {events} live reservations, ready again in {:.2} s", ready.as_secs_f64());
    restarted.terminate()?;
    Ok(())
}
