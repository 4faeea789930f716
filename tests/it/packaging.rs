//! What a package ships, through the real binary: `--version` with the workspace version and a git
//! revision (and the build script's fallbacks), shell completions and man pages generated from the
//! CLI definition, `ipam health` as the container health checks use it, the example configuration
//! loaded by `config check` (and its old name `config-check`), `config show` naming where each
//! value came from, and systemd units that run subcommands the binary has. The .deb itself
//! is built and checked by scripts/build-deb.sh, which test.sh runs.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn ipam(args: &[&str]) -> Output {
    Command::new(ipam_tests::ipam_binary()).args(args).env_remove("IPAM_CONFIG").output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn version_names_the_workspace_version_and_the_git_revision() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let version = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("the workspace has a version");
    assert_ne!(version, "0.0.0", "a real version");
    let output = ipam(&["--version"]);
    assert!(output.status.success());
    let line = stdout(&output);
    let revision = line
        .trim()
        .strip_prefix(&format!("ipam {version} (revision "))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("`ipam {version} (revision REV)`, not {line}"));
    // Built from a source tarball (no .git), it says so.
    if !root().join(".git").exists() {
        assert_eq!(revision, "unknown");
        return;
    }
    // Built in this checkout, it names a commit of it (not necessarily HEAD: others may commit
    // between the build and the test).
    let known =
        Command::new("git").args(["cat-file", "-e", &format!("{revision}^{{commit}}")]).current_dir(root()).status();
    assert!(revision.len() == 12 && known.is_ok_and(|s| s.success()), "{revision} is a commit of this repository");
}

/// Compiles services/ipam/build.rs alone and runs it as cargo would: its `IPAM_REVISION`.
fn build_script_revision(manifest_dir: &Path, given: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("build-script");
    let compiled = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()))
        .args(["--edition", "2024", "-o"])
        .arg(&script)
        .arg(root().join("services/ipam/build.rs"))
        .output()
        .unwrap();
    assert!(compiled.status.success(), "{}", String::from_utf8_lossy(&compiled.stderr));
    let mut run = Command::new(&script);
    run.env("CARGO_MANIFEST_DIR", manifest_dir).env_remove("IPAM_REVISION");
    if let Some(given) = given {
        run.env("IPAM_REVISION", given);
    }
    let output = run.output().unwrap();
    assert!(output.status.success());
    stdout(&output)
        .lines()
        .find_map(|l| l.strip_prefix("cargo:rustc-env=IPAM_REVISION="))
        .expect("the script sets IPAM_REVISION")
        .to_owned()
}

#[test]
fn the_build_script_says_unknown_outside_git_and_takes_a_revision_given_by_the_builder() {
    let tarball = tempfile::tempdir().unwrap();
    // A directory outside any git checkout, as an unpacked source tarball is (GIT_CEILING_DIRECTORIES
    // is not needed: /tmp is not in a checkout).
    assert_eq!(build_script_revision(tarball.path(), None), "unknown");
    assert_eq!(build_script_revision(tarball.path(), Some("0123abcd")), "0123abcd");
    let in_checkout = build_script_revision(&root().join("services/ipam"), None);
    assert_eq!(in_checkout.len(), 12, "a short hash in the checkout: {in_checkout}");
}

#[test]
fn completions_for_each_shell_and_man_pages_come_from_the_cli_definition() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = ipam(&["completions", shell]);
        assert!(output.status.success(), "{shell}: {}", String::from_utf8_lossy(&output.stderr));
        let script = stdout(&output);
        for subcommand in ["host-agent", "completions", "allocator"] {
            assert!(script.contains(subcommand), "{shell}'s completion knows `{subcommand}`");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let bash = dir.path().join("ipam.bash");
    std::fs::write(&bash, ipam(&["completions", "bash"]).stdout).unwrap();
    let checked = Command::new("bash").arg("-n").arg(&bash).status().unwrap();
    assert!(checked.success(), "the bash completion is valid bash");
    let refused = ipam(&["completions", "tcsh"]);
    assert_eq!(refused.status.code(), Some(2), "an unknown shell is a usage error");

    let page = stdout(&ipam(&["man"]));
    assert!(page.starts_with(".ie") || page.contains(".TH ipam 1"), "{page}");
    assert!(page.contains("host\\-agent"), "the page lists the subcommands");
    let output = ipam(&["man", "--dir", &dir.path().display().to_string()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for name in ["ipam.1", "ipam-up.1", "ipam-allocator.1", "ipam-host-agent.1", "ipam-ctl.1"] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains(".TH "), "{name} is a man page");
    }
}

