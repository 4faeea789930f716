//! Lease truth, the pure part: what a dnsmasq lease file says, and which lease events tell the
//! difference between it and what the agent already reported.
//!
//! The lease file, not dnsmasq's `--dhcp-script` hook, is the source: a hook fires once, while
//! dnsmasq runs, and what it said is lost when the agent is away, while the file is dnsmasq's own
//! database (it reloads it when it restarts) and is still there when a restarted agent looks. So
//! the agent compares the files with the set of leases it has reported (kept in its state
//! directory, see [`crate::lease_reporter`]), and what differs is the event:
//! - a (MAC, IP) not reported before: `granted`;
//! - a reported one whose expiry moved: `renewed`;
//! - a reported one past its expiry (gone from the file or still in it, as when dnsmasq is down):
//!   `expired`;
//! - a reported one gone from the file before its expiry: `released`, once it is missing from two
//!   reads in a row (dnsmasq rewrites its file in place, truncating first, so one read may catch it
//!   half written).
//!
//! Nothing here reads a file or a clock: the reporter passes the text and the time in.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipam_core::{Mac, NetworkId};
use serde::{Deserialize, Serialize};

/// A lease's identity within a host's servers: the network, and the client's MAC and address.
pub(crate) type LeaseKey = (NetworkId, Mac, IpAddr);

/// What a lease file says of one lease, beside its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    /// When it ends, in Unix seconds; `None` for an infinite lease (dnsmasq writes 0).
    pub(crate) expires_s: Option<i64>,
    pub(crate) hostname: Option<String>,
    /// The DHCPv4 client identifier or the DHCPv6 client's DUID, hex without separators.
    pub(crate) client_id: Option<String>,
}

impl Lease {
    /// Whether the lease still holds at `now_s`: dnsmasq ends a lease at its expiry second.
    fn live(&self, now_s: i64) -> bool {
        self.expires_s.is_none_or(|expires| expires > now_s)
    }
}

/// The leases of one dnsmasq lease file, and how many lines named no usable lease.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LeaseFile {
    pub(crate) leases: Vec<(Mac, IpAddr, Lease)>,
    /// DHCPv6 leases whose DUID embeds no MAC (a DUID-EN, say): dnsmasq matched the client to its
    /// host line by the MAC of its neighbour table, so the MAC is the one the shard's host lines
    /// give the address (see [`host_addresses`]).
    pub(crate) by_address: Vec<(IpAddr, Lease)>,
    /// Lines skipped: not an Ethernet MAC, a temporary (IA_TA) address, or a line that does not
    /// parse.
    pub(crate) skipped: usize,
}

/// Reads a dnsmasq lease file.
///
/// IPv4 lines are `expiry MAC IP hostname client-id`; after the `duid SERVER-DUID` line come the
/// DHCPv6 lines, `expiry IAID IP hostname client-DUID` (a temporary address's IAID is written
/// `T<iaid>`). A DHCPv6 lease names its client by DUID only: its MAC is the one the DUID embeds
/// (DUID-LLT or DUID-LL, what Linux clients send by default), else it is found by address
/// ([`LeaseFile::by_address`]). `*` stands
/// for an absent hostname or client id. A last line without its newline is a write in progress
/// (dnsmasq truncates the file, then writes it) and is left for the next read.
pub(crate) fn parse_lease_file(text: &str) -> LeaseFile {
    let mut file = LeaseFile::default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    for line in complete.lines().filter(|line| !line.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() == Some(&"duid") {
            continue;
        }
        match parse_line(&fields) {
            Some((Some(mac), ip, lease)) => file.leases.push((mac, ip, lease)),
            Some((None, ip, lease)) => file.by_address.push((ip, lease)),
            None => file.skipped += 1,
        }
    }
    file
}

fn parse_line(fields: &[&str]) -> Option<(Option<Mac>, IpAddr, Lease)> {
    let [expiry, hardware, ip, hostname, client_id] = fields else { return None };
    let expires_s: i64 = expiry.parse().ok()?;
    let ip: IpAddr = ip.trim_matches(['[', ']']).parse().ok()?;
    let mac = match ip {
        IpAddr::V4(_) => Some(hardware.parse::<Mac>().ok()?),
        // The IAID is a number; a temporary address (`T<iaid>`) is never one IPAM reserved.
        IpAddr::V6(_) if hardware.bytes().all(|b| b.is_ascii_digit()) => duid_mac(client_id),
        IpAddr::V6(_) => return None,
    };
    let optional = |field: &str| (field != "*").then(|| field.to_owned());
    let lease = Lease {
        expires_s: (expires_s != 0).then_some(expires_s),
        hostname: optional(hostname),
        client_id: optional(client_id).map(|id| id.replace(':', "")),
    };
    Some((mac, ip, lease))
}

