//! `bdev_thin_*` methods (API.md "Thin pools and volumes"): decode, call the target's thin
//! pools (the bdev layer's `ThinPools`, which runs each pool's lifecycle), encode. Answers come
//! from the owner's core once its work (and the commit that makes it durable) is done.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use uuid::Uuid;

use super::Reply;
use crate::bdev::pools::{PoolCreate, ThinBdevError, describe_all};
use crate::bdev::thin::{ThinPool, ThinVolumeDevice};
use crate::rpc::RpcError;
use crate::rpc::params::Params;
use crate::target::Target;
use crate::thin::owner::{ControlOp, PoolDescription, PoolError};
use crate::thin::types::{DiscardMode, OutOfSpaceMode, PoolSettings};

const DATA_BLOCK_BYTES_DEFAULT: u64 = 65536;
const DATA_BLOCK_BYTES_MIN: u64 = 4096;
const DATA_BLOCK_BYTES_MAX: u64 = 1 << 30;
const NAME_BYTES_MAX: usize = 63;

fn pool_error(e: PoolError) -> RpcError {
    RpcError::errno(e.errno(), &e)
}

impl From<ThinBdevError> for RpcError {
    fn from(e: ThinBdevError) -> RpcError {
        let errno = match e {
            ThinBdevError::Bdev(e) => return e.into(),
            ThinBdevError::Device(e) => return e.into(),
            ThinBdevError::Pool(ref pool) => pool.errno(),
            ThinBdevError::BlockSizeMismatch { .. }
            | ThinBdevError::MaxGrowableTooLarge
            | ThinBdevError::MetadataBdevUnfit(_) => {
                return RpcError::invalid_params(e.to_string());
            }
            ThinBdevError::PoolExists(_)
            | ThinBdevError::HoldsPool { .. }
            | ThinBdevError::VolumeExists(_) => libc::EEXIST,
            ThinBdevError::PoolNotFound(_)
            | ThinBdevError::NotThinVolume(_)
            | ThinBdevError::NoView(_) => libc::ENODEV,
            ThinBdevError::IsThinVolume(_)
            | ThinBdevError::StoresNoData(_)
            | ThinBdevError::Format(_) => libc::EINVAL,
            ThinBdevError::NoRoom { .. } | ThinBdevError::GrowPastMax { .. } => libc::ENOSPC,
            ThinBdevError::CheckNeedsReadOnly { .. }
            | ThinBdevError::Open(_)
            | ThinBdevError::VolumeOpen(_) => libc::EBUSY,
            ThinBdevError::CheckFailed { .. } => libc::EIO,
        };
        RpcError::errno(errno, &e)
    }
}

/// Replies `Ok(encode(value))` or the error, for a bdev-layer callback.
fn answer<T>(
    reply: Reply,
    encode: impl FnOnce(T) -> Value + Send + 'static,
) -> Box<dyn FnOnce(Result<T, ThinBdevError>) + Send> {
    Box::new(move |result| reply(result.map(encode).map_err(RpcError::from)))
}

/// The pool a call names by `uuid` or `pool_name` (exactly one of them).
fn find_pool(target: &Target, params: &mut Params) -> Result<Arc<ThinPool>, RpcError> {
    let uuid = params.optional_uuid("uuid")?;
    let name = params.optional_string("pool_name")?;
    let found = match (uuid, &name) {
        (Some(uuid), None) => target.thin_pools.by_uuid(uuid),
        (None, Some(name)) => target.thin_pools.by_name(name),
        _ => {
            return Err(RpcError::invalid_params("uuid or pool_name: exactly one is required"));
        }
    };
    Ok(found?)
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

fn decode_pool_create(params: &mut Params) -> Result<PoolCreate, RpcError> {
    let bdev_name = params.string("bdev_name")?;
    let pool_name = params.string("pool_name")?;
    check_name("pool_name", &pool_name)?;
    let metadata_bdev_name = params.optional_string("metadata_bdev_name")?;
    let block_bytes = params.optional_u64("data_block_size")?.unwrap_or(DATA_BLOCK_BYTES_DEFAULT);
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
        low_water_mark: params.optional_u64("low_water_mark")?.unwrap_or(defaults.low_water_mark),
        commit_interval_ms: params
            .optional_u32("commit_interval_ms")?
            .unwrap_or(defaults.commit_interval_ms),
    };
    let max_growable_mib = params.optional_u64("max_growable_size_mib")?;
    Ok(PoolCreate {
        pool_name,
        bdev_name,
        metadata_bdev_name,
        // Fits: at most 1 GiB, checked above.
        data_block_bytes: block_bytes as u32,
        settings,
        max_growable_mib,
    })
}

