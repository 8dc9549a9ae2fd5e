//! The thin pools a target hosts, and their lifecycle on the bdev layer: create (format a pool
//! on a base bdev and claim it), examine (find a pool on a bdev that appeared, pairing a
//! separate metadata bdev with its data bdev by UUID), start (the owner on the pool's home core,
//! a first durable commit, every volume registered as a bdev), delete; and volumes as bdevs
//! (create, snapshot, delete, each registered or unregistered once its pool's owner answered).
//!
//! Control plane: RPC methods and config loading call in from any thread, reactors included,
//! and nothing here waits for an owner. Answers come by callback, from the pool's home core once
//! the owner's work (and the commit that makes it durable) is done. RPC methods only decode
//! what they are asked, call here and encode what comes back.

mod gone;

use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use super::thin::{ControlRing, OwnerPoller, ThinPool, ThinVolumeDevice, owner_settings};
use super::{Bdev, BdevError, BdevRegistry, Device};
use crate::backend::BaseDevice;
use crate::host::{BlockDevice, DeviceError, Host};
use crate::names::log_line;
use crate::runtime::RuntimeHandle;
use crate::thin::channel::ChannelGeometry;
use crate::thin::metadata::{
    CheckReport, Layout, METADATA_BLOCK_BYTES, MetadataError, PoolMetadata, PoolRecord,
};
use crate::thin::owner::{ControlOp, Owner, PoolDescription, PoolError};
use crate::thin::pool::PoolShared;
use crate::thin::types::{MetaBlock, PoolMode, PoolSettings, VolumeId};

/// The module a pool's claim on its base and metadata bdevs names.
const POOL_CLAIM: &str = "bdev_thin";

/// The claim a volume's bdev carries while its pool deletes it: no frontend opens it then.
pub const DELETING_CLAIM: &str = "bdev_thin_delete";

/// Where an operation's answer goes; called exactly once, possibly from another core.
pub type Done<T> = Box<dyn FnOnce(Result<T, ThinBdevError>) + Send>;

