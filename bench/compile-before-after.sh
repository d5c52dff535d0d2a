#!/usr/bin/env bash
# What a one-route write costs a node with 10,000 routes, before and after
# the one-compile change, in one run on one machine: builds commit 12ae2b2
# with bench/before/snapshot_build_12ae2b2.rs in a temporary worktree, then
# the current tree, and runs the same criterion groups on both.
#
#   bench/compile-before-after.sh [PROFILE]     (default: release)
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"
# One target dir for both trees: the dependencies are built once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
before=$(mktemp -d)
trap 'git worktree remove --force "$before" >/dev/null 2>&1 || true' EXIT
git worktree add --detach "$before" 12ae2b2 >/dev/null
cp bench/before/snapshot_build_12ae2b2.rs "$before/node/benches/snapshot_build.rs"
args=(-- --warm-up-time 1 --measurement-time 5 --noplot)
# Build both first, so the measurements run back to back.
(cd "$before" && cargo bench -p weir-node --bench snapshot_build --profile "$profile" --no-run)
cargo bench -p weir-node --bench snapshot_build --profile "$profile" --no-run
echo "==> before (12ae2b2)"
(cd "$before" && cargo bench -p weir-node --bench snapshot_build --profile "$profile" "${args[@]}")
echo "==> after ($(git rev-parse --short HEAD))"
cargo bench -p weir-node --bench snapshot_build --profile "$profile" "${args[@]}"
