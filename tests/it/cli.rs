//! The `ipam` commands an operator types: `demo` end to end, and `publish`, `ctl` and `show`
//! against a running `ipam up`.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::recovery::ipam_binary;

fn ipam(args: &[&str]) -> Output {
    Command::new(ipam_binary()).args(args).env("IPAM_LOG", "warn").output().unwrap()
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
    let event = |n: u32, type_name: &str, data: serde_json::Value| {
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
    assert!(message.contains("refused"), "no clear message: {message}");
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
