//! Log pages (NVMe Base 2.0 §5.16.1, NVMe-oF 1.1 §5.3): error information, SMART / health,
//! firmware slots, the changed namespace list and the discovery log. A page is built whole and
//! the host reads any window of it (offset and length from Get Log Page).

use super::{get_u16, get_u32, get_u64, padded_text, put_padded, put_u16, put_u32, put_u64};

/// Log page identifiers.
pub mod log_id {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NAMESPACES: u8 = 0x04;
    pub const DISCOVERY: u8 = 0x70;
}

pub const ERROR_ENTRY_BYTES: usize = 64;
pub const SMART_BYTES: usize = 512;
pub const FIRMWARE_SLOT_BYTES: usize = 512;
pub const CHANGED_NAMESPACES_BYTES: usize = 4096;
/// NSIDs one changed namespace list holds; past it the list says "more than 1024".
pub const CHANGED_NAMESPACES_MAX: usize = CHANGED_NAMESPACES_BYTES / 4;
pub const DISCOVERY_HEADER_BYTES: usize = 1024;
pub const DISCOVERY_ENTRY_BYTES: usize = 1024;

/// One error information entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorEntry {
    pub error_count: u64,
    pub sqid: u16,
    pub cid: u16,
    /// The completion's status field (phase tag in bit 0).
    pub status_field: u16,
    pub parameter_location: u16,
    pub lba: u64,
    pub nsid: u32,
}

impl ErrorEntry {
    pub fn encode(&self) -> [u8; ERROR_ENTRY_BYTES] {
        let mut b = [0u8; ERROR_ENTRY_BYTES];
        put_u64(&mut b, 0, self.error_count);
        put_u16(&mut b, 8, self.sqid);
        put_u16(&mut b, 10, self.cid);
        put_u16(&mut b, 12, self.status_field);
        put_u16(&mut b, 14, self.parameter_location);
        put_u64(&mut b, 16, self.lba);
        put_u32(&mut b, 24, self.nsid);
        b
    }

    pub fn decode(b: &[u8; ERROR_ENTRY_BYTES]) -> ErrorEntry {
        ErrorEntry {
            error_count: get_u64(b, 0),
            sqid: get_u16(b, 8),
            cid: get_u16(b, 10),
            status_field: get_u16(b, 12),
            parameter_location: get_u16(b, 14),
            lba: get_u64(b, 16),
            nsid: get_u32(b, 24),
        }
    }
}

/// SMART / Health Information: what a controller over bdevs can say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmartLog {
    pub critical_warning: u8,
    /// Composite temperature, kelvins.
    pub temperature_kelvin: u16,
    pub available_spare_percent: u8,
    pub spare_threshold_percent: u8,
    /// In units of 1000 × 512 bytes, rounded up (NVMe's definition).
    pub data_units_read: u64,
    pub data_units_written: u64,
    pub host_read_commands: u64,
    pub host_write_commands: u64,
    pub power_cycles: u64,
    pub power_on_hours: u64,
    pub unsafe_shutdowns: u64,
    pub media_errors: u64,
    pub error_log_entries: u64,
}

impl SmartLog {
    /// 128-bit counters are written as their low 64 bits (the high half stays zero).
    pub fn encode(&self) -> [u8; SMART_BYTES] {
        let mut b = [0u8; SMART_BYTES];
        b[0] = self.critical_warning;
        put_u16(&mut b, 1, self.temperature_kelvin);
        b[3] = self.available_spare_percent;
        b[4] = self.spare_threshold_percent;
        put_u64(&mut b, 32, self.data_units_read);
        put_u64(&mut b, 48, self.data_units_written);
        put_u64(&mut b, 64, self.host_read_commands);
        put_u64(&mut b, 80, self.host_write_commands);
        put_u64(&mut b, 112, self.power_cycles);
        put_u64(&mut b, 128, self.power_on_hours);
        put_u64(&mut b, 144, self.unsafe_shutdowns);
        put_u64(&mut b, 160, self.media_errors);
        put_u64(&mut b, 176, self.error_log_entries);
        b
    }

    pub fn decode(b: &[u8; SMART_BYTES]) -> SmartLog {
        SmartLog {
            critical_warning: b[0],
            temperature_kelvin: get_u16(b, 1),
            available_spare_percent: b[3],
            spare_threshold_percent: b[4],
            data_units_read: get_u64(b, 32),
            data_units_written: get_u64(b, 48),
            host_read_commands: get_u64(b, 64),
            host_write_commands: get_u64(b, 80),
            power_cycles: get_u64(b, 112),
            power_on_hours: get_u64(b, 128),
            unsafe_shutdowns: get_u64(b, 144),
            media_errors: get_u64(b, 160),
            error_log_entries: get_u64(b, 176),
        }
    }
}

