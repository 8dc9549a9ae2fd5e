//! An IO queue: its bdev channel per namespace, opened on the queue pair's core, and the NVM
//! IO commands: Read, Write (FUA), Flush, Write Zeroes (FUA, DEAC) and Dataset Management
//! deallocate, which becomes unmap on the namespace's bdev (for a thin volume: thin unmap,
//! grace, passdown as the pool says). Commands are checked against the namespace before any IO
//! (missing namespace, LBA range, transfer length, DSM ranges) and answered with the status
//! the NVM command set names. Device IO is issued a few pieces per command at a time; a full
//! channel keeps the piece and retries next poll (back-pressure, no allocation).
//!
//! Namespace changes reach the queue through the subsystem's generation counter: it resyncs
//! its channels then; a removed namespace's channel stays until its IO drained.

use std::collections::VecDeque;
use std::sync::Arc;

use super::controller::Controller;
use super::qpair::{Connection, Outcome, Queue};
use super::slot::{Slot, SlotTable};
use super::subsystem::Namespace;
use crate::bdev::BdevChannel;
use crate::host::{DeviceChannel, IoCompletion, IoFlags, IoKind, IoRequest, IoStatus, SgList};
use crate::limits;
use crate::nvme::command::{DSM_RANGE_BYTES, DsmRange, Status, io_opcode};

/// The NVMe status for a bdev IO's outcome (this layer's errno edge).
fn nvme_status(status: IoStatus, kind: IoKind) -> Status {
    match status {
        IoStatus::Success => Status::SUCCESS,
        IoStatus::NoSpace => Status::CAPACITY_EXCEEDED,
        IoStatus::Failed(errno) => match errno {
            libc::EROFS | libc::EPERM => Status::NAMESPACE_WRITE_PROTECTED,
            libc::ENOSPC => Status::CAPACITY_EXCEEDED,
            libc::EINVAL => Status::INVALID_FIELD,
            libc::ENOTSUP => Status::INVALID_OPCODE,
            libc::EIO if kind == IoKind::Read => Status::UNRECOVERED_READ_ERROR,
            libc::EIO if kind == IoKind::Write => Status::WRITE_FAULT,
            _ => Status::INTERNAL_ERROR,
        },
    }
}

/// One namespace's channel on this queue's core.
struct NsChannel {
    namespace: Arc<Namespace>,
    channel: BdevChannel,
    /// Unique per queue pair: a command started on one channel never continues on another.
    id: u64,
    block_size_bytes: u32,
    in_flight: usize,
    unmap_chunk_blocks: u64,
    zeroes_chunk_blocks: u64,
}

impl NsChannel {
    fn open(namespace: Arc<Namespace>, id: u64) -> Option<NsChannel> {
        let bdev = namespace.bdev();
        let channel = bdev.open_channel().ok()?;
        let info = bdev.info();
        let block_size_bytes = info.block_size_bytes.max(1);
        let zeroes_chunk_blocks =
            (limits::NVMF_ZEROES_BYTES_PER_IO as u64 / u64::from(block_size_bytes)).max(1);
        let unmap_chunk_blocks = if info.max_unmap_blocks > 0 {
            info.max_unmap_blocks.min(zeroes_chunk_blocks)
        } else {
            zeroes_chunk_blocks
        };
        Some(NsChannel {
            namespace,
            channel,
            id,
            block_size_bytes,
            in_flight: 0,
            unmap_chunk_blocks,
            zeroes_chunk_blocks,
        })
    }
}

/// An IO queue pair's state.
pub(super) struct IoQueue {
    pub controller: Arc<Controller>,
    pub qid: u16,
    reset_generation: u32,
    namespace_generation: u64,
    /// By NSID - 1.
    channels: Vec<Option<NsChannel>>,
    /// Channels of removed namespaces, kept until their IO drained.
    retired: Vec<NsChannel>,
    next_channel_id: u64,
    submit_queue: VecDeque<u16>,
    in_flight: usize,
    completions: Vec<IoCompletion>,
    /// Slots whose device IO is all done, to respond to.
    finished: Vec<u16>,
}

impl IoQueue {
    pub fn new(controller: Arc<Controller>, qid: u16) -> IoQueue {
        let mut queue = IoQueue {
            reset_generation: controller.reset_generation(),
            namespace_generation: u64::MAX,
            controller,
            qid,
            channels: Vec::new(),
            retired: Vec::new(),
            next_channel_id: 0,
            submit_queue: VecDeque::with_capacity(limits::NVMF_QUEUE_DEPTH_MAX),
            in_flight: 0,
            completions: Vec::with_capacity(limits::DEVICE_CHANNEL_DEPTH_MAX),
            finished: Vec::with_capacity(limits::NVMF_QUEUE_DEPTH_MAX),
        };
        queue.sync_namespaces();
        queue
    }

