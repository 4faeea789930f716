//! Placement's clock: appends `ipam.clock.ticked.v1` to `ipam.hosts` at a fixed interval, so that
//! time is part of the log and replay sees the same instants the live run did. This is the only
//! place the system reads the wall clock for a decision.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipam_core::event::{CLOCK_KEY, ClockTicked};
use ipam_core::{Envelope, Event, EventId, Timestamp, Topic};
use ipam_log::{EventLog, OutRecord};
use uuid::Uuid;

use crate::topics::Topics;

/// The UUIDv5 namespace of tick ids.
const TICK_NAMESPACE: Uuid = Uuid::from_u128(0x7c1e_55a2_8d3b_4f0e_a6d4_2b91_0c3e_77f1);

/// Appends a tick every `interval` until `stop` is set.
pub fn run(log: Arc<dyn EventLog>, topics: Topics, instance: &str, interval: Duration, stop: &AtomicBool) {
    let topic = topics.name(Topic::Hosts);
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
        let now = Timestamp::from_unix_ms(now_ms);
        let tick = Envelope {
            id: EventId(Uuid::new_v5(&TICK_NAMESPACE, format!("{instance}/{now_ms}").as_bytes())),
            source: format!("ipam/clock/{instance}"),
            time: now,
            subject: Some(CLOCK_KEY.to_owned()),
            event: Event::ClockTicked(ClockTicked { now }),
        };
        let record = OutRecord { topic: topic.clone(), key: CLOCK_KEY.to_owned(), value: tick.to_bytes() };
        if let Err(error) = log.append(&[record]) {
            tracing::warn!(error = %error, "Could not append a clock tick; retrying at the next one.");
        }
    }
}
