//! Structured fuzzing of everything that reads bytes or values from outside: the CloudEvents
//! decoder and its per-type decoding, `dead_letter::ingest`, the API's batch decoder, the core's
//! value parsers, the snapshot restores, and the state machines and dnsmasq renderer fed with
//! whatever decodes. Bad input must become an error value (a rejection, a dead letter, a 400),
//! never a panic, and what decodes must keep the machines' invariants and render only safe lines.
//!
//! Three generators: arbitrary bytes (random, JSON-flavoured, and byte-level mutations of valid
//! samples); near-valid events (the samples of `samples.rs` mutated through `serde_json::Value`:
//! fields dropped, JSON types swapped, edge-case strings and numbers, another `type`, duplicate
//! keys, deep nesting); and sequences of near-valid events over a small universe of ids, so that
//! they meet in the state machines.
//!
//! A seeded loop rather than proptest: it runs about a million cases a minute in a release build,
//! and shrinking mutated JSON would not make a failing case clearer than the case itself, which is
//! printed whole. `IPAM_FUZZ_CASES` sets the cases per target (default: a few hundred to two
//! thousand, seconds in a debug build; sequence targets take a twentieth), `IPAM_FUZZ_SEED` the seed
//! (default: a fixed one, so the test command's verdict depends on the code only; `random` draws
//! one), and `IPAM_FUZZ_CASE` runs one case of that seed. The soak: see README.md, "Test it".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Debug};
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ipam_api::model::ReadModel;
use ipam_api::publish::{decode_batch, is_input_type};
use ipam_core::StateMachine;
use ipam_core::allocator::{Allocator, placement_facts};
use ipam_core::dhcp_plan::{
    DhcpHost, DhcpPlan, HostDhcpView, NetworkDhcpConfig, PlanChange, PlanOptions, SubnetDhcpConfig, plan, plan_network,
    port_releases, port_requests,
};
use ipam_core::event::*;
use ipam_core::placement::{Placement, PlacementConfig};
use ipam_core::pool::AddressPool;
use ipam_core::{
    Cidr, Envelope, EventId, HostId, InterfaceName, IpRange, Mac, NetworkId, SubnetId, SubnetSpec, Timestamp, VmId,
    VnicId,
};
use ipam_host_agent::dnsmasq::{HostLines, host_line, ignore_line, render};
use ipam_host_agent::dnsmasq_shards::{
    COMPACTION_INTERVAL, HostAddresses, ShardAction, ShardState, apply_host_change, desired_hosts, shard_count, split,
};
use ipam_log::Record;
use ipam_log::dead_letter::{DeadLetter, Ingested, ingest};
use serde_json::{Value, json};

// ---- The runner -------------------------------------------------------------------------------

/// The suite's seeded generator: a seed reproduces a case.
type Rng = ipam_tests::rng::SplitMix64;

/// The seed of the test command's runs.
const DEFAULT_SEED: u64 = 0x1FA3_2026_1202;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|value| value.trim().parse().ok())
}

/// Bytes shown as a Rust byte string, so a failing input can be pasted into a regression test.
struct Bytes(Vec<u8>);

impl Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic with a non-string payload".to_owned())
}

/// Runs `check` on inputs of `generate`, each from its own seed, catching panics: `default_cases`
/// of them, or `IPAM_FUZZ_CASES / divisor` (targets whose case is a whole sequence of events take
/// a fraction of the count). Fails with the seed, the case number and the input of the first
/// failures; returns the number of cases run.
fn fuzz<I: Debug>(
    name: &str,
    default_cases: u64,
    divisor: u64,
    generate: impl Fn(&mut Rng) -> I,
    check: impl Fn(&I) -> Result<(), String>,
) -> u64 {
    // A fixed seed by default, so that the test command gives the same verdict on the same code;
    // `IPAM_FUZZ_SEED=random` draws one from the clock to explore further.
    let seed = match std::env::var("IPAM_FUZZ_SEED").as_deref().map(str::trim) {
        Ok("random") => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        }
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("IPAM_FUZZ_SEED={text:?} is not a number or `random`")),
        Err(_) => DEFAULT_SEED,
    };
    let cases = env_u64("IPAM_FUZZ_CASES").map_or(default_cases, |cases| cases.div_ceil(divisor));
    let only = env_u64("IPAM_FUZZ_CASE");
    let target_seed =
        name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    println!("fuzz::{name}: seed {seed}, {cases} cases (rerun with IPAM_FUZZ_SEED={seed})");
    let started = Instant::now();
    let (mut run, mut failed, mut reports) = (0u64, 0u64, Vec::new());
    for case in only.map_or(0..cases, |case| case..case + 1) {
        let mut rng = ipam_tests::rng::SplitMix64(target_seed ^ case.wrapping_mul(0xD1B5_4A32_D192_ED03));
        run += 1;
        let (input, message) = match catch_unwind(AssertUnwindSafe(|| generate(&mut rng))) {
            Ok(input) => match catch_unwind(AssertUnwindSafe(|| check(&input))) {
                Ok(Ok(())) => continue,
                Ok(Err(message)) => (format!("{input:#?}"), message),
                Err(payload) => (format!("{input:#?}"), format!("panicked: {}", panic_text(&*payload))),
            },
            Err(payload) => ("(the generator itself panicked)".to_owned(), panic_text(&*payload)),
        };
        failed += 1;
        if reports.len() < 3 {
            let input: String =
                if input.len() > 20_000 { input.chars().take(20_000).chain(['…']).collect() } else { input };
            reports.push(format!(
                "case {case}: {message}\n  reproduce: IPAM_FUZZ_SEED={seed} IPAM_FUZZ_CASE={case} \
                 cargo test -p ipam-tests --test it fuzz::{name}\n  input: {input}"
            ));
        }
        if failed >= 50 {
            break;
        }
    }
    println!("fuzz::{name}: {run} cases in {:.2?}, {failed} failed", started.elapsed());
    assert!(failed == 0, "fuzz::{name}: {failed} of {run} cases failed (seed {seed})\n{}", reports.join("\n\n"));
    run
}

macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err(format!($($message)+));
        }
    };
}

// ---- Edge cases ---------------------------------------------------------------------------------

fn edge_strings() -> &'static [String] {
    static EDGES: OnceLock<Vec<String>> = OnceLock::new();
    EDGES.get_or_init(|| {
        let mut edges: Vec<String> = [
            "",
            " ",
            "\0",
            "\n",
            "\r\n",
            "a\nb",
            "br0\ndhcp-script=/bin/sh",
            "dhcp-script=/bin/sh",
            "#",
            ",",
            "=",
            "é",
            "🦀",
            "\u{202e}",
            "\u{feff}",
            "\u{7f}",
            "\u{1}",
            "\\",
            "\"",
            "null",
            "true",
            "1",
            // Addresses and subnets.
            "10.0.0.1",
            "10.0.0.0",
            "10.0.0.255",
            "10.0.0.10",
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "010.0.0.1",
            "::",
            "::1",
            "::ffff:1.2.3.4",
            "::ffff:10.0.0.5",
            "fe80::1%eth0",
            "2001:db8::1",
            "2001:db8::123",
            "2001:DB8::1",
            " 10.0.0.1",
            "10.0.0.1 ",
            "1.2.3.4/32",
            "224.0.0.1/4",
            "224.0.0.0/4",
            "0.0.0.0/0",
            "::/0",
            "2001:db8::/48",
            "2001:db8::/64",
            "2001:db8::/125",
            "2001:db8::/127",
            "2001:db8::/128",
            "10.0.0.0/8",
            "10.0.0.0/24",
            "10.0.0.0/30",
            "10.0.0.0/31",
            "10.0.0.0/32",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/",
            "/24",
            "10.0.0.0/24/24",
            // MACs.
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "52:54:00:12:34:56",
            "52-54-00-12-34-56",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5254.0012.3456",
            "52:54:00:12:34:5g",
            "02:00:00:00:00:01",
            "52:54:00:12:34:56\n",
            "+2:54:00:12:34:56",
            "52:54:0:12:34:56",
            // Ids.
            "00000000-0000-0000-0000-000000000001",
            "00000000-0000-0000-0000-000000000000",
            "00000000-0000-0000-0000-000000000003",
            "00000000-0000-0000-0000-00000000000A",
            "{00000000-0000-0000-0000-000000000001}",
            "urn:uuid:00000000-0000-0000-0000-000000000001",
            "00000000000000000000000000000001",
            "00000000-0000-0000-0000-0000000000001",
            // Times.
            "2026-11-30T00:00:00Z",
            "2026-11-30T00:00:00+14:00",
            "2026-11-30T00:00:00.123456789123Z",
            "2026-02-30T00:00:00Z",
            "2026-12-31T23:59:60Z",
            "9999-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
            "+10000-01-01T00:00:00Z",
            "-0001-01-01T00:00:00Z",
            "+262142-12-31T23:59:59Z",
            "2026-11-30",
            "2026-11-30 00:00:00Z",
            "2026-11-30T00:00:00",
            // Interface names and enums.
            "br-vm",
            "br0",
            "eth0.100",
            "a23456789012345",
            "a234567890123456",
            ".",
            "..",
            "eth0:1",
            "br vm",
            "-",
            "up",
            "down",
            "maintenance",
            "UP",
            "running",
            "failed",
            "vnic_down",
            "placed",
            "host_down",
            "vnic",
            "dhcp_server",
            "subnet_exhausted",
            "invalid_mac",
            // Types.
            "ipam.vnic.started.v1",
            "ipam.vnic.started.v2",
            "IPAM.VNIC.STARTED.V1",
            "ipam.clock.ticked.v1",
            "1.0",
            "1.0 ",
            "0.3",
            "application/json",
            "application/cloudevents+json",
            "text/plain",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        edges.extend(["a".repeat(255), "a".repeat(256), "é".repeat(200), "\n".repeat(64)]);
        edges.extend(Event::TYPES.iter().map(|t| (*t).to_owned()));
        edges
    })
}

