//! The target: everything a daemon or `perf` hosts — the runtime handle and the bdev registry
//! (pools and exports join later). RPC methods and config loading act on it. Control plane only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::bdev::BdevRegistry;
use crate::bdev::thin::ThinPool;
use crate::runtime::RuntimeHandle;

pub struct Target {
    pub runtime: RuntimeHandle,
    pub bdevs: Arc<BdevRegistry>,
    pools: std::sync::Mutex<Vec<Arc<ThinPool>>>,
    initialized: AtomicBool,
}

impl Target {
    pub fn new(runtime: RuntimeHandle) -> Arc<Target> {
        Arc::new(Target {
            runtime,
            bdevs: BdevRegistry::new(),
            pools: std::sync::Mutex::new(Vec::new()),
            initialized: AtomicBool::new(false),
        })
    }

    /// Every pool hosted here.
    pub fn pools(&self) -> Vec<Arc<ThinPool>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn add_pool(&self, pool: Arc<ThinPool>) {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).push(pool);
    }

    /// Marks start-up done (`framework_wait_init` answers from then on).
    pub fn set_initialized(&self) {
        self.initialized.store(true, Ordering::SeqCst);
    }

    pub fn is_initialized(&self) -> bool {
        self.initialized.load(Ordering::SeqCst)
    }
}
