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
step "loom models (own target dir: --cfg loom rebuilds every crate)"
RUSTFLAGS="--cfg loom" cargo test -p bdev_thin --lib --release --target-dir target/loom runtime::park
step "benches build"
cargo bench --workspace --no-run
step "docs build"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo
echo "ci/test.sh: all passed"
