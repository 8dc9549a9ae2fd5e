//! One core's IO queue pair for one controller, shared by every channel of that core to the
//! controller's namespaces and polled by them (no poller of its own, no thread).
//!
//! It follows the controller's association: when the controller is live it connects (TCP,
//! ICReq, Fabrics Connect with the association's controller ID, its own QID), and when the
//! association changes or ends it drops the connection and takes back the commands in flight.
//! Their requests are reissued whole, in submission order, once connected again, so a
//! reconnect loses and fails nothing; they fail only when the controller says IO must
//! (`fast_io_fail_timeout_sec` passed, given up, removed).
//!
//! A bdev request becomes as many NVMe commands as the controller's limits need: reads and
//! writes split at MDTS, Write Zeroes at 65,536 blocks and WZSL, an unmap into Dataset
//! Management commands of at most DMRL ranges of at most DMRSL blocks, DMSL in all. Commands are
//! issued as queue slots free up; the request completes when its last command is answered,
//! with the first failure's status. A request and its buffers stay in the queue pair's table
//! until its channel takes it back: nothing is allocated per IO.

use std::collections::VecDeque;
use std::sync::Arc;

use super::queue::{DataRef, Finished, LinkError, QueuePair, QueueSettings};
use super::store::{IoStore, RequestSlot, RequestState};
use super::{ControllerState, IoLimits, NvmeController, NvmeNamespace};
use crate::host::{IoCompletion, IoFlags, IoKind, IoRequest, IoStatus};
use crate::limits;
use crate::nvme::command::{DSM_RANGE_BYTES, DsmRange, Status};
use crate::nvme::fabrics::{ConnectCommand, ConnectData};
use crate::nvme::host;

/// The tag of the IO queue's own Fabrics Connect.
const TAG_CONNECT: u32 = u32::MAX;
/// Most blocks one Read, Write or Write Zeroes carries (NLB is 16 bits, 0's based).
const NLB_BLOCKS_MAX: u64 = 65536;

/// How the connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Not connected; connects when the controller is live with a new association.
    Down,
    /// TCP and ICReq in progress.
    Linking,
    /// Fabrics Connect sent.
    Connecting,
    /// Connect refused for now (the QID's previous connection not yet torn down): connect
    /// again at `at_ns`.
    RetryConnect {
        at_ns: u64,
    },
    Ready,
    /// The controller refused this queue for this association (no QID left, Connect
    /// refused): its IO fails until the next association.
    Refused,
}

/// A channel's view of the queue pair: the requests it may take back.
struct ChannelState {
    open: bool,
    done: VecDeque<u16>,
    in_flight: usize,
}

/// Maps an NVMe status to the IO status the bdev layer speaks.
fn io_status(status: Status) -> IoStatus {
    match (status.sct, status.sc) {
        (0, 0x81) => IoStatus::NoSpace,
        (0, 0x20) => IoStatus::Failed(libc::EROFS),
        (0, 0x01 | 0x02 | 0x0B | 0x80) => IoStatus::Failed(libc::EINVAL),
        _ => IoStatus::Failed(libc::EIO),
    }
}

pub(super) struct IoQpair {
    pub controller: Arc<NvmeController>,
    qid: u16,
    queue: QueuePair,
    store: IoStore,
    stage: Stage,
    /// The association this queue pair is (or last was) connected to.
    generation: u64,
    limits: Option<IoLimits>,
    /// Requests with commands left to issue, in submission order.
    issue: VecDeque<u16>,
    channels: Vec<ChannelState>,
    next_sequence: u64,
    /// When the queue pair last had nothing outstanding (the progress timeout counts from
    /// the later of this and the last PDU received).
    idle_since_ns: u64,
    /// Connects refused for now in a row (see [`Stage::RetryConnect`]).
    connect_retries: u32,
}

