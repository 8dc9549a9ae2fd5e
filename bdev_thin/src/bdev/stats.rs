//! Per-bdev IO statistics as SPDK's `bdev_get_iostat` reports them. Each channel owns one
//! [`ChannelStats`], written only by its core (relaxed load + store: no locked instruction on
//! the IO path); readers on other cores sum every channel of the bdev, plus what closed channels
//! left behind. Latency "ticks" are nanoseconds (`tick_rate` 10^9).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::host::{IoCompletion, IoKind};

/// One counter group: operations, bytes and latency of one IO kind.
#[derive(Debug, Default)]
struct KindStats {
    ops: AtomicU64,
    bytes: AtomicU64,
    latency_ticks: AtomicU64,
    latency_ticks_max: AtomicU64,
    latency_ticks_min: AtomicU64,
}

#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
}

impl KindStats {
    #[inline]
    fn record(&self, bytes: u64, latency: u64) {
        bump(&self.ops, 1);
        bump(&self.bytes, bytes);
        bump(&self.latency_ticks, latency);
        if latency > self.latency_ticks_max.load(Ordering::Relaxed) {
            self.latency_ticks_max.store(latency, Ordering::Relaxed);
        }
        let min = self.latency_ticks_min.load(Ordering::Relaxed);
        if min == 0 || latency < min {
            self.latency_ticks_min.store(latency, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> KindSnapshot {
        KindSnapshot {
            ops: self.ops.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            latency_ticks: self.latency_ticks.load(Ordering::Relaxed),
            latency_ticks_max: self.latency_ticks_max.load(Ordering::Relaxed),
            latency_ticks_min: self.latency_ticks_min.load(Ordering::Relaxed),
        }
    }
}

/// The counters of one channel.
#[derive(Debug, Default)]
pub struct ChannelStats {
    read: KindStats,
    write: KindStats,
    unmap: KindStats,
    /// Failed IOs (SPDK's `failed` status; we have no other failure kinds).
    failed: AtomicU64,
}

impl ChannelStats {
    /// Counts a completed IO. Called by the channel's core only.
    #[inline]
    pub fn record(&self, completion: &IoCompletion, block_size_bytes: u64, now_ns: u64) {
        let request = &completion.request;
        if !completion.status.is_success() {
            bump(&self.failed, 1);
            return;
        }
        let latency = now_ns.saturating_sub(request.submitted_at_ns);
        let bytes = request.num_blocks * block_size_bytes;
        match request.kind {
            IoKind::Read => self.read.record(bytes, latency),
            IoKind::Write => self.write.record(bytes, latency),
            IoKind::Unmap => self.unmap.record(bytes, latency),
            _ => {}
        }
    }
}

/// A point-in-time sum over a bdev's channels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindSnapshot {
    pub ops: u64,
    pub bytes: u64,
    pub latency_ticks: u64,
    pub latency_ticks_max: u64,
    pub latency_ticks_min: u64,
}

impl KindSnapshot {
    fn add(&mut self, other: &KindSnapshot) {
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.latency_ticks += other.latency_ticks;
        self.latency_ticks_max = self.latency_ticks_max.max(other.latency_ticks_max);
        if other.latency_ticks_min != 0
            && (self.latency_ticks_min == 0 || other.latency_ticks_min < self.latency_ticks_min)
        {
            self.latency_ticks_min = other.latency_ticks_min;
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoStatSnapshot {
    pub read: KindSnapshot,
    pub write: KindSnapshot,
    pub unmap: KindSnapshot,
    /// Failed IOs (`io_error.failed`).
    pub failed: u64,
}

impl IoStatSnapshot {
    fn add_channel(&mut self, channel: &ChannelStats) {
        self.read.add(&channel.read.snapshot());
        self.write.add(&channel.write.snapshot());
        self.unmap.add(&channel.unmap.snapshot());
        self.failed += channel.failed.load(Ordering::Relaxed);
    }
}

/// Every channel's counters of one bdev, plus what closed channels counted. The mutex guards the
/// list (channel open/close and readers), never a counter update.
#[derive(Default)]
pub(crate) struct BdevStats {
    inner: Mutex<BdevStatsInner>,
}

#[derive(Default)]
struct BdevStatsInner {
    open: Vec<Arc<ChannelStats>>,
    retired: IoStatSnapshot,
}

impl BdevStats {
    fn inner(&self) -> std::sync::MutexGuard<'_, BdevStatsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn new_channel(&self) -> Arc<ChannelStats> {
        let stats = Arc::new(ChannelStats::default());
        self.inner().open.push(Arc::clone(&stats));
        stats
    }

    /// Folds a closing channel's counts into the bdev's totals.
    pub(crate) fn retire(&self, channel: &Arc<ChannelStats>) {
        let mut inner = self.inner();
        inner.retired.add_channel(channel);
        inner.open.retain(|c| !Arc::ptr_eq(c, channel));
    }

    pub(crate) fn snapshot(&self) -> IoStatSnapshot {
        let inner = self.inner();
        let mut total = inner.retired.clone();
        for channel in &inner.open {
            total.add_channel(channel);
        }
        total
    }

    /// Forgets every count (`reset_mode: all`). Counters are single-writer, so a bump racing
    /// the reset may survive it, which a statistics reset tolerates.
    pub(crate) fn reset(&self) {
        let mut inner = self.inner();
        inner.retired = IoStatSnapshot::default();
        for channel in &inner.open {
            for kind in [&channel.read, &channel.write, &channel.unmap] {
                for counter in [
                    &kind.ops,
                    &kind.bytes,
                    &kind.latency_ticks,
                    &kind.latency_ticks_max,
                    &kind.latency_ticks_min,
                ] {
                    counter.store(0, Ordering::Relaxed);
                }
            }
            channel.failed.store(0, Ordering::Relaxed);
        }
    }
}
