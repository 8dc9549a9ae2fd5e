//! The JSON-RPC server: a Unix socket served by one poller on one reactor (the first core, as
//! SPDK runs its RPC server on the main core), non-blocking sockets, no thread per client.
//!
//! The poller owns the listener and every connection. Each poll it takes finished replies from
//! its reply ring, accepts a bounded number of clients, and for each connection writes pending
//! output, reads a bounded number of bytes into the connection's [`Framer`] and starts a bounded
//! number of requests. A handler answers through [`methods::call`]'s `Reply`, possibly from
//! another core; the reply goes into the bounded reply ring, which wakes this reactor. No request
//! starts without a ring slot reserved for its reply (the poller counts what is in flight), so a
//! push never finds the ring full and a reply is never dropped or waited for. Handlers are
//! called on this reactor: one that must wait for other work sends it to the core that owns it
//! and replies from there, it never blocks here (`call_on`/`call_blocking` would deadlock).
//!
//! Protocol, as SPDK's (reference/spdk.md §1): a stream of JSON values per connection; replies
//! in completion order; a notification is answered only on error; a batch gets one array (none
//! if it held only notifications); a parse error is answered with -32700 and the connection is
//! closed once that is written; a request past `limits::RPC_REQUEST_BYTES_MAX` gets -32600 and
//! the same close. Every buffer is bounded (see `limits`), so no input grows memory without
//! bound. The socket and every connection are registered as wake sources, so a parked reactor
//! wakes for a new client or request.
//!
//! Connections are admitted by [`crate::admission`]: at most `limits::RPC_CONNECTIONS_MAX`; a
//! connection's handshake is its first complete request, so one that sends none within the
//! handshake timeout is closed, and at the cap the one that has waited longest without a
//! request makes room for a new client. A connection idle (nothing running, nothing to send)
//! for the idle timeout is closed too.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::framing::{self, Framer};
use super::{RpcError, methods};
use crate::admission::{Admission, CloseReason, Ticket};
use crate::host::{Host, MessageRing, PollStatus, Poller};
use crate::limits;
use crate::runtime::{self, ReactorWaker};
use crate::target::Target;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{path}: another process is serving this RPC socket (lock {lock} is held)")]
    InUse { path: String, lock: String },
    #[error("{path}: exists and is not a socket; refusing to remove it")]
    NotASocket { path: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("cannot add the RPC poller: {0}")]
    Runtime(#[from] runtime::SendError),
}

/// Where a finished reply goes back to.
#[derive(Clone, Copy, Debug)]
enum Destination {
    Single,
    /// Element `index` of the connection's batch `batch`.
    Batch {
        batch: u64,
        index: usize,
    },
}

/// A finished request, travelling from whichever core answered it back to the poller.
struct Finished {
    slot: usize,
    generation: u64,
    destination: Destination,
    /// The reply, serialized; `None` for a notification that succeeded.
    response: Option<Vec<u8>>,
}

type ReplyRing = MessageRing<Finished, ReactorWaker>;

/// A started request's way back to the poller, called once from whichever core answers.
/// Dropped unanswered (a handler lost its `Reply`: a bug), it still answers with an internal
/// error, so the client, a batch holding the request and the connection's slot never wait for
/// an answer that cannot come.
struct PendingReply {
    ring: Arc<ReplyRing>,
    slot: usize,
    generation: u64,
    destination: Destination,
    /// The request's id; taken by the answer (`None` inside: a notification).
    id: Option<Option<Value>>,
}

impl PendingReply {
    fn answer(mut self, result: Result<Value, RpcError>) {
        self.push(result);
    }

