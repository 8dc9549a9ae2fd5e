//! Reference counts of the two block spaces, in memory: metadata blocks (rebuilt at open by
//! walking every tree, never persisted) and data blocks (a u32 per block, persisted as count
//! blocks under the space-map index tree). Each keeps the committed value of every count the
//! open transaction changed, so `abort` restores them and the allocation rule (a metadata block
//! is handed out only if free in the last commit AND the open transaction) is one lookup.
//! Owned by `PoolMetadata`, run on the pool owner's core (DESIGN.md I1, I2).

use std::collections::{BTreeSet, HashMap};

use super::codec::{self, BlockType, HEADER_BYTES, Reader};
use super::{METADATA_BLOCK_BYTES, MetadataError};

/// Counts of one data count block: 4096 bytes - header, as u32.
pub const COUNTS_PER_BLOCK: u64 = ((METADATA_BLOCK_BYTES - HEADER_BYTES) / 4) as u64;

/// Metadata block reference counts with the committed values of those changed since commit.
#[derive(Clone, Debug)]
pub struct MetaSpace {
    counts: Vec<u32>,
    committed: HashMap<u64, u32>,
    /// Blocks free in both the committed and the open state.
    free_both: u64,
    cursor: u64,
    /// Mutation `MetaReuseBeforeCommit`: blocks free only in the open state are reused.
    pub reuse_uncommitted: bool,
}

impl MetaSpace {
    /// All free except the two superblocks, which are never allocated.
    pub fn new(blocks: u64) -> MetaSpace {
        let len = usize::try_from(blocks).expect("region size is bounded by limits");
        let mut counts = vec![0u32; len];
        for slot in counts.iter_mut().take(2) {
            *slot = 1;
        }
        MetaSpace {
            counts,
            committed: HashMap::new(),
            free_both: blocks.saturating_sub(2),
            cursor: 2,
            reuse_uncommitted: false,
        }
    }

    pub fn blocks(&self) -> u64 {
        self.counts.len() as u64
    }

    pub fn count(&self, block: u64) -> u32 {
        usize::try_from(block).ok().and_then(|i| self.counts.get(i)).copied().unwrap_or(0)
    }

    pub fn committed_count(&self, block: u64) -> u32 {
        self.committed.get(&block).copied().unwrap_or_else(|| self.count(block))
    }

    pub fn free_blocks(&self) -> u64 {
        self.free_both
    }

    fn is_free_both(&self, block: u64) -> bool {
        self.count(block) == 0 && self.committed_count(block) == 0
    }

    fn set(&mut self, block: u64, value: u32) {
        let index = usize::try_from(block).expect("block inside the region");
        let was_free = self.is_free_both(block);
        let old = self.counts[index];
        self.committed.entry(block).or_insert(old);
        self.counts[index] = value;
        let now_free = self.is_free_both(block);
        match (was_free, now_free) {
            (true, false) => self.free_both -= 1,
            (false, true) => self.free_both += 1,
            _ => {}
        }
    }

    pub fn inc(&mut self, block: u64) {
        let count = self.count(block);
        self.set(block, count.checked_add(1).expect("metadata count overflow"));
    }

    /// Decrements and returns the new count.
    pub fn dec(&mut self, block: u64) -> u32 {
        let count = self.count(block);
        assert!(count > 0, "metadata block {block} count underflow");
        self.set(block, count - 1);
        count - 1
    }

    /// A block free in the committed and the open state, with count 1.
    pub fn alloc(&mut self) -> Result<u64, MetadataError> {
        let blocks = self.blocks();
        if self.free_both == 0 {
            return Err(MetadataError::NoMetadataSpace { free_blocks: 0, reserve_blocks: 0 });
        }
        let mut candidate = self.cursor.max(2);
        for _ in 0..blocks {
            if candidate >= blocks {
                candidate = 2;
            }
            if self.is_free_both(candidate)
                || (self.reuse_uncommitted && self.count(candidate) == 0)
            {
                self.set(candidate, 1);
                self.cursor = candidate + 1;
                return Ok(candidate);
            }
            candidate += 1;
        }
        unreachable!("free_both > 0 but no free block found")
    }

    /// Takes up to `count` free blocks out of use, in memory only, in the open and the
    /// committed state alike: the region then behaves as a smaller one. Returns how many.
    pub fn occupy(&mut self, count: u64) -> u64 {
        let mut taken = 0;
        for block in (2..self.blocks()).rev() {
            if taken == count {
                break;
            }
            if self.is_free_both(block) && !self.committed.contains_key(&block) {
                self.counts[block as usize] = 1;
                self.free_both -= 1;
                taken += 1;
            }
        }
        taken
    }

    /// Used by open: counts rebuilt from the trees become both the open and committed state.
    pub fn load(&mut self, counts: Vec<u32>) {
        self.free_both = counts.iter().filter(|c| **c == 0).count() as u64;
        self.counts = counts;
        self.committed.clear();
    }

    pub fn raw(&self) -> &[u32] {
        &self.counts
    }