/// Number tokens a `serde_json::Value` cannot hold, written into the text as they are.
const RAW_NUMBERS: [&str; 22] = [
    "-1",
    "0",
    "1",
    "2",
    "3",
    "255",
    "256",
    "65535",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "1e309",
    "-1e309",
    "1.5",
    "-0",
    "1e2",
    "0.0000001",
    "123456789012345678901234567890",
];

fn edge_string(rng: &mut Rng) -> String {
    let mut text = rng.pick(edge_strings()).clone();
    if rng.one_in(8) {
        // Two edges glued, or an edge with a random character: near misses of both.
        let other = rng.pick(edge_strings()).clone();
        if rng.one_in(2) {
            text.push_str(&other);
        } else {
            let at = text.char_indices().map(|(i, _)| i).nth(rng.index(text.chars().count().max(1))).unwrap_or(0);
            text.insert(at, char::from_u32(rng.index(0x250) as u32).unwrap_or('x'));
        }
    }
    if rng.one_in(500) {
        text = text.repeat(10_000 / text.len().max(1) + 1);
    }
    text
}

// ---- Generators ---------------------------------------------------------------------------------

/// A JSON document being mutated: a value, and raw tokens (numbers out of range, deep nesting,
/// invalid escapes) that replace placeholder strings when it is written.
struct Doc {
    value: Value,
    raw: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

impl Doc {
    fn raw_token(&mut self, token: Vec<u8>) -> Value {
        let placeholder = Value::String(format!("@@raw{}@@", self.raw.len()));
        self.raw.push(token);
        placeholder
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(&self.value).unwrap();
        for (n, token) in self.raw.iter().enumerate() {
            let placeholder = format!("\"@@raw{n}@@\"").into_bytes();
            if let Some(at) = bytes.windows(placeholder.len()).position(|window| window == placeholder) {
                bytes.splice(at..at + placeholder.len(), token.iter().copied());
            }
        }
        bytes
    }
}

fn paths(value: &Value, prefix: &mut Vec<Segment>, out: &mut Vec<Vec<Segment>>) {
    out.push(prefix.clone());
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                prefix.push(Segment::Key(key.clone()));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                prefix.push(Segment::Index(index));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn get_mut<'a>(value: &'a mut Value, path: &[Segment]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |value, segment| match segment {
        Segment::Key(key) => value.get_mut(key.as_str()),
        Segment::Index(index) => value.get_mut(*index),
    })
}

fn nested(rng: &mut Rng) -> Vec<u8> {
    let depth = 1 + rng.index(300);
    let (open, close) = if rng.one_in(2) { ("[", "]") } else { ("{\"a\":", "}") };
    let mut text = open.repeat(depth);
    let innermost: &str = rng.pick::<&str>(&["1", "null", "\"x\"", "[]", "{}"]);
    text.push_str(innermost);
    text.push_str(&close.repeat(depth));
    text.into_bytes()
}

/// A scalar or small value of any JSON type, edge cases first.
fn edge_value(rng: &mut Rng, doc: &mut Doc) -> Value {
    match rng.index(12) {
        0..=4 => Value::String(edge_string(rng)),
        5 => doc.raw_token(rng.pick(&RAW_NUMBERS).as_bytes().to_vec()),
        6 => rng.pick(&[Value::Null, json!(true), json!(false), json!([]), json!({})]).clone(),
        7 => json!([edge_string(rng)]),
        8 => json!({ "kind": edge_string(rng) }),
        9 => doc.raw_token(nested(rng)),
        10 => {
            // Strings JSON allows to be written but Rust strings cannot hold, and invalid escapes.
            let tokens: [&[u8]; 5] = [b"\"\\ud800\"", b"\"\\udc00x\"", b"\"\\u0000\"", b"\"\\x41\"", b"\"\xff\xfe\""];
            let token: &[u8] = rng.pick::<&[u8]>(&tokens);
            doc.raw_token(token.to_vec())
        }
        _ => json!(rng.next_u64() as i64),
    }
}

/// The same value under another JSON type, as a sender confused about the schema would write it.
fn swapped_type(value: &Value, rng: &mut Rng) -> Value {
    match value {
        Value::String(text) => match rng.index(3) {
            0 => text.parse::<i64>().map(Value::from).unwrap_or(json!(0)),
            1 => json!([text]),
            _ => json!({ "value": text }),
        },
        Value::Number(number) => json!(number.to_string()),
        Value::Bool(flag) => json!(flag.to_string()),
        Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
        Value::Object(map) => Value::Array(map.values().cloned().collect()),
        Value::Null => json!(""),
    }
}

/// Addresses, subnets, MACs and ids that keep their kind but not always their validity: what a
/// sender mixing up fields, families or universes would write.
const SAME_KIND_IPS: [&str; 16] = [
    "10.1.0.1",
    "10.1.0.5",
    "10.1.0.15",
    "10.1.1.2",
    "10.0.0.255",
    "0.0.0.0",
    "255.255.255.255",
    "224.0.0.1",
    "127.0.0.1",
    "169.254.0.1",
    "::ffff:1.2.3.4",
    "::",
    "2001:db8:1::3",
    "2001:db8::1",
    "fe80::1",
    "ff02::1",
];
const SAME_KIND_CIDRS: [&str; 16] = [
    "10.1.0.0/28",
    "10.1.1.0/29",
    "2001:db8:1::/125",
    "10.1.0.0/24",
    "0.0.0.0/0",
    "224.0.0.0/4",
    "10.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "10.0.0.0/31",
    "10.0.0.0/32",
    "::/0",
    "2001:db8::/48",
    "fe80::/64",
    "2001:db8::/127",
    "2001:db8::/128",
];
const SAME_KIND_MACS: [&str; 6] = [
    "52:54:00:00:00:01",
    "52:54:00:00:00:02",
    "02:00:00:00:00:01",
    "ff:ff:ff:ff:ff:ff",
    "01:00:5e:00:00:01",
    "00:00:00:00:00:00",
];
const SAME_KIND_IDS: [u128; 10] = [0, 1, 2, 3, 100, 101, 103, 500, 501, 1000];

