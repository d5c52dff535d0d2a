#!/usr/bin/env bash
# Runs schemathesis, with every check on, against the OpenAPI document a
# real weir node serves (`/v1/openapi.json` on the admin listener), for a
# bounded time: a node in store mode on loopback ports chosen by the OS, a
# fixed seed so a CI failure reproduces, and at most ST_MAX_EXAMPLES cases
# per operation within ST_MAX_TIME seconds. Fails on any 5xx and any
# conformance failure.
#
#   ./scripts/schemathesis.sh            build weir, run, clean up
#   ST_MAX_TIME=600 ./scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

max_examples="${ST_MAX_EXAMPLES:-25}"
max_time="${ST_MAX_TIME:-120}"
seed="${ST_SEED:-1}"

# The virtualenv scripts/test installs PyPI tools into (Debian's Python
# refuses pip installs outside one).
venv="$(pwd)/target/tools/python"
[ -d "$venv/bin" ] && export PATH="$venv/bin:$PATH"
if ! command -v schemathesis >/dev/null 2>&1; then
    echo "==> installing schemathesis into $venv"
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet schemathesis
    export PATH="$venv/bin:$PATH"
fi

cargo build --bin weir --locked --quiet
weir="$(pwd)/target/debug/weir"

dir="$(mktemp -d)"
pid=""
cleanup() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

"$weir" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --data-dir "$dir/data" --ready-file "$dir/ready.json" >"$dir/weir.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
    [ -s "$dir/ready.json" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
        cat "$dir/weir.log" >&2
        echo "weir exited before it was ready" >&2
        exit 1
    fi
    sleep 0.1
done
admin="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$dir/ready.json")"
echo "==> schemathesis against http://$admin/v1/openapi.json (seed $seed, $max_examples examples, ${max_time}s)"

# From the temporary directory, so its cache (`.schemathesis/`) goes with it.
config="$(pwd)/scripts/schemathesis.toml"
cd "$dir"
schemathesis --config-file "$config" --no-color run \
    "http://$admin/v1/openapi.json" \
    --checks all \
    --max-examples "$max_examples" \
    --max-time "$max_time" \
    --seed "$seed" \
    --workers 1 \
    --generation-database none \
    --request-timeout 30 \
    --wait-for-schema 30
