//! Everything the agent writes: the envelopes of its events, their ids, and the writer thread that
//! appends heartbeats and server statuses, so that no actor ever blocks on the log.
//!
//! Event ids come in two kinds. A DHCP-port request or release is a pure function of what the agent
//! read, so its id is too (see [`port_event_id`]): a restarted agent that repeats a request repeats
//! its id, and consumers can drop it by id as well as by content. So are a lease event's (of the
//! lease and its change, [`lease_event_id`]) and a synced report's ([`synced_event_id`]).
//! Heartbeats and statuses report the present and repeat nothing, so they only need to be unique:
//! their ids are derived from the host, the process's start and a counter.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipam_core::event::{
    DhcpServerState, DhcpServerStatus, DhcpServerSynced, HostHeartbeat, IpConflictDetected, ServedNetwork,
};
use ipam_core::{Envelope, Event, EventId, HostId, NetworkId, SubnetId, Timestamp};
use ipam_log::{EventLog, OutRecord};
use ipam_runtime::Topics;

use crate::leases::{LeaseChange, LeaseKey};

/// How long the writer waits before it tries a failed append again.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Statuses kept for a retry while the log refuses them; past this the oldest are dropped (the
/// next change reports the present anyway).
const MAX_QUEUED: usize = 1000;

/// What an id derivation is for, so ids of different kinds can never coincide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum IdKind {
    PortRequested = 1,
    PortReleased = 2,
    Run = 3,
    LeaseGranted = 4,
    LeaseRenewed = 5,
    LeaseReleased = 6,
    LeaseExpired = 7,
    Synced = 8,
}

/// An id derived from `base` and `words` by chaining [`EventId::derived`] (a UUIDv5 each step), so
/// every word, and its position, changes the result.
fn derive_id(base: EventId, words: &[u32]) -> EventId {
    words.iter().fold(base, |id, &word| EventId::derived(id, word))
}

fn words128(value: u128) -> [u32; 4] {
    // Truncating casts on purpose: the value is cut into its four 32-bit words.
    [(value >> 96) as u32, (value >> 64) as u32, (value >> 32) as u32, value as u32]
}

fn words64(value: u64) -> [u32; 2] {
    [(value >> 32) as u32, value as u32]
}

/// Which DHCP-port event of a host an id is for: its kind, network, subnet and epoch, and its
/// occasion: the id of the last event that made the server's address in that subnet necessary
/// again (the subnet's activation, or the removal of the address the server held). The occasion
/// tells apart the requests of a subnet added again, or of an address taken back, within one
/// epoch: the allocator ignores an input id it has seen, so each needs an id of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortEvent {
    pub(crate) kind: IdKind,
    pub(crate) network_id: NetworkId,
    pub(crate) subnet_id: SubnetId,
    pub(crate) epoch: u64,
    pub(crate) occasion: Option<EventId>,
}

/// The id of a DHCP-port request or release: derived from the host (as the base UUID) and from
/// what names the event ([`PortEvent`]). Deterministic across restarts, unlike a per-run counter.
pub(crate) fn port_event_id(host_id: HostId, event: PortEvent) -> EventId {
    let mut words = vec![event.kind as u32];
    words.extend(words128(event.network_id.0.as_u128()));
    words.extend(words128(event.subnet_id.0.as_u128()));
    words.extend(words64(event.epoch));
    if let Some(occasion) = event.occasion {
        words.extend(words128(occasion.0.as_u128()));
    }
    derive_id(EventId(host_id.0), &words)
}

