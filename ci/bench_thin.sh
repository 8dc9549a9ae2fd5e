#!/usr/bin/env bash
# The thin pool's own figures of BENCH.md: a fresh volume against its raw device (malloc and an
# O_DIRECT file), two cores against one, the provisioning rate, passdown against the device's
# own discard, copy-on-write after a snapshot (ci/bench.sh's sections thin, provision, passdown
# and cow; the thin/raw ratios of mapped volumes are rows of its sweep), then the snapshot time
# and the metadata figures at 1 M mappings (release-mode tests that print them).
# Settings and --help: those of ci/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
bash ci/bench.sh thin provision passdown cow
# Snapshot of a fully mapped volume, 1 GiB vs 16 GiB; metadata RAM and open time at 1 M mappings.
cargo test --release -p bdev_thin --test thin_figures -- --ignored --nocapture 2>&1 |
    grep "snapshot of"
cargo test --release -p bdev_thin --lib million -- --ignored --nocapture 2>&1 | grep "1M mappings"
