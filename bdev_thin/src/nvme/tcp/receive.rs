//! Receiving PDUs, for either end: a fixed staging buffer for headers and small data, and a
//! state machine over header → padding → data → data digest that checks a header's framing
//! (HLEN, PDO, PLEN bounds) and digest before it trusts a length.
//!
//! The owner (the target's connection, the initiator's queue pair) drives it one [`Event`] at a
//! time and keeps its own per-poll bound: a decoded header is handed over still staged, and the
//! owner acts on it, then [`Receiver::accept`]s it (and routes its data with
//! [`Receiver::expect_data`]) or leaves it staged to decode again when it can go on (no free
//! slot: the connection stops reading, which is TCP back-pressure). Data at least
//! [`DIRECT_READ_BYTES_MIN`] long goes from the socket straight into the owner's buffer
//! ([`Destination`]); what arrived with a header in staging is copied once. Nothing is
//! allocated after [`Receiver::new`].

use std::io::{ErrorKind, Read};

use super::{
    COMMON_HEADER_BYTES, CommonHeader, DIGEST_BYTES, Framing, Pdu, PduError,
    RECEIVED_HEADER_BYTES_MAX, ReceiveRules, check_header_digest, decode, digest_append, frame,
};

/// Data at least this long is read from the socket straight into its buffer; shorter data
/// comes through staging with the headers around it, one `read` for several PDUs.
pub const DIRECT_READ_BYTES_MIN: u32 = 16 << 10;

/// Where the data of a PDU goes: the owner's buffers, named by its `token`.
pub trait Destination<T> {
    /// The contiguous destination bytes for `token` from byte `at` of its transfer on (any
    /// length; the receiver takes what the PDU still carries). Empty if `at` lies past the
    /// buffer, which the owner's own checks on the header rule out.
    fn run_mut(&mut self, token: &T, at: u32) -> &mut [u8];
}

/// The data of one PDU being received: `token` is the owner's name for its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataSink<T> {
    pub token: T,
    /// The next byte of the transfer to fill; when the data is in, where it ended.
    pub at: u32,
    pub remaining: u32,
    /// The data digest so far (when digests are on).
    crc: u32,
    digest: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State<T> {
    Header,
    Pad {
        remaining: usize,
        sink: DataSink<T>,
    },
    Data(DataSink<T>),
    Digest {
        sink: DataSink<T>,
        got: usize,
        bytes: [u8; DIGEST_BYTES],
    },
    /// The connection is ending: nothing more is read.
    Stopped,
}

/// A header received whole, its digest checked and decoded; still staged until accepted.
#[derive(Clone, Copy, Debug)]
pub struct ReceivedHeader {
    pub pdu: Pdu,
    pub framing: Framing,
    bytes: [u8; RECEIVED_HEADER_BYTES_MAX],
    hlen: usize,
}

impl ReceivedHeader {
    /// The header's HLEN bytes (a TermReq about it quotes them).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.hlen]
    }
}

/// The start of a header that broke the rules, as much as had arrived, for the TermReq.
#[derive(Clone, Copy, Debug)]
pub struct BadHeader {
    pub error: PduError,
    bytes: [u8; RECEIVED_HEADER_BYTES_MAX],
    len: usize,
}

