//! The deterministic simulator: one seed decides a whole run of the REAL pool code (an
//! [`Owner`] and several [`VolumeChannel`]s, one per simulated core and volume) over
//! [`SimDevice`]s whose every IO the seed completes, fails, delays or applies early, with
//! crashes that lose all, some or torn parts of the unflushed writes, then reopen the pool from
//! the devices and go on. The seed also picks the pool's shape: its [`PoolLimits`] (op slots,
//! channel depth, copy buffers, view-fill slice, lowered so small volumes reach every bound),
//! the device channels' depth, a separate metadata device, a nearly full metadata region,
//! `zero_new_blocks`, and a workload of requests from one sector to 4 MiB, FUA on writes and
//! write_zeroes, and several control operations at once (snapshots of one origin, resize and
//! delete with IO in flight, duplicate names, crashes in the middle of any of them). Some seeds
//! keep the metadata at its reserve while a shrink or delete waits (`control`), and some race
//! snapshots and view fills against the fast path (`races`).
//!
//! A request the pool took may fail only for a cause the seed made (an IO error, no space, a
//! read-only or deleted pool or volume): an EAGAIN fails the seed, as rings, op slots and
//! buffers must make a request wait, not fail.
//!
//! The oracle (`oracle`) knows, per volume and sector, every version a read may return, and
//! the run checks (DESIGN.md "Invariants"):
//! - I3 on every read completion, and snapshot stability (a snapshot's sector, once read, reads
//!   the same until the snapshot itself is written);
//! - I4 on every passdown deallocate, at every step from issue to completion;
//! - I2 at every allocation (the block had no count, open or committed, no hold, no
//!   reservation and no grace period), and on the allocator's flags every few steps;
//! - I6 after every owner poll on what it may have changed (the blocks of every request in
//!   flight or just answered, whole volumes after control operations and aborts, the newly
//!   filled part of a snapshot's view), and on every volume at the end;
//! - I1/I5 with `thinctl check`'s code on the device, a reopen and a read of every written
//!   sector, after every crash and at the end;
//! - liveness at the end: with no further IO from any frontend and the owner allowed to park
//!   whenever it says it may, every hold, grace period and deferred operation completes.
//!
//! Nothing here reads a clock or an OS random source: the same seed replays the same run.

mod checks;
mod control;
mod crash;
mod devices;
mod oracle;
mod races;
mod user;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use crossbeam_queue::ArrayQueue;

use self::control::Control;
use self::oracle::{Oracle, VolumeVersions};
use self::races::RaceState;
use self::user::UserOp;
use super::{SimDevice, SteppingHost};
use crate::host::NoopWaker;
use crate::limits;
use crate::thin::channel::{ChannelGeometry, VolumeChannel};
use crate::thin::metadata::{Layout, PoolMetadata};
use crate::thin::mutations::Mutations;
use crate::thin::owner::{ControlOp, Owner, OwnerSettings, PoolError};
use crate::thin::pool::{PoolLimits, PoolShared};
use crate::thin::types::{DiscardMode, OutOfSpaceMode, PoolMode, PoolSettings, VolumeId};

const LBA: u32 = 512;
const SECTOR: usize = LBA as usize;
const TRACE_LEN: usize = 30;
/// The largest request a frontend may send (NBD and perf split larger ones).
const REQUEST_SECTORS_MAX: u64 = (limits::IO_BYTES_MAX / SECTOR) as u64;

type Channel = VolumeChannel<SimDevice, NoopWaker>;

/// The seeds CI runs (`thin_sim --ci` in `ci/test.sh`, under a minute in release on one
/// core): every seed of this file passes; every mutation must fail one of them
/// (`tests/sim_mutations.rs`).
pub const CI_SEED_FILE: &str = include_str!("../../../tests/ci_seeds.txt");

/// How many seeds of [`CI_SEED_FILE`] `cargo test` runs on its own (`tests/sim_seeds.rs`).
pub const QUICK_SEED_COUNT: usize = 60;

