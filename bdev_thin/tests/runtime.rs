//! The embedded runtime with real threads: parking and waking, timed pollers, stopping.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bdev_thin::backend::UringDevice;
use bdev_thin::backend::uring::UringChannel;
use bdev_thin::host::{
    BlockDevice, DeviceChannel, Host, IoKind, IoRequest, IoStatus, MessageRing, NoopWaker,
    PollStatus, Poller,
};
use bdev_thin::runtime::{CoreMask, ReactorWaker, Runtime, RuntimeOptions};

const BOUND: Duration = Duration::from_secs(20);

/// One reactor that parks after 200 µs idle and then sleeps until something wakes it: no
/// periodic wake-up, so a lost wake-up hangs the test until `BOUND` fails it.
fn options(park: bool) -> RuntimeOptions {
    RuntimeOptions {
        mask: CoreMask(1),
        park,
        pin: false,
        idle_before_park_us: 200,
        park_timeout_ms: -1,
    }
}

/// Waits (bounded) until `condition` holds; the bound turns a hang into a failure.
fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn parks(runtime: &Runtime) -> u64 {
    runtime.handle().stats()[0].3
}

/// Reads whatever a socket has and reports it; its fd wakes the reactor.
struct SocketReader {
    socket: UnixStream,
    sender: mpsc::Sender<Vec<u8>>,
}

impl Poller for SocketReader {
    fn poll(&mut self) -> PollStatus {
        let mut buffer = [0u8; 64];
        match self.socket.read(&mut buffer) {
            Ok(n) if n > 0 => {
                let _ = self.sender.send(buffer[..n].to_vec());
                PollStatus::Busy
            }
            _ => PollStatus::Idle,
        }
    }

    fn wake_fds(&self) -> Vec<i32> {
        vec![self.socket.as_raw_fd()]
    }
}

#[test]
fn a_parked_reactor_serves_the_next_message_and_socket() {
    let runtime = Runtime::start(options(true)).unwrap();
    let handle = runtime.handle();
    wait_until("the reactor to park", || parks(&runtime) > 0);

    let (sender, receiver) = mpsc::channel();
    handle.send(0, move |ctx| sender.send(ctx.core()).unwrap()).unwrap();
    assert_eq!(receiver.recv_timeout(BOUND).unwrap(), 0, "a message wakes a parked reactor");

    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    let (sender, receiver) = mpsc::channel();
    let reader = SocketReader { socket: theirs, sender };
    bdev_thin::runtime::call_on(&handle, 0, move |ctx| ctx.add_poller(Box::new(reader))).unwrap();
    wait_until("the reactor to park again", || handle.is_parked(0));
    (&ours).write_all(b"ping").unwrap();
    assert_eq!(receiver.recv_timeout(BOUND).unwrap(), b"ping", "socket readiness wakes it");
    runtime.stop();
}

/// Issues one flush per trigger and reports its status. It reports itself idle while the flush
/// is in flight, so the reactor parks, and it counts the parks that happened with the flush
/// still in flight (the case under test). A flush is an fsync, which io_uring runs in a kernel
/// worker thread: its completion reaches a sleeping reactor only through the ring's eventfd.
struct Flusher {
    channel: UringChannel,
    triggers: mpsc::Receiver<()>,
    done: mpsc::Sender<IoStatus>,
    parked_in_flight: Arc<AtomicU64>,
}

impl Poller for Flusher {
    fn poll(&mut self) -> PollStatus {
        if self.triggers.try_recv().is_ok() {
            let flush = IoRequest::new(IoKind::Flush, 0, 0, 1);
            assert!(self.channel.submit(flush).is_ok(), "an empty channel takes one IO");
        }
        let done = &self.done;
        self.channel.poll(&mut |completion| {
            let _ = done.send(completion.status);
        });
        PollStatus::Idle
    }

    fn prepare_park(&mut self) -> bool {
        let in_flight = self.channel.in_flight() > 0;
        let may_park = self.channel.prepare_park();
        if may_park && in_flight {
            self.parked_in_flight.fetch_add(1, Ordering::SeqCst);
        }
        may_park
    }
}

#[test]
fn a_parked_reactor_serves_the_next_io() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("park_io_{}.img", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(4 << 20).unwrap();
    let device = Arc::new(UringDevice::open(&path, None).unwrap());
    // Park as soon as a turn finds nothing to do, so the reactor sleeps while the flush runs.
    let runtime =
        Runtime::start(RuntimeOptions { idle_before_park_us: 0, ..options(true) }).unwrap();
    let handle = runtime.handle();
    let (trigger, triggers) = mpsc::channel();
    let (done, statuses) = mpsc::channel();
    let parked_in_flight = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&parked_in_flight);
    handle
        .send(0, move |ctx| {
            // The channel registers its eventfd with the reactor that opens it.
            let channel = device.open_channel().unwrap();
            let flusher = Flusher { channel, triggers, done, parked_in_flight: counter };
            ctx.add_local_poller(Box::new(flusher));
        })
        .unwrap();
    // Each round: dirty 4 MiB of page cache through another descriptor so the fsync has work,
    // trigger a flush (the empty event wakes the reactor), then the completion alone must wake
    // the parked reactor. Rounds go on until one parked mid-flush (the first almost always
    // does: writing 4 MiB back takes far longer than reaching the park).
    let dirty = vec![0x3cu8; 4 << 20];
    let mut rounds = 0;
    while parked_in_flight.load(Ordering::SeqCst) == 0 && rounds < 100 {
        std::os::unix::fs::FileExt::write_all_at(&file, &dirty, 0).unwrap();
        trigger.send(()).unwrap();
        handle.send(0, |_| {}).unwrap();
        let status = statuses.recv_timeout(BOUND).expect("the completion wakes the reactor");
        assert_eq!(status, IoStatus::Success);
        rounds += 1;
    }
    assert!(parked_in_flight.load(Ordering::SeqCst) > 0, "never parked with IO in flight");
    runtime.stop();
    let _ = std::fs::remove_file(&path);
}

