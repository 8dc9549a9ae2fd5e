//! The NBD export: an NBD server over TCP (fixed newstyle negotiation, simple replies) that
//! serves any bdev — malloc, uring, a thin volume — to fio, qemu-img, qemu-io, nbdinfo, nbdcopy.
//!
//! Who runs what. [`NbdServer`] lives in the `Target`: RPC methods start and stop it and add and
//! remove exports (control plane, behind mutexes). `nbd_server_start` binds a non-blocking
//! listener and hands it to the first core's reactor as a poller; the listener accepts and hands
//! each connection, round-robin, to a core's reactor, where it becomes a poller that negotiates,
//! then opens a bdev channel on that core and submits every request of the connection to it.
//! No thread per connection; sockets are the reactors' wake sources (`Poller::wake_fds`).
//!
//! Bounds (limits.rs): a connection keeps at most `NBD_REQUESTS_PER_CONNECTION_MAX` requests in
//! flight, each in a slot sized at negotiation, with its data in a piece of the connection's one
//! arena (`NBD_CONNECTION_BUFFER_BYTES`, first fit, split and joined back without allocating).
//! Requests are split into device IOs of at most `IO_BYTES_MAX`. When slots or arena run out, the
//! connection stops reading its socket: back-pressure reaches the client through TCP.
//!
//! Input from the network never panics: unknown options get `NBD_REP_ERR_UNSUP`, unknown
//! commands, misaligned or out-of-range requests and oversized lengths get an NBD error reply
//! (a write's payload is read and dropped first), a bad magic closes the connection, and a client
//! that vanishes mid-request only ends its own connection once its device IO has drained.
//! Exports hold their bdev open (`Bdev::open`), so it cannot be deleted underneath them.

use std::collections::VecDeque;
use std::io::{IoSlice, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arrayvec::ArrayVec;
use serde_json::{Value, json};

use crate::admission::{Admission, ConnectionTimeouts, Ticket};
use crate::bdev::{Bdev, BdevChannel, BdevDescriptor, BdevError};
use crate::host::{
    CoreId, DeviceChannel, Host, IoBuffer, IoCompletion, IoFlags, IoKind, IoRequest, IoStatus,
    PollStatus, Poller, SgList,
};
use crate::limits;
use crate::runtime::{self, ReactorWaker, RuntimeHandle};

/// Wire constants of the NBD protocol (NetworkBlockDevice/nbd, doc/proto.md). Big-endian.
mod wire {
    pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
    pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
    pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
    pub const REQUEST_MAGIC: u32 = 0x2560_9513;
    pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

    pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
    pub const FLAG_NO_ZEROES: u16 = 1 << 1;
    pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
    pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

    pub const OPT_EXPORT_NAME: u32 = 1;
    pub const OPT_ABORT: u32 = 2;
    pub const OPT_LIST: u32 = 3;
    pub const OPT_INFO: u32 = 6;
    pub const OPT_GO: u32 = 7;

    pub const REP_ACK: u32 = 1;
    pub const REP_SERVER: u32 = 2;
    pub const REP_INFO: u32 = 3;
    pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
    pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
    pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
    pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

    pub const INFO_EXPORT: u16 = 0;
    pub const INFO_NAME: u16 = 1;
    pub const INFO_BLOCK_SIZE: u16 = 3;

    pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
    pub const TFLAG_READ_ONLY: u16 = 1 << 1;
    pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
    pub const TFLAG_SEND_FUA: u16 = 1 << 3;
    pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
    pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;

    pub const CMD_READ: u16 = 0;
    pub const CMD_WRITE: u16 = 1;
    pub const CMD_DISC: u16 = 2;
    pub const CMD_FLUSH: u16 = 3;
    pub const CMD_TRIM: u16 = 4;
    pub const CMD_WRITE_ZEROES: u16 = 6;
    pub const CMD_FLAG_FUA: u16 = 1 << 0;
    pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

    // The errno values NBD replies carry (the spec's list; anything else is sent as EIO).
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;

    pub const REQUEST_HEADER_BYTES: usize = 28;
    pub const REPLY_HEADER_BYTES: usize = 16;
    pub const OPTION_HEADER_BYTES: usize = 16;
}

/// The NBD errno for an IO status (the NBD reply is this layer's errno edge).
fn reply_errno(status: IoStatus) -> u32 {
    match status.errno() {
        0 => 0,
        libc::EPERM | libc::EROFS => wire::EPERM,
        libc::ENOMEM => wire::ENOMEM,
        libc::EINVAL => wire::EINVAL,
        libc::ENOSPC => wire::ENOSPC,
        libc::EOVERFLOW => wire::EOVERFLOW,
        libc::ENOTSUP => wire::ENOTSUP,
        libc::ESHUTDOWN => wire::ESHUTDOWN,
        _ => wire::EIO,
    }
}

/// Errors of the NBD server's control plane (mapped to JSON-RPC errors in `rpc/methods/nbd.rs`).
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("the NBD server is already running on {0}")]
    AlreadyRunning(SocketAddr),
    #[error("the NBD server is not running")]
    NotRunning,
    #[error("listen_address: {0} is not an IP address")]
    Address(String),
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("NBD export {0} already exists")]
    ExportExists(String),
    #[error("NBD export {0} not found")]
    ExportNotFound(String),
    #[error("export_name: must be 1 to 4096 bytes")]
    ExportName,
    #[error("at most {} NBD exports", limits::NBD_EXPORTS_MAX)]
    TooManyExports,
    #[error("the runtime is stopping")]
    Stopping,
    #[error(transparent)]
    Bdev(#[from] BdevError),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Control-plane state is plain data; a panic elsewhere must not stop the server.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One export: a name clients ask for, and the bdev it holds open.
pub struct Export {
    name: String,
    descriptor: BdevDescriptor,
    read_only: bool,
    /// Set by `nbd_export_remove`: connections serving it finish their IO and close.
    removed: AtomicBool,
    connection_count: AtomicU32,
}

/// What `nbd_get_exports` reports of one export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub export_name: String,
    pub bdev_name: String,
    pub read_only: bool,
    pub connection_count: u32,
}

/// State shared by the server, its listener and its connections.
#[derive(Default)]
struct Shared {
    exports: Mutex<Vec<Arc<Export>>>,
}

impl Shared {
    /// The export a client names; "" names the first one (the default export).
    fn find(&self, name: &[u8]) -> Option<Arc<Export>> {
        let exports = lock(&self.exports);
        let mut live = exports.iter().filter(|e| !e.removed.load(Ordering::Relaxed));
        if name.is_empty() {
            return live.next().cloned();
        }
        live.find(|e| e.name.as_bytes() == name).cloned()
    }
}

type OnStopped = Box<dyn FnOnce() + Send>;

/// One run of the server, from `nbd_server_start` to `nbd_server_stop`.
struct RunState {
    listen_address: String,
    port: u16,
    local_address: SocketAddr,
    /// Read by the listener and every connection each poll (relaxed: a late look costs a poll).
    stop: AtomicBool,
    /// Called once the listener is closed (the reply to `nbd_server_stop`).
    on_stopped: Mutex<Option<OnStopped>>,
    /// The connection cap and the negotiation deadline of this run.
    admission: Arc<Admission<ReactorWaker>>,
}

