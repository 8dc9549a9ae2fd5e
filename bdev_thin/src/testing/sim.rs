//! The deterministic simulator (issue 13): one seed decides a whole run of the REAL pool code
//! (an [`Owner`] and several [`VolumeChannel`]s, one per simulated core and volume) over a
//! [`SimDevice`] whose every IO the seed completes, fails, delays or applies early, with
//! crashes that lose all, some or torn parts of the unflushed writes, then reopen the pool
//! from the device and go on. An oracle ([`Oracle`]) knows, per volume and sector, every
//! version a read may return, and the run checks (DESIGN.md "Invariants"):
//! - I3 on every read completion (a sector encodes the write that made it and its LBA);
//! - I4 on every passdown deallocate, at every step from issue to completion (the block is
//!   held, mapped in neither the open nor the committed trees, and not reserved);
//! - I1/I2 with `thinctl check`'s code on the device, a reopen and the space map's flags, at
//!   the end of every seed and after every crash; I5 by reading every sector after recovery.
//!
//! Nothing here reads a clock or an OS random source: the same seed replays the same run.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use crossbeam_queue::ArrayQueue;

use super::{SimDevice, SteppingHost};
use crate::host::{
    DeviceChannel, IoBuffer, IoCompletion, IoFlags, IoKind, IoRequest, NoopWaker, SgList,
};
use crate::thin::channel::{ChannelGeometry, VolumeChannel};
use crate::thin::metadata::{Layout, METADATA_BLOCK_BYTES, PoolMetadata, check};
use crate::thin::mutations::Mutations;
use crate::thin::owner::{ControlOp, Owner, OwnerSettings, PoolError};
use crate::thin::pool::{PoolLimits, PoolShared};
use crate::thin::types::{DataBlock, DiscardMode, MetaBlock, OutOfSpaceMode, PoolMode, VolumeId};

const LBA: u32 = 512;
const SECTOR: usize = LBA as usize;
/// User IOs in flight at most (all channels).
const IN_FLIGHT_MAX: usize = 48;
const VOLUMES_MAX: usize = 6;
const TRACE_LEN: usize = 30;

type Channel = VolumeChannel<SimDevice, NoopWaker>;

/// The seeds CI runs (`ci/test.sh`, about 30 s in release on one core) at the default steps;
/// every mutation must fail one of them (`tests/sim_mutations.rs`).
pub const CI_SEEDS: std::ops::Range<u64> = 0..2000;

/// Seeds `cargo test` runs on its own (`tests/sim_seeds.rs`), a prefix of [`CI_SEEDS`].
pub const QUICK_SEEDS: std::ops::Range<u64> = 0..100;

/// The regression list: every seed that ever failed (`bdev_thin/tests/regression_seeds.txt`).
pub fn parse_seed_list(text: &str) -> Result<Vec<u64>, String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.parse::<u64>().map_err(|e| format!("bad seed {l:?}: {e}")))
        .collect()
}

/// SplitMix64: small, seeded, good enough to pick actions.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x005e_ed0f_7e57_b10c)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    pub fn range(&mut self, low: u64, high_inclusive: u64) -> u64 {
        low + self.below(high_inclusive - low + 1)
    }
}

/// What one seed runs.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub steps: u64,
    /// Data blocks of the pool at format (0: the seed picks 32..=512).
    pub data_blocks: u64,
    /// Data block size (0: the seed picks 4, 8 or 16 KiB).
    pub block_bytes: u32,
    pub crashes: bool,
    pub faults: bool,
    pub mutations: Mutations,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            steps: 3000,
            data_blocks: 0,
            block_bytes: 0,
            crashes: true,
            faults: true,
            mutations: Mutations::NONE,
        }
    }
}

/// What a clean seed did.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimReport {
    pub steps: u64,
    pub ios: u64,
    pub reads_checked: u64,
    pub sectors_checked: u64,
    pub deallocates_checked: u64,
    pub crashes: u64,
    pub io_errors: u64,
    pub read_only: bool,
}

/// A failing seed: what broke, where, and the last steps.
#[derive(Clone, Debug)]
pub struct SimFailure {
    pub seed: u64,
    pub step: u64,
    pub message: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} failed at step {}: {}", self.seed, self.step, self.message)?;
        writeln!(f, "last steps:")?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

thread_local! {
    static TRACE: RefCell<VecDeque<String>> = const { RefCell::new(VecDeque::new()) };
}

/// Trace lines kept: `TRACE_LEN`, or `THIN_SIM_TRACE` from the environment (debugging).
fn trace_len() -> usize {
    static LEN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LEN.get_or_init(|| {
        std::env::var("THIN_SIM_TRACE").ok().and_then(|v| v.parse().ok()).unwrap_or(TRACE_LEN)
    })
}

fn trace(step: u64, line: impl FnOnce() -> String) {
    TRACE.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() >= trace_len() {
            t.pop_front();
        }
        t.push_back(format!("{step:>7} {}", line()));
    });
}

/// The last steps of the run on this thread (a panic hook prints them).
pub fn last_trace() -> Vec<String> {
    TRACE.with(|t| t.borrow().iter().cloned().collect())
}

// ---------------------------------------------------------------------------------- oracle

/// One version a sector may hold.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The write that made it (0: the initial zeroes).
    id: u64,
    zero: bool,
    issue: u64,
    /// Completion time, `u64::MAX` while in flight.
    done: u64,
    ok: bool,
    /// Durable on its own (FUA, the initial zeroes, what a recovery found).
    base: bool,
}

const BASE_ZERO: Entry = Entry { id: 0, zero: true, issue: 0, done: 0, ok: true, base: true };

