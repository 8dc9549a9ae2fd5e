//! A controller's admin queue: a poller on the controller's core that attaches (TCP, ICReq,
//! Fabrics Connect, CAP, CC.EN, CSTS.RDY, VS, Identify controller and CNS 06h, Set Features
//! number of queues and async event configuration, then the namespaces: [`super::scan`]),
//! keeps the association alive (Keep Alive at half the timeout, AERs whose namespace notices
//! start a rescan), and when the connection is lost applies the reconnect policy: reconnect
//! every `reconnect_delay_sec`, fail IO after `fast_io_fail_timeout_sec`, hot-remove after
//! `ctrlr_loss_timeout_sec`. A detach shuts the controller down (CC.SHN, CSTS.SHST) first.
//!
//! Admin commands of the attach sequence go one at a time ([`AdminOp`]), each with a
//! deadline; a missed deadline counts as a lost connection. The poller runs every reactor turn
//! while a command or a connect is in progress and at most every
//! `limits::NVME_ADMIN_POLL_PERIOD_US` otherwise, so an idle controller costs the IO path
//! nothing but a clock read.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::queue::{Finished, LinkError, Phase, QueuePair, QueueSettings};
use super::scan::{Scan, ScanPurpose};
use super::store::AdminStore;
use super::{ControllerInfo, ControllerState, IoLimits, NvmeController, lock};
use crate::host::{PollStatus, Poller};
use crate::limits;
use crate::nvme::command::Command;
use crate::nvme::fabrics::{
    CNTLID_DYNAMIC, ConnectCommand, ConnectData, PropertyAccess, cc, csts, property,
};
use crate::nvme::host;
use crate::nvme::identify::{self, IdentifyController, IdentifyControllerNvm};
use crate::nvme::log::{async_event, log_id};
use crate::runtime::now_ns;

/// Tags of admin commands that are not the sequential operation.
const TAG_OPERATION: u32 = 1;
const TAG_KEEP_ALIVE: u32 = 2;
const TAG_AER: u32 = 3;

/// CAP.TO is in 500 ms units.
const CAP_TIMEOUT_UNIT_NS: u64 = 500_000_000;

/// The one sequential admin command in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AdminOp {
    Connect,
    GetCap,
    EnableController,
    GetStatus,
    GetVersion,
    IdentifyController,
    IdentifyNvm,
    SetQueues,
    SetAsyncEvents,
    ChangedNamespaces,
    ActiveNamespaces { after: u32 },
    IdentifyNamespace { nsid: u32 },
    Descriptors { nsid: u32 },
    Shutdown,
    ShutdownStatus,
}

/// Where the admin queue stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Start a connection now.
    Connect,
    /// TCP and ICReq in progress.
    Link,
    /// The sequential operation is in flight.
    Operation(AdminOp),
    /// CSTS is read again at this time (CC.EN set, waiting for RDY; or CC.SHN, for SHST).
    Poll {
        op: AdminOp,
        at_ns: u64,
    },
    Live,
    /// Reconnect at this time.
    WaitReconnect {
        at_ns: u64,
    },
    /// Given up (`ctrlr_loss_timeout_sec` 0): waits for a detach.
    Failed,
    Finished,
}

/// The connection loss being recovered from.
#[derive(Clone, Copy, Debug)]
struct Reset {
    started_ns: u64,
    attempts: u32,
}

pub(super) struct AdminPoller {
    pub controller: Arc<NvmeController>,
    pub queue: QueuePair,
    pub store: AdminStore,
    stage: Stage,
    op_deadline_ns: u64,
    /// Deadline of the CSTS wait in progress (RDY after CC.EN, SHST after CC.SHN).
    poll_deadline_ns: u64,
    /// The first association was reported (`attached`).
    attached: bool,
    reset: Option<Reset>,
    cntlid: u16,
    cap: u64,
    version: u32,
    /// Identify Controller of this association.
    pub identify: Option<IdentifyController>,
    pub nvm: IdentifyControllerNvm,
    io_queues: u16,
    /// Keep alive: interval, next due time, and when the one in flight was sent.
    keep_alive_interval_ns: u64,
    keep_alive_next_ns: u64,
    keep_alive_sent_ns: Option<u64>,
    aers_outstanding: usize,
    rescan_wanted: bool,
    pub scan: Scan,
    detaching: bool,
    last_poll_ns: u64,
}

