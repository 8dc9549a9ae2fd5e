//! The published, lock-free view of one volume's mappings that every core's channel resolves
//! against (DESIGN.md "One owner, many channels"). Only the pool owner writes it; channels on
//! any core read it with atomic loads and never allocate or lock.
//!
//! An entry is one `AtomicU64`: 0 means unmapped; otherwise the low 40 bits are the data block
//! plus one and the high 24 bits the entry's *view time*. A volume's view time moves on at each
//! of its snapshots, so an entry whose view time equals the volume's is certainly not shared
//! (it was made, or proven unshared, after the last snapshot): dm-thin's time rule, with a
//! per-volume counter so that 24 bits suffice. When the counter would wrap, the owner rewrites
//! the volume's entries (once per 16 M snapshots of one volume). Entries live in chunks
//! allocated by the owner the first time it maps a block in the chunk, so memory follows what
//! is provisioned (bound: 8 bytes per virtual block of every chunk touched, see README).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::types::{DataBlock, VirtBlock, VolumeId};

/// Virtual blocks per lazily allocated chunk of entries (32 KiB of entries).
pub const VIEW_CHUNK_ENTRIES: u64 = 4096;
/// Bytes of one chunk's slot in a view's table, allocated up front for the view's capacity.
pub const VIEW_CHUNK_SLOT_BYTES: u64 = size_of::<OnceLock<Box<[AtomicU64]>>>() as u64;

const BLOCK_BITS: u32 = 40;
const BLOCK_MASK: u64 = (1 << BLOCK_BITS) - 1;
/// Largest data block an entry can name.
pub const VIEW_DATA_BLOCK_MAX: u64 = BLOCK_MASK - 1;
/// View times run 1..=VIEW_TIME_MAX; 0 marks "older than any snapshot".
pub const VIEW_TIME_MAX: u32 = (1 << (64 - BLOCK_BITS)) - 1;

/// What a channel learns about one virtual block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The owner is still filling this part of a new snapshot's view: wait and retry.
    NotReady,
    Unmapped,
    /// Mapped; `exclusive` = certainly not shared (made after the volume's last snapshot).
    Mapped {
        data_block: DataBlock,
        exclusive: bool,
    },
}

fn chunk_of(vblock: VirtBlock) -> (usize, usize) {
    // Both fit: the chunk count was sized from a usize-indexable allocation.
    ((vblock.0 / VIEW_CHUNK_ENTRIES) as usize, (vblock.0 % VIEW_CHUNK_ENTRIES) as usize)
}

/// One volume's view.
pub struct VolumeView {
    id: VolumeId,
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
    /// Virtual blocks the volume has now (≤ chunk capacity).
    size_vblocks: AtomicU64,
    /// The volume's size in its LBAs (what frontends may address).
    size_lbas: AtomicU64,
    view_time: AtomicU32,
    /// Set while a snapshot of this volume is being taken: every write goes to the owner.
    quiesced: AtomicBool,
    /// Set when the volume is deleted: every IO fails.
    deleted: AtomicBool,
    /// Entries below this virtual block are published. A snapshot's view is filled by the
    /// owner a bounded slice per poll after the snapshot is acknowledged, so a snapshot costs
    /// the same whatever the volume's size; everything else is ready at once.
    ready_vblocks: AtomicU64,
}

impl VolumeView {
    /// A view for a volume of `size_vblocks` that may grow to `capacity_vblocks`.
    pub fn new(id: VolumeId, size_vblocks: u64, capacity_vblocks: u64) -> VolumeView {
        let chunk_count = capacity_vblocks.max(size_vblocks).div_ceil(VIEW_CHUNK_ENTRIES);
        let chunks = (0..chunk_count).map(|_| OnceLock::new()).collect();
        VolumeView {
            id,
            chunks,
            size_vblocks: AtomicU64::new(size_vblocks),
            size_lbas: AtomicU64::new(0),
            view_time: AtomicU32::new(1),
            quiesced: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            ready_vblocks: AtomicU64::new(u64::MAX),
        }
    }

