#!/usr/bin/env bash
# The NBD figures of BENCH.md ("NBD export (issue 15)"): fio's nbd engine, 4 KiB randread and
# randwrite at QD32, against (b) a malloc bdev exported by thin_tgt and (c) `nbdkit memory`,
# one after the other in this one invocation. Both servers run on core 0 (taskset), fio on
# core 1; both devices are 1 GiB and written once in full before the timed runs.
# (a) is a thin volume (64 KiB blocks, on a 2 GiB malloc bdev) exported by a second thin_tgt
# the same way, also on core 0. Both daemons park when idle (a busy reactor still polls), so
# the one not being measured does not take the core.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
for tool in fio nbdkit taskset; do
    command -v "$tool" >/dev/null || { echo "bench_nbd.sh: $tool missing (ci/install.sh)" >&2; exit 1; }
done
cargo build --release --quiet --bin thin_tgt
work=$(mktemp -d -p "$PWD" .bench.XXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port: wait (at most 60 s) until it accepts
    local deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; done
    echo "bench_nbd.sh: nothing listens on $1" >&2; return 1
}
iops_fio() { sed -n 's/.*IOPS=\([0-9.]*[kM]*\).*/\1/p' | head -1 | awk '{v=$1; if (v ~ /M$/) v=v*1e6; else if (v ~ /k$/) v=v*1e3; print v+0}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
fio_nbd() { # uri rw extra...
    local uri=$1 rw=$2; shift 2
    fio --name=nbd --ioengine=nbd --uri="$uri" --rw="$rw" --bs=4k --iodepth=32 --size=1g \
        --cpus_allowed=1 "$@"
}

echo "machine: $(nproc) cores, $(uname -r), commit $(git rev-parse --short HEAD 2>/dev/null || echo none), load average $(cut -d" " -f1-3 /proc/loadavg)"

# (b) thin_tgt exporting a 1 GiB malloc bdev (4 KiB blocks), reactor on core 0.
port_ours=$(free_port)
cat > "$work/malloc.json" <<JSON
{"subsystems":[
 {"subsystem":"bdev","config":[{"method":"bdev_malloc_create",
   "params":{"name":"Malloc0","num_blocks":262144,"block_size":4096}}]},
 {"subsystem":"nbd","config":[{"method":"nbd_export_add","params":{"bdev_name":"Malloc0"}},
   {"method":"nbd_server_start","params":{"listen_address":"127.0.0.1","port":$port_ours}}]}]}
JSON
taskset -c 0 target/release/thin_tgt -m 0x1 -c "$work/malloc.json" -r "$work/spdk.sock" \
    2>"$work/thin_tgt.log" & pids+=($!)
wait_port "$port_ours"
ours="nbd://127.0.0.1:$port_ours/Malloc0"

# (a) thin_tgt exporting a 1 GiB thin volume of a pool on a 2 GiB malloc bdev.
port_thin=$(free_port)
cat > "$work/thin.json" <<JSON
{"subsystems":[
 {"subsystem":"bdev","config":[{"method":"bdev_malloc_create",
   "params":{"name":"Malloc1","num_blocks":524288,"block_size":4096}},
  {"method":"bdev_thin_pool_create","params":{"bdev_name":"Malloc1","pool_name":"pool0"}},
  {"method":"bdev_thin_create","params":{"pool_name":"pool0","volume_name":"vol0",
   "size_in_mib":1024}}]},
 {"subsystem":"nbd","config":[{"method":"nbd_export_add",
   "params":{"bdev_name":"pool0/vol0","export_name":"vol0"}},
   {"method":"nbd_server_start","params":{"listen_address":"127.0.0.1","port":$port_thin}}]}]}
JSON
taskset -c 0 target/release/thin_tgt -m 0x1 -c "$work/thin.json" \
    -r "$work/spdk-thin.sock" 2>"$work/thin_tgt_thin.log" & pids+=($!)
wait_port "$port_thin"
thin="nbd://127.0.0.1:$port_thin/vol0"

# (c) nbdkit's memory plugin, 1 GiB, on core 0.
port_peer=$(free_port)
taskset -c 0 nbdkit -f -i 127.0.0.1 -p "$port_peer" memory 1G & pids+=($!)
wait_port "$port_peer"
peer="nbd://127.0.0.1:$port_peer"

for uri in "$ours" "$peer" "$thin"; do # write every block once: reads move real data on all
    fio_nbd "$uri" write --bs=1m --iodepth=4 >/dev/null
done
# These machines are shared and noisy: the two servers alternate three times per workload and
# the medians are compared.
median() { sort -g | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
for rw in randread randwrite; do
    os=(); ps=(); ts=()
    for _ in 1 2 3; do
        os+=("$(fio_nbd "$ours" "$rw" --time_based --runtime="$SECONDS_PER_RUN" | iops_fio)")
        ps+=("$(fio_nbd "$peer" "$rw" --time_based --runtime="$SECONDS_PER_RUN" | iops_fio)")
        ts+=("$(fio_nbd "$thin" "$rw" --time_based --runtime="$SECONDS_PER_RUN" | iops_fio)")
    done
    o=$(printf '%s\n' "${os[@]}" | median); p=$(printf '%s\n' "${ps[@]}" | median)
    t=$(printf '%s\n' "${ts[@]}" | median)
    echo "NBD $rw 4k QD32: thin volume $t IOPS vs raw malloc $o IOPS, ratio $(ratio "$t" "$o")   (thin ${ts[*]})"
    echo "NBD $rw 4k QD32 (median of 3 alternating): thin_tgt malloc $o IOPS, nbdkit memory $p IOPS, ratio $(ratio "$o" "$p")"
    echo "  runs: thin_tgt ${os[*]}; nbdkit ${ps[*]}"
done
