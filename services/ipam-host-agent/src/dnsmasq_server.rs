//! The dnsmasq backend that runs the server: for each served network, a few `dnsmasq` processes
//! (shards, see [`crate::dnsmasq_shards`]) bound to the network's interface, DNS off, restricted
//! mode, each with its own lease, pid and host files under the agent's state directory, supervised
//! and restarted when one dies.
//!
//! # Keeping 65k reservations fast (dnsmasq 2.90)
//! dnsmasq checks each `dhcp-host` line it loads against every line it holds, so a full load costs
//! time quadratic in the number of hosts (about 6 s at 65k in one process) and it answers nobody
//! meanwhile. A file added to `--dhcp-hostsdir` is read through inotify in milliseconds, and the
//! newest line for a MAC wins; but hostsdir is add-only (a line stays until a reload), and dnsmasq
//! refuses a line whose address an older line still holds. So each shard keeps a base
//! `--dhcp-hostsfile`, written when it starts, plus additions:
//! - a new reservation, or a MAC moved to a free address, is a line in a new hosts-directory file:
//!   served within milliseconds;
//! - a release is a `MAC,ignore` line in a new file: the MAC is not answered from then on;
//! - an address whose older line is still held (re-used by another MAC of the same shard, or given
//!   back to a masked MAC) reloads that shard at once: its base file rewritten with exactly its
//!   hosts, its hosts directory emptied, the leases of hosts that are gone dropped, dnsmasq
//!   restarted (a SIGHUP would keep those leases, and dnsmasq does not offer a leased address to
//!   another MAC). A shard holds about 2k hosts, so that silences a thirty-second of a 65k
//!   network for tens of milliseconds;
//! - stale lines (masked MACs, old addresses of moved MACs) are dropped by the same reload, at most
//!   once per [`COMPACTION_INTERVAL`] per shard (the supervision `check` runs one that is due).
//!
//! # What dnsmasq refuses
//! dnsmasq exits on an option it refuses (an IPv6 prefix shorter than /64, a DNS server of the
//! other family), and a dnsmasq that keeps exiting serves nobody on the network. The core refuses
//! such subnets upstream; this backend does not count on it:
//! - new options are checked with `dnsmasq --test`, run with the real command line on the file
//!   shard 0 would get, before anything is stopped or written. Options it accepts are cached (by
//!   their rendering), so a change of hosts tests nothing;
//! - when refused, the options without subnets are tested, then the subnets in order, each beside
//!   those kept so far (so a pair refused only together, such as an IPv4-mapped IPv6 subnet beside
//!   its IPv4 twin, loses its later member). A refused subnet the server ran keeps its previous
//!   settings if dnsmasq still accepts them, else it is left out; the others are served, and
//!   [`DhcpBackend::degraded`] says what was refused in dnsmasq's words, for the `running`
//!   status. Only options refused without any subnet fail the apply ([`BackendError::Refused`]),
//!   and then the running server is left exactly as it was;
//! - what `--test` cannot see (an address dnsmasq only refuses when it binds) still makes a shard
//!   exit: `check` restarts it with backoff and reports dnsmasq's last error from the shard's log.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipam_core::dhcp_plan::{NetworkDhcpConfig, SubnetDhcpConfig};
use ipam_core::{Mac, NetworkId, SubnetId};

use crate::backend::{BackendError, ConfigChange, DhcpBackend, MAX_ERROR_CHARS, one_line};
use crate::dhcp_relay::UnicastRelay;
use crate::dnsmasq::{host_line, ignore_line, render_options};
use crate::dnsmasq_shards::{
    COMPACTION_INTERVAL, HostAddresses, MAX_SHARDS, ShardAction, ShardState, apply_host_change, desired_hosts,
    must_split, shard_count, shard_of, split,
};
use crate::leases::duid_mac;

/// How the dnsmasq backend runs its servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqOptions {
    /// One directory per network under it, with one directory per shard: configuration, hosts,
    /// leases, pid, log.
    pub state_dir: PathBuf,
    /// The dnsmasq binary.
    pub binary: PathBuf,
    /// The `ip` binary, to put the server's own address on the interface.
    pub ip_binary: PathBuf,
    /// A network namespace to run the servers in (the agent itself stays where it is, so it can
    /// reach the log); `None` runs them in the agent's own namespace.
    pub netns: Option<String>,
    /// At most this many dnsmasq processes per network (a power of two; 1 runs one process).
    pub max_shards: usize,
}

impl DnsmasqOptions {
    pub fn new(state_dir: impl Into<PathBuf>) -> DnsmasqOptions {
        DnsmasqOptions {
            state_dir: state_dir.into(),
            binary: "dnsmasq".into(),
            ip_binary: "ip".into(),
            netns: None,
            max_shards: MAX_SHARDS,
        }
    }
}

/// One network's DHCP server.
#[derive(Debug)]
pub struct DnsmasqBackend {
    options: DnsmasqOptions,
    server: Option<Server>,
    /// The settings last applied (as served: without what dnsmasq refused), hosts left out (the
    /// shards hold those): what a refused subnet falls back to, and what supervision re-applies.
    applied: Option<NetworkDhcpConfig>,
    /// What dnsmasq made of the options last asked for, so that they are tested once, not at
    /// every change of hosts.
    vetting: Option<Vetting>,
}

/// The verdict of `dnsmasq --test` on one requested set of options (see [`DnsmasqBackend::vet`]).
#[derive(Debug)]
struct Vetting {
    /// [`render_options`] of the requested configuration.
    requested: String,
    /// The subnets dnsmasq refused: served with their previous settings (`Some`, hosts left out),
    /// or not at all (`None`).
    refused: BTreeMap<SubnetId, Option<SubnetDhcpConfig>>,
    /// What was refused and why, one entry per refused subnet, for the status.
    notes: Vec<String>,
}

