//! The volume table on disk: one index block listing table blocks, each holding up to 28
//! volume records (identity, size, times, origin, mapped count, mapping-tree root and its
//! checksum). Small (bounded by `POOL_VOLUMES_MAX`), so a commit that changes any volume
//! rewrites it whole; the pool owner encodes it at commit, open decodes it
//! (docs/format.md "Volume table").

use super::codec::{self, BlockType, HEADER_BYTES, Reader};
use super::superblock::Child;
use super::{METADATA_BLOCK_BYTES, MetadataError, NAME_BYTES_MAX, VolumeRecord};
use crate::thin::types::VolumeId;

pub const RECORD_BYTES: usize = 144;
pub const RECORDS_PER_BLOCK: usize = (METADATA_BLOCK_BYTES - HEADER_BYTES) / RECORD_BYTES;
pub const INDEX_ENTRY_BYTES: usize = 16;
pub const INDEX_ENTRIES_MAX: usize = (METADATA_BLOCK_BYTES - HEADER_BYTES) / INDEX_ENTRY_BYTES;

const _: () = assert!(crate::limits::POOL_VOLUMES_MAX <= RECORDS_PER_BLOCK * INDEX_ENTRIES_MAX);

/// A volume as stored: its record and the root of its mapping tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredVolume {
    pub record: VolumeRecord,
    pub root: Child,
}

/// Blocks a table of `volumes` records takes (index included; 0 when empty).
pub fn blocks_for(volumes: usize) -> u64 {
    if volumes == 0 { 0 } else { volumes.div_ceil(RECORDS_PER_BLOCK) as u64 + 1 }
}

/// Record layout (offsets inside the record): id u64 @0, uuid @8, name @24 (length byte +
/// 63 bytes), size_bytes @88, creation_time @96, snapshot_time @104, origin @112 (0 = none),
/// mapped_blocks @120, root location @128, root checksum u32 @136, zero @140.
fn encode_record(bytes: &mut [u8], at: usize, volume: &StoredVolume) {
    let record = &volume.record;
    codec::put_u64(bytes, at, record.id.0);
    bytes[at + 8..at + 24].copy_from_slice(&record.uuid);
    codec::put_name(bytes, at + 24, &record.name, NAME_BYTES_MAX);
    codec::put_u64(bytes, at + 88, record.size_bytes);
    codec::put_u64(bytes, at + 96, record.creation_time);
    codec::put_u64(bytes, at + 104, record.snapshot_time);
    codec::put_u64(bytes, at + 112, record.origin.map_or(0, |o| o.0));
    codec::put_u64(bytes, at + 120, record.mapped_blocks);
    codec::put_u64(bytes, at + 128, volume.root.loc);
    codec::put_u32(bytes, at + 136, volume.root.checksum);
}

fn decode_record(r: &Reader<'_>, at: usize) -> Result<StoredVolume, MetadataError> {
    let id = r.u64(at)?;
    if id == 0 {
        return Err(r.corrupt("volume id 0"));
    }
    let origin = r.u64(at + 112)?;
    Ok(StoredVolume {
        record: VolumeRecord {
            id: VolumeId(id),
            uuid: r.array16(at + 8)?,
            name: r.name(at + 24, NAME_BYTES_MAX)?,
            size_bytes: r.u64(at + 88)?,
            creation_time: r.u64(at + 96)?,
            snapshot_time: r.u64(at + 104)?,
            origin: (origin != 0).then_some(VolumeId(origin)),
            mapped_blocks: r.u64(at + 120)?,
        },
        root: Child { loc: r.u64(at + 128)?, checksum: r.u32(at + 136)? },
    })
}

/// Table block: header, record count u16 @24, records from @32.
pub fn encode_table_block(block: u64, generation: u64, volumes: &[StoredVolume]) -> Vec<u8> {
    assert!(volumes.len() <= RECORDS_PER_BLOCK);
    let mut bytes = vec![0u8; METADATA_BLOCK_BYTES];
    codec::put_header(&mut bytes, BlockType::VolumeTableBlock, block, generation);
    codec::put_u16(&mut bytes, 24, volumes.len() as u16);
    for (i, volume) in volumes.iter().enumerate() {
        encode_record(&mut bytes, HEADER_BYTES + RECORD_BYTES * i, volume);
    }
    bytes
}

pub fn decode_table_block(bytes: &[u8], block: u64) -> Result<Vec<StoredVolume>, MetadataError> {
    let r = Reader::new(bytes, block);
    let count = usize::from(r.u16(24)?);
    if count == 0 || count > RECORDS_PER_BLOCK {
        return Err(r.corrupt("record count"));
    }
    (0..count).map(|i| decode_record(&r, HEADER_BYTES + RECORD_BYTES * i)).collect()
}

/// Index block: header, table block count u32 @24, entries from @32 (location u64, checksum
/// u32, zero u32).
pub fn encode_index(block: u64, generation: u64, children: &[Child]) -> Vec<u8> {
    assert!(children.len() <= INDEX_ENTRIES_MAX);
    let mut bytes = vec![0u8; METADATA_BLOCK_BYTES];
    codec::put_header(&mut bytes, BlockType::VolumeTableIndex, block, generation);
    codec::put_u32(&mut bytes, 24, children.len() as u32);
    for (i, child) in children.iter().enumerate() {
        let at = HEADER_BYTES + INDEX_ENTRY_BYTES * i;
        codec::put_u64(&mut bytes, at, child.loc);
        codec::put_u32(&mut bytes, at + 8, child.checksum);
    }
    bytes
}

pub fn decode_index(bytes: &[u8], block: u64) -> Result<Vec<Child>, MetadataError> {
    let r = Reader::new(bytes, block);
    let count = usize::try_from(r.u32(24)?).map_err(|_| r.corrupt("table block count"))?;
    if count == 0 || count > INDEX_ENTRIES_MAX {
        return Err(r.corrupt("table block count"));
    }
    (0..count)
        .map(|i| {
            let at = HEADER_BYTES + INDEX_ENTRY_BYTES * i;
            Ok(Child { loc: r.u64(at)?, checksum: r.u32(at + 8)? })
        })
        .collect()
}
