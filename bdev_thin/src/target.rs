//! The target: everything a daemon or `perf` hosts — the runtime handle, the bdev registry, the
//! thin pools, the exports and the NVMe controllers attached. RPC methods and config loading act
//! on it. Control plane only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::admission::ConnectionTimeouts;
use crate::backend::nvme_tcp::NvmeController;
use crate::bdev::pools::ThinPools;
use crate::bdev::{Bdev, BdevRegistry};
use crate::runtime::RuntimeHandle;

pub struct Target {
    pub runtime: RuntimeHandle,
    pub bdevs: Arc<BdevRegistry>,
    /// The thin pools hosted here, and their lifecycle (`bdev_thin_*` methods, examine).
    pub thin_pools: Arc<ThinPools>,
    /// The NBD server and its exports (`nbd_*` methods).
    pub nbd: crate::export::nbd::NbdServer,
    /// Handshake and idle deadlines of the servers this target starts (RPC, NBD, NVMe-oF).
    connection_timeouts: ConnectionTimeouts,
    /// The NVMe-oF/TCP target (`nvmf_*` methods).
    pub nvmf: crate::export::nvmf_tcp::NvmfTarget,
    /// NVMe-oF controllers attached by the initiator (`bdev_nvme_*` methods).
    pub nvme_controllers: NvmeControllers,
    initialized: AtomicBool,
    /// Examine runs on every new bdev (SPDK's `bdev_auto_examine`); off, only `bdev_examine`.
    auto_examine: AtomicBool,
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
        let bdevs = BdevRegistry::new();
        Arc::new(Target {
            thin_pools: ThinPools::new(runtime.clone(), Arc::clone(&bdevs)),
            runtime,
            bdevs,
            nbd: crate::export::nbd::NbdServer::default(),
            connection_timeouts: timeouts,
            nvmf: crate::export::nvmf_tcp::NvmfTarget::new(timeouts),
            nvme_controllers: NvmeControllers::default(),
            initialized: AtomicBool::new(false),
            auto_examine: AtomicBool::new(true),
        })
    }

    pub fn connection_timeouts(&self) -> ConnectionTimeouts {
        self.connection_timeouts
    }

    /// Looks for pools on a bdev that just appeared (SPDK's examine).
    pub fn examine(&self, bdev: &Arc<Bdev>) {
        self.thin_pools.examine(bdev);
    }

    /// An examine that reads bdevs off the reactors starts; `bdev_wait_for_examine` waits
    /// for its [`Target::end_examine`].
    pub fn begin_examine(&self) {
        self.thin_pools.begin_examine();
    }

    pub fn end_examine(&self) {
        self.thin_pools.end_examine();
    }

    /// Marks start-up done (`framework_wait_init` answers from then on).
    pub fn set_initialized(&self) {
        self.initialized.store(true, Ordering::SeqCst);
    }

    pub fn auto_examine(&self) -> bool {
        self.auto_examine.load(Ordering::SeqCst)
    }

    pub fn set_auto_examine(&self, auto: bool) {
        self.auto_examine.store(auto, Ordering::SeqCst);
    }

    pub fn is_initialized(&self) -> bool {
        self.initialized.load(Ordering::SeqCst)
    }
}

/// The NVMe-oF controllers attached to a target.
#[derive(Default)]
pub struct NvmeControllers {
    list: Mutex<Vec<Arc<NvmeController>>>,
}

impl NvmeControllers {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<NvmeController>>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn find(&self, name: &str) -> Option<Arc<NvmeController>> {
        self.lock().iter().find(|c| c.name() == name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<NvmeController>> {
        self.lock().clone()
    }

    pub fn add(&self, controller: Arc<NvmeController>) {
        self.lock().push(controller);
    }

    pub fn remove(&self, controller: &Arc<NvmeController>) {
        self.lock().retain(|c| !Arc::ptr_eq(c, controller));
    }
}
