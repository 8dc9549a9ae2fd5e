//! Switches that each break one safety mechanism, for tests that must show the mechanism is
//! what keeps the invariants (DESIGN.md "Invariants"). They are one
//! [`Mutations`] value per pool that carries switches only with the cargo feature `mutations`;
//! without it the value is empty and every check is the constant `false`, so no production
//! build contains a switch and the checks compile away.

/// One safety mechanism a test may switch off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Mutation {
    /// Passdown candidates are not held: the allocator may hand them out while the
    /// deallocate is in flight (the seed's bug).
    NoHold = 0,
    /// Holds are dropped when the deallocate is issued instead of when it completes.
    HoldDroppedAtIssue = 1,
    /// Released blocks are reusable at once: no grace period.
    NoGrace = 2,
    /// The grace period counts owner polls instead of in-flight IO.
    GraceCountsPolls = 3,
    /// A commit does not flush the data device first.
    NoDataFlushBeforeCommit = 4,
    /// The superblock is written with the rest of the commit instead of after its flush.
    SuperblockWithBlocks = 5,
    /// A block still mapped by another volume (shared) is passed down too.
    PassdownShared = 6,
    /// A data block freed in the open transaction is reused before the commit.
    ReuseFreedBeforeCommit = 7,
    /// No per-block order: an unmap or write_zeroes may overtake a provision or copy.
    NoBlockOrder = 8,
    /// A metadata block freed in the open transaction is reused before it commits.
    MetaReuseBeforeCommit = 9,
    /// A block shared since its mapping was made is overwritten in place once its count says
    /// exclusive (the bug thin_sim found: a held read of the other volume sees the write).
    InPlaceOnceExclusive = 10,
    /// A channel's pieces hold no credits and a piece the data device refuses fails with
    /// EAGAIN: its rings are sized for requests, not for the pieces requests split into (the
    /// overflow that aborted `perf -q 256 -o 1M`).
    RingsSizedForRequests = 11,
    /// A snapshot neither quiesces its origin nor waits for the writes in flight to it.
    NoQuiesce = 12,
    /// A snapshot's answer clears its origin's quiesce flag even while another snapshot of
    /// that origin waits: the second one shares blocks a fast-path write is still writing.
    QuiesceEndsWithFirstSnapshot = 13,
    /// A write that finished while a commit ran inserts and publishes its block as certainly
    /// unshared after that commit failed: the fast path of the read-only pool writes it.
    PublishAfterFailedCommit = 14,
    /// A shrink or a delete starts without checking that the metadata holds all it takes:
    /// a shrink can stop half done, and a delete can leave a commit that does not fit.
    ControlOpsUnreserved = 15,
    /// A piece whose part of the view is not ready yet goes to the owner as a write, carrying
    /// a read's buffer, instead of parking as what it is.
    UnreadyPieceToOwner = 16,
    /// A write_zeroes (or unmap) with FUA that passes nothing down is answered at once, before
    /// a commit makes it durable.
    FuaZeroesBeforeCommit = 17,
    /// A block of a write_zeroes that finds no op slot, copy buffer or free block fails with
    /// EAGAIN instead of waiting for one.
    ZeroingFailsWhenBusy = 18,
    /// A commit whose opening data flush fails keeps its open transaction instead of
    /// aborting it: a shrink or delete answered as failed stays applied until a restart.
    FailedDataFlushKeepsTransaction = 19,
}

impl Mutation {
    /// Every mutation, in switch order.
    pub const ALL: [Mutation; 20] = [
        Mutation::NoHold,
        Mutation::HoldDroppedAtIssue,
        Mutation::NoGrace,
        Mutation::GraceCountsPolls,
        Mutation::NoDataFlushBeforeCommit,
        Mutation::SuperblockWithBlocks,
        Mutation::PassdownShared,
        Mutation::ReuseFreedBeforeCommit,
        Mutation::NoBlockOrder,
        Mutation::MetaReuseBeforeCommit,
        Mutation::InPlaceOnceExclusive,
        Mutation::RingsSizedForRequests,
        Mutation::NoQuiesce,
        Mutation::QuiesceEndsWithFirstSnapshot,
        Mutation::PublishAfterFailedCommit,
        Mutation::ControlOpsUnreserved,
        Mutation::UnreadyPieceToOwner,
        Mutation::FuaZeroesBeforeCommit,
        Mutation::ZeroingFailsWhenBusy,
        Mutation::FailedDataFlushKeepsTransaction,
    ];
}

