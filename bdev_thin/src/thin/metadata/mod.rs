//! The pool's persistent metadata, decoded in memory: the volume table, one copy-on-write
//! mapping btree per volume (snapshots share subtrees through reference-counted nodes), the
//! data space map (a u32 reference count per data block) and the superblock, with transactions.
//! Pure code: no IO, no host, no threads. The pool owner (the single writer, on its home core)
//! calls it to mutate and to learn what to write: `begin_commit` returns every block of the
//! open transaction with final checksums; the owner writes them, flushes, writes the
//! superblock, flushes, then calls `commit_done` (or `abort`). `open` and `check` decode
//! untrusted bytes and never panic on them. Invariants kept here: I1 (committed counts =
//! committed references, open counts = open references) and the metadata half of I2 (a
//! metadata block is reused only when free in the last commit and in the open transaction).
//! The on-disk format is docs/format.md.

mod btree;
mod check;
mod codec;
mod space;
mod superblock;
#[cfg(test)]
mod tests;
mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::limits::{
    METADATA_BTREE_DEPTH_MAX, METADATA_NODE_ENTRIES_MIN, METADATA_REGION_BLOCKS_MAX,
    METADATA_REGION_BLOCKS_MIN, METADATA_RESERVE_BLOCKS_MAX, POOL_VOLUMES_MAX,
};
use crate::thin::types::{DataBlock, Mapping, MetaBlock, PoolSettings, VirtBlock, VolumeId};
use btree::{Store, TreeKind};
use codec::BlockType;
use superblock::{Child, Superblock};
use volumes::StoredVolume;

pub use check::{CheckReport, check};

pub const METADATA_BLOCK_BYTES: usize = 4096;
pub const FORMAT_VERSION: u32 = 1;

/// Longest pool or volume name, in bytes of UTF-8.
pub const NAME_BYTES_MAX: usize = 63;

/// Errors of the metadata layer. `Corrupt` names the block and what failed to verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata block {block} is corrupt: {what}")]
    Corrupt { block: u64, what: &'static str },
    #[error("no valid superblock: not a pool")]
    NotAPool,
    #[error("metadata format version {found} is not {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("reading metadata block {block} failed: {kind}")]
    Io { block: u64, kind: std::io::ErrorKind },
    #[error("metadata space low: {free_blocks} free blocks, reserve {reserve_blocks}")]
    NoMetadataSpace { free_blocks: u64, reserve_blocks: u64 },
    #[error(
        "{operation} needs up to {needed_blocks} free metadata blocks for itself and the next \
         commit; {free_blocks} are free (shrink the volume in smaller steps or free space first)"
    )]
    NoMetadataSpaceFor { operation: &'static str, needed_blocks: u64, free_blocks: u64 },
    #[error("name of {bytes} bytes is over {NAME_BYTES_MAX}")]
    NameTooLong { bytes: usize },
    #[error("{id} does not exist")]
    NoSuchVolume { id: VolumeId },
    #[error("a volume named {name:?} already exists")]
    NameExists { name: String },
    #[error("the pool already has {max} volumes")]
    TooManyVolumes { max: usize },
    #[error("{id}: virtual block {vblock} is past its {blocks} blocks")]
    VirtBlockOutOfRange { id: VolumeId, vblock: u64, blocks: u64 },
    #[error("{id}: virtual block {vblock} is not mapped")]
    NotMapped { id: VolumeId, vblock: u64 },
    #[error("data block {block} is past the pool's {data_blocks} data blocks")]
    DataBlockOutOfRange { block: u64, data_blocks: u64 },
    #[error("device of {device_bytes} bytes is smaller than the {needed_bytes} bytes needed")]
    DeviceTooSmall { device_bytes: u64, needed_bytes: u64 },
    #[error("metadata region of {blocks} blocks is over the {max} block bound")]
    RegionTooLarge { blocks: u64, max: u64 },
    #[error("invalid layout: {what}")]
    InvalidLayout { what: &'static str },
    #[error("cannot grow to {data_blocks} data blocks: the maximum is {max}")]
    GrowPastMax { data_blocks: u64, max: u64 },
}

/// Where things are. Fixed at format time except data_blocks (grows up to data_blocks_max).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Size of the metadata region, in 4 KiB blocks.
    pub metadata_blocks: u64,
    /// Power of two, 4 KiB ..= 1 GiB.
    pub data_block_bytes: u32,
    /// Current data blocks.
    pub data_blocks: u64,
    /// max_growable_size / data_block_bytes.
    pub data_blocks_max: u64,
    /// Byte offset of data block 0 on the data device.
    pub data_offset_bytes: u64,
    /// Metadata on its own bdev (then data_offset_bytes = 0).
    pub metadata_separate: bool,
}

fn check_data_block_bytes(data_block_bytes: u32) -> Result<(), MetadataError> {
    if !data_block_bytes.is_power_of_two() || !(4096..=1 << 30).contains(&data_block_bytes) {
        return Err(MetadataError::InvalidLayout { what: "data block size" });
    }
    Ok(())
}

fn check_region(blocks: u64) -> Result<(), MetadataError> {
    if blocks > METADATA_REGION_BLOCKS_MAX {
        return Err(MetadataError::RegionTooLarge { blocks, max: METADATA_REGION_BLOCKS_MAX });
    }
    Ok(())
}

