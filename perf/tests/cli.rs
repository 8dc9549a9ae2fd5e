//! The perf binary as a user runs it: configs good and bad, every workload, the JSON results,
//! verification that catches a device that keeps nothing, and durability across processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn perf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_perf"))
}

fn write_config(dir: &Path, name: &str, bdevs: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(r#"{{"subsystems":[{{"subsystem":"bdev","config":[{bdevs}]}}]}}"#),
    )
    .unwrap();
    path
}

fn entry(method: &str, params: serde_json::Value) -> String {
    serde_json::json!({"method": method, "params": params}).to_string()
}

fn malloc(name: &str) -> String {
    entry(
        "bdev_malloc_create",
        serde_json::json!({"name": name, "num_blocks": 16384, "block_size": 4096}),
    )
}

fn null(name: &str) -> String {
    entry(
        "bdev_null_create",
        serde_json::json!({"name": name, "num_blocks": 16384, "block_size": 4096}),
    )
}

fn run(command: &mut Command) -> Output {
    command.output().expect("perf runs")
}

fn stderr_line(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).trim().to_string();
    assert_eq!(text.lines().count(), 1, "one line expected, got: {text}");
    assert!(!text.contains("panicked"), "{text}");
    text
}

#[test]
fn bad_configs_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (dir.path().join("missing.json"), "missing.json"),
        (
            {
                let p = dir.path().join("garbage.json");
                std::fs::write(&p, "{ not json").unwrap();
                p
            },
            "invalid JSON at line 1",
        ),
        (
            write_config(
                dir.path(),
                "unknown.json",
                &entry("bdev_frobnicate", serde_json::json!({})),
            ),
            "config: bdev_frobnicate: Method not found",
        ),
        (
            write_config(
                dir.path(),
                "badparam.json",
                &entry(
                    "bdev_malloc_create",
                    serde_json::json!({"num_blocks": "x", "block_size": 512}),
                ),
            ),
            "config: bdev_malloc_create: num_blocks: expected an unsigned integer",
        ),
        (
            write_config(
                dir.path(),
                "unknownparam.json",
                &entry(
                    "bdev_malloc_create",
                    serde_json::json!({"num_blocks": 8, "block_size": 512, "colour": "red"}),
                ),
            ),
            "config: bdev_malloc_create: colour: unknown parameter",
        ),
        (
            write_config(
                dir.path(),
                "dif.json",
                &entry(
                    "bdev_malloc_create",
                    serde_json::json!({"num_blocks": 8, "block_size": 512, "md_size": 8}),
                ),
            ),
            "md_size: separate metadata is not supported",
        ),
        (
            write_config(
                dir.path(),
                "nofile.json",
                &entry(
                    "bdev_uring_create",
                    serde_json::json!({"name": "U0", "filename": "/nonexistent/disk.img"}),
                ),
            ),
            "config: bdev_uring_create: filename: No such file or directory",
        ),
        (
            write_config(
                dir.path(),
                "huge.json",
                &entry(
                    "bdev_malloc_create",
                    serde_json::json!({"num_blocks": 100_000_000_000u64, "block_size": 4096}),
                ),
            ),
            "config: bdev_malloc_create: num_blocks: ",
        ),
    ];
    for (config, expected) in cases {
        let output = run(perf()
            .arg("-c")
            .arg(&config)
            .args(["-q", "1", "-o", "4k", "-w", "read", "-t", "1"]));
        assert!(!output.status.success(), "{expected}: should fail");
        let line = stderr_line(&output);
        assert!(line.contains(expected), "expected '{expected}' in: {line}");
    }
}