impl AdminPoller {
    pub fn new(controller: Arc<NvmeController>) -> AdminPoller {
        let settings = QueueSettings {
            entries: limits::NVME_ADMIN_QUEUE_ENTRIES,
            // The admin queue takes 8 KiB in capsule (NVMe/TCP 1.0 §3.3.5).
            capsule_data_max: 8192,
            sq_flow_control: controller.options.sq_flow_control,
            digests: controller.options.digests,
        };
        let slots = usize::from(limits::NVME_ADMIN_QUEUE_ENTRIES) - 1;
        AdminPoller {
            controller,
            queue: QueuePair::new(settings, slots),
            store: AdminStore::new(),
            stage: Stage::Connect,
            op_deadline_ns: 0,
            poll_deadline_ns: 0,
            attached: false,
            reset: None,
            cntlid: 0,
            cap: 0,
            version: 0,
            identify: None,
            nvm: IdentifyControllerNvm::default(),
            io_queues: 0,
            keep_alive_interval_ns: 0,
            keep_alive_next_ns: 0,
            keep_alive_sent_ns: None,
            aers_outstanding: 0,
            rescan_wanted: false,
            scan: Scan::default(),
            detaching: false,
            last_poll_ns: 0,
        }
    }

    fn connect_deadline(&self, now: u64) -> u64 {
        now + self.controller.options.connect_timeout_us * 1000
    }

    /// Sends the sequential operation `op` with `command` (and the page, or Connect data).
    pub(super) fn issue(&mut self, op: AdminOp, command: Command, now: u64) {
        let data = match op {
            AdminOp::Connect => Some((AdminStore::connect_ref(), true)),
            AdminOp::IdentifyController
            | AdminOp::IdentifyNvm
            | AdminOp::ChangedNamespaces
            | AdminOp::ActiveNamespaces { .. }
            | AdminOp::IdentifyNamespace { .. }
            | AdminOp::Descriptors { .. } => Some((AdminStore::page_ref(), false)),
            _ => None,
        };
        self.op_deadline_ns = if op == AdminOp::Connect {
            self.connect_deadline(now)
        } else {
            now + limits::NVME_ADMIN_COMMAND_TIMEOUT_MS * 1_000_000
        };
        if self.queue.submit(command, TAG_OPERATION, data, &self.store).is_err() {
            return self.lose(LinkError::Protocol("admin queue full".into()), now);
        }
        self.stage = Stage::Operation(op);
    }

    fn property_get(&mut self, op: AdminOp, offset: u32, eight_bytes: bool, now: u64) {
        let command = PropertyAccess { offset, eight_bytes, value: 0 }.encode_get(0);
        self.issue(op, command, now);
    }

    fn start_connect(&mut self, now: u64) {
        self.queue.connect(self.controller.options.address, self.connect_deadline(now));
        self.stage = Stage::Link;
    }

    /// The link is up: Fabrics Connect for the admin queue.
    fn send_connect(&mut self, now: u64) {
        let options = &self.controller.options;
        let data = ConnectData {
            host_id: options.host_id,
            cntlid: CNTLID_DYNAMIC,
            subnqn: options.subnqn.clone(),
            hostnqn: options.hostnqn.clone(),
        };
        self.store.connect.as_mut_slice().copy_from_slice(&data.encode());
        let connect = ConnectCommand {
            recfmt: 0,
            qid: 0,
            sqsize: limits::NVME_ADMIN_QUEUE_ENTRIES - 1,
            cattr: if options.sq_flow_control { 0 } else { 1 << 2 },
            kato_ms: limits::NVME_KEEP_ALIVE_TIMEOUT_MS,
        };
        self.issue(AdminOp::Connect, connect.encode(0), now);
    }

