//! What every request handler shares: the log, the topic names, the read model and the counters.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use ipam_log::EventLog;
use ipam_runtime::Topics;

use crate::metrics::Metrics;
use crate::model::ReadModel;
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
    /// Event streams open now.
    pub streams: Arc<AtomicUsize>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("topics", &self.topics).field("groups", &self.groups).finish_non_exhaustive()
    }
}

impl AppState {
    pub fn model(&self) -> RwLockReadGuard<'_, ReadModel> {
        self.model.read().unwrap_or_else(|e| e.into_inner())
    }
}
