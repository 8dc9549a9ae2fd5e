//! Commands as a host builds them: admin (Identify, Get Log Page, Set Features, Keep Alive,
//! Asynchronous Event Request) and NVM IO (Read, Write, Write Zeroes, Dataset Management,
//! Flush), with their fields at the places [`super::command`]'s accessors read them. The CID
//! and the data pointer are the queue's business and are left zero.

use super::command::{Command, admin_opcode, io_opcode};

/// Feature identifiers a host sets (NVMe Base 2.0 Figure 317).
pub mod feature {
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const ASYNC_EVENT_CONFIGURATION: u8 = 0x0B;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
}

/// Asynchronous event configuration: namespace attribute notices (bit 8).
pub const AEC_NAMESPACE_ATTRIBUTE: u32 = 1 << 8;

/// Write / Read / Write Zeroes CDW12: Force Unit Access.
const FUA: u32 = 1 << 30;
/// Write Zeroes CDW12: the controller may deallocate the range.
const DEAC: u32 = 1 << 25;
/// Dataset Management CDW11: Attribute - Deallocate.
const ATTRIBUTE_DEALLOCATE: u32 = 1 << 2;

/// Identify: `cns` with CDW1.NSID `nsid` and command set `csi`.
pub fn identify(cns: u8, nsid: u32, csi: u8) -> Command {
    let mut command = Command::new(admin_opcode::IDENTIFY, 0);
    command.nsid = nsid;
    command.cdw10 = u32::from(cns);
    command.cdw11 = u32::from(csi) << 24;
    command
}

/// Get Log Page `log_id`: `length_bytes` (a multiple of 4, at least 4) from `offset_bytes`;
/// `retain` keeps the asynchronous event pending (RAE).
pub fn get_log_page(
    log_id: u8,
    nsid: u32,
    length_bytes: u32,
    offset_bytes: u64,
    retain: bool,
) -> Command {
    let dwords = (length_bytes / 4).max(1) - 1;
    let mut command = Command::new(admin_opcode::GET_LOG_PAGE, 0);
    command.nsid = nsid;
    command.cdw10 = u32::from(log_id) | (u32::from(retain) << 15) | ((dwords & 0xFFFF) << 16);
    command.cdw11 = dwords >> 16;
    command.cdw12 = offset_bytes as u32;
    command.cdw13 = (offset_bytes >> 32) as u32;
    command
}

/// Set Features `feature_id` with CDW11 `value`.
pub fn set_features(feature_id: u8, value: u32) -> Command {
    let mut command = Command::new(admin_opcode::SET_FEATURES, 0);
    command.cdw10 = u32::from(feature_id);
    command.cdw11 = value;
    command
}

/// Set Features Number of Queues: `count` submission and completion queues (not 0's based
/// here; the command carries them 0's based).
pub fn set_queue_count(count: u16) -> Command {
    let zero_based = u32::from(count.max(1) - 1);
    set_features(feature::NUMBER_OF_QUEUES, zero_based | (zero_based << 16))
}

/// The queues a Number of Queues answer grants (DW0: NSQA 15:0, NCQA 31:16, 0's based): the
/// smaller of the two, counted from 1.
pub fn granted_queue_count(dw0: u32) -> u32 {
    (dw0 & 0xFFFF).min(dw0 >> 16) + 1
}

pub fn keep_alive() -> Command {
    Command::new(admin_opcode::KEEP_ALIVE, 0)
}

pub fn async_event_request() -> Command {
    Command::new(admin_opcode::ASYNC_EVENT_REQUEST, 0)
}

fn lba_command(opcode: u8, nsid: u32, slba: u64, blocks: u32) -> Command {
    debug_assert!((1..=65536).contains(&blocks), "NLB is a 16-bit 0's based field");
    let mut command = Command::new(opcode, 0);
    command.nsid = nsid;
    command.cdw10 = slba as u32;
    command.cdw11 = (slba >> 32) as u32;
    command.cdw12 = (blocks - 1) & 0xFFFF;
    command
}

pub fn read(nsid: u32, slba: u64, blocks: u32) -> Command {
    lba_command(io_opcode::READ, nsid, slba, blocks)
}

pub fn write(nsid: u32, slba: u64, blocks: u32, fua: bool) -> Command {
    let mut command = lba_command(io_opcode::WRITE, nsid, slba, blocks);
    if fua {
        command.cdw12 |= FUA;
    }
    command
}

/// Write Zeroes; `deallocate` lets the controller deallocate the range (DEAC).
pub fn write_zeroes(nsid: u32, slba: u64, blocks: u32, deallocate: bool) -> Command {
    let mut command = lba_command(io_opcode::WRITE_ZEROES, nsid, slba, blocks);
    if deallocate {
        command.cdw12 |= DEAC;
    }
    command
}

/// Dataset Management with the deallocate attribute over `ranges` ranges (1..=256) that follow
/// as its data.
pub fn deallocate(nsid: u32, ranges: u16) -> Command {
    debug_assert!((1..=256).contains(&ranges));
    let mut command = Command::new(io_opcode::DATASET_MANAGEMENT, 0);
    command.nsid = nsid;
    command.cdw10 = u32::from(ranges.max(1) - 1) & 0xFF;
    command.cdw11 = ATTRIBUTE_DEALLOCATE;
    command
}

pub fn flush(nsid: u32) -> Command {
    let mut command = Command::new(io_opcode::FLUSH, 0);
    command.nsid = nsid;
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_through_the_command_accessors() {
        let command = write(1, 0x1_0000_0002, 8, true);
        assert_eq!(
            (command.slba(), command.block_count(), command.fua()),
            (0x1_0000_0002, 8, true)
        );
        let command = write_zeroes(1, 5, 65536, true);
        assert_eq!(command.block_count(), 65536, "the most NLB says");
        assert!(command.deallocate() && !command.fua());
        let command = deallocate(1, 256);
        assert_eq!(command.dsm_range_count(), 256);
        assert!(command.dsm_deallocate());
        let command = identify(0x06, 0, 0);
        assert_eq!((command.cns(), command.csi()), (0x06, 0));
        let command = get_log_page(0x04, 0xFFFF_FFFF, 4096, 0, false);
        assert_eq!((command.log_page_id(), command.log_length_bytes()), (0x04, 4096));
        assert!(!command.log_retain_event());
        let command = set_queue_count(4);
        assert_eq!((command.feature_id(), command.cdw11), (0x07, 0x0003_0003));
        assert_eq!(granted_queue_count(0x0007_0003), 4);
    }
}
