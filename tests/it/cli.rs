//! The `ipam` commands an operator types: `demo` end to end, and `publish`, `ctl` and `show`
//! against a running `ipam up`: decisions printed with their exit codes, the output formats,
//! publishing from standard input, dry runs and resuming after a bad line.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::recovery::ipam_binary;

fn ipam<S: AsRef<str>>(args: &[S]) -> Output {
    ipam_with_stdin(args, None)
}

/// Runs `ipam`, with `stdin` written to its standard input when given (else none).
fn ipam_with_stdin<S: AsRef<str>>(args: &[S], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(ipam_binary())
        .args(args.iter().map(AsRef::as_ref))
        .env("IPAM_LOG", "warn")
        .env_remove("IPAM_API")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The command's JSON output; fails the test, showing everything, when it is not JSON.
fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", text(output)))
}

/// Runs `ipam`, expects `code`, and answers the output.
#[track_caller]
fn expect_exit<S: AsRef<str>>(args: &[S], code: i32) -> Output {
    let output = ipam(args);
    let shown: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    assert_eq!(output.status.code(), Some(code), "ipam {}:\n{}", shown.join(" "), text(&output));
    output
}

#[test]
fn ipam_demo_tells_its_story_and_exits_zero() {
    let output = ipam(&["demo"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "ipam demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for expected in [
        "DHCP servers placed",
        "Utilization",
        "stops sending heartbeats",
        "server moved",
        "replay check",
        "equal",
        "demo done",
    ] {
        assert!(stdout.contains(expected), "the demo did not say `{expected}`:\n{stdout}");
    }
}

#[test]
fn publish_ctl_and_show_talk_to_a_running_ipam() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, addr) = crate::api::ipam_up_with_api(dir.path());
    let api = format!("http://{addr}");

    let network = "00000000-0000-0000-0000-00000000cc01";
    let subnet = "00000000-0000-0000-0000-00000000cc02";
    let event = |n: u32, type_name: &str, data: Value| {
        json!({"specversion": "1.0", "id": format!("00000000-0000-0000-0000-0000000c{n:04x}"), "source": "file",
               "type": type_name, "time": "2026-11-30T00:00:00Z", "data": data})
        .to_string()
    };
    let file = dir.path().join("setup.jsonl");
    std::fs::write(
        &file,
        [
            event(1, "ipam.network.upserted.v1", json!({"network_id": network, "name": "cli", "ipam_enabled": true})),
            event(
                2,
                "ipam.subnet.added.v1",
                json!({"network_id": network, "subnet_id": subnet, "cidr": "10.55.0.0/24", "gateway": "10.55.0.1"}),
            ),
        ]
        .join("\n"),
    )
    .unwrap();
    let published = ipam(&["publish", &file.display().to_string(), "--api", &api]);
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));

    let vnic = "00000000-0000-0000-0000-00000000cc05";
    let started = ipam(&[
        "ctl",
        "vnic-start",
        "--id",
        vnic,
        "--vm",
        "00000000-0000-0000-0000-00000000cc06",
        "--network",
        network,
        "--subnet",
        subnet,
        "--mac",
        "52:54:00:cc:00:05",
        "--wait",
        "60s",
        "--api",
        &api,
    ]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown = ipam(&["show", "vnic", vnic, "--api", &api]);
        if String::from_utf8_lossy(&shown.stdout).contains("10.55.0.") {
            break;
        }
        assert!(Instant::now() < deadline, "ipam show never showed the reservation");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Bad input: a clear message and a non-zero exit.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, event(3, "ipam.vnic.started.v1", json!({"network_id": network, "mac": "nope"}))).unwrap();
    let refused = ipam(&["publish", &bad.display().to_string(), "--api", &api]);
    assert!(!refused.status.success(), "a bad event was published");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("bad.jsonl:1: invalid_mac"), "no clear message: {message}");
    let mac = ipam(&[
        "ctl",
        "vnic-start",
        "--id",
        vnic,
        "--vm",
        vnic,
        "--network",
        network,
        "--mac",
        "ff:ff:ff:ff:ff:ff",
        "--api",
        &api,
    ]);
    assert!(!mac.status.success(), "a broadcast MAC was accepted on the command line");
    assert!(String::from_utf8_lossy(&mac.stderr).contains("broadcast"), "{}", String::from_utf8_lossy(&mac.stderr));
    up.terminate();
}

