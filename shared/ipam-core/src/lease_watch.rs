//! [`LeaseWatch`]: what one network's allocator knows of its guests' leases, beside the
//! reservations it decided. It exists because a reservation is only a promise: the issue of lease
//! truth is whether the guest took the address, and the allocator is the one place that reads the
//! host agents' lease observations (`ipam.lease.*`, on the network's `ipam.networks` partition) in
//! order with its own reservations, so matching a lease to its vNIC here is exact, and done once.
//!
//! It decides nothing about addresses: it only reports what it observed, as outputs on
//! `ipam.reservations`:
//! - `ipam.vnic.lease_changed.v1` when a lease matches a vNIC's reservation (same MAC, same
//!   address): granted or renewed marks the vNIC leased, released or expired (from the host that
//!   held it) clears the mark;
//! - `ipam.lease.conflict.v1` when a granted or renewed lease does not match: `wrong_address` when
//!   its MAC holds another address, `no_reservation` when its MAC holds none. Reported once per
//!   lease (MAC and address): renewals of a lease already reported say nothing until it ends;
//! - `ipam.vnic.unleased.v1` on a clock tick, once per reservation, when the reservation is older
//!   than the network's `unleased_after_s` and its vNIC holds no lease.
//!
//! Time is the log's: a reservation is dated with the network's last partition tick (`now`); one
//! made before the network's first tick is dated by the next tick, which delays its warning by at
//! most one tick interval. Nothing here reads a clock.
//!
//! Ticks cost what they report: the reservations that may be reported wait in an index ordered by
//! their date ([`LeaseWatch::tick`] walks only the expired front of it), not in a scan of every
//! vNIC. The watch is part of the allocator's state and snapshot; its own part of the snapshot
//! ([`LeaseWatchSnapshot`]) holds only what the reservations do not already say.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::event::{
    Event, LeaseChange, LeaseConflict, LeaseConflictKind, LeaseObserved, VnicLeaseChanged, VnicUnleased,
};
use crate::ids::{EventId, HostId, NetworkId, SubnetId, VmId, VnicId};
use crate::mac::Mac;
use crate::machine::{InvariantViolation, ensure};
use crate::time::Timestamp;

/// A vNIC's reservation, as the watch needs it to match leases and to describe a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    pub subnet_id: SubnetId,
    pub vm_id: VmId,
    pub mac: Mac,
    pub ip: IpAddr,
}

/// One watched reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Watched {
    reserved: Reserved,
    /// The log's time of the reservation; `None` until the network's first tick dates it.
    reserved_at: Option<Timestamp>,
    /// The host whose DHCP server holds the guest's lease of the reserved address, while it does.
    leased_on: Option<HostId>,
    /// Whether `ipam.vnic.unleased.v1` was raised for this reservation (once per reservation).
    reported: bool,
}

impl Watched {
    /// Whether a tick may still report it: dated, not leased, not reported.
    fn waiting_since(&self) -> Option<Timestamp> {
        if self.leased_on.is_some() || self.reported { None } else { self.reserved_at }
    }
}

/// See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseWatch {
    vnics: BTreeMap<VnicId, Watched>,
    /// The vNIC of each watched MAC (a vNIC's MAC is unique on its network).
    by_mac: BTreeMap<Mac, VnicId>,
    /// The reservations a tick may report (dated, not leased, not reported), by date.
    waiting: BTreeSet<(Timestamp, VnicId)>,
    /// Reservations made before the network's first tick, to be dated by the next one.
    undated: BTreeSet<VnicId>,
    /// Leases reported in conflict, until they are released or expire.
    conflicts: BTreeSet<(Mac, IpAddr)>,
}

/// The watch's own part of its network's snapshot: per vNIC, what its reservation does not say.
/// Absent from snapshots written before the watch existed: every reservation then restores
/// undated, unleased and unreported (dated by the next tick).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseWatchSnapshot {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    vnics: Vec<WatchedSnapshot>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    conflicts: Vec<(Mac, IpAddr)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WatchedSnapshot {
    vnic_id: VnicId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reserved_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    leased_on: Option<HostId>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    reported: bool,
}

impl LeaseWatchSnapshot {
    /// Whether it says nothing (no reservation watched, no conflict): left out of snapshots.
    pub fn is_empty(&self) -> bool {
        self.vnics.is_empty() && self.conflicts.is_empty()
    }
}

impl LeaseWatch {
    pub fn new() -> LeaseWatch {
        LeaseWatch::default()
    }

    /// How many reservations are watched.
    pub fn len(&self) -> usize {
        self.vnics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vnics.is_empty()
    }

    /// Whether the vNIC's guest holds a lease of its reserved address, and on which host.
    pub fn leased_on(&self, vnic_id: VnicId) -> Option<HostId> {
        self.vnics.get(&vnic_id)?.leased_on
    }

