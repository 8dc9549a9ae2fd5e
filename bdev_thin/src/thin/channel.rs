//! A volume's per-core channel: the fast path (DESIGN.md "Data flow"). It lives on one core,
//! serves reads of mapped blocks, reads of unmapped blocks (zeroes, no device IO) and writes to
//! blocks that are certainly not shared straight from the published view, and sends everything
//! else to the pool owner through the ring. Every device IO enters the pool's epoch before the
//! view is read and leaves when the device completes (I3: no read sees a reused block).
//!
//! A request is split at data-block boundaries into pieces; each request keeps at most
//! `THIN_REQUEST_PIECES_IN_FLIGHT_MAX` pieces in flight and issues the next as one completes.
//! Pieces come back in any order and their buffers are joined back in order, so the frontend
//! gets its request whole.
//!
//! Every piece on the data device and every message to the owner holds one of the channel's
//! `THIN_CHANNEL_PIECES_IN_FLIGHT_MAX` *credits* until it comes back. The owner's reply ring,
//! the channel's outbox and its device backlog hold that many, and the data device's channel
//! takes at least that many, so none of them can overflow however many pieces the admitted
//! requests split into: a request that finds no credit waits in the channel's queue
//! (back-pressure, first come first served) and goes on when a piece comes back. Slots, rings
//! and queues are sized at creation: nothing allocates per IO.

use std::collections::VecDeque;
use std::sync::Arc;

use super::grace::EpochTicket;
use super::mutations::{Mutation, Mutations};
use super::pool::{ChannelShared, OwnerMessage, OwnerOp, PoolLimits, PoolShared};
use super::types::{VirtBlock, VolumeId};
use super::view::{Resolved, VolumeView};
use crate::host::{
    BlockDevice, DeviceChannel, DeviceError, IoCompletion, IoFlags, IoKind, IoRequest, IoStatus,
    SgList, Waker,
};
use crate::limits;

const WINDOW: usize = limits::THIN_REQUEST_PIECES_IN_FLIGHT_MAX;
/// Piece number of a request sent to the owner whole (unmap, write_zeroes, flush).
const WHOLE: u64 = 0xff;
/// Piece number of a request inside one data block sent whole to the device (the fast path:
/// no split, no join; only its offset and tag are rewritten and restored).
const SINGLE_DEVICE: u64 = 0xfe;
/// Piece number of a request inside one data block sent whole to the owner.
const SINGLE_OWNER: u64 = 0xfd;

const _: () = assert!(WINDOW < SINGLE_OWNER as usize);

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
    /// The request was split and its pieces are being issued; false while it waits to start.
    split: bool,
    /// Bytes of the request not yet issued, and the LBA they start at.
    remaining: SgList,
    next_lba: u64,
    end_lba: u64,
    /// Pieces issued and pieces joined back into `done`, in order.
    issued: u64,
    joined: u64,
    /// Finished pieces of the request, joined in order.
    done: SgList,
    /// Pieces that came back but wait for an earlier one, by piece number modulo `WINDOW`.
    pieces: [Option<SgList>; WINDOW],
    /// The epochs of the pieces on the data device, by piece number modulo `WINDOW`.
    tickets: [Option<EpochTicket>; WINDOW],
    /// In the channel's queue of requests waiting for a credit.
    waiting: bool,
    /// Parked until a new snapshot's view is filled far enough.
    parked: bool,
    status: IoStatus,
    /// The epoch of a single-block request on the data device.
    ticket: Option<EpochTicket>,
    /// A single-block request's own offset and tag, restored at completion.
    original_offset: u64,
    original_tag: u64,
}

impl Slot {
    /// Joins the finished pieces that follow the joined ones, in order.
    fn join_pieces(&mut self) {
        while self.joined < self.issued {
            let place = (self.joined % WINDOW as u64) as usize;
            let Some(buffers) = self.pieces[place].take() else {
                break;
            };
            if let Err(buffers) = self.done.rejoin(buffers) {
                // Cannot happen for pieces split from one list; keep the bytes anyway.
                debug_assert!(false, "pieces did not rejoin");
                drop(buffers);
                self.status = IoStatus::Failed(libc::EIO);
            }
            self.joined += 1;
        }
    }
}

