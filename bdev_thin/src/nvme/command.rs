//! Submission queue entries (64 bytes), completion queue entries (16 bytes), opcodes and status
//! codes (NVMe Base 2.0 §4.2, §4.6, Figures 88 and 92). Admin and IO commands share the entry;
//! the fields a command gives meaning to are read through its own accessor (`nlb`, `cns`...).

use super::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

pub const SQE_BYTES: usize = 64;
pub const CQE_BYTES: usize = 16;
/// Bytes of one Dataset Management range (NVM Command Set 1.0 Figure 39).
pub const DSM_RANGE_BYTES: usize = 16;
/// Most ranges one Dataset Management command carries (NR is 8 bits, 0's based).
pub const DSM_RANGES_MAX: usize = 256;
/// The NSID that names every namespace (broadcast).
pub const NSID_ALL: u32 = 0xFFFF_FFFF;

/// Admin command opcodes (NVMe Base 2.0 Figure 138) and the fabrics opcode.
pub mod admin_opcode {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Fabrics commands (Connect, Property Get/Set...): `fctype` says which.
    pub const FABRICS: u8 = 0x7F;
}

/// NVM command set IO opcodes (NVM Command Set 1.0 Figure 18).
pub mod io_opcode {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_UNCORRECTABLE: u8 = 0x04;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// Which way a command moves data: bits 1:0 of the opcode (NVMe Base 2.0 Figure 80), true for
/// admin, IO and fabrics opcodes alike (Connect is 0x7F: host to controller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirection {
    None,
    HostToController,
    ControllerToHost,
    Bidirectional,
}

impl DataDirection {
    pub fn of_opcode(opcode: u8) -> DataDirection {
        match opcode & 0x3 {
            0 => DataDirection::None,
            1 => DataDirection::HostToController,
            2 => DataDirection::ControllerToHost,
            _ => DataDirection::Bidirectional,
        }
    }
}

/// SGL descriptor identifiers (type in bits 7:4, subtype in 3:0; NVMe Base 2.0 Figure 118 and
/// NVMe/TCP 1.0 §3.3.4): in-capsule data, and data the transport moves (R2T / C2HData).
pub const SGL_IN_CAPSULE: u8 = 0x01;
pub const SGL_TRANSPORT: u8 = 0x5A;
/// PSDT 01b in a command's flags: over fabrics every command describes its data with SGLs and
/// a byte-aligned metadata buffer (NVMe-oF 1.1 §2.1); Linux's target refuses any other value.
pub const PSDT_SGL_METABUF: u8 = 0x40;

/// The first SGL descriptor of a command (DPTR, bytes 24..40 of the entry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SglDescriptor {
    pub address: u64,
    pub length: u32,
    /// Type (bits 7:4) and subtype (bits 3:0).
    pub identifier: u8,
}

impl SglDescriptor {
    pub fn in_capsule(length: u32) -> SglDescriptor {
        SglDescriptor { address: 0, length, identifier: SGL_IN_CAPSULE }
    }

    pub fn transport(length: u32) -> SglDescriptor {
        SglDescriptor { address: 0, length, identifier: SGL_TRANSPORT }
    }

    fn decode(bytes: &[u8]) -> SglDescriptor {
        SglDescriptor {
            address: get_u64(bytes, 0),
            length: get_u32(bytes, 8),
            identifier: bytes[15],
        }
    }

    fn encode(&self, bytes: &mut [u8]) {
        put_u64(bytes, 0, self.address);
        put_u32(bytes, 8, self.length);
        bytes[12..15].fill(0);
        bytes[15] = self.identifier;
    }
}

/// A submission queue entry. `fctype` of a fabrics command is byte 4 (the low byte of NSID).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Command {
    pub opcode: u8,
    /// FUSE (bits 1:0) and PSDT (bits 7:6).
    pub flags: u8,
    pub cid: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    pub sgl: SglDescriptor,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

impl Command {
    pub fn new(opcode: u8, cid: u16) -> Command {
        Command { opcode, cid, ..Command::default() }
    }

    pub fn decode(bytes: &[u8; SQE_BYTES]) -> Command {
        Command {
            opcode: bytes[0],
            flags: bytes[1],
            cid: get_u16(bytes, 2),
            nsid: get_u32(bytes, 4),
            cdw2: get_u32(bytes, 8),
            cdw3: get_u32(bytes, 12),
            mptr: get_u64(bytes, 16),
            sgl: SglDescriptor::decode(&bytes[24..40]),
            cdw10: get_u32(bytes, 40),
            cdw11: get_u32(bytes, 44),
            cdw12: get_u32(bytes, 48),
            cdw13: get_u32(bytes, 52),
            cdw14: get_u32(bytes, 56),
            cdw15: get_u32(bytes, 60),
        }
    }

