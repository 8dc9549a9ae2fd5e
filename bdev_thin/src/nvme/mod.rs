//! NVMe and NVMe over Fabrics on the wire: the types and byte layouts both ends of an NVMe/TCP
//! association share, with no IO and no state but the PDU receiver both ends run. The target
//! (`export::nvmf_tcp`) and the initiator (`backend::nvme_tcp`) use them from either side.
//!
//! - [`command`]: submission and completion queue entries, opcodes, status codes.
//! - [`fabrics`]: Connect, Property Get/Set and the controller registers they reach.
//! - [`host`]: commands as a host builds them (admin and NVM IO).
//! - [`identify`]: Identify data structures (controller, namespace, lists, descriptors, CNS 06h).
//! - [`log`]: log pages (error, SMART / health, changed namespaces, discovery).
//! - [`tcp`]: NVMe/TCP PDU headers, their validation and the CRC32C digests; [`tcp::receive`]
//!   reads PDUs off a socket into a fixed staging buffer and the owner's buffers.
//!
//! Every multi-byte field is little-endian (NVMe Base 2.0 §1.4). Layouts are written once, as
//! byte offsets from the specifications, and each structure's tests check them by offset.
//! Decoders take fixed-size arrays, so a field read can never run past its input.

pub mod command;
pub mod fabrics;
pub mod host;
pub mod identify;
pub mod log;
pub mod tcp;

/// Reads a little-endian u16 at `at`. Callers pass fixed-size structures and constant offsets.
pub(crate) fn get_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

pub(crate) fn get_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

pub(crate) fn get_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

pub(crate) fn put_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Copies `text` into `field`, padded with `pad` (ASCII strings in Identify are space-padded,
/// NQNs are NUL-padded). Text longer than the field is cut; callers validate lengths first.
pub(crate) fn put_padded(field: &mut [u8], text: &[u8], pad: u8) {
    let n = text.len().min(field.len());
    field[..n].copy_from_slice(&text[..n]);
    field[n..].fill(pad);
}

/// The text of a NUL- or space-padded string field, trailing padding removed.
pub(crate) fn padded_text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).trim_end_matches(' ').to_string()
}

/// The discovery subsystem's well-known NQN (NVMe-oF 1.1 §7.1).
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Longest NQN, in bytes, without its terminating NUL (NVMe Base 2.0 §4.5).
pub const NQN_BYTES_MAX: usize = 223;
