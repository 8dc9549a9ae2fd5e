//! The superblock: pool identity, settings, layout, time and the roots of everything else, in
//! the first 512 bytes of metadata block 0 or 1 (slot = transaction id % 2), so one sector
//! write makes a commit durable. Written last in a commit by the pool owner; open takes the
//! newest valid slot (docs/format.md "Superblock").

use super::codec::{self, BlockType, Reader, SUPERBLOCK_BYTES};
use super::space::COUNTS_PER_BLOCK;
use super::{
    FORMAT_VERSION, Layout, METADATA_BLOCK_BYTES, MetadataError, NAME_BYTES_MAX, PoolRecord,
};
use crate::limits::{METADATA_REGION_BLOCKS_MAX, METADATA_REGION_BLOCKS_MIN, POOL_VOLUMES_MAX};
use crate::thin::types::{DiscardMode, OutOfSpaceMode, PoolSettings};

/// "BDTHINMD", little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"BDTHINMD");

const FLAG_NEEDS_CHECK: u32 = 1;
const FLAG_ZERO_NEW_BLOCKS: u32 = 2;
const FLAG_METADATA_SEPARATE: u32 = 4;
const FLAGS_KNOWN: u32 = 7;

/// A child pointer: location and the checksum the child must have (0, 0 = none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Child {
    pub loc: u64,
    pub checksum: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub transaction_id: u64,
    pub layout: Layout,
    pub pool: PoolRecord,
    pub time: u64,
    pub next_volume_id: u64,
    pub volume_table: Child,
    pub volume_count: u32,
    pub space_root: Child,
}

fn discard_code(mode: DiscardMode) -> u8 {
    match mode {
        DiscardMode::Passdown => 0,
        DiscardMode::NoPassdown => 1,
        DiscardMode::Ignore => 2,
    }
}

fn out_of_space_code(mode: OutOfSpaceMode) -> u8 {
    match mode {
        OutOfSpaceMode::Error => 0,
        OutOfSpaceMode::Queue => 1,
    }
}

pub fn slot(transaction_id: u64) -> u64 {
    transaction_id % 2
}

/// Encodes the superblock into its slot's 4096 bytes (all past byte 512 zero), sealed.
pub fn encode(sb: &Superblock) -> Vec<u8> {
    let mut b = vec![0u8; METADATA_BLOCK_BYTES];
    let pool = &sb.pool;
    let layout = &sb.layout;
    codec::put_header(&mut b, BlockType::Superblock, slot(sb.transaction_id), sb.transaction_id);
    codec::put_u64(&mut b, 24, MAGIC);
    codec::put_u32(&mut b, 32, FORMAT_VERSION);
    let mut flags = 0;
    if pool.needs_check {
        flags |= FLAG_NEEDS_CHECK;
    }
    if pool.settings.zero_new_blocks {
        flags |= FLAG_ZERO_NEW_BLOCKS;
    }
    if layout.metadata_separate {
        flags |= FLAG_METADATA_SEPARATE;
    }
    codec::put_u32(&mut b, 36, flags);
    b[40..56].copy_from_slice(&pool.uuid);
    codec::put_name(&mut b, 56, &pool.name, NAME_BYTES_MAX);
    b[120] = discard_code(pool.settings.discard);
    b[121] = out_of_space_code(pool.settings.out_of_space);
    codec::put_u32(&mut b, 124, pool.settings.no_space_timeout_s);
    codec::put_u64(&mut b, 128, pool.settings.low_water_mark);
    codec::put_u32(&mut b, 136, pool.settings.commit_interval_ms);
    codec::put_u32(&mut b, 140, layout.data_block_bytes);
    codec::put_u64(&mut b, 144, layout.metadata_blocks);
    codec::put_u64(&mut b, 152, layout.data_blocks);
    codec::put_u64(&mut b, 160, layout.data_blocks_max);
    codec::put_u64(&mut b, 168, layout.data_offset_bytes);
    b[176..192].copy_from_slice(&pool.data_bdev_uuid);
    codec::put_u64(&mut b, 192, sb.time);
    codec::put_u64(&mut b, 200, sb.next_volume_id);
    codec::put_u64(&mut b, 208, sb.volume_table.loc);
    codec::put_u32(&mut b, 216, sb.volume_table.checksum);
    codec::put_u32(&mut b, 220, sb.volume_count);
    codec::put_u64(&mut b, 224, sb.space_root.loc);
    codec::put_u32(&mut b, 232, sb.space_root.checksum);
    codec::seal(&mut b, BlockType::Superblock);
    b
}