/// The CI seed list.
pub fn ci_seeds() -> Vec<u64> {
    parse_seed_list(CI_SEED_FILE).unwrap_or_default()
}

/// Parses a seed list: one seed or one range `A..B` a line, `#` comments.
pub fn parse_seed_list(text: &str) -> Result<Vec<u64>, String> {
    let mut seeds = Vec::new();
    for line in text.lines().map(|l| l.split('#').next().unwrap_or("").trim()) {
        if line.is_empty() {
            continue;
        }
        let number = |t: &str| t.trim().parse::<u64>().map_err(|e| format!("bad seed {t:?}: {e}"));
        match line.split_once("..") {
            Some((from, to)) => seeds.extend(number(from)?..number(to)?),
            None => seeds.push(number(line)?),
        }
    }
    Ok(seeds)
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
        low + self.below(high_inclusive.saturating_sub(low).saturating_add(1))
    }

    /// Between `low` and `high_inclusive`, each power of two as likely as the next (sizes
    /// from one sector to 4 MiB).
    pub fn log_range(&mut self, low: u64, high_inclusive: u64) -> u64 {
        let bits = 64 - high_inclusive.max(1).leading_zeros() as u64;
        let top = 1u64 << self.below(bits);
        self.range(low, high_inclusive.min(top.max(low)).max(low))
    }

    pub fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[self.below(choices.len() as u64) as usize]
    }
}

/// What kind of pools and workload the seeds draw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Profile {
    /// Small pools and volumes with lowered limits, so every bound is reached quickly.
    #[default]
    Default,
    /// Volumes of at least 2^20 blocks, requests up to 4 MiB, depth up to 1024, tiny metadata.
    Large,
}

impl Profile {
    pub fn parse(text: &str) -> Option<Profile> {
        match text {
            "default" => Some(Profile::Default),
            "large" => Some(Profile::Large),
            _ => None,
        }
    }
}

/// What one seed runs.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub steps: u64,
    /// Data blocks of the pool at format (0: the seed picks).
    pub data_blocks: u64,
    /// Data block size (0: the seed picks 4, 8 or 16 KiB).
    pub block_bytes: u32,
    pub crashes: bool,
    pub faults: bool,
    pub mutations: Mutations,
    pub profile: Profile,
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
            profile: Profile::Default,
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
    pub allocations_checked: u64,
    pub view_entries_checked: u64,
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

type Failure = String;

fn fail<T>(message: String) -> Result<T, Failure> {
    Err(message)
}

type Slot<T> = Arc<Mutex<Option<Result<T, PoolError>>>>;

/// A control operation's answer callback that stores the answer in `slot`.
fn answer_into<T: Send + 'static>(slot: &Slot<T>) -> Box<dyn FnOnce(Result<T, PoolError>) + Send> {
    let slot = Arc::clone(slot);
    Box::new(move |r| *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r))
}

/// The workload a seed draws from (per profile, then per seed).
#[derive(Clone, Copy, Debug)]
struct Workload {
    /// Size of a new volume, in blocks: usually small, sometimes large.
    volume_blocks: (u64, u64),
    large_volume_blocks: (u64, u64),
    large_volume_per_mille: u64,
    /// Chance that a request is large (up to 4 MiB) rather than a few blocks.
    large_request_per_mille: u64,
    /// User IOs in flight at most (all channels), and their bytes.
    in_flight_max: usize,
    in_flight_bytes_max: u64,
    /// Control operations in flight at once.
    controls_max: usize,
    volumes_max: usize,
    /// Chance that a new volume reuses an existing name.
    duplicate_name_per_mille: u64,
    fua_per_mille: u64,
    /// Chance that a snapshot races its origin's writes (`races`).
    snapshot_race_per_mille: u64,
    /// Chance per step that a filling view's ready mark is set back (`races`).
    ready_setback_per_mille: u64,
}

