//! The simulated frontends: requests from one sector to 4 MiB on every channel, up to each
//! channel's depth, and the check of every read against the oracle (I3, snapshot stability).

use crate::host::{
    DeviceChannel, IoBuffer, IoCompletion, IoFlags, IoKind, IoRequest, IoStatus, SgList,
};
use crate::thin::types::{DiscardMode, VolumeId};

use super::oracle::{Content, Entry, Oracle, Verdict, decode, pattern};
use super::{Failure, REQUEST_SECTORS_MAX, SECTOR, Sim, fail, trace};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UserKind {
    Read,
    Write { fua: bool },
    Unmap,
    WriteZeroes { fua: bool },
    Flush,
}

pub(super) struct UserOp {
    pub kind: UserKind,
    pub volume: VolumeId,
    pub lba: u64,
    pub count: u64,
    pub issue: u64,
    /// First and count of the sectors the oracle gave a version (unmap: whole blocks only).
    pub versioned: (u64, u64),
    /// Bytes of its buffer (the in-flight bound).
    pub bytes: u64,
}

impl Sim {
    /// A request's place: a few blocks (aligned or not), or now and then a large one.
    fn draw_range(&mut self, blocks: u64) -> (u64, u64) {
        let lpb = self.lbas_per_block;
        let size_lbas = blocks * lpb;
        if self.rng.chance(self.workload.large_request_per_mille) {
            let count = self.rng.log_range(1, REQUEST_SECTORS_MAX.min(size_lbas));
            let lba = if self.rng.chance(500) {
                self.rng.below(blocks.saturating_sub(count.div_ceil(lpb)) + 1) * lpb
            } else {
                self.rng.below(size_lbas - count + 1)
            };
            return (lba, count);
        }
        if self.rng.chance(500) {
            let first = self.rng.below(blocks);
            let n = self.rng.range(1, 3.min(blocks - first));
            (first * lpb, n * lpb)
        } else {
            let lba = self.rng.below(size_lbas);
            let n = self.rng.range(1, (3 * lpb).min(size_lbas - lba));
            (lba, n)
        }
    }

    pub(super) fn submit_user(&mut self) -> Result<(), Failure> {
        if self.ops.len() >= self.workload.in_flight_max
            || self.in_flight_bytes >= self.workload.in_flight_bytes_max
        {
            return Ok(());
        }
        // While writes are held across snapshots, their origins take only the race's bursts:
        // a steady stream of owner writes would keep an origin busy and the snapshots waiting.
        let racing = if self.step < self.races.hold_writes_until {
            self.snapshot_origins()
        } else {
            Vec::new()
        };
        let candidates: Vec<VolumeId> = self
            .volumes
            .iter()
            .filter(|(id, v)| !v.frozen && !racing.contains(id))
            .map(|(id, _)| *id)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let volume = self.rng.pick(&candidates);
        let (blocks, channel_count) = {
            let v = &self.volumes[&volume];
            (v.blocks, v.channels.len())
        };
        let fua = self.rng.chance(self.workload.fua_per_mille);
        let kind = match self.rng.below(100) {
            0..=39 => UserKind::Read,
            40..=77 => UserKind::Write { fua },
            78..=86 => UserKind::Unmap,
            87..=94 => UserKind::WriteZeroes { fua },
            _ => UserKind::Flush,
        };
        let (lba, count) = if kind == UserKind::Flush { (0, 0) } else { self.draw_range(blocks) };
        let no_unmap = matches!(kind, UserKind::WriteZeroes { .. }) && self.rng.chance(200);
        let which = self.rng.below(channel_count as u64) as usize;
        self.submit_to(volume, which, kind, lba, count, no_unmap)?;
        Ok(())
    }

