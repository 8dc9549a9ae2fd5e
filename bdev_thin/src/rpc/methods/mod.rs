//! The method table and the framework methods. Each handler decodes its parameters strictly,
//! does its work (or sends it to the core that owns it) and replies exactly once.

mod bdev;
pub mod bdev_nvme;
pub mod framework;
pub mod nbd;
pub mod nvmf;
mod thin;

use std::sync::Arc;

use serde_json::{Value, json};

use super::RpcError;
use super::params::Params;
use crate::target::Target;

/// Where a method's answer goes; called exactly once, possibly from another core.
pub type Reply = Box<dyn FnOnce(Result<Value, RpcError>) + Send>;

type Handler = fn(&Arc<Target>, Params, Reply);

/// A method: its name, handler and subsystem (for `framework_get_config` and saved configs).
pub struct Method {
    pub name: &'static str,
    handler: Handler,
}

const fn method(name: &'static str, handler: Handler) -> Method {
    Method { name, handler }
}

/// Every method, in registration order (what `rpc_get_methods` lists).
pub static METHODS: &[Method] = &[
    method("spdk_get_version", spdk_get_version),
    method("rpc_get_methods", rpc_get_methods),
    method("framework_wait_init", framework_wait_init),
    method("framework_get_subsystems", framework::get_subsystems),
    method("framework_get_config", framework::get_config),
    method("bdev_malloc_create", bdev::malloc_create),
    method("bdev_malloc_delete", bdev::malloc_delete),
    method("bdev_null_create", bdev::null_create),
    method("bdev_null_delete", bdev::null_delete),
    method("bdev_null_resize", bdev::null_resize),
    method("bdev_uring_create", bdev::uring_create),
    method("bdev_uring_delete", bdev::uring_delete),
    method("bdev_uring_rescan", bdev::uring_rescan),
    method("bdev_get_bdevs", bdev::get_bdevs),
    method("bdev_get_iostat", bdev::get_iostat),
    method("bdev_examine", bdev::examine),
    method("bdev_nvme_attach_controller", bdev_nvme::attach_controller),
    method("bdev_nvme_detach_controller", bdev_nvme::detach_controller),
    method("bdev_nvme_get_controllers", bdev_nvme::get_controllers),
    method("bdev_wait_for_examine", bdev::wait_for_examine),
    method("bdev_thin_pool_create", thin::pool_create),
    method("bdev_thin_create", thin::create),
    method("bdev_thin_snapshot", thin::snapshot),
    method("bdev_thin_delete", thin::delete),
    method("bdev_thin_resize", thin::resize),
    method("bdev_thin_pool_grow", thin::pool_grow),
    method("bdev_thin_pool_check", thin::pool_check),
    method("bdev_thin_pool_delete", thin::pool_delete),
    method("bdev_thin_get_pools", thin::get_pools),
    method("bdev_thin_get_volumes", thin::get_volumes),
    method("nbd_server_start", nbd::server_start),
    method("nbd_server_stop", nbd::server_stop),
    method("nbd_export_add", nbd::export_add),
    method("nbd_export_remove", nbd::export_remove),
    method("nbd_get_exports", nbd::get_exports),
    method("nbd_start_disk", nbd::kernel_disk),
    method("nbd_stop_disk", nbd::kernel_disk),
    method("nbd_get_disks", nbd::get_disks),
    method("nvmf_create_transport", nvmf::create_transport),
    method("nvmf_get_transports", nvmf::get_transports),
    method("nvmf_create_subsystem", nvmf::create_subsystem),
    method("nvmf_delete_subsystem", nvmf::delete_subsystem),
    method("nvmf_subsystem_add_ns", nvmf::add_ns),
    method("nvmf_subsystem_remove_ns", nvmf::remove_ns),
    method("nvmf_subsystem_add_listener", nvmf::add_listener),
    method("nvmf_subsystem_remove_listener", nvmf::remove_listener),
    method("nvmf_subsystem_add_host", nvmf::add_host),
    method("nvmf_subsystem_remove_host", nvmf::remove_host),
    method("nvmf_subsystem_allow_any_host", nvmf::allow_any_host),
    method("nvmf_get_subsystems", nvmf::get_subsystems),
    method("nvmf_subsystem_get_controllers", nvmf::get_controllers),
    method("nvmf_subsystem_get_qpairs", nvmf::get_qpairs),
    method("nvmf_subsystem_get_listeners", nvmf::get_listeners),
    // Option setters of SPDK modules: listed so saved configs pass the client's method check,
    // served by `call` before this table is consulted.
    method("bdev_set_options", unreachable_setter),
    method("bdev_nvme_set_options", unreachable_setter),
    method("bdev_nvme_set_hotplug", unreachable_setter),
    method("bdev_raid_set_options", unreachable_setter),
    method("bdev_iscsi_set_options", unreachable_setter),
    method("bdev_aio_set_options", unreachable_setter),
    method("bdev_lvol_set_options", unreachable_setter),
    method("nvmf_set_config", unreachable_setter),
    method("nvmf_set_max_subsystems", unreachable_setter),
    method("nvmf_set_crdt", unreachable_setter),
];