    /// The sequential operation finished: check it and go on.
    fn operation_done(&mut self, op: AdminOp, answer: Finished, now: u64) {
        let failed =
            |what: &str| LinkError::Protocol(format!("{what}: status {:?}", answer.status));
        match op {
            AdminOp::Connect => {
                if !answer.status.is_success() {
                    return self.give_up(format!(
                        "Fabrics Connect refused (SCT {:#x} SC {:#x}, DW0 {:#x})",
                        answer.status.sct, answer.status.sc, answer.dw0
                    ));
                }
                self.cntlid = (answer.dw0 & 0xFFFF) as u16;
                self.property_get(AdminOp::GetCap, property::CAP, true, now);
            }
            AdminOp::GetCap => {
                if !answer.status.is_success() {
                    return self.lose(failed("Property Get CAP"), now);
                }
                self.cap = u64::from(answer.dw0) | (u64::from(answer.dw1) << 32);
                let value = cc::ENABLE | (6 << cc::IOSQES_SHIFT) | (4 << cc::IOCQES_SHIFT);
                let set = PropertyAccess {
                    offset: property::CC,
                    eight_bytes: false,
                    value: value.into(),
                };
                self.issue(AdminOp::EnableController, set.encode_set(0), now);
            }
            AdminOp::EnableController => {
                if !answer.status.is_success() {
                    return self.lose(failed("Property Set CC.EN"), now);
                }
                self.poll_deadline_ns = now + (self.cap_timeout() + 1) * CAP_TIMEOUT_UNIT_NS;
                self.stage = Stage::Poll { op: AdminOp::GetStatus, at_ns: now };
            }
            AdminOp::GetStatus => {
                if !answer.status.is_success() {
                    return self.lose(failed("Property Get CSTS"), now);
                }
                if answer.dw0 & csts::FATAL != 0 {
                    return self
                        .lose(LinkError::Protocol("CSTS.CFS: controller fatal".into()), now);
                }
                if answer.dw0 & csts::READY != 0 {
                    self.property_get(AdminOp::GetVersion, property::VS, false, now);
                } else {
                    self.poll_again(AdminOp::GetStatus, now, "CSTS.RDY");
                }
            }
            AdminOp::GetVersion => {
                if !answer.status.is_success() {
                    return self.lose(failed("Property Get VS"), now);
                }
                self.version = answer.dw0;
                let command = host::identify(identify::cns::CONTROLLER, 0, identify::CSI_NVM);
                self.issue(AdminOp::IdentifyController, command, now);
            }
            AdminOp::IdentifyController => {
                if !answer.status.is_success() {
                    return self.lose(failed("Identify Controller"), now);
                }
                let data = IdentifyController::decode(self.store.page_bytes());
                if let Err(problem) = self.check_identify(&data) {
                    return self.give_up(problem);
                }
                self.identify = Some(data);
                let command =
                    host::identify(identify::cns::CONTROLLER_COMMAND_SET, 0, identify::CSI_NVM);
                self.issue(AdminOp::IdentifyNvm, command, now);
            }
            AdminOp::IdentifyNvm => {
                // Controllers before NVMe 2.0 may not know CNS 06h: no limits then.
                self.nvm = if answer.status.is_success() {
                    IdentifyControllerNvm::decode(self.store.page_bytes())
                } else {
                    IdentifyControllerNvm::default()
                };
                let cores = self.controller.runtime.cores().len() as u32;
                let wanted = self.controller.options.num_io_queues.min(cores).clamp(1, 0xFFFF);
                self.issue(AdminOp::SetQueues, host::set_queue_count(wanted as u16), now);
            }
            AdminOp::SetQueues => {
                if !answer.status.is_success() {
                    return self.lose(failed("Set Features Number of Queues"), now);
                }
                self.io_queues = host::granted_queue_count(answer.dw0).min(0xFFFF) as u16;
                let oaes = self.identify.as_ref().map_or(0, |i| i.support.oaes);
                if oaes & identify::oaes::NAMESPACE_ATTRIBUTE != 0 {
                    let command = host::set_features(
                        host::feature::ASYNC_EVENT_CONFIGURATION,
                        host::AEC_NAMESPACE_ATTRIBUTE,
                    );
                    self.issue(AdminOp::SetAsyncEvents, command, now);
                } else {
                    self.begin_scan(ScanPurpose::Associate, now);
                }
            }
            AdminOp::SetAsyncEvents => {
                // Without notices the namespaces are still served; resizes go unseen.
                if !answer.status.is_success() {
                    eprintln!("nvme {}: Set Features async event config failed", self.name());
                }
                self.begin_scan(ScanPurpose::Associate, now);
            }
            AdminOp::ChangedNamespaces => {
                // Reading the log (RAE clear) re-arms namespace notices; which ones changed
                // does not matter, the rescan compares them all.
                self.begin_scan(ScanPurpose::Rescan, now);
            }
            AdminOp::ActiveNamespaces { .. }
            | AdminOp::IdentifyNamespace { .. }
            | AdminOp::Descriptors { .. } => self.scan_step(op, answer, now),
            AdminOp::Shutdown => {
                self.poll_deadline_ns = now + self.cap_timeout().max(2) * CAP_TIMEOUT_UNIT_NS;
                self.stage = Stage::Poll { op: AdminOp::ShutdownStatus, at_ns: now };
            }
            AdminOp::ShutdownStatus => {
                let complete = answer.status.is_success()
                    && answer.dw0 & csts::SHST_MASK == csts::SHST_COMPLETE;
                if complete {
                    self.finish_detach(Ok(()));
                } else {
                    self.poll_again(AdminOp::ShutdownStatus, now, "CSTS.SHST");
                }
            }
        }
    }

