//! NVMe/TCP PDUs (NVMe/TCP Transport 1.0 §3.6): the common header, each PDU's specific header,
//! the framing rules a receiver checks before it trusts a length, and the CRC32C header and
//! data digests. Both ends use it: a target receives host-to-controller PDUs and sends the
//! others; an initiator the reverse ([`Role`]).
//!
//! A PDU is `common header (8) | specific header | header digest? | padding | data | data
//! digest?`: HLEN covers the two headers, PDO is where the data starts (0 when there is none),
//! PLEN is the whole PDU. [`frame`] checks those three against the negotiated digests and
//! limits and says how many bytes of each part follow, or which fatal error (a TermReq's FES
//! and the offending byte, FEI) ends the connection. Nothing here trusts a length it has not
//! checked, so any byte sequence yields a PDU or an error, never a panic (a property test
//! feeds it arbitrary bytes).

pub mod receive;

use super::command::{CQE_BYTES, Command, Completion, SQE_BYTES};
use super::{get_u16, get_u32, put_u16, put_u32};

pub const COMMON_HEADER_BYTES: usize = 8;
pub const DIGEST_BYTES: usize = 4;
/// ICReq / ICResp: the longest header.
pub const IC_BYTES: usize = 128;
pub const CAPSULE_CMD_HEADER_BYTES: usize = 8 + SQE_BYTES;
pub const CAPSULE_RESP_HEADER_BYTES: usize = 8 + CQE_BYTES;
pub const DATA_HEADER_BYTES: usize = 24;
pub const R2T_HEADER_BYTES: usize = 24;
pub const TERM_REQ_HEADER_BYTES: usize = 24;
/// A TermReq carries at most this much of the PDU header it complains about.
pub const TERM_REQ_DATA_MAX: usize = 128;
/// Largest PDU data offset: (31 + 1) dwords of alignment.
pub const PDO_MAX: usize = 128;
/// Bytes an encoded header (with digest and padding, or a TermReq with its data) can take.
pub const ENCODED_HEADER_BYTES_MAX: usize = TERM_REQ_HEADER_BYTES + TERM_REQ_DATA_MAX;
/// Bytes a received header (with its digest) can take: what a receiver stages before data.
pub const RECEIVED_HEADER_BYTES_MAX: usize = IC_BYTES + DIGEST_BYTES;

const _: () = assert!(ENCODED_HEADER_BYTES_MAX >= PDO_MAX);

pub mod pdu_type {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

pub mod flags {
    pub const HDGSTF: u8 = 1 << 0;
    pub const DDGSTF: u8 = 1 << 1;
    /// H2CData / C2HData: the last PDU of the transfer.
    pub const LAST_PDU: u8 = 1 << 2;
    /// C2HData: the command succeeded; no CapsuleResp follows.
    pub const SUCCESS: u8 = 1 << 3;
}

/// Fatal error status of a TermReq (NVMe/TCP 1.0 Figure 16).
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// A fatal transport error: what a TermReq reports before the connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("NVMe/TCP fatal error: FES {fes:#x} at byte {fei}")]
pub struct PduError {
    pub fes: u16,
    /// The byte offset of the bad header field (for FES 1 and 6; 0 otherwise).
    pub fei: u32,
}

impl PduError {
    pub fn invalid_field(offset: u32) -> PduError {
        PduError { fes: fes::INVALID_HEADER_FIELD, fei: offset }
    }

    pub fn sequence() -> PduError {
        PduError { fes: fes::PDU_SEQUENCE_ERROR, fei: 0 }
    }

    pub fn header_digest() -> PduError {
        PduError { fes: fes::HEADER_DIGEST_ERROR, fei: 0 }
    }

    pub fn out_of_range() -> PduError {
        PduError { fes: fes::DATA_OUT_OF_RANGE, fei: 0 }
    }

