//! `ipam ctl` (build an engine event, publish it, print its decision) and `ipam show` (read
//! views), through a running IPAM's HTTP API.
//!
//! One way to name things everywhere: an object that already exists is the command's positional
//! argument, by id or by its unique name (a subnet also by its CIDR); a new object's attributes
//! are flags, and its `--id` is generated and printed when omitted. Other objects a command
//! refers to are flags named for their kind (`--network`, `--subnet`, `--vm`), again by id or name.
//! Names are resolved through the API's lists, so a name that matches several objects is refused.

// Printing what the API answered is these commands' job.
#![allow(clippy::print_stdout)]

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, Subcommand};
use ipam_core::event::*;
use ipam_core::{Event, HostId, Mac, NetworkId, SubnetId, VmId, VnicId};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::client::{Api, ClientError, envelope, fresh_uuid};
use crate::exit::{self, BadInput};
use crate::output::{self, Format};

/// An existing object, by id or name; the hidden `--id` is the older spelling, kept for scripts.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Its id; a network or host also by its unique name, a subnet by its CIDR.
    #[arg(value_name = "ID_OR_NAME", required_unless_present = "id")]
    target: Option<String>,
    #[arg(long, hide = true, conflicts_with = "target")]
    id: Option<String>,
}

impl Target {
    fn text(&self) -> &str {
        self.target.as_deref().or(self.id.as_deref()).unwrap_or_default()
    }
}