impl IoQpair {
    pub fn new(controller: Arc<NvmeController>, qid: u16) -> IoQpair {
        let settings = QueueSettings {
            entries: 2,
            capsule_data_max: 0,
            sq_flow_control: controller.options.sq_flow_control,
            digests: controller.options.digests,
        };
        IoQpair {
            controller,
            qid,
            queue: QueuePair::new(settings, 1),
            store: IoStore::new(),
            stage: Stage::Down,
            generation: 0,
            limits: None,
            issue: VecDeque::with_capacity(limits::NVME_REQUESTS_PER_QPAIR_MAX),
            channels: Vec::new(),
            next_sequence: 0,
            idle_since_ns: 0,
            connect_retries: 0,
        }
    }

    pub fn register_channel(&mut self) -> u16 {
        let state = ChannelState {
            open: true,
            done: VecDeque::with_capacity(limits::NVME_REQUESTS_PER_QPAIR_MAX),
            in_flight: 0,
        };
        match self.channels.iter().position(|c| !c.open) {
            Some(index) => {
                self.channels[index] = state;
                index as u16
            }
            None => {
                self.channels.push(state);
                (self.channels.len() - 1) as u16
            }
        }
    }

    /// The channel closed: requests it did not take back are dropped when answered.
    pub fn unregister_channel(&mut self, channel: u16) {
        let Some(state) = self.channels.get_mut(usize::from(channel)) else { return };
        state.open = false;
        let done: Vec<u16> = state.done.drain(..).collect();
        for index in done {
            self.store.release_request(index);
        }
        for index in 0..self.store.requests.len() {
            let Some(slot) = self.store.requests[index].as_mut() else { continue };
            if slot.channel != channel {
                continue;
            }
            if slot.outstanding == 0 {
                self.store.release_request(index as u16);
            } else {
                slot.state = RequestState::Orphaned;
            }
        }
        self.issue.retain(|&i| self.store.requests[usize::from(i)].is_some());
    }

    pub fn open_channels(&self) -> usize {
        self.channels.iter().filter(|c| c.open).count()
    }

    pub fn in_flight(&self, channel: u16) -> usize {
        self.channels.get(usize::from(channel)).map_or(0, |c| c.in_flight)
    }

    /// Takes `request` for `namespace`; a full table hands it back (back-pressure).
    pub fn submit(
        &mut self,
        channel: u16,
        namespace: &NvmeNamespace,
        request: IoRequest,
    ) -> Result<(), IoRequest> {
        let mut status = request.validate(namespace.block_size_bytes, namespace.num_blocks()).err();
        let (_, state) = self.controller.association();
        let limits = self.limits.or_else(|| self.controller.info().map(|i| i.limits));
        if status.is_none() {
            status = if namespace.is_removed() || state == ControllerState::Removed {
                Some(IoStatus::Failed(libc::ENODEV))
            } else if state.fails_io() || self.stage == Stage::Refused {
                Some(IoStatus::Failed(libc::EIO))
            } else {
                match request.kind {
                    IoKind::Reset => Some(IoStatus::Failed(libc::ENOTSUP)),
                    IoKind::Unmap if !limits.is_some_and(|l| l.dataset_management) => {
                        Some(IoStatus::Failed(libc::ENOTSUP))
                    }
                    IoKind::WriteZeroes if !limits.is_some_and(|l| l.write_zeroes) => {
                        Some(IoStatus::Failed(libc::ENOTSUP))
                    }
                    // Without a volatile write cache every write is durable when answered.
                    IoKind::Flush if limits.is_some_and(|l| !l.volatile_write_cache) => {
                        Some(IoStatus::Success)
                    }
                    _ => None,
                }
            };
        }
        let slot = RequestSlot {
            request,
            channel,
            nsid: namespace.nsid,
            block_bytes: namespace.block_size_bytes,
            sequence: self.next_sequence,
            issued_blocks: 0,
            outstanding: 0,
            status: status.unwrap_or_default(),
            state: if status.is_some() { RequestState::Done } else { RequestState::Issuing },
        };
        let index = self.store.take_request(slot).map_err(|slot| slot.request)?;
        self.next_sequence += 1;
        self.channels[usize::from(channel)].in_flight += 1;
        if status.is_some() {
            self.channels[usize::from(channel)].done.push_back(index);
        } else {
            self.issue.push_back(index);
        }
        Ok(())
    }

