//! The follower thread: follows `ipam.dhcp-servers` and `ipam.reservations` (every partition, from
//! offset 0, through the log's one positioned [`ipam_log::Follower`]), folds them into the core's [`HostDhcpView`], and turns each new
//! [`plan`] into messages for the provisioning actors and DHCP-port events for the allocator.
//!
//! It is the only place that blocks on log reads, and it runs on a plain thread, never on an actor
//! thread. The bookkeeping (what was sent to the actors, which port events are outstanding) lives
//! in [`Tracker`], which does no I/O, so it is tested without threads or a log.
//!
//! A restarted agent replays from zero: it reads up to the end offsets it found at start before it
//! acts, so it neither rewrites a server's file with a configuration from the middle of its history
//! nor asks for ports the log already shows it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use actix::Addr;
use anyhow::Context as _;
use ipam_core::StateMachine;
use ipam_core::dhcp_plan::{
    HostChange, HostDhcpView, PlanChange, PlanOptions, plan, plan_network, port_releases, port_requests,
};
use ipam_core::event::Owner;
use ipam_core::{Envelope, Event, EventId, HostId, Mac, NetworkId, SubnetId, Topic};
use ipam_log::dead_letter::{Ingested, ingest};
use ipam_log::{Backlog, EventLog, LogError, OutRecord, Record};
use ipam_runtime::Topics;

use crate::actors::{Desired, ServerChange, Supervisor};
use crate::outbox::{self, IdKind, PortEvent, Trouble};

/// Records taken from the follower at a time.
const READ_MAX: usize = 512;
/// How long the follower waits for records when none is ready. A record that arrives meanwhile
/// ends the wait at once; the bound only says how often a stop is noticed while idle.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// While reads come back full (a burst is being read: an initial load, a mass VM start), changes
/// are sent at most this often, so the servers get a few large changes rather than one per batch
/// of [`READ_MAX`] records (each change costs a message, a backend apply and, for the files
/// backend, a rewrite of the network's file). A record that arrives alone is sent at once.
const BURST_COALESCE: Duration = Duration::from_millis(100);
/// How long to wait before asking again for a topic that does not exist or a log that failed.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// What the follower has told others, so it tells each thing once. No I/O.
#[derive(Debug)]
pub(crate) struct Tracker {
    host_id: HostId,
    /// Names the topic the port events go to (`ipam.networks`, with the deployment's prefix).
    topics: Topics,
    port_mac: Mac,
    options: PlanOptions,
    view: HostDhcpView,
    /// The networks the actors were told to serve, with the epoch of the configuration sent.
    served: BTreeMap<NetworkId, u64>,
    /// The newest epoch of this host's assignment per network, served or not: the epoch a port
    /// release is filed under once the network is no longer in the plan.
    epochs: BTreeMap<NetworkId, u64>,
    /// Whether the first [`Tracker::changes`] was made, which also sweeps leftovers.
    swept: bool,
    /// What changed in each network's plan since the last [`Tracker::changes`], as the view said:
    /// a server planned again (costing the size of its network), or only some hosts (costing
    /// their number, whatever the size of the network).
    pending: BTreeMap<NetworkId, Pending>,
    /// Port events appended and not yet answered. A key leaves once the core stops asking for it
    /// (the allocator answered, or the network moved on), so a port lost later is asked for again.
    outstanding: BTreeSet<PortKey>,
    /// Per subnet, the id of the last event that made this server's address there necessary
    /// again: the subnet's activation, or the removal of the address it held. A port asked for
    /// again is asked under a new id (see [`outbox::PortEvent`]).
    occasions: BTreeMap<(NetworkId, SubnetId), EventId>,
}

/// What changed in one network's plan since the last [`Tracker::changes`].
#[derive(Debug)]
enum Pending {
    /// The server as a whole: it is planned anew.
    Server,
    /// Only these hosts, each with its latest change, in the plan's order.
    Hosts(BTreeMap<(SubnetId, IpAddr, Mac), HostChange>),
}

/// One DHCP-port event, as the de-duplication knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PortKey {
    released: bool,
    network_id: NetworkId,
    subnet_id: SubnetId,
    epoch: u64,
    occasion: Option<EventId>,
    mac: Mac,
}

