//! NVMe-oF methods with SPDK's names and parameters (`nvmf_create_transport`,
//! `nvmf_create_subsystem`, `nvmf_subsystem_add_ns`, `_add_listener`, `_add_host`, ...,
//! `nvmf_get_subsystems`): decode, call `export::nvmf_tcp`, encode. Every key SPDK's own
//! `save_config` writes is accepted, so a config saved by a real `spdk_tgt` loads; a value
//! that asks for what this target lacks (TLS, ANA, DH-HMAC-CHAP, DIF, passthrough,
//! persistent reservations, per-host namespace visibility) is refused naming the parameter.
//! The target's errors become JSON-RPC errors here and nowhere else.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{Reply, reply_with};
use crate::export::nvmf_tcp::subsystem::{hex_id, parse_hex_id};
use crate::export::nvmf_tcp::{
    ListenAddress, NamespaceIds, NvmfError, Subsystem, SubsystemKind, SubsystemSettings,
    TransportOptions,
};
use crate::rpc::RpcError;
use crate::rpc::params::Params;
use crate::target::Target;

impl From<NvmfError> for RpcError {
    fn from(e: NvmfError) -> RpcError {
        let text = e.to_string();
        match e {
            // SPDK's own codes for these (reference/spdk.md §3).
            NvmfError::SubsystemNotFound(_) | NvmfError::InvalidNqn(_) => {
                RpcError::invalid_params(text)
            }
            NvmfError::TransportExists => RpcError::new(crate::rpc::error::INTERNAL_ERROR, text),
            NvmfError::Trtype(_) | NvmfError::Option(_) | NvmfError::Invalid(..) => {
                RpcError::invalid_params(text)
            }
            NvmfError::Unsupported(_) => RpcError::errno(libc::ENOTSUP, text),
            NvmfError::SubsystemExists(_)
            | NvmfError::NamespaceExists(_)
            | NvmfError::HostExists(_)
            | NvmfError::ListenerExists(_) => RpcError::errno(libc::EEXIST, text),
            NvmfError::NamespaceNotFound(_)
            | NvmfError::HostNotFound(_)
            | NvmfError::ListenerNotFound(_) => RpcError::errno(libc::ENOENT, text),
            NvmfError::NoTransport(_) => RpcError::errno(libc::ENODEV, text),
            NvmfError::InvalidNsid { .. } | NvmfError::Address(_) | NvmfError::Discovery => {
                RpcError::errno(libc::EINVAL, text)
            }
            NvmfError::NamespaceLimit(_) | NvmfError::TooMany(_) => {
                RpcError::errno(libc::ENOSPC, text)
            }
            NvmfError::BdevInUse(_) => RpcError::errno(libc::EBUSY, text),
            NvmfError::Bind { source, .. } => {
                RpcError::errno(source.raw_os_error().unwrap_or(libc::EIO), text)
            }
            NvmfError::Stopping => RpcError::wrong_state(text),
            NvmfError::Bdev(bdev) => RpcError::errno(bdev.errno(), bdev),
        }
    }
}

fn falsy(value: &Value) -> bool {
    value == &json!(false)
}

/// Refuses `key` when it asks for `feature`, which this target lacks.
fn refuse_if(
    params: &mut Params,
    key: &str,
    feature: &str,
    allowed: fn(&Value) -> bool,
) -> Result<(), RpcError> {
    params.accept(key, &format!("{feature} is not supported by this target"), allowed)
}

/// SPDK's `tgt_name`: there is one target; any name is taken to mean it.
fn take_tgt_name(params: &mut Params) -> Result<(), RpcError> {
    params.optional_string("tgt_name").map(|_| ())
}

fn u32_in(params: &mut Params, key: &str, default: u32) -> Result<u32, RpcError> {
    Ok(params.optional_u32(key)?.unwrap_or(default))
}

