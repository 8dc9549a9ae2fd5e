//! Tests of the metadata layer: the btree against a `BTreeMap` model (snapshots, commits,
//! aborts) with counts recomputed after every step, round trips through commit plans written
//! into an in-memory image, decoders fed arbitrary bytes, `check` on clean and corrupted
//! images, snapshot cost independent of size, crash consistency, and the golden superblock.

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;

use super::btree::{self, TreeKind};
use super::space;
use super::*;
use crate::thin::types::{DiscardMode, OutOfSpaceMode};

/// A metadata region in memory: block number → bytes (absent blocks read as zeroes).
#[derive(Clone, Default)]
pub(super) struct Image {
    blocks: HashMap<u64, Vec<u8>>,
}

impl Image {
    fn write(&mut self, block: MetaBlock, bytes: &[u8]) {
        assert_eq!(bytes.len(), METADATA_BLOCK_BYTES);
        self.blocks.insert(block.0, bytes.to_vec());
    }

    fn apply(&mut self, plan: &CommitPlan) {
        for (block, bytes) in &plan.blocks {
            self.write(*block, bytes);
        }
        self.write(plan.superblock.0, &plan.superblock.1);
    }

    fn reader(&self) -> impl FnMut(MetaBlock, &mut [u8]) -> std::io::Result<()> + '_ {
        move |block, buf| {
            match self.blocks.get(&block.0) {
                Some(bytes) => buf.copy_from_slice(bytes),
                None => buf.fill(0),
            }
            Ok(())
        }
    }

    fn open(&self) -> Result<PoolMetadata, MetadataError> {
        PoolMetadata::open(&mut self.reader())
    }

    fn check(&self) -> Result<CheckReport, Vec<String>> {
        check(&mut self.reader())
    }
}

fn pool_record() -> PoolRecord {
    PoolRecord {
        uuid: [7; 16],
        name: "pool0".to_string(),
        settings: PoolSettings {
            discard: DiscardMode::Passdown,
            zero_new_blocks: true,
            out_of_space: OutOfSpaceMode::Error,
            no_space_timeout_s: 60,
            low_water_mark: 10,
            commit_interval_ms: 1000,
        },
        needs_check: false,
        data_bdev_uuid: [0; 16],
    }
}

fn layout(metadata_blocks: u64, data_blocks: u64, data_block_bytes: u32) -> Layout {
    Layout {
        metadata_blocks,
        data_block_bytes,
        data_blocks,
        data_blocks_max: data_blocks * 4,
        data_offset_bytes: metadata_blocks * 4096,
        metadata_separate: false,
    }
}

fn commit(md: &mut PoolMetadata, image: &mut Image) -> CommitPlan {
    let plan = md.begin_commit();
    image.apply(&plan);
    md.commit_done();
    plan
}

/// Everything observable, for comparing a pool with its reopened image.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    layout: Layout,
    pool: PoolRecord,
    time: u64,
    transaction_id: u64,
    volumes: Vec<VolumeRecord>,
    mappings: Vec<Vec<(VirtBlock, Mapping)>>,
    counts: Vec<(u64, u32)>,
    metadata_free_blocks: u64,
}

fn fingerprint(md: &PoolMetadata) -> Fingerprint {
    let volumes: Vec<VolumeRecord> = md.volumes().cloned().collect();
    let mappings = volumes
        .iter()
        .map(|v| {
            let mut all = Vec::new();
            md.for_each_mapping(v.id, &mut |vb, m| all.push((vb, m)));
            all
        })
        .collect();
    let counts = (0..md.layout().data_blocks)
        .map(|b| (b, md.data_count(DataBlock(b))))
        .filter(|(_, c)| *c > 0)
        .collect();
    Fingerprint {
        layout: *md.layout(),
        pool: md.pool().clone(),
        time: md.time(),
        transaction_id: md.transaction_id(),
        volumes,
        mappings,
        counts,
        metadata_free_blocks: md.metadata_free_blocks(),
    }
}

/// Recomputes every reference from the in-memory trees (each shared subtree once) and
/// compares with the counts the store keeps (I1 on the open state), and node fill.
fn verify_counts(md: &PoolMetadata) {
    let store = &md.store;
    let mut data_refs: HashMap<u64, u32> = HashMap::new();
    let mut meta_refs: HashMap<u64, u32> = HashMap::new();
    let mut seen = HashSet::new();
    fn visit(
        store: &btree::Store,
        kind: TreeKind,
        loc: u64,
        is_root: bool,
        seen: &mut HashSet<u64>,
        data_refs: &mut HashMap<u64, u32>,
        meta_refs: &mut HashMap<u64, u32>,
    ) {
        *meta_refs.entry(loc).or_default() += 1;
        if !seen.insert(loc) {
            return;
        }
        let node = store.node(loc);
        assert!(!node.entries.is_empty(), "empty node {loc}");
        if !is_root {
            assert!(node.entries.len() >= crate::limits::METADATA_NODE_ENTRIES_MIN, "under-full");
        }
        assert!(node.entries.windows(2).all(|w| w[0].key < w[1].key), "key order");
        for entry in &node.entries {
            if node.level > 0 {
                assert_eq!(store.node(entry.a).level + 1, node.level);
                visit(store, kind, entry.a, false, seen, data_refs, meta_refs);
            } else if kind == TreeKind::Mapping {
                *data_refs.entry(entry.a).or_default() += 1;
            }
        }
    }
    for stored in md.top.volumes.values() {
        if stored.root.loc != 0 {
            let loc = stored.root.loc;
            visit(store, TreeKind::Mapping, loc, true, &mut seen, &mut data_refs, &mut meta_refs);
        }
    }
    for block in 0..md.layout().data_blocks {
        let expected = data_refs.get(&block).copied().unwrap_or(0);
        assert_eq!(store.data.count(block), expected, "data block {block} count");
    }
    let space_root = md.top.space_root.loc;
    if space_root != 0 {
        visit(
            store,
            TreeKind::SpaceIndex,
            space_root,
            true,
            &mut seen,
            &mut data_refs,
            &mut meta_refs,
        );
        store.for_each(space_root, &mut |_, count_block, _| {
            *meta_refs.entry(count_block).or_default() += 1;
        });
    }
    for block in md.top.volume_blocks.iter().chain([0, 1].iter()) {
        *meta_refs.entry(*block).or_default() += 1;
    }
    // Every metadata block's count is its number of parents: no leak, no dangling reference.
    for loc in 0..md.layout().metadata_blocks {
        let expected = meta_refs.get(&loc).copied().unwrap_or(0);
        assert_eq!(store.meta.count(loc), expected, "metadata block {loc} count");
    }
    let free = (0..md.layout().metadata_blocks)
        .filter(|b| store.meta.count(*b) == 0 && store.meta.committed_count(*b) == 0)
        .count();
    assert_eq!(md.metadata_free_blocks(), free as u64);
    // Only live nodes, and committed nodes released in the open transaction, stay in memory.
    for loc in store.nodes.keys() {
        assert!(
            seen.contains(loc) || store.released.contains(loc),
            "node {loc} in memory but unreachable"
        );
    }
    let used = (0..md.layout().data_blocks).filter(|b| store.data.count(*b) > 0).count();
    assert_eq!(md.used_data_blocks(), used as u64);
}