/// Decodes an untrusted superblock read from `block` (0 or 1).
pub fn decode(bytes: &[u8], block: u64) -> Result<Superblock, MetadataError> {
    let r = Reader::new(bytes, block);
    if bytes.len() < SUPERBLOCK_BYTES {
        return Err(r.corrupt("superblock size"));
    }
    if r.u32(0)? != codec::checksum(BlockType::Superblock, bytes) {
        return Err(r.corrupt("checksum"));
    }
    if r.u32(4)? != BlockType::Superblock.tag() {
        return Err(r.corrupt("block type"));
    }
    if r.u64(8)? != block {
        return Err(r.corrupt("own block number"));
    }
    if r.u64(24)? != MAGIC {
        return Err(r.corrupt("magic"));
    }
    let version = r.u32(32)?;
    if version != FORMAT_VERSION {
        return Err(MetadataError::Version { found: version });
    }
    let transaction_id = r.u64(16)?;
    if slot(transaction_id) != block {
        return Err(r.corrupt("transaction id in the wrong slot"));
    }
    let flags = r.u32(36)?;
    if flags & !FLAGS_KNOWN != 0 {
        return Err(r.corrupt("unknown flags"));
    }
    let discard = match r.u8(120)? {
        0 => DiscardMode::Passdown,
        1 => DiscardMode::NoPassdown,
        2 => DiscardMode::Ignore,
        _ => return Err(r.corrupt("discard mode")),
    };
    let out_of_space = match r.u8(121)? {
        0 => OutOfSpaceMode::Error,
        1 => OutOfSpaceMode::Queue,
        _ => return Err(r.corrupt("out-of-space mode")),
    };
    let pool = PoolRecord {
        uuid: r.array16(40)?,
        name: r.name(56, NAME_BYTES_MAX)?,
        settings: PoolSettings {
            discard,
            zero_new_blocks: flags & FLAG_ZERO_NEW_BLOCKS != 0,
            out_of_space,
            no_space_timeout_s: r.u32(124)?,
            low_water_mark: r.u64(128)?,
            commit_interval_ms: r.u32(136)?,
        },
        needs_check: flags & FLAG_NEEDS_CHECK != 0,
        data_bdev_uuid: r.array16(176)?,
    };
    let layout = Layout {
        metadata_blocks: r.u64(144)?,
        data_block_bytes: r.u32(140)?,
        data_blocks: r.u64(152)?,
        data_blocks_max: r.u64(160)?,
        data_offset_bytes: r.u64(168)?,
        metadata_separate: flags & FLAG_METADATA_SEPARATE != 0,
    };
    let data_block_bytes = layout.data_block_bytes;
    if !data_block_bytes.is_power_of_two() || !(4096..=1 << 30).contains(&data_block_bytes) {
        return Err(r.corrupt("data block size"));
    }
    if !(METADATA_REGION_BLOCKS_MIN..=METADATA_REGION_BLOCKS_MAX).contains(&layout.metadata_blocks)
    {
        return Err(r.corrupt("metadata region size"));
    }
    if layout.data_blocks > layout.data_blocks_max || layout.data_blocks == 0 {
        return Err(r.corrupt("data block count"));
    }
    if layout.data_blocks_max > layout.metadata_blocks.saturating_mul(COUNTS_PER_BLOCK)
        || usize::try_from(layout.data_blocks_max).is_err()
        || layout.data_blocks_max.checked_mul(u64::from(data_block_bytes)).is_none()
    {
        return Err(r.corrupt("data block count"));
    }
    let volume_count = r.u32(220)?;
    if usize::try_from(volume_count).map_or(true, |n| n > POOL_VOLUMES_MAX) {
        return Err(r.corrupt("volume count"));
    }
    let child = |at: usize| -> Result<Child, MetadataError> {
        Ok(Child { loc: r.u64(at)?, checksum: r.u32(at + 8)? })
    };
    Ok(Superblock {
        transaction_id,
        layout,
        pool,
        time: r.u64(192)?,
        next_volume_id: r.u64(200)?,
        volume_table: child(208)?,
        volume_count,
        space_root: child(224)?,
    })
}