#[test]
fn ctl_prints_each_decision_and_exits_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, addr) = crate::api::ipam_up_with_api(dir.path());
    let api = format!("http://{addr}");
    // A decision takes milliseconds; the longest wait the API allows keeps a loaded machine green.
    let with_api = |args: &[&str]| -> Vec<String> {
        let wait: &[&str] = if args[0] == "ctl" { &["--wait", "60s"] } else { &[] };
        args.iter().chain(wait).map(|arg| (*arg).to_owned()).chain(["--api".to_owned(), api.clone()]).collect()
    };

    // Ids are generated and printed; names stand for ids afterwards.
    let network = json_of(&expect_exit(&with_api(&["ctl", "network", "--name", "cli-decisions", "-o", "json"]), 0));
    let network_id = network["network_id"].as_str().expect("the new network's id is printed").to_owned();
    assert_eq!(network["outcome"], "nothing_to_decide", "{network}");
    let again = json_of(&expect_exit(&with_api(&["ctl", "network", "--name", "cli-decisions", "-o", "json"]), 0));
    assert_eq!(again["network_id"], network_id.as_str(), "a network named again is the same network");
    let subnet = json_of(&expect_exit(
        &with_api(&[
            "ctl",
            "subnet",
            "--network",
            "cli-decisions",
            "--cidr",
            "10.56.0.0/29",
            "--gateway",
            "10.56.0.1",
            "-o",
            "json",
        ]),
        0,
    ));
    assert!(subnet["subnet_id"].is_string(), "{subnet}");

    // A reservation: the IP is printed, exit 0.
    let start = |mac: &str, format: &str| {
        with_api(&[
            "ctl",
            "vnic-start",
            "--network",
            "cli-decisions",
            "--subnet",
            "10.56.0.0/29",
            "--mac",
            mac,
            "-o",
            format,
        ])
    };
    let reserved = json_of(&expect_exit(&start("52:54:00:56:00:01", "json"), 0));
    assert_eq!(reserved["outcome"], "reserved", "{reserved}");
    assert!(reserved["ip"].as_str().is_some_and(|ip| ip.starts_with("10.56.0.")), "{reserved}");
    let vnic_id = reserved["vnic_id"].as_str().expect("the generated vNIC id is printed").to_owned();
    assert!(reserved["vm_id"].is_string(), "{reserved}");

    // A rejection: its code and message, exit 3, in each format.
    let rejected = json_of(&expect_exit(&start("52:54:00:56:00:01", "json"), 3));
    assert_eq!((rejected["outcome"].as_str(), rejected["code"].as_str()), (Some("rejected"), Some("duplicate_mac")));
    let table = String::from_utf8_lossy(&expect_exit(&start("52:54:00:56:00:01", "table"), 3).stdout).into_owned();
    assert!(table.lines().next().is_some_and(|l| l.contains("outcome") && l.contains("rejected")), "{table}");
    assert!(table.contains("duplicate_mac"), "{table}");
    let yaml = String::from_utf8_lossy(&expect_exit(&start("52:54:00:56:00:01", "yaml"), 3).stdout).into_owned();
    assert!(yaml.contains("outcome: rejected") && yaml.contains("code: duplicate_mac"), "{yaml}");

    // A dual-stack vNIC: `--subnet` twice, both addresses printed; a stop releases both.
    let v6 =
        ["ctl", "subnet", "--network", "cli-decisions", "--cidr", "2001:db8:56::/64", "--gateway", "2001:db8:56::1"];
    expect_exit(&with_api(&v6), 0);
    let dual = |format: &str| {
        with_api(&[
            "ctl",
            "vnic-start",
            "--network",
            "cli-decisions",
            "--subnet",
            "10.56.0.0/29",
            "--subnet",
            "2001:db8:56::/64",
            "--mac",
            "52:54:00:56:00:0d",
            "-o",
            format,
        ])
    };
    let both = json_of(&expect_exit(&dual("json"), 0));
    let ips: Vec<&str> = both["addresses"].as_array().unwrap().iter().filter_map(|a| a["ip"].as_str()).collect();
    assert!(
        ips.len() == 2 && ips[0].starts_with("10.56.0.") && ips[1].starts_with("2001:db8:56::") && both["ip"] == ips[0],
        "{both}"
    );
    let dual_id = both["vnic_id"].as_str().unwrap().to_owned();
    let table = String::from_utf8_lossy(&expect_exit(&dual("table"), 3).stdout).into_owned();
    assert!(table.contains("duplicate_mac"), "another vNIC with the MAC is refused: {table}");
    let stopped = json_of(&expect_exit(&with_api(&["ctl", "vnic-stop", &dual_id, "-o", "json"]), 0));
    let released: Vec<&str> =
        stopped["addresses"].as_array().unwrap().iter().filter_map(|a| a["ip"].as_str()).collect();
    assert_eq!((stopped["outcome"].as_str(), released), (Some("released"), ips), "{stopped}");

    // Hosts by name: made, found again by name, listed and shown.
    let host_up =
        |name: &str| with_api(&["ctl", "host-up", "--name", name, "--network", "cli-decisions=eth9", "-o", "json"]);
    let host = json_of(&expect_exit(&host_up("cli-host"), 0));
    let host_id = host["host_id"].as_str().expect("the new host's id is printed").to_owned();
    assert_eq!(json_of(&expect_exit(&host_up("cli-host"), 0))["host_id"], host_id.as_str());
    let hosts = json_of(&expect_exit(&with_api(&["show", "hosts", "-o", "json"]), 0));
    assert!(hosts["hosts"].as_array().unwrap().iter().any(|h| h["name"] == "cli-host"), "{hosts}");
    assert_eq!(
        json_of(&expect_exit(&with_api(&["show", "host", "cli-host", "-o", "json"]), 0))["host_id"],
        host_id.as_str()
    );

    let down = json_of(&expect_exit(&with_api(&["ctl", "host-down", "cli-host", "--maintenance", "-o", "json"]), 0));
    assert_eq!(down["host_id"], host_id.as_str(), "{down}");

    // The lists and histories, filtered by name.
    let vnics = json_of(&expect_exit(&with_api(&["show", "vnics", "--network", "cli-decisions", "-o", "json"]), 0));
    assert!(vnics["vnics"].as_array().unwrap().iter().any(|v| v["vnic_id"] == vnic_id.as_str()), "{vnics}");
    let page =
        json_of(&expect_exit(&with_api(&["show", "reservations", "cli-decisions", "--limit", "1", "-o", "json"]), 0));
    assert_eq!(page["reservations"].as_array().map(Vec::len), Some(1), "{page}");
    let history =
        String::from_utf8_lossy(&expect_exit(&with_api(&["show", "vnic-history", &vnic_id, "-o", "table"]), 0).stdout)
            .into_owned();
    assert!(history.contains(reserved["ip"].as_str().unwrap()), "{history}");
    let bad_limit = expect_exit(&with_api(&["show", "hosts", "--limit", "0"]), 2);
    assert!(String::from_utf8_lossy(&bad_limit.stderr).contains("limit"), "{}", text(&bad_limit));

    // No subnet: decided (nothing to decide), with a warning that says what it means.
    let bare =
        expect_exit(&with_api(&["ctl", "vnic-start", "--network", &network_id, "--mac", "52:54:00:56:00:03"]), 0);
    assert!(String::from_utf8_lossy(&bare.stderr).contains("no DHCP service"), "{}", text(&bare));
    assert_eq!(json_of(&bare)["outcome"], "nothing_to_decide", "piped output is JSON by default");

    // A stop by the vNIC's id alone: its network comes from the API; the address is released.
    let released = json_of(&expect_exit(&with_api(&["ctl", "vnic-stop", &vnic_id, "-o", "json"]), 0));
    assert_eq!((released["outcome"].as_str(), released["ip"].as_str()), (Some("released"), reserved["ip"].as_str()));

    // Bad input: exit 2 and a message, nothing sent.
    let unknown =
        expect_exit(&with_api(&["ctl", "vnic-start", "--network", "nowhere", "--mac", "52:54:00:56:00:04"]), 2);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no network is named `nowhere`"), "{}", text(&unknown));

    // show: every format, by name.
    let shown =
        String::from_utf8_lossy(&expect_exit(&with_api(&["show", "network", "cli-decisions", "-o", "yaml"]), 0).stdout)
            .into_owned();
    assert!(shown.contains("name: cli-decisions") && shown.contains("10.56.0.0/29"), "{shown}");
    let listed =
        String::from_utf8_lossy(&expect_exit(&with_api(&["show", "networks", "-o", "table"]), 0).stdout).into_owned();
    assert!(listed.contains("NAME") && listed.contains("cli-decisions") && !listed.contains("position"), "{listed}");
    assert_eq!(json_of(&expect_exit(&with_api(&["show", "network", &network_id]), 0))["name"], "cli-decisions");

    // The API unreachable, or not speaking TLS on an https:// URL: exit 5, said plainly.
    let refused = expect_exit(&["show", "networks", "--api", "http://127.0.0.1:1"], 5);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("connection refused"), "{}", text(&refused));
    let tls = expect_exit(&["show", "networks", "--api", &format!("https://{addr}")], 5);
    assert!(String::from_utf8_lossy(&tls.stderr).contains("TLS"), "{}", text(&tls));
    up.terminate();
}