    pub fn encode(&self) -> [u8; SQE_BYTES] {
        let mut bytes = [0u8; SQE_BYTES];
        bytes[0] = self.opcode;
        bytes[1] = self.flags;
        put_u16(&mut bytes, 2, self.cid);
        put_u32(&mut bytes, 4, self.nsid);
        put_u32(&mut bytes, 8, self.cdw2);
        put_u32(&mut bytes, 12, self.cdw3);
        put_u64(&mut bytes, 16, self.mptr);
        self.sgl.encode(&mut bytes[24..40]);
        for (index, dword) in self.cdw10_15().into_iter().enumerate() {
            put_u32(&mut bytes, 40 + 4 * index, dword);
        }
        bytes
    }

    fn cdw10_15(&self) -> [u32; 6] {
        [self.cdw10, self.cdw11, self.cdw12, self.cdw13, self.cdw14, self.cdw15]
    }

    /// Fused operation bits (1:0); we serve no fused commands.
    pub fn fuse(&self) -> u8 {
        self.flags & 0x3
    }

    /// The fabrics command type (byte 4 of a fabrics command).
    pub fn fctype(&self) -> u8 {
        (self.nsid & 0xFF) as u8
    }

    pub fn direction(&self) -> DataDirection {
        DataDirection::of_opcode(self.opcode)
    }

    /// Read / Write / Write Zeroes: starting LBA (CDW10-11).
    pub fn slba(&self) -> u64 {
        u64::from(self.cdw10) | (u64::from(self.cdw11) << 32)
    }

    /// Read / Write / Write Zeroes: number of logical blocks, converted from 0's based.
    pub fn block_count(&self) -> u64 {
        u64::from(self.cdw12 & 0xFFFF) + 1
    }

    /// Write / Read / Write Zeroes: Force Unit Access (CDW12 bit 30).
    pub fn fua(&self) -> bool {
        self.cdw12 & (1 << 30) != 0
    }

    /// Write Zeroes: deallocate (CDW12 bit 25).
    pub fn deallocate(&self) -> bool {
        self.cdw12 & (1 << 25) != 0
    }

    /// Dataset Management: number of ranges, converted from 0's based (CDW10 bits 7:0).
    pub fn dsm_range_count(&self) -> usize {
        (self.cdw10 & 0xFF) as usize + 1
    }

    /// Dataset Management: the Attribute - Deallocate bit (CDW11 bit 2).
    pub fn dsm_deallocate(&self) -> bool {
        self.cdw11 & (1 << 2) != 0
    }

    /// Identify: Controller or Namespace Structure (CDW10 bits 7:0).
    pub fn cns(&self) -> u8 {
        (self.cdw10 & 0xFF) as u8
    }

    /// Identify: Command Set Identifier (CDW11 bits 31:24).
    pub fn csi(&self) -> u8 {
        (self.cdw11 >> 24) as u8
    }

    /// Get / Set Features: Feature Identifier (CDW10 bits 7:0).
    pub fn feature_id(&self) -> u8 {
        (self.cdw10 & 0xFF) as u8
    }

    /// Get Log Page: Log Page Identifier (CDW10 bits 7:0).
    pub fn log_page_id(&self) -> u8 {
        (self.cdw10 & 0xFF) as u8
    }

    /// Get Log Page: Retain Asynchronous Event (CDW10 bit 15).
    pub fn log_retain_event(&self) -> bool {
        self.cdw10 & (1 << 15) != 0
    }

    /// Get Log Page: bytes asked for (NUMDL in CDW10 31:16, NUMDU in CDW11 15:0; 0's based
    /// dwords).
    pub fn log_length_bytes(&self) -> u64 {
        let dwords = u64::from(self.cdw10 >> 16) | (u64::from(self.cdw11 & 0xFFFF) << 16);
        (dwords + 1) * 4
    }

    /// Get Log Page: byte offset into the log (CDW12-13).
    pub fn log_offset_bytes(&self) -> u64 {
        u64::from(self.cdw12) | (u64::from(self.cdw13) << 32)
    }
}

/// A Dataset Management range (NVM Command Set 1.0 Figure 39): `length` in logical blocks, not
/// 0's based.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsmRange {
    pub attributes: u32,
    pub length_blocks: u32,
    pub slba: u64,
}

