//! The API through a real HTTP client, against an in-memory log. The allocator and placement are
//! simulated by appending their output events directly; reads are polled against a deadline.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_web::rt::System;
use actix_web::rt::time::{sleep, timeout};
use futures::StreamExt as _;
use ipam_api::{ApiConfig, Groups};
use ipam_core::event::{
    AssignReason, DhcpServerAssigned, HostHeartbeat, HostNetwork, HostStatus, HostUpserted, NetworkUpserted, Owner,
    ReleaseReason, RequestRejected, ReservationAdded, ReservationRemoved, ServedNetwork, SubnetActivated,
};
use ipam_core::{Envelope, Event, EventId, HostId, IpRange, Mac, NetworkId, RejectionCode, SubnetId, Timestamp, Topic};
use ipam_core::{VmId, VnicId};
use ipam_log::{EventLog, MemoryLog, OutRecord};
use ipam_runtime::{ComponentState, Health, Topics};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(10);

const NETWORK: NetworkId = NetworkId::from_u128(0x1000);
const SUBNET: SubnetId = SubnetId::from_u128(0x2000);
const HOST: HostId = HostId::from_u128(0x3000);
const VNIC_A: VnicId = VnicId::from_u128(0x4001);
const VNIC_B: VnicId = VnicId::from_u128(0x4002);
const VM: VmId = VmId::from_u128(0x5000);

/// A running API on its own memory log; stopped and joined when dropped.
struct Api {
    address: SocketAddr,
    log: Arc<MemoryLog>,
    topics: Topics,
    health: Health,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

/// What [`FlakyLog`] does with reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    Work,
    /// Fail as a corrupt SQLite database does.
    Fail,
    /// Answer nothing, as a reader stuck at an old offset would.
    Nothing,
}

/// A memory log whose reads can be made to fail or to answer nothing, and whose reservations
/// topic can be made to hold records back after its end (as an open transaction does on Kafka);
/// everything else passes.
struct FlakyLog {
    inner: Arc<dyn EventLog>,
    reads: Arc<std::sync::Mutex<Reads>>,
    quiet_calls: Arc<std::sync::Mutex<u64>>,
    /// Records written to partition 0 of the reservations topic beyond its end: held back.
    held_back: Arc<std::sync::Mutex<u64>>,
}

impl FlakyLog {
    /// Waits until a follower call made after `set(Reads::Nothing)` has begun, so that no call
    /// that began before still reads the real log.
    fn wait_until_quiet(&self) {
        let seen = *self.quiet_calls.lock().expect("lock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while *self.quiet_calls.lock().expect("lock") <= seen {
            assert!(Instant::now() < deadline, "the read model never read again");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn set(&self, reads: Reads) {
        *self.reads.lock().expect("lock") = reads;
    }
}

impl EventLog for FlakyLog {
    fn identity(&self) -> Result<String, ipam_log::LogError> {
        self.inner.identity()
    }
    fn create_topics(&self, topics: &[ipam_log::TopicSpec]) -> Result<(), ipam_log::LogError> {
        self.inner.create_topics(topics)
    }
    fn partition_count(&self, topic: &str) -> Result<u32, ipam_log::LogError> {
        self.inner.partition_count(topic)
    }
    fn append(&self, records: &[OutRecord]) -> Result<Vec<ipam_log::Appended>, ipam_log::LogError> {
        self.inner.append(records)
    }
    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ipam_log::Record>, ipam_log::LogError> {
        let reads = *self.reads.lock().expect("lock");
        match reads {
            Reads::Work => self.inner.read(topic, partition, from, max, wait),
            Reads::Fail => Err(ipam_log::LogError::Storage("database disk image is malformed".to_owned())),
            Reads::Nothing => {
                std::thread::sleep(wait);
                Ok(Vec::new())
            }
        }
    }
    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, ipam_log::LogError> {
        self.inner.end_offset(topic, partition)
    }
    fn committed_position(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, ipam_log::LogError> {
        self.inner.committed_position(group, topic, partition)
    }
    fn written_ends(&self, topic: &str) -> Result<Vec<u64>, ipam_log::LogError> {
        let mut ends = self.inner.written_ends(topic)?;
        if topic.ends_with(Topic::Reservations.name()) {
            ends[0] += *self.held_back.lock().expect("lock");
        }
        Ok(ends)
    }
    fn join(&self, config: ipam_log::MemberConfig) -> Result<Box<dyn ipam_log::Member>, ipam_log::LogError> {
        self.inner.join(config)
    }
    fn follow(&self, from: &[ipam_log::Position]) -> Result<Box<dyn ipam_log::Follower>, ipam_log::LogError> {
        Ok(Box::new(FlakyFollower {
            inner: self.inner.follow(from)?,
            reads: Arc::clone(&self.reads),
            quiet_calls: Arc::clone(&self.quiet_calls),
        }))
    }
}

/// The follower of a [`FlakyLog`]: fails or answers nothing as its log's reads do.
struct FlakyFollower {
    inner: Box<dyn ipam_log::Follower>,
    reads: Arc<std::sync::Mutex<Reads>>,
    /// Calls that answered nothing on purpose: once it grows, no call still reads the real log.
    quiet_calls: Arc<std::sync::Mutex<u64>>,
}

impl ipam_log::Follower for FlakyFollower {
    fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<ipam_log::Record>, ipam_log::LogError> {
        let reads = *self.reads.lock().expect("lock");
        match reads {
            Reads::Work => self.inner.next(max, wait),
            Reads::Fail => Err(ipam_log::LogError::Storage("database disk image is malformed".to_owned())),
            Reads::Nothing => {
                *self.quiet_calls.lock().expect("lock") += 1;
                std::thread::sleep(wait);
                Ok(Vec::new())
            }
        }
    }
    fn seek(&mut self, position: &ipam_log::Position) -> Result<(), ipam_log::LogError> {
        self.inner.seek(position)
    }
    fn positions(&self) -> Vec<ipam_log::Position> {
        self.inner.positions()
    }
}

impl Api {
    fn start(config: ApiConfig) -> Api {
        Api::start_on(config, Health::new(), |log| log)
    }

    /// An API on a [`FlakyLog`] around its memory log, which the caller then steers.
    fn start_flaky(config: ApiConfig) -> (Api, Arc<FlakyLog>) {
        let mut flaky = None;
        let api = Api::start_on(config, Health::new(), |log| {
            let log = Arc::new(FlakyLog {
                inner: log,
                reads: Arc::new(std::sync::Mutex::new(Reads::Work)),
                quiet_calls: Arc::default(),
                held_back: Arc::default(),
            });
            flaky = Some(Arc::clone(&log));
            log
        });
        (api, flaky.expect("wrapped"))
    }

    /// An API on `wrap(memory log)`, reporting to `health`.
    fn start_on(config: ApiConfig, health: Health, wrap: impl FnOnce(Arc<dyn EventLog>) -> Arc<dyn EventLog>) -> Api {
        let log = Arc::new(MemoryLog::new());
        let topics = Topics::new("", 4);
        log.create_topics(&topics.specs()).expect("topics");
        let stop = Arc::new(AtomicBool::new(false));
        let config = ApiConfig { bind: "127.0.0.1:0".parse().expect("address"), ..config };
        let (address, thread) = ipam_api::bind_and_serve(
            wrap(Arc::clone(&log) as Arc<dyn EventLog>),
            topics.clone(),
            Groups::with_prefix(""),
            config,
            Arc::clone(&stop),
            health.clone(),
        )
        .expect("the API starts");
        Api { address, log, topics, health, stop, thread: Some(thread) }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Every partition's end offset, to show that a refused request appended nothing.
    fn ends(&self) -> Vec<(String, u32, u64)> {
        let mut ends = Vec::new();
        for spec in self.topics.specs() {
            for partition in 0..spec.partitions {
                ends.push((spec.name.clone(), partition, self.log.end_offset(&spec.name, partition).expect("end")));
            }
        }
        ends
    }

    /// Appends events as the allocator or placement would: each on its contract topic, or on
    /// `ipam.hosts` when `forwarded`.
    fn append(&self, envelopes: &[Envelope], forwarded: bool) {
        let records: Vec<OutRecord> = envelopes
            .iter()
            .map(|envelope| OutRecord {
                topic: self.topics.name(if forwarded { Topic::Hosts } else { envelope.event.topic() }),
                key: envelope.event.key(),
                value: envelope.to_bytes(),
            })
            .collect();
        self.log.append(&records).expect("append");
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("running");
        let deadline = Instant::now() + DEADLINE;
        while !thread.is_finished() {
            assert!(Instant::now() < deadline, "the API did not stop within {DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        thread.join().expect("the API thread panicked")
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop();
        }
    }
}

fn block_on<F: Future>(future: F) -> F::Output {
    System::new().block_on(future)
}

fn client(token: Option<&str>) -> awc::Client {
    let builder = awc::Client::builder().timeout(Duration::from_secs(10));
    match token {
        Some(token) => builder.bearer_auth(token).finish(),
        None => builder.finish(),
    }
}

async fn get(client: &awc::Client, url: &str) -> (u16, Value) {
    let mut response = client.get(url).send().await.expect("GET");
    let body = response.body().await.expect("body");
    (
        response.status().as_u16(),
        serde_json::from_slice(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body))),
    )
}

async fn get_text(client: &awc::Client, url: &str) -> (u16, String) {
    let mut response = client.get(url).send().await.expect("GET");
    let body = response.body().limit(16 * 1024 * 1024).await.expect("body");
    (response.status().as_u16(), String::from_utf8_lossy(&body).into_owned())
}

async fn post(client: &awc::Client, url: &str, content_type: &str, body: impl Into<Vec<u8>>) -> (u16, Value) {
    let mut response =
        client.post(url).insert_header(("Content-Type", content_type)).send_body(body.into()).await.expect("POST");
    let body = response.body().await.expect("body");
    (
        response.status().as_u16(),
        serde_json::from_slice(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body))),
    )
}

/// GETs `url` until `done` holds for a 200 answer, or fails at the deadline with the last answer.
async fn until(client: &awc::Client, url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = get(client, url).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{url} never got there; last answer {status} {body}");
        sleep(Duration::from_millis(20)).await;
    }
}

