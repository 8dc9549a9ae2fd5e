//! Copy-on-write B+trees of u64 keys over reference-counted 4 KiB nodes, in memory (the
//! `Store`), shared between volumes by snapshots. The first change to a node in a transaction
//! *shadows* it (dm-thin): a new block gets a copy, and if the old node was shared its children
//! (nodes, or for mapping leaves the data blocks) gain a reference while the old one loses one.
//! Later changes edit the shadow in place. Committed nodes are never edited, so the committed
//! trees stay readable until `commit_done` (abort and `prepare_overwrite` read them).
//! An overflowing node hands entries to a neighbour with room, else splits; removes merge or
//! redistribute under-full siblings, so every non-root node stays at least half full (the
//! bound docs/format.md states per mapping). Owned by `PoolMetadata` on the pool owner's core.

use std::collections::{HashMap, HashSet};

use super::codec::{self, BlockType, HEADER_BYTES, Reader};
use super::space::{DataSpace, MetaSpace};
use super::{METADATA_BLOCK_BYTES, MetadataError};
use crate::limits::{
    METADATA_BTREE_DEPTH_MAX, METADATA_NODE_ENTRIES_MAX, METADATA_NODE_ENTRIES_MIN,
};

/// Bytes of one entry: key, then two 64-bit words.
pub const ENTRY_BYTES: usize = 24;

/// One entry. Leaf of a mapping tree: `a` = data block, `b` = time. Leaf of the space-map
/// index: `a` = count block location, `b` = its checksum. Internal: `a` = child location,
/// `b` = child checksum (filled in when the transaction commits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: u64,
    pub a: u64,
    pub b: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// 0 for a leaf; a node of level n has children of level n - 1.
    pub level: u8,
    pub entries: Vec<Entry>,
    /// Of the block as last written (valid for nodes not dirty).
    pub checksum: u32,
}

/// What a tree's leaves point at, which decides its block type and what shadowing a shared
/// leaf increments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeKind {
    /// Volume mappings: leaves hold data blocks.
    Mapping,
    /// Data space map index: leaves hold count blocks (metadata blocks), never shared.
    SpaceIndex,
}

impl TreeKind {
    pub fn block_type(self) -> BlockType {
        match self {
            TreeKind::Mapping => BlockType::MappingNode,
            TreeKind::SpaceIndex => BlockType::SpaceIndexNode,
        }
    }
}

/// Index of the child whose subtree may hold `key` (internal keys are lower bounds).
fn child_index(entries: &[Entry], key: u64) -> Option<usize> {
    entries.partition_point(|e| e.key <= key).checked_sub(1)
}

/// Every node in memory, which of them the open transaction wrote, and both count spaces.
#[derive(Clone, Debug)]
pub struct Store {
    pub nodes: HashMap<u64, Node>,
    /// Nodes allocated in the open transaction (editable in place while their count is 1).
    pub dirty: HashSet<u64>,
    /// Committed nodes whose count reached 0 in the open transaction: dropped at commit_done.
    pub released: Vec<u64>,
    pub meta: MetaSpace,
    pub data: DataSpace,
}

impl Store {
    pub fn new(metadata_blocks: u64, data_blocks: u64) -> Store {
        Store {
            nodes: HashMap::new(),
            dirty: HashSet::new(),
            released: Vec::new(),
            meta: MetaSpace::new(metadata_blocks),
            data: DataSpace::new(data_blocks),
        }
    }

    pub fn node(&self, loc: u64) -> &Node {
        self.nodes.get(&loc).expect("a live node is in memory")
    }

    fn node_mut(&mut self, loc: u64) -> &mut Node {
        debug_assert!(self.dirty.contains(&loc), "only shadows are edited");
        self.nodes.get_mut(&loc).expect("a live node is in memory")
    }

    pub fn lookup(&self, root: u64, key: u64) -> Option<(u64, u64)> {
        let mut loc = root;
        if loc == 0 {
            return None;
        }
        loop {
            let node = self.node(loc);
            if node.level == 0 {
                let i = node.entries.binary_search_by_key(&key, |e| e.key).ok()?;
                let entry = node.entries[i];
                return Some((entry.a, entry.b));
            }
            loc = node.entries[child_index(&node.entries, key)?].a;
        }
    }

