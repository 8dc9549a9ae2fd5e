//! The NVMe/TCP initiator: a base device per namespace of a remote NVMe-oF controller, as
//! SPDK's `bdev_nvme` attaches them, so a pool can live on a remote namespace and passdown is
//! a real Dataset Management deallocate on the wire.
//!
//! Who runs what. An [`NvmeController`] is shared state (control plane, behind mutexes and a
//! few atomics). Its admin queue is one poller on one core (`admin`): the attach sequence
//! (ICReq, Fabrics Connect, CC.EN and CSTS.RDY, Identify controller / CNS 06h / namespaces /
//! descriptors, Set Features number of queues), then keep alives, AERs and, when the
//! connection is lost, the reconnect policy of [`ReconnectPolicy`]. Each core that opens a
//! channel of one of its namespaces gets one IO queue pair for the controller (`io`), shared
//! by every channel of that core and polled by them: no thread, no blocking socket call; the
//! connect is a state machine driven by polls. An [`NvmeNamespace`] is the block device; its
//! channels (`channel`) submit to their core's queue pair.
//!
//! The controller announces what its host must do (register bdevs, remove them) through
//! [`ControllerEvents`], so this module knows no registry. Nothing a controller sends can
//! panic it: bad PDUs and answers fail the connection (then the reconnect policy applies), bad
//! Identify data fails the attach, and every IO ends with a status.

mod admin;
mod channel;
mod io;
mod link;
pub mod options;
mod queue;
mod scan;
mod store;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use crate::host::{BlockDevice, CoreId, DeviceError, DeviceInfo, Host as _, IoKind, Waker as _};
use crate::nvme::identify::ControllerIdentity;
use crate::runtime::RuntimeHandle;
pub use channel::NvmeChannel;
pub use options::{AttachOptions, OptionsError, ReconnectPolicy};
pub use queue::LinkError;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where a controller's association stands, as IO queue pairs read it (one atomic load per
/// poll). Packed with a generation that moves on at every new association.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ControllerState {
    /// Attaching for the first time.
    Connecting = 0,
    /// Associated: IO queues connect to it and serve IO.
    Live = 1,
    /// The connection was lost; reconnecting. IO waits.
    Resetting = 2,
    /// Still reconnecting, past `fast_io_fail_timeout_sec`: IO fails.
    FailingIo = 3,
    /// Reconnecting was given up (`ctrlr_loss_timeout_sec` 0): IO fails until detached.
    Failed = 4,
    /// Detached or lost for good: IO fails, queue pairs close.
    Removed = 5,
}

impl ControllerState {
    fn from_u8(value: u8) -> ControllerState {
        match value {
            0 => ControllerState::Connecting,
            1 => ControllerState::Live,
            2 => ControllerState::Resetting,
            3 => ControllerState::FailingIo,
            4 => ControllerState::Failed,
            _ => ControllerState::Removed,
        }
    }

    /// SPDK's `bdev_nvme_get_controllers` state names.
    pub fn name(self) -> &'static str {
        match self {
            ControllerState::Connecting | ControllerState::Resetting => "resetting",
            ControllerState::Live => "enabled",
            ControllerState::FailingIo => "reconnect_is_delayed",
            ControllerState::Failed => "failed",
            ControllerState::Removed => "deleting",
        }
    }

    /// IO submitted now fails at once.
    pub fn fails_io(self) -> bool {
        matches!(
            self,
            ControllerState::FailingIo | ControllerState::Failed | ControllerState::Removed
        )
    }
}

/// Limits of the IO commands, from Identify Controller and the NVM command set structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoLimits {
    /// Largest read or write (MDTS; our own cap when the controller states none).
    pub transfer_bytes_max: u32,
    /// Largest Write Zeroes in bytes (WZSL; 0: only the 65,536-block field bounds it).
    pub write_zeroes_bytes_max: u64,
    /// Ranges per Dataset Management command (DMRL; 256 when 0).
    pub dsm_ranges_max: u16,
    /// Blocks per range (DMRSL; u32::MAX when 0).
    pub dsm_range_blocks_max: u32,
    /// Blocks per command over all ranges (DMSL; unbounded when 0).
    pub dsm_blocks_max: u64,
    pub write_zeroes: bool,
    pub dataset_management: bool,
    /// A volatile write cache: Flush and FUA mean something.
    pub volatile_write_cache: bool,
}

