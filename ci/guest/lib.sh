# Helpers for the guest's test scripts (sourced by /init before /test.sh runs). The harness on
# the host reads marker lines ("@@ NAME key=value...") from the serial console and writes
# command lines to it; every wait here is bounded, so a lost host ends the guest.

mark() { echo "@@ $*"; }

# Busybox's shell runs its own applets before anything on PATH, and its blkdiscard, fstrim and
# mke2fs and fallocate lack what the tests use (-z, -E discard, -p): these name the real tools.
blkdiscard() { /sbin/blkdiscard "$@"; }
fallocate() { /sbin/fallocate "$@"; }
fstrim() { /sbin/fstrim "$@"; }
mke2fs() { /sbin/mke2fs "$@"; }
mkfs_ext4() { /sbin/mke2fs -t ext4 "$@"; }
fail() { mark FAIL "$*"; exit 1; }

# retry SECONDS CMD...: runs CMD every 0.1 s until it succeeds; fails after SECONDS.
retry() {
    tries=$(($1 * 10))
    shift
    until "$@"; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.1
    done
}

# serve [IDLE_SECONDS]: runs the shell lines the host sends, each in a subshell, answering each
# with "@@ RAN n=N rc=RC", until the host sends "quit" (or is silent for IDLE_SECONDS). It first
# says "@@ SERVING": what the script did before is done.
serve() {
    served=0
    mark SERVING
    while read -r -t "${1:-120}" line; do
        [ "$line" = quit ] && return 0
        served=$((served + 1))
        status=0
        (eval "$line") || status=$?
        mark RAN n="$served" rc="$status"
    done
    fail "serve: no command from the host for ${1:-120} s"
}

# nullb_create NAME SIZE_MIB [BLOCK_SIZE]: a memory-backed null_blk device with discard,
# /dev/NAME, whose discards show in /sys/block/NAME/stat.
nullb_create() {
    grep -q '^null_blk ' /proc/modules || modprobe null_blk nr_devices=0 || return 1
    device=/sys/kernel/config/nullb/$1
    mkdir "$device" &&
        echo "$2" > "$device/size" &&
        echo "${3:-512}" > "$device/blocksize" &&
        echo 1 > "$device/memory_backed" &&
        echo 1 > "$device/discard" &&
        echo 1 > "$device/power" &&
        retry 5 test -b "/dev/$1"
}

# nvmet_export NQN DEVICE TRADDR TRSVCID: the kernel target serves DEVICE as namespace 1 of
# subsystem NQN (any host) on NVMe/TCP TRADDR:TRSVCID.
nvmet_export() {
    config=/sys/kernel/config/nvmet
    subsystem=$config/subsystems/$1
    port=$config/ports/$4
    mkdir "$subsystem" &&
        echo 1 > "$subsystem/attr_allow_any_host" &&
        mkdir "$subsystem/namespaces/1" &&
        echo -n "$2" > "$subsystem/namespaces/1/device_path" &&
        echo 1 > "$subsystem/namespaces/1/enable" &&
        mkdir "$port" &&
        echo tcp > "$port/addr_trtype" &&
        echo ipv4 > "$port/addr_adrfam" &&
        echo "$3" > "$port/addr_traddr" &&
        echo "$4" > "$port/addr_trsvcid" &&
        ln -s "$subsystem" "$port/subsystems/$1"
}

# nvme_device NQN [NSID]: the block device of the connected subsystem NQN's namespace (1).
# With multipath (a subsystem that reports several controllers, as nvmet does) it is the
# subsystem's head device; otherwise the controller's own.
nvme_device() {
    for namespace in /sys/class/nvme-subsystem/*/nvme*n* /sys/class/nvme/nvme*/nvme*n*; do
        name=${namespace##*/}
        case "$name" in *c*) continue ;; esac # a hidden path device, nvmeXcYnZ
        [ "$(cat "$namespace/nsid" 2>/dev/null)" = "${2:-1}" ] || continue
        [ "$(cat "${namespace%/*}/subsysnqn")" = "$1" ] || continue
        echo "/dev/$name"
        return 0
    done
    return 1
}

# nvme_controller NQN: the name (nvmeN) of a live controller of the connected subsystem NQN.
nvme_controller() {
    for controller in /sys/class/nvme/nvme*; do
        [ "$(cat "$controller/subsysnqn" 2>/dev/null)" = "$1" ] || continue
        [ "$(cat "$controller/state" 2>/dev/null)" = live ] || continue
        echo "${controller##*/}"
        return 0
    done
    return 1
}

# wait_nvme_device NQN [NSID]: nvme_device once the namespace's block device is there.
wait_nvme_device() {
    retry 10 nvme_device_ready "$@" || return 1
    nvme_device "$@"
}
nvme_device_ready() { test -b "$(nvme_device "$@")"; }

# discard_stat DEVICE: "@@ DISCARDS device=D ios=N sectors=S" from /sys/block/D/stat (fields
# 12 and 14: discard requests completed and 512-byte sectors discarded).
discard_stat() {
    set -- "${1#/dev/}" $(cat "/sys/block/${1#/dev/}/stat")
    mark DISCARDS device="$1" ios="${13}" sectors="${15}"
}

# reads_zeroes DEVICE OFFSET_BYTES LENGTH_BYTES: whether that range reads back as zeroes
# (direct IO, so the device answers, not the page cache).
reads_zeroes() {
    [ $(($2 % 4096)) = 0 ] && [ $(($3 % 4096)) = 0 ] || return 2
    a=$(dd if="$1" bs=4096 skip=$(($2 / 4096)) count=$(($3 / 4096)) iflag=direct 2>/dev/null |
        md5sum)
    b=$(dd if=/dev/zero bs=4096 count=$(($3 / 4096)) 2>/dev/null | md5sum)
    [ "$a" = "$b" ]
}
