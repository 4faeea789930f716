#!/usr/bin/env bash
# kafka-broker.sh - a throwaway single-node Apache Kafka 4.x broker (KRaft, combined
# broker+controller) for the integration tests, without Docker and without a Kafka tarball.
#
# Why: the Kafka event-log tests need a real broker (transactions, consumer groups), CI and the
# developers' machines have Java and Maven Central but no Docker and no other download site, so
# the broker's jars are fetched from Maven Central (scripts/kafka-broker/pom.xml) into a cache and
# the broker is run straight from them with `java -cp`.
#
# Usage: scripts/kafka-broker.sh start|stop|status|fetch|kill|restart|tool CLASS [ARGS...]
#   fetch   put the jars in the cache (CI can warm it); no-op when the cache is complete
#   start   fetch, wipe + format a fresh state dir, start the broker on two free 127.0.0.1 ports,
#           wait until it answers a Metadata request; the LAST stdout line is
#           KAFKA_BOOTSTRAP=127.0.0.1:PORT (also written to <state>/bootstrap). A broker already
#           running from the same state dir is stopped first.
#   stop    TERM (then KILL after 20 s) the pid in <state>/broker.pid, and only that pid
#   status  print KAFKA_BOOTSTRAP=... and exit 0 if the broker of the state dir runs, else exit 1
#   kill    SIGKILL the pid in <state>/broker.pid (a crash, for the fault tests), and only that pid
#   restart start the broker of an existing state dir again, on the same ports with the same data
#           (no wipe, no format), and wait until it answers; prints KAFKA_BOOTSTRAP=... like start.
#           After a kill, KRaft may refuse the broker's re-registration until its old session
#           expires (about 10-20 s); the wait covers that.
#   tool    run one of Apache's command-line classes from the broker's jars with ARGS, such as
#           `tool org.apache.kafka.tools.TransactionsCommand --bootstrap-server B list` (what a
#           failed test prints of the broker's transactions), with the state dir's java.
#
# Environment (all optional):
#   IPAM_KAFKA_VERSION        Kafka version from Maven Central (default 4.4.0)
#   IPAM_KAFKA_CACHE          jar cache root (default ~/.cache/ipam-kafka); jars in <root>/<version>/libs
#   IPAM_KAFKA_DIR            state dir: config, data, logs, pid (default /tmp/ipam-kafka); wiped on start
#   IPAM_KAFKA_JAVA           java binary to use (default: `java` / $JAVA_HOME, or Temurin 25 when the
#                             default java is too old for the Kafka jars)
#   IPAM_KAFKA_HEAP_OPTS      broker heap flags (default -Xms128m -Xmx512m)
#   IPAM_KAFKA_START_TIMEOUT  seconds to wait for readiness (default 90)
#   IPAM_KAFKA_SASL_SSL       1: `start` also opens two secured listeners, for the security tests:
#                             SASL_SSL (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512) and SSL with a
#                             required client certificate (mTLS). Certificates are made with openssl
#                             in <state>/tls (a CA, the broker's, a client's, and a second CA that
#                             signed none of them); the SCRAM user is made with Kafka's own storage
#                             tool (`format --add-scram`), the PLAIN one by the PLAIN login module.
#                             Before the final KAFKA_BOOTSTRAP line, start and restart then print
#                               KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:PORT   KAFKA_SSL_BOOTSTRAP=127.0.0.1:PORT
#                               KAFKA_CA_FILE=...  KAFKA_UNTRUSTED_CA_FILE=...
#                               KAFKA_CLIENT_CERT_FILE=...  KAFKA_CLIENT_KEY_FILE=...
#                               KAFKA_SASL_USERNAME=...  KAFKA_SASL_PASSWORD=...
#                             one a line (also kept in <state>/secured.env). The PLAINTEXT listener
#                             is the same either way.
#
# Everything but the final KAFKA_BOOTSTRAP line goes to stderr. Broker log: <state>/logs/server.log.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
POM="$SCRIPT_DIR/kafka-broker/pom.xml"
KAFKA_VERSION="${IPAM_KAFKA_VERSION:-4.4.0}"
CACHE_ROOT="${IPAM_KAFKA_CACHE:-${HOME:-/tmp}/.cache/ipam-kafka}"
VERSION_DIR="$CACHE_ROOT/$KAFKA_VERSION"
LIBS="$VERSION_DIR/libs"
STAMP="$VERSION_DIR/.complete"
STATE_DIR="${IPAM_KAFKA_DIR:-/tmp/ipam-kafka}"
[[ "$STATE_DIR" == /* ]] || STATE_DIR="$PWD/$STATE_DIR"  # absolute: the pid check matches on it
while [[ "$STATE_DIR" == */ ]]; do STATE_DIR="${STATE_DIR%/}"; done
STATE_MARK="$STATE_DIR/.ipam-kafka-state"
PID_FILE="$STATE_DIR/broker.pid"
BOOTSTRAP_FILE="$STATE_DIR/bootstrap"
START_TIMEOUT="${IPAM_KAFKA_START_TIMEOUT:-90}"
HEAP_OPTS="${IPAM_KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
TEMURIN25=/usr/lib/jvm/temurin-25-jdk-amd64/bin/java
# Short-lived CLI JVMs (format, fallback readiness probe): small heap, fast start.
TOOL_JVM_OPTS=(-Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true)

