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
step "mutation tests (each safety mechanism switched off must be caught) and recovery in real
processes (SIGKILL at commit crash points, then verify_only and thinctl check): one build"
cargo test --release -p bdev_thin -p perf --features bdev_thin/mutations,perf/mutations \
    --test thin_pool --test thin_control --test sim_found --test sim_mutations --test recovery
step "the seed's race over NVMe/TCP with the hold switched off (our target and the Linux kernel's)"
cargo test --release -p thin_tgt --features mutations --test nvme_passdown_race
step "deterministic simulator: the CI seed list and every seed that ever failed"
cargo run --release --quiet --bin thin_sim -- --ci
cargo run --release --quiet --bin thin_sim -- --file bdev_thin/tests/regression_seeds.txt
step "loom models: the reactor's park protocol and the grace period's entry protocol"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p bdev_thin --lib \
    -- runtime::park thin::grace
step "benches build"
cargo bench --workspace --no-run
step "docs build"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo
echo "ci/test.sh: all passed"
