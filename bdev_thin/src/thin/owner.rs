//! The pool's single writer (DESIGN.md "One owner, many channels"). One owner poller per pool,
//! on the pool's home core, owns the metadata (mappings, counts, the transaction), the
//! allocator's holds and reservations, the per-block order table, the views it publishes and
//! the discard pipeline. Channels on every core send it what their fast path cannot do; it
//! does the work, its own device IO included, and replies on the channel's ring.
//!
//! Invariants it protects: I1 (counts change only here, with the mappings), I2 (allocation
//! through `SpaceMap`, which skips held, reserved, in-grace and uncommitted-free blocks), I4
//! (a block is deallocated only while held, after the commit that unmapped it and after its
//! grace period; the hold is dropped only when the deallocate's completion is drained).
//!
//! The owner's own device IO needs no epoch: every block it reads or writes is referenced by
//! a mapping it keeps busy in the order table, or reserved, so nothing can release it.

mod close;
mod control;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::discard::{self, PassdownRun};
use super::grace::GraceKeeper;
use super::metadata::{CommitPlan, MetadataError, PoolMetadata, PoolRecord, Removed};
use super::mutations::{self, Mutation, Mutations};
use super::pool::{ChannelShared, OwnerMessage, OwnerOp, OwnerReply, PoolLimits, PoolShared};
use super::space_map::{Counts, NoBlock, SpaceMap};
use super::types::{
    DataBlock, DiscardMode, Mapping, OutOfSpaceMode, PoolMode, PoolSettings, VirtBlock, VolumeId,
};
use super::view::{VIEW_CHUNK_SLOT_BYTES, VolumeView};
use crate::host::{
    BlockDevice, DeviceChannel, Host, IoBuffer, IoCompletion, IoFlags, IoKind, IoRequest, IoStatus,
    PollStatus, SgList,
};
use crate::limits;

/// The answer to a control operation, called once on the owner's core.
pub type ControlDone<T> = Box<dyn FnOnce(Result<T, PoolError>) + Send>;

/// A control-plane request to the owner (volume create/delete/snapshot), with its answer.
pub enum ControlOp {
    CreateVolume {
        uuid: [u8; 16],
        name: String,
        size_bytes: u64,
        done: ControlDone<VolumeId>,
    },
    Snapshot {
        origin: VolumeId,
        uuid: [u8; 16],
        name: String,
        done: ControlDone<VolumeId>,
    },
    DeleteVolume {
        volume: VolumeId,
        done: ControlDone<()>,
    },
    /// Sets a volume's size; a shrink frees what lies past the new end.
    Resize {
        volume: VolumeId,
        size_bytes: u64,
        done: ControlDone<()>,
    },
    /// Invalidates both superblocks and flushes, then stops: the pool is never found again.
    /// The caller made sure no volume is open.
    DeletePool {
        done: ControlDone<()>,
    },
    /// The data device grew: use `data_blocks` blocks (up to the format's maximum).
    Grow {
        data_blocks: u64,
        done: ControlDone<()>,
    },
    /// Commit now and answer once it is durable.
    Commit {
        done: ControlDone<()>,
    },
    /// What `bdev_thin_get_pools` / `bdev_thin_get_volumes` report, read on the owner's core.
    Describe {
        done: ControlDone<PoolDescription>,
    },
    /// A check of the metadata passed: clear `needs_check` on the device and take writes
    /// again. Only for a read-only pool (nothing writes its metadata while it is checked).
    ClearNeedsCheck {
        done: ControlDone<()>,
    },
    /// The base device went away: stop without writing anything (what the last commit left
    /// stays the pool), failing in-flight and queued IO. See `owner/close.rs`.
    ClosePool {
        done: ControlDone<()>,
    },
}

impl ControlOp {
    /// Answers the operation with `error` without running it.
    pub fn fail(self, error: PoolError) {
        match self {
            ControlOp::CreateVolume { done, .. } | ControlOp::Snapshot { done, .. } => {
                done(Err(error))
            }
            ControlOp::DeleteVolume { done, .. }
            | ControlOp::Resize { done, .. }
            | ControlOp::DeletePool { done }
            | ControlOp::Grow { done, .. }
            | ControlOp::Commit { done }
            | ControlOp::ClearNeedsCheck { done }
            | ControlOp::ClosePool { done } => done(Err(error)),
            ControlOp::Describe { done } => done(Err(error)),
        }
    }
}

/// A pool's state as the owner sees it.
#[derive(Clone, Debug)]
pub struct PoolDescription {
    pub volumes: Vec<super::metadata::VolumeRecord>,
    pub data_blocks: u64,
    pub used_data_blocks: u64,
    pub held_data_blocks: u64,
    pub transaction_id: u64,
    pub mode: PoolMode,
    pub needs_check: bool,
    pub metadata_free_blocks: u64,
    pub metadata_total_blocks: u64,
}

/// The memory one volume's view table may take, in MiB (for messages).
const VOLUME_VIEW_TABLE_MIB_MAX: u64 =
    (limits::VOLUME_VIEW_CHUNKS_MAX * VIEW_CHUNK_SLOT_BYTES) >> 20;

/// Why a pool operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("{0} does not exist")]
    NoVolume(VolumeId),
    #[error("the pool is read-only after a metadata failure")]
    ReadOnly,
    #[error("the pool has no free data blocks")]
    NoSpace,
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("device IO failed with errno {0}")]
    Io(i32),
    #[error(
        "the volume can grow to {capacity_bytes} bytes ({capacity_vblocks} blocks): its view of \
         mappings is allocated up front for 4 times its size (in whole chunks of 4096 blocks) \
         when it was made or the pool last opened, up to {table_mib} MiB (reopening the pool \
         raises the limit to 4 times the current size)",
        table_mib = VOLUME_VIEW_TABLE_MIB_MAX
    )]
    TooLarge { capacity_vblocks: u64, capacity_bytes: u64 },
    #[error(
        "a volume of {size_bytes} bytes is over the {max_bytes} bytes a volume of this pool can \
         address: its view of mappings is allocated up front, at most {table_mib} MiB",
        table_mib = VOLUME_VIEW_TABLE_MIB_MAX
    )]
    VolumeTooLarge { size_bytes: u64, max_bytes: u64 },
    #[error(
        "a volume of {size_bytes} bytes would take the views of this pool's volumes past \
         {budget_mib} MiB, the memory a pool's views may take (views are allocated up front \
         for their volume's size); {free_bytes} bytes of volume fit"
    )]
    ViewMemory { size_bytes: u64, budget_mib: u64, free_bytes: u64 },
    #[error("a size of {size_bytes} bytes is not a nonzero multiple of the {lba_bytes}-byte LBA")]
    BadSize { size_bytes: u64, lba_bytes: u64 },
    #[error("nothing to grow: the device holds {data_blocks} data blocks, as the pool does")]
    NothingToGrow { data_blocks: u64 },
    #[error("the pool was deleted")]
    Deleted,
    #[error("the pool is writable: a check needs it read-only")]
    Writable,
    #[error("the pool was closed: its base device went away")]
    Closed,
}

impl PoolError {
    pub fn errno(&self) -> i32 {
        match self {
            PoolError::NoVolume(_) => libc::ENODEV,
            PoolError::ReadOnly => libc::EROFS,
            PoolError::NoSpace => libc::ENOSPC,
            PoolError::Metadata(MetadataError::NoSuchVolume { .. }) => libc::ENODEV,
            PoolError::Metadata(MetadataError::NoMetadataSpace { .. }) => libc::ENOSPC,
            PoolError::Metadata(MetadataError::NoMetadataSpaceFor { .. }) => libc::ENOSPC,
            PoolError::Metadata(MetadataError::TooManyVolumes { .. }) => libc::ENOSPC,
            PoolError::Metadata(MetadataError::NameTooLong { .. }) => libc::EINVAL,
            PoolError::Metadata(MetadataError::NameExists { .. }) => libc::EEXIST,
            PoolError::Metadata(MetadataError::GrowPastMax { .. }) => libc::ENOSPC,
            PoolError::Metadata(_) => libc::EIO,
            PoolError::Io(errno) => *errno,
            PoolError::TooLarge { .. } => libc::EINVAL,
            PoolError::Deleted => libc::ENODEV,
            PoolError::VolumeTooLarge { .. } => libc::EINVAL,
            PoolError::ViewMemory { .. } => libc::ENOSPC,
            PoolError::BadSize { .. } => libc::EINVAL,
            PoolError::NothingToGrow { .. } => libc::ENOSPC,
            PoolError::Writable => libc::EBUSY,
            PoolError::Closed => libc::ENODEV,
        }
    }
}

/// A pool's settings that the owner acts on.
#[derive(Clone, Copy, Debug)]
pub struct OwnerSettings {
    /// What the pool's record persists.
    pub pool: PoolSettings,
    pub mutations: Mutations,
    /// The bounds the owner and the channels size themselves by.
    pub limits: PoolLimits,
}

impl OwnerSettings {
    /// The settings a pool's record asks for.
    pub fn from_record(record: &PoolRecord, mutations: Mutations) -> OwnerSettings {
        OwnerSettings { pool: record.settings, mutations, limits: PoolLimits::PRODUCTION }
    }

    /// A new pool's record carrying these settings.
    pub fn to_record(&self, uuid: [u8; 16], name: &str) -> PoolRecord {
        PoolRecord {
            uuid,
            name: name.to_string(),
            settings: self.pool,
            needs_check: false,
            data_bdev_uuid: [0; 16],
        }
    }
}

struct MetaCounts<'a>(&'a PoolMetadata, bool);

impl Counts for MetaCounts<'_> {
    fn open_count(&self, block: DataBlock) -> u32 {
        self.0.data_count(block)
    }
    fn committed_count(&self, block: DataBlock) -> u32 {
        if self.1 { 0 } else { self.0.data_count_committed(block) }
    }
}