impl Vetting {
    /// `config` as it is served: the refused subnets replaced by their previous settings (with
    /// today's hosts) or left out. Borrowed when nothing was refused, the common case, so that
    /// tens of thousands of hosts are not copied at every change.
    fn served<'a>(&self, config: &'a NetworkDhcpConfig) -> Cow<'a, NetworkDhcpConfig> {
        if self.refused.is_empty() {
            return Cow::Borrowed(config);
        }
        let subnets = config
            .subnets
            .iter()
            .filter_map(|subnet| match self.refused.get(&subnet.subnet_id) {
                None => Some(subnet.clone()),
                Some(None) => None,
                Some(Some(previous)) => Some(SubnetDhcpConfig { hosts: subnet.hosts.clone(), ..previous.clone() }),
            })
            .collect();
        Cow::Owned(NetworkDhcpConfig { subnets, ..without_subnets(config) })
    }
}

/// `config` with no subnet: what every server renders whatever its subnets.
fn without_subnets(config: &NetworkDhcpConfig) -> NetworkDhcpConfig {
    NetworkDhcpConfig {
        network_id: config.network_id,
        epoch: config.epoch,
        interface: config.interface.clone(),
        subnets: Vec::new(),
        conflict_probe: config.conflict_probe,
    }
}

/// `config` without its hosts: what [`DnsmasqBackend::applied`] keeps.
fn settings(config: &NetworkDhcpConfig) -> NetworkDhcpConfig {
    NetworkDhcpConfig { subnets: config.subnets.iter().map(bare).collect(), ..without_subnets(config) }
}

/// `subnet`'s settings without its hosts: all that `dnsmasq --test` looks at.
fn bare(subnet: &SubnetDhcpConfig) -> SubnetDhcpConfig {
    SubnetDhcpConfig {
        subnet_id: subnet.subnet_id,
        cidr: subnet.cidr,
        router: subnet.router,
        dns_servers: subnet.dns_servers.clone(),
        ntp_servers: subnet.ntp_servers.clone(),
        lease_secs: subnet.lease_secs,
        server_address: subnet.server_address,
        server_address_refused: subnet.server_address_refused.clone(),
        hosts: Vec::new(),
    }
}

/// The shards of one network, and what they share.
#[derive(Debug)]
struct Server {
    network_id: NetworkId,
    /// The network's directory; each shard has a `shard-NN` directory in it.
    dir: PathBuf,
    /// The rendered options every shard was started with; other options need a restart.
    options_text: String,
    interface: String,
    /// Addresses this server put on its interface, as `ip/prefix` (also in the `addresses` file, so
    /// that a later agent can take them off a server it finds stale).
    addresses: BTreeSet<String>,
    /// A power of two; a host's shard is [`crate::dnsmasq_shards::shard_of`] its MAC.
    shards: Vec<Shard>,
    /// With several shards, the relay that turns unicast requests (renewals) into broadcasts all
    /// shards hear, and the addresses it relays.
    relay: Option<UnicastRelay>,
    relayed: Vec<Ipv4Addr>,
}

/// One dnsmasq process and what it holds.
#[derive(Debug)]
struct Shard {
    dir: PathBuf,
    child: Child,
    /// The hosts of the plan that fall in this shard.
    desired: BTreeMap<Mac, HostAddresses>,
    /// `desired` changed since dnsmasq was last given it (or giving it failed).
    dirty: bool,
    /// The lines dnsmasq holds (base file plus hostsdir additions).
    state: ShardState,
    next_file: u64,
    restarts: u32,
    last_start: Instant,
    /// dnsmasq holds lines no host needs: a compaction is due.
    stale: bool,
}

impl Shard {
    /// dnsmasq holds stale lines and the shard has not reloaded for a compaction interval.
    fn compaction_due(&self) -> bool {
        self.stale && self.last_start.elapsed() >= COMPACTION_INTERVAL
    }
}

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

/// Ends a dnsmasq this agent started: SIGTERM (it exits at once), SIGKILL after 5 s. A child that
/// already exited and was reaped is not signalled: its pid may belong to another process by now.
fn terminate(child: &mut Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The shard directories an earlier run left in a network's directory.
fn shard_dirs(network_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(network_dir) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_dir() && path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("shard-"))
        })
        .collect();
    dirs.sort();
    dirs
}

/// The configuration file of shard `index` (in `dir`): the network's options, then the shard's own
/// files.
fn shard_conf(options_text: &str, index: usize, dir: &Path) -> String {
    format!(
        "{options_text}\n# Files of shard {index}.\ndhcp-hostsfile={}\ndhcp-hostsdir={}\ndhcp-leasefile={}\npid-file={}\n",
        dir.join("hosts").display(),
        dir.join("hosts.d").display(),
        dir.join("leases").display(),
        dir.join("dnsmasq.pid").display(),
    )
}

/// dnsmasq's own words from its output: its error lines (`dnsmasq: …`, what it prints to stderr
/// before it exits; its log lines carry a pid, `dnsmasq[12]: …`), without the prefix, on one line.
/// `None` when it said no such thing.
fn dnsmasq_error(output: &str) -> Option<String> {
    let errors: Vec<&str> = output
        .lines()
        .filter_map(|line| line.trim().strip_prefix("dnsmasq: "))
        .filter(|line| !line.starts_with("syntax check OK"))
        .collect();
    (!errors.is_empty()).then(|| one_line(&errors.join("\n"), MAX_ERROR_CHARS))
}

