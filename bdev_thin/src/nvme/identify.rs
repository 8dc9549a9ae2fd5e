//! Identify data structures (NVMe Base 2.0 §5.17.2, NVM Command Set 1.0 §4.1.5): the
//! controller (CNS 01h), a namespace (00h), the active namespace list (02h), the namespace
//! identification descriptors (03h) and the NVM command set's controller structure (06h, where
//! DMRL, DMRSL and WZSL live). Each is 4096 bytes; fields not named here are zero.

use super::{get_u16, get_u32, get_u64, padded_text, put_padded, put_u16, put_u32, put_u64};

pub const IDENTIFY_BYTES: usize = 4096;
/// Entries of the active namespace list (CNS 02h): 1024 NSIDs fill the page.
pub const ACTIVE_NAMESPACES_PER_PAGE: usize = IDENTIFY_BYTES / 4;

/// Controller or Namespace Structure values (CDW10 bits 7:0).
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    pub const NAMESPACE_DESCRIPTORS: u8 = 0x03;
    pub const NAMESPACE_COMMAND_SET: u8 = 0x05;
    pub const CONTROLLER_COMMAND_SET: u8 = 0x06;
    pub const ACTIVE_NAMESPACES_COMMAND_SET: u8 = 0x07;
}

/// The NVM command set's identifier (CSI).
pub const CSI_NVM: u8 = 0x00;

/// Controller types (CNTRLTYPE, byte 111).
pub const CONTROLLER_TYPE_IO: u8 = 1;
pub const CONTROLLER_TYPE_DISCOVERY: u8 = 2;

/// Who the controller says it is: PCI-style IDs, strings, the subsystem's NQN.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControllerIdentity {
    pub vid: u16,
    pub ssvid: u16,
    /// Serial number, model number, firmware revision: ASCII, space-padded on the wire.
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub ieee_oui: [u8; 3],
    pub subnqn: String,
}

/// What the controller supports: optional commands, events, log pages, features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControllerSupport {
    pub cmic: u8,
    pub oaes: u32,
    pub ctratt: u32,
    pub oacs: u16,
    /// Abort Command Limit, 0's based.
    pub acl: u8,
    /// Asynchronous Event Request Limit, 0's based.
    pub aerl: u8,
    pub frmw: u8,
    pub lpa: u8,
    /// Error Log Page Entries, 0's based.
    pub elpe: u8,
    /// Keep Alive Support: timer granularity in 100 ms units (0: no keep alive).
    pub kas: u16,
    pub oncs: u16,
    pub fuses: u16,
    pub vwc: u8,
    pub sgls: u32,
}

/// Sizes and limits: queues, transfers, capsules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControllerLimits {
    /// Maximum data transfer size: a power of two in units of CAP.MPSMIN (4 KiB); 0: none.
    pub mdts: u8,
    pub rab: u8,
    pub sqes: u8,
    pub cqes: u8,
    pub maxcmd: u16,
    /// Number of namespaces: the largest NSID.
    pub nn: u32,
    pub wctemp: u16,
    pub cctemp: u16,
    /// I/O queue command capsule size, in 16-byte units (fabrics).
    pub ioccsz: u32,
    pub iorcsz: u32,
    pub icdoff: u16,
    pub msdbd: u8,
}

/// Identify Controller (CNS 01h).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentifyController {
    pub identity: ControllerIdentity,
    pub support: ControllerSupport,
    pub limits: ControllerLimits,
    pub cntlid: u16,
    pub version: u32,
    pub controller_type: u8,
}

/// Bits of ONCS (optional NVM commands).
pub mod oncs {
    pub const DATASET_MANAGEMENT: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
}

/// Bits of OAES (asynchronous events the controller sends).
pub mod oaes {
    pub const NAMESPACE_ATTRIBUTE: u32 = 1 << 8;
    pub const DISCOVERY_LOG_CHANGE: u32 = 1 << 31;
}

/// VWC: a volatile write cache is present (bit 0); flush with NSID FFFFFFFFh is not supported
/// (bits 2:1 = 10b), so hosts flush each namespace.
pub const VWC_PRESENT_NO_BROADCAST: u8 = 0x05;

