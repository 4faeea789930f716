//! Dependency rules, stated as absences (CONVENTIONS.md): the pure core never links an actor
//! runtime, an async runtime, a broker client, a database or a random number generator, and its
//! source never reads the clock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const CORE: &str = "ipam-core";
const FORBIDDEN_CRATES: &[&str] =
    &["actix", "actix-rt", "actix-web", "tokio", "rdkafka", "rusqlite", "rand", "getrandom"];
const FORBIDDEN_SOURCE: &[&str] = &[
    "SystemTime",
    "Instant::now",
    "Utc::now",
    "Local::now",
    "thread_rng",
    "std::fs",
    "std::net::TcpStream",
    "std::env",
];

fn metadata() -> Value {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Every package the core links (normal and build dependencies, transitively; dev-dependencies such
/// as proptest's `rand` are test-only and allowed).
fn core_closure(metadata: &Value) -> BTreeSet<String> {
    let names: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: BTreeMap<&str, &Value> =
        metadata["resolve"]["nodes"].as_array().unwrap().iter().map(|n| (n["id"].as_str().unwrap(), n)).collect();
    let root = names.iter().find(|(_, name)| **name == CORE).map(|(id, _)| *id).expect("ipam-core is in the workspace");
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let linked = dep["dep_kinds"].as_array().unwrap().iter().any(|kind| kind["kind"].as_str() != Some("dev"));
            if linked {
                stack.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    seen.into_iter().map(|id| names[id].to_owned()).collect()
}

#[test]
fn core_links_no_runtime_broker_database_or_randomness() {
    let closure = core_closure(&metadata());
    assert!(closure.contains("serde"), "the closure walk found the core's dependencies: {closure:?}");
    let found: Vec<&str> = FORBIDDEN_CRATES.iter().copied().filter(|c| closure.contains(*c)).collect();
    assert!(found.is_empty(), "ipam-core must not depend on {found:?}; move that code to the shell");
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_source_never_reads_the_clock_or_does_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/ipam-core/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 5, "found the core's source files: {files:?}");
    let mut offences = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN_SOURCE {
                if code.contains(word) {
                    offences.push(format!("{}:{}: {word}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(offences.is_empty(), "the core must stay pure:\n{}", offences.join("\n"));
}

#[test]
fn chrono_is_built_without_its_clock() {
    let metadata = metadata();
    let chrono = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"].as_str().unwrap().contains("chrono"))
        .expect("chrono is resolved");
    let features: Vec<&str> = chrono["features"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert!(!features.contains(&"clock"), "chrono's `clock` feature gives the core Utc::now(); features: {features:?}");
}
