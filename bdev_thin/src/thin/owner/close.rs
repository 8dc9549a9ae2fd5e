//! Closing a pool without writing (DESIGN.md "A base device that goes away"): its data or
//! metadata device is gone, so a normal stop, which commits, cannot run. The pool on the
//! device is whatever its last commit left, and that is what the next open (examine, once
//! the device is back) finds; everything since is lost to the host as failed IO, never as a
//! half-written transaction.
//!
//! From the close on, the owner sends nothing to its devices: what it would submit is
//! completed as failed on its next poll, and what was in flight fails when it completes, so
//! every state machine ends by its own error path and no IO is acknowledged.
//! New requests and control operations are refused. Once no IO of its own is in flight, what
//! still waits (flushes and writes for a commit, ranges, snapshots, control operations) is
//! answered with an error and the owner finishes: the host drops it and releases its bdevs.

use super::super::types::PoolMode;
use super::{ControlDone, Op, Origin, Owner, OwnerReply, Payload, PoolError};
use crate::host::{
    BlockDevice, DeviceChannel, Host, IoCompletion, IoKind, IoRequest, IoStatus, PollStatus,
};

/// The status IO gets once its pool is closed: the device is gone.
const GONE: IoStatus = IoStatus::Failed(libc::ENXIO);

impl<D: BlockDevice, H: Host> Owner<D, H> {
    /// Starts the close: from here on nothing reaches the devices.
    pub(super) fn begin_close(&mut self, done: ControlDone<()>) {
        if self.finished || self.closing.is_some() {
            return done(Err(PoolError::Closed));
        }
        self.closing = Some(done);
        self.mode = PoolMode::Fail;
        self.commit_wanted = false;
        for view in self.views.values() {
            view.mark_deleted();
        }
        let backlog = std::mem::take(&mut self.backlog);
        let metadata_backlog = std::mem::take(&mut self.metadata_backlog);
        self.refused.extend(backlog);
        self.refused.extend(metadata_backlog);
        self.publish_counters();
    }

    /// One turn of a closing owner: completions (the device's own, then the refused ones),
    /// refusals of what arrives, and the end once nothing is in flight. Bounded work.
    pub(super) fn poll_closing(&mut self) -> PollStatus {
        self.refresh_channels();
        let mut busy = self.poll_device_closing();
        busy |= self.drain_passdown_completions();
        for _ in 0..self.refused.len() {
            let Some(request) = self.refused.pop_front() else { break };
            self.complete_device(IoCompletion { request, status: GONE });
            busy = true;
        }
        while let Some(message) = self.shared.inbox.pop() {
            self.fail_message(message, GONE);
            busy = true;
        }
        while let Some(message) = self.deferred.pop_front() {
            self.fail_message(message, GONE);
            busy = true;
        }
        for op in std::mem::take(&mut self.pending_control) {
            op.fail(PoolError::Closed);
        }
        while let Some(op) = self.control.pop() {
            op.fail(PoolError::Closed);
            busy = true;
        }
        busy |= self.retry_unsent();
        if self.nothing_in_flight() {
            self.finish_close();
            busy = true;
        }
        PollStatus::busy_if(busy)
    }

    /// Completions of IO that was in flight at the close: each fails, even one the device
    /// did, so that no write is acknowledged whose mapping can no longer be committed.
    fn poll_device_closing(&mut self) -> bool {
        let mut completed = std::mem::take(&mut self.completed);
        let mut count = self.data.poll(&mut |completion| completed.push(completion));
        if let Some(channel) = self.metadata_channel.as_mut()
            && channel.in_flight() > 0
        {
            count += channel.poll(&mut |completion| completed.push(completion));
        }
        for IoCompletion { request, .. } in completed.drain(..) {
            self.complete_device(IoCompletion { request, status: GONE });
        }
        self.completed = completed;
        count > 0
    }

    fn nothing_in_flight(&self) -> bool {
        self.refused.is_empty()
            && self.passdown_done.is_empty()
            && self.data.in_flight() == 0
            && self.metadata_channel.as_ref().is_none_or(|c| c.in_flight() == 0)
    }

    /// Answers everything that still waits, then the close itself.
    fn finish_close(&mut self) {
        for index in 0..self.ops.len() {
            match self.free_op(index) {
                Some(Op::Flush(flush)) => {
                    let reply =
                        OwnerReply { token: flush.token, request: flush.request, status: GONE };
                    self.reply(flush.channel, reply);
                }
                Some(Op::Write(write)) => {
                    // A range's own block writes are answered with their range.
                    if let Origin::Channel { channel, token } = write.origin {
                        let request = match write.payload {
                            Payload::Data(request) => request,
                            Payload::Zeroes => IoRequest::new(IoKind::WriteZeroes, 0, 0, token),
                        };
                        self.reply(channel, OwnerReply { token, request, status: GONE });
                    }
                }
                Some(Op::Range(range)) => match range.control {
                    Some(done) => done(Err(PoolError::Closed)),
                    None => {
                        let reply =
                            OwnerReply { token: range.token, request: range.request, status: GONE };
                        self.reply(range.channel, reply);
                    }
                },
                None => {}
            }
        }
        self.zeroing.clear();
        for snapshot in std::mem::take(&mut self.snapshots) {
            if let Some(done) = snapshot.done {
                done(Err(PoolError::Closed));
            }
        }
        for (_, done) in std::mem::take(&mut self.control_commits) {
            done(Err(PoolError::Closed));
        }
        if let Some(done) = self.clearing.take() {
            done(Err(PoolError::Closed));
        }
        self.retry_unsent();
        self.finished = true;
        if let Some(done) = self.closing.take() {
            done(Ok(()));
        }
    }
}
