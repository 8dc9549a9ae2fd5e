//! What a pool's owner and its channels share: the rings between them, the epoch clock, the
//! published views and the counters `bdev_thin_get_pools` reads. Created with the pool on the
//! control plane; afterwards the owner is the only writer of everything but the rings and the
//! channels' own epoch counters.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::grace::{EpochClock, EpochCounters};
use super::mutations::Mutations;
use super::types::{PoolMode, VolumeId};
use super::view::VolumeView;
use crate::host::{IoRequest, IoStatus, MessageRing, Waker};
use crate::limits;

/// Bounds of one pool that a test may lower, so that small simulated volumes reach every one
/// of them quickly. Production pools use [`PoolLimits::PRODUCTION`] (`limits.rs` gives each
/// value its reason); the owner takes them in its settings, each channel at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    /// Owner operations in progress at once (`OWNER_OPS_MAX`).
    pub owner_ops: usize,
    /// Requests one volume channel keeps in flight (`THIN_CHANNEL_DEPTH_MAX`).
    pub channel_depth: usize,
    /// Pieces one volume channel keeps in flight, its credits
    /// (`THIN_CHANNEL_PIECES_IN_FLIGHT_MAX`).
    pub channel_credits: usize,
    /// Virtual blocks of a new snapshot's view filled per owner poll
    /// (`VIEW_BUILD_BLOCKS_PER_POLL`).
    pub view_fill_blocks_per_poll: u64,
    /// Copy buffers of the owner for breaking sharing (`OWNER_COPY_BUFFERS`).
    pub copy_buffers: usize,
    /// Chunk slots the views of all the pool's volumes may take (`POOL_VIEW_CHUNKS_MAX`).
    pub view_chunks: u64,
}

impl PoolLimits {
    pub const PRODUCTION: PoolLimits = PoolLimits {
        owner_ops: limits::OWNER_OPS_MAX,
        channel_depth: limits::THIN_CHANNEL_DEPTH_MAX,
        channel_credits: limits::THIN_CHANNEL_PIECES_IN_FLIGHT_MAX,
        view_fill_blocks_per_poll: limits::VIEW_BUILD_BLOCKS_PER_POLL,
        copy_buffers: limits::OWNER_COPY_BUFFERS,
        view_chunks: limits::POOL_VIEW_CHUNKS_MAX,
    };

    /// These limits with twice as many credits as requests in flight (at most the production
    /// credits), so requests that split into more pieces reach the credit bound too.
    pub fn with_credits_for_depth(self) -> PoolLimits {
        let credits = self.channel_depth.saturating_mul(2);
        PoolLimits {
            channel_credits: credits.min(limits::THIN_CHANNEL_PIECES_IN_FLIGHT_MAX),
            ..self
        }
    }

    /// Fewest owner op slots that still make progress: a range op needs three free slots (its
    /// own and one per partial edge).
    pub const OWNER_OPS_MIN: usize = 3;

    /// Whether every value lies within what the code is built for (the production values are
    /// the maxima).
    pub fn is_valid(&self) -> bool {
        (Self::OWNER_OPS_MIN..=limits::OWNER_OPS_MAX).contains(&self.owner_ops)
            && (1..=limits::THIN_CHANNEL_DEPTH_MAX).contains(&self.channel_depth)
            && (1..=limits::THIN_CHANNEL_PIECES_IN_FLIGHT_MAX).contains(&self.channel_credits)
            && self.view_fill_blocks_per_poll > 0
            && (1..=limits::OWNER_COPY_BUFFERS).contains(&self.copy_buffers)
            && (1..=limits::POOL_VIEW_CHUNKS_MAX).contains(&self.view_chunks)
    }
}

impl Default for PoolLimits {
    fn default() -> PoolLimits {
        PoolLimits::PRODUCTION
    }
}

/// What a channel asks the owner to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerOp {
    /// A write inside one data block that the fast path could not do (unmapped, maybe shared,
    /// quiesced, or FUA).
    Write,
    /// Unmap the whole blocks of the range (advisory).
    Unmap,
    /// Zero the range (whole blocks unmapped, edges written).
    WriteZeroes,
    /// Make everything acknowledged so far durable.
    Flush,
}

/// A request from a channel to the owner. Offsets are in the volume's LBAs.
#[derive(Debug)]
pub struct OwnerMessage {
    pub channel: u32,
    pub volume: VolumeId,
    pub op: OwnerOp,
    pub request: IoRequest,
    /// The channel's cookie, returned in the reply.
    pub token: u64,
}

/// The owner's answer, on the channel's reply ring.
#[derive(Debug)]
pub struct OwnerReply {
    pub token: u64,
    pub request: IoRequest,
    pub status: IoStatus,
}

/// A channel's side of the rings: what the owner needs to answer it and to count its IO.
pub struct ChannelShared<W: Waker> {
    pub replies: MessageRing<OwnerReply, W>,
    pub epochs: Arc<EpochCounters>,
    pub closed: AtomicBool,
}

