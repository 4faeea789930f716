# The `ipam` binary in a small Debian image. One image serves every role; the command picks it:
#   docker run ipam:local --kafka broker:9092 --instance alloc-a allocator
#   docker run ipam:local --kafka broker:9092 placement
#   docker run --network host --user root --cap-add NET_ADMIN --cap-add NET_RAW \
#       --cap-add NET_BIND_SERVICE --init ipam:local --kafka broker:9092 \
#       host-agent --host-id <HOST_UUID> --dhcp-dir /var/lib/ipam/dhcp
# docker-compose.yml runs the whole system on one Kafka broker.

# ---------------------------------------------------------------------------------------------
# Builder. The workspace needs rustc >= 1.88 (edition 2024).
FROM rust:1.95-bookworm AS builder

# rdkafka builds the bundled librdkafka with its ./configure script and make (no cmake, curl or
# Cyrus SASL), against the system OpenSSL (its `ssl` feature: TLS and SASL PLAIN/SCRAM, so the
# binary needs libssl.so.3 at run time), and links zlib through libz-sys, which finds the system
# zlib with pkg-config (libz.so.1 at run time). rusqlite builds its bundled SQLite with the C
# compiler.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential \
        libssl-dev \
        pkg-config \
        zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The git revision for `ipam --version` and the build_info metric (.git is not in the build
# context): `docker build --build-arg IPAM_REVISION=$(git rev-parse --short=12 HEAD) .`;
# services/ipam/build.rs says `unknown` without it.
ARG IPAM_REVISION=unknown

# The caches keep crates and build output between image builds (BuildKit); the binary is copied out
# of the cached target directory in the same step. The release profile carries no debug info
# (Cargo.toml's profile.release), so there is nothing left to strip.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    IPAM_REVISION="$IPAM_REVISION" cargo build --release --locked -p ipam \
    && cp target/release/ipam /usr/local/bin/ipam

# ---------------------------------------------------------------------------------------------
# Runtime.
FROM debian:bookworm-slim

# ca-certificates: TLS to brokers whose certificates a public CA signed. libssl3: librdkafka's
# TLS. dnsmasq-base: the DHCP servers the host agent runs (the binary, no system service).
# iproute2: `ip`, with which the host agent puts a server's address on its interface. procps:
# `kill`, with which the host agent signals its dnsmasq processes. The health checks need no
# client: `ipam health URL` asks /health itself. zlib1g is already in the base image; it is named
# so that it never goes missing.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates \
        dnsmasq-base \
        iproute2 \
        libssl3 \
        procps \
        zlib1g \
    && rm -rf /var/lib/apt/lists/*

# Allocator, placement and API run unprivileged. The host agent needs NET_ADMIN and runs as root
# (`user: root` in docker-compose.yml).
RUN groupadd --system --gid 10001 ipam \
    && useradd --system --uid 10001 --gid ipam --home-dir /var/lib/ipam --shell /usr/sbin/nologin ipam \
    && mkdir -p /var/lib/ipam \
    && chown ipam:ipam /var/lib/ipam

COPY --from=builder /usr/local/bin/ipam /usr/local/bin/ipam

# Snapshots (and the embedded log of `ipam up`) live here: mount a volume on it to keep them. A
# named volume mounted here starts out owned by the ipam user.
ENV IPAM_DATA_DIR=/var/lib/ipam
WORKDIR /var/lib/ipam

# The HTTP API (`ipam api --api-bind 0.0.0.0:8080`), and /health and /metrics of any service
# given IPAM_METRICS_BIND=0.0.0.0:9090.
EXPOSE 8080 9090

USER ipam
ENTRYPOINT ["ipam"]
CMD ["--help"]
