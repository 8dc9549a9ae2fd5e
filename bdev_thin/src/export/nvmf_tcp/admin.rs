//! The admin queue: the controller's registers (CC, CSTS) and features, and the admin
//! commands: Identify, Get Log Page, Get / Set Features, Asynchronous Event Request, Keep
//! Alive, Abort (NVMe Base 2.0 §5; a discovery controller takes the subset NVMe-oF 1.1 §5
//! allows). Identify and log page contents are built in [`super::pages`].
//!
//! A normal shutdown (CC.SHN) flushes every namespace through channels the admin queue opens
//! on its own core, and reports CSTS.SHST complete only when every flush completed, so every
//! pool under a namespace has committed. Runs on the admin queue's core.

use std::sync::Arc;

use arrayvec::ArrayVec;

use super::controller::{Controller, PendingEvent};
use super::qpair::{Connection, Outcome, Queue};
use crate::bdev::BdevChannel;
use crate::host::{DeviceChannel, IoKind, IoRequest};
use crate::limits;
use crate::nvme::command::{Status, admin_opcode};
use crate::nvme::fabrics::{cc, csts};
use crate::nvme::log::{async_event, async_event_dw0, log_id};

/// Feature identifiers (NVMe Base 2.0 Figure 317).
mod feature {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const INTERRUPT_VECTOR: u8 = 0x09;
    pub const WRITE_ATOMICITY: u8 = 0x0A;
    pub const ASYNC_EVENT_CONFIGURATION: u8 = 0x0B;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
}

/// Async event configuration bit 8: namespace attribute notices.
const AEC_NAMESPACE_ATTRIBUTE: u32 = 1 << 8;
/// Bit 31: discovery log page change notices.
const AEC_DISCOVERY_LOG: u32 = 1 << 31;
/// The composite temperature threshold a controller reports (SPDK's: 343 K).
const TEMPERATURE_THRESHOLD_KELVIN: u32 = 0x157;

/// Settable features without effect here, kept so Get Features returns what was set.
#[derive(Debug, Default)]
struct Features {
    async_event_configuration: u32,
    arbitration: u32,
    power_management: u32,
    temperature_threshold: u32,
    error_recovery: u32,
    interrupt_coalescing: u32,
    write_atomicity: u32,
}

/// A shutdown's flushes: one per namespace, on channels opened for it.
struct ShutdownFlush {
    channels: Vec<BdevChannel>,
    in_flight: usize,
    failed: bool,
}

/// The admin queue pair's state.
pub(super) struct AdminQueue {
    pub controller: Arc<Controller>,
    pub cc: u32,
    pub csts: u32,
    features: Features,
    /// Held Asynchronous Event Requests (their slots).
    aers: ArrayVec<u16, { limits::NVMF_ASYNC_EVENTS_MAX }>,
    seen_event_generation: u64,
    shutdown: Option<ShutdownFlush>,
}

impl AdminQueue {
    pub fn new(controller: Arc<Controller>) -> AdminQueue {
        let async_event_configuration = if controller.subsystem.is_discovery() {
            AEC_DISCOVERY_LOG
        } else {
            AEC_NAMESPACE_ATTRIBUTE
        };
        AdminQueue {
            seen_event_generation: controller.event_generation(),
            controller,
            cc: 0,
            csts: 0,
            features: Features {
                async_event_configuration,
                temperature_threshold: TEMPERATURE_THRESHOLD_KELVIN,
                ..Features::default()
            },
            aers: ArrayVec::new(),
            shutdown: None,
        }
    }

    pub fn device_in_flight(&self) -> usize {
        self.shutdown.as_ref().map_or(0, |s| s.in_flight)
    }

    pub fn prepare_park(&mut self) -> bool {
        if self.controller.event_generation() != self.seen_event_generation && !self.aers.is_empty()
        {
            return false;
        }
        match self.shutdown.as_mut() {
            Some(shutdown) => shutdown.channels.iter_mut().all(|c| c.prepare_park()),
            None => true,
        }
    }

