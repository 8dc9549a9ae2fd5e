//! Checks on the owner's memory between polls: I2 on the allocator (at every allocation and
//! on its flags), I6 on the published views (incrementally, on what a poll may have changed,
//! and whole at the end), and liveness (with no frontend IO and the owner parked whenever it
//! says it may, everything pending completes).

use crate::host::PollStatus;
use crate::thin::types::{DataBlock, VirtBlock, VolumeId};
use crate::thin::view::Resolved;

use super::{Failure, Sim, fail, trace};

/// Owner polls the liveness drain allows before it calls the owner stuck.
const LIVENESS_POLLS_MAX: usize = 20_000;

impl Sim {
    /// I2 on the allocator's flags: a reserved block has no count and no hold; a held block
    /// is mapped in no open tree.
    pub(super) fn check_space(&self) -> Result<(), Failure> {
        let meta = self.owner.metadata();
        let space = self.owner.space();
        for block in 0..space.data_blocks() {
            let b = DataBlock(block);
            if space.is_reserved(b)
                && (meta.data_count(b) > 0 || meta.data_count_committed(b) > 0 || space.is_held(b))
            {
                return fail(format!("I2: reserved {b} has a count or a hold"));
            }
            if space.is_held(b) && meta.data_count(b) > 0 {
                return fail(format!("I2: held {b} is mapped"));
            }
        }
        Ok(())
    }

    /// I2 at every allocation since the last poll: the block handed out had no count in the
    /// open or the committed transaction, no hold and no grace period (a block is allocated
    /// by one poll and mapped by a later one, after its device IO).
    pub(super) fn check_allocations(&mut self) -> Result<(), Failure> {
        let space = self.owner.space();
        let meta = self.owner.metadata();
        let total = space.allocation_count();
        for block in space.recent_allocations(self.allocations_seen) {
            self.report.allocations_checked += 1;
            let (open, committed) = (meta.data_count(block), meta.data_count_committed(block));
            if open > 0 || committed > 0 || space.is_held(block) || space.is_in_grace(block) {
                return fail(format!(
                    "I2: {block} was handed out with open count {open}, committed count \
                     {committed}, held {}, in grace {}",
                    space.is_held(block),
                    space.is_in_grace(block)
                ));
            }
        }
        self.allocations_seen = total;
        Ok(())
    }

    /// I6 on what the last owner poll may have changed: the blocks of every request in flight
    /// or answered since, whole volumes after control operations and aborts, and the part of
    /// each snapshot's view not yet checked whole.
    pub(super) fn check_views_changed(&mut self) -> Result<(), Failure> {
        let mut ranges = std::mem::take(&mut self.answered_ranges);
        let lpb = self.lbas_per_block;
        ranges.extend(
            self.ops
                .values()
                .filter(|op| op.count > 0)
                .map(|op| (op.volume, op.lba / lpb, (op.lba + op.count).div_ceil(lpb))),
        );
        for (volume, first, end) in ranges {
            // A few blocks at each end of a large range, and a few inside: what a poll
            // changes in a range is where its pieces are.
            if end - first > 64 {
                self.check_view_blocks(volume, first, first + 16)?;
                self.check_view_blocks(volume, end - 16, end)?;
                let middle = first + self.rng.below(end - first - 32) + 16;
                self.check_view_blocks(volume, middle, middle + 1)?;
            } else {
                self.check_view_blocks(volume, first, end)?;
            }
        }
        let due = std::mem::take(&mut self.view_checks_due);
        for volume in due {
            self.check_view_whole(volume)?;
        }
        Ok(())
    }

    /// Whether the pool's views may mark anything certainly not shared.
    fn writable(&self) -> bool {
        self.owner.mode().is_writable()
    }