#[test]
fn every_workload_runs_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "malloc.json", &malloc("Malloc0"));
    for workload in [
        "read",
        "write",
        "randread",
        "randwrite",
        "rw",
        "randrw",
        "unmap",
        "write_zeroes",
        "flush",
        "reset",
        "verify",
    ] {
        let json = dir.path().join(format!("{workload}.json"));
        let output = run(perf()
            .arg("-c")
            .arg(&config)
            .args(["-q", "8", "-o", "4k", "-w", workload, "-t", "1", "-M", "50"])
            .arg("--json-results")
            .arg(&json));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{workload}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains(&format!("workload: {workload}")), "{workload}: {stdout}");
        assert!(stdout.contains("Total"), "{stdout}");
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let result = &value["results"][0];
        for key in [
            "job",
            "core_mask",
            "workload",
            "status",
            "queue_depth",
            "io_size",
            "runtime",
            "iops",
            "mibps",
            "io_failed",
            "io_timeout",
            "avg_latency_us",
            "min_latency_us",
            "max_latency_us",
            "p50_latency_us",
            "p99_latency_us",
            "p99_9_latency_us",
        ] {
            assert!(result.get(key).is_some(), "{workload}: no {key} in {result}");
        }
        assert_eq!(value["core_count"], 1);
        assert_eq!(result["status"], "finished");
        assert_eq!(result["io_failed"], 0, "{workload}");
        assert!(result["iops"].as_f64().unwrap() > 0.0, "{workload}");
        // The histogram counts every successful timed IO once.
        let bucketed: u64 = result["latency_buckets"]
            .as_array()
            .unwrap_or_else(|| panic!("{workload}: no latency_buckets"))
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        let ios = result["iops"].as_f64().unwrap() * result["runtime"].as_f64().unwrap();
        assert!((bucketed as f64 - ios).abs() < 1.5, "{workload}: {bucketed} bucketed, {ios} IOs");
    }
}

#[test]
fn verify_catches_a_device_that_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "null.json", &null("Null0"));
    let output =
        run(perf().arg("-c").arg(&config).args(["-q", "4", "-o", "4k", "-w", "verify", "-t", "1"]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "verify on null must fail: {stdout}");
    assert!(stdout.contains("ended in about"), "{stdout}");
}

/// More IOs in flight than the range holds (64 MiB in 4 MiB IOs is 16): as bdevperf, the depth
/// is lowered to 16 with a warning and no two write-and-read-back pairs share an offset, so a
/// device that keeps everything passes (before, a pair read another pair's data back).
#[test]
fn verify_never_overlaps_its_own_ios() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "malloc.json", &malloc("Malloc0"));
    let output = run(perf()
        .arg("-c")
        .arg(&config)
        .args(["-q", "64", "-o", "4M", "-w", "verify"])
        .args(["-t", "1"]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("Queue depth is limited to 16"), "{stderr}");
    assert!(stdout.contains("depth: 16,"), "{stdout}");
}

#[test]
fn unsupported_workloads_are_skipped_as_bdevperf_does() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_config(dir.path(), "null.json", &format!("{},{}", malloc("Malloc0"), null("Null0")));
    let output =
        run(perf().arg("-c").arg(&config).args(["-q", "4", "-o", "4k", "-w", "unmap", "-t", "1"]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("Skipping Null0 because it does not support unmap"), "{stdout}");
    assert!(stdout.contains("Job: Malloc0"), "{stdout}");
}

