#!/usr/bin/env bash
# The README's first command: what a thin pool is for, in a dozen lines. On a fresh 1 GiB sparse
# file it starts thin_tgt (a uring bdev on the file), creates pool0 and a 512 MiB thin volume
# through SPDK's own client (spdk-rpc + our plugin), writes to it over NBD (qemu-io), takes a
# snapshot and lets the two diverge, unmaps most of the volume and shows the blocks coming back
# as their passdowns complete (the file's holes grow), restarts thin_tgt so examine finds it all
# again, checks the pool offline with thinctl, and ends with a few seconds of perf on a thin
# volume beside its raw RAM disk. Each run starts from a fresh file.
#
# Settings (environment):
#   THIN_DEMO_IMAGE  the backing file (default /var/tmp/bdev_thin_demo.img; recreated)
#   THIN_DEMO_SOCK   the JSON-RPC socket (default /var/tmp/bdev_thin_demo.sock)
#   THIN_DEMO_BIN    a directory holding built thin_tgt, thinctl and perf: skips `cargo build`
#   SPDK_CLIENT_BIN  a directory holding spdk-rpc (default .venv/bin, made here if missing)
#   THIN_DEMO_PERF_SECONDS  seconds of each perf run (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

image=${THIN_DEMO_IMAGE:-/var/tmp/bdev_thin_demo.img}
sock=${THIN_DEMO_SOCK:-/var/tmp/bdev_thin_demo.sock}
perf_seconds=${THIN_DEMO_PERF_SECONDS:-3}
log=${image%.img}.log
step=0
say() { step=$((step + 1)); printf '%2d. %s\n' "$step" "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

for tool in qemu-io python3; do
    command -v "$tool" >/dev/null || die "$tool is missing; run ci/install.sh as root"
done
# SPDK's client from PyPI, in .venv/ as ci/install.sh makes it.
client=${SPDK_CLIENT_BIN:-$root/.venv/bin}
if [[ ! -x $client/spdk-rpc ]]; then
    [[ -z ${SPDK_CLIENT_BIN:-} ]] || die "no spdk-rpc in \$SPDK_CLIENT_BIN=$client"
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 ||
        die "python3 with venv is missing; run ci/install.sh as root" \
            "(or apt-get install python3-venv)"
    echo "demo: creating .venv with SPDK's client (pip install spdk)"
    rm -rf .venv
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check 'spdk==26.9'
fi
export PYTHONPATH=$root/python${PYTHONPATH:+:$PYTHONPATH}
rpc() { "$client/spdk-rpc" -s "$sock" "$@"; }
thin() { rpc --plugin bdev_thin_rpc "$@"; }
# json EXPR: evaluates EXPR on the JSON read from stdin, bound to `j`.
json() { python3 -c "import json, sys; j = json.load(sys.stdin); print($1)"; }
pool_field() { thin bdev_thin_get_pools -l pool0 | json "j[0]['$1']"; }
mapped() { thin bdev_thin_get_volumes -b "pool0/$1" | json "j[0]['mapped_blocks']"; }
allocated_mib() { du -m "$image" | cut -f1; }

if [[ -n ${THIN_DEMO_BIN:-} ]]; then
    bin=$THIN_DEMO_BIN
else
    echo "demo: cargo build --release"
    cargo build --release --quiet --bins --workspace
    bin=$root/target/release
fi

work=$(mktemp -d)
pid=
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
nbd="nbd://127.0.0.1:$port"
# The config holds the base bdev and the NBD server only: pools and volumes come back by examine.
cat >"$work/demo.json" <<EOF
{"subsystems": [
  {"subsystem": "bdev", "config": [
    {"method": "bdev_uring_create",
     "params": {"name": "Uring0", "filename": "$image", "block_size": 4096}},
    {"method": "bdev_wait_for_examine"}]},
  {"subsystem": "nbd", "config": [
    {"method": "nbd_server_start", "params": {"listen_address": "127.0.0.1", "port": $port}}]}
]}
EOF

start_target() {
    "$bin/thin_tgt" -r "$sock" -c "$work/demo.json" 2>>"$log" &
    pid=$!
    for ((i = 0; ; i++)); do
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "thin_tgt exited at start"; }
        [[ -S $sock ]] && rpc spdk_get_version >/dev/null 2>&1 && break
        ((i < 300)) || die "thin_tgt did not answer on $sock within 30 s"
        sleep 0.1
    done
}
stop_target() { # SIGTERM: drains IO, commits every pool, exits 0
    kill -TERM "$pid"
    local status=0
    wait "$pid" || status=$?
    pid=
    ((status == 0)) || { cat "$log" >&2; die "thin_tgt exited with status $status"; }
}
qemu() { qemu-io -f raw "$@" "$nbd/vol0" >/dev/null; }

