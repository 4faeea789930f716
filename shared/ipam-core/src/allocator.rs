//! The allocator: one state machine per network that turns vNIC and DHCP-port lifecycle events into
//! reservations, and subnet definitions into activated subnets.
//!
//! Every handler checks everything before it changes anything, so a refused request leaves the state
//! exactly as it was (invariant 7) and yields one `ipam.request.rejected.v1`. Requests are idempotent:
//! a vNIC that comes up twice holds one reservation, and a down event for an owner that holds nothing
//! yields nothing.
//!
//! # Disabling IPAM
//! `ipam_enabled: false` on a network refuses new reservations (`ipam_disabled`) but keeps the ones
//! that exist, and they are released as their vNICs go down as usual. Disabling is often temporary
//! (maintenance, a switch to an external DHCP service); releasing would renumber running VMs when it
//! is turned back on. Placement stops the network's DHCP servers, so no guest is answered meanwhile.
//! Removing the network releases everything.
//!
//! # Replay
//! State is rebuilt from the machine's *inputs* (its partition of `ipam.networks`), not its outputs:
//! not every input leaves a trace in the outputs (network settings, an idempotent repeat), while the
//! machine is deterministic, so the same inputs rebuild the same state and, as a check, re-derive the
//! outputs already in the log. A [`Allocator::snapshot`] taken at an input offset shortens the replay
//! to the tail after it.
//!
//! # Retries
//! Each network's machine remembers the ids of its last [`INPUT_WINDOW`] inputs ([`RecentInputs`])
//! and ignores an input whose id it holds: a retry has no second effect and writes no output id
//! twice. The window survives the network's removal (the machine stays as a tombstone that holds
//! only the window), so a late retry of one of its requests is not answered `unknown_network` under
//! an id already used. An input about no network reaches no machine and has no effect anyway.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::event::{
    DhcpPortReleased, DhcpPortRequested, Envelope, Event, NetworkRemoved, NetworkUpserted, Owner, ReleaseReason,
    RequestRejected, ReservationAdded, ReservationRemoved, SubnetActivated, SubnetAdded, SubnetDeactivated,
    SubnetRemoved, VnicDown, VnicUp,
};
use crate::ids::{EventId, HostId, NetworkId, SubnetId, VmId, VnicId};
use crate::mac::Mac;
use crate::machine::{InvariantViolation, SnapshotError, StateMachine, ensure};
use crate::net::{SpecialBlock, SubnetSpec};
use crate::pool::{AddressPool, PoolError};
use crate::recent::{INPUT_WINDOW, RecentInputs};
use crate::rejection::{Rejection, RejectionCode};

/// The longest network name accepted.
pub const MAX_NAME_LEN: usize = 255;

/// Who holds a reservation, as the allocator indexes it: a vNIC holds one address, a host's DHCP
/// server one per subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum OwnerKey {
    Vnic(VnicId),
    DhcpPort(HostId, SubnetId),
}

/// One reservation, less its owner key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holding {
    subnet_id: SubnetId,
    ip: IpAddr,
    mac: Mac,
    /// The VM of a vNIC owner; `None` for a DHCP port.
    vm_id: Option<VmId>,
}

/// A network's settings as the engine last sent them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSettings {
    pub name: String,
    pub ipam_enabled: bool,
    pub servers_count: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Subnet {
    spec: SubnetSpec,
    pool: AddressPool,
    vnic_holdings: u32,
}

/// The allocator of one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAllocator {
    network_id: NetworkId,
    settings: Option<NetworkSettings>,
    subnets: BTreeMap<SubnetId, Subnet>,
    holdings: BTreeMap<OwnerKey, Holding>,
    macs: BTreeMap<Mac, MacUser>,
    /// The ids of the inputs this network's machine applied last; kept across the network's removal.
    recent_inputs: RecentInputs,
}

/// Who uses a MAC on the network. A vNIC's MAC is unique on its network; a host's DHCP server uses
/// its interface's one MAC for its address in every subnet, so it may hold several reservations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MacUser {
    Vnic(VnicId),
    DhcpServer { host_id: HostId, reservations: u32 },
}

impl MacUser {
    /// Whether `key` may reserve with a MAC this user already has.
    fn admits(self, key: OwnerKey) -> bool {
        matches!((self, key), (MacUser::DhcpServer { host_id, .. }, OwnerKey::DhcpPort(host, _)) if host_id == host)
    }
}

