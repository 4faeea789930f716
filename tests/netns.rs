//! Network namespaces for the DHCP tests and benchmarks: a fabric namespace with a bridge, and
//! namespaces plugged into it through veth pairs; plus a real DHCP client (busybox udhcpc).

// Test scaffolding: a failure to set up is a broken test run, not bad input; and `Fabric::new`
// creates namespaces, which a `Default` would hide.
#![allow(clippy::unwrap_used, clippy::new_without_default)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use ipam_core::Mac;

pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

pub fn must(args: &[&str]) {
    let output = run(args);
    assert!(output.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

pub fn prerequisites() {
    let root = run(&["id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&root.stdout).trim(), "0", "the DHCP tests need root (network namespaces)");
    for tool in ["dnsmasq", "busybox", "ip"] {
        assert!(
            run(&["sh", "-c", &format!("command -v {tool}")]).status.success(),
            "`{tool}` is missing: run ./test.sh, which installs dnsmasq-base, busybox and iproute2"
        );
    }
}

/// Network namespaces and links made for one test, removed when dropped.
#[derive(Debug)]
pub struct Fabric {
    tag: String,
    namespaces: Vec<String>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Fabric {
    pub fn new() -> Fabric {
        let tag = format!("{}{}", std::process::id() % 100_000, COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut fabric = Fabric { tag, namespaces: Vec::new() };
        let fab = fabric.namespace("fab");
        must(&["ip", "-n", &fab, "link", "add", "br0", "type", "bridge"]);
        must(&["ip", "-n", &fab, "link", "set", "br0", "up"]);
        fabric
    }

    fn namespace(&mut self, role: &str) -> String {
        let name = format!("ipam-{role}-{}", self.tag);
        must(&["ip", "netns", "add", &name]);
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        self.namespaces.push(name.clone());
        name
    }

    /// A namespace whose `interface` is plugged into the bridge.
    pub fn node(&mut self, role: &str, interface: &str, mac: Option<Mac>) -> String {
        let name = self.namespace(role);
        let fab = format!("ipam-fab-{}", self.tag);
        let outer = format!("v{role}{}", self.tag);
        let outer = &outer[..outer.len().min(15)];
        // The peer is made inside the namespace under its final name: no temporary name in the
        // root namespace for two tests running at once to collide on.
        must(&["ip", "link", "add", outer, "type", "veth", "peer", "name", interface, "netns", &name]);
        if let Some(mac) = mac {
            must(&["ip", "-n", &name, "link", "set", interface, "address", &mac.to_string()]);
        }
        must(&["ip", "-n", &name, "link", "set", interface, "up"]);
        must(&["ip", "link", "set", outer, "netns", &fab]);
        must(&["ip", "-n", &fab, "link", "set", outer, "master", "br0"]);
        must(&["ip", "-n", &fab, "link", "set", outer, "up"]);
        name
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for namespace in self.namespaces.iter().rev() {
            // Processes left in a namespace (a stale dnsmasq) are ended by id first.
            let pids = run(&["ip", "netns", "pids", namespace]);
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = run(&["kill", "-KILL", pid]);
            }
            let _ = run(&["ip", "netns", "del", namespace]);
        }
    }
}

#[derive(Debug)]
pub struct Lease {
    pub ip: String,
    pub router: String,
    pub dns: String,
}

/// Runs udhcpc in `namespace`; the lease it got, if any, within about four seconds.
pub fn dhcp(namespace: &str, dir: &Path) -> Option<Lease> {
    let script = dir.join("udhcpc.sh");
    let out = dir.join(format!("lease-{namespace}"));
    let _ = std::fs::remove_file(&out);
    std::fs::write(
        &script,
        format!("#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip $router $dns\" > {}\nexit 0\n", out.display()),
    )
    .unwrap();
    must(&["chmod", "+x", &script.display().to_string()]);
    let status = Command::new("ip")
        .args(["netns", "exec", namespace, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "4", "-T", "1"])
        .arg("-s")
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    if !status.success() {
        return None;
    }
    let text = std::fs::read_to_string(&out).ok()?;
    let mut words = text.split_whitespace();
    Some(Lease {
        ip: words.next()?.to_owned(),
        router: words.next().unwrap_or_default().to_owned(),
        dns: words.next().unwrap_or_default().to_owned(),
    })
}
