//! The simulator's oracle: per volume and sector, every version a read may return (I3, I5),
//! sparse (a sector never written holds the initial zeroes), so volumes of millions of blocks
//! cost what was written to them. A sector's data encodes the write that made it, its LBA
//! and its volume, so a read names the version it returned.
//!
//! A snapshot's sectors start with the versions its origin may have held at the snapshot's
//! instant, marked `at_snapshot`; the first read after the acknowledgement that returns one of
//! them pins it: from then on the others are wrong (snapshot stability: a snapshot reads only
//! what it held then, or what was written to the snapshot itself since).

use std::collections::BTreeMap;

use crate::host::{IoBuffer, SgList};
use crate::thin::types::VolumeId;

use super::SECTOR;

/// One version a sector may hold.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    /// The write that made it (0: the initial zeroes).
    pub id: u64,
    pub zero: bool,
    pub issue: u64,
    /// Completion time, `u64::MAX` while in flight.
    pub done: u64,
    pub ok: bool,
    /// Durable on its own (FUA, the initial zeroes, what a recovery found).
    pub base: bool,
    /// One of the versions a snapshot may have taken from its origin; pinned at first read.
    pub at_snapshot: bool,
}

pub(super) const BASE_ZERO: Entry =
    Entry { id: 0, zero: true, issue: 0, done: 0, ok: true, base: true, at_snapshot: false };

/// A sector's versions; absent sectors hold `[BASE_ZERO]`.
pub(super) type Sectors = BTreeMap<u64, Vec<Entry>>;

/// One volume as the oracle knows it.
#[derive(Clone, Default)]
pub(super) struct VolumeVersions {
    pub sectors: Sectors,
    pub size_sectors: u64,
    /// (time, new size) of every shrink: a read issued before one may return what lay past
    /// the new end.
    pub shrinks: Vec<(u64, u64)>,
}

impl VolumeVersions {
    pub fn new(size_sectors: u64) -> VolumeVersions {
        VolumeVersions { size_sectors, ..VolumeVersions::default() }
    }

    pub fn entries(&self, sector: u64) -> &[Entry] {
        self.sectors.get(&sector).map_or(&[BASE_ZERO], Vec::as_slice)
    }

    /// Adds `other`'s versions to these: the volume holds either's (a snapshot that may be
    /// one of two).
    pub fn merge(&mut self, other: VolumeVersions) {
        let mut keys: Vec<u64> = self.sectors.keys().chain(other.sectors.keys()).copied().collect();
        keys.sort_unstable();
        keys.dedup();
        for sector in keys {
            let mut entries = self.entries(sector).to_vec();
            entries.extend_from_slice(other.entries(sector));
            self.sectors.insert(sector, entries);
        }
        self.size_sectors = self.size_sectors.max(other.size_sectors);
        self.shrinks.extend(other.shrinks);
    }

    /// The smallest size the volume had since `issue` (sectors past it are not checked for a
    /// read issued then).
    pub fn size_since(&self, issue: u64) -> u64 {
        self.shrinks
            .iter()
            .filter(|(at, _)| *at >= issue)
            .map(|(_, size)| *size)
            .fold(self.size_sectors, u64::min)
    }
}

/// Per volume and sector, the versions a read may return.
#[derive(Default)]
pub(super) struct Oracle {
    pub volumes: BTreeMap<VolumeId, VolumeVersions>,
    /// Every successful write completed before this time is durable (an acknowledged flush
    /// or commit issued at this time).
    pub watermark: u64,
}

impl Oracle {
    pub fn add(&mut self, volume: VolumeId, first: u64, count: u64, entry: Entry) {
        let Some(versions) = self.volumes.get_mut(&volume) else {
            return;
        };
        for sector in first..(first + count).min(versions.size_sectors) {
            versions.sectors.entry(sector).or_insert_with(|| vec![BASE_ZERO]).push(entry);
        }
    }

    pub fn complete(
        &mut self,
        volume: VolumeId,
        first: u64,
        count: u64,
        id: u64,
        now: u64,
        ok: bool,
    ) {
        let Some(versions) = self.volumes.get_mut(&volume) else {
            return;
        };
        for (_, entries) in versions.sectors.range_mut(first..first + count) {
            for e in entries.iter_mut().filter(|e| e.id == id) {
                e.done = now;
                e.ok = ok;
            }
        }
    }

    pub fn set_base(&mut self, volume: VolumeId, first: u64, count: u64, id: u64) {
        let Some(versions) = self.volumes.get_mut(&volume) else {
            return;
        };
        for (_, entries) in versions.sectors.range_mut(first..first + count) {
            for e in entries.iter_mut().filter(|e| e.id == id && e.ok) {
                e.base = true;
            }
        }
    }

    /// Versions of a sector a read issued at `read_issue` may return: not overwritten by a
    /// successful write issued after they completed and completed before the read began.
    pub fn readable(entries: &[Entry], read_issue: u64) -> impl Iterator<Item = &Entry> {
        entries.iter().filter(move |v| {
            !entries.iter().any(|u| u.ok && u.done < read_issue && u.issue > v.done)
        })
    }