/// The part of a request that says what to reserve.
struct ReserveRequest {
    key: OwnerKey,
    subnet_id: SubnetId,
    mac: Mac,
    vm_id: Option<VmId>,
    requested_ip: Option<IpAddr>,
}

impl NetworkAllocator {
    pub fn new(network_id: NetworkId) -> NetworkAllocator {
        NetworkAllocator::with_input_window(network_id, INPUT_WINDOW)
    }

    /// A machine that remembers the ids of its last `input_window` inputs ([`INPUT_WINDOW`] in
    /// production; tests use small windows).
    fn with_input_window(network_id: NetworkId, input_window: usize) -> NetworkAllocator {
        NetworkAllocator {
            network_id,
            settings: None,
            subnets: BTreeMap::new(),
            holdings: BTreeMap::new(),
            macs: BTreeMap::new(),
            recent_inputs: RecentInputs::with_capacity(input_window),
        }
    }

    pub fn network_id(&self) -> NetworkId {
        self.network_id
    }

    pub fn settings(&self) -> Option<&NetworkSettings> {
        self.settings.as_ref()
    }

    /// Whether the machine holds no network (never upserted, or removed); it may still remember
    /// input ids.
    pub fn is_empty(&self) -> bool {
        self.settings.is_none() && self.subnets.is_empty() && self.holdings.is_empty()
    }

    /// The ids of the inputs applied last, oldest first.
    pub fn recent_inputs(&self) -> &RecentInputs {
        &self.recent_inputs
    }

    /// Applies one input and returns the outputs, in order. Events of other networks or of types
    /// the allocator does not handle yield nothing, and so does an input whose id is among the
    /// last [`INPUT_WINDOW`] this network applied (a retry): it changes nothing either.
    pub fn apply(&mut self, input: &Envelope) -> Vec<Event> {
        if input.event.network_id() != Some(self.network_id) {
            return Vec::new();
        }
        if !self.recent_inputs.record(input.id) {
            return Vec::new();
        }
        let cause = input.id;
        let result = match &input.event {
            Event::NetworkUpserted(e) => self.upsert_network(e),
            Event::NetworkRemoved(e) => Ok(self.remove_network(e, cause)),
            Event::SubnetAdded(e) => self.add_subnet(e, cause),
            Event::SubnetRemoved(e) => self.remove_subnet(e, cause),
            Event::VnicStarted(e) | Event::VnicPlugged(e) | Event::VnicLinked(e) => self.vnic_up(e, cause),
            Event::VnicStopped(e) | Event::VnicUnplugged(e) | Event::VnicUnlinked(e) => Ok(self.vnic_down(e, cause)),
            Event::DhcpPortRequested(e) => self.port_requested(e, cause),
            Event::DhcpPortReleased(e) => Ok(self.port_released(e, cause)),
            _ => Ok(Vec::new()),
        };
        result.unwrap_or_else(|rejection| {
            let (vnic_id, mac, subnet_id) = input.event.request_names();
            vec![Event::RequestRejected(RequestRejected {
                network_id: self.network_id,
                request_type: input.event.type_name().to_owned(),
                code: rejection.code,
                message: rejection.message,
                cause,
                vnic_id,
                mac,
                subnet_id,
                host_id: input.event.request_host(),
            })]
        })
    }

    fn upsert_network(&mut self, e: &NetworkUpserted) -> Result<Vec<Event>, Rejection> {
        if e.name.trim().is_empty() || e.name.len() > MAX_NAME_LEN {
            let message = format!("the network name must be 1 to {MAX_NAME_LEN} bytes and not blank");
            return Err(Rejection::new(RejectionCode::InvalidRequest, message));
        }
        self.settings = Some(NetworkSettings {
            name: e.name.clone(),
            ipam_enabled: e.ipam_enabled,
            servers_count: e.servers_count,
        });
        Ok(Vec::new())
    }

    fn remove_network(&mut self, e: &NetworkRemoved, cause: EventId) -> Vec<Event> {
        let mut outputs: Vec<Event> = std::mem::take(&mut self.holdings)
            .into_iter()
            .map(|(key, holding)| self.removed(key, holding, ReleaseReason::NetworkRemoved, cause))
            .collect();
        outputs.extend(std::mem::take(&mut self.subnets).into_keys().map(|subnet_id| {
            Event::SubnetDeactivated(SubnetDeactivated { network_id: e.network_id, subnet_id, cause })
        }));
        // Everything goes but the window of input ids, so a late retry is still recognised.
        self.settings = None;
        debug_assert!(self.macs.is_empty(), "every MAC user held a reservation, and all are released");
        self.macs.clear();
        outputs
    }

