//! `thinctl` as a user runs it: pool images built with `PoolMetadata` and written to files the
//! way the pool owner writes commit plans (blocks, then the superblock, at their offsets), then
//! `thinctl check` and `thinctl dump` run as processes on them. Clean images exit 0; a
//! corrupted byte makes check exit non-zero with a report naming the block.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bdev_thin::thin::metadata::{
    CommitPlan, Layout, METADATA_BLOCK_BYTES, PoolMetadata, PoolRecord,
};
use bdev_thin::thin::types::{
    DataBlock, DiscardMode, Mapping, OutOfSpaceMode, PoolSettings, VirtBlock,
};

/// A file under the target dir, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        TempFile(dir.join(format!("thinctl-{}-{name}", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn write_plan(file: &std::fs::File, plan: &CommitPlan) {
    for (block, bytes) in &plan.blocks {
        file.write_all_at(bytes, block.0 * METADATA_BLOCK_BYTES as u64).unwrap();
    }
    let (block, bytes) = &plan.superblock;
    file.write_all_at(bytes, block.0 * METADATA_BLOCK_BYTES as u64).unwrap();
}

fn pool_record() -> PoolRecord {
    PoolRecord {
        uuid: [0x11; 16],
        name: "pool0".to_string(),
        settings: PoolSettings {
            discard: DiscardMode::Passdown,
            zero_new_blocks: true,
            out_of_space: OutOfSpaceMode::Error,
            no_space_timeout_s: 60,
            low_water_mark: 0,
            commit_interval_ms: 1000,
        },
        needs_check: false,
        data_bdev_uuid: [0; 16],
    }
}

/// A 64 MiB device: volume 1 with two runs, snapshot 2 diverged in a few blocks. Returns the
/// location of a mapping node the last commit wrote (the snapshot's leaf: a block to corrupt).
fn build_pool(path: &Path, device_bytes: u64) -> u64 {
    let layout = Layout::on_data_device(device_bytes, 64 << 10, device_bytes).unwrap();
    let file = std::fs::File::create(path).unwrap();
    file.set_len(device_bytes).unwrap();
    let mut md = PoolMetadata::format(layout, pool_record()).unwrap();
    let id = md.create_volume([0x22; 16], "vol", 32 << 20).unwrap();
    for key in 0..100u64 {
        let block = if key < 50 { key } else { key + 100 };
        md.insert(id, VirtBlock(key), Mapping { data_block: DataBlock(block), time: 0 }).unwrap();
    }
    let plan = md.begin_commit();
    write_plan(&file, &plan);
    md.commit_done();
    let snap = md.snapshot(id, [0x33; 16], "snap").unwrap();
    for key in 10..13u64 {
        let mapping = Mapping { data_block: DataBlock(300 + key), time: md.time() };
        md.insert(snap, VirtBlock(key), mapping).unwrap();
    }
    let plan = md.begin_commit();
    write_plan(&file, &plan);
    md.commit_done();
    // Byte 4 of a block is its type tag; 2 = mapping node (docs/format.md).
    let mut root = 0;
    for (block, bytes) in &plan.blocks {
        if bytes[4] == 2 {
            root = block.0;
        }
    }
    assert!(root != 0, "the last commit wrote a mapping node");
    root
}

fn thinctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thinctl")).args(args).output().unwrap()
}

#[test]
fn check_passes_on_a_clean_pool_and_fails_on_a_corrupt_byte() {
    let image = TempFile::new("pool.img");
    let node = build_pool(&image.0, 64 << 20);
    let path = image.0.to_str().unwrap();

    let clean = thinctl(&["check", path]);
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert_eq!(clean.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&clean.stderr));
    assert!(stdout.contains("clean: transaction 2, 2 volumes, 200 mappings"), "{stdout}");

    let file = std::fs::OpenOptions::new().write(true).read(true).open(&image.0).unwrap();
    let mut byte = [0u8; 1];
    let offset = node * METADATA_BLOCK_BYTES as u64 + 40;
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x01], offset).unwrap();
    let corrupt = thinctl(&["check", path]);
    let stdout = String::from_utf8_lossy(&corrupt.stdout);
    assert_eq!(corrupt.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("metadata block {node}")), "{stdout}");
    assert!(stdout.contains("problems"), "{stdout}");
}

