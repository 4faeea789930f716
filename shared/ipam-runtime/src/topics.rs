//! The topics of one IPAM deployment, with an optional name prefix so that several deployments (or
//! tests) can share one Kafka cluster.

use ipam_core::event::Topic;
use ipam_log::TopicSpec;

/// Topic names and partition counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub prefix: String,
    /// Partitions of the network-keyed topics (`ipam.networks`, `ipam.reservations`,
    /// `ipam.dhcp-servers`); they are co-partitioned, so the owner of input partition p writes to
    /// output partition p.
    pub partitions: u32,
}

impl Topics {
    pub fn new(prefix: impl Into<String>, partitions: u32) -> Topics {
        Topics { prefix: prefix.into(), partitions }
    }

    pub fn name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.name())
    }

    /// The prefixed name of a topic named by the contract (`ipam.dead-letter` → `<prefix>ipam.dead-letter`).
    pub fn resolve(&self, contract_name: &str) -> String {
        format!("{}{contract_name}", self.prefix)
    }

    /// Every topic with its partition count. `ipam.hosts` has one partition: it is placement's only
    /// input, and one partition gives its inputs one total order for replay.
    pub fn specs(&self) -> Vec<TopicSpec> {
        Topic::ALL
            .iter()
            .map(|topic| TopicSpec {
                name: self.name(*topic),
                partitions: match topic {
                    Topic::Networks | Topic::Reservations | Topic::DhcpServers => self.partitions,
                    Topic::Hosts | Topic::DeadLetter => 1,
                },
            })
            .collect()
    }
}
