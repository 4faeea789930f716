//! Release quarantine end to end (issue 14), through `ipam up` with a fast clock: an address a vNIC
//! released is not given to another vNIC, dynamically or by a fixed request, until the network's
//! `release_quarantine_s` has passed on the log's partition ticks, and is after it.
//!
//! The allocator's refusal is what keeps the address unused: host agents serve reservations only
//! (dnsmasq's static ranges answer known MACs alone), so an address no vNIC holds is handed to no
//! guest by any DHCP server.
//!
//! The same with the real thing: a host agent's dnsmasq in a network namespace and real clients
//! (busybox udhcpc) in guest namespaces (the topology and the stack are `dhcp.rs`'s), so that what
//! is checked is what a guest got, not only what the log says.

use std::time::{Duration, Instant};

use ipam_core::event::{HostNetwork, HostStatus, HostUpserted, NetworkPolicy, NetworkPolicySet, SubnetAdded, VnicDown};
use ipam_core::{Envelope, Event, HostId, Mac, Topic, VnicId};
use ipam_log::EventLog;
use ipam_tests::netns::{Fabric, dhcp, prerequisites};
use ipam_tests::wait_until;
use serde_json::{Value, json};

use crate::api::{event, http, ipam_up_with_api_and};
use crate::dhcp::{Stack, host_id, network, start, wait_for_lease};

const NETWORK: &str = "00000000-0000-0000-0000-0000000c1401";
const SUBNET: &str = "00000000-0000-0000-0000-0000000c1402";
const QUARANTINE_S: u64 = 8;

fn vnic_id(n: u32) -> String {
    format!("00000000-0000-0000-0000-0000000c15{n:02x}")
}

fn started(id: u32, n: u32, fixed_ip: Option<&str>) -> Value {
    let mut data = json!({"vnic_id": vnic_id(n), "vm_id": vnic_id(n), "network_id": NETWORK, "subnet_id": SUBNET,
                          "mac": format!("52:54:00:c1:00:{n:02x}")});
    if let Some(ip) = fixed_ip {
        data["requested_ip"] = json!(ip);
    }
    event(id, "ipam.vnic.started.v1", data)
}

/// The id `event(id, ..)` gives its envelope.
fn event_id(id: u32) -> String {
    event(id, "x", json!({}))["id"].as_str().unwrap().to_owned()
}

fn publish(addr: std::net::SocketAddr, events: &[Value]) {
    let (status, body) =
        http(addr, "POST", "/v1/events", "application/json", Value::from(events.to_vec()).to_string().as_bytes());
    assert_eq!(status, 202, "{body}");
}