impl RunState {
    fn stopped(&self) {
        if let Some(on_stopped) = lock(&self.on_stopped).take() {
            on_stopped();
        }
    }
}

/// The NBD server of a target: its exports and, while started, its listener.
#[derive(Default)]
pub struct NbdServer {
    shared: Arc<Shared>,
    running: Mutex<Option<Arc<RunState>>>,
}

impl NbdServer {
    /// Binds `listen_address:port` and starts accepting on the runtime's first core. Port 0
    /// picks a free port; the address bound is returned. A client that has not finished its
    /// negotiation within `timeouts.handshake_ms` is closed.
    pub fn start(
        &self,
        runtime: &RuntimeHandle,
        listen_address: &str,
        port: u16,
        timeouts: ConnectionTimeouts,
    ) -> Result<SocketAddr, NbdError> {
        let mut running = lock(&self.running);
        if let Some(run) = running.as_ref() {
            return Err(NbdError::AlreadyRunning(run.local_address));
        }
        let ip: IpAddr = if listen_address == "localhost" {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            listen_address.parse().map_err(|_| NbdError::Address(listen_address.to_string()))?
        };
        let address = SocketAddr::new(ip, port);
        let bind_error = |source| NbdError::Bind { address, source };
        let listener = TcpListener::bind(address).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let local_address = listener.local_addr().map_err(bind_error)?;
        let run = Arc::new(RunState {
            listen_address: listen_address.to_string(),
            port,
            local_address,
            stop: AtomicBool::new(false),
            on_stopped: Mutex::new(None),
            admission: Admission::new("nbd", limits::NBD_CONNECTIONS_MAX, timeouts),
        });
        let poller = ListenerPoller {
            listener: Some(listener),
            run: Arc::clone(&run),
            shared: Arc::clone(&self.shared),
            runtime: runtime.clone(),
            cores: runtime.cores(),
            next_core: 0,
            turn_count: 0,
        };
        runtime
            .add_poller(runtime.first_core(), Box::new(poller))
            .map_err(|_| NbdError::Stopping)?;
        *running = Some(run);
        Ok(local_address)
    }

    /// Stops accepting and closes every connection after its in-flight IO completes.
    /// `on_stopped` runs (on the listener's core) once the listening socket is closed, so the
    /// port can be bound again.
    pub fn stop(&self, runtime: &RuntimeHandle, on_stopped: OnStopped) -> Result<(), NbdError> {
        let Some(run) = lock(&self.running).take() else {
            return Err(NbdError::NotRunning);
        };
        *lock(&run.on_stopped) = Some(on_stopped);
        run.stop.store(true, Ordering::SeqCst);
        // Wake the listener's reactor (it may be parked); if the runtime is stopping, the
        // listener closes in its own time and the reply comes now.
        if runtime.send(runtime.first_core(), |_| {}).is_err() {
            run.stopped();
        }
        wake_all(runtime);
        Ok(())
    }

    /// The address the server listens on, while it runs.
    pub fn local_address(&self) -> Option<SocketAddr> {
        lock(&self.running).as_ref().map(|run| run.local_address)
    }

    /// Exports `bdev` as `name` (default: its first alias, else its name). Opens the bdev.
    pub fn add_export(
        &self,
        bdev: &Arc<Bdev>,
        name: Option<String>,
        read_only: bool,
    ) -> Result<String, NbdError> {
        let name = name.unwrap_or_else(|| {
            bdev.aliases().into_iter().next().unwrap_or_else(|| bdev.name().to_string())
        });
        if name.is_empty() || name.len() > 4096 {
            return Err(NbdError::ExportName);
        }
        let mut exports = lock(&self.shared.exports);
        if exports.iter().any(|e| e.name == name) {
            return Err(NbdError::ExportExists(name));
        }
        if exports.len() >= limits::NBD_EXPORTS_MAX {
            return Err(NbdError::TooManyExports);
        }
        let descriptor = bdev.open()?;
        exports.push(Arc::new(Export {
            name: name.clone(),
            descriptor,
            read_only,
            removed: AtomicBool::new(false),
            connection_count: AtomicU32::new(0),
        }));
        Ok(name)
    }

    /// Removes an export: new clients no longer see it; its connections finish their IO and
    /// close, and the bdev is closed when the last one has.
    pub fn remove_export(&self, name: &str) -> Result<(), NbdError> {
        let mut exports = lock(&self.shared.exports);
        let index = exports
            .iter()
            .position(|e| e.name == name)
            .ok_or_else(|| NbdError::ExportNotFound(name.to_string()))?;
        let export = exports.remove(index);
        export.removed.store(true, Ordering::SeqCst);
        Ok(())
    }

