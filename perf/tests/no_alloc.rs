//! A steady perf loop allocates nothing per IO: a counting global allocator counts this thread's
//! allocations while a job keeps 64 IOs in flight against malloc, null and uring bdevs.
//!
//! This test file is allowed `unsafe`: a global allocator must be an `unsafe impl`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bdev_thin::backend::{BaseDevice, MallocDevice, NullDevice, UringDevice};
use bdev_thin::bdev::{Bdev, Device};
use bdev_thin::host::Poller;
use perf::{Job, JobProgress, JobSpec, Workload};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the counter is a const-
// initialised thread-local, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn steady_loop_allocations(device: BaseDevice, workload: Workload, ios: u64) -> (u64, u64) {
    let info = {
        use bdev_thin::host::BlockDevice;
        device.info()
    };
    let bdev = Bdev::new("Test0".into(), uuid::Uuid::from_u128(7), Device::Base(device));
    let channel = bdev.open_channel().unwrap();
    let spec = JobSpec {
        index: 0,
        bdev_name: "Test0".into(),
        bdev_uuid: bdev.uuid(),
        core: 0,
        workload,
        rwmixread: 70,
        queue_depth: 64,
        io_size_bytes: 4096,
        block_size_bytes: info.block_size_bytes,
        time_s: 3600,
        prefill: false,
        pattern: None,
        first_block: 0,
        num_blocks: info.num_blocks,
    };
    let mut job = Job::new(
        spec,
        channel,
        bdev_thin::runtime::now_ns,
        Arc::new(AtomicBool::new(false)),
        Arc::new(JobProgress::default()),
        Box::new(|_| {}),
    );
    while job.ios() < ios / 10 {
        job.poll();
    }
    let before = allocations();
    let ios_before = job.ios();
    while job.ios() < ios_before + ios {
        job.poll();
    }
    (allocations() - before, job.ios() - ios_before)
}

#[test]
fn a_steady_loop_allocates_nothing() {
    for workload in [Workload::RandRead, Workload::RandWrite, Workload::RandRw, Workload::Verify] {
        let malloc = BaseDevice::Malloc(Arc::new(MallocDevice::new(4096, 16384).unwrap()));
        let (count, ios) = steady_loop_allocations(malloc, workload, 200_000);
        assert_eq!(count, 0, "malloc {workload:?}: {count} allocations over {ios} IOs");
    }
    let null = BaseDevice::Null(Arc::new(NullDevice::new(4096, 1 << 20).unwrap()));
    let (count, ios) = steady_loop_allocations(null, Workload::RandRead, 200_000);
    assert_eq!(count, 0, "null: {count} allocations over {ios} IOs");

    // uring: the kernel does the IO; the ring, its slots and the job allocate nothing per IO.
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("no_alloc_{}.img", std::process::id()));
    // Written out, not sparse: overwrites then need no block allocation in the filesystem.
    std::fs::write(&path, vec![0u8; 16 << 20]).unwrap();
    let uring = BaseDevice::Uring(Arc::new(UringDevice::open(&path, Some(4096)).unwrap()));
    for workload in [Workload::RandRead, Workload::RandWrite] {
        let (count, ios) = steady_loop_allocations(uring.clone(), workload, 5_000);
        assert_eq!(count, 0, "uring {workload:?}: {count} allocations over {ios} IOs");
    }
    drop(uring);
    let _ = std::fs::remove_file(&path);
}

/// The counter itself works: a loop that does allocate is seen.
#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let boxes: Vec<Box<u64>> = (0..100).map(Box::new).collect();
    assert!(allocations() - before >= 100, "{}", boxes.len());
}
