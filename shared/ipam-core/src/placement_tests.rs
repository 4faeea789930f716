use crate::event::HostNetwork;
use crate::testing::SplitMix64;
use crate::time::Timestamp;
use expect_test::{Expect, expect};

use super::*;

// ---- Given/when/then -------------------------------------------------------------------------

const INPUT_ID: EventId = EventId::from_u128(0xC0FFEE);

fn envelope(index: u128, event: Event) -> Envelope {
    Envelope {
        id: EventId::from_u128(index),
        source: "test".to_owned(),
        time: Timestamp::from_unix_ms(0),
        subject: None,
        event,
    }
}

fn given(history: &[Event]) -> Placement {
    let mut placement = Placement::new(PlacementConfig::default());
    for (i, event) in history.iter().enumerate() {
        placement.apply(&envelope(i as u128 + 1, event.clone()));
        assert_invariants(&placement, &format!("after history event {i}"));
    }
    placement
}

/// Applies `history`, then `input`, and compares the outputs of `input` with `expect`.
fn check(history: &[Event], input: Event, expect: Expect) -> Placement {
    let mut placement = given(history);
    let outputs = placement.apply(&envelope(INPUT_ID.0.as_u128(), input));
    assert_invariants(&placement, "after the input");
    expect.assert_eq(&render(&outputs, INPUT_ID));
    placement
}

/// Every invariant placement keeps ([`StateMachine::check`]), after every input, so a dirty set
/// that misses a network shows up here.
fn assert_invariants(placement: &Placement, context: &str) {
    if let Err(violation) = placement.check() {
        panic!("{context}: {violation}");
    }
}

fn render(outputs: &[Event], cause: EventId) -> String {
    let reason = |value: serde_json::Value| value.as_str().unwrap_or("?").to_owned();
    let mut text = String::new();
    for output in outputs {
        let line = match output {
            Event::DhcpServerAssigned(e) => {
                assert_eq!(e.cause, cause);
                let why = reason(serde_json::to_value(e.reason).unwrap_or_default());
                format!("assigned {} {} epoch={} {} {why}", name(e.network_id), short(e.host_id), e.epoch, e.interface)
            }
            Event::DhcpServerUnassigned(e) => {
                assert_eq!(e.cause, cause);
                let why = reason(serde_json::to_value(e.reason).unwrap_or_default());
                format!("unassigned {} {} epoch={} {why}", name(e.network_id), short(e.host_id), e.epoch)
            }
            other => format!("unexpected {}", other.type_name()),
        };
        text.push_str(&line);
        text.push('\n');
    }
    text
}

fn name(network: NetworkId) -> String {
    format!("n{}", network.0.as_u128())
}

fn short(host: HostId) -> String {
    format!("h{}", host.0.as_u128())
}

// ---- Inputs ----------------------------------------------------------------------------------

fn n(i: u128) -> NetworkId {
    NetworkId::from_u128(i)
}

fn h(i: u128) -> HostId {
    HostId::from_u128(i)
}

fn host_on(i: u128, status: HostStatus, attachments: &[(u128, &str)]) -> Event {
    Event::HostUpserted(HostUpserted {
        host_id: h(i),
        name: format!("host-{i}"),
        status,
        networks: attachments
            .iter()
            .map(|&(network, interface)| HostNetwork {
                network_id: n(network),
                interface: interface.parse().expect("test interface names are valid"),
            })
            .collect(),
    })
}

fn host(i: u128, status: HostStatus, networks: &[u128]) -> Event {
    let attachments: Vec<(u128, &str)> = networks.iter().map(|&network| (network, "eth0")).collect();
    host_on(i, status, &attachments)
}

fn up(i: u128, networks: &[u128]) -> Event {
    host(i, HostStatus::Up, networks)
}

fn host_removed(i: u128) -> Event {
    Event::HostRemoved(HostRemoved { host_id: h(i) })
}

fn heartbeat(i: u128) -> Event {
    Event::HostHeartbeat(HostHeartbeat { host_id: h(i), serving: Vec::new() })
}

fn tick(now_ms: i64) -> Event {
    Event::ClockTicked(ClockTicked { now: Timestamp::from_unix_ms(now_ms) })
}

