#!/usr/bin/env bash
# The project's test command (README): formatting, lints, every test, the benches' build, docs.
# With CI=true a test whose prerequisite is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo test (release: the perf and durability tests move real data)"
cargo test --workspace --release
step "mutation tests (each safety mechanism switched off must be caught)"
cargo test -p bdev_thin --release --features mutations --test thin_pool
step "simulator mutations: each caught by the CI seed list (issue 13)"
cargo test -p bdev_thin --release --features mutations --test sim_mutations
step "deterministic simulator: the CI seed list and every seed that ever failed (issue 13)"
cargo run --release --quiet --bin thin_sim -- --ci
cargo run --release --quiet --bin thin_sim -- --file bdev_thin/tests/regression_seeds.txt
step "recovery in real processes: SIGKILL at commit crash points, then verify_only and thinctl check"
cargo test -p perf --release --features mutations --test recovery
step "benches build"
cargo bench --workspace --no-run
step "docs build"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo
echo "ci/test.sh: all passed"
