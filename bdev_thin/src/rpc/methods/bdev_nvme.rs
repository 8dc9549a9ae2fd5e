//! SPDK's `bdev_nvme_*` methods for the NVMe/TCP initiator: `bdev_nvme_attach_controller`
//! (answered once the namespaces' bdevs are registered and examined, with their names, as
//! SPDK answers), `bdev_nvme_detach_controller` and `bdev_nvme_get_controllers`, the saved
//! config entry, and the glue that registers and removes a controller's namespace bdevs when
//! it says so ([`ControllerEvents`]).
//!
//! Decoding takes every key SPDK's own save writes; it refuses by name what asks for what we
//! do not have (TLS `psk`, DH-HMAC-CHAP keys, protection information checks).

use std::sync::{Arc, Mutex, Weak};

use serde_json::{Value, json};

use super::{Reply, reply_with};
use crate::backend::nvme_tcp::options::DEFAULT_TRSVCID;
use crate::backend::nvme_tcp::{
    AttachOptions, ControllerEvents, NvmeController, NvmeNamespace, ReconnectPolicy,
};
use crate::backend::{BaseDevice, NvmeDevice};
use crate::bdev::{Bdev, BdevError, Device};
use crate::nvme::tcp::Digests;
use crate::rpc::RpcError;
use crate::rpc::params::Params;
use crate::target::Target;

fn invalid(message: impl Into<String>) -> RpcError {
    RpcError::invalid_params(message)
}

/// Decodes `bdev_nvme_attach_controller`'s parameters into checked options and `max_bdevs`.
fn decode_attach(params: &mut Params, cores: usize) -> Result<(AttachOptions, usize), RpcError> {
    let name = params.string("name")?;
    let trtype = params.string("trtype")?;
    let traddr = params.string("traddr")?;
    let adrfam = params.optional_string("adrfam")?;
    let trsvcid = params.optional_string("trsvcid")?;
    let subnqn = params.optional_string("subnqn")?;
    let hostnqn = params.optional_string("hostnqn")?;
    let hostaddr = params.optional_string("hostaddr")?;
    let hostsvcid = params.optional_string("hostsvcid")?;
    params.optional_string("priority")?;
    let hdgst = params.optional_bool("hdgst")?.unwrap_or(false);
    let ddgst = params.optional_bool("ddgst")?.unwrap_or(false);
    let fabrics_connect_timeout_us = params.optional_u64("fabrics_connect_timeout_us")?;
    let multipath = params.optional_string("multipath")?;
    let num_io_queues = params.optional_u32("num_io_queues")?;
    let ctrlr_loss = params.optional_i64("ctrlr_loss_timeout_sec")?;
    let reconnect_delay_sec = params.optional_u32("reconnect_delay_sec")?.unwrap_or(0);
    let fast_io_fail_timeout_sec = params.optional_u32("fast_io_fail_timeout_sec")?.unwrap_or(0);
    let max_bdevs = params.optional_u32("max_bdevs")?;
    let disable_sq_flow_control = params.optional_bool("disable_sq_flow_control")?;
    params.optional_bool("allow_unrecognized_csi")?;
    params.optional_object("multipath_opts")?;
    params.accept("prchk_reftag", "protection information is not supported", |v| {
        v.as_bool() == Some(false)
    })?;
    params.accept("prchk_guard", "protection information is not supported", |v| {
        v.as_bool() == Some(false)
    })?;
    for key in ["psk", "dhchap_key", "dhchap_ctrlr_key"] {
        if params.has(key) {
            let what = if key == "psk" { "TLS (a pre-shared key)" } else { "DH-HMAC-CHAP" };
            return Err(invalid(format!("{key}: {what} is not supported by this initiator")));
        }
        params.optional_string(key)?;
    }
    if !trtype.eq_ignore_ascii_case("tcp") {
        return Err(invalid(format!("trtype: {trtype} is not supported (only TCP)")));
    }
    if name.is_empty() || name.contains('/') || name.len() > 200 {
        return Err(invalid(format!("name: '{name}' is not a valid controller name")));
    }
    if max_bdevs == Some(0) {
        return Err(invalid("max_bdevs: cannot be zero"));
    }
    if let Some(mode) = &multipath
        && !matches!(mode.as_str(), "disable" | "failover" | "multipath")
    {
        return Err(invalid("multipath: expected disable, failover or multipath"));
    }
    let adrfam = adrfam.unwrap_or_else(|| {
        if traddr.contains(':') { "IPv6".to_string() } else { "IPv4".to_string() }
    });
    let trsvcid = trsvcid.unwrap_or_else(|| DEFAULT_TRSVCID.to_string());
    let address = AttachOptions::resolve(&adrfam, &traddr, &trsvcid).map_err(|e| invalid(e.0))?;
    let subnqn = subnqn.ok_or_else(|| invalid("subnqn: missing required parameter for TCP"))?;
    AttachOptions::check_nqn("subnqn", &subnqn).map_err(|e| invalid(e.0))?;
    let (hostnqn, host_id) = match hostnqn {
        Some(nqn) => {
            AttachOptions::check_nqn("hostnqn", &nqn).map_err(|e| invalid(e.0))?;
            let id = AttachOptions::host_id_for(&nqn);
            (nqn, id)
        }
        None => AttachOptions::generated_host(),
    };
    let ctrlr_loss_timeout_sec = match ctrlr_loss {
        None => 0,
        Some(value) => i32::try_from(value)
            .map_err(|_| invalid("ctrlr_loss_timeout_sec: expected a 32-bit integer"))?,
    };
    let reconnect =
        ReconnectPolicy { ctrlr_loss_timeout_sec, reconnect_delay_sec, fast_io_fail_timeout_sec };
    reconnect.check().map_err(invalid)?;
    let given_timeout = fabrics_connect_timeout_us.unwrap_or(0);
    let options = AttachOptions {
        name,
        adrfam,
        traddr,
        trsvcid,
        address,
        subnqn,
        hostnqn,
        host_id,
        digests: Digests { header: hdgst, data: ddgst },
        num_io_queues: num_io_queues.unwrap_or(cores as u32).max(1),
        reconnect,
        connect_timeout_us: if given_timeout == 0 {
            crate::limits::NVME_CONNECT_TIMEOUT_US_DEFAULT
        } else {
            given_timeout
        },
        fabrics_connect_timeout_us: given_timeout,
        sq_flow_control: !disable_sq_flow_control.unwrap_or(false),
        hostaddr,
        hostsvcid,
        multipath,
    };
    Ok((options, max_bdevs.unwrap_or(128) as usize))
}