    /// The admin queue closed: the association ends with it.
    pub fn disassociate(&self) {
        self.controller.fail();
        self.controller.remove_queue(0);
        self.controller.subsystem.remove_controller(self.controller.cntlid);
    }
}

impl Connection {
    fn admin(&mut self) -> Option<&mut AdminQueue> {
        match &mut self.queue {
            Queue::Admin(admin) => Some(admin),
            _ => None,
        }
    }

    /// Copies `bytes` into `index`'s buffer: the command's data, as much as the host asked for.
    pub(super) fn reply_data(&mut self, index: u16, bytes: &[u8]) -> Outcome {
        let slot = self.slots.get_mut(index);
        let Some(buffer) = slot.buffer.as_mut() else {
            return Outcome::status(Status::DATA_SGL_LENGTH_INVALID);
        };
        let target = buffer.as_mut_slice();
        let n = target.len().min(bytes.len());
        target[..n].copy_from_slice(&bytes[..n]);
        target[n..].fill(0);
        Outcome::data(target.len() as u32) // a buffer is at most MDTS bytes
    }

    pub(super) fn execute_admin(&mut self, index: u16) -> Outcome {
        let command = self.slots.get(index).command;
        let Some(admin) = self.admin() else { return Outcome::status(Status::INTERNAL_ERROR) };
        if command.fuse() != 0 {
            return Outcome::status(Status::INVALID_FIELD);
        }
        if admin.cc & cc::ENABLE == 0 {
            return Outcome::status(Status::COMMAND_SEQUENCE_ERROR);
        }
        if admin.controller.subsystem.is_discovery()
            && !matches!(
                command.opcode,
                admin_opcode::IDENTIFY
                    | admin_opcode::GET_LOG_PAGE
                    | admin_opcode::KEEP_ALIVE
                    | admin_opcode::SET_FEATURES
                    | admin_opcode::GET_FEATURES
                    | admin_opcode::ASYNC_EVENT_REQUEST
            )
        {
            return Outcome::status(Status::INVALID_OPCODE);
        }
        match command.opcode {
            admin_opcode::IDENTIFY => self.identify(index),
            admin_opcode::GET_LOG_PAGE => self.get_log_page(index),
            admin_opcode::GET_FEATURES => self.get_features(index),
            admin_opcode::SET_FEATURES => self.set_features(index),
            admin_opcode::ASYNC_EVENT_REQUEST => self.async_event_request(index),
            admin_opcode::KEEP_ALIVE => {
                admin.controller.keep_alive(crate::runtime::now_ns());
                Outcome::status(Status::SUCCESS)
            }
            admin_opcode::ABORT => self.abort(index),
            _ => Outcome::status(Status::INVALID_OPCODE),
        }
    }

    fn get_features(&mut self, index: u16) -> Outcome {
        let command = self.slots.get(index).command;
        let io_queues_max = self.options.max_io_qpairs_per_ctrlr;
        let Some(admin) = self.admin() else { return Outcome::status(Status::INTERNAL_ERROR) };
        let discovery = admin.controller.subsystem.is_discovery();
        let id = command.feature_id();
        if discovery
            && !matches!(id, feature::ASYNC_EVENT_CONFIGURATION | feature::KEEP_ALIVE_TIMER)
        {
            return Outcome::status(Status::INVALID_FIELD);
        }
        // SEL 3 (supported capabilities): every feature here is changeable, none saveable.
        if (command.cdw10 >> 8) & 0x7 == 3 {
            return Outcome::success_dw0(0x4);
        }
        let features = &admin.features;
        let dw0 = match id {
            feature::ARBITRATION => features.arbitration,
            feature::POWER_MANAGEMENT => features.power_management,
            feature::TEMPERATURE_THRESHOLD => features.temperature_threshold,
            feature::ERROR_RECOVERY => features.error_recovery,
            feature::VOLATILE_WRITE_CACHE => u32::from(admin.controller.write_cache_enabled()),
            feature::NUMBER_OF_QUEUES => {
                let granted = admin.controller.io_queues_granted().min(io_queues_max).max(1) - 1;
                granted | (granted << 16)
            }
            feature::INTERRUPT_COALESCING => features.interrupt_coalescing,
            // Coalescing disabled (bit 16) for the vector asked for.
            feature::INTERRUPT_VECTOR => (command.cdw11 & 0xFFFF) | (1 << 16),
            feature::WRITE_ATOMICITY => features.write_atomicity,
            feature::ASYNC_EVENT_CONFIGURATION => features.async_event_configuration,
            feature::KEEP_ALIVE_TIMER => admin.controller.kato_ms(),
            _ => return Outcome::status(Status::INVALID_FIELD),
        };
        Outcome::success_dw0(dw0)
    }