impl Layout {
    /// The sizing formula (docs/format.md "Sizing"): every one of `data_blocks_max` blocks
    /// mapped once, in half-full leaves, with internal nodes, the data space map, a full
    /// volume table and the superblocks; plus a quarter for copies a commit holds, plus the
    /// reserve; at least `METADATA_REGION_BLOCKS_MIN`.
    pub fn metadata_blocks_for(data_blocks_max: u64) -> u64 {
        let per_node = METADATA_NODE_ENTRIES_MIN as u64;
        let depth = METADATA_BTREE_DEPTH_MAX as u64;
        let leaves = data_blocks_max.div_ceil(per_node);
        let internal = 2 * leaves.div_ceil(per_node - 1) + depth;
        let count_blocks = data_blocks_max.div_ceil(space::COUNTS_PER_BLOCK);
        let index = 2 * count_blocks.div_ceil(per_node - 1) + depth;
        let table = volumes::blocks_for(POOL_VOLUMES_MAX);
        let base = 2 + leaves + internal + count_blocks + index + table;
        let used = base + base / 4;
        let reserve = METADATA_RESERVE_BLOCKS_MAX.min(used / 9 + 1);
        (used + reserve).max(METADATA_REGION_BLOCKS_MIN)
    }

    /// Metadata at the start of a data device: region by the formula, data from the region
    /// rounded up to a data block.
    pub fn on_data_device(
        device_bytes: u64,
        data_block_bytes: u32,
        max_bytes: u64,
    ) -> Result<Layout, MetadataError> {
        check_data_block_bytes(data_block_bytes)?;
        let block = u64::from(data_block_bytes);
        let max_bytes = max_bytes.max(device_bytes);
        let metadata_blocks = Layout::metadata_blocks_for(max_bytes / block);
        check_region(metadata_blocks)?;
        let data_offset_bytes =
            (metadata_blocks * METADATA_BLOCK_BYTES as u64).next_multiple_of(block);
        let needed_bytes = data_offset_bytes + block;
        if device_bytes < needed_bytes {
            return Err(MetadataError::DeviceTooSmall { device_bytes, needed_bytes });
        }
        let data_blocks = (device_bytes - data_offset_bytes) / block;
        let data_blocks_max =
            (max_bytes.saturating_sub(data_offset_bytes) / block).max(data_blocks);
        Ok(Layout {
            metadata_blocks,
            data_block_bytes,
            data_blocks,
            data_blocks_max,
            data_offset_bytes,
            metadata_separate: false,
        })
    }

    /// Metadata on its own device (at its start), data from byte 0 of the data device.
    pub fn separate(
        metadata_device_bytes: u64,
        data_device_bytes: u64,
        data_block_bytes: u32,
        max_bytes: u64,
    ) -> Result<Layout, MetadataError> {
        check_data_block_bytes(data_block_bytes)?;
        let block = u64::from(data_block_bytes);
        let data_blocks = data_device_bytes / block;
        if data_blocks == 0 {
            return Err(MetadataError::DeviceTooSmall {
                device_bytes: data_device_bytes,
                needed_bytes: block,
            });
        }
        let data_blocks_max = (max_bytes.max(data_device_bytes) / block).max(data_blocks);
        let metadata_blocks = Layout::metadata_blocks_for(data_blocks_max);
        check_region(metadata_blocks)?;
        let needed_bytes = metadata_blocks * METADATA_BLOCK_BYTES as u64;
        if metadata_device_bytes < needed_bytes {
            return Err(MetadataError::DeviceTooSmall {
                device_bytes: metadata_device_bytes,
                needed_bytes,
            });
        }
        Ok(Layout {
            metadata_blocks,
            data_block_bytes,
            data_blocks,
            data_blocks_max,
            data_offset_bytes: 0,
            metadata_separate: true,
        })
    }

    fn validate(&self) -> Result<(), MetadataError> {
        check_data_block_bytes(self.data_block_bytes)?;
        check_region(self.metadata_blocks)?;
        if self.metadata_blocks < METADATA_REGION_BLOCKS_MIN {
            return Err(MetadataError::InvalidLayout { what: "metadata region too small" });
        }
        if self.data_blocks == 0 || self.data_blocks > self.data_blocks_max {
            return Err(MetadataError::InvalidLayout { what: "data blocks" });
        }
        if self.data_blocks_max > self.metadata_blocks.saturating_mul(space::COUNTS_PER_BLOCK) {
            return Err(MetadataError::InvalidLayout { what: "region too small for the counts" });
        }
        Ok(())
    }

    /// Virtual blocks of a volume of `size_bytes`.
    pub fn virt_blocks(&self, size_bytes: u64) -> u64 {
        size_bytes.div_ceil(u64::from(self.data_block_bytes))
    }
}

