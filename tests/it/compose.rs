//! The Docker packaging: `docker-compose.yml` runs the whole system on one Kafka broker, from the
//! one image that `Dockerfile` builds. These tests read both files (and `.dockerignore`); when the
//! docker client has Compose, `docker compose config -q` also checks the file as Compose reads it.
//!
//! No Docker engine is reachable where the tests run, so one test runs the file's topology as
//! local processes of the real binary: each ipam service with the command and environment written
//! in the file, only rewritten where a container and a test machine must differ (see
//! [`Localized`]), then each service's own health check, as written, and a vNIC start through the
//! API.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::api::{event, http};
use crate::recovery::Service;

/// The image every IPAM service runs, built from the repository's Dockerfile.
const IMAGE: &str = "ipam:local";
const KAFKA: &str = "kafka";
/// The services the file must have, with the `ipam` subcommand each runs.
const EXPECTED: &[(&str, &str)] = &[
    ("allocator-a", "allocator"),
    ("allocator-b", "allocator"),
    ("placement", "placement"),
    ("api", "api"),
    ("host-agent", "host-agent"),
];
/// The capabilities a host agent's dnsmasq needs: a server's address on the bridge, DHCP's raw
/// packets, port 67.
const HOST_AGENT_CAPABILITIES: &[&str] = &["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"];
/// Services allowed to run without a health check, each with the reason. None today.
const WITHOUT_HEALTHCHECK: &[(&str, &str)] = &[];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(name: &str) -> String {
    let path = root().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn compose() -> Value {
    serde_norway::from_str(&read("docker-compose.yml")).unwrap_or_else(|e| panic!("docker-compose.yml: {e}"))
}

fn services(compose: &Value) -> &Map<String, Value> {
    compose["services"].as_object().expect("docker-compose.yml has a `services` mapping")
}

/// Every service but Kafka runs the `ipam` binary.
fn ipam_services(compose: &Value) -> Vec<(&str, &Value)> {
    services(compose).iter().filter(|(name, _)| *name != KAFKA).map(|(name, s)| (name.as_str(), s)).collect()
}

/// A scalar as Compose would pass it on (numbers and booleans become strings).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The arguments given to the entrypoint (`ipam`): the list form, or the string form split on
/// whitespace.
fn args(service: &Value) -> Vec<String> {
    match &service["command"] {
        Value::Array(items) => items.iter().map(|a| scalar(a).expect("command arguments are scalars")).collect(),
        Value::String(line) => line.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// The environment, from the mapping form or the `KEY=VALUE` list form.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), scalar(v).unwrap_or_default())).collect(),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let item = item.as_str().expect("environment entries are strings");
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The `ipam` subcommand: the first argument that is neither a flag nor a flag's value (every
/// flag of `ipam` takes a value).
fn subcommand(service: &Value) -> Option<String> {
    let args = args(service);
    let mut i = 0;
    while i < args.len() {
        if !args[i].starts_with("--") {
            return Some(args[i].clone());
        }
        i += if args[i].contains('=') { 1 } else { 2 };
    }
    None
}

/// A setting as the binary sees it: the flag (`--flag value` or `--flag=value`) wins over the
/// `IPAM_*` variable.
fn setting(service: &Value, flag: &str, variable: &str) -> Option<String> {
    let args = args(service);
    for (i, arg) in args.iter().enumerate() {
        if arg == flag {
            return args.get(i + 1).cloned();
        }
        if let Some(value) = arg.strip_prefix(flag).and_then(|rest| rest.strip_prefix('=')) {
            return Some(value.to_owned());
        }
    }
    environment(service).get(variable).cloned()
}

/// The service's volumes as (source, target) pairs, from the short or the long syntax.
fn volumes(service: &Value) -> Vec<(String, String)> {
    let Some(items) = service["volumes"].as_array() else { return Vec::new() };
    items
        .iter()
        .map(|item| match item {
            Value::String(short) => {
                let mut parts = short.split(':');
                let source = parts.next().unwrap_or_default().to_owned();
                let target = parts.next().unwrap_or_default().to_owned();
                (source, target)
            }
            long => (
                long["source"].as_str().unwrap_or_default().to_owned(),
                long["target"].as_str().unwrap_or_default().to_owned(),
            ),
        })
        .collect()
}

#[test]
fn compose_runs_kafka_two_allocators_placement_the_api_and_a_host_agent() {
    let compose = compose();
    let services = services(&compose);
    assert!(services.contains_key(KAFKA), "a `{KAFKA}` service runs the broker");
    for (name, command) in EXPECTED {
        let service = services.get(*name).unwrap_or_else(|| panic!("a `{name}` service"));
        assert_eq!(subcommand(service).as_deref(), Some(*command), "`{name}` runs `ipam {command}`");
    }
}

#[test]
fn every_ipam_service_builds_and_runs_the_one_local_image() {
    let compose = compose();
    for (name, service) in ipam_services(&compose) {
        assert_eq!(service["image"].as_str(), Some(IMAGE), "`{name}` runs {IMAGE}");
        // Each service also names the build, so that `docker compose up` never tries to pull
        // ipam:local from a registry; BuildKit builds it once and reuses it.
        let (context, dockerfile) = match &service["build"] {
            Value::String(context) => (context.as_str(), "Dockerfile"),
            Value::Object(build) => (
                build.get("context").and_then(Value::as_str).unwrap_or("."),
                build.get("dockerfile").and_then(Value::as_str).unwrap_or("Dockerfile"),
            ),
            other => panic!("`{name}` builds {IMAGE} from the Dockerfile; its `build` is {other}"),
        };
        assert!(matches!(context, "." | "./"), "`{name}` builds from the repository root, not {context:?}");
        assert_eq!(dockerfile, "Dockerfile", "`{name}` builds the repository's Dockerfile");
    }
}

#[test]
fn every_ipam_service_waits_for_a_healthy_kafka_and_is_given_its_address() {
    let compose = compose();
    let kafka = &services(&compose)[KAFKA];
    let advertised = environment(kafka).get("KAFKA_ADVERTISED_LISTENERS").cloned().unwrap_or_default();
    let advertised: Vec<&str> = advertised.split(',').filter_map(|l| l.split_once("://").map(|(_, at)| at)).collect();
    for (name, service) in ipam_services(&compose) {
        assert_eq!(
            service["depends_on"][KAFKA]["condition"].as_str(),
            Some("service_healthy"),
            "`{name}` starts only once the broker answers (depends_on: {KAFKA}: condition: service_healthy)"
        );
        let bootstrap = setting(service, "--kafka", "IPAM_KAFKA")
            .unwrap_or_else(|| panic!("`{name}` is given the broker with --kafka or IPAM_KAFKA"));
        for address in bootstrap.split(',') {
            assert!(
                advertised.contains(&address),
                "`{name}` connects to {address}, which Kafka does not advertise ({advertised:?})"
            );
        }
    }
}

#[test]
fn kafka_and_snapshot_data_are_kept_in_named_volumes() {
    let compose = compose();
    let declared: BTreeSet<&str> =
        compose["volumes"].as_object().map(|v| v.keys().map(String::as_str).collect()).unwrap_or_default();
    let kafka = &services(&compose)[KAFKA];
    let log_dir = environment(kafka).get("KAFKA_LOG_DIRS").cloned().expect("KAFKA_LOG_DIRS is set");
    assert!(
        volumes(kafka).iter().any(|(source, target)| declared.contains(source.as_str()) && *target == log_dir),
        "Kafka's log directory {log_dir} is a named volume"
    );
    for (name, service) in ipam_services(&compose) {
        if !matches!(subcommand(service).as_deref(), Some("allocator" | "placement")) {
            continue;
        }
        let data_dir = setting(service, "--data-dir", "IPAM_DATA_DIR")
            .unwrap_or_else(|| panic!("`{name}` names its data directory (snapshots)"));
        assert!(
            volumes(service).iter().any(|(source, target)| declared.contains(source.as_str()) && *target == data_dir),
            "`{name}` keeps its snapshots ({data_dir}) in a named volume"
        );
    }
}

#[test]
fn host_agents_run_on_the_hosts_network_as_root_with_dnsmasqs_capabilities_distinct_host_ids_and_dhcp_volumes() {
    let compose = compose();
    let mut host_ids = BTreeSet::new();
    let mut dhcp_volumes = BTreeSet::new();
    let mut agents = 0;
    for (name, service) in ipam_services(&compose) {
        if subcommand(service).as_deref() != Some("host-agent") {
            continue;
        }
        agents += 1;
        let caps: Vec<&str> =
            service["cap_add"].as_array().map(|c| c.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        for cap in HOST_AGENT_CAPABILITIES {
            assert!(caps.iter().any(|c| c.trim_start_matches("CAP_") == *cap), "`{name}` has {cap}: {caps:?}");
        }
        assert_eq!(
            service["network_mode"].as_str(),
            Some("host"),
            "`{name}` is on the host's network, where dnsmasq sees the hypervisor's bridges"
        );
        let user = service["user"].as_str().unwrap_or_default();
        assert!(
            matches!(user.split(':').next(), Some("root" | "0")),
            "`{name}` runs as root (the image's default user is not): user is {user:?}"
        );
        assert_eq!(service["init"], Value::Bool(true), "`{name}` has an init to reap what its dnsmasq children leave");
        let host_id = setting(service, "--host-id", "IPAM_HOST_ID").unwrap_or_else(|| panic!("`{name}` has a host id"));
        let host_id = uuid::Uuid::parse_str(&host_id).unwrap_or_else(|e| panic!("`{name}`: {host_id:?}: {e}"));
        assert!(host_ids.insert(host_id), "`{name}` has a host id of its own, not {host_id}");
        // The DHCP servers' state directory: --dhcp-dir, else <data-dir>/dhcp.
        let dhcp_dir = setting(service, "--dhcp-dir", "IPAM_DHCP_DIR")
            .or_else(|| setting(service, "--data-dir", "IPAM_DATA_DIR").map(|data| format!("{data}/dhcp")))
            .unwrap_or_else(|| panic!("`{name}` names its DHCP directory (--dhcp-dir) or its data directory"));
        let (source, _) = volumes(service)
            .into_iter()
            .find(|(_, target)| *target == dhcp_dir)
            .unwrap_or_else(|| panic!("`{name}` keeps its DHCP servers' files ({dhcp_dir}) in a volume"));
        assert!(dhcp_volumes.insert(source.clone()), "`{name}` has a DHCP volume of its own, not {source}");
        let backend = setting(service, "--dhcp-backend", "IPAM_DHCP_BACKEND");
        assert!(
            matches!(backend.as_deref(), None | Some("dnsmasq" | "files")),
            "`{name}` names a DHCP backend the binary has: {backend:?}"
        );
    }
    assert!(agents >= 1, "a host agent for this machine, found none");
}

#[test]
fn allocators_and_every_other_instance_have_distinct_names() {
    let compose = compose();
    let mut instances = BTreeMap::new();
    let mut allocators = 0;
    for (name, service) in ipam_services(&compose) {
        let instance = setting(service, "--instance", "IPAM_INSTANCE");
        if subcommand(service).as_deref() == Some("allocator") {
            allocators += 1;
            assert!(
                instance.is_some(),
                "`{name}` names its instance: the default is shared, and allocators sharing one fence each other"
            );
        }
        if let Some(instance) = instance
            && let Some(other) = instances.insert(instance.clone(), name)
        {
            panic!("`{name}` and `{other}` are both instance {instance:?}");
        }
    }
    assert!(allocators >= 2, "two allocators share the partitions, found {allocators}");
}

#[test]
fn kafka_is_one_kraft_node_with_single_replica_internal_topics() {
    let compose = compose();
    let kafka = &services(&compose)[KAFKA];
    let script = read("scripts/kafka-broker.sh");
    let tested = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("KAFKA_VERSION=\"${IPAM_KAFKA_VERSION:-"))
        .and_then(|v| v.strip_suffix("}\""))
        .expect("scripts/kafka-broker.sh names its default Kafka version");
    assert_eq!(
        kafka["image"].as_str(),
        Some(format!("apache/kafka:{tested}").as_str()),
        "the official Kafka image, of the version the tests run"
    );
    let env = environment(kafka);
    let get = |key: &str| -> String { env.get(key).cloned().unwrap_or_else(|| panic!("Kafka's {key} is set")) };
    let roles = get("KAFKA_PROCESS_ROLES");
    let roles: BTreeSet<&str> = roles.split(',').map(str::trim).collect();
    assert_eq!(roles, BTreeSet::from(["broker", "controller"]), "one combined broker and controller");
    let node_id = get("KAFKA_NODE_ID");
    let voters = get("KAFKA_CONTROLLER_QUORUM_VOTERS");
    assert!(
        !voters.contains(',') && voters.starts_with(&format!("{node_id}@")),
        "the node is the only voter: {voters}"
    );
    let controller = get("KAFKA_CONTROLLER_LISTENER_NAMES");
    assert!(get("KAFKA_LISTENERS").contains(&format!("{controller}://")), "a listener for the controller");
    for (key, want) in [
        ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1"),
        ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1"),
        ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1"),
        ("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0"),
    ] {
        assert_eq!(get(key), want, "{key} on a single node");
    }
}

/// A service's health check as its argument list (the string form runs through a shell).
fn health_check(service: &Value) -> Vec<String> {
    match &service["healthcheck"]["test"] {
        Value::Array(test) => test.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Value::String(line) => vec!["CMD-SHELL".to_owned(), line.clone()],
        _ => Vec::new(),
    }
}

/// The port of an address setting such as `0.0.0.0:9090`.
fn port_of(address: &str) -> Option<u16> {
    address.parse::<SocketAddr>().ok().map(|a| a.port())
}

#[test]
fn every_service_has_a_health_check() {
    let compose = compose();
    let exempt: BTreeMap<&str, &str> = WITHOUT_HEALTHCHECK.iter().copied().collect();
    for (name, service) in services(&compose) {
        if exempt.contains_key(name.as_str()) {
            continue;
        }
        assert_ne!(service["healthcheck"]["disable"], Value::Bool(true), "`{name}` keeps its health check");
        let test = health_check(service);
        assert!(
            matches!(test.first().map(String::as_str), Some("CMD" | "CMD-SHELL")) && test.len() >= 2,
            "`{name}` has a health check that runs something: {test:?}"
        );
    }
}

#[test]
fn every_ipam_service_serves_health_on_its_metrics_address_and_its_health_check_asks_its_own() {
    let compose = compose();
    for (name, service) in ipam_services(&compose) {
        let metrics = setting(service, "--metrics-bind", "IPAM_METRICS_BIND")
            .unwrap_or_else(|| panic!("`{name}` serves /health and /metrics (--metrics-bind or IPAM_METRICS_BIND)"));
        let metrics_port = port_of(&metrics).unwrap_or_else(|| panic!("`{name}`: {metrics:?} is not an address"));
        let test = health_check(service);
        assert_eq!(
            test.iter().take(3).map(String::as_str).collect::<Vec<_>>(),
            ["CMD", "ipam", "health"],
            "`{name}` checks itself with `ipam health URL` (the image has no other HTTP client): {test:?}"
        );
        let url = test.get(3).unwrap_or_else(|| panic!("`{name}`'s `ipam health` names a URL"));
        let (port, path) = url
            .strip_prefix("http://127.0.0.1:")
            .and_then(|rest| rest.split_once('/'))
            .unwrap_or_else(|| panic!("`{name}` asks its own process on 127.0.0.1: {url}"));
        assert_eq!(path, "health", "`{name}` asks /health: {url}");
        let port: u16 = port.parse().unwrap_or_else(|e| panic!("`{name}`: {url}: {e}"));
        let api_port = setting(service, "--api-bind", "IPAM_API_BIND").as_deref().and_then(port_of);
        assert!(
            port == metrics_port || Some(port) == api_port,
            "`{name}` asks its own /health (port {metrics_port}, or its API's), not port {port}"
        );
    }
    let api = &services(&compose)["api"];
    let bind = setting(api, "--api-bind", "IPAM_API_BIND").expect("the API names its address");
    let bind: SocketAddr = bind.parse().unwrap_or_else(|e| panic!("{bind}: {e}"));
    assert!(bind.ip().is_unspecified(), "the API listens on every address of its container, not {bind}");
    let ports = api["ports"].to_string();
    assert!(ports.contains(&format!(":{}\"", bind.port())), "the API's port {} is published: {ports}", bind.port());
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    instructions.push(current.trim().to_owned());
                }
                current.clear();
            }
        }
    }
    instructions
}

