//! The RPC server in-process on a two-reactor runtime, for what the daemon's own methods cannot
//! show yet: replies that come from another core or from a plain thread reach the connection
//! through the reply ring, wake a parked reactor, and go out in completion order; and IO on
//! another core keeps flowing, without a failure, while the server is fed bad input.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bdev_thin::backend::{BaseDevice, MallocDevice};
use bdev_thin::bdev::{Bdev, BdevChannel, Device};
use bdev_thin::host::{DeviceChannel, IoBuffer, IoKind, IoRequest, PollStatus, Poller, SgList};
use bdev_thin::rpc::server::listen_with;
use bdev_thin::rpc::{self, Reply};
use bdev_thin::runtime::{CoreMask, Runtime, RuntimeOptions};
use bdev_thin::target::Target;
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(30);

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn socket_path(tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("thin_rpcsrv_{tag}_{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn two_cores() -> Runtime {
    Runtime::start(RuntimeOptions {
        mask: CoreMask(0b11),
        park: true,
        pin: false,
        idle_before_park_us: 200,
        ..Default::default()
    })
    .unwrap()
}

/// Replies parked here by `held`, answered later by the test thread.
static HELD: Mutex<Vec<Reply>> = Mutex::new(Vec::new());

/// `on_core_1` answers from reactor 1, `held` from whoever releases it, the rest as the daemon.
fn dispatch(target: &Arc<Target>, method: &str, params: Option<Value>, reply: Reply) {
    match method {
        "on_core_1" => {
            let sent = target.runtime.send(1, move |ctx| {
                reply(Ok(json!({"core": ctx.core(), "params": params})));
            });
            assert!(sent.is_ok());
        }
        "held" => HELD.lock().unwrap().push(reply),
        // A handler that loses its reply (a bug the server must survive), on another core.
        "dropped" => {
            let sent = target.runtime.send(1, move |_| drop(reply));
            assert!(sent.is_ok());
        }
        _ => rpc::call(target, method, params, reply),
    }
}

struct Client(BufReader<UnixStream>);

impl Client {
    fn connect(path: &PathBuf) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(BOUND)).unwrap();
        Client(BufReader::new(stream))
    }
    fn send(&mut self, text: &str) {
        self.0.get_mut().write_all(text.as_bytes()).unwrap();
    }
    fn reply(&mut self) -> Value {
        let mut line = String::new();
        assert!(self.0.read_line(&mut line).unwrap() > 0, "connection closed");
        serde_json::from_str(&line).unwrap()
    }
}