pub(super) fn create_transport(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let trtype = params.string("trtype")?;
        if !trtype.eq_ignore_ascii_case("tcp") {
            return Err(NvmfError::Trtype(trtype).into());
        }
        take_tgt_name(&mut params)?;
        let defaults = TransportOptions::default();
        let options = TransportOptions {
            max_queue_depth: u32_in(&mut params, "max_queue_depth", defaults.max_queue_depth)?,
            max_io_qpairs_per_ctrlr: u32_in(
                &mut params,
                "max_io_qpairs_per_ctrlr",
                defaults.max_io_qpairs_per_ctrlr,
            )?,
            in_capsule_data_size: u32_in(
                &mut params,
                "in_capsule_data_size",
                defaults.in_capsule_data_size,
            )?,
            max_io_size: u32_in(&mut params, "max_io_size", defaults.max_io_size)?,
            io_unit_size: u32_in(&mut params, "io_unit_size", defaults.io_unit_size)?,
            max_aq_depth: u32_in(&mut params, "max_aq_depth", defaults.max_aq_depth)?,
            c2h_success: params.optional_bool("c2h_success")?.unwrap_or(defaults.c2h_success),
            kas: u32_in(&mut params, "kas", defaults.kas)?,
            min_kato_ms: u32_in(&mut params, "min_kato", defaults.min_kato_ms)?,
            sock_priority: u32_in(&mut params, "sock_priority", defaults.sock_priority)?,
            abort_timeout_sec: u32_in(
                &mut params,
                "abort_timeout_sec",
                defaults.abort_timeout_sec,
            )?,
            iobuf_small_cache_size: u32_in(
                &mut params,
                "iobuf_small_cache_size",
                defaults.iobuf_small_cache_size,
            )?,
            iobuf_large_cache_size: u32_in(
                &mut params,
                "iobuf_large_cache_size",
                defaults.iobuf_large_cache_size,
            )?,
        };
        refuse_if(&mut params, "dif_insert_or_strip", "DIF", falsy)?;
        // SPDK's knobs for its buffer pools and other transports: accepted by type, no effect.
        for key in [
            "num_shared_buffers",
            "buf_cache_size",
            "ack_timeout",
            "data_wr_pool_size",
            "num_cqe",
            "max_srq_depth",
            "acceptor_backlog",
            "control_msg_num",
            "acceptor_poll_rate",
        ] {
            params.accept(key, "expected an unsigned integer", Value::is_u64)?;
        }
        for key in [
            "zcopy",
            "no_srq",
            "no_wr_batching",
            "disable_mappable_bar0",
            "disable_adaptive_irq",
            "disable_shadow_doorbells",
            "disable_command_passthru",
        ] {
            params.accept(key, "expected a boolean", Value::is_boolean)?;
        }
        for key in ["masked_oncs", "masked_fuses"] {
            params.accept(key, "expected an array of names", Value::is_array)?;
        }
        params.finish()?;
        target.nvmf.create_transport(&target.runtime, options)?;
        Ok(json!(true))
    })
}

/// A transport's options as SPDK's `nvmf_get_transports` and `save_config` write them.
fn transport_json(options: &TransportOptions) -> Value {
    json!({
        "trtype": "TCP",
        "max_queue_depth": options.max_queue_depth,
        "max_io_qpairs_per_ctrlr": options.max_io_qpairs_per_ctrlr,
        "in_capsule_data_size": options.in_capsule_data_size,
        "max_io_size": options.max_io_size,
        "max_aq_depth": options.max_aq_depth,
        "iobuf_small_cache_size": options.iobuf_small_cache_size,
        "iobuf_large_cache_size": options.iobuf_large_cache_size,
        "dif_insert_or_strip": false,
        "zcopy": false,
        "c2h_success": options.c2h_success,
        "sock_priority": options.sock_priority,
        "abort_timeout_sec": options.abort_timeout_sec,
        "ack_timeout": 0,
        "data_wr_pool_size": 0,
        "disable_command_passthru": false,
        "kas": options.kas,
        "min_kato": options.min_kato_ms
    })
}

pub(super) fn get_transports(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let trtype = params.optional_string("trtype")?;
        take_tgt_name(&mut params)?;
        params.finish()?;
        let transport = target.nvmf.transport();
        if let Some(trtype) = trtype
            && (!trtype.eq_ignore_ascii_case("tcp") || transport.is_none())
        {
            return Err(RpcError::errno(libc::ENODEV, format!("transport {trtype} not found")));
        }
        Ok(Value::Array(transport.iter().map(transport_json).collect()))
    })
}

