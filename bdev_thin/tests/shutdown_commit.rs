//! A stopping runtime commits every pool (API.md: SIGINT/SIGTERM drain IO, commit every pool,
//! exit 0), exactly as `thin_tgt` stops: writes to fresh blocks are acknowledged before the
//! commit that makes their mappings durable (dm-thin's contract: durable at the next flush), the
//! pool's commit timer is set far away, nothing flushes, and the runtime stops. A new runtime
//! then finds the pool by examine on the same file, with every mapping there.

use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

use bdev_thin::bdev::{Bdev, BdevChannel};
use bdev_thin::host::{DeviceChannel, IoBuffer, IoKind, IoRequest, PollStatus, Poller, SgList};
use bdev_thin::rpc::call_blocking;
use bdev_thin::runtime::{CoreMask, Runtime, RuntimeOptions};
use bdev_thin::target::Target;
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(30);

/// Data blocks written (64 KiB each, 16 LBAs of 4 KiB), one 4 KiB write in each.
const WRITES: u64 = 6;

fn runtime(mask: u64) -> Runtime {
    Runtime::start(RuntimeOptions {
        mask: CoreMask(mask),
        park: true,
        pin: false,
        idle_before_park_us: 200,
        ..Default::default()
    })
    .expect("runtime")
}

fn call(target: &Arc<Target>, method: &str, params: Value) -> Value {
    call_blocking(target, method, Some(params))
        .unwrap_or_else(|e| panic!("{method}: {} {}", e.code, e.message))
}

/// Writes one 4 KiB block at the start of each of `WRITES` data blocks from `base` on, then
/// reports how many succeeded. Runs on a reactor; opens its channel there.
struct Writer {
    bdev: Arc<Bdev>,
    /// The first LBA written.
    base: u64,
    channel: Option<BdevChannel>,
    submitted: u64,
    succeeded: u64,
    completed: u64,
    done: Option<Sender<u64>>,
}

impl Poller for Writer {
    fn poll(&mut self) -> PollStatus {
        if self.done.is_none() {
            return PollStatus::Idle;
        }
        let channel = self
            .channel
            .get_or_insert_with(|| self.bdev.open_channel().expect("a channel on the volume"));
        while self.submitted < WRITES {
            let mut buffer = IoBuffer::new(4096);
            buffer.as_mut_slice().fill(0xa5);
            let lba = self.base + self.submitted * 16;
            let request = IoRequest::new(IoKind::Write, lba, 1, self.submitted)
                .with_buffers(SgList::single(buffer));
            if channel.submit(request).is_err() {
                break;
            }
            self.submitted += 1;
        }
        let (mut completed, mut succeeded) = (0, 0);
        channel.poll(&mut |completion| {
            completed += 1;
            succeeded += u64::from(completion.status.is_success());
        });
        self.completed += completed;
        self.succeeded += succeeded;
        if self.completed == WRITES
            && let Some(done) = self.done.take()
        {
            let _ = done.send(self.succeeded);
        }
        PollStatus::busy_if(completed > 0)
    }

    fn is_finished(&self) -> bool {
        self.done.is_none()
    }

    fn prepare_park(&mut self) -> bool {
        self.channel.as_mut().is_none_or(|c| c.prepare_park())
    }
}

fn volumes(target: &Arc<Target>) -> Value {
    call(target, "bdev_thin_get_volumes", json!({}))
}

/// Writes `WRITES` data blocks of `volume` from `base` on, from a poller on `core`; waits.
fn write_on(target: &Arc<Target>, core: u32, volume: &str, base: u64) {
    let bdev = target.bdevs.get(volume).unwrap();
    let (sender, receiver) = channel();
    let sent = target.runtime.send(core, move |ctx| {
        let writer = Writer {
            bdev,
            base,
            channel: None,
            submitted: 0,
            succeeded: 0,
            completed: 0,
            done: Some(sender),
        };
        ctx.add_local_poller(Box::new(writer));
    });
    assert!(sent.is_ok());
    assert_eq!(receiver.recv_timeout(BOUND).expect("the writes complete"), WRITES);
}

/// `pools` pools (one per image, homed round-robin on the cores of `mask`), a volume in each
/// written from every core, then the stop, then examine on a new runtime.
fn stop_commits(tag: &str, mask: u64, pools: usize) {
    let dir = std::env::temp_dir().join(format!("thin_shutdown_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let urings: Vec<Value> = (0..pools)
        .map(|n| {
            let image = dir.join(format!("pool{n}.img"));
            std::fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
            json!({"name": format!("Uring{n}"), "filename": image.to_str().unwrap(),
                   "block_size": 4096})
        })
        .collect();
    let cores: Vec<u32> = (0..64).filter(|c| mask & (1 << c) != 0).collect();

    let runtime = runtime(mask);
    let target = Target::new(runtime.handle());
    for (n, uring) in urings.iter().enumerate() {
        call(&target, "bdev_uring_create", uring.clone());
        // An hour between timed commits: only the stop can commit the writes below.
        call(
            &target,
            "bdev_thin_pool_create",
            json!({"bdev_name": format!("Uring{n}"), "pool_name": format!("pool{n}"),
                   "commit_interval_ms": 3_600_000}),
        );
        call(
            &target,
            "bdev_thin_create",
            json!({"pool_name": format!("pool{n}"), "volume_name": "vol0", "size_in_mib": 8}),
        );
    }
    let before = call(&target, "bdev_thin_get_pools", json!({}));
    for n in 0..pools {
        // Each volume written from every core: WRITES blocks per core, at other offsets.
        for (i, &core) in cores.iter().enumerate() {
            write_on(&target, core, &format!("pool{n}/vol0"), i as u64 * WRITES * 16);
        }
    }
    let expected = WRITES * cores.len() as u64;
    for volume in volumes(&target).as_array().unwrap() {
        assert_eq!(volume["mapped_blocks"], expected, "{volume}");
    }
    let pools_now = call(&target, "bdev_thin_get_pools", json!({}));
    for (now, then) in pools_now.as_array().unwrap().iter().zip(before.as_array().unwrap()) {
        assert_eq!(
            now["transaction_id"], then["transaction_id"],
            "no commit ran yet (else this test shows nothing): {now}"
        );
    }

    drop(target);
    runtime.stop();

    let runtime = self::runtime(mask);
    let target = Target::new(runtime.handle());
    for uring in urings {
        call(&target, "bdev_uring_create", uring);
    }
    call(&target, "bdev_wait_for_examine", json!({}));
    let found = volumes(&target);
    assert_eq!(found.as_array().unwrap().len(), pools, "{found}");
    for volume in found.as_array().unwrap() {
        assert_eq!(volume["mapped_blocks"], expected, "the stop committed every mapping: {found}");
    }
    drop(target);
    runtime.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stopping_the_runtime_commits_acknowledged_writes() {
    stop_commits("one", 0b1, 1);
}

#[test]
fn stopping_two_reactors_commits_a_pool_on_each() {
    stop_commits("two", 0b11, 2);
}