/// One volume as the simulated frontends see it.
struct Vol {
    blocks: u64,
    channels: Vec<Channel>,
    /// No new IO (a delete or resize is in flight).
    frozen: bool,
    /// Deleted: its channels drain, then it goes.
    deleted: bool,
    name: String,
}

struct Sim {
    config: SimConfig,
    rng: Rng,
    step: u64,
    now: u64,
    block_bytes: u32,
    lbas_per_block: u64,
    settings: OwnerSettings,
    workload: Workload,
    device: SimDevice,
    /// The metadata device, when the pool keeps its metadata apart.
    meta_device: Option<SimDevice>,
    /// Free metadata blocks the seed leaves above the reserve (None: the whole region).
    meta_headroom: Option<u64>,
    /// The metadata is kept at its reserve: before a shrink or delete is handled, free
    /// metadata blocks are taken until one or two mutations' worth is left.
    at_reserve: bool,
    host: SteppingHost,
    shared: Arc<PoolShared<NoopWaker>>,
    control: Arc<ArrayQueue<ControlOp>>,
    owner: Owner<SimDevice, SteppingHost>,
    geometry: ChannelGeometry,
    volumes: BTreeMap<VolumeId, Vol>,
    oracle: Oracle,
    ops: BTreeMap<u64, UserOp>,
    in_flight_bytes: u64,
    next_id: u64,
    controls: Vec<Control>,
    /// Device IO (device index, id) → the step before which the seed does not deliver it.
    release_at: BTreeMap<(usize, u64), u64>,
    data_fail_per_mille: u64,
    meta_fail_per_mille: u64,
    crash_per_mille: u64,
    read_only_seen: bool,
    aborted_at: u64,
    crash_soon: bool,
    /// Volumes a failed or interrupted create (key None) or snapshot (key: the origin) may
    /// have left on the device, with the versions they may hold.
    maybe_volumes: BTreeMap<Option<VolumeId>, VolumeVersions>,
    /// Volumes a failed or interrupted delete may have removed from the device.
    maybe_deleted: Vec<VolumeId>,
    /// Allocations already checked (I2 at every allocation).
    allocations_seen: u64,
    /// Whole volumes I6 checks after the next owner poll.
    view_checks_due: Vec<VolumeId>,
    /// Answered requests whose blocks I6 checks after the next owner poll.
    answered_ranges: Vec<(VolumeId, u64, u64)>,
    /// The state of the snapshot and view-fill races.
    races: RaceState,
    report: SimReport,
}

/// The pool's limits for a seed: each lowered now and then, so that small volumes reach them.
fn draw_limits(rng: &mut Rng, profile: Profile) -> PoolLimits {
    let production = PoolLimits::PRODUCTION;
    if profile == Profile::Large {
        return PoolLimits {
            channel_depth: rng.pick(&[64, 256, 1024, 1024]),
            view_fill_blocks_per_poll: rng.pick(&[4096, 65536]),
            ..production
        }
        .with_credits_for_depth();
    }
    PoolLimits {
        owner_ops: rng.pick(&[PoolLimits::OWNER_OPS_MIN, 4, 8, 32, production.owner_ops]),
        channel_depth: rng.pick(&[1, 2, 4, 16, 64, production.channel_depth]),
        view_fill_blocks_per_poll: rng.pick(&[2, 16, 64, production.view_fill_blocks_per_poll]),
        copy_buffers: rng.pick(&[1, 2, production.copy_buffers]),
        channel_credits: production.channel_credits,
        view_chunks: production.view_chunks,
    }
    .with_credits_for_depth()
}