/// Counters the owner publishes for `bdev_thin_get_pools` and tests.
#[derive(Debug, Default)]
pub struct PoolCounters {
    pub used_data_blocks: AtomicU64,
    pub held_data_blocks: AtomicU64,
    pub passdowns_completed: AtomicU64,
    pub passdowns_failed: AtomicU64,
    pub commits: AtomicU64,
    pub transaction_id: AtomicU64,
    pub mode: AtomicU8,
    pub needs_check: AtomicBool,
    pub low_water_reached: AtomicBool,
    pub metadata_free_blocks: AtomicU64,
}

impl PoolCounters {
    pub fn mode(&self) -> PoolMode {
        match self.mode.load(Ordering::Relaxed) {
            1 => PoolMode::OutOfDataSpace,
            2 => PoolMode::OutOfMetadataSpace,
            3 => PoolMode::ReadOnly,
            4 => PoolMode::Fail,
            _ => PoolMode::Write,
        }
    }

    pub fn set_mode(&self, mode: PoolMode) {
        let code = match mode {
            PoolMode::Write => 0,
            PoolMode::OutOfDataSpace => 1,
            PoolMode::OutOfMetadataSpace => 2,
            PoolMode::ReadOnly => 3,
            PoolMode::Fail => 4,
        };
        self.mode.store(code, Ordering::Relaxed);
    }
}

/// The shared state of one pool.
pub struct PoolShared<W: Waker> {
    pub inbox: MessageRing<OwnerMessage, W>,
    pub epochs: Arc<EpochClock>,
    pub counters: PoolCounters,
    channels: Mutex<Vec<Option<Arc<ChannelShared<W>>>>>,
    channels_version: AtomicU64,
    views: Mutex<Vec<Arc<VolumeView>>>,
    pub home_waker: W,
    /// The pool's mutations, set by its owner, read by channels when they open.
    mutations: OnceLock<Mutations>,
}

impl<W: Waker> PoolShared<W> {
    pub fn new(home_waker: W) -> Arc<PoolShared<W>> {
        Arc::new(PoolShared {
            inbox: MessageRing::new(limits::POOL_INBOX_ENTRIES, home_waker.clone()),
            epochs: Arc::new(EpochClock::new()),
            counters: PoolCounters::default(),
            channels: Mutex::new(Vec::new()),
            channels_version: AtomicU64::new(0),
            views: Mutex::new(Vec::new()),
            home_waker,
            mutations: OnceLock::new(),
        })
    }

    /// Owner: the pool's mutations, for its channels (set once).
    pub(crate) fn set_mutations(&self, mutations: Mutations) {
        let _ = self.mutations.set(mutations);
    }

    pub(crate) fn mutations(&self) -> Mutations {
        self.mutations.get().copied().unwrap_or(Mutations::NONE)
    }

    /// Registers a channel created on `waker`'s core that keeps up to `credits` pieces in
    /// flight; returns its index and shared side.
    pub fn register_channel(&self, waker: W, credits: usize) -> (u32, Arc<ChannelShared<W>>) {
        let shared = Arc::new(ChannelShared {
            // One reply per credit: the owner can always answer.
            replies: MessageRing::new(credits, waker),
            epochs: self.epochs.register(),
            closed: AtomicBool::new(false),
        });
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let index = match channels.iter().position(Option::is_none) {
            Some(index) => {
                channels[index] = Some(Arc::clone(&shared));
                index
            }
            None => {
                channels.push(Some(Arc::clone(&shared)));
                channels.len() - 1
            }
        };
        self.channels_version.fetch_add(1, Ordering::SeqCst);
        // Fits: channels are bounded by cores × volumes, far below u32::MAX.
        (index as u32, shared)
    }

    /// Removes a channel with nothing in flight.
    pub fn unregister_channel(&self, index: u32) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = channels.get_mut(index as usize)
            && let Some(shared) = slot.take()
        {
            shared.closed.store(true, Ordering::SeqCst);
            self.epochs.unregister(&shared.epochs);
        }
        self.channels_version.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn channels_version(&self) -> u64 {
        self.channels_version.load(Ordering::SeqCst)
    }

    pub(crate) fn channels_snapshot(&self) -> Vec<Option<Arc<ChannelShared<W>>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The view of `volume`, if it exists (channel creation; control plane).
    pub fn view(&self, volume: VolumeId) -> Option<Arc<VolumeView>> {
        let views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views.iter().find(|v| v.id() == volume).cloned()
    }

    pub(crate) fn publish_view(&self, view: Arc<VolumeView>) {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views.retain(|v| v.id() != view.id());
        views.push(view);
    }

    pub(crate) fn retire_view(&self, volume: VolumeId) {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views.retain(|v| v.id() != volume);
    }
}
