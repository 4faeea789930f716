//! The lease reporter: a thread that reads the lease files of the host's dnsmasq servers and
//! reports what changed as `ipam.lease.{granted,renewed,released,expired}.v1` on `ipam.networks`,
//! keyed by network, through the [`Outbox`]. What a change is, is decided in [`crate::leases`].
//!
//! It polls rather than watching with inotify: every [`POLL_INTERVAL`] it looks at each file's
//! size, modification time and inode, and reads only files that changed (or changed lately: a
//! rewrite within the file system's timestamp granularity keeps the time). A poll also notices
//! time passing, which is what ends a lease whose server is down. The latency it adds is at most
//! one interval (half of one on average), small beside a DHCP exchange.
//!
//! What it reported is kept in the state directory ([`STATE_FILE`]) and written only after the
//! outbox said the log took the events, so:
//! - a restarted dnsmasq reloads its own file: nothing changed, nothing is reported;
//! - a restarted agent compares the files with what the previous run reported: what happened
//!   meanwhile is reported once (changes that cancel out, such as a lease granted and released
//!   while the agent was away, are not seen), and nothing is reported twice;
//! - a crash between the append and the write of the state reports the same events again under the
//!   same ids (they are derived from the lease and its change, [`crate::outbox::lease_event_id`]),
//!   which the allocator ignores as inputs it has seen. A lost or unreadable state file does the
//!   same for every lease still held.
//!
//! The files are those of the dnsmasq backend: `<state dir>/<network id>/shard-NN/leases`. A
//! server stopped (the network unassigned from this host) takes its directory with it, and its
//! leases end here: released, or expired past their expiry.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipam_core::event::LeaseObserved;
use ipam_core::{Event, HostId, Mac, NetworkId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::leases::{self, Lease, LeaseChange, LeaseEvent, LeaseKey};
use crate::outbox::{self, Outbox};

/// Where the reporter keeps what it reported, in the agent's state directory.
pub const STATE_FILE: &str = "leases-reported.json";

/// How often the lease files are looked at.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How long to wait before reporting again what the log refused.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// A file modified this recently is read again even if its size and time look unchanged: two
/// rewrites within one tick of the file system's clock keep both.
const RECENT: Duration = Duration::from_secs(2);

/// At most this many events per append, each batch recorded once the log took it.
const MAX_BATCH: usize = 4096;

/// The state file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    leases: Vec<ReportedLease>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ReportedLease {
    network_id: NetworkId,
    mac: Mac,
    ip: IpAddr,
    #[serde(flatten)]
    lease: Lease,
}

/// What a file looked like when it was last read, and its leases then.
#[derive(Debug)]
struct Cached {
    stamp: (u64, SystemTime, u64),
    network_id: NetworkId,
    leases: Vec<(Mac, IpAddr, Lease)>,
}

/// The reporter thread's state.
pub(crate) struct LeaseReporter {
    dir: PathBuf,
    host_id: HostId,
    outbox: Outbox,
    stops: Vec<Arc<AtomicBool>>,
    /// What the log holds as reported (and [`STATE_FILE`] says).
    reported: BTreeMap<LeaseKey, Lease>,
    /// Reported leases missing from the last read (see [`leases::Diff::missing`]).
    missing: BTreeSet<LeaseKey>,
    files: BTreeMap<PathBuf, Cached>,
    /// The last report failed: try again from [`Self::retry_at`].
    retry_at: Option<Instant>,
}

impl std::fmt::Debug for LeaseReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseReporter")
            .field("dir", &self.dir)
            .field("reported", &self.reported.len())
            .finish_non_exhaustive()
    }
}

fn now_s() -> i64 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