    fn push(&mut self, result: Result<Value, RpcError>) {
        let Some(id) = self.id.take() else { return };
        let response = match (id, result) {
            (None, Ok(_)) => None,
            (id, result) => Some(framing::reply_bytes(id.unwrap_or(Value::Null), result)),
        };
        let finished = Finished {
            slot: self.slot,
            generation: self.generation,
            destination: self.destination,
            response,
        };
        if self.ring.push(finished).is_err() {
            // Unreachable: a slot was reserved before the request started.
            eprintln!("rpc: reply ring full; a reply was lost");
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        if self.id.is_some() {
            eprintln!("rpc: a request was dropped without an answer; answering -32603");
            let error = RpcError::new(
                super::error::INTERNAL_ERROR,
                "Internal error: the request was dropped without an answer",
            );
            self.push(Err(error));
        }
    }
}

/// A batch whose elements are still running.
struct Batch {
    responses: Vec<Option<Vec<u8>>>,
    remaining: usize,
}

struct Connection {
    stream: UnixStream,
    generation: u64,
    framer: Framer,
    output: Vec<u8>,
    output_sent: usize,
    in_flight: usize,
    batches: HashMap<u64, Batch>,
    next_batch: u64,
    /// The client shut its side: finish what it sent, then close.
    read_closed: bool,
    /// A fatal error was queued: close once it is written.
    closing: bool,
    /// Complete requests may still wait in the framer (the last poll stopped at a bound).
    input_pending: bool,
    /// What wakes the parked reactor for it: readability while the server reads it (not once
    /// the client shut its side, an error is being written or output is paused: a level-
    /// triggered wait on a socket nobody reads would end every park at once), writability
    /// while output waits (so a client that drains a large reply gets the rest at once).
    watched: (bool, bool),
    /// Its place under the cap; the handshake ends with the first complete request.
    ticket: Ticket<ReactorWaker>,
    /// When it last started a request or got a reply (the idle timeout counts from it).
    last_active_ns: u64,
}

impl Connection {
    fn unsent(&self) -> usize {
        self.output.len() - self.output_sent
    }

    /// Whether the connection must close now: evicted at the cap, no first request in time,
    /// or idle (nothing running, nothing to send) for the idle timeout.
    fn close_reason(&self, now_ns: u64) -> Option<CloseReason> {
        if let Some(reason) = self.ticket.close_reason(now_ns) {
            return Some(reason);
        }
        let idle_ns = self.ticket.timeouts().idle_ms.saturating_mul(1_000_000);
        let idle = !self.ticket.is_handshaking()
            && self.in_flight == 0
            && self.unsent() == 0
            && self.batches.is_empty()
            && !self.input_pending;
        (idle && now_ns.saturating_sub(self.last_active_ns) >= idle_ns).then_some(CloseReason::Idle)
    }

    /// Queues one reply and its newline.
    fn queue_line(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
        self.output.push(b'\n');
    }