impl BadHeader {
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// What one step of the receiver did.
#[derive(Debug)]
pub enum Event<T> {
    /// Bytes moved (read into staging, padding skipped, data placed): step again.
    Progress,
    /// A header is in: act on it, then [`Receiver::accept`] it, or leave it to retry.
    Header(ReceivedHeader),
    /// All data of a PDU is in (`sink.at` is where it ended), and its digest matched unless
    /// `digest_ok` says otherwise. The receiver waits for the next header.
    Data { sink: DataSink<T>, digest_ok: bool },
    /// Nothing to do until the socket has more (or the receiver was stopped).
    Idle,
    /// A header that breaks the framing rules or its digest: the connection ends.
    Malformed(BadHeader),
    /// The peer closed the connection.
    Closed,
    /// The socket failed, or data ran past the owner's buffer.
    Failed(std::io::Error),
}

pub struct Receiver<T> {
    staging: Box<[u8]>,
    start: usize,
    end: usize,
    state: State<T>,
}

fn would_block(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

impl<T: Copy> Receiver<T> {
    /// A receiver with `staging_bytes` of staging (at least two of the largest headers).
    pub fn new(staging_bytes: usize) -> Receiver<T> {
        debug_assert!(staging_bytes >= 2 * RECEIVED_HEADER_BYTES_MAX);
        Receiver {
            staging: vec![0u8; staging_bytes].into_boxed_slice(),
            start: 0,
            end: 0,
            state: State::Header,
        }
    }

    /// Forgets what was staged, for a new connection.
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.state = State::Header;
    }

    /// Reads nothing more (the peer ended the connection).
    pub fn stop(&mut self) {
        self.state = State::Stopped;
    }

    /// Consumes a header the owner acted on; its data (if any) is next, routed by
    /// [`Receiver::expect_data`].
    pub fn accept(&mut self, header: &ReceivedHeader) {
        self.consume(header.framing.header_bytes);
    }

    /// Routes the data of the accepted header: `length` bytes into `token`'s buffer from byte
    /// `at` on.
    pub fn expect_data(&mut self, token: T, at: u32, length: u32, framing: &Framing) {
        let sink = DataSink { token, at, remaining: length, crc: 0, digest: framing.data_digest };
        self.state = if framing.pad_bytes > 0 {
            State::Pad { remaining: framing.pad_bytes, sink }
        } else {
            State::Data(sink)
        };
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

    /// One step: decodes what is staged, or reads the socket when staging holds too little.
    pub fn step(
        &mut self,
        stream: &mut impl Read,
        rules: &ReceiveRules,
        destination: &mut impl Destination<T>,
    ) -> Event<T> {
        let moved = match self.state {
            State::Header => match self.step_header(rules) {
                Some(event) => return event,
                None => false,
            },
            State::Pad { remaining, sink } => {
                let n = self.staged().len().min(remaining);
                self.consume(n);
                self.state = if n == remaining {
                    State::Data(sink)
                } else {
                    State::Pad { remaining: remaining - n, sink }
                };
                n > 0
            }
            State::Data(sink) => match self.step_data(sink, stream, destination) {
                Some(event) => return event,
                None => false,
            },
            State::Digest { sink, mut got, mut bytes } => {
                let n = self.staged().len().min(DIGEST_BYTES - got);
                bytes[got..got + n].copy_from_slice(&self.staged()[..n]);
                self.consume(n);
                got += n;
                if got == DIGEST_BYTES {
                    self.state = State::Header;
                    return Event::Data { sink, digest_ok: u32::from_le_bytes(bytes) == sink.crc };
                }
                self.state = State::Digest { sink, got, bytes };
                n > 0
            }
            State::Stopped => return Event::Idle,
        };
        if moved { Event::Progress } else { self.fill_staging(stream) }
    }

    /// Decodes the staged header, or None when more bytes must come first.
    fn step_header(&mut self, rules: &ReceiveRules) -> Option<Event<T>> {
        let staged = self.staged();
        if staged.len() < COMMON_HEADER_BYTES {
            return None;
        }
        let mut common_raw = [0u8; COMMON_HEADER_BYTES];
        common_raw.copy_from_slice(&staged[..COMMON_HEADER_BYTES]);
        let common = CommonHeader::decode(&common_raw);
        let hlen = usize::from(common.hlen);
        let framing = match frame(&common, rules) {
            Ok(framing) => framing,
            Err(error) => {
                let shown = staged.len().min(hlen.max(COMMON_HEADER_BYTES));
                return Some(Event::Malformed(bad_header(error, staged, shown)));
            }
        };
        if staged.len() < framing.header_bytes {
            return None;
        }
        let mut bytes = [0u8; RECEIVED_HEADER_BYTES_MAX];
        bytes[..framing.header_bytes].copy_from_slice(&staged[..framing.header_bytes]);
        let header = &bytes[..framing.header_bytes];
        if framing.header_bytes > hlen
            && let Err(error) = check_header_digest(header, hlen)
        {
            return Some(Event::Malformed(bad_header(error, header, hlen)));
        }
        match decode(&header[..hlen], &framing) {
            Ok(pdu) => Some(Event::Header(ReceivedHeader { pdu, framing, bytes, hlen })),
            Err(error) => Some(Event::Malformed(bad_header(error, header, hlen))),
        }
    }

    /// Places data from staging, or straight from the socket when none is staged and much is
    /// left. None when staging must be filled first.
    fn step_data(
        &mut self,
        mut sink: DataSink<T>,
        stream: &mut impl Read,
        destination: &mut impl Destination<T>,
    ) -> Option<Event<T>> {
        if sink.remaining > 0 {
            let staged = self.end - self.start;
            if staged == 0 && sink.remaining < DIRECT_READ_BYTES_MIN {
                return None;
            }
            let run = destination.run_mut(&sink.token, sink.at);
            let want = run.len().min(sink.remaining as usize);
            if want == 0 {
                return Some(Event::Failed(std::io::Error::new(
                    ErrorKind::InvalidData,
                    "received data past its buffer",
                )));
            }
            let target = &mut run[..want];
            let n = if staged > 0 {
                let n = staged.min(want);
                target[..n].copy_from_slice(&self.staging[self.start..self.start + n]);
                self.consume(n);
                n
            } else {
                match stream.read(target) {
                    Ok(0) => return Some(Event::Closed),
                    Ok(n) => n,
                    Err(e) if would_block(&e) => return Some(Event::Idle),
                    Err(e) => return Some(Event::Failed(e)),
                }
            };
            if sink.digest {
                sink.crc = digest_append(sink.crc, &target[..n]);
            }
            sink.at += n as u32; // n ≤ remaining, a u32
            sink.remaining -= n as u32;
        }
        if sink.remaining > 0 {
            self.state = State::Data(sink);
            Some(Event::Progress)
        } else if sink.digest {
            self.state = State::Digest { sink, got: 0, bytes: [0; DIGEST_BYTES] };
            Some(Event::Progress)
        } else {
            self.state = State::Header;
            Some(Event::Data { sink, digest_ok: true })
        }
    }

    /// Reads what the socket has into staging.
    fn fill_staging(&mut self, stream: &mut impl Read) -> Event<T> {
        if self.start > 0 {
            self.staging.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.staging.len() {
            // Only a PDU the owner left staged can fill staging; it must act on it first.
            return Event::Idle;
        }
        match stream.read(&mut self.staging[self.end..]) {
            Ok(0) => Event::Closed,
            Ok(n) => {
                self.end += n;
                Event::Progress
            }
            Err(e) if would_block(&e) => Event::Idle,
            Err(e) => Event::Failed(e),
        }
    }
}

fn bad_header(error: PduError, staged: &[u8], shown: usize) -> BadHeader {
    let len = shown.min(RECEIVED_HEADER_BYTES_MAX).min(staged.len());
    let mut bytes = [0u8; RECEIVED_HEADER_BYTES_MAX];
    bytes[..len].copy_from_slice(&staged[..len]);
    BadHeader { error, bytes, len }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::super::{DataHeader, Digests, Encoder, IcReq, Role, digest};
    use super::*;

    struct Buffer(Vec<u8>);

    impl Destination<()> for Buffer {
        fn run_mut(&mut self, _token: &(), at: u32) -> &mut [u8] {
            self.0.get_mut(at as usize..).unwrap_or_default()
        }
    }

    fn target_rules() -> ReceiveRules {
        ReceiveRules {
            role: Role::Target,
            initialized: false,
            digests: Digests::default(),
            data_alignment: 0,
            capsule_data_max: 8192,
            data_pdu_max: 131072,
        }
    }

    /// A reader handing out its bytes `chunk` at a time, then WouldBlock.
    struct Trickle<'a> {
        bytes: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.bytes.is_empty() {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = self.chunk.min(out.len()).min(self.bytes.len());
            out[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    /// A reader handing out its bytes in the chunk sizes given, recording each read's size.
    struct Chunks {
        bytes: Vec<u8>,
        sizes: VecDeque<usize>,
        reads: Vec<usize>,
    }

    impl Read for Chunks {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let Some(size) = self.sizes.pop_front() else {
                return Err(ErrorKind::WouldBlock.into());
            };
            let n = size.min(out.len()).min(self.bytes.len());
            out[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes.drain(..n);
            self.reads.push(n);
            Ok(n)
        }
    }

    /// An H2CData PDU of `data` with both digests and 8-byte data alignment (padding).
    fn h2c_pdu(data: &[u8]) -> (Vec<u8>, ReceiveRules) {
        let digests = Digests { header: true, data: true };
        let encoder = Encoder { digests, data_alignment: 1 };
        let header = DataHeader {
            cccid: 7,
            ttag: 1,
            offset: 0,
            length: data.len() as u32,
            last: true,
            success: false,
        };
        let mut pdu = encoder.h2c_data(&header).as_bytes().to_vec();
        pdu.extend_from_slice(data);
        pdu.extend_from_slice(&digest(data).to_le_bytes());
        let rules =
            ReceiveRules { initialized: true, digests, data_alignment: 1, ..target_rules() };
        (pdu, rules)
    }

    /// Steps until the data of one H2CData PDU is in, routing it to `buffer`.
    fn receive_h2c(
        receiver: &mut Receiver<()>,
        stream: &mut Chunks,
        rules: &ReceiveRules,
        buffer: &mut Buffer,
    ) -> bool {
        loop {
            match receiver.step(stream, rules, buffer) {
                Event::Progress => {}
                Event::Header(header) => {
                    let Pdu::H2cData(data) = header.pdu else { panic!("{header:?}") };
                    receiver.accept(&header);
                    receiver.expect_data((), data.offset, data.length, &header.framing);
                }
                Event::Data { sink, digest_ok } => {
                    assert_eq!(sink.at as usize, buffer.0.len());
                    return digest_ok;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn large_data_after_its_header_is_read_straight_into_its_buffer() {
        let data: Vec<u8> = (0..32768u32).map(|i| (i * 7) as u8).collect();
        let (pdu, rules) = h2c_pdu(&data);
        let header_and_pad = pdu.len() - data.len() - DIGEST_BYTES;
        let sizes = VecDeque::from([header_and_pad, 1 << 20, 1 << 20]);
        let mut stream = Chunks { bytes: pdu, sizes, reads: Vec::new() };
        let mut receiver = Receiver::new(1024);
        let mut buffer = Buffer(vec![0; data.len()]);
        assert!(receive_h2c(&mut receiver, &mut stream, &rules, &mut buffer));
        assert_eq!(buffer.0, data);
        // The data in one read of its own (staging holds 1 KiB), then the digest.
        assert_eq!(stream.reads, [header_and_pad, data.len(), DIGEST_BYTES]);
    }

    #[test]
    fn staged_data_is_copied_and_a_wrong_data_digest_is_reported() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 3) as u8).collect();
        let (mut pdu, rules) = h2c_pdu(&data);
        let last = pdu.len() - 1;
        pdu[last] ^= 1;
        let mut stream = Chunks { bytes: pdu, sizes: VecDeque::from([1 << 20]), reads: Vec::new() };
        let mut receiver = Receiver::new(8192);
        let mut buffer = Buffer(vec![0; data.len()]);
        assert!(!receive_h2c(&mut receiver, &mut stream, &rules, &mut buffer));
        assert_eq!(buffer.0, data);
        assert_eq!(stream.reads.len(), 1, "one read for header, data and digest");
    }

    #[test]
    fn a_header_split_across_reads_is_decoded_once_whole() {
        let request = IcReq { pfv: 0, hpda: 0, digests: Digests::default(), maxr2t: 0 };
        let encoded = Encoder::ic_req(&request);
        let mut stream = Trickle { bytes: encoded.as_bytes(), chunk: 7 };
        let mut receiver = Receiver::<()>::new(1024);
        let mut buffer = Buffer(Vec::new());
        let mut reads = 0;
        let header = loop {
            match receiver.step(&mut stream, &target_rules(), &mut buffer) {
                Event::Progress => reads += 1,
                Event::Header(header) => break header,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(reads, encoded.len().div_ceil(7));
        assert_eq!(header.pdu, Pdu::IcReq(request));
        receiver.accept(&header);
        assert!(matches!(receiver.step(&mut stream, &target_rules(), &mut buffer), Event::Idle));
    }

    #[test]
    fn a_plen_past_the_limit_is_malformed_before_any_data_is_read() {
        let mut bytes =
            Encoder::ic_req(&IcReq { pfv: 0, hpda: 0, digests: Digests::default(), maxr2t: 0 })
                .as_bytes()
                .to_vec();
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut stream = Trickle { bytes: &bytes, chunk: 1 << 20 };
        let mut receiver = Receiver::<()>::new(1024);
        let mut buffer = Buffer(Vec::new());
        assert!(matches!(
            receiver.step(&mut stream, &target_rules(), &mut buffer),
            Event::Progress
        ));
        match receiver.step(&mut stream, &target_rules(), &mut buffer) {
            Event::Malformed(bad) => assert_eq!(bad.bytes(), &bytes[..]),
            other => panic!("unexpected {other:?}"),
        }
    }
}
