//! perf on thin volumes, as a user runs it: every workload including verify and unmap, on one
//! core and with `-C` on two (channels on both cores, the owner on one), and the errors a bad
//! pool config gets.

use std::path::{Path, PathBuf};
use std::process::Command;

fn perf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_perf"))
}

fn thin_config(dir: &Path, extra_pool_params: &str) -> PathBuf {
    let path = dir.join("thin.json");
    let text = format!(
        r#"{{"subsystems":[{{"subsystem":"bdev","config":[
        {{"method":"bdev_malloc_create",
          "params":{{"name":"Malloc0","num_blocks":65536,"block_size":4096}}}},
        {{"method":"bdev_thin_pool_create","params":{{"bdev_name":"Malloc0","pool_name":"pool0",
          "data_block_size":16384{extra_pool_params}}}}},
        {{"method":"bdev_thin_create","params":{{"pool_name":"pool0","volume_name":"vol0",
          "size_in_mib":128}}}}]}}]}}"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_workload_runs_on_a_thin_volume() {
    let dir = tempfile::tempdir().unwrap();
    let config = thin_config(dir.path(), "");
    for (workload, cores) in [
        ("randwrite", "0x1"),
        ("randread", "0x1"),
        ("verify", "0x1"),
        ("unmap", "0x1"),
        ("write_zeroes", "0x1"),
        ("flush", "0x1"),
        ("reset", "0x1"),
        ("randrw", "0x3"),
        ("verify", "0x3"),
        ("unmap", "0x3"),
    ] {
        let mut command = perf();
        command.arg("-c").arg(&config).args(["-q", "16", "-o", "4k", "-w", workload, "-t", "1"]);
        command.args(["-M", "50", "-m", cores]);
        if cores == "0x3" {
            command.arg("-C");
        }
        let output = command.output().expect("perf runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{workload} on {cores}: {stdout}\n{stderr}");
        assert!(stdout.contains("Total"), "{stdout}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn prefilled_verify_reads_back_every_block() {
    let dir = tempfile::tempdir().unwrap();
    let config = thin_config(dir.path(), r#","discard":"no_passdown""#);
    let output = perf()
        .arg("-c")
        .arg(&config)
        .args(["-q", "8", "-o", "16k", "-w", "verify", "-t", "1", "--prefill"])
        .output()
        .expect("perf runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn bad_pool_configs_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (params, expected) in [
        (r#","data_block_size":1000"#, "data_block_size"),
        (r#","discard":"sometimes""#, "discard"),
        (r#","bogus":1"#, "bogus"),
    ] {
        let config = thin_config(dir.path(), params);
        let output = perf()
            .arg("-c")
            .arg(&config)
            .args(["-q", "1", "-o", "4k", "-w", "read", "-t", "1"])
            .output()
            .expect("perf runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains("bdev_thin_pool_create") && stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let null = dir.path().join("null.json");
    std::fs::write(
        &null,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
        {"method":"bdev_null_create",
          "params":{"name":"Null0","num_blocks":65536,"block_size":4096}},
        {"method":"bdev_thin_pool_create","params":{"bdev_name":"Null0","pool_name":"p"}}]}]}"#,
    )
    .unwrap();
    let output = perf()
        .arg("-c")
        .arg(&null)
        .args(["-q", "1", "-o", "4k", "-w", "read", "-t", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("stores no data"), "{stderr}");
}

/// A pool whose metadata lives on its own bdev: written with a pattern, then reopened with the
/// metadata bdev appearing before the data bdev (examine waits for the data bdev, named by
/// UUID in the superblock), read back, and checked offline with `thinctl check --metadata`.
#[test]
fn a_separate_metadata_bdev_comes_back_with_its_data_bdev() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = dir.path().join("data.img");
    let metadata = dir.path().join("metadata.img");
    std::fs::File::create(&data).unwrap().set_len(64 << 20).unwrap();
    std::fs::File::create(&metadata).unwrap().set_len(8 << 20).unwrap();
    let uring = |name: &str, path: &Path, uuid: &str| {
        format!(
            r#"{{"method":"bdev_uring_create","params":{{"name":"{name}","filename":"{}",
            "uuid":"{uuid}"}}}}"#,
            path.display()
        )
    };
    let data_entry = uring("Data0", &data, "3f1c2a9e-5d2b-4c61-9a7e-0b1d2c3e4f50");
    let metadata_entry = uring("Meta0", &metadata, "7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d");
    let write_config = |name: &str, entries: &[String]| {
        let path = dir.path().join(name);
        let text = format!(
            r#"{{"subsystems":[{{"subsystem":"bdev","config":[{}]}}]}}"#,
            entries.join(",")
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let create = write_config(
        "create.json",
        &[
            data_entry.clone(),
            metadata_entry.clone(),
            r#"{"method":"bdev_thin_pool_create","params":{"bdev_name":"Data0",
              "pool_name":"pool0","metadata_bdev_name":"Meta0","data_block_size":16384}}"#
                .to_string(),
            r#"{"method":"bdev_thin_create","params":{"pool_name":"pool0",
              "volume_name":"vol0","size_in_mib":16}}"#
                .to_string(),
        ],
    );
    let first = perf()
        .arg("-c")
        .arg(&create)
        .args(["-q", "8", "-o", "16k", "-w", "write", "-t", "0", "--prefill", "--pattern", "5"])
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    // Metadata bdev first: its pool waits for the data bdev.
    let reopen = write_config("reopen.json", &[metadata_entry, data_entry]);
    let mut verified = None;
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(30) {
        let output = perf()
            .arg("-c")
            .arg(&reopen)
            .args(["-T", "pool0/vol0", "-q", "8", "-o", "16k", "-w", "verify_only", "-t", "0"])
            .args(["--pattern", "5"])
            .output()
            .unwrap();
        // The first process's io_uring may still hold the files' locks for a moment.
        if String::from_utf8_lossy(&output.stderr).contains("lock held") {
            std::thread::yield_now();
            continue;
        }
        verified = Some(output);
        break;
    }
    let verified = verified.expect("the files were released");
    assert!(
        verified.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    let thinctl = Path::new(env!("CARGO_BIN_EXE_perf")).with_file_name("thinctl");
    assert!(thinctl.exists(), "{} missing: build the workspace's binaries", thinctl.display());
    let check =
        Command::new(thinctl).arg("check").arg(&data).arg("--metadata").arg(&metadata).output();
    let check = check.unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
}