#[test]
fn dump_prints_runs_as_text_and_json() {
    let image = TempFile::new("dump.img");
    build_pool(&image.0, 64 << 20);
    let path = image.0.to_str().unwrap();
    let output = thinctl(&["dump", path, "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(doc["superblock"]["transaction_id"], 2);
    assert_eq!(doc["superblock"]["name"], "pool0");
    let volumes = doc["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 2);
    let runs = volumes[0]["mappings"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["virt_begin"], 0);
    assert_eq!(runs[0]["length"], 50);
    assert_eq!(runs[1]["virt_begin"], 50);
    assert_eq!(runs[1]["data_begin"], 150);
    assert_eq!(volumes[1]["origin"], 1);
    assert_eq!(volumes[1]["mapped_blocks"], 100);
    assert_eq!(volumes[1]["mappings"].as_array().unwrap().len(), 4);

    let text = thinctl(&["dump", path]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.status.code(), Some(0));
    assert!(stdout.contains("virt 0..+50 -> data 0 time 0"), "{stdout}");
    assert!(stdout.contains("virt 10..+3 -> data 310 time 1"), "{stdout}");
}

#[test]
fn separate_metadata_and_non_pools() {
    let metadata = TempFile::new("meta.img");
    let data = TempFile::new("data.img");
    std::fs::File::create(&data.0).unwrap().set_len(16 << 20).unwrap();
    let layout = Layout::separate(8 << 20, 16 << 20, 4096, 16 << 20).unwrap();
    let file = std::fs::File::create(&metadata.0).unwrap();
    file.set_len(8 << 20).unwrap();
    let mut md = PoolMetadata::format(layout, pool_record()).unwrap();
    md.create_volume([0x44; 16], "v", 1 << 20).unwrap();
    let plan = md.begin_commit();
    write_plan(&file, &plan);
    md.commit_done();
    let (data_path, meta_path) = (data.0.to_str().unwrap(), metadata.0.to_str().unwrap());
    let output = thinctl(&["check", data_path, "--metadata", meta_path]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stdout));
    // The data file alone holds no pool.
    let output = thinctl(&["check", data_path]);
    assert_ne!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("not a pool"));
}

/// A pool whose last commit carries needs_check (a failed metadata write turned it
/// read-only), written as the owner writes the flag: a superblock alone over the last commit.
fn flag_needs_check(path: &Path) {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut read = |block: bdev_thin::thin::types::MetaBlock, out: &mut [u8]| {
        file.read_exact_at(out, block.0 * METADATA_BLOCK_BYTES as u64)
    };
    let md = PoolMetadata::open(&mut read).unwrap();
    let (block, bytes) = md.needs_check_superblock(true);
    file.write_all_at(&bytes, block.0 * METADATA_BLOCK_BYTES as u64).unwrap();
}

fn needs_check(path: &Path) -> bool {
    let file = std::fs::File::open(path).unwrap();
    let mut read = |block: bdev_thin::thin::types::MetaBlock, out: &mut [u8]| {
        file.read_exact_at(out, block.0 * METADATA_BLOCK_BYTES as u64)
    };
    PoolMetadata::probe(&mut read).unwrap().unwrap().1.needs_check
}

#[test]
fn check_clears_needs_check_only_when_clean_and_only_when_no_one_holds_the_pool() {
    let image = TempFile::new("flagged.img");
    let node = build_pool(&image.0, 64 << 20);
    let path = image.0.to_str().unwrap();
    flag_needs_check(&image.0);
    assert!(needs_check(&image.0));

    // Refused while another process holds the device (as a daemon serving the pool does).
    let holder = std::fs::File::open(&image.0).unwrap();
    assert!(bdev_thin::sys::lock_exclusive(&holder).unwrap());
    let busy = thinctl(&["check", "--clear-needs-check", path]);
    assert_eq!(busy.status.code(), Some(2), "{}", String::from_utf8_lossy(&busy.stdout));
    assert!(String::from_utf8_lossy(&busy.stderr).contains("in use"));
    drop(holder);
    assert!(needs_check(&image.0));

    // A plain check reports the flag and leaves it.
    let plain = thinctl(&["check", path]);
    assert_eq!(plain.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&plain.stdout).contains("needs_check flag is set"));
    assert!(needs_check(&image.0));

    // Clean: cleared, with the next transaction id; the pool checks clean after.
    let cleared = thinctl(&["check", "--clear-needs-check", path]);
    let stdout = String::from_utf8_lossy(&cleared.stdout);
    assert_eq!(
        cleared.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&cleared.stderr)
    );
    assert!(stdout.contains("needs_check cleared: transaction 4"), "{stdout}");
    assert!(!needs_check(&image.0));
    let again = thinctl(&["check", path]);
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stdout).contains("clean: transaction 4, 2 volumes"));

    // Not clean: the flag stays.
    flag_needs_check(&image.0);
    let file = std::fs::OpenOptions::new().write(true).read(true).open(&image.0).unwrap();
    let offset = node * METADATA_BLOCK_BYTES as u64 + 40;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x01], offset).unwrap();
    let corrupt = thinctl(&["check", "--clear-needs-check", path]);
    assert_eq!(corrupt.status.code(), Some(1));
    assert!(needs_check(&image.0), "a pool that fails its check keeps the flag");
}
