//! A queue pair: one TCP connection, a poller on the core it was dealt to. It negotiates
//! (ICReq / ICResp), becomes the admin queue or an IO queue of a controller at Fabrics Connect,
//! then takes commands into slots, moves their data (in-capsule, or R2T then H2CData), executes
//! them ([`super::admin`], [`super::io`], [`super::fabrics`]) and sends their data and
//! responses ([`super::output`]). Receiving is in [`super::receive`].
//!
//! Everything here runs on the connection's core and is owned by its poller: no locks but the
//! control-plane ones Connect and admin commands take. The poller reports drained once no
//! device IO it issued is in flight; it closes after its IO drained, never with a buffer out.

use std::collections::VecDeque;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::admin::AdminQueue;
use super::io::IoQueue;
use super::options::TransportOptions;
use super::output::{Flushed, OutPdu, Output};
use super::receive::Input;
use super::slot::{SlotState, SlotTable};
use super::{ListenAddress, NvmfShared};
use crate::admission::Ticket;
use crate::host::{CoreId, PollStatus, Poller};
use crate::limits;
use crate::nvme::command::{Completion, DataDirection, SGL_TRANSPORT, Status, admin_opcode};
use crate::nvme::fabrics::fctype;
use crate::nvme::tcp::{self, DataHeader, Digests, Encoder, PduError, R2t, ReceiveRules, Role};
use crate::runtime::{self, ReactorWaker, RuntimeHandle};

/// How a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Close {
    /// Finish in-flight commands, send their responses, close (stop, subsystem deleted).
    Graceful,
    /// A C2HTermReq is queued: send it once in-flight IO drained, then close.
    Fatal,
    /// The host is gone or the association failed: let IO drain, send nothing, close.
    Abrupt,
}

/// What a queue pair is to its controller.
pub(super) enum Queue {
    Unconnected,
    Admin(Box<AdminQueue>),
    Io(Box<IoQueue>),
}

/// What executing a command decided.
pub(super) enum Outcome {
    /// Respond now: `data_bytes` of the slot's buffer go to the host first (on success).
    Complete { status: Status, dw0: u32, dw1: u32, data_bytes: u32 },
    /// The command completes later (device IO, a held AER, a shutdown).
    Later,
}

impl Outcome {
    pub fn status(status: Status) -> Outcome {
        Outcome::Complete { status, dw0: 0, dw1: 0, data_bytes: 0 }
    }

    pub fn success_dw0(dw0: u32) -> Outcome {
        Outcome::Complete { status: Status::SUCCESS, dw0, dw1: 0, data_bytes: 0 }
    }

    pub fn data(data_bytes: u32) -> Outcome {
        Outcome::Complete { status: Status::SUCCESS, dw0: 0, dw1: 0, data_bytes }
    }
}

/// The negotiated link: digests, alignments and limits.
pub(super) struct Link {
    pub encoder: Encoder,
    pub rules: ReceiveRules,
    /// SQ head pointer reported in completions, and the queue's entry count.
    pub sq_head: u16,
    pub sq_entries: u16,
    pub qid: u16,
}

/// One connection's poller.
pub(super) struct Connection {
    pub stream: TcpStream,
    /// Its place under the target's connection cap; the handshake ends with the ICReq.
    pub ticket: Ticket<ReactorWaker>,
    fd: i32,
    pub shared: Arc<NvmfShared>,
    pub runtime: RuntimeHandle,
    pub core: CoreId,
    pub options: TransportOptions,
    pub listen: ListenAddress,
    pub peer: Option<SocketAddr>,
    pub link: Link,
    pub input: Input,
    pub output: Output,
    pub slots: SlotTable,
    pub queue: Queue,
    /// Slots waiting for arena room, in arrival order.
    pub waiting_buffer: VecDeque<u16>,
    pub closing: Option<Close>,
    finished: bool,
    /// What the socket is watched for while the reactor parks (readable, writable).
    interest: (bool, bool),
    output_blocked: bool,
}