/// What the allocator said to a write that needs a new block.
enum Allocation {
    Block(DataBlock),
    /// Blocks will come back (held, in grace, freed but uncommitted, or the queue mode).
    Wait,
    Fail(IoStatus),
}

/// Who waits for a block write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Channel { channel: u32, token: u64 },
    Range { op: usize },
}

/// What a block write puts into its block.
#[derive(Debug)]
enum Payload {
    /// The frontend's data, at `offset_lbas` inside the block.
    Data(IoRequest),
    /// Zeroes over `[offset_lbas, offset_lbas + count_lbas)` of the block.
    Zeroes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteStage {
    /// Zeroing a newly provisioned block before a partial write.
    Zeroing,
    /// Copying chunk `chunk` of the shared block (reading when `reading`).
    Copying { chunk: u64, reading: bool },
    /// The payload's own write is in flight.
    Writing,
    /// Done; waiting for the commit that makes a FUA write durable.
    WaitCommit { after: u64 },
}

struct BlockWrite {
    volume: VolumeId,
    vblock: VirtBlock,
    origin: Origin,
    payload: Payload,
    /// Range inside the block, in LBAs.
    offset_lbas: u64,
    count_lbas: u64,
    fua: bool,
    stage: WriteStage,
    /// Where the payload goes: the mapped block (in place) or a new one (provision, copy).
    target: DataBlock,
    /// The shared block being copied from, when breaking sharing.
    copy_from: Option<DataBlock>,
    /// Whether `target` is newly allocated (reserved) rather than mapped already.
    fresh: bool,
    copy_buffer: Option<IoBuffer>,
    status: IoStatus,
    /// Zeroes into an unmapped block: provision it (NO_UNMAP) or skip it (it reads zeroes).
    keep_allocated: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RangeStage {
    /// Edge writes still running.
    Children,
    /// Waiting for the commit that covers the unmap (started after `after`).
    WaitCommit { after: u64 },
    /// Waiting for the grace period of the epoch the mappings were removed at.
    WaitGrace,
    /// Deallocates in flight.
    Deallocating,
}

/// The blocks a write_zeroes still has to write, started one by one as op slots, copy buffers
/// and free blocks allow (its memory stays O(1) however long the range).
#[derive(Clone, Copy, Debug)]
struct ZeroCursor {
    volume: VolumeId,
    /// The request's range, in the volume's LBAs.
    first_lba: u64,
    end_lba: u64,
    /// The next virtual block that may need a write.
    next_vblock: u64,
    /// NO_UNMAP: every block is written; otherwise only the partial edges.
    keep_allocated: bool,
}

impl ZeroCursor {
    fn end_vblock(&self, lbas_per_block: u64) -> u64 {
        self.end_lba.div_ceil(lbas_per_block)
    }

    /// The next block to write, as (virtual block, offset, count) in LBAs inside the block.
    fn next_write(&self, lbas_per_block: u64) -> Option<(u64, u64, u64)> {
        let end_vblock = self.end_vblock(lbas_per_block);
        let mut vblock = self.next_vblock;
        while vblock < end_vblock {
            let block_first = vblock * lbas_per_block;
            let start = self.first_lba.max(block_first);
            let stop = self.end_lba.min(block_first + lbas_per_block);
            let whole = start == block_first && stop == block_first + lbas_per_block;
            if self.keep_allocated || !whole {
                return Some((vblock, start - block_first, stop - start));
            }
            // Whole blocks were unmapped when the range started: only the last block may
            // still be a partial edge.
            vblock = (vblock + 1).max(end_vblock - 1);
        }
        None
    }
}

struct RangeOp {
    channel: u32,
    token: u64,
    request: IoRequest,
    /// Block writes in flight, plus one while `zeroing` has blocks left to start.
    children: u32,
    zeroing: Option<ZeroCursor>,
    /// Held blocks to pass down, as runs.
    runs: Vec<PassdownRun>,
    deallocates_in_flight: u32,
    released_at: u64,
    stage: RangeStage,
    status: IoStatus,
    /// A delete or shrink waiting for its passdown: answered here instead of a channel.
    control: Option<ControlDone<()>>,
}

struct FlushOp {
    channel: u32,
    token: u64,
    request: IoRequest,
    after: u64,
}

struct SnapshotOp {
    origin: VolumeId,
    uuid: [u8; 16],
    name: String,
    quiesced_at: u64,
    done: Option<ControlDone<VolumeId>>,
    result: Option<VolumeId>,
    after: Option<u64>,
}

enum Op {
    Write(BlockWrite),
    Range(RangeOp),
    Flush(FlushOp),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommitStage {
    Idle,
    FlushingData,
    WritingBlocks {
        in_flight: usize,
    },
    FlushingMetadata,
    WritingSuperblock,
    FlushingSuperblock,
    /// Deleting the pool: zeroed superblocks in flight, then a flush.
    Invalidating {
        in_flight: usize,
    },
    FlushingInvalidation,
    /// Writing the superblock that records `needs_check` alone, then flushing it.
    WritingFlag {
        needs_check: bool,
    },
    FlushingFlag {
        needs_check: bool,
    },
}

const TAG_COMMIT: u64 = 1 << 62;
const TAG_PASSDOWN: u64 = 1 << 61;

/// The owner poller of one pool.
pub struct Owner<D: BlockDevice, H: Host> {
    host: H,
    shared: Arc<PoolShared<H::Waker>>,
    control: Arc<crossbeam_queue::ArrayQueue<ControlOp>>,
    meta: PoolMetadata,
    space: SpaceMap,
    grace: GraceKeeper,
    settings: OwnerSettings,
    data: D::Channel,
    /// The metadata device's channel when the region is on its own device.
    metadata_channel: Option<D::Channel>,
    metadata_lba_bytes: u64,
    metadata_backlog: VecDeque<IoRequest>,
    lba_bytes: u64,
    lbas_per_block: u64,
    data_offset_lbas: u64,
    views: BTreeMap<VolumeId, Arc<VolumeView>>,
    channels: Vec<Option<Arc<ChannelShared<H::Waker>>>>,
    channels_version: u64,
    ops: Vec<Option<Op>>,
    free_ops: Vec<usize>,
    busy: HashMap<(VolumeId, VirtBlock), usize>,
    deferred: VecDeque<OwnerMessage>,
    /// Range ops whose zeroing waits for an op slot, a copy buffer or a free block.
    zeroing: VecDeque<usize>,
    blocked_scratch: Vec<(VolumeId, u64, u64)>,
    no_space_since_ns: Option<u64>,
    snapshots: VecDeque<SnapshotOp>,
    /// Snapshot views being filled: (volume, next virtual block).
    view_builds: VecDeque<(VolumeId, u64)>,
    /// Control operations waiting behind busy blocks (a shrink), retried each poll.
    pending_control: VecDeque<ControlOp>,
    control_commits: Vec<(u64, ControlDone<()>)>,
    commit_stage: CommitStage,
    commit_plan: Option<CommitPlan>,
    commit_failed: bool,
    /// The last write of the needs_check flag failed (not retried: the device fails).
    flag_write_failed: bool,
    /// A clear of needs_check in progress, answered once the superblock is durable.
    clearing: Option<ControlDone<()>>,
    commits_started: u64,
    commits_done: u64,
    commit_wanted: bool,
    last_commit_ns: u64,
    /// The pool's completion ring: passdown completions, drained at the start of each poll.
    passdown_done: VecDeque<(usize, PassdownRun, IoStatus)>,
    /// Completions of one device poll, processed after it (capacity kept: no allocation).
    completed: Vec<IoCompletion>,
    /// Device IO the data channel could not take yet, in order.
    backlog: VecDeque<IoRequest>,
    /// Block writes whose payload landed during a commit: inserted when it ends.
    finish_after_commit: Vec<usize>,
    unsent: VecDeque<(u32, OwnerReply)>,
    copy_buffers: Vec<IoBuffer>,
    /// Scratch of `start_range`: the blocks it frees, sorted into runs a slice at a time.
    range_blocks: Vec<DataBlock>,
    /// Run lists of range ops not in use, one per free op slot: a range op takes one and
    /// gives it back, capacity kept, when its slot is freed.
    run_lists: Vec<Vec<PassdownRun>>,
    mode: PoolMode,
    /// A pool delete in progress, answered once the superblocks are gone.
    deleting: Option<ControlDone<()>>,
    /// A pool delete was accepted: it waits for the operations before it, and every later one
    /// but `Describe` is answered `Deleted` instead of run.
    delete_requested: bool,
    /// A close without writes in progress (the base device went away), answered once nothing
    /// is in flight.
    closing: Option<ControlDone<()>>,
    /// Device IO submitted while closing: never sent, completed as failed on the next poll.
    refused: VecDeque<IoRequest>,
    /// The pool was deleted or closed: the host drops this owner.
    finished: bool,
}

fn slot_of(tag: u64) -> usize {
    // Fits: op slots are bounded by OWNER_OPS_MAX.
    (tag & 0xffff_ffff) as usize
}

impl<D: BlockDevice, H: Host> Owner<D, H> {
    /// Builds the owner on its home core (opens the data channel there). `meta` is a freshly
    /// formatted or opened pool.
    pub fn new(
        host: H,
        shared: Arc<PoolShared<H::Waker>>,
        control: Arc<crossbeam_queue::ArrayQueue<ControlOp>>,
        meta: PoolMetadata,
        device: &D,
        settings: OwnerSettings,
    ) -> Result<Owner<D, H>, crate::host::DeviceError> {
        Self::with_metadata_device(host, shared, control, meta, device, None, settings)
    }

