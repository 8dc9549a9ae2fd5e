//! Sizes and space a thin pool is asked for that it cannot serve, on the deterministic
//! stepping host: the owner refuses a volume size before anything is allocated or changed
//! (not a multiple of the LBA, past what a view can address, past the memory the pool's views
//! may take) and names the limit; a pool that ran out of data space says so until space is
//! back, and a grow that finds nothing to grow says that instead of answering success.

mod support;

use bdev_thin::host::IoStatus;
use bdev_thin::thin::mutations::Mutations;
use bdev_thin::thin::owner::{ControlOp, PoolError};
use bdev_thin::thin::pool::PoolLimits;
use bdev_thin::thin::types::{DiscardMode, PoolMode, VolumeId};
use bdev_thin::thin::view::VIEW_CHUNK_ENTRIES;
use support::*;

fn create_bytes(rig: &mut Rig, name: &str, size_bytes: u64) -> Result<VolumeId, PoolError> {
    let name = name.to_string();
    rig.control(|done| ControlOp::CreateVolume { uuid: [1; 16], name, size_bytes, done })
}

fn resize_bytes(rig: &mut Rig, volume: VolumeId, size_bytes: u64) -> Result<(), PoolError> {
    rig.control(|done| ControlOp::Resize { volume, size_bytes, done })
}

fn try_snapshot(rig: &mut Rig, origin: VolumeId, name: &str) -> Result<VolumeId, PoolError> {
    let name = name.to_string();
    rig.control(|done| ControlOp::Snapshot { origin, uuid: [2; 16], name, done })
}

fn delete(rig: &mut Rig, volume: VolumeId) -> Result<(), PoolError> {
    rig.control(|done| ControlOp::DeleteVolume { volume, done })
}

fn grow(rig: &mut Rig, data_blocks: u64) -> Result<(), PoolError> {
    rig.control(|done| ControlOp::Grow { data_blocks, done })
}

/// Virtual blocks one volume's view can address: its table's chunk slots, all of them.
const VOLUME_VBLOCKS_MAX: u64 = bdev_thin::limits::VOLUME_VIEW_CHUNKS_MAX * VIEW_CHUNK_ENTRIES;

#[test]
fn a_size_the_pool_cannot_address_is_refused_not_aborted() {
    let mut rig = Rig::new(32, settings(DiscardMode::Passdown, Mutations::NONE));
    // `size_in_mib` 2^40 once aborted the process allocating its view; a PiB took 6 GiB.
    for size_bytes in [1u64 << 60, 1 << 50, u64::MAX - 511] {
        let err = create_bytes(&mut rig, "huge", size_bytes).expect_err("refused");
        assert_eq!(err.errno(), libc::EINVAL, "{err}");
        let text = err.to_string();
        let max_bytes = VOLUME_VBLOCKS_MAX * u64::from(BLOCK);
        assert!(text.contains(&format!("over the {max_bytes} bytes")), "{text}");
        assert!(text.contains("48 MiB"), "names the view's limit: {text}");
    }
    // Not a multiple of the LBA, or nothing at all.
    for size_bytes in [0, 1000, u64::from(BLOCK) + 1] {
        let err = create_bytes(&mut rig, "odd", size_bytes).expect_err("refused");
        assert_eq!(err.errno(), libc::EINVAL, "{err}");
        assert!(err.to_string().contains("512-byte LBA"), "{err}");
    }
    assert!(rig.owner.metadata().volumes().next().is_none(), "nothing was created");
    // The largest volume there is: its view takes the whole table, so it cannot grow.
    let largest = VOLUME_VBLOCKS_MAX * u64::from(BLOCK);
    let err = create_bytes(&mut rig, "big", largest + u64::from(BLOCK)).expect_err("one too many");
    assert_eq!(err.errno(), libc::EINVAL);
    let big = create_bytes(&mut rig, "big", largest).expect("the largest volume");
    let err = resize_bytes(&mut rig, big, largest + u64::from(BLOCK)).expect_err("no room");
    assert_eq!(err.errno(), libc::EINVAL);
    let mut channel = rig.channel(big);
    let last = VOLUME_VBLOCKS_MAX - 1;
    assert_eq!(rig.run(&mut channel, write(last, 0x5a)).status, IoStatus::Success);
    assert_reads(&mut rig, &mut channel, last, 0x5a);
    assert_eq!(resize_bytes(&mut rig, big, 0).expect_err("empty").errno(), libc::EINVAL);
    rig.check();
}

