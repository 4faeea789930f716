//! The HTTP client of the commands that talk to a running IPAM's API (`ctl`, `show`, `publish`,
//! `demo`, `bench`), and the envelopes they publish. Built on `ureq`: keep-alive (a `publish` of a
//! long file is one connection), TLS through rustls for `https://` APIs (the webpki roots, or a
//! private CA given with `--api-ca-cert`), and the API's refusals turned into `ClientError`s that
//! keep its code, so the command line can choose its exit code from them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ipam_core::{Envelope, Event, EventId, Timestamp};
use serde_json::Value;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use uuid::Uuid;

/// How long a connection may take to open: a local or LAN API answers in milliseconds, and a
/// command should say "unreachable" soon rather than hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take in all: a `wait` on decisions is bounded by its own duration,
/// well under this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a request to the API failed, in the terms the command line's exit codes are chosen by.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API could not be reached: connection refused, no such host, a TLS handshake or
    /// certificate failure, a timeout. Check `--api` and that IPAM runs there.
    #[error("cannot reach the API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The API answered 502, 503 or 504: it is up but cannot serve now (its log is failing, it is
    /// starting or stopping). Retry later; the message says what is wrong.
    #[error("the API at {url} is unavailable ({status} {code}): {message}")]
    Unavailable { url: String, status: u16, code: String, message: String },
    /// The API refused the request (4xx): the request is wrong, and nothing was written. The code
    /// is the API's (`invalid_mac`, `not_found`, `unauthorized`...); `field` and `index` say where.
    #[error("{}", refusal(*status, code, message, field.as_deref()))]
    Refused { status: u16, code: String, message: String, field: Option<String>, index: Option<usize> },
    /// The API failed in another way (another 5xx, or an answer that is not what it documents).
    /// A bug or an outage on its side: its logs say more.
    #[error("the API failed: {0}")]
    Failed(String),
}

fn refusal(status: u16, code: &str, message: &str, field: Option<&str>) -> String {
    // The API's messages usually start with the field already.
    let field =
        field.filter(|field| !message.contains(field)).map(|field| format!(" (field {field})")).unwrap_or_default();
    format!("the API refused the request ({status} {code}): {message}{field}")
}

