//! Receiving PDUs on a connection: the shared receiver ([`crate::nvme::tcp::receive`]) reads
//! and frames them; this decides, for each decoded header, whether the PDU is served, waits (no
//! free slot or arena room: the connection stops reading, which is TCP back-pressure) or ends
//! the connection with a C2HTermReq. Each poll decodes a bounded number of PDUs.

use super::qpair::{Close, Connection};
use super::slot::{SlotState, SlotTable};
use crate::limits;
use crate::nvme::command::SGL_IN_CAPSULE;
use crate::nvme::tcp::receive::{DataSink, Destination, Event, ReceivedHeader, Receiver};
use crate::nvme::tcp::{self, IcResp, PduError, field};
use crate::nvme::tcp::{Encoder, Pdu};

/// Where received data goes: a slot's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sink {
    slot: u16,
    /// H2CData (its length counts toward the transfer) or in-capsule data.
    h2c_length: Option<u32>,
}

impl Destination<Sink> for SlotTable {
    fn run_mut(&mut self, sink: &Sink, at: u32) -> &mut [u8] {
        match self.get_mut(sink.slot).buffer.as_mut() {
            Some(buffer) => buffer.as_mut_slice().get_mut(at as usize..).unwrap_or_default(),
            None => &mut [],
        }
    }
}

/// What acting on a header did.
enum Step {
    Progress,
    /// Cannot go on now: no slot or buffer (blocked), or the connection is closing.
    Wait,
}

pub(super) struct Input {
    receiver: Receiver<Sink>,
    /// The last step could not proceed for lack of a slot or arena room.
    blocked: bool,
}

impl Input {
    pub fn new() -> Input {
        Input { receiver: Receiver::new(limits::NVMF_INPUT_BUFFER_BYTES), blocked: false }
    }

    /// Input waits for resources (the socket need not wake the reactor for it).
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }
}

impl Connection {
    /// Decodes what the host sent, bounded per poll. Returns units of work done.
    pub fn process_input(&mut self) -> usize {
        let mut work = 0;
        self.input.blocked = false;
        while work < limits::NVMF_PDUS_PER_POLL_MAX && self.closing.is_none() {
            let event =
                self.input.receiver.step(&mut self.stream, &self.link.rules, &mut self.slots);
            match event {
                Event::Progress => work += 1,
                Event::Header(header) => match self.on_pdu(&header) {
                    Ok(Step::Progress) => work += 1,
                    Ok(Step::Wait) => break,
                    Err(error) => {
                        self.fatal(error, header.bytes());
                        break;
                    }
                },
                Event::Data { sink, digest_ok } => {
                    if !digest_ok {
                        self.slots.get_mut(sink.token.slot).digest_failed = true;
                    }
                    self.data_received(sink);
                    work += 1;
                }
                Event::Idle => break,
                Event::Malformed(bad) => {
                    self.fatal(bad.error, bad.bytes());
                    break;
                }
                Event::Closed | Event::Failed(_) => {
                    self.closing = Some(Close::Abrupt);
                    break;
                }
            }
        }
        work
    }

    /// Acts on a decoded header; consumes it unless the PDU must wait.
    fn on_pdu(&mut self, header: &ReceivedHeader) -> Result<Step, PduError> {
        let framing = &header.framing;
        match header.pdu {
            Pdu::IcReq(request) => {
                self.input.receiver.accept(header);
                self.ticket.handshake_done();
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
                self.input.receiver.accept(header);
                self.input.receiver.stop();
                self.closing = Some(Close::Abrupt);
                Ok(Step::Wait)
            }
            Pdu::CapsuleCmd(command) => {
                let Some(index) = self.slots.take(command) else {
                    self.input.blocked = true;
                    return Ok(Step::Wait);
                };
                if framing.data_bytes == 0 {
                    self.input.receiver.accept(header);
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
                self.input.receiver.accept(header);
                let sink = Sink { slot: index, h2c_length: None };
                self.input.receiver.expect_data(sink, 0, sgl.length, framing);
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
                self.input.receiver.accept(header);
                let sink = Sink { slot: index, h2c_length: Some(data.length) };
                self.input.receiver.expect_data(sink, data.offset, data.length, framing);
                Ok(Step::Progress)
            }
            // `frame` lets only host PDUs through.
            _ => Err(PduError::invalid_field(field::PDU_TYPE)),
        }
    }

    /// All data of a PDU (and its digest) is in.
    fn data_received(&mut self, sink: DataSink<Sink>) {
        let Sink { slot: index, h2c_length } = sink.token;
        let slot = self.slots.get_mut(index);
        match h2c_length {
            None => {
                slot.received_bytes = slot.transfer_bytes;
                self.start_command(index);
            }
            Some(length) => {
                slot.received_bytes += length;
                if slot.received_bytes < slot.transfer_bytes {
                    return;
                }
                if slot.digest_failed {
                    self.complete(
                        index,
                        crate::nvme::command::Status::TRANSIENT_TRANSPORT_ERROR,
                        0,
                        0,
                        0,
                    );
                } else {
                    self.execute(index);
                }
            }
        }
    }
}
