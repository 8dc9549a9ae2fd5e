//! The initiator when its connection goes away, through a proxy that cuts connections and
//! refuses new ones (our target stays up behind it), and when the target changes under it:
//!
//! - a reconnect within `fast_io_fail_timeout_sec` loses nothing and fails nothing: writes in
//!   flight at the cut and written while disconnected complete, and everything reads back;
//! - past `fast_io_fail_timeout_sec` IO fails, and past `ctrlr_loss_timeout_sec` the controller
//!   and its bdev are removed, while the process keeps serving its other bdevs;
//! - with `ctrlr_loss_timeout_sec` 0 (no reconnect) IO fails and the controller stays failed
//!   until detached;
//! - an AER: a namespace resized on the target resizes the bdev; one added appears as a bdev,
//!   one removed goes;
//! - every IO queue Connect refused with Command Sequence Error: the queue retries up to its
//!   limit, then its IO fails; the controller and the process keep serving;
//! - a target that accepts the connection and answers ICReq but never Fabrics Connect: the
//!   attach fails with an error naming the Connect once `fabrics_connect_timeout_us` passed,
//!   and the process keeps serving;
//! - a thin pool on the namespace rides out a reconnect (writes and their commits in flight at
//!   the cut complete; the pool stays writable and clean), and another host's attach finds it
//!   by examine with every write.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bdev_thin::host::{IoKind, IoStatus};
use bdev_thin::limits::NVME_IO_CONNECT_RETRIES;
use bdev_thin::nvme::tcp::{Encoder, IcResp};
use common::nvme::{NQN, Side, attach_params, remote_target, request, run, try_call, wait_for};
use common::nvme_proxy::NvmeProxy;
use serde_json::{Value, json};

const BLOCK: u64 = 4096;

fn malloc(name: &str, mib: u64) -> (&'static str, Value) {
    ("bdev_malloc_create", json!({"name": name, "num_blocks": mib * 256, "block_size": 4096}))
}

fn controller_state(local: &Side) -> Option<String> {
    let controllers = local.call("bdev_nvme_get_controllers", json!({}));
    controllers[0]["ctrlrs"][0]["state"].as_str().map(str::to_string)
}

#[test]
fn a_reconnect_within_fast_io_fail_loses_nothing_and_fails_nothing() {
    let (_remote, upstream) = remote_target(&[malloc("Malloc0", 16)]);
    let proxy = NvmeProxy::start(upstream, Duration::from_secs(1));
    let local = Side::new();
    let policy = json!({"ctrlr_loss_timeout_sec": 30, "reconnect_delay_sec": 1,
        "fast_io_fail_timeout_sec": 20});
    local.call("bdev_nvme_attach_controller", attach_params(proxy.address, NQN, policy));
    let bdev = local.bdev("Nvme0n1");
    let handle = local.handle();

    let first: Vec<_> =
        (0..64).map(|i| request(IoKind::Write, i * 8, 8, BLOCK, Some(i as u8 + 1), i)).collect();
    assert!(run(&handle, &bdev, first).iter().all(|(_, s)| s.is_success()));

    // Writes submitted, the connection cut under them while they are in flight, reconnects
    // refused twice, then allowed.
    let writer = {
        let (handle, bdev) = (handle.clone(), bdev.clone());
        std::thread::spawn(move || {
            let second: Vec<_> = (64..512)
                .map(|i| request(IoKind::Write, i * 8, 8, BLOCK, Some((i % 250) as u8 + 1), i))
                .collect();
            run(&handle, &bdev, second)
        })
    };
    let before = proxy.counters().pdus.load(Ordering::SeqCst);
    wait_for("the second batch on the wire", Duration::from_secs(30), || {
        proxy.counters().pdus.load(Ordering::SeqCst) > before + 16
    });
    proxy.cut(true);
    wait_for("two refused reconnects", Duration::from_secs(30), || {
        proxy.counters().refused.load(Ordering::SeqCst) >= 2
    });
    assert_eq!(controller_state(&local).as_deref(), Some("resetting"));
    proxy.allow();
    let second = writer.join().expect("the writer thread");
    let failed: Vec<_> = second.iter().filter(|(_, s)| !s.is_success()).collect();
    assert!(failed.is_empty(), "{} writes failed across the reconnect", failed.len());
    assert_eq!(controller_state(&local).as_deref(), Some("enabled"));

    let reads: Vec<_> =
        (0..512).map(|i| request(IoKind::Read, i * 8, 8, BLOCK, Some(0), i)).collect();
    for (request, status) in run(&handle, &bdev, reads) {
        assert!(status.is_success());
        let expected =
            if request.tag < 64 { request.tag as u8 + 1 } else { (request.tag % 250) as u8 + 1 };
        let bytes = request.buffers.segments()[0].as_slice();
        assert!(bytes.iter().all(|&b| b == expected), "block {} lost its write", request.tag);
    }
}