#[derive(Debug, Subcommand)]
pub enum Ctl {
    /// Create or change a network. Without --id, the network of that name is changed if there is
    /// one, else a new network is made (its id is printed).
    Network {
        #[arg(long)]
        name: String,
        #[arg(long)]
        id: Option<NetworkId>,
        /// DHCP servers for the network (the configured default when absent).
        #[arg(long)]
        servers: Option<u8>,
        /// Create it with IPAM disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Remove a network (and release all its addresses).
    NetworkRemove {
        #[command(flatten)]
        network: Target,
    },
    /// Add a subnet to a network.
    Subnet {
        /// The network: its id or name.
        #[arg(long)]
        network: String,
        /// The subnet's id (generated and printed when omitted).
        #[arg(long)]
        id: Option<SubnetId>,
        #[arg(long)]
        cidr: String,
        #[arg(long)]
        gateway: IpAddr,
        #[arg(long = "dns")]
        dns_servers: Vec<IpAddr>,
        #[arg(long = "ntp")]
        ntp_servers: Vec<IpAddr>,
    },
    /// Remove a subnet, named by its id or CIDR.
    SubnetRemove {
        #[command(flatten)]
        subnet: Target,
        /// The network: its id or name.
        #[arg(long)]
        network: String,
    },
    /// A host is up, with the networks attached to it (NETWORK=INTERFACE, the network by id or
    /// name). Without --id, the host of that name is meant if there is one, else a new host.
    HostUp {
        #[arg(long)]
        name: String,
        #[arg(long)]
        id: Option<HostId>,
        #[arg(long = "network", value_name = "NETWORK=INTERFACE")]
        networks: Vec<String>,
    },
    /// A host is down (or in maintenance with --maintenance).
    HostDown {
        #[command(flatten)]
        host: Target,
        #[arg(long)]
        maintenance: bool,
    },
    /// A vNIC came up (VM start): prints the addresses reserved, or the rejection.
    VnicStart {
        /// The vNIC's id (generated and printed when omitted).
        #[arg(long)]
        id: Option<VnicId>,
        /// The VM's id (generated and printed when omitted).
        #[arg(long)]
        vm: Option<VmId>,
        /// The network: its id or name.
        #[arg(long)]
        network: String,
        /// The subnet to take an address from: its id or CIDR. Give it twice, an IPv4 and an IPv6
        /// subnet, for a dual-stack vNIC (an address of each). Without it the vNIC gets no
        /// address and no DHCP service from IPAM (a network IPAM does not number).
        #[arg(long = "subnet", value_name = "SUBNET")]
        subnets: Vec<String>,
        #[arg(long)]
        mac: Mac,
        /// A fixed IP to reserve, in the subnet of its family.
        #[arg(long)]
        ip: Option<IpAddr>,
    },
    /// A vNIC went down (VM stop): prints the address released.
    VnicStop {
        #[command(flatten)]
        vnic: Target,
        /// The network: its id or name (by default the vNIC's, as the API knows it).
        #[arg(long)]
        network: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Show {
    /// The networks, a page at a time.
    Networks {
        #[command(flatten)]
        page: Page,
    },
    /// One network: subnets with used and free counts, reservations (the first --limit), DHCP servers.
    Network {
        #[command(flatten)]
        network: Target,
        /// At most this many reservations (the API's default when absent).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// A network's reservations, a page at a time.
    Reservations {
        #[command(flatten)]
        network: Target,
        #[command(flatten)]
        page: Page,
    },
    /// The hosts, a page at a time.
    Hosts {
        #[command(flatten)]
        page: Page,
    },
    /// One host.
    Host {
        #[command(flatten)]
        host: Target,
    },
    /// The vNICs with a reservation, filtered, a page at a time.
    Vnics {
        /// On this network (id or name).
        #[arg(long)]
        network: Option<String>,
        /// In this subnet (id, or CIDR with --network).
        #[arg(long)]
        subnet: Option<String>,
        /// Served by this host (id or name).
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        vm: Option<VmId>,
        #[arg(long)]
        mac: Option<Mac>,
        #[arg(long)]
        ip: Option<IpAddr>,
        #[command(flatten)]
        page: Page,
    },
    /// One vNIC's reservation.
    Vnic {
        #[command(flatten)]
        vnic: Target,
    },
    /// Who held an address, and when (or only at --at).
    Ip {
        ip: IpAddr,
        #[command(flatten)]
        at: At,
    },
    /// The addresses a vNIC held, and when (or only at --at).
    VnicHistory {
        #[command(flatten)]
        vnic: Target,
        #[command(flatten)]
        at: At,
    },
    /// The addresses a MAC held, and when (or only at --at).
    MacHistory {
        mac: Mac,
        #[command(flatten)]
        at: At,
    },
}

/// One page of a list: `--limit` items after `--cursor` (the `next` of the page before).
#[derive(Debug, Clone, Args)]
pub struct Page {
    /// At most this many items (the API's default when absent).
    #[arg(long)]
    limit: Option<usize>,
    /// Start after this cursor: the `next` a page answered.
    #[arg(long)]
    cursor: Option<String>,
}

/// A moment in the history.
#[derive(Debug, Clone, Args)]
pub struct At {
    /// Only what held at this time (RFC 3339, such as 2026-12-01T10:00:00Z).
    #[arg(long)]
    at: Option<String>,
}

/// `path` with its query: the parameters that are given, each escaped.
fn with_query(path: &str, parameters: &[(&str, Option<String>)]) -> String {
    let query: Vec<String> = parameters
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|value| format!("{name}={}", escape(value))))
        .collect();
    if query.is_empty() { path.to_owned() } else { format!("{path}?{}", query.join("&")) }
}

/// Percent-escapes all but unreserved characters (RFC 3986), for a query value.
fn escape(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

impl Page {
    fn query(&self) -> [(&'static str, Option<String>); 2] {
        [("limit", self.limit.map(|limit| limit.to_string())), ("cursor", self.cursor.clone())]
    }
}

/// What `ctl` and `show` share: where the API is and how to print.
#[derive(Debug)]
pub struct Session {
    pub api: Api,
    pub format: Format,
}

/// Builds the event, publishes it, waits up to `wait` for its decision, prints it, and answers the
/// exit code the decision means.
pub fn ctl(session: &Session, command: Ctl, wait: Duration) -> anyhow::Result<i32> {
    let api = &session.api;
    // The ids this command chose or resolved, printed beside the decision.
    let mut ids = Map::new();
    let mut note = |key: &str, id: &dyn std::fmt::Display| ids.insert(key.to_owned(), json!(id.to_string()));
    let event = match command {
        Ctl::Network { name, id, servers, disabled } => {
            let network_id = match id {
                Some(id) => id,
                None => match find_network(api, &name)? {
                    Some(existing) => existing,
                    None => NetworkId(fresh_uuid()),
                },
            };
            note("network_id", &network_id);
            Event::NetworkUpserted(NetworkUpserted {
                network_id,
                name,
                ipam_enabled: !disabled,
                servers_count: servers,
            })
        }
        Ctl::NetworkRemove { network } => {
            let network_id = resolve_network(api, network.text())?;
            note("network_id", &network_id);
            Event::NetworkRemoved(NetworkRemoved { network_id })
        }
        Ctl::Subnet { network, id, cidr, gateway, dns_servers, ntp_servers } => {
            let network_id = resolve_network(api, &network)?;
            let subnet_id = id.unwrap_or_else(|| SubnetId(fresh_uuid()));
            note("network_id", &network_id);
            note("subnet_id", &subnet_id);
            Event::SubnetAdded(SubnetAdded {
                network_id,
                subnet_id,
                cidr: cidr.parse().map_err(|e| BadInput(format!("`{cidr}` is not a subnet: {e}")))?,
                gateway,
                dns_servers,
                ntp_servers,
                allocation_pools: None,
            })
        }
        Ctl::SubnetRemove { subnet, network } => {
            let network_id = resolve_network(api, &network)?;
            let subnet_id = resolve_subnet(api, network_id, subnet.text())?;
            note("network_id", &network_id);
            note("subnet_id", &subnet_id);
            Event::SubnetRemoved(SubnetRemoved { network_id, subnet_id })
        }
        Ctl::HostUp { name, id, networks } => {
            let host_id = match id {
                Some(id) => id,
                None => match find_host(api, &name)? {
                    Some(existing) => existing,
                    None => HostId(fresh_uuid()),
                },
            };
            let networks = networks
                .iter()
                .map(|entry| {
                    let (network, interface) = entry
                        .split_once('=')
                        .ok_or_else(|| BadInput(format!("`{entry}`: expected NETWORK=INTERFACE")))?;
                    Ok(HostNetwork {
                        network_id: resolve_network(api, network)?,
                        interface: interface.parse().map_err(|e| BadInput(format!("`{interface}`: {e}")))?,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            note("host_id", &host_id);
            Event::HostUpserted(HostUpserted { host_id, name, status: HostStatus::Up, networks })
        }
        Ctl::HostDown { host, maintenance } => {
            let (host_id, name) = host_with_name(api, host.text())?;
            note("host_id", &host_id);
            Event::HostUpserted(HostUpserted {
                host_id,
                name,
                status: if maintenance { HostStatus::Maintenance } else { HostStatus::Down },
                networks: Vec::new(),
            })
        }
        Ctl::VnicStart { id, vm, network, subnets, mac, ip } => {
            let network_id = resolve_network(api, &network)?;
            let subnets: Vec<SubnetId> =
                subnets.iter().map(|subnet| resolve_subnet(api, network_id, subnet)).collect::<anyhow::Result<_>>()?;
            // One subnet goes in `subnet_id`, which every version reads; several in `subnet_ids`.
            let (subnet_id, subnet_ids) = match subnets.as_slice() {
                [one] => (Some(*one), Vec::new()),
                _ => (None, subnets),
            };
            if subnet_id.is_none() && subnet_ids.is_empty() {
                eprintln!(
                    "ipam: warning: no --subnet: this vNIC gets no address and no DHCP service from IPAM (give \
                     --subnet ID_OR_CIDR to have one reserved)"
                );
            }
            let (vnic_id, vm_id) =
                (id.unwrap_or_else(|| VnicId(fresh_uuid())), vm.unwrap_or_else(|| VmId(fresh_uuid())));
            note("vnic_id", &vnic_id);
            note("vm_id", &vm_id);
            Event::VnicStarted(VnicUp { vnic_id, vm_id, network_id, subnet_id, subnet_ids, mac, requested_ip: ip })
        }
        Ctl::VnicStop { vnic, network } => {
            let vnic_id: VnicId = parse_id(vnic.text(), "vNIC")?;
            let network_id = match network {
                Some(network) => resolve_network(api, &network)?,
                None => network_of_vnic(api, vnic_id)?,
            };
            note("vnic_id", &vnic_id);
            Event::VnicStopped(VnicDown { vnic_id, network_id })
        }
    };
    let envelope = envelope("ipam-ctl", event);
    let mut shown = Map::new();
    let code = if wait.is_zero() {
        shown.insert("outcome".to_owned(), json!("accepted"));
        shown.insert("event_id".to_owned(), envelope["id"].clone());
        api.publish(std::slice::from_ref(&envelope))?;
        exit::OK
    } else {
        let outcome = decide(api, &envelope, wait)?;
        let code = match outcome["outcome"].as_str() {
            Some("rejected") => exit::REJECTED,
            Some("pending") => exit::PENDING,
            _ => exit::OK,
        };
        if let Value::Object(fields) = outcome {
            shown.extend(fields);
        }
        code
    };
    for (key, id) in ids {
        shown.entry(key).or_insert(id);
    }
    print!("{}", output::render(&Value::Object(shown), session.format)?);
    Ok(code)
}

/// Publishes one event asking the API to wait for its decision, and answers its outcome. An API
/// without decisions on write (no `wait` parameter) gets the event without it, and the outcome is
/// `pending`: it was accepted, and `ipam show` will tell what became of it.
fn decide(api: &Api, envelope: &Value, wait: Duration) -> anyhow::Result<Value> {
    let answer = match api.publish_and_wait(std::slice::from_ref(envelope), wait) {
        Ok(answer) => answer,
        Err(error) if is_unknown_wait(&error) => {
            eprintln!("ipam: warning: this API does not answer decisions on write; the event is only accepted");
            api.publish(std::slice::from_ref(envelope))?;
            return Ok(json!({"outcome": "pending", "event_id": envelope["id"]}));
        }
        Err(error) => return Err(error),
    };
    let outcomes = match &answer {
        Value::Array(items) => Some(items),
        Value::Object(fields) => fields.get("outcomes").and_then(Value::as_array),
        _ => None,
    };
    Ok(outcomes
        .and_then(|outcomes| outcomes.iter().find(|o| o["event_id"] == envelope["id"]).or(outcomes.first()).cloned())
        .unwrap_or_else(|| json!({"outcome": "pending", "event_id": envelope["id"]})))
}

fn is_unknown_wait(error: &anyhow::Error) -> bool {
    matches!(error.downcast_ref::<ClientError>(),
        Some(ClientError::Refused { code, message, .. }) if code == "invalid_query" && message.contains("wait"))
}

pub fn show(session: &Session, what: Show) -> anyhow::Result<i32> {
    let api = &session.api;
    let path = match what {
        Show::Networks { page } => with_query("/v1/networks", &page.query()),
        Show::Network { network, limit } => with_query(
            &format!("/v1/networks/{}", resolve_network(api, network.text())?),
            &[("limit", limit.map(|limit| limit.to_string()))],
        ),
        Show::Reservations { network, page } => {
            with_query(&format!("/v1/networks/{}/reservations", resolve_network(api, network.text())?), &page.query())
        }
        Show::Hosts { page } => with_query("/v1/hosts", &page.query()),
        Show::Host { host } => format!("/v1/hosts/{}", resolve_host(api, host.text())?),
        Show::Vnics { network, subnet, host, vm, mac, ip, page } => {
            let network = network.map(|network| resolve_network(api, &network)).transpose()?;
            let subnet = match (subnet, network) {
                (Some(subnet), Some(network)) => Some(resolve_subnet(api, network, &subnet)?),
                (Some(subnet), None) => Some(parse_id(&subnet, "subnet (or give --network to name it by CIDR)")?),
                (None, _) => None,
            };
            let host = host.map(|host| resolve_host(api, &host)).transpose()?;
            let [limit, cursor] = page.query();
            with_query(
                "/v1/vnics",
                &[
                    ("network", network.map(|id| id.to_string())),
                    ("subnet", subnet.map(|id| id.to_string())),
                    ("host", host.map(|id| id.to_string())),
                    ("vm", vm.map(|id| id.to_string())),
                    ("mac", mac.map(|mac| mac.to_string())),
                    ("ip", ip.map(|ip| ip.to_string())),
                    limit,
                    cursor,
                ],
            )
        }
        Show::Vnic { vnic } => format!("/v1/vnics/{}", parse_id::<VnicId>(vnic.text(), "vNIC")?),
        Show::Ip { ip, at } => with_query(&format!("/v1/ips/{ip}/history"), &[("at", at.at)]),
        Show::VnicHistory { vnic, at } => {
            with_query(&format!("/v1/vnics/{}/history", parse_id::<VnicId>(vnic.text(), "vNIC")?), &[("at", at.at)])
        }
        Show::MacHistory { mac, at } => with_query(&format!("/v1/macs/{mac}/history"), &[("at", at.at)]),
    };
    let mut view = api.get(&path)?;
    if session.format == Format::Table
        && let Value::Object(fields) = &mut view
    {
        // The log positions the view was read at: for programs (read your writes), not for a person.
        fields.remove("position");
        if let Some(next) = fields.get("next").and_then(Value::as_str) {
            eprintln!("ipam: more follow: add --cursor {next}");
        }
    }
    print!("{}", output::render(&view, session.format)?);
    Ok(exit::OK)
}

fn parse_id<T: std::str::FromStr>(text: &str, what: &str) -> anyhow::Result<T> {
    Ok(text.parse().map_err(|_| BadInput(format!("`{text}` is not a {what} id")))?)
}

/// The items of a list answer: a bare array, or the array under `key` (or `items`).
fn items<'a>(answer: &'a Value, key: &str) -> &'a [Value] {
    match answer {
        Value::Array(items) => items,
        other => other.get(key).or(other.get("items")).and_then(Value::as_array).map_or(&[], Vec::as_slice),
    }
}

/// The one object of a list whose `field` is `name`: none, or an error when several match.
fn unique_by(list: &[Value], field: &str, name: &str, id_field: &str, what: &str) -> anyhow::Result<Option<Uuid>> {
    let found: Vec<&str> =
        list.iter().filter(|item| item[field] == name).filter_map(|item| item[id_field].as_str()).collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(parse_id(one, what)?)),
        several => {
            Err(BadInput(format!("{} {what}s are named `{name}` ({}): give the id", several.len(), several.join(", ")))
                .into())
        }
    }
}

/// Every item of a paged list (`{KEY: [...], "next": cursor}`), for finding a name among them. An
/// API without pages answers the whole list to the first request.
fn list_all(api: &Api, path: &str, key: &str) -> anyhow::Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let paged = with_query(path, &[("limit", Some(NAME_PAGE.to_string())), ("cursor", cursor.clone())]);
        let page = match api.get(&paged) {
            Err(error) if cursor.is_none() && refused_with(&error, "invalid_query") => api.get(path)?,
            other => other?,
        };
        all.extend_from_slice(items(&page, key));
        match page.get("next").and_then(Value::as_str) {
            Some(next) if cursor.as_deref() != Some(next) => cursor = Some(next.to_owned()),
            _ => return Ok(all),
        }
    }
}

/// Items per request when names are looked up in a list.
const NAME_PAGE: usize = 10_000;

fn refused_with(error: &anyhow::Error, wanted: &str) -> bool {
    matches!(error.downcast_ref::<ClientError>(), Some(ClientError::Refused { code, .. }) if code == wanted)
}

fn find_network(api: &Api, name: &str) -> anyhow::Result<Option<NetworkId>> {
    let list = list_all(api, "/v1/networks", "networks")?;
    Ok(unique_by(&list, "name", name, "network_id", "network")?.map(NetworkId))
}

/// A network by id or unique name.
fn resolve_network(api: &Api, text: &str) -> anyhow::Result<NetworkId> {
    if let Ok(id) = text.parse() {
        return Ok(id);
    }
    find_network(api, text)?.ok_or_else(|| BadInput(format!("no network is named `{text}`")).into())
}

/// The hosts the API lists, or a clear error when it cannot list them.
fn find_host(api: &Api, name: &str) -> anyhow::Result<Option<HostId>> {
    let list = match list_all(api, "/v1/hosts", "hosts") {
        Err(error) if matches!(error.downcast_ref(), Some(ClientError::Refused { status: 404 | 405, .. })) => {
            return Err(
                BadInput("this API cannot list hosts (no GET /v1/hosts): name the host by its id".to_owned()).into()
            );
        }
        other => other?,
    };
    Ok(unique_by(&list, "name", name, "host_id", "host")?.map(HostId))
}

/// A host by id or unique name.
fn resolve_host(api: &Api, text: &str) -> anyhow::Result<HostId> {
    if let Ok(id) = text.parse() {
        return Ok(id);
    }
    find_host(api, text)?.ok_or_else(|| BadInput(format!("no host is named `{text}`")).into())
}

/// A host by id or unique name, with its name (a host event carries both).
fn host_with_name(api: &Api, text: &str) -> anyhow::Result<(HostId, String)> {
    let host_id = resolve_host(api, text)?;
    let view = api.get(&format!("/v1/hosts/{host_id}"))?;
    let name = view["name"].as_str().ok_or_else(|| BadInput(format!("host {host_id} has no name yet")))?;
    Ok((host_id, name.to_owned()))
}

/// A subnet of a network by id or CIDR.
fn resolve_subnet(api: &Api, network_id: NetworkId, text: &str) -> anyhow::Result<SubnetId> {
    if let Ok(id) = text.parse() {
        return Ok(id);
    }
    let view = api.get(&format!("/v1/networks/{network_id}"))?;
    unique_by(items(&view, "subnets"), "cidr", text, "subnet_id", "subnet")?
        .map(SubnetId)
        .ok_or_else(|| BadInput(format!("network {network_id} has no subnet {text}")).into())
}

/// The network a vNIC's reservation (or last release) is on.
fn network_of_vnic(api: &Api, vnic_id: VnicId) -> anyhow::Result<NetworkId> {
    let view = match api.get(&format!("/v1/vnics/{vnic_id}")) {
        Err(error) if matches!(error.downcast_ref(), Some(ClientError::Refused { status: 404, .. })) => Value::Null,
        other => other?,
    };
    let known = ["reservation", "last_release"].iter().find_map(|key| view[key]["network_id"].as_str());
    match known {
        Some(network) => parse_id(network, "network"),
        None => Err(BadInput(format!("the API knows no network of vNIC {vnic_id}: give --network")).into()),
    }
}