    /// The next request `channel` may take back.
    pub fn pop_done(&mut self, channel: u16) -> Option<IoCompletion> {
        let state = self.channels.get_mut(usize::from(channel))?;
        let index = state.done.pop_front()?;
        state.in_flight -= 1;
        let slot = self.store.release_request(index)?;
        Some(IoCompletion { request: slot.request, status: slot.status })
    }

    pub fn has_done(&self, channel: u16) -> bool {
        self.channels.get(usize::from(channel)).is_some_and(|c| !c.done.is_empty())
    }

    /// Moves everything along: the connection, answers, issuing. Returns units of work.
    pub fn poll(&mut self, now: u64) -> usize {
        let mut work = self.follow_controller(now);
        if let Stage::RetryConnect { at_ns } = self.stage
            && now >= at_ns
        {
            self.begin_connect(now);
            work += 1;
        }
        if matches!(self.stage, Stage::Linking | Stage::Connecting | Stage::Ready) {
            work += self.queue.poll(&mut self.store, now);
            while let Some(answer) = self.queue.pop_finished() {
                self.answered(answer, now);
                work += 1;
            }
            if self.stage == Stage::Linking && self.queue.is_ready() {
                self.send_connect();
                work += 1;
            }
            if self.queue.outstanding() == 0 {
                self.idle_since_ns = now;
            } else if now.saturating_sub(self.idle_since_ns.max(self.queue.last_progress_ns))
                > limits::NVME_IO_PROGRESS_TIMEOUT_MS * 1_000_000
            {
                self.queue.fail(LinkError::Timeout("IO queue: no answer"));
            }
            if self.queue.is_failed() {
                self.connection_failed();
                work += 1;
            }
        }
        if self.stage == Stage::Ready {
            work += self.issue_commands();
            work += self.queue.poll(&mut self.store, now);
        }
        work
    }

    /// Whether a poll now has work without waiting on the socket or the controller.
    pub fn has_pending_work(&self) -> bool {
        self.queue.has_pending_work()
            || matches!(self.stage, Stage::RetryConnect { .. })
            || (self.stage == Stage::Ready && !self.issue.is_empty() && self.queue.has_free_slot())
    }

    pub fn watch_for_park(&mut self) {
        self.queue.watch_for_park();
    }

    /// Connects, disconnects or fails IO as the controller's association says.
    fn follow_controller(&mut self, now: u64) -> usize {
        let (generation, state) = self.controller.association();
        match state {
            ControllerState::Live => {
                if generation != self.generation {
                    self.drop_connection();
                    self.generation = generation;
                    self.connect_retries = 0;
                    self.begin_connect(now);
                    return 1;
                }
                if self.stage == Stage::Refused {
                    return self.fail_requests(IoStatus::Failed(libc::EIO));
                }
                0
            }
            ControllerState::Connecting | ControllerState::Resetting => {
                if generation != self.generation && self.stage != Stage::Down {
                    self.drop_connection();
                    return 1;
                }
                0
            }
            ControllerState::FailingIo | ControllerState::Failed | ControllerState::Removed => {
                let mut work = 0;
                if self.stage != Stage::Down {
                    self.drop_connection();
                    work += 1;
                }
                let errno =
                    if state == ControllerState::Removed { libc::ENODEV } else { libc::EIO };
                work + self.fail_requests(IoStatus::Failed(errno))
            }
        }
    }

    fn begin_connect(&mut self, now: u64) {
        let Some(info) = self.controller.info() else {
            self.stage = Stage::Down;
            return;
        };
        if self.qid > info.io_queues {
            eprintln!(
                "nvme {}: the controller granted {} IO queues; this core's queue {} gets none \
                 and its IO fails",
                self.controller.name(),
                info.io_queues,
                self.qid
            );
            self.stage = Stage::Refused;
            return;
        }
        let options = &self.controller.options;
        let settings = QueueSettings {
            entries: info.io_queue_entries,
            capsule_data_max: info.capsule_data_max,
            sq_flow_control: options.sq_flow_control,
            digests: options.digests,
        };
        // At most SQSIZE commands outstanding: the flow-control rule keeps one entry free.
        self.queue = QueuePair::new(settings, usize::from(info.io_queue_entries) - 1);
        self.limits = Some(info.limits);
        let data = ConnectData {
            host_id: options.host_id,
            cntlid: info.cntlid,
            subnqn: options.subnqn.clone(),
            hostnqn: options.hostnqn.clone(),
        };
        self.store.connect.as_mut_slice().copy_from_slice(&data.encode());
        self.queue.connect(options.address, now + options.connect_timeout_us * 1000);
        self.stage = Stage::Linking;
    }

