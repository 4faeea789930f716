//! IPv6 end to end, as root: a host agent's real dnsmasq serves an IPv6 subnet in a network
//! namespace, and a real DHCPv6 client (ISC `dhclient -6`, Debian's isc-dhcp-client, with its
//! default DUID-LLT, which embeds the MAC) in a guest namespace gets its reserved address with the
//! subnet's DNS and NTP options. The guest's default route comes from router advertisements: the
//! gateway's own (a dnsmasq standing in for the subnet's router), since the DHCP server's RAs carry
//! router lifetime 0 (it is not the gateway) and only the managed flag and the on-link prefix.
//! `./test.sh` installs dnsmasq, busybox and isc-dhcp-client.
//!
//! The network is dual-stack: an IPv4 subnet beside the IPv6 one, served by the same dnsmasq, and
//! a guest of the IPv4 subnet gets its address from busybox udhcpc meanwhile. A dual-stack vNIC
//! (one vNIC with an address of each family) is `dhcp_dual_stack.rs`, with the helpers here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ipam_core::event::*;
use ipam_core::{Envelope, Event, EventId, HostId, Mac, NetworkId, SubnetId, Timestamp, VmId, VnicId};
use ipam_log::EventLog;

use crate::recovery::Service;
use ipam_tests::netns::{Fabric, dhcp, must, prerequisites, run};
use ipam_tests::{event_record, wait_until};

const NETWORK: NetworkId = NetworkId::from_u128(0xd6_01);
const SUBNET: SubnetId = SubnetId::from_u128(0xd6_02);
const SUBNET4: SubnetId = SubnetId::from_u128(0xd6_04);
const HOST: HostId = HostId::from_u128(0xd6_03);
const PREFIX: &str = "2001:db8:77::";

fn output(args: &[&str]) -> String {
    String::from_utf8_lossy(&run(args).stdout).into_owned()
}

/// Fails the test with what to do when `dhclient` (Debian's isc-dhcp-client) is not installed.
pub(crate) fn require_dhclient() {
    assert!(
        run(&["sh", "-c", "command -v dhclient"]).status.success(),
        "`dhclient` is missing: run ./test.sh, which installs isc-dhcp-client"
    );
}

/// The link-local address of `interface` in `namespace`, once it is past duplicate address
/// detection (a DHCPv6 client cannot bind to a tentative one).
pub(crate) fn link_local(namespace: &str, interface: &str) -> String {
    let mut address = String::new();
    wait_until("the link-local address is usable", Duration::from_secs(10), || {
        let text = output(&["ip", "-n", namespace, "-6", "-o", "addr", "show", "dev", interface, "scope", "link"]);
        let usable = text.lines().find(|line| !line.contains("tentative"));
        address = usable
            .and_then(|line| line.split_whitespace().skip_while(|word| *word != "inet6").nth(1))
            .and_then(|cidr| cidr.split('/').next())
            .unwrap_or_default()
            .to_owned();
        !address.is_empty()
    });
    address
}

/// What `dhclient -6` reported to its script when it bound, as `name=value` lines.
pub(crate) struct Bound(String);

impl Bound {
    pub(crate) fn get(&self, name: &str) -> &str {
        self.0.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix('=')).unwrap_or_default()
    }
}