#[test]
fn past_fast_io_fail_io_fails_and_past_ctrlr_loss_the_controller_is_removed() {
    let (_remote, upstream) = remote_target(&[malloc("Malloc0", 8)]);
    let proxy = NvmeProxy::start(upstream, Duration::from_secs(1));
    let local = Side::new();
    local.call(
        "bdev_malloc_create",
        json!({"name": "Local0", "num_blocks": 2048, "block_size": 4096}),
    );
    let policy = json!({"ctrlr_loss_timeout_sec": 3, "reconnect_delay_sec": 1,
        "fast_io_fail_timeout_sec": 1});
    local.call("bdev_nvme_attach_controller", attach_params(proxy.address, NQN, policy));
    let handle = local.handle();
    let bdev = local.bdev("Nvme0n1");
    proxy.cut(true);
    let started = std::time::Instant::now();
    let outcome = run(&handle, &bdev, vec![request(IoKind::Write, 0, 8, BLOCK, Some(7), 0)]);
    assert_eq!(outcome[0].1, IoStatus::Failed(libc::EIO), "fails once fast_io_fail passed");
    assert!(started.elapsed() < Duration::from_secs(10), "within the configured timeout");
    wait_for("the controller's removal", Duration::from_secs(30), || {
        local.call("bdev_nvme_get_controllers", json!({})) == json!([])
    });
    assert!(local.target.bdevs.get("Nvme0n1").is_err(), "the namespace's bdev is gone");
    let local_bdev = local.bdev("Local0");
    let still = run(&handle, &local_bdev, vec![request(IoKind::Write, 0, 8, BLOCK, Some(1), 0)]);
    assert!(still[0].1.is_success(), "the process keeps serving its other bdevs");
    drop(proxy);
}

#[test]
fn without_reconnects_io_fails_and_the_controller_stays_failed_until_detached() {
    let (_remote, upstream) = remote_target(&[malloc("Malloc0", 8)]);
    let proxy = NvmeProxy::start(upstream, Duration::from_secs(1));
    let local = Side::new();
    local.call("bdev_nvme_attach_controller", attach_params(proxy.address, NQN, json!({})));
    let bdev = local.bdev("Nvme0n1");
    proxy.cut(true);
    let outcome = run(&local.handle(), &bdev, vec![request(IoKind::Read, 0, 8, BLOCK, Some(0), 0)]);
    assert_eq!(outcome[0].1, IoStatus::Failed(libc::EIO));
    wait_for("the failed state", Duration::from_secs(30), || {
        controller_state(&local).as_deref() == Some("failed")
    });
    drop(bdev);
    local.call("bdev_nvme_detach_controller", json!({"name": "Nvme0"}));
    assert_eq!(local.call("bdev_nvme_get_controllers", json!({})), json!([]));
}

