//! Base-bdev methods (`bdev_malloc_*`, `bdev_null_*`, `bdev_uring_*`), `bdev_get_bdevs`,
//! `bdev_get_iostat`, examine, and the option setters we accept and ignore. Parameters and
//! results follow SPDK's schemas (reference/spdk.md §3).

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use uuid::Uuid;

use super::{Reply, reply_with};
use crate::backend::{BaseDevice, MallocDevice, NullDevice, UringDevice};
use crate::bdev::{Bdev, Device, IoStatSnapshot};
use crate::host::{DeviceError, IoKind};
use crate::rpc::RpcError;
use crate::rpc::params::Params;
use crate::target::Target;

/// Parameters SPDK's save writes for metadata/DIF: accepted at their "none" values, refused
/// (naming the key) when they ask for something we do not do.
fn refuse_metadata_formats(params: &mut Params) -> Result<(), RpcError> {
    let zero = |v: &Value| v.as_u64() == Some(0);
    let falsy = |v: &Value| v.as_bool() == Some(false);
    params.accept("md_size", "separate metadata is not supported (must be 0)", zero)?;
    params.accept(
        "md_interleave",
        "metadata interleave is not supported (must be false)",
        falsy,
    )?;
    params.accept("dif_type", "DIF is not supported (must be 0)", zero)?;
    params.accept("dif_is_head_of_md", "DIF is not supported (must be false)", falsy)?;
    params.accept("dif_pi_format", "DIF is not supported (must be 0)", zero)?;
    Ok(())
}

/// Layout hints SPDK's save writes: accepted with any value of the right type, unused.
fn accept_layout_hints(params: &mut Params, keys: &[&str]) -> Result<(), RpcError> {
    for key in keys {
        if *key == "numa_id" {
            params.accept(key, "expected an integer", |v| v.is_i64())?;
        } else {
            params.accept(key, "expected an unsigned integer", |v| v.is_u64())?;
        }
    }
    Ok(())
}

/// A device refusing its parameters says which one first ("num_blocks: ..."): pass it on as
/// SPDK's invalid-params error, so the config's one line names method and parameter.
fn parameter_error(error: DeviceError) -> RpcError {
    match error {
        DeviceError::Invalid(message) => RpcError::invalid_params(message),
        other => RpcError::from(other),
    }
}

/// A name no bdev may have: -32602, naming the parameter and the bound.
fn check_name(name: &str) -> Result<(), RpcError> {
    crate::names::check_bdev_name("name", name).map_err(RpcError::invalid_params)
}

/// A block size or count no bdev or export can serve: -22, naming the parameter and limit.
fn check_geometry(block_size: u32, num_blocks: u64) -> Result<(), RpcError> {
    crate::backend::check_geometry(block_size, num_blocks)
        .map_err(|message| RpcError::errno(libc::EINVAL, message))
}

fn register(
    target: &Arc<Target>,
    name: String,
    uuid: Option<Uuid>,
    device: BaseDevice,
) -> Result<Value, RpcError> {
    let bdev = Bdev::new(name.clone(), uuid.unwrap_or_else(Uuid::new_v4), Device::Base(device));
    // The registry refuses a name, alias or UUID already taken (EEXIST) under its lock; a
    // look-up before creating the device would race another create of the same name.
    target.bdevs.register(Arc::clone(&bdev))?;
    if target.auto_examine() {
        target.examine(&bdev);
    }
    Ok(json!(name))
}

pub(super) fn malloc_create(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let name = params.optional_string("name")?;
        if let Some(name) = &name {
            check_name(name)?;
        }
        let num_blocks = params.u64("num_blocks")?;
        let block_size = params.u32("block_size")?;
        let uuid = params.optional_uuid("uuid")?;
        refuse_metadata_formats(&mut params)?;
        accept_layout_hints(
            &mut params,
            &["physical_block_size", "optimal_io_boundary", "numa_id"],
        )?;
        params.finish()?;
        check_geometry(block_size, num_blocks)?;
        let name = name.unwrap_or_else(|| target.bdevs.next_name("Malloc"));
        let device = MallocDevice::new(block_size, num_blocks).map_err(parameter_error)?;
        register(target, name, uuid, BaseDevice::Malloc(Arc::new(device)))
    })
}