    /// Whether `holds` is true of every node from `root` down to the leaf that may hold
    /// `key` (walked in place: the owner asks on every overwrite, so nothing is collected).
    pub fn path_all(&self, root: u64, key: u64, holds: impl Fn(u64) -> bool) -> bool {
        let mut loc = root;
        while loc != 0 {
            if !holds(loc) {
                return false;
            }
            let node = self.node(loc);
            if node.level == 0 {
                break;
            }
            loc = child_index(&node.entries, key).map_or(0, |i| node.entries[i].a);
        }
        true
    }

    /// Calls `f(key, a, b)` for every leaf entry in key order.
    pub fn for_each(&self, root: u64, f: &mut dyn FnMut(u64, u64, u64)) {
        if root == 0 {
            return;
        }
        let node = self.node(root);
        for entry in &node.entries {
            if node.level == 0 {
                f(entry.key, entry.a, entry.b);
            } else {
                self.for_each(entry.a, f);
            }
        }
    }

    /// Calls `f(key, a, b)` for every leaf entry with `low <= key < high`, in key order,
    /// visiting only the subtrees that may hold such keys.
    pub fn for_each_in(&self, root: u64, low: u64, high: u64, f: &mut dyn FnMut(u64, u64, u64)) {
        if root == 0 || low >= high {
            return;
        }
        let node = self.node(root);
        for (i, entry) in node.entries.iter().enumerate() {
            if node.level == 0 {
                if entry.key >= low && entry.key < high {
                    f(entry.key, entry.a, entry.b);
                }
                continue;
            }
            let next = node.entries.get(i + 1).map(|e| e.key);
            if entry.key >= high {
                break;
            }
            if next.is_some_and(|n| n <= low) {
                continue;
            }
            self.for_each_in(entry.a, low, high, f);
        }
    }

    /// How many nodes of the tree at `root` may hold keys with `low <= key < high`: what
    /// removing every such key can shadow, at most (each node is shadowed once per
    /// transaction).
    pub fn count_nodes_in(&self, root: u64, low: u64, high: u64) -> u64 {
        if root == 0 || low >= high {
            return 0;
        }
        let node = self.node(root);
        let mut count = 1;
        if node.level == 0 {
            return count;
        }
        for (i, entry) in node.entries.iter().enumerate() {
            let next = node.entries.get(i + 1).map(|e| e.key);
            if entry.key >= high {
                break;
            }
            if next.is_some_and(|n| n <= low) {
                continue;
            }
            count += self.count_nodes_in(entry.a, low, high);
        }
        count
    }

    /// Calls `f` with every leaf value of a mapping tree whose count removing the keys
    /// `low..high` may raise: shadowing a shared leaf (its own count or an ancestor's over 1)
    /// raises the count of every value in it. The leaves that may be shadowed are those
    /// holding keys of the range and, for a rebalance of the first of them, the rightmost leaf
    /// left of it under each node on the way down (a rebalance takes the right sibling, so
    /// only the range's first leaf looks left). Changes nothing.
    pub fn for_each_shadowed_shared_value(
        &self,
        root: u64,
        low: u64,
        high: u64,
        f: &mut dyn FnMut(u64),
    ) {
        self.shadowed_shared_values(root, low, high, false, f);
    }

    fn shadowed_shared_values(
        &self,
        loc: u64,
        low: u64,
        high: u64,
        shared_above: bool,
        f: &mut dyn FnMut(u64),
    ) {
        if loc == 0 || low >= high {
            return;
        }
        let node = self.node(loc);
        let shared = shared_above || self.meta.count(loc) > 1;
        if node.level == 0 {
            if shared {
                node.entries.iter().for_each(|entry| f(entry.a));
            }
            return;
        }
        let mut first = None;
        for (i, entry) in node.entries.iter().enumerate() {
            let next = node.entries.get(i + 1).map(|e| e.key);
            if entry.key >= high {
                break;
            }
            if next.is_some_and(|n| n <= low) {
                continue;
            }
            first.get_or_insert(i);
            self.shadowed_shared_values(entry.a, low, high, shared, f);
        }
        if let Some(left) = first.and_then(|i| i.checked_sub(1)) {
            // Its rightmost leaf: the keys from its last entry on.
            let child = node.entries[left].a;
            let last_key = self.node(child).entries.last().map_or(0, |e| e.key);
            self.shadowed_shared_values(child, last_key, last_key.saturating_add(1), shared, f);
        }
    }

