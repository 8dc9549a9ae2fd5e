//! Thin volumes as bdevs, and pools hosted on the embedded runtime: the glue between the thin
//! core (generic over the host traits) and this host's reactors, bdev registry and base
//! devices. Control plane only, but for [`ThinVolumeDevice::open_channel`], which builds a
//! volume channel on the calling core, and the owner poller, which runs on the pool's home core.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_queue::ArrayQueue;
use uuid::Uuid;

use crate::backend::BaseDevice;
use crate::host::{BlockDevice, DeviceError, DeviceInfo, Host, IoKind, PollStatus, Poller};
use crate::runtime::{ReactorWaker, RuntimeHandle};
use crate::thin::channel::{ChannelGeometry, VolumeChannel};
use crate::thin::metadata::{Layout, PoolRecord};
use crate::thin::owner::{ControlOp, Owner, OwnerSettings, PoolError};
use crate::thin::pool::PoolShared;
use crate::thin::types::VolumeId;
use crate::thin::view::VolumeView;

/// Control operations a pool's owner takes per poll are few; the ring only bounds bursts.
const CONTROL_RING_ENTRIES: usize = 256;

/// A pool hosted here: what RPC methods and volume bdevs need to reach its owner.
pub struct ThinPool {
    pub name: String,
    pub uuid: Uuid,
    pub base_bdev: String,
    /// The metadata bdev, when the metadata region is not at the start of the base bdev.
    pub metadata_bdev: Option<String>,
    pub metadata_device: Option<BaseDevice>,
    pub home_core: u32,
    pub shared: Arc<PoolShared<ReactorWaker>>,
    pub control: Arc<ControlRing>,
    pub device: BaseDevice,
    pub geometry: ChannelGeometry,
    pub layout: Layout,
    pub record: PoolRecord,
    pub runtime: RuntimeHandle,
    /// Volume bdev names (UUIDs) by volume id, for delete and listing.
    pub volumes: Mutex<Vec<(VolumeId, String)>>,
}

impl ThinPool {
    /// Sends `op` to the owner; never waits. See [`ControlRing::send`].
    pub fn send(&self, op: ControlOp) {
        if self.control.send(op) {
            self.shared.home_waker.wake();
        }
    }
}

/// The way into a pool's owner: the bounded ring the owner drains, and where operations wait
/// while it is full.
///
/// A sender never spins: RPC handlers run on reactors, possibly the owner's own core, where a
/// full ring would never drain while the sender waited for it. An operation that finds the
/// ring full waits in `overflow`, in order, and the owner's poller moves it into the ring as
/// room appears. What waits is bounded by the requests in flight (the RPC server starts at
/// most `RPC_REPLY_RING_ENTRIES`, each sending at most one operation per pool).
///
/// Once the owner has finished (the pool was deleted) the ring is closed: whatever waits in it
/// and every later operation is answered `PoolError::Deleted`, so every operation gets exactly
/// one answer. The lock is taken by senders (control plane) and by the owner's poller only when
/// `overflow_count` says something waits.
pub struct ControlRing {
    ring: Arc<ArrayQueue<ControlOp>>,
    state: Mutex<ControlState>,
    overflow_count: AtomicUsize,
}

#[derive(Default)]
struct ControlState {
    overflow: VecDeque<ControlOp>,
    closed: bool,
}

impl ControlRing {
    pub fn new() -> Arc<ControlRing> {
        Arc::new(ControlRing {
            ring: Arc::new(ArrayQueue::new(CONTROL_RING_ENTRIES)),
            state: Mutex::new(ControlState::default()),
            overflow_count: AtomicUsize::new(0),
        })
    }

    /// The ring the owner drains (given to it at start).
    pub fn ring(&self) -> Arc<ArrayQueue<ControlOp>> {
        Arc::clone(&self.ring)
    }

    /// Queues `op` for the owner, behind everything already waiting. Returns whether the owner
    /// must be woken; a closed ring answers `op` at once instead.
    pub fn send(&self, op: ControlOp) -> bool {
        let mut state = self.lock();
        if state.closed {
            drop(state);
            op.fail(PoolError::Deleted);
            return false;
        }
        if state.overflow.is_empty() {
            match self.ring.push(op) {
                Ok(()) => return true,
                Err(op) => state.overflow.push_back(op),
            }
        } else {
            state.overflow.push_back(op);
        }
        self.overflow_count.store(state.overflow.len(), Ordering::SeqCst);
        true
    }

    /// Moves waiting operations into the ring while it has room. Called by the owner's poller
    /// on the home core before each owner poll; costs one load when nothing waits.
    pub fn refill(&self) -> bool {
        if self.overflow_count.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let mut state = self.lock();
        let mut moved = false;
        while let Some(op) = state.overflow.pop_front() {
            if let Err(op) = self.ring.push(op) {
                state.overflow.push_front(op);
                break;
            }
            moved = true;
        }
        self.overflow_count.store(state.overflow.len(), Ordering::SeqCst);
        moved
    }

    /// Whether operations wait for room in the ring.
    pub fn has_overflow(&self) -> bool {
        self.overflow_count.load(Ordering::SeqCst) > 0
    }