fn network(i: u128, ipam_enabled: bool, servers_count: Option<u8>) -> Event {
    Event::NetworkUpserted(NetworkUpserted { network_id: n(i), name: format!("net-{i}"), ipam_enabled, servers_count })
}

fn enabled(i: u128) -> Event {
    network(i, true, None)
}

fn network_removed(i: u128) -> Event {
    Event::NetworkRemoved(NetworkRemoved { network_id: n(i) })
}

fn subnet(network: u128, subnet: u128) -> Event {
    Event::SubnetActivated(SubnetActivated {
        network_id: n(network),
        subnet_id: SubnetId::from_u128(subnet),
        cidr: "10.0.0.0/24".parse().expect("a valid CIDR"),
        gateway: "10.0.0.1".parse().expect("a valid IP"),
        dns_servers: Vec::new(),
        ntp_servers: Vec::new(),
        allocation_pools: Vec::new(),
        cause: EventId::from_u128(0),
    })
}

fn subnet_gone(network: u128, subnet: u128) -> Event {
    Event::SubnetDeactivated(SubnetDeactivated {
        network_id: n(network),
        subnet_id: SubnetId::from_u128(subnet),
        cause: EventId::from_u128(0),
    })
}

/// Three up hosts attached to n1 (default count 2), served by h1 (epoch 1) and h2 (epoch 2).
fn served() -> Vec<Event> {
    vec![tick(0), up(1, &[1]), up(2, &[1]), up(3, &[1]), enabled(1), subnet(1, 1)]
}

fn with(history: Vec<Event>, more: impl IntoIterator<Item = Event>) -> Vec<Event> {
    history.into_iter().chain(more).collect()
}

// ---- Networks --------------------------------------------------------------------------------

