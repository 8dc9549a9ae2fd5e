//! Loading and checking a pool's metadata from untrusted blocks: `load` (used by `open`)
//! verifies every reachable block (checksum, type, own block number, generation not newer than
//! the superblock, checksum equal to the one its parent stored), rebuilds the metadata
//! reference counts by walking every tree, and recomputes data references (each shared
//! subtree once) to compare with the persisted data counts. `check` (thinctl check, tests, the
//! simulator) adds the structural walk: key order and bounds, half-full nodes, virtual blocks
//! inside their volume, mapped_blocks per volume. Offline or at open, on the caller's thread.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::btree::{self, Store, TreeKind};
use super::codec::{self, BlockType};
use super::space::{self, COUNTS_PER_BLOCK};
use super::superblock::{Child, Superblock};
use super::volumes::{self, StoredVolume};
use super::{METADATA_BLOCK_BYTES, MetadataError, PoolMetadata, ReadBlock, Top, read_superblock};
use crate::limits::METADATA_NODE_ENTRIES_MIN;
use crate::thin::types::{MetaBlock, VolumeId};

/// What a clean check counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    pub transaction_id: u64,
    pub volumes: u64,
    /// Sum over volumes of their mappings (a shared mapping counts once per volume).
    pub mappings: u64,
    pub data_blocks: u64,
    pub data_blocks_used: u64,
    pub metadata_blocks: u64,
    pub metadata_blocks_used: u64,
}

pub(super) struct Loaded {
    pub metadata: PoolMetadata,
    /// Problems that do not stop loading: the error `open` returns, and a line for check.
    pub problems: Vec<(MetadataError, String)>,
}

struct Loader<'r, 'f> {
    read_block: &'r mut ReadBlock<'f>,
    generation_max: u64,
    metadata_blocks: u64,
    data_blocks: u64,
    store: Store,
    meta_counts: Vec<u32>,
    types: HashMap<u64, BlockType>,
    refs: Vec<u32>,
    /// Smallest and largest key under each loaded node.
    ranges: HashMap<u64, (u64, u64)>,
}

fn corrupt(block: u64, what: &'static str) -> MetadataError {
    MetadataError::Corrupt { block, what }
}

impl Loader<'_, '_> {
    /// Counts a reference to `loc`; true the first time the block is seen.
    fn reference(&mut self, loc: u64, block_type: BlockType) -> Result<bool, MetadataError> {
        if loc < 2 || loc >= self.metadata_blocks {
            return Err(corrupt(loc, "location outside the region"));
        }
        let index = usize::try_from(loc).map_err(|_| corrupt(loc, "location"))?;
        let count = self.meta_counts.get_mut(index).ok_or_else(|| corrupt(loc, "location"))?;
        *count = count.checked_add(1).ok_or_else(|| corrupt(loc, "reference count overflow"))?;
        match self.types.get(&loc) {
            Some(seen) if *seen != block_type => Err(corrupt(loc, "block used as two types")),
            Some(_) => Ok(false),
            None => {
                self.types.insert(loc, block_type);
                Ok(true)
            }
        }
    }

    fn read(&mut self, child: Child, block_type: BlockType) -> Result<Vec<u8>, MetadataError> {
        let mut bytes = vec![0u8; METADATA_BLOCK_BYTES];
        (self.read_block)(MetaBlock(child.loc), &mut bytes)
            .map_err(|e| MetadataError::Io { block: child.loc, kind: e.kind() })?;
        codec::verify_header(
            &bytes,
            block_type,
            child.loc,
            Some(child.checksum),
            self.generation_max,
        )?;
        Ok(bytes)
    }

    /// A block with exactly one parent (volume table, count blocks).
    fn read_single(
        &mut self,
        child: Child,
        block_type: BlockType,
    ) -> Result<Vec<u8>, MetadataError> {
        if !self.reference(child.loc, block_type)? {
            return Err(corrupt(child.loc, "block referenced twice"));
        }
        self.read(child, block_type)
    }

