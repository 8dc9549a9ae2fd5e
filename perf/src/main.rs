//! `perf`: parses bdevperf's flags, runs the jobs, prints bdevperf's table and writes the JSON.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Parser;

fn main() {
    let args = perf::Args::parse();
    match run(&args) {
        Ok(failed) => std::process::exit(if failed { 1 } else { 0 }),
        Err(e) => {
            eprintln!("perf: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Returns whether any job failed an IO (verify mismatches included).
fn run(args: &perf::Args) -> anyhow::Result<bool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))
            .context("installing signal handlers")?;
    }
    let terminal = std::io::stdout().is_terminal();
    let report = perf::run(args, &interrupted, |line| {
        let mut out = std::io::stdout();
        if terminal && !line.starts_with("Running") {
            let _ = write!(out, "{line}\r");
        } else {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    })?;
    for line in &report.skipped {
        println!("{line}");
    }
    print!("{}", perf::report::table(&report.results));
    if let Some(path) = &args.json_results {
        let json = perf::report::json(&report.results, report.core_count);
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report
        .results
        .iter()
        .any(|r| r.failed > 0 || r.prefill_failed > 0 || r.mismatched_blocks > 0))
}
