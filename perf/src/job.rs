//! One perf job: a poller that keeps `queue_depth` IOs in flight against one bdev channel on one
//! core, measures them, and reports when its time is up.
//!
//! Every buffer is allocated when the job is built; a steady loop moves requests and their
//! buffers between the job and the channel and records latencies into a preallocated histogram,
//! so it allocates nothing per IO (`tests/no_alloc.rs` counts). Phases: an optional prefill
//! (every block written once, then a flush), the timed run, and a drain; `verify_only` instead
//! reads every block once and checks it against the pattern seeds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bdev_thin::host::{
    CoreId, DeviceChannel, IoBuffer, IoCompletion, IoKind, IoRequest, PollStatus, Poller, SgList,
};
use hdrhistogram::Histogram;
use uuid::Uuid;

use crate::args::Workload;
use crate::pattern::{self, Rng};

/// Seconds between resets of the `reset` workload (bdevperf's period).
const RESET_PERIOD_NS: u64 = 10_000_000_000;

/// What a job is asked to do.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub index: usize,
    pub bdev_name: String,
    pub bdev_uuid: Uuid,
    pub core: CoreId,
    pub workload: Workload,
    pub rwmixread: u32,
    pub queue_depth: u32,
    pub io_size_bytes: u64,
    pub block_size_bytes: u32,
    pub time_s: u64,
    pub prefill: bool,
    pub pattern: Option<Vec<u64>>,
    /// First block and block count of the job's part of the bdev.
    pub first_block: u64,
    pub num_blocks: u64,
}

impl JobSpec {
    pub fn io_blocks(&self) -> u64 {
        self.io_size_bytes / u64::from(self.block_size_bytes)
    }

    pub fn check(&self) -> Result<(), String> {
        if !self.io_size_bytes.is_multiple_of(u64::from(self.block_size_bytes)) {
            return Err(format!(
                "IO size {} is not a multiple of {}'s block size {}",
                self.io_size_bytes, self.bdev_name, self.block_size_bytes
            ));
        }
        if self.num_blocks < self.io_blocks() {
            return Err(format!("{} is smaller than one IO", self.bdev_name));
        }
        if self.verifies() && self.ios_in_range() > VERIFY_IOS_IN_RANGE_MAX {
            return Err(format!(
                "{}: the job's range holds more IOs than verify can track ({})",
                self.bdev_name, VERIFY_IOS_IN_RANGE_MAX
            ));
        }
        Ok(())
    }

    /// Whether the timed phase writes and reads back (verify, reset).
    fn verifies(&self) -> bool {
        matches!(self.workload, Workload::Verify | Workload::Reset)
    }

    /// Whole IOs in the job's range: the offsets the timed phase picks from.
    fn ios_in_range(&self) -> u64 {
        (self.num_blocks / self.io_blocks().max(1)).max(1)
    }

    /// bdevperf's rule: a verify job never has two IOs on one offset at once, so its queue
    /// depth is at most the IOs its range holds. Lowers the depth and says so, or returns None.
    pub fn limit_verify_depth(&mut self) -> Option<String> {
        let ios = self.ios_in_range();
        if !self.verifies() || u64::from(self.queue_depth) <= ios {
            return None;
        }
        let warning = format!(
            "Due to constraints of verify job, queue depth (-q, {}) can't exceed the number of \
             IO requests which can be submitted to the bdev {} simultaneously ({ios}). Queue \
             depth is limited to {ios}",
            self.queue_depth, self.bdev_name
        );
        // Fits: ios < queue_depth, a u32.
        self.queue_depth = ios as u32;
        Some(warning)
    }
}

/// Offsets a verify job tracks (one bit each, as bdevperf's `outstanding` array).
const VERIFY_IOS_IN_RANGE_MAX: u64 = 1 << 32;

/// Live counters the main thread reads for the progress line.
#[derive(Debug, Default)]
pub struct JobProgress {
    pub ios: AtomicU64,
    pub bytes: AtomicU64,
    pub failed: AtomicU64,
    pub latency_sum_ns: AtomicU64,
}

/// How a job ended (bdevperf's `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    Finished,
    Failed,
    Terminated,
}

impl JobStatus {
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Finished => "finished",
            JobStatus::Failed => "failed",
            JobStatus::Terminated => "terminated",
        }
    }
}