/// Which MAC each address is served to, from a shard's host lines in the order dnsmasq read them
/// (its base file, then its hosts directory's files by name): `MAC,IP`, `MAC,[IPv6]`,
/// `MAC,IP,[IPv6]` (a dual-stack host) or `MAC,ignore`, the newest line of a MAC replacing its
/// older ones.
pub(crate) fn host_addresses<'a>(texts: impl IntoIterator<Item = &'a str>) -> BTreeMap<IpAddr, Mac> {
    let mut by_mac: BTreeMap<Mac, Vec<IpAddr>> = BTreeMap::new();
    for line in texts.into_iter().flat_map(str::lines) {
        let Some((mac, values)) = line.trim().split_once(',') else { continue };
        let Ok(mac) = mac.parse::<Mac>() else { continue };
        let addresses = values.split(',').filter_map(|value| value.trim_matches(['[', ']']).parse().ok()).collect();
        by_mac.insert(mac, addresses);
    }
    by_mac.into_iter().flat_map(|(mac, addresses)| addresses.into_iter().map(move |ip| (ip, mac))).collect()
}

/// The Ethernet MAC a DUID embeds, written as dnsmasq writes it (`00:01:00:01:…`): DUID-LLT (type
/// 1: hardware type, time, MAC) or DUID-LL (type 3: hardware type, MAC), hardware type 1.
pub(crate) fn duid_mac(duid: &str) -> Option<Mac> {
    let bytes: Vec<u8> = duid.split(':').map(|byte| u8::from_str_radix(byte, 16).ok()).collect::<Option<_>>()?;
    let mac = match bytes.as_slice() {
        [0, 1, 0, 1, _, _, _, _, mac @ ..] | [0, 3, 0, 1, mac @ ..] => mac,
        _ => return None,
    };
    let octets: [u8; 6] = mac.try_into().ok()?;
    Mac::from_octets(octets).ok()
}

/// What happened to a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseChange {
    Granted,
    Renewed,
    Released,
    Expired,
}

/// One lease event to report: for `granted` and `renewed` the lease as it is now, for `released`
/// and `expired` as it was last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseEvent {
    pub(crate) key: LeaseKey,
    pub(crate) change: LeaseChange,
    pub(crate) lease: Lease,
}

/// The outcome of [`diff`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Diff {
    /// The events to report, in key order.
    pub(crate) events: Vec<LeaseEvent>,
    /// Reported leases missing from the files before their expiry for the first time: released if
    /// they are still missing at the next read (pass them back as `missing_before`).
    pub(crate) missing: BTreeSet<LeaseKey>,
}

/// The events that turn `reported` into what the files say now (`current`, every lease of every
/// file of the host's servers) at `now_s`. `missing_before` is the previous call's
/// [`Diff::missing`].
pub(crate) fn diff(
    reported: &BTreeMap<LeaseKey, Lease>,
    current: &BTreeMap<LeaseKey, Lease>,
    now_s: i64,
    missing_before: &BTreeSet<LeaseKey>,
) -> Diff {
    let mut out = Diff::default();
    for (key, lease) in current.iter().filter(|(_, lease)| lease.live(now_s)) {
        let change = match reported.get(key) {
            None => LeaseChange::Granted,
            Some(before) if before.expires_s != lease.expires_s => LeaseChange::Renewed,
            Some(_) => continue,
        };
        out.events.push(LeaseEvent { key: *key, change, lease: lease.clone() });
    }
    for (key, before) in reported {
        if current.get(key).is_some_and(|lease| lease.live(now_s)) {
            continue;
        }
        let change = if current.contains_key(key) || !before.live(now_s) {
            LeaseChange::Expired
        } else if missing_before.contains(key) {
            LeaseChange::Released
        } else {
            out.missing.insert(*key);
            continue;
        };
        out.events.push(LeaseEvent { key: *key, change, lease: before.clone() });
    }
    out.events.sort_by_key(|event| event.key);
    out
}

