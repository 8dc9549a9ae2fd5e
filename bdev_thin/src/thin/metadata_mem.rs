//! Interim in-memory stand-in with the API of `thin::metadata` (being written on its own
//! branch), so the owner can be built and tested before the persistent layer lands. It keeps
//! every volume's mappings in a `BTreeMap` and copies them on snapshot; nothing is durable.
//! It is replaced, not extended, when the real layer merges.

use std::collections::BTreeMap;

use super::types::{
    DataBlock, DiscardMode, Mapping, MetaBlock, OutOfSpaceMode, VirtBlock, VolumeId,
};

pub const METADATA_BLOCK_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error("no such volume {0}")]
    NoVolume(VolumeId),
    #[error("volume name too long")]
    NameTooLong,
    #[error("out of metadata space")]
    NoMetadataSpace,
    #[error("data device cannot grow to {0} blocks")]
    TooLarge(u64),
    #[error("not a pool")]
    NotAPool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub metadata_blocks: u64,
    pub data_block_bytes: u32,
    pub data_blocks: u64,
    pub data_blocks_max: u64,
    pub data_offset_bytes: u64,
    pub metadata_separate: bool,
}

impl Layout {
    pub fn metadata_blocks_for(data_blocks_max: u64) -> u64 {
        16 + data_blocks_max / 64
    }

