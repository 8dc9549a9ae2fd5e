//! A volume's per-core channel: the fast path (DESIGN.md "Data flow"). It lives on one core,
//! serves reads of mapped blocks, reads of unmapped blocks (zeroes, no device IO) and writes to
//! blocks that are certainly not shared straight from the published view, and sends everything
//! else to the pool owner through the ring. Every device IO enters the pool's epoch before the
//! view is read and leaves when the device completes (I3: no read sees a reused block).
//!
//! A request is split at data-block boundaries into pieces, at most
//! `THIN_PIECES_PER_ROUND_MAX` at a time (longer requests are served in rounds); pieces come
//! back in any order and their buffers are joined back in order, so the frontend gets its
//! request whole. Slots, rings and queues are sized at creation: nothing allocates per IO.

use std::collections::VecDeque;
use std::sync::Arc;

use super::grace::EpochTicket;
use super::pool::{ChannelShared, OwnerMessage, OwnerOp, PoolLimits, PoolShared};
use super::types::{VirtBlock, VolumeId};
use super::view::{Resolved, VolumeView};
use crate::host::{
    BlockDevice, DeviceChannel, DeviceError, IoCompletion, IoFlags, IoKind, IoRequest, IoStatus,
    SgList, Waker,
};
use crate::limits;

const PIECES: usize = limits::THIN_PIECES_PER_ROUND_MAX;
/// Piece number of a request sent to the owner whole (unmap, write_zeroes, flush).
const WHOLE: u64 = 0xff;
/// Piece number of a request inside one data block sent whole to the device (the fast path:
/// no split, no join; only its offset and tag are rewritten and restored).
const SINGLE_DEVICE: u64 = 0xfe;
/// Piece number of a request inside one data block sent whole to the owner.
const SINGLE_OWNER: u64 = 0xfd;

/// Geometry a channel needs, fixed for the pool's life.
#[derive(Clone, Copy, Debug)]
pub struct ChannelGeometry {
    pub lba_bytes: u64,
    pub lbas_per_block: u64,
    pub data_offset_lbas: u64,
}

#[derive(Default)]
struct Slot {
    busy: bool,
    request: Option<IoRequest>,
    /// Bytes of the request not yet issued, and the LBA they start at.
    remaining: SgList,
    next_lba: u64,
    end_lba: u64,
    /// Finished pieces of earlier rounds, joined in order.
    done: SgList,
    pieces: [Option<SgList>; PIECES],
    piece_count: usize,
    outstanding: usize,
    device_outstanding: usize,
    ticket: Option<EpochTicket>,
    status: IoStatus,
    /// A single-block request's own offset and tag, restored at completion.
    original_offset: u64,
    original_tag: u64,
}

/// One core's channel of one thin volume.
pub struct VolumeChannel<D: BlockDevice, W: Waker> {
    volume: VolumeId,
    view: Arc<VolumeView>,
    pool: Arc<PoolShared<W>>,
    index: u32,
    shared: Arc<ChannelShared<W>>,
    data: D::Channel,
    geometry: ChannelGeometry,
    /// Requests in flight at most (the pool's `channel_depth`).
    depth: usize,
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    /// Requests for the owner that found its inbox full (back-pressure).
    outbox: VecDeque<OwnerMessage>,
    /// Requests waiting for a new snapshot's view: (slot, end virtual block).
    parked: VecDeque<(usize, u64)>,
    /// Finished requests waiting for the next poll's `complete` callback.
    ready: VecDeque<IoCompletion>,
    completed: Vec<IoCompletion>,
}

fn token(slot: usize, piece: u64) -> u64 {
    (slot as u64) << 8 | piece
}

fn untoken(token: u64) -> (usize, u64) {
    // Fits: slots are bounded by THIN_CHANNEL_DEPTH_MAX.
    ((token >> 8) as usize, token & 0xff)
}

