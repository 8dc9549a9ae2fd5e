//! perf: a bdevperf-compatible benchmark that runs jobs on the embedded runtime against the
//! bdevs a JSON config creates. The binary only parses arguments and prints; everything else is
//! here so tests can drive it.

pub mod args;
pub mod job;
pub mod pattern;
pub mod report;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bdev_thin::bdev::Bdev;
use bdev_thin::host::{CoreId, IoKind};
use bdev_thin::runtime::{CoreMask, Runtime, RuntimeOptions};
use bdev_thin::target::Target;

pub use args::{Args, Workload};
pub use job::{Job, JobProgress, JobResult, JobSpec};

/// The IO kinds a workload needs the bdev to serve.
fn needed_kinds(workload: Workload, prefill: bool) -> Vec<IoKind> {
    let mut kinds = match workload {
        Workload::Read | Workload::RandRead | Workload::VerifyOnly => vec![IoKind::Read],
        Workload::Write | Workload::RandWrite => vec![IoKind::Write],
        Workload::Rw | Workload::RandRw | Workload::Verify => vec![IoKind::Read, IoKind::Write],
        Workload::Reset => vec![IoKind::Read, IoKind::Write, IoKind::Reset],
        Workload::Unmap => vec![IoKind::Unmap],
        Workload::WriteZeroes => vec![IoKind::WriteZeroes],
        Workload::Flush => vec![IoKind::Flush],
    };
    if prefill {
        kinds.push(IoKind::Write);
    }
    kinds
}

/// Places jobs as bdevperf does: one job per bdev, round-robin over the cores; with `-C`, every
/// bdev on every core, each job taking an equal part of the bdev's blocks.
pub fn place_jobs(args: &Args, bdevs: &[Arc<Bdev>], cores: &[CoreId]) -> Vec<JobSpec> {
    let mut specs = Vec::new();
    for (bdev_index, bdev) in bdevs.iter().enumerate() {
        let info = bdev.info();
        let placements: Vec<CoreId> =
            if args.every_core { cores.to_vec() } else { vec![cores[bdev_index % cores.len()]] };
        let parts = placements.len() as u64;
        let blocks_per_part = info.num_blocks / parts;
        for (part, core) in placements.iter().enumerate() {
            let part = part as u64;
            let num_blocks = if part == parts - 1 {
                info.num_blocks - blocks_per_part * part
            } else {
                blocks_per_part
            };
            specs.push(JobSpec {
                index: specs.len(),
                bdev_name: bdev.name().to_string(),
                bdev_uuid: args.pattern_uuid.unwrap_or_else(|| bdev.uuid()),
                core: *core,
                workload: args.workload,
                rwmixread: args.rwmixread.unwrap_or(100),
                queue_depth: args.queue_depth,
                io_size_bytes: args.io_size,
                block_size_bytes: info.block_size_bytes,
                time_s: args.time_s,
                prefill: args.prefill,
                pattern: args.pattern.as_ref().map(|seeds| seeds.0.clone()),
                first_block: blocks_per_part * part,
                num_blocks,
            });
        }
    }
    specs
}

/// What a run produced.
pub struct RunReport {
    pub results: Vec<JobResult>,
    pub core_count: usize,
    pub skipped: Vec<String>,
}

