//! The owner's control plane (DESIGN.md "Snapshots", "One owner, many channels"): volume
//! create, snapshot, delete and resize, pool grow and delete, and the views the owner
//! publishes for them (built whole, filled a slice per poll for a new snapshot, rebuilt in
//! place after a failed commit). Runs on the pool's home core, inside the owner's poll.
//!
//! Each control operation completes or changes nothing: the metadata refuses it before its
//! first change when it cannot finish (a name in use, no metadata space for its worst case,
//! a size the pool cannot serve). Snapshots of one origin are taken one after the other under
//! one quiesce of the origin.

use std::sync::Arc;

use super::super::metadata::{MetadataError, PoolMetadata};
use super::super::mutations::Mutation;
use super::super::types::{DataBlock, PoolMode, VirtBlock, VolumeId};
use super::super::view::{VIEW_CHUNK_ENTRIES, VIEW_CHUNK_SLOT_BYTES, VolumeView};
use super::{
    CommitStage, ControlOp, Op, Owner, PoolDescription, PoolError, RangeStage, SnapshotOp,
    TAG_COMMIT,
};
use crate::host::{BlockDevice, Host, IoKind, IoRequest};
use crate::limits;

impl<D: BlockDevice, H: Host> Owner<D, H> {
    /// Creates `id`'s view. `incremental`: publish it empty and fill it a bounded slice per
    /// poll (a new snapshot: acknowledged in O(1), channels wait for the part they need).
    pub(super) fn build_view(&mut self, id: VolumeId, incremental: bool) {
        let Some(record) = self.meta.volume(id).cloned() else {
            return;
        };
        let size = self.vblocks_of(record.size_bytes);
        let view = Arc::new(VolumeView::new(id, size, self.view_capacity(size)));
        view.set_size(size, record.size_bytes / self.lba_bytes);
        // A read-only pool publishes nothing exclusive: every write goes to the owner, which
        // refuses it (found by thin_sim: the fast path wrote on in a read-only pool).
        let writable = !matches!(self.mode, PoolMode::ReadOnly | PoolMode::Fail);
        if incremental {
            view.set_ready(0);
            self.view_builds.push_back((id, 0));
        } else {
            self.meta.for_each_mapping(id, &mut |vblock, mapping| {
                let exclusive = writable && mapping.time >= record.snapshot_time;
                view.publish(vblock, mapping.data_block, exclusive);
            });
        }
        self.shared.publish_view(Arc::clone(&view));
        self.views.insert(id, view);
    }

    /// The virtual blocks a new view of `size_vblocks` reserves chunk slots for: room to grow
    /// 4× without a new view, within the per-volume table limit and what is left of the pool's
    /// view memory, but never less than the size (a volume that exists gets its view; a new one
    /// passed [`Owner::check_volume_size`]).
    fn view_capacity(&self, size_vblocks: u64) -> u64 {
        let size_chunks = size_vblocks.div_ceil(VIEW_CHUNK_ENTRIES);
        let free_chunks = self.settings.limits.view_chunks.saturating_sub(self.view_chunks_used());
        let chunks = size_chunks
            .saturating_mul(limits::VOLUME_GROWTH_FACTOR)
            .min(limits::VOLUME_VIEW_CHUNKS_MAX)
            .min(free_chunks)
            .max(size_chunks);
        chunks.saturating_mul(VIEW_CHUNK_ENTRIES)
    }

    /// Chunk slots the views of the pool's volumes take now.
    fn view_chunks_used(&self) -> u64 {
        self.views.values().map(|v| v.capacity_vblocks() / VIEW_CHUNK_ENTRIES).sum()
    }