pub(super) fn create_subsystem(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let nqn = params.string("nqn")?;
        take_tgt_name(&mut params)?;
        let defaults = SubsystemSettings::default();
        let serial_number =
            params.optional_string("serial_number")?.unwrap_or(defaults.serial_number);
        let model_number = params.optional_string("model_number")?.unwrap_or(defaults.model_number);
        if serial_number.len() > 20
            || !serial_number.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(RpcError::invalid_params(
                "serial_number: at most 20 printable ASCII characters",
            ));
        }
        if model_number.len() > 40
            || !model_number.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(RpcError::invalid_params(
                "model_number: at most 40 printable ASCII characters",
            ));
        }
        let max_namespaces = match params.optional_u32("max_namespaces")? {
            None | Some(0) => defaults.max_namespaces,
            Some(count) => count,
        };
        let namespaces_max = crate::limits::NVMF_NAMESPACES_MAX as u32;
        if max_namespaces > namespaces_max {
            return Err(RpcError::invalid_params(format!(
                "max_namespaces: at most {namespaces_max}"
            )));
        }
        let cntlid = |params: &mut Params, key: &str, default: u16| -> Result<u16, RpcError> {
            match params.optional_u32(key)? {
                None => Ok(default),
                Some(value) if (1..=0xFFEF).contains(&value) => Ok(value as u16),
                Some(_) => Err(RpcError::invalid_params(format!("{key}: must be 1 to 65519"))),
            }
        };
        let min_cntlid = cntlid(&mut params, "min_cntlid", defaults.min_cntlid)?;
        let max_cntlid = cntlid(&mut params, "max_cntlid", defaults.max_cntlid)?;
        if min_cntlid > max_cntlid {
            return Err(RpcError::invalid_params("min_cntlid: must not exceed max_cntlid"));
        }
        let dmrsl = params.optional_u32("dmrsl")?.unwrap_or(defaults.dmrsl);
        let wzsl = match params.optional_u32("wzsl")? {
            None => defaults.wzsl,
            Some(value) => u8::try_from(value)
                .map_err(|_| RpcError::invalid_params("wzsl: expected 0 to 255"))?,
        };
        let settings = SubsystemSettings {
            serial_number,
            model_number,
            allow_any_host: params.optional_bool("allow_any_host")?.unwrap_or(false),
            max_namespaces,
            min_cntlid,
            max_cntlid,
            dmrsl,
            wzsl,
            ..defaults
        };
        refuse_if(&mut params, "ana_reporting", "ANA", falsy)?;
        refuse_if(&mut params, "passthrough", "NVMe passthrough", falsy)?;
        refuse_if(&mut params, "enable_nssr", "NVM subsystem reset", falsy)?;
        params.accept("admin_label", "expected a string", Value::is_string)?;
        for key in ["max_discard_size_kib", "max_write_zeroes_size_kib"] {
            params.accept(key, "expected an unsigned integer", Value::is_u64)?;
        }
        params.finish()?;
        target.nvmf.create_subsystem(&nqn, settings)?;
        Ok(json!(true))
    })
}

pub(super) fn delete_subsystem(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let nqn = params.string("nqn")?;
        take_tgt_name(&mut params)?;
        params.finish()?;
        target.nvmf.delete_subsystem(&target.runtime, &nqn)?;
        Ok(json!(true))
    })
}

pub(super) fn add_ns(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let nqn = params.string("nqn")?;
        take_tgt_name(&mut params)?;
        let namespace = params
            .optional_object("namespace")?
            .ok_or_else(|| RpcError::invalid_params("namespace: missing required parameter"))?;
        let mut ns = Params::new(Some(Value::Object(namespace)))?;
        let bdev_name = ns.string("bdev_name").map_err(prefixed("namespace."))?;
        let nsid = ns.optional_u32("nsid").map_err(prefixed("namespace."))?.filter(|n| *n != 0);
        let uuid = ns.optional_uuid("uuid").map_err(prefixed("namespace."))?;
        let nguid = match ns.optional_string("nguid").map_err(prefixed("namespace."))? {
            None => None,
            Some(text) => Some(parse_hex_id::<16>(&text).ok_or_else(|| {
                RpcError::invalid_params("namespace.nguid: expected 32 hexadecimal digits")
            })?),
        };
        let eui64 = match ns.optional_string("eui64").map_err(prefixed("namespace."))? {
            None => None,
            Some(text) => Some(parse_hex_id::<8>(&text).ok_or_else(|| {
                RpcError::invalid_params("namespace.eui64: expected 16 hexadecimal digits")
            })?),
        };
        // Without ANA the group ID has no meaning; SPDK saves it only with ANA reporting.
        ns.accept("anagrpid", "expected an unsigned integer", Value::is_u64)
            .map_err(prefixed("namespace."))?;
        refuse_if(&mut ns, "no_auto_visible", "per-host namespace visibility", falsy)
            .map_err(prefixed("namespace."))?;
        refuse_if(&mut ns, "ptpl_file", "persistent reservations", Value::is_null)
            .map_err(prefixed("namespace."))?;
        ns.accept("hide_metadata", "expected a boolean", Value::is_boolean)
            .map_err(prefixed("namespace."))?;
        ns.finish().map_err(prefixed("namespace."))?;
        refuse_if(&mut params, "no_auto_visible", "per-host namespace visibility", falsy)?;
        params.finish()?;
        let bdev = target.bdevs.get(&bdev_name)?;
        if !bdev.info().block_size_bytes.is_power_of_two() || bdev.info().block_size_bytes < 512 {
            return Err(NvmfError::Invalid(
                "namespace.bdev_name",
                format!("{bdev_name}: NVMe needs a power-of-two block size of 512 or more"),
            )
            .into());
        }
        let ids = NamespaceIds { nsid, uuid, nguid, eui64 };
        let nsid = target.nvmf.add_namespace(&target.runtime, &nqn, &bdev, ids)?;
        Ok(json!(nsid))
    })
}