impl DsmRange {
    pub fn decode(bytes: &[u8; DSM_RANGE_BYTES]) -> DsmRange {
        DsmRange {
            attributes: get_u32(bytes, 0),
            length_blocks: get_u32(bytes, 4),
            slba: get_u64(bytes, 8),
        }
    }

    pub fn encode(&self) -> [u8; DSM_RANGE_BYTES] {
        let mut bytes = [0u8; DSM_RANGE_BYTES];
        put_u32(&mut bytes, 0, self.attributes);
        put_u32(&mut bytes, 4, self.length_blocks);
        put_u64(&mut bytes, 8, self.slba);
        bytes
    }
}

/// A completion's status: type, code and Do Not Retry (NVMe Base 2.0 Figure 93).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    pub dnr: bool,
}

impl Status {
    pub const SUCCESS: Status = Status::generic(0x00);
    pub const INVALID_OPCODE: Status = Status::generic(0x01).no_retry();
    pub const INVALID_FIELD: Status = Status::generic(0x02).no_retry();
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    pub const INTERNAL_ERROR: Status = Status::generic(0x06);
    pub const ABORTED_BY_REQUEST: Status = Status::generic(0x07);
    pub const ABORTED_SQ_DELETION: Status = Status::generic(0x08);
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0B).no_retry();
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0C).no_retry();
    pub const DATA_SGL_LENGTH_INVALID: Status = Status::generic(0x0F).no_retry();
    pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = Status::generic(0x11).no_retry();
    pub const NAMESPACE_WRITE_PROTECTED: Status = Status::generic(0x20).no_retry();
    /// A transport error the host may retry: a data digest that did not match.
    pub const TRANSIENT_TRANSPORT_ERROR: Status = Status::generic(0x22);
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80).no_retry();
    pub const CAPACITY_EXCEEDED: Status = Status::generic(0x81).no_retry();
    pub const INVALID_QUEUE_IDENTIFIER: Status = Status::command_specific(0x01).no_retry();
    pub const ASYNC_EVENT_LIMIT_EXCEEDED: Status = Status::command_specific(0x05).no_retry();
    pub const INVALID_LOG_PAGE: Status = Status::command_specific(0x09).no_retry();
    pub const FEATURE_NOT_SAVEABLE: Status = Status::command_specific(0x0D).no_retry();
    pub const WRITE_FAULT: Status = Status::media(0x80);
    pub const UNRECOVERED_READ_ERROR: Status = Status::media(0x81);

    pub const fn generic(sc: u8) -> Status {
        Status { sct: 0, sc, dnr: false }
    }

    pub const fn command_specific(sc: u8) -> Status {
        Status { sct: 1, sc, dnr: false }
    }

    pub const fn media(sc: u8) -> Status {
        Status { sct: 2, sc, dnr: false }
    }

    pub const fn no_retry(self) -> Status {
        Status { dnr: true, ..self }
    }

    pub fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The 15 bits above the phase tag: SC 8:1, SCT 11:9, DNR 15.
    pub fn to_field(self) -> u16 {
        (u16::from(self.sc) << 1) | (u16::from(self.sct & 0x7) << 9) | (u16::from(self.dnr) << 15)
    }

    pub fn from_field(field: u16) -> Status {
        Status {
            sc: (field >> 1) as u8,
            sct: ((field >> 9) & 0x7) as u8,
            dnr: field & (1 << 15) != 0,
        }
    }
}

/// A completion queue entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
}

impl Completion {
    pub fn decode(bytes: &[u8; CQE_BYTES]) -> Completion {
        Completion {
            dw0: get_u32(bytes, 0),
            dw1: get_u32(bytes, 4),
            sqhd: get_u16(bytes, 8),
            sqid: get_u16(bytes, 10),
            cid: get_u16(bytes, 12),
            status: Status::from_field(get_u16(bytes, 14)),
        }
    }

