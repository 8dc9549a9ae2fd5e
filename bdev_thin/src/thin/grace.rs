//! Grace periods: epochs that delay the reuse of released data blocks until no IO that may have
//! resolved their old mapping is still in flight, on any core (DESIGN.md "Grace periods").
//!
//! Every data-device IO *enters* the current epoch before it reads the mapping view and
//! *leaves* when its device IO completes. Each channel (and the owner) counts its in-flight IOs
//! in two slots, by epoch parity. The owner advances the epoch from E to E+1 only when no IO of
//! epoch E-1 is in flight anywhere (slot (E+1) % 2 is zero on every counter), so reaching E+2
//! proves every IO of epochs ≤ E has completed. A block whose mapping was unpublished while the
//! epoch was E is reusable once the epoch is E+2.
//!
//! The entry protocol and its orderings (all SeqCst, so there is one total order S):
//! a channel loads the epoch e (L1), increments slot e % 2 (I), and loads the epoch again (L2);
//! if L2 ≠ e it undoes I and retries; only then it reads the view (V). The owner unpublishes
//! (U), then reads the epoch R; later, to advance from k to k+1 it loads every counter's slot
//! (k+1) % 2 (C) and, if all are zero, stores k+1 (A).
//! - If the channel's L2 saw an epoch > R, it follows in S the owner's store of R+1, which
//!   follows U, so V sees the unpublished view: it cannot use the released block.
//! - Otherwise it entered some e ≤ R and I precedes in S the store of e+1 (L2 saw e after I).
//!   Advancing from e+1 to e+2 loads slot e % 2 after that store, so it sees I until the IO
//!   leaves: the epoch cannot reach R+2 ≥ e+2 while the IO is in flight.
//!
//! A transient I of a retrying channel only delays an advance; it never hides an IO.
//! New counters register under a mutex (control plane, at channel creation) and bump a version
//! the owner checks before every scan, after which a registering channel can only enter an
//! epoch ≥ the one being advanced from, which the scan does not need to see. `loom` models the
//! protocol (`cargo test --release` with `RUSTFLAGS="--cfg loom"`, see tests below).

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::{Arc, Mutex};

/// The proof above rests on the single total order of SeqCst operations (a store followed by
/// a load of another location, on each side). Loom models SeqCst accesses as acquire/release
/// only (its documented limitation) but models `fence(SeqCst)` exactly, so under loom the
/// total order is spelled out as a fence at the two store→load points. In real builds the
/// SeqCst operations already give it (on x86 the RMW is a full barrier), and no fence is paid.
#[inline(always)]
fn seq_cst_order() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

/// One participant's in-flight counts by epoch parity.
pub struct EpochCounters {
    slots: [AtomicU64; 2],
}

/// Proof of having entered an epoch; give it back to [`EpochCounters::leave`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochTicket {
    parity: u8,
}

