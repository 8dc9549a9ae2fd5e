//! A controller: what the admin queue pair and the IO queue pairs of one host association
//! share across cores. The admin queue owns the registers and features; this holds only what
//! others must see: whether the controller is enabled, failed or reset (IO queues read one
//! atomic each per poll), the keep alive deadline (the housekeeping poller reads it), the
//! granted queue count and write cache setting (IO Connect, writes), and the pending
//! asynchronous events, which RPC methods and the housekeeping poller raise and the admin queue
//! turns into AER completions. Events sit behind a mutex no IO takes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::ListenAddress;
use super::subsystem::Subsystem;
use crate::host::CoreId;
use crate::nvme::log::CHANGED_NAMESPACES_MAX;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One queue pair of a controller, as `nvmf_subsystem_get_qpairs` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    pub qid: u16,
    pub core: CoreId,
    pub listen: ListenAddress,
    pub peer: Option<SocketAddr>,
}

/// Events waiting for an AER, and what the host has read.
#[derive(Debug, Default)]
struct Events {
    /// NSIDs whose attributes changed since the host last read the changed namespace list.
    changed_nsids: Vec<u32>,
    /// More changed than the list holds: it reports FFFFFFFFh.
    changed_overflow: bool,
    /// A namespace attribute notice waits for an AER.
    namespace_notice: bool,
    /// A notice was sent and the host has not read log 04h since (no second notice until).
    namespace_notice_masked: bool,
    /// A discovery log change notice waits (discovery controllers with keep alive).
    discovery_notice: bool,
}

/// Who a controller is and what its queues share.
pub struct Controller {
    pub cntlid: u16,
    pub subsystem: Arc<Subsystem>,
    pub host_nqn: String,
    pub host_id: [u8; 16],
    /// The core of the admin queue pair (woken when an event arrives).
    pub admin_core: CoreId,
    pub sq_flow_control_disabled: bool,
    kato_ms: AtomicU32,
    keep_alive_ns: AtomicU64,
    enabled: AtomicBool,
    failed: AtomicBool,
    reset_generation: AtomicU32,
    io_queues_granted: AtomicU32,
    write_cache: AtomicBool,
    queues: Mutex<Vec<QueueInfo>>,
    events: Mutex<Events>,
    event_generation: AtomicU64,
}

/// What an admin Connect decided for a new controller.
pub struct ControllerSpec {
    pub subsystem: Arc<Subsystem>,
    pub host_nqn: String,
    pub host_id: [u8; 16],
    pub admin_core: CoreId,
    pub sq_flow_control_disabled: bool,
    pub kato_ms: u32,
    pub io_queues_max: u32,
    pub now_ns: u64,
}

impl Controller {
    pub fn new(cntlid: u16, spec: ControllerSpec) -> Arc<Controller> {
        Arc::new(Controller {
            cntlid,
            subsystem: spec.subsystem,
            host_nqn: spec.host_nqn,
            host_id: spec.host_id,
            admin_core: spec.admin_core,
            sq_flow_control_disabled: spec.sq_flow_control_disabled,
            kato_ms: AtomicU32::new(spec.kato_ms),
            keep_alive_ns: AtomicU64::new(spec.now_ns),
            enabled: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            reset_generation: AtomicU32::new(0),
            io_queues_granted: AtomicU32::new(spec.io_queues_max),
            write_cache: AtomicBool::new(true),
            queues: Mutex::new(Vec::new()),
            events: Mutex::new(Events::default()),
            event_generation: AtomicU64::new(0),
        })
    }

    pub fn kato_ms(&self) -> u32 {
        self.kato_ms.load(Ordering::Relaxed)
    }

    pub fn set_kato_ms(&self, kato_ms: u32, now_ns: u64) {
        self.kato_ms.store(kato_ms, Ordering::Relaxed);
        self.keep_alive(now_ns);
    }

    /// A Keep Alive command arrived: the timer restarts.
    pub fn keep_alive(&self, now_ns: u64) {
        self.keep_alive_ns.store(now_ns, Ordering::Relaxed);
    }