/// Why the dnsmasq of shard directory `dir` exited, from the log it wrote (stdout and stderr).
fn exit_reason(dir: &Path) -> Option<String> {
    dnsmasq_error(&fs::read_to_string(dir.join("dnsmasq.log")).ok()?)
}

/// The hosts file text: one line per host, with its addresses (see [`host_line`]).
fn hosts_text(network_id: NetworkId, hosts: &BTreeMap<Mac, HostAddresses>) -> Result<String, BackendError> {
    let mut text = String::with_capacity(hosts.len() * 32);
    for (mac, addresses) in hosts {
        text.push_str(&host_line(network_id, *mac, addresses)?);
        text.push('\n');
    }
    Ok(text)
}

/// Keeps the lines of a dnsmasq lease file whose host is still reserved with that address, and the
/// `duid` line (the server's own DUID: DHCPv6 clients renew with the server that leased to them).
/// A DHCPv6 lease line (`expiry IAID [IP] name DUID`) names no MAC: it is kept only when its DUID
/// embeds one (DUID-LLT, DUID-LL), held with that address; dnsmasq forgets the others, and their
/// guests get the same static address again on their next request.
fn kept_leases(text: &str, hosts: &BTreeMap<Mac, HostAddresses>) -> String {
    text.lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first() == Some(&"duid") {
                return fields.len() == 2;
            }
            let (Some(second), Some(ip)) = (fields.get(1), fields.get(2)) else { return false };
            let Ok(ip) = ip.trim_matches(['[', ']']).parse::<IpAddr>() else { return false };
            let mac = match second.parse::<Mac>() {
                Ok(mac) => Some(mac),
                Err(_) if ip.is_ipv6() => fields.get(4).and_then(|duid| duid_mac(duid)),
                Err(_) => None,
            };
            mac.is_some_and(|mac| hosts.get(&mac).is_some_and(|addresses| addresses.contains(ip)))
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

/// What shard `index` of a server started afresh starts with, from the lease files of the server it
/// replaces (`old`, one per old shard): the old shard's own server DUID, if it had one (DHCPv6
/// clients renew with the server that leased to them), and every lease of every old shard (hosts
/// may have moved between shards); [`kept_leases`] then keeps those of the shard's hosts.
fn carried_leases(old: &[String], index: usize) -> String {
    let is_duid = |line: &&str| line.split_whitespace().next() == Some("duid");
    let duid = old.get(index).and_then(|text| text.lines().find(is_duid));
    let leases = old.iter().flat_map(|text| text.lines()).filter(|line| !is_duid(line) && !line.trim().is_empty());
    duid.into_iter().chain(leases).map(|line| format!("{line}\n")).collect()
}

impl DnsmasqBackend {
    pub fn new(options: DnsmasqOptions) -> DnsmasqBackend {
        DnsmasqBackend { options, server: None, applied: None, vetting: None }
    }

    fn dir(&self, network_id: NetworkId) -> PathBuf {
        self.options.state_dir.join(network_id.to_string())
    }

    /// Starts one shard's dnsmasq with `hosts` in its base file, and with the leases it holds, or
    /// those of `carried` (see [`carried_leases`]) when given.
    fn start_shard(
        &self,
        network_id: NetworkId,
        options_text: &str,
        index: usize,
        hosts: BTreeMap<Mac, HostAddresses>,
        carried: Option<&str>,
    ) -> Result<Shard, BackendError> {
        let network_dir = self.dir(network_id);
        let dir = network_dir.join(format!("shard-{index:02}"));
        let hostsdir = dir.join("hosts.d");
        fs::create_dir_all(&hostsdir).map_err(io("cannot create", &hostsdir))?;
        for path in [&self.options.state_dir, &network_dir, &dir, &hostsdir] {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                .map_err(io("cannot set permissions of", path))?;
        }
        // A dnsmasq left running by an earlier agent (stopping the agent leaves servers running)
        // holds the shard's files: end it first.
        stop_stale(&dir);
        for entry in fs::read_dir(&hostsdir).map_err(io("cannot list", &hostsdir))? {
            let path = entry.map_err(io("cannot list", &hostsdir))?.path();
            fs::remove_file(&path).map_err(io("cannot remove", &path))?;
        }
        write_file(&dir.join("hosts"), &hosts_text(network_id, &hosts)?)?;
        // dnsmasq keeps a lease until it expires and will not offer a leased address to another
        // MAC; a lease of a host that is no longer reserved (or now holds another address) goes.
        let leases = dir.join("leases");
        if let Some(text) = carried.map(str::to_owned).or_else(|| fs::read_to_string(&leases).ok()) {
            write_file(&leases, &kept_leases(&text, &hosts))?;
        }
        write_file(&dir.join("dnsmasq.conf"), &shard_conf(options_text, index, &dir))?;
        let log_path = dir.join("dnsmasq.log");
        let log = fs::File::create(&log_path).map_err(io("cannot create", &log_path))?;
        let child = self
            .dnsmasq(&dir.join("dnsmasq.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("cannot duplicate", &log_path))?)
            .stderr(log)
            .spawn()
            .map_err(io("cannot start dnsmasq", &self.options.binary))?;
        tracing::debug!(network = %network_id, shard = index, pid = child.id(), hosts = hosts.len(), "Started dnsmasq.");
        Ok(Shard {
            dir,
            child,
            state: ShardState::loaded(&hosts),
            desired: hosts,
            dirty: false,
            next_file: 0,
            restarts: 0,
            last_start: Instant::now(),
            stale: false,
        })
    }

    /// The dnsmasq command line of a shard whose configuration file is `conf`; `--test` added to
    /// it checks that file exactly as the real run would read it.
    fn dnsmasq(&self, conf: &Path) -> Command {
        let mut command = match &self.options.netns {
            // `ip netns exec` execs dnsmasq in place, so the child's pid is dnsmasq's.
            Some(netns) => {
                let mut command = Command::new(&self.options.ip_binary);
                command.args(["netns", "exec", netns]).arg(&self.options.binary);
                command
            }
            None => Command::new(&self.options.binary),
        };
        command
            .arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", conf.display()))
            // The state directory belongs to the agent (root); dnsmasq keeps root to read it.
            .arg("--user=root")
            .arg("--log-dhcp")
            .arg("--log-facility=-");
        command
    }

    /// Runs `dnsmasq --test` on `config`'s options, in the configuration file shard 0 would get.
    /// `Ok(Err(text))` is dnsmasq's refusal in its own words; `Err` means dnsmasq could not run.
    fn test(&self, config: &NetworkDhcpConfig) -> Result<Result<(), String>, BackendError> {
        let options_text = render_options(config)?;
        let network_dir = self.dir(config.network_id);
        fs::create_dir_all(&self.options.state_dir).map_err(io("cannot create", &self.options.state_dir))?;
        // Beside the network's directory, not in it: a refused configuration leaves no trace there.
        let conf = self.options.state_dir.join(format!(".{}.test.conf", config.network_id));
        write_file(&conf, &shard_conf(&options_text, 0, &network_dir.join("shard-00")))?;
        let output = self.dnsmasq(&conf).arg("--test").stdin(Stdio::null()).output();
        let _ = fs::remove_file(&conf);
        let output = output.map_err(io("cannot run dnsmasq", &self.options.binary))?;
        if output.status.success() {
            return Ok(Ok(()));
        }
        // Its line numbers are those of the rendered file, which is gone by now.
        let said = format!("{}{}", String::from_utf8_lossy(&output.stderr), String::from_utf8_lossy(&output.stdout))
            .replace(&conf.display().to_string(), "the rendered configuration");
        Ok(Err(dnsmasq_error(&said).unwrap_or_else(|| format!("dnsmasq --test failed ({})", output.status))))
    }

    /// Asks dnsmasq what it makes of `config`'s options, before anything is stopped or written.
    /// Accepted whole: nothing refused. Otherwise the options without any subnet are tested (a
    /// refusal of those is [`BackendError::Refused`]: nothing can be served), then the subnets one
    /// by one in order, each beside those kept so far, so that a subnet refused only beside
    /// another (an IPv4-mapped IPv6 subnet and its IPv4 twin) is found too. A refused subnet that
    /// the running server serves keeps its previous settings when dnsmasq still accepts them;
    /// otherwise it is left out. The others are served either way.
    fn vet(&self, config: &NetworkDhcpConfig, requested: String) -> Result<Vetting, BackendError> {
        let mut vetting = Vetting { requested, refused: BTreeMap::new(), notes: Vec::new() };
        if self.test(config)?.is_ok() {
            return Ok(vetting);
        }
        let mut kept = without_subnets(config);
        if let Err(detail) = self.test(&kept)? {
            return Err(BackendError::Refused { network_id: config.network_id, detail });
        }
        let previous: BTreeMap<SubnetId, &SubnetDhcpConfig> =
            self.applied.iter().flat_map(|applied| &applied.subnets).map(|subnet| (subnet.subnet_id, subnet)).collect();
        for subnet in &config.subnets {
            kept.subnets.push(bare(subnet));
            let Err(error) = self.test(&kept)? else { continue };
            kept.subnets.pop();
            let mut note = format!("subnet {} ({}) refused by dnsmasq: {error}", subnet.subnet_id, subnet.cidr);
            let mut replacement = None;
            if let Some(old) = previous.get(&subnet.subnet_id).map(|old| bare(old)).filter(|old| *old != bare(subnet)) {
                kept.subnets.push(old.clone());
                if self.test(&kept)?.is_ok() {
                    note.push_str("; still served with its previous settings");
                    replacement = Some(old);
                } else {
                    kept.subnets.pop();
                }
            }
            if replacement.is_none() {
                note.push_str("; not served");
            }
            tracing::warn!(network = %config.network_id, subnet = %subnet.subnet_id, detail = note, "dnsmasq refused a subnet.");
            vetting.refused.insert(subnet.subnet_id, replacement);
            vetting.notes.push(note);
        }
        Ok(vetting)
    }

    /// `config` as the server will serve it: vetted by dnsmasq when its options are new.
    fn served<'a>(&mut self, config: &'a NetworkDhcpConfig) -> Result<Cow<'a, NetworkDhcpConfig>, BackendError> {
        let requested = render_options(config)?;
        if self.vetting.as_ref().is_none_or(|vetting| vetting.requested != requested) {
            self.vetting = Some(self.vet(config, requested)?);
        }
        Ok(match &self.vetting {
            Some(vetting) => vetting.served(config),
            None => Cow::Borrowed(config),
        })
    }

    /// Starts a whole server: its own addresses on the interface first (dnsmasq binds to it), then
    /// as many shards as its hosts need.
    fn start_server(
        &self,
        config: &NetworkDhcpConfig,
        options_text: String,
        desired: &BTreeMap<Mac, HostAddresses>,
        addresses: BTreeSet<String>,
        carried: Option<&[String]>,
    ) -> Result<Server, BackendError> {
        let dir = self.dir(config.network_id);
        fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        let mut server = Server {
            network_id: config.network_id,
            dir,
            options_text,
            interface: config.interface.to_string(),
            addresses,
            shards: Vec::new(),
            relay: None,
            relayed: Vec::new(),
        };
        self.sync_addresses(&mut server, config)?;
        // Kept across a restart of the whole server, so not necessarily changed (and written) above.
        Self::record_addresses(&server)?;
        let count = shard_count(desired.len(), self.options.max_shards);
        // Shards of an earlier run beyond this count would keep answering: end them.
        for stale in shard_dirs(&server.dir).into_iter().skip(count) {
            stop_stale(&stale);
            let _ = fs::remove_dir_all(stale);
        }
        for (index, hosts) in split(desired, count).into_iter().enumerate() {
            let carried = carried.map(|old| carried_leases(old, index));
            match self.start_shard(config.network_id, &server.options_text, index, hosts, carried.as_deref()) {
                Ok(shard) => server.shards.push(shard),
                Err(error) => {
                    // No half-started server: the next apply starts it whole.
                    self.stop_server(server);
                    return Err(error);
                }
            }
        }
        self.sync_relay(&mut server);
        tracing::info!(network = %config.network_id, shards = count, hosts = desired.len(), "Started the DHCP server.");
        Ok(server)
    }

    fn ip(&self, args: &[&str]) -> Result<std::process::Output, BackendError> {
        let mut command = Command::new(&self.options.ip_binary);
        if let Some(netns) = &self.options.netns {
            command.args(["-n", netns]);
        }
        command.args(args).output().map_err(io("cannot run", &self.options.ip_binary))
    }

    /// Puts the server's own addresses on the interface (before dnsmasq needs them), takes off the
    /// ones it no longer has, and records them for a later agent.
    fn sync_addresses(&self, server: &mut Server, config: &NetworkDhcpConfig) -> Result<(), BackendError> {
        let wanted: BTreeSet<String> = config
            .subnets
            .iter()
            .filter_map(|s| s.server_address.map(|ip| format!("{ip}/{}", s.cidr.prefix_len())))
            .collect();
        if wanted == server.addresses {
            return Ok(());
        }
        for address in wanted.difference(&server.addresses) {
            let output = self.ip(&["addr", "replace", address, "dev", &server.interface])?;
            if !output.status.success() {
                tracing::warn!(address, interface = server.interface, error = %String::from_utf8_lossy(&output.stderr).trim(),
                               "Cannot put the server address on the interface.");
            }
        }
        for address in server.addresses.difference(&wanted) {
            let _ = self.ip(&["addr", "del", address, "dev", &server.interface]);
        }
        server.addresses = wanted;
        Self::record_addresses(server)
    }

    /// Records the interface and the addresses the server put on it, for a later agent.
    fn record_addresses(server: &Server) -> Result<(), BackendError> {
        let record: String = std::iter::once(server.interface.as_str())
            .chain(server.addresses.iter().map(String::as_str))
            .map(|line| format!("{line}\n"))
            .collect();
        write_file(&server.dir.join("addresses"), &record)
    }

    /// Runs the unicast relay a server of several shards needs, on its IPv4 addresses. A relay that
    /// cannot start is retried at the next apply; meanwhile clients renew by broadcast, at T2.
    fn sync_relay(&self, server: &mut Server) {
        let wanted: Vec<Ipv4Addr> = if server.shards.len() > 1 {
            server.addresses.iter().filter_map(|address| address.split('/').next()?.parse().ok()).collect()
        } else {
            Vec::new()
        };
        if wanted == server.relayed && (server.relay.is_some() || wanted.is_empty()) {
            return;
        }
        server.relay = None;
        server.relayed = Vec::new();
        if wanted.is_empty() {
            return;
        }
        match UnicastRelay::start(&server.interface, &wanted, self.options.netns.as_deref()) {
            Ok(relay) => {
                server.relay = Some(relay);
                server.relayed = wanted;
            }
            Err(error) => {
                tracing::warn!(network = %server.network_id, interface = server.interface, error = %error,
                               "Cannot relay unicast DHCP to the shards; clients will renew by broadcast.");
            }
        }
    }

    /// Takes off the addresses a server of an earlier agent recorded in `network_dir`.
    fn remove_recorded_addresses(&self, network_dir: &Path) {
        let Ok(record) = fs::read_to_string(network_dir.join("addresses")) else { return };
        let mut lines = record.lines();
        let Some(interface) = lines.next() else { return };
        for address in lines {
            let _ = self.ip(&["addr", "del", address, "dev", interface]);
        }
    }

    fn stop_server(&self, mut server: Server) {
        server.relay = None;
        for mut shard in server.shards {
            terminate(&mut shard.child);
        }
        for address in &server.addresses {
            let _ = self.ip(&["addr", "del", address, "dev", &server.interface]);
        }
        let _ = fs::remove_dir_all(&server.dir);
        tracing::info!(network = %server.network_id, "Stopped the DHCP server.");
    }

    /// Restarts shard `index` with exactly its desired hosts, keeping its restart count.
    fn restart_shard(
        &self,
        network_id: NetworkId,
        options_text: &str,
        index: usize,
        shard: &mut Shard,
    ) -> Result<(), BackendError> {
        terminate(&mut shard.child);
        let restarts = shard.restarts;
        *shard = self.start_shard(network_id, options_text, index, shard.desired.clone(), None)?;
        shard.restarts = restarts;
        Ok(())
    }

    /// Gives a running shard one new hosts-directory file: a line for each of `hosts`, and a
    /// masking `MAC,ignore` line for each released MAC.
    fn add_lines(
        network_id: NetworkId,
        shard: &mut Shard,
        hosts: &BTreeMap<Mac, HostAddresses>,
        ignore: &BTreeSet<Mac>,
    ) -> Result<(), BackendError> {
        let mut text = hosts_text(network_id, hosts)?;
        for mac in ignore {
            text.push_str(&ignore_line(network_id, *mac)?);
            text.push('\n');
        }
        // Written outside the watched directory, then renamed in: dnsmasq never reads half a file.
        let name = format!("add-{:08}", shard.next_file);
        shard.next_file += 1;
        let temp = shard.dir.join(format!("{name}.tmp"));
        write_file(&temp, &text)?;
        let target = shard.dir.join("hosts.d").join(&name);
        fs::rename(&temp, &target).map_err(io("cannot rename onto", &target))?;
        shard.state.add(hosts, ignore);
        Ok(())
    }
}

impl DnsmasqBackend {
    /// Makes the server serve `config`, which dnsmasq accepted (see [`DnsmasqBackend::served`]);
    /// `change` is what changed since the last successful apply.
    fn apply_served(&mut self, config: &NetworkDhcpConfig, change: ConfigChange<'_>) -> Result<(), BackendError> {
        let options_text = render_options(config)?;
        let hosts = config.host_count();
        let mut server = match self.server.take() {
            Some(server)
                if server.options_text == options_text
                    && server.interface == config.interface.as_str()
                    && !must_split(server.shards.len(), hosts, self.options.max_shards) =>
            {
                server
            }
            other => {
                // None yet, other options (a subnet came or went, the interface changed), or too
                // many hosts for the shards: a fresh server.
                // The old server's leases go to the new one: its guests keep them, and the lease
                // reporter sees no lease end that did not happen.
                let carried = other.as_ref().map(|old| {
                    old.shards.iter().map(|shard| fs::read_to_string(shard.dir.join("leases")).unwrap_or_default())
                });
                let carried: Option<Vec<String>> = carried.map(Iterator::collect);
                let addresses = match other {
                    Some(mut old) if old.interface == config.interface.as_str() => {
                        let addresses = std::mem::take(&mut old.addresses);
                        self.stop_server(old);
                        addresses
                    }
                    Some(old) => {
                        self.stop_server(old);
                        BTreeSet::new()
                    }
                    None => BTreeSet::new(),
                };
                self.applied = None;
                let hosts = desired_hosts(config);
                self.server = Some(self.start_server(config, options_text, &hosts, addresses, carried.as_deref())?);
                self.applied = Some(settings(config));
                return Ok(());
            }
        };
        // On an error the server is kept all the same (its shards run), and the apply is retried.
        let mut result = self.sync_addresses(&mut server, config);
        self.sync_relay(&mut server);
        // Only the hosts that changed since the last apply are looked at: this runs for every VM
        // start or stop, with tens of thousands of hosts.
        let count = server.shards.len();
        match change {
            ConfigChange::Hosts(changes) if self.applied.is_some() => {
                for change in changes {
                    // A subnet dnsmasq refused (left out of `config`) serves no host.
                    if !config.subnets.iter().any(|subnet| subnet.subnet_id == change.subnet_id) {
                        continue;
                    }
                    let shard = &mut server.shards[shard_of(change.host.mac, count)];
                    shard.dirty = true;
                    apply_host_change(&mut shard.desired, change);
                }
            }
            ConfigChange::Hosts(_) | ConfigChange::Whole => {
                for (shard, hosts) in server.shards.iter_mut().zip(split(&desired_hosts(config), count)) {
                    shard.dirty = true;
                    shard.desired = hosts;
                }
            }
        }
        let Server { network_id, options_text, shards, .. } = &mut server;
        for (index, shard) in shards.iter_mut().enumerate() {
            let alive = matches!(shard.child.try_wait(), Ok(None));
            let due = shard.compaction_due();
            let done = if !alive {
                // Died: restart it now (`check` spaces restarts of a shard that keeps dying).
                shard.restarts += 1;
                let said = exit_reason(&shard.dir).unwrap_or_default();
                tracing::warn!(network = %network_id, shard = index, restarts = shard.restarts, said, "dnsmasq died; restarting it.");
                self.restart_shard(*network_id, options_text, index, shard)
            } else if shard.dirty || due {
                match shard.state.decide(&shard.desired, shard.last_start.elapsed()) {
                    ShardAction::Keep { stale } => {
                        shard.stale = stale;
                        Ok(())
                    }
                    ShardAction::Add { hosts, ignore, stale } => {
                        shard.stale = stale;
                        Self::add_lines(*network_id, shard, &hosts, &ignore)
                    }
                    ShardAction::Compact => {
                        tracing::debug!(network = %network_id, shard = index, hosts = shard.desired.len(), "Compacting a dnsmasq shard.");
                        self.restart_shard(*network_id, options_text, index, shard)
                    }
                }
            } else {
                continue;
            };
            match done {
                Ok(()) => shard.dirty = false,
                Err(error) => {
                    shard.dirty = true;
                    result = result.and(Err(error));
                }
            }
        }
        self.server = Some(server);
        self.applied = Some(settings(config));
        result
    }
}

impl DhcpBackend for DnsmasqBackend {
    fn apply(&mut self, requested: &NetworkDhcpConfig, change: ConfigChange<'_>) -> Result<(), BackendError> {
        // Checked before anything is stopped or written: options dnsmasq refuses never replace a
        // running server, and a refused subnet never takes the others down.
        let served = self.served(requested)?;
        self.apply_served(&served, change)
    }

    fn degraded(&self) -> Option<String> {
        let notes = &self.vetting.as_ref()?.notes;
        (!notes.is_empty()).then(|| notes.join("; "))
    }

    fn check(&mut self) -> Result<Option<String>, BackendError> {
        let Some(server) = self.server.as_mut() else { return Ok(None) };
        let mut due = false;
        let mut died = Vec::new();
        for (index, shard) in server.shards.iter_mut().enumerate() {
            match shard.child.try_wait() {
                // Alive: run a compaction that was put off.
                Ok(None) => due |= shard.compaction_due(),
                Ok(Some(status)) => {
                    // Backoff: 1 s after the first death, doubling up to a minute, counted from
                    // the shard's last start.
                    let backoff = Duration::from_secs(1 << shard.restarts.min(6));
                    if shard.last_start.elapsed() >= backoff {
                        // Its log is read now: the restart starts a new one.
                        let reason = exit_reason(&shard.dir).map(|said| format!(": {said}")).unwrap_or_default();
                        died.push(format!(
                            "dnsmasq shard {index} exited ({status}{reason}); restarted it (restart {})",
                            shard.restarts + 1
                        ));
                        due = true;
                    }
                }
                Err(_) => due = true,
            }
        }
        // The settings were vetted when they were applied; the shards keep their hosts.
        if due && let Some(settings) = self.applied.clone() {
            self.apply_served(&settings, ConfigChange::Hosts(&[]))?;
        }
        Ok((!died.is_empty()).then(|| died.join("; ")))
    }

    fn stop(&mut self, network_id: NetworkId) -> Result<(), BackendError> {
        self.applied = None;
        self.vetting = None;
        if let Some(server) = self.server.take() {
            self.stop_server(server);
        } else {
            // A server left by an earlier agent (this host was replaced while its agent was away):
            // its shards, and the addresses it put on the interface.
            let dir = self.dir(network_id);
            let mut stopped = 0;
            for shard in shard_dirs(&dir) {
                stopped += usize::from(stop_stale(&shard));
            }
            self.remove_recorded_addresses(&dir);
            if stopped > 0 {
                tracing::info!(network = %network_id, shards = stopped, "Stopped a stale DHCP server left by an earlier agent.");
            }
            let _ = fs::remove_dir_all(dir);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `dnsmasq --test`: refuses interface `refused`, and an IPv4-mapped IPv6 range
    /// beside its IPv4 twin (only together), in dnsmasq's words.
    const FAKE_DNSMASQ: &str = r#"#!/bin/sh
for arg; do case "$arg" in --conf-file=*) conf="${arg#--conf-file=}";; esac; done
if grep -q '^interface=refused$' "$conf"; then echo "dnsmasq: unknown interface refused" >&2; exit 1; fi
if grep -q ',10.9.0.0,static' "$conf" && grep -q ',::ffff:10.9.0.0,static' "$conf"; then
  echo "" >&2; echo "dnsmasq: inconsistent DHCP range at line 9 of $conf" >&2; exit 1
fi
echo "dnsmasq: syntax check OK." >&2
"#;

    /// Subnet `id`, with one host (MAC `02:00:00:00:00:<id>`) at `host`.
    fn subnet(id: u128, cidr: &str, router: &str, host: &str) -> SubnetDhcpConfig {
        SubnetDhcpConfig {
            subnet_id: SubnetId::from_u128(id),
            cidr: cidr.parse().unwrap(),
            router: router.parse().unwrap(),
            dns_servers: Vec::new(),
            ntp_servers: Vec::new(),
            lease_secs: 3600,
            server_address: None,
            server_address_refused: None,
            hosts: vec![ipam_core::dhcp_plan::DhcpHost {
                mac: Mac::from_octets([2, 0, 0, 0, 0, u8::try_from(id).unwrap()]).unwrap(),
                ip: host.parse().unwrap(),
            }],
        }
    }

    fn backend(dir: &Path) -> DnsmasqBackend {
        let binary = dir.join("fake-dnsmasq");
        fs::write(&binary, FAKE_DNSMASQ).unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        DnsmasqBackend::new(DnsmasqOptions { binary, ..DnsmasqOptions::new(dir.join("state")) })
    }

    #[test]
    fn a_subnet_refused_only_beside_another_is_left_out_and_the_rest_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend(dir.path());
        let config = NetworkDhcpConfig {
            network_id: NetworkId::from_u128(1),
            epoch: 1,
            interface: "br0".parse().unwrap(),
            subnets: vec![
                subnet(1, "10.9.0.0/24", "10.9.0.1", "10.9.0.10"),
                subnet(2, "::ffff:10.9.0.0/120", "::ffff:10.9.0.1", "::ffff:10.9.0.10"),
                subnet(3, "10.8.0.0/24", "10.8.0.1", "10.8.0.10"),
            ],
            conflict_probe: true,
        };
        let vetting = backend.vet(&config, render_options(&config).unwrap()).unwrap();
        assert_eq!(
            vetting.notes,
            [format!(
                "subnet {} (::ffff:10.9.0.0/120) refused by dnsmasq: inconsistent DHCP range at line 9 of the \
                 rendered configuration; not served",
                SubnetId::from_u128(2)
            )]
        );
        let served = vetting.served(&config);
        let ids: Vec<SubnetId> = served.subnets.iter().map(|subnet| subnet.subnet_id).collect();
        assert_eq!(ids, [SubnetId::from_u128(1), SubnetId::from_u128(3)]);
        assert_eq!(served.subnets[1].hosts, config.subnets[2].hosts, "the kept subnets keep their hosts");
        // Nothing is left behind by the check.
        let left: Vec<_> = fs::read_dir(dir.path().join("state")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{left:?}");

        // Accepted whole: nothing refused, and the configuration is served as it is (not copied).
        let mut fine = config.clone();
        fine.subnets.remove(1);
        let vetting = backend.vet(&fine, render_options(&fine).unwrap()).unwrap();
        assert!(vetting.notes.is_empty());
        assert!(matches!(vetting.served(&fine), Cow::Borrowed(_)));
    }

    #[test]
    fn options_refused_without_any_subnet_are_a_refusal_in_dnsmasqs_words() {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = backend(dir.path());
        let config = NetworkDhcpConfig {
            network_id: NetworkId::from_u128(1),
            epoch: 1,
            interface: "refused".parse().unwrap(),
            subnets: vec![subnet(1, "10.9.0.0/24", "10.9.0.1", "10.9.0.10")],
            conflict_probe: true,
        };
        let error = backend.apply(&config, ConfigChange::Whole).unwrap_err();
        assert!(matches!(error, BackendError::Refused { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!("dnsmasq refused the configuration of network {}: unknown interface refused", config.network_id)
        );
        assert!(!backend.dir(config.network_id).exists(), "nothing was written for the network");
    }

    #[test]
    fn dnsmasq_errors_are_its_prefixed_lines_on_one_bounded_line() {
        let log = "dnsmasq[12]: started, version 2.90 DNS disabled\n\ndnsmasq: unknown interface br0\n";
        assert_eq!(dnsmasq_error(log).as_deref(), Some("unknown interface br0"));
        let test = "\ndnsmasq: bad IP address at line 6 of x.conf\ndnsmasq: prefix length must be at least 64\n";
        assert_eq!(
            dnsmasq_error(test).as_deref(),
            Some("bad IP address at line 6 of x.conf; prefix length must be at least 64")
        );
        assert_eq!(dnsmasq_error("dnsmasq: syntax check OK.\n"), None);
        assert_eq!(dnsmasq_error("dnsmasq-dhcp[12]: DHCP, sockets bound exclusively to interface br0\n"), None);
        let long = format!("dnsmasq: {}\n", "x".repeat(1000));
        let cut = dnsmasq_error(&long).unwrap();
        assert_eq!(cut.chars().count(), MAX_ERROR_CHARS);
        assert!(cut.ends_with('…'), "{cut}");
    }

    #[test]
    fn a_server_started_afresh_takes_over_the_leases_of_the_one_it_replaces() {
        let old = [
            "duid 00:01:00:01:aa:aa:aa:aa:02:00:00:00:00:01\n1000 52:54:00:00:00:01 10.0.0.1 * *\n".to_owned(),
            "duid 00:01:00:01:bb:bb:bb:bb:02:00:00:00:00:02\n1000 52:54:00:00:00:02 10.0.0.2 vm *\n".to_owned(),
        ];
        // One shard now: its own DUID (the old shard 0's) and both hosts' leases.
        expect_test::expect![[r#"
            duid 00:01:00:01:aa:aa:aa:aa:02:00:00:00:00:01
            1000 52:54:00:00:00:01 10.0.0.1 * *
            1000 52:54:00:00:00:02 10.0.0.2 vm *
        "#]]
        .assert_eq(&carried_leases(&old, 0));
        // A new shard the old server did not have starts without a DUID; the shard's hosts pick
        // their leases out.
        let hosts =
            BTreeMap::from([("52:54:00:00:00:02".parse().unwrap(), HostAddresses::of("10.0.0.2".parse().unwrap()))]);
        assert_eq!(kept_leases(&carried_leases(&old, 2), &hosts), "1000 52:54:00:00:00:02 10.0.0.2 vm *\n");
    }

    #[test]
    fn restarts_keep_the_server_duid_and_the_leases_of_hosts_still_reserved_in_both_families() {
        let mac = |text: &str| text.parse::<Mac>().unwrap();
        let addresses = |text: &str| HostAddresses::of(text.parse().unwrap());
        let hosts = BTreeMap::from([
            (mac("52:54:00:e6:00:01"), addresses("2001:db8::20")),
            (mac("52:54:00:e6:00:03"), addresses("2001:db8::30")),
            (mac("52:54:00:e4:00:01"), addresses("10.1.0.10")),
            // A dual-stack host keeps the leases of both its addresses.
            (mac("52:54:00:e4:00:05"), addresses("10.1.0.15").with("2001:db8::15".parse().unwrap())),
        ]);
        let leases = "\
1796190621 52:54:00:e4:00:01 10.1.0.10 * 01:52:54:00:e4:00:01
1796190621 52:54:00:e4:00:02 10.1.0.11 * 01:52:54:00:e4:00:02
duid 00:01:00:01:32:a2:60:05:22:e5:ae:23:ef:5d
1796190621 15073281 2001:db8::20 * 00:01:00:01:32:a2:60:0b:52:54:00:e6:00:01
1796190621 15073283 2001:db8::30 * 00:03:00:01:52:54:00:e6:00:03
1796190621 15073282 2001:db8::21 * 00:01:00:01:32:a2:60:0b:52:54:00:e6:00:02
1796190621 15073281 2001:db8::30 * 00:02:00:00:00:09:61:62:63:64:65:66:67:68
1796190621 52:54:00:e4:00:05 10.1.0.15 * 01:52:54:00:e4:00:05
1796190621 15073285 2001:db8::15 * 00:03:00:01:52:54:00:e4:00:05
";
        assert_eq!(
            kept_leases(leases, &hosts),
            "\
1796190621 52:54:00:e4:00:01 10.1.0.10 * 01:52:54:00:e4:00:01
duid 00:01:00:01:32:a2:60:05:22:e5:ae:23:ef:5d
1796190621 15073281 2001:db8::20 * 00:01:00:01:32:a2:60:0b:52:54:00:e6:00:01
1796190621 15073283 2001:db8::30 * 00:03:00:01:52:54:00:e6:00:03
1796190621 52:54:00:e4:00:05 10.1.0.15 * 01:52:54:00:e4:00:05
1796190621 15073285 2001:db8::15 * 00:03:00:01:52:54:00:e4:00:05
",
            "the DUID-EN lease names no MAC, and the unreserved hosts' leases go"
        );
    }
}
