//! The HTTP API of a running `ipam up`, through a real HTTP client (a plain HTTP/1.1 exchange over
//! a TCP socket): the whole lifecycle of a vNIC, and bad requests refused with a message and no
//! change of state.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ipam_core::Topic;
use serde_json::{Value, json};

use crate::recovery::Service;

/// `ipam up` in `dir`, its API on a free port: the service, ready, and where its API listens.
pub fn ipam_up_with_api(dir: &std::path::Path) -> (Service, SocketAddr) {
    let args: Vec<String> =
        ["--data-dir", &dir.display().to_string(), "--api-bind", "127.0.0.1:0", "up"].map(str::to_owned).to_vec();
    let mut up = Service::spawn(&args);
    let line = up.wait_for_line("API listening on http://", Duration::from_secs(60));
    let addr = line.split("http://").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    up.wait_for("ipam is ready", Duration::from_secs(60));
    (up, addr)
}

/// One request; the status and the body.
pub(crate) fn http(addr: SocketAddr, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before reading a large body and close: a failed write is fine then.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    // Chunked bodies: keep the JSON between the chunk sizes.
    let body = if body.trim_start().starts_with('{') || body.trim_start().starts_with('[') {
        body
    } else {
        let json: String = body.lines().filter(|line| line.starts_with('{') || line.starts_with('[')).collect();
        if json.is_empty() { body } else { json }
    };
    (status, body)
}

pub(crate) fn event(id: u32, type_name: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0", "id": format!("00000000-0000-0000-0000-0000000a{id:04x}"), "source": "engine",
        "type": type_name, "time": "2026-11-30T00:00:00Z", "data": data,
    })
}

#[test]
fn api_takes_engine_events_and_shows_the_reservation_until_the_vnic_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, addr) = ipam_up_with_api(dir.path());
    let log = ipam_tests::BackendSpec::Sqlite(dir.path().join("log")).open().unwrap();

    let network = "00000000-0000-0000-0000-00000000aa01";
    let vnic = "00000000-0000-0000-0000-00000000aa05";
    let batch = json!([
        event(1, "ipam.network.upserted.v1", json!({"network_id": network, "name": "api", "ipam_enabled": true})),
        event(
            2,
            "ipam.subnet.added.v1",
            json!({"network_id": network, "subnet_id": "00000000-0000-0000-0000-00000000aa02",
            "cidr": "10.99.0.0/24", "gateway": "10.99.0.1", "dns_servers": ["10.99.0.53"]})
        ),
        event(
            3,
            "ipam.host.upserted.v1",
            json!({"host_id": "00000000-0000-0000-0000-00000000aa03", "name": "h",
            "status": "up", "networks": [{"network_id": network, "interface": "br0"}]})
        ),
        event(
            4,
            "ipam.vnic.started.v1",
            json!({"vnic_id": vnic, "vm_id": "00000000-0000-0000-0000-00000000aa06",
            "network_id": network, "subnet_id": "00000000-0000-0000-0000-00000000aa02", "mac": "52:54:00:aa:00:05"})
        ),
    ]);
    let (status, body) = http(addr, "POST", "/v1/events", "application/json", batch.to_string().as_bytes());
    assert_eq!(status, 202, "{body}");
    let accepted: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(accepted["ids"].as_array().map(Vec::len), Some(4), "{body}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let ip = loop {
        let (status, body) = http(addr, "GET", &format!("/v1/vnics/{vnic}"), "application/json", b"");
        if status == 200 {
            let view: Value = serde_json::from_str(&body).unwrap();
            if let Some(ip) = view["reservation"]["ip"].as_str() {
                assert!(view["position"].is_object(), "every answer says which log position it reflects: {body}");
                break ip.to_owned();
            }
        }
        assert!(Instant::now() < deadline, "the reservation never became visible");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ip.starts_with("10.99.0."), "{ip}");
    let (status, body) = http(addr, "GET", &format!("/v1/networks/{network}"), "application/json", b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&ip), "the network lists the reservation: {body}");

    // Bad requests: each a 4xx with a message, and nothing reaches the log.
    let ends = || (0..8).map(|p| log.end_offset(Topic::Networks.name(), p).unwrap()).collect::<Vec<_>>();
    let before = ends();
    let wrong_type =
        event(5, "ipam.network.upserted.v1", json!({"network_id": network, "name": "x", "ipam_enabled": "yes"}));
    let unknown = event(6, "ipam.vm.exploded.v1", json!({"network_id": network}));
    let oversized = vec![b' '; 4 << 20];
    for (what, body, expected_field) in [
        ("malformed JSON", b"{\"specversion\": ".to_vec(), None),
        ("wrong field type", wrong_type.to_string().into_bytes(), Some("data.ipam_enabled")),
        ("unknown event type", unknown.to_string().into_bytes(), None),
        ("oversized body", oversized, None),
    ] {
        let (status, answer) = http(addr, "POST", "/v1/events", "application/json", &body);
        assert!((400..500).contains(&status), "{what}: status {status}");
        let error: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
        assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: no message in {answer}");
        if let Some(field) = expected_field {
            assert_eq!(error["error"]["field"], field, "{what}: {answer}");
        }
    }
    assert_eq!(ends(), before, "a refused request changed the log");

    let stop = event(7, "ipam.vnic.stopped.v1", json!({"vnic_id": vnic, "network_id": network}));
    let (status, body) = http(addr, "POST", "/v1/events", "application/cloudevents+json", stop.to_string().as_bytes());
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http(addr, "GET", &format!("/v1/vnics/{vnic}"), "application/json", b"");
        let view: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if view["reservation"].is_null() && !view.is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "the release never became visible: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, metrics) = http(addr, "GET", "/metrics", "text/plain", b"");
    assert_eq!(status, 200);
    for name in [
        "ipam_pipeline_events_processed_total{driver=\"allocator\"}",
        "ipam_pipeline_processing_seconds_bucket",
        "ipam_consumer_lag",
        "ipam_subnet_utilization",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    let (status, body) = http(addr, "GET", &format!("/v1/ips/{ip}/history"), "application/json", b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("52:54:00:aa:00:05"), "the history names the former holder: {body}");
    up.terminate();
}