#[test]
fn jobs_are_placed_as_bdevperf_places_them() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "CI=true and this machine has one core: placement needs two");
        eprintln!("\n*** SKIPPED: placement on two cores needs two cores ***\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let second = malloc("Malloc1");
    let config = write_config(dir.path(), "two.json", &format!("{},{second}", malloc("Malloc0")));
    let json = dir.path().join("r.json");
    let output = run(perf()
        .arg("-c")
        .arg(&config)
        .args(["-q", "4", "-o", "4k", "-w", "read", "-t", "1", "-m", "0x3"])
        .arg("--json-results")
        .arg(&json));
    assert!(output.status.success());
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let masks: Vec<(&str, &str)> = value["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["job"].as_str().unwrap(), r["core_mask"].as_str().unwrap()))
        .collect();
    assert_eq!(masks, vec![("Malloc0", "0x1"), ("Malloc1", "0x2")], "round-robin over cores");
    let output = run(perf()
        .arg("-c")
        .arg(&config)
        .args(["-q", "4", "-o", "4k", "-w", "read", "-t", "1", "-m", "0x3", "-C", "-T", "Malloc1"])
        .arg("--json-results")
        .arg(&json));
    assert!(output.status.success());
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let masks: Vec<&str> = value["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["core_mask"].as_str().unwrap())
        .collect();
    assert_eq!(masks, vec!["0x1", "0x2"], "-C: every core, -T: that bdev only");
}

const URING_UUID: &str = "8b1d7c36-7c8b-4a4b-9a84-2f0f4d3b0a11";

/// Prefill with pattern 1, a second prefill with pattern 2 killed midway, then every block must
/// hold pattern 1 or 2; a pattern never written (3) must fail on every block.
#[test]
fn prefill_kill_and_verify_only_prove_durability() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let bdev = entry(
        "bdev_uring_create",
        serde_json::json!({
            "name": "Uring0",
            "filename": image.display().to_string(),
            "block_size": 4096,
            "uuid": URING_UUID
        }),
    );
    let config = write_config(dir.path(), "uring.json", &bdev);
    let base = |c: &mut Command| {
        c.arg("-c").arg(&config);
    };
    let mut first = perf();
    base(&mut first);
    let output = run(first.args([
        "-q",
        "8",
        "-o",
        "16k",
        "-w",
        "write",
        "-t",
        "0",
        "--prefill",
        "--pattern",
        "1",
    ]));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // The second prefill is killed once it has run a while (wherever it is, the check holds).
    let mut second = perf();
    base(&mut second);
    let mut child = second
        .args(["-w", "write", "-t", "0", "--prefill", "--pattern", "2", "-o", "4k", "-q", "1"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once its first write landed (block 0 holds pattern 2), so the check below sees a
    // device that the killed run had begun to overwrite.
    let uuid = uuid::Uuid::parse_str(URING_UUID).unwrap();
    let start = Instant::now();
    loop {
        let mut block = vec![0u8; 4096];
        let mut file = std::fs::File::open(&image).unwrap();
        std::io::Read::read_exact(&mut file, &mut block).unwrap();
        if perf::pattern::block_matches(&block, perf::pattern::block_key(&uuid, 0, 2)) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the second prefill ended before writing block 0: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(30), "block 0 never got pattern 2");
        std::thread::yield_now();
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // The killed process's rings release the file (and its exclusive lock) asynchronously, and
    // a new opener is refused until they have: retry while the lock is held, with a bound.
    let start = Instant::now();
    let output = loop {
        let mut check = perf();
        base(&mut check);
        let output = run(check.args([
            "-q",
            "8",
            "-o",
            "16k",
            "-w",
            "verify_only",
            "-t",
            "0",
            "--pattern",
            "1,2",
        ]));
        let busy = String::from_utf8_lossy(&output.stderr).contains("lock held");
        if !busy || start.elapsed() > Duration::from_secs(30) {
            break output;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "every block holds pattern 1 or 2: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut wrong = perf();
    base(&mut wrong);
    let output =
        run(wrong.args(["-q", "8", "-o", "16k", "-w", "verify_only", "-t", "0", "--pattern", "3"]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "pattern 3 was never written: {stdout}");
    assert!(stdout.contains("16384 blocks match none of the patterns"), "{stdout}");
}

/// The README's first command, exactly as written there, runs and prints the table.
#[test]
fn the_readme_demo_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let command = readme
        .lines()
        .find(|line| line.contains("cargo run --release --bin perf --"))
        .expect("the README shows the demo command");
    let args: Vec<&str> = command.split(" -- ").nth(1).unwrap().split_whitespace().collect();
    let output = run(perf().current_dir(root).args(&args));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("Job: Malloc0"), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim_start().starts_with("Total")), "{stdout}");
}

/// SIGINT ends a long run early: in-flight IO drains, the table is printed, exit 0.
#[test]
fn sigint_stops_a_run_and_prints_the_table() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "malloc.json", &malloc("Malloc0"));
    let mut child = perf()
        .arg("-c")
        .arg(&config)
        .args(["-q", "16", "-o", "4k", "-w", "randread", "-t", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut child = KillOnDrop(child);
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let bound = Duration::from_secs(30);
    // The first progress line comes after the first second of IO.
    let first = lines.recv_timeout(bound).unwrap();
    assert!(first.starts_with("Running I/O"), "{first}");
    let progress = lines.recv_timeout(bound).unwrap();
    assert!(progress.contains("IOPS"), "{progress}");
    let pid = i32::try_from(child.0.id()).unwrap();
    let status = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < bound, "perf did not stop on SIGINT");
        std::thread::yield_now();
    };
    let rest: Vec<String> = lines.iter().collect();
    let text = rest.join("\n");
    assert!(status.success(), "exit {status}: {text}");
    assert!(text.contains("Received shutdown signal"), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with("Total")), "{text}");
}