/// Per volume and sector, the versions a read may return (module docs).
#[derive(Default)]
pub struct Oracle {
    volumes: BTreeMap<VolumeId, Vec<Vec<Entry>>>,
    /// Every successful write completed before this time is durable (an acknowledged flush
    /// or commit issued at this time).
    watermark: u64,
}

impl Oracle {
    fn add(&mut self, volume: VolumeId, first: u64, count: u64, entry: Entry) {
        if let Some(sectors) = self.volumes.get_mut(&volume) {
            for s in first..(first + count).min(sectors.len() as u64) {
                sectors[s as usize].push(entry);
            }
        }
    }

    fn complete(&mut self, volume: VolumeId, first: u64, count: u64, id: u64, now: u64, ok: bool) {
        let watermark_fua = |e: &mut Entry| {
            e.done = now;
            e.ok = ok;
        };
        if let Some(sectors) = self.volumes.get_mut(&volume) {
            for s in first..(first + count).min(sectors.len() as u64) {
                for e in sectors[s as usize].iter_mut().filter(|e| e.id == id) {
                    watermark_fua(e);
                }
            }
        }
    }

    fn set_base(&mut self, volume: VolumeId, first: u64, count: u64, id: u64) {
        if let Some(sectors) = self.volumes.get_mut(&volume) {
            for s in first..(first + count).min(sectors.len() as u64) {
                for e in sectors[s as usize].iter_mut().filter(|e| e.id == id && e.ok) {
                    e.base = true;
                }
            }
        }
    }

    /// Versions of a sector a read issued at `read_issue` may return: not overwritten by a
    /// successful write issued after they completed and completed before the read began.
    fn readable(entries: &[Entry], read_issue: u64) -> impl Iterator<Item = &Entry> {
        entries.iter().filter(move |v| {
            !entries.iter().any(|u| u.ok && u.done < read_issue && u.issue > v.done)
        })
    }

