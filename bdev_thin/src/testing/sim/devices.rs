//! The seed's hand on the devices: when each IO takes effect and completes (in any order,
//! some held for long), which fail, and I4 on every passdown deallocate from issue to
//! completion.

use crate::host::IoKind;
use crate::testing::{PendingIo, SimDevice};
use crate::thin::types::DataBlock;

use super::{Failure, Sim, fail, trace};

impl Sim {
    /// The devices: the data device, then the metadata device if the pool has one.
    fn device(&self, index: usize) -> &SimDevice {
        match (index, &self.meta_device) {
            (1, Some(meta)) => meta,
            _ => &self.device,
        }
    }

    fn device_count(&self) -> usize {
        1 + usize::from(self.meta_device.is_some())
    }

    pub(super) fn devices_idle(&self) -> bool {
        (0..self.device_count()).all(|d| self.device(d).pending().is_empty())
    }

    fn is_meta_io(&self, device: usize, io: &PendingIo) -> bool {
        device == 1
            || (self.meta_device.is_none()
                && (io.kind == IoKind::Flush || io.offset_blocks < self.geometry.data_offset_lbas))
    }

    /// Completes every device IO in flight, in issue order.
    pub(super) fn complete_all_device_io(&mut self) -> Result<(), Failure> {
        for d in 0..self.device_count() {
            for io in self.device(d).pending() {
                if d == 0 && io.kind == IoKind::Unmap {
                    self.check_deallocate(io.offset_blocks, io.num_blocks, "completes")?;
                }
                self.device(d).complete(io.id);
            }
        }
        self.release_at.clear();
        self.races.race_held.clear();
        Ok(())
    }

    pub(super) fn device_action(&mut self) -> Result<(), Failure> {
        let d = if self.device_count() > 1 && self.rng.chance(300) { 1 } else { 0 };
        let pending = self.device(d).pending();
        if pending.is_empty() {
            return Ok(());
        }
        // New IOs get their delivery delay now.
        for io in &pending {
            if !self.release_at.contains_key(&(d, io.id)) {
                let long = matches!(io.kind, IoKind::Read | IoKind::Unmap);
                let fast_path = d == 0 && self.races.fast_path_channels.contains(&io.channel);
                let held = if fast_path && io.kind == IoKind::Write {
                    self.held_write_delay()
                } else {
                    None
                };
                let delay = match held {
                    Some(delay) => {
                        self.races.race_held.insert(io.id);
                        delay
                    }
                    None => self.delivery_delay(long),
                };
                self.release_at.insert((d, io.id), self.step + delay);
            }
        }
        let ready: Vec<&PendingIo> =
            pending.iter().filter(|io| self.release_at[&(d, io.id)] <= self.step).collect();
        self.deliver_one(d, &pending, &ready)
    }

    /// How long the seed holds a new device IO (reads and deallocates sometimes very long).
    fn delivery_delay(&mut self, long: bool) -> u64 {
        match self.rng.below(100) {
            0..=79 => 0,
            80..=94 => self.rng.range(1, 40),
            _ if long => self.rng.range(100, 1500),
            _ => self.rng.range(40, 200),
        }
    }

    /// Delivers one IO of device `d` that is due (applied, completed or failed), or applies
    /// a held one early.
    fn deliver_one(
        &mut self,
        d: usize,
        pending: &[PendingIo],
        ready: &[&PendingIo],
    ) -> Result<(), Failure> {
        let io = if ready.is_empty() {
            let io = &pending[self.rng.below(pending.len() as u64) as usize];
            let race_held = d == 0 && self.races.race_held.contains(&io.id);
            if io.applied || race_held || matches!(io.kind, IoKind::Read | IoKind::Flush) {
                return Ok(());
            }
            // Held IOs may still take effect early.
            trace(self.step, || {
                format!("apply dev{d}:{} {:?} {}", io.id, io.kind, io.offset_blocks)
            });
            self.device(d).apply(io.id);
            return Ok(());
        } else {
            ready[self.rng.below(ready.len() as u64) as usize].clone()
        };
        if !io.applied && self.rng.chance(150) && !matches!(io.kind, IoKind::Read | IoKind::Flush) {
            trace(self.step, || {
                format!("apply dev{d}:{} {:?} {}", io.id, io.kind, io.offset_blocks)
            });
            self.device(d).apply(io.id);
            return Ok(());
        }
        let per_mille = if self.is_meta_io(d, &io) {
            self.meta_fail_per_mille
        } else {
            self.data_fail_per_mille
        };
        self.release_at.remove(&(d, io.id));
        if d == 0 {
            self.races.race_held.remove(&io.id);
        }
        if per_mille > 0 && self.rng.chance(per_mille) {
            trace(self.step, || {
                format!(
                    "FAIL dev{d}:{} {:?} {}+{}",
                    io.id, io.kind, io.offset_blocks, io.num_blocks
                )
            });
            self.report.io_errors += 1;
            self.device(d).fail(io.id, libc::EIO);
        } else {
            trace(self.step, || {
                format!(
                    "complete dev{d}:{} {:?} {:?} {}+{}",
                    io.id, io.kind, io.flags, io.offset_blocks, io.num_blocks
                )
            });
            if d == 0 && io.kind == IoKind::Unmap {
                self.check_deallocate(io.offset_blocks, io.num_blocks, "completes")?;
            }
            self.device(d).complete(io.id);
        }
        Ok(())
    }

    /// I4 for one deallocate in flight: every block it covers is held, and neither mapped (open
    /// or committed) nor reserved.
    fn check_deallocate(&mut self, offset: u64, count: u64, when: &str) -> Result<(), Failure> {
        self.report.deallocates_checked += 1;
        let lpb = self.lbas_per_block;
        let first = (offset - self.geometry.data_offset_lbas) / lpb;
        let meta = self.owner.metadata();
        let space = self.owner.space();
        for block in first..first + count / lpb {
            let b = DataBlock(block);
            let open = meta.data_count(b);
            let committed = meta.data_count_committed(b);
            if open > 0 || committed > 0 || space.is_reserved(b) || !space.is_held(b) {
                return fail(format!(
                    "I4: a deallocate {when} on {b}: open count {open}, committed count \
                     {committed}, reserved {}, held {}",
                    space.is_reserved(b),
                    space.is_held(b)
                ));
            }
        }
        Ok(())
    }

    pub(super) fn check_passdowns(&mut self) -> Result<(), Failure> {
        let unmaps: Vec<(u64, u64)> = self
            .device
            .pending()
            .into_iter()
            .filter(|io| io.kind == IoKind::Unmap)
            .map(|io| (io.offset_blocks, io.num_blocks))
            .collect();
        for (offset, count) in unmaps {
            self.check_deallocate(offset, count, "is in flight")?;
        }
        Ok(())
    }
}
