//! Tests of the QEMU guest harness itself (`tests/guest/`), with Linux on both ends, so the
//! NVMe/TCP tests of `thin_tgt` can trust it:
//!
//! - the guest's kernel host (`nvme-tcp`, nvme-cli) against the guest's kernel target
//!   (`nvmet-tcp` on a memory-backed `null_blk` with discard) over the guest's 127.0.0.1, every
//!   step the Linux-host tests run against our target: discover, connect, a direct-IO pattern,
//!   ext4 made with discard, files written and some deleted, fstrim, `blkdiscard -z`, the
//!   surviving files verified after a remount, disconnect;
//! - the guest's `nvmet-tcp` reached from the host through the harness's port forward, by a
//!   minimal NVMe/TCP host written here (ICReq, Connect for the admin and an IO queue, CC.EN,
//!   one Dataset Management deallocate), and the deallocate seen in the guest's discard
//!   counters (`/sys/block/X/stat`, reported over the console) and as zeroes.
//!
//! Without QEMU or the guest kernel the tests print a loud skip; with CI=true they fail.

mod guest;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use guest::{Guest, GuestSpec};

/// The NVMe/TCP port nvmet listens on inside the guest.
const NVME_PORT: u16 = 4420;

const KERNEL_PAIR_SCRIPT: &str = r#"
nullb_create nullb0 256
nvmet_export "$NQN" /dev/nullb0 127.0.0.1 4420
nvme discover -t tcp -a 127.0.0.1 -s 4420 > /tmp/discovery
grep -q "subnqn: *$NQN" /tmp/discovery || fail "discovery log without $NQN"
mark DISCOVERED
nvme connect -t tcp -a 127.0.0.1 -s 4420 -n "$NQN"
device=$(wait_nvme_device "$NQN")
controller=$(nvme_controller "$NQN")
mark CONNECTED device="$device" queues="$(cat "/sys/class/nvme/$controller/queue_count")"

# A pattern written and read back with direct IO.
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null
dd if=/tmp/pattern of="$device" bs=1M seek=8 oflag=direct 2>/dev/null
[ "$(md5sum < /tmp/pattern)" = "$(dd if="$device" bs=1M skip=8 count=4 iflag=direct 2>/dev/null |
    md5sum)" ] || fail "pattern read back differs"
mark PATTERN-OK

# ext4 made with discard; files written, some deleted, fstrim.
mkfs_ext4 -q -F -E discard "$device" < /dev/null
discard_stat nullb0
mkdir -p /mnt/volume
mount -t ext4 "$device" /mnt/volume
for i in 1 2 3 4 5 6 7 8; do
    dd if=/dev/urandom of="/mnt/volume/file$i" bs=1M count=2 2>/dev/null
done
sync
rm /mnt/volume/file2 /mnt/volume/file4 /mnt/volume/file6 /mnt/volume/file8
(cd /mnt/volume && md5sum file1 file3 file5 file7) > /tmp/sums
sync
discard_stat nullb0
fstrim -v /mnt/volume > /tmp/fstrim
mark FSTRIM bytes="$(sed -n 's/.*[ (]\([0-9][0-9]*\) bytes.*/\1/p' /tmp/fstrim)"
discard_stat nullb0
umount /mnt/volume
mount -t ext4 "$device" /mnt/volume
(cd /mnt/volume && md5sum -c /tmp/sums > /dev/null) || fail "files differ after remount"
umount /mnt/volume
mark FILES-OK

# blkdiscard -z over a range that holds data: it reads zeroes after.
dd if=/dev/urandom of="$device" bs=1M seek=200 count=16 oflag=direct 2>/dev/null
reads_zeroes "$device" $((200 << 20)) $((16 << 20)) && fail "the range read zeroes before"
blkdiscard -f -z -o $((200 << 20)) -l $((16 << 20)) "$device"
reads_zeroes "$device" $((200 << 20)) $((16 << 20)) || fail "blkdiscard -z left data"
mark ZEROED
nvme disconnect -n "$NQN"
[ ! -e "$device" ] || fail "$device still there after disconnect"
mark DISCONNECTED
"#;

