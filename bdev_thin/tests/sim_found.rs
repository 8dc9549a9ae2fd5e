//! Minimal reproductions of pool bugs the widened simulator found (each also a seed of
//! `regression_seeds.txt`): requests that outlive their volume's delete or shrink.

mod support;

use bdev_thin::host::{DeviceChannel, IoKind, IoRequest, IoStatus, PollStatus};
use bdev_thin::testing::SimFault;
use bdev_thin::thin::mutations::Mutations;
use bdev_thin::thin::owner::{ControlOp, PoolError};
use bdev_thin::thin::types::{DiscardMode, PoolMode};
use support::*;

/// A request longer than one round (8 pieces) whose volume is deleted while its first round
/// is on the device must not go on to write its later rounds into blocks the delete freed:
/// they belong to another volume by then.
#[test]
fn a_request_in_rounds_stops_when_its_volume_is_deleted() {
    let mut rig = Rig::new(16, settings(DiscardMode::NoPassdown, Mutations::NONE));
    let doomed = rig.create_volume("doomed", 16);
    let mut channel = rig.channel(doomed);
    let whole =
        IoRequest::new(IoKind::Write, 0, 16 * LBAS_PER_BLOCK, 0).with_buffers(block_data(0xdd, 16));
    assert_eq!(rig.run(&mut channel, whole).status, IoStatus::Success);
    rig.commit();
    // Round one of a second 16-block write goes to the device (in place), and is held there
    // with every later write of this channel.
    let again =
        IoRequest::new(IoKind::Write, 0, 16 * LBAS_PER_BLOCK, 0).with_buffers(block_data(0xd2, 16));
    channel.submit(again).unwrap();
    let first_round: Vec<u64> = rig.device.pending().iter().map(|io| io.id).collect();
    let doomed_channel = rig.device.pending()[0].channel;
    assert_eq!(first_round.len(), 8, "one round of 8 pieces");
    rig.device.hold(move |io| io.kind == IoKind::Write && io.channel == doomed_channel);
    let deleted = rig.push_control(|done| ControlOp::DeleteVolume { volume: doomed, done });
    assert_eq!(rig.answer(&deleted, 1000), Some(Ok(())));
    // Round one lands; the channel would issue round two at once.
    for id in first_round {
        rig.device.complete(id);
    }
    let mut done = None;
    channel.poll(&mut |c| done = Some(c));
    // Another volume takes the freed blocks and fills them.
    let heir = rig.create_volume("heir", 16);
    let mut heir_channel = rig.channel(heir);
    for vblock in 0..16 {
        assert_eq!(rig.run(&mut heir_channel, write(vblock, 0x4e)).status, IoStatus::Success);
    }
    rig.device.release_hold();
    for io in rig.device.pending() {
        rig.device.complete(io.id);
    }
    if done.is_none() {
        done = rig.wait(&mut channel, 100);
    }
    let done = done.expect("the write on the deleted volume is answered");
    assert_ne!(done.status, IoStatus::Success, "its later rounds had nowhere to go");
    for vblock in 0..16 {
        assert_reads(&mut rig, &mut heir_channel, vblock, 0x4e);
    }
    rig.check();
}

/// A write that waits for the owner while its volume shrinks below it must not map a block
/// past the new end (which a later grow would then show instead of zeroes).
#[test]
fn a_write_waiting_for_the_owner_maps_nothing_past_a_shrink() {
    let mut rig = Rig::new(16, settings(DiscardMode::Passdown, Mutations::NONE));
    let volume = rig.create_volume("v", 16);
    let mut channel = rig.channel(volume);
    // Block 10 is unmapped: the write goes to the owner, which handles control first.
    channel.submit(write(10, 0x77)).unwrap();
    let shrink = rig.push_control(|done| ControlOp::Resize {
        volume,
        size_bytes: 4 * u64::from(BLOCK),
        done,
    });
    let done = rig.wait(&mut channel, 1000).expect("the write is answered");
    assert_eq!(rig.answer(&shrink, 1000), Some(Ok(())));
    assert_ne!(done.status, IoStatus::Success, "block 10 no longer exists");
    assert!(rig.owner.metadata().lookup(volume, bdev_thin::thin::types::VirtBlock(10)).is_none());
    let grow =
        rig.control(|done| ControlOp::Resize { volume, size_bytes: 16 * u64::from(BLOCK), done });
    assert_eq!(grow, Ok(()));
    let mut channel = rig.channel(volume);
    assert_reads(&mut rig, &mut channel, 10, 0);
    rig.check();
}

/// A read of a new snapshot parked until the owner fills its part of the view is answered
/// when the snapshot is deleted first (it waited forever).
#[test]
fn a_request_parked_for_a_snapshot_view_is_answered_when_the_snapshot_goes() {
    let mut slow = settings(DiscardMode::Passdown, Mutations::NONE);
    slow.limits.view_fill_blocks_per_poll = 1;
    let mut rig = Rig::new(16, slow);
    let origin = rig.create_volume("origin", 8);
    let mut channel = rig.channel(origin);
    assert_eq!(rig.run(&mut channel, write(6, 0x66)).status, IoStatus::Success);
    let snapshot = rig.snapshot(origin, "snap");
    let mut snap_channel = rig.channel(snapshot);
    snap_channel.submit(read(6)).unwrap();
    let mut done = None;
    snap_channel.poll(&mut |c| done = Some(c));
    assert!(done.is_none(), "block 6 is not in the view yet");
    let deleted = rig.push_control(|done| ControlOp::DeleteVolume { volume: snapshot, done });
    rig.owner.poll();
    let done = rig.wait(&mut snap_channel, 1000).expect("the parked read is answered");
    assert_ne!(done.status, IoStatus::Success);
    assert_eq!(rig.answer(&deleted, 1000), Some(Ok(())));
    rig.check();
}

