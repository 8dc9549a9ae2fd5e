//! The few Linux calls std does not offer: epoll and eventfd (reactor parking), flock (exclusive
//! base devices), the block-device size ioctls and a readiness check (the NBD listener). Each
//! wrapper checks its arguments and turns the C result into an `io::Result`; nothing here runs
//! per IO.
//!
//! This module is one of the few allowed `unsafe`: every block is one libc call on a descriptor
//! the wrapper owns or borrows.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(result) }
}

/// A non-blocking eventfd: a counter that wakes a parked reactor.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by eventfd and is owned by no one else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds one to the counter, waking any epoll that watches it.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our descriptor. EAGAIN (counter saturated)
        // still leaves it readable, which is all a wake needs, so the result is ignored.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter to zero.
    pub fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our descriptor; EAGAIN means already zero.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An epoll instance: the one wait a parked reactor sleeps in.
#[derive(Debug)]
pub struct Epoll(OwnedFd);

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers; a non-negative result is a new descriptor we own.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by epoll_create1.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for readability (level-triggered).
    pub fn add(&self, fd: RawFd) -> io::Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd as u64 };
        // SAFETY: `event` is a live epoll_event; epoll copies it before returning.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) })
            .map(drop)
    }

    /// Watches `fd` for readability and/or writability (level-triggered), adding it or
    /// changing its interest; neither removes it. For sockets with output waiting.
    pub fn watch(&self, fd: RawFd, readable: bool, writable: bool) -> io::Result<()> {
        if !readable && !writable {
            self.remove(fd);
            return Ok(());
        }
        let mut events = 0u32;
        if readable {
            events |= libc::EPOLLIN as u32;
        }
        if writable {
            events |= libc::EPOLLOUT as u32;
        }
        let mut event = libc::epoll_event { events, u64: fd as u64 };
        // SAFETY: `event` is a live epoll_event; epoll copies it before returning.
        let modified =
            unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut event) };
        match check(modified) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // SAFETY: as above; the descriptor was not registered yet.
                check(unsafe {
                    libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event)
                })
                .map(drop)
            }
            other => other.map(drop),
        }
    }

    pub fn remove(&self, fd: RawFd) {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; ENOENT (already gone) is fine to ignore.
        let _ = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut event) };
    }

    /// Sleeps until a watched descriptor is ready or `timeout_ms` passes; returns how many were.
    pub fn wait(&self, timeout_ms: i32) -> io::Result<usize> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
        // SAFETY: the pointer and length describe `events`, which outlives the call.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        match check(n) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// Whether `fd` is readable now (a zero-timeout `poll`). A listener asks this before
/// `accept`, which allocates a socket even when it then fails with EAGAIN.
pub fn is_readable(fd: RawFd) -> bool {
    let mut entry = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: the pointer names one live pollfd and the count is 1; timeout 0 never blocks.
    let ready = unsafe { libc::poll(&mut entry, 1, 0) };
    ready > 0 && entry.revents != 0
}

/// Takes an exclusive, non-blocking `flock` on `fd`: a second daemon on the same file fails
/// instead of racing IO still draining from the first.
pub fn lock_exclusive(fd: RawFd) -> io::Result<bool> {
    // SAFETY: flock takes no pointers; `fd` is a descriptor the caller owns.
    match check(unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;

/// Size in bytes of the block device open on `fd`.
pub fn block_device_size_bytes(fd: RawFd) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
    check(unsafe { libc::ioctl(fd, BLKGETSIZE64, &mut size as *mut u64) })?;
    Ok(size)
}

/// Logical block size of the block device open on `fd`.
pub fn block_device_logical_block_size(fd: RawFd) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at `size`.
    check(unsafe { libc::ioctl(fd, BLKSSZGET, &mut size as *mut libc::c_int) })?;
    u32::try_from(size).map_err(|_| io::Error::other("negative logical block size"))
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

/// CPU time this process has used, in microseconds (user + system), for idle-cost figures.
pub fn process_cpu_time_us() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct the pointer names; it was zero-initialised.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let to_us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    to_us(usage.ru_utime) + to_us(usage.ru_stime)
}