    pub fn id(&self) -> VolumeId {
        self.id
    }

    pub fn size_vblocks(&self) -> u64 {
        self.size_vblocks.load(Ordering::Acquire)
    }

    pub fn capacity_vblocks(&self) -> u64 {
        self.chunks.len() as u64 * VIEW_CHUNK_ENTRIES
    }

    /// Whether every entry below `end` is published (see `ready_vblocks`).
    #[inline]
    pub fn is_ready_below(&self, end: VirtBlock) -> bool {
        // Acquire pairs with the owner's Release in `set_ready`: the entries are visible.
        end.0 <= self.ready_vblocks.load(Ordering::Acquire)
    }

    /// Owner: entries below `vblocks` are published (u64::MAX: all).
    pub fn set_ready(&self, vblocks: u64) {
        self.ready_vblocks.store(vblocks, Ordering::Release);
    }

    /// Resolves `vblock`. Called by channels after entering their epoch.
    #[inline]
    pub fn resolve(&self, vblock: VirtBlock) -> Resolved {
        if vblock.0 >= self.ready_vblocks.load(Ordering::Acquire) {
            return Resolved::NotReady;
        }
        let (chunk, index) = chunk_of(vblock);
        let Some(entries) = self.chunks.get(chunk).and_then(OnceLock::get) else {
            return Resolved::Unmapped;
        };
        // Acquire pairs with the owner's Release store: a channel that sees an entry sees the
        // data written before the owner published it.
        let entry = entries[index].load(Ordering::Acquire);
        if entry == 0 {
            return Resolved::Unmapped;
        }
        let view_time = (entry >> BLOCK_BITS) as u32;
        Resolved::Mapped {
            data_block: DataBlock((entry & BLOCK_MASK) - 1),
            exclusive: view_time == self.view_time.load(Ordering::Acquire),
        }
    }

    /// Every published entry, resolved, in order (a full check of I6 walks the chunks the
    /// owner allocated, not the whole capacity).
    pub fn for_each_published(&self, f: &mut dyn FnMut(VirtBlock, Resolved)) {
        for (chunk, entries) in self.chunks.iter().enumerate() {
            let Some(entries) = entries.get() else {
                continue;
            };
            for (index, entry) in entries.iter().enumerate() {
                if entry.load(Ordering::Acquire) != 0 {
                    let vblock = VirtBlock(chunk as u64 * VIEW_CHUNK_ENTRIES + index as u64);
                    f(vblock, self.resolve(vblock));
                }
            }
        }
    }

    /// The first virtual block not yet published (u64::MAX once the view is whole).
    pub fn ready_vblocks(&self) -> u64 {
        self.ready_vblocks.load(Ordering::Acquire)
    }

