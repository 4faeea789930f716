//! The dnsmasq backend's configuration files: [`render`] turns one network's desired DHCP
//! configuration into a dnsmasq configuration file, and [`FilesBackend`] keeps one such file per
//! served network in a directory (a dnsmasq `conf-dir`, or one `--conf-file` per instance).
//!
//! The server runs in restricted mode (DESIGN.md): every range is `static`, so dnsmasq hands out no
//! dynamic address, and `dhcp-ignore=tag:!known` makes it ignore every MAC without a `dhcp-host`
//! line outright. DNS is off (`port=0`): the server only does DHCP.
//!
//! IPv6 subnets are served by DHCPv6 (static addresses only, no SLAAC) and announced by router
//! advertisements with the managed flag, so that guests whose network stack only asks DHCPv6 when
//! an RA tells it to (most do) ask. The RAs carry router lifetime 0: the DHCP server is not the
//! subnet's gateway, and IPv6 has no way to name another router, so the default route comes from
//! the gateway's own RAs, as on every IPv6 link. The prefix in ours is on-link, so a guest whose
//! DHCPv6 address is a /128 still reaches its neighbours directly. dnsmasq matches a DHCPv6 client
//! to its `MAC,[IP]` line by the MAC it learns from the client's DUID (DUID-LL and DUID-LLT embed
//! it) or, for any other DUID, from its neighbour table (the client is on the served link).
//!
//! Every value comes from a validated core type, so none can break the file. The renderer checks
//! anyway, because a configuration line injected through a bad value (`br0\ndhcp-script=…`) would
//! run code as root: a value that is not made only of the characters addresses, MACs, ids and
//! interface names use is refused with [`BackendError::Unsafe`], and nothing is written.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::fs::{self, File};
use std::io::{BufWriter, ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipam_core::dhcp_plan::{HostChange, NetworkDhcpConfig, SubnetDhcpConfig};
use ipam_core::{Mac, NetworkId};

use crate::backend::{BackendError, ConfigChange, DhcpBackend};
use crate::dnsmasq_shards::{HostAddresses, desired_hosts};

/// The dnsmasq configuration of `config`'s network. Pure: the same configuration always renders to
/// the same bytes, which is what makes [`FilesBackend::apply`] idempotent.
pub fn render(config: &NetworkDhcpConfig) -> Result<String, BackendError> {
    HostLines::default().render(config)
}

/// One network's file as last rendered: the options part and each host's `dhcp-host` line with the
/// addresses it was rendered from, so that a change of a few hosts formats only those (a file holds
/// every host, and building, formatting and checking thousands of unchanged lines at every change
/// was most of a host agent's work under load: `ipam bench`, files backend). The text is always the
/// one a render from nothing gives; only the work differs.
#[derive(Default)]
pub struct HostLines {
    options: String,
    lines: BTreeMap<Mac, (HostAddresses, String)>,
}

impl HostLines {
    /// Renders `config` whole: the options anew, and the hosts' lines, reusing those of hosts whose
    /// addresses have not changed since the last call. Answers the file's text.
    pub fn render(&mut self, config: &NetworkDhcpConfig) -> Result<String, BackendError> {
        self.options = render_options(config)?;
        let mut lines = BTreeMap::new();
        for (mac, addresses) in desired_hosts(config) {
            let line = match self.lines.remove(&mac) {
                Some((rendered, line)) if rendered == addresses => line,
                _ => host_line(config.network_id, mac, &addresses)?,
            };
            lines.insert(mac, (addresses, line));
        }
        self.lines = lines;
        Ok(self.text())
    }

    /// Folds `changes` (hosts that came or went, in order) into the lines last rendered from
    /// `config`'s network, touching only their MACs; answers whether any line changed. A change
    /// [`NetworkDhcpConfig::apply_hosts`] ignores (another network, a subnet the configuration does
    /// not hold) is ignored here too, so the lines stay those of the configuration the changes were
    /// applied to. A MAC holds one address of each family (the allocator gives a vNIC no more); a
    /// hostile writer breaking that gets the MAC's newest address of the family served, as the
    /// sharded backend does. On an error the lines may be changed in part: render whole next.
    pub fn apply_hosts(&mut self, config: &NetworkDhcpConfig, changes: &[HostChange]) -> Result<bool, BackendError> {
        let mut changed = false;
        for change in changes.iter().filter(|change| config.concerns(change)) {
            let mac = change.host.mac;
            let held = self.lines.get(&mac).map(|(addresses, _)| *addresses).unwrap_or_default();
            let addresses = held.changed_by(change);
            if addresses == held {
                continue;
            }
            changed = true;
            if addresses.is_empty() {
                self.lines.remove(&mac);
            } else {
                let line = host_line(config.network_id, mac, &addresses)?;
                self.lines.insert(mac, (addresses, line));
            }
        }
        Ok(changed)
    }

    /// The file's text: the options, then one `dhcp-host` line per host by MAC (a dnsmasq file does
    /// not care that the hosts follow their subnets' options).
    pub fn text(&self) -> String {
        let hosts: usize = self.lines.values().map(|(_, line)| HOST_PREFIX.len() + line.len() + 1).sum();
        let mut out = Vec::with_capacity(self.options.len() + hosts);
        self.write_to(&mut out).expect("a Vec takes every write");
        String::from_utf8(out).expect("the options and lines are strings")
    }

    /// Writes [`HostLines::text`] to `out` line by line: a file of thousands of hosts is written
    /// without its whole text being built in memory first.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(self.options.as_bytes())?;
        for (_, line) in self.lines.values() {
            out.write_all(HOST_PREFIX.as_bytes())?;
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

const HOST_PREFIX: &str = "dhcp-host=";

impl fmt::Debug for HostLines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostLines").field("hosts", &self.lines.len()).finish()
    }
}

/// Everything but the hosts: the interface, restricted mode, and each subnet's range and options.
pub fn render_options(config: &NetworkDhcpConfig) -> Result<String, BackendError> {
    let network_id = config.network_id;
    let safe = |field: &'static str, value: String| check_value(network_id, field, value);
    let mut out = String::new();
    // `writeln!` into a String cannot fail; the results are ignored with `let _`.
    let _ = writeln!(
        out,
        "# DHCP server of network {} (epoch {}), written by ipam-host-agent; edits are overwritten.",
        safe("network id", network_id.to_string())?,
        safe("epoch", config.epoch.to_string())?,
    );
    let _ = writeln!(out, "interface={}", safe("interface", config.interface.to_string())?);
    out.push_str("bind-interfaces\n");
    out.push_str("port=0\n");
    out.push_str("dhcp-ignore=tag:!known\n");
    if config.subnets.iter().any(|subnet| !subnet.cidr.is_ipv4()) {
        // Router advertisements for the IPv6 subnets: managed flag and on-link prefix, router
        // lifetime 0 (interval 0 is dnsmasq's default): see the module documentation.
        out.push_str("enable-ra\n");
        let _ = writeln!(out, "ra-param={},0,0", safe("interface", config.interface.to_string())?);
    }
    for subnet in &config.subnets {
        render_subnet(&mut out, subnet, &safe)?;
    }
    Ok(out)
}

fn render_subnet(
    out: &mut String,
    subnet: &SubnetDhcpConfig,
    safe: &impl Fn(&'static str, String) -> Result<String, BackendError>,
) -> Result<(), BackendError> {
    // One tag per subnet, the subnet id itself: stable across renders, and traceable to the log.
    let tag = safe("subnet id", subnet.subnet_id.to_string())?;
    let network = safe("cidr", subnet.cidr.network().to_string())?;
    let lease = safe("lease", subnet.lease_secs.to_string())?;
    let server = match subnet.server_address {
        Some(ip) => safe("server address", ip.to_string())?,
        None => "not granted yet".to_owned(),
    };
    let _ = writeln!(out, "\n# subnet {tag} {}, server address {server}", safe("cidr", subnet.cidr.to_string())?);
    let ips = |field: &'static str, ips: &[IpAddr]| -> Result<String, BackendError> {
        let rendered: Result<Vec<String>, BackendError> =
            ips.iter().map(|&ip| Ok(option_ip(safe(field, ip.to_string())?, ip))).collect();
        Ok(rendered?.join(","))
    };
    if subnet.cidr.is_ipv4() {
        let prefix = u32::from(subnet.cidr.prefix_len());
        let netmask = Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0));
        let _ =
            writeln!(out, "dhcp-range=set:{tag},{network},static,{},{lease}s", safe("netmask", netmask.to_string())?);
        let _ = writeln!(out, "dhcp-option=tag:{tag},option:router,{}", ips("router", &[subnet.router])?);
        if !subnet.dns_servers.is_empty() {
            let _ =
                writeln!(out, "dhcp-option=tag:{tag},option:dns-server,{}", ips("dns server", &subnet.dns_servers)?);
        }
        if !subnet.ntp_servers.is_empty() {
            let _ =
                writeln!(out, "dhcp-option=tag:{tag},option:ntp-server,{}", ips("ntp server", &subnet.ntp_servers)?);
        }
    } else {
        let prefix = safe("prefix length", subnet.cidr.prefix_len().to_string())?;
        let _ = writeln!(out, "dhcp-range=set:{tag},{network},static,{prefix},{lease}s");
        // DHCPv6 has no router option: IPv6 clients learn their router from its own router
        // advertisements; ours (`enable-ra`) announce the prefix and the managed flag only.
        let _ = writeln!(
            out,
            "# router {} announces itself by its own router advertisements",
            safe("router", subnet.router.to_string())?
        );
        if !subnet.dns_servers.is_empty() {
            let _ =
                writeln!(out, "dhcp-option=tag:{tag},option6:dns-server,{}", ips("dns server", &subnet.dns_servers)?);
        }
        if !subnet.ntp_servers.is_empty() {
            let _ =
                writeln!(out, "dhcp-option=tag:{tag},option6:ntp-server,{}", ips("ntp server", &subnet.ntp_servers)?);
        }
    }
    Ok(())
}