#[test]
fn enabled_network_with_subnet_gets_count_servers() {
    check(
        &[up(1, &[1]), up(2, &[1]), up(3, &[1]), enabled(1)],
        subnet(1, 1),
        expect![[r#"
        assigned n1 h1 epoch=1 eth0 placed
        assigned n1 h2 epoch=2 eth0 placed
    "#]],
    );
}

#[test]
fn network_gets_no_more_servers_than_eligible_hosts() {
    check(&[up(1, &[1]), host(2, HostStatus::Down, &[1]), up(3, &[2])], network(1, true, Some(3)), expect![[r#""#]]);
    check(
        &[up(1, &[1]), up(2, &[1]), network(1, true, Some(3))],
        subnet(1, 1),
        expect![[r#"
        assigned n1 h1 epoch=1 eth0 placed
        assigned n1 h2 epoch=2 eth0 placed
    "#]],
    );
}

#[test]
fn subnet_before_network_upsert_waits_for_ipam_enabled() {
    check(&[up(1, &[1]), subnet(1, 1)], network(1, false, None), expect![[r#""#]]);
    check(
        &[up(1, &[1]), subnet(1, 1)],
        enabled(1),
        expect![[r#"
        assigned n1 h1 epoch=1 eth0 placed
    "#]],
    );
}

#[test]
fn least_loaded_host_is_chosen() {
    // h1 already serves n1, so n2's one server goes to h2 although h1 has the smaller id.
    check(
        &[up(1, &[1, 2]), up(2, &[2]), network(1, true, Some(1)), subnet(1, 1), network(2, true, Some(1))],
        subnet(2, 2),
        expect![[r#"
            assigned n2 h2 epoch=1 eth0 placed
        "#]],
    );
}

#[test]
fn equally_loaded_hosts_go_by_smallest_id() {
    check(
        &[up(3, &[1]), up(2, &[1]), up(4, &[1]), network(1, true, Some(2))],
        subnet(1, 1),
        expect![[r#"
        assigned n1 h2 epoch=1 eth0 placed
        assigned n1 h3 epoch=2 eth0 placed
    "#]],
    );
}

#[test]
fn raising_the_count_adds_servers() {
    check(
        &served(),
        network(1, true, Some(3)),
        expect![[r#"
        assigned n1 h3 epoch=3 eth0 placed
    "#]],
    );
    check(
        &served(),
        network(1, true, Some(9)),
        expect![[r#"
        assigned n1 h3 epoch=3 eth0 placed
    "#]],
    );
}

#[test]
fn lowering_the_count_removes_the_newest_servers() {
    check(
        &served(),
        network(1, true, Some(1)),
        expect![[r#"
        unassigned n1 h2 epoch=2 servers_count_reduced
    "#]],
    );
    check(
        &with(served(), [network(1, true, Some(3))]),
        network(1, true, Some(1)),
        expect![[r#"
        unassigned n1 h2 epoch=2 servers_count_reduced
        unassigned n1 h3 epoch=3 servers_count_reduced
    "#]],
    );
    check(
        &served(),
        network(1, true, Some(0)),
        expect![[r#"
        unassigned n1 h1 epoch=1 servers_count_reduced
        unassigned n1 h2 epoch=2 servers_count_reduced
    "#]],
    );
}

#[test]
fn disabling_ipam_unassigns_every_server() {
    check(
        &served(),
        network(1, false, None),
        expect![[r#"
        unassigned n1 h1 epoch=1 ipam_disabled
        unassigned n1 h2 epoch=2 ipam_disabled
    "#]],
    );
    check(
        &with(served(), [network(1, false, None)]),
        enabled(1),
        expect![[r#"
        assigned n1 h1 epoch=3 eth0 placed
        assigned n1 h2 epoch=4 eth0 placed
    "#]],
    );
}

#[test]
fn deactivating_the_last_subnet_unassigns_every_server() {
    let history = with(served(), [subnet(1, 2)]);
    check(&history, subnet_gone(1, 1), expect![[r#""#]]);
    check(
        &with(history, [subnet_gone(1, 1)]),
        subnet_gone(1, 2),
        expect![[r#"
        unassigned n1 h1 epoch=1 no_subnet
        unassigned n1 h2 epoch=2 no_subnet
    "#]],
    );
}

#[test]
fn removed_network_is_unserved_and_recreated_network_keeps_counting_epochs() {
    check(
        &served(),
        network_removed(1),
        expect![[r#"
        unassigned n1 h1 epoch=1 network_removed
        unassigned n1 h2 epoch=2 network_removed
    "#]],
    );
    let placement = check(
        &with(served(), [network_removed(1), enabled(1)]),
        subnet(1, 2),
        expect![[r#"
        assigned n1 h1 epoch=3 eth0 placed
        assigned n1 h2 epoch=4 eth0 placed
    "#]],
    );
    assert_eq!(placement.epoch(n(1)), 4);
}

#[test]
fn removed_network_keeps_only_its_epoch() {
    let placement = given(&with(served(), [network_removed(1)]));
    assert_eq!(placement.network_ids(), Vec::<NetworkId>::new());
    assert_eq!(placement.epoch(n(1)), 2);
    assert_eq!(placement.load(h(1)), 0);
    check(&with(served(), [network_removed(1)]), subnet(1, 1), expect![[r#""#]]);
}

// ---- Hosts -----------------------------------------------------------------------------------

#[test]
fn host_down_is_replaced() {
    check(
        &served(),
        host(1, HostStatus::Down, &[1]),
        expect![[r#"
        unassigned n1 h1 epoch=1 host_down
        assigned n1 h3 epoch=3 eth0 replacement
    "#]],
    );
}

#[test]
fn host_in_maintenance_is_replaced() {
    check(
        &served(),
        host(2, HostStatus::Maintenance, &[1]),
        expect![[r#"
        unassigned n1 h2 epoch=2 host_maintenance
        assigned n1 h3 epoch=3 eth0 replacement
    "#]],
    );
}

#[test]
fn removed_host_is_replaced() {
    check(
        &served(),
        host_removed(1),
        expect![[r#"
        unassigned n1 h1 epoch=1 host_removed
        assigned n1 h3 epoch=3 eth0 replacement
    "#]],
    );
}

#[test]
fn host_that_detaches_the_network_is_replaced() {
    check(
        &served(),
        up(1, &[]),
        expect![[r#"
        unassigned n1 h1 epoch=1 network_detached
        assigned n1 h3 epoch=3 eth0 replacement
    "#]],
    );
}

#[test]
fn network_moved_to_another_interface_gets_a_new_assignment() {
    check(
        &served(),
        host_on(1, HostStatus::Up, &[(1, "eth1")]),
        expect![[r#"
            unassigned n1 h1 epoch=1 network_detached
            assigned n1 h1 epoch=3 eth1 replacement
        "#]],
    );
}

#[test]
fn lost_server_without_an_eligible_host_left_is_only_unassigned() {
    check(
        &[up(1, &[1]), up(2, &[1]), enabled(1), subnet(1, 1)],
        host(2, HostStatus::Down, &[1]),
        expect![[r#"
        unassigned n1 h2 epoch=2 host_down
    "#]],
    );
}

#[test]
fn host_that_comes_up_fills_an_under_served_network() {
    check(
        &[host(1, HostStatus::Down, &[1]), up(2, &[1]), enabled(1), subnet(1, 1)],
        up(1, &[1]),
        expect![[r#"
        assigned n1 h1 epoch=2 eth0 placed
    "#]],
    );
}

#[test]
fn host_that_comes_up_does_not_take_a_healthy_server() {
    check(&[up(2, &[1]), up(3, &[1]), enabled(1), subnet(1, 1)], up(1, &[1]), expect![[r#""#]]);
}

#[test]
fn network_without_eligible_host_gets_a_server_when_one_appears() {
    let history = [host(1, HostStatus::Down, &[1]), up(2, &[2]), enabled(1)];
    check(&history, subnet(1, 1), expect![[r#""#]]);
    check(
        &with(history.to_vec(), [subnet(1, 1)]),
        up(3, &[1]),
        expect![[r#"
        assigned n1 h3 epoch=1 eth0 placed
    "#]],
    );
}

#[test]
fn repeated_inputs_change_nothing() {
    check(&served(), up(1, &[1]), expect![[r#""#]]);
    check(&served(), enabled(1), expect![[r#""#]]);
    check(&served(), subnet(1, 1), expect![[r#""#]]);
    check(&served(), heartbeat(1), expect![[r#""#]]);
    check(&served(), tick(0), expect![[r#""#]]);
}

#[test]
fn unrelated_and_unknown_inputs_are_ignored() {
    use crate::event::{DhcpServerState, DhcpServerStatus};
    let status = Event::DhcpServerStatus(DhcpServerStatus {
        host_id: h(1),
        network_id: n(1),
        epoch: 1,
        state: DhcpServerState::Failed,
        detail: String::new(),
    });
    check(&served(), status, expect![[r#""#]]);
    check(&served(), heartbeat(9), expect![[r#""#]]);
    check(&served(), host_removed(9), expect![[r#""#]]);
    check(&served(), network_removed(9), expect![[r#""#]]);
    check(&served(), subnet_gone(9, 1), expect![[r#""#]]);
}

// ---- Heartbeats ------------------------------------------------------------------------------

/// h2 and h3 heartbeat at 10 s; h1 last showed itself when it was upserted at 0.
fn h1_goes_quiet() -> Vec<Event> {
    with(served(), [tick(5_000), tick(10_000), heartbeat(2), heartbeat(3), tick(15_000)])
}

#[test]
fn host_is_not_lost_at_exactly_the_timeout() {
    let placement =
        check(&with(served(), [tick(5_000), tick(10_000), heartbeat(2), heartbeat(3)]), tick(15_000), expect![[r#""#]]);
    assert!(!placement.is_lost(h(1)));
}

#[test]
fn host_that_misses_its_heartbeat_is_replaced_within_timeout_plus_one_tick() {
    let placement = check(
        &h1_goes_quiet(),
        tick(20_000),
        expect![[r#"
        unassigned n1 h1 epoch=1 heartbeat_lost
        assigned n1 h3 epoch=3 eth0 replacement
    "#]],
    );
    assert!(placement.is_lost(h(1)));
}

#[test]
fn hosts_seen_before_the_first_tick_get_a_grace_period_from_it() {
    let history = [up(1, &[1]), up(2, &[1]), enabled(1), subnet(1, 1)];
    check(&history, tick(1_000_000), expect![[r#""#]]);
    check(
        &with(history.to_vec(), [tick(1_000_000)]),
        tick(1_015_001),
        expect![[r#"
        unassigned n1 h1 epoch=1 heartbeat_lost
        unassigned n1 h2 epoch=2 heartbeat_lost
    "#]],
    );
}

#[test]
fn ticks_never_move_time_backwards() {
    let placement = given(&with(served(), [tick(10_000), tick(3_000), heartbeat(2), heartbeat(3)]));
    assert_eq!(placement.now_ms(), Some(10_000));
    check(
        &with(served(), [tick(10_000), tick(3_000), heartbeat(2), heartbeat(3)]),
        tick(20_000),
        expect![[r#"
        unassigned n1 h1 epoch=1 heartbeat_lost
        assigned n1 h3 epoch=3 eth0 replacement
    "#]],
    );
}

#[test]
fn revived_host_fills_an_under_served_network_but_takes_no_healthy_server() {
    // n1 wants one server, n2 two; only h1 and h2 are attached to them.
    let history = vec![
        tick(0),
        up(1, &[1, 2]),
        up(2, &[1, 2]),
        network(1, true, Some(1)),
        subnet(1, 1),
        network(2, true, Some(2)),
        subnet(2, 2),
        tick(10_000),
        heartbeat(2),
    ];
    check(
        &history,
        tick(20_000),
        expect![[r#"
        unassigned n1 h1 epoch=1 heartbeat_lost
        assigned n1 h2 epoch=2 eth0 replacement
        unassigned n2 h1 epoch=2 heartbeat_lost
    "#]],
    );
    check(
        &with(history, [tick(20_000)]),
        heartbeat(1),
        expect![[r#"
        assigned n2 h1 epoch=3 eth0 placed
    "#]],
    );
}

#[test]
fn lost_host_upserted_as_up_stays_lost_until_it_heartbeats() {
    let history = with(h1_goes_quiet(), [tick(20_000)]);
    check(&history, up(1, &[1]), expect![[r#""#]]);
    check(
        &with(history, [up(1, &[1]), host(3, HostStatus::Down, &[1])]),
        heartbeat(1),
        expect![[r#"
        assigned n1 h1 epoch=4 eth0 placed
    "#]],
    );
}

// ---- Snapshots -------------------------------------------------------------------------------

#[test]
fn restored_machine_has_equal_bytes_and_behaves_identically() {
    let history = with(h1_goes_quiet(), [tick(20_000), network(2, true, Some(1)), up(4, &[2]), subnet(2, 1)]);
    let mut live = given(&history);
    let bytes = live.snapshot();
    let mut restored = Placement::restore(&PlacementConfig::default(), &bytes).expect("a fresh snapshot restores");
    assert_eq!(restored.snapshot(), bytes);
    assert_invariants(&restored, "after restore");

    let mut transcript = String::new();
    for (i, input) in
        [heartbeat(1), host(2, HostStatus::Down, &[1]), tick(40_000), heartbeat(1)].into_iter().enumerate()
    {
        let input = envelope(100 + i as u128, input);
        let outputs = render(&live.apply(&input), input.id);
        assert_eq!(outputs, render(&restored.apply(&input), input.id));
        assert_eq!(live.snapshot(), restored.snapshot());
        transcript.push_str(&outputs);
    }
    expect![[r#"
        unassigned n1 h2 epoch=2 host_down
        assigned n1 h1 epoch=4 eth0 replacement
        unassigned n1 h1 epoch=4 heartbeat_lost
        unassigned n1 h3 epoch=3 heartbeat_lost
        unassigned n2 h4 epoch=1 heartbeat_lost
        assigned n1 h1 epoch=5 eth0 placed
    "#]]
    .assert_eq(&transcript);
}

#[test]
fn snapshot_leaves_the_config_out() {
    let live = given(&served());
    let config = PlacementConfig { heartbeat_timeout_ms: 1, default_servers_count: 5 };
    let restored = Placement::restore(&config, &live.snapshot()).expect("a fresh snapshot restores");
    assert_eq!(restored.config(), config);
    assert_eq!(restored.snapshot(), live.snapshot());
}

#[test]
fn unreadable_snapshots_are_errors() {
    let error = Placement::restore(&PlacementConfig::default(), b"{not json").map(|_| ()).expect_err("garbage");
    assert!(matches!(error, SnapshotError::Unreadable(_)), "{error}");

    let bytes = String::from_utf8(given(&served()).snapshot()).expect("snapshots are UTF-8");
    let future = bytes.replacen("\"version\":1", "\"version\":2", 1);
    let error = Placement::restore(&PlacementConfig::default(), future.as_bytes()).map(|_| ()).expect_err("v2");
    expect!["the snapshot has format version 2; this build reads version 1"].assert_eq(&error.to_string());
}

// ---- Retries ---------------------------------------------------------------------------------

/// `served()` (ids 1 to 6), then n1 disabled (id 50, both servers go) and enabled again (id 51,
/// two new servers): a retry of id 50 would take them away again.
fn disabled_and_enabled() -> Placement {
    let mut placement = given(&served());
    for (id, event) in [(50, network(1, false, None)), (51, enabled(1))] {
        assert_ne!(render(&placement.apply(&envelope(id, event)), EventId::from_u128(id)), "");
    }
    placement
}

/// Applies `input` with id `id` and checks that it yields nothing and leaves the state, window
/// included, byte for byte as it was.
fn assert_ignored(placement: &mut Placement, id: u128, input: Event) {
    let before = placement.snapshot();
    let outputs = placement.apply(&envelope(id, input));
    assert_eq!(render(&outputs, EventId::from_u128(id)), "", "a retry has no output");
    assert_eq!(String::from_utf8(before).unwrap(), String::from_utf8(placement.snapshot()).unwrap());
}

#[test]
fn retried_input_has_no_second_effect() {
    let mut placement = disabled_and_enabled();
    assert_ignored(&mut placement, 50, network(1, false, None));
    assert_eq!(placement.servers(n(1)).len(), 2);
}

#[test]
fn second_event_with_the_id_of_another_has_no_effect() {
    let mut placement = disabled_and_enabled();
    assert_ignored(&mut placement, 50, host_removed(1));
    assert_ignored(&mut placement, 4, tick(1_000_000));
    assert_eq!(placement.now_ms(), Some(0));
}

#[test]
fn retry_is_recognised_after_a_restart_from_a_snapshot() {
    let live = disabled_and_enabled();
    let mut restored = Placement::restore(&PlacementConfig::default(), &live.snapshot()).unwrap();
    assert_eq!(restored.recent_inputs(), live.recent_inputs());
    assert_ignored(&mut restored, 50, network(1, false, None));
}

#[test]
fn window_forgets_the_oldest_id_after_as_many_newer_inputs_as_it_holds() {
    let mut placement = Placement::with_input_window(PlacementConfig::default(), 3);
    for (id, event) in [(1, tick(0)), (2, up(1, &[1])), (3, enabled(1)), (4, subnet(1, 1))] {
        placement.apply(&envelope(id, event));
    }
    let held = |placement: &Placement| placement.recent_inputs().iter().map(|id| id.0.as_u128()).collect::<Vec<_>>();
    assert_eq!(held(&placement), [2, 3, 4]);
    // Id 3 is still held; id 1 has three newer ids and is forgotten, so a tick with its id is
    // applied again.
    assert_ignored(&mut placement, 3, tick(5_000));
    placement.apply(&envelope(1, tick(5_000)));
    assert_eq!(placement.now_ms(), Some(5_000));
    assert_eq!(held(&placement), [3, 4, 1]);
}

#[test]
fn production_machine_remembers_the_production_window() {
    assert_eq!(given(&served()).recent_inputs().capacity(), INPUT_WINDOW);
    let small = Placement::with_input_window(PlacementConfig::default(), 3);
    let restored = Placement::restore(&PlacementConfig::default(), &small.snapshot()).unwrap();
    assert_eq!(restored.recent_inputs().capacity(), INPUT_WINDOW);
}

#[test]
fn snapshot_from_before_the_window_restores_with_an_empty_one() {
    let live = given(&served());
    let mut old: serde_json::Value = serde_json::from_slice(&live.snapshot()).unwrap();
    old.as_object_mut().unwrap().remove("recent_inputs").expect("the window is in the snapshot");
    let restored = Placement::restore(&PlacementConfig::default(), old.to_string().as_bytes()).unwrap();
    assert!(restored.recent_inputs().is_empty());
    assert_eq!(restored.servers(n(1)), live.servers(n(1)));
}

// ---- Randomized ------------------------------------------------------------------------------

fn random_input(rng: &mut SplitMix64, now_ms: &mut i64) -> Event {
    let host_id = u128::from(rng.below(6)) + 1;
    let network_id = u128::from(rng.below(5)) + 1;
    match rng.below(12) {
        0..=2 => {
            let status =
                [HostStatus::Up, HostStatus::Up, HostStatus::Down, HostStatus::Maintenance][rng.below(4) as usize];
            let mut attachments: Vec<(u128, &str)> = Vec::new();
            for network in 1..=5 {
                if rng.below(2) == 0 {
                    attachments.push((network, if rng.below(4) == 0 { "eth1" } else { "eth0" }));
                }
            }
            host_on(host_id, status, &attachments)
        }
        3 => host_removed(host_id),
        4 | 5 => heartbeat(host_id),
        6 | 7 => {
            *now_ms += rng.below(12_000) as i64;
            tick(*now_ms)
        }
        8 => {
            let count = match rng.below(5) {
                0 => None,
                c => Some(c as u8 - 1),
            };
            network(network_id, rng.below(4) != 0, count)
        }
        9 => network_removed(network_id),
        10 => subnet(network_id, u128::from(rng.below(2))),
        _ => subnet_gone(network_id, u128::from(rng.below(2))),
    }
}

#[test]
fn random_histories_keep_every_network_served_without_moving_healthy_servers() {
    for seed in 0..64 {
        let mut rng = SplitMix64(seed);
        let mut placement = Placement::new(PlacementConfig::default());
        let mut now_ms = 0;
        for step in 0..400u128 {
            let input = envelope(step + 1, random_input(&mut rng, &mut now_ms));
            let before: Vec<(NetworkId, Vec<(HostId, u64)>)> =
                placement.network_ids().into_iter().map(|network| (network, placement.servers(network))).collect();
            let last_epochs: BTreeMap<NetworkId, u64> = placement.state.epochs.clone();
            let outputs = placement.apply(&input);
            let context = format!("seed {seed}, step {step}, input {:?}", input.event);
            assert_invariants(&placement, &context);

            for output in &outputs {
                match output {
                    Event::DhcpServerAssigned(e) => {
                        assert!(e.epoch > last_epochs.get(&e.network_id).copied().unwrap_or(0), "{context}");
                        assert_eq!(e.cause, input.id, "{context}");
                    }
                    Event::DhcpServerUnassigned(e) => {
                        // No rebalancing: a server only goes when its host stopped being eligible, its
                        // network wants fewer, or it listens on an interface the network left.
                        let healthy = placement.is_eligible(e.host_id, e.network_id)
                            && placement.wanted_servers(e.network_id) > 0;
                        if healthy {
                            assert!(
                                matches!(
                                    e.reason,
                                    UnassignReason::ServersCountReduced | UnassignReason::NetworkDetached
                                ),
                                "{context}: healthy server taken away: {e:?}"
                            );
                        }
                        assert_eq!(e.cause, input.id, "{context}");
                    }
                    other => panic!("{context}: unexpected output {other:?}"),
                }
            }
            // Every server that disappeared was unassigned, with the epoch it was assigned with.
            for (network, servers) in before {
                for (host, epoch) in servers {
                    if placement.servers(network).contains(&(host, epoch)) {
                        continue;
                    }
                    let unassigned = outputs.iter().any(|output| {
                        matches!(output, Event::DhcpServerUnassigned(e)
                            if e.network_id == network && e.host_id == host && e.epoch == epoch)
                    });
                    assert!(unassigned, "{context}: {} {} vanished silently", name(network), short(host));
                }
            }

            if step % 50 == 49 {
                let bytes = placement.snapshot();
                let restored = Placement::restore(&placement.config(), &bytes).expect("a fresh snapshot restores");
                assert_eq!(restored.snapshot(), bytes, "{context}");
                placement = restored;
            }
        }
    }
}

#[test]
fn the_invariant_check_sees_an_index_that_drifted_from_the_state() {
    let placement = given(&[up(1, &[1]), up(2, &[1]), enabled(1), subnet(1, 1)]);
    assert_eq!(placement.check(), Ok(()));

    let mut drifted = placement.clone();
    let slot = drifted.index.slot_of[&h(1)];
    drifted.index.slots[slot].serving.clear();
    let violation = drifted.check().unwrap_err().to_string();
    assert!(violation.contains("index"), "{violation}");

    let mut unserved = placement.clone();
    unserved.state.networks.get_mut(&n(1)).unwrap().servers.clear();
    let violation = unserved.check().unwrap_err().to_string();
    assert!(violation.contains("expected 2"), "{violation}");
}
