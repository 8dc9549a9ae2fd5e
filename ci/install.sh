#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for the tests (run by .ci/run, safe to re-run).
set -euo pipefail

need_apt=()
command -v losetup >/dev/null || need_apt+=(mount)
command -v fio >/dev/null || need_apt+=(fio)
# NBD clients and peer (tests/nbd_clients.rs, ci/bench_nbd.sh).
{ command -v qemu-img && command -v qemu-io; } >/dev/null || need_apt+=(qemu-utils)
command -v nbdinfo >/dev/null || need_apt+=(libnbd-bin)
command -v nbdkit >/dev/null || need_apt+=(nbdkit)
# Debian's qemu-system-x86 removes the image's newer qemu-utils unless both come in one
# command (reference/machine.md): whenever apt runs here, qemu-utils is named explicitly.
if ((${#need_apt[@]})) && [[ " ${need_apt[*]} " != *" qemu-utils "* ]]; then
    need_apt+=(qemu-utils)
fi
if ((${#need_apt[@]})); then
    echo "ci/install.sh: installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