    fn send_connect(&mut self) {
        let connect = ConnectCommand {
            recfmt: 0,
            qid: self.qid,
            sqsize: self.queue.settings.entries - 1,
            cattr: if self.queue.settings.sq_flow_control { 0 } else { 1 << 2 },
            kato_ms: 0,
        };
        let data = Some((IoStore::connect_ref(), true));
        if self.queue.submit(connect.encode(0), TAG_CONNECT, data, &self.store).is_err() {
            self.queue.fail(LinkError::Protocol("no slot for Connect".into()));
            return;
        }
        self.stage = Stage::Connecting;
    }

    /// The connection failed: take the commands back; ask the controller to reset if its
    /// association still looks live (the admin queue may not have noticed).
    fn connection_failed(&mut self) {
        let error = self.queue.failure().cloned().unwrap_or(LinkError::Closed);
        let (generation, state) = self.controller.association();
        self.drop_connection();
        if state == ControllerState::Live && generation == self.generation {
            eprintln!(
                "nvme {}: IO queue {} lost ({error}); resetting the controller",
                self.controller.name(),
                self.qid
            );
            self.controller.request_reset(generation);
        }
    }

    /// Closes the connection and takes back every command in flight; their requests are
    /// reissued whole when connected again.
    fn drop_connection(&mut self) {
        while let Some(answer) = self.queue.pop_finished() {
            if answer.tag != TAG_CONNECT {
                self.command_answered(answer);
            }
        }
        let store = &mut self.store;
        self.queue.abort_all(|tag| {
            if tag != TAG_CONNECT
                && let Some(dsm) = (tag >> 16).checked_sub(1)
            {
                store.release_dsm(dsm as u16);
            }
        });
        self.stage = Stage::Down;
        let mut reissue: Vec<(u64, u16)> = Vec::new();
        for index in 0..self.store.requests.len() {
            let Some(slot) = self.store.requests[index].as_mut() else { continue };
            match slot.state {
                RequestState::Issuing | RequestState::Issued => {
                    slot.issued_blocks = 0;
                    slot.outstanding = 0;
                    slot.status = IoStatus::Success;
                    slot.state = RequestState::Issuing;
                    reissue.push((slot.sequence, index as u16));
                }
                RequestState::Orphaned => {
                    self.store.release_request(index as u16);
                }
                RequestState::Done => {}
            }
        }
        reissue.sort_unstable();
        self.issue.clear();
        self.issue.extend(reissue.into_iter().map(|(_, index)| index));
    }

    /// Ends every request not yet answered with `status` (the controller fails IO).
    fn fail_requests(&mut self, status: IoStatus) -> usize {
        let mut failed = 0;
        for index in 0..self.store.requests.len() {
            let Some(slot) = self.store.requests[index].as_mut() else { continue };
            if matches!(slot.state, RequestState::Issuing | RequestState::Issued)
                && slot.outstanding == 0
            {
                slot.status = status;
                slot.state = RequestState::Issued;
                self.request_finished(index as u16);
                failed += 1;
            }
        }
        self.issue.clear();
        failed
    }

    fn answered(&mut self, answer: Finished, now: u64) {
        if answer.tag != TAG_CONNECT {
            return self.command_answered(answer);
        }
        // Command Sequence Error: the QID is still held by its previous connection.
        let qid_in_use = (answer.status.sct, answer.status.sc) == (0, 0x0C);
        if answer.status.is_success() {
            self.stage = Stage::Ready;
            self.idle_since_ns = now;
            self.connect_retries = 0;
        } else if qid_in_use && self.connect_retries < limits::NVME_IO_CONNECT_RETRIES {
            self.connect_retries += 1;
            self.queue.close();
            let at_ns = now + limits::NVME_IO_CONNECT_RETRY_DELAY_MS * 1_000_000;
            self.stage = Stage::RetryConnect { at_ns };
        } else {
            eprintln!(
                "nvme {}: Fabrics Connect of IO queue {} refused (SCT {:#x} SC {:#x}); its IO \
                 fails until the controller reconnects",
                self.controller.name(),
                self.qid,
                answer.status.sct,
                answer.status.sc
            );
            self.queue.close();
            self.stage = Stage::Refused;
        }
    }

