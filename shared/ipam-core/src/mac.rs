//! MAC addresses that a DHCP server can answer.
//!
//! A reservation binds a MAC to an IP, so the MAC must name exactly one unicast interface: the
//! all-zero address, the broadcast address and multicast addresses are refused at parse time.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A 48-bit unicast MAC address, written `aa:bb:cc:dd:ee:ff` (lowercase on output) in
/// human-readable formats (JSON, the contract's); binary formats (the API's MessagePack snapshot)
/// carry its six octets, read back without parsing text.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac([u8; 6]);

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() { serializer.collect_str(self) } else { serializer.serialize_bytes(&self.0) }
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Mac, D::Error> {
        use serde::de::Error;
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            return text.parse().map_err(D::Error::custom);
        }
        struct Octets;
        impl serde::de::Visitor<'_> for Octets {
            type Value = Mac;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the six octets of a MAC address")
            }
            fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Mac, E> {
                let octets: [u8; 6] = bytes.try_into().map_err(|_| E::invalid_length(bytes.len(), &self))?;
                Mac::from_octets(octets).map_err(E::custom)
            }
            fn visit_str<E: Error>(self, text: &str) -> Result<Mac, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_bytes(Octets)
    }
}

/// Why a string is not a usable MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six two-digit hex octets separated by `:` or `-`; the sender must fix the value.
    #[error("`{0}` is not a MAC address (expected six hex octets like 52:54:00:12:34:56)")]
    Syntax(String),
    /// 00:00:00:00:00:00 names no interface.
    #[error("the all-zero MAC address names no interface")]
    Zero,
    /// ff:ff:ff:ff:ff:ff is the broadcast address.
    #[error("the broadcast MAC address cannot hold a reservation")]
    Broadcast,
    /// The group bit is set, so the address names many interfaces.
    #[error("`{0}` is a multicast MAC address and cannot hold a reservation")]
    Multicast(String),
}

impl Mac {
    /// A MAC from its octets, refusing the same values as parsing does.
    pub fn from_octets(octets: [u8; 6]) -> Result<Mac, MacError> {
        let mac = Mac(octets);
        if octets == [0; 6] {
            Err(MacError::Zero)
        } else if octets == [0xff; 6] {
            Err(MacError::Broadcast)
        } else if octets[0] & 1 == 1 {
            Err(MacError::Multicast(mac.to_string()))
        } else {
            Ok(mac)
        }
    }

    pub fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for Mac {
    type Err = MacError;

    fn from_str(text: &str) -> Result<Mac, MacError> {
        let syntax = || MacError::Syntax(text.chars().take(64).collect());
        let separator = match text.as_bytes().get(2) {
            Some(b':') => ':',
            Some(b'-') => '-',
            _ => return Err(syntax()),
        };
        let mut octets = [0u8; 6];
        let mut parts = text.split(separator);
        for octet in &mut octets {
            let part = parts.next().ok_or_else(syntax)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        Mac::from_octets(octets)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

impl JsonSchema for Mac {
    fn schema_name() -> Cow<'static, str> {
        "Mac".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A unicast MAC address: six hex octets separated by ':' or '-'. \
                            All-zero, broadcast and multicast addresses are refused.",
            "pattern": "^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\\1[0-9A-Fa-f]{2}){4}$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_lowercase() {
        let mac: Mac = "52:54:00:AB:cd:0F".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse::<Mac>().unwrap(), mac);
    }

    #[test]
    fn refuses_what_names_no_single_interface() {
        assert_eq!("00:00:00:00:00:00".parse::<Mac>(), Err(MacError::Zero));
        assert_eq!("ff:ff:ff:ff:ff:ff".parse::<Mac>(), Err(MacError::Broadcast));
        assert!(matches!("01:00:5e:00:00:01".parse::<Mac>(), Err(MacError::Multicast(_))));
    }

    #[test]
    fn refuses_malformed_text() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "52:54-00:ab:cd:0f",
            "5254.00ab.cd0f",
            "52:54:00:ab:cd:0g",
            "52:54:00:ab:cd:+f",
            "52:54:00:ab:cd:0f\n",
        ] {
            assert!(matches!(bad.parse::<Mac>(), Err(MacError::Syntax(_))), "{bad:?}");
        }
    }
}
