//! The socket side of a host queue pair: a non-blocking TCP connect, the ICReq / ICResp
//! exchange, receiving the controller's PDUs (CapsuleResp, C2HData, R2T, C2HTermReq) through a
//! staging buffer and a header → padding → data → digest state machine, and sending queued
//! PDUs with `writev` straight from the owner's buffers.
//!
//! Runs on the queue pair's core; never blocks: a connect in progress, a socket with nothing
//! to read or no room to write all just end the poll. Each poll decodes at most
//! `limits::NVME_PDUS_PER_POLL_MAX` PDUs. Large read data goes from the socket straight into
//! the command's buffer; what came in with a header is copied once.

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;

use arrayvec::ArrayVec;

use super::queue::{
    DataRef, DataStore, Finished, H2cTransfer, LinkError, Phase, QueuePair, copy_into,
};
use crate::limits;
use crate::nvme::command::Status;
use crate::nvme::tcp::{
    self, COMMON_HEADER_BYTES, CommonHeader, DIGEST_BYTES, EncodedHeader, Encoder, Framing, IcReq,
    Pdu, PduError, RECEIVED_HEADER_BYTES_MAX,
};
use crate::runtime;

/// Read data at least this long goes from the socket straight into the command's buffer;
/// shorter data comes through staging with the headers around it, one `read` for many PDUs.
const DIRECT_READ_BYTES_MIN: u32 = 16 << 10;

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

/// Where received C2H data goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sink {
    slot: u16,
    data: DataRef,
    /// Next byte of `data` to fill.
    at: u32,
    remaining: u32,
    crc: u32,
    digest: bool,
    last: bool,
    success: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InputState {
    Header,
    Pad { remaining: usize, sink: Sink },
    Data(Sink),
    Digest { sink: Sink, got: usize, bytes: [u8; DIGEST_BYTES] },
}

pub(super) struct Input {
    staging: Box<[u8]>,
    start: usize,
    end: usize,
    state: InputState,
    /// The last poll stopped at its PDU bound with input left to decode.
    more: bool,
}

impl Input {
    pub fn new() -> Input {
        Input {
            staging: vec![0u8; limits::NVME_INPUT_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            state: InputState::Header,
            more: false,
        }
    }

    fn staged(&self) -> &[u8] {
        &self.staging[self.start..self.end]
    }

    fn consume(&mut self, bytes: usize) {
        self.start += bytes;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.state = InputState::Header;
    }
}

/// What one decoding step did.
enum Step {
    Progress,
    NeedBytes,
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

    /// Reads what the socket has into staging. False if nothing came.
    fn fill_staging(&mut self) -> bool {
        let Some(stream) = self.stream.as_mut() else { return false };
        let input = &mut self.input;
        if input.start > 0 {
            input.staging.copy_within(input.start..input.end, 0);
            input.end -= input.start;
            input.start = 0;
        }
        if input.end == input.staging.len() {
            return false;
        }
        match stream.read(&mut input.staging[input.end..]) {
            Ok(0) => {
                self.fail(LinkError::Closed);
                false
            }
            Ok(n) => {
                input.end += n;
                true
            }
            Err(e) if would_block(&e) => false,
            Err(e) => {
                self.fail(LinkError::Socket(e.to_string()));
                false
            }
        }
    }

    /// Decodes what the controller sent, bounded per poll. Returns units of work.
    fn process_input(&mut self, store: &mut impl DataStore, now_ns: u64) -> usize {
        let mut work = 0;
        let mut reads = 0;
        self.input.more = false;
        while work < limits::NVME_PDUS_PER_POLL_MAX
            && matches!(self.phase, Phase::Ready | Phase::Initializing { .. })
        {
            match self.step(store) {
                Step::Progress => work += 1,
                Step::Stop => break,
                Step::NeedBytes => {
                    reads += 1;
                    if reads > limits::NVME_PDUS_PER_POLL_MAX || !self.fill_staging() {
                        break;
                    }
                    self.last_progress_ns = now_ns;
                    work += 1;
                }
            }
        }
        self.input.more = work >= limits::NVME_PDUS_PER_POLL_MAX;
        work
    }

    fn step(&mut self, store: &mut impl DataStore) -> Step {
        match self.input.state {
            InputState::Header => self.step_header(),
            InputState::Pad { remaining, sink } => {
                let n = self.input.staged().len().min(remaining);
                if n == 0 {
                    return Step::NeedBytes;
                }
                self.input.consume(n);
                self.input.state = if n == remaining {
                    InputState::Data(sink)
                } else {
                    InputState::Pad { remaining: remaining - n, sink }
                };
                Step::Progress
            }
            InputState::Data(sink) => self.step_data(sink, store),
            InputState::Digest { sink, mut got, mut bytes } => {
                let n = self.input.staged().len().min(DIGEST_BYTES - got);
                if n == 0 {
                    return Step::NeedBytes;
                }
                bytes[got..got + n].copy_from_slice(&self.input.staged()[..n]);
                self.input.consume(n);
                got += n;
                if got < DIGEST_BYTES {
                    self.input.state = InputState::Digest { sink, got, bytes };
                    return Step::Progress;
                }
                if u32::from_le_bytes(bytes) != sink.crc {
                    self.slots[usize::from(sink.slot)].data_corrupt = true;
                }
                self.data_received(sink);
                Step::Progress
            }
        }
    }