rm -f "$image" "$log"
truncate -s 1G "$image"
echo "bdev_thin demo: a thin pool on $image (1 GiB sparse), served by thin_tgt (log: $log)"
start_target
thin bdev_thin_pool_create Uring0 pool0 --data-block-size 65536 >/dev/null
thin bdev_thin_create vol0 512 -l pool0 >/dev/null
thin nbd_export_add pool0/vol0 --export-name vol0 >/dev/null
free0=$(pool_field free_data_blocks)
say "pool0 on Uring0: $free0 free blocks of 64 KiB; vol0, a 512 MiB thin volume," \
    "maps $(mapped vol0) (file: $(allocated_mib) MiB allocated)"

qemu -c 'write -P 0x5a 0 256M'
free1=$(pool_field free_data_blocks)
say "qemu-io wrote 256 MiB to vol0 over NBD: vol0 maps $(mapped vol0) blocks," \
    "pool free $free0 -> $free1 (file: $(allocated_mib) MiB)"

thin bdev_thin_snapshot pool0/vol0 snap0 >/dev/null
say "snapshot snap0 of vol0: it shares all $(mapped snap0) blocks," \
    "pool free still $(pool_field free_data_blocks)"

qemu -c 'write -P 0xa5 0 64M'
free2=$(pool_field free_data_blocks)
say "qemu-io rewrote 64 MiB of vol0: $((free1 - free2)) blocks copied (vol0 and snap0 diverge)," \
    "pool free $free2 (file: $(allocated_mib) MiB)"

passdowns0=$(pool_field passdowns_completed)
qemu -c 'discard 0 480M'
free3=$(pool_field free_data_blocks)
say "qemu-io discarded 480 MiB of vol0: vol0 maps $(mapped vol0) blocks;" \
    "passdowns_completed $passdowns0 -> $(pool_field passdowns_completed)," \
    "$(pool_field held_data_blocks) blocks still held, pool free $free2 -> $free3" \
    "(file: $(allocated_mib) MiB)"
say "snap0 still maps $(mapped snap0) blocks: unmapping vol0 frees only what vol0 alone held"

pool_uuid=$(pool_field uuid)
stop_target
start_target
grep '^examine' "$log" | tail -n 1 | sed 's/^/    /'
[[ $(pool_field uuid) == "$pool_uuid" ]] || die "examine found another pool"
say "restarted thin_tgt: examine found pool0 ($pool_uuid) with vol0 ($(mapped vol0) blocks)" \
    "and snap0 ($(mapped snap0) blocks)"
stop_target

say "thinctl check: $("$bin/thinctl" check "$image" | tail -n 1)"

if [[ ! -x $bin/perf ]]; then
    echo "demo: no perf in $bin (cargo build --release -p perf):" \
        "skipping the perf comparison" >&2
    exit 0
fi
# Equal working sets: a 512 MiB RAM disk, and a 512 MiB volume of a pool on a 640 MiB one.
cat >"$work/raw.json" <<'EOF'
{"subsystems": [{"subsystem": "bdev", "config": [
  {"method": "bdev_malloc_create",
   "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 4096}}]}]}
EOF
cat >"$work/thin.json" <<'EOF'
{"subsystems": [{"subsystem": "bdev", "config": [
  {"method": "bdev_malloc_create",
   "params": {"name": "Malloc0", "num_blocks": 163840, "block_size": 4096}},
  {"method": "bdev_thin_pool_create", "params": {"bdev_name": "Malloc0", "pool_name": "pool0"}},
  {"method": "bdev_thin_create",
   "params": {"pool_name": "pool0", "volume_name": "vol0", "size_in_mib": 512}}]}]}
EOF
iops() {
    "$bin/perf" -c "$work/$1.json" ${2:+-T "$2"} -q 64 -o 4k -w randread -t "$perf_seconds" \
        --prefill --no-park | tr -d '\r' | awk '$1 == "Total" {printf "%.0f", $3}'
}
raw=$(iops raw)
thin_iops=$(iops thin pool0/vol0)
ratio=$(awk -v t="$thin_iops" -v r="$raw" 'BEGIN{printf "%.2f", t/r}')
say "perf, 4 KiB randread QD64, one core, ${perf_seconds} s: raw 512 MiB RAM disk $raw IOPS," \
    "512 MiB thin volume on it $thin_iops IOPS: thin/raw $ratio (BENCH.md: the fair figures)"