/// `reported` once `events` are reported.
pub(crate) fn apply(reported: &mut BTreeMap<LeaseKey, Lease>, events: &[LeaseEvent]) {
    for event in events {
        match event.change {
            LeaseChange::Granted | LeaseChange::Renewed => {
                reported.insert(event.key, event.lease.clone());
            }
            LeaseChange::Released | LeaseChange::Expired => {
                reported.remove(&event.key);
            }
        }
    }
}

/// The earliest expiry among `reported`: until then, files that did not change say nothing new.
pub(crate) fn next_expiry_s(reported: &BTreeMap<LeaseKey, Lease>) -> Option<i64> {
    reported.values().filter_map(|lease| lease.expires_s).min()
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    const N1: NetworkId = NetworkId::from_u128(1);

    fn key(mac: &str, ip: &str) -> LeaseKey {
        (N1, mac.parse().unwrap(), ip.parse().unwrap())
    }

    fn lease(expires_s: i64) -> Lease {
        Lease { expires_s: Some(expires_s), hostname: None, client_id: None }
    }

    fn render(diff: &Diff) -> String {
        let mut text = String::new();
        for event in &diff.events {
            let (_, mac, ip) = event.key;
            text += &format!("{:?} {mac} {ip} {:?}\n", event.change, event.lease.expires_s);
        }
        for (_, mac, ip) in &diff.missing {
            text += &format!("missing {mac} {ip}\n");
        }
        text
    }

    #[test]
    fn lease_files_of_both_families_are_read_with_their_macs_names_and_client_ids() {
        let text = "\
1764460801 52:54:00:12:34:56 10.0.0.10 vm-1 01:52:54:00:12:34:56
0 52:54:00:12:34:57 10.0.0.11 * *
1764460801 01-52:54:00:12:34:58 10.0.0.12 * *
duid 00:01:00:01:2c:aa:bb:cc:02:00:00:00:00:01
1764460802 12345 2001:db8::10 vm-2 00:01:00:01:2c:aa:bb:cc:52:54:00:12:34:59
1764460802 12346 2001:db8::11 * 00:02:00:00:ab:11:01:02:03:04
1764460802 T7 2001:db8::12 * 00:03:00:01:52:54:00:12:34:60
1764460803 52:54:00:12:34:61 10.0.0.13 half";
        let file = parse_lease_file(text);
        let rendered: Vec<String> = file
            .leases
            .iter()
            .map(|(mac, ip, lease)| {
                format!("{mac} {ip} {:?} {:?} {:?}", lease.expires_s, lease.hostname, lease.client_id)
            })
            .collect();
        expect![[r#"
            [
                "52:54:00:12:34:56 10.0.0.10 Some(1764460801) Some(\"vm-1\") Some(\"01525400123456\")",
                "52:54:00:12:34:57 10.0.0.11 None None None",
                "52:54:00:12:34:59 2001:db8::10 Some(1764460802) Some(\"vm-2\") Some(\"000100012caabbcc525400123459\")",
            ]
        "#]]
        .assert_debug_eq(&rendered);
        assert_eq!(file.skipped, 2, "a non-Ethernet MAC and a temporary address; the half line waits");
        let by_address: Vec<String> =
            file.by_address.iter().map(|(ip, lease)| format!("{ip} {:?}", lease.client_id)).collect();
        assert_eq!(by_address, ["2001:db8::11 Some(\"00020000ab1101020304\")"], "the DUID-EN lease waits for its MAC");
        let hosts = host_addresses([
            "52:54:00:12:34:62,[2001:db8::11]\n52:54:00:12:34:63,10.0.0.20\n",
            "52:54:00:12:34:63,ignore\n52:54:00:12:34:64,10.0.0.21\n52:54:00:12:34:65,10.0.0.22,[2001:db8::22]\n",
        ]);
        let hosts: Vec<String> = hosts.iter().map(|(ip, mac)| format!("{ip} {mac}")).collect();
        assert_eq!(
            hosts,
            [
                "10.0.0.21 52:54:00:12:34:64",
                "10.0.0.22 52:54:00:12:34:65",
                "2001:db8::11 52:54:00:12:34:62",
                "2001:db8::22 52:54:00:12:34:65"
            ],
            "a masked MAC holds nothing; a dual-stack line holds both its addresses"
        );
    }

    #[test]
    fn a_new_lease_is_granted_a_moved_expiry_renewed_and_an_unchanged_one_silent() {
        let reported = BTreeMap::from([(key("52:54:00:00:00:01", "10.0.0.1"), lease(100))]);
        let current = BTreeMap::from([
            (key("52:54:00:00:00:01", "10.0.0.1"), lease(100)),
            (key("52:54:00:00:00:02", "10.0.0.2"), lease(100)),
        ]);
        expect![[r#"
            Granted 52:54:00:00:00:02 10.0.0.2 Some(100)
        "#]]
        .assert_eq(&render(&diff(&reported, &current, 50, &BTreeSet::new())));
        let current = BTreeMap::from([(key("52:54:00:00:00:01", "10.0.0.1"), lease(160))]);
        expect![[r#"
            Renewed 52:54:00:00:00:01 10.0.0.1 Some(160)
        "#]]
        .assert_eq(&render(&diff(&reported, &current, 50, &BTreeSet::new())));
    }

    #[test]
    fn a_lease_gone_before_its_expiry_is_released_only_when_missing_from_two_reads() {
        let gone = key("52:54:00:00:00:01", "10.0.0.1");
        let reported = BTreeMap::from([(gone, lease(100))]);
        let first = diff(&reported, &BTreeMap::new(), 50, &BTreeSet::new());
        expect![[r#"
            missing 52:54:00:00:00:01 10.0.0.1
        "#]]
        .assert_eq(&render(&first));
        // Back at the next read (the first caught the file half written): nothing happened.
        let back = diff(&reported, &reported, 51, &first.missing);
        assert_eq!(back, Diff::default());
        expect![[r#"
            Released 52:54:00:00:00:01 10.0.0.1 Some(100)
        "#]]
        .assert_eq(&render(&diff(&reported, &BTreeMap::new(), 51, &first.missing)));
    }

    #[test]
    fn a_lease_past_its_expiry_expires_whether_or_not_the_file_still_holds_it() {
        let reported = BTreeMap::from([
            (key("52:54:00:00:00:01", "10.0.0.1"), lease(100)),
            (key("52:54:00:00:00:02", "10.0.0.2"), lease(100)),
            (key("52:54:00:00:00:03", "10.0.0.3"), Lease { expires_s: None, hostname: None, client_id: None }),
        ]);
        // dnsmasq down: the file still lists the first; the second was pruned; the infinite one stays.
        let current = BTreeMap::from([
            (key("52:54:00:00:00:01", "10.0.0.1"), lease(100)),
            (key("52:54:00:00:00:03", "10.0.0.3"), Lease { expires_s: None, hostname: None, client_id: None }),
        ]);
        expect![[r#"
            Expired 52:54:00:00:00:01 10.0.0.1 Some(100)
            Expired 52:54:00:00:00:02 10.0.0.2 Some(100)
        "#]]
        .assert_eq(&render(&diff(&reported, &current, 100, &BTreeSet::new())));
        // A lease already past its expiry when first read was never reported, and is not now.
        assert_eq!(diff(&BTreeMap::new(), &current, 100, &BTreeSet::new()).events.len(), 1);
    }

    #[test]
    fn reporting_the_events_makes_the_next_diff_empty() {
        let reported = BTreeMap::from([
            (key("52:54:00:00:00:01", "10.0.0.1"), lease(100)),
            (key("52:54:00:00:00:02", "10.0.0.2"), lease(100)),
        ]);
        let current = BTreeMap::from([
            (key("52:54:00:00:00:01", "10.0.0.1"), lease(130)),
            (key("52:54:00:00:00:03", "10.0.0.3"), lease(130)),
        ]);
        let first = diff(&reported, &current, 50, &BTreeSet::new());
        let second = diff(&reported, &current, 50, &first.missing);
        let mut after = reported.clone();
        apply(&mut after, &first.events);
        apply(&mut after, &second.events);
        assert_eq!(after, current);
        assert_eq!(diff(&after, &current, 50, &BTreeSet::new()), Diff::default());
        assert_eq!(next_expiry_s(&after), Some(130));
    }
}