/// Another value of the same kind as `value` (an address for an address, a MAC for a MAC, an id
/// of the small universe for an id, an edge number for a number), if it has a kind.
fn same_kind(value: &Value, rng: &mut Rng, doc: &mut Doc) -> Option<Value> {
    match value {
        Value::Number(_) => Some(doc.raw_token(rng.pick(&RAW_NUMBERS).as_bytes().to_vec())),
        Value::String(text) if text.parse::<IpAddr>().is_ok() => Some(json!(rng.pick(&SAME_KIND_IPS))),
        Value::String(text) if text.parse::<ipnet::IpNet>().is_ok() => Some(json!(rng.pick(&SAME_KIND_CIDRS))),
        Value::String(text) if text.len() == 17 && text.as_bytes()[2] == b':' => Some(json!(rng.pick(&SAME_KIND_MACS))),
        Value::String(text) if text.parse::<NetworkId>().is_ok() => {
            Some(json!(uuid::Uuid::from_u128(*rng.pick(&SAME_KIND_IDS)).to_string()))
        }
        Value::String(text) if serde_json::from_value::<Timestamp>(json!(text)).is_ok() => {
            Some(json!(Timestamp::from_unix_ms(rng.next_u64() as i64 % 100_000_000_000_000)))
        }
        _ => None,
    }
}

/// One structural mutation of `doc`.
fn mutate(doc: &mut Doc, rng: &mut Rng) {
    let mut all = Vec::new();
    paths(&doc.value, &mut Vec::new(), &mut all);
    let path = rng.pick(&all).clone();
    match rng.index(11) {
        0 => {
            // Drop a field or an item.
            if let Some((last, parent)) = path.split_last()
                && let Some(parent) = get_mut(&mut doc.value, parent)
            {
                match (parent, last) {
                    (Value::Object(map), Segment::Key(key)) => {
                        map.remove(key);
                    }
                    (Value::Array(items), Segment::Index(index)) if *index < items.len() => {
                        items.remove(*index);
                    }
                    _ => {}
                }
            }
        }
        1..=3 => {
            let current = get_mut(&mut doc.value, &path).map(|node| node.clone()).unwrap_or(Value::Null);
            let replacement = match same_kind(&current, rng, doc) {
                Some(value) if !rng.one_in(3) => value,
                _ => edge_value(rng, doc),
            };
            if let Some(node) = get_mut(&mut doc.value, &path) {
                *node = replacement;
            }
        }
        4 => {
            if let Some(node) = get_mut(&mut doc.value, &path) {
                *node = swapped_type(node, rng);
            }
        }
        5 => {
            // Another `type`: the data of one event read as another's.
            let type_name = if rng.one_in(4) { edge_string(rng) } else { (*rng.pick(Event::TYPES)).to_owned() };
            if let Some(map) = doc.value.as_object_mut() {
                map.insert("type".to_owned(), json!(type_name));
            }
        }
        6 => {
            // The same field from another sample: a valid value, perhaps of another type's field.
            let samples = sample_values();
            let mut donor_paths = Vec::new();
            let donor = rng.pick(samples);
            paths(donor, &mut Vec::new(), &mut donor_paths);
            let donor_path = rng.pick(&donor_paths);
            let value = donor_path
                .iter()
                .try_fold(donor, |value, segment| match segment {
                    Segment::Key(key) => value.get(key.as_str()),
                    Segment::Index(index) => value.get(*index),
                })
                .cloned()
                .unwrap_or(Value::Null);
            if let Some(node) = get_mut(&mut doc.value, &path) {
                *node = value;
            }
        }
        7 => {
            // An unknown field, which readers must ignore.
            let value = edge_value(rng, doc);
            if let Some(Value::Object(map)) = get_mut(&mut doc.value, &path) {
                map.insert(format!("x-{}", edge_string(rng)), value);
            }
        }
        9 => {
            // A value from elsewhere in the same document: a gateway where a pool's end was.
            let other = rng.pick(&all).clone();
            let value = get_mut(&mut doc.value, &other).map(|node| node.clone());
            if let (Some(value), Some(node)) = (value, get_mut(&mut doc.value, &path))
                && !value.to_string().contains("@@raw")
            {
                *node = value;
            }
        }
        8 => {
            let token = nested(rng);
            let value = doc.raw_token(token);
            if let Some(node) = get_mut(&mut doc.value, &path) {
                *node = value;
            }
        }
        _ => {
            // Wrap the node in an array or an object: one level too deep.
            if let Some(node) = get_mut(&mut doc.value, &path) {
                *node = if rng.one_in(2) { json!([node.take()]) } else { json!({ "value": node.take() }) };
            }
        }
    }
}

/// Mutations of the written text: a duplicate key, a byte changed, the end cut off.
fn mutate_text(bytes: &mut Vec<u8>, doc: &Doc, rng: &mut Rng) {
    match rng.index(4) {
        0 => {
            // A duplicate key: serde_json keeps the last, so put it first or last in an object.
            let mut keys = Vec::new();
            let mut all = Vec::new();
            paths(&doc.value, &mut Vec::new(), &mut all);
            keys.extend(all.iter().filter_map(|path| match path.last() {
                Some(Segment::Key(key)) => Some(key.clone()),
                _ => None,
            }));
            let key = if keys.is_empty() { "type".to_owned() } else { rng.pick(&keys).clone() };
            let value = serde_json::to_vec(&Value::String(edge_string(rng))).unwrap();
            let braces: Vec<usize> = bytes.iter().enumerate().filter(|(_, b)| **b == b'{').map(|(i, _)| i).collect();
            if let Some(&at) = braces.get(rng.index(braces.len().max(1))) {
                let mut insert = serde_json::to_vec(&key).unwrap();
                insert.push(b':');
                insert.extend(value);
                insert.push(b',');
                bytes.splice(at + 1..at + 1, insert);
            }
        }
        1 if !bytes.is_empty() => {
            let at = rng.index(bytes.len());
            bytes[at] = *rng.pick(b"{}[]\":,0123456789.-eE \\\n\0\xff");
        }
        2 => bytes.truncate(rng.index(bytes.len() + 1)),
        _ => {
            let at = rng.index(bytes.len() + 1);
            let insert = if rng.one_in(2) { b",".to_vec() } else { vec![rng.next_u64() as u8] };
            bytes.splice(at..at, insert);
        }
    }
}

fn sample_values() -> &'static [Value] {
    static SAMPLES: OnceLock<Vec<Value>> = OnceLock::new();
    SAMPLES.get_or_init(|| crate::samples::every_type().iter().map(Envelope::to_json).collect())
}

/// A near-valid record: `value` with a few structural mutations, and now and then a textual one.
fn near_valid(value: Value, mutations: usize, rng: &mut Rng) -> Vec<u8> {
    let mut doc = Doc { value, raw: Vec::new() };
    for _ in 0..mutations {
        mutate(&mut doc, rng);
    }
    let mut bytes = doc.to_bytes();
    if rng.one_in(6) {
        mutate_text(&mut bytes, &doc, rng);
    }
    bytes
}

/// Arbitrary bytes: random, JSON-flavoured, or a valid sample damaged byte by byte.
fn arbitrary_bytes(rng: &mut Rng) -> Bytes {
    let max_len = if rng.one_in(20) { 4096 } else { 160 };
    let len = rng.index(max_len);
    Bytes(match rng.index(3) {
        0 => (0..len).map(|_| rng.next_u64() as u8).collect(),
        1 => {
            let alphabet = b"{}[]\":,0123456789.-+eEtrufalsn \\/ux\n";
            (0..len).map(|_| *rng.pick(alphabet)).collect()
        }
        _ => {
            let mut bytes = serde_json::to_vec(rng.pick(sample_values())).unwrap();
            for _ in 0..1 + rng.index(8) {
                if bytes.is_empty() {
                    break;
                }
                let at = rng.index(bytes.len());
                match rng.index(4) {
                    0 => bytes[at] = rng.next_u64() as u8,
                    1 => {
                        bytes.remove(at);
                    }
                    2 => bytes.insert(at, rng.next_u64() as u8),
                    _ => bytes.truncate(at),
                }
            }
            bytes
        }
    })
}

// ---- Checks of one record -------------------------------------------------------------------------