    pub fn on_data_device(
        device_bytes: u64,
        data_block_bytes: u32,
        max_bytes: u64,
    ) -> Result<Layout, MetadataError> {
        let block = u64::from(data_block_bytes);
        let data_blocks_max = max_bytes / block;
        let metadata_blocks = Self::metadata_blocks_for(data_blocks_max);
        let data_offset_bytes =
            (metadata_blocks * METADATA_BLOCK_BYTES as u64).next_multiple_of(block);
        let data_blocks = device_bytes.saturating_sub(data_offset_bytes) / block;
        if data_blocks == 0 {
            return Err(MetadataError::TooLarge(0));
        }
        Ok(Layout {
            metadata_blocks,
            data_block_bytes,
            data_blocks,
            data_blocks_max: data_blocks_max.max(data_blocks),
            data_offset_bytes,
            metadata_separate: false,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRecord {
    pub uuid: [u8; 16],
    pub name: String,
    pub discard: DiscardMode,
    pub zero_new_blocks: bool,
    pub out_of_space: OutOfSpaceMode,
    pub no_space_timeout_s: u32,
    pub low_water_mark: u64,
    pub commit_interval_ms: u32,
    pub needs_check: bool,
    pub data_bdev_uuid: [u8; 16],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRecord {
    pub id: VolumeId,
    pub uuid: [u8; 16],
    pub name: String,
    pub size_bytes: u64,
    pub creation_time: u64,
    pub snapshot_time: u64,
    pub origin: Option<VolumeId>,
    pub mapped_blocks: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removed {
    NotMapped,
    Removed { mapping: Mapping, now_free: bool },
}

pub struct CommitPlan {
    pub blocks: Vec<(MetaBlock, Vec<u8>)>,
    pub superblock: (MetaBlock, Vec<u8>),
    pub transaction_id: u64,
}

#[derive(Clone)]
struct State {
    pool: PoolRecord,
    layout: Layout,
    time: u64,
    next_volume: u64,
    volumes: BTreeMap<VolumeId, (VolumeRecord, BTreeMap<u64, Mapping>)>,
    counts: Vec<u32>,
}

pub struct PoolMetadata {
    open: State,
    committed: State,
    transaction_id: u64,
    dirty: bool,
    committing: bool,
}

impl PoolMetadata {
    pub fn format(layout: Layout, pool: PoolRecord) -> Result<PoolMetadata, MetadataError> {
        let state = State {
            pool,
            layout,
            time: 0,
            next_volume: 1,
            volumes: BTreeMap::new(),
            counts: vec![0; layout.data_blocks as usize],
        };
        Ok(PoolMetadata {
            open: state.clone(),
            committed: state,
            transaction_id: 0,
            dirty: true,
            committing: false,
        })
    }

    /// Nothing is ever on disk in this stand-in: no pool is found.
    pub fn open(
        _read_block: &mut dyn FnMut(MetaBlock, &mut [u8]) -> std::io::Result<()>,
    ) -> Result<PoolMetadata, MetadataError> {
        Err(MetadataError::NotAPool)
    }

    pub fn layout(&self) -> &Layout {
        &self.open.layout
    }
    pub fn pool(&self) -> &PoolRecord {
        &self.open.pool
    }
    pub fn pool_mut(&mut self) -> &mut PoolRecord {
        self.touch();
        &mut self.open.pool
    }
    pub fn transaction_id(&self) -> u64 {
        self.transaction_id
    }
    pub fn time(&self) -> u64 {
        self.open.time
    }
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }
    fn touch(&mut self) {
        assert!(!self.committing, "metadata changed while a commit is in flight");
        self.dirty = true;
    }

    pub fn volumes(&self) -> impl Iterator<Item = &VolumeRecord> {
        self.open.volumes.values().map(|(r, _)| r)
    }
    pub fn volume(&self, id: VolumeId) -> Option<&VolumeRecord> {
        self.open.volumes.get(&id).map(|(r, _)| r)
    }

    pub fn create_volume(
        &mut self,
        uuid: [u8; 16],
        name: &str,
        size_bytes: u64,
    ) -> Result<VolumeId, MetadataError> {
        self.touch();
        let id = VolumeId(self.open.next_volume);
        self.open.next_volume += 1;
        let record = VolumeRecord {
            id,
            uuid,
            name: name.to_string(),
            size_bytes,
            creation_time: self.open.time,
            snapshot_time: 0,
            origin: None,
            mapped_blocks: 0,
        };
        self.open.volumes.insert(id, (record, BTreeMap::new()));
        Ok(id)
    }

    pub fn snapshot(
        &mut self,
        origin: VolumeId,
        uuid: [u8; 16],
        name: &str,
    ) -> Result<VolumeId, MetadataError> {
        self.touch();
        let (record, tree) =
            self.open.volumes.get(&origin).cloned().ok_or(MetadataError::NoVolume(origin))?;
        for mapping in tree.values() {
            self.open.counts[mapping.data_block.0 as usize] += 1;
        }
        let id = VolumeId(self.open.next_volume);
        self.open.next_volume += 1;
        self.open.time += 1;
        let time = self.open.time;
        let snapshot = VolumeRecord {
            id,
            uuid,
            name: name.to_string(),
            creation_time: time,
            snapshot_time: time,
            origin: Some(origin),
            ..record
        };
        self.open.volumes.insert(id, (snapshot, tree));
        if let Some((origin_record, _)) = self.open.volumes.get_mut(&origin) {
            origin_record.snapshot_time = time;
        }
        Ok(id)
    }

    fn dec(&mut self, block: DataBlock) -> bool {
        let count = &mut self.open.counts[block.0 as usize];
        assert!(*count > 0, "count of {block} below zero");
        *count -= 1;
        *count == 0
    }

    pub fn delete_volume(
        &mut self,
        id: VolumeId,
        freed: &mut dyn FnMut(DataBlock),
    ) -> Result<(), MetadataError> {
        self.touch();
        let (_, tree) = self.open.volumes.remove(&id).ok_or(MetadataError::NoVolume(id))?;
        for mapping in tree.values() {
            if self.dec(mapping.data_block) {
                freed(mapping.data_block);
            }
        }
        Ok(())
    }

    pub fn lookup(&self, id: VolumeId, vblock: VirtBlock) -> Option<Mapping> {
        self.open.volumes.get(&id)?.1.get(&vblock.0).copied()
    }

    pub fn for_each_mapping(&self, id: VolumeId, f: &mut dyn FnMut(VirtBlock, Mapping)) {
        if let Some((_, tree)) = self.open.volumes.get(&id) {
            for (v, m) in tree {
                f(VirtBlock(*v), *m);
            }
        }
    }

    pub fn prepare_overwrite(
        &mut self,
        id: VolumeId,
        vblock: VirtBlock,
    ) -> Result<Option<(Mapping, bool)>, MetadataError> {
        self.touch();
        let Some(mapping) = self.lookup(id, vblock) else {
            return Ok(None);
        };
        let block = mapping.data_block.0 as usize;
        let open = self.open.counts[block];
        let committed = self.committed.counts[block];
        Ok(Some((mapping, open > 1 || committed > open)))
    }

    pub fn insert(
        &mut self,
        id: VolumeId,
        vblock: VirtBlock,
        mapping: Mapping,
    ) -> Result<Option<DataBlock>, MetadataError> {
        self.touch();
        let (record, tree) = self.open.volumes.get_mut(&id).ok_or(MetadataError::NoVolume(id))?;
        let old = tree.insert(vblock.0, mapping);
        if old.is_none() {
            record.mapped_blocks += 1;
        }
        self.open.counts[mapping.data_block.0 as usize] += 1;
        Ok(match old {
            Some(old) if self.dec(old.data_block) => Some(old.data_block),
            _ => None,
        })
    }

    pub fn refresh_time(
        &mut self,
        id: VolumeId,
        vblock: VirtBlock,
        time: u64,
    ) -> Result<(), MetadataError> {
        self.touch();
        let (_, tree) = self.open.volumes.get_mut(&id).ok_or(MetadataError::NoVolume(id))?;
        if let Some(m) = tree.get_mut(&vblock.0) {
            m.time = time;
        }
        Ok(())
    }

    pub fn remove(&mut self, id: VolumeId, vblock: VirtBlock) -> Result<Removed, MetadataError> {
        self.touch();
        let (record, tree) = self.open.volumes.get_mut(&id).ok_or(MetadataError::NoVolume(id))?;
        let Some(mapping) = tree.remove(&vblock.0) else {
            return Ok(Removed::NotMapped);
        };
        record.mapped_blocks -= 1;
        let now_free = self.dec(mapping.data_block);
        Ok(Removed::Removed { mapping, now_free })
    }

    pub fn data_count(&self, block: DataBlock) -> u32 {
        self.open.counts.get(block.0 as usize).copied().unwrap_or(0)
    }
    pub fn data_count_committed(&self, block: DataBlock) -> u32 {
        self.committed.counts.get(block.0 as usize).copied().unwrap_or(0)
    }
    pub fn used_data_blocks(&self) -> u64 {
        self.open.counts.iter().filter(|c| **c > 0).count() as u64
    }
    pub fn metadata_free_blocks(&self) -> u64 {
        self.open.layout.metadata_blocks
    }
    pub fn metadata_total_blocks(&self) -> u64 {
        self.open.layout.metadata_blocks
    }

    pub fn begin_commit(&mut self) -> CommitPlan {
        assert!(!self.committing);
        self.committing = true;
        CommitPlan {
            blocks: Vec::new(),
            superblock: (MetaBlock((self.transaction_id + 1) % 2), vec![0; METADATA_BLOCK_BYTES]),
            transaction_id: self.transaction_id + 1,
        }
    }

    pub fn commit_done(&mut self) {
        assert!(self.committing);
        self.committing = false;
        self.transaction_id += 1;
        self.committed = self.open.clone();
        self.dirty = false;
    }

    pub fn abort(&mut self) {
        self.committing = false;
        self.open = self.committed.clone();
        self.dirty = false;
    }

    pub fn set_needs_check(&mut self) {
        self.open.pool.needs_check = true;
        self.committed.pool.needs_check = true;
    }
}
