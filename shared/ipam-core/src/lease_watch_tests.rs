//! Given/when/then tests of the lease watch: a history of reservations, releases, lease
//! observations and ticks, one more step, the expected outputs. After every step the watch's
//! invariants are checked against the reservations the test holds, and a snapshot restores to an
//! equal watch.

use expect_test::{Expect, expect};

use super::*;
use crate::testing::render;

const NET: NetworkId = NetworkId::from_u128(1);
const S1: SubnetId = SubnetId::from_u128(11);
const HOST_A: HostId = HostId::from_u128(31);
const HOST_B: HostId = HostId::from_u128(32);
/// Short enough that tests say when in whole seconds.
const AFTER_S: u32 = 60;

#[derive(Clone)]
enum Step {
    /// vNIC n reserves 10.0.0.n with MAC …:n, at the last tick's time.
    Reserve(u8),
    Release(u8),
    /// A lease change for MAC …:n of 10.0.0.m on a host.
    Lease(LeaseChange, u8, u8, HostId),
    /// The network's clock at this many seconds.
    Tick(i64),
}
use Step::*;

fn mac(n: u8) -> Mac {
    Mac::from_octets([0x52, 0x54, 0, 0, 0, n]).unwrap()
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, n])
}

fn reserved(n: u8) -> Reserved {
    Reserved { subnet_id: S1, vm_id: VmId::from_u128(100 + u128::from(n)), mac: mac(n), ip: ip(n) }
}

fn lease(mac_of: u8, ip_of: u8, host_id: HostId) -> LeaseObserved {
    LeaseObserved {
        network_id: NET,
        host_id,
        mac: mac(mac_of),
        ip: ip(ip_of),
        observed_at: Timestamp::from_unix_ms(5_000),
        expires_at: Some(Timestamp::from_unix_ms(3_605_000)),
        hostname: None,
        client_id: None,
    }
}

/// The watch and the reservations a network would hold beside it.
#[derive(Default)]
struct World {
    watch: LeaseWatch,
    holdings: BTreeMap<VnicId, Reserved>,
    now: Option<Timestamp>,
}

impl World {
    fn step(&mut self, n: u128, step: Step) -> Vec<Event> {
        let cause = EventId::from_u128(0xe000 + n);
        let outputs = match step {
            Reserve(v) => {
                let vnic_id = VnicId::from_u128(u128::from(v));
                self.holdings.insert(vnic_id, reserved(v));
                self.watch.reserved(vnic_id, reserved(v), self.now);
                Vec::new()
            }
            Release(v) => {
                let vnic_id = VnicId::from_u128(u128::from(v));
                self.holdings.remove(&vnic_id);
                self.watch.released(vnic_id, IpFamily::of(reserved(v).ip));
                Vec::new()
            }
            Lease(change, m, i, host) => self.watch.observe(change, &lease(m, i, host), cause).into_iter().collect(),
            Tick(seconds) => {
                let now = Timestamp::from_unix_ms(seconds * 1000);
                self.now = Some(now);
                self.watch.tick(NET, now, AFTER_S, cause)
            }
        };
        let holdings = self.holdings.iter().map(|(id, r)| (*id, *r));
        self.watch.check(NET, holdings).expect("the watch's invariants hold");
        let holdings = self.holdings.iter().map(|(id, r)| (*id, *r));
        let restored = LeaseWatch::from_snapshot(self.watch.to_snapshot(), holdings).expect("the snapshot restores");
        assert_eq!(restored, self.watch, "a snapshot restores the same watch");
        outputs
    }
}

fn check(history: Vec<Step>, step: Step, expected: Expect) {
    let mut world = World::default();
    for (n, earlier) in history.into_iter().enumerate() {
        world.step(n as u128, earlier);
    }
    let outputs = world.step(999, step);
    expected.assert_eq(&render(&outputs));
}

// ---- Leases that match -----------------------------------------------------------------------

