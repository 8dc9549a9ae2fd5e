#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for the tests (run by .ci/run, safe to re-run).
set -euo pipefail

need_apt=()
command -v losetup >/dev/null || need_apt+=(mount)
command -v fio >/dev/null || need_apt+=(fio)
if ((${#need_apt[@]})); then
    echo "ci/install.sh: installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