#[test]
fn replies_from_other_cores_and_threads_arrive_in_completion_order() {
    let runtime = two_cores();
    let target = Target::new(runtime.handle());
    let path = socket_path("cores");
    listen_with(&target, &path, dispatch).unwrap();
    let mut client = Client::connect(&path);

    // Pipelined requests answered on core 1: every one comes back, with its id.
    let mut batch = String::new();
    for id in 0..300 {
        batch.push_str(&format!(r#"{{"method":"on_core_1","id":{id},"params":{{"n":{id}}}}}"#));
    }
    client.send(&batch);
    let mut ids: Vec<u64> = (0..300)
        .map(|_| {
            let reply = client.reply();
            assert_eq!(reply["result"]["core"], 1);
            assert_eq!(reply["result"]["params"]["n"], reply["id"]);
            reply["id"].as_u64().unwrap()
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..300).collect::<Vec<_>>());

    // A held request does not block the one after it: replies go out as they complete.
    client.send(r#"{"method":"held","id":"slow"} {"method":"spdk_get_version","id":"fast"}"#);
    assert_eq!(client.reply()["id"], "fast");
    wait_until("the held request", || !HELD.lock().unwrap().is_empty());
    // Let the RPC reactor park, then answer from this (non-reactor) thread: the ring wakes it.
    let parks = |runtime: &Runtime| runtime.handle().stats()[0].3;
    let before = parks(&runtime);
    wait_until("reactor 0 to park", || parks(&runtime) > before + 1);
    let reply = HELD.lock().unwrap().pop().unwrap();
    reply(Err(rpc::RpcError::errno(libc::EBUSY, "held")));
    let slow = client.reply();
    assert_eq!(slow["id"], "slow");
    assert_eq!(slow["error"]["code"], -16);
    runtime.stop();
    assert!(!path.exists(), "the socket is removed at stop");
}

#[test]
fn a_reply_dropped_unanswered_still_answers_alone_and_in_a_batch() {
    let runtime = two_cores();
    let target = Target::new(runtime.handle());
    let path = socket_path("dropped");
    listen_with(&target, &path, dispatch).unwrap();
    let mut client = Client::connect(&path);
    client.send(r#"{"method":"dropped","id":1}"#);
    let reply = client.reply();
    assert_eq!((reply["id"].clone(), reply["error"]["code"].clone()), (json!(1), json!(-32603)));
    client.send(r#"[{"method":"dropped","id":2},{"method":"spdk_get_version","id":3}]"#);
    let batch = client.reply();
    let codes: Vec<Value> = batch.as_array().unwrap().iter().map(|r| r["id"].clone()).collect();
    assert_eq!(codes.len(), 2, "{batch}");
    assert!(batch.as_array().unwrap().iter().any(|r| r["error"]["code"] == -32603), "{batch}");
    // The connection is served on, and the server drains at stop (nothing counted in flight).
    client.send(r#"{"method":"spdk_get_version","id":4}"#);
    assert_eq!(client.reply()["id"], 4);
    runtime.stop();
}

/// Keeps `depth` one-block reads in flight on a bdev channel of its core and counts them.
struct Reader {
    channel: BdevChannel,
    block_size: usize,
    blocks: u64,
    next_block: u64,
    depth: usize,
    stopping: bool,
    completed: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Poller for Reader {
    fn poll(&mut self) -> PollStatus {
        let (completed, failed) = (&self.completed, &self.failed);
        let done = self.channel.poll(&mut |completion| {
            completed.fetch_add(1, Ordering::Relaxed);
            if !completion.status.is_success() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut submitted = 0;
        while !self.stopping && self.channel.in_flight() < self.depth {
            let buffers = SgList::single(IoBuffer::new(self.block_size));
            let request = IoRequest::new(IoKind::Read, self.next_block, 1, 0).with_buffers(buffers);
            if self.channel.submit(request).is_err() {
                break;
            }
            self.next_block = (self.next_block + 1) % self.blocks;
            submitted += 1;
        }
        PollStatus::busy_if(done + submitted > 0)
    }
    fn begin_stop(&mut self) {
        self.stopping = true;
    }
    fn is_drained(&self) -> bool {
        self.channel.in_flight() == 0
    }
}

#[test]
fn io_on_another_core_keeps_flowing_through_bad_input() {
    let runtime = two_cores();
    let target = Target::new(runtime.handle());
    let device = MallocDevice::new(4096, 256).unwrap();
    let bdev = Bdev::new(
        "Malloc0".into(),
        uuid::Uuid::new_v4(),
        Device::Base(BaseDevice::Malloc(Arc::new(device))),
    );
    target.bdevs.register(Arc::clone(&bdev)).unwrap();
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (c, f) = (Arc::clone(&completed), Arc::clone(&failed));
    runtime
        .handle()
        .send(1, move |ctx| {
            let channel = bdev.open_channel().unwrap();
            ctx.add_local_poller(Box::new(Reader {
                channel,
                block_size: 4096,
                blocks: 256,
                next_block: 0,
                depth: 4,
                stopping: false,
                completed: c,
                failed: f,
            }));
        })
        .unwrap();
    let path = socket_path("io");
    listen_with(&target, &path, dispatch).unwrap();
    wait_until("IO to start", || completed.load(Ordering::Relaxed) > 100);

    let bad_inputs: [&[u8]; 4] = [
        b"\x00\xffgarbage",
        br#"{"method":"bdev_get_bdevs","id":1,"params":{"name":"#,
        &[b'['; 50_000],
        br#"{"method":"bdev_malloc_create","id":2,"params":{"num_blocks":"x"}}"#,
    ];
    let writer_done = Arc::new(AtomicBool::new(false));
    for input in bad_inputs {
        let mut stream = UnixStream::connect(&path).unwrap();
        let _ = stream.write_all(input);
        drop(stream);
    }
    // A 64 MiB request from a thread, while a hundred clients ask for the bdev list.
    let huge_path = path.clone();
    let done = Arc::clone(&writer_done);
    let huge = std::thread::spawn(move || {
        let mut stream = UnixStream::connect(&huge_path).unwrap();
        let mut request = br#"{"method":"x","id":1,"params":{"a":""#.to_vec();
        request.resize(64 << 20, b'a');
        let _ = stream.write_all(&request);
        done.store(true, Ordering::SeqCst);
    });
    let mut clients: Vec<Client> = (0..100).map(|_| Client::connect(&path)).collect();
    for client in &mut clients {
        client.send(r#"{"method":"bdev_get_bdevs","id":7}"#);
    }
    for client in &mut clients {
        assert_eq!(client.reply()["result"][0]["name"], "Malloc0");
    }
    huge.join().unwrap();
    assert!(writer_done.load(Ordering::SeqCst));
    let after_bad_input = completed.load(Ordering::Relaxed);
    wait_until("IO to go on", || completed.load(Ordering::Relaxed) > after_bad_input + 100);
    runtime.stop();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no IO failed");
}
