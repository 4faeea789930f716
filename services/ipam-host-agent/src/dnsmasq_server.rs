//! The dnsmasq backend that runs the server: one `dnsmasq` process per served network, bound to the
//! network's interface, DNS off, restricted mode, its own lease, pid and host files under the
//! agent's state directory, supervised and restarted when it dies.
//!
//! # Keeping 65k reservations fast (dnsmasq 2.90)
//! A full re-read of the hosts (SIGHUP) costs time quadratic in their number (about 6 s at 65k)
//! and dnsmasq answers nobody meanwhile, while a new file in `--dhcp-hostsdir` is picked up through
//! inotify in milliseconds. So the server keeps two sources: a base `--dhcp-hostsfile` written at
//! start and at each compaction, and `--dhcp-hostsdir` files that each add a batch of new hosts.
//! - A reservation that only adds a host becomes one new file in the hosts directory: served in
//!   milliseconds, whatever the number of hosts.
//! - hostsdir is add-only: a removed host stays in effect until a SIGHUP, and a host whose address
//!   equals one dnsmasq still remembers is refused. So a removal, or an added host whose MAC or
//!   address collides with one dnsmasq still holds, triggers a compaction: the base file is
//!   rewritten with exactly the desired hosts, the hosts directory is emptied, the leases of hosts
//!   that are gone are dropped, and dnsmasq is restarted (a SIGHUP would keep those leases, and
//!   dnsmasq does not offer a leased address to another MAC). A released MAC therefore stops being
//!   served at once, and an address re-used by another MAC is served to the new MAC only.
//!
//! Removals are batched: a compaction runs at most once per [`COMPACTION_INTERVAL`] (the
//! supervision `check` runs one that was put off), so a burst of releases costs one reload. An
//! address re-used by another MAC compacts at once, so it is always served to its new holder. The
//! allocator does not yet hold released addresses back until every server has dropped them; with
//! that, a re-use would never force an immediate reload either.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::net::IpAddr;

use ipam_core::dhcp_plan::NetworkDhcpConfig;
use ipam_core::{Mac, NetworkId};

use crate::backend::{BackendError, DhcpBackend};
use crate::dnsmasq::{host_line, render_options};

/// How the dnsmasq backend runs its servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqOptions {
    /// One directory per network under it: configuration, hosts, leases, pid, log.
    pub state_dir: PathBuf,
    /// The dnsmasq binary.
    pub binary: PathBuf,
    /// The `ip` binary, to put the server's own address on the interface.
    pub ip_binary: PathBuf,
    /// A network namespace to run the servers in (the agent itself stays where it is, so it can
    /// reach the log); `None` runs them in the agent's own namespace.
    pub netns: Option<String>,
}

impl DnsmasqOptions {
    pub fn new(state_dir: impl Into<PathBuf>) -> DnsmasqOptions {
        DnsmasqOptions { state_dir: state_dir.into(), binary: "dnsmasq".into(), ip_binary: "ip".into(), netns: None }
    }
}

/// One network's dnsmasq.
#[derive(Debug)]
pub struct DnsmasqBackend {
    options: DnsmasqOptions,
    server: Option<Server>,
    /// The configuration last applied, to restart a server that died with.
    applied: Option<NetworkDhcpConfig>,
}

#[derive(Debug)]
struct Server {
    network_id: NetworkId,
    dir: PathBuf,
    child: Child,
    /// The rendered options it was started with; other options need a restart.
    options_text: String,
    /// The hosts dnsmasq holds (base file plus hostsdir additions), by MAC, and by address.
    loaded: BTreeMap<Mac, IpAddr>,
    loaded_ips: BTreeMap<IpAddr, Mac>,
    next_file: u64,
    /// Addresses this server put on its interface, as `ip/prefix`.
    addresses: BTreeSet<String>,
    interface: String,
    restarts: u32,
    last_start: Instant,
    /// Hosts were removed but are still loaded: a compaction is due (see [`COMPACTION_INTERVAL`]).
    removal_pending: bool,
}

/// Removals are compacted at most this often, so that a burst of VM stops costs one reload, not
/// one each; a removed MAC is served at most this long after its release (plus a supervision
/// period). An address re-used by another MAC compacts at once, whatever the interval.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(1);

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackendError {
    let path = path.to_owned();
    move |source| BackendError::Io { action, path, source }
}