/// A pool turned read-only by a failed metadata write comes to rest: its owner's polls go
/// idle, so its reactor may park (the commit timer made every poll busy, for ever).
#[test]
fn a_read_only_pool_comes_to_rest() {
    let mut eager = settings(DiscardMode::Passdown, Mutations::NONE);
    eager.commit_interval_ms = 0;
    let mut rig = Rig::new(16, eager);
    let volume = rig.create_volume("v", 8);
    let mut channel = rig.channel(volume);
    rig.device.add_fault(SimFault {
        kind: IoKind::Write,
        blocks: (0, rig.metadata_region_lbas() - 1),
        errno: libc::EIO,
        remaining: u32::MAX,
    });
    assert_eq!(rig.run(&mut channel, write(2, 0x22)).status, IoStatus::Success);
    let flushed = rig.run(&mut channel, flush());
    assert_ne!(flushed.status, IoStatus::Success, "the commit's metadata write failed");
    let idle = (0..100).map(|_| rig.owner.poll()).filter(|s| *s == PollStatus::Idle).count();
    assert!(idle > 90, "the owner of a read-only pool keeps busy: {idle} idle polls of 100");
}

/// Shrinks an 8-block volume whose block 6 is committed to 4 blocks while the commit's
/// opening data flush fails. Returns the answer, the pool's mode, the volume's size in the
/// metadata, whether block 6 reads back (before and after a restart).
fn shrink_failing_at_the_data_flush(
    mutations: Mutations,
) -> (Result<(), PoolError>, PoolMode, Option<u64>, bool, bool) {
    let mut rig = Rig::new(16, settings(DiscardMode::Passdown, mutations));
    let volume = rig.create_volume("v", 8);
    let mut channel = rig.channel(volume);
    assert_eq!(rig.run(&mut channel, write(6, 0x66)).status, IoStatus::Success);
    rig.commit();
    rig.device.add_fault(SimFault {
        kind: IoKind::Flush,
        blocks: (0, u64::MAX),
        errno: libc::EIO,
        remaining: 1,
    });
    let shrink =
        rig.control(|done| ControlOp::Resize { volume, size_bytes: 4 * u64::from(BLOCK), done });
    let mode = rig.owner.mode();
    let size = rig.owner.metadata().volume(volume).map(|r| r.size_bytes);
    let reads = |rig: &mut Rig, channel: &mut Channel| {
        let done = rig.run(channel, read(6));
        done.status == IoStatus::Success && bytes_of(&done) == vec![0x66; BLOCK as usize]
    };
    let before_restart = reads(&mut rig, &mut channel);
    let mut rig = rig.reopen();
    let mut channel = rig.channel(volume);
    let after_restart = reads(&mut rig, &mut channel);
    (shrink, mode, size, before_restart, after_restart)
}

/// A shrink whose commit fails at its opening data flush is answered an error and changes
/// nothing (DESIGN.md: a failed commit aborts the transaction): the read-only pool keeps the
/// volume's size and serves the committed block past the shrink point, as the pool does
/// after a restart. The open transaction stood instead: the volume stayed shrunk in memory,
/// its committed tail unreadable, until a restart brought both back (thin_sim seed 2310).
#[test]
fn a_shrink_whose_commit_fails_at_the_data_flush_changes_nothing() {
    let (shrink, mode, size, before_restart, after_restart) =
        shrink_failing_at_the_data_flush(Mutations::NONE);
    assert!(matches!(shrink, Err(PoolError::ReadOnly | PoolError::Io(_))), "{shrink:?}");
    assert_eq!(mode, PoolMode::ReadOnly);
    assert_eq!(size, Some(8 * u64::from(BLOCK)), "the failed shrink left its size");
    assert!(before_restart, "the committed block past the shrink point reads back");
    assert!(after_restart, "and still after a restart");
}

#[cfg(feature = "mutations")]
#[test]
fn a_failed_data_flush_that_keeps_its_transaction_is_caught() {
    use bdev_thin::thin::mutations::Mutation;
    let mutations = Mutations::NONE.with(Mutation::FailedDataFlushKeepsTransaction);
    let (shrink, mode, size, before_restart, after_restart) =
        shrink_failing_at_the_data_flush(mutations);
    assert!(shrink.is_err(), "{shrink:?}");
    assert_eq!(mode, PoolMode::ReadOnly);
    assert_eq!(size, Some(4 * u64::from(BLOCK)), "the failed shrink stayed applied");
    assert!(!before_restart, "the committed tail was unreadable");
    assert!(after_restart, "until a restart brought it back");
}
