//! `ipam demo`: the all-in-one stack in a temporary directory, a scripted story told as it
//! happens: two networks, three subnets, four hosts, 500 vNICs starting and stopping, a host lost
//! and its DHCP servers moved, and a replay check after `kill -9`. The demo plays the engine and the
//! hosts' heartbeats through the HTTP API, as a real deployment's engine and host agents would.
//!
//! With `--keep` the stack stays up after the story, with its data and live heartbeats, so that a
//! person can open the web page (`/ui/`) on it; it stops on Ctrl-C or SIGTERM. The browser test
//! (`tests/it/ui.rs`) runs against exactly that.

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ipam_core::event::*;
use ipam_core::{Event, HostId, Mac, NetworkId, SubnetId, VmId, VnicId};
use serde_json::Value;

use crate::child::UpProcess;
use crate::client::{Api, envelope};

const PROD: NetworkId = NetworkId::from_u128(0xde01);
const LAB: NetworkId = NetworkId::from_u128(0xde02);

fn host(n: u128) -> HostId {
    HostId::from_u128(0xd0_0000 + n)
}

fn host_name(id: &str) -> String {
    let n = u128::from_str_radix(id.rsplit('-').next().unwrap_or("0"), 16).unwrap_or(0) & 0xff;
    format!("host-{n}")
}

