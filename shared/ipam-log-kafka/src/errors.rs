//! How librdkafka's errors become [`LogError`]s. The transactional ones need care: librdkafka sorts
//! them into fatal (the producer is finished; fencing is one of these), abortable (abort the
//! transaction, then carry on) and retriable (call again), and each asks for different handling.

use ipam_log::LogError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// What to do about a failed transactional call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxnFailure {
    /// A newer producer with the same `transactional.id` took over.
    Fenced,
    /// The producer cannot go on for another reason.
    Fatal(String),
    /// The transaction must be aborted; the producer can then go on.
    Abortable(String),
    /// The same call may succeed if made again.
    Retriable(String),
    /// Neither of the above (a local state error, a timeout that librdkafka will not retry).
    Other(String),
}

/// The codes that mean "fenced": the broker's two, and the local one librdkafka normalizes them to.
pub(crate) fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(code, RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch | RDKafkaErrorCode::Fenced)
}

/// Sorts an error of a transactional producer. `fatal_error` is the producer's recorded fatal
/// error, if any (`Client::fatal_error`): after a fatal error every call fails with a generic
/// code, and only that record says whether it was a fence.
pub(crate) fn classify_txn(error: &KafkaError, fatal_error: Option<(RDKafkaErrorCode, String)>) -> TxnFailure {
    let fenced_before = fatal_error.as_ref().is_some_and(|(code, _)| is_fencing(*code));
    match error {
        KafkaError::Transaction(rd) => {
            if rd.txn_requires_abort() {
                // Checked first: an epoch bumped by the coordinator after a transaction timeout
                // (KIP-360) comes as an abortable INVALID_PRODUCER_EPOCH, not as a fence.
                TxnFailure::Abortable(rd.to_string())
            } else if is_fencing(rd.code()) || (rd.is_fatal() && fenced_before) {
                TxnFailure::Fenced
            } else if rd.is_fatal() {
                TxnFailure::Fatal(fatal_error.map_or_else(|| rd.to_string(), |(_, message)| message))
            } else if rd.is_retriable() {
                TxnFailure::Retriable(rd.to_string())
            } else {
                TxnFailure::Other(format!("{} ({})", rd, rd.name()))
            }
        }
        other => {
            let code = other.rdkafka_error_code();
            if code.is_some_and(is_fencing) || fenced_before {
                TxnFailure::Fenced
            } else if code == Some(RDKafkaErrorCode::Fatal) || fatal_error.is_some() {
                TxnFailure::Fatal(fatal_error.map_or_else(|| other.to_string(), |(_, message)| message))
            } else {
                TxnFailure::Other(other.to_string())
            }
        }
    }
}

/// A non-transactional failure: metadata, offsets, admin, consumption.
pub(crate) fn storage(context: &str, error: &KafkaError) -> LogError {
    LogError::Storage(format!("{context}: {error}"))
}

/// A failure to create a client: the configuration (typed or pass-through) is wrong.
pub(crate) fn client_creation(what: &str, error: &KafkaError) -> LogError {
    LogError::Config(format!("cannot create the kafka {what}: {error}"))
}
