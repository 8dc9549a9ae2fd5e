//! The Linux calls std does not offer, through `rustix`: epoll and eventfd (reactor parking),
//! flock (exclusive base devices), the logical block size of a block device and a readiness
//! check (the listeners). Each wrapper turns the call's result into an `io::Result`; nothing
//! here runs per IO.
//!
//! This module is one of the few allowed `unsafe`, for one thing rustix leaves to its caller:
//! naming an open descriptor by its number ([`with_raw_fd`]), for the runtime's watch calls,
//! which take the numbers pollers and sockets give.
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, epoll};
use rustix::fs::FlockOperation;

/// Runs `call` with the open descriptor numbered `fd`.
///
/// The caller keeps `fd` open until `call` returns: the runtime's watch and unwatch calls come
/// from the descriptor's owner (a socket, an io_uring eventfd), which unwatches before closing.
pub fn with_raw_fd<R>(
    fd: RawFd,
    call: impl FnOnce(BorrowedFd<'_>) -> io::Result<R>,
) -> io::Result<R> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: `fd` is not -1, and the borrow ends with `call`, while the caller keeps the
    // descriptor open (see above); nothing here closes or keeps it.
    call(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// A non-blocking eventfd: a counter that wakes a parked reactor.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        let fd = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(EventFd(fd))
    }

    /// Adds one to the counter, waking any epoll that watches it.
    pub fn signal(&self) {
        // EAGAIN (counter saturated) still leaves it readable, which is all a wake needs.
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    /// Resets the counter to zero.
    pub fn drain(&self) {
        let mut value = [0u8; 8];
        // EAGAIN means it is zero already.
        let _ = rustix::io::read(&self.0, &mut value);
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// An epoll instance: the one wait a parked reactor sleeps in.
#[derive(Debug)]
pub struct Epoll(OwnedFd);

/// The data each watch carries: the descriptor's number (wake-ups are not told apart).
fn event_data(fd: BorrowedFd<'_>) -> epoll::EventData {
    epoll::EventData::new_u64(fd.as_raw_fd() as u64)
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        Ok(Epoll(epoll::create(epoll::CreateFlags::CLOEXEC)?))
    }

    /// Watches `fd` for readability (level-triggered).
    pub fn add(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(epoll::add(&self.0, fd, event_data(fd), epoll::EventFlags::IN)?)
    }

    /// Watches `fd` for readability and/or writability (level-triggered), adding it or
    /// changing its interest; neither removes it. For sockets with output waiting.
    pub fn watch(&self, fd: BorrowedFd<'_>, readable: bool, writable: bool) -> io::Result<()> {
        if !readable && !writable {
            self.remove(fd);
            return Ok(());
        }
        let mut flags = epoll::EventFlags::empty();
        if readable {
            flags |= epoll::EventFlags::IN;
        }
        if writable {
            flags |= epoll::EventFlags::OUT;
        }
        match epoll::modify(&self.0, fd, event_data(fd), flags) {
            // Not registered yet.
            Err(rustix::io::Errno::NOENT) => Ok(epoll::add(&self.0, fd, event_data(fd), flags)?),
            other => Ok(other?),
        }
    }

    /// Stops watching `fd`; one that was not watched is fine.
    pub fn remove(&self, fd: BorrowedFd<'_>) {
        let _ = epoll::delete(&self.0, fd);
    }

    /// Sleeps until a watched descriptor is ready or `timeout_ms` passes (for ever when
    /// negative); returns how many were.
    pub fn wait(&self, timeout_ms: i32) -> io::Result<usize> {
        let mut events = [const { MaybeUninit::<epoll::Event>::uninit() }; 16];
        let timeout = u64::try_from(timeout_ms).ok().map(|ms| Timespec {
            tv_sec: (ms / 1000) as i64,
            tv_nsec: ((ms % 1000) * 1_000_000) as i64,
        });
        match epoll::wait(&self.0, &mut events[..], timeout.as_ref()) {
            Ok((ready, _)) => Ok(ready.len()),
            Err(rustix::io::Errno::INTR) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether `fd` is readable now (a zero-timeout `poll`). A listener asks this before
/// `accept`, which allocates a socket even when it then fails with EAGAIN.
pub fn is_readable(fd: impl AsFd) -> bool {
    let mut entries = [PollFd::new(&fd, PollFlags::IN)];
    let ready = rustix::event::poll(&mut entries, Some(&Timespec { tv_sec: 0, tv_nsec: 0 }));
    ready.is_ok_and(|count| count > 0) && !entries[0].revents().is_empty()
}

/// Takes an exclusive, non-blocking `flock` on `fd`: a second daemon on the same file fails
/// instead of racing IO still draining from the first. `Ok(false)`: another holds it.
pub fn lock_exclusive(fd: impl AsFd) -> io::Result<bool> {
    match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Logical block size of the block device open on `fd`.
pub fn block_device_logical_block_size(fd: impl AsFd) -> io::Result<u32> {
    Ok(rustix::fs::ioctl_blksszget(fd)?)
}

/// Pins the calling thread to `core` (core_affinity, with an error instead of a bool).
pub fn pin_to_core(core: usize) -> io::Result<()> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let id = ids
        .into_iter()
        .find(|id| id.id == core)
        .ok_or_else(|| io::Error::other(format!("core {core} is not available")))?;
    if core_affinity::set_for_current(id) {
        Ok(())
    } else {
        Err(io::Error::other(format!("could not pin to core {core}")))
    }
}