    pub fn is_quiesced(&self) -> bool {
        self.quiesced.load(Ordering::SeqCst)
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    // ---- owner side ----

    /// Publishes `vblock` → `data_block`, exclusive (made now) or not. Owner only.
    pub fn publish(&self, vblock: VirtBlock, data_block: DataBlock, exclusive: bool) {
        assert!(data_block.0 <= VIEW_DATA_BLOCK_MAX, "data block beyond the view's range");
        let (chunk, index) = chunk_of(vblock);
        let Some(slot) = self.chunks.get(chunk) else {
            debug_assert!(false, "publish past the view's capacity");
            return;
        };
        let entries = slot.get_or_init(|| {
            (0..VIEW_CHUNK_ENTRIES).map(|_| AtomicU64::new(0)).collect::<Vec<_>>().into()
        });
        let view_time =
            if exclusive { u64::from(self.view_time.load(Ordering::Relaxed)) } else { 0 };
        entries[index].store((data_block.0 + 1) | view_time << BLOCK_BITS, Ordering::Release);
    }

    /// Removes `vblock`'s entry. Owner only; the owner then advances the epoch before the
    /// block may be reused (grace period).
    pub fn unpublish(&self, vblock: VirtBlock) {
        let (chunk, index) = chunk_of(vblock);
        if let Some(entries) = self.chunks.get(chunk).and_then(OnceLock::get) {
            entries[index].store(0, Ordering::Release);
        }
    }

    /// Calls `f` for every published entry, in virtual block order. Owner only (it is the
    /// only writer, so what it reads here is what it last stored).
    pub fn for_each_published_block(&self, f: &mut dyn FnMut(VirtBlock, DataBlock)) {
        for (chunk, entries) in self.chunks.iter().enumerate() {
            let Some(entries) = entries.get() else {
                continue;
            };
            for (index, entry) in entries.iter().enumerate() {
                let value = entry.load(Ordering::Relaxed);
                if value != 0 {
                    let vblock = chunk as u64 * VIEW_CHUNK_ENTRIES + index as u64;
                    f(VirtBlock(vblock), DataBlock((value & BLOCK_MASK) - 1));
                }
            }
        }
    }

    /// Makes every current entry "maybe shared" (a snapshot was taken). O(1) but for the rare
    /// wrap of the 24-bit counter.
    pub fn advance_view_time(&self) {
        let next = self.view_time.load(Ordering::Relaxed) + 1;
        if next <= VIEW_TIME_MAX {
            self.view_time.store(next, Ordering::Release);
            return;
        }
        // Wrap: first make every entry "older than any snapshot", then restart the counter.
        for entries in self.chunks.iter().filter_map(OnceLock::get) {
            for entry in entries.iter() {
                let value = entry.load(Ordering::Relaxed);
                if value != 0 {
                    entry.store(value & BLOCK_MASK, Ordering::Release);
                }
            }
        }
        self.view_time.store(1, Ordering::Release);
    }

    pub fn set_quiesced(&self, on: bool) {
        self.quiesced.store(on, Ordering::SeqCst);
    }

    /// Sets the volume's size (creation, resize). Owner only.
    pub fn set_size(&self, size_vblocks: u64, size_lbas: u64) {
        debug_assert!(size_vblocks <= self.capacity_vblocks());
        self.size_vblocks.store(size_vblocks, Ordering::Release);
        self.size_lbas.store(size_lbas, Ordering::Release);
    }

    /// The volume's size in LBAs, read by channels on every request.
    #[inline]
    pub fn size_lbas(&self) -> u64 {
        self.size_lbas.load(Ordering::Acquire)
    }

    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_resolve_and_snapshots_make_them_shared() {
        let view = VolumeView::new(VolumeId(1), 10_000, 10_000);
        assert_eq!(view.resolve(VirtBlock(5000)), Resolved::Unmapped);
        view.publish(VirtBlock(5000), DataBlock(7), true);
        view.publish(VirtBlock(1), DataBlock(0), false);
        assert_eq!(
            view.resolve(VirtBlock(5000)),
            Resolved::Mapped { data_block: DataBlock(7), exclusive: true }
        );
        assert_eq!(
            view.resolve(VirtBlock(1)),
            Resolved::Mapped { data_block: DataBlock(0), exclusive: false }
        );
        view.advance_view_time();
        assert_eq!(
            view.resolve(VirtBlock(5000)),
            Resolved::Mapped { data_block: DataBlock(7), exclusive: false }
        );
        view.unpublish(VirtBlock(5000));
        assert_eq!(view.resolve(VirtBlock(5000)), Resolved::Unmapped);
        assert_eq!(view.resolve(VirtBlock(1_000_000)), Resolved::Unmapped, "past the end");
    }

    #[test]
    fn a_wrapped_view_time_leaves_no_entry_exclusive() {
        let view = VolumeView::new(VolumeId(1), 8, 8);
        view.view_time.store(VIEW_TIME_MAX, Ordering::Relaxed);
        view.publish(VirtBlock(3), DataBlock(9), true);
        view.advance_view_time();
        assert_eq!(
            view.resolve(VirtBlock(3)),
            Resolved::Mapped { data_block: DataBlock(9), exclusive: false }
        );
        view.publish(VirtBlock(4), DataBlock(10), true);
        assert!(matches!(view.resolve(VirtBlock(4)), Resolved::Mapped { exclusive: true, .. }));
    }
}
