//! The host agent's settings, as one typed struct passed explicitly to [`crate::run`].
//!
//! Layering (defaults → TOML file → `IPAM_*` environment → flags) is the binary's job; this crate
//! only says what the settings are and what each defaults to.

use ipam_core::dhcp_plan::DEFAULT_LEASE_SECS;
use ipam_core::{HostId, Mac};
use serde::{Deserialize, Serialize};

use crate::probe::ProbeSettings;

/// How often the agent says it is alive, unless configured otherwise (3 s). Placement's default
/// heartbeat timeout is 15 s, so five heartbeats may be lost before the host is.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 3000;

/// The settings of one host agent.
///
/// There is no `Default`: a host id has no sensible default, and a made-up one would make the agent
/// serve nothing while looking healthy. [`HostAgentConfig::new`] fills in every other default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HostAgentConfig {
    /// The host this agent runs on, as the engine names it.
    pub host_id: HostId,
    /// How often a heartbeat is appended to `ipam.hosts`.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// The lease time handed to clients.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
    /// The MAC the host's DHCP servers use for their own port address, in every subnet of every
    /// network. When absent, [`HostAgentConfig::port_mac`] derives one from the host id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mac: Option<Mac>,
    /// How newly reserved addresses are probed before they are served (on networks whose policy
    /// asks for it); see [`crate::probe`].
    #[serde(default)]
    pub probe: ProbeSettings,
    /// The network namespace the served networks' interfaces are in, when not the agent's own
    /// (the agent then probes there, as its DHCP servers run there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

fn default_heartbeat_interval_ms() -> u64 {
    DEFAULT_HEARTBEAT_INTERVAL_MS
}

fn default_lease_secs() -> u32 {
    DEFAULT_LEASE_SECS
}

impl HostAgentConfig {
    /// The configuration of the agent of `host_id`, with every other setting at its default.
    pub fn new(host_id: HostId) -> HostAgentConfig {
        HostAgentConfig {
            host_id,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            lease_secs: DEFAULT_LEASE_SECS,
            port_mac: None,
            probe: ProbeSettings::default(),
            netns: None,
        }
    }

    /// The MAC of the host's DHCP ports: the configured one, or [`derived_port_mac`].
    pub fn port_mac(&self) -> Mac {
        self.port_mac.unwrap_or_else(|| derived_port_mac(self.host_id))
    }
}

/// A locally administered unicast MAC (`02:xx:xx:xx:xx:xx`) that is a pure function of the host id,
/// so a restarted agent asks for its ports with the same MAC and the allocator sees a repeat.
///
/// The five free octets are the low bytes of a 64-bit FNV-1a hash of the whole UUID rather than
/// UUID bytes themselves: engines and tests use sequential ids (`…-000000000001`), whose leading
/// bytes are all equal, so taking bytes directly would give many hosts the same MAC.
pub fn derived_port_mac(host_id: HostId) -> Mac {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash =
        host_id.0.as_bytes().iter().fold(FNV_OFFSET, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME));
    let [a, b, c, d, e, ..] = hash.to_le_bytes();
    // 0x02: the locally administered bit set and the group bit clear, so this is never zero,
    // broadcast or multicast.
    Mac::from_octets([0x02, a, b, c, d, e]).expect("02:… is a locally administered unicast MAC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_file_takes_the_defaults() {
        let config: HostAgentConfig =
            serde_json::from_str(r#"{"host-id": "00000000-0000-0000-0000-000000000007"}"#).unwrap();
        assert_eq!(config, HostAgentConfig::new(HostId::from_u128(7)));
        assert_eq!(config.heartbeat_interval_ms, 3000);
        assert_eq!(config.lease_secs, 3600);
    }

    #[test]
    fn unknown_settings_are_refused() {
        let error = serde_json::from_str::<HostAgentConfig>(
            r#"{"host-id": "00000000-0000-0000-0000-000000000007", "lease-seconds": 60}"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("unknown field `lease-seconds`"), "{error}");
    }

    #[test]
    fn the_port_mac_is_configured_or_derived_from_the_host() {
        let mut config = HostAgentConfig::new(HostId::from_u128(1));
        let derived = config.port_mac();
        assert_eq!(derived, derived_port_mac(HostId::from_u128(1)));
        assert_eq!(derived.octets()[0], 0x02);
        assert_ne!(derived, derived_port_mac(HostId::from_u128(2)));
        expect_test::expect!["02:b2:62:ff:60:b9"].assert_eq(&derived.to_string());
        let configured: Mac = "52:54:00:00:00:01".parse().unwrap();
        config.port_mac = Some(configured);
        assert_eq!(config.port_mac(), configured);
    }
}