#[test]
fn a_granted_lease_of_the_reserved_address_marks_the_vnic_leased() {
    check(
        vec![Tick(0), Reserve(5)],
        Lease(LeaseChange::Granted, 5, 5, HOST_A),
        expect![[r#"
            vnic.lease_changed {change:granted,expires_at:1970-01-01T01:00:05Z,host_id:#31,ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1,observed_at:1970-01-01T00:00:05Z,subnet_id:#11,vm_id:#105,vnic_id:#5}
        "#]],
    );
}

#[test]
fn a_renewal_is_echoed_with_its_new_expiry() {
    check(
        vec![Tick(0), Reserve(5), Lease(LeaseChange::Granted, 5, 5, HOST_A)],
        Lease(LeaseChange::Renewed, 5, 5, HOST_A),
        expect![[r#"
            vnic.lease_changed {change:renewed,expires_at:1970-01-01T01:00:05Z,host_id:#31,ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1,observed_at:1970-01-01T00:00:05Z,subnet_id:#11,vm_id:#105,vnic_id:#5}
        "#]],
    );
}

#[test]
fn the_end_of_the_held_lease_is_echoed_without_expiry() {
    check(
        vec![Tick(0), Reserve(5), Lease(LeaseChange::Granted, 5, 5, HOST_A)],
        Lease(LeaseChange::Expired, 5, 5, HOST_A),
        expect![[r#"
            vnic.lease_changed {change:expired,host_id:#31,ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1,observed_at:1970-01-01T00:00:05Z,subnet_id:#11,vm_id:#105,vnic_id:#5}
        "#]],
    );
}

#[test]
fn the_end_of_a_lease_on_another_host_than_the_holder_says_nothing() {
    check(
        vec![Tick(0), Reserve(5), Lease(LeaseChange::Granted, 5, 5, HOST_A)],
        Lease(LeaseChange::Released, 5, 5, HOST_B),
        expect![[""]],
    );
}

#[test]
fn the_end_of_a_lease_never_held_says_nothing() {
    check(vec![Tick(0), Reserve(5)], Lease(LeaseChange::Released, 5, 5, HOST_A), expect![[""]]);
}

// ---- Conflicts -------------------------------------------------------------------------------

#[test]
fn a_lease_of_another_address_than_the_reserved_one_is_a_wrong_address_conflict() {
    check(
        vec![Tick(0), Reserve(5)],
        Lease(LeaseChange::Granted, 5, 99, HOST_A),
        expect![[r#"
            lease.conflict {host_id:#31,kind:wrong_address,leased_ip:10.0.0.99,mac:52:54:00:00:00:05,network_id:#1,reserved_ip:10.0.0.5,vnic_id:#5}
        "#]],
    );
}

#[test]
fn a_lease_of_a_mac_without_reservation_is_a_no_reservation_conflict() {
    check(
        vec![Tick(0), Reserve(5)],
        Lease(LeaseChange::Granted, 7, 5, HOST_A),
        expect![[r#"
            lease.conflict {host_id:#31,kind:no_reservation,leased_ip:10.0.0.5,mac:52:54:00:00:00:07,network_id:#1}
        "#]],
    );
}

#[test]
fn a_renewal_of_a_reported_conflict_is_not_reported_again() {
    check(
        vec![Tick(0), Lease(LeaseChange::Granted, 7, 5, HOST_A)],
        Lease(LeaseChange::Renewed, 7, 5, HOST_A),
        expect![[""]],
    );
}

#[test]
fn a_conflicting_lease_that_ended_is_reported_again_when_granted_again() {
    check(
        vec![Tick(0), Lease(LeaseChange::Granted, 7, 5, HOST_A), Lease(LeaseChange::Expired, 7, 5, HOST_A)],
        Lease(LeaseChange::Granted, 7, 5, HOST_A),
        expect![[r#"
            lease.conflict {host_id:#31,kind:no_reservation,leased_ip:10.0.0.5,mac:52:54:00:00:00:07,network_id:#1}
        "#]],
    );
}

#[test]
fn a_conflicting_lease_that_becomes_the_reservation_is_echoed_as_the_vnics() {
    check(
        vec![Tick(0), Lease(LeaseChange::Granted, 5, 5, HOST_A), Reserve(5)],
        Lease(LeaseChange::Renewed, 5, 5, HOST_A),
        expect![[r#"
            vnic.lease_changed {change:renewed,expires_at:1970-01-01T01:00:05Z,host_id:#31,ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1,observed_at:1970-01-01T00:00:05Z,subnet_id:#11,vm_id:#105,vnic_id:#5}
        "#]],
    );
}

#[test]
fn the_lease_of_a_released_vnic_is_a_conflict() {
    check(
        vec![Tick(0), Reserve(5), Lease(LeaseChange::Granted, 5, 5, HOST_A), Release(5)],
        Lease(LeaseChange::Renewed, 5, 5, HOST_A),
        expect![[r#"
            lease.conflict {host_id:#31,kind:no_reservation,leased_ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1}
        "#]],
    );
}

// ---- Unleased vNICs --------------------------------------------------------------------------

#[test]
fn a_reservation_without_lease_is_reported_once_its_time_is_up() {
    check(
        vec![Tick(0), Reserve(5), Tick(59)],
        Tick(60),
        expect![[r#"
            vnic.unleased {ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1,now:1970-01-01T00:01:00Z,reserved_at:1970-01-01T00:00:00Z,subnet_id:#11,vm_id:#105,vnic_id:#5}
        "#]],
    );
}

#[test]
fn a_reservation_is_not_reported_before_its_time() {
    check(vec![Tick(0), Reserve(5)], Tick(59), expect![[""]]);
}

#[test]
fn an_unleased_reservation_is_reported_only_once() {
    check(vec![Tick(0), Reserve(5), Tick(60)], Tick(600), expect![[""]]);
}

#[test]
fn a_leased_vnic_is_not_reported() {
    check(vec![Tick(0), Reserve(5), Lease(LeaseChange::Granted, 5, 5, HOST_A)], Tick(600), expect![[""]]);
}

#[test]
fn a_vnic_whose_lease_ended_is_reported_when_its_time_is_up() {
    check(
        vec![
            Tick(0),
            Reserve(5),
            Lease(LeaseChange::Granted, 5, 5, HOST_A),
            Lease(LeaseChange::Released, 5, 5, HOST_A),
        ],
        Tick(60),
        expect![[r#"
            vnic.unleased {ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1,now:1970-01-01T00:01:00Z,reserved_at:1970-01-01T00:00:00Z,subnet_id:#11,vm_id:#105,vnic_id:#5}
        "#]],
    );
}

#[test]
fn a_lease_of_a_wrong_address_does_not_count_as_leased() {
    check(
        vec![Tick(0), Reserve(5), Lease(LeaseChange::Granted, 5, 99, HOST_A)],
        Tick(60),
        expect![[r#"
            vnic.unleased {ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1,now:1970-01-01T00:01:00Z,reserved_at:1970-01-01T00:00:00Z,subnet_id:#11,vm_id:#105,vnic_id:#5}
        "#]],
    );
}

#[test]
fn a_released_vnic_is_not_reported() {
    check(vec![Tick(0), Reserve(5), Release(5)], Tick(600), expect![[""]]);
}

#[test]
fn a_reservation_before_the_first_tick_is_dated_by_the_next_tick() {
    check(
        vec![Reserve(5), Tick(100), Tick(159)],
        Tick(160),
        expect![[r#"
            vnic.unleased {ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1,now:1970-01-01T00:02:40Z,reserved_at:1970-01-01T00:01:40Z,subnet_id:#11,vm_id:#105,vnic_id:#5}
        "#]],
    );
}

#[test]
fn reservations_are_reported_oldest_first_and_only_those_whose_time_is_up() {
    check(
        vec![Tick(0), Reserve(7), Tick(10), Reserve(5), Tick(20), Reserve(6)],
        Tick(75),
        expect![[r#"
            vnic.unleased {ip:10.0.0.7,mac:52:54:00:00:00:07,network_id:#1,now:1970-01-01T00:01:15Z,reserved_at:1970-01-01T00:00:00Z,subnet_id:#11,vm_id:#107,vnic_id:#7}
            vnic.unleased {ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1,now:1970-01-01T00:01:15Z,reserved_at:1970-01-01T00:00:10Z,subnet_id:#11,vm_id:#105,vnic_id:#5}
        "#]],
    );
}

#[test]
fn a_new_reservation_of_a_reported_vnic_is_watched_afresh() {
    check(
        vec![Tick(0), Reserve(5), Tick(60), Release(5), Reserve(5), Tick(100)],
        Tick(160),
        expect![[r#"
            vnic.unleased {ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1,now:1970-01-01T00:02:40Z,reserved_at:1970-01-01T00:01:00Z,subnet_id:#11,vm_id:#105,vnic_id:#5}
        "#]],
    );
}

// ---- Snapshots and invariants ----------------------------------------------------------------

#[test]
fn a_snapshot_without_the_watch_restores_every_reservation_undated() {
    let holdings = [(VnicId::from_u128(5), reserved(5))];
    let mut watch = LeaseWatch::from_snapshot(LeaseWatchSnapshot::default(), holdings.into_iter()).unwrap();
    let outputs = watch.tick(NET, Timestamp::from_unix_ms(0), AFTER_S, EventId::from_u128(1));
    assert!(outputs.is_empty(), "dated by this tick, not reported by it");
    let outputs = watch.tick(NET, Timestamp::from_unix_ms(60_000), AFTER_S, EventId::from_u128(2));
    assert_eq!(outputs.len(), 1, "reported a whole interval later: {outputs:?}");
}

#[test]
fn a_snapshot_naming_a_vnic_without_reservation_is_refused() {
    let mut watch = LeaseWatch::new();
    watch.reserved(VnicId::from_u128(5), reserved(5), None);
    let error = LeaseWatch::from_snapshot(watch.to_snapshot(), std::iter::empty()).unwrap_err();
    assert!(error.contains("holds no reservation"), "{error}");
}

#[test]
fn the_check_finds_a_reservation_the_watch_does_not_follow() {
    let watch = LeaseWatch::new();
    let error = watch.check(NET, [(VnicId::from_u128(5), reserved(5))].into_iter()).unwrap_err();
    assert!(error.0.contains("vNIC"), "{error}");
    let mut watch = LeaseWatch::new();
    watch.reserved(VnicId::from_u128(5), reserved(5), None);
    let error = watch.check(NET, std::iter::empty()).unwrap_err();
    assert!(error.0.contains("follows 1 vNICs, 0 hold"), "{error}");
}

// ---- Through the allocator -------------------------------------------------------------------

mod through_the_allocator {
    use expect_test::{Expect, expect};

    use super::{HOST_A, NET, S1, lease, mac};
    use crate::StateMachine;
    use crate::allocator::Allocator;
    use crate::event::{
        Event, NetworkPolicy, NetworkPolicySet, NetworkUpserted, PartitionClockTicked, SubnetAdded, VnicDown, VnicUp,
    };
    use crate::ids::{VmId, VnicId};
    use crate::testing::{envelope, render};
    use crate::time::Timestamp;

    fn network() -> Event {
        Event::NetworkUpserted(NetworkUpserted {
            network_id: NET,
            name: "n".to_owned(),
            ipam_enabled: true,
            servers_count: None,
        })
    }

    fn subnet() -> Event {
        Event::SubnetAdded(SubnetAdded {
            network_id: NET,
            subnet_id: S1,
            cidr: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            dns_servers: vec![],
            ntp_servers: vec![],
            allocation_pools: None,
        })
    }

    fn tick(seconds: i64) -> Event {
        Event::PartitionClockTicked(PartitionClockTicked { now: Timestamp::from_unix_ms(seconds * 1000), partition: 0 })
    }

    /// vNIC `n` with MAC …:n asks for 10.0.0.n.
    fn start(n: u8) -> Event {
        Event::VnicStarted(VnicUp {
            vnic_id: VnicId::from_u128(u128::from(n)),
            vm_id: VmId::from_u128(100 + u128::from(n)),
            network_id: NET,
            subnet_id: Some(S1),
            subnet_ids: Vec::new(),
            mac: mac(n),
            requested_ip: Some(format!("10.0.0.{n}").parse().unwrap()),
        })
    }

    fn stop(n: u8) -> Event {
        Event::VnicStopped(VnicDown { vnic_id: VnicId::from_u128(u128::from(n)), network_id: NET })
    }

    fn granted(m: u8, i: u8) -> Event {
        Event::LeaseGranted(lease(m, i, HOST_A))
    }

    fn unleased_after(seconds: u32) -> Event {
        let policy = NetworkPolicy { unleased_after_s: Some(seconds), ..NetworkPolicy::default() };
        Event::NetworkPolicySet(NetworkPolicySet { network_id: NET, policy })
    }

    /// Applies `history`, then `input`; checks the invariants after each and that a snapshot taken
    /// before the input restores a machine that answers the input alike.
    fn check(history: Vec<Event>, input: Event, expected: Expect) {
        let mut allocator = Allocator::new();
        for (n, event) in history.into_iter().enumerate() {
            allocator.apply(&envelope(n as u128, event));
            allocator.check().expect("the invariants hold");
        }
        let mut restored = Allocator::restore(&(), &allocator.snapshot()).expect("the snapshot restores");
        assert_eq!(restored, allocator, "a snapshot restores the same allocator, lease watch included");
        let input = envelope(999, input);
        let outputs = allocator.apply(&input);
        allocator.check().expect("the invariants hold after the input");
        assert_eq!(restored.apply(&input), outputs, "the restored allocator answers alike");
        expected.assert_eq(&render(&outputs));
    }

    #[test]
    fn a_lease_of_the_reserved_address_is_echoed() {
        check(
            vec![network(), subnet(), tick(0), start(5)],
            granted(5, 5),
            expect![[r#"
                vnic.lease_changed {change:granted,expires_at:1970-01-01T01:00:05Z,host_id:#31,ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1,observed_at:1970-01-01T00:00:05Z,subnet_id:#11,vm_id:#105,vnic_id:#5}
            "#]],
        );
    }

    #[test]
    fn a_lease_of_another_address_is_a_conflict() {
        check(
            vec![network(), subnet(), tick(0), start(5)],
            granted(5, 6),
            expect![[r#"
                lease.conflict {host_id:#31,kind:wrong_address,leased_ip:10.0.0.6,mac:52:54:00:00:00:05,network_id:#1,reserved_ip:10.0.0.5,vnic_id:#5}
            "#]],
        );
    }

    #[test]
    fn a_lease_on_a_network_ipam_does_not_know_says_nothing() {
        check(vec![], granted(5, 5), expect![[""]]);
    }

    #[test]
    fn a_vnic_without_lease_is_reported_after_the_default_five_minutes() {
        check(
            vec![network(), subnet(), tick(0), start(5), tick(299)],
            tick(300),
            expect![[r#"
            vnic.unleased {ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1,now:1970-01-01T00:05:00Z,reserved_at:1970-01-01T00:00:00Z,subnet_id:#11,vm_id:#105,vnic_id:#5}
        "#]],
        );
    }

    #[test]
    fn the_policy_sets_when_an_unleased_vnic_is_reported() {
        check(
            vec![network(), subnet(), unleased_after(30), tick(0), start(5)],
            tick(30),
            expect![[r#"
            vnic.unleased {ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1,now:1970-01-01T00:00:30Z,reserved_at:1970-01-01T00:00:00Z,subnet_id:#11,vm_id:#105,vnic_id:#5}
        "#]],
        );
    }

    #[test]
    fn a_leased_vnic_is_not_reported_and_a_stopped_one_neither() {
        check(vec![network(), subnet(), tick(0), start(5), granted(5, 5), start(6), stop(6)], tick(300), expect![[""]]);
    }
}

// ---- Dual-stack vNICs ------------------------------------------------------------------------

#[test]
fn a_dual_stack_vnic_is_leased_and_reported_per_family() {
    const S6: SubnetId = SubnetId::from_u128(16);
    let vnic_id = VnicId::from_u128(5);
    let v6 = Reserved { subnet_id: S6, ip: "2001:db8::5".parse().unwrap(), ..reserved(5) };
    let holdings = |watch_v4: bool| {
        let mut held = vec![(vnic_id, v6)];
        if watch_v4 {
            held.insert(0, (vnic_id, reserved(5)));
        }
        held
    };
    let mut watch = LeaseWatch::new();
    watch.tick(NET, Timestamp::from_unix_ms(0), AFTER_S, EventId::from_u128(1));
    watch.reserved(vnic_id, reserved(5), Some(Timestamp::from_unix_ms(0)));
    watch.reserved(vnic_id, v6, Some(Timestamp::from_unix_ms(0)));
    watch.check(NET, holdings(true).into_iter()).unwrap();

    let v6_lease = LeaseObserved { ip: v6.ip, ..lease(5, 5, HOST_A) };
    let leased = watch.observe(LeaseChange::Granted, &v6_lease, EventId::from_u128(2));
    let unleased = watch.tick(NET, Timestamp::from_unix_ms(61_000), AFTER_S, EventId::from_u128(3));
    expect![[r#"
        vnic.lease_changed {change:granted,expires_at:1970-01-01T01:00:05Z,host_id:#31,ip:2001:db8::5,mac:52:54:00:00:00:05,network_id:#1,observed_at:1970-01-01T00:00:05Z,subnet_id:#16,vm_id:#105,vnic_id:#5}
        vnic.unleased {ip:10.0.0.5,mac:52:54:00:00:00:05,network_id:#1,now:1970-01-01T00:01:01Z,reserved_at:1970-01-01T00:00:00Z,subnet_id:#11,vm_id:#105,vnic_id:#5}
    "#]]
    .assert_eq(&render(&leased.into_iter().chain(unleased).collect::<Vec<_>>()));
    assert_eq!(watch.leased_on(vnic_id, IpFamily::Ipv6), Some(HOST_A));
    assert_eq!(watch.leased_on(vnic_id, IpFamily::Ipv4), None);
    let restored = LeaseWatch::from_snapshot(watch.to_snapshot(), holdings(true).into_iter()).unwrap();
    assert_eq!(restored, watch);

    // The IPv4 address released, the IPv6 lease is still the vNIC's.
    watch.released(vnic_id, IpFamily::Ipv4);
    watch.check(NET, holdings(false).into_iter()).unwrap();
    let renewed = watch.observe(LeaseChange::Renewed, &v6_lease, EventId::from_u128(4));
    assert!(matches!(renewed, Some(Event::VnicLeaseChanged(_))), "{renewed:?}");
}

#[test]
fn a_snapshot_entry_without_a_family_is_its_vnic_s_one_reservation() {
    let v6 = Reserved { ip: "2001:db8::5".parse().unwrap(), ..reserved(5) };
    let old = serde_json::json!({"vnics": [{"vnic_id": VnicId::from_u128(5), "leased_on": HOST_A}]});
    let snapshot: LeaseWatchSnapshot = serde_json::from_value(old).unwrap();
    let watch = LeaseWatch::from_snapshot(snapshot, [(VnicId::from_u128(5), v6)].into_iter()).unwrap();
    assert_eq!(watch.leased_on(VnicId::from_u128(5), IpFamily::Ipv6), Some(HOST_A));
}