/// The owner's allocation rule for data blocks: free in the open and committed state.
fn alloc_data(md: &PoolMetadata, taken: &HashSet<u64>) -> Option<DataBlock> {
    (0..md.layout().data_blocks).map(DataBlock).find(|b| {
        md.data_count(*b) == 0 && md.data_count_committed(*b) == 0 && !taken.contains(&b.0)
    })
}

type Model = BTreeMap<VolumeId, BTreeMap<u64, Mapping>>;

#[derive(Clone, Debug)]
enum Op {
    Create,
    Snapshot(usize),
    Delete(usize),
    InsertRange(usize, u64, u64),
    RemoveRange(usize, u64, u64),
    Overwrite(usize, u64),
    Shrink(usize, u64),
    Commit,
    Abort,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Create),
        2 => any::<usize>().prop_map(Op::Snapshot),
        1 => any::<usize>().prop_map(Op::Delete),
        6 => (any::<usize>(), 0..3000u64, 1..400u64).prop_map(|(v, s, n)| Op::InsertRange(v, s, n)),
        4 => (any::<usize>(), 0..3000u64, 1..400u64).prop_map(|(v, s, n)| Op::RemoveRange(v, s, n)),
        4 => (any::<usize>(), 0..3000u64).prop_map(|(v, k)| Op::Overwrite(v, k)),
        1 => (any::<usize>(), 0..3400u64).prop_map(|(v, k)| Op::Shrink(v, k)),
        3 => Just(Op::Commit),
        1 => Just(Op::Abort),
    ]
}

const VOLUME_BYTES: u64 = 4096 * 4096;

fn pick(model: &Model, index: usize) -> Option<VolumeId> {
    if model.is_empty() { None } else { model.keys().nth(index % model.len()).copied() }
}

fn compare(md: &PoolMetadata, model: &Model) {
    let ids: Vec<VolumeId> = md.volumes().map(|v| v.id).collect();
    assert_eq!(ids, model.keys().copied().collect::<Vec<_>>());
    for (id, mappings) in model {
        let mut all = BTreeMap::new();
        md.for_each_mapping(*id, &mut |vb, m| {
            all.insert(vb.0, m);
        });
        assert_eq!(&all, mappings, "{id}");
        assert_eq!(md.volume(*id).unwrap().mapped_blocks, mappings.len() as u64);
        for (key, mapping) in mappings.iter().take(5) {
            assert_eq!(md.lookup(*id, VirtBlock(*key)), Some(*mapping));
        }
        for (low, high) in [(0, 1), (100, 700), (1500, 1501), (2000, u64::MAX), (5, 3)] {
            let mut found = Vec::new();
            md.for_each_mapping_in(*id, VirtBlock(low), VirtBlock(high), &mut |vb, m| {
                found.push((vb.0, m));
            });
            let expected: Vec<(u64, Mapping)> = if low < high {
                mappings.range(low..high).map(|(k, m)| (*k, *m)).collect()
            } else {
                Vec::new()
            };
            assert_eq!(found, expected, "{id} range {low}..{high}");
        }
    }
}