/// Pool settings and identity, persisted in the superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRecord {
    pub uuid: [u8; 16],
    /// <= 63 bytes UTF-8.
    pub name: String,
    pub settings: PoolSettings,
    pub needs_check: bool,
    /// UUID of the data bdev when metadata is separate (examine pairs them), else zeroes.
    pub data_bdev_uuid: [u8; 16],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRecord {
    pub id: VolumeId,
    pub uuid: [u8; 16],
    /// <= 63 bytes.
    pub name: String,
    /// Virtual blocks = ceil(size_bytes / data_block_bytes).
    pub size_bytes: u64,
    pub creation_time: u64,
    pub snapshot_time: u64,
    /// The volume it was snapshotted from.
    pub origin: Option<VolumeId>,
    /// Kept exact by insert/remove/delete/resize.
    pub mapped_blocks: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removed {
    NotMapped,
    Removed { mapping: Mapping, now_free: bool },
}

pub struct CommitPlan {
    /// Every metadata block to write (location in the region, exactly 4096 bytes each),
    /// checksums final. The owner writes them all, flushes, then writes `superblock`, flushes.
    pub blocks: Vec<(MetaBlock, Vec<u8>)>,
    pub superblock: (MetaBlock, Vec<u8>),
    pub transaction_id: u64,
}

/// Everything a superblock roots: the state a commit makes durable (also kept for the last
/// commit, which `abort` returns to and `prepare_overwrite` consults).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Top {
    layout: Layout,
    pool: PoolRecord,
    time: u64,
    next_volume_id: u64,
    volumes: BTreeMap<VolumeId, StoredVolume>,
    space_root: Child,
    volume_table: Child,
    /// Blocks of the volume table (index last), released when it is rewritten.
    volume_blocks: Vec<u64>,
}

pub struct PoolMetadata {
    top: Top,
    committed: Top,
    store: Store,
    transaction_id: u64,
    dirty: bool,
    committing: bool,
    /// The needs_check flag the commit in flight writes.
    committing_needs_check: bool,
    /// Mutation `ControlOpsUnreserved`: shrink and delete start without checking that the
    /// metadata holds what they take (they may stop half done, or a commit may run out).
    unreserved_control_ops: bool,
}

fn check_name(name: &str) -> Result<(), MetadataError> {
    if name.len() > NAME_BYTES_MAX {
        return Err(MetadataError::NameTooLong { bytes: name.len() });
    }
    Ok(())
}

type ReadBlock<'a> = &'a mut dyn FnMut(MetaBlock, &mut [u8]) -> std::io::Result<()>;

/// Reads both superblock slots; the newest valid one, or None. A slot with a bad version is
/// an error (a newer format must not be mistaken for no pool).
fn read_superblock(read_block: ReadBlock<'_>) -> Result<Option<Superblock>, MetadataError> {
    let mut best: Option<Superblock> = None;
    let mut version_error = None;
    for slot in 0..2u64 {
        let mut bytes = vec![0u8; METADATA_BLOCK_BYTES];
        read_block(MetaBlock(slot), &mut bytes)
            .map_err(|e| MetadataError::Io { block: slot, kind: e.kind() })?;
        match superblock::decode(&bytes, slot) {
            Ok(sb) => {
                if best.as_ref().is_none_or(|b| sb.transaction_id > b.transaction_id) {
                    best = Some(sb);
                }
            }
            Err(error @ MetadataError::Version { .. }) => version_error = Some(error),
            Err(_) => {}
        }
    }
    match (best, version_error) {
        (None, Some(error)) => Err(error),
        (best, _) => Ok(best),
    }
}

impl PoolMetadata {
    /// A new, empty pool (open transaction; nothing on disk until the first commit).
    pub fn format(layout: Layout, pool: PoolRecord) -> Result<PoolMetadata, MetadataError> {
        layout.validate()?;
        check_name(&pool.name)?;
        let top = Top {
            layout,
            pool,
            time: 0,
            next_volume_id: 1,
            volumes: BTreeMap::new(),
            space_root: Child::default(),
            volume_table: Child::default(),
            volume_blocks: Vec::new(),
        };
        Ok(PoolMetadata {
            committed: top.clone(),
            top,
            store: Store::new(layout.metadata_blocks, layout.data_blocks),
            transaction_id: 0,
            dirty: true,
            committing: false,
            committing_needs_check: false,
            unreserved_control_ops: false,
        })
    }

    /// Reads the newest valid superblock, loads and verifies every reachable block, rebuilds
    /// the metadata reference counts; the data counts read must equal the references.
    pub fn open(read_block: ReadBlock<'_>) -> Result<PoolMetadata, MetadataError> {
        let loaded = check::load(read_block)?;
        if let Some((problem, _)) = loaded.problems.into_iter().next() {
            return Err(problem);
        }
        Ok(loaded.metadata)
    }

    /// Like `open`, but data counts that differ from the references are returned as problem
    /// lines instead of failing (offline tools dump a damaged pool). Not for a live pool.
    pub fn open_lenient(
        read_block: ReadBlock<'_>,
    ) -> Result<(PoolMetadata, Vec<String>), MetadataError> {
        let loaded = check::load(read_block)?;
        let problems = loaded.problems.into_iter().map(|(_, line)| line).collect();
        Ok((loaded.metadata, problems))
    }

    /// Only the superblock (examine's cheap probe).
    pub fn probe(
        read_block: ReadBlock<'_>,
    ) -> Result<Option<(Layout, PoolRecord, u64)>, MetadataError> {
        Ok(read_superblock(read_block)?.map(|sb| (sb.layout, sb.pool, sb.transaction_id)))
    }

    pub fn layout(&self) -> &Layout {
        &self.top.layout
    }

    pub fn pool(&self) -> &PoolRecord {
        &self.top.pool
    }

    /// Marks the transaction dirty.
    pub fn pool_mut(&mut self) -> &mut PoolRecord {
        self.begin_mutation();
        &mut self.top.pool
    }

    /// Of the last commit (0 before the first).
    pub fn transaction_id(&self) -> u64 {
        self.transaction_id
    }

