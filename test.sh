#!/usr/bin/env bash
# The project's test command (README.md, "Test it"). On a fresh machine it installs and starts
# everything the suite needs, runs the whole suite, and stops what it started:
#   - a Rust toolchain is assumed (rustup);
#   - Java and Maven (for the Kafka broker), dnsmasq and busybox (for the DHCP tests, with its
#     udhcpc client), iproute2 (network namespaces) and prometheus (its promtool checks the alert
#     rules in deploy/monitoring) are installed from Debian's packages when missing;
#   - a single-node Apache Kafka broker (KRaft) is fetched from Maven Central and started by
#     scripts/kafka-broker.sh, unless IPAM_KAFKA_BOOTSTRAP already names a broker to use.
set -euo pipefail
cd "$(dirname "$0")"

need_packages=()
command -v java >/dev/null 2>&1 || need_packages+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_packages+=(maven)
command -v python3 >/dev/null 2>&1 || need_packages+=(python3)
command -v dnsmasq >/dev/null 2>&1 || need_packages+=(dnsmasq-base)
command -v busybox >/dev/null 2>&1 || need_packages+=(busybox)
command -v dhclient >/dev/null 2>&1 || need_packages+=(isc-dhcp-client)
command -v ip >/dev/null 2>&1 || need_packages+=(iproute2)
command -v promtool >/dev/null 2>&1 || need_packages+=(prometheus)
# The CLI test of an https:// API makes a private CA and serves with openssl s_server.
command -v openssl >/dev/null 2>&1 || need_packages+=(openssl)
# The web page's test drives headless Chromium through chromedriver (tests/it/ui.rs).
command -v chromium >/dev/null 2>&1 || need_packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_packages+=(chromium-driver)
# rdkafka's `ssl` feature builds librdkafka against the system OpenSSL (found by pkg-config); the
# Kafka security tests make their certificates with the openssl command (checked above).
dpkg -s libssl-dev >/dev/null 2>&1 || need_packages+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need_packages+=(pkg-config)
if ((${#need_packages[@]})); then
    echo "test.sh: installing ${need_packages[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi

if [[ -z "${IPAM_KAFKA_BOOTSTRAP:-}" ]]; then
    # A directory made here is removed after a passing run (kept after a failure, for the
    # broker's log); one named by IPAM_KAFKA_DIR is the caller's.
    made_kafka_dir=""
    if [[ -z "${IPAM_KAFKA_DIR:-}" ]]; then
        made_kafka_dir=$(mktemp -d /tmp/ipam-test-kafka.XXXXXX)
        export IPAM_KAFKA_DIR="$made_kafka_dir"
    fi
    trap 'status=$?; scripts/kafka-broker.sh stop || true
          if [[ $status -eq 0 && -n "$made_kafka_dir" ]]; then rm -rf "$made_kafka_dir"; fi' EXIT
    bootstrap_line=$(scripts/kafka-broker.sh start | tail -n 1)
    export IPAM_KAFKA_BOOTSTRAP="${bootstrap_line#KAFKA_BOOTSTRAP=}"
    echo "test.sh: Kafka broker at $IPAM_KAFKA_BOOTSTRAP" >&2
fi

# Style and lint first: they fail in seconds, the suite in minutes.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The integration tests run the `ipam` binary; `cargo test` alone does not build another
# package's binaries.
cargo build --workspace --bins --locked
# The .deb, from the debug binary just built (no release build here: too slow), and its checks.
scripts/build-deb.sh "${CARGO_TARGET_DIR:-target}/debug/ipam" >/dev/null
cargo test --workspace --all-targets --locked
