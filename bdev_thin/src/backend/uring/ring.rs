//! The io_uring instance of one uring channel, and the one place its submission entries are
//! built. An entry points into the buffers of the request waiting in the channel's slot and, for
//! vectored IO, into this ring's iovec table at the same slot; the channel keeps both untouched
//! until the entry's completion is reaped, and waits for every in-flight entry before it drops.
//!
//! This module is one of the few allowed `unsafe`: pushing entries whose pointers the kernel
//! follows after the call returns.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

use io_uring::{IoUring, opcode, squeue, types};

use crate::host::{IoFlags, IoKind, IoRequest};
use crate::limits;

/// `_IO(0x12, 0)` from `include/uapi/linux/blkdev.h` (Linux 6.12+): discard a byte range of a
/// block device; `addr` = start, `addr3` (the first 8 bytes of `cmd`) = length.
const BLOCK_URING_CMD_DISCARD: u32 = 0x1200;

/// How an unmap or write_zeroes reaches the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeallocateMethod {
    /// `fallocate` through the ring (files; block devices on old kernels).
    Fallocate,
    /// `BLOCK_URING_CMD_DISCARD` (block devices, Linux 6.12+).
    UringCmdDiscard,
}

/// Why an entry could not be pushed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The submission queue is full: submit, then retry.
    Full,
    /// The request cannot be expressed (too many segments).
    Invalid,
}

pub(crate) struct Ring {
    uring: IoUring,
    iovecs: Box<[[libc::iovec; limits::IO_SEGMENTS_MAX]]>,
}

impl Ring {
    /// A ring for the one file `fd`, registered as fixed file 0 so no IO pays for looking the
    /// descriptor up.
    pub(crate) fn new(entries: u32, slots: usize, fd: RawFd) -> io::Result<Ring> {
        // COOP_TASKRUN: the kernel posts completions at our next syscall instead of
        // interrupting the reactor (an IPI, a VM exit here) for each one; TASKRUN_FLAG tells a
        // polling reactor that such work waits (`has_task_work`). A parked reactor is still
        // woken: the notification wakes interruptible sleepers such as `epoll_wait`.
        let uring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(entries * 2)
            .build(entries)?;
        uring.submitter().register_files(&[fd])?;
        let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        Ok(Ring { uring, iovecs: vec![[empty; limits::IO_SEGMENTS_MAX]; slots].into_boxed_slice() })
    }

