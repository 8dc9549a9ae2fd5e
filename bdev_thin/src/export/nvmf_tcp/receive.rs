//! Receiving PDUs: a staging buffer for headers and small data, a state machine over
//! header → padding → data → data digest, and the checks that decide, before any length is
//! trusted, whether a PDU is served, waits (no free slot or arena room: the connection stops
//! reading, which is TCP back-pressure) or ends the connection with a C2HTermReq.
//!
//! Large data goes straight from the socket into the command's buffer; what arrived with a
//! header in the staging buffer is copied once. Each poll decodes a bounded number of PDUs.

use std::io::Read;

use super::qpair::{Close, Connection};
use super::slot::SlotState;
use crate::limits;
use crate::nvme::command::SGL_IN_CAPSULE;
use crate::nvme::tcp::{
    self, COMMON_HEADER_BYTES, CommonHeader, DIGEST_BYTES, Framing, IcResp, PduError,
    RECEIVED_HEADER_BYTES_MAX, field,
};
use crate::nvme::tcp::{Encoder, Pdu};

/// Data at least this long is read from the socket straight into its buffer; shorter data
/// comes through the staging buffer with the next headers, one `read` for several PDUs.
const DIRECT_READ_BYTES_MIN: u32 = 16 << 10;

/// Where received data goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sink {
    slot: u16,
    offset: u32,
    remaining: u32,
    /// The data digest so far (when digests are on).
    crc: u32,
    digest: bool,
    /// H2CData (its length counts toward the transfer) or in-capsule data.
    h2c_length: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Header,
    Pad {
        remaining: usize,
        sink: Sink,
    },
    Data(Sink),
    Digest {
        sink: Sink,
        got: usize,
        bytes: [u8; DIGEST_BYTES],
    },
    /// The host ended the connection (H2CTermReq): nothing more is read.
    Done,
}

/// What one decoding step did.
enum Step {
    Progress,
    NeedBytes,
    /// Cannot go on now: no slot or buffer (blocked), or the connection is closing.
    Wait,
}

pub(super) struct Input {
    staging: Box<[u8]>,
    start: usize,
    end: usize,
    state: State,
    /// The last step could not proceed for lack of a slot or arena room.
    blocked: bool,
}

