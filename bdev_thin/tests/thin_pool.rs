//! The thin pool on the deterministic stepping host: the seed's race and the grace period,
//! each shown both ways (the mechanism on, and switched off with the `mutations` feature),
//! provisioning, sharing and snapshots, discard modes, flush. Every IO's completion is held,
//! reordered or delivered as the test says (`testing::SimDevice`).

mod support;

use bdev_thin::host::{
    DeviceChannel, IoBuffer, IoCompletion, IoFlags, IoKind, IoRequest, IoStatus, SgList,
};
use bdev_thin::thin::metadata::check;
use bdev_thin::thin::mutations::Mutations;
use bdev_thin::thin::owner::ControlOp;
use bdev_thin::thin::types::{DiscardMode, OutOfSpaceMode, PoolMode};
use support::*;

#[test]
fn writes_read_back_and_unmapped_blocks_read_zeroes() {
    let mut rig = Rig::new(16, settings(DiscardMode::Passdown, Mutations::NONE));
    let volume = rig.create_volume("v", 8);
    let mut channel = rig.channel(volume);
    assert_eq!(bytes_of(&rig.run(&mut channel, read(3))), vec![0; BLOCK as usize]);
    assert_eq!(rig.run(&mut channel, write(3, 0xab)).status, IoStatus::Success);
    assert_eq!(bytes_of(&rig.run(&mut channel, read(3))), vec![0xab; BLOCK as usize]);
    // A partial write into a new block zeroes the rest of it.
    let partial =
        IoRequest::new(IoKind::Write, 5 * LBAS_PER_BLOCK + 2, 1, 0).with_buffers(SgList::single({
            let mut b = IoBuffer::new(LBA as usize);
            b.as_mut_slice().fill(0x5a);
            b
        }));
    assert_eq!(rig.run(&mut channel, partial).status, IoStatus::Success);
    let back = bytes_of(&rig.run(&mut channel, read(5)));
    assert!(back[..1024].iter().all(|&b| b == 0));
    assert!(back[1024..1536].iter().all(|&b| b == 0x5a));
    assert!(back[1536..].iter().all(|&b| b == 0));
    // A write spanning blocks splits and comes back whole.
    let span = IoRequest::new(IoKind::Write, 6 * LBAS_PER_BLOCK, 2 * LBAS_PER_BLOCK, 0)
        .with_buffers(block_data(0x77, 2));
    assert_eq!(rig.run(&mut channel, span).status, IoStatus::Success);
    let both = IoRequest::new(IoKind::Read, 6 * LBAS_PER_BLOCK, 2 * LBAS_PER_BLOCK, 0)
        .with_buffers(block_data(0, 2));
    assert_eq!(bytes_of(&rig.run(&mut channel, both)), vec![0x77; 2 * BLOCK as usize]);
    assert_eq!(rig.owner.metadata().volume(volume).unwrap().mapped_blocks, 4);
    rig.check();
}

#[test]
fn a_full_pool_fails_writes_with_enospc_and_keeps_the_rest() {
    let mut rig = Rig::new(4, settings(DiscardMode::Passdown, Mutations::NONE));
    let volume = rig.create_volume("v", 8);
    let mut channel = rig.channel(volume);
    for vblock in 0..4 {
        assert_eq!(
            rig.run(&mut channel, write(vblock, vblock as u8 + 1)).status,
            IoStatus::Success
        );
    }
    assert_eq!(rig.run(&mut channel, write(4, 9)).status, IoStatus::NoSpace);
    for vblock in 0..4 {
        let back = bytes_of(&rig.run(&mut channel, read(vblock)));
        assert_eq!(back, vec![vblock as u8 + 1; BLOCK as usize]);
    }
    // Overwriting a mapped block needs no space.
    assert_eq!(rig.run(&mut channel, write(2, 0x42)).status, IoStatus::Success);
    rig.check();
}