    pub fn commit_done(&mut self) {
        let freed_committed: Vec<u64> = self
            .committed
            .iter()
            .filter(|(block, old)| **old > 0 && self.count(**block) == 0)
            .map(|(block, _)| *block)
            .collect();
        self.free_both += freed_committed.len() as u64;
        self.committed.clear();
        // Blocks this commit freed are reusable now: scan from the start again, so the region
        // stays compact (and reuse, where the allocation rule matters, happens promptly).
        self.cursor = 2;
    }

    pub fn abort(&mut self) {
        let changed: Vec<(u64, u32)> = self.committed.drain().collect();
        for (block, old) in changed {
            if let Ok(index) = usize::try_from(block) {
                self.counts[index] = old;
            }
        }
        self.free_both = self.counts.iter().filter(|c| **c == 0).count() as u64;
        self.cursor = 2;
    }
}

/// Data block reference counts, with committed values and the count blocks to rewrite.
#[derive(Clone, Debug, Default)]
pub struct DataSpace {
    counts: Vec<u32>,
    committed: HashMap<u64, u32>,
    committed_len: usize,
    pub dirty_count_blocks: BTreeSet<u64>,
    used: u64,
}

impl DataSpace {
    pub fn new(blocks: u64) -> DataSpace {
        let len = usize::try_from(blocks).expect("data blocks fit memory");
        DataSpace { counts: vec![0; len], committed_len: len, ..DataSpace::default() }
    }

    pub fn count(&self, block: u64) -> u32 {
        usize::try_from(block).ok().and_then(|i| self.counts.get(i)).copied().unwrap_or(0)
    }

    pub fn committed_count(&self, block: u64) -> u32 {
        match self.committed.get(&block) {
            Some(old) => *old,
            None if block < self.committed_len as u64 => self.count(block),
            None => 0,
        }
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    fn set(&mut self, block: u64, value: u32) {
        let index = usize::try_from(block).expect("data block inside the pool");
        let old = self.counts[index];
        self.committed.entry(block).or_insert(old);
        self.counts[index] = value;
        if old == 0 && value > 0 {
            self.used += 1;
        } else if old > 0 && value == 0 {
            self.used -= 1;
        }
        self.dirty_count_blocks.insert(block / COUNTS_PER_BLOCK);
    }

    pub fn inc(&mut self, block: u64) {
        let count = self.count(block);
        self.set(block, count.checked_add(1).expect("data count overflow"));
    }

    pub fn dec(&mut self, block: u64) -> u32 {
        let count = self.count(block);
        assert!(count > 0, "data block {block} count underflow");
        self.set(block, count - 1);
        count - 1
    }

    pub fn grow(&mut self, blocks: u64) {
        let len = usize::try_from(blocks).expect("data blocks fit memory");
        if len > self.counts.len() {
            self.counts.resize(len, 0);
        }
    }

    /// The counts of count block `index` (zero past the end).
    pub fn chunk(&self, index: u64) -> Vec<u32> {
        let start = index.saturating_mul(COUNTS_PER_BLOCK);
        (start..start + COUNTS_PER_BLOCK).map(|b| self.count(b)).collect()
    }

    /// Open: loads a count block's counts (already verified) as committed state.
    pub fn load_chunk(&mut self, index: u64, counts: &[u32]) {
        let start = index * COUNTS_PER_BLOCK;
        for (offset, count) in counts.iter().enumerate() {
            let block = start + offset as u64;
            if let Ok(i) = usize::try_from(block)
                && let Some(slot) = self.counts.get_mut(i)
            {
                if *slot == 0 && *count > 0 {
                    self.used += 1;
                }
                *slot = *count;
            }
        }
    }

    pub fn commit_done(&mut self) {
        self.committed.clear();
        self.dirty_count_blocks.clear();
        self.committed_len = self.counts.len();
    }

    pub fn abort(&mut self) {
        let changed: Vec<(u64, u32)> = self.committed.drain().collect();
        for (block, old) in changed {
            if let Ok(index) = usize::try_from(block)
                && let Some(slot) = self.counts.get_mut(index)
            {
                *slot = old;
            }
        }
        self.counts.truncate(self.committed_len);
        self.used = self.counts.iter().filter(|c| **c > 0).count() as u64;
        self.dirty_count_blocks.clear();
    }
}

/// Count block layout: header, then `index` of the count block @24 u64, counts @32 as u32.
pub fn encode_count_block(block: u64, generation: u64, index: u64, counts: &[u32]) -> Vec<u8> {
    let mut bytes = vec![0u8; METADATA_BLOCK_BYTES];
    codec::put_header(&mut bytes, BlockType::CountBlock, block, generation);
    codec::put_u64(&mut bytes, 24, index);
    for (i, count) in counts.iter().enumerate().take(COUNTS_PER_BLOCK as usize) {
        codec::put_u32(&mut bytes, HEADER_BYTES + 4 * i, *count);
    }
    bytes
}

/// Decodes a verified count block, checking it is the `index` its parent says.
pub fn decode_count_block(bytes: &[u8], block: u64, index: u64) -> Result<Vec<u32>, MetadataError> {
    let reader = Reader::new(bytes, block);
    if reader.u64(24)? != index {
        return Err(reader.corrupt("count block index"));
    }
    (0..COUNTS_PER_BLOCK as usize).map(|i| reader.u32(HEADER_BYTES + 4 * i)).collect()
}
