//! `bdev_thin_*` methods (API.md "Thin pools and volumes"): decode, call the pool's owner
//! through its control ring, encode. Answers come from the owner's core once its work (and
//! the commit that makes it durable) is done.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use uuid::Uuid;

use super::Reply;
use crate::backend::BaseDevice;
use crate::bdev::thin::{ControlRing, OwnerPoller, ThinPool, ThinVolumeDevice, owner_settings};
use crate::bdev::{Bdev, BdevError, Device};
use crate::host::{BlockDevice, Host};
use crate::names::log_line;
use crate::rpc::RpcError;
use crate::rpc::params::Params;
use crate::target::Target;
use crate::thin::channel::ChannelGeometry;
use crate::thin::metadata::{Layout, MetadataError, PoolMetadata, PoolRecord};
use crate::thin::owner::{ControlOp, Owner, PoolDescription, PoolError};
use crate::thin::pool::PoolShared;
use crate::thin::types::{
    DiscardMode, MetaBlock, OutOfSpaceMode, PoolMode, PoolSettings, VolumeId,
};

const DATA_BLOCK_BYTES_DEFAULT: u64 = 65536;
const DATA_BLOCK_BYTES_MIN: u64 = 4096;
const DATA_BLOCK_BYTES_MAX: u64 = 1 << 30;
const NAME_BYTES_MAX: usize = 63;

fn pool_error(e: PoolError) -> RpcError {
    RpcError::errno(e.errno(), &e)
}

/// The pool a call names by `uuid` or `pool_name` (exactly one of them).
fn find_pool(target: &Target, params: &mut Params) -> Result<Arc<ThinPool>, RpcError> {
    let uuid = params.optional_uuid("uuid")?;
    let name = params.optional_string("pool_name")?;
    let pools = target.pools();
    let found = match (uuid, &name) {
        (Some(uuid), None) => pools.into_iter().find(|p| p.uuid == uuid),
        (None, Some(name)) => pools.into_iter().find(|p| &p.name == name),
        _ => {
            return Err(RpcError::invalid_params("uuid or pool_name: exactly one is required"));
        }
    };
    found.ok_or_else(|| {
        let what = uuid.map_or_else(|| name.unwrap_or_default(), |u| u.to_string());
        RpcError::errno(libc::ENODEV, format!("pool {what} not found"))
    })
}

fn thin_volume(target: &Target, name: &str) -> Result<(Arc<Bdev>, ThinVolumeDevice), RpcError> {
    let bdev = target.bdevs.get(name)?;
    let Device::Thin(device) = bdev.device().clone() else {
        return Err(RpcError::errno(libc::ENODEV, format!("{name} is not a thin volume")));
    };
    Ok((bdev, device))
}

/// A volume's size from `size_in_mib`: at least 1 MiB, and no larger than a bdev may be (its
/// exports hold sizes as signed 64-bit numbers); -22 naming the limit, never an overflow.
fn volume_size_bytes(size_mib: u64) -> Result<u64, RpcError> {
    if size_mib == 0 {
        return Err(RpcError::invalid_params("size_in_mib: must be at least 1"));
    }
    let max_mib = crate::limits::BDEV_SIZE_BYTES_MAX >> 20;
    if size_mib > max_mib {
        return Err(RpcError::errno(
            libc::EINVAL,
            format!("size_in_mib: {size_mib} is more than {max_mib}, the largest bdev"),
        ));
    }
    Ok(size_mib << 20)
}

fn check_name(key: &str, name: &str) -> Result<(), RpcError> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX || name.contains('/') {
        return Err(RpcError::invalid_params(format!(
            "{key}: must be 1 to {NAME_BYTES_MAX} bytes without '/'"
        )));
    }
    Ok(())
}

