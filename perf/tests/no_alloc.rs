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

/// A thin volume's steady loop allocates nothing either: mapped reads and overwrites go
/// through the channel's fast path, unmapped reads are zero-filled, and the owner (polled in
/// the same loop, idle) allocates nothing per poll; nor do unmaps and write_zeroes of
/// unmapped blocks, which the owner answers. The last rounds split 1 MiB requests into
/// 16 pieces each at depth 128: more pieces than the channel's credits, so requests wait for
/// credits and slide their windows, still without allocating.
#[test]
fn a_steady_thin_loop_allocates_nothing() {
    use bdev_thin::host::{BlockDevice, NoopWaker};
    use bdev_thin::testing::SteppingHost;
    use bdev_thin::thin::channel::{ChannelGeometry, VolumeChannel};
    use bdev_thin::thin::metadata::{Layout, PoolMetadata, PoolRecord};
    use bdev_thin::thin::owner::{ControlOp, Owner, OwnerSettings};
    use bdev_thin::thin::pool::PoolShared;
    use bdev_thin::thin::types::{DiscardMode, OutOfSpaceMode, VolumeId};

    let device = BaseDevice::Malloc(Arc::new(MallocDevice::new(4096, 65536).unwrap()));
    let bytes = 65536 * 4096;
    let layout = Layout::on_data_device(bytes, 65536, bytes).unwrap();
    let record = PoolRecord {
        uuid: [9; 16],
        name: "pool0".into(),
        discard: DiscardMode::Passdown,
        zero_new_blocks: true,
        out_of_space: OutOfSpaceMode::Error,
        no_space_timeout_s: 60,
        low_water_mark: 0,
        commit_interval_ms: 1000,
        needs_check: false,
        data_bdev_uuid: [0; 16],
    };
    let settings = OwnerSettings::from_record(&record, bdev_thin::thin::mutations::Mutations::NONE);
    let meta = PoolMetadata::format(layout, record).unwrap();
    let shared = PoolShared::new(NoopWaker);
    let control = Arc::new(crossbeam_queue::ArrayQueue::new(4));
    let host = SteppingHost::new();
    let mut owner =
        Owner::new(host, Arc::clone(&shared), Arc::clone(&control), meta, &device, settings)
            .unwrap();
    let created = Arc::new(std::sync::Mutex::new(None));
    let answer = Arc::clone(&created);
    let op = ControlOp::CreateVolume {
        uuid: [1; 16],
        name: "vol0".into(),
        size_bytes: 64 << 20,
        done: Box::new(move |r| *answer.lock().unwrap() = Some(r)),
    };
    assert!(control.push(op).is_ok());
    let volume: VolumeId = loop {
        owner.poll();
        if let Some(result) = created.lock().unwrap().take() {
            break result.unwrap();
        }
    };
    let geometry = ChannelGeometry {
        lba_bytes: 4096,
        lbas_per_block: 16,
        data_offset_lbas: layout.data_offset_bytes / 4096,
    };
    let view = shared.view(volume).unwrap();
    let lbas = view.size_lbas();
    for (workload, provision_first, queue_depth, io_size_bytes, measured_ios) in [
        // Unmaps and write_zeroes of blocks nothing maps go through the owner's range path
        // (an op slot, its run list, the answer) and come back without allocating.
        (Workload::Unmap, false, 64, 1 << 20, 20_000),
        (Workload::WriteZeroes, false, 64, 1 << 20, 20_000),
        (Workload::RandRead, false, 64, 4096u64, 100_000),
        (Workload::RandWrite, true, 64, 4096, 100_000),
        (Workload::RandRead, true, 64, 4096, 100_000),
        (Workload::RandRw, true, 64, 4096, 100_000),
        (Workload::RandRead, false, 128, 1 << 20, 2_000),
        (Workload::RandRw, true, 128, 1 << 20, 2_000),
    ] {
        let pieces = queue_depth * io_size_bytes.div_ceil(64 << 10);
        let credits = bdev_thin::limits::THIN_CHANNEL_PIECES_IN_FLIGHT_MAX as u64;
        let ranges = matches!(workload, Workload::Unmap | Workload::WriteZeroes);
        assert!(ranges || io_size_bytes == 4096 || pieces > credits, "more pieces than credits");
        let channel = VolumeChannel::open(
            Arc::clone(&shared),
            Arc::clone(&view),
            &device,
            geometry,
            settings.limits,
            NoopWaker,
        )
        .unwrap();
        let spec = JobSpec {
            index: 0,
            bdev_name: "vol0".into(),
            bdev_uuid: uuid::Uuid::from_u128(8),
            core: 0,
            workload: if provision_first { Workload::Write } else { workload },
            rwmixread: 70,
            queue_depth: queue_depth as u32,
            io_size_bytes,
            block_size_bytes: 4096,
            time_s: 3600,
            prefill: false,
            pattern: None,
            first_block: 0,
            num_blocks: lbas,
        };
        let mut job = Job::new(
            spec.clone(),
            channel,
            bdev_thin::runtime::now_ns,
            Arc::new(AtomicBool::new(false)),
            Arc::new(JobProgress::default()),
            Box::new(|_| {}),
        );
        if provision_first {
            // Every block of the volume written once (provisioning allocates: not measured).
            while job.ios() < lbas / (io_size_bytes / 4096) {
                job.poll();
                owner.poll();
            }
        }
        drop(job);
        let channel = VolumeChannel::open(
            Arc::clone(&shared),
            Arc::clone(&view),
            &device,
            geometry,
            settings.limits,
            NoopWaker,
        )
        .unwrap();
        let mut job = Job::new(
            JobSpec { workload, ..spec },
            channel,
            bdev_thin::runtime::now_ns,
            Arc::new(AtomicBool::new(false)),
            Arc::new(JobProgress::default()),
            Box::new(|_| {}),
        );
        while job.ios() < measured_ios / 5 {
            job.poll();
            owner.poll();
        }
        let before = allocations();
        let ios_before = job.ios();
        while job.ios() < ios_before + measured_ios {
            job.poll();
            owner.poll();
        }
        let count = allocations() - before;
        assert_eq!(
            count, 0,
            "thin {workload:?}, {io_size_bytes} bytes: {count} allocations in {measured_ios} IOs"
        );
        let _ = device.info();
    }
}

/// The counter itself works: a loop that does allocate is seen.
#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let boxes: Vec<Box<u64>> = (0..100).map(Box::new).collect();
    assert!(allocations() - before >= 100, "{}", boxes.len());
}
