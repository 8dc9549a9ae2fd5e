//! A TCP listener: one per address, shared by every subsystem listening there (counted), a
//! poller on the first core that accepts connections and deals them round-robin to every
//! core's reactor, where each becomes a queue pair poller.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::qpair::Connection;
use super::{ListenAddress, NvmfError, NvmfShared};
use crate::host::{CoreId, Host, PollStatus, Poller};
use crate::runtime::{self, RuntimeHandle};

/// Loop turns between two looks at the listening socket (accepting is rare; the socket also
/// wakes a parked reactor).
const TURNS_PER_CHECK: u32 = 64;
/// Connections accepted per poll.
const ACCEPTS_PER_POLL_MAX: usize = 16;

/// A bound address and the subsystems using it.
pub(super) struct Listener {
    pub(super) address: ListenAddress,
    pub(super) local_address: SocketAddr,
    users: AtomicU32,
    stop: Arc<AtomicBool>,
}

impl Listener {
    pub(super) fn retain(&self) {
        self.users.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops one user; true (and the socket closes) when it was the last.
    pub(super) fn release(&self) -> bool {
        if self.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.stop();
            return true;
        }
        false
    }

    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Binds `address` and starts accepting on the first core.
pub(super) fn start(
    runtime: &RuntimeHandle,
    shared: &Arc<NvmfShared>,
    address: ListenAddress,
) -> Result<Arc<Listener>, NvmfError> {
    let socket_address = address.socket_address()?;
    let bind_error = |source| NvmfError::Bind { address: socket_address, source };
    let socket = TcpListener::bind(socket_address).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    let local_address = socket.local_addr().map_err(bind_error)?;
    let stop = Arc::new(AtomicBool::new(false));
    let poller = ListenerPoller {
        socket: Some(socket),
        address: address.clone(),
        stop: Arc::clone(&stop),
        shared: Arc::clone(shared),
        runtime: runtime.clone(),
        cores: runtime.cores(),
        next_core: 0,
        turn_count: 0,
        refused_count: 0,
    };
    runtime.add_poller(runtime.first_core(), Box::new(poller)).map_err(|_| NvmfError::Stopping)?;
    eprintln!("nvmf: listening on {address} ({local_address})");
    Ok(Arc::new(Listener { address, local_address, users: AtomicU32::new(1), stop }))
}

struct ListenerPoller {
    socket: Option<TcpListener>,
    address: ListenAddress,
    stop: Arc<AtomicBool>,
    shared: Arc<NvmfShared>,
    runtime: RuntimeHandle,
    cores: Vec<CoreId>,
    next_core: usize,
    turn_count: u32,
    refused_count: u64,
}

impl ListenerPoller {
    fn close(&mut self) {
        if let Some(socket) = self.socket.take() {
            runtime::unwatch_fd(socket.as_raw_fd());
        }
    }

    /// Logs a refused connection: the first and then every power of two, so a flood of them
    /// cannot flood the log.
    fn log_refusal(&mut self, stream: &TcpStream, reason: &str) {
        self.refused_count += 1;
        if self.refused_count.is_power_of_two() {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            eprintln!(
                "nvmf: {}: connection from {peer} refused: {reason} ({} refused so far)",
                self.address, self.refused_count
            );
        }
    }

    /// Admits `stream` and gives it to the next core; a refused one is dropped (the host sees
    /// the connection close).
    fn hand_off(&mut self, stream: TcpStream) {
        let Some(options) = self.shared.transport() else {
            return self.log_refusal(&stream, "no TCP transport (nvmf_create_transport)");
        };
        if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
            return self.log_refusal(&stream, "socket options failed");
        }
        let core = self.cores.get(self.next_core % self.cores.len().max(1)).copied();
        let core = core.unwrap_or_else(|| self.runtime.first_core());
        // At the cap, admission closes the connection waiting longest for its ICReq, or
        // refuses this one (and logs either).
        let now_ns = runtime::now_ns();
        let Some(ticket) = self.shared.admission.admit(now_ns, self.runtime.waker(core)) else {
            return;
        };
        self.next_core = self.next_core.wrapping_add(1);
        let shared = Arc::clone(&self.shared);
        let listen = self.address.clone();
        let runtime = self.runtime.clone();
        // Not sent (the runtime stops): the closure, its stream and its ticket are dropped.
        let _ = self.runtime.send(core, move |ctx| {
            let connection =
                Connection::new(stream, ticket, shared, options, listen, runtime, ctx.core());
            ctx.add_local_poller(Box::new(connection));
        });
    }
}

impl Poller for ListenerPoller {
    fn poll(&mut self) -> PollStatus {
        if self.stop.load(Ordering::Relaxed) || self.shared.is_stopping() {
            self.close();
            return PollStatus::Idle;
        }
        self.turn_count = self.turn_count.wrapping_add(1);
        if !self.turn_count.is_multiple_of(TURNS_PER_CHECK) {
            return PollStatus::Idle;
        }
        let mut accepted = 0;
        while accepted < ACCEPTS_PER_POLL_MAX {
            let Some(socket) = self.socket.as_ref() else { break };
            if !crate::sys::is_readable(socket.as_raw_fd()) {
                break;
            }
            match socket.accept() {
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
        "nvmf_listener"
    }

    fn begin_stop(&mut self) {
        self.close();
    }

    fn is_finished(&self) -> bool {
        self.socket.is_none()
    }

    fn wake_fds(&self) -> Vec<i32> {
        self.socket.iter().map(|s| s.as_raw_fd()).collect()
    }
}

impl Drop for ListenerPoller {
    fn drop(&mut self) {
        self.close();
    }
}
