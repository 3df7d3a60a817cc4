#!/usr/bin/env bash
# Weir against NATS JetStream on one machine: the same workload on a 3-node cluster with
# replication factor 3 (JetStream R3 vs Weir acks=all), then on one node (R1 vs RF 1).
#
#   benches/compare/run.sh            # both scenarios, table on stdout
#   benches/compare/run.sh --json     # one JSON summary on stdout (progress on stderr)
#   DURATION=60 PRODUCERS=8 benches/compare/run.sh r3
#
# Installs nats-server from Debian if it is missing, builds the JetStream driver
# (benches/compare/nats-bench, async-nats) and `weir` (release), runs everything on 127.0.0.1
# with free ports and a temporary data directory, and stops every process it started and removes
# the directory on exit, failure or Ctrl-C. See "Comparison with NATS JetStream" in
# benches/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: benches/compare/run.sh [--json] [r3] [r1] [tls] [kafka]
  r3   3 nodes: JetStream stream with 3 replicas vs Weir replication factor 3, acks=all
  r1   1 node:  JetStream R1 on a single server vs `weir local --nodes 1`, replication factor 1
  tls  Weir only, 3 nodes RF 3: plaintext, then `weir local --secure` (TLS to clients, mutual
       TLS between nodes, token authentication, ACLs); the publish ratio TLS / plaintext
  kafka Weir only, 3 nodes RF 3: `weir bench` over gRPC, then the same workload over the Kafka
       listener with librdkafka (confluent-kafka, benches/compare/kafka_bench.py, in a venv);
       the publish ratio Kafka / gRPC
  (default: r3 and r1)
environment (defaults in brackets):
  DURATION [20]       measured seconds        WARMUP [5]         warm-up seconds, not measured
  MESSAGE_SIZE [1024] bytes per message       PRODUCERS [4]      publishers / producers
  CONSUMERS [1]       consumers (0: none)     RATE [0]           total msgs/s, 0 = as fast as possible
  PARTITIONS [1]      Weir partitions         NATS_STREAMS [= PARTITIONS]  JetStream streams
  IN_FLIGHT [1M]      bytes per producer published but not yet acknowledged, at most: Weir's
                      --buffer-memory, and JetStream's async publish window in messages
                      (IN_FLIGHT / MESSAGE_SIZE). At RATE=0 this sets the publish latency.
  WEIR_BENCH_ARGS []  more `weir bench` options (e.g. "--batch-size 16K --linger-ms 1")
  RESULTS_DIR [target/compare/<UTC time>]     where JSON results and logs are kept
  WORK_DIR_PARENT [${TMPDIR:-/tmp}]           parent of the temporary data directory
  KEEP_WORK_DIR [0]   1 keeps the temporary data directory (for debugging)
  NO_BUILD [0]        1 uses the existing binaries without running cargo
  SYSTEMS ["nats weir"]  run only one side with "nats" or "weir" (the other shows as -)
EOF
}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

JSON=0
SCENARIOS=()
for arg in "$@"; do
    case "$arg" in
        --json) JSON=1 ;;
        r1 | r3 | tls | kafka) SCENARIOS+=("$arg") ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(r3 r1)

DURATION=${DURATION:-20}
WARMUP=${WARMUP:-5}
MESSAGE_SIZE=${MESSAGE_SIZE:-1024}
PRODUCERS=${PRODUCERS:-4}
CONSUMERS=${CONSUMERS:-1}
RATE=${RATE:-0}
PARTITIONS=${PARTITIONS:-1}
NATS_STREAMS=${NATS_STREAMS:-$PARTITIONS}
IN_FLIGHT=${IN_FLIGHT:-1M}
WEIR_BENCH_ARGS=${WEIR_BENCH_ARGS:-}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/target/compare/$(date -u +%Y%m%dT%H%M%SZ)}
WORK_DIR_PARENT=${WORK_DIR_PARENT:-${TMPDIR:-/tmp}}
KEEP_WORK_DIR=${KEEP_WORK_DIR:-0}
NO_BUILD=${NO_BUILD:-0}
case "$IN_FLIGHT" in
    *[Kk]) IN_FLIGHT_BYTES=$((${IN_FLIGHT%?} * 1024)) ;;
    *[Mm]) IN_FLIGHT_BYTES=$((${IN_FLIGHT%?} * 1048576)) ;;
    *) IN_FLIGHT_BYTES=$((IN_FLIGHT)) ;;
