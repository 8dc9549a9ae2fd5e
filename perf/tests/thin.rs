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