/// Runs `args` to the end: starts the reactors, loads the config, runs the jobs, stops.
/// `interrupted` ends the run early (SIGINT); progress lines go to `progress`.
pub fn run(
    args: &Args,
    interrupted: &Arc<AtomicBool>,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<RunReport> {
    args.validate().map_err(anyhow::Error::msg)?;
    let mask = CoreMask::parse(&args.core_mask).map_err(anyhow::Error::msg)?;
    let runtime =
        Runtime::start(RuntimeOptions { mask, park: !args.no_park, ..Default::default() })
            .context("starting reactors")?;
    let handle = runtime.handle();
    let target = Target::new(handle.clone());
    bdev_thin::config::load(&target, &args.config)?;
    target.set_initialized();

    let bdevs = match &args.target {
        Some(name) => vec![target.bdevs.get(name).with_context(|| format!("-T {name}"))?],
        None => target.bdevs.leaves(),
    };
    if bdevs.is_empty() {
        bail!("the config creates no bdev to test");
    }
    let mut skipped = Vec::new();
    let usable: Vec<Arc<Bdev>> = bdevs
        .into_iter()
        .filter(|bdev| {
            let missing = needed_kinds(args.workload, args.prefill)
                .into_iter()
                .find(|kind| !bdev.device().supports(*kind));
            if let Some(kind) = missing {
                skipped.push(format!(
                    "Skipping {} because it does not support {}",
                    bdev.name(),
                    kind.name()
                ));
            }
            missing.is_none()
        })
        .collect();
    let cores = handle.cores();
    let mut specs = place_jobs(args, &usable, &cores);
    for spec in &mut specs {
        spec.check().map_err(anyhow::Error::msg)?;
        if let Some(warning) = spec.limit_verify_depth() {
            eprintln!("perf: warning: {warning}");
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (sender, receiver) = std::sync::mpsc::channel::<anyhow::Result<JobResult>>();
    let mut progresses = Vec::new();
    for spec in specs.iter().cloned() {
        let bdev = target.bdevs.get(&spec.bdev_name)?;
        let descriptor = bdev.open().with_context(|| format!("opening {}", spec.bdev_name))?;
        let job_progress = Arc::new(JobProgress::default());
        progresses.push(Arc::clone(&job_progress));
        let stop = Arc::clone(&stop);
        let sender = sender.clone();
        handle
            .send(spec.core, move |ctx| {
                let channel = match descriptor.bdev().open_channel() {
                    Ok(channel) => channel,
                    Err(e) => {
                        let _ = sender.send(Err(anyhow::anyhow!("{}: {e}", spec.bdev_name)));
                        return;
                    }
                };
                let on_done = Box::new(move |result: JobResult| {
                    drop(descriptor);
                    let _ = sender.send(Ok(result));
                });
                let job = Job::new(
                    spec,
                    channel,
                    bdev_thin::runtime::now_ns,
                    stop,
                    job_progress,
                    on_done,
                );
                ctx.add_local_poller(Box::new(job));
            })
            .map_err(anyhow::Error::msg)?;
    }
    drop(sender);

    if args.time_s > 0 && args.workload != Workload::VerifyOnly {
        progress(&format!("Running I/O for {} seconds...", args.time_s));
    }
    let mut results = Vec::new();
    let started = std::time::Instant::now();
    let mut last = (started, 0u64, 0u64);
    let period = args.period_s.map(Duration::from_secs).unwrap_or(Duration::from_secs(1));
    let mut interrupted_at = None;
    while results.len() < specs.len() {
        match receiver.recv_timeout(period) {
            Ok(result) => results.push(result?),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if args.period_s.is_some() => {
                let elapsed = started.elapsed().as_secs_f64();
                let rows: Vec<_> = specs
                    .iter()
                    .zip(&progresses)
                    .map(|(spec, p)| {
                        (
                            spec,
                            elapsed,
                            p.ios.load(Ordering::Relaxed),
                            p.failed.load(Ordering::Relaxed),
                            p.bytes.load(Ordering::Relaxed),
                            p.latency_sum_ns.load(Ordering::Relaxed),
                        )
                    })
                    .collect();
                progress(&report::period_table(&rows));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let ios: u64 = progresses.iter().map(|p| p.ios.load(Ordering::Relaxed)).sum();
                let bytes: u64 = progresses.iter().map(|p| p.bytes.load(Ordering::Relaxed)).sum();
                let elapsed = last.0.elapsed().as_secs_f64();
                let iops = (ios - last.1) as f64 / elapsed;
                let mibps = (bytes - last.2) as f64 / elapsed / (1 << 20) as f64;
                progress(&report::progress_line(iops, mibps));
                last = (std::time::Instant::now(), ios, bytes);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!("a job ended without a result");
            }
        }
        if interrupted.load(Ordering::Relaxed) && interrupted_at.is_none() {
            interrupted_at = Some(started.elapsed().as_secs_f64());
            stop.store(true, Ordering::Relaxed);
        }
    }
    if let Some(seconds) = interrupted_at {
        progress(&format!("Received shutdown signal, test time was about {seconds:.6} seconds"));
    }
    results.sort_by_key(|r| r.spec.index);
    runtime.stop();
    Ok(RunReport { results, core_count: mask.count(), skipped })
}
