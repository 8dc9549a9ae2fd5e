//! The thin pool on the deterministic stepping host: the seed's race and the grace period,
//! each shown both ways (the mechanism on, and switched off with the `mutations` feature),
//! provisioning, sharing and snapshots, discard modes, flush. Every IO's completion is held,
//! reordered or delivered as the test says (`testing::SimDevice`).

mod support;

use bdev_thin::host::{
    DeviceChannel, IoBuffer, IoCompletion, IoFlags, IoKind, IoRequest, IoStatus, SgList,
};
use bdev_thin::testing::SimDevice;
use bdev_thin::thin::metadata::{Layout, PoolMetadata, check};
use bdev_thin::thin::mutations::Mutations;
use bdev_thin::thin::owner::{ControlOp, OwnerSettings};
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
    let before = commits(&rig);
    assert_eq!(rig.run(&mut channel, write(0, 1)).status, IoStatus::Success);
    assert_eq!(rig.run(&mut channel, flush()).status, IoStatus::Success);
    assert_eq!(commits(&rig), before + 1);
    assert!(!rig.owner.metadata().is_dirty());
    let fua = write(1, 2).with_flags(IoFlags::FUA);
    assert_eq!(rig.run(&mut channel, fua).status, IoStatus::Success);
    assert_eq!(commits(&rig), before + 2, "a FUA provision is answered after its commit");
    // A FUA overwrite of a mapped block goes to the owner too (the fast path takes no FUA).
    let fua = write(0, 3).with_flags(IoFlags::FUA);
    assert_eq!(rig.run(&mut channel, fua).status, IoStatus::Success);
    rig.check();
    // What the flush and the FUA writes acknowledged survives a power loss.
    drop(channel);
    let mut rig = rig.reopen();
    let mut channel = rig.channel(volume);
    assert_reads(&mut rig, &mut channel, 0, 3);
    assert_reads(&mut rig, &mut channel, 1, 2);
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