    /// Refuses a volume size the pool cannot serve, before anything changes: not a nonzero
    /// multiple of the LBA, over what one view can address, or past the memory the pool's
    /// views may take (views are allocated up front for their size, so a size is checked
    /// here rather than failing an allocation).
    pub(super) fn check_volume_size(&self, size_bytes: u64) -> Result<(), PoolError> {
        if size_bytes == 0 || !size_bytes.is_multiple_of(self.lba_bytes) {
            return Err(PoolError::BadSize { size_bytes, lba_bytes: self.lba_bytes });
        }
        let block_bytes = u64::from(self.meta.layout().data_block_bytes);
        let chunks = self.vblocks_of(size_bytes).div_ceil(VIEW_CHUNK_ENTRIES);
        let bytes_of_chunks = |chunks: u64| {
            let bytes = chunks.saturating_mul(VIEW_CHUNK_ENTRIES).saturating_mul(block_bytes);
            bytes - bytes % self.lba_bytes
        };
        if chunks > limits::VOLUME_VIEW_CHUNKS_MAX {
            let max_bytes = bytes_of_chunks(limits::VOLUME_VIEW_CHUNKS_MAX);
            return Err(PoolError::VolumeTooLarge { size_bytes, max_bytes });
        }
        let budget = self.settings.limits.view_chunks;
        let free_chunks = budget.saturating_sub(self.view_chunks_used());
        if chunks > free_chunks {
            return Err(PoolError::ViewMemory {
                size_bytes,
                budget_mib: (budget * VIEW_CHUNK_SLOT_BYTES) >> 20,
                free_bytes: bytes_of_chunks(free_chunks),
            });
        }
        Ok(())
    }

    /// Fills the views of new snapshots, the pool's `view_fill_blocks_per_poll` virtual blocks
    /// a poll.
    pub(super) fn run_view_builds(&mut self) -> bool {
        // A snapshot is acknowledged first (its commit), then its view is filled: the
        // acknowledgement costs the same at any volume size.
        if !self.snapshots.is_empty() {
            return false;
        }
        let Some(&(id, next)) = self.view_builds.front() else {
            return false;
        };
        let (Some(view), Some(record)) = (self.views.get(&id).cloned(), self.meta.volume(id))
        else {
            self.view_builds.pop_front();
            return true;
        };
        let snapshot_time = record.snapshot_time;
        let writable = !matches!(self.mode, PoolMode::ReadOnly | PoolMode::Fail);
        let end = next.saturating_add(self.settings.limits.view_fill_blocks_per_poll);
        self.meta.for_each_mapping_in(id, VirtBlock(next), VirtBlock(end), &mut |vblock, m| {
            view.publish(vblock, m.data_block, writable && m.time >= snapshot_time);
        });
        // Past the volume's size nothing is mapped (a shrink removed it, a grow adds nothing),
        // so the fill ends there, not at the view's capacity, which holds room to grow.
        if end >= view.size_vblocks() {
            view.set_ready(u64::MAX);
            self.view_builds.pop_front();
        } else {
            view.set_ready(end);
            if let Some(front) = self.view_builds.front_mut() {
                front.1 = end;
            }
        }
        true
    }