    /// As [`Owner::new`], with the metadata region on its own device (`metadata_device`):
    /// metadata blocks and their flushes go there, the data flush that opens every commit
    /// goes to the data device.
    pub fn with_metadata_device(
        host: H,
        shared: Arc<PoolShared<H::Waker>>,
        control: Arc<crossbeam_queue::ArrayQueue<ControlOp>>,
        meta: PoolMetadata,
        device: &D,
        metadata_device: Option<&D>,
        settings: OwnerSettings,
    ) -> Result<Owner<D, H>, crate::host::DeviceError> {
        assert!(settings.limits.is_valid(), "pool limits out of range: {:?}", settings.limits);
        let metadata_channel = match metadata_device {
            Some(device) => Some(device.open_channel()?),
            None => None,
        };
        let metadata_lba_bytes = metadata_device
            .map_or(u64::from(device.info().block_size_bytes), |d| {
                u64::from(d.info().block_size_bytes)
            });
        let info = device.info();
        let layout = *meta.layout();
        let lba_bytes = u64::from(info.block_size_bytes);
        let lbas_per_block = u64::from(layout.data_block_bytes) / lba_bytes;
        let copy_bytes = (layout.data_block_bytes as usize).min(limits::OWNER_COPY_CHUNK_BYTES_MAX);
        let grace = GraceKeeper::new(
            Arc::clone(&shared.epochs),
            settings.mutations.is_on(Mutation::GraceCountsPolls),
        );
        let mut owner = Owner {
            host,
            control,
            space: SpaceMap::new(layout.data_blocks),
            grace,
            settings,
            data: device.open_channel()?,
            metadata_channel,
            metadata_lba_bytes,
            metadata_backlog: VecDeque::new(),
            lba_bytes,
            lbas_per_block,
            data_offset_lbas: layout.data_offset_bytes / lba_bytes,
            views: BTreeMap::new(),
            channels: Vec::new(),
            channels_version: u64::MAX,
            ops: (0..settings.limits.owner_ops).map(|_| None).collect(),
            free_ops: (0..settings.limits.owner_ops).rev().collect(),
            busy: HashMap::with_capacity(settings.limits.owner_ops),
            deferred: VecDeque::with_capacity(limits::POOL_INBOX_ENTRIES),
            zeroing: VecDeque::with_capacity(settings.limits.owner_ops),
            blocked_scratch: Vec::with_capacity(limits::POOL_INBOX_ENTRIES),
            no_space_since_ns: None,
            snapshots: VecDeque::new(),
            pending_control: VecDeque::new(),
            view_builds: VecDeque::new(),
            control_commits: Vec::new(),
            commit_stage: CommitStage::Idle,
            commit_plan: None,
            commit_failed: false,
            flag_write_failed: false,
            clearing: None,
            commits_started: 0,
            commits_done: 0,
            commit_wanted: false,
            last_commit_ns: 0,
            passdown_done: VecDeque::with_capacity(settings.limits.owner_ops),
            completed: Vec::with_capacity(limits::DEVICE_CHANNEL_DEPTH_MAX),
            finish_after_commit: Vec::with_capacity(settings.limits.owner_ops),
            backlog: VecDeque::with_capacity(settings.limits.owner_ops),
            unsent: VecDeque::new(),
            copy_buffers: (0..settings.limits.copy_buffers)
                .map(|_| IoBuffer::new(copy_bytes))
                .collect(),
            range_blocks: Vec::with_capacity(limits::OWNER_RANGE_SORT_BLOCKS),
            run_lists: (0..settings.limits.owner_ops)
                .map(|_| Vec::with_capacity(limits::OWNER_RANGE_RUNS_PER_OP))
                .collect(),
            mode: PoolMode::Write,
            deleting: None,
            delete_requested: false,
            closing: None,
            refused: VecDeque::new(),
            finished: false,
            meta,
            shared,
        };
        owner.meta.set_mutations(settings.mutations);
        owner.shared.set_mutations(settings.mutations);
        owner.last_commit_ns = owner.host.now_ns();
        if owner.meta.pool().needs_check {
            owner.mode = PoolMode::ReadOnly;
        }
        let ids: Vec<VolumeId> = owner.meta.volumes().map(|v| v.id).collect();
        for id in ids {
            owner.build_view(id, false);
        }
        owner.publish_counters();
        Ok(owner)
    }

    pub fn metadata(&self) -> &PoolMetadata {
        &self.meta
    }

    pub fn space(&self) -> &SpaceMap {
        &self.space
    }

    /// Takes up to `count` free metadata blocks out of use, in memory only (see
    /// [`PoolMetadata::occupy_metadata_blocks`]): the simulator's way to bring a running
    /// pool's metadata to its reserve. Returns how many.
    #[cfg(feature = "testing")]
    pub fn occupy_metadata_blocks(&mut self, count: u64) -> u64 {
        self.meta.occupy_metadata_blocks(count)
    }

    pub fn mode(&self) -> PoolMode {
        self.mode
    }

    /// Whether `vblock` of `volume` has an operation in progress in the per-block order
    /// table (I6 excepts such blocks; the simulator asks).
    pub fn is_busy(&self, volume: VolumeId, vblock: VirtBlock) -> bool {
        self.busy.contains_key(&(volume, vblock))
    }

    fn vblocks_of(&self, size_bytes: u64) -> u64 {
        size_bytes.div_ceil(u64::from(self.meta.layout().data_block_bytes))
    }

    // ------------------------------------------------------------------ polling

    /// One turn: completions first (they free what waiting work needs), then control,
    /// then requests, then grace periods and commits. Bounded work. Home core only.
    pub fn poll(&mut self) -> PollStatus {
        if self.closing.is_some() {
            return self.poll_closing();
        }
        if self.finished {
            return PollStatus::Idle;
        }
        if self.is_idle() {
            return PollStatus::Idle;
        }
        let mut busy = false;
        self.refresh_channels();
        busy |= self.drain_passdown_completions();
        busy |= self.drain_backlog();
        busy |= self.poll_device();
        busy |= self.retry_unsent();
        if self.commit_stage == CommitStage::Idle {
            busy |= self.run_control();
            busy |= self.run_zeroing();
            busy |= self.run_deferred();
            busy |= self.run_inbox();
        }
        busy |= self.run_grace();
        busy |= self.run_snapshots();
        busy |= self.run_view_builds();
        busy |= self.run_commit_trigger();
        if busy {
            self.publish_counters();
        }
        PollStatus::busy_if(busy)
    }

    /// Whether the owner waits for something only polling notices (a grace period, a commit,
    /// a quiesce): then its reactor must not park.
    pub fn has_waiters(&self) -> bool {
        !self.backlog.is_empty()
            || !self.metadata_backlog.is_empty()
            || !self.refused.is_empty()
            || !self.view_builds.is_empty()
            || self.commit_stage != CommitStage::Idle
            || self.commit_wanted
            || self.space.in_grace_count() > 0
            || !self.snapshots.is_empty()
            || !self.deferred.is_empty()
            || !self.zeroing.is_empty()
            || !self.passdown_done.is_empty()
            || (self.ops_busy()
                && self
                    .ops
                    .iter()
                    .flatten()
                    .any(|op| matches!(op, Op::Range(r) if r.stage == RangeStage::WaitGrace)))
    }

    /// Nothing to do at all: no request, no IO, no waiter, nothing to commit. Checked first on
    /// every poll, so an idle owner costs its core a few loads (it shares the core with the
    /// channels of the fast path).
    fn is_idle(&self) -> bool {
        self.shared.inbox.is_empty()
            && self.control.is_empty()
            && self.data.in_flight() == 0
            && self.metadata_channel.as_ref().is_none_or(|c| c.in_flight() == 0)
            && self.backlog.is_empty()
            && self.metadata_backlog.is_empty()
            && self.passdown_done.is_empty()
            && self.deferred.is_empty()
            && self.zeroing.is_empty()
            && self.unsent.is_empty()
            && self.pending_control.is_empty()
            && !self.ops_busy()
            && self.commit_stage == CommitStage::Idle
            && !self.commit_wanted
            && self.snapshots.is_empty()
            && self.view_builds.is_empty()
            && self.space.in_grace_count() == 0
            && !self.meta.is_dirty()
    }

    /// Whether any op slot is in use: the idle poll skips every scan of the slots.
    fn ops_busy(&self) -> bool {
        self.free_ops.len() < self.ops.len()
    }

    /// Asks for a commit at the next poll (a stopping host commits every pool).
    pub fn request_commit(&mut self) {
        self.commit_wanted = true;
    }

    /// See [`crate::host::DeviceChannel::prepare_park`]: arms the channels' wake-ups.
    pub fn prepare_park(&mut self) -> bool {
        let metadata = self.metadata_channel.as_mut().is_none_or(|c| c.prepare_park());
        metadata && self.data.prepare_park()
    }

    /// IO of the owner's own still in flight (drain before stopping).
    pub fn in_flight(&self) -> usize {
        self.data.in_flight()
    }

    fn refresh_channels(&mut self) {
        let version = self.shared.channels_version();
        if version != self.channels_version {
            self.channels = self.shared.channels_snapshot();
            self.channels_version = version;
        }
    }

    fn publish_counters(&self) {
        let counters = &self.shared.counters;
        counters.used_data_blocks.store(self.meta.used_data_blocks(), Ordering::Relaxed);
        counters.held_data_blocks.store(self.space.held_count(), Ordering::Relaxed);
        counters.transaction_id.store(self.meta.transaction_id(), Ordering::Relaxed);
        counters.metadata_free_blocks.store(self.meta.metadata_free_blocks(), Ordering::Relaxed);
        counters.set_mode(self.mode);
        counters.needs_check.store(self.meta.pool().needs_check, Ordering::Relaxed);
        let free = self.space.data_blocks().saturating_sub(self.meta.used_data_blocks());
        counters
            .low_water_reached
            .store(free <= self.settings.pool.low_water_mark, Ordering::Relaxed);
    }