    /// Loads the tree at `child` (once per block, however many parents) and returns the
    /// smallest and largest key under it, so each parent can verify that its children's key
    /// ranges are ordered, disjoint and start at or after their entries' keys: with that, what
    /// open accepts is a B+tree every later operation keeps valid.
    fn load_tree(
        &mut self,
        kind: TreeKind,
        child: Child,
        level: Option<u8>,
    ) -> Result<(u64, u64), MetadataError> {
        let loc = child.loc;
        if !self.reference(loc, kind.block_type())? {
            let node = self.store.node(loc);
            if node.checksum != child.checksum {
                return Err(corrupt(loc, "checksum differs from the parent's"));
            }
            if level.is_some_and(|l| l != node.level) {
                return Err(corrupt(loc, "node level"));
            }
            return self.ranges.get(&loc).copied().ok_or_else(|| corrupt(loc, "node in a cycle"));
        }
        let bytes = self.read(child, kind.block_type())?;
        let node = btree::decode_node(&bytes, loc)?;
        if level.is_some_and(|l| l != node.level) {
            return Err(corrupt(loc, "node level"));
        }
        let mut children = Vec::new();
        for entry in &node.entries {
            if node.level > 0 {
                let checksum = u32::try_from(entry.b).map_err(|_| corrupt(loc, "checksum"))?;
                children.push((entry.key, Child { loc: entry.a, checksum }));
            } else if kind == TreeKind::Mapping {
                if entry.a >= self.data_blocks {
                    return Err(corrupt(loc, "data block out of range"));
                }
                let index = usize::try_from(entry.a).map_err(|_| corrupt(loc, "data block"))?;
                let slot = self.refs.get_mut(index).ok_or_else(|| corrupt(loc, "data block"))?;
                *slot = slot.checked_add(1).ok_or_else(|| corrupt(loc, "reference overflow"))?;
            }
        }
        let first = node.entries.first().map(|e| e.key).ok_or_else(|| corrupt(loc, "empty"))?;
        let last = node.entries.last().map_or(first, |e| e.key);
        let child_level = node.level.checked_sub(1);
        self.store.nodes.insert(loc, node);
        let mut range = (first, last);
        let mut previous_max: Option<u64> = None;
        for (key, child) in children {
            let (low, high) = self.load_tree(kind, child, child_level)?;
            if low < key || previous_max.is_some_and(|max| max >= key) {
                return Err(corrupt(loc, "child keys outside their entry's range"));
            }
            previous_max = Some(high);
            range.1 = high;
        }
        self.ranges.insert(loc, range);
        Ok(range)
    }
}