    pub(super) fn run_snapshots(&mut self) -> bool {
        let Some(snapshot) = self.snapshots.front_mut() else {
            return false;
        };
        if let Some(after) = snapshot.after {
            // Step 3 done; waiting for the commit.
            if self.commits_done > after {
                let mut snapshot = self.snapshots.pop_front().expect("front exists");
                self.end_quiesce(snapshot.origin);
                let result = if self.commit_failed {
                    Err(PoolError::ReadOnly)
                } else {
                    snapshot.result.ok_or(PoolError::NoVolume(snapshot.origin))
                };
                if let Some(done) = snapshot.done.take() {
                    done(result);
                }
                return true;
            }
            return false;
        }
        let origin = snapshot.origin;
        if matches!(self.mode, PoolMode::ReadOnly | PoolMode::Fail) {
            // The pool turned read-only while this snapshot waited for its origin to drain:
            // its record could never commit, so it is refused, not answered as taken (found
            // by thin_sim: the snapshot was gone after a crash).
            let mut snapshot = self.snapshots.pop_front().expect("front exists");
            self.end_quiesce(origin);
            if let Some(done) = snapshot.done.take() {
                done(Err(PoolError::ReadOnly));
            }
            return true;
        }
        let origin_busy = self.busy.keys().any(|(v, _)| *v == origin)
            || self
                .ops
                .iter()
                .any(|op| matches!(op, Some(Op::Range(r)) if r.stage == RangeStage::Children));
        let drained = self.settings.mutations.is_on(Mutation::NoGrace)
            || self.settings.mutations.is_on(Mutation::NoQuiesce)
            || self.grace.has_passed(snapshot.quiesced_at);
        if origin_busy || !drained || self.commit_stage != CommitStage::Idle {
            return false;
        }
        let (uuid, name) = (snapshot.uuid, snapshot.name.clone());
        // The snapshot's view is as large as its origin's size now.
        let origin_size = self.meta.volume(origin).map_or(0, |v| v.size_bytes);
        let result = match self.check_volume_size(origin_size) {
            Ok(()) => self.meta.snapshot(origin, uuid, &name).map_err(PoolError::from),
            Err(e) => Err(e),
        };
        let snapshot = self.snapshots.front_mut().expect("front exists");
        match result {
            Ok(id) => {
                snapshot.result = Some(id);
                snapshot.after = Some(self.commits_started);
                if let Some(view) = self.views.get(&origin) {
                    view.advance_view_time();
                }
                self.build_view(id, true);
                self.commit_wanted = true;
            }
            Err(e) => {
                let mut snapshot = self.snapshots.pop_front().expect("front exists");
                self.end_quiesce(origin);
                if let Some(done) = snapshot.done.take() {
                    done(Err(e));
                }
            }
        }
        true
    }

    /// Refuses `name` if a volume has it or a snapshot waiting to be taken will: the owner,
    /// not the RPC layer, decides, so two requests with one name never both commit.
    pub(super) fn check_queued_name(&self, name: &str) -> Result<(), PoolError> {
        let taken = self.meta.volumes().any(|v| v.name == name)
            || self.snapshots.iter().any(|s| s.name == name && s.result.is_none());
        if taken {
            return Err(MetadataError::NameExists { name: name.to_string() }.into());
        }
        Ok(())
    }

    /// A snapshot of `origin` was answered: the origin's writes may go on, unless another
    /// snapshot of it waits. That one was queued under the same quiesce, so the flag stays
    /// up until the last of them is answered: snapshots of one origin are taken one after
    /// the other under one quiesce, and none shares a block a fast-path write still writes.
    pub(super) fn end_quiesce(&mut self, origin: VolumeId) {
        let another = self.snapshots.iter().any(|s| s.origin == origin)
            && !self.settings.mutations.is_on(Mutation::QuiesceEndsWithFirstSnapshot);
        if another {
            return;
        }
        if let Some(view) = self.views.get(&origin) {
            view.set_quiesced(false);
        }
    }

    pub(super) fn run_control(&mut self) -> bool {
        let mut busy = false;
        for _ in 0..self.pending_control.len() {
            if let Some(op) = self.pending_control.pop_front() {
                self.handle_control(op);
            }
        }
        while let Some(op) = self.control.pop() {
            busy = true;
            self.admit_control(op);
        }
        busy
    }

    /// Takes a new operation from the ring. Once a pool delete is accepted, later operations
    /// are answered `Deleted` rather than run, so the delete waits only for what came before it
    /// and every operation gets exactly one answer.
    fn admit_control(&mut self, op: ControlOp) {
        if self.delete_requested && !matches!(op, ControlOp::Describe { .. }) {
            return op.fail(PoolError::Deleted);
        }
        if matches!(op, ControlOp::DeletePool { .. }) {
            self.delete_requested = true;
        }
        self.handle_control(op);
    }

