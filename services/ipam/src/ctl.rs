//! `ipam ctl` (build and publish engine events), `ipam show` (read views) and `ipam publish`
//! (a file of CloudEvents, one per line), all through a running IPAM's HTTP API.

// Printing what the API answered is these commands' job.
#![allow(clippy::print_stdout)]

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use ipam_core::event::*;
use ipam_core::{Event, HostId, Mac, NetworkId, SubnetId, VmId, VnicId};
use serde_json::Value;

use crate::client::{Api, envelope};

#[derive(Debug, Subcommand)]
pub enum Ctl {
    /// Create or change a network.
    Network {
        #[arg(long)]
        id: NetworkId,
        #[arg(long)]
        name: String,
        /// DHCP servers for the network (the configured default when absent).
        #[arg(long)]
        servers: Option<u8>,
        /// Create it with IPAM disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Remove a network.
    NetworkRemove {
        #[arg(long)]
        id: NetworkId,
    },
    /// Add a subnet to a network.
    Subnet {
        #[arg(long)]
        network: NetworkId,
        #[arg(long)]
        id: SubnetId,
        #[arg(long)]
        cidr: String,
        #[arg(long)]
        gateway: IpAddr,
        #[arg(long = "dns")]
        dns_servers: Vec<IpAddr>,
        #[arg(long = "ntp")]
        ntp_servers: Vec<IpAddr>,
    },
    /// Remove a subnet.
    SubnetRemove {
        #[arg(long)]
        network: NetworkId,
        #[arg(long)]
        id: SubnetId,
    },
    /// A host is up, with the networks attached to it (NETWORK_ID=INTERFACE).
    HostUp {
        #[arg(long)]
        id: HostId,
        #[arg(long)]
        name: String,
        #[arg(long = "network", value_name = "NETWORK_ID=INTERFACE")]
        networks: Vec<String>,
    },
    /// A host is down (or in maintenance with --maintenance).
    HostDown {
        #[arg(long)]
        id: HostId,
        #[arg(long)]
        name: String,
        #[arg(long)]
        maintenance: bool,
    },
    /// A vNIC came up (VM start).
    VnicStart {
        #[arg(long)]
        id: VnicId,
        #[arg(long)]
        vm: VmId,
        #[arg(long)]
        network: NetworkId,
        #[arg(long)]
        subnet: Option<SubnetId>,
        #[arg(long)]
        mac: Mac,
        /// A fixed IP to reserve.
        #[arg(long)]
        ip: Option<IpAddr>,
    },
    /// A vNIC went down (VM stop).
    VnicStop {
        #[arg(long)]
        id: VnicId,
        #[arg(long)]
        network: NetworkId,
    },
}

#[derive(Debug, Subcommand)]
pub enum Show {
    /// Every network.
    Networks,
    /// One network: subnets with used and free counts, reservations, DHCP servers.
    Network { id: NetworkId },
    /// One host.
    Host { id: HostId },
    /// One vNIC's reservation.
    Vnic { id: VnicId },
    /// Who held an address, and when.
    Ip { ip: IpAddr },
}

pub fn ctl(api: &Api, command: Ctl) -> anyhow::Result<()> {
    let event = match command {
        Ctl::Network { id, name, servers, disabled } => Event::NetworkUpserted(NetworkUpserted {
            network_id: id,
            name,
            ipam_enabled: !disabled,
            servers_count: servers,
        }),
        Ctl::NetworkRemove { id } => Event::NetworkRemoved(NetworkRemoved { network_id: id }),
        Ctl::Subnet { network, id, cidr, gateway, dns_servers, ntp_servers } => Event::SubnetAdded(SubnetAdded {
            network_id: network,
            subnet_id: id,
            cidr: cidr.parse().with_context(|| format!("`{cidr}` is not a subnet"))?,
            gateway,
            dns_servers,
            ntp_servers,
            allocation_pools: None,
        }),
        Ctl::SubnetRemove { network, id } => Event::SubnetRemoved(SubnetRemoved { network_id: network, subnet_id: id }),
        Ctl::HostUp { id, name, networks } => {
            let networks = networks
                .iter()
                .map(|entry| {
                    let (network, interface) =
                        entry.split_once('=').with_context(|| format!("`{entry}`: expected NETWORK_ID=INTERFACE"))?;
                    Ok(HostNetwork {
                        network_id: network.parse().with_context(|| format!("`{network}` is not a network id"))?,
                        interface: interface.parse()?,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Event::HostUpserted(HostUpserted { host_id: id, name, status: HostStatus::Up, networks })
        }
        Ctl::HostDown { id, name, maintenance } => Event::HostUpserted(HostUpserted {
            host_id: id,
            name,
            status: if maintenance { HostStatus::Maintenance } else { HostStatus::Down },
            networks: Vec::new(),
        }),
        Ctl::VnicStart { id, vm, network, subnet, mac, ip } => Event::VnicStarted(VnicUp {
            vnic_id: id,
            vm_id: vm,
            network_id: network,
            subnet_id: subnet,
            mac,
            requested_ip: ip,
        }),
        Ctl::VnicStop { id, network } => Event::VnicStopped(VnicDown { vnic_id: id, network_id: network }),
    };
    let accepted = api.publish(&[envelope("ipam-ctl", event)])?;
    println!("{}", serde_json::to_string_pretty(&accepted)?);
    Ok(())
}

pub fn show(api: &Api, what: Show) -> anyhow::Result<()> {
    let path = match what {
        Show::Networks => "/v1/networks".to_owned(),
        Show::Network { id } => format!("/v1/networks/{id}"),
        Show::Host { id } => format!("/v1/hosts/{id}"),
        Show::Vnic { id } => format!("/v1/vnics/{id}"),
        Show::Ip { ip } => format!("/v1/ips/{ip}/history"),
    };
    println!("{}", serde_json::to_string_pretty(&api.get(&path)?)?);
    Ok(())
}

/// Publishes a file of CloudEvents, one JSON object per line, in batches of 500.
pub fn publish(api: &Api, file: PathBuf) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let event: Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not a JSON object", file.display(), n + 1))?;
        events.push(event);
    }
    if events.is_empty() {
        bail!("{} holds no events", file.display());
    }
    for (n, batch) in events.chunks(500).enumerate() {
        api.publish(batch)
            .with_context(|| format!("batch {} (lines {} to {})", n + 1, n * 500 + 1, n * 500 + batch.len()))?;
    }
    println!("published {} events", events.len());
    Ok(())
}