    /// Pool time (64-bit, never wraps).
    pub fn time(&self) -> u64 {
        self.top.time
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub fn volumes(&self) -> impl Iterator<Item = &VolumeRecord> {
        self.top.volumes.values().map(|v| &v.record)
    }

    pub fn volume(&self, id: VolumeId) -> Option<&VolumeRecord> {
        self.top.volumes.get(&id).map(|v| &v.record)
    }

    fn begin_mutation(&mut self) {
        assert!(!self.committing, "no mutation between begin_commit and commit_done/abort");
        self.dirty = true;
    }

    /// Blocks the reserve keeps for commits: min(16 MiB, 10 %) of the region.
    pub fn metadata_reserve_blocks(&self) -> u64 {
        METADATA_RESERVE_BLOCKS_MAX.min(self.top.layout.metadata_blocks / 10)
    }

    /// Blocks the next commit allocates beyond the nodes already shadowed: a copy of each
    /// changed count block and of its index path, and a new volume table.
    fn commit_blocks_pending(&self) -> u64 {
        2 * self.store.data.dirty_count_blocks.len() as u64
            + METADATA_BTREE_DEPTH_MAX as u64
            + volumes::blocks_for(self.top.volumes.len() + 1)
    }

    /// A mutation may allocate only while free blocks stay above the reserve plus what the
    /// next commit needs, so a commit never runs out.
    fn check_space(&self) -> Result<(), MetadataError> {
        let free_blocks = self.store.meta.free_blocks();
        let reserve_blocks = self.metadata_reserve_blocks();
        let needed = reserve_blocks
            + self.commit_blocks_pending()
            + crate::limits::METADATA_MUTATION_BLOCKS_MAX;
        if free_blocks <= needed {
            return Err(MetadataError::NoMetadataSpace { free_blocks, reserve_blocks });
        }
        Ok(())
    }

    /// Refuses a control operation unless the free metadata blocks cover, at most, what it
    /// allocates itself (`nodes`) and what the next commit then writes for the counts it
    /// changes (`changed`, see `count_cost`). The reserve may be used: it exists so that the
    /// commit of everything admitted fits, and this check counts the operation's part of it.
    /// Called before the operation's first change, so a refused operation changes nothing.
    fn check_control_space(
        &self,
        operation: &'static str,
        nodes: u64,
        changed: &HashMap<u64, u32>,
    ) -> Result<(), MetadataError> {
        if self.unreserved_control_ops {
            return Ok(());
        }
        let free_blocks = self.store.meta.free_blocks();
        let needed_blocks = self.commit_blocks_pending()
            + self.count_cost(changed)
            + nodes
            + crate::limits::METADATA_MUTATION_BLOCKS_MAX;
        if free_blocks < needed_blocks {
            return Err(MetadataError::NoMetadataSpaceFor {
                operation,
                needed_blocks,
                free_blocks,
            });
        }
        Ok(())
    }

    /// What the next commit spends on counts a control operation changes (`changed`: data
    /// block -> by how much it is lowered, 0 for a count raised, or raised and lowered again),
    /// beyond what is pending already: a new copy of each count block
    /// that changes and still holds a count (one whose counts all reach zero is only dropped
    /// from the index), and shadows of the index nodes above them and of one neighbour each.
    fn count_cost(&self, changed: &HashMap<u64, u32>) -> u64 {
        let data = &self.store.data;
        let mut touched = BTreeSet::new();
        for &block in changed.keys() {
            let index = block / space::COUNTS_PER_BLOCK;
            if !data.dirty_count_blocks.contains(&index) {
                touched.insert(index);
            }
        }
        let (Some(&first), Some(&last)) = (touched.first(), touched.last()) else {
            return 0;
        };
        let kept = touched
            .iter()
            .filter(|&&index| {
                let start = index * space::COUNTS_PER_BLOCK;
                (start..start + space::COUNTS_PER_BLOCK)
                    .any(|b| data.count(b) > changed.get(&b).copied().unwrap_or(0))
            })
            .count() as u64;
        let index_nodes = self.store.count_nodes_in(self.top.space_root.loc, first, last + 1)
            + METADATA_BTREE_DEPTH_MAX as u64;
        kept + 2 * index_nodes
    }

    /// Takes up to `count` free metadata blocks out of use, in memory only (never written, so
    /// a reopened pool has them back): the simulator's way to run a pool whose region is
    /// nearly full without formatting one below the smallest region. Returns how many.
    pub fn occupy_metadata_blocks(&mut self, count: u64) -> u64 {
        self.store.meta.occupy(count)
    }

    /// Free metadata blocks past what the next mutation that allocates must leave (0: it is
    /// refused): how far the region is from its reserve, for the simulator.
    #[cfg(feature = "testing")]
    pub fn metadata_blocks_past_reserve(&self) -> u64 {
        let needed = self.metadata_reserve_blocks()
            + self.commit_blocks_pending()
            + crate::limits::METADATA_MUTATION_BLOCKS_MAX;
        self.store.meta.free_blocks().saturating_sub(needed)
    }

    /// Whether a mutation that allocates may proceed now.
    pub fn metadata_space_ok(&self) -> bool {
        self.check_space().is_ok()
    }

    /// A fresh volume id, or Err when the pool has no room for another volume.
    fn next_id(&mut self) -> Result<VolumeId, MetadataError> {
        if self.top.volumes.len() >= POOL_VOLUMES_MAX || self.top.next_volume_id == u64::MAX {
            return Err(MetadataError::TooManyVolumes { max: POOL_VOLUMES_MAX });
        }
        let id = VolumeId(self.top.next_volume_id);
        self.top.next_volume_id += 1;
        Ok(id)
    }

    /// Names are unique in a pool: they are how frontends find a volume (`pool/name`).
    fn check_name_free(&self, name: &str) -> Result<(), MetadataError> {
        if self.top.volumes.values().any(|v| v.record.name == name) {
            return Err(MetadataError::NameExists { name: name.to_string() });
        }
        Ok(())
    }

    fn stored(&self, id: VolumeId) -> Result<&StoredVolume, MetadataError> {
        self.top.volumes.get(&id).ok_or(MetadataError::NoSuchVolume { id })
    }

    pub fn create_volume(
        &mut self,
        uuid: [u8; 16],
        name: &str,
        size_bytes: u64,
    ) -> Result<VolumeId, MetadataError> {
        check_name(name)?;
        self.check_name_free(name)?;
        self.check_space()?;
        self.begin_mutation();
        let id = self.next_id()?;
        let record = VolumeRecord {
            id,
            uuid,
            name: name.to_string(),
            size_bytes,
            creation_time: self.top.time,
            snapshot_time: self.top.time,
            origin: None,
            mapped_blocks: 0,
        };
        self.top.volumes.insert(id, StoredVolume { record, root: Child::default() });
        Ok(id)
    }

    /// O(1) in the volume's size: shares the origin's tree (root count +1), then advances the
    /// pool time and stamps origin and snapshot with it (dm-thin's order).
    pub fn snapshot(
        &mut self,
        origin: VolumeId,
        uuid: [u8; 16],
        name: &str,
    ) -> Result<VolumeId, MetadataError> {
        check_name(name)?;
        self.check_name_free(name)?;
        let source = self.stored(origin)?.clone();
        self.check_space()?;
        self.begin_mutation();
        let id = self.next_id()?;
        self.store.share(source.root.loc);
        self.top.time = self.top.time.saturating_add(1);
        let time = self.top.time;
        let record = VolumeRecord {
            id,
            uuid,
            name: name.to_string(),
            size_bytes: source.record.size_bytes,
            creation_time: time,
            snapshot_time: time,
            origin: Some(origin),
            mapped_blocks: source.record.mapped_blocks,
        };
        if let Some(stored) = self.top.volumes.get_mut(&origin) {
            stored.record.snapshot_time = time;
        }
        self.top.volumes.insert(id, StoredVolume { record, root: source.root });
        Ok(id)
    }

    /// Drops the volume's tree reference; `freed` hears of each data block whose count
    /// reached 0. It allocates nothing itself, but every count it lowers is rewritten by the
    /// next commit: refused (changing nothing) when the metadata cannot hold that.
    pub fn delete_volume(
        &mut self,
        id: VolumeId,
        freed: &mut dyn FnMut(DataBlock),
    ) -> Result<(), MetadataError> {
        let root = self.stored(id)?.root.loc;
        let mut lowered = HashMap::new();
        self.store.for_each_released_value(root, &mut |block| {
            *lowered.entry(block).or_insert(0u32) += 1;
        });
        self.check_control_space("deleting the volume", 0, &lowered)?;
        self.begin_mutation();
        let Some(stored) = self.top.volumes.remove(&id) else {
            return Err(MetadataError::NoSuchVolume { id });
        };
        self.store.release(TreeKind::Mapping, stored.root.loc, &mut |b| freed(DataBlock(b)));
        Ok(())
    }

    /// Grow: just the size. Shrink: removes the mappings at and past the new end, then sets
    /// the size. Whole or not at all: the metadata it may take (a shadow of every node that
    /// holds a removed mapping, the counts it lowers) is checked before the first removal.
    pub fn resize_volume(
        &mut self,
        id: VolumeId,
        size_bytes: u64,
        freed: &mut dyn FnMut(DataBlock),
    ) -> Result<(), MetadataError> {
        let root = self.stored(id)?.root.loc;
        let end = self.top.layout.virt_blocks(size_bytes);
        let mut doomed = Vec::new();
        self.store.for_each_in(root, end, u64::MAX, &mut |key, a, _| doomed.push((key, a)));
        if !doomed.is_empty() {
            // Removals shadow the nodes holding the keys and, to rebalance, one neighbour
            // left of them per level.
            let nodes = self.store.count_nodes_in(root, end, u64::MAX)
                + crate::limits::METADATA_BTREE_DEPTH_MAX as u64;
            let mut lowered = HashMap::new();
            for &(_, block) in &doomed {
                *lowered.entry(block).or_insert(0u32) += 1;
            }
            // A shadowed shared leaf raises every count in it (a snapshot's blocks): their
            // count blocks are rewritten too.
            self.store.for_each_shadowed_shared_value(root, end, u64::MAX, &mut |block| {
                lowered.entry(block).or_insert(0);
            });
            self.check_control_space("shrinking the volume", nodes, &lowered)?;
        }
        self.begin_mutation();
        for (key, _) in doomed {
            let removed = if self.unreserved_control_ops {
                self.remove(id, VirtBlock(key))?
            } else {
                // Space for every removal was checked above.
                self.remove_unchecked(id, VirtBlock(key))?
            };
            if let Removed::Removed { mapping, now_free: true } = removed {
                freed(mapping.data_block);
            }
        }
        if let Some(stored) = self.top.volumes.get_mut(&id) {
            stored.record.size_bytes = size_bytes;
        }
        Ok(())
    }

    pub fn lookup(&self, id: VolumeId, vblock: VirtBlock) -> Option<Mapping> {
        let stored = self.top.volumes.get(&id)?;
        let (data_block, time) = self.store.lookup(stored.root.loc, vblock.0)?;
        Some(Mapping { data_block: DataBlock(data_block), time })
    }

    /// Every mapping of a volume in order.
    pub fn for_each_mapping(&self, id: VolumeId, f: &mut dyn FnMut(VirtBlock, Mapping)) {
        if let Some(stored) = self.top.volumes.get(&id) {
            self.store.for_each(stored.root.loc, &mut |key, a, b| {
                f(VirtBlock(key), Mapping { data_block: DataBlock(a), time: b });
            });
        }
    }

    /// The mappings of a volume with `start <= vblock < end`, in order (unmap and shrink walk
    /// only the part of the tree that holds them).
    pub fn for_each_mapping_in(
        &self,
        id: VolumeId,
        start: VirtBlock,
        end: VirtBlock,
        f: &mut dyn FnMut(VirtBlock, Mapping),
    ) {
        if let Some(stored) = self.top.volumes.get(&id) {
            self.store.for_each_in(stored.root.loc, start.0, end.0, &mut |key, a, b| {
                f(VirtBlock(key), Mapping { data_block: DataBlock(a), time: b });
            });
        }
    }

    fn check_vblock(&self, id: VolumeId, vblock: VirtBlock) -> Result<(), MetadataError> {
        let stored = self.stored(id)?;
        let blocks = self.top.layout.virt_blocks(stored.record.size_bytes);
        if vblock.0 >= blocks {
            return Err(MetadataError::VirtBlockOutOfRange { id, vblock: vblock.0, blocks });
        }
        Ok(())
    }

    /// Whether the data block behind (id, vblock) is exclusively that block's in the committed
    /// state: its committed count is 1, reached through the volume's committed tree by a path
    /// of nodes each referenced once. Anything else could come back shared after a crash.
    fn committed_exclusive(&self, id: VolumeId, vblock: u64, data_block: u64) -> bool {
        let committed_count = self.store.data.committed_count(data_block);
        if committed_count == 0 {
            return true;
        }
        if committed_count > 1 {
            return false;
        }
        let Some(stored) = self.committed.volumes.get(&id) else {
            return false;
        };
        let root = stored.root.loc;
        self.store.lookup(root, vblock).map(|(a, _)| a) == Some(data_block)
            && self.store.path_all(root, vblock, |n| self.store.meta.committed_count(n) == 1)
    }

    /// Shadows the path to `vblock` and returns the mapping and whether its data block is
    /// shared: count > 1 after shadowing, or shared in the committed state (see
    /// `committed_exclusive`; it covers counts lowered since the commit).
    pub fn prepare_overwrite(
        &mut self,
        id: VolumeId,
        vblock: VirtBlock,
    ) -> Result<Option<(Mapping, bool)>, MetadataError> {
        let Some(mapping) = self.lookup(id, vblock) else {
            self.stored(id)?;
            return Ok(None);
        };
        self.check_space()?;
        let data_block = mapping.data_block.0;
        let exclusive = self.committed_exclusive(id, vblock.0, data_block);
        self.begin_mutation();
        let stored = self.top.volumes.get_mut(&id).ok_or(MetadataError::NoSuchVolume { id })?;
        // Re-inserting the same value shadows exactly the path and changes no count.
        let mut root = stored.root.loc;
        self.store.insert(TreeKind::Mapping, &mut root, vblock.0, data_block, mapping.time)?;
        stored.root.loc = root;
        let shared = !exclusive || self.store.data.count(data_block) > 1;
        Ok(Some((mapping, shared)))
    }

    /// Inserts or replaces. The new block's count +1; a replaced block's count -1, returned
    /// if it reached 0.
    pub fn insert(
        &mut self,
        id: VolumeId,
        vblock: VirtBlock,
        mapping: Mapping,
    ) -> Result<Option<DataBlock>, MetadataError> {
        self.check_vblock(id, vblock)?;
        let data_blocks = self.top.layout.data_blocks;
        if mapping.data_block.0 >= data_blocks {
            return Err(MetadataError::DataBlockOutOfRange {
                block: mapping.data_block.0,
                data_blocks,
            });
        }
        self.check_space()?;
        self.begin_mutation();
        let stored = self.top.volumes.get_mut(&id).ok_or(MetadataError::NoSuchVolume { id })?;
        let mut root = stored.root.loc;
        let old = self.store.insert(
            TreeKind::Mapping,
            &mut root,
            vblock.0,
            mapping.data_block.0,
            mapping.time,
        )?;
        stored.root.loc = root;
        self.store.data.inc(mapping.data_block.0);
        match old {
            None => {
                stored.record.mapped_blocks = stored.record.mapped_blocks.saturating_add(1);
                Ok(None)
            }
            Some((old_block, _)) => {
                Ok((self.store.data.dec(old_block) == 0).then_some(DataBlock(old_block)))
            }
        }
    }

    /// Sets an existing mapping's time (only for an unshared block; owner's responsibility).
    pub fn refresh_time(
        &mut self,
        id: VolumeId,
        vblock: VirtBlock,
        time: u64,
    ) -> Result<(), MetadataError> {
        let Some(mapping) = self.lookup(id, vblock) else {
            self.stored(id)?;
            return Err(MetadataError::NotMapped { id, vblock: vblock.0 });
        };
        self.check_space()?;
        self.begin_mutation();
        let stored = self.top.volumes.get_mut(&id).ok_or(MetadataError::NoSuchVolume { id })?;
        let mut root = stored.root.loc;
        self.store.insert(TreeKind::Mapping, &mut root, vblock.0, mapping.data_block.0, time)?;
        stored.root.loc = root;
        Ok(())
    }

    pub fn remove(&mut self, id: VolumeId, vblock: VirtBlock) -> Result<Removed, MetadataError> {
        if self.lookup(id, vblock).is_none() {
            self.stored(id)?;
            return Ok(Removed::NotMapped);
        }
        self.check_space()?;
        self.remove_unchecked(id, vblock)
    }

    /// `remove` for a caller that made sure of the space (a shrink reserves it up front).
    fn remove_unchecked(
        &mut self,
        id: VolumeId,
        vblock: VirtBlock,
    ) -> Result<Removed, MetadataError> {
        if self.lookup(id, vblock).is_none() {
            self.stored(id)?;
            return Ok(Removed::NotMapped);
        }
        self.begin_mutation();
        let stored = self.top.volumes.get_mut(&id).ok_or(MetadataError::NoSuchVolume { id })?;
        let mut root = stored.root.loc;
        let old = self.store.remove(TreeKind::Mapping, &mut root, vblock.0)?;
        stored.root.loc = root;
        let Some((data_block, time)) = old else {
            return Ok(Removed::NotMapped);
        };
        stored.record.mapped_blocks = stored.record.mapped_blocks.saturating_sub(1);
        let now_free = self.store.data.dec(data_block) == 0;
        Ok(Removed::Removed {
            mapping: Mapping { data_block: DataBlock(data_block), time },
            now_free,
        })
    }

    /// Data space map, open transaction.
    pub fn data_count(&self, block: DataBlock) -> u32 {
        self.store.data.count(block.0)
    }

    /// Data space map, last commit.
    pub fn data_count_committed(&self, block: DataBlock) -> u32 {
        self.store.data.committed_count(block.0)
    }

    /// Blocks with open count > 0.
    pub fn used_data_blocks(&self) -> u64 {
        self.store.data.used()
    }

    pub fn grow_data(&mut self, data_blocks: u64) -> Result<(), MetadataError> {
        let layout = self.top.layout;
        if data_blocks > layout.data_blocks_max {
            return Err(MetadataError::GrowPastMax { data_blocks, max: layout.data_blocks_max });
        }
        if data_blocks < layout.data_blocks {
            return Err(MetadataError::InvalidLayout { what: "data blocks cannot shrink" });
        }
        self.begin_mutation();
        self.store.data.grow(data_blocks);
        self.top.layout.data_blocks = data_blocks;
        Ok(())
    }

    /// Free in the committed AND the open state.
    pub fn metadata_free_blocks(&self) -> u64 {
        self.store.meta.free_blocks()
    }

    pub fn metadata_total_blocks(&self) -> u64 {
        self.top.layout.metadata_blocks
    }

    /// Finalizes checksums bottom-up and returns everything to write, with transaction id + 1
    /// and the superblock slot. Order inside: mapping trees (their root checksums go into the
    /// volume table), changed count blocks (their checksums into the space-map index), the
    /// index tree, the volume table, the superblock.
    pub fn begin_commit(&mut self) -> CommitPlan {
        assert!(!self.committing, "one commit at a time");
        self.committing = true;
        self.committing_needs_check = self.top.pool.needs_check;
        let generation = self.transaction_id + 1;
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut done = HashSet::new();
        let store = &mut self.store;
        for stored in self.top.volumes.values_mut() {
            stored.root.checksum =
                store.finalize(TreeKind::Mapping, stored.root.loc, generation, &mut done, &mut out);
        }
        let mut space_root = self.top.space_root.loc;
        for index in std::mem::take(&mut store.data.dirty_count_blocks) {
            let counts = store.data.chunk(index);
            let existing = store.lookup(space_root, index);
            let result = if counts.iter().all(|c| *c == 0) {
                store.remove(TreeKind::SpaceIndex, &mut space_root, index)
            } else {
                let loc = store.meta.alloc().expect("the reserve covers a commit");
                let mut bytes = space::encode_count_block(loc, generation, index, &counts);
                let checksum = codec::seal(&mut bytes, BlockType::CountBlock);
                out.push((loc, bytes));
                store.insert(TreeKind::SpaceIndex, &mut space_root, index, loc, checksum.into())
            };
            result.expect("the reserve covers a commit");
            if let Some((old, _)) = existing {
                store.meta.dec(old);
            }
        }
        let checksum =
            store.finalize(TreeKind::SpaceIndex, space_root, generation, &mut done, &mut out);
        self.top.space_root = Child { loc: space_root, checksum };
        debug_assert_eq!(done.len(), store.dirty.len(), "every shadow is reachable");
        if self.dirty {
            self.write_volume_table(generation, &mut out);
        }
        let sb = Superblock {
            transaction_id: generation,
            layout: self.top.layout,
            pool: self.top.pool.clone(),
            time: self.top.time,
            next_volume_id: self.top.next_volume_id,
            volume_table: self.top.volume_table,
            volume_count: self.top.volumes.len() as u32,
            space_root: self.top.space_root,
        };
        let superblock_bytes = superblock::encode(&sb);
        CommitPlan {
            blocks: out.into_iter().map(|(loc, bytes)| (MetaBlock(loc), bytes)).collect(),
            superblock: (MetaBlock(superblock::slot(generation)), superblock_bytes),
            transaction_id: generation,
        }
    }

    fn write_volume_table(&mut self, generation: u64, out: &mut Vec<(u64, Vec<u8>)>) {
        for block in std::mem::take(&mut self.top.volume_blocks) {
            self.store.meta.dec(block);
        }
        let records: Vec<StoredVolume> = self.top.volumes.values().cloned().collect();
        if records.is_empty() {
            self.top.volume_table = Child::default();
            return;
        }
        let mut children = Vec::new();
        for chunk in records.chunks(volumes::RECORDS_PER_BLOCK) {
            let loc = self.store.meta.alloc().expect("the reserve covers a commit");
            let mut bytes = volumes::encode_table_block(loc, generation, chunk);
            let checksum = codec::seal(&mut bytes, BlockType::VolumeTableBlock);
            out.push((loc, bytes));
            children.push(Child { loc, checksum });
            self.top.volume_blocks.push(loc);
        }
        let loc = self.store.meta.alloc().expect("the reserve covers a commit");
        let mut bytes = volumes::encode_index(loc, generation, &children);
        let checksum = codec::seal(&mut bytes, BlockType::VolumeTableIndex);
        out.push((loc, bytes));
        self.top.volume_blocks.push(loc);
        self.top.volume_table = Child { loc, checksum };
    }

    /// The plan is durable: it becomes the committed state.
    pub fn commit_done(&mut self) {
        assert!(self.committing, "commit_done follows begin_commit");
        self.committing = false;
        self.transaction_id += 1;
        self.store.commit_done();
        self.committed = self.top.clone();
        self.committed.pool.needs_check = self.committing_needs_check;
        // A needs_check raised while the commit was in flight still has to be written.
        self.dirty = self.top.pool.needs_check != self.committing_needs_check;
    }

    /// Back to the last committed state, in memory, no IO (a requested needs_check stays).
    pub fn abort(&mut self) {
        self.committing = false;
        let needs_check = self.top.pool.needs_check;
        self.store.abort();
        self.top = self.committed.clone();
        self.dirty = self.transaction_id == 0;
        if needs_check && !self.top.pool.needs_check {
            self.top.pool.needs_check = true;
            self.dirty = true;
        }
    }

    /// Switches the metadata layer's mutations (feature `mutations`; no-op without).
    pub fn set_mutations(&mut self, mutations: crate::thin::mutations::Mutations) {
        use crate::thin::mutations::Mutation;
        self.store.meta.reuse_uncommitted = mutations.is_on(Mutation::MetaReuseBeforeCommit);
        self.unreserved_control_ops = mutations.is_on(Mutation::ControlOpsUnreserved);
    }

    /// Persisted by the next commit (or an abort's rewrite).
    pub fn set_needs_check(&mut self) {
        self.top.pool.needs_check = true;
        self.dirty = true;
    }

    /// Whether `needs_check` is raised in memory but not yet in the last commit.
    pub fn needs_check_unwritten(&self) -> bool {
        self.top.pool.needs_check && !self.committed.pool.needs_check
    }

    /// The superblock that sets `needs_check` to `flag` over the last committed state, with
    /// the next transaction id. It is the only block such a change writes: after a failed
    /// metadata write turned the pool read-only (the open transaction cannot be trusted),
    /// and when a check passed and clears the flag. Write it, flush, then call
    /// [`PoolMetadata::needs_check_written`]. Offline tools use it too (`thinctl check
    /// --clear-needs-check`).
    pub fn needs_check_superblock(&self, flag: bool) -> (MetaBlock, Vec<u8>) {
        let generation = self.transaction_id + 1;
        let committed = &self.committed;
        let mut pool = committed.pool.clone();
        pool.needs_check = flag;
        let sb = Superblock {
            transaction_id: generation,
            layout: committed.layout,
            pool,
            time: committed.time,
            next_volume_id: committed.next_volume_id,
            volume_table: committed.volume_table,
            volume_count: committed.volumes.len() as u32,
            space_root: committed.space_root,
        };
        (MetaBlock(superblock::slot(generation)), superblock::encode(&sb))
    }

    /// The superblock of [`PoolMetadata::needs_check_superblock`] is durable.
    pub fn needs_check_written(&mut self, flag: bool) {
        assert!(!self.committing, "no flag write while a commit runs");
        self.transaction_id += 1;
        self.committed.pool.needs_check = flag;
        self.top.pool.needs_check = flag;
        if self.top == self.committed {
            self.dirty = false;
        }
    }

    /// Blocks to write (zeroed superblocks) so the pool is never found again.
    pub fn invalidate_superblocks() -> Vec<(MetaBlock, Vec<u8>)> {
        (0..2).map(|slot| (MetaBlock(slot), vec![0u8; METADATA_BLOCK_BYTES])).collect()
    }
}