    pub(super) fn handle_control(&mut self, op: ControlOp) {
        let read_only = matches!(self.mode, PoolMode::ReadOnly | PoolMode::Fail);
        match op {
            ControlOp::CreateVolume { uuid, name, size_bytes, done } => {
                if read_only {
                    return done(Err(PoolError::ReadOnly));
                }
                if let Err(e) = self.check_queued_name(&name) {
                    return done(Err(e));
                }
                if let Err(e) = self.check_volume_size(size_bytes) {
                    return done(Err(e));
                }
                match self.meta.create_volume(uuid, &name, size_bytes) {
                    Ok(id) => {
                        self.build_view(id, false);
                        let after = self.commits_started;
                        self.commit_wanted = true;
                        self.control_commits
                            .push((after, Box::new(move |result| done(result.map(|()| id)))));
                    }
                    Err(e) => done(Err(e.into())),
                }
            }
            ControlOp::Snapshot { origin, uuid, name, done } => {
                if read_only {
                    return done(Err(PoolError::ReadOnly));
                }
                if let Err(e) = self.check_queued_name(&name) {
                    return done(Err(e));
                }
                let Some(view) = self.views.get(&origin) else {
                    return done(Err(PoolError::NoVolume(origin)));
                };
                // Step 1: quiesce the origin, then advance the epoch.
                if !self.settings.mutations.is_on(Mutation::NoQuiesce) {
                    view.set_quiesced(true);
                }
                let quiesced_at = self.grace.epoch();
                self.snapshots.push_back(SnapshotOp {
                    origin,
                    uuid,
                    name,
                    quiesced_at,
                    done: Some(done),
                    result: None,
                    after: None,
                });
            }
            ControlOp::DeleteVolume { volume, done } => {
                if read_only {
                    return done(Err(PoolError::ReadOnly));
                }
                if self.busy.keys().any(|(v, _)| *v == volume) {
                    return done(Err(PoolError::Io(libc::EBUSY)));
                }
                let mut freed = Vec::new();
                match self.meta.delete_volume(volume, &mut |block| freed.push(block)) {
                    Ok(()) => {
                        if let Some(view) = self.views.remove(&volume) {
                            view.mark_deleted();
                        }
                        self.shared.retire_view(volume);
                        self.release_freed(freed, done);
                    }
                    Err(e) => done(Err(e.into())),
                }
            }
            ControlOp::Resize { volume, size_bytes, done } => {
                if read_only {
                    return done(Err(PoolError::ReadOnly));
                }
                let Some(view) = self.views.get(&volume).cloned() else {
                    return done(Err(PoolError::NoVolume(volume)));
                };
                if size_bytes == 0 || !size_bytes.is_multiple_of(self.lba_bytes) {
                    return done(Err(PoolError::BadSize { size_bytes, lba_bytes: self.lba_bytes }));
                }
                let new_vblocks = self.vblocks_of(size_bytes);
                if new_vblocks > view.capacity_vblocks() {
                    let capacity_vblocks = view.capacity_vblocks();
                    let block_bytes = u64::from(self.meta.layout().data_block_bytes);
                    return done(Err(PoolError::TooLarge {
                        capacity_vblocks,
                        capacity_bytes: capacity_vblocks.saturating_mul(block_bytes),
                    }));
                }
                let old_vblocks = view.size_vblocks();
                if new_vblocks < old_vblocks && self.is_span_busy(volume, new_vblocks, old_vblocks)
                {
                    // Per-block order: a shrink waits behind what runs in its range.
                    self.pending_control.push_back(ControlOp::Resize { volume, size_bytes, done });
                    return;
                }
                let mut freed = Vec::new();
                match self.meta.resize_volume(volume, size_bytes, &mut |block| freed.push(block)) {
                    Ok(()) => {
                        for vblock in new_vblocks..old_vblocks {
                            view.unpublish(VirtBlock(vblock));
                        }
                        view.set_size(new_vblocks, size_bytes / self.lba_bytes);
                        self.release_freed(freed, done);
                    }
                    Err(e) => done(Err(e.into())),
                }
            }
            ControlOp::DeletePool { done } => {
                // Operations accepted before the delete finish first (they answer then).
                let busy = self.ops.iter().any(Option::is_some)
                    || !self.is_drained()
                    || !self.control_commits.is_empty()
                    || !self.snapshots.is_empty()
                    || !self.pending_control.is_empty();
                if busy || self.commit_stage != CommitStage::Idle {
                    self.pending_control.push_back(ControlOp::DeletePool { done });
                    return;
                }
                for view in self.views.values() {
                    view.mark_deleted();
                }
                self.deleting = Some(done);
                self.commit_failed = false;
                let blocks = PoolMetadata::invalidate_superblocks();
                self.commit_stage = CommitStage::Invalidating { in_flight: blocks.len() };
                for (block, bytes) in blocks {
                    let request = self.meta_write(block, &bytes);
                    self.submit_metadata(request);
                }
            }
            ControlOp::Grow { data_blocks, done } => {
                if read_only {
                    return done(Err(PoolError::ReadOnly));
                }
                if data_blocks == self.space.data_blocks() {
                    // The device did not grow: a full pool stays full, and says so.
                    return done(Err(PoolError::NothingToGrow { data_blocks }));
                }
                match self.meta.grow_data(data_blocks) {
                    Ok(()) => {
                        self.space.grow(data_blocks);
                        self.no_space_since_ns = None;
                        if self.mode == PoolMode::OutOfDataSpace {
                            self.mode = PoolMode::Write;
                        }
                        let after = self.commits_started;
                        self.commit_wanted = true;
                        self.control_commits.push((after, done));
                    }
                    Err(e) => done(Err(e.into())),
                }
            }
            ControlOp::Commit { done } => {
                let after = self.commits_started;
                self.commit_wanted = true;
                self.control_commits.push((after, done));
            }
            ControlOp::ClearNeedsCheck { done } => {
                if !read_only {
                    return done(Err(PoolError::Writable));
                }
                self.clearing = Some(done);
                self.write_needs_check(false);
            }
            ControlOp::Describe { done } => done(Ok(PoolDescription {
                volumes: self.meta.volumes().cloned().collect(),
                data_blocks: self.space.data_blocks(),
                used_data_blocks: self.meta.used_data_blocks(),
                held_data_blocks: self.space.held_count(),
                transaction_id: self.meta.transaction_id(),
                mode: self.mode,
                needs_check: self.meta.pool().needs_check,
                metadata_free_blocks: self.meta.metadata_free_blocks(),
                metadata_total_blocks: self.meta.metadata_total_blocks(),
            })),
        }
    }