/// The Dockerfile's stages, each a list of instructions starting with its FROM.
fn dockerfile_stages() -> Vec<Vec<String>> {
    let mut stages: Vec<Vec<String>> = Vec::new();
    for instruction in dockerfile_instructions() {
        if instruction.to_ascii_uppercase().starts_with("FROM ") {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("the Dockerfile starts with FROM").push(instruction);
    }
    stages
}

#[test]
fn dockerfile_builds_the_ipam_package_locked_and_its_runtime_installs_dnsmasq() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "a multi-stage build: builder and runtime");

    let builder = &stages[0];
    let rust = builder[0].split_whitespace().nth(1).unwrap_or_default();
    let version = rust.strip_prefix("rust:").unwrap_or_else(|| panic!("the builder is a rust image, not {rust}"));
    let version: Vec<u32> = version.split('-').next().unwrap().split('.').map(|n| n.parse().unwrap()).collect();
    let manifest = read("Cargo.toml");
    let needed = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("the workspace states its rust-version");
    let needed: Vec<u32> = needed.split('.').map(|n| n.parse().unwrap()).collect();
    assert!(version[..2] >= needed[..2], "the builder's {rust} is at least rustc {needed:?}");

    let build = builder
        .iter()
        .flat_map(|i| i.split(&['&', ';'][..]).map(str::trim).collect::<Vec<_>>())
        .map(|command| command.split_whitespace().collect::<Vec<_>>())
        .find_map(|words| {
            let at = words.windows(2).position(|w| w == ["cargo", "build"])?;
            Some(words[at..].to_vec())
        })
        .expect("the builder runs cargo build");
    assert!(build.contains(&"--locked"), "cargo build --locked: the image builds what Cargo.lock pins: {build:?}");
    assert!(build.contains(&"--release"), "a release build: {build:?}");
    assert!(
        builder.iter().any(|i| i.starts_with("ARG IPAM_REVISION")),
        "the builder takes the git revision (.git is not in the context) for `ipam --version`"
    );
    assert!(
        build.windows(2).any(|w| w == ["-p", "ipam"] || w == ["--package", "ipam"]) || build.contains(&"-p=ipam"),
        "the builder builds the `ipam` package alone: {build:?}"
    );

    let runtime = stages.last().unwrap();
    assert!(runtime[0].contains("debian:bookworm-slim"), "the runtime is debian:bookworm-slim: {}", runtime[0]);
    let installs = runtime.iter().filter(|i| i.starts_with("RUN ") && i.contains("apt-get install")).cloned();
    let packages: BTreeSet<String> =
        installs.flat_map(|i| i.split_whitespace().map(str::to_owned).collect::<Vec<_>>()).collect();
    // dnsmasq, `ip` and `kill` for the host agent's DHCP servers; the health checks are `ipam
    // health`, so no curl.
    for package in ["dnsmasq-base", "iproute2", "procps", "ca-certificates", "libssl3"] {
        assert!(packages.contains(package), "the runtime installs {package}");
    }
    let user = runtime.iter().rev().find_map(|i| i.strip_prefix("USER ")).expect("the runtime names its user");
    assert!(!matches!(user.trim(), "root" | "0"), "allocator, placement and API run unprivileged");
    assert!(
        runtime.iter().any(|i| i.replace(' ', "") == r#"ENTRYPOINT["ipam"]"#),
        "the image's entrypoint is the ipam binary"
    );
}

