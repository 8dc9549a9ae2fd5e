//! What a queue pair sends: a bounded queue of PDUs, each an encoded header (with digest and
//! padding) and, for C2HData, a slice of a command's buffer and its data digest, written with
//! `writev` straight from the buffers the device filled (no copy). A slot is released once the
//! last PDU of its command is written.

use std::collections::VecDeque;
use std::io::{IoSlice, Write};
use std::net::TcpStream;

use arrayvec::ArrayVec;

use super::slot::SlotTable;
use crate::limits;
use crate::nvme::tcp::EncodedHeader;

/// One PDU to send.
pub(super) struct OutPdu {
    pub header: EncodedHeader,
    /// C2HData: `data_bytes` of this slot's buffer follow the header, then `digest` if any.
    pub slot: Option<u16>,
    pub data_bytes: u32,
    pub digest: Option<[u8; 4]>,
    /// The slot to release once this PDU is written (its command's last PDU).
    pub releases: Option<u16>,
    /// Close the connection once this PDU is written (a C2HTermReq).
    pub closes: bool,
}

impl OutPdu {
    pub fn control(header: EncodedHeader) -> OutPdu {
        OutPdu { header, slot: None, data_bytes: 0, digest: None, releases: None, closes: false }
    }

    fn total_bytes(&self) -> usize {
        self.header.len() + self.data_bytes as usize + if self.digest.is_some() { 4 } else { 0 }
    }
}

/// How a flush ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Flushed {
    /// Everything queued is written.
    Drained,
    /// The socket is full: wait for it to become writable.
    Blocked,
    /// A PDU that closes the connection was written.
    Closed,
    /// The peer is gone.
    Failed,
}

pub(super) struct Output {
    queue: VecDeque<OutPdu>,
    /// Bytes of the front PDU already written.
    sent_bytes: usize,
}

impl Output {
    /// Room for every slot's data and response plus control PDUs: never grows.
    pub fn new(slot_count: usize) -> Output {
        Output { queue: VecDeque::with_capacity(2 * slot_count + 4), sent_bytes: 0 }
    }

    pub fn push(&mut self, pdu: OutPdu) {
        debug_assert!(self.queue.len() < self.queue.capacity(), "output queue sized for slots");
        self.queue.push_back(pdu);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Writes queued PDUs until the socket is full; released slots go back to `slots`.
    pub fn flush(&mut self, stream: &mut TcpStream, slots: &mut SlotTable) -> (Flushed, usize) {
        let mut writes = 0;
        while !self.queue.is_empty() {
            let written = {
                let mut iovecs: ArrayVec<IoSlice<'_>, { limits::NVMF_OUTPUT_IOVECS_MAX }> =
                    ArrayVec::new();
                let mut skip = self.sent_bytes;
                'pdus: for pdu in &self.queue {
                    let data = pdu.slot.and_then(|index| {
                        let buffer = slots.get(index).buffer.as_ref()?;
                        buffer.as_slice().get(..pdu.data_bytes as usize)
                    });
                    if pdu.data_bytes > 0 && data.is_none() {
                        debug_assert!(false, "C2HData without its buffer");
                        break;
                    }
                    let digest = pdu.digest.as_ref().map(|d| &d[..]);
                    for part in [Some(pdu.header.as_bytes()), data, digest].into_iter().flatten() {
                        if skip >= part.len() {
                            skip -= part.len();
                            continue;
                        }
                        if iovecs.is_full() {
                            break 'pdus;
                        }
                        iovecs.push(IoSlice::new(&part[skip..]));
                        skip = 0;
                    }
                    if pdu.closes {
                        break; // nothing after a TermReq
                    }
                }
                if iovecs.is_empty() {
                    return (Flushed::Failed, writes);
                }
                match stream.write_vectored(&iovecs) {
                    Ok(0) => return (Flushed::Failed, writes),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        return (Flushed::Blocked, writes);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return (Flushed::Failed, writes),
                }
            };
            writes += 1;
            let mut sent = self.sent_bytes + written;
            while let Some(front) = self.queue.front() {
                let total = front.total_bytes();
                if sent < total {
                    break;
                }
                sent -= total;
                let (releases, closes) = (front.releases, front.closes);
                self.queue.pop_front();
                if let Some(index) = releases {
                    slots.release(index);
                }
                if closes {
                    self.sent_bytes = 0;
                    return (Flushed::Closed, writes);
                }
            }
            self.sent_bytes = sent;
        }
        (Flushed::Drained, writes)
    }
}