/// Everything the Linux-host tests of our target do, done against the kernel's own target.
#[test]
fn kernel_host_and_kernel_target_in_one_guest() {
    let Some(kit) = guest::kit("kernel_host_and_kernel_target_in_one_guest") else { return };
    let spec = GuestSpec::new("kernel_pair", KERNEL_PAIR_SCRIPT)
        .env("NQN", "nqn.2024-01.io.bdev-thin:kernel-pair");
    let mut guest = Guest::boot(kit, &spec);
    guest.wait_for("DISCOVERED");
    let connected = guest.wait_for("CONNECTED");
    // -smp 2: the host opens one IO queue per CPU, besides the admin queue.
    assert_eq!(connected.number("queues"), 3, "{}", connected.line);
    guest.wait_for("PATTERN-OK");
    let after_mkfs = guest.wait_for("DISCARDS");
    assert!(after_mkfs.number("ios") > 0, "mkfs -E discard sent no discard: {}", after_mkfs.line);
    let before_trim = guest.wait_for("DISCARDS");
    let trimmed = guest.wait_for("FSTRIM").number("bytes");
    let after_trim = guest.wait_for("DISCARDS");
    // The four deleted 2 MiB files at least.
    assert!(trimmed >= 8 << 20, "fstrim trimmed {trimmed} bytes");
    assert!(after_trim.number("ios") > before_trim.number("ios"), "{}", after_trim.line);
    assert!(
        (after_trim.number("sectors") - before_trim.number("sectors")) * 512 >= 8 << 20,
        "the deallocates did not reach the device: {} then {}",
        before_trim.line,
        after_trim.line
    );
    guest.wait_for("FILES-OK");
    guest.wait_for("ZEROED");
    guest.wait_for("DISCONNECTED");
    let elapsed = guest.finish();
    eprintln!("kernel pair guest: {elapsed:?} from launch to exit");
}

const GUEST_TARGET_SCRIPT: &str = r#"
nullb_create nullb0 64
nvmet_export "$NQN" /dev/nullb0 0.0.0.0 4420
dd if=/dev/urandom of=/dev/nullb0 bs=1M count=2 oflag=direct 2>/dev/null
serve
"#;

/// The guest's nvmet-tcp, reached through the hostfwd: a deallocate from the host arrives as a
/// discard on the guest's device.
#[test]
fn guest_target_reached_from_the_host() {
    let Some(kit) = guest::kit("guest_target_reached_from_the_host") else { return };
    let nqn = "nqn.2024-01.io.bdev-thin:guest-target";
    let spec =
        GuestSpec::new("guest_target", GUEST_TARGET_SCRIPT).env("NQN", nqn).guest_port(NVME_PORT);
    let mut guest = Guest::boot(kit, &spec);
    guest.wait_for("SERVING");
    let port = guest.forwarded_port(NVME_PORT);
    let host_nqn = "nqn.2024-01.io.bdev-thin:harness-host";

    let mut admin = NvmeTcpQueue::connect(port);
    let controller_id = wire(&mut guest, admin.fabrics_connect(0, 0xffff, nqn, host_nqn));
    wire(&mut guest, admin.property_set(PROPERTY_CC, CC_ENABLE));
    let mut ready = false;
    for _ in 0..1000 {
        ready = wire(&mut guest, admin.property_get(PROPERTY_CSTS)) & 1 == 1;
        if ready {
            break;
        }
    }
    assert!(ready, "CSTS.RDY never set");
    let mut io = NvmeTcpQueue::connect(port);
    wire(&mut guest, io.fabrics_connect(1, controller_id, nqn, host_nqn));

    let before = guest.query("discard_stat nullb0", "DISCARDS");
    // Deallocate the first MiB (2048 sectors of 512 bytes); the second keeps its data.
    wire(&mut guest, io.deallocate(1, 0, 2048));
    let after = guest.query("discard_stat nullb0", "DISCARDS");
    assert!(after.number("ios") > before.number("ios"), "{}", after.line);
    assert_eq!(after.number("sectors") - before.number("sectors"), 2048, "{}", after.line);
    guest.run_ok("reads_zeroes /dev/nullb0 0 1048576");
    assert_ne!(guest.run("reads_zeroes /dev/nullb0 1048576 1048576"), 0, "the second MiB was lost");
    drop(io);
    drop(admin);
    guest.finish();
}

/// The outcome of a command, or a failure that shows the guest kernel's log.
fn wire<T>(guest: &mut Guest, result: Result<T, String>) -> T {
    result.unwrap_or_else(|error| guest.fail(&error))
}

const PROPERTY_CC: u32 = 0x14;
const PROPERTY_CSTS: u32 = 0x1c;
/// CC.EN with IOSQES 6 (64-byte SQ entries) and IOCQES 4 (16-byte CQ entries).
const CC_ENABLE: u64 = 1 | (6 << 16) | (4 << 20);

/// One NVMe/TCP queue of a minimal host: enough to prove the port forward carries the
/// protocol (the real initiator lives in the library).
struct NvmeTcpQueue {
    stream: TcpStream,
    command_id: u16,
}

impl NvmeTcpQueue {
    /// Opens the connection and exchanges ICReq/ICResp.
    fn connect(port: u16) -> NvmeTcpQueue {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the hostfwd");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
        let mut queue = NvmeTcpQueue { stream, command_id: 0 };
        let mut request = [0u8; 128];
        request[2] = 128; // HLEN
        request[4..8].copy_from_slice(&128u32.to_le_bytes()); // PLEN
        queue.stream.write_all(&request).expect("send ICReq");
        let mut response = [0u8; 128];
        queue.stream.read_exact(&mut response).expect("read ICResp");
        assert_eq!((response[0], response[2]), (0x01, 128), "not an ICResp: {response:02x?}");
        queue
    }