impl Connection {
    pub fn new(
        stream: TcpStream,
        ticket: Ticket<ReactorWaker>,
        shared: Arc<NvmfShared>,
        options: TransportOptions,
        listen: ListenAddress,
        runtime: RuntimeHandle,
        core: CoreId,
    ) -> Connection {
        let slot_count = slot_count(&options);
        let fd = stream.as_raw_fd();
        let peer = stream.peer_addr().ok();
        let rules = ReceiveRules {
            role: Role::Target,
            initialized: false,
            digests: Digests::default(),
            data_alignment: 0,
            capsule_data_max: options.capsule_data_max(true),
            data_pdu_max: options.max_io_size,
        };
        Connection {
            stream,
            ticket,
            fd,
            shared,
            runtime,
            core,
            listen,
            peer,
            link: Link { encoder: Encoder::default(), rules, sq_head: 0, sq_entries: 1, qid: 0 },
            input: Input::new(),
            output: Output::new(slot_count),
            slots: SlotTable::new(slot_count, options.connection_buffer_bytes()),
            options,
            queue: Queue::Unconnected,
            waiting_buffer: VecDeque::with_capacity(slot_count),
            closing: None,
            finished: false,
            interest: (true, false),
            output_blocked: false,
        }
    }

    /// Ends the connection with a C2HTermReq reporting `error` about `bad_header`.
    pub fn fatal(&mut self, error: PduError, bad_header: &[u8]) {
        if self.closing.is_some() {
            return;
        }
        eprintln!(
            "nvmf: connection from {:?}: fatal transport error (FES {:#x}, FEI {}); closing",
            self.peer, error.fes, error.fei
        );
        let mut pdu = OutPdu::control(Encoder::term_req(false, error, bad_header));
        pdu.closes = true;
        self.output.push(pdu);
        self.closing = Some(Close::Fatal);
    }

    /// The direction data moves for `index`'s command (fabrics commands by their type).
    fn direction(&self, index: u16) -> DataDirection {
        let command = &self.slots.get(index).command;
        if command.opcode != admin_opcode::FABRICS {
            return command.direction();
        }
        match command.fctype() {
            fctype::CONNECT | fctype::AUTHENTICATION_SEND => DataDirection::HostToController,
            fctype::AUTHENTICATION_RECEIVE => DataDirection::ControllerToHost,
            _ => DataDirection::None,
        }
    }

    /// A capsule (and any in-capsule data) is in: get the rest of its data, or execute it.
    pub fn start_command(&mut self, index: u16) {
        let slot = self.slots.get(index);
        if slot.digest_failed {
            return self.complete(index, Status::TRANSIENT_TRANSPORT_ERROR, 0, 0, 0);
        }
        if slot.buffer.is_some() {
            return self.execute(index); // in-capsule data
        }
        let sgl = slot.command.sgl;
        if sgl.length == 0 {
            return self.execute(index);
        }
        if sgl.identifier != SGL_TRANSPORT || sgl.address != 0 {
            return self.complete(index, Status::SGL_DESCRIPTOR_TYPE_INVALID, 0, 0, 0);
        }
        if sgl.length > self.options.transfer_bytes_max() || !self.slots.could_fit(sgl.length) {
            // SPDK ends the connection too: the host broke MDTS.
            return self.fatal(PduError::limit_exceeded(), &[]);
        }
        match self.direction(index) {
            DataDirection::HostToController | DataDirection::ControllerToHost => {
                self.slots.get_mut(index).state = SlotState::AwaitingBuffer;
                self.waiting_buffer.push_back(index);
                self.serve_waiting_buffers();
            }
            _ => self.complete(index, Status::INVALID_FIELD, 0, 0, 0),
        }
    }

    /// Gives arena room to waiting commands in arrival order: an R2T goes out for writes,
    /// reads execute. Returns how many got a buffer.
    pub fn serve_waiting_buffers(&mut self) -> usize {
        let mut served = 0;
        while let Some(&index) = self.waiting_buffer.front() {
            let length = self.slots.get(index).command.sgl.length;
            if !self.slots.attach_buffer(index, length) {
                break;
            }
            self.waiting_buffer.pop_front();
            served += 1;
            if self.direction(index) == DataDirection::HostToController {
                let slot = self.slots.get_mut(index);
                slot.state = SlotState::AwaitingData;
                let r2t = R2t { cccid: slot.command.cid, ttag: index + 1, offset: 0, length };
                let header = self.link.encoder.r2t(&r2t);
                self.output.push(OutPdu::control(header));
            } else {
                self.execute(index);
            }
        }
        served
    }

