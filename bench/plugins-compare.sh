#!/usr/bin/env bash
# What the plugin pipeline costs: the same weir binary with a plain route
# and with plugin chains, and optionally a baseline binary (e.g. main's
# build) with the plain route, side by side in front of the same upstream.
#
# Every weir is pinned to the same core with one worker; the upstream nginx
# and wrk share the other core. Runs are interleaved (the order rotates
# every round) and medians over rounds are reported with ratios to `plain`.
#
# Usage:   bench/plugins-compare.sh
# Env:     WEIR_BIN=path        weir under test (default: cargo build --release)
#          WEIR_BASE_BIN=path   also run this binary with the plain route as `base`
#          VARIANTS="plain key-auth"  subset/order (base is added when WEIR_BASE_BIN is set)
#          DURATION=10 ROUNDS=3 CONNECTIONS=64 WARMUP=2 PROXY_CPU=0 LOAD_CPU=1 NICE=0 RESULTS_DIR=dir
#
# Variants: plain (no plugins), key-auth (the key in the query; hidden
# from the upstream), response-rewrite (one header set). The chain of the
# benchmark target (key-auth + ip-restriction + cors + proxy-rewrite) needs
# plugins this build does not have yet.
set -euo pipefail

export BENCH_NAME=plugins-compare
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CMDLINE="$(bench_cmdline VARIANTS DURATION ROUNDS CONNECTIONS WARMUP WEIR_BIN WEIR_BASE_BIN \
    PROXY_CPU LOAD_CPU NICE RESULTS_DIR CARGO_TARGET_DIR -- "$0" "$@")"
KEY="bench-key-0123456789"
PATH_TO_GET="/?apikey=$KEY"
ROUNDS="${ROUNDS:-3}"
bench_common_settings
PATH_TO_GET="/?apikey=$KEY"
VARIANTS="${VARIANTS:-plain key-auth response-rewrite}"
read -r -a ORDER <<<"$VARIANTS"
if [[ -n "${WEIR_BASE_BIN:-}" ]]; then
    [[ -x "$WEIR_BASE_BIN" ]] || die "WEIR_BASE_BIN '$WEIR_BASE_BIN' is not an executable file"
    ORDER=(base "${ORDER[@]}")
fi
for v in "${ORDER[@]}"; do
    case "$v" in base|plain|key-auth|response-rewrite) ;; *) die "unknown variant '$v'";; esac
done
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS_DIR="${RESULTS_DIR:-$BENCH_ROOT/bench/results/plugins-$STAMP}"
need_tools
ensure_weir

KEY_SHA="$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"

# Ports below the kernel's ephemeral range (32768+): on a busy machine a
# port that refuses connections may still be some client socket's local
# port, and binding it then fails.
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            FREE_PORT="$p"
            return 0
        fi
    done
    die "no free port found"
}

# setup_variant NAME: a weir for one variant.
setup_variant() {
    local v="$1" d="$WORK/$1" port admin bin="$WEIR_BIN" plugins="" consumers=""
    free_port; port="$FREE_PORT"; free_port; admin="$FREE_PORT"
    mkdir -p "$d/logs"
    case "$v" in
        base) bin="$WEIR_BASE_BIN" ;;
        key-auth)
            plugins=", plugins: {key-auth: {}}"
            consumers="consumers: [{name: bench, credentials: {key-auth: [{key_sha256: $KEY_SHA}]}}]" ;;
        response-rewrite) plugins=", plugins: {response-rewrite: {headers: {set: {x-bench: '1'}}}}" ;;
    esac
    cat >"$d/weir.yaml" <<YAML