fn mac(text: &str) -> Mac {
    text.parse().expect("mac")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// An input at second `n`, the cause of the outputs built from it.
fn cause(n: u128) -> Envelope {
    Envelope {
        id: EventId::from_u128(0x9000 + n),
        source: "ovirt-engine".to_owned(),
        time: Timestamp::from_unix_ms(1_700_000_000_000 + n as i64 * 1000),
        subject: None,
        event: Event::NetworkRemoved(ipam_core::event::NetworkRemoved { network_id: NETWORK }),
    }
}

fn output(n: u128, event: Event) -> Envelope {
    Envelope::output(&cause(n), 0, "ipam/allocator", event)
}

fn network_upserted(n: u128) -> Envelope {
    output(
        n,
        Event::NetworkUpserted(NetworkUpserted {
            network_id: NETWORK,
            name: "red".to_owned(),
            ipam_enabled: true,
            servers_count: Some(1),
        }),
    )
}

fn subnet_activated(n: u128) -> Envelope {
    output(
        n,
        Event::SubnetActivated(SubnetActivated {
            network_id: NETWORK,
            subnet_id: SUBNET,
            cidr: "10.0.0.0/24".parse().expect("cidr"),
            gateway: ip("10.0.0.1"),
            dns_servers: vec![ip("10.0.0.2")],
            ntp_servers: vec![],
            allocation_pools: vec![IpRange { start: ip("10.0.0.1"), end: ip("10.0.0.254") }],
            cause: cause(n).id,
        }),
    )
}

fn added(n: u128, owner: Owner, mac_text: &str, ip_text: &str) -> Envelope {
    output(
        n,
        Event::ReservationAdded(ReservationAdded {
            network_id: NETWORK,
            subnet_id: SUBNET,
            owner,
            mac: mac(mac_text),
            ip: ip(ip_text),
            cause: cause(n).id,
        }),
    )
}

fn removed(n: u128, owner: Owner, mac_text: &str, ip_text: &str) -> Envelope {
    output(
        n,
        Event::ReservationRemoved(ReservationRemoved {
            network_id: NETWORK,
            subnet_id: SUBNET,
            owner,
            mac: mac(mac_text),
            ip: ip(ip_text),
            reason: ReleaseReason::VnicDown,
            cause: cause(n).id,
        }),
    )
}

fn vnic(vnic_id: VnicId) -> Owner {
    Owner::Vnic { vnic_id, vm_id: VM }
}

fn network_upserted_json(id: &str, ipam_enabled: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "ovirt-engine",
        "type": "ipam.network.upserted.v1",
        "time": "2025-01-01T00:00:00Z",
        "data": { "network_id": NETWORK.to_string(), "name": "red", "ipam_enabled": ipam_enabled }
    })
}

fn vnic_started_json(mac: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": "0b9f7d3e-6a55-4e0b-8f5c-7d2a1c000001",
        "source": "ovirt-engine",
        "type": "ipam.vnic.started.v1",
        "time": "2025-01-01T00:00:01Z",
        "data": {
            "vnic_id": VNIC_A.to_string(), "vm_id": VM.to_string(), "network_id": NETWORK.to_string(),
            "subnet_id": SUBNET.to_string(), "mac": mac
        }
    })
}

#[test]
fn a_valid_event_is_appended_and_answered_with_its_position() {
    let api = Api::start(ApiConfig::default());
    block_on(async {
        let client = client(None);
        let event = network_upserted_json("0b9f7d3e-6a55-4e0b-8f5c-7d2a1c000010", json!(true));
        let (status, body) = post(&client, &api.url("/v1/events"), "application/json", event.to_string()).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["ids"], json!(["0b9f7d3e-6a55-4e0b-8f5c-7d2a1c000010"]));
        let position = &body["positions"][0];
        assert_eq!(position["topic"], "ipam.networks");
        let (partition, offset) =
            (position["partition"].as_u64().expect("partition"), position["offset"].as_u64().expect("offset"));
        // Durable once answered: the record is in the log now, keyed by its network.
        let records = api.log.read("ipam.networks", partition as u32, offset, 1, Duration::ZERO).expect("read");
        assert_eq!(records[0].key, NETWORK.to_string());
        let stored = Envelope::decode(&records[0].value).expect("decodes");
        assert_eq!(stored.id.to_string(), "0b9f7d3e-6a55-4e0b-8f5c-7d2a1c000010");

        // A batch in CloudEvents' batch mode lands whole, in order, on the right topics.
        let host = json!({
            "specversion": "1.0", "id": "0b9f7d3e-6a55-4e0b-8f5c-7d2a1c000011", "source": "ovirt-engine",
            "type": "ipam.host.upserted.v1", "time": "2025-01-01T00:00:00Z",
            "data": { "host_id": HOST.to_string(), "name": "h1", "status": "up",
                      "networks": [{ "network_id": NETWORK.to_string(), "interface": "br0" }] }
        });
        let batch = json!([vnic_started_json("52:54:00:00:00:01"), host]);
        let (status, body) = post(
            &client,
            &api.url("/v1/events"),
            "application/cloudevents-batch+json; charset=utf-8",
            batch.to_string(),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        let topics: Vec<&str> = body["positions"]
            .as_array()
            .expect("positions")
            .iter()
            .map(|p| p["topic"].as_str().expect("topic"))
            .collect();
        assert_eq!(topics, ["ipam.networks", "ipam.hosts"]);
        assert_eq!(api.log.end_offset("ipam.hosts", 0).expect("end"), 1);
    });
}

