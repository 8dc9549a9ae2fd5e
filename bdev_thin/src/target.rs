//! The target: everything a daemon or `perf` hosts — the runtime handle and the bdev registry
//! (pools and exports join later). RPC methods and config loading act on it. Control plane only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::bdev::BdevRegistry;
use crate::runtime::RuntimeHandle;

pub struct Target {
    pub runtime: RuntimeHandle,
    pub bdevs: Arc<BdevRegistry>,
    /// The NBD server and its exports (`nbd_*` methods).
    pub nbd: crate::export::nbd::NbdServer,
    initialized: AtomicBool,
}

impl Target {
    pub fn new(runtime: RuntimeHandle) -> Arc<Target> {
        Arc::new(Target {
            runtime,
            bdevs: BdevRegistry::new(),
            nbd: crate::export::nbd::NbdServer::default(),
            initialized: AtomicBool::new(false),
        })
    }

    /// Marks start-up done (`framework_wait_init` answers from then on).
    pub fn set_initialized(&self) {
        self.initialized.store(true, Ordering::SeqCst);
    }

    pub fn is_initialized(&self) -> bool {
        self.initialized.load(Ordering::SeqCst)
    }
}
