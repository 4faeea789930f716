//! The in-memory backend, for tests: the semantics of the others without durability.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::local::{Batch, LocalLog, LocalStore, Placed};
use crate::{Appended, LogError, Record, TopicSpec};

/// A log that lives as long as the value does. Clones share the same log.
pub type MemoryLog = LocalLog<MemoryStore>;

impl MemoryLog {
    pub fn new() -> MemoryLog {
        LocalLog::over(MemoryStore::default())
    }
}

impl Default for MemoryLog {
    fn default() -> MemoryLog {
        MemoryLog::new()
    }
}

/// One partition's records as (key, value); a record's offset is its index.
type Partition = Vec<(String, Vec<u8>)>;

#[derive(Debug, Default)]
struct State {
    /// Topic → its partitions.
    topics: BTreeMap<String, Vec<Partition>>,
    positions: BTreeMap<(String, String, u32), u64>,
    epochs: BTreeMap<String, u64>,
}

impl State {
    fn partition(&self, topic: &str, partition: u32) -> Result<&Partition, LogError> {
        let partitions = self.topics.get(topic).ok_or_else(|| LogError::UnknownTopic(topic.to_owned()))?;
        partitions
            .get(partition as usize)
            .ok_or_else(|| LogError::NoSuchPartition { topic: topic.to_owned(), partition })
    }

    fn append(&mut self, records: &[Placed]) -> Result<Vec<Appended>, LogError> {
        // Check every record before changing anything, so the append is all or nothing.
        for record in records {
            self.partition(&record.topic, record.partition)?;
        }
        Ok(records
            .iter()
            .map(|record| {
                let partition =
                    &mut self.topics.get_mut(&record.topic).expect("checked above")[record.partition as usize];
                partition.push((record.key.clone(), record.value.clone()));
                Appended { partition: record.partition, offset: partition.len() as u64 - 1 }
            })
            .collect())
    }
}

/// The memory backend's storage.
#[derive(Debug)]
pub struct MemoryStore {
    /// Unique among the memory logs of this process (and across processes by the pid).
    identity: String,
    state: Arc<Mutex<State>>,
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        static CREATED: AtomicU64 = AtomicU64::new(0);
        let number = CREATED.fetch_add(1, Ordering::Relaxed);
        MemoryStore { identity: format!("memory-{}-{number}", std::process::id()), state: Arc::default() }
    }
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LocalStore for MemoryStore {
    fn identity(&self) -> Result<String, LogError> {
        Ok(self.identity.clone())
    }

    fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), LogError> {
        let mut state = self.lock();
        for spec in topics {
            if spec.partitions == 0 {
                return Err(LogError::Config(format!("topic `{}` needs at least one partition", spec.name)));
            }
            match state.topics.get(&spec.name) {
                Some(existing) if existing.len() as u32 != spec.partitions => {
                    return Err(LogError::PartitionCountMismatch {
                        topic: spec.name.clone(),
                        existing: existing.len() as u32,
                        wanted: spec.partitions,
                    });
                }
                Some(_) => {}
                None => {
                    state.topics.insert(spec.name.clone(), vec![Vec::new(); spec.partitions as usize]);
                }
            }
        }
        Ok(())
    }

    fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        let state = self.lock();
        state.topics.get(topic).map(|p| p.len() as u32).ok_or_else(|| LogError::UnknownTopic(topic.to_owned()))
    }

    fn read(&self, topic: &str, partition: u32, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        let state = self.lock();
        let records = state.partition(topic, partition)?;
        Ok(records
            .iter()
            .enumerate()
            .skip(from as usize)
            .take(max)
            .map(|(offset, (key, value))| Record {
                topic: topic.to_owned(),
                partition,
                offset: offset as u64,
                key: key.clone(),
                value: value.clone(),
            })
            .collect())
    }

    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        Ok(self.lock().partition(topic, partition)?.len() as u64)
    }

    fn committed_position(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, LogError> {
        Ok(self.lock().positions.get(&(group.to_owned(), topic.to_owned(), partition)).copied())
    }

    fn append(&self, records: &[Placed]) -> Result<Vec<Appended>, LogError> {
        self.lock().append(records)
    }

    fn register_producer(&self, transactional_id: &str) -> Result<u64, LogError> {
        let mut state = self.lock();
        let epoch = state.epochs.entry(transactional_id.to_owned()).or_insert(0);
        *epoch += 1;
        Ok(*epoch)
    }

    fn commit_batch(&self, batch: &Batch) -> Result<(), LogError> {
        let mut state = self.lock();
        if state.epochs.get(&batch.transactional_id) != Some(&batch.epoch) {
            return Err(LogError::Fenced(batch.transactional_id.clone()));
        }
        for position in &batch.positions {
            state.partition(&position.topic, position.partition)?;
        }
        state.append(&batch.outputs)?;
        for position in &batch.positions {
            let key = (batch.group.clone(), position.topic.clone(), position.partition);
            state.positions.insert(key, position.next_offset);
        }
        Ok(())
    }
}