impl Tracker {
    pub(crate) fn new(host_id: HostId, topics: Topics, port_mac: Mac, options: PlanOptions) -> Tracker {
        Tracker {
            host_id,
            topics,
            port_mac,
            options,
            view: HostDhcpView::new(host_id),
            served: BTreeMap::new(),
            epochs: BTreeMap::new(),
            swept: false,
            pending: BTreeMap::new(),
            outstanding: BTreeSet::new(),
            occasions: BTreeMap::new(),
        }
    }

    pub(crate) fn apply(&mut self, envelope: &Envelope) {
        let own_epoch = match &envelope.event {
            Event::DhcpServerAssigned(e) if e.host_id == self.host_id => Some((e.network_id, e.epoch)),
            Event::DhcpServerUnassigned(e) if e.host_id == self.host_id => Some((e.network_id, e.epoch)),
            _ => None,
        };
        match &envelope.event {
            Event::SubnetActivated(e) => {
                self.occasions.insert((e.network_id, e.subnet_id), envelope.id);
            }
            Event::ReservationRemoved(e) if e.owner == (Owner::DhcpServer { host_id: self.host_id }) => {
                self.occasions.insert((e.network_id, e.subnet_id), envelope.id);
            }
            _ => {}
        }
        if let Some((network_id, epoch)) = own_epoch {
            let newest = self.epochs.entry(network_id).or_insert(epoch);
            *newest = (*newest).max(epoch);
        }
        match self.view.apply(envelope) {
            Some(PlanChange::Server(network_id)) => {
                self.pending.insert(network_id, Pending::Server);
            }
            Some(PlanChange::Host(change)) => {
                let pending = self.pending.entry(change.network_id).or_insert_with(|| Pending::Hosts(BTreeMap::new()));
                if let Pending::Hosts(hosts) = pending {
                    hosts.insert(change.key(), change);
                }
            }
            None => {}
        }
    }

    /// What the actors must hear since the last call: every network whose server changed (new ones
    /// included) with its whole configuration, the hosts that came or went on the others, and
    /// every network no longer planned, with its last epoch.
    ///
    /// The first call also lists every network this host was ever assigned and does not serve now:
    /// an agent that was down when a network was taken away from it left that server's
    /// configuration behind, and nothing else would ever remove it. Stopping a stopped server is a
    /// no-op, so sweeping them all is safe.
    pub(crate) fn changes(&mut self) -> Desired {
        let mut desired = Desired::default();
        if !self.swept {
            self.swept = true;
            self.pending.clear();
            let planned = plan(&self.view, &self.options);
            let planned_ids: BTreeSet<NetworkId> = planned.networks.iter().map(|n| n.network_id).collect();
            let gone: BTreeSet<NetworkId> =
                self.served.keys().chain(self.epochs.keys()).copied().filter(|id| !planned_ids.contains(id)).collect();
            for network_id in gone {
                self.forget(network_id, &mut desired);
            }
            for config in planned.networks {
                self.served.insert(config.network_id, config.epoch);
                desired.changed.push(ServerChange::Whole(config));
            }
            return desired;
        }
        for (network_id, pending) in std::mem::take(&mut self.pending) {
            match pending {
                Pending::Server => match plan_network(&self.view, network_id, &self.options) {
                    Some(config) => {
                        self.served.insert(network_id, config.epoch);
                        desired.changed.push(ServerChange::Whole(config));
                    }
                    None if self.served.contains_key(&network_id) => self.forget(network_id, &mut desired),
                    None => {}
                },
                // The view yields host changes of served networks only, which the actors were
                // given whole before (a network that became served meanwhile is `Server`).
                Pending::Hosts(hosts) if self.served.contains_key(&network_id) => {
                    desired.changed.push(ServerChange::Hosts { network_id, hosts: hosts.into_values().collect() });
                }
                Pending::Hosts(_) => {}
            }
        }
        desired
    }

    /// Tells the actors to stop `network_id`'s server, under its newest epoch.
    fn forget(&mut self, network_id: NetworkId, desired: &mut Desired) {
        self.served.remove(&network_id);
        desired.gone.push((network_id, self.epochs.get(&network_id).copied().unwrap_or(0)));
    }

