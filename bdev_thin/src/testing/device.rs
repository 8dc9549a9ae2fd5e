//! A simulated block device whose every IO the test controls.
//!
//! Each submitted IO waits in a pending list until the test (or the automatic mode) completes
//! it. A write, unmap or write_zeroes takes effect on the content at an instant the test picks
//! between issue and completion ([`SimDevice::apply`]; at the latest at completion); a read's
//! buffer is filled from the content at completion. Writes land in a volatile cache: a flush
//! makes durable only what completed before the flush was issued (the version of each block
//! that the last completed write left, even when a later write in flight already changed the
//! cache), FUA makes its own write durable, and [`SimDevice::crash`] keeps only durable
//! content (or, with [`SimDevice::crash_keeping`], some of the cache). Completions are
//! delivered to the submitting channel at its next poll. Each channel takes at most the
//! device's channel depth of IO at once, as io_uring's submission queue does.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::host::{
    BlockDevice, DeviceChannel, DeviceError, DeviceInfo, IoCompletion, IoFlags, IoKind, IoRequest,
    IoStatus,
};
use crate::limits;

/// What a test sees of an IO in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingIo {
    pub id: u64,
    pub channel: u64,
    pub kind: IoKind,
    pub flags: IoFlags,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    /// Whether its effect is already on the device's content.
    pub applied: bool,
}

/// A rule that fails matching IOs at completion (their effect is not applied).
#[derive(Clone, Debug)]
pub struct SimFault {
    pub kind: IoKind,
    /// First and last device block the fault covers.
    pub blocks: (u64, u64),
    pub errno: i32,
    /// How many IOs it still fails.
    pub remaining: u32,
}

/// What a flush makes durable: block → content (None: zeroes).
type FlushSet = Vec<(u64, Option<Box<[u8]>>)>;

struct InFlight {
    info: PendingIo,
    request: IoRequest,
    /// A flush: what it makes durable, taken when it was issued (block → content, None for
    /// zeroes).
    flushes: Option<FlushSet>,
}

type HoldRule = Box<dyn Fn(&PendingIo) -> bool + Send>;

struct SimState {
    block_size_bytes: u32,
    num_blocks: u64,
    content: HashMap<u64, Box<[u8]>>,
    durable: HashMap<u64, Box<[u8]>>,
    dirty: BTreeSet<u64>,
    /// Dirty blocks whose cached content a write still in flight made: its id.
    written_by: HashMap<u64, u64>,
    /// For those blocks, the content the last completed IO left (None: zeroes), which a flush
    /// issued now makes durable.
    completed_content: HashMap<u64, Option<Box<[u8]>>>,
    channel_depth: usize,
    pending: Vec<InFlight>,
    completed: HashMap<u64, VecDeque<IoCompletion>>,
    auto_complete: bool,
    hold: Option<HoldRule>,
    faults: Vec<SimFault>,
    next_id: u64,
    next_channel: u64,
}

impl SimState {
    fn apply(&mut self, index: usize) {
        let entry = &mut self.pending[index];
        if entry.info.applied {
            return;
        }
        entry.info.applied = true;
        let block_size = self.block_size_bytes as usize;
        let first = entry.request.offset_blocks;
        let count = entry.request.num_blocks;
        let fua = entry.request.flags.contains(IoFlags::FUA);
        let id = entry.info.id;
        match entry.request.kind {
            IoKind::Write => {
                let mut data = vec![0u8; block_size];
                for i in 0..count {
                    entry.request.buffers.copy_to(i as usize * block_size, &mut data);
                    let block: Box<[u8]> = data.clone().into_boxed_slice();
                    if fua {
                        // Durable when it completes; taking effect early is allowed too.
                        self.durable.insert(first + i, block.clone());
                    }
                    Self::note_cache_write(
                        &mut self.content,
                        &mut self.written_by,
                        &mut self.completed_content,
                        first + i,
                        id,
                    );
                    self.dirty.insert(first + i);
                    self.content.insert(first + i, block);
                }
            }
            IoKind::Unmap | IoKind::WriteZeroes => {
                for block in first..first + count {
                    Self::note_cache_write(
                        &mut self.content,
                        &mut self.written_by,
                        &mut self.completed_content,
                        block,
                        id,
                    );
                    if fua {
                        self.durable.remove(&block);
                    }
                    self.content.remove(&block);
                    self.dirty.insert(block);
                }
            }
            IoKind::Flush => {
                for (block, data) in entry.flushes.take().unwrap_or_default() {
                    let settled = !self.written_by.contains_key(&block)
                        && self.content.get(&block) == data.as_ref();
                    if settled {
                        self.dirty.remove(&block);
                    }
                    match data {
                        Some(data) => self.durable.insert(block, data),
                        None => self.durable.remove(&block),
                    };
                }
            }
            IoKind::Read | IoKind::Reset => {}
        }
    }

