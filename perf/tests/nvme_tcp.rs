//! perf over NVMe/TCP, as a user runs it: `perf -c` attaches (`bdev_nvme_attach_controller`)
//! to our NVMe-oF/TCP target, served here by the test's own reactors on 127.0.0.1 (malloc
//! namespaces), and runs every workload on one core and on two (`-C`: one IO queue pair per
//! core). Then the paths a small 4 KiB job never takes: 1 MiB IOs split at MDTS and sent
//! through R2T, header and data digests, a pattern written by one process and checked by
//! another, and a thin pool on the remote namespace that a second process finds again by
//! examine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use bdev_thin::rpc::call_blocking;
use bdev_thin::runtime::{CoreMask, Runtime, RuntimeOptions};
use bdev_thin::target::Target;
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.spdk:initiator-test";

fn perf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_perf"))
}

/// Our NVMe-oF/TCP target on reactors of this test process: a malloc namespace per entry of
/// `namespaces` (blocks, block size), listening on a free port of 127.0.0.1.
struct RemoteTarget {
    _runtime: Runtime,
    _target: Arc<Target>,
    address: SocketAddr,
}

fn remote_target(namespaces: &[(u64, u32)]) -> RemoteTarget {
    let options = RuntimeOptions { mask: CoreMask(0x1), pin: false, ..Default::default() };
    let runtime = Runtime::start(options).expect("reactors start");
    let target = Target::new(runtime.handle());
    let call = |method: &str, params: Value| {
        call_blocking(&target, method, Some(params)).unwrap_or_else(|e| panic!("{method}: {e}"))
    };
    call("nvmf_create_transport", json!({"trtype": "TCP"}));
    call("nvmf_create_subsystem", json!({"nqn": NQN, "allow_any_host": true}));
    for (index, (blocks, block_size)) in namespaces.iter().enumerate() {
        let name = format!("Malloc{index}");
        let malloc = json!({"name": name, "num_blocks": blocks, "block_size": block_size});
        call("bdev_malloc_create", malloc);
        call("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": name}}));
    }
    let listen = json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "0"});
    call("nvmf_subsystem_add_listener", json!({"nqn": NQN, "listen_address": listen}));
    let bound = bdev_thin::export::nvmf_tcp::ListenAddress {
        adrfam: "IPv4".into(),
        traddr: "127.0.0.1".into(),
        trsvcid: "0".into(),
    };
    let address = target.nvmf.bound_address(&bound).expect("the listener is bound");
    RemoteTarget { _runtime: runtime, _target: target, address }
}

/// A perf config that attaches to `address` (with `extra` attach parameters), then runs the
/// entries of `after`.
fn config(dir: &Path, name: &str, address: SocketAddr, extra: Value, after: &[Value]) -> PathBuf {
    let mut params = json!({
        "name": "Nvme0", "trtype": "tcp", "adrfam": "IPv4", "traddr": "127.0.0.1",
        "trsvcid": address.port().to_string(), "subnqn": NQN
    });
    if let Value::Object(extra) = extra {
        for (key, value) in extra {
            params[key] = value;
        }
    }
    let mut entries = vec![json!({"method": "bdev_nvme_attach_controller", "params": params})];
    entries.extend(after.iter().cloned());
    let text = json!({"subsystems": [{"subsystem": "bdev", "config": entries}]});
    let path = dir.join(name);
    std::fs::write(&path, text.to_string()).unwrap();
    path
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs perf and asserts it succeeded with no failed IO and no panic.
fn run_ok(command: &mut Command, what: &str) -> String {
    let output = command.output().expect("perf runs");
    let all = text(&output);
    assert!(output.status.success(), "{what}: {all}");
    assert!(all.contains("Total"), "{what}: {all}");
    assert!(!all.contains("panicked"), "{what}: {all}");
    all
}

#[test]
fn every_workload_runs_over_nvme_tcp_on_one_and_two_cores() {
    let remote = remote_target(&[(131072, 512)]);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "nvme.json", remote.address, json!({}), &[]);
    for (workload, cores) in [
        ("randwrite", "0x1"),
        ("randread", "0x1"),
        ("verify", "0x1"),
        ("unmap", "0x1"),
        ("write_zeroes", "0x1"),
        ("flush", "0x1"),
        ("randrw", "0x3"),
        ("verify", "0x3"),
        ("unmap", "0x3"),
        ("write_zeroes", "0x3"),
    ] {
        let mut command = perf();
        command.arg("-c").arg(&config).args(["-q", "16", "-o", "4k", "-w", workload, "-t", "1"]);
        command.args(["-M", "50", "-m", cores]);
        if cores == "0x3" {
            command.arg("-C");
        }
        let out = run_ok(&mut command, &format!("{workload} on {cores}"));
        let jobs = out.matches("Job: Nvme0n1").count();
        assert_eq!(jobs, if cores == "0x3" { 2 } else { 1 }, "{out}");
    }
}