/// The id of a lease event: derived from the host (as the base UUID), the change, and the lease
/// (network, MAC, address, and the expiry it had: the new one for `granted` and `renewed`, the last
/// reported for `released` and `expired`). A reporter that crashed after appending and before it
/// recorded what it reported reports the same events again under the same ids, and the allocator,
/// which ignores an input id it has seen, takes them once.
pub(crate) fn lease_event_id(host_id: HostId, change: LeaseChange, key: LeaseKey, expires_s: Option<i64>) -> EventId {
    let (network_id, mac, ip) = key;
    let kind = match change {
        LeaseChange::Granted => IdKind::LeaseGranted,
        LeaseChange::Renewed => IdKind::LeaseRenewed,
        LeaseChange::Released => IdKind::LeaseReleased,
        LeaseChange::Expired => IdKind::LeaseExpired,
    };
    let mut words = vec![kind as u32];
    words.extend(words128(network_id.0.as_u128()));
    let [a, b, c, d, e, f] = mac.octets();
    words.extend([u32::from_be_bytes([0, 0, a, b]), u32::from_be_bytes([c, d, e, f])]);
    match ip {
        IpAddr::V4(ip) => words.extend([4, ip.to_bits()]),
        IpAddr::V6(ip) => {
            words.push(6);
            words.extend(words128(ip.to_bits()));
        }
    }
    // Infinite leases (no expiry) take a value no real expiry has.
    // Reinterpreting the bits on purpose: the value is only hashed.
    words.extend(words64(expires_s.map_or(u64::MAX, |expires| expires as u64)));
    derive_id(EventId(host_id.0), &words)
}

/// The id of a `dhcp_server.synced` report: derived from the host, network, epoch and offset, so a
/// restarted agent that reports the same state again does so under the same id.
pub(crate) fn synced_event_id(host_id: HostId, synced: &DhcpServerSynced) -> EventId {
    let mut words = vec![IdKind::Synced as u32];
    words.extend(words128(synced.network_id.0.as_u128()));
    words.extend(words64(synced.epoch));
    words.extend(words64(synced.reservations_offset));
    derive_id(EventId(host_id.0), &words)
}

/// The CloudEvents `source` of everything the agent of `host_id` writes.
pub(crate) fn source(host_id: HostId) -> String {
    format!("ipam/host-agent/{host_id}")
}

/// The shell may read the clock; the core may not. A clock before 1970 reads as the epoch.
pub(crate) fn now() -> Timestamp {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis()).unwrap_or(0);
    Timestamp::from_unix_ms(i64::try_from(millis).unwrap_or(i64::MAX))
}

/// `event` in an envelope, as a record for its topic (named by `topics`, so with the deployment's
/// prefix) and key.
pub(crate) fn record(topics: &Topics, source: &str, id: EventId, event: Event) -> OutRecord {
    let envelope = Envelope { id, source: source.to_owned(), time: now(), subject: Some(event.key()), event };
    OutRecord { topic: topics.name(envelope.event.topic()), key: envelope.event.key(), value: envelope.to_bytes() }
}

enum Outgoing {
    /// A heartbeat is dropped if it cannot be appended: the next one says the same, and newer.
    Heartbeat(OutRecord),
    /// A status is kept and retried: it may be the only report of a failure.
    Status(OutRecord),
    /// Lease events, appended in one call or not at all; whether they were is sent back, and the
    /// sender retries (see [`Outbox::observed`]).
    Observed(Vec<OutRecord>, mpsc::Sender<bool>),
    /// Flush once more, then end the thread.
    Shutdown,
}

/// The sending side of the writer thread; clones share it. Sending never blocks.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    topics: Arc<Topics>,
    host_id: HostId,
    source: Arc<str>,
    run_id: EventId,
    counter: Arc<AtomicU32>,
}

impl Outbox {
    fn next_id(&self) -> EventId {
        EventId::derived(self.run_id, self.counter.fetch_add(1, Ordering::Relaxed))
    }

    /// Appends `ipam.host.heartbeat.v1` listing `serving`.
    pub(crate) fn heartbeat(&self, serving: Vec<ServedNetwork>) {
        let event = Event::HostHeartbeat(HostHeartbeat { host_id: self.host_id, serving });
        let _ = self.tx.send(Outgoing::Heartbeat(record(&self.topics, &self.source, self.next_id(), event)));
    }