#[test]
fn dockerignore_keeps_build_output_git_and_local_data_out_of_the_context() {
    let ignored: BTreeSet<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_owned())
        .collect();
    for entry in ["target", ".git", "ipam-data"] {
        assert!(ignored.contains(entry), ".dockerignore leaves out {entry}: {ignored:?}");
    }
}

#[test]
fn docker_compose_accepts_the_file() {
    let root = root();
    let has_compose =
        Command::new("docker").args(["compose", "version"]).output().is_ok_and(|output| output.status.success());
    if !has_compose {
        println!("note: this docker client has no Compose (`docker compose version` failed); not checking with it");
        return;
    }
    let output = Command::new("docker")
        .args(["compose", "-f"])
        .arg(root.join("docker-compose.yml"))
        .args(["config", "-q"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "docker compose config -q refused docker-compose.yml:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A service of the file as a local process: its command and environment as written, rewritten
/// only where a container and this machine must differ:
/// - the broker (`IPAM_KAFKA`, `--kafka`) is the test broker, and every topic gets a prefix of
///   this run (`IPAM_TOPIC_PREFIX`, added), so the run shares the broker with other tests;
/// - every other address (`0.0.0.0:9090`, `127.0.0.1:9190`) is 127.0.0.1 on a free port, the
///   same in the health check's URL and in the published ports;
/// - every absolute path (`/var/lib/ipam`, volumes) is under a temporary directory of its own;
/// - a host agent's dnsmasq backend is the files backend: running dnsmasq needs the host's bridges
///   and root, which the DHCP tests (tests/it/dhcp.rs) cover in namespaces of their own.
struct Localized {
    name: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    /// The file's health check, its URL rewritten.
    health_check: Vec<String>,
    /// The container's ports, mapped to their local ones.
    ports: BTreeMap<u16, u16>,
}

/// A port free on 127.0.0.1 now (the listener is dropped: the service binds it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn localize(name: &str, service: &Value, bootstrap: &str, prefix: &str, dir: &Path) -> Localized {
    let mut ports = BTreeMap::new();
    let mut rewrite = |key: Option<&str>, value: &str| -> String {
        if matches!(key, Some("--kafka" | "IPAM_KAFKA")) {
            return bootstrap.to_owned();
        }
        if matches!(key, Some("--dhcp-backend" | "IPAM_DHCP_BACKEND")) && value == "dnsmasq" {
            return "files".to_owned();
        }
        if let Ok(address) = value.parse::<SocketAddr>() {
            let port = *ports.entry(address.port()).or_insert_with(free_port);
            return format!("127.0.0.1:{port}");
        }
        if let Some(relative) = value.strip_prefix('/') {
            return dir.join(name).join(relative).display().to_string();
        }
        value.to_owned()
    };
    let file_args = args(service);
    let mut out = Vec::new();
    for (i, arg) in file_args.iter().enumerate() {
        let flag = i.checked_sub(1).map(|j| file_args[j].as_str()).filter(|f| f.starts_with("--"));
        out.push(rewrite(flag, arg));
    }
    let mut env: BTreeMap<String, String> =
        environment(service).iter().map(|(k, v)| (k.clone(), rewrite(Some(k), v))).collect();
    env.insert("IPAM_TOPIC_PREFIX".to_owned(), prefix.to_owned());
    let mut health_check = health_check(service);
    for word in &mut health_check {
        if let Some(rest) = word.strip_prefix("http://127.0.0.1:")
            && let Some((port, path)) = rest.split_once('/')
        {
            let port: u16 = port.parse().unwrap();
            let local =
                ports.get(&port).unwrap_or_else(|| panic!("`{name}` checks port {port}, which it does not bind"));
            *word = format!("http://127.0.0.1:{local}/{path}");
        }
    }
    // Published ports, "HOST:CONTAINER" or "IP:HOST:CONTAINER": the container's port is the last.
    let published: Vec<u16> = service["ports"]
        .as_array()
        .map(|p| p.iter().filter_map(|p| p.as_str()?.rsplit(':').next()?.parse().ok()).collect())
        .unwrap_or_default();
    for port in published {
        ports.entry(port).or_insert_with(free_port);
    }
    Localized { name: name.to_owned(), args: out, env, health_check, ports }
}

impl Localized {
    /// The process, through `env -i`: the file's environment and nothing else (PATH, and IPAM_LOG
    /// for the log lines the harness reads).
    fn spawn(&self) -> Service {
        let mut args = vec!["-i".to_owned(), format!("PATH={}", std::env::var("PATH").unwrap_or_default())];
        args.push("IPAM_LOG=info".to_owned());
        args.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
        args.push(ipam_tests::ipam_binary().display().to_string());
        args.extend(self.args.iter().cloned());
        Service::spawn_program("env", &args)
    }

    /// Runs the file's health check (`ipam health URL`) until it passes.
    fn wait_healthy(&self, service: &mut Service, within: Duration) {
        assert_eq!(
            self.health_check.get(1).map(String::as_str),
            Some("ipam"),
            "{}: {:?}",
            self.name,
            self.health_check
        );
        let deadline = Instant::now() + within;
        loop {
            let output = Command::new(ipam_tests::ipam_binary()).args(&self.health_check[2..]).output().unwrap();
            if output.status.success() {
                return;
            }
            assert!(service.exited().is_none(), "`{}` exited: {:?}", self.name, service.exited());
            assert!(
                Instant::now() < deadline,
                "`{}`'s health check {:?} never passed: {}",
                self.name,
                self.health_check,
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn the_compose_topology_runs_as_local_processes_every_health_check_passes_and_the_api_reserves() {
    let bootstrap = ipam_tests::kafka_bootstrap();
    let prefix = ipam_tests::unique_prefix("compose");
    let dir = tempfile::tempdir().unwrap();
    let compose = compose();
    let localized: Vec<Localized> = ipam_services(&compose)
        .into_iter()
        .map(|(name, service)| localize(name, service, &bootstrap, &prefix, dir.path()))
        .collect();
    // Compose starts them together once Kafka is healthy; so does this.
    let mut running: Vec<Service> = localized.iter().map(Localized::spawn).collect();
    for (service, process) in localized.iter().zip(&mut running) {
        service.wait_healthy(process, Duration::from_secs(120));
    }

    let api = localized.iter().find(|s| s.name == "api").expect("an `api` service");
    let published = api.ports[&8080];
    let addr = SocketAddr::from(([127, 0, 0, 1], published));
    let network = "00000000-0000-0000-0000-00000000ce01";
    let subnet = "00000000-0000-0000-0000-00000000ce02";
    let host = setting(&services(&compose)["host-agent"], "--host-id", "IPAM_HOST_ID").expect("the agent's host id");
    let batch = json!([
        event(
            0x400,
            "ipam.network.upserted.v1",
            json!({"network_id": network, "name": "compose", "ipam_enabled": true})
        ),
        event(
            0x401,
            "ipam.subnet.added.v1",
            json!({"network_id": network, "subnet_id": subnet, "cidr": "10.96.0.0/24", "gateway": "10.96.0.1"})
        ),
        event(
            0x402,
            "ipam.host.upserted.v1",
            json!({"host_id": host, "name": "compose-host", "status": "up",
                   "networks": [{"network_id": network, "interface": "br0"}]})
        ),
        event(
            0x403,
            "ipam.vnic.started.v1",
            json!({"vnic_id": "00000000-0000-0000-0000-00000000ce05", "vm_id": "00000000-0000-0000-0000-00000000ce06",
                   "network_id": network, "subnet_id": subnet, "mac": "52:54:00:ce:00:05"})
        ),
    ]);
    let (status, body) = http(addr, "POST", "/v1/events?wait=50s", "application/json", batch.to_string().as_bytes());
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["outcomes"][3]["outcome"], "reserved", "{body}");
    assert_eq!(answer["outcomes"][3]["cidr"], "10.96.0.0/24", "{body}");
    for mut process in running.into_iter().rev() {
        process.terminate();
    }
}