    pub fn limit_exceeded() -> PduError {
        PduError { fes: fes::DATA_LIMIT_EXCEEDED, fei: 0 }
    }
}

/// Offsets of common header fields (what FEI names).
pub mod field {
    pub const PDU_TYPE: u32 = 0;
    pub const FLAGS: u32 = 1;
    pub const HLEN: u32 = 2;
    pub const PDO: u32 = 3;
    pub const PLEN: u32 = 4;
    pub const IC_PFV: u32 = 8;
    pub const IC_HPDA: u32 = 10;
    pub const DATA_CCCID: u32 = 8;
    pub const DATA_TTAG: u32 = 10;
    pub const DATA_DATAL: u32 = 16;
}

/// The 8 bytes every PDU starts with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl CommonHeader {
    pub fn decode(bytes: &[u8; COMMON_HEADER_BYTES]) -> CommonHeader {
        CommonHeader {
            pdu_type: bytes[0],
            flags: bytes[1],
            hlen: bytes[2],
            pdo: bytes[3],
            plen: get_u32(bytes, 4),
        }
    }

    fn encode(&self, bytes: &mut [u8]) {
        bytes[0] = self.pdu_type;
        bytes[1] = self.flags;
        bytes[2] = self.hlen;
        bytes[3] = self.pdo;
        put_u32(bytes, 4, self.plen);
    }
}

/// Digests a connection uses, as ICReq asks and ICResp grants (the `dgst` byte: bit 0 header,
/// bit 1 data).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

impl Digests {
    pub fn from_byte(byte: u8) -> Digests {
        Digests { header: byte & 1 != 0, data: byte & 2 != 0 }
    }

    pub fn to_byte(self) -> u8 {
        u8::from(self.header) | (u8::from(self.data) << 1)
    }
}

/// The CRC32C digest of `bytes` (Castagnoli, as iSCSI; sent little-endian).
pub fn digest(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Extends a digest computed over earlier bytes (start with 0).
pub fn digest_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// Initialize Connection Request (host to controller).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcReq {
    pub pfv: u16,
    /// Host PDU data alignment, 0's based dwords (0..=31).
    pub hpda: u8,
    pub digests: Digests,
    /// Maximum outstanding R2Ts per command, 0's based.
    pub maxr2t: u32,
}

/// Initialize Connection Response (controller to host).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcResp {
    pub pfv: u16,
    /// Controller PDU data alignment, 0's based dwords.
    pub cpda: u8,
    pub digests: Digests,
    /// Most bytes one H2CData PDU may carry.
    pub maxh2cdata: u32,
}

/// The header of an H2CData or C2HData PDU (C2HData has no transfer tag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataHeader {
    pub cccid: u16,
    pub ttag: u16,
    pub offset: u32,
    pub length: u32,
    pub last: bool,
    /// C2HData only: SUCCESS, in place of a CapsuleResp.
    pub success: bool,
}

/// Ready to Transfer: the controller asks for `length` bytes from `offset`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct R2t {
    pub cccid: u16,
    pub ttag: u16,
    pub offset: u32,
    pub length: u32,
}

/// A decoded PDU header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pdu {
    IcReq(IcReq),
    IcResp(IcResp),
    /// H2CTermReq (`from_host`) or C2HTermReq.
    TermReq {
        from_host: bool,
        fes: u16,
        fei: u32,
    },
    CapsuleCmd(Command),
    CapsuleResp(Completion),
    H2cData(DataHeader),
    C2hData(DataHeader),
    R2t(R2t),
}

/// Which end receives: a target receives host PDUs, a host the controller's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Target,
    Host,
}

/// What a receiver has agreed to, to judge the next PDU's framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveRules {
    pub role: Role,
    /// ICReq / ICResp exchanged: from then on only the other PDUs are allowed.
    pub initialized: bool,
    pub digests: Digests,
    /// The data alignment the receiver asked of its peer (CPDA for a target), 0's based dwords.
    pub data_alignment: u8,
    /// Most in-capsule data bytes one CapsuleCmd may carry.
    pub capsule_data_max: u32,
    /// Most data bytes one H2CData / C2HData may carry.
    pub data_pdu_max: u32,
}