    /// Reads CSTS again after a millisecond, unless the deadline passed.
    fn poll_again(&mut self, op: AdminOp, now: u64, what: &'static str) {
        if now > self.poll_deadline_ns {
            if op == AdminOp::ShutdownStatus {
                eprintln!("nvme {}: shutdown not complete in time; closing", self.name());
                return self.finish_detach(Ok(()));
            }
            return self.lose(LinkError::Timeout(what), now);
        }
        self.stage = Stage::Poll { op, at_ns: now + 1_000_000 };
    }

    fn cap_timeout(&self) -> u64 {
        (self.cap >> 24) & 0xFF
    }

    /// What Identify Controller must say for us to use it (Linux's checks).
    fn check_identify(&self, data: &IdentifyController) -> Result<(), String> {
        if data.cntlid != self.cntlid {
            return Err(format!(
                "Identify says controller {:#x}, Connect said {:#x}",
                data.cntlid, self.cntlid
            ));
        }
        if data.limits.icdoff != 0 {
            return Err("in-capsule data offset (ICDOFF) is not supported".into());
        }
        if data.support.sgls & 0x3 == 0 {
            return Err("the controller supports no SGLs".into());
        }
        if data.controller_type == identify::CONTROLLER_TYPE_DISCOVERY {
            return Err("a discovery controller has no namespaces".into());
        }
        Ok(())
    }

