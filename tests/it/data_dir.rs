//! The data directory's edges, tried as an operator (or an accident) would: its log lost while
//! its snapshots remain, a garbled snapshot, a second process on it, and a full disk. Each must end
//! in a clear refusal or a recovery, never in two VMs holding one address or a crash loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::api::{event, http, ipam_up_with_api};
use crate::recovery::Service;

const NETWORK: &str = "00000000-0000-0000-0000-0000000dd001";
const SUBNET: &str = "00000000-0000-0000-0000-0000000dd002";

fn up_args(dir: &Path) -> Vec<String> {
    ["--data-dir", &dir.display().to_string(), "--api-bind", "127.0.0.1:0", "up"].map(str::to_owned).to_vec()
}

fn vnic_id(n: u32) -> String {
    format!("00000000-0000-0000-0000-0000{n:08x}")
}

fn vnic_started(id: u32, n: u32) -> Value {
    event(
        id,
        "ipam.vnic.started.v1",
        json!({"vnic_id": vnic_id(n), "vm_id": vnic_id(n), "network_id": NETWORK, "subnet_id": SUBNET,
               "mac": format!("52:54:00:{:02x}:{:02x}:{:02x}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)}),
    )
}

/// A network with one /16 subnet; ids 1 and 2.
fn setup() -> Vec<Value> {
    vec![
        event(1, "ipam.network.upserted.v1", json!({"network_id": NETWORK, "name": "edges", "ipam_enabled": true})),
        event(
            2,
            "ipam.subnet.added.v1",
            json!({"network_id": NETWORK, "subnet_id": SUBNET, "cidr": "10.77.0.0/16", "gateway": "10.77.0.1"}),
        ),
    ]
}

fn publish(addr: SocketAddr, events: &[Value]) -> (u16, String) {
    http(addr, "POST", "/v1/events", "application/json", Value::from(events.to_vec()).to_string().as_bytes())
}

/// The address vNIC `n` holds, once the read model shows one (waits up to `within`).
fn reserved_ip(addr: SocketAddr, n: u32, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = http(addr, "GET", &format!("/v1/vnics/{}", vnic_id(n)), "application/json", b"");
        if status == 200 {
            let view: Value = serde_json::from_str(&body).unwrap();
            if let Some(ip) = view["reservation"]["ip"].as_str() {
                return ip.to_owned();
            }
        }
        assert!(Instant::now() < deadline, "vNIC {n} holds no address after {within:?} ({status}: {body})");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ipam up` with a network and `count` started vNICs, stopped with SIGTERM (so it snapshots);
/// the address of each vNIC.
fn loaded_and_stopped(dir: &Path, count: u32) -> Vec<String> {
    let (mut up, addr) = ipam_up_with_api(dir);
    let mut events = setup();
    events.extend((0..count).map(|n| vnic_started(100 + n, n)));
    let (status, body) = publish(addr, &events);
    assert_eq!(status, 202, "{body}");
    let ips = (0..count).map(|n| reserved_ip(addr, n, Duration::from_secs(60))).collect();
    up.terminate();
    ips
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("snapshots"))
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    files.retain(|path| ipam_runtime::snapshot::is_snapshot_file(path));
    files
}

#[test]
fn a_data_directory_whose_log_is_gone_refuses_to_start_until_its_snapshots_are_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    loaded_and_stopped(dir.path(), 5);
    assert!(!snapshot_files(dir.path()).is_empty(), "a clean stop writes snapshots");
    let log_file = dir.path().join("log").join("log.sqlite3");

    // The log emptied (a new, empty database is made in its place): the snapshots name another log.
    std::fs::write(&log_file, b"").unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join("log").join(format!("log.sqlite3{suffix}")));
    }
    let (status, stderr) = Service::spawn(&up_args(dir.path())).wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "it must not start on snapshots of another log:\n{stderr}");
    assert!(stderr.contains("was lost or replaced"), "{stderr}");
    assert!(stderr.contains("to start afresh on purpose"), "the message says how to start afresh:\n{stderr}");

    // The log removed: refused before a new log is made beside the snapshots.
    std::fs::remove_dir_all(dir.path().join("log")).unwrap();
    let (status, stderr) = Service::spawn(&up_args(dir.path())).wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "it must not start on snapshots of a missing log:\n{stderr}");
    assert!(stderr.contains("is missing, but snapshots of it remain"), "{stderr}");
    assert!(!log_file.exists(), "no new log was made beside the snapshots");

    // Starting afresh on purpose: the snapshots moved aside, an empty state.
    std::fs::rename(dir.path().join("snapshots"), dir.path().join("snapshots.old")).unwrap();
    let (mut up, addr) = ipam_up_with_api(dir.path());
    let (status, body) = http(addr, "GET", &format!("/v1/vnics/{}", vnic_id(0)), "application/json", b"");
    assert_eq!(status, 404, "the fresh log knows no vNIC: {body}");
    up.terminate();
}

#[test]
fn a_garbled_snapshot_is_ignored_and_the_state_is_replayed_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let ips = loaded_and_stopped(dir.path(), 5);
    let files = snapshot_files(dir.path());
    assert!(!files.is_empty(), "a clean stop writes snapshots");
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let newline = bytes.iter().position(|b| *b == b'\n').unwrap();
        let mut garbled = bytes[..=newline].to_vec();
        garbled.extend_from_slice(b"{garbage");
        std::fs::write(file, garbled).unwrap();
    }

    let (mut up, addr) = ipam_up_with_api(dir.path());
    for (n, ip) in ips.iter().enumerate() {
        assert_eq!(&reserved_ip(addr, n as u32, Duration::from_secs(60)), ip, "replay rebuilt vNIC {n}");
    }
    // The replayed state decides as the old one would: the next vNIC gets a new address.
    let (status, body) = publish(addr, &[vnic_started(200, 99)]);
    assert_eq!(status, 202, "{body}");
    let next = reserved_ip(addr, 99, Duration::from_secs(60));
    assert!(!ips.contains(&next), "{next} was already held");
    up.terminate();
}

#[test]
fn a_second_ipam_up_on_one_data_directory_is_refused_and_the_first_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, addr) = ipam_up_with_api(dir.path());
    let (status, body) = publish(addr, &setup());
    assert_eq!(status, 202, "{body}");

    let mut second = Service::spawn(&up_args(dir.path()));
    let (status, stderr) = second.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "a second process must not run on the same data directory:\n{stderr}");
    assert!(stderr.contains("already uses the data directory"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.id())), "it names the holder:\n{stderr}");

    // The first is untouched: it still decides.
    let (status, body) = publish(addr, &[vnic_started(300, 1)]);
    assert_eq!(status, 202, "{body}");
    reserved_ip(addr, 1, Duration::from_secs(60));
    first.terminate();
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &dir.path().display().to_string()])
            .status()
            .expect("mount(8) runs");
        assert!(status.success(), "mounting a tmpfs needs root (the test command runs as root)");
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the disk with a file until it refuses more.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).and_then(|()| file.sync_all()).is_ok() {}
}

#[test]
fn a_full_disk_refuses_writes_with_503_and_the_service_recovers_when_space_returns() {
    let disk = SmallDisk::mount("24m");
    let data = disk.path().join("data");
    let (mut up, addr) = ipam_up_with_api(&data);
    let (status, body) = publish(addr, &setup());
    assert_eq!(status, 202, "{body}");

    let filler = disk.path().join("filler");
    fill(&filler);
    // Leave a little room: the API takes a few batches, then the allocator's decisions fill it.
    let full = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&filler).unwrap().set_len(full - 512 * 1024).unwrap();
    // Publish until the log refuses: every 202 is a promise that must be kept.
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for batch in 0..400u32 {
        let first = batch * 50;
        let events: Vec<Value> = (first..first + 50).map(|n| vnic_started(1000 + n, n)).collect();
        let (status, body) = publish(addr, &events);
        match status {
            202 => acknowledged.extend(first..first + 50),
            503 => {
                refused = Some(body);
                break;
            }
            other => panic!("a full disk must answer 503, not {other}: {body}"),
        }
    }
    let refused = refused.expect("the full disk never refused an append");
    assert!(!acknowledged.is_empty(), "some appends fit before the disk filled");
    // Whether the allocator's own commits met the full disk depends on timing (SQLite may reuse
    // pages of its WAL); either way the process must live on and keep every promise below. The
    // driver's discard-and-rebuild path is exercised deterministically by the simulation's torn
    // batches.
    let error: Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(error["error"]["code"], "log_unavailable", "a 503 with a code: {refused}");

    // Space returns: the service carries on by itself, and keeps every promise.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = publish(addr, &[vnic_started(60_000, 50_000)]);
        if status == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "writes never came back ({status}: {body})");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut ips = std::collections::BTreeSet::new();
    for n in acknowledged.iter().copied().chain([50_000]) {
        assert!(ips.insert(reserved_ip(addr, n, Duration::from_secs(120))), "vNIC {n}'s address is held twice");
    }
    up.terminate();
}

/// What the API answers about the network and `count` vNICs: the network, each vNIC, and each
/// address's history.
fn answers(addr: SocketAddr, count: u32) -> Vec<(String, u16, String)> {
    let mut paths = vec![format!("/v1/networks/{NETWORK}"), "/v1/networks".to_owned()];
    for n in 0..count {
        paths.push(format!("/v1/vnics/{}", vnic_id(n)));
        paths.push(format!("/v1/ips/{}/history", reserved_ip(addr, n, Duration::from_secs(60))));
    }
    paths
        .into_iter()
        .map(|path| {
            let (status, body) = http(addr, "GET", &path, "application/json", b"");
            (path, status, body)
        })
        .collect()
}

/// Whether the process said its read model started from the snapshot.
fn started_from_snapshot(up: &Service) -> bool {
    std::fs::read_to_string(up.log_path()).unwrap_or_default().contains("The API's read model starts from its snapshot")
}

#[test]
fn the_api_restarts_from_its_read_model_snapshot_with_the_answers_it_gave_before() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, addr) = ipam_up_with_api(dir.path());
    let mut events = setup();
    events.extend((0..20).map(|n| vnic_started(100 + n, n)));
    let (status, body) = publish(addr, &events);
    assert_eq!(status, 202, "{body}");
    let before = answers(addr, 20);
    assert!(!started_from_snapshot(&up), "a fresh data directory has no snapshot to start from");
    up.terminate();
    assert!(
        dir.path().join("snapshots/api-read-model.snapshot").exists(),
        "a clean stop writes the read model's snapshot"
    );

    // A clean restart: the snapshot alone.
    let (mut up, addr) = ipam_up_with_api(dir.path());
    assert!(started_from_snapshot(&up), "the read model did not start from its snapshot");
    assert_eq!(answers(addr, 20), before, "the API answers otherwise after starting from its snapshot");

    // More after the snapshot, then kill -9: the snapshot and the records after it.
    let (status, body) = publish(addr, &(20..25).map(|n| vnic_started(100 + n, n)).collect::<Vec<_>>());
    assert_eq!(status, 202, "{body}");
    let before = answers(addr, 25);
    up.kill();
    let (mut up, addr) = ipam_up_with_api(dir.path());
    assert!(started_from_snapshot(&up), "the read model did not start from its snapshot");
    assert_eq!(answers(addr, 25), before, "the API answers otherwise after a kill and a restart from its snapshot");

    // The snapshot moved aside: the log read from the beginning gives the same answers.
    up.terminate();
    std::fs::rename(
        dir.path().join("snapshots/api-read-model.snapshot"),
        dir.path().join("api-read-model.snapshot.aside"),
    )
    .unwrap();
    let (mut up, addr) = ipam_up_with_api(dir.path());
    assert!(!started_from_snapshot(&up));
    assert_eq!(answers(addr, 25), before, "the snapshot and a read from the beginning disagree");
    up.terminate();
}

/// `ipam api` on its own (the split services on Kafka) keeps its read model's snapshot in its data
/// directory as `ipam up` does, and a restart starts from it with the same answers.
#[test]
fn the_api_on_kafka_restarts_from_its_read_model_snapshot() {
    let bootstrap = ipam_tests::kafka_bootstrap();
    let prefix = ipam_tests::unique_prefix("api-snap");
    let dir = tempfile::tempdir().unwrap();
    let spawn =
        |instance: &str, command: &str| Service::spawn_on_kafka(&bootstrap, &prefix, dir.path(), instance, &[command]);
    let start_api = || {
        let mut api = spawn("api", "api");
        let addr = api.address_after("API listening on http://", Duration::from_secs(60));
        (api, addr)
    };
    let mut allocator = spawn("allocator", "allocator");
    // The allocator creates the topics the API reads.
    allocator.wait_for("ipam is ready", Duration::from_secs(60));
    let (mut api, addr) = start_api();
    let mut events = setup();
    events.extend((0..10).map(|n| vnic_started(100 + n, n)));
    let (status, body) = publish(addr, &events);
    assert_eq!(status, 202, "{body}");
    let before = answers(addr, 10);
    assert!(!started_from_snapshot(&api), "a fresh data directory has no snapshot to start from");
    api.terminate();
    let snapshot = dir.path().join("api/snapshots/api-read-model.snapshot");
    assert!(snapshot.exists(), "a clean stop of `ipam api` writes the read model's snapshot");

    let (mut api, addr) = start_api();
    assert_eq!(answers(addr, 10), before, "the API answers otherwise after starting from its snapshot");
    assert!(started_from_snapshot(&api), "the read model did not start from its snapshot");
    api.terminate();
    allocator.terminate();
}