#[test]
fn a_write_that_waits_gets_the_decision_its_outputs_name_or_pending() {
    let api = Api::start(ApiConfig::default());
    block_on(async {
        let client = client(None);
        let started = vnic_started_json("52:54:00:00:00:07");
        let cause_id: EventId = started["id"].as_str().expect("id").parse().expect("uuid");
        // The allocator's part, played by a thread: once the request is in the log, its decision.
        let (log, topics) = (Arc::clone(&api.log), api.topics.clone());
        let allocator = std::thread::spawn(move || {
            let deadline = Instant::now() + DEADLINE;
            while (0..4).all(|p| log.end_offset(&topics.name(Topic::Networks), p).expect("end") == 0) {
                assert!(Instant::now() < deadline, "the request never reached the log");
                std::thread::sleep(Duration::from_millis(5));
            }
            let subnet = subnet_activated(40);
            let mut reservation = added(41, vnic(VNIC_A), "52:54:00:00:00:07", "10.0.0.7");
            if let Event::ReservationAdded(e) = &mut reservation.event {
                e.cause = cause_id;
            }
            let records: Vec<OutRecord> = [subnet, reservation]
                .iter()
                .map(|e| OutRecord { topic: topics.name(Topic::Reservations), key: e.event.key(), value: e.to_bytes() })
                .collect();
            log.append(&records).expect("append");
        });
        let (status, body) =
            post(&client, &api.url("/v1/events?wait=10s"), "application/json", started.to_string()).await;
        allocator.join().expect("the allocator thread");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["complete"], true, "{body}");
        let outcome = &body["outcomes"][0];
        assert_eq!(outcome["outcome"], "reserved", "{body}");
        assert_eq!(outcome["event_id"], started["id"], "{body}");
        assert_eq!((&outcome["ip"], &outcome["cidr"]), (&json!("10.0.0.7"), &json!("10.0.0.0/24")), "{body}");
        assert_eq!((&outcome["vnic_id"], &outcome["mac"]), (&json!(VNIC_A), &json!("52:54:00:00:00:07")), "{body}");
        assert!(body["after"].as_str().is_some_and(|t| t.starts_with("ipam.networks/")), "{body}");

        // Nobody decides this one: after the wait it is pending, and the answer says so.
        let mut other = vnic_started_json("52:54:00:00:00:08");
        other["id"] = json!("0b9f7d3e-6a55-4e0b-8f5c-7d2a1c0000f1");
        let (status, body) = post(&client, &api.url("/v1/events"), "application/json", other.to_string()).await;
        assert_eq!(status, 202, "without a wait: {body}");
        assert!(body.get("outcomes").is_none(), "{body}");
        other["id"] = json!("0b9f7d3e-6a55-4e0b-8f5c-7d2a1c0000f2");
        let request = client
            .post(api.url("/v1/events"))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("Prefer", "wait=0.2"));
        let mut response = request.send_body(other.to_string()).await.expect("POST");
        let body: Value = serde_json::from_slice(&response.body().await.expect("body")).expect("JSON");
        assert_eq!(response.status().as_u16(), 202, "{body}");
        assert_eq!((&body["complete"], &body["outcomes"][0]["outcome"]), (&json!(false), &json!("pending")), "{body}");

        // A read after a position that is not reached within its wait is refused, saying so.
        let token = body["after"].as_str().expect("after").to_owned();
        let (status, body) = get(&client, &api.url(&format!("/v1/networks?after={token}&wait=100ms"))).await;
        assert_eq!((status, &body["error"]["code"]), (503, &json!("position_not_reached")), "{body}");
        for (query, code) in
            [("?wait=5m", "invalid_wait"), ("?wait=soon", "invalid_wait"), ("?nothing=1", "invalid_query")]
        {
            let (status, body) =
                post(&client, &api.url(&format!("/v1/events{query}")), "application/json", other.to_string()).await;
            assert_eq!((status, &body["error"]["code"]), (400, &json!(code)), "{query}: {body}");
        }
    });
}

/// A refused POST: what it is, its content type and body, and the status, code and field expected.
type Refusal<'a> = (&'a str, &'a str, String, u16, &'a str, Option<&'a str>);

#[test]
fn bad_requests_are_refused_with_a_reason_and_append_nothing() {
    let api = Api::start(ApiConfig { max_body_bytes: 4096, ..ApiConfig::default() });
    block_on(async {
        let client = client(None);
        let url = api.url("/v1/events");
        let valid = network_upserted_json("0b9f7d3e-6a55-4e0b-8f5c-7d2a1c000020", json!(true));
        let mut unknown_type = valid.clone();
        unknown_type["type"] = json!("ipam.network.exploded.v1");
        let mut output_type = valid.clone();
        output_type["type"] = json!("ipam.reservation.added.v1");
        let mut tick = valid.clone();
        tick["type"] = json!("ipam.clock.ticked.v1");
        let mut oversized = valid.clone();
        oversized["data"]["name"] = json!("x".repeat(5000));
        let cases: Vec<Refusal> = vec![
            ("bad JSON", "application/json", "{\"specversion\": ".to_owned(), 400, "malformed_json", None),
            (
                "wrong field type",
                "application/json",
                network_upserted_json("0b9f7d3e-6a55-4e0b-8f5c-7d2a1c000021", json!("yes")).to_string(),
                400,
                "invalid_request",
                Some("data.ipam_enabled"),
            ),
            (
                "multicast MAC",
                "application/cloudevents+json",
                vnic_started_json("01:00:5e:00:00:01").to_string(),
                400,
                "invalid_mac",
                Some("data.mac"),
            ),
            ("unknown type", "application/json", unknown_type.to_string(), 400, "unknown_type", Some("type")),
            ("output type", "application/json", output_type.to_string(), 400, "not_an_input", Some("type")),
            ("clock tick", "application/json", tick.to_string(), 400, "not_an_input", Some("type")),
            ("empty batch", "application/json", "[]".to_owned(), 400, "empty_batch", None),
            ("oversized", "application/json", oversized.to_string(), 413, "body_too_large", None),
            ("text", "text/plain", valid.to_string(), 415, "unsupported_media_type", None),
            ("no content type", "", valid.to_string(), 415, "unsupported_media_type", None),
            (
                "batch with one bad element",
                "application/json",
                json!([valid, vnic_started_json("not-a-mac")]).to_string(),
                400,
                "invalid_mac",
                Some("data.mac"),
            ),
        ];
        let before = api.ends();
        for (what, content_type, body, status, code, field) in cases {
            let (got, answer) = post(&client, &url, content_type, body).await;
            assert_eq!(got, status, "{what}: {answer}");
            let error = &answer["error"];
            assert_eq!(error["code"], code, "{what}: {answer}");
            assert!(!error["message"].as_str().expect("message").is_empty(), "{what}: {answer}");
            assert_eq!(error["field"].as_str(), field, "{what}: {answer}");
            assert_eq!(api.ends(), before, "{what} appended something");
        }
        // A chunked body has no length to check up front; it is cut off as it passes the limit.
        let chunks: Vec<Result<actix_web::web::Bytes, std::io::Error>> =
            oversized.to_string().into_bytes().chunks(1000).map(|c| Ok(c.to_vec().into())).collect();
        let mut response = client
            .post(&url)
            .insert_header(("Content-Type", "application/json"))
            .send_stream(futures::stream::iter(chunks))
            .await
            .expect("POST");
        let answer: Value = serde_json::from_slice(&response.body().await.expect("body")).expect("JSON");
        assert_eq!((response.status().as_u16(), &answer["error"]["code"]), (413, &json!("body_too_large")));
        assert_eq!(api.ends(), before);

        // The bad element of a batch is named by its index.
        let mut another = valid.clone();
        another["id"] = json!("0b9f7d3e-6a55-4e0b-8f5c-7d2a1c0000ff");
        let (_, answer) =
            post(&client, &url, "application/json", json!([valid, another, vnic_started_json("zz")]).to_string()).await;
        assert_eq!(answer["error"]["index"], 2, "{answer}");
        assert!(answer["error"]["message"].as_str().expect("message").starts_with("event 2: "), "{answer}");
        assert_eq!(api.ends(), before);

        // Unknown paths and methods answer JSON too.
        let (status, answer) = get(&client, &api.url("/v1/nothing")).await;
        assert_eq!((status, &answer["error"]["code"]), (404, &json!("not_found")));
        let (status, answer) = get(&client, &url).await;
        assert_eq!((status, &answer["error"]["code"]), (405, &json!("method_not_allowed")));
    });
}

