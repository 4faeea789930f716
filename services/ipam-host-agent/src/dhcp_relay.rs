//! Unicast DHCP for a sharded server (see [`crate::dnsmasq_shards`]).
//!
//! Every shard binds the interface's wildcard address, so a broadcast reaches them all. But a client
//! renewing its lease sends its REQUEST by unicast to the server address, which the kernel gives to
//! one socket only (the shard bound last), and a shard ignores a MAC it does not hold: the client
//! would not renew until it rebinds by broadcast at T2, 7/8 into its lease. So a sharded server
//! runs this relay: it binds the server address itself (a socket bound to the exact destination
//! address is chosen over wildcard ones) and sends every request it gets out again as a broadcast
//! on the interface, which every shard receives; the shard that holds the MAC answers the client
//! directly, at the address the client is renewing. The relay reads nothing of a request but its
//! first byte and its magic cookie, to pass on DHCP requests only.

use std::fs::File;
use std::io::{self, Read as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

const DHCP_SERVER_PORT: u16 = 67;
/// How often a relay thread looks at its stop flag while no request comes.
const STOP_POLL: Duration = Duration::from_millis(200);

/// Whether `packet` is a DHCP request from a client: BOOTREQUEST, and the DHCP magic cookie after the
/// fixed BOOTP header.
pub fn is_dhcp_request(packet: &[u8]) -> bool {
    packet.len() >= 240 && packet[0] == 1 && packet[236..240] == [99, 130, 83, 99]
}

/// A running relay: one thread per server address. Dropping it stops them.
#[derive(Debug)]
pub struct UnicastRelay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl UnicastRelay {
    /// Relays unicast requests to each of `addresses` on `interface`, in network namespace `netns`
    /// if given. Fails when an address cannot be bound (not on the interface yet, say).
    pub fn start(interface: &str, addresses: &[Ipv4Addr], netns: Option<&str>) -> io::Result<UnicastRelay> {
        let mut relay = UnicastRelay { stop: Arc::new(AtomicBool::new(false)), threads: Vec::new() };
        for address in addresses {
            let (ready_tx, ready_rx) = mpsc::channel();
            let (interface, netns, stop, address) =
                (interface.to_owned(), netns.map(str::to_owned), Arc::clone(&relay.stop), *address);
            let thread = thread::Builder::new().name(format!("dhcp-relay-{address}")).spawn(move || {
                match open(&interface, address, netns.as_deref()) {
                    Ok(sockets) => {
                        let _ = ready_tx.send(Ok(()));
                        forward(&sockets, &stop);
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                    }
                }
            })?;
            relay.threads.push(thread);
            ready_rx.recv().map_err(|_| io::Error::other("the relay thread ended before binding"))??;
        }
        Ok(relay)
    }
}

impl Drop for UnicastRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The socket that receives the unicast requests, and the one that broadcasts them again.
struct Sockets {
    unicast: Socket,
    broadcast: Socket,
}

/// Moves the calling thread into network namespace `name` (as `ip netns exec` does).
#[allow(unsafe_code)]
pub(crate) fn enter_netns(name: &str) -> io::Result<()> {
    let namespace = File::open(std::path::Path::new("/var/run/netns").join(name))?;
    // SAFETY: setns only reads the descriptor, which `namespace` keeps open for the call, and
    // changes this thread's network namespace, which this thread owns alone.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open(interface: &str, address: Ipv4Addr, netns: Option<&str>) -> io::Result<Sockets> {
    if let Some(netns) = netns {
        enter_netns(netns)?;
    }
    let unicast = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // dnsmasq holds the wildcard address on this port with SO_REUSEADDR (under bind-interfaces);
    // binding the exact address beside it needs the option on both.
    unicast.set_reuse_address(true)?;
    unicast.bind_device(Some(interface.as_bytes()))?;
    unicast.bind(&SocketAddr::V4(SocketAddrV4::new(address, DHCP_SERVER_PORT)).into())?;
    unicast.set_read_timeout(Some(STOP_POLL))?;
    let broadcast = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    broadcast.set_broadcast(true)?;
    broadcast.bind_device(Some(interface.as_bytes()))?;
    Ok(Sockets { unicast, broadcast })
}

fn forward(sockets: &Sockets, stop: &AtomicBool) {
    let everyone: socket2::SockAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_SERVER_PORT)).into();
    let mut buffer = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        // One datagram per read.
        let length = match (&sockets.unicast).read(&mut buffer) {
            Ok(length) => length,
            // A read with a timeout (SO_RCVTIMEO) that a signal handler interrupts fails with EINTR
            // even under SA_RESTART (signal(7)): the SIGCHLD of a shard that is restarted lands
            // on this thread now and then, and ending the relay for it left renewals unanswered
            // until the agent restarted (the DHCP bench's unicast renewal, under load).
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(error) => {
                tracing::warn!(error = %error, "The DHCP relay cannot receive; it stops.");
                return;
            }
        };
        let packet = &buffer[..length];
        if !is_dhcp_request(packet) {
            continue;
        }
        if let Err(error) = sockets.broadcast.send_to(packet, &everyone) {
            tracing::warn!(error = %error, "The DHCP relay cannot broadcast a request.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dhcp_requests_are_relayed() {
        let mut request = vec![0u8; 300];
        request[0] = 1;
        request[236..240].copy_from_slice(&[99, 130, 83, 99]);
        assert!(is_dhcp_request(&request));
        let mut reply = request.clone();
        reply[0] = 2;
        assert!(!is_dhcp_request(&reply), "a BOOTREPLY");
        let mut bootp = request.clone();
        bootp[236] = 0;
        assert!(!is_dhcp_request(&bootp), "no magic cookie");
        assert!(!is_dhcp_request(&request[..239]), "too short");
    }
}
