//! Conflict probing: asks the wire whether anyone already answers for an address before the agent
//! serves it, so that a squatter (a static address someone configured by hand, a VM the engine
//! forgot) is found before DHCP hands the same address to a guest.
//!
//! IPv4 uses an ARP probe as RFC 5227 defines it: an ARP request with sender IP 0.0.0.0 (so no
//! neighbour cache anywhere learns from it) and the address as target; a host that holds the
//! address answers with its MAC. IPv6 uses duplicate address detection (RFC 4862): a neighbour
//! solicitation from the unspecified address to the address's solicited-node multicast group; a
//! host that holds the address answers with a neighbour advertisement to all nodes.
//!
//! Both are sent and read in-process on one `AF_PACKET` datagram socket per family (the kernel
//! adds the Ethernet header), because forking `arping` costs a process per address: the whole
//! batch of one plan change is probed at once, every address in the same window, in a few hundred
//! microseconds of CPU. The agent runs as root (it runs dnsmasq), so `CAP_NET_RAW` is there.
//!
//! **Timings.** RFC 5227 waits up to PROBE_WAIT (1 s), sends PROBE_NUM (3) probes PROBE_MIN to
//! PROBE_MAX (1 to 2 s) apart and listens ANNOUNCE_WAIT (2 s) after the last: 3 to 7 s, sized for
//! a host configuring its own address over slow or lossy links and for two hosts starting at once.
//! Here one agent probes an address nobody should hold, on a local segment, while a guest may be
//! waiting for its DHCP answer: [`ProbeSettings`] defaults to 2 probes 100 ms apart and listens
//! 100 ms after the last (200 ms in all). A host that does not answer within 100 ms on a LAN is
//! rare, and the second probe covers one lost frame; the settings are there for slower segments.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use ipam_core::Mac;
use serde::{Deserialize, Serialize};

/// How probing is timed. RFC 5227's own timings, and why the defaults differ, are in the module
/// documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProbeSettings {
    /// Probes sent per address (at least 1; default 2).
    #[serde(default = "default_count")]
    pub count: u32,
    /// Time between two probes of an address (default 100 ms).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// How long answers are awaited after the last probe (default 100 ms).
    #[serde(default = "default_wait_ms")]
    pub wait_ms: u64,
}

fn default_count() -> u32 {
    2
}

fn default_interval_ms() -> u64 {
    100
}

fn default_wait_ms() -> u64 {
    100
}

impl Default for ProbeSettings {
    fn default() -> ProbeSettings {
        ProbeSettings { count: default_count(), interval_ms: default_interval_ms(), wait_ms: default_wait_ms() }
    }
}

impl ProbeSettings {
    /// From the first probe to the end of listening.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.interval_ms * u64::from(self.count.max(1) - 1) + self.wait_ms)
    }
}

/// Why a probe could not be made. The agent then serves the addresses unprobed (probing protects
/// against a rare mistake; refusing to serve because of it would stop DHCP) and says so in its log.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The network namespace could not be entered (it does not exist, or no permission).
    #[error("cannot enter network namespace `{netns}`")]
    Netns {
        netns: String,
        #[source]
        source: io::Error,
    },
    /// The interface does not exist (yet) in the namespace.
    #[error("no interface `{interface}`")]
    NoInterface { interface: String },
    /// A socket call failed: most often no `CAP_NET_RAW` (the agent is not root).
    #[error("cannot {action} on `{interface}`")]
    Socket {
        action: &'static str,
        interface: String,
        #[source]
        source: io::Error,
    },
}

/// Probes every address of `targets` on `interface` (inside network namespace `netns` when given)
/// and answers, per address, the MACs that claimed it. The interface's own MAC never counts; the
/// caller decides which other MAC is a conflict (the guest the address is reserved for answering
/// is not). Addresses nobody claimed are absent from the answer.
///
/// Blocks for [`ProbeSettings::window`]; call it from a thread of its own. An interface that has
/// no Ethernet address (loopback, a tunnel) has no neighbours to ask: the answer is empty at once.
///
/// # Errors
/// When the namespace, the interface or a raw socket is unavailable; see [`ProbeError`].
pub fn probe(
    interface: &str,
    netns: Option<&str>,
    targets: &[IpAddr],
    settings: &ProbeSettings,
) -> Result<BTreeMap<IpAddr, BTreeSet<Mac>>, ProbeError> {
    if targets.is_empty() {
        return Ok(BTreeMap::new());
    }
    match netns {
        // A namespace is entered by a thread of our own, which ends with the probe: the caller's
        // thread stays where it is.
        Some(netns) => std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    crate::dhcp_relay::enter_netns(netns)
                        .map_err(|source| ProbeError::Netns { netns: netns.to_owned(), source })?;
                    probe_here(interface, targets, settings)
                })
                .join()
                .unwrap_or_else(|_| {
                    let source = io::Error::other("the probing thread panicked");
                    Err(ProbeError::Socket { action: "probe", interface: interface.to_owned(), source })
                })
        }),
        None => probe_here(interface, targets, settings),
    }
}