    fn command_answered(&mut self, answer: Finished) {
        let index = (answer.tag & 0xFFFF) as u16;
        if let Some(dsm) = (answer.tag >> 16).checked_sub(1) {
            self.store.release_dsm(dsm as u16);
        }
        let Some(slot) = self.store.request_mut(index) else {
            debug_assert!(false, "an answer for request {index}, which is not held");
            return;
        };
        slot.outstanding = slot.outstanding.saturating_sub(1);
        if !answer.status.is_success() && slot.status.is_success() {
            slot.status = io_status(answer.status);
            if slot.state == RequestState::Issuing {
                // Nothing more of a failed request is sent.
                slot.state = RequestState::Issued;
            }
        }
        if slot.outstanding == 0
            && matches!(slot.state, RequestState::Issued | RequestState::Orphaned)
        {
            self.request_finished(index);
        }
    }

    fn request_finished(&mut self, index: u16) {
        let Some(slot) = self.store.request_mut(index) else { return };
        if slot.state == RequestState::Orphaned {
            self.store.release_request(index);
            return;
        }
        slot.state = RequestState::Done;
        let channel = usize::from(slot.channel);
        match self.channels.get_mut(channel) {
            Some(state) if state.open => state.done.push_back(index),
            _ => {
                self.store.release_request(index);
            }
        }
    }

    /// Issues commands for waiting requests while queue slots (and DSM buffers) last.
    fn issue_commands(&mut self) -> usize {
        let Some(limits) = self.limits else { return 0 };
        let mut issued = 0;
        while let Some(&index) = self.issue.front() {
            if !self.queue.has_free_slot() {
                break;
            }
            let Some(slot) = self.store.request_mut(index) else {
                self.issue.pop_front();
                continue;
            };
            if slot.state != RequestState::Issuing {
                self.issue.pop_front();
                continue;
            }
            let cursor = Cursor::of(slot, index);
            let Some(next) = next_command(&cursor, &limits, &mut self.store) else {
                break; // waits for a DSM buffer
            };
            let Some(slot) = self.store.request_mut(index) else { break };
            slot.issued_blocks += next.blocks;
            slot.outstanding += 1;
            if slot.issued_blocks >= cursor.total {
                slot.state = RequestState::Issued;
                self.issue.pop_front();
            }
            let tag = u32::from(index) | next.dsm.map_or(0, |d| (u32::from(d) + 1) << 16);
            let data = next.data.map(|d| (d, next.to_controller));
            if self.queue.submit(next.command, tag, data, &self.store).is_err() {
                debug_assert!(false, "a free slot was checked");
                break;
            }
            issued += 1;
        }
        issued
    }
}

/// What a request's next command is.
struct NextCommand {
    command: crate::nvme::command::Command,
    /// Blocks of the request this command covers.
    blocks: u64,
    data: Option<DataRef>,
    to_controller: bool,
    dsm: Option<u16>,
}

/// Where a request stands for issuing: what its next command needs to know.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    /// The request's key in the store.
    key: u32,
    kind: IoKind,
    flags: IoFlags,
    offset_blocks: u64,
    total: u64,
    issued: u64,
    nsid: u32,
    block_bytes: u32,
}

impl Cursor {
    fn of(slot: &RequestSlot, index: u16) -> Cursor {
        Cursor {
            key: u32::from(index),
            kind: slot.request.kind,
            flags: slot.request.flags,
            offset_blocks: slot.request.offset_blocks,
            total: total_blocks(&slot.request),
            issued: slot.issued_blocks,
            nsid: slot.nsid,
            block_bytes: slot.block_bytes,
        }
    }
}

/// Blocks a request covers for issuing (a flush counts as one).
fn total_blocks(request: &IoRequest) -> u64 {
    if request.kind == IoKind::Flush { 1 } else { request.num_blocks }
}

