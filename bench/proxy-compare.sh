#!/usr/bin/env bash
# Benchmark weir, nginx and HAProxy side by side as reverse proxies in front
# of the same upstream, on loopback only.
#
# Every proxy under test is pinned to the same single core with one worker;
# the upstream (a static nginx) and the load generator (wrk) are pinned to
# the other core. Runs are interleaved (the order rotates every round) so
# that machine noise hits every proxy alike, and the medians over rounds are
# reported together with ratios to nginx.
#
# Usage:   bench/proxy-compare.sh
#          PROXIES="weir weir-t1 weir-t100" BASELINE=weir bench/proxy-compare.sh   # tracing overhead
#          PROXIES="weir weir-plugins" BASELINE=weir bench/proxy-compare.sh        # plugin chain overhead
#          PROXIES="weir weir-mexport" BASELINE=weir bench/proxy-compare.sh        # OTLP metrics export
# Env:     PROXIES="nginx haproxy weir"  subset and base order; weir variants:
#                           weir-nometrics, weir-t1, weir-t100, weir-plugins, weir-chain4, weir-limit, weir-limit-cluster, weir-limit-redis, weir-limit-redis-credit, weir-cache, weir-mexport (see lib.sh)
#          BASELINE=nginx   the proxy the ratio columns compare with
#          DURATION=10      seconds per measured run
#          ROUNDS=3         interleaved rounds
#          CONNECTIONS=64   wrk connections (one wrk thread)
#          PATH_TO_GET=/    request path
#          WARMUP=2         seconds of warm-up per proxy before each run (0: none)
#          WEIR_BIN=path    use this weir binary instead of building one
#          PROXY_CPU=0      core the proxies are pinned to
#          LOAD_CPU=1       core(s) for the upstream and wrk
#          NICE=0           niceness for everything started here (e.g. -10 on a busy machine)
#          RESULTS_DIR=dir  where raw outputs go (default bench/results/<timestamp>)
#
# Only 127.0.0.1 is ever used. The system nginx/HAProxy services are never
# touched: binaries are run directly against configs in a temp dir, and every
# process started here is stopped on exit, failure or interrupt.
set -euo pipefail

export BENCH_NAME=proxy-compare
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CMDLINE="$(bench_cmdline PROXIES BASELINE OTLP_BIN DURATION ROUNDS CONNECTIONS PATH_TO_GET WARMUP WEIR_BIN \
    PROXY_CPU LOAD_CPU NICE RESULTS_DIR CARGO_TARGET_DIR -- "$0" "$@")"