/// Registers the bdev of `namespace`.
fn register_namespace(
    target: &Arc<Target>,
    namespace: &Arc<NvmeNamespace>,
) -> Result<Arc<Bdev>, BdevError> {
    let device = Device::Base(BaseDevice::Nvme(NvmeDevice(Arc::clone(namespace))));
    let bdev = Bdev::new(namespace.bdev_name(), namespace.uuid, device);
    target.bdevs.register(Arc::clone(&bdev))?;
    Ok(bdev)
}

/// Examines `bdevs` (pools on them come back) on a thread of its own: examine reads the
/// bdevs synchronously, which an NVMe bdev serves only off its reactors. `then` runs after.
fn examine_off_reactor(
    target: &Arc<Target>,
    bdevs: Vec<Arc<Bdev>>,
    then: impl FnOnce() + Send + 'static,
) {
    target.begin_examine();
    let target = Arc::clone(target);
    let spawned = std::thread::Builder::new().name("nvme_examine".into()).spawn({
        let target = Arc::clone(&target);
        move || {
            for bdev in bdevs.iter().filter(|_| target.auto_examine()) {
                target.examine(bdev);
            }
            then();
            target.end_examine();
        }
    });
    if let Err(e) = spawned {
        eprintln!("nvme: cannot start the examine thread: {e}");
        target.end_examine();
    }
}

/// What a controller's events do on a target.
struct TargetEvents {
    target: Weak<Target>,
    reply: Mutex<Option<Reply>>,
    max_bdevs: usize,
}

