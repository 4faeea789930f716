//! The vNIC's real state end to end (issue 14), through `ipam up` with a fast clock and its API:
//! a reserved vNIC shows `reserved`; a lease event, published as a host agent would, makes it
//! `leased` (the allocator matches it and echoes `ipam.vnic.lease_changed.v1`); a vNIC no guest
//! leases is reported by `ipam.vnic.unleased.v1` after its network's `unleased_after_s`, on the
//! log's partition ticks; a lease of a MAC without reservation is a conflict. The metrics count
//! each.
//!
//! No host agent runs here, so nothing is `served`: the API crate's tests cover that step from
//! `ipam.dhcp_server.synced.v1`, and `leases.rs` a real guest behind a real dnsmasq.

use std::time::{Duration, Instant};

use ipam_core::{Envelope, Event, Topic};
use serde_json::{Value, json};

use crate::api::{event, http, ipam_up_with_api_and};

const NETWORK: &str = "00000000-0000-0000-0000-0000000c1701";
const SUBNET: &str = "00000000-0000-0000-0000-0000000c1702";
const HOST: &str = "00000000-0000-0000-0000-0000000c1703";
const UNLEASED_AFTER_S: u64 = 2;

fn vnic_id(n: u32) -> String {
    format!("00000000-0000-0000-0000-0000000c18{n:02x}")
}

fn mac(n: u32) -> String {
    format!("52:54:00:c1:70:{n:02x}")
}

pub(crate) fn publish(addr: std::net::SocketAddr, events: &[Value]) {
    let (status, body) =
        http(addr, "POST", "/v1/events", "application/json", Value::from(events.to_vec()).to_string().as_bytes());
    assert_eq!(status, 202, "{body}");
}

pub(crate) fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "application/json", b"")
}

/// GETs `path` until `done` holds for its JSON (30 s at most).
pub(crate) fn until(addr: std::net::SocketAddr, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(addr, path);
        let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if status == 200 && done(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: never true; last answer {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_vnic_goes_from_reserved_to_leased_and_one_no_guest_leases_is_reported_unleased() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, addr) = ipam_up_with_api_and(dir.path(), &["--tick-interval-ms", "200"]);
    let started = |id: u32, n: u32| {
        let data = json!({"vnic_id": vnic_id(n), "vm_id": vnic_id(n), "network_id": NETWORK, "subnet_id": SUBNET,
                          "mac": mac(n)});
        event(id, "ipam.vnic.started.v1", data)
    };
    publish(
        addr,
        &[
            event(
                1,
                "ipam.network.upserted.v1",
                json!({"network_id": NETWORK, "name": "leases", "ipam_enabled": true}),
            ),
            event(
                2,
                "ipam.subnet.added.v1",
                json!({"network_id": NETWORK, "subnet_id": SUBNET, "cidr": "10.67.0.0/24", "gateway": "10.67.0.1"}),
            ),
            event(
                3,
                "ipam.network.policy_set.v1",
                json!({"network_id": NETWORK, "policy": {"unleased_after_s": UNLEASED_AFTER_S}}),
            ),
            started(11, 1),
            started(12, 2),
        ],
    );
    let leased_path = format!("/v1/vnics/{}", vnic_id(1));
    let view = until(addr, &leased_path, "vNIC 1 reserved", |v| v["state"] == "reserved");
    let ip = view["reservation"]["ip"].as_str().unwrap().to_owned();
    assert!(view["progress"]["reserved_at"].is_string(), "{view}");

    // The guest of vNIC 1 takes its address, as its host agent reports it.
    let lease = |id: u32, n: u32, ip: &str| {
        let data = json!({"network_id": NETWORK, "host_id": HOST, "mac": mac(n), "ip": ip,
                          "observed_at": "2026-11-30T00:00:01Z", "expires_at": "2026-11-30T01:00:01Z"});
        event(id, "ipam.lease.granted.v1", data)
    };
    publish(addr, &[lease(21, 1, &ip)]);
    let view = until(addr, &leased_path, "vNIC 1 leased", |v| v["state"] == "leased");
    assert_eq!(view["progress"]["lease"]["host_id"], HOST, "{view}");
    assert_eq!(view["progress"]["lease"]["expires_at"], "2026-11-30T01:00:01Z", "{view}");
    assert!(view["progress"]["leased_at"].is_string(), "{view}");

    // vNIC 2's guest never asks: reported once its time is up on the log's clock.
    let view = until(addr, &format!("/v1/vnics/{}", vnic_id(2)), "vNIC 2 reported unleased", |v| {
        v["progress"]["unleased_reported_at"].is_string()
    });
    assert_eq!(view["state"], "reserved", "{view}");
    let log = ipam_tests::BackendSpec::Sqlite(dir.path().join("log")).open().unwrap();
    let vnic_2: ipam_core::VnicId = vnic_id(2).parse().unwrap();
    let reports: Vec<ipam_core::event::VnicUnleased> = outputs(&*log)
        .into_iter()
        .filter_map(|event| match event {
            Event::VnicUnleased(e) if e.vnic_id == vnic_2 => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(reports.len(), 1, "reported once per reservation: {reports:?}");
    let waited_ms = reports[0].now.unix_ms() - reports[0].reserved_at.unix_ms();
    assert!(waited_ms >= UNLEASED_AFTER_S as i64 * 1000, "reported before its time: {reports:?}");

    // A lease of a MAC that holds no reservation is a conflict.
    publish(addr, &[lease(22, 9, "10.67.0.200")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (_, text) = get(addr, "/metrics");
        if text.contains("kind=\"no_reservation\"} 1") {
            break text;
        }
        assert!(Instant::now() < deadline, "no lease conflict in the metrics:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    for wanted in [
        format!("ipam_vnics_unleased{{network=\"{NETWORK}\",network_name=\"leases\"}} 1\n"),
        format!("ipam_vnics{{network=\"{NETWORK}\",network_name=\"leases\",state=\"leased\"}} 1\n"),
        "ipam_vnic_lease_seconds_count 1\n".to_owned(),
    ] {
        assert!(metrics.contains(&wanted), "no {wanted:?} in\n{metrics}");
    }
    up.terminate();
}

/// Every event on `ipam.reservations` so far.
fn outputs(log: &dyn ipam_log::EventLog) -> Vec<Event> {
    let mut events = Vec::new();
    for partition in 0..log.partition_count(Topic::Reservations.name()).unwrap() {
        let records = log.read(Topic::Reservations.name(), partition, 0, 1_000_000, Duration::ZERO).unwrap();
        events.extend(records.iter().filter_map(|record| Envelope::decode(&record.value).ok().map(|e| e.event)));
    }
    events
}
