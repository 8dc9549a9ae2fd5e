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
# The daemon tests signal with kill(1), not bash's builtin: procps ships /bin/kill.
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || need_apt+=(procps)
if ((${#need_apt[@]})); then
    echo "ci/install.sh: installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# SPDK's JSON-RPC client from PyPI (spdk-rpc, spdk.rpc.client), in the repository's ignored
# .venv/, where tests/spdk_client.rs looks for it.
cd "$(dirname "$0")/.."
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "ci/install.sh: installing python3 and python3-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
fi
if ! .venv/bin/spdk-rpc --help >/dev/null 2>&1; then
    echo "ci/install.sh: creating .venv with SPDK's client (pip install spdk)"
    rm -rf .venv
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check 'spdk==26.9'
fi
.venv/bin/spdk-rpc --help >/dev/null
# QEMU, the guest kernel and the guest's tools for the Linux NVMe/TCP tests.
bash ci/install_guest.sh
# Rust itself cannot come from Debian (bookworm's rustc 1.63 predates edition 2024): the image
# must bring cargo >= 1.85. Say so plainly instead of failing later in the middle of a build.
if ! command -v cargo >/dev/null; then
    echo "ci/install.sh: cargo (Rust >= 1.85) is not on PATH; install it before .ci/run" >&2
    exit 1
fi