esac
NATS_WINDOW=$((IN_FLIGHT_BYTES / MESSAGE_SIZE))
[ "$NATS_WINDOW" -ge 1 ] || NATS_WINDOW=1
SYSTEMS=${SYSTEMS:-nats weir}
has_system() { case " $SYSTEMS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

NATS_BENCH=$HERE/nats-bench/target/release/nats-bench
WEIR=$ROOT/target/release/weir

log() { printf '[compare %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Processes and cleanup. Every server runs in its own process group (setsid), so stopping it
# also stops anything it started (weir local's nodes). Only these recorded ids are signalled.
PGIDS=()
WORK=""
LOADS=()
loadavg() { cut -d' ' -f1 /proc/loadavg; }

stop_group() { # pgid [seconds before SIGKILL]
    local pgid=$1 grace=${2:-20} i
    kill -0 -- "-$pgid" 2>/dev/null || return 0
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 -- "-$pgid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "process group $pgid did not stop within ${grace}s; killing it"
    kill -KILL -- "-$pgid" 2>/dev/null || true
}

stop_all() {
    local pgid
    for pgid in "${PGIDS[@]}"; do stop_group "$pgid"; done
    PGIDS=()
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_all
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$status" -ne 0 ] && [ -d "$RESULTS_DIR" ]; then
            # Keep the servers' logs of a failed run next to the results.
            mkdir -p "$RESULTS_DIR/logs"
            (cd "$WORK" && find . -name '*.log' -size -64M -exec cp --parents {} "$RESULTS_DIR/logs/" \;) 2>/dev/null || true
            log "server logs kept in $RESULTS_DIR/logs"
        fi
        if [ "$KEEP_WORK_DIR" = 1 ]; then
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# start_bg LOG COMMAND...: runs COMMAND in a new process group, output to LOG.
start_bg() {
    local logfile=$1
    shift
    setsid "$@" >"$logfile" 2>&1 </dev/null &
    PGIDS+=("$!")
}

# ---------------------------------------------------------------------------------------------
# Ports: N consecutive free TCP ports on 127.0.0.1, below the ephemeral range.
port_in_use() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

free_ports() { # count -> prints the first port
    local count=$1 attempt base p ok
    for ((attempt = 0; attempt < 100; attempt++)); do
        base=$((20000 + RANDOM % 12000))
        ok=1
        for ((p = base; p < base + count; p++)); do
            if port_in_use "$p"; then ok=0; break; fi
        done
        if [ "$ok" = 1 ]; then echo "$base"; return 0; fi
    done
    die "found no $count consecutive free ports"
}

http_get() { # port path -> body on stdout, fails unless HTTP 200
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 2 "http://127.0.0.1:$1$2"
    else
        local response
        response=$(exec 3<>"/dev/tcp/127.0.0.1/$1" &&
            printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3 &&
            timeout 2 cat <&3) || return 1
        case "$response" in "HTTP/1."?" 200"*) printf '%s' "${response#*$'\r\n\r\n'}" ;; *) return 1 ;; esac
    fi
}

wait_for() { # seconds description command...: polls until the command succeeds
    local seconds=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then die "timed out after ${seconds}s waiting for $what"; fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------------
# Setup: nats-server, the driver, weir.
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

install_nats_server() {
    if command -v nats-server >/dev/null 2>&1; then return 0; fi
    command -v apt-get >/dev/null 2>&1 ||
        die "nats-server is not installed and there is no apt-get; install nats-server 2.9+ and retry"
    log "installing nats-server from Debian (apt-get install nats-server)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >&2
    command -v nats-server >/dev/null 2>&1 || die "nats-server is still missing after apt-get install"
}

build() {
    # The driver also prints the summary, so it is built even for SYSTEMS=weir (not for tls or
    # kafka alone, which compare Weir with itself).
    if [ "$NEEDS_NATS" = 0 ]; then
        :
    elif [ "$NO_BUILD" != 1 ]; then
        log "building the JetStream driver (benches/compare/nats-bench)"
        (cd "$HERE/nats-bench" && cargo build --release --locked -q) >&2
    fi
    [ "$NEEDS_NATS" = 0 ] || [ -x "$NATS_BENCH" ] || die "$NATS_BENCH is missing"
    has_system weir || return 0
    if [ "$NO_BUILD" != 1 ]; then
        log "building weir (cargo build --release -p weir)"
        (cd "$ROOT" && cargo build --release -p weir -q) >&2
    fi
    "$WEIR" bench --help >/dev/null 2>&1 || die "$WEIR has no 'bench' subcommand"
}

# ---------------------------------------------------------------------------------------------
# NATS JetStream.
nats_healthy() { http_get "$1" /healthz | grep -q '"ok"'; }

# start_nats NODES: writes a config per node, starts them, waits for /healthz on each.
NATS_URLS=""
start_nats() {
    local nodes=$1 base i dir routes=""
    base=$(free_ports $((3 * nodes)))
    # Ports: clients base.., cluster routes base+nodes.., monitoring base+2*nodes..
    for ((i = 1; i <= nodes; i++)); do
        routes+="${routes:+, }nats-route://127.0.0.1:$((base + nodes + i - 1))"
    done
    NATS_URLS=""
    for ((i = 1; i <= nodes; i++)); do
        dir=$WORK/nats-$nodes/n$i
        mkdir -p "$dir/js"
        {
            echo "server_name: n$i"
            echo "listen: 127.0.0.1:$((base + i - 1))"
            echo "http: 127.0.0.1:$((base + 2 * nodes + i - 1))"
            echo "jetstream { store_dir: \"$dir/js\" }"
            if [ "$nodes" -gt 1 ]; then
                echo "cluster {"
                echo "  name: weir-compare"
                echo "  listen: 127.0.0.1:$((base + nodes + i - 1))"
                echo "  routes: [ $routes ]"
                echo "}"
            fi
        } >"$dir/nats.conf"
        start_bg "$dir/server.log" nats-server -c "$dir/nats.conf"
        NATS_URLS+="${NATS_URLS:+,}nats://127.0.0.1:$((base + i - 1))"
    done
    for ((i = 1; i <= nodes; i++)); do
        # /healthz is 200 once the server takes connections and, clustered, JetStream has a
        # meta leader and this server is current with it.
        wait_for 60 "nats-server n$i /healthz" nats_healthy "$((base + 2 * nodes + i - 1))"
    done
    log "nats-server $(nats-server --version | sed 's/^nats-server: //'): $nodes node(s) ready at $NATS_URLS"
}

run_nats() { # scenario replicas nodes
    local scenario=$1 replicas=$2 nodes=$3 out=$RESULTS_DIR/nats-$1.json
    start_nats "$nodes"
    log "JetStream $scenario: $PRODUCERS publisher(s), $CONSUMERS consumer(s), $NATS_STREAMS stream(s) R$replicas, ${MESSAGE_SIZE} B, ${WARMUP}s warm-up + ${DURATION}s"
    local load_before
    load_before=$(loadavg)
    "$NATS_BENCH" run --json --servers "$NATS_URLS" --streams "$NATS_STREAMS" --replicas "$replicas" \
        --message-size "$MESSAGE_SIZE" --producers "$PRODUCERS" --consumers "$CONSUMERS" \
        --rate "$RATE" --window "$NATS_WINDOW" --warmup "$WARMUP" --duration "$DURATION" >"$out" ||
        { rm -f "$out"; die "the JetStream run failed"; }
    LOADS+=("JetStream $scenario: 1-min load average $load_before before, $(loadavg) after")
    stop_all
    rm -rf "$WORK/nats-$nodes"
}

# ---------------------------------------------------------------------------------------------
# Weir.
weir_ready() { # brokers nodes [client options...]: every node listed alive
    local alive
    alive=$("$WEIR" cluster status --brokers "$1" --output json "${@:3}" 2>/dev/null | grep -c '"alive": true') || true
    [ "${alive:-0}" -ge "$2" ]
}

run_weir_tls() { # like `run_weir tls-plain 3 3`, on `weir local --secure` as its demo user
    local out=$RESULTS_DIR/weir-tls.json base brokers="" i dir=$WORK/weir-tls
    base=$(free_ports 3)
    for ((i = 0; i < 3; i++)); do brokers+="${brokers:+,}127.0.0.1:$((base + i))"; done
    mkdir -p "$dir"
    start_bg "$dir/local.log" "$WEIR" local --nodes 3 --secure --data-dir "$dir" --base-port "$base"
    wait_for 90 "the secure cluster's demo token" test -s "$dir/certs/demo.token"
    local tls=(--tls-ca "$dir/certs/ca.pem" --token "$(cat "$dir/certs/demo.token")")
    wait_for 60 "weir TLS cluster at $brokers" weir_ready "$brokers" 3 "${tls[@]}"
    log "Weir TLS: 3 nodes, TLS and mutual TLS, token authentication and ACLs; same workload as tls-plain"
    local load_before extra
    read -r -a extra <<<"$WEIR_BENCH_ARGS"
    load_before=$(loadavg)
    "$WEIR" bench --json --brokers "$brokers" "${tls[@]}" --topics 1 --partitions "$PARTITIONS" \
        --replication-factor 3 --message-size "$MESSAGE_SIZE" --producers "$PRODUCERS" \
        --consumers "$CONSUMERS" --rate "$RATE" --warmup "$WARMUP" --duration "$DURATION" \
        --acks all --buffer-memory "$IN_FLIGHT_BYTES" ${extra[@]+"${extra[@]}"} >"$out" ||
        { rm -f "$out"; die "the Weir TLS run failed"; }
    LOADS+=("Weir tls: 1-min load average $load_before before, $(loadavg) after")
    stop_all
    rm -rf "$dir"
}

ratio_summary() { # json|text base.json candidate.json target "base key" "candidate key" "text"
    # The publish rates of two runs and their ratio against a target; the text line is a Python
    # format string over base, candidate, ratio and verdict.
    python3 - "$@" <<'PY'
import json, sys
mode, base_file, cand_file, target, base_key, cand_key, text = sys.argv[1:8]
base, cand = (json.load(open(p))["publish"]["mb_per_s"] for p in (base_file, cand_file))
target = float(target)
ratio = cand / base if base else 0.0
if mode == "json":
    print(json.dumps({base_key: base, cand_key: cand, "ratio": round(ratio, 3),
                      "target": target, "met": ratio >= target}))
else:
    verdict = "met" if ratio >= target else "NOT met"
    print(text.format(base=base, cand=cand, ratio=ratio, target=target, verdict=verdict))
PY
}

tls_summary() { # the publish rates of tls-plain and tls, and their ratio (target >= 0.85)
    ratio_summary "$1" "$RESULTS_DIR/weir-tls-plain.json" "$RESULTS_DIR/weir-tls.json" 0.85 \
        plaintext_mb_per_s tls_mb_per_s \
        "tls: Weir RF 3 publish {base:.1f} MB/s plaintext, {cand:.1f} MB/s with TLS, mutual TLS and tokens: {ratio:.2f} of plaintext (target >= {target}: {verdict})"
}

kafka_python() { # a python with confluent-kafka: the tests' venv, made when missing
    local venv=$ROOT/target/kafka-clients/venv
    if ! "$venv/bin/python" -c 'import confluent_kafka' >/dev/null 2>&1; then
        log "creating $venv (confluent-kafka, kafka-python from PyPI)"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/tests/kafka/requirements.txt"
        cp "$ROOT/tests/kafka/requirements.txt" "$venv/weir-requirements.txt"
    fi
    printf '%s' "$venv/bin/python"
}

run_weir_kafka() { # like `run_weir kafka-grpc 3 3`, through the Kafka listener with librdkafka
    local out=$RESULTS_DIR/weir-kafka.json base kafka_base brokers="" bootstrap="" i dir=$WORK/weir-kafka python
    python=$(kafka_python)
    base=$(free_ports 3)
    kafka_base=$(free_ports 3)
    for ((i = 0; i < 3; i++)); do
        brokers+="${brokers:+,}127.0.0.1:$((base + i))"
        bootstrap+="${bootstrap:+,}127.0.0.1:$((kafka_base + i))"
    done
    mkdir -p "$dir"
    start_bg "$dir/local.log" "$WEIR" local --nodes 3 --data-dir "$dir" --base-port "$base" --kafka-base-port "$kafka_base"
    wait_for 60 "weir cluster at $brokers" weir_ready "$brokers" 3
    "$WEIR" topic create bench-kafka --brokers "$brokers" --partitions "$PARTITIONS" --replication-factor 3 >/dev/null
    wait_for 60 "every Kafka listener in the metadata" \
        sh -c "\"$WEIR\" cluster status --brokers $brokers --output json | grep -c kafka_address | grep -qx 3"
    log "Weir kafka: $PRODUCERS librdkafka producer(s) (idempotent, uncompressed, linger 5 ms, 1 MB batches), $CONSUMERS consumer(s), same topic shape"
    local load_before
    load_before=$(loadavg)
    "$python" "$HERE/kafka_bench.py" --bootstrap "$bootstrap" --topic bench-kafka \
        --producers "$PRODUCERS" --consumers "$CONSUMERS" --message-size "$MESSAGE_SIZE" \
        --warmup "$WARMUP" --duration "$DURATION" --in-flight-bytes "$IN_FLIGHT_BYTES" >"$out" ||
        { rm -f "$out"; die "the Kafka run failed"; }
    LOADS+=("Weir kafka: 1-min load average $load_before before, $(loadavg) after")
    stop_all
    rm -rf "$dir"
}

kafka_summary() { # the publish rates of kafka-grpc and kafka, and their ratio (target >= 0.80)
    ratio_summary "$1" "$RESULTS_DIR/weir-kafka-grpc.json" "$RESULTS_DIR/weir-kafka.json" 0.80 \
        grpc_mb_per_s kafka_mb_per_s \
        "kafka: Weir RF 3 publish {base:.1f} MB/s through gRPC (weir bench), {cand:.1f} MB/s through the Kafka listener (librdkafka): {ratio:.2f} of gRPC (target >= {target}: {verdict})"
}

run_weir() { # scenario replication_factor nodes
    local scenario=$1 rf=$2 nodes=$3 out=$RESULTS_DIR/weir-$1.json base brokers="" i
    base=$(free_ports "$nodes")
    for ((i = 0; i < nodes; i++)); do brokers+="${brokers:+,}127.0.0.1:$((base + i))"; done
    mkdir -p "$WORK/weir-$nodes"
    # Default durability: fsync (fdatasync) before an append counts as durable.
    start_bg "$WORK/weir-$nodes/local.log" "$WEIR" local --nodes "$nodes" \
        --data-dir "$WORK/weir-$nodes" --base-port "$base"
    wait_for 60 "weir cluster at $brokers" weir_ready "$brokers" "$nodes"
    log "weir: $nodes node(s) ready at $brokers"
    log "Weir $scenario: $PRODUCERS producer(s), $CONSUMERS consumer(s), $PARTITIONS partition(s) RF $rf acks=all, ${MESSAGE_SIZE} B, ${WARMUP}s warm-up + ${DURATION}s"
    local load_before extra
    read -r -a extra <<<"$WEIR_BENCH_ARGS" # extra options, split on spaces
    load_before=$(loadavg)
    "$WEIR" bench --json --brokers "$brokers" --topics 1 --partitions "$PARTITIONS" \
        --replication-factor "$rf" --message-size "$MESSAGE_SIZE" --producers "$PRODUCERS" \
        --consumers "$CONSUMERS" --rate "$RATE" --warmup "$WARMUP" --duration "$DURATION" \
        --acks all --buffer-memory "$IN_FLIGHT_BYTES" ${extra[@]+"${extra[@]}"} >"$out" ||
        { rm -f "$out"; die "the Weir run failed"; }
    LOADS+=("Weir $scenario: 1-min load average $load_before before, $(loadavg) after")
    stop_all
    rm -rf "$WORK/weir-$nodes"
}

# ---------------------------------------------------------------------------------------------
mkdir -p "$RESULTS_DIR" "$WORK_DIR_PARENT"
WORK=$(mktemp -d "$WORK_DIR_PARENT/weir-compare.XXXXXX")
FS_TYPE=$(df -PT "$WORK" | awk 'NR == 2 { print $2 }')
[ "$FS_TYPE" = tmpfs ] && log "warning: $WORK is on tmpfs: fsync costs nothing there; set WORK_DIR_PARENT to a disk"

NEEDS_NATS=0
for scenario in "${SCENARIOS[@]}"; do case "$scenario" in tls | kafka) ;; *) NEEDS_NATS=1 ;; esac; done
[ "$NEEDS_NATS" = 0 ] && SYSTEMS=weir
has_system nats && install_nats_server
build
NATS_VERSION=$( (nats-server --version 2>/dev/null || echo '?') | sed 's/^nats-server: v\{0,1\}//')
log "results go to $RESULTS_DIR; data in $WORK ($FS_TYPE)"