/// A one-request HTTP server answering `status`; its /health URL.
fn answer_once(status: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buffer = [0u8; 1024];
        let _ = stream.read(&mut buffer);
        let body = "{}";
        let _ =
            write!(stream, "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    });
    url
}

#[test]
fn health_exits_zero_on_200_and_five_on_another_answer_or_none() {
    assert_eq!(ipam(&["health", &answer_once("200 OK")]).status.code(), Some(0));
    let unready = ipam(&["health", &answer_once("503 Service Unavailable")]);
    assert_eq!(unready.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&unready.stderr).contains("503"), "it says what it got");
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    assert_eq!(ipam(&["health", &format!("http://{closed}/health")]).status.code(), Some(5));
}

#[test]
fn the_example_configuration_loads_through_the_binary_and_a_bad_one_is_refused() {
    let example = root().join("packaging/ipam.toml");
    let output = ipam(&["--config", &example.display().to_string(), "config-check"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout(&output).contains("configuration OK"), "{}", stdout(&output));

    // The same file with one key misspelt: config-check reads the file, and says which key.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("ipam.toml");
    let text = std::fs::read_to_string(&example).unwrap().replacen("partitions =", "partitons =", 1);
    std::fs::write(&bad, text).unwrap();
    let output = ipam(&["--config", &bad.display().to_string(), "config-check"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("partitons"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn config_show_prints_the_effective_configuration_naming_each_values_source_and_hiding_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ipam.toml");
    std::fs::write(&file, "partitions = 4\ninstance = \"from-file\"\n[kafka]\nsasl-password = \"file-secret\"\n")
        .unwrap();
    let path = file.display().to_string();
    let output = Command::new(ipam_tests::ipam_binary())
        .args(["--config", &path, "config", "show", "--instance", "from-flag"])
        .env_remove("IPAM_CONFIG")
        .env_remove("IPAM_INSTANCE")
        .env_remove("IPAM_TICK_INTERVAL_MS")
        .env("IPAM_TOPIC_PREFIX", "from-env")
        .env("IPAM_API_TOKEN", "env-secret")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let shown = stdout(&output);
    for line in [
        format!("partitions = 4  # {path}"),
        "topic-prefix = \"from-env\"  # IPAM_TOPIC_PREFIX".to_owned(),
        "instance = \"from-flag\"  # --instance".to_owned(),
        "tick-interval-ms = 1000  # default".to_owned(),
        "api-token = \"<hidden>\"  # IPAM_API_TOKEN".to_owned(),
        format!("sasl-password = \"<hidden>\"  # {path}"),
    ] {
        assert!(shown.lines().any(|l| l == line), "no `{line}` in:\n{shown}");
    }
    assert!(!shown.contains("file-secret") && !shown.contains("env-secret"), "{shown}");
    // `config check` is the new name of `config-check`, which stays.
    let output = ipam(&["--config", &root().join("packaging/ipam.toml").display().to_string(), "config", "check"]);
    assert!(stdout(&output).contains("configuration OK"), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn each_systemd_unit_runs_a_subcommand_the_binary_has_with_the_packaged_configuration() {
    let units = root().join("packaging/systemd");
    let mut subcommands = Vec::new();
    for entry in std::fs::read_dir(&units).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap_or_else(|| panic!("{path:?}"));
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(words[..3], ["/usr/bin/ipam", "--config", "/etc/ipam/ipam.toml"], "{path:?}: {exec}");
        let subcommand = words[3];
        let help = ipam(&[subcommand, "--help"]);
        assert!(help.status.success(), "{path:?}: `ipam {subcommand}` exists");
        // The unit's own flags parse (e.g. the host agent's --dhcp-dir).
        if words.len() > 4 {
            let mut args = words[3..].to_vec();
            args.push("--help");
            assert!(ipam(&args).status.success(), "{path:?}: {exec}");
        }
        subcommands.push(subcommand.to_owned());
    }
    subcommands.sort();
    assert_eq!(subcommands, ["allocator", "api", "host-agent", "placement", "up"]);
}
