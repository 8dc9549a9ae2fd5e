//! The README's first command, `ci/demo.sh`, run twice: each run starts from a fresh file, writes
//! a thin volume over NBD, snapshots it, rewrites part of it (copies), unmaps most of it and must
//! get exactly the copied blocks back once the passdown completes, find the same pool by examine
//! after a restart, pass `thinctl check`, and compare perf on thin and raw. Uses the binaries this
//! test run built (`THIN_DEMO_BIN`), so the script's own build is skipped; the perf part needs
//! `perf` beside them (built by `cargo test --workspace`), else it is reported skipped.
//!
//! Needs SPDK's client and qemu-io (`ci/install.sh`): without them the test prints a loud
//! SKIPPED; with `CI=true` it fails instead.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{BOUND, Scratch};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn skip(message: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    eprintln!("\n*** SKIPPED: {message} ***\n");
}

fn client_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("SPDK_CLIENT_BIN")
        .map_or_else(|| Path::new(ROOT).join(".venv/bin"), PathBuf::from);
    if !dir.join("spdk-rpc").is_file() {
        skip(
            "SPDK's client (spdk-rpc) not found in .venv/bin or $SPDK_CLIENT_BIN; \
             run ci/install.sh",
        );
        return None;
    }
    let qemu_io = Command::new("qemu-io").arg("--version").output();
    if !qemu_io.is_ok_and(|o| o.status.success()) {
        skip("qemu-io not found; run ci/install.sh");
        return None;
    }
    Some(dir)
}

/// Runs `ci/demo.sh` in its own process group (killed whole if it overruns the bound); returns
/// its output after asserting it exited 0.
fn run_demo(dir: &Scratch, client: &Path, run: u32) -> String {
    let out_path = dir.path(&format!("demo{run}.out"));
    let out = std::fs::File::create(&out_path).expect("output file");
    let bin = Path::new(env!("CARGO_BIN_EXE_thin_tgt")).parent().expect("bin dir");
    let mut child = Command::new(Path::new(ROOT).join("ci/demo.sh"))
        .env("THIN_DEMO_IMAGE", dir.path("demo.img"))
        .env("THIN_DEMO_SOCK", dir.path("demo.sock"))
        .env("THIN_DEMO_BIN", bin)
        .env("SPDK_CLIENT_BIN", client)
        .env("THIN_DEMO_PERF_SECONDS", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .process_group(0)
        .spawn()
        .expect("ci/demo.sh");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > BOUND * 4 {
            // The script and the thin_tgt it started share its process group.
            let _ = Command::new("kill").args(["-KILL", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            panic!("ci/demo.sh run {run} did not finish in time");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&out_path).expect("output");
    assert!(status.success(), "ci/demo.sh run {run} failed ({status}):\n{output}");
    output
}

/// The demo's line `N. ...`.
fn line(output: &str, step: u32) -> &str {
    let prefix = format!("{step:2}. ");
    output
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line {step} in\n{output}"))
}

/// The whole numbers that follow `key` in `text`, in order.
fn numbers_after(text: &str, key: &str) -> Vec<u64> {
    let start = text.find(key).unwrap_or_else(|| panic!("'{key}' in: {text}")) + key.len();
    text[start..]
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(|word| word.parse().ok())
        .collect()
}

fn check_story(output: &str, perf_built: bool) {
    // 1: an empty volume; 2: 256 MiB written = 4096 blocks of 64 KiB provisioned.
    let free_empty = numbers_after(line(output, 1), "on Uring0: ")[0];
    assert_eq!(numbers_after(line(output, 1), "maps ")[0], 0, "{output}");
    let written = line(output, 2);
    assert_eq!(numbers_after(written, "vol0 maps ")[0], 4096, "{output}");
    let free_written = free_empty - 4096;
    assert_eq!(numbers_after(written, "pool free ")[..2], [free_empty, free_written], "{output}");
    // 3: the snapshot shares every block; 4: 64 MiB rewritten = 1024 blocks copied.
    assert!(
        line(output, 3)
            .contains(&format!("shares all 4096 blocks, pool free still {free_written}")),
        "{output}"
    );
    let copied = line(output, 4);
    assert_eq!(numbers_after(copied, "of vol0: ")[0], 1024, "{output}");
    assert_eq!(numbers_after(copied, "pool free ")[0], free_written - 1024, "{output}");
    // 5: the unmap gives back exactly the copies, once passed down: the unmap is acknowledged
    // after its deallocates complete, so nothing is held any more and the file has holes.
    let unmapped = line(output, 5);
    assert_eq!(numbers_after(unmapped, "vol0 maps ")[0], 0, "{output}");
    let passdowns = numbers_after(unmapped, "passdowns_completed ");
    assert!(passdowns[1] > passdowns[0], "passdowns_completed must grow: {output}");
    assert_eq!(passdowns[2], 0, "no block held after the unmap: {output}");
    let file_copied = numbers_after(copied, "(file: ")[0];
    let file_unmapped = numbers_after(unmapped, "(file: ")[0];
    assert!(file_unmapped + 32 < file_copied, "the copies' space leaves the file: {output}");
    assert_eq!(
        numbers_after(unmapped, "pool free ")[..2],
        [free_written - 1024, free_written],
        "{output}"
    );
    // 7: the same pool, found by examine, with snap0's 4096 blocks; 8: clean.
    let restarted = line(output, 7);
    let pool = restarted
        .split("found pool0 (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("a pool UUID in: {restarted}"));
    assert!(output.contains(&format!("examine Uring0: found pool pool0 ({pool})")), "{output}");
    assert!(restarted.contains("and snap0 (4096 blocks)"), "{output}");
    assert!(line(output, 8).contains("thinctl check: clean: transaction"), "{output}");
    if perf_built {
        assert!(line(output, 9).contains("thin/raw "), "{output}");
    } else {
        assert!(output.contains("skipping the perf comparison"), "{output}");
    }
}

#[test]
fn the_demo_tells_the_story_twice_from_a_fresh_file() {
    let Some(client) = client_bin() else { return };
    let dir = Scratch::new("demo");
    let bin = Path::new(env!("CARGO_BIN_EXE_thin_tgt")).parent().expect("bin dir");
    let perf_built = bin.join("perf").is_file();
    if !perf_built {
        skip(
            "perf is not built beside thin_tgt (cargo build --release -p perf): \
             its part of the demo is not checked",
        );
    }
    for run in 1..=2 {
        let output = run_demo(&dir, &client, run);
        check_story(&output, perf_built);
    }
}
