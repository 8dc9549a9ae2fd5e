#!/usr/bin/env bash
# The NVMe-oF/TCP figures of BENCH.md: SPDK's spdk_nvme_perf (core 1) over NVMe/TCP on
# 127.0.0.1 against our thin_tgt and SPDK's nvmf_tgt (core 0), alternating, each exporting a
# 1 GiB malloc bdev configured with the same `spdk-rpc nvmf_*` commands; and our thin volume
# against that malloc behind our target. 4 KiB randread and randwrite at QD1, 32, 128 and
# 128 KiB sequential read and write at QD32 (ci/bench.sh's section nvmf).
#
#   SPDK_DIR=/path/to/spdk ci/bench_nvmf.sh
#
# SPDK_DIR is an SPDK build made by hand (its build/bin/spdk_nvme_perf and build/bin/nvmf_tgt
# run with --no-huge; never built here). Other settings (ROUNDS, SECONDS_PER_RUN) and --help:
# those of ci/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
for binary in spdk_nvme_perf nvmf_tgt; do
    if [[ ! -x ${SPDK_DIR:-}/build/bin/$binary ]]; then
        echo "bench_nvmf.sh: no build/bin/$binary under SPDK_DIR=${SPDK_DIR:-(unset)}" >&2
        exit 1
    fi
done
exec bash ci/bench.sh nvmf
