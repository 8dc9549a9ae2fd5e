//! Control operations, several in flight at once: creates (some reusing a name), snapshots
//! (several of one origin), deletes and resizes of volumes with IO in flight, pool growth and
//! commits; and what their answers mean for the oracle.

use std::sync::Arc;

use super::oracle::{BASE_ZERO, VolumeVersions};
use super::{Failure, Sim, Slot, answer_into, fail, trace};
use crate::thin::owner::{ControlOp, PoolError};
use crate::thin::types::{PoolMode, VolumeId};

pub(super) enum Control {
    Create {
        blocks: u64,
        slot: Slot<VolumeId>,
    },
    /// `before`: the origin's versions when the snapshot was asked for, at `asked`.
    Snapshot {
        origin: VolumeId,
        before: VolumeVersions,
        asked: u64,
        slot: Slot<VolumeId>,
    },
    Delete {
        volume: VolumeId,
        slot: Slot<()>,
    },
    Resize {
        volume: VolumeId,
        blocks: u64,
        slot: Slot<()>,
    },
    Grow {
        slot: Slot<()>,
    },
    Commit {
        issue: u64,
        slot: Slot<()>,
    },
}

pub(super) fn describe(control: &Control) -> String {
    match control {
        Control::Create { blocks, .. } => format!("create {blocks} blocks"),
        Control::Snapshot { origin, .. } => format!("snapshot {origin}"),
        Control::Delete { volume, .. } => format!("delete {volume}"),
        Control::Resize { volume, blocks, .. } => format!("resize {volume} to {blocks} blocks"),
        Control::Grow { .. } => "grow".into(),
        Control::Commit { .. } => "commit".into(),
    }
}

fn take<T>(slot: &Slot<T>) -> Option<Result<T, PoolError>> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

impl Sim {
    /// Volumes a control operation in flight is about (no second resize, delete or snapshot
    /// of a volume being resized or deleted, and no resize of an origin being snapshotted).
    fn controlled(&self) -> Vec<VolumeId> {
        self.controls
            .iter()
            .filter_map(|c| match c {
                Control::Delete { volume, .. } | Control::Resize { volume, .. } => Some(*volume),
                Control::Snapshot { origin, .. } => Some(*origin),
                _ => None,
            })
            .collect()
    }