fn draw_workload(rng: &mut Rng, profile: Profile) -> Workload {
    match profile {
        Profile::Default => Workload {
            volume_blocks: (4, 64),
            large_volume_blocks: (64, 1024),
            large_volume_per_mille: rng.pick(&[0, 100, 300]),
            large_request_per_mille: rng.pick(&[0, 20, 100, 300]),
            in_flight_max: rng.pick(&[8, 48, 256, 1024]) as usize,
            in_flight_bytes_max: 48 << 20,
            controls_max: rng.pick(&[1, 2, 4]) as usize,
            volumes_max: 6,
            duplicate_name_per_mille: rng.pick(&[0, 100]),
            fua_per_mille: rng.pick(&[20, 60, 300]),
            snapshot_race_per_mille: rng.pick(&[0, 300, 1000]),
            ready_setback_per_mille: rng.pick(&[0, 0, 20, 200]),
        },
        Profile::Large => Workload {
            volume_blocks: (1 << 20, 1 << 21),
            large_volume_blocks: (1 << 20, 1 << 22),
            large_volume_per_mille: 100,
            large_request_per_mille: rng.pick(&[50, 300]),
            in_flight_max: rng.pick(&[64, 1024, 2048]) as usize,
            in_flight_bytes_max: 96 << 20,
            controls_max: rng.pick(&[1, 3]) as usize,
            volumes_max: 4,
            duplicate_name_per_mille: 50,
            fua_per_mille: rng.pick(&[20, 200]),
            snapshot_race_per_mille: rng.pick(&[0, 500]),
            ready_setback_per_mille: rng.pick(&[0, 50]),
        },
    }
}