pub(super) fn null_create(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let name = params.string("name")?;
        check_name(&name)?;
        let num_blocks = params.u64("num_blocks")?;
        let block_size = params.u32("block_size")?;
        let uuid = params.optional_uuid("uuid")?;
        refuse_metadata_formats(&mut params)?;
        accept_layout_hints(
            &mut params,
            &[
                "physical_block_size",
                "preferred_write_alignment",
                "preferred_write_granularity",
                "optimal_write_size",
                "preferred_unmap_alignment",
                "preferred_unmap_granularity",
                "numa_id",
            ],
        )?;
        params.finish()?;
        check_geometry(block_size, num_blocks)?;
        let device = NullDevice::new(block_size, num_blocks).map_err(parameter_error)?;
        register(target, name, uuid, BaseDevice::Null(Arc::new(device)))
    })
}

pub(super) fn uring_create(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let filename = params.string("filename")?;
        let name = params.string("name")?;
        check_name(&name)?;
        let block_size = params.optional_u32("block_size")?;
        let uuid = params.optional_uuid("uuid")?;
        params.finish()?;
        let device = UringDevice::open(Path::new(&filename), block_size).map_err(|e| {
            // Name the parameter, as every config error does.
            let names_block_size =
                matches!(&e, DeviceError::Invalid(message) if message.starts_with("block_size: "));
            let mut error = RpcError::from(e);
            if !names_block_size {
                error.message = format!("filename: {}", error.message);
            }
            error
        })?;
        register(target, name, uuid, BaseDevice::Uring(Arc::new(device)))
    })
}

fn delete_of_kind(
    target: &Arc<Target>,
    mut params: Params,
    reply: Reply,
    is_kind: fn(&BaseDevice) -> bool,
) {
    reply_with(reply, || {
        let name = params.string("name")?;
        params.finish()?;
        let bdev = target.bdevs.get(&name)?;
        let Device::Base(device) = bdev.device() else {
            return Err(RpcError::errno(libc::ENODEV, format!("{name} is a thin volume")));
        };
        if !is_kind(device) {
            return Err(RpcError::errno(
                libc::ENODEV,
                format!("{name} is a {}", device.product_name()),
            ));
        }
        target.bdevs.unregister(&name)?;
        Ok(json!(true))
    })
}

pub(super) fn malloc_delete(target: &Arc<Target>, params: Params, reply: Reply) {
    delete_of_kind(target, params, reply, |d| matches!(d, BaseDevice::Malloc(_)))
}

pub(super) fn null_delete(target: &Arc<Target>, params: Params, reply: Reply) {
    delete_of_kind(target, params, reply, |d| matches!(d, BaseDevice::Null(_)))
}

pub(super) fn uring_delete(target: &Arc<Target>, params: Params, reply: Reply) {
    delete_of_kind(target, params, reply, |d| matches!(d, BaseDevice::Uring(_)))
}

pub(super) fn null_resize(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let name = params.string("name")?;
        let new_size_mib = params.u64("new_size")?;
        params.finish()?;
        let bdev = target.bdevs.get(&name)?;
        let Device::Base(BaseDevice::Null(device)) = bdev.device() else {
            return Err(RpcError::errno(libc::ENODEV, format!("{name} is not a null bdev")));
        };
        let block_size = bdev.info().block_size_bytes;
        let max_mib = crate::limits::BDEV_SIZE_BYTES_MAX >> 20;
        if new_size_mib > max_mib {
            return Err(RpcError::errno(
                libc::EINVAL,
                format!("new_size: {new_size_mib} MiB is more than {max_mib}, the largest bdev"),
            ));
        }
        let blocks = (new_size_mib << 20) / u64::from(block_size);
        if blocks == 0 {
            return Err(RpcError::invalid_params("new_size: must be at least one block"));
        }
        device.resize(blocks);
        Ok(json!(true))
    })
}

