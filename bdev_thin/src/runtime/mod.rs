//! The embedded host: one reactor thread per core of a core mask, pinned with `core_affinity`,
//! each running its pollers to completion in a loop, as SPDK's reactors do.
//!
//! A reactor owns its pollers and timed pollers outright (no locks); other threads reach it only
//! through its bounded control-event ring, which wakes it. Under load a reactor busy-polls; when
//! every poller has been idle for [`limits::REACTOR_IDLE_BEFORE_PARK_US`] it parks in one
//! `epoll_wait` on everything that can wake it (see [`park`]). Stopping asks every poller to stop
//! taking work, keeps polling until they report drained (bounded), then exits.

pub mod park;
mod reactor;

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_queue::ArrayQueue;

use crate::host::{CoreId, Host, Poller, Waker};
use crate::limits;
pub use park::ReactorWaker;
pub use reactor::ReactorContext;

/// A control event: a closure run once on the target reactor, between polls.
pub type Event = Box<dyn FnOnce(&mut ReactorContext) + Send>;

/// Monotonic nanoseconds since the first call in this process.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The cores to run reactors on, as SPDK's `-m`: `0x3`, `3`, or a list `[0,1]` / `[0-3]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreMask(pub u64);

impl CoreMask {
    pub fn parse(text: &str) -> Result<CoreMask, String> {
        let text = text.trim();
        let mask = if let Some(list) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            let mut mask = 0u64;
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (lo, hi) = match part.split_once('-') {
                    Some((lo, hi)) => (lo.trim(), hi.trim()),
                    None => (part, part),
                };
                let lo: u32 = lo.parse().map_err(|_| format!("bad core '{lo}' in mask"))?;
                let hi: u32 = hi.parse().map_err(|_| format!("bad core '{hi}' in mask"))?;
                if lo > hi || hi as usize >= limits::CORES_MAX {
                    return Err(format!("bad core range '{part}' in mask"));
                }
                for core in lo..=hi {
                    mask |= 1 << core;
                }
            }
            mask
        } else {
            let hex = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
            u64::from_str_radix(hex, 16).map_err(|_| format!("bad core mask '{text}'"))?
        };
        if mask == 0 {
            return Err(format!("core mask '{text}' names no core"));
        }
        Ok(CoreMask(mask))
    }

    pub fn cores(self) -> impl Iterator<Item = CoreId> {
        (0..64u32).filter(move |c| self.0 & (1 << c) != 0)
    }

    pub fn count(self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn first(self) -> CoreId {
        self.0.trailing_zeros()
    }
}

impl std::fmt::Display for CoreMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:x}", self.0)
    }
}

/// How to run the reactors.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    pub mask: CoreMask,
    /// Park idle reactors (default); `--no-park` keeps pure polling for benchmarks.
    pub park: bool,
    /// Pin each reactor to its core. Off only where the core may not exist (tests).
    pub pin: bool,
    pub idle_before_park_us: u64,
    /// Longest a parked reactor sleeps with no timer due, in milliseconds (`-1`: no bound).
    /// Tests raise it past their own bounds, so a wake-up that is lost fails them instead of
    /// being covered by the periodic wake.
    pub park_timeout_ms: i32,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            mask: CoreMask(1),
            park: true,
            pin: true,
            idle_before_park_us: limits::REACTOR_IDLE_BEFORE_PARK_US,
            park_timeout_ms: limits::REACTOR_PARK_TIMEOUT_MS,
        }
    }
}

/// Counters of one reactor, readable from any thread.
#[derive(Debug, Default)]
pub struct ReactorStats {
    pub busy_polls: AtomicU64,
    pub idle_polls: AtomicU64,
    pub parks: AtomicU64,
    pub events: AtomicU64,
}

