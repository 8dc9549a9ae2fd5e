//! The thin core's nouns as types: each block-number space is its own newtype, so mixing a
//! virtual block with a data block or a metadata block fails to compile (STYLE.md §3). Plain
//! data, shared by every module of `thin` and by the tools that read a pool offline.

use std::fmt;

/// Block index inside one volume, in data-block-size units, as the mapping sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtBlock(pub u64);

/// Allocation unit of the pool's data area (block 0 starts at the pool's data offset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataBlock(pub u64);

/// A 4 KiB block of the metadata region (block 0 starts at the region's first byte).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetaBlock(pub u64);

/// A volume's number inside its pool. Never reused within a pool; 0 is never a volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeId(pub u64);

/// Where a virtual block's data lives, and the pool time at which the mapping was made
/// (DESIGN.md "certainly not shared": older than the volume's snapshot time = maybe shared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub data_block: DataBlock,
    pub time: u64,
}

/// What the pool does with an unmap (API.md `discard`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DiscardMode {
    /// Unmap, then deallocate the freed blocks on the data device.
    #[default]
    Passdown,
    /// Unmap only.
    NoPassdown,
    /// Unmap does nothing (write_zeroes still zeroes).
    Ignore,
}

impl DiscardMode {
    pub fn name(self) -> &'static str {
        match self {
            DiscardMode::Passdown => "passdown",
            DiscardMode::NoPassdown => "no_passdown",
            DiscardMode::Ignore => "ignore",
        }
    }

    pub fn parse(text: &str) -> Option<DiscardMode> {
        [DiscardMode::Passdown, DiscardMode::NoPassdown, DiscardMode::Ignore]
            .into_iter()
            .find(|m| m.name() == text)
    }
}

/// What a write that finds no free block does (API.md `out_of_space`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OutOfSpaceMode {
    /// Fail the write with ENOSPC (once nothing is pending).
    #[default]
    Error,
    /// Hold the write until the pool grows, up to `no_space_timeout_s`.
    Queue,
}

impl OutOfSpaceMode {
    pub fn name(self) -> &'static str {
        match self {
            OutOfSpaceMode::Error => "error",
            OutOfSpaceMode::Queue => "queue",
        }
    }

    pub fn parse(text: &str) -> Option<OutOfSpaceMode> {
        [OutOfSpaceMode::Error, OutOfSpaceMode::Queue].into_iter().find(|m| m.name() == text)
    }
}

/// A pool's settings (API.md `bdev_thin_pool_create`): persisted in the superblock as part of
/// the pool's record and acted on by its owner. `Default` is what `bdev_thin_pool_create`
/// applies to what its call leaves out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    pub discard: DiscardMode,
    /// Zero the rest of a newly provisioned block that a write covers only in part.
    pub zero_new_blocks: bool,
    pub out_of_space: OutOfSpaceMode,
    pub no_space_timeout_s: u32,
    /// Free data blocks at or below which the pool reports `low_water_reached`.
    pub low_water_mark: u64,
    pub commit_interval_ms: u32,
}

impl Default for PoolSettings {
    fn default() -> PoolSettings {
        PoolSettings {
            discard: DiscardMode::Passdown,
            zero_new_blocks: true,
            out_of_space: OutOfSpaceMode::Error,
            no_space_timeout_s: 60,
            low_water_mark: 0,
            commit_interval_ms: 1000,
        }
    }
}

/// The pool's operating mode (dm-thin's modes, API.md `mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PoolMode {
    #[default]
    Write,
    OutOfDataSpace,
    OutOfMetadataSpace,
    ReadOnly,
    Fail,
}

impl PoolMode {
    /// Whether the pool may change its metadata: not in `read_only` (a metadata write failed,
    /// or `needs_check` is set) nor in `fail` (dm-thin's modes that refuse every change).
    pub fn is_writable(self) -> bool {
        !matches!(self, PoolMode::ReadOnly | PoolMode::Fail)
    }

    pub fn name(self) -> &'static str {
        match self {
            PoolMode::Write => "write",
            PoolMode::OutOfDataSpace => "out_of_data_space",
            PoolMode::OutOfMetadataSpace => "out_of_metadata_space",
            PoolMode::ReadOnly => "read_only",
            PoolMode::Fail => "fail",
        }
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "volume {}", self.0)
    }
}

impl fmt::Display for DataBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data block {}", self.0)
    }
}

impl fmt::Display for MetaBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metadata block {}", self.0)
    }
}
