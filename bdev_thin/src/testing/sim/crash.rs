//! Crashes at any step (control operations in flight included), recovery from the devices
//! alone, and the end of a seed: I1 with `thinctl check`'s code, I5 and I3 by reading every
//! written sector back, I6 on every volume, and liveness.

use std::collections::BTreeMap;
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::control::Control;
use super::oracle::{Entry, VolumeVersions};
use super::{Failure, Sim, SimDevice, fail, occupy_metadata, trace};
use crate::host::NoopWaker;
use crate::thin::metadata::{METADATA_BLOCK_BYTES, PoolMetadata, check};
use crate::thin::owner::Owner;
use crate::thin::pool::PoolShared;
use crate::thin::types::{DataBlock, MetaBlock, PoolMode, VolumeId};

use super::SECTOR;

impl Sim {
    fn metadata_reader(&self) -> impl FnMut(MetaBlock, &mut [u8]) -> std::io::Result<()> + use<> {
        let device: SimDevice = self.meta_device.clone().unwrap_or_else(|| self.device.clone());
        let lbas = (METADATA_BLOCK_BYTES / SECTOR) as u64;
        move |block: MetaBlock, out: &mut [u8]| {
            out.copy_from_slice(&device.read_content(block.0 * lbas, lbas));
            Ok(())
        }
    }

    pub(super) fn crash(&mut self) -> Result<(), Failure> {
        let mode = self.rng.below(3);
        let step = self.step;
        trace(step, || format!("CRASH (cache {})", ["lost", "kept", "torn"][mode as usize]));
        self.report.crashes += 1;
        let rng = &mut self.rng;
        let mut keep = |_| match mode {
            0 => false,
            1 => true,
            _ => rng.chance(500),
        };
        self.device.crash_keeping(&mut keep);
        if let Some(meta) = &self.meta_device {
            meta.crash_keeping(&mut keep);
        }
        let now = self.tick();
        // Control operations in flight may or may not have reached the device.
        for control in std::mem::take(&mut self.controls) {
            self.control_unanswered(control, now);
        }
        self.oracle.crash(now, false);
        self.ops.clear();
        self.in_flight_bytes = 0;
        self.release_at.clear();
        self.races.race_held.clear();
        self.answered_ranges.clear();
        for v in self.volumes.values_mut() {
            v.channels.clear();
        }
        self.recover()
    }

    /// A control operation that will never be answered (a crash, or a failed commit): its
    /// change may or may not be on the device.
    pub(super) fn control_unanswered(&mut self, control: Control, now: u64) {
        match control {
            Control::Create { .. } => {
                self.maybe_volumes.entry(None).or_default();
            }
            Control::Snapshot { origin, before, asked, .. } => {
                // Several snapshots of one origin may be cut short: a volume found after the
                // crash may be any of them.
                let versions = self.oracle.snapshot_of(origin, &before, asked, now);
                match self.maybe_volumes.get_mut(&Some(origin)) {
                    Some(known) => known.merge(versions),
                    None => {
                        self.maybe_volumes.insert(Some(origin), versions);
                    }
                }
            }
            Control::Delete { volume, .. } => self.maybe_deleted.push(volume),
            Control::Resize { .. } | Control::Grow { .. } | Control::Commit { .. } => {}
        }
    }