    /// Sends a command capsule with `data` in capsule; returns the CQE's DW0, or the failure.
    fn command(&mut self, mut sqe: [u8; 64], data: &[u8]) -> Result<u32, String> {
        self.command_id += 1;
        sqe[2..4].copy_from_slice(&self.command_id.to_le_bytes());
        // Fabrics commands carry one SGL descriptor (PSDT 01b): in-capsule data is a data block
        // at an offset into the capsule (type 0x01); no data, a null transport data block.
        sqe[1] = 0x40;
        sqe[32..36].copy_from_slice(&u32::try_from(data.len()).expect("small").to_le_bytes());
        sqe[39] = if data.is_empty() { 0x50 } else { 0x01 };
        let plen = u32::try_from(72 + data.len()).expect("small capsule");
        let mut pdu = vec![0x04, 0, 72, if data.is_empty() { 0 } else { 72 }];
        pdu.extend_from_slice(&plen.to_le_bytes());
        pdu.extend_from_slice(&sqe);
        pdu.extend_from_slice(data);
        self.stream.write_all(&pdu).expect("send a command capsule");
        let mut response = [0u8; 24];
        self.stream.read_exact(&mut response).expect("read a response capsule");
        assert_eq!(response[0], 0x05, "not a CapsuleResp: {response:02x?}");
        let cqe = &response[8..24];
        assert_eq!(u16::from_le_bytes([cqe[12], cqe[13]]), self.command_id, "command id");
        let status = u16::from_le_bytes([cqe[14], cqe[15]]) >> 1;
        if status != 0 {
            return Err(format!(
                "command {:#04x} (fabrics type {:#04x}) failed: status {status:#x}",
                sqe[0], sqe[4]
            ));
        }
        Ok(u32::from_le_bytes([cqe[0], cqe[1], cqe[2], cqe[3]]))
    }

    /// Fabrics Connect for queue `qid`; returns the controller ID.
    fn fabrics_connect(
        &mut self,
        qid: u16,
        controller_id: u16,
        nqn: &str,
        host_nqn: &str,
    ) -> Result<u16, String> {
        let mut sqe = [0u8; 64];
        sqe[0] = 0x7f; // Fabrics
        sqe[4] = 0x01; // Connect
        sqe[42..44].copy_from_slice(&qid.to_le_bytes());
        sqe[44..46].copy_from_slice(&31u16.to_le_bytes()); // SQSIZE, 0's based
        let mut data = [0u8; 1024];
        data[..16].copy_from_slice(b"bdev-thin-guest!"); // host ID
        data[16..18].copy_from_slice(&controller_id.to_le_bytes());
        data[256..256 + nqn.len()].copy_from_slice(nqn.as_bytes());
        data[512..512 + host_nqn.len()].copy_from_slice(host_nqn.as_bytes());
        Ok(u16::try_from(self.command(sqe, &data)? & 0xffff).expect("16 bits"))
    }

    fn property_set(&mut self, offset: u32, value: u64) -> Result<u32, String> {
        let mut sqe = [0u8; 64];
        sqe[0] = 0x7f;
        sqe[4] = 0x00; // Property Set, 4 bytes (ATTRIB 0)
        sqe[44..48].copy_from_slice(&offset.to_le_bytes());
        sqe[48..56].copy_from_slice(&value.to_le_bytes());
        self.command(sqe, &[])
    }

    fn property_get(&mut self, offset: u32) -> Result<u32, String> {
        let mut sqe = [0u8; 64];
        sqe[0] = 0x7f;
        sqe[4] = 0x04; // Property Get, 4 bytes
        sqe[44..48].copy_from_slice(&offset.to_le_bytes());
        self.command(sqe, &[])
    }

    /// Dataset Management with one range and the deallocate attribute.
    fn deallocate(&mut self, nsid: u32, first_lba: u64, lba_count: u32) -> Result<u32, String> {
        let mut sqe = [0u8; 64];
        sqe[0] = 0x09;
        sqe[4..8].copy_from_slice(&nsid.to_le_bytes());
        sqe[40..44].copy_from_slice(&0u32.to_le_bytes()); // NR: one range, 0's based
        sqe[44..48].copy_from_slice(&0x4u32.to_le_bytes()); // AD
        let mut range = [0u8; 16];
        range[4..8].copy_from_slice(&lba_count.to_le_bytes());
        range[8..16].copy_from_slice(&first_lba.to_le_bytes());
        self.command(sqe, &range)
    }
}