impl ControllerEvents for TargetEvents {
    fn attached(&self, controller: &Arc<NvmeController>, result: Result<(), String>) {
        let reply = self.reply.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(target) = self.target.upgrade() else { return };
        if let Err(problem) = result {
            target.nvme_controllers.remove(controller);
            if let Some(reply) = reply {
                reply(Err(RpcError::errno(libc::EIO, format!("{}: {problem}", controller.name()))));
            }
            return;
        }
        let mut bdevs = Vec::new();
        for namespace in controller.namespaces().iter().take(self.max_bdevs) {
            match register_namespace(&target, namespace) {
                Ok(bdev) => bdevs.push(bdev),
                Err(e) => {
                    for bdev in &bdevs {
                        let _ = target.bdevs.unregister(bdev.name());
                    }
                    target.nvme_controllers.remove(controller);
                    controller.detach(Box::new(|_| {}));
                    if let Some(reply) = reply {
                        reply(Err(e.into()));
                    }
                    return;
                }
            }
        }
        let names: Vec<Value> = bdevs.iter().map(|b| json!(b.name())).collect();
        examine_off_reactor(&target, bdevs, move || {
            if let Some(reply) = reply {
                reply(Ok(Value::Array(names)));
            }
        });
    }

    fn namespace_added(&self, namespace: &Arc<NvmeNamespace>) {
        let Some(target) = self.target.upgrade() else { return };
        match register_namespace(&target, namespace) {
            Ok(bdev) => {
                eprintln!("nvme: namespace {} added as {}", namespace.nsid, bdev.name());
                examine_off_reactor(&target, vec![bdev], || {});
            }
            Err(e) => eprintln!("nvme: namespace {}: {e}", namespace.nsid),
        }
    }

    fn namespace_removed(&self, namespace: &Arc<NvmeNamespace>) {
        let Some(target) = self.target.upgrade() else { return };
        let name = namespace.bdev_name();
        // The controller leaves the list at once: an attach of the same name may follow.
        if namespace.controller.state() == crate::backend::nvme_tcp::ControllerState::Removed {
            target.nvme_controllers.remove(&namespace.controller);
        }
        let (closing, base) = (Arc::clone(&target), name.clone());
        target.thin_pools.close_pools_on(&base, move || match closing.bdevs.unregister(&name) {
            Ok(_) => eprintln!("nvme: {name} removed"),
            Err(e) => {
                eprintln!("nvme: {name} is gone but stays registered, failing its IO: {e}")
            }
        });
    }
}

pub(super) fn attach_controller(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let cores = target.runtime.cores().len();
    let decoded = decode_attach(&mut params, cores).and_then(|decoded| {
        params.finish()?;
        Ok(decoded)
    });
    let (options, max_bdevs) = match decoded {
        Ok(decoded) => decoded,
        Err(e) => return reply(Err(e)),
    };
    if target.nvme_controllers.find(&options.name).is_some() {
        return reply(Err(RpcError::errno(
            libc::EEXIST,
            format!("a controller named {} already exists", options.name),
        )));
    }
    let events = Arc::new(TargetEvents {
        target: Arc::downgrade(target),
        reply: Mutex::new(Some(reply)),
        max_bdevs: max_bdevs.max(1),
    });
    let runtime = target.runtime.clone();
    match NvmeController::attach(options, runtime.clone(), runtime.first_core(), events.clone()) {
        Ok(controller) => target.nvme_controllers.add(controller),
        Err(e) => {
            if let Some(reply) = events.reply.lock().unwrap_or_else(|p| p.into_inner()).take() {
                reply(Err(RpcError::errno(libc::EIO, e)));
            }
        }
    }
}