/// SGLS: SGLs supported, no dword alignment needed (bits 1:0 = 01b).
pub const SGLS_SUPPORTED: u32 = 0x1;

impl IdentifyController {
    pub fn encode(&self) -> Box<[u8; IDENTIFY_BYTES]> {
        let mut page = Box::new([0u8; IDENTIFY_BYTES]);
        let b = &mut page[..];
        let (identity, support, limits) = (&self.identity, &self.support, &self.limits);
        put_u16(b, 0, identity.vid);
        put_u16(b, 2, identity.ssvid);
        put_padded(&mut b[4..24], identity.serial.as_bytes(), b' ');
        put_padded(&mut b[24..64], identity.model.as_bytes(), b' ');
        put_padded(&mut b[64..72], identity.firmware.as_bytes(), b' ');
        b[72] = limits.rab;
        b[73..76].copy_from_slice(&identity.ieee_oui);
        b[76] = support.cmic;
        b[77] = limits.mdts;
        put_u16(b, 78, self.cntlid);
        put_u32(b, 80, self.version);
        put_u32(b, 92, support.oaes);
        put_u32(b, 96, support.ctratt);
        b[111] = self.controller_type;
        put_u16(b, 256, support.oacs);
        b[258] = support.acl;
        b[259] = support.aerl;
        b[260] = support.frmw;
        b[261] = support.lpa;
        b[262] = support.elpe;
        put_u16(b, 266, limits.wctemp);
        put_u16(b, 268, limits.cctemp);
        put_u16(b, 320, support.kas);
        b[512] = limits.sqes;
        b[513] = limits.cqes;
        put_u16(b, 514, limits.maxcmd);
        put_u32(b, 516, limits.nn);
        put_u16(b, 520, support.oncs);
        put_u16(b, 522, support.fuses);
        b[525] = support.vwc;
        put_u32(b, 536, support.sgls);
        put_padded(&mut b[768..1024], identity.subnqn.as_bytes(), 0);
        put_u32(b, 1792, limits.ioccsz);
        put_u32(b, 1796, limits.iorcsz);
        put_u16(b, 1800, limits.icdoff);
        b[1803] = limits.msdbd;
        page
    }

    pub fn decode(b: &[u8; IDENTIFY_BYTES]) -> IdentifyController {
        let mut ieee_oui = [0u8; 3];
        ieee_oui.copy_from_slice(&b[73..76]);
        IdentifyController {
            identity: ControllerIdentity {
                vid: get_u16(b, 0),
                ssvid: get_u16(b, 2),
                serial: padded_text(&b[4..24]),
                model: padded_text(&b[24..64]),
                firmware: padded_text(&b[64..72]),
                ieee_oui,
                subnqn: padded_text(&b[768..1024]),
            },
            support: ControllerSupport {
                cmic: b[76],
                oaes: get_u32(b, 92),
                ctratt: get_u32(b, 96),
                oacs: get_u16(b, 256),
                acl: b[258],
                aerl: b[259],
                frmw: b[260],
                lpa: b[261],
                elpe: b[262],
                kas: get_u16(b, 320),
                oncs: get_u16(b, 520),
                fuses: get_u16(b, 522),
                vwc: b[525],
                sgls: get_u32(b, 536),
            },
            limits: ControllerLimits {
                mdts: b[77],
                rab: b[72],
                sqes: b[512],
                cqes: b[513],
                maxcmd: get_u16(b, 514),
                nn: get_u32(b, 516),
                wctemp: get_u16(b, 266),
                cctemp: get_u16(b, 268),
                ioccsz: get_u32(b, 1792),
                iorcsz: get_u32(b, 1796),
                icdoff: get_u16(b, 1800),
                msdbd: b[1803],
            },
            cntlid: get_u16(b, 78),
            version: get_u32(b, 80),
            controller_type: b[111],
        }
    }
}

/// Preferred and optimal sizes (NSFEAT.OPTPERF), in logical blocks, 0's based on the wire;
/// here as counts of blocks (0: not reported).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceGranularity {
    pub write_granularity_blocks: u32,
    pub write_alignment_blocks: u32,
    pub deallocate_granularity_blocks: u32,
    pub deallocate_alignment_blocks: u32,
    pub optimal_write_blocks: u32,
}

