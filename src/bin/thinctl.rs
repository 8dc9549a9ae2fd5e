//! `thinctl`: offline tools for a pool's metadata (thin-provisioning-tools' `thin_check` and
//! `thin_dump`). Reads a device or image file with plain positioned reads, never a reactor:
//! run it on a pool nobody has open. `check` verifies checksums, structure and counts
//! (exit 0 clean, 1 with a report) and, with `--clear-needs-check`, clears the flag a failed
//! metadata write left once the check passed (the pool then opens writable again); `dump`
//! prints the superblock, volumes and mappings as runs.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bdev_thin::thin::metadata::{self, METADATA_BLOCK_BYTES, PoolMetadata};
use bdev_thin::thin::types::MetaBlock;
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "thinctl", about = "Check and dump bdev_thin pool metadata offline")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify checksums, structure and reference counts; exit 0 when clean.
    Check {
        /// The pool's data device (metadata at its start unless --metadata).
        device: PathBuf,
        /// The metadata device, when metadata is separate.
        #[arg(long)]
        metadata: Option<PathBuf>,
        /// When the check passes, clear the pool's needs_check flag (it then opens writable).
        /// Refused while another process (a daemon) holds the device.
        #[arg(long)]
        clear_needs_check: bool,
    },
    /// Print the superblock, volumes and mappings (runs of consecutive blocks).
    Dump {
        device: PathBuf,
        #[arg(long)]
        metadata: Option<PathBuf>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The metadata region on a file or block device, read a block at a time.
struct Region {
    file: File,
    bytes: u64,
}

impl Region {
    fn open(path: &Path) -> anyhow::Result<Region> {
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let bytes = file.seek(SeekFrom::End(0)).context("finding the device size")?;
        Ok(Region { file, bytes })
    }

    fn read(&self, block: MetaBlock, buf: &mut [u8]) -> std::io::Result<()> {
        let offset = block.0.checked_mul(METADATA_BLOCK_BYTES as u64).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "block out of range")
        })?;
        self.file.read_exact_at(buf, offset)
    }

    fn reader(&self) -> impl FnMut(MetaBlock, &mut [u8]) -> std::io::Result<()> + '_ {
        move |block, buf| self.read(block, buf)
    }
}

fn main() {
    let args = Args::parse();
    let result = match &args.command {
        Command::Check { device, metadata, clear_needs_check } => {
            check(device, metadata.as_deref(), *clear_needs_check)
        }
        Command::Dump { device, metadata, json } => dump(device, metadata.as_deref(), *json),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("thinctl: {error:#}");
            std::process::exit(2);
        }
    }
}

fn check(device: &Path, metadata_path: Option<&Path>, clear: bool) -> anyhow::Result<i32> {
    let path = metadata_path.unwrap_or(device);
    // Clearing writes: take the device as the daemon does (exclusive), so a pool in use is
    // never changed under its owner.
    let writer = if clear { Some(open_exclusive(path)?) } else { None };
    let region = Region::open(path)?;
    let mut problems = Vec::new();
    if let Ok(Some((layout, pool, _))) = PoolMetadata::probe(&mut region.reader()) {
        if pool.needs_check {
            println!("note: the pool's needs_check flag is set (a metadata write failed)");
        }
        let region_bytes = layout.metadata_blocks.saturating_mul(METADATA_BLOCK_BYTES as u64);
        if region_bytes > region.bytes {
            problems.push(format!(
                "metadata region of {region_bytes} bytes is larger than the device ({} bytes)",
                region.bytes
            ));
        }
        if metadata_path.is_none() {
            let data = layout
                .data_blocks
                .saturating_mul(u64::from(layout.data_block_bytes))
                .saturating_add(layout.data_offset_bytes);
            if data > region.bytes {
                problems.push(format!(
                    "data area ends at byte {data}, past the device ({} bytes)",
                    region.bytes
                ));
            }
        }
    }
    match metadata::check(&mut region.reader()) {
        Ok(report) if problems.is_empty() => {
            println!(
                "clean: transaction {}, {} volumes, {} mappings, {} of {} data blocks used, \
                 {} of {} metadata blocks used",
                report.transaction_id,
                report.volumes,
                report.mappings,
                report.data_blocks_used,
                report.data_blocks,
                report.metadata_blocks_used,
                report.metadata_blocks
            );
            if let Some(file) = writer {
                clear_needs_check(&region, &file)?;
            }
            Ok(0)
        }
        Ok(_) => report_problems(&problems),
        Err(found) => {
            problems.extend(found);
            report_problems(&problems)
        }
    }
}

/// Opens `path` for writing as the daemon opens a base device: O_EXCL on a block device and
/// an exclusive flock, both refused while a daemon has it.
fn open_exclusive(path: &Path) -> anyhow::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let is_block_device = std::fs::metadata(path)
        .with_context(|| format!("opening {}", path.display()))?
        .file_type()
        .is_block_device();
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true);
    if is_block_device {
        options.custom_flags(libc::O_EXCL);
    }
    let busy = || anyhow::anyhow!("{} is in use (is a daemon serving the pool?)", path.display());
    let file = options.open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => busy(),
        _ => anyhow::Error::new(e).context(format!("opening {} for writing", path.display())),
    })?;
    if !bdev_thin::sys::lock_exclusive(&file).context("locking the device")? {
        return Err(busy());
    }
    Ok(file)
}

