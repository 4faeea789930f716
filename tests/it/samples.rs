//! One sample event of every type of the contract, for schema checks and round trips.

use ipam_core::event::*;
use ipam_core::{EventId, HostId, NetworkId, SubnetId, Timestamp, VmId, VnicId};

fn at(n: u128, event: Event) -> Envelope {
    Envelope {
        id: EventId::from_u128(0x5a00 + n),
        source: "ovirt-engine".to_owned(),
        time: Timestamp::from_unix_ms(1_764_460_800_000 + n as i64),
        subject: Some(event.key()),
        event,
    }
}

/// A sample of every event type, in table order.
pub fn every_type() -> Vec<Envelope> {
    let network_id = NetworkId::from_u128(1);
    let subnet_id = SubnetId::from_u128(2);
    let host_id = HostId::from_u128(3);
    let cause = EventId::from_u128(4);
    let mac = "52:54:00:12:34:56".parse().unwrap();
    let interface: ipam_core::InterfaceName = "br-vm".parse().unwrap();
    let up = VnicUp {
        vnic_id: VnicId::from_u128(5),
        vm_id: VmId::from_u128(6),
        network_id,
        subnet_id: Some(subnet_id),
        subnet_ids: Vec::new(),
        mac,
        requested_ip: Some("10.0.0.10".parse().unwrap()),
    };
    let down = VnicDown { vnic_id: VnicId::from_u128(5), network_id };
    let owner = Owner::Vnic { vnic_id: VnicId::from_u128(5), vm_id: VmId::from_u128(6) };
    let pools = vec![ipam_core::IpRange { start: "10.0.0.10".parse().unwrap(), end: "10.0.0.200".parse().unwrap() }];
    let lease = LeaseObserved {
        network_id,
        host_id,
        mac,
        ip: "10.0.0.10".parse().unwrap(),
        observed_at: Timestamp::from_unix_ms(1_764_460_801_000),
        expires_at: Some(Timestamp::from_unix_ms(1_764_464_401_000)),
        hostname: Some("vm-1".to_owned()),
        client_id: Some("01525400123456".to_owned()),
    };
    let events = vec![
        Event::NetworkUpserted(NetworkUpserted {
            network_id,
            name: "vm-net".to_owned(),
            ipam_enabled: true,
            servers_count: Some(2),
        }),
        Event::NetworkRemoved(NetworkRemoved { network_id }),
        Event::SubnetAdded(SubnetAdded {
            network_id,
            subnet_id,
            cidr: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            dns_servers: vec!["10.0.0.53".parse().unwrap()],
            ntp_servers: vec!["10.0.0.123".parse().unwrap()],
            allocation_pools: Some(pools.clone()),
        }),
        Event::SubnetRemoved(SubnetRemoved { network_id, subnet_id }),
        Event::VnicStarted(up.clone()),
        // A dual-stack vNIC: an IPv4 and an IPv6 subnet, its fixed IP in the IPv4 one.
        Event::VnicPlugged(VnicUp {
            subnet_id: None,
            subnet_ids: vec![subnet_id, SubnetId::from_u128(7)],
            ..up.clone()
        }),
        Event::VnicLinked(VnicUp { subnet_id: None, requested_ip: None, ..up }),
        Event::VnicStopped(down.clone()),
        Event::VnicUnplugged(down.clone()),
        Event::VnicUnlinked(down),
        Event::DhcpPortRequested(DhcpPortRequested { network_id, subnet_id, host_id, mac }),
        Event::DhcpPortReleased(DhcpPortReleased { network_id, subnet_id, host_id, mac }),
        Event::LeaseGranted(lease.clone()),
        Event::LeaseRenewed(lease.clone()),
        Event::LeaseReleased(LeaseObserved { expires_at: None, ..lease.clone() }),
        Event::LeaseExpired(LeaseObserved { expires_at: None, hostname: None, client_id: None, ..lease }),
        Event::IpConflictDetected(IpConflictDetected {
            network_id,
            subnet_id,
            ip: "10.0.0.12".parse().unwrap(),
            host_id,
            answered_by: "52:54:00:99:99:99".parse().unwrap(),
            reserved_for: Some(mac),
            probe: ConflictProbe::Arp,
        }),
        Event::IpConflictCleared(IpConflictCleared { network_id, ip: "10.0.0.12".parse().unwrap() }),
        Event::NetworkPolicySet(NetworkPolicySet {
            network_id,
            policy: NetworkPolicy {
                release_quarantine_s: Some(600),
                conflict_probe: Some(true),
                unleased_after_s: Some(120),
                utilization_thresholds: Some(vec![75, 90, 100]),
            },
        }),
        Event::PartitionClockTicked(PartitionClockTicked {
            now: Timestamp::from_unix_ms(1_764_460_802_000),
            partition: 3,
        }),
        Event::HostUpserted(HostUpserted {
            host_id,
            name: "host-a".to_owned(),
            status: HostStatus::Up,
            networks: vec![HostNetwork { network_id, interface: interface.clone() }],
        }),
        Event::HostRemoved(HostRemoved { host_id }),
        Event::HostHeartbeat(HostHeartbeat { host_id, serving: vec![ServedNetwork { network_id, epoch: 3 }] }),
        Event::DhcpServerStatus(DhcpServerStatus {
            host_id,
            network_id,
            epoch: 3,
            state: DhcpServerState::Running,
            detail: "dnsmasq pid 4242".to_owned(),
        }),
        Event::ClockTicked(ClockTicked { now: Timestamp::from_unix_ms(1_764_460_800_000) }),
        Event::DhcpServerSynced(DhcpServerSynced { host_id, network_id, epoch: 3, reservations_offset: 1234 }),
        Event::SubnetActivated(SubnetActivated {
            network_id,
            subnet_id,
            cidr: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            dns_servers: vec![],
            ntp_servers: vec![],
            allocation_pools: pools,
            cause,
        }),
        Event::SubnetDeactivated(SubnetDeactivated { network_id, subnet_id, cause }),
        Event::ReservationAdded(ReservationAdded {
            network_id,
            subnet_id,
            owner,
            mac,
            ip: "10.0.0.10".parse().unwrap(),
            cause,
        }),
        Event::ReservationRemoved(ReservationRemoved {
            network_id,
            subnet_id,
            owner: Owner::DhcpServer { host_id },
            mac,
            ip: "10.0.0.11".parse().unwrap(),
            reason: ReleaseReason::PortReleased,
            cause,
        }),
        Event::RequestRejected(RequestRejected {
            network_id,
            request_type: "ipam.vnic.started.v1".to_owned(),
            code: ipam_core::RejectionCode::SubnetExhausted,
            message: "no free address".to_owned(),
            cause,
            vnic_id: Some(VnicId::from_u128(0x51)),
            mac: Some("52:54:00:00:00:51".parse().unwrap()),
            subnet_id: Some(SubnetId::from_u128(0x52)),
            host_id: None,
        }),
        Event::NetworkPolicyApplied(NetworkPolicyApplied { network_id, policy: NetworkPolicy::default(), cause }),
        Event::VnicUnleased(VnicUnleased {
            network_id,
            subnet_id,
            vnic_id: VnicId::from_u128(5),
            vm_id: VmId::from_u128(6),
            mac,
            ip: "10.0.0.10".parse().unwrap(),
            reserved_at: Timestamp::from_unix_ms(1_764_460_800_000),
            now: Timestamp::from_unix_ms(1_764_461_100_000),
            cause,
        }),
        Event::LeaseConflict(LeaseConflict {
            network_id,
            host_id,
            mac,
            leased_ip: "10.0.0.99".parse().unwrap(),
            reserved_ip: Some("10.0.0.10".parse().unwrap()),
            vnic_id: Some(VnicId::from_u128(5)),
            kind: LeaseConflictKind::WrongAddress,
            cause,
        }),
        Event::VnicLeaseChanged(VnicLeaseChanged {
            network_id,
            subnet_id,
            vnic_id: VnicId::from_u128(5),
            vm_id: VmId::from_u128(6),
            mac,
            ip: "10.0.0.10".parse().unwrap(),
            host_id,
            change: LeaseChange::Granted,
            observed_at: Timestamp::from_unix_ms(1_764_460_801_000),
            expires_at: Some(Timestamp::from_unix_ms(1_764_464_401_000)),
            cause,
        }),
        Event::SubnetUtilizationCrossed(SubnetUtilizationCrossed {
            network_id,
            subnet_id,
            threshold: 80,
            rising: true,
            used: 153,
            size: 191,
            cause,
        }),
        Event::DhcpServerAssigned(DhcpServerAssigned {
            network_id,
            host_id,
            interface,
            epoch: 4,
            reason: AssignReason::Replacement,
            cause,
        }),
        Event::DhcpServerUnassigned(DhcpServerUnassigned {
            network_id,
            host_id,
            epoch: 3,
            reason: UnassignReason::HeartbeatLost,
            cause,
        }),
    ];
    events.into_iter().enumerate().map(|(n, event)| at(n as u128, event)).collect()
}