    /// IO `id` changes the cache of `block`: remember what the last completed IO left there,
    /// unless an IO still in flight already changed it (then that is remembered already).
    fn note_cache_write(
        content: &mut HashMap<u64, Box<[u8]>>,
        written_by: &mut HashMap<u64, u64>,
        completed_content: &mut HashMap<u64, Option<Box<[u8]>>>,
        block: u64,
        id: u64,
    ) {
        if written_by.insert(block, id).is_none() {
            completed_content.insert(block, content.get(&block).cloned());
        }
    }

    /// IO `index` completed with success: the blocks whose cache it made now hold completed
    /// content; where a later IO in flight changed the cache since, this IO's version is the
    /// completed one a flush would make durable.
    fn note_completion(&mut self, index: usize) {
        let entry = &self.pending[index];
        let (kind, first, count, id) = (
            entry.request.kind,
            entry.request.offset_blocks,
            entry.request.num_blocks,
            entry.info.id,
        );
        if !matches!(kind, IoKind::Write | IoKind::Unmap | IoKind::WriteZeroes) {
            return;
        }
        let block_size = self.block_size_bytes as usize;
        for i in 0..count {
            let block = first + i;
            match self.written_by.get(&block) {
                Some(&writer) if writer == id => {
                    self.written_by.remove(&block);
                    self.completed_content.remove(&block);
                }
                Some(_) => {
                    // A later IO in flight overwrote this one in the cache, so this one is
                    // the block's completed version now.
                    let data = (kind == IoKind::Write).then(|| {
                        let mut data = vec![0u8; block_size];
                        entry.request.buffers.copy_to(i as usize * block_size, &mut data);
                        data.into_boxed_slice()
                    });
                    self.completed_content.insert(block, data);
                }
                None => {}
            }
        }
    }

    /// What a flush issued now makes durable: every dirty block's completed content.
    fn flush_set(&self) -> FlushSet {
        self.dirty
            .iter()
            .map(|&block| match self.completed_content.get(&block) {
                Some(data) => (block, data.clone()),
                None => (block, self.content.get(&block).cloned()),
            })
            .collect()
    }

    fn fault_for(&mut self, info: &PendingIo) -> Option<i32> {
        let last = info.offset_blocks + info.num_blocks.max(1) - 1;
        let fault = self.faults.iter_mut().find(|f| {
            f.remaining > 0
                && f.kind == info.kind
                && info.offset_blocks <= f.blocks.1
                && last >= f.blocks.0
        })?;
        fault.remaining -= 1;
        Some(fault.errno)
    }

    /// Completes pending IO `index`: applies it (unless it fails), fills a read's buffer.
    fn complete(&mut self, index: usize, forced: Option<IoStatus>) {
        let status = match forced {
            Some(status) => status,
            None => match self.fault_for(&self.pending[index].info.clone()) {
                Some(errno) => IoStatus::Failed(errno),
                None => IoStatus::Success,
            },
        };
        if status.is_success() {
            self.apply(index);
            self.note_completion(index);
        } else if self.pending[index].info.applied {
            // It took effect and then failed: its version counts as completed (the cache
            // holds it and a flush may keep it).
            self.note_completion(index);
        }
        let InFlight { info, mut request, .. } = self.pending.remove(index);
        if status.is_success() && request.kind == IoKind::Read {
            let block_size = self.block_size_bytes as usize;
            let zeroes = vec![0u8; block_size];
            for i in 0..request.num_blocks {
                let data =
                    self.content.get(&(request.offset_blocks + i)).map_or(&zeroes[..], |d| &d[..]);
                request.buffers.copy_from(i as usize * block_size, data);
            }
        }
        self.completed.entry(info.channel).or_default().push_back(IoCompletion { request, status });
    }

    fn index_of(&self, id: u64) -> usize {
        self.pending
            .iter()
            .position(|p| p.info.id == id)
            .unwrap_or_else(|| panic!("no pending IO {id}"))
    }
}

