//! The clock: appends `ipam.clock.ticked.v1` to `ipam.hosts` (placement's time) and one
//! `ipam.clock.partition_ticked.v1` to each partition of `ipam.networks` (each network's allocator's
//! time: quarantines, unleased vNICs) at a fixed interval, so that time is part of the log and
//! replay sees the same instants the live run did. This is the only place the system reads the wall
//! clock for a decision.
//!
//! A partition tick must land on its partition, but the log places records by key: the clock picks,
//! once, for each partition a key that the partitioner ([`ipam_log::partition::for_key`], the one
//! every backend and Kafka's Java clients use) maps there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipam_core::event::{CLOCK_KEY, ClockTicked, PartitionClockTicked};
use ipam_core::{Envelope, Event, EventId, Timestamp, Topic};
use ipam_log::{EventLog, OutRecord};
use uuid::Uuid;

use crate::topics::Topics;

/// The UUIDv5 namespace of tick ids.
const TICK_NAMESPACE: Uuid = Uuid::from_u128(0x7c1e_55a2_8d3b_4f0e_a6d4_2b91_0c3e_77f1);

/// For each partition of a topic of `partitions` partitions, a key the partitioner maps to it:
/// `placement-clock/<n>` for the first `n` that lands there.
pub fn partition_keys(partitions: u32) -> Vec<String> {
    let mut keys: Vec<Option<String>> = vec![None; partitions as usize];
    let mut missing = partitions;
    // murmur2 spreads consecutive keys evenly, so this ends after about partitions * ln(partitions)
    // keys; the bound only guards against a partitioner that never reaches some partition.
    for n in 0..u64::from(partitions).saturating_mul(1000) {
        if missing == 0 {
            break;
        }
        let key = format!("{CLOCK_KEY}/{n}");
        let slot = &mut keys[ipam_log::partition::for_key(key.as_bytes(), partitions) as usize];
        if slot.is_none() {
            *slot = Some(key);
            missing -= 1;
        }
    }
    keys.into_iter()
        .enumerate()
        .map(|(partition, key)| key.unwrap_or_else(|| panic!("no clock key reaches partition {partition}")))
        .collect()
}

/// The records of one tick at `now_ms`: placement's, then one per partition of `ipam.networks`.
pub fn tick_records(topics: &Topics, instance: &str, keys: &[String], now_ms: i64) -> Vec<OutRecord> {
    let now = Timestamp::from_unix_ms(now_ms);
    let envelope = |id: String, key: &str, event: Event| Envelope {
        id: EventId(Uuid::new_v5(&TICK_NAMESPACE, id.as_bytes())),
        source: format!("ipam/clock/{instance}"),
        time: now,
        subject: Some(key.to_owned()),
        event,
    };
    let placement = envelope(format!("{instance}/{now_ms}"), CLOCK_KEY, Event::ClockTicked(ClockTicked { now }));
    let mut records =
        vec![OutRecord { topic: topics.name(Topic::Hosts), key: CLOCK_KEY.to_owned(), value: placement.to_bytes() }];
    for (partition, key) in keys.iter().enumerate() {
        let tick = PartitionClockTicked { now, partition: partition as u32 };
        let envelope = envelope(format!("{instance}/{now_ms}/{partition}"), key, Event::PartitionClockTicked(tick));
        records.push(OutRecord { topic: topics.name(Topic::Networks), key: key.clone(), value: envelope.to_bytes() });
    }
    records
}

/// Appends a tick every `interval` until `stop` is set.
pub fn run(log: Arc<dyn EventLog>, topics: Topics, instance: &str, interval: Duration, stop: &AtomicBool) {
    let keys = partition_keys(topics.partitions);
    let mut next_tick = Instant::now() + interval;
    while !stop.load(Ordering::SeqCst) {
        // Sleep in short slices, so that a stop is noticed within 100 ms whatever the interval.
        let now = Instant::now();
        if now < next_tick {
            std::thread::sleep((next_tick - now).min(Duration::from_millis(100)));
            continue;
        }
        next_tick = now + interval;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        if let Err(error) = log.append(&tick_records(&topics, instance, &keys, now_ms)) {
            tracing::warn!(error = %error, "Could not append a clock tick; retrying at the next one.");
        }
    }
}

#[cfg(test)]
mod tests {
    use ipam_log::MemoryLog;

    use super::*;

    #[test]
    fn each_partition_gets_a_key_the_partitioner_maps_to_it() {
        for partitions in [1, 2, 3, 8, 16, 64] {
            let keys = partition_keys(partitions);
            assert_eq!(keys.len(), partitions as usize);
            for (partition, key) in keys.iter().enumerate() {
                assert_eq!(ipam_log::partition::for_key(key.as_bytes(), partitions), partition as u32, "{key}");
            }
        }
    }

    #[test]
    fn a_tick_lands_on_every_partition_of_the_networks_topic_naming_it() {
        let topics = Topics::new("t-", 4);
        let log = MemoryLog::new();
        log.create_topics(&topics.specs()).unwrap();
        log.append(&tick_records(&topics, "ipam-0", &partition_keys(4), 5_000)).unwrap();
        for partition in 0..4 {
            let records = log.read(&topics.name(Topic::Networks), partition, 0, 10, Duration::ZERO).unwrap();
            assert_eq!(records.len(), 1, "partition {partition}");
            let envelope = Envelope::decode(&records[0].value).unwrap();
            let expected = PartitionClockTicked { now: Timestamp::from_unix_ms(5_000), partition };
            assert_eq!(envelope.event, Event::PartitionClockTicked(expected));
        }
        let placement = log.read(&topics.name(Topic::Hosts), 0, 0, 10, Duration::ZERO).unwrap();
        assert_eq!(placement.len(), 1);
    }
}