/// How the bytes after a common header divide, once [`frame`] has checked it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Framing {
    /// The whole header: HLEN plus the header digest, if any.
    pub header_bytes: usize,
    /// Bytes between the header (and its digest) and the data.
    pub pad_bytes: usize,
    pub data_bytes: usize,
    /// Whether a data digest follows the data.
    pub data_digest: bool,
}

impl Framing {
    pub fn total_bytes(&self) -> usize {
        self.header_bytes
            + self.pad_bytes
            + self.data_bytes
            + if self.data_digest { DIGEST_BYTES } else { 0 }
    }
}

/// Checks a received common header against the PDU type's fixed sizes and the negotiated
/// digests and limits. Errors name the FES and field a TermReq reports.
pub fn frame(header: &CommonHeader, rules: &ReceiveRules) -> Result<Framing, PduError> {
    let (ic, term, allowed): (u8, u8, &[(u8, usize)]) = match rules.role {
        Role::Target => (
            pdu_type::IC_REQ,
            pdu_type::H2C_TERM_REQ,
            &[
                (pdu_type::CAPSULE_CMD, CAPSULE_CMD_HEADER_BYTES),
                (pdu_type::H2C_DATA, DATA_HEADER_BYTES),
            ],
        ),
        Role::Host => (
            pdu_type::IC_RESP,
            pdu_type::C2H_TERM_REQ,
            &[
                (pdu_type::CAPSULE_RESP, CAPSULE_RESP_HEADER_BYTES),
                (pdu_type::C2H_DATA, DATA_HEADER_BYTES),
                (pdu_type::R2T, R2T_HEADER_BYTES),
            ],
        ),
    };
    let plen = header.plen as usize;
    let hlen = usize::from(header.hlen);
    if header.pdu_type == ic {
        if rules.initialized {
            return Err(PduError::sequence());
        }
        if hlen != IC_BYTES {
            return Err(PduError::invalid_field(field::HLEN));
        }
        if plen != IC_BYTES {
            return Err(PduError::invalid_field(field::PLEN));
        }
        return Ok(Framing { header_bytes: IC_BYTES, ..Framing::default() });
    }
    let known = header.pdu_type == term || allowed.iter().any(|(t, _)| *t == header.pdu_type);
    if !known {
        return Err(PduError::invalid_field(field::PDU_TYPE));
    }
    if !rules.initialized {
        return Err(PduError::sequence());
    }
    if header.pdu_type == term {
        if hlen != TERM_REQ_HEADER_BYTES {
            return Err(PduError::invalid_field(field::HLEN));
        }
        if !(TERM_REQ_HEADER_BYTES..=TERM_REQ_HEADER_BYTES + TERM_REQ_DATA_MAX).contains(&plen) {
            return Err(PduError::invalid_field(field::PLEN));
        }
        return Ok(Framing {
            header_bytes: TERM_REQ_HEADER_BYTES,
            data_bytes: plen - TERM_REQ_HEADER_BYTES,
            ..Framing::default()
        });
    }
    let expected_hlen = allowed.iter().find(|(t, _)| *t == header.pdu_type).map_or(0, |(_, h)| *h);
    if hlen != expected_hlen {
        return Err(PduError::invalid_field(field::HLEN));
    }
    if (header.flags & flags::HDGSTF != 0) != rules.digests.header {
        return Err(PduError::invalid_field(field::FLAGS));
    }
    let header_bytes = hlen + if rules.digests.header { DIGEST_BYTES } else { 0 };
    if plen < header_bytes {
        return Err(PduError::invalid_field(field::PLEN));
    }
    if plen == header_bytes {
        return Ok(Framing { header_bytes, ..Framing::default() });
    }
    let carries_data =
        matches!(header.pdu_type, pdu_type::CAPSULE_CMD | pdu_type::H2C_DATA | pdu_type::C2H_DATA);
    if !carries_data {
        return Err(PduError::invalid_field(field::PLEN));
    }
    let pdo = usize::from(header.pdo);
    let alignment = (usize::from(rules.data_alignment) + 1) * 4;
    if pdo < header_bytes || pdo > PDO_MAX || (rules.data_alignment > 0 && pdo % alignment != 0) {
        return Err(PduError::invalid_field(field::PDO));
    }
    if (header.flags & flags::DDGSTF != 0) != rules.digests.data {
        return Err(PduError::invalid_field(field::FLAGS));
    }
    let digest_bytes = if rules.digests.data { DIGEST_BYTES } else { 0 };
    let data_max = if header.pdu_type == pdu_type::CAPSULE_CMD {
        rules.capsule_data_max
    } else {
        rules.data_pdu_max
    } as usize;
    if plen <= pdo + digest_bytes || plen - pdo - digest_bytes > data_max {
        return Err(PduError::invalid_field(field::PLEN));
    }
    Ok(Framing {
        header_bytes,
        pad_bytes: pdo - header_bytes,
        data_bytes: plen - pdo - digest_bytes,
        data_digest: rules.digests.data,
    })
}