/// The seed's race, deterministic: V1's block D is unmapped with passdown while the test holds
/// the deallocate's completion; V2's write needs a block and D is the only one that will come
/// back. With the hold, V2 waits and then survives; without it (mutation), V2 is given D, its
/// write lands, then the late deallocate wipes it.
fn seed_race(mutations: Mutations) -> (bool, Vec<u8>) {
    let mut rig = Rig::new(8, settings(DiscardMode::Passdown, mutations));
    let (_filler, _filler_channel) = fill_all_but_one(&mut rig, 8);
    let v1 = rig.create_volume("v1", 4);
    let v2 = rig.create_volume("v2", 4);
    let mut c1 = rig.channel(v1);
    let mut c2 = rig.channel(v2);
    assert_eq!(rig.run(&mut c1, write(0, 0xd1)).status, IoStatus::Success);
    rig.device.hold(|io| io.kind == IoKind::Unmap);
    c1.submit(unmap(0, 1)).unwrap();
    // Run until the deallocate is issued and held.
    let mut issued = false;
    for _ in 0..200 {
        rig.owner.poll();
        c1.poll(&mut |_| panic!("the unmap completed before its deallocate"));
        if rig.device.pending().iter().any(|p| p.kind == IoKind::Unmap) {
            issued = true;
            break;
        }
    }
    assert!(issued, "the passdown deallocate was never issued");
    c2.submit(write(0, 0xd2)).unwrap();
    let early = rig.wait(&mut c2, 200);
    let v2_waited = early.is_none();
    if let Some(done) = &early {
        assert_eq!(done.status, IoStatus::Success);
    }
    // Deliver the deallocate: it takes effect now, at its completion.
    let dealloc = rig.device.pending().into_iter().find(|p| p.kind == IoKind::Unmap).unwrap();
    rig.device.release_hold();
    rig.device.complete(dealloc.id);
    let unmapped = rig.wait(&mut c1, 200).expect("the unmap completes after its deallocate");
    assert_eq!(unmapped.status, IoStatus::Success);
    if v2_waited {
        let done = rig.wait(&mut c2, 200).expect("V2's write proceeds once D is back");
        assert_eq!(done.status, IoStatus::Success);
    }
    let back = bytes_of(&rig.run(&mut c2, read(0)));
    rig.check();
    (v2_waited, back)
}

#[test]
fn seed_race_the_hold_makes_v2_wait_and_survive() {
    let (waited, back) = seed_race(Mutations::NONE);
    assert!(waited, "V2's write must wait for the held block, not fail or take it");
    assert_eq!(back, vec![0xd2; BLOCK as usize], "V2's data survives");
}

#[cfg(feature = "mutations")]
#[test]
fn seed_race_without_the_hold_corrupts_v2() {
    use bdev_thin::thin::mutations::Mutation;
    let (waited, back) = seed_race(Mutations::NONE.with(Mutation::NoHold));
    assert!(!waited, "without the hold V2 is handed D at once");
    assert_eq!(back, vec![0; BLOCK as usize], "the late deallocate wiped V2's write");
}

/// A read of V1's block D is held in flight across many polls while V1 unmaps D, the pool
/// commits and V2 writes into the only block that can come back. The read returns V1's data:
/// the grace period keeps D from reuse (and from its deallocate) until the read completes.
/// Without the grace period (mutation) the read returns V2's data. Returns what the read
/// returned, and whether the unmap and V2's write were answered while the read was held.
fn held_read(mutations: Mutations, discard: DiscardMode) -> (Vec<u8>, bool, bool) {
    let mut rig = Rig::new(8, settings(discard, mutations));
    let (_filler, _filler_channel) = fill_all_but_one(&mut rig, 8);
    let v1 = rig.create_volume("v1", 4);
    let v2 = rig.create_volume("v2", 4);
    let mut c1 = rig.channel(v1);
    let mut c2 = rig.channel(v2);
    assert_eq!(rig.run(&mut c1, write(0, 0xa1)).status, IoStatus::Success);
    rig.device.hold(|io| io.kind == IoKind::Read);
    c1.submit(read(0)).unwrap();
    assert!(rig.wait(&mut c1, 5).is_none(), "the read is held");
    let held = rig.device.pending().into_iter().find(|p| p.kind == IoKind::Read).unwrap();
    c1.submit(unmap(0, 1)).unwrap();
    c2.submit(write(0, 0xb2)).unwrap();
    let mut unmap_done = false;
    let mut v2_done = false;
    for _ in 0..300 {
        rig.owner.poll();
        c1.poll(&mut |c| {
            assert_eq!(c.request.kind, IoKind::Unmap, "only the unmap may complete");
            unmap_done = true;
        });
        c2.poll(&mut |c| {
            assert_eq!(c.status, IoStatus::Success);
            v2_done = true;
        });
    }
    let (unmap_done_while_held, v2_done_while_held) = (unmap_done, v2_done);
    rig.device.release_hold();
    rig.device.complete(held.id);
    let mut back = None;
    for _ in 0..300 {
        c1.poll(&mut |c| {
            if c.request.kind == IoKind::Read {
                back = Some(bytes_of(&c));
            } else {
                assert_eq!(c.status, IoStatus::Success, "the unmap");
                unmap_done = true;
            }
        });
        c2.poll(&mut |c| {
            assert_eq!(c.status, IoStatus::Success);
            v2_done = true;
        });
        rig.owner.poll();
    }
    assert!(unmap_done && v2_done, "the unmap and V2's write complete once the read is back");
    assert_reads(&mut rig, &mut c2, 0, 0xb2);
    rig.check();
    (back.expect("the held read completed"), unmap_done_while_held, v2_done_while_held)
}

