//! The seam between the thin core and whatever hosts it: block-device IO with completions,
//! pollers, wakers and message rings, and the clock.
//!
//! Three hosts implement these traits: the embedded runtime (`runtime`, `backend`), the SPDK glue
//! (a later issue) and the deterministic stepping host (`testing`). Code written against this
//! module never learns which one runs it. Everything here is bounded and allocation-free on the
//! IO path: requests and their buffers move into a channel and come back in the completion.

pub mod buffer;

use std::fmt;
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

pub use buffer::{IoBuffer, SgList};

/// A core (reactor) number, as in a core mask.
pub type CoreId = u32;

/// What one IO asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoKind {
    Read,
    Write,
    Unmap,
    WriteZeroes,
    Flush,
    Reset,
}

impl IoKind {
    pub const ALL: [IoKind; 6] = [
        IoKind::Read,
        IoKind::Write,
        IoKind::Unmap,
        IoKind::WriteZeroes,
        IoKind::Flush,
        IoKind::Reset,
    ];

    /// SPDK's name for the IO type (`supported_io_types`, bdevperf workloads).
    pub fn name(self) -> &'static str {
        match self {
            IoKind::Read => "read",
            IoKind::Write => "write",
            IoKind::Unmap => "unmap",
            IoKind::WriteZeroes => "write_zeroes",
            IoKind::Flush => "flush",
            IoKind::Reset => "reset",
        }
    }

    /// Whether the IO moves data through its buffers.
    pub fn has_data(self) -> bool {
        matches!(self, IoKind::Read | IoKind::Write)
    }
}

/// Flags of one IO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoFlags(u8);

impl IoFlags {
    pub const NONE: IoFlags = IoFlags(0);
    /// Write: complete only once the data is durable (force unit access).
    pub const FUA: IoFlags = IoFlags(1);
    /// Write-zeroes: the range must stay allocated (NBD's NO_HOLE, NVMe without DEAC).
    pub const NO_UNMAP: IoFlags = IoFlags(2);

    pub fn contains(self, other: IoFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn with(self, other: IoFlags) -> IoFlags {
        IoFlags(self.0 | other.0)
    }
}

/// How an IO ended. `Copy`, so it travels through rings and completions for free.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoStatus {
    #[default]
    Success,
    /// Failed with a positive errno value (EIO, EINVAL, ENOTSUP, EROFS, ...).
    Failed(i32),
    /// No space to provision the write (ENOSPC).
    NoSpace,
}

impl IoStatus {
    pub fn is_success(self) -> bool {
        self == IoStatus::Success
    }

    /// The positive errno of a failure, 0 on success.
    pub fn errno(self) -> i32 {
        match self {
            IoStatus::Success => 0,
            IoStatus::Failed(errno) => errno,
            IoStatus::NoSpace => libc::ENOSPC,
        }
    }

    /// The status for a kernel result (`res` of a CQE: negative errno on failure).
    pub fn from_kernel_result(result: i32) -> IoStatus {
        if result >= 0 {
            IoStatus::Success
        } else if result == -libc::ENOSPC {
            IoStatus::NoSpace
        } else {
            IoStatus::Failed(-result)
        }
    }
}

/// One IO: what to do, where, with which buffers. It moves into a channel on submission and comes
/// back whole in its completion, so its buffers are owned by exactly one party at a time.
#[derive(Debug)]
pub struct IoRequest {
    pub kind: IoKind,
    pub flags: IoFlags,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    /// Data buffers: exactly `num_blocks * block_size` bytes for reads and writes, empty otherwise.
    pub buffers: SgList,
    /// The submitter's cookie, returned untouched.
    pub tag: u64,
    /// When the bdev layer accepted the IO (ns, its clock); for latency statistics.
    pub submitted_at_ns: u64,
}

impl IoRequest {
    /// A request without data buffers (unmap, write_zeroes, flush, reset).
    pub fn new(kind: IoKind, offset_blocks: u64, num_blocks: u64, tag: u64) -> Self {
        Self {
            kind,
            flags: IoFlags::NONE,
            offset_blocks,
            num_blocks,
            buffers: SgList::new(),
            tag,
            submitted_at_ns: 0,
        }
    }

    pub fn with_buffers(mut self, buffers: SgList) -> Self {
        self.buffers = buffers;
        self
    }

    pub fn with_flags(mut self, flags: IoFlags) -> Self {
        self.flags = flags;
        self
    }

    /// Checks the request against a device of `num_blocks` blocks of `block_size` bytes.
    pub fn validate(&self, block_size: u32, device_blocks: u64) -> Result<(), IoStatus> {
        let end = self
            .offset_blocks
            .checked_add(self.num_blocks)
            .ok_or(IoStatus::Failed(libc::EINVAL))?;
        if matches!(self.kind, IoKind::Flush | IoKind::Reset) {
            return Ok(());
        }
        if end > device_blocks || self.num_blocks == 0 {
            return Err(IoStatus::Failed(libc::EINVAL));
        }
        if self.kind.has_data() {
            let want = self.num_blocks.checked_mul(u64::from(block_size));
            if want != Some(self.buffers.len_bytes() as u64) {
                return Err(IoStatus::Failed(libc::EINVAL));
            }
        }
        Ok(())
    }
}

/// A finished IO, handed back to its submitter on the submitting core.
#[derive(Debug)]
pub struct IoCompletion {
    pub request: IoRequest,
    pub status: IoStatus,
}