/// Checks the header digest of a received header: `header` holds HLEN bytes then the digest.
pub fn check_header_digest(header: &[u8], hlen: usize) -> Result<(), PduError> {
    let Some(sent) = header.get(hlen..hlen + DIGEST_BYTES) else {
        return Err(PduError::header_digest());
    };
    if get_u32(sent, 0) == digest(&header[..hlen]) {
        Ok(())
    } else {
        Err(PduError::header_digest())
    }
}

/// Decodes the specific header of a framed PDU: `header` holds its HLEN bytes.
pub fn decode(header: &[u8], framing: &Framing) -> Result<Pdu, PduError> {
    let Some(common_bytes) = header.get(..COMMON_HEADER_BYTES) else {
        return Err(PduError::invalid_field(field::HLEN));
    };
    let mut common_raw = [0u8; COMMON_HEADER_BYTES];
    common_raw.copy_from_slice(common_bytes);
    let common = CommonHeader::decode(&common_raw);
    if header.len() < usize::from(common.hlen) {
        return Err(PduError::invalid_field(field::HLEN));
    }
    let data_header = |with_ttag: bool| -> Result<DataHeader, PduError> {
        let length = get_u32(header, 16);
        if length as usize != framing.data_bytes {
            return Err(PduError::invalid_field(field::DATA_DATAL));
        }
        Ok(DataHeader {
            cccid: get_u16(header, 8),
            ttag: if with_ttag { get_u16(header, 10) } else { 0 },
            offset: get_u32(header, 12),
            length,
            last: common.flags & flags::LAST_PDU != 0,
            success: common.flags & flags::SUCCESS != 0,
        })
    };
    Ok(match common.pdu_type {
        pdu_type::IC_REQ | pdu_type::IC_RESP => {
            let pfv = get_u16(header, 8);
            if pfv != 0 {
                return Err(PduError::invalid_field(field::IC_PFV));
            }
            let alignment = header[10];
            if alignment > 31 {
                return Err(PduError::invalid_field(field::IC_HPDA));
            }
            let digests = Digests::from_byte(header[11]);
            if common.pdu_type == pdu_type::IC_REQ {
                Pdu::IcReq(IcReq { pfv, hpda: alignment, digests, maxr2t: get_u32(header, 12) })
            } else {
                Pdu::IcResp(IcResp {
                    pfv,
                    cpda: alignment,
                    digests,
                    maxh2cdata: get_u32(header, 12),
                })
            }
        }
        pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ => Pdu::TermReq {
            from_host: common.pdu_type == pdu_type::H2C_TERM_REQ,
            fes: get_u16(header, 8),
            fei: get_u32(header, 10),
        },
        pdu_type::CAPSULE_CMD => {
            let mut sqe = [0u8; SQE_BYTES];
            sqe.copy_from_slice(&header[8..8 + SQE_BYTES]);
            Pdu::CapsuleCmd(Command::decode(&sqe))
        }
        pdu_type::CAPSULE_RESP => {
            let mut cqe = [0u8; CQE_BYTES];
            cqe.copy_from_slice(&header[8..8 + CQE_BYTES]);
            Pdu::CapsuleResp(Completion::decode(&cqe))
        }
        pdu_type::H2C_DATA => Pdu::H2cData(data_header(true)?),
        pdu_type::C2H_DATA => Pdu::C2hData(data_header(false)?),
        pdu_type::R2T => Pdu::R2t(R2t {
            cccid: get_u16(header, 8),
            ttag: get_u16(header, 10),
            offset: get_u32(header, 12),
            length: get_u32(header, 16),
        }),
        _ => return Err(PduError::invalid_field(field::PDU_TYPE)),
    })
}

