//! The target: everything a daemon or `perf` hosts — the runtime handle and the bdev registry
//! (pools and exports join later). RPC methods and config loading act on it. Control plane only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::admission::ConnectionTimeouts;
use crate::bdev::BdevRegistry;
use crate::bdev::thin::ThinPool;
use crate::runtime::RuntimeHandle;

pub struct Target {
    pub runtime: RuntimeHandle,
    pub bdevs: Arc<BdevRegistry>,
    pools: std::sync::Mutex<Vec<Arc<ThinPool>>>,
    /// Metadata bdevs found by examine whose data bdev has not appeared: (data UUID, name).
    waiting_metadata: std::sync::Mutex<Vec<(uuid::Uuid, String)>>,
    /// Pools being opened by examine, and who waits for them (`bdev_wait_for_examine`).
    examines: std::sync::Mutex<(u64, Vec<crate::rpc::methods::Reply>)>,
    /// The NBD server and its exports (`nbd_*` methods).
    pub nbd: crate::export::nbd::NbdServer,
    /// Handshake and idle deadlines of the servers this target starts (RPC, NBD, NVMe-oF).
    connection_timeouts: ConnectionTimeouts,
    /// The NVMe-oF/TCP target (`nvmf_*` methods).
    pub nvmf: crate::export::nvmf_tcp::NvmfTarget,
    /// NVMe-oF controllers attached by the initiator (`bdev_nvme_*` methods).
    pub nvme_controllers: crate::rpc::methods::bdev_nvme::NvmeControllers,
    initialized: AtomicBool,
}

impl Target {
    pub fn new(runtime: RuntimeHandle) -> Arc<Target> {
        Self::with_connection_timeouts(runtime, ConnectionTimeouts::default())
    }

    /// A target whose servers close connections on `timeouts` (`thin_tgt`'s flags).
    pub fn with_connection_timeouts(
        runtime: RuntimeHandle,
        timeouts: ConnectionTimeouts,
    ) -> Arc<Target> {
        Arc::new(Target {
            runtime,
            bdevs: BdevRegistry::new(),
            pools: std::sync::Mutex::new(Vec::new()),
            examines: std::sync::Mutex::new((0, Vec::new())),
            waiting_metadata: std::sync::Mutex::new(Vec::new()),
            nbd: crate::export::nbd::NbdServer::default(),
            connection_timeouts: timeouts,
            nvmf: crate::export::nvmf_tcp::NvmfTarget::new(timeouts),
            nvme_controllers: Default::default(),
            initialized: AtomicBool::new(false),
        })
    }

    pub fn connection_timeouts(&self) -> ConnectionTimeouts {
        self.connection_timeouts
    }

    /// Every pool hosted here.
    pub fn pools(&self) -> Vec<Arc<ThinPool>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn remove_pool(&self, pool: &Arc<ThinPool>) {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).retain(|p| !Arc::ptr_eq(p, pool));
    }

    pub fn add_pool(&self, pool: Arc<ThinPool>) {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).push(pool);
    }

    /// Remembers a metadata bdev until its data bdev (by UUID) appears.
    pub fn wait_for_data_bdev(&self, data_uuid: uuid::Uuid, metadata_bdev: String) {
        let mut waiting = self.waiting_metadata.lock().unwrap_or_else(|p| p.into_inner());
        if !waiting.iter().any(|(_, name)| *name == metadata_bdev) {
            waiting.push((data_uuid, metadata_bdev));
        }
    }

    /// The metadata bdevs that waited for the data bdev `data_uuid`.
    pub fn take_waiting_metadata(&self, data_uuid: uuid::Uuid) -> Vec<String> {
        let mut waiting = self.waiting_metadata.lock().unwrap_or_else(|p| p.into_inner());
        let (ready, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut *waiting).into_iter().partition(|(uuid, _)| *uuid == data_uuid);
        *waiting = rest;
        ready.into_iter().map(|(_, name)| name).collect()
    }

    pub fn begin_examine(&self) {
        self.examines.lock().unwrap_or_else(|p| p.into_inner()).0 += 1;
    }

    pub fn end_examine(&self) {
        let waiters = {
            let mut examines = self.examines.lock().unwrap_or_else(|p| p.into_inner());
            examines.0 -= 1;
            if examines.0 > 0 {
                return;
            }
            std::mem::take(&mut examines.1)
        };
        for reply in waiters {
            reply(Ok(serde_json::json!(true)));
        }
    }

    /// Answers `reply` once no examine is in progress (at once if none is).
    pub fn when_examined(&self, reply: crate::rpc::methods::Reply) {
        let mut examines = self.examines.lock().unwrap_or_else(|p| p.into_inner());
        if examines.0 == 0 {
            drop(examines);
            reply(Ok(serde_json::json!(true)));
        } else {
            examines.1.push(reply);
        }
    }

    /// Marks start-up done (`framework_wait_init` answers from then on).
    pub fn set_initialized(&self) {
        self.initialized.store(true, Ordering::SeqCst);
    }

    pub fn is_initialized(&self) -> bool {
        self.initialized.load(Ordering::SeqCst)
    }
}