/// Loads the pool the newest valid superblock describes. Structural damage is an `Err`;
/// data counts that differ from the references are `problems`.
pub(super) fn load(mut read_block: ReadBlock<'_>) -> Result<Loaded, MetadataError> {
    let sb: Superblock = read_superblock(&mut *read_block)?.ok_or(MetadataError::NotAPool)?;
    let layout = sb.layout;
    let slot = super::superblock::slot(sb.transaction_id);
    let metadata_len = usize::try_from(layout.metadata_blocks)
        .map_err(|_| corrupt(slot, "metadata region size"))?;
    let data_len =
        usize::try_from(layout.data_blocks).map_err(|_| corrupt(slot, "data block count"))?;
    let mut loader = Loader {
        read_block: &mut read_block,
        generation_max: sb.transaction_id,
        metadata_blocks: layout.metadata_blocks,
        data_blocks: layout.data_blocks,
        store: Store::new(layout.metadata_blocks, layout.data_blocks),
        meta_counts: vec![0; metadata_len],
        types: HashMap::new(),
        refs: vec![0; data_len],
        ranges: HashMap::new(),
    };
    loader.meta_counts[0] = 1;
    loader.meta_counts[1] = 1;

    let mut volumes_map: BTreeMap<VolumeId, StoredVolume> = BTreeMap::new();
    let mut volume_blocks = Vec::new();
    if sb.volume_table.loc == 0 {
        if sb.volume_count != 0 {
            return Err(corrupt(slot, "volume count without a volume table"));
        }
    } else {
        let index_bytes = loader.read_single(sb.volume_table, BlockType::VolumeTableIndex)?;
        for child in volumes::decode_index(&index_bytes, sb.volume_table.loc)? {
            let bytes = loader.read_single(child, BlockType::VolumeTableBlock)?;
            for stored in volumes::decode_table_block(&bytes, child.loc)? {
                let id = stored.record.id;
                if volumes_map.last_key_value().is_some_and(|(last, _)| *last >= id) {
                    return Err(corrupt(child.loc, "volume ids out of order"));
                }
                if id.0 >= sb.next_volume_id {
                    return Err(corrupt(child.loc, "volume id not yet allocated"));
                }
                volumes_map.insert(id, stored);
            }
            volume_blocks.push(child.loc);
        }
        volume_blocks.push(sb.volume_table.loc);
        if volumes_map.len() as u64 != u64::from(sb.volume_count) {
            return Err(corrupt(sb.volume_table.loc, "volume count differs from the superblock"));
        }
    }
    for stored in volumes_map.values() {
        if stored.root.loc != 0 {
            loader.load_tree(TreeKind::Mapping, stored.root, None)?;
        }
    }
    let mut count_blocks = Vec::new();
    if sb.space_root.loc != 0 {
        loader.load_tree(TreeKind::SpaceIndex, sb.space_root, None)?;
        loader.store.for_each(sb.space_root.loc, &mut |key, a, b| count_blocks.push((key, a, b)));
    }
    let chunks = layout.data_blocks.div_ceil(COUNTS_PER_BLOCK);
    let mut count_block_of = HashMap::new();
    for (index, loc, checksum) in count_blocks {
        if index >= chunks {
            return Err(corrupt(sb.space_root.loc, "count block index past the data blocks"));
        }
        let checksum = u32::try_from(checksum).map_err(|_| corrupt(loc, "checksum"))?;
        let child = Child { loc, checksum };
        let bytes = loader.read_single(child, BlockType::CountBlock)?;
        let counts = space::decode_count_block(&bytes, loc, index)?;
        let past_end = (index * COUNTS_PER_BLOCK..(index + 1) * COUNTS_PER_BLOCK)
            .zip(&counts)
            .any(|(block, count)| block >= layout.data_blocks && *count != 0);
        if past_end {
            return Err(corrupt(loc, "count past the data blocks"));
        }
        loader.store.data.load_chunk(index, &counts);
        count_block_of.insert(index, loc);
    }

    let mut problems = Vec::new();
    for (block, references) in loader.refs.iter().enumerate() {
        let block = block as u64;
        let count = loader.store.data.count(block);
        if count != *references {
            let loc = count_block_of.get(&(block / COUNTS_PER_BLOCK)).copied().unwrap_or(slot);
            problems.push((
                corrupt(loc, "data count differs from references"),
                format!("data block {block}: committed count {count}, references {references}"),
            ));
        }
    }

    let Loader { mut store, meta_counts, .. } = loader;
    store.meta.load(meta_counts);
    let top = Top {
        layout,
        pool: sb.pool,
        time: sb.time,
        next_volume_id: sb.next_volume_id,
        volumes: volumes_map,
        space_root: sb.space_root,
        volume_table: sb.volume_table,
        volume_blocks,
    };
    let metadata = PoolMetadata {
        committed: top.clone(),
        top,
        store,
        transaction_id: sb.transaction_id,
        dirty: false,
        committing: false,
        committing_needs_check: false,
        unreserved_control_ops: false,
    };
    Ok(Loaded { metadata, problems })
}