fn probe_here(
    interface: &str,
    targets: &[IpAddr],
    settings: &ProbeSettings,
) -> Result<BTreeMap<IpAddr, BTreeSet<Mac>>, ProbeError> {
    let error = |action| move |source| ProbeError::Socket { action, interface: interface.to_owned(), source };
    let ifindex =
        raw::interface_index(interface).ok_or_else(|| ProbeError::NoInterface { interface: interface.to_owned() })?;
    let Some(own_mac) = raw::ethernet_address(interface).map_err(error("read the hardware address"))? else {
        return Ok(BTreeMap::new());
    };
    let v4: Vec<Ipv4Addr> =
        targets.iter().filter_map(|ip| if let IpAddr::V4(ip) = ip { Some(*ip) } else { None }).collect();
    let v6: Vec<Ipv6Addr> =
        targets.iter().filter_map(|ip| if let IpAddr::V6(ip) = ip { Some(*ip) } else { None }).collect();
    let arp = if v4.is_empty() {
        None
    } else {
        Some(raw::PacketSocket::open(ifindex, ETH_P_ARP).map_err(error("open an ARP packet socket"))?)
    };
    let nd = if v6.is_empty() {
        None
    } else {
        Some(raw::PacketSocket::open(ifindex, ETH_P_IPV6).map_err(error("open an IPv6 packet socket"))?)
    };
    let wanted: BTreeSet<IpAddr> = targets.iter().copied().collect();
    let mut answers: BTreeMap<IpAddr, BTreeSet<Mac>> = BTreeMap::new();
    let start = Instant::now();
    let deadline = start + settings.window();
    let interval = Duration::from_millis(settings.interval_ms);
    let mut sent = 0;
    let mut buffer = [0u8; 2048];
    loop {
        let now = Instant::now();
        if sent < settings.count.max(1) && now >= start + interval * sent {
            if let Some(socket) = &arp {
                for target in &v4 {
                    socket.send(&arp_probe(own_mac, *target), BROADCAST).map_err(error("send an ARP probe"))?;
                }
            }
            if let Some(socket) = &nd {
                for target in &v6 {
                    let (frame, to) = neighbour_solicitation(*target);
                    socket.send(&frame, to).map_err(error("send a neighbour solicitation"))?;
                }
            }
            sent += 1;
            continue;
        }
        if now >= deadline {
            break;
        }
        let next_send = if sent < settings.count.max(1) { start + interval * sent } else { deadline };
        let wait = next_send.min(deadline).saturating_duration_since(now);
        let sockets: Vec<&raw::PacketSocket> = arp.iter().chain(nd.iter()).collect();
        raw::wait_readable(&sockets, wait).map_err(error("wait for answers"))?;
        for socket in &sockets {
            while let Some((length, from)) = socket.receive(&mut buffer).map_err(error("receive"))? {
                let frame = &buffer[..length];
                let claim =
                    if socket.protocol == ETH_P_ARP { arp_claim(frame) } else { advertisement_claim(frame, from) };
                if let Some((ip, mac)) = claim
                    && mac != own_mac
                    && wanted.contains(&ip)
                {
                    answers.entry(ip).or_default().insert(mac);
                }
            }
        }
    }
    Ok(answers)
}

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const BROADCAST: [u8; 6] = [0xff; 6];
const ICMPV6: u8 = 58;
const NEIGHBOUR_SOLICITATION: u8 = 135;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;

