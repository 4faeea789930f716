//! The exit codes of the `ipam` commands, one per thing a script must tell apart: decided,
//! rejected, still pending, its own mistake, and an API it cannot reach. An engine or a script
//! checks `$?` instead of parsing what was printed.

use crate::client::ClientError;

/// Done: the event was decided (an address reserved or released, or nothing to decide), or the
/// command did what it was asked.
pub const OK: i32 = 0;
/// Another failure (the API failed with a 5xx or an answer it does not document, a local I/O error).
pub const FAILED: i32 = 1;
/// Bad input: a wrong argument or value, a name that matches no object or several, or an event
/// the API refused (4xx). Nothing was written. (clap's own usage errors exit 2 as well.)
pub const BAD_INPUT: i32 = 2;
/// The event was decided, and the decision is a rejection (its code and message are printed).
pub const REJECTED: i32 = 3;
/// The event was accepted but not decided within `--wait`; it may still be decided later.
pub const PENDING: i32 = 4;
/// The API could not be reached (refused, unknown host, TLS failure, timeout) or answered that it
/// is unavailable (502, 503, 504). Retrying later may work.
pub const UNREACHABLE: i32 = 5;

/// The exit codes, for `--help` (and README).
pub const HELP: &str = "Exit codes:
  0  decided (reserved, released, nothing to decide) or done
  1  another failure (the API failed, a local I/O error)
  2  bad input: a wrong argument, an unknown or ambiguous name, or an event the API refused (4xx)
  3  rejected: the decision is a rejection (its code and message are printed)
  4  pending: accepted, but not decided within --wait
  5  the API is unreachable or unavailable (connection refused, TLS failure, timeout, 502/503/504)";

/// A mistake in what the user asked for, found before anything was sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The exit code a failed command ends with: the first error in the chain that says what it is.
pub fn of_error(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if cause.is::<BadInput>() {
            return BAD_INPUT;
        }
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            return match client {
                ClientError::Refused { .. } => BAD_INPUT,
                ClientError::Unreachable { .. } | ClientError::Unavailable { .. } => UNREACHABLE,
                ClientError::Failed(_) => FAILED,
            };
        }
    }
    FAILED
}