    pub fn exports(&self) -> Vec<ExportInfo> {
        lock(&self.shared.exports)
            .iter()
            .map(|e| ExportInfo {
                export_name: e.name.clone(),
                bdev_name: e.descriptor.bdev().name().to_string(),
                read_only: e.read_only,
                connection_count: e.connection_count.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The `nbd` subsystem's entries for `framework_get_config` / `save_config`: every export,
    /// then the server start (if running), as the method calls that recreate them. Exports come
    /// first so a restored daemon accepts clients only once their exports exist.
    pub fn config_entries(&self) -> Vec<Value> {
        let mut entries = Vec::new();
        for export in lock(&self.shared.exports).iter() {
            entries.push(json!({
                "method": "nbd_export_add",
                "params": {
                    "bdev_name": export.descriptor.bdev().name(),
                    "export_name": export.name,
                    "read_only": export.read_only
                }
            }));
        }
        if let Some(run) = lock(&self.running).as_ref() {
            let port = if run.port == 0 { run.local_address.port() } else { run.port };
            entries.push(json!({
                "method": "nbd_server_start",
                "params": {"listen_address": run.listen_address, "port": port}
            }));
        }
        entries
    }
}

/// Wakes every reactor so its connections notice a stop or a removed export now rather than
/// at their reactor's next timeout.
pub fn wake_all(runtime: &RuntimeHandle) {
    for core in runtime.cores() {
        let _ = runtime.send(core, |_| {});
    }
}

/// Accepts connections on the first core and deals them round-robin to every core.
struct ListenerPoller {
    listener: Option<TcpListener>,
    run: Arc<RunState>,
    shared: Arc<Shared>,
    runtime: RuntimeHandle,
    cores: Vec<CoreId>,
    next_core: usize,
    turn_count: u32,
}

impl ListenerPoller {
    fn close(&mut self) {
        if let Some(listener) = self.listener.take() {
            runtime::unwatch_fd(listener.as_raw_fd());
            drop(listener);
            self.run.stopped();
        }
    }

    fn hand_off(&mut self, stream: TcpStream) {
        let core = self.cores.get(self.next_core % self.cores.len().max(1)).copied();
        let core = core.unwrap_or_else(|| self.runtime.first_core());
        // Refused (logged by admission): dropping the stream closes it.
        let Some(ticket) = self.run.admission.admit(runtime::now_ns(), self.runtime.waker(core))
        else {
            return;
        };
        self.next_core = self.next_core.wrapping_add(1);
        if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let run = Arc::clone(&self.run);
        // If the core cannot take it (stopping), the closure and the ticket are dropped.
        let _ = self.runtime.send(core, move |ctx| {
            ctx.add_local_poller(Box::new(Connection::new(stream, shared, run, ticket)));
        });
    }
}

impl Poller for ListenerPoller {
    fn poll(&mut self) -> PollStatus {
        if self.run.stop.load(Ordering::Relaxed) {
            self.close();
            return PollStatus::Idle;
        }
        self.turn_count = self.turn_count.wrapping_add(1);
        if !self.turn_count.is_multiple_of(limits::NBD_LISTENER_TURNS_PER_CHECK) {
            return PollStatus::Idle;
        }
        let mut accepted = 0;
        while accepted < limits::NBD_ACCEPTS_PER_POLL_MAX {
            let Some(listener) = self.listener.as_ref() else { break };
            if !crate::sys::is_readable(listener) {
                break;
            }
            match listener.accept() {
                Ok((stream, _peer)) => {
                    accepted += 1;
                    self.hand_off(stream);
                }
                // WouldBlock: nothing pending. Other errors (ECONNABORTED, EMFILE) concern
                // one would-be connection; try again next poll.
                Err(_) => break,
            }
        }
        PollStatus::busy_if(accepted > 0)
    }

    fn name(&self) -> &str {
        "nbd_listener"
    }

    fn begin_stop(&mut self) {
        self.close();
    }

    fn is_finished(&self) -> bool {
        self.listener.is_none()
    }

    fn wake_fds(&self) -> Vec<i32> {
        self.listener.iter().map(|l| l.as_raw_fd()).collect()
    }
}

impl Drop for ListenerPoller {
    fn drop(&mut self) {
        self.close();
    }
}

/// One request in flight: its reply handle, the device IOs it is split into, its data.
#[derive(Default)]
struct Slot {
    handle: u64,
    /// What the device IOs do; `None` for a request answered without IO (errors, length 0).
    kind: Option<IoKind>,
    flags: IoFlags,
    cursor_blocks: u64,
    end_blocks: u64,
    chunk_blocks: u64,
    /// Device IOs issued so far (the index of the next one).
    issued_count: u32,
    in_flight: u32,
    /// The NBD errno of the reply (0: success).
    error: u32,
    /// The arena offset of this slot's data piece.
    base: u32,
    /// The data not yet handed to the device (a write's payload; a read's empty buffer).
    rest: Option<IoBuffer>,
    /// The alignment padding at the end of the piece.
    spare: Option<IoBuffer>,
    /// Data of completed device IOs, by index (reads send them in order).
    pieces: [Option<IoBuffer>; limits::NBD_IOS_PER_REQUEST_MAX],
    /// A device IO the channel refused (full); retried first.
    stalled: Option<IoRequest>,
    queued: bool,
    /// Bytes of data the reply carries (a successful read).
    reply_data_bytes: usize,
}

fn tag(slot: usize, io_index: u32) -> u64 {
    ((slot as u64) << 32) | u64::from(io_index)
}

/// The transmission phase of a connection: its export, channel, slots and arena.
struct Transmission {
    export: Arc<Export>,
    channel: BdevChannel,
    block_size_bytes: u64,
    size_bytes: u64,
    data_chunk_blocks: u64,
    zeroes_chunk_blocks: u64,
    unmap_chunk_blocks: u64,
    payload_max_bytes: usize,
    arena: super::arena::Arena,
    slots: Vec<Slot>,
    free_slots: Vec<u16>,
    submit_queue: VecDeque<u16>,
    reply_queue: VecDeque<u16>,
    /// Bytes of the front reply already written.
    reply_sent_bytes: usize,
    device_in_flight: usize,
    completed: Vec<IoCompletion>,
}

/// How a request's fields map onto the export, or the NBD errno that answers it.
struct Checked {
    offset_blocks: u64,
    num_blocks: u64,
}

/// What a client learns of an export at negotiation, and the IO geometry that follows from it.
struct Description {
    block_size_bytes: u64,
    size_bytes: u64,
    data_chunk_blocks: u64,
    zeroes_chunk_blocks: u64,
    unmap_chunk_blocks: u64,
    payload_max_bytes: usize,
    transmission_flags: u16,
    /// (minimum, preferred, maximum): the bdev's block size (512 if it is not a power of two,
    /// as the protocol demands one), its preferred IO size, the payload bound.
    block_sizes: (u32, u32, u32),
}

impl Description {
    fn of(export: &Export) -> Description {
        let bdev = export.descriptor.bdev();
        let device = bdev.device();
        let info = bdev.info();
        let block_size_bytes = u64::from(info.block_size_bytes.max(1));
        let data_chunk_blocks = (limits::IO_BYTES_MAX as u64 / block_size_bytes).max(1);
        let zeroes_chunk_blocks =
            (limits::NBD_ZEROES_BYTES_PER_IO as u64 / block_size_bytes).max(1);
        let unmap_chunk_blocks = if info.max_unmap_blocks > 0 {
            info.max_unmap_blocks.min(zeroes_chunk_blocks)
        } else {
            zeroes_chunk_blocks
        };
        let per_request =
            data_chunk_blocks * block_size_bytes * limits::NBD_IOS_PER_REQUEST_MAX as u64;
        let payload_max_bytes = (limits::NBD_PAYLOAD_BYTES_MAX as u64).min(per_request);
        let payload_max_bytes = payload_max_bytes / block_size_bytes * block_size_bytes;

        let mut flags = wire::TFLAG_HAS_FLAGS | wire::TFLAG_SEND_FUA;
        if export.read_only {
            flags |= wire::TFLAG_READ_ONLY;
        }
        if device.supports(IoKind::Flush) {
            flags |= wire::TFLAG_SEND_FLUSH;
        }
        if device.supports(IoKind::Unmap) {
            flags |= wire::TFLAG_SEND_TRIM;
        }
        if device.supports(IoKind::WriteZeroes) {
            flags |= wire::TFLAG_SEND_WRITE_ZEROES;
        }

        let block = u32::try_from(block_size_bytes).unwrap_or(512);
        let minimum = if block.is_power_of_two() { block } else { 512 };
        let preferred = device.preferred_io_bytes().max(minimum).next_power_of_two();
        let maximum = u32::try_from(payload_max_bytes).unwrap_or(u32::MAX).max(preferred);
        Description {
            block_size_bytes,
            size_bytes: info.num_blocks.saturating_mul(block_size_bytes),
            data_chunk_blocks,
            zeroes_chunk_blocks,
            unmap_chunk_blocks,
            payload_max_bytes: payload_max_bytes as usize,
            transmission_flags: flags,
            block_sizes: (minimum, preferred, maximum),
        }
    }
}

impl Transmission {
    /// Opens a channel of the export's bdev on the calling core and sizes the slots and arena.
    fn open(export: Arc<Export>) -> Result<(Transmission, Description), NbdError> {
        let description = Description::of(&export);
        let channel = export
            .descriptor
            .bdev()
            .open_channel()
            .map_err(|_| NbdError::ExportNotFound(export.name.clone()))?;
        let slot_count = limits::NBD_REQUESTS_PER_CONNECTION_MAX;
        let tx = Transmission {
            export,
            channel,
            block_size_bytes: description.block_size_bytes,
            size_bytes: description.size_bytes,
            data_chunk_blocks: description.data_chunk_blocks,
            zeroes_chunk_blocks: description.zeroes_chunk_blocks,
            unmap_chunk_blocks: description.unmap_chunk_blocks,
            payload_max_bytes: description.payload_max_bytes,
            arena: super::arena::Arena::new(limits::NBD_CONNECTION_BUFFER_BYTES, slot_count),
            slots: (0..slot_count).map(|_| Slot::default()).collect(),
            free_slots: (0..slot_count as u16).rev().collect(),
            submit_queue: VecDeque::with_capacity(slot_count),
            reply_queue: VecDeque::with_capacity(slot_count),
            reply_sent_bytes: 0,
            device_in_flight: 0,
            completed: Vec::with_capacity(limits::DEVICE_CHANNEL_DEPTH_MAX),
        };
        Ok((tx, description))
    }

    /// Checks a request's byte range; `beyond_end` is the errno for a range past the end.
    fn check(&self, offset: u64, length: u32, beyond_end: u32) -> Result<Checked, u32> {
        let length = u64::from(length);
        if !offset.is_multiple_of(self.block_size_bytes)
            || !length.is_multiple_of(self.block_size_bytes)
        {
            return Err(wire::EINVAL);
        }
        let end = offset.checked_add(length).ok_or(wire::EINVAL)?;
        if end > self.size_bytes {
            return Err(beyond_end);
        }
        Ok(Checked {
            offset_blocks: offset / self.block_size_bytes,
            num_blocks: length / self.block_size_bytes,
        })
    }

    /// Takes a free slot for `handle`, reset.
    fn take_slot(&mut self, handle: u64) -> Option<u16> {
        let index = self.free_slots.pop()?;
        let slot = &mut self.slots[usize::from(index)];
        slot.handle = handle;
        Some(index)
    }

    /// Answers a request in `index` without IO.
    fn answer(&mut self, index: u16, error: u32) {
        let slot = &mut self.slots[usize::from(index)];
        slot.kind = None;
        slot.error = error;
        self.reply_queue.push_back(index);
    }

    /// Sets up device IO for `index`; data requests get their arena piece here (`None`: no
    /// room, the slot is left untouched for the caller to give back).
    fn prepare(
        &mut self,
        index: u16,
        kind: IoKind,
        flags: IoFlags,
        checked: &Checked,
    ) -> Result<(), ()> {
        let bytes = checked.num_blocks * self.block_size_bytes;
        let chunk_blocks = match kind {
            IoKind::Read | IoKind::Write => self.data_chunk_blocks,
            IoKind::Unmap => self.unmap_chunk_blocks,
            _ => self.zeroes_chunk_blocks,
        };
        let piece = if kind.has_data() {
            let Some((base, mut region)) = self.arena.alloc(bytes as usize) else {
                return Err(());
            };
            let spare = region.split_off(bytes as usize);
            Some((base, region, spare))
        } else {
            None
        };
        let slot = &mut self.slots[usize::from(index)];
        slot.kind = Some(kind);
        slot.flags = flags;
        slot.cursor_blocks = checked.offset_blocks;
        slot.end_blocks = checked.offset_blocks + checked.num_blocks;
        slot.chunk_blocks = chunk_blocks;
        if let Some((base, region, spare)) = piece {
            slot.base = base;
            slot.rest = Some(region);
            slot.spare = Some(spare);
        }
        Ok(())
    }

    fn queue_submit(&mut self, index: u16) {
        let slot = &mut self.slots[usize::from(index)];
        if !slot.queued {
            slot.queued = true;
            self.submit_queue.push_back(index);
        }
    }

    /// Issues device IOs of queued slots until the channel is full. Returns IOs issued.
    fn submit_pending(&mut self) -> usize {
        let mut issued = 0;
        while let Some(&index) = self.submit_queue.front() {
            let slot = &mut self.slots[usize::from(index)];
            let (done, count) =
                submit_slot(&mut self.channel, slot, usize::from(index), self.block_size_bytes);
            issued += count;
            self.device_in_flight += count;
            if !done {
                break;
            }
            slot.queued = false;
            self.submit_queue.pop_front();
            // A request with nothing to issue (length 0) completes here.
            if slot.in_flight == 0 && slot.stalled.is_none() {
                self.finish_slot(index);
            }
        }
        issued
    }

    /// Reaps device completions. Returns how many.
    fn reap(&mut self) -> usize {
        let mut batch = std::mem::take(&mut self.completed);
        let count = self.channel.poll(&mut |completion| batch.push(completion));
        for completion in batch.drain(..) {
            self.on_completion(completion);
        }
        self.completed = batch;
        count
    }

    /// Called by `reap` on this connection's core for each finished device IO.
    fn on_completion(&mut self, completion: IoCompletion) {
        self.device_in_flight = self.device_in_flight.saturating_sub(1);
        let IoCompletion { mut request, status } = completion;
        let index = (request.tag >> 32) as usize;
        let io_index = (request.tag & u64::from(u32::MAX)) as usize;
        let Some(slot) = self.slots.get_mut(index) else {
            debug_assert!(false, "completion for slot {index}");
            return;
        };
        slot.in_flight = slot.in_flight.saturating_sub(1);
        if !status.is_success() && slot.error == 0 {
            slot.error = reply_errno(status);
        }
        if request.kind.has_data() {
            let buffer = request.buffers.take().into_segments().next();
            if let Some(piece) = slot.pieces.get_mut(io_index) {
                *piece = buffer;
            }
        }
        if slot.in_flight > 0 || slot.stalled.is_some() {
            return;
        }
        let index = index as u16; // < NBD_REQUESTS_PER_CONNECTION_MAX, a u16 by limits
        if slot.error == 0 && slot.cursor_blocks < slot.end_blocks {
            self.queue_submit(index);
        } else if !slot.queued {
            self.finish_slot(index);
        }
    }

    /// Every device IO of `index` is done: its reply is ready to send.
    fn finish_slot(&mut self, index: u16) {
        let slot = &mut self.slots[usize::from(index)];
        slot.reply_data_bytes = 0;
        if slot.kind == Some(IoKind::Read) && slot.error == 0 {
            debug_assert_eq!(slot.cursor_blocks, slot.end_blocks);
            slot.reply_data_bytes = slot.pieces.iter().flatten().map(IoBuffer::len).sum();
        }
        self.reply_queue.push_back(index);
    }

    /// The reply of `index` is sent (or dropped): its data goes back to the arena.
    fn release(&mut self, index: u16) {
        let slot = &mut self.slots[usize::from(index)];
        let mut whole: Option<IoBuffer> = None;
        let parts = slot
            .pieces
            .iter_mut()
            .filter_map(Option::take)
            .chain(slot.rest.take())
            .chain(slot.spare.take());
        for part in parts {
            match whole.as_mut() {
                None => whole = Some(part),
                Some(joined) => {
                    if joined.unsplit(part).is_err() {
                        debug_assert!(false, "a slot's pieces are contiguous");
                    }
                }
            }
        }
        if let Some(whole) = whole {
            self.arena.free(slot.base, whole);
        }
        let stalled = slot.stalled.take();
        debug_assert!(stalled.is_none(), "released a slot with a refused IO");
        *slot = Slot::default();
        self.free_slots.push(index);
    }
}

/// Issues `slot`'s device IOs while the channel takes them, at most
/// `NBD_IOS_PER_REQUEST_MAX` in flight. Returns (nothing left to issue now, IOs issued).
fn submit_slot(
    channel: &mut BdevChannel,
    slot: &mut Slot,
    index: usize,
    block_size_bytes: u64,
) -> (bool, usize) {
    let mut issued = 0;
    if let Some(request) = slot.stalled.take() {
        if let Err(request) = channel.submit(request) {
            slot.stalled = Some(request);
            return (false, issued);
        }
        slot.in_flight += 1;
        issued += 1;
    }
    let Some(kind) = slot.kind else { return (true, issued) };
    while slot.error == 0
        && slot.cursor_blocks < slot.end_blocks
        && (slot.in_flight as usize) < limits::NBD_IOS_PER_REQUEST_MAX
    {
        let num_blocks = slot.chunk_blocks.min(slot.end_blocks - slot.cursor_blocks);
        let mut request = if kind == IoKind::Flush {
            IoRequest::new(kind, 0, 0, tag(index, slot.issued_count))
        } else {
            IoRequest::new(kind, slot.cursor_blocks, num_blocks, tag(index, slot.issued_count))
        };
        request = request.with_flags(slot.flags);
        if kind.has_data() {
            let Some(rest) = slot.rest.as_mut() else {
                debug_assert!(false, "a data request has its buffer");
                slot.error = wire::EIO;
                break;
            };
            let tail = rest.split_off((num_blocks * block_size_bytes) as usize);
            let head = std::mem::replace(rest, tail);
            request = request.with_buffers(SgList::single(head));
        }
        slot.cursor_blocks += num_blocks;
        slot.issued_count += 1;
        match channel.submit(request) {
            Ok(()) => {
                slot.in_flight += 1;
                issued += 1;
            }
            Err(request) => {
                slot.stalled = Some(request);
                return (false, issued);
            }
        }
    }
    (true, issued)
}

/// What the connection expects next on its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    ClientFlags,
    OptionHeader,
    OptionSkip { option: u32, remaining: u64 },
    RequestHeader,
    Payload { slot: u16, got: usize },
    PayloadSkip { slot: u16, remaining: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    /// Finish in-flight IO, send the replies, close (DISC, ABORT, stop, export removed).
    Graceful,
    /// The client is gone or broke the protocol: finish in-flight IO, send nothing, close.
    Abrupt,
}

/// What one step of input decoding did.
enum Step {
    Progress,
    /// Needs more bytes in the staging buffer.
    NeedBytes,
    /// Cannot go on this poll (socket drained, or no slot or arena room).
    Wait,
}

/// One client connection: a poller on the core it was dealt to.
struct Connection {
    stream: TcpStream,
    fd: i32,
    shared: Arc<Shared>,
    run: Arc<RunState>,
    input: Input,
    staged: Box<[u8]>,
    staged_start: usize,
    staged_end: usize,
    /// Negotiation output (greeting, option replies), sent before any transmission reply.
    handshake_out: Vec<u8>,
    handshake_sent: usize,
    no_zeroes: bool,
    closing: Option<Close>,
    finished: bool,
    io: Option<Transmission>,
    /// Its place under the server's cap; the handshake ends when transmission starts.
    ticket: Ticket<ReactorWaker>,
}

fn be_u16(bytes: &[u8], at: usize) -> u16 {
    let mut raw = [0u8; 2];
    raw.copy_from_slice(&bytes[at..at + 2]);
    u16::from_be_bytes(raw)
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(raw)
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(raw)
}

/// A decoded request header.
struct RequestHeader {
    flags: u16,
    command: u16,
    handle: u64,
    offset: u64,
    length: u32,
}

impl Connection {
    fn new(
        stream: TcpStream,
        shared: Arc<Shared>,
        run: Arc<RunState>,
        ticket: Ticket<ReactorWaker>,
    ) -> Connection {
        let fd = stream.as_raw_fd();
        let mut connection = Connection {
            stream,
            fd,
            shared,
            run,
            input: Input::ClientFlags,
            staged: vec![0u8; limits::NBD_INPUT_BUFFER_BYTES].into_boxed_slice(),
            staged_start: 0,
            staged_end: 0,
            handshake_out: Vec::with_capacity(1024),
            handshake_sent: 0,
            no_zeroes: false,
            closing: None,
            finished: false,
            io: None,
            ticket,
        };
        connection.handshake_out.extend_from_slice(&wire::NBD_MAGIC.to_be_bytes());
        connection.handshake_out.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
        let flags = wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES;
        connection.handshake_out.extend_from_slice(&flags.to_be_bytes());
        connection
    }

    fn staged_len(&self) -> usize {
        self.staged_end - self.staged_start
    }

    fn staged(&self) -> &[u8] {
        &self.staged[self.staged_start..self.staged_end]
    }

    fn consume(&mut self, bytes: usize) {
        self.staged_start += bytes;
        if self.staged_start == self.staged_end {
            self.staged_start = 0;
            self.staged_end = 0;
        }
    }

    /// Reads what the socket has into the staging buffer. False if nothing came (would block,
    /// or the client is gone, which closes the connection).
    fn fill_staging(&mut self) -> bool {
        if self.staged_start > 0 {
            self.staged.copy_within(self.staged_start..self.staged_end, 0);
            self.staged_end -= self.staged_start;
            self.staged_start = 0;
        }
        if self.staged_end == self.staged.len() {
            return false;
        }
        match self.stream.read(&mut self.staged[self.staged_end..]) {
            Ok(0) => {
                self.closing = Some(Close::Abrupt);
                false
            }
            Ok(n) => {
                self.staged_end += n;
                true
            }
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock)
                    || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                false
            }
            Err(_) => {
                self.closing = Some(Close::Abrupt);
                false
            }
        }
    }

    /// Decodes what the client sent, bounded per poll. Returns units of work done.
    fn process_input(&mut self) -> usize {
        let mut handled = 0;
        let mut reads = 0;
        while handled < limits::NBD_REQUESTS_PER_POLL_MAX && self.closing.is_none() {
            if self.handshake_out.len() > limits::NBD_INPUT_BUFFER_BYTES {
                break; // let the client read its option replies first
            }
            match self.step_input() {
                Step::Progress => handled += 1,
                Step::Wait => break,
                Step::NeedBytes => {
                    reads += 1;
                    if reads > limits::NBD_REQUESTS_PER_POLL_MAX || !self.fill_staging() {
                        break;
                    }
                    handled += 1;
                }
            }
        }
        handled
    }

    fn step_input(&mut self) -> Step {
        match self.input {
            Input::ClientFlags => {
                if self.staged_len() < 4 {
                    return Step::NeedBytes;
                }
                let flags = be_u32(self.staged(), 0);
                self.consume(4);
                let known = wire::CLIENT_FIXED_NEWSTYLE | wire::CLIENT_NO_ZEROES;
                if flags & wire::CLIENT_FIXED_NEWSTYLE == 0 || flags & !known != 0 {
                    self.closing = Some(Close::Abrupt);
                } else {
                    self.no_zeroes = flags & wire::CLIENT_NO_ZEROES != 0;
                    self.input = Input::OptionHeader;
                }
                Step::Progress
            }
            Input::OptionHeader => self.step_option(),
            Input::OptionSkip { option, remaining } => {
                let n = (self.staged_len() as u64).min(remaining);
                if n == 0 {
                    return Step::NeedBytes;
                }
                self.consume(n as usize);
                let remaining = remaining - n;
                if remaining == 0 {
                    self.input = Input::OptionHeader;
                    self.option_reply(option, wire::REP_ERR_TOO_BIG, b"option too long");
                } else {
                    self.input = Input::OptionSkip { option, remaining };
                }
                Step::Progress
            }
            Input::RequestHeader => self.step_request(),
            Input::Payload { slot, got } => self.step_payload(slot, got),
            Input::PayloadSkip { slot, remaining } => {
                let n = (self.staged_len() as u64).min(remaining);
                if n == 0 {
                    return Step::NeedBytes;
                }
                self.consume(n as usize);
                let remaining = remaining - n;
                if remaining == 0 {
                    self.input = Input::RequestHeader;
                    if let Some(tx) = self.io.as_mut() {
                        tx.reply_queue.push_back(slot);
                    }
                } else {
                    self.input = Input::PayloadSkip { slot, remaining };
                }
                Step::Progress
            }
        }
    }

    fn option_reply(&mut self, option: u32, reply_type: u32, data: &[u8]) {
        let out = &mut self.handshake_out;
        out.extend_from_slice(&wire::OPTION_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&reply_type.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes()); // data ≤ an export name
        out.extend_from_slice(data);
    }

    fn step_option(&mut self) -> Step {
        if self.staged_len() < wire::OPTION_HEADER_BYTES {
            return Step::NeedBytes;
        }
        let header = self.staged();
        let magic = be_u64(header, 0);
        let option = be_u32(header, 8);
        let length = be_u32(header, 12) as usize;
        if magic != wire::IHAVEOPT {
            self.closing = Some(Close::Abrupt);
            return Step::Progress;
        }
        if length > limits::NBD_OPTION_BYTES_MAX {
            self.consume(wire::OPTION_HEADER_BYTES);
            if option == wire::OPT_EXPORT_NAME {
                // EXPORT_NAME has no error reply: closing is all the protocol allows.
                self.closing = Some(Close::Abrupt);
            } else {
                self.input = Input::OptionSkip { option, remaining: length as u64 };
            }
            return Step::Progress;
        }
        if self.staged_len() < wire::OPTION_HEADER_BYTES + length {
            return Step::NeedBytes;
        }
        let mut data = [0u8; limits::NBD_OPTION_BYTES_MAX];
        let start = wire::OPTION_HEADER_BYTES;
        data[..length].copy_from_slice(&self.staged()[start..start + length]);
        self.consume(start + length);
        self.handle_option(option, &data[..length]);
        Step::Progress
    }

    fn handle_option(&mut self, option: u32, data: &[u8]) {
        match option {
            wire::OPT_EXPORT_NAME => {
                let Some(export) = self.shared.find(data) else {
                    self.closing = Some(Close::Abrupt);
                    return;
                };
                match self.start_transmission(export) {
                    Some(description) => {
                        let (size, flags) =
                            (description.size_bytes, description.transmission_flags);
                        self.handshake_out.extend_from_slice(&size.to_be_bytes());
                        self.handshake_out.extend_from_slice(&flags.to_be_bytes());
                        if !self.no_zeroes {
                            self.handshake_out.extend_from_slice(&[0u8; 124]);
                        }
                    }
                    None => self.closing = Some(Close::Abrupt),
                }
            }
            wire::OPT_ABORT => {
                self.option_reply(option, wire::REP_ACK, &[]);
                self.closing = Some(Close::Graceful);
            }
            wire::OPT_LIST => {
                if !data.is_empty() {
                    self.option_reply(option, wire::REP_ERR_INVALID, b"LIST takes no data");
                    return;
                }
                let names: Vec<String> = lock(&self.shared.exports)
                    .iter()
                    .filter(|e| !e.removed.load(Ordering::Relaxed))
                    .map(|e| e.name.clone())
                    .collect();
                for name in names {
                    let mut entry = Vec::with_capacity(4 + name.len());
                    entry.extend_from_slice(&(name.len() as u32).to_be_bytes()); // ≤ 4096
                    entry.extend_from_slice(name.as_bytes());
                    self.option_reply(option, wire::REP_SERVER, &entry);
                }
                self.option_reply(option, wire::REP_ACK, &[]);
            }
            wire::OPT_INFO | wire::OPT_GO => self.info_or_go(option, data),
            _ => self.option_reply(option, wire::REP_ERR_UNSUP, b"option not supported"),
        }
    }

    fn info_or_go(&mut self, option: u32, data: &[u8]) {
        let invalid = |c: &mut Connection| {
            c.option_reply(option, wire::REP_ERR_INVALID, b"malformed INFO/GO request");
        };
        if data.len() < 6 {
            return invalid(self);
        }
        let name_len = be_u32(data, 0) as usize;
        if data.len() < 6 + name_len {
            return invalid(self);
        }
        let name = &data[4..4 + name_len];
        let request_count = usize::from(be_u16(data, 4 + name_len));
        if data.len() != 6 + name_len + 2 * request_count {
            return invalid(self);
        }
        let requests = &data[6 + name_len..];
        let asked = |kind: u16| (0..request_count).any(|i| be_u16(requests, 2 * i) == kind);
        let (want_name, want_block_size) = (asked(wire::INFO_NAME), asked(wire::INFO_BLOCK_SIZE));
        let Some(export) = self.shared.find(name) else {
            let message = format!("no export named {}", String::from_utf8_lossy(name));
            return self.option_reply(option, wire::REP_ERR_UNKNOWN, message.as_bytes());
        };
        let export_name = export.name.clone();
        let described = if option == wire::OPT_GO {
            self.start_transmission(export)
        } else {
            Some(Description::of(&export)) // INFO: no channel needed
        };
        let Some(description) = described else {
            let message = format!("export {export_name} cannot be opened");
            return self.option_reply(option, wire::REP_ERR_UNKNOWN, message.as_bytes());
        };
        let mut info = [0u8; 14];
        info[..2].copy_from_slice(&wire::INFO_EXPORT.to_be_bytes());
        info[2..10].copy_from_slice(&description.size_bytes.to_be_bytes());
        info[10..12].copy_from_slice(&description.transmission_flags.to_be_bytes());
        self.option_reply(option, wire::REP_INFO, &info[..12]);
        if want_name {
            let mut entry = Vec::with_capacity(2 + export_name.len());
            entry.extend_from_slice(&wire::INFO_NAME.to_be_bytes());
            entry.extend_from_slice(export_name.as_bytes());
            self.option_reply(option, wire::REP_INFO, &entry);
        }
        if want_block_size {
            let (minimum, preferred, maximum) = description.block_sizes;
            info[..2].copy_from_slice(&wire::INFO_BLOCK_SIZE.to_be_bytes());
            info[2..6].copy_from_slice(&minimum.to_be_bytes());
            info[6..10].copy_from_slice(&preferred.to_be_bytes());
            info[10..14].copy_from_slice(&maximum.to_be_bytes());
            self.option_reply(option, wire::REP_INFO, &info);
        }
        self.option_reply(option, wire::REP_ACK, &[]);
    }

    /// Opens the export's channel on this core and enters transmission.
    fn start_transmission(&mut self, export: Arc<Export>) -> Option<Description> {
        let (tx, description) = Transmission::open(export).ok()?;
        tx.export.connection_count.fetch_add(1, Ordering::Relaxed);
        self.io = Some(tx);
        self.ticket.handshake_done();
        self.input = Input::RequestHeader;
        Some(description)
    }

    fn step_request(&mut self) -> Step {
        if self.staged_len() < wire::REQUEST_HEADER_BYTES {
            return Step::NeedBytes;
        }
        let bytes = self.staged();
        if be_u32(bytes, 0) != wire::REQUEST_MAGIC {
            self.closing = Some(Close::Abrupt);
            return Step::Progress;
        }
        let header = RequestHeader {
            flags: be_u16(bytes, 4),
            command: be_u16(bytes, 6),
            handle: be_u64(bytes, 8),
            offset: be_u64(bytes, 16),
            length: be_u32(bytes, 24),
        };
        if header.command == wire::CMD_DISC {
            self.consume(wire::REQUEST_HEADER_BYTES);
            self.closing = Some(Close::Graceful);
            return Step::Progress;
        }
        let Some(tx) = self.io.as_mut() else {
            self.closing = Some(Close::Abrupt);
            return Step::Progress;
        };
        let Some(index) = tx.take_slot(header.handle) else {
            return Step::Wait; // every slot busy: leave the header for a later poll
        };
        match accept_request(tx, index, &header) {
            Accepted::Wait => {
                tx.free_slots.push(index);
                return Step::Wait;
            }
            Accepted::Submit => tx.queue_submit(index),
            Accepted::Answered => {}
            Accepted::Payload => self.input = Input::Payload { slot: index, got: 0 },
            Accepted::SkipPayload => {
                self.input =
                    Input::PayloadSkip { slot: index, remaining: u64::from(header.length) };
            }
        }
        self.consume(wire::REQUEST_HEADER_BYTES);
        Step::Progress
    }

    /// Moves a write's payload into its slot: first what is staged, then straight from the
    /// socket into the slot's buffer (no intermediate copy for large writes).
    fn step_payload(&mut self, index: u16, mut got: usize) -> Step {
        let Some(tx) = self.io.as_mut() else {
            self.closing = Some(Close::Abrupt);
            return Step::Progress;
        };
        let Some(buffer) = tx.slots[usize::from(index)].rest.as_mut() else {
            self.closing = Some(Close::Abrupt);
            return Step::Progress;
        };
        let target = buffer.as_mut_slice();
        let staged = self.staged_end - self.staged_start;
        if staged > 0 {
            let n = staged.min(target.len() - got);
            target[got..got + n]
                .copy_from_slice(&self.staged[self.staged_start..self.staged_start + n]);
            got += n;
            self.staged_start += n;
            if self.staged_start == self.staged_end {
                self.staged_start = 0;
                self.staged_end = 0;
            }
        } else {
            match self.stream.read(&mut target[got..]) {
                Ok(0) => {
                    self.closing = Some(Close::Abrupt);
                    return Step::Wait;
                }
                Ok(n) => got += n,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::Interrupted =>
                {
                    self.input = Input::Payload { slot: index, got };
                    return Step::Wait;
                }
                Err(_) => {
                    self.closing = Some(Close::Abrupt);
                    return Step::Wait;
                }
            }
        }
        if got == target.len() {
            self.input = Input::RequestHeader;
            tx.queue_submit(index);
        } else {
            self.input = Input::Payload { slot: index, got };
        }
        Step::Progress
    }

    /// Sends negotiation output, then replies, until the socket is full. Err: the client is
    /// gone.
    fn flush_output(&mut self) -> Result<usize, ()> {
        let mut progress = 0;
        while self.handshake_sent < self.handshake_out.len() {
            match self.stream.write(&self.handshake_out[self.handshake_sent..]) {
                Ok(0) => return Err(()),
                Ok(n) => {
                    self.handshake_sent += n;
                    progress += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(progress),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        self.handshake_out.clear();
        self.handshake_sent = 0;
        let Some(tx) = self.io.as_mut() else { return Ok(progress) };
        while !tx.reply_queue.is_empty() {
            let mut headers: ArrayVec<
                [u8; wire::REPLY_HEADER_BYTES],
                { limits::NBD_REPLY_IOVECS_MAX },
            > = ArrayVec::new();
            for &index in tx.reply_queue.iter().take(limits::NBD_REPLY_IOVECS_MAX) {
                let slot = &tx.slots[usize::from(index)];
                let mut header = [0u8; wire::REPLY_HEADER_BYTES];
                header[..4].copy_from_slice(&wire::SIMPLE_REPLY_MAGIC.to_be_bytes());
                header[4..8].copy_from_slice(&slot.error.to_be_bytes());
                header[8..].copy_from_slice(&slot.handle.to_be_bytes());
                headers.push(header);
            }
            let mut iovecs: ArrayVec<IoSlice<'_>, { limits::NBD_REPLY_IOVECS_MAX }> =
                ArrayVec::new();
            let mut skip = tx.reply_sent_bytes;
            'replies: for (header, &index) in headers.iter().zip(tx.reply_queue.iter()) {
                let slot = &tx.slots[usize::from(index)];
                let data = slot
                    .pieces
                    .iter()
                    .flatten()
                    .filter(|_| slot.reply_data_bytes > 0)
                    .map(IoBuffer::as_slice);
                for part in std::iter::once(&header[..]).chain(data) {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    if iovecs.is_full() {
                        break 'replies;
                    }
                    iovecs.push(IoSlice::new(&part[skip..]));
                    skip = 0;
                }
            }
            let written = match self.stream.write_vectored(&iovecs) {
                Ok(0) => return Err(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(()),
            };
            drop(iovecs);
            progress += 1;
            let mut sent = tx.reply_sent_bytes + written;
            while let Some(&index) = tx.reply_queue.front() {
                let total =
                    wire::REPLY_HEADER_BYTES + tx.slots[usize::from(index)].reply_data_bytes;
                if sent < total {
                    break;
                }
                sent -= total;
                tx.reply_queue.pop_front();
                tx.release(index);
            }
            tx.reply_sent_bytes = sent;
        }
        Ok(progress)
    }

    fn output_pending(&self) -> bool {
        self.handshake_sent < self.handshake_out.len()
            || self.io.as_ref().is_some_and(|tx| !tx.reply_queue.is_empty())
    }

    fn device_in_flight(&self) -> usize {
        self.io.as_ref().map_or(0, |tx| tx.device_in_flight)
    }
}

/// What became of a decoded request.
enum Accepted {
    /// Not enough arena room: try again after completions.
    Wait,
    /// Device IO prepared: queue it.
    Submit,
    /// Answered without IO (an error, or length 0).
    Answered,
    /// A write: its payload comes next.
    Payload,
    /// A refused write: its payload is read and dropped, then the error is sent.
    SkipPayload,
}

/// Decodes one request into slot `index` of `tx`.
fn accept_request(tx: &mut Transmission, index: u16, header: &RequestHeader) -> Accepted {
    let read_only = tx.export.read_only;
    let fua = if header.flags & wire::CMD_FLAG_FUA != 0 { IoFlags::FUA } else { IoFlags::NONE };
    match header.command {
        wire::CMD_READ => {
            if header.length as usize > tx.payload_max_bytes {
                tx.answer(index, wire::EINVAL);
                return Accepted::Answered;
            }
            match tx.check(header.offset, header.length, wire::EINVAL) {
                Err(errno) => {
                    tx.answer(index, errno);
                    Accepted::Answered
                }
                Ok(checked) if checked.num_blocks == 0 => {
                    tx.answer(index, 0);
                    Accepted::Answered
                }
                Ok(checked) => match tx.prepare(index, IoKind::Read, IoFlags::NONE, &checked) {
                    Ok(()) => Accepted::Submit,
                    Err(()) => Accepted::Wait,
                },
            }
        }
        wire::CMD_WRITE => {
            let refused = if read_only {
                Err(wire::EPERM)
            } else if header.length as usize > tx.payload_max_bytes {
                Err(wire::EINVAL)
            } else {
                tx.check(header.offset, header.length, wire::ENOSPC)
            };
            match refused {
                Err(errno) => {
                    let slot = &mut tx.slots[usize::from(index)];
                    slot.kind = None;
                    slot.error = errno;
                    if header.length == 0 {
                        tx.reply_queue.push_back(index);
                        Accepted::Answered
                    } else {
                        Accepted::SkipPayload
                    }
                }
                Ok(checked) if checked.num_blocks == 0 => {
                    tx.answer(index, 0);
                    Accepted::Answered
                }
                Ok(checked) => match tx.prepare(index, IoKind::Write, fua, &checked) {
                    Ok(()) => Accepted::Payload,
                    Err(()) => Accepted::Wait,
                },
            }
        }
        wire::CMD_FLUSH => {
            let checked = Checked { offset_blocks: 0, num_blocks: 1 };
            match tx.prepare(index, IoKind::Flush, IoFlags::NONE, &checked) {
                Ok(()) => Accepted::Submit,
                Err(()) => Accepted::Wait,
            }
        }
        wire::CMD_TRIM | wire::CMD_WRITE_ZEROES => {
            let (kind, beyond_end) = if header.command == wire::CMD_TRIM {
                (IoKind::Unmap, wire::EINVAL)
            } else {
                (IoKind::WriteZeroes, wire::ENOSPC)
            };
            let checked = if read_only {
                Err(wire::EPERM)
            } else {
                tx.check(header.offset, header.length, beyond_end)
            };
            let mut flags = fua;
            if kind == IoKind::WriteZeroes && header.flags & wire::CMD_FLAG_NO_HOLE != 0 {
                flags = flags.with(IoFlags::NO_UNMAP);
            }
            match checked {
                Err(errno) => {
                    tx.answer(index, errno);
                    Accepted::Answered
                }
                Ok(checked) if checked.num_blocks == 0 => {
                    tx.answer(index, 0);
                    Accepted::Answered
                }
                Ok(checked) => match tx.prepare(index, kind, flags, &checked) {
                    Ok(()) => Accepted::Submit,
                    Err(()) => Accepted::Wait,
                },
            }
        }
        _ => {
            tx.answer(index, wire::EINVAL);
            Accepted::Answered
        }
    }
}

impl Poller for Connection {
    fn poll(&mut self) -> PollStatus {
        if self.finished {
            return PollStatus::Idle;
        }
        let mut work = 0;
        if self.closing.is_none() {
            let removed =
                self.io.as_ref().is_some_and(|tx| tx.export.removed.load(Ordering::Relaxed));
            if removed || self.run.stop.load(Ordering::Relaxed) {
                self.closing = Some(Close::Graceful);
            }
        }
        // Only a negotiating connection can be timed out or evicted: no clock read once it
        // transmits.
        if self.closing.is_none()
            && self.io.is_none()
            && let Some(reason) = self.ticket.close_reason(runtime::now_ns())
        {
            self.ticket.log_close(reason);
            self.closing = Some(Close::Abrupt);
        }
        if let Some(tx) = self.io.as_mut() {
            work += tx.reap();
            work += tx.submit_pending();
        }
        if self.closing.is_none() {
            work += self.process_input();
            if let Some(tx) = self.io.as_mut() {
                work += tx.submit_pending();
                // Devices that finish at submission (malloc) reply in this same turn.
                work += tx.reap();
            }
        }
        if self.closing != Some(Close::Abrupt) {
            match self.flush_output() {
                Ok(progress) => work += progress,
                Err(()) => self.closing = Some(Close::Abrupt),
            }
        }
        if let Some(close) = self.closing
            && self.device_in_flight() == 0
            && (close == Close::Abrupt || !self.output_pending())
        {
            self.finished = true;
            let _ = self.stream.shutdown(Shutdown::Both);
            work += 1;
        }
        PollStatus::busy_if(work > 0)
    }

    fn name(&self) -> &str {
        "nbd_connection"
    }

    fn begin_stop(&mut self) {
        if self.closing.is_none() {
            self.closing = Some(Close::Graceful);
        }
    }

    fn is_drained(&self) -> bool {
        self.device_in_flight() == 0
    }

    fn is_finished(&self) -> bool {
        self.finished
    }

    fn prepare_park(&mut self) -> bool {
        if self.finished {
            return true;
        }
        if self.closing.is_some() || self.output_pending() {
            return false;
        }
        match self.io.as_mut() {
            Some(tx) => tx.submit_queue.is_empty() && tx.channel.prepare_park(),
            None => true,
        }
    }

    fn wake_fds(&self) -> Vec<i32> {
        vec![self.fd]
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        runtime::unwatch_fd(self.fd);
        if let Some(tx) = self.io.as_ref() {
            tx.export.connection_count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_stays_in_the_protocol_set() {
        assert_eq!(reply_errno(IoStatus::Success), 0);
        assert_eq!(reply_errno(IoStatus::NoSpace), wire::ENOSPC);
        assert_eq!(reply_errno(IoStatus::Failed(libc::EROFS)), wire::EPERM);
        assert_eq!(reply_errno(IoStatus::Failed(libc::ENOTSUP)), wire::ENOTSUP);
        assert_eq!(reply_errno(IoStatus::Failed(libc::ENXIO)), wire::EIO);
    }
}