/// Firmware Slot Information: slot 1 active, holding `revision`.
pub fn encode_firmware_slot(revision: &str) -> [u8; FIRMWARE_SLOT_BYTES] {
    let mut b = [0u8; FIRMWARE_SLOT_BYTES];
    b[0] = 1; // AFI: slot 1 is active
    put_padded(&mut b[8..16], revision.as_bytes(), b' ');
    b
}

/// The changed namespace list: up to 1024 NSIDs, or FFFFFFFFh first when more changed.
pub fn encode_changed_namespaces(nsids: &[u32]) -> Box<[u8; CHANGED_NAMESPACES_BYTES]> {
    let mut page = Box::new([0u8; CHANGED_NAMESPACES_BYTES]);
    if nsids.len() > CHANGED_NAMESPACES_MAX {
        put_u32(&mut page[..], 0, 0xFFFF_FFFF);
    } else {
        for (index, nsid) in nsids.iter().enumerate() {
            put_u32(&mut page[..], 4 * index, *nsid);
        }
    }
    page
}

/// Subsystem types in discovery log entries.
pub mod subtype {
    pub const REFERRAL: u8 = 1;
    pub const NVME: u8 = 2;
    pub const CURRENT_DISCOVERY: u8 = 3;
}

/// Transport and address family codes.
pub const TRTYPE_TCP: u8 = 3;
pub const ADRFAM_IPV4: u8 = 1;
pub const ADRFAM_IPV6: u8 = 2;
/// TREQ: secure channel not required (bits 1:0 = 10b).
pub const TREQ_SECURE_CHANNEL_NOT_REQUIRED: u8 = 0x2;

/// One discovery log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub port_id: u16,
    pub cntlid: u16,
    /// Admin max submission queue size.
    pub asqsz: u16,
    pub trsvcid: String,
    pub subnqn: String,
    pub traddr: String,
}

impl DiscoveryEntry {
    /// Strings are space-padded ASCII, the NQN NUL-padded; TSAS for TCP is zero (no security).
    pub fn encode(&self) -> [u8; DISCOVERY_ENTRY_BYTES] {
        let mut b = [0u8; DISCOVERY_ENTRY_BYTES];
        b[0] = self.trtype;
        b[1] = self.adrfam;
        b[2] = self.subtype;
        b[3] = self.treq;
        put_u16(&mut b, 4, self.port_id);
        put_u16(&mut b, 6, self.cntlid);
        put_u16(&mut b, 8, self.asqsz);
        put_padded(&mut b[32..64], self.trsvcid.as_bytes(), b' ');
        put_padded(&mut b[256..512], self.subnqn.as_bytes(), 0);
        put_padded(&mut b[512..768], self.traddr.as_bytes(), b' ');
        b
    }

    pub fn decode(b: &[u8; DISCOVERY_ENTRY_BYTES]) -> DiscoveryEntry {
        DiscoveryEntry {
            trtype: b[0],
            adrfam: b[1],
            subtype: b[2],
            treq: b[3],
            port_id: get_u16(b, 4),
            cntlid: get_u16(b, 6),
            asqsz: get_u16(b, 8),
            trsvcid: padded_text(&b[32..64]),
            subnqn: padded_text(&b[256..512]),
            traddr: padded_text(&b[512..768]),
        }
    }
}

/// The whole discovery log: a 1 KiB header (generation counter, record count, format 0), then
/// the entries.
pub fn encode_discovery_log(generation: u64, entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut page = vec![0u8; DISCOVERY_HEADER_BYTES + entries.len() * DISCOVERY_ENTRY_BYTES];
    put_u64(&mut page, 0, generation);
    put_u64(&mut page, 8, entries.len() as u64);
    put_u16(&mut page, 16, 0);
    for (index, entry) in entries.iter().enumerate() {
        let at = DISCOVERY_HEADER_BYTES + index * DISCOVERY_ENTRY_BYTES;
        page[at..at + DISCOVERY_ENTRY_BYTES].copy_from_slice(&entry.encode());
    }
    page
}