    /// The limits IO queue pairs use, from this association's Identify data.
    pub(super) fn controller_info(&self) -> ControllerInfo {
        let identify = self.identify.clone().unwrap_or_default();
        let page_bytes = 4096u64 << ((self.cap >> 48) & 0xF);
        let transfer_bytes_max = match identify.limits.mdts {
            0 => limits::IO_BYTES_MAX as u64,
            mdts => page_bytes.checked_shl(u32::from(mdts)).unwrap_or(u64::MAX),
        }
        .min(limits::IO_BYTES_MAX as u64) as u32;
        let write_zeroes_bytes_max = match self.nvm.wzsl {
            0 => 0,
            wzsl => page_bytes.checked_shl(u32::from(wzsl)).unwrap_or(u64::MAX),
        };
        let mqes_entries = ((self.cap & 0xFFFF) + 1).min(u64::from(u16::MAX)) as u16;
        let mut io_queue_entries = limits::NVME_IO_QUEUE_ENTRIES_MAX.min(mqes_entries);
        if identify.limits.maxcmd > 0 {
            io_queue_entries = io_queue_entries.min(identify.limits.maxcmd);
        }
        let ioccsz = identify.limits.ioccsz;
        let oncs = identify.support.oncs;
        ControllerInfo {
            cntlid: self.cntlid,
            version: self.version,
            identity: identify.identity.clone(),
            io_queue_entries: io_queue_entries.max(2),
            io_queues: self.io_queues,
            capsule_data_max: if ioccsz >= 4 { ioccsz.saturating_mul(16) - 64 } else { 0 },
            limits: IoLimits {
                transfer_bytes_max: transfer_bytes_max.max(512),
                write_zeroes_bytes_max,
                dsm_ranges_max: match self.nvm.dmrl {
                    0 => 256,
                    dmrl => u16::from(dmrl),
                },
                dsm_range_blocks_max: match self.nvm.dmrsl {
                    0 => u32::MAX,
                    dmrsl => dmrsl,
                },
                dsm_blocks_max: match self.nvm.dmsl {
                    0 => u64::MAX,
                    dmsl => dmsl,
                },
                write_zeroes: oncs & identify::oncs::WRITE_ZEROES != 0,
                dataset_management: oncs & identify::oncs::DATASET_MANAGEMENT != 0,
                volatile_write_cache: identify.support.vwc & 1 != 0,
            },
        }
    }

    fn name(&self) -> &str {
        self.controller.name()
    }

    /// The association is up and its namespaces known: publish, arm AERs and keep alive.
    pub(super) fn go_live(&mut self, now: u64) {
        *lock(&self.controller.info) = Some(self.controller_info());
        let first = !self.attached;
        self.attached = true;
        if let Some(reset) = self.reset.take() {
            eprintln!(
                "nvme {}: reconnected after {} ms ({} attempts)",
                self.name(),
                now.saturating_sub(reset.started_ns) / 1_000_000,
                reset.attempts
            );
        }
        self.controller.set_state(ControllerState::Live, true);
        self.stage = Stage::Live;
        let kas = self.identify.as_ref().map_or(0, |i| i.support.kas);
        self.keep_alive_interval_ns = if kas == 0 {
            0
        } else {
            u64::from(limits::NVME_KEEP_ALIVE_TIMEOUT_MS) * 1_000_000 / 2
        };
        self.keep_alive_next_ns = now + self.keep_alive_interval_ns;
        self.keep_alive_sent_ns = None;
        let aerl = self.identify.as_ref().map_or(0, |i| usize::from(i.support.aerl) + 1);
        let aers = aerl.min(limits::NVME_ASYNC_EVENTS_MAX);
        self.aers_outstanding = 0;
        for _ in 0..aers {
            if self.queue.submit(host::async_event_request(), TAG_AER, None, &self.store).is_ok() {
                self.aers_outstanding += 1;
            }
        }
        if first {
            let events = Arc::clone(&self.controller.events);
            events.attached(&self.controller, Ok(()));
        }
    }

    /// A rescan ended: back to steady state.
    pub(super) fn back_to_live(&mut self) {
        self.stage = Stage::Live;
    }