/// The line of one host: `MAC,IPv4`, `MAC,[IPv6]` or `MAC,IPv4,[IPv6]`, the argument of a
/// `dhcp-host` line, and the format of dnsmasq's `--dhcp-hostsfile` and `--dhcp-hostsdir` files.
/// A dual-stack vNIC's two addresses share one line, the form dnsmasq's manual gives for a host
/// with both (see [`crate::dnsmasq_shards`]). A network's file lists them in MAC order.
pub fn host_line(network_id: NetworkId, mac: Mac, addresses: &HostAddresses) -> Result<String, BackendError> {
    let mut line = check_value(network_id, "mac", mac.to_string())?;
    for ip in addresses.iter() {
        line.push(',');
        line.push_str(&option_ip(check_value(network_id, "ip", ip.to_string())?, ip));
    }
    Ok(line)
}

/// The `MAC,ignore` line that masks every older line of a host: dnsmasq gives the newest matching
/// `dhcp-host` precedence, so a released MAC stops being answered as soon as this line is read,
/// without the reload that dropping its older line would need.
pub fn ignore_line(network_id: NetworkId, mac: Mac) -> Result<String, BackendError> {
    let mac = check_value(network_id, "mac", mac.to_string())?;
    Ok(format!("{mac},ignore"))
}