fn run_ops(ops: &[Op]) {
    let mut md = PoolMetadata::format(layout(8192, 40_000, 4096), pool_record()).unwrap();
    let mut image = Image::default();
    commit(&mut md, &mut image);
    let mut model: Model = BTreeMap::new();
    let mut committed_model = model.clone();
    let mut committed_fingerprint = fingerprint(&image.open().unwrap());
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Create => {
                let name = format!("v{step}");
                let id = md.create_volume([1; 16], &name, VOLUME_BYTES).unwrap();
                model.insert(id, BTreeMap::new());
            }
            Op::Snapshot(i) => {
                let Some(origin) = pick(&model, *i) else { continue };
                let id = md.snapshot(origin, [2; 16], &format!("s{step}")).unwrap();
                model.insert(id, model[&origin].clone());
                assert_eq!(md.volume(id).unwrap().snapshot_time, md.time());
                assert_eq!(md.volume(origin).unwrap().snapshot_time, md.time());
            }
            Op::Delete(i) => {
                let Some(id) = pick(&model, *i) else { continue };
                let mut freed = Vec::new();
                md.delete_volume(id, &mut |b| freed.push(b)).unwrap();
                model.remove(&id);
                for block in freed {
                    assert_eq!(md.data_count(block), 0);
                    let still =
                        model.values().flat_map(|m| m.values()).any(|m| m.data_block == block);
                    assert!(!still, "{block} freed but still mapped");
                }
            }
            Op::InsertRange(i, start, len) => {
                let Some(id) = pick(&model, *i) else { continue };
                let mut taken = HashSet::new();
                for key in *start..start + len {
                    let Some(block) = alloc_data(&md, &taken) else { break };
                    taken.insert(block.0);
                    let mapping = Mapping { data_block: block, time: md.time() };
                    let freed = md.insert(id, VirtBlock(key), mapping).unwrap();
                    let old = model.get_mut(&id).unwrap().insert(key, mapping);
                    if let Some(block) = freed {
                        assert_eq!(old.map(|m| m.data_block), Some(block));
                    }
                }
            }
            Op::RemoveRange(i, start, len) => {
                let Some(id) = pick(&model, *i) else { continue };
                for key in *start..start + len {
                    let removed = md.remove(id, VirtBlock(key)).unwrap();
                    let old = model.get_mut(&id).unwrap().remove(&key);
                    match (removed, old) {
                        (Removed::NotMapped, None) => {}
                        (Removed::Removed { mapping, now_free }, Some(old)) => {
                            assert_eq!(mapping, old);
                            assert_eq!(now_free, md.data_count(mapping.data_block) == 0);
                        }
                        other => panic!("remove {key}: {other:?}"),
                    }
                }
            }
            Op::Overwrite(i, key) => {
                let Some(id) = pick(&model, *i) else { continue };
                let result = md.prepare_overwrite(id, VirtBlock(*key)).unwrap();
                let expected = model[&id].get(key).copied();
                assert_eq!(result.map(|(m, _)| m), expected);
                let Some((mapping, shared)) = result else { continue };
                // Shared: no other volume's mapping to the block may be missed.
                let others = model
                    .iter()
                    .filter(|(other, _)| **other != id)
                    .any(|(_, m)| m.values().any(|x| x.data_block == mapping.data_block));
                if others {
                    assert!(shared, "a block another volume maps must be reported shared");
                }
                if shared {
                    let Some(block) = alloc_data(&md, &HashSet::new()) else { continue };
                    let new = Mapping { data_block: block, time: md.time() };
                    md.insert(id, VirtBlock(*key), new).unwrap();
                    model.get_mut(&id).unwrap().insert(*key, new);
                } else {
                    md.refresh_time(id, VirtBlock(*key), md.time()).unwrap();
                    model.get_mut(&id).unwrap().get_mut(key).unwrap().time = md.time();
                }
            }
            Op::Shrink(i, blocks) => {
                let Some(id) = pick(&model, *i) else { continue };
                md.resize_volume(id, blocks * 4096, &mut |_| {}).unwrap();
                model.get_mut(&id).unwrap().retain(|k, _| k < blocks);
                assert_eq!(md.volume(id).unwrap().size_bytes, blocks * 4096);
                md.resize_volume(id, VOLUME_BYTES, &mut |_| {}).unwrap();
            }
            Op::Commit => {
                let plan = md.begin_commit();
                // A crash with some of the blocks written and no superblock: the last commit.
                let mut crashed = image.clone();
                for (block, bytes) in plan.blocks.iter().skip(step % 2).step_by(2) {
                    crashed.write(*block, bytes);
                }
                assert_eq!(fingerprint(&crashed.open().unwrap()), committed_fingerprint);
                image.apply(&plan);
                md.commit_done();
                committed_model = model.clone();
                let reopened = image.open().unwrap();
                committed_fingerprint = fingerprint(&reopened);
                assert_eq!(committed_fingerprint, fingerprint(&md));
                image.check().unwrap();
            }
            Op::Abort => {
                md.abort();
                model = committed_model.clone();
            }
        }
        compare(&md, &model);
        verify_counts(&md);
    }
    commit(&mut md, &mut image);
    let report = image.check().unwrap();
    assert_eq!(report.volumes, model.len() as u64);
    assert_eq!(report.mappings, model.values().map(|m| m.len() as u64).sum::<u64>());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn btree_and_pool_match_the_model(ops in prop::collection::vec(op_strategy(), 1..40)) {
        run_ops(&ops);
    }

    #[test]
    fn decoders_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..4200),
        block in 0..4u64,
    ) {
        let _ = btree::decode_node(&bytes, block);
        let _ = superblock::decode(&bytes, block);
        let _ = volumes::decode_table_block(&bytes, block);
        let _ = volumes::decode_index(&bytes, block);
        let _ = space::decode_count_block(&bytes, block, 0);
        let _ = codec::verify_header(&bytes, BlockType::MappingNode, block, None, 5);
    }

    /// Random damage to a valid image: open and check report it or succeed, never panic.
    #[test]
    fn damaged_images_never_panic(
        flips in prop::collection::vec((0usize..64, 0usize..4096, any::<u8>()), 1..8),
    ) {
        let (image, _) = sample_image();
        let mut damaged = image.clone();
        let mut keys: Vec<u64> = damaged.blocks.keys().copied().collect();
        keys.sort();
        for (which, offset, value) in flips {
            let key = keys[which % keys.len()];
            damaged.blocks.get_mut(&key).unwrap()[offset] ^= value | 1;
        }
        let _ = damaged.open();
        let _ = damaged.check();
    }
}