    fn protocol_error(&mut self, what: impl Into<String>) -> Step {
        self.fail(LinkError::Protocol(what.into()));
        Step::Stop
    }

    fn step_header(&mut self) -> Step {
        let staged = self.input.staged();
        if staged.len() < COMMON_HEADER_BYTES {
            return Step::NeedBytes;
        }
        let mut common_raw = [0u8; COMMON_HEADER_BYTES];
        common_raw.copy_from_slice(&staged[..COMMON_HEADER_BYTES]);
        let common = CommonHeader::decode(&common_raw);
        let framing = match tcp::frame(&common, &self.rules) {
            Ok(framing) => framing,
            Err(error) => return self.pdu_error(error),
        };
        if staged.len() < framing.header_bytes {
            return Step::NeedBytes;
        }
        let mut header = [0u8; RECEIVED_HEADER_BYTES_MAX];
        header[..framing.header_bytes].copy_from_slice(&staged[..framing.header_bytes]);
        let hlen = usize::from(common.hlen);
        if framing.header_bytes > hlen
            && let Err(error) = tcp::check_header_digest(&header[..framing.header_bytes], hlen)
        {
            return self.pdu_error(error);
        }
        let pdu = match tcp::decode(&header[..hlen], &framing) {
            Ok(pdu) => pdu,
            Err(error) => return self.pdu_error(error),
        };
        self.input.consume(framing.header_bytes);
        self.on_pdu(pdu, &framing)
    }

    fn pdu_error(&mut self, error: PduError) -> Step {
        self.protocol_error(format!("bad PDU (FES {:#x}, FEI {})", error.fes, error.fei))
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
                let sink = Sink {
                    slot: index,
                    data,
                    at: header.offset,
                    remaining: header.length,
                    crc: 0,
                    digest: framing.data_digest,
                    last: header.last,
                    success: header.success,
                };
                self.input.state = if framing.pad_bytes > 0 {
                    InputState::Pad { remaining: framing.pad_bytes, sink }
                } else {
                    InputState::Data(sink)
                };
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

    fn step_data(&mut self, mut sink: Sink, store: &mut impl DataStore) -> Step {
        if sink.remaining == 0 {
            return self.data_done(sink);
        }
        let staged = self.input.end - self.input.start;
        let n = if staged > 0 {
            let n = staged.min(sink.remaining as usize);
            let bytes = &self.input.staging[self.input.start..self.input.start + n];
            if sink.digest {
                sink.crc = tcp::digest_append(sink.crc, bytes);
            }
            copy_into(store, sink.data, sink.at, bytes);
            self.input.consume(n);
            n
        } else if sink.remaining >= DIRECT_READ_BYTES_MIN {
            let Some(stream) = self.stream.as_mut() else { return Step::Stop };
            let run = store.run_mut(sink.data, sink.at);
            let want = run.len().min(sink.remaining as usize);
            if want == 0 {
                return self.protocol_error("C2HData past the command's buffer");
            }
            match stream.read(&mut run[..want]) {
                Ok(0) => {
                    self.fail(LinkError::Closed);
                    return Step::Stop;
                }
                Ok(n) => {
                    if sink.digest {
                        sink.crc = tcp::digest_append(sink.crc, &run[..n]);
                    }
                    n
                }
                Err(e) if would_block(&e) => {
                    self.input.state = InputState::Data(sink);
                    return Step::Stop;
                }
                Err(e) => {
                    self.fail(LinkError::Socket(e.to_string()));
                    return Step::Stop;
                }
            }
        } else {
            self.input.state = InputState::Data(sink);
            return Step::NeedBytes;
        };
        sink.at += n as u32; // n ≤ remaining, a u32
        sink.remaining -= n as u32;
        self.data_done(sink)
    }

    /// Data of the current PDU so far is in: wait for more, its digest, or finish it.
    fn data_done(&mut self, sink: Sink) -> Step {
        self.input.state = if sink.remaining > 0 {
            InputState::Data(sink)
        } else if sink.digest {
            InputState::Digest { sink, got: 0, bytes: [0; DIGEST_BYTES] }
        } else {
            self.data_received(sink);
            return Step::Progress;
        };
        Step::Progress
    }

    /// A C2HData PDU (and its digest) is in.
    fn data_received(&mut self, sink: Sink) {
        self.input.state = InputState::Header;
        let slot = &mut self.slots[usize::from(sink.slot)];
        slot.received_bytes = sink.at;
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
