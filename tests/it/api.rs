//! The HTTP API of a running `ipam up`, through a real HTTP client (a plain HTTP/1.1 exchange over
//! a TCP socket): the whole lifecycle of a vNIC, and bad requests refused with a message and no
//! change of state: a few by hand, and the corpus in `tests/data/bad-inputs.json`, each with the
//! status and code the OpenAPI document gives it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ipam_core::Topic;
use serde_json::{Value, json};

use crate::recovery::Service;

/// `ipam up` in `dir`, its API on a free port: the service, ready, and where its API listens.
pub fn ipam_up_with_api(dir: &std::path::Path) -> (Service, SocketAddr) {
    ipam_up_with_api_and(dir, &[])
}

/// [`ipam_up_with_api`] with more global flags (before `up`).
pub fn ipam_up_with_api_and(dir: &std::path::Path, flags: &[&str]) -> (Service, SocketAddr) {
    let mut args: Vec<String> =
        ["--data-dir", &dir.display().to_string(), "--api-bind", "127.0.0.1:0"].map(str::to_owned).to_vec();
    args.extend(flags.iter().map(|flag| (*flag).to_owned()));
    args.push("up".to_owned());
    let mut up = Service::spawn(&args);
    let addr = up.address_after("API listening on http://", Duration::from_secs(60));
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
    // No clock: its partition ticks would move the ends of ipam.networks that a refused request
    // must leave as they were.
    let (mut up, addr) = ipam_up_with_api_and(dir.path(), &["--tick-interval-ms", "0"]);
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
        let (status, body) = http(addr, "GET", &format!("/v1/vnics/{vnic}?position=true"), "application/json", b"");
        if status == 200 {
            let view: Value = serde_json::from_str(&body).unwrap();
            if let Some(ip) = view["reservation"]["ip"].as_str() {
                assert!(
                    view["position"].is_object(),
                    "an answer asked for says which log position it reflects: {body}"
                );
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

/// What the served OpenAPI document's schema `name` finds wrong with `answer`: a validator of the
/// whole document rooted at that schema, so every ref must resolve inside the document (nothing
/// is fetched).
fn openapi_errors(document: &Value, name: &str, answer: &Value) -> Vec<String> {
    let mut root = document.clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["$ref"] = json!(format!("#/components/schemas/{name}"));
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("the document's {name} does not build offline: {e}"));
    validator.iter_errors(answer).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

fn check_against_openapi(document: &Value, name: &str, answer: &Value) {
    let errors = openapi_errors(document, name, answer);
    assert!(errors.is_empty(), "{name} refuses the real answer {answer}: {errors:#?}");
}

/// GETs `path`; the answer, which must be 200.
fn get_ok(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, "application/json", b"");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Posts `batch` with `?wait=10s`; the status and the answer.
fn post_waiting(addr: SocketAddr, batch: &Value) -> (u16, Value) {
    let (status, body) = http(addr, "POST", "/v1/events?wait=10s", "application/json", batch.to_string().as_bytes());
    (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}")))
}

#[test]
fn a_write_that_waits_answers_each_event_with_its_decision_in_request_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, addr) = ipam_up_with_api(dir.path());
    let network = "00000000-0000-0000-0000-00000000bb01";
    let subnet = "00000000-0000-0000-0000-00000000bb02";
    let host = "00000000-0000-0000-0000-00000000bb03";
    let vnic = |n: u32| format!("00000000-0000-0000-0000-0000000bb{n:03x}");
    let started = |id: u32, n: u32, subnet: Option<&str>, requested: Option<&str>| {
        let mut data = json!({"vnic_id": vnic(n), "vm_id": "00000000-0000-0000-0000-00000000bbff",
            "network_id": network, "mac": format!("52:54:00:bb:00:{n:02x}")});
        if let Some(subnet) = subnet {
            data["subnet_id"] = json!(subnet);
        }
        if let Some(ip) = requested {
            data["requested_ip"] = json!(ip);
        }
        event(id, "ipam.vnic.started.v1", data)
    };
    let setup = json!([
        event(
            0x100,
            "ipam.network.upserted.v1",
            json!({"network_id": network, "name": "decided", "ipam_enabled": true})
        ),
        event(
            0x101,
            "ipam.subnet.added.v1",
            json!({"network_id": network, "subnet_id": subnet,
            "cidr": "10.98.0.0/29", "gateway": "10.98.0.1"})
        ),
        event(
            0x102,
            "ipam.host.upserted.v1",
            json!({"host_id": host, "name": "rack-1",
            "status": "up", "networks": [{"network_id": network, "interface": "br0"}]})
        ),
    ]);
    let (status, answer) = post_waiting(addr, &setup);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["complete"], true, "{answer}");
    let kinds: Vec<&str> =
        answer["outcomes"].as_array().unwrap().iter().map(|o| o["outcome"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["nothing_to_decide"; 3], "{answer}");

    // A reservation, a refusal (the address is taken), a vNIC without a subnet, in request order.
    let batch = json!([
        started(0x110, 1, Some(subnet), Some("10.98.0.5")),
        started(0x111, 2, Some(subnet), Some("10.98.0.5")),
        started(0x112, 3, None, None),
    ]);
    let (status, answer) = post_waiting(addr, &batch);
    assert_eq!(status, 200, "{answer}");
    let outcomes = answer["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 3, "{answer}");
    let reserved = &outcomes[0];
    assert_eq!(reserved["outcome"], "reserved", "{answer}");
    assert_eq!(reserved["event_id"], batch[0]["id"], "{answer}");
    assert_eq!(reserved["type"], "ipam.vnic.started.v1", "{answer}");
    assert_eq!((&reserved["ip"], &reserved["cidr"]), (&json!("10.98.0.5"), &json!("10.98.0.0/29")), "{answer}");
    assert_eq!((&reserved["vnic_id"], &reserved["mac"]), (&json!(vnic(1)), &json!("52:54:00:bb:00:01")), "{answer}");
    assert_eq!(reserved["subnet_id"], subnet, "{answer}");
    assert!(reserved["served_by"].is_array(), "{answer}");
    let rejected = &outcomes[1];
    assert_eq!(rejected["outcome"], "rejected", "{answer}");
    assert_eq!(rejected["code"], "ip_in_use", "{answer}");
    assert_eq!((&rejected["vnic_id"], &rejected["mac"]), (&json!(vnic(2)), &json!("52:54:00:bb:00:02")), "{answer}");
    assert_eq!(rejected["subnet_id"], subnet, "{answer}");
    assert!(rejected["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    assert_eq!(outcomes[2]["outcome"], "nothing_to_decide", "{answer}");
    // The network's own list of rejections names what was refused too.
    let view = get_ok(addr, &format!("/v1/networks/{network}?after={}", answer["after"].as_str().unwrap()));
    let listed = &view["rejections"][0];
    assert_eq!((&listed["code"], &listed["vnic_id"]), (&json!("ip_in_use"), &json!(vnic(2))), "{view}");
    assert_eq!((&listed["mac"], &listed["subnet_id"]), (&json!("52:54:00:bb:00:02"), &json!(subnet)), "{view}");

    // The token reads the decisions back at once; the release names what it gave back.
    let after = answer["after"].as_str().unwrap().to_owned();
    let (status, body) = http(addr, "GET", &format!("/v1/vnics/{}?after={after}", vnic(1)), "application/json", b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("10.98.0.5"), "{body}");
    let (status, answer) = post_waiting(
        addr,
        &json!([event(0x120, "ipam.vnic.stopped.v1", json!({"vnic_id": vnic(1), "network_id": network}))]),
    );
    assert_eq!(status, 200, "{answer}");
    let released = &answer["outcomes"][0];
    assert_eq!((&released["outcome"], &released["ip"]), (&json!("released"), &json!("10.98.0.5")), "{answer}");
    assert_eq!((&released["vnic_id"], &released["mac"]), (&json!(vnic(1)), &json!("52:54:00:bb:00:01")), "{answer}");

    // Without the option the answer is what it always was.
    let (status, body) = http(
        addr,
        "POST",
        "/v1/events",
        "application/json",
        started(0x130, 4, Some(subnet), None).to_string().as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    let plain: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(plain.as_object().unwrap().keys().collect::<Vec<_>>(), ["ids", "positions"], "{body}");

    // Every answer matches the schema the served document gives it.
    let document = get_ok(addr, "/openapi.json");
    check_against_openapi(&document, "Accepted", &plain);
    check_against_openapi(&document, "Accepted", &answer);
    let landed = &plain["positions"][0];
    let token = format!(
        "{}/{}/{}",
        landed["topic"].as_str().unwrap(),
        landed["partition"],
        landed["offset"].as_u64().unwrap() + 1
    );
    let vnic4 = get_ok(addr, &format!("/v1/vnics/{}?after={token}&position=true", vnic(4)));
    assert!(vnic4["reservation"]["ip"].is_string(), "read after the write: {vnic4}");
    assert!(vnic4["position"].is_object(), "{vnic4}");
    check_against_openapi(&document, "VnicView", &vnic4);
    let mut broken = vnic4.clone();
    broken["reservation"]["ip"] = json!("10.98.0.999");
    broken.as_object_mut().unwrap().remove("vm_id");
    assert_eq!(openapi_errors(&document, "VnicView", &broken).len(), 2, "the schema checks what it says");
    for (name, path) in [
        ("NetworkList", "/v1/networks?position=true".to_owned()),
        ("NetworkView", format!("/v1/networks/{network}")),
        ("ReservationPage", format!("/v1/networks/{network}/reservations?limit=1")),
        ("VnicList", format!("/v1/vnics?network={network}")),
        ("HostList", "/v1/hosts".to_owned()),
        ("HostView", format!("/v1/hosts/{host}")),
        ("History", "/v1/ips/10.98.0.5/history".to_owned()),
        ("History", format!("/v1/vnics/{}/history?at=2026-11-30T00:00:00Z", vnic(1))),
        ("History", "/v1/macs/52:54:00:bb:00:01/history".to_owned()),
    ] {
        check_against_openapi(&document, name, &get_ok(addr, &path));
    }
    let hosts = get_ok(addr, "/v1/hosts");
    assert_eq!(hosts["hosts"][0]["name"], "rack-1", "{hosts}");
    let (status, body) = http(addr, "GET", "/v1/vnics?limit=0", "application/json", b"");
    assert_eq!(status, 400);
    check_against_openapi(&document, "Error", &serde_json::from_str(&body).unwrap());
    up.terminate();
}

#[test]
fn a_write_that_waits_is_answered_by_the_split_services_on_kafka() {
    let bootstrap = ipam_tests::kafka_bootstrap();
    let prefix = ipam_tests::unique_prefix("wait");
    let dir = tempfile::tempdir().unwrap();
    let spawn =
        |instance: &str, command: &str| Service::spawn_on_kafka(&bootstrap, &prefix, dir.path(), instance, &[command]);
    let mut allocator = spawn("allocator", "allocator");
    let mut placement = spawn("placement", "placement");
    let mut api = spawn("api", "api");
    let addr = api.address_after("API listening on http://", Duration::from_secs(60));

    let network = "00000000-0000-0000-0000-00000000dd01";
    let subnet = "00000000-0000-0000-0000-00000000dd02";
    let batch = json!([
        event(0x300, "ipam.network.upserted.v1", json!({"network_id": network, "name": "kafka", "ipam_enabled": true})),
        event(
            0x301,
            "ipam.subnet.added.v1",
            json!({"network_id": network, "subnet_id": subnet,
            "cidr": "10.97.0.0/24", "gateway": "10.97.0.1"})
        ),
        event(
            0x302,
            "ipam.host.upserted.v1",
            json!({"host_id": "00000000-0000-0000-0000-00000000dd03",
            "name": "k", "status": "up", "networks": [{"network_id": network, "interface": "br0"}]})
        ),
        event(
            0x303,
            "ipam.vnic.started.v1",
            json!({"vnic_id": "00000000-0000-0000-0000-00000000dd05",
            "vm_id": "00000000-0000-0000-0000-00000000dd06", "network_id": network, "subnet_id": subnet,
            "mac": "52:54:00:dd:00:05"})
        ),
    ]);
    // The services make the topics as they start (503 until then, nothing written); the wait covers
    // their joining their groups.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, body) = loop {
        let (status, body) =
            http(addr, "POST", "/v1/events?wait=50s", "application/json", batch.to_string().as_bytes());
        if status != 503 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let kinds: Vec<&str> =
        answer["outcomes"].as_array().unwrap().iter().map(|o| o["outcome"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["nothing_to_decide", "nothing_to_decide", "nothing_to_decide", "reserved"], "{body}");
    assert_eq!(answer["outcomes"][3]["cidr"], "10.97.0.0/24", "{body}");
    // Reading after the write's token answers at once, past the transaction markers.
    let after = answer["after"].as_str().unwrap();
    let started = Instant::now();
    let (status, body) = http(
        addr,
        "GET",
        &format!("/v1/vnics/00000000-0000-0000-0000-00000000dd05?after={after}"),
        "application/json",
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    for service in [&mut api, &mut placement, &mut allocator] {
        service.terminate();
    }
}

/// One request exactly as given (method, raw path, headers, body bytes) on its own connection: the
/// status and the body, de-chunked.
fn raw_request(addr: SocketAddr, method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before reading a large body and close: a failed write is fine then.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return (status, text) };
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return (status, body.to_owned());
    }
    let (mut rest, mut decoded) = (body, String::new());
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        decoded.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    (status, decoded)
}

/// One entry of `tests/data/bad-inputs.json`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BadInput {
    name: String,
    method: String,
    path: String,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
    body: Option<Value>,
    body_text: Option<String>,
    body_hex: Option<String>,
    body_repeat: Option<Repeat>,
    expected_status: u16,
    expected_code: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Repeat {
    text: String,
    times: usize,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    suffix: String,
}

impl BadInput {
    fn body(&self) -> Vec<u8> {
        match (&self.body, &self.body_text, &self.body_hex, &self.body_repeat) {
            (Some(body), None, None, None) => body.to_string().into_bytes(),
            (None, Some(text), None, None) => text.clone().into_bytes(),
            (None, None, Some(hex), None) => {
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
            }
            (None, None, None, Some(repeat)) => {
                format!("{}{}{}", repeat.prefix, repeat.text.repeat(repeat.times), repeat.suffix).into_bytes()
            }
            (None, None, None, None) => Vec::new(),
            _ => panic!("{}: more than one body", self.name),
        }
    }

    /// The headers sent: the token and (for a POST) `application/json` unless the entry says
    /// otherwise; a null value leaves a header out.
    fn headers(&self, token: &str) -> Vec<(String, String)> {
        let mut headers = serde_json::Map::new();
        headers.insert("Authorization".to_owned(), json!(format!("Bearer {token}")));
        if self.method == "POST" {
            headers.insert("Content-Type".to_owned(), json!("application/json"));
        }
        headers.extend(self.headers.clone());
        headers
            .into_iter()
            .filter_map(|(name, value)| match value {
                Value::Null => None,
                Value::String(value) => Some((name, value)),
                other => panic!("{}: header {name} is {other}, not a string", self.name),
            })
            .collect()
    }
}

/// What a client can see of the state: every read endpoint's answer with its positions left out,
/// and every topic's end offsets.
fn visible_state(addr: SocketAddr, token: &str, log: &dyn ipam_log::EventLog, paths: &[String]) -> Vec<String> {
    let auth = [("Authorization".to_owned(), format!("Bearer {token}"))];
    let mut state = Vec::new();
    for path in paths {
        let (status, body) = raw_request(addr, "GET", path, &auth, b"");
        let mut body: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: {status} {body}"));
        if let Value::Object(object) = &mut body {
            object.remove("position");
        }
        state.push(format!("{path}: {status} {body}"));
    }
    for topic in Topic::ALL {
        let ends: Vec<u64> = (0..log.partition_count(topic.name()).unwrap())
            .map(|partition| log.end_offset(topic.name(), partition).unwrap())
            .collect();
        state.push(format!("{}: {ends:?}", topic.name()));
    }
    state
}

#[test]
fn every_bad_input_of_the_corpus_gets_its_documented_status_and_code_and_changes_nothing() {
    const TOKEN: &str = "corpus-token";
    let corpus: Value =
        serde_json::from_str(include_str!("../data/bad-inputs.json")).expect("tests/data/bad-inputs.json is JSON");
    let entries: Vec<BadInput> = serde_json::from_value(corpus["entries"].clone()).expect("entries");
    assert!(entries.len() >= 150, "the corpus holds {} entries", entries.len());
    let names: std::collections::BTreeSet<&str> = entries.iter().map(|entry| entry.name.as_str()).collect();
    assert_eq!(names.len(), entries.len(), "every entry has its own name");

    let dir = tempfile::tempdir().unwrap();
    // No clock: ticks would move the log's ends while the corpus runs.
    let (mut up, addr) = ipam_up_with_api_and(dir.path(), &["--api-token", TOKEN, "--tick-interval-ms", "0"]);
    let documented = documented_errors(addr, TOKEN);
    for entry in &entries {
        assert!(
            documented.contains(&(entry.expected_status, entry.expected_code.clone())),
            "{}: {} {} is not an answer the OpenAPI document lists (x-error-codes of the document and of an operation)",
            entry.name,
            entry.expected_status,
            entry.expected_code
        );
    }
    let log = ipam_tests::BackendSpec::Sqlite(dir.path().join("log")).open().unwrap();
    // Some state for bad inputs to damage: the ids the corpus's events name.
    let (network, subnet, vnic) = (
        "00000000-0000-0000-0000-00000000bb01",
        "00000000-0000-0000-0000-00000000bb02",
        "00000000-0000-0000-0000-00000000bb05",
    );
    let seed = json!([
        event(
            0x101,
            "ipam.network.upserted.v1",
            json!({"network_id": network, "name": "corpus", "ipam_enabled": true})
        ),
        event(
            0x102,
            "ipam.subnet.added.v1",
            json!({"network_id": network, "subnet_id": subnet,
            "cidr": "10.77.0.0/24", "gateway": "10.77.0.1", "allocation_pools": [{"start": "10.77.0.10", "end": "10.77.0.99"}]})
        ),
        event(
            0x103,
            "ipam.vnic.started.v1",
            json!({"vnic_id": vnic, "vm_id": "00000000-0000-0000-0000-00000000bb06",
            "network_id": network, "subnet_id": subnet, "mac": "52:54:00:bb:00:05"})
        ),
    ]);
    let auth = [
        ("Authorization".to_owned(), format!("Bearer {TOKEN}")),
        ("Content-Type".to_owned(), "application/json".to_owned()),
    ];
    let (status, body) = raw_request(addr, "POST", "/v1/events", &auth, seed.to_string().as_bytes());
    assert_eq!(status, 202, "{body}");
    let paths: Vec<String> = [
        "/v1/networks".to_owned(),
        format!("/v1/networks/{network}"),
        format!("/v1/vnics/{vnic}"),
        "/v1/hosts/00000000-0000-0000-0000-00000000bb03".to_owned(),
        "/v1/ips/10.77.0.10/history".to_owned(),
    ]
    .to_vec();
    // Settled: the reservation is visible and two looks a moment apart agree.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let first = visible_state(addr, TOKEN, &*log, &paths);
        std::thread::sleep(Duration::from_millis(300));
        let second = visible_state(addr, TOKEN, &*log, &paths);
        if first == second && first[2].contains("10.77.0.10") {
            break second;
        }
        assert!(Instant::now() < deadline, "the seeded state never settled:\n{}", second.join("\n"));
    };

    let mut wrong = Vec::new();
    for entry in &entries {
        let (status, body) = raw_request(addr, &entry.method, &entry.path, &entry.headers(TOKEN), &entry.body());
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let code = answer["error"]["code"].as_str().unwrap_or("");
        let message = answer["error"]["message"].as_str().unwrap_or("");
        if status != entry.expected_status || code != entry.expected_code || message.is_empty() {
            wrong.push(format!(
                "{}: expected {} {}, got {status} {}",
                entry.name,
                entry.expected_status,
                entry.expected_code,
                body.chars().take(300).collect::<String>()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} bad inputs were answered otherwise:\n{}",
        wrong.len(),
        entries.len(),
        wrong.join("\n")
    );
    let after = visible_state(addr, TOKEN, &*log, &paths);
    assert_eq!(after, before, "bad inputs changed the state");
    up.terminate();
}

/// Every (status, code) the served OpenAPI document lists both in its table (`x-error-codes`) and
/// under some operation's response of that status.
fn documented_errors(addr: SocketAddr, token: &str) -> std::collections::BTreeSet<(u16, String)> {
    let auth = [("Authorization".to_owned(), format!("Bearer {token}"))];
    let (status, body) = raw_request(addr, "GET", "/openapi.json", &auth, b"");
    assert_eq!(status, 200, "{body}");
    let document: Value = serde_json::from_str(&body).unwrap();
    let table: std::collections::BTreeSet<(u16, String)> = document["x-error-codes"]
        .as_array()
        .expect("the document lists its error codes in x-error-codes")
        .iter()
        .map(|row| (row["status"].as_u64().unwrap() as u16, row["code"].as_str().unwrap().to_owned()))
        .collect();
    let mut used = std::collections::BTreeSet::new();
    for operations in document["paths"].as_object().unwrap().values() {
        for operation in operations.as_object().unwrap().values() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                for code in response["x-error-codes"].as_array().into_iter().flatten() {
                    used.insert((status.parse::<u16>().unwrap(), code.as_str().unwrap().to_owned()));
                }
            }
        }
    }
    table.intersection(&used).cloned().collect()
}
