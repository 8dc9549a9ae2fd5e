//! A small NVMe/TCP proxy for the initiator's tests, in front of a target on 127.0.0.1 (ours,
//! or a QEMU port forward to the Linux kernel's): it relays PDUs whole, one thread per
//! direction per connection, and can
//!
//! - hold Dataset Management deallocates: a DSM capsule is kept back until a Write to one of
//!   its ranges has been acknowledged by the target (then it goes, late: the seed's race made
//!   certain), or until `hold_timeout` passed (then it goes as if merely slow);
//! - cut every connection, and refuse new ones for as long as the test says (a target that
//!   went away, or a network that did);
//! - answer every IO queue's Fabrics Connect itself with Command Sequence Error (the QID still
//!   held by a previous connection, as Linux's target says it), without forwarding it.
//!
//! Test code: blocking sockets and threads, every wait bounded, all threads end when the proxy
//! is dropped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bdev_thin::nvme::command::{Command, Completion, SQE_BYTES};

/// A deallocate capsule kept back, and where it goes when released.
struct Held {
    bytes: Vec<u8>,
    /// (nsid, first LBA, LBAs).
    ranges: Vec<(u32, u64, u64)>,
    upstream: Arc<Mutex<TcpStream>>,
    since: Instant,
}

/// The Writes in flight on one connection by command id: (nsid, first LBA, LBAs).
type WritesInFlight = Arc<Mutex<HashMap<u16, (u32, u64, u64)>>>;

#[derive(Default)]
pub struct ProxyCounters {
    pub connections: AtomicU64,
    pub refused: AtomicU64,
    pub pdus: AtomicU64,
    pub deallocates_held: AtomicU64,
    /// Released because a Write to their range was acknowledged first.
    pub released_after_write: AtomicU64,
    pub released_by_timeout: AtomicU64,
    /// IO queue Fabrics Connects answered Command Sequence Error.
    pub io_connects_refused: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    hold_deallocates: AtomicBool,
    hold_timeout: Duration,
    refusing: AtomicBool,
    refuse_io_connects: AtomicBool,
    stop: AtomicBool,
    held: Mutex<Vec<Held>>,
    /// Both sockets of every live connection, to cut them.
    sockets: Mutex<Vec<TcpStream>>,
    counters: ProxyCounters,
}

pub struct NvmeProxy {
    pub address: SocketAddr,
    shared: Arc<Shared>,
}

/// Reads one PDU (common header, then the rest PLEN says); `None` at EOF or on error.
fn read_pdu(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).ok()?;
    let plen = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if !(8..=64 << 20).contains(&plen) {
        return None;
    }
    let mut pdu = vec![0u8; plen];
    pdu[..8].copy_from_slice(&header);
    stream.read_exact(&mut pdu[8..]).ok()?;
    Some(pdu)
}

fn send(to: &Mutex<TcpStream>, bytes: &[u8]) -> bool {
    to.lock().unwrap_or_else(|p| p.into_inner()).write_all(bytes).is_ok()
}

/// The command of a CapsuleCmd PDU.
fn capsule_command(pdu: &[u8]) -> Option<Command> {
    if pdu.first() != Some(&0x04) || pdu.len() < 8 + SQE_BYTES {
        return None;
    }
    let sqe: &[u8; SQE_BYTES] = pdu[8..8 + SQE_BYTES].try_into().ok()?;
    Some(Command::decode(sqe))
}

/// Whether `command` is a Fabrics Connect of an IO queue (QID not 0).
fn is_io_connect(command: &Command) -> bool {
    let fctype = command.nsid as u8;
    command.opcode == 0x7F && fctype == 0x01 && command.cdw10 >> 16 != 0
}

/// A CapsuleResp PDU (no digests) answering `cid` with Command Sequence Error (SCT 0, SC 0Ch).
fn sequence_error(cid: u16) -> Vec<u8> {
    let mut pdu = vec![0u8; 24];
    pdu[0] = 0x05;
    pdu[2] = 24;
    pdu[4] = 24;
    pdu[8 + 12..8 + 14].copy_from_slice(&cid.to_le_bytes());
    pdu[8 + 14..8 + 16].copy_from_slice(&(0x0Cu16 << 1).to_le_bytes());
    pdu
}

/// The ranges of a Dataset Management deallocate capsule whose ranges came in it.
fn deallocate_ranges(pdu: &[u8], command: &Command) -> Option<Vec<(u32, u64, u64)>> {
    if command.opcode != 0x09 || !command.dsm_deallocate() {
        return None;
    }
    let pdo = usize::from(pdu[3]);
    let count = command.dsm_range_count();
    let data = pdu.get(pdo..pdo + 16 * count)?;
    Some(
        data.chunks_exact(16)
            .map(|range| {
                let length = u32::from_le_bytes(range[4..8].try_into().unwrap_or_default());
                let slba = u64::from_le_bytes(range[8..16].try_into().unwrap_or_default());
                (command.nsid, slba, u64::from(length))
            })
            .collect(),
    )
}

impl NvmeProxy {
    /// A proxy on a free port of 127.0.0.1 relaying to `upstream`.
    pub fn start(upstream: SocketAddr, hold_timeout: Duration) -> NvmeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("the proxy binds");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let address = listener.local_addr().expect("bound");
        let shared = Arc::new(Shared {
            upstream,
            hold_deallocates: AtomicBool::new(false),
            hold_timeout,
            refusing: AtomicBool::new(false),
            refuse_io_connects: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
            sockets: Mutex::new(Vec::new()),
            counters: ProxyCounters::default(),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(listener, accepting));
        let releasing = Arc::clone(&shared);
        std::thread::spawn(move || release_loop(releasing));
        NvmeProxy { address, shared }
    }

