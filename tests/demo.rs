//! The README's first command, `ci/demo.sh`, run twice on one fresh backing file: the first run
//! creates pool0 and pool0/vol0 through SPDK's client, the second finds both by examine (the
//! same UUIDs) and creates nothing; both stop thin_tgt cleanly and pass `thinctl check`. Uses
//! the binaries this test run built (`THIN_DEMO_BIN`), so the script's own build is skipped.
//!
//! Needs SPDK's client (`ci/install.sh`): without it the test prints a loud SKIPPED; with
//! `CI=true` it fails instead.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{BOUND, Scratch};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn client_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("SPDK_CLIENT_BIN")
        .map_or_else(|| Path::new(ROOT).join(".venv/bin"), PathBuf::from);
    if dir.join("spdk-rpc").is_file() {
        return Some(dir);
    }
    let message = "SPDK's client (spdk-rpc) not found in .venv/bin or $SPDK_CLIENT_BIN; \
                   run ci/install.sh";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    eprintln!("\n*** SKIPPED: {message} ***\n");
    None
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

/// The UUID of the first JSON line `"key": "…"` after `marker`.
fn value_after(output: &str, marker: &str, key: &str) -> String {
    let start = output.find(marker).unwrap_or_else(|| panic!("{marker} in\n{output}"));
    let pattern = format!("\"{key}\": \"");
    let rest = &output[start..];
    let at = rest.find(&pattern).unwrap_or_else(|| panic!("{key} after {marker}")) + pattern.len();
    rest[at..].split('"').next().expect("a value").to_string()
}

#[test]
fn the_demo_creates_then_finds_by_examine() {
    let Some(client) = client_bin() else { return };
    let dir = Scratch::new("demo");

    let first = run_demo(&dir, &client, 1);
    assert!(first.contains("creating pool0"), "{first}");
    assert!(first.contains("creating volume pool0/vol0"), "{first}");
    assert!(first.contains("\"alias\": \"pool0/vol0\""), "{first}");
    assert!(first.contains("\"aliases\": [\n      \"pool0/vol0\""), "{first}");
    assert!(first.contains("clean: transaction"), "{first}");
    let pool = value_after(&first, "bdev_thin_get_pools", "uuid");
    let volume = value_after(&first, "bdev_get_bdevs -b pool0/vol0", "uuid");

    let second = run_demo(&dir, &client, 2);
    assert!(!second.contains("creating"), "{second}");
    assert!(second.contains(&format!("examine Uring0: found pool pool0 ({pool})")), "{second}");
    assert!(second.contains("pool0 found by examine"), "{second}");
    assert!(second.contains("volume pool0/vol0 found by examine"), "{second}");
    assert_eq!(value_after(&second, "bdev_thin_get_pools", "uuid"), pool);
    assert_eq!(value_after(&second, "bdev_get_bdevs -b pool0/vol0", "uuid"), volume);
    assert!(second.contains("clean: transaction"), "{second}");
}