impl<D: BlockDevice, W: Waker> VolumeChannel<D, W> {
    /// Opens a channel on the calling core; `waker` wakes this core when the owner replies.
    /// `limits` are the pool's (the channel takes its depth from them).
    pub fn open(
        pool: Arc<PoolShared<W>>,
        view: Arc<VolumeView>,
        device: &D,
        geometry: ChannelGeometry,
        limits: PoolLimits,
        waker: W,
    ) -> Result<VolumeChannel<D, W>, DeviceError> {
        assert!(limits.is_valid(), "pool limits out of range: {limits:?}");
        let data = device.open_channel()?;
        let depth = limits.channel_depth;
        let (index, shared) = pool.register_channel(waker, depth);
        Ok(VolumeChannel {
            volume: view.id(),
            view,
            pool,
            index,
            shared,
            data,
            geometry,
            depth,
            slots: (0..depth).map(|_| Slot::default()).collect(),
            free_slots: (0..depth).rev().collect(),
            outbox: VecDeque::with_capacity(depth),
            parked: VecDeque::with_capacity(depth),
            ready: VecDeque::with_capacity(depth),
            completed: Vec::with_capacity(limits::DEVICE_CHANNEL_DEPTH_MAX),
        })
    }

    pub fn volume(&self) -> VolumeId {
        self.volume
    }

    fn send_to_owner(&mut self, message: OwnerMessage) {
        if !self.outbox.is_empty() {
            self.outbox.push_back(message);
            return;
        }
        if let Err(message) = self.pool.inbox.push(message) {
            self.outbox.push_back(message);
        }
    }

    fn flush_outbox(&mut self) -> bool {
        let mut moved = false;
        while let Some(message) = self.outbox.pop_front() {
            match self.pool.inbox.push(message) {
                Ok(()) => moved = true,
                Err(message) => {
                    self.outbox.push_front(message);
                    break;
                }
            }
        }
        moved
    }

    /// Issues the next round of pieces of slot `index`.
    fn issue_round(&mut self, index: usize) {
        let geometry = self.geometry;
        let block_lbas = geometry.lbas_per_block;
        let slot = &mut self.slots[index];
        let Some(request) = slot.request.as_ref() else {
            return;
        };
        let (kind, flags) = (request.kind, request.flags);
        slot.piece_count = 0;
        slot.outstanding = 0;
        slot.device_outstanding = 0;
        // Enter before reading the view (see grace.rs for the protocol).
        let ticket = self.shared.epochs.enter(&self.pool.epochs);
        let mut device_ios: arrayvec::ArrayVec<IoRequest, PIECES> = arrayvec::ArrayVec::new();
        let mut owner_ios: arrayvec::ArrayVec<OwnerMessage, PIECES> = arrayvec::ArrayVec::new();
        while slot.next_lba < slot.end_lba && slot.piece_count < PIECES {
            let piece = slot.piece_count;
            let lba = slot.next_lba;
            let vblock = lba / block_lbas;
            let in_block = lba % block_lbas;
            let count = (block_lbas - in_block).min(slot.end_lba - lba);
            let bytes = (count * geometry.lba_bytes) as usize;
            let tail = slot.remaining.split_off(bytes).unwrap_or_default();
            let mut buffers = std::mem::replace(&mut slot.remaining, tail);
            slot.next_lba += count;
            slot.piece_count += 1;
            slot.outstanding += 1;
            let resolved = self.view.resolve(VirtBlock(vblock));
            let tag = token(index, piece as u64);
            match (kind, resolved) {
                (IoKind::Read, Resolved::Unmapped) => {
                    buffers.fill(0);
                    slot.pieces[piece] = Some(buffers);
                    slot.outstanding -= 1;
                }
                (IoKind::Read, Resolved::Mapped { data_block, .. }) => {
                    let device_lba = geometry.data_offset_lbas + data_block.0 * block_lbas;
                    let io = IoRequest::new(IoKind::Read, device_lba + in_block, count, tag)
                        .with_buffers(buffers);
                    device_ios.push(io);
                }
                (_, Resolved::Mapped { data_block, exclusive: true })
                    if !flags.contains(IoFlags::FUA) && !self.view.is_quiesced() =>
                {
                    let device_lba = geometry.data_offset_lbas + data_block.0 * block_lbas;
                    let io = IoRequest::new(IoKind::Write, device_lba + in_block, count, tag)
                        .with_buffers(buffers);
                    device_ios.push(io);
                }
                _ => {
                    // Provision, break sharing, quiesced or FUA: the owner's work.
                    let io = IoRequest::new(IoKind::Write, lba, count, tag)
                        .with_buffers(buffers)
                        .with_flags(flags);
                    owner_ios.push(OwnerMessage {
                        channel: self.index,
                        volume: self.volume,
                        op: OwnerOp::Write,
                        request: io,
                        token: tag,
                    });
                }
            }
        }
        slot.device_outstanding = device_ios.len();
        if device_ios.is_empty() {
            // Nothing of this round touches the device: the epoch is left at once (a request
            // handed to the owner leaves its epoch at the hand-off).
            self.shared.epochs.leave(ticket);
        } else {
            slot.ticket = Some(ticket);
        }
        for io in device_ios {
            if let Err(io) = self.data.submit(io) {
                // The device channel is as deep as this channel: cannot happen; fail the piece.
                debug_assert!(false, "data channel full");
                self.piece_done(
                    IoCompletion { request: io, status: IoStatus::Failed(libc::EAGAIN) },
                    true,
                );
            }
        }
        for message in owner_ios {
            self.send_to_owner(message);
        }
        if self.slots[index].outstanding == 0 {
            self.round_done(index);
        }
    }