pub(super) fn uring_rescan(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let name = params.string("name")?;
        params.finish()?;
        let bdev = target.bdevs.get(&name)?;
        let Device::Base(BaseDevice::Uring(device)) = bdev.device() else {
            return Err(RpcError::errno(libc::ENODEV, format!("{name} is not a uring bdev")));
        };
        device.rescan()?;
        Ok(json!(true))
    })
}

/// One bdev in `bdev_get_bdevs`' schema.
pub(crate) fn bdev_json(bdev: &Bdev) -> Value {
    let info = bdev.info();
    let mut aliases = bdev.aliases();
    let uuid = bdev.uuid().to_string();
    if bdev.name() != uuid {
        aliases.push(uuid.clone());
    }
    let supports = |kind| bdev.device().supports(kind);
    let mut object = serde_json::Map::new();
    object.insert("name".into(), json!(bdev.name()));
    object.insert("aliases".into(), json!(aliases));
    object.insert("product_name".into(), json!(bdev.device().product_name()));
    object.insert("block_size".into(), json!(info.block_size_bytes));
    object.insert("num_blocks".into(), json!(info.num_blocks));
    let hints = bdev.device().io_hints();
    object.insert("preferred_write_alignment".into(), json!(hints.write_alignment_blocks));
    object.insert("preferred_write_granularity".into(), json!(hints.write_granularity_blocks));
    object.insert("optimal_write_size".into(), json!(hints.optimal_write_blocks));
    object.insert("preferred_unmap_alignment".into(), json!(hints.unmap_alignment_blocks));
    object.insert("preferred_unmap_granularity".into(), json!(hints.unmap_granularity_blocks));
    object.insert("uuid".into(), json!(uuid));
    if matches!(bdev.device(), Device::Base(BaseDevice::Malloc(_))) {
        object.insert("numa_id".into(), json!(-1));
    }
    object.insert(
        "assigned_rate_limits".into(),
        json!({
            "rw_ios_per_sec": 0,
            "rw_mbytes_per_sec": 0,
            "r_mbytes_per_sec": 0,
            "w_mbytes_per_sec": 0
        }),
    );
    match bdev.claim() {
        Some(claim) => {
            object.insert("claimed".into(), json!(true));
            object.insert("claim_type".into(), json!(claim.claim_type));
        }
        None => {
            object.insert("claimed".into(), json!(false));
        }
    }
    object.insert("zoned".into(), json!(false));
    object.insert(
        "supported_io_types".into(),
        json!({
            "read": supports(IoKind::Read),
            "write": supports(IoKind::Write),
            "unmap": supports(IoKind::Unmap),
            "flush": supports(IoKind::Flush),
            "reset": supports(IoKind::Reset),
            "nvme_admin": false,
            "nvme_io": false,
            "nvme_io_md": false,
            "write_zeroes": supports(IoKind::WriteZeroes),
            "zcopy": false,
            "get_zone_info": false,
            "zone_management": false,
            "zone_append": false,
            "compare": false,
            "compare_and_write": false,
            "abort": false,
            "seek_hole": false,
            "seek_data": false,
            "copy": false,
            "nvme_iov_md": false,
            "nvme_nssr": false,
            "write_uncorrectable": false,
        }),
    );
    let driver_specific = match bdev.device() {
        Device::Base(BaseDevice::Uring(d)) => {
            json!({"uring": {"filename": d.path().display().to_string()}})
        }
        Device::Thin(d) => super::thin::driver_specific(d),
        Device::Base(BaseDevice::Nvme(d)) => super::bdev_nvme::driver_specific(d),
        _ => json!({}),
    };
    object.insert("driver_specific".into(), driver_specific);
    Value::Object(object)
}

