//! Control operations of the thin pool against the IO that runs beside them, on the
//! deterministic stepping host: snapshots quiesce their origin and several snapshots of one
//! origin are taken one after the other; a control operation completes or changes nothing;
//! a failed commit leaves a pool that takes no write and says so after a restart; names are
//! unique; sizes are checked. Each mechanism is shown both ways where a `mutations` switch
//! re-enables the bug.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bdev_thin::host::{DeviceChannel, IoKind, IoStatus};
use bdev_thin::testing::{SimDevice, SimFault};
use bdev_thin::thin::metadata::{Layout, PoolMetadata};
use bdev_thin::thin::mutations::Mutations;
use bdev_thin::thin::owner::{ControlOp, PoolError};
use bdev_thin::thin::types::{DataBlock, DiscardMode, Mapping, PoolMode, VirtBlock, VolumeId};
use bdev_thin::thin::view::Resolved;
use support::*;

/// The byte a block holds throughout, if it holds one byte throughout (keeps assertion
/// messages short).
fn uniform(bytes: &[u8]) -> Option<u8> {
    let first = *bytes.first()?;
    bytes.iter().all(|&b| b == first).then_some(first)
}

fn mapped_block(rig: &Rig, volume: VolumeId, vblock: u64) -> u64 {
    rig.owner.metadata().lookup(volume, VirtBlock(vblock)).expect("mapped").data_block.0
}

fn snapshot_later(rig: &Rig, origin: VolumeId, name: &str) -> Answer<VolumeId> {
    let name = name.to_string();
    rig.push_control(|done| ControlOp::Snapshot { origin, uuid: [3; 16], name, done })
}

/// Block 0 of `volume` as read now through a fresh channel.
fn read_block0(rig: &mut Rig, volume: VolumeId) -> Vec<u8> {
    let mut channel = rig.channel(volume);
    let done = rig.run(&mut channel, read(0));
    assert_eq!(done.status, IoStatus::Success);
    bytes_of(&done)
}

/// A fast-path write to the origin is in flight (held by the device) when a snapshot is
/// asked for. The snapshot waits for it (quiesce, then the grace period of the writes that
/// resolved their block before the flag), so the snapshot holds the write and never changes
/// after its acknowledgement. Returns whether the snapshot was answered while the write was
/// held, and the snapshot's block 0 at its answer and after the write landed.
fn snapshot_beside_a_fast_path_write(mutations: Mutations) -> (bool, Vec<u8>, Vec<u8>) {
    let mut rig = Rig::new(32, settings(DiscardMode::Passdown, mutations));
    let origin = rig.create_volume("origin", 8);
    let mut channel = rig.channel(origin);
    assert_eq!(rig.run(&mut channel, write(0, 0xa0)).status, IoStatus::Success);
    let block_lba = rig.data_lba(mapped_block(&rig, origin, 0));
    rig.device.hold(move |io| io.kind == IoKind::Write && io.offset_blocks == block_lba);
    channel.submit(write(0, 0xb0)).unwrap();
    channel.poll(&mut |_| panic!("the fast-path write is held"));
    assert!(
        rig.device.pending().iter().any(|io| io.offset_blocks == block_lba),
        "the write went straight to the device (fast path)"
    );
    let answer = snapshot_later(&rig, origin, "snap");
    let early = rig.answer(&answer, 200);
    let answered_while_held = early.is_some();
    let before = early.map(|snapshot| read_block0(&mut rig, snapshot.unwrap()));
    let held = rig.device.pending().into_iter().find(|io| io.offset_blocks == block_lba).unwrap();
    rig.device.release_hold();
    rig.device.complete(held.id);
    let landed = rig.wait(&mut channel, 10).expect("the held write completes");
    assert_eq!(landed.status, IoStatus::Success);
    let snapshot = match rig.answer(&answer, 1000) {
        Some(snapshot) => snapshot.unwrap(),
        None => rig.owner.metadata().volumes().find(|v| v.name == "snap").unwrap().id,
    };
    let before = before.unwrap_or_else(|| read_block0(&mut rig, snapshot));
    let after = read_block0(&mut rig, snapshot);
    rig.check();
    (answered_while_held, before, after)
}

#[test]
fn a_snapshot_waits_for_the_fast_path_writes_of_its_origin() {
    let (answered_while_held, before, after) = snapshot_beside_a_fast_path_write(Mutations::NONE);
    assert!(!answered_while_held, "the snapshot waits for the write in flight");
    assert_eq!(uniform(&before), Some(0xb0), "the snapshot holds the write");
    assert_eq!(uniform(&after), Some(0xb0), "and never changes after its acknowledgement");
}

