//! The vNIC's real state in the read model: reserved → served (a DHCP server of the network holds
//! its line) → leased (a guest took the address), with the time of each step, and what the
//! metrics say of it (reservation → lease latency, unleased vNICs, lease conflicts).
//!
//! It is a part of the read model's pure fold, kept in its own file because it follows its own
//! facts:
//! - *reserved* is the `ipam.reservation.added.v1` of the vNIC, with the record's offset in its
//!   network's `ipam.reservations` partition;
//! - *served* is the first `ipam.dhcp_server.synced.v1` (on `ipam.hosts`) of a current server of
//!   the network (the host and epoch placement assigned) whose `reservations_offset` is beyond the
//!   reservation's offset: that server's dnsmasq holds the vNIC's line. Synced marks and
//!   reservations are on different topics, read in no fixed order, so a reservation read after a
//!   mark that covers it is served at that mark's time;
//! - *leased* comes from the allocator's `ipam.vnic.lease_changed.v1`, which it writes only for a
//!   lease that matches the vNIC's reservation (MAC and address), on the same partition as the
//!   reservation, so no matching is repeated here. A released or expired lease takes the vNIC back
//!   to served (or reserved).
//!
//! A dual-stack vNIC holds two reservations, one per family; each goes its own way (the guest's
//! DHCPv4 and DHCPv6 clients lease apart), so the states are kept per (vNIC, family), and the
//! metrics count reservations.
//!
//! Times are the records' times (the log's), so the histogram of reservation → lease measures from
//! the input that reserved (its `time`) to the lease observation's record.

use std::collections::BTreeMap;

use ipam_core::event::{LeaseChange, LeaseConflictKind, VnicLeaseChanged, VnicUnleased};
use ipam_core::{HostId, IpFamily, NetworkId, Timestamp, VnicId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Upper bounds of the reservation → lease histogram's buckets, in seconds.
pub const LEASE_LATENCY_BUCKETS: [f64; 12] =
    [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

/// Where a vNIC with a reservation is on its way to a guest that uses the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VnicState {
    /// IPAM reserved the address; no DHCP server is known to serve it yet.
    Reserved,
    /// A current DHCP server of the network serves the reservation.
    Served,
    /// A guest holds a lease of the reserved address.
    Leased,
}

impl VnicState {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            VnicState::Reserved => "reserved",
            VnicState::Served => "served",
            VnicState::Leased => "leased",
        }
    }
}

/// The steps of a vNIC's reservation, with their times (the log's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct VnicProgress {
    #[serde(skip)]
    pub state: VnicState,
    pub reserved_at: Timestamp,
    /// When a current DHCP server of the network first served the reservation; null until then.
    pub served_at: Option<Timestamp>,
    /// When the guest's current lease began; null while no lease is held.
    pub leased_at: Option<Timestamp>,
    /// The lease the guest holds, while it holds one.
    pub lease: Option<LeaseView>,
    /// When the allocator reported the vNIC unleased (`ipam.vnic.unleased.v1`), while it still
    /// holds no lease; null otherwise.
    pub unleased_reported_at: Option<Timestamp>,
}

/// A guest's lease, as its host agent last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema, Deserialize)]
pub struct LeaseView {
    /// The host whose DHCP server holds the lease.
    pub host_id: HostId,
    /// When the lease ends unless renewed; null for an infinite lease.
    pub expires_at: Option<Timestamp>,
    /// The last grant or renewal seen (the agent's clock).
    pub observed_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Progress {
    network_id: NetworkId,
    reserved_at: Timestamp,
    /// The reservation's offset in its network's `ipam.reservations` partition, when known.
    offset: Option<u64>,
    served_at: Option<Timestamp>,
    leased_at: Option<Timestamp>,
    lease: Option<LeaseView>,
    /// Whether a lease was seen during this reservation (the latency is measured once).
    ever_leased: bool,
    unleased_reported_at: Option<Timestamp>,
}

impl Progress {
    fn state(&self) -> VnicState {
        match (&self.lease, self.served_at) {
            (Some(_), _) => VnicState::Leased,
            (None, Some(_)) => VnicState::Served,
            (None, None) => VnicState::Reserved,
        }
    }
}

/// The latest synced mark of one host's server of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Synced {
    epoch: u64,
    reservations_offset: u64,
    time: Timestamp,
}