    /// Calls `f` with every leaf value whose count [`Store::release`] of `loc` would lower:
    /// the values under the nodes the release frees (a shared node only loses a reference).
    /// Changes nothing, so a delete can learn what it costs before it starts.
    pub fn for_each_released_value(&self, loc: u64, f: &mut dyn FnMut(u64)) {
        if loc == 0 || self.meta.count(loc) > 1 {
            return;
        }
        let node = self.node(loc);
        for entry in &node.entries {
            if node.level == 0 {
                f(entry.a);
            } else {
                self.for_each_released_value(entry.a, f);
            }
        }
    }

    fn alloc_node(&mut self, mut node: Node) -> Result<u64, MetadataError> {
        let loc = self.meta.alloc()?;
        // Room for the one entry over capacity before a split, so a node never reallocates:
        // the in-memory bound per node is fixed (docs/format.md "Memory").
        node.entries
            .reserve_exact((METADATA_NODE_ENTRIES_MAX + 1).saturating_sub(node.entries.len()));
        self.nodes.insert(loc, node);
        self.dirty.insert(loc);
        Ok(loc)
    }

    /// A node whose count just reached 0: a shadow disappears, a committed node stays
    /// readable until the commit that frees it.
    fn drop_node(&mut self, loc: u64) {
        if self.dirty.remove(&loc) {
            self.nodes.remove(&loc);
        } else {
            self.released.push(loc);
        }
    }

    /// Adds a reference to a tree (a snapshot sharing a root).
    pub fn share(&mut self, root: u64) {
        if root != 0 {
            self.meta.inc(root);
        }
    }

    /// Makes `loc` writable in this transaction; returns the location to use instead.
    pub fn shadow(&mut self, kind: TreeKind, loc: u64) -> Result<u64, MetadataError> {
        let count = self.meta.count(loc);
        if count == 1 && self.dirty.contains(&loc) {
            return Ok(loc);
        }
        let node = self.node(loc).clone();
        if count > 1 {
            for entry in &node.entries {
                match (node.level, kind) {
                    (0, TreeKind::Mapping) => self.data.inc(entry.a),
                    _ => self.meta.inc(entry.a),
                }
            }
        }
        let copy = self.alloc_node(Node { checksum: 0, ..node })?;
        if self.meta.dec(loc) == 0 {
            self.drop_node(loc);
        }
        Ok(copy)
    }

    /// Drops one reference to the tree at `loc`; a node that reaches 0 drops its children,
    /// and `freed` hears of every data block whose count reached 0.
    pub fn release(&mut self, kind: TreeKind, loc: u64, freed: &mut dyn FnMut(u64)) {
        if loc == 0 || self.meta.dec(loc) > 0 {
            return;
        }
        let node = self.node(loc).clone();
        for entry in &node.entries {
            match (node.level, kind) {
                (0, TreeKind::Mapping) => {
                    if self.data.dec(entry.a) == 0 {
                        freed(entry.a);
                    }
                }
                (0, TreeKind::SpaceIndex) => {
                    self.meta.dec(entry.a);
                }
                _ => self.release(kind, entry.a, freed),
            }
        }
        self.drop_node(loc);
    }

    /// Inserts or replaces `key`; returns the replaced value. Leaf-value counts are the
    /// caller's.
    pub fn insert(
        &mut self,
        kind: TreeKind,
        root: &mut u64,
        key: u64,
        a: u64,
        b: u64,
    ) -> Result<Option<(u64, u64)>, MetadataError> {
        if *root == 0 {
            let entries = vec![Entry { key, a, b }];
            *root = self.alloc_node(Node { level: 0, entries, checksum: 0 })?;
            return Ok(None);
        }
        let top = self.shadow(kind, *root)?;
        *root = top;
        let old = self.insert_rec(kind, top, key, a, b)?;
        if self.node(top).entries.len() > METADATA_NODE_ENTRIES_MAX {
            // Grow a level: a new root whose only child is the old one, then split that.
            let node = self.node(top);
            let entries = vec![Entry { key: node.entries[0].key, a: top, b: 0 }];
            let level = node.level + 1;
            let new_root = self.alloc_node(Node { level, entries, checksum: 0 })?;
            self.split_child(new_root, 0)?;
            *root = new_root;
        }
        Ok(old)
    }