#[test]
fn namespace_notices_resize_add_and_remove_bdevs() {
    let null =
        ("bdev_null_create", json!({"name": "Null0", "num_blocks": 8192, "block_size": 512}));
    let (remote, upstream) = remote_target(&[null]);
    let local = Side::new();
    local.call("bdev_nvme_attach_controller", attach_params(upstream, NQN, json!({})));
    let blocks = |name: &str| {
        try_call(&local.target, "bdev_get_bdevs", json!({"name": name}))
            .ok()
            .and_then(|b| b[0]["num_blocks"].as_u64())
    };
    assert_eq!(blocks("Nvme0n1"), Some(8192));
    remote.call("bdev_null_resize", json!({"name": "Null0", "new_size": 8}));
    wait_for("the resize to reach the initiator", Duration::from_secs(30), || {
        blocks("Nvme0n1") == Some(16384)
    });
    remote.call(
        "bdev_malloc_create",
        json!({"name": "Malloc9", "num_blocks": 2048, "block_size": 4096}),
    );
    remote
        .call("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc9"}}));
    wait_for("the new namespace's bdev", Duration::from_secs(30), || blocks("Nvme0n2").is_some());
    remote.call("nvmf_subsystem_remove_ns", json!({"nqn": NQN, "nsid": 2}));
    wait_for("the removed namespace's bdev to go", Duration::from_secs(30), || {
        blocks("Nvme0n2").is_none()
    });
    assert_eq!(blocks("Nvme0n1"), Some(16384), "the other namespace stays");
}

#[test]
fn a_pool_on_the_namespace_rides_out_a_reconnect_and_comes_back_by_examine() {
    let (_remote, upstream) = remote_target(&[malloc("Malloc0", 16)]);
    let proxy = NvmeProxy::start(upstream, Duration::from_secs(1));
    let local = Side::new();
    let policy = json!({"ctrlr_loss_timeout_sec": 30, "reconnect_delay_sec": 1,
        "fast_io_fail_timeout_sec": 20});
    local.call("bdev_nvme_attach_controller", attach_params(proxy.address, NQN, policy));
    let pool = json!({"bdev_name": "Nvme0n1", "pool_name": "pool0", "data_block_size": 65536});
    local.call("bdev_thin_pool_create", pool);
    let volume = json!({"pool_name": "pool0", "volume_name": "vol0", "size_in_mib": 8});
    let volume = local.call("bdev_thin_create", volume);
    let bdev = local.bdev(volume.as_str().expect("the volume's name"));
    let block = u64::from(bdev.info().block_size_bytes);
    let blocks_per_write = 16384 / block;
    let handle = local.handle();

    // Writes provisioning blocks (their commits on the wire too) while the connection is cut
    // and reconnects are refused twice.
    let writer = {
        let (handle, bdev) = (handle.clone(), Arc::clone(&bdev));
        std::thread::spawn(move || {
            let writes = (0..512u64)
                .map(|i| {
                    let fill = Some((i % 250) as u8 + 1);
                    request(IoKind::Write, i * blocks_per_write, blocks_per_write, block, fill, i)
                })
                .collect();
            run(&handle, &bdev, writes)
        })
    };
    let before = proxy.counters().pdus.load(Ordering::SeqCst);
    wait_for("writes on the wire", Duration::from_secs(30), || {
        proxy.counters().pdus.load(Ordering::SeqCst) > before + 16
    });
    proxy.cut(true);
    wait_for("two refused reconnects", Duration::from_secs(30), || {
        proxy.counters().refused.load(Ordering::SeqCst) >= 2
    });
    proxy.allow();
    let written = writer.join().expect("the writer thread");
    assert!(written.iter().all(|(_, s)| s.is_success()), "no write failed across the reconnect");
    let flush = run(&handle, &bdev, vec![request(IoKind::Flush, 0, 0, block, None, 0)]);
    assert!(flush[0].1.is_success(), "the commit after the reconnect");
    let pools = local.call("bdev_thin_get_pools", json!({"pool_name": "pool0"}));
    assert_eq!((&pools[0]["mode"], &pools[0]["needs_check"]), (&json!("write"), &json!(false)));
    drop(bdev);
    drop(local);

    // Another process's view: attach directly, examine finds the pool, every write reads back.
    let again = Side::new();
    again.call("bdev_nvme_attach_controller", attach_params(upstream, NQN, json!({})));
    again.call("bdev_wait_for_examine", json!({}));
    let bdev = again.bdev("pool0/vol0");
    let reads = (0..512u64)
        .map(|i| request(IoKind::Read, i * blocks_per_write, blocks_per_write, block, Some(0), i))
        .collect();
    for (request, status) in run(&again.handle(), &bdev, reads) {
        assert!(status.is_success());
        let expected = (request.tag % 250) as u8 + 1;
        let bytes = request.buffers.segments()[0].as_slice();
        assert!(bytes.iter().all(|&b| b == expected), "write {} lost", request.tag);
    }
}