    pub fn association_ended(&self) -> bool {
        self.controller.is_failed()
            || self.controller.reset_generation() != self.reset_generation
            || self.controller.subsystem.is_deleted()
    }

    pub fn disassociate(&self) {
        self.controller.remove_queue(self.qid);
    }

    pub fn device_in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn prepare_park(&mut self) -> bool {
        if !self.submit_queue.is_empty()
            || self.controller.subsystem.namespace_generation() != self.namespace_generation
        {
            return false;
        }
        let busy = self.channels.iter_mut().flatten().chain(self.retired.iter_mut());
        busy.filter(|c| c.in_flight > 0).all(|c| c.channel.prepare_park())
    }

    /// Opens channels for new namespaces and retires those of removed ones (control work,
    /// only when the subsystem's namespaces changed).
    fn sync_namespaces(&mut self) {
        let generation = self.controller.subsystem.namespace_generation();
        if generation == self.namespace_generation {
            return;
        }
        self.namespace_generation = generation;
        let table = self.controller.subsystem.namespace_table();
        let count = table.len().min(limits::NVMF_NAMESPACES_MAX);
        if self.channels.len() < count {
            self.channels.resize_with(count, || None);
        }
        for index in 0..self.channels.len() {
            let wanted = table.get(index).cloned().flatten();
            let current = self.channels[index].as_ref().map(|c| &c.namespace);
            let same = match (&wanted, current) {
                (Some(wanted), Some(current)) => Arc::ptr_eq(wanted, current),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            if let Some(old) = self.channels[index].take()
                && old.in_flight > 0
            {
                self.retired.push(old);
            }
            if let Some(namespace) = wanted {
                self.next_channel_id += 1;
                self.channels[index] = NsChannel::open(namespace, self.next_channel_id);
            }
        }
    }

    fn queue_submit(&mut self, index: u16, slot: &mut Slot) {
        if !slot.io.queued {
            slot.io.queued = true;
            self.submit_queue.push_back(index);
        }
    }

    /// Issues queued pieces until a channel is full. Returns pieces issued.
    fn submit_pending(&mut self, slots: &mut SlotTable) -> usize {
        let mut issued = 0;
        while let Some(&index) = self.submit_queue.front() {
            let slot = slots.get_mut(index);
            let channel = self
                .channels
                .get_mut(slot.io.channel)
                .and_then(Option::as_mut)
                .filter(|c| c.id == slot.io.channel_id);
            let (done, count) = match channel {
                Some(channel) => submit_slot(channel, slot, index),
                None => {
                    // Its namespace went away: nothing more is issued.
                    slot.io.status = Status::ABORTED_SQ_DELETION;
                    slot.io.stalled = None;
                    (true, 0)
                }
            };
            issued += count;
            self.in_flight += count;
            if !done {
                break;
            }
            slot.io.queued = false;
            self.submit_queue.pop_front();
            if slot.io.in_flight == 0 && slot.io.stalled.is_none() {
                self.finished.push(index);
            }
        }
        issued
    }

    /// Reaps completions of every channel with IO in flight. Returns how many.
    fn reap(&mut self, slots: &mut SlotTable) -> usize {
        let mut batch = std::mem::take(&mut self.completions);
        let mut reaped = 0;
        let channels = self.channels.iter_mut().flatten().chain(self.retired.iter_mut());
        for channel in channels.filter(|c| c.in_flight > 0) {
            let count = channel.channel.poll(&mut |completion| batch.push(completion));
            channel.in_flight = channel.in_flight.saturating_sub(count);
            reaped += count;
        }
        self.retired.retain(|c| c.in_flight > 0);
        for completion in batch.drain(..) {
            self.on_completion(slots, completion);
        }
        self.completions = batch;
        reaped
    }

    /// Called by `reap` for each finished device IO of this queue.
    fn on_completion(&mut self, slots: &mut SlotTable, completion: IoCompletion) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let IoCompletion { mut request, status } = completion;
        let Ok(index) = u16::try_from(request.tag >> 32) else {
            debug_assert!(false, "completion tag {:#x}", request.tag);
            return;
        };
        if usize::from(index) >= slots.slots.len() {
            debug_assert!(false, "completion for slot {index}");
            return;
        }
        let slot = slots.get_mut(index);
        slot.io.in_flight = slot.io.in_flight.saturating_sub(1);
        if !status.is_success() && slot.io.status.is_success() {
            slot.io.status = nvme_status(status, request.kind);
        }
        if request.kind.has_data() {
            slot.buffer = request.buffers.take().into_segments().next();
        }
        if slot.io.in_flight > 0 || slot.io.stalled.is_some() {
            return;
        }
        if slot.io.status.is_success() && has_more(slot) {
            self.queue_submit(index, slot);
        } else if !slot.io.queued {
            self.finished.push(index);
        }
    }
}

