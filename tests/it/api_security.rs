//! The API's own security, through the real `ipam up`: HTTPS served by the API itself with a
//! self-signed certificate (made here with the openssl command) and replaced on disk while it
//! runs, and bearer tokens with roles, an expiry and rotation. The TLS clients are real: the CLI
//! (`ipam show --api-ca-cert`) and `openssl s_client`, which also names the certificate served.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::recovery::{Service, ipam_binary};

/// A self-signed certificate for 127.0.0.1 named `CN=<name>` (not a CA, so rustls accepts it as
/// its own trust anchor), written as `<name>.pem` and `<name>.key` in `dir`.
fn self_signed(dir: &Path, name: &str) {
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-keyout", &format!("{name}.key"), "-out", &format!("{name}.pem"), "-days", "2"])
        .args(["-subj", &format!("/CN={name}"), "-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .current_dir(dir)
        .output()
        .expect("openssl (Debian: openssl)");
    assert!(output.status.success(), "openssl req: {}", String::from_utf8_lossy(&output.stderr));
}

/// `ipam up` with `config` as its file and the API on a free port: the service and the address
/// its API serves HTTPS on.
fn ipam_up_https(dir: &Path, config: &str) -> (Service, SocketAddr) {
    std::fs::write(dir.join("ipam.toml"), config).unwrap();
    let (file, data) = (dir.join("ipam.toml").display().to_string(), dir.join("data").display().to_string());
    let mut up =
        Service::spawn(&["--config", &file, "--data-dir", &data, "--api-bind", "127.0.0.1:0", "up"].map(str::to_owned));
    let line = up.wait_for_line("API listening on https://", Duration::from_secs(60));
    let addr = line.split("https://").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    up.wait_for("ipam is ready", Duration::from_secs(60));
    (up, addr)
}

/// One request over TLS with `openssl s_client`, trusting `ca`: the status and the whole output
/// (headers, body and the certificate's subject).
fn https(addr: SocketAddr, ca: &Path, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-servername", "localhost", "-verify_return_error"])
        .args(["-CAfile", &ca.display().to_string(), "-ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let authorization = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    child.stdin.take().unwrap().write_all(request.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let status = text
        .lines()
        .find_map(|line| line.strip_prefix("HTTP/1.1 "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn heartbeat() -> String {
    json!([{
        "specversion": "1.0", "id": "00000000-0000-0000-0000-00000005ec01", "source": "engine",
        "type": "ipam.host.heartbeat.v1", "time": "2026-11-30T00:00:00Z",
        "data": {"host_id": "00000000-0000-0000-0000-00000005ec02"},
    }])
    .to_string()
}

const TOKENS: &str = r#"
api-token = "legacy-write"

[[api-tokens]]
role = "read"
token-file = "TOKEN_FILE"

[[api-tokens]]
role = "write"
token = "engine-write"

[[api-tokens]]
role = "write"
token = "expired-write"
expires = 2020-01-01T00:00:00Z   # a TOML date-time; a quoted RFC 3339 string works too
"#;

fn config(dir: &Path, cert: &str, tokens: &str) -> String {
    format!(
        "api-tls-cert-file = \"{}\"\napi-tls-key-file = \"{}\"\n{}",
        dir.join(format!("{cert}.pem")).display(),
        dir.join(format!("{cert}.key")).display(),
        tokens.replace("TOKEN_FILE", &dir.join("read.token").display().to_string())
    )
}

#[test]
fn the_api_serves_https_and_each_token_may_do_what_its_role_allows_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    self_signed(path, "api-one");
    std::fs::write(path.join("read.token"), "dashboard-read\n").unwrap();
    let (mut up, addr) = ipam_up_https(path, &config(path, "api-one", TOKENS));
    let ca = path.join("api-one.pem");

    // The CLI, a rustls client trusting the self-signed certificate, reads the networks.
    let shown = Command::new(ipam_binary())
        .args(["show", "networks", "-o", "json", "--api", &format!("https://{addr}")])
        .args(["--api-ca-cert", &ca.display().to_string(), "--api-token", "dashboard-read"])
        .env("IPAM_LOG", "warn")
        .output()
        .unwrap();
    assert!(shown.status.success(), "ipam show: {}", String::from_utf8_lossy(&shown.stderr));
    let networks: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert!(networks["networks"].is_array(), "{networks}");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let (status, _) = crate::api::http(addr, "GET", "/health", "text/plain", b"");
    assert_eq!(status, 0, "plain HTTP was answered on the HTTPS port");

    // /health needs no token; the rest needs a known one.
    let (status, said) = https(addr, &ca, "GET", "/health", None, "");
    assert!(status == 200 || status == 503, "{said}");
    let (status, said) = https(addr, &ca, "GET", "/v1/networks", None, "");
    assert_eq!(status, 401, "{said}");
    assert!(said.contains("\"unauthorized\""), "{said}");
    let (status, said) = https(addr, &ca, "GET", "/v1/networks", Some("nobody-knows-this"), "");
    assert_eq!(status, 401, "{said}");
    assert!(said.contains("\"unauthorized\""), "{said}");

    // A read token reads, and may not publish.
    let (status, said) = https(addr, &ca, "GET", "/v1/networks", Some("dashboard-read"), "");
    assert_eq!(status, 200, "{said}");
    // The API's /metrics is on the same HTTPS listener, for a dashboard's read token.
    let (status, said) = https(addr, &ca, "GET", "/metrics", Some("dashboard-read"), "");
    assert_eq!(status, 200, "{said}");
    assert!(said.contains("ipam_request_duration_seconds"), "{said}");
    let (status, said) = https(addr, &ca, "POST", "/v1/events", Some("dashboard-read"), &heartbeat());
    assert_eq!(status, 403, "{said}");
    assert!(said.contains("\"forbidden\""), "{said}");

    // Write tokens, the legacy `api-token` among them, publish.
    let (status, said) = https(addr, &ca, "POST", "/v1/events", Some("engine-write"), &heartbeat());
    assert_eq!(status, 202, "{said}");
    let (status, said) = https(addr, &ca, "POST", "/v1/events", Some("legacy-write"), &heartbeat());
    assert_eq!(status, 202, "{said}");

    // An expired token is told so, for reads too.
    let (status, said) = https(addr, &ca, "GET", "/v1/networks", Some("expired-write"), "");
    assert_eq!(status, 401, "{said}");
    assert!(said.contains("\"token_expired\""), "{said}");
    up.terminate();

    // Rotation: the engine's token is removed from the file; from the next start it is refused.
    let rotated = TOKENS.replace("token = \"engine-write\"", "token = \"engine-write-2\"");
    let (mut up, addr) = ipam_up_https(path, &config(path, "api-one", &rotated));
    let (status, said) = https(addr, &ca, "POST", "/v1/events", Some("engine-write"), &heartbeat());
    assert_eq!(status, 401, "{said}");
    let (status, said) = https(addr, &ca, "POST", "/v1/events", Some("engine-write-2"), &heartbeat());
    assert_eq!(status, 202, "{said}");
    up.terminate();
}

#[test]
fn a_certificate_replaced_on_disk_is_served_to_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    self_signed(path, "api-one");
    self_signed(path, "api-two");
    // The API serves `served.pem`/`served.key`, first a copy of api-one.
    std::fs::copy(path.join("api-one.pem"), path.join("served.pem")).unwrap();
    std::fs::copy(path.join("api-one.key"), path.join("served.key")).unwrap();
    let (mut up, addr) = ipam_up_https(path, &config(path, "served", ""));
    let (status, said) = https(addr, &path.join("api-one.pem"), "GET", "/v1/networks", None, "");
    assert_eq!(status, 200, "{said}");
    assert!(said.contains("CN = api-one") || said.contains("CN=api-one"), "{said}");
    // A connection open across the renewal: the event stream, which writes a comment every second.
    let mut stream = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr.to_string(), "-CAfile"])
        .arg(path.join("api-one.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut stream_in = stream.stdin.take().unwrap();
    write!(stream_in, "GET /v1/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    stream_in.flush().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    let stream_out = stream.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stream_out)).map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let first = lines.recv_timeout(Duration::from_secs(30)).expect("the stream answered");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    // A renewal: the new pair moved into place (each file whole, one after the other).
    for ext in ["key", "pem"] {
        std::fs::copy(path.join(format!("api-two.{ext}")), path.join(format!("new.{ext}"))).unwrap();
        std::fs::rename(path.join(format!("new.{ext}")), path.join(format!("served.{ext}"))).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, said) = https(addr, &path.join("api-two.pem"), "GET", "/v1/networks", None, "");
        if status == 200 {
            assert!(said.contains("CN = api-two") || said.contains("CN=api-two"), "{said}");
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate was never served:\n{said}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The stream opened with the old certificate still gets its comments.
    while lines.try_recv().is_ok() {}
    lines.recv_timeout(Duration::from_secs(10)).expect("the connection made before the renewal went on");
    let _ = stream.kill();
    let _ = stream.wait();
    drop(stream_in);
    up.terminate();
}

#[test]
fn a_missing_or_mismatched_certificate_stops_ipam_up_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    self_signed(path, "api-one");
    self_signed(path, "api-two");
    for (cert, key, says) in
        [("missing.pem", "api-one.key", "missing.pem"), ("api-one.pem", "api-two.key", "does not fit")]
    {
        let config = format!(
            "api-tls-cert-file = \"{}\"\napi-tls-key-file = \"{}\"\n",
            path.join(cert).display(),
            path.join(key).display()
        );
        std::fs::write(path.join("ipam.toml"), config).unwrap();
        let args = ["--config", "ipam.toml", "--data-dir", "data", "--api-bind", "127.0.0.1:0", "up"];
        let output = Command::new(ipam_binary()).args(args).current_dir(path).env("IPAM_LOG", "warn").output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}
