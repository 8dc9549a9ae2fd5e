//! Fabrics commands (NVMe over Fabrics 1.1 §3) and the controller properties they reach:
//! Connect with its 1 KiB data, Property Get / Set, and the CAP, VS, CC and CSTS registers
//! (NVMe Base 2.0 §3.1.3). Fabrics fields live in the submission entry's bytes 40..64, which
//! are CDW10..CDW15 of [`Command`].

use super::command::{Command, SglDescriptor, admin_opcode};
use super::{NQN_BYTES_MAX, get_u16, padded_text, put_padded, put_u16};

/// Fabrics command types (`fctype`, byte 4).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTHENTICATION_SEND: u8 = 0x05;
    pub const AUTHENTICATION_RECEIVE: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// Connect status codes (status code type 1; NVMe-oF 1.1 Figure 21).
pub mod connect_status {
    use crate::nvme::command::Status;
    pub const INCOMPATIBLE_FORMAT: Status = Status::command_specific(0x80).no_retry();
    pub const CONTROLLER_BUSY: Status = Status::command_specific(0x81);
    pub const INVALID_PARAMETERS: Status = Status::command_specific(0x82).no_retry();
    pub const INVALID_HOST: Status = Status::command_specific(0x84).no_retry();
}

/// Bytes of the Connect command's data.
pub const CONNECT_DATA_BYTES: usize = 1024;
/// The controller ID a host asks for when any will do (dynamic controller model).
pub const CNTLID_DYNAMIC: u16 = 0xFFFF;

/// Byte offsets that a Connect "invalid parameters" response names (DW0 IPO), in the command
/// (`IATTR` 0) or in its data (`IATTR` 1).
pub mod connect_offset {
    pub const SQE_QID: u16 = 42;
    pub const SQE_SQSIZE: u16 = 44;
    pub const DATA_CNTLID: u16 = 16;
    pub const DATA_SUBNQN: u16 = 256;
    pub const DATA_HOSTNQN: u16 = 512;
}

/// The fields of a Connect command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectCommand {
    pub recfmt: u16,
    pub qid: u16,
    /// Submission queue size, 0's based.
    pub sqsize: u16,
    pub cattr: u8,
    /// Keep alive timeout, milliseconds (0: none).
    pub kato_ms: u32,
}

impl ConnectCommand {
    pub fn decode(command: &Command) -> ConnectCommand {
        ConnectCommand {
            recfmt: (command.cdw10 & 0xFFFF) as u16,
            qid: (command.cdw10 >> 16) as u16,
            sqsize: (command.cdw11 & 0xFFFF) as u16,
            cattr: (command.cdw11 >> 16) as u8,
            kato_ms: command.cdw12,
        }
    }

    /// The capsule's command, its data to follow in the capsule.
    pub fn encode(&self, cid: u16) -> Command {
        let mut command = Command::new(admin_opcode::FABRICS, cid);
        command.nsid = u32::from(fctype::CONNECT);
        command.sgl = SglDescriptor::in_capsule(CONNECT_DATA_BYTES as u32);
        command.cdw10 = u32::from(self.recfmt) | (u32::from(self.qid) << 16);
        command.cdw11 = u32::from(self.sqsize) | (u32::from(self.cattr) << 16);
        command.cdw12 = self.kato_ms;
        command
    }

    /// CATTR bit 2: the host disables SQ flow control (SQHD is then reserved, and a C2HData
    /// PDU may carry SUCCESS in place of a response).
    pub fn sq_flow_control_disabled(&self) -> bool {
        self.cattr & (1 << 2) != 0
    }
}

/// The Connect command's data (NVMe-oF 1.1 Figure 20).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectData {
    pub host_id: [u8; 16],
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

/// Why Connect data cannot be used: the byte offset of the bad field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidConnectData {
    pub offset: u16,
}

impl ConnectData {
    /// Decodes and checks the NQNs: each NUL-terminated within its 256-byte field, UTF-8.
    /// An empty host NQN is taken (SPDK's host sends one unless told otherwise, and SPDK's
    /// target admits it); only an allow-any-host subsystem lets it in.
    pub fn decode(bytes: &[u8; CONNECT_DATA_BYTES]) -> Result<ConnectData, InvalidConnectData> {
        let nqn = |at: usize| -> Result<String, InvalidConnectData> {
            let field = &bytes[at..at + 256];
            let offset = InvalidConnectData { offset: at as u16 }; // < 1024
            let end = field.iter().position(|&b| b == 0).ok_or(offset)?;
            if end > NQN_BYTES_MAX {
                return Err(offset);
            }
            String::from_utf8(field[..end].to_vec()).map_err(|_| offset)
        };
        let mut host_id = [0u8; 16];
        host_id.copy_from_slice(&bytes[0..16]);
        Ok(ConnectData {
            host_id,
            cntlid: get_u16(bytes, 16),
            subnqn: nqn(256)?,
            hostnqn: nqn(512)?,
        })
    }

