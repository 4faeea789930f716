//! Puts the git revision the binary is built from into `IPAM_REVISION`, for `ipam --version` and
//! the `ipam_build_info` metric. Only this crate has a build script, so a commit rebuilds the
//! `ipam` binary alone, never the libraries.
//!
//! In order: an `IPAM_REVISION` given by the builder (a Dockerfile or packager that has the
//! revision but no `.git`), else `git rev-parse --short=12 HEAD`, else `unknown` (a source
//! tarball, or no git installed). A checkout with uncommitted changes is not marked: telling would
//! mean rerunning this script on every edit of any file.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=IPAM_REVISION");
    let given = std::env::var("IPAM_REVISION").ok().filter(|r| !r.trim().is_empty());
    let revision = given.or_else(git_revision).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=IPAM_REVISION={}", revision.trim());
}

/// The short hash of HEAD; reruns when HEAD moves (a commit, a checkout) and only then.
fn git_revision() -> Option<String> {
    let git_dir = PathBuf::from(git(&["rev-parse", "--absolute-git-dir"])?);
    watch(&git_dir.join("HEAD"));
    let common =
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]).map_or(git_dir.clone(), PathBuf::from);
    // A commit or checkout appends to HEAD's reflog, and moves the branch HEAD names: a file under
    // refs/ or, once packed, a line of packed-refs.
    watch(&git_dir.join("logs").join("HEAD"));
    if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD"))
        && let Some(reference) = head.trim().strip_prefix("ref: ")
    {
        watch(&common.join(reference));
        watch(&common.join("packed-refs"));
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}

fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn git(args: &[&str]) -> Option<String> {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let output = Command::new("git").args(args).current_dir(manifest).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}
