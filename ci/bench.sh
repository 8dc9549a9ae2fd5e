#!/usr/bin/env bash
# Every figure, table and plot of BENCH.md in one command, on an idle machine:
#
#   ci/bench.sh [SECTION...]        (default: every section; --help lists them)
#
# Builds the release binaries, runs ci/bench.py (the measuring harness: each comparison's sides
# alternate, pinned to core 0, with the same working set, block size, queue depth, prefill and
# run length; medians of ROUNDS runs with min and max; every other process's CPU use watched
# from /proc, a run marked disturbed when one took more than 5 % of a core), writes
# docs/bench/results.json and the text beside it, draws docs/bench/*.png (ci/bench_plot.py) and
# rewrites BENCH.md's tables between their markers (ci/bench_tables.py).
#
# Settings (environment):
#   ROUNDS           runs of each side for every ratio of BENCH.md (default 5)
#   SWEEP_ROUNDS     runs of each side for plot-only points (default 3)
#   SECONDS_PER_RUN  seconds of each timed run (default 2); SWEEP_SECONDS for the sweep (1)
#   SPDK_DIR         an SPDK build (its build/examples/bdevperf is used, never built here):
#                    adds SPDK's bdevperf on malloc and on a thin lvol beside our perf, and
#                    the nvmf section (its build/bin/spdk_nvme_perf and nvmf_tgt)
#
# It installs what it needs beyond ci/install.sh: matplotlib into .venv (pip) and, as root,
# Debian's python3-libnbd (the FUA/FLUSH client). The passdown section needs root (a loop
# device). Figures are only worth quoting from an idle machine: the load and every disturbance
# are in the output.
set -euo pipefail
cd "$(dirname "$0")/.."

sections="foundation spdk sweep large thin provision passdown fua cow nbd nvmf"
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    echo "Sections: $sections"
    exit 0
fi
for section in "$@"; do
    if [[ " $sections " != *" $section "* ]]; then
        echo "bench.sh: unknown section $section ($sections)" >&2
        exit 2
    fi
done
for tool in fio nbdkit taskset python3; do
    command -v "$tool" >/dev/null || { echo "bench.sh: $tool missing (ci/install.sh)" >&2; exit 1; }
done
if [[ -n ${SPDK_DIR:-} && ! -x $SPDK_DIR/build/examples/bdevperf ]]; then
    echo "bench.sh: no build/examples/bdevperf under SPDK_DIR=$SPDK_DIR" >&2
    exit 1
fi

started=$SECONDS
cargo build --release --quiet --workspace --bins
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import spdk.rpc.client' 2>/dev/null; then
    bash ci/install.sh
fi
.venv/bin/python -c 'import matplotlib' 2>/dev/null ||
    .venv/bin/pip install --quiet --disable-pip-version-check 'matplotlib>=3.6,<4'
if ! /usr/bin/python3 -c 'import nbd' 2>/dev/null && ((EUID == 0)); then
    apt-get install -y -qq python3-libnbd >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq python3-libnbd >/dev/null; }
fi

mkdir -p docs/bench
text=docs/bench/results.txt
if (($#)); then text=docs/bench/results-$(IFS=-; echo "$*").txt; fi
.venv/bin/python ci/bench.py "$@" 2>&1 | tee "$text"
.venv/bin/python ci/bench_plot.py docs/bench/results.json docs/bench
.venv/bin/python ci/bench_tables.py docs/bench/results.json BENCH.md
echo "bench.sh: done in $((SECONDS - started)) s (text: $text)"