#[test]
fn grace_a_held_read_never_sees_another_volumes_data() {
    for discard in [DiscardMode::Passdown, DiscardMode::NoPassdown] {
        let (back, unmap_done, v2_done) = held_read(Mutations::NONE, discard);
        assert_eq!(back, vec![0xa1; BLOCK as usize], "{discard:?}: V1's data, never V2's");
        // A passed-down unmap is answered when its deallocate is done, and that waits for
        // the read; without passdown the unmap is answered at once.
        let passdown = discard == DiscardMode::Passdown;
        assert_eq!(unmap_done, !passdown, "{discard:?}: the unmap answered while held");
        assert!(!v2_done, "{discard:?}: V2 waits for the only block, in its grace period");
    }
}

#[cfg(feature = "mutations")]
#[test]
fn grace_switched_off_lets_a_held_read_see_v2s_data() {
    use bdev_thin::thin::mutations::Mutation;
    for discard in [DiscardMode::Passdown, DiscardMode::NoPassdown] {
        let (back, unmap_done, v2_done) =
            held_read(Mutations::NONE.with(Mutation::NoGrace), discard);
        assert_eq!(back, vec![0xb2; BLOCK as usize], "{discard:?}: the reused block's data");
        assert!(unmap_done && v2_done, "{discard:?}: nothing waits for the read");
    }
}

/// Polls only `channel` (never the owner): the completion of the request it was given, if
/// the fast path could do it alone.
fn completes_on_the_fast_path(channel: &mut Channel) -> Option<IoCompletion> {
    for _ in 0..100 {
        let mut done = None;
        channel.poll(&mut |c| done = Some(c));
        if done.is_some() {
            return done;
        }
    }
    None
}