    fn require_network(&self) -> Result<&NetworkSettings, Rejection> {
        self.settings.as_ref().ok_or_else(|| {
            Rejection::new(RejectionCode::UnknownNetwork, format!("network {} is not known to IPAM", self.network_id))
        })
    }

    fn require_enabled(&self) -> Result<(), Rejection> {
        if self.require_network()?.ipam_enabled {
            Ok(())
        } else {
            Err(Rejection::new(RejectionCode::IpamDisabled, format!("IPAM is disabled on network {}", self.network_id)))
        }
    }

    fn add_subnet(&mut self, e: &SubnetAdded, cause: EventId) -> Result<Vec<Event>, Rejection> {
        self.require_network()?;
        let spec = SubnetSpec::new(
            e.cidr,
            e.gateway,
            e.dns_servers.clone(),
            e.ntp_servers.clone(),
            e.allocation_pools.clone(),
        )?;
        if let Some(existing) = self.subnets.get_mut(&e.subnet_id) {
            if existing.spec == spec {
                return Ok(Vec::new());
            }
            if !existing.spec.differs_only_in_options(&spec) {
                let message = format!(
                    "subnet {} exists as {} with gateway {}; only its DNS and NTP servers may change",
                    e.subnet_id, existing.spec.cidr, existing.spec.gateway
                );
                return Err(Rejection::new(RejectionCode::SubnetConflict, message));
            }
            existing.spec = spec;
            return Ok(vec![self.activated(e.subnet_id, cause)]);
        }
        if let Some((other_id, other)) = self.subnets.iter().find(|(_, other)| other.spec.cidr.overlaps(spec.cidr)) {
            let message = format!("{} overlaps subnet {other_id} ({}) of this network", spec.cidr, other.spec.cidr);
            return Err(Rejection::new(RejectionCode::OverlappingSubnet, message));
        }
        let pool = AddressPool::new(&spec);
        self.subnets.insert(e.subnet_id, Subnet { spec, pool, vnic_holdings: 0 });
        Ok(vec![self.activated(e.subnet_id, cause)])
    }

    fn activated(&self, subnet_id: SubnetId, cause: EventId) -> Event {
        let spec = &self.subnets[&subnet_id].spec;
        Event::SubnetActivated(SubnetActivated {
            network_id: self.network_id,
            subnet_id,
            cidr: spec.cidr,
            gateway: spec.gateway,
            dns_servers: spec.dns_servers.clone(),
            ntp_servers: spec.ntp_servers.clone(),
            allocation_pools: spec.allocation_pools.clone(),
            cause,
        })
    }

    fn remove_subnet(&mut self, e: &SubnetRemoved, cause: EventId) -> Result<Vec<Event>, Rejection> {
        self.require_network()?;
        let subnet = self.require_subnet(e.subnet_id)?;
        if subnet.vnic_holdings > 0 {
            let message = format!("subnet {} still holds {} vNIC reservations", e.subnet_id, subnet.vnic_holdings);
            return Err(Rejection::new(RejectionCode::SubnetInUse, message));
        }
        // DHCP servers' own addresses do not keep a subnet alive: they go with it.
        let ports: Vec<OwnerKey> = self
            .holdings
            .iter()
            .filter(|(key, holding)| matches!(key, OwnerKey::DhcpPort(..)) && holding.subnet_id == e.subnet_id)
            .map(|(key, _)| *key)
            .collect();
        let mut outputs: Vec<Event> =
            ports.into_iter().filter_map(|key| self.release(key, ReleaseReason::SubnetRemoved, cause)).collect();
        self.subnets.remove(&e.subnet_id);
        outputs.push(Event::SubnetDeactivated(SubnetDeactivated {
            network_id: self.network_id,
            subnet_id: e.subnet_id,
            cause,
        }));
        Ok(outputs)
    }

    fn require_subnet(&self, subnet_id: SubnetId) -> Result<&Subnet, Rejection> {
        self.subnets.get(&subnet_id).ok_or_else(|| {
            let message = format!("subnet {subnet_id} is not defined on network {}", self.network_id);
            Rejection::new(RejectionCode::UnknownSubnet, message)
        })
    }