#[test]
fn a_network_shows_subnets_with_counts_reservations_servers_and_rejections() {
    let api = Api::start(ApiConfig::default());
    api.append(&[network_upserted(1)], true);
    api.append(
        &[
            subnet_activated(2),
            added(3, vnic(VNIC_A), "52:54:00:00:00:01", "10.0.0.10"),
            added(4, Owner::DhcpServer { host_id: HOST }, "52:54:00:00:00:02", "10.0.0.11"),
            output(
                5,
                Event::RequestRejected(RequestRejected {
                    network_id: NETWORK,
                    request_type: "ipam.vnic.started.v1".to_owned(),
                    code: RejectionCode::DuplicateMac,
                    message: "taken".to_owned(),
                    cause: cause(5).id,
                    vnic_id: Some(VNIC_B),
                    mac: Some(mac("52:54:00:00:00:09")),
                    subnet_id: Some(SUBNET),
                    host_id: None,
                }),
            ),
            output(
                6,
                Event::DhcpServerAssigned(DhcpServerAssigned {
                    network_id: NETWORK,
                    host_id: HOST,
                    interface: "br0".parse().expect("interface"),
                    epoch: 7,
                    reason: AssignReason::Placed,
                    cause: cause(6).id,
                }),
            ),
        ],
        false,
    );
    block_on(async {
        let client = client(None);
        let url = api.url(&format!("/v1/networks/{NETWORK}?position=true"));
        let network = until(&client, &url, |n| {
            n["reservations"].as_array().is_some_and(|r| r.len() == 2)
                && !n["servers"].as_array().is_none_or(Vec::is_empty)
        })
        .await;
        assert_eq!(network["name"], "red");
        assert_eq!(network["ipam_enabled"], true);
        let subnet = &network["subnets"][0];
        assert_eq!(subnet["cidr"], "10.0.0.0/24");
        assert_eq!(subnet["used"], 2);
        assert_eq!(subnet["used_by_dhcp_servers"], 1, "the DHCP server's own address counts, and says so");
        assert_eq!(subnet["dhcp_servers"][0]["host_id"], HOST.to_string());
        assert_eq!(subnet["dhcp_servers"][0]["ip"], "10.0.0.11");
        // .1 to .254 less the gateway, less the two reservations.
        assert_eq!(subnet["size"], 253);
        assert_eq!(subnet["free"], 251);
        assert_eq!(network["servers"][0]["host_id"], HOST.to_string());
        assert_eq!(network["servers"][0]["epoch"], 7);
        assert_eq!(network["rejections"][0]["code"], "duplicate_mac");
        let rejection = &network["rejections"][0];
        assert_eq!((&rejection["vnic_id"], &rejection["mac"]), (&json!(VNIC_B), &json!("52:54:00:00:00:09")));
        assert_eq!(rejection["subnet_id"], SUBNET.to_string());
        let reservation =
            network["reservations"].as_array().expect("reservations").iter().find(|r| r["ip"] == "10.0.0.10");
        assert_eq!(reservation.expect("the vNIC's")["owner"]["vnic_id"], VNIC_A.to_string());
        assert_eq!(reservation.expect("the vNIC's")["cidr"], "10.0.0.0/24", "CIDRs beside subnet ids");
        assert!(network["reservations_next"].is_null(), "every reservation is on the first page");
        // The position names every followed partition; the ones written to are past their records.
        let position = network["position"].as_object().expect("position");
        assert_eq!(position.len(), 4 + 4 + 1, "{position:?}");
        assert_eq!(position["ipam.hosts/0"], 1);
        let partition = ipam_log::partition::for_key(NETWORK.to_string().as_bytes(), 4);
        assert_eq!(position[&format!("ipam.reservations/{partition}")], 4);

        let list =
            until(&client, &api.url("/v1/networks"), |l| l["networks"].as_array().is_some_and(|n| n.len() == 1)).await;
        assert_eq!(list["networks"][0]["reservations"], 2);
        assert!(list.get("position").is_none(), "the position only when asked: {list}");
        let (_, list) = get(&client, &api.url("/v1/networks?position=true")).await;
        assert!(list["position"].is_object(), "{list}");

        // Reservations a page at a time: the cursor of each page leads to the next, the last has none.
        let (status, first) = get(&client, &api.url(&format!("/v1/networks/{NETWORK}/reservations?limit=1"))).await;
        assert_eq!(status, 200, "{first}");
        assert_eq!(first["reservations"].as_array().map(Vec::len), Some(1), "{first}");
        let next = first["next"].as_str().expect("a next page").to_owned();
        let (_, second) =
            get(&client, &api.url(&format!("/v1/networks/{NETWORK}/reservations?limit=1&cursor={next}"))).await;
        assert_eq!(second["reservations"].as_array().map(Vec::len), Some(1), "{second}");
        assert_ne!(first["reservations"][0]["ip"], second["reservations"][0]["ip"]);
        assert!(second["next"].is_null(), "{second}");
        let (_, inline) = get(&client, &api.url(&format!("/v1/networks/{NETWORK}?limit=1"))).await;
        assert_eq!(inline["reservations_next"], first["next"], "{inline}");
        for (query, code) in [
            ("limit=0", "invalid_limit"),
            ("limit=10001", "invalid_limit"),
            ("limit=ten", "invalid_limit"),
            ("cursor=nowhere", "invalid_cursor"),
            ("limit=1&limit=2", "invalid_query"),
            ("sort=ip", "invalid_query"),
        ] {
            let (status, body) = get(&client, &api.url(&format!("/v1/networks/{NETWORK}/reservations?{query}"))).await;
            assert_eq!((status, &body["error"]["code"]), (400, &json!(code)), "{query}: {body}");
        }
        // vNICs by filter, hosts listed with names.
        let (status, vnics) = get(&client, &api.url(&format!("/v1/vnics?network={NETWORK}&ip=10.0.0.10"))).await;
        assert_eq!(status, 200, "{vnics}");
        assert_eq!(vnics["vnics"].as_array().map(Vec::len), Some(1), "{vnics}");
        assert_eq!(vnics["vnics"][0]["vnic_id"], VNIC_A.to_string(), "{vnics}");
        let (_, none) = get(&client, &api.url("/v1/vnics?mac=52:54:00:00:00:99")).await;
        assert_eq!(none["vnics"], json!([]), "{none}");
        let (status, body) = get(&client, &api.url("/v1/vnics?mac=ff:ff:ff:ff:ff:ff")).await;
        assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_filter")), "{body}");
        let (status, hosts) = get(&client, &api.url("/v1/hosts?limit=5")).await;
        assert_eq!(status, 200, "{hosts}");
        assert_eq!(hosts["hosts"][0]["host_id"], HOST.to_string(), "{hosts}");
        assert!(hosts["next"].is_null(), "{hosts}");

        // A rejection of a request on a network nobody told about makes no phantom network.
        let phantom = NetworkId::from_u128(0x77);
        let rejection = output(
            30,
            Event::RequestRejected(RequestRejected {
                network_id: phantom,
                request_type: "ipam.vnic.started.v1".to_owned(),
                code: RejectionCode::UnknownNetwork,
                message: "no such network".to_owned(),
                cause: cause(30).id,
                vnic_id: None,
                mac: None,
                subnet_id: None,
                host_id: None,
            }),
        );
        api.append(&[rejection], false);
        let partition = ipam_log::partition::for_key(phantom.to_string().as_bytes(), 4);
        let end = api.log.end_offset("ipam.reservations", partition).expect("end");
        let (status, list) =
            get(&client, &api.url(&format!("/v1/networks?after=ipam.reservations/{partition}/{end}"))).await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(list["networks"].as_array().map(Vec::len), Some(1), "no phantom network: {list}");
        let (status, _) = get(&client, &api.url(&format!("/v1/networks/{phantom}"))).await;
        assert_eq!(status, 404);

        let (status, body) = get(&client, &api.url(&format!("/v1/networks/{}", NetworkId::from_u128(1)))).await;
        assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
        let (status, body) = get(&client, &api.url("/v1/networks/not-a-uuid")).await;
        assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_id")));
    });
}