/// Per-reactor state other threads may touch: the event ring, the waker and the counters.
pub(crate) struct ReactorShared {
    pub(crate) core: CoreId,
    pub(crate) events: ArrayQueue<Event>,
    pub(crate) waker: ReactorWaker,
    pub(crate) stats: ReactorStats,
}

pub(crate) struct RuntimeShared {
    pub(crate) reactors: Vec<Arc<ReactorShared>>,
    pub(crate) stop: AtomicBool,
    pub(crate) options: RuntimeOptions,
}

impl RuntimeShared {
    fn reactor(&self, core: CoreId) -> Option<&Arc<ReactorShared>> {
        self.reactors.iter().find(|r| r.core == core)
    }
}

/// Why an event could not be delivered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("core {0} runs no reactor")]
    NoSuchCore(CoreId),
    #[error("the runtime is stopping")]
    Stopping,
}

/// The running reactors. Dropping it stops and joins them.
pub struct Runtime {
    shared: Arc<RuntimeShared>,
    threads: Vec<JoinHandle<()>>,
}

/// A cheap, cloneable handle for sending events and reading time: what the rest of the program
/// (RPC, frontends, the thin glue) holds. It is the embedded implementation of [`Host`].
#[derive(Clone)]
pub struct RuntimeHandle {
    shared: Arc<RuntimeShared>,
}

thread_local! {
    static CURRENT: RefCell<Option<reactor::Current>> = const { RefCell::new(None) };
}

impl Runtime {
    /// Starts one reactor per core of `options.mask`.
    pub fn start(options: RuntimeOptions) -> std::io::Result<Runtime> {
        if options.pin {
            let available: Vec<usize> = core_affinity::get_core_ids()
                .unwrap_or_default()
                .into_iter()
                .map(|id| id.id)
                .collect();
            if let Some(core) = options.mask.cores().find(|c| !available.contains(&(*c as usize))) {
                return Err(std::io::Error::other(format!(
                    "core mask {} names core {core}, but this machine has cores {available:?}",
                    options.mask
                )));
            }
        }
        let mut reactors = Vec::new();
        for core in options.mask.cores() {
            reactors.push(Arc::new(ReactorShared {
                core,
                events: ArrayQueue::new(limits::REACTOR_EVENT_RING_ENTRIES),
                waker: ReactorWaker::new()?,
                stats: ReactorStats::default(),
            }));
        }
        let shared = Arc::new(RuntimeShared { reactors, stop: AtomicBool::new(false), options });
        let mut threads = Vec::new();
        for reactor_shared in &shared.reactors {
            let runtime = Arc::clone(&shared);
            let me = Arc::clone(reactor_shared);
            let thread = std::thread::Builder::new()
                .name(format!("reactor_{}", me.core))
                .spawn(move || reactor::run(runtime, me))?;
            threads.push(thread);
        }
        Ok(Runtime { shared, threads })
    }

    pub fn handle(&self) -> RuntimeHandle {
        RuntimeHandle { shared: Arc::clone(&self.shared) }
    }

