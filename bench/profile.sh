#!/usr/bin/env bash
# Record a CPU profile of a proxy (weir by default) under the same load as
# proxy-compare.sh: same upstream, same pinning, same wrk command.
#
# Usage:   bench/profile.sh
# Env:     PROXY=weir        which proxy to profile (weir, weir-t1, weir-t100, weir-nometrics, nginx or haproxy)
#          DURATION=10       seconds of load, all of them recorded
#          CONNECTIONS=64    wrk connections (one wrk thread)
#          PATH_TO_GET=/     request path
#          WARMUP=2          seconds of load before recording starts
#          FREQ=999          sampling frequency (Hz)
#          PERF_EVENT=cpu-clock  sampling event (cpu-clock works without hardware counters)
#          CALL_GRAPH=fp     perf --call-graph mode: fp (frame pointers, what -g uses) or dwarf
#          WEIR_BIN=path     use this weir binary instead of building one
#          PROXY_CPU=0 LOAD_CPU=1 NICE=0  pinning and priority, as in proxy-compare.sh
#          RESULTS_DIR=dir   default bench/results/<timestamp>-profile-<proxy>
#
# Writes perf.data, perf-report.txt (perf report --stdio, first 60 lines),
# perf-report-flat.txt (self time by symbol), and the wrk output of the
# profiled run. Everything runs on 127.0.0.1; every process started here is
# stopped on exit.
set -euo pipefail

export BENCH_NAME=profile
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CMDLINE="$(bench_cmdline PROXY DURATION CONNECTIONS PATH_TO_GET WARMUP FREQ PERF_EVENT CALL_GRAPH \
    WEIR_BIN PROXY_CPU LOAD_CPU NICE RESULTS_DIR CARGO_TARGET_DIR -- "$0" "$@")"

PROXY="${PROXY:-weir}"
FREQ="${FREQ:-999}"
PERF_EVENT="${PERF_EVENT:-cpu-clock}"
CALL_GRAPH="${CALL_GRAPH:-fp}"
bench_common_settings
case "$PROXY" in nginx|haproxy|weir|weir-nometrics|weir-t1|weir-t100) ;; *) die "PROXY must be weir (or a weir variant: weir-nometrics, weir-t1, weir-t100), nginx or haproxy";; esac
[[ "$FREQ" =~ ^[0-9]+$ && "$FREQ" -ge 1 ]] || die "FREQ must be a positive integer"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS_DIR="${RESULTS_DIR:-$BENCH_ROOT/bench/results/$STAMP-profile-$PROXY}"

need_tools "$PROXY"
need_pkg perf linux-perf
if [[ "$PROXY" == weir* ]]; then ensure_weir; fi

# perf must be able to sample here at all (containers and VMs often lack
# hardware counters; the software cpu-clock event usually still works).
if ! perf stat -e "$PERF_EVENT" true >/dev/null 2>&1; then
    die "perf cannot use event '$PERF_EVENT' on this machine (kernel.perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo '?'))"
fi

mkdir -p "$RESULTS_DIR"
{
    echo "# profile $PROXY $STAMP"
    echo "command:   $CMDLINE"
    machine_header
    echo "perf:      $(perf --version 2>&1), perf record -e $PERF_EVENT -F $FREQ --call-graph $CALL_GRAPH -p <$PROXY pids> -- sleep $DURATION"
    echo "load:      wrk -t1 -c$CONNECTIONS -d$((DURATION + 2))s --latency http://127.0.0.1:PORT$PATH_TO_GET (after ${WARMUP}s warm-up)"
} | tee "$RESULTS_DIR/header.txt"
echo

bench_workdir
start_upstream
start_proxy "$PROXY"
port="${PORT_OF[$PROXY]}"
pids="$(worker_pids "$PROXY")"

if [[ "$WARMUP" -gt 0 ]]; then run_wrk "$port" "$WARMUP" "$RESULTS_DIR/wrk-warmup.txt"; fi

# Load for a little longer than the recording so the whole recording is under load.
start_wrk "$port" $((DURATION + 2)) "$RESULTS_DIR/wrk.txt"
sleep 1
log "recording $PROXY (pids $pids) for ${DURATION}s"
# perf exits on its own after `sleep`; `timeout` bounds it regardless.
timeout --kill-after=5 $((DURATION + 30)) perf record -e "$PERF_EVENT" -F "$FREQ" --call-graph "$CALL_GRAPH" \
    -p "$pids" -o "$RESULTS_DIR/perf.data" -- sleep "$DURATION" >"$RESULTS_DIR/perf-record.log" 2>&1 </dev/null &
PERF_PID=$!
EXTRA_PIDS+=("$PERF_PID")
rc=0; wait "$PERF_PID" || rc=$?
[[ "$rc" -eq 0 ]] || { sed 's/^/    /' "$RESULTS_DIR/perf-record.log" >&2; die "perf record failed (rc $rc)"; }
EXTRA_PIDS=()
wait_wrk "$RESULTS_DIR/wrk.txt"

perf report -i "$RESULTS_DIR/perf.data" --stdio 2>/dev/null | head -60 >"$RESULTS_DIR/perf-report.txt" || true
{
    echo "# self time by shared object"
    perf report -i "$RESULTS_DIR/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -15
    echo
    echo "# self time by symbol"
    perf report -i "$RESULTS_DIR/perf.data" --stdio --no-children --sort dso,sym -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -60
} >"$RESULTS_DIR/perf-report-flat.txt" || true

printf 'load during recording: %s req/s, p99 %s, errors %s\n' \
    "$(wrk_field "$RESULTS_DIR/wrk.txt" rps)" "$(wrk_field "$RESULTS_DIR/wrk.txt" p99)" "$(wrk_field "$RESULTS_DIR/wrk.txt" errors)"
echo
head -45 "$RESULTS_DIR/perf-report-flat.txt"
echo
log "perf.data, perf-report.txt, perf-report-flat.txt and wrk.txt in $RESULTS_DIR"
log "explore further with: perf report -i $RESULTS_DIR/perf.data"