    /// Sends a read or write on its way: whole if it lies inside one data block, else split.
    fn dispatch_data(&mut self, index: usize, mut request: IoRequest) {
        let block_lbas = self.geometry.lbas_per_block;
        let first = request.offset_blocks / block_lbas;
        let last = (request.offset_blocks + request.num_blocks - 1) / block_lbas;
        if first == last {
            self.submit_single(index, request);
            return;
        }
        let slot = &mut self.slots[index];
        slot.remaining = request.buffers.take();
        slot.next_lba = request.offset_blocks;
        slot.end_lba = request.offset_blocks + request.num_blocks;
        slot.request = Some(request);
        self.issue_round(index);
    }

    /// Retries requests parked until their range of a new snapshot's view is filled.
    fn retry_parked(&mut self) {
        for _ in 0..self.parked.len() {
            let Some((index, end_vblock)) = self.parked.pop_front() else {
                break;
            };
            if !self.view.is_ready_below(VirtBlock(end_vblock)) {
                self.parked.push_back((index, end_vblock));
                continue;
            }
            if let Some(request) = self.slots[index].request.take() {
                self.dispatch_data(index, request);
            }
        }
    }

    /// The fast path: a request inside one data block goes to the device (or the owner)
    /// whole, with only its offset and tag rewritten.
    fn submit_single(&mut self, index: usize, mut request: IoRequest) {
        let block_lbas = self.geometry.lbas_per_block;
        let vblock = request.offset_blocks / block_lbas;
        let in_block = request.offset_blocks % block_lbas;
        // Enter before reading the view (see grace.rs for the protocol).
        let ticket = self.shared.epochs.enter(&self.pool.epochs);
        let resolved = self.view.resolve(VirtBlock(vblock));
        let write = request.kind == IoKind::Write;
        debug_assert!(resolved != Resolved::NotReady, "dispatched before its view was ready");
        let direct = match resolved {
            Resolved::Unmapped if !write => {
                self.shared.epochs.leave(ticket);
                request.buffers.fill(0);
                self.finish(index, request, IoStatus::Success);
                return;
            }
            Resolved::Mapped { data_block, .. } if !write => Some(data_block),
            Resolved::Mapped { data_block, exclusive: true }
                if !request.flags.contains(IoFlags::FUA) && !self.view.is_quiesced() =>
            {
                Some(data_block)
            }
            _ => None,
        };
        let slot = &mut self.slots[index];
        slot.original_offset = request.offset_blocks;
        slot.original_tag = request.tag;
        match direct {
            Some(data_block) => {
                slot.ticket = Some(ticket);
                request.offset_blocks =
                    self.geometry.data_offset_lbas + data_block.0 * block_lbas + in_block;
                request.tag = token(index, SINGLE_DEVICE);
                if let Err(request) = self.data.submit(request) {
                    // The device channel is as deep as this channel: cannot happen.
                    debug_assert!(false, "data channel full");
                    let status = IoStatus::Failed(libc::EAGAIN);
                    self.piece_done(IoCompletion { request, status }, true);
                }
            }
            None => {
                // Provision, break sharing, quiesced or FUA: the owner's work. The epoch is
                // left at the hand-off.
                self.shared.epochs.leave(ticket);
                let tag = token(index, SINGLE_OWNER);
                request.tag = tag;
                self.send_to_owner(OwnerMessage {
                    channel: self.index,
                    volume: self.volume,
                    op: OwnerOp::Write,
                    request,
                    token: tag,
                });
            }
        }
    }