#[test]
fn snapshots_diverge_and_share_blocks_until_written() {
    let mut rig = Rig::new(32, settings(DiscardMode::Passdown, Mutations::NONE));
    let origin = rig.create_volume("origin", 8);
    let mut co = rig.channel(origin);
    for vblock in 0..4 {
        assert_eq!(rig.run(&mut co, write(vblock, 0x10 + vblock as u8)).status, IoStatus::Success);
    }
    let used_before = rig.owner.metadata().used_data_blocks();
    let snap = rig.snapshot(origin, "snap");
    let mut cs = rig.channel(snap);
    assert_eq!(rig.owner.metadata().used_data_blocks(), used_before, "a snapshot copies nothing");
    // Writes after the snapshot are independent. The first write to a shared block goes to
    // the owner (it breaks the sharing): without owner polls it does not complete.
    co.submit(write(0, 0xa0)).unwrap();
    assert!(completes_on_the_fast_path(&mut co).is_none(), "a shared block took a fast write");
    assert_eq!(rig.wait(&mut co, 1000).expect("the owner's write").status, IoStatus::Success);
    assert_eq!(rig.run(&mut cs, write(1, 0xb1)).status, IoStatus::Success);
    // A partial write into a shared block copies the rest of it first.
    let partial =
        IoRequest::new(IoKind::Write, 2 * LBAS_PER_BLOCK, 1, 0).with_buffers(SgList::single({
            let mut b = IoBuffer::new(LBA as usize);
            b.as_mut_slice().fill(0xcc);
            b
        }));
    assert_eq!(rig.run(&mut co, partial).status, IoStatus::Success);
    assert_eq!(bytes_of(&rig.run(&mut co, read(0))), vec![0xa0; BLOCK as usize]);
    assert_eq!(bytes_of(&rig.run(&mut cs, read(0))), vec![0x10; BLOCK as usize]);
    assert_eq!(bytes_of(&rig.run(&mut co, read(1))), vec![0x11; BLOCK as usize]);
    assert_eq!(bytes_of(&rig.run(&mut cs, read(1))), vec![0xb1; BLOCK as usize]);
    let copied = bytes_of(&rig.run(&mut co, read(2)));
    assert!(copied[..512].iter().all(|&b| b == 0xcc));
    assert!(copied[512..].iter().all(|&b| b == 0x12));
    assert_eq!(bytes_of(&rig.run(&mut cs, read(2))), vec![0x12; BLOCK as usize]);
    // A discard in one never passes down a block the other still maps.
    assert_eq!(rig.run(&mut cs, unmap(3, 1)).status, IoStatus::Success);
    assert_eq!(bytes_of(&rig.run(&mut co, read(3))), vec![0x13; BLOCK as usize]);
    assert_eq!(
        rig.shared.counters.passdowns_completed.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // The second write to the origin's block 0 is now exclusive: it goes straight through,
    // with no owner poll, and so do writes to blocks the origin wrote after the snapshot.
    co.submit(write(0, 0xa5)).unwrap();
    let done = completes_on_the_fast_path(&mut co).expect("the fast path");
    assert_eq!(done.status, IoStatus::Success);
    cs.submit(write(1, 0xb5)).unwrap();
    let done = completes_on_the_fast_path(&mut cs).expect("the snapshot's fast path");
    assert_eq!(done.status, IoStatus::Success);
    assert_eq!(bytes_of(&rig.run(&mut cs, read(1))), vec![0xb5; BLOCK as usize]);
    assert_eq!(bytes_of(&rig.run(&mut co, read(1))), vec![0x11; BLOCK as usize]);
    assert_eq!(bytes_of(&rig.run(&mut cs, read(0))), vec![0x10; BLOCK as usize]);
    rig.check();
}

#[test]
fn discard_modes_and_write_zeroes() {
    for discard in [DiscardMode::Passdown, DiscardMode::NoPassdown, DiscardMode::Ignore] {
        let mut rig = Rig::new(16, settings(discard, Mutations::NONE));
        let volume = rig.create_volume("v", 8);
        let mut channel = rig.channel(volume);
        for vblock in 0..4 {
            assert_eq!(rig.run(&mut channel, write(vblock, 0x33)).status, IoStatus::Success);
        }
        // An unmap with partial edges: only the whole block 1 goes; edges keep their data.
        let ragged = IoRequest::new(IoKind::Unmap, LBAS_PER_BLOCK - 1, LBAS_PER_BLOCK + 2, 0);
        assert_eq!(rig.run(&mut channel, ragged).status, IoStatus::Success);
        let expect1 = if discard == DiscardMode::Ignore { 0x33 } else { 0 };
        assert_eq!(bytes_of(&rig.run(&mut channel, read(1))), vec![expect1; BLOCK as usize]);
        assert_eq!(bytes_of(&rig.run(&mut channel, read(0))), vec![0x33; BLOCK as usize]);
        assert_eq!(bytes_of(&rig.run(&mut channel, read(2))), vec![0x33; BLOCK as usize]);
        // write_zeroes always zeroes, whatever the mode, edges included.
        let zeroes =
            IoRequest::new(IoKind::WriteZeroes, 2 * LBAS_PER_BLOCK + 4, LBAS_PER_BLOCK + 4, 0);
        assert_eq!(rig.run(&mut channel, zeroes).status, IoStatus::Success);
        let back2 = bytes_of(&rig.run(&mut channel, read(2)));
        assert!(back2[..2048].iter().all(|&b| b == 0x33), "{discard:?}");
        assert!(back2[2048..].iter().all(|&b| b == 0), "{discard:?}");
        assert_eq!(bytes_of(&rig.run(&mut channel, read(3))), vec![0; BLOCK as usize]);
        let passdowns =
            rig.shared.counters.passdowns_completed.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(passdowns > 0, discard == DiscardMode::Passdown, "{discard:?}");
        // NO_UNMAP keeps the range allocated.
        let keep = IoRequest::new(IoKind::WriteZeroes, 6 * LBAS_PER_BLOCK, LBAS_PER_BLOCK, 0)
            .with_flags(IoFlags::NO_UNMAP);
        assert_eq!(rig.run(&mut channel, keep).status, IoStatus::Success);
        assert!(
            rig.owner.metadata().lookup(volume, bdev_thin::thin::types::VirtBlock(6)).is_some()
        );
        assert_eq!(bytes_of(&rig.run(&mut channel, read(6))), vec![0; BLOCK as usize]);
        rig.check();
    }
}

#[test]
fn flush_commits_and_fua_writes_wait_for_the_commit() {
    let mut rig = Rig::new(16, settings(DiscardMode::Passdown, Mutations::NONE));
    let volume = rig.create_volume("v", 8);
    let mut channel = rig.channel(volume);
    let commits =
        |rig: &Rig| rig.shared.counters.commits.load(std::sync::atomic::Ordering::Relaxed);
    let before = commits(&rig);
    assert_eq!(rig.run(&mut channel, write(0, 1)).status, IoStatus::Success);
    let flush = IoRequest::new(IoKind::Flush, 0, 0, 0);
    assert_eq!(rig.run(&mut channel, flush).status, IoStatus::Success);
    assert_eq!(commits(&rig), before + 1);
    assert!(!rig.owner.metadata().is_dirty());
    let fua = write(1, 2).with_flags(IoFlags::FUA);
    assert_eq!(rig.run(&mut channel, fua).status, IoStatus::Success);
    assert_eq!(commits(&rig), before + 2, "a FUA provision is answered after its commit");
    rig.check();
}

#[test]
fn deleting_a_volume_frees_exactly_the_blocks_no_one_else_holds() {
    let mut rig = Rig::new(32, settings(DiscardMode::Passdown, Mutations::NONE));
    let origin = rig.create_volume("origin", 8);
    let mut co = rig.channel(origin);
    for vblock in 0..6 {
        assert_eq!(rig.run(&mut co, write(vblock, 0x40 + vblock as u8)).status, IoStatus::Success);
    }
    let snap = rig.snapshot(origin, "snap");
    let mut cs = rig.channel(snap);
    // The snapshot diverges on two blocks; the other four stay shared.
    assert_eq!(rig.run(&mut cs, write(0, 0xe0)).status, IoStatus::Success);
    assert_eq!(rig.run(&mut cs, write(1, 0xe1)).status, IoStatus::Success);
    assert_eq!(rig.owner.metadata().used_data_blocks(), 8);
    drop(cs);
    let before = passdowns(&rig);
    rig.control(|done| ControlOp::DeleteVolume { volume: snap, done }).unwrap();
    assert_eq!(rig.owner.metadata().used_data_blocks(), 6, "only the snapshot's own two went");
    assert!(passdowns(&rig) > before, "the freed blocks were passed down");
    for vblock in 0..6 {
        let expect = vec![0x40 + vblock as u8; BLOCK as usize];
        assert_eq!(bytes_of(&rig.run(&mut co, read(vblock))), expect, "origin block {vblock}");
    }
    rig.check();
}

#[test]
fn shrinking_a_volume_frees_what_lies_past_the_end() {
    let mut rig = Rig::new(32, settings(DiscardMode::NoPassdown, Mutations::NONE));
    let volume = rig.create_volume("v", 8);
    let mut channel = rig.channel(volume);
    for vblock in 0..8 {
        assert_eq!(rig.run(&mut channel, write(vblock, 9)).status, IoStatus::Success);
    }
    let size_bytes = 3 * u64::from(BLOCK);
    rig.control(|done| ControlOp::Resize { volume, size_bytes, done }).unwrap();
    assert_eq!(rig.owner.metadata().used_data_blocks(), 3);
    assert_eq!(rig.run(&mut channel, read(5)).status, IoStatus::Failed(libc::EINVAL), "past end");
    let size_bytes = 16 * u64::from(BLOCK);
    rig.control(|done| ControlOp::Resize { volume, size_bytes, done }).unwrap();
    assert_eq!(bytes_of(&rig.run(&mut channel, read(5))), vec![0; BLOCK as usize], "grown: zeroes");
    assert_eq!(bytes_of(&rig.run(&mut channel, read(2))), vec![9; BLOCK as usize]);
    rig.check();
}

/// A commit fails on its first metadata write. The pool turns read-only and writes
/// `needs_check` on the device; after a restart it opens read-only with the last committed
/// data; a passed check clears the flag and the pool takes writes again, also after the next
/// restart. `failures`: how many metadata writes fail (all of them: nothing more is written,
/// and the restarted pool is the last commit as it was).
fn failed_metadata_write(failures: u32) -> Rig {
    let mut rig = Rig::new(16, settings(DiscardMode::Passdown, Mutations::NONE));
    let volume = rig.create_volume("v", 8);
    let mut channel = rig.channel(volume);
    assert_eq!(rig.run(&mut channel, write(0, 0x31)).status, IoStatus::Success);
    assert_eq!(rig.run(&mut channel, flush()).status, IoStatus::Success);
    let region_lbas = rig.metadata_region_lbas();
    rig.device.add_fault(bdev_thin::testing::SimFault {
        kind: IoKind::Write,
        blocks: (0, region_lbas - 1),
        errno: libc::EIO,
        remaining: failures,
    });
    assert_eq!(rig.run(&mut channel, write(1, 0x32)).status, IoStatus::Success);
    assert_eq!(rig.run(&mut channel, flush()).status, IoStatus::Failed(libc::EIO));
    assert_eq!(rig.owner.mode(), PoolMode::ReadOnly);
    assert!(rig.shared.counters.needs_check.load(std::sync::atomic::Ordering::Relaxed));
    // Reads of committed mappings go on; writes are refused.
    assert_reads(&mut rig, &mut channel, 0, 0x31);
    assert_eq!(rig.run(&mut channel, write(2, 0x33)).status, IoStatus::Failed(libc::EROFS));
    // What is on the device is the last committed transaction, and it checks clean.
    let report =
        check(&mut metadata_reader(&rig.device)).expect("the committed metadata is intact");
    assert_eq!(report.mappings, 1);
    rig
}

#[test]
fn a_failed_metadata_write_turns_the_pool_read_only_and_keeps_what_was_committed() {
    let rig = failed_metadata_write(1);
    let mut rig = rig.reopen();
    assert!(rig.owner.metadata().pool().needs_check, "needs_check was written");
    assert_eq!(rig.owner.mode(), PoolMode::ReadOnly, "and the pool opens read-only");
    let volume = rig.owner.metadata().volumes().next().unwrap().id;
    let mut channel = rig.channel(volume);
    assert_reads(&mut rig, &mut channel, 0, 0x31);
    assert_reads(&mut rig, &mut channel, 1, 0);
    assert_eq!(rig.run(&mut channel, write(2, 0x33)).status, IoStatus::Failed(libc::EROFS));
    // A passed check clears the flag: the pool takes writes, now and after a restart.
    assert_eq!(rig.control(|done| ControlOp::ClearNeedsCheck { done }), Ok(()));
    assert_eq!(rig.owner.mode(), PoolMode::Write);
    assert_eq!(rig.run(&mut channel, write(2, 0x33)).status, IoStatus::Success);
    assert_eq!(rig.run(&mut channel, write(0, 0x34)).status, IoStatus::Success);
    rig.check();
    drop(channel);
    let mut rig = rig.reopen();
    assert!(!rig.owner.metadata().pool().needs_check);
    assert_eq!(rig.owner.mode(), PoolMode::Write);
    let mut channel = rig.channel(volume);
    assert_reads(&mut rig, &mut channel, 0, 0x34);
    assert_reads(&mut rig, &mut channel, 2, 0x33);
}

#[test]
fn a_device_that_fails_every_metadata_write_keeps_its_last_commit() {
    let mut rig = failed_metadata_write(u32::MAX);
    // The needs_check write failed too; the owner does not retry it in a loop.
    for _ in 0..10 {
        rig.owner.poll();
    }
    assert_eq!(rig.device.pending(), Vec::new(), "nothing more is written");
    let err = rig.control(|done| ControlOp::ClearNeedsCheck { done }).unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "the flag cannot be cleared on a failing device");
    assert_eq!(rig.owner.mode(), PoolMode::ReadOnly);
    let rig = rig.reopen();
    assert!(!rig.owner.metadata().pool().needs_check, "never written: the device failed");
    assert_eq!(rig.owner.metadata().volumes().next().unwrap().mapped_blocks, 1);
}