    /// The owner is gone: answers everything queued and refuses what comes later.
    pub fn close(&self) {
        let mut answered: Vec<ControlOp> = Vec::new();
        {
            let mut state = self.lock();
            state.closed = true;
            answered.extend(state.overflow.drain(..));
            while let Some(op) = self.ring.pop() {
                answered.push(op);
            }
            self.overflow_count.store(0, Ordering::SeqCst);
        }
        // Outside the lock: an answer may send again (and meet the closed ring).
        for op in answered {
            op.fail(PoolError::Deleted);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

use crate::host::Waker as _;

/// A thin volume's channel on this host.
pub type VolumeChannelOf = VolumeChannel<BaseDevice, ReactorWaker>;

/// A thin volume as a block device.
#[derive(Clone)]
pub struct ThinVolumeDevice {
    pub pool: Arc<ThinPool>,
    pub view: Arc<VolumeView>,
}

impl ThinVolumeDevice {
    pub fn volume(&self) -> VolumeId {
        self.view.id()
    }

    pub fn size_bytes(&self) -> u64 {
        self.view.size_lbas() * self.pool.geometry.lba_bytes
    }
}

impl BlockDevice for ThinVolumeDevice {
    type Channel = VolumeChannel<BaseDevice, ReactorWaker>;

    fn info(&self) -> DeviceInfo {
        let lba_bytes = self.pool.geometry.lba_bytes;
        let size_lbas = self.view.size_lbas();
        DeviceInfo {
            block_size_bytes: lba_bytes as u32,
            num_blocks: size_lbas,
            max_unmap_blocks: size_lbas,
            // A whole deallocated data block reads zeroes; a partial one is simply not
            // deallocated, which unmap (and NVMe's advisory Dataset Management) allows.
            unmap_reads_zeroes: true,
        }
    }

    fn supports(&self, kind: IoKind) -> bool {
        matches!(
            kind,
            IoKind::Read
                | IoKind::Write
                | IoKind::Unmap
                | IoKind::WriteZeroes
                | IoKind::Flush
                | IoKind::Reset
        )
    }

    fn open_channel(&self) -> Result<Self::Channel, DeviceError> {
        let core = self.pool.runtime.current_core();
        let waker = self.pool.runtime.waker(core);
        VolumeChannel::open(
            Arc::clone(&self.pool.shared),
            Arc::clone(&self.view),
            &self.pool.device,
            self.pool.geometry,
            crate::thin::pool::PoolLimits::PRODUCTION,
            waker,
        )
    }
}

/// The owner as a reactor poller on the pool's home core.
///
/// A stopping reactor calls `begin_stop`, then keeps polling until `is_drained`: the owner is
/// asked for a commit, and the poller reports drained only once it was polled after that ask
/// (the commit starts in a poll), nothing is in flight, and the metadata is clean (or cannot be
/// written: a `read_only` or `fail` pool). Changes made while that commit ran ask for another.
pub struct OwnerPoller {
    owner: Owner<BaseDevice, RuntimeHandle>,
    control: Arc<ControlRing>,
    stopping: bool,
    /// Polled at least once since `begin_stop` asked for the commit.
    polled_since_stop: bool,
}

impl OwnerPoller {
    pub fn new(owner: Owner<BaseDevice, RuntimeHandle>, control: Arc<ControlRing>) -> OwnerPoller {
        OwnerPoller { owner, control, stopping: false, polled_since_stop: false }
    }

    /// Whether the metadata still holds changes a commit could write.
    fn has_uncommitted(&self) -> bool {
        self.owner.metadata().is_dirty() && self.owner.mode().is_writable()
    }
}

impl Poller for OwnerPoller {
    fn poll(&mut self) -> PollStatus {
        let refilled = self.control.refill();
        let status = self.owner.poll();
        if self.owner.is_finished() {
            self.control.close();
            return PollStatus::Busy;
        }
        if refilled {
            return PollStatus::Busy;
        }
        if self.stopping {
            self.polled_since_stop = true;
            if self.owner.is_drained() && self.has_uncommitted() {
                self.owner.request_commit();
                return PollStatus::Busy;
            }
        }
        status
    }

    fn name(&self) -> &str {
        "thin_owner"
    }

    fn begin_stop(&mut self) {
        self.stopping = true;
        self.polled_since_stop = false;
        self.owner.request_commit();
    }

    fn is_drained(&self) -> bool {
        if self.owner.is_finished() {
            return true;
        }
        (!self.stopping || self.polled_since_stop)
            && self.owner.is_drained()
            && !self.has_uncommitted()
    }

    fn prepare_park(&mut self) -> bool {
        !self.control.has_overflow() && !self.owner.has_waiters() && self.owner.prepare_park()
    }

    fn is_finished(&self) -> bool {
        self.owner.is_finished()
    }
}

/// Settings of a pool, from its record (and, in a build with the `mutations` feature, the
/// mutations a test asked for).
pub fn owner_settings(record: &PoolRecord) -> OwnerSettings {
    OwnerSettings::from_record(record, crate::thin::mutations::Mutations::for_new_pools())
}