    /// Drops versions no read in flight and no crash can return any more.
    fn prune(&mut self, oldest_read: u64) {
        let watermark = self.watermark;
        for sectors in self.volumes.values_mut() {
            for entries in sectors.iter_mut() {
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
        }
    }

    /// A crash (or, `aborted`, an abort): each sector keeps the versions no durable write
    /// overwrote, all now durable, but for writes an abort leaves in flight.
    fn crash(&mut self, now: u64, aborted: bool) {
        let watermark = self.watermark;
        for sectors in self.volumes.values_mut() {
            for entries in sectors.iter_mut() {
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
        }
    }
}

// ---------------------------------------------------------------------------------- patterns

fn fill_byte(id: u64, lba: u64) -> u8 {
    (id.wrapping_mul(31).wrapping_add(lba.wrapping_mul(7)) as u8) | 1
}

fn pattern(id: u64, volume: VolumeId, first_lba: u64, count: u64) -> SgList {
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

/// What a sector holds: zeroes, a write's version, or garbage.
enum Content {
    Zero,
    Version { id: u64, lba: u64, volume: u64 },
    Garbage,
}

fn decode(sector: &[u8]) -> Content {
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

// ---------------------------------------------------------------------------------- the run

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UserKind {
    Read,
    Write { fua: bool },
    Unmap,
    WriteZeroes,
    Flush,
}

struct UserOp {
    kind: UserKind,
    volume: VolumeId,
    lba: u64,
    count: u64,
    issue: u64,
    /// First and count of the sectors the oracle gave a version (unmap: whole blocks only).
    versioned: (u64, u64),
}

struct Vol {
    blocks: u64,
    channels: Vec<Channel>,
    /// No new IO (a delete or resize is in flight).
    frozen: bool,
}

type Slot<T> = Arc<Mutex<Option<Result<T, PoolError>>>>;

enum Control {
    Create {
        blocks: u64,
        slot: Slot<VolumeId>,
    },
    /// `before`: the origin's versions when the snapshot was asked for, at `asked`.
    Snapshot {
        origin: VolumeId,
        before: Vec<Vec<Entry>>,
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

struct Sim {
    config: SimConfig,
    rng: Rng,
    step: u64,
    now: u64,
    block_bytes: u32,
    lbas_per_block: u64,
    settings: OwnerSettings,
    device: SimDevice,
    host: SteppingHost,
    shared: Arc<PoolShared<NoopWaker>>,
    control: Arc<ArrayQueue<ControlOp>>,
    owner: Owner<SimDevice, SteppingHost>,
    geometry: ChannelGeometry,
    volumes: BTreeMap<VolumeId, Vol>,
    oracle: Oracle,
    ops: BTreeMap<u64, UserOp>,
    next_id: u64,
    pending_control: Option<Control>,
    /// Device IO id → the step before which the seed does not deliver it.
    release_at: BTreeMap<u64, u64>,
    data_fail_per_mille: u64,
    meta_fail_per_mille: u64,
    crash_per_mille: u64,
    read_only_seen: bool,
    aborted_at: u64,
    crash_soon: bool,
    /// Volumes a failed create (key None) or snapshot (key: the origin) may have left on the
    /// device, with the versions they may hold.
    maybe_volumes: BTreeMap<Option<VolumeId>, Vec<Vec<Entry>>>,
    /// Volumes a failed delete may have removed from the device.
    maybe_deleted: Vec<VolumeId>,
    report: SimReport,
}

type Failure = String;

fn fail<T>(message: String) -> Result<T, Failure> {
    Err(message)
}

impl Sim {
    fn new(config: SimConfig) -> Result<Sim, Failure> {
        let mut rng = Rng::new(config.seed);
        let block_bytes = match config.block_bytes {
            0 => [4096, 4096, 4096, 8192, 8192, 16384][rng.below(6) as usize],
            b => b,
        };
        let data_blocks = match config.data_blocks {
            0 => [32, 64, 128, 256, 512][rng.below(5) as usize],
            d => d,
        };
        let block = u64::from(block_bytes);
        let max_bytes = (data_blocks * 2 + 16) * block + (8 << 20);
        let probe = Layout::on_data_device(max_bytes, block_bytes, max_bytes)
            .map_err(|e| format!("layout: {e}"))?;
        let initial = probe.data_offset_bytes + data_blocks * block;
        let layout = Layout::on_data_device(initial, block_bytes, max_bytes)
            .map_err(|e| format!("layout: {e}"))?;
        let device = SimDevice::new(LBA, max_bytes / u64::from(LBA));
        device.set_auto_complete(false);
        let discard = match rng.below(20) {
            0..=11 => DiscardMode::Passdown,
            12..=16 => DiscardMode::NoPassdown,
            _ => DiscardMode::Ignore,
        };
        let settings = OwnerSettings {
            discard,
            zero_new_blocks: true,
            out_of_space: if rng.chance(200) {
                OutOfSpaceMode::Queue
            } else {
                OutOfSpaceMode::Error
            },
            no_space_timeout_s: 5,
            low_water_mark: 0,
            commit_interval_ms: rng.range(10, 2000) as u32,
            mutations: config.mutations,
            limits: PoolLimits::PRODUCTION,
        };
        let record = settings.to_record([7; 16], "simpool");
        let meta = PoolMetadata::format(layout, record).map_err(|e| format!("format: {e}"))?;
        let shared = PoolShared::new(NoopWaker);
        let control = Arc::new(ArrayQueue::new(16));
        let host = SteppingHost::new();
        let owner = Owner::new(
            host.clone(),
            Arc::clone(&shared),
            Arc::clone(&control),
            meta,
            &device,
            settings,
        )
        .map_err(|e| format!("owner: {e}"))?;
        let geometry = ChannelGeometry {
            lba_bytes: u64::from(LBA),
            lbas_per_block: block / u64::from(LBA),
            data_offset_lbas: layout.data_offset_bytes / u64::from(LBA),
        };
        let (data_fail, meta_fail) = if config.faults {
            let data = [0, 0, 5, 10, 20][rng.below(5) as usize];
            let meta = if rng.chance(50) { 3 } else { 0 };
            (data, meta)
        } else {
            (0, 0)
        };
        let crash = if config.crashes { [0, 1, 2, 4][rng.below(4) as usize] } else { 0 };
        Ok(Sim {
            config,
            rng,
            step: 0,
            now: 1,
            block_bytes,
            lbas_per_block: block / u64::from(LBA),
            settings,
            device,
            host,
            shared,
            control,
            owner,
            geometry,
            volumes: BTreeMap::new(),
            oracle: Oracle::default(),
            ops: BTreeMap::new(),
            next_id: 1,
            pending_control: None,
            release_at: BTreeMap::new(),
            data_fail_per_mille: data_fail,
            meta_fail_per_mille: meta_fail,
            crash_per_mille: crash,
            read_only_seen: false,
            aborted_at: 0,
            crash_soon: false,
            maybe_volumes: BTreeMap::new(),
            maybe_deleted: Vec::new(),
            report: SimReport::default(),
        })
    }

    fn tick(&mut self) -> u64 {
        self.now += 1;
        self.now
    }

    fn open_channel(&self, volume: VolumeId) -> Result<Channel, Failure> {
        let Some(view) = self.shared.view(volume) else {
            return fail(format!("no view for {volume}"));
        };
        let limits = self.settings.limits;
        VolumeChannel::open(
            Arc::clone(&self.shared),
            view,
            &self.device,
            self.geometry,
            limits,
            NoopWaker,
        )
        .map_err(|e| format!("open channel: {e}"))
    }

    fn add_volume(&mut self, volume: VolumeId, blocks: u64) -> Result<(), Failure> {
        let cores = self.rng.range(1, 3);
        let mut channels = Vec::new();
        for _ in 0..cores {
            channels.push(self.open_channel(volume)?);
        }
        self.volumes.insert(volume, Vol { blocks, channels, frozen: false });
        Ok(())
    }

    // ------------------------------------------------------------------ user IO

    fn submit_user(&mut self) -> Result<(), Failure> {
        if self.ops.len() >= IN_FLIGHT_MAX {
            return Ok(());
        }
        let candidates: Vec<VolumeId> =
            self.volumes.iter().filter(|(_, v)| !v.frozen).map(|(id, _)| *id).collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let volume = candidates[self.rng.below(candidates.len() as u64) as usize];
        let lpb = self.lbas_per_block;
        let (blocks, channel_count) = {
            let v = &self.volumes[&volume];
            (v.blocks, v.channels.len())
        };
        let size_lbas = blocks * lpb;
        let kind = match self.rng.below(100) {
            0..=39 => UserKind::Read,
            40..=71 => UserKind::Write { fua: false },
            72..=77 => UserKind::Write { fua: true },
            78..=86 => UserKind::Unmap,
            87..=94 => UserKind::WriteZeroes,
            _ => UserKind::Flush,
        };
        let (lba, count) = if kind == UserKind::Flush {
            (0, 0)
        } else if self.rng.chance(500) {
            let first = self.rng.below(blocks);
            let n = self.rng.range(1, 3.min(blocks - first));
            (first * lpb, n * lpb)
        } else {
            let lba = self.rng.below(size_lbas);
            let n = self.rng.range(1, (3 * lpb).min(size_lbas - lba));
            (lba, n)
        };
        let id = self.next_id;
        self.next_id += 1;
        let issue = self.tick();
        let mut flags = IoFlags::NONE;
        let request = match kind {
            UserKind::Read => IoRequest::new(IoKind::Read, lba, count, id)
                .with_buffers(SgList::single(IoBuffer::new(count as usize * SECTOR))),
            UserKind::Write { fua } => {
                if fua {
                    flags = IoFlags::FUA;
                }
                IoRequest::new(IoKind::Write, lba, count, id)
                    .with_buffers(pattern(id, volume, lba, count))
                    .with_flags(flags)
            }
            UserKind::Unmap => IoRequest::new(IoKind::Unmap, lba, count, id),
            UserKind::WriteZeroes => {
                if self.rng.chance(200) {
                    flags = IoFlags::NO_UNMAP;
                }
                IoRequest::new(IoKind::WriteZeroes, lba, count, id).with_flags(flags)
            }
            UserKind::Flush => IoRequest::new(IoKind::Flush, 0, 0, id),
        };
        let versioned = match kind {
            UserKind::Write { .. } | UserKind::WriteZeroes => (lba, count),
            UserKind::Unmap if self.settings.discard != DiscardMode::Ignore => {
                let first = lba.div_ceil(lpb);
                let end = ((lba + count) / lpb).max(first);
                (first * lpb, (end - first) * lpb)
            }
            _ => (0, 0),
        };
        let which = self.rng.below(channel_count as u64) as usize;
        let Some(channel) = self.volumes.get_mut(&volume).map(|v| &mut v.channels[which]) else {
            return Ok(());
        };
        if channel.submit(request).is_err() {
            return Ok(());
        }
        if versioned.1 > 0 {
            let zero = !matches!(kind, UserKind::Write { .. });
            let entry = Entry { id, zero, issue, done: u64::MAX, ok: false, base: false };
            self.oracle.add(volume, versioned.0, versioned.1, entry);
        }
        trace(self.step, || format!("submit #{id} {kind:?} {volume} lba {lba}+{count}"));
        self.ops.insert(id, UserOp { kind, volume, lba, count, issue, versioned });
        self.report.ios += 1;
        Ok(())
    }

    fn poll_channel(&mut self, volume: VolumeId, which: usize) -> Result<(), Failure> {
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

    fn poll_random_channel(&mut self) -> Result<(), Failure> {
        let all: Vec<(VolumeId, usize)> = self
            .volumes
            .iter()
            .flat_map(|(id, v)| (0..v.channels.len()).map(move |i| (*id, i)))
            .collect();
        if all.is_empty() {
            return Ok(());
        }
        let (volume, which) = all[self.rng.below(all.len() as u64) as usize];
        self.host.set_current_core(which as u32 + 1);
        self.poll_channel(volume, which)
    }

    /// One owner poll, then I4 on every deallocate in flight. A failed commit aborts the
    /// transaction: for the oracle that is a crash (DESIGN.md I3).
    fn poll_owner(&mut self) -> Result<(), Failure> {
        self.host.set_current_core(0);
        self.owner.poll();
        if !self.read_only_seen && self.owner.mode() == PoolMode::ReadOnly {
            self.read_only_seen = true;
            let now = self.tick();
            self.aborted_at = now;
            trace(self.step, || "pool turned read-only: the transaction aborted".into());
            self.oracle.crash(now, true);
        }
        self.check_passdowns()
    }

    fn poll_all(&mut self) -> Result<(), Failure> {
        self.poll_owner()?;
        let all: Vec<(VolumeId, usize)> = self
            .volumes
            .iter()
            .flat_map(|(id, v)| (0..v.channels.len()).map(move |i| (*id, i)))
            .collect();
        for (volume, which) in all {
            self.poll_channel(volume, which)?;
        }
        Ok(())
    }

    fn user_done(&mut self, completion: IoCompletion) -> Result<(), Failure> {
        let IoCompletion { request, status } = completion;
        let Some(op) = self.ops.remove(&request.tag) else {
            return fail(format!("completion for unknown IO #{}", request.tag));
        };
        let now = self.tick();
        let id = request.tag;
        trace(self.step, || format!("done #{id} {:?} {}: {status:?}", op.kind, op.volume));
        match op.kind {
            UserKind::Read => {
                // A read from before an abort may return what the aborted transaction mapped.
                if status.is_success() && op.issue > self.aborted_at {
                    self.check_read(&op, &request)?;
                }
            }
            UserKind::Write { .. } | UserKind::Unmap | UserKind::WriteZeroes => {
                let mut ok = status.is_success();
                if op.kind == UserKind::Unmap
                    && matches!(self.owner.mode(), PoolMode::ReadOnly | PoolMode::Fail)
                {
                    // A read-only pool acknowledges a discard without doing it (advisory).
                    ok = false;
                }
                let (first, count) = op.versioned;
                self.oracle.complete(op.volume, first, count, id, now, ok);
                if ok && op.kind == (UserKind::Write { fua: true }) {
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
        let Some(sectors) = self.oracle.volumes.get(&op.volume) else {
            return Ok(());
        };
        self.report.reads_checked += 1;
        for (i, sector) in bytes.chunks(SECTOR).enumerate() {
            let lba = op.lba + i as u64;
            let Some(entries) = sectors.get(lba as usize) else {
                continue;
            };
            self.report.sectors_checked += 1;
            let entries = entries.as_slice();
            let content = decode(sector);
            let good = match content {
                Content::Zero => Oracle::readable(entries, op.issue).any(|e| e.zero),
                Content::Version { id, lba: at, .. } => {
                    at == lba && Oracle::readable(entries, op.issue).any(|e| !e.zero && e.id == id)
                }
                Content::Garbage => false,
            };
            if !good {
                let got = match content {
                    Content::Zero => "zeroes".to_string(),
                    Content::Version { id, lba, volume } => {
                        format!("write #{id} of volume {volume} lba {lba}")
                    }
                    Content::Garbage => "garbage".to_string(),
                };
                let allowed: Vec<String> = Oracle::readable(entries, op.issue)
                    .map(|e| if e.zero { format!("zero#{}", e.id) } else { format!("#{}", e.id) })
                    .collect();
                let all: Vec<String> = entries
                    .iter()
                    .map(|e| format!("#{} t{}..t{} ok {}", e.id, e.issue, e.done, e.ok))
                    .collect();
                return fail(format!(
                    "I3: read of {} lba {lba} (issued at t{}) returned {got}; allowed {allowed:?} \
                     (versions {all:?})",
                    op.volume, op.issue
                ));
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ device

    fn is_meta_io(&self, offset: u64, kind: IoKind) -> bool {
        kind == IoKind::Flush || offset < self.geometry.data_offset_lbas
    }

    fn device_action(&mut self) -> Result<(), Failure> {
        let pending = self.device.pending();
        if pending.is_empty() {
            return Ok(());
        }
        // New IOs get their delivery delay now.
        for io in &pending {
            if !self.release_at.contains_key(&io.id) {
                let long = matches!(io.kind, IoKind::Read | IoKind::Unmap);
                let delay = match self.rng.below(100) {
                    0..=79 => 0,
                    80..=94 => self.rng.range(1, 40),
                    _ if long => self.rng.range(100, 1500),
                    _ => self.rng.range(40, 200),
                };
                self.release_at.insert(io.id, self.step + delay);
            }
        }
        let ready: Vec<_> =
            pending.iter().filter(|io| self.release_at[&io.id] <= self.step).collect();
        let io = if ready.is_empty() {
            let io = &pending[self.rng.below(pending.len() as u64) as usize];
            if io.applied || matches!(io.kind, IoKind::Read | IoKind::Flush) {
                return Ok(());
            }
            // Held IOs may still take effect early.
            trace(self.step, || format!("apply dev{} {:?} {}", io.id, io.kind, io.offset_blocks));
            self.device.apply(io.id);
            return Ok(());
        } else {
            ready[self.rng.below(ready.len() as u64) as usize].clone()
        };
        if !io.applied && self.rng.chance(150) && !matches!(io.kind, IoKind::Read | IoKind::Flush) {
            trace(self.step, || format!("apply dev{} {:?} {}", io.id, io.kind, io.offset_blocks));
            self.device.apply(io.id);
            return Ok(());
        }
        let per_mille = if self.is_meta_io(io.offset_blocks, io.kind) {
            self.meta_fail_per_mille
        } else {
            self.data_fail_per_mille
        };
        self.release_at.remove(&io.id);
        if per_mille > 0 && self.rng.chance(per_mille) {
            trace(self.step, || {
                format!("FAIL dev{} {:?} {}+{}", io.id, io.kind, io.offset_blocks, io.num_blocks)
            });
            self.report.io_errors += 1;
            self.device.fail(io.id, libc::EIO);
        } else {
            trace(self.step, || {
                format!(
                    "complete dev{} {:?} {}+{}",
                    io.id, io.kind, io.offset_blocks, io.num_blocks
                )
            });
            if io.kind == IoKind::Unmap {
                self.check_deallocate(io.offset_blocks, io.num_blocks, "completes")?;
            }
            self.device.complete(io.id);
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

    fn check_passdowns(&mut self) -> Result<(), Failure> {
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

    /// I2 on the allocator's flags: a reserved block has no count and no hold; a held block
    /// is mapped in no open tree.
    fn check_space(&self) -> Result<(), Failure> {
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

    // ------------------------------------------------------------------ control

    fn start_control(&mut self) {
        if self.pending_control.is_some() {
            return;
        }
        let ids: Vec<VolumeId> = self.volumes.keys().copied().collect();
        let idle: Vec<VolumeId> = ids
            .iter()
            .copied()
            .filter(|id| !self.ops.values().any(|op| op.volume == *id))
            .collect();
        let choice = if ids.is_empty() { 0 } else { self.rng.below(10) };
        let control = match choice {
            0..=2 if ids.len() < VOLUMES_MAX => {
                let blocks = self.rng.range(4, 64);
                let slot: Slot<VolumeId> = Arc::default();
                let answer = Arc::clone(&slot);
                let op = ControlOp::CreateVolume {
                    uuid: [1; 16],
                    name: format!("v{}", self.step),
                    size_bytes: blocks * u64::from(self.block_bytes),
                    done: Box::new(move |r| {
                        *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(r)
                    }),
                };
                if self.control.push(op).is_err() {
                    return;
                }
                Control::Create { blocks, slot }
            }
            3..=4 if ids.len() < VOLUMES_MAX => {
                let origin = ids[self.rng.below(ids.len() as u64) as usize];
                let slot: Slot<VolumeId> = Arc::default();
                let answer = Arc::clone(&slot);
                let op = ControlOp::Snapshot {
                    origin,
                    uuid: [2; 16],
                    name: format!("s{}", self.step),
                    done: Box::new(move |r| {
                        *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(r)
                    }),
                };
                if self.control.push(op).is_err() {
                    return;
                }
                let before = self.oracle.volumes.get(&origin).cloned().unwrap_or_default();
                let asked = self.tick();
                Control::Snapshot { origin, before, asked, slot }
            }
            5 if !idle.is_empty() && ids.len() > 1 => {
                let volume = idle[self.rng.below(idle.len() as u64) as usize];
                let slot: Slot<()> = Arc::default();
                let answer = Arc::clone(&slot);
                if let Some(v) = self.volumes.get_mut(&volume) {
                    v.frozen = true;
                    v.channels.clear();
                }
                let op = ControlOp::DeleteVolume {
                    volume,
                    done: Box::new(move |r| {
                        *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(r)
                    }),
                };
                if self.control.push(op).is_err() {
                    return;
                }
                Control::Delete { volume, slot }
            }
            6 if !idle.is_empty() => {
                let volume = idle[self.rng.below(idle.len() as u64) as usize];
                let blocks = self.rng.range(2, 80);
                let slot: Slot<()> = Arc::default();
                let answer = Arc::clone(&slot);
                if let Some(v) = self.volumes.get_mut(&volume) {
                    v.frozen = true;
                }
                let op = ControlOp::Resize {
                    volume,
                    size_bytes: blocks * u64::from(self.block_bytes),
                    done: Box::new(move |r| {
                        *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(r)
                    }),
                };
                if self.control.push(op).is_err() {
                    return;
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
                let answer = Arc::clone(&slot);
                let op = ControlOp::Grow {
                    data_blocks,
                    done: Box::new(move |r| {
                        *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(r)
                    }),
                };
                if self.control.push(op).is_err() {
                    return;
                }
                Control::Grow { slot }
            }
            _ => {
                let slot: Slot<()> = Arc::default();
                let answer = Arc::clone(&slot);
                let op = ControlOp::Commit {
                    done: Box::new(move |r| {
                        *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(r)
                    }),
                };
                if self.control.push(op).is_err() {
                    return;
                }
                let issue = self.tick();
                Control::Commit { issue, slot }
            }
        };
        trace(self.step, || format!("control {}", describe(&control)));
        self.pending_control = Some(control);
    }

    fn check_control(&mut self) -> Result<(), Failure> {
        fn take<T>(slot: &Slot<T>) -> Option<Result<T, PoolError>> {
            slot.lock().unwrap_or_else(|p| p.into_inner()).take()
        }
        let Some(control) = self.pending_control.take() else {
            return Ok(());
        };
        let now = self.now;
        let step = self.step;
        match &control {
            Control::Create { blocks, slot } => match take(slot) {
                None => self.pending_control = Some(control),
                Some(result) => {
                    trace(step, || format!("create answered {result:?}"));
                    if result.is_err() {
                        // A failed commit may still be durable: it may exist after a crash.
                        self.maybe_volumes.insert(None, Vec::new());
                    }
                    if let Ok(id) = result {
                        let sectors =
                            vec![vec![BASE_ZERO]; (blocks * self.lbas_per_block) as usize];
                        self.oracle.volumes.insert(id, sectors);
                        self.add_volume(id, *blocks)?;
                    }
                }
            },
            Control::Snapshot { origin, before, asked, slot } => match take(slot) {
                None => self.pending_control = Some(control),
                Some(result) => {
                    trace(step, || format!("snapshot answered {result:?}"));
                    {
                        let Some(sectors) = self.oracle.volumes.get(origin) else {
                            return fail(format!("snapshot of unknown {origin}"));
                        };
                        // The snapshot holds the origin as it was at some instant between the
                        // ask and the answer: the versions then, and maybe any written since
                        // (which supersede nothing in the snapshot).
                        let maybe = |e: &Entry| Entry { done: now, ok: false, ..*e };
                        let cloned: Vec<Vec<Entry>> = before
                            .iter()
                            .zip(sectors)
                            .map(|(then, current)| {
                                then.iter()
                                    .map(|e| if e.done == u64::MAX { maybe(e) } else { *e })
                                    .chain(current.iter().filter(|e| e.issue > *asked).map(maybe))
                                    .collect()
                            })
                            .collect();
                        match result {
                            Ok(id) => {
                                self.oracle.volumes.insert(id, cloned);
                                let blocks = self.volumes[origin].blocks;
                                self.add_volume(id, blocks)?;
                            }
                            Err(_) => {
                                self.maybe_volumes.insert(Some(*origin), cloned);
                            }
                        }
                    }
                }
            },
            Control::Delete { volume, slot } => match take(slot) {
                None => self.pending_control = Some(control),
                Some(result) => {
                    trace(step, || format!("delete answered {result:?}"));
                    if result.is_err() {
                        // A failed commit may still be durable: it may be gone after a crash.
                        self.maybe_deleted.push(*volume);
                    }
                    if result.is_ok() {
                        self.volumes.remove(volume);
                        self.oracle.volumes.remove(volume);
                    } else if self.owner.metadata().volume(*volume).is_some() {
                        let blocks = self.volumes[volume].blocks;
                        self.volumes.remove(volume);
                        self.add_volume(*volume, blocks)?;
                    } else {
                        // Deleted in memory, then the commit failed: the pool is read-only
                        // and the volume's fate is the next recovery's (the oracle keeps it).
                        self.volumes.remove(volume);
                    }
                }
            },
            Control::Resize { volume, blocks, slot } => match take(slot) {
                None => self.pending_control = Some(control),
                Some(result) => {
                    trace(step, || format!("resize answered {result:?}"));
                    let size = self.owner.metadata().volume(*volume).map(|r| r.size_bytes);
                    let new_blocks = size.map_or(*blocks, |s| s / u64::from(self.block_bytes));
                    self.resize_oracle(*volume, new_blocks);
                    if let Some(v) = self.volumes.get_mut(volume) {
                        v.blocks = new_blocks;
                        v.frozen = false;
                    }
                }
            },
            Control::Grow { slot } => match take(slot) {
                None => self.pending_control = Some(control),
                Some(result) => trace(step, || format!("grow answered {result:?}")),
            },
            Control::Commit { issue, slot } => match take(slot) {
                None => self.pending_control = Some(control),
                Some(result) => {
                    trace(step, || format!("commit answered {result:?}"));
                    if result.is_ok() && self.owner.mode() == PoolMode::Write {
                        self.oracle.watermark = self.oracle.watermark.max(*issue);
                    }
                }
            },
        }
        Ok(())
    }

    fn resize_oracle(&mut self, volume: VolumeId, blocks: u64) {
        let sectors_wanted = (blocks * self.lbas_per_block) as usize;
        if let Some(sectors) = self.oracle.volumes.get_mut(&volume) {
            if sectors_wanted < sectors.len() {
                sectors.truncate(sectors_wanted);
            } else {
                // What lay past the old end was freed by the shrink: zeroes.
                sectors.resize(sectors_wanted, vec![BASE_ZERO]);
            }
        }
    }

    // ------------------------------------------------------------------ crash

    fn read_meta(device: SimDevice) -> impl FnMut(MetaBlock, &mut [u8]) -> std::io::Result<()> {
        let lbas = (METADATA_BLOCK_BYTES / SECTOR) as u64;
        move |block: MetaBlock, out: &mut [u8]| {
            out.copy_from_slice(&device.read_content(block.0 * lbas, lbas));
            Ok(())
        }
    }

    fn crash(&mut self) -> Result<(), Failure> {
        let mode = self.rng.below(3);
        let step = self.step;
        trace(step, || format!("CRASH (cache {})", ["lost", "kept", "torn"][mode as usize]));
        self.report.crashes += 1;
        let rng = &mut self.rng;
        self.device.crash_keeping(&mut |_| match mode {
            0 => false,
            1 => true,
            _ => rng.chance(500),
        });
        let now = self.tick();
        self.oracle.crash(now, false);
        self.ops.clear();
        self.release_at.clear();
        for v in self.volumes.values_mut() {
            v.channels.clear();
        }
        self.recover()
    }

    fn recover(&mut self) -> Result<(), Failure> {
        let mut read = Sim::read_meta(self.device.clone());
        if let Err(problems) = check(&mut read) {
            return fail(format!("I1: thinctl check after a crash: {problems:?}"));
        }
        let meta = match PoolMetadata::open(&mut read) {
            Ok(meta) => meta,
            Err(e) => return fail(format!("I5: the pool does not reopen after a crash: {e}")),
        };
        self.shared = PoolShared::new(NoopWaker);
        self.control = Arc::new(ArrayQueue::new(16));
        let found: BTreeMap<VolumeId, u64> =
            meta.volumes().map(|r| (r.id, r.size_bytes / u64::from(self.block_bytes))).collect();
        let origins: BTreeMap<VolumeId, Option<VolumeId>> =
            meta.volumes().map(|r| (r.id, r.origin)).collect();
        self.owner = Owner::new(
            self.host.clone(),
            Arc::clone(&self.shared),
            Arc::clone(&self.control),
            meta,
            &self.device,
            self.settings,
        )
        .map_err(|e| format!("owner: {e}"))?;
        self.read_only_seen = self.owner.mode() == PoolMode::ReadOnly;
        let known: Vec<VolumeId> = self.volumes.keys().copied().collect();
        for id in &known {
            if !found.contains_key(id) && !self.maybe_deleted.contains(id) {
                return fail(format!("I5: acknowledged {id} is gone after the crash"));
            }
        }
        let now = self.tick();
        for (id, blocks) in &found {
            if !self.oracle.volumes.contains_key(id) {
                // Created or snapshotted by a commit that failed, yet reached the device.
                let Some(lists) = self.maybe_volumes.get(&origins[id]) else {
                    return fail(format!("I5: {id} exists after the crash but was never created"));
                };
                let lists = lists
                    .iter()
                    .map(|entries| {
                        entries
                            .iter()
                            .map(|e| Entry { issue: now, done: now, ok: true, base: true, ..*e })
                            .collect()
                    })
                    .collect();
                self.oracle.volumes.insert(*id, lists);
            }
            self.resize_oracle(*id, *blocks);
            self.volumes.remove(id);
            self.add_volume(*id, *blocks)?;
        }
        self.oracle.volumes.retain(|id, _| found.contains_key(id));
        self.maybe_volumes.clear();
        self.maybe_deleted.clear();
        self.volumes.retain(|id, _| found.contains_key(id));
        self.verify_all("after recovery")
    }

    /// Reads every sector of every volume, delivering everything at once (I5 after a crash,
    /// I3 at the end).
    fn verify_all(&mut self, when: &str) -> Result<(), Failure> {
        let step = self.step;
        trace(step, || format!("verify every sector {when}"));
        let ids: Vec<(VolumeId, u64)> =
            self.volumes.iter().map(|(id, v)| (*id, v.blocks)).collect();
        for (volume, blocks) in ids {
            let lpb = self.lbas_per_block;
            let mut block = 0;
            while block < blocks {
                let n = 4.min(blocks - block);
                let id = self.next_id;
                self.next_id += 1;
                let issue = self.tick();
                let request = IoRequest::new(IoKind::Read, block * lpb, n * lpb, id)
                    .with_buffers(SgList::single(IoBuffer::new((n * lpb) as usize * SECTOR)));
                let Some(channel) =
                    self.volumes.get_mut(&volume).and_then(|v| v.channels.first_mut())
                else {
                    break;
                };
                if channel.submit(request).is_err() {
                    return fail("verify: channel full".into());
                }
                self.ops.insert(
                    id,
                    UserOp {
                        kind: UserKind::Read,
                        volume,
                        lba: block * lpb,
                        count: n * lpb,
                        issue,
                        versioned: (0, 0),
                    },
                );
                block += n;
                self.settle(2000)?;
            }
        }
        Ok(())
    }

    /// Delivers every device IO in order until no user IO nor control op is in flight.
    fn settle(&mut self, rounds: usize) -> Result<(), Failure> {
        for _ in 0..rounds {
            self.poll_all()?;
            self.check_control()?;
            for io in self.device.pending() {
                if io.kind == IoKind::Unmap {
                    self.check_deallocate(io.offset_blocks, io.num_blocks, "completes")?;
                }
                self.device.complete(io.id);
            }
            self.release_at.clear();
            self.host.advance_ms(50);
            if self.ops.is_empty()
                && self.pending_control.is_none()
                && self.device.pending().is_empty()
                && self.owner.is_drained()
            {
                self.poll_all()?;
                return Ok(());
            }
        }
        let ops: Vec<String> = self
            .ops
            .iter()
            .take(5)
            .map(|(id, op)| {
                format!("#{id} {:?} {} lba {}+{}", op.kind, op.volume, op.lba, op.count)
            })
            .collect();
        fail(format!(
            "liveness: not settled after {rounds} rounds; user IO in flight {ops:?}, control \
             pending {}, pool mode {:?}",
            self.pending_control.is_some(),
            self.owner.mode()
        ))
    }

    // ------------------------------------------------------------------ the end

    fn finish(&mut self) -> Result<(), Failure> {
        trace(self.step, || "drain".into());
        self.settle(5000)?;
        let slot: Slot<()> = Arc::default();
        let answer = Arc::clone(&slot);
        let op = ControlOp::Commit {
            done: Box::new(move |r| *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(r)),
        };
        if self.control.push(op).is_err() {
            return fail("control queue full".into());
        }
        let issue = self.tick();
        self.pending_control = Some(Control::Commit { issue, slot });
        self.settle(2000)?;
        self.check_space()?;
        let space = self.owner.space();
        if space.held_count() != 0 || space.reserved_count() != 0 {
            return fail(format!(
                "I2: idle pool still holds {} and reserves {} blocks",
                space.held_count(),
                space.reserved_count()
            ));
        }
        let mut read = Sim::read_meta(self.device.clone());
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

    fn run(&mut self) -> Result<(), Failure> {
        // The pool exists on the device before anything can crash.
        let slot: Slot<()> = Arc::default();
        let answer = Arc::clone(&slot);
        let op = ControlOp::Commit {
            done: Box::new(move |r| *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(r)),
        };
        if self.control.push(op).is_err() {
            return fail("control queue full".into());
        }
        self.pending_control = Some(Control::Commit { issue: 0, slot });
        self.settle(100)?;
        let first = self.rng.range(1, 3);
        for _ in 0..first {
            self.start_control_create();
            self.settle(100)?;
        }
        while self.step < self.config.steps {
            self.step += 1;
            let roll = self.rng.below(1000);
            match roll {
                0..=299 => self.submit_user()?,
                300..=499 => self.poll_owner()?,
                500..=699 => self.poll_random_channel()?,
                700..=969 => self.device_action()?,
                970..=984 => {
                    let ms = self.rng.range(1, 1500);
                    self.host.advance_ms(ms);
                }
                985..=994 => self.start_control(),
                _ => {
                    if self.pending_control.is_none() && self.rng.chance(self.crash_per_mille * 100)
                    {
                        self.crash()?;
                    }
                }
            }
            if self.crash_soon && self.pending_control.is_none() {
                self.crash_soon = false;
                self.crash()?;
            }
            self.check_control()?;
            if self.step.is_multiple_of(16) {
                self.check_space()?;
            }
            if self.step.is_multiple_of(256) {
                let oldest = self.ops.values().map(|op| op.issue).min().unwrap_or(self.now);
                self.oracle.prune(oldest);
            }
        }
        self.report.steps = self.step;
        self.finish()
    }

    fn start_control_create(&mut self) {
        let blocks = self.rng.range(8, 64);
        let slot: Slot<VolumeId> = Arc::default();
        let answer = Arc::clone(&slot);
        let op = ControlOp::CreateVolume {
            uuid: [1; 16],
            name: format!("v{}", self.volumes.len()),
            size_bytes: blocks * u64::from(self.block_bytes),
            done: Box::new(move |r| *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(r)),
        };
        if self.control.push(op).is_ok() {
            self.pending_control = Some(Control::Create { blocks, slot });
        }
    }
}

fn describe(control: &Control) -> String {
    match control {
        Control::Create { blocks, .. } => format!("create {blocks} blocks"),
        Control::Snapshot { origin, .. } => format!("snapshot {origin}"),
        Control::Delete { volume, .. } => format!("delete {volume}"),
        Control::Resize { volume, blocks, .. } => format!("resize {volume} to {blocks} blocks"),
        Control::Grow { .. } => "grow".into(),
        Control::Commit { .. } => "commit".into(),
    }
}

/// Runs one seed. A panic inside the pool propagates (the caller's hook prints
/// [`last_trace`]).
pub fn run(config: SimConfig) -> Result<SimReport, SimFailure> {
    TRACE.with(|t| t.borrow_mut().clear());
    let mut sim = match Sim::new(config) {
        Ok(sim) => sim,
        Err(message) => {
            return Err(SimFailure { seed: config.seed, step: 0, message, trace: Vec::new() });
        }
    };
    match sim.run() {
        Ok(()) => Ok(sim.report),
        Err(message) => {
            Err(SimFailure { seed: config.seed, step: sim.step, message, trace: last_trace() })
        }
    }
}