    /// Appends `ipam.dhcp_server.status.v1`.
    pub(crate) fn status(&self, network_id: NetworkId, epoch: u64, state: DhcpServerState, detail: String) {
        ipam_runtime::metrics::dhcp_server_status(&self.host_id.to_string(), &network_id.to_string(), state, &detail);
        let event =
            Event::DhcpServerStatus(DhcpServerStatus { host_id: self.host_id, network_id, epoch, state, detail });
        let _ = self.tx.send(Outgoing::Status(record(&self.topics, &self.source, self.next_id(), event)));
    }

    /// Appends `events` (lease events, each with its id) in one call, after what was sent before
    /// them. The answer says whether the log took them; it never comes (the sender is dropped)
    /// when the writer ends first. The caller records what it reported only on `true`, and
    /// otherwise tries again: the writer does not keep them.
    pub(crate) fn observed(&self, events: Vec<(EventId, Event)>) -> mpsc::Receiver<bool> {
        let records = events.into_iter().map(|(id, event)| record(&self.topics, &self.source, id, event)).collect();
        let (accepted, answer) = mpsc::channel();
        let _ = self.tx.send(Outgoing::Observed(records, accepted));
        answer
    }

    /// The host whose agent this is.
    pub(crate) fn host_id(&self) -> HostId {
        self.host_id
    }

    /// Appends `ipam.dhcp_server.synced.v1`, kept and retried like a status.
    pub(crate) fn synced(&self, synced: DhcpServerSynced) {
        let id = synced_event_id(self.host_id, &synced);
        let event = Event::DhcpServerSynced(synced);
        let _ = self.tx.send(Outgoing::Status(record(&self.topics, &self.source, id, event)));
    }

    /// Appends `ipam.ip.conflict.v1`, kept and retried like a status. Its id is unique to this
    /// report: a conflict found again after an operator cleared the address is news.
    pub(crate) fn conflict(&self, conflict: IpConflictDetected) {
        let event = Event::IpConflictDetected(conflict);
        let _ = self.tx.send(Outgoing::Status(record(&self.topics, &self.source, self.next_id(), event)));
    }

    /// Asks the writer to flush what it holds and end.
    pub(crate) fn shutdown(&self) {
        let _ = self.tx.send(Outgoing::Shutdown);
    }
}

/// Starts the writer thread of the agent of `host_id`, which writes to the topics `topics` names.
pub(crate) fn spawn_writer(
    log: Arc<dyn EventLog>,
    topics: Topics,
    host_id: HostId,
) -> std::io::Result<(Outbox, thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let started = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_nanos()).unwrap_or(0);
    let mut words = vec![IdKind::Run as u32, std::process::id()];
    // The low 96 bits of the start time in nanoseconds: unique per run of a host's agent.
    words.extend(&words128(started)[1..]);
    let outbox = Outbox {
        tx,
        topics: Arc::new(topics),
        host_id,
        source: source(host_id).into(),
        run_id: derive_id(EventId(host_id.0), &words),
        counter: Arc::new(AtomicU32::new(0)),
    };
    let handle = thread::Builder::new().name("ipam-agent-writer".to_owned()).spawn(move || write_loop(&*log, &rx))?;
    Ok((outbox, handle))
}

