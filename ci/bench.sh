#!/usr/bin/env bash
# Produces the foundation figures of BENCH.md: perf vs fio on null and on an O_DIRECT file,
# malloc on 1 and 2 cores, and an idle daemon's CPU use with and without parking.
# Every comparison runs both tools in the same invocation, one after the other, pinned alike.
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

# 1. null: perf --no-park vs fio's null engine, 4 KiB randread QD128, one core.
null=$(config null '{"method":"bdev_null_create","params":{"name":"Null0","num_blocks":262144,"block_size":4096}}')
p=$($PERF -c "$null" -q 128 -o 4k -w randread -t "$SECONDS_PER_RUN" --no-park | iops_perf)
f=$(fio --name=null --ioengine=null --rw=randread --bs=4k --iodepth=128 --size=1g --time_based \
    --runtime="$SECONDS_PER_RUN" --cpus_allowed=0 | iops_fio)
echo "null randread QD128 1 core: perf $p IOPS, fio $f IOPS, ratio $(ratio "$p" "$f")"

# 2. malloc: 4 KiB randread/randwrite QD64 on one and two cores.
malloc=$(config malloc '{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":262144,"block_size":4096}}')
for w in randread randwrite; do
    one=$($PERF -c "$malloc" -q 64 -o 4k -w "$w" -t "$SECONDS_PER_RUN" --no-park -m 0x1 | iops_perf)
    two=$($PERF -c "$malloc" -q 64 -o 4k -w "$w" -t "$SECONDS_PER_RUN" --no-park -m 0x3 -C | iops_perf)
    echo "malloc $w QD64: 1 core $one IOPS, 2 cores $two IOPS, ratio $(ratio "$two" "$one")"
done

# 3. uring on an O_DIRECT file under the repository vs fio io_uring on the same file. Disk
# figures wander, so the two alternate three times and the medians are compared.
image="$work/uring.img"
dd if=/dev/urandom of="$image" bs=1M count=1024 conv=fsync status=none
uring=$(config uring "{\"method\":\"bdev_uring_create\",\"params\":{\"name\":\"Uring0\",\"filename\":\"$image\"}}")
median() { sort -g | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
# Each run also reports its CPU time over its wall time: a busy-polling reactor that the
# scheduler shares with other work gets less than 100 %, and its IOPS follow.
timed() { # command... -> its stdout in $work/out, "cpu% " appended to $work/cpu
    local TIMEFORMAT='%U %S %R'
    { time "$@" >"$work/out" 2>/dev/null; } 2>"$work/time"
    awk '{printf "%.0f%% ", ($1 + $2) / $3 * 100}' "$work/time" >>"$work/cpu"
}
ps=(); fs=(); : >"$work/cpu"
for _ in 1 2 3; do
    timed $PERF -c "$uring" -q 64 -o 4k -w randread -t "$SECONDS_PER_RUN" --no-park
    ps+=("$(iops_perf <"$work/out")")
    timed fio --name=uring --filename="$image" --ioengine=io_uring --direct=1 --rw=randread \
        --bs=4k --iodepth=64 --time_based --runtime="$SECONDS_PER_RUN" --cpus_allowed=0
    fs+=("$(iops_fio <"$work/out")")
done
p=$(printf '%s\n' "${ps[@]}" | median); f=$(printf '%s\n' "${fs[@]}" | median)
echo "uring O_DIRECT randread QD64 1 core (median of 3 alternating): perf $p IOPS, fio $f IOPS, ratio $(ratio "$p" "$f")"
echo "  runs: perf ${ps[*]}; fio ${fs[*]}"
echo "  CPU/wall of each run, alternating perf, fio: $(cat "$work/cpu")"

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