    fn vnic_up(&mut self, e: &VnicUp, cause: EventId) -> Result<Vec<Event>, Rejection> {
        self.require_enabled()?;
        let key = OwnerKey::Vnic(e.vnic_id);
        let Some(subnet_id) = e.subnet_id else {
            // A vNIC on no subnet gets no IPAM service; it must not hold an address either.
            return match self.holdings.get(&key) {
                None => Ok(Vec::new()),
                Some(held) => Err(conflict(key, held, "no subnet")),
            };
        };
        let request = ReserveRequest { key, subnet_id, mac: e.mac, vm_id: Some(e.vm_id), requested_ip: e.requested_ip };
        self.reserve(request, cause)
    }

    fn port_requested(&mut self, e: &DhcpPortRequested, cause: EventId) -> Result<Vec<Event>, Rejection> {
        self.require_enabled()?;
        let key = OwnerKey::DhcpPort(e.host_id, e.subnet_id);
        let request = ReserveRequest { key, subnet_id: e.subnet_id, mac: e.mac, vm_id: None, requested_ip: None };
        self.reserve(request, cause)
    }

    fn reserve(&mut self, request: ReserveRequest, cause: EventId) -> Result<Vec<Event>, Rejection> {
        let ReserveRequest { key, subnet_id, mac, vm_id, requested_ip } = request;
        if let Some(held) = self.holdings.get(&key) {
            let same = held.subnet_id == subnet_id && held.mac == mac && requested_ip.is_none_or(|ip| ip == held.ip);
            return if same { Ok(Vec::new()) } else { Err(conflict(key, held, "another subnet, MAC or IP")) };
        }
        let network_id = self.network_id;
        let subnet = self.subnets.get_mut(&subnet_id).ok_or_else(|| {
            let message = format!("subnet {subnet_id} is not defined on network {network_id}");
            Rejection::new(RejectionCode::UnknownSubnet, message)
        })?;
        if let Some(user) = self.macs.get(&mac).filter(|user| !user.admits(key)) {
            let who = match user {
                MacUser::Vnic(vnic_id) => describe(OwnerKey::Vnic(*vnic_id)),
                MacUser::DhcpServer { host_id, .. } => format!("the DHCP server of host {host_id}"),
            };
            let message = format!("MAC {mac} is already used on network {network_id} by {who}");
            return Err(Rejection::new(RejectionCode::DuplicateMac, message));
        }
        if let Some((ip, block)) = requested_ip.and_then(|ip| Some((ip, SpecialBlock::of(ip)?))) {
            // Subnets in these blocks are refused, but one accepted by an older version may be in
            // one, and an address outside every subnet is better told why it never fits.
            let message = format!("{ip} is in {}; no host may hold it", block.describe());
            return Err(Rejection::new(RejectionCode::IpNotAssignable, message));
        }
        let ip = match requested_ip {
            Some(ip) => subnet.pool.reserve(ip).map(|()| ip).map_err(|error| {
                let cidr = subnet.spec.cidr;
                match error {
                    PoolError::OutsideSubnet => {
                        Rejection::new(RejectionCode::IpOutsideSubnet, format!("{ip} is not inside {cidr}"))
                    }
                    PoolError::NotAssignable => Rejection::new(
                        RejectionCode::IpNotAssignable,
                        format!("{ip} is the network, broadcast or gateway address of {cidr}"),
                    ),
                    PoolError::InUse => {
                        Rejection::new(RejectionCode::IpInUse, format!("{ip} is already reserved in {cidr}"))
                    }
                }
            })?,
            None => subnet.pool.allocate().ok_or_else(|| {
                let message = format!("no free address is left in the allocation pools of {}", subnet.spec.cidr);
                Rejection::new(RejectionCode::SubnetExhausted, message)
            })?,
        };
        if matches!(key, OwnerKey::Vnic(_)) {
            subnet.vnic_holdings += 1;
        }
        let holding = Holding { subnet_id, ip, mac, vm_id };
        self.holdings.insert(key, holding);
        self.use_mac(mac, key);
        Ok(vec![Event::ReservationAdded(ReservationAdded {
            network_id,
            subnet_id,
            owner: owner(key, &holding),
            mac,
            ip,
            cause,
        })])
    }

    fn vnic_down(&mut self, e: &VnicDown, cause: EventId) -> Vec<Event> {
        self.release(OwnerKey::Vnic(e.vnic_id), ReleaseReason::VnicDown, cause).into_iter().collect()
    }

    fn port_released(&mut self, e: &DhcpPortReleased, cause: EventId) -> Vec<Event> {
        self.release(OwnerKey::DhcpPort(e.host_id, e.subnet_id), ReleaseReason::PortReleased, cause)
            .into_iter()
            .collect()
    }