/// Whether `slot`'s command has pieces left to issue.
fn has_more(slot: &Slot) -> bool {
    slot.io.cursor < slot.io.end || slot.io.next_range < slot.io.range_count
}

/// Issues `slot`'s pieces while the channel takes them, at most `NVMF_IOS_PER_COMMAND_MAX` in
/// flight. Returns (nothing left to issue now, pieces issued).
fn submit_slot(channel: &mut NsChannel, slot: &mut Slot, index: u16) -> (bool, usize) {
    let mut issued = 0;
    if let Some(request) = slot.io.stalled.take() {
        if let Err(request) = channel.channel.submit(request) {
            slot.io.stalled = Some(request);
            return (false, issued);
        }
        slot.io.in_flight += 1;
        channel.in_flight += 1;
        issued += 1;
    }
    let Some(kind) = slot.io.kind else { return (true, issued) };
    while slot.io.status.is_success()
        && usize::from(slot.io.in_flight) < limits::NVMF_IOS_PER_COMMAND_MAX
    {
        if slot.io.cursor == slot.io.end {
            if slot.io.next_range >= slot.io.range_count {
                break;
            }
            let Some(range) = dsm_range(slot, slot.io.next_range) else {
                slot.io.status = Status::INTERNAL_ERROR;
                break;
            };
            slot.io.next_range += 1;
            slot.io.cursor = range.slba;
            slot.io.end = range.slba + u64::from(range.length_blocks);
            continue;
        }
        let tag = (u64::from(index) << 32) | u64::from(slot.io.issued);
        let blocks = slot.io.chunk_blocks.min(slot.io.end - slot.io.cursor);
        let mut request = if kind == IoKind::Flush {
            IoRequest::new(kind, 0, 0, tag)
        } else {
            IoRequest::new(kind, slot.io.cursor, blocks, tag)
        };
        request = request.with_flags(slot.io.flags);
        if kind.has_data() {
            let Some(buffer) = slot.buffer.take() else {
                slot.io.status = Status::INTERNAL_ERROR;
                break;
            };
            request = request.with_buffers(SgList::single(buffer));
        }
        slot.io.cursor += blocks.max(if kind == IoKind::Flush { 1 } else { 0 });
        slot.io.issued += 1;
        match channel.channel.submit(request) {
            Ok(()) => {
                slot.io.in_flight += 1;
                channel.in_flight += 1;
                issued += 1;
            }
            Err(request) => {
                slot.io.stalled = Some(request);
                return (false, issued);
            }
        }
    }
    (true, issued)
}

/// Range `index` of a Dataset Management command's data.
fn dsm_range(slot: &Slot, index: u16) -> Option<DsmRange> {
    let at = usize::from(index) * DSM_RANGE_BYTES;
    let bytes = slot.buffer.as_ref()?.as_slice().get(at..at + DSM_RANGE_BYTES)?;
    let mut raw = [0u8; DSM_RANGE_BYTES];
    raw.copy_from_slice(bytes);
    Some(DsmRange::decode(&raw))
}

impl Connection {
    fn io_queue(&mut self) -> Option<&mut IoQueue> {
        match &mut self.queue {
            Queue::Io(io) => Some(io),
            _ => None,
        }
    }