/// Identify Namespace (CNS 00h), one LBA format (index 0), no metadata.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentifyNamespace {
    pub size_blocks: u64,
    pub capacity_blocks: u64,
    pub utilization_blocks: u64,
    /// log2 of the logical block size (LBAF0.LBADS).
    pub lba_data_size_log2: u8,
    /// Deallocate Logical Block Features (DLFEAT): bits 2:0 = 001b, deallocated blocks read
    /// zeroes; bit 3, Write Zeroes honours DEAC.
    pub dlfeat: u8,
    pub nmic: u8,
    /// Reported (with NSFEAT.OPTPERF) when any count is non-zero.
    pub granularity: NamespaceGranularity,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
}

/// NSFEAT bit 4: NPWG, NPWA, NPDG, NPDA and NOWS are valid.
pub const NSFEAT_OPTPERF: u8 = 1 << 4;
/// DLFEAT: deallocated blocks read zeroes (bits 2:0 = 001b) and Write Zeroes may deallocate.
pub const DLFEAT_READS_ZEROES: u8 = 0x01;
pub const DLFEAT_WRITE_ZEROES_DEALLOCATES: u8 = 0x08;

impl IdentifyNamespace {
    pub fn encode(&self) -> Box<[u8; IDENTIFY_BYTES]> {
        let mut page = Box::new([0u8; IDENTIFY_BYTES]);
        let b = &mut page[..];
        put_u64(b, 0, self.size_blocks);
        put_u64(b, 8, self.capacity_blocks);
        put_u64(b, 16, self.utilization_blocks);
        let g = &self.granularity;
        let zero_based = |count: u32| count.saturating_sub(1).min(u32::from(u16::MAX)) as u16;
        if *g != NamespaceGranularity::default() {
            b[24] = NSFEAT_OPTPERF;
            put_u16(b, 64, zero_based(g.write_granularity_blocks));
            put_u16(b, 66, zero_based(g.write_alignment_blocks));
            put_u16(b, 68, zero_based(g.deallocate_granularity_blocks));
            put_u16(b, 70, zero_based(g.deallocate_alignment_blocks));
            put_u16(b, 72, zero_based(g.optimal_write_blocks));
        }
        b[25] = 0; // NLBAF: one format, 0's based
        b[26] = 0; // FLBAS: format 0, no extended metadata
        b[30] = self.nmic;
        b[33] = self.dlfeat;
        b[104..120].copy_from_slice(&self.nguid);
        b[120..128].copy_from_slice(&self.eui64);
        put_u16(b, 128, 0); // LBAF0.MS: no metadata
        b[130] = self.lba_data_size_log2;
        page
    }

    pub fn decode(b: &[u8; IDENTIFY_BYTES]) -> IdentifyNamespace {
        let count = |at: usize| u32::from(get_u16(b, at)) + 1;
        let granularity = if b[24] & NSFEAT_OPTPERF != 0 {
            NamespaceGranularity {
                write_granularity_blocks: count(64),
                write_alignment_blocks: count(66),
                deallocate_granularity_blocks: count(68),
                deallocate_alignment_blocks: count(70),
                optimal_write_blocks: count(72),
            }
        } else {
            NamespaceGranularity::default()
        };
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&b[104..120]);
        let mut eui64 = [0u8; 8];
        eui64.copy_from_slice(&b[120..128]);
        let format = usize::from(b[26] & 0xF);
        IdentifyNamespace {
            size_blocks: get_u64(b, 0),
            capacity_blocks: get_u64(b, 8),
            utilization_blocks: get_u64(b, 16),
            lba_data_size_log2: b[128 + 4 * format + 2],
            dlfeat: b[33],
            nmic: b[30],
            granularity,
            nguid,
            eui64,
        }
    }
}