/// Prefixes a parameter error's message (`namespace.bdev_name: ...`).
fn prefixed(prefix: &'static str) -> impl Fn(RpcError) -> RpcError {
    move |e| RpcError::new(e.code, format!("{prefix}{}", e.message))
}

pub(super) fn remove_ns(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let nqn = params.string("nqn")?;
        let nsid = params.u32("nsid")?;
        take_tgt_name(&mut params)?;
        params.finish()?;
        target.nvmf.remove_namespace(&target.runtime, &nqn, nsid)?;
        Ok(json!(true))
    })
}

/// `listen_address` (or a referral's `address`): trtype TCP, IPv4 or IPv6, an address, a port.
fn listen_address(params: &mut Params, key: &str) -> Result<ListenAddress, RpcError> {
    let object = params
        .optional_object(key)?
        .ok_or_else(|| RpcError::invalid_params(format!("{key}: missing required parameter")))?;
    let mut address = Params::new(Some(Value::Object(object)))?;
    let prefix = if key == "listen_address" { "listen_address." } else { "address." };
    let trtype = address.string("trtype").map_err(prefixed(prefix))?;
    if !trtype.eq_ignore_ascii_case("tcp") {
        return Err(NvmfError::Trtype(trtype).into());
    }
    let adrfam = address.optional_string("adrfam").map_err(prefixed(prefix))?;
    let adrfam = match adrfam.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("ipv4") => "IPv4",
        Some("ipv6") => "IPv6",
        Some(other) => {
            return Err(RpcError::invalid_params(format!(
                "{prefix}adrfam: {other} is not an IP address family"
            )));
        }
    };
    let traddr = address.string("traddr").map_err(prefixed(prefix))?;
    let trsvcid = address
        .optional_string("trsvcid")
        .map_err(prefixed(prefix))?
        .ok_or_else(|| RpcError::invalid_params(format!("{prefix}trsvcid: required for TCP")))?;
    address.finish().map_err(prefixed(prefix))?;
    let address = ListenAddress { adrfam: adrfam.to_string(), traddr, trsvcid };
    address.socket_address()?;
    Ok(address)
}

pub(super) fn add_listener(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let nqn = params.string("nqn")?;
        take_tgt_name(&mut params)?;
        let address = listen_address(&mut params, "listen_address")?;
        refuse_if(&mut params, "secure_channel", "TLS (secure_channel)", falsy)?;
        refuse_if(&mut params, "ana_state", "ANA", Value::is_null)?;
        params.accept("sock_impl", "expected a string", Value::is_string)?;
        params.accept("numa_id", "expected an integer", Value::is_i64)?;
        params.finish()?;
        target.nvmf.add_listener(&target.runtime, &nqn, address)?;
        Ok(json!(true))
    })
}

pub(super) fn remove_listener(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let nqn = params.string("nqn")?;
        take_tgt_name(&mut params)?;
        let address = listen_address(&mut params, "listen_address")?;
        params.finish()?;
        target.nvmf.remove_listener(&target.runtime, &nqn, &address)?;
        Ok(json!(true))
    })
}

pub(super) fn add_host(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let nqn = params.string("nqn")?;
        let host = params.string("host")?;
        take_tgt_name(&mut params)?;
        refuse_if(&mut params, "psk", "TLS (psk)", Value::is_null)?;
        refuse_if(&mut params, "dhchap_key", "DH-HMAC-CHAP", Value::is_null)?;
        refuse_if(&mut params, "dhchap_ctrlr_key", "DH-HMAC-CHAP", Value::is_null)?;
        params.finish()?;
        target.nvmf.add_host(&nqn, &host)?;
        Ok(json!(true))
    })
}