    /// Whether a read of `lba` issued at `read_issue` may return `content`, and which version
    /// the content stands for. Without zeroing (`stale_allowed`), a partly written new block
    /// may show the pool's stale data (any version, of any sector) where it reads zeroes
    /// otherwise (I3's exception): such content stands for the zeroes, so that a snapshot
    /// pins its zero version, not the version whose id the stale data happens to carry.
    pub fn judge(
        entries: &[Entry],
        content: &Content,
        lba: u64,
        read_issue: u64,
        stale_allowed: bool,
    ) -> Verdict {
        let readable = || Oracle::readable(entries, read_issue);
        match *content {
            Content::Zero => Verdict { good: readable().any(|e| e.zero), zero: true, id: 0 },
            Content::Version { id, lba: at, .. } => {
                if at == lba && readable().any(|e| !e.zero && e.id == id) {
                    Verdict { good: true, zero: false, id }
                } else {
                    let good = stale_allowed && readable().any(|e| e.zero);
                    Verdict { good, zero: true, id: 0 }
                }
            }
            Content::Garbage => Verdict { good: false, zero: false, id: 0 },
        }
    }

    /// A read returned `id` (0 with `zero`: zeroes) for `sector` of a snapshot: the versions
    /// it may have taken at its instant shrink to that one.
    pub fn pin(&mut self, volume: VolumeId, sector: u64, zero: bool, id: u64) {
        let Some(entries) = self.volumes.get_mut(&volume).and_then(|v| v.sectors.get_mut(&sector))
        else {
            return;
        };
        let candidates = entries.iter().filter(|e| e.at_snapshot).count();
        if candidates < 2 {
            return;
        }
        let same = |e: &Entry| if zero { e.zero } else { !e.zero && e.id == id };
        if entries.iter().any(|e| e.at_snapshot && same(e)) {
            entries.retain(|e| !e.at_snapshot || same(e));
        }
    }

    /// The versions a snapshot of `origin` asked at `asked` (with the origin's versions then,
    /// `before`) may hold when it is answered at `now`: those of the origin then, and any
    /// written to the origin since the ask, all marked `at_snapshot`.
    pub fn snapshot_of(
        &self,
        origin: VolumeId,
        before: &VolumeVersions,
        asked: u64,
        now: u64,
    ) -> VolumeVersions {
        let maybe = |e: &Entry| Entry { done: now, ok: false, at_snapshot: true, ..*e };
        let mut sectors = Sectors::new();
        let current = self.volumes.get(&origin);
        let mut keys: Vec<u64> = before.sectors.keys().copied().collect();
        if let Some(current) = current {
            keys.extend(current.sectors.keys().copied());
        }
        keys.sort_unstable();
        keys.dedup();
        for sector in keys.into_iter().filter(|s| *s < before.size_sectors) {
            let then = before.entries(sector);
            let later: Vec<Entry> = current
                .map(|c| c.entries(sector))
                .unwrap_or(&[])
                .iter()
                .filter(|e| e.issue > asked)
                .map(maybe)
                .collect();
            let mut list: Vec<Entry> = then
                .iter()
                .map(|e| {
                    let e = if e.done == u64::MAX { maybe(e) } else { *e };
                    Entry { at_snapshot: true, ..e }
                })
                .collect();
            list.extend(later);
            sectors.insert(sector, list);
        }
        VolumeVersions { sectors, size_sectors: before.size_sectors, shrinks: Vec::new() }
    }

    /// The volume's size changed to `sectors` at `now`: a shrink forgets what lay past the end
    /// but for writes still in flight (they may still land, after a later grow); a grow adds
    /// zeroes.
    pub fn resize(&mut self, volume: VolumeId, sectors: u64, now: u64) {
        let Some(versions) = self.volumes.get_mut(&volume) else {
            return;
        };
        if sectors < versions.size_sectors {
            versions.shrinks.push((now, sectors));
            let past = versions.sectors.split_off(&sectors);
            for (sector, entries) in past {
                let in_flight: Vec<Entry> =
                    entries.into_iter().filter(|e| e.done == u64::MAX).collect();
                if !in_flight.is_empty() {
                    let zero = Entry { issue: now, done: now, ..BASE_ZERO };
                    let mut list = vec![zero];
                    list.extend(in_flight);
                    versions.sectors.insert(sector, list);
                }
            }
        }
        versions.size_sectors = sectors;
    }

    /// Drops versions no read in flight and no crash can return any more.
    pub fn prune(&mut self, oldest_read: u64) {
        let watermark = self.watermark;
        for versions in self.volumes.values_mut() {
            for entries in versions.sectors.values_mut() {
                if entries.len() < 3 {
                    continue;
                }
                let keep: Vec<bool> = entries
                    .iter()
                    .map(|v| {
                        !entries.iter().any(|u| {
                            u.ok && (u.base || u.done < watermark)
                                && u.issue > v.done
                                && u.done < oldest_read
                        })
                    })
                    .collect();
                let mut index = 0;
                entries.retain(|_| {
                    index += 1;
                    keep[index - 1]
                });
            }
            versions.shrinks.retain(|(at, _)| *at >= oldest_read);
        }
    }