/// Writes the superblock of the checked pool with needs_check down (the next transaction
/// id, the same trees), then syncs it to the device.
fn clear_needs_check(region: &Region, file: &File) -> anyhow::Result<()> {
    let metadata = PoolMetadata::open(&mut region.reader()).context("opening the pool")?;
    if !metadata.pool().needs_check {
        println!("needs_check was not set");
        return Ok(());
    }
    let (block, bytes) = metadata.needs_check_superblock(false);
    file.write_all_at(&bytes, block.0 * METADATA_BLOCK_BYTES as u64)
        .context("writing the superblock")?;
    file.sync_all().context("syncing the superblock")?;
    println!("needs_check cleared: transaction {}", metadata.transaction_id() + 1);
    Ok(())
}

fn report_problems(problems: &[String]) -> anyhow::Result<i32> {
    println!("{} problems:", problems.len());
    for problem in problems {
        println!("  {problem}");
    }
    Ok(1)
}

fn hex_uuid(bytes: [u8; 16]) -> String {
    uuid::Uuid::from_bytes(bytes).to_string()
}

/// Mappings of a volume as runs: consecutive virtual blocks mapped to consecutive data blocks
/// with one time.
fn runs(md: &PoolMetadata, id: bdev_thin::thin::types::VolumeId) -> Vec<(u64, u64, u64, u64)> {
    let mut runs: Vec<(u64, u64, u64, u64)> = Vec::new();
    md.for_each_mapping(id, &mut |vblock, mapping| {
        if let Some(last) = runs.last_mut()
            && last.0 + last.2 == vblock.0
            && last.1 + last.2 == mapping.data_block.0
            && last.3 == mapping.time
        {
            last.2 += 1;
            return;
        }
        runs.push((vblock.0, mapping.data_block.0, 1, mapping.time));
    });
    runs
}

fn dump(device: &Path, metadata_path: Option<&Path>, as_json: bool) -> anyhow::Result<i32> {
    let region = Region::open(metadata_path.unwrap_or(device))?;
    let (md, problems) = match PoolMetadata::open_lenient(&mut region.reader()) {
        Ok(opened) => opened,
        Err(error) => bail!("{}: {error}", metadata_path.unwrap_or(device).display()),
    };
    for problem in &problems {
        eprintln!("thinctl: warning: {problem}");
    }
    let layout = md.layout();
    let pool = md.pool();
    let superblock = json!({
        "transaction_id": md.transaction_id(),
        "uuid": hex_uuid(pool.uuid),
        "name": pool.name,
        "time": md.time(),
        "format_version": metadata::FORMAT_VERSION,
        "needs_check": pool.needs_check,
        "data_block_bytes": layout.data_block_bytes,
        "data_blocks": layout.data_blocks,
        "data_blocks_max": layout.data_blocks_max,
        "data_offset_bytes": layout.data_offset_bytes,
        "metadata_blocks": layout.metadata_blocks,
        "metadata_separate": layout.metadata_separate,
        "discard": pool.settings.discard.name(),
        "zero_new_blocks": pool.settings.zero_new_blocks,
        "out_of_space": pool.settings.out_of_space.name(),
        "no_space_timeout_s": pool.settings.no_space_timeout_s,
        "low_water_mark": pool.settings.low_water_mark,
        "commit_interval_ms": pool.settings.commit_interval_ms,
    });
    let volumes: Vec<Value> = md
        .volumes()
        .map(|v| {
            let mappings: Vec<Value> = runs(&md, v.id)
                .into_iter()
                .map(|(virt, data, length, time)| {
                    json!({"virt_begin": virt, "data_begin": data, "length": length, "time": time})
                })
                .collect();
            json!({
                "id": v.id.0,
                "uuid": hex_uuid(v.uuid),
                "name": v.name,
                "size_bytes": v.size_bytes,
                "creation_time": v.creation_time,
                "snapshot_time": v.snapshot_time,
                "origin": v.origin.map(|o| o.0),
                "mapped_blocks": v.mapped_blocks,
                "mappings": mappings,
            })
        })
        .collect();
    if as_json {
        let doc = json!({"superblock": superblock, "volumes": volumes});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    println!("superblock");
    if let Value::Object(fields) = &superblock {
        for (key, value) in fields {
            println!("  {key}: {value}");
        }
    }
    for volume in &volumes {
        println!(
            "volume {} {} uuid {} size_bytes {} mapped_blocks {} creation_time {} \
             snapshot_time {} origin {}",
            volume["id"],
            volume["name"],
            volume["uuid"],
            volume["size_bytes"],
            volume["mapped_blocks"],
            volume["creation_time"],
            volume["snapshot_time"],
            volume["origin"]
        );
        for run in volume["mappings"].as_array().into_iter().flatten() {
            println!(
                "  virt {}..+{} -> data {} time {}",
                run["virt_begin"], run["length"], run["data_begin"], run["time"]
            );
        }
    }
    Ok(0)
}