log() { printf 'kafka-broker: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- fetch ----------------------

# The stamp records the version and the pom's checksum, so editing the pom refreshes the cache.
cache_key() { printf '%s %s\n' "$KAFKA_VERSION" "$(sha256sum "$POM" | cut -d' ' -f1)"; }

cache_complete() {
    [[ -f "$STAMP" && -f "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]] && [[ "$(cat "$STAMP")" == "$(cache_key)" ]]
}

fetch() {
    [[ -f "$POM" ]] || die "missing $POM"
    if cache_complete; then
        log "jars for Kafka $KAFKA_VERSION already cached in $LIBS"
        return 0
    fi
    command -v mvn >/dev/null || die "mvn (Maven) is not on PATH; it is needed to fetch the Kafka jars"
    mkdir -p "$VERSION_DIR"
    local tmp="$VERSION_DIR/libs.tmp.$$" attempt
    for attempt in 1 2 3; do
        rm -rf "$tmp"
        log "fetching Kafka $KAFKA_VERSION jars from Maven Central (attempt $attempt/3) ..."
        # stdout of mvn goes to stderr: stdout is reserved for the KAFKA_BOOTSTRAP line.
        if mvn -q -B -f "$POM" dependency:copy-dependencies \
            -Dkafka.version="$KAFKA_VERSION" -DoutputDirectory="$tmp" >&2 \
            && [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]]; then
            # Swap in atomically so an interrupted download never looks complete.
            rm -rf "$LIBS" "$STAMP"
            mv -T "$tmp" "$LIBS"
            cache_key >"$STAMP"
            log "cached $(find "$LIBS" -name "*.jar" | wc -l) jars ($(du -sh "$LIBS" | cut -f1)) in $LIBS"
            return 0
        fi
        rm -rf "$tmp"
        if ((attempt < 3)); then
            log "download failed; retrying in $((attempt * 5)) s"
            sleep $((attempt * 5))
        fi
    done
    die "could not fetch the Kafka $KAFKA_VERSION jars after 3 attempts (is Maven Central reachable?)"
}

# ---------------------------------------------------------------- helpers --------------------

# Prints the pid of the broker started from $STATE_DIR if it is still alive, else nothing.
# The pid is trusted only if the process really is kafka.Kafka with this state dir's config
# (guards against a recycled pid).
running_pid() {
    [[ -f "$PID_FILE" ]] || return 0
    local pid
    pid=$(tr -dc '0-9' <"$PID_FILE")
    [[ -n "$pid" ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    if [[ -r "/proc/$pid/cmdline" ]]; then
        local cmd
        cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
        [[ "$cmd" == *kafka.Kafka*"$STATE_DIR/config/server.properties"* ]] || return 0
    fi
    printf '%s\n' "$pid"
}

# $1 (default 2) distinct free TCP ports on 127.0.0.1 (broker, controller, then the secured ones).
free_ports() {
    local count=${1:-2}
    if command -v python3 >/dev/null; then
        python3 - "$count" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
        return
    fi
    # Fallback without python: random high ports nothing answers on.
    local ports=() p
    while ((${#ports[@]} < count)); do
        p=$((20000 + RANDOM % 40000))
        [[ " ${ports[*]-} " == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then ports+=("$p"); fi
    done
    echo "${ports[*]}"
}

# Readiness: the broker answers ApiVersions and then a Metadata request listing itself. In KRaft
# mode the broker opens its client listener only after it has caught up with the metadata log
# and been unfenced, so this means "ready for produce/consume/transactions".
probe_python() {
    python3 - "$1" <<'PY'
import socket, struct, sys
port = int(sys.argv[1])

def call(sock, api_key, version, corr, body):
    client = b"ipam-probe"
    hdr = struct.pack(">hhih", api_key, version, corr, len(client)) + client
    msg = hdr + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed")
            buf += chunk
        return buf
    size = struct.unpack(">i", read(4))[0]
    data = read(size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise ValueError("bad correlation id")
    return data[4:]

try:
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    s.settimeout(3)
    # ApiVersions v0: error_code, [api_key min max]
    r = call(s, 18, 0, 1, b"")
    err, n = struct.unpack(">hi", r[:6])
    if err != 0:
        sys.exit(1)
    ranges = {}
    for i in range(n):
        k, lo, hi = struct.unpack(">hhh", r[6 + 6 * i: 12 + 6 * i])
        ranges[k] = (lo, hi)
    lo, hi = ranges.get(3, (0, -1))
    v = max(lo, 4)
    if v > min(hi, 8):
        sys.exit(0)  # no non-flexible Metadata version to speak; ApiVersions answered, good enough
    # Metadata v4..v8 request: topics = null (-1), allow_auto_topic_creation = false
    body = struct.pack(">i", -1) + b"\x00"
    if v >= 8:
        body += b"\x00\x00"  # include_cluster/topic_authorized_operations = false
    r = call(s, 3, v, 2, body)
    off = 4  # throttle_time_ms (v3+)
    nb = struct.unpack(">i", r[off:off + 4])[0]
    sys.exit(0 if nb >= 1 else 1)
except Exception:
    sys.exit(1)
PY
}

probe_java() {
    timeout 30 "$JAVA" "${TOOL_JVM_OPTS[@]}" -Dlog4j2.configurationFile="file:$STATE_DIR/config/tools-log4j2.xml" \
        -cp "$LIBS/*" org.apache.kafka.tools.BrokerApiVersionsCommand \
        --bootstrap-server "127.0.0.1:$1" >/dev/null 2>&1
}

probe() {
    if command -v python3 >/dev/null; then probe_python "$1"; else probe_java "$1"; fi
}

show_logs() {
    local f shown=
    for f in "$STATE_DIR/logs/server.log" "$STATE_DIR/logs/stdout.log"; do
        [[ -s "$f" ]] || continue
        log "----- last lines of $f -----"
        tail -n 60 "$f" >&2 || true
        shown=1
    done
    [[ -n "$shown" ]] || log "(the broker wrote no log yet in $STATE_DIR/logs)"
}

# ---------------------------------------------------------------- stop -----------------------

stop() {
    local pid
    pid=$(running_pid)
    if [[ -z "$pid" ]]; then
        if [[ -f "$PID_FILE" ]]; then
            log "stale $PID_FILE (pid $(cat "$PID_FILE") is not a running broker of this state dir); removing it"
            rm -f "$PID_FILE" "$BOOTSTRAP_FILE"
        else
            log "no broker running from $STATE_DIR"
        fi
        return 0
    fi
    log "stopping broker pid $pid (SIGTERM)"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 200; i++)); do  # 20 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "broker pid $pid still alive after 20 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    kill -0 "$pid" 2>/dev/null && die "broker pid $pid did not exit"
    rm -f "$PID_FILE" "$BOOTSTRAP_FILE"
    log "broker stopped"
}

# ---------------------------------------------------------------- secured listeners ----------

SASL_USER=ipam
SASL_PASSWORD=ipam-test-secret
KEYSTORE_PASSWORD=ipam-test-keystore

# A CA, the broker's certificate (for 127.0.0.1, as librdkafka checks the host name), a client
# certificate for mTLS, and a second CA that signed nothing here (the "untrusted" case).
make_certificates() {
    command -v openssl >/dev/null || die "openssl is not on PATH; it is needed for IPAM_KAFKA_SASL_SSL=1"
    local tls="$STATE_DIR/tls"
    mkdir -p "$tls"
    (
        set -e
        cd "$tls"
        for ca_name in ca other-ca; do
            openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=ipam test $ca_name" \
                -keyout "$ca_name.key" -out "$ca_name.pem" 2>/dev/null
        done
        openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout broker.key -out broker.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >broker.ext
        openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile broker.ext -out broker.pem 2>/dev/null
        openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
            -out broker.p12 -passout "pass:$KEYSTORE_PASSWORD"
        openssl req -newkey rsa:2048 -nodes -subj "/CN=ipam-client" -keyout client.key -out client.csr 2>/dev/null
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out client.pem 2>/dev/null
        rm -f ./*.csr broker.ext
    ) || die "openssl could not make the test certificates in $tls"
}

write_secured_config() {
    local sasl_ssl_port=$1 ssl_port=$2 tls="$STATE_DIR/tls"
    make_certificates
    cat >>"$STATE_DIR/config/server.properties" <<EOF

# IPAM_KAFKA_SASL_SSL=1: the secured listeners. Both present the broker certificate signed by
# tls/ca.pem; SSL also requires a client certificate signed by it (mTLS).
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/broker.p12
ssl.keystore.password=$KEYSTORE_PASSWORD
ssl.key.password=$KEYSTORE_PASSWORD
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
listener.name.ssl.ssl.client.auth=required
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER="$SASL_PASSWORD";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
    cat >"$STATE_DIR/secured.env" <<EOF
KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:$sasl_ssl_port
KAFKA_SSL_BOOTSTRAP=127.0.0.1:$ssl_port
KAFKA_CA_FILE=$tls/ca.pem
KAFKA_UNTRUSTED_CA_FILE=$tls/other-ca.pem
KAFKA_CLIENT_CERT_FILE=$tls/client.pem
KAFKA_CLIENT_KEY_FILE=$tls/client.key
KAFKA_SASL_USERNAME=$SASL_USER
KAFKA_SASL_PASSWORD=$SASL_PASSWORD
EOF
}

# ---------------------------------------------------------------- start ----------------------

write_configs() {
    local broker_port=$1 controller_port=$2 sasl_ssl_port=${3:-} ssl_port=${4:-}
    mkdir -p "$STATE_DIR/config" "$STATE_DIR/data" "$STATE_DIR/logs"
    # The secured listeners sit between PLAINTEXT and CONTROLLER: `restart` reads the first and
    # the last port of the listeners line.
    local secured_listeners="" secured_map=""
    if [[ -n "$sasl_ssl_port" ]]; then
        secured_listeners="SASL_SSL://127.0.0.1:$sasl_ssl_port,SSL://127.0.0.1:$ssl_port,"
        secured_map=",SASL_SSL:SASL_SSL,SSL:SSL"
    fi
    cat >"$STATE_DIR/config/server.properties" <<EOF
# Generated by scripts/kafka-broker.sh: single-node KRaft broker+controller for tests.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$broker_port,${secured_listeners}CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$broker_port,${secured_listeners}CONTROLLER://127.0.0.1:$controller_port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT$secured_map
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
# Dynamic (KIP-853) quorum, formatted with --standalone.
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
log.dirs=$STATE_DIR/data

# Single node: every internal topic has one replica, and one partition to start fast.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
default.replication.factor=1
min.insync.replicas=1
num.partitions=1
auto.create.topics.enable=false
delete.topic.enable=true
group.initial.rebalance.delay.ms=0

# Keep it light.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
log.segment.bytes=16777216
log.retention.hours=24
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
EOF
    if [[ -n "$sasl_ssl_port" ]]; then
        write_secured_config "$sasl_ssl_port" "$ssl_port"
    fi
    # Broker log4j2 config: everything to <state>/logs/server.log.
    cat >"$STATE_DIR/config/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <File name="server" fileName="$STATE_DIR/logs/server.log" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
  </Loggers>
</Configuration>
EOF
    # CLI tools log4j2 config: warnings only, to stderr.
    cat >"$STATE_DIR/config/tools-log4j2.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stderr" target="SYSTEM_ERR"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console>
  </Appenders>
  <Loggers><Root level="WARN"><AppenderRef ref="stderr"/></Root></Loggers>
</Configuration>
EOF
}

# Java candidates in order of preference; the first one that can format the storage wins
# (Kafka 4.x brokers need Java 17+; if the default java cannot load the classes we move on).
java_candidates() {
    if [[ -n "${IPAM_KAFKA_JAVA:-}" ]]; then
        echo "$IPAM_KAFKA_JAVA"
        return
    fi
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then echo "$JAVA_HOME/bin/java"; fi
    if command -v java >/dev/null; then command -v java; fi
    if [[ -x "$TEMURIN25" ]]; then echo "$TEMURIN25"; fi
}

# Formats the state dir with a fresh cluster id; sets JAVA to the java that managed it.
format_storage() {
    local cluster_id out cand
    # A cluster id is a base64url (unpadded) random 128-bit UUID, as `StorageTool random-uuid` makes.
    # It is passed as `--cluster-id=ID`: one in 32 starts with `-` or `_`, and StorageTool's
    # argument parser took `-t -xyz...` for a missing value followed by an option (a start failed).
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)
    # The SCRAM credentials of the secured listener's user go into the metadata log at format.
    local -a scram=()
    if [[ -f "$STATE_DIR/secured.env" ]]; then
        scram=(--add-scram "SCRAM-SHA-256=[name=$SASL_USER,password=$SASL_PASSWORD]"
            --add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$SASL_PASSWORD]")
    fi
    local -a candidates
    mapfile -t candidates < <(java_candidates)
    ((${#candidates[@]} > 0)) || die "no java found (install Java 17+ or set IPAM_KAFKA_JAVA)"
    for cand in "${candidates[@]}"; do
        if out=$("$cand" "${TOOL_JVM_OPTS[@]}" \
            -Dlog4j2.configurationFile="file:$STATE_DIR/config/tools-log4j2.xml" \
            -cp "$LIBS/*" kafka.tools.StorageTool format --standalone "${scram[@]}" \
            --cluster-id="$cluster_id" -c "$STATE_DIR/config/server.properties" 2>&1); then
            JAVA=$cand
            log "formatted $STATE_DIR/data (cluster id $cluster_id) with $("$JAVA" -version 2>&1 | head -n1)"
            return 0
        fi
        if grep -q 'UnsupportedClassVersionError' <<<"$out"; then
            log "$cand is too old for Kafka $KAFKA_VERSION; trying the next java"
            continue
        fi
        printf '%s\n' "$out" >&2
        die "kafka.tools.StorageTool format failed with $cand"
    done
    die "no java able to run Kafka $KAFKA_VERSION (need Java 17+; tried: ${candidates[*]})"
}

start() {
    local t0=$SECONDS
    fetch

    local old
    old=$(running_pid)
    if [[ -n "$old" ]]; then
        log "a broker from $STATE_DIR is already running (pid $old); stopping it first"
        stop
    fi

    # Wipe the state dir, but only if it is ours (marker) or empty: IPAM_KAFKA_DIR=$HOME must not
    # erase a home directory.
    case "$STATE_DIR" in /|/tmp|/tmp/|"${HOME:-/nonexistent}"|"") die "refusing to use '$STATE_DIR' as state dir";; esac
    if [[ -d "$STATE_DIR" && ! -f "$STATE_MARK" ]] && [[ -n "$(ls -A "$STATE_DIR")" ]]; then
        die "$STATE_DIR exists, is not empty and was not made by this script; refusing to wipe it"
    fi
    rm -rf "$STATE_DIR"
    mkdir -p "$STATE_DIR"
    : >"$STATE_MARK"

    local ports broker_port controller_port sasl_ssl_port="" ssl_port=""
    if [[ "${IPAM_KAFKA_SASL_SSL:-0}" == 1 ]]; then
        ports=$(free_ports 4)
        read -r broker_port controller_port sasl_ssl_port ssl_port <<<"$ports"
        [[ -n "$ssl_port" ]] || die "could not find free ports"
    else
        ports=$(free_ports)
        read -r broker_port controller_port <<<"$ports"
    fi
    [[ -n "$broker_port" && -n "$controller_port" ]] || die "could not find free ports"
    write_configs "$broker_port" "$controller_port" "$sasl_ssl_port" "$ssl_port"

    JAVA=
    format_storage
    echo "$JAVA" >"$STATE_DIR/java"  # `restart` runs the same java

    launch "$broker_port" "$controller_port" "$t0"
}

# Starts the broker of the formatted state dir on the given ports, waits until it answers, and
# prints the KAFKA_BOOTSTRAP line. Needs JAVA.
launch() {
    local broker_port=$1 controller_port=$2 t0=$3
    log "starting Kafka $KAFKA_VERSION broker on 127.0.0.1:$broker_port (controller 127.0.0.1:$controller_port)"
    local -a heap
    read -r -a heap <<<"$HEAP_OPTS"
    # stdin/stdout/stderr detached from the caller, so `$(kafka-broker.sh start)` returns.
    nohup "$JAVA" "${heap[@]}" \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="file:$STATE_DIR/config/log4j2.xml" \
        -cp "$LIBS/*" kafka.Kafka "$STATE_DIR/config/server.properties" \
        </dev/null >>"$STATE_DIR/logs/stdout.log" 2>&1 &
    local pid=$!
    echo "$pid" >"$PID_FILE"

    local deadline=$((SECONDS + START_TIMEOUT))
    until probe "$broker_port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_logs
            rm -f "$PID_FILE"
            die "the broker (pid $pid) exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            show_logs
            log "broker not ready after ${START_TIMEOUT} s; killing pid $pid"
            kill -KILL "$pid" 2>/dev/null || true
            rm -f "$PID_FILE"
            exit 1
        fi
        sleep 0.3
    done

    echo "127.0.0.1:$broker_port" >"$BOOTSTRAP_FILE"
    log "broker ready (pid $pid) after $((SECONDS - t0)) s; log: $STATE_DIR/logs/server.log"
    # The secured listeners' lines come first: callers take the last line as the plain address.
    if [[ -f "$STATE_DIR/secured.env" ]]; then cat "$STATE_DIR/secured.env"; fi
    echo "KAFKA_BOOTSTRAP=127.0.0.1:$broker_port"
}

kill_broker() {
    local pid
    pid=$(running_pid)
    [[ -n "$pid" ]] || die "no broker running from $STATE_DIR"
    log "killing broker pid $pid (SIGKILL)"
    kill -KILL "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do  # 10 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && die "broker pid $pid did not die"
    rm -f "$PID_FILE" "$BOOTSTRAP_FILE"
    log "broker killed"
}

restart() {
    local t0=$SECONDS
    [[ -f "$STATE_MARK" && -f "$STATE_DIR/config/server.properties" && -f "$STATE_DIR/java" ]] \
        || die "$STATE_DIR holds no broker started by this script; use start"
    local old
    old=$(running_pid)
    [[ -z "$old" ]] || die "the broker of $STATE_DIR is still running (pid $old); stop or kill it first"
    local broker_port controller_port
    broker_port=$(sed -n 's|^listeners=PLAINTEXT://127.0.0.1:\([0-9]*\),.*|\1|p' "$STATE_DIR/config/server.properties")
    controller_port=$(sed -n 's|^listeners=.*CONTROLLER://127.0.0.1:\([0-9]*\)$|\1|p' "$STATE_DIR/config/server.properties")
    [[ -n "$broker_port" && -n "$controller_port" ]] || die "no ports in $STATE_DIR/config/server.properties"
    JAVA=$(cat "$STATE_DIR/java")
    launch "$broker_port" "$controller_port" "$t0"
}

tool() {
    [[ $# -ge 1 ]] || die "tool needs a class, such as org.apache.kafka.tools.TransactionsCommand"
    [[ -f "$STATE_DIR/java" ]] || die "$STATE_DIR holds no broker started by this script"
    JAVA=$(cat "$STATE_DIR/java")
    "$JAVA" -Dlog4j2.configurationFile="file:$STATE_DIR/config/log4j2.xml" -cp "$LIBS/*" "$@"
}

status() {
    local pid
    pid=$(running_pid)
    if [[ -n "$pid" && -f "$BOOTSTRAP_FILE" ]]; then
        log "broker running (pid $pid)"
        echo "KAFKA_BOOTSTRAP=$(cat "$BOOTSTRAP_FILE")"
        return 0
    fi
    log "no broker running from $STATE_DIR"
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    fetch) fetch ;;
    kill) kill_broker ;;
    restart) restart ;;
    tool)
        shift
        tool "$@"
        ;;
    *)
        echo "usage: $0 start|stop|status|fetch|kill|restart|tool CLASS [ARGS...]" >&2
        exit 2
        ;;
esac