    /// Runs a command whose data (if any) is in its buffer.
    pub fn execute(&mut self, index: u16) {
        self.slots.get_mut(index).state = SlotState::Executing;
        let command = self.slots.get(index).command;
        let outcome = if command.opcode == admin_opcode::FABRICS {
            self.execute_fabrics(index)
        } else {
            match &self.queue {
                Queue::Unconnected => Outcome::status(Status::COMMAND_SEQUENCE_ERROR),
                Queue::Admin(_) => self.execute_admin(index),
                Queue::Io(_) => self.execute_io(index),
            }
        };
        self.apply(index, outcome);
    }

    pub fn apply(&mut self, index: u16, outcome: Outcome) {
        match outcome {
            Outcome::Complete { status, dw0, dw1, data_bytes } => {
                self.complete(index, status, dw0, dw1, data_bytes);
            }
            Outcome::Later => {}
        }
    }

    /// Queues `index`'s data (on success) and response; the slot is released once sent.
    pub fn complete(&mut self, index: u16, status: Status, dw0: u32, dw1: u32, data_bytes: u32) {
        let flow_control_off = self.controller().is_some_and(|c| c.sq_flow_control_disabled);
        if !flow_control_off {
            self.link.sq_head = (self.link.sq_head + 1) % self.link.sq_entries.max(1);
        }
        let slot = self.slots.get_mut(index);
        slot.state = SlotState::Responding;
        let cid = slot.command.cid;
        let data_bytes = if status.is_success() { data_bytes.min(slot.transfer_bytes) } else { 0 };
        let mut response_needed = true;
        if data_bytes > 0 {
            let success = self.options.c2h_success && flow_control_off && dw0 == 0 && dw1 == 0;
            let digest = if self.link.encoder.digests.data {
                let bytes = slot.buffer.as_ref().map_or(&[][..], |b| b.as_slice());
                let covered = bytes.get(..data_bytes as usize).unwrap_or(&[]);
                Some(tcp::digest(covered).to_le_bytes())
            } else {
                None
            };
            let header = self.link.encoder.c2h_data(&DataHeader {
                cccid: cid,
                ttag: 0,
                offset: 0,
                length: data_bytes,
                last: true,
                success,
            });
            response_needed = !success;
            self.output.push(OutPdu {
                header,
                slot: Some(index),
                data_bytes,
                digest,
                releases: if success { Some(index) } else { None },
                closes: false,
            });
        }
        if response_needed {
            let completion = Completion {
                dw0,
                dw1,
                sqhd: if flow_control_off { 0 } else { self.link.sq_head },
                sqid: self.link.qid,
                cid,
                status,
            };
            let header = self.link.encoder.capsule_resp(&completion);
            let mut pdu = OutPdu::control(header);
            pdu.releases = Some(index);
            self.output.push(pdu);
        }
    }

    /// The controller this queue belongs to, once connected.
    pub fn controller(&self) -> Option<&Arc<super::Controller>> {
        match &self.queue {
            Queue::Unconnected => None,
            Queue::Admin(admin) => Some(&admin.controller),
            Queue::Io(io) => Some(&io.controller),
        }
    }

    /// Device IO issued and not completed (the poller is drained at 0).
    fn device_in_flight(&self) -> usize {
        match &self.queue {
            Queue::Unconnected => 0,
            Queue::Admin(admin) => admin.device_in_flight(),
            Queue::Io(io) => io.device_in_flight(),
        }
    }

