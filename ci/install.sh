#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for the tests (run by .ci/run, safe to re-run).
set -euo pipefail

need_apt=()
command -v losetup >/dev/null || need_apt+=(mount)
command -v fio >/dev/null || need_apt+=(fio)
# The daemon tests signal with kill(1), not bash's builtin: procps ships /bin/kill.
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || need_apt+=(procps)
if ((${#need_apt[@]})); then
    echo "ci/install.sh: installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# Rust itself cannot come from Debian (bookworm's rustc 1.63 predates edition 2024): the image
# must bring cargo >= 1.85. Say so plainly instead of failing later in the middle of a build.
if ! command -v cargo >/dev/null; then
    echo "ci/install.sh: cargo (Rust >= 1.85) is not on PATH; install it before .ci/run" >&2
    exit 1
fi
