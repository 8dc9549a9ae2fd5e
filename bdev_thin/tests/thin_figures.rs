//! Figures for BENCH.md that need the owner itself (run by `ci/bench_thin.sh`; ignored in the
//! test run): the time of a snapshot of a fully mapped volume at 1 GiB and at 16 GiB, end to
//! end through the owner on the stepping host (metadata snapshot, commit, and the in-memory view
//! of the new volume), with the metadata blocks each commit wrote.
//! `cargo test --release -p bdev_thin --test thin_figures -- --ignored --nocapture`

use std::sync::Arc;

use bdev_thin::host::NoopWaker;
use bdev_thin::testing::{SimDevice, SteppingHost};
use bdev_thin::thin::metadata::{Layout, PoolMetadata, PoolRecord};
use bdev_thin::thin::mutations::Mutations;
use bdev_thin::thin::owner::{ControlOp, Owner, OwnerSettings};
use bdev_thin::thin::pool::PoolShared;
use bdev_thin::thin::types::{
    DataBlock, DiscardMode, Mapping, OutOfSpaceMode, PoolSettings, VirtBlock,
};
use crossbeam_queue::ArrayQueue;

const BLOCK: u64 = 64 << 10;

type Done = Box<dyn FnOnce() + Send>;

fn snapshot_of_fully_mapped(size_bytes: u64) -> (std::time::Duration, u64) {
    let blocks = size_bytes / BLOCK;
    let device_bytes = (blocks + 4096) * BLOCK;
    let layout = Layout::on_data_device(device_bytes, BLOCK as u32, device_bytes).unwrap();
    let record = PoolRecord {
        uuid: [3; 16],
        name: "figures".into(),
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
    };
    let settings = OwnerSettings::from_record(&record, Mutations::NONE);
    let mut meta = PoolMetadata::format(layout, record).unwrap();
    let id = meta.create_volume([1; 16], "origin", size_bytes).unwrap();
    for vblock in 0..blocks {
        let mapping = Mapping { data_block: DataBlock(vblock), time: 0 };
        meta.insert(id, VirtBlock(vblock), mapping).unwrap();
    }
    let device = SimDevice::new(4096, device_bytes / 4096);
    let shared = PoolShared::new(NoopWaker);
    let control = Arc::new(ArrayQueue::new(4));
    let mut owner = Owner::new(
        SteppingHost::new(),
        Arc::clone(&shared),
        Arc::clone(&control),
        meta,
        &device,
        settings,
    )
    .unwrap();
    let run = |owner: &mut Owner<SimDevice, SteppingHost>, make: &dyn Fn(Done) -> ControlOp| {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let op = make(Box::new(move || flag.store(true, std::sync::atomic::Ordering::SeqCst)));
        assert!(control.push(op).is_ok());
        for _ in 0..1_000_000 {
            owner.poll();
            if done.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
        }
        panic!("not answered");
    };
    run(&mut owner, &|done| ControlOp::Commit {
        done: Box::new(move |r| {
            r.unwrap();
            done();
        }),
    });
    let commits = || shared.counters.commits.load(std::sync::atomic::Ordering::Relaxed);
    let commits_before = commits();
    let start = std::time::Instant::now();
    run(&mut owner, &|done| ControlOp::Snapshot {
        origin: id,
        uuid: [2; 16],
        name: "snap".into(),
        done: Box::new(move |r| {
            r.unwrap();
            done();
        }),
    });
    let elapsed = start.elapsed();
    let commits = commits() - commits_before;
    (elapsed, commits)
}

#[test]
#[ignore]
fn snapshot_time_1g_vs_16g() {
    for size in [1u64 << 30, 16u64 << 30] {
        let (elapsed, commits) = snapshot_of_fully_mapped(size);
        println!(
            "snapshot of a fully mapped {} GiB volume: {elapsed:?} ({commits} commit)",
            size >> 30
        );
    }
}
