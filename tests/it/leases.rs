//! Lease truth end to end, as root: a real dnsmasq run by a host agent in a network namespace, a
//! real DHCP client (busybox udhcpc) in a VM namespace, `ipam up` on the embedded log, and the
//! lease events read back from that log. The topology and the stack are `dhcp.rs`'s.
//!
//! dnsmasq gives no lease shorter than two minutes, so renewals are asked for (udhcpc renews on
//! SIGUSR1) rather than waited for, and an expiry is made by moving a lease's end into the past
//! while dnsmasq and the agent are down (a guest that vanished and whose lease ran out meanwhile).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipam_core::event::*;
use ipam_core::{Envelope, Event, EventId, HostId, Mac, VnicId};
use ipam_log::EventLog;

use crate::dhcp::{NETWORK, SUBNET, Stack, host_id, network, start};
use ipam_tests::netns::{Fabric, dhcp, must, prerequisites};
use ipam_tests::wait_until;

/// Every lease event in the log, in order (one network, so one partition), as (type, data, id).
fn lease_events(log: &dyn EventLog) -> Vec<(&'static str, LeaseObserved, EventId)> {
    let mut events = Vec::new();
    for partition in 0..log.partition_count("ipam.networks").unwrap() {
        for record in log.read("ipam.networks", partition, 0, usize::MAX, Duration::ZERO).unwrap() {
            let Ok(envelope) = Envelope::decode(&record.value) else { continue };
            let kind = envelope.event.type_name();
            match envelope.event {
                Event::LeaseGranted(lease)
                | Event::LeaseRenewed(lease)
                | Event::LeaseReleased(lease)
                | Event::LeaseExpired(lease) => events.push((kind, lease, envelope.id)),
                _ => {}
            }
        }
    }
    events
}

fn kinds(log: &dyn EventLog) -> Vec<&'static str> {
    lease_events(log).into_iter().map(|(kind, _, _)| kind.trim_start_matches("ipam.lease.")).collect()
}

/// The partition and offset of the reservation of `vnic` in `ipam.reservations`.
fn reservation_offset(log: &dyn EventLog, vnic: VnicId) -> Option<(u32, u64)> {
    for partition in 0..log.partition_count("ipam.reservations").unwrap() {
        for record in log.read("ipam.reservations", partition, 0, usize::MAX, Duration::ZERO).unwrap() {
            if let Ok(Event::ReservationAdded(added)) = Envelope::decode(&record.value).map(|e| e.event)
                && matches!(added.owner, Owner::Vnic { vnic_id, .. } if vnic_id == vnic)
            {
                return Some((partition, record.offset));
            }
        }
    }
    None
}

/// The newest `synced` offset `host` reported for the network.
fn synced_offset(log: &dyn EventLog, host: HostId) -> Option<u64> {
    let records = log.read("ipam.hosts", 0, 0, usize::MAX, Duration::ZERO).unwrap();
    records.iter().rev().find_map(|record| match Envelope::decode(&record.value).map(|e| e.event) {
        Ok(Event::DhcpServerSynced(synced)) if synced.host_id == host && synced.network_id == NETWORK => {
            Some(synced.reservations_offset)
        }
        _ => None,
    })
}

/// A udhcpc that stays: it renews on SIGUSR1 and releases (`-R`) when it is terminated.
struct Guest {
    child: Child,
    out: PathBuf,
}

