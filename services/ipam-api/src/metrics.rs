//! `GET /metrics` in the Prometheus text format (version 0.0.4), written by hand: a handful of
//! series does not justify a metrics crate.
//!
//! Counters and the request histogram live here; gauges (consumer lag, subnet utilization,
//! reservations) are computed when scraped, from the log and the read model.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::lease_state::{LEASE_LATENCY_BUCKETS, LatencyHistogram};

/// Upper bounds of the request-duration buckets, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Observations at or below each bound of [`BUCKETS`] (not cumulative; summed when written).
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

/// The API's own counters.
#[derive(Debug, Default)]
pub struct Metrics {
    appended: AtomicU64,
    /// Keyed by (method, route pattern, status).
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
}

impl Metrics {
    pub fn appended(&self, events: u64) {
        self.appended.fetch_add(events, Ordering::Relaxed);
    }

    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let histogram = requests.entry((method.to_owned(), route.to_owned(), status)).or_default();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            histogram.counts[bucket] += 1;
        }
        histogram.count += 1;
        histogram.sum_seconds += seconds;
    }
}

/// What a scrape reports besides the counters in [`Metrics`].
#[derive(Debug, Default)]
pub struct Gauges {
    /// Event streams open now.
    pub streams_open: usize,
    pub processed: u64,
    /// (group, topic, records behind).
    pub consumer_lag: Vec<(String, String, u64)>,
    /// (topic, records the read model has not read yet).
    pub read_model_lag: Vec<(String, u64)>,
    /// (network, subnet, used share).
    pub utilization: Vec<(String, String, f64)>,
    /// (network, reservations).
    pub reservations: Vec<(String, usize)>,
    /// The name of each named network: a `network_name` label beside its id.
    pub network_names: BTreeMap<String, String>,
    /// Reservation → first lease, in seconds of the log's time.
    pub lease_latency: LatencyHistogram,
    /// (network, vNICs reported unleased that still hold no lease).
    pub unleased: Vec<(String, usize)>,
    /// (network, kind, lease conflicts reported).
    pub lease_conflicts: Vec<(String, String, u64)>,
    /// (network, state, vNICs in it).
    pub vnic_states: Vec<(String, String, usize)>,
    /// (network, subnet, allocation rate per hour, seconds until full when growing).
    pub forecasts: Vec<(String, String, f64, Option<u64>)>,
}