fn start(dir: &std::path::Path, token: Option<&str>) -> anyhow::Result<(UpProcess, Api)> {
    let mut args: Vec<String> = [
        "--data-dir",
        &dir.display().to_string(),
        "--api-bind",
        "127.0.0.1:0",
        "--tick-interval-ms",
        "200",
        "--heartbeat-timeout-ms",
        "1500",
        "--snapshot-every-records",
        "300",
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(token) = token {
        args.extend(["--api-token".to_owned(), token.to_owned()]);
    }
    args.push("up".to_owned());
    let up = UpProcess::start(&args)?;
    let api = Api::new(&up.api_url, token.map(str::to_owned))?;
    Ok((up, api))
}

fn wait<T>(what: &str, mut probe: impl FnMut() -> anyhow::Result<Option<T>>) -> anyhow::Result<T> {
    // A probe may fail while the read model has not seen the network yet (404): retry until the
    // deadline, then report the last failure.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match probe() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => None,
            Err(error) => Some(error),
        };
        if Instant::now() > deadline {
            return Err(last
                .unwrap_or_else(|| anyhow::anyhow!("not yet"))
                .context(format!("timed out waiting until {what}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn servers(network: &Value) -> Vec<String> {
    network["servers"]
        .as_array()
        .map(|s| s.iter().filter_map(|v| v["host_id"].as_str().map(host_name)).collect())
        .unwrap_or_default()
}

fn bar(used: f64, size: f64) -> String {
    let filled = ((used / size.max(1.0)) * 30.0).round() as usize;
    format!("[{}{}]", "#".repeat(filled.min(30)), ".".repeat(30 - filled.min(30)))
}

/// The network views without the log position (which moves with every record).
/// The allocator's part of each network's view (the network, its subnets and reservations), without
/// the log position it reflects and without the DHCP servers.
fn allocations(api: &Api) -> anyhow::Result<Vec<Value>> {
    [PROD, LAB]
        .iter()
        .map(|id| {
            let mut view = api.get(&format!("/v1/networks/{id}"))?;
            if let Some(object) = view.as_object_mut() {
                object.remove("position");
                object.remove("servers");
            }
            Ok(view)
        })
        .collect()
}

/// A vNIC's view without the log position it reflects.
fn vnic_view(api: &Api, vnic: VnicId) -> anyhow::Result<Value> {
    let mut view = api.get(&format!("/v1/vnics/{vnic}"))?;
    if let Some(object) = view.as_object_mut() {
        object.remove("position");
    }
    Ok(view)
}

/// Plays the story; with `keep`, then leaves the stack running until Ctrl-C or SIGTERM. `token`
/// is the API's bearer token (`--api-token`), if it is to have one.
pub fn run(keep: bool, token: Option<String>) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ipam-demo-{}", std::process::id()));
    let result = story(&dir, keep, token.as_deref());
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Heartbeats of the hosts marked alive, every 300 ms until `stop`, as host agents would send them.
fn heartbeats(api: &Api, alive: &Arc<Mutex<Vec<bool>>>, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (api, alive, stop) = (api.clone(), Arc::clone(alive), Arc::clone(stop));
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let beats: Vec<Value> = (1..=4)
                .filter(|n| alive.lock().map(|a| a[(*n - 1) as usize]).unwrap_or(false))
                .map(|n| {
                    envelope("ipam-demo", Event::HostHeartbeat(HostHeartbeat { host_id: host(n), serving: vec![] }))
                })
                .collect();
            let _ = api.publish(&beats);
            std::thread::sleep(Duration::from_millis(300));
        }
    })
}

fn story(dir: &std::path::Path, keep: bool, token: Option<&str>) -> anyhow::Result<()> {
    println!("== ipam demo: the all-in-one stack on the embedded log in {}", dir.display());
    let (mut up, api) = start(dir, token)?;
    let publish = |events: Vec<Event>| -> anyhow::Result<()> {
        let events: Vec<Value> = events.into_iter().map(|e| envelope("ipam-demo", e)).collect();
        for batch in events.chunks(200) {
            api.publish(batch)?;
        }
        Ok(())
    };

    // Four hosts, both networks attached to each; their heartbeats come from a thread, as host
    // agents would send them.
    let alive = Arc::new(Mutex::new(vec![true; 4]));
    let hosts: Vec<Event> = (1..=4)
        .map(|n| {
            Event::HostUpserted(HostUpserted {
                host_id: host(n),
                name: format!("host-{n}"),
                status: HostStatus::Up,
                networks: vec![
                    HostNetwork { network_id: PROD, interface: "br-prod".parse().expect("valid") },
                    HostNetwork { network_id: LAB, interface: "br-lab".parse().expect("valid") },
                ],
            })
        })
        .collect();
    publish(hosts)?;
    let stop_heartbeats = Arc::new(AtomicBool::new(false));
    let beating = heartbeats(&api, &alive, &stop_heartbeats);

    let subnets = [
        (PROD, 1u128, "10.10.0.0/23", "10.10.0.1"),
        (PROD, 2, "10.10.2.0/24", "10.10.2.1"),
        (LAB, 3, "10.20.0.0/24", "10.20.0.1"),
    ];
    let mut setup = vec![
        Event::NetworkUpserted(NetworkUpserted {
            network_id: PROD,
            name: "production".to_owned(),
            ipam_enabled: true,
            servers_count: Some(2),
        }),
        Event::NetworkUpserted(NetworkUpserted {
            network_id: LAB,
            name: "lab".to_owned(),
            ipam_enabled: true,
            servers_count: Some(1),
        }),
    ];
    for (network, id, cidr, gateway) in subnets {
        setup.push(Event::SubnetAdded(SubnetAdded {
            network_id: network,
            subnet_id: SubnetId::from_u128(0x5b00 + id),
            cidr: cidr.parse()?,
            gateway: gateway.parse()?,
            dns_servers: vec!["192.0.2.53".parse()?],
            ntp_servers: vec![],
            allocation_pools: None,
        }));
    }
    publish(setup)?;
    println!("\n== 2 networks, 3 subnets, 4 hosts. DHCP servers placed:");
    for (id, name) in [(PROD, "production"), (LAB, "lab")] {
        let view = wait("servers are placed", || {
            let view = api.get(&format!("/v1/networks/{id}"))?;
            let wanted = if id == PROD { 2 } else { 1 };
            Ok((servers(&view).len() == wanted).then_some(view))
        })?;
        println!("   {name:<11} served by {}", servers(&view).join(", "));
    }

    // 500 vNICs start; then 150 stop and 50 more start.
    let vnic = |n: u128| {
        let network = if n % 10 < 7 { PROD } else { LAB };
        let subnet = if network == LAB { 3 } else { 1 + n % 2 };
        let b = (n as u32).to_be_bytes();
        VnicUp {
            vnic_id: VnicId::from_u128(0x7000 + n),
            vm_id: VmId::from_u128(0x8000 + n),
            network_id: network,
            subnet_id: Some(SubnetId::from_u128(0x5b00 + subnet)),
            subnet_ids: Vec::new(),
            mac: Mac::from_octets([0x52, 0x54, b[0], b[1], b[2], b[3]]).expect("unicast"),
            requested_ip: None,
        }
    };
    publish((0..500).map(|n| Event::VnicStarted(vnic(n))).collect())?;
    publish(
        (0..500)
            .filter(|n| n % 10 == 3 || n % 10 == 8 || n % 10 == 5)
            .map(|n| {
                Event::VnicStopped(VnicDown { vnic_id: VnicId::from_u128(0x7000 + n), network_id: vnic(n).network_id })
            })
            .collect(),
    )?;
    publish((500..550).map(|n| Event::VnicStarted(vnic(n))).collect())?;
    let expected = 550 - 150;
    wait("the reservations are visible", || {
        let total: usize = allocations(&api)?.iter().map(|v| v["reservations"].as_array().map_or(0, Vec::len)).sum();
        Ok((total == expected).then_some(()))
    })?;
    println!("\n== 550 vNICs started, 150 stopped: {expected} live reservations. Utilization:");
    for view in allocations(&api)? {
        for subnet in view["subnets"].as_array().into_iter().flatten() {
            let (used, size) = (subnet["used"].as_f64().unwrap_or(0.0), subnet["size"].as_f64().unwrap_or(0.0));
            println!(
                "   {:<11} {:<14} {} {:>4} / {:<4} used",
                view["name"].as_str().unwrap_or("?"),
                subnet["cidr"].as_str().unwrap_or("?"),
                bar(used, size),
                used,
                size
            );
        }
    }

    // A host serving production stops heartbeating.
    let before = servers(&api.get(&format!("/v1/networks/{PROD}"))?);
    let lost = before.first().cloned().context("production has no server")?;
    let lost_n: usize = lost.trim_start_matches("host-").parse()?;
    println!("\n== {lost} stops sending heartbeats (production is served by {})", before.join(", "));
    alive.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[lost_n - 1] = false;
    let lost_at = Instant::now();
    let after = wait("production's server moves", || {
        let now = servers(&api.get(&format!("/v1/networks/{PROD}"))?);
        Ok((now.len() == 2 && !now.contains(&lost)).then_some(now))
    })?;
    println!(
        "   after {:.1} s (heartbeat timeout 1.5 s): production is served by {}; {lost}'s server moved",
        lost_at.elapsed().as_secs_f64(),
        after.join(", ")
    );

    // Replay check: kill -9, restart, and the allocations are the same. The DHCP servers are left
    // out of the comparison: the kill stops the heartbeats too, and once the clock runs again
    // placement rightly moves servers of hosts that fell silent meanwhile.
    let before = allocations(&api)?;
    println!("\n== kill -9 ipam up, then start it again");
    up.kill()?;
    stop_heartbeats.store(true, Ordering::SeqCst);
    let _ = beating.join();
    let (mut restarted, restarted_api) = start(dir, token)?;
    let after = wait("the restarted read model catches up", || {
        let after = allocations(&restarted_api)?;
        Ok((after == before).then_some(after))
    })?;
    // A repeated start of a live vNIC, followed on the same network (so in order) by the start of
    // a new one: once the new one holds its address, the repeat has been decided too.
    let live = VnicId::from_u128(0x7000);
    let live_before = vnic_view(&restarted_api, live)?;
    let marker = VnicUp { vnic_id: VnicId::from_u128(0x7fff), mac: "52:54:00:00:7f:ff".parse()?, ..vnic(0) };
    restarted_api.publish(&[
        envelope("ipam-demo", Event::VnicStarted(vnic(0))),
        envelope("ipam-demo", Event::VnicStarted(marker)),
    ])?;
    wait("the new vNIC holds an address", || {
        Ok(vnic_view(&restarted_api, VnicId::from_u128(0x7fff)).ok().filter(|view| !view["reservation"].is_null()))
    })?;
    let unchanged = vnic_view(&restarted_api, live)? == live_before;
    println!(
        "   replay check: networks, subnets and reservations after the restart {} the state before it; \
         a repeated start of a live vNIC {}",
        if after == before { "equal" } else { "DIFFER FROM" },
        if unchanged { "changed nothing" } else { "CHANGED the state" }
    );
    if !unchanged {
        restarted.terminate()?;
        bail!("the replay check failed");
    }
    if keep {
        keep_running(&restarted_api, &restarted.api_url, token.is_some(), &alive)?;
    }
    restarted.terminate()?;
    println!("\n== demo done");
    Ok(())
}

/// `--keep`: heartbeats again for the hosts still alive, one refused request so that the page has
/// a rejection to show, then wait for Ctrl-C or SIGTERM.
fn keep_running(api: &Api, url: &str, has_token: bool, alive: &Arc<Mutex<Vec<bool>>>) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing a signal handler")?;
    }
    let stop_heartbeats = Arc::new(AtomicBool::new(false));
    let beating = heartbeats(api, alive, &stop_heartbeats);
    // A fixed address outside its subnet: the allocator refuses it with `ip_outside_subnet`.
    let refused = VnicUp {
        vnic_id: VnicId::from_u128(0x7ffe),
        vm_id: VmId::from_u128(0x8ffe),
        network_id: LAB,
        subnet_id: Some(SubnetId::from_u128(0x5b03)),
        subnet_ids: Vec::new(),
        mac: "52:54:00:00:7f:fe".parse()?,
        requested_ip: Some("10.99.0.10".parse()?),
    };
    api.publish(&[envelope("ipam-demo", Event::VnicStarted(refused))])?;
    println!(
        "\n== the stack stays up (--keep): open {}/ui/ in a browser{}; Ctrl-C stops it",
        url,
        if has_token { " and sign in with the API token" } else { "" }
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_heartbeats.store(true, Ordering::SeqCst);
    let _ = beating.join();
    Ok(())
}