fn write_loop(log: &dyn EventLog, rx: &mpsc::Receiver<Outgoing>) {
    let mut queue = VecDeque::new();
    let mut trouble = Trouble::default();
    loop {
        let mut shutdown = false;
        match rx.recv_timeout(RETRY_INTERVAL) {
            Ok(Outgoing::Shutdown) | Err(RecvTimeoutError::Disconnected) => shutdown = true,
            Ok(outgoing) => queue.push_back(outgoing),
            Err(RecvTimeoutError::Timeout) => {}
        }
        while !shutdown {
            match rx.try_recv() {
                Ok(Outgoing::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => shutdown = true,
                Ok(outgoing) => queue.push_back(outgoing),
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        flush(log, &mut queue, &mut trouble);
        if shutdown {
            if !queue.is_empty() {
                tracing::warn!(records = queue.len(), "Shutting down with status records the log refused.");
            }
            return;
        }
    }
}

fn flush(log: &dyn EventLog, queue: &mut VecDeque<Outgoing>, trouble: &mut Trouble) {
    while let Some(outgoing) = queue.front() {
        if let Outgoing::Observed(records, accepted) = outgoing {
            let result = log.append(records);
            match &result {
                Ok(_) => trouble.clear(records.first().map_or("", |record| &record.topic)),
                Err(error) => trouble.report(records.first().map_or("", |record| &record.topic), error),
            }
            let _ = accepted.send(result.is_ok());
            queue.pop_front();
            continue;
        }
        let (Outgoing::Heartbeat(record) | Outgoing::Status(record)) = outgoing else {
            queue.pop_front();
            continue;
        };
        match log.append(std::slice::from_ref(record)) {
            Ok(_) => {
                trouble.clear(&record.topic);
                if matches!(outgoing, Outgoing::Heartbeat(_)) {
                    // A heartbeat's key is its host.
                    ipam_runtime::metrics::heartbeat_appended(&record.key);
                }
                queue.pop_front();
            }
            Err(error) => {
                trouble.report(&record.topic, &error);
                if matches!(outgoing, Outgoing::Heartbeat(_)) {
                    queue.pop_front();
                    continue;
                }
                while queue.len() > MAX_QUEUED {
                    queue.pop_front();
                }
                return;
            }
        }
    }
}

/// Logs a failure of the log once, not on every retry, and its end.
#[derive(Debug, Default)]
pub(crate) struct Trouble {
    current: Option<String>,
}

impl Trouble {
    pub(crate) fn report(&mut self, topic: &str, error: &ipam_log::LogError) {
        let message = error.to_string();
        if self.current.as_deref() != Some(&message) {
            match error {
                ipam_log::LogError::UnknownTopic(_) => {
                    tracing::info!(topic, "Topic does not exist yet; waiting for it to be created.");
                }
                _ => tracing::warn!(topic, error = %message, "Log operation failed; retrying."),
            }
            self.current = Some(message);
        }
    }

    pub(crate) fn clear(&mut self, topic: &str) {
        if self.current.take().is_some() {
            tracing::info!(topic, "Log operation succeeded again.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_event_ids_are_stable_and_differ_by_every_input() {
        let id = |kind, host, network, subnet, epoch, occasion: Option<u128>| {
            port_event_id(
                HostId::from_u128(host),
                PortEvent {
                    kind,
                    network_id: NetworkId::from_u128(network),
                    subnet_id: SubnetId::from_u128(subnet),
                    epoch,
                    occasion: occasion.map(EventId::from_u128),
                },
            )
        };
        let base = id(IdKind::PortRequested, 1, 2, 3, 4, None);
        assert_eq!(base, id(IdKind::PortRequested, 1, 2, 3, 4, None));
        let others = [
            id(IdKind::PortReleased, 1, 2, 3, 4, None),
            id(IdKind::PortRequested, 9, 2, 3, 4, None),
            id(IdKind::PortRequested, 1, 9, 3, 4, None),
            id(IdKind::PortRequested, 1, 2, 9, 4, None),
            id(IdKind::PortRequested, 1, 2, 3, 9, None),
            // A subnet activated again, or an address taken back, asks again under another id.
            id(IdKind::PortRequested, 1, 2, 3, 4, Some(5)),
            // Swapping network and subnet must not collide either.
            id(IdKind::PortRequested, 1, 3, 2, 4, None),
        ];
        for other in others {
            assert_ne!(other, base);
        }
        assert_ne!(id(IdKind::PortRequested, 1, 2, 3, 4, Some(5)), id(IdKind::PortRequested, 1, 2, 3, 4, Some(6)));
        expect_test::expect!["b352ca02-8605-5801-adbf-719cb8a33708"].assert_eq(&base.to_string());
    }
}