#[test]
fn only_a_read_only_pool_clears_needs_check() {
    let mut rig = Rig::new(16, settings(DiscardMode::Passdown, Mutations::NONE));
    let err = rig.control(|done| ControlOp::ClearNeedsCheck { done }).unwrap_err();
    assert_eq!(err.errno(), libc::EBUSY);
}

#[test]
fn queue_mode_holds_writes_until_the_pool_grows() {
    let mut config = settings(DiscardMode::Passdown, Mutations::NONE);
    config.out_of_space = OutOfSpaceMode::Queue;
    // The device has 4 blocks more than the pool: a grow finds them.
    let mut rig = Rig::growable(4, 4, config);
    let volume = rig.create_volume("v", 8);
    let mut channel = rig.channel(volume);
    for vblock in 0..4 {
        assert_eq!(rig.run(&mut channel, write(vblock, 1)).status, IoStatus::Success);
    }
    channel.submit(write(4, 5)).unwrap();
    assert!(rig.wait(&mut channel, 100).is_none(), "queued, not failed");
    assert_eq!(rig.owner.mode(), bdev_thin::thin::types::PoolMode::OutOfDataSpace);
    // Past the format's maximum is refused, and the write stays queued.
    let layout = *rig.owner.metadata().layout();
    assert_eq!(layout.data_blocks_max, 8);
    let refused = rig.control(|done| ControlOp::Grow { data_blocks: 9, done });
    assert_eq!(refused.expect_err("past the maximum").errno(), libc::ENOSPC);
    assert!(rig.wait(&mut channel, 100).is_none(), "still queued");
    rig.control(|done| ControlOp::Grow { data_blocks: 8, done }).unwrap();
    let done = rig.wait(&mut channel, 100).expect("the queued write proceeds");
    assert_eq!(done.status, IoStatus::Success);
    assert_eq!(rig.owner.mode(), bdev_thin::thin::types::PoolMode::Write);
    assert_reads(&mut rig, &mut channel, 4, 5);
    rig.check();
}