    fn reply(&mut self, channel: u32, reply: OwnerReply) {
        let target = self.channels.get(channel as usize).and_then(Option::as_ref);
        match target {
            Some(shared) if !shared.closed.load(Ordering::Relaxed) => {
                if let Err(reply) = shared.replies.push(reply) {
                    // The ring holds one reply per credit of the channel (each message holds
                    // one), so this is a bug; keep the reply.
                    debug_assert!(false, "reply ring of channel {channel} full");
                    self.unsent.push_back((channel, reply));
                }
            }
            _ => {
                // The channel was closed or is not yet visible: keep the reply until it is.
                self.unsent.push_back((channel, reply));
            }
        }
    }

    fn retry_unsent(&mut self) -> bool {
        let count = self.unsent.len();
        for _ in 0..count {
            let Some((channel, reply)) = self.unsent.pop_front() else {
                break;
            };
            let closed = self
                .channels
                .get(channel as usize)
                .and_then(Option::as_ref)
                .is_none_or(|s| s.closed.load(Ordering::Relaxed));
            if closed && self.channels_version != u64::MAX {
                continue; // nobody to answer: the channel is gone with its requests
            }
            self.reply(channel, reply);
        }
        count > 0
    }

    fn new_op(&mut self, op: Op) -> Result<usize, Op> {
        match self.free_ops.pop() {
            Some(index) => {
                self.ops[index] = Some(op);
                Ok(index)
            }
            None => Err(op),
        }
    }

    fn free_op(&mut self, index: usize) -> Option<Op> {
        let mut op = self.ops[index].take();
        if let Some(Op::Range(range)) = op.as_mut() {
            let mut runs = std::mem::take(&mut range.runs);
            runs.clear();
            self.run_lists.push(runs);
        }
        if op.is_some() {
            self.free_ops.push(index);
        }
        op
    }

    /// A run list for a new range op: there is one per op slot, so one is always left
    /// while a slot is.
    fn take_run_list(&mut self) -> Vec<PassdownRun> {
        let runs = self.run_lists.pop();
        debug_assert!(runs.is_some(), "a run list per op slot");
        runs.unwrap_or_default()
    }

    // ------------------------------------------------------------------ requests

    fn run_inbox(&mut self) -> bool {
        let mut handled = 0;
        // The deferred queue holds at most an inbox's worth: past it, requests wait in the
        // inbox and then in their channels (back-pressure), so it never grows.
        while handled < limits::OWNER_MESSAGES_PER_POLL_MAX
            && !self.free_ops.is_empty()
            && self.deferred.len() < limits::POOL_INBOX_ENTRIES
        {
            let Some(message) = self.shared.inbox.pop() else {
                break;
            };
            handled += 1;
            if self.deferred.is_empty() {
                if let Err(message) = self.start(message) {
                    self.deferred.push_back(message);
                }
            } else {
                // Keep per-block order: nothing overtakes what already waits.
                self.deferred.push_back(message);
            }
        }
        handled > 0
    }

    fn run_deferred(&mut self) -> bool {
        if self.deferred.is_empty() {
            return false;
        }
        let mut progressed = false;
        self.blocked_scratch.clear();
        let count = self.deferred.len();
        for _ in 0..count {
            let Some(message) = self.deferred.pop_front() else {
                break;
            };
            let (first, end) = self.block_span(&message);
            let behind = self
                .blocked_scratch
                .iter()
                .any(|&(v, s, e)| v == message.volume && s < end && first < e);
            if behind || self.free_ops.is_empty() {
                self.blocked_scratch.push((message.volume, first, end));
                self.deferred.push_back(message);
                continue;
            }
            match self.start(message) {
                Ok(()) => progressed = true,
                Err(message) => {
                    self.blocked_scratch.push((message.volume, first, end));
                    self.deferred.push_back(message);
                }
            }
        }
        progressed
    }

    /// Virtual blocks a message touches, `[first, end)`.
    fn block_span(&self, message: &OwnerMessage) -> (u64, u64) {
        if message.op == OwnerOp::Flush {
            return (0, 0);
        }
        let first = message.request.offset_blocks / self.lbas_per_block;
        let end = (message.request.offset_blocks + message.request.num_blocks)
            .div_ceil(self.lbas_per_block);
        (first, end)
    }

    fn is_span_busy(&self, volume: VolumeId, first: u64, end: u64) -> bool {
        if !self.zeroing.is_empty() && self.is_zeroing(volume, first, end) {
            return true;
        }
        if (end - first) as usize > self.busy.len() {
            self.busy.keys().any(|&(v, b)| v == volume && b.0 >= first && b.0 < end)
        } else {
            (first..end).any(|b| self.busy.contains_key(&(volume, VirtBlock(b))))
        }
    }

    /// Starts `message` or hands it back to wait (its blocks are busy, its volume quiesced,
    /// or no block is free yet).
    fn start(&mut self, message: OwnerMessage) -> Result<(), OwnerMessage> {
        let Some(view) = self.views.get(&message.volume).cloned() else {
            self.fail_message(message, IoStatus::Failed(libc::ENODEV));
            return Ok(());
        };
        match message.op {
            OwnerOp::Flush => {
                let after = self.commits_started;
                let op = Op::Flush(FlushOp {
                    channel: message.channel,
                    token: message.token,
                    request: message.request,
                    after,
                });
                match self.new_op(op) {
                    Ok(_) => {
                        self.commit_wanted = true;
                        Ok(())
                    }
                    Err(Op::Flush(f)) => Err(OwnerMessage {
                        channel: f.channel,
                        volume: message.volume,
                        op: OwnerOp::Flush,
                        request: f.request,
                        token: f.token,
                    }),
                    Err(_) => unreachable!("new_op hands back the op it was given"),
                }
            }
            OwnerOp::Write => {
                if view.is_quiesced() {
                    return Err(message);
                }
                let (first, end) = self.block_span(&message);
                if self.is_span_busy(message.volume, first, end) {
                    return Err(message);
                }
                if self.mode == PoolMode::ReadOnly || self.mode == PoolMode::Fail {
                    self.fail_message(message, IoStatus::Failed(libc::EROFS));
                    return Ok(());
                }
                let vblock = VirtBlock(first);
                let offset_lbas = message.request.offset_blocks - first * self.lbas_per_block;
                let count_lbas = message.request.num_blocks;
                let fua = message.request.flags.contains(IoFlags::FUA);
                let origin = Origin::Channel { channel: message.channel, token: message.token };
                let write = BlockWrite {
                    volume: message.volume,
                    vblock,
                    origin,
                    payload: Payload::Data(message.request),
                    offset_lbas,
                    count_lbas,
                    fua,
                    stage: WriteStage::Writing,
                    target: DataBlock(0),
                    copy_from: None,
                    fresh: false,
                    copy_buffer: None,
                    status: IoStatus::Success,
                    keep_allocated: false,
                };
                match self.start_block_write(write) {
                    Ok(()) => Ok(()),
                    Err(write) => {
                        let Payload::Data(request) = write.payload else {
                            unreachable!("a channel write carries data")
                        };
                        Err(OwnerMessage {
                            channel: message.channel,
                            volume: message.volume,
                            op: OwnerOp::Write,
                            request,
                            token: message.token,
                        })
                    }
                }
            }
            OwnerOp::Unmap | OwnerOp::WriteZeroes => self.start_range(message),
        }
    }

    fn fail_message(&mut self, message: OwnerMessage, status: IoStatus) {
        let reply = OwnerReply { token: message.token, request: message.request, status };
        self.reply(message.channel, reply);
    }

    /// Starts a write inside one block: in place, provisioning or breaking sharing. Hands the
    /// write back when it must wait (no free block yet, no copy buffer, no op slot).
    fn start_block_write(&mut self, mut write: BlockWrite) -> Result<(), BlockWrite> {
        if self.free_ops.is_empty() {
            return Err(write);
        }
        let whole = write.offset_lbas == 0 && write.count_lbas == self.lbas_per_block;
        let mapping = match self.meta.prepare_overwrite(write.volume, write.vblock) {
            Ok(mapping) => mapping,
            Err(e) => {
                let status = self.metadata_failure(e);
                self.finish_write_early(write, status);
                return Ok(());
            }
        };
        // A mapping older than the volume's last snapshot was shared since it was made: IO of
        // the other volume that resolved it may still be in flight (a held read), so it is
        // never overwritten in place even once exclusive. It is copied, and the old block goes
        // through its grace period (I3; dm-thin's shared_read_ds). Found by thin_sim.
        let mut snapshot_time = self.meta.volume(write.volume).map_or(0, |r| r.snapshot_time);
        if self.settings.mutations.is_on(Mutation::InPlaceOnceExclusive) {
            snapshot_time = 0;
        }
        let mapping = mapping.map(|(m, shared)| (m, shared || m.time < snapshot_time));
        // Where the payload goes: in place, or a new block (copying the shared one first when
        // the payload does not cover the whole block).
        let copy_from = match mapping {
            Some((mapping, false)) => {
                write.target = mapping.data_block;
                write.stage = WriteStage::Writing;
                None
            }
            Some((mapping, true)) => (!whole).then_some(mapping.data_block),
            None if matches!(write.payload, Payload::Zeroes) && !write.keep_allocated => {
                // An unmapped block already reads zeroes.
                self.finish_write_early(write, IoStatus::Success);
                return Ok(());
            }
            None => None,
        };
        let in_place = matches!(mapping, Some((_, false)));
        if !in_place {
            if copy_from.is_some() && self.copy_buffers.is_empty() {
                return Err(write);
            }
            write.target = match self.allocate() {
                Allocation::Block(block) => block,
                Allocation::Wait => return Err(write),
                Allocation::Fail(status) => {
                    self.finish_write_early(write, status);
                    return Ok(());
                }
            };
            write.fresh = true;
            write.stage = if let Some(source) = copy_from {
                write.copy_from = Some(source);
                write.copy_buffer = self.copy_buffers.pop();
                WriteStage::Copying { chunk: 0, reading: true }
            } else if (!whole && self.settings.pool.zero_new_blocks)
                || matches!(write.payload, Payload::Zeroes)
            {
                WriteStage::Zeroing
            } else {
                WriteStage::Writing
            };
        }
        let key = (write.volume, write.vblock);
        let stage = write.stage;
        let index = match self.new_op(Op::Write(write)) {
            Ok(index) => index,
            Err(_) => unreachable!("a free op slot was checked above"),
        };
        self.busy.insert(key, index);
        self.issue_write_stage(index, stage);
        Ok(())
    }