/// Errors of pools and volumes as bdevs. The parameter a caller chose badly is named first
/// (`data_block_size: ...`), as the RPC edge passes such errors on as invalid parameters.
#[derive(Debug, thiserror::Error)]
pub enum ThinBdevError {
    #[error("pool {0} already exists")]
    PoolExists(String),
    #[error("pool {0} not found")]
    PoolNotFound(String),
    #[error("{0} is a thin volume")]
    IsThinVolume(String),
    #[error("{0} is not a thin volume")]
    NotThinVolume(String),
    #[error("{0} stores no data (null): a pool needs a real device")]
    StoresNoData(String),
    #[error("{bdev} already holds pool {pool}")]
    HoldsPool { bdev: String, pool: String },
    #[error("data_block_size: must be a multiple of {bdev}'s block size {lba_bytes}")]
    BlockSizeMismatch { bdev: String, lba_bytes: u64 },
    #[error("max_growable_size_mib: too large")]
    MaxGrowableTooLarge,
    #[error("metadata_bdev_name: {0} must be another bdev that stores data")]
    MetadataBdevUnfit(String),
    #[error("{bdev}: {source}")]
    NoRoom { bdev: String, source: MetadataError },
    #[error("{0}")]
    Format(MetadataError),
    #[error(
        "pool {pool} can grow to {max_bytes} bytes (max_growable_size); the device has \
         {device_bytes}"
    )]
    GrowPastMax { pool: String, max_bytes: u64, device_bytes: u64 },
    #[error("pool {pool} is in mode {}: a check runs on a read-only pool", .mode.name())]
    CheckNeedsReadOnly { pool: String, mode: PoolMode },
    #[error("pool {pool}: check found {} problems: {}", .problems.len(), first_problems(.problems))]
    CheckFailed { pool: String, problems: Vec<String> },
    #[error("volume {0} already exists")]
    VolumeExists(String),
    #[error("volume {0} has no view")]
    NoView(VolumeId),
    #[error("{0} is open")]
    Open(String),
    #[error("volume {0} is open")]
    VolumeOpen(String),
    #[error(transparent)]
    Bdev(#[from] BdevError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// The first problems a failed check found, for its message.
fn first_problems(problems: &[String]) -> String {
    let shown: Vec<&str> = problems.iter().take(8).map(String::as_str).collect();
    shown.join("; ")
}

/// What `bdev_thin_pool_create` asks for, decoded.
pub struct PoolCreate {
    pub pool_name: String,
    /// The data bdev (and, without `metadata_bdev_name`, the metadata bdev too).
    pub bdev_name: String,
    pub metadata_bdev_name: Option<String>,
    /// A power of two from 4 KiB to 1 GiB (the caller checked).
    pub data_block_bytes: u32,
    pub settings: PoolSettings,
    /// How far `bdev_thin_pool_grow` may take the pool; at least the device, four times it
    /// when not given.
    pub max_growable_mib: Option<u64>,
}

/// Examines in progress, and who waits for them all to end (`bdev_wait_for_examine`).
#[derive(Default)]
struct Examines {
    running_count: u64,
    waiters: Vec<Box<dyn FnOnce() + Send>>,
}

/// Every pool a target hosts, and the bdevs examine found that wait for a partner.
pub struct ThinPools {
    runtime: RuntimeHandle,
    bdevs: Arc<BdevRegistry>,
    pools: Mutex<Vec<Arc<ThinPool>>>,
    /// Metadata bdevs found by examine whose data bdev has not appeared: (data UUID, name).
    waiting_metadata: Mutex<Vec<(Uuid, String)>>,
    examines: Mutex<Examines>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a control-plane lock leaves plain data behind; keep serving.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ThinPools {
    pub fn new(runtime: RuntimeHandle, bdevs: Arc<BdevRegistry>) -> Arc<ThinPools> {
        Arc::new(ThinPools {
            runtime,
            bdevs,
            pools: Mutex::new(Vec::new()),
            waiting_metadata: Mutex::new(Vec::new()),
            examines: Mutex::new(Examines::default()),
        })
    }

    /// Every pool hosted here, in the order they started.
    pub fn all(&self) -> Vec<Arc<ThinPool>> {
        lock(&self.pools).clone()
    }

    pub fn by_name(&self, name: &str) -> Result<Arc<ThinPool>, ThinBdevError> {
        lock(&self.pools)
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| ThinBdevError::PoolNotFound(name.to_string()))
    }

    pub fn by_uuid(&self, uuid: Uuid) -> Result<Arc<ThinPool>, ThinBdevError> {
        lock(&self.pools)
            .iter()
            .find(|p| p.uuid == uuid)
            .cloned()
            .ok_or_else(|| ThinBdevError::PoolNotFound(uuid.to_string()))
    }

    /// Forgets `pool` (deleted, or closed after its base bdev went away).
    pub fn remove(&self, pool: &Arc<ThinPool>) {
        lock(&self.pools).retain(|p| !Arc::ptr_eq(p, pool));
    }

    /// The thin volume a bdev name (or alias, or UUID) names.
    pub fn volume(&self, name: &str) -> Result<(Arc<Bdev>, ThinVolumeDevice), ThinBdevError> {
        let bdev = self.bdevs.get(name)?;
        let Device::Thin(device) = bdev.device().clone() else {
            return Err(ThinBdevError::NotThinVolume(name.to_string()));
        };
        Ok((bdev, device))
    }

    /// Formats a pool on the bdevs `request` names, claims them and starts it; `done` gets the
    /// pool's UUID once a first commit is durable.
    pub fn create(self: &Arc<Self>, request: PoolCreate, done: Done<Uuid>) {
        match self.prepare_create(request) {
            Ok((pool, meta, bdev)) => self.start(pool, meta, bdev, done),
            Err(e) => done(Err(e)),
        }
    }

    fn prepare_create(
        self: &Arc<Self>,
        request: PoolCreate,
    ) -> Result<(Arc<ThinPool>, PoolMetadata, Arc<Bdev>), ThinBdevError> {
        let PoolCreate { pool_name, bdev_name, metadata_bdev_name, .. } = &request;
        if lock(&self.pools).iter().any(|p| p.name == *pool_name) {
            return Err(ThinBdevError::PoolExists(pool_name.clone()));
        }
        let bdev = self.bdevs.get(bdev_name)?;
        let Device::Base(device) = bdev.device().clone() else {
            return Err(ThinBdevError::IsThinVolume(bdev_name.clone()));
        };
        if !device.stores_data() {
            return Err(ThinBdevError::StoresNoData(bdev_name.clone()));
        }
        if let Some(pool) = lock(&self.pools).iter().find(|p| p.base_bdev == bdev.name()) {
            return Err(ThinBdevError::HoldsPool {
                bdev: bdev_name.clone(),
                pool: pool.name.clone(),
            });
        }
        let info = device.info();
        let lba_bytes = u64::from(info.block_size_bytes);
        let block_bytes = request.data_block_bytes;
        if u64::from(block_bytes) % lba_bytes != 0 {
            return Err(ThinBdevError::BlockSizeMismatch { bdev: bdev_name.clone(), lba_bytes });
        }
        let device_bytes = info.num_blocks * lba_bytes;
        let max_bytes = match request.max_growable_mib {
            Some(mib) => mib.checked_mul(1 << 20).ok_or(ThinBdevError::MaxGrowableTooLarge)?,
            None => device_bytes.saturating_mul(4),
        }
        .max(device_bytes);
        let metadata = match metadata_bdev_name {
            None => None,
            Some(name) => {
                let metadata_bdev = self.bdevs.get(name)?;
                let Device::Base(metadata_device) = metadata_bdev.device().clone() else {
                    return Err(ThinBdevError::IsThinVolume(name.clone()));
                };
                if !metadata_device.stores_data() || Arc::ptr_eq(&metadata_bdev, &bdev) {
                    return Err(ThinBdevError::MetadataBdevUnfit(name.clone()));
                }
                Some((metadata_bdev, metadata_device))
            }
        };
        let layout = match &metadata {
            None => Layout::on_data_device(device_bytes, block_bytes, max_bytes),
            Some((_, metadata_device)) => {
                let info = metadata_device.info();
                let metadata_bytes = info.num_blocks * u64::from(info.block_size_bytes);
                Layout::separate(metadata_bytes, device_bytes, block_bytes, max_bytes)
            }
        }
        .map_err(|source| ThinBdevError::NoRoom { bdev: bdev_name.clone(), source })?;
        let uuid = Uuid::new_v4();
        let record = PoolRecord {
            uuid: *uuid.as_bytes(),
            name: pool_name.clone(),
            settings: request.settings,
            needs_check: false,
            // With a metadata bdev, examine pairs it with its data bdev by this UUID.
            data_bdev_uuid: if metadata.is_some() { *bdev.uuid().as_bytes() } else { [0; 16] },
        };
        let meta = PoolMetadata::format(layout, record.clone()).map_err(ThinBdevError::Format)?;
        bdev.try_claim(POOL_CLAIM)?;
        if let Some((metadata_bdev, _)) = &metadata
            && let Err(e) = metadata_bdev.try_claim(POOL_CLAIM)
        {
            bdev.release_claim();
            return Err(e.into());
        }
        let metadata = metadata.map(|(b, d)| (b.name().to_string(), d));
        let pool = self.new_pool(&bdev, device, metadata, layout, record, uuid);
        Ok((pool, meta, bdev))
    }

    fn new_pool(
        &self,
        bdev: &Arc<Bdev>,
        device: BaseDevice,
        metadata: Option<(String, BaseDevice)>,
        layout: Layout,
        record: PoolRecord,
        uuid: Uuid,
    ) -> Arc<ThinPool> {
        let lba_bytes = u64::from(device.info().block_size_bytes);
        let block_bytes = u64::from(layout.data_block_bytes);
        let cores = self.runtime.cores();
        let home_core = cores[lock(&self.pools).len() % cores.len()];
        Arc::new(ThinPool {
            name: record.name.clone(),
            uuid,
            base_bdev: bdev.name().to_string(),
            metadata_bdev: metadata.as_ref().map(|(name, _)| name.clone()),
            metadata_device: metadata.map(|(_, device)| device),
            home_core,
            shared: PoolShared::new(self.runtime.waker(home_core)),
            control: ControlRing::new(),
            device,
            geometry: ChannelGeometry {
                lba_bytes,
                lbas_per_block: block_bytes / lba_bytes,
                data_offset_lbas: layout.data_offset_bytes / lba_bytes,
            },
            layout,
            record,
            runtime: self.runtime.clone(),
            volumes: Mutex::new(Vec::new()),
        })
    }

    /// Looks for a pool on a bdev that just appeared (SPDK's examine): if its superblock is
    /// there, the pool and every volume come back. Reads synchronously (control plane); the
    /// pool starts asynchronously and [`ThinPools::when_examined`] waits for it.
    pub fn examine(self: &Arc<Self>, bdev: &Arc<Bdev>) {
        // This bdev may be the data bdev a waiting metadata bdev needs.
        for waiting in self.take_waiting_metadata(bdev.uuid()) {
            if let Ok(metadata_bdev) = self.bdevs.get(&waiting) {
                self.examine_metadata(&metadata_bdev);
            }
        }
        self.examine_metadata(bdev);
    }

    /// Looks for a superblock on `bdev`: metadata at its start, of a pool on it or, with a
    /// separate metadata bdev, of a pool whose data bdev is named by UUID in the superblock.
    fn examine_metadata(self: &Arc<Self>, bdev: &Arc<Bdev>) {
        let Device::Base(device) = bdev.device().clone() else {
            return;
        };
        if !device.stores_data() || bdev.claim().is_some() {
            return;
        }
        let block_bytes = METADATA_BLOCK_BYTES as u64;
        let mut read =
            |block: MetaBlock, out: &mut [u8]| device.read_sync(block.0 * block_bytes, out);
        let meta = match PoolMetadata::open(&mut read) {
            Ok(meta) => meta,
            Err(MetadataError::NotAPool) => return,
            Err(e) => {
                log_line(format_args!(
                    "examine {}: a pool is there but cannot be opened: {e}",
                    bdev.name()
                ));
                return;
            }
        };
        let record = meta.pool().clone();
        let layout = *meta.layout();
        if lock(&self.pools).iter().any(|p| p.name == record.name) {
            log_line(format_args!(
                "examine {}: pool {} already exists; not opened",
                bdev.name(),
                record.name
            ));
            return;
        }
        // With separate metadata, `bdev` holds the metadata and the data bdev comes by UUID.
        let (data_bdev, data_device, metadata) = if layout.metadata_separate {
            let data_uuid = Uuid::from_bytes(record.data_bdev_uuid);
            let found = self.bdevs.get(&data_uuid.to_string()).ok().and_then(|data_bdev| {
                match data_bdev.device().clone() {
                    Device::Base(data_device) => Some((data_bdev, data_device)),
                    Device::Thin(_) => None,
                }
            });
            let Some((data_bdev, data_device)) = found else {
                log_line(format_args!(
                    "examine {}: metadata of pool {}; waiting for its data bdev {data_uuid}",
                    bdev.name(),
                    record.name
                ));
                self.wait_for_data_bdev(data_uuid, bdev.name().to_string());
                return;
            };
            if let Err(e) = bdev.try_claim(POOL_CLAIM) {
                log_line(format_args!("examine {}: {e}", bdev.name()));
                return;
            }
            (data_bdev, data_device, Some((bdev.name().to_string(), device)))
        } else {
            (Arc::clone(bdev), device, None)
        };
        if let Err(e) = data_bdev.try_claim(POOL_CLAIM) {
            log_line(format_args!("examine {}: {e}", data_bdev.name()));
            if metadata.is_some() {
                bdev.release_claim();
            }
            return;
        }
        let uuid = Uuid::from_bytes(record.uuid);
        let pool = self.new_pool(&data_bdev, data_device, metadata, layout, record, uuid);
        log_line(format_args!("examine {}: found pool {} ({uuid})", bdev.name(), pool.name));
        self.begin_examine();
        let pools = Arc::clone(self);
        let name = bdev.name().to_string();
        self.start(
            pool,
            meta,
            data_bdev,
            Box::new(move |result| {
                if let Err(e) = result {
                    log_line(format_args!("examine {name}: {e}"));
                }
                pools.end_examine();
            }),
        );
    }

    /// Remembers a metadata bdev until its data bdev (by UUID) appears.
    fn wait_for_data_bdev(&self, data_uuid: Uuid, metadata_bdev: String) {
        let mut waiting = lock(&self.waiting_metadata);
        if !waiting.iter().any(|(_, name)| *name == metadata_bdev) {
            waiting.push((data_uuid, metadata_bdev));
        }
    }

    /// The metadata bdevs that waited for the data bdev `data_uuid`.
    fn take_waiting_metadata(&self, data_uuid: Uuid) -> Vec<String> {
        let mut waiting = lock(&self.waiting_metadata);
        let (ready, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut *waiting).into_iter().partition(|(uuid, _)| *uuid == data_uuid);
        *waiting = rest;
        ready.into_iter().map(|(_, name)| name).collect()
    }

    /// An examine starts (here, or one that reads bdevs off the reactors).
    pub fn begin_examine(&self) {
        lock(&self.examines).running_count += 1;
    }

    /// An examine ended: the last one answers everyone waiting.
    pub fn end_examine(&self) {
        let waiters = {
            let mut examines = lock(&self.examines);
            examines.running_count -= 1;
            if examines.running_count > 0 {
                return;
            }
            std::mem::take(&mut examines.waiters)
        };
        for waiter in waiters {
            waiter();
        }
    }

    /// Calls `done` once no examine is in progress (at once if none is).
    pub fn when_examined(&self, done: impl FnOnce() + Send + 'static) {
        let mut examines = lock(&self.examines);
        if examines.running_count == 0 {
            drop(examines);
            done();
        } else {
            examines.waiters.push(Box::new(done));
        }
    }

    /// Starts the owner on the pool's home core; `done` gets the pool's UUID once a first
    /// commit is durable, with every volume the metadata holds registered as a bdev.
    fn start(
        self: &Arc<Self>,
        pool: Arc<ThinPool>,
        meta: PoolMetadata,
        base: Arc<Bdev>,
        done: Done<Uuid>,
    ) {
        let volumes: Vec<(VolumeId, [u8; 16], String, u64)> =
            meta.volumes().map(|v| (v.id, v.uuid, v.name.clone(), v.size_bytes)).collect();
        let pools = Arc::clone(self);
        let home = pool.home_core;
        let sent = self.runtime.send(home, move |ctx| {
            let settings = owner_settings(&pool.record);
            let owner = Owner::with_metadata_device(
                pools.runtime.clone(),
                Arc::clone(&pool.shared),
                pool.control.ring(),
                meta,
                &pool.device,
                pool.metadata_device.as_ref(),
                settings,
            );
            let owner = match owner {
                Ok(owner) => owner,
                Err(e) => {
                    base.release_claim();
                    return done(Err(e.into()));
                }
            };
            ctx.add_local_poller(Box::new(OwnerPoller::new(owner, Arc::clone(&pool.control))));
            let started = Arc::clone(&pool);
            pool.send(ControlOp::Commit {
                done: Box::new(move |result| {
                    if let Err(e) = result {
                        base.release_claim();
                        return done(Err(e.into()));
                    }
                    lock(&pools.pools).push(Arc::clone(&started));
                    for (id, volume_uuid, name, size_bytes) in volumes {
                        let volume_uuid = Uuid::from_bytes(volume_uuid);
                        let registered =
                            pools.register_volume(&started, id, volume_uuid, &name, size_bytes);
                        if let Err(e) = registered {
                            log_line(format_args!("pool {}: volume {name}: {e}", started.name));
                        }
                    }
                    done(Ok(started.uuid));
                }),
            });
        });
        if let Err(e) = sent {
            log_line(format_args!("bdev_thin_pool_create: {e}"));
        }
    }

    /// Registers volume `id` of `pool` as a bdev named by its UUID, aliased `pool/name`.
    fn register_volume(
        &self,
        pool: &Arc<ThinPool>,
        id: VolumeId,
        uuid: Uuid,
        volume_name: &str,
        size_bytes: u64,
    ) -> Result<String, ThinBdevError> {
        let view = pool.shared.view(id).ok_or(ThinBdevError::NoView(id))?;
        debug_assert_eq!(view.size_lbas() * pool.geometry.lba_bytes, size_bytes);
        let device = ThinVolumeDevice { pool: Arc::clone(pool), view };
        let name = uuid.to_string();
        let bdev = Bdev::new(name.clone(), uuid, Device::Thin(device));
        bdev.add_alias(format!("{}/{volume_name}", pool.name));
        self.bdevs.register(bdev)?;
        lock(&pool.volumes).push((id, name.clone()));
        Ok(name)
    }

    /// Refuses a volume name its pool already has (as the alias `pool/name`).
    fn check_volume_name_free(&self, pool: &ThinPool, name: &str) -> Result<(), ThinBdevError> {
        let alias = format!("{}/{name}", pool.name);
        if self.bdevs.get(&alias).is_ok() {
            return Err(ThinBdevError::VolumeExists(alias));
        }
        Ok(())
    }

    /// Creates a volume of `size_bytes` in `pool`; `done` gets its bdev's name.
    pub fn create_volume(
        self: &Arc<Self>,
        pool: Arc<ThinPool>,
        volume_name: String,
        size_bytes: u64,
        done: Done<String>,
    ) {
        if let Err(e) = self.check_volume_name_free(&pool, &volume_name) {
            return done(Err(e));
        }
        let uuid = Uuid::new_v4();
        let pools = Arc::clone(self);
        let created = Arc::clone(&pool);
        pool.send(ControlOp::CreateVolume {
            uuid: *uuid.as_bytes(),
            name: volume_name.clone(),
            size_bytes,
            done: Box::new(move |result| {
                done(result.map_err(ThinBdevError::from).and_then(|id| {
                    pools.register_volume(&created, id, uuid, &volume_name, size_bytes)
                }))
            }),
        });
    }

    /// Snapshots the volume `origin` as `snapshot_name`; `done` gets the snapshot's bdev name.
    pub fn snapshot(
        self: &Arc<Self>,
        origin: ThinVolumeDevice,
        snapshot_name: String,
        done: Done<String>,
    ) {
        if let Err(e) = self.check_volume_name_free(&origin.pool, &snapshot_name) {
            return done(Err(e));
        }
        let uuid = Uuid::new_v4();
        let pools = Arc::clone(self);
        let pool = Arc::clone(&origin.pool);
        let size_bytes = origin.size_bytes();
        pool.send(ControlOp::Snapshot {
            origin: origin.volume(),
            uuid: *uuid.as_bytes(),
            name: snapshot_name.clone(),
            done: Box::new(move |result| {
                done(result.map_err(ThinBdevError::from).and_then(|id| {
                    pools.register_volume(&origin.pool, id, uuid, &snapshot_name, size_bytes)
                }))
            }),
        });
    }

    /// Deletes the volume bdev `name` names. Its bdev goes only once the pool deleted the
    /// volume: a refused delete leaves the volume and its bdev as they were.
    pub fn delete_volume(self: &Arc<Self>, name: &str, done: Done<()>) {
        let prepared = (|| {
            let (bdev, device) = self.volume(name)?;
            if bdev.open_count() > 0 {
                return Err(ThinBdevError::Open(name.to_string()));
            }
            bdev.try_claim(DELETING_CLAIM)?;
            if bdev.open_count() > 0 {
                bdev.release_claim();
                return Err(ThinBdevError::Open(name.to_string()));
            }
            Ok((bdev, device))
        })();
        let (bdev, device) = match prepared {
            Ok(parts) => parts,
            Err(e) => return done(Err(e)),
        };
        let pool = Arc::clone(&device.pool);
        let id = device.volume();
        let bdevs = Arc::clone(&self.bdevs);
        pool.send(ControlOp::DeleteVolume {
            volume: id,
            done: Box::new(move |result| match result {
                Ok(()) => {
                    if let Err(e) = bdevs.unregister_claimed(bdev.name(), DELETING_CLAIM) {
                        log_line(format_args!("bdev_thin_delete {}: {e}", bdev.name()));
                    }
                    lock(&device.pool.volumes).retain(|(v, _)| *v != id);
                    done(Ok(()))
                }
                Err(e) => {
                    bdev.release_claim();
                    done(Err(e.into()))
                }
            }),
        });
    }

    /// Grows `pool` onto what its data device has grown by, up to its `max_growable_size`.
    pub fn grow(&self, pool: &ThinPool, done: Done<()>) {
        let info = pool.device.info();
        let device_bytes = info.num_blocks * u64::from(info.block_size_bytes);
        let block = u64::from(pool.layout.data_block_bytes);
        let data_blocks = device_bytes.saturating_sub(pool.layout.data_offset_bytes) / block;
        if data_blocks > pool.layout.data_blocks_max {
            return done(Err(ThinBdevError::GrowPastMax {
                pool: pool.name.clone(),
                max_bytes: pool.layout.data_blocks_max * block,
                device_bytes,
            }));
        }
        pool.send(ControlOp::Grow {
            data_blocks,
            done: Box::new(move |result| done(result.map_err(ThinBdevError::from))),
        });
    }

    /// Checks a read-only pool's metadata on its device as `thinctl check` does. Reads the
    /// metadata region synchronously on the calling core, as examine does: a pool on a remote
    /// or SPDK bdev has no path for `thinctl`.
    pub fn check(&self, pool: &ThinPool) -> Result<CheckReport, ThinBdevError> {
        // Nothing writes the metadata of a read-only pool, so what is read is consistent.
        let mode = pool.shared.counters.mode();
        if mode != PoolMode::ReadOnly {
            return Err(ThinBdevError::CheckNeedsReadOnly { pool: pool.name.clone(), mode });
        }
        let device = pool.metadata_device.as_ref().unwrap_or(&pool.device);
        let block_bytes = METADATA_BLOCK_BYTES as u64;
        let mut read =
            |block: MetaBlock, out: &mut [u8]| device.read_sync(block.0 * block_bytes, out);
        crate::thin::metadata::check(&mut read)
            .map_err(|problems| ThinBdevError::CheckFailed { pool: pool.name.clone(), problems })
    }

    /// Deletes `pool` and every volume in it, once none is open; releases its bdevs.
    pub fn delete_pool(self: &Arc<Self>, pool: Arc<ThinPool>, done: Done<()>) {
        let prepared = (|| {
            let volumes = lock(&pool.volumes).clone();
            for (_, name) in &volumes {
                if self.bdevs.get(name).is_ok_and(|b| b.open_count() > 0) {
                    return Err(ThinBdevError::VolumeOpen(name.clone()));
                }
            }
            for (_, name) in &volumes {
                // Opened since the check above: the delete stops here, the pool intact. A
                // volume its own delete claimed goes with that delete, which the owner answers
                // before this one.
                match self.bdevs.unregister(name) {
                    Ok(_) | Err(BdevError::NotFound(_)) => {}
                    Err(BdevError::Claimed { module, .. }) if module == DELETING_CLAIM => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })();
        if let Err(e) = prepared {
            return done(Err(e));
        }
        let pools = Arc::clone(self);
        let deleted = Arc::clone(&pool);
        pool.send(ControlOp::DeletePool {
            done: Box::new(move |result| {
                // The owner has stopped, failed or not: volumes that operations queued before
                // the delete made go with their pool.
                let volumes = std::mem::take(&mut *lock(&deleted.volumes));
                for (_, name) in volumes {
                    if let Err(e) = pools.bdevs.unregister(&name)
                        && !matches!(e, BdevError::NotFound(_))
                    {
                        log_line(format_args!("bdev_thin_pool_delete {}: {e}", deleted.name));
                    }
                }
                pools.remove(&deleted);
                if let Ok(base) = pools.bdevs.get(&deleted.base_bdev) {
                    base.release_claim();
                }
                if let Some(metadata) = &deleted.metadata_bdev
                    && let Ok(metadata) = pools.bdevs.get(metadata)
                {
                    metadata.release_claim();
                }
                done(result.map_err(ThinBdevError::from))
            }),
        });
    }
}

/// Asks every pool's owner for its state and calls `finish` with all the answers, in the
/// pools' order, from the core of the last owner to answer: never blocks (callers run on a
/// reactor, possibly a pool's home core).
pub fn describe_all(
    pools: Vec<Arc<ThinPool>>,
    finish: impl FnOnce(Result<Vec<(Arc<ThinPool>, PoolDescription)>, PoolError>) + Send + 'static,
) {
    type Gathered = (usize, Vec<Option<PoolDescription>>, Option<PoolError>);
    if pools.is_empty() {
        return finish(Ok(Vec::new()));
    }
    let count = pools.len();
    let state: Arc<Mutex<Gathered>> = Arc::new(Mutex::new((count, vec![None; count], None)));
    let finish = Arc::new(Mutex::new(Some(finish)));
    for (index, pool) in pools.iter().enumerate() {
        let (state, finish, pools) = (Arc::clone(&state), Arc::clone(&finish), pools.clone());
        pool.send(ControlOp::Describe {
            done: Box::new(move |result| {
                let mut gathered = lock(&state);
                match result {
                    Ok(description) => gathered.1[index] = Some(description),
                    Err(e) => gathered.2 = Some(e),
                }
                gathered.0 -= 1;
                if gathered.0 > 0 {
                    return;
                }
                let outcome = match gathered.2.take() {
                    Some(e) => Err(e),
                    None => Ok(pools
                        .into_iter()
                        .zip(gathered.1.drain(..))
                        .filter_map(|(p, d)| d.map(|d| (p, d)))
                        .collect()),
                };
                drop(gathered);
                let finish = lock(&finish).take();
                if let Some(finish) = finish {
                    finish(outcome);
                }
            }),
        });
    }
}
