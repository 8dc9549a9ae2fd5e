//! The bdev layer: named devices with aliases and UUIDs, per-core channels that count what passes
//! through them, claims (a pool on its base bdev) and opens (a frontend using a bdev).
//!
//! The registry is control-plane state behind a mutex: RPC, config loading and channel set-up
//! touch it, the IO path never does. A channel belongs to one core and to one opener (a perf job,
//! an NBD connection, a pool owner): its statistics are written only by that core with relaxed
//! stores and summed by `bdev_get_iostat` from any thread.

pub mod pools;
pub mod stats;
pub mod thin;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use crate::backend::{BaseChannel, BaseDevice};
use crate::host::{
    BlockDevice, DeviceChannel, DeviceError, DeviceInfo, IoCompletion, IoKind, IoRequest, IoStatus,
};
pub use stats::{ChannelStats, IoStatSnapshot};

/// The device behind a bdev.
#[derive(Clone)]
pub enum Device {
    Base(BaseDevice),
    Thin(thin::ThinVolumeDevice),
}

impl Device {
    pub fn info(&self) -> DeviceInfo {
        match self {
            Device::Base(d) => d.info(),
            Device::Thin(d) => d.info(),
        }
    }

    pub fn supports(&self, kind: IoKind) -> bool {
        match self {
            Device::Base(d) => d.supports(kind),
            Device::Thin(d) => d.supports(kind),
        }
    }

    /// The IO size the device serves best, in bytes: what exports advertise as preferred (NBD's
    /// preferred block size). Base devices: a page or their block size if larger; a thin
    /// volume: its pool's data block size.
    pub fn preferred_io_bytes(&self) -> u32 {
        match self {
            Device::Base(d) => d.info().block_size_bytes.max(4096),
            Device::Thin(d) => d.pool.layout.data_block_bytes,
        }
    }

    /// Preferred IO sizes, as SPDK's bdev fields (`optimal_write_size`, `preferred_unmap_*`)
    /// and NVMe's NPWG/NPWA/NPDG/NPDA/NOWS say them: a thin volume prefers whole data blocks
    /// (a partial write to a new block zeroes the rest; a partial deallocate frees nothing).
    /// Base devices state no preference.
    pub fn io_hints(&self) -> IoHints {
        match self {
            Device::Base(_) => IoHints::default(),
            Device::Thin(d) => {
                let lba_bytes = d.info().block_size_bytes.max(1);
                let blocks = (d.pool.layout.data_block_bytes / lba_bytes).max(1);
                IoHints {
                    write_granularity_blocks: blocks,
                    write_alignment_blocks: blocks,
                    optimal_write_blocks: blocks,
                    unmap_granularity_blocks: blocks,
                    unmap_alignment_blocks: blocks,
                }
            }
        }
    }

    pub fn product_name(&self) -> &'static str {
        match self {
            Device::Base(d) => d.product_name(),
            Device::Thin(_) => "Thin volume",
        }
    }

    fn open_channel(&self) -> Result<AnyChannel, DeviceError> {
        Ok(match self {
            Device::Base(d) => AnyChannel::Base(d.open_channel()?),
            Device::Thin(d) => AnyChannel::Thin(Box::new(d.open_channel()?)),
        })
    }
}

/// Preferred IO sizes of a device, in blocks; 0 where it states none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoHints {
    pub write_granularity_blocks: u32,
    pub write_alignment_blocks: u32,
    pub optimal_write_blocks: u32,
    pub unmap_granularity_blocks: u32,
    pub unmap_alignment_blocks: u32,
}

/// A channel of any device kind (static dispatch).
pub enum AnyChannel {
    Base(BaseChannel),
    /// Boxed: a volume channel is large and built once per core.
    Thin(Box<thin::VolumeChannelOf>),
}

impl DeviceChannel for AnyChannel {
    #[inline]
    fn submit(&mut self, request: IoRequest) -> Result<(), IoRequest> {
        match self {
            AnyChannel::Base(c) => c.submit(request),
            AnyChannel::Thin(c) => c.submit(request),
        }
    }

    #[inline]
    fn poll(&mut self, complete: &mut impl FnMut(IoCompletion)) -> usize {
        match self {
            AnyChannel::Base(c) => c.poll(complete),
            AnyChannel::Thin(c) => c.poll(complete),
        }
    }

    fn in_flight(&self) -> usize {
        match self {
            AnyChannel::Base(c) => c.in_flight(),
            AnyChannel::Thin(c) => c.in_flight(),
        }
    }

    fn prepare_park(&mut self) -> bool {
        match self {
            AnyChannel::Base(c) => c.prepare_park(),
            AnyChannel::Thin(c) => c.prepare_park(),
        }
    }
}

/// Who holds a bdev as its base (SPDK's claim): the bdev then serves only that module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub module: String,
    /// SPDK's claim type name (`exclusive_write`).
    pub claim_type: &'static str,
}

/// A registered block device.
pub struct Bdev {
    name: String,
    aliases: Mutex<Vec<String>>,
    uuid: Uuid,
    device: Device,
    claim: Mutex<Option<Claim>>,
    open_count: AtomicU32,
    stats: Arc<stats::BdevStats>,
}

