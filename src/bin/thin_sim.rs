//! thin_sim: the deterministic simulator of the thin pool.
//!
//! `thin_sim --seed S` replays one seed; `thin_sim --seeds N --from S` runs N seeds from S
//! (a soak, in chunks of any size) and prints steps/s and a summary; `--file PATH` runs the
//! seeds listed in a file (one seed or range `A..B` a line, `#` comments); `--profile large`
//! draws volumes of 2^20 blocks and more, requests up to 4 MiB and depths up to 1024. A
//! failing seed prints the seed, its replay command and the last steps of its trace, and exits
//! 1. A panic inside the pool does the same through the panic hook.

use std::cell::Cell;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bdev_thin::testing::sim::{self, Profile, SimConfig};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "Deterministic simulator of the thin pool")]
struct Args {
    /// Replay this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Run the CI seed list.
    #[arg(long)]
    ci: bool,
    /// Run this many seeds (with --from).
    #[arg(long)]
    seeds: Option<u64>,
    /// First seed of a soak.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Run the seeds listed in this file.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Steps per seed.
    #[arg(long, default_value_t = 3000)]
    steps: u64,
    /// Data blocks at format (0: the seed picks).
    #[arg(long, default_value_t = 0)]
    data_blocks: u64,
    /// Data block size in bytes (0: the seed picks 4, 8 or 16 KiB).
    #[arg(long, default_value_t = 0)]
    block_bytes: u32,
    /// No crashes.
    #[arg(long)]
    no_crashes: bool,
    /// No injected IO errors.
    #[arg(long)]
    no_faults: bool,
    /// Keep going after a failing seed (a soak reports them all).
    #[arg(long)]
    keep_going: bool,
    /// Switch on a mutation by name (builds with the `mutations` feature), e.g. NoGrace.
    #[arg(long)]
    mutation: Vec<String>,
    /// What the seeds draw: `default` (small pools, lowered limits) or `large`.
    #[arg(long, default_value = "default")]
    profile: String,
}

#[cfg(feature = "mutations")]
fn mutations(names: &[String]) -> Result<bdev_thin::thin::mutations::Mutations> {
    use bdev_thin::thin::mutations::{Mutation, Mutations};
    let mut all = Mutations::NONE;
    for name in names {
        let found = Mutation::ALL.iter().find(|m| format!("{m:?}").eq_ignore_ascii_case(name));
        match found {
            Some(m) => all = all.with(*m),
            None => bail!("unknown mutation {name}; known: {:?}", Mutation::ALL),
        }
    }
    Ok(all)
}

#[cfg(not(feature = "mutations"))]
fn mutations(names: &[String]) -> Result<bdev_thin::thin::mutations::Mutations> {
    if !names.is_empty() {
        bail!("--mutation needs a build with --features mutations");
    }
    Ok(bdev_thin::thin::mutations::Mutations::NONE)
}

thread_local! {
    static CURRENT: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

fn main() -> Result<()> {
    let args = Args::parse();
    let seeds: Vec<u64> = if let Some(seed) = args.seed {
        vec![seed]
    } else if let Some(path) = &args.file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        sim::parse_seed_list(&text).map_err(anyhow::Error::msg)?
    } else if args.ci {
        sim::ci_seeds()
    } else if let Some(count) = args.seeds {
        (args.from..args.from.saturating_add(count)).collect()
    } else {
        bail!("give --seed S, --seeds N [--from S], or --file PATH");
    };
    let steps = args.steps;
    let mutations = mutations(&args.mutation)?;
    let Some(profile) = Profile::parse(&args.profile) else {
        bail!("unknown profile {:?}: default or large", args.profile);
    };
    let profile_flag = if profile == Profile::Default {
        String::new()
    } else {
        format!(" --profile {}", args.profile)
    };
    let replay_flags = format!("--steps {steps}{profile_flag}");
    let default_hook = std::panic::take_hook();
    let hook_flags = replay_flags.clone();
    std::panic::set_hook(Box::new(move |info| {
        if let Some((seed, _)) = CURRENT.with(Cell::get) {
            eprintln!("seed {seed} PANICKED: {info}");
            eprintln!("replay: thin_sim --seed {seed} {hook_flags}");
            eprintln!("last steps:");
            for line in sim::last_trace() {
                eprintln!("  {line}");
            }
        }
        default_hook(info);
    }));
    let started = Instant::now();
    let mut total_steps = 0u64;
    let mut totals = sim::SimReport::default();
    let mut failed = Vec::new();
    for &seed in &seeds {
        let config = SimConfig {
            steps,
            data_blocks: args.data_blocks,
            block_bytes: args.block_bytes,
            crashes: !args.no_crashes,
            faults: !args.no_faults,
            mutations,
            profile,
            ..SimConfig::new(seed)
        };
        CURRENT.with(|c| c.set(Some((seed, steps))));
        // A panic inside the pool is a failing seed too (builds that unwind keep going; the
        // release profile aborts, after the hook printed the replay command).
        let outcome = std::panic::catch_unwind(|| sim::run(config)).unwrap_or_else(|_| {
            Err(sim::SimFailure { seed, step: 0, message: "panic".into(), trace: Vec::new() })
        });
        match outcome {
            Ok(report) => {
                total_steps += report.steps;
                totals.ios += report.ios;
                totals.reads_checked += report.reads_checked;
                totals.sectors_checked += report.sectors_checked;
                totals.deallocates_checked += report.deallocates_checked;
                totals.crashes += report.crashes;
                totals.io_errors += report.io_errors;
                totals.allocations_checked += report.allocations_checked;
                totals.view_entries_checked += report.view_entries_checked;
                if report.read_only {
                    totals.steps += 1; // seeds that ended read-only
                }
                if seeds.len() == 1 {
                    println!("seed {seed}: clean, {report:?}");
                }
            }
            Err(failure) => {
                eprintln!("{failure}");
                eprintln!("replay: thin_sim --seed {seed} {replay_flags}");
                failed.push(seed);
                if !args.keep_going {
                    break;
                }
            }
        }
        CURRENT.with(|c| c.set(None));
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{} seeds ({} failed) from {}, {} steps in {:.1} s = {:.0} steps/s; {} user IOs, {} \
         reads checked ({} sectors), {} deallocate checks, {} allocations checked, {} view \
         entries checked, {} crashes, {} injected IO errors, {} seeds ended read-only",
        seeds.len(),
        failed.len(),
        seeds.first().copied().unwrap_or(0),
        total_steps,
        elapsed,
        total_steps as f64 / elapsed.max(1e-9),
        totals.ios,
        totals.reads_checked,
        totals.sectors_checked,
        totals.deallocates_checked,
        totals.allocations_checked,
        totals.view_entries_checked,
        totals.crashes,
        totals.io_errors,
        totals.steps,
    );
    if !failed.is_empty() {
        bail!("failing seeds: {failed:?}");
    }
    Ok(())
}
