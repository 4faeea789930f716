//! [`StateMachine`]: the one shape of every decision-making state in the core (the allocator,
//! placement, and a host's DHCP view), so that the runtime treats them alike and every one of
//! them answers the same four questions.
//!
//! - `apply` folds one input in and answers what it decided;
//! - `snapshot` gives the canonical bytes of the state (equal states, equal bytes), and `restore`
//!   takes them back; a snapshot that cannot be restored is never fatal, since the state can always
//!   be rebuilt by replaying the log, so every machine reports it as the one [`SnapshotError`];
//! - `check` verifies the machine's invariants from its own state (indexes against the state they
//!   derive from, counters against what they count). The runtime runs it after every apply in debug
//!   builds and tests, so that a bug shows up at the input that caused it rather than as a wrong
//!   decision much later; release builds skip it, since it costs time proportional to the state.

use crate::Envelope;

/// A deterministic state machine over the log's inputs. See the module documentation.
pub trait StateMachine: Sized {
    /// What restoring needs besides the bytes (settings that are configuration, not state).
    type Config;
    /// What one input makes the machine decide.
    type Decision;

    /// Applies one input. An input the machine does not follow, or one it has already applied (a
    /// retry), decides nothing and changes nothing that a decision depends on.
    fn apply(&mut self, input: &Envelope) -> Self::Decision;

    /// The canonical bytes of the state: equal states give equal bytes, whatever history led there.
    fn snapshot(&self) -> Vec<u8>;

    /// The machine a [`snapshot`](StateMachine::snapshot) was taken of.
    fn restore(config: &Self::Config, bytes: &[u8]) -> Result<Self, SnapshotError>;

    /// Checks every invariant the machine keeps; `Err` names the first one broken. A broken
    /// invariant is a bug in the machine, never a property of its inputs.
    fn check(&self) -> Result<(), InvariantViolation>;
}

/// Why a snapshot cannot be restored. Whatever the variant, the state can be rebuilt by replaying
/// the log from the beginning, so the shell should do that rather than stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are not a snapshot of this machine (truncated, corrupt, or another machine's).
    #[error("the snapshot cannot be read: {0}")]
    Unreadable(String),
    /// The snapshot was written in a format version this build does not read (say, by a newer one).
    #[error("the snapshot has format version {found}; this build reads version {expected}")]
    Version { found: u32, expected: u32 },
    /// The snapshot contradicts itself (a buggy writer, or corruption that still parses).
    #[error("the snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

impl From<serde_json::Error> for SnapshotError {
    fn from(error: serde_json::Error) -> SnapshotError {
        SnapshotError::Unreadable(error.to_string())
    }
}

/// A broken invariant, described: what should hold, and where it does not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invariant broken: {0}")]
pub struct InvariantViolation(pub String);

/// `Err(InvariantViolation(message))` unless `condition` holds.
pub(crate) fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), InvariantViolation> {
    if condition { Ok(()) } else { Err(InvariantViolation(message())) }
}