#[test]
fn a_vnic_and_a_host_show_their_current_state() {
    let api = Api::start(ApiConfig::default());
    let host = |n: u128, event: Event| Envelope { source: "ovirt-engine".to_owned(), event, ..cause(n) };
    api.append(&[network_upserted(0)], true);
    api.append(
        &[
            host(
                1,
                Event::HostUpserted(HostUpserted {
                    host_id: HOST,
                    name: "h1".to_owned(),
                    status: HostStatus::Up,
                    networks: vec![HostNetwork { network_id: NETWORK, interface: "br0".parse().expect("interface") }],
                }),
            ),
            host(
                2,
                Event::HostHeartbeat(HostHeartbeat {
                    host_id: HOST,
                    serving: vec![ServedNetwork { network_id: NETWORK, epoch: 3 }],
                }),
            ),
        ],
        false,
    );
    api.append(&[subnet_activated(3), added(4, vnic(VNIC_A), "52:54:00:00:00:01", "10.0.0.10")], false);
    block_on(async {
        let client = client(None);
        let vnic_url = api.url(&format!("/v1/vnics/{VNIC_A}?position=true"));
        let view = until(&client, &vnic_url, |v| !v["reservation"].is_null()).await;
        assert_eq!(view["reservation"]["ip"], "10.0.0.10");
        assert_eq!(view["vm_id"], VM.to_string());
        assert!(view["position"].is_object());

        api.append(&[removed(5, vnic(VNIC_A), "52:54:00:00:00:01", "10.0.0.10")], false);
        let view = until(&client, &vnic_url, |v| v["reservation"].is_null()).await;
        assert_eq!(view["last_release"]["reason"], "vnic_down");

        let view =
            until(&client, &api.url(&format!("/v1/hosts/{HOST}?position=true")), |h| !h["last_heartbeat"].is_null())
                .await;
        assert_eq!(view["name"], "h1");
        assert_eq!(view["status"], "up");
        assert_eq!(view["networks"][0]["interface"], "br0");
        assert_eq!(view["serving"][0]["epoch"], 3);
        assert_eq!(view["serving"][0]["network_name"], "red", "names beside ids: {view}");
        assert!(view["position"].is_object());

        let (status, _) = get(&client, &api.url(&format!("/v1/vnics/{VNIC_B}"))).await;
        assert_eq!(status, 404);
        let (status, _) = get(&client, &api.url(&format!("/v1/hosts/{}", HostId::from_u128(1)))).await;
        assert_eq!(status, 404);
        let (status, body) = get(&client, &api.url("/v1/hosts/123")).await;
        assert_eq!((status, &body["error"]["field"]), (400, &json!("id")));
    });
}

#[test]
fn a_vnic_shows_its_way_from_reserved_to_served_to_leased_and_the_metrics_count_it() {
    use ipam_core::event::{DhcpServerSynced, LeaseChange, VnicLeaseChanged};
    let api = Api::start(ApiConfig::default());
    api.append(&[network_upserted(0)], true);
    let assigned = Event::DhcpServerAssigned(DhcpServerAssigned {
        network_id: NETWORK,
        host_id: HOST,
        interface: "br0".parse().expect("interface"),
        epoch: 1,
        reason: AssignReason::Placed,
        cause: cause(2).id,
    });
    // In the network's `ipam.reservations` partition: the subnet at offset 0, the reservation at 1.
    api.append(
        &[subnet_activated(1), output(2, assigned), added(3, vnic(VNIC_A), "52:54:00:00:00:01", "10.0.0.10")],
        false,
    );
    block_on(async {
        let client = client(None);
        let url = api.url(&format!("/v1/vnics/{VNIC_A}"));
        let view = until(&client, &url, |v| v["state"] == "reserved").await;
        assert_eq!(view["progress"]["reserved_at"], json!(cause(3).time), "{view}");
        assert!(view["progress"]["served_at"].is_null(), "{view}");

        let synced = |n: u128, reservations_offset: u64| Envelope {
            source: "ipam/host-agent".to_owned(),
            event: Event::DhcpServerSynced(DhcpServerSynced {
                host_id: HOST,
                network_id: NETWORK,
                epoch: 1,
                reservations_offset,
            }),
            ..cause(n)
        };
        api.append(&[synced(4, 1)], false);
        api.append(&[synced(5, 2)], false);
        let view = until(&client, &url, |v| v["state"] == "served").await;
        assert_eq!(view["progress"]["served_at"], json!(cause(5).time), "the first mark past the reservation: {view}");

        let leased = Event::VnicLeaseChanged(VnicLeaseChanged {
            network_id: NETWORK,
            subnet_id: SUBNET,
            vnic_id: VNIC_A,
            vm_id: VM,
            mac: mac("52:54:00:00:00:01"),
            ip: ip("10.0.0.10"),
            host_id: HOST,
            change: LeaseChange::Granted,
            observed_at: cause(6).time,
            expires_at: Some(cause(3606).time),
            cause: cause(6).id,
        });
        api.append(&[output(6, leased)], false);
        let view = until(&client, &url, |v| v["state"] == "leased").await;
        assert_eq!(view["progress"]["leased_at"], json!(cause(6).time), "{view}");
        assert_eq!(view["progress"]["lease"]["host_id"], HOST.to_string(), "{view}");
        assert_eq!(view["progress"]["lease"]["expires_at"], json!(cause(3606).time), "{view}");
        let (_, list) = get(&client, &api.url("/v1/vnics")).await;
        assert_eq!(list["vnics"][0]["state"], "leased", "{list}");
        // The stream carries the allocator's echo as it carries every decision.
        let streamed = read_stream(&client, &api.url("/v1/stream?from=start"), None, 4).await;
        let kinds: Vec<&str> = streamed.iter().map(|event| event.kind.as_str()).collect();
        assert!(kinds.contains(&"ipam.vnic.lease_changed.v1"), "{kinds:?}");

        let (status, text) = get_text(&client, &api.url("/metrics")).await;
        assert_eq!(status, 200);
        for wanted in ["state=\"leased\"} 1\n", "ipam_vnic_lease_seconds_count 1\n", "ipam_vnic_lease_seconds_sum 3\n"]
        {
            assert!(text.contains(wanted), "no {wanted:?} in\n{text}");
        }
        let (_, network) = get(&client, &api.url(&format!("/v1/networks/{NETWORK}"))).await;
        assert!(
            network["subnets"][0]["forecast"]["allocation_rate_per_hour"].as_f64().is_some_and(|r| r > 0.0),
            "{network}"
        );
    });
}