    /// The port events the core asks for that are not outstanding yet, as records with their keys.
    /// Call [`Tracker::mark_sent`] with the keys once they are appended.
    pub(crate) fn port_events(&mut self) -> Vec<(PortKey, OutRecord)> {
        let port_mac = self.port_mac;
        let wanted = port_requests(&self.view, |_| Some(port_mac)).into_iter().chain(port_releases(&self.view));
        let source = outbox::source(self.host_id);
        let mut current = BTreeSet::new();
        let mut new = Vec::new();
        for event in wanted {
            let (released, network_id, subnet_id, mac) = match &event {
                Event::DhcpPortRequested(e) => (false, e.network_id, e.subnet_id, e.mac),
                Event::DhcpPortReleased(e) => (true, e.network_id, e.subnet_id, e.mac),
                other => unreachable!("the core's port functions return port events only, not {}", other.type_name()),
            };
            let epoch = if released {
                self.epochs.get(&network_id).copied().unwrap_or(0)
            } else {
                // A request is only made for a served network, which the plan (and so `served`) holds.
                self.served.get(&network_id).copied().unwrap_or(0)
            };
            let occasion = self.occasions.get(&(network_id, subnet_id)).copied();
            let key = PortKey { released, network_id, subnet_id, epoch, occasion, mac };
            current.insert(key);
            if !self.outstanding.contains(&key) {
                let kind = if released { IdKind::PortReleased } else { IdKind::PortRequested };
                let port = PortEvent { kind, network_id, subnet_id, epoch, occasion };
                let id = outbox::port_event_id(self.host_id, port);
                new.push((key, outbox::record(&self.topics, &source, id, event)));
            }
        }
        self.outstanding.retain(|key| current.contains(key));
        new
    }

    pub(crate) fn mark_sent(&mut self, keys: impl IntoIterator<Item = PortKey>) {
        self.outstanding.extend(keys);
    }
}

/// The follower thread's state.
pub(crate) struct Follower {
    log: Arc<dyn EventLog>,
    tracker: Tracker,
    supervisor: Addr<Supervisor>,
    /// Set by the caller of [`crate::run`], or by `run` itself when the actor system ended first.
    stops: [Arc<AtomicBool>; 2],
    trouble: Trouble,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").field("tracker", &self.tracker).finish_non_exhaustive()
    }
}

const TOPICS: [Topic; 2] = [Topic::DhcpServers, Topic::Reservations];

impl Follower {
    pub(crate) fn new(
        log: Arc<dyn EventLog>,
        tracker: Tracker,
        supervisor: Addr<Supervisor>,
        stops: [Arc<AtomicBool>; 2],
    ) -> Follower {
        Follower { log, tracker, supervisor, stops, trouble: Trouble::default() }
    }

    fn stopping(&self) -> bool {
        self.stops.iter().any(|stop| stop.load(Ordering::SeqCst))
    }

    /// Sleeps `pause`, waking early when asked to stop. Answers whether it was.
    fn pause(&self, pause: Duration) -> bool {
        let deadline = Instant::now() + pause;
        while !self.stopping() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
        true
    }

    /// Follows the log until asked to stop. Ends early, with an error, only when the log says it
    /// cannot go on.
    pub(crate) fn run(mut self) -> anyhow::Result<()> {
        let topics: Vec<String> = TOPICS.iter().map(|topic| self.tracker.topics.name(*topic)).collect();
        let label = topics.join(", ");
        // The topics are made by the deciding services: wait for them.
        let (from, mut backlog, mut follower) = loop {
            let started = Backlog::from_zero(&*self.log, &topics).and_then(|from| {
                let backlog = Backlog::at_start(&*self.log, &topics)?;
                let follower = self.log.follow(&from)?;
                Ok((from, backlog, follower))
            });
            match started {
                Ok(started) => break started,
                Err(error) => self.retry(&label, error)?,
            }
            if self.pause(RETRY_PAUSE) {
                return Ok(());
            }
        };
        anyhow::ensure!(!from.is_empty(), "the topics to follow have no partitions");
        self.trouble.clear(&label);
        let mut acting = false;
        let mut ports_due = false;
        let mut last_sent = Instant::now();
        // Events applied to the tracker whose changes were not sent yet.
        let mut unsent = false;
        while !self.stopping() {
            let records = match follower.next(READ_MAX, IDLE_WAIT) {
                Ok(records) => records,
                Err(error) => {
                    self.retry(&label, error)?;
                    self.pause(RETRY_PAUSE);
                    continue;
                }
            };
            self.trouble.clear(&label);
            let full = records.len() >= READ_MAX;
            unsent |= self.apply(&records) > 0;
            if !acting {
                acting = match backlog.update(&*self.log, &*follower, records.is_empty()) {
                    Ok(read) => read,
                    Err(error) => {
                        self.retry(&label, error)?;
                        false
                    }
                };
                if !acting {
                    continue;
                }
                tracing::info!(host = %self.tracker.host_id, "Caught up with the log; provisioning.");
                ipam_runtime::metrics::host_agent_caught_up(&self.tracker.host_id.to_string());
            } else if (!unsent && !ports_due) || (full && last_sent.elapsed() < BURST_COALESCE) {
                // Nothing to send, or a burst whose changes are sent together a little later.
                continue;
            }
            let mut desired = self.tracker.changes();
            if !desired.is_empty() {
                desired.reservations_offsets = self.reservations_offsets(&desired, &follower.positions());
                self.supervisor.do_send(desired);
                last_sent = Instant::now();
            }
            unsent = false;
            ports_due = !self.append_port_events();
        }
        Ok(())
    }