/// The switched-on mutations of one pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations {
    #[cfg(feature = "mutations")]
    bits: u32,
}

impl Mutations {
    /// No mutation: the only value a build without the feature can make.
    pub const NONE: Mutations = Mutations {
        #[cfg(feature = "mutations")]
        bits: 0,
    };

    /// `self` with `mutation` switched on.
    #[cfg(feature = "mutations")]
    pub fn with(self, mutation: Mutation) -> Mutations {
        Mutations { bits: self.bits | 1 << mutation as u32 }
    }

    /// Whether `mutation` is on (always false without the `mutations` feature).
    #[inline(always)]
    pub fn is_on(self, mutation: Mutation) -> bool {
        #[cfg(feature = "mutations")]
        {
            self.bits & (1 << mutation as u32) != 0
        }
        #[cfg(not(feature = "mutations"))]
        {
            let _ = mutation;
            false
        }
    }
}

/// The mutations a test asked for in pools this process opens through its RPC methods (not
/// the stepping host's, whose tests pass their own): set by [`Mutations::set_for_new_pools`],
/// else named in `BDEV_THIN_MUTATIONS` (comma-separated, as in `NoHold,NoGrace`), so a real
/// `thin_tgt` or `perf` built with the feature can run a pool with a mechanism switched off.
#[cfg(feature = "mutations")]
static FOR_NEW_POOLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

impl Mutations {
    /// What pools opened by this process's RPC methods get (always none without the feature).
    pub fn for_new_pools() -> Mutations {
        #[cfg(feature = "mutations")]
        {
            use std::sync::atomic::Ordering;
            let set = FOR_NEW_POOLS.load(Ordering::Acquire);
            if set != u64::MAX {
                return Mutations { bits: set as u32 };
            }
            let named = std::env::var("BDEV_THIN_MUTATIONS").unwrap_or_default();
            let mut mutations = Mutations::NONE;
            for name in named.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match Mutation::ALL.iter().find(|m| format!("{m:?}") == name) {
                    Some(mutation) => mutations = mutations.with(*mutation),
                    None => eprintln!("BDEV_THIN_MUTATIONS: no mutation named {name}"),
                }
            }
            mutations
        }
        #[cfg(not(feature = "mutations"))]
        Mutations::NONE
    }

    /// Sets what pools opened from now on get (a test in one process).
    #[cfg(feature = "mutations")]
    pub fn set_for_new_pools(mutations: Mutations) {
        FOR_NEW_POOLS.store(u64::from(mutations.bits), std::sync::atomic::Ordering::Release);
    }
}

/// Crash points for the recovery tests in real processes: with the `mutations` feature and
/// `BDEV_THIN_CRASH_AT=POINT[:N]` in the environment, the N-th (default first) arrival at
/// `POINT` prints `crash point POINT reached` on stderr and kills the process with SIGKILL,
/// so nothing after it runs, not even a flush. Points: `commit_blocks_written`,
/// `commit_before_superblock`, `commit_superblock_written`, `commit_done`. Without the
/// feature this is an empty inline function.
#[inline(always)]
pub fn crash_point(point: &'static str) {
    #[cfg(feature = "mutations")]
    crash::arrive(point);
    #[cfg(not(feature = "mutations"))]
    let _ = point;
}

#[cfg(feature = "mutations")]
mod crash {
    use std::sync::Mutex;
    use std::sync::OnceLock;

    fn target() -> &'static Option<(String, u64)> {
        static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
        TARGET.get_or_init(|| {
            let text = std::env::var("BDEV_THIN_CRASH_AT").ok()?;
            let (name, nth) = match text.split_once(':') {
                Some((name, nth)) => (name.to_string(), nth.parse().unwrap_or(1)),
                None => (text, 1),
            };
            Some((name, nth))
        })
    }

    pub(super) fn arrive(point: &'static str) {
        static SEEN: Mutex<u64> = Mutex::new(0);
        let Some((name, nth)) = target() else {
            return;
        };
        if name != point {
            return;
        }
        let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        *seen += 1;
        if *seen == *nth {
            eprintln!("crash point {point} reached");
            kill_self();
        }
    }

    /// SIGKILL through kill(1): this module stays free of `unsafe`; it only runs in tests.
    fn kill_self() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        // `kill` returned before the signal landed (it cannot, for SIGKILL of a live process,
        // but never go on past a crash point).
        std::process::abort();
    }
}