/// Runs `dhclient -6` once in `namespace` on `eth0` with a lease file of its own (so a fresh
/// DUID-LLT from the interface's MAC, unless `duid` gives it another, in the lease file's octal
/// escapes), giving up after `timeout_secs`. Its script puts the address
/// on the interface as Debian's dhclient-script does and records the variables; `None` if no lease.
/// A client that bound stays running (it renews) until the namespace is removed.
pub(crate) fn dhclient(namespace: &str, dir: &Path, timeout_secs: u32, duid: Option<&str>) -> Option<Bound> {
    let file = |name: &str| -> PathBuf { dir.join(format!("{name}-{namespace}")) };
    let (conf, script, env) = (file("dhclient.conf"), file("dhclient.sh"), file("dhclient.env"));
    // dhclient knows NTP servers (option 56) only once declared; it reports them in hex.
    std::fs::write(
        &conf,
        format!(
            "timeout {timeout_secs};\noption dhcp6.ntp-server code 56 = string;\n\
             request dhcp6.name-servers, dhcp6.ntp-server;\n"
        ),
    )
    .unwrap();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$reason\" in BOUND6|RENEW6|REBIND6|REBOOT6)\n\
             ip -6 addr replace \"$new_ip6_address/$new_ip6_prefixlen\" dev \"$interface\" nodad\n\
             env | grep -E '^new_' > {env}.tmp && mv {env}.tmp {env};;\nesac\nexit 0\n",
            env = env.display()
        ),
    )
    .unwrap();
    must(&["chmod", "+x", &script.display().to_string()]);
    let _ = std::fs::remove_file(&env);
    let leases = file("dhclient.leases");
    match duid {
        Some(duid) => std::fs::write(&leases, format!("default-duid \"{duid}\";\n")).unwrap(),
        None => {
            let _ = std::fs::remove_file(&leases);
        }
    }
    let started = Instant::now();
    // `-1`: one attempt, then exit 2; once bound, dhclient forks into the background and exits 0.
    let status = Command::new("ip")
        .args(["netns", "exec", namespace, "timeout", &(timeout_secs + 10).to_string(), "dhclient", "-6", "-1"])
        .arg("-cf")
        .arg(&conf)
        .arg("-lf")
        .arg(&leases)
        .arg("-pf")
        .arg(file("dhclient.pid"))
        .arg("-sf")
        .arg(&script)
        .arg("eth0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    println!("dhclient -6 in {namespace}: {status} after {:?}", started.elapsed());
    if !status.success() {
        return None;
    }
    std::fs::read_to_string(&env).ok().map(Bound)
}

/// The addresses an NTP server option (56) holds: its suboptions 1 (server address), decoded from
/// dhclient's hex (`0:1:0:10:20:1:…`).
fn ntp_addresses(hex: &str) -> Vec<std::net::Ipv6Addr> {
    let bytes: Vec<u8> = hex.split(':').filter_map(|byte| u8::from_str_radix(byte, 16).ok()).collect();
    let mut addresses = Vec::new();
    let mut rest = bytes.as_slice();
    while let [t0, t1, l0, l1, tail @ ..] = rest {
        let length = usize::from(u16::from_be_bytes([*l0, *l1]));
        let Some((value, next)) = (length <= tail.len()).then(|| tail.split_at(length)) else { break };
        if [*t0, *t1] == [0, 1]
            && let Ok(octets) = <[u8; 16]>::try_from(value)
        {
            addresses.push(octets.into());
        }
        rest = next;
    }
    addresses
}

/// A dnsmasq standing in for the subnet's router: it holds the gateway address and announces
/// itself as the default router (RAs with router lifetime 1800 s and the managed flag, no
/// autonomous prefix; it answers no DHCPv6 request).
fn gateway(namespace: &str, dir: &Path) -> Service {
    must(&["ip", "-n", namespace, "addr", "add", &format!("{PREFIX}1/64"), "dev", "eth0", "nodad"]);
    let conf = dir.join("gateway.conf");
    std::fs::write(
        &conf,
        format!(
            "interface=eth0\nbind-interfaces\nport=0\ndhcp-ignore=tag:!known\nenable-ra\nra-param=eth0,0,1800\n\
             dhcp-range={PREFIX},static,64\ndhcp-leasefile={}\npid-file={}\n",
            dir.join("gateway.leases").display(),
            dir.join("gateway.pid").display()
        ),
    )
    .unwrap();
    let args: Vec<String> = [
        "netns",
        "exec",
        namespace,
        "dnsmasq",
        "--keep-in-foreground",
        "--user=root",
        "--log-facility=-",
        &format!("--conf-file={}", conf.display()),
    ]
    .map(str::to_owned)
    .to_vec();
    let mut gateway = Service::spawn_program("ip", &args);
    gateway.wait_for("router advertisement on", Duration::from_secs(10));
    gateway
}