    /// Encodes with the phase tag 0 (fabrics have no completion queue to phase).
    pub fn encode(&self) -> [u8; CQE_BYTES] {
        let mut bytes = [0u8; CQE_BYTES];
        put_u32(&mut bytes, 0, self.dw0);
        put_u32(&mut bytes, 4, self.dw1);
        put_u16(&mut bytes, 8, self.sqhd);
        put_u16(&mut bytes, 10, self.sqid);
        put_u16(&mut bytes, 12, self.cid);
        put_u16(&mut bytes, 14, self.status.to_field());
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_entry_fields_sit_at_their_offsets() {
        let mut command = Command::new(0x02, 0xBEEF);
        command.flags = 0x41;
        command.nsid = 0x0102_0304;
        command.mptr = 0x1122_3344_5566_7788;
        command.sgl = SglDescriptor::transport(0x2000);
        command.cdw10 = 0xAABB_CCDD;
        command.cdw15 = 0x1357_9BDF;
        let bytes = command.encode();
        assert_eq!(bytes.len(), 64);
        assert_eq!(bytes[0], 0x02, "opcode @0");
        assert_eq!(bytes[1], 0x41, "flags @1");
        assert_eq!(&bytes[2..4], &[0xEF, 0xBE], "cid @2");
        assert_eq!(&bytes[4..8], &[4, 3, 2, 1], "nsid @4");
        assert_eq!(bytes[16], 0x88, "mptr @16");
        assert_eq!(&bytes[32..36], &[0x00, 0x20, 0, 0], "sgl length @32");
        assert_eq!(bytes[39], 0x5A, "sgl identifier @39");
        assert_eq!(&bytes[40..44], &[0xDD, 0xCC, 0xBB, 0xAA], "cdw10 @40");
        assert_eq!(&bytes[60..64], &[0xDF, 0x9B, 0x57, 0x13], "cdw15 @60");
        assert_eq!(Command::decode(&bytes), command);
    }

    #[test]
    fn io_fields_decode_as_the_nvm_command_set_says() {
        let mut command = Command::new(io_opcode::WRITE_ZEROES, 1);
        command.cdw10 = 0x10;
        command.cdw11 = 0x1;
        command.cdw12 = (1 << 30) | (1 << 25) | 7;
        assert_eq!(command.slba(), 0x1_0000_0010);
        assert_eq!(command.block_count(), 8, "NLB is 0's based");
        assert!(command.fua() && command.deallocate());
        command.cdw10 = 0xFF;
        command.cdw11 = 1 << 2;
        assert_eq!(command.dsm_range_count(), 256);
        assert!(command.dsm_deallocate());
        assert_eq!(DataDirection::of_opcode(io_opcode::WRITE), DataDirection::HostToController);
        assert_eq!(DataDirection::of_opcode(io_opcode::READ), DataDirection::ControllerToHost);
        assert_eq!(DataDirection::of_opcode(admin_opcode::FABRICS), DataDirection::Bidirectional);
        assert_eq!(
            DataDirection::of_opcode(io_opcode::DATASET_MANAGEMENT),
            DataDirection::HostToController
        );
    }

    #[test]
    fn log_page_length_and_offset() {
        let mut command = Command::new(admin_opcode::GET_LOG_PAGE, 1);
        command.cdw10 = (255 << 16) | (1 << 15) | 0x70;
        command.cdw11 = 1;
        command.cdw12 = 1024;
        assert_eq!(command.log_page_id(), 0x70);
        assert!(command.log_retain_event());
        assert_eq!(command.log_length_bytes(), (256 + 65536) * 4);
        assert_eq!(command.log_offset_bytes(), 1024);
    }

    #[test]
    fn completion_entry_and_status_layout() {
        let completion = Completion {
            dw0: 0x0102_0304,
            dw1: 5,
            sqhd: 0x0007,
            sqid: 2,
            cid: 0x1234,
            status: Status::LBA_OUT_OF_RANGE,
        };
        let bytes = completion.encode();
        assert_eq!(&bytes[0..4], &[4, 3, 2, 1], "dw0 @0");
        assert_eq!(bytes[4], 5, "dw1 @4");
        assert_eq!(&bytes[8..10], &[7, 0], "sqhd @8");
        assert_eq!(&bytes[10..12], &[2, 0], "sqid @10");
        assert_eq!(&bytes[12..14], &[0x34, 0x12], "cid @12");
        // SC 0x80 in bits 8:1, SCT 0, DNR bit 15: 0x8100.
        assert_eq!(&bytes[14..16], &[0x00, 0x81], "status @14");
        assert_eq!(Completion::decode(&bytes), completion);
        let fabrics = Status::command_specific(0x84).no_retry();
        assert_eq!(fabrics.to_field(), (0x84 << 1) | (1 << 9) | (1 << 15));
        assert_eq!(Status::from_field(fabrics.to_field()), fabrics);
    }

    #[test]
    fn dsm_range_layout() {
        let range = DsmRange { attributes: 1, length_blocks: 0x20, slba: 0x0102 };
        let bytes = range.encode();
        assert_eq!(bytes[0], 1, "context attributes @0");
        assert_eq!(bytes[4], 0x20, "length @4");
        assert_eq!(&bytes[8..10], &[2, 1], "slba @8");
        assert_eq!(DsmRange::decode(&bytes), range);
    }
}