    /// The connection is gone (or was never made): apply the reconnect policy.
    pub(super) fn lose(&mut self, error: LinkError, now: u64) {
        self.queue.abort_all(|_| {});
        self.aers_outstanding = 0;
        self.keep_alive_sent_ns = None;
        if !self.attached {
            return self.give_up(error.to_string());
        }
        if self.detaching {
            return self.finish_detach(Ok(()));
        }
        let policy = self.controller.options.reconnect;
        let reset = self.reset.get_or_insert(Reset { started_ns: now, attempts: 0 });
        reset.attempts += 1;
        let (started_ns, attempts) = (reset.started_ns, reset.attempts);
        if attempts == 1 {
            eprintln!("nvme {}: connection lost ({error}); reconnecting", self.name());
        }
        let elapsed_s = now.saturating_sub(started_ns) / 1_000_000_000;
        if policy.ctrlr_loss_timeout_sec == 0 {
            if attempts > 1 {
                eprintln!("nvme {}: reconnect failed ({error}); controller failed", self.name());
                self.controller.set_state(ControllerState::Failed, false);
                self.stage = Stage::Failed;
                return;
            }
            self.controller.set_state(ControllerState::Resetting, true);
            return self.start_connect(now);
        }
        if policy.ctrlr_loss_timeout_sec > 0 && elapsed_s >= policy.ctrlr_loss_timeout_sec as u64 {
            eprintln!(
                "nvme {}: not back after {elapsed_s} s (ctrlr_loss_timeout_sec); removing it",
                self.name()
            );
            return self.remove();
        }
        let fail_io = policy.fast_io_fail_timeout_sec != 0
            && elapsed_s >= u64::from(policy.fast_io_fail_timeout_sec);
        let state = if fail_io { ControllerState::FailingIo } else { ControllerState::Resetting };
        self.controller.set_state(state, attempts == 1);
        if attempts == 1 {
            return self.start_connect(now);
        }
        let delay_ns = u64::from(policy.reconnect_delay_sec) * 1_000_000_000;
        self.stage = Stage::WaitReconnect { at_ns: now + delay_ns };
    }

    /// The first attach failed: report it, and this controller never existed.
    fn give_up(&mut self, problem: String) {
        self.queue.abort_all(|_| {});
        if self.attached {
            // A reconnect refused for good (the subsystem is gone): as a lost controller.
            eprintln!("nvme {}: {problem}", self.name());
            return self.lose(LinkError::Protocol(problem), now_ns());
        }
        self.controller.set_state(ControllerState::Removed, true);
        self.stage = Stage::Finished;
        let events = Arc::clone(&self.controller.events);
        events.attached(&self.controller, Err(problem));
        if let Some(done) = lock(&self.controller.detach).take() {
            done(Ok(()));
        }
    }

    /// Hot removal: every namespace fails its IO and is reported gone.
    fn remove(&mut self) {
        self.queue.abort_all(|_| {});
        self.reset = None;
        self.controller.set_state(ControllerState::Removed, true);
        self.stage = Stage::Finished;
        let namespaces = std::mem::take(&mut *lock(&self.controller.namespaces));
        for namespace in &namespaces {
            namespace.mark_removed();
            self.controller.events.namespace_removed(namespace);
        }
        if let Some(done) = lock(&self.controller.detach).take() {
            done(Ok(()));
        }
    }

    fn finish_detach(&mut self, result: Result<(), String>) {
        self.queue.abort_all(|_| {});
        self.controller.set_state(ControllerState::Removed, true);
        for namespace in lock(&self.controller.namespaces).drain(..) {
            namespace.mark_removed();
        }
        self.stage = Stage::Finished;
        if let Some(done) = lock(&self.controller.detach).take() {
            done(result);
        }
    }

