//! Proof that the simulator can fail: each mutation of `thin::mutations` switches off one
//! safety mechanism, and a seed of the CI list must catch it, by a failed invariant or a panic
//! inside the pool. Each test names the first catching seed of the list (tried in order), so a
//! workload change that shifts seeds shows here: run
//! `thin_sim --ci --mutation NAME` (built with `--features mutations`) and update the seed.
//! (10) and (11) of the original list have no switch: the owner breaks sharing of every
//! mapping older than the volume's last snapshot (dm-thin's time rule), so neither a count
//! taken before shadowing nor a count lowered since the commit is consulted on that path.
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

fn assert_caught(mutation: Mutation, first_seed: u64) {
    match first_catch(mutation) {
        Some((seed, message)) => {
            eprintln!("{mutation:?} caught by seed {seed}: {message}");
            assert_eq!(
                seed, first_seed,
                "{mutation:?} is first caught by seed {seed}, not {first_seed}: the workload \
                 changed; update the seed here"
            );
        }
        None => panic!("{mutation:?} survived the CI seeds"),
    }
}

#[test]
fn no_hold_is_caught() {
    assert_caught(Mutation::NoHold, 2);
}

#[test]
fn hold_dropped_at_issue_is_caught() {
    assert_caught(Mutation::HoldDroppedAtIssue, 2);
}

#[test]
fn no_grace_is_caught() {
    assert_caught(Mutation::NoGrace, 11);
}

#[test]
fn grace_counting_polls_is_caught() {
    assert_caught(Mutation::GraceCountsPolls, 152);
}

#[test]
fn no_data_flush_before_commit_is_caught() {
    assert_caught(Mutation::NoDataFlushBeforeCommit, 5);
}

#[test]
fn superblock_written_with_the_blocks_is_caught() {
    assert_caught(Mutation::SuperblockWithBlocks, 2);
}

#[test]
fn a_shared_block_passed_down_is_caught() {
    assert_caught(Mutation::PassdownShared, 4);
}

#[test]
fn a_data_block_reused_before_its_free_commits_is_caught() {
    assert_caught(Mutation::ReuseFreedBeforeCommit, 26);
}

#[test]
fn no_per_block_order_is_caught() {
    assert_caught(Mutation::NoBlockOrder, 10);
}

#[test]
fn a_metadata_block_reused_before_its_free_commits_is_caught() {
    assert_caught(Mutation::MetaReuseBeforeCommit, 5);
}

/// Survives the CI seeds since the workload gained the snapshot races (the seeds shifted and
/// none of 0..1300 has the held read of a snapshot across its write and then the origin's);
/// thin_pool's test still catches it. Next: a catching seed for the list.
#[test]
fn overwriting_in_place_once_exclusive_is_caught() {
    assert_caught(Mutation::InPlaceOnceExclusive, 1477);
}

#[test]
fn publish_after_failed_commit_is_caught() {
    assert_caught(Mutation::PublishAfterFailedCommit, 10);
}

#[test]
fn fua_zeroes_before_commit_is_caught() {
    assert_caught(Mutation::FuaZeroesBeforeCommit, 355);
}

#[test]
fn rings_sized_for_requests_is_caught() {
    assert_caught(Mutation::RingsSizedForRequests, 1);
}

#[test]
fn no_quiesce_is_caught() {
    assert_caught(Mutation::NoQuiesce, 57);
}

#[test]
fn quiesce_ending_with_the_first_snapshot_is_caught() {
    assert_caught(Mutation::QuiesceEndsWithFirstSnapshot, 143);
}

#[test]
fn unreserved_control_ops_are_caught() {
    assert_caught(Mutation::ControlOpsUnreserved, 24);
}

#[test]
fn an_unready_piece_sent_to_the_owner_is_caught() {
    assert_caught(Mutation::UnreadyPieceToOwner, 114);
}

#[test]
fn zeroing_failing_when_busy_is_caught() {
    assert_caught(Mutation::ZeroingFailsWhenBusy, 7);
}

#[test]
fn a_failed_data_flush_keeping_its_transaction_is_caught() {
    assert_caught(Mutation::FailedDataFlushKeepsTransaction, 672);
}