/// The next command of a request, within the controller's limits; `None` if it needs a DSM
/// buffer and none is free.
fn next_command(cursor: &Cursor, limits: &IoLimits, store: &mut IoStore) -> Option<NextCommand> {
    let done = cursor.issued;
    let remaining = cursor.total - done;
    let slba = cursor.offset_blocks + done;
    let block_bytes = u64::from(cursor.block_bytes.max(1));
    let nsid = cursor.nsid;
    Some(match cursor.kind {
        IoKind::Read | IoKind::Write => {
            let per_command =
                (u64::from(limits.transfer_bytes_max) / block_bytes).clamp(1, NLB_BLOCKS_MAX);
            let blocks = remaining.min(per_command);
            let data = DataRef {
                key: cursor.key,
                offset: (done * block_bytes) as u32,
                len: (blocks * block_bytes) as u32,
            };
            let command = if cursor.kind == IoKind::Read {
                host::read(nsid, slba, blocks as u32)
            } else {
                host::write(nsid, slba, blocks as u32, cursor.flags.contains(IoFlags::FUA))
            };
            NextCommand {
                command,
                blocks,
                data: Some(data),
                to_controller: cursor.kind == IoKind::Write,
                dsm: None,
            }
        }
        IoKind::WriteZeroes => {
            let mut per_command = NLB_BLOCKS_MAX;
            if limits.write_zeroes_bytes_max > 0 {
                per_command = per_command.min((limits.write_zeroes_bytes_max / block_bytes).max(1));
            }
            let blocks = remaining.min(per_command);
            let deallocate = !cursor.flags.contains(IoFlags::NO_UNMAP);
            NextCommand {
                command: host::write_zeroes(nsid, slba, blocks as u32, deallocate),
                blocks,
                data: None,
                to_controller: false,
                dsm: None,
            }
        }
        IoKind::Unmap => {
            let buffer = store.take_dsm()?;
            let bytes = store.dsm[usize::from(buffer)].as_mut_slice();
            let mut covered = 0u64;
            let mut ranges = 0usize;
            let range_max = u64::from(limits.dsm_range_blocks_max.max(1));
            while covered < remaining
                && ranges < usize::from(limits.dsm_ranges_max.max(1))
                && covered < limits.dsm_blocks_max
            {
                let length =
                    (remaining - covered).min(range_max).min(limits.dsm_blocks_max - covered);
                let range =
                    DsmRange { attributes: 0, length_blocks: length as u32, slba: slba + covered };
                bytes[ranges * DSM_RANGE_BYTES..(ranges + 1) * DSM_RANGE_BYTES]
                    .copy_from_slice(&range.encode());
                covered += length;
                ranges += 1;
            }
            let data = DataRef {
                key: IoStore::DSM_KEY_BASE + u32::from(buffer),
                offset: 0,
                len: (ranges * DSM_RANGE_BYTES) as u32,
            };
            NextCommand {
                command: host::deallocate(nsid, ranges as u16),
                blocks: covered,
                data: Some(data),
                to_controller: true,
                dsm: Some(buffer),
            }
        }
        IoKind::Flush => NextCommand {
            command: host::flush(nsid),
            blocks: 1,
            data: None,
            to_controller: false,
            dsm: None,
        },
        IoKind::Reset => NextCommand {
            command: host::flush(nsid),
            blocks: remaining,
            data: None,
            to_controller: false,
            dsm: None,
        },
    })
}