    fn set_features(&mut self, index: u16) -> Outcome {
        let command = self.slots.get(index).command;
        let options = self.options.clone();
        let Some(admin) = self.admin() else { return Outcome::status(Status::INTERNAL_ERROR) };
        let discovery = admin.controller.subsystem.is_discovery();
        let id = command.feature_id();
        if command.cdw10 & (1 << 31) != 0 {
            return Outcome::status(Status::FEATURE_NOT_SAVEABLE);
        }
        if discovery
            && !matches!(id, feature::ASYNC_EVENT_CONFIGURATION | feature::KEEP_ALIVE_TIMER)
        {
            return Outcome::status(Status::INVALID_FIELD);
        }
        let value = command.cdw11;
        let features = &mut admin.features;
        match id {
            feature::ARBITRATION => features.arbitration = value,
            feature::POWER_MANAGEMENT => {
                if value & 0x1F != 0 {
                    return Outcome::status(Status::INVALID_FIELD); // one power state, 0
                }
                features.power_management = value;
            }
            feature::TEMPERATURE_THRESHOLD => features.temperature_threshold = value,
            feature::ERROR_RECOVERY => features.error_recovery = value,
            feature::VOLATILE_WRITE_CACHE => admin.controller.set_write_cache(value & 1 != 0),
            feature::NUMBER_OF_QUEUES => {
                let (sq, cq) = (value & 0xFFFF, value >> 16);
                if sq == 0xFFFF || cq == 0xFFFF {
                    return Outcome::status(Status::INVALID_FIELD);
                }
                let granted = (sq.min(cq) + 1).min(options.max_io_qpairs_per_ctrlr);
                admin.controller.set_io_queues_granted(granted);
                let reply = granted - 1;
                return Outcome::success_dw0(reply | (reply << 16));
            }
            feature::INTERRUPT_COALESCING => features.interrupt_coalescing = value,
            feature::INTERRUPT_VECTOR => {}
            feature::WRITE_ATOMICITY => features.write_atomicity = value,
            feature::ASYNC_EVENT_CONFIGURATION => {
                features.async_event_configuration = value;
                self.complete_async_events();
            }
            feature::KEEP_ALIVE_TIMER => {
                let kato = if value == 0 && discovery {
                    limits::NVMF_DISCOVERY_KATO_MS
                } else {
                    options.effective_kato_ms(value)
                };
                admin.controller.set_kato_ms(kato, crate::runtime::now_ns());
            }
            _ => return Outcome::status(Status::INVALID_FIELD),
        }
        Outcome::status(Status::SUCCESS)
    }

    fn async_event_request(&mut self, index: u16) -> Outcome {
        let Some(admin) = self.admin() else { return Outcome::status(Status::INTERNAL_ERROR) };
        if admin.aers.try_push(index).is_err() {
            return Outcome::status(Status::ASYNC_EVENT_LIMIT_EXCEEDED);
        }
        self.complete_async_events();
        Outcome::Later
    }