/// Where one piece of a split request went.
enum Piece {
    /// On the data device or with the owner: holds a credit until it comes back.
    Sent,
    /// An unmapped block read as zeroes: done at once.
    Zeroed,
    /// Its part of the view is not ready yet: the request parks.
    NotReady,
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
    /// Credits not held by a piece in flight (see the module's comment).
    credits: usize,
    /// Credits in all (the pool's `channel_credits`).
    credits_max: usize,
    /// Requests waiting for a credit, first come first served (each slot at most once).
    waiting: VecDeque<usize>,
    /// Requests for the owner that found its inbox full (back-pressure).
    outbox: VecDeque<OwnerMessage>,
    /// Pieces the data device's channel refused for now, retried in order at each poll.
    device_backlog: VecDeque<IoRequest>,
    /// Requests waiting for a new snapshot's view: (slot, end virtual block).
    parked: VecDeque<(usize, u64)>,
    /// Finished requests waiting for the next poll's `complete` callback.
    ready: VecDeque<IoCompletion>,
    completed: Vec<IoCompletion>,
    mutations: Mutations,
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
        let credits = limits.channel_credits;
        let (index, shared) = pool.register_channel(waker, credits);
        debug_assert!(shared.replies.capacity() >= credits, "the reply ring holds every credit");
        let mutations = pool.mutations();
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
            credits,
            credits_max: credits,
            waiting: VecDeque::with_capacity(depth),
            outbox: VecDeque::with_capacity(credits),
            device_backlog: VecDeque::with_capacity(credits),
            parked: VecDeque::with_capacity(depth),
            ready: VecDeque::with_capacity(depth),
            completed: Vec::with_capacity(limits::DEVICE_CHANNEL_DEPTH_MAX),
            mutations,
        })
    }

    pub fn volume(&self) -> VolumeId {
        self.volume
    }

    /// Sends `message` to the owner; the caller took its credit.
    fn send_to_owner(&mut self, message: OwnerMessage) {
        if !self.outbox.is_empty() {
            self.outbox.push_back(message);
            return;
        }
        if let Err(message) = self.pool.inbox.push(message) {
            self.outbox.push_back(message);
        }
    }

    fn flush_outbox(&mut self) {
        while let Some(message) = self.outbox.pop_front() {
            if let Err(message) = self.pool.inbox.push(message) {
                self.outbox.push_front(message);
                break;
            }
        }
    }

    /// Submits a piece to the data device; the caller took its credit.
    fn submit_device(&mut self, io: IoRequest) {
        if !self.device_backlog.is_empty() {
            self.device_backlog.push_back(io);
            return;
        }
        if let Err(io) = self.data.submit(io) {
            if self.mutations.is_on(Mutation::RingsSizedForRequests) {
                // Failed at the next poll, as a completion.
                let status = IoStatus::Failed(libc::EAGAIN);
                self.completed.push(IoCompletion { request: io, status });
                return;
            }
            self.device_backlog.push_back(io);
        }
    }

    fn flush_device_backlog(&mut self) {
        while let Some(io) = self.device_backlog.pop_front() {
            if let Err(io) = self.data.submit(io) {
                self.device_backlog.push_front(io);
                break;
            }
        }
    }

    /// Queues slot `index` until a credit comes back.
    fn wait_for_credit(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if !slot.waiting {
            slot.waiting = true;
            self.waiting.push_back(index);
        }
    }

    /// Parks slot `index` until the view is ready below `end_vblock`.
    fn park(&mut self, index: usize, end_vblock: u64) {
        let slot = &mut self.slots[index];
        if !slot.parked {
            slot.parked = true;
            self.parked.push_back((index, end_vblock));
        }
    }

    /// Starts (or restarts, after waiting) the request of slot `index`.
    fn start(&mut self, index: usize) {
        let Some(request) = self.slots[index].request.as_ref() else {
            return;
        };
        let (kind, first_lba, lbas) = (request.kind, request.offset_blocks, request.num_blocks);
        match kind {
            IoKind::Read | IoKind::Write => {
                let block_lbas = self.geometry.lbas_per_block;
                let end_vblock = (first_lba + lbas).div_ceil(block_lbas);
                if self.view.is_deleted() {
                    // A deleted snapshot's view is never filled: a request parked for it would
                    // wait for ever (found by thin_sim).
                    if let Some(request) = self.slots[index].request.take() {
                        self.finish(index, request, IoStatus::Failed(libc::ENODEV));
                    }
                    return;
                }
                if !self.view.is_ready_below(VirtBlock(end_vblock)) {
                    // A new snapshot's view is still being filled: wait for this range.
                    return self.park(index, end_vblock);
                }
                if self.credits == 0 {
                    return self.wait_for_credit(index);
                }
                if first_lba / block_lbas == end_vblock - 1 {
                    if let Some(request) = self.slots[index].request.take() {
                        self.submit_single(index, request);
                    }
                    return;
                }
                let slot = &mut self.slots[index];
                let Some(request) = slot.request.as_mut() else {
                    return;
                };
                slot.remaining = request.buffers.take();
                slot.next_lba = first_lba;
                slot.end_lba = first_lba + lbas;
                slot.split = true;
                self.issue_pieces(index);
            }
            IoKind::Unmap | IoKind::WriteZeroes | IoKind::Flush => {
                if self.credits == 0 {
                    return self.wait_for_credit(index);
                }
                self.credits -= 1;
                let op = match kind {
                    IoKind::Unmap => OwnerOp::Unmap,
                    IoKind::WriteZeroes => OwnerOp::WriteZeroes,
                    _ => OwnerOp::Flush,
                };
                let tag = token(index, WHOLE);
                let flags = self.slots[index].request.as_ref().map_or(IoFlags::NONE, |r| r.flags);
                let own = IoRequest::new(kind, first_lba, lbas, tag).with_flags(flags);
                self.send_to_owner(OwnerMessage {
                    channel: self.index,
                    volume: self.volume,
                    op,
                    request: own,
                    token: tag,
                });
            }
            IoKind::Reset => {
                if let Some(request) = self.slots[index].request.take() {
                    self.finish(index, request, IoStatus::Success);
                }
            }
        }
    }

    /// Goes on with slot `index` after it waited for a credit or for its view.
    fn resume(&mut self, index: usize) {
        if self.slots[index].split {
            self.issue_pieces(index);
        } else {
            self.start(index);
        }
    }

    /// Issues pieces of split slot `index` while its window and the channel's credits allow.
    fn issue_pieces(&mut self, index: usize) {
        loop {
            let slot = &self.slots[index];
            if slot.next_lba >= slot.end_lba || slot.issued - slot.joined >= WINDOW as u64 {
                // All issued, or the window is full: a returning piece goes on from here.
                break;
            }
            if self.credits == 0 && !self.mutations.is_on(Mutation::RingsSizedForRequests) {
                self.wait_for_credit(index);
                break;
            }
            match self.issue_piece(index) {
                Piece::Sent => {}
                // Join at once: a long unmapped read must not fill the window with pieces
                // nothing would join.
                Piece::Zeroed => self.slots[index].join_pieces(),
                Piece::NotReady => {
                    let slot = &self.slots[index];
                    let end_vblock = slot.end_lba.div_ceil(self.geometry.lbas_per_block);
                    self.park(index, end_vblock);
                    break;
                }
            }
        }
        self.finish_if_joined(index);
    }

    /// Issues the next piece of split slot `index`; a credit is free.
    fn issue_piece(&mut self, index: usize) -> Piece {
        let geometry = self.geometry;
        let block_lbas = geometry.lbas_per_block;
        let slot = &mut self.slots[index];
        let Some(request) = slot.request.as_ref() else {
            return Piece::Zeroed;
        };
        let (kind, flags) = (request.kind, request.flags);
        let lba = slot.next_lba;
        let vblock = lba / block_lbas;
        let in_block = lba % block_lbas;
        // Enter before reading the view (see grace.rs for the protocol), and read the quiesce
        // flag before the mapping: a write that saw the flag clear and then resolved its block
        // exclusive was either counted before the snapshot's drain, or resolved after the view
        // time moved on (the loom model in grace.rs checks both orders).
        let ticket = self.shared.epochs.enter(&self.pool.epochs);
        if self.view.is_deleted() {
            // The volume was deleted since the request started: its blocks went through their
            // grace period and may belong to another volume now, so the rest of the request
            // fails instead of resolving the dead view (found by thin_sim). The delete marked
            // the view before advancing the epoch this entry saw.
            self.shared.epochs.leave(ticket);
            let rest = slot.remaining.take();
            let piece = slot.issued;
            slot.issued += 1;
            slot.next_lba = slot.end_lba;
            slot.pieces[(piece % WINDOW as u64) as usize] = Some(rest);
            slot.status = IoStatus::Failed(libc::ENODEV);
            return Piece::Zeroed;
        }
        let quiesced = kind == IoKind::Write && self.view.is_quiesced();
        let resolved = self.view.resolve(VirtBlock(vblock));
        if resolved == Resolved::NotReady && !self.mutations.is_on(Mutation::UnreadyPieceToOwner) {
            self.shared.epochs.leave(ticket);
            return Piece::NotReady;
        }
        let count = (block_lbas - in_block).min(slot.end_lba - lba);
        let bytes = (count * geometry.lba_bytes) as usize;
        let tail = slot.remaining.split_off(bytes).unwrap_or_default();
        let mut buffers = std::mem::replace(&mut slot.remaining, tail);
        let piece = slot.issued;
        slot.issued += 1;
        slot.next_lba += count;
        let place = (piece % WINDOW as u64) as usize;
        let tag = token(index, piece % WINDOW as u64);
        let device_block = match (kind, resolved) {
            (IoKind::Read, Resolved::Unmapped) => {
                self.shared.epochs.leave(ticket);
                buffers.fill(0);
                slot.pieces[place] = Some(buffers);
                return Piece::Zeroed;
            }
            (IoKind::Read, Resolved::Mapped { data_block, .. }) => Some(data_block),
            (_, Resolved::Mapped { data_block, exclusive: true })
                if !flags.contains(IoFlags::FUA) && !quiesced =>
            {
                Some(data_block)
            }
            _ => None,
        };
        if !self.mutations.is_on(Mutation::RingsSizedForRequests) {
            self.credits -= 1;
        }
        match device_block {
            Some(data_block) => {
                slot.tickets[place] = Some(ticket);
                let device_lba = geometry.data_offset_lbas + data_block.0 * block_lbas;
                let io =
                    IoRequest::new(kind, device_lba + in_block, count, tag).with_buffers(buffers);
                self.submit_device(io);
            }
            None => {
                // Provision, break sharing, quiesced or FUA: the owner's work. The epoch is
                // left at the hand-off.
                self.shared.epochs.leave(ticket);
                let io = IoRequest::new(IoKind::Write, lba, count, tag)
                    .with_buffers(buffers)
                    .with_flags(flags);
                self.send_to_owner(OwnerMessage {
                    channel: self.index,
                    volume: self.volume,
                    op: OwnerOp::Write,
                    request: io,
                    token: tag,
                });
            }
        }
        Piece::Sent
    }

    /// Finishes split slot `index` once every piece is issued and joined.
    fn finish_if_joined(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.join_pieces();
        if slot.joined < slot.issued || slot.next_lba < slot.end_lba {
            return;
        }
        let Some(mut request) = slot.request.take() else {
            debug_assert!(false, "a busy slot holds its request");
            return;
        };
        request.buffers = slot.done.take();
        let status = slot.status;
        self.finish(index, request, status);
    }

    /// Retries requests parked until their range of a new snapshot's view is filled.
    fn retry_parked(&mut self) {
        for _ in 0..self.parked.len() {
            let Some((index, end_vblock)) = self.parked.pop_front() else {
                break;
            };
            if !self.view.is_deleted() && !self.view.is_ready_below(VirtBlock(end_vblock)) {
                self.parked.push_back((index, end_vblock));
                continue;
            }
            // Ready, or deleted: a resumed request then fails what remains of it.
            self.slots[index].parked = false;
            self.resume(index);
        }
    }

    /// Gives the credits that came back to the requests waiting for them, in order.
    fn resume_waiting(&mut self) {
        for _ in 0..self.waiting.len() {
            if self.credits == 0 {
                break;
            }
            let Some(index) = self.waiting.pop_front() else {
                break;
            };
            self.slots[index].waiting = false;
            self.resume(index);
        }
    }

    /// The fast path: a request inside one data block goes to the device (or the owner)
    /// whole, with only its offset and tag rewritten. A credit is free.
    fn submit_single(&mut self, index: usize, mut request: IoRequest) {
        let block_lbas = self.geometry.lbas_per_block;
        let vblock = request.offset_blocks / block_lbas;
        let in_block = request.offset_blocks % block_lbas;
        let write = request.kind == IoKind::Write;
        // Enter, then the quiesce flag, then the mapping (see `issue_piece`).
        let ticket = self.shared.epochs.enter(&self.pool.epochs);
        if self.view.is_deleted() {
            // Deleted while the request waited for a credit or its view (see `issue_piece`).
            self.shared.epochs.leave(ticket);
            self.finish(index, request, IoStatus::Failed(libc::ENODEV));
            return;
        }
        let quiesced = write && self.view.is_quiesced();
        let resolved = self.view.resolve(VirtBlock(vblock));
        let direct = match resolved {
            Resolved::NotReady => {
                // The view's ready mark fell behind this block: park as what it is (a read
                // stays a read), never hand it to the owner.
                self.shared.epochs.leave(ticket);
                self.slots[index].request = Some(request);
                return self.park(index, vblock + 1);
            }
            Resolved::Unmapped if !write => {
                self.shared.epochs.leave(ticket);
                request.buffers.fill(0);
                self.finish(index, request, IoStatus::Success);
                return;
            }
            Resolved::Mapped { data_block, .. } if !write => Some(data_block),
            Resolved::Mapped { data_block, exclusive: true }
                if !request.flags.contains(IoFlags::FUA) && !quiesced =>
            {
                Some(data_block)
            }
            _ => None,
        };
        self.credits -= 1;
        let slot = &mut self.slots[index];
        slot.original_offset = request.offset_blocks;
        slot.original_tag = request.tag;
        match direct {
            Some(data_block) => {
                slot.ticket = Some(ticket);
                request.offset_blocks =
                    self.geometry.data_offset_lbas + data_block.0 * block_lbas + in_block;
                request.tag = token(index, SINGLE_DEVICE);
                self.submit_device(request);
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

    /// A piece came back (from the device when `device`, else from the owner): its credit
    /// with it.
    fn piece_done(&mut self, completion: IoCompletion, device: bool) {
        let IoCompletion { mut request, status } = completion;
        let (index, piece) = untoken(request.tag);
        let Some(slot) = self.slots.get_mut(index).filter(|s| s.busy) else {
            debug_assert!(false, "completion for an idle slot");
            return;
        };
        let split = piece < WINDOW as u64;
        if !(split && self.mutations.is_on(Mutation::RingsSizedForRequests)) {
            self.credits += 1;
        }
        debug_assert!(self.credits <= self.credits_max, "a credit came back twice");
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
            let Some(mut original) = slot.request.take() else {
                debug_assert!(false, "a busy slot holds its request");
                return;
            };
            original.buffers = request.buffers.take();
            self.finish(index, original, status);
            return;
        }
        if !status.is_success() && slot.status.is_success() {
            slot.status = status;
        }
        let place = piece as usize % WINDOW;
        if device && let Some(ticket) = slot.tickets[place].take() {
            self.shared.epochs.leave(ticket);
        }
        slot.pieces[place] = Some(request.buffers.take());
        let more = slot.next_lba < slot.end_lba && !slot.parked;
        self.finish_if_joined(index);
        if more {
            // The window moved on: issue the next pieces when credits allow (in turn).
            self.wait_for_credit(index);
        }
    }

    fn finish(&mut self, index: usize, request: IoRequest, status: IoStatus) {
        let slot = &mut self.slots[index];
        debug_assert!(!slot.waiting && !slot.parked, "finished while queued");
        slot.busy = false;
        slot.split = false;
        slot.issued = 0;
        slot.joined = 0;
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
        self.slots[index].busy = true;
        self.slots[index].status = IoStatus::Success;
        if let Some(status) = invalid.or(deleted.then_some(IoStatus::Failed(libc::ENODEV))) {
            self.finish(index, request, status);
            return Ok(());
        }
        if request.kind.has_data() && self.waiting.is_empty() && self.credits > 0 {
            let block_lbas = self.geometry.lbas_per_block;
            let first = request.offset_blocks / block_lbas;
            let end_vblock = (request.offset_blocks + request.num_blocks).div_ceil(block_lbas);
            if first + 1 == end_vblock && self.view.is_ready_below(VirtBlock(end_vblock)) {
                // The fast path, without a detour through the slot.
                self.submit_single(index, request);
                return Ok(());
            }
        }
        self.slots[index].request = Some(request);
        if self.waiting.is_empty() {
            self.start(index);
        } else {
            // Earlier requests wait for credits: this one waits behind them.
            self.wait_for_credit(index);
        }
        Ok(())
    }

    fn poll(&mut self, complete: &mut impl FnMut(IoCompletion)) -> usize {
        self.flush_outbox();
        self.flush_device_backlog();
        if !self.parked.is_empty() {
            self.retry_parked();
        }
        // Earlier completions first, so the frontend sees them in order.
        let mut count = self.ready.len();
        while let Some(completion) = self.ready.pop_front() {
            complete(completion);
        }
        if self.data.in_flight() > 0 || !self.completed.is_empty() {
            let mut completed = std::mem::take(&mut self.completed);
            // The fast path's completions go straight to the frontend (offset and tag
            // restored, epoch left, credit back); split pieces are joined after the device
            // poll.
            let Self { data, slots, shared, free_slots, credits, .. } = self;
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
                        *credits += 1;
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
        if !self.waiting.is_empty() {
            self.resume_waiting();
            self.flush_device_backlog();
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
            && self.device_backlog.is_empty()
            && self.parked.is_empty()
            && (self.waiting.is_empty() || self.credits == 0)
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