#[test]
fn ip_history_lists_each_holder_with_its_interval() {
    let api = Api::start(ApiConfig::default());
    api.append(
        &[
            subnet_activated(1),
            added(2, vnic(VNIC_A), "52:54:00:00:00:01", "10.0.0.10"),
            removed(3, vnic(VNIC_A), "52:54:00:00:00:01", "10.0.0.10"),
            added(4, vnic(VNIC_B), "52:54:00:00:00:02", "10.0.0.10"),
        ],
        false,
    );
    block_on(async {
        let client = client(None);
        let history = until(&client, &api.url("/v1/ips/10.0.0.10/history?position=true"), |h| {
            h["history"].as_array().is_some_and(|h| h.len() == 2)
        })
        .await;
        let (first, second) = (&history["history"][0], &history["history"][1]);
        assert_eq!(first["mac"], "52:54:00:00:00:01");
        assert_eq!(first["owner"]["vnic_id"], VNIC_A.to_string());
        assert_eq!(first["from"], json!(cause(2).time));
        assert_eq!(first["to"], json!(cause(3).time));
        assert_eq!(first["cause"], cause(2).id.to_string());
        assert_eq!(first["network_id"], NETWORK.to_string());
        assert_eq!(first["subnet_id"], SUBNET.to_string());
        assert_eq!(second["mac"], "52:54:00:00:00:02");
        assert_eq!(second["from"], json!(cause(4).time));
        assert!(second["to"].is_null());
        assert!(history["position"].is_object());

        // As of an instant: the one holder then, or nobody.
        let at = |t: Timestamp| api.url(&format!("/v1/ips/10.0.0.10/history?at={}", json!(t).as_str().expect("text")));
        let (status, then) = get(&client, &at(cause(2).time)).await;
        assert_eq!(status, 200, "{then}");
        let holders: Vec<&Value> = then["history"].as_array().expect("history").iter().collect();
        assert_eq!(holders.len(), 1, "{then}");
        assert_eq!(
            (&holders[0]["mac"], &holders[0]["vnic_id"]),
            (&json!("52:54:00:00:00:01"), &json!(VNIC_A)),
            "{then}"
        );
        let (_, released) = get(&client, &at(cause(3).time)).await;
        assert_eq!(released["history"], json!([]), "released at that instant: {released}");
        let (_, now) = get(&client, &at(cause(4).time)).await;
        assert_eq!(now["history"][0]["mac"], "52:54:00:00:00:02", "{now}");
        let (_, before) = get(&client, &at(Timestamp::from_unix_ms(0))).await;
        assert_eq!(before["history"], json!([]), "{before}");
        let (status, body) = get(&client, &api.url("/v1/ips/10.0.0.10/history?at=yesterday")).await;
        assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_filter")), "{body}");
        // The same holdings by vNIC and by MAC.
        let (status, by_vnic) = get(&client, &api.url(&format!("/v1/vnics/{VNIC_A}/history"))).await;
        assert_eq!(status, 200, "{by_vnic}");
        assert_eq!(by_vnic["history"].as_array().map(Vec::len), Some(1), "{by_vnic}");
        assert_eq!(by_vnic["history"][0]["ip"], "10.0.0.10", "{by_vnic}");
        let (status, by_mac) = get(&client, &api.url("/v1/macs/52:54:00:00:00:02/history")).await;
        assert_eq!(status, 200, "{by_mac}");
        assert_eq!(by_mac["history"][0]["from"], json!(cause(4).time), "{by_mac}");
        let (status, _) = get(&client, &api.url("/v1/macs/52:54:00:00:00:99/history")).await;
        assert_eq!(status, 404);

        let (status, body) = get(&client, &api.url("/v1/ips/10.0.0.99/history")).await;
        assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
        let (status, body) = get(&client, &api.url("/v1/ips/10.0.0.300/history")).await;
        assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_ip")));
    });
}

/// One SSE event: its `id`, `event` and parsed `data`.
#[derive(Debug)]
struct Sse {
    id: String,
    kind: String,
    data: Value,
}

/// Reads `count` events from the stream at `url` (with `last_event_id` if given).
async fn read_stream(client: &awc::Client, url: &str, last_event_id: Option<&str>, count: usize) -> Vec<Sse> {
    let mut request = client.get(url).timeout(Duration::from_secs(30));
    if let Some(id) = last_event_id {
        request = request.insert_header(("Last-Event-ID", id));
    }
    let mut response = request.send().await.expect("stream");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers().get("content-type").expect("content type"), "text/event-stream");
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while events.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = timeout(left, response.next()).await.expect("events in time").expect("stream open").expect("chunk");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            let field = |name: &str| frame.lines().find_map(|line| line.strip_prefix(name)).map(str::to_owned);
            if let (Some(id), Some(kind), Some(data)) = (field("id: "), field("event: "), field("data: ")) {
                events.push(Sse { id, kind, data: serde_json::from_str(&data).expect("data is JSON") });
            }
        }
    }
    events
}

#[test]
fn the_stream_sends_decisions_and_resumes_after_an_id() {
    let api = Api::start(ApiConfig::default());
    let history = [
        subnet_activated(1),
        added(2, vnic(VNIC_A), "52:54:00:00:00:01", "10.0.0.10"),
        removed(3, vnic(VNIC_A), "52:54:00:00:00:01", "10.0.0.10"),
    ];
    api.append(&history, false);
    block_on(async {
        let client = client(None);
        let events = read_stream(&client, &api.url("/v1/stream?from=start"), None, 3).await;
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["ipam.subnet.activated.v1", "ipam.reservation.added.v1", "ipam.reservation.removed.v1"]);
        assert_eq!(events[1].data["id"], history[1].id.to_string());
        let partition = ipam_log::partition::for_key(NETWORK.to_string().as_bytes(), 4);
        assert_eq!(events[0].id, format!("ipam.reservations/{partition}:1"));

        // Resuming after the first event, by header or by query, sends the rest and nothing before.
        let resumed = read_stream(&client, &api.url("/v1/stream"), Some(&events[0].id), 2).await;
        assert_eq!(resumed[0].data["id"], history[1].id.to_string());
        assert_eq!(resumed[1].data["id"], history[2].id.to_string());
        let from = format!("/v1/stream?from={}", events[1].id.replace('/', "%2F").replace(':', "%3A"));
        // The same cursor through `from`, with an event appended while listening.
        let from_url = api.url(&from);
        let reader = read_stream(&client, &from_url, None, 2);
        let appender = async {
            sleep(Duration::from_millis(200)).await;
            api.append(&[added(4, vnic(VNIC_B), "52:54:00:00:00:02", "10.0.0.10")], false);
        };
        let (after, ()) = futures::future::join(reader, appender).await;
        assert_eq!(after[0].data["id"], history[2].id.to_string());
        assert_eq!(after[1].kind, "ipam.reservation.added.v1");
        assert_eq!(after[1].data["data"]["owner"]["vnic_id"], VNIC_B.to_string());

        let (status, body) = get(&client, &api.url("/v1/stream?from=ipam.hosts/0:1")).await;
        assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_cursor")));
    });
}

#[test]
fn health_metrics_and_the_openapi_document() {
    let api = Api::start(ApiConfig::default());
    api.append(&[network_upserted(1)], true);
    api.append(&[subnet_activated(2), added(3, vnic(VNIC_A), "52:54:00:00:00:01", "10.0.0.10")], false);
    block_on(async {
        let client = client(None);
        // Starting (503) until the read model has read the log, then ok.
        let health = until(&client, &api.url("/health"), |_| true).await;
        assert_eq!(health["status"], "ok");
        assert_eq!(health["failing"], json!([]), "{health}");
        let names: Vec<&str> = health["components"]
            .as_array()
            .expect("components")
            .iter()
            .filter_map(|c| c["component"].as_str())
            .collect();
        assert_eq!(names, ["api-http", "api-read-model"], "{health}");
        assert_eq!(health["lag"]["allocator"]["group"], "ipam-allocator");
        assert_eq!(health["lag"]["placement"]["topic"], "ipam.hosts");
        assert_eq!(health["lag"]["placement"]["records"], 1, "the forwarded upsert is not consumed: {health}");

        let deadline = Instant::now() + DEADLINE;
        let metrics = loop {
            let (status, text) = get_text(&client, &api.url("/metrics")).await;
            assert_eq!(status, 200);
            if text.contains("ipam_subnet_utilization{") && text.contains("ipam_request_duration_seconds_bucket{") {
                break text;
            }
            assert!(Instant::now() < deadline, "metrics never showed the subnet:\n{text}");
            sleep(Duration::from_millis(20)).await;
        };
        for name in [
            "ipam_events_processed_total ",
            "ipam_consumer_lag{group=\"ipam-allocator\",topic=\"ipam.networks\"} 0",
            "ipam_consumer_lag{group=\"ipam-placement\",topic=\"ipam.hosts\"} 1",
            &format!("ipam_subnet_utilization{{network=\"{NETWORK}\",network_name=\"red\",subnet=\"{SUBNET}\"}} "),
            &format!("ipam_reservations{{network=\"{NETWORK}\",network_name=\"red\"}} 1"),
            "ipam_request_duration_seconds_bucket{method=\"GET\",route=\"/health\",status=\"200\",le=\"+Inf\"} 1",
            "# TYPE ipam_request_duration_seconds histogram",
        ] {
            assert!(metrics.contains(name), "no `{name}` in\n{metrics}");
        }

        let (status, document) = get(&client, &api.url("/openapi.json")).await;
        assert_eq!(status, 200);
        assert_eq!(document["openapi"], "3.1.0");
        let paths: BTreeSet<&str> = document["paths"].as_object().expect("paths").keys().map(String::as_str).collect();
        let expected = [
            "/v1/events",
            "/v1/networks",
            "/v1/networks/{id}",
            "/v1/networks/{id}/reservations",
            "/v1/vnics",
            "/v1/vnics/{id}",
            "/v1/vnics/{id}/history",
            "/v1/hosts",
            "/v1/hosts/{id}",
            "/v1/ips/{ip}/history",
            "/v1/macs/{mac}/history",
            "/v1/stream",
            "/health",
            "/metrics",
            "/openapi.json",
        ];
        assert_eq!(paths, expected.into_iter().collect());
        // Every event reference names a schema the contract generates, embedded in the document.
        let contract = ipam_core::event::event_schemas();
        let inputs = document["components"]["schemas"]["InputEvent"]["oneOf"].as_array().expect("inputs");
        assert_eq!(inputs.len(), 25);
        for reference in inputs {
            let name = reference["$ref"].as_str().expect("$ref").trim_start_matches("#/components/schemas/");
            let embedded = &document["components"]["schemas"][name];
            assert_eq!(embedded["$id"], contract[name]["$id"], "{reference}");
        }
    });
}

