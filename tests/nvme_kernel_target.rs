//! The initiator against the Linux kernel's NVMe/TCP target, which neither side of this
//! repository wrote: `nvmet-tcp` in a QEMU guest (the harness of `tests/guest/`) serving a
//! memory-backed `null_blk` device with discard, reached through the harness's port forward
//! on 127.0.0.1.
//!
//! - attach, `perf -w verify` / `unmap` / `write_zeroes` (perf's engine in this process, its
//!   `-c` config attaching), then an unmap that arrives in the guest as a discard: the
//!   device's discard counters rose by the range, the range reads zeroes there and here, the
//!   blocks beside it kept their data; detach;
//! - the target vanishing mid-run (QEMU killed) under a thin pool: the writes in flight end
//!   with errors within the configured timeouts, the pool takes no more writes (read-only
//!   with `needs_check` when a commit was under way), the controller goes, and the process
//!   keeps serving its other bdevs.
//!
//! Without QEMU or the guest kernel the tests print a loud skip; with CI=true they fail.

mod common;
mod guest;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bdev_thin::host::{IoKind, IoStatus};
use clap::Parser;
use common::nvme::{Side, attach_params, request, run, wait_for};
use common::nvme_proxy::NvmeProxy;
use guest::{Guest, GuestSpec};
use serde_json::json;

const NVME_PORT: u16 = 4420;
const NQN: &str = "nqn.2024-01.io.bdev-thin:initiator-kernel";
const NAMESPACE_MIB: u64 = 64;
const SECTOR: u64 = 512;

const TARGET_SCRIPT: &str = r#"
nullb_create nullb0 "$NAMESPACE_MIB"
nvmet_export "$NQN" /dev/nullb0 0.0.0.0 4420
serve 300
"#;

/// A guest serving the namespace, and the host address of its port forward.
fn boot(test: &str) -> Option<(Guest, SocketAddr)> {
    let kit = guest::kit(test)?;
    let spec = GuestSpec::new(test, TARGET_SCRIPT)
        .env("NQN", NQN)
        .env("NAMESPACE_MIB", NAMESPACE_MIB)
        .guest_port(NVME_PORT);
    let mut guest = Guest::boot(kit, &spec);
    guest.wait_for("SERVING");
    let address = SocketAddr::from(([127, 0, 0, 1], guest.forwarded_port(NVME_PORT)));
    Some((guest, address))
}

/// `perf -c <attach config> -q 8 -o 4k -w WORKLOAD -t 1`, in this process; asserts every IO
/// succeeded (and, for verify, read back what it wrote).
fn perf(dir: &std::path::Path, address: SocketAddr, workload: &str) {
    let attach = attach_params(address, NQN, json!({}));
    let entry = json!({"method": "bdev_nvme_attach_controller", "params": attach});
    let config = json!({"subsystems": [{"subsystem": "bdev", "config": [entry]}]});
    let path = dir.join("nvme.json");
    std::fs::write(&path, config.to_string()).expect("write the config");
    let args = perf::Args::try_parse_from([
        "perf",
        "-c",
        path.to_str().expect("a UTF-8 path"),
        "-q",
        "8",
        "-o",
        "4k",
        "-w",
        workload,
        "-t",
        "1",
    ])
    .expect("perf's arguments");
    let report = perf::run(&args, &Arc::new(AtomicBool::new(false)), |_| {})
        .unwrap_or_else(|e| panic!("perf -w {workload}: {e:#}"));
    assert_eq!(report.results.len(), 1, "one job on Nvme0n1");
    let result = &report.results[0];
    assert_eq!(result.spec.bdev_name, "Nvme0n1");
    assert_eq!(result.status, perf::job::JobStatus::Finished, "perf -w {workload}");
    assert!(result.ios > 0, "perf -w {workload} did no IO");
    assert_eq!((result.failed, result.prefill_failed), (0, 0), "perf -w {workload}: failed IO");
}