/// A committed pool with two volumes (one a snapshot diverged by writes) and ~600 mappings.
fn sample_image() -> (Image, PoolMetadata) {
    let mut md = PoolMetadata::format(layout(2048, 4096, 4096), pool_record()).unwrap();
    let mut image = Image::default();
    let id = md.create_volume([1; 16], "a", VOLUME_BYTES).unwrap();
    for key in 0..400u64 {
        let mapping = Mapping { data_block: DataBlock(key * 2), time: 0 };
        md.insert(id, VirtBlock(key), mapping).unwrap();
    }
    commit(&mut md, &mut image);
    let snap = md.snapshot(id, [2; 16], "b").unwrap();
    for key in 100..300u64 {
        let mapping = Mapping { data_block: DataBlock(key * 2 + 1), time: md.time() };
        md.insert(snap, VirtBlock(key), mapping).unwrap();
    }
    commit(&mut md, &mut image);
    (image, md)
}

#[test]
fn deep_tree_matches_the_model() {
    let mut md = PoolMetadata::format(layout(8192, 60_000, 4096), pool_record()).unwrap();
    let id = md.create_volume([1; 16], "deep", 1 << 40).unwrap();
    let mut model = BTreeMap::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut image = Image::default();
    for round in 0..3 {
        for i in 0..16_000u64 {
            let key = next() % 50_000;
            let block = DataBlock(round * 16_000 + i);
            if model.contains_key(&key) {
                continue;
            }
            md.insert(id, VirtBlock(key), Mapping { data_block: block, time: 0 }).unwrap();
            model.insert(key, block);
        }
        let doomed: Vec<u64> = model.keys().copied().filter(|_| next() % 3 != 0).collect();
        for key in doomed {
            assert!(matches!(md.remove(id, VirtBlock(key)).unwrap(), Removed::Removed { .. }));
            model.remove(&key);
        }
        commit(&mut md, &mut image);
        let mut all = BTreeMap::new();
        md.for_each_mapping(id, &mut |vb, m| {
            all.insert(vb.0, m.data_block);
        });
        assert_eq!(all, model);
        for _ in 0..20 {
            let (a, b) = (next() % 52_000, next() % 52_000);
            let (low, high) = (a.min(b), a.max(b));
            let mut found = Vec::new();
            md.for_each_mapping_in(id, VirtBlock(low), VirtBlock(high), &mut |vb, m| {
                found.push((vb.0, m.data_block));
            });
            let expected: Vec<(u64, DataBlock)> =
                model.range(low..high).map(|(k, b)| (*k, *b)).collect();
            assert_eq!(found, expected);
        }
        verify_counts(&md);
        image.check().unwrap();
    }
    let root = md.top.volumes[&id].root.loc;
    assert!(md.store.node(root).level >= 1);
}

#[test]
fn round_trip_through_an_image() {
    let (image, md) = sample_image();
    let reopened = image.open().unwrap();
    assert_eq!(fingerprint(&reopened), fingerprint(&md));
    let report = image.check().unwrap();
    assert_eq!(report.volumes, 2);
    assert_eq!(report.mappings, 800);
    assert_eq!(report.data_blocks_used, 600);
    assert_eq!(PoolMetadata::probe(&mut image.reader()).unwrap().unwrap().2, 2);
}

#[test]
fn empty_and_deleted_pools_are_not_found() {
    let image = Image::default();
    assert_eq!(image.open().err(), Some(MetadataError::NotAPool));
    assert_eq!(PoolMetadata::probe(&mut image.reader()).unwrap(), None);
    let (mut image, _) = sample_image();
    for (block, bytes) in PoolMetadata::invalidate_superblocks() {
        image.write(block, &bytes);
    }
    assert_eq!(image.open().err(), Some(MetadataError::NotAPool));
    assert!(image.check().is_err());
}

#[test]
fn check_fails_on_a_flipped_byte() {
    let (image, md) = sample_image();
    let leaf = md.top.volumes.values().next().unwrap().root.loc;
    for block in [leaf, md.top.volume_table.loc, md.top.space_root.loc, 0, 1] {
        let mut damaged = image.clone();
        damaged.blocks.get_mut(&block).unwrap()[100] ^= 0x40;
        if block == 0 || block == 1 {
            // The other slot still holds a valid (older) superblock: open falls back only if
            // the newest is damaged; damage to the older one changes nothing.
            let newest = superblock::slot(md.transaction_id());
            if block == newest {
                assert_eq!(damaged.open().unwrap().transaction_id(), md.transaction_id() - 1);
            } else {
                damaged.check().unwrap();
            }
            continue;
        }
        let problems = damaged.check().unwrap_err();
        assert!(problems[0].contains(&format!("metadata block {block}")), "{problems:?}");
        assert!(damaged.open().is_err());
    }
}

#[test]
fn check_fails_on_a_stale_block() {
    // Commit 1 writes volume a's tree; commit 2 rewrites it elsewhere. Putting commit 1's copy
    // of a node back where commit 2's node lives is self-consistent but stale.
    let mut md = PoolMetadata::format(layout(2048, 4096, 4096), pool_record()).unwrap();
    let mut image = Image::default();
    let id = md.create_volume([1; 16], "a", VOLUME_BYTES).unwrap();
    md.insert(id, VirtBlock(1), Mapping { data_block: DataBlock(1), time: 0 }).unwrap();
    commit(&mut md, &mut image);
    let first_root = md.top.volumes[&id].root.loc;
    let first_bytes = image.blocks[&first_root].clone();
    md.insert(id, VirtBlock(2), Mapping { data_block: DataBlock(2), time: 0 }).unwrap();
    commit(&mut md, &mut image);
    let second_root = md.top.volumes[&id].root.loc;
    assert_ne!(first_root, second_root);
    // Re-home the old block at the new location with a valid checksum: only the parent's
    // stored checksum (and generation) can tell.
    let mut stale = first_bytes;
    codec::put_u64(&mut stale, 8, second_root);
    codec::seal(&mut stale, BlockType::MappingNode);
    let mut damaged = image.clone();
    damaged.write(MetaBlock(second_root), &stale);
    let problems = damaged.check().unwrap_err();
    assert!(problems[0].contains("checksum differs from the parent"), "{problems:?}");
}

