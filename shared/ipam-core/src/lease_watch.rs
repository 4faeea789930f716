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
//! A dual-stack vNIC holds two reservations, one per family: each is watched on its own (a lease of
//! the vNIC's MAC is matched to the reservation of its address's family), so its IPv4 and IPv6
//! addresses are leased, and reported unleased, each in its own time.
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
use crate::net::IpFamily;
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

/// A watched reservation: a vNIC holds at most one per family.
type WatchKey = (VnicId, IpFamily);

/// See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseWatch {
    vnics: BTreeMap<WatchKey, Watched>,
    /// The vNIC of each watched MAC (a vNIC's MAC is unique on its network; a dual-stack vNIC's
    /// two reservations share it).
    by_mac: BTreeMap<Mac, VnicId>,
    /// The reservations a tick may report (dated, not leased, not reported), by date.
    waiting: BTreeSet<(Timestamp, WatchKey)>,
    /// Reservations made before the network's first tick, to be dated by the next one.
    undated: BTreeSet<WatchKey>,
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
    /// The family of the reservation watched. Absent from snapshots written before dual-stack
    /// vNICs, when a vNIC held one reservation: the entry is that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    family: Option<IpFamily>,
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

    /// Whether the vNIC's guest holds a lease of its reserved address of `family`, and on which
    /// host.
    pub fn leased_on(&self, vnic_id: VnicId, family: IpFamily) -> Option<HostId> {
        self.vnics.get(&(vnic_id, family))?.leased_on
    }

    /// A vNIC got a reservation at the network's `now` (`None` before the network's first tick).
    /// A reservation of the same family already watched is watched afresh: a new reservation is a
    /// new promise.
    pub fn reserved(&mut self, vnic_id: VnicId, reserved: Reserved, now: Option<Timestamp>) {
        let family = IpFamily::of(reserved.ip);
        self.released(vnic_id, family);
        let watched = Watched { reserved, reserved_at: now, leased_on: None, reported: false };
        self.insert((vnic_id, family), watched);
    }

    /// A vNIC's reservation of `family` ended; nothing more is watched of it.
    pub fn released(&mut self, vnic_id: VnicId, family: IpFamily) {
        let key = (vnic_id, family);
        let Some(watched) = self.vnics.remove(&key) else { return };
        if !self.vnics.contains_key(&(vnic_id, other_family(family))) {
            self.by_mac.remove(&watched.reserved.mac);
        }
        self.undated.remove(&key);
        if let Some(since) = watched.waiting_since() {
            self.waiting.remove(&(since, key));
        }
    }

    /// Everything is forgotten (the network was removed; its reservations are gone).
    pub fn clear(&mut self) {
        *self = LeaseWatch::default();
    }

    fn insert(&mut self, key: WatchKey, watched: Watched) {
        self.by_mac.insert(watched.reserved.mac, key.0);
        match watched.reserved_at {
            None => {
                self.undated.insert(key);
            }
            Some(_) => {
                if let Some(since) = watched.waiting_since() {
                    self.waiting.insert((since, key));
                }
            }
        }
        self.vnics.insert(key, watched);
    }

    /// Changes one watched reservation, keeping the waiting index in step.
    fn edit(&mut self, key: WatchKey, change: impl FnOnce(&mut Watched)) {
        let Some(watched) = self.vnics.get_mut(&key) else { return };
        if let Some(since) = watched.waiting_since() {
            self.waiting.remove(&(since, key));
        }
        change(watched);
        if let Some(since) = watched.waiting_since() {
            self.waiting.insert((since, key));
        }
    }

    /// A host agent observed a lease change (`ipam.lease.*` of this network): answers the echo of
    /// a lease that matches its vNIC's reservation, a conflict, or nothing (an end of a lease the
    /// watch does not hold, or a renewal of a conflict already reported).
    ///
    /// A lease is matched to the reservation of its address's family: a dual-stack vNIC's IPv4
    /// and IPv6 leases are each their own. A MAC whose vNIC holds no address of the lease's family
    /// holds no reservation for it.
    pub fn observe(&mut self, change: LeaseChange, lease: &LeaseObserved, cause: EventId) -> Option<Event> {
        let family = IpFamily::of(lease.ip);
        let holder =
            self.by_mac.get(&lease.mac).and_then(|vnic_id| Some((*vnic_id, *self.vnics.get(&(*vnic_id, family))?)));
        let ends = matches!(change, LeaseChange::Released | LeaseChange::Expired);
        match holder {
            Some((vnic_id, watched)) if watched.reserved.ip == lease.ip => {
                let key = (vnic_id, family);
                // A lease that conflicted before its reservation came is the vNIC's now.
                self.conflicts.remove(&(lease.mac, lease.ip));
                if ends {
                    if watched.leased_on != Some(lease.host_id) {
                        return None; // Another server's lease (or one already ended) ended.
                    }
                    self.edit(key, |watched| watched.leased_on = None);
                } else {
                    self.edit(key, |watched| watched.leased_on = Some(lease.host_id));
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
        for key in std::mem::take(&mut self.undated) {
            if let Some(watched) = self.vnics.get_mut(&key) {
                watched.reserved_at = Some(now);
                if let Some(since) = watched.waiting_since() {
                    self.waiting.insert((since, key));
                }
            }
        }
        let after_ms = i64::from(unleased_after_s) * 1000;
        let mut outputs = Vec::new();
        while let Some(&(since, key)) = self.waiting.first() {
            if since.unix_ms().saturating_add(after_ms) > now.unix_ms() {
                break;
            }
            self.edit(key, |watched| watched.reported = true);
            let vnic_id = key.0;
            let Reserved { subnet_id, vm_id, mac, ip } = self.vnics[&key].reserved;
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
            let watched = self.vnics.get(&(vnic_id, IpFamily::of(reserved.ip)));
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
        let by_mac: BTreeMap<Mac, VnicId> = self.vnics.iter().map(|(key, w)| (w.reserved.mac, key.0)).collect();
        ensure(by_mac == self.by_mac, || format!("network {network_id}: the lease watch's MAC index is stale"))?;
        ensure(self.vnics.iter().all(|(key, w)| IpFamily::of(w.reserved.ip) == key.1), || {
            format!("network {network_id}: the lease watch keys a reservation under the other family")
        })?;
        let waiting: BTreeSet<(Timestamp, WatchKey)> =
            self.vnics.iter().filter_map(|(id, w)| Some((w.waiting_since()?, *id))).collect();
        ensure(waiting == self.waiting, || format!("network {network_id}: the lease watch's waiting index is stale"))?;
        let undated: BTreeSet<WatchKey> =
            self.vnics.iter().filter(|(_, w)| w.reserved_at.is_none()).map(|(id, _)| *id).collect();
        ensure(undated == self.undated, || format!("network {network_id}: the lease watch's undated set is stale"))
    }

    /// What the snapshot must keep beside the reservations.
    pub fn to_snapshot(&self) -> LeaseWatchSnapshot {
        LeaseWatchSnapshot {
            vnics: self
                .vnics
                .iter()
                .map(|(&(vnic_id, family), watched)| WatchedSnapshot {
                    vnic_id,
                    family: Some(family),
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
    /// no reservation (of its family) is an inconsistency (named in the error).
    pub fn from_snapshot(
        snapshot: LeaseWatchSnapshot,
        holdings: impl Iterator<Item = (VnicId, Reserved)>,
    ) -> Result<LeaseWatch, String> {
        let mut reservations: BTreeMap<WatchKey, Reserved> =
            holdings.map(|(vnic_id, reserved)| ((vnic_id, IpFamily::of(reserved.ip)), reserved)).collect();
        let mut watched = Vec::with_capacity(reservations.len());
        for entry in snapshot.vnics {
            // An entry written before dual-stack vNICs names no family: its vNIC's one reservation.
            let family = entry.family.or_else(|| {
                let mut held = reservations.range((entry.vnic_id, IpFamily::Ipv4)..=(entry.vnic_id, IpFamily::Ipv6));
                held.next().map(|(key, _)| key.1)
            });
            let key = (entry.vnic_id, family.unwrap_or(IpFamily::Ipv4));
            let reserved = reservations.remove(&key).ok_or_else(|| {
                format!("the lease watch names vNIC {}, which holds no reservation of {}", key.0, key.1)
            })?;
            let entry = Watched {
                reserved,
                reserved_at: entry.reserved_at,
                leased_on: entry.leased_on,
                reported: entry.reported,
            };
            watched.push((key, entry));
        }
        let unwatched = reservations.into_iter();
        watched.extend(
            unwatched.map(|(key, reserved)| {
                (key, Watched { reserved, reserved_at: None, leased_on: None, reported: false })
            }),
        );
        Ok(LeaseWatch::of_watched(watched, snapshot.conflicts))
    }

    /// A watch of `watched`, as [`LeaseWatch::insert`] of each in turn would make it, with every
    /// map built in one pass (a restore holds a million reservations, and a million inserts into
    /// four maps were a tenth of it).
    fn of_watched(watched: Vec<(WatchKey, Watched)>, conflicts: Vec<(Mac, IpAddr)>) -> LeaseWatch {
        let by_mac = watched.iter().map(|(key, watched)| (watched.reserved.mac, key.0)).collect();
        let undated =
            watched.iter().filter(|(_, watched)| watched.reserved_at.is_none()).map(|(key, _)| *key).collect();
        let waiting = watched
            .iter()
            .filter(|(_, watched)| watched.reserved_at.is_some())
            .filter_map(|(key, watched)| Some((watched.waiting_since()?, *key)))
            .collect();
        let vnics = watched.into_iter().collect();
        LeaseWatch { vnics, by_mac, waiting, undated, conflicts: conflicts.into_iter().collect() }
    }
}

fn other_family(family: IpFamily) -> IpFamily {
    match family {
        IpFamily::Ipv4 => IpFamily::Ipv6,
        IpFamily::Ipv6 => IpFamily::Ipv4,
    }
}

#[cfg(test)]
#[path = "lease_watch_tests.rs"]
mod tests;