#[test]
fn io_queue_connects_refused_past_the_retry_limit_fail_io_and_the_process_keeps_serving() {
    let (_remote, upstream) = remote_target(&[malloc("Malloc0", 8)]);
    let proxy = NvmeProxy::start(upstream, Duration::from_secs(1));
    proxy.refuse_io_connects(true);
    let local = Side::new();
    local.call(
        "bdev_malloc_create",
        json!({"name": "Local0", "num_blocks": 2048, "block_size": 4096}),
    );
    local.call("bdev_nvme_attach_controller", attach_params(proxy.address, NQN, json!({})));
    let handle = local.handle();
    let bdev = local.bdev("Nvme0n1");
    let before = proxy.counters().io_connects_refused.load(Ordering::SeqCst);
    let outcome = run(&handle, &bdev, vec![request(IoKind::Read, 0, 8, BLOCK, Some(0), 0)]);
    assert_eq!(outcome[0].1, IoStatus::Failed(libc::EIO), "IO fails once the retries are spent");
    let refused = proxy.counters().io_connects_refused.load(Ordering::SeqCst);
    let per_queue = u64::from(NVME_IO_CONNECT_RETRIES) + 1;
    assert!(
        refused > before
            && (refused - before).is_multiple_of(per_queue)
            && before.is_multiple_of(per_queue),
        "each queue pair tries once and retries {NVME_IO_CONNECT_RETRIES} times: {before} \
         then {refused} refusals"
    );
    assert_eq!(controller_state(&local).as_deref(), Some("enabled"), "the admin queue stays");
    let local_bdev = local.bdev("Local0");
    let still = run(&handle, &local_bdev, vec![request(IoKind::Write, 0, 8, BLOCK, Some(1), 0)]);
    assert!(still[0].1.is_success(), "the process keeps serving its other bdevs");
    drop(bdev);
    local.call("bdev_nvme_detach_controller", json!({"name": "Nvme0"}));
}

/// A listener that answers the first connection's ICReq and then reads, never answering,
/// until the host closes it. Returns its address and whether a capsule arrived.
fn silent_controller() -> (std::net::SocketAddr, std::thread::JoinHandle<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("the listener binds");
    let address = listener.local_addr().expect("bound");
    let serving = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the host connects");
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("a read bound");
        let mut ic_req = [0u8; 128];
        stream.read_exact(&mut ic_req).expect("ICReq");
        let response = IcResp { maxh2cdata: 131_072, ..IcResp::default() };
        stream.write_all(Encoder::ic_resp(&response).as_bytes()).expect("ICResp");
        let mut capsule = false;
        let mut byte = [0u8; 1];
        while stream.read(&mut byte).is_ok_and(|n| n > 0) {
            capsule = true;
        }
        capsule
    });
    (address, serving)
}

#[test]
fn a_target_that_never_answers_connect_fails_the_attach_and_the_process_keeps_serving() {
    let (address, serving) = silent_controller();
    let local = Side::new();
    let params = attach_params(address, NQN, json!({"fabrics_connect_timeout_us": 200_000}));
    let error = try_call(&local.target, "bdev_nvme_attach_controller", params)
        .expect_err("the attach fails");
    assert!(
        error.message.contains("Nvme0") && error.message.contains("Fabrics Connect"),
        "{error}"
    );
    assert!(serving.join().expect("the listener thread"), "the Connect capsule was sent");
    assert_eq!(local.call("bdev_nvme_get_controllers", json!({})), json!([]));
    let created = local.call(
        "bdev_malloc_create",
        json!({"name": "Local0", "num_blocks": 2048, "block_size": 4096}),
    );
    assert_eq!(created, json!("Local0"), "the process keeps serving");
}
