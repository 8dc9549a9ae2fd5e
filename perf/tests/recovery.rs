//! Recovery in a real process: a prefilled origin, a snapshot, then a second
//! prefill of the origin (every write breaks sharing, so it allocates and commits) killed with
//! SIGKILL at a crash point of the commit. After reopening (examine), every block of the origin
//! holds the first or the second pattern, every block of the snapshot the first, and
//! `thinctl check` passes. Each crash point must be reached (the test reads its marker).
//! A kill keeps the page cache, so flush ordering is the simulator's to prove.
#![cfg(feature = "mutations")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn perf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_perf"))
}

fn thinctl() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_perf")).with_file_name("thinctl");
    assert!(path.exists(), "{} missing: build the workspace's binaries first", path.display());
    path
}

fn config(dir: &Path, name: &str, image: &Path, extra: &str) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        r#"{{"subsystems":[{{"subsystem":"bdev","config":[
        {{"method":"bdev_uring_create",
          "params":{{"name":"Uring0","filename":"{}"}}}}{extra}]}}]}}"#,
        image.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn run(command: &mut Command) -> Output {
    command.output().expect("the binary runs")
}

/// Runs `command` once the killed process's io_uring has let go of the image: the kernel
/// tears a dead process's rings down asynchronously, and the image's lock goes with them.
/// Bounded: 30 s.
fn run_after_release(command: &mut Command) -> Output {
    let start = std::time::Instant::now();
    loop {
        let output = run(command);
        let locked = String::from_utf8_lossy(&output.stderr).contains("lock held");
        if !locked || start.elapsed() > std::time::Duration::from_secs(30) {
            return output;
        }
        std::thread::yield_now();
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn job_uuid(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find(|l| l.starts_with("Job: ")).expect("a Job line");
    line["Job: ".len()..].split_whitespace().next().unwrap().to_string()
}

fn crash_at(point: &str, nth: u32) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let image = dir.path().join("pool.img");
    std::fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let create = config(
        dir.path(),
        "create.json",
        &image,
        r#",{"method":"bdev_thin_pool_create","params":{"bdev_name":"Uring0","pool_name":"pool0",
            "data_block_size":16384,"commit_interval_ms":1}},
          {"method":"bdev_thin_create","params":{"pool_name":"pool0","volume_name":"vol0",
            "size_in_mib":8}}"#,
    );
    let snap = config(
        dir.path(),
        "snap.json",
        &image,
        r#",{"method":"bdev_thin_snapshot",
             "params":{"name":"pool0/vol0","snapshot_name":"snap0"}}"#,
    );
    let open = config(dir.path(), "open.json", &image, "");
    let io = ["-q", "8", "-o", "16k", "-t", "0"];

    let first = run(perf().arg("-c").arg(&create).args(io).args([
        "-w",
        "write",
        "--prefill",
        "--pattern",
        "1",
    ]));
    assert!(first.status.success(), "{}", text(&first));
    let origin_uuid = job_uuid(&first);

    let crashed = run(perf()
        .arg("-c")
        .arg(&snap)
        .args(io)
        .args(["-T", "pool0/vol0", "-w", "write", "--prefill", "--pattern", "2"])
        .env("BDEV_THIN_CRASH_AT", format!("{point}:{nth}")));
    let output = text(&crashed);
    assert!(output.contains(&format!("crash point {point} reached")), "{point}: {output}");
    assert!(!crashed.status.success(), "{point}: the process survived its crash point");

    let origin = run_after_release(perf().arg("-c").arg(&open).args(io).args([
        "-T",
        "pool0/vol0",
        "-w",
        "verify_only",
        "--pattern",
        "1,2",
    ]));
    assert!(origin.status.success(), "{point}: origin: {}", text(&origin));
    let snapshot = run(perf()
        .arg("-c")
        .arg(&open)
        .args(io)
        .args(["-T", "pool0/snap0", "-w", "verify_only", "--pattern", "1"])
        .args(["--pattern-uuid", &origin_uuid]));
    assert!(snapshot.status.success(), "{point}: snapshot: {}", text(&snapshot));
    let check = run(Command::new(thinctl()).arg("check").arg(&image));
    assert!(check.status.success(), "{point}: thinctl check: {}", text(&check));
}

#[test]
fn crash_after_metadata_blocks_written() {
    crash_at("commit_blocks_written", 3);
}

#[test]
fn crash_before_the_superblock_write() {
    crash_at("commit_before_superblock", 3);
}

#[test]
fn crash_after_the_superblock_write_before_its_flush() {
    crash_at("commit_superblock_written", 3);
}

#[test]
fn crash_after_a_complete_commit() {
    crash_at("commit_done", 3);
}