/// An encoded PDU header, ready to send: common and specific header, header digest, padding
/// up to PDO (and a TermReq's copy of the bad header). Data and its digest follow it.
#[derive(Clone, Copy)]
pub struct EncodedHeader {
    bytes: [u8; ENCODED_HEADER_BYTES_MAX],
    len: u8,
}

impl std::fmt::Debug for EncodedHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedHeader({:02x?})", self.as_bytes())
    }
}

impl EncodedHeader {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Builds the headers one end sends, with the digests and the peer's data alignment agreed at
/// connection set-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Encoder {
    pub digests: Digests,
    /// The peer's data alignment (HPDA for a target), 0's based dwords.
    pub data_alignment: u8,
}

impl Encoder {
    /// A header of `pdu_type` with `specific` after the common header, carrying `data_len`
    /// bytes of data. Types that take digests get them as negotiated.
    fn encode(
        &self,
        pdu_type: u8,
        extra_flags: u8,
        specific: &[u8],
        data_len: u32,
    ) -> EncodedHeader {
        let hlen = COMMON_HEADER_BYTES + specific.len();
        let digestible = !matches!(
            pdu_type,
            pdu_type::IC_REQ | pdu_type::IC_RESP | pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ
        );
        let header_digest = digestible && self.digests.header;
        let data_digest = digestible && self.digests.data && data_len > 0;
        let mut flags = extra_flags;
        let mut header_bytes = hlen;
        if header_digest {
            flags |= flags::HDGSTF;
            header_bytes += DIGEST_BYTES;
        }
        let mut pdo = 0;
        let mut total = header_bytes;
        if data_len > 0 && digestible {
            let alignment = (usize::from(self.data_alignment) + 1) * 4;
            pdo = header_bytes.next_multiple_of(alignment);
            total = pdo;
            if data_digest {
                flags |= flags::DDGSTF;
            }
        }
        let plen = total as u32
            + if digestible { data_len } else { 0 }
            + if data_digest { DIGEST_BYTES as u32 } else { 0 };
        let mut out = EncodedHeader { bytes: [0u8; ENCODED_HEADER_BYTES_MAX], len: 0 };
        let common = CommonHeader {
            pdu_type,
            flags,
            hlen: hlen as u8, // at most 128
            pdo: pdo as u8,   // at most PDO_MAX
            plen: if digestible { plen } else { hlen as u32 + data_len },
        };
        common.encode(&mut out.bytes);
        out.bytes[COMMON_HEADER_BYTES..hlen].copy_from_slice(specific);
        if header_digest {
            let crc = digest(&out.bytes[..hlen]);
            put_u32(&mut out.bytes, hlen, crc);
        }
        out.len = total as u8; // at most ENCODED_HEADER_BYTES_MAX
        out
    }