    /// Checks an IO command and plans its device IO; the queue's poll issues it.
    pub(super) fn execute_io(&mut self, index: u16) -> Outcome {
        let Queue::Io(io) = &mut self.queue else {
            return Outcome::status(Status::INTERNAL_ERROR);
        };
        io.sync_namespaces();
        let write_cache = io.controller.write_cache_enabled();
        let slot = self.slots.get_mut(index);
        let command = slot.command;
        let channel_index = usize::try_from(command.nsid).unwrap_or(0).wrapping_sub(1);
        let Some(channel) = io.channels.get(channel_index).and_then(Option::as_ref) else {
            return Outcome::status(Status::INVALID_NAMESPACE);
        };
        let device = channel.namespace.bdev().device();
        let num_blocks = device.info().num_blocks;
        let in_range =
            |slba: u64, blocks: u64| slba.checked_add(blocks).is_some_and(|e| e <= num_blocks);
        let plan = &mut slot.io;
        plan.channel = channel_index;
        plan.channel_id = channel.id;
        plan.status = Status::SUCCESS;
        match command.opcode {
            io_opcode::READ | io_opcode::WRITE => {
                let (slba, blocks) = (command.slba(), command.block_count());
                if !in_range(slba, blocks) {
                    return Outcome::status(Status::LBA_OUT_OF_RANGE);
                }
                let bytes = blocks * u64::from(channel.block_size_bytes);
                if u64::from(slot.transfer_bytes) != bytes || slot.buffer.is_none() {
                    return Outcome::status(Status::DATA_SGL_LENGTH_INVALID);
                }
                let write = command.opcode == io_opcode::WRITE;
                let plan = &mut slot.io;
                plan.kind = Some(if write { IoKind::Write } else { IoKind::Read });
                plan.flags = if write && (command.fua() || !write_cache) {
                    IoFlags::FUA
                } else {
                    IoFlags::NONE
                };
                (plan.cursor, plan.end, plan.chunk_blocks) = (slba, slba + blocks, blocks);
            }
            io_opcode::FLUSH => {
                if !device.supports(IoKind::Flush) {
                    return Outcome::status(Status::SUCCESS); // nothing volatile to flush
                }
                plan.kind = Some(IoKind::Flush);
                (plan.cursor, plan.end, plan.chunk_blocks) = (0, 1, 1);
            }
            io_opcode::WRITE_ZEROES => {
                let (slba, blocks) = (command.slba(), command.block_count());
                if !in_range(slba, blocks) {
                    return Outcome::status(Status::LBA_OUT_OF_RANGE);
                }
                let mut flags = if command.fua() { IoFlags::FUA } else { IoFlags::NONE };
                if !command.deallocate() {
                    flags = flags.with(IoFlags::NO_UNMAP);
                }
                plan.kind = Some(IoKind::WriteZeroes);
                plan.flags = flags;
                (plan.cursor, plan.end, plan.chunk_blocks) =
                    (slba, slba + blocks, channel.zeroes_chunk_blocks);
            }
            io_opcode::DATASET_MANAGEMENT => {
                // At least NR + 1 ranges: Linux always sends a page of 256 (its buffer's size,
                // as some devices read that much whatever NR says), so more is fine.
                let count = command.dsm_range_count();
                let needed = count * DSM_RANGE_BYTES;
                if (slot.transfer_bytes as usize) < needed || slot.buffer.is_none() {
                    return Outcome::status(Status::DATA_SGL_LENGTH_INVALID);
                }
                for range in 0..count as u16 {
                    let Some(range) = dsm_range(slot, range) else {
                        return Outcome::status(Status::DATA_SGL_LENGTH_INVALID);
                    };
                    if !in_range(range.slba, u64::from(range.length_blocks)) {
                        return Outcome::status(Status::LBA_OUT_OF_RANGE);
                    }
                }
                // Deallocate is advisory: without AD, or on a bdev that cannot unmap, it
                // does nothing and succeeds.
                if !command.dsm_deallocate() || !device.supports(IoKind::Unmap) {
                    return Outcome::status(Status::SUCCESS);
                }
                let plan = &mut slot.io;
                plan.kind = Some(IoKind::Unmap);
                plan.flags = IoFlags::NONE;
                (plan.cursor, plan.end, plan.chunk_blocks) = (0, 0, channel.unmap_chunk_blocks);
                (plan.next_range, plan.range_count) = (0, count as u16); // at most 256
            }
            _ => return Outcome::status(Status::INVALID_OPCODE),
        }
        let slot = self.slots.get_mut(index);
        io.queue_submit(index, slot);
        Outcome::Later
    }

    /// The IO queue's poll: namespace changes, completions, submissions, responses.
    pub(super) fn poll_io(&mut self) -> usize {
        let Queue::Io(io) = &mut self.queue else { return 0 };
        io.sync_namespaces();
        let mut work = io.reap(&mut self.slots);
        work += io.submit_pending(&mut self.slots);
        // Devices that finish at submission (malloc) complete in this same poll.
        work += io.reap(&mut self.slots);
        let mut finished = std::mem::take(&mut io.finished);
        for &index in &finished {
            let slot = self.slots.get_mut(index);
            let status = slot.io.status;
            let data_bytes = match slot.io.kind {
                Some(IoKind::Read) if status.is_success() => slot.transfer_bytes,
                _ => 0,
            };
            self.complete(index, status, 0, 0, data_bytes);
        }
        work += finished.len();
        finished.clear();
        if let Some(io) = self.io_queue() {
            io.finished = finished;
        }
        work
    }
}