pub(super) fn pool_create(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let prepared = (|| {
        let bdev_name = params.string("bdev_name")?;
        let pool_name = params.string("pool_name")?;
        check_name("pool_name", &pool_name)?;
        let metadata_bdev_name = params.optional_string("metadata_bdev_name")?;
        let block_bytes =
            params.optional_u64("data_block_size")?.unwrap_or(DATA_BLOCK_BYTES_DEFAULT);
        if !block_bytes.is_power_of_two()
            || !(DATA_BLOCK_BYTES_MIN..=DATA_BLOCK_BYTES_MAX).contains(&block_bytes)
        {
            return Err(RpcError::invalid_params(
                "data_block_size: must be a power of two from 4096 to 1073741824",
            ));
        }
        let defaults = PoolSettings::default();
        let discard = match params.optional_string("discard")? {
            None => defaults.discard,
            Some(text) => DiscardMode::parse(&text).ok_or_else(|| {
                RpcError::invalid_params("discard: expected passdown, no_passdown or ignore")
            })?,
        };
        let out_of_space = match params.optional_string("out_of_space")? {
            None => defaults.out_of_space,
            Some(text) => OutOfSpaceMode::parse(&text)
                .ok_or_else(|| RpcError::invalid_params("out_of_space: expected error or queue"))?,
        };
        let settings = PoolSettings {
            discard,
            out_of_space,
            zero_new_blocks: params
                .optional_bool("zero_new_blocks")?
                .unwrap_or(defaults.zero_new_blocks),
            no_space_timeout_s: params
                .optional_u32("no_space_timeout_s")?
                .unwrap_or(defaults.no_space_timeout_s),
            low_water_mark: params
                .optional_u64("low_water_mark")?
                .unwrap_or(defaults.low_water_mark),
            commit_interval_ms: params
                .optional_u32("commit_interval_ms")?
                .unwrap_or(defaults.commit_interval_ms),
        };
        let max_mib = params.optional_u64("max_growable_size_mib")?;
        params.finish()?;
        if target.pools().iter().any(|p| p.name == pool_name) {
            return Err(RpcError::errno(libc::EEXIST, format!("pool {pool_name} already exists")));
        }
        let bdev = target.bdevs.get(&bdev_name)?;
        let Device::Base(device) = bdev.device().clone() else {
            return Err(RpcError::errno(libc::EINVAL, format!("{bdev_name} is a thin volume")));
        };
        if !device.stores_data() {
            return Err(RpcError::errno(
                libc::EINVAL,
                format!("{bdev_name} stores no data (null): a pool needs a real device"),
            ));
        }
        if let Some(pool) = target.pools().iter().find(|p| p.base_bdev == bdev.name()) {
            return Err(RpcError::errno(
                libc::EEXIST,
                format!("{bdev_name} already holds pool {}", pool.name),
            ));
        }
        let info = device.info();
        let lba_bytes = u64::from(info.block_size_bytes);
        if block_bytes % lba_bytes != 0 {
            return Err(RpcError::invalid_params(format!(
                "data_block_size: must be a multiple of {bdev_name}'s block size {lba_bytes}"
            )));
        }
        let device_bytes = info.num_blocks * lba_bytes;
        let max_bytes = match max_mib {
            Some(mib) => mib
                .checked_mul(1 << 20)
                .ok_or_else(|| RpcError::invalid_params("max_growable_size_mib: too large"))?,
            None => device_bytes.saturating_mul(4),
        }
        .max(device_bytes);
        let metadata = match &metadata_bdev_name {
            None => None,
            Some(name) => {
                let metadata_bdev = target.bdevs.get(name)?;
                let Device::Base(metadata_device) = metadata_bdev.device().clone() else {
                    return Err(RpcError::errno(libc::EINVAL, format!("{name} is a thin volume")));
                };
                if !metadata_device.stores_data() || Arc::ptr_eq(&metadata_bdev, &bdev) {
                    return Err(RpcError::invalid_params(format!(
                        "metadata_bdev_name: {name} must be another bdev that stores data"
                    )));
                }
                Some((metadata_bdev, metadata_device))
            }
        };
        // Fits: data_block_size was checked to be at most 1 GiB.
        let layout = match &metadata {
            None => Layout::on_data_device(device_bytes, block_bytes as u32, max_bytes),
            Some((_, metadata_device)) => {
                let info = metadata_device.info();
                let metadata_bytes = info.num_blocks * u64::from(info.block_size_bytes);
                Layout::separate(metadata_bytes, device_bytes, block_bytes as u32, max_bytes)
            }
        }
        .map_err(|e| RpcError::errno(libc::ENOSPC, format!("{bdev_name}: {e}")))?;
        let uuid = Uuid::new_v4();
        let record = PoolRecord {
            uuid: *uuid.as_bytes(),
            name: pool_name.clone(),
            settings,
            needs_check: false,
            // With a metadata bdev, examine pairs it with its data bdev by this UUID.
            data_bdev_uuid: if metadata.is_some() { *bdev.uuid().as_bytes() } else { [0; 16] },
        };
        let meta = PoolMetadata::format(layout, record.clone())
            .map_err(|e| RpcError::errno(libc::EINVAL, e))?;
        bdev.try_claim("bdev_thin")?;
        if let Some((metadata_bdev, _)) = &metadata
            && let Err(e) = metadata_bdev.try_claim("bdev_thin")
        {
            bdev.release_claim();
            return Err(e.into());
        }
        let metadata = metadata.map(|(b, d)| (b.name().to_string(), d));
        let pool = new_pool(target, &bdev, device, metadata, layout, record, uuid);
        Ok((pool, meta, bdev))
    })();
    let (pool, meta, bdev) = match prepared {
        Ok(parts) => parts,
        Err(e) => return reply(Err(e)),
    };
    start_pool(target, pool, meta, bdev, reply);
}

