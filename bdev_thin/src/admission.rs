//! Admission of network connections, shared by the servers (the JSON-RPC socket, NBD, and any
//! later TCP frontend): a cap on the connections served at once, a deadline for a connection's
//! handshake, room made at the cap by closing the connection that has waited longest for its
//! handshake, and every refusal, eviction and timeout logged.
//!
//! What a "handshake" is belongs to the server: NBD's negotiation up to transmission, the
//! first complete JSON-RPC request. A connection that has not finished it holds a slot without
//! having asked for anything, so it is the one that may be closed: after the handshake timeout,
//! or at once when the cap is reached and a new client knocks. A connection past its handshake
//! is never evicted (it may be an idle but legitimate disk or client); servers with an idle
//! timeout enforce it themselves with [`ConnectionTimeouts::idle_ms`].
//!
//! Control plane: the lock is taken when a connection is accepted, finishes its handshake or
//! closes, never per request. Connections may live on other cores than the listener: an
//! evicted one learns it from its ticket's flag, and its reactor is woken to notice.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::host::Waker;
use crate::limits;

/// How long a connection may take, configurable per target (`thin_tgt --handshake-timeout-ms
/// --idle-timeout-ms`); tests set small values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionTimeouts {
    /// From accept to the end of the handshake.
    pub handshake_ms: u64,
    /// With nothing asked and nothing to answer, for servers that close idle connections.
    pub idle_ms: u64,
}

impl Default for ConnectionTimeouts {
    fn default() -> Self {
        ConnectionTimeouts {
            handshake_ms: limits::CONNECTION_HANDSHAKE_TIMEOUT_MS,
            idle_ms: limits::RPC_IDLE_TIMEOUT_MS,
        }
    }
}

/// Why a server closes a connection it admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The cap was reached and this connection had waited longest for its handshake.
    Evicted,
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// Nothing asked and nothing to answer for the idle timeout.
    Idle,
}

/// Connections still in their handshake, oldest first, with what it takes to close one.
struct Waiting<W: Waker> {
    id: u64,
    evict: Arc<AtomicBool>,
    waker: W,
}

struct State<W: Waker> {
    /// Connections counted against the cap (an evicted one stops counting at once).
    admitted_count: usize,
    next_id: u64,
    handshaking: VecDeque<Waiting<W>>,
    refused_count: u64,
    evicted_count: u64,
    timed_out_count: u64,
    idle_closed_count: u64,
}

/// The admission state of one server.
pub struct Admission<W: Waker> {
    /// The server's name in logs (`rpc`, `nbd`).
    server: &'static str,
    connections_max: usize,
    timeouts: ConnectionTimeouts,
    state: Mutex<State<W>>,
}

/// Logs the first event of a kind and then every power of two, with the running count: a
/// flood of clients cannot flood the log.
fn log_sparsely(count: u64, line: impl FnOnce() -> String) {
    if count.is_power_of_two() {
        eprintln!("{} ({count} so far)", line());
    }
}

impl<W: Waker> Admission<W> {
    pub fn new(
        server: &'static str,
        connections_max: usize,
        timeouts: ConnectionTimeouts,
    ) -> Arc<Admission<W>> {
        Arc::new(Admission {
            server,
            connections_max,
            timeouts,
            state: Mutex::new(State {
                admitted_count: 0,
                next_id: 0,
                handshaking: VecDeque::new(),
                refused_count: 0,
                evicted_count: 0,
                timed_out_count: 0,
                idle_closed_count: 0,
            }),
        })
    }

    pub fn timeouts(&self) -> ConnectionTimeouts {
        self.timeouts
    }

    /// Connections counted against the cap now.
    pub fn admitted_count(&self) -> usize {
        self.lock().admitted_count
    }

