//! Points in time as the log carries them.
//!
//! The core never reads a clock: time enters only as data (an event's `time`, a tick's `now`). The
//! chrono dependency is built without its `clock` feature, so `Utc::now()` does not even exist here.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// An instant in UTC, written in RFC 3339 in human-readable formats (JSON, the contract's); binary
/// formats (the API's MessagePack snapshot) carry seconds and nanoseconds since the Unix epoch,
/// read back without parsing text.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.0.serialize(serializer)
        } else {
            (self.0.timestamp(), self.0.timestamp_subsec_nanos()).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        if deserializer.is_human_readable() {
            return DateTime::<Utc>::deserialize(deserializer).map(Timestamp);
        }
        let (seconds, nanos) = <(i64, u32)>::deserialize(deserializer)?;
        DateTime::from_timestamp(seconds, nanos).map(Timestamp).ok_or_else(|| {
            serde::de::Error::custom(format!("no instant is {seconds} s and {nanos} ns after the epoch"))
        })
    }
}

impl Timestamp {
    /// The instant `millis` milliseconds after the Unix epoch (saturating at chrono's range).
    pub fn from_unix_ms(millis: i64) -> Timestamp {
        Timestamp(DateTime::from_timestamp_millis(millis).unwrap_or(DateTime::<Utc>::MAX_UTC))
    }

    pub fn unix_ms(self) -> i64 {
        self.0.timestamp_millis()
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.0.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339())
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "date-time" })
    }
}