settings: {listen: "127.0.0.1:$port", admin_listen: "127.0.0.1:$admin", workers: 1}
upstreams: [{id: bench, targets: [{addr: "127.0.0.1:$UP_PORT"}]}]
routes: [{id: all, paths: ["/*"], upstream: bench$plugins}]
$consumers
YAML
    PORT_OF[$v]=$port; LOG_OF[$v]="$d/logs/stderr.log"
    start "$v" "$PROXY_CPU" "${LOG_OF[$v]}" env WEIR_LOG=warn "$bin" serve --config "$d/weir.yaml"
    wait_ready "$v" "$port" "${LOG_OF[$v]}"
}

mkdir -p "$RESULTS_DIR/raw"
{
    echo "# plugins-compare $STAMP"
    echo "command:   $CMDLINE"
    echo "machine:   nproc=$(nproc), cpu=$MODEL, kernel=$(uname -r)"
    echo "pinning:   weir on core $PROXY_CPU (one worker each), upstream nginx + wrk on core(s) $LOAD_CPU"
    echo "load:      wrk -t1 -c$CONNECTIONS -d${DURATION}s http://127.0.0.1:PORT$PATH_TO_GET, warm-up ${WARMUP}s, $ROUNDS interleaved rounds"
} | tee "$RESULTS_DIR/header.txt"

bench_workdir
start_upstream
for v in "${ORDER[@]}"; do setup_variant "$v"; done

CSV="$RESULTS_DIR/runs.csv"
echo "round,variant,rps,p99_ms,errors,cpu_us_per_req" >"$CSV"
N=${#ORDER[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for ((i = 0; i < N; i++)); do
        v="${ORDER[$(((i + r - 1) % N))]}"
        port="${PORT_OF[$v]}"
        kill -0 "${PID_OF[$v]}" 2>/dev/null || die "$v is no longer running"
        if [[ "$WARMUP" -gt 0 ]]; then run_wrk "$port" "$WARMUP" "$RESULTS_DIR/raw/round$r-$v-warmup.txt"; fi
        out="$RESULTS_DIR/raw/round$r-$v.txt"
        c0="$(proc_cpu_ticks "$v")"
        run_wrk "$port" "$DURATION" "$out"
        c1="$(proc_cpu_ticks "$v")"
        rps="$(wrk_field "$out" rps)"; p99="$(wrk_field "$out" p99)"
        errs="$(wrk_field "$out" errors)"; reqs="$(wrk_field "$out" requests)"
        [[ -n "$rps" && -n "$p99" ]] || { sed 's/^/    /' "$out" >&2; die "could not parse wrk output for $v"; }
        uspr="$(awk -v c=$((c1 - c0)) -v hz="$CLK_TCK" -v n="${reqs:-0}" 'BEGIN {printf "%.2f", n ? 1e6 * c / hz / n : 0}')"
        echo "$r,$v,$rps,$(to_ms "$p99"),$errs,$uspr" >>"$CSV"
        printf '  round %d/%d  %-17s %10s req/s  p99 %9s  errors %s  %s us/req\n' "$r" "$ROUNDS" "$v" "$rps" "$p99" "$errs" "$uspr"
        [[ "$errs" == 0 ]] || log "warning: $v had $errs errors/non-2xx responses in round $r (see $out)"
    done
done

median() {
    sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
col() { awk -F, -v p="$1" -v c="$2" 'NR > 1 && $2 == p {print $c}' "$CSV" | median; }
PLAIN_RPS="$(col plain 3)"
{
    echo
    echo "| variant | req/s (median) | vs plain | p99 ms | CPU µs/req |"
    echo "|---|---:|---:|---:|---:|"
    for v in "${ORDER[@]}"; do
        rps="$(col "$v" 3)"
        printf '| %s | %.0f | %s | %.2f | %.2f |\n' "$v" "$rps" \
            "$(awk -v a="$rps" -v b="$PLAIN_RPS" 'BEGIN {if (b + 0 > 0) printf "%.2f", a / b; else print "n/a"}')" \
            "$(col "$v" 4)" "$(col "$v" 6)"
    done
} | tee "$RESULTS_DIR/summary.md"
log "raw outputs in $RESULTS_DIR"
