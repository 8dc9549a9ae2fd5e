//! Backward compatibility of the on-disk format (STYLE.md §8): `fixtures/pool-v1.blocks` is a
//! pool written by FORMAT_VERSION 1 code; every later build must open it to the same state and
//! pass `check` on it. A format change bumps FORMAT_VERSION and adds a new fixture (regenerate
//! with `cargo test -p bdev_thin --test metadata_fixture -- --ignored`), keeping the old one
//! for as long as it is supported.

use std::collections::BTreeMap;

use bdev_thin::thin::metadata::{FORMAT_VERSION, Layout, PoolMetadata, PoolRecord, check};
use bdev_thin::thin::types::{DataBlock, DiscardMode, Mapping, MetaBlock, OutOfSpaceMode};
use bdev_thin::thin::types::{PoolSettings, VirtBlock, VolumeId};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pool-v1.blocks");

/// The fixture's encoding: records of block number (u64 little-endian) then its 4096 bytes;
/// blocks not listed are zero.
fn decode(bytes: &[u8]) -> BTreeMap<u64, Vec<u8>> {
    bytes
        .chunks(8 + 4096)
        .map(|record| {
            let block = u64::from_le_bytes(record[..8].try_into().unwrap());
            (block, record[8..].to_vec())
        })
        .collect()
}

fn reader(
    blocks: &BTreeMap<u64, Vec<u8>>,
) -> impl FnMut(MetaBlock, &mut [u8]) -> std::io::Result<()> + '_ {
    move |block, buf| {
        match blocks.get(&block.0) {
            Some(bytes) => buf.copy_from_slice(bytes),
            None => buf.fill(0),
        }
        Ok(())
    }
}

/// The pool the fixture holds: three commits, a snapshot diverged by writes, a deleted volume,
/// settings away from their defaults.
fn build() -> BTreeMap<u64, Vec<u8>> {
    let layout = Layout::on_data_device(256 << 20, 64 << 10, 1 << 30).unwrap();
    let pool = PoolRecord {
        uuid: *b"fixture-pool-v1!",
        name: "fixture".to_string(),
        settings: PoolSettings {
            discard: DiscardMode::NoPassdown,
            zero_new_blocks: false,
            out_of_space: OutOfSpaceMode::Queue,
            no_space_timeout_s: 30,
            low_water_mark: 100,
            commit_interval_ms: 500,
        },
        needs_check: false,
        data_bdev_uuid: [0; 16],
    };
    let mut md = PoolMetadata::format(layout, pool).unwrap();
    let mut blocks = BTreeMap::new();
    let mut commit = |md: &mut PoolMetadata| {
        let plan = md.begin_commit();
        for (block, bytes) in plan.blocks.into_iter().chain([plan.superblock]) {
            blocks.insert(block.0, bytes);
        }
        md.commit_done();
    };
    let origin = md.create_volume(*b"volume-origin-01", "origin", 64 << 20).unwrap();
    let doomed = md.create_volume(*b"volume-doomed-02", "doomed", 8 << 20).unwrap();
    for key in 0..400u64 {
        let mapping = Mapping { data_block: DataBlock(key), time: 0 };
        md.insert(origin, VirtBlock(key * 2), mapping).unwrap();
    }
    for key in 0..10u64 {
        let mapping = Mapping { data_block: DataBlock(1000 + key), time: 0 };
        md.insert(doomed, VirtBlock(key), mapping).unwrap();
    }
    commit(&mut md);
    let snap = md.snapshot(origin, *b"volume-snap---03", "snap").unwrap();
    for key in 0..50u64 {
        let mapping = Mapping { data_block: DataBlock(2000 + key), time: md.time() };
        md.insert(snap, VirtBlock(key * 2), mapping).unwrap();
    }
    md.delete_volume(doomed, &mut |_| {}).unwrap();
    commit(&mut md);
    md.remove(origin, VirtBlock(798)).unwrap();
    commit(&mut md);
    blocks
}

#[test]
#[ignore]
fn write_fixture() {
    let mut out = Vec::new();
    for (block, bytes) in build() {
        out.extend_from_slice(&block.to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    std::fs::write(FIXTURE, out).unwrap();
}

#[test]
fn version_1_fixture_opens_and_checks() {
    assert_eq!(FORMAT_VERSION, 1, "a new format version needs its own fixture");
    let blocks = decode(&std::fs::read(FIXTURE).unwrap());
    let md = PoolMetadata::open(&mut reader(&blocks)).unwrap();
    assert_eq!(md.transaction_id(), 3);
    assert_eq!(md.time(), 1);
    let pool = md.pool();
    assert_eq!(pool.name, "fixture");
    assert_eq!(pool.settings.discard, DiscardMode::NoPassdown);
    assert_eq!(pool.settings.out_of_space, OutOfSpaceMode::Queue);
    assert!(!pool.settings.zero_new_blocks);
    assert_eq!(
        (
            pool.settings.no_space_timeout_s,
            pool.settings.low_water_mark,
            pool.settings.commit_interval_ms
        ),
        (30, 100, 500)
    );
    assert_eq!(md.layout().data_block_bytes, 64 << 10);
    let names: Vec<(u64, &str, u64)> =
        md.volumes().map(|v| (v.id.0, v.name.as_str(), v.mapped_blocks)).collect();
    assert_eq!(names, vec![(1, "origin", 399), (3, "snap", 400)]);
    assert_eq!(md.volume(VolumeId(3)).unwrap().origin, Some(VolumeId(1)));
    let at = |id: u64, v: u64| md.lookup(VolumeId(id), VirtBlock(v)).map(|m| m.data_block.0);
    assert_eq!(at(1, 0), Some(0));
    assert_eq!(at(1, 798), None);
    assert_eq!(at(3, 798), Some(399));
    assert_eq!(at(3, 10), Some(2005));
    assert_eq!(at(1, 10), Some(5));
    // Block 100 sits in the first leaf, which the snapshot's writes copied: both copies count.
    assert_eq!(md.data_count_committed(DataBlock(100)), 2);
    assert_eq!(md.data_count_committed(DataBlock(1005)), 0);
    assert_eq!(md.used_data_blocks(), 450);
    let report = check(&mut reader(&blocks)).unwrap();
    assert_eq!(report.mappings, 799);
    // Today's code writes the same pool to the same state (not necessarily the same bytes).
    let rebuilt = build();
    let again = PoolMetadata::open(&mut reader(&rebuilt)).unwrap();
    let mappings = |md: &PoolMetadata, id: u64| {
        let mut all = Vec::new();
        md.for_each_mapping(VolumeId(id), &mut |v, m| all.push((v, m)));
        all
    };
    assert_eq!(mappings(&md, 1), mappings(&again, 1));
    assert_eq!(mappings(&md, 3), mappings(&again, 3));
}