    fn insert_rec(
        &mut self,
        kind: TreeKind,
        loc: u64,
        key: u64,
        a: u64,
        b: u64,
    ) -> Result<Option<(u64, u64)>, MetadataError> {
        if self.node(loc).level == 0 {
            let node = self.node_mut(loc);
            return Ok(match node.entries.binary_search_by_key(&key, |e| e.key) {
                Ok(i) => {
                    let entry = &mut node.entries[i];
                    let old = (entry.a, entry.b);
                    entry.a = a;
                    entry.b = b;
                    Some(old)
                }
                Err(i) => {
                    node.entries.insert(i, Entry { key, a, b });
                    None
                }
            });
        }
        let i = child_index(&self.node(loc).entries, key).unwrap_or(0);
        let child = self.node(loc).entries[i].a;
        let shadow = self.shadow(kind, child)?;
        let node = self.node_mut(loc);
        node.entries[i].a = shadow;
        if key < node.entries[i].key {
            node.entries[i].key = key;
        }
        let old = self.insert_rec(kind, shadow, key, a, b)?;
        if self.node(shadow).entries.len() > METADATA_NODE_ENTRIES_MAX {
            self.relieve_overflow(kind, loc, i)?;
        }
        Ok(old)
    }

    /// Child `i` of `parent` holds one entry over capacity: move entries into a sibling with
    /// room (B*-tree style, so sequential fills leave full nodes, not half-full ones), or
    /// split it in two halves.
    fn relieve_overflow(
        &mut self,
        kind: TreeKind,
        parent: u64,
        i: usize,
    ) -> Result<(), MetadataError> {
        let child = self.node(parent).entries[i].a;
        let spare = self.node(child).entries.len().saturating_sub(METADATA_NODE_ENTRIES_MIN);
        let room_of = |store: &Store, sibling: usize| -> usize {
            let loc = store.node(parent).entries[sibling].a;
            METADATA_NODE_ENTRIES_MAX.saturating_sub(store.node(loc).entries.len()).min(spare)
        };
        if i > 0 && room_of(self, i - 1) > 0 {
            let room = room_of(self, i - 1);
            let left = self.shadow(kind, self.node(parent).entries[i - 1].a)?;
            self.node_mut(parent).entries[i - 1].a = left;
            let moved: Vec<Entry> = self.node_mut(child).entries.drain(..room).collect();
            self.node_mut(left).entries.extend(moved);
            let first = self.node(child).entries[0].key;
            self.node_mut(parent).entries[i].key = first;
            return Ok(());
        }
        if i + 1 < self.node(parent).entries.len() && room_of(self, i + 1) > 0 {
            let room = room_of(self, i + 1);
            let right = self.shadow(kind, self.node(parent).entries[i + 1].a)?;
            self.node_mut(parent).entries[i + 1].a = right;
            let len = self.node(child).entries.len();
            let moved: Vec<Entry> = self.node_mut(child).entries.drain(len - room..).collect();
            self.node_mut(right).entries.splice(0..0, moved);
            let first = self.node(right).entries[0].key;
            self.node_mut(parent).entries[i + 1].key = first;
            return Ok(());
        }
        self.split_child(parent, i)
    }

    /// Splits child `i` of `parent` into two halves; the parent gains an entry.
    fn split_child(&mut self, parent: u64, i: usize) -> Result<(), MetadataError> {
        let child = self.node(parent).entries[i].a;
        let node = self.node_mut(child);
        let level = node.level;
        let half = node.entries.len() / 2;
        let right_entries = node.entries.split_off(half);
        let separator = right_entries[0].key;
        let right = self.alloc_node(Node { level, entries: right_entries, checksum: 0 })?;
        self.node_mut(parent).entries.insert(i + 1, Entry { key: separator, a: right, b: 0 });
        Ok(())
    }