pub(super) fn remove_host(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let nqn = params.string("nqn")?;
        let host = params.string("host")?;
        take_tgt_name(&mut params)?;
        params.accept("timeout_ms", "expected an unsigned integer", Value::is_u64)?;
        params.finish()?;
        target.nvmf.remove_host(&target.runtime, &nqn, &host)?;
        Ok(json!(true))
    })
}

pub(super) fn allow_any_host(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let nqn = params.string("nqn")?;
        let allow = params.optional_bool("allow_any_host")?.ok_or_else(|| {
            RpcError::invalid_params("allow_any_host: missing required parameter")
        })?;
        take_tgt_name(&mut params)?;
        params.finish()?;
        target.nvmf.allow_any_host(&nqn, allow)?;
        Ok(json!(true))
    })
}

fn address_json(address: &ListenAddress) -> Value {
    json!({
        "trtype": "TCP",
        "adrfam": address.adrfam,
        "traddr": address.traddr,
        "trsvcid": address.trsvcid
    })
}

/// One subsystem in `nvmf_get_subsystems`' schema.
fn subsystem_json(subsystem: &Subsystem) -> Value {
    let settings = subsystem.settings();
    let mut object = Map::new();
    object.insert("nqn".into(), json!(subsystem.nqn));
    let subtype = match subsystem.kind {
        SubsystemKind::Discovery => "Discovery",
        SubsystemKind::Nvme => "NVMe",
    };
    object.insert("subtype".into(), json!(subtype));
    let listeners: Vec<Value> = settings.listeners.iter().map(address_json).collect();
    object.insert("listen_addresses".into(), json!(listeners));
    object.insert("allow_any_host".into(), json!(settings.allow_any_host));
    let hosts: Vec<Value> = settings.hosts.iter().map(|h| json!({"nqn": h})).collect();
    object.insert("hosts".into(), json!(hosts));
    if subsystem.kind == SubsystemKind::Nvme {
        object.insert("serial_number".into(), json!(settings.serial_number));
        object.insert("model_number".into(), json!(settings.model_number));
        object.insert("max_namespaces".into(), json!(settings.max_namespaces));
        object.insert("passthrough".into(), json!(false));
        object.insert("min_cntlid".into(), json!(settings.min_cntlid));
        object.insert("max_cntlid".into(), json!(settings.max_cntlid));
        object.insert("dmrsl".into(), json!(settings.dmrsl));
        object.insert("wzsl".into(), json!(settings.wzsl));
        let namespaces: Vec<Value> = subsystem
            .namespaces()
            .iter()
            .map(|ns| {
                let mut entry = Map::new();
                entry.insert("nsid".into(), json!(ns.nsid));
                entry.insert("bdev_name".into(), json!(ns.bdev().name()));
                entry.insert("name".into(), json!(ns.bdev().name()));
                entry.insert("nguid".into(), json!(hex_id(&ns.nguid)));
                if let Some(eui64) = ns.eui64 {
                    entry.insert("eui64".into(), json!(hex_id(&eui64)));
                }
                entry.insert("uuid".into(), json!(ns.uuid.to_string()));
                Value::Object(entry)
            })
            .collect();
        object.insert("namespaces".into(), json!(namespaces));
    }
    Value::Object(object)
}

pub(super) fn get_subsystems(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let nqn = params.optional_string("nqn")?;
        take_tgt_name(&mut params)?;
        params.finish()?;
        let subsystems = match nqn {
            Some(nqn) => vec![target.nvmf.subsystem(&nqn)?],
            None => target.nvmf.subsystems(),
        };
        Ok(Value::Array(subsystems.iter().map(|s| subsystem_json(s)).collect()))
    })
}

/// The subsystem a `nqn*`-only query names (controllers, queue pairs, listeners).
fn query_subsystem(target: &Target, params: &mut Params) -> Result<Arc<Subsystem>, RpcError> {
    let nqn = params.string("nqn")?;
    take_tgt_name(params)?;
    Ok(target.nvmf.subsystem(&nqn)?)
}