/// The API of a running IPAM, such as `http://127.0.0.1:8080` or `https://ipam.example:8443`.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Api {
    /// A client of the API at `url` (`http://` or `https://`), sending `token` as a bearer token.
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Api> {
        Api::with_ca_cert(url, token, None)
    }

    /// As `new`, trusting only the certificates in the PEM file `ca_cert` for `https://` (a
    /// private CA or a self-signed API) instead of the public webpki roots.
    pub fn with_ca_cert(url: &str, token: Option<String>, ca_cert: Option<&std::path::Path>) -> anyhow::Result<Api> {
        let base = url.trim_end_matches('/').to_owned();
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .with_context(|| format!("the API URL `{url}` must start with http:// or https://"))?;
        anyhow::ensure!(!rest.is_empty() && !rest.contains('/'), "the API URL `{url}` must be http(s)://HOST[:PORT]");
        let roots = match ca_cert {
            None => RootCerts::WebPki,
            Some(path) => {
                let pem = std::fs::read(path).with_context(|| format!("reading the CA file {}", path.display()))?;
                let certs = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(PemItem::Certificate(cert)) => Some(Ok(cert)),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<Vec<Certificate<'static>>, _>>()
                    .with_context(|| format!("{} is not a PEM file", path.display()))?;
                anyhow::ensure!(!certs.is_empty(), "{} holds no PEM certificate", path.display());
                RootCerts::new_with_certs(&certs)
            }
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("ipam-cli/", env!("CARGO_PKG_VERSION")))
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .build()
            .new_agent();
        Ok(Api { base, token, agent })
    }

    /// The base URL, as given (without a trailing slash).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// One request; the status and the body. Fails only when no answer came.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|token| format!("Bearer {token}"));
        let answer = match (method, body) {
            ("GET", _) => {
                let mut request = self.agent.get(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.call()
            }
            (method, body) => {
                let mut request = match method {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    other => anyhow::bail!("the client does not send {other} requests"),
                };
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                let body = body.map(Value::to_string).unwrap_or_default();
                request.header("Content-Type", "application/json").send(body)
            }
        };
        let mut answer = answer.map_err(|error| self.unreachable(error))?;
        let status = answer.status().as_u16();
        let text = answer
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()
            .map_err(|error| self.unreachable(error))?;
        Ok((status, text))
    }

    fn unreachable(&self, error: ureq::Error) -> ClientError {
        let reason = match &error {
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connection refused (is IPAM running there?)".to_owned()
            }
            ureq::Error::Timeout(_) => format!("timed out ({error})"),
            // rustls's handshake failures reach us as I/O errors of kind InvalidData.
            ureq::Error::Io(io)
                if self.base.starts_with("https://") && io.kind() == std::io::ErrorKind::InvalidData =>
            {
                let hint = if io.to_string().contains("certificate") {
                    "for a private CA or a self-signed certificate give --api-ca-cert"
                } else {
                    "does the API serve https on this port?"
                };
                format!("TLS failed: {io} ({hint})")
            }
            ureq::Error::HostNotFound => "no such host".to_owned(),
            ureq::Error::Rustls(_) | ureq::Error::Tls(_) | ureq::Error::Pem(_) => {
                format!("TLS failed: {error} (for a private CA or a self-signed certificate give --api-ca-cert)")
            }
            _ => error.to_string(),
        };
        ClientError::Unreachable { url: self.base.clone(), reason }
    }

    /// Turns a non-2xx answer into the error its status means.
    fn refused(&self, status: u16, body: &str) -> ClientError {
        let error = serde_json::from_str::<Value>(body).ok().map(|v| v["error"].clone()).unwrap_or(Value::Null);
        let code = error["code"].as_str().unwrap_or("unknown").to_owned();
        let message = error["message"].as_str().map(str::to_owned).unwrap_or_else(|| body.chars().take(500).collect());
        match status {
            400..=499 => ClientError::Refused {
                status,
                code,
                message,
                field: error["field"].as_str().map(str::to_owned),
                index: error["index"].as_u64().map(|i| i as usize),
            },
            502..=504 => ClientError::Unavailable { url: self.base.clone(), status, code, message },
            _ => ClientError::Failed(format!("{status} {code}: {message}")),
        }
    }

    /// A GET whose answer must be 200 JSON.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.request("GET", path, None)?;
        if status != 200 {
            return Err(self.refused(status, &body).into());
        }
        Ok(serde_json::from_str(&body)
            .map_err(|e| ClientError::Failed(format!("GET {path}: the answer is not JSON: {e}")))?)
    }

    /// Publishes events in one batch (all or nothing); fails with the API's refusal.
    pub fn publish(&self, events: &[Value]) -> anyhow::Result<Value> {
        self.post_events("/v1/events", events)
    }

    /// Publishes events and waits up to `wait` for their decisions: the API answers one outcome
    /// per event (`reserved`, `released`, `rejected`, `nothing_to_decide`, or `pending` when the
    /// wait ran out).
    pub fn publish_and_wait(&self, events: &[Value], wait: Duration) -> anyhow::Result<Value> {
        self.post_events(&format!("/v1/events?wait={}", wait.as_secs_f64()), events)
    }

    fn post_events(&self, path: &str, events: &[Value]) -> anyhow::Result<Value> {
        let (status, body) = self.request("POST", path, Some(&Value::Array(events.to_vec())))?;
        if !(200..300).contains(&status) {
            return Err(self.refused(status, &body).into());
        }
        Ok(serde_json::from_str(&body)
            .map_err(|e| ClientError::Failed(format!("POST {path}: the answer is not JSON: {e}")))?)
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);
const CLI_NAMESPACE: Uuid = Uuid::from_u128(0x3b8e_1f40_77c2_4d9a_9e0b_6c51_2a7d_f0e4);

/// A fresh id from this command line: a UUIDv5 of the time, the process and a counter, unique
/// without a random number generator.
pub fn fresh_uuid() -> Uuid {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let name = format!("{}/{}/{}", now.as_nanos(), std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    Uuid::new_v5(&CLI_NAMESPACE, name.as_bytes())
}

/// An event from this command line, with a fresh id and the current time.
pub fn envelope(source: &str, event: Event) -> Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let envelope = Envelope {
        id: EventId(fresh_uuid()),
        source: source.to_owned(),
        time: Timestamp::from_unix_ms(now.as_millis() as i64),
        subject: Some(event.key()),
        event,
    };
    envelope.to_json()
}