/// A histogram of seconds, with [`LEASE_LATENCY_BUCKETS`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Observations at or below each bound (not cumulative).
    pub counts: [u64; LEASE_LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(bucket) = LEASE_LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.counts[bucket] += 1;
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

/// One reservation of a vNIC: a vNIC holds at most one per family.
pub type ReservationKey = (VnicId, IpFamily);

/// See the module documentation.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct LeaseStates {
    #[serde(deserialize_with = "crate::bulk::map")]
    vnics: BTreeMap<ReservationKey, Progress>,
    /// Per network, the reservations not served yet, by their offset.
    #[serde(deserialize_with = "crate::bulk::nested_map")]
    unserved: BTreeMap<NetworkId, BTreeMap<u64, ReservationKey>>,
    /// Per network and host, the server's latest synced mark.
    synced: BTreeMap<NetworkId, BTreeMap<HostId, Synced>>,
    latency: LatencyHistogram,
    /// Per network and kind (its wire name).
    conflicts: BTreeMap<(NetworkId, String), u64>,
    /// Reservations of vNICs per network and state, and per network those reported unleased that
    /// still hold no lease: kept as each vNIC changes, so that a `/metrics` scrape, which reads them under the
    /// read model's lock, costs the number of networks rather than a walk over every vNIC.
    state_counts: BTreeMap<(NetworkId, VnicState), usize>,
    unleased_counts: BTreeMap<NetworkId, usize>,
}

/// Adds one to `key`'s count, or takes one away (dropping a count that reaches zero).
fn tally<K: Ord>(counts: &mut BTreeMap<K, usize>, key: K, add: bool) {
    if add {
        *counts.entry(key).or_default() += 1;
    } else if let std::collections::btree_map::Entry::Occupied(mut entry) = counts.entry(key) {
        *entry.get_mut() -= 1;
        if *entry.get() == 0 {
            entry.remove();
        }
    }
}

impl LeaseStates {
    /// Counts `key` in (or out of) the live counts, as it is now.
    fn count(&mut self, key: ReservationKey, add: bool) {
        let Some(progress) = self.vnics.get(&key) else { return };
        tally(&mut self.state_counts, (progress.network_id, progress.state()), add);
        if progress.unleased_reported_at.is_some() {
            tally(&mut self.unleased_counts, progress.network_id, add);
        }
    }

    /// Changes a reservation's progress, keeping the live counts right.
    fn update(&mut self, key: ReservationKey, change: impl FnOnce(&mut Progress)) {
        self.count(key, false);
        if let Some(progress) = self.vnics.get_mut(&key) {
            change(progress);
        }
        self.count(key, true);
    }

    /// A vNIC got a reservation of a family (a new one replaces what was known of an older one of
    /// that family). `current_servers` are the network's assigned servers (host, epoch), to find a
    /// synced mark already read that covers it.
    pub fn reserved(
        &mut self,
        key: ReservationKey,
        network_id: NetworkId,
        offset: Option<u64>,
        time: Timestamp,
        current_servers: &[(HostId, u64)],
    ) {
        self.released(key);
        let served_at = offset.and_then(|offset| {
            let synced = self.synced.get(&network_id)?;
            current_servers
                .iter()
                .filter_map(|(host_id, epoch)| synced.get(host_id).filter(|mark| mark.epoch == *epoch))
                .filter(|mark| mark.reservations_offset > offset)
                .map(|mark| mark.time)
                .min()
        });
        if let (Some(offset), None) = (offset, served_at) {
            self.unserved.entry(network_id).or_default().insert(offset, key);
        }
        let progress = Progress {
            network_id,
            reserved_at: time,
            offset,
            served_at,
            leased_at: None,
            lease: None,
            ever_leased: false,
            unleased_reported_at: None,
        };
        self.vnics.insert(key, progress);
        self.count(key, true);
    }

    /// A vNIC's reservation of a family ended.
    pub fn released(&mut self, key: ReservationKey) {
        self.count(key, false);
        let Some(progress) = self.vnics.remove(&key) else { return };
        if let (Some(offset), Some(unserved)) = (progress.offset, self.unserved.get_mut(&progress.network_id)) {
            unserved.remove(&offset);
            if unserved.is_empty() {
                self.unserved.remove(&progress.network_id);
            }
        }
    }

    /// A host's server of a network applied every reservation before `reservations_offset`.
    /// `current` says whether placement assigned that host the network with this epoch: a mark of
    /// another assignment serves nothing.
    pub fn synced(
        &mut self,
        network_id: NetworkId,
        host_id: HostId,
        epoch: u64,
        reservations_offset: u64,
        time: Timestamp,
        current: bool,
    ) {
        if !current {
            return;
        }
        let marks = self.synced.entry(network_id).or_default();
        let mark = marks.entry(host_id).or_insert(Synced { epoch, reservations_offset, time });
        if mark.epoch < epoch || (mark.epoch == epoch && mark.reservations_offset <= reservations_offset) {
            *mark = Synced { epoch, reservations_offset, time };
        }
        let Some(unserved) = self.unserved.get_mut(&network_id) else { return };
        let still = unserved.split_off(&reservations_offset);
        let served = std::mem::replace(unserved, still);
        if unserved.is_empty() {
            self.unserved.remove(&network_id);
        }
        for key in served.into_values() {
            self.update(key, |progress| {
                progress.served_at.get_or_insert(time);
            });
        }
    }