/// What the admin queue learnt at the last association.
#[derive(Clone, Debug)]
pub struct ControllerInfo {
    pub cntlid: u16,
    pub version: u32,
    pub identity: ControllerIdentity,
    /// IO queue entries (SQSIZE + 1) each IO queue pair asks for.
    pub io_queue_entries: u16,
    /// IO queues the controller granted.
    pub io_queues: u16,
    /// In-capsule data an IO queue takes (IOCCSZ), bytes.
    pub capsule_data_max: u32,
    pub limits: IoLimits,
}

/// What a controller tells its host. Called on the admin queue's core; must not block.
pub trait ControllerEvents: Send + Sync {
    /// The first association is up (with these namespaces) or failed. Called once.
    fn attached(&self, controller: &Arc<NvmeController>, result: Result<(), String>);
    /// A namespace appeared (an AER, or found at a reconnect).
    fn namespace_added(&self, namespace: &Arc<NvmeNamespace>);
    /// A namespace is gone (an AER, or missing at a reconnect), or the controller was lost
    /// (`ctrlr_loss_timeout_sec`): the namespace fails every IO from now on.
    fn namespace_removed(&self, namespace: &Arc<NvmeNamespace>);
}

/// A detach asked for: answered once the controller shut down (CC.SHN) and closed.
pub type DetachDone = Box<dyn FnOnce(Result<(), String>) + Send>;

/// One attached NVMe-oF controller.
pub struct NvmeController {
    pub options: AttachOptions,
    /// Unique in the process: names the controller's queue pair in each core's registry.
    id: u64,
    runtime: RuntimeHandle,
    admin_core: CoreId,
    /// `generation << 8 | state`.
    association: AtomicU64,
    /// The generation an IO queue pair saw fail (0: none); the admin queue resets then.
    reset_requested: AtomicU64,
    info: Mutex<Option<ControllerInfo>>,
    namespaces: Mutex<Vec<Arc<NvmeNamespace>>>,
    detach: Mutex<Option<DetachDone>>,
    events: Arc<dyn ControllerEvents>,
}

static NEXT_CONTROLLER_ID: AtomicU64 = AtomicU64::new(1);

impl NvmeController {
    /// Starts attaching: the admin queue poller goes to `admin_core` and reports through
    /// `events` (first `attached`). Returns at once.
    pub fn attach(
        options: AttachOptions,
        runtime: RuntimeHandle,
        admin_core: CoreId,
        events: Arc<dyn ControllerEvents>,
    ) -> Result<Arc<NvmeController>, crate::runtime::SendError> {
        let controller = Arc::new(NvmeController {
            options,
            id: NEXT_CONTROLLER_ID.fetch_add(1, Ordering::Relaxed),
            runtime: runtime.clone(),
            admin_core,
            association: AtomicU64::new(ControllerState::Connecting as u64),
            reset_requested: AtomicU64::new(0),
            info: Mutex::new(None),
            namespaces: Mutex::new(Vec::new()),
            detach: Mutex::new(None),
            events,
        });
        let poller = admin::AdminPoller::new(Arc::clone(&controller));
        runtime.add_poller(admin_core, Box::new(poller))?;
        Ok(controller)
    }

    pub fn name(&self) -> &str {
        &self.options.name
    }

    pub fn state(&self) -> ControllerState {
        ControllerState::from_u8((self.association.load(Ordering::Acquire) & 0xFF) as u8)
    }

    /// The association's generation and state, as one value.
    pub(crate) fn association(&self) -> (u64, ControllerState) {
        let value = self.association.load(Ordering::Acquire);
        (value >> 8, ControllerState::from_u8((value & 0xFF) as u8))
    }

    /// Publishes a state (a new generation when `new_generation`), and wakes every core so
    /// their queue pairs follow.
    fn set_state(&self, state: ControllerState, new_generation: bool) {
        let (generation, _) = self.association();
        let generation = if new_generation { generation + 1 } else { generation };
        self.association.store((generation << 8) | state as u64, Ordering::Release);
        self.wake_all();
    }