/// A finished job's measurements.
#[derive(Clone, Debug)]
pub struct JobResult {
    pub spec: JobSpec,
    pub status: JobStatus,
    pub runtime_ns: u64,
    pub ios: u64,
    pub failed: u64,
    pub latency_ns: Histogram<u64>,
    pub latency_sum_ns: u64,
    pub latency_min_ns: u64,
    pub latency_max_ns: u64,
    /// verify_only: blocks that matched none of the patterns.
    pub mismatched_blocks: u64,
    /// Failed IOs of the prefill and flush phases.
    pub prefill_failed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Prefill,
    PrefillFlush,
    Timed,
    VerifyOnly,
    Draining,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Idle,
    /// An IO whose completion ends its cycle.
    Single,
    /// verify: the write of a write-then-read-back pair.
    VerifyWrite,
    /// verify: the read-back.
    VerifyRead,
    /// Not measured (prefill, flushes between phases, resets).
    Unmeasured,
}

struct Slot {
    data: Option<SgList>,
    check: Option<SgList>,
    offset_blocks: u64,
    num_blocks: u64,
    stage: Stage,
    /// The phase the IO was issued in; only timed-phase IOs are measured.
    timed: bool,
}

/// The job's poller. Generic over the channel so tests can drive it on any device.
pub struct Job<C: DeviceChannel> {
    spec: JobSpec,
    channel: C,
    clock: fn() -> u64,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_flight: usize,
    rng: Rng,
    next_block: u64,
    phase: Phase,
    started_ns: u64,
    deadline_ns: u64,
    next_reset_ns: u64,
    write_seed: u64,
    stop: Arc<AtomicBool>,
    stopped_early: bool,
    progress: Arc<JobProgress>,
    result: Option<JobResult>,
    on_done: Option<Box<dyn FnOnce(JobResult)>>,
    /// Extra slot for flushes between phases and periodic resets.
    side_request_pending: bool,
    /// Completions of one poll, capacity reserved for every IO that can be in flight.
    completed: Vec<IoCompletion>,
    /// verify: one bit per IO offset of the range, set while a write-and-read-back pair is on
    /// it, so two pairs never overlap (a read-back would see the other pair's data).
    outstanding: Vec<u64>,
}

fn new_buffers(bytes: usize, fill: u8) -> SgList {
    let mut buffer = IoBuffer::new(bytes);
    buffer.as_mut_slice().fill(fill);
    SgList::single(buffer)
}

impl<C: DeviceChannel> Job<C> {
    /// Builds the job and every buffer it will use. `on_done` receives the result once.
    pub fn new(
        spec: JobSpec,
        channel: C,
        clock: fn() -> u64,
        stop: Arc<AtomicBool>,
        progress: Arc<JobProgress>,
        on_done: Box<dyn FnOnce(JobResult)>,
    ) -> Job<C> {
        let mut spec = spec;
        // Callers that did not (`run` warns first) get the clamp silently.
        let _ = spec.limit_verify_depth();
        let depth = spec.queue_depth as usize;
        let io_bytes = spec.io_size_bytes as usize;
        let data_workload =
            !matches!(spec.workload, Workload::Unmap | Workload::WriteZeroes | Workload::Flush);
        let verifying = matches!(spec.workload, Workload::Verify | Workload::Reset);
        let slots = (0..depth)
            .map(|_| Slot {
                data: (data_workload || spec.prefill).then(|| new_buffers(io_bytes, 0xa5)),
                check: verifying.then(|| new_buffers(io_bytes, 0)),
                offset_blocks: 0,
                num_blocks: 0,
                stage: Stage::Idle,
                timed: false,
            })
            .collect();
        let phase = if spec.prefill {
            Phase::Prefill
        } else if spec.workload == Workload::VerifyOnly {
            Phase::VerifyOnly
        } else {
            Phase::Timed
        };
        let now = clock();
        let mut job = Job {
            rng: Rng::new(spec.index as u64 ^ spec.bdev_uuid.as_u64_pair().0),
            free: (0..depth as u32).rev().collect(),
            slots,
            in_flight: 0,
            next_block: 0,
            phase,
            started_ns: now,
            deadline_ns: u64::MAX,
            next_reset_ns: now + RESET_PERIOD_NS,
            write_seed: spec.pattern.as_ref().and_then(|p| p.first().copied()).unwrap_or(0),
            stop,
            stopped_early: false,
            progress,
            result: Some(JobResult {
                spec: spec.clone(),
                status: JobStatus::Finished,
                runtime_ns: 0,
                ios: 0,
                failed: 0,
                latency_ns: Histogram::new_with_bounds(1, 600_000_000_000, 3)
                    .expect("static histogram bounds are valid"),
                latency_sum_ns: 0,
                latency_min_ns: u64::MAX,
                latency_max_ns: 0,
                mismatched_blocks: 0,
                prefill_failed: 0,
            }),
            on_done: Some(on_done),
            side_request_pending: false,
            completed: Vec::with_capacity(depth * 2 + 2),
            outstanding: if verifying {
                vec![0; spec.ios_in_range().div_ceil(64) as usize]
            } else {
                Vec::new()
            },
            spec,
            channel,
            clock,
        };
        if job.phase == Phase::Timed {
            job.start_timed(now);
        }
        job
    }