fn write_file(path: &Path, text: &str) -> Result<(), BackendError> {
    let temp = path.with_extension("tmp");
    let mut file = fs::File::create(&temp).map_err(io("cannot create", &temp))?;
    file.write_all(text.as_bytes()).map_err(io("cannot write", &temp))?;
    file.sync_all().map_err(io("cannot sync", &temp))?;
    fs::set_permissions(&temp, fs::Permissions::from_mode(0o644)).map_err(io("cannot set permissions of", &temp))?;
    fs::rename(&temp, path).map_err(io("cannot rename onto", path))
}

/// Ends the dnsmasq whose pid an earlier agent left in `dir`, if that pid still is a dnsmasq (a
/// recycled pid of another process is left alone). Answers whether it signalled one.
fn stop_stale(dir: &Path) -> bool {
    let Ok(pid) = fs::read_to_string(dir.join("dnsmasq.pid")) else { return false };
    let pid = pid.trim();
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let is_dnsmasq = fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "dnsmasq");
    if is_dnsmasq {
        let _ = Command::new("kill").args(["-TERM", pid]).status();
        std::thread::sleep(Duration::from_millis(100));
    }
    is_dnsmasq
}

/// The hosts file text: one `MAC,IP` line per host.
fn hosts_text(network_id: NetworkId, hosts: &BTreeMap<Mac, IpAddr>) -> Result<String, BackendError> {
    let mut text = String::with_capacity(hosts.len() * 32);
    for (mac, ip) in hosts {
        text.push_str(&host_line(network_id, *mac, *ip)?);
        text.push('\n');
    }
    Ok(text)
}

/// The configuration's hosts, by MAC (a MAC holds one address on a network).
fn desired_hosts(config: &NetworkDhcpConfig) -> BTreeMap<Mac, IpAddr> {
    config.subnets.iter().flat_map(|subnet| subnet.hosts.iter().map(|host| (host.mac, host.ip))).collect()
}

impl DnsmasqBackend {
    pub fn new(options: DnsmasqOptions) -> DnsmasqBackend {
        DnsmasqBackend { options, server: None, applied: None }
    }

    fn dir(&self, network_id: NetworkId) -> PathBuf {
        self.options.state_dir.join(network_id.to_string())
    }