/// The device. Clones share the same state.
#[derive(Clone)]
pub struct SimDevice {
    state: Arc<Mutex<SimState>>,
    info: DeviceInfo,
}

impl SimDevice {
    /// A device of `num_blocks` blocks that completes every IO at the next poll of its channel.
    pub fn new(block_size_bytes: u32, num_blocks: u64) -> SimDevice {
        SimDevice {
            state: Arc::new(Mutex::new(SimState {
                block_size_bytes,
                num_blocks,
                content: HashMap::new(),
                durable: HashMap::new(),
                dirty: BTreeSet::new(),
                written_by: HashMap::new(),
                completed_content: HashMap::new(),
                channel_depth: limits::DEVICE_CHANNEL_DEPTH_MAX,
                pending: Vec::new(),
                completed: HashMap::new(),
                auto_complete: true,
                hold: None,
                faults: Vec::new(),
                next_id: 0,
                next_channel: 0,
            })),
            info: DeviceInfo {
                block_size_bytes,
                num_blocks,
                max_unmap_blocks: num_blocks,
                unmap_reads_zeroes: true,
            },
        }
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// In automatic mode (the default) a channel's poll completes all its pending IOs that no
    /// hold rule matches, in issue order. Off, only the test completes IOs.
    pub fn set_auto_complete(&self, on: bool) {
        self.state().auto_complete = on;
    }

    /// Channels opened so far: the next channel opened gets this id
    /// ([`PendingIo::channel`]).
    pub fn channels_opened(&self) -> u64 {
        self.state().next_channel
    }

    /// IOs one channel takes at once (default `DEVICE_CHANNEL_DEPTH_MAX`); a full channel
    /// refuses the submission, as a full submission queue does.
    pub fn set_channel_depth(&self, depth: usize) {
        self.state().channel_depth = depth;
    }

    /// IOs matching `rule` wait for the test even in automatic mode.
    pub fn hold(&self, rule: impl Fn(&PendingIo) -> bool + Send + 'static) {
        self.state().hold = Some(Box::new(rule));
    }

    pub fn release_hold(&self) {
        self.state().hold = None;
    }

    pub fn add_fault(&self, fault: SimFault) {
        self.state().faults.push(fault);
    }

    pub fn pending(&self) -> Vec<PendingIo> {
        self.state().pending.iter().map(|p| p.info.clone()).collect()
    }

    /// Makes pending IO `id` take effect on the content now; it completes later.
    pub fn apply(&self, id: u64) {
        let mut state = self.state();
        let index = state.index_of(id);
        state.apply(index);
    }

    /// Completes pending IO `id` with success (applying it first if needed).
    pub fn complete(&self, id: u64) {
        let mut state = self.state();
        let index = state.index_of(id);
        state.complete(index, None);
    }

    /// Completes pending IO `id` with `errno`, without applying it (unless already applied).
    pub fn fail(&self, id: u64, errno: i32) {
        let mut state = self.state();
        let index = state.index_of(id);
        state.complete(index, Some(IoStatus::Failed(errno)));
    }

    /// Completes every pending IO not held, in issue order.
    pub fn complete_all(&self) -> usize {
        let mut state = self.state();
        let mut count = 0;
        let mut index = 0;
        while index < state.pending.len() {
            let held = state.hold.as_ref().is_some_and(|rule| rule(&state.pending[index].info));
            if held {
                index += 1;
            } else {
                state.complete(index, None);
                count += 1;
            }
        }
        count
    }

    /// The device's current content (what a read would return now).
    pub fn read_content(&self, offset_blocks: u64, num_blocks: u64) -> Vec<u8> {
        let state = self.state();
        let block_size = state.block_size_bytes as usize;
        let mut out = vec![0u8; block_size * num_blocks as usize];
        for i in 0..num_blocks {
            if let Some(data) = state.content.get(&(offset_blocks + i)) {
                out[i as usize * block_size..(i as usize + 1) * block_size].copy_from_slice(data);
            }
        }
        out
    }

    /// Whether a device block holds anything but zeroes.
    pub fn is_written(&self, block: u64) -> bool {
        self.state().content.get(&block).is_some_and(|d| d.iter().any(|&b| b != 0))
    }

    /// Loses power like [`SimDevice::crash`], but the volatile cache wrote some blocks back
    /// first: each block written since the last flush keeps its current content when
    /// `keep(block)` says so (all, none, or some: torn writes at sector granularity).
    pub fn crash_keeping(&self, keep: &mut dyn FnMut(u64) -> bool) {
        let mut state = self.state();
        state.pending.clear();
        state.completed.clear();
        state.written_by.clear();
        state.completed_content.clear();
        for block in std::mem::take(&mut state.dirty) {
            if keep(block) {
                match state.content.get(&block).cloned() {
                    Some(data) => state.durable.insert(block, data),
                    None => state.durable.remove(&block),
                };
            }
        }
        state.content = state.durable.clone();
    }

    /// Loses power: every IO in flight vanishes (completions included) and the content reverts
    /// to what was durable.
    pub fn crash(&self) {
        let mut state = self.state();
        state.pending.clear();
        state.completed.clear();
        state.dirty.clear();
        state.written_by.clear();
        state.completed_content.clear();
        state.content = state.durable.clone();
    }
}

impl BlockDevice for SimDevice {
    type Channel = SimChannel;

