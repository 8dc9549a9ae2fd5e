//! One NVMe/TCP queue pair as a host drives it: a TCP connection, the command slots whose
//! command identifiers the controller answers, submission queue flow control (SQHD), and the
//! data each command moves. [`super::link`] does the socket work (connect, ICReq, receiving
//! and sending PDUs); this file is the bookkeeping both sides of it share.
//!
//! Owned by one poller or one core's IO queue pair and used only there: no locks. Command
//! data stays with the owner (a request's buffers, an Identify page) and is lent by
//! [`DataRef`] through a [`DataStore`], so a queue never copies or allocates per command. A
//! command is finished (its tag handed back in [`Finished`]) only once the controller
//! answered it and no PDU that reads its data is still queued for the socket, so the owner
//! may reuse the buffers the moment it sees the tag.
//!
//! Nothing a controller sends can panic it: a response, R2T or C2HData naming a command that
//! is not outstanding, data out of order or out of range, or a bad header fails the
//! connection; the owner then takes back every outstanding tag ([`QueuePair::abort_all`]).

use std::collections::VecDeque;
use std::net::TcpStream;

use super::link::{Input, OutPdu};
use crate::nvme::command::{Command, PSDT_SGL_METABUF, SglDescriptor, Status};
use crate::nvme::tcp::{Digests, Encoder, ReceiveRules, Role};

/// Bits of a command identifier that name the slot; the bits above count reuses of the slot,
/// so a late or duplicated answer for an earlier command in the same slot is recognised.
pub(super) const CID_SLOT_BITS: u32 = 10;
const CID_SLOT_MASK: u16 = (1 << CID_SLOT_BITS) - 1;
/// Most slots a queue pair has (what the slot bits can name).
pub(super) const SLOTS_MAX: usize = 1 << CID_SLOT_BITS;

const _: () = assert!(crate::limits::NVME_IO_QUEUE_ENTRIES_MAX as usize <= SLOTS_MAX);

/// Where a command's data lives in its owner's [`DataStore`]: `len` bytes from `offset` of the
/// buffer the owner calls `key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DataRef {
    pub key: u32,
    pub offset: u32,
    pub len: u32,
}

/// The owner's command data, lent to the queue pair by [`DataRef`].
pub(super) trait DataStore {
    /// The bytes of `data` from `at` (relative to `data.offset`) to the end of the first
    /// contiguous run (a buffer segment), at most to the end of `data`. Empty if `at` is at or
    /// past the end, or the key names nothing.
    fn run(&self, data: DataRef, at: u32) -> &[u8];

    /// As [`DataStore::run`], writable.
    fn run_mut(&mut self, data: DataRef, at: u32) -> &mut [u8];
}

/// Copies `bytes` into `data` from `at` on (received data goes through the shared receiver).
#[cfg(test)]
pub(super) fn copy_into(store: &mut impl DataStore, data: DataRef, mut at: u32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let run = store.run_mut(data, at);
        if run.is_empty() {
            debug_assert!(false, "copy past the end of command data");
            return;
        }
        let n = run.len().min(bytes.len());
        run[..n].copy_from_slice(&bytes[..n]);
        bytes = &bytes[n..];
        at += n as u32; // n ≤ data.len, a u32
    }
}

/// The CRC32C digest of `len` bytes of `data` from `at`.
pub(super) fn digest_of(store: &impl DataStore, data: DataRef, mut at: u32, len: u32) -> u32 {
    let end = at + len;
    let mut crc = 0;
    while at < end {
        let run = store.run(data, at);
        if run.is_empty() {
            break;
        }
        let n = run.len().min((end - at) as usize);
        crc = crate::nvme::tcp::digest_append(crc, &run[..n]);
        at += n as u32;
    }
    crc
}

/// A command the controller answered (or the link synthesised from a C2HData SUCCESS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Finished {
    pub tag: u32,
    pub status: Status,
    pub dw0: u32,
    pub dw1: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotState {
    Free,
    /// Taken, its capsule not yet queued: the submission queue (SQHD) or the output is full.
    Waiting,
    /// The capsule is queued or sent; the answer is awaited.
    Sent,
    /// Answered while PDUs reading its data were still queued: finished once they are sent.
    Answered,
}

/// Write data the controller asked for with one R2T.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct H2cTransfer {
    pub ttag: u16,
    pub next: u32,
    pub end: u32,
}