    /// The process arguments: everything in one configuration file of our own.
    fn start(
        &self,
        config: &NetworkDhcpConfig,
        options_text: String,
        hosts: BTreeMap<Mac, IpAddr>,
    ) -> Result<Server, BackendError> {
        let dir = self.dir(config.network_id);
        let hostsdir = dir.join("hosts.d");
        fs::create_dir_all(&hostsdir).map_err(io("cannot create", &hostsdir))?;
        for path in [&self.options.state_dir, &dir, &hostsdir] {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                .map_err(io("cannot set permissions of", path))?;
        }
        for entry in fs::read_dir(&hostsdir).map_err(io("cannot list", &hostsdir))? {
            let path = entry.map_err(io("cannot list", &hostsdir))?.path();
            fs::remove_file(&path).map_err(io("cannot remove", &path))?;
        }
        write_file(&dir.join("hosts"), &hosts_text(config.network_id, &hosts)?)?;
        // dnsmasq keeps a lease until it expires and will not offer a leased address to another
        // MAC; a lease of a host that is no longer reserved (or now holds another address) goes.
        let leases = dir.join("leases");
        if let Ok(text) = fs::read_to_string(&leases) {
            let kept: String = text
                .lines()
                .filter(|line| {
                    let mut fields = line.split_whitespace().skip(1);
                    let (Some(mac), Some(ip)) = (fields.next(), fields.next()) else { return false };
                    let (Ok(mac), Ok(ip)) = (mac.parse::<Mac>(), ip.trim_matches(['[', ']']).parse::<IpAddr>()) else {
                        return false;
                    };
                    hosts.get(&mac) == Some(&ip)
                })
                .map(|line| format!("{line}\n"))
                .collect();
            write_file(&leases, &kept)?;
        }
        // A dnsmasq left running by an earlier agent (stopping the agent leaves servers running)
        // holds the interface: end it first.
        stop_stale(&dir);
        let conf = format!(
            "{options_text}\n# Files of this server.\ndhcp-hostsfile={}\ndhcp-hostsdir={}\ndhcp-leasefile={}\npid-file={}\n",
            dir.join("hosts").display(),
            hostsdir.display(),
            dir.join("leases").display(),
            dir.join("dnsmasq.pid").display(),
        );
        write_file(&dir.join("dnsmasq.conf"), &conf)?;
        let log = fs::File::create(dir.join("dnsmasq.log")).map_err(io("cannot create", &dir.join("dnsmasq.log")))?;
        let mut command = match &self.options.netns {
            // `ip netns exec` execs dnsmasq in place, so the child's pid is dnsmasq's.
            Some(netns) => {
                let mut command = Command::new(&self.options.ip_binary);
                command.args(["netns", "exec", netns]).arg(&self.options.binary);
                command
            }
            None => Command::new(&self.options.binary),
        };
        let child = command
            .arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", dir.join("dnsmasq.conf").display()))
            // The state directory belongs to the agent (root); dnsmasq keeps root to read it.
            .arg("--user=root")
            .arg("--log-dhcp")
            .arg("--log-facility=-")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("cannot duplicate", &dir))?)
            .stderr(log)
            .spawn()
            .map_err(io("cannot start dnsmasq", &self.options.binary))?;
        tracing::info!(network = %config.network_id, pid = child.id(), hosts = hosts.len(), "Started dnsmasq.");
        Ok(Server {
            network_id: config.network_id,
            dir,
            child,
            options_text,
            loaded_ips: hosts.iter().map(|(mac, ip)| (*ip, *mac)).collect(),
            loaded: hosts,
            next_file: 0,
            addresses: BTreeSet::new(),
            interface: config.interface.to_string(),
            restarts: 0,
            last_start: Instant::now(),
            removal_pending: false,
        })
    }

    fn ip(&self, args: &[&str]) -> Result<std::process::Output, BackendError> {
        let mut command = Command::new(&self.options.ip_binary);
        if let Some(netns) = &self.options.netns {
            command.args(["-n", netns]);
        }
        command.args(args).output().map_err(io("cannot run", &self.options.ip_binary))
    }

    /// Puts the server's own addresses on the interface (before dnsmasq needs them) and takes off
    /// the ones it no longer has.
    fn sync_addresses(
        &self,
        interface: &str,
        current: &mut BTreeSet<String>,
        config: &NetworkDhcpConfig,
    ) -> Result<(), BackendError> {
        let wanted: BTreeSet<String> = config
            .subnets
            .iter()
            .filter_map(|s| s.server_address.map(|ip| format!("{ip}/{}", s.cidr.prefix_len())))
            .collect();
        for address in wanted.difference(current) {
            let output = self.ip(&["addr", "replace", address, "dev", interface])?;
            if !output.status.success() {
                tracing::warn!(address, interface, error = %String::from_utf8_lossy(&output.stderr).trim(),
                               "Cannot put the server address on the interface.");
            }
        }
        for address in current.difference(&wanted) {
            let _ = self.ip(&["addr", "del", address, "dev", interface]);
        }
        *current = wanted;
        Ok(())
    }

    fn signal(server: &Server, signal: &str) {
        let _ = Command::new("kill").args([signal, &server.child.id().to_string()]).status();
    }

    fn stop_server(&self, mut server: Server) {
        Self::signal(&server, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = server.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = server.child.kill();
        let _ = server.child.wait();
        for address in std::mem::take(&mut server.addresses) {
            let _ = self.ip(&["addr", "del", &address, "dev", &server.interface]);
        }
        let _ = fs::remove_dir_all(&server.dir);
        tracing::info!(network = %server.network_id, "Stopped dnsmasq.");
    }
}

