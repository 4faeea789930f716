//! Records that cannot be used go to `ipam.dead-letter` with the reason and where they came from,
//! and the consumer moves on: one bad record never stops a partition (invariant 7).
//!
//! [`ingest`] is the one place a consumed record is turned into an input: a decodable event, a
//! rejection to append (a readable engine request with a bad field, so the engine hears back), or a
//! dead-letter record.

use base64::Engine as _;
use ipam_core::event::Topic;
use ipam_core::{Envelope, EventId, NetworkId};
use serde::{Deserialize, Serialize};

use crate::{OutRecord, Record};

/// The JSON value of a dead-letter record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Why the record could not be used.
    pub reason: String,
    /// The offending field, when one is known (such as `data.mac`).
    pub field: Option<String>,
    pub source_topic: String,
    pub source_partition: u32,
    pub source_offset: u64,
    pub key: String,
    /// The record's bytes, base64-encoded (they may not be UTF-8).
    pub value_base64: String,
}

impl DeadLetter {
    /// The dead-letter record for `record`, keyed by its source topic and partition.
    pub fn record(record: &Record, reason: &str, field: Option<String>) -> OutRecord {
        let letter = DeadLetter {
            reason: reason.to_owned(),
            field,
            source_topic: record.topic.clone(),
            source_partition: record.partition,
            source_offset: record.offset,
            key: record.key.clone(),
            value_base64: base64::engine::general_purpose::STANDARD.encode(&record.value),
        };
        OutRecord {
            topic: Topic::DeadLetter.name().to_owned(),
            key: format!("{}/{}", record.topic, record.partition),
            value: serde_json::to_vec(&letter).expect("a dead letter has string keys only"),
        }
    }

    /// The original record's bytes.
    pub fn value(&self) -> Option<Vec<u8>> {
        base64::engine::general_purpose::STANDARD.decode(&self.value_base64).ok()
    }
}

/// What a consumed record becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// A valid event for the state machine.
    Event(Envelope),
    /// A refused engine request: append `rejection` (on `ipam.reservations`), change nothing but
    /// the network's memory of request ids (a retried request is answered once: see
    /// `Allocator::record_refused`).
    Rejected { network_id: NetworkId, cause: EventId, rejection: OutRecord },
    /// An unusable record: append this to `ipam.dead-letter`, apply nothing.
    DeadLetter(OutRecord),
}

/// The source written into rejections made before any state machine saw the request.
pub const INGEST_SOURCE: &str = "ipam/ingest";

/// Decodes a consumed record.
pub fn ingest(record: &Record) -> Ingested {
    match Envelope::decode(&record.value) {
        Ok(envelope) => Ingested::Event(envelope),
        Err(error) => match (error.rejection(), error.cause, error.time) {
            (Some(event), Some(cause), Some(time)) if let Some(network_id) = event.network_id() => {
                let rejection = Envelope {
                    id: EventId::derived(cause, 0),
                    source: INGEST_SOURCE.to_owned(),
                    time,
                    subject: Some(event.key()),
                    event,
                };
                let rejection = OutRecord {
                    topic: rejection.event.topic().name().to_owned(),
                    key: rejection.event.key(),
                    value: rejection.to_bytes(),
                };
                Ingested::Rejected { network_id, cause, rejection }
            }
            _ => Ingested::DeadLetter(DeadLetter::record(record, &error.message, error.field)),
        },
    }
}