    fn use_mac(&mut self, mac: Mac, key: OwnerKey) {
        let user = self.macs.entry(mac).or_insert(match key {
            OwnerKey::Vnic(vnic_id) => MacUser::Vnic(vnic_id),
            OwnerKey::DhcpPort(host_id, _) => MacUser::DhcpServer { host_id, reservations: 0 },
        });
        if let MacUser::DhcpServer { reservations, .. } = user {
            *reservations += 1;
        }
    }

    fn unuse_mac(&mut self, mac: Mac) {
        if let Some(MacUser::DhcpServer { reservations, .. }) = self.macs.get_mut(&mac) {
            *reservations -= 1;
            if *reservations > 0 {
                return;
            }
        }
        self.macs.remove(&mac);
    }

    /// Ends `key`'s reservation, if it holds one.
    fn release(&mut self, key: OwnerKey, reason: ReleaseReason, cause: EventId) -> Option<Event> {
        let holding = self.holdings.remove(&key)?;
        Some(self.removed(key, holding, reason, cause))
    }

    /// Frees what `holding` took (it is already out of `holdings`) and describes it.
    fn removed(&mut self, key: OwnerKey, holding: Holding, reason: ReleaseReason, cause: EventId) -> Event {
        self.unuse_mac(holding.mac);
        if let Some(subnet) = self.subnets.get_mut(&holding.subnet_id) {
            let was_used = subnet.pool.release(holding.ip);
            debug_assert!(was_used, "a held address must be marked used");
            if matches!(key, OwnerKey::Vnic(_)) {
                subnet.vnic_holdings -= 1;
            }
        }
        Event::ReservationRemoved(ReservationRemoved {
            network_id: self.network_id,
            subnet_id: holding.subnet_id,
            owner: owner(key, &holding),
            mac: holding.mac,
            ip: holding.ip,
            reason,
            cause,
        })
    }

