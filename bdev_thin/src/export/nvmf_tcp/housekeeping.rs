//! The target's housekeeping: a timed poller on the first core, every
//! [`limits::NVMF_HOUSEKEEPING_PERIOD_US`], that announces namespaces whose bdev changed size
//! (a thin volume resized: hosts get a namespace attribute notice and rescan) and ends
//! controllers whose keep alive timer expired. Its work is proportional to namespaces and
//! controllers, once per period, never per IO; queue pairs only read the flags it sets.

use std::sync::Arc;

use super::{NvmfShared, notify_namespace};
use crate::host::{PollStatus, Poller};
use crate::limits;
use crate::runtime::{RuntimeHandle, SendError};

pub(super) fn start(runtime: &RuntimeHandle, shared: Arc<NvmfShared>) -> Result<(), SendError> {
    let poller = Housekeeping { shared, runtime: runtime.clone(), stopped: false };
    runtime.send(runtime.first_core(), move |ctx| {
        ctx.add_timed_poller(limits::NVMF_HOUSEKEEPING_PERIOD_US, Box::new(poller));
    })
}

struct Housekeeping {
    shared: Arc<NvmfShared>,
    runtime: RuntimeHandle,
    stopped: bool,
}

impl Poller for Housekeeping {
    fn poll(&mut self) -> PollStatus {
        if self.stopped {
            return PollStatus::Idle;
        }
        let now_ns = crate::runtime::now_ns();
        let mut work = 0;
        for subsystem in self.shared.subsystems() {
            for namespace in subsystem.namespaces() {
                if namespace.take_resize() {
                    notify_namespace(&self.runtime, &subsystem, namespace.nsid);
                    work += 1;
                }
            }
            for controller in subsystem.controllers() {
                if !controller.is_failed() && controller.keep_alive_expired(now_ns) {
                    eprintln!(
                        "nvmf: controller {} of {} (host {}): keep alive timeout ({} ms), \
                         ending the association",
                        controller.cntlid,
                        subsystem.nqn,
                        controller.host_nqn,
                        controller.kato_ms()
                    );
                    controller.fail();
                    let _ = self.runtime.send(controller.admin_core, |_| {});
                    for queue in controller.queues() {
                        let _ = self.runtime.send(queue.core, |_| {});
                    }
                    work += 1;
                }
            }
        }
        PollStatus::busy_if(work > 0)
    }

    fn name(&self) -> &str {
        "nvmf_housekeeping"
    }

    fn begin_stop(&mut self) {
        self.stopped = true;
    }

    fn is_finished(&self) -> bool {
        self.stopped
    }
}
