//! Identifiers of the things IPAM talks about.
//!
//! Every id is a UUID in its own type, so a subnet id can never be passed where a network id is
//! expected. They serialize as the UUID's hyphenated lowercase string, which is what the engine sends.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {$(
        #[$doc]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// An id from a 128-bit number; handy for tests and generated workloads.
            pub const fn from_u128(value: u128) -> Self {
                Self(Uuid::from_u128(value))
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;

            fn from_str(text: &str) -> Result<Self, uuid::Error> {
                Uuid::parse_str(text).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "format": "uuid" })
            }
        }
    )*};
}

uuid_id! {
    /// A logical network (the engine's network id).
    NetworkId,
    /// A subnet of a network.
    SubnetId,
    /// A hypervisor host that may run DHCP servers.
    HostId,
    /// A VM's virtual NIC.
    VnicId,
    /// A virtual machine.
    VmId,
    /// A CloudEvents `id`: names one event, and is the `cause` of every output it produces.
    EventId,
}

impl EventId {
    /// The id of the `index`-th output caused by the event `cause`.
    ///
    /// Output ids are a pure function of the input, so replaying the log (or retrying a step after a
    /// crash) produces byte-identical outputs, and consumers can drop duplicates by id.
    pub fn derived(cause: EventId, index: u32) -> EventId {
        let mut name = [0u8; 20];
        name[..16].copy_from_slice(cause.0.as_bytes());
        name[16..].copy_from_slice(&index.to_be_bytes());
        EventId(Uuid::new_v5(&OUTPUT_NAMESPACE, &name))
    }
}

/// The UUIDv5 namespace of output event ids (a fixed, random-looking constant).
const OUTPUT_NAMESPACE: Uuid = Uuid::from_u128(0x5f0c_7d8e_2b7a_4c41_9a37_1d2e_6b9f_a301);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let cause = EventId::from_u128(7);
        assert_eq!(EventId::derived(cause, 0), EventId::derived(cause, 0));
        assert_ne!(EventId::derived(cause, 0), EventId::derived(cause, 1));
        assert_ne!(EventId::derived(cause, 0), EventId::derived(EventId::from_u128(8), 0));
    }
}