    fn recover(&mut self) -> Result<(), Failure> {
        let mut read = self.metadata_reader();
        if let Err(problems) = check(&mut read) {
            return fail(format!("I1: thinctl check after a crash: {problems:?}"));
        }
        let mut meta = match PoolMetadata::open(&mut read) {
            Ok(meta) => meta,
            Err(e) => return fail(format!("I5: the pool does not reopen after a crash: {e}")),
        };
        occupy_metadata(&mut meta, self.meta_headroom);
        self.shared = PoolShared::new(NoopWaker);
        self.control = Arc::new(ArrayQueue::new(16));
        let found: BTreeMap<VolumeId, u64> =
            meta.volumes().map(|r| (r.id, r.size_bytes / u64::from(self.block_bytes))).collect();
        let origins: BTreeMap<VolumeId, Option<VolumeId>> =
            meta.volumes().map(|r| (r.id, r.origin)).collect();
        self.owner = Owner::with_metadata_device(
            self.host.clone(),
            Arc::clone(&self.shared),
            Arc::clone(&self.control),
            meta,
            &self.device,
            self.meta_device.as_ref(),
            self.settings,
        )
        .map_err(|e| format!("owner: {e}"))?;
        self.allocations_seen = 0;
        self.read_only_seen = self.owner.mode() == PoolMode::ReadOnly;
        let known: Vec<VolumeId> =
            self.volumes.iter().filter(|(_, v)| !v.deleted).map(|(id, _)| *id).collect();
        for id in &known {
            if !found.contains_key(id) && !self.maybe_deleted.contains(id) {
                return fail(format!("I5: acknowledged {id} is gone after the crash"));
            }
        }
        let now = self.tick();
        let lpb = self.lbas_per_block;
        for (id, blocks) in &found {
            if !self.oracle.volumes.contains_key(id) {
                // Created or snapshotted by a commit that failed or was cut short, yet on the
                // device.
                let Some(versions) = self.maybe_volumes.get(&origins[id]) else {
                    return fail(format!("I5: {id} exists after the crash but was never created"));
                };
                let mut versions = versions.clone();
                for entries in versions.sectors.values_mut() {
                    for e in entries.iter_mut() {
                        *e = Entry { issue: now, done: now, ok: true, base: true, ..*e };
                    }
                }
                if versions.size_sectors == 0 {
                    versions = VolumeVersions::new(blocks * lpb);
                }
                self.oracle.volumes.insert(*id, versions);
            }
            self.oracle.resize(*id, blocks * lpb, now);
            self.volumes.remove(id);
            self.add_volume(*id, *blocks)?;
        }
        self.oracle.volumes.retain(|id, _| found.contains_key(id));
        self.maybe_volumes.clear();
        self.maybe_deleted.clear();
        self.volumes.retain(|id, _| found.contains_key(id));
        self.check_names()?;
        self.verify_all("after recovery")
    }

    /// No two volumes of the pool share a name (the owner refuses a duplicate).
    pub(super) fn check_names(&self) -> Result<(), Failure> {
        let mut names: Vec<&str> =
            self.owner.metadata().volumes().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return fail(format!("names: two volumes are called {:?}", pair[0]));
        }
        Ok(())
    }

    pub(super) fn finish(&mut self) -> Result<(), Failure> {
        trace(self.step, || "drain".into());
        // Long enough for a view filled one slice a poll.
        self.settle(20_000)?;
        let issue = self.tick();
        self.start_commit(issue);
        self.settle(2000)?;
        self.check_liveness()?;
        self.check_space()?;
        self.check_names()?;
        let ids: Vec<VolumeId> = self.owner.metadata().volumes().map(|r| r.id).collect();
        for id in ids {
            self.check_view_whole(id)?;
        }
        let mut read = self.metadata_reader();
        if let Err(problems) = check(&mut read) {
            return fail(format!("I1: thinctl check at the end: {problems:?}"));
        }
        if self.owner.mode() == PoolMode::Write && !self.owner.metadata().is_dirty() {
            // What is durable equals what the owner serves.
            let reopened = PoolMetadata::open(&mut read).map_err(|e| format!("I1: reopen: {e}"))?;
            let live = self.owner.metadata();
            if reopened.used_data_blocks() != live.used_data_blocks() {
                return fail(format!(
                    "I1: {} blocks used on the device, {} in memory",
                    reopened.used_data_blocks(),
                    live.used_data_blocks()
                ));
            }
            for block in 0..live.layout().data_blocks {
                let b = DataBlock(block);
                if live.data_count(b) != live.data_count_committed(b)
                    || live.data_count(b) != reopened.data_count(b)
                {
                    return fail(format!(
                        "I1: {b}: open count {}, committed {}, on the device {}",
                        live.data_count(b),
                        live.data_count_committed(b),
                        reopened.data_count(b)
                    ));
                }
            }
            for record in live.volumes() {
                let mut a = Vec::new();
                let mut b = Vec::new();
                live.for_each_mapping(record.id, &mut |v, m| a.push((v, m)));
                reopened.for_each_mapping(record.id, &mut |v, m| b.push((v, m)));
                if a != b {
                    return fail(format!("I1: {} maps differently on the device", record.id));
                }
            }
        }
        self.verify_all("at the end")?;
        self.report.read_only = self.owner.mode() == PoolMode::ReadOnly;
        Ok(())
    }
}