#[test]
fn concurrent_writes_to_one_new_block_provision_it_once() {
    let mut rig = Rig::new(16, settings(DiscardMode::Passdown, Mutations::NONE));
    let volume = rig.create_volume("v", 8);
    // Two channels, as two cores, each writing half of block 3 before either completes.
    let mut a = rig.channel(volume);
    let mut b = rig.channel(volume);
    let half = |byte: u8, first: u64| {
        let mut buffer = IoBuffer::new((BLOCK / 2) as usize);
        buffer.as_mut_slice().fill(byte);
        IoRequest::new(IoKind::Write, 3 * LBAS_PER_BLOCK + first, LBAS_PER_BLOCK / 2, 0)
            .with_buffers(SgList::single(buffer))
    };
    a.submit(half(0xaa, 0)).unwrap();
    b.submit(half(0xbb, LBAS_PER_BLOCK / 2)).unwrap();
    let done_a = rig.wait(&mut a, 200).expect("a completes");
    let done_b = rig.wait(&mut b, 200).expect("b completes");
    assert_eq!((done_a.status, done_b.status), (IoStatus::Success, IoStatus::Success));
    assert_eq!(rig.owner.metadata().used_data_blocks(), 1, "one block for both writes");
    let back = bytes_of(&rig.run(&mut a, read(3)));
    assert!(back[..(BLOCK / 2) as usize].iter().all(|&x| x == 0xaa));
    assert!(back[(BLOCK / 2) as usize..].iter().all(|&x| x == 0xbb));
    rig.check();
}