/// dnsmasq wants IPv6 addresses in brackets wherever a list or a `dhcp-host` holds them.
fn option_ip(text: String, ip: IpAddr) -> String {
    if ip.is_ipv6() { format!("[{text}]") } else { text }
}

/// `value` if it is made only of the characters that addresses, prefixes, MACs, UUIDs, numbers and
/// interface names use: ASCII letters and digits and `.:/_-`. That excludes everything that could
/// end a line, start a comment, separate list items or begin another key (`\n`, `#`, `,`, `=`,
/// spaces, brackets the renderer adds itself).
fn check_value(network_id: NetworkId, field: &'static str, value: String) -> Result<String, BackendError> {
    let reason = if value.is_empty() {
        Some("it is empty")
    } else if value.contains(['\n', '\r']) {
        Some("it contains a line break")
    } else if value.contains(',') {
        Some("it contains a comma")
    } else if value.contains('=') {
        Some("it contains '='")
    } else if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'/' | b'_' | b'-')) {
        Some("it contains a character outside [A-Za-z0-9.:/_-]")
    } else {
        None
    };
    match reason {
        None => Ok(value),
        Some(reason) => {
            Err(BackendError::Unsafe { network_id, field, value: value.escape_debug().to_string(), reason })
        }
    }
}

/// Keeps `<dir>/<network_id>.conf`, the [`render`]ed dnsmasq configuration of each network it is
/// given, and removes it when the network's server stops. Files are replaced atomically (a
/// temporary file in the same directory, renamed over), so dnsmasq never reads half a file; a file
/// whose content is already right is left alone, so applying twice, or again after the agent
/// restarts, changes nothing.
///
/// A change of hosts only ([`ConfigChange::Hosts`]) formats only their lines and writes the file
/// without reading it back: after a successful write the backend knows what the file holds. The
/// first apply, and every one after a failure, renders whole and compares with the file.
///
/// Files are not synced (`fsync`): a file is derived from the log, and an agent that starts again
/// (after a crash or a power loss) applies every configuration whole, which rewrites any file that
/// is not what it should be. A sync cost 1.3 to 3 ms per change on the development machine, most of
/// a reservation's way from the log to its line.
/// The buffer a file is written through: a few system calls for a file of thousands of hosts.
const WRITE_BUFFER: usize = 64 * 1024;