    /// A detach was asked for: a normal shutdown if live, else close now.
    fn begin_detach(&mut self, now: u64) {
        self.detaching = true;
        match self.stage {
            Stage::Live if self.queue.is_ready() => {
                let value = cc::ENABLE
                    | (6 << cc::IOSQES_SHIFT)
                    | (4 << cc::IOCQES_SHIFT)
                    | (1 << cc::SHN_SHIFT);
                let set = PropertyAccess {
                    offset: property::CC,
                    eight_bytes: false,
                    value: value.into(),
                };
                self.issue(AdminOp::Shutdown, set.encode_set(0), now);
            }
            Stage::Operation(_) | Stage::Poll { .. } | Stage::Link if self.attached => {
                // Mid-rescan or mid-reconnect: close without a shutdown.
                self.finish_detach(Ok(()));
            }
            Stage::Operation(_) | Stage::Poll { .. } | Stage::Link | Stage::Connect => {
                // The first attach is still going: wait for it to end either way.
            }
            Stage::WaitReconnect { .. } | Stage::Failed => self.finish_detach(Ok(())),
            Stage::Live => self.finish_detach(Ok(())),
            Stage::Finished => {}
        }
    }

    /// Answers from the controller: the operation, keep alives, AERs.
    fn take_answers(&mut self, now: u64) -> usize {
        let mut count = 0;
        while let Some(answer) = self.queue.pop_finished() {
            count += 1;
            match answer.tag {
                TAG_OPERATION => {
                    if let Stage::Operation(op) = self.stage {
                        self.operation_done(op, answer, now);
                    }
                }
                TAG_KEEP_ALIVE => {
                    self.keep_alive_sent_ns = None;
                    if !answer.status.is_success() {
                        eprintln!("nvme {}: keep alive failed: {:?}", self.name(), answer.status);
                    }
                }
                TAG_AER => self.async_event(answer, now),
                _ => {}
            }
            if matches!(self.stage, Stage::Finished | Stage::Failed | Stage::WaitReconnect { .. })
                || !self.queue.is_ready()
            {
                break;
            }
        }
        count
    }

    fn async_event(&mut self, answer: Finished, _now: u64) {
        self.aers_outstanding = self.aers_outstanding.saturating_sub(1);
        if !answer.status.is_success() {
            // Aborted or over the limit: not re-armed.
            return;
        }
        let event_type = (answer.dw0 & 0x7) as u8;
        let information = ((answer.dw0 >> 8) & 0xFF) as u8;
        if event_type == async_event::TYPE_NOTICE
            && information == async_event::NOTICE_NAMESPACE_ATTRIBUTE_CHANGED
        {
            self.rescan_wanted = true;
        }
        if self.queue.submit(host::async_event_request(), TAG_AER, None, &self.store).is_ok() {
            self.aers_outstanding += 1;
        }
    }

    /// Live housekeeping: keep alive, a rescan asked for by an AER, a reset asked for by an
    /// IO queue pair.
    fn live(&mut self, now: u64) {
        let (generation, _) = self.controller.association();
        if self.controller.reset_requested.swap(0, Ordering::AcqRel) == generation {
            return self.lose(LinkError::Protocol("an IO queue failed".into()), now);
        }
        if let Some(sent) = self.keep_alive_sent_ns {
            if now.saturating_sub(sent) > u64::from(limits::NVME_KEEP_ALIVE_TIMEOUT_MS) * 1_000_000
            {
                return self.lose(LinkError::Timeout("Keep Alive"), now);
            }
        } else if self.keep_alive_interval_ns > 0 && now >= self.keep_alive_next_ns {
            if self.queue.submit(host::keep_alive(), TAG_KEEP_ALIVE, None, &self.store).is_ok() {
                self.keep_alive_sent_ns = Some(now);
            }
            self.keep_alive_next_ns = now + self.keep_alive_interval_ns;
        }
        if self.rescan_wanted && self.stage == Stage::Live {
            self.rescan_wanted = false;
            let command = host::get_log_page(log_id::CHANGED_NAMESPACES, u32::MAX, 4096, 0, false);
            self.issue(AdminOp::ChangedNamespaces, command, now);
        }
    }

    /// Whether this poll must run now (work in progress) rather than at the admin period.
    fn busy(&self) -> bool {
        !matches!(self.stage, Stage::Live | Stage::WaitReconnect { .. } | Stage::Failed)
            || self.queue.has_pending_work()
    }
}

