//! Workload that races snapshots and view fills against the fast path: several snapshots of
//! one origin asked in one control batch while the origin's writes are held long on the data
//! device; a burst of writes to the origin the moment one of them is answered (the window
//! before the next one of the batch is taken); whole reads of each new snapshot at its answer
//! and again once the held writes have landed (snapshot stability); and a filling view's ready
//! mark set back now and then, as a refill would, so that a request split over a snapshot's
//! view meets a block that is not ready part-way through.

use super::user::UserKind;
use super::{Failure, REQUEST_SECTORS_MAX, Sim, trace};
use std::collections::BTreeSet;
use std::sync::Arc;

use crate::thin::types::VolumeId;
use crate::thin::view::VolumeView;

/// What the races keep between steps.
#[derive(Default)]
pub(super) struct RaceState {
    /// Reads of new snapshots due at a step: (step, snapshot, tries so far).
    pub probes: Vec<(u64, VolumeId, u32)>,
    /// Until this step the data device holds some new fast-path writes long.
    pub hold_writes_until: u64,
    /// Data-device writes held that way: they do not take effect early either.
    pub race_held: BTreeSet<u64>,
    /// Data device channels of volume channels (not the owner's): the fast path's.
    pub fast_path_channels: BTreeSet<u64>,
}

/// Blocks at the start of a volume that bursts write: few, so that bursts meet the blocks
/// earlier bursts made exclusive.
const BURST_BLOCKS: u64 = 8;
/// Blocks at the start of a volume that probes read: past one piece window, so that a
/// probe's later pieces are issued while a view fills.
const PROBE_RANGE_BLOCKS: u64 = 128;
/// Times a probe of a view not yet filled at all is tried again.
const PROBE_TRIES: u32 = 40;
/// Blocks a probe read covers at most.
const PROBE_BLOCKS: u64 = 64;

impl Sim {
    /// Whether this snapshot races its origin's writes.
    pub(super) fn snapshot_races(&mut self) -> bool {
        self.workload.snapshot_race_per_mille > 0
            && self.rng.chance(self.workload.snapshot_race_per_mille)
    }

    /// From now on for a while, some new fast-path writes are held long: in flight across a
    /// snapshot's drain, commit and answer (the owner's own writes are not held, so the
    /// origin does not stay busy).
    /// They are released a little after the next snapshot answer, or at the latest at the
    /// end of the hold (a correct snapshot waits for them to drain).
    pub(super) fn hold_writes(&mut self) {
        let until = self.step + self.rng.range(200, 1000);
        self.races.hold_writes_until = self.races.hold_writes_until.max(until);
    }

    /// The delivery delay of a new fast-path write while writes are held, if this one is.
    pub(super) fn held_write_delay(&mut self) -> Option<u64> {
        if self.step < self.races.hold_writes_until && self.rng.chance(400) {
            return Some(self.races.hold_writes_until - self.step);
        }
        None
    }

    /// A snapshot was answered: once no other snapshot is in flight (the view fills wait for
    /// the last), the writes held across them land a little later, after a first read of the
    /// snapshot; returns that step.
    fn release_held_writes(&mut self) -> u64 {
        if !self.snapshot_origins().is_empty() {
            // The next one is taken soon: hold the writes of the burst that follows.
            self.hold_writes();
            return self.races.hold_writes_until;
        }
        let release = self.step + self.rng.range(20, 300);
        self.races.hold_writes_until = self.races.hold_writes_until.min(self.step);
        for id in &self.races.race_held {
            if let Some(at) = self.release_at.get_mut(&(0, *id)) {
                *at = (*at).min(release);
            }
        }
        release
    }