pub(super) fn detach_controller(target: &Arc<Target>, mut params: Params, reply: Reply) {
    let prepared = (|| {
        let name = params.string("name")?;
        let trtype = params.optional_string("trtype")?;
        let traddr = params.optional_string("traddr")?;
        let adrfam = params.optional_string("adrfam")?;
        let trsvcid = params.optional_string("trsvcid")?;
        let subnqn = params.optional_string("subnqn")?;
        params.optional_string("hostaddr")?;
        params.optional_string("hostsvcid")?;
        params.finish()?;
        let controller = target
            .nvme_controllers
            .find(&name)
            .ok_or_else(|| RpcError::errno(libc::ENODEV, format!("no controller named {name}")))?;
        let options = &controller.options;
        let differs = |given: &Option<String>, ours: &str| {
            given.as_deref().is_some_and(|g| !g.eq_ignore_ascii_case(ours))
        };
        if differs(&trtype, "TCP")
            || differs(&traddr, &options.traddr)
            || differs(&adrfam, &options.adrfam)
            || differs(&trsvcid, &options.trsvcid)
            || differs(&subnqn, &options.subnqn)
        {
            return Err(RpcError::errno(libc::ENODEV, format!("{name} has no such path")));
        }
        let names: Vec<String> = controller.namespaces().iter().map(|n| n.bdev_name()).collect();
        for bdev in names.iter().filter_map(|n| target.bdevs.get(n).ok()) {
            if let Some(claim) = bdev.claim() {
                return Err(RpcError::errno(
                    libc::EBUSY,
                    format!("{} is claimed by {}", bdev.name(), claim.module),
                ));
            }
            if bdev.open_count() > 0 {
                return Err(RpcError::errno(libc::EBUSY, format!("{} is open", bdev.name())));
            }
        }
        for name in &names {
            match target.bdevs.unregister(name) {
                Ok(_) | Err(BdevError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        target.nvme_controllers.remove(&controller);
        Ok(controller)
    })();
    match prepared {
        Ok(controller) => controller.detach(Box::new(move |result| {
            reply(result.map(|()| json!(true)).map_err(|e| RpcError::errno(libc::EIO, e)))
        })),
        Err(e) => reply(Err(e)),
    }
}

fn trid_json(options: &AttachOptions) -> Value {
    json!({
        "trtype": "TCP",
        "adrfam": adrfam_name(&options.adrfam),
        "traddr": options.traddr,
        "trsvcid": options.trsvcid,
        "subnqn": options.subnqn,
    })
}

/// SPDK's spelling of the address family.
fn adrfam_name(adrfam: &str) -> &'static str {
    if adrfam.eq_ignore_ascii_case("ipv6") { "IPv6" } else { "IPv4" }
}

pub(super) fn get_controllers(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let name = params.optional_string("name")?;
        params.finish()?;
        let controllers = match &name {
            Some(name) => vec![target.nvme_controllers.find(name).ok_or_else(|| {
                RpcError::errno(libc::EINVAL, format!("no controller named {name}"))
            })?],
            None => target.nvme_controllers.all(),
        };
        Ok(Value::Array(
            controllers
                .iter()
                .map(|controller| {
                    let options = &controller.options;
                    let cntlid = controller.info().map_or(0, |i| i.cntlid);
                    let mut host = json!({"nqn": options.hostnqn, "addr": "", "svcid": ""});
                    if let Some(addr) = &options.hostaddr {
                        host["addr"] = json!(addr);
                    }
                    if let Some(svcid) = &options.hostsvcid {
                        host["svcid"] = json!(svcid);
                    }
                    json!({
                        "name": controller.name(),
                        "ctrlrs": [{
                            "state": controller.state().name(),
                            "trid": trid_json(options),
                            "cntlid": cntlid,
                            "host": host,
                        }]
                    })
                })
                .collect(),
        ))
    })
}

/// The call that attaches a controller again, with the keys (and order) SPDK's save writes.
pub(crate) fn attach_entry(options: &AttachOptions) -> Value {
    let mut params = serde_json::Map::new();
    params.insert("name".into(), json!(options.name));
    params.insert("trtype".into(), json!("TCP"));
    params.insert("adrfam".into(), json!(adrfam_name(&options.adrfam)));
    params.insert("traddr".into(), json!(options.traddr));
    params.insert("trsvcid".into(), json!(options.trsvcid));
    params.insert("subnqn".into(), json!(options.subnqn));
    params.insert("prchk_reftag".into(), json!(false));
    params.insert("prchk_guard".into(), json!(false));
    let reconnect = options.reconnect;
    params.insert("ctrlr_loss_timeout_sec".into(), json!(reconnect.ctrlr_loss_timeout_sec));
    params.insert("reconnect_delay_sec".into(), json!(reconnect.reconnect_delay_sec));
    params.insert("fast_io_fail_timeout_sec".into(), json!(reconnect.fast_io_fail_timeout_sec));
    params.insert("hostnqn".into(), json!(options.hostnqn));
    params.insert("hdgst".into(), json!(options.digests.header));
    params.insert("ddgst".into(), json!(options.digests.data));
    if let Some(addr) = &options.hostaddr {
        params.insert("hostaddr".into(), json!(addr));
    }
    if let Some(svcid) = &options.hostsvcid {
        params.insert("hostsvcid".into(), json!(svcid));
    }
    if let Some(multipath) = &options.multipath {
        params.insert("multipath".into(), json!(multipath));
    }
    params.insert("fabrics_connect_timeout_us".into(), json!(options.fabrics_connect_timeout_us));
    params.insert("num_io_queues".into(), json!(options.num_io_queues));
    params.insert("disable_sq_flow_control".into(), json!(!options.sq_flow_control));
    json!({"method": "bdev_nvme_attach_controller", "params": Value::Object(params)})
}