impl Sim {
    fn new(config: SimConfig) -> Result<Sim, Failure> {
        let mut rng = Rng::new(config.seed);
        let large = config.profile == Profile::Large;
        let block_bytes = match config.block_bytes {
            0 => rng.pick(&[4096, 4096, 4096, 8192, 8192, 16384]),
            b => b,
        };
        let data_blocks = match config.data_blocks {
            0 if large => rng.pick(&[4096, 16384]),
            0 => rng.pick(&[32, 64, 128, 256, 512]),
            d => d,
        };
        let block = u64::from(block_bytes);
        let max_bytes = (data_blocks * 2 + 16) * block + (8 << 20);
        let separate = rng.chance(250);
        let (layout, device, meta_device) = if separate {
            let meta_bytes = Layout::metadata_blocks_for(max_bytes / block) * 4096;
            let layout = Layout::separate(meta_bytes, data_blocks * block, block_bytes, max_bytes)
                .map_err(|e| format!("layout: {e}"))?;
            let device = SimDevice::new(LBA, max_bytes / u64::from(LBA));
            (layout, device, Some(SimDevice::new(LBA, meta_bytes / u64::from(LBA))))
        } else {
            let probe = Layout::on_data_device(max_bytes, block_bytes, max_bytes)
                .map_err(|e| format!("layout: {e}"))?;
            let initial = probe.data_offset_bytes + data_blocks * block;
            let layout = Layout::on_data_device(initial, block_bytes, max_bytes)
                .map_err(|e| format!("layout: {e}"))?;
            (layout, SimDevice::new(LBA, max_bytes / u64::from(LBA)), None)
        };
        let limits = draw_limits(&mut rng, config.profile);
        // Production sizes a device channel for a thin channel's credits; half the seeds keep
        // that relation, the others leave room for the owner's IO as well.
        let device_depth = if rng.chance(500) {
            limits.channel_credits
        } else {
            limits.channel_credits + limits.owner_ops
        };
        for d in std::iter::once(&device).chain(meta_device.as_ref()) {
            d.set_auto_complete(false);
            d.set_channel_depth(device_depth.min(limits::DEVICE_CHANNEL_DEPTH_MAX * 16));
        }
        let discard = match rng.below(20) {
            0..=11 => DiscardMode::Passdown,
            12..=16 => DiscardMode::NoPassdown,
            _ => DiscardMode::Ignore,
        };
        let settings = OwnerSettings {
            pool: PoolSettings {
                discard,
                zero_new_blocks: !rng.chance(150),
                out_of_space: if rng.chance(200) {
                    OutOfSpaceMode::Queue
                } else {
                    OutOfSpaceMode::Error
                },
                no_space_timeout_s: 5,
                low_water_mark: 0,
                commit_interval_ms: rng.range(10, 2000) as u32,
            },
            mutations: config.mutations,
            limits,
        };
        // Nearly full: room for a few mutations past the reserve. At the reserve: a few blocks
        // past what the next mutation and commit may take, so a transaction's shadows reach
        // the reserve in the middle of a shrink or a delete.
        let at_reserve = rng.chance(if large { 500 } else { 120 });
        let meta_headroom = if at_reserve {
            let next_commit = limits::METADATA_BTREE_DEPTH_MAX as u64 + 1;
            Some(limits::METADATA_MUTATION_BLOCKS_MAX + next_commit + rng.range(2, 48))
        } else if large || rng.chance(200) {
            Some(2 * limits::METADATA_MUTATION_BLOCKS_MAX + 64 + rng.range(8, 160))
        } else {
            None
        };
        let workload = draw_workload(&mut rng, config.profile);
        let record = settings.to_record([7; 16], "simpool");
        let mut meta = PoolMetadata::format(layout, record).map_err(|e| format!("format: {e}"))?;
        occupy_metadata(&mut meta, meta_headroom);
        let shared = PoolShared::new(NoopWaker);
        let control = Arc::new(ArrayQueue::new(16));
        let host = SteppingHost::new();
        let owner = Owner::with_metadata_device(
            host.clone(),
            Arc::clone(&shared),
            Arc::clone(&control),
            meta,
            &device,
            meta_device.as_ref(),
            settings,
        )
        .map_err(|e| format!("owner: {e}"))?;
        let geometry = ChannelGeometry {
            lba_bytes: u64::from(LBA),
            lbas_per_block: block / u64::from(LBA),
            data_offset_lbas: layout.data_offset_bytes / u64::from(LBA),
        };
        let (data_fail, meta_fail) = if config.faults {
            let data = rng.pick(&[0, 0, 5, 10, 20]);
            let meta = if rng.chance(50) { 3 } else { 0 };
            (data, meta)
        } else {
            (0, 0)
        };
        let crash = if config.crashes { rng.pick(&[0, 1, 2, 4]) } else { 0 };
        Ok(Sim {
            config,
            rng,
            step: 0,
            now: 1,
            block_bytes,
            lbas_per_block: block / u64::from(LBA),
            settings,
            workload,
            device,
            meta_device,
            meta_headroom,
            at_reserve,
            host,
            shared,
            control,
            owner,
            geometry,
            volumes: BTreeMap::new(),
            oracle: Oracle::default(),
            ops: BTreeMap::new(),
            in_flight_bytes: 0,
            next_id: 1,
            controls: Vec::new(),
            release_at: BTreeMap::new(),
            data_fail_per_mille: data_fail,
            meta_fail_per_mille: meta_fail,
            crash_per_mille: crash,
            read_only_seen: false,
            aborted_at: 0,
            crash_soon: false,
            maybe_volumes: BTreeMap::new(),
            maybe_deleted: Vec::new(),
            allocations_seen: 0,
            view_checks_due: Vec::new(),
            answered_ranges: Vec::new(),
            races: RaceState::default(),
            report: SimReport::default(),
        })
    }

    fn tick(&mut self) -> u64 {
        self.now += 1;
        self.now
    }

    fn open_channel(&mut self, volume: VolumeId) -> Result<Channel, Failure> {
        let Some(view) = self.shared.view(volume) else {
            return fail(format!("no view for {volume}"));
        };
        let limits = self.settings.limits;
        let channel = VolumeChannel::open(
            Arc::clone(&self.shared),
            view,
            &self.device,
            self.geometry,
            limits,
            NoopWaker,
        )
        .map_err(|e| format!("open channel: {e}"))?;
        // The data device channel the volume channel just opened: its writes are the fast
        // path's.
        self.races.fast_path_channels.insert(self.device.channels_opened() - 1);
        Ok(channel)
    }