    /// Asks every reactor to stop after its pollers drain, then waits for them.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for reactor in &self.shared.reactors {
            reactor.waker.wake_now();
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                eprintln!("a reactor thread panicked");
            }
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl RuntimeHandle {
    /// Runs `event` on `core`'s reactor. Control plane only: a full ring is retried with a yield.
    pub fn send(
        &self,
        core: CoreId,
        event: impl FnOnce(&mut ReactorContext) + Send + 'static,
    ) -> Result<(), SendError> {
        let reactor = self.shared.reactor(core).ok_or(SendError::NoSuchCore(core))?;
        let mut event: Event = Box::new(event);
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return Err(SendError::Stopping);
            }
            match reactor.events.push(event) {
                Ok(()) => {
                    reactor.waker.wake();
                    return Ok(());
                }
                Err(back) => {
                    event = back;
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Adds `poller` to `core`'s reactor.
    pub fn add_poller(
        &self,
        core: CoreId,
        poller: Box<dyn Poller + Send>,
    ) -> Result<(), SendError> {
        self.send(core, move |ctx| ctx.add_poller(poller))
    }

    pub fn cores(&self) -> Vec<CoreId> {
        self.shared.reactors.iter().map(|r| r.core).collect()
    }

    pub fn mask(&self) -> CoreMask {
        self.shared.options.mask
    }

    pub fn first_core(&self) -> CoreId {
        self.shared.options.mask.first()
    }

    pub fn is_stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    /// Whether `core`'s reactor has published that it parks: from then on a push into one of
    /// its rings must wake it (tests wait for this before pushing).
    pub fn is_parked(&self, core: CoreId) -> bool {
        self.shared.reactor(core).is_some_and(|r| r.waker.is_parked())
    }

    /// (core, busy polls, idle polls, parks) of every reactor.
    pub fn stats(&self) -> Vec<(CoreId, u64, u64, u64)> {
        self.shared
            .reactors
            .iter()
            .map(|r| {
                (
                    r.core,
                    r.stats.busy_polls.load(Ordering::Relaxed),
                    r.stats.idle_polls.load(Ordering::Relaxed),
                    r.stats.parks.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

impl Host for RuntimeHandle {
    type Waker = ReactorWaker;

    fn now_ns(&self) -> u64 {
        now_ns()
    }

    fn current_core(&self) -> CoreId {
        current_core().unwrap_or_else(|| self.first_core())
    }

    fn waker(&self, core: CoreId) -> ReactorWaker {
        match self.shared.reactor(core) {
            Some(reactor) => reactor.waker.clone(),
            None => ReactorWaker::detached(),
        }
    }
}

/// The core of the reactor running the caller, if it runs on one.
pub fn current_core() -> Option<CoreId> {
    CURRENT.with(|c| c.borrow().as_ref().map(|c| c.core))
}

/// Makes `fd`'s readiness wake the calling reactor when it parks (a socket, an io_uring
/// eventfd). A no-op off a reactor thread. Pair with [`unwatch_fd`] before closing `fd`.
pub fn watch_fd(fd: i32) {
    CURRENT.with(|c| {
        if let Some(current) = c.borrow().as_ref()
            && let Err(e) = crate::sys::with_raw_fd(fd, |fd| current.epoll.add(fd))
        {
            eprintln!("reactor {}: cannot watch fd {fd}: {e}", current.core);
        }
    });
}

/// Like [`watch_fd`], choosing readability and/or writability (a socket with output waiting
/// wakes the reactor when it can take more); neither stops watching. Changes an earlier watch.
pub fn watch_fd_for(fd: i32, readable: bool, writable: bool) {
    CURRENT.with(|c| {
        if let Some(current) = c.borrow().as_ref()
            && let Err(e) =
                crate::sys::with_raw_fd(fd, |fd| current.epoll.watch(fd, readable, writable))
        {
            eprintln!("reactor {}: cannot watch fd {fd}: {e}", current.core);
        }
    });
}

pub fn unwatch_fd(fd: i32) {
    CURRENT.with(|c| {
        if let Some(current) = c.borrow().as_ref() {
            let _ = crate::sys::with_raw_fd(fd, |fd| {
                current.epoll.remove(fd);
                Ok(())
            });
        }
    });
}

/// Runs `f` on a thread that is not a reactor, blocking until `core` ran it and returning its
/// result. For set-up code (config loading, tests); never call it from a reactor.
pub fn call_on<R: Send + 'static>(
    handle: &RuntimeHandle,
    core: CoreId,
    f: impl FnOnce(&mut ReactorContext) -> R + Send + 'static,
) -> Result<R, SendError> {
    assert!(current_core().is_none(), "call_on from a reactor would deadlock");
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    handle.send(core, move |ctx| {
        let _ = sender.send(f(ctx));
    })?;
    receiver.recv().map_err(|_| SendError::Stopping)
}