#[test]
fn check_fails_on_a_count_off_by_one() {
    let (_, mut md) = sample_image();
    let before = md.data_count(DataBlock(4));
    assert!(before > 0);
    md.store.data.inc(4);
    md.dirty = true;
    let mut image = Image::default();
    let (good, _) = sample_image();
    image.blocks = good.blocks.clone();
    commit(&mut md, &mut image);
    let problems = image.check().unwrap_err();
    let expected = format!("data block 4: committed count {}, references {before}", before + 1);
    assert_eq!(problems, vec![expected]);
    assert!(image.open().is_err());
}

#[test]
fn check_fails_on_wrong_mapped_blocks() {
    let (_, mut md) = sample_image();
    let (image, _) = sample_image();
    let mut image = image;
    let id = *md.top.volumes.keys().next().unwrap();
    md.top.volumes.get_mut(&id).unwrap().record.mapped_blocks += 1;
    md.dirty = true;
    commit(&mut md, &mut image);
    let problems = image.check().unwrap_err();
    assert!(problems[0].contains("mapped_blocks 401 but 400 mappings"), "{problems:?}");
}

#[test]
fn partial_commit_opens_the_previous_state() {
    let (image, mut md) = sample_image();
    let before = fingerprint(&md);
    let id = *md.top.volumes.keys().next().unwrap();
    for key in 1000..1300u64 {
        md.insert(id, VirtBlock(key), Mapping { data_block: DataBlock(key + 2000), time: 5 })
            .unwrap();
    }
    md.remove(id, VirtBlock(3)).unwrap();
    let plan = md.begin_commit();
    assert!(plan.blocks.len() > 3);
    for cut in [0, 1, plan.blocks.len() / 2, plan.blocks.len()] {
        let mut crashed = image.clone();
        for (block, bytes) in plan.blocks.iter().take(cut) {
            assert!(*block != MetaBlock(0) && *block != MetaBlock(1));
            crashed.write(*block, bytes);
        }
        let reopened = crashed.open().unwrap();
        assert_eq!(fingerprint(&reopened), before, "cut after {cut} blocks");
        crashed.check().unwrap();
    }
    // A torn superblock write (garbage in the new slot) falls back too.
    let mut torn = image.clone();
    for (block, bytes) in &plan.blocks {
        torn.write(*block, bytes);
    }
    let mut garbage = plan.superblock.1.clone();
    garbage[200] ^= 1;
    torn.write(plan.superblock.0, &garbage);
    assert_eq!(fingerprint(&torn.open().unwrap()), before);
    // The whole plan is the new state.
    let mut done = image.clone();
    done.apply(&plan);
    md.commit_done();
    assert_eq!(fingerprint(&done.open().unwrap()), fingerprint(&md));
    // An abort after a failed commit returns to the previous state too.
    let (_, mut again) = sample_image();
    again.insert(id, VirtBlock(999), Mapping { data_block: DataBlock(3999), time: 2 }).unwrap();
    let _ = again.begin_commit();
    again.abort();
    assert_eq!(fingerprint(&again), before);
}

#[test]
fn abort_restores_counts_and_free_space() {
    let (_, mut md) = sample_image();
    let before = fingerprint(&md);
    let snap = md.snapshot(VolumeId(1), [3; 16], "c").unwrap();
    md.insert(snap, VirtBlock(7), Mapping { data_block: DataBlock(3001), time: 9 }).unwrap();
    md.delete_volume(VolumeId(2), &mut |_| {}).unwrap();
    md.remove(VolumeId(1), VirtBlock(8)).unwrap();
    md.grow_data(5000).unwrap();
    md.abort();
    assert_eq!(fingerprint(&md), before);
    verify_counts(&md);
}

#[test]
fn prepare_overwrite_sees_sharing_broken_in_the_open_transaction() {
    let (_, mut md) = sample_image();
    // Volume 2 (snapshot) shares blocks 0..100 with volume 1 in the committed state.
    md.delete_volume(VolumeId(2), &mut |_| {}).unwrap();
    let (mapping, shared) = md.prepare_overwrite(VolumeId(1), VirtBlock(5)).unwrap().unwrap();
    assert_eq!(mapping.data_block, DataBlock(10));
    assert_eq!(md.data_count(mapping.data_block), 1);
    assert!(shared, "a crash would bring the snapshot's reference back");
    let mut image = Image::default();
    commit(&mut md, &mut image);
    let (_, shared) = md.prepare_overwrite(VolumeId(1), VirtBlock(5)).unwrap().unwrap();
    assert!(!shared);
}

/// Metadata blocks a snapshot of a fully mapped volume writes and allocates.
fn snapshot_cost(volume_bytes: u64) -> (usize, u64) {
    let block_bytes = 64 << 10;
    let blocks = volume_bytes / block_bytes;
    let layout = Layout::on_data_device(volume_bytes + (64 << 20), 64 << 10, 0).unwrap();
    let mut md = PoolMetadata::format(layout, pool_record()).unwrap();
    let mut image = Image::default();
    let id = md.create_volume([1; 16], "full", volume_bytes).unwrap();
    for key in 0..blocks {
        md.insert(id, VirtBlock(key), Mapping { data_block: DataBlock(key), time: 0 }).unwrap();
    }
    commit(&mut md, &mut image);
    let free_before = md.metadata_free_blocks();
    md.snapshot(id, [2; 16], "snap").unwrap();
    let plan = commit(&mut md, &mut image);
    assert_eq!(md.volume(VolumeId(2)).unwrap().mapped_blocks, blocks);
    (plan.blocks.len(), free_before - md.metadata_free_blocks())
}

