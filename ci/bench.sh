#!/usr/bin/env bash
# Produces the foundation figures of BENCH.md: perf vs fio on null and on an O_DIRECT file,
# malloc on 1 and 2 cores, and an idle daemon's CPU use with and without parking.
# Every comparison runs both sides in the same invocation, alternating, pinned alike.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
cargo build --release --quiet
PERF=target/release/perf
work=$(mktemp -d -p "$PWD" .bench.XXXX)
trap 'rm -rf "$work"' EXIT

iops_perf() { tr -d "\r" | awk '$1 == "Total" {v=$3} END{print v}'; }
iops_fio() { sed -n 's/.*IOPS=\([0-9.]*[kM]*\).*/\1/p' | head -1 | awk '{v=$1; if (v ~ /M$/) v=v*1e6; else if (v ~ /k$/) v=v*1e3; print v+0}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }

config() { # name json-entries
    printf '{"subsystems":[{"subsystem":"bdev","config":[%s]}]}\n' "$2" > "$work/$1.json"
    echo "$work/$1.json"
}

echo "machine: $(nproc) cores, $(uname -r), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
# The machine is shared: the load says how much CPU the busy-polling side could get.
echo "start: $(uptime)"
trap 'echo "end: $(uptime)"; rm -rf "$work"' EXIT

median() { sort -g | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
# Each run also reports its CPU time over its wall time: a busy-polling reactor that the
# scheduler shares with other work gets less than 100 % (2 cores, other users), and its IOPS
# follow. The two sides of a comparison alternate ROUNDS times and their medians are compared.
ROUNDS=${ROUNDS:-3}
timed() { # command... -> its stdout in $work/out, "cpu% " appended to $work/cpu
    local TIMEFORMAT='%U %S %R'
    { time "$@" >"$work/out" 2>/dev/null; } 2>"$work/time"
    awk '{printf "%.0f%% ", ($1 + $2) / $3 * 100}' "$work/time" >>"$work/cpu"
}
# report LABEL A-NAME B-NAME: medians of the arrays as and bs, their ratio a/b, every run.
report() {
    local a b
    a=$(printf '%s\n' "${as[@]}" | median); b=$(printf '%s\n' "${bs[@]}" | median)
    echo "$1: $2 $a IOPS, $3 $b IOPS, ratio $(ratio "$a" "$b") (medians of $ROUNDS alternating)"
    echo "  runs: $2 ${as[*]}; $3 ${bs[*]}"
    echo "  CPU/wall of each run, alternating $2, $3: $(cat "$work/cpu")"
}

# 1. null: perf --no-park vs fio's null engine, 4 KiB randread QD128, one core.
null=$(config null '{"method":"bdev_null_create","params":{"name":"Null0","num_blocks":262144,"block_size":4096}}')
as=(); bs=(); : >"$work/cpu"
for _ in $(seq "$ROUNDS"); do
    timed $PERF -c "$null" -q 128 -o 4k -w randread -t "$SECONDS_PER_RUN" --no-park
    as+=("$(iops_perf <"$work/out")")
    timed fio --name=null --ioengine=null --rw=randread --bs=4k --iodepth=128 --size=1g \
        --time_based --runtime="$SECONDS_PER_RUN" --cpus_allowed=0
    bs+=("$(iops_fio <"$work/out")")
done
report "null randread QD128 1 core" perf fio

# 2. malloc: 4 KiB randread/randwrite QD64 on one and two cores (2 cores: -C, each job on
# half the blocks).
malloc=$(config malloc '{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":262144,"block_size":4096}}')
for w in randread randwrite; do
    as=(); bs=(); : >"$work/cpu"
    for _ in $(seq "$ROUNDS"); do
        timed $PERF -c "$malloc" -q 64 -o 4k -w "$w" -t "$SECONDS_PER_RUN" --no-park -m 0x3 -C
        as+=("$(iops_perf <"$work/out")")
        timed $PERF -c "$malloc" -q 64 -o 4k -w "$w" -t "$SECONDS_PER_RUN" --no-park -m 0x1
        bs+=("$(iops_perf <"$work/out")")
    done
    report "malloc $w QD64" "2-cores" "1-core"
done

# 3. uring on an O_DIRECT file under the repository vs fio io_uring on the same file.
image="$work/uring.img"
dd if=/dev/urandom of="$image" bs=1M count=1024 conv=fsync status=none
uring=$(config uring "{\"method\":\"bdev_uring_create\",\"params\":{\"name\":\"Uring0\",\"filename\":\"$image\"}}")
as=(); bs=(); : >"$work/cpu"
for _ in $(seq "$ROUNDS"); do
    timed $PERF -c "$uring" -q 64 -o 4k -w randread -t "$SECONDS_PER_RUN" --no-park
    as+=("$(iops_perf <"$work/out")")
    timed fio --name=uring --filename="$image" --ioengine=io_uring --direct=1 --rw=randread \
        --bs=4k --iodepth=64 --time_based --runtime="$SECONDS_PER_RUN" --cpus_allowed=0
    bs+=("$(iops_fio <"$work/out")")
done
report "uring O_DIRECT randread QD64 1 core" perf fio

# 4. An idle daemon on two cores: CPU used over the run, parking vs --no-park.
cpu_of() { # pid -> utime+stime in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}
for mode in park no-park; do
    flag=""; [ "$mode" = no-park ] && flag="--no-park"
    target/release/thin_tgt -m 0x3 $flag -r "$work/spdk.sock" 2>/dev/null & pid=$!
    # Wait for the daemon to be up (its reactors exist) before measuring.
    for _ in $(seq 100); do [ -e "/proc/$pid/task" ] && [ "$(ls /proc/$pid/task | wc -l)" -ge 3 ] && break; done
    before=$(cpu_of $pid); start=$(date +%s.%N)
    sleep "$SECONDS_PER_RUN"   # benchmark interval, not synchronisation
    after=$(cpu_of $pid); end=$(date +%s.%N)
    kill -TERM $pid; wait $pid || true
    ticks=$(getconf CLK_TCK)
    echo "idle thin_tgt -m 0x3 ($mode): $(awk -v a="$before" -v b="$after" -v s="$start" -v e="$end" -v t="$ticks" \
        'BEGIN{printf "%.1f%% of one core", (b-a)/t/(e-s)*100}')"
done