impl LeaseReporter {
    /// The reporter of the agent of `host_id`, whose servers keep their files under `dir`; it
    /// runs until one of `stops` is set.
    pub(crate) fn new(dir: PathBuf, host_id: HostId, outbox: Outbox, stops: Vec<Arc<AtomicBool>>) -> LeaseReporter {
        let reported = load(&dir.join(STATE_FILE));
        LeaseReporter {
            dir,
            host_id,
            outbox,
            stops,
            reported,
            missing: BTreeSet::new(),
            files: BTreeMap::new(),
            retry_at: None,
        }
    }

    fn stopping(&self) -> bool {
        self.stops.iter().any(|stop| stop.load(Ordering::SeqCst))
    }

    /// Reads and reports until asked to stop.
    pub(crate) fn run(mut self) {
        tracing::debug!(dir = %self.dir.display(), reported = self.reported.len(), "Lease reporter starting.");
        let mut first = true;
        while !self.stopping() {
            let changed = self.read_files();
            let now_s = now_s();
            let waiting = self.retry_at.is_some_and(|at| Instant::now() < at);
            let expiry_due = leases::next_expiry_s(&self.reported).is_some_and(|expires| expires <= now_s);
            let due = first || changed || self.retry_at.is_some() || expiry_due || !self.missing.is_empty();
            if due && !waiting {
                first = false;
                self.report(now_s);
            }
            let deadline = Instant::now() + POLL_INTERVAL;
            while !self.stopping() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Looks at every lease file, reading those that changed; answers whether any did (or came or
    /// went).
    fn read_files(&mut self) -> bool {
        let mut changed = false;
        let mut seen = BTreeSet::new();
        for (network_id, path) in lease_files(&self.dir) {
            let Ok(metadata) = fs::metadata(&path) else { continue };
            let modified = metadata.modified().unwrap_or(UNIX_EPOCH);
            let stamp = (metadata.len(), modified, std::os::unix::fs::MetadataExt::ino(&metadata));
            seen.insert(path.clone());
            let recent = modified.elapsed().map_or(true, |age| age < RECENT);
            if !recent && self.files.get(&path).is_some_and(|cached| cached.stamp == stamp) {
                continue;
            }
            let Ok(text) = fs::read_to_string(&path) else { continue };
            let mut file = leases::parse_lease_file(&text);
            if file.skipped > 0 {
                tracing::debug!(path = %path.display(), skipped = file.skipped, "Lease lines naming no Ethernet MAC were skipped.");
            }
            if !file.by_address.is_empty() {
                let served = served_addresses(path.parent().unwrap_or(&self.dir));
                for (ip, lease) in std::mem::take(&mut file.by_address) {
                    match served.get(&ip) {
                        Some(mac) => file.leases.push((*mac, ip, lease)),
                        None => {
                            tracing::debug!(path = %path.display(), %ip, "A DHCPv6 lease of an address no host line holds was skipped.")
                        }
                    }
                }
            }
            let cached = Cached { stamp, network_id, leases: file.leases };
            let same = self.files.get(&path).is_some_and(|old| old.leases == cached.leases);
            changed |= !same;
            self.files.insert(path, cached);
        }
        let before = self.files.len();
        self.files.retain(|path, _| seen.contains(path));
        changed || self.files.len() != before
    }

    /// Every lease the files hold now; one held by two shards (a host moved between them) counts
    /// with its later expiry.
    fn current(&self) -> BTreeMap<LeaseKey, Lease> {
        let mut current: BTreeMap<LeaseKey, Lease> = BTreeMap::new();
        for cached in self.files.values() {
            for (mac, ip, lease) in &cached.leases {
                let key = (cached.network_id, *mac, *ip);
                let later = |held: &Lease| match (held.expires_s, lease.expires_s) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(held), Some(new)) => new > held,
                };
                if current.get(&key).is_none_or(later) {
                    current.insert(key, lease.clone());
                }
            }
        }
        current
    }

    fn report(&mut self, now_s: i64) {
        let diff = leases::diff(&self.reported, &self.current(), now_s, &self.missing);
        let mut missing = diff.missing;
        for batch in diff.events.chunks(MAX_BATCH) {
            if !self.publish(batch) {
                // Released leases stay confirmed missing for the retry.
                let unsent = diff.events.iter().filter(|event| event.change == LeaseChange::Released);
                missing.extend(unsent.map(|event| event.key));
                self.retry_at = Some(Instant::now() + RETRY_INTERVAL);
                self.missing = missing;
                return;
            }
            leases::apply(&mut self.reported, batch);
            if let Err(error) = save(&self.dir.join(STATE_FILE), &self.reported) {
                // The events are in the log: a crash now reports them again under the same ids.
                tracing::warn!(error = %error, "Cannot record the reported leases.");
            }
        }
        self.retry_at = None;
        self.missing = missing;
    }

    /// Appends `events` through the outbox and waits for its answer; answers whether the log
    /// took them.
    fn publish(&self, events: &[LeaseEvent]) -> bool {
        let observed_at = outbox::now();
        let records = events.iter().map(|event| self.event(event, observed_at)).collect();
        let answer = self.outbox.observed(records);
        loop {
            match answer.recv_timeout(Duration::from_millis(100)) {
                Ok(accepted) => {
                    if accepted {
                        for event in events {
                            let (network_id, mac, ip) = event.key;
                            tracing::debug!(network = %network_id, %mac, %ip, change = ?event.change, "Reported a lease event.");
                        }
                        tracing::info!(events = events.len(), "Reported lease events.");
                    }
                    return accepted;
                }
                Err(RecvTimeoutError::Disconnected) => return false,
                Err(RecvTimeoutError::Timeout) if self.stopping() => return false,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn event(&self, event: &LeaseEvent, observed_at: Timestamp) -> (ipam_core::EventId, Event) {
        let (network_id, mac, ip) = event.key;
        let ended = matches!(event.change, LeaseChange::Released | LeaseChange::Expired);
        let observed = LeaseObserved {
            network_id,
            host_id: self.host_id,
            mac,
            ip,
            observed_at,
            expires_at: if ended {
                None
            } else {
                event.lease.expires_s.map(|expires| Timestamp::from_unix_ms(expires.saturating_mul(1000)))
            },
            hostname: event.lease.hostname.clone(),
            client_id: event.lease.client_id.clone(),
        };
        let id = outbox::lease_event_id(self.host_id, event.change, event.key, event.lease.expires_s);
        let event = match event.change {
            LeaseChange::Granted => Event::LeaseGranted(observed),
            LeaseChange::Renewed => Event::LeaseRenewed(observed),
            LeaseChange::Released => Event::LeaseReleased(observed),
            LeaseChange::Expired => Event::LeaseExpired(observed),
        };
        (id, event)
    }
}

/// The lease files under `dir`, with the network each belongs to.
fn lease_files(dir: &Path) -> Vec<(NetworkId, PathBuf)> {
    let mut files = Vec::new();
    let Ok(networks) = fs::read_dir(dir) else { return files };
    for network in networks.flatten() {
        let Some(network_id) = network.file_name().to_str().and_then(|name| name.parse::<NetworkId>().ok()) else {
            continue;
        };
        let Ok(shards) = fs::read_dir(network.path()) else { continue };
        for shard in shards.flatten() {
            if shard.file_name().to_string_lossy().starts_with("shard-") {
                files.push((network_id, shard.path().join("leases")));
            }
        }
    }
    files.sort();
    files
}

/// Which MAC each address is served to by the shard whose directory is `shard`: its base hosts
/// file, then its hosts directory's files in name order (the order the backend wrote them).
fn served_addresses(shard: &Path) -> BTreeMap<IpAddr, Mac> {
    let mut texts = vec![fs::read_to_string(shard.join("hosts")).unwrap_or_default()];
    if let Ok(entries) = fs::read_dir(shard.join("hosts.d")) {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        paths.sort();
        texts.extend(paths.iter().map(|path| fs::read_to_string(path).unwrap_or_default()));
    }
    leases::host_addresses(texts.iter().map(String::as_str))
}

/// What an earlier run reported; nothing when there is no state file or it cannot be read (the
/// leases still held are then reported again, under the ids they had).
fn load(path: &Path) -> BTreeMap<LeaseKey, Lease> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(error) => {
            tracing::warn!(path = %path.display(), error = %error, "Cannot read the reported leases; reporting every lease again.");
            return BTreeMap::new();
        }
    };
    match serde_json::from_str::<State>(&text) {
        Ok(state) => state.leases.into_iter().map(|held| ((held.network_id, held.mac, held.ip), held.lease)).collect(),
        Err(error) => {
            tracing::warn!(path = %path.display(), error = %error, "Unreadable reported leases; reporting every lease again.");
            BTreeMap::new()
        }
    }
}

/// Writes `reported` to `path` atomically and durably (a temporary file, synced, renamed).
fn save(path: &Path, reported: &BTreeMap<LeaseKey, Lease>) -> std::io::Result<()> {
    let state = State {
        leases: reported
            .iter()
            .map(|(&(network_id, mac, ip), lease)| ReportedLease { network_id, mac, ip, lease: lease.clone() })
            .collect(),
    };
    let temp = path.with_extension("tmp");
    let mut file = fs::File::create(&temp)?;
    file.write_all(&serde_json::to_vec(&state).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ipam_core::{Envelope, Topic};
    use ipam_log::{EventLog, MemoryLog};
    use ipam_runtime::Topics;

    use super::*;

    const HOST: HostId = HostId::from_u128(0x40);
    const NETWORK: NetworkId = NetworkId::from_u128(0x41);

    /// Every lease event in the log, as `type MAC IP id`, in order.
    fn lease_events(log: &dyn EventLog, topics: &Topics) -> Vec<String> {
        let topic = topics.name(Topic::Networks);
        let mut events = Vec::new();
        for partition in 0..log.partition_count(&topic).unwrap() {
            for record in log.read(&topic, partition, 0, usize::MAX, Duration::ZERO).unwrap() {
                let envelope = Envelope::decode(&record.value).unwrap();
                let (Event::LeaseGranted(lease)
                | Event::LeaseRenewed(lease)
                | Event::LeaseReleased(lease)
                | Event::LeaseExpired(lease)) = &envelope.event
                else {
                    continue;
                };
                assert_eq!((lease.host_id, lease.network_id), (HOST, NETWORK));
                events.push(format!("{} {} {} {}", envelope.event.type_name(), lease.mac, lease.ip, envelope.id));
            }
        }
        events
    }

    /// One poll of a reporter: read the files, report.
    fn poll(reporter: &mut LeaseReporter, now_s: i64) {
        reporter.read_files();
        reporter.report(now_s);
    }

    #[test]
    fn a_restarted_reporter_neither_repeats_nor_loses_what_changed_while_it_was_away() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
        let topics = Topics::new("", 1);
        log.create_topics(&topics.specs()).unwrap();
        let (outbox, writer) = outbox::spawn_writer(Arc::clone(&log), topics.clone(), HOST).unwrap();
        let shard = dir.path().join(NETWORK.to_string()).join("shard-00");
        fs::create_dir_all(&shard).unwrap();
        let leases = shard.join("leases");
        let reporter = || LeaseReporter::new(dir.path().to_owned(), HOST, outbox.clone(), Vec::new());

        fs::write(&leases, "1000 52:54:00:00:00:01 10.0.0.1 vm-1 *\n1000 52:54:00:00:00:02 10.0.0.2 * *\n").unwrap();
        let mut first = reporter();
        poll(&mut first, 500);
        assert_eq!(lease_events(&*log, &topics).len(), 2, "{:?}", lease_events(&*log, &topics));

        // Away: the first is renewed, the second released, a third granted.
        drop(first);
        fs::write(&leases, "1100 52:54:00:00:00:01 10.0.0.1 vm-1 *\n1100 52:54:00:00:00:03 10.0.0.3 * *\n").unwrap();
        let mut second = reporter();
        poll(&mut second, 600);
        // The release waits for a second read.
        poll(&mut second, 600);
        poll(&mut second, 600);
        // Restarted again with nothing changed: nothing is reported.
        drop(second);
        let mut third = reporter();
        poll(&mut third, 600);
        // Past their expiry, with dnsmasq away and its file unchanged.
        poll(&mut third, 1100);
        let events = lease_events(&*log, &topics);
        let kinds: Vec<&str> = events.iter().map(|event| event.rsplit_once(' ').unwrap().0).collect();
        assert_eq!(
            kinds,
            [
                "ipam.lease.granted.v1 52:54:00:00:00:01 10.0.0.1",
                "ipam.lease.granted.v1 52:54:00:00:00:02 10.0.0.2",
                "ipam.lease.renewed.v1 52:54:00:00:00:01 10.0.0.1",
                "ipam.lease.granted.v1 52:54:00:00:00:03 10.0.0.3",
                "ipam.lease.released.v1 52:54:00:00:00:02 10.0.0.2",
                "ipam.lease.expired.v1 52:54:00:00:00:01 10.0.0.1",
                "ipam.lease.expired.v1 52:54:00:00:00:03 10.0.0.3",
            ]
        );
        let ids: BTreeSet<&str> = events.iter().map(|event| event.rsplit_once(' ').unwrap().1).collect();
        assert_eq!(ids.len(), events.len(), "every event has an id of its own");

        // A lost state file reports the leases still held again, under the ids they had.
        fs::write(&leases, "1000 52:54:00:00:00:01 10.0.0.1 vm-1 *\n").unwrap();
        fs::remove_file(dir.path().join(STATE_FILE)).unwrap();
        let mut fourth = reporter();
        poll(&mut fourth, 500);
        let again = lease_events(&*log, &topics);
        assert_eq!(again.last(), events.first(), "the same event, id and all");

        outbox.shutdown();
        writer.join().unwrap();
    }

    #[test]
    fn the_reported_leases_survive_a_save_and_load_and_garbage_loads_as_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let reported = BTreeMap::from([
            (
                (NetworkId::from_u128(1), "52:54:00:00:00:01".parse().unwrap(), "10.0.0.1".parse().unwrap()),
                Lease { expires_s: Some(100), hostname: Some("vm".to_owned()), client_id: None },
            ),
            (
                (NetworkId::from_u128(1), "52:54:00:00:00:02".parse().unwrap(), "2001:db8::2".parse().unwrap()),
                Lease { expires_s: None, hostname: None, client_id: Some("0001".to_owned()) },
            ),
        ]);
        save(&path, &reported).unwrap();
        assert_eq!(load(&path), reported);
        fs::write(&path, "{not json").unwrap();
        assert!(load(&path).is_empty());
        assert!(load(&dir.path().join("absent")).is_empty());
    }

    #[test]
    fn lease_files_are_found_per_network_and_shard_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let network = NetworkId::from_u128(7);
        for shard in ["shard-00", "shard-01"] {
            fs::create_dir_all(dir.path().join(network.to_string()).join(shard)).unwrap();
        }
        fs::create_dir_all(dir.path().join("not-a-network").join("shard-00")).unwrap();
        fs::write(dir.path().join(STATE_FILE), "{}").unwrap();
        let files: Vec<String> = lease_files(dir.path())
            .into_iter()
            .map(|(id, path)| format!("{id} {}", path.strip_prefix(dir.path()).unwrap().display()))
            .collect();
        assert_eq!(
            files,
            [format!("{network} {network}/shard-00/leases"), format!("{network} {network}/shard-01/leases")]
        );
    }
}
