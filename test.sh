#!/usr/bin/env bash
# The project's test command (README.md, "Test it"). It installs and starts whatever the tests
# need, then runs the whole suite. Today the suite needs only a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace --all-targets --locked