    /// Allocates a block (reserved until the mapping is inserted or the write fails), or says
    /// to wait for pending blocks, or to fail (out of space in error mode, or the timeout).
    fn allocate(&mut self) -> Allocation {
        let reuse = self.settings.mutations.is_on(Mutation::ReuseFreedBeforeCommit);
        let result = self.space.allocate(&MetaCounts(&self.meta, reuse));
        match result {
            Ok(block) => {
                self.no_space_since_ns = None;
                if self.mode == PoolMode::OutOfDataSpace {
                    self.mode = PoolMode::Write;
                }
                Allocation::Block(block)
            }
            Err(reason) => {
                let now = self.host.now_ns();
                let since = *self.no_space_since_ns.get_or_insert(now);
                let timeout_ns = u64::from(self.settings.pool.no_space_timeout_s) * 1_000_000_000;
                let timed_out = now.saturating_sub(since) >= timeout_ns;
                let wait = match reason {
                    NoBlock::Pending { uncommitted } => {
                        // Blocks freed in the open transaction come back with a commit.
                        self.commit_wanted |= uncommitted;
                        !timed_out
                    }
                    NoBlock::Exhausted => {
                        self.mode = PoolMode::OutOfDataSpace;
                        self.settings.pool.out_of_space == OutOfSpaceMode::Queue && !timed_out
                    }
                };
                if wait { Allocation::Wait } else { Allocation::Fail(IoStatus::NoSpace) }
            }
        }
    }

    fn metadata_failure(&mut self, error: MetadataError) -> IoStatus {
        if matches!(error, MetadataError::NoMetadataSpace { .. }) {
            self.mode = PoolMode::OutOfMetadataSpace;
            return IoStatus::NoSpace;
        }
        IoStatus::Failed(libc::EIO)
    }

    /// Submits to the data device; a full channel (a commit of thousands of blocks, many
    /// passdown runs) parks the request in the backlog, retried in order on the next polls.
    fn submit(&mut self, request: IoRequest) {
        if self.closing.is_some() {
            return self.refused.push_back(request);
        }
        if !self.backlog.is_empty() {
            self.backlog.push_back(request);
            return;
        }
        if let Err(request) = self.data.submit(request) {
            self.backlog.push_back(request);
        }
    }

    /// Submits metadata IO (commit blocks, superblocks, their flushes) to the metadata
    /// device, which is the data device unless the pool has its own.
    fn submit_metadata(&mut self, request: IoRequest) {
        if self.closing.is_some() {
            return self.refused.push_back(request);
        }
        let Some(channel) = self.metadata_channel.as_mut() else {
            return self.submit(request);
        };
        if !self.metadata_backlog.is_empty() {
            self.metadata_backlog.push_back(request);
            return;
        }
        if let Err(request) = channel.submit(request) {
            self.metadata_backlog.push_back(request);
        }
    }

    fn drain_backlog(&mut self) -> bool {
        let mut moved = false;
        if let Some(channel) = self.metadata_channel.as_mut() {
            while let Some(request) = self.metadata_backlog.pop_front() {
                if let Err(request) = channel.submit(request) {
                    self.metadata_backlog.push_front(request);
                    break;
                }
                moved = true;
            }
        }
        moved | self.drain_data_backlog()
    }

    fn drain_data_backlog(&mut self) -> bool {
        let mut moved = false;
        while let Some(request) = self.backlog.pop_front() {
            if let Err(request) = self.data.submit(request) {
                self.backlog.push_front(request);
                break;
            }
            moved = true;
        }
        moved
    }

    fn issue_write_stage(&mut self, index: usize, stage: WriteStage) {
        let Some(Op::Write(write)) = self.ops[index].as_mut() else {
            return;
        };
        let tag = index as u64;
        let target_lba = self.data_offset_lbas + write.target.0 * self.lbas_per_block;
        let request = match stage {
            WriteStage::Zeroing => {
                IoRequest::new(IoKind::WriteZeroes, target_lba, self.lbas_per_block, tag)
            }
            WriteStage::Copying { chunk, reading } => {
                let buffer = write.copy_buffer.take().expect("a copy holds its buffer");
                // Chunks divide the block: both are powers of two, the chunk at most 1 MiB.
                let chunk_lbas = buffer.len() as u64 / self.lba_bytes;
                let source = write.copy_from.expect("a copy has a source");
                let block_lba = if reading {
                    self.data_offset_lbas + source.0 * self.lbas_per_block
                } else {
                    target_lba
                };
                let kind = if reading { IoKind::Read } else { IoKind::Write };
                IoRequest::new(kind, block_lba + chunk * chunk_lbas, chunk_lbas, tag)
                    .with_buffers(SgList::single(buffer))
            }
            WriteStage::Writing => match &mut write.payload {
                Payload::Data(request) => {
                    let buffers = request.buffers.take();
                    let mut own = IoRequest::new(
                        IoKind::Write,
                        target_lba + write.offset_lbas,
                        write.count_lbas,
                        tag,
                    )
                    .with_buffers(buffers);
                    if write.fua {
                        own.flags = IoFlags::FUA;
                    }
                    own
                }
                Payload::Zeroes => IoRequest::new(
                    IoKind::WriteZeroes,
                    target_lba + write.offset_lbas,
                    write.count_lbas,
                    tag,
                ),
            },
            WriteStage::WaitCommit { .. } => return,
        };
        self.submit(request);
    }

    fn poll_device(&mut self) -> bool {
        let mut completed = std::mem::take(&mut self.completed);
        let data = &mut self.data;
        let mut count = data.poll(&mut |completion| completed.push(completion));
        if let Some(channel) = self.metadata_channel.as_mut()
            && channel.in_flight() > 0
        {
            count += channel.poll(&mut |completion| completed.push(completion));
        }
        for completion in completed.drain(..) {
            self.complete_device(completion);
        }
        self.completed = completed;
        count > 0
    }

    fn complete_device(&mut self, completion: IoCompletion) {
        let tag = completion.request.tag;
        if tag & TAG_COMMIT != 0 {
            self.commit_io_done(completion);
        } else if tag & TAG_PASSDOWN != 0 {
            let index = slot_of(tag);
            let request = &completion.request;
            let run = PassdownRun {
                first: DataBlock(
                    (request.offset_blocks - self.data_offset_lbas) / self.lbas_per_block,
                ),
                count: request.num_blocks / self.lbas_per_block,
            };
            // The completion ring: drained, and the hold dropped, on the next poll.
            self.passdown_done.push_back((index, run, completion.status));
        } else {
            self.write_io_done(slot_of(tag), completion);
        }
    }

    fn write_io_done(&mut self, index: usize, completion: IoCompletion) {
        let IoCompletion { mut request, status } = completion;
        let Some(Op::Write(write)) = self.ops[index].as_mut() else {
            debug_assert!(false, "completion for a free op slot");
            return;
        };
        let stage = write.stage;
        if !status.is_success() {
            write.status = status;
        }
        match stage {
            WriteStage::Zeroing => {
                write.stage = WriteStage::Writing;
                if write.status.is_success() && matches!(write.payload, Payload::Data(_)) {
                    self.issue_write_stage(index, WriteStage::Writing);
                } else {
                    self.finish_block_write(index);
                }
            }
            WriteStage::Copying { chunk, reading } => {
                write.copy_buffer = request.buffers.pop_front();
                if !write.status.is_success() {
                    self.finish_block_write(index);
                    return;
                }
                let chunk_lbas =
                    write.copy_buffer.as_ref().map_or(1, |b| b.len() as u64) / self.lba_bytes;
                let next = if reading {
                    WriteStage::Copying { chunk, reading: false }
                } else if (chunk + 1) * chunk_lbas < self.lbas_per_block {
                    WriteStage::Copying { chunk: chunk + 1, reading: true }
                } else {
                    if let Some(buffer) = write.copy_buffer.take() {
                        self.copy_buffers.push(buffer);
                    }
                    WriteStage::Writing
                };
                if let Some(Op::Write(write)) = self.ops[index].as_mut() {
                    write.stage = next;
                }
                self.issue_write_stage(index, next);
            }
            WriteStage::Writing => {
                if let Payload::Data(original) = &mut write.payload {
                    original.buffers = request.buffers.take();
                }
                self.finish_block_write(index);
            }
            WriteStage::WaitCommit { .. } => {}
        }
    }