/// The config of the deep-queue runs: a 1.25 GiB RAM disk, a pool of `data_block_size` blocks,
/// a volume of `volume_mib`.
fn deep_config(dir: &Path, data_block_size: u32, volume_mib: u64) -> PathBuf {
    let path = dir.join(format!("deep-{data_block_size}.json"));
    let text = format!(
        r#"{{"subsystems":[{{"subsystem":"bdev","config":[
        {{"method":"bdev_malloc_create",
          "params":{{"name":"Malloc0","num_blocks":327680,"block_size":4096}}}},
        {{"method":"bdev_thin_pool_create","params":{{"bdev_name":"Malloc0","pool_name":"pool0",
          "data_block_size":{data_block_size}}}}},
        {{"method":"bdev_thin_create","params":{{"pool_name":"pool0","volume_name":"thin0",
          "size_in_mib":{volume_mib}}}}}]}}]}}"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Deep queues of requests that split into many pieces: more pieces than a channel's rings
/// hold, so requests wait in the channel for their turn. The first run is the command that
/// aborted the process (a ring overflow in the channel); the others reach the channel's full
/// depth of 1024 with 32 pieces per request, and 16 pieces per request (past the per-request
/// window of 8) on 64 KiB blocks. Every run writes and verifies with no failed IO.
#[test]
fn deep_queues_of_large_requests_write_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    for (data_block_size, volume_mib, depth, io_size, workload) in [
        (65536, 1024, "256", "1M", "verify"),
        (4096, 256, "1024", "128k", "randwrite"),
        (4096, 256, "1024", "128k", "verify"),
        (65536, 512, "256", "1M", "randwrite"),
    ] {
        let config = deep_config(dir.path(), data_block_size, volume_mib);
        let output = perf()
            .arg("-c")
            .arg(&config)
            .args(["-T", "pool0/thin0", "-q", depth, "-o", io_size, "-w", workload, "-t", "1"])
            .output()
            .expect("perf runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let run = format!("{workload} -q {depth} -o {io_size} on {data_block_size}-byte blocks");
        assert!(output.status.success(), "{run}: {stdout}\n{stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("warning"), "{run}: {stderr}");
        let total =
            stdout.lines().find(|l| l.trim_start().starts_with("Total")).expect("a Total line");
        let columns: Vec<&str> = total.split_whitespace().collect();
        let iops: f64 = columns[2].parse().unwrap();
        let failed_per_s: f64 = columns[4].parse().unwrap();
        assert!(iops > 0.0 && failed_per_s == 0.0, "{run}: {total}");
    }
}