/// A provisioning write whose payload lands while the owner writes the needs_check flag (after
/// a commit whose data flush failed) waits, as during a commit, and is answered once the flag
/// is written, although no commit follows (the read-only pool's transaction stays open).
#[test]
fn a_write_landing_while_needs_check_is_written_is_answered() {
    let mut rig = Rig::new(16, settings(DiscardMode::Passdown, Mutations::NONE));
    let volume = rig.create_volume("v", 8);
    let mut channel = rig.channel(volume);
    assert_eq!(rig.run(&mut channel, write(0, 0x31)).status, IoStatus::Success);
    assert_eq!(rig.run(&mut channel, flush()).status, IoStatus::Success);
    assert_eq!(rig.run(&mut channel, write(2, 0x33)).status, IoStatus::Success);
    let data_lba = rig.metadata_region_lbas();
    rig.device.hold(|io| matches!(io.kind, IoKind::Write | IoKind::Flush));
    channel.submit(write(1, 0x32)).unwrap();
    assert!(rig.wait(&mut channel, 20).is_none(), "the provisioning write is held");
    let provision = rig.device.pending()[0].id;
    channel.submit(flush()).unwrap();
    assert!(rig.wait(&mut channel, 20).is_none(), "the commit's data flush is held");
    let data_flush = rig.device.pending().iter().find(|io| io.kind == IoKind::Flush).unwrap().id;
    rig.device.fail(data_flush, libc::EIO);
    // The commit failed: the pool turns read-only, then writes the flag.
    let mut answers = Vec::new();
    let mut flag_write = None;
    for _ in 0..20 {
        channel.poll(&mut |c| answers.push((c.request.kind, c.status)));
        rig.owner.poll();
        let pending = rig.device.pending();
        flag_write = pending.iter().find(|io| io.offset_blocks < data_lba).map(|io| io.id);
        if flag_write.is_some() {
            break;
        }
    }
    let flag_write = flag_write.expect("needs_check is written after the failed commit");
    // The payload lands while the flag is written: the write waits for that write's end.
    rig.device.complete(provision);
    for _ in 0..20 {
        channel.poll(&mut |c| answers.push((c.request.kind, c.status)));
        rig.owner.poll();
    }
    assert_eq!(answers, [(IoKind::Flush, IoStatus::Failed(libc::EIO))], "only the flush");
    answers.clear();
    rig.device.complete(flag_write);
    rig.device.release_hold();
    for _ in 0..100 {
        channel.poll(&mut |c| answers.push((c.request.kind, c.status)));
        rig.owner.poll();
    }
    // Not inserted: the pool is read-only and its mapping could never commit.
    assert_eq!(answers, [(IoKind::Write, IoStatus::Failed(libc::EIO))], "the write is answered");
    assert_reads(&mut rig, &mut channel, 1, 0);
    drop(channel);
    let rig = rig.reopen();
    assert!(rig.owner.metadata().pool().needs_check, "needs_check was written");
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
    config.pool.out_of_space = OutOfSpaceMode::Queue;
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

/// A FLUSH that arrives while a commit runs is not answered by that commit's flushes, issued
/// before it arrived: it waits for a commit whose data flush was issued after it (DESIGN.md
/// "Metadata"), and what was acknowledged before it then survives a power loss. Here an
/// overwrite in place completes while the commit's data flush is held, then the FLUSH comes.
#[test]
fn a_flush_during_a_commit_waits_for_a_device_flush_issued_after_it() {
    let mut rig = Rig::new(16, settings(DiscardMode::Passdown, Mutations::NONE));
    let volume = rig.create_volume("v", 8);
    let mut channel = rig.channel(volume);
    assert_eq!(rig.run(&mut channel, write(0, 1)).status, IoStatus::Success);
    assert_eq!(rig.run(&mut channel, write(1, 1)).status, IoStatus::Success);
    rig.device.hold(|io| io.kind == IoKind::Flush);
    channel.submit(IoRequest::new(IoKind::Flush, 0, 0, 21)).unwrap();
    let mut commit_flush = None;
    for _ in 0..50 {
        rig.owner.poll();
        channel.poll(&mut |c| panic!("{:?} completed while its commit is held", c.request.tag));
        commit_flush = rig.device.pending().into_iter().find(|p| p.kind == IoKind::Flush);
        if commit_flush.is_some() {
            break;
        }
    }
    let commit_flush = commit_flush.expect("the first flush started a commit");
    // While that commit runs, an overwrite in place (the fast path) completes...
    channel.submit(write(1, 2)).unwrap();
    let overwrite = rig.wait(&mut channel, 50).expect("the overwrite completes");
    assert_eq!(overwrite.status, IoStatus::Success);
    // ...and then a flush arrives: the commit's data flush was issued before both.
    channel.submit(IoRequest::new(IoKind::Flush, 0, 0, 22)).unwrap();
    let arrived_after = rig.device.pending().iter().map(|p| p.id).max().unwrap();
    assert!(arrived_after >= commit_flush.id);
    let mut later_flush_done = false;
    let mut done = Vec::new();
    for _ in 0..500 {
        rig.owner.poll();
        channel.poll(&mut |c| {
            if c.request.tag == 22 {
                assert!(later_flush_done, "the flush was answered by a flush issued before it");
            }
            assert_eq!(c.status, IoStatus::Success);
            done.push(c.request.tag);
        });
        for flush in rig.device.pending().into_iter().filter(|p| p.kind == IoKind::Flush) {
            rig.device.complete(flush.id);
            later_flush_done |= flush.id > arrived_after;
        }
        if done.contains(&22) {
            break;
        }
    }
    assert_eq!(done, vec![21, 22], "both flushes answered, in order");
    rig.device.release_hold();
    drop(channel);
    let mut rig = rig.reopen();
    let mut channel = rig.channel(volume);
    assert!(bytes_of(&rig.run(&mut channel, read(1))) == vec![2; BLOCK as usize]);
    rig.check();
}

/// A read that finds its part of the view not ready parks as a read until it is ready. Here
/// the ready mark falls behind a 16-block read while its first pieces are on the device (as a
/// view being filled again would). Returns whether the read completed while its view was not
/// ready, and what the volume holds afterwards.
fn read_with_unready_view(mutations: Mutations) -> (bool, Vec<u8>) {
    let mut rig = Rig::new(64, settings(DiscardMode::Passdown, mutations));
    let volume = rig.create_volume("v", 32);
    let mut channel = rig.channel(volume);
    let sixteen = |kind: IoKind, byte: u8| {
        IoRequest::new(kind, 0, 16 * LBAS_PER_BLOCK, 0).with_buffers(block_data(byte, 16))
    };
    assert_eq!(rig.run(&mut channel, sixteen(IoKind::Write, 0x3c)).status, IoStatus::Success);
    let view = rig.shared.view(volume).unwrap();
    rig.device.hold(|io| io.kind == IoKind::Read);
    channel.submit(sixteen(IoKind::Read, 0xee)).unwrap();
    assert!(rig.wait(&mut channel, 5).is_none(), "the first pieces are held on the device");
    assert!(!rig.device.pending().is_empty());
    view.set_ready(0);
    rig.device.release_hold();
    let early = rig.wait(&mut channel, 200);
    view.set_ready(u64::MAX);
    if early.is_none() {
        let done = rig.wait(&mut channel, 200).expect("the read completes once its view is ready");
        assert_eq!(done.status, IoStatus::Success);
        assert!(bytes_of(&done) == vec![0x3c; 16 * BLOCK as usize], "the read's own data");
    }
    let again = bytes_of(&rig.run(&mut channel, sixteen(IoKind::Read, 0)));
    rig.check();
    (early.is_some(), again)
}

/// The rest of the read waits in the channel: it never goes to the owner, which would take it
/// for a write and store the read's buffer in the volume.
#[test]
fn a_read_that_finds_its_view_not_ready_parks_as_a_read() {
    let (early, volume) = read_with_unready_view(Mutations::NONE);
    assert!(!early, "the rest of the read waits for its view");
    assert!(volume == vec![0x3c; 16 * BLOCK as usize], "the volume is unchanged");
}

#[cfg(feature = "mutations")]
#[test]
fn an_unready_piece_sent_to_the_owner_writes_the_read_buffer() {
    use bdev_thin::thin::mutations::Mutation;
    let (early, volume) =
        read_with_unready_view(Mutations::NONE.with(Mutation::UnreadyPieceToOwner));
    assert!(early, "the read went on as a write");
    assert!(volume[8 * BLOCK as usize..].iter().all(|&b| b == 0xee), "the read buffer landed");
}

/// WRITE_ZEROES with FUA is acknowledged only once it is durable: after a commit whose data
/// flush covers it, in every way a write_zeroes can end without passing anything down (and
/// with passdown too). Each case zeroes committed data, is acknowledged, loses power, and
/// reports whether it reads zeroes after the pool reopens.
fn fua_write_zeroes_after_a_power_loss(mutations: Mutations) -> Vec<(&'static str, bool)> {
    let whole = IoRequest::new(IoKind::WriteZeroes, LBAS_PER_BLOCK, 2 * LBAS_PER_BLOCK, 0);
    let edge = IoRequest::new(IoKind::WriteZeroes, 2 * LBAS_PER_BLOCK + 4, LBAS_PER_BLOCK - 4, 0);
    let cases = [
        ("passdown", DiscardMode::Passdown, false, clone_range(&whole)),
        ("no_passdown", DiscardMode::NoPassdown, false, clone_range(&whole)),
        ("ignore", DiscardMode::Ignore, false, clone_range(&whole)),
        ("edges only", DiscardMode::Passdown, false, edge),
        ("shared blocks", DiscardMode::Passdown, true, clone_range(&whole)),
        (
            "no_unmap",
            DiscardMode::Passdown,
            false,
            clone_range(&whole).with_flags(IoFlags::NO_UNMAP),
        ),
    ];
    let mut survived = Vec::new();
    for (name, discard, snapshot_first, zeroes) in cases {
        let mut rig = Rig::new(32, settings(discard, mutations));
        let volume = rig.create_volume("v", 8);
        let mut channel = rig.channel(volume);
        for vblock in 0..4 {
            assert_eq!(rig.run(&mut channel, write(vblock, 0x77)).status, IoStatus::Success);
        }
        let flush = IoRequest::new(IoKind::Flush, 0, 0, 0);
        assert_eq!(rig.run(&mut channel, flush).status, IoStatus::Success);
        if snapshot_first {
            rig.snapshot(volume, "snap");
        }
        let (first, end) = (zeroes.offset_blocks, zeroes.offset_blocks + zeroes.num_blocks);
        let flags = zeroes.flags.with(IoFlags::FUA);
        let done = rig.run(&mut channel, zeroes.with_flags(flags));
        assert_eq!(done.status, IoStatus::Success, "{name}");
        drop(channel);
        let mut rig = rig.reopen();
        let mut channel = rig.channel(volume);
        let all = IoRequest::new(IoKind::Read, 0, 4 * LBAS_PER_BLOCK, 0)
            .with_buffers(block_data(0xee, 4));
        let back = bytes_of(&rig.run(&mut channel, all));
        let mut zeroed_all = true;
        for (lba, sector) in back.chunks(LBA as usize).enumerate() {
            if (first..end).contains(&(lba as u64)) {
                zeroed_all &= sector.iter().all(|&b| b == 0);
            } else {
                assert!(sector.iter().all(|&b| b == 0x77), "{name}: LBA {lba} kept its data");
            }
        }
        rig.check();
        survived.push((name, zeroed_all));
    }
    survived
}

#[test]
fn fua_write_zeroes_survives_a_power_loss() {
    for (name, survived) in fua_write_zeroes_after_a_power_loss(Mutations::NONE) {
        assert!(survived, "{name}: the acknowledged zeroes were lost");
    }
}

#[cfg(feature = "mutations")]
#[test]
fn fua_write_zeroes_answered_before_its_commit_is_lost() {
    use bdev_thin::thin::mutations::Mutation;
    let mutations = Mutations::NONE.with(Mutation::FuaZeroesBeforeCommit);
    let lost: Vec<&str> = fua_write_zeroes_after_a_power_loss(mutations)
        .into_iter()
        .filter_map(|(name, survived)| (!survived).then_some(name))
        .collect();
    assert_eq!(lost, ["no_passdown", "ignore", "edges only", "shared blocks", "no_unmap"]);
}

fn clone_range(request: &IoRequest) -> IoRequest {
    IoRequest::new(request.kind, request.offset_blocks, request.num_blocks, request.tag)
        .with_flags(request.flags)
}

/// A NO_UNMAP write_zeroes of 1024 blocks (one owner write per block, as many as the owner has
/// op slots) succeeds, over blocks mapped, unmapped and shared with a snapshot: the blocks
/// past the free slots wait their turn instead of failing with EAGAIN. At 4 KiB and 64 KiB
/// data blocks.
#[test]
fn a_no_unmap_write_zeroes_of_1024_blocks_succeeds() {
    const BLOCKS: u64 = 1024;
    for block_bytes in [4096u32, 65536] {
        let settings = settings(DiscardMode::Passdown, Mutations::NONE);
        let mut rig = rig_with_block_size(2 * BLOCKS, block_bytes, settings);
        let lbas_per_block = u64::from(block_bytes / LBA);
        let size_bytes = BLOCKS * u64::from(block_bytes);
        let volume = rig
            .control(|done| ControlOp::CreateVolume {
                uuid: [1; 16],
                name: "v".into(),
                size_bytes,
                done,
            })
            .unwrap();
        let mut channel = rig.channel(volume);
        let data = |byte: u8, blocks: u64| {
            let mut buffer = IoBuffer::new((blocks * u64::from(block_bytes)) as usize);
            buffer.as_mut_slice().fill(byte);
            SgList::single(buffer)
        };
        // Every third block mapped; half of them then shared with a snapshot.
        for vblock in (0..BLOCKS).step_by(3) {
            let request = IoRequest::new(IoKind::Write, vblock * lbas_per_block, lbas_per_block, 0)
                .with_buffers(data(0x61, 1));
            assert_eq!(rig.run(&mut channel, request).status, IoStatus::Success);
        }
        let snapshot = rig.snapshot(volume, "snap");
        for vblock in (0..BLOCKS).step_by(6) {
            let request = IoRequest::new(IoKind::Write, vblock * lbas_per_block, lbas_per_block, 0)
                .with_buffers(data(0x62, 1));
            assert_eq!(rig.run(&mut channel, request).status, IoStatus::Success);
        }
        let zeroes = IoRequest::new(IoKind::WriteZeroes, 0, BLOCKS * lbas_per_block, 0)
            .with_flags(IoFlags::NO_UNMAP);
        channel.submit(zeroes).unwrap();
        let done = rig.wait(&mut channel, 20_000).expect("the write_zeroes completes");
        assert_eq!(done.status, IoStatus::Success, "{block_bytes}-byte blocks");
        let record = rig.owner.metadata().volume(volume).unwrap().clone();
        assert_eq!(record.mapped_blocks, BLOCKS, "NO_UNMAP leaves every block allocated");
        let all = IoRequest::new(IoKind::Read, 0, BLOCKS * lbas_per_block, 0)
            .with_buffers(data(0xee, BLOCKS));
        let back = bytes_of(&rig.run(&mut channel, all));
        assert!(back.iter().all(|&b| b == 0), "{block_bytes}-byte blocks read zeroes");
        let mut snap_channel = rig.channel(snapshot);
        let first = IoRequest::new(IoKind::Read, 0, lbas_per_block, 0).with_buffers(data(0, 1));
        let back = bytes_of(&rig.run(&mut snap_channel, first));
        assert!(back.iter().all(|&b| b == 0x61), "the snapshot keeps its data");
        rig.check();
    }
}

/// Zeroing waits for what it needs instead of failing with EAGAIN: 32 partial edges of blocks
/// shared with a snapshot need 32 copies at once (the owner has 16 copy buffers), and a
/// NO_UNMAP block in a full pool needs a block that only a commit frees. Returns the statuses
/// of the 33 write_zeroes.
fn zeroing_that_needs_copy_buffers_and_free_blocks(mutations: Mutations) -> Vec<IoStatus> {
    let mut rig = Rig::new(80, settings(DiscardMode::NoPassdown, mutations));
    let volume = rig.create_volume("v", 96);
    let mut channel = rig.channel(volume);
    for vblock in 0..32 {
        assert_eq!(rig.run(&mut channel, write(vblock, 0x44)).status, IoStatus::Success);
    }
    let snapshot = rig.snapshot(volume, "snap");
    for vblock in 0..32 {
        let half = LBAS_PER_BLOCK / 2;
        let zeroes =
            IoRequest::new(IoKind::WriteZeroes, vblock * LBAS_PER_BLOCK + half, half, vblock);
        channel.submit(zeroes).unwrap();
    }
    let mut statuses: Vec<IoStatus> =
        collect(&mut rig, &mut channel, 32, 2_000).iter().map(|c| c.status).collect();
    for vblock in 0..32 {
        let back = bytes_of(&rig.run(&mut channel, read(vblock)));
        assert!(back[..(BLOCK / 2) as usize].iter().all(|&b| b == 0x44), "block {vblock}");
    }
    let mut snap_channel = rig.channel(snapshot);
    assert!(bytes_of(&rig.run(&mut snap_channel, read(7))) == vec![0x44; BLOCK as usize]);
    // Fill the pool (32 shared blocks, their copies, the rest), then free one block by an
    // unmap: it comes back only after a commit, so a NO_UNMAP write_zeroes that needs a
    // block waits for it.
    let mut vblock = 32;
    while rig.owner.metadata().used_data_blocks() < 80 {
        assert_eq!(rig.run(&mut channel, write(vblock, 0x45)).status, IoStatus::Success);
        vblock += 1;
    }
    assert_eq!(rig.run(&mut channel, unmap(32, 1)).status, IoStatus::Success);
    let keep = IoRequest::new(IoKind::WriteZeroes, 95 * LBAS_PER_BLOCK, LBAS_PER_BLOCK, 0)
        .with_flags(IoFlags::NO_UNMAP);
    let done = rig.run(&mut channel, keep);
    statuses.push(done.status);
    if done.status.is_success() {
        assert!(bytes_of(&rig.run(&mut channel, read(95))) == vec![0; BLOCK as usize]);
        let mapped = rig.owner.metadata().lookup(volume, bdev_thin::thin::types::VirtBlock(95));
        assert!(mapped.is_some(), "NO_UNMAP allocated the block");
    }
    rig.check();
    statuses
}

#[test]
fn zeroing_waits_for_copy_buffers_and_free_blocks() {
    let statuses = zeroing_that_needs_copy_buffers_and_free_blocks(Mutations::NONE);
    assert!(statuses.iter().all(|s| s.is_success()), "{statuses:?}");
}

#[cfg(feature = "mutations")]
#[test]
fn zeroing_that_fails_when_busy_answers_eagain() {
    use bdev_thin::thin::mutations::Mutation;
    let mutations = Mutations::NONE.with(Mutation::ZeroingFailsWhenBusy);
    let statuses = zeroing_that_needs_copy_buffers_and_free_blocks(mutations);
    let refused = statuses.iter().filter(|s| **s == IoStatus::Failed(libc::EAGAIN)).count();
    assert!(refused > 1 && statuses[32] == IoStatus::Failed(libc::EAGAIN), "{statuses:?}");
}

/// A rig whose pool has `data_blocks` blocks of `block_bytes` (the shared rig's are 4 KiB).
fn rig_with_block_size(data_blocks: u64, block_bytes: u32, settings: OwnerSettings) -> Rig {
    let mut device_bytes = 64 << 20;
    let layout = loop {
        let layout = Layout::on_data_device(device_bytes, block_bytes, device_bytes).unwrap();
        if layout.data_blocks == data_blocks {
            break layout;
        }
        device_bytes = layout.data_offset_bytes + data_blocks * u64::from(block_bytes);
    };
    let meta = PoolMetadata::format(layout, settings.to_record([7; 16], "pool0")).unwrap();
    let device = SimDevice::new(LBA, device_bytes / u64::from(LBA));
    let mut rig = Rig::with_metadata(device, meta, settings);
    rig.geometry.lbas_per_block = u64::from(block_bytes / LBA);
    rig
}

/// The base device goes away: the close writes nothing (no commit, whatever is dirty), fails
/// the writes in flight on the device and the flush queued behind them, and the device keeps
/// the last commit, which a reopen finds.
#[test]
fn a_close_without_writes_fails_in_flight_and_queued_io_and_keeps_the_last_commit() {
    let mut rig = Rig::new(16, settings(DiscardMode::Passdown, Mutations::NONE));
    let volume = rig.create_volume("v", 8);
    let mut channel = rig.channel(volume);
    assert_eq!(rig.run(&mut channel, write(0, 0x41)).status, IoStatus::Success);
    assert_eq!(rig.run(&mut channel, flush()).status, IoStatus::Success);
    let region_lbas = rig.metadata_region_lbas();
    let committed = rig.device.read_content(0, region_lbas);

    rig.device.set_auto_complete(false);
    channel.submit(write(1, 0x42)).unwrap();
    channel.submit(write(2, 0x43)).unwrap();
    for _ in 0..100 {
        if rig.device.pending().len() == 2 {
            break;
        }
        let _ = rig.wait(&mut channel, 1);
    }
    assert_eq!(rig.device.pending().len(), 2, "both writes in flight on the device");
    let closed = rig.push_control(|done| ControlOp::ClosePool { done });
    rig.owner.poll();
    channel.submit(flush()).unwrap();
    let mut answers = Vec::new();
    for _ in 0..1000 {
        rig.device.complete_all();
        channel.poll(&mut |c| answers.push(c.status));
        rig.owner.poll();
        if rig.owner.is_finished() && answers.len() == 3 {
            break;
        }
    }
    assert_eq!(closed.lock().unwrap().take(), Some(Ok(())));
    // The writes in flight fail as the device's; the flush, submitted once the volume was
    // closed, is refused by the channel itself.
    let in_flight = answers.iter().filter(|s| **s == IoStatus::Failed(libc::ENXIO)).count();
    assert_eq!((answers.len(), in_flight), (3, 2), "every IO fails: {answers:?}");
    assert!(answers.contains(&IoStatus::Failed(libc::ENODEV)), "{answers:?}");
    assert_eq!(rig.device.read_content(0, region_lbas), committed, "no metadata was written");
    let later = rig.push_control(|done| ControlOp::Commit { done });
    rig.owner.poll();
    assert_eq!(later.lock().unwrap().take(), None, "a finished owner runs nothing");

    drop(channel);
    let mut rig = rig.reopen();
    rig.device.set_auto_complete(true);
    let mut channel = rig.channel(volume);
    assert_reads(&mut rig, &mut channel, 0, 0x41);
    assert_reads(&mut rig, &mut channel, 1, 0);
    assert_reads(&mut rig, &mut channel, 2, 0);
    rig.check();
}

/// An unmap that frees more blocks than the owner sorts at once (`OWNER_RANGE_SORT_BLOCKS`) and
/// more runs than an op slot's list starts with (`OWNER_RANGE_RUNS_PER_OP`): two volumes written
/// in turn own alternate data blocks, so unmapping all of one frees 5000 blocks, none of them
/// adjacent. Every block comes back, the other volume keeps its data, the invariants hold.
#[test]
fn an_unmap_past_the_sort_slice_and_the_run_list_frees_every_block() {
    const BLOCKS: u64 = 5000;
    const _: () = assert!(BLOCKS as usize > bdev_thin::limits::OWNER_RANGE_SORT_BLOCKS);
    let block_bytes = 4096u32;
    let settings = settings(DiscardMode::Passdown, Mutations::NONE);
    let mut rig = rig_with_block_size(2 * BLOCKS, block_bytes, settings);
    let lbas_per_block = u64::from(block_bytes / LBA);
    let size_bytes = BLOCKS * u64::from(block_bytes);
    let create = |rig: &mut Rig, uuid: u8, name: &str| {
        rig.control(|done| ControlOp::CreateVolume {
            uuid: [uuid; 16],
            name: name.into(),
            size_bytes,
            done,
        })
        .unwrap()
    };
    let (first, second) = (create(&mut rig, 1, "a"), create(&mut rig, 2, "b"));
    let (mut first_channel, mut second_channel) = (rig.channel(first), rig.channel(second));
    let one_block = |byte: u8| {
        let mut buffer = IoBuffer::new(block_bytes as usize);
        buffer.as_mut_slice().fill(byte);
        SgList::single(buffer)
    };
    for vblock in 0..BLOCKS {
        for (channel, byte) in [(&mut first_channel, 0x61), (&mut second_channel, 0x62)] {
            let request = IoRequest::new(IoKind::Write, vblock * lbas_per_block, lbas_per_block, 0)
                .with_buffers(one_block(byte));
            assert_eq!(rig.run(channel, request).status, IoStatus::Success);
        }
    }
    assert_eq!(rig.owner.metadata().used_data_blocks(), 2 * BLOCKS);
    let unmap = IoRequest::new(IoKind::Unmap, 0, BLOCKS * lbas_per_block, 0);
    assert_eq!(rig.run(&mut first_channel, unmap).status, IoStatus::Success);
    assert_eq!(rig.owner.metadata().volume(first).unwrap().mapped_blocks, 0);
    assert_eq!(rig.owner.metadata().used_data_blocks(), BLOCKS, "every freed block came back");
    let pool = rig.control(|done| ControlOp::Describe { done }).unwrap();
    assert_eq!(pool.held_data_blocks, 0, "every hold released once its deallocate completed");
    for vblock in [0, BLOCKS / 2, BLOCKS - 1] {
        let read = IoRequest::new(IoKind::Read, vblock * lbas_per_block, lbas_per_block, 0)
            .with_buffers(one_block(0));
        let back = bytes_of(&rig.run(&mut second_channel, read));
        assert!(back.iter().all(|&b| b == 0x62), "the other volume keeps block {vblock}");
    }
    rig.check();
}