#[cfg(feature = "mutations")]
#[test]
fn without_quiesce_a_snapshot_changes_after_its_acknowledgement() {
    use bdev_thin::thin::mutations::Mutation;
    let (answered_while_held, before, after) =
        snapshot_beside_a_fast_path_write(Mutations::NONE.with(Mutation::NoQuiesce));
    assert!(answered_while_held, "taken at once");
    assert_eq!(uniform(&before), Some(0xa0));
    assert_eq!(uniform(&after), Some(0xb0), "the write in flight changed the snapshot");
}

/// Two snapshots of one origin asked for together. After the first is answered, writes to
/// the origin give it new, certainly-unshared blocks; a fast-path write to one of them is held
/// in flight while the owner is busy with another block of the origin. The second snapshot
/// must not share that block while the write is in flight: it is taken under a quiesce that
/// lasts until it is answered. Returns the second snapshot's block 0 at its answer and after
/// the held write landed.
fn two_snapshots_of_one_origin(mutations: Mutations) -> (Vec<u8>, Vec<u8>) {
    let mut rig = Rig::new(32, settings(DiscardMode::Passdown, mutations));
    let origin = rig.create_volume("origin", 8);
    let mut first_channel = rig.channel(origin);
    let mut second_channel = rig.channel(origin);
    assert_eq!(rig.run(&mut first_channel, write(0, 0xa0)).status, IoStatus::Success);
    assert_eq!(rig.run(&mut first_channel, write(1, 0xa1)).status, IoStatus::Success);
    let block1_lba = rig.data_lba(mapped_block(&rig, origin, 1));
    let first = snapshot_later(&rig, origin, "s1");
    let second = snapshot_later(&rig, origin, "s2");
    rig.answer(&first, 1000).expect("the first snapshot is answered").unwrap();
    // A partial write of block 1 copies it; the copy's read is held, so the owner stays
    // busy with the origin.
    rig.device.hold(move |io| io.kind == IoKind::Read && io.offset_blocks == block1_lba);
    first_channel.submit(partial_write(1, 0, 1, 0xb1)).unwrap();
    // A whole-block write of block 0 gets a new block, published certainly unshared.
    let done = rig.run(&mut second_channel, write(0, 0xb0));
    assert_eq!(done.status, IoStatus::Success);
    let block0_lba = rig.data_lba(mapped_block(&rig, origin, 0));
    rig.device.hold(move |io| {
        (io.kind == IoKind::Read && io.offset_blocks == block1_lba)
            || (io.kind == IoKind::Write && io.offset_blocks == block0_lba)
    });
    second_channel.submit(write(0, 0xc0)).unwrap();
    second_channel.poll(&mut |_| panic!("the write is held"));
    assert!(
        rig.device.pending().iter().any(|io| io.offset_blocks == block0_lba),
        "the write to the unshared block went straight to the device (fast path)"
    );
    // The owner finishes block 1; the second snapshot may now be taken.
    let copy_read =
        rig.device.pending().into_iter().find(|io| io.offset_blocks == block1_lba).unwrap();
    rig.device.complete(copy_read.id);
    let snapshot = rig.answer(&second, 1000).expect("the second snapshot is answered").unwrap();
    let before = read_block0(&mut rig, snapshot);
    let held = rig.device.pending().into_iter().find(|io| io.offset_blocks == block0_lba).unwrap();
    rig.device.release_hold();
    rig.device.complete(held.id);
    assert_eq!(rig.wait(&mut second_channel, 10).expect("landed").status, IoStatus::Success);
    assert_eq!(rig.wait(&mut first_channel, 1000).expect("copied").status, IoStatus::Success);
    let after = read_block0(&mut rig, snapshot);
    rig.check();
    (before, after)
}

#[test]
fn snapshots_of_one_origin_are_taken_one_after_the_other() {
    let (before, after) = two_snapshots_of_one_origin(Mutations::NONE);
    assert_eq!(uniform(&before), Some(0xa0), "taken before the writes that waited for it");
    assert_eq!(uniform(&after), Some(0xa0), "and never changed after its acknowledgement");
}

#[cfg(feature = "mutations")]
#[test]
fn a_quiesce_ended_by_the_first_snapshot_lets_the_second_change() {
    use bdev_thin::thin::mutations::Mutation;
    let mutations = Mutations::NONE.with(Mutation::QuiesceEndsWithFirstSnapshot);
    let (before, after) = two_snapshots_of_one_origin(mutations);
    assert_eq!(uniform(&before), Some(0xb0));
    assert_eq!(uniform(&after), Some(0xc0), "the held write changed the snapshot");
}