    /// Writes what the socket takes; counts progress in `wrote`. Returns false if the
    /// connection is broken.
    fn flush(&mut self, wrote: &mut bool) -> bool {
        while self.output_sent < self.output.len() {
            match self.stream.write(&self.output[self.output_sent..]) {
                Ok(0) => return false,
                Ok(n) => {
                    self.output_sent += n;
                    *wrote = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.output_sent == self.output.len() {
            self.output.clear();
            self.output_sent = 0;
        }
        true
    }
}

/// What `thin_tgt` keeps to find the socket again at exit.
pub struct ServerHandle {
    path: PathBuf,
}

impl ServerHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file SPDK takes beside its socket: `<path>.lock`.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// How the server runs a request: [`methods::call`] in the daemon; tests pass their own to
/// answer from other cores or threads.
pub type Dispatch = fn(&Arc<Target>, &str, Option<Value>, methods::Reply);

/// Binds `path` and starts serving it on the target's first core. A socket file left by a dead
/// daemon is removed; one whose lock is held by a live daemon is an error.
pub fn listen(target: &Arc<Target>, path: &Path) -> Result<ServerHandle, ServerError> {
    listen_with(target, path, methods::call)
}

/// [`listen`] with the requests run by `dispatch`.
pub fn listen_with(
    target: &Arc<Target>,
    path: &Path,
    dispatch: Dispatch,
) -> Result<ServerHandle, ServerError> {
    let io_error = |source| ServerError::Io { path: path.display().to_string(), source };
    let lock = lock_path(path);
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|source| ServerError::Io { path: lock.display().to_string(), source })?;
    if !crate::sys::lock_exclusive(&lock_file).map_err(io_error)? {
        return Err(ServerError::InUse {
            path: path.display().to_string(),
            lock: lock.display().to_string(),
        });
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            eprintln!("rpc: removing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(io_error)?;
        }
        Ok(_) => return Err(ServerError::NotASocket { path: path.display().to_string() }),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_error)?;
    listener.set_nonblocking(true).map_err(io_error)?;
    let core = target.runtime.first_core();
    let replies =
        Arc::new(MessageRing::new(limits::RPC_REPLY_RING_ENTRIES, target.runtime.waker(core)));
    let poller = RpcPoller {
        target: Arc::clone(target),
        dispatch,
        path: path.to_path_buf(),
        lock_path: lock,
        lock_file: Some(lock_file),
        listener: Some(listener),
        connections: Vec::new(),
        next_generation: 1,
        replies,
        in_flight: 0,
        admission: Admission::new("rpc", limits::RPC_CONNECTIONS_MAX, target.connection_timeouts()),
        waker: target.runtime.waker(core),
        now_ns: runtime::now_ns(),
    };
    target.runtime.add_poller(core, Box::new(poller))?;
    Ok(ServerHandle { path: path.to_path_buf() })
}

struct RpcPoller {
    target: Arc<Target>,
    dispatch: Dispatch,
    path: PathBuf,
    lock_path: PathBuf,
    lock_file: Option<File>,
    listener: Option<UnixListener>,
    /// Slots; a closed connection leaves `None` and its generation is never reused, so a late
    /// reply to it is recognised and dropped.
    connections: Vec<Option<Connection>>,
    next_generation: u64,
    replies: Arc<ReplyRing>,
    /// Requests started and not yet taken back from the ring (each holds a ring slot).
    in_flight: usize,
    /// The cap and the handshake deadline (a connection's first request).
    admission: Arc<Admission<ReactorWaker>>,
    waker: ReactorWaker,
    /// The clock at the start of this poll.
    now_ns: u64,
}

impl RpcPoller {
    fn take_replies(&mut self) -> bool {
        let mut busy = false;
        for _ in 0..limits::RPC_REPLIES_PER_POLL_MAX {
            let Some(finished) = self.replies.pop() else { break };
            busy = true;
            self.in_flight -= 1;
            let Some(Some(connection)) = self.connections.get_mut(finished.slot) else {
                continue;
            };
            if connection.generation != finished.generation {
                continue;
            }
            connection.in_flight -= 1;
            connection.last_active_ns = self.now_ns;
            match finished.destination {
                Destination::Single => {
                    if let Some(response) = finished.response {
                        connection.queue_line(&response);
                    }
                }
                Destination::Batch { batch, index } => {
                    let Some(state) = connection.batches.get_mut(&batch) else { continue };
                    if let Some(entry) = state.responses.get_mut(index) {
                        *entry = finished.response;
                    }
                    state.remaining -= 1;
                    if state.remaining == 0 {
                        finish_batch(connection, batch);
                    }
                }
            }
        }
        busy
    }

    fn accept(&mut self) -> bool {
        let Some(listener) = &self.listener else { return false };
        let mut busy = false;
        for _ in 0..limits::RPC_ACCEPTS_PER_POLL_MAX {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("rpc: accept failed: {e}");
                    break;
                }
            };
            busy = true;
            // Refused (logged by admission): dropping the stream closes it, so the client
            // reads EOF, it does not hang.
            let Some(ticket) = self.admission.admit(self.now_ns, self.waker.clone()) else {
                continue;
            };
            if let Err(e) = stream.set_nonblocking(true) {
                eprintln!("rpc: cannot make a connection non-blocking: {e}");
                continue;
            }
            runtime::watch_fd(stream.as_raw_fd());
            let connection = Connection {
                stream,
                generation: self.next_generation,
                framer: Framer::default(),
                output: Vec::new(),
                output_sent: 0,
                in_flight: 0,
                batches: HashMap::new(),
                next_batch: 0,
                read_closed: false,
                closing: false,
                input_pending: false,
                watched: (true, false),
                ticket,
                last_active_ns: self.now_ns,
            };
            self.next_generation += 1;
            match self.connections.iter_mut().find(|c| c.is_none()) {
                Some(free) => *free = Some(connection),
                None => self.connections.push(Some(connection)),
            }
        }
        busy
    }

    /// Reads, frames and starts requests of connection `slot`; then writes and maybe closes it.
    fn serve(&mut self, slot: usize, stopping: bool) -> bool {
        let mut busy = false;
        let Some(Some(connection)) = self.connections.get_mut(slot) else { return false };
        if !stopping && let Some(reason) = connection.close_reason(self.now_ns) {
            connection.ticket.log_close(reason);
            self.close(slot);
            return true;
        }
        // Progress on output counts as work, so a reactor writing a large reply to a client
        // that reads it stays up instead of parking between socket-buffer fulls.
        let mut wrote = false;
        if !connection.flush(&mut wrote) {
            self.close(slot);
            return true;
        }
        busy |= wrote;
        let reading = !stopping && !connection.closing && !connection.read_closed;
        if reading && connection.unsent() < limits::RPC_OUTPUT_PAUSE_BYTES {
            busy |= read_some(connection);
        }
        if !stopping && !connection.closing && connection.unsent() < limits::RPC_OUTPUT_PAUSE_BYTES
        {
            busy |= self.start_requests(slot);
        }
        let Some(Some(connection)) = self.connections.get_mut(slot) else { return busy };
        if !connection.flush(&mut wrote) || connection.unsent() > limits::RPC_OUTPUT_BYTES_MAX {
            self.close(slot);
            return true;
        }
        busy |= wrote;
        let want_watch = !stopping
            && !connection.closing
            && !connection.read_closed
            && connection.unsent() < limits::RPC_OUTPUT_PAUSE_BYTES;
        let interest = (want_watch, connection.unsent() > 0);
        if interest != connection.watched {
            runtime::watch_fd_for(connection.stream.as_raw_fd(), interest.0, interest.1);
            connection.watched = interest;
        }
        let finished = connection.unsent() == 0
            && (connection.closing
                || (connection.read_closed
                    && connection.in_flight == 0
                    && !connection.input_pending));
        if finished {
            self.close(slot);
            busy = true;
        }
        busy
    }