    /// The payload is on the device (or failed): insert the mapping and publish it, then
    /// answer (after a commit for FUA). During a commit the metadata may not change, so the
    /// insertion waits for the commit's end.
    fn finish_block_write(&mut self, index: usize) {
        if self.commit_stage != CommitStage::Idle {
            self.finish_after_commit.push(index);
            return;
        }
        let Some(Op::Write(write)) = self.ops[index].as_mut() else {
            return;
        };
        if let Some(buffer) = write.copy_buffer.take() {
            self.copy_buffers.push(buffer);
        }
        let (volume, vblock, target, fresh, status) =
            (write.volume, write.vblock, write.target, write.fresh, write.status);
        let fua = write.fua;
        let mut status = status;
        // A read-only pool takes no write: one whose payload landed while the commit that
        // turned the pool read-only ran is not inserted (its mapping could never commit) and
        // publishes nothing the fast path could write through.
        let read_only = matches!(self.mode, PoolMode::ReadOnly | PoolMode::Fail)
            && !self.settings.mutations.is_on(Mutation::PublishAfterFailedCommit);
        if status.is_success() && read_only {
            status = IoStatus::Failed(libc::EIO);
        }
        if status.is_success() {
            let time = self.meta.time();
            let result = if fresh {
                self.meta.insert(volume, vblock, Mapping { data_block: target, time })
            } else {
                let stale = self.meta.lookup(volume, vblock).is_some_and(|m| {
                    self.meta.volume(volume).is_some_and(|r| m.time < r.snapshot_time)
                });
                if stale {
                    self.meta.refresh_time(volume, vblock, time).map(|()| None)
                } else {
                    Ok(None)
                }
            };
            match result {
                Ok(freed) => {
                    if let Some(view) = self.views.get(&volume) {
                        view.publish(vblock, target, true);
                    }
                    if let Some(freed) = freed {
                        let epoch = self.grace.epoch();
                        self.space.enter_grace(freed, epoch);
                    }
                }
                Err(e) => status = self.metadata_failure(e),
            }
        }
        if fresh {
            self.space.unreserve(target);
        }
        self.busy.remove(&(volume, vblock));
        if let Some(Op::Write(write)) = self.ops[index].as_mut() {
            write.status = status;
            if fua && status.is_success() {
                write.stage = WriteStage::WaitCommit { after: self.commits_started };
                self.commit_wanted = true;
                return;
            }
        }
        self.answer_block_write(index);
    }

    fn answer_block_write(&mut self, index: usize) {
        let Some(Op::Write(write)) = self.free_op(index) else {
            return;
        };
        self.finish_write_early(write, IoStatus::Success);
    }