    /// Admits a connection accepted at `now_ns`, served where `waker` wakes. At the cap, the
    /// connection that has waited longest for its handshake is told to close and makes room;
    /// with none to close, the new one is refused (`None`: the caller drops it, so the client
    /// reads EOF).
    pub fn admit(self: &Arc<Self>, now_ns: u64, waker: W) -> Option<Ticket<W>> {
        let mut state = self.lock();
        if state.admitted_count >= self.connections_max {
            let Some(victim) = state.handshaking.pop_front() else {
                state.refused_count += 1;
                let count = state.refused_count;
                drop(state);
                log_sparsely(count, || {
                    format!(
                        "{}: {} connections, all past their handshake (the most served): \
                         refused a new one",
                        self.server, self.connections_max
                    )
                });
                return None;
            };
            victim.evict.store(true, Ordering::SeqCst);
            victim.waker.wake();
            state.admitted_count -= 1;
            state.evicted_count += 1;
            let count = state.evicted_count;
            log_sparsely(count, || {
                format!(
                    "{}: {} connections (the most served): closing the one waiting longest for \
                     its handshake to admit a new one",
                    self.server, self.connections_max
                )
            });
        }
        let id = state.next_id;
        state.next_id += 1;
        state.admitted_count += 1;
        let evict = Arc::new(AtomicBool::new(false));
        state.handshaking.push_back(Waiting { id, evict: Arc::clone(&evict), waker });
        Some(Ticket {
            admission: Arc::clone(self),
            id,
            accepted_ns: now_ns,
            evict,
            handshaking: true,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<W>> {
        // Plain counters and a queue: a panic elsewhere must not stop admissions.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One admitted connection's place; dropping it (the connection closed) frees the place.
pub struct Ticket<W: Waker> {
    admission: Arc<Admission<W>>,
    id: u64,
    accepted_ns: u64,
    evict: Arc<AtomicBool>,
    handshaking: bool,
}

impl<W: Waker> Ticket<W> {
    /// The handshake finished: from now on the connection is neither timed out nor evicted
    /// by admission.
    pub fn handshake_done(&mut self) {
        if !self.handshaking {
            return;
        }
        self.handshaking = false;
        let mut state = self.admission.lock();
        state.handshaking.retain(|w| w.id != self.id);
    }

    pub fn timeouts(&self) -> ConnectionTimeouts {
        self.admission.timeouts
    }

    pub fn is_handshaking(&self) -> bool {
        self.handshaking
    }

    /// Whether the connection must close now: evicted, or its handshake took too long. Cheap
    /// (a load and a comparison): servers ask on every poll.
    pub fn close_reason(&self, now_ns: u64) -> Option<CloseReason> {
        if self.evict.load(Ordering::Relaxed) {
            return Some(CloseReason::Evicted);
        }
        let deadline_ns = self.admission.timeouts.handshake_ms.saturating_mul(1_000_000);
        if self.handshaking && now_ns.saturating_sub(self.accepted_ns) >= deadline_ns {
            return Some(CloseReason::HandshakeTimeout);
        }
        None
    }

    /// Logs (sparsely) that the server closes this connection for `reason`. Evictions were
    /// logged when they were decided.
    pub fn log_close(&self, reason: CloseReason) {
        let admission = &self.admission;
        let timeouts = admission.timeouts;
        let mut state = admission.lock();
        let (count, line) = match reason {
            CloseReason::Evicted => return,
            CloseReason::HandshakeTimeout => {
                state.timed_out_count += 1;
                let line = format!(
                    "{}: closed a connection that did not finish its handshake within {} ms",
                    admission.server, timeouts.handshake_ms
                );
                (state.timed_out_count, line)
            }
            CloseReason::Idle => {
                state.idle_closed_count += 1;
                let line = format!(
                    "{}: closed a connection idle for {} ms",
                    admission.server, timeouts.idle_ms
                );
                (state.idle_closed_count, line)
            }
        };
        drop(state);
        log_sparsely(count, || line);
    }
}

impl<W: Waker> Drop for Ticket<W> {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        // An evicted connection stopped counting when it was chosen.
        if !self.evict.load(Ordering::SeqCst) {
            state.admitted_count -= 1;
            if self.handshaking {
                state.handshaking.retain(|w| w.id != self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::NoopWaker;

    fn admission(max: usize) -> Arc<Admission<NoopWaker>> {
        Admission::new("test", max, ConnectionTimeouts { handshake_ms: 10, idle_ms: 100 })
    }

    #[test]
    fn at_the_cap_the_oldest_handshake_makes_room_and_the_rest_is_refused() {
        let admission = admission(2);
        let first = admission.admit(0, NoopWaker).unwrap();
        let mut second = admission.admit(1, NoopWaker).unwrap();
        second.handshake_done();
        let third = admission.admit(2, NoopWaker).expect("the first one makes room");
        assert_eq!(first.close_reason(2), Some(CloseReason::Evicted));
        assert_eq!(second.close_reason(2), None);
        assert_eq!(admission.admitted_count(), 2);
        drop(first);
        assert_eq!(admission.admitted_count(), 2, "the evicted one no longer counted");
        let mut third = third;
        third.handshake_done();
        assert!(admission.admit(3, NoopWaker).is_none(), "nobody left to evict");
        drop(second);
        assert!(admission.admit(4, NoopWaker).is_some());
    }

    #[test]
    fn the_handshake_deadline_counts_from_accept_and_ends_with_the_handshake() {
        let admission = admission(4);
        let mut ticket = admission.admit(1_000_000, NoopWaker).unwrap();
        assert_eq!(ticket.close_reason(10_999_999), None);
        assert_eq!(ticket.close_reason(11_000_000), Some(CloseReason::HandshakeTimeout));
        ticket.handshake_done();
        assert_eq!(ticket.close_reason(u64::MAX), None);
    }
}
