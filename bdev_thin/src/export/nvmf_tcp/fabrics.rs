//! Fabrics commands on a queue pair: Connect (which makes it an admin queue of a new
//! controller or an IO queue of an existing one), Property Get / Set (the admin queue's
//! registers: enable, reset, shutdown) and Disconnect (NVMe-oF 1.1 §3.3). Connect checks the
//! subsystem, the host NQN against its allowed hosts, the listener the connection came in on,
//! the queue size against the transport's limits and, for IO queues, the controller ID, host
//! and queue ID; each refusal names the offending field as the specification asks.

use std::sync::Arc;

use super::admin::AdminQueue;
use super::controller::{Controller, ControllerSpec, QueueInfo};
use super::io::IoQueue;
use super::qpair::{Close, Connection, Outcome, Queue};
use crate::limits;
use crate::nvme::command::Status;
use crate::nvme::fabrics::{
    CNTLID_DYNAMIC, CONNECT_DATA_BYTES, Capabilities, ConnectCommand, ConnectData, PropertyAccess,
    cc, connect_invalid_dw0, connect_offset, connect_status, connect_success_dw0, csts, fctype,
    property,
};

fn invalid_command(offset: u16) -> Outcome {
    eprintln!("nvmf: Connect refused: invalid parameter at command byte {offset}");
    let status = connect_status::INVALID_PARAMETERS;
    Outcome::Complete { status, dw0: connect_invalid_dw0(offset, false), dw1: 0, data_bytes: 0 }
}

fn invalid_data(offset: u16) -> Outcome {
    eprintln!("nvmf: Connect refused: invalid parameter at data byte {offset}");
    let status = connect_status::INVALID_PARAMETERS;
    Outcome::Complete { status, dw0: connect_invalid_dw0(offset, true), dw1: 0, data_bytes: 0 }
}

impl Connection {
    pub(super) fn execute_fabrics(&mut self, index: u16) -> Outcome {
        let command = self.slots.get(index).command;
        match (command.fctype(), &self.queue) {
            (fctype::CONNECT, Queue::Unconnected) => self.connect(index),
            (_, Queue::Unconnected) => Outcome::status(Status::COMMAND_SEQUENCE_ERROR),
            (fctype::PROPERTY_GET, Queue::Admin(_)) => self.property_get(index),
            (fctype::PROPERTY_SET, Queue::Admin(_)) => self.property_set(index),
            (fctype::DISCONNECT, Queue::Io(_)) => {
                self.closing = Some(Close::Graceful);
                Outcome::status(Status::SUCCESS)
            }
            _ => Outcome::status(Status::INVALID_OPCODE),
        }
    }

    fn connect(&mut self, index: u16) -> Outcome {
        let slot = self.slots.get(index);
        let connect = ConnectCommand::decode(&slot.command);
        let Some(raw) = slot.buffer.as_ref().and_then(|b| b.as_slice().get(..CONNECT_DATA_BYTES))
        else {
            return Outcome::status(Status::INVALID_FIELD);
        };
        let mut bytes = [0u8; CONNECT_DATA_BYTES];
        bytes.copy_from_slice(raw);
        let data = match ConnectData::decode(&bytes) {
            Ok(data) => data,
            Err(invalid) => return invalid_data(invalid.offset),
        };
        if connect.recfmt != 0 {
            return Outcome::status(connect_status::INCOMPATIBLE_FORMAT);
        }
        let Some(subsystem) = self.shared.subsystem(&data.subnqn).filter(|s| !s.is_deleted())
        else {
            // The NQNs come from the network: escaped, so a host cannot forge log lines.
            crate::names::log_line(format_args!(
                "nvmf: Connect to unknown subsystem {} from {}",
                data.subnqn, data.hostnqn
            ));
            return invalid_data(connect_offset::DATA_SUBNQN);
        };
        if !subsystem.host_allowed(&data.hostnqn) || !subsystem.listener_allowed(&self.listen) {
            crate::names::log_line(format_args!(
                "nvmf: subsystem {} refuses host {} on {}",
                subsystem.nqn, data.hostnqn, self.listen
            ));
            return Outcome::status(connect_status::INVALID_HOST);
        }
        let depth_max =
            if connect.qid == 0 { self.options.max_aq_depth } else { self.options.max_queue_depth };
        if connect.sqsize == 0 || u32::from(connect.sqsize) >= depth_max {
            return invalid_command(connect_offset::SQE_SQSIZE);
        }
        let outcome = if connect.qid == 0 {
            self.connect_admin(subsystem, &connect, data)
        } else {
            self.connect_io(subsystem, &connect, data)
        };
        if let Outcome::Complete { status, .. } = &outcome
            && status.is_success()
        {
            self.link.qid = connect.qid;
            self.link.sq_entries = connect.sqsize + 1;
            self.link.sq_head = 0;
            self.slots.set_limit(usize::from(connect.sqsize) + 1);
            if connect.qid != 0 {
                self.link.rules.capsule_data_max = self.options.capsule_data_max(false);
            }
        }
        outcome
    }

