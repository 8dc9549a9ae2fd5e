//! The seed's race over the wire: a thin pool on a remote NVMe/TCP namespace, whose passdown is
//! a real Dataset Management deallocate, with a proxy between initiator and target that holds
//! each deallocate back until a Write to the same blocks has been acknowledged (or a second
//! has passed).
//!
//! The pool is full; one virtual block is unmapped (its data block D goes to passdown) and, at
//! once, a new virtual block is written: the only block it can get is D. With the hold (the
//! pipeline as built), D is not handed out until its deallocate completed, so the write lands
//! after it and reads back. With the hold switched off (`mutations` feature, `NoHold`), the
//! write gets D while the deallocate is in flight, the proxy lets the deallocate go after the
//! write's acknowledgement, and the acknowledged data is wiped: the test shows the loss. The
//! target is ours on this test's reactors, then the Linux kernel's (`nvmet-tcp` in a QEMU guest
//! on a memory-backed `null_blk` with discard, the proxy in front of the harness's port
//! forward).
//!
//! The mutation is set process-wide for the pools made after it: the tests take turns.

mod common;
mod guest;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bdev_thin::host::{IoKind, IoRequest, IoStatus};
use common::nvme::{NQN, Side, attach_params, remote_target, request, run};
use common::nvme_proxy::NvmeProxy;
use serde_json::json;

const DATA_BLOCK: u64 = 65536;
/// How long the proxy holds a deallocate no write overtakes.
const HOLD: Duration = Duration::from_secs(1);

fn block_request(kind: IoKind, virtual_block: u64, fill: Option<u8>, tag: u64) -> IoRequest {
    let lbas = DATA_BLOCK / 512;
    request(kind, virtual_block * lbas, lbas, 512, fill, tag)
}

/// One test at a time: the mutation is process-wide.
static TURN: Mutex<()> = Mutex::new(());

/// What one run of the race shows.
struct Outcome {
    /// The byte the newly written block reads back as.
    read_back: u8,
    released_after_write: u64,
    held: u64,
}

/// A pool filling the remote namespace, then the unmap and the write that needs its block.
fn race(upstream: SocketAddr) -> Outcome {
    let proxy = NvmeProxy::start(upstream, HOLD);
    let local = Side::new();
    let handle = local.handle();
    let attach = attach_params(proxy.address, NQN, json!({}));
    assert_eq!(local.call("bdev_nvme_attach_controller", attach), json!(["Nvme0n1"]));
    local.call(
        "bdev_thin_pool_create",
        json!({"bdev_name": "Nvme0n1", "pool_name": "pool0", "data_block_size": DATA_BLOCK}),
    );
    let pools = local.call("bdev_thin_get_pools", json!({"pool_name": "pool0"}));
    let data_blocks = pools[0]["total_data_blocks"].as_u64().expect("data blocks");
    let volume = local.call(
        "bdev_thin_create",
        json!({"pool_name": "pool0", "volume_name": "vol0", "size_in_mib": 2 * data_blocks}),
    );
    let bdev = local.bdev(volume.as_str().expect("the volume's name"));

    let fill: Vec<IoRequest> = (0..data_blocks)
        .map(|block| block_request(IoKind::Write, block, Some(1 + block as u8), block))
        .collect();
    assert!(run(&handle, &bdev, fill).iter().all(|(_, s)| s.is_success()), "the pool fills");
    let pools = local.call("bdev_thin_get_pools", json!({"pool_name": "pool0"}));
    assert_eq!(pools[0]["free_data_blocks"], 0, "full: the next write needs the unmapped block");

    proxy.hold_deallocates(true);
    let racing = vec![
        block_request(IoKind::Unmap, 0, None, 0),
        block_request(IoKind::Write, data_blocks, Some(0xAB), 1),
    ];
    let statuses: Vec<IoStatus> = run(&handle, &bdev, racing).into_iter().map(|(_, s)| s).collect();
    assert_eq!(statuses, [IoStatus::Success, IoStatus::Success], "unmap and write acknowledged");
    let read = run(&handle, &bdev, vec![block_request(IoKind::Read, data_blocks, Some(0), 0)]);
    let (request, status) = &read[0];
    assert!(status.is_success());
    let bytes = request.buffers.segments()[0].as_slice();
    let read_back = bytes[0];
    assert!(bytes.iter().all(|&b| b == read_back), "the block reads one value throughout");
    let counters = proxy.counters();
    Outcome {
        read_back,
        released_after_write: counters.released_after_write.load(Ordering::SeqCst),
        held: counters.deallocates_held.load(Ordering::SeqCst),
    }
}

/// Both outcomes, each on a clean namespace from `clean_target` (a pool's superblock left
/// there would be found by examine at the next attach).
fn both_outcomes(mut clean_target: impl FnMut() -> SocketAddr) {
    let held = race(clean_target());
    assert!(held.held >= 1, "the passdown went out as a deallocate and the proxy held it");
    assert_eq!(held.released_after_write, 0, "no write reached the held block before it");
    assert_eq!(held.read_back, 0xAB, "the acknowledged write reads back");

    #[cfg(feature = "mutations")]
    {
        use bdev_thin::thin::mutations::{Mutation, Mutations};
        Mutations::set_for_new_pools(Mutations::NONE.with(Mutation::NoHold));
        let broken = race(clean_target());
        Mutations::set_for_new_pools(Mutations::NONE);
        assert_eq!(broken.read_back, 0, "the late deallocate wiped the acknowledged write");
        assert!(broken.held >= 1);
    }
}

/// 4 MiB of metadata region and a handful of data blocks.
const NAMESPACE_MIB: u64 = 6;

#[test]
fn the_hold_keeps_acknowledged_writes_and_without_it_the_late_deallocate_wipes_them() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let malloc = json!({"name": "Malloc0", "num_blocks": (NAMESPACE_MIB << 20) / 512,
        "block_size": 512});
    let mut remotes = Vec::new();
    both_outcomes(|| {
        let (remote, upstream) = remote_target(&[("bdev_malloc_create", malloc.clone())]);
        remotes.push(remote);
        upstream
    });
}

const KERNEL_TARGET_SCRIPT: &str = r#"
nullb_create nullb0 "$NAMESPACE_MIB"
nvmet_export "$NQN" /dev/nullb0 0.0.0.0 4420
serve 300
"#;

#[test]
fn the_same_race_against_the_linux_kernel_target() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let test = "the_same_race_against_the_linux_kernel_target";
    let Some(kit) = guest::kit(test) else { return };
    let spec = guest::GuestSpec::new("kernel_race", KERNEL_TARGET_SCRIPT)
        .env("NQN", NQN)
        .env("NAMESPACE_MIB", NAMESPACE_MIB)
        .guest_port(4420);
    let mut guest = guest::Guest::boot(kit, &spec);
    guest.wait_for("SERVING");
    let upstream = SocketAddr::from(([127, 0, 0, 1], guest.forwarded_port(4420)));
    let mut runs = 0;
    both_outcomes(|| {
        if runs > 0 {
            guest.run_ok(&format!(
                "dd if=/dev/zero of=/dev/nullb0 bs=1M count={NAMESPACE_MIB} oflag=direct"
            ));
        }
        runs += 1;
        upstream
    });
    guest.finish();
}