/// The header's (generation counter, record count).
pub fn decode_discovery_header(b: &[u8; DISCOVERY_HEADER_BYTES]) -> (u64, u64) {
    (get_u64(b, 0), get_u64(b, 8))
}

/// Asynchronous event completion DW0: type (bits 2:0), information (15:8), log page (23:16).
pub fn async_event_dw0(event_type: u8, information: u8, log_page: u8) -> u32 {
    u32::from(event_type & 0x7) | (u32::from(information) << 8) | (u32::from(log_page) << 16)
}

/// Asynchronous event types and the notices we send.
pub mod async_event {
    pub const TYPE_NOTICE: u8 = 0x2;
    pub const NOTICE_NAMESPACE_ATTRIBUTE_CHANGED: u8 = 0x00;
    pub const NOTICE_DISCOVERY_LOG_CHANGED: u8 = 0xF0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_entry_layout() {
        let entry = ErrorEntry {
            error_count: 3,
            sqid: 1,
            cid: 0x22,
            status_field: 0x0100,
            parameter_location: 0xFFFF,
            lba: 0x10,
            nsid: 1,
        };
        let b = entry.encode();
        assert_eq!((b[0], b[8], b[10], b[13]), (3, 1, 0x22, 0x01), "count, sqid, cid, status");
        assert_eq!(&b[14..16], &[0xFF, 0xFF], "parameter error location @14");
        assert_eq!((b[16], b[24]), (0x10, 1), "lba @16, nsid @24");
        assert_eq!(ErrorEntry::decode(&b), entry);
    }

    #[test]
    fn smart_layout() {
        let smart = SmartLog {
            temperature_kelvin: 300,
            available_spare_percent: 100,
            spare_threshold_percent: 10,
            data_units_read: 5,
            data_units_written: 6,
            host_read_commands: 7,
            host_write_commands: 8,
            power_on_hours: 9,
            ..SmartLog::default()
        };
        let b = smart.encode();
        assert_eq!(&b[1..3], &300u16.to_le_bytes(), "temperature @1");
        assert_eq!((b[3], b[4]), (100, 10), "spare @3, threshold @4");
        assert_eq!((b[32], b[48], b[64], b[80], b[128]), (5, 6, 7, 8, 9));
        assert_eq!(SmartLog::decode(&b), smart);
    }

    #[test]
    fn changed_namespace_list_overflows_to_all_ones() {
        let page = encode_changed_namespaces(&[3, 1]);
        assert_eq!(&page[0..12], &[3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        let many: Vec<u32> = (1..=1025).collect();
        let page = encode_changed_namespaces(&many);
        assert_eq!(&page[0..8], &[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]);
    }

    #[test]
    fn discovery_log_layout() {
        let entry = DiscoveryEntry {
            trtype: TRTYPE_TCP,
            adrfam: ADRFAM_IPV4,
            subtype: subtype::NVME,
            treq: TREQ_SECURE_CHANNEL_NOT_REQUIRED,
            port_id: 1,
            cntlid: 0xFFFF,
            asqsz: 128,
            trsvcid: "4420".into(),
            subnqn: "nqn.2016-06.io.spdk:cnode1".into(),
            traddr: "127.0.0.1".into(),
        };
        let page = encode_discovery_log(7, std::slice::from_ref(&entry));
        assert_eq!(page.len(), 2048);
        assert_eq!(page[0], 7, "genctr @0");
        assert_eq!(page[8], 1, "numrec @8");
        assert_eq!(&page[16..18], &[0, 0], "recfmt @16");
        let e = &page[1024..];
        assert_eq!(&e[0..4], &[3, 1, 2, 2], "trtype, adrfam, subtype, treq");
        assert_eq!(&e[4..10], &[1, 0, 0xFF, 0xFF, 128, 0], "portid @4, cntlid @6, asqsz @8");
        assert_eq!(&e[32..37], b"4420 ", "trsvcid @32, space-padded");
        assert_eq!(&e[256..259], b"nqn", "subnqn @256");
        assert_eq!(&e[512..522], b"127.0.0.1 ", "traddr @512, space-padded");
        assert_eq!(e[768], 0, "tsas @768: no security");
        let mut raw = [0u8; DISCOVERY_ENTRY_BYTES];
        raw.copy_from_slice(&page[1024..2048]);
        assert_eq!(DiscoveryEntry::decode(&raw), entry);
        assert_eq!(async_event_dw0(2, 0xF0, 0x70), 0x0070_F002);
    }
}