    /// Closes the connection when admission says so (evicted at the cap, or no ICReq in
    /// time), its controller failed or was reset, its subsystem was deleted, or the target
    /// stops.
    fn check_association(&mut self) {
        if self.closing.is_some() {
            return;
        }
        if self.shared.is_stopping() {
            self.closing = Some(Close::Graceful);
            return;
        }
        // Only a connection still waiting for its ICReq can be evicted or time out.
        if self.ticket.is_handshaking()
            && let Some(reason) = self.ticket.close_reason(runtime::now_ns())
        {
            self.ticket.log_close(reason);
            self.closing = Some(Close::Abrupt);
            return;
        }
        let ended = match &self.queue {
            Queue::Unconnected => false,
            Queue::Admin(admin) => {
                admin.controller.is_failed() || admin.controller.subsystem.is_deleted()
            }
            Queue::Io(io) => io.association_ended(),
        };
        if ended {
            self.closing = Some(Close::Abrupt);
        }
    }

    fn poll_queue(&mut self) -> usize {
        match &self.queue {
            Queue::Unconnected => 0,
            Queue::Admin(_) => self.poll_admin(),
            Queue::Io(_) => self.poll_io(),
        }
    }

    fn flush_output(&mut self) -> usize {
        if self.output.is_empty() {
            self.output_blocked = false;
            return 0;
        }
        let (flushed, writes) = self.output.flush(&mut self.stream, &mut self.slots);
        self.output_blocked = flushed == Flushed::Blocked;
        match flushed {
            Flushed::Drained | Flushed::Blocked => {}
            Flushed::Closed => self.closing = Some(Close::Abrupt),
            Flushed::Failed => self.closing = Some(Close::Abrupt),
        }
        writes
    }

    /// Sets what the socket wakes the parked reactor for: readable unless input cannot be
    /// taken now, writable while output waits for room.
    fn set_interest(&mut self, readable: bool, writable: bool) {
        if self.interest != (readable, writable) {
            self.interest = (readable, writable);
            runtime::watch_fd_for(self.fd, readable, writable);
        }
    }
}

impl Poller for Connection {
    fn poll(&mut self) -> PollStatus {
        if self.finished {
            return PollStatus::Idle;
        }
        let mut work = 0;
        self.check_association();
        work += self.poll_queue();
        work += self.serve_waiting_buffers();
        if self.closing.is_none() {
            work += self.process_input();
            work += self.poll_queue();
        }
        if self.closing != Some(Close::Abrupt) {
            work += self.flush_output();
            work += self.serve_waiting_buffers();
        }
        if let Some(close) = self.closing
            && self.device_in_flight() == 0
            && (close == Close::Abrupt || self.output.is_empty() || self.output_blocked)
        {
            self.finished = true;
            let _ = self.stream.shutdown(Shutdown::Both);
            work += 1;
        }
        PollStatus::busy_if(work > 0)
    }

    fn name(&self) -> &str {
        "nvmf_qpair"
    }

    fn begin_stop(&mut self) {
        if self.closing.is_none() {
            self.closing = Some(Close::Graceful);
        }
    }

    fn is_drained(&self) -> bool {
        self.finished || self.device_in_flight() == 0
    }

    fn is_finished(&self) -> bool {
        self.finished
    }

    fn prepare_park(&mut self) -> bool {
        if self.finished {
            return true;
        }
        if self.closing.is_some() && self.device_in_flight() == 0 {
            return false;
        }
        if !self.output.is_empty() && !self.output_blocked {
            return false;
        }
        let queue_ready = match &mut self.queue {
            Queue::Unconnected => true,
            Queue::Admin(admin) => admin.prepare_park(),
            Queue::Io(io) => io.prepare_park(),
        };
        if !queue_ready {
            return false;
        }
        let readable = self.closing.is_none() && !self.input.is_blocked();
        let writable = !self.output.is_empty();
        self.set_interest(readable, writable);
        true
    }

    fn wake_fds(&self) -> Vec<i32> {
        vec![self.fd]
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        runtime::unwatch_fd(self.fd);
        match &self.queue {
            Queue::Unconnected => {}
            Queue::Admin(admin) => admin.disassociate(),
            Queue::Io(io) => io.disassociate(),
        }
    }
}

/// Slots a queue pair needs: every command its host may have outstanding.
pub(super) fn slot_count(options: &TransportOptions) -> usize {
    (options.max_queue_depth.max(options.max_aq_depth) as usize).min(limits::NVMF_QUEUE_DEPTH_MAX)
}