#[test]
fn snapshot_cost_is_independent_of_size() {
    let small = snapshot_cost(1 << 30);
    let large = snapshot_cost(16 << 30);
    assert_eq!(small, large);
    // The new volume table (one block and its index); nothing else.
    assert_eq!(small.0, 2);
}

#[test]
fn metadata_space_runs_out_into_the_reserve_not_past_it() {
    let mut md = PoolMetadata::format(layout(1024, 200_000, 4096), pool_record()).unwrap();
    let mut image = Image::default();
    let id = md.create_volume([1; 16], "a", 1 << 40).unwrap();
    let mut key = 0;
    let error = loop {
        let mapping = Mapping { data_block: DataBlock(key), time: 0 };
        match md.insert(id, VirtBlock(key * 200), mapping) {
            Ok(_) => key += 1,
            Err(error) => break error,
        }
        if key % 5000 == 0 {
            commit(&mut md, &mut image);
        }
    };
    assert!(matches!(error, MetadataError::NoMetadataSpace { .. }), "{error}");
    assert!(md.metadata_free_blocks() > md.metadata_reserve_blocks());
    commit(&mut md, &mut image);
    image.check().unwrap();
}

#[test]
fn layouts_follow_the_formula() {
    let layout = Layout::on_data_device(1 << 30, 64 << 10, 4 << 30).unwrap();
    assert_eq!(layout.metadata_blocks, Layout::metadata_blocks_for(65536));
    assert_eq!(layout.data_offset_bytes % (64 << 10), 0);
    assert!(layout.data_offset_bytes >= layout.metadata_blocks * 4096);
    assert_eq!(layout.data_blocks, ((1 << 30) - layout.data_offset_bytes) / (64 << 10));
    assert!(Layout::on_data_device(1 << 20, 64 << 10, 0).is_err());
    assert!(Layout::on_data_device(1 << 30, 3000, 0).is_err());
    let separate = Layout::separate(64 << 20, 1 << 30, 4096, 0).unwrap();
    assert_eq!(separate.data_blocks, 262_144);
    assert_eq!(separate.data_offset_bytes, 0);
    assert!(Layout::separate(1 << 20, 1 << 40, 4096, 0).is_err());
}

/// A tiny pool's first superblock; docs/format.md "Golden superblock" quotes its first 256
/// bytes (the rest are zero).
fn golden_superblock() -> Vec<u8> {
    let layout = Layout {
        metadata_blocks: 1024,
        data_block_bytes: 65536,
        data_blocks: 960,
        data_blocks_max: 4096,
        data_offset_bytes: 4 << 20,
        metadata_separate: false,
    };
    let mut pool = pool_record();
    pool.uuid = *b"0123456789abcdef";
    pool.name = "tiny".to_string();
    let mut md = PoolMetadata::format(layout, pool).unwrap();
    let plan = md.begin_commit();
    md.commit_done();
    assert!(plan.blocks.is_empty());
    assert_eq!(plan.superblock.0, MetaBlock(1));
    plan.superblock.1
}

#[test]
fn golden_superblock_matches_the_format_document() {
    let bytes = golden_superblock();
    assert!(bytes[256..].iter().all(|b| *b == 0));
    let hex: String = bytes[..256].iter().map(|b| format!("{b:02x}")).collect();
    let doc = include_str!("../../../../docs/format.md");
    let documented: String = doc
        .split("<!-- golden-superblock -->")
        .nth(1)
        .expect("docs/format.md has the golden superblock")
        .split("<!-- end -->")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| l.starts_with("    "))
        .flat_map(|l| l.split_whitespace().skip(1))
        .collect();
    assert_eq!(hex, documented, "docs/format.md's golden superblock differs from the code");
}

/// One forged node: level, and entries of (key, target selector, honest checksum?, time).
type ForgedNode = (u8, Vec<(u16, u64, bool, u64)>);

/// Builds an image whose every checksum is valid but whose structure is arbitrary: nodes at
/// blocks 10.., volume roots among them, one count block with `counts`.
fn forge(nodes: &[ForgedNode], roots: &[usize], counts: &[u32], mapped: u64) -> Image {
    let mut image = Image::default();
    let generation = 3;
    let mut checksums: Vec<u32> = Vec::new();
    for (i, (level, raw)) in nodes.iter().enumerate() {
        let loc = 10 + i as u64;
        let mut raw = raw.clone();
        raw.sort_by_key(|e| e.0);
        raw.dedup_by_key(|e| e.0);
        let entries: Vec<btree::Entry> = raw
            .iter()
            .map(|(key, target, honest, time)| {
                if *level == 0 {
                    btree::Entry { key: u64::from(*key), a: *target % 80, b: *time }
                } else {
                    let child = (*target % (nodes.len() as u64 + 1)) as usize;
                    let checksum = match checksums.get(child) {
                        Some(sum) if *honest => u64::from(*sum),
                        _ => *time & 0xffff_ffff,
                    };
                    btree::Entry { key: u64::from(*key), a: 10 + child as u64, b: checksum }
                }
            })
            .collect();
        let mut bytes = btree::encode_node(TreeKind::Mapping, loc, generation, *level, &entries);
        checksums.push(codec::seal(&mut bytes, BlockType::MappingNode));
        image.write(MetaBlock(loc), &bytes);
    }
    let records: Vec<StoredVolume> = roots
        .iter()
        .enumerate()
        .map(|(i, root)| {
            let root = *root % nodes.len().max(1);
            StoredVolume {
                record: VolumeRecord {
                    id: VolumeId(i as u64 + 1),
                    uuid: [0; 16],
                    name: "f".to_string(),
                    size_bytes: 1 << 28,
                    creation_time: 0,
                    snapshot_time: 0,
                    origin: None,
                    mapped_blocks: mapped,
                },
                root: Child {
                    loc: 10 + root as u64,
                    checksum: checksums.get(root).copied().unwrap_or(0),
                },
            }
        })
        .collect();
    let mut table = volumes::encode_table_block(100, generation, &records);
    let table_sum = codec::seal(&mut table, BlockType::VolumeTableBlock);
    image.write(MetaBlock(100), &table);
    let mut index =
        volumes::encode_index(101, generation, &[Child { loc: 100, checksum: table_sum }]);
    let index_sum = codec::seal(&mut index, BlockType::VolumeTableIndex);
    image.write(MetaBlock(101), &index);
    let mut count_block = space::encode_count_block(102, generation, 0, counts);
    let count_sum = codec::seal(&mut count_block, BlockType::CountBlock);
    image.write(MetaBlock(102), &count_block);
    let leaf = [btree::Entry { key: 0, a: 102, b: u64::from(count_sum) }];
    let mut space_leaf = btree::encode_node(TreeKind::SpaceIndex, 103, generation, 0, &leaf);
    let space_sum = codec::seal(&mut space_leaf, BlockType::SpaceIndexNode);
    image.write(MetaBlock(103), &space_leaf);
    let sb = Superblock {
        transaction_id: generation,
        layout: layout(1024, 80, 4096),
        pool: pool_record(),
        time: 5,
        next_volume_id: records.len() as u64 + 1,
        volume_table: Child { loc: 101, checksum: index_sum },
        volume_count: records.len() as u32,
        space_root: Child { loc: 103, checksum: space_sum },
    };
    image.write(MetaBlock(1), &superblock::encode(&sb));
    image
}