pub(super) fn get_bdevs(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let name = params.optional_string("name")?;
        params.optional_u64("timeout")?;
        params.finish()?;
        let bdevs = match name {
            Some(name) => vec![target.bdevs.get(&name)?],
            None => target.bdevs.all(),
        };
        Ok(Value::Array(bdevs.iter().map(|b| bdev_json(b)).collect()))
    })
}

fn iostat_json(name: &str, stat: &IoStatSnapshot) -> Value {
    // SPDK lists only the non-zero failure kinds.
    let mut errors = serde_json::Map::new();
    if stat.failed > 0 {
        errors.insert("failed".to_string(), json!(stat.failed));
    }
    json!({
        "name": name,
        "bytes_read": stat.read.bytes,
        "num_read_ops": stat.read.ops,
        "bytes_written": stat.write.bytes,
        "num_write_ops": stat.write.ops,
        "bytes_unmapped": stat.unmap.bytes,
        "num_unmap_ops": stat.unmap.ops,
        "bytes_copied": 0,
        "num_copy_ops": 0,
        "read_latency_ticks": stat.read.latency_ticks,
        "max_read_latency_ticks": stat.read.latency_ticks_max,
        "min_read_latency_ticks": stat.read.latency_ticks_min,
        "write_latency_ticks": stat.write.latency_ticks,
        "max_write_latency_ticks": stat.write.latency_ticks_max,
        "min_write_latency_ticks": stat.write.latency_ticks_min,
        "unmap_latency_ticks": stat.unmap.latency_ticks,
        "max_unmap_latency_ticks": stat.unmap.latency_ticks_max,
        "min_unmap_latency_ticks": stat.unmap.latency_ticks_min,
        "copy_latency_ticks": 0,
        "max_copy_latency_ticks": 0,
        "min_copy_latency_ticks": 0,
        "io_error": errors,
    })
}

pub(super) fn get_iostat(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        // `name` (a string) through SPDK v25.x, `names` (an array) since: accept both.
        let mut names: Vec<String> = Vec::new();
        if let Some(name) = params.optional_string("name")? {
            names.push(name);
        }
        if let Some(list) = params.optional_array("names")? {
            for value in list {
                let name = value
                    .as_str()
                    .ok_or_else(|| RpcError::invalid_params("names: expected strings"))?;
                names.push(name.to_string());
            }
        }
        params.optional_bool("per_channel")?;
        let reset = params.optional_string("reset_mode")?;
        if let Some(mode) = &reset
            && !matches!(mode.as_str(), "all" | "maxmin" | "error" | "none")
        {
            return Err(RpcError::invalid_params(
                "reset_mode: expected all, maxmin, error or none",
            ));
        }
        params.finish()?;
        let bdevs = if names.is_empty() {
            target.bdevs.all()
        } else {
            names.iter().map(|n| target.bdevs.get(n)).collect::<Result<Vec<_>, _>>()?
        };
        let entries: Vec<Value> =
            bdevs.iter().map(|b| iostat_json(b.name(), &b.iostat())).collect();
        if reset.as_deref() == Some("all") {
            bdevs.iter().for_each(|b| b.reset_iostat());
        }
        Ok(json!({
            "tick_rate": 1_000_000_000u64,
            "ticks": crate::runtime::now_ns(),
            "bdevs": entries
        }))
    })
}

pub(super) fn examine(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let name = params.string("name")?;
        params.finish()?;
        let bdev = target.bdevs.get(&name)?;
        if !target.auto_examine() {
            target.examine(&bdev);
        }
        Ok(json!(true))
    })
}

pub(super) fn wait_for_examine(target: &Arc<Target>, params: Params, reply: Reply) {
    if let Err(e) = params.finish() {
        return reply(Err(e));
    }
    target.thin_pools.when_examined(move || reply(Ok(json!(true))));
}