    fn wake_all(&self) {
        for core in self.runtime.cores() {
            self.runtime.waker(core).wake();
        }
    }

    /// An IO queue pair's connection failed while the association of `generation` was live:
    /// the admin queue resets the controller.
    pub(crate) fn request_reset(&self, generation: u64) {
        self.reset_requested.store(generation, Ordering::Release);
        self.runtime.waker(self.admin_core).wake();
    }

    pub fn info(&self) -> Option<ControllerInfo> {
        lock(&self.info).clone()
    }

    pub fn namespaces(&self) -> Vec<Arc<NvmeNamespace>> {
        lock(&self.namespaces).clone()
    }

    /// Asks the admin queue to shut the controller down and close; `done` answers. The host
    /// removed the namespaces' bdevs first.
    pub fn detach(&self, done: DetachDone) {
        let mut detach = lock(&self.detach);
        if detach.is_some() {
            drop(detach);
            return done(Err("a detach is already in progress".into()));
        }
        *detach = Some(done);
        drop(detach);
        self.runtime.waker(self.admin_core).wake();
    }

    pub fn runtime(&self) -> &RuntimeHandle {
        &self.runtime
    }
}

/// One namespace of a controller: the block device.
pub struct NvmeNamespace {
    pub controller: Arc<NvmeController>,
    pub nsid: u32,
    pub block_size_bytes: u32,
    num_blocks: AtomicU64,
    /// From the namespace's UUID, else its NGUID, else its EUI64.
    pub uuid: Uuid,
    /// Deallocated blocks read zeroes (DLFEAT bits 2:0 = 001b).
    pub deallocate_reads_zeroes: bool,
    removed: AtomicBool,
}

impl NvmeNamespace {
    /// The bdev name SPDK gives it.
    pub fn bdev_name(&self) -> String {
        format!("{}n{}", self.controller.name(), self.nsid)
    }

    pub fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }

    pub(crate) fn set_num_blocks(&self, blocks: u64) {
        self.num_blocks.store(blocks, Ordering::Release);
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
        self.controller.wake_all();
    }

    fn limits(&self) -> Option<IoLimits> {
        lock(&self.controller.info).as_ref().map(|info| info.limits)
    }

    /// Reads `out.len()` bytes at `offset_bytes` from a thread that is not a reactor (examine):
    /// the read goes through a channel on the admin queue's core and this thread waits for it.
    pub fn read_sync(self: &Arc<Self>, offset_bytes: u64, out: &mut [u8]) -> std::io::Result<()> {
        channel::read_sync(self, offset_bytes, out)
    }
}

impl NvmeNamespace {
    /// Geometry and capabilities, as the bdev reports them.
    pub fn info(&self) -> DeviceInfo {
        let num_blocks = self.num_blocks();
        let dsm = self.limits().is_some_and(|l| l.dataset_management);
        DeviceInfo {
            block_size_bytes: self.block_size_bytes,
            num_blocks,
            max_unmap_blocks: if dsm { num_blocks } else { 0 },
            unmap_reads_zeroes: dsm && self.deallocate_reads_zeroes,
        }
    }

    /// The IO kinds the controller serves (ONCS); a reset has no namespace-level command.
    pub fn supports(&self, kind: IoKind) -> bool {
        let limits = self.limits();
        match kind {
            IoKind::Read | IoKind::Write | IoKind::Flush => true,
            IoKind::Unmap => limits.is_some_and(|l| l.dataset_management),
            IoKind::WriteZeroes => limits.is_some_and(|l| l.write_zeroes),
            IoKind::Reset => false,
        }
    }
}

/// A namespace as a base device: the handle a `BaseDevice` holds.
#[derive(Clone)]
pub struct NvmeDevice(pub Arc<NvmeNamespace>);

impl BlockDevice for NvmeDevice {
    type Channel = NvmeChannel;

    fn info(&self) -> DeviceInfo {
        self.0.info()
    }

    fn supports(&self, kind: IoKind) -> bool {
        self.0.supports(kind)
    }

    fn open_channel(&self) -> Result<NvmeChannel, DeviceError> {
        NvmeChannel::open(&self.0)
    }
}