#[test]
fn write_zeroes_over_a_shared_partial_block_keeps_the_snapshots_data() {
    let mut rig = Rig::new(16, settings(DiscardMode::Passdown, Mutations::NONE));
    let origin = rig.create_volume("origin", 8);
    let mut co = rig.channel(origin);
    assert_eq!(rig.run(&mut co, write(2, 0x5c)).status, IoStatus::Success);
    let snap = rig.snapshot(origin, "snap");
    let mut cs = rig.channel(snap);
    // Zero the second half of block 2 in the origin: a partial edge of a shared block.
    let zeroes = IoRequest::new(
        IoKind::WriteZeroes,
        2 * LBAS_PER_BLOCK + LBAS_PER_BLOCK / 2,
        LBAS_PER_BLOCK / 2,
        0,
    );
    assert_eq!(rig.run(&mut co, zeroes).status, IoStatus::Success);
    let origin_back = bytes_of(&rig.run(&mut co, read(2)));
    assert!(origin_back[..(BLOCK / 2) as usize].iter().all(|&x| x == 0x5c));
    assert!(origin_back[(BLOCK / 2) as usize..].iter().all(|&x| x == 0));
    assert_eq!(bytes_of(&rig.run(&mut cs, read(2))), vec![0x5c; BLOCK as usize]);
    rig.check();
}