pub(super) fn get_controllers(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let subsystem = query_subsystem(target, &mut params)?;
        params.finish()?;
        let controllers: Vec<Value> = subsystem
            .controllers()
            .iter()
            .filter(|c| !c.is_failed())
            .map(|c| {
                json!({
                    "cntlid": c.cntlid,
                    "cntrltype": if subsystem.is_discovery() { "discovery" } else { "io" },
                    "hostnqn": c.host_nqn,
                    "hostid": uuid::Uuid::from_bytes(c.host_id).to_string(),
                    "num_io_qpairs": c.queues().iter().filter(|q| q.qid != 0).count()
                })
            })
            .collect();
        Ok(Value::Array(controllers))
    })
}

pub(super) fn get_qpairs(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let subsystem = query_subsystem(target, &mut params)?;
        params.finish()?;
        let mut qpairs = Vec::new();
        for controller in subsystem.controllers().iter().filter(|c| !c.is_failed()) {
            for queue in controller.queues() {
                let mut entry = json!({
                    "cntlid": controller.cntlid,
                    "qid": queue.qid,
                    "state": "enabled",
                    "thread": format!("reactor_{}", queue.core),
                    "hostnqn": controller.host_nqn,
                    "listen_address": address_json(&queue.listen),
                });
                if let Some(peer) = queue.peer {
                    entry["peer_address"] = json!({
                        "trtype": "TCP",
                        "adrfam": if peer.is_ipv6() { "IPv6" } else { "IPv4" },
                        "traddr": peer.ip().to_string(),
                        "trsvcid": peer.port().to_string()
                    });
                }
                qpairs.push(entry);
            }
        }
        Ok(Value::Array(qpairs))
    })
}

pub(super) fn get_listeners(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let subsystem = query_subsystem(target, &mut params)?;
        params.finish()?;
        let listeners: Vec<Value> = subsystem
            .settings()
            .listeners
            .iter()
            .map(|address| json!({"address": address_json(address)}))
            .collect();
        Ok(Value::Array(listeners))
    })
}

/// The `nvmf` subsystem's entries for `framework_get_config` / `save_config`, in SPDK's
/// order and with its keys: the transport, then subsystems, hosts, namespaces and listeners.
pub fn config_entries(target: &Target) -> Vec<Value> {
    let mut entries = Vec::new();
    let Some(transport) = target.nvmf.transport() else { return entries };
    entries.push(json!({"method": "nvmf_create_transport", "params": transport_json(&transport)}));
    let subsystems = target.nvmf.subsystems();
    let nvme = || subsystems.iter().filter(|s| s.kind == SubsystemKind::Nvme);
    for subsystem in nvme() {
        let settings = subsystem.settings();
        entries.push(json!({
            "method": "nvmf_create_subsystem",
            "params": {
                "nqn": subsystem.nqn,
                "allow_any_host": settings.allow_any_host,
                "serial_number": settings.serial_number,
                "model_number": settings.model_number,
                "max_namespaces": settings.max_namespaces,
                "min_cntlid": settings.min_cntlid,
                "max_cntlid": settings.max_cntlid,
                "ana_reporting": false,
                "dmrsl": settings.dmrsl,
                "wzsl": settings.wzsl,
                "passthrough": false,
                "enable_nssr": false
            }
        }));
    }
    for subsystem in nvme() {
        for host in subsystem.settings().hosts {
            entries.push(json!({
                "method": "nvmf_subsystem_add_host",
                "params": {"nqn": subsystem.nqn, "host": host}
            }));
        }
    }
    for subsystem in nvme() {
        for ns in subsystem.namespaces() {
            let mut namespace = Map::new();
            namespace.insert("nsid".into(), json!(ns.nsid));
            namespace.insert("bdev_name".into(), json!(ns.bdev().name()));
            namespace.insert("nguid".into(), json!(hex_id(&ns.nguid)));
            if let Some(eui64) = ns.eui64 {
                namespace.insert("eui64".into(), json!(hex_id(&eui64)));
            }
            namespace.insert("uuid".into(), json!(ns.uuid.to_string()));
            namespace.insert("no_auto_visible".into(), json!(false));
            entries.push(json!({
                "method": "nvmf_subsystem_add_ns",
                "params": {"nqn": subsystem.nqn, "namespace": namespace}
            }));
        }
    }
    for subsystem in &subsystems {
        for address in subsystem.settings().listeners {
            entries.push(json!({
                "method": "nvmf_subsystem_add_listener",
                "params": {
                    "nqn": subsystem.nqn,
                    "listen_address": address_json(&address),
                    "secure_channel": false
                }
            }));
        }
    }
    entries
}
