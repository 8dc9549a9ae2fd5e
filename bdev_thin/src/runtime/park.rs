//! Waking a parked reactor: the flag-and-fence protocol that makes a missed wake-up impossible.
//!
//! The reactor publishes `parked = true`, issues a SeqCst fence, then re-checks every source of
//! work (its event ring, its pollers' rings and completion queues) before it sleeps. A sender
//! makes its work visible (pushes into a ring), issues a SeqCst fence, then reads `parked` and
//! signals the eventfd if it is set. The two fences order the two store-then-load pairs: either
//! the sender sees `parked` and signals, or the reactor's re-check sees the work. The eventfd
//! stays readable until the reactor drains it, so a signal that arrives before the reactor enters
//! `epoll_wait` still ends the wait. The `loom` model below runs this very code
//! (`RUSTFLAGS="--cfg loom" cargo test -p bdev_thin --lib --release park`).

use std::sync::Arc;

#[cfg(not(loom))]
use std::sync::atomic::{AtomicBool, Ordering, fence};

#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, Ordering, fence};

use crate::host::Waker;

#[cfg(not(loom))]
use crate::sys::EventFd as Signal;

/// Under loom the eventfd is a flag the model can read.
#[cfg(loom)]
pub(crate) struct Signal(AtomicBool);

#[cfg(loom)]
impl Signal {
    fn new() -> std::io::Result<Signal> {
        Ok(Signal(AtomicBool::new(false)))
    }
    fn signal(&self) {
        self.0.store(true, Ordering::Release);
    }
    fn drain(&self) {
        self.0.store(false, Ordering::Release);
    }
    fn is_signalled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

pub(crate) struct WakeState {
    parked: AtomicBool,
    signal: Option<Signal>,
}

/// Wakes one reactor. Cloning shares it.
#[derive(Clone)]
pub struct ReactorWaker {
    state: Arc<WakeState>,
}

impl ReactorWaker {
    pub(crate) fn new() -> std::io::Result<ReactorWaker> {
        Ok(ReactorWaker {
            state: Arc::new(WakeState {
                parked: AtomicBool::new(false),
                signal: Some(Signal::new()?),
            }),
        })
    }

    /// A waker for no reactor (a core outside the mask): wakes nothing.
    pub(crate) fn detached() -> ReactorWaker {
        ReactorWaker { state: Arc::new(WakeState { parked: AtomicBool::new(false), signal: None }) }
    }

    #[cfg(not(loom))]
    pub(crate) fn eventfd(&self) -> Option<&crate::sys::EventFd> {
        self.state.signal.as_ref()
    }

    /// Under loom the signal is a modelled flag: there is no descriptor to watch.
    #[cfg(loom)]
    pub(crate) fn eventfd(&self) -> Option<&crate::sys::EventFd> {
        None
    }

    /// The reactor's side, step 1: publish that it is about to sleep. The caller must then
    /// re-check every work source, and call [`ReactorWaker::unpark`] after it slept or if it
    /// found work.
    pub(crate) fn begin_park(&self) {
        self.state.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Whether the reactor has published that it parks (it may still be re-checking).
    pub(crate) fn is_parked(&self) -> bool {
        self.state.parked.load(Ordering::SeqCst)
    }

    pub(crate) fn unpark(&self) {
        self.state.parked.store(false, Ordering::Relaxed);
        if let Some(signal) = &self.state.signal {
            signal.drain();
        }
    }

    /// Signals unconditionally (stop requests).
    pub(crate) fn wake_now(&self) {
        if let Some(signal) = &self.state.signal {
            signal.signal();
        }
    }
}

impl Waker for ReactorWaker {
    /// The sender's side: called after the work was made visible.
    fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.state.parked.load(Ordering::Relaxed) {
            self.wake_now();
        }
    }
}

#[cfg(all(test, loom))]
mod tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;

    /// Whatever the interleaving, a reactor that parks either sees the pushed work in its
    /// re-check or finds its eventfd signalled.
    #[test]
    fn a_push_never_misses_a_parking_reactor() {
        loom::model(|| {
            let waker = ReactorWaker::new().unwrap();
            let queued = loom::sync::Arc::new(AtomicUsize::new(0));
            let (sender_waker, sender_queue) = (waker.clone(), queued.clone());
            let sender = loom::thread::spawn(move || {
                sender_queue.fetch_add(1, Ordering::Relaxed);
                sender_waker.wake();
            });
            waker.begin_park();
            let saw_work = queued.load(Ordering::Relaxed) > 0;
            sender.join().unwrap();
            let signalled = waker.state.signal.as_ref().unwrap().is_signalled();
            assert!(saw_work || signalled, "lost wake-up");
        });
    }
}