    /// Every reservation as (subnet, owner, MAC, IP), ordered by owner.
    pub fn reservations(&self) -> impl Iterator<Item = (SubnetId, Owner, Mac, IpAddr)> + '_ {
        self.holdings.iter().map(|(key, holding)| (holding.subnet_id, owner(*key, holding), holding.mac, holding.ip))
    }

    /// The reservation a vNIC holds, if any: (subnet, MAC, IP).
    pub fn vnic_reservation(&self, vnic_id: VnicId) -> Option<(SubnetId, Mac, IpAddr)> {
        self.holdings.get(&OwnerKey::Vnic(vnic_id)).map(|holding| (holding.subnet_id, holding.mac, holding.ip))
    }

    /// The subnets, with how many addresses are used and still free for dynamic allocation.
    pub fn subnets(&self) -> impl Iterator<Item = (SubnetId, &SubnetSpec, u128, u128)> + '_ {
        self.subnets.iter().map(|(id, subnet)| (*id, &subnet.spec, subnet.pool.used_count(), subnet.pool.free_count()))
    }

    /// The network's invariants: every holding sits in a known subnet, on an assignable address its
    /// pool marks used, held once; each pool's used count and each subnet's vNIC count equal what
    /// the holdings say; a vNIC's MAC belongs to it alone, and a DHCP server's MAC counts exactly
    /// the reservations made with it.
    fn check(&self) -> Result<(), InvariantViolation> {
        let network = self.network_id;
        let mut held = std::collections::BTreeSet::new();
        let mut per_subnet: BTreeMap<SubnetId, (u128, u32)> = BTreeMap::new();
        let mut per_mac: BTreeMap<Mac, u32> = BTreeMap::new();
        for (key, holding) in &self.holdings {
            let Holding { subnet_id, ip, mac, .. } = *holding;
            let subnet = self.subnets.get(&subnet_id);
            ensure(subnet.is_some(), || format!("network {network}: {ip} is held in unknown subnet {subnet_id}"))?;
            let subnet = subnet.map(|s| (&s.spec, &s.pool));
            if let Some((spec, pool)) = subnet {
                ensure(spec.is_assignable(ip) && pool.is_used(ip), || {
                    format!("network {network}: {ip} is held but not assignable and used in {}", spec.cidr)
                })?;
            }
            ensure(held.insert((subnet_id, ip)), || format!("network {network}: {ip} is held twice"))?;
            let counts = per_subnet.entry(subnet_id).or_default();
            counts.0 += 1;
            counts.1 += u32::from(matches!(key, OwnerKey::Vnic(_)));
            *per_mac.entry(mac).or_default() += 1;
            let user = self.macs.get(&mac).copied();
            let consistent = match (key, user) {
                (OwnerKey::Vnic(vnic_id), Some(MacUser::Vnic(user))) => *vnic_id == user,
                (OwnerKey::DhcpPort(host_id, _), Some(MacUser::DhcpServer { host_id: user, .. })) => *host_id == user,
                _ => false,
            };
            ensure(consistent, || {
                format!("network {network}: MAC {mac} of {} is recorded as {user:?}", describe(*key))
            })?;
        }
        for (subnet_id, subnet) in &self.subnets {
            let (count, vnics) = per_subnet.get(subnet_id).copied().unwrap_or_default();
            ensure(subnet.pool.used_count() == count && subnet.vnic_holdings == vnics, || {
                format!(
                    "network {network}, subnet {subnet_id}: the pool counts {} used and {} vNICs, the holdings {count} and {vnics}",
                    subnet.pool.used_count(),
                    subnet.vnic_holdings
                )
            })?;
        }
        for (mac, user) in &self.macs {
            let uses = per_mac.get(mac).copied().unwrap_or(0);
            let recorded = match user {
                MacUser::Vnic(_) => 1,
                MacUser::DhcpServer { reservations, .. } => *reservations,
            };
            ensure(uses == recorded, || {
                format!("network {network}: MAC {mac} is recorded {recorded} times, used {uses}")
            })?;
        }
        Ok(())
    }

    fn to_snapshot(&self) -> NetworkSnapshot {
        NetworkSnapshot {
            network_id: self.network_id,
            settings: self.settings.clone(),
            subnets: self
                .subnets
                .iter()
                .map(|(id, subnet)| SubnetSnapshot {
                    subnet_id: *id,
                    spec: subnet.spec.clone(),
                    next_candidate: subnet.pool.next_candidate(),
                })
                .collect(),
            reservations: self
                .holdings
                .iter()
                .map(|(key, holding)| ReservationSnapshot {
                    subnet_id: holding.subnet_id,
                    owner: owner(*key, holding),
                    mac: holding.mac,
                    ip: holding.ip,
                })
                .collect(),
            recent_inputs: self.recent_inputs.clone(),
        }
    }

    fn from_snapshot(snapshot: NetworkSnapshot) -> Result<NetworkAllocator, SnapshotError> {
        let network_id = snapshot.network_id;
        let mut allocator = NetworkAllocator::new(network_id);
        allocator.settings = snapshot.settings;
        allocator.recent_inputs = snapshot.recent_inputs;
        for SubnetSnapshot { subnet_id, spec, next_candidate } in snapshot.subnets {
            spec.check_shape().map_err(|rejection| {
                SnapshotError::Inconsistent(format!("network {network_id}, subnet {subnet_id}: {}", rejection.message))
            })?;
            let mut pool = AddressPool::new(&spec);
            pool.set_next_candidate(next_candidate);
            allocator.subnets.insert(subnet_id, Subnet { spec, pool, vnic_holdings: 0 });
        }
        for ReservationSnapshot { subnet_id, owner, mac, ip } in snapshot.reservations {
            let inconsistent = |what: &str| SnapshotError::Inconsistent(format!("network {network_id}: {what}"));
            let (key, vm_id) = match owner {
                Owner::Vnic { vnic_id, vm_id } => (OwnerKey::Vnic(vnic_id), Some(vm_id)),
                Owner::DhcpServer { host_id } => (OwnerKey::DhcpPort(host_id, subnet_id), None),
            };
            let subnet = allocator.subnets.get_mut(&subnet_id).ok_or_else(|| inconsistent("unknown subnet"))?;
            subnet.pool.reserve(ip).map_err(|_| inconsistent(&format!("{ip} cannot be held")))?;
            if let OwnerKey::Vnic(_) = key {
                subnet.vnic_holdings += 1;
            }
            if allocator.macs.get(&mac).is_some_and(|user| !user.admits(key)) {
                return Err(inconsistent(&format!("MAC {mac} held twice")));
            }
            allocator.use_mac(mac, key);
            if allocator.holdings.insert(key, Holding { subnet_id, ip, mac, vm_id }).is_some() {
                return Err(inconsistent("an owner holds two reservations"));
            }
        }
        Ok(allocator)
    }
}

fn owner(key: OwnerKey, holding: &Holding) -> Owner {
    match key {
        OwnerKey::Vnic(vnic_id) => Owner::Vnic { vnic_id, vm_id: holding.vm_id.unwrap_or(VmId::from_u128(0)) },
        OwnerKey::DhcpPort(host_id, _) => Owner::DhcpServer { host_id },
    }
}