    /// A crash (or, `aborted`, an abort): each sector keeps the versions no durable write
    /// overwrote, all now durable, but for writes an abort leaves in flight.
    pub fn crash(&mut self, now: u64, aborted: bool) {
        let watermark = self.watermark;
        for versions in self.volumes.values_mut() {
            for entries in versions.sectors.values_mut() {
                let kept: Vec<Entry> = entries
                    .iter()
                    .filter(|v| {
                        !entries
                            .iter()
                            .any(|u| u.ok && (u.base || u.done < watermark) && u.issue > v.done)
                    })
                    .map(|v| {
                        if aborted && v.done == u64::MAX {
                            *v
                        } else {
                            Entry { issue: now, done: now, ok: true, base: true, ..*v }
                        }
                    })
                    .collect();
                *entries = kept;
            }
            versions.shrinks.clear();
        }
    }
}

// ---------------------------------------------------------------------------------- patterns

fn fill_byte(id: u64, lba: u64) -> u8 {
    (id.wrapping_mul(31).wrapping_add(lba.wrapping_mul(7)) as u8) | 1
}

/// The data of write `id` to `count` sectors of `volume` from `first_lba`.
pub(super) fn pattern(id: u64, volume: VolumeId, first_lba: u64, count: u64) -> SgList {
    let mut buffer = IoBuffer::new(count as usize * SECTOR);
    for (i, sector) in buffer.as_mut_slice().chunks_mut(SECTOR).enumerate() {
        let lba = first_lba + i as u64;
        sector.fill(fill_byte(id, lba));
        sector[..8].copy_from_slice(&id.to_le_bytes());
        sector[8..16].copy_from_slice(&lba.to_le_bytes());
        sector[16..24].copy_from_slice(&volume.0.to_le_bytes());
    }
    SgList::single(buffer)
}

/// The oracle's judgement of one sector a read returned ([`Oracle::judge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Verdict {
    pub good: bool,
    /// The version the content stands for: zeroes, or write `id`.
    pub zero: bool,
    pub id: u64,
}

/// What a sector holds: zeroes, a write's version, or garbage.
pub(super) enum Content {
    Zero,
    Version { id: u64, lba: u64, volume: u64 },
    Garbage,
}

pub(super) fn decode(sector: &[u8]) -> Content {
    if sector.iter().all(|&b| b == 0) {
        return Content::Zero;
    }
    let id = u64::from_le_bytes(sector[..8].try_into().unwrap_or_default());
    let lba = u64::from_le_bytes(sector[8..16].try_into().unwrap_or_default());
    let volume = u64::from_le_bytes(sector[16..24].try_into().unwrap_or_default());
    let byte = fill_byte(id, lba);
    if id == 0 || sector[24..].iter().any(|&b| b != byte) {
        return Content::Garbage;
    }
    Content::Version { id, lba, volume }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seed 504: without zeroing, a snapshot's sector whose versions at the snapshot were the
    /// zeroes or write #267 reads the stale data of another sector (#267's own write to lba
    /// 546 of the origin, left in the block by a crash). Both reads of it are I3's
    /// exception; the first must pin the zeroes, not #267, or the second one fails.
    #[test]
    fn stale_data_in_a_snapshot_pins_the_zeroes_it_stands_for() {
        let snapshot = VolumeId(4);
        // Both survived a crash at t5 (the write was in flight): either may be on the device.
        let at_snapshot = |e: Entry| Entry { at_snapshot: true, issue: 5, done: 5, ..e };
        let written =
            Entry { id: 267, zero: false, issue: 5, done: 5, ok: true, base: true, ..BASE_ZERO };
        let mut oracle = Oracle::default();
        let mut versions = VolumeVersions::new(1024);
        versions.sectors.insert(482, vec![at_snapshot(BASE_ZERO), at_snapshot(written)]);
        oracle.volumes.insert(snapshot, versions);
        let stale = Content::Version { id: 267, lba: 546, volume: 2 };
        for read_issue in [10, 20] {
            let entries = oracle.volumes[&snapshot].entries(482);
            let verdict = Oracle::judge(entries, &stale, 482, read_issue, true);
            assert_eq!(verdict, Verdict { good: true, zero: true, id: 0 }, "read at {read_issue}");
            oracle.pin(snapshot, 482, verdict.zero, verdict.id);
        }
        let entries = oracle.volumes[&snapshot].entries(482);
        assert!(entries.iter().all(|e| e.zero), "the zeroes are pinned: {entries:?}");
        // With zeroing, the stale data is wrong; #267's own data of lba 482 is right.
        let own = Content::Version { id: 267, lba: 482, volume: 2 };
        assert!(!Oracle::judge(entries, &stale, 482, 30, false).good);
        let before_pin = [at_snapshot(BASE_ZERO), at_snapshot(written)];
        assert!(Oracle::judge(&before_pin, &own, 482, 30, false).good);
    }
}