/// A label value with Prometheus' escapes.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition.
pub fn render(metrics: &Metrics, gauges: &Gauges) -> String {
    let mut out = String::new();
    header(&mut out, "ipam_events_processed_total", "counter", "Events the API's read model folded from the log.");
    let _ = writeln!(out, "ipam_events_processed_total {}", gauges.processed);

    header(&mut out, "ipam_events_appended_total", "counter", "Events accepted by POST /v1/events and appended.");
    let _ = writeln!(out, "ipam_events_appended_total {}", metrics.appended.load(Ordering::Relaxed));

    header(&mut out, "ipam_api_streams_open", "gauge", "Event streams (GET /v1/stream) open now.");
    let _ = writeln!(out, "ipam_api_streams_open {}", gauges.streams_open);

    header(&mut out, "ipam_consumer_lag", "gauge", "Records of a topic a consumer group has not committed yet.");
    for (group, topic, lag) in &gauges.consumer_lag {
        let _ = writeln!(out, "ipam_consumer_lag{{group=\"{}\",topic=\"{}\"}} {lag}", escape(group), escape(topic));
    }

    header(&mut out, "ipam_read_model_lag", "gauge", "Records of a topic the API's read model has not read yet.");
    for (topic, lag) in &gauges.read_model_lag {
        let _ = writeln!(out, "ipam_read_model_lag{{topic=\"{}\"}} {lag}", escape(topic));
    }

    // The network's name beside its id, when the network has one.
    let network_labels = |network: &str| match gauges.network_names.get(network) {
        Some(name) => format!("network=\"{}\",network_name=\"{}\"", escape(network), escape(name)),
        None => format!("network=\"{}\"", escape(network)),
    };
    header(&mut out, "ipam_subnet_utilization", "gauge", "Share of a subnet in use: used / (used + free).");
    for (network, subnet, ratio) in &gauges.utilization {
        let _ = writeln!(
            out,
            "ipam_subnet_utilization{{{},subnet=\"{}\"}} {ratio}",
            network_labels(network),
            escape(subnet)
        );
    }

    header(&mut out, "ipam_reservations", "gauge", "Reservations held, per network.");
    for (network, count) in &gauges.reservations {
        let _ = writeln!(out, "ipam_reservations{{{}}} {count}", network_labels(network));
    }

    render_lease_truth(&mut out, gauges, &network_labels);

    header(&mut out, "ipam_request_duration_seconds", "histogram", "Time to answer an API request, until the headers.");
    let requests = metrics.requests.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for ((method, route, status), histogram) in &requests {
        let labels = format!("method=\"{}\",route=\"{}\",status=\"{status}\"", escape(method), escape(route));
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(histogram.counts) {
            cumulative += count;
            let _ = writeln!(out, "ipam_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "ipam_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", histogram.count);
        let _ = writeln!(out, "ipam_request_duration_seconds_sum{{{labels}}} {}", histogram.sum_seconds);
        let _ = writeln!(out, "ipam_request_duration_seconds_count{{{labels}}} {}", histogram.count);
    }
    out
}

/// The series of issue 14: the vNICs' lease states and the subnets' forecasts.
fn render_lease_truth(out: &mut String, gauges: &Gauges, network_labels: &dyn Fn(&str) -> String) {
    header(
        out,
        "ipam_vnic_lease_seconds",
        "histogram",
        "Time from a vNIC's reservation to its guest's first lease of it (a dual-stack vNIC's two reservations each once).",
    );
    let mut cumulative = 0;
    for (bound, count) in LEASE_LATENCY_BUCKETS.iter().zip(gauges.lease_latency.counts) {
        cumulative += count;
        let _ = writeln!(out, "ipam_vnic_lease_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "ipam_vnic_lease_seconds_bucket{{le=\"+Inf\"}} {}", gauges.lease_latency.count);
    let _ = writeln!(out, "ipam_vnic_lease_seconds_sum {}", gauges.lease_latency.sum_seconds);
    let _ = writeln!(out, "ipam_vnic_lease_seconds_count {}", gauges.lease_latency.count);

    header(
        out,
        "ipam_vnics_unleased",
        "gauge",
        "vNIC reservations reported unleased that still hold no lease, per network (a dual-stack vNIC has two).",
    );
    for (network, count) in &gauges.unleased {
        let _ = writeln!(out, "ipam_vnics_unleased{{{}}} {count}", network_labels(network));
    }

    header(
        out,
        "ipam_vnics",
        "gauge",
        "vNIC reservations, per network and state (reserved, served, leased); a dual-stack vNIC has two.",
    );
    for (network, state, count) in &gauges.vnic_states {
        let _ = writeln!(out, "ipam_vnics{{{},state=\"{}\"}} {count}", network_labels(network), escape(state));
    }

    header(
        out,
        "ipam_lease_conflicts_total",
        "counter",
        "Leases that disagree with the reservations, per network and kind.",
    );
    for (network, kind, count) in &gauges.lease_conflicts {
        let _ = writeln!(
            out,
            "ipam_lease_conflicts_total{{{},kind=\"{}\"}} {count}",
            network_labels(network),
            escape(kind)
        );
    }

    header(
        out,
        "ipam_subnet_allocation_rate_per_hour",
        "gauge",
        "Reservations less releases per hour, over the last hour of the log.",
    );
    for (network, subnet, rate, _) in &gauges.forecasts {
        let _ = writeln!(
            out,
            "ipam_subnet_allocation_rate_per_hour{{{},subnet=\"{}\"}} {rate}",
            network_labels(network),
            escape(subnet)
        );
    }
    header(
        out,
        "ipam_subnet_full_in_seconds",
        "gauge",
        "Seconds until a growing subnet's pools are full at its allocation rate.",
    );
    for (network, subnet, _, full_in) in &gauges.forecasts {
        if let Some(seconds) = full_in {
            let _ = writeln!(
                out,
                "ipam_subnet_full_in_seconds{{{},subnet=\"{}\"}} {seconds}",
                network_labels(network),
                escape(subnet)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        metrics.observe("GET", "/health", 200, Duration::from_micros(100));
        metrics.observe("GET", "/health", 200, Duration::from_millis(20));
        let text = render(&metrics, &Gauges::default());
        let labels = "method=\"GET\",route=\"/health\",status=\"200\"";
        assert!(
            text.contains(&format!("ipam_request_duration_seconds_bucket{{{labels},le=\"0.0005\"}} 1\n")),
            "{text}"
        );
        assert!(text.contains(&format!("ipam_request_duration_seconds_bucket{{{labels},le=\"0.025\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("ipam_request_duration_seconds_count{{{labels}}} 2\n")), "{text}");
    }

    #[test]
    fn a_named_network_has_its_name_beside_its_id() {
        let gauges = Gauges {
            utilization: vec![("n1".to_owned(), "s1".to_owned(), 0.5)],
            reservations: vec![("n1".to_owned(), 3), ("n2".to_owned(), 1)],
            network_names: BTreeMap::from([("n1".to_owned(), "prod \"a\"".to_owned())]),
            ..Gauges::default()
        };
        let text = render(&Metrics::default(), &gauges);
        let named = "network=\"n1\",network_name=\"prod \\\"a\\\"\"";
        assert!(text.contains(&format!("ipam_subnet_utilization{{{named},subnet=\"s1\"}} 0.5\n")), "{text}");
        assert!(text.contains(&format!("ipam_reservations{{{named}}} 3\n")), "{text}");
        assert!(text.contains("ipam_reservations{network=\"n2\"} 1\n"), "an unnamed network has its id only: {text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