#[derive(Debug)]
pub struct FilesBackend {
    dir: PathBuf,
    /// The network's file as last rendered (an instance serves one network, see [`DhcpBackend`]).
    lines: HostLines,
    /// Whether the file holds `lines`' text: the last apply wrote or found it so.
    in_file: bool,
}

impl FilesBackend {
    /// A backend writing into `dir`, which is created on the first apply if missing.
    pub fn new(dir: impl Into<PathBuf>) -> FilesBackend {
        FilesBackend { dir: dir.into(), lines: HostLines::default(), in_file: false }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration file of `network_id`.
    pub fn path(&self, network_id: NetworkId) -> PathBuf {
        self.dir.join(format!("{network_id}.conf"))
    }

    /// The temporary file a new configuration is written to before it is renamed into place.
    /// Hidden and not ending in `.conf`, so a dnsmasq `conf-dir=<dir>,*.conf` never reads it.
    fn temp_path(&self, network_id: NetworkId) -> PathBuf {
        self.dir.join(format!(".{network_id}.conf.tmp"))
    }

    /// Writes what `contents` writes to the network's file, through a temporary file renamed into
    /// place, so that dnsmasq never reads half a file.
    fn write_atomically(
        &self,
        network_id: NetworkId,
        contents: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
    ) -> Result<(), BackendError> {
        let io = |action: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| BackendError::Io { action, path, source }
        };
        fs::create_dir_all(&self.dir).map_err(io("cannot create the directory", &self.dir))?;
        let temp = self.temp_path(network_id);
        let written = File::create(&temp).and_then(|file| {
            let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
            contents(&mut out)?;
            out.into_inner().map_err(std::io::IntoInnerError::into_error).map(drop)
        });
        written.map_err(io("cannot write", &temp))?;
        let path = self.path(network_id);
        fs::rename(&temp, &path).map_err(io("cannot rename the new configuration onto", &path))?;
        Ok(())
    }

    /// Renders `config` whole and writes it unless the file already holds it.
    fn apply_whole(&mut self, config: &NetworkDhcpConfig) -> Result<(), BackendError> {
        let text = self.lines.render(config)?;
        let path = self.path(config.network_id);
        match fs::read(&path) {
            Ok(current) if current == text.as_bytes() => {
                self.in_file = true;
                return Ok(());
            }
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(BackendError::Io { action: "cannot read", path, source }),
        }
        self.write_atomically(config.network_id, |out| out.write_all(text.as_bytes()))?;
        self.in_file = true;
        tracing::debug!(network = %config.network_id, path = %path.display(), "Wrote the dnsmasq configuration.");
        Ok(())
    }
}