    /// A piece came back (from the device when `device`, else from the owner).
    fn piece_done(&mut self, completion: IoCompletion, device: bool) {
        let IoCompletion { mut request, status } = completion;
        let (index, piece) = untoken(request.tag);
        let Some(slot) = self.slots.get_mut(index).filter(|s| s.busy) else {
            debug_assert!(false, "completion for an idle slot");
            return;
        };
        if piece == SINGLE_DEVICE || piece == SINGLE_OWNER {
            if let Some(ticket) = slot.ticket.take() {
                self.shared.epochs.leave(ticket);
            }
            request.offset_blocks = slot.original_offset;
            request.tag = slot.original_tag;
            self.finish(index, request, status);
            return;
        }
        if piece == WHOLE {
            let mut original = slot.request.take().expect("a busy slot holds its request");
            original.buffers = request.buffers.take();
            self.finish(index, original, status);
            return;
        }
        if !status.is_success() && slot.status.is_success() {
            slot.status = status;
        }
        if let Some(place) = slot.pieces.get_mut(piece as usize) {
            *place = Some(request.buffers.take());
        }
        slot.outstanding -= 1;
        if device {
            slot.device_outstanding -= 1;
            if slot.device_outstanding == 0
                && let Some(ticket) = slot.ticket.take()
            {
                self.shared.epochs.leave(ticket);
            }
        }
        if slot.outstanding == 0 {
            self.round_done(index);
        }
    }

    fn round_done(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        for piece in 0..slot.piece_count {
            if let Some(buffers) = slot.pieces[piece].take()
                && let Err(buffers) = slot.done.rejoin(buffers)
            {
                // Cannot happen for pieces split from one list; keep the bytes anyway.
                debug_assert!(false, "pieces did not rejoin");
                drop(buffers);
                slot.status = IoStatus::Failed(libc::EIO);
            }
        }
        slot.piece_count = 0;
        if slot.next_lba < slot.end_lba {
            self.issue_round(index);
            return;
        }
        let mut request = slot.request.take().expect("a busy slot holds its request");
        request.buffers = slot.done.take();
        let status = slot.status;
        self.finish(index, request, status);
    }

    fn finish(&mut self, index: usize, request: IoRequest, status: IoStatus) {
        let slot = &mut self.slots[index];
        slot.busy = false;
        slot.status = IoStatus::Success;
        self.free_slots.push(index);
        self.ready.push_back(IoCompletion { request, status });
    }
}