    /// A vNIC got a reservation at the network's `now` (`None` before the network's first tick).
    /// A vNIC already watched is watched afresh: a new reservation is a new promise.
    pub fn reserved(&mut self, vnic_id: VnicId, reserved: Reserved, now: Option<Timestamp>) {
        self.released(vnic_id);
        let watched = Watched { reserved, reserved_at: now, leased_on: None, reported: false };
        self.insert(vnic_id, watched);
    }

    /// A vNIC's reservation ended; nothing more is watched of it.
    pub fn released(&mut self, vnic_id: VnicId) {
        let Some(watched) = self.vnics.remove(&vnic_id) else { return };
        self.by_mac.remove(&watched.reserved.mac);
        self.undated.remove(&vnic_id);
        if let Some(since) = watched.waiting_since() {
            self.waiting.remove(&(since, vnic_id));
        }
    }

    /// Everything is forgotten (the network was removed; its reservations are gone).
    pub fn clear(&mut self) {
        *self = LeaseWatch::default();
    }

    fn insert(&mut self, vnic_id: VnicId, watched: Watched) {
        self.by_mac.insert(watched.reserved.mac, vnic_id);
        match watched.reserved_at {
            None => {
                self.undated.insert(vnic_id);
            }
            Some(_) => {
                if let Some(since) = watched.waiting_since() {
                    self.waiting.insert((since, vnic_id));
                }
            }
        }
        self.vnics.insert(vnic_id, watched);
    }

    /// Changes one watched vNIC, keeping the waiting index in step.
    fn edit(&mut self, vnic_id: VnicId, change: impl FnOnce(&mut Watched)) {
        let Some(watched) = self.vnics.get_mut(&vnic_id) else { return };
        if let Some(since) = watched.waiting_since() {
            self.waiting.remove(&(since, vnic_id));
        }
        change(watched);
        if let Some(since) = watched.waiting_since() {
            self.waiting.insert((since, vnic_id));
        }
    }

    /// A host agent observed a lease change (`ipam.lease.*` of this network): answers the echo of
    /// a lease that matches its vNIC's reservation, a conflict, or nothing (an end of a lease the
    /// watch does not hold, or a renewal of a conflict already reported).
    pub fn observe(&mut self, change: LeaseChange, lease: &LeaseObserved, cause: EventId) -> Option<Event> {
        let holder = self.by_mac.get(&lease.mac).map(|vnic_id| (*vnic_id, self.vnics[vnic_id]));
        let ends = matches!(change, LeaseChange::Released | LeaseChange::Expired);
        match holder {
            Some((vnic_id, watched)) if watched.reserved.ip == lease.ip => {
                // A lease that conflicted before its reservation came is the vNIC's now.
                self.conflicts.remove(&(lease.mac, lease.ip));
                if ends {
                    if watched.leased_on != Some(lease.host_id) {
                        return None; // Another server's lease (or one already ended) ended.
                    }
                    self.edit(vnic_id, |watched| watched.leased_on = None);
                } else {
                    self.edit(vnic_id, |watched| watched.leased_on = Some(lease.host_id));
                }
                let Reserved { subnet_id, vm_id, mac, ip } = watched.reserved;
                Some(Event::VnicLeaseChanged(VnicLeaseChanged {
                    network_id: lease.network_id,
                    subnet_id,
                    vnic_id,
                    vm_id,
                    mac,
                    ip,
                    host_id: lease.host_id,
                    change,
                    observed_at: lease.observed_at,
                    expires_at: if ends { None } else { lease.expires_at },
                    cause,
                }))
            }
            _ if ends => {
                self.conflicts.remove(&(lease.mac, lease.ip));
                None
            }
            holder => {
                if !self.conflicts.insert((lease.mac, lease.ip)) {
                    return None; // Reported when it began; a renewal says nothing new.
                }
                let (kind, vnic_id, reserved_ip) = match holder {
                    Some((vnic_id, watched)) => {
                        (LeaseConflictKind::WrongAddress, Some(vnic_id), Some(watched.reserved.ip))
                    }
                    None => (LeaseConflictKind::NoReservation, None, None),
                };
                Some(Event::LeaseConflict(LeaseConflict {
                    network_id: lease.network_id,
                    host_id: lease.host_id,
                    mac: lease.mac,
                    leased_ip: lease.ip,
                    reserved_ip,
                    vnic_id,
                    kind,
                    cause,
                }))
            }
        }
    }