    /// Submits one request to channel `which` of `volume`; false when the channel refused it
    /// (at its depth: the frontend waits).
    pub(super) fn submit_to(
        &mut self,
        volume: VolumeId,
        which: usize,
        kind: UserKind,
        lba: u64,
        count: u64,
        no_unmap: bool,
    ) -> Result<bool, Failure> {
        let lpb = self.lbas_per_block;
        let fua =
            matches!(kind, UserKind::Write { fua: true } | UserKind::WriteZeroes { fua: true });
        let id = self.next_id;
        self.next_id += 1;
        let issue = self.tick();
        let mut flags = if fua { IoFlags::FUA } else { IoFlags::NONE };
        let bytes = count * SECTOR as u64;
        let request = match kind {
            UserKind::Read => IoRequest::new(IoKind::Read, lba, count, id)
                .with_buffers(SgList::single(IoBuffer::new(bytes as usize))),
            UserKind::Write { .. } => IoRequest::new(IoKind::Write, lba, count, id)
                .with_buffers(pattern(id, volume, lba, count))
                .with_flags(flags),
            UserKind::Unmap => IoRequest::new(IoKind::Unmap, lba, count, id),
            UserKind::WriteZeroes { .. } => {
                if no_unmap {
                    flags = flags.with(IoFlags::NO_UNMAP);
                }
                IoRequest::new(IoKind::WriteZeroes, lba, count, id).with_flags(flags)
            }
            UserKind::Flush => IoRequest::new(IoKind::Flush, 0, 0, id),
        };
        let versioned = match kind {
            UserKind::Write { .. } | UserKind::WriteZeroes { .. } => (lba, count),
            UserKind::Unmap if self.settings.pool.discard != DiscardMode::Ignore => {
                let first = lba.div_ceil(lpb);
                let end = ((lba + count) / lpb).max(first);
                (first * lpb, (end - first) * lpb)
            }
            _ => (0, 0),
        };
        let Some(channel) = self.volumes.get_mut(&volume).and_then(|v| v.channels.get_mut(which))
        else {
            return Ok(false);
        };
        if channel.submit(request).is_err() {
            // The channel is at its depth: the frontend waits (back-pressure).
            return Ok(false);
        }
        if versioned.1 > 0 {
            let zero = !matches!(kind, UserKind::Write { .. });
            let entry = Entry {
                id,
                zero,
                issue,
                done: u64::MAX,
                ok: false,
                base: false,
                at_snapshot: false,
            };
            self.oracle.add(volume, versioned.0, versioned.1, entry);
        }
        trace(self.step, || format!("submit #{id} {kind:?} {volume} lba {lba}+{count}"));
        let buffer_bytes =
            if matches!(kind, UserKind::Read | UserKind::Write { .. }) { bytes } else { 0 };
        self.in_flight_bytes += buffer_bytes;
        self.ops
            .insert(id, UserOp { kind, volume, lba, count, issue, versioned, bytes: buffer_bytes });
        self.report.ios += 1;
        Ok(true)
    }

    pub(super) fn poll_channel(&mut self, volume: VolumeId, which: usize) -> Result<(), Failure> {
        let mut done = Vec::new();
        if let Some(channel) = self.volumes.get_mut(&volume).and_then(|v| v.channels.get_mut(which))
        {
            channel.poll(&mut |c| done.push(c));
        }
        for completion in done {
            self.user_done(completion)?;
        }
        Ok(())
    }

    pub(super) fn poll_random_channel(&mut self) -> Result<(), Failure> {
        let all: Vec<(VolumeId, usize)> = self
            .volumes
            .iter()
            .flat_map(|(id, v)| (0..v.channels.len()).map(move |i| (*id, i)))
            .collect();
        if all.is_empty() {
            return Ok(());
        }
        let (volume, which) = self.rng.pick(&all);
        let set_back = self.workload.ready_setback_per_mille > 0
            && self.rng.chance(self.workload.ready_setback_per_mille);
        // For this poll only: the pieces the channel goes on with meet a lowered mark.
        let restore = if set_back { self.set_back_ready(volume) } else { None };
        self.host.set_current_core(which as u32 + 1);
        let polled = self.poll_channel(volume, which);
        if let Some((view, ready)) = restore {
            view.set_ready(ready);
        }
        polled
    }

    fn user_done(&mut self, completion: IoCompletion) -> Result<(), Failure> {
        let IoCompletion { request, status } = completion;
        let Some(op) = self.ops.remove(&request.tag) else {
            return fail(format!("completion for unknown IO #{}", request.tag));
        };
        self.in_flight_bytes -= op.bytes;
        let now = self.tick();
        let id = request.tag;
        trace(self.step, || format!("done #{id} {:?} {}: {status:?}", op.kind, op.volume));
        if status == IoStatus::Failed(libc::EAGAIN) {
            // Only the frontend's own doing may refuse a request, at submission (the channel
            // full); once taken, a request waits for rings, op slots and buffers, never fails
            // for want of them.
            return fail(format!(
                "EAGAIN the frontend did not cause: #{id} {:?} {} lba {}+{}",
                op.kind, op.volume, op.lba, op.count
            ));
        }
        if op.count > 0 {
            let lpb = self.lbas_per_block;
            let end = (op.lba + op.count).div_ceil(lpb);
            self.answered_ranges.push((op.volume, op.lba / lpb, end));
        }
        match op.kind {
            UserKind::Read => {
                // A read from before an abort may return what the aborted transaction mapped.
                if status.is_success() && op.issue > self.aborted_at {
                    self.check_read(&op, &request)?;
                }
            }
            UserKind::Write { .. } | UserKind::Unmap | UserKind::WriteZeroes { .. } => {
                let mut ok = status.is_success();
                if op.kind == UserKind::Unmap && !self.owner.mode().is_writable() {
                    // A read-only pool acknowledges a discard without doing it (advisory).
                    ok = false;
                }
                let (first, count) = op.versioned;
                self.oracle.complete(op.volume, first, count, id, now, ok);
                let fua = matches!(
                    op.kind,
                    UserKind::Write { fua: true } | UserKind::WriteZeroes { fua: true }
                );
                if ok && fua {
                    self.oracle.set_base(op.volume, first, count, id);
                }
            }
            UserKind::Flush => {
                if status.is_success() {
                    self.oracle.watermark = self.oracle.watermark.max(op.issue);
                    // Right after a flush is the moment its promise matters most.
                    self.crash_soon |= self.rng.chance(self.crash_per_mille * 60);
                }
            }
        }
        Ok(())
    }