pub(super) struct Slot {
    pub state: SlotState,
    pub generation: u16,
    pub command: Command,
    pub tag: u32,
    pub data: Option<DataRef>,
    /// Data goes to the controller (a write) rather than from it.
    pub to_controller: bool,
    pub in_capsule: bool,
    /// Read data received so far (C2HData must come in order).
    pub received_bytes: u32,
    /// Write data asked for by R2Ts so far (each R2T must start where the last ended).
    pub requested_bytes: u32,
    pub h2c: Option<H2cTransfer>,
    /// Output PDUs that still read this slot's data.
    pub output_refs: u16,
    /// A data digest did not match: the command fails whatever the controller answers.
    pub data_corrupt: bool,
    pub answer: Option<Finished>,
}

impl Slot {
    fn free() -> Slot {
        Slot {
            state: SlotState::Free,
            generation: 0,
            command: Command::default(),
            tag: 0,
            data: None,
            to_controller: false,
            in_capsule: false,
            received_bytes: 0,
            requested_bytes: 0,
            h2c: None,
            output_refs: 0,
            data_corrupt: false,
            answer: None,
        }
    }

    pub fn cid(&self, index: u16) -> u16 {
        index | (self.generation << CID_SLOT_BITS)
    }
}

/// Submission queue flow control: the host never lets its tail catch up with the head the
/// controller last reported (NVMe-oF 1.1 §2.4.1), unless flow control was disabled at Connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SqFlow {
    pub entries: u16,
    pub tail: u16,
    pub head: u16,
    pub enabled: bool,
}

impl SqFlow {
    pub fn has_room(&self) -> bool {
        !self.enabled || (self.tail + 1) % self.entries != self.head
    }

    pub fn advance_tail(&mut self) {
        self.tail = (self.tail + 1) % self.entries;
    }
}

/// How the connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Idle,
    /// TCP connect in progress (non-blocking), until the deadline.
    Connecting {
        deadline_ns: u64,
    },
    /// ICReq sent, ICResp awaited until the deadline.
    Initializing {
        deadline_ns: u64,
    },
    Ready,
    Failed,
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no answer in time ({0})")]
    Timeout(&'static str),
    #[error("the controller closed the connection")]
    Closed,
    #[error("socket error: {0}")]
    Socket(String),
    #[error("the controller ended the connection (C2HTermReq FES {fes:#x}, FEI {fei})")]
    Terminated { fes: u16, fei: u32 },
    #[error("protocol error from the controller: {0}")]
    Protocol(String),
}

/// What a queue pair needs to know to connect.
#[derive(Clone, Copy, Debug)]
pub(super) struct QueueSettings {
    /// Queue entries (SQSIZE + 1).
    pub entries: u16,
    /// In-capsule data the controller takes on this queue, in bytes.
    pub capsule_data_max: u32,
    pub sq_flow_control: bool,
    pub digests: Digests,
}

pub(super) struct QueuePair {
    pub settings: QueueSettings,
    pub(super) stream: Option<TcpStream>,
    pub(super) phase: Phase,
    pub(super) encoder: Encoder,
    pub(super) rules: ReceiveRules,
    /// Most data one H2CData PDU may carry (the controller's MAXH2CDATA).
    pub(super) maxh2cdata: u32,
    pub(super) flow: SqFlow,
    pub(super) slots: Vec<Slot>,
    free: Vec<u16>,
    /// Slots whose capsule waits for room in the submission queue or the output.
    pub(super) waiting: VecDeque<u16>,
    /// Slots with R2T data left to send, in the order the R2Ts came.
    pub(super) h2c_waiting: VecDeque<u16>,
    pub(super) output: VecDeque<OutPdu>,
    pub(super) output_capacity: usize,
    /// Bytes of the front output PDU already written.
    pub(super) output_sent_bytes: usize,
    pub(super) output_blocked: bool,
    pub(super) input: Input,
    finished: VecDeque<Finished>,
    pub(super) failure: Option<LinkError>,
    /// Last time a PDU arrived or the connection came up (for the progress timeout).
    pub(super) last_progress_ns: u64,
    /// What the socket is watched for while the reactor parks.
    pub(super) interest: (bool, bool),
}

/// The capsule could not take another command now: every slot is busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct QueueFull;