/// The active namespace list (CNS 02h): NSIDs above `after`, ascending, zero-terminated.
pub fn encode_active_namespaces(
    nsids: impl IntoIterator<Item = u32>,
    after: u32,
) -> Box<[u8; IDENTIFY_BYTES]> {
    let mut page = Box::new([0u8; IDENTIFY_BYTES]);
    let listed = nsids.into_iter().filter(|&nsid| nsid > after).take(ACTIVE_NAMESPACES_PER_PAGE);
    for (index, nsid) in listed.enumerate() {
        put_u32(&mut page[..], 4 * index, nsid);
    }
    page
}

pub fn decode_active_namespaces(page: &[u8; IDENTIFY_BYTES]) -> Vec<u32> {
    (0..ACTIVE_NAMESPACES_PER_PAGE)
        .map(|index| get_u32(page, 4 * index))
        .take_while(|&nsid| nsid != 0)
        .collect()
}

/// A namespace identification descriptor (CNS 03h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceId {
    Eui64([u8; 8]),
    Nguid([u8; 16]),
    Uuid([u8; 16]),
    CommandSet(u8),
}

impl NamespaceId {
    fn type_and_bytes(&self) -> (u8, &[u8]) {
        match self {
            NamespaceId::Eui64(id) => (1, id),
            NamespaceId::Nguid(id) => (2, id),
            NamespaceId::Uuid(id) => (3, id),
            NamespaceId::CommandSet(csi) => (4, std::slice::from_ref(csi)),
        }
    }
}

/// Packs descriptors (NIDT, NIDL, 2 reserved bytes, NID) back to back; a zero NIDT ends them.
pub fn encode_namespace_descriptors(ids: &[NamespaceId]) -> Box<[u8; IDENTIFY_BYTES]> {
    let mut page = Box::new([0u8; IDENTIFY_BYTES]);
    let mut at = 0;
    for id in ids {
        let (kind, bytes) = id.type_and_bytes();
        if at + 4 + bytes.len() > IDENTIFY_BYTES {
            break;
        }
        page[at] = kind;
        page[at + 1] = bytes.len() as u8; // at most 16
        page[at + 4..at + 4 + bytes.len()].copy_from_slice(bytes);
        at += 4 + bytes.len();
    }
    page
}

pub fn decode_namespace_descriptors(page: &[u8; IDENTIFY_BYTES]) -> Vec<NamespaceId> {
    let mut ids = Vec::new();
    let mut at = 0;
    while at + 4 <= IDENTIFY_BYTES && page[at] != 0 {
        let (kind, len) = (page[at], usize::from(page[at + 1]));
        let Some(bytes) = page.get(at + 4..at + 4 + len) else { break };
        let id = match (kind, len) {
            (1, 8) => bytes.try_into().ok().map(NamespaceId::Eui64),
            (2, 16) => bytes.try_into().ok().map(NamespaceId::Nguid),
            (3, 16) => bytes.try_into().ok().map(NamespaceId::Uuid),
            (4, 1) => Some(NamespaceId::CommandSet(bytes[0])),
            _ => None,
        };
        ids.extend(id);
        at += 4 + len;
    }
    ids
}

/// The NVM command set's I/O Command Set specific Identify Controller structure (CNS 06h,
/// CSI 00h; NVM Command Set 1.0 Figure 97).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentifyControllerNvm {
    /// Verify Size Limit (power of two, 4 KiB units; 0: none).
    pub vsl: u8,
    /// Write Zeroes Size Limit (power of two, in units of CAP.MPSMIN; 0: none).
    pub wzsl: u8,
    /// Write Uncorrectable Size Limit.
    pub wusl: u8,
    /// Dataset Management Ranges Limit (0: not reported).
    pub dmrl: u8,
    /// Dataset Management Range Size Limit, logical blocks (0: not reported).
    pub dmrsl: u32,
    /// Dataset Management Size Limit, logical blocks (0: not reported).
    pub dmsl: u64,
}

impl IdentifyControllerNvm {
    pub fn encode(&self) -> Box<[u8; IDENTIFY_BYTES]> {
        let mut page = Box::new([0u8; IDENTIFY_BYTES]);
        page[0] = self.vsl;
        page[1] = self.wzsl;
        page[2] = self.wusl;
        page[3] = self.dmrl;
        put_u32(&mut page[..], 4, self.dmrsl);
        put_u64(&mut page[..], 8, self.dmsl);
        page
    }