impl Input {
    pub fn new() -> Input {
        Input {
            staging: vec![0u8; limits::NVMF_INPUT_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            state: State::Header,
            blocked: false,
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

    /// Input waits for resources (the socket need not wake the reactor for it).
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }
}

impl Connection {
    /// Reads what the socket has into staging. False if nothing came (would block, or the host
    /// is gone, which closes the connection).
    fn fill_staging(&mut self) -> bool {
        let input = &mut self.input;
        if input.start > 0 {
            input.staging.copy_within(input.start..input.end, 0);
            input.end -= input.start;
            input.start = 0;
        }
        if input.end == input.staging.len() {
            return false;
        }
        match self.stream.read(&mut input.staging[input.end..]) {
            Ok(0) => {
                self.closing = Some(Close::Abrupt);
                false
            }
            Ok(n) => {
                input.end += n;
                true
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                false
            }
            Err(_) => {
                self.closing = Some(Close::Abrupt);
                false
            }
        }
    }

    /// Decodes what the host sent, bounded per poll. Returns units of work done.
    pub fn process_input(&mut self) -> usize {
        let mut work = 0;
        let mut reads = 0;
        self.input.blocked = false;
        while work < limits::NVMF_PDUS_PER_POLL_MAX && self.closing.is_none() {
            match self.step() {
                Step::Progress => work += 1,
                Step::Wait => break,
                Step::NeedBytes => {
                    reads += 1;
                    if reads > limits::NVMF_PDUS_PER_POLL_MAX || !self.fill_staging() {
                        break;
                    }
                    work += 1;
                }
            }
        }
        work
    }

    fn step(&mut self) -> Step {
        match self.input.state {
            State::Header => self.step_header(),
            State::Pad { remaining, sink } => {
                let n = self.input.staged().len().min(remaining);
                if n == 0 {
                    return Step::NeedBytes;
                }
                self.input.consume(n);
                self.input.state = if n == remaining {
                    State::Data(sink)
                } else {
                    State::Pad { remaining: remaining - n, sink }
                };
                Step::Progress
            }
            State::Data(sink) => self.step_data(sink),
            State::Digest { sink, mut got, mut bytes } => {
                let n = self.input.staged().len().min(DIGEST_BYTES - got);
                if n == 0 {
                    return Step::NeedBytes;
                }
                bytes[got..got + n].copy_from_slice(&self.input.staged()[..n]);
                self.input.consume(n);
                got += n;
                if got < DIGEST_BYTES {
                    self.input.state = State::Digest { sink, got, bytes };
                    return Step::Progress;
                }
                if u32::from_le_bytes(bytes) != sink.crc {
                    self.slots.get_mut(sink.slot).digest_failed = true;
                }
                self.data_received(sink);
                Step::Progress
            }
            State::Done => Step::Wait,
        }
    }

    fn step_header(&mut self) -> Step {
        let staged = self.input.staged();
        if staged.len() < COMMON_HEADER_BYTES {
            return Step::NeedBytes;
        }
        let mut common_raw = [0u8; COMMON_HEADER_BYTES];
        common_raw.copy_from_slice(&staged[..COMMON_HEADER_BYTES]);
        let common = CommonHeader::decode(&common_raw);
        let framing = match tcp::frame(&common, &self.link.rules) {
            Ok(framing) => framing,
            Err(error) => {
                let shown = staged.len().min(usize::from(common.hlen).max(COMMON_HEADER_BYTES));
                let mut copy = [0u8; RECEIVED_HEADER_BYTES_MAX];
                let shown = shown.min(copy.len());
                copy[..shown].copy_from_slice(&staged[..shown]);
                self.fatal(error, &copy[..shown]);
                return Step::Wait;
            }
        };
        if staged.len() < framing.header_bytes {
            return Step::NeedBytes;
        }
        let mut header = [0u8; RECEIVED_HEADER_BYTES_MAX];
        header[..framing.header_bytes].copy_from_slice(&staged[..framing.header_bytes]);
        let hlen = usize::from(common.hlen);
        let header = &header[..framing.header_bytes];
        if framing.header_bytes > hlen
            && let Err(error) = tcp::check_header_digest(header, hlen)
        {
            self.fatal(error, &header[..hlen]);
            return Step::Wait;
        }
        let pdu = match tcp::decode(&header[..hlen], &framing) {
            Ok(pdu) => pdu,
            Err(error) => {
                self.fatal(error, &header[..hlen]);
                return Step::Wait;
            }
        };
        match self.on_pdu(pdu, &framing) {
            Ok(step) => step,
            Err(error) => {
                self.fatal(error, &header[..hlen]);
                Step::Wait
            }
        }
    }

    /// Acts on a decoded header; consumes it unless the PDU must wait.
    fn on_pdu(&mut self, pdu: Pdu, framing: &Framing) -> Result<Step, PduError> {
        match pdu {
            Pdu::IcReq(request) => {
                self.input.consume(framing.header_bytes);
                self.link.rules.initialized = true;
                self.link.rules.digests = request.digests;
                self.link.encoder.digests = request.digests;
                self.link.encoder.data_alignment = request.hpda;
                let response = IcResp {
                    pfv: 0,
                    cpda: 0,
                    digests: request.digests,
                    maxh2cdata: self.options.max_io_size,
                };
                self.output.push(super::output::OutPdu::control(Encoder::ic_resp(&response)));
                Ok(Step::Progress)
            }
            Pdu::TermReq { fes, fei, .. } => {
                eprintln!(
                    "nvmf: connection from {:?}: host terminated it (FES {fes:#x}, FEI {fei})",
                    self.peer
                );
                self.input.consume(framing.header_bytes);
                self.input.state = State::Done;
                self.closing = Some(Close::Abrupt);
                Ok(Step::Wait)
            }
            Pdu::CapsuleCmd(command) => {
                let Some(index) = self.slots.take(command) else {
                    self.input.blocked = true;
                    return Ok(Step::Wait);
                };
                if framing.data_bytes == 0 {
                    self.input.consume(framing.header_bytes);
                    self.start_command(index);
                    return Ok(Step::Progress);
                }
                let sgl = command.sgl;
                if sgl.identifier != SGL_IN_CAPSULE || sgl.address != 0 {
                    self.slots.release(index);
                    let sgl_identifier = (8 + 24 + 15) as u32;
                    return Err(PduError {
                        fes: tcp::fes::UNSUPPORTED_PARAMETER,
                        fei: sgl_identifier,
                    });
                }
                if sgl.length as usize != framing.data_bytes {
                    self.slots.release(index);
                    return Err(PduError::invalid_field(field::PLEN));
                }
                if !self.slots.attach_buffer(index, sgl.length) {
                    self.slots.release(index);
                    self.input.blocked = true;
                    return Ok(Step::Wait);
                }
                self.slots.get_mut(index).state = SlotState::Receiving;
                self.input.consume(framing.header_bytes);
                self.expect_data(index, 0, sgl.length, framing, None);
                Ok(Step::Progress)
            }
            Pdu::H2cData(data) => {
                let index = data.ttag.wrapping_sub(1);
                let awaiting = usize::from(index) < self.slots.slots.len()
                    && self.slots.get(index).state == SlotState::AwaitingData;
                if !awaiting {
                    return Err(PduError::invalid_field(field::DATA_TTAG));
                }
                let slot = self.slots.get(index);
                if slot.command.cid != data.cccid {
                    return Err(PduError::sequence());
                }
                let end = u64::from(data.offset) + u64::from(data.length);
                if data.offset != slot.received_bytes || end > u64::from(slot.transfer_bytes) {
                    return Err(PduError::out_of_range());
                }
                self.input.consume(framing.header_bytes);
                self.expect_data(index, data.offset, data.length, framing, Some(data.length));
                Ok(Step::Progress)
            }
            // `frame` lets only host PDUs through.
            _ => Err(PduError::invalid_field(field::PDU_TYPE)),
        }
    }

    fn expect_data(
        &mut self,
        slot: u16,
        offset: u32,
        length: u32,
        framing: &Framing,
        h2c_length: Option<u32>,
    ) {
        let sink = Sink {
            slot,
            offset,
            remaining: length,
            crc: 0,
            digest: framing.data_digest,
            h2c_length,
        };
        self.input.state = if framing.pad_bytes > 0 {
            State::Pad { remaining: framing.pad_bytes, sink }
        } else {
            State::Data(sink)
        };
    }

    fn step_data(&mut self, mut sink: Sink) -> Step {
        let input = &mut self.input;
        let Some(buffer) = self.slots.get_mut(sink.slot).buffer.as_mut() else {
            debug_assert!(false, "receiving into a slot without its buffer");
            self.closing = Some(Close::Abrupt);
            return Step::Wait;
        };
        let at = sink.offset as usize;
        let Some(target) = buffer.as_mut_slice().get_mut(at..at + sink.remaining as usize) else {
            debug_assert!(false, "received data past the slot's buffer");
            self.closing = Some(Close::Abrupt);
            return Step::Wait;
        };
        let staged = input.end - input.start;
        let n = if staged > 0 {
            let n = staged.min(target.len());
            target[..n].copy_from_slice(&input.staging[input.start..input.start + n]);
            input.consume(n);
            n
        } else if sink.remaining >= DIRECT_READ_BYTES_MIN {
            match self.stream.read(target) {
                Ok(0) => {
                    self.closing = Some(Close::Abrupt);
                    return Step::Wait;
                }
                Ok(n) => n,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::Interrupted =>
                {
                    return Step::Wait;
                }
                Err(_) => {
                    self.closing = Some(Close::Abrupt);
                    return Step::Wait;
                }
            }
        } else {
            return Step::NeedBytes;
        };
        if sink.digest {
            sink.crc = tcp::digest_append(sink.crc, &target[..n]);
        }
        sink.offset += n as u32; // n ≤ remaining, a u32
        sink.remaining -= n as u32;
        if sink.remaining > 0 {
            self.input.state = State::Data(sink);
        } else if sink.digest {
            self.input.state = State::Digest { sink, got: 0, bytes: [0; DIGEST_BYTES] };
        } else {
            self.data_received(sink);
        }
        Step::Progress
    }

    /// All data of a PDU (and its digest) is in.
    fn data_received(&mut self, sink: Sink) {
        self.input.state = State::Header;
        let slot = self.slots.get_mut(sink.slot);
        match sink.h2c_length {
            None => {
                slot.received_bytes = slot.transfer_bytes;
                self.start_command(sink.slot);
            }
            Some(length) => {
                slot.received_bytes += length;
                if slot.received_bytes < slot.transfer_bytes {
                    return;
                }
                if slot.digest_failed {
                    self.complete(
                        sink.slot,
                        crate::nvme::command::Status::TRANSIENT_TRANSPORT_ERROR,
                        0,
                        0,
                        0,
                    );
                } else {
                    self.execute(sink.slot);
                }
            }
        }
    }
}
