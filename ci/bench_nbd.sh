#!/usr/bin/env bash
# The NBD figures of BENCH.md: fio's nbd engine against a thin volume, its raw RAM disk and
# `nbdkit memory` (same 1 GiB, servers on core 0, fio on core 1), and the cost of FUA and FLUSH
# (libnbd client) on thin and raw, over malloc and an O_DIRECT file (ci/bench.sh's sections nbd
# and fua). Settings and --help: those of ci/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
exec bash ci/bench.sh nbd fua