/// What the allocator answered to input `id`: a reservation's address or a rejection's code, once
/// it is in the log (waits up to 30 s).
fn outcome(log: &dyn EventLog, id: u32) -> Result<String, String> {
    let cause: ipam_core::EventId = event_id(id).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for partition in 0..log.partition_count(Topic::Reservations.name()).unwrap() {
            let records = log.read(Topic::Reservations.name(), partition, 0, 100_000, Duration::ZERO).unwrap();
            for record in records {
                match Envelope::decode(&record.value).map(|envelope| envelope.event) {
                    Ok(Event::ReservationAdded(added)) if added.cause == cause => return Ok(added.ip.to_string()),
                    Ok(Event::RequestRejected(rejected)) if rejected.cause == cause => {
                        return Err(rejected.code.to_string());
                    }
                    _ => {}
                }
            }
        }
        assert!(Instant::now() < deadline, "no answer to input {id} in the log");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_released_address_is_not_reused_by_another_vnic_within_its_quarantine_and_is_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, addr) = ipam_up_with_api_and(dir.path(), &["--tick-interval-ms", "200"]);
    let log = ipam_tests::BackendSpec::Sqlite(dir.path().join("log")).open().unwrap();

    // A /29: .2 to .6, all held by vNICs 1 to 5.
    let mut setup = vec![
        event(
            1,
            "ipam.network.upserted.v1",
            json!({"network_id": NETWORK, "name": "quarantine", "ipam_enabled": true}),
        ),
        event(
            2,
            "ipam.subnet.added.v1",
            json!({"network_id": NETWORK, "subnet_id": SUBNET, "cidr": "10.66.0.0/29", "gateway": "10.66.0.1"}),
        ),
        event(
            3,
            "ipam.network.policy_set.v1",
            json!({"network_id": NETWORK, "policy": {"release_quarantine_s": QUARANTINE_S}}),
        ),
    ];
    setup.extend((1..=5).map(|n| started(10 + n, n, None)));
    publish(addr, &setup);
    let held: Vec<String> = (1..=5).map(|n| outcome(&*log, 10 + n).expect("the /29 holds five vNICs")).collect();
    assert_eq!(held[0], "10.66.0.2", "{held:?}");

    let released_at = Instant::now();
    publish(addr, &[event(20, "ipam.vnic.stopped.v1", json!({"vnic_id": vnic_id(1), "network_id": NETWORK}))]);
    // Within the quarantine: neither a new vNIC nor a fixed request from another MAC gets .2.
    publish(addr, &[started(21, 6, None), started(22, 7, Some("10.66.0.2"))]);
    let (dynamic, fixed) = (outcome(&*log, 21), outcome(&*log, 22));
    let answered_within = released_at.elapsed();
    assert!(
        answered_within < Duration::from_secs(QUARANTINE_S - 2),
        "the machine took {answered_within:?} to answer; too loaded to tell a quarantine apart"
    );
    assert_eq!(dynamic, Err("subnet_exhausted".to_owned()), "the released address is withheld from new vNICs");
    assert_eq!(fixed, Err("ip_quarantined".to_owned()), "and from a fixed request of another MAC");

    // After it: vNIC 6 asks again (a new request each time) until it gets an address: .2.
    let mut id = 30;
    let reused = loop {
        publish(addr, &[started(id, 6, None)]);
        if let Ok(ip) = outcome(&*log, id) {
            break ip;
        }
        assert!(released_at.elapsed() < Duration::from_secs(QUARANTINE_S + 30), "the quarantine never ended");
        id += 1;
        std::thread::sleep(Duration::from_millis(250));
    };
    let reused_after = released_at.elapsed();
    assert_eq!(reused, "10.66.0.2");
    // The quarantine is dated by the last tick before the release: at most a tick interval (and
    // the clock's lag) earlier than the stop was published.
    assert!(reused_after >= Duration::from_secs(QUARANTINE_S - 1), "reused after {reused_after:?}");
    up.terminate();
}

/// The codes of the allocator's refusals of `vnic`'s requests, in order.
fn refusals(log: &dyn EventLog, vnic: VnicId) -> Vec<String> {
    let mut codes = Vec::new();
    for partition in 0..log.partition_count(Topic::Reservations.name()).unwrap() {
        for record in log.read(Topic::Reservations.name(), partition, 0, usize::MAX, Duration::ZERO).unwrap() {
            if let Ok(Event::RequestRejected(rejected)) = Envelope::decode(&record.value).map(|e| e.event)
                && rejected.vnic_id == Some(vnic)
            {
                codes.push(rejected.code.to_string());
            }
        }
    }
    codes
}

/// `host`'s served lines for `mac`: `MAC,IP` serves it; a later `MAC,ignore` masks what it had
/// (until the shard reloads and drops both).
fn lines_of(stack: &Stack, host: HostId, mac: Mac) -> Vec<String> {
    let prefix = format!("{mac},");
    stack.served_lines(host).lines().filter(|line| line.starts_with(&prefix)).map(str::to_owned).collect()
}

fn serves(stack: &Stack, host: HostId, mac: Mac, ip: &str) -> bool {
    let lines = lines_of(stack, host, mac);
    lines.contains(&format!("{mac},{ip}")) && !lines.contains(&format!("{mac},ignore"))
}

fn unserved(stack: &Stack, host: HostId, mac: Mac) -> bool {
    let lines = lines_of(stack, host, mac);
    lines.is_empty() || lines.contains(&format!("{mac},ignore"))
}

