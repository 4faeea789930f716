//! Records as the backend hands them out: every read path (`read.rs`, `follow.rs`, the members'
//! consumers, and through `read.rs` the positions reader) turns a Kafka message into a
//! [`Record`] here, and drops the backend's own *seals* on the way.
//!
//! A seal is a record a member writes to end a transaction of its producer that a partition
//! keeps open although the coordinator decided it (a *hanging transaction*, `member.rs`): the
//! partition ends the open transaction at the seal's marker. A seal whose transaction commits is
//! a committed record in that topic, an event topic too, so no caller of this backend may see
//! one: it has the key [`SEAL_KEY`] and no value, which no event has (an event is a JSON document).
//! A consumer of the topics outside this project skips such records too (ARCHITECTURE.md, "Kafka
//! topics").

use ipam_log::Record;
use rdkafka::message::{BorrowedMessage, Message};

/// The key of every seal.
pub(crate) const SEAL_KEY: &[u8] = b"ipam.seal";

/// Whether `message` is one of the backend's seals.
pub(crate) fn is_seal(message: &BorrowedMessage<'_>) -> bool {
    message.key() == Some(SEAL_KEY) && message.payload().is_none_or(<[u8]>::is_empty)
}

/// The record `message` holds, or `None` for a seal.
pub(crate) fn record_of(message: &BorrowedMessage<'_>) -> Option<Record> {
    if is_seal(message) {
        return None;
    }
    Some(Record {
        topic: message.topic().to_owned(),
        partition: u32::try_from(message.partition()).unwrap_or_default(),
        offset: u64::try_from(message.offset()).unwrap_or_default(),
        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
        value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
    })
}