/// `driver_specific` of a namespace bdev in `bdev_get_bdevs` (SPDK's `nvme` array, in part).
pub(crate) fn driver_specific(device: &NvmeDevice) -> Value {
    let namespace = &device.0;
    let controller = &namespace.controller;
    let info = controller.info();
    let ctrlr_data = info.as_ref().map_or(json!({}), |info| {
        json!({
            "cntlid": info.cntlid,
            "vendor_id": format!("0x{:04x}", info.identity.vid),
            "model_number": info.identity.model,
            "serial_number": info.identity.serial,
            "firmware_revision": info.identity.firmware,
            "subnqn": info.identity.subnqn,
        })
    });
    let version = info.as_ref().map_or(0, |i| i.version);
    json!({
        "nvme": [{
            "trid": trid_json(&controller.options),
            "ctrlr_data": ctrlr_data,
            "vs": {"nvme_version": format!("{}.{}", version >> 16, (version >> 8) & 0xFF)},
            "ns_data": {"id": namespace.nsid},
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(value: Value) -> Result<AttachOptions, RpcError> {
        let mut params = Params::new(Some(value)).unwrap();
        let (options, _) = decode_attach(&mut params, 2)?;
        params.finish()?;
        Ok(options)
    }

    fn base() -> Value {
        json!({"name": "Nvme0", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "4420",
               "subnqn": "nqn.2016-06.io.spdk:cnode1"})
    }

    #[test]
    fn takes_what_spdk_saves_and_refuses_what_we_lack() {
        let options = decode(base()).unwrap();
        assert_eq!(options.adrfam, "IPv4");
        assert_eq!(options.num_io_queues, 2);
        assert!(options.sq_flow_control);
        let mut saved = base();
        for (key, value) in [
            ("prchk_reftag", json!(false)),
            ("prchk_guard", json!(false)),
            ("ctrlr_loss_timeout_sec", json!(10)),
            ("reconnect_delay_sec", json!(2)),
            ("fast_io_fail_timeout_sec", json!(4)),
            (
                "hostnqn",
                json!("nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"),
            ),
            ("hdgst", json!(true)),
            ("ddgst", json!(false)),
            ("multipath", json!("multipath")),
            ("fabrics_connect_timeout_us", json!(0)),
            ("num_io_queues", json!(1024)),
            ("disable_sq_flow_control", json!(false)),
            ("hostaddr", json!("127.0.0.1")),
            ("allow_unrecognized_csi", json!(false)),
        ] {
            saved[key] = value;
        }
        let options = decode(saved.clone()).unwrap();
        assert_eq!(options.reconnect.fast_io_fail_timeout_sec, 4);
        assert_eq!(options.host_id[0], 0x11);
        assert!(options.digests.header && !options.digests.data);
        let entry = attach_entry(&options);
        assert_eq!(decode(entry["params"].clone()).unwrap().reconnect.ctrlr_loss_timeout_sec, 10);
        for (key, value, named) in [
            ("psk", json!("key0"), "psk"),
            ("dhchap_key", json!("key1"), "dhchap_key"),
            ("prchk_guard", json!(true), "prchk_guard"),
            ("trtype", json!("rdma"), "trtype"),
            ("reconnect_delay_sec", json!(3), "reconnect_delay_sec"),
            ("bogus", json!(1), "bogus"),
        ] {
            let mut params = base();
            params[key] = value;
            let error = decode(params).unwrap_err();
            assert_eq!(error.code, -32602);
            assert!(error.message.starts_with(named), "{key}: {}", error.message);
        }
    }
}
