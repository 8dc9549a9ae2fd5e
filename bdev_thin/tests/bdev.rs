//! The bdev layer as a config or an RPC client drives it: lookup by name, alias and UUID,
//! channels that check IO types and count what passes into `bdev_get_iostat`, malloc's zeroing,
//! `bdev_null_resize`, and `bdev_uring_rescan` on a grown file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bdev_thin::host::{DeviceChannel, IoBuffer, IoCompletion, IoKind, IoRequest, IoStatus, SgList};
use bdev_thin::rpc::{RpcError, call_blocking};
use bdev_thin::runtime::{Runtime, RuntimeOptions};
use bdev_thin::target::Target;
use serde_json::{Value, json};

fn target() -> (Runtime, Arc<Target>) {
    let runtime = Runtime::start(RuntimeOptions { pin: false, ..Default::default() }).unwrap();
    let target = Target::new(runtime.handle());
    (runtime, target)
}

fn call(target: &Arc<Target>, method: &str, params: Value) -> Result<Value, RpcError> {
    call_blocking(target, method, Some(params))
}

/// Submits `request` and polls until it completes (bounded).
fn run(channel: &mut impl DeviceChannel, request: IoRequest) -> IoCompletion {
    channel.submit(request).expect("channel has room");
    let start = Instant::now();
    loop {
        let mut done = None;
        channel.poll(&mut |c| done = Some(c));
        if let Some(c) = done {
            return c;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "IO did not complete");
        std::thread::yield_now();
    }
}

fn filled(bytes: usize, byte: u8) -> SgList {
    let mut buffer = IoBuffer::new(bytes);
    buffer.as_mut_slice().fill(byte);
    SgList::single(buffer)
}

const UUID: &str = "6f0d1f0e-8a3c-4b9e-9d0b-1c2d3e4f5a6b";

#[test]
fn bdevs_answer_to_name_alias_and_uuid() {
    let (_runtime, target) = target();
    let params = json!({"name": "Malloc0", "num_blocks": 256, "block_size": 4096, "uuid": UUID});
    assert_eq!(call(&target, "bdev_malloc_create", params).unwrap(), "Malloc0");
    let bdev = target.bdevs.get("Malloc0").unwrap();
    assert!(Arc::ptr_eq(&bdev, &target.bdevs.get(UUID).unwrap()), "by UUID");
    bdev.add_alias("pool0/vol0".into());
    assert!(Arc::ptr_eq(&bdev, &target.bdevs.get("pool0/vol0").unwrap()), "by alias");

    let listed = call(&target, "bdev_get_bdevs", json!({"name": "pool0/vol0"})).unwrap();
    assert_eq!(listed[0]["name"], "Malloc0");
    assert_eq!(listed[0]["aliases"], json!(["pool0/vol0", UUID]));
    assert_eq!(listed[0]["num_blocks"], 256);
    assert_eq!(listed[0]["supported_io_types"]["unmap"], true);

    // Names, aliases and UUIDs are unique; an unnamed malloc gets the next free name.
    let same_name = json!({"name": "Malloc0", "num_blocks": 8, "block_size": 512});
    assert_eq!(call(&target, "bdev_malloc_create", same_name).unwrap_err().code, -17);
    let same_uuid = json!({"name": "Other", "num_blocks": 8, "block_size": 512, "uuid": UUID});
    assert_eq!(call(&target, "bdev_malloc_create", same_uuid).unwrap_err().code, -17);
    let unnamed = json!({"num_blocks": 8, "block_size": 512});
    assert_eq!(call(&target, "bdev_malloc_create", unnamed).unwrap(), "Malloc1");
    let missing = call(&target, "bdev_get_bdevs", json!({"name": "nope"})).unwrap_err();
    assert_eq!(missing.code, -19, "{missing}");

    // A bdev held open cannot be deleted; closed, it can.
    let descriptor = bdev.open().unwrap();
    let busy = call(&target, "bdev_malloc_delete", json!({"name": UUID})).unwrap_err();
    assert_eq!(busy.code, -16, "{busy}");
    drop(descriptor);
    assert_eq!(call(&target, "bdev_malloc_delete", json!({"name": UUID})).unwrap(), true);
    assert!(target.bdevs.get("Malloc0").is_err());
}