/// `bdev_set_options`' one option we act on: `bdev_auto_examine` false leaves examine to
/// `bdev_examine` (a target that must not open the pools on the bdevs it exports). A bad value
/// is refused by the check that follows.
pub(super) fn set_auto_examine(target: &Target, params: Option<&Value>) {
    if let Some(auto) = params.and_then(|p| p.get("bdev_auto_examine")).and_then(Value::as_bool) {
        target.set_auto_examine(auto);
    }
}

/// SPDK option setters we have no use for: the parameters must be an object of JSON scalars or
/// arrays/objects of them; the call is logged and changes nothing.
pub(super) fn check_option_setter(method: &str, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params)?;
    let rest = params.into_rest();
    eprintln!("{method}: accepted and ignored ({} parameters; nothing to set here)", rest.len());
    Ok(json!(true))
}

/// The option values a real `spdk_tgt` saves first in its `bdev` subsystem (its defaults), so a
/// config saved here also loads there; our own loader accepts and ignores them.
fn bdev_set_options_entry(auto_examine: bool) -> Value {
    json!({
        "method": "bdev_set_options",
        "params": {
            "bdev_io_pool_size": 65535,
            "bdev_io_cache_size": 256,
            "bdev_auto_examine": auto_examine,
            "iobuf_small_cache_size": 128,
            "iobuf_large_cache_size": 16
        }
    })
}

/// The call that recreates `bdev`, with the keys (and key order) SPDK's `write_config_json`
/// writes for its module; `None` for bdevs that come back another way (thin volumes, by
/// examine of their pool's bdevs).
pub(crate) fn create_entry(bdev: &Bdev) -> Option<Value> {
    let info = bdev.info();
    let uuid = bdev.uuid().to_string();
    let Device::Base(device) = bdev.device() else {
        return None;
    };
    Some(match device {
        BaseDevice::Malloc(_) => json!({
            "method": "bdev_malloc_create",
            "params": {
                "name": bdev.name(),
                "num_blocks": info.num_blocks,
                "block_size": info.block_size_bytes,
                "physical_block_size": info.block_size_bytes,
                "uuid": uuid,
                "optimal_io_boundary": 0,
                "md_size": 0,
                "dif_type": 0,
                "dif_is_head_of_md": false,
                "dif_pi_format": 0,
                "numa_id": -1
            }
        }),
        BaseDevice::Null(_) => json!({
            "method": "bdev_null_create",
            "params": {
                "name": bdev.name(),
                "num_blocks": info.num_blocks,
                "block_size": info.block_size_bytes,
                "physical_block_size": info.block_size_bytes,
                "md_size": 0,
                "dif_type": 0,
                "dif_is_head_of_md": false,
                "dif_pi_format": 0,
                "uuid": uuid,
                "preferred_write_granularity": 0,
                "preferred_write_alignment": 0,
                "optimal_write_size": 0,
                "preferred_unmap_granularity": 0,
                "preferred_unmap_alignment": 0
            }
        }),
        BaseDevice::Uring(d) => json!({
            "method": "bdev_uring_create",
            "params": {
                "name": bdev.name(),
                "block_size": info.block_size_bytes,
                "filename": d.path().display().to_string(),
                "uuid": uuid
            }
        }),
        // One entry per controller, at its first namespace (`subsystem_config` drops repeats).
        BaseDevice::Nvme(d) => super::bdev_nvme::attach_entry(&d.0.controller.options),
    })
}

/// The `bdev` subsystem's saved config, in SPDK's order: `bdev_set_options`, each bdev's create
/// call in registration order (so a bdev is created before anything built on it), and
/// `bdev_wait_for_examine` last, so pools on the bdevs are open before the next subsystem.
pub(super) fn subsystem_config(target: &Arc<Target>) -> Option<Vec<Value>> {
    let mut entries = vec![bdev_set_options_entry(target.auto_examine())];
    for entry in target.bdevs.all().iter().filter_map(|bdev| create_entry(bdev)) {
        if !entries.contains(&entry) {
            entries.push(entry);
        }
    }
    entries.push(json!({"method": "bdev_wait_for_examine"}));
    Some(entries)
}