    /// Completes held AERs with the events waiting for them.
    fn complete_async_events(&mut self) {
        loop {
            let Some(admin) = self.admin() else { return };
            admin.seen_event_generation = admin.controller.event_generation();
            let Some(&index) = admin.aers.first() else { return };
            let enabled = admin.features.async_event_configuration & AEC_NAMESPACE_ATTRIBUTE != 0;
            let Some(event) = admin.controller.take_event(enabled) else { return };
            admin.aers.remove(0);
            let dw0 = match event {
                PendingEvent::NamespaceAttributeChanged => async_event_dw0(
                    async_event::TYPE_NOTICE,
                    async_event::NOTICE_NAMESPACE_ATTRIBUTE_CHANGED,
                    log_id::CHANGED_NAMESPACES,
                ),
                PendingEvent::DiscoveryLogChanged => async_event_dw0(
                    async_event::TYPE_NOTICE,
                    async_event::NOTICE_DISCOVERY_LOG_CHANGED,
                    log_id::DISCOVERY,
                ),
            };
            self.complete(index, Status::SUCCESS, dw0, 0, 0);
        }
    }

    /// Abort: only a held AER can be aborted here; anything else is already at the device and
    /// completes on its own (DW0 bit 0: not aborted).
    fn abort(&mut self, index: u16) -> Outcome {
        let command = self.slots.get(index).command;
        let (sqid, cid) = ((command.cdw10 & 0xFFFF) as u16, (command.cdw10 >> 16) as u16);
        if sqid == 0 {
            let slots = &self.slots;
            let held = match &mut self.queue {
                Queue::Admin(admin) => admin
                    .aers
                    .iter()
                    .position(|&a| slots.get(a).command.cid == cid)
                    .map(|position| admin.aers.remove(position)),
                _ => None,
            };
            if let Some(aer) = held {
                self.complete(aer, Status::ABORTED_BY_REQUEST, 0, 0, 0);
                return Outcome::success_dw0(0);
            }
        }
        Outcome::success_dw0(1)
    }

    /// The admin queue's poll: events for held AERs, and a shutdown's flushes.
    pub(super) fn poll_admin(&mut self) -> usize {
        let mut work = 0;
        let Some(admin) = self.admin() else { return 0 };
        if admin.controller.event_generation() != admin.seen_event_generation {
            self.complete_async_events();
            work += 1;
        }
        let Some(admin) = self.admin() else { return work };
        if let Some(shutdown) = admin.shutdown.as_mut() {
            for channel in &mut shutdown.channels {
                let failed = &mut shutdown.failed;
                let reaped = channel.poll(&mut |completion| {
                    *failed |= !completion.status.is_success();
                });
                shutdown.in_flight -= reaped.min(shutdown.in_flight);
                work += reaped;
            }
            if shutdown.in_flight == 0 {
                if shutdown.failed {
                    eprintln!(
                        "nvmf: controller {}: a shutdown flush failed",
                        admin.controller.cntlid
                    );
                }
                admin.shutdown = None;
                admin.csts = (admin.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
                work += 1;
            }
        }
        work
    }

    /// CC.SHN was set: flush every namespace; CSTS.SHST reads complete once all are done.
    pub(super) fn begin_shutdown(&mut self) {
        let Some(admin) = self.admin() else { return };
        admin.csts = (admin.csts & !csts::SHST_MASK) | csts::SHST_OCCURRING;
        let mut shutdown = ShutdownFlush { channels: Vec::new(), in_flight: 0, failed: false };
        for namespace in admin.controller.subsystem.namespaces() {
            let bdev = namespace.bdev();
            if !bdev.device().supports(IoKind::Flush) {
                continue;
            }
            match bdev.open_channel() {
                Ok(mut channel) => {
                    if channel.submit(IoRequest::new(IoKind::Flush, 0, 0, 0)).is_ok() {
                        shutdown.in_flight += 1;
                    } else {
                        shutdown.failed = true;
                    }
                    shutdown.channels.push(channel);
                }
                Err(_) => shutdown.failed = true,
            }
        }
        admin.shutdown = Some(shutdown);
    }
}