fn new_pool(
    target: &Arc<Target>,
    bdev: &Arc<Bdev>,
    device: BaseDevice,
    metadata: Option<(String, BaseDevice)>,
    layout: Layout,
    record: PoolRecord,
    uuid: Uuid,
) -> Arc<ThinPool> {
    let lba_bytes = u64::from(device.info().block_size_bytes);
    let block_bytes = u64::from(layout.data_block_bytes);
    let cores = target.runtime.cores();
    let home_core = cores[target.pools().len() % cores.len()];
    Arc::new(ThinPool {
        name: record.name.clone(),
        uuid,
        base_bdev: bdev.name().to_string(),
        metadata_bdev: metadata.as_ref().map(|(name, _)| name.clone()),
        metadata_device: metadata.map(|(_, device)| device),
        home_core,
        shared: PoolShared::new(target.runtime.waker(home_core)),
        control: ControlRing::new(),
        device,
        geometry: ChannelGeometry {
            lba_bytes,
            lbas_per_block: block_bytes / lba_bytes,
            data_offset_lbas: layout.data_offset_bytes / lba_bytes,
        },
        layout,
        record,
        runtime: target.runtime.clone(),
        volumes: std::sync::Mutex::new(Vec::new()),
    })
}

/// Looks for a pool on a bdev that just appeared (SPDK's examine): if its superblock is
/// there, the pool and every volume come back. Reads synchronously (control plane); the pool
/// starts asynchronously and `bdev_wait_for_examine` waits for it.
pub(crate) fn examine(target: &Arc<Target>, bdev: &Arc<Bdev>) {
    // This bdev may be the data bdev a waiting metadata bdev needs.
    for waiting in target.take_waiting_metadata(bdev.uuid()) {
        if let Ok(metadata_bdev) = target.bdevs.get(&waiting) {
            examine_metadata(target, &metadata_bdev);
        }
    }
    examine_metadata(target, bdev);
}

