//! What every request handler shares: the log, the topic names, the read model, the health board
//! and the counters.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use ipam_log::EventLog;
use ipam_runtime::{Health, Topics};

use crate::metrics::Metrics;
use crate::model::{Positions, ReadModel};
use crate::stream::StreamSlots;
use crate::{ApiConfig, Groups};

pub(crate) struct AppState {
    pub log: Arc<dyn EventLog>,
    pub topics: Topics,
    pub groups: Groups,
    pub config: ApiConfig,
    pub model: Arc<RwLock<ReadModel>>,
    pub metrics: Arc<Metrics>,
    /// Set when the server stops (or the read model failed): long-lived work ends.
    pub halt: Arc<AtomicBool>,
    /// The places of the event streams.
    pub streams: Arc<StreamSlots>,
    /// The process's health board, which `/health` answers from.
    pub health: Health,
    /// The read model's positions when `/health` first saw it behind the log without moving since,
    /// and when that was: how long it has been stuck.
    pub stalled: Unchanged<(), Positions>,
    /// Partitions whose records after the last stable offset `/health` found held back, with that
    /// offset and when it first saw them held back there.
    pub held_back: Unchanged<(String, u32), u64>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("topics", &self.topics).field("groups", &self.groups).finish_non_exhaustive()
    }
}

impl AppState {
    /// The end offset of every partition the read model follows.
    pub(crate) fn followed_ends(&self) -> Result<Vec<(String, u32, u64)>, ipam_log::LogError> {
        let mut ends = Vec::new();
        for topic in crate::follower::FOLLOWED {
            let topic = self.topics.name(topic);
            for (partition, end) in (0..).zip(self.log.end_offsets(&topic)?) {
                ends.push((topic.clone(), partition, end));
            }
        }
        Ok(ends)
    }

    pub fn model(&self) -> RwLockReadGuard<'_, ReadModel> {
        self.model.read().unwrap_or_else(|e| e.into_inner())
    }

    /// How long `partition` of `topic` has held `held` records back behind the same last stable
    /// offset `stable`, as far as the calls to this function saw: a stable offset that moves, or a
    /// partition that holds nothing back, starts the clock again. `None` when it holds none back.
    pub fn held_back_for(&self, topic: &str, partition: u32, stable: u64, held: u64) -> Option<Duration> {
        self.held_back.since((topic.to_owned(), partition), stable, held > 0)
    }

    /// How long the read model has been at `positions` while `behind` records short of the log's
    /// end, as far as the calls to this function saw: a read model that moves, or is not behind,
    /// starts the clock again. `None` when it is not behind.
    pub fn stalled_for(&self, positions: &Positions, behind: u64) -> Option<Duration> {
        self.stalled.since((), positions.clone(), behind > 0)
    }
}

/// For each key, the value `/health` last saw while something was wrong there, and since when it
/// has seen that same value: how long a thing has been stuck.
#[derive(Debug)]
pub(crate) struct Unchanged<K, V>(Mutex<BTreeMap<K, (V, Instant)>>);

impl<K: Ord, V: PartialEq> Default for Unchanged<K, V> {
    fn default() -> Self {
        Unchanged(Mutex::new(BTreeMap::new()))
    }
}

impl<K: Ord, V: PartialEq> Unchanged<K, V> {
    /// How long `key` has been at `value` while `wrong`; a value that changes starts the clock
    /// again, and `None` (forgetting the key) when nothing is wrong.
    fn since(&self, key: K, value: V, wrong: bool) -> Option<Duration> {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !wrong {
            seen.remove(&key);
            return None;
        }
        match seen.get(&key) {
            Some((last, since)) if *last == value => Some(since.elapsed()),
            _ => {
                seen.insert(key, (value, Instant::now()));
                Some(Duration::ZERO)
            }
        }
    }
}