    fn info(&self) -> DeviceInfo {
        self.info
    }

    fn supports(&self, _kind: IoKind) -> bool {
        true
    }

    fn open_channel(&self) -> Result<SimChannel, DeviceError> {
        let mut state = self.state();
        let id = state.next_channel;
        state.next_channel += 1;
        Ok(SimChannel { id, device: self.clone(), in_flight: 0 })
    }
}

/// One channel of a [`SimDevice`].
pub struct SimChannel {
    id: u64,
    device: SimDevice,
    in_flight: usize,
}

impl DeviceChannel for SimChannel {
    fn submit(&mut self, request: IoRequest) -> Result<(), IoRequest> {
        let mut state = self.device.state();
        if self.in_flight >= state.channel_depth {
            return Err(request);
        }
        let validation = request.validate(state.block_size_bytes, state.num_blocks);
        let id = state.next_id;
        state.next_id += 1;
        let info = PendingIo {
            id,
            channel: self.id,
            kind: request.kind,
            flags: request.flags,
            offset_blocks: request.offset_blocks,
            num_blocks: request.num_blocks,
            applied: false,
        };
        self.in_flight += 1;
        let flushes = (request.kind == IoKind::Flush).then(|| state.flush_set());
        match validation {
            Ok(()) => state.pending.push(InFlight { info, request, flushes }),
            Err(status) => state
                .completed
                .entry(self.id)
                .or_default()
                .push_back(IoCompletion { request, status }),
        }
        Ok(())
    }