#[test]
fn channels_check_io_types_and_count_iostat() {
    let (_runtime, target) = target();
    let malloc = json!({"name": "Malloc0", "num_blocks": 64, "block_size": 4096});
    call(&target, "bdev_malloc_create", malloc).unwrap();
    let null = json!({"name": "Null0", "num_blocks": 64, "block_size": 4096});
    call(&target, "bdev_null_create", null).unwrap();

    let bdev = target.bdevs.get("Malloc0").unwrap();
    let mut channel = bdev.open_channel().unwrap();
    let write = IoRequest::new(IoKind::Write, 4, 2, 1).with_buffers(filled(8192, 0x77));
    assert_eq!(run(&mut channel, write).status, IoStatus::Success);
    let read =
        run(&mut channel, IoRequest::new(IoKind::Read, 4, 2, 2).with_buffers(filled(8192, 0)));
    assert!(read.request.buffers.segments()[0].as_slice().iter().all(|&b| b == 0x77));
    // Malloc's unmap and write_zeroes zero their ranges.
    assert_eq!(run(&mut channel, IoRequest::new(IoKind::Unmap, 4, 1, 3)).status, IoStatus::Success);
    let zeroes = IoRequest::new(IoKind::WriteZeroes, 5, 1, 4);
    assert_eq!(run(&mut channel, zeroes).status, IoStatus::Success);
    let read =
        run(&mut channel, IoRequest::new(IoKind::Read, 4, 2, 5).with_buffers(filled(8192, 1)));
    assert!(read.request.buffers.segments()[0].as_slice().iter().all(|&b| b == 0));
    // An IO past the end fails and is counted as failed.
    let past = IoRequest::new(IoKind::Read, 64, 1, 6).with_buffers(filled(4096, 0));
    assert_eq!(run(&mut channel, past).status, IoStatus::Failed(libc::EINVAL));

    let stat = call(&target, "bdev_get_iostat", json!({"name": "Malloc0"})).unwrap();
    assert_eq!(stat["tick_rate"], 1_000_000_000u64);
    let malloc = &stat["bdevs"][0];
    assert_eq!(malloc["name"], "Malloc0");
    assert_eq!(malloc["num_read_ops"], 2);
    assert_eq!(malloc["bytes_read"], 16384);
    assert_eq!(malloc["num_write_ops"], 1);
    assert_eq!(malloc["bytes_written"], 8192);
    assert_eq!(malloc["num_unmap_ops"], 1);
    assert_eq!(malloc["bytes_unmapped"], 4096);
    assert_eq!(malloc["io_error"]["failed"], 1);
    let min = malloc["min_read_latency_ticks"].as_u64().unwrap();
    let max = malloc["max_read_latency_ticks"].as_u64().unwrap();
    assert!(min <= max && max <= malloc["read_latency_ticks"].as_u64().unwrap());

    // A closed channel's counts stay with the bdev; `reset_mode: all` forgets them.
    drop(channel);
    let stat = call(&target, "bdev_get_iostat", json!({"names": ["Malloc0"]})).unwrap();
    assert_eq!(stat["bdevs"][0]["num_read_ops"], 2);
    call(&target, "bdev_get_iostat", json!({"name": "Malloc0", "reset_mode": "all"})).unwrap();
    let stat = call(&target, "bdev_get_iostat", json!({"name": "Malloc0"})).unwrap();
    assert_eq!(stat["bdevs"][0]["num_read_ops"], 0);

    // Null serves no unmap: the bdev layer completes it with ENOTSUP.
    let mut null = target.bdevs.get("Null0").unwrap().open_channel().unwrap();
    let unmap = run(&mut null, IoRequest::new(IoKind::Unmap, 0, 1, 7));
    assert_eq!(unmap.status, IoStatus::Failed(libc::ENOTSUP));
    let listed = call(&target, "bdev_get_bdevs", json!({"name": "Null0"})).unwrap();
    assert_eq!(listed[0]["supported_io_types"]["unmap"], false);
}

#[test]
fn null_resize_and_uring_rescan_change_the_size() {
    let (_runtime, target) = target();
    call(
        &target,
        "bdev_null_create",
        json!({"name": "Null0", "num_blocks": 2048, "block_size": 4096}),
    )
    .unwrap();
    call(&target, "bdev_null_resize", json!({"name": "Null0", "new_size": 16})).unwrap();
    let listed = call(&target, "bdev_get_bdevs", json!({"name": "Null0"})).unwrap();
    assert_eq!(listed[0]["num_blocks"], 4096, "16 MiB of 4 KiB blocks");

    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("rescan_{}.img", std::process::id()));
    std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
    let params =
        json!({"name": "Uring0", "filename": path.display().to_string(), "block_size": 4096});
    call(&target, "bdev_uring_create", params).unwrap();
    let bdev = target.bdevs.get("Uring0").unwrap();
    let mut channel = bdev.open_channel().unwrap();
    let beyond = || IoRequest::new(IoKind::Read, 256, 1, 1).with_buffers(filled(4096, 0));
    assert_eq!(run(&mut channel, beyond()).status, IoStatus::Failed(libc::EINVAL));

    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(2 << 20).unwrap();
    assert_eq!(call(&target, "bdev_uring_rescan", json!({"name": "Uring0"})).unwrap(), true);
    let listed = call(&target, "bdev_get_bdevs", json!({"name": "Uring0"})).unwrap();
    assert_eq!(listed[0]["num_blocks"], 512, "the grown file");
    assert_eq!(run(&mut channel, beyond()).status, IoStatus::Success, "an open channel sees it");
    drop(channel);

    let wrong = call(&target, "bdev_uring_rescan", json!({"name": "Null0"})).unwrap_err();
    assert_eq!(wrong.code, -19, "{wrong}");
    call(&target, "bdev_uring_delete", json!({"name": "Uring0"})).unwrap();
    let _ = std::fs::remove_file(&path);
}