/// Why a device or channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("{path}: in use by another process (lock held)")]
    Busy { path: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid device parameter: {0}")]
    Invalid(String),
}

/// Geometry and capabilities of a device, as a bdev reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub block_size_bytes: u32,
    pub num_blocks: u64,
    /// Largest unmap, in blocks, the device takes in one request (0: no unmap).
    pub max_unmap_blocks: u64,
    /// Whether deallocated blocks read back as zeroes. Exports promise only what is true.
    pub unmap_reads_zeroes: bool,
}

/// A block device: malloc, null, uring, a thin volume, or a simulated one. Opened per core into
/// channels; the device object itself is shared and immutable but for its size.
pub trait BlockDevice: Send + Sync + 'static {
    type Channel: DeviceChannel;

    fn info(&self) -> DeviceInfo;

    fn supports(&self, kind: IoKind) -> bool;

    /// Opens a channel for the calling core. Allocates; never on the IO path.
    fn open_channel(&self) -> Result<Self::Channel, DeviceError>;
}

/// A per-core handle to a device. Lives on one core; all calls come from that core.
pub trait DeviceChannel: 'static {
    /// Queues `request`. A full channel hands it back: the caller keeps it and retries after a
    /// poll (back-pressure, never a lock or an allocation). An invalid request is accepted and
    /// completes with an error status.
    fn submit(&mut self, request: IoRequest) -> Result<(), IoRequest>;

    /// Issues queued work and hands every finished IO to `complete`, on this core. Returns how
    /// many completed. Bounded: at most the channel's depth per call.
    fn poll(&mut self, complete: &mut impl FnMut(IoCompletion)) -> usize;

    /// IOs accepted and not yet handed back.
    fn in_flight(&self) -> usize;

    /// Called by a reactor about to park, after it published that it is parking: arm wake-ups
    /// for in-flight work and return false if work is already waiting (the reactor then stays
    /// up). Channels without asynchronous completions need nothing.
    fn prepare_park(&mut self) -> bool {
        self.in_flight() == 0
    }
}

/// What a poll found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollStatus {
    Idle,
    Busy,
}

impl PollStatus {
    pub fn busy_if(busy: bool) -> PollStatus {
        if busy { PollStatus::Busy } else { PollStatus::Idle }
    }
}

impl std::ops::BitOr for PollStatus {
    type Output = PollStatus;
    fn bitor(self, other: PollStatus) -> PollStatus {
        PollStatus::busy_if(self == PollStatus::Busy || other == PollStatus::Busy)
    }
}

/// A unit of work a host calls repeatedly on one core.
pub trait Poller: 'static {
    /// Does a bounded amount of work. Never blocks.
    fn poll(&mut self) -> PollStatus;

    /// A short name for logs and statistics.
    fn name(&self) -> &str {
        "poller"
    }

    /// Called when the host stops: stop taking new work.
    fn begin_stop(&mut self) {}

    /// True once nothing this poller started is in flight. Polled after `begin_stop`.
    fn is_drained(&self) -> bool {
        true
    }

    /// True when the poller has finished for good; the host then drops it.
    fn is_finished(&self) -> bool {
        false
    }

    /// See [`DeviceChannel::prepare_park`]. Return false to keep the reactor up (a grace
    /// period or quiesce wait in progress, a ring not empty).
    fn prepare_park(&mut self) -> bool {
        true
    }

    /// File descriptors whose readiness should wake a parked reactor (sockets, io_uring
    /// eventfds). Asked once, when the poller is added.
    fn wake_fds(&self) -> Vec<i32> {
        Vec::new()
    }
}

/// Wakes a (possibly parked) core so it polls again. `wake` is called after the caller made
/// work visible (pushed into a ring); see `runtime::park` for the protocol.
pub trait Waker: Clone + Send + Sync + 'static {
    fn wake(&self);
}

/// A waker for hosts that never park (the stepping host, pure polling).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopWaker;

impl Waker for NoopWaker {
    fn wake(&self) {}
}

/// A bounded lock-free ring from any core to one core, which it wakes. Full means the sender
/// keeps the message and retries (back-pressure); nothing allocates per message.
pub struct MessageRing<T, W: Waker> {
    queue: ArrayQueue<T>,
    waker: W,
}

impl<T, W: Waker> MessageRing<T, W> {
    pub fn new(capacity: usize, waker: W) -> Self {
        Self { queue: ArrayQueue::new(capacity), waker }
    }

    /// Pushes `message` and wakes the receiver; a full ring hands the message back.
    pub fn push(&self, message: T) -> Result<(), T> {
        self.queue.push(message)?;
        self.waker.wake();
        Ok(())
    }

    pub fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }
}

impl<T, W: Waker> fmt::Debug for MessageRing<T, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageRing").field("len", &self.len()).finish()
    }
}

/// What the thin core asks of its host besides devices: time, the current core, and wakers to
/// build rings with. Cheap to clone; shared by every core.
pub trait Host: Clone + Send + Sync + 'static {
    type Waker: Waker;

    /// Monotonic time in nanoseconds. The only clock the core reads.
    fn now_ns(&self) -> u64;

    /// The core the caller runs on.
    fn current_core(&self) -> CoreId;

    /// A waker for `core`'s reactor.
    fn waker(&self, core: CoreId) -> Self::Waker;
}

/// A message ring shared between cores.
pub type SharedRing<T, W> = Arc<MessageRing<T, W>>;