/// A config as SPDK's `save_config` writes it loads: option setters are accepted and ignored
/// with a log line, subsystems we do not have are skipped with a warning, and the create call
/// with every parameter SPDK saves works.
#[test]
fn a_config_saved_by_spdk_loads() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("saved.json");
    std::fs::write(
        &config,
        r#"{
  "subsystems": [
    {"subsystem": "iobuf", "config": [
      {"method": "iobuf_set_options",
       "params": {"small_pool_count": 8192, "large_pool_count": 1024,
                  "small_bufsize": 8192, "large_bufsize": 135168}}]},
    {"subsystem": "sock", "config": [
      {"method": "sock_set_default_impl", "params": {"impl_name": "posix"}}]},
    {"subsystem": "accel", "config": null},
    {"subsystem": "bdev", "config": [
      {"method": "bdev_set_options",
       "params": {"bdev_io_pool_size": 65535, "bdev_io_cache_size": 256,
                  "bdev_auto_examine": true, "iobuf_small_cache_size": 128,
                  "iobuf_large_cache_size": 16}},
      {"method": "bdev_nvme_set_options",
       "params": {"action_on_timeout": "none", "timeout_us": 0, "keep_alive_timeout_ms": 10000}},
      {"method": "bdev_nvme_set_hotplug", "params": {"period_us": 100000, "enable": false}},
      {"method": "bdev_malloc_create",
       "params": {"name": "Malloc0", "num_blocks": 8192, "block_size": 512,
                  "physical_block_size": 512, "uuid": "0b7a3a4e-3f5e-4d8f-9f53-0d7c6c2b1a10",
                  "optimal_io_boundary": 0, "md_size": 0, "dif_type": 0,
                  "dif_is_head_of_md": false, "dif_pi_format": 0}},
      {"method": "bdev_wait_for_examine"}]},
    {"subsystem": "nvmf", "config": [
      {"method": "nvmf_set_config", "params": {"discovery_filter": "match_any",
                                               "admin_cmd_passthru": {"identify_ctrlr": false}}},
      {"method": "nvmf_set_max_subsystems", "params": {"max_subsystems": 1024}},
      {"method": "nvmf_set_crdt", "params": {"crdt1": 0, "crdt2": 0, "crdt3": 0}}]},
    {"subsystem": "nbd", "config": []}
  ]
}"#,
    )
    .unwrap();
    let output =
        run(perf().arg("-c").arg(&config).args(["-q", "4", "-o", "4k", "-w", "read", "-t", "1"]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("Job: Malloc0"), "{stdout}");
    for logged in [
        "skipping 1 entries of subsystem iobuf",
        "skipping 1 entries of subsystem sock",
        "bdev_set_options: accepted and ignored",
        "bdev_nvme_set_hotplug: accepted and ignored",
        "nvmf_set_crdt: accepted and ignored",
    ] {
        assert!(stderr.contains(logged), "'{logged}' in: {stderr}");
    }
}