/// Option setters of SPDK modules we do not have: accepted (types checked) and ignored.
pub fn is_ignored_option_setter(method: &str) -> bool {
    (method.starts_with("bdev_") && method.ends_with("_set_options"))
        || matches!(
            method,
            "bdev_nvme_set_hotplug"
                | "nvmf_set_config"
                | "nvmf_set_max_subsystems"
                | "nvmf_set_crdt"
        )
}

pub fn find(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

/// Runs `method` with `params`; `reply` receives the result exactly once.
pub fn call(target: &Arc<Target>, method: &str, params: Option<Value>, reply: Reply) {
    if is_ignored_option_setter(method) {
        if method == "bdev_set_options" {
            bdev::set_auto_examine(target, params.as_ref());
        }
        return reply(bdev::check_option_setter(method, params));
    }
    let Some(handler) = find(method).map(|m| m.handler) else {
        return reply(Err(RpcError::method_not_found(method)));
    };
    match Params::new(params) {
        Ok(params) => handler(target, params, reply),
        Err(e) => reply(Err(e)),
    }
}

/// Runs a method from a thread that is not a reactor and waits for its answer (config loading).
pub fn call_blocking(
    target: &Arc<Target>,
    method: &str,
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    call(
        target,
        method,
        params,
        Box::new(move |result| {
            let _ = sender.send(result);
        }),
    );
    receiver.recv().unwrap_or_else(|_| {
        Err(RpcError::errno(libc::EIO, "the method was dropped without a reply"))
    })
}

/// Replies with the outcome of a synchronous handler body.
pub(crate) fn reply_with(reply: Reply, body: impl FnOnce() -> Result<Value, RpcError>) {
    reply(body())
}

fn unreachable_setter(_target: &Arc<Target>, _params: Params, reply: Reply) {
    reply(Err(RpcError::errno(libc::EINVAL, "option setters are served before dispatch")))
}

fn spdk_get_version(_target: &Arc<Target>, params: Params, reply: Reply) {
    reply_with(reply, || {
        if !params.is_empty() {
            return Err(RpcError::invalid_params("spdk_get_version method requires no parameters"));
        }
        Ok(version_json())
    })
}

/// What `spdk_get_version` and `--version` report: SPDK's shape, our version.
pub fn version_json() -> Value {
    let version = crate::VERSION;
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor, patch) =
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let commit = crate::build_commit();
    let mut text = format!("bdev_thin v{major}.{minor:02}");
    if patch != 0 {
        text.push_str(&format!(".{patch}"));
    }
    let mut fields = json!({"major": major, "minor": minor, "patch": patch, "suffix": ""});
    if !commit.is_empty() {
        text.push_str(&format!(" git sha1 {commit}"));
        fields["commit"] = json!(commit);
    }
    json!({"version": text, "fields": fields})
}

fn rpc_get_methods(_target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        params.optional_bool("current")?;
        params.optional_bool("include_aliases")?;
        params.finish()?;
        // SPDK lists methods in reverse registration order.
        Ok(Value::Array(METHODS.iter().rev().map(|m| json!(m.name)).collect()))
    })
}

fn framework_wait_init(target: &Arc<Target>, params: Params, reply: Reply) {
    reply_with(reply, || {
        params.finish()?;
        if !target.is_initialized() {
            return Err(RpcError::wrong_state("the framework is still starting"));
        }
        Ok(json!(true))
    })
}