    /// For each network `desired` changes, how far its `ipam.reservations` partition has been read
    /// (every record before that offset is in the configuration sent): what its server reports
    /// as synced once it applied the change.
    fn reservations_offsets(&self, desired: &Desired, positions: &[ipam_log::Position]) -> BTreeMap<NetworkId, u64> {
        let topic = self.tracker.topics.name(Topic::Reservations);
        let read: BTreeMap<u32, u64> = positions
            .iter()
            .filter(|position| position.topic == topic)
            .map(|position| (position.partition, position.next_offset))
            .collect();
        let Ok(count) = u32::try_from(read.len()) else { return BTreeMap::new() };
        if count == 0 {
            return BTreeMap::new();
        }
        desired
            .changed
            .iter()
            .filter_map(|change| {
                let network_id = change.network_id();
                let key = network_id.to_string();
                let offset = read.get(&ipam_log::partition::for_key(key.as_bytes(), count))?;
                Some((network_id, *offset))
            })
            .collect()
    }

    /// Reports a failed log operation; an error the log cannot recover from ends the follower.
    fn retry(&mut self, topic: &str, error: LogError) -> anyhow::Result<()> {
        match error {
            LogError::UnknownTopic(_) | LogError::Storage(_) => {
                self.trouble.report(topic, &error);
                Ok(())
            }
            error => Err(error).with_context(|| format!("cannot read topic `{topic}`")),
        }
    }

    /// Applies the events among `records`; answers how many there were.
    fn apply(&mut self, records: &[Record]) -> usize {
        let mut applied = 0;
        for record in records {
            match ingest(record) {
                Ingested::Event(envelope) => {
                    self.tracker.apply(&envelope);
                    applied += 1;
                }
                // Dead-lettering and rejecting are the job of the topic's consumers upstream; to a
                // host agent an unusable record is simply not an input.
                Ingested::Rejected { .. } | Ingested::DeadLetter(_) => {
                    tracing::debug!(
                        topic = %record.topic,
                        partition = record.partition,
                        offset = record.offset,
                        "Skipped a record that is not an event."
                    );
                }
            }
        }
        applied
    }