/// An ARP probe (RFC 5227 §2.1.1): a request from `own_mac` with sender IP 0.0.0.0 and an empty
/// target MAC, for `target`.
fn arp_probe(own_mac: Mac, target: Ipv4Addr) -> [u8; 28] {
    let mut frame = [0u8; 28];
    frame[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    frame[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    frame[4] = 6;
    frame[5] = 4;
    frame[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    frame[8..14].copy_from_slice(&own_mac.octets());
    // Sender IP (14..18) and target MAC (18..24) stay zero.
    frame[24..28].copy_from_slice(&target.octets());
    frame
}

/// The address an ARP packet says its sender holds, with the sender's MAC: a reply, or any
/// request that is not a probe (a gratuitous ARP, a host asking for someone else).
fn arp_claim(frame: &[u8]) -> Option<(IpAddr, Mac)> {
    if frame.len() < 28 || frame[0..6] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let sender_ip = Ipv4Addr::new(frame[14], frame[15], frame[16], frame[17]);
    if sender_ip.is_unspecified() {
        return None;
    }
    let mac = Mac::from_octets(frame[8..14].try_into().ok()?).ok()?;
    Some((IpAddr::V4(sender_ip), mac))
}

/// The solicited-node multicast group of `target` (RFC 4291 §2.7.1) and its Ethernet address.
fn solicited_node(target: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let [.., a, b, c] = target.octets();
    let group = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(a), u16::from_be_bytes([b, c]));
    (group, [0x33, 0x33, 0xff, a, b, c])
}

/// A duplicate-address-detection probe (RFC 4862 §5.4.2): an IPv6 packet from `::` to `target`'s
/// solicited-node group, hop limit 255, holding a neighbour solicitation for `target` without a
/// source link-layer option (forbidden from the unspecified address). Answers the packet and the
/// Ethernet address to send it to.
fn neighbour_solicitation(target: Ipv6Addr) -> ([u8; 64], [u8; 6]) {
    let (group, to) = solicited_node(target);
    let mut packet = [0u8; 64];
    packet[0] = 0x60;
    packet[4..6].copy_from_slice(&24u16.to_be_bytes());
    packet[6] = ICMPV6;
    packet[7] = 255;
    // Source (8..24) stays `::`.
    packet[24..40].copy_from_slice(&group.octets());
    packet[40] = NEIGHBOUR_SOLICITATION;
    packet[48..64].copy_from_slice(&target.octets());
    let checksum = icmpv6_checksum(Ipv6Addr::UNSPECIFIED, group, &packet[40..]);
    packet[42..44].copy_from_slice(&checksum.to_be_bytes());
    (packet, to)
}

/// The ICMPv6 checksum (RFC 4443 §2.3) of `message` (its checksum field zero) between `source`
/// and `destination`.
fn icmpv6_checksum(source: Ipv6Addr, destination: Ipv6Addr, message: &[u8]) -> u16 {
    let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut pseudo = Vec::with_capacity(40 + message.len() + 1);
    pseudo.extend_from_slice(&source.octets());
    pseudo.extend_from_slice(&destination.octets());
    pseudo.extend_from_slice(&length.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, ICMPV6]);
    pseudo.extend_from_slice(message);
    if pseudo.len() % 2 == 1 {
        pseudo.push(0);
    }
    let mut sum: u32 = pseudo.chunks_exact(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The fold above leaves at most 16 bits.
    !(sum as u16)
}

/// The address a neighbour advertisement claims, with the claimant's MAC: its target link-layer
/// option when it has one, else the frame's source (`from`).
fn advertisement_claim(packet: &[u8], from: Option<Mac>) -> Option<(IpAddr, Mac)> {
    // No extension headers: neighbour discovery is sent without them.
    if packet.len() < 64 || packet[0] >> 4 != 6 || packet[6] != ICMPV6 || packet[40] != NEIGHBOUR_ADVERTISEMENT {
        return None;
    }
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[48..64]).ok()?);
    let mut options = &packet[64..];
    let mut mac = from;
    while options.len() >= 8 {
        let length = usize::from(options[1]) * 8;
        if length == 0 || length > options.len() {
            break;
        }
        // Option 2: target link-layer address.
        if options[0] == 2 && length >= 8 {
            mac = Mac::from_octets(options[2..8].try_into().ok()?).ok().or(mac);
        }
        options = &options[length..];
    }
    Some((IpAddr::V6(target), mac?))
}

/// The few system calls probing needs that the standard library and socket2 do not wrap
/// (`AF_PACKET` addresses, the interface's hardware address), each with its safety argument.
#[allow(unsafe_code)]
mod raw {
    use super::*;

    /// The index of `interface` in the calling thread's network namespace.
    pub(super) fn interface_index(interface: &str) -> Option<i32> {
        let name = std::ffi::CString::new(interface).ok()?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        i32::try_from(index).ok().filter(|&index| index > 0)
    }

