//! Criterion benches of the hot paths: a message through a ring (same core and across cores),
//! and one IO submitted and completed on null and malloc channels, raw and through the bdev
//! layer (which adds statistics and the IO-type check).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bdev_thin::backend::{BaseDevice, MallocDevice, NullDevice};
use bdev_thin::bdev::{Bdev, Device};
use bdev_thin::host::{
    BlockDevice, DeviceChannel, IoBuffer, IoKind, IoRequest, MessageRing, NoopWaker, SgList,
};
use criterion::{Criterion, criterion_group, criterion_main};

fn ring_hand_off(c: &mut Criterion) {
    let ring = MessageRing::new(1024, NoopWaker);
    c.bench_function("ring push+pop, one core", |b| {
        b.iter(|| {
            ring.push(black_box(7u64)).expect("never full");
            black_box(ring.pop())
        })
    });

    // Ping-pong between two threads: one message there, one back.
    let there = Arc::new(MessageRing::new(1024, NoopWaker));
    let back = Arc::new(MessageRing::new(1024, NoopWaker));
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let (there, back, stop) = (Arc::clone(&there), Arc::clone(&back), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(message) = there.pop() {
                    while back.push(message).is_err() {}
                }
            }
        })
    };
    c.bench_function("ring round trip, two threads", |b| {
        b.iter(|| {
            there.push(1u64).expect("never full");
            loop {
                if let Some(message) = back.pop() {
                    break black_box(message);
                }
            }
        })
    });
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
}

fn one_io(channel: &mut impl DeviceChannel, request: IoRequest) -> IoRequest {
    channel.submit(request).expect("the channel has room");
    let mut back = None;
    while back.is_none() {
        channel.poll(&mut |completion| back = Some(completion.request));
    }
    back.expect("completed")
}

fn submit_complete(c: &mut Criterion) {
    let null = BaseDevice::Null(Arc::new(NullDevice::new(4096, 1 << 20).expect("valid")));
    let malloc = BaseDevice::Malloc(Arc::new(MallocDevice::new(4096, 4096).expect("valid")));
    for (name, device) in [("null", null), ("malloc", malloc)] {
        let mut raw = device.open_channel().expect("opens");
        let mut request = Some(
            IoRequest::new(IoKind::Read, 7, 1, 0).with_buffers(SgList::single(IoBuffer::new(4096))),
        );
        c.bench_function(&format!("{name}: 4 KiB read, device channel"), |b| {
            b.iter(|| {
                let done = one_io(&mut raw, request.take().expect("returned"));
                request = Some(done);
            })
        });
        let bdev = Bdev::new(name.into(), uuid::Uuid::nil(), Device::Base(device.clone()));
        let mut layered = bdev.open_channel().expect("opens");
        c.bench_function(&format!("{name}: 4 KiB read, bdev channel"), |b| {
            b.iter(|| {
                let done = one_io(&mut layered, request.take().expect("returned"));
                request = Some(done);
            })
        });
    }
}

criterion_group!(benches, ring_hand_off, submit_complete);
criterion_main!(benches);