#[test]
fn a_configured_token_is_required_everywhere_but_health() {
    let api = Api::start(ApiConfig { bearer_token: Some("s3cret".to_owned()), ..ApiConfig::default() });
    block_on(async {
        let anonymous = client(None);
        let wrong = client(Some("guess"));
        let right = client(Some("s3cret"));
        for path in ["/v1/networks", "/metrics", "/openapi.json", "/v1/stream?from=start"] {
            for client in [&anonymous, &wrong] {
                let (status, body) = get(client, &api.url(path)).await;
                assert_eq!((status, &body["error"]["code"]), (401, &json!("unauthorized")), "{path}");
            }
        }
        let (status, _) = get(&right, &api.url("/v1/networks")).await;
        assert_eq!(status, 200);
        until(&anonymous, &api.url("/health"), |_| true).await;

        let before = api.ends();
        let event = network_upserted_json("0b9f7d3e-6a55-4e0b-8f5c-7d2a1c000030", json!(true)).to_string();
        let (status, _) = post(&anonymous, &api.url("/v1/events"), "application/json", event.clone()).await;
        assert_eq!(status, 401);
        assert_eq!(api.ends(), before);
        let (status, _) = post(&right, &api.url("/v1/events"), "application/json", event).await;
        assert_eq!(status, 202);
    });
}

#[test]
fn stopping_ends_open_streams_and_the_server() {
    let mut api = Api::start(ApiConfig::default());
    api.append(&[subnet_activated(1)], false);
    let url = api.url("/v1/stream?from=start");
    let listener = std::thread::spawn(move || {
        block_on(async {
            let client = client(None);
            let mut response = client.get(url).timeout(Duration::from_secs(30)).send().await.expect("stream");
            // Read until the server ends the stream.
            while let Some(chunk) = response.next().await {
                if chunk.is_err() {
                    break;
                }
            }
        })
    });
    // Wait until the stream is open and has sent the event, then stop.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let metrics = block_on(async { get_text(&client(None), &api.url("/metrics")).await.1 });
        if metrics.contains("route=\"/v1/stream\"") {
            break;
        }
        assert!(Instant::now() < deadline, "the stream never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    api.stop().expect("a clean stop");
    assert!(started.elapsed() < Duration::from_secs(4), "stopping took {:?}", started.elapsed());
    listener.join().expect("the client ends with the stream");
}

#[test]
fn run_reports_a_port_that_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let config = ApiConfig { bind: taken.local_addr().expect("address"), ..ApiConfig::default() };
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    let stop = Arc::new(AtomicBool::new(false));
    let health = Health::new();
    let error = ipam_api::run(log, Topics::new("", 4), Groups::with_prefix(""), config, stop, health.clone())
        .expect_err("taken");
    assert!(format!("{error:#}").contains("binding the API"), "{error:#}");
    let report = health.report();
    assert_eq!((report[0].component.as_str(), report[0].state.name()), ("api-http", "failed"), "{report:?}");
}

/// A stream request that is answered with headers, kept open until dropped.
async fn open_stream(client: &awc::Client, url: String) -> awc::ClientResponse<impl futures::Stream + Unpin> {
    let response = client.get(&url).timeout(Duration::from_secs(30)).send().await.expect("stream");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    response
}

/// `ipam_api_streams_open` from `/metrics`.
async fn streams_open(client: &awc::Client, api: &Api) -> u64 {
    let (status, text) = get_text(client, &api.url("/metrics")).await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|line| line.strip_prefix("ipam_api_streams_open "))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no ipam_api_streams_open in\n{text}"))
}