for scenario in "${SCENARIOS[@]}"; do
    case "$scenario" in
        r3) if has_system nats; then run_nats r3 3 3; fi; if has_system weir; then run_weir r3 3 3; fi ;;
        r1) if has_system nats; then run_nats r1 1 1; fi; if has_system weir; then run_weir r1 1 1; fi ;;
        tls) run_weir tls-plain 3 3; run_weir_tls ;;
        kafka) run_weir kafka-grpc 3 3; run_weir_kafka ;;
    esac
done

# ---------------------------------------------------------------------------------------------
# Report.
MACHINE="$(nproc) vCPU, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr), data on $FS_TYPE"
ASYNC_NATS=$(grep -A1 '^name = "async-nats"' "$HERE/nats-bench/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')
case "$NATS_VERSION" in
    2.9.*) NATS_NOTE="" ;;
    *) NATS_NOTE=" (This describes nats-server 2.9; the server run here is $NATS_VERSION: check its sync_interval.)" ;;
esac
DURABILITY="Durability differs. Weir (default durability 'always') acknowledges a record only after \
fdatasync; with acks=all a majority of the replicas has it on disk. nats-server 2.9 \
JetStream never fsyncs per message: each message is written to the stream's block file (the OS \
page cache) before the ack, and the files are fsynced only by a timer, every 2 minutes (the \
Raft log of a replicated stream every 5 minutes); not even a clean stop fsyncs. An R3 ack means \
a majority has written the message to its files, in memory, not on disk: a power loss of the \
whole cluster (or of an R1 server) can lose the last minutes of acknowledged messages. nats-server 2.10 and later \
can be set to fsync before every ack ('jetstream { sync_interval: always }').$NATS_NOTE"

