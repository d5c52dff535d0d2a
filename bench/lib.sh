# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source this file
# Shared pieces of the proxy benchmarks; sourced by proxy-compare.sh and
# profile.sh, not run on its own.
#
# Provides: package installation, the weir build, a temp work dir with a trap
# that stops every process started here, pinned process start-up, the static
# upstream (nginx), the three proxies under test (nginx, HAProxy, weir) with
# one worker each, readiness checks and a time-bounded wrk run.
#
# Everything listens on 127.0.0.1 only. The system nginx/HAProxy services and
# their configs are never used: binaries run directly against configs written
# into the work dir.

BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_NAME="${BENCH_NAME:-bench}"
BODY='hello, world'

log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# bench_cmdline VAR... -- ARGV...: the command as typed, with the given
# environment knobs that were set.
bench_cmdline() {
    local out="" v
    while [[ $# -gt 0 && "$1" != "--" ]]; do
        if [[ -n "${!1+x}" ]]; then out+="$1=$(shell_quote "${!1}") "; fi
        shift
    done
    shift
    out+="$(shell_quote "$1")"; shift
    for v in "$@"; do out+=" $(shell_quote "$v")"; done
    printf '%s' "$out"
}
# shell_quote WORD: WORD as it would be typed (bare when safe, else "double-quoted").
shell_quote() {
    if [[ "$1" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then
        printf '%s' "$1"
    else
        local q="${1//\\/\\\\}"; q="${q//\"/\\\"}"; q="${q//\$/\\\$}"; q="${q//\`/\\\`}"
        printf '"%s"' "$q"
    fi
}

# bench_common_settings: defaults and checks for the knobs every script shares.
bench_common_settings() {
    DURATION="${DURATION:-10}"
    CONNECTIONS="${CONNECTIONS:-64}"
    PATH_TO_GET="${PATH_TO_GET:-/}"
    WARMUP="${WARMUP:-2}"
    PROXY_CPU="${PROXY_CPU:-0}"
    LOAD_CPU="${LOAD_CPU:-1}"
    NICE="${NICE:-0}"
    [[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 ]] || die "DURATION must be a positive integer (seconds)"
    [[ "$CONNECTIONS" =~ ^[0-9]+$ && "$CONNECTIONS" -ge 1 ]] || die "CONNECTIONS must be a positive integer"
    [[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer (seconds)"
    [[ "$PATH_TO_GET" == /* ]] || die "PATH_TO_GET must start with /"
    [[ "$NICE" =~ ^-?[0-9]+$ ]] || die "NICE must be an integer (-20..19)"
    if [[ "$(nproc)" -lt 2 && "$LOAD_CPU" == "1" ]]; then
        log "warning: only $(nproc) core available; load and proxies share core 0"
        LOAD_CPU=0
    fi
    MODEL="$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
    MODEL="${MODEL:-unknown}"
    PCPU="${PROXY_CPU%%[,-]*}"   # the core whose busy share is reported
    LCPU="${LOAD_CPU%%[,-]*}"
}

# ---------------------------------------------------------------- packages
APT_UPDATED=0
PATH="$PATH:/usr/sbin:/sbin"
need_pkg() { # need_pkg COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || die "'$1' is missing and apt-get is not available; install '$2'"
    local sudo=""
    [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
    if [[ "$APT_UPDATED" -eq 0 ]]; then
        log "apt-get update"
        $sudo apt-get update -qq
        APT_UPDATED=1
    fi
    log "installing $2"
    # The packages' own services are never started or used by these scripts.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2" >/dev/null
    command -v "$1" >/dev/null 2>&1 || die "installed '$2' but '$1' is still not on PATH"
}

# need_tools PROXY...: everything the given proxies plus the upstream and load need.
need_tools() {
    need_pkg nginx nginx-light      # the upstream is always nginx
    need_pkg wrk wrk
    need_pkg curl curl
    need_pkg taskset util-linux
    need_pkg setsid util-linux
    if [[ " $* " == *" haproxy "* ]]; then need_pkg haproxy haproxy; fi
    NGINX_BIN="$(command -v nginx)"
    HAPROXY_BIN="$(command -v haproxy || true)"
    WRK_BIN="$(command -v wrk)"
}

# ensure_weir: set WEIR_BIN, building weir in release mode unless it is set.
ensure_weir() {
    if [[ -z "${WEIR_BIN:-}" ]]; then
        command -v cargo >/dev/null 2>&1 || die "cargo not found; set WEIR_BIN to a weir binary"
        log "building weir: cargo build --release --bin weir${CARGO_TARGET_DIR:+ (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)}"
        (cd "$BENCH_ROOT" && cargo build --release --bin weir) \
            || die "weir failed to build; set WEIR_BIN or leave weir out of PROXIES"
        local target
        target="$(cd "$BENCH_ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
            | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
        WEIR_BIN="${target:-${CARGO_TARGET_DIR:-$BENCH_ROOT/target}}/release/weir"
        [[ "$WEIR_BIN" == /* ]] || WEIR_BIN="$BENCH_ROOT/$WEIR_BIN"
    fi
    [[ -x "$WEIR_BIN" ]] || die "WEIR_BIN '$WEIR_BIN' is not an executable file"
}

# ------------------------------------------------------- processes/cleanup
WRK_PID=""            # the wrk run in flight, if any
STARTED_PIDS=()       # each is the leader of its own process group (setsid)
EXTRA_PIDS=()         # other helpers to stop (e.g. perf), by pid
declare -A PID_OF=() PORT_OF=() LOG_OF=() ADMIN_OF=()

# bench_workdir: make the temp work dir and install the cleanup trap.
# $RESULTS_DIR (if it exists by then) receives the configs and logs.
bench_workdir() {
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/weir-$BENCH_NAME.XXXXXX")"
    chmod 755 "$WORK"   # nginx workers drop to an unprivileged user when run as root
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in ${WRK_PID:+"$WRK_PID"} "${EXTRA_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    local deadline=$((SECONDS + 5))
    for pid in "${STARTED_PIDS[@]}"; do
        while kill -0 -- "-$pid" 2>/dev/null && [[ $SECONDS -lt $deadline ]]; do sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    # Keep the configs and logs next to the results before dropping the work dir.
    if [[ -n "${RESULTS_DIR:-}" && -d "$RESULTS_DIR" && -n "${WORK:-}" && -d "$WORK" ]]; then
        mkdir -p "$RESULTS_DIR/conf"
        find "$WORK" -maxdepth 3 -type f \( -name '*.conf' -o -name '*.cfg' -o -name '*.yaml' -o -name '*.log' \) \
            -exec cp {} "$RESULTS_DIR/conf/" \; 2>/dev/null || true
    fi
    if [[ -n "${WORK:-}" ]]; then rm -rf "$WORK"; fi
    exit "$rc"
}

# prio CMD...: run CMD with niceness $NICE. Every process started here gets
# its own session, and with kernel.sched_autogroup_enabled=1 the session's
# autogroup weight is what competes with other sessions, so that is set too.
prio() {
    if [[ "$NICE" == 0 ]]; then exec "$@"; fi
    echo "$NICE" >/proc/self/autogroup 2>/dev/null || true
    exec nice -n "$NICE" "$@"
}
export -f prio

# start NAME CPU LOGFILE CMD...: run CMD pinned to CPU in its own session and
# process group.
start() {
    local name="$1" cpu="$2" logf="$3"; shift 3
    NICE="$NICE" setsid bash -c 'prio "$@"' prio taskset -c "$cpu" "$@" >"$logf" 2>&1 </dev/null &
    local pid=$!
    STARTED_PIDS+=("$pid")
    PID_OF[$name]=$pid
}

# free_port: set FREE_PORT to a loopback port nothing answers on (and not handed out before).
USED_PORTS=" "
FREE_PORT=""
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            FREE_PORT="$p"
            return 0
        fi
    done
    die "no free port found"
}

# wait_ready NAME PORT LOGFILE: curl with retries until a 200 with the
# expected body, within a 20 s deadline; fails early if the process died.
wait_ready() {
    local name="$1" port="$2" logf="$3" deadline=$((SECONDS + 20)) out=""
    while [[ $SECONDS -lt $deadline ]]; do
        if ! kill -0 "${PID_OF[$name]}" 2>/dev/null; then
            log "$name exited during start-up; its output:"; sed 's/^/    /' "$logf" >&2 || true
            die "$name did not start"
        fi
        if out="$(curl -sS --max-time 1 -H "$BENCH_HEADER" -o - -w '\n%{http_code}' "http://127.0.0.1:$port$PATH_TO_GET" 2>/dev/null)"; then
            if [[ "$out" == "$BODY"$'\n\n200' ]]; then return 0; fi
        fi
        sleep 0.2
    done
    log "$name did not answer 200 '$BODY' on 127.0.0.1:$port$PATH_TO_GET within 20 s; last answer: ${out:-none}"
    log "its output:"; sed 's/^/    /' "$logf" >&2 || true
    die "$name not ready"
}

nginx_temp_paths() { # temp dirs for every compiled-in module, all under $1
    local d="$1" flags
    flags="$("$NGINX_BIN" -V 2>&1)"
    printf '    client_body_temp_path %s/client_body;\n' "$d"
    printf '    proxy_temp_path %s/proxy;\n' "$d"
    [[ "$flags" == *without-http_fastcgi_module* ]] || printf '    fastcgi_temp_path %s/fastcgi;\n' "$d"
    [[ "$flags" == *without-http_uwsgi_module* ]] || printf '    uwsgi_temp_path %s/uwsgi;\n' "$d"
    [[ "$flags" == *without-http_scgi_module* ]] || printf '    scgi_temp_path %s/scgi;\n' "$d"
}

# ---------------------------------------------------------------- upstream
# start_upstream: the static responder every proxy forwards to (nginx, one
# worker, pinned with the load generator); sets UP_PORT.
start_upstream() {
    free_port; UP_PORT="$FREE_PORT"
    local d="$WORK/upstream"; mkdir -p "$d/logs" "$d/tmp"
    cat >"$d/upstream-nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/logs/upstream-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
$(nginx_temp_paths "$d/tmp")
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$UP_PORT;
        location / {
            default_type text/plain;
            return 200 "$BODY\n";
        }
    }
}
EOF
    log "starting upstream nginx on 127.0.0.1:$UP_PORT (core $LOAD_CPU)"
    start upstream "$LOAD_CPU" "$d/logs/upstream-stderr.log" \
        "$NGINX_BIN" -p "$d" -e "$d/logs/upstream-error.log" -c "$d/upstream-nginx.conf" -g 'daemon off;'
    wait_ready upstream "$UP_PORT" "$d/logs/upstream-stderr.log"
}

# ----------------------------------------------------------------- proxies
# start_proxy NAME: write its config, start it pinned to PROXY_CPU with one
# worker, wait until it answers through to the upstream.
start_proxy() {
    local p="$1"
    "setup_${p//-/_}"
    log "starting $p on 127.0.0.1:${PORT_OF[$p]} (core $PROXY_CPU)"
    wait_ready "$p" "${PORT_OF[$p]}" "${LOG_OF[$p]}"
}

setup_nginx() {
    local d="$WORK/nginx" port; free_port; port="$FREE_PORT"
    mkdir -p "$d/logs" "$d/tmp"
    cat >"$d/proxy-nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/logs/proxy-nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
$(nginx_temp_paths "$d/tmp")
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream bench {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    PORT_OF[nginx]=$port; LOG_OF[nginx]="$d/logs/proxy-nginx-stderr.log"
    start nginx "$PROXY_CPU" "${LOG_OF[nginx]}" \
        "$NGINX_BIN" -p "$d" -e "$d/logs/proxy-nginx-error.log" -c "$d/proxy-nginx.conf" -g 'daemon off;'
}

setup_haproxy() {
    local d="$WORK/haproxy" port; free_port; port="$FREE_PORT"
    mkdir -p "$d/logs"
    # No `log` lines anywhere: logging is off.
    cat >"$d/proxy-haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:$port
    default_backend be

backend be
    server up 127.0.0.1:$UP_PORT
EOF
    PORT_OF[haproxy]=$port; LOG_OF[haproxy]="$d/logs/proxy-haproxy-stderr.log"
    "$HAPROXY_BIN" -c -q -f "$d/proxy-haproxy.cfg" || die "HAProxy rejected its config"
    start haproxy "$PROXY_CPU" "${LOG_OF[haproxy]}" "$HAPROXY_BIN" -db -f "$d/proxy-haproxy.cfg"
}

setup_weir() { setup_weir_named weir ""; }

# Variants of weir under the same load, for overhead figures:
#   weir-nometrics  metrics off (the default has them on)
#   weir-t1         tracing at 1% sampling, exporting to a live OTLP receiver
#   weir-t100       tracing at 100% sampling, exporting to a live OTLP receiver
setup_weir_nometrics() { setup_weir_named weir-nometrics "observability: {metrics: {enabled: false}}"; }
setup_weir_t1() { ensure_otlp weir-t1; setup_weir_named weir-t1 "$(traced_yaml weir-t1 0.01)"; }
setup_weir_t100() { ensure_otlp weir-t100; setup_weir_named weir-t100 "$(traced_yaml weir-t100 1.0)"; }
# weir-mexport  metrics also pushed over OTLP/gRPC to a live receiver every
#               second (60x the default rate), tracing off
setup_weir_mexport() {
    ensure_otlp weir-mexport
    setup_weir_named weir-mexport "observability: {metrics: {otlp: {enabled: true, endpoint: \"http://127.0.0.1:${OTLP_PORT_OF[weir-mexport]}\", export_interval: 1s}}}"
}
# weir-plugins  the plugin chain ip-restriction + cors + proxy-rewrite set
#               globally (every request passes all three; key-auth joins the
#               chain once it is available)
setup_weir_plugins() { setup_weir_named weir-plugins "$(plugins_yaml)"; }

# weir-chain4   key-auth + ip-restriction + cors + proxy-rewrite, the chain
#               of the plugin issue's target. Every request (of every proxy,
#               so the load is the same) carries the key in BENCH_HEADER;
#               the consumer stores its SHA-256.
BENCH_HEADER="apikey: bench-key-0123456789"
setup_weir_chain4() {
    local sha
    sha="$(printf %s "${BENCH_HEADER#apikey: }" | sha256sum | cut -d' ' -f1)"
    setup_weir_named weir-chain4 "$(plugins_yaml | sed 's/^plugins:$/plugins:\n  key-auth: {}/')
consumers: [{name: bench, credentials: {key-auth: [{key_sha256: $sha}]}}]"
}
# weir-limit    limit-count on one hot key shared by every request (key:
#               [route]) with a count no run reaches: the cost of counting,
#               never a 429; admitted answers carry the RateLimit-* headers
setup_weir_limit() {
    setup_weir_named weir-limit "plugins:
  limit-count: {count: 1000000000000, time_window: 1h, key: [route]}"
}

# weir-limit-cluster  the same count shared with `scope: cluster` by a
#               one-node cluster with a secret: the mesh runs, the node owns
#               the key, and every decision spends credit its own ledger
#               granted in the background (the request path of a shared
#               limit, without another node's CPU on this machine)
setup_weir_limit_cluster() {
    local secret_file="$WORK/cluster.secret"
    printf 'bench-cluster-secret-0123456789abcdef' >"$secret_file"
    setup_weir_named weir-limit-cluster "plugins:
  limit-count: {count: 1000000000000, time_window: 1h, key: [route], scope: cluster}
cluster: {name: bench, node_id: bench-0, gossip_listen: \"127.0.0.1:0\", mesh_listen: \"127.0.0.1:0\", secret_file: \"$secret_file\"}"
}
# weir-limit-redis  the same count in Redis with `sync: per_request`: one
#               Redis round trip per request, the anchor design; a
#               redis-server is started pinned with the load
setup_weir_limit_redis() {
    ensure_redis
    setup_weir_named weir-limit-redis "redis: {urls: [\"redis://127.0.0.1:$REDIS_PORT\"]}
plugins:
  limit-count: {count: 1000000000000, time_window: 1h, key: [route], store: redis, sync: per_request}"
}
# weir-limit-redis-credit  the same count in Redis by credit (the default
#               sync): no Redis call on the request path
setup_weir_limit_redis_credit() {
    ensure_redis
    setup_weir_named weir-limit-redis-credit "redis: {urls: [\"redis://127.0.0.1:$REDIS_PORT\"]}
plugins:
  limit-count: {count: 1000000000000, time_window: 1h, key: [route], store: redis}"
}
REDIS_PORT=""
ensure_redis() {
    [[ -n "$REDIS_PORT" ]] && return 0
    need_pkg redis-server redis-server
    free_port; REDIS_PORT="$FREE_PORT"
    mkdir -p "$WORK/redis"
    start redis "$LOAD_CPU" "$WORK/redis/redis.log" redis-server --port "$REDIS_PORT" \
        --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK/redis"
    local deadline=$((SECONDS + 20))
    until (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; do
        [[ $SECONDS -lt $deadline ]] || die "redis-server not listening within 20 s"
        sleep 0.1
    done
}

# weir-cache    proxy-cache on every route with a 1h ttl (the upstream sends
#               no freshness): after the warm-up every request is a HIT,
#               answered from memory without touching the upstream pool.
setup_weir_cache() { setup_weir_named weir-cache "plugins: {proxy-cache: {ttl: 1h}}"; }
plugins_yaml() {
    cat <<'EOF2'
plugins:
  ip-restriction: {allow: [127.0.0.0/8, "::1"], deny: [10.0.0.0/8]}
  cors: {allow_origins: ["https://app.example.com", "https://*.example.org"], allow_credentials: true, max_age: 10m}
  proxy-rewrite: {regex_uri: ["^/(.*)$", "/$1"], headers: {set: {x-bench: "1"}, remove: [x-debug]}}
EOF2
}
traced_yaml() { # traced_yaml NAME RATIO
    echo "observability: {tracing: {enabled: true, endpoint: \"http://127.0.0.1:${OTLP_PORT_OF[$1]}\", sample_ratio: $2}}"
}

# setup_weir_named NAME EXTRA_YAML: one weir with the shared proxy config
# plus EXTRA_YAML (top-level keys).
setup_weir_named() {
    local name="$1" extra="$2" d port admin; free_port; port="$FREE_PORT"; free_port; admin="$FREE_PORT"
    d="$WORK/$name"; mkdir -p "$d/logs"
    cat >"$d/proxy-$name.yaml" <<EOF
settings: {listen: "127.0.0.1:$port", admin_listen: "127.0.0.1:$admin", workers: 1}
upstreams: [{id: bench, targets: [{addr: "127.0.0.1:$UP_PORT"}]}]
routes: [{id: all, paths: ["/*"], upstream: bench}]
$extra
EOF
    PORT_OF[$name]=$port; ADMIN_OF[$name]=$admin; LOG_OF[$name]="$d/logs/proxy-$name-stderr.log"
    start "$name" "$PROXY_CPU" "${LOG_OF[$name]}" env WEIR_LOG=warn "$WEIR_BIN" serve --config "$d/proxy-$name.yaml"
}

# ensure_otlp NAME: start a counting OTLP/gRPC receiver for the traced
# variant NAME, pinned with the load (sets OTLP_PORT_OF[NAME]). One receiver
# per variant, so each variant's span count can be checked against the
# requests it served. Built from the workspace unless OTLP_BIN is set.
declare -A OTLP_PORT_OF=() OTLP_LOG_OF=()
ensure_otlp() {
    local name="$1"
    [[ -n "${OTLP_PORT_OF[$name]:-}" ]] && return 0
    if [[ -z "${OTLP_BIN:-}" ]]; then
        log "building the OTLP receiver: cargo build --release -p weir-testsupport --bin otlp-receiver"
        (cd "$BENCH_ROOT" && cargo build --release -q -p weir-testsupport --bin otlp-receiver) \
            || die "otlp-receiver failed to build; set OTLP_BIN"
        local target
        target="$(cd "$BENCH_ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
            | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
        OTLP_BIN="${target:-${CARGO_TARGET_DIR:-$BENCH_ROOT/target}}/release/otlp-receiver"
    fi
    [[ -x "$OTLP_BIN" ]] || die "OTLP_BIN '$OTLP_BIN' is not an executable file"
    free_port; OTLP_PORT_OF[$name]="$FREE_PORT"
    mkdir -p "$WORK/otlp"
    local logf="$WORK/otlp/otlp-receiver-$name.log"
    OTLP_LOG_OF[$name]="$logf"
    log "starting the OTLP receiver for $name on 127.0.0.1:${OTLP_PORT_OF[$name]} (core $LOAD_CPU)"
    start "otlp-$name" "$LOAD_CPU" "$logf" "$OTLP_BIN" "127.0.0.1:${OTLP_PORT_OF[$name]}"
    local deadline=$((SECONDS + 20))
    until grep -q '^listening' "$logf" 2>/dev/null; do
        kill -0 "${PID_OF[otlp-$name]}" 2>/dev/null || { sed 's/^/    /' "$logf" >&2; die "otlp-receiver exited"; }
        [[ $SECONDS -lt $deadline ]] || die "otlp-receiver not listening within 20 s"
        sleep 0.1
    done
}

# otlp_spans NAME: spans the receiver of NAME has counted so far (0 when none).
otlp_spans() {
    [[ -n "${OTLP_LOG_OF[$1]:-}" ]] || { echo 0; return; }
    awk '/^spans / {n = $2} END {print n + 0}' "${OTLP_LOG_OF[$1]}"
}

# metric_sum NAME METRIC: the sum over every label set of METRIC in the
# /metrics of weir variant NAME.
metric_sum() {
    curl -sS --max-time 5 "http://127.0.0.1:${ADMIN_OF[$1]}/metrics" \
        | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $NF} END {printf "%.0f\n", s}'
}

# span_check NAME [exact]: once the receiver of NAME has stopped counting
# (its count unchanged for 3 s, within 60 s), one line comparing the spans
# it received with the spans weir made: every request of the bench gives
# one SERVER and one CLIENT span (one route, one target that always
# answers, so no retries; a request wrk cancels at the end of a run still
# has both), so two per request served (`weir_http_server_requests_total`
# on the variant's /metrics), and the spans weir dropped. With `exact`
# (100% sampling) the two must be equal; otherwise the recorded share is
# shown.
span_check() {
    local name="$1" last=-1 now same=0 deadline=$((SECONDS + 60))
    while [[ $SECONDS -lt $deadline ]]; do
        now="$(otlp_spans "$name")"
        if [[ "$now" == "$last" ]]; then same=$((same + 1)); else same=0; fi
        [[ $same -ge 3 ]] && break
        last="$now"; sleep 1
    done
    local reqs dropped expected verdict
    reqs="$(metric_sum "$name" weir_http_server_requests_total)"
    dropped="$(metric_sum "$name" weir_trace_spans_dropped_total)"
    expected=$((2 * reqs))
    if [[ "${2:-}" != exact ]]; then
        verdict="$(awk -v a="$now" -v b="$expected" 'BEGIN {printf "%.2f%% of them recorded", b ? 100 * a / b : 0}')"
    elif [[ "$now" == "$expected" ]]; then verdict="all received"
    else verdict="MISMATCH: $((expected - now)) not received"; fi
    echo "$name: spans received $now; spans made $expected (2 x $reqs requests) -> $verdict; dropped by weir $dropped"
}

# worker_pids NAME: the pids doing the proxy work (nginx: the workers, not the master).
worker_pids() {
    local pid="${PID_OF[$1]}" kids
    if [[ "$1" == nginx ]]; then
        kids="$(ps -o pid= --ppid "$pid" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')"
        [[ -n "$kids" ]] && { echo "$kids"; return; }
    fi
    echo "$pid"
}

# --------------------------------------------------------------------- load
# run_wrk PORT SECONDS OUTFILE. wrk runs in the background and is waited for,
# so that INT/TERM interrupt the wait at once; `timeout` bounds it in any case.
run_wrk() {
    start_wrk "$@"
    wait_wrk "$3"
}
# start_wrk PORT SECONDS OUTFILE: start the load in the background (WRK_PID).
start_wrk() {
    timeout --kill-after=5 $(($2 + 30)) env NICE="$NICE" setsid bash -c 'prio "$@"' prio taskset -c "$LOAD_CPU" "$WRK_BIN" -t1 -c"$CONNECTIONS" -d"$2"s \
        --timeout 5s --latency -H "$BENCH_HEADER" "http://127.0.0.1:$1$PATH_TO_GET" >"$3" 2>&1 </dev/null &
    WRK_PID=$!
}
# wait_wrk OUTFILE: wait for the load started by start_wrk; fail if wrk did.
wait_wrk() {
    local rc=0
    wait "$WRK_PID" || rc=$?
    WRK_PID=""
    if [[ "$rc" -ne 0 ]]; then
        log "wrk failed (rc $rc); output:"; sed 's/^/    /' "$1" >&2; die "load run failed"
    fi
}

# proc_cpu_ticks NAME -> user+system clock ticks used so far by every process
# in the proxy's session (nginx: master and worker; all threads included).
proc_cpu_ticks() {
    local pid="${PID_OF[$1]}" p t=0 v
    for p in $(ps -o pid= -s "$pid" 2>/dev/null); do
        v="$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null)" || continue
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"
# export_cpu_ticks NAME -> clock ticks used so far by the trace export threads
# of a weir variant: the OTLP exporter's runtime (`weir-otlp-export`) and the
# SDK batch processor's thread (`OpenTelemetry.Traces.BatchProcessor`); thread
# names are cut to 15 characters in /proc.
export_cpu_ticks() {
    local pid="${PID_OF[$1]}" p f t=0 v
    for p in $(ps -o pid= -s "$pid" 2>/dev/null); do
        for f in /proc/"$p"/task/*/stat; do
            v="$(awk '/^[0-9]+ \((weir-otlp-expor|OpenTelemetry\.)/ {sub(/^.*\) /, ""); print $12 + $13}' "$f" 2>/dev/null)" || continue
            t=$((t + ${v:-0}))
        done
    done
    echo "$t"
}


# cpu_ticks CPU -> "busy total" jiffies of one core, from /proc/stat
cpu_ticks() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9 && i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
busy_pct() { # busy_pct B0 T0 B1 T1
    awk -v b=$(($3 - $1)) -v t=$(($4 - $2)) 'BEGIN {printf "%.0f", t ? 100 * b / t : 0}'
}

# to_ms VALUE_WITH_UNIT (as wrk prints it: 850.00us, 1.23ms, 1.02s, 1.00m) -> milliseconds
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "ms") n = n; else if (u == "s") n *= 1000;
        else if (u == "m") n *= 60000; else if (u == "h") n *= 3600000; else n = -1
        printf "%.3f\n", n }'
}

# wrk_field OUTFILE rps|p99|p50|errors|requests
wrk_field() {
    case "$2" in
        requests) awk '/ requests in / {print $1}' "$1" ;;
        rps) awk '/^Requests\/sec:/ {print $2}' "$1" ;;
        p99) awk '$1 == "99%" {print $2}' "$1" ;;
        p50) awk '$1 == "50%" {print $2}' "$1" ;;
        errors) awk '/Non-2xx or 3xx responses:/ {n += $NF}
                     /Socket errors:/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10}
                     END {print n + 0}' "$1" ;;
    esac
}

# machine_header: what ran where, for the top of every report.
machine_header() {
    echo "machine:   nproc=$(nproc), cpu=$MODEL, kernel=$(uname -r)"
    echo "pinning:   proxies on core $PROXY_CPU (one worker each), upstream nginx + wrk on core(s) $LOAD_CPU, nice $NICE"
    printf 'versions:  %s' "$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
    if [[ -n "${HAPROXY_BIN:-}" ]]; then printf ', haproxy/%s' "$("$HAPROXY_BIN" -v 2>/dev/null | awk 'NR == 1 {print $3}')"; fi
    printf ', wrk %s' "$("$WRK_BIN" -v 2>&1 | awk 'NR == 1 {print $2}')"
    if [[ -n "${WEIR_BIN:-}" ]]; then printf ', weir=%s' "$WEIR_BIN"; fi
    echo
}
