//! One reactor's loop: control events, pollers, timed pollers, counters, parking and stopping.
//! Runs on its own pinned thread and owns everything it polls; nothing here takes a lock.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{CURRENT, ReactorShared, RuntimeShared, now_ns};
use crate::host::{CoreId, PollStatus, Poller};
use crate::limits;
use crate::sys::Epoll;

/// What the thread-local `CURRENT` exposes to code running on a reactor.
pub(crate) struct Current {
    pub(crate) core: CoreId,
    pub(crate) epoll: Arc<Epoll>,
}

struct PollerSlot {
    poller: Box<dyn Poller>,
    /// Timed pollers: period and next due time, in ns.
    timer: Option<(u64, u64)>,
}

/// The reactor's own state, handed to control events so they can add pollers.
pub struct ReactorContext {
    core: CoreId,
    pollers: Vec<PollerSlot>,
    added: Vec<PollerSlot>,
    epoll: Arc<Epoll>,
    stopping: bool,
}

impl ReactorContext {
    pub fn core(&self) -> CoreId {
        self.core
    }

    /// Adds a poller run on every loop turn.
    pub fn add_poller(&mut self, poller: Box<dyn Poller + Send>) {
        self.add(poller, None);
    }

    /// Adds a poller run once every `period_us`.
    pub fn add_timed_poller(&mut self, period_us: u64, poller: Box<dyn Poller + Send>) {
        let period_ns = period_us.max(1) * 1000;
        self.add(poller, Some((period_ns, now_ns() + period_ns)));
    }

    /// Adds a poller that is not `Send` (it was built on this reactor).
    pub fn add_local_poller(&mut self, poller: Box<dyn Poller>) {
        self.add(poller, None);
    }

    fn add(&mut self, mut poller: Box<dyn Poller>, timer: Option<(u64, u64)>) {
        for fd in poller.wake_fds() {
            if let Err(e) = crate::sys::with_raw_fd(fd, |fd| self.epoll.add(fd)) {
                eprintln!(
                    "reactor {}: poller {}: cannot watch fd {fd}: {e}",
                    self.core,
                    poller.name()
                );
            }
        }
        if self.stopping {
            poller.begin_stop();
        }
        self.added.push(PollerSlot { poller, timer });
    }
}

pub(crate) fn run(runtime: Arc<RuntimeShared>, me: Arc<ReactorShared>) {
    let options = runtime.options.clone();
    if options.pin
        && let Err(e) = crate::sys::pin_to_core(me.core as usize)
    {
        eprintln!("reactor {}: {e}; running unpinned", me.core);
    }
    let epoll = match Epoll::new() {
        Ok(epoll) => Arc::new(epoll),
        Err(e) => {
            eprintln!("reactor {}: epoll_create1 failed: {e}; exiting", me.core);
            return;
        }
    };
    if let Some(eventfd) = me.waker.eventfd()
        && let Err(e) = epoll.add(eventfd.as_fd())
    {
        eprintln!("reactor {}: cannot watch its eventfd: {e}", me.core);
    }
    CURRENT.with(|c| *c.borrow_mut() = Some(Current { core: me.core, epoll: Arc::clone(&epoll) }));
    let mut ctx = ReactorContext {
        core: me.core,
        pollers: Vec::new(),
        added: Vec::new(),
        epoll,
        stopping: false,
    };
    let mut last_busy_ns = now_ns();
    let mut stop_deadline_ns = u64::MAX;
    loop {
        let mut busy = false;
        for _ in 0..limits::REACTOR_EVENTS_PER_TURN_MAX {
            let Some(event) = me.events.pop() else { break };
            event(&mut ctx);
            me.stats.events.fetch_add(1, Ordering::Relaxed);
            busy = true;
        }
        ctx.pollers.append(&mut ctx.added);
        let now = now_ns();
        for slot in &mut ctx.pollers {
            if let Some((period, next)) = &mut slot.timer {
                if now < *next {
                    continue;
                }
                *next = now + *period;
            }
            busy |= slot.poller.poll() == PollStatus::Busy;
        }
        ctx.pollers.retain(|slot| !slot.poller.is_finished());
        if busy {
            me.stats.busy_polls.fetch_add(1, Ordering::Relaxed);
            last_busy_ns = now;
        } else {
            me.stats.idle_polls.fetch_add(1, Ordering::Relaxed);
        }

        if runtime.stop.load(Ordering::Relaxed) {
            if !ctx.stopping {
                ctx.stopping = true;
                stop_deadline_ns = now + limits::SHUTDOWN_DRAIN_TIMEOUT_MS * 1_000_000;
                for slot in &mut ctx.pollers {
                    slot.poller.begin_stop();
                }
            }
            let drained = ctx.pollers.iter().all(|slot| slot.poller.is_drained());
            if drained && me.events.is_empty() {
                break;
            }
            if now > stop_deadline_ns {
                eprintln!("reactor {}: pollers did not drain in time; exiting anyway", me.core);
                break;
            }
            continue;
        }

        if options.park
            && !busy
            && now.saturating_sub(last_busy_ns) >= options.idle_before_park_us * 1000
        {
            park(&runtime, &me, &mut ctx);
            last_busy_ns = now_ns();
        }
    }
    // Pollers are dropped on this thread, so their channels close where they were opened.
    ctx.pollers.clear();
    CURRENT.with(|c| *c.borrow_mut() = None);
}

fn park(runtime: &RuntimeShared, me: &ReactorShared, ctx: &mut ReactorContext) {
    me.waker.begin_park();
    let mut may_sleep = me.events.is_empty() && !runtime.stop.load(Ordering::Relaxed);
    if may_sleep {
        for slot in &mut ctx.pollers {
            if !slot.poller.prepare_park() {
                may_sleep = false;
                break;
            }
        }
    }
    if may_sleep {
        let now = now_ns();
        let next_timer_ns = ctx
            .pollers
            .iter()
            .filter_map(|slot| slot.timer.map(|(_, next)| next))
            .min()
            .unwrap_or(u64::MAX);
        let bound_ms = runtime.options.park_timeout_ms;
        let timeout_ms = if next_timer_ns == u64::MAX {
            bound_ms
        } else {
            let wait_ms = next_timer_ns.saturating_sub(now).div_ceil(1_000_000);
            let wait_ms = i32::try_from(wait_ms).unwrap_or(i32::MAX);
            if bound_ms < 0 { wait_ms } else { wait_ms.min(bound_ms) }
        };
        me.stats.parks.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = ctx.epoll.wait(timeout_ms) {
            eprintln!("reactor {}: epoll_wait failed: {e}", me.core);
        }
    }
    me.waker.unpark();
}