    /// Queues the entry for `request`, tagged with `slot`.
    ///
    /// The caller must keep `request` (and so its buffers) alive and unmoved in `slot`, and not
    /// push another entry for `slot`, until [`Ring::reap`] reports `slot` complete.
    pub(crate) fn push(
        &mut self,
        slot: u16,
        request: &mut IoRequest,
        byte_offset: u64,
        byte_length: u64,
        deallocate: DeallocateMethod,
    ) -> Result<(), PushError> {
        let fd = types::Fixed(0);
        let user_data = u64::from(slot);
        let entry = match request.kind {
            IoKind::Read | IoKind::Write => {
                let write = request.kind == IoKind::Write;
                let segments = request.buffers.segments_mut();
                let rw_flags =
                    if write && request.flags.contains(IoFlags::FUA) { libc::RWF_DSYNC } else { 0 };
                if let [single] = segments {
                    let length = u32::try_from(single.len()).map_err(|_| PushError::Invalid)?;
                    if write {
                        opcode::Write::new(fd, single.as_ptr(), length)
                            .offset(byte_offset)
                            .rw_flags(rw_flags)
                            .build()
                    } else {
                        opcode::Read::new(fd, single.as_mut_ptr(), length)
                            .offset(byte_offset)
                            .build()
                    }
                } else {
                    let table = self.iovecs.get_mut(usize::from(slot)).ok_or(PushError::Invalid)?;
                    if segments.len() > table.len() {
                        return Err(PushError::Invalid);
                    }
                    for (iovec, segment) in table.iter_mut().zip(segments.iter_mut()) {
                        *iovec = libc::iovec {
                            iov_base: segment.as_mut_ptr().cast(),
                            iov_len: segment.len(),
                        };
                    }
                    let count = segments.len() as u32; // <= IO_SEGMENTS_MAX
                    if write {
                        opcode::Writev::new(fd, table.as_ptr(), count)
                            .offset(byte_offset)
                            .rw_flags(rw_flags)
                            .build()
                    } else {
                        opcode::Readv::new(fd, table.as_ptr(), count).offset(byte_offset).build()
                    }
                }
            }
            IoKind::Flush => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
            IoKind::Unmap => match deallocate {
                DeallocateMethod::UringCmdDiscard => {
                    let mut cmd = [0u8; 16];
                    cmd[..8].copy_from_slice(&byte_length.to_ne_bytes());
                    opcode::UringCmd16::new(fd, BLOCK_URING_CMD_DISCARD)
                        .addr(Some(byte_offset))
                        .cmd(cmd)
                        .build()
                }
                DeallocateMethod::Fallocate => opcode::Fallocate::new(fd, byte_length)
                    .offset(byte_offset)
                    .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                    .build(),
            },
            IoKind::WriteZeroes => {
                // On a block device, PUNCH_HOLE means "zero, unmapping if the device can".
                let keep_allocated = request.flags.contains(IoFlags::NO_UNMAP)
                    || deallocate == DeallocateMethod::Fallocate;
                let mode = if keep_allocated {
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                };
                opcode::Fallocate::new(fd, byte_length).offset(byte_offset).mode(mode).build()
            }
            // A reset completes once everything submitted before it has.
            IoKind::Reset => opcode::Nop::new().build().flags(squeue::Flags::IO_DRAIN),
        };
        let entry = entry.user_data(user_data);
        // SAFETY: the entry's pointers name the request's buffers (heap memory owned by the
        // request, which the caller keeps in `slot` until the completion is reaped) and this
        // ring's iovec table row `slot` (boxed, never reallocated, rewritten only for a new
        // entry of the same slot, which the caller forbids while this one is in flight).
        unsafe { self.uring.submission().push(&entry) }.map_err(|_| PushError::Full)
    }

    /// Hands queued entries to the kernel (one syscall for the whole batch).
    pub(crate) fn submit(&mut self) -> io::Result<usize> {
        self.uring.submit()
    }

    /// Blocks until at least `want` completions are ready (only when closing a channel).
    pub(crate) fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        self.uring.submit_and_wait(want)
    }

    /// Peeks the completion queue without entering the kernel; calls `f(slot, result)`.
    pub(crate) fn reap(&mut self, mut f: impl FnMut(u16, i32)) -> usize {
        let mut count = 0;
        for entry in self.uring.completion() {
            // Slots are u16 by construction (see `push`).
            f(entry.user_data() as u16, entry.result());
            count += 1;
        }
        count
    }

    /// Whether completions wait in the kernel for this task to enter it (COOP_TASKRUN).
    pub(crate) fn has_task_work(&mut self) -> bool {
        self.uring.submission().taskrun()
    }

    pub(crate) fn has_completions(&mut self) -> bool {
        !self.uring.completion().is_empty()
    }

    /// Drops the ring's reference to its file now. The kernel tears a ring down
    /// asynchronously, and a registered file would otherwise stay open (and its flock held) for
    /// a while after the channel closed.
    pub(crate) fn unregister_file(&self) {
        let _ = self.uring.submitter().unregister_files();
    }

    pub(crate) fn register_eventfd(&self, fd: RawFd) -> io::Result<()> {
        self.uring.submitter().register_eventfd(fd)
    }

    pub(crate) fn set_eventfd_enabled(&mut self, enabled: bool) {
        let completion = self.uring.completion();
        if enabled {
            completion.enable_eventfd();
        } else {
            completion.disable_eventfd();
        }
    }
}