    /// Removes `key`; returns its value. Nothing is shadowed when the key is absent.
    pub fn remove(
        &mut self,
        kind: TreeKind,
        root: &mut u64,
        key: u64,
    ) -> Result<Option<(u64, u64)>, MetadataError> {
        if self.lookup(*root, key).is_none() {
            return Ok(None);
        }
        let top = self.shadow(kind, *root)?;
        *root = top;
        let old = self.remove_rec(kind, top, key)?;
        loop {
            let node = self.node(*root);
            let (level, len) = (node.level, node.entries.len());
            if len == 0 {
                self.release(kind, *root, &mut |_| {});
                *root = 0;
                break;
            }
            if level > 0 && len == 1 {
                // The only child's reference moves from this root to the root's owner: take
                // it first, so releasing the old root (shared or not) leaves the child alive.
                let child = node.entries[0].a;
                self.meta.inc(child);
                self.release(kind, *root, &mut |_| {});
                *root = child;
                continue;
            }
            break;
        }
        Ok(old)
    }

    fn remove_rec(
        &mut self,
        kind: TreeKind,
        loc: u64,
        key: u64,
    ) -> Result<Option<(u64, u64)>, MetadataError> {
        if self.node(loc).level == 0 {
            let node = self.node_mut(loc);
            return Ok(match node.entries.binary_search_by_key(&key, |e| e.key) {
                Ok(i) => {
                    let entry = node.entries.remove(i);
                    Some((entry.a, entry.b))
                }
                Err(_) => None,
            });
        }
        let Some(i) = child_index(&self.node(loc).entries, key) else {
            return Ok(None);
        };
        let child = self.node(loc).entries[i].a;
        let shadow = self.shadow(kind, child)?;
        self.node_mut(loc).entries[i].a = shadow;
        let old = self.remove_rec(kind, shadow, key)?;
        if self.node(shadow).entries.len() < METADATA_NODE_ENTRIES_MIN {
            self.rebalance(kind, loc, i)?;
        }
        Ok(old)
    }

    /// Merges child `i` of `parent` with a sibling, or moves entries between them.
    fn rebalance(&mut self, kind: TreeKind, parent: u64, i: usize) -> Result<(), MetadataError> {
        let len = self.node(parent).entries.len();
        if len < 2 {
            return Ok(());
        }
        let (left_index, right_index) = if i + 1 < len { (i, i + 1) } else { (i - 1, i) };
        let left = self.shadow(kind, self.node(parent).entries[left_index].a)?;
        self.node_mut(parent).entries[left_index].a = left;
        let right = self.shadow(kind, self.node(parent).entries[right_index].a)?;
        self.node_mut(parent).entries[right_index].a = right;
        let left_len = self.node(left).entries.len();
        let right_len = self.node(right).entries.len();
        let total = left_len + right_len;
        if total <= METADATA_NODE_ENTRIES_MAX {
            let moved = std::mem::take(&mut self.node_mut(right).entries);
            self.node_mut(left).entries.extend(moved);
            self.node_mut(parent).entries.remove(right_index);
            self.meta.dec(right);
            self.drop_node(right);
            return Ok(());
        }
        let half = total / 2;
        if left_len < half {
            let moved: Vec<Entry> = self.node_mut(right).entries.drain(..half - left_len).collect();
            self.node_mut(left).entries.extend(moved);
        } else {
            let moved: Vec<Entry> = self.node_mut(left).entries.drain(half..).collect();
            self.node_mut(right).entries.splice(0..0, moved);
        }
        let first = self.node(right).entries[0].key;
        self.node_mut(parent).entries[right_index].key = first;
        Ok(())
    }