#[test]
fn growing_a_volume_past_its_view_says_what_the_limit_is() {
    let mut rig = Rig::new(32, settings(DiscardMode::Passdown, Mutations::NONE));
    let volume = rig.create_volume("v", VIEW_CHUNK_ENTRIES);
    let capacity = 4 * VIEW_CHUNK_ENTRIES;
    let bytes = |blocks: u64| blocks * u64::from(BLOCK);
    assert_eq!(resize_bytes(&mut rig, volume, bytes(capacity)), Ok(()));
    let err = resize_bytes(&mut rig, volume, bytes(capacity + 1)).expect_err("past the view");
    assert_eq!(err.errno(), libc::EINVAL);
    let text = err.to_string();
    assert!(text.contains(&format!("can grow to {} bytes", bytes(capacity))), "{text}");
    assert!(text.contains("4 times its size"), "says why: {text}");
    // As the message says, a restart sizes the view for 4 times the size then.
    rig.commit();
    let mut rig = rig.reopen();
    assert_eq!(resize_bytes(&mut rig, volume, bytes(4 * capacity)), Ok(()));
    rig.check();
}

#[test]
fn views_past_the_pool_memory_are_refused_with_enospc() {
    // Room for the views of two volumes of one chunk each (with their room to grow 4 times).
    let mut config = settings(DiscardMode::Passdown, Mutations::NONE);
    config.limits = PoolLimits { view_chunks: 8, ..PoolLimits::PRODUCTION };
    let mut rig = Rig::new(32, config);
    let first = rig.create_volume("first", VIEW_CHUNK_ENTRIES);
    let second = rig.create_volume("second", VIEW_CHUNK_ENTRIES);
    let err = rig.try_create_volume("third", 1).expect_err("no view memory left");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(err.to_string().contains("0 bytes of volume fit"), "{err}");
    let err = try_snapshot(&mut rig, first, "snap").expect_err("no view memory left");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert_eq!(rig.owner.metadata().volumes().count(), 2, "nothing was created");
    // A deleted volume's view gives its memory back.
    assert_eq!(delete(&mut rig, second), Ok(()));
    let snapshot = try_snapshot(&mut rig, first, "snap").expect("room again");
    let mut channel = rig.channel(snapshot);
    assert_eq!(rig.run(&mut channel, write(0, 0x33)).status, IoStatus::Success);
    rig.check();
    // Reopened, each volume gets at least its size, within the pool's memory.
    let rig = rig.reopen();
    let used: u64 = [first, snapshot]
        .iter()
        .map(|&v| rig.shared.view(v).unwrap().capacity_vblocks() / VIEW_CHUNK_ENTRIES)
        .sum();
    assert!(used <= 8, "{used} chunk slots");
}

/// A pool of 8 blocks: a volume maps 4, a snapshot shares them, the volume overwrites them
/// (4 more) and a write to a fifth block finds no space. Deleting the snapshot frees 4.
#[test]
fn a_full_pool_is_writable_again_once_a_delete_freed_blocks() {
    let mut rig = Rig::new(8, settings(DiscardMode::Passdown, Mutations::NONE));
    let volume = rig.create_volume("v", 16);
    let mut channel = rig.channel(volume);
    for vblock in 0..4 {
        assert_eq!(rig.run(&mut channel, write(vblock, 0x10)).status, IoStatus::Success);
    }
    let snapshot = rig.snapshot(volume, "snap");
    for vblock in 0..4 {
        assert_eq!(rig.run(&mut channel, write(vblock, 0x20)).status, IoStatus::Success);
    }
    assert_eq!(rig.run(&mut channel, write(4, 0x20)).status, IoStatus::NoSpace);
    assert_eq!(rig.owner.mode(), PoolMode::OutOfDataSpace);
    // A grow that finds the device no larger says so, and the pool stays full.
    let err = grow(&mut rig, 8).expect_err("nothing to grow");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(err.to_string().contains("nothing to grow"), "{err}");
    assert_eq!(rig.owner.mode(), PoolMode::OutOfDataSpace);
    assert_eq!(delete(&mut rig, snapshot), Ok(()));
    rig.commit();
    assert_eq!(rig.owner.mode(), PoolMode::Write, "the delete's blocks came back");
    assert_eq!(rig.run(&mut channel, write(4, 0x20)).status, IoStatus::Success);
    rig.check();
}

#[test]
fn a_full_pool_grows_when_its_device_did() {
    let mut rig = Rig::growable(4, 4, settings(DiscardMode::Passdown, Mutations::NONE));
    let volume = rig.create_volume("v", 16);
    let mut channel = rig.channel(volume);
    for vblock in 0..4 {
        assert_eq!(rig.run(&mut channel, write(vblock, 0x10)).status, IoStatus::Success);
    }
    assert_eq!(rig.run(&mut channel, write(4, 0x10)).status, IoStatus::NoSpace);
    assert_eq!(rig.owner.mode(), PoolMode::OutOfDataSpace);
    assert_eq!(grow(&mut rig, 8), Ok(()));
    assert_eq!(rig.owner.mode(), PoolMode::Write);
    assert_eq!(grow(&mut rig, 8).expect_err("grown already").errno(), libc::ENOSPC);
    assert_eq!(rig.run(&mut channel, write(4, 0x10)).status, IoStatus::Success);
    rig.check();
}