fn create_later(rig: &Rig, name: &str) -> Answer<VolumeId> {
    let name = name.to_string();
    rig.push_control(|done| ControlOp::CreateVolume {
        uuid: [4; 16],
        name,
        size_bytes: 8 * u64::from(BLOCK),
        done,
    })
}

fn errno_of<T: std::fmt::Debug>(answer: Option<Result<T, PoolError>>) -> i32 {
    answer.expect("answered").expect_err("refused").errno()
}

#[test]
fn the_owner_refuses_a_second_volume_with_a_name_in_use() {
    let mut rig = Rig::new(32, settings(DiscardMode::Passdown, Mutations::NONE));
    // Two creates with one name, handled in one poll: the second is refused.
    let first = create_later(&rig, "twin");
    let second = create_later(&rig, "twin");
    let origin = rig.answer(&first, 1000).expect("answered").expect("created");
    assert_eq!(errno_of(rig.answer(&second, 1000)), libc::EEXIST);
    // Two snapshots with one name, and a create with the name of a snapshot still queued.
    let snapshot = snapshot_later(&rig, origin, "snap");
    let same_snapshot = snapshot_later(&rig, origin, "snap");
    let same_create = create_later(&rig, "snap");
    rig.answer(&snapshot, 1000).expect("answered").expect("taken");
    assert_eq!(errno_of(rig.answer(&same_snapshot, 1000)), libc::EEXIST);
    assert_eq!(errno_of(rig.answer(&same_create, 1000)), libc::EEXIST);
    // A snapshot named like an existing volume.
    let clash = snapshot_later(&rig, origin, "twin");
    assert_eq!(errno_of(rig.answer(&clash, 1000)), libc::EEXIST);
    rig.check();
    let rig = rig.reopen();
    let mut names: Vec<String> = rig.owner.metadata().volumes().map(|v| v.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["snap", "twin"], "one volume per name after a restart");
}

/// A provisioning write lands while a commit runs, and the commit then fails. The pool turns
/// read-only: the write is not acknowledged (its mapping was never committed and is not
/// inserted), and no later write reaches the device, through the owner or the fast path.
/// Returns the statuses of the write that landed during the commit and of a later write to
/// the same block, and what the block reads.
fn write_landing_in_a_failed_commit(mutations: Mutations) -> (IoStatus, IoStatus, Vec<u8>) {
    let mut rig = Rig::new(16, settings(DiscardMode::Passdown, mutations));
    let volume = rig.create_volume("v", 8);
    let mut channel = rig.channel(volume);
    assert_eq!(rig.run(&mut channel, write(0, 0x31)).status, IoStatus::Success);
    assert_eq!(rig.run(&mut channel, flush()).status, IoStatus::Success);
    // Something for the next commit to write.
    assert_eq!(rig.run(&mut channel, write(2, 0x30)).status, IoStatus::Success);
    let data_lba = rig.metadata_region_lbas();
    rig.device.hold(move |io| {
        io.kind == IoKind::Flush || (io.kind == IoKind::Write && io.offset_blocks >= data_lba)
    });
    channel.submit(write(1, 0x32)).unwrap();
    assert!(rig.wait(&mut channel, 20).is_none(), "the provisioning write is held");
    channel.submit(flush()).unwrap();
    assert!(rig.wait(&mut channel, 20).is_none(), "the commit's data flush is held");
    let pending = rig.device.pending();
    let provision = pending.iter().find(|io| io.kind == IoKind::Write).unwrap().id;
    let data_flush = pending.iter().find(|io| io.kind == IoKind::Flush).unwrap().id;
    // The payload lands while the commit runs; its mapping waits for the commit's end.
    rig.device.complete(provision);
    assert!(rig.wait(&mut channel, 20).is_none(), "answered only after the commit");
    // Every metadata write fails from now on: the commit fails.
    rig.device.add_fault(SimFault {
        kind: IoKind::Write,
        blocks: (0, data_lba - 1),
        errno: libc::EIO,
        remaining: u32::MAX,
    });
    rig.device.release_hold();
    rig.device.complete(data_flush);
    let mut landed = None;
    let mut flushed = None;
    for _ in 0..100 {
        channel.poll(&mut |c| match c.request.kind {
            IoKind::Flush => flushed = Some(c.status),
            _ => landed = Some(c.status),
        });
        rig.owner.poll();
    }
    assert_eq!(flushed, Some(IoStatus::Failed(libc::EIO)), "the flush reports the failure");
    assert_eq!(rig.owner.mode(), PoolMode::ReadOnly);
    let later = rig.run(&mut channel, write(1, 0x33)).status;
    let back = bytes_of(&rig.run(&mut channel, read(1)));
    (landed.expect("the write was answered"), later, back)
}