impl<D: BlockDevice, W: Waker> DeviceChannel for VolumeChannel<D, W> {
    fn submit(&mut self, request: IoRequest) -> Result<(), IoRequest> {
        if self.ready.len() + self.in_flight_slots() >= self.depth {
            return Err(request);
        }
        let Some(index) = self.free_slots.pop() else {
            return Err(request);
        };
        let lba_bytes = self.geometry.lba_bytes as u32;
        let invalid = request.validate(lba_bytes, self.view.size_lbas()).err();
        let deleted = self.view.is_deleted();
        let slot = &mut self.slots[index];
        slot.busy = true;
        slot.status = IoStatus::Success;
        if let Some(status) = invalid.or(deleted.then_some(IoStatus::Failed(libc::ENODEV))) {
            self.finish(index, request, status);
            return Ok(());
        }
        match request.kind {
            IoKind::Read | IoKind::Write => {
                let end_vblock = (request.offset_blocks + request.num_blocks)
                    .div_ceil(self.geometry.lbas_per_block);
                if self.view.is_ready_below(VirtBlock(end_vblock)) {
                    self.dispatch_data(index, request);
                } else {
                    // A new snapshot's view is still being filled: wait for this range.
                    slot.request = Some(request);
                    self.parked.push_back((index, end_vblock));
                }
            }
            IoKind::Unmap | IoKind::WriteZeroes | IoKind::Flush => {
                let op = match request.kind {
                    IoKind::Unmap => OwnerOp::Unmap,
                    IoKind::WriteZeroes => OwnerOp::WriteZeroes,
                    _ => OwnerOp::Flush,
                };
                let tag = token(index, WHOLE);
                let own =
                    IoRequest::new(request.kind, request.offset_blocks, request.num_blocks, tag)
                        .with_flags(request.flags);
                slot.request = Some(request);
                self.send_to_owner(OwnerMessage {
                    channel: self.index,
                    volume: self.volume,
                    op,
                    request: own,
                    token: tag,
                });
            }
            IoKind::Reset => self.finish(index, request, IoStatus::Success),
        }
        Ok(())
    }

    fn poll(&mut self, complete: &mut impl FnMut(IoCompletion)) -> usize {
        self.flush_outbox();
        if !self.parked.is_empty() {
            self.retry_parked();
        }
        // Earlier completions first, so the frontend sees them in order.
        let mut count = self.ready.len();
        while let Some(completion) = self.ready.pop_front() {
            complete(completion);
        }
        if self.data.in_flight() > 0 {
            let mut completed = std::mem::take(&mut self.completed);
            // The fast path's completions go straight to the frontend (offset and tag
            // restored, epoch left); split pieces are joined after the device poll.
            let Self { data, slots, shared, free_slots, .. } = self;
            data.poll(&mut |mut completion| {
                let (index, piece) = untoken(completion.request.tag);
                match slots.get_mut(index) {
                    Some(slot) if piece == SINGLE_DEVICE && slot.busy => {
                        if let Some(ticket) = slot.ticket.take() {
                            shared.epochs.leave(ticket);
                        }
                        completion.request.offset_blocks = slot.original_offset;
                        completion.request.tag = slot.original_tag;
                        slot.busy = false;
                        slot.status = IoStatus::Success;
                        free_slots.push(index);
                        count += 1;
                        complete(completion);
                    }
                    _ => completed.push(completion),
                }
            });
            for completion in completed.drain(..) {
                self.piece_done(completion, true);
            }
            self.completed = completed;
        }
        while let Some(reply) = self.shared.replies.pop() {
            let mut request = reply.request;
            request.tag = reply.token;
            self.piece_done(IoCompletion { request, status: reply.status }, false);
        }
        count += self.ready.len();
        while let Some(completion) = self.ready.pop_front() {
            complete(completion);
        }
        count
    }

    fn in_flight(&self) -> usize {
        self.in_flight_slots() + self.ready.len()
    }

    fn prepare_park(&mut self) -> bool {
        self.ready.is_empty()
            && self.outbox.is_empty()
            && self.parked.is_empty()
            && self.data.prepare_park()
    }
}

impl<D: BlockDevice, W: Waker> VolumeChannel<D, W> {
    fn in_flight_slots(&self) -> usize {
        self.depth - self.free_slots.len()
    }
}

impl<D: BlockDevice, W: Waker> Drop for VolumeChannel<D, W> {
    fn drop(&mut self) {
        self.pool.unregister_channel(self.index);
    }
}