    pub fn decode(page: &[u8; IDENTIFY_BYTES]) -> IdentifyControllerNvm {
        IdentifyControllerNvm {
            vsl: page[0],
            wzsl: page[1],
            wusl: page[2],
            dmrl: page[3],
            dmrsl: get_u32(page, 4),
            dmsl: get_u64(page, 8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> IdentifyController {
        IdentifyController {
            identity: ControllerIdentity {
                vid: 0x1B36,
                ssvid: 0x1AF4,
                serial: "SN0001".into(),
                model: "bdev_thin Controller".into(),
                firmware: "0.1.0".into(),
                ieee_oui: [1, 2, 3],
                subnqn: "nqn.2016-06.io.spdk:cnode1".into(),
            },
            support: ControllerSupport {
                cmic: 0,
                oaes: oaes::NAMESPACE_ATTRIBUTE,
                ctratt: 0,
                oacs: 0,
                acl: 3,
                aerl: 3,
                frmw: 3,
                lpa: 0,
                elpe: 0,
                kas: 100,
                oncs: oncs::DATASET_MANAGEMENT | oncs::WRITE_ZEROES,
                fuses: 0,
                vwc: VWC_PRESENT_NO_BROADCAST,
                sgls: SGLS_SUPPORTED,
            },
            limits: ControllerLimits {
                mdts: 5,
                rab: 6,
                sqes: 0x66,
                cqes: 0x44,
                maxcmd: 128,
                nn: 32,
                wctemp: 0x157,
                cctemp: 0x175,
                ioccsz: 260,
                iorcsz: 1,
                icdoff: 0,
                msdbd: 1,
            },
            cntlid: 0x0102,
            version: 0x0001_0300,
            controller_type: CONTROLLER_TYPE_IO,
        }
    }

    #[test]
    fn identify_controller_fields_sit_at_their_offsets() {
        let c = controller();
        let b = c.encode();
        assert_eq!(&b[0..2], &[0x36, 0x1B], "vid @0");
        assert_eq!(&b[4..10], b"SN0001", "sn @4");
        assert_eq!(b[23], b' ', "sn space-padded to 20 bytes");
        assert_eq!(&b[24..33], b"bdev_thin", "mn @24");
        assert_eq!(b[63], b' ', "mn space-padded to 40 bytes");
        assert_eq!(&b[64..69], b"0.1.0", "fr @64");
        assert_eq!(b[72], 6, "rab @72");
        assert_eq!(&b[73..76], &[1, 2, 3], "ieee @73");
        assert_eq!(b[77], 5, "mdts @77");
        assert_eq!(&b[78..80], &[2, 1], "cntlid @78");
        assert_eq!(&b[80..84], &[0, 3, 1, 0], "ver @80");
        assert_eq!(&b[92..96], &[0, 1, 0, 0], "oaes @92: namespace attribute notices");
        assert_eq!(b[111], 1, "cntrltype @111");
        assert_eq!((b[258], b[259]), (3, 3), "acl @258, aerl @259");
        assert_eq!(&b[266..270], &[0x57, 0x01, 0x75, 0x01], "wctemp @266, cctemp @268");
        assert_eq!(&b[320..322], &[100, 0], "kas @320");
        assert_eq!((b[512], b[513]), (0x66, 0x44), "sqes @512, cqes @513");
        assert_eq!(&b[514..516], &[128, 0], "maxcmd @514");
        assert_eq!(&b[516..520], &[32, 0, 0, 0], "nn @516");
        assert_eq!(&b[520..522], &[0x0C, 0], "oncs @520: DSM and Write Zeroes");
        assert_eq!(b[525], 0x05, "vwc @525");
        assert_eq!(&b[536..540], &[1, 0, 0, 0], "sgls @536");
        assert_eq!(&b[768..771], b"nqn", "subnqn @768");
        assert_eq!(b[768 + 26], 0, "subnqn NUL-padded");
        assert_eq!(&b[1792..1796], &[4, 1, 0, 0], "ioccsz @1792");
        assert_eq!(&b[1796..1800], &[1, 0, 0, 0], "iorcsz @1796");
        assert_eq!(&b[1800..1802], &[0, 0], "icdoff @1800");
        assert_eq!(b[1803], 1, "msdbd @1803");
        assert_eq!(IdentifyController::decode(&b), c);
    }

    #[test]
    fn identify_namespace_fields_sit_at_their_offsets() {
        let ns = IdentifyNamespace {
            size_blocks: 0x10_0000,
            capacity_blocks: 0x10_0000,
            utilization_blocks: 0x10_0000,
            lba_data_size_log2: 12,
            dlfeat: DLFEAT_READS_ZEROES | DLFEAT_WRITE_ZEROES_DEALLOCATES,
            nmic: 1,
            granularity: NamespaceGranularity {
                write_granularity_blocks: 16,
                write_alignment_blocks: 16,
                deallocate_granularity_blocks: 16,
                deallocate_alignment_blocks: 16,
                optimal_write_blocks: 16,
            },
            nguid: [0xAB; 16],
            eui64: [0xCD; 8],
        };
        let b = ns.encode();
        assert_eq!(&b[0..8], &0x10_0000u64.to_le_bytes(), "nsze @0");
        assert_eq!(&b[8..16], &0x10_0000u64.to_le_bytes(), "ncap @8");
        assert_eq!(&b[16..24], &0x10_0000u64.to_le_bytes(), "nuse @16");
        assert_eq!(b[24], 0x10, "nsfeat @24: OPTPERF");
        assert_eq!((b[25], b[26]), (0, 0), "nlbaf @25, flbas @26");
        assert_eq!(b[30], 1, "nmic @30");
        assert_eq!(b[33], 0x09, "dlfeat @33");
        for (at, name) in [(64, "npwg"), (66, "npwa"), (68, "npdg"), (70, "npda"), (72, "nows")] {
            assert_eq!(&b[at..at + 2], &[15, 0], "{name} @{at}: 16 blocks, 0's based");
        }
        assert_eq!(b[104], 0xAB, "nguid @104");
        assert_eq!(b[120], 0xCD, "eui64 @120");
        assert_eq!(&b[128..131], &[0, 0, 12], "lbaf0 @128: ms 0, lbads 12");
        assert_eq!(IdentifyNamespace::decode(&b), ns);
        let plain = IdentifyNamespace { granularity: NamespaceGranularity::default(), ..ns };
        let b = plain.encode();
        assert_eq!((b[24], b[72]), (0, 0), "no OPTPERF, no sizes");
    }

    #[test]
    fn lists_and_descriptors() {
        let page = encode_active_namespaces([1, 2, 5, 9], 2);
        assert_eq!(&page[0..12], &[5, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_active_namespaces(&page), vec![5, 9]);
        let ids = [
            NamespaceId::Eui64([1; 8]),
            NamespaceId::Nguid([2; 16]),
            NamespaceId::Uuid([3; 16]),
            NamespaceId::CommandSet(CSI_NVM),
        ];
        let page = encode_namespace_descriptors(&ids);
        assert_eq!(&page[0..4], &[1, 8, 0, 0], "EUI64 header");
        assert_eq!(&page[12..16], &[2, 16, 0, 0], "NGUID header, no padding");
        assert_eq!(&page[32..36], &[3, 16, 0, 0], "UUID header");
        assert_eq!(&page[52..57], &[4, 1, 0, 0, 0], "CSI header and NVM");
        assert_eq!(page[57], 0, "zero NIDT ends the list");
        assert_eq!(decode_namespace_descriptors(&page), ids.to_vec());
    }

    #[test]
    fn command_set_controller_structure() {
        let nvm =
            IdentifyControllerNvm { vsl: 0, wzsl: 12, wusl: 0, dmrl: 0, dmrsl: 0x20_0000, dmsl: 7 };
        let b = nvm.encode();
        assert_eq!(&b[0..4], &[0, 12, 0, 0], "vsl @0, wzsl @1, wusl @2, dmrl @3");
        assert_eq!(&b[4..8], &0x20_0000u32.to_le_bytes(), "dmrsl @4");
        assert_eq!(&b[8..16], &7u64.to_le_bytes(), "dmsl @8");
        assert_eq!(IdentifyControllerNvm::decode(&b), nvm);
    }
}