    fn add_volume(&mut self, volume: VolumeId, blocks: u64) -> Result<(), Failure> {
        let cores = self.rng.range(1, 3);
        let mut channels = Vec::new();
        for _ in 0..cores {
            channels.push(self.open_channel(volume)?);
        }
        let name = self.owner.metadata().volume(volume).map(|r| r.name.clone()).unwrap_or_default();
        self.volumes.insert(volume, Vol { blocks, channels, frozen: false, deleted: false, name });
        self.view_checks_due.push(volume);
        Ok(())
    }

    fn run(&mut self) -> Result<(), Failure> {
        // The pool exists on the device before anything can crash.
        self.start_commit(0);
        self.settle(100)?;
        let first = self.rng.range(1, 3);
        for _ in 0..first {
            self.start_create();
            self.settle(100)?;
        }
        while self.step < self.config.steps {
            self.step += 1;
            match self.rng.below(1000) {
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
                    if self.rng.chance(self.crash_per_mille * 100) {
                        self.crash()?;
                    }
                }
            }
            if self.crash_soon {
                self.crash_soon = false;
                self.crash()?;
            }
            self.race_step()?;
            self.run_probes()?;
            self.check_controls()?;
            self.retire_deleted();
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

    /// One owner poll, then the checks of what it may have changed. A failed commit aborts
    /// the transaction: for the oracle that is a crash (DESIGN.md I3).
    fn poll_owner(&mut self) -> Result<(), Failure> {
        self.host.set_current_core(0);
        if self.at_reserve && self.rng.chance(500) {
            self.squeeze_metadata();
        }
        let status = self.owner.poll();
        if !self.read_only_seen && self.owner.mode() == PoolMode::ReadOnly {
            self.read_only_seen = true;
            let now = self.tick();
            self.aborted_at = now;
            trace(self.step, || "pool turned read-only: the transaction aborted".into());
            self.oracle.crash(now, true);
            // An abort rebuilds every view.
            self.view_checks_due.extend(self.volumes.keys().copied());
        }
        self.check_allocations()?;
        self.check_passdowns()?;
        if status == crate::host::PollStatus::Busy || !self.view_checks_due.is_empty() {
            self.check_views_changed()?;
        }
        Ok(())
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

    /// Delivers every device IO in order until no user IO nor control op is in flight.
    fn settle(&mut self, rounds: usize) -> Result<(), Failure> {
        for _ in 0..rounds {
            self.poll_all()?;
            self.check_controls()?;
            self.retire_deleted();
            self.complete_all_device_io()?;
            self.host.advance_ms(50);
            if self.ops.is_empty()
                && self.controls.is_empty()
                && self.devices_idle()
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
        let controls: Vec<String> = self.controls.iter().map(control::describe).collect();
        fail(format!(
            "liveness: not settled after {rounds} rounds; user IO in flight {ops:?}, control \
             in flight {controls:?}, pool mode {:?}",
            self.owner.mode()
        ))
    }

    fn start_commit(&mut self, issue: u64) {
        let slot: Slot<()> = Arc::default();
        let op = ControlOp::Commit { done: answer_into(&slot) };
        if self.control.push(op).is_ok() {
            self.controls.push(Control::Commit { issue, slot });
        }
    }
}

/// Leaves `headroom` free metadata blocks above the reserve (None: the whole region), so
/// that the region behaves as a nearly full one.
fn occupy_metadata(meta: &mut PoolMetadata, headroom: Option<u64>) {
    if let Some(headroom) = headroom {
        let keep = meta.metadata_reserve_blocks() + headroom;
        meta.occupy_metadata_blocks(meta.metadata_free_blocks().saturating_sub(keep));
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