    /// The network's clock reached `now`: dates the reservations made before its first tick, and
    /// reports, oldest first, each reservation older than `unleased_after_s` whose vNIC holds no
    /// lease and was not reported yet.
    pub fn tick(&mut self, network_id: NetworkId, now: Timestamp, unleased_after_s: u32, cause: EventId) -> Vec<Event> {
        for vnic_id in std::mem::take(&mut self.undated) {
            if let Some(watched) = self.vnics.get_mut(&vnic_id) {
                watched.reserved_at = Some(now);
                if let Some(since) = watched.waiting_since() {
                    self.waiting.insert((since, vnic_id));
                }
            }
        }
        let after_ms = i64::from(unleased_after_s) * 1000;
        let mut outputs = Vec::new();
        while let Some(&(since, vnic_id)) = self.waiting.first() {
            if since.unix_ms().saturating_add(after_ms) > now.unix_ms() {
                break;
            }
            self.edit(vnic_id, |watched| watched.reported = true);
            let Reserved { subnet_id, vm_id, mac, ip } = self.vnics[&vnic_id].reserved;
            outputs.push(Event::VnicUnleased(VnicUnleased {
                network_id,
                subnet_id,
                vnic_id,
                vm_id,
                mac,
                ip,
                reserved_at: since,
                now,
                cause,
            }));
        }
        outputs
    }

    /// The watch's invariants against the network's vNIC reservations (`holdings`, every one):
    /// it watches exactly those, with the same subnet, VM, MAC and address; its MAC index, its
    /// waiting index and its undated set are what its entries say.
    pub fn check(
        &self,
        network_id: NetworkId,
        holdings: impl Iterator<Item = (VnicId, Reserved)>,
    ) -> Result<(), InvariantViolation> {
        let mut held = 0;
        for (vnic_id, reserved) in holdings {
            held += 1;
            let watched = self.vnics.get(&vnic_id);
            ensure(watched.is_some_and(|watched| watched.reserved == reserved), || {
                format!(
                    "network {network_id}: the lease watch has {watched:?} for vNIC {vnic_id}, which holds {reserved:?}"
                )
            })?;
        }
        ensure(held == self.vnics.len(), || {
            format!(
                "network {network_id}: the lease watch follows {} vNICs, {held} hold a reservation",
                self.vnics.len()
            )
        })?;
        let by_mac: BTreeMap<Mac, VnicId> = self.vnics.iter().map(|(id, w)| (w.reserved.mac, *id)).collect();
        ensure(by_mac == self.by_mac, || format!("network {network_id}: the lease watch's MAC index is stale"))?;
        let waiting: BTreeSet<(Timestamp, VnicId)> =
            self.vnics.iter().filter_map(|(id, w)| Some((w.waiting_since()?, *id))).collect();
        ensure(waiting == self.waiting, || format!("network {network_id}: the lease watch's waiting index is stale"))?;
        let undated: BTreeSet<VnicId> =
            self.vnics.iter().filter(|(_, w)| w.reserved_at.is_none()).map(|(id, _)| *id).collect();
        ensure(undated == self.undated, || format!("network {network_id}: the lease watch's undated set is stale"))
    }

    /// What the snapshot must keep beside the reservations.
    pub fn to_snapshot(&self) -> LeaseWatchSnapshot {
        LeaseWatchSnapshot {
            vnics: self
                .vnics
                .iter()
                .map(|(vnic_id, watched)| WatchedSnapshot {
                    vnic_id: *vnic_id,
                    reserved_at: watched.reserved_at,
                    leased_on: watched.leased_on,
                    reported: watched.reported,
                })
                .collect(),
            conflicts: self.conflicts.iter().copied().collect(),
        }
    }

    /// The watch of a snapshot, given the network's vNIC reservations (restored first). A
    /// reservation the snapshot does not mention restores undated; an entry for a vNIC that holds
    /// no reservation is an inconsistency (named in the error).
    pub fn from_snapshot(
        snapshot: LeaseWatchSnapshot,
        holdings: impl Iterator<Item = (VnicId, Reserved)>,
    ) -> Result<LeaseWatch, String> {
        let mut reservations: BTreeMap<VnicId, Reserved> = holdings.collect();
        let mut watch = LeaseWatch::new();
        for entry in snapshot.vnics {
            let reserved = reservations
                .remove(&entry.vnic_id)
                .ok_or_else(|| format!("the lease watch names vNIC {}, which holds no reservation", entry.vnic_id))?;
            let watched = Watched {
                reserved,
                reserved_at: entry.reserved_at,
                leased_on: entry.leased_on,
                reported: entry.reported,
            };
            watch.insert(entry.vnic_id, watched);
        }
        for (vnic_id, reserved) in reservations {
            watch.insert(vnic_id, Watched { reserved, reserved_at: None, leased_on: None, reported: false });
        }
        watch.conflicts = snapshot.conflicts.into_iter().collect();
        Ok(watch)
    }
}

#[cfg(test)]
#[path = "lease_watch_tests.rs"]
mod tests;