impl DhcpBackend for DnsmasqBackend {
    fn apply(&mut self, config: &NetworkDhcpConfig) -> Result<(), BackendError> {
        let options_text = render_options(config)?;
        let desired = desired_hosts(config);
        let mut server = match self.server.take() {
            Some(mut server)
                if server.options_text == options_text && server.interface == config.interface.as_str() =>
            {
                match server.child.try_wait() {
                    Ok(None) => server,
                    _ => {
                        // Died: restart it (`check` spaces restarts out by its backoff).
                        tracing::warn!(network = %config.network_id, restarts = server.restarts + 1, "dnsmasq died; restarting it.");
                        let restarts = server.restarts + 1;
                        let addresses = std::mem::take(&mut server.addresses);
                        let _ = server.child.wait();
                        let mut restarted = self.start(config, options_text.clone(), desired.clone())?;
                        restarted.restarts = restarts;
                        restarted.addresses = addresses;
                        restarted
                    }
                }
            }
            other => {
                // None yet, or other options (a subnet came or went, the interface changed): a
                // fresh server, whose own addresses are on the interface before it binds to it.
                if let Some(old) = other {
                    self.stop_server(old);
                }
                let mut addresses = BTreeSet::new();
                self.sync_addresses(config.interface.as_str(), &mut addresses, config)?;
                let mut started = self.start(config, options_text.clone(), desired.clone())?;
                started.addresses = addresses;
                started
            }
        };
        let interface = server.interface.clone();
        self.sync_addresses(&interface, &mut server.addresses, config)?;
        // The diff against what dnsmasq holds, without building any text: this runs for every
        // change, with tens of thousands of hosts.
        let mut added: BTreeMap<Mac, IpAddr> = BTreeMap::new();
        let mut collides = false;
        let mut known = 0;
        for (mac, ip) in &desired {
            match server.loaded.get(mac) {
                Some(held) if held == ip => known += 1,
                Some(_) => {
                    known += 1;
                    collides = true;
                    added.insert(*mac, *ip);
                }
                None => {
                    collides |= server.loaded_ips.contains_key(ip);
                    added.insert(*mac, *ip);
                }
            }
        }
        // Every desired MAC dnsmasq holds is counted in `known`; any other MAC it holds was removed.
        let removed = server.loaded.len() > known;
        let compact = collides || (removed && server.last_start.elapsed() >= COMPACTION_INTERVAL);
        if compact {
            // Compaction: a fresh dnsmasq with exactly the desired hosts in its base file, an empty
            // hosts directory, and without the leases of hosts that are gone (a SIGHUP would keep
            // those, and a re-used address would not be offered to its new MAC until they expire).
            Self::signal(&server, "-TERM");
            let _ = server.child.wait();
            let (restarts, addresses) = (server.restarts, std::mem::take(&mut server.addresses));
            let mut restarted = self.start(config, options_text.clone(), desired.clone())?;
            restarted.restarts = restarts;
            restarted.addresses = addresses;
            server = restarted;
            tracing::debug!(network = %config.network_id, hosts = server.loaded.len(), "Compacted the dnsmasq hosts.");
        } else if !added.is_empty() {
            server.removal_pending |= removed;
            // Written outside the watched directory, then renamed in: dnsmasq never reads half a file.
            let name = format!("add-{:08}", server.next_file);
            server.next_file += 1;
            let temp = server.dir.join(format!("{name}.tmp"));
            write_file(&temp, &hosts_text(config.network_id, &added)?)?;
            let target = server.dir.join("hosts.d").join(&name);
            fs::rename(&temp, &target).map_err(io("cannot rename onto", &target))?;
            server.loaded_ips.extend(added.iter().map(|(mac, ip)| (*ip, *mac)));
            server.loaded.extend(added);
        } else {
            server.removal_pending |= removed;
        }
        self.server = Some(server);
        self.applied = Some(config.clone());
        Ok(())
    }

    fn check(&mut self) -> Result<Option<String>, BackendError> {
        let (Some(server), Some(config)) = (self.server.as_mut(), self.applied.clone()) else { return Ok(None) };
        let Ok(Some(status)) = server.child.try_wait() else {
            // Alive: run a compaction that was put off.
            if server.removal_pending && server.last_start.elapsed() >= COMPACTION_INTERVAL {
                self.apply(&config)?;
            }
            return Ok(None);
        };
        // Backoff: 1 s after the first death, doubling up to a minute, counted from the last start.
        let backoff = Duration::from_secs(1 << server.restarts.min(6));
        if server.last_start.elapsed() < backoff {
            return Ok(None);
        }
        let restarts = server.restarts + 1;
        self.apply(&config)?;
        Ok(Some(format!("dnsmasq exited ({status}); restarted it (restart {restarts})")))
    }

    fn stop(&mut self, network_id: NetworkId) -> Result<(), BackendError> {
        self.applied = None;
        if let Some(server) = self.server.take() {
            self.stop_server(server);
        } else {
            // A server left by an earlier agent (this host was replaced while its agent was away).
            let dir = self.dir(network_id);
            if stop_stale(&dir) {
                tracing::info!(network = %network_id, "Stopped a stale dnsmasq left by an earlier agent.");
            }
            let _ = fs::remove_dir_all(dir);
        }
        Ok(())
    }
}