/// An API that answers one request with `status` and `body`, on 127.0.0.1.
fn one_answer_api(status: u16, body: Value) -> (std::net::SocketAddr, std::thread::JoinHandle<String>) {
    use std::io::{BufRead, BufReader, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let (mut head, mut line) = (String::new(), String::new());
        while reader.read_line(&mut line).unwrap() > 2 {
            head.push_str(&line);
            line.clear();
        }
        let length = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|n| n.trim().parse().unwrap()))
            .unwrap_or(0);
        let mut request_body = vec![0; length];
        reader.read_exact(&mut request_body).unwrap();
        let body = body.to_string();
        let answer = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        reader.get_mut().write_all(answer.as_bytes()).unwrap();
        head
    });
    (addr, server)
}

#[test]
fn ctl_exits_4_when_the_decision_is_still_pending_and_2_when_the_api_refuses() {
    let network = "00000000-0000-0000-0000-00000000ee01";
    let (addr, server) = one_answer_api(
        200,
        json!({"ids": ["x"], "positions": [], "complete": false,
               "outcomes": [{"event_id": "x", "type": "ipam.vnic.started.v1", "outcome": "pending"}]}),
    );
    let api = format!("http://{addr}");
    let args = ["ctl", "vnic-start", "--network", network, "--subnet", network, "--mac", "52:54:00:ee:00:01"];
    let pending = expect_exit(&[&args[..], &["--api", &api, "-o", "json", "--wait", "3s"]].concat(), 4);
    assert_eq!(json_of(&pending)["outcome"], "pending");
    let request = server.join().unwrap();
    assert!(request.starts_with("POST /v1/events?wait=3 "), "{request}");

    let (addr, server) = one_answer_api(
        400,
        json!({"error": {"code": "invalid_mac", "message": "data.mac: bad", "field": "data.mac", "index": 0}}),
    );
    let refused = expect_exit(&[&args[..], &["--api", &format!("http://{addr}")]].concat(), 2);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("(400 invalid_mac): data.mac: bad"),
        "{}",
        text(&refused)
    );
    server.join().unwrap();
}