/// Everything that reads a record, fed `raw`: the decoder, `ingest`, the API's batch decoder, the
/// snapshot restores, and the state machines with whatever decodes.
fn check_record(raw: &[u8]) -> Result<(), String> {
    let decoded = Envelope::decode(raw);
    match &decoded {
        Ok(envelope) => {
            // What decodes must encode to bytes that decode to the same envelope: outputs carry the
            // input's time, and consumers must be able to read them.
            let again = Envelope::decode(&envelope.to_bytes());
            ensure!(again.as_ref() == Ok(envelope), "re-encoding is not read back: {again:?}");
            ensure!(Event::topic_of(envelope.event.type_name()).is_some(), "decoded an unknown type");
        }
        Err(error) => {
            ensure!(!error.message.is_empty(), "an error without a message");
            if let Some(rejection) = error.rejection() {
                ensure!(matches!(rejection, Event::RequestRejected(_)), "a rejection that is not one");
            }
        }
    }
    let record =
        Record { topic: "ipam.networks".to_owned(), partition: 3, offset: 7, key: "k".to_owned(), value: raw.to_vec() };
    match ingest(&record) {
        Ingested::Event(envelope) => ensure!(decoded.as_ref() == Ok(&envelope), "ingest and decode disagree"),
        Ingested::Rejected { rejection: out, .. } => {
            ensure!(decoded.is_err(), "a decodable record was rejected");
            let rejection =
                Envelope::decode(&out.value).map_err(|e| format!("our own rejection is unreadable: {e}"))?;
            ensure!(matches!(rejection.event, Event::RequestRejected(_)), "rejected as {rejection:?}");
            ensure!(
                out.topic == rejection.event.topic().name() && out.key == rejection.event.key(),
                "misrouted rejection"
            );
            apply_once(&rejection);
        }
        Ingested::DeadLetter(out) => {
            ensure!(decoded.is_err(), "a decodable record was dead-lettered");
            ensure!(out.topic == Topic::DeadLetter.name(), "a dead letter on {}", out.topic);
            let letter: DeadLetter =
                serde_json::from_slice(&out.value).map_err(|e| format!("our own dead letter is unreadable: {e}"))?;
            ensure!(letter.value().as_deref() == Some(raw), "the dead letter does not keep the record's bytes");
        }
    }
    if let Ok(value) = serde_json::from_slice::<Value>(raw) {
        check_batch(value.clone(), 1)?;
        check_batch(Value::Array(vec![value.clone(), value]), 2)?;
    }
    check_restores(raw)?;
    if let Ok(envelope) = &decoded {
        apply_once(envelope);
    }
    Ok(())
}

/// The API's decoder: a 400 with a code, or events it takes as inputs.
fn check_batch(body: Value, len: usize) -> Result<(), String> {
    match decode_batch(body) {
        Ok(envelopes) => {
            ensure!(envelopes.len() == len, "{} events decoded from a batch of {len}", envelopes.len());
            for envelope in &envelopes {
                ensure!(is_input_type(envelope.event.type_name()), "accepted output {}", envelope.event.type_name());
            }
        }
        Err(error) => {
            ensure!(error.status.as_u16() == 400 && !error.code.is_empty(), "refused with {error:?}");
        }
    }
    Ok(())
}

/// Every restore, fed `bytes`: an error, or a state whose snapshot restores to the same bytes.
fn check_restores(bytes: &[u8]) -> Result<(), String> {
    if let Ok(allocator) = Allocator::restore(&(), bytes) {
        let snapshot = allocator.snapshot();
        let again =
            Allocator::restore(&(), &snapshot).map_err(|e| format!("an allocator snapshot does not restore: {e}"))?;
        ensure!(again == allocator, "an allocator snapshot restores to another state");
    }
    if let Ok(placement) = Placement::restore(&PlacementConfig::default(), bytes) {
        let snapshot = placement.snapshot();
        let again = Placement::restore(&PlacementConfig::default(), &snapshot)
            .map_err(|e| format!("a placement snapshot does not restore: {e}"))?;
        ensure!(again.snapshot() == snapshot, "a placement snapshot restores to another state");
    }
    if let Ok(view) = HostDhcpView::restore(&(), bytes) {
        let again = HostDhcpView::restore(&(), &view.snapshot())
            .map_err(|e| format!("a view snapshot does not restore: {e}"))?;
        ensure!(again == view, "a view snapshot restores to another state");
        check_plan(&plan(&view, &PlanOptions::default()))?;
    }
    Ok(())
}

/// One decoded event into fresh machines: nothing may panic.
fn apply_once(envelope: &Envelope) {
    Allocator::new().apply(envelope);
    Placement::new(PlacementConfig::default()).apply(envelope);
    let mut view = HostDhcpView::new(HostId::from_u128(3));
    view.apply(envelope);
    let _ = plan(&view, &PlanOptions::default());
    ReadModel::new().apply(envelope.event.topic(), envelope);
}

// ---- Checks of the DHCP plan and the dnsmasq renderer -----------------------------------------------

/// The directives a rendered file may hold; anything else is an injected line.
const DIRECTIVES: [&str; 10] = [
    "interface=",
    "bind-interfaces",
    "port=0",
    "dhcp-ignore=tag:!known",
    "enable-ra",
    "ra-param=",
    "dhcp-range=set:",
    "dhcp-option=tag:",
    "dhcp-host=",
    "# ",
];

/// Every line of a rendered file is empty, a comment or one of [`DIRECTIVES`], with values made
/// of the characters addresses, MACs, ids and interface names use.
fn check_rendered(text: &str, config: &NetworkDhcpConfig) -> Result<(), String> {
    ensure!(text.ends_with('\n'), "the file does not end with a newline");
    let mut interfaces = 0;
    let mut hosts = 0;
    for line in text.lines() {
        ensure!(!line.contains(['\r', '\0']), "a line holds a carriage return or NUL: {line:?}");
        if line.is_empty() {
            continue;
        }
        let Some(directive) = DIRECTIVES.iter().find(|d| line.starts_with(**d)) else {
            return Err(format!("unexpected line {line:?}"));
        };
        if *directive == "# " {
            ensure!(line.chars().all(|c| c.is_ascii_graphic() || c == ' '), "a comment with odd characters: {line:?}");
            continue;
        }
        let value = &line[directive.len()..];
        ensure!(
            value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/-,[]=!".contains(&b)),
            "a value with characters outside the safe set: {line:?}"
        );
        ensure!(value.matches('=').count() <= usize::from(*directive == "dhcp-option=tag:"), "a stray '=': {line:?}");
        interfaces += usize::from(*directive == "interface=");
        hosts += usize::from(*directive == "dhcp-host=");
    }
    ensure!(interfaces == 1, "{interfaces} interface lines");
    let expected: usize = config.subnets.iter().map(|subnet| subnet.hosts.len()).sum();
    ensure!(hosts == expected, "{hosts} dhcp-host lines for {expected} hosts");
    ensure!(text.contains(&format!("interface={}\n", config.interface)), "the interface line is not the interface");
    Ok(())
}

/// Renders every network of `plan` and checks the files, the hosts-directory lines and the shard
/// split the dnsmasq backend takes from them.
fn check_plan(plan: &DhcpPlan) -> Result<(), String> {
    ensure!(plan.networks.is_sorted_by_key(|n| n.network_id), "networks out of order");
    let mut kept = HostLines::default();
    for config in &plan.networks {
        ensure!(config.subnets.is_sorted_by_key(|s| s.subnet_id), "subnets out of order");
        let text = render(config).map_err(|e| format!("render refused a plan of validated values: {e}"))?;
        check_rendered(&text, config)?;
        // Lines kept from the plan's other networks are reused only where they are right.
        let reused = kept.render(config).map_err(|e| format!("HostLines::render refused: {e}"))?;
        ensure!(reused == text, "HostLines::render differs from a render from nothing");
        let lines = desired_hosts(config)
            .iter()
            .map(|(mac, addresses)| host_line(config.network_id, *mac, addresses))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("host_line refused: {e}"))?;
        for line in &lines {
            ensure!(line.split(',').count() == 2 && !line.contains(['\n', '\r', '=', ' ']), "host line {line:?}");
        }
        for subnet in &config.subnets {
            for host in &subnet.hosts {
                let line = ignore_line(config.network_id, host.mac).map_err(|e| e.to_string())?;
                ensure!(line.ends_with(",ignore") && !line.contains('\n'), "ignore line {line:?}");
            }
        }
        let hosts = desired_hosts(config);
        let shards = shard_count(hosts.len(), 64);
        let parts = split(&hosts, shards);
        ensure!(parts.iter().map(BTreeMap::len).sum::<usize>() == hosts.len(), "the shards lost hosts");
    }
    Ok(())
}