    /// The interface's Ethernet address, or `None` if it is not an Ethernet interface.
    pub(super) fn ethernet_address(interface: &str) -> io::Result<Option<Mac>> {
        // SAFETY: a plain socket(2) call; the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        let name = interface.as_bytes();
        if name.len() >= request.ifr_name.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
        }
        for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
            *slot = *byte as libc::c_char;
        }
        // SAFETY: SIOCGIFHWADDR reads the name from and writes the address into `request`, which
        // is a whole ifreq that lives across the call.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the ioctl filled the hwaddr member of the union.
        let address = unsafe { request.ifr_ifru.ifru_hwaddr };
        if address.sa_family != libc::ARPHRD_ETHER {
            return Ok(None);
        }
        let octets: [u8; 6] = std::array::from_fn(|i| address.sa_data[i] as u8);
        Ok(Mac::from_octets(octets).ok())
    }

    /// A non-blocking `AF_PACKET` datagram socket bound to one interface and one EtherType.
    #[derive(Debug)]
    pub(super) struct PacketSocket {
        fd: OwnedFd,
        ifindex: i32,
        pub(super) protocol: u16,
    }

    fn link_address(ifindex: i32, protocol: u16, to: [u8; 6]) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol.to_be();
        address.sll_ifindex = ifindex;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&to);
        address
    }

    impl PacketSocket {
        pub(super) fn open(ifindex: i32, protocol: u16) -> io::Result<PacketSocket> {
            let kind = libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
            // SAFETY: a plain socket(2) call; the descriptor is owned at once.
            let fd = unsafe { libc::socket(libc::AF_PACKET, kind, i32::from(protocol.to_be())) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor nothing else owns.
            let socket = PacketSocket { fd: unsafe { OwnedFd::from_raw_fd(fd) }, ifindex, protocol };
            let address = link_address(ifindex, protocol, [0; 6]);
            let size = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `address` is a whole sockaddr_ll of the size given.
            let bound = unsafe {
                libc::bind(socket.fd.as_raw_fd(), std::ptr::from_ref(&address).cast::<libc::sockaddr>(), size)
            };
            if bound != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(socket)
        }

        /// Sends `payload` to the Ethernet address `to`, waiting briefly when the queue is full.
        pub(super) fn send(&self, payload: &[u8], to: [u8; 6]) -> io::Result<()> {
            let address = link_address(self.ifindex, self.protocol, to);
            let size = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            for _ in 0..100 {
                // SAFETY: `payload` and `address` are live for the call, with the lengths given.
                let sent = unsafe {
                    libc::sendto(
                        self.fd.as_raw_fd(),
                        payload.as_ptr().cast(),
                        payload.len(),
                        0,
                        std::ptr::from_ref(&address).cast::<libc::sockaddr>(),
                        size,
                    )
                };
                if sent >= 0 {
                    return Ok(());
                }
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::WouldBlock && error.raw_os_error() != Some(libc::ENOBUFS) {
                    return Err(error);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(io::Error::new(io::ErrorKind::WouldBlock, "the interface's queue stays full"))
        }

        /// One received frame's payload length and its source MAC, or `None` when nothing is
        /// waiting. Frames this host sent itself are skipped.
        pub(super) fn receive(&self, buffer: &mut [u8]) -> io::Result<Option<(usize, Option<Mac>)>> {
            loop {
                // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut size = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: `buffer` and `from` are live for the call, with the lengths given.
                let length = unsafe {
                    libc::recvfrom(
                        self.fd.as_raw_fd(),
                        buffer.as_mut_ptr().cast(),
                        buffer.len(),
                        0,
                        std::ptr::from_mut(&mut from).cast::<libc::sockaddr>(),
                        &mut size,
                    )
                };
                if length < 0 {
                    let error = io::Error::last_os_error();
                    return match error.kind() {
                        io::ErrorKind::WouldBlock => Ok(None),
                        io::ErrorKind::Interrupted => continue,
                        _ => Err(error),
                    };
                }
                if from.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                let mac = (from.sll_halen == 6)
                    .then(|| Mac::from_octets(std::array::from_fn(|i| from.sll_addr[i])).ok())
                    .flatten();
                return Ok(Some((length.unsigned_abs(), mac)));
            }
        }
    }

    /// Waits until one of `sockets` has a frame, or `timeout` passed.
    pub(super) fn wait_readable(sockets: &[&PacketSocket], timeout: Duration) -> io::Result<()> {
        let mut fds: Vec<libc::pollfd> = sockets
            .iter()
            .map(|socket| libc::pollfd { fd: socket.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        let millis = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a live array of the length given.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> Mac {
        Mac::from_octets([0x02, 0, 0, 0, 0, last]).unwrap()
    }

    #[test]
    fn an_arp_probe_has_no_sender_address_and_names_its_target() {
        let frame = arp_probe(mac(1), Ipv4Addr::new(10, 0, 0, 7));
        expect_test::expect!["[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 7]"]
            .assert_eq(&format!("{frame:?}"));
        // A probe claims nothing: ours, or another host's probing the same address.
        assert_eq!(arp_claim(&frame), None);
    }

    #[test]
    fn an_arp_reply_claims_its_sender_address_for_its_sender_mac() {
        let mut reply = arp_probe(mac(9), Ipv4Addr::new(0, 0, 0, 0));
        reply[7] = 2;
        reply[14..18].copy_from_slice(&[10, 0, 0, 7]);
        assert_eq!(arp_claim(&reply), Some(("10.0.0.7".parse().unwrap(), mac(9))));
        assert_eq!(arp_claim(&reply[..27]), None, "too short");
        let mut not_ipv4 = reply;
        not_ipv4[2] = 0x86;
        assert_eq!(arp_claim(&not_ipv4), None);
    }

    #[test]
    fn a_neighbour_solicitation_goes_from_nowhere_to_the_solicited_node_group() {
        let target: Ipv6Addr = "fd00::12:3456".parse().unwrap();
        let (packet, to) = neighbour_solicitation(target);
        assert_eq!(to, [0x33, 0x33, 0xff, 0x12, 0x34, 0x56]);
        assert_eq!(&packet[8..24], &[0; 16], "from the unspecified address");
        let group: Ipv6Addr = "ff02::1:ff12:3456".parse().unwrap();
        assert_eq!(&packet[24..40], &group.octets());
        assert_eq!(packet[7], 255, "hop limit");
        // A packet with its checksum in place sums to zero.
        let mut check = packet;
        check[42..44].copy_from_slice(&[0, 0]);
        let sum = icmpv6_checksum(Ipv6Addr::UNSPECIFIED, group, &packet[40..]);
        assert_eq!(sum, 0, "the checksum of a checksummed message is zero");
        assert_ne!(icmpv6_checksum(Ipv6Addr::UNSPECIFIED, group, &check[40..]), 0);
    }

    #[test]
    fn the_icmpv6_checksum_matches_a_known_packet() {
        // Computed apart (a few lines of Python over the pseudo-header, RFC 4443 §2.3) for fe80::1.
        let target: Ipv6Addr = "fe80::1".parse().unwrap();
        let (packet, _) = neighbour_solicitation(target);
        expect_test::expect!["7c25"].assert_eq(&format!("{:02x}{:02x}", packet[42], packet[43]));
    }

    #[test]
    fn a_neighbour_advertisement_claims_its_target_for_the_mac_in_its_option() {
        let target: Ipv6Addr = "fd00::7".parse().unwrap();
        let mut packet = vec![0u8; 72];
        packet[0] = 0x60;
        packet[6] = ICMPV6;
        packet[40] = NEIGHBOUR_ADVERTISEMENT;
        packet[48..64].copy_from_slice(&target.octets());
        packet[64] = 2;
        packet[65] = 1;
        packet[66..72].copy_from_slice(&mac(5).octets());
        assert_eq!(advertisement_claim(&packet, Some(mac(6))), Some((IpAddr::V6(target), mac(5))));
        // Without the option, the frame's source.
        assert_eq!(advertisement_claim(&packet[..64], Some(mac(6))), Some((IpAddr::V6(target), mac(6))));
        let mut solicitation = packet.clone();
        solicitation[40] = NEIGHBOUR_SOLICITATION;
        assert_eq!(advertisement_claim(&solicitation, Some(mac(6))), None);
    }

    #[test]
    fn the_default_window_is_two_probes_and_a_wait() {
        assert_eq!(ProbeSettings::default().window(), Duration::from_millis(200));
        let once = ProbeSettings { count: 1, interval_ms: 500, wait_ms: 50 };
        assert_eq!(once.window(), Duration::from_millis(50));
    }

    #[test]
    fn a_missing_interface_is_an_error_and_no_target_is_no_work() {
        let settings = ProbeSettings::default();
        let targets = ["10.0.0.1".parse().unwrap()];
        let error = probe("ipam-no-such0", None, &targets, &settings).unwrap_err();
        assert!(matches!(error, ProbeError::NoInterface { .. }), "{error:?}");
        assert_eq!(probe("ipam-no-such0", None, &[], &settings).unwrap(), BTreeMap::new());
    }
}
