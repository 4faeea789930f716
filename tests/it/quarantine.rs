//! Release quarantine end to end (issue 14), through `ipam up` with a fast clock: an address a vNIC
//! released is not given to another vNIC, dynamically or by a fixed request, until the network's
//! `release_quarantine_s` has passed on the log's partition ticks, and is after it.
//!
//! The allocator's refusal is what keeps the address unused: host agents serve reservations only
//! (dnsmasq's static ranges answer known MACs alone), so an address no vNIC holds is handed to no
//! guest by any DHCP server.

use std::time::{Duration, Instant};

use ipam_core::{Envelope, Event, Topic};
use serde_json::{Value, json};

use crate::api::{event, http, ipam_up_with_api_and};

const NETWORK: &str = "00000000-0000-0000-0000-0000000c1401";
const SUBNET: &str = "00000000-0000-0000-0000-0000000c1402";
const QUARANTINE_S: u64 = 8;

fn vnic_id(n: u32) -> String {
    format!("00000000-0000-0000-0000-0000000c15{n:02x}")
}

fn started(id: u32, n: u32, fixed_ip: Option<&str>) -> Value {
    let mut data = json!({"vnic_id": vnic_id(n), "vm_id": vnic_id(n), "network_id": NETWORK, "subnet_id": SUBNET,
                          "mac": format!("52:54:00:c1:00:{n:02x}")});
    if let Some(ip) = fixed_ip {
        data["requested_ip"] = json!(ip);
    }
    event(id, "ipam.vnic.started.v1", data)
}

/// The id `event(id, ..)` gives its envelope.
fn event_id(id: u32) -> String {
    event(id, "x", json!({}))["id"].as_str().unwrap().to_owned()
}

fn publish(addr: std::net::SocketAddr, events: &[Value]) {
    let (status, body) =
        http(addr, "POST", "/v1/events", "application/json", Value::from(events.to_vec()).to_string().as_bytes());
    assert_eq!(status, 202, "{body}");
}

/// What the allocator answered to input `id`: a reservation's address or a rejection's code, once
/// it is in the log (waits up to 30 s).
fn outcome(log: &dyn ipam_log::EventLog, id: u32) -> Result<String, String> {
    let cause: ipam_core::EventId = event_id(id).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for partition in 0..log.partition_count(Topic::Reservations.name()).unwrap() {
            let records = log.read(Topic::Reservations.name(), partition, 0, 100_000, Duration::ZERO).unwrap();
            for record in records {
                match Envelope::decode(&record.value).map(|envelope| envelope.event) {
                    Ok(Event::ReservationAdded(added)) if added.cause == cause => return Ok(added.ip.to_string()),
                    Ok(Event::RequestRejected(rejected)) if rejected.cause == cause => {
                        return Err(rejected.code.to_string());
                    }
                    _ => {}
                }
            }
        }
        assert!(Instant::now() < deadline, "no answer to input {id} in the log");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_released_address_is_not_reused_by_another_vnic_within_its_quarantine_and_is_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, addr) = ipam_up_with_api_and(dir.path(), &["--tick-interval-ms", "200"]);
    let log = ipam_tests::BackendSpec::Sqlite(dir.path().join("log")).open().unwrap();

    // A /29: .2 to .6, all held by vNICs 1 to 5.
    let mut setup = vec![
        event(
            1,
            "ipam.network.upserted.v1",
            json!({"network_id": NETWORK, "name": "quarantine", "ipam_enabled": true}),
        ),
        event(
            2,
            "ipam.subnet.added.v1",
            json!({"network_id": NETWORK, "subnet_id": SUBNET, "cidr": "10.66.0.0/29", "gateway": "10.66.0.1"}),
        ),
        event(
            3,
            "ipam.network.policy_set.v1",
            json!({"network_id": NETWORK, "policy": {"release_quarantine_s": QUARANTINE_S}}),
        ),
    ];
    setup.extend((1..=5).map(|n| started(10 + n, n, None)));
    publish(addr, &setup);
    let held: Vec<String> = (1..=5).map(|n| outcome(&*log, 10 + n).expect("the /29 holds five vNICs")).collect();
    assert_eq!(held[0], "10.66.0.2", "{held:?}");

    let released_at = Instant::now();
    publish(addr, &[event(20, "ipam.vnic.stopped.v1", json!({"vnic_id": vnic_id(1), "network_id": NETWORK}))]);
    // Within the quarantine: neither a new vNIC nor a fixed request from another MAC gets .2.
    publish(addr, &[started(21, 6, None), started(22, 7, Some("10.66.0.2"))]);
    let (dynamic, fixed) = (outcome(&*log, 21), outcome(&*log, 22));
    let answered_within = released_at.elapsed();
    assert!(
        answered_within < Duration::from_secs(QUARANTINE_S - 2),
        "the machine took {answered_within:?} to answer; too loaded to tell a quarantine apart"
    );
    assert_eq!(dynamic, Err("subnet_exhausted".to_owned()), "the released address is withheld from new vNICs");
    assert_eq!(fixed, Err("ip_quarantined".to_owned()), "and from a fixed request of another MAC");

    // After it: vNIC 6 asks again (a new request each time) until it gets an address: .2.
    let mut id = 30;
    let reused = loop {
        publish(addr, &[started(id, 6, None)]);
        if let Ok(ip) = outcome(&*log, id) {
            break ip;
        }
        assert!(released_at.elapsed() < Duration::from_secs(QUARANTINE_S + 30), "the quarantine never ended");
        id += 1;
        std::thread::sleep(Duration::from_millis(250));
    };
    let reused_after = released_at.elapsed();
    assert_eq!(reused, "10.66.0.2");
    // The quarantine is dated by the last tick before the release: at most a tick interval (and
    // the clock's lag) earlier than the stop was published.
    assert!(reused_after >= Duration::from_secs(QUARANTINE_S - 1), "reused after {reused_after:?}");
    up.terminate();
}
