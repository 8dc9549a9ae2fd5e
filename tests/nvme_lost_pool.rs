//! A pool on a remote namespace whose target dies for good, end to end: the remote is a real
//! `thin_tgt` process exporting a file (io_uring) over NVMe/TCP, with `bdev_auto_examine` off;
//! this process attaches it, builds a pool and a volume on it, writes and commits. Then the
//! remote is killed (SIGKILL): past `ctrlr_loss_timeout_sec` the controller and its namespace's
//! bdev are removed, the pool
//! closes without writing (IO on its volume fails, its volume's bdev leaves `bdev_get_bdevs`)
//! and the process keeps serving. The remote is started again on the same file; attaching the
//! controller again brings the pool and its volume back by examine, and every committed write
//! reads back.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bdev_thin::host::IoKind;
use common::nvme::{Side, attach_params, request, run, wait_for};
use common::{Daemon, Scratch};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.spdk:lost";
const DISK_UUID: &str = "0f3c5a1e-7d2b-4c69-8e41-5b9a2d6c7e13";
const WRITE_BYTES: u64 = 16384;
const WRITES: u64 = 256;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// A `thin_tgt` exporting `disk` (io_uring) as namespace 1 of `NQN` on `port`; it does not
/// examine its bdevs (the pool on the disk is the initiator's to open, not the target's).
fn remote(dir: &Path, disk: &Path, port: u16) -> Daemon {
    std::fs::create_dir_all(dir).unwrap();
    let config = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_set_options", "params": {"bdev_auto_examine": false}},
            {"method": "bdev_uring_create",
             "params": {"name": "Disk0", "filename": disk, "block_size": 4096,
                        "uuid": DISK_UUID}}]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_ns",
             "params": {"nqn": NQN, "namespace": {"bdev_name": "Disk0"}}},
            {"method": "nvmf_subsystem_add_listener",
             "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
                        "traddr": "127.0.0.1", "trsvcid": port.to_string()}}}]}]});
    let path = dir.join("remote.json");
    std::fs::write(&path, config.to_string()).unwrap();
    Daemon::start(dir, &["-c", path.to_str().unwrap()])
}

fn attach(local: &Side, port: u16) -> Value {
    let address = ([127, 0, 0, 1], port).into();
    let policy = json!({"ctrlr_loss_timeout_sec": 2, "reconnect_delay_sec": 1,
        "fast_io_fail_timeout_sec": 1});
    local.call("bdev_nvme_attach_controller", attach_params(address, NQN, policy))
}

fn bdev_names(local: &Side) -> Vec<String> {
    let bdevs = local.call("bdev_get_bdevs", json!({}));
    let bdevs = bdevs.as_array().expect("a list of bdevs");
    bdevs.iter().filter_map(|b| b["name"].as_str().map(str::to_string)).collect()
}

fn fill_of(write: u64) -> u8 {
    (write % 250) as u8 + 1
}

#[test]
fn a_pool_whose_target_is_lost_closes_and_comes_back_by_examine_with_its_commits() {
    lost_and_back(false);
}

/// The same with the pool's metadata on a local bdev: the data bdev goes and comes back, the
/// metadata bdev stays, and the pool opens again when the data bdev's UUID reappears.
#[test]
fn a_pool_with_local_metadata_whose_data_target_is_lost_comes_back_with_its_commits() {
    lost_and_back(true);
}

fn lost_and_back(local_metadata: bool) {
    let scratch = Scratch::new(if local_metadata { "nvme_lost_split" } else { "nvme_lost_pool" });
    let disk = scratch.path("disk.img");
    std::fs::File::create(&disk).and_then(|f| f.set_len(64 << 20)).expect("the disk file");
    let port = free_port();
    let mut target = remote(&scratch.path("remote"), &disk, port);

    let local = Side::new();
    local.call(
        "bdev_malloc_create",
        json!({"name": "Local0", "num_blocks": 2048, "block_size": 4096}),
    );
    attach(&local, port);
    let mut pool = json!({"bdev_name": "Nvme0n1", "pool_name": "pool0", "data_block_size": 65536});
    if local_metadata {
        local.call(
            "bdev_malloc_create",
            json!({"name": "Meta0", "num_blocks": 1024, "block_size": 4096}),
        );
        pool["metadata_bdev_name"] = json!("Meta0");
    }
    local.call("bdev_thin_pool_create", pool);
    let volume = json!({"pool_name": "pool0", "volume_name": "vol0", "size_in_mib": 8});
    let volume = local.call("bdev_thin_create", volume);
    let volume = volume.as_str().expect("the volume's name").to_string();
    let bdev = local.bdev(&volume);
    let block = u64::from(bdev.info().block_size_bytes);
    let per_write = WRITE_BYTES / block;
    let handle = local.handle();

    let writes = (0..WRITES)
        .map(|i| request(IoKind::Write, i * per_write, per_write, block, Some(fill_of(i)), i))
        .collect();
    assert!(run(&handle, &bdev, writes).iter().all(|(_, s)| s.is_success()));
    let flush = run(&handle, &bdev, vec![request(IoKind::Flush, 0, 0, block, None, 0)]);
    assert!(flush[0].1.is_success(), "the writes are committed");

    // The target dies for good: past ctrlr_loss_timeout_sec the namespace goes, and with it
    // the pool and its volume.
    let pid = target.pid().to_string();
    assert!(Command::new("kill").args(["-KILL", &pid]).status().expect("kill").success());
    target.wait_exit();
    wait_for("the namespace, the pool and its volume to go", Duration::from_secs(30), || {
        let names = bdev_names(&local);
        !names.iter().any(|n| n == "Nvme0n1" || *n == volume)
    });
    assert_eq!(local.call("bdev_thin_get_pools", json!({})), json!([]));
    assert_eq!(local.call("bdev_nvme_get_controllers", json!({})), json!([]));
    let read = run(&handle, &bdev, vec![request(IoKind::Read, 0, per_write, block, Some(0), 0)]);
    assert!(!read[0].1.is_success(), "IO on the closed pool's volume fails: {:?}", read[0].1);
    let local_bdev = local.bdev("Local0");
    let still = run(&handle, &local_bdev, vec![request(IoKind::Write, 0, 8, block, Some(1), 0)]);
    assert!(still[0].1.is_success(), "the process keeps serving its other bdevs");
    drop(bdev);

    // The target comes back on the same file; attaching again brings the pool back.
    let port = free_port();
    let _target = remote(&scratch.path("remote-again"), &disk, port);
    attach(&local, port);
    local.call("bdev_wait_for_examine", json!({}));
    let pools = local.call("bdev_thin_get_pools", json!({"pool_name": "pool0"}));
    assert_eq!(pools[0]["needs_check"], json!(false), "the last commit is intact: {pools}");
    let bdev = local.bdev("pool0/vol0");
    let reads = (0..WRITES)
        .map(|i| request(IoKind::Read, i * per_write, per_write, block, Some(0), i))
        .collect();
    for (request, status) in run(&handle, &bdev, reads) {
        assert!(status.is_success(), "read {}: {status:?}", request.tag);
        let bytes = request.buffers.segments()[0].as_slice();
        assert!(bytes.iter().all(|&b| b == fill_of(request.tag)), "write {} lost", request.tag);
    }
}