fn describe(key: OwnerKey) -> String {
    match key {
        OwnerKey::Vnic(vnic_id) => format!("vNIC {vnic_id}"),
        OwnerKey::DhcpPort(host_id, subnet_id) => format!("the DHCP server of host {host_id} in subnet {subnet_id}"),
    }
}

fn conflict(key: OwnerKey, held: &Holding, asked: &str) -> Rejection {
    let message = format!(
        "{} already holds {} (MAC {}) in subnet {} and asked for {asked}; send a down event first",
        describe(key),
        held.ip,
        held.mac,
        held.subnet_id
    );
    Rejection::new(RejectionCode::VnicConflict, message)
}

#[derive(Serialize, Deserialize)]
struct AllocatorSnapshot {
    networks: Vec<NetworkSnapshot>,
}

#[derive(Serialize, Deserialize)]
struct NetworkSnapshot {
    network_id: NetworkId,
    settings: Option<NetworkSettings>,
    subnets: Vec<SubnetSnapshot>,
    reservations: Vec<ReservationSnapshot>,
    /// Oldest first. Absent from snapshots written before the window existed: those restore with
    /// an empty window (a retry of an input before the snapshot is then applied again, as it was
    /// by the version that wrote it).
    #[serde(default)]
    recent_inputs: RecentInputs,
}

#[derive(Serialize, Deserialize)]
struct SubnetSnapshot {
    subnet_id: SubnetId,
    spec: SubnetSpec,
    next_candidate: IpAddr,
}

#[derive(Serialize, Deserialize)]
struct ReservationSnapshot {
    subnet_id: SubnetId,
    owner: Owner,
    mac: Mac,
    ip: IpAddr,
}

/// The allocators of every network one process owns (one partition's worth, or all of them),
/// routing each input to its network's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocator {
    networks: BTreeMap<NetworkId, NetworkAllocator>,
    /// The window size of the network machines this allocator creates.
    input_window: usize,
}

impl Default for Allocator {
    fn default() -> Allocator {
        Allocator { networks: BTreeMap::new(), input_window: INPUT_WINDOW }
    }
}

impl Allocator {
    pub fn new() -> Allocator {
        Allocator::default()
    }

    /// An allocator whose network machines remember only `input_window` input ids, for tests that
    /// watch ids being forgotten. A restored allocator always has [`INPUT_WINDOW`].
    pub fn with_input_window(input_window: usize) -> Allocator {
        Allocator { networks: BTreeMap::new(), input_window }
    }

    /// [`Allocator::apply`], with what placement must hear of the input ([`placement_facts`]):
    /// the runtime appends those to `ipam.hosts` in the same step. A retry (an id the network's
    /// window holds) has no effect and so nothing to tell: forwarding it again would write an
    /// output id twice, so this, not `placement_facts` alone, is what a runtime should call.
    pub fn apply_forwarding(&mut self, input: &Envelope) -> (Vec<Event>, Vec<Event>) {
        if self.is_retry(input) {
            return (Vec::new(), Vec::new());
        }
        let outputs = self.apply(input);
        let facts = placement_facts(&input.event, &outputs);
        (outputs, facts)
    }

    /// Records the id of a request refused before it could be applied (a readable engine request
    /// with a bad field, answered by `DecodeError::rejection`) in its network's window, and answers
    /// whether it is new. The rejection should be written only if it is: a retried bad request
    /// would otherwise be answered twice under one output id. The window is state, so a runtime
    /// that calls this live must call it on replay too.
    pub fn record_refused(&mut self, network_id: NetworkId, input_id: EventId) -> bool {
        let input_window = self.input_window;
        self.networks
            .entry(network_id)
            .or_insert_with(|| NetworkAllocator::with_input_window(network_id, input_window))
            .recent_inputs
            .record(input_id)
    }

    /// Whether `input`'s id is among the last its network applied, so that applying it would do
    /// nothing.
    pub fn is_retry(&self, input: &Envelope) -> bool {
        input
            .event
            .network_id()
            .and_then(|network_id| self.networks.get(&network_id))
            .is_some_and(|network| network.recent_inputs.contains(input.id))
    }

    pub fn network(&self, network_id: NetworkId) -> Option<&NetworkAllocator> {
        self.networks.get(&network_id)
    }