impl EpochCounters {
    /// Enters the current epoch of `epochs`. Wait-free but for retries while the owner
    /// advances concurrently.
    #[inline]
    pub fn enter(&self, epochs: &EpochClock) -> EpochTicket {
        loop {
            let epoch = epochs.current.load(Ordering::SeqCst);
            let slot = &self.slots[(epoch % 2) as usize];
            slot.fetch_add(1, Ordering::SeqCst);
            seq_cst_order();
            if epochs.current.load(Ordering::SeqCst) == epoch {
                return EpochTicket { parity: (epoch % 2) as u8 };
            }
            slot.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Leaves the epoch of `ticket` (the IO's device work completed).
    #[inline]
    pub fn leave(&self, ticket: EpochTicket) {
        let previous = self.slots[usize::from(ticket.parity)].fetch_sub(1, Ordering::SeqCst);
        debug_assert!(previous > 0, "left an epoch that was not entered");
    }

    fn count(&self, parity: u64) -> u64 {
        self.slots[(parity % 2) as usize].load(Ordering::SeqCst)
    }

    /// IOs in flight in both slots (for draining and parking decisions).
    pub fn in_flight(&self) -> u64 {
        self.count(0) + self.count(1)
    }
}

/// The pool's epoch, shared by the owner (the only writer) and every channel.
pub struct EpochClock {
    current: AtomicU64,
    registry: Mutex<Vec<Arc<EpochCounters>>>,
    registry_version: AtomicU64,
}

impl EpochClock {
    pub fn new() -> EpochClock {
        EpochClock {
            current: AtomicU64::new(0),
            registry: Mutex::new(Vec::new()),
            registry_version: AtomicU64::new(0),
        }
    }

    pub fn current(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    /// Registers a participant (channel creation; control plane). It must not enter an epoch
    /// before this returns.
    pub fn register(&self) -> Arc<EpochCounters> {
        let counters = Arc::new(EpochCounters { slots: [AtomicU64::new(0), AtomicU64::new(0)] });
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        registry.push(Arc::clone(&counters));
        self.registry_version.fetch_add(1, Ordering::SeqCst);
        counters
    }

    /// Removes a participant with nothing in flight (channel teardown).
    pub fn unregister(&self, counters: &Arc<EpochCounters>) {
        debug_assert_eq!(counters.in_flight(), 0, "unregistering with IO in flight");
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        registry.retain(|c| !Arc::ptr_eq(c, counters));
        self.registry_version.fetch_add(1, Ordering::SeqCst);
    }
}

/// The owner's side: advances the epoch when the previous one has drained.
pub struct GraceKeeper {
    clock: Arc<EpochClock>,
    participants: Vec<Arc<EpochCounters>>,
    seen_version: u64,
    /// Mutation `GraceCountsPolls`: advance on every attempt, whatever is in flight.
    counts_polls: bool,
}

impl GraceKeeper {
    pub fn new(clock: Arc<EpochClock>, counts_polls: bool) -> GraceKeeper {
        GraceKeeper { clock, participants: Vec::new(), seen_version: u64::MAX, counts_polls }
    }

    pub fn clock(&self) -> &Arc<EpochClock> {
        &self.clock
    }

    pub fn epoch(&self) -> u64 {
        self.clock.current()
    }

    /// Advances the epoch by one if no IO of the epoch before the current one is in flight.
    /// Returns whether it advanced. Owner only.
    pub fn try_advance(&mut self) -> bool {
        let version = self.clock.registry_version.load(Ordering::SeqCst);
        if version != self.seen_version {
            let registry = self.clock.registry.lock().unwrap_or_else(|p| p.into_inner());
            self.participants.clone_from(&registry);
            self.seen_version = version;
        }
        let epoch = self.clock.current.load(Ordering::SeqCst);
        seq_cst_order();
        let drained =
            self.counts_polls || self.participants.iter().all(|c| c.count(epoch + 1) == 0);
        if drained {
            self.clock.current.store(epoch + 1, Ordering::SeqCst);
        }
        drained
    }

    /// Whether a release made while the epoch was `released_at` has passed its grace period.
    pub fn has_passed(&self, released_at: u64) -> bool {
        self.epoch() >= released_at + 2
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn an_io_in_flight_holds_the_grace_period() {
        let clock = Arc::new(EpochClock::new());
        let channel = clock.register();
        let mut keeper = GraceKeeper::new(Arc::clone(&clock), false);
        let ticket = channel.enter(&clock);
        let released_at = keeper.epoch();
        assert!(keeper.try_advance(), "E-1 had nothing in flight");
        for _ in 0..100 {
            assert!(!keeper.try_advance(), "the IO of epoch E is still in flight");
        }
        assert!(!keeper.has_passed(released_at));
        channel.leave(ticket);
        assert!(keeper.try_advance());
        assert!(keeper.has_passed(released_at));
    }

    #[test]
    fn counting_polls_is_the_broken_variant() {
        let clock = Arc::new(EpochClock::new());
        let channel = clock.register();
        let mut keeper = GraceKeeper::new(Arc::clone(&clock), true);
        let _ticket = channel.enter(&clock);
        let released_at = keeper.epoch();
        keeper.try_advance();
        keeper.try_advance();
        assert!(keeper.has_passed(released_at), "the mutation ignores the IO in flight");
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicBool;

    /// A channel enters, reads the "view" and uses the block; the owner unpublishes, then
    /// advances twice and reuses the block. The model checker explores every interleaving: the
    /// channel must never use the block after it was reused.
    #[test]
    fn entry_protocol_excludes_the_classic_race() {
        race_model(|counters, clock| counters.enter(clock));
    }

    /// The classic race, shown to be caught: an IO that resolves its mapping before it is
    /// counted in an epoch (read the view, then enter) can be missed by the owner's scan and
    /// use a block that was already reused.
    #[test]
    #[should_panic(expected = "used a reused block")]
    fn resolving_before_entering_is_caught() {
        race_model_with(|counters, clock| counters.enter(clock), true);
    }

    /// A snapshot against the fast path (DESIGN.md "Snapshots"), with two channels. The owner
    /// sets the origin's quiesce flag, waits out the grace period of the epoch it then reads,
    /// shares the origin's block with the snapshot, moves the origin's view time on and clears
    /// the flag. One channel writes the origin's block as `channel.rs` does: enter the epoch,
    /// read the flag, resolve the entry (exclusive while its time equals the view's), and write
    /// in place if the flag was clear and the entry exclusive. The other reads the snapshot's
    /// block once it is shared and must find what it held when it was shared. No write may
    /// land in place once the block is shared (the snapshot would change after its
    /// acknowledgement): either it was counted in an epoch the owner waited for, or it resolved
    /// after the view time moved on.
    #[test]
    fn a_fast_path_write_never_lands_in_a_shared_block() {
        snapshot_model(false);
    }

    /// The broken order, shown to be caught: a write that resolves its entry before it reads
    /// the flag can resolve it exclusive before the snapshot, enter an epoch the owner does not
    /// wait for, and read the flag after the snapshot cleared it.
    #[test]
    #[should_panic(expected = "wrote in place into a shared block")]
    fn reading_the_quiesce_flag_after_resolving_is_caught() {
        snapshot_model(true);
    }

    fn snapshot_model(flag_after_resolve: bool) {
        const ENTRY_TIME: u64 = 1;
        const OLD: u64 = 1;
        // Three threads with retry loops: bounded preemptions keep the search to seconds (an
        // unbounded one runs for hours); the broken order is found with two.
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(4);
        builder.check(move || {
            let clock = Arc::new(EpochClock::new());
            let quiesced = Arc::new(AtomicBool::new(false));
            let view_time = Arc::new(AtomicU64::new(ENTRY_TIME));
            let shared = Arc::new(AtomicBool::new(false));
            let content = Arc::new(AtomicU64::new(OLD));
            // What the block held when the snapshot shared it.
            let taken = Arc::new(AtomicU64::new(0));
            let writer = {
                let counters = clock.register();
                let clock = Arc::clone(&clock);
                let (quiesced, view_time, shared, content) = (
                    Arc::clone(&quiesced),
                    Arc::clone(&view_time),
                    Arc::clone(&shared),
                    Arc::clone(&content),
                );
                loom::thread::spawn(move || {
                    let ticket = counters.enter(&clock);
                    let (stopped, exclusive) = if flag_after_resolve {
                        let exclusive = view_time.load(Ordering::SeqCst) == ENTRY_TIME;
                        (quiesced.load(Ordering::SeqCst), exclusive)
                    } else {
                        let stopped = quiesced.load(Ordering::SeqCst);
                        (stopped, view_time.load(Ordering::SeqCst) == ENTRY_TIME)
                    };
                    if !stopped && exclusive {
                        assert!(
                            !shared.load(Ordering::SeqCst),
                            "wrote in place into a shared block"
                        );
                        content.store(OLD + 1, Ordering::SeqCst);
                    }
                    counters.leave(ticket);
                })
            };
            let reader = {
                let counters = clock.register();
                let clock = Arc::clone(&clock);
                let (shared, content, taken) =
                    (Arc::clone(&shared), Arc::clone(&content), Arc::clone(&taken));
                loom::thread::spawn(move || {
                    let ticket = counters.enter(&clock);
                    if shared.load(Ordering::SeqCst) {
                        let data = content.load(Ordering::SeqCst);
                        let expected = taken.load(Ordering::SeqCst);
                        assert_eq!(data, expected, "the snapshot changed after it was taken");
                    }
                    counters.leave(ticket);
                })
            };
            let mut keeper = GraceKeeper::new(Arc::clone(&clock), false);
            quiesced.store(true, Ordering::SeqCst);
            let quiesced_at = keeper.epoch();
            while !keeper.has_passed(quiesced_at) {
                if !keeper.try_advance() {
                    loom::thread::yield_now();
                }
            }
            taken.store(content.load(Ordering::SeqCst), Ordering::SeqCst);
            shared.store(true, Ordering::SeqCst);
            view_time.store(ENTRY_TIME + 1, Ordering::SeqCst);
            quiesced.store(false, Ordering::SeqCst);
            writer.join().unwrap();
            reader.join().unwrap();
        });
    }

    fn race_model(enter: fn(&EpochCounters, &EpochClock) -> EpochTicket) {
        race_model_with(enter, false);
    }

    fn race_model_with(enter: fn(&EpochCounters, &EpochClock) -> EpochTicket, resolve_first: bool) {
        loom::model(move || {
            let clock = Arc::new(EpochClock::new());
            let counters = clock.register();
            let mapped = Arc::new(AtomicBool::new(true));
            let reused = Arc::new(AtomicBool::new(false));
            let channel = {
                let (clock, mapped, reused) =
                    (Arc::clone(&clock), Arc::clone(&mapped), Arc::clone(&reused));
                loom::thread::spawn(move || {
                    let early = resolve_first && mapped.load(Ordering::SeqCst);
                    let ticket = enter(&counters, &clock);
                    let resolved =
                        if resolve_first { early } else { mapped.load(Ordering::SeqCst) };
                    if resolved {
                        assert!(!reused.load(Ordering::SeqCst), "used a reused block");
                    }
                    counters.leave(ticket);
                })
            };
            let mut keeper = GraceKeeper::new(Arc::clone(&clock), false);
            mapped.store(false, Ordering::SeqCst);
            let released_at = keeper.epoch();
            while !keeper.has_passed(released_at) {
                if !keeper.try_advance() {
                    loom::thread::yield_now();
                }
            }
            reused.store(true, Ordering::SeqCst);
            channel.join().unwrap();
        });
    }
}

impl Default for EpochClock {
    fn default() -> Self {
        EpochClock::new()
    }
}
