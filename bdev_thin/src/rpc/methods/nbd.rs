//! NBD methods (API.md "NBD export"): `nbd_server_start`, `nbd_server_stop`, `nbd_export_add`,
//! `nbd_export_remove`, `nbd_get_exports`, and SPDK's kernel-NBD methods, which we answer
//! with a clear error: we serve NBD over TCP, not through `/dev/nbdX`. Decode, call
//! `export::nbd`, encode; the NBD errors become JSON-RPC errors here and nowhere else.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Reply, reply_with};
use crate::export::nbd::NbdError;
use crate::rpc::RpcError;
use crate::rpc::params::Params;
use crate::target::Target;

/// Default `listen_address` and `port` of `nbd_server_start` (NBD's IANA port).
pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1";
pub const DEFAULT_PORT: u16 = 10809;

impl From<NbdError> for RpcError {
    fn from(e: NbdError) -> RpcError {
        match &e {
            NbdError::AlreadyRunning(_) | NbdError::NotRunning | NbdError::Stopping => {
                RpcError::wrong_state(e.to_string())
            }
            NbdError::Address(_) | NbdError::ExportName => RpcError::invalid_params(e.to_string()),
            NbdError::Bind { source, .. } => {
                RpcError::errno(source.raw_os_error().unwrap_or(libc::EIO), &e)
            }
            NbdError::ExportExists(_) => RpcError::errno(libc::EEXIST, &e),
            NbdError::ExportNotFound(_) => RpcError::errno(libc::ENODEV, &e),
            NbdError::TooManyExports => RpcError::errno(libc::ENOSPC, &e),
            NbdError::Bdev(bdev) => RpcError::errno(bdev.errno(), bdev),
        }
    }
}

pub(super) fn server_start(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let address = params.optional_string("listen_address")?;
        let port = params.optional_u64("port")?.unwrap_or(u64::from(DEFAULT_PORT));
        params.finish()?;
        let port = u16::try_from(port)
            .map_err(|_| RpcError::invalid_params("port: expected an integer from 0 to 65535"))?;
        let address = address.as_deref().unwrap_or(DEFAULT_LISTEN_ADDRESS);
        let bound =
            target.nbd.start(&target.runtime, address, port, target.connection_timeouts())?;
        eprintln!("nbd: listening on {bound}");
        Ok(json!(true))
    })
}

pub(super) fn server_stop(target: &Arc<Target>, params: Params, reply: Reply) {
    if let Err(e) = params.finish() {
        return reply(Err(e));
    }
    // The reply waits until the listening socket is closed, so the port is free again.
    let slot = Arc::new(std::sync::Mutex::new(Some(reply)));
    let on_stopped = {
        let slot = Arc::clone(&slot);
        Box::new(move || {
            let reply = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(reply) = reply {
                reply(Ok(json!(true)));
            }
        })
    };
    if let Err(e) = target.nbd.stop(&target.runtime, on_stopped) {
        let reply = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(reply) = reply {
            reply(Err(e.into()));
        }
    }
}

pub(super) fn export_add(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let bdev_name = params.string("bdev_name")?;
        let export_name = params.optional_string("export_name")?;
        let read_only = params.optional_bool("read_only")?.unwrap_or(false);
        params.finish()?;
        let bdev = target.bdevs.get(&bdev_name)?;
        let name = target.nbd.add_export(&bdev, export_name, read_only)?;
        Ok(json!(name))
    })
}

pub(super) fn export_remove(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let export_name = params.string("export_name")?;
        params.finish()?;
        target.nbd.remove_export(&export_name)?;
        crate::export::nbd::wake_all(&target.runtime);
        Ok(json!(true))
    })
}

pub(super) fn get_exports(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let name = params.optional_string("export_name")?;
        params.finish()?;
        let address = target.nbd.local_address();
        let exports: Vec<Value> = target
            .nbd
            .exports()
            .into_iter()
            .filter(|e| name.as_ref().is_none_or(|n| *n == e.export_name))
            .map(|e| {
                let uri = address.map(|a| format!("nbd://{a}/{}", e.export_name));
                json!({
                    "export_name": e.export_name,
                    "bdev_name": e.bdev_name,
                    "read_only": e.read_only,
                    "connections": e.connection_count,
                    "uri": uri,
                })
            })
            .collect();
        if let Some(name) = name
            && exports.is_empty()
        {
            return Err(NbdError::ExportNotFound(name).into());
        }
        Ok(Value::Array(exports))
    })
}

/// SPDK's `nbd_start_disk` / `nbd_stop_disk` drive a kernel `/dev/nbdX`; we do not.
pub(super) fn kernel_disk(_target: &Arc<Target>, _params: Params, reply: Reply) {
    reply(Err(RpcError::errno(
        libc::ENOTSUP,
        "thin_tgt serves NBD over TCP, not through a kernel /dev/nbdX device: use \
         nbd_server_start and nbd_export_add, then connect a client to \
         nbd://ADDRESS:PORT/EXPORT",
    )))
}

/// SPDK's `nbd_get_disks`: no kernel NBD devices here, ever.
pub(super) fn get_disks(_target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        params.optional_string("nbd_device")?;
        params.finish()?;
        Ok(json!([]))
    })
}

/// The `nbd` subsystem's config entries (`framework_get_config nbd`, `save_config`): the
/// method calls that recreate the server and its exports.
pub fn config_entries(target: &Target) -> Vec<Value> {
    target.nbd.config_entries()
}