#[test]
fn a_failed_commit_leaves_a_pool_that_takes_no_write() {
    let (landed, later, back) = write_landing_in_a_failed_commit(Mutations::NONE);
    assert_eq!(landed, IoStatus::Failed(libc::EIO), "its mapping was never committed");
    assert_eq!(later, IoStatus::Failed(libc::EROFS), "a read-only pool takes no write");
    assert_eq!(uniform(&back), Some(0), "the block was never mapped");
}

#[cfg(feature = "mutations")]
#[test]
fn publishing_after_a_failed_commit_lets_the_fast_path_write() {
    use bdev_thin::thin::mutations::Mutation;
    let mutations = Mutations::NONE.with(Mutation::PublishAfterFailedCommit);
    let (landed, later, back) = write_landing_in_a_failed_commit(mutations);
    assert_eq!(landed, IoStatus::Success);
    assert_eq!(later, IoStatus::Success, "the fast path wrote into the read-only pool");
    assert_eq!(uniform(&back), Some(0x33));
}

/// A pool with one volume whose first `mapped` blocks are mapped and committed, built in
/// its metadata directly (fast) before the owner starts.
fn pool_with_committed_mappings(mapped: u64) -> (Rig, VolumeId) {
    let block = u64::from(BLOCK);
    let device_bytes = (mapped + 64) * block + (64 << 20);
    let layout = Layout::on_data_device(device_bytes, BLOCK, device_bytes).unwrap();
    let config = settings(DiscardMode::Passdown, Mutations::NONE);
    let mut meta = PoolMetadata::format(layout, config.to_record([7; 16], "pool0")).unwrap();
    let volume = meta.create_volume([1; 16], "big", (mapped + 16) * block).unwrap();
    for vblock in 0..mapped {
        let mapping = Mapping { data_block: DataBlock(vblock), time: 0 };
        meta.insert(volume, VirtBlock(vblock), mapping).unwrap();
    }
    let device = SimDevice::new(LBA, device_bytes / u64::from(LBA));
    commit_directly(&device, &mut meta);
    (Rig::with_metadata(device, meta, config), volume)
}

/// Fails the next commit of `rig` (a metadata write, or only its opening data flush) while
/// another thread resolves committed blocks of `volume` in a loop, as the fast path of other
/// cores does. Returns how many resolutions saw a committed block unmapped.
fn resolve_while_a_commit_fails(mapped: u64, only_data_flush: bool) -> u64 {
    let (mut rig, volume) = pool_with_committed_mappings(mapped);
    let mut channel = rig.channel(volume);
    // An uncommitted change for the commit to abort.
    assert_eq!(rig.run(&mut channel, write(mapped, 0x44)).status, IoStatus::Success);
    let fault = if only_data_flush {
        SimFault { kind: IoKind::Flush, blocks: (0, u64::MAX), errno: libc::EIO, remaining: 1 }
    } else {
        let region = rig.metadata_region_lbas();
        SimFault { kind: IoKind::Write, blocks: (0, region - 1), errno: libc::EIO, remaining: 1 }
    };
    let view = rig.shared.view(volume).unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (started, stop) = (Arc::clone(&started), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut unmapped = 0u64;
            // Bounded: stops when told, or after this many resolutions.
            for round in 0..1_000_000_000u64 {
                let vblock = round.wrapping_mul(7919) % mapped;
                if view.resolve(VirtBlock(vblock)) == Resolved::Unmapped {
                    unmapped += 1;
                }
                if round == 1000 {
                    started.store(true, Ordering::SeqCst);
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            unmapped
        })
    };
    for _ in 0..1_000_000_000u64 {
        if started.load(Ordering::SeqCst) {
            break;
        }
        std::thread::yield_now();
    }
    rig.device.add_fault(fault);
    assert_eq!(rig.run(&mut channel, flush()).status, IoStatus::Failed(libc::EIO));
    assert_eq!(rig.owner.mode(), PoolMode::ReadOnly);
    stop.store(true, Ordering::SeqCst);
    let unmapped = reader.join().unwrap();
    // Every committed block reads back its mapping once the pool settled.
    let view = rig.shared.view(volume).unwrap();
    for vblock in (0..mapped).step_by(997) {
        let resolved = view.resolve(VirtBlock(vblock));
        let expected = Resolved::Mapped { data_block: DataBlock(vblock), exclusive: false };
        assert_eq!(resolved, expected, "block {vblock} after the failure");
    }
    unmapped
}

#[test]
fn committed_blocks_never_read_unmapped_while_a_failed_commit_is_undone() {
    for only_data_flush in [false, true] {
        let unmapped = resolve_while_a_commit_fails(1 << 18, only_data_flush);
        assert_eq!(unmapped, 0, "only the data flush failed: {only_data_flush}");
    }
}