PROXIES="${PROXIES:-nginx haproxy weir}"
BASELINE="${BASELINE:-nginx}"
ROUNDS="${ROUNDS:-3}"
bench_common_settings
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 1 ]] || die "ROUNDS must be a positive integer"
read -r -a ORDER <<<"$PROXIES"
[[ ${#ORDER[@]} -ge 1 ]] || die "PROXIES is empty"
for p in "${ORDER[@]}"; do
    case "$p" in nginx|haproxy|weir|weir-nometrics|weir-t1|weir-t100|weir-plugins|weir-chain4|weir-limit|weir-limit-cluster|weir-limit-redis|weir-limit-redis-credit|weir-cache|weir-mexport) ;;
        *) die "unknown proxy '$p' in PROXIES (known: nginx haproxy weir weir-nometrics weir-t1 weir-t100 weir-plugins weir-chain4 weir-limit weir-limit-cluster weir-limit-redis weir-limit-redis-credit weir-cache weir-mexport)";; esac
done
[[ " $PROXIES " == *" $BASELINE "* ]] || die "BASELINE '$BASELINE' is not in PROXIES"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS_DIR="${RESULTS_DIR:-$BENCH_ROOT/bench/results/$STAMP}"

need_tools "${ORDER[@]}"
if [[ " $PROXIES " == *" weir"* ]]; then ensure_weir; fi

mkdir -p "$RESULTS_DIR/raw"
{
    echo "# proxy-compare $STAMP"
    echo "command:   $CMDLINE"
    machine_header
    echo "load:      wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency http://127.0.0.1:PORT$PATH_TO_GET (warm-up ${WARMUP}s before each run), $ROUNDS interleaved rounds"
} | tee "$RESULTS_DIR/header.txt"
echo

bench_workdir
start_upstream
for p in "${ORDER[@]}"; do start_proxy "$p"; done

# -------------------------------------------------------------------- runs
CSV="$RESULTS_DIR/runs.csv"
echo "round,proxy,rps,p99_ms,p50_ms,errors,proxy_cpu_pct,proxy_cpu_us_per_req,proxy_core_busy_pct,load_core_busy_pct,requests,export_cpu_us_per_req" >"$CSV"
N=${#ORDER[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for ((i = 0; i < N; i++)); do
        p="${ORDER[$(((i + r - 1) % N))]}"     # rotate the order every round
        port="${PORT_OF[$p]}"
        kill -0 "${PID_OF[$p]}" 2>/dev/null || die "$p is no longer running"
        if [[ "$WARMUP" -gt 0 ]]; then run_wrk "$port" "$WARMUP" "$RESULTS_DIR/raw/round$r-$p-warmup.txt"; fi
        out="$RESULTS_DIR/raw/round$r-$p.txt"
        read -r pb0 pt0 < <(cpu_ticks "$PCPU"); read -r lb0 lt0 < <(cpu_ticks "$LCPU")
        c0="$(proc_cpu_ticks "$p")"; e0="$(export_cpu_ticks "$p")"; w0="$(date +%s.%N)"
        run_wrk "$port" "$DURATION" "$out"
        c1="$(proc_cpu_ticks "$p")"; e1="$(export_cpu_ticks "$p")"; w1="$(date +%s.%N)"
        read -r pb1 pt1 < <(cpu_ticks "$PCPU"); read -r lb1 lt1 < <(cpu_ticks "$LCPU")
        rps="$(wrk_field "$out" rps)"; p99="$(wrk_field "$out" p99)"; p50="$(wrk_field "$out" p50)"
        [[ -n "$rps" && -n "$p99" && -n "$p50" ]] || { sed 's/^/    /' "$out" >&2; die "could not parse wrk output for $p"; }
        errs="$(wrk_field "$out" errors)"; reqs="$(wrk_field "$out" requests)"
        # The proxy's own CPU time: what it costs per request does not depend
        # on how much of the core other processes took meanwhile.
        read -r pcpu uspr < <(awk -v c=$((c1 - c0)) -v hz="$CLK_TCK" -v w0="$w0" -v w1="$w1" -v n="${reqs:-0}" \
            'BEGIN {s = c / hz; printf "%.0f %.2f\n", 100 * s / (w1 - w0), n ? 1e6 * s / n : 0}')
        # Of it, the trace export threads' share (0 for untraced variants).
        euspr="$(awk -v c=$((e1 - e0)) -v hz="$CLK_TCK" -v n="${reqs:-0}" 'BEGIN {printf "%.2f", n ? 1e6 * c / hz / n : 0}')"
        pbusy="$(busy_pct "$pb0" "$pt0" "$pb1" "$pt1")"; lbusy="$(busy_pct "$lb0" "$lt0" "$lb1" "$lt1")"
        echo "$r,$p,$rps,$(to_ms "$p99"),$(to_ms "$p50"),$errs,$pcpu,$uspr,$pbusy,$lbusy,$reqs,$euspr" >>"$CSV"
        printf '  round %d/%d  %-8s %10s req/s  p99 %9s  errors %s  %s CPU %s%% (%s us/req)  core %s busy %s%%  core %s busy %s%%\n' \
            "$r" "$ROUNDS" "$p" "$rps" "$p99" "$errs" "$p" "$pcpu" "$uspr" "$PCPU" "$pbusy" "$LCPU" "$lbusy"
        [[ "$errs" == 0 ]] || log "warning: $p had $errs errors/non-2xx responses in round $r (see $out)"
    done
done
echo

# ----------------------------------------------------------------- summary
median() {
    sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
col() { awk -F, -v p="$1" -v c="$2" 'NR > 1 && $2 == p {print $c}' "$CSV" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b + 0 > 0) printf "%.2f", a / b; else print "n/a"}'; }

declare -A RPS=() P99=() ERR=() PCPU_OF=() USPR=() RR=() PR=() UR=()
for p in "${ORDER[@]}"; do
    RPS[$p]="$(col "$p" 3)"; P99[$p]="$(col "$p" 4)"; PCPU_OF[$p]="$(col "$p" 7)"; USPR[$p]="$(col "$p" 8)"
    ERR[$p]="$(awk -F, -v p="$p" 'NR > 1 && $2 == p {n += $6} END {print n + 0}' "$CSV")"
done
B="$BASELINE"
for p in "${ORDER[@]}"; do
    RR[$p]="$(ratio "${RPS[$p]}" "${RPS[$B]}")"; PR[$p]="$(ratio "${P99[$p]}" "${P99[$B]}")"
    UR[$p]="$(ratio "${USPR[$p]}" "${USPR[$B]}")"
done

SUMMARY="$RESULTS_DIR/summary.md"
{
    echo "Command: \`$CMDLINE\`"
    echo
    echo "Machine: nproc=$(nproc), $MODEL; proxies pinned to core $PROXY_CPU with one worker each,"
    echo "upstream nginx and wrk pinned to core(s) $LOAD_CPU. Load: \`wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency\`"
    echo "on \`GET $PATH_TO_GET\` (13-byte body), ${WARMUP} s warm-up before each run, $ROUNDS interleaved rounds; medians over rounds."
    echo
    echo "| proxy | req/s (median) | p99 ms (median) | req/s vs $B | p99 vs $B | proxy CPU µs/req | CPU/req vs $B | proxy CPU % | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for p in "${ORDER[@]}"; do
        printf '| %s | %.0f | %.2f | %s | %s | %.2f | %s | %.0f%% | %s |\n' "$p" "${RPS[$p]}" "${P99[$p]}" \
            "${RR[$p]}" "${PR[$p]}" "${USPR[$p]}" "${UR[$p]}" "${PCPU_OF[$p]}" "${ERR[$p]}"
    done
} >"$SUMMARY"

printf '%-8s %11s %8s %12s %10s %11s %10s %8s %7s\n' \
    proxy "req/s(med)" "p99(ms)" "req/s/$B" "p99/$B" "cpu_us/req" "cpu/$B" "cpu%" errors
for p in "${ORDER[@]}"; do
    printf '%-8s %11.0f %8.2f %12s %10s %11.2f %10s %7.0f%% %7s\n' "$p" "${RPS[$p]}" "${P99[$p]}" \
        "${RR[$p]}" "${PR[$p]}" "${USPR[$p]}" "${UR[$p]}" "${PCPU_OF[$p]}" "${ERR[$p]}"
done
for p in "${ORDER[@]}"; do
    # weir-mexport pushes metrics, not spans: nothing to check.
    if [[ -n "${OTLP_PORT_OF[$p]:-}" && "$p" != weir-mexport ]]; then
        span_check "$p" "$([[ "$p" == weir-t100 ]] && echo exact)" | tee -a "$SUMMARY"
        echo "$p: trace export threads $(col "$p" 12) CPU us/req of its ${USPR[$p]}" | tee -a "$SUMMARY"
    fi
done
echo
log "raw wrk outputs, runs.csv, summary.md and configs in $RESULTS_DIR"