    /// Encodes every dirty node under `root` bottom-up (children's checksums into their
    /// parents), appending the blocks to `out`; returns the root's checksum.
    pub fn finalize(
        &mut self,
        kind: TreeKind,
        root: u64,
        generation: u64,
        done: &mut HashSet<u64>,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> u32 {
        if root == 0 {
            return 0;
        }
        if !self.dirty.contains(&root) || done.contains(&root) {
            return self.node(root).checksum;
        }
        let node = self.node(root).clone();
        let mut entries = node.entries;
        if node.level > 0 {
            for entry in &mut entries {
                entry.b = u64::from(self.finalize(kind, entry.a, generation, done, out));
            }
        }
        let mut bytes = encode_node(kind, root, generation, node.level, &entries);
        let checksum = codec::seal(&mut bytes, kind.block_type());
        // The pair of the checks open makes: what is written must read back as itself.
        debug_assert!(
            codec::verify_header(&bytes, kind.block_type(), root, Some(checksum), generation)
                .is_ok()
                && decode_node(&bytes, root).is_ok_and(|n| n.entries == entries),
            "metadata block {root} does not decode to what was encoded"
        );
        let stored = self.nodes.get_mut(&root).expect("a live node is in memory");
        stored.entries = entries;
        stored.checksum = checksum;
        done.insert(root);
        out.push((root, bytes));
        checksum
    }

    /// After the commit is durable: shadows become committed nodes, released nodes go.
    pub fn commit_done(&mut self) {
        self.dirty.clear();
        for loc in std::mem::take(&mut self.released) {
            if self.meta.count(loc) == 0 {
                self.nodes.remove(&loc);
            }
        }
        self.meta.commit_done();
        self.data.commit_done();
    }

    pub fn abort(&mut self) {
        for loc in self.dirty.drain() {
            self.nodes.remove(&loc);
        }
        self.released.clear();
        self.meta.abort();
        self.data.abort();
    }
}

/// Node layout: header; @24 entry count u16; @26 level u8; @27..32 zero; entries from @32,
/// 24 bytes each (key u64, a u64, b u64).
pub fn encode_node(
    kind: TreeKind,
    block: u64,
    generation: u64,
    level: u8,
    entries: &[Entry],
) -> Vec<u8> {
    assert!(entries.len() <= METADATA_NODE_ENTRIES_MAX, "nodes split before they overflow");
    let mut bytes = vec![0u8; METADATA_BLOCK_BYTES];
    codec::put_header(&mut bytes, kind.block_type(), block, generation);
    codec::put_u16(&mut bytes, 24, entries.len() as u16);
    bytes[26] = level;
    for (i, entry) in entries.iter().enumerate() {
        let at = HEADER_BYTES + ENTRY_BYTES * i;
        codec::put_u64(&mut bytes, at, entry.key);
        codec::put_u64(&mut bytes, at + 8, entry.a);
        codec::put_u64(&mut bytes, at + 16, entry.b);
    }
    bytes
}

/// Decodes a node whose header was verified: entry count within capacity, level within the
/// depth bound, keys strictly increasing, internal checksums within u32.
pub fn decode_node(bytes: &[u8], block: u64) -> Result<Node, MetadataError> {
    let reader = Reader::new(bytes, block);
    let count = usize::from(reader.u16(24)?);
    let level = reader.u8(26)?;
    if count > METADATA_NODE_ENTRIES_MAX {
        return Err(reader.corrupt("entry count over capacity"));
    }
    if count == 0 {
        return Err(reader.corrupt("empty node"));
    }
    if usize::from(level) >= METADATA_BTREE_DEPTH_MAX {
        return Err(reader.corrupt("level over the depth bound"));
    }
    let mut entries = Vec::with_capacity(METADATA_NODE_ENTRIES_MAX + 1);
    for i in 0..count {
        let at = HEADER_BYTES + ENTRY_BYTES * i;
        let entry = Entry { key: reader.u64(at)?, a: reader.u64(at + 8)?, b: reader.u64(at + 16)? };
        if let Some(previous) = entries.last().map(|e: &Entry| e.key)
            && previous >= entry.key
        {
            return Err(reader.corrupt("keys out of order"));
        }
        if level > 0 && u32::try_from(entry.b).is_err() {
            return Err(reader.corrupt("child checksum over 32 bits"));
        }
        entries.push(entry);
    }
    let checksum = reader.u32(0)?;
    Ok(Node { level, entries, checksum })
}