#[test]
fn perf_verifies_and_an_unmap_arrives_as_a_discard_on_the_kernel_target() {
    let test = "perf_verifies_and_an_unmap_arrives_as_a_discard_on_the_kernel_target";
    let Some((mut guest, address)) = boot(test) else { return };
    let dir = tempfile::tempdir().expect("a scratch directory");
    for workload in ["verify", "unmap", "write_zeroes"] {
        perf(dir.path(), address, workload);
    }

    let local = Side::new();
    let attached =
        local.call("bdev_nvme_attach_controller", attach_params(address, NQN, json!({})));
    assert_eq!(attached, json!(["Nvme0n1"]));
    let bdev = local.bdev("Nvme0n1");
    let handle = local.handle();
    // 1 MiB of data at 8 MiB; then the first half of it deallocated.
    let (first, blocks) = ((8 << 20) / SECTOR, (1 << 20) / SECTOR);
    let write = request(IoKind::Write, first, blocks, SECTOR, Some(0xa5), 0);
    assert!(run(&handle, &bdev, vec![write])[0].1.is_success());
    let before = guest.query("discard_stat nullb0", "DISCARDS");
    let unmap = request(IoKind::Unmap, first, blocks / 2, SECTOR, None, 1);
    assert!(run(&handle, &bdev, vec![unmap])[0].1.is_success());
    let after = guest.query("discard_stat nullb0", "DISCARDS");
    assert!(after.number("ios") > before.number("ios"), "no discard: {}", after.line);
    assert_eq!(
        after.number("sectors") - before.number("sectors"),
        blocks / 2,
        "the deallocated range is what the device discarded: {} then {}",
        before.line,
        after.line
    );
    let (offset, half) = (first * SECTOR, blocks / 2 * SECTOR);
    guest.run_ok(&format!("reads_zeroes /dev/nullb0 {offset} {half}"));
    assert_ne!(
        guest.run(&format!("reads_zeroes /dev/nullb0 {} {half}", offset + half)),
        0,
        "the half not deallocated lost its data"
    );
    let read = request(IoKind::Read, first, blocks, SECTOR, Some(0xff), 2);
    let (read, status) = run(&handle, &bdev, vec![read]).remove(0);
    assert!(status.is_success());
    let bytes = read.buffers.segments()[0].as_slice();
    let (zeroed, kept) = bytes.split_at(half as usize);
    assert!(zeroed.iter().all(|&b| b == 0), "the deallocated half reads zeroes here too");
    assert!(kept.iter().all(|&b| b == 0xa5), "the other half kept its data");

    drop(bdev);
    local.call("bdev_nvme_detach_controller", json!({"name": "Nvme0"}));
    assert_eq!(local.call("bdev_nvme_get_controllers", json!({})), json!([]));
    assert!(local.target.bdevs.get("Nvme0n1").is_err(), "detached: its bdev is gone");
    guest.finish();
}

#[test]
fn a_kernel_target_killed_mid_run_fails_the_io_and_the_process_serves_on() {
    let test = "a_kernel_target_killed_mid_run_fails_the_io_and_the_process_serves_on";
    let Some((mut guest, address)) = boot(test) else { return };
    // The proxy only counts PDUs: the kill comes while writes are on the wire.
    let proxy = NvmeProxy::start(address, Duration::from_secs(1));
    let local = Side::new();
    let malloc = json!({"name": "Local0", "num_blocks": 2048, "block_size": 4096});
    local.call("bdev_malloc_create", malloc);
    let policy = json!({"ctrlr_loss_timeout_sec": 4, "reconnect_delay_sec": 1,
        "fast_io_fail_timeout_sec": 2});
    local.call("bdev_nvme_attach_controller", attach_params(proxy.address, NQN, policy));
    let pool = json!({"bdev_name": "Nvme0n1", "pool_name": "pool0", "data_block_size": 65536});
    local.call("bdev_thin_pool_create", pool);
    let volume = json!({"pool_name": "pool0", "volume_name": "vol0", "size_in_mib": 32});
    let volume = local.call("bdev_thin_create", volume);
    let bdev = local.bdev(volume.as_str().expect("the volume's name"));
    let handle = local.handle();

    let writer = {
        let (handle, bdev) = (handle.clone(), Arc::clone(&bdev));
        std::thread::spawn(move || {
            // 8 MiB per pass, each write provisioning a block: far more than the wire carries
            // before the kill.
            let writes = (0..4096u64)
                .map(|i| request(IoKind::Write, (i * 16) % 8192, 16, 512, Some(i as u8), i))
                .collect();
            run(&handle, &bdev, writes)
        })
    };
    let pdus = proxy.counters().pdus.load(Ordering::SeqCst);
    wait_for("writes on the wire", Duration::from_secs(60), || {
        proxy.counters().pdus.load(Ordering::SeqCst) > pdus + 64
    });
    guest.kill();
    let killed = Instant::now();
    let outcome = writer.join().expect("the writer thread");
    let ended = killed.elapsed();
    let failed = outcome.iter().filter(|(_, s)| !s.is_success()).count();
    assert!(failed > 0, "writes after the kill failed");
    for (request, status) in &outcome {
        assert!(
            matches!(
                status,
                IoStatus::Success | IoStatus::Failed(libc::EIO | libc::EROFS | libc::ENODEV)
            ),
            "write {} ended {status:?}",
            request.tag
        );
    }
    // ctrlr_loss_timeout_sec bounds it (the reactors' clock, not this assertion, keeps time).
    assert!(ended < Duration::from_secs(30), "the writes ended {ended:?} after the kill");

    // A commit that was under way failed: read-only with needs_check; none was: the pool
    // stays writable on paper and every write fails at its device.
    let pools = local.call("bdev_thin_get_pools", json!({"pool_name": "pool0"}));
    let read_only = pools[0]["mode"] == "read_only";
    assert_eq!(pools[0]["needs_check"] == true, read_only, "{pools}");
    wait_for("the controller's removal", Duration::from_secs(30), || {
        local.call("bdev_nvme_get_controllers", json!({})) == json!([])
    });
    let after = run(&handle, &bdev, vec![request(IoKind::Write, 0, 8, 512, Some(1), 0)]);
    assert!(!after[0].1.is_success(), "the pool takes no writes on a lost device");
    let local_bdev = local.bdev("Local0");
    let still = run(&handle, &local_bdev, vec![request(IoKind::Write, 0, 8, 4096, Some(1), 0)]);
    assert!(still[0].1.is_success(), "the process keeps serving its other bdevs");
}