#[test]
fn a_real_guest_is_not_given_an_address_another_guest_released_within_its_quarantine_and_is_after_it() {
    prerequisites();
    let mut fabric = Fabric::new();
    let host = host_id(0x14);
    let host_ns = fabric.node("qh", "eth1", None);
    let (mac_a, mac_b): (Mac, Mac) = ("52:54:00:14:00:0a".parse().unwrap(), "52:54:00:14:00:0b".parse().unwrap());
    let (vm_a, vm_b) = (fabric.node("qa", "eth0", Some(mac_a)), fabric.node("qb", "eth0", Some(mac_b)));
    let (vnic_a, vnic_b) = (VnicId::from_u128(0x14a), VnicId::from_u128(0x14b));
    // The stack's clock ticks every 300 ms: the quarantine's time.
    let mut stack = Stack::start();
    let mut agent = stack.agent(&host_ns, host);
    stack.publish(vec![
        Event::HostUpserted(HostUpserted {
            host_id: host,
            name: "quarantine-host".to_owned(),
            status: HostStatus::Up,
            networks: vec![HostNetwork { network_id: crate::dhcp::NETWORK, interface: "eth1".parse().unwrap() }],
        }),
        network(1),
        // A /29: .2 to .6, five addresses, one of them the server's own.
        Event::SubnetAdded(SubnetAdded {
            network_id: crate::dhcp::NETWORK,
            subnet_id: crate::dhcp::SUBNET,
            cidr: "10.79.0.0/29".parse().unwrap(),
            gateway: "10.79.0.1".parse().unwrap(),
            dns_servers: vec![],
            ntp_servers: vec![],
            allocation_pools: None,
        }),
        Event::NetworkPolicySet(NetworkPolicySet {
            network_id: crate::dhcp::NETWORK,
            policy: NetworkPolicy { release_quarantine_s: Some(QUARANTINE_S as u32), ..NetworkPolicy::default() },
        }),
    ]);
    let shard = stack.shard_dir(host);
    wait_until("the server runs with its own address", Duration::from_secs(30), || {
        let conf = std::fs::read_to_string(shard.join("dnsmasq.conf")).unwrap_or_default();
        conf.contains("server address 10.79.") && stack.dnsmasq_log(host).contains("sockets bound exclusively")
    });

    // Three vNICs without guests and guest A's vNIC take the other four: the subnet is full, so
    // the address A releases is the only one free, which next-fit would hand to B at once.
    let fillers: Vec<VnicId> = (1..=3).map(|n| VnicId::from_u128(0x140 + n)).collect();
    let mut starts: Vec<Event> = fillers
        .iter()
        .zip(1u8..)
        .map(|(vnic, n)| start(*vnic, Mac::from_octets([0x52, 0x54, 0, 0x14, 0xf0, n]).unwrap()))
        .collect();
    starts.push(start(vnic_a, mac_a));
    stack.publish(starts);
    wait_until("the four vNICs hold addresses", Duration::from_secs(20), || {
        fillers.iter().chain([&vnic_a]).all(|vnic| stack.reserved_ip(*vnic).is_some())
    });
    let x = stack.reserved_ip(vnic_a).unwrap();
    wait_until("the server holds A's reservation", Duration::from_secs(20), || serves(&stack, host, mac_a, &x));
    assert_eq!(wait_for_lease(&vm_a, stack.dir.path()).ip, x, "guest A got its reserved address");

    // A stops and its VM restarts within the quarantine: the same MAC gets its address back.
    let stop_a = || Event::VnicStopped(VnicDown { vnic_id: vnic_a, network_id: crate::dhcp::NETWORK });
    let first_release = Instant::now();
    stack.publish(vec![stop_a()]);
    wait_until("A's address is released and unserved", Duration::from_secs(20), || {
        stack.reserved_ip(vnic_a).is_none() && unserved(&stack, host, mac_a)
    });
    stack.publish(vec![start(vnic_a, mac_a)]);
    wait_until("A holds an address again", Duration::from_secs(20), || stack.reserved_ip(vnic_a).is_some());
    let restarted_within = first_release.elapsed();
    assert!(
        restarted_within < Duration::from_secs(QUARANTINE_S - 2),
        "the machine took {restarted_within:?} to answer; too loaded to tell a quarantine apart"
    );
    assert_eq!(stack.reserved_ip(vnic_a), Some(x.clone()), "the restarted VM's MAC got its quarantined address back");
    wait_until("the server holds A's reservation again", Duration::from_secs(20), || serves(&stack, host, mac_a, &x));
    assert_eq!(wait_for_lease(&vm_a, stack.dir.path()).ip, x, "guest A got its address back from dnsmasq");

    // A stops for good: within the quarantine, B is refused, and its guest gets nothing.
    let released_at = Instant::now();
    stack.publish(vec![stop_a()]);
    wait_until("A's address is released and unserved", Duration::from_secs(20), || {
        stack.reserved_ip(vnic_a).is_none() && unserved(&stack, host, mac_a)
    });
    stack.publish(vec![start(vnic_b, mac_b)]);
    wait_until("the allocator answers B", Duration::from_secs(20), || {
        stack.reserved_ip(vnic_b).is_some() || !refusals(&*stack.log, vnic_b).is_empty()
    });
    let answered_within = released_at.elapsed();
    assert!(
        answered_within < Duration::from_secs(QUARANTINE_S - 2),
        "the machine took {answered_within:?} to answer; too loaded to tell a quarantine apart"
    );
    assert_eq!(stack.reserved_ip(vnic_b), None, "B was given the address A released, within its quarantine");
    assert_eq!(refusals(&*stack.log, vnic_b), ["subnet_exhausted"]);
    assert!(dhcp(&vm_b, stack.dir.path()).is_none(), "guest B got a lease within the quarantine");
    let lines = stack.served_lines(host);
    assert!(lines_of(&stack, host, mac_b).is_empty(), "B's MAC is served: {lines}");
    assert!(
        !lines.lines().any(|line| line.ends_with(&format!(",{x}")) && !line.starts_with(&format!("{mac_a},"))),
        "{x} is served to another MAC: {lines}"
    );
    let log = stack.dnsmasq_log(host);
    assert!(log.contains(&format!("DHCPDISCOVER(eth1) {mac_b}")), "B's guest asked dnsmasq: {log}");
    assert!(!log.contains(&format!("{x} {mac_b}")), "dnsmasq offered {x} to B: {log}");
    let asked_within = released_at.elapsed();

    // After the quarantine: B's vNIC starts again (a new request each time) until it gets an
    // address, A's, and B's guest gets it from dnsmasq.
    let reused_after = loop {
        let refused = refusals(&*stack.log, vnic_b).len();
        stack.publish(vec![start(vnic_b, mac_b)]);
        wait_until("the allocator answers B", Duration::from_secs(20), || {
            stack.reserved_ip(vnic_b).is_some() || refusals(&*stack.log, vnic_b).len() > refused
        });
        if stack.reserved_ip(vnic_b).is_some() {
            break released_at.elapsed();
        }
        assert!(released_at.elapsed() < Duration::from_secs(QUARANTINE_S + 15), "the quarantine never ended");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(stack.reserved_ip(vnic_b), Some(x.clone()), "B got the address A released");
    // The quarantine is dated by the last tick before the release: at most a tick interval (and
    // the clock's lag) before the stop was published.
    assert!(reused_after >= Duration::from_secs(QUARANTINE_S - 1), "reused after {reused_after:?}");
    wait_until("the server holds B's reservation", Duration::from_secs(20), || serves(&stack, host, mac_b, &x));
    assert_eq!(wait_for_lease(&vm_b, stack.dir.path()).ip, x, "guest B got the address after the quarantine");
    wait_until("dnsmasq acknowledged B's request", Duration::from_secs(5), || {
        stack.dnsmasq_log(host).contains(&format!("DHCPACK(eth1) {x} {mac_b}"))
    });
    println!(
        "quarantine {QUARANTINE_S} s: B refused {answered_within:?} and its guest left without a lease \
         {asked_within:?} after the release; B got it {reused_after:?} after"
    );

    agent.terminate();
    stack.up.terminate();
    drop(fabric);
}