    fn new_name(&mut self, prefix: &str) -> String {
        if self.rng.chance(self.workload.duplicate_name_per_mille) {
            let names: Vec<String> = self.volumes.values().map(|v| v.name.clone()).collect();
            if !names.is_empty() {
                return names[self.rng.below(names.len() as u64) as usize].clone();
            }
        }
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    fn volume_blocks(&mut self) -> u64 {
        let w = self.workload;
        if self.rng.chance(w.large_volume_per_mille) {
            self.rng.range(w.large_volume_blocks.0, w.large_volume_blocks.1)
        } else {
            self.rng.range(w.volume_blocks.0, w.volume_blocks.1)
        }
    }

    pub(super) fn start_create(&mut self) {
        let blocks = self.volume_blocks();
        let slot: Slot<VolumeId> = Arc::default();
        let op = ControlOp::CreateVolume {
            uuid: [1; 16],
            name: self.new_name("v"),
            size_bytes: blocks * u64::from(self.block_bytes),
            done: answer_into(&slot),
        };
        if self.control.push(op).is_ok() {
            self.controls.push(Control::Create { blocks, slot });
        }
    }

    fn start_snapshot(&mut self, origin: VolumeId) {
        let slot: Slot<VolumeId> = Arc::default();
        let op = ControlOp::Snapshot {
            origin,
            uuid: [2; 16],
            name: self.new_name("s"),
            done: answer_into(&slot),
        };
        if self.control.push(op).is_err() {
            return;
        }
        let before = self.oracle.volumes.get(&origin).cloned().unwrap_or_default();
        let asked = self.tick();
        let control = Control::Snapshot { origin, before, asked, slot };
        trace(self.step, || format!("control {}", describe(&control)));
        self.controls.push(control);
    }

    pub(super) fn start_control(&mut self) {
        if self.controls.len() >= self.workload.controls_max {
            return;
        }
        let controlled = self.controlled();
        let live: Vec<VolumeId> =
            self.volumes.iter().filter(|(_, v)| !v.deleted).map(|(id, _)| *id).collect();
        let free: Vec<VolumeId> =
            live.iter().copied().filter(|id| !controlled.contains(id)).collect();
        let snapshottable: Vec<VolumeId> = live
            .iter()
            .copied()
            .filter(|id| {
                !self.controls.iter().any(|c| {
                    matches!(c, Control::Delete { volume, .. } | Control::Resize { volume, .. }
                        if volume == id)
                })
            })
            .collect();
        let room = live.len() + self.controls.len() < self.workload.volumes_max;
        let choice = if live.is_empty() { 0 } else { self.rng.below(10) };
        let control = match choice {
            0..=2 if room => {
                self.start_create();
                trace(self.step, || "control create".into());
                return;
            }
            3..=4 if room && !snapshottable.is_empty() => {
                let origin = self.rng.pick(&snapshottable);
                if !self.snapshot_races() {
                    self.start_snapshot(origin);
                    return;
                }
                // Writes in flight to the origin, held long, then several snapshots of it in
                // one control batch.
                if self.write_burst(origin).is_err() {
                    return;
                }
                self.hold_writes();
                for _ in 0..self.rng.range(2, 3) {
                    self.start_snapshot(origin);
                }
                return;
            }
            5 if !free.is_empty() && live.len() > 1 => {
                let volume = self.rng.pick(&free);
                let slot: Slot<()> = Arc::default();
                let op = ControlOp::DeleteVolume { volume, done: answer_into(&slot) };
                if self.control.push(op).is_err() {
                    return;
                }
                if let Some(v) = self.volumes.get_mut(&volume) {
                    v.frozen = true;
                }
                Control::Delete { volume, slot }
            }
            6 if !free.is_empty() => {
                let volume = self.rng.pick(&free);
                let old = self.volumes[&volume].blocks;
                let blocks = if self.rng.chance(500) {
                    self.rng.range(1, old)
                } else {
                    self.rng.range(old, old.saturating_mul(2))
                };
                let slot: Slot<()> = Arc::default();
                let op = ControlOp::Resize {
                    volume,
                    size_bytes: blocks * u64::from(self.block_bytes),
                    done: answer_into(&slot),
                };
                if self.control.push(op).is_err() {
                    return;
                }
                if let Some(v) = self.volumes.get_mut(&volume) {
                    v.frozen = true;
                }
                if blocks < old {
                    // Reads in flight may find the blocks past the new end gone from now on.
                    let now = self.tick();
                    if let Some(versions) = self.oracle.volumes.get_mut(&volume) {
                        versions.shrinks.push((now, blocks * self.lbas_per_block));
                    }
                }
                Control::Resize { volume, blocks, slot }
            }
            7 => {
                let layout = self.owner.metadata().layout();
                if layout.data_blocks >= layout.data_blocks_max {
                    return;
                }
                let grow = self.rng.range(1, 16);
                let data_blocks = (layout.data_blocks + grow).min(layout.data_blocks_max);
                let slot: Slot<()> = Arc::default();
                let op = ControlOp::Grow { data_blocks, done: answer_into(&slot) };
                if self.control.push(op).is_err() {
                    return;
                }
                Control::Grow { slot }
            }
            _ => {
                let issue = self.tick();
                self.start_commit(issue);
                trace(self.step, || "control commit".into());
                return;
            }
        };
        trace(self.step, || format!("control {}", describe(&control)));
        self.controls.push(control);
    }

    /// Takes the answers of control operations that completed.
    pub(super) fn check_controls(&mut self) -> Result<(), Failure> {
        // One at a time, the others staying in the list (an answer looks at what else is in
        // flight).
        let mut index = 0;
        while index < self.controls.len() {
            let control = self.controls.remove(index);
            if let Some(control) = self.check_control(control)? {
                self.controls.insert(index, control);
                index += 1;
            }
        }
        Ok(())
    }

    /// Handles `control`'s answer if it came; hands it back otherwise.
    fn check_control(&mut self, control: Control) -> Result<Option<Control>, Failure> {
        let now = self.now;
        let step = self.step;
        match control {
            Control::Create { blocks, slot } => {
                let Some(result) = take(&slot) else {
                    return Ok(Some(Control::Create { blocks, slot }));
                };
                trace(step, || format!("create answered {result:?}"));
                match result {
                    Ok(id) => {
                        let sectors = blocks * self.lbas_per_block;
                        self.oracle.volumes.insert(id, VolumeVersions::new(sectors));
                        self.add_volume(id, blocks)?;
                        self.check_names()?;
                    }
                    // A failed commit may still be durable: it may exist after a crash.
                    Err(_) => self.control_unanswered(Control::Create { blocks, slot }, now),
                }
            }
            Control::Snapshot { origin, before, asked, slot } => {
                let Some(result) = take(&slot) else {
                    return Ok(Some(Control::Snapshot { origin, before, asked, slot }));
                };
                trace(step, || format!("snapshot answered {result:?}"));
                if !self.oracle.volumes.contains_key(&origin) {
                    return fail(format!("snapshot of unknown {origin}"));
                }
                match result {
                    Ok(id) => {
                        // The snapshot holds the origin as it was at some instant between the
                        // ask and the answer: the versions then, and maybe any written since.
                        let versions = self.oracle.snapshot_of(origin, &before, asked, now);
                        self.oracle.volumes.insert(id, versions);
                        let blocks = self.volumes[&origin].blocks;
                        self.add_volume(id, blocks)?;
                        self.view_checks_due.push(origin);
                        self.check_names()?;
                        if self.workload.snapshot_race_per_mille > 0 {
                            // Into the window before the next snapshot of the batch is taken.
                            self.schedule_probes(id);
                            self.write_burst(origin)?;
                        }
                    }
                    Err(_) => {
                        let control = Control::Snapshot { origin, before, asked, slot };
                        self.control_unanswered(control, now);
                    }
                }
            }
            Control::Delete { volume, slot } => {
                let Some(result) = take(&slot) else {
                    return Ok(Some(Control::Delete { volume, slot }));
                };
                trace(step, || format!("delete answered {result:?}"));
                let exists = self.owner.metadata().volume(volume).is_some();
                if result.is_err() {
                    // A failed commit may still have reached the device: the volume may be
                    // gone after a crash.
                    self.maybe_deleted.push(volume);
                }
                match (result, self.volumes.get_mut(&volume)) {
                    // Gone: its channels drain, then it goes (`retire_deleted`).
                    (Ok(()), Some(v)) => v.deleted = true,
                    (Ok(()), None) => {}
                    (Err(_), Some(v)) if exists => v.frozen = false,
                    // Deleted in memory, then the commit failed: the pool is read-only and
                    // the volume's fate is the next recovery's.
                    (Err(_), Some(v)) => v.deleted = true,
                    (Err(_), None) => {}
                }
            }
            Control::Resize { volume, blocks, slot } => {
                let Some(result) = take(&slot) else {
                    return Ok(Some(Control::Resize { volume, blocks, slot }));
                };
                trace(step, || format!("resize answered {result:?}"));
                let size = self.owner.metadata().volume(volume).map(|r| r.size_bytes);
                let new_blocks = size.map_or(blocks, |s| s / u64::from(self.block_bytes));
                self.oracle.resize(volume, new_blocks * self.lbas_per_block, now);
                if let Some(v) = self.volumes.get_mut(&volume) {
                    v.blocks = new_blocks;
                    v.frozen = false;
                }
                self.view_checks_due.push(volume);
            }
            Control::Grow { slot } => {
                let Some(result) = take(&slot) else {
                    return Ok(Some(Control::Grow { slot }));
                };
                trace(step, || format!("grow answered {result:?}"));
            }
            Control::Commit { issue, slot } => {
                let Some(result) = take(&slot) else {
                    return Ok(Some(Control::Commit { issue, slot }));
                };
                trace(step, || format!("commit answered {result:?}"));
                if result.is_ok() && self.owner.mode() == PoolMode::Write {
                    self.oracle.watermark = self.oracle.watermark.max(issue);
                }
            }
        }
        Ok(None)
    }

    /// Origins of the snapshots in flight.
    pub(super) fn snapshot_origins(&self) -> Vec<VolumeId> {
        self.controls
            .iter()
            .filter_map(|c| match c {
                Control::Snapshot { origin, .. } => Some(*origin),
                _ => None,
            })
            .collect()
    }

    /// While a resize or delete waits for the owner, takes free metadata blocks until only
    /// one to three blocks are left past what the next mutation must leave: its first
    /// removal may pass the space check, the ones after may not.
    pub(super) fn squeeze_metadata(&mut self) {
        let waiting = self
            .controls
            .iter()
            .any(|c| matches!(c, Control::Resize { .. } | Control::Delete { .. }));
        if !waiting {
            return;
        }
        let past = self.owner.metadata().metadata_blocks_past_reserve();
        let keep = self.rng.range(1, 3);
        if past > keep {
            let taken = self.owner.occupy_metadata_blocks(past - keep);
            trace(self.step, || format!("metadata squeezed: {taken} blocks taken"));
        }
    }

    /// Deleted volumes whose channels drained go, with their versions.
    pub(super) fn retire_deleted(&mut self) {
        let gone: Vec<VolumeId> = self
            .volumes
            .iter()
            .filter(|(id, v)| v.deleted && !self.ops.values().any(|op| op.volume == **id))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.volumes.remove(&id);
            if !self.maybe_deleted.contains(&id) {
                self.oracle.volumes.remove(&id);
            }
        }
    }
}

/// Keeps the `BASE_ZERO` import honest for readers: a grown volume reads zeroes past its old
/// end (the oracle's default for a sector it never saw).
const _: () = assert!(BASE_ZERO.zero);
