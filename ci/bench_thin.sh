#!/usr/bin/env bash
# The thin pool figures of BENCH.md ("Thin pool (issue 12)"): perf --no-park, 4 KiB, QD64, one
# core unless said, thin and raw in the same invocation. Each pair runs ROUNDS times
# alternating (raw, thin, raw, thin, ...) and the medians are compared, since these machines
# are noisy. Over malloc (a 2 GiB RAM disk; the pool on it) and over a uring O_DIRECT file
# under the repository (1 GiB raw file vs a pool on a 1.1 GiB file).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-3}
ROUNDS=${ROUNDS:-3}
cargo build --release --quiet
PERF=target/release/perf
work=$(mktemp -d -p "$PWD" .bench.XXXX)
trap 'rm -rf "$work"' EXIT

iops() { tr -d "\r" | awk '$1 == "Total" {v=$3} END{print v}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
median() { sort -g | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
config() { # name entries...
    local name=$1; shift
    local IFS=,
    printf '{"subsystems":[{"subsystem":"bdev","config":[%s]}]}\n' "$*" > "$work/$name.json"
    echo "$work/$name.json"
}
malloc='{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":524288,"block_size":4096}}'
pool() { # bdev discard
    echo "{\"method\":\"bdev_thin_pool_create\",\"params\":{\"bdev_name\":\"$1\",\"pool_name\":\"pool0\",\"discard\":\"$2\"}}"
}
volume='{"method":"bdev_thin_create","params":{"pool_name":"pool0","volume_name":"vol0","size_in_mib":1024}}'

echo "machine: $(nproc) cores, $(uname -r), commit $(git rev-parse --short HEAD 2>/dev/null || echo none), load average $(cut -d" " -f1-3 /proc/loadavg)"

pair() { # label raw-config thin-config workload extra-thin-flags...
    local label=$1 raw=$2 thin=$3 workload=$4; shift 4
    local rs=() ts=()
    for _ in $(seq "$ROUNDS"); do
        rs+=("$($PERF -c "$raw" -q 64 -o 4k -w "$workload" -t "$SECONDS_PER_RUN" --no-park | iops)")
        ts+=("$($PERF -c "$thin" -q 64 -o 4k -w "$workload" -t "$SECONDS_PER_RUN" --no-park "$@" | iops)")
    done
    local r t
    r=$(printf '%s\n' "${rs[@]}" | median); t=$(printf '%s\n' "${ts[@]}" | median)
    echo "$label: raw $r IOPS, thin $t IOPS, ratio $(ratio "$t" "$r")   (raw ${rs[*]}; thin ${ts[*]})"
}

raw_malloc=$(config raw_malloc "$malloc")
thin_malloc=$(config thin_malloc "$malloc" "$(pool Malloc0 passdown)" "$volume")
pair "malloc randread, mapped (--prefill)" "$raw_malloc" "$thin_malloc" randread --prefill
pair "malloc randwrite, overwrite of mapped blocks (--prefill)" "$raw_malloc" "$thin_malloc" randwrite --prefill
pair "malloc randwrite, fresh volume (provisioning 64 KiB blocks, zeroing)" "$raw_malloc" "$thin_malloc" randwrite

raw_file="$work/raw.img"; pool_file="$work/pool.img"
dd if=/dev/zero of="$raw_file" bs=1M count=1024 conv=fsync status=none
truncate -s 1100M "$pool_file"
raw_uring=$(config raw_uring "{\"method\":\"bdev_uring_create\",\"params\":{\"name\":\"Uring0\",\"filename\":\"$raw_file\"}}")
make_pool=$(config make_pool "{\"method\":\"bdev_uring_create\",\"params\":{\"name\":\"Uring0\",\"filename\":\"$pool_file\"}}" "$(pool Uring0 passdown)" "$volume")
open_pool=$(config open_pool "{\"method\":\"bdev_uring_create\",\"params\":{\"name\":\"Uring0\",\"filename\":\"$pool_file\"}}")
# The pool's volume is written in full once; later runs open it by examine.
$PERF -c "$make_pool" -q 64 -o 64k -w write -t 0 --prefill >/dev/null
pair "uring O_DIRECT randread, mapped" "$raw_uring" "$open_pool" randread -T pool0/vol0
pair "uring O_DIRECT randwrite, overwrite of mapped blocks" "$raw_uring" "$open_pool" randwrite -T pool0/vol0
fresh_file="$work/fresh.img"
fresh() { rm -f "$fresh_file"; truncate -s 1100M "$fresh_file"; config fresh "{\"method\":\"bdev_uring_create\",\"params\":{\"name\":\"Uring0\",\"filename\":\"$fresh_file\"}}" "$(pool Uring0 passdown)" "$volume"; }
r=$($PERF -c "$raw_uring" -q 64 -o 4k -w randwrite -t "$SECONDS_PER_RUN" --no-park | iops)
t=$($PERF -c "$(fresh)" -q 64 -o 4k -w randwrite -t "$SECONDS_PER_RUN" --no-park | iops)
echo "uring O_DIRECT randwrite, fresh volume (provisioning): raw $r IOPS, thin $t IOPS, ratio $(ratio "$t" "$r")"

# Two cores vs one on mapped randread (thin over malloc; -C: every core runs a job on its half).
ones=(); twos=()
for _ in $(seq "$ROUNDS"); do
    ones+=("$($PERF -c "$thin_malloc" -q 64 -o 4k -w randread -t "$SECONDS_PER_RUN" --no-park --prefill -m 0x1 | iops)")
    twos+=("$($PERF -c "$thin_malloc" -q 64 -o 4k -w randread -t "$SECONDS_PER_RUN" --no-park --prefill -m 0x3 -C | iops)")
done
o=$(printf '%s\n' "${ones[@]}" | median); w=$(printf '%s\n' "${twos[@]}" | median)
echo "thin mapped randread, 2 cores vs 1: $w vs $o IOPS, ratio $(ratio "$w" "$o")   (1: ${ones[*]}; 2: ${twos[*]})"

# Unmap throughput, 64 KiB (one data block) unmaps of a mapped volume, passdown vs no_passdown.
for mode in passdown no_passdown; do
    c=$(config "unmap_$mode" "$malloc" "$(pool Malloc0 $mode)" "$volume")
    u=$($PERF -c "$c" -q 64 -o 64k -w unmap -t "$SECONDS_PER_RUN" --no-park --prefill | iops)
    echo "unmap 64 KiB QD64, $mode: $u IOPS"
done

# Snapshot of a fully mapped volume, 1 GiB vs 16 GiB; metadata RAM and open time at 1 M mappings.
cargo test --release -p bdev_thin --test thin_figures -- --ignored --nocapture 2>&1 | grep "snapshot of"
cargo test --release -p bdev_thin --lib million -- --ignored --nocapture 2>&1 | grep "1M mappings"
