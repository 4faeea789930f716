//! A small HTTP/1.1 client for the commands that talk to a running IPAM's API (`ctl`, `show`,
//! `publish`, `demo`), and the envelopes they publish. Plain `std::net`: the API speaks small
//! JSON bodies, and a full HTTP client would cost more to build than it saves.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use ipam_core::{Envelope, Event, EventId, Timestamp};
use serde_json::Value;
use uuid::Uuid;

/// The API of a running IPAM, such as `http://127.0.0.1:8080`.
#[derive(Debug, Clone)]
pub struct Api {
    host_port: String,
    token: Option<String>,
}

impl Api {
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Api> {
        let host_port = url.strip_prefix("http://").context("the API URL must start with http://")?;
        Ok(Api { host_port: host_port.trim_end_matches('/').to_owned(), token })
    }

    /// One request; the status and the body.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, String)> {
        let address = self
            .host_port
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", self.host_port))?
            .next()
            .context("no address")?;
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
            .with_context(|| format!("connecting to the API at http://{}", self.host_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let auth = self.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host_port,
            body.len()
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response);
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("not an HTTP answer")?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok((status, body))
    }

    /// A GET whose answer must be 200 JSON.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.request("GET", path, None)?;
        if status != 200 {
            bail!("GET {path}: {status} {}", error_message(&body));
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
    }

    /// Publishes events; fails with the API's message when it refuses them.
    pub fn publish(&self, events: &[Value]) -> anyhow::Result<Value> {
        let (status, body) = self.request("POST", "/v1/events", Some(&Value::Array(events.to_vec())))?;
        if status != 202 {
            bail!("the API refused the events ({status}): {}", error_message(&body));
        }
        Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let error = &v["error"];
            let message = error["message"].as_str()?.to_owned();
            Some(match error["field"].as_str() {
                Some(field) => format!("{message} (field {field})"),
                None => message,
            })
        })
        .unwrap_or_else(|| body.chars().take(500).collect())
}

static COUNTER: AtomicU64 = AtomicU64::new(0);
const CLI_NAMESPACE: Uuid = Uuid::from_u128(0x3b8e_1f40_77c2_4d9a_9e0b_6c51_2a7d_f0e4);

/// An event from this command line, with a fresh id (a UUIDv5 of the time, the process and a
/// counter: unique without a random number generator) and the current time.
pub fn envelope(source: &str, event: Event) -> Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let name = format!("{}/{}/{}", now.as_nanos(), std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let envelope = Envelope {
        id: EventId(Uuid::new_v5(&CLI_NAMESPACE, name.as_bytes())),
        source: source.to_owned(),
        time: Timestamp::from_unix_ms(now.as_millis() as i64),
        subject: Some(event.key()),
        event,
    };
    envelope.to_json()
}