// ---- Sequences through the state machines ---------------------------------------------------------

const VIEW_HOST: HostId = HostId::from_u128(500);
const SUBNET_CATALOG: [(&str, &str); 8] = [
    ("10.1.0.0/28", "10.1.0.1"),
    ("10.1.1.0/29", "10.1.1.1"),
    ("2001:db8:1::/125", "2001:db8:1::1"),
    ("10.1.0.0/24", "10.1.0.1"),
    ("10.1.2.0/30", "10.1.2.1"),
    ("2001:db8::/64", "2001:db8::1"),
    ("10.0.0.0/16", "10.0.255.254"),
    ("192.168.0.0/24", "192.168.0.254"),
];

/// A small universe of ids, so that random events meet: 3 networks, 4 subnets each, 3 hosts.
struct World;

impl World {
    fn network(rng: &mut Rng) -> NetworkId {
        NetworkId::from_u128(1 + rng.index(3) as u128)
    }

    fn subnet(rng: &mut Rng) -> (SubnetId, usize) {
        let which = rng.index(SUBNET_CATALOG.len());
        (SubnetId::from_u128(100 + (which % 4) as u128), which)
    }

    fn host(rng: &mut Rng) -> HostId {
        HostId::from_u128(500 + rng.index(3) as u128)
    }

    fn mac(rng: &mut Rng) -> Mac {
        Mac::from_octets([0x52, 0x54, 0, 0, 0, 1 + rng.index(12) as u8]).unwrap()
    }

    fn interface(rng: &mut Rng) -> InterfaceName {
        rng.pick(&["br0", "br-vm", "eth0.100", "a23456789012345", "_", "b.r"]).parse().unwrap()
    }

    /// An address in one of the catalog's subnets (the same subnet most of the time).
    fn ip(rng: &mut Rng, which: usize) -> IpAddr {
        let which = if rng.one_in(5) { rng.index(SUBNET_CATALOG.len()) } else { which };
        let cidr: Cidr = SUBNET_CATALOG[which].0.parse().unwrap();
        let offset = rng.index(20) as u128;
        match cidr.network() {
            IpAddr::V4(ip) => IpAddr::V4((u32::from(ip).wrapping_add(offset as u32)).into()),
            IpAddr::V6(ip) => IpAddr::V6((u128::from(ip) + offset).into()),
        }
    }

    fn ips(rng: &mut Rng, which: usize) -> Vec<IpAddr> {
        (0..rng.index(3)).map(|_| World::ip(rng, which)).collect()
    }

    fn event(rng: &mut Rng, now_ms: i64) -> Event {
        let network_id = World::network(rng);
        let (subnet_id, which) = World::subnet(rng);
        let (cidr, gateway) = SUBNET_CATALOG[which];
        let (cidr, gateway): (Cidr, IpAddr) = (cidr.parse().unwrap(), gateway.parse().unwrap());
        let host_id = if rng.one_in(2) { VIEW_HOST } else { World::host(rng) };
        let cause = EventId::from_u128(rng.index(4) as u128);
        let epoch = rng.index(6) as u64;
        let vnic = VnicId::from_u128(1000 + rng.index(8) as u128);
        let owner = if rng.one_in(3) {
            Owner::DhcpServer { host_id }
        } else {
            Owner::Vnic { vnic_id: vnic, vm_id: VmId::from_u128(7) }
        };
        let pools = |rng: &mut Rng| {
            rng.one_in(2).then(|| {
                (0..rng.index(3))
                    .map(|_| {
                        let (a, b) = (World::ip(rng, which), World::ip(rng, which));
                        IpRange { start: a.min(b), end: a.max(b) }
                    })
                    .collect::<Vec<_>>()
            })
        };
        let up = |rng: &mut Rng| VnicUp {
            vnic_id: vnic,
            vm_id: VmId::from_u128(7 + rng.index(2) as u128),
            network_id,
            subnet_id: (!rng.one_in(10)).then_some(subnet_id),
            subnet_ids: Vec::new(),
            mac: World::mac(rng),
            requested_ip: rng.one_in(4).then(|| World::ip(rng, which)),
        };
        let down = VnicDown { vnic_id: vnic, network_id };
        match rng.index(30) {
            0..=2 => Event::NetworkUpserted(NetworkUpserted {
                network_id,
                name: if rng.one_in(10) { edge_string(rng) } else { "net".to_owned() },
                ipam_enabled: !rng.one_in(6),
                servers_count: [None, Some(0), Some(1), Some(2), Some(3), Some(255)][rng.index(6)],
            }),
            3 => Event::NetworkRemoved(NetworkRemoved { network_id }),
            4..=6 => Event::SubnetAdded(SubnetAdded {
                network_id,
                subnet_id,
                cidr,
                gateway: if rng.one_in(8) { World::ip(rng, which) } else { gateway },
                dns_servers: World::ips(rng, which),
                ntp_servers: World::ips(rng, which),
                allocation_pools: pools(rng),
            }),
            7 => Event::SubnetRemoved(SubnetRemoved { network_id, subnet_id }),
            8..=10 => [Event::VnicStarted, Event::VnicPlugged, Event::VnicLinked][rng.index(3)](up(rng)),
            11..=12 => [Event::VnicStopped, Event::VnicUnplugged, Event::VnicUnlinked][rng.index(3)](down),
            13 => Event::DhcpPortRequested(DhcpPortRequested { network_id, subnet_id, host_id, mac: World::mac(rng) }),
            14 => Event::DhcpPortReleased(DhcpPortReleased { network_id, subnet_id, host_id, mac: World::mac(rng) }),
            15..=16 => Event::HostUpserted(HostUpserted {
                host_id,
                name: "host".to_owned(),
                status: *rng.pick(&[HostStatus::Up, HostStatus::Up, HostStatus::Down, HostStatus::Maintenance]),
                networks: (0..rng.index(4))
                    .map(|_| HostNetwork { network_id: World::network(rng), interface: World::interface(rng) })
                    .collect(),
            }),
            17 => Event::HostRemoved(HostRemoved { host_id }),
            18..=19 => Event::HostHeartbeat(HostHeartbeat {
                host_id,
                serving: (0..rng.index(3)).map(|_| ServedNetwork { network_id: World::network(rng), epoch }).collect(),
            }),
            20 => Event::DhcpServerStatus(DhcpServerStatus {
                host_id,
                network_id,
                epoch,
                state: DhcpServerState::Running,
                detail: edge_string(rng),
            }),
            21..=22 => Event::ClockTicked(ClockTicked { now: Timestamp::from_unix_ms(now_ms) }),
            // Outputs, as a buggy or hostile writer of the output topics would send them.
            23 => Event::SubnetActivated(SubnetActivated {
                network_id,
                subnet_id,
                cidr,
                gateway: World::ip(rng, which),
                dns_servers: World::ips(rng, which),
                ntp_servers: World::ips(rng, which),
                allocation_pools: pools(rng).unwrap_or_default(),
                cause,
            }),
            24 => Event::SubnetDeactivated(SubnetDeactivated { network_id, subnet_id, cause }),
            25 => Event::ReservationAdded(ReservationAdded {
                network_id,
                subnet_id,
                owner,
                mac: World::mac(rng),
                ip: World::ip(rng, which),
                cause,
            }),
            26 => Event::ReservationRemoved(ReservationRemoved {
                network_id,
                subnet_id,
                owner,
                mac: World::mac(rng),
                ip: World::ip(rng, which),
                reason: ReleaseReason::VnicDown,
                cause,
            }),
            27 => Event::RequestRejected(RequestRejected {
                network_id,
                request_type: edge_string(rng),
                code: ipam_core::RejectionCode::InvalidMac,
                message: edge_string(rng),
                cause,
                vnic_id: None,
                mac: None,
                subnet_id: None,
                host_id: None,
            }),
            28 => Event::DhcpServerAssigned(DhcpServerAssigned {
                network_id,
                host_id,
                interface: World::interface(rng),
                epoch,
                reason: AssignReason::Placed,
                cause,
            }),
            _ => Event::DhcpServerUnassigned(DhcpServerUnassigned {
                network_id,
                host_id,
                epoch,
                reason: UnassignReason::HostDown,
                cause,
            }),
        }
    }

