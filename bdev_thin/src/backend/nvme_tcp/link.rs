//! The socket side of a host queue pair: a non-blocking TCP connect, the ICReq / ICResp
//! exchange, receiving the controller's PDUs (CapsuleResp, C2HData, R2T, C2HTermReq) through the
//! shared receiver ([`crate::nvme::tcp::receive`]), and sending queued PDUs with `writev`
//! straight from the owner's buffers.
//!
//! Runs on the queue pair's core; never blocks: a connect in progress, a socket with nothing
//! to read or no room to write all just end the poll. Each poll decodes at most
//! `limits::NVME_PDUS_PER_POLL_MAX` PDUs.

use std::io::{ErrorKind, IoSlice, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;

use arrayvec::ArrayVec;

use super::queue::{DataRef, DataStore, Finished, H2cTransfer, LinkError, Phase, QueuePair};
use crate::limits;
use crate::nvme::command::Status;
use crate::nvme::tcp::receive::{DataSink, Destination, Event, Receiver};
use crate::nvme::tcp::{self, DIGEST_BYTES, EncodedHeader, Encoder, Framing, IcReq, Pdu};
use crate::runtime;

/// MAXH2CDATA below this is refused (NVMe/TCP 1.0 §3.6.2.3: at least 4 KiB).
const MAXH2CDATA_MIN: u32 = 4096;

/// One PDU to send: its encoded header, then `data` from the owner's store, then the data
/// digest if any.
pub(super) struct OutPdu {
    pub header: EncodedHeader,
    /// The slot whose data this PDU reads (for its reference count), when `data` is set.
    pub slot: u16,
    pub data: Option<DataRef>,
    pub digest: Option<[u8; 4]>,
}

impl OutPdu {
    fn total_bytes(&self) -> usize {
        self.header.len()
            + self.data.map_or(0, |d| d.len as usize)
            + if self.digest.is_some() { DIGEST_BYTES } else { 0 }
    }
}

/// Where received C2H data goes: a slot's command data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sink {
    slot: u16,
    data: DataRef,
    success: bool,
}

/// The command data in the owner's store, as the receiver's destination.
struct Store<'a, S>(&'a mut S);

impl<S: DataStore> Destination<Sink> for Store<'_, S> {
    fn run_mut(&mut self, sink: &Sink, at: u32) -> &mut [u8] {
        self.0.run_mut(sink.data, at)
    }
}

pub(super) struct Input {
    receiver: Receiver<Sink>,
    /// The last poll stopped at its PDU bound with input left to decode.
    more: bool,
}

impl Input {
    pub fn new() -> Input {
        Input { receiver: Receiver::new(limits::NVME_INPUT_BUFFER_BYTES), more: false }
    }

    fn reset(&mut self) {
        self.receiver.reset();
    }
}

/// What acting on a header did.
enum Step {
    Progress,
    Stop,
}