if [ "$JSON" = 1 ]; then
    {
        printf '{"date":"%s","machine":"%s","nats_server":"%s","async_nats":"%s",' \
            "$(date -u +%FT%TZ)" "$MACHINE" "$NATS_VERSION" "$ASYNC_NATS"
        printf '"settings":{"duration_s":%s,"warmup_s":%s,"message_size":%s,"producers":%s,"consumers":%s,"rate":%s,"partitions":%s,"nats_streams":%s,"in_flight_bytes":%s,"nats_window":%s},' \
            "$DURATION" "$WARMUP" "$MESSAGE_SIZE" "$PRODUCERS" "$CONSUMERS" "$RATE" "$PARTITIONS" "$NATS_STREAMS" "$IN_FLIGHT_BYTES" "$NATS_WINDOW"
        printf '"results_dir":"%s","scenarios":{' "$RESULTS_DIR"
        sep=""
        for scenario in "${SCENARIOS[@]}"; do
            printf '%s"%s":' "$sep" "$scenario"
            if [ "$scenario" = tls ]; then
                tls_summary json | tr -d '\n'
            elif [ "$scenario" = kafka ]; then
                kafka_summary json | tr -d '\n'
            else
                "$NATS_BENCH" summary --json --label "$scenario" \
                    --weir "$RESULTS_DIR/weir-$scenario.json" --nats "$RESULTS_DIR/nats-$scenario.json" | tr -d '\n'
            fi
            sep=","
        done
        printf '},"load_average":['
        sep=""
        for line in "${LOADS[@]}"; do printf '%s"%s"' "$sep" "$line"; sep=","; done
        printf '],"durability":"%s"}\n' "$DURABILITY"
    } | tee "$RESULTS_DIR/summary.json"