/// Polls owner and channel until `count` requests completed; panics after `rounds` polls.
fn collect(rig: &mut Rig, channel: &mut Channel, count: usize, rounds: usize) -> Vec<IoCompletion> {
    let mut done = Vec::with_capacity(count);
    for _ in 0..rounds {
        channel.poll(&mut |c| done.push(c));
        if done.len() == count {
            return done;
        }
        rig.owner.poll();
    }
    panic!("{} of {count} requests completed after {rounds} polls", done.len());
}

/// A channel admits `THIN_CHANNEL_DEPTH_MAX` requests of any size. 1024 requests of 8 blocks
/// each, submitted at once without a poll, become 8192 pieces: through the owner (every block
/// unprovisioned), then through the device (every block mapped, overwritten in place), then
/// read back. Returns the statuses, in completion order, and whether every read matched.
fn full_queue_of_eight_block_requests(mutations: Mutations) -> (Vec<IoStatus>, bool) {
    const DEPTH: u64 = bdev_thin::limits::THIN_CHANNEL_DEPTH_MAX as u64;
    const BLOCKS: u64 = 8;
    let mut rig = Rig::new(DEPTH * BLOCKS + 8, settings(DiscardMode::Passdown, mutations));
    let volume = rig.create_volume("v", DEPTH * BLOCKS);
    let mut channel = rig.channel(volume);
    let byte = |pass: u64, i: u64| (pass * 0x40 + i % 61 + 1) as u8;
    let mut statuses = Vec::new();
    for pass in 0..2 {
        for i in 0..DEPTH {
            let lba = i * BLOCKS * LBAS_PER_BLOCK;
            let request = IoRequest::new(IoKind::Write, lba, BLOCKS * LBAS_PER_BLOCK, i)
                .with_buffers(block_data(byte(pass, i), BLOCKS));
            channel.submit(request).expect("the channel admits its whole depth");
        }
        for completion in collect(&mut rig, &mut channel, DEPTH as usize, 100_000) {
            let bytes = completion.request.buffers.len_bytes();
            assert_eq!(bytes, (BLOCKS * u64::from(BLOCK)) as usize, "the buffers came back");
            statuses.push(completion.status);
        }
    }
    for i in 0..DEPTH {
        let lba = i * BLOCKS * LBAS_PER_BLOCK;
        let request = IoRequest::new(IoKind::Read, lba, BLOCKS * LBAS_PER_BLOCK, i)
            .with_buffers(block_data(0xee, BLOCKS));
        channel.submit(request).expect("the channel admits its whole depth");
    }
    let mut matched = true;
    for completion in collect(&mut rig, &mut channel, DEPTH as usize, 100_000) {
        statuses.push(completion.status);
        let i = completion.request.tag;
        assert_eq!(completion.request.offset_blocks, i * BLOCKS * LBAS_PER_BLOCK);
        let expected = vec![byte(1, i); (BLOCKS * u64::from(BLOCK)) as usize];
        matched &= bytes_of(&completion) == expected;
    }
    rig.check();
    (statuses, matched)
}

/// The rings hold pieces, and pieces beyond them wait in the channel (back-pressure): every
/// request of a full queue succeeds, never a panic (the abort of `perf -q 256 -o 1M`) and never
/// an EAGAIN.
#[test]
fn a_full_queue_of_eight_block_requests_completes_whole() {
    let (statuses, matched) = full_queue_of_eight_block_requests(Mutations::NONE);
    assert!(statuses.iter().all(|s| *s == IoStatus::Success), "{statuses:?}");
    assert!(matched, "every request read back what it wrote");
}

#[cfg(feature = "mutations")]
#[test]
fn rings_sized_for_requests_fail_a_full_queue() {
    use bdev_thin::thin::mutations::Mutation;
    let mutations = Mutations::NONE.with(Mutation::RingsSizedForRequests);
    let (statuses, _) = full_queue_of_eight_block_requests(mutations);
    let refused = statuses.iter().filter(|s| **s == IoStatus::Failed(libc::EAGAIN)).count();
    assert!(refused > 0, "pieces past the device's depth fail with EAGAIN");
}