impl QueuePair {
    /// A queue pair of `slot_count` command slots (at most `entries - 1` commands outstanding
    /// when flow control is on), not yet connected.
    pub fn new(settings: QueueSettings, slot_count: usize) -> QueuePair {
        let slot_count = slot_count.clamp(1, SLOTS_MAX);
        let output_capacity = 2 * slot_count + 8;
        QueuePair {
            settings,
            stream: None,
            phase: Phase::Idle,
            encoder: Encoder::default(),
            rules: ReceiveRules {
                role: Role::Host,
                initialized: false,
                digests: Digests::default(),
                data_alignment: 0,
                capsule_data_max: 0,
                data_pdu_max: u32::MAX,
            },
            maxh2cdata: 0,
            flow: SqFlow {
                entries: settings.entries.max(2),
                tail: 0,
                head: 0,
                enabled: settings.sq_flow_control,
            },
            slots: (0..slot_count).map(|_| Slot::free()).collect(),
            free: (0..slot_count as u16).rev().collect(),
            waiting: VecDeque::with_capacity(slot_count),
            h2c_waiting: VecDeque::with_capacity(slot_count),
            output: VecDeque::with_capacity(output_capacity),
            output_capacity,
            output_sent_bytes: 0,
            output_blocked: false,
            input: Input::new(),
            finished: VecDeque::with_capacity(slot_count),
            failure: None,
            last_progress_ns: 0,
            interest: (false, false),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    pub fn is_failed(&self) -> bool {
        self.phase == Phase::Failed
    }

    pub fn failure(&self) -> Option<&LinkError> {
        self.failure.as_ref()
    }

    /// Commands taken and not yet handed back.
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn has_free_slot(&self) -> bool {
        !self.free.is_empty()
    }

    /// Takes a slot for `command` and queues its capsule (or keeps it waiting for room).
    /// `data` is what the command moves and which way. The command's CID and SGL are set
    /// here.
    pub fn submit(
        &mut self,
        command: Command,
        tag: u32,
        data: Option<(DataRef, bool)>,
        store: &impl DataStore,
    ) -> Result<(), QueueFull> {
        let index = self.free.pop().ok_or(QueueFull)?;
        let capsule_data_max = self.settings.capsule_data_max;
        let slot = &mut self.slots[usize::from(index)];
        debug_assert_eq!(slot.state, SlotState::Free);
        slot.generation = (slot.generation + 1) & (u16::MAX >> CID_SLOT_BITS);
        let cid = slot.cid(index);
        slot.command = command;
        slot.command.cid = cid;
        slot.tag = tag;
        slot.data = data.map(|(data, _)| data);
        slot.to_controller = data.is_some_and(|(_, to_controller)| to_controller);
        slot.in_capsule = false;
        slot.received_bytes = 0;
        slot.requested_bytes = 0;
        slot.h2c = None;
        slot.output_refs = 0;
        slot.data_corrupt = false;
        slot.answer = None;
        slot.command.flags = PSDT_SGL_METABUF;
        slot.command.sgl = match slot.data {
            None => SglDescriptor::transport(0),
            Some(data) if slot.to_controller && data.len <= capsule_data_max => {
                slot.in_capsule = true;
                SglDescriptor::in_capsule(data.len)
            }
            Some(data) => SglDescriptor::transport(data.len),
        };
        slot.state = SlotState::Waiting;
        self.waiting.push_back(index);
        self.queue_waiting_capsules(store);
        Ok(())
    }

    /// Moves waiting capsules to the output while the submission queue and the output have
    /// room, in submission order. Returns how many moved.
    pub(super) fn queue_waiting_capsules(&mut self, store: &impl DataStore) -> usize {
        let mut moved = 0;
        while self.phase == Phase::Ready
            && self.flow.has_room()
            && self.output.len() < self.output_capacity
        {
            let Some(index) = self.waiting.pop_front() else { break };
            let slot = &mut self.slots[usize::from(index)];
            slot.state = SlotState::Sent;
            let in_capsule = if slot.in_capsule { slot.data } else { None };
            let data_len = in_capsule.map_or(0, |d| d.len);
            let header = self.encoder.capsule_cmd(&slot.command, data_len);
            let digest = match in_capsule {
                Some(data) if self.encoder.digests.data => {
                    Some(digest_of(store, data, 0, data.len).to_le_bytes())
                }
                _ => None,
            };
            if in_capsule.is_some() {
                slot.output_refs += 1;
            }
            self.output.push_back(OutPdu { header, slot: index, data: in_capsule, digest });
            self.flow.advance_tail();
            moved += 1;
        }
        moved
    }

    /// Queues H2CData PDUs for the R2Ts received, up to MAXH2CDATA each, while the output has
    /// room. Returns how many were queued.
    pub(super) fn queue_h2c_data(&mut self, store: &impl DataStore) -> usize {
        let mut queued = 0;
        while self.output.len() < self.output_capacity {
            let Some(&index) = self.h2c_waiting.front() else { break };
            let slot = &mut self.slots[usize::from(index)];
            let (Some(mut transfer), Some(data)) = (slot.h2c, slot.data) else {
                self.h2c_waiting.pop_front();
                continue;
            };
            let length = (transfer.end - transfer.next).min(self.maxh2cdata.max(4096));
            let last = transfer.next + length == transfer.end;
            let header = self.encoder.h2c_data(&crate::nvme::tcp::DataHeader {
                cccid: slot.command.cid,
                ttag: transfer.ttag,
                offset: transfer.next,
                length,
                last,
                success: false,
            });
            let piece = DataRef { key: data.key, offset: data.offset + transfer.next, len: length };
            let digest = if self.encoder.digests.data {
                Some(digest_of(store, piece, 0, length).to_le_bytes())
            } else {
                None
            };
            slot.output_refs += 1;
            transfer.next += length;
            if last {
                slot.h2c = None;
                self.h2c_waiting.pop_front();
            } else {
                slot.h2c = Some(transfer);
            }
            self.output.push_back(OutPdu { header, slot: index, data: Some(piece), digest });
            queued += 1;
        }
        queued
    }

    /// Finds the outstanding slot a controller PDU names by CID.
    pub(super) fn slot_of(&self, cid: u16) -> Option<u16> {
        let index = cid & CID_SLOT_MASK;
        let slot = self.slots.get(usize::from(index))?;
        (slot.state == SlotState::Sent && slot.cid(index) == cid).then_some(index)
    }

    /// The controller answered `index`'s command: hand its tag back now, or once the PDUs that
    /// read its data are written.
    pub(super) fn answer(&mut self, index: u16, mut answer: Finished) {
        let slot = &mut self.slots[usize::from(index)];
        if slot.data_corrupt && answer.status.is_success() {
            answer.status = Status::TRANSIENT_TRANSPORT_ERROR;
        }
        answer.tag = slot.tag;
        if slot.h2c.take().is_some() {
            self.h2c_waiting.retain(|&i| i != index);
        }
        if slot.output_refs > 0 {
            slot.answer = Some(answer);
            slot.state = SlotState::Answered;
        } else {
            self.release(index);
            self.finished.push_back(answer);
        }
    }

    /// An output PDU reading `index`'s data was written.
    pub(super) fn output_written(&mut self, index: u16) {
        let slot = &mut self.slots[usize::from(index)];
        slot.output_refs = slot.output_refs.saturating_sub(1);
        if slot.output_refs == 0
            && slot.state == SlotState::Answered
            && let Some(answer) = slot.answer.take()
        {
            self.release(index);
            self.finished.push_back(answer);
        }
    }

    fn release(&mut self, index: u16) {
        self.slots[usize::from(index)].state = SlotState::Free;
        self.free.push(index);
    }

    /// The next answered command, in answer order.
    pub fn pop_finished(&mut self) -> Option<Finished> {
        self.finished.pop_front()
    }

    /// Ends the connection (if any) and takes back every command not answered, calling
    /// `aborted` with each tag. Answered commands stay to be popped. The queue pair can then
    /// connect again.
    pub fn abort_all(&mut self, mut aborted: impl FnMut(u32)) {
        self.close();
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            match slot.state {
                SlotState::Free => {}
                SlotState::Answered => {
                    if let Some(answer) = slot.answer.take() {
                        self.finished.push_back(answer);
                    }
                    self.release(index as u16);
                }
                SlotState::Waiting | SlotState::Sent => {
                    aborted(slot.tag);
                    self.release(index as u16);
                }
            }
        }
        self.waiting.clear();
        self.h2c_waiting.clear();
    }

    /// Fails the connection: no more input is taken and nothing more is sent.
    pub(super) fn fail(&mut self, error: LinkError) {
        if self.phase != Phase::Failed {
            self.failure = Some(error);
            self.phase = Phase::Failed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_control_keeps_one_entry_free() {
        let mut flow = SqFlow { entries: 4, tail: 0, head: 0, enabled: true };
        for _ in 0..3 {
            assert!(flow.has_room());
            flow.advance_tail();
        }
        assert!(!flow.has_room(), "tail + 1 == head: full");
        flow.head = 1;
        assert!(flow.has_room());
        let off = SqFlow { enabled: false, ..flow };
        assert!(off.has_room() || !off.enabled);
    }

    #[test]
    fn cids_carry_a_generation() {
        let mut slot = Slot::free();
        slot.generation = 3;
        assert_eq!(slot.cid(5), 5 | (3 << CID_SLOT_BITS));
        assert_eq!(slot.cid(5) & CID_SLOT_MASK, 5);
    }
}