    /// Answers a block write's origin with the worse of its own status and `status`.
    fn finish_write_early(&mut self, write: BlockWrite, status: IoStatus) {
        let status = if write.status.is_success() { status } else { write.status };
        match write.origin {
            Origin::Channel { channel, token } => {
                let request = match write.payload {
                    Payload::Data(request) => request,
                    Payload::Zeroes => IoRequest::new(IoKind::WriteZeroes, 0, 0, token),
                };
                self.reply(channel, OwnerReply { token, request, status });
            }
            Origin::Range { op } => {
                if let Some(Op::Range(range)) = self.ops[op].as_mut() {
                    range.children -= 1;
                    if !status.is_success() {
                        range.status = status;
                    }
                    if range.children == 0 {
                        self.range_children_done(op);
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------ unmap, write_zeroes

    fn start_range(&mut self, message: OwnerMessage) -> Result<(), OwnerMessage> {
        let Some(view) = self.views.get(&message.volume).cloned() else {
            self.fail_message(message, IoStatus::Failed(libc::ENODEV));
            return Ok(());
        };
        let zeroes = message.op == OwnerOp::WriteZeroes;
        if !zeroes && self.settings.pool.discard == DiscardMode::Ignore {
            self.reply(
                message.channel,
                OwnerReply {
                    token: message.token,
                    request: message.request,
                    status: IoStatus::Success,
                },
            );
            return Ok(());
        }
        if zeroes && view.is_quiesced() {
            return Err(message);
        }
        let (first, end) = self.block_span(&message);
        let ordered = !self.settings.mutations.is_on(Mutation::NoBlockOrder);
        if (ordered && self.is_span_busy(message.volume, first, end)) || self.free_ops.len() < 3 {
            return Err(message);
        }
        if self.mode == PoolMode::ReadOnly || self.mode == PoolMode::Fail {
            let status = if zeroes { IoStatus::Failed(libc::EROFS) } else { IoStatus::Success };
            self.fail_message(message, status);
            return Ok(());
        }
        let request_first = message.request.offset_blocks;
        let request_end = request_first + message.request.num_blocks;
        let whole_first = request_first.div_ceil(self.lbas_per_block);
        let whole_end = (request_end / self.lbas_per_block).max(whole_first);
        let keep_allocated = zeroes && message.request.flags.contains(IoFlags::NO_UNMAP);
        let passdown = self.settings.pool.discard == DiscardMode::Passdown;
        let hold = !self.settings.mutations.is_on(Mutation::NoHold);
        let volume = message.volume;
        let mut runs = self.take_run_list();
        let op = Op::Range(RangeOp {
            channel: message.channel,
            token: message.token,
            request: message.request,
            children: 1, // this function's own reference, dropped at the end
            zeroing: None,
            runs: Vec::new(),
            deallocates_in_flight: 0,
            released_at: 0,
            stage: RangeStage::Children,
            status: IoStatus::Success,
            control: None,
        });
        let index = match self.new_op(op) {
            Ok(index) => index,
            Err(_) => unreachable!("free op slots were checked above"),
        };
        let mut held = std::mem::take(&mut self.range_blocks);
        held.clear();
        if !keep_allocated {
            for vblock in whole_first..whole_end {
                match self.meta.remove(volume, VirtBlock(vblock)) {
                    Ok(Removed::Removed { mapping, now_free }) => {
                        view.unpublish(VirtBlock(vblock));
                        let block = mapping.data_block;
                        if !now_free
                            && passdown
                            && self.settings.mutations.is_on(Mutation::PassdownShared)
                            && !self.space.is_held(block)
                        {
                            self.space.hold(block);
                            held.push(block);
                        }
                        if now_free {
                            if passdown && hold {
                                self.space.hold(mapping.data_block);
                                held.push(mapping.data_block);
                            } else {
                                if passdown {
                                    // Mutation NoHold: passed down, but free meanwhile.
                                    held.push(mapping.data_block);
                                }
                                // Released after the unpublish above: grace from this epoch.
                                let epoch = self.grace.epoch();
                                self.space.enter_grace(mapping.data_block, epoch);
                            }
                        }
                    }
                    Ok(Removed::NotMapped) => {}
                    Err(e) => {
                        let status = self.metadata_failure(e);
                        if let Some(Op::Range(range)) = self.ops[index].as_mut() {
                            range.status = status;
                        }
                        break;
                    }
                }
                if held.len() >= limits::OWNER_RANGE_SORT_BLOCKS {
                    discard::append_runs(&mut held, &mut runs);
                    held.clear();
                }
            }
        }
        discard::append_runs(&mut held, &mut runs);
        discard::coalesce_runs(&mut runs);
        held.clear();
        self.range_blocks = held;
        if let Some(Op::Range(range)) = self.ops[index].as_mut() {
            range.released_at = self.grace.epoch();
            range.runs = runs;
        }
        if zeroes {
            // Edges (or, with NO_UNMAP, every block) are written with zeroes, as many at once
            // as op slots, copy buffers and free blocks allow; the rest wait their turn.
            if let Some(Op::Range(range)) = self.ops[index].as_mut() {
                range.children += 1;
                range.zeroing = Some(ZeroCursor {
                    volume,
                    first_lba: request_first,
                    end_lba: request_end,
                    next_vblock: request_first / self.lbas_per_block,
                    keep_allocated,
                });
            }
            if !self.start_zeroing(index) {
                self.zeroing.push_back(index);
            }
        }
        // Drop this function's own reference.
        if let Some(Op::Range(range)) = self.ops[index].as_mut() {
            range.children -= 1;
            if range.children == 0 {
                self.range_children_done(index);
            }
        }
        Ok(())
    }

    /// Starts the block writes of range `index`'s zeroing cursor while resources allow.
    /// Returns true once the cursor is done (every write started, or the range failed).
    fn start_zeroing(&mut self, index: usize) -> bool {
        let lbas = self.lbas_per_block;
        let writable = !matches!(self.mode, PoolMode::ReadOnly | PoolMode::Fail);
        loop {
            let Some(Op::Range(range)) = self.ops[index].as_mut() else {
                return true;
            };
            let Some(cursor) = range.zeroing else {
                return true;
            };
            let next = cursor.next_write(lbas).filter(|_| writable && range.status.is_success());
            let Some((vblock, offset_lbas, count_lbas)) = next else {
                if !writable && range.status.is_success() {
                    range.status = IoStatus::Failed(libc::EROFS);
                }
                // Drop the cursor's reference.
                range.zeroing = None;
                range.children -= 1;
                if range.children == 0 {
                    self.range_children_done(index);
                }
                return true;
            };
            let fail_when_busy = self.settings.mutations.is_on(Mutation::ZeroingFailsWhenBusy);
            if self.free_ops.is_empty() && !fail_when_busy {
                return false;
            }
            range.children += 1;
            let write = BlockWrite {
                volume: cursor.volume,
                vblock: VirtBlock(vblock),
                origin: Origin::Range { op: index },
                payload: Payload::Zeroes,
                offset_lbas,
                count_lbas,
                fua: false,
                stage: WriteStage::Writing,
                target: DataBlock(0),
                copy_from: None,
                fresh: false,
                copy_buffer: None,
                status: IoStatus::Success,
                keep_allocated: cursor.keep_allocated,
            };
            let started = match self.start_block_write(write) {
                Ok(()) => true,
                Err(write) if fail_when_busy => {
                    self.finish_write_early(write, IoStatus::Failed(libc::EAGAIN));
                    true
                }
                Err(_) => false,
            };
            let Some(Op::Range(range)) = self.ops[index].as_mut() else {
                return true;
            };
            if !started {
                // No op slot, copy buffer or free block yet: wait, holding nothing.
                range.children -= 1;
                return false;
            }
            if let Some(cursor) = range.zeroing.as_mut() {
                cursor.next_vblock = vblock + 1;
            }
        }
    }

    /// Goes on with the zeroing ranges that waited for resources, oldest first.
    fn run_zeroing(&mut self) -> bool {
        let mut progressed = false;
        for _ in 0..self.zeroing.len() {
            if self.free_ops.is_empty() {
                break;
            }
            let Some(index) = self.zeroing.pop_front() else {
                break;
            };
            if self.start_zeroing(index) {
                progressed = true;
            } else {
                self.zeroing.push_back(index);
            }
        }
        progressed
    }

    /// Whether a zeroing range that waits for resources still has blocks of
    /// `[first, end)` of `volume` to write (per-block order: later requests wait behind it).
    fn is_zeroing(&self, volume: VolumeId, first: u64, end: u64) -> bool {
        let lbas = self.lbas_per_block;
        self.zeroing.iter().any(|&index| match &self.ops[index] {
            Some(Op::Range(RangeOp { zeroing: Some(cursor), .. })) => {
                cursor.volume == volume
                    && cursor.next_vblock < end
                    && first < cursor.end_vblock(lbas)
            }
            _ => false,
        })
    }

    fn range_children_done(&mut self, index: usize) {
        let Some(Op::Range(range)) = self.ops[index].as_mut() else {
            return;
        };
        let fua = range.request.flags.contains(IoFlags::FUA)
            && !self.settings.mutations.is_on(Mutation::FuaZeroesBeforeCommit);
        if range.runs.is_empty() && !fua {
            self.answer_range(index);
            return;
        }
        // Step 4: one commit covers every unmap waiting in the batch; with FUA, the commit
        // (and its data flush) makes the zeroes durable before the answer, whether or not
        // anything is passed down.
        range.stage = RangeStage::WaitCommit { after: self.commits_started };
        self.commit_wanted = true;
    }

    fn answer_range(&mut self, index: usize) {
        let Some(Op::Range(range)) = self.free_op(index) else {
            return;
        };
        if let Some(done) = range.control {
            let result = match range.status {
                IoStatus::Success => Ok(()),
                status => Err(PoolError::Io(status.errno())),
            };
            return done(result);
        }
        let reply = OwnerReply { token: range.token, request: range.request, status: range.status };
        self.reply(range.channel, reply);
    }

    /// Blocks freed by a delete or a shrink go through the same pipeline as an unmap
    /// (DESIGN.md): held, committed, passed down after their grace period, then released;
    /// `done` answers at the end. Without passdown they only wait for their grace period,
    /// and `done` answers after the commit.
    fn release_freed(&mut self, mut freed: Vec<DataBlock>, done: ControlDone<()>) {
        let after = self.commits_started;
        self.commit_wanted = true;
        let passdown = self.settings.pool.discard == DiscardMode::Passdown && !freed.is_empty();
        if !passdown || self.free_ops.is_empty() {
            let epoch = self.grace.epoch();
            for block in freed {
                self.space.enter_grace(block, epoch);
            }
            self.control_commits.push((after, done));
            return;
        }
        for &block in &freed {
            self.space.hold(block);
        }
        let mut runs = self.take_run_list();
        discard::append_runs(&mut freed, &mut runs);
        let op = Op::Range(RangeOp {
            channel: u32::MAX,
            token: 0,
            request: IoRequest::new(IoKind::Unmap, 0, 0, 0),
            children: 0,
            zeroing: None,
            runs,
            deallocates_in_flight: 0,
            released_at: self.grace.epoch(),
            stage: RangeStage::WaitCommit { after },
            status: IoStatus::Success,
            control: Some(done),
        });
        if self.new_op(op).is_err() {
            unreachable!("a free op slot was checked above");
        }
    }

    /// Step 5: after the commit and the grace period, issue the deallocates.
    fn issue_passdown(&mut self, index: usize) {
        let (lbas_per_block, data_offset_lbas) = (self.lbas_per_block, self.data_offset_lbas);
        let max_unmap_lbas = self.data_max_unmap_lbas();
        let Some(Op::Range(range)) = self.ops[index].as_mut() else {
            return;
        };
        range.stage = RangeStage::Deallocating;
        let mut runs = std::mem::take(&mut range.runs);
        // Counted before any is issued: a completion finds its count in place.
        let mut pieces = 0u32;
        for run in &runs {
            discard::split_run(*run, lbas_per_block, max_unmap_lbas, &mut |_, _| pieces += 1);
        }
        range.deallocates_in_flight = pieces;
        let holds_dropped = self.settings.mutations.is_on(Mutation::HoldDroppedAtIssue);
        if holds_dropped {
            for run in &runs {
                for block in run.first.0..run.first.0 + run.count {
                    if self.space.is_held(DataBlock(block)) {
                        self.space.release_hold(DataBlock(block));
                    }
                }
            }
        }
        for run in &runs {
            discard::split_run(*run, lbas_per_block, max_unmap_lbas, &mut |first, count| {
                let lba = data_offset_lbas + first * lbas_per_block;
                let tag = TAG_PASSDOWN | index as u64;
                self.submit(IoRequest::new(IoKind::Unmap, lba, count * lbas_per_block, tag));
            });
        }
        if holds_dropped {
            runs.clear();
        }
        match self.ops[index].as_mut() {
            Some(Op::Range(range)) => range.runs = runs,
            _ => self.run_lists.push(runs),
        }
        if pieces == 0 {
            self.answer_range(index);
        }
    }

    fn data_max_unmap_lbas(&self) -> u64 {
        // Devices here take any range; a device limit comes in with DeviceInfo later.
        u64::MAX / 2
    }

    fn release_range_holds(&mut self, index: usize) {
        let Some(Op::Range(range)) = self.ops[index].as_mut() else {
            return;
        };
        for run in range.runs.drain(..) {
            for block in run.first.0..run.first.0 + run.count {
                if self.space.is_held(DataBlock(block)) {
                    self.space.release_hold(DataBlock(block));
                }
            }
        }
    }

    /// Step 6: the owner drains the completion ring and drops the holds; only now are the
    /// blocks free, and only now is the unmap acknowledged.
    fn drain_passdown_completions(&mut self) -> bool {
        if self.passdown_done.is_empty() {
            return false;
        }
        while let Some((index, run, status)) = self.passdown_done.pop_front() {
            for block in run.first.0..run.first.0 + run.count {
                if self.space.is_held(DataBlock(block)) {
                    self.space.release_hold(DataBlock(block));
                }
            }
            let counter = if status.is_success() {
                &self.shared.counters.passdowns_completed
            } else {
                &self.shared.counters.passdowns_failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let done = match self.ops[index].as_mut() {
                Some(Op::Range(range)) => {
                    range.deallocates_in_flight -= 1;
                    range.deallocates_in_flight == 0
                }
                _ => false,
            };
            if done {
                if let Some(Op::Range(range)) = self.ops[index].as_mut() {
                    range.runs.clear();
                }
                self.answer_range(index);
            }
        }
        true
    }

    // ------------------------------------------------------------------ grace, snapshots

    fn run_grace(&mut self) -> bool {
        let no_grace = self.settings.mutations.is_on(Mutation::NoGrace);
        let waiting_ranges = self.ops_busy()
            && self
                .ops
                .iter()
                .any(|op| matches!(op, Some(Op::Range(r)) if r.stage == RangeStage::WaitGrace));
        let waiting =
            waiting_ranges || self.space.in_grace_count() > 0 || !self.snapshots.is_empty();
        if !waiting {
            return false;
        }
        let advanced = self.grace.try_advance();
        let grace = &self.grace;
        let returned = self.space.end_grace(|epoch| no_grace || grace.has_passed(epoch));
        let mut issued = false;
        // Issuing one range's deallocates changes no other range's stage or grace.
        for index in 0..self.ops.len() {
            let ready = matches!(
                &self.ops[index],
                Some(Op::Range(range)) if range.stage == RangeStage::WaitGrace
                    && (no_grace || self.grace.has_passed(range.released_at))
            );
            if ready {
                issued = true;
                self.issue_passdown(index);
            }
        }
        if returned > 0 {
            self.no_space_since_ns = None;
        }
        advanced || returned > 0 || issued
    }

    // ------------------------------------------------------------------ commit

    fn run_commit_trigger(&mut self) -> bool {
        if self.commit_stage != CommitStage::Idle || self.finished || self.deleting.is_some() {
            return false;
        }
        let dirty = self.meta.is_dirty();
        let now = if dirty { self.host.now_ns() } else { self.last_commit_ns };
        let interval_ns = u64::from(self.settings.pool.commit_interval_ms) * 1_000_000;
        let timer = dirty && now.saturating_sub(self.last_commit_ns) >= interval_ns;
        let waiting = self.ops_busy()
            && self.ops.iter().any(|op| match op {
                Some(Op::Flush(_)) => true,
                Some(Op::Write(w)) => matches!(w.stage, WriteStage::WaitCommit { .. }),
                Some(Op::Range(r)) => matches!(r.stage, RangeStage::WaitCommit { .. }),
                None => false,
            })
            || !self.control_commits.is_empty()
            || self.snapshots.front().is_some_and(|s| s.after.is_some());
        if !(timer || waiting || self.commit_wanted) {
            return false;
        }
        let read_only = matches!(self.mode, PoolMode::ReadOnly | PoolMode::Fail);
        if read_only && self.meta.needs_check_unwritten() && !self.flag_write_failed {
            // The pool is read-only after a failed metadata write: say so on the device, so
            // it opens read-only after a restart until a check clears the flag.
            self.write_needs_check(true);
            return true;
        }
        if read_only && self.meta.is_dirty() {
            // Nothing may be written; answer waiters as if committed (reads of committed
            // state go on), flushes included, since nothing new is acknowledged. The timer
            // alone has nothing to answer: acting on it made every poll busy, so the reactor
            // of a read-only pool never parked (found by thin_sim).
            if !(waiting || self.commit_wanted) {
                return false;
            }
            self.commits_started += 1;
            self.commits_done += 1;
            self.commit_wanted = false;
            self.after_commit();
            return true;
        }
        self.commit_wanted = false;
        self.commits_started += 1;
        self.last_commit_ns = now;
        self.commit_failed = false;
        if self.settings.mutations.is_on(Mutation::NoDataFlushBeforeCommit) {
            self.commit_stage = CommitStage::FlushingData;
            self.commit_io_done(IoCompletion {
                request: IoRequest::new(IoKind::Flush, 0, 0, TAG_COMMIT),
                status: IoStatus::Success,
            });
        } else {
            self.commit_stage = CommitStage::FlushingData;
            self.submit(IoRequest::new(IoKind::Flush, 0, 0, TAG_COMMIT));
        }
        true
    }

    fn metadata_lba(&self, block: super::types::MetaBlock) -> u64 {
        block.0 * super::metadata::METADATA_BLOCK_BYTES as u64 / self.metadata_lba_bytes
    }

    fn meta_write(&self, block: super::types::MetaBlock, bytes: &[u8]) -> IoRequest {
        let mut buffer = IoBuffer::new(bytes.len());
        buffer.as_mut_slice().copy_from_slice(bytes);
        let lbas = bytes.len() as u64 / self.metadata_lba_bytes;
        IoRequest::new(IoKind::Write, self.metadata_lba(block), lbas, TAG_COMMIT)
            .with_buffers(SgList::single(buffer))
    }

    fn commit_io_done(&mut self, completion: IoCompletion) {
        let flag = matches!(
            self.commit_stage,
            CommitStage::WritingFlag { .. } | CommitStage::FlushingFlag { .. }
        );
        if !completion.status.is_success() {
            if flag {
                self.flag_write_failed = true;
            } else {
                self.commit_failed = true;
            }
        }
        match self.commit_stage {
            CommitStage::FlushingData => {
                if self.commit_failed {
                    return self.finish_commit();
                }
                if !self.meta.is_dirty() {
                    // Nothing to write: the data flush was the whole commit.
                    return self.finish_commit();
                }
                let plan = self.meta.begin_commit();
                let mut requests: Vec<IoRequest> = plan
                    .blocks
                    .iter()
                    .map(|(block, bytes)| self.meta_write(*block, bytes))
                    .collect();
                if self.settings.mutations.is_on(Mutation::SuperblockWithBlocks) {
                    requests.insert(0, self.meta_write(plan.superblock.0, &plan.superblock.1));
                }
                self.commit_plan = Some(plan);
                if requests.is_empty() {
                    self.commit_stage = CommitStage::FlushingMetadata;
                    self.submit_metadata(IoRequest::new(IoKind::Flush, 0, 0, TAG_COMMIT));
                } else {
                    self.commit_stage = CommitStage::WritingBlocks { in_flight: requests.len() };
                    for request in requests {
                        self.submit_metadata(request);
                    }
                }
            }
            CommitStage::WritingBlocks { in_flight } => {
                if in_flight > 1 {
                    self.commit_stage = CommitStage::WritingBlocks { in_flight: in_flight - 1 };
                    return;
                }
                if self.commit_failed {
                    return self.finish_commit();
                }
                mutations::crash_point("commit_blocks_written");
                self.commit_stage = CommitStage::FlushingMetadata;
                self.submit_metadata(IoRequest::new(IoKind::Flush, 0, 0, TAG_COMMIT));
            }
            CommitStage::FlushingMetadata => {
                if self.commit_failed {
                    return self.finish_commit();
                }
                let Some(plan) = self.commit_plan.as_ref() else {
                    return self.finish_commit();
                };
                mutations::crash_point("commit_before_superblock");
                let request = self.meta_write(plan.superblock.0, &plan.superblock.1);
                self.commit_stage = CommitStage::WritingSuperblock;
                self.submit_metadata(request);
            }
            CommitStage::WritingSuperblock => {
                if self.commit_failed {
                    return self.finish_commit();
                }
                mutations::crash_point("commit_superblock_written");
                self.commit_stage = CommitStage::FlushingSuperblock;
                self.submit_metadata(IoRequest::new(IoKind::Flush, 0, 0, TAG_COMMIT));
            }
            CommitStage::FlushingSuperblock => self.finish_commit(),
            CommitStage::Invalidating { in_flight } => {
                if in_flight > 1 {
                    self.commit_stage = CommitStage::Invalidating { in_flight: in_flight - 1 };
                    return;
                }
                self.commit_stage = CommitStage::FlushingInvalidation;
                self.submit_metadata(IoRequest::new(IoKind::Flush, 0, 0, TAG_COMMIT));
            }
            CommitStage::FlushingInvalidation => {
                // The pool is gone from the device: stop serving for good.
                self.finished = true;
                let failed = self.commit_failed;
                // Whatever still waits for this owner is answered first (it will never run), so
                // the delete's answer comes after every other.
                for op in std::mem::take(&mut self.pending_control) {
                    op.fail(PoolError::Deleted);
                }
                while let Some(op) = self.control.pop() {
                    op.fail(PoolError::Deleted);
                }
                if let Some(done) = self.deleting.take() {
                    done(if failed { Err(PoolError::Io(libc::EIO)) } else { Ok(()) });
                }
            }
            CommitStage::WritingFlag { needs_check }
            | CommitStage::FlushingFlag { needs_check } => {
                self.needs_check_io_done(needs_check);
            }
            CommitStage::Idle => debug_assert!(false, "commit IO while no commit runs"),
        }
    }

    fn finish_commit(&mut self) {
        self.commit_stage = CommitStage::Idle;
        let planned = self.commit_plan.take().is_some();
        if self.commit_failed {
            // DESIGN.md: no deallocate is issued, holds dropped, the transaction aborted,
            // waiting unmaps fail with EIO, the pool turns read-only with needs_check. The
            // abort comes whatever step failed: a failed data flush aborts too, or what was
            // answered as failed (a shrink, a delete) would stay applied until a restart.
            let keep = !planned
                && self.settings.mutations.is_on(Mutation::FailedDataFlushKeepsTransaction);
            if !keep {
                self.meta.abort();
            }
            self.meta.set_needs_check();
            self.mode = PoolMode::ReadOnly;
            self.commit_wanted = true;
            self.abort_waiters();
            self.rebuild_views(!keep);
        } else if planned {
            mutations::crash_point("commit_done");
            self.meta.commit_done();
            self.shared.counters.commits.fetch_add(1, Ordering::Relaxed);
            self.refresh_space_mode();
        }
        self.commits_done = self.commits_started;
        self.after_commit();
        self.finish_writes_held_by_commit();
    }

    /// Block writes whose payload landed while the metadata could not change (a commit or a
    /// needs_check write ran) finish now.
    fn finish_writes_held_by_commit(&mut self) {
        let mut waiting = std::mem::take(&mut self.finish_after_commit);
        for index in waiting.drain(..) {
            self.finish_block_write(index);
        }
        self.finish_after_commit = waiting;
    }

    /// Answers everything that waited for the commit that just ended.
    fn after_commit(&mut self) {
        let done = self.commits_done;
        let failed = self.commit_failed;
        for index in 0..self.ops.len() {
            let ready = match &self.ops[index] {
                Some(Op::Flush(f)) => done > f.after,
                Some(Op::Write(w)) => {
                    matches!(w.stage, WriteStage::WaitCommit { after } if done > after)
                }
                Some(Op::Range(r)) => {
                    matches!(r.stage, RangeStage::WaitCommit { after } if done > after)
                }
                None => false,
            };
            if !ready {
                continue;
            }
            match self.ops[index].as_mut() {
                Some(Op::Flush(_)) => {
                    if let Some(Op::Flush(flush)) = self.free_op(index) {
                        let status =
                            if failed { IoStatus::Failed(libc::EIO) } else { IoStatus::Success };
                        let reply =
                            OwnerReply { token: flush.token, request: flush.request, status };
                        self.reply(flush.channel, reply);
                    }
                }
                Some(Op::Write(write)) => {
                    if failed {
                        write.status = IoStatus::Failed(libc::EIO);
                    }
                    self.answer_block_write(index);
                }
                Some(Op::Range(range)) => {
                    if range.runs.is_empty() {
                        // A FUA write_zeroes or unmap that passes nothing down: durable now.
                        self.answer_range(index);
                    } else {
                        range.stage = RangeStage::WaitGrace;
                    }
                }
                None => {}
            }
        }
        let mut next = 0;
        while next < self.control_commits.len() {
            if done > self.control_commits[next].0 {
                let (_, done_fn) = self.control_commits.remove(next);
                done_fn(if failed { Err(PoolError::ReadOnly) } else { Ok(()) });
            } else {
                next += 1;
            }
        }
    }

    fn abort_waiters(&mut self) {
        for index in 0..self.ops.len() {
            if let Some(Op::Range(range)) = self.ops[index].as_mut()
                && matches!(range.stage, RangeStage::WaitCommit { .. } | RangeStage::WaitGrace)
            {
                range.status = IoStatus::Failed(libc::EIO);
                self.release_range_holds(index);
                self.answer_range(index);
            } else if let Some(Op::Range(range)) = self.ops[index].as_mut()
                && range.stage == RangeStage::Children
            {
                // Its edge writes still run: its held blocks are mapped again by the abort and
                // must never be passed down (found by thin_sim). It answers EIO, runs empty.
                range.status = IoStatus::Failed(libc::EIO);
                self.release_range_holds(index);
            }
        }
    }

    /// True once the pool was deleted: the host drops the owner.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// A stopping host asks: true once nothing is in flight or waiting.
    pub fn is_drained(&self) -> bool {
        self.data.in_flight() == 0
            && self.backlog.is_empty()
            && self.metadata_backlog.is_empty()
            && self.metadata_channel.as_ref().is_none_or(|c| c.in_flight() == 0)
            && self.commit_stage == CommitStage::Idle
            && self.ops.iter().all(Option::is_none)
    }
}
