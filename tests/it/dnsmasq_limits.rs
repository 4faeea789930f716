//! The core's subnet rules against the real dnsmasq: every subnet `SubnetSpec::new` accepts at the
//! edges of its rules renders (through the host agent's `dnsmasq::render`) into a file that
//! `dnsmasq --test` accepts, and every subnet it refuses because dnsmasq would exit is one that
//! `dnsmasq --test` refuses when rendered anyway. A refused file would stop the network's DHCP
//! server, so this is what keeps the core's rules and dnsmasq's in step. `./test.sh` installs
//! dnsmasq (Debian's dnsmasq-base, 2.90 when written).
//!
//! What dnsmasq accepts but the core still refuses (multicast, loopback, link-local subnets, an
//! unspecified DNS server...) is policy, tested in `ipam-core`'s `net.rs`.

use std::net::IpAddr;
use std::process::Command;

use ipam_core::dhcp_plan::{DhcpHost, NetworkDhcpConfig, SubnetDhcpConfig};
use ipam_core::{Mac, NetworkId, RejectionCode, SubnetId, SubnetSpec};
use ipam_host_agent::dnsmasq::render;

/// A subnet as the engine sends it: CIDR, gateway, DNS and NTP servers.
struct Case {
    cidr: &'static str,
    gateway: &'static str,
    dns: &'static [&'static str],
    ntp: &'static [&'static str],
}

const fn case(
    cidr: &'static str,
    gateway: &'static str,
    dns: &'static [&'static str],
    ntp: &'static [&'static str],
) -> Case {
    Case { cidr, gateway, dns, ntp }
}

fn ips(texts: &[&str]) -> Vec<IpAddr> {
    texts.iter().map(|text| text.parse().unwrap()).collect()
}

fn spec(case: &Case) -> Result<SubnetSpec, ipam_core::Rejection> {
    SubnetSpec::new(case.cidr.parse().unwrap(), case.gateway.parse().unwrap(), ips(case.dns), ips(case.ntp), None)
}

/// The configuration a host agent would render for the subnet, with one host and the server's own
/// address (the first addresses of its default pool), bypassing the core's checks.
fn config(case: &Case) -> NetworkDhcpConfig {
    let cidr: ipam_core::Cidr = case.cidr.parse().unwrap();
    let nth = |n: u128| match cidr.network() {
        IpAddr::V4(ip) => IpAddr::V4((u32::from(ip) + n as u32).into()),
        IpAddr::V6(ip) => IpAddr::V6((u128::from(ip) + n).into()),
    };
    NetworkDhcpConfig {
        network_id: NetworkId::from_u128(1),
        epoch: 1,
        interface: "lo".parse().unwrap(),
        subnets: vec![SubnetDhcpConfig {
            subnet_id: SubnetId::from_u128(11),
            cidr,
            router: case.gateway.parse().unwrap(),
            dns_servers: ips(case.dns),
            ntp_servers: ips(case.ntp),
            lease_secs: 3600,
            server_address: Some(nth(2)),
            server_address_refused: None,
            hosts: vec![DhcpHost { mac: Mac::from_octets([0x52, 0x54, 0, 0, 0, 1]).unwrap(), ip: nth(3) }],
        }],
        conflict_probe: true,
    }
}

/// `dnsmasq --test` on the rendered file: `Ok` or dnsmasq's complaint.
fn dnsmasq_test(config: &NetworkDhcpConfig) -> Result<(), String> {
    let text = render(config).map_err(|e| format!("render refused it: {e}"))?;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dnsmasq.conf");
    std::fs::write(&path, &text).unwrap();
    let output = Command::new("dnsmasq")
        .arg("--test")
        .arg(format!("--conf-file={}", path.display()))
        .output()
        .unwrap_or_else(|e| panic!("cannot run dnsmasq ({e}): run ./test.sh, which installs dnsmasq-base"));
    let said = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if output.status.success() { Ok(()) } else { Err(format!("{said}\n{text}")) }
}

#[test]
fn dnsmasq_accepts_every_edge_subnet_the_core_accepts() {
    let accepted = [
        case("10.0.0.0/8", "10.0.0.1", &["10.0.0.53"], &["10.0.0.123"]),
        case("192.0.2.0/30", "192.0.2.1", &[], &[]),
        case("100.64.0.0/10", "100.64.0.1", &["169.254.169.253"], &["169.254.169.123"]),
        case("223.255.255.0/24", "223.255.255.1", &["1.1.1.1", "8.8.8.8"], &[]),
        case("2001:db8::/64", "2001:db8::1", &["2001:db8::53"], &["2001:db8::123"]),
        case("2001:db8:1::/65", "2001:db8:1::1", &["fe80::53"], &["ff05::101"]),
        case("2001:db8:2::/112", "2001:db8:2::1", &[], &["fe80::123", "2001:db8::123"]),
        case("2001:db8:3::/126", "2001:db8:3::1", &[], &[]),
        case("fd00::/64", "fd00::1", &["fd00::53"], &[]),
        case("0:0:0:1::/64", "0:0:0:1::1", &[], &[]),
    ];
    for case in &accepted {
        assert!(spec(case).is_ok(), "the core refuses {}: {:?}", case.cidr, spec(case).err());
        if let Err(said) = dnsmasq_test(&config(case)) {
            panic!("the core accepts {} but dnsmasq refuses it: {said}", case.cidr);
        }
    }
}

#[test]
fn dnsmasq_refuses_what_the_core_refuses_for_its_sake() {
    let refused = [
        (case("2001:db8::/63", "2001:db8::1", &[], &[]), RejectionCode::SubnetTooLarge),
        (case("2001:db8:90::/48", "2001:db8:90::1", &[], &[]), RejectionCode::SubnetTooLarge),
        (case("10.0.0.0/24", "10.0.0.1", &["2001:db8::53"], &[]), RejectionCode::AddressFamilyMismatch),
        (case("10.0.0.0/24", "10.0.0.1", &[], &["2001:db8::123"]), RejectionCode::AddressFamilyMismatch),
        (case("2001:db8::/64", "2001:db8::1", &["192.0.2.53"], &[]), RejectionCode::AddressFamilyMismatch),
    ];
    for (case, code) in &refused {
        assert_eq!(spec(case).map(|_| ()).map_err(|r| r.code), Err(*code), "{}", case.cidr);
        assert!(
            dnsmasq_test(&config(case)).is_err(),
            "dnsmasq accepts {} with {:?} {:?}",
            case.cidr,
            case.dns,
            case.ntp
        );
    }
}
