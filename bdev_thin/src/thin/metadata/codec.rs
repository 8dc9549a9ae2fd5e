//! The block codec: little-endian fields at fixed offsets, the common 32-byte block header
//! (checksum, block type, own block number, generation) and the salted crc32c that seals it.
//! Pure functions on byte slices, run by the pool owner when it commits and by open and
//! `thinctl` when they read untrusted blocks: every read is bounds-checked and returns
//! `MetadataError::Corrupt` instead of panicking (docs/format.md "Block header").

use super::{METADATA_BLOCK_BYTES, MetadataError};

/// Bytes of the header every metadata block except the superblock starts with.
pub const HEADER_BYTES: usize = 32;

/// Bytes of the superblock the checksum covers: one sector, written atomically.
pub const SUPERBLOCK_BYTES: usize = 512;

/// Block types, stored at offset 4; each has its own checksum salt (docs/format.md "Salts"),
/// so a block of one type cannot pass for another even with a valid checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockType {
    Superblock,
    MappingNode,
    SpaceIndexNode,
    CountBlock,
    VolumeTableIndex,
    VolumeTableBlock,
}

impl BlockType {
    pub fn tag(self) -> u32 {
        match self {
            BlockType::Superblock => 1,
            BlockType::MappingNode => 2,
            BlockType::SpaceIndexNode => 3,
            BlockType::CountBlock => 4,
            BlockType::VolumeTableIndex => 5,
            BlockType::VolumeTableBlock => 6,
        }
    }

    pub fn salt(self) -> u32 {
        match self {
            BlockType::Superblock => 0x5342_7401,
            BlockType::MappingNode => 0x4d4e_7402,
            BlockType::SpaceIndexNode => 0x5349_7403,
            BlockType::CountBlock => 0x4342_7404,
            BlockType::VolumeTableIndex => 0x5649_7405,
            BlockType::VolumeTableBlock => 0x5654_7406,
        }
    }
}

/// The checksum of a block of `block_type`: crc32c of everything after the checksum field
/// (up to `end`: 4096, or 512 for the superblock), XOR the type's salt.
pub fn checksum(block_type: BlockType, bytes: &[u8]) -> u32 {
    let end = match block_type {
        BlockType::Superblock => SUPERBLOCK_BYTES,
        _ => METADATA_BLOCK_BYTES,
    };
    let covered = bytes.get(4..end.min(bytes.len())).unwrap_or(&[]);
    crc32c::crc32c(covered) ^ block_type.salt()
}

/// Writes a little-endian integer field at `offset` of a block under construction (code-made
/// offsets: out of range is a bug, so it panics).
pub fn put_u64(bytes: &mut [u8], offset: usize, value: u64) {
    bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

pub fn put_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

pub fn put_u16(bytes: &mut [u8], offset: usize, value: u16) {
    bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}

/// Reads fields of an untrusted block: every read is checked and names the block on failure.
pub struct Reader<'a> {
    pub bytes: &'a [u8],
    pub block: u64,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8], block: u64) -> Reader<'a> {
        Reader { bytes, block }
    }

    pub fn corrupt(&self, what: &'static str) -> MetadataError {
        MetadataError::Corrupt { block: self.block, what }
    }

    pub fn slice(&self, offset: usize, len: usize) -> Result<&'a [u8], MetadataError> {
        let end = offset.checked_add(len).ok_or_else(|| self.corrupt("field out of block"))?;
        self.bytes.get(offset..end).ok_or_else(|| self.corrupt("field out of block"))
    }

    pub fn u8(&self, offset: usize) -> Result<u8, MetadataError> {
        self.bytes.get(offset).copied().ok_or_else(|| self.corrupt("field out of block"))
    }

    pub fn u16(&self, offset: usize) -> Result<u16, MetadataError> {
        let mut raw = [0u8; 2];
        raw.copy_from_slice(self.slice(offset, 2)?);
        Ok(u16::from_le_bytes(raw))
    }

    pub fn u32(&self, offset: usize) -> Result<u32, MetadataError> {
        let mut raw = [0u8; 4];
        raw.copy_from_slice(self.slice(offset, 4)?);
        Ok(u32::from_le_bytes(raw))
    }

    pub fn u64(&self, offset: usize) -> Result<u64, MetadataError> {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(self.slice(offset, 8)?);
        Ok(u64::from_le_bytes(raw))
    }

    pub fn array16(&self, offset: usize) -> Result<[u8; 16], MetadataError> {
        let mut raw = [0u8; 16];
        raw.copy_from_slice(self.slice(offset, 16)?);
        Ok(raw)
    }

    /// A name stored as a length byte then `max` bytes of UTF-8.
    pub fn name(&self, offset: usize, max: usize) -> Result<String, MetadataError> {
        let len = usize::from(self.u8(offset)?);
        if len > max {
            return Err(self.corrupt("name length"));
        }
        let raw = self.slice(offset + 1, len)?;
        std::str::from_utf8(raw).map(str::to_string).map_err(|_| self.corrupt("name not UTF-8"))
    }
}

/// Writes a name as a length byte and its bytes (the caller checked `name.len() <= max`).
pub fn put_name(bytes: &mut [u8], offset: usize, name: &str, max: usize) {
    assert!(name.len() <= max && max < 256, "names are validated before encoding");
    bytes[offset] = name.len() as u8;
    bytes[offset + 1..offset + 1 + name.len()].copy_from_slice(name.as_bytes());
}

/// Header fields: checksum @0 u32, type tag @4 u32, own block number @8 u64, generation @16
/// u64; bytes 24..32 belong to the block type.
pub fn put_header(bytes: &mut [u8], block_type: BlockType, block: u64, generation: u64) {
    put_u32(bytes, 4, block_type.tag());
    put_u64(bytes, 8, block);
    put_u64(bytes, 16, generation);
}

/// Seals a finished block: computes and stores its checksum, returns it.
pub fn seal(bytes: &mut [u8], block_type: BlockType) -> u32 {
    let sum = checksum(block_type, bytes);
    put_u32(bytes, 0, sum);
    sum
}

/// Verifies the header of an untrusted block read from `block`: size, checksum (and, when the
/// parent stored one, that it matches), type, own block number, generation not newer than the
/// superblock's transaction.
pub fn verify_header(
    bytes: &[u8],
    block_type: BlockType,
    block: u64,
    expected_checksum: Option<u32>,
    generation_max: u64,
) -> Result<(), MetadataError> {
    let reader = Reader::new(bytes, block);
    if bytes.len() != METADATA_BLOCK_BYTES {
        return Err(reader.corrupt("block size"));
    }
    let stored = reader.u32(0)?;
    if stored != checksum(block_type, bytes) {
        return Err(reader.corrupt("checksum"));
    }
    if reader.u32(4)? != block_type.tag() {
        return Err(reader.corrupt("block type"));
    }
    if reader.u64(8)? != block {
        return Err(reader.corrupt("own block number"));
    }
    if reader.u64(16)? > generation_max {
        return Err(reader.corrupt("generation newer than the superblock"));
    }
    if let Some(expected) = expected_checksum
        && expected != stored
    {
        return Err(reader.corrupt("checksum differs from the parent's"));
    }
    Ok(())
}