    fn check_read(&mut self, op: &UserOp, request: &IoRequest) -> Result<(), Failure> {
        let mut bytes = vec![0u8; request.buffers.len_bytes()];
        request.buffers.copy_to(0, &mut bytes);
        let Some(versions) = self.oracle.volumes.get(&op.volume) else {
            return Ok(());
        };
        let checked_end = versions.size_since(op.issue);
        let stale_allowed = !self.settings.pool.zero_new_blocks;
        self.report.reads_checked += 1;
        let mut pins = Vec::new();
        for (i, sector) in bytes.chunks(SECTOR).enumerate() {
            let lba = op.lba + i as u64;
            if lba >= checked_end {
                continue;
            }
            self.report.sectors_checked += 1;
            let entries = versions.entries(lba);
            let content = decode(sector);
            let readable = || Oracle::readable(entries, op.issue);
            let verdict = Oracle::judge(entries, &content, lba, op.issue, stale_allowed);
            if !verdict.good {
                let got = match content {
                    Content::Zero => "zeroes".to_string(),
                    Content::Version { id, lba, volume } => {
                        format!("write #{id} of volume {volume} lba {lba}")
                    }
                    Content::Garbage => "garbage".to_string(),
                };
                let allowed: Vec<String> = readable()
                    .map(|e| if e.zero { format!("zero#{}", e.id) } else { format!("#{}", e.id) })
                    .collect();
                let all: Vec<String> = entries
                    .iter()
                    .map(|e| {
                        let snap = if e.at_snapshot { " (at snapshot)" } else { "" };
                        format!("#{} t{}..t{} ok {}{snap}", e.id, e.issue, e.done, e.ok)
                    })
                    .collect();
                let what = if entries.iter().any(|e| e.at_snapshot) {
                    "I3 (snapshot stability)"
                } else {
                    "I3"
                };
                return fail(format!(
                    "{what}: read of {} lba {lba} (issued at t{}) returned {got}; allowed \
                     {allowed:?} (versions {all:?})",
                    op.volume, op.issue
                ));
            }
            // Pinned only when the snapshot's own past explains the content: a write to the
            // snapshot in flight (an unmap that a read overlapped) may explain it too.
            let Verdict { zero, id, .. } = verdict;
            let later_write = readable()
                .any(|e| !e.at_snapshot && if zero { e.zero } else { !e.zero && e.id == id });
            if entries.iter().any(|e| e.at_snapshot) && !later_write {
                pins.push((lba, zero, id));
            }
        }
        for (lba, zero, id) in pins {
            self.oracle.pin(op.volume, lba, zero, id);
        }
        Ok(())
    }

    /// Reads every written sector of every volume (all of a small volume), delivering
    /// everything at once (I5 after a crash, I3 at the end).
    pub(super) fn verify_all(&mut self, when: &str) -> Result<(), Failure> {
        let step = self.step;
        trace(step, || format!("verify every written sector {when}"));
        let lpb = self.lbas_per_block;
        let ids: Vec<(VolumeId, u64)> = self
            .volumes
            .iter()
            .filter(|(_, v)| !v.deleted && !v.channels.is_empty())
            .map(|(id, v)| (*id, v.blocks))
            .collect();
        for (volume, blocks) in ids {
            // Runs of written blocks (every block of a small volume), read 64 blocks a time.
            let mut wanted: Vec<u64> = if blocks <= 2048 {
                (0..blocks).collect()
            } else {
                let versions = self.oracle.volumes.get(&volume);
                let mut written: Vec<u64> = versions
                    .map(|v| v.sectors.keys().map(|s| s / lpb).collect())
                    .unwrap_or_default();
                written.dedup();
                written.retain(|b| *b < blocks);
                written
            };
            wanted.dedup();
            let mut index = 0;
            while index < wanted.len() {
                let first = wanted[index];
                let mut n = 1;
                while index + (n as usize) < wanted.len()
                    && wanted[index + n as usize] == first + n
                    && n < 64
                {
                    n += 1;
                }
                index += n as usize;
                self.read_for_check(volume, first * lpb, n * lpb)?;
                self.settle(2000)?;
            }
        }
        Ok(())
    }

    fn read_for_check(&mut self, volume: VolumeId, lba: u64, count: u64) -> Result<(), Failure> {
        let id = self.next_id;
        self.next_id += 1;
        let issue = self.tick();
        let bytes = count * SECTOR as u64;
        let request = IoRequest::new(IoKind::Read, lba, count, id)
            .with_buffers(SgList::single(IoBuffer::new(bytes as usize)));
        let Some(channel) = self.volumes.get_mut(&volume).and_then(|v| v.channels.first_mut())
        else {
            return Ok(());
        };
        if channel.submit(request).is_err() {
            return fail("verify: channel full".into());
        }
        self.in_flight_bytes += bytes;
        let op =
            UserOp { kind: UserKind::Read, volume, lba, count, issue, versioned: (0, 0), bytes };
        self.ops.insert(id, op);
        Ok(())
    }
}