    /// A few one-block writes to the first blocks of `volume` (in place, on the fast path,
    /// where those blocks are exclusive).
    pub(super) fn write_burst(&mut self, volume: VolumeId) -> Result<(), Failure> {
        let Some(v) = self.volumes.get(&volume).filter(|v| !v.frozen && !v.deleted) else {
            return Ok(());
        };
        let (blocks, channels) = (v.blocks.min(BURST_BLOCKS), v.channels.len() as u64);
        let lpb = self.lbas_per_block;
        trace(self.step, || format!("write burst to {volume}"));
        for _ in 0..self.rng.range(2, 6) {
            let block = self.rng.below(blocks);
            let which = self.rng.below(channels) as usize;
            let write = UserKind::Write { fua: false };
            self.submit_to(volume, which, write, block * lpb, lpb, false)?;
        }
        Ok(())
    }

    /// Reads of snapshot `volume` now, while its view fills, after the writes held now have
    /// landed, and later.
    pub(super) fn schedule_probes(&mut self, volume: VolumeId) {
        let step = self.step;
        let filling = step + self.rng.range(1, 20);
        let after_held = self.release_held_writes() + self.rng.range(1, 100);
        let later = step + self.rng.range(50, 300);
        for at in [step, filling, later, after_held] {
            self.races.probes.push((at, volume, 0));
        }
    }

    /// Now and then, while writes are held, a burst of writes to the origin of a snapshot in
    /// flight (between the snapshots of one batch, and while one is taken).
    pub(super) fn race_step(&mut self) -> Result<(), Failure> {
        if self.step >= self.races.hold_writes_until || !self.rng.chance(15) {
            return Ok(());
        }
        let origins: Vec<VolumeId> = self.snapshot_origins();
        if origins.is_empty() {
            return Ok(());
        }
        let origin = self.rng.pick(&origins);
        self.write_burst(origin)
    }

    /// Submits the probes that are due: reads of a volume's first blocks, in requests of up
    /// to `PROBE_BLOCKS` blocks; a probe a full channel refuses is tried again a bit later.
    pub(super) fn run_probes(&mut self) -> Result<(), Failure> {
        let step = self.step;
        if self.races.probes.is_empty() {
            return Ok(());
        }
        let (due, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.races.probes).into_iter().partition(|(at, _, _)| *at <= step);
        self.races.probes = waiting;
        let lpb = self.lbas_per_block;
        for (_, volume, tries) in due {
            let Some(v) = self.volumes.get(&volume).filter(|v| !v.frozen && !v.deleted) else {
                continue;
            };
            let Some(view) = self.shared.view(volume) else {
                continue;
            };
            let ready = view.ready_vblocks();
            if ready == 0 {
                if tries < PROBE_TRIES {
                    self.races.probes.push((step + 3, volume, tries + 1));
                }
                continue;
            }
            // Only the filled part, so that the probe starts at once.
            let blocks = v.blocks.min(PROBE_RANGE_BLOCKS).min(ready);
            let channels = v.channels.len() as u64;
            let per_request = PROBE_BLOCKS.min(REQUEST_SECTORS_MAX / lpb).max(1);
            let which = self.rng.below(channels) as usize;
            trace(step, || format!("probe {volume} blocks 0..{blocks}"));
            let mut first = 0;
            while first < blocks {
                let count = per_request.min(blocks - first);
                let read = UserKind::Read;
                if !self.submit_to(volume, which, read, first * lpb, count * lpb, false)? {
                    if first == 0 && tries < PROBE_TRIES {
                        self.races.probes.push((step + 5, volume, tries + 1));
                    }
                    break;
                }
                first += count;
            }
        }
        Ok(())
    }

    /// Sets `volume`'s ready mark back below where the fill got (anywhere below its size once
    /// filled), as a refill of the view would: the entries stay published, so a correct
    /// channel only waits; a piece that meets the lowered mark must park as what it is.
    /// Returns the view and the mark to put back once the channel was polled.
    pub(super) fn set_back_ready(&mut self, volume: VolumeId) -> Option<(Arc<VolumeView>, u64)> {
        let view = self.shared.view(volume)?;
        let ready = view.ready_vblocks();
        let below = ready.min(view.size_vblocks());
        if below == 0 || view.is_deleted() {
            return None;
        }
        let lower = self.rng.below(below);
        trace(self.step, || format!("ready mark of {volume} set back {ready} -> {lower}"));
        view.set_ready(lower);
        Some((view, ready))
    }
}