    pub fn encode(&self) -> [u8; CONNECT_DATA_BYTES] {
        let mut bytes = [0u8; CONNECT_DATA_BYTES];
        bytes[0..16].copy_from_slice(&self.host_id);
        put_u16(&mut bytes, 16, self.cntlid);
        put_padded(&mut bytes[256..256 + NQN_BYTES_MAX], self.subnqn.as_bytes(), 0);
        put_padded(&mut bytes[512..512 + NQN_BYTES_MAX], self.hostnqn.as_bytes(), 0);
        bytes
    }

    /// Text of an NQN field as sent, for logs (lossy, padding removed).
    pub fn field_text(bytes: &[u8; CONNECT_DATA_BYTES], at: usize) -> String {
        padded_text(&bytes[at..at + 256])
    }
}

/// DW0 of a successful Connect response: the controller ID (AUTHREQ 0: no authentication).
pub fn connect_success_dw0(cntlid: u16) -> u32 {
    u32::from(cntlid)
}

/// DW0 of a Connect "invalid parameters" response: IPO in bits 15:0, IATTR in 23:16 (1: the
/// offset is in the data, 0: in the command).
pub fn connect_invalid_dw0(offset: u16, in_data: bool) -> u32 {
    u32::from(offset) | (u32::from(in_data) << 16)
}

/// A Property Get or Set: which register, its width and (Set) the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertyAccess {
    /// Byte offset of the register (CAP 0x0, VS 0x8, CC 0x14, CSTS 0x1C...).
    pub offset: u32,
    /// 8-byte access (ATTRIB bits 2:0 = 1) or 4-byte (0).
    pub eight_bytes: bool,
    pub value: u64,
}

impl PropertyAccess {
    pub fn decode(command: &Command) -> PropertyAccess {
        PropertyAccess {
            eight_bytes: command.cdw10 & 0x7 == 1,
            offset: command.cdw11,
            value: u64::from(command.cdw12) | (u64::from(command.cdw13) << 32),
        }
    }

    pub fn encode_get(&self, cid: u16) -> Command {
        let mut command = Command::new(admin_opcode::FABRICS, cid);
        command.nsid = u32::from(fctype::PROPERTY_GET);
        command.cdw10 = u32::from(self.eight_bytes);
        command.cdw11 = self.offset;
        command
    }

    pub fn encode_set(&self, cid: u16) -> Command {
        let mut command = self.encode_get(cid);
        command.nsid = u32::from(fctype::PROPERTY_SET);
        command.cdw12 = self.value as u32;
        command.cdw13 = (self.value >> 32) as u32;
        command
    }
}

/// Controller property offsets (NVMe Base 2.0 Figure 33).
pub mod property {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
    pub const NSSR: u32 = 0x20;
}

/// Controller Capabilities (CAP) as fabrics controllers report them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Maximum queue entries, 0's based.
    pub mqes: u16,
    /// Worst-case time to become ready or to shut down, in 500 ms units.
    pub timeout_500ms: u8,
}

impl Capabilities {
    /// MQES 15:0, CQR (16, required for fabrics), TO 31:24, DSTRD 0, CSS bit 37 (NVM command
    /// set), MPSMIN = MPSMAX = 0 (4 KiB pages).
    pub fn to_register(self) -> u64 {
        u64::from(self.mqes) | (1 << 16) | (u64::from(self.timeout_500ms) << 24) | (1 << 37)
    }

    pub fn from_register(value: u64) -> Capabilities {
        Capabilities { mqes: (value & 0xFFFF) as u16, timeout_500ms: (value >> 24) as u8 }
    }
}

/// The version register value for `major.minor.tertiary`.
pub const fn version(major: u16, minor: u8, tertiary: u8) -> u32 {
    ((major as u32) << 16) | ((minor as u32) << 8) | tertiary as u32
}

/// Controller Configuration (CC).
pub mod cc {
    pub const ENABLE: u32 = 1 << 0;
    /// Shutdown notification, bits 15:14 (01b normal, 10b abrupt).
    pub const SHN_SHIFT: u32 = 14;
    pub const SHN_MASK: u32 = 0x3 << SHN_SHIFT;
    pub const IOSQES_SHIFT: u32 = 16;
    pub const IOCQES_SHIFT: u32 = 20;
}