    fn connect_admin(
        &mut self,
        subsystem: Arc<super::Subsystem>,
        connect: &ConnectCommand,
        data: ConnectData,
    ) -> Outcome {
        if data.cntlid != CNTLID_DYNAMIC {
            return invalid_data(connect_offset::DATA_CNTLID);
        }
        let kato_ms = if subsystem.is_discovery() && connect.kato_ms == 0 {
            limits::NVMF_DISCOVERY_KATO_MS
        } else {
            self.options.effective_kato_ms(connect.kato_ms)
        };
        let spec = ControllerSpec {
            subsystem: Arc::clone(&subsystem),
            host_nqn: data.hostnqn,
            host_id: data.host_id,
            admin_core: self.core,
            sq_flow_control_disabled: connect.sq_flow_control_disabled(),
            kato_ms,
            io_queues_max: self.options.max_io_qpairs_per_ctrlr,
            now_ns: crate::runtime::now_ns(),
        };
        let controller = match subsystem.add_controller(|cntlid| Controller::new(cntlid, spec)) {
            Ok(controller) => controller,
            Err(_) => return Outcome::status(connect_status::CONTROLLER_BUSY),
        };
        controller.add_queue(QueueInfo {
            qid: 0,
            core: self.core,
            listen: self.listen.clone(),
            peer: self.peer,
        });
        let cntlid = controller.cntlid;
        self.queue = Queue::Admin(Box::new(AdminQueue::new(controller)));
        Outcome::success_dw0(connect_success_dw0(cntlid))
    }

    fn connect_io(
        &mut self,
        subsystem: Arc<super::Subsystem>,
        connect: &ConnectCommand,
        data: ConnectData,
    ) -> Outcome {
        if subsystem.is_discovery() {
            return invalid_command(connect_offset::SQE_QID);
        }
        let Some(controller) = subsystem.controller(data.cntlid).filter(|c| !c.is_failed()) else {
            return invalid_data(connect_offset::DATA_CNTLID);
        };
        if controller.host_nqn != data.hostnqn {
            return invalid_data(connect_offset::DATA_HOSTNQN);
        }
        if !controller.is_enabled() {
            return Outcome::status(Status::COMMAND_SEQUENCE_ERROR);
        }
        let granted = controller.io_queues_granted().min(self.options.max_io_qpairs_per_ctrlr);
        if u32::from(connect.qid) > granted {
            return invalid_command(connect_offset::SQE_QID);
        }
        let info = QueueInfo {
            qid: connect.qid,
            core: self.core,
            listen: self.listen.clone(),
            peer: self.peer,
        };
        if !controller.add_queue(info) {
            return invalid_command(connect_offset::SQE_QID);
        }
        let cntlid = controller.cntlid;
        self.queue = Queue::Io(Box::new(IoQueue::new(controller, connect.qid)));
        Outcome::success_dw0(connect_success_dw0(cntlid))
    }

    fn property_get(&mut self, index: u16) -> Outcome {
        let access = PropertyAccess::decode(&self.slots.get(index).command);
        let depth = self.options.max_queue_depth;
        let Queue::Admin(admin) = &self.queue else {
            return Outcome::status(Status::INVALID_OPCODE);
        };
        let value: u64 = match (access.offset, access.eight_bytes) {
            (property::CAP, true) => Capabilities {
                mqes: (depth - 1).min(u32::from(u16::MAX)) as u16,
                timeout_500ms: limits::NVMF_CONTROLLER_TIMEOUT_500MS,
            }
            .to_register(),
            (property::VS, false) => u64::from(super::pages::NVME_VERSION),
            (property::CC, false) => u64::from(admin.cc),
            (property::CSTS, false) => u64::from(admin.csts),
            _ => return Outcome::status(Status::INVALID_FIELD),
        };
        Outcome::Complete {
            status: Status::SUCCESS,
            dw0: value as u32,
            dw1: (value >> 32) as u32,
            data_bytes: 0,
        }
    }

    fn property_set(&mut self, index: u16) -> Outcome {
        let access = PropertyAccess::decode(&self.slots.get(index).command);
        if access.offset != property::CC || access.eight_bytes {
            return Outcome::status(Status::INVALID_FIELD);
        }
        let Queue::Admin(admin) = &mut self.queue else {
            return Outcome::status(Status::INVALID_OPCODE);
        };
        let new = access.value as u32;
        let old = std::mem::replace(&mut admin.cc, new);
        let enable = new & cc::ENABLE != 0;
        let mut reset = false;
        if enable && old & cc::ENABLE == 0 {
            admin.csts |= csts::READY;
            admin.controller.set_enabled(true);
        } else if !enable && old & cc::ENABLE != 0 {
            // A reset: the IO queues end; the host reconnects them once ready again.
            admin.csts &= !(csts::READY | csts::SHST_MASK);
            admin.controller.set_enabled(false);
            reset = true;
        }
        let shutdown = new & cc::SHN_MASK != 0;
        if !shutdown && old & cc::SHN_MASK != 0 {
            admin.csts &= !csts::SHST_MASK;
        }
        if shutdown && old & cc::SHN_MASK == 0 {
            self.begin_shutdown();
        }
        if reset {
            super::wake_all(&self.runtime);
        }
        Outcome::status(Status::SUCCESS)
    }
}