    /// Whether the keep alive timer expired at `now_ns` (never with a timeout of 0).
    pub fn keep_alive_expired(&self, now_ns: u64) -> bool {
        let kato_ms = u64::from(self.kato_ms());
        kato_ms != 0
            && now_ns.saturating_sub(self.keep_alive_ns.load(Ordering::Relaxed))
                > kato_ms * 1_000_000
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// CC.EN: enabling lets IO queues connect; disabling (a reset) ends the IO queues.
    pub fn set_enabled(&self, enabled: bool) {
        if !enabled && self.enabled.swap(false, Ordering::AcqRel) {
            self.reset_generation.fetch_add(1, Ordering::AcqRel);
        } else if enabled {
            self.enabled.store(true, Ordering::Release);
        }
    }

    /// Changes on every reset: an IO queue connected under another value closes.
    pub fn reset_generation(&self) -> u32 {
        self.reset_generation.load(Ordering::Acquire)
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Tears the association down: every queue pair closes at its next poll.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    pub fn io_queues_granted(&self) -> u32 {
        self.io_queues_granted.load(Ordering::Relaxed)
    }

    pub fn set_io_queues_granted(&self, count: u32) {
        self.io_queues_granted.store(count, Ordering::Relaxed);
    }

    /// Volatile write cache enabled (Set Features 06h); with it off, every write is FUA.
    pub fn write_cache_enabled(&self) -> bool {
        self.write_cache.load(Ordering::Relaxed)
    }

    pub fn set_write_cache(&self, enabled: bool) {
        self.write_cache.store(enabled, Ordering::Relaxed);
    }

    /// Registers a queue pair; false if its QID is taken.
    pub fn add_queue(&self, info: QueueInfo) -> bool {
        let mut queues = lock(&self.queues);
        if queues.iter().any(|q| q.qid == info.qid) {
            return false;
        }
        queues.push(info);
        true
    }

    pub fn remove_queue(&self, qid: u16) {
        lock(&self.queues).retain(|q| q.qid != qid);
    }

    pub fn queues(&self) -> Vec<QueueInfo> {
        lock(&self.queues).clone()
    }

    /// Bumped whenever an event is raised; the admin queue compares it each poll.
    pub fn event_generation(&self) -> u64 {
        self.event_generation.load(Ordering::Acquire)
    }

    /// A namespace was added, removed or resized.
    pub fn namespace_changed(&self, nsid: u32) {
        let mut events = lock(&self.events);
        if !events.changed_nsids.contains(&nsid) {
            if events.changed_nsids.len() < CHANGED_NAMESPACES_MAX {
                events.changed_nsids.push(nsid);
            } else {
                events.changed_overflow = true;
            }
        }
        events.namespace_notice = true;
        drop(events);
        self.event_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The discovery log changed (discovery controllers).
    pub fn discovery_changed(&self) {
        lock(&self.events).discovery_notice = true;
        self.event_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes the next event an AER may report now: a namespace attribute notice (unless one is
    /// unread) or a discovery log change. `namespace_enabled`: Set Features 0Bh bit 8.
    pub fn take_event(&self, namespace_enabled: bool) -> Option<PendingEvent> {
        let mut events = lock(&self.events);
        if events.namespace_notice && !events.namespace_notice_masked && namespace_enabled {
            events.namespace_notice = false;
            events.namespace_notice_masked = true;
            return Some(PendingEvent::NamespaceAttributeChanged);
        }
        if events.discovery_notice {
            events.discovery_notice = false;
            return Some(PendingEvent::DiscoveryLogChanged);
        }
        None
    }

    /// The changed namespace list (log 04h), ascending; longer than the log holds when more
    /// changed (the log then reports FFFFFFFFh). Reading it without RAE clears it and unmasks
    /// the notice.
    pub fn read_changed_namespaces(&self, retain: bool) -> Vec<u32> {
        let mut events = lock(&self.events);
        let list = if events.changed_overflow {
            vec![0; CHANGED_NAMESPACES_MAX + 1]
        } else {
            let mut list = events.changed_nsids.clone();
            list.sort_unstable();
            list
        };
        if !retain {
            events.changed_nsids.clear();
            events.changed_overflow = false;
            events.namespace_notice_masked = false;
        }
        list
    }
}

/// An asynchronous event ready to complete an AER.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingEvent {
    NamespaceAttributeChanged,
    DiscoveryLogChanged,
}