    /// The raw records of a sequence: world events, a quarter of them mutated, and now and then
    /// a retry of an earlier record (the same bytes, or the same id at another time).
    fn records(rng: &mut Rng, len: usize) -> Vec<Bytes> {
        let mut now_ms = 1_764_460_800_000i64;
        let mut records: Vec<Bytes> = Vec::with_capacity(len);
        for _ in 0..len {
            now_ms += if rng.one_in(10) { -5_000 } else { rng.index(20_000) as i64 };
            if !records.is_empty() && rng.one_in(20) {
                let earlier = records[rng.index(records.len())].0.clone();
                let retry = match serde_json::from_slice::<Value>(&earlier) {
                    Ok(Value::Object(mut map)) if rng.one_in(2) => {
                        map.insert("time".to_owned(), json!(Timestamp::from_unix_ms(now_ms)));
                        serde_json::to_vec(&map).unwrap()
                    }
                    _ => earlier,
                };
                records.push(Bytes(retry));
                continue;
            }
            let envelope = Envelope {
                id: EventId::from_u128(rng.u128()),
                source: "fuzz".to_owned(),
                time: Timestamp::from_unix_ms(now_ms),
                subject: None,
                event: World::event(rng, now_ms),
            };
            records.push(Bytes(if rng.one_in(4) {
                near_valid(envelope.to_json(), 1 + rng.index(2), rng)
            } else {
                envelope.to_bytes()
            }));
        }
        records
    }
}

/// The machines of one deployment: an allocator, placement, one host's agent view, the API's read
/// model, fed the way the runtime feeds them, and what the dnsmasq shards of the host's servers
/// hold after each plan.
struct Pipeline {
    allocator: Allocator,
    placement: Placement,
    view: HostDhcpView,
    read_model: ReadModel,
    plan: DhcpPlan,
    /// The plan as the host agent holds it: each network planned anew on a server change, host
    /// changes applied to it (must equal `plan` after every step).
    held: BTreeMap<NetworkId, NetworkDhcpConfig>,
    /// The view's changes of the current step.
    changes: Vec<PlanChange>,
    /// How many host changes the view made in all.
    host_changes: u64,
    shards: BTreeMap<NetworkId, Vec<ShardState>>,
    steps: u32,
}

impl Pipeline {
    fn new() -> Pipeline {
        let view = HostDhcpView::new(VIEW_HOST);
        let plan = plan(&view, &PlanOptions::default());
        Pipeline {
            allocator: Allocator::new(),
            placement: Placement::new(PlacementConfig::default()),
            view,
            read_model: ReadModel::new(),
            plan,
            held: BTreeMap::new(),
            changes: Vec::new(),
            host_changes: 0,
            shards: BTreeMap::new(),
            steps: 0,
        }
    }

    /// One consumed record, through `ingest` to every machine that reads its topic or the topics
    /// the machines write to. Checks every machine's invariants after the step.
    fn step(&mut self, raw: &[u8]) -> Result<(), String> {
        let record = Record {
            topic: "ipam.networks".to_owned(),
            partition: 0,
            offset: 0,
            key: String::new(),
            value: raw.to_vec(),
        };
        let input = match ingest(&record) {
            Ingested::Event(envelope) => envelope,
            Ingested::Rejected { rejection: out, .. } => {
                let rejection =
                    Envelope::decode(&out.value).map_err(|e| format!("our own rejection is unreadable: {e}"))?;
                self.apply_to_view(&rejection)?;
                self.read_model.apply(Topic::Reservations, &rejection);
                return self.check(None);
            }
            Ingested::DeadLetter(_) => return Ok(()),
        };
        let before = self.allocator.clone();
        let outputs = self.allocator.apply(&input);
        if outputs.iter().any(|output| matches!(output, Event::RequestRejected(_))) {
            ensure!(outputs.len() == 1, "a refusal with other outputs: {outputs:?}");
            let (before, after) = (decided_state(&before), decided_state(&self.allocator));
            ensure!(
                before == after,
                "a refused input changed the allocator: {outputs:?}\nbefore: {before}\nafter: {after}"
            );
        }
        let mut placed = self.placement.apply(&input);
        for (index, fact) in placement_facts(&input.event, &outputs).into_iter().enumerate() {
            if fact != input.event {
                placed.extend(self.placement.apply(&Envelope::output(&input, 100 + index as u32, "allocator", fact)));
            }
        }
        self.apply_to_view(&input)?;
        self.read_model.apply(input.event.topic(), &input);
        for (index, output) in outputs.into_iter().chain(placed).enumerate() {
            let output = Envelope::output(&input, index as u32, "fuzz", output);
            self.apply_to_view(&output)?;
            self.read_model.apply(output.event.topic(), &output);
        }
        let _ = port_requests(&self.view, |network| {
            Some(Mac::from_octets([2, 0, 0, 0, 0, network.0.as_bytes()[15]]).unwrap())
        });
        let _ = port_releases(&self.view);
        self.check(Some(&input))
    }

    /// One input into the view, its change applied to the held plan as the host agent does.
    fn apply_to_view(&mut self, envelope: &Envelope) -> Result<(), String> {
        let Some(change) = self.view.apply(envelope) else { return Ok(()) };
        match change {
            PlanChange::Server(network_id) => match plan_network(&self.view, network_id, &PlanOptions::default()) {
                Some(config) => self.held.insert(network_id, config),
                None => self.held.remove(&network_id),
            },
            PlanChange::Host(host) => {
                self.host_changes += 1;
                let Some(config) = self.held.get_mut(&host.network_id) else {
                    return Err(format!("a host change of a network not served: {host:?}"));
                };
                config.apply_hosts(&[host]);
                None
            }
        };
        self.changes.push(change);
        Ok(())
    }

    fn check(&mut self, input: Option<&Envelope>) -> Result<(), String> {
        let _ = input;
        self.allocator.check().map_err(|violation| format!("allocator: {violation}"))?;
        self.placement.check().map_err(|violation| format!("placement: {violation}"))?;
        self.view.check().map_err(|violation| format!("DHCP view: {violation}"))?;
        let plan = plan(&self.view, &PlanOptions::default());
        check_plan(&plan)?;
        ensure!(
            self.held.values().eq(&plan.networks),
            "the plan held through the view's changes is not the plan: {:?}\nplan: {:?}",
            self.held,
            plan.networks
        );
        self.check_host_changes(&plan)?;
        self.follow_shards(&plan)?;
        self.plan = plan;
        Ok(())
    }

    /// The step's host changes folded into a network's hosts by MAC (as the dnsmasq backend folds
    /// them into its shards) give the new plan's hosts. Exact while no MAC holds two addresses of
    /// one family on a network, which the allocator ensures but a hostile writer of
    /// `ipam.reservations` can break; then only "no panic" is asked.
    fn check_host_changes(&mut self, plan: &DhcpPlan) -> Result<(), String> {
        let changes = std::mem::take(&mut self.changes);
        let one_per_family = |config: &NetworkDhcpConfig| {
            let mut seen = BTreeSet::new();
            config.subnets.iter().flat_map(|s| &s.hosts).all(|host| seen.insert((host.mac, host.ip.is_ipv4())))
        };
        for config in &plan.networks {
            let network_id = config.network_id;
            if changes.contains(&PlanChange::Server(network_id)) {
                continue;
            }
            let Some(old) = self.plan.networks.iter().find(|n| n.network_id == network_id) else { continue };
            let mut hosts = desired_hosts(old);
            for change in &changes {
                if let PlanChange::Host(host) = change
                    && host.network_id == network_id
                {
                    apply_host_change(&mut hosts, host);
                }
            }
            if one_per_family(old) && one_per_family(config) {
                ensure!(hosts == desired_hosts(config), "host changes folded by MAC: {hosts:?}, plan: {config:?}");
            }
        }
        Ok(())
    }