    /// Takes complete requests from the framer and starts them, within the per-poll bound and
    /// the reply-ring budget.
    fn start_requests(&mut self, slot: usize) -> bool {
        let mut busy = false;
        for _ in 0..limits::RPC_REQUESTS_PER_POLL_MAX {
            let Some(Some(connection)) = self.connections.get_mut(slot) else { return busy };
            // A batch may need up to RPC_BATCH_ENTRIES_MAX slots: start nothing without them.
            if self.in_flight + limits::RPC_BATCH_ENTRIES_MAX > limits::RPC_REPLY_RING_ENTRIES {
                connection.input_pending = true;
                return busy;
            }
            // The client is not keeping up with its replies, or has enough running: wait.
            if connection.unsent() >= limits::RPC_OUTPUT_PAUSE_BYTES
                || connection.in_flight >= limits::RPC_CONNECTION_IN_FLIGHT_MAX
            {
                connection.input_pending = true;
                return busy;
            }
            let value = match connection.framer.next_value() {
                Ok(Some(value)) => {
                    connection.ticket.handshake_done();
                    connection.last_active_ns = self.now_ns;
                    value
                }
                Ok(None) => {
                    connection.input_pending = false;
                    return busy;
                }
                Err(e) => {
                    connection
                        .queue_line(&framing::reply_bytes(Value::Null, Err(e.to_rpc_error())));
                    connection.closing = true;
                    connection.input_pending = false;
                    return true;
                }
            };
            busy = true;
            match value {
                Value::Array(elements) => self.start_batch(slot, elements),
                single => self.start_one(slot, single, Destination::Single),
            }
            // Most handlers answer at once: queue that answer now, so the output bound above
            // sees it before the next request starts.
            self.take_replies();
        }
        if let Some(Some(connection)) = self.connections.get_mut(slot) {
            connection.input_pending = true;
        }
        busy
    }

    fn start_batch(&mut self, slot: usize, elements: Vec<Value>) {
        let Some(Some(connection)) = self.connections.get_mut(slot) else { return };
        if elements.is_empty() || elements.len() > limits::RPC_BATCH_ENTRIES_MAX {
            let message = if elements.is_empty() {
                "Invalid request: empty batch".to_string()
            } else {
                format!(
                    "Invalid request: a batch of {} requests (at most {})",
                    elements.len(),
                    limits::RPC_BATCH_ENTRIES_MAX
                )
            };
            let error = RpcError::new(super::error::INVALID_REQUEST, message);
            connection.queue_line(&framing::reply_bytes(Value::Null, Err(error)));
            return;
        }
        let batch = connection.next_batch;
        connection.next_batch += 1;
        // Counted as running until every element was started, so none finishes it early.
        let count = elements.len();
        connection
            .batches
            .insert(batch, Batch { responses: vec![None; count], remaining: count + 1 });
        for (index, element) in elements.into_iter().enumerate() {
            self.start_one(slot, element, Destination::Batch { batch, index });
        }
        let Some(Some(connection)) = self.connections.get_mut(slot) else { return };
        if let Some(state) = connection.batches.get_mut(&batch) {
            state.remaining -= 1;
            if state.remaining == 0 {
                finish_batch(connection, batch);
            }
        }
    }

    /// Decodes one request and runs it; its reply comes back through the ring.
    fn start_one(&mut self, slot: usize, value: Value, destination: Destination) {
        let Some(Some(connection)) = self.connections.get_mut(slot) else { return };
        let generation = connection.generation;
        let request = match framing::decode_request(value) {
            Ok(request) => request,
            Err(bad) => {
                let response = Some(framing::reply_bytes(bad.id, Err(bad.error)));
                deliver_now(connection, destination, response);
                return;
            }
        };
        connection.in_flight += 1;
        self.in_flight += 1;
        let pending = PendingReply {
            ring: Arc::clone(&self.replies),
            slot,
            generation,
            destination,
            id: Some(request.id),
        };
        let reply: methods::Reply = Box::new(move |result| pending.answer(result));
        (self.dispatch)(&self.target, &request.method, request.params, reply);
    }

