//! A namespace's per-core channel, and the registry that gives each core one IO queue pair per
//! controller, shared by every channel of that core (SPDK's one qpair per thread).
//!
//! The registry is thread-local: a queue pair lives on the core that opened it and is reached
//! only from there, through `Rc<RefCell<…>>`, so no lock and no atomic touches the IO path. A
//! channel submits to the queue pair and takes back its own requests; any channel's poll
//! drives the queue pair's socket. When a core's last channel to a controller closes, its
//! queue pair closes with it.
//!
//! [`read_sync`] serves examine, which reads a new bdev from a thread that is not a reactor:
//! the read runs on a channel on the controller's admin core and the thread waits for it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use super::NvmeNamespace;
use super::io::IoQpair;
use crate::host::{
    DeviceChannel, DeviceError, IoBuffer, IoCompletion, IoKind, IoRequest, PollStatus, Poller,
    SgList,
};
use crate::runtime::{self, now_ns};

thread_local! {
    /// This core's IO queue pairs, by controller.
    static QUEUE_PAIRS: RefCell<Vec<(u64, Rc<RefCell<IoQpair>>)>> =
        const { RefCell::new(Vec::new()) };
}

/// How long [`read_sync`] waits: the read may wait for a reconnect, which the controller's
/// policy bounds only if the user gave it a bound.
const SYNC_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// One core's handle on a namespace.
pub struct NvmeChannel {
    namespace: Arc<NvmeNamespace>,
    qpair: Rc<RefCell<IoQpair>>,
    id: u16,
}

impl NvmeChannel {
    /// Opens a channel on the calling reactor, sharing the core's queue pair to the
    /// namespace's controller (made on first use; it connects when IO comes).
    pub fn open(namespace: &Arc<NvmeNamespace>) -> Result<NvmeChannel, DeviceError> {
        let controller = &namespace.controller;
        let Some(core) = runtime::current_core() else {
            return Err(DeviceError::Invalid(format!(
                "{}: NVMe channels are opened on a reactor",
                namespace.bdev_name()
            )));
        };
        let cores = controller.runtime().cores();
        let qid = cores.iter().position(|c| *c == core).map_or(1, |i| i + 1) as u16;
        let qpair = QUEUE_PAIRS.with(|registry| {
            let mut registry = registry.borrow_mut();
            if let Some((_, qpair)) = registry.iter().find(|(id, _)| *id == controller.id) {
                return Rc::clone(qpair);
            }
            let qpair = Rc::new(RefCell::new(IoQpair::new(Arc::clone(controller), qid)));
            registry.push((controller.id, Rc::clone(&qpair)));
            qpair
        });
        let id = qpair.borrow_mut().register_channel();
        Ok(NvmeChannel { namespace: Arc::clone(namespace), qpair, id })
    }
}

impl DeviceChannel for NvmeChannel {
    #[inline]
    fn submit(&mut self, request: IoRequest) -> Result<(), IoRequest> {
        self.qpair.borrow_mut().submit(self.id, &self.namespace, request)
    }

    fn poll(&mut self, complete: &mut impl FnMut(IoCompletion)) -> usize {
        self.qpair.borrow_mut().poll(now_ns());
        let mut count = 0;
        loop {
            // The borrow ends before `complete`, which may submit again.
            let completion = self.qpair.borrow_mut().pop_done(self.id);
            let Some(completion) = completion else { break };
            complete(completion);
            count += 1;
        }
        count
    }

    fn in_flight(&self) -> usize {
        self.qpair.borrow().in_flight(self.id)
    }

    fn prepare_park(&mut self) -> bool {
        let mut qpair = self.qpair.borrow_mut();
        if qpair.in_flight(self.id) == 0 {
            return true;
        }
        if qpair.has_done(self.id) || qpair.has_pending_work() {
            return false;
        }
        qpair.watch_for_park();
        true
    }
}

impl Drop for NvmeChannel {
    fn drop(&mut self) {
        let last = {
            let mut qpair = self.qpair.borrow_mut();
            qpair.unregister_channel(self.id);
            qpair.open_channels() == 0
        };
        if last {
            let id = self.namespace.controller.id;
            QUEUE_PAIRS.with(|registry| registry.borrow_mut().retain(|(c, _)| *c != id));
        }
    }
}

/// A one-off read on a reactor for [`read_sync`]: submits, polls until done, answers.
struct SyncRead {
    channel: NvmeChannel,
    request: Option<IoRequest>,
    answer: SyncSender<Result<SgList, i32>>,
    done: bool,
}

impl Poller for SyncRead {
    fn poll(&mut self) -> PollStatus {
        if self.done {
            return PollStatus::Idle;
        }
        if let Some(request) = self.request.take()
            && let Err(request) = self.channel.submit(request)
        {
            self.request = Some(request);
        }
        let mut finished = None;
        self.channel.poll(&mut |completion| finished = Some(completion));
        match finished {
            Some(completion) => {
                let result = if completion.status.is_success() {
                    Ok(completion.request.buffers)
                } else {
                    Err(completion.status.errno())
                };
                let _ = self.answer.send(result);
                self.done = true;
                PollStatus::Busy
            }
            None => PollStatus::Idle,
        }
    }

    fn name(&self) -> &str {
        "nvme_sync_read"
    }

    fn is_finished(&self) -> bool {
        self.done
    }

    fn prepare_park(&mut self) -> bool {
        self.request.is_none() && self.channel.prepare_park()
    }
}

/// Reads `out.len()` bytes at `offset_bytes` of `namespace`, blocking the calling thread,
/// which must not be a reactor.
pub(super) fn read_sync(
    namespace: &Arc<NvmeNamespace>,
    offset_bytes: u64,
    out: &mut [u8],
) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    if runtime::current_core().is_some() {
        return Err(Error::new(ErrorKind::WouldBlock, "a blocking NVMe read on a reactor"));
    }
    let block = u64::from(namespace.block_size_bytes);
    if !offset_bytes.is_multiple_of(block) || !(out.len() as u64).is_multiple_of(block) {
        return Err(Error::from_raw_os_error(libc::EINVAL));
    }
    if out.is_empty() {
        return Ok(());
    }
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    let request = IoRequest::new(IoKind::Read, offset_bytes / block, out.len() as u64 / block, 0)
        .with_buffers(SgList::single(IoBuffer::new(out.len())));
    let for_reactor = Arc::clone(namespace);
    let controller = &namespace.controller;
    controller
        .runtime()
        .send(controller.admin_core, move |ctx| match NvmeChannel::open(&for_reactor) {
            Ok(channel) => ctx.add_local_poller(Box::new(SyncRead {
                channel,
                request: Some(request),
                answer: sender,
                done: false,
            })),
            Err(_) => {
                let _ = sender.send(Err(libc::ENODEV));
            }
        })
        .map_err(|e| Error::other(e.to_string()))?;
    match receiver.recv_timeout(SYNC_READ_TIMEOUT) {
        Ok(Ok(buffers)) => {
            buffers.copy_to(0, out);
            Ok(())
        }
        Ok(Err(errno)) => Err(Error::from_raw_os_error(errno)),
        Err(_) => Err(Error::new(ErrorKind::TimedOut, "NVMe read timed out")),
    }
}