impl Bdev {
    pub fn new(name: String, uuid: Uuid, device: Device) -> Arc<Bdev> {
        Arc::new(Bdev {
            name,
            aliases: Mutex::new(Vec::new()),
            uuid,
            device,
            claim: Mutex::new(None),
            open_count: AtomicU32::new(0),
            stats: Arc::new(stats::BdevStats::default()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    pub fn aliases(&self) -> Vec<String> {
        lock(&self.aliases).clone()
    }

    pub fn add_alias(&self, alias: String) {
        lock(&self.aliases).push(alias);
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn info(&self) -> DeviceInfo {
        self.device.info()
    }

    pub fn claim(&self) -> Option<Claim> {
        lock(&self.claim).clone()
    }

    /// Claims the bdev for `module`; fails if another module holds it or a frontend has it open.
    pub fn try_claim(&self, module: &str) -> Result<(), BdevError> {
        let mut claim = lock(&self.claim);
        if let Some(existing) = claim.as_ref() {
            return Err(BdevError::Claimed {
                name: self.name.clone(),
                module: existing.module.clone(),
            });
        }
        if self.open_count.load(Ordering::SeqCst) > 0 {
            return Err(BdevError::Busy { name: self.name.clone() });
        }
        *claim = Some(Claim { module: module.to_string(), claim_type: "exclusive_write" });
        Ok(())
    }

    pub fn release_claim(&self) {
        *lock(&self.claim) = None;
    }

    /// Whether `name` is this bdev's name, one of its aliases or its UUID.
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name
            || lock(&self.aliases).iter().any(|a| a == name)
            || Uuid::parse_str(name).is_ok_and(|u| u == self.uuid)
    }

    /// Opens the bdev for a frontend; the bdev cannot be deleted or claimed while open.
    pub fn open(self: &Arc<Self>) -> Result<BdevDescriptor, BdevError> {
        if let Some(claim) = self.claim() {
            return Err(BdevError::Claimed { name: self.name.clone(), module: claim.module });
        }
        self.open_count.fetch_add(1, Ordering::SeqCst);
        Ok(BdevDescriptor { bdev: Arc::clone(self) })
    }

    pub fn open_count(&self) -> u32 {
        self.open_count.load(Ordering::SeqCst)
    }

    /// Opens a channel for the calling core, counted in this bdev's statistics. Modules that
    /// claimed the bdev (a pool) use this too.
    pub fn open_channel(&self) -> Result<BdevChannel, DeviceError> {
        let info = self.device.info();
        let supported = IoKind::ALL.map(|kind| self.device.supports(kind));
        Ok(BdevChannel {
            channel: self.device.open_channel()?,
            stats: self.stats.new_channel(),
            stats_owner: Arc::clone(&self.stats),
            block_size_bytes: u64::from(info.block_size_bytes),
            supported,
            refused: std::collections::VecDeque::with_capacity(
                crate::limits::DEVICE_CHANNEL_DEPTH_MAX,
            ),
        })
    }

    pub fn iostat(&self) -> IoStatSnapshot {
        self.stats.snapshot()
    }

    pub fn reset_iostat(&self) {
        self.stats.reset();
    }
}

/// A frontend's hold on a bdev; dropping it closes.
pub struct BdevDescriptor {
    bdev: Arc<Bdev>,
}

impl BdevDescriptor {
    pub fn bdev(&self) -> &Arc<Bdev> {
        &self.bdev
    }
}

impl Drop for BdevDescriptor {
    fn drop(&mut self) {
        self.bdev.open_count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A per-core channel of a bdev: the device's channel plus statistics and IO-type checks.
pub struct BdevChannel {
    channel: AnyChannel,
    stats: Arc<ChannelStats>,
    stats_owner: Arc<stats::BdevStats>,
    block_size_bytes: u64,
    supported: [bool; 6],
    /// IOs of a kind the device does not serve, completed with ENOTSUP at the next poll.
    refused: std::collections::VecDeque<IoCompletion>,
}

impl Drop for BdevChannel {
    fn drop(&mut self) {
        self.stats_owner.retire(&self.stats);
    }
}

fn kind_index(kind: IoKind) -> usize {
    IoKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

impl DeviceChannel for BdevChannel {
    #[inline]
    fn submit(&mut self, mut request: IoRequest) -> Result<(), IoRequest> {
        request.submitted_at_ns = crate::runtime::now_ns();
        if !self.supported[kind_index(request.kind)] {
            if self.refused.len() >= crate::limits::DEVICE_CHANNEL_DEPTH_MAX {
                return Err(request);
            }
            self.refused
                .push_back(IoCompletion { request, status: IoStatus::Failed(libc::ENOTSUP) });
            return Ok(());
        }
        self.channel.submit(request)
    }

    #[inline]
    fn poll(&mut self, complete: &mut impl FnMut(IoCompletion)) -> usize {
        let stats = &self.stats;
        let block_size = self.block_size_bytes;
        let mut count = 0;
        while let Some(completion) = self.refused.pop_front() {
            stats.record(&completion, block_size, crate::runtime::now_ns());
            complete(completion);
            count += 1;
        }
        if self.channel.in_flight() == 0 {
            return count;
        }
        let now = crate::runtime::now_ns();
        count
            + self.channel.poll(&mut |completion: IoCompletion| {
                stats.record(&completion, block_size, now);
                complete(completion)
            })
    }

    fn in_flight(&self) -> usize {
        self.channel.in_flight() + self.refused.len()
    }

    fn prepare_park(&mut self) -> bool {
        self.refused.is_empty() && self.channel.prepare_park()
    }
}

/// Errors of the registry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BdevError {
    #[error("bdev {0} already exists")]
    Exists(String),
    #[error("bdev {0} not found")]
    NotFound(String),
    #[error("bdev {name} is claimed by {module}")]
    Claimed { name: String, module: String },
    #[error("bdev {name} is open")]
    Busy { name: String },
}

impl BdevError {
    pub fn errno(&self) -> i32 {
        match self {
            BdevError::Exists(_) => libc::EEXIST,
            BdevError::NotFound(_) => libc::ENODEV,
            BdevError::Claimed { .. } | BdevError::Busy { .. } => libc::EBUSY,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a control-plane lock leaves plain data behind; keep serving.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every bdev, in registration order.
#[derive(Default)]
pub struct BdevRegistry {
    bdevs: Mutex<Vec<Arc<Bdev>>>,
}

impl BdevRegistry {
    pub fn new() -> Arc<BdevRegistry> {
        Arc::new(BdevRegistry::default())
    }

    /// Registers `bdev`; its name, aliases and UUID must all be new.
    pub fn register(&self, bdev: Arc<Bdev>) -> Result<(), BdevError> {
        let mut bdevs = lock(&self.bdevs);
        let mut names = vec![bdev.name.clone(), bdev.uuid.to_string()];
        names.extend(bdev.aliases());
        for name in &names {
            if bdevs.iter().any(|b| b.answers_to(name)) {
                return Err(BdevError::Exists(name.clone()));
            }
        }
        bdevs.push(bdev);
        Ok(())
    }

    /// Finds a bdev by name, alias or UUID.
    pub fn get(&self, name: &str) -> Result<Arc<Bdev>, BdevError> {
        lock(&self.bdevs)
            .iter()
            .find(|b| b.answers_to(name))
            .cloned()
            .ok_or_else(|| BdevError::NotFound(name.to_string()))
    }

    pub fn all(&self) -> Vec<Arc<Bdev>> {
        lock(&self.bdevs).clone()
    }

    /// Removes a bdev that nobody claims or holds open.
    pub fn unregister(&self, name: &str) -> Result<Arc<Bdev>, BdevError> {
        let mut bdevs = lock(&self.bdevs);
        let index = bdevs
            .iter()
            .position(|b| b.answers_to(name))
            .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        let bdev = &bdevs[index];
        if let Some(claim) = bdev.claim() {
            return Err(BdevError::Claimed { name: bdev.name.clone(), module: claim.module });
        }
        if bdev.open_count() > 0 {
            return Err(BdevError::Busy { name: bdev.name.clone() });
        }
        Ok(bdevs.remove(index))
    }

    /// Removes a bdev whose device went away, whoever claims or holds it open: its IO fails
    /// from now on, and those who hold it let go when they close it.
    pub fn remove_gone(&self, name: &str) -> Option<Arc<Bdev>> {
        let mut bdevs = lock(&self.bdevs);
        let index = bdevs.iter().position(|b| b.answers_to(name))?;
        Some(bdevs.remove(index))
    }

    /// Removes a bdev that `module` claimed in order to delete it (a thin volume while its
    /// pool deletes it): nobody could open it meanwhile, and a refused delete leaves it.
    pub fn unregister_claimed(&self, name: &str, module: &str) -> Result<Arc<Bdev>, BdevError> {
        let mut bdevs = lock(&self.bdevs);
        let index = bdevs
            .iter()
            .position(|b| b.answers_to(name))
            .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        let bdev = &bdevs[index];
        match bdev.claim() {
            Some(claim) if claim.module == module => {}
            Some(claim) => {
                return Err(BdevError::Claimed { name: bdev.name.clone(), module: claim.module });
            }
            None => return Err(BdevError::NotFound(name.to_string())),
        }
        if bdev.open_count() > 0 {
            return Err(BdevError::Busy { name: bdev.name.clone() });
        }
        Ok(bdevs.remove(index))
    }

    /// Leaf bdevs (unclaimed), as bdevperf picks its targets.
    pub fn leaves(&self) -> Vec<Arc<Bdev>> {
        lock(&self.bdevs).iter().filter(|b| b.claim().is_none()).cloned().collect()
    }

    /// A fresh name `prefix<N>` (Malloc0, Malloc1, ...).
    pub fn next_name(&self, prefix: &str) -> String {
        let bdevs = lock(&self.bdevs);
        (0..)
            .map(|n| format!("{prefix}{n}"))
            .find(|name| !bdevs.iter().any(|b| b.answers_to(name)))
            .expect("an unused name exists")
    }
}
