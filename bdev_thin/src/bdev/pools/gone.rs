//! A base bdev that goes away (an NVMe namespace whose controller was lost, a namespace the
//! target removed): the pools on it close without writing, their volumes' bdevs leave the
//! registry, and the base bdev is released so that it can be unregistered. The pool on the
//! device stays as its last commit left it; when the device comes back, examine opens it from
//! there (DESIGN.md "A base device that goes away").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::{ThinPools, lock};
use crate::names::log_line;
use crate::thin::owner::ControlOp;

impl ThinPools {
    /// Closes every pool whose data or metadata bdev is `base`, then calls `then` (once, after
    /// the last pool let go of its bdevs; at once when none sits on `base`). Never waits: each
    /// pool answers from its home core.
    pub fn close_pools_on(self: &Arc<Self>, base: &str, then: impl FnOnce() + Send + 'static) {
        let on_base: Vec<_> = self
            .all()
            .into_iter()
            .filter(|pool| pool.base_bdev == base || pool.metadata_bdev.as_deref() == Some(base))
            .collect();
        if on_base.is_empty() {
            return then();
        }
        // The last pool to answer runs `then`.
        let then = Arc::new(Mutex::new(Some(Box::new(then) as Box<dyn FnOnce() + Send>)));
        let remaining = Arc::new(AtomicUsize::new(on_base.len()));
        for pool in on_base {
            let (pools, closed, then, remaining) =
                (Arc::clone(self), Arc::clone(&pool), Arc::clone(&then), Arc::clone(&remaining));
            let gone = base.to_string();
            pool.send(ControlOp::ClosePool {
                done: Box::new(move |result| {
                    if let Err(e) = result {
                        log_line(format_args!(
                            "pool {}: closing after {base_name}: {e}",
                            closed.name,
                            base_name = closed.base_bdev
                        ));
                    }
                    let volumes = std::mem::take(&mut *lock(&closed.volumes));
                    for (_, name) in volumes {
                        pools.bdevs.remove_gone(&name);
                    }
                    pools.remove(&closed);
                    for name in
                        std::iter::once(&closed.base_bdev).chain(closed.metadata_bdev.iter())
                    {
                        if let Ok(bdev) = pools.bdevs.get(name) {
                            bdev.release_claim();
                        }
                    }
                    // The data bdev went and the metadata bdev stays: the pool opens again when
                    // a bdev of the data bdev's UUID appears, as after a restart.
                    if let Some(metadata) = &closed.metadata_bdev
                        && *metadata != gone
                    {
                        let data_uuid = Uuid::from_bytes(closed.record.data_bdev_uuid);
                        pools.wait_for_data_bdev(data_uuid, metadata.clone());
                    }
                    log_line(format_args!(
                        "pool {} closed: its base bdev went away; it reopens from its last \
                         commit when the bdev is back",
                        closed.name
                    ));
                    if remaining.fetch_sub(1, Ordering::SeqCst) == 1
                        && let Some(then) = lock(&then).take()
                    {
                        then();
                    }
                }),
            });
        }
    }
}