    /// Whether the two hold the same networks, subnets, pools and reservations, whatever input ids
    /// they remember: what a refused input must leave as it was (invariant 7), since it does
    /// enter its network's window (and may leave a machine that holds nothing else).
    pub fn same_state_but_inputs(&self, other: &Allocator) -> bool {
        fn held(allocator: &Allocator) -> Vec<&NetworkAllocator> {
            allocator.networks.values().filter(|network| !network.is_empty()).collect()
        }
        let (mine, theirs) = (held(self), held(other));
        mine.len() == theirs.len()
            && mine.iter().zip(&theirs).all(|(a, b)| {
                a.network_id == b.network_id
                    && a.settings == b.settings
                    && a.subnets == b.subnets
                    && a.holdings == b.holdings
                    && a.macs == b.macs
            })
    }

    pub fn networks(&self) -> impl Iterator<Item = &NetworkAllocator> {
        self.networks.values()
    }

    /// One allocator per network, for a runtime that gives each network its own actor.
    pub fn split(self) -> Vec<Allocator> {
        let input_window = self.input_window;
        self.networks
            .into_iter()
            .map(|(network_id, allocator)| Allocator {
                networks: BTreeMap::from([(network_id, allocator)]),
                input_window,
            })
            .collect()
    }

    /// The union of allocators of distinct networks (the inverse of [`Allocator::split`]); a network
    /// found twice keeps its last copy. The window size is the first part's.
    pub fn merge(parts: impl IntoIterator<Item = Allocator>) -> Allocator {
        let mut merged: Option<Allocator> = None;
        for part in parts {
            match &mut merged {
                None => merged = Some(part),
                Some(merged) => merged.networks.extend(part.networks),
            }
        }
        merged.unwrap_or_default()
    }
}

impl StateMachine for Allocator {
    type Config = ();
    /// The outputs, in order.
    type Decision = Vec<Event>;

    /// Applies one input to its network's allocator. Events about no network yield nothing and
    /// leave no trace.
    ///
    /// A network's machine is kept once it has seen an input, even one refused with
    /// `unknown_network`, and after the network's removal: it holds the window of input ids that
    /// recognises a retry.
    fn apply(&mut self, input: &Envelope) -> Vec<Event> {
        let Some(network_id) = input.event.network_id() else { return Vec::new() };
        let input_window = self.input_window;
        self.networks
            .entry(network_id)
            .or_insert_with(|| NetworkAllocator::with_input_window(network_id, input_window))
            .apply(input)
    }

    fn snapshot(&self) -> Vec<u8> {
        let snapshot =
            AllocatorSnapshot { networks: self.networks.values().map(NetworkAllocator::to_snapshot).collect() };
        serde_json::to_vec(&snapshot).expect("snapshots have string keys only, so they always serialize")
    }

    fn restore(_: &(), bytes: &[u8]) -> Result<Allocator, SnapshotError> {
        let snapshot: AllocatorSnapshot = serde_json::from_slice(bytes)?;
        let mut networks = BTreeMap::new();
        for network in snapshot.networks {
            let network_id = network.network_id;
            networks.insert(network_id, NetworkAllocator::from_snapshot(network)?);
        }
        Ok(Allocator { networks, input_window: INPUT_WINDOW })
    }

    fn check(&self) -> Result<(), InvariantViolation> {
        self.networks.values().try_for_each(NetworkAllocator::check)
    }
}

/// What placement must hear of an allocator step: the network-level requests the allocator accepted
/// (IPAM enabled, servers count, removal) and the subnets it activated or deactivated.
///
/// Placement reads one single-partition topic (`ipam.hosts`), so that its inputs have one total
/// order that a replay sees again; the allocator's runtime forwards these facts there, in the same
/// atomic step as the allocator's own outputs. It cannot tell a retry (no outputs, like an accepted
/// network upsert) from a first application: see [`Allocator::apply_forwarding`].
pub fn placement_facts(input: &Event, outputs: &[Event]) -> Vec<Event> {
    let rejected = outputs.iter().any(|output| matches!(output, Event::RequestRejected(_)));
    let forwarded_input = match input {
        Event::NetworkUpserted(_) | Event::NetworkRemoved(_) if !rejected => Some(input.clone()),
        _ => None,
    };
    forwarded_input
        .into_iter()
        .chain(
            outputs
                .iter()
                .filter(|output| matches!(output, Event::SubnetActivated(_) | Event::SubnetDeactivated(_)))
                .cloned(),
        )
        .collect()
}

#[cfg(test)]
#[path = "allocator_tests.rs"]
mod tests;