impl Drop for IoQpair {
    fn drop(&mut self) {
        self.queue.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{IoBuffer, SgList};

    fn limits() -> IoLimits {
        IoLimits {
            transfer_bytes_max: 128 << 10,
            write_zeroes_bytes_max: 0,
            dsm_ranges_max: 256,
            dsm_range_blocks_max: u32::MAX,
            dsm_blocks_max: u64::MAX,
            write_zeroes: true,
            dataset_management: true,
            volatile_write_cache: true,
        }
    }

    fn slot(request: IoRequest) -> RequestSlot {
        RequestSlot {
            request,
            channel: 0,
            nsid: 1,
            block_bytes: 512,
            sequence: 0,
            issued_blocks: 0,
            outstanding: 0,
            status: IoStatus::Success,
            state: RequestState::Issuing,
        }
    }

    /// Every command a request needs, as (slba, blocks) and the DSM ranges of each.
    fn commands(mut slot: RequestSlot, limits: &IoLimits) -> Vec<(u64, u64, Vec<DsmRange>)> {
        let mut store = IoStore::new();
        let mut out = Vec::new();
        while slot.issued_blocks < total_blocks(&slot.request) {
            let next = next_command(&Cursor::of(&slot, 0), limits, &mut store).unwrap();
            let ranges = match next.dsm {
                Some(buffer) => {
                    let bytes = store.dsm[usize::from(buffer)].as_slice();
                    let count = next.command.dsm_range_count();
                    let ranges = (0..count)
                        .map(|i| {
                            let raw: [u8; 16] = bytes[i * 16..i * 16 + 16].try_into().unwrap();
                            DsmRange::decode(&raw)
                        })
                        .collect();
                    store.release_dsm(buffer);
                    ranges
                }
                None => Vec::new(),
            };
            let blocks =
                if next.command.opcode == 0x09 { next.blocks } else { next.command.block_count() };
            out.push((next.command.slba(), blocks, ranges));
            slot.issued_blocks += next.blocks;
        }
        out
    }

    #[test]
    fn reads_and_writes_split_at_mdts() {
        let buffers = SgList::single(IoBuffer::new(1 << 20));
        let request = IoRequest::new(IoKind::Write, 100, 2048, 0).with_buffers(buffers);
        let split = commands(slot(request), &limits());
        assert_eq!(split.len(), 8, "1 MiB at 128 KiB per command");
        assert!(split.iter().all(|(_, blocks, _)| *blocks == 256));
        assert_eq!(split[7].0, 100 + 7 * 256);
    }

    #[test]
    fn write_zeroes_splits_at_65536_blocks_and_wzsl() {
        let request = IoRequest::new(IoKind::WriteZeroes, 0, 200_000, 0);
        let split = commands(slot(request), &limits());
        assert_eq!(split.iter().map(|c| c.1).collect::<Vec<_>>(), [65536, 65536, 65536, 3392]);
        let wzsl = IoLimits { write_zeroes_bytes_max: 1 << 20, ..limits() };
        let request = IoRequest::new(IoKind::WriteZeroes, 0, 4096, 0);
        let split = commands(slot(request), &wzsl);
        assert_eq!(split.len(), 2, "1 MiB of 512-byte blocks per command");
    }

    #[test]
    fn deallocate_respects_dmrl_dmrsl_and_dmsl() {
        let tight = IoLimits {
            dsm_ranges_max: 2,
            dsm_range_blocks_max: 1000,
            dsm_blocks_max: 1500,
            ..limits()
        };
        let request = IoRequest::new(IoKind::Unmap, 10, 4000, 0);
        let split = commands(slot(request), &tight);
        let per_command: Vec<Vec<(u64, u32)>> = split
            .iter()
            .map(|(_, _, ranges)| ranges.iter().map(|r| (r.slba, r.length_blocks)).collect())
            .collect();
        assert_eq!(
            per_command,
            [vec![(10, 1000), (1010, 500)], vec![(1510, 1000), (2510, 500)], vec![(3010, 1000)],]
        );
        let request = IoRequest::new(IoKind::Unmap, 0, 10, 0);
        let split = commands(slot(request), &limits());
        assert_eq!(split[0].2, vec![DsmRange { attributes: 0, length_blocks: 10, slba: 0 }]);
    }

    #[test]
    fn statuses_map_to_errnos() {
        assert_eq!(io_status(Status::LBA_OUT_OF_RANGE), IoStatus::Failed(libc::EINVAL));
        assert_eq!(io_status(Status::CAPACITY_EXCEEDED), IoStatus::NoSpace);
        assert_eq!(io_status(Status::INTERNAL_ERROR), IoStatus::Failed(libc::EIO));
        assert_eq!(io_status(Status::NAMESPACE_WRITE_PROTECTED), IoStatus::Failed(libc::EROFS));
    }
}
