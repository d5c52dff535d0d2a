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
# Separate target dirs: cargo names a workspace crate's artifacts by its
# path inside the workspace, so two checkouts sharing one target dir would
# take each other's crates for fresh. The older tree's first run builds
# its dependencies once, in target/before-12ae2b2.
after_target="${CARGO_TARGET_DIR:-$PWD/target}"
before_target="$after_target/before-12ae2b2"
before=$(mktemp -d)
trap 'git worktree remove --force "$before" >/dev/null 2>&1 || true' EXIT
git worktree add --detach "$before" 12ae2b2 >/dev/null
cp bench/before/snapshot_build_12ae2b2.rs "$before/node/benches/snapshot_build.rs"
args=(-- --warm-up-time 1 --measurement-time 5 --noplot)
# Build both first, so the measurements run back to back.
run() { CARGO_TARGET_DIR="$1" cargo bench -p weir-node --bench snapshot_build --profile "$profile" "${@:2}"; }
(cd "$before" && run "$before_target" --no-run)
run "$after_target" --no-run
echo "==> before (12ae2b2)"
(cd "$before" && run "$before_target" "${args[@]}")
echo "==> after ($(git rev-parse --short HEAD))"
run "$after_target" "${args[@]}"
