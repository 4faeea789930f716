//! What a conflict probe costs, in-process ([`ipam_host_agent::probe`]) against forking iputils
//! `arping -D` once per address, for 1, 64 and 256 free addresses probed at once beside a squatted
//! one: wall time and CPU.
//!
//! Run as root: `cargo run --release -p ipam-host-agent --example probe_cost`. It makes two network
//! namespaces joined by a veth pair (one holds a squatted address, which both methods must find)
//! and removes them at the end. Without `arping` (Debian's `iputils-arping`) only the in-process
//! figures are printed.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use ipam_host_agent::probe::{ProbeSettings, probe};

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?} failed");
}

/// User plus system CPU time of this process and of its waited-for children.
#[allow(unsafe_code)]
fn cpu() -> Duration {
    let mut total = Duration::ZERO;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: rusage is plain data; getrusage fills the whole struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` lives across the call.
        unsafe { libc::getrusage(who, &mut usage) };
        for time in [usage.ru_utime, usage.ru_stime] {
            total += Duration::from_secs(time.tv_sec as u64) + Duration::from_micros(time.tv_usec as u64);
        }
    }
    total
}

/// The squatted address first, then `count` free ones.
fn targets(count: u32) -> Vec<IpAddr> {
    (0..=count).map(|n| IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 99, 0, 50)) + n))).collect()
}

fn main() {
    let tag = std::process::id();
    let (prober, squatter) = (format!("ipam-pc-a{tag}"), format!("ipam-pc-b{tag}"));
    let outer = format!("vpc{tag}");
    ip(&["netns", "add", &prober]);
    ip(&["netns", "add", &squatter]);
    ip(&["link", "add", &outer, "type", "veth", "peer", "name", "eth1", "netns", &prober]);
    ip(&["link", "set", &outer, "netns", &squatter]);
    ip(&["-n", &prober, "link", "set", "eth1", "up"]);
    ip(&["-n", &squatter, "link", "set", &outer, "up"]);
    ip(&["-n", &squatter, "addr", "add", "10.99.0.50/16", "dev", &outer]);
    let has_arping = Command::new("sh").args(["-c", "command -v arping"]).output().unwrap().status.success();
    let settings = ProbeSettings::default();
    for count in [1, 64, 256] {
        let addresses = targets(count);
        let (started, cpu_before) = (Instant::now(), cpu());
        let answers = probe("eth1", Some(&prober), &addresses, &settings).unwrap();
        let (wall, used) = (started.elapsed(), cpu() - cpu_before);
        assert!(answers.contains_key(&addresses[0]), "the squatter was not found in-process");
        assert_eq!(answers.len(), 1, "only the squatted address is claimed: {answers:?}");
        println!(
            "probe_cost: {count} free addresses and a squatted one, in-process: {:.0} ms wall, {:.1} ms CPU",
            wall.as_secs_f64() * 1e3,
            used.as_secs_f64() * 1e3
        );
        if !has_arping {
            continue;
        }
        // iputils arping takes whole seconds between probes: 2 probes cost 2 s at least.
        let (started, cpu_before) = (Instant::now(), cpu());
        let children: Vec<_> = addresses
            .iter()
            .map(|address| {
                Command::new("ip")
                    .args(["netns", "exec", &prober, "arping", "-q", "-D", "-c", "2", "-w", "2", "-I", "eth1"])
                    .arg(address.to_string())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // arping -D exits 1 when the address is in use.
        let in_use: Vec<bool> = children.into_iter().map(|mut child| !child.wait().unwrap().success()).collect();
        let (wall, used) = (started.elapsed(), cpu() - cpu_before);
        assert!(in_use[0], "the squatter was not found by arping");
        println!(
            "probe_cost: {count} free addresses and a squatted one, by arping: {:.0} ms wall, {:.1} ms CPU",
            wall.as_secs_f64() * 1e3,
            used.as_secs_f64() * 1e3
        );
    }
    ip(&["netns", "del", &prober]);
    ip(&["netns", "del", &squatter]);
}