pub(super) fn pool_create(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let request = decode_pool_create(&mut params).and_then(|request| {
        params.finish()?;
        Ok(request)
    });
    match request {
        Ok(request) => {
            target.thin_pools.create(request, answer(reply, |uuid: Uuid| json!(uuid.to_string())))
        }
        Err(e) => reply(Err(e)),
    }
}

pub(super) fn create(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let decoded = (|| {
        let volume_name = params.string("volume_name")?;
        check_name("volume_name", &volume_name)?;
        let size_mib = params.u64("size_in_mib")?;
        let pool = find_pool(target, &mut params)?;
        params.finish()?;
        Ok((pool, volume_name, volume_size_bytes(size_mib)?))
    })();
    match decoded {
        Ok((pool, volume_name, size_bytes)) => target.thin_pools.create_volume(
            pool,
            volume_name,
            size_bytes,
            answer(reply, |name: String| json!(name)),
        ),
        Err(e) => reply(Err(e)),
    }
}

pub(super) fn snapshot(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let decoded = (|| {
        let name = params.string("name")?;
        let snapshot_name = params.string("snapshot_name")?;
        check_name("snapshot_name", &snapshot_name)?;
        params.finish()?;
        let (_, origin) = target.thin_pools.volume(&name)?;
        Ok((origin, snapshot_name))
    })();
    match decoded {
        Ok((origin, snapshot_name)) => target.thin_pools.snapshot(
            origin,
            snapshot_name,
            answer(reply, |name: String| json!(name)),
        ),
        Err(e) => reply(Err(e)),
    }
}

pub(super) fn delete(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let decoded = (|| {
        let name = params.string("name")?;
        params.finish()?;
        Ok(name)
    })();
    match decoded {
        Ok(name) => target.thin_pools.delete_volume(&name, answer(reply, |()| json!(true))),
        Err(e) => reply(Err(e)),
    }
}

pub(super) fn resize(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let prepared = (|| {
        let name = params.string("name")?;
        let size_mib = params.u64("size_in_mib")?;
        params.finish()?;
        let size_bytes = volume_size_bytes(size_mib)?;
        let (_, device) = target.thin_pools.volume(&name)?;
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
    let decoded = (|| {
        let pool = find_pool(target, &mut params)?;
        params.finish()?;
        Ok(pool)
    })();
    match decoded {
        Ok(pool) => target.thin_pools.grow(&pool, answer(reply, |()| json!(true))),
        Err(e) => reply(Err(e)),
    }
}

/// `bdev_thin_pool_check`: checks a read-only pool's metadata on its device as `thinctl
/// check` does and, with `clear_needs_check`, clears the flag when the check passes (the pool
/// then takes writes again).
pub(super) fn pool_check(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let prepared = (|| {
        let pool = find_pool(target, &mut params)?;
        let clear = params.optional_bool("clear_needs_check")?.unwrap_or(false);
        params.finish()?;
        let report = target.thin_pools.check(&pool)?;
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
    let decoded = (|| {
        let pool = find_pool(target, &mut params)?;
        params.finish()?;
        Ok(pool)
    })();
    match decoded {
        Ok(pool) => target.thin_pools.delete_pool(pool, answer(reply, |()| json!(true))),
        Err(e) => reply(Err(e)),
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
            target.thin_pools.all()
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
                .map_err(pool_error)
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
        .thin_pools
        .all()
        .into_iter()
        .filter(|p| pool_name.as_ref().is_none_or(|n| *n == p.name))
        .collect();
    describe_all(pools, move |described| {
        reply(described.map_err(pool_error).and_then(|all| volumes_json(&all, name.as_deref())))
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
