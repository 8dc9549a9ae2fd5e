//! Command slots of one queue pair: each command the host sent lives in a slot from its
//! capsule to its response, with its data in a piece of the connection's arena. Slots are
//! sized at connection set-up (`max_queue_depth`) and reused; nothing here allocates per
//! command. The transfer tag of an R2T is the slot's index plus one.

use crate::export::arena::Arena;
use crate::host::{IoBuffer, IoFlags, IoKind, IoRequest};
use crate::nvme::command::{Command, Status};

/// Commands a queue holds before Connect told its size: a host sends Connect and waits.
const PRE_CONNECT_COMMANDS_MAX: usize = 4;

/// Where a command is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum SlotState {
    #[default]
    Free,
    /// Its in-capsule data is arriving.
    Receiving,
    /// Waits for arena room for its data.
    AwaitingBuffer,
    /// Its R2T is out; H2CData is arriving.
    AwaitingData,
    /// Being executed: IO in flight, an AER held, a shutdown flushing.
    Executing,
    /// Its data and response are queued for the socket.
    Responding,
}

/// A command's device IO, split into pieces (Write Zeroes and Dataset Management ranges are
/// cut at the device's limits) issued a few at a time.
#[derive(Debug, Default)]
pub(super) struct IoProgress {
    pub kind: Option<IoKind>,
    pub flags: IoFlags,
    /// Index of the namespace channel (NSID - 1) and the channel's identity when the command
    /// started, so a namespace replaced meanwhile never receives the rest.
    pub channel: usize,
    pub channel_id: u64,
    /// Blocks [cursor, end) of the current range remain; pieces of at most `chunk_blocks`.
    pub cursor: u64,
    pub end: u64,
    pub chunk_blocks: u64,
    /// Dataset Management: the next range to start, and how many there are.
    pub next_range: u16,
    pub range_count: u16,
    pub in_flight: u8,
    pub issued: u32,
    /// A piece the channel refused (full); retried first.
    pub stalled: Option<IoRequest>,
    /// Queued for submission (in the queue pair's submit queue).
    pub queued: bool,
    pub status: Status,
}

/// One command.
#[derive(Debug, Default)]
pub(super) struct Slot {
    pub command: Command,
    pub state: SlotState,
    /// The command's data buffer, exactly `transfer_bytes` long; out with a device IO while
    /// one holds it.
    pub buffer: Option<IoBuffer>,
    /// The arena piece's alignment padding past `transfer_bytes`.
    spare: Option<IoBuffer>,
    arena_offset: u32,
    pub transfer_bytes: u32,
    /// Host-to-controller data received so far.
    pub received_bytes: u32,
    /// A data digest did not match: the command completes with a transient transport error.
    pub digest_failed: bool,
    pub io: IoProgress,
}

/// The slots of a queue pair and the arena their data lives in.
pub(super) struct SlotTable {
    pub slots: Vec<Slot>,
    free: Vec<u16>,
    arena: Arena,
    /// Commands the queue may hold at once: its negotiated size once connected.
    limit: usize,
}

impl SlotTable {
    pub fn new(count: usize, arena_bytes: usize) -> SlotTable {
        SlotTable {
            slots: (0..count).map(|_| Slot::default()).collect(),
            free: (0..count as u16).rev().collect(), // count ≤ NVMF_QUEUE_DEPTH_MAX, a u16
            arena: Arena::new(arena_bytes, count),
            limit: PRE_CONNECT_COMMANDS_MAX.min(count),
        }
    }

    /// Bounds the commands held at once (the queue's entries, from Connect's SQSIZE).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.clamp(1, self.slots.len());
    }

    pub fn get(&self, index: u16) -> &Slot {
        &self.slots[usize::from(index)]
    }

    pub fn get_mut(&mut self, index: u16) -> &mut Slot {
        &mut self.slots[usize::from(index)]
    }

    /// A free slot for `command`, or `None` while every slot is busy.
    pub fn take(&mut self, command: Command) -> Option<u16> {
        if self.slots.len() - self.free.len() >= self.limit {
            return None;
        }
        let index = self.free.pop()?;
        let slot = &mut self.slots[usize::from(index)];
        debug_assert_eq!(slot.state, SlotState::Free);
        slot.command = command;
        Some(index)
    }

    /// Gives `index` a data buffer of `bytes` from the arena; false while there is no room.
    pub fn attach_buffer(&mut self, index: u16, bytes: u32) -> bool {
        let Some((offset, mut piece)) = self.arena.alloc(bytes as usize) else {
            return false;
        };
        let spare = piece.split_off(bytes as usize);
        let slot = &mut self.slots[usize::from(index)];
        slot.buffer = Some(piece);
        slot.spare = Some(spare);
        slot.arena_offset = offset;
        slot.transfer_bytes = bytes;
        true
    }

    /// Whether a buffer of `bytes` could ever fit (the whole arena).
    pub fn could_fit(&self, bytes: u32) -> bool {
        (bytes as usize).next_multiple_of(crate::limits::IO_BUFFER_ALIGN_BYTES)
            <= self.arena.capacity_bytes()
    }

    /// The command is done and its response sent: its data goes back to the arena.
    pub fn release(&mut self, index: u16) {
        let slot = &mut self.slots[usize::from(index)];
        debug_assert!(slot.io.in_flight == 0 && slot.io.stalled.is_none());
        let buffer = slot.buffer.take();
        let spare = slot.spare.take();
        match (buffer, spare) {
            (Some(mut buffer), Some(spare)) => {
                if buffer.unsplit(spare).is_err() {
                    debug_assert!(false, "a slot's buffer and spare are one piece");
                }
                self.arena.free(slot.arena_offset, buffer);
            }
            (None, None) => {}
            _ => debug_assert!(false, "slot {index} lost part of its buffer"),
        }
        *slot = Slot::default();
        self.free.push(index);
    }
}
