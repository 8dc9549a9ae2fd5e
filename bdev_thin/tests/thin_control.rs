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

/// Shrinks the volume of `pool_with_committed_mappings(mapped)` to half while the commit's
/// data flush fails, and another thread reads the tail the shrink removed, as the fast path of
/// other cores does. The abort brings the tail back; from the moment the view says the volume
/// is whole again, no read of the tail may find it unmapped. Returns whether the reader saw
/// the volume shrunk (else it was not scheduled in time: nothing was tested) and how many of
/// its reads found a committed block of the tail unmapped.
fn read_the_tail_while_a_failed_shrink_is_undone(mapped: u64) -> (bool, u64) {
    let (mut rig, volume) = pool_with_committed_mappings(mapped);
    let half = mapped / 2;
    let view = rig.shared.view(volume).unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (started, stop) = (Arc::clone(&started), Arc::clone(&stop));
        std::thread::spawn(move || {
            let (mut shrunk_seen, mut unmapped) = (false, 0u64);
            // Bounded: stops when told, or after this many resolutions.
            for round in 0..1_000_000_000u64 {
                if view.size_vblocks() <= half {
                    shrunk_seen = true;
                } else if shrunk_seen {
                    let vblock = half + round.wrapping_mul(7919) % (mapped - half);
                    if view.resolve(VirtBlock(vblock)) == Resolved::Unmapped {
                        unmapped += 1;
                    }
                }
                if round == 1000 {
                    started.store(true, Ordering::SeqCst);
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            (shrunk_seen, unmapped)
        })
    };
    for _ in 0..1_000_000_000u64 {
        if started.load(Ordering::SeqCst) {
            break;
        }
        std::thread::yield_now();
    }
    rig.device.add_fault(SimFault {
        kind: IoKind::Flush,
        blocks: (0, u64::MAX),
        errno: libc::EIO,
        remaining: 1,
    });
    assert!(resize(&mut rig, volume, half).is_err(), "the shrink's commit failed");
    assert_eq!(rig.owner.mode(), PoolMode::ReadOnly);
    stop.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();
    let view = rig.shared.view(volume).unwrap();
    assert_eq!(view.size_vblocks(), mapped + 16, "the failed shrink left the size");
    for vblock in (half..mapped).step_by(997) {
        let resolved = view.resolve(VirtBlock(vblock));
        let expected = Resolved::Mapped { data_block: DataBlock(vblock), exclusive: false };
        assert_eq!(resolved, expected, "block {vblock} after the failure");
    }
    seen
}

#[test]
fn a_failed_shrink_brings_its_tail_back_before_its_size() {
    let mut tested = 0;
    // The reader must run while the shrink stands: on a loaded machine it may not be
    // scheduled then, so a few attempts, each checked, and at least one that saw it.
    for _ in 0..5 {
        let (shrunk_seen, unmapped) = read_the_tail_while_a_failed_shrink_is_undone(1 << 18);
        assert_eq!(unmapped, 0, "committed blocks of the tail read unmapped");
        if shrunk_seen {
            tested += 1;
            break;
        }
        eprintln!("the reader did not run while the shrink stood: trying again");
    }
    assert!(tested > 0, "the reader never ran while the shrink stood");
}

/// A pool whose metadata region is the smallest there is (1024 blocks) over `data_blocks`
/// data blocks, on a device just large enough.
fn tiny_metadata(data_blocks: u64) -> (SimDevice, PoolMetadata) {
    let region_blocks = 1024;
    let layout = Layout {
        metadata_blocks: region_blocks,
        data_block_bytes: BLOCK,
        data_blocks,
        data_blocks_max: data_blocks,
        data_offset_bytes: region_blocks * 4096,
        metadata_separate: false,
    };
    let config = settings(DiscardMode::Passdown, Mutations::NONE);
    let meta = PoolMetadata::format(layout, config.to_record([7; 16], "pool0")).unwrap();
    let device_bytes = layout.data_offset_bytes + data_blocks * u64::from(BLOCK);
    (SimDevice::new(LBA, device_bytes / u64::from(LBA)), meta)
}

/// Maps `vblock -> block_of(vblock)` into `volume` from block 0 on, until the metadata
/// refuses (near its reserve) or `blocks` are mapped. Returns how many it maps.
fn fill_mappings(
    meta: &mut PoolMetadata,
    volume: VolumeId,
    blocks: u64,
    block_of: impl Fn(u64) -> u64,
) -> u64 {
    for vblock in 0..blocks {
        let mapping = Mapping { data_block: DataBlock(block_of(vblock)), time: 0 };
        if meta.insert(volume, VirtBlock(vblock), mapping).is_err() {
            return vblock;
        }
    }
    blocks
}

fn create_in(meta: &mut PoolMetadata, name: &str, blocks: u64) -> VolumeId {
    meta.create_volume([5; 16], name, blocks * u64::from(BLOCK)).unwrap()
}

fn resize(rig: &mut Rig, volume: VolumeId, blocks: u64) -> Result<(), PoolError> {
    let size_bytes = blocks * u64::from(BLOCK);
    rig.control(|done| ControlOp::Resize { volume, size_bytes, done })
}

fn mapped_blocks(rig: &Rig, volume: VolumeId) -> u64 {
    rig.owner.metadata().volume(volume).unwrap().mapped_blocks
}

/// Volumes sharing 40 000 data blocks fill a tiny metadata region to its reserve. Then the
/// first volume is shrunk by half: more than the region can take. Returns the answer and
/// the volume's mapped blocks before and after, and whether its view still shows the blocks
/// the shrink would have removed.
fn shrink_near_the_reserve(mutations: Mutations) -> (Result<(), PoolError>, u64, u64, bool) {
    let data_blocks = 40_000;
    let (device, mut meta) = tiny_metadata(data_blocks);
    let mut volumes = Vec::new();
    for index in 0.. {
        let volume = create_in(&mut meta, &format!("v{index}"), data_blocks);
        volumes.push(volume);
        if fill_mappings(&mut meta, volume, data_blocks, |b| b) < data_blocks {
            break;
        }
    }
    meta.set_mutations(mutations);
    commit_directly(&device, &mut meta);
    let mut rig = Rig::with_metadata(device, meta, settings(DiscardMode::Passdown, mutations));
    let volume = volumes[0];
    let before = mapped_blocks(&rig, volume);
    let answer = resize(&mut rig, volume, data_blocks / 2);
    let after = mapped_blocks(&rig, volume);
    let view = rig.shared.view(volume).unwrap();
    let still_published = (data_blocks / 2..data_blocks).all(|vblock| {
        view.resolve(VirtBlock(vblock)) != Resolved::Unmapped
            && rig.owner.metadata().lookup(volume, VirtBlock(vblock)).is_some()
    });
    if answer.is_ok() || mutations == Mutations::NONE {
        // A smaller step fits, and the pool checks clean after it.
        assert_eq!(resize(&mut rig, volume, data_blocks - 500), Ok(()));
        assert_eq!(mapped_blocks(&rig, volume), after.min(data_blocks - 500));
        rig.check();
    }
    (answer, before, after, still_published)
}

#[test]
fn a_shrink_that_does_not_fit_the_metadata_changes_nothing() {
    let (answer, before, after, still_published) = shrink_near_the_reserve(Mutations::NONE);
    assert_eq!(before, 40_000);
    let err = answer.expect_err("the region cannot take half the volume's nodes");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(err.to_string().contains("shrinking the volume needs up to"), "{err}");
    assert_eq!(after, before, "nothing removed");
    assert!(still_published, "every mapping still in the metadata and the view");
}

#[cfg(feature = "mutations")]
#[test]
fn an_unreserved_shrink_stops_half_done() {
    use bdev_thin::thin::mutations::Mutation;
    let mutations = Mutations::NONE.with(Mutation::ControlOpsUnreserved);
    let (answer, before, after, still_published) = shrink_near_the_reserve(mutations);
    assert_eq!(answer.expect_err("out of metadata space").errno(), libc::ENOSPC);
    assert!(after < before, "some mappings were removed before it failed");
    assert!(!still_published, "a failed shrink removed mappings");
}

/// Two volumes map the same data blocks, one per count block of a large data space, as many
/// as a tiny metadata region takes (in one transaction, so each count block is written once);
/// a third fills the region's nodes up to the reserve. Deleting the first rewrites every
/// count block it touched (each still holds the second's count): more than the region has
/// left.
fn delete_spread_volume(mutations: Mutations) -> Rig {
    let per_count_block = 1016;
    let (device, mut meta) = tiny_metadata(per_count_block * 1000);
    let volume = create_in(&mut meta, "spread", 1000);
    let twin = create_in(&mut meta, "twin", 1000);
    let dense = create_in(&mut meta, "dense", 1 << 20);
    let mut mapped = 0;
    while mapped < 1000 {
        let mapping = Mapping { data_block: DataBlock(mapped * per_count_block), time: 0 };
        if meta.insert(volume, VirtBlock(mapped), mapping).is_err() {
            break;
        }
        mapped += 1;
        if meta.insert(twin, VirtBlock(mapped - 1), mapping).is_err() {
            break;
        }
    }
    assert!(mapped > 300 && mapped < 1000, "{mapped}: filled to the reserve");
    commit_directly(&device, &mut meta);
    assert!(fill_mappings(&mut meta, dense, 1 << 20, |b| 1 + b % 1000) < 1 << 20);
    meta.set_mutations(mutations);
    commit_directly(&device, &mut meta);
    let mut rig = Rig::with_metadata(device, meta, settings(DiscardMode::Passdown, mutations));
    let answer = rig.control(|done| ControlOp::DeleteVolume { volume, done });
    let err = answer.expect_err("the region cannot take the rewrite of every count");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(err.to_string().contains("deleting the volume needs up to"), "{err}");
    assert_eq!(mapped_blocks(&rig, volume), mapped, "nothing changed");
    // Shrunk in steps that fit, each committed, it can then be deleted.
    let mut size = mapped;
    while size > 1 {
        size = size.saturating_sub(50).max(1);
        assert_eq!(resize(&mut rig, volume, size), Ok(()), "shrinking to {size}");
        rig.commit();
    }
    assert_eq!(rig.control(|done| ControlOp::DeleteVolume { volume, done }), Ok(()));
    rig.check();
    rig
}

#[test]
fn a_delete_whose_commit_would_not_fit_changes_nothing() {
    delete_spread_volume(Mutations::NONE);
}

#[cfg(feature = "mutations")]
#[test]
#[should_panic(expected = "the reserve covers a commit")]
fn an_unreserved_delete_leaves_a_commit_that_does_not_fit() {
    use bdev_thin::thin::mutations::Mutation;
    delete_spread_volume(Mutations::NONE.with(Mutation::ControlOpsUnreserved));
}

/// A volume of 168 mappings, one per count block (its tree one full leaf), has a snapshot; a
/// third volume fills a tiny metadata region up to the reserve. Shrinking the volume by one
/// block shadows the shared leaf, which raises the count of every block in it: each of its
/// 168 count blocks is rewritten by the next commit, more than the region has left. Returns
/// the pool and the shrink's answer.
fn shrink_a_snapshotted_volume(mutations: Mutations) -> (Rig, VolumeId, Result<(), PoolError>) {
    let per_count_block = 1016;
    let (device, mut meta) = tiny_metadata(per_count_block * 1000);
    let volume = create_in(&mut meta, "origin", 168);
    assert_eq!(fill_mappings(&mut meta, volume, 168, |b| b * per_count_block), 168);
    meta.snapshot(volume, [6; 16], "snap").unwrap();
    commit_directly(&device, &mut meta);
    let dense = create_in(&mut meta, "dense", 1 << 20);
    assert!(fill_mappings(&mut meta, dense, 1 << 20, |b| 1 + b % 1000) < 1 << 20);
    meta.set_mutations(mutations);
    commit_directly(&device, &mut meta);
    let mut rig = Rig::with_metadata(device, meta, settings(DiscardMode::Passdown, mutations));
    let answer = resize(&mut rig, volume, 167);
    (rig, volume, answer)
}

#[test]
fn a_shrink_that_shadows_a_shared_leaf_counts_its_blocks() {
    let (mut rig, volume, answer) = shrink_a_snapshotted_volume(Mutations::NONE);
    let err = answer.expect_err("the shared leaf's count blocks do not fit");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(err.to_string().contains("shrinking the volume needs up to"), "{err}");
    assert_eq!(mapped_blocks(&rig, volume), 168, "nothing changed");
    rig.check();
}

#[cfg(feature = "mutations")]
#[test]
#[should_panic(expected = "the reserve covers a commit")]
fn an_unreserved_shrink_of_a_shared_leaf_leaves_a_commit_that_does_not_fit() {
    use bdev_thin::thin::mutations::Mutation;
    let mutations = Mutations::NONE.with(Mutation::ControlOpsUnreserved);
    let (mut rig, _, answer) = shrink_a_snapshotted_volume(mutations);
    assert_eq!(answer, Ok(()));
    rig.commit();
}

/// A pool whose tiny metadata region a volume `filler` filled to its reserve, with a volume
/// `v` of 16 blocks made before; both committed. Returns the rig, `v` and `filler`.
fn metadata_at_its_reserve() -> (Rig, VolumeId, VolumeId) {
    let data_blocks = 200_000;
    let (device, mut meta) = tiny_metadata(data_blocks);
    let volume = create_in(&mut meta, "v", 16);
    let filler = create_in(&mut meta, "filler", data_blocks);
    // Each commit gives back the blocks its shadows replaced: fill until a fresh commit
    // leaves no room for one more mapping.
    let mut mapped = 0;
    loop {
        let before = mapped;
        while mapped < data_blocks {
            let mapping = Mapping { data_block: DataBlock(mapped), time: 0 };
            if meta.insert(filler, VirtBlock(mapped), mapping).is_err() {
                break;
            }
            mapped += 1;
        }
        commit_directly(&device, &mut meta);
        if mapped == before {
            break;
        }
    }
    assert!(mapped < data_blocks - 16, "the metadata ran out first: {mapped}");
    let config = settings(DiscardMode::Passdown, Mutations::NONE);
    (Rig::with_metadata(device, meta, config), volume, filler)
}

/// A volume fills a tiny metadata region to its reserve: a write that needs a new mapping
/// fails with ENOSPC and the pool says `out_of_metadata_space`. Deleting the volume gives its
/// nodes back with the next commit, and the mode with them: the write goes through.
#[test]
fn out_of_metadata_space_ends_when_a_delete_gave_the_space_back() {
    let (mut rig, volume, filler) = metadata_at_its_reserve();
    let mut channel = rig.channel(volume);
    assert_eq!(rig.run(&mut channel, write(0, 0x77)).status, IoStatus::NoSpace);
    assert_eq!(rig.owner.mode(), PoolMode::OutOfMetadataSpace);
    assert_eq!(rig.control(|done| ControlOp::DeleteVolume { volume: filler, done }), Ok(()));
    rig.commit();
    assert_eq!(rig.owner.mode(), PoolMode::Write, "the space came back");
    assert_eq!(rig.run(&mut channel, write(0, 0x77)).status, IoStatus::Success);
    assert_reads(&mut rig, &mut channel, 0, 0x77);
    rig.check();
}

/// At the reserve, a create and a snapshot are refused whole: no volume, no view, and the
/// snapshot's origin is not left quiesced (its mapped blocks still take fast-path writes).
#[test]
fn a_create_or_snapshot_the_metadata_cannot_hold_changes_nothing() {
    let (mut rig, volume, filler) = metadata_at_its_reserve();
    let free_before = rig.owner.metadata().metadata_free_blocks();
    let err = rig.try_create_volume("new", 16).expect_err("no metadata space");
    assert_eq!(err.errno(), libc::ENOSPC);
    let name = "snap".to_string();
    let err = rig
        .control(|done| ControlOp::Snapshot { origin: filler, uuid: [3; 16], name, done })
        .expect_err("no metadata space");
    assert_eq!(err.errno(), libc::ENOSPC);
    let names: Vec<String> = rig.owner.metadata().volumes().map(|v| v.name.clone()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(rig.owner.metadata().metadata_free_blocks(), free_before);
    let view = rig.shared.view(filler).unwrap();
    assert_eq!(
        view.resolve(VirtBlock(0)),
        Resolved::Mapped { data_block: DataBlock(0), exclusive: true },
        "the origin's view is as it was"
    );
    let mut channel = rig.channel(filler);
    channel.submit(write(0, 0x66)).unwrap();
    let mut done = None;
    for _ in 0..100 {
        channel.poll(&mut |c| done = Some(c));
    }
    assert_eq!(done.expect("a fast-path write, no owner poll").status, IoStatus::Success);
    assert!(rig.shared.view(volume).is_some());
    rig.check();
}
