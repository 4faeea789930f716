//! Pipeline metrics of the drivers in this process: records processed and the time each took from
//! being polled to its step being handed to the log, as a Prometheus histogram. Process-wide
//! statics, so an API in the same process (`ipam up`) can expose them without being handed a
//! registry.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 10] = [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25];

/// One driver's counters.
#[derive(Debug)]
pub struct DriverMetrics {
    processed: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    sum_ns: AtomicU64,
}

impl DriverMetrics {
    const fn new() -> DriverMetrics {
        DriverMetrics {
            processed: AtomicU64::new(0),
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one input record processed in `elapsed`.
    pub fn observe(&self, elapsed: Duration) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub static ALLOCATOR: DriverMetrics = DriverMetrics::new();
pub static PLACEMENT: DriverMetrics = DriverMetrics::new();

/// The driver metrics of `name` (`allocator` or `placement`).
pub fn for_driver(name: &str) -> &'static DriverMetrics {
    if name == "placement" { &PLACEMENT } else { &ALLOCATOR }
}

/// The Prometheus text of every driver's metrics.
pub fn render() -> String {
    let mut out = String::new();
    out.push_str("# HELP ipam_pipeline_events_processed_total Input records a driver of this process processed.\n");
    out.push_str("# TYPE ipam_pipeline_events_processed_total counter\n");
    for (name, metrics) in [("allocator", &ALLOCATOR), ("placement", &PLACEMENT)] {
        let _ = writeln!(
            out,
            "ipam_pipeline_events_processed_total{{driver=\"{name}\"}} {}",
            metrics.processed.load(Ordering::Relaxed)
        );
    }
    out.push_str(
        "# HELP ipam_pipeline_processing_seconds Time from polling an input record to handing its step to the log.\n",
    );
    out.push_str("# TYPE ipam_pipeline_processing_seconds histogram\n");
    for (name, metrics) in [("allocator", &ALLOCATOR), ("placement", &PLACEMENT)] {
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&metrics.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "ipam_pipeline_processing_seconds_bucket{{driver=\"{name}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = metrics.processed.load(Ordering::Relaxed);
        let _ = writeln!(out, "ipam_pipeline_processing_seconds_bucket{{driver=\"{name}\",le=\"+Inf\"}} {count}");
        let sum = metrics.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "ipam_pipeline_processing_seconds_sum{{driver=\"{name}\"}} {sum}");
        let _ = writeln!(out, "ipam_pipeline_processing_seconds_count{{driver=\"{name}\"}} {count}");
    }
    out
}