/// Waits until `streams_open` is `wanted`, for at most `within`.
async fn until_streams_open(client: &awc::Client, api: &Api, wanted: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let open = streams_open(client, api).await;
        if open == wanted {
            return;
        }
        assert!(Instant::now() < deadline, "{open} streams open, not {wanted}, after {within:?}");
        sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_batch_with_an_id_used_twice_is_refused_and_nothing_is_written() {
    let api = Api::start(ApiConfig::default());
    let first = network_upserted_json("0b9f7d3e-6a55-4e0b-8f5c-7d2a1c000040", json!(true));
    let mut second = network_upserted_json("0b9f7d3e-6a55-4e0b-8f5c-7d2a1c000041", json!(true));
    second["id"] = first["id"].clone();
    let before = api.ends();
    block_on(async {
        let client = client(None);
        let batch = json!([first, second]).to_string();
        let (status, body) = post(&client, &api.url("/v1/events"), "application/json", batch).await;
        assert_eq!((status, &body["error"]["code"]), (400, &json!("duplicate_event_id")), "{body}");
        assert_eq!((&body["error"]["index"], &body["error"]["field"]), (&json!(1), &json!("id")), "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains("events 0 and 1"), "{message}");
    });
    assert_eq!(api.ends(), before, "a refused batch wrote something");
}

#[test]
fn a_stream_position_past_the_end_is_refused_instead_of_replaying_from_the_start() {
    let api = Api::start(ApiConfig::default());
    api.append(&[subnet_activated(1)], false);
    let partition = ipam_log::partition::for_key(NETWORK.to_string().as_bytes(), 4);
    block_on(async {
        let client = client(None);
        for (from, code) in [
            (format!("ipam.reservations/{partition}:9223372036854775808"), "cursor_beyond_end"),
            (format!("ipam.reservations/{partition}:18446744073709551615"), "cursor_beyond_end"),
            (format!("ipam.reservations/{partition}:2"), "cursor_beyond_end"),
            (format!("ipam.reservations/{partition}:18446744073709551616"), "cursor_beyond_end"),
            (format!("ipam.reservations/{partition}:-1"), "invalid_cursor"),
            ("ipam.reservations/4294967296:0".to_owned(), "invalid_cursor"),
            ("ipam.reservations/4:0".to_owned(), "invalid_cursor"),
            ("ipam.nothing/0:0".to_owned(), "invalid_cursor"),
        ] {
            let url = api.url(&format!("/v1/stream?from={}", from.replace('/', "%2F").replace(':', "%3A")));
            // The status first: a stream that was wrongly opened never ends its body.
            let mut response = client.get(&url).send().await.expect("GET");
            assert_eq!(response.status().as_u16(), 400, "{from}");
            let body: Value = serde_json::from_slice(&response.body().await.expect("body")).expect("JSON");
            assert_eq!(body["error"]["code"], code, "{from}: {body}");
        }
        let (status, body) = get(&client, &api.url("/v1/stream?form=start")).await;
        assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_query")), "a misspelt parameter: {body}");
        // The end itself is a position: the stream waits there.
        let _at_end =
            open_stream(&client, api.url(&format!("/v1/stream?from=ipam.reservations%2F{partition}%3A1"))).await;
    });
}

/// A stream opened on a plain TCP connection, read until its headers and first comment: dropping it
/// closes the connection, as a client that goes away does.
fn raw_stream(address: SocketAddr, path: &str) -> std::net::TcpStream {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n").expect("request");
    let mut seen = Vec::new();
    let mut buffer = [0; 1024];
    while !String::from_utf8_lossy(&seen).contains(": connected") {
        let read = stream.read(&mut buffer).expect("the stream answers");
        assert!(read > 0, "the server closed the stream: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..read]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&seen));
    stream
}

#[test]
fn a_dropped_stream_gives_its_place_back_promptly() {
    // Four places for one client: each round takes them all, so a place not given back fails the
    // next round, and the count must be back at zero within seconds.
    let config = ApiConfig { max_streams_per_client: 4, ..ApiConfig::default() };
    let api = Api::start(config);
    let client = client(None);
    for _round in 0..5 {
        let streams: Vec<_> = (0..4).map(|_| raw_stream(api.address, "/v1/stream")).collect();
        block_on(until_streams_open(&client, &api, 4, DEADLINE));
        drop(streams);
        // A gone client is found by the second write after it left, about two keep-alives (2 s);
        // 6 s leaves slack for a loaded machine. Places used to be held 15 s and more.
        block_on(until_streams_open(&client, &api, 0, Duration::from_secs(6)));
    }
}

#[test]
fn streams_over_a_limit_are_refused_with_retry_after() {
    let config = ApiConfig { max_streams: 3, max_streams_per_client: 2, ..ApiConfig::default() };
    let api = Api::start(config);
    block_on(async {
        let client = client(None);
        let _first = open_stream(&client, api.url("/v1/stream")).await;
        let _second = open_stream(&client, api.url("/v1/stream")).await;
        let mut response = client.get(api.url("/v1/stream")).send().await.expect("third");
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
        let body: Value = serde_json::from_slice(&response.body().await.expect("body")).expect("json");
        assert_eq!(body["error"]["code"], "too_many_client_streams", "{body}");
        assert_eq!(streams_open(&client, &api).await, 2);
    });
    // The server-wide limit, with a limit per client that does not bite.
    let config = ApiConfig { max_streams: 2, max_streams_per_client: 10, ..ApiConfig::default() };
    let api = Api::start(config);
    block_on(async {
        let client = client(None);
        let _first = open_stream(&client, api.url("/v1/stream")).await;
        let _second = open_stream(&client, api.url("/v1/stream")).await;
        let mut response = client.get(api.url("/v1/stream")).send().await.expect("third");
        assert_eq!(response.status().as_u16(), 503);
        assert!(response.headers().contains_key("retry-after"));
        let body: Value = serde_json::from_slice(&response.body().await.expect("body")).expect("json");
        assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    });
}

#[test]
fn without_the_token_a_client_gets_no_stream_place() {
    let config = ApiConfig { bearer_token: Some("s3cret".to_owned()), max_streams: 1, ..ApiConfig::default() };
    let api = Api::start(config);
    block_on(async {
        let (anonymous, right) = (client(None), client(Some("s3cret")));
        for _ in 0..3 {
            let (status, body) = get(&anonymous, &api.url("/v1/stream?from=start")).await;
            assert_eq!((status, &body["error"]["code"]), (401, &json!("unauthorized")));
        }
        assert_eq!(streams_open(&right, &api).await, 0);
        // The one place is still free for a client with the token.
        let _stream = open_stream(&right, api.url("/v1/stream")).await;
        until_streams_open(&right, &api, 1, DEADLINE).await;
    });
}

/// GETs `/health` until it answers `status`, and answers its body.
async fn health_until(client: &awc::Client, api: &Api, status: u16, what: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (got, body) = get(client, &api.url("/health")).await;
        if got == status {
            return body;
        }
        assert!(Instant::now() < deadline, "/health never answered {status} ({what}); last {got} {body}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// The failing part named `component` in a `/health` body.
fn failing<'a>(health: &'a Value, component: &str) -> &'a Value {
    health["failing"]
        .as_array()
        .and_then(|parts| parts.iter().find(|part| part["component"] == component))
        .unwrap_or_else(|| panic!("{component} is not failing in {health}"))
}

/// A partition whose records stay held back behind the same last stable offset (on Kafka, a
/// transaction that was never ended: a hanging one) makes `/health` name it once the read model's
/// stuck limit has passed, and ok again once they are not held back.
#[test]
fn health_names_a_partition_that_holds_records_back_behind_its_last_stable_offset() {
    let (api, flaky) =
        Api::start_flaky(ApiConfig { read_model_stuck_after: Duration::from_millis(300), ..ApiConfig::default() });
    block_on(async {
        let client = client(None);
        health_until(&client, &api, 200, "nothing held back").await;
        *flaky.held_back.lock().expect("lock") = 3;
        let body = health_until(&client, &api, 503, "records held back past the limit").await;
        let part = failing(&body, "api-log");
        assert_eq!(part["state"], "degraded", "{body}");
        let detail = part["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(&format!(
                "`{}` partition 0: 3 records after its last stable offset",
                Topic::Reservations.name()
            )),
            "{body}"
        );
        *flaky.held_back.lock().expect("lock") = 0;
        health_until(&client, &api, 200, "nothing held back again").await;
    });
}

#[test]
fn health_is_not_ok_while_a_component_on_the_board_is_not() {
    let health = Health::new();
    health.set("allocator", ComponentState::Ok);
    let api = Api::start_on(ApiConfig::default(), health, |log| log);
    block_on(async {
        let client = client(None);
        let ok = health_until(&client, &api, 200, "all ok").await;
        assert_eq!(ok["status"], "ok");
        api.health.set("allocator", ComponentState::Degraded("the log is unreadable".to_owned()));
        let (status, body) = get(&client, &api.url("/health")).await;
        assert_eq!((status, &body["status"]), (503, &json!("unhealthy")), "{body}");
        let part = failing(&body, "allocator");
        assert_eq!((&part["state"], &part["detail"]), (&json!("degraded"), &json!("the log is unreadable")));
        assert_eq!(body["failing"].as_array().map(Vec::len), Some(1), "only the allocator fails: {body}");
        api.health.set("allocator", ComponentState::Starting("rebuilding partition 3".to_owned()));
        let (status, body) = get(&client, &api.url("/health")).await;
        assert_eq!((status, &failing(&body, "allocator")["state"]), (503, &json!("starting")));
        api.health.set("allocator", ComponentState::Ok);
        health_until(&client, &api, 200, "the allocator is back").await;
    });
}

#[test]
fn health_names_the_read_model_while_the_log_cannot_be_read() {
    let (api, flaky) = Api::start_flaky(ApiConfig::default());
    block_on(async {
        let client = client(None);
        health_until(&client, &api, 200, "the read model caught up").await;
        flaky.set(Reads::Fail);
        let body = health_until(&client, &api, 503, "reads fail").await;
        let part = failing(&body, "api-read-model");
        assert_eq!(part["state"], "degraded", "{body}");
        let detail = part["detail"].as_str().expect("detail");
        assert!(detail.contains("database disk image is malformed"), "{detail}");
        flaky.set(Reads::Work);
        health_until(&client, &api, 200, "reads work again").await;
    });
}

#[test]
fn health_calls_a_read_model_that_stays_behind_the_log_stuck() {
    let (api, flaky) =
        Api::start_flaky(ApiConfig { read_model_stuck_after: Duration::from_millis(300), ..ApiConfig::default() });
    block_on(async {
        let client = client(None);
        health_until(&client, &api, 200, "the read model caught up").await;
        // Reads answer nothing without an error, and the log moves on.
        flaky.set(Reads::Nothing);
        flaky.wait_until_quiet();
        api.append(&[subnet_activated(1)], false);
        let body = health_until(&client, &api, 503, "the read model is stuck").await;
        let part = failing(&body, "api-read-model");
        assert_eq!(part["state"], "degraded", "{body}");
        assert!(part["detail"].as_str().is_some_and(|d| d.starts_with("stuck: 1 records behind")), "{body}");
        assert_eq!(body["read_model"]["behind"], 1, "{body}");
        flaky.set(Reads::Work);
        let body = health_until(&client, &api, 200, "the read model moves again").await;
        assert_eq!(body["read_model"]["behind"], 0, "{body}");
    });
}