#[test]
fn publish_reads_stdin_checks_with_a_dry_run_and_resumes_after_a_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, addr) = crate::api::ipam_up_with_api(dir.path());
    let api = format!("http://{addr}");
    let network = "00000000-0000-0000-0000-00000000dd01";
    let subnet = "00000000-0000-0000-0000-00000000dd02";
    let line = |n: u32, type_name: &str, data: Value| {
        json!({"specversion": "1.0", "id": format!("00000000-0000-0000-0000-0000000d{n:04x}"), "source": "file",
               "type": type_name, "time": "2026-11-30T00:00:00Z", "data": data})
        .to_string()
    };
    let start = |n: u32, mac: &str| {
        line(
            n,
            "ipam.vnic.started.v1",
            json!({"vnic_id": format!("00000000-0000-0000-0000-00000001{n:04x}"), "vm_id": network,
                   "network_id": network, "subnet_id": subnet, "mac": mac}),
        )
    };
    let lines = |fourth: String| {
        [
            line(
                1,
                "ipam.network.upserted.v1",
                json!({"network_id": network, "name": "publish", "ipam_enabled": true}),
            ),
            line(
                2,
                "ipam.subnet.added.v1",
                json!({"network_id": network, "subnet_id": subnet, "cidr": "10.57.0.0/24", "gateway": "10.57.0.1"}),
            ),
            start(3, "52:54:00:57:00:03"),
            fourth,
            start(5, "52:54:00:57:00:05"),
        ]
        .join("\n")
    };
    let bad = lines(start(4, "not-a-mac"));
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, &bad).unwrap();
    let appended = || {
        let (_, metrics) = crate::api::http(addr, "GET", "/metrics", "text/plain", b"");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("ipam_events_appended_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("ipam_events_appended_total")
    };

    // A dry run checks every line, names the bad one, and publishes nothing.
    let dry = ipam(&["publish", "--dry-run", &file.display().to_string(), "--api", &api]);
    assert_eq!(dry.status.code(), Some(2), "{}", text(&dry));
    assert!(String::from_utf8_lossy(&dry.stderr).contains("events.jsonl:4: invalid_mac"), "{}", text(&dry));
    assert_eq!(appended(), 0, "a dry run published something");

    // From standard input: lines 1 to 3 go, line 4 stops the run and says how to resume.
    let run = ipam_with_stdin(&["publish", "-", "--api", &api], Some(bad.as_bytes()));
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    let said = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(said.contains("standard input:4: invalid_mac") && said.contains("--from-line 4"), "{said}");
    assert!(said.contains("(lines 1 to 3) were published"), "{said}");
    assert_eq!(appended(), 3);

    // Fixed and resumed: only lines 4 and 5 are sent.
    std::fs::write(&file, lines(start(4, "52:54:00:57:00:04"))).unwrap();
    let resumed = ipam(&["publish", &file.display().to_string(), "--from-line", "4", "--api", &api]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(
        String::from_utf8_lossy(&resumed.stdout).contains("published 2 events (lines 4 to 5)"),
        "{}",
        text(&resumed)
    );
    assert_eq!(appended(), 5, "events already published were sent again");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The read model follows the log: the network may not be there yet (404).
        let shown = ipam(&["show", "network", network, "-o", "json", "--api", &api]);
        let view = if shown.status.success() { json_of(&shown) } else { Value::Null };
        let reservations = view["reservations"].as_array().map_or(0, Vec::len);
        if reservations == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the three vNICs were never all reserved: {view}");
        std::thread::sleep(Duration::from_millis(100));
    }
    up.terminate();
}