impl Poller for AdminPoller {
    fn poll(&mut self) -> PollStatus {
        let now = now_ns();
        let detach_asked = !self.detaching && lock(&self.controller.detach).is_some();
        if !detach_asked
            && !self.busy()
            && now.saturating_sub(self.last_poll_ns) < limits::NVME_ADMIN_POLL_PERIOD_US * 1000
        {
            return PollStatus::Idle;
        }
        self.last_poll_ns = now;
        if detach_asked {
            self.begin_detach(now);
        }
        let mut work = 0;
        match self.stage {
            Stage::Finished => return PollStatus::Idle,
            Stage::Connect => {
                self.start_connect(now);
                work += 1;
            }
            Stage::WaitReconnect { at_ns } => {
                self.check_fast_io_fail(now);
                if now >= at_ns {
                    self.start_connect(now);
                    work += 1;
                }
            }
            Stage::Poll { op, at_ns, .. } if now >= at_ns => {
                self.property_get(op, property::CSTS, false, now);
                work += 1;
            }
            _ => {}
        }
        work += self.queue.poll(&mut self.store, now);
        if self.stage == Stage::Link && self.queue.is_ready() {
            self.send_connect(now);
            work += 1;
        }
        work += self.take_answers(now);
        let connection_expected =
            !matches!(self.stage, Stage::WaitReconnect { .. } | Stage::Failed | Stage::Finished);
        if self.queue.is_failed() && connection_expected {
            let error = self.queue.failure().cloned().unwrap_or(LinkError::Closed);
            self.lose(error, now);
            work += 1;
        } else if matches!(self.stage, Stage::Operation(_)) && now > self.op_deadline_ns {
            let Stage::Operation(op) = self.stage else { unreachable!("matched above") };
            let what = if op == AdminOp::Connect { "Fabrics Connect" } else { "admin command" };
            self.lose(LinkError::Timeout(what), now);
        } else if self.stage == Stage::Link && self.queue.phase() == Phase::Idle {
            self.lose(LinkError::Closed, now);
        } else if self.stage == Stage::Live {
            self.live(now);
        }
        if self.reset.is_some() && self.stage != Stage::Failed {
            self.check_fast_io_fail(now);
        }
        PollStatus::busy_if(work > 0)
    }

    fn name(&self) -> &str {
        "nvme_admin"
    }

    fn is_finished(&self) -> bool {
        self.stage == Stage::Finished
    }

    fn prepare_park(&mut self) -> bool {
        if self.queue.has_pending_work() {
            return false;
        }
        self.queue.watch_for_park();
        true
    }
}

impl AdminPoller {
    /// Past `fast_io_fail_timeout_sec` of a reset, IO queued for the controller fails.
    fn check_fast_io_fail(&mut self, now: u64) {
        let Some(reset) = self.reset else { return };
        let fail_after = self.controller.options.reconnect.fast_io_fail_timeout_sec;
        if fail_after != 0
            && now.saturating_sub(reset.started_ns) >= u64::from(fail_after) * 1_000_000_000
            && self.controller.state() == ControllerState::Resetting
        {
            eprintln!("nvme {}: fast_io_fail_timeout_sec passed; failing IO", self.name());
            self.controller.set_state(ControllerState::FailingIo, false);
        }
        let loss = self.controller.options.reconnect.ctrlr_loss_timeout_sec;
        if loss > 0 && now.saturating_sub(reset.started_ns) >= loss as u64 * 1_000_000_000 {
            eprintln!("nvme {}: ctrlr_loss_timeout_sec passed; removing it", self.name());
            self.remove();
        }
    }
}

impl Drop for AdminPoller {
    fn drop(&mut self) {
        self.queue.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_sets_shn_normal() {
        let value = cc::ENABLE | (1 << cc::SHN_SHIFT);
        assert_eq!(value & cc::SHN_MASK, 0x4000);
    }
}