    /// The pool just turned read-only after a failed commit; `aborted`: the transaction was
    /// rolled back to the last commit (always, but under the mutation that keeps it after a
    /// failed data flush). The views follow, and never show a committed
    /// block as unmapped meanwhile (other cores resolve them all along): one store per view
    /// makes every entry maybe shared, so no fast-path write goes on in place; then each
    /// entry the rollback changed is overwritten in place, and only entries the last commit
    /// does not have are cleared.
    pub(super) fn rebuild_views(&mut self, aborted: bool) {
        for view in self.views.values() {
            view.advance_view_time();
        }
        if !aborted {
            return;
        }
        // A volume deleted in the aborted transaction exists again (found by thin_sim).
        let back: Vec<VolumeId> =
            self.meta.volumes().map(|v| v.id).filter(|id| !self.views.contains_key(id)).collect();
        for id in back {
            self.build_view(id, false);
        }
        let ids: Vec<VolumeId> = self.views.keys().copied().collect();
        let mut stale: Vec<(VirtBlock, DataBlock)> = Vec::new();
        for id in ids {
            let Some(record) = self.meta.volume(id).cloned() else {
                // Created in the aborted transaction: gone.
                if let Some(view) = self.views.remove(&id) {
                    view.mark_deleted();
                }
                self.shared.retire_view(id);
                continue;
            };
            let Some(view) = self.views.get(&id).cloned() else {
                continue;
            };
            let size_vblocks = self.vblocks_of(record.size_bytes).min(view.capacity_vblocks());
            let size_lbas = record.size_bytes / self.lba_bytes;
            // A size the rollback lowers (an aborted grow) takes effect before its tail is
            // cleared; one it raises (an aborted shrink) after the committed tail is back, so
            // no read in between finds the committed tail unmapped.
            let lowered = size_lbas < view.size_lbas();
            if lowered {
                view.set_size(size_vblocks, size_lbas);
            }
            stale.clear();
            view.for_each_published_block(&mut |vblock, data_block| {
                let mapped = self.meta.lookup(id, vblock).map(|m| m.data_block);
                if mapped != Some(data_block) {
                    stale.push((vblock, data_block));
                }
            });
            self.meta.for_each_mapping(id, &mut |vblock, mapping| {
                view.publish(vblock, mapping.data_block, false);
            });
            for &(vblock, _) in &stale {
                if self.meta.lookup(id, vblock).is_none() {
                    view.unpublish(vblock);
                }
            }
            if !lowered {
                view.set_size(size_vblocks, size_lbas);
            }
            // A block only the aborted transaction mapped is free again; a read that
            // resolved it may still be in flight, so it waits out a grace period (the pool
            // may turn writable again once a check clears needs_check).
            let epoch = self.grace.epoch();
            for &(_, block) in &stale {
                if self.meta.data_count(block) == 0 && !self.space.is_in_grace(block) {
                    self.space.enter_grace(block, epoch);
                }
            }
        }
    }