#[test]
fn large_ios_split_at_mdts_and_go_through_r2t_with_digests() {
    let remote = remote_target(&[(32768, 4096)]);
    let dir = tempfile::tempdir().unwrap();
    let plain = config(dir.path(), "plain.json", remote.address, json!({}), &[]);
    let digests = config(
        dir.path(),
        "digests.json",
        remote.address,
        json!({"hdgst": true, "ddgst": true}),
        &[],
    );
    for (config, size) in [(&plain, "1M"), (&digests, "1M"), (&digests, "4k"), (&plain, "12k")] {
        let mut command = perf();
        command.arg("-c").arg(config).args(["-q", "8", "-o", size, "-w", "verify", "-t", "1"]);
        run_ok(&mut command, &format!("verify {size} with {}", config.display()));
    }
}

#[test]
fn what_one_process_writes_another_reads_back() {
    let remote = remote_target(&[(16384, 4096), (8192, 512)]);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "nvme.json", remote.address, json!({}), &[]);
    let mut prefill = perf();
    prefill.arg("-c").arg(&config).args(["-q", "16", "-o", "64k", "-w", "write", "-t", "0"]);
    prefill.args(["--prefill", "--pattern", "7"]);
    let out = run_ok(&mut prefill, "prefill");
    assert!(out.contains("Nvme0n1") && out.contains("Nvme0n2"), "both namespaces: {out}");
    let mut check = perf();
    check.arg("-c").arg(&config).args(["-q", "16", "-o", "64k", "-w", "verify_only", "-t", "0"]);
    check.args(["--pattern", "7"]);
    run_ok(&mut check, "verify_only");
    let mut wrong = perf();
    wrong.arg("-c").arg(&config).args(["-q", "16", "-o", "64k", "-w", "verify_only", "-t", "0"]);
    wrong.args(["--pattern", "8"]);
    let output = wrong.output().expect("perf runs");
    assert!(!output.status.success(), "another pattern must not match: {}", text(&output));
}

#[test]
fn a_pool_on_a_remote_namespace_passes_verify_and_comes_back_by_examine() {
    let remote = remote_target(&[(65536, 4096)]);
    let dir = tempfile::tempdir().unwrap();
    let create = config(
        dir.path(),
        "create.json",
        remote.address,
        json!({}),
        &[
            json!({"method": "bdev_thin_pool_create",
                   "params": {"bdev_name": "Nvme0n1", "pool_name": "pool0",
                              "data_block_size": 65536}}),
            json!({"method": "bdev_thin_create",
                   "params": {"pool_name": "pool0", "volume_name": "vol0", "size_in_mib": 128}}),
        ],
    );
    let mut verify = perf();
    verify.arg("-c").arg(&create).args(["-q", "16", "-o", "16k", "-w", "verify", "-t", "1"]);
    verify.args(["-T", "pool0/vol0"]);
    run_ok(&mut verify, "verify on a pool on Nvme0n1");
    let reopen = config(
        dir.path(),
        "reopen.json",
        remote.address,
        json!({}),
        &[json!({"method": "bdev_wait_for_examine"})],
    );
    let mut prefill = perf();
    prefill.arg("-c").arg(&reopen).args(["-q", "8", "-o", "64k", "-w", "write", "-t", "0"]);
    prefill.args(["-T", "pool0/vol0", "--prefill", "--pattern", "3"]);
    run_ok(&mut prefill, "prefill after examine");
    let mut check = perf();
    check.arg("-c").arg(&reopen).args(["-q", "8", "-o", "64k", "-w", "verify_only", "-t", "0"]);
    check.args(["-T", "pool0/vol0", "--pattern", "3"]);
    run_ok(&mut check, "verify_only after a second examine");
}