/// Runs `openssl` with `args` in `dir`; fails the test with its output when it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (Debian: openssl)");
    assert!(output.status.success(), "openssl {}:\n{}", args.join(" "), text(&output));
}

#[test]
fn an_https_api_is_trusted_through_its_ca_and_refused_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    // A private CA and a certificate for 127.0.0.1 signed by it.
    openssl(
        path,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=ipam-test-ca",
            "-days",
            "2",
        ],
    );
    openssl(
        path,
        &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "api.key", "-out", "api.csr", "-subj", "/CN=127.0.0.1"],
    );
    std::fs::write(path.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(
        path,
        &[
            "x509",
            "-req",
            "-in",
            "api.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "api.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    // openssl's test server stands in for an API behind TLS: -WWW serves files, so GET /v1/networks
    // answers the file www/v1/networks.
    std::fs::create_dir_all(path.join("www/v1")).unwrap();
    std::fs::write(
        path.join("www/v1/networks"),
        r#"{"networks": [{"network_id": "00000000-0000-0000-0000-0000000ff001", "name": "over-tls"}]}"#,
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-WWW",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            "../api.pem",
            "-key",
            "../api.key",
        ])
        .current_dir(path.join("www"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server never listened on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let api = format!("https://127.0.0.1:{port}");
    let ca = path.join("ca.pem").display().to_string();

    let trusted = expect_exit(&["show", "networks", "--api", &api, "--api-ca-cert", &ca, "-o", "json"], 0);
    assert_eq!(json_of(&trusted)["networks"][0]["name"], "over-tls");
    let untrusted = expect_exit(&["show", "networks", "--api", &api], 5);
    let said = String::from_utf8_lossy(&untrusted.stderr);
    assert!(said.contains("TLS failed") && said.contains("--api-ca-cert"), "{}", text(&untrusted));
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn publish_names_the_line_the_api_refused_and_resumes_from_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let heartbeat = |n: u32| {
        json!({"specversion": "1.0", "id": format!("00000000-0000-0000-0000-0000000e{n:04x}"), "source": "file",
               "type": "ipam.host.heartbeat.v1", "time": "2026-11-30T00:00:00Z",
               "data": {"host_id": "00000000-0000-0000-0000-00000000e001"}})
        .to_string()
    };
    std::fs::write(&file, (1..=5).map(heartbeat).collect::<Vec<_>>().join("\n")).unwrap();
    // The API refuses the second event of the batch of lines 3 to 5 (batches of 3 from line 3).
    let (addr, server) = one_answer_api(
        409,
        json!({"error": {"code": "conflict", "message": "event 1: refused for the test", "field": null, "index": 1}}),
    );
    let args = ["publish", &file.display().to_string(), "--from-line", "3", "--batch-size", "3"];
    let refused = expect_exit(&[&args[..], &["--api", &format!("http://{addr}")]].concat(), 2);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(said.contains("line 4: the batch of lines 3 to 5 was refused"), "{said}");
    assert!(said.contains("nothing was published") && said.contains("--from-line 3"), "{said}");
    let request = server.join().unwrap();
    assert!(request.starts_with("POST /v1/events "), "{request}");
}

#[test]
fn the_cli_sends_the_bearer_token_and_a_missing_one_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, addr) = crate::api::ipam_up_with_api_and(dir.path(), &["--api-token", "cli-secret"]);
    let api = format!("http://{addr}");
    let denied = expect_exit(&["show", "networks", "--api", &api], 2);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("401 unauthorized"), "{}", text(&denied));
    let allowed = expect_exit(&["--api-token", "cli-secret", "show", "networks", "--api", &api, "-o", "json"], 0);
    assert!(json_of(&allowed)["networks"].is_array(), "{}", text(&allowed));
    up.terminate();
}

#[test]
fn an_unreachable_api_is_exit_5_even_while_names_are_looked_up() {
    let api = ["--api", "http://127.0.0.1:1"];
    for args in [
        &["ctl", "vnic-stop", "00000000-0000-0000-0000-00000000f001"][..],
        &["ctl", "network", "--name", "somewhere"],
        &["show", "network", "somewhere"],
    ] {
        let output = expect_exit(&[args, &api[..]].concat(), 5);
        assert!(String::from_utf8_lossy(&output.stderr).contains("connection refused"), "{}", text(&output));
    }
    let missing = expect_exit(&["publish", "/nonexistent/events.jsonl"], 2);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"), "{}", text(&missing));
}