impl DhcpBackend for FilesBackend {
    /// A file holds the whole configuration, so every change writes it whole; a change of hosts
    /// formats only their lines, and one that changes no line writes nothing.
    fn apply(&mut self, config: &NetworkDhcpConfig, change: ConfigChange<'_>) -> Result<(), BackendError> {
        let in_file = std::mem::replace(&mut self.in_file, false);
        let changes = match change {
            ConfigChange::Hosts(changes) if in_file => changes,
            _ => return self.apply_whole(config),
        };
        if self.lines.apply_hosts(config, changes)? {
            let lines = &self.lines;
            self.write_atomically(config.network_id, |out| lines.write_to(out))?;
        }
        self.in_file = true;
        Ok(())
    }

    fn stop(&mut self, network_id: NetworkId) -> Result<(), BackendError> {
        self.in_file = false;
        for path in [self.path(network_id), self.temp_path(network_id)] {
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::debug!(network = %network_id, path = %path.display(), "Removed the dnsmasq configuration.")
                }
                Err(error) if error.kind() == ErrorKind::NotFound => {}
                Err(source) => return Err(BackendError::Io { action: "cannot remove", path, source }),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use expect_test::{Expect, expect};
    use ipam_core::SubnetId;
    use ipam_core::dhcp_plan::DhcpHost;

    use super::*;

    const N1: NetworkId = NetworkId::from_u128(1);

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn subnet(
        id: u128,
        cidr: &str,
        router: &str,
        dns: &[&str],
        ntp: &[&str],
        hosts: &[(&str, &str)],
    ) -> SubnetDhcpConfig {
        SubnetDhcpConfig {
            subnet_id: SubnetId::from_u128(id),
            cidr: cidr.parse().unwrap(),
            router: ip(router),
            dns_servers: dns.iter().map(|text| ip(text)).collect(),
            ntp_servers: ntp.iter().map(|text| ip(text)).collect(),
            lease_secs: 3600,
            server_address: None,
            server_address_refused: None,
            hosts: hosts.iter().map(|(mac, text)| DhcpHost { mac: mac.parse().unwrap(), ip: ip(text) }).collect(),
        }
    }

    fn network(subnets: Vec<SubnetDhcpConfig>) -> NetworkDhcpConfig {
        NetworkDhcpConfig { network_id: N1, epoch: 3, interface: "br0".parse().unwrap(), subnets, conflict_probe: true }
    }

    fn check(config: &NetworkDhcpConfig, expect: Expect) {
        expect.assert_eq(&render(config).unwrap());
    }

    #[test]
    fn an_ipv4_subnet_gets_a_static_range_its_options_and_its_hosts() {
        let mut s1 = subnet(
            1,
            "10.1.0.0/24",
            "10.1.0.1",
            &["10.1.0.53", "10.9.9.53"],
            &["10.1.0.123"],
            &[("02:00:00:00:00:01", "10.1.0.10"), ("02:00:00:00:00:03", "10.1.0.30")],
        );
        s1.server_address = Some(ip("10.1.0.2"));
        check(
            &network(vec![s1]),
            expect![[r#"
                # DHCP server of network 00000000-0000-0000-0000-000000000001 (epoch 3), written by ipam-host-agent; edits are overwritten.
                interface=br0
                bind-interfaces
                port=0
                dhcp-ignore=tag:!known

                # subnet 00000000-0000-0000-0000-000000000001 10.1.0.0/24, server address 10.1.0.2
                dhcp-range=set:00000000-0000-0000-0000-000000000001,10.1.0.0,static,255.255.255.0,3600s
                dhcp-option=tag:00000000-0000-0000-0000-000000000001,option:router,10.1.0.1
                dhcp-option=tag:00000000-0000-0000-0000-000000000001,option:dns-server,10.1.0.53,10.9.9.53
                dhcp-option=tag:00000000-0000-0000-0000-000000000001,option:ntp-server,10.1.0.123
                dhcp-host=02:00:00:00:00:01,10.1.0.10
                dhcp-host=02:00:00:00:00:03,10.1.0.30
            "#]],
        );
    }

    #[test]
    fn an_ipv6_subnet_uses_prefix_lengths_bracketed_addresses_and_option6() {
        let s2 = subnet(
            2,
            "2001:db8::/64",
            "2001:db8::1",
            &["2001:db8::53"],
            &["2001:db8::123"],
            &[("02:00:00:00:00:02", "2001:db8::20")],
        );
        check(
            &network(vec![s2]),
            expect![[r#"
                # DHCP server of network 00000000-0000-0000-0000-000000000001 (epoch 3), written by ipam-host-agent; edits are overwritten.
                interface=br0
                bind-interfaces
                port=0
                dhcp-ignore=tag:!known
                enable-ra
                ra-param=br0,0,0

                # subnet 00000000-0000-0000-0000-000000000002 2001:db8::/64, server address not granted yet
                dhcp-range=set:00000000-0000-0000-0000-000000000002,2001:db8::,static,64,3600s
                # router 2001:db8::1 announces itself by its own router advertisements
                dhcp-option=tag:00000000-0000-0000-0000-000000000002,option6:dns-server,[2001:db8::53]
                dhcp-option=tag:00000000-0000-0000-0000-000000000002,option6:ntp-server,[2001:db8::123]
                dhcp-host=02:00:00:00:00:02,[2001:db8::20]
            "#]],
        );
    }

    #[test]
    fn a_dual_stack_host_gets_one_line_with_both_addresses_ipv4_first() {
        let s1 = subnet(1, "10.1.0.0/24", "10.1.0.1", &[], &[], &[("02:00:00:00:00:01", "10.1.0.10")]);
        let s2 = subnet(
            2,
            "2001:db8::/64",
            "2001:db8::1",
            &[],
            &[],
            &[("02:00:00:00:00:01", "2001:db8::10"), ("02:00:00:00:00:02", "2001:db8::20")],
        );
        let text = render(&network(vec![s2, s1])).unwrap();
        let lines: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix("dhcp-host=")).collect();
        assert_eq!(lines, ["02:00:00:00:00:01,10.1.0.10,[2001:db8::10]", "02:00:00:00:00:02,[2001:db8::20]"]);
    }

    #[test]
    fn host_lines_kept_between_renders_give_the_text_of_a_render_from_nothing() {
        let v4 = |hosts: &[(&str, &str)]| subnet(1, "10.1.0.0/24", "10.1.0.1", &[], &[], hosts);
        let v6 = |hosts: &[(&str, &str)]| subnet(2, "2001:db8::/64", "2001:db8::1", &[], &[], hosts);
        let (a, b, c) = ("02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c");
        let steps = [
            network(vec![v4(&[(a, "10.1.0.10"), (b, "10.1.0.11")])]),
            // c comes, a moves to another address, b gains an IPv6 address.
            network(vec![v4(&[(a, "10.1.0.20"), (b, "10.1.0.11"), (c, "10.1.0.12")]), v6(&[(b, "2001:db8::b")])]),
            // b loses its IPv4 address, a leaves.
            network(vec![v4(&[(c, "10.1.0.12")]), v6(&[(b, "2001:db8::b")])]),
            // Nothing changes.
            network(vec![v4(&[(c, "10.1.0.12")]), v6(&[(b, "2001:db8::b")])]),
            // a comes back at its first address; every host is gone from IPv6.
            network(vec![v4(&[(a, "10.1.0.10"), (c, "10.1.0.12")])]),
            network(vec![]),
            network(vec![v4(&[(b, "10.1.0.11")])]),
        ];
        let mut kept = HostLines::default();
        for (step, config) in steps.iter().enumerate() {
            assert_eq!(kept.render(config).unwrap(), render(config).unwrap(), "step {step}");
        }
        assert_eq!(kept.lines.len(), 1);
    }

    /// Host changes as an agent receives them (a vNIC's address of each family comes, goes or moves;
    /// now and then one of another network or of a subnet the configuration does not hold), drawn
    /// from a fixed seed: lines kept by `apply_hosts` give the text of a render from nothing of the
    /// configuration the same changes were applied to, at every step.
    #[test]
    fn host_changes_folded_into_kept_lines_give_the_text_of_a_render_from_nothing() {
        let mut config = network(vec![
            subnet(1, "10.1.0.0/24", "10.1.0.1", &[], &[], &[]),
            subnet(2, "2001:db8::/64", "2001:db8::1", &[], &[], &[]),
        ]);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut draw = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let macs: Vec<Mac> = (1..=8).map(|i| format!("02:00:00:00:00:{i:02x}").parse().unwrap()).collect();
        let change = |network_id, subnet: u128, mac, ip, served| HostChange {
            network_id,
            subnet_id: SubnetId::from_u128(subnet),
            host: DhcpHost { mac, ip },
            served,
        };
        // Each MAC's address of each family (index 0: IPv4, 1: IPv6), as the allocator holds them.
        let mut held: BTreeMap<(Mac, usize), IpAddr> = BTreeMap::new();
        let mut kept = HostLines::default();
        kept.render(&config).unwrap();
        let mut lines_changed = 0;
        for step in 0..400 {
            let mut changes = Vec::new();
            for _ in 0..=draw(3) {
                let mac = macs[draw(8) as usize];
                let family = draw(2) as usize;
                let (subnet_id, ip) = match family {
                    0 => (1, ip(&format!("10.1.0.{}", 10 + draw(12)))),
                    _ => (2, ip(&format!("2001:db8::{:x}", 10 + draw(12)))),
                };
                match draw(10) {
                    0 => changes.push(change(NetworkId::from_u128(2), subnet_id, mac, ip, true)),
                    1 => changes.push(change(N1, 9, mac, ip, true)),
                    _ => {
                        if let Some(old) = held.remove(&(mac, family)) {
                            changes.push(change(N1, subnet_id, mac, old, false));
                        }
                        let taken = held.values().any(|other| *other == ip);
                        if !taken && draw(3) > 0 {
                            held.insert((mac, family), ip);
                            changes.push(change(N1, subnet_id, mac, ip, true));
                        }
                    }
                }
            }
            config.apply_hosts(&changes);
            if kept.apply_hosts(&config, &changes).unwrap() {
                lines_changed += 1;
            }
            assert_eq!(kept.text(), render(&config).unwrap(), "step {step}: {changes:?}");
        }
        assert!(lines_changed > 100, "the changes changed lines at {lines_changed} steps only");
        assert!(kept.lines.len() > 2, "{} hosts at the end", kept.lines.len());
    }

    #[test]
    fn a_subnet_without_dns_ntp_or_hosts_gets_only_its_range_and_router() {
        let mut s3 = subnet(3, "172.16.0.0/12", "172.16.0.1", &[], &[], &[]);
        s3.lease_secs = 600;
        check(
            &network(vec![s3]),
            expect![[r#"
                # DHCP server of network 00000000-0000-0000-0000-000000000001 (epoch 3), written by ipam-host-agent; edits are overwritten.
                interface=br0
                bind-interfaces
                port=0
                dhcp-ignore=tag:!known

                # subnet 00000000-0000-0000-0000-000000000003 172.16.0.0/12, server address not granted yet
                dhcp-range=set:00000000-0000-0000-0000-000000000003,172.16.0.0,static,255.240.0.0,600s
                dhcp-option=tag:00000000-0000-0000-0000-000000000003,option:router,172.16.0.1
            "#]],
        );
    }

    #[test]
    fn a_network_without_an_active_subnet_listens_but_answers_nobody() {
        check(
            &network(Vec::new()),
            expect![[r#"
                # DHCP server of network 00000000-0000-0000-0000-000000000001 (epoch 3), written by ipam-host-agent; edits are overwritten.
                interface=br0
                bind-interfaces
                port=0
                dhcp-ignore=tag:!known
            "#]],
        );
    }

    #[test]
    fn values_that_could_change_the_file_are_refused() {
        let refused = ["br0\ndhcp-script=/tmp/x", "a,b", "port=53", "", "br 0", "x#y", "[::1]"]
            .map(|value| check_value(N1, "interface", value.to_owned()).unwrap_err().to_string());
        expect![[r#"
            [
                "refusing to render interface `br0\\ndhcp-script=/tmp/x` for network 00000000-0000-0000-0000-000000000001: it contains a line break",
                "refusing to render interface `a,b` for network 00000000-0000-0000-0000-000000000001: it contains a comma",
                "refusing to render interface `port=53` for network 00000000-0000-0000-0000-000000000001: it contains '='",
                "refusing to render interface `` for network 00000000-0000-0000-0000-000000000001: it is empty",
                "refusing to render interface `br 0` for network 00000000-0000-0000-0000-000000000001: it contains a character outside [A-Za-z0-9.:/_-]",
                "refusing to render interface `x#y` for network 00000000-0000-0000-0000-000000000001: it contains a character outside [A-Za-z0-9.:/_-]",
                "refusing to render interface `[::1]` for network 00000000-0000-0000-0000-000000000001: it contains a character outside [A-Za-z0-9.:/_-]",
            ]
        "#]]
        .assert_debug_eq(&refused);
        for fine in ["br0", "10.1.0.0", "2001:db8::1", "02:00:00:00:00:01", "255.255.255.0", "3600", "vlan.10_a-b"] {
            assert_eq!(check_value(N1, "value", fine.to_owned()).unwrap(), fine);
        }
    }

    #[test]
    fn files_are_written_atomically_once_and_removed_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = FilesBackend::new(dir.path().join("conf.d"));
        let path = backend.path(N1);
        let mut config =
            network(vec![subnet(1, "10.1.0.0/24", "10.1.0.1", &[], &[], &[("02:00:00:00:00:01", "10.1.0.10")])]);

        backend.apply(&config, ConfigChange::Whole).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), render(&config).unwrap());
        let inode = fs::metadata(&path).unwrap().ino();

        // The same configuration again leaves the file alone (a rewrite would be a new inode).
        backend.apply(&config, ConfigChange::Whole).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
        // So does a new backend instance, as after a restart of the agent.
        FilesBackend::new(backend.dir()).apply(&config, ConfigChange::Whole).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);

        config.subnets[0].hosts.clear();
        backend.apply(&config, ConfigChange::Whole).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), render(&config).unwrap());
        let names: Vec<String> = fs::read_dir(backend.dir())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [format!("{N1}.conf")], "no temporary file is left behind");

        backend.stop(N1).unwrap();
        assert!(!path.exists());
        // Stopping what is stopped is fine.
        backend.stop(N1).unwrap();
    }

    #[test]
    fn a_change_of_hosts_rewrites_the_file_only_when_a_line_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = FilesBackend::new(dir.path());
        let path = backend.path(N1);
        let host = |mac: &str, text: &str, served| HostChange {
            network_id: N1,
            subnet_id: SubnetId::from_u128(1),
            host: DhcpHost { mac: mac.parse().unwrap(), ip: ip(text) },
            served,
        };
        let mut config =
            network(vec![subnet(1, "10.1.0.0/24", "10.1.0.1", &[], &[], &[("02:00:00:00:00:01", "10.1.0.10")])]);
        // Hosts only, before anything was written: rendered whole.
        backend.apply(&config, ConfigChange::Hosts(&[])).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), render(&config).unwrap());

        let came = [host("02:00:00:00:00:02", "10.1.0.11", true)];
        config.apply_hosts(&came);
        backend.apply(&config, ConfigChange::Hosts(&came)).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), render(&config).unwrap());
        assert!(fs::read_to_string(&path).unwrap().contains("dhcp-host=02:00:00:00:00:02,10.1.0.11\n"));

        // A change that changes no line (a host already served) writes nothing.
        let inode = fs::metadata(&path).unwrap().ino();
        backend.apply(&config, ConfigChange::Hosts(&came)).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);

        let went = [host("02:00:00:00:00:01", "10.1.0.10", false)];
        config.apply_hosts(&went);
        backend.apply(&config, ConfigChange::Hosts(&went)).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), render(&config).unwrap());
        assert!(!fs::read_to_string(&path).unwrap().contains("02:00:00:00:00:01"));

        // After a stop, a change of hosts renders whole again (the file is gone).
        backend.stop(N1).unwrap();
        backend.apply(&config, ConfigChange::Hosts(&[])).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), render(&config).unwrap());
    }

    #[test]
    fn a_failed_write_is_an_error_that_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // The "directory" is a file, so nothing can be written into it.
        let blocked = dir.path().join("blocked");
        fs::write(&blocked, "").unwrap();
        let error = FilesBackend::new(&blocked).apply(&network(Vec::new()), ConfigChange::Whole).unwrap_err();
        assert!(matches!(error, BackendError::Io { .. }), "{error:?}");
        assert!(error.to_string().contains("blocked"), "{error}");
    }
}