    /// A server's assignment ended: its marks serve nothing more.
    pub fn unassigned(&mut self, network_id: NetworkId, host_id: HostId) {
        if let Some(marks) = self.synced.get_mut(&network_id) {
            marks.remove(&host_id);
            if marks.is_empty() {
                self.synced.remove(&network_id);
            }
        }
    }

    /// The allocator matched a lease to the vNIC's reservation (of the lease's family).
    pub fn lease_changed(&mut self, e: &VnicLeaseChanged, time: Timestamp) {
        let key = (e.vnic_id, IpFamily::of(e.ip));
        if self.vnics.get(&key).is_none_or(|progress| progress.network_id != e.network_id) {
            return;
        }
        let mut first_lease_after = None;
        self.update(key, |progress| match e.change {
            LeaseChange::Granted | LeaseChange::Renewed => {
                progress.leased_at.get_or_insert(time);
                progress.lease =
                    Some(LeaseView { host_id: e.host_id, expires_at: e.expires_at, observed_at: e.observed_at });
                progress.unleased_reported_at = None;
                if !progress.ever_leased {
                    progress.ever_leased = true;
                    let millis = time.unix_ms().saturating_sub(progress.reserved_at.unix_ms()).max(0);
                    first_lease_after = Some(millis as f64 / 1000.0);
                }
            }
            LeaseChange::Released | LeaseChange::Expired => {
                progress.leased_at = None;
                progress.lease = None;
            }
        });
        if let Some(seconds) = first_lease_after {
            self.latency.observe(seconds);
        }
    }

    /// The allocator reported a reservation of the vNIC unleased.
    pub fn unleased(&mut self, e: &VnicUnleased, time: Timestamp) {
        let key = (e.vnic_id, IpFamily::of(e.ip));
        let progress = self.vnics.get(&key).filter(|p| p.network_id == e.network_id);
        if progress.is_some_and(|p| p.lease.is_none()) {
            self.update(key, |progress| progress.unleased_reported_at = Some(time));
        }
    }

    /// The allocator reported a lease conflict.
    pub fn conflict(&mut self, network_id: NetworkId, kind: LeaseConflictKind) {
        let name = match kind {
            LeaseConflictKind::WrongAddress => "wrong_address",
            LeaseConflictKind::NoReservation => "no_reservation",
        };
        *self.conflicts.entry((network_id, name.to_owned())).or_default() += 1;
    }

    /// Where a vNIC's reservation of a family is, while it holds one.
    pub fn state(&self, key: ReservationKey) -> Option<VnicState> {
        self.vnics.get(&key).map(Progress::state)
    }

    /// A vNIC's progress in a family, while it holds a reservation of it.
    pub fn progress(&self, key: ReservationKey) -> Option<VnicProgress> {
        let progress = self.vnics.get(&key)?;
        Some(VnicProgress {
            state: progress.state(),
            reserved_at: progress.reserved_at,
            served_at: progress.served_at,
            leased_at: progress.leased_at,
            lease: progress.lease.clone(),
            unleased_reported_at: progress.unleased_reported_at,
        })
    }

    /// The reservation → first lease latencies seen so far.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Per network, the reservations reported unleased that still hold no lease.
    pub fn unleased_counts(&self) -> &BTreeMap<NetworkId, usize> {
        &self.unleased_counts
    }

    /// Lease conflicts reported, per network and kind.
    pub fn conflict_counts(&self) -> &BTreeMap<(NetworkId, String), u64> {
        &self.conflicts
    }

    /// Reservations of vNICs per state, per network (for the metrics).
    pub fn state_counts(&self) -> &BTreeMap<(NetworkId, VnicState), usize> {
        &self.state_counts
    }
}

/// The metrics' part of lease truth (issue 14), from the read model.
pub(crate) fn gauges(
    model: &crate::model::ReadModel,
    subnets: &[(NetworkId, crate::model::SubnetView)],
) -> crate::metrics::Gauges {
    let states = model.lease_states();
    crate::metrics::Gauges {
        lease_latency: states.latency().clone(),
        unleased: states.unleased_counts().iter().map(|(network, count)| (network.to_string(), *count)).collect(),
        lease_conflicts: states
            .conflict_counts()
            .iter()
            .map(|((network, kind), count)| (network.to_string(), kind.clone(), *count))
            .collect(),
        vnic_states: states
            .state_counts()
            .iter()
            .map(|((network, state), count)| (network.to_string(), state.name().to_owned(), *count))
            .collect(),
        forecasts: subnets
            .iter()
            .map(|(network, subnet)| {
                let forecast = &subnet.forecast;
                (
                    network.to_string(),
                    subnet.subnet_id.to_string(),
                    forecast.allocation_rate_per_hour,
                    forecast.full_in_seconds,
                )
            })
            .collect(),
        ..crate::metrics::Gauges::default()
    }
}

#[cfg(test)]
#[path = "lease_state_tests.rs"]
mod tests;