    /// Writes the superblock that records `needs_check` alone (over the last commit, see
    /// [`PoolMetadata::needs_check_superblock`]), then flushes it.
    pub(super) fn write_needs_check(&mut self, needs_check: bool) {
        self.flag_write_failed = false;
        let (block, bytes) = self.meta.needs_check_superblock(needs_check);
        let request = self.meta_write(block, &bytes);
        self.commit_stage = CommitStage::WritingFlag { needs_check };
        self.submit_metadata(request);
    }

    /// A step of the needs_check write completed: flush after the superblock, then finish.
    pub(super) fn needs_check_io_done(&mut self, needs_check: bool) {
        if let CommitStage::WritingFlag { .. } = self.commit_stage
            && !self.flag_write_failed
        {
            self.commit_stage = CommitStage::FlushingFlag { needs_check };
            self.submit_metadata(IoRequest::new(IoKind::Flush, 0, 0, TAG_COMMIT));
            return;
        }
        self.commit_stage = CommitStage::Idle;
        // Writes that landed meanwhile finish while the pool is still read-only: they fail,
        // and none is left waiting for a commit end that already passed (found by thin_sim).
        self.finish_writes_held_by_commit();
        let written = !self.flag_write_failed;
        if written {
            self.meta.needs_check_written(needs_check);
        }
        if needs_check {
            return;
        }
        // A check passed and the flag is down on the device: the pool takes writes again.
        // Its views publish nothing certainly unshared, so the first write to each block
        // goes through the owner, which decides from the metadata. Blocks only an aborted
        // transaction mapped are in their grace period (`rebuild_views`).
        if written {
            self.mode = PoolMode::Write;
            self.refresh_space_mode();
        }
        if let Some(done) = self.clearing.take() {
            done(if written { Ok(()) } else { Err(PoolError::Io(libc::EIO)) });
        }
    }

    /// Leaves an out-of-space mode once space is back (dm-thin checks after each commit):
    /// blocks freed by a delete, a shrink or an unmap are committed free, or the metadata has
    /// room above its reserve again.
    pub(super) fn refresh_space_mode(&mut self) {
        let back = match self.mode {
            PoolMode::OutOfDataSpace => self.meta.used_data_blocks() < self.space.data_blocks(),
            PoolMode::OutOfMetadataSpace => self.meta.metadata_space_ok(),
            _ => false,
        };
        if back {
            self.mode = PoolMode::Write;
        }
    }
}
