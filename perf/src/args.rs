//! perf's command line: bdevperf's letters and meanings (reference/spdk.md §5), plus API.md's
//! `--prefill`, `--pattern`, `--no-park`, `--json-results` and the `verify_only` workload.

use std::path::PathBuf;

use clap::Parser;

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Read,
    Write,
    RandRead,
    RandWrite,
    Rw,
    RandRw,
    Unmap,
    WriteZeroes,
    Flush,
    Reset,
    Verify,
    VerifyOnly,
}

impl Workload {
    pub fn parse(text: &str) -> Result<Workload, String> {
        Ok(match text {
            "read" => Workload::Read,
            "write" => Workload::Write,
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "rw" => Workload::Rw,
            "randrw" => Workload::RandRw,
            "unmap" => Workload::Unmap,
            "write_zeroes" => Workload::WriteZeroes,
            "flush" => Workload::Flush,
            "reset" => Workload::Reset,
            "verify" => Workload::Verify,
            "verify_only" => Workload::VerifyOnly,
            other => return Err(format!("unknown workload '{other}'")),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::Rw => "rw",
            Workload::RandRw => "randrw",
            Workload::Unmap => "unmap",
            Workload::WriteZeroes => "write_zeroes",
            Workload::Flush => "flush",
            Workload::Reset => "reset",
            Workload::Verify => "verify",
            Workload::VerifyOnly => "verify_only",
        }
    }

    pub fn is_random(self) -> bool {
        matches!(
            self,
            Workload::RandRead
                | Workload::RandWrite
                | Workload::RandRw
                | Workload::Unmap
                | Workload::WriteZeroes
                | Workload::Flush
        )
    }

    pub fn is_mixed(self) -> bool {
        matches!(self, Workload::Rw | Workload::RandRw)
    }
}

/// Parses SPDK's capacity strings: `4096`, `4k`, `4K`, `128KiB`, `1m`, `1M`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| format!("bad size '{text}'"))?;
    let shift = match suffix.to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return Err(format!("bad size suffix in '{text}'")),
    };
    number.checked_mul(1 << shift).ok_or_else(|| format!("size '{text}' overflows"))
}

/// `--pattern S1[,S2...]`: the seeds, first one used for writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seeds(pub Vec<u64>);

fn parse_seeds(text: &str) -> Result<Seeds, String> {
    text.split(',')
        .map(|s| s.trim().parse::<u64>().map_err(|_| format!("bad pattern seed '{s}'")))
        .collect::<Result<Vec<u64>, String>>()
        .map(Seeds)
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "perf",
    version = bdev_thin::VERSION,
    about = "bdevperf-compatible benchmark for bdev_thin"
)]
pub struct Args {
    /// JSON config (SPDK's format) creating the bdevs to test.
    #[arg(short = 'c', long = "config", visible_alias = "json")]
    pub config: PathBuf,
    /// Queue depth of each job.
    #[arg(short = 'q')]
    pub queue_depth: u32,
    /// IO size in bytes (`4k`, `128K`, `1M` accepted).
    #[arg(short = 'o', value_parser = parse_size)]
    pub io_size: u64,
    /// Workload: read, write, randread, randwrite, rw, randrw, unmap, write_zeroes, flush,
    /// reset, verify, verify_only.
    #[arg(short = 'w', value_parser = Workload::parse)]
    pub workload: Workload,
    /// Seconds to run (0 with --prefill: prefill only).
    #[arg(short = 't')]
    pub time_s: u64,
    /// Read percentage of rw and randrw.
    #[arg(short = 'M')]
    pub rwmixread: Option<u32>,
    /// Core mask (`0x3`, `[0,1]`).
    #[arg(short = 'm', default_value = "0x1")]
    pub core_mask: String,
    /// Test only this bdev (name, alias or UUID).
    #[arg(short = 'T')]
    pub target: Option<String>,
    /// Run every bdev on every core.
    #[arg(short = 'C')]
    pub every_core: bool,
    /// Print the table every PERIOD seconds instead of a progress line.
    #[arg(short = 'S')]
    pub period_s: Option<u64>,
    /// Write every block once and flush before the timed run.
    #[arg(long)]
    pub prefill: bool,
    /// Pattern seeds: written data is a function of (bdev UUID, block, first seed);
    /// verify_only accepts any of the listed seeds.
    #[arg(long, value_parser = parse_seeds)]
    pub pattern: Option<Seeds>,
    /// Compute patterns as if the bdev had this UUID: checks a snapshot against what was
    /// written to its origin before the snapshot.
    #[arg(long)]
    pub pattern_uuid: Option<uuid::Uuid>,
    /// Keep reactors polling when idle.
    #[arg(long)]
    pub no_park: bool,
    /// Write results in bdevperf's perform_tests JSON schema.
    #[arg(long)]
    pub json_results: Option<PathBuf>,
}

impl Args {
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_depth == 0 {
            return Err("-q: the queue depth must be at least 1".into());
        }
        if self.queue_depth as usize > bdev_thin::limits::DEVICE_CHANNEL_DEPTH_MAX {
            return Err(format!(
                "-q: at most {} IOs per job",
                bdev_thin::limits::DEVICE_CHANNEL_DEPTH_MAX
            ));
        }
        if self.io_size == 0 || self.io_size as usize > bdev_thin::limits::IO_BYTES_MAX {
            return Err(format!(
                "-o: the IO size must be 1..={} bytes",
                bdev_thin::limits::IO_BYTES_MAX
            ));
        }
        if self.workload.is_mixed() {
            match self.rwmixread {
                Some(m) if m <= 100 => {}
                Some(_) => return Err("-M: a percentage, 0 to 100".into()),
                None => return Err(format!("-M is required for {}", self.workload.name())),
            }
        }
        if self.workload == Workload::VerifyOnly && self.pattern.is_none() {
            return Err("verify_only needs --pattern SEED[,SEED...]".into());
        }
        if self.time_s == 0 && !self.prefill && self.workload != Workload::VerifyOnly {
            return Err("-t: at least 1 second (or -t 0 with --prefill)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_spdk_does() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("128K"), Ok(131072));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert!(parse_size("4x").is_err());
    }
}
