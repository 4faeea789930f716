//! The ids of the inputs a state machine applied last, so that an input read again is a retry with
//! no second effect.
//!
//! A sender that does not hear back (an engine after a timeout, a host agent after a restart)
//! sends the same event again, with the same CloudEvents `id`, and the log then holds it twice,
//! possibly in another batch. Output ids are derived from the input's id
//! ([`crate::EventId::derived`]), so applying it twice would write outputs with ids already used and
//! a second effect (an address reserved again after a release, say). So each machine remembers the
//! ids of the last inputs it was given and ignores one it has seen: no state change, no output.
//! That also holds for two *different* events that share an id: the contract says an id names one
//! event, so the second is taken for a retry of the first.
//!
//! The window is part of the machine's state: snapshots hold it, oldest id first, and replay
//! rebuilds it, so a retry is recognised after a restart too. It is bounded by count, not by time
//! (the machines read no clock): each new id pushes out the oldest once [`INPUT_WINDOW`] are held.
//! An id older than that is forgotten, and its retry would be applied again.

use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::ids::EventId;

/// How many input ids each machine remembers: per network for the allocator, in all for
/// placement.
///
/// Retries come within seconds to minutes of the original (a client timeout, an agent restart).
/// A network rarely sees more than a few inputs a second, so 65,536 covers hours of a busy network
/// and minutes of a boot storm of hundreds of vNICs a second; placement's inputs are mostly
/// heartbeats and ticks, and 65,536 of them are over ten minutes at 100 a second (a thousand hosts
/// beating every ten seconds). The cost grows with actual use, 40 to 50 bytes per id held (16 in
/// the queue, the rest in the ordered set; measured by `benches/memory.rs`), so a network that has
/// seen a few inputs costs a few hundred bytes, and one whose window is full 2.6 to 3.3 MiB.
pub const INPUT_WINDOW: usize = 65_536;

/// The ids of the last inputs applied, oldest first, with a set for lookups. Ordered collections
/// only: the set decides nothing but membership, and the order that reaches a snapshot is the
/// order of application.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<EventId>")]
pub struct RecentInputs {
    capacity: usize,
    order: VecDeque<EventId>,
    ids: BTreeSet<EventId>,
}

impl Default for RecentInputs {
    fn default() -> RecentInputs {
        RecentInputs::with_capacity(INPUT_WINDOW)
    }
}

impl RecentInputs {
    /// An empty window of [`INPUT_WINDOW`] ids.
    pub fn new() -> RecentInputs {
        RecentInputs::default()
    }

    /// An empty window that holds `capacity` ids (at least one). Production machines use
    /// [`INPUT_WINDOW`]; tests use small windows to see ids forgotten.
    pub fn with_capacity(capacity: usize) -> RecentInputs {
        RecentInputs { capacity: capacity.max(1), order: VecDeque::new(), ids: BTreeSet::new() }
    }

    /// Records `id` as applied and answers `true`, or answers `false` if it is already held (a
    /// retry, to be ignored). Forgets the oldest id when the window is full.
    pub fn record(&mut self, id: EventId) -> bool {
        if self.ids.contains(&id) {
            return false;
        }
        // Make room first, so the queue never grows past its capacity (and never reallocates to
        // twice the window once full).
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.order.push_back(id);
        self.ids.insert(id);
        debug_assert_eq!(self.order.len(), self.ids.len());
        true
    }

    pub fn contains(&self, id: EventId) -> bool {
        self.ids.contains(&id)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The same ids in a window of `capacity`, keeping the newest if they do not all fit.
    pub fn resized(mut self, capacity: usize) -> RecentInputs {
        self.capacity = capacity.max(1);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        self
    }

    /// The ids, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = EventId> + '_ {
        self.order.iter().copied()
    }
}

/// Why a snapshot's list of ids is not a window.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the input window holds id {0} twice")]
pub struct DuplicateInputId(EventId);

impl TryFrom<Vec<EventId>> for RecentInputs {
    type Error = DuplicateInputId;

    /// The window of a snapshot, oldest id first, in a window of [`INPUT_WINDOW`] (a build with a
    /// smaller window keeps the newest ids).
    ///
    /// The set is built from the sorted ids in one pass: a restore reads 65,536 ids per network,
    /// and inserting them one by one in their random order was a tenth of the allocator's restore.
    fn try_from(ids: Vec<EventId>) -> Result<RecentInputs, DuplicateInputId> {
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(DuplicateInputId(pair[0]));
        }
        let window = RecentInputs { capacity: ids.len().max(1), order: ids.into(), ids: sorted.into_iter().collect() };
        Ok(window.resized(INPUT_WINDOW))
    }
}

/// The ids, oldest first (written without copying the window).
impl Serialize for RecentInputs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> EventId {
        EventId::from_u128(n)
    }

    #[test]
    fn an_id_is_new_once() {
        let mut window = RecentInputs::new();
        assert!(window.record(id(1)));
        assert!(!window.record(id(1)));
        assert!(window.record(id(2)));
        assert_eq!(window.iter().collect::<Vec<_>>(), [id(1), id(2)]);
    }

    #[test]
    fn the_oldest_id_is_forgotten_when_the_window_is_full() {
        let mut window = RecentInputs::with_capacity(3);
        for n in 1..=3 {
            assert!(window.record(id(n)));
        }
        assert!(window.record(id(4)), "a new id");
        assert!(!window.contains(id(1)), "the oldest is forgotten");
        assert!(window.contains(id(2)));
        assert!(window.record(id(1)), "a forgotten id is new again");
        assert_eq!(window.iter().collect::<Vec<_>>(), [id(3), id(4), id(1)]);
    }

    #[test]
    fn serializes_as_the_ids_oldest_first_and_back() {
        let mut window = RecentInputs::new();
        for n in [5, 3, 9] {
            window.record(id(n));
        }
        let json = serde_json::to_string(&window).unwrap();
        assert_eq!(
            json,
            r#"["00000000-0000-0000-0000-000000000005","00000000-0000-0000-0000-000000000003","00000000-0000-0000-0000-000000000009"]"#
        );
        assert_eq!(serde_json::from_str::<RecentInputs>(&json).unwrap(), window);
    }

    #[test]
    fn a_list_with_an_id_twice_is_not_a_window() {
        let json = r#"["00000000-0000-0000-0000-000000000005","00000000-0000-0000-0000-000000000005"]"#;
        assert!(serde_json::from_str::<RecentInputs>(json).is_err());
    }

    #[test]
    fn a_smaller_window_keeps_the_newest_ids() {
        let mut window = RecentInputs::new();
        for n in 1..=5 {
            window.record(id(n));
        }
        let smaller = window.resized(2);
        assert_eq!(smaller.iter().collect::<Vec<_>>(), [id(4), id(5)]);
        assert!(!smaller.contains(id(3)));
    }
}