    fn start_timed(&mut self, now: u64) {
        self.phase = Phase::Timed;
        self.started_ns = now;
        self.deadline_ns = now.saturating_add(self.spec.time_s.saturating_mul(1_000_000_000));
        self.next_reset_ns = now + RESET_PERIOD_NS;
        self.next_block = 0;
    }

    /// The channel, for tests that inspect it.
    pub fn channel(&self) -> &C {
        &self.channel
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Completed timed IOs so far.
    pub fn ios(&self) -> u64 {
        self.result.as_ref().map_or(0, |r| r.ios)
    }

    fn result_mut(&mut self) -> &mut JobResult {
        self.result.as_mut().expect("the result exists until the job is done")
    }

    /// The next sequential chunk of the job's range, or None once it is covered.
    fn next_sequential_chunk(&mut self) -> Option<(u64, u64)> {
        if self.next_block >= self.spec.num_blocks {
            return None;
        }
        let blocks = self.spec.io_blocks().min(self.spec.num_blocks - self.next_block);
        let offset = self.spec.first_block + self.next_block;
        self.next_block += blocks;
        Some((offset, blocks))
    }

    /// The offset of the next timed IO (whole IOs inside the range, as bdevperf aligns them).
    fn next_timed_offset(&mut self) -> u64 {
        let io_blocks = self.spec.io_blocks();
        let ios_in_range = (self.spec.num_blocks / io_blocks).max(1);
        let mut index = if self.spec.workload.is_random() {
            self.rng.below(ios_in_range)
        } else {
            let index = self.next_block % ios_in_range;
            self.next_block = index + 1;
            index
        };
        if !self.outstanding.is_empty() {
            // The next offset no pair holds: one exists, since the depth is at most the
            // range's IOs and the asking slot holds none.
            for _ in 0..ios_in_range {
                if !self.is_outstanding(index) {
                    break;
                }
                index = (index + 1) % ios_in_range;
                self.next_block = index + 1;
            }
            debug_assert!(!self.is_outstanding(index), "every offset of the range is in flight");
            self.set_outstanding(index, true);
        }
        self.spec.first_block + index * io_blocks
    }

    fn is_outstanding(&self, index: u64) -> bool {
        self.outstanding[(index / 64) as usize] & 1 << (index % 64) != 0
    }

    fn set_outstanding(&mut self, index: u64, on: bool) {
        let word = &mut self.outstanding[(index / 64) as usize];
        if on {
            *word |= 1 << (index % 64);
        } else {
            *word &= !(1 << (index % 64));
        }
    }

    /// Frees the offset slot `index` held, if it holds a verify pair's.
    fn release_offset(&mut self, index: usize) {
        let slot = &self.slots[index];
        if !self.outstanding.is_empty()
            && matches!(slot.stage, Stage::VerifyWrite | Stage::VerifyRead)
        {
            let offset_index = (slot.offset_blocks - self.spec.first_block) / self.spec.io_blocks();
            self.set_outstanding(offset_index, false);
        }
    }

    fn fill_pattern(&self, buffers: &mut SgList, offset_blocks: u64, num_blocks: u64, seed: u64) {
        let block_size = self.spec.block_size_bytes as usize;
        let mut lba = offset_blocks;
        let mut remaining = num_blocks;
        for segment in buffers.segments_mut() {
            for block in segment.as_mut_slice().chunks_exact_mut(block_size) {
                if remaining == 0 {
                    return;
                }
                pattern::fill_block(block, pattern::block_key(&self.spec.bdev_uuid, lba, seed));
                lba += 1;
                remaining -= 1;
            }
        }
    }

    /// Builds the request for slot `index` in the current phase, or None if the phase has
    /// nothing more to issue.
    fn build_request(&mut self, index: usize) -> Option<IoRequest> {
        let tag = index as u64;
        let (kind, offset, blocks, stage) = match self.phase {
            Phase::Prefill => {
                let (offset, blocks) = self.next_sequential_chunk()?;
                (IoKind::Write, offset, blocks, Stage::Unmeasured)
            }
            Phase::VerifyOnly => {
                let (offset, blocks) = self.next_sequential_chunk()?;
                (IoKind::Read, offset, blocks, Stage::Single)
            }
            Phase::Timed => {
                let offset = self.next_timed_offset();
                let blocks = self.spec.io_blocks();
                let (kind, stage) = match self.spec.workload {
                    Workload::Read | Workload::RandRead => (IoKind::Read, Stage::Single),
                    Workload::Write | Workload::RandWrite => (IoKind::Write, Stage::Single),
                    Workload::Rw | Workload::RandRw => {
                        if self.rng.below(100) < u64::from(self.spec.rwmixread) {
                            (IoKind::Read, Stage::Single)
                        } else {
                            (IoKind::Write, Stage::Single)
                        }
                    }
                    Workload::Unmap => (IoKind::Unmap, Stage::Single),
                    Workload::WriteZeroes => (IoKind::WriteZeroes, Stage::Single),
                    Workload::Flush => (IoKind::Flush, Stage::Single),
                    Workload::Verify | Workload::Reset => (IoKind::Write, Stage::VerifyWrite),
                    Workload::VerifyOnly => return None,
                };
                (kind, offset, blocks, stage)
            }
            Phase::PrefillFlush | Phase::Draining | Phase::Done => return None,
        };
        let bytes = (blocks * u64::from(self.spec.block_size_bytes)) as usize;
        let mut data = None;
        if kind.has_data() {
            let mut buffers = self.slots[index].data.take()?;
            // The last chunk of a sequential pass may be shorter than the IO size: the tail
            // waits in the slot and rejoins the buffer when the IO completes.
            if buffers.len_bytes() > bytes {
                self.slots[index].data = buffers.split_off(bytes);
            }
            if kind == IoKind::Write {
                let seed = match stage {
                    Stage::VerifyWrite => {
                        self.write_seed = self.write_seed.wrapping_add(1);
                        Some(self.write_seed)
                    }
                    _ => self.spec.pattern.as_ref().map(|_| self.write_seed),
                };
                if let Some(seed) = seed {
                    self.fill_pattern(&mut buffers, offset, blocks, seed);
                }
            }
            data = Some(buffers);
        }
        let slot = &mut self.slots[index];
        slot.offset_blocks = offset;
        slot.num_blocks = blocks;
        slot.stage = stage;
        slot.timed = self.phase == Phase::Timed;
        let mut request = IoRequest::new(kind, offset, blocks, tag);
        if let Some(data) = data {
            request.buffers = data;
        }
        Some(request)
    }

    fn submit(&mut self, mut request: IoRequest) -> bool {
        request.submitted_at_ns = (self.clock)();
        match self.channel.submit(request) {
            Ok(()) => {
                self.in_flight += 1;
                true
            }
            Err(request) => {
                // Back-pressure: give the buffers back to the slot and retry next poll.
                let index = request.tag as usize;
                self.restore_buffers(index, request.buffers);
                self.release_offset(index);
                self.slots[index].stage = Stage::Idle;
                self.free.push(index as u32);
                false
            }
        }
    }

    /// Puts a completed request's buffers back into its slot, rejoining a split-off tail.
    fn restore_buffers(&mut self, index: usize, mut buffers: SgList) {
        if buffers.is_empty() {
            return;
        }
        let slot = &mut self.slots[index];
        if let Some(tail) = slot.data.take()
            && buffers.append(tail).is_err()
        {
            debug_assert!(false, "a split tail always rejoins its buffer");
        }
        slot.data = Some(buffers);
    }

    fn record(&mut self, timed: bool, latency_ns: u64, ok: bool, bytes: u64) {
        if !timed {
            if !ok {
                self.result_mut().prefill_failed += 1;
            }
            return;
        }
        let result = self.result_mut();
        result.ios += 1;
        if ok {
            result.latency_sum_ns += latency_ns;
            result.latency_min_ns = result.latency_min_ns.min(latency_ns);
            result.latency_max_ns = result.latency_max_ns.max(latency_ns);
            result.latency_ns.saturating_record(latency_ns.max(1));
        } else {
            result.failed += 1;
        }
        let ios = result.ios;
        let failed = result.failed;
        let latency_sum_ns = result.latency_sum_ns;
        self.progress.latency_sum_ns.store(latency_sum_ns, Ordering::Relaxed);
        self.progress.ios.store(ios, Ordering::Relaxed);
        self.progress.failed.store(failed, Ordering::Relaxed);
        let total = self.progress.bytes.load(Ordering::Relaxed);
        self.progress.bytes.store(total + bytes, Ordering::Relaxed);
    }

    fn on_completion(&mut self, completion: IoCompletion, now: u64) {
        self.in_flight -= 1;
        let IoCompletion { request, status } = completion;
        if request.tag == u64::MAX {
            // A flush between phases or a periodic reset.
            self.side_request_pending = false;
            if !status.is_success() {
                self.result_mut().prefill_failed += 1;
            }
            if self.phase == Phase::PrefillFlush {
                self.after_prefill(now);
            }
            return;
        }
        let index = request.tag as usize;
        let latency = now.saturating_sub(request.submitted_at_ns);
        let ok = status.is_success();
        let stage = self.slots[index].stage;
        let timed = self.slots[index].timed;
        let bytes = request.num_blocks * u64::from(self.spec.block_size_bytes);
        match stage {
            Stage::VerifyWrite if ok && self.phase == Phase::Timed => {
                // Read the same blocks back into the check buffer, keeping the written data.
                let (offset, blocks) = (request.offset_blocks, request.num_blocks);
                let IoRequest { buffers, .. } = request;
                self.restore_buffers(index, buffers);
                let check = self.slots[index].check.take().unwrap_or_default();
                let mut check = check;
                let want = (blocks * u64::from(self.spec.block_size_bytes)) as usize;
                let tail = if check.len_bytes() > want { check.split_off(want) } else { None };
                self.slots[index].stage = Stage::VerifyRead;
                let mut read =
                    IoRequest::new(IoKind::Read, offset, blocks, index as u64).with_buffers(check);
                read.submitted_at_ns = request.submitted_at_ns;
                if let Some(tail) = tail {
                    // Kept aside until the read returns.
                    self.slots[index].check = Some(tail);
                }
                if let Err(back) = self.channel.submit(read) {
                    let IoRequest { mut buffers, .. } = back;
                    if let Some(tail) = self.slots[index].check.take() {
                        let _ = buffers.append(tail);
                    }
                    self.slots[index].check = Some(buffers);
                    self.record(timed, latency, false, bytes);
                    self.release(index);
                } else {
                    self.in_flight += 1;
                }
            }
            Stage::VerifyRead => {
                let IoRequest { mut buffers, .. } = request;
                let matches = ok && self.read_back_matches(index, &buffers);
                if let Some(tail) = self.slots[index].check.take() {
                    let _ = buffers.append(tail);
                }
                self.slots[index].check = Some(buffers);
                self.record(timed, latency, matches, bytes);
                self.release(index);
            }
            _ => {
                let mut ok = ok;
                if ok && self.phase == Phase::VerifyOnly && request.kind == IoKind::Read {
                    let mismatched = self.count_mismatched(&request);
                    if mismatched > 0 {
                        self.result_mut().mismatched_blocks += mismatched;
                        ok = false;
                    }
                }
                let timed = timed || self.phase == Phase::VerifyOnly;
                let IoRequest { buffers, .. } = request;
                self.restore_buffers(index, buffers);
                self.record(timed, latency, ok, bytes);
                self.release(index);
            }
        }
    }

    fn release(&mut self, index: usize) {
        self.release_offset(index);
        self.slots[index].stage = Stage::Idle;
        self.free.push(index as u32);
    }

    fn read_back_matches(&self, index: usize, read: &SgList) -> bool {
        let Some(written) = self.slots[index].data.as_ref() else { return false };
        let length = read.len_bytes();
        let mut offset = 0;
        for segment in read.segments() {
            let mut position = 0;
            for written_segment in written.segments() {
                let bytes = written_segment.as_slice();
                if offset >= position + bytes.len() {
                    position += bytes.len();
                    continue;
                }
                let start = offset - position;
                let n = (bytes.len() - start).min(segment.len());
                if bytes[start..start + n] != segment.as_slice()[..n] {
                    return false;
                }
                break;
            }
            offset += segment.len();
        }
        offset == length
    }

    fn count_mismatched(&self, request: &IoRequest) -> u64 {
        let Some(seeds) = self.spec.pattern.as_ref() else { return 0 };
        let block_size = self.spec.block_size_bytes as usize;
        let mut lba = request.offset_blocks;
        let mut mismatched = 0;
        for segment in request.buffers.segments() {
            for block in segment.as_slice().chunks_exact(block_size) {
                if lba >= request.offset_blocks + request.num_blocks {
                    return mismatched;
                }
                let good = seeds.iter().any(|&seed| {
                    pattern::block_matches(
                        block,
                        pattern::block_key(&self.spec.bdev_uuid, lba, seed),
                    )
                });
                if !good {
                    mismatched += 1;
                }
                lba += 1;
            }
        }
        mismatched
    }

    fn after_prefill(&mut self, now: u64) {
        if self.spec.workload == Workload::VerifyOnly {
            self.phase = Phase::VerifyOnly;
            self.next_block = 0;
        } else if self.spec.time_s == 0 {
            self.phase = Phase::Draining;
        } else {
            self.start_timed(now);
        }
    }

    fn submit_side_request(&mut self, kind: IoKind) -> bool {
        let mut request = IoRequest::new(kind, 0, 0, u64::MAX);
        request.submitted_at_ns = (self.clock)();
        match self.channel.submit(request) {
            Ok(()) => {
                self.in_flight += 1;
                self.side_request_pending = true;
                true
            }
            Err(_) => false,
        }
    }

    fn finish(&mut self, now: u64) {
        self.phase = Phase::Done;
        let started = self.started_ns;
        let stopped_early = self.stopped_early;
        let Some(mut result) = self.result.take() else { return };
        result.runtime_ns = now.saturating_sub(started).max(1);
        if result.latency_min_ns == u64::MAX {
            result.latency_min_ns = 0;
        }
        if stopped_early {
            result.status = JobStatus::Terminated;
        }
        if let Some(on_done) = self.on_done.take() {
            on_done(result);
        }
    }

    /// One turn: reap completions, advance the phase, refill the queue.
    pub fn step(&mut self) -> PollStatus {
        if self.phase == Phase::Done {
            return PollStatus::Idle;
        }
        let clock = self.clock;
        // Completions are handled after the channel's poll returns, so handlers may submit.
        // The batch never exceeds the IOs in flight, within the capacity reserved at build.
        let mut batch = std::mem::take(&mut self.completed);
        let completions = self.channel.poll(&mut |completion| batch.push(completion));
        let now = clock();
        for completion in batch.drain(..) {
            self.on_completion(completion, now);
        }
        self.completed = batch;
        if self.stop.load(Ordering::Relaxed) && !matches!(self.phase, Phase::Draining | Phase::Done)
        {
            self.stopped_early = true;
            self.phase = Phase::Draining;
        }
        if self.phase == Phase::Timed && now >= self.deadline_ns {
            self.phase = Phase::Draining;
        }
        let reset_due = self.phase == Phase::Timed
            && self.spec.workload == Workload::Reset
            && now >= self.next_reset_ns
            && !self.side_request_pending;
        if reset_due && self.submit_side_request(IoKind::Reset) {
            self.next_reset_ns = now + RESET_PERIOD_NS;
        }
        let mut submitted = 0;
        while let Some(&index) = self.free.last() {
            let Some(request) = self.build_request(index as usize) else { break };
            self.free.pop();
            if !self.submit(request) {
                break;
            }
            submitted += 1;
        }
        if self.in_flight == 0 {
            match self.phase {
                Phase::Prefill => {
                    self.phase = Phase::PrefillFlush;
                    if !self.submit_side_request(IoKind::Flush) {
                        self.after_prefill(now);
                    }
                }
                Phase::VerifyOnly => {
                    // Every block read: done.
                    self.finish(now);
                }
                Phase::Draining => self.finish(now),
                _ => {}
            }
        }
        PollStatus::busy_if(completions + submitted > 0 || self.in_flight > 0)
    }
}

impl<C: DeviceChannel> Poller for Job<C> {
    fn poll(&mut self) -> PollStatus {
        self.step()
    }

    fn name(&self) -> &str {
        "perf_job"
    }

    fn begin_stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn is_drained(&self) -> bool {
        self.in_flight == 0
    }

    fn is_finished(&self) -> bool {
        self.phase == Phase::Done
    }

    fn prepare_park(&mut self) -> bool {
        self.in_flight == 0 && self.channel.prepare_park()
    }
}
