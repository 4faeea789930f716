//! The Docker packaging: `docker-compose.yml` runs the whole system on one Kafka broker, from the
//! one image that `Dockerfile` builds. These tests read both files (and `.dockerignore`); when the
//! docker client has Compose, `docker compose config -q` also checks the file as Compose reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};

/// The image every IPAM service runs, built from the repository's Dockerfile.
const IMAGE: &str = "ipam:local";
const KAFKA: &str = "kafka";
/// The services the file must have, with the `ipam` subcommand each runs.
const EXPECTED: &[(&str, &str)] = &[
    ("allocator-a", "allocator"),
    ("allocator-b", "allocator"),
    ("placement", "placement"),
    ("api", "api"),
    ("host-agent-1", "host-agent"),
    ("host-agent-2", "host-agent"),
];
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
fn compose_runs_kafka_two_allocators_placement_the_api_and_two_host_agents() {
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
fn host_agents_run_as_root_with_net_admin_and_distinct_host_ids_and_dhcp_volumes() {
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
        assert!(caps.iter().any(|c| matches!(*c, "NET_ADMIN" | "CAP_NET_ADMIN")), "`{name}` has NET_ADMIN: {caps:?}");
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
    assert!(agents >= 2, "two host agents, found {agents}");
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
    assert!(kafka["image"].as_str().is_some_and(|i| i.starts_with("apache/kafka:")), "the official Kafka image");
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

#[test]
fn every_service_has_a_health_check() {
    let compose = compose();
    let exempt: BTreeMap<&str, &str> = WITHOUT_HEALTHCHECK.iter().copied().collect();
    for (name, service) in services(&compose) {
        if exempt.contains_key(name.as_str()) {
            continue;
        }
        let check = &service["healthcheck"];
        assert_ne!(check["disable"], Value::Bool(true), "`{name}` keeps its health check");
        let test = match &check["test"] {
            Value::Array(test) => test.iter().filter_map(Value::as_str).collect::<Vec<_>>(),
            Value::String(line) => vec!["CMD-SHELL", line.as_str()],
            _ => panic!("`{name}` has a health check (healthcheck: test: ...)"),
        };
        assert!(
            matches!(test.first(), Some(&"CMD" | &"CMD-SHELL")) && test.len() >= 2,
            "`{name}` has a health check that runs something: {test:?}"
        );
    }
    let api = &services(&compose)["api"];
    let test = api["healthcheck"]["test"].to_string();
    assert!(test.contains(":8080/health"), "the API's health check asks GET /health: {test}");
    let ports = api["ports"].to_string();
    assert!(ports.contains("8080"), "the API is published on 8080: {ports}");
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
        build.windows(2).any(|w| w == ["-p", "ipam"] || w == ["--package", "ipam"]) || build.contains(&"-p=ipam"),
        "the builder builds the `ipam` package alone: {build:?}"
    );

    let runtime = stages.last().unwrap();
    assert!(runtime[0].contains("debian:bookworm-slim"), "the runtime is debian:bookworm-slim: {}", runtime[0]);
    let installs = runtime.iter().filter(|i| i.starts_with("RUN ") && i.contains("apt-get install")).cloned();
    let packages: BTreeSet<String> =
        installs.flat_map(|i| i.split_whitespace().map(str::to_owned).collect::<Vec<_>>()).collect();
    // dnsmasq, `ip` and `kill` for the host agent's DHCP servers, `ss` and curl for health checks.
    for package in ["dnsmasq-base", "iproute2", "procps", "ca-certificates", "curl"] {
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
