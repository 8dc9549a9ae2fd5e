#!/usr/bin/env bash
# The README's first command: builds thin_tgt, starts it on a file-backed uring bdev, and shows a
# thin pool and a volume through SPDK's own client (spdk-rpc + our plugin). The pool and the
# volume are created only if examine did not find them on the file, so the second run shows the
# same pool and volume (same UUIDs) found by examine. Stops thin_tgt with SIGTERM (it commits
# every pool and exits 0), then checks the pool offline with thinctl.
#
# Settings (environment):
#   THIN_DEMO_IMAGE  the backing file (default /var/tmp/bdev_thin_demo.img, 1 GiB, sparse)
#   THIN_DEMO_SOCK   the JSON-RPC socket (default /var/tmp/bdev_thin_demo.sock)
#   THIN_DEMO_BIN    a directory holding built thin_tgt and thinctl: skips `cargo build`
#   SPDK_CLIENT_BIN  a directory holding spdk-rpc (default .venv/bin, made here if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

image=${THIN_DEMO_IMAGE:-/var/tmp/bdev_thin_demo.img}
sock=${THIN_DEMO_SOCK:-/var/tmp/bdev_thin_demo.sock}
log=${image%.img}.log
say() { printf '\n### %s\n' "$*"; }

# SPDK's client from PyPI, in .venv/ as ci/install.sh makes it.
client=${SPDK_CLIENT_BIN:-$root/.venv/bin}
if [[ ! -x $client/spdk-rpc ]]; then
    if [[ -n ${SPDK_CLIENT_BIN:-} ]]; then
        echo "demo: no spdk-rpc in \$SPDK_CLIENT_BIN=$client" >&2
        exit 1
    fi
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        echo "demo: python3 with venv is missing; run ci/install.sh as root" \
            "(or apt-get install python3-venv)" >&2
        exit 1
    fi
    say "creating .venv with SPDK's client (pip install spdk)"
    rm -rf .venv
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check 'spdk==26.9'
fi
export PYTHONPATH=$root/python${PYTHONPATH:+:$PYTHONPATH}
rpc() { "$client/spdk-rpc" -s "$sock" "$@"; }
thin() { rpc --plugin bdev_thin_rpc "$@"; }

if [[ -n ${THIN_DEMO_BIN:-} ]]; then
    bin=$THIN_DEMO_BIN
else
    say "cargo build --release"
    cargo build --release --bins
    bin=$root/target/release
fi

if [[ ! -e $image ]]; then
    say "creating $image (1 GiB, sparse)"
    truncate -s 1G "$image"
fi

# The config holds the base bdev only: pools and volumes come back by examine.
work=$(mktemp -d)
cat >"$work/demo.json" <<EOF
{"subsystems": [{"subsystem": "bdev", "config": [
  {"method": "bdev_uring_create",
   "params": {"name": "Uring0", "filename": "$image", "block_size": 4096}},
  {"method": "bdev_wait_for_examine"}
]}]}
EOF

pid=
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

say "starting thin_tgt -r $sock -c demo.json (log: $log)"
"$bin/thin_tgt" -r "$sock" -c "$work/demo.json" 2>"$log" &
pid=$!
for ((i = 0; ; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "demo: thin_tgt exited at start:" >&2
        cat "$log" >&2
        exit 1
    fi
    if [[ -S $sock ]] && rpc spdk_get_version >/dev/null 2>&1; then
        break
    fi
    if ((i >= 300)); then
        echo "demo: thin_tgt did not answer on $sock within 30 s" >&2
        exit 1
    fi
    sleep 0.1
done
grep '^examine' "$log" || true

if thin bdev_thin_get_pools -l pool0 >/dev/null 2>&1; then
    say "pool0 found by examine on $image"
else
    say "no pool on $image: creating pool0 (64 KiB data blocks)"
    thin bdev_thin_pool_create Uring0 pool0 --data-block-size 65536
fi
if thin bdev_thin_get_volumes -b pool0/vol0 >/dev/null 2>&1; then
    say "volume pool0/vol0 found by examine"
else
    say "creating volume pool0/vol0 (512 MiB, thin)"
    thin bdev_thin_create vol0 512 -l pool0
fi

say "spdk-rpc --plugin bdev_thin_rpc bdev_thin_get_pools"
thin bdev_thin_get_pools
say "spdk-rpc --plugin bdev_thin_rpc bdev_thin_get_volumes"
thin bdev_thin_get_volumes
say "spdk-rpc bdev_get_bdevs -b pool0/vol0"
rpc bdev_get_bdevs -b pool0/vol0

say "stopping thin_tgt (SIGTERM: drains IO, commits every pool, exits 0)"
kill -TERM "$pid"
for ((i = 0; ; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    if ((i >= 600)); then
        echo "demo: thin_tgt did not stop within 60 s" >&2
        exit 1
    fi
    sleep 0.1
done
status=0
wait "$pid" || status=$?
pid=
if ((status != 0)); then
    echo "demo: thin_tgt exited with status $status:" >&2
    cat "$log" >&2
    exit 1
fi

say "thinctl check $image"
"$bin/thinctl" check "$image"
say "done: run ci/demo.sh again and the pool and volume come back by examine"
