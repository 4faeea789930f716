//! Every service answers `/health` and `/metrics` on its `--metrics-bind` address: `ipam up` on
//! the embedded log, and the split services (allocator, placement, a host agent, the API) as
//! processes of the real binary against the test broker. `/health` is 503 before a service is
//! ready and 200 once it is; the metrics are there and move (a rejection counts under its code);
//! the alert rules and the dashboard in `deploy/monitoring/` name only metrics the services
//! export, and pass `promtool`; `--log-format json` writes JSON lines; no service logs an ERROR
//! line in normal operation (an idle API on Kafka used to log librdkafka's partition EOFs).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ipam_log::OutRecord;
use serde_json::{Value, json};

use crate::api::{event, http};
use crate::recovery::Service;

/// How long a service may take to become ready on a loaded machine.
const WITHIN: Duration = Duration::from_secs(90);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The address of `service`'s health and metrics endpoint, from its log.
fn metrics_address(service: &mut Service) -> SocketAddr {
    service.address_after("Health and metrics on http://", WITHIN)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "text/plain", b"")
}

/// Waits until `/health` answers 200; answers its document.
fn wait_healthy(addr: SocketAddr, what: &str) -> Value {
    let deadline = Instant::now() + WITHIN;
    loop {
        let (status, body) = get(addr, "/health");
        if status == 200 {
            return serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: /health is not JSON ({e}): {body}"));
        }
        assert!(Instant::now() < deadline, "{what} never became healthy; last /health: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One scrape: the metric families (from `# TYPE`) and every sample by its series.
struct Exposition {
    text: String,
    families: BTreeSet<String>,
    samples: BTreeMap<String, f64>,
}

impl Exposition {
    fn value(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }
}

fn scrape(addr: SocketAddr) -> Exposition {
    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    let mut families = BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split_whitespace().next().unwrap().to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
            let value: f64 = value.parse().unwrap_or_else(|e| panic!("not a sample value ({e}): {line}"));
            samples.insert(series.to_owned(), value);
        }
    }
    Exposition { text, families, samples }
}

/// Waits until `series` in `addr`'s `/metrics` reaches `at_least`.
fn wait_for_sample(addr: SocketAddr, series: &str, at_least: f64) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let exposition = scrape(addr);
        if exposition.value(series).is_some_and(|value| value >= at_least) {
            return;
        }
        assert!(Instant::now() < deadline, "{series} never reached {at_least}:\n{}", exposition.text);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lines a service wrote to stderr so far (the test harness keeps a copy of each).
fn log_lines(service: &Service) -> Vec<String> {
    let path = std::env::temp_dir().join(format!("ipam-service-{}.log", service.id()));
    std::fs::read_to_string(&path).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn assert_no_error_lines(service: &Service, what: &str) {
    let errors: Vec<String> = log_lines(service)
        .into_iter()
        .filter(|line| line.contains(" ERROR ") || line.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(errors.is_empty(), "{what} logged ERROR lines in normal operation:\n{}", errors.join("\n"));
}

/// What every process's `/metrics` has, whatever it runs.
const EVERY_PROCESS: [&str; 6] = [
    "ipam_build_info",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

/// Every metric name the alert rules and the dashboard use (Prometheus' own `up` aside), with a
/// histogram's `_bucket`, `_sum` and `_count` series named by their family.
fn metrics_used_in_deploy_monitoring() -> BTreeSet<String> {
    let dir = root().join("deploy/monitoring");
    let mut names = BTreeSet::new();
    for file in ["ipam-alerts.yml", "ipam-dashboard.json"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(start) = rest.find(|c: char| c.is_ascii_lowercase()) {
            let preceded_by_word = rest[..start].chars().last().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let word: String = rest[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[start + word.len().max(1)..];
            if !preceded_by_word && (word.starts_with("ipam_") || word.starts_with("process_")) {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix).filter(|base| base.ends_with("_seconds")))
                    .unwrap_or(&word);
                names.insert(family.to_owned());
            }
        }
    }
    // The scan reads names out of JSON and YAML, not PromQL: be sure it found the usual ones.
    assert!(names.contains("ipam_rejections_total") && names.contains("ipam_dhcp_server_state"), "{names:?}");
    names
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool").args(args).current_dir(root().join("deploy/monitoring")).output();
    let output = output.unwrap_or_else(|e| {
        panic!("promtool ({e}) checks deploy/monitoring: install Debian's `prometheus` package (test.sh does)")
    });
    assert!(
        output.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_alert_rules_and_the_example_prometheus_configuration_pass_promtool_and_their_rule_tests() {
    promtool(&["check", "rules", "ipam-alerts.yml"]);
    promtool(&["test", "rules", "ipam-alerts.test.yml"]);
    promtool(&["check", "config", "prometheus.yml"]);
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("deploy/monitoring/ipam-dashboard.json")).unwrap())
            .unwrap();
    assert!(dashboard["panels"].as_array().is_some_and(|panels| panels.len() >= 10), "the dashboard has its panels");
}

#[test]
fn ipam_up_serves_health_and_metrics_that_move_and_name_every_metric_the_alerts_and_dashboard_use() {
    let dir = tempfile::tempdir().unwrap();
    let host = "00000000-0000-0000-0000-0000000000b1";
    let args: Vec<String> = [
        "--data-dir",
        &dir.path().join("data").display().to_string(),
        "--api-bind",
        "127.0.0.1:0",
        "--metrics-bind",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "up",
        "--host-agent",
        &format!("{host}={}", dir.path().join("files").display()),
    ]
    .map(str::to_owned)
    .to_vec();
    let mut up = Service::spawn(&args);
    let metrics = metrics_address(&mut up);
    let api = up.address_after("API listening on http://", WITHIN);

    let health = wait_healthy(metrics, "ipam up");
    let drivers = health["drivers"].as_array().unwrap();
    for name in ["allocator", "placement"] {
        let driver = drivers.iter().find(|d| d["driver"] == name).unwrap_or_else(|| panic!("{name} in {health}"));
        assert!(driver["partitions_owned"].as_u64() >= Some(1), "{health}");
    }
    assert_eq!(health["host_agents"][0]["host"], host, "{health}");
    assert_eq!(health["host_agents"][0]["caught_up"], true, "{health}");

    let before = scrape(metrics);
    for family in EVERY_PROCESS.iter().chain(&[
        "ipam_pipeline_processing_seconds",
        "ipam_driver_last_commit_age_seconds",
        "ipam_driver_partitions_owned",
        "ipam_rejections_total",
        "ipam_partition_lag",
        "ipam_dhcp_server_state",
        "ipam_dhcp_server_restarts_total",
        "ipam_host_heartbeat_timestamp_seconds",
    ]) {
        assert!(before.families.contains(*family), "{family} missing:\n{}", before.text);
    }
    let exhausted = "ipam_rejections_total{driver=\"allocator\",code=\"subnet_exhausted\"}";
    assert_eq!(before.value(exhausted), Some(0.0), "{}", before.text);
    assert!(
        before.value("ipam_partition_lag{driver=\"allocator\",topic=\"ipam.networks\",partition=\"7\"}").is_some(),
        "lag per partition:\n{}",
        before.text
    );
    let started = before.value("process_start_time_seconds").unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - started).abs() < 600.0, "the start time is a Unix time of the last minutes: {started} vs {now}");

    // The API's own /metrics gains the build and process metrics through the same code.
    let (status, api_text) = get(api, "/metrics");
    assert_eq!(status, 200, "{api_text}");
    for family in EVERY_PROCESS {
        assert!(api_text.contains(&format!("# TYPE {family} ")), "the API's /metrics lacks {family}:\n{api_text}");
    }

    // A /30 has one address for a vNIC: the second start is refused with subnet_exhausted.
    let network = "00000000-0000-0000-0000-00000000ab01";
    let subnet = "00000000-0000-0000-0000-00000000ab02";
    let start = |id: u32, vnic: &str, mac: &str| {
        event(
            id,
            "ipam.vnic.started.v1",
            json!({"vnic_id": vnic, "vm_id": "00000000-0000-0000-0000-00000000ab06", "network_id": network,
                   "subnet_id": subnet, "mac": mac}),
        )
    };
    let batch = json!([
        event(1, "ipam.network.upserted.v1", json!({"network_id": network, "name": "obs", "ipam_enabled": true})),
        event(
            2,
            "ipam.subnet.added.v1",
            json!({"network_id": network, "subnet_id": subnet, "cidr": "10.98.0.0/30", "gateway": "10.98.0.1"})
        ),
        start(3, "00000000-0000-0000-0000-00000000ab03", "52:54:00:ab:00:03"),
        start(4, "00000000-0000-0000-0000-00000000ab04", "52:54:00:ab:00:04"),
    ]);
    let (status, body) = http(api, "POST", "/v1/events", "application/json", batch.to_string().as_bytes());
    assert_eq!(status, 202, "{body}");
    wait_for_sample(metrics, exhausted, 1.0);
    // The API's per-network series name the network beside its id.
    let named = format!("ipam_reservations{{network=\"{network}\",network_name=\"obs\"}}");
    wait_for_sample(api, &named, 1.0);

    // A network the in-process host agent serves: placement gives it the DHCP server, the files
    // backend writes it, and the agent's report of it shows in the metrics as running.
    let served = "00000000-0000-0000-0000-00000000ab11";
    let batch = json!([
        event(11, "ipam.network.upserted.v1", json!({"network_id": served, "name": "served", "ipam_enabled": true})),
        event(
            12,
            "ipam.subnet.added.v1",
            json!({"network_id": served, "subnet_id": "00000000-0000-0000-0000-00000000ab12",
                   "cidr": "10.97.0.0/24", "gateway": "10.97.0.1"})
        ),
        event(
            13,
            "ipam.host.upserted.v1",
            json!({"host_id": host, "name": "obs-host", "status": "up",
                   "networks": [{"network_id": served, "interface": "br0"}]})
        ),
    ]);
    let (status, body) = http(api, "POST", "/v1/events", "application/json", batch.to_string().as_bytes());
    assert_eq!(status, 202, "{body}");
    wait_for_sample(
        metrics,
        &format!("ipam_dhcp_server_state{{host=\"{host}\",network=\"{served}\",state=\"running\"}}"),
        1.0,
    );
    let health = wait_healthy(metrics, "ipam up serving a network");
    assert_eq!(health["dhcp_servers"][0]["state"], "running", "{health}");
    let after = scrape(metrics);
    assert_eq!(
        after.value(&format!("ipam_dhcp_server_restarts_total{{host=\"{host}\",network=\"{served}\"}}")),
        Some(0.0),
        "{}",
        after.text
    );
    assert!(
        after.value("ipam_pipeline_events_processed_total{driver=\"allocator\"}")
            > before.value("ipam_pipeline_events_processed_total{driver=\"allocator\"}"),
        "{}",
        after.text
    );
    assert!(after.value("ipam_pipeline_processing_seconds_count{driver=\"allocator\"}") >= Some(4.0), "{}", after.text);

    // A network whose /30 a vNIC filled before the host's server came: the allocator refuses the
    // server its own address, and the server says so (degraded, naming the subnet and the reason)
    // instead of running, in the metrics and in the API's view of the network.
    let cramped = "00000000-0000-0000-0000-00000000ab21";
    let batch = json!([
        event(21, "ipam.network.upserted.v1", json!({"network_id": cramped, "name": "cramped", "ipam_enabled": true})),
        event(
            22,
            "ipam.subnet.added.v1",
            json!({"network_id": cramped, "subnet_id": "00000000-0000-0000-0000-00000000ab22",
                   "cidr": "10.96.0.0/30", "gateway": "10.96.0.1"})
        ),
        event(
            23,
            "ipam.vnic.started.v1",
            json!({"vnic_id": "00000000-0000-0000-0000-00000000ab23", "vm_id": "00000000-0000-0000-0000-00000000ab24",
                   "network_id": cramped, "subnet_id": "00000000-0000-0000-0000-00000000ab22",
                   "mac": "52:54:00:ab:00:23"})
        ),
        event(
            24,
            "ipam.host.upserted.v1",
            json!({"host_id": host, "name": "obs-host", "status": "up",
                   "networks": [{"network_id": served, "interface": "br0"}, {"network_id": cramped, "interface": "br1"}]})
        ),
    ]);
    let (status, body) = http(api, "POST", "/v1/events", "application/json", batch.to_string().as_bytes());
    assert_eq!(status, 202, "{body}");
    wait_for_sample(
        metrics,
        &format!("ipam_dhcp_server_state{{host=\"{host}\",network=\"{cramped}\",state=\"degraded\"}}"),
        1.0,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let view = loop {
        let (status, text) = get(api, &format!("/v1/networks/{cramped}"));
        assert_eq!(status, 200, "{text}");
        let view: Value = serde_json::from_str(&text).unwrap();
        if view["servers"][0]["status"] == "degraded" {
            break view;
        }
        assert!(Instant::now() < deadline, "the API never showed the server degraded: {view}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let detail = view["servers"][0]["status_detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("no address of its own in 10.96.0.0/30 (subnet_exhausted"),
        "the status names the subnet and the allocator's reason: {view}"
    );

    // Every metric the alerts and the dashboard use is one this deployment exports.
    let after = scrape(metrics);
    let exported: BTreeSet<String> = after.families.iter().cloned().chain(scrape(api).families).collect();
    let missing: Vec<String> = metrics_used_in_deploy_monitoring().difference(&exported).cloned().collect();
    assert!(missing.is_empty(), "deploy/monitoring uses metrics no service exports: {missing:?}");

    // --log-format json: every line is one JSON object with a level and a message.
    let lines = log_lines(&up);
    assert!(lines.len() > 5, "{lines:?}");
    for line in &lines {
        let object: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(object["level"].is_string() && object["message"].is_string(), "{line}");
    }
    assert_no_error_lines(&up, "ipam up");
    up.terminate();
}

#[test]
fn the_split_services_on_kafka_each_serve_health_and_metrics_and_are_unhealthy_until_ready() {
    let bootstrap = ipam_tests::kafka_bootstrap();
    let prefix = ipam_tests::unique_prefix("obs");
    let dir = tempfile::tempdir().unwrap();
    let spawn =
        |instance: &str, command: &[&str]| Service::spawn_on_kafka(&bootstrap, &prefix, dir.path(), instance, command);

    // A host agent started before the deciding services: its topics do not exist yet, so it
    // cannot have caught up with the log, and says so.
    let host = "00000000-0000-0000-0000-0000000000c1";
    let files = dir.path().join("files").display().to_string();
    let mut agent = spawn("agent", &["host-agent", "--host-id", host, "--dhcp-backend", "files", "--dhcp-dir", &files]);
    let agent_metrics = metrics_address(&mut agent);
    let (status, body) = get(agent_metrics, "/health");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("catching up with the log"), "{body}");

    let mut allocator = spawn("allocator", &["allocator"]);
    let allocator_metrics = metrics_address(&mut allocator);
    let mut placement = spawn("placement", &["placement"]);
    let placement_metrics = metrics_address(&mut placement);
    let mut api = spawn("api", &["api"]);
    let api_address = api.address_after("API listening on http://", WITHIN);

    let health = wait_healthy(allocator_metrics, "the allocator");
    assert_eq!(health["drivers"][0]["partitions_owned"], 2, "{health}");
    wait_healthy(placement_metrics, "placement");
    wait_healthy(agent_metrics, "the host agent");
    let (status, body) = get(api_address, "/health");
    assert!(status == 200 || status == 503, "the API answers its own /health: {status} {body}");

    let allocator_scrape = scrape(allocator_metrics);
    let lag = format!("ipam_partition_lag{{driver=\"allocator\",topic=\"{prefix}ipam.networks\",partition=\"1\"}}");
    assert!(allocator_scrape.value(&lag).is_some(), "{lag} in:\n{}", allocator_scrape.text);
    assert_eq!(
        allocator_scrape.value("ipam_driver_partitions_owned{driver=\"placement\"}"),
        None,
        "a process shows the gauges of the drivers it runs only"
    );
    let agent_scrape = scrape(agent_metrics);
    for family in EVERY_PROCESS.iter().chain(&["ipam_host_agent_caught_up", "ipam_host_heartbeat_timestamp_seconds"]) {
        assert!(agent_scrape.families.contains(*family), "{family} missing:\n{}", agent_scrape.text);
    }
    assert_eq!(agent_scrape.value(&format!("ipam_host_agent_caught_up{{host=\"{host}\"}}")), Some(1.0));

    // A vNIC started on a network nobody upserted, written straight to the log: the allocator
    // refuses it, and counts the refusal under its code.
    let log = ipam_tests::BackendSpec::Kafka(bootstrap.clone()).open().unwrap();
    let network = "00000000-0000-0000-0000-00000000cc01";
    let request = event(
        7,
        "ipam.vnic.started.v1",
        json!({"vnic_id": "00000000-0000-0000-0000-00000000cc02", "vm_id": "00000000-0000-0000-0000-00000000cc03",
               "network_id": network, "subnet_id": "00000000-0000-0000-0000-00000000cc04", "mac": "52:54:00:cc:00:02"}),
    );
    // And one with a multicast MAC, refused as it is read, before any state machine sees it.
    let bad_mac = event(
        8,
        "ipam.vnic.started.v1",
        json!({"vnic_id": "00000000-0000-0000-0000-00000000cc05", "vm_id": "00000000-0000-0000-0000-00000000cc03",
               "network_id": network, "subnet_id": "00000000-0000-0000-0000-00000000cc04", "mac": "01:00:5e:00:00:01"}),
    );
    let records: Vec<OutRecord> = [request, bad_mac]
        .iter()
        .map(|request| OutRecord {
            topic: format!("{prefix}ipam.networks"),
            key: network.to_owned(),
            value: request.to_string().into_bytes(),
        })
        .collect();
    log.append(&records).unwrap();
    wait_for_sample(allocator_metrics, "ipam_rejections_total{driver=\"allocator\",code=\"unknown_network\"}", 1.0);
    wait_for_sample(allocator_metrics, "ipam_rejections_total{driver=\"allocator\",code=\"invalid_mac\"}", 1.0);

    // By now the API has idled on Kafka for a while: nobody logs an error for normal conditions.
    for (service, what) in
        [(&api, "the API"), (&allocator, "the allocator"), (&placement, "placement"), (&agent, "the host agent")]
    {
        assert_no_error_lines(service, what);
    }
    for mut service in [api, agent, placement, allocator] {
        service.terminate();
    }
}
