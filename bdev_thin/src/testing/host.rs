//! Simulated time and cores, and a stepper that runs pollers in the order a test chooses.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::host::{CoreId, Host, NoopWaker, PollStatus, Poller};

#[derive(Default)]
struct Shared {
    now_ns: AtomicU64,
    current_core: AtomicU32,
}

/// Time only moves when the test says so; the "current core" is whichever the stepper runs.
#[derive(Clone, Default)]
pub struct SteppingHost {
    shared: Arc<Shared>,
}

impl SteppingHost {
    pub fn new() -> SteppingHost {
        SteppingHost::default()
    }

    pub fn advance_ns(&self, ns: u64) {
        self.shared.now_ns.fetch_add(ns, Ordering::SeqCst);
    }

    pub fn advance_ms(&self, ms: u64) {
        self.advance_ns(ms * 1_000_000);
    }

    pub fn set_current_core(&self, core: CoreId) {
        self.shared.current_core.store(core, Ordering::SeqCst);
    }
}

impl Host for SteppingHost {
    type Waker = NoopWaker;

    fn now_ns(&self) -> u64 {
        self.shared.now_ns.load(Ordering::SeqCst)
    }

    fn current_core(&self) -> CoreId {
        self.shared.current_core.load(Ordering::SeqCst)
    }

    fn waker(&self, _core: CoreId) -> NoopWaker {
        NoopWaker
    }
}

/// Pollers by core, run one at a time in the test's order.
pub struct Stepper {
    host: SteppingHost,
    pollers: Vec<(CoreId, Box<dyn Poller>)>,
}

impl Stepper {
    pub fn new(host: SteppingHost) -> Stepper {
        Stepper { host, pollers: Vec::new() }
    }

    pub fn host(&self) -> &SteppingHost {
        &self.host
    }

    /// Adds a poller on `core`; returns its index for [`Stepper::poll`].
    pub fn add(&mut self, core: CoreId, poller: Box<dyn Poller>) -> usize {
        self.pollers.push((core, poller));
        self.pollers.len() - 1
    }

    /// Runs poller `index` once, as its core.
    pub fn poll(&mut self, index: usize) -> PollStatus {
        let (core, poller) = &mut self.pollers[index];
        self.host.set_current_core(*core);
        poller.poll()
    }

    /// Runs every poller of `core` once.
    pub fn poll_core(&mut self, core: CoreId) -> PollStatus {
        let mut status = PollStatus::Idle;
        for index in 0..self.pollers.len() {
            if self.pollers[index].0 == core {
                status = status | self.poll(index);
            }
        }
        status
    }

    /// Runs every poller once, in order.
    pub fn round(&mut self) -> PollStatus {
        let mut status = PollStatus::Idle;
        for index in 0..self.pollers.len() {
            status = status | self.poll(index);
        }
        self.pollers.retain(|(_, p)| !p.is_finished());
        status
    }

    /// Runs rounds until one finds nothing to do; returns the rounds run. Panics after
    /// `rounds_max` busy rounds (a livelock is a test failure, not a hang).
    pub fn run_until_idle(&mut self, rounds_max: usize) -> usize {
        for rounds in 1..=rounds_max {
            if self.round() == PollStatus::Idle {
                return rounds;
            }
        }
        panic!("still busy after {rounds_max} rounds");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls and the core it saw; busy for its first `busy_polls` polls.
    struct Probe {
        host: SteppingHost,
        polls: Arc<AtomicUsize>,
        seen_core: Arc<AtomicU32>,
        busy_polls: usize,
    }

    impl Poller for Probe {
        fn poll(&mut self) -> PollStatus {
            self.seen_core.store(self.host.current_core(), Ordering::SeqCst);
            let polls = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            PollStatus::busy_if(polls <= self.busy_polls)
        }
    }

    fn probe(host: &SteppingHost, busy_polls: usize) -> (Probe, Arc<AtomicUsize>, Arc<AtomicU32>) {
        let (polls, seen_core) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU32::new(99)));
        let probe = Probe {
            host: host.clone(),
            polls: Arc::clone(&polls),
            seen_core: Arc::clone(&seen_core),
            busy_polls,
        };
        (probe, polls, seen_core)
    }

    #[test]
    fn the_test_chooses_which_poller_runs_and_what_time_it_is() {
        let host = SteppingHost::new();
        let mut stepper = Stepper::new(host.clone());
        let (a, a_polls, a_core) = probe(&host, 3);
        let (b, b_polls, b_core) = probe(&host, 0);
        stepper.add(0, Box::new(a));
        stepper.add(1, Box::new(b));
        assert_eq!(stepper.poll_core(1), PollStatus::Idle);
        assert_eq!((a_polls.load(Ordering::SeqCst), b_polls.load(Ordering::SeqCst)), (0, 1));
        assert_eq!(b_core.load(Ordering::SeqCst), 1, "a poller runs as its core");
        assert_eq!(stepper.run_until_idle(10), 4, "three busy rounds, then an idle one");
        assert_eq!(a_core.load(Ordering::SeqCst), 0);
        assert_eq!(host.now_ns(), 0, "time moves only when the test says");
        host.advance_ms(2);
        assert_eq!(host.now_ns(), 2_000_000);
    }

    #[test]
    #[should_panic(expected = "still busy")]
    fn a_livelock_fails_instead_of_hanging() {
        let host = SteppingHost::new();
        let mut stepper = Stepper::new(host.clone());
        stepper.add(0, Box::new(probe(&host, usize::MAX).0));
        stepper.run_until_idle(5);
    }
}