    /// I6 on blocks `[first, end)` of `volume`.
    fn check_view_blocks(&mut self, volume: VolumeId, first: u64, end: u64) -> Result<(), Failure> {
        let meta = self.owner.metadata();
        let Some(record) = meta.volume(volume) else {
            return Ok(());
        };
        let Some(view) = self.shared.view(volume) else {
            return fail(format!("I6: {volume} exists but has no view"));
        };
        let writable = self.writable();
        let end = end.min(view.size_vblocks());
        for vblock in first..end {
            let v = VirtBlock(vblock);
            if self.owner.is_busy(volume, v) {
                continue;
            }
            self.report.view_entries_checked += 1;
            let resolved = view.resolve(v);
            let expected = match meta.lookup(volume, v) {
                None => Resolved::Unmapped,
                Some(m) => Resolved::Mapped {
                    data_block: m.data_block,
                    exclusive: writable && m.time >= record.snapshot_time,
                },
            };
            let ready = vblock < view.ready_vblocks();
            if (ready && resolved != expected) || (!ready && resolved != Resolved::NotReady) {
                return fail(format!(
                    "I6: {volume} block {vblock}: the view says {resolved:?}, the open \
                     transaction {expected:?} (ready below {}, pool mode {:?})",
                    view.ready_vblocks(),
                    self.owner.mode()
                ));
            }
        }
        Ok(())
    }

    /// I6 on a whole volume: every mapping, and every published entry.
    pub(super) fn check_view_whole(&mut self, volume: VolumeId) -> Result<(), Failure> {
        let meta = self.owner.metadata();
        if meta.volume(volume).is_none() {
            return Ok(());
        }
        let Some(view) = self.shared.view(volume) else {
            return fail(format!("I6: {volume} exists but has no view"));
        };
        let mut blocks = Vec::new();
        meta.for_each_mapping(volume, &mut |vblock, _| blocks.push(vblock.0));
        view.for_each_published(&mut |vblock, _| blocks.push(vblock.0));
        blocks.sort_unstable();
        blocks.dedup();
        for block in blocks {
            self.check_view_blocks(volume, block, block + 1)?;
        }
        Ok(())
    }

    /// Liveness: no frontend sends anything more, and the owner is polled only while it says
    /// it may not park (or a device completion of its own wakes it). Every hold, grace period,
    /// deferred operation and reservation must then come back, and the owner must come to
    /// rest.
    pub(super) fn check_liveness(&mut self) -> Result<(), Failure> {
        trace(self.step, || "liveness: frontends quiet, reactors may park".into());
        let mut parked = false;
        for _ in 0..LIVENESS_POLLS_MAX {
            let woken = self.owner.in_flight() > 0 && !self.devices_idle();
            self.complete_all_device_io()?;
            let all: Vec<(VolumeId, usize)> = self
                .volumes
                .iter()
                .flat_map(|(id, v)| (0..v.channels.len()).map(move |i| (*id, i)))
                .collect();
            for (volume, which) in all {
                self.poll_channel(volume, which)?;
            }
            let may_park = !self.owner.has_waiters() && self.owner.prepare_park();
            if parked && !woken && !self.shared.inbox.is_empty() {
                parked = false;
            }
            if parked && !woken {
                break;
            }
            self.host.set_current_core(0);
            let status = self.owner.poll();
            self.check_allocations()?;
            parked = status == PollStatus::Idle && may_park;
        }
        if !parked {
            return fail(format!(
                "liveness: the owner never parks after {LIVENESS_POLLS_MAX} polls with no \
                 frontend IO (it says it has waiters: {})",
                self.owner.has_waiters()
            ));
        }
        let space = self.owner.space();
        for block in 0..space.data_blocks() {
            let b = DataBlock(block);
            if space.is_held(b) || space.is_reserved(b) || space.is_in_grace(b) {
                return fail(format!(
                    "liveness: the owner parked with {b} held {}, reserved {}, in grace {}",
                    space.is_held(b),
                    space.is_reserved(b),
                    space.is_in_grace(b)
                ));
            }
        }
        if !self.owner.is_drained() || !self.shared.inbox.is_empty() {
            return fail("liveness: the owner parked with work in progress".into());
        }
        Ok(())
    }
}