/// What a subtree holds, computed once per node however many volumes share it.
#[derive(Clone, Copy)]
struct Summary {
    mappings: u64,
    max_key: u64,
}

/// Summarizes the subtree at `loc` (key ranges were verified by `load`); reports non-root
/// nodes under half full and mappings newer than the pool time, once per node.
fn summarize(
    store: &Store,
    loc: u64,
    roots: &HashSet<u64>,
    pool_time: u64,
    memo: &mut HashMap<u64, Summary>,
    problems: &mut Vec<String>,
) -> Summary {
    if let Some(summary) = memo.get(&loc) {
        return *summary;
    }
    let node = store.node(loc);
    if !roots.contains(&loc) && node.entries.len() < METADATA_NODE_ENTRIES_MIN {
        problems.push(format!("metadata block {loc}: node under half full"));
    }
    let mut summary = Summary { mappings: 0, max_key: 0 };
    if node.level == 0 {
        summary.mappings = node.entries.len() as u64;
        summary.max_key = node.entries.last().map_or(0, |e| e.key);
        let future = node.entries.iter().filter(|e| e.b > pool_time).count();
        if future > 0 {
            problems
                .push(format!("metadata block {loc}: {future} mappings newer than the pool time"));
        }
    } else {
        for entry in &node.entries {
            let child = summarize(store, entry.a, roots, pool_time, memo, problems);
            summary.mappings += child.mappings;
            summary.max_key = child.max_key;
        }
    }
    memo.insert(loc, summary);
    summary
}

/// Offline check: everything `open` verifies, committed data counts = references recomputed
/// from every reachable tree (each shared subtree once), structure, key order, virtual blocks
/// inside their volume, mapped_blocks per volume. Ok(report) when clean. Linear in the number
/// of distinct nodes, however many snapshots share them.
pub fn check(read_block: ReadBlock<'_>) -> Result<CheckReport, Vec<String>> {
    let loaded = load(read_block).map_err(|e| vec![e.to_string()])?;
    let mut problems: Vec<String> = loaded.problems.into_iter().map(|(_, line)| line).collect();
    let metadata = &loaded.metadata;
    let store = &metadata.store;
    let layout = metadata.top.layout;
    let mut roots: HashSet<u64> = metadata.top.volumes.values().map(|v| v.root.loc).collect();
    roots.insert(metadata.top.space_root.loc);
    let mut memo = HashMap::new();
    let mut mappings = 0;
    for stored in metadata.top.volumes.values() {
        let record = &stored.record;
        let summary = match stored.root.loc {
            0 => Summary { mappings: 0, max_key: 0 },
            root => summarize(store, root, &roots, metadata.top.time, &mut memo, &mut problems),
        };
        let blocks = layout.virt_blocks(record.size_bytes);
        if summary.mappings > 0 && summary.max_key >= blocks {
            problems.push(format!(
                "{}: virtual block {} mapped past its {blocks} blocks",
                record.id, summary.max_key
            ));
        }
        if summary.mappings != record.mapped_blocks {
            problems.push(format!(
                "{}: mapped_blocks {} but {} mappings",
                record.id, record.mapped_blocks, summary.mappings
            ));
        }
        mappings += summary.mappings;
    }
    let space_root = metadata.top.space_root.loc;
    if space_root != 0 {
        summarize(store, space_root, &roots, u64::MAX, &mut memo, &mut problems);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let metadata_blocks_used =
        store.meta.raw().iter().skip(2).filter(|count| **count > 0).count() as u64;
    Ok(CheckReport {
        transaction_id: metadata.transaction_id,
        volumes: metadata.top.volumes.len() as u64,
        mappings,
        data_blocks: layout.data_blocks,
        data_blocks_used: store.data.used(),
        metadata_blocks: layout.metadata_blocks,
        metadata_blocks_used,
    })
}