/// A host agent for `host` in `namespace`, on `ipam up`'s data directory `data`, writing its
/// servers' files under `dhcp_dir`; started and ready.
pub(crate) fn host_agent(namespace: &str, data: &Path, dhcp_dir: &Path, host: HostId) -> Service {
    let agent_args: Vec<String> = [
        "netns",
        "exec",
        namespace,
        &crate::recovery::ipam_binary().display().to_string(),
        "--data-dir",
        &data.display().to_string(),
        "host-agent",
        "--host-id",
        &host.to_string(),
        "--dhcp-dir",
        &dhcp_dir.display().to_string(),
        "--heartbeat-interval-ms",
        "500",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut agent = Service::spawn_program("ip", &agent_args);
    agent.wait_for("ipam is ready", Duration::from_secs(30));
    agent
}

/// The first shard of `network`'s server under an agent's `dhcp_dir`: its files by name.
pub(crate) struct Shard(PathBuf);

impl Shard {
    pub(crate) fn of(dhcp_dir: &Path, network: NetworkId) -> Shard {
        Shard(dhcp_dir.join(network.to_string()).join("shard-00"))
    }

    pub(crate) fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.join(name)).unwrap_or_default()
    }

    /// Every host line dnsmasq read: the base file, then the hosts directory's additions.
    pub(crate) fn host_lines(&self) -> String {
        self.read("hosts")
            + &std::fs::read_dir(self.0.join("hosts.d"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| std::fs::read_to_string(entry.path()).unwrap_or_default())
                .collect::<String>()
    }
}

fn publish(log: &dyn EventLog, n: &mut u128, events: Vec<Event>) {
    let records: Vec<_> = events
        .into_iter()
        .map(|event| {
            *n += 1;
            let id = EventId::from_u128((0xd6c7 << 64) | *n);
            event_record(id, "dhcp-v6-test", Timestamp::from_unix_ms(1_764_000_000_000 + *n as i64), event)
        })
        .collect();
    log.append(&records).unwrap();
}

fn reserved_ip(log: &dyn EventLog, vnic: VnicId) -> Option<String> {
    let mut ip = None;
    for partition in 0..log.partition_count("ipam.reservations").unwrap() {
        for record in log.read("ipam.reservations", partition, 0, usize::MAX, Duration::ZERO).unwrap() {
            if let Ok(Event::ReservationAdded(added)) = Envelope::decode(&record.value).map(|e| e.event)
                && matches!(added.owner, Owner::Vnic { vnic_id, .. } if vnic_id == vnic)
            {
                ip = Some(added.ip.to_string());
            }
        }
    }
    ip
}

