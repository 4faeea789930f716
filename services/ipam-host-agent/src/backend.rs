//! What a DHCP backend must do: make one network's server match its desired configuration, or stop
//! it. The agent decides nothing about content; the backend only turns a [`NetworkDhcpConfig`] into
//! whatever its server reads (dnsmasq files first, see [`crate::dnsmasq`]). With each configuration
//! it is told what changed since it last applied one ([`ConfigChange`]), so a backend that can
//! (the sharded dnsmasq) touches only the hosts that came or went.

use std::path::PathBuf;

use ipam_core::NetworkId;
use ipam_core::dhcp_plan::{HostChange, NetworkDhcpConfig};

/// What changed in a network's configuration since the backend last applied one successfully.
#[derive(Debug, Clone, Copy)]
pub enum ConfigChange<'a> {
    /// Anything may have: the first configuration, a new epoch, subnets or options, or an apply
    /// that failed (and may have been carried out in part).
    Whole,
    /// Only these hosts came or went (in order), and nothing else changed.
    Hosts(&'a [HostChange]),
}

/// Applies the desired configuration of ONE network's DHCP server. The agent gives every served
/// network its own instance, made by the factory passed to [`crate::run`], and calls it from that
/// network's provisioning actor only, so an implementation needs no locking of its own. Calls may
/// block (file I/O, signalling a process): each provisioning actor has a thread of its own.
pub trait DhcpBackend: Send {
    /// Makes the server answer exactly what `config` says; `change` says what changed since the
    /// last successful apply, which a backend may use to look at those hosts only. Idempotent:
    /// applying the configuration that is already in force changes nothing (and does not restart
    /// the server).
    fn apply(&mut self, config: &NetworkDhcpConfig, change: ConfigChange<'_>) -> Result<(), BackendError>;

    /// Stops the server of `network_id`: placement gave the network to another host, or none.
    /// Stopping a server that does not run is not an error.
    fn stop(&mut self, network_id: NetworkId) -> Result<(), BackendError>;

    /// Supervision, called periodically: makes sure the server still runs, restarting it (with
    /// backoff) if it died. Answers what happened when it restarted one, for a status event.
    fn check(&mut self) -> Result<Option<String>, BackendError> {
        Ok(None)
    }

    /// What of the configuration last applied the server does not serve as asked, and why (in the
    /// server's own words); `None` when it serves all of it. Reported with the `running` status.
    fn degraded(&self) -> Option<String> {
        None
    }
}

/// At most this many characters of a server's own error text go into a status detail.
pub const MAX_ERROR_CHARS: usize = 300;

/// `text` on one line (its non-empty lines trimmed and joined by `; `), cut to at most `max`
/// characters (an ellipsis marks a cut), for a status detail.
pub fn one_line(text: &str, max: usize) -> String {
    let joined = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join("; ");
    if joined.chars().count() <= max {
        return joined;
    }
    let mut cut: String = joined.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Why a backend could not apply or stop a configuration. The agent reports it in an
/// `ipam.dhcp_server.status.v1` event with state `failed` and retries the apply later.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A value would change the meaning of the rendered configuration (a newline, a separator,
    /// an `=`). Validated core types never produce one, so this is a bug upstream; nothing was
    /// written, and the server keeps its previous configuration.
    #[error("refusing to render {field} `{value}` for network {network_id}: {reason}")]
    Unsafe { network_id: NetworkId, field: &'static str, value: String, reason: &'static str },
    /// The server refused the configuration as a whole (`dnsmasq --test` failed even without any
    /// subnet); `detail` is its own error text. Nothing was changed: a running server keeps its
    /// previous configuration, and the apply is retried (a new configuration may fix it).
    #[error("dnsmasq refused the configuration of network {network_id}: {detail}")]
    Refused { network_id: NetworkId, detail: String },
    /// Reading, writing, renaming or removing a file failed (disk full, permissions, missing
    /// directory); the operation may succeed when retried.
    #[error("{action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
