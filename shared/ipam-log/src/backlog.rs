//! When a follower has read what the log held as it began. Read models and host agents replay
//! their topics from offset 0 and must not act on a state from the middle of that history (write
//! a DHCP server's configuration, answer a reader), so they note each partition's end offset when
//! they start and wait until their follower has passed it.
//!
//! Offsets may skip (Kafka's transaction markers take some, the last stable offset may lie past
//! the last record), so a partition whose position stays short of its noted end is also read once
//! the log holds no record between the two; that is asked only when the follower has gone quiet.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{EventLog, Follower, LogError, Position, TopicPartition};

/// The partitions whose history a follower has not read yet, with their end offsets at the start.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    behind: BTreeMap<TopicPartition, u64>,
}

impl Backlog {
    /// The end offset of every partition of `topics` now.
    pub fn at_start(log: &dyn EventLog, topics: &[String]) -> Result<Backlog, LogError> {
        let mut behind = BTreeMap::new();
        for topic in topics {
            for partition in 0..log.partition_count(topic)? {
                let end = log.end_offset(topic, partition)?;
                if end > 0 {
                    behind.insert(TopicPartition { topic: topic.clone(), partition }, end);
                }
            }
        }
        Ok(Backlog { behind })
    }

    /// Positions at offset 0 of every partition of `topics`, for a follower that replays them.
    pub fn from_zero(log: &dyn EventLog, topics: &[String]) -> Result<Vec<Position>, LogError> {
        let mut positions = Vec::new();
        for topic in topics {
            for partition in 0..log.partition_count(topic)? {
                positions.push(Position { topic: topic.clone(), partition, next_offset: 0 });
            }
        }
        Ok(positions)
    }

    /// True once every partition's history was read.
    pub fn is_read(&self) -> bool {
        self.behind.is_empty()
    }

    /// Drops the partitions `follower` has read up to their end at the start. `quiet` says the
    /// follower's last call returned nothing: only then is the log asked whether a partition short
    /// of its end has anything left below it. Answers [`Backlog::is_read`].
    pub fn update(&mut self, log: &dyn EventLog, follower: &dyn Follower, quiet: bool) -> Result<bool, LogError> {
        if self.behind.is_empty() {
            return Ok(true);
        }
        let positions: BTreeMap<TopicPartition, u64> = follower
            .positions()
            .into_iter()
            .map(|p| (TopicPartition { topic: p.topic, partition: p.partition }, p.next_offset))
            .collect();
        let mut read = Vec::new();
        for (tp, end) in &self.behind {
            let position = positions.get(tp).copied().unwrap_or(0);
            let done = position >= *end
                || (quiet
                    && log
                        .read(&tp.topic, tp.partition, position, 1, Duration::ZERO)?
                        .first()
                        .is_none_or(|record| record.offset >= *end));
            if done {
                read.push(tp.clone());
            }
        }
        for tp in read {
            self.behind.remove(&tp);
        }
        Ok(self.behind.is_empty())
    }
}