    /// Appends the port events due; answers false when the log refused them (they are retried).
    fn append_port_events(&mut self) -> bool {
        let events = self.tracker.port_events();
        if events.is_empty() {
            return true;
        }
        let topic = self.tracker.topics.name(Topic::Networks);
        let topic = topic.as_str();
        let records: Vec<OutRecord> = events.iter().map(|(_, record)| record.clone()).collect();
        match self.log.append(&records) {
            Ok(_) => {
                self.trouble.clear(topic);
                for (key, _) in &events {
                    tracing::info!(
                        network = %key.network_id, subnet = %key.subnet_id, epoch = key.epoch, mac = %key.mac,
                        released = key.released, "Sent a DHCP-port event."
                    );
                }
                self.tracker.mark_sent(events.into_iter().map(|(key, _)| key));
                true
            }
            Err(error) => {
                self.trouble.report(topic, &error);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use expect_test::{Expect, expect};
    use ipam_core::event::{
        AssignReason, DhcpServerAssigned, DhcpServerUnassigned, Owner, ReleaseReason, ReservationAdded,
        ReservationRemoved, SubnetActivated, UnassignReason,
    };
    use ipam_core::{EventId, Timestamp, VmId, VnicId};

    use super::*;

    const H1: HostId = HostId::from_u128(1);
    const N1: NetworkId = NetworkId::from_u128(1);
    const S1: SubnetId = SubnetId::from_u128(1);

    fn port_mac() -> Mac {
        "02:00:00:00:dd:01".parse().unwrap()
    }

    fn tracker() -> Tracker {
        Tracker::new(H1, Topics::new("", 1), port_mac(), PlanOptions::default())
    }

    fn envelope(event: Event) -> Envelope {
        Envelope {
            id: EventId::from_u128(9),
            source: "test".to_owned(),
            time: Timestamp::from_unix_ms(0),
            subject: None,
            event,
        }
    }

    fn assigned(epoch: u64) -> Envelope {
        envelope(Event::DhcpServerAssigned(DhcpServerAssigned {
            network_id: N1,
            host_id: H1,
            interface: "br0".parse().unwrap(),
            epoch,
            reason: AssignReason::Placed,
            cause: EventId::from_u128(1),
        }))
    }

    fn unassigned(epoch: u64) -> Envelope {
        envelope(Event::DhcpServerUnassigned(DhcpServerUnassigned {
            network_id: N1,
            host_id: H1,
            epoch,
            reason: UnassignReason::HostDown,
            cause: EventId::from_u128(1),
        }))
    }

    fn activated() -> Envelope {
        envelope(Event::SubnetActivated(SubnetActivated {
            network_id: N1,
            subnet_id: S1,
            cidr: "10.1.0.0/24".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            dns_servers: Vec::new(),
            ntp_servers: Vec::new(),
            allocation_pools: Vec::new(),
            cause: EventId::from_u128(1),
        }))
    }

    /// A reservation of `owner` added, or removed for `reason`.
    fn reservation(owner: Owner, mac: Mac, ip: &str, removed: Option<ReleaseReason>) -> Envelope {
        let (network_id, subnet_id, ip, cause) = (N1, S1, ip.parse().unwrap(), EventId::from_u128(1));
        envelope(match removed {
            None => Event::ReservationAdded(ReservationAdded { network_id, subnet_id, owner, mac, ip, cause }),
            Some(reason) => {
                Event::ReservationRemoved(ReservationRemoved { network_id, subnet_id, owner, mac, ip, reason, cause })
            }
        })
    }

    fn own_port(added: bool) -> Envelope {
        let removed = (!added).then_some(ReleaseReason::PortReleased);
        let envelope = reservation(Owner::DhcpServer { host_id: H1 }, port_mac(), "10.1.0.2", removed);
        Envelope { id: EventId::from_u128(if added { 20 } else { 21 }), ..envelope }
    }

    fn vnic(added: bool) -> Envelope {
        let owner = Owner::Vnic { vnic_id: VnicId::from_u128(1), vm_id: VmId::from_u128(1) };
        let removed = (!added).then_some(ReleaseReason::VnicDown);
        reservation(owner, "02:00:00:00:00:01".parse().unwrap(), "10.1.0.10", removed)
    }

    /// Applies each step's inputs, then renders what the tracker would send after it.
    fn check(steps: &[&[Envelope]], expect: Expect) {
        check_from(tracker(), steps, expect);
    }

    fn check_from(mut tracker: Tracker, steps: &[&[Envelope]], expect: Expect) {
        let mut out = String::new();
        for (index, step) in steps.iter().enumerate() {
            for input in *step {
                tracker.apply(input);
            }
            let desired = tracker.changes();
            let _ = write!(out, "step {index}:");
            for change in &desired.changed {
                match change {
                    ServerChange::Whole(config) => {
                        let servers: Vec<String> = config
                            .subnets
                            .iter()
                            .map(|s| s.server_address.map_or("-".to_owned(), |ip| ip.to_string()))
                            .collect();
                        let _ = write!(
                            out,
                            " apply(epoch {} subnets {} hosts {} server {})",
                            config.epoch,
                            config.subnets.len(),
                            config.host_count(),
                            servers.join(",")
                        );
                    }
                    ServerChange::Hosts { hosts, .. } => {
                        let hosts: Vec<String> = hosts
                            .iter()
                            .map(|change| format!("{}{}", if change.served { '+' } else { '-' }, change.host.ip))
                            .collect();
                        let _ = write!(out, " hosts({})", hosts.join(" "));
                    }
                }
            }
            for (network_id, epoch) in &desired.gone {
                assert_eq!(*network_id, N1);
                let _ = write!(out, " stop(epoch {epoch})");
            }
            let events = tracker.port_events();
            for (key, record) in &events {
                let envelope = Envelope::decode(&record.value).unwrap();
                let verb = if key.released { "release" } else { "request" };
                let _ = write!(out, " {verb}(epoch {} id {})", key.epoch, &envelope.id.to_string()[..8]);
                assert_eq!(record.topic, "ipam.networks");
                assert_eq!(record.key, N1.to_string());
                assert_eq!(envelope.source, format!("ipam/host-agent/{H1}"));
            }
            tracker.mark_sent(events.into_iter().map(|(key, _)| key));
            out.push('\n');
        }
        expect.assert_eq(&out);
    }

    #[test]
    fn each_change_is_sent_once_and_each_port_asked_for_once() {
        check(
            &[
                &[activated(), vnic(true)],
                &[assigned(1)],
                // Nothing new: nothing is sent, and the outstanding request is not repeated.
                &[],
                &[vnic(false)],
                &[own_port(true)],
                &[unassigned(1)],
                &[own_port(false)],
            ],
            expect![[r#"
                step 0:
                step 1: apply(epoch 1 subnets 1 hosts 1 server -) request(epoch 1 id 538bbe09)
                step 2:
                step 3: hosts(-10.1.0.10)
                step 4: apply(epoch 1 subnets 1 hosts 0 server 10.1.0.2)
                step 5: stop(epoch 1) release(epoch 1 id ede4a804)
                step 6:
            "#]],
        );
    }

    /// A VM start or stop is sent as the host that came or went, not the network's whole
    /// configuration; within one message a host's latest change wins, and a change of the server
    /// itself sends it whole, hosts included.
    #[test]
    fn hosts_that_come_and_go_are_sent_as_such_and_a_server_change_whole() {
        check(
            &[
                &[activated(), assigned(1)],
                &[vnic(true)],
                &[vnic(false), vnic(true)],
                &[vnic(false)],
                &[vnic(true), own_port(true)],
                // Not served any more: nothing to send for its hosts.
                &[unassigned(1), vnic(false)],
            ],
            expect![[r#"
                step 0: apply(epoch 1 subnets 1 hosts 0 server -) request(epoch 1 id 538bbe09)
                step 1: hosts(+10.1.0.10)
                step 2: hosts(+10.1.0.10)
                step 3: hosts(-10.1.0.10)
                step 4: apply(epoch 1 subnets 1 hosts 1 server 10.1.0.2)
                step 5: stop(epoch 1) release(epoch 1 id ede4a804)
            "#]],
        );
    }

    #[test]
    fn a_port_lost_while_serving_is_asked_for_again_and_a_new_epoch_asks_anew() {
        check(
            &[
                &[activated(), assigned(1)],
                &[own_port(true)],
                // The allocator took the port back while the network is still served.
                &[own_port(false)],
                &[unassigned(1), assigned(2)],
            ],
            expect![[r#"
                step 0: apply(epoch 1 subnets 1 hosts 0 server -) request(epoch 1 id 538bbe09)
                step 1: apply(epoch 1 subnets 1 hosts 0 server 10.1.0.2)
                step 2: apply(epoch 1 subnets 1 hosts 0 server -) request(epoch 1 id 7db54f9f)
                step 3: apply(epoch 2 subnets 1 hosts 0 server -) request(epoch 2 id 5160b7b2)
            "#]],
        );
    }

    #[test]
    fn a_subnet_added_again_within_an_epoch_is_asked_for_under_a_new_id() {
        let again = Envelope { id: EventId::from_u128(30), ..activated() };
        let deactivated = envelope(Event::SubnetDeactivated(ipam_core::event::SubnetDeactivated {
            network_id: N1,
            subnet_id: S1,
            cause: EventId::from_u128(1),
        }));
        check(
            &[&[activated(), assigned(1)], &[own_port(true)], &[deactivated, own_port(false)], &[again]],
            expect![[r#"
                step 0: apply(epoch 1 subnets 1 hosts 0 server -) request(epoch 1 id 538bbe09)
                step 1: apply(epoch 1 subnets 1 hosts 0 server 10.1.0.2)
                step 2: apply(epoch 1 subnets 0 hosts 0 server )
                step 3: apply(epoch 1 subnets 1 hosts 0 server -) request(epoch 1 id a8a66b06)
            "#]],
        );
    }

    #[test]
    fn the_first_changes_sweep_networks_served_before_but_not_now() {
        // What a restarted agent replays: it served n1 under epoch 1, and was unassigned meanwhile.
        check(
            &[&[activated(), assigned(1), unassigned(1)], &[], &[assigned(2)]],
            expect![[r#"
                step 0: stop(epoch 1)
                step 1:
                step 2: apply(epoch 2 subnets 1 hosts 0 server -) request(epoch 2 id 07de360a)
            "#]],
        );
    }
}