impl Guest {
    fn start(namespace: &str, dir: &Path) -> Guest {
        let script = dir.join("udhcpc-stay.sh");
        let out = dir.join(format!("events-{namespace}"));
        // The address is put on the interface as the stock script does: a release is unicast.
        let text = format!(
            "#!/bin/sh\necho \"$1 $ip\" >> {}\n\
             case \"$1\" in\n\
             bound|renew) ip addr flush dev \"$interface\"; ip addr add \"$ip/$mask\" dev \"$interface\";;\n\
             deconfig) ip addr flush dev \"$interface\";;\n\
             esac\nexit 0\n",
            out.display()
        );
        std::fs::write(&script, text).unwrap();
        must(&["chmod", "+x", &script.display().to_string()]);
        // `ip netns exec` execs udhcpc in place: the child's pid is udhcpc's.
        let child = Command::new("ip")
            .args(["netns", "exec", namespace, "busybox", "udhcpc", "-i", "eth0", "-f", "-R", "-t", "20", "-T", "1"])
            .arg("-s")
            .arg(&script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Guest { child, out }
    }

    fn said(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        must(&["kill", signal, &self.child.id().to_string()]);
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The expiry dnsmasq's lease file holds for `mac`.
fn file_expiry(shard: &Path, mac: Mac) -> Option<String> {
    let text = std::fs::read_to_string(shard.join("leases")).ok()?;
    let line = text.lines().find(|line| line.split_whitespace().nth(1) == Some(&mac.to_string()))?;
    line.split_whitespace().next().map(str::to_owned)
}

/// Asks the guest to renew until `renewed` holds: dnsmasq's expiries are in seconds, so a renewal
/// within the second of the previous one changes nothing.
fn renew_until(guest: &Guest, what: &str, mut renewed: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !renewed() {
        assert!(Instant::now() < deadline, "timed out renewing until {what}");
        guest.signal("-USR1");
        let asked = Instant::now();
        while !renewed() && asked.elapsed() < Duration::from_millis(1500) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits until `done` holds; on a timeout the failure shows the lease events so far and what
/// dnsmasq logged.
fn wait_for_events(stack: &Stack, host: HostId, what: &str, mut done: impl FnMut(&[&str]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let kinds = kinds(&*stack.log);
        if done(&kinds) {
            return;
        }
        if Instant::now() >= deadline {
            let mut others = Vec::new();
            for partition in 0..stack.log.partition_count("ipam.networks").unwrap() {
                for record in stack.log.read("ipam.networks", partition, 0, usize::MAX, Duration::ZERO).unwrap() {
                    others.extend(Envelope::decode(&record.value).map(|e| e.event.type_name()));
                }
            }
            let leases = std::fs::read_to_string(stack.shard_dir(host).join("leases")).unwrap_or_default();
            panic!(
                "timed out waiting until {what}: {kinds:?}\non ipam.networks: {others:?}\nleases: {leases}\n{}",
                stack.dnsmasq_log(host)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn dnsmasq_pid(shard: &Path) -> Option<String> {
    let pid = std::fs::read_to_string(shard.join("dnsmasq.pid")).ok()?.trim().to_owned();
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn subnet(dns_servers: Vec<std::net::IpAddr>) -> Event {
    Event::SubnetAdded(SubnetAdded {
        network_id: NETWORK,
        subnet_id: SUBNET,
        cidr: "10.78.0.0/24".parse().unwrap(),
        gateway: "10.78.0.1".parse().unwrap(),
        dns_servers,
        ntp_servers: vec![],
        allocation_pools: None,
    })
}

#[test]
fn leases_are_reported_once_each_across_restarts_of_dnsmasq_and_of_the_agent() {
    prerequisites();
    let mut fabric = Fabric::new();
    let host = host_id(0x1e);
    let host_ns = fabric.node("lh", "eth1", None);
    let mac: Mac = "52:54:00:1e:00:01".parse().unwrap();
    let vm = fabric.node("lv", "eth0", Some(mac));
    // The agent is stopped for a few seconds at a time: placement must not take the network away
    // from its host meanwhile (a lost host's server stops, and its leases end with it).
    let mut stack = Stack::start_with_heartbeat_timeout(60_000);
    let mut agent = stack.agent(&host_ns, host);
    stack.publish(vec![
        Event::HostUpserted(HostUpserted {
            host_id: host,
            name: "lease-host".to_owned(),
            status: HostStatus::Up,
            networks: vec![HostNetwork { network_id: NETWORK, interface: "eth1".parse().unwrap() }],
        }),
        network(1),
        subnet(vec![]),
    ]);
    let vnic = VnicId::from_u128(0x1e1);
    stack.publish(vec![start(vnic, mac)]);
    wait_until("the vNIC holds a reservation", Duration::from_secs(20), || stack.reserved_ip(vnic).is_some());
    let reserved = stack.reserved_ip(vnic).unwrap();
    let shard = stack.shard_dir(host);
    wait_until("the server runs with its own address and the reservation", Duration::from_secs(30), || {
        let conf = std::fs::read_to_string(shard.join("dnsmasq.conf")).unwrap_or_default();
        conf.contains("server address 10.78.")
            && stack.dnsmasq_log(host).contains("sockets bound exclusively")
            && stack.served_lines(host).contains(&mac.to_string())
    });

    // The server says it serves the reservation: synced past its offset.
    let (_, offset) = reservation_offset(&*stack.log, vnic).unwrap();
    wait_until("the server reports itself synced past the reservation", Duration::from_secs(10), || {
        synced_offset(&*stack.log, host).is_some_and(|synced| synced > offset)
    });

    // Granted, with the host, MAC, address and expiry.
    let guest = Guest::start(&vm, stack.dir.path());
    wait_until("the guest is bound", Duration::from_secs(20), || guest.said().contains("bound"));
    wait_until("the lease is reported", Duration::from_secs(10), || !lease_events(&*stack.log).is_empty());
    let (kind, granted, _) = lease_events(&*stack.log).remove(0);
    // What the reporter adds: from dnsmasq's write of its lease file (before its DHCPACK; nothing
    // else writes the file until the guest renews) to the agent's stamp on the event.
    let written = std::fs::metadata(shard.join("leases")).unwrap().modified().unwrap();
    let written_ms = i64::try_from(written.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let latency_ms = granted.observed_at.unix_ms() - written_ms;
    println!("lease file written -> lease seen by the agent: {latency_ms} ms (the reporter polls every 200 ms)");
    assert!((0..5_000).contains(&latency_ms), "the lease is seen within a few polls, not {latency_ms} ms");
    assert_eq!(kind, "ipam.lease.granted.v1");
    assert_eq!((granted.host_id, granted.network_id, granted.mac), (host, NETWORK, mac));
    assert_eq!(granted.ip.to_string(), reserved);
    let expires = granted.expires_at.expect("a granted lease has an expiry").unix_ms();
    let lasts = expires - granted.observed_at.unix_ms();
    assert!((3_500_000..=3_601_000).contains(&lasts), "the agent's lease time (3600 s), not {lasts} ms");

    // Renewed: the expiry moved.
    renew_until(&guest, "the renewal is reported", || kinds(&*stack.log) == ["granted.v1", "renewed.v1"]);

    // The subnet's options change: the server starts afresh and takes its leases along (no
    // release is reported: the final list of events says so).
    let old_pid = dnsmasq_pid(&shard).unwrap();
    stack.publish(vec![subnet(vec!["10.78.0.53".parse().unwrap()])]);
    wait_until("the server runs with the new options", Duration::from_secs(20), || {
        let conf = std::fs::read_to_string(shard.join("dnsmasq.conf")).unwrap_or_default();
        conf.contains("10.78.0.53") && dnsmasq_pid(&shard).is_some_and(|pid| pid != old_pid)
    });
    assert!(file_expiry(&shard, mac).is_some(), "the new server holds the guest's lease");

    // The agent away while the guest renews: the renewal is reported once it is back, nothing
    // twice.
    agent.terminate();
    let before = file_expiry(&shard, mac);
    renew_until(&guest, "dnsmasq renews while the agent is away", || file_expiry(&shard, mac) != before);
    let mut agent = stack.agent(&host_ns, host);
    wait_until("the renewal made while away is reported", Duration::from_secs(20), || kinds(&*stack.log).len() >= 3);

    // dnsmasq killed and restarted by the agent: it reloads its leases, and nothing is reported.
    wait_until("dnsmasq runs", Duration::from_secs(20), || dnsmasq_pid(&shard).is_some());
    let old_pid = dnsmasq_pid(&shard).unwrap();
    must(&["kill", "-KILL", &old_pid]);
    wait_until("dnsmasq is restarted", Duration::from_secs(20), || {
        dnsmasq_pid(&shard).is_some_and(|pid| pid != old_pid)
    });
    renew_until(&guest, "a renewal after dnsmasq's restart is reported", || kinds(&*stack.log).len() >= 4);

    // Released: udhcpc sends DHCPRELEASE when it is terminated (-R).
    let mut guest = guest;
    guest.signal("-TERM");
    wait_until("the guest exits", Duration::from_secs(10), || matches!(guest.child.try_wait(), Ok(Some(_))));
    wait_for_events(&stack, host, "the release is reported", |kinds| kinds.len() >= 5);
    assert_eq!(kinds(&*stack.log), ["granted.v1", "renewed.v1", "renewed.v1", "renewed.v1", "released.v1"]);
    let (_, released, _) = lease_events(&*stack.log).pop().unwrap();
    assert_eq!((released.mac, released.ip.to_string(), released.expires_at), (mac, reserved.clone(), None));

    // Expired: a guest takes the address again and vanishes without a release; its lease runs out
    // while the agent and dnsmasq are down.
    let lease = (0..5).find_map(|_| dhcp(&vm, stack.dir.path())).expect("the guest gets its address again");
    assert_eq!(lease.ip, reserved);
    wait_until("the new lease is reported", Duration::from_secs(10), || kinds(&*stack.log).len() >= 6);
    agent.terminate();
    wait_until("dnsmasq runs", Duration::from_secs(20), || dnsmasq_pid(&shard).is_some());
    let pid = dnsmasq_pid(&shard).unwrap();
    must(&["kill", "-KILL", &pid]);
    wait_until("dnsmasq is gone", Duration::from_secs(10), || dnsmasq_pid(&shard).is_none());
    let text = std::fs::read_to_string(shard.join("leases")).unwrap();
    let past = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 5;
    let moved: String = text
        .lines()
        .map(|line| match line.split_once(' ') {
            Some((_, rest)) if rest.starts_with(&mac.to_string()) => format!("{past} {rest}\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    assert_ne!(moved, text, "the lease file holds the guest's lease: {text}");
    std::fs::write(shard.join("leases"), moved).unwrap();
    let mut agent = stack.agent(&host_ns, host);
    wait_until("the expiry is reported", Duration::from_secs(20), || kinds(&*stack.log).len() >= 7);
    assert_eq!(
        kinds(&*stack.log),
        ["granted.v1", "renewed.v1", "renewed.v1", "renewed.v1", "released.v1", "granted.v1", "expired.v1"]
    );
    let events = lease_events(&*stack.log);
    let ids: std::collections::BTreeSet<EventId> = events.iter().map(|(_, _, id)| *id).collect();
    assert_eq!(ids.len(), events.len(), "each event has an id of its own");
    assert!(events.iter().all(|(_, lease, _)| lease.mac == mac && lease.ip.to_string() == reserved));

    agent.terminate();
    stack.up.terminate();
    drop(fabric);
}