    /// Applies each shard's decision for the new plan to the model of what its dnsmasq holds, and
    /// checks the shard then answers exactly its hosts (invariant 6 on the agent's side).
    fn follow_shards(&mut self, plan: &DhcpPlan) -> Result<(), String> {
        self.steps += 1;
        // Half the steps come before the compaction interval, half after.
        let since_start = if self.steps.is_multiple_of(2) { Duration::ZERO } else { COMPACTION_INTERVAL };
        self.shards.retain(|network_id, _| plan.networks.iter().any(|n| n.network_id == *network_id));
        for config in &plan.networks {
            let desired = desired_hosts(config);
            let count = shard_count(desired.len(), 64);
            let parts = split(&desired, count);
            let shards = self.shards.entry(config.network_id).or_default();
            if shards.len() != count {
                *shards = parts.iter().map(ShardState::loaded).collect();
            }
            for (shard, desired) in shards.iter_mut().zip(&parts) {
                match shard.decide(desired, since_start) {
                    ShardAction::Keep { .. } => {}
                    ShardAction::Add { hosts, ignore, .. } => shard.add(&hosts, &ignore),
                    ShardAction::Compact => *shard = ShardState::loaded(desired),
                }
                let answered: BTreeMap<Mac, HostAddresses> =
                    shard.newest.iter().filter_map(|(mac, addresses)| addresses.map(|a| (*mac, a))).collect();
                ensure!(answered == *desired, "a shard answers {answered:?} instead of {desired:?}");
            }
        }
        Ok(())
    }

    /// Snapshots restore to the same state.
    fn check_snapshots(&self) -> Result<(), String> {
        let allocator = Allocator::restore(&(), &self.allocator.snapshot()).map_err(|e| format!("allocator: {e}"))?;
        ensure!(allocator == self.allocator, "the allocator's snapshot restores to another state");
        let snapshot = self.placement.snapshot();
        let placement =
            Placement::restore(&self.placement.config(), &snapshot).map_err(|e| format!("placement: {e}"))?;
        ensure!(placement.snapshot() == snapshot, "placement's snapshot restores to another state");
        placement.check().map_err(|violation| format!("restored placement: {violation}"))?;
        let view = HostDhcpView::restore(&(), &self.view.snapshot()).map_err(|e| format!("view: {e}"))?;
        ensure!(view == self.view, "the view's snapshot restores to another state");
        Ok(())
    }
}

/// The allocator's snapshot less the ids of recent inputs, which every input it applies joins
/// (refused or not, so that a retry is recognised), and less the networks that hold nothing else.
fn decided_state(allocator: &Allocator) -> Value {
    let mut snapshot = ipam_core::allocator::snapshot_as_json(&allocator.snapshot()).unwrap();
    if let Some(Value::Array(networks)) = snapshot.get_mut("networks") {
        for network in networks.iter_mut() {
            if let Some(network) = network.as_object_mut() {
                network.remove("recent_inputs");
            }
        }
        networks.retain(|network| {
            !(network["settings"].is_null()
                && network["subnets"].as_array().is_some_and(Vec::is_empty)
                && network["reservations"].as_array().is_some_and(Vec::is_empty))
        });
    }
    snapshot
}

// ---- The targets ----------------------------------------------------------------------------------

#[test]
fn arbitrary_bytes_are_an_error_never_a_panic() {
    fuzz("arbitrary_bytes_are_an_error_never_a_panic", 2000, 1, arbitrary_bytes, |bytes| check_record(&bytes.0));
}

#[test]
fn near_valid_events_are_decoded_rejected_or_dead_lettered() {
    fuzz(
        "near_valid_events_are_decoded_rejected_or_dead_lettered",
        1000,
        1,
        |rng| {
            let sample = rng.pick(sample_values()).clone();
            Bytes(near_valid(sample, 1 + rng.index(3), rng))
        },
        |bytes| check_record(&bytes.0),
    );
}

/// What the value parsers take must print back to itself and hold its promise.
fn check_value_text(text: &str) -> Result<(), String> {
    if let Ok(mac) = text.parse::<Mac>() {
        let octets = mac.octets();
        ensure!(octets != [0; 6] && octets != [0xff; 6] && octets[0] & 1 == 0, "{text:?} parsed as MAC {mac}");
        ensure!(mac.to_string().parse::<Mac>() == Ok(mac), "MAC {mac} does not print back");
    }
    if let Ok(cidr) = text.parse::<Cidr>() {
        ensure!(cidr.net().trunc() == cidr.net(), "{text:?} parsed as CIDR {cidr} with host bits");
        ensure!(cidr.to_string().parse::<Cidr>() == Ok(cidr), "CIDR {cidr} does not print back");
    }
    if let Ok(name) = text.parse::<InterfaceName>() {
        ensure!(name.as_str() == text && (1..=15).contains(&text.len()), "{text:?} parsed as interface {name}");
        ensure!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)), "interface {text:?} is unsafe");
    }
    if let Ok(id) = text.parse::<NetworkId>() {
        ensure!(id.to_string().parse::<NetworkId>() == Ok(id), "id {id} does not print back");
    }
    for value in [json!(text), json!([text]), json!({ "start": text, "end": text })] {
        if let Ok(time) = serde_json::from_value::<Timestamp>(value.clone()) {
            let again = serde_json::from_value::<Timestamp>(serde_json::to_value(time).unwrap());
            ensure!(again.as_ref().ok() == Some(&time), "time {time} does not print back: {again:?}");
        }
        let _ = serde_json::from_value::<IpRange>(value.clone());
        let _ = serde_json::from_value::<Owner>(value);
    }
    Ok(())
}

#[test]
fn value_parsers_refuse_what_they_cannot_hold() {
    fuzz(
        "value_parsers_refuse_what_they_cannot_hold",
        2000,
        1,
        |rng| match rng.index(3) {
            0 => edge_string(rng),
            1 => {
                let alphabet = b"0123456789abcdefABCDEF:.-/_ %x";
                (0..rng.index(24)).map(|_| char::from(*rng.pick(alphabet))).collect()
            }
            _ => (0..rng.index(20)).map(|_| char::from_u32(rng.index(0x800) as u32).unwrap_or('?')).collect(),
        },
        |text| check_value_text(text),
    );
}

/// A subnet definition from random parts, near the rules' edges.
#[derive(Debug)]
struct SubnetParts {
    cidr: Cidr,
    gateway: IpAddr,
    dns: Vec<IpAddr>,
    ntp: Vec<IpAddr>,
    pools: Option<Vec<IpRange>>,
}

fn address_near(rng: &mut Rng, cidr: Cidr) -> IpAddr {
    let from_last = rng.one_in(3);
    let offset = if rng.one_in(10) { rng.next_u64() as u128 } else { rng.index(6) as u128 };
    match (cidr.network(), cidr.last()) {
        (IpAddr::V4(first), IpAddr::V4(last)) => {
            let base = u32::from(if from_last { last } else { first });
            IpAddr::V4(
                if from_last { base.wrapping_sub(offset as u32) } else { base.wrapping_add(offset as u32) }.into(),
            )
        }
        (IpAddr::V6(first), IpAddr::V6(last)) => {
            let base = u128::from(if from_last { last } else { first });
            IpAddr::V6(if from_last { base.wrapping_sub(offset) } else { base.wrapping_add(offset) }.into())
        }
        _ => unreachable!("a CIDR's ends are of one family"),
    }
}

fn subnet_parts(rng: &mut Rng) -> SubnetParts {
    let v4 = rng.one_in(2);
    let prefix = if v4 {
        if rng.one_in(200) { rng.index(33) } else { 20 + rng.index(13) }
    } else if rng.one_in(4) {
        rng.index(129)
    } else {
        112 + rng.index(17)
    };
    let net: ipnet::IpNet = if v4 {
        ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(rng.next_u64() as u32), prefix as u8).unwrap().trunc().into()
    } else {
        ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(rng.u128()), prefix as u8).unwrap().trunc().into()
    };
    let cidr: Cidr = net.to_string().parse().unwrap();
    let servers = |rng: &mut Rng| (0..rng.index(11)).map(|_| address_near(rng, cidr)).collect();
    SubnetParts {
        cidr,
        gateway: if rng.one_in(20) { "::ffff:1.2.3.4".parse().unwrap() } else { address_near(rng, cidr) },
        dns: servers(rng),
        ntp: servers(rng),
        pools: rng.one_in(2).then(|| {
            let count = if rng.one_in(20) { 60 + rng.index(10) } else { rng.index(4) };
            (0..count).map(|_| IpRange { start: address_near(rng, cidr), end: address_near(rng, cidr) }).collect()
        }),
    }
}