else
    {
        echo "Weir vs NATS JetStream — $(date -u +%FT%TZ), $MACHINE"
        echo "nats-server $NATS_VERSION, async-nats $ASYNC_NATS; weir $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
        echo "${MESSAGE_SIZE} B messages, $PRODUCERS producer(s), $CONSUMERS consumer(s), rate ${RATE} (0 = max), ${WARMUP}s warm-up + ${DURATION}s measured;"
        echo "at most $IN_FLIGHT_BYTES bytes unacknowledged per producer (Weir --buffer-memory; JetStream $NATS_WINDOW async publishes);"
        echo "Weir: $PARTITIONS partition(s), acks=all, fsync before ack; JetStream: $NATS_STREAMS file stream(s), no fsync before ack"
        for scenario in "${SCENARIOS[@]}"; do
            echo
            case "$scenario" in
                r3) label="r3: 3 nodes, 3 replicas (JetStream R3, Weir RF 3 acks=all)" ;;
                r1) label="r1: 1 node (JetStream R1 single server, Weir RF 1)" ;;
                tls) tls_summary text; continue ;;
                kafka) kafka_summary text; continue ;;
            esac
            "$NATS_BENCH" summary --label "$label" \
                --weir "$RESULTS_DIR/weir-$scenario.json" --nats "$RESULTS_DIR/nats-$scenario.json"
        done
        echo
        echo "Other load on the machine (the runs' own processes included):"
        printf '  %s\n' "${LOADS[@]}"
        echo
        echo "$DURABILITY" | fold -s -w 100
        echo
        echo "JSON results: $RESULTS_DIR"
    } | tee "$RESULTS_DIR/summary.txt"
fi
