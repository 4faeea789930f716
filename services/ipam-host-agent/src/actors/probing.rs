//! The provisioner's side of conflict probing ([`crate::probe`]): before a newly reserved host goes
//! into the server's configuration, its address is probed on the network's interface, on a thread
//! of its own so that the provisioner meanwhile applies everything else of the change (removals,
//! hosts already cleared) at once. What a probe found comes back as a [`Probed`] message; a
//! conflict is reported through the outbox and the host stays out (see [`ProbeGate`]).

use std::net::IpAddr;
use std::thread;
use std::time::{Duration, Instant};

use actix::{AsyncContext, Context, Handler, Message};
use ipam_core::dhcp_plan::{DhcpHost, HostChange, NetworkDhcpConfig};
use ipam_core::event::{ConflictProbe, IpConflictDetected};
use ipam_core::net::InterfaceName;

use super::{Provisioner, Unapplied};
use crate::probe::{self, ProbeSettings};
use crate::probe_gate::{HostKey, ProbeGate, ProbeResult};

/// How often a host kept out for a conflict is probed again: an address the squatter gave up is
/// then served without an operator (the allocator keeps it from other vNICs until one clears it).
pub(super) const CONFLICT_RECHECK: Duration = Duration::from_secs(30);

/// How the agent probes: the timings, and the network namespace its interfaces live in.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProbeSetup {
    pub(crate) settings: ProbeSettings,
    pub(crate) netns: Option<String>,
}

/// A provisioner's probing state.
#[derive(Debug)]
pub(super) struct Probes {
    gate: ProbeGate,
    setup: ProbeSetup,
    /// The probe failure last logged, so a failure that repeats is logged once.
    failure: Option<String>,
}

impl Probes {
    pub(super) fn new(setup: ProbeSetup) -> Probes {
        Probes { gate: ProbeGate::default(), setup, failure: None }
    }

    /// Whether a probe is under way: the server does not serve every reservation yet.
    pub(super) fn busy(&self) -> bool {
        self.gate.is_probing()
    }
}

/// To a provisioner: what a probe of some of its hosts found.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Probed {
    results: Vec<ProbeResult>,
    /// Why the probe could not be made (the hosts are then served unprobed).
    error: Option<String>,
    elapsed: Duration,
}

impl Provisioner {
    /// `desired` without the hosts that may not be served yet (those new since `previous`, the
    /// configuration it replaces); starts their probes.
    pub(super) fn admit(
        &mut self,
        previous: Option<&NetworkDhcpConfig>,
        desired: &NetworkDhcpConfig,
        ctx: &mut Context<Self>,
    ) -> NetworkDhcpConfig {
        let (admitted, to_probe) = self.probes.gate.admit(previous, desired);
        self.start_probe(to_probe, desired.interface.clone(), ctx);
        admitted
    }

    /// Of host changes of the configuration, those the server may take at once; starts the probes
    /// of the new hosts held back.
    pub(super) fn admit_changes(
        &mut self,
        changes: &[HostChange],
        interface: InterfaceName,
        probe_on: bool,
        ctx: &mut Context<Self>,
    ) -> Vec<HostChange> {
        let (served, to_probe) = self.probes.gate.admit_changes(changes, probe_on);
        self.start_probe(to_probe, interface, ctx);
        served
    }

    /// Probes again the hosts kept out for a conflict.
    pub(super) fn recheck_conflicts(&mut self, ctx: &mut Context<Self>) {
        let Some(interface) = self.desired.as_ref().map(|config| config.interface.clone()) else { return };
        let again = self.probes.gate.recheck();
        self.start_probe(again, interface, ctx);
    }

    fn start_probe(&mut self, targets: Vec<HostKey>, interface: InterfaceName, ctx: &mut Context<Self>) {
        if targets.is_empty() {
            return;
        }
        let (addr, setup) = (ctx.address(), self.probes.setup.clone());
        let keys = targets.clone();
        let spawned = thread::Builder::new().name("ipam-agent-probe".to_owned()).spawn(move || {
            let ips: Vec<IpAddr> = targets.iter().map(|&(_, ip, _)| ip).collect();
            let started = Instant::now();
            let outcome = probe::probe(interface.as_str(), setup.netns.as_deref(), &ips, &setup.settings);
            let elapsed = started.elapsed();
            let (answers, error) = match outcome {
                Ok(answers) => (answers, None),
                Err(error) => (Default::default(), Some(crate::actors::error_chain(&error))),
            };
            // The guest the address is reserved for may answer (it kept its address): not a conflict.
            let results = targets
                .into_iter()
                .map(|key @ (_, ip, reserved)| {
                    let other = answers.get(&ip).and_then(|macs| macs.iter().find(|&&mac| mac != reserved).copied());
                    (key, other)
                })
                .collect();
            addr.do_send(Probed { results, error, elapsed });
        });
        if let Err(error) = spawned {
            let results = keys.into_iter().map(|key| (key, None)).collect();
            let error = Some(format!("cannot start a probe thread: {error}"));
            ctx.address().do_send(Probed { results, error, elapsed: Duration::ZERO });
        }
    }
}

impl Handler<Probed> for Provisioner {
    type Result = ();

    fn handle(&mut self, probed: Probed, ctx: &mut Context<Self>) {
        let network = self.network_id;
        let (addresses, elapsed_ms) = (probed.results.len(), probed.elapsed.as_millis());
        match &probed.error {
            Some(error) if self.probes.failure.as_ref() != Some(error) => {
                tracing::warn!(network = %network, error, "Cannot probe addresses before serving them; serving them unprobed.");
                self.probes.failure = Some(error.clone());
            }
            Some(_) => {}
            None => {
                if self.probes.failure.take().is_some() {
                    tracing::info!(network = %network, "Probing works again.");
                }
                tracing::debug!(network = %network, addresses, elapsed_ms, "Probed addresses before serving them.");
            }
        }
        let (conflicts, cleared) = self.probes.gate.probed(probed.results);
        if probed.error.is_none() {
            let host = self.outbox.host_id().to_string();
            ipam_runtime::metrics::probed(&host, addresses, conflicts.len(), probed.elapsed);
        }
        for ((subnet_id, ip, reserved_for), answered_by) in conflicts {
            tracing::warn!(
                network = %network, subnet = %subnet_id, ip = %ip, reserved_for = %reserved_for,
                answered_by = %answered_by, "Address in use by another MAC; not serving it."
            );
            let probe = if ip.is_ipv4() { ConflictProbe::Arp } else { ConflictProbe::NeighbourSolicitation };
            let host_id = self.outbox.host_id();
            self.outbox.conflict(IpConflictDetected {
                network_id: network,
                subnet_id,
                ip,
                host_id,
                answered_by,
                reserved_for: Some(reserved_for),
                probe,
            });
        }
        let cleared: Vec<HostChange> = cleared
            .into_iter()
            .map(|(subnet_id, ip, mac)| HostChange {
                network_id: network,
                subnet_id,
                host: DhcpHost { mac, ip },
                served: true,
            })
            .collect();
        if let Some(admitted) = self.admitted.as_mut() {
            admitted.apply_hosts(&cleared);
        }
        // Applied even if no host was cleared once no probe is left, so that the server reports
        // itself synced with the reservations it held back while probing.
        if !cleared.is_empty() || !self.probes.busy() {
            Unapplied::add_hosts(&mut self.unapplied, cleared);
        }
        self.reconcile_soon(ctx);
    }
}