    pub fn ic_req(request: &IcReq) -> EncodedHeader {
        let mut specific = [0u8; IC_BYTES - COMMON_HEADER_BYTES];
        put_u16(&mut specific, 0, request.pfv);
        specific[2] = request.hpda;
        specific[3] = request.digests.to_byte();
        put_u32(&mut specific, 4, request.maxr2t);
        Encoder::default().encode(pdu_type::IC_REQ, 0, &specific, 0)
    }

    pub fn ic_resp(response: &IcResp) -> EncodedHeader {
        let mut specific = [0u8; IC_BYTES - COMMON_HEADER_BYTES];
        put_u16(&mut specific, 0, response.pfv);
        specific[2] = response.cpda;
        specific[3] = response.digests.to_byte();
        put_u32(&mut specific, 4, response.maxh2cdata);
        Encoder::default().encode(pdu_type::IC_RESP, 0, &specific, 0)
    }

    /// A TermReq carrying (up to 128 bytes of) the header it complains about.
    pub fn term_req(from_host: bool, error: PduError, bad_header: &[u8]) -> EncodedHeader {
        let copied = &bad_header[..bad_header.len().min(TERM_REQ_DATA_MAX)];
        let pdu_type = if from_host { pdu_type::H2C_TERM_REQ } else { pdu_type::C2H_TERM_REQ };
        let mut specific = [0u8; TERM_REQ_HEADER_BYTES - COMMON_HEADER_BYTES];
        put_u16(&mut specific, 0, error.fes);
        let names_field =
            matches!(error.fes, fes::INVALID_HEADER_FIELD | fes::UNSUPPORTED_PARAMETER);
        put_u32(&mut specific, 2, if names_field { error.fei } else { 0 });
        let mut out = Encoder::default().encode(pdu_type, 0, &specific, copied.len() as u32);
        out.bytes[TERM_REQ_HEADER_BYTES..TERM_REQ_HEADER_BYTES + copied.len()]
            .copy_from_slice(copied);
        out.len = (TERM_REQ_HEADER_BYTES + copied.len()) as u8; // at most 152
        out
    }

    /// A command capsule; `data_len` bytes of in-capsule data follow.
    pub fn capsule_cmd(&self, command: &Command, data_len: u32) -> EncodedHeader {
        self.encode(pdu_type::CAPSULE_CMD, 0, &command.encode(), data_len)
    }

    pub fn capsule_resp(&self, completion: &Completion) -> EncodedHeader {
        self.encode(pdu_type::CAPSULE_RESP, 0, &completion.encode(), 0)
    }

    fn data(&self, pdu_type: u8, header: &DataHeader) -> EncodedHeader {
        let mut specific = [0u8; DATA_HEADER_BYTES - COMMON_HEADER_BYTES];
        put_u16(&mut specific, 0, header.cccid);
        put_u16(&mut specific, 2, header.ttag);
        put_u32(&mut specific, 4, header.offset);
        put_u32(&mut specific, 8, header.length);
        let mut extra = if header.last { flags::LAST_PDU } else { 0 };
        if header.success {
            extra |= flags::SUCCESS;
        }
        self.encode(pdu_type, extra, &specific, header.length)
    }

    pub fn h2c_data(&self, header: &DataHeader) -> EncodedHeader {
        self.data(pdu_type::H2C_DATA, header)
    }

    /// C2HData: `success` must only be set with `last`.
    pub fn c2h_data(&self, header: &DataHeader) -> EncodedHeader {
        self.data(pdu_type::C2H_DATA, &DataHeader { ttag: 0, ..*header })
    }

    pub fn r2t(&self, r2t: &R2t) -> EncodedHeader {
        let mut specific = [0u8; R2T_HEADER_BYTES - COMMON_HEADER_BYTES];
        put_u16(&mut specific, 0, r2t.cccid);
        put_u16(&mut specific, 2, r2t.ttag);
        put_u32(&mut specific, 4, r2t.offset);
        put_u32(&mut specific, 8, r2t.length);
        self.encode(pdu_type::R2T, 0, &specific, 0)
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