    pub fn counters(&self) -> &ProxyCounters {
        &self.shared.counters
    }

    pub fn hold_deallocates(&self, hold: bool) {
        self.shared.hold_deallocates.store(hold, Ordering::SeqCst);
    }

    /// Closes every connection now; with `refuse`, new ones are closed as soon as accepted
    /// until [`NvmeProxy::allow`].
    pub fn cut(&self, refuse: bool) {
        self.shared.refusing.store(refuse, Ordering::SeqCst);
        for socket in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        self.shared.held.lock().unwrap().clear();
    }

    pub fn refuse_io_connects(&self, refuse: bool) {
        self.shared.refuse_io_connects.store(refuse, Ordering::SeqCst);
    }

    pub fn allow(&self) {
        self.shared.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for NvmeProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut(true);
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
        };
        if shared.refusing.load(Ordering::SeqCst) {
            shared.counters.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(upstream) = TcpStream::connect(shared.upstream) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        shared.counters.connections.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        {
            let mut sockets = shared.sockets.lock().unwrap();
            sockets.extend(client.try_clone());
            sockets.extend(upstream.try_clone());
        }
        let (Ok(client_reader), Ok(upstream_reader)) = (client.try_clone(), upstream.try_clone())
        else {
            continue;
        };
        let to_client = Arc::new(Mutex::new(client));
        let to_upstream = Arc::new(Mutex::new(upstream));
        let writes: WritesInFlight = Arc::default();
        let (h2c_shared, h2c_writes, h2c_upstream, h2c_client) = (
            Arc::clone(&shared),
            Arc::clone(&writes),
            Arc::clone(&to_upstream),
            Arc::clone(&to_client),
        );
        std::thread::spawn(move || {
            host_to_controller(client_reader, h2c_upstream, h2c_writes, h2c_shared, h2c_client)
        });
        let c2h_shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            controller_to_host(upstream_reader, to_client, writes, c2h_shared)
        });
    }
}

fn host_to_controller(
    mut client: TcpStream,
    upstream: Arc<Mutex<TcpStream>>,
    writes: WritesInFlight,
    shared: Arc<Shared>,
    to_client: Arc<Mutex<TcpStream>>,
) {
    while let Some(pdu) = read_pdu(&mut client) {
        shared.counters.pdus.fetch_add(1, Ordering::SeqCst);
        if let Some(command) = capsule_command(&pdu) {
            if shared.refuse_io_connects.load(Ordering::SeqCst) && is_io_connect(&command) {
                shared.counters.io_connects_refused.fetch_add(1, Ordering::SeqCst);
                send(&to_client, &sequence_error(command.cid));
                continue;
            }
            if command.opcode == 0x01 {
                let range = (command.nsid, command.slba(), command.block_count());
                writes.lock().unwrap().insert(command.cid, range);
            }
            if shared.hold_deallocates.load(Ordering::SeqCst)
                && let Some(ranges) = deallocate_ranges(&pdu, &command)
            {
                shared.counters.deallocates_held.fetch_add(1, Ordering::SeqCst);
                shared.held.lock().unwrap().push(Held {
                    bytes: pdu,
                    ranges,
                    upstream: Arc::clone(&upstream),
                    since: Instant::now(),
                });
                continue;
            }
        }
        if !send(&upstream, &pdu) {
            break;
        }
    }
    if let Ok(stream) = upstream.lock() {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

fn controller_to_host(
    mut upstream: TcpStream,
    client: Arc<Mutex<TcpStream>>,
    writes: WritesInFlight,
    shared: Arc<Shared>,
) {
    while let Some(pdu) = read_pdu(&mut upstream) {
        shared.counters.pdus.fetch_add(1, Ordering::SeqCst);
        // A Write acknowledged: release the deallocates it overlaps, after it.
        if pdu[0] == 0x05 && pdu.len() >= 24 {
            let cqe: [u8; 16] = pdu[8..24].try_into().unwrap_or_default();
            let completion = Completion::decode(&cqe);
            let written = writes.lock().unwrap().remove(&completion.cid);
            if let Some((nsid, slba, blocks)) = written
                && completion.status.is_success()
            {
                let mut held = shared.held.lock().unwrap();
                let overlaps = |h: &Held| {
                    h.ranges.iter().any(|&(n, start, length)| {
                        n == nsid && start < slba + blocks && slba < start + length
                    })
                };
                let (release, keep): (Vec<Held>, Vec<Held>) =
                    std::mem::take(&mut *held).into_iter().partition(overlaps);
                *held = keep;
                drop(held);
                if !send(&client, &pdu) {
                    break;
                }
                for h in release {
                    shared.counters.released_after_write.fetch_add(1, Ordering::SeqCst);
                    send(&h.upstream, &h.bytes);
                }
                continue;
            }
        }
        if !send(&client, &pdu) {
            break;
        }
    }
    if let Ok(stream) = client.lock() {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

fn release_loop(shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
        let due: Vec<Held> = {
            let mut held = shared.held.lock().unwrap();
            let (due, keep) = std::mem::take(&mut *held)
                .into_iter()
                .partition(|h| h.since.elapsed() >= shared.hold_timeout);
            *held = keep;
            due
        };
        for h in due {
            shared.counters.released_by_timeout.fetch_add(1, Ordering::SeqCst);
            send(&h.upstream, &h.bytes);
        }
    }
}