fn forged_node() -> impl Strategy<Value = ForgedNode> {
    (
        0u8..3,
        prop::collection::vec((0u16..300, any::<u64>(), prop::bool::weighted(0.9), 0u64..9), 1..6),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Valid checksums around arbitrary structure: open, check and every operation on what
    /// open accepts never panic; whatever open accepts, check accepts after a commit.
    #[test]
    fn forged_images_never_panic(
        nodes in prop::collection::vec(forged_node(), 1..7),
        roots in prop::collection::vec(0usize..8, 1..4),
        mapped in 0u64..20,
    ) {
        let first = forge(&nodes, &roots, &[0; 80], mapped);
        let _ = first.check();
        let Ok((_, problems)) = PoolMetadata::open_lenient(&mut first.reader()) else {
            return Ok(());
        };
        // Make the counts honest from the problem lines, so open accepts the pool.
        let mut counts = [0u32; 80];
        for line in problems {
            let words: Vec<&str> = line.split([' ', ':', ',']).filter(|w| !w.is_empty()).collect();
            let block: usize = words[2].parse().unwrap();
            counts[block] = words.last().unwrap().parse().unwrap();
        }
        let mut image = forge(&nodes, &roots, &counts, mapped);
        let Ok(mut md) = image.open() else { return Ok(()) };
        let ids: Vec<VolumeId> = md.volumes().map(|v| v.id).collect();
        for id in &ids {
            let mut keys = Vec::new();
            md.for_each_mapping(*id, &mut |vb, _| keys.push(vb.0));
            for key in keys.iter().step_by(2) {
                let _ = md.prepare_overwrite(*id, VirtBlock(*key));
                let _ = md.remove(*id, VirtBlock(*key));
            }
            let _ = md.insert(*id, VirtBlock(7), Mapping { data_block: DataBlock(79), time: 5 });
            let _ = md.snapshot(*id, [0; 16], &format!("s{}", id.0));
        }
        commit(&mut md, &mut image);
        let reopened = image.open().unwrap();
        prop_assert_eq!(fingerprint(&reopened), fingerprint(&md));
        for id in ids {
            let _ = md.delete_volume(id, &mut |_| {});
        }
        commit(&mut md, &mut image);
        image.open().unwrap();
    }
}

/// Figures for BENCH.md (prints, asserts nothing about time): 1 M mappings inserted in order,
/// committed, reopened. `cargo test --release -p bdev_thin --lib million -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn million_mappings_figures() {
    let mappings = 1u64 << 20;
    let layout = Layout::on_data_device((mappings + 8192) * (64 << 10), 64 << 10, 0).unwrap();
    let mut md = PoolMetadata::format(layout, pool_record()).unwrap();
    let mut image = Image::default();
    let id = md.create_volume([1; 16], "v", mappings * (64 << 10)).unwrap();
    let start = std::time::Instant::now();
    for key in 0..mappings {
        md.insert(id, VirtBlock(key), Mapping { data_block: DataBlock(key), time: 0 }).unwrap();
    }
    let inserted = start.elapsed();
    let plan = commit(&mut md, &mut image);
    let nodes = md.store.nodes.len();
    let node_bytes = std::mem::size_of::<btree::Node>()
        + (crate::limits::METADATA_NODE_ENTRIES_MAX + 1) * std::mem::size_of::<btree::Entry>()
        + 16;
    let start = std::time::Instant::now();
    let reopened = image.open().unwrap();
    let opened = start.elapsed();
    let start = std::time::Instant::now();
    let report = image.check().unwrap();
    let checked = start.elapsed();
    println!(
        "1M mappings: insert {inserted:?}, commit plan {} blocks, {nodes} nodes in memory \
         (~{} MiB nodes + {} MiB counts), open {opened:?}, check {checked:?}, region {} blocks",
        plan.blocks.len(),
        (nodes * node_bytes) >> 20,
        (md.layout().data_blocks * 4 + md.layout().metadata_blocks * 4) >> 20,
        md.layout().metadata_blocks
    );
    assert_eq!(report.mappings, mappings);
    assert_eq!(reopened.volume(id).unwrap().mapped_blocks, mappings);
}