#[test]
fn a_dhcpv6_guest_gets_its_reserved_address_options_and_its_default_route_from_router_advertisements() {
    prerequisites();
    require_dhclient();
    let dir = tempfile::tempdir().unwrap();
    let mut fabric = Fabric::new();
    let host_ns = fabric.node("h6", "eth1", None);
    let gateway_ns = fabric.node("g6", "eth0", None);
    let mut gateway = gateway(&gateway_ns, dir.path());
    let gateway_link_local = link_local(&gateway_ns, "eth0");
    let guest_mac: Mac = "52:54:00:e6:00:01".parse().unwrap();
    let stranger_mac: Mac = "52:54:00:e6:00:02".parse().unwrap();
    let guest_ns = fabric.node("v6", "eth0", Some(guest_mac));
    let en_mac: Mac = "52:54:00:e6:00:03".parse().unwrap();
    let en_ns = fabric.node("e6", "eth0", Some(en_mac));
    let guest4_mac: Mac = "52:54:00:e4:00:01".parse().unwrap();
    let guest4_ns = fabric.node("v4", "eth0", Some(guest4_mac));
    let stranger_ns = fabric.node("s6", "eth0", Some(stranger_mac));

    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let mut up = Service::spawn(
        &["--data-dir", &data_arg, "--tick-interval-ms", "300", "--api-bind", "127.0.0.1:0", "up"].map(str::to_owned),
    );
    up.wait_for("ipam is ready", Duration::from_secs(60));
    let log = ipam_tests::BackendSpec::Sqlite(data.join("log")).open().unwrap();
    let dhcp_dir = dir.path().join("dhcp");
    let mut agent = host_agent(&host_ns, &data, &dhcp_dir, HOST);

    let mut n = 0;
    publish(
        &*log,
        &mut n,
        vec![
            Event::HostUpserted(HostUpserted {
                host_id: HOST,
                name: "host-v6".to_owned(),
                status: HostStatus::Up,
                networks: vec![HostNetwork { network_id: NETWORK, interface: "eth1".parse().unwrap() }],
            }),
            Event::NetworkUpserted(NetworkUpserted {
                network_id: NETWORK,
                name: "e2e-v6".to_owned(),
                ipam_enabled: true,
                servers_count: Some(1),
            }),
            Event::SubnetAdded(SubnetAdded {
                network_id: NETWORK,
                subnet_id: SUBNET,
                cidr: format!("{PREFIX}/64").parse().unwrap(),
                gateway: format!("{PREFIX}1").parse().unwrap(),
                dns_servers: vec![format!("{PREFIX}53").parse().unwrap()],
                ntp_servers: vec![format!("{PREFIX}123").parse().unwrap()],
                allocation_pools: None,
            }),
            Event::SubnetAdded(SubnetAdded {
                network_id: NETWORK,
                subnet_id: SUBNET4,
                cidr: "10.78.0.0/24".parse().unwrap(),
                gateway: "10.78.0.1".parse().unwrap(),
                dns_servers: vec!["10.78.0.53".parse().unwrap()],
                ntp_servers: vec![],
                allocation_pools: None,
            }),
        ],
    );
    let vnic4 = VnicId::from_u128(0xd6_e4);
    let vnic_en = VnicId::from_u128(0xd6_e3);
    let vnic = VnicId::from_u128(0xd6_e1);
    publish(
        &*log,
        &mut n,
        vec![Event::VnicStarted(VnicUp {
            vnic_id: vnic,
            vm_id: VmId::from_u128(0xd6_e1),
            network_id: NETWORK,
            subnet_id: Some(SUBNET),
            subnet_ids: Vec::new(),
            mac: guest_mac,
            requested_ip: None,
        })],
    );
    publish(
        &*log,
        &mut n,
        vec![Event::VnicStarted(VnicUp {
            vnic_id: vnic4,
            vm_id: VmId::from_u128(0xd6_e4),
            network_id: NETWORK,
            subnet_id: Some(SUBNET4),
            subnet_ids: Vec::new(),
            mac: guest4_mac,
            requested_ip: None,
        })],
    );
    publish(
        &*log,
        &mut n,
        vec![Event::VnicStarted(VnicUp {
            vnic_id: vnic_en,
            vm_id: VmId::from_u128(0xd6_e3),
            network_id: NETWORK,
            subnet_id: Some(SUBNET),
            subnet_ids: Vec::new(),
            mac: en_mac,
            requested_ip: None,
        })],
    );
    wait_until("the vNIC holds a reservation", Duration::from_secs(20), || reserved_ip(&*log, vnic).is_some());
    let reserved = reserved_ip(&*log, vnic).unwrap();
    wait_until("the IPv4 vNIC holds a reservation", Duration::from_secs(20), || reserved_ip(&*log, vnic4).is_some());
    let reserved4 = reserved_ip(&*log, vnic4).unwrap();
    wait_until("the DUID-EN vNIC holds a reservation", Duration::from_secs(20), || {
        reserved_ip(&*log, vnic_en).is_some()
    });
    let reserved_en = reserved_ip(&*log, vnic_en).unwrap();
    let reserved_at = Instant::now();
    let shard = Shard::of(&dhcp_dir, NETWORK);
    let read = |name: &str| shard.read(name);
    // The server serves the guest once it holds its line, runs with its own address (it restarts
    // once when that is granted), and listens.
    wait_until("the server runs with its own address and the guest's line", Duration::from_secs(30), || {
        let lines = shard.host_lines();
        lines.contains(&format!("{guest_mac},[{reserved}]"))
            && lines.contains(&format!("{guest4_mac},{reserved4}"))
            && lines.contains(&format!("{en_mac},[{reserved_en}]"))
            && read("dnsmasq.conf").contains(&format!("server address {PREFIX}"))
            && read("dnsmasq.conf").contains("server address 10.78.")
            && read("dnsmasq.log").contains("router advertisement on")
            && read("dnsmasq.log").contains("sockets bound exclusively")
    });
    let conf = read("dnsmasq.conf");
    assert!(conf.contains("enable-ra\nra-param=eth1,0,0\n"), "the server announces the subnet:\n{conf}");
    let host_link_local = link_local(&host_ns, "eth1");
    link_local(&guest_ns, "eth0");

    let bound = dhclient(&guest_ns, dir.path(), 10, None).expect("the guest got a DHCPv6 lease");
    println!("reservation → DHCPv6 lease with dhclient -6: {:?}", reserved_at.elapsed());
    assert_eq!(bound.get("new_ip6_address"), reserved, "the guest got its reserved address");
    assert_eq!(bound.get("new_dhcp6_name_servers"), format!("{PREFIX}53"), "the subnet's DNS server");
    assert_eq!(
        ntp_addresses(bound.get("new_dhcp6_ntp_server")),
        [format!("{PREFIX}123").parse::<std::net::Ipv6Addr>().unwrap()],
        "the subnet's NTP server"
    );
    // dnsmasq matched the guest by the MAC its DUID-LLT embeds.
    let duid = bound.get("new_dhcp6_client_id");
    assert!(duid.starts_with("0:1:0:1:") && duid.ends_with(":52:54:0:e6:0:1"), "a DUID-LLT of the MAC: {duid}");
    assert!(read("dnsmasq.log").contains(&format!("DHCPREPLY(eth1) {reserved} ")), "the server answered");

    // The address is on the guest's interface, its prefix is on-link, and its default route is
    // the gateway (from the gateway's RAs), never the DHCP server.
    wait_until("the guest holds its address", Duration::from_secs(5), || {
        output(&["ip", "-n", &guest_ns, "-6", "-o", "addr", "show", "dev", "eth0"]).contains(&format!("{reserved}/"))
    });
    wait_until("the guest's default route is the gateway", Duration::from_secs(20), || {
        let routes = output(&["ip", "-n", &guest_ns, "-6", "route", "show"]);
        routes.contains(&format!("default via {gateway_link_local} dev eth0 proto ra"))
            && routes.contains(&format!("{PREFIX}/64 dev eth0"))
    });
    assert!(read("dnsmasq.log").contains("RTR-ADVERT(eth1)"), "the server sent router advertisements");
    let routes = output(&["ip", "-n", &guest_ns, "-6", "route", "show"]);
    assert!(!routes.contains(&host_link_local), "the DHCP server is nobody's router:\n{routes}");

    // The guest reaches its gateway over the address it leased.
    let gateway_ip = format!("{PREFIX}1");
    must(&[
        "ip",
        "netns",
        "exec",
        &guest_ns,
        "busybox",
        "ping",
        "-6",
        "-c",
        "1",
        "-W",
        "5",
        "-I",
        &reserved,
        &gateway_ip,
    ]);

    // A guest whose DUID embeds no MAC (a DUID-EN, as systemd-networkd makes by default) is matched
    // by the MAC dnsmasq finds in its neighbour table: the guest is on the served link.
    link_local(&en_ns, "eth0");
    let duid_en = r"\000\002\000\000\253\021ipamtest";
    let bound = dhclient(&en_ns, dir.path(), 10, Some(duid_en)).expect("the DUID-EN guest got a DHCPv6 lease");
    assert_eq!(bound.get("new_ip6_address"), reserved_en, "the DUID-EN guest got its reserved address");
    assert!(bound.get("new_dhcp6_client_id").starts_with("0:2:0:0:ab:11:"), "{}", bound.get("new_dhcp6_client_id"));

    // The same server gives the IPv4 guest its address, router and DNS.
    let deadline = Instant::now() + Duration::from_secs(20);
    let lease4 = loop {
        if let Some(lease) = dhcp(&guest4_ns, dir.path()) {
            break lease;
        }
        assert!(Instant::now() < deadline, "no DHCPv4 lease for the IPv4 guest");
    };
    assert_eq!(lease4.ip, reserved4, "the IPv4 guest got its reserved address");
    assert_eq!(lease4.router, "10.78.0.1");
    assert_eq!(lease4.dns, "10.78.0.53");

    // A MAC without a reservation gets no address.
    link_local(&stranger_ns, "eth0");
    assert!(dhclient(&stranger_ns, dir.path(), 3, None).is_none(), "a MAC without a reservation got a DHCPv6 lease");

    // The host agent reports each lease with its MAC: from the DUID-LLT, from the host line of the
    // DUID-EN guest's address, from the DHCPv4 lease itself.
    let granted = |mac: Mac, ip: &str| {
        let topic = "ipam.networks";
        (0..log.partition_count(topic).unwrap()).any(|partition| {
            log.read(topic, partition, 0, usize::MAX, Duration::ZERO).unwrap().iter().any(|record| {
                matches!(Envelope::decode(&record.value).map(|e| e.event),
                    Ok(Event::LeaseGranted(lease)) if lease.mac == mac && lease.ip.to_string() == ip && lease.host_id == HOST)
            })
        })
    };
    wait_until("the three leases are reported", Duration::from_secs(10), || {
        granted(guest_mac, &reserved) && granted(en_mac, &reserved_en) && granted(guest4_mac, &reserved4)
    });

    agent.terminate();
    up.terminate();
    gateway.kill();
    drop(fabric);
}