/// Looks for a superblock on `bdev`: metadata at its start, of a pool on it or, with a
/// separate metadata bdev, of a pool whose data bdev is named by UUID in the superblock.
fn examine_metadata(target: &Arc<Target>, bdev: &Arc<Bdev>) {
    let Device::Base(device) = bdev.device().clone() else {
        return;
    };
    if !device.stores_data() || bdev.claim().is_some() {
        return;
    }
    let block_bytes = crate::thin::metadata::METADATA_BLOCK_BYTES as u64;
    let mut read = |block: MetaBlock, out: &mut [u8]| device.read_sync(block.0 * block_bytes, out);
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
    if target.pools().iter().any(|p| p.name == record.name) {
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
        let found = target.bdevs.get(&data_uuid.to_string()).ok().and_then(|data_bdev| {
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
            target.wait_for_data_bdev(data_uuid, bdev.name().to_string());
            return;
        };
        if let Err(e) = bdev.try_claim("bdev_thin") {
            log_line(format_args!("examine {}: {e}", bdev.name()));
            return;
        }
        (data_bdev, data_device, Some((bdev.name().to_string(), device)))
    } else {
        (Arc::clone(bdev), device, None)
    };
    if let Err(e) = data_bdev.try_claim("bdev_thin") {
        log_line(format_args!("examine {}: {e}", data_bdev.name()));
        if metadata.is_some() {
            bdev.release_claim();
        }
        return;
    }
    let uuid = Uuid::from_bytes(record.uuid);
    let pool = new_pool(target, &data_bdev, data_device, metadata, layout, record, uuid);
    log_line(format_args!("examine {}: found pool {} ({uuid})", bdev.name(), pool.name));
    target.begin_examine();
    let ended = Arc::clone(target);
    let name = bdev.name().to_string();
    start_pool(
        target,
        pool,
        meta,
        data_bdev,
        Box::new(move |result| {
            if let Err(e) = result {
                log_line(format_args!("examine {name}: {}", e.message));
            }
            ended.end_examine();
        }),
    );
}

/// Starts the owner on the pool's home core and answers once a first commit is durable, with
/// every volume the metadata holds registered as a bdev.
fn start_pool(
    target: &Arc<Target>,
    pool: Arc<ThinPool>,
    meta: PoolMetadata,
    base: Arc<Bdev>,
    reply: Reply,
) {
    let volumes: Vec<(VolumeId, [u8; 16], String, u64)> =
        meta.volumes().map(|v| (v.id, v.uuid, v.name.clone(), v.size_bytes)).collect();
    let target_for_owner = Arc::clone(target);
    let home = pool.home_core;
    let sent = target.runtime.send(home, move |ctx| {
        let settings = owner_settings(&pool.record);
        let owner = Owner::with_metadata_device(
            target_for_owner.runtime.clone(),
            Arc::clone(&pool.shared),
            pool.control.ring(),
            meta,
            &pool.device,
            pool.metadata_device.as_ref(),
            settings,
        );
        match owner {
            Ok(owner) => {
                ctx.add_local_poller(Box::new(OwnerPoller::new(owner, Arc::clone(&pool.control))));
                let registered = Arc::clone(&pool);
                pool.send(ControlOp::Commit {
                    done: Box::new(move |result| match result {
                        Ok(()) => {
                            let uuid = registered.uuid.to_string();
                            target_for_owner.add_pool(Arc::clone(&registered));
                            for (id, volume_uuid, name, size_bytes) in volumes {
                                let volume_uuid = Uuid::from_bytes(volume_uuid);
                                let registered_volume = register_volume(
                                    &target_for_owner,
                                    &registered,
                                    id,
                                    volume_uuid,
                                    &name,
                                    size_bytes,
                                );
                                if let Err(e) = registered_volume {
                                    log_line(format_args!(
                                        "pool {}: volume {name}: {}",
                                        registered.name, e.message
                                    ));
                                }
                            }
                            reply(Ok(json!(uuid)));
                        }
                        Err(e) => {
                            base.release_claim();
                            reply(Err(pool_error(e)));
                        }
                    }),
                });
            }
            Err(e) => {
                base.release_claim();
                reply(Err(e.into()));
            }
        }
    });
    if let Err(e) = sent {
        log_line(format_args!("bdev_thin_pool_create: {e}"));
    }
}

pub(super) fn create(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let prepared = (|| {
        let volume_name = params.string("volume_name")?;
        check_name("volume_name", &volume_name)?;
        let size_mib = params.u64("size_in_mib")?;
        let pool = find_pool(target, &mut params)?;
        params.finish()?;
        let size_bytes = volume_size_bytes(size_mib)?;
        let alias = format!("{}/{volume_name}", pool.name);
        if target.bdevs.get(&alias).is_ok() {
            return Err(RpcError::errno(libc::EEXIST, format!("volume {alias} already exists")));
        }
        Ok((pool, volume_name, size_bytes))
    })();
    let (pool, volume_name, size_bytes) = match prepared {
        Ok(parts) => parts,
        Err(e) => return reply(Err(e)),
    };
    let uuid = Uuid::new_v4();
    let target = Arc::clone(target);
    let for_done = Arc::clone(&pool);
    pool.send(ControlOp::CreateVolume {
        uuid: *uuid.as_bytes(),
        name: volume_name.clone(),
        size_bytes,
        done: Box::new(move |result| {
            reply(result.map_err(pool_error).and_then(|id| {
                register_volume(&target, &for_done, id, uuid, &volume_name, size_bytes)
            }))
        }),
    });
}

fn register_volume(
    target: &Arc<Target>,
    pool: &Arc<ThinPool>,
    id: VolumeId,
    uuid: Uuid,
    volume_name: &str,
    size_bytes: u64,
) -> Result<Value, RpcError> {
    let view = pool
        .shared
        .view(id)
        .ok_or_else(|| RpcError::errno(libc::ENODEV, format!("volume {id} has no view")))?;
    debug_assert_eq!(view.size_lbas() * pool.geometry.lba_bytes, size_bytes);
    let device = ThinVolumeDevice { pool: Arc::clone(pool), view };
    let name = uuid.to_string();
    let bdev = Bdev::new(name.clone(), uuid, Device::Thin(device));
    bdev.add_alias(format!("{}/{volume_name}", pool.name));
    target.bdevs.register(bdev)?;
    pool.volumes.lock().unwrap_or_else(|p| p.into_inner()).push((id, name.clone()));
    Ok(json!(name))
}

pub(super) fn snapshot(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let prepared = (|| {
        let name = params.string("name")?;
        let snapshot_name = params.string("snapshot_name")?;
        check_name("snapshot_name", &snapshot_name)?;
        params.finish()?;
        let (_, origin) = thin_volume(target, &name)?;
        let alias = format!("{}/{snapshot_name}", origin.pool.name);
        if target.bdevs.get(&alias).is_ok() {
            return Err(RpcError::errno(libc::EEXIST, format!("volume {alias} already exists")));
        }
        Ok((origin, snapshot_name))
    })();
    let (origin, snapshot_name) = match prepared {
        Ok(parts) => parts,
        Err(e) => return reply(Err(e)),
    };
    let uuid = Uuid::new_v4();
    let target = Arc::clone(target);
    let pool = Arc::clone(&origin.pool);
    let size_bytes = origin.size_bytes();
    pool.send(ControlOp::Snapshot {
        origin: origin.volume(),
        uuid: *uuid.as_bytes(),
        name: snapshot_name.clone(),
        done: Box::new(move |result| {
            reply(result.map_err(pool_error).and_then(|id| {
                register_volume(&target, &origin.pool, id, uuid, &snapshot_name, size_bytes)
            }))
        }),
    });
}

/// The claim a volume's bdev carries while its pool deletes it: no frontend opens it then.
const DELETING: &str = "bdev_thin_delete";

pub(super) fn delete(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let prepared = (|| {
        let name = params.string("name")?;
        params.finish()?;
        let (bdev, device) = thin_volume(target, &name)?;
        if bdev.open_count() > 0 {
            return Err(RpcError::errno(libc::EBUSY, format!("{name} is open")));
        }
        bdev.try_claim(DELETING)?;
        if bdev.open_count() > 0 {
            bdev.release_claim();
            return Err(RpcError::errno(libc::EBUSY, format!("{name} is open")));
        }
        Ok((bdev, device))
    })();
    let (bdev, device) = match prepared {
        Ok(parts) => parts,
        Err(e) => return reply(Err(e)),
    };
    let pool = Arc::clone(&device.pool);
    let id = device.volume();
    let target = Arc::clone(target);
    pool.send(ControlOp::DeleteVolume {
        volume: id,
        done: Box::new(move |result| match result {
            // The bdev goes only once the pool deleted the volume: a refused delete leaves
            // the volume and its bdev as they were.
            Ok(()) => {
                if let Err(e) = target.bdevs.unregister_claimed(bdev.name(), DELETING) {
                    log_line(format_args!("bdev_thin_delete {}: {e}", bdev.name()));
                }
                let mut volumes = device.pool.volumes.lock().unwrap_or_else(|p| p.into_inner());
                volumes.retain(|(v, _)| *v != id);
                reply(Ok(json!(true)));
            }
            Err(e) => {
                bdev.release_claim();
                reply(Err(pool_error(e)));
            }
        }),
    });
}

pub(super) fn resize(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let prepared = (|| {
        let name = params.string("name")?;
        let size_mib = params.u64("size_in_mib")?;
        params.finish()?;
        let size_bytes = volume_size_bytes(size_mib)?;
        let (_, device) = thin_volume(target, &name)?;
        Ok((device, size_bytes))
    })();
    let (device, size_bytes) = match prepared {
        Ok(parts) => parts,
        Err(e) => return reply(Err(e)),
    };
    device.pool.send(ControlOp::Resize {
        volume: device.volume(),
        size_bytes,
        done: Box::new(move |result| reply(result.map(|()| json!(true)).map_err(pool_error))),
    });
}

pub(super) fn pool_grow(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let prepared = (|| {
        let pool = find_pool(target, &mut params)?;
        params.finish()?;
        let info = pool.device.info();
        let device_bytes = info.num_blocks * u64::from(info.block_size_bytes);
        let block = u64::from(pool.layout.data_block_bytes);
        let data_blocks = device_bytes.saturating_sub(pool.layout.data_offset_bytes) / block;
        if data_blocks > pool.layout.data_blocks_max {
            return Err(RpcError::errno(
                libc::ENOSPC,
                format!(
                    "pool {} can grow to {} bytes (max_growable_size); the device has {}",
                    pool.name,
                    pool.layout.data_blocks_max * block,
                    device_bytes
                ),
            ));
        }
        Ok((pool, data_blocks))
    })();
    let (pool, data_blocks) = match prepared {
        Ok(parts) => parts,
        Err(e) => return reply(Err(e)),
    };
    pool.send(ControlOp::Grow {
        data_blocks,
        done: Box::new(move |result| reply(result.map(|()| json!(true)).map_err(pool_error))),
    });
}

/// `bdev_thin_pool_check`: checks a read-only pool's metadata on its device as `thinctl
/// check` does and, with `clear_needs_check`, clears the flag when the check passes (the pool
/// then takes writes again). Reads the metadata region synchronously on the calling core, as
/// examine does: a pool on a remote or SPDK bdev has no path for `thinctl`.
pub(super) fn pool_check(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let prepared = (|| {
        let pool = find_pool(target, &mut params)?;
        let clear = params.optional_bool("clear_needs_check")?.unwrap_or(false);
        params.finish()?;
        // Nothing writes the metadata of a read-only pool, so what is read is consistent.
        let mode = pool.shared.counters.mode();
        if mode != PoolMode::ReadOnly {
            return Err(RpcError::errno(
                libc::EBUSY,
                format!(
                    "pool {} is in mode {}: a check runs on a read-only pool",
                    pool.name,
                    mode.name()
                ),
            ));
        }
        let device = pool.metadata_device.as_ref().unwrap_or(&pool.device);
        let block_bytes = crate::thin::metadata::METADATA_BLOCK_BYTES as u64;
        let mut read =
            |block: MetaBlock, out: &mut [u8]| device.read_sync(block.0 * block_bytes, out);
        let report = crate::thin::metadata::check(&mut read).map_err(|problems| {
            let shown: Vec<&str> = problems.iter().take(8).map(String::as_str).collect();
            RpcError::errno(
                libc::EIO,
                format!(
                    "pool {}: check found {} problems: {}",
                    pool.name,
                    problems.len(),
                    shown.join("; ")
                ),
            )
        })?;
        Ok((pool, clear, report))
    })();
    let (pool, clear, report) = match prepared {
        Ok(parts) => parts,
        Err(e) => return reply(Err(e)),
    };
    let answer = move |needs_check: bool| {
        json!({
            "clean": true,
            "needs_check": needs_check,
            "transaction_id": report.transaction_id,
            "volumes": report.volumes,
            "mappings": report.mappings,
            "data_blocks_used": report.data_blocks_used,
            "metadata_blocks_used": report.metadata_blocks_used,
        })
    };
    if !clear {
        let needs_check = pool.shared.counters.needs_check.load(Ordering::Relaxed);
        return reply(Ok(answer(needs_check)));
    }
    pool.send(ControlOp::ClearNeedsCheck {
        done: Box::new(move |result| reply(result.map(|()| answer(false)).map_err(pool_error))),
    });
}

pub(super) fn pool_delete(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let prepared = (|| {
        let pool = find_pool(target, &mut params)?;
        params.finish()?;
        let volumes = pool.volumes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (_, name) in &volumes {
            if target.bdevs.get(name).is_ok_and(|b| b.open_count() > 0) {
                return Err(RpcError::errno(libc::EBUSY, format!("volume {name} is open")));
            }
        }
        for (_, name) in &volumes {
            // Opened since the check above: the delete stops here, the pool intact. A volume
            // its own `bdev_thin_delete` claimed goes with that delete, which the owner answers
            // before this one.
            match target.bdevs.unregister(name) {
                Ok(_) | Err(BdevError::NotFound(_)) => {}
                Err(BdevError::Claimed { module, .. }) if module == DELETING => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(pool)
    })();
    let pool = match prepared {
        Ok(pool) => pool,
        Err(e) => return reply(Err(e)),
    };
    let target = Arc::clone(target);
    let deleted = Arc::clone(&pool);
    pool.send(ControlOp::DeletePool {
        done: Box::new(move |result| {
            // The owner has stopped, failed or not: volumes that operations queued before the
            // delete made go with their pool.
            let volumes =
                std::mem::take(&mut *deleted.volumes.lock().unwrap_or_else(|p| p.into_inner()));
            for (_, name) in volumes {
                if let Err(e) = target.bdevs.unregister(&name)
                    && !matches!(e, BdevError::NotFound(_))
                {
                    log_line(format_args!("bdev_thin_pool_delete {}: {e}", deleted.name));
                }
            }
            target.remove_pool(&deleted);
            if let Ok(base) = target.bdevs.get(&deleted.base_bdev) {
                base.release_claim();
            }
            if let Some(metadata) = &deleted.metadata_bdev
                && let Ok(metadata) = target.bdevs.get(metadata)
            {
                metadata.release_claim();
            }
            reply(result.map(|()| json!(true)).map_err(pool_error))
        }),
    });
}

/// Asks every pool's owner for its state and calls `finish` with all the answers, in the
/// pools' order, from the core of the last owner to answer: never blocks (RPC handlers run on a
/// reactor, possibly a pool's home core).
fn describe_all(
    pools: Vec<Arc<ThinPool>>,
    finish: impl FnOnce(Result<Vec<(Arc<ThinPool>, PoolDescription)>, RpcError>) + Send + 'static,
) {
    type Gathered = (usize, Vec<Option<PoolDescription>>, Option<RpcError>);
    if pools.is_empty() {
        return finish(Ok(Vec::new()));
    }
    let count = pools.len();
    let state: Arc<std::sync::Mutex<Gathered>> =
        Arc::new(std::sync::Mutex::new((count, vec![None; count], None)));
    let finish = Arc::new(std::sync::Mutex::new(Some(finish)));
    for (index, pool) in pools.iter().enumerate() {
        let (state, finish, pools) = (Arc::clone(&state), Arc::clone(&finish), pools.clone());
        pool.send(ControlOp::Describe {
            done: Box::new(move |result| {
                let mut gathered = state.lock().unwrap_or_else(|p| p.into_inner());
                match result {
                    Ok(description) => gathered.1[index] = Some(description),
                    Err(e) => gathered.2 = Some(pool_error(e)),
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
                let finish = finish.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(finish) = finish {
                    finish(outcome);
                }
            }),
        });
    }
}

fn pool_json(pool: &ThinPool, d: &PoolDescription) -> Value {
    let counters = &pool.shared.counters;
    let block = u64::from(pool.layout.data_block_bytes);
    json!({
        "uuid": pool.uuid.to_string(),
        "name": pool.name,
        "base_bdev": pool.base_bdev,
        "metadata_bdev": pool.metadata_bdev.as_deref().unwrap_or(&pool.base_bdev),
        "data_block_size": block,
        "total_data_blocks": d.data_blocks,
        "used_data_blocks": d.used_data_blocks,
        "free_data_blocks": d.data_blocks.saturating_sub(d.used_data_blocks),
        "held_data_blocks": d.held_data_blocks,
        "metadata_used_bytes": (d.metadata_total_blocks - d.metadata_free_blocks) * 4096,
        "metadata_total_bytes": d.metadata_total_blocks * 4096,
        "transaction_id": d.transaction_id,
        "discard": pool.record.settings.discard.name(),
        "zero_new_blocks": pool.record.settings.zero_new_blocks,
        "out_of_space": pool.record.settings.out_of_space.name(),
        "low_water_mark": pool.record.settings.low_water_mark,
        "low_water_reached": d.data_blocks.saturating_sub(d.used_data_blocks)
            <= pool.record.settings.low_water_mark,
        "max_growable_size": pool.layout.data_blocks_max * block,
        "mode": d.mode.name(),
        "needs_check": d.needs_check,
        "passdowns_completed": counters.passdowns_completed.load(Ordering::Relaxed),
        "passdowns_failed": counters.passdowns_failed.load(Ordering::Relaxed),
    })
}

pub(super) fn get_pools(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let pools = (|| {
        let pools = if params.has("uuid") || params.has("pool_name") {
            vec![find_pool(target, &mut params)?]
        } else {
            target.pools()
        };
        params.finish()?;
        Ok(pools)
    })();
    let pools = match pools {
        Ok(pools) => pools,
        Err(e) => return reply(Err(e)),
    };
    describe_all(pools, move |described| {
        reply(
            described
                .map(|all| Value::Array(all.iter().map(|(pool, d)| pool_json(pool, d)).collect())),
        )
    });
}

pub(super) fn get_volumes(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let parsed = (|| {
        let name = params.optional_string("name")?;
        let pool_name = params.optional_string("pool_name")?;
        params.finish()?;
        Ok((name, pool_name))
    })();
    let (name, pool_name) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return reply(Err(e)),
    };
    let pools: Vec<Arc<ThinPool>> = target
        .pools()
        .into_iter()
        .filter(|p| pool_name.as_ref().is_none_or(|n| *n == p.name))
        .collect();
    describe_all(pools, move |described| {
        reply(described.and_then(|all| volumes_json(&all, name.as_deref())))
    });
}

fn volumes_json(
    all: &[(Arc<ThinPool>, PoolDescription)],
    name: Option<&str>,
) -> Result<Value, RpcError> {
    let mut out = Vec::new();
    for (pool, description) in all {
        for record in &description.volumes {
            let uuid = Uuid::from_bytes(record.uuid);
            let alias = format!("{}/{}", pool.name, record.name);
            let matches =
                name.is_none_or(|n| n == alias || n == uuid.to_string() || n == record.name);
            if !matches {
                continue;
            }
            let origin = record.origin.and_then(|o| {
                description
                    .volumes
                    .iter()
                    .find(|v| v.id == o)
                    .map(|v| format!("{}/{}", pool.name, v.name))
            });
            let lba = pool.geometry.lba_bytes;
            out.push(json!({
                "name": uuid.to_string(),
                "alias": alias,
                "uuid": uuid.to_string(),
                "pool": {"name": pool.name, "uuid": pool.uuid.to_string()},
                "num_blocks": record.size_bytes / lba,
                "mapped_blocks": record.mapped_blocks,
                "origin": origin,
            }));
        }
    }
    if let Some(name) = name
        && out.is_empty()
    {
        return Err(RpcError::errno(libc::ENODEV, format!("volume {name} not found")));
    }
    Ok(Value::Array(out))
}

/// `driver_specific` of a thin volume in `bdev_get_bdevs`.
pub(crate) fn driver_specific(device: &ThinVolumeDevice) -> Value {
    json!({"thin": {
        "pool_name": device.pool.name,
        "pool_uuid": device.pool.uuid.to_string(),
        "base_bdev": device.pool.base_bdev,
        "data_block_size": device.pool.layout.data_block_bytes,
    }})
}
