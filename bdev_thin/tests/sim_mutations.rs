//! Proof that the simulator can fail: each mutation of `thin::mutations` switches
//! off one safety mechanism, and the CI seed list must catch every one of them, by a failed
//! invariant or a panic inside the pool. Run with `--features mutations`. The list:
//! (1) NoHold, (2) HoldDroppedAtIssue, (3) NoGrace, (4) GraceCountsPolls,
//! (5) SuperblockWithBlocks, (6) PassdownShared, (7) ReuseFreedBeforeCommit,
//! (8) NoDataFlushBeforeCommit, (9) NoBlockOrder, (12) MetaReuseBeforeCommit, and the bug the
//! simulator found, InPlaceOnceExclusive. (10) and (11)
//! have no switch: the owner breaks sharing of every mapping older than the volume's last
//! snapshot (dm-thin's time rule), so neither a count taken before shadowing nor a count
//! lowered since the commit is consulted on that path any more. Of the thin-core switches
//! since, PublishAfterFailedCommit (first caught by seed 16) and FuaZeroesBeforeCommit (seed
//! 26) are caught here; RingsSizedForRequests, NoQuiesce, QuiesceEndsWithFirstSnapshot and
//! ControlOpsUnreserved survive the CI seeds today and are caught only by the thin_pool and
//! thin_control tests: the simulator's workload does not yet reach them.
#![cfg(feature = "mutations")]

use bdev_thin::testing::sim::{self, SimConfig};
use bdev_thin::thin::mutations::{Mutation, Mutations};

/// The first seed of the CI list (tried in order) that catches `mutation`, if any.
fn first_catch(mutation: Mutation) -> Option<(u64, String)> {
    for seed in sim::ci_seeds() {
        let config =
            SimConfig { mutations: Mutations::NONE.with(mutation), ..SimConfig::new(seed) };
        let outcome = std::panic::catch_unwind(|| sim::run(config));
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err(failure)) => return Some((seed, failure.message)),
            Err(_) => return Some((seed, "panic".into())),
        }
    }
    None
}

fn assert_caught(mutation: Mutation) {
    match first_catch(mutation) {
        Some((seed, message)) => eprintln!("{mutation:?} caught by seed {seed}: {message}"),
        None => panic!("{mutation:?} survived the CI seeds"),
    }
}

#[test]
fn no_hold_is_caught() {
    assert_caught(Mutation::NoHold);
}

#[test]
fn hold_dropped_at_issue_is_caught() {
    assert_caught(Mutation::HoldDroppedAtIssue);
}

#[test]
fn no_grace_is_caught() {
    assert_caught(Mutation::NoGrace);
}

#[test]
fn grace_counting_polls_is_caught() {
    assert_caught(Mutation::GraceCountsPolls);
}

#[test]
fn no_data_flush_before_commit_is_caught() {
    assert_caught(Mutation::NoDataFlushBeforeCommit);
}

#[test]
fn superblock_written_with_the_blocks_is_caught() {
    assert_caught(Mutation::SuperblockWithBlocks);
}

#[test]
fn a_shared_block_passed_down_is_caught() {
    assert_caught(Mutation::PassdownShared);
}

#[test]
fn a_data_block_reused_before_its_free_commits_is_caught() {
    assert_caught(Mutation::ReuseFreedBeforeCommit);
}

#[test]
fn no_per_block_order_is_caught() {
    assert_caught(Mutation::NoBlockOrder);
}

#[test]
fn a_metadata_block_reused_before_its_free_commits_is_caught() {
    assert_caught(Mutation::MetaReuseBeforeCommit);
}

#[test]
fn overwriting_in_place_once_exclusive_is_caught() {
    assert_caught(Mutation::InPlaceOnceExclusive);
}

#[test]
fn publish_after_failed_commit_is_caught() {
    assert_caught(Mutation::PublishAfterFailedCommit);
}

#[test]
fn fua_zeroes_before_commit_is_caught() {
    assert_caught(Mutation::FuaZeroesBeforeCommit);
}