struct Ticker(Arc<AtomicU64>);

impl Poller for Ticker {
    fn poll(&mut self) -> PollStatus {
        self.0.fetch_add(1, Ordering::SeqCst);
        PollStatus::Busy
    }
}

#[test]
fn timed_pollers_run_while_parked() {
    let runtime = Runtime::start(options(true)).unwrap();
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = Ticker(Arc::clone(&ticks));
    runtime.handle().send(0, move |ctx| ctx.add_timed_poller(2000, Box::new(ticker))).unwrap();
    wait_until("five ticks", || ticks.load(Ordering::SeqCst) >= 5);
    wait_until("a park between ticks", || parks(&runtime) > 0);
    runtime.stop();
}

/// A poller with work in flight for a while: stopping waits until it drains.
struct Drainer {
    remaining: u32,
    stopping: bool,
    drained: Arc<AtomicU64>,
}

impl Poller for Drainer {
    fn poll(&mut self) -> PollStatus {
        if self.stopping && self.remaining > 0 {
            self.remaining -= 1;
            if self.remaining == 0 {
                self.drained.store(1, Ordering::SeqCst);
            }
        }
        PollStatus::Busy
    }
    fn begin_stop(&mut self) {
        self.stopping = true;
    }
    fn is_drained(&self) -> bool {
        self.remaining == 0
    }
}

#[test]
fn stop_waits_for_in_flight_work() {
    let runtime = Runtime::start(options(false)).unwrap();
    let drained = Arc::new(AtomicU64::new(0));
    let drainer = Drainer { remaining: 1000, stopping: false, drained: Arc::clone(&drained) };
    bdev_thin::runtime::call_on(&runtime.handle(), 0, move |ctx| ctx.add_poller(Box::new(drainer)))
        .unwrap();
    runtime.stop();
    assert_eq!(drained.load(Ordering::SeqCst), 1, "stop returned before the poller drained");
}

#[test]
fn core_masks_parse_as_spdk_writes_them() {
    assert_eq!(CoreMask::parse("0x3"), Ok(CoreMask(3)));
    assert_eq!(CoreMask::parse("3"), Ok(CoreMask(3)));
    assert_eq!(CoreMask::parse("[0,2-3]"), Ok(CoreMask(0b1101)));
    assert!(CoreMask::parse("0x0").is_err());
    assert!(CoreMask::parse("zz").is_err());
    assert!(CoreMask::parse("[70]").is_err());
}

#[test]
fn a_mask_naming_a_missing_core_is_refused() {
    let error =
        Runtime::start(RuntimeOptions { mask: CoreMask(1 << 63), ..RuntimeOptions::default() })
            .err()
            .expect("core 63 does not exist here");
    assert!(error.to_string().contains("core 63"), "{error}");
}

/// Drains a message ring on its reactor and reports what it pops.
struct RingReader {
    ring: Arc<MessageRing<u64, ReactorWaker>>,
    sender: mpsc::Sender<u64>,
}

impl Poller for RingReader {
    fn poll(&mut self) -> PollStatus {
        let mut busy = false;
        while let Some(message) = self.ring.pop() {
            let _ = self.sender.send(message);
            busy = true;
        }
        PollStatus::busy_if(busy)
    }

    fn prepare_park(&mut self) -> bool {
        self.ring.is_empty()
    }
}

/// The cross-core path: a push into a bounded ring from another thread wakes the parked
/// reactor that drains it; a full ring hands the message back instead of blocking or growing.
#[test]
fn a_ring_push_wakes_its_parked_reactor_and_a_full_ring_pushes_back() {
    let runtime = Runtime::start(options(true)).unwrap();
    let handle = runtime.handle();
    let ring = Arc::new(MessageRing::new(2, handle.waker(0)));
    let (sender, received) = mpsc::channel();
    let reader = RingReader { ring: Arc::clone(&ring), sender };
    bdev_thin::runtime::call_on(&handle, 0, move |ctx| ctx.add_poller(Box::new(reader))).unwrap();
    for message in 1..=3u64 {
        wait_until("the reactor to park", || handle.is_parked(0));
        ring.push(message).unwrap();
        assert_eq!(received.recv_timeout(BOUND).unwrap(), message, "the push woke it");
    }
    runtime.stop();

    let full = MessageRing::new(2, NoopWaker);
    full.push(1u64).unwrap();
    full.push(2).unwrap();
    assert_eq!(full.push(3), Err(3), "back-pressure hands the message back");
    assert_eq!((full.pop(), full.pop(), full.pop()), (Some(1), Some(2), None));
}