    fn poll(&mut self, complete: &mut impl FnMut(IoCompletion)) -> usize {
        let ready: Vec<IoCompletion> = {
            let mut state = self.device.state();
            if state.auto_complete {
                let mut index = 0;
                while index < state.pending.len() {
                    let entry = &state.pending[index].info;
                    let held = state.hold.as_ref().is_some_and(|rule| rule(entry));
                    if entry.channel == self.id && !held {
                        state.complete(index, None);
                    } else {
                        index += 1;
                    }
                }
            }
            state.completed.get_mut(&self.id).map(|q| q.drain(..).collect()).unwrap_or_default()
        };
        let count = ready.len();
        self.in_flight -= count;
        for completion in ready {
            complete(completion);
        }
        count
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{IoBuffer, SgList};

    fn write(channel: &mut SimChannel, block: u64, byte: u8) {
        let mut buffer = IoBuffer::new(512);
        buffer.as_mut_slice().fill(byte);
        let request =
            IoRequest::new(IoKind::Write, block, 1, 0).with_buffers(SgList::single(buffer));
        channel.submit(request).unwrap();
    }

    #[test]
    fn write_takes_effect_when_the_test_says() {
        let device = SimDevice::new(512, 16);
        device.set_auto_complete(false);
        let mut channel = device.open_channel().unwrap();
        write(&mut channel, 3, 0xaa);
        let pending = device.pending();
        assert_eq!(pending.len(), 1);
        assert!(!device.is_written(3));
        device.apply(pending[0].id);
        assert!(device.is_written(3), "applied before completion");
        assert_eq!(channel.poll(&mut |_| {}), 0, "not completed yet");
        device.complete(pending[0].id);
        assert_eq!(channel.poll(&mut |c| assert!(c.status.is_success())), 1);
    }

    #[test]
    fn read_is_filled_at_completion_and_crash_keeps_only_flushed() {
        let device = SimDevice::new(512, 16);
        let mut channel = device.open_channel().unwrap();
        write(&mut channel, 1, 1);
        channel.poll(&mut |_| {});
        channel.submit(IoRequest::new(IoKind::Flush, 0, 0, 0)).unwrap();
        channel.poll(&mut |_| {});
        write(&mut channel, 2, 2);
        channel.poll(&mut |_| {});
        device.set_auto_complete(false);
        let read =
            IoRequest::new(IoKind::Read, 1, 1, 9).with_buffers(SgList::single(IoBuffer::new(512)));
        channel.submit(read).unwrap();
        write(&mut channel, 1, 7);
        let ids: Vec<u64> = device.pending().iter().map(|p| p.id).collect();
        device.apply(ids[1]);
        device.complete(ids[0]);
        let mut seen = Vec::new();
        channel.poll(&mut |c| seen.push(c.request.buffers.segments()[0].as_slice()[0]));
        assert_eq!(seen, vec![7], "a read sees the content at its completion");
        device.crash();
        assert!(device.is_written(1));
        assert_eq!(device.read_content(1, 1)[0], 1, "the flushed version survives");
        assert!(!device.is_written(2), "the unflushed write is lost");
    }

    #[test]
    fn a_flush_makes_durable_only_what_completed_before_it_was_issued() {
        let device = SimDevice::new(512, 16);
        device.set_auto_complete(false);
        let mut channel = device.open_channel().unwrap();
        write(&mut channel, 1, 1);
        let first = device.pending()[0].id;
        device.complete(first);
        write(&mut channel, 1, 2); // in flight, applied to the cache before the flush
        write(&mut channel, 3, 3); // in flight, completes after the flush was issued
        let ids: Vec<u64> = device.pending().iter().map(|p| p.id).collect();
        device.apply(ids[0]);
        channel.submit(IoRequest::new(IoKind::Flush, 0, 0, 0)).unwrap();
        let flush = device.pending().last().unwrap().id;
        device.complete(ids[1]);
        device.complete(flush);
        device.complete(ids[0]);
        device.crash();
        assert_eq!(device.read_content(1, 1)[0], 1, "the completed version, not the newer one");
        assert!(!device.is_written(3), "completed after the flush was issued: not covered");
    }

    #[test]
    fn a_channel_takes_at_most_its_depth() {
        let device = SimDevice::new(512, 16);
        device.set_auto_complete(false);
        device.set_channel_depth(2);
        let mut channel = device.open_channel().unwrap();
        write(&mut channel, 1, 1);
        write(&mut channel, 2, 2);
        let refused = IoRequest::new(IoKind::Flush, 0, 0, 0);
        assert!(channel.submit(refused).is_err());
    }

    #[test]
    fn completions_are_held_reordered_and_failed_as_the_test_says() {
        let device = SimDevice::new(512, 16);
        let mut channel = device.open_channel().unwrap();
        let mut done = Vec::new();
        // A held write waits while a later one completes first.
        device.hold(|io| io.kind == IoKind::Write && io.offset_blocks == 5);
        write(&mut channel, 5, 0x55);
        write(&mut channel, 6, 0x66);
        channel.poll(&mut |c| done.push((c.request.offset_blocks, c.status)));
        assert_eq!(done, vec![(6, IoStatus::Success)], "reordered around the held write");
        assert!(!device.is_written(5) && device.is_written(6));
        // The test fails the held write: it completes with the errno and never takes effect.
        let held = device.pending()[0].id;
        device.fail(held, libc::EIO);
        done.clear();
        channel.poll(&mut |c| done.push((c.request.offset_blocks, c.status)));
        assert_eq!(done, vec![(5, IoStatus::Failed(libc::EIO))]);
        assert!(!device.is_written(5));
        device.release_hold();
        // A fault rule fails the next matching IO only.
        device.add_fault(SimFault {
            kind: IoKind::Write,
            blocks: (8, 9),
            errno: libc::ENOSPC,
            remaining: 1,
        });
        write(&mut channel, 9, 1);
        write(&mut channel, 9, 2);
        done.clear();
        channel.poll(&mut |c| done.push((c.request.offset_blocks, c.status)));
        assert_eq!(done, vec![(9, IoStatus::Failed(libc::ENOSPC)), (9, IoStatus::Success)]);
        assert_eq!(device.read_content(9, 1)[0], 2);
        assert_eq!(channel.in_flight(), 0);
    }
}