#[test]
fn settings_growth_and_needs_check_persist() {
    let (mut image, mut md) = sample_image();
    md.pool_mut().settings.discard = DiscardMode::Ignore;
    md.pool_mut().settings.low_water_mark = 77;
    md.grow_data(5000).unwrap();
    assert!(matches!(md.grow_data(1 << 40), Err(MetadataError::GrowPastMax { .. })));
    md.insert(VolumeId(1), VirtBlock(900), Mapping { data_block: DataBlock(4500), time: 1 })
        .unwrap();
    commit(&mut md, &mut image);
    let reopened = image.open().unwrap();
    assert_eq!(reopened.pool().settings.discard, DiscardMode::Ignore);
    assert_eq!(reopened.pool().settings.low_water_mark, 77);
    assert_eq!(reopened.layout().data_blocks, 5000);
    assert_eq!(reopened.data_count_committed(DataBlock(4500)), 1);
    image.check().unwrap();

    // A failed commit: abort, but the needs_check raised meanwhile is written next time.
    md.remove(VolumeId(1), VirtBlock(900)).unwrap();
    let _ = md.begin_commit();
    md.set_needs_check();
    md.abort();
    assert!(md.is_dirty());
    assert_eq!(md.lookup(VolumeId(1), VirtBlock(900)).map(|m| m.data_block), Some(DataBlock(4500)));
    commit(&mut md, &mut image);
    assert!(image.open().unwrap().pool().needs_check);
}

#[test]
fn needs_check_is_written_alone_over_the_last_commit_and_cleared_the_same_way() {
    let (mut image, mut md) = sample_image();
    let committed = fingerprint(&image.open().unwrap());
    // A change that never commits: the flag superblock describes the last commit.
    md.insert(VolumeId(1), VirtBlock(901), Mapping { data_block: DataBlock(4001), time: 1 })
        .unwrap();
    md.set_needs_check();
    assert!(md.needs_check_unwritten());
    let (slot, bytes) = md.needs_check_superblock(true);
    image.write(slot, &bytes);
    md.needs_check_written(true);
    assert!(!md.needs_check_unwritten());
    assert!(md.is_dirty(), "the open change is still to commit");
    let reopened = image.open().unwrap();
    assert!(reopened.pool().needs_check);
    assert_eq!(reopened.transaction_id(), md.transaction_id());
    let trees = |f: Fingerprint| (f.volumes, f.mappings, f.counts);
    assert_eq!(trees(fingerprint(&reopened)), trees(committed.clone()), "the last commit's");
    image.check().unwrap();
    // Cleared offline the same way: a superblock of the opened pool with the flag down.
    let (slot, bytes) = reopened.needs_check_superblock(false);
    image.write(slot, &bytes);
    let cleared = image.open().unwrap();
    assert!(!cleared.pool().needs_check);
    assert_eq!(trees(fingerprint(&cleared)), trees(committed));
    // The next real commit follows on.
    md.needs_check_written(false);
    commit(&mut md, &mut image);
    let next = image.open().unwrap();
    assert!(!next.pool().needs_check);
    assert_eq!(next.lookup(VolumeId(1), VirtBlock(901)).map(|m| m.data_block.0), Some(4001));
    image.check().unwrap();
}

#[test]
fn another_format_version_is_an_error_not_an_empty_device() {
    let (mut image, md) = sample_image();
    for slot in 0..2u64 {
        let mut bytes = image.blocks[&slot].clone();
        codec::put_u32(&mut bytes, 32, FORMAT_VERSION + 1);
        codec::seal(&mut bytes, BlockType::Superblock);
        image.write(MetaBlock(slot), &bytes);
    }
    let expected = MetadataError::Version { found: FORMAT_VERSION + 1 };
    assert_eq!(image.open().err(), Some(expected.clone()));
    assert_eq!(PoolMetadata::probe(&mut image.reader()).err(), Some(expected));
    drop(md);
}

#[test]
fn names_and_volume_limits_are_enforced() {
    let mut md = PoolMetadata::format(layout(2048, 4096, 4096), pool_record()).unwrap();
    let long = "x".repeat(NAME_BYTES_MAX + 1);
    assert_eq!(
        md.create_volume([0; 16], &long, 1).err(),
        Some(MetadataError::NameTooLong { bytes: NAME_BYTES_MAX + 1 })
    );
    let mut pool = pool_record();
    pool.name = long;
    assert!(PoolMetadata::format(layout(2048, 4096, 4096), pool).is_err());
    let id = md.create_volume([0; 16], "v", 8192).unwrap();
    let taken = Some(MetadataError::NameExists { name: "v".into() });
    assert_eq!(md.create_volume([1; 16], "v", 8192).err(), taken, "names are unique");
    assert_eq!(md.snapshot(id, [1; 16], "v").err(), taken);
    let past = md.insert(id, VirtBlock(2), Mapping { data_block: DataBlock(0), time: 0 });
    assert!(matches!(past, Err(MetadataError::VirtBlockOutOfRange { blocks: 2, .. })));
    let far = md.insert(id, VirtBlock(1), Mapping { data_block: DataBlock(4096), time: 0 });
    assert!(matches!(far, Err(MetadataError::DataBlockOutOfRange { .. })));
    assert_eq!(
        md.remove(VolumeId(9), VirtBlock(0)).err(),
        Some(MetadataError::NoSuchVolume { id: VolumeId(9) })
    );
}

#[test]
fn check_fails_on_mappings_past_the_end_and_from_the_future() {
    let (mut image, mut md) = sample_image();
    md.top.volumes.get_mut(&VolumeId(1)).unwrap().record.size_bytes = 4096 * 10;
    md.top.time = 0;
    md.dirty = true;
    commit(&mut md, &mut image);
    let problems = image.check().unwrap_err();
    assert!(problems.iter().any(|p| p.contains("volume 1: virtual block 399 mapped past")));
    assert!(problems.iter().any(|p| p.contains("newer than the pool time")), "{problems:?}");
}