#[test]
fn subnet_definitions_are_checked_whole() {
    fuzz("subnet_definitions_are_checked_whole", 2000, 1, subnet_parts, |parts| {
        let spec =
            SubnetSpec::new(parts.cidr, parts.gateway, parts.dns.clone(), parts.ntp.clone(), parts.pools.clone());
        let Ok(spec) = spec else { return Ok(()) };
        let cidr = spec.cidr;
        ensure!(cidr.contains(spec.gateway) && !cidr.is_reserved_address(spec.gateway), "gateway {}", spec.gateway);
        ensure!(spec.dns_servers.len() <= 8 && spec.ntp_servers.len() <= 8, "too many option servers");
        ensure!(spec.allocation_pools.len() <= 64, "too many pools");
        ensure!(!cidr.is_ipv4() || cidr.prefix_len() >= 8, "{cidr} is too wide");
        for pool in &spec.allocation_pools {
            ensure!(pool.start <= pool.end && cidr.contains(pool.start) && cidr.contains(pool.end), "pool {pool:?}");
        }
        ensure!(spec.allocation_pools.windows(2).all(|w| w[0].end < w[1].start), "pools overlap or are unsorted");
        // The pool built from it hands out distinct assignable addresses inside the allocation pools.
        let mut pool = AddressPool::new(&spec);
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            let before = pool.free_count();
            let Some(ip) = pool.allocate() else {
                ensure!(before == 0, "allocate found nothing with {before} free");
                break;
            };
            ensure!(seen.insert(ip) && spec.is_assignable(ip), "allocated {ip} twice or unassignable");
            ensure!(spec.allocation_pools.iter().any(|p| p.contains(ip)), "allocated {ip} outside the pools");
            ensure!(pool.free_count() + 1 == before, "free count did not drop");
        }
        let _ = pool.reserve(parts.gateway);
        Ok(())
    });
}

#[test]
fn sequences_of_near_valid_events_keep_every_machine_consistent() {
    let events = std::sync::atomic::AtomicU64::new(0);
    let host_changes = std::sync::atomic::AtomicU64::new(0);
    fuzz(
        "sequences_of_near_valid_events_keep_every_machine_consistent",
        100,
        20,
        |rng| {
            let len = 1 + rng.index(60);
            World::records(rng, len)
        },
        |records| {
            events.fetch_add(records.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let mut pipeline = Pipeline::new();
            for (n, record) in records.iter().enumerate() {
                pipeline.step(&record.0).map_err(|e| format!("step {n}: {e}"))?;
                if n == records.len() / 2 {
                    pipeline.check_snapshots().map_err(|e| format!("after step {n}: {e}"))?;
                }
            }
            host_changes.fetch_add(pipeline.host_changes, std::sync::atomic::Ordering::Relaxed);
            pipeline.check_snapshots()
        },
    );
    let host_changes = host_changes.into_inner();
    println!("fuzz: {} events in the sequences, {host_changes} host changes of the plan", events.into_inner());
}

/// A snapshot of each machine after a short sequence, then damaged.
#[derive(Debug)]
struct DamagedSnapshot {
    machine: usize,
    bytes: Bytes,
    /// Events applied to the restored machine.
    then: Vec<Bytes>,
}

#[test]
fn damaged_snapshots_are_refused_or_restore_a_working_machine() {
    fuzz(
        "damaged_snapshots_are_refused_or_restore_a_working_machine",
        100,
        20,
        |rng| {
            let mut pipeline = Pipeline::new();
            let len = rng.index(30);
            for record in World::records(rng, len) {
                let _ = pipeline.step(&record.0);
            }
            let machine = rng.index(3);
            let snapshot = match machine {
                0 => pipeline.allocator.snapshot(),
                1 => pipeline.placement.snapshot(),
                _ => pipeline.view.snapshot(),
            };
            let bytes = if rng.one_in(4) {
                let mut bytes = snapshot;
                for _ in 0..1 + rng.index(4) {
                    let at = rng.index(bytes.len().max(1));
                    if at < bytes.len() {
                        bytes[at] = *rng.pick(b"{}[]\":,0123456789.-e \\\xff");
                    }
                }
                bytes
            } else {
                // The allocator's snapshot is MessagePack: its JSON form (which it still restores,
                // as written by older builds) is the one damaged field by field.
                let value = match machine {
                    0 => ipam_core::allocator::snapshot_as_json(&snapshot).unwrap(),
                    _ => serde_json::from_slice(&snapshot).unwrap(),
                };
                near_valid(value, 1 + rng.index(3), rng)
            };
            let len = rng.index(8);
            DamagedSnapshot { machine, bytes: Bytes(bytes), then: World::records(rng, len) }
        },
        |damaged| {
            check_restores(&damaged.bytes.0)?;
            let mut pipeline = Pipeline::new();
            match damaged.machine {
                0 => match Allocator::restore(&(), &damaged.bytes.0) {
                    Ok(allocator) => pipeline.allocator = allocator,
                    Err(_) => return Ok(()),
                },
                1 => match Placement::restore(&PlacementConfig::default(), &damaged.bytes.0) {
                    Ok(placement) => pipeline.placement = placement,
                    Err(_) => return Ok(()),
                },
                _ => match HostDhcpView::restore(&(), &damaged.bytes.0) {
                    Ok(view) => pipeline.view = view,
                    Err(_) => return Ok(()),
                },
            }
            // A restored machine that contradicts itself is the snapshot's fault, so only "no panic"
            // is asked of the steps that follow, not the invariants.
            for record in &damaged.then {
                let _ = pipeline.step(&record.0);
            }
            Ok(())
        },
    );
}

/// A network's DHCP configuration from any validated values, as `plan()` could never build it.
fn arbitrary_config(rng: &mut Rng) -> NetworkDhcpConfig {
    let interface = loop {
        let alphabet = b"abcdefghijklmnopqrstuvwxyzABCZ0123456789_.-";
        let name: String = (0..1 + rng.index(15)).map(|_| char::from(*rng.pick(alphabet))).collect();
        if let Ok(name) = name.parse::<InterfaceName>() {
            break name;
        }
    };
    let mut subnets: Vec<SubnetDhcpConfig> = (0..rng.index(4))
        .map(|_| {
            let parts = subnet_parts(rng);
            let mut hosts: Vec<DhcpHost> = (0..rng.index(20))
                .map(|_| {
                    let mut octets = rng.next_u64().to_be_bytes();
                    octets[2] &= 0xfe;
                    octets[7] |= 1;
                    DhcpHost {
                        mac: Mac::from_octets(octets[2..].try_into().unwrap()).unwrap(),
                        ip: address_near(rng, parts.cidr),
                    }
                })
                .collect();
            hosts.sort_by_key(|host| (host.ip, host.mac));
            SubnetDhcpConfig {
                subnet_id: SubnetId::from_u128(rng.index(8) as u128),
                cidr: parts.cidr,
                router: parts.gateway,
                dns_servers: parts.dns,
                ntp_servers: parts.ntp,
                lease_secs: {
                    let any = rng.next_u64() as u32;
                    *rng.pick(&[0, 1, 3600, u32::MAX, any])
                },
                server_address: rng.one_in(2).then(|| address_near(rng, parts.cidr)),
                server_address_refused: None,
                hosts,
            }
        })
        .collect();
    // A plan lists each subnet once, by id.
    subnets.sort_by_key(|subnet| subnet.subnet_id);
    subnets.dedup_by_key(|subnet| subnet.subnet_id);
    NetworkDhcpConfig {
        network_id: NetworkId::from_u128(rng.u128()),
        epoch: {
            let any = rng.next_u64();
            *rng.pick(&[0, 1, u64::MAX, any])
        },
        interface,
        subnets,
        conflict_probe: true,
    }
}

#[test]
fn dnsmasq_files_of_any_validated_plan_hold_only_safe_lines() {
    fuzz(
        "dnsmasq_files_of_any_validated_plan_hold_only_safe_lines",
        500,
        4,
        |rng| (arbitrary_config(rng), arbitrary_config(rng)),
        |(old, new)| {
            let mut new = new.clone();
            new.network_id = old.network_id;
            check_plan(&DhcpPlan { host_id: VIEW_HOST, networks: vec![old.clone()] })?;
            check_plan(&DhcpPlan { host_id: VIEW_HOST, networks: vec![new] })
        },
    );
}