/// Controller Status (CSTS).
pub mod csts {
    pub const READY: u32 = 1 << 0;
    pub const FATAL: u32 = 1 << 1;
    /// Shutdown status, bits 3:2.
    pub const SHST_OCCURRING: u32 = 0x1 << 2;
    pub const SHST_COMPLETE: u32 = 0x2 << 2;
    pub const SHST_MASK: u32 = 0x3 << 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_command_fields_sit_at_their_offsets() {
        let connect =
            ConnectCommand { recfmt: 0, qid: 3, sqsize: 127, cattr: 1 << 2, kato_ms: 5000 };
        let bytes = connect.encode(9).encode();
        assert_eq!(bytes[0], 0x7F, "opcode");
        assert_eq!(bytes[4], 0x01, "fctype @4");
        assert_eq!(bytes[39], 0x01, "in-capsule SGL");
        assert_eq!(&bytes[36 - 4..36], &[0x00, 0x04, 0, 0], "SGL length 1024 @32");
        assert_eq!(&bytes[40..42], &[0, 0], "recfmt @40");
        assert_eq!(&bytes[42..44], &[3, 0], "qid @42");
        assert_eq!(&bytes[44..46], &[127, 0], "sqsize @44");
        assert_eq!(bytes[46], 0x04, "cattr @46");
        assert_eq!(&bytes[48..52], &5000u32.to_le_bytes(), "kato @48");
        let decoded = ConnectCommand::decode(&Command::decode(&bytes));
        assert_eq!(decoded, connect);
        assert!(decoded.sq_flow_control_disabled());
    }

    #[test]
    fn connect_data_layout_and_checks() {
        let data = ConnectData {
            host_id: [7; 16],
            cntlid: 0xFFFF,
            subnqn: "nqn.2016-06.io.spdk:cnode1".into(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:1".into(),
        };
        let bytes = data.encode();
        assert_eq!(bytes[0], 7, "hostid @0");
        assert_eq!(&bytes[16..18], &[0xFF, 0xFF], "cntlid @16");
        assert_eq!(&bytes[256..259], b"nqn", "subnqn @256");
        assert_eq!(&bytes[512..515], b"nqn", "hostnqn @512");
        assert_eq!(ConnectData::decode(&bytes), Ok(data));
        let mut unterminated = bytes;
        unterminated[512..768].fill(b'a');
        assert_eq!(ConnectData::decode(&unterminated), Err(InvalidConnectData { offset: 512 }));
        let mut long = bytes;
        long[512..512 + 230].fill(b'a');
        assert_eq!(ConnectData::decode(&long), Err(InvalidConnectData { offset: 512 }));
    }

    #[test]
    fn property_access_fields() {
        let set = PropertyAccess { offset: property::CC, eight_bytes: false, value: 0x46_0001 };
        let bytes = set.encode_set(1).encode();
        assert_eq!(bytes[4], 0x00, "fctype property set");
        assert_eq!(bytes[40], 0, "attrib @40: 4 bytes");
        assert_eq!(&bytes[44..48], &[0x14, 0, 0, 0], "ofst @44");
        assert_eq!(&bytes[48..52], &[0x01, 0, 0x46, 0], "value @48");
        assert_eq!(PropertyAccess::decode(&Command::decode(&bytes)), set);
        let get = PropertyAccess { offset: property::CAP, eight_bytes: true, value: 0 };
        let bytes = get.encode_get(2).encode();
        assert_eq!((bytes[4], bytes[40]), (0x04, 1));
    }

    #[test]
    fn registers() {
        let cap = Capabilities { mqes: 127, timeout_500ms: 30 }.to_register();
        assert_eq!(cap & 0xFFFF, 127, "MQES 15:0");
        assert_eq!((cap >> 16) & 1, 1, "CQR");
        assert_eq!((cap >> 24) & 0xFF, 30, "TO 31:24");
        assert_eq!((cap >> 37) & 1, 1, "CSS NVM");
        assert_eq!((cap >> 48) & 0xFF, 0, "MPSMIN, MPSMAX: 4 KiB");
        assert_eq!(Capabilities::from_register(cap).mqes, 127);
        assert_eq!(version(1, 3, 0), 0x0001_0300);
        assert_eq!(cc::SHN_MASK, 0xC000);
        assert_eq!(csts::SHST_COMPLETE, 0x8);
        assert_eq!(connect_invalid_dw0(512, true), 0x1_0200);
    }
}