    fn close(&mut self, slot: usize) {
        if let Some(entry) = self.connections.get_mut(slot)
            && let Some(connection) = entry.take()
        {
            if connection.watched != (false, false) {
                runtime::unwatch_fd(connection.stream.as_raw_fd());
            }
            let _ = connection.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn stop_listening(&mut self) {
        if let Some(listener) = self.listener.take() {
            runtime::unwatch_fd(listener.as_raw_fd());
            drop(listener);
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_file(&self.lock_path);
            self.lock_file = None;
        }
    }
}

/// An element whose answer is known without running it (a malformed request).
fn deliver_now(connection: &mut Connection, destination: Destination, response: Option<Vec<u8>>) {
    match destination {
        Destination::Single => {
            if let Some(response) = response {
                connection.queue_line(&response);
            }
        }
        Destination::Batch { batch, index } => {
            if let Some(state) = connection.batches.get_mut(&batch) {
                if let Some(entry) = state.responses.get_mut(index) {
                    *entry = response;
                }
                state.remaining -= 1;
            }
        }
    }
}

/// Writes a finished batch's array (nothing if it held only successful notifications).
fn finish_batch(connection: &mut Connection, batch: u64) {
    let Some(state) = connection.batches.remove(&batch) else { return };
    let responses: Vec<Vec<u8>> = state.responses.into_iter().flatten().collect();
    if !responses.is_empty() {
        connection.queue_line(&framing::batch_bytes(&responses));
    }
}

/// Reads up to the per-poll bound into the connection's framer.
fn read_some(connection: &mut Connection) -> bool {
    let mut chunk = [0u8; 16 << 10];
    let mut total = 0;
    while total < limits::RPC_READ_BYTES_PER_POLL {
        let room = connection.framer.room().min(chunk.len());
        if room == 0 {
            break;
        }
        match connection.stream.read(&mut chunk[..room]) {
            Ok(0) => {
                connection.read_closed = true;
                return true;
            }
            Ok(n) => {
                total += n;
                connection.framer.push(&chunk[..n]);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                // A reset: nothing more can be read or written.
                connection.read_closed = true;
                connection.closing = true;
                return true;
            }
        }
    }
    total > 0
}

impl Poller for RpcPoller {
    fn poll(&mut self) -> PollStatus {
        self.now_ns = runtime::now_ns();
        let stopping = self.target.runtime.is_stopping();
        if stopping {
            self.stop_listening();
        }
        let mut busy = self.take_replies();
        if !stopping {
            busy |= self.accept();
        }
        for slot in 0..self.connections.len() {
            busy |= self.serve(slot, stopping);
        }
        while matches!(self.connections.last(), Some(None)) {
            self.connections.pop();
        }
        PollStatus::busy_if(busy)
    }

    fn name(&self) -> &str {
        "rpc"
    }

    fn begin_stop(&mut self) {
        self.stop_listening();
    }

    /// Drained once every started request has answered and its answer was written (or its
    /// client is gone).
    fn is_drained(&self) -> bool {
        self.in_flight == 0 && self.connections.iter().flatten().all(|c| c.unsent() == 0)
    }

    /// Replies already queued, or requests waiting in a framer that could start now, keep the
    /// reactor up. Unsent output does not: its socket's writability wakes the reactor.
    fn prepare_park(&mut self) -> bool {
        let budget_left =
            self.in_flight + limits::RPC_BATCH_ENTRIES_MAX <= limits::RPC_REPLY_RING_ENTRIES;
        self.replies.is_empty()
            && !(budget_left
                && self.connections.iter().flatten().any(|c| {
                    c.input_pending
                        && c.unsent() < limits::RPC_OUTPUT_PAUSE_BYTES
                        && c.in_flight < limits::RPC_CONNECTION_IN_FLIGHT_MAX
                }))
    }

    fn wake_fds(&self) -> Vec<i32> {
        self.listener.iter().map(|l| l.as_raw_fd()).collect()
    }
}

impl Drop for RpcPoller {
    fn drop(&mut self) {
        for slot in 0..self.connections.len() {
            self.close(slot);
        }
        self.stop_listening();
    }
}
