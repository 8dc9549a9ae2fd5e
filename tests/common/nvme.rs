//! What the initiator's in-process tests share: our NVMe-oF/TCP target on reactors of the test
//! process (malloc or null namespaces, a free port of 127.0.0.1), an initiator side with its
//! own reactors, RPC calls that must succeed, and a batch of block IOs run on a reactor and
//! waited for (bounded).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use bdev_thin::bdev::{Bdev, BdevChannel};
use bdev_thin::host::{
    DeviceChannel, IoBuffer, IoKind, IoRequest, IoStatus, PollStatus, Poller, SgList,
};
use bdev_thin::rpc::{RpcError, call_blocking};
use bdev_thin::runtime::{CoreMask, Runtime, RuntimeHandle, RuntimeOptions};
use bdev_thin::target::Target;
use serde_json::{Value, json};

pub const NQN: &str = "nqn.2016-06.io.spdk:initiator";

/// Reactors on core 0, not pinned (tests share the machine).
pub fn runtime() -> Runtime {
    let options = RuntimeOptions { mask: CoreMask(0x1), pin: false, ..Default::default() };
    Runtime::start(options).expect("reactors start")
}

pub fn try_call(target: &Arc<Target>, method: &str, params: Value) -> Result<Value, RpcError> {
    call_blocking(target, method, Some(params))
}

pub fn call(target: &Arc<Target>, method: &str, params: Value) -> Value {
    try_call(target, method, params).unwrap_or_else(|e| panic!("{method}: {e}"))
}

/// A target (and its reactors) that lives as long as the value.
pub struct Side {
    pub runtime: Runtime,
    pub target: Arc<Target>,
}

impl Side {
    pub fn new() -> Side {
        let runtime = runtime();
        let target = Target::new(runtime.handle());
        Side { runtime, target }
    }

    pub fn handle(&self) -> RuntimeHandle {
        self.runtime.handle()
    }

    pub fn call(&self, method: &str, params: Value) -> Value {
        call(&self.target, method, params)
    }

    pub fn bdev(&self, name: &str) -> Arc<Bdev> {
        self.target.bdevs.get(name).unwrap_or_else(|e| panic!("{name}: {e}"))
    }
}

/// Our target exporting each bdev made by `create` (method, params) as a namespace of `NQN`.
pub fn remote_target(create: &[(&str, Value)]) -> (Side, SocketAddr) {
    let side = Side::new();
    side.call("nvmf_create_transport", json!({"trtype": "TCP"}));
    side.call("nvmf_create_subsystem", json!({"nqn": NQN, "allow_any_host": true}));
    for (method, params) in create {
        let name = side.call(method, params.clone());
        let ns = json!({"nqn": NQN, "namespace": {"bdev_name": name}});
        side.call("nvmf_subsystem_add_ns", ns);
    }
    let listen = json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "0"});
    side.call("nvmf_subsystem_add_listener", json!({"nqn": NQN, "listen_address": listen}));
    let bound = bdev_thin::export::nvmf_tcp::ListenAddress {
        adrfam: "IPv4".into(),
        traddr: "127.0.0.1".into(),
        trsvcid: "0".into(),
    };
    let address = side.target.nvmf.bound_address(&bound).expect("bound");
    (side, address)
}

/// `bdev_nvme_attach_controller` parameters for `Nvme0` at `address`, plus `extra`.
pub fn attach_params(address: SocketAddr, nqn: &str, extra: Value) -> Value {
    let mut params = json!({"name": "Nvme0", "trtype": "tcp", "adrfam": "IPv4",
        "traddr": "127.0.0.1", "trsvcid": address.port().to_string(), "subnqn": nqn});
    if let Value::Object(extra) = extra {
        for (key, value) in extra {
            params[key] = value;
        }
    }
    params
}

/// Runs `requests` on `bdev` from a channel on core 0, all submitted at once, and returns them
/// with their statuses in tag order.
pub fn run(
    handle: &RuntimeHandle,
    bdev: &Arc<Bdev>,
    requests: Vec<IoRequest>,
) -> Vec<(IoRequest, IoStatus)> {
    struct Batch {
        channel: BdevChannel,
        pending: VecDeque<IoRequest>,
        done: Vec<(IoRequest, IoStatus)>,
        expected: usize,
        answer: SyncSender<Vec<(IoRequest, IoStatus)>>,
        finished: bool,
    }
    impl Poller for Batch {
        fn poll(&mut self) -> PollStatus {
            while let Some(request) = self.pending.pop_front() {
                if let Err(request) = self.channel.submit(request) {
                    self.pending.push_front(request);
                    break;
                }
            }
            let done = &mut self.done;
            self.channel.poll(&mut |c| done.push((c.request, c.status)));
            if self.done.len() == self.expected && !self.finished {
                self.finished = true;
                let mut done = std::mem::take(&mut self.done);
                done.sort_by_key(|(r, _)| r.tag);
                let _ = self.answer.send(done);
            }
            PollStatus::Busy
        }
        fn is_finished(&self) -> bool {
            self.finished
        }
    }
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    let bdev = Arc::clone(bdev);
    let expected = requests.len();
    handle
        .send(0, move |ctx| {
            let channel = bdev.open_channel().expect("a channel");
            ctx.add_local_poller(Box::new(Batch {
                channel,
                pending: requests.into(),
                done: Vec::new(),
                expected,
                answer: sender,
                finished: false,
            }))
        })
        .unwrap();
    receiver.recv_timeout(Duration::from_secs(90)).expect("the IOs complete")
}

/// A request on `blocks` blocks of `block_bytes` from `first`, with a buffer filled with
/// `fill` when given.
pub fn request(
    kind: IoKind,
    first: u64,
    blocks: u64,
    block_bytes: u64,
    fill: Option<u8>,
    tag: u64,
) -> IoRequest {
    let request = IoRequest::new(kind, first, blocks, tag);
    match fill {
        Some(byte) => {
            let mut buffer = IoBuffer::new((blocks * block_bytes) as usize);
            buffer.as_mut_slice().fill(byte);
            request.with_buffers(SgList::single(buffer))
        }
        None => request,
    }
}

/// Waits (bounded by `bound`) for `condition`, checking every few milliseconds.
pub fn wait_for(what: &str, bound: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < bound, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
