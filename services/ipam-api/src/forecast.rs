//! Per subnet, the allocation rate over the log and a forecast of when the subnet's pools are full
//! ("full in about T"), for the subnet view and the metrics.
//!
//! The rate is the net number of reservations made (reservations less releases) per hour over the
//! last [`WINDOW_S`] of the log's time, the time of the latest record the read model folded (its
//! clock: reservations, releases and placement's clock ticks): an idle log does not age its rate,
//! and the same log always gives the same answer. A subnet younger than the window is measured
//! over its life (at least [`MIN_SPAN_S`], so that a burst right after activation does not read as
//! an absurd rate). Changes are counted in one-minute buckets, so memory stays bounded by the
//! window, whatever the rate.
//!
//! The forecast is `free / rate`: absent when the subnet is not growing (rate 0 or negative), and
//! when nothing is free it is 0.

use std::collections::{BTreeMap, VecDeque};

use ipam_core::{NetworkId, SubnetId, Timestamp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The window the rate is measured over, in seconds of the log's time.
pub const WINDOW_S: i64 = 3600;
/// The shortest span a rate is measured over, in seconds.
pub const MIN_SPAN_S: i64 = 60;
const BUCKET_S: i64 = 60;

/// A subnet's allocation rate and forecast.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SubnetForecast {
    /// Reservations made less releases, per hour, over the last hour of the log (or the subnet's
    /// life, if shorter).
    pub allocation_rate_per_hour: f64,
    /// Seconds until the pools are full at that rate; null when the subnet is not growing.
    pub full_in_seconds: Option<u64>,
    /// The same, for people: "about 3 hours"; null when the subnet is not growing.
    pub full_in: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Changes {
    /// (minute since the epoch, net change in that minute), oldest first.
    buckets: VecDeque<(i64, i64)>,
}

/// See the module documentation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Forecasts {
    subnets: BTreeMap<(NetworkId, SubnetId), Changes>,
    /// The log's time: the latest record time folded.
    now: Option<Timestamp>,
}

impl Forecasts {
    /// The log's clock: a folded record's time.
    pub fn saw(&mut self, time: Timestamp) {
        if self.now.is_none_or(|now| now < time) {
            self.now = Some(time);
        }
    }

    /// One address reserved (`+1`) or released (`-1`) in the subnet at `time`.
    pub fn changed(&mut self, network_id: NetworkId, subnet_id: SubnetId, time: Timestamp, delta: i64) {
        self.saw(time);
        let minute = time.unix_ms().div_euclid(1000 * BUCKET_S);
        let changes = self.subnets.entry((network_id, subnet_id)).or_default();
        match changes.buckets.iter_mut().rev().find(|(m, _)| *m == minute) {
            Some((_, net)) => *net += delta,
            None => {
                // Records of other partitions may be read a little out of time order.
                let at = changes.buckets.partition_point(|(m, _)| *m < minute);
                changes.buckets.insert(at, (minute, delta));
            }
        }
        let oldest_kept =
            self.now.map_or(i64::MIN, |now| now.unix_ms().div_euclid(1000 * BUCKET_S)) - WINDOW_S / BUCKET_S;
        while changes.buckets.front().is_some_and(|(m, _)| *m < oldest_kept) {
            changes.buckets.pop_front();
        }
    }

    /// The subnet is gone: its changes go too.
    pub fn removed(&mut self, network_id: NetworkId, subnet_id: SubnetId) {
        self.subnets.remove(&(network_id, subnet_id));
    }

    /// The subnet's rate and forecast, given when it was activated and how many addresses its
    /// pools still have free.
    pub fn forecast(
        &self,
        network_id: NetworkId,
        subnet_id: SubnetId,
        activated: Timestamp,
        free: u128,
    ) -> SubnetForecast {
        let now_ms = self.now.map_or(activated.unix_ms(), |now| now.unix_ms());
        let window_start_ms = now_ms - WINDOW_S * 1000;
        let net: i64 = self
            .subnets
            .get(&(network_id, subnet_id))
            .map(|changes| {
                changes
                    .buckets
                    .iter()
                    .filter(|(m, _)| (m + 1) * BUCKET_S * 1000 > window_start_ms)
                    .map(|(_, n)| n)
                    .sum()
            })
            .unwrap_or(0);
        let span_s = ((now_ms - activated.unix_ms().max(window_start_ms)) / 1000).clamp(MIN_SPAN_S, WINDOW_S);
        let rate_per_hour = net as f64 * 3600.0 / span_s as f64;
        let full_in_seconds = (rate_per_hour > 0.0).then(|| {
            let seconds = free as f64 / rate_per_hour * 3600.0;
            if seconds >= u64::MAX as f64 { u64::MAX } else { seconds.round() as u64 }
        });
        SubnetForecast { allocation_rate_per_hour: rate_per_hour, full_in_seconds, full_in: full_in_seconds.map(about) }
    }
}

/// A duration for people, rounded to its largest unit: "about 40 minutes", "about 3 days".
pub fn about(seconds: u64) -> String {
    const UNITS: [(u64, &str); 5] =
        [(365 * 86_400, "year"), (86_400, "day"), (3600, "hour"), (60, "minute"), (1, "second")];
    if seconds == 0 {
        return "full now".to_owned();
    }
    let (size, name) = UNITS.iter().find(|(size, _)| seconds >= *size).copied().unwrap_or((1, "second"));
    // Saturating: an IPv6 /64 filling slowly is "full in" u64::MAX seconds, which must not overflow.
    let count = seconds.saturating_add(size / 2) / size;
    if count == 1 { format!("about 1 {name}") } else { format!("about {count} {name}s") }
}