fn would_block(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

impl QueuePair {
    /// Starts a non-blocking TCP connect to `address`; the connection must be up and
    /// initialized (ICResp) by `deadline_ns`. Called on the queue's core, which then watches the
    /// socket.
    pub fn connect(&mut self, address: SocketAddr, deadline_ns: u64) {
        self.close();
        self.failure = None;
        self.input.reset();
        self.flow.tail = 0;
        self.flow.head = 0;
        self.rules.initialized = false;
        self.rules.digests = tcp::Digests::default();
        self.encoder = Encoder::default();
        let socket = match socket2::Socket::new(
            socket2::Domain::for_address(address),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        ) {
            Ok(socket) => socket,
            Err(e) => return self.fail(LinkError::Connect(e.to_string())),
        };
        if let Err(e) = socket.set_nonblocking(true).and_then(|()| socket.set_nodelay(true)) {
            return self.fail(LinkError::Connect(e.to_string()));
        }
        match socket.connect(&address.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || would_block(&e) => {}
            Err(e) => return self.fail(LinkError::Connect(e.to_string())),
        }
        let stream: TcpStream = socket.into();
        runtime::watch_fd_for(stream.as_raw_fd(), false, true);
        self.interest = (false, true);
        self.stream = Some(stream);
        self.phase = Phase::Connecting { deadline_ns };
    }

    /// Closes the socket (if any); the phase goes back to idle unless it failed.
    pub fn close(&mut self) {
        if let Some(stream) = self.stream.take() {
            runtime::unwatch_fd(stream.as_raw_fd());
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        self.output.clear();
        self.output_sent_bytes = 0;
        self.output_blocked = false;
        self.interest = (false, false);
        if self.phase != Phase::Failed {
            self.phase = Phase::Idle;
        }
    }

    /// Moves the connection along: connect, ICReq, PDUs in and out. Returns units of work.
    pub fn poll(&mut self, store: &mut impl DataStore, now_ns: u64) -> usize {
        match self.phase {
            Phase::Idle | Phase::Failed => 0,
            Phase::Connecting { deadline_ns } => self.poll_connect(deadline_ns, now_ns),
            Phase::Initializing { deadline_ns } => {
                let work = self.flush_output(store) + self.process_input(store, now_ns);
                if matches!(self.phase, Phase::Initializing { .. }) && now_ns > deadline_ns {
                    self.fail(LinkError::Timeout("ICResp"));
                }
                work
            }
            Phase::Ready => {
                let mut work = self.flush_output(store);
                work += self.process_input(store, now_ns);
                work += self.queue_waiting_capsules(store);
                work += self.queue_h2c_data(store);
                work + self.flush_output(store)
            }
        }
    }

    fn poll_connect(&mut self, deadline_ns: u64, now_ns: u64) -> usize {
        let Some(stream) = self.stream.as_ref() else {
            self.fail(LinkError::Connect("no socket".into()));
            return 1;
        };
        match stream.take_error() {
            Ok(Some(e)) | Err(e) => {
                self.fail(LinkError::Connect(e.to_string()));
                return 1;
            }
            Ok(None) => {}
        }
        if stream.peer_addr().is_err() {
            if now_ns > deadline_ns {
                self.fail(LinkError::Timeout("TCP connect"));
                return 1;
            }
            return 0;
        }
        let request = IcReq {
            pfv: 0,
            hpda: 0,
            digests: self.settings.digests,
            // One R2T outstanding per command (0's based).
            maxr2t: 0,
        };
        self.output.push_back(OutPdu {
            header: Encoder::ic_req(&request),
            slot: 0,
            data: None,
            digest: None,
        });
        self.phase = Phase::Initializing { deadline_ns };
        self.last_progress_ns = now_ns;
        1
    }

    /// Writes queued PDUs until the socket is full. Returns how many writes went out.
    pub(super) fn flush_output<S: DataStore>(&mut self, store: &S) -> usize {
        let mut writes = 0;
        self.output_blocked = false;
        while !self.output.is_empty() && self.phase != Phase::Failed {
            let Some(stream) = self.stream.as_mut() else { break };
            let result = {
                let mut iovecs: ArrayVec<IoSlice<'_>, { limits::NVME_OUTPUT_IOVECS_MAX }> =
                    ArrayVec::new();
                let mut skip = self.output_sent_bytes;
                'pdus: for pdu in &self.output {
                    let header = pdu.header.as_bytes();
                    if skip >= header.len() {
                        skip -= header.len();
                    } else {
                        if iovecs.is_full() {
                            break 'pdus;
                        }
                        iovecs.push(IoSlice::new(&header[skip..]));
                        skip = 0;
                    }
                    if let Some(data) = pdu.data {
                        let mut at = 0u32;
                        while at < data.len {
                            let run = store.run(data, at);
                            if run.is_empty() {
                                debug_assert!(false, "output data past its buffer");
                                break 'pdus;
                            }
                            at += run.len() as u32; // a run lies within `data`
                            if skip >= run.len() {
                                skip -= run.len();
                                continue;
                            }
                            if iovecs.is_full() {
                                break 'pdus;
                            }
                            iovecs.push(IoSlice::new(&run[skip..]));
                            skip = 0;
                        }
                    }
                    if let Some(digest) = pdu.digest.as_ref() {
                        if skip >= digest.len() {
                            skip -= digest.len();
                        } else {
                            if iovecs.is_full() {
                                break 'pdus;
                            }
                            iovecs.push(IoSlice::new(&digest[skip..]));
                            skip = 0;
                        }
                    }
                }
                if iovecs.is_empty() {
                    break;
                }
                stream.write_vectored(&iovecs)
            };
            let written = match result {
                Ok(0) => {
                    self.fail(LinkError::Closed);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.output_blocked = true;
                    break;
                }
                Err(e) => {
                    self.fail(LinkError::Socket(e.to_string()));
                    break;
                }
            };
            writes += 1;
            let mut sent = self.output_sent_bytes + written;
            while let Some(front) = self.output.front() {
                let total = front.total_bytes();
                if sent < total {
                    break;
                }
                sent -= total;
                let (slot, reads_data) = (front.slot, front.data.is_some());
                self.output.pop_front();
                if reads_data {
                    self.output_written(slot);
                }
            }
            self.output_sent_bytes = sent;
        }
        writes
    }

    /// Decodes what the controller sent, bounded per poll. Returns units of work.
    fn process_input(&mut self, store: &mut impl DataStore, now_ns: u64) -> usize {
        let mut work = 0;
        self.input.more = false;
        while work < limits::NVME_PDUS_PER_POLL_MAX
            && matches!(self.phase, Phase::Ready | Phase::Initializing { .. })
        {
            let Some(stream) = self.stream.as_mut() else { break };
            match self.input.receiver.step(stream, &self.rules, &mut Store(store)) {
                Event::Progress => {
                    self.last_progress_ns = now_ns;
                    work += 1;
                }
                Event::Header(header) => {
                    self.input.receiver.accept(&header);
                    match self.on_pdu(header.pdu, &header.framing) {
                        Step::Progress => work += 1,
                        Step::Stop => break,
                    }
                }
                Event::Data { sink, digest_ok } => {
                    if !digest_ok {
                        self.slots[usize::from(sink.token.slot)].data_corrupt = true;
                    }
                    self.data_received(sink);
                    work += 1;
                }
                Event::Idle => break,
                Event::Malformed(bad) => {
                    let error = bad.error;
                    self.protocol_error(format!(
                        "bad PDU (FES {:#x}, FEI {})",
                        error.fes, error.fei
                    ));
                    break;
                }
                Event::Closed => {
                    self.fail(LinkError::Closed);
                    break;
                }
                Event::Failed(e) => {
                    self.fail(LinkError::Socket(e.to_string()));
                    break;
                }
            }
        }
        self.input.more = work >= limits::NVME_PDUS_PER_POLL_MAX;
        work
    }

    fn protocol_error(&mut self, what: impl Into<String>) -> Step {
        self.fail(LinkError::Protocol(what.into()));
        Step::Stop
    }

    /// Acts on a decoded header (already consumed from staging).
    fn on_pdu(&mut self, pdu: Pdu, framing: &Framing) -> Step {
        match pdu {
            Pdu::IcResp(response) => {
                if !matches!(self.phase, Phase::Initializing { .. }) {
                    return self.protocol_error("ICResp after initialization");
                }
                if response.maxh2cdata < MAXH2CDATA_MIN || !response.maxh2cdata.is_multiple_of(4) {
                    return self.protocol_error(format!(
                        "ICResp MAXH2CDATA {} (must be a multiple of 4, at least 4096)",
                        response.maxh2cdata
                    ));
                }
                // Data is placed where we ask; a controller asking for padding before its
                // own data (CPDA) is honoured by the encoder.
                self.encoder.data_alignment = response.cpda;
                // The controller decides the digests (SPDK's host adopts them too).
                self.encoder.digests = response.digests;
                self.rules.digests = response.digests;
                self.rules.initialized = true;
                self.maxh2cdata = response.maxh2cdata;
                self.phase = Phase::Ready;
                Step::Progress
            }
            Pdu::TermReq { fes, fei, .. } => {
                self.fail(LinkError::Terminated { fes, fei });
                Step::Stop
            }
            Pdu::CapsuleResp(completion) => {
                if self.flow.enabled {
                    if completion.sqhd >= self.flow.entries {
                        return self
                            .protocol_error(format!("SQHD {} out of range", completion.sqhd));
                    }
                    self.flow.head = completion.sqhd;
                }
                let Some(index) = self.slot_of(completion.cid) else {
                    return self.protocol_error(format!(
                        "response for CID {:#x}, not outstanding",
                        completion.cid
                    ));
                };
                let slot = &self.slots[usize::from(index)];
                let mut status = completion.status;
                if status.is_success()
                    && !slot.to_controller
                    && slot.data.is_some_and(|d| slot.received_bytes != d.len)
                {
                    // Success with read data missing: the data never arrived.
                    status = Status::DATA_TRANSFER_ERROR;
                }
                self.answer(
                    index,
                    Finished { tag: 0, status, dw0: completion.dw0, dw1: completion.dw1 },
                );
                Step::Progress
            }
            Pdu::C2hData(header) => {
                let Some(index) = self.slot_of(header.cccid) else {
                    return self.protocol_error(format!(
                        "C2HData for CID {:#x}, not outstanding",
                        header.cccid
                    ));
                };
                let slot = &self.slots[usize::from(index)];
                let Some(data) = slot.data.filter(|_| !slot.to_controller) else {
                    return self.protocol_error("C2HData for a command that reads nothing");
                };
                let end = u64::from(header.offset) + u64::from(header.length);
                if header.offset != slot.received_bytes || end > u64::from(data.len) {
                    return self.protocol_error(format!(
                        "C2HData bytes {}..{end} of a {}-byte transfer, {} received",
                        header.offset, data.len, slot.received_bytes
                    ));
                }
                if header.success && (!header.last || self.flow.enabled) {
                    return self.protocol_error("C2HData SUCCESS not allowed here");
                }
                let sink = Sink { slot: index, data, success: header.success };
                self.input.receiver.expect_data(sink, header.offset, header.length, framing);
                Step::Progress
            }
            Pdu::R2t(r2t) => {
                let Some(index) = self.slot_of(r2t.cccid) else {
                    return self
                        .protocol_error(format!("R2T for CID {:#x}, not outstanding", r2t.cccid));
                };
                let slot = &self.slots[usize::from(index)];
                let Some(data) = slot.data.filter(|_| slot.to_controller && !slot.in_capsule)
                else {
                    return self.protocol_error("R2T for a command with no data to send");
                };
                let end = u64::from(r2t.offset) + u64::from(r2t.length);
                if slot.h2c.is_some()
                    || r2t.length == 0
                    || r2t.offset != slot.requested_bytes
                    || end > u64::from(data.len)
                {
                    let requested = slot.requested_bytes;
                    return self.protocol_error(format!(
                        "R2T for bytes {}..{end} of a {}-byte write, {requested} asked for before",
                        r2t.offset, data.len
                    ));
                }
                let slot = &mut self.slots[usize::from(index)];
                slot.requested_bytes = end as u32; // ≤ data.len
                slot.h2c = Some(H2cTransfer { ttag: r2t.ttag, next: r2t.offset, end: end as u32 });
                self.h2c_waiting.push_back(index);
                Step::Progress
            }
            Pdu::IcReq(_) | Pdu::CapsuleCmd(_) | Pdu::H2cData(_) => {
                // `frame` lets only controller PDUs through.
                self.protocol_error("a host PDU from the controller")
            }
        }
    }

    /// A C2HData PDU (and its digest) is in.
    fn data_received(&mut self, received: DataSink<Sink>) {
        let sink = received.token;
        let slot = &mut self.slots[usize::from(sink.slot)];
        slot.received_bytes = received.at;
        if sink.success {
            let status = if slot.received_bytes == sink.data.len {
                Status::SUCCESS
            } else {
                Status::DATA_TRANSFER_ERROR
            };
            self.answer(sink.slot, Finished { tag: 0, status, dw0: 0, dw1: 0 });
        }
    }

    /// Sets what the socket wakes a parked reactor for: readable while connected, writable
    /// while connecting or while output waits for room.
    pub fn watch_for_park(&mut self) {
        let Some(stream) = self.stream.as_ref() else { return };
        let interest = match self.phase {
            Phase::Connecting { .. } => (false, true),
            Phase::Initializing { .. } | Phase::Ready => (true, !self.output.is_empty()),
            Phase::Idle | Phase::Failed => (false, false),
        };
        if interest != self.interest {
            self.interest = interest;
            runtime::watch_fd_for(stream.as_raw_fd(), interest.0, interest.1);
        }
    }

    /// Whether a poll now would make progress without waiting for the socket.
    pub fn has_pending_work(&self) -> bool {
        match self.phase {
            Phase::Ready | Phase::Initializing { .. } => {
                (!self.output.is_empty() && !self.output_blocked) || self.input.more
            }
            Phase::Idle | Phase::Failed | Phase::Connecting { .. } => false,
        }
    }
}
