//! What Identify and Get Log Page return: the controller as the transport options and the
//! subsystem's settings describe it, each namespace as its bdev does (size, block size,
//! deallocate behaviour, preferred granularities from `Device::io_hints`), the NVM command
//! set's limits (DMRSL and WZSL from the subsystem and the bdevs), and the log pages. Admin
//! path only: pages are built on demand and copied into the command's buffer.

use std::sync::Arc;

use super::qpair::{Connection, Outcome, Queue};
use super::subsystem::{Namespace, Subsystem};
use crate::host::IoKind;
use crate::nvme::command::{NSID_ALL, Status};
use crate::nvme::fabrics::version;
use crate::nvme::identify::{
    CONTROLLER_TYPE_DISCOVERY, CONTROLLER_TYPE_IO, CSI_NVM, ControllerIdentity, ControllerLimits,
    ControllerSupport, DLFEAT_READS_ZEROES, DLFEAT_WRITE_ZEROES_DEALLOCATES, IdentifyController,
    IdentifyControllerNvm, IdentifyNamespace, NamespaceGranularity, NamespaceId, SGLS_SUPPORTED,
    VWC_PRESENT_NO_BROADCAST, cns, encode_active_namespaces, encode_namespace_descriptors, oaes,
    oncs,
};
use crate::nvme::log::{
    ERROR_ENTRY_BYTES, SmartLog, encode_changed_namespaces, encode_firmware_slot, log_id,
};

/// The NVMe version controllers report: 1.3, as Linux's own target does (no 2.0 duties).
pub(super) const NVME_VERSION: u32 = version(1, 3, 0);

/// ONCS bits every namespace of `subsystem` can honour (both when it has none yet).
fn optional_commands(subsystem: &Subsystem) -> u16 {
    let namespaces = subsystem.namespaces();
    let all = |kind| namespaces.iter().all(|ns| ns.bdev().device().supports(kind));
    let mut bits = 0;
    if all(IoKind::Unmap) {
        bits |= oncs::DATASET_MANAGEMENT;
    }
    if all(IoKind::WriteZeroes) {
        bits |= oncs::WRITE_ZEROES;
    }
    bits
}

/// Identify Namespace for `namespace`.
pub(super) fn identify_namespace(namespace: &Namespace) -> IdentifyNamespace {
    let device = namespace.bdev().device();
    let info = device.info();
    let mut dlfeat = 0;
    if info.unmap_reads_zeroes && device.supports(IoKind::Unmap) {
        dlfeat |= DLFEAT_READS_ZEROES;
    }
    if device.supports(IoKind::WriteZeroes) && device.supports(IoKind::Unmap) {
        dlfeat |= DLFEAT_WRITE_ZEROES_DEALLOCATES;
    }
    let hints = device.io_hints();
    IdentifyNamespace {
        size_blocks: info.num_blocks,
        capacity_blocks: info.num_blocks,
        utilization_blocks: info.num_blocks,
        lba_data_size_log2: info.block_size_bytes.max(1).ilog2() as u8,
        dlfeat,
        nmic: 0,
        granularity: NamespaceGranularity {
            write_granularity_blocks: hints.write_granularity_blocks,
            write_alignment_blocks: hints.write_alignment_blocks,
            deallocate_granularity_blocks: hints.unmap_granularity_blocks,
            deallocate_alignment_blocks: hints.unmap_alignment_blocks,
            optimal_write_blocks: hints.optimal_write_blocks,
        },
        nguid: namespace.nguid,
        eui64: namespace.eui64.unwrap_or_default(),
    }
}

impl Connection {
    fn admin_controller(&self) -> Option<Arc<super::Controller>> {
        match &self.queue {
            Queue::Admin(admin) => Some(Arc::clone(&admin.controller)),
            _ => None,
        }
    }

    fn identify_controller(&self, controller: &super::Controller) -> IdentifyController {
        let subsystem = &controller.subsystem;
        let settings = subsystem.settings();
        let discovery = subsystem.is_discovery();
        let options = &self.options;
        IdentifyController {
            identity: ControllerIdentity {
                vid: 0,
                ssvid: 0,
                serial: settings.serial_number,
                model: settings.model_number,
                firmware: crate::VERSION.chars().take(8).collect(),
                ieee_oui: [0; 3],
                subnqn: subsystem.nqn.clone(),
            },
            support: ControllerSupport {
                cmic: 0,
                oaes: if discovery {
                    oaes::DISCOVERY_LOG_CHANGE
                } else {
                    oaes::NAMESPACE_ATTRIBUTE
                },
                ctratt: 0,
                oacs: 0,
                acl: 3,
                aerl: (crate::limits::NVMF_ASYNC_EVENTS_MAX - 1) as u8,
                frmw: 0x3, // slot 1 read-only, one slot
                lpa: 0,
                elpe: 0,
                kas: options.kas as u16, // validated to fit
                oncs: if discovery { 0 } else { optional_commands(subsystem) },
                fuses: 0,
                vwc: if discovery { 0 } else { VWC_PRESENT_NO_BROADCAST },
                sgls: SGLS_SUPPORTED,
            },
            limits: ControllerLimits {
                mdts: options.mdts(),
                rab: 6,
                sqes: 0x66,
                cqes: 0x44,
                maxcmd: options.max_queue_depth.min(u32::from(u16::MAX)) as u16,
                nn: if discovery { 0 } else { settings.max_namespaces },
                wctemp: 0x157,
                cctemp: 0x175,
                ioccsz: options.ioccsz(),
                iorcsz: 1,
                icdoff: 0,
                msdbd: 1,
            },
            cntlid: controller.cntlid,
            version: NVME_VERSION,
            controller_type: if discovery { CONTROLLER_TYPE_DISCOVERY } else { CONTROLLER_TYPE_IO },
        }
    }

    /// The NVM command set's controller limits: DSM range size from the subsystem's `dmrsl`
    /// and every namespace's unmap limit; Write Zeroes from `wzsl`.
    fn identify_controller_nvm(subsystem: &Subsystem) -> IdentifyControllerNvm {
        let settings = subsystem.settings();
        let device_limit = subsystem
            .namespaces()
            .iter()
            .map(|ns| ns.bdev().info().max_unmap_blocks)
            .filter(|&blocks| blocks > 0)
            .min()
            .unwrap_or(u64::MAX);
        let dmrsl = u64::from(settings.dmrsl).min(device_limit).min(u64::from(u32::MAX)) as u32;
        IdentifyControllerNvm {
            vsl: 0,
            wzsl: settings.wzsl,
            wusl: 0,
            // Every one of the 256 ranges NR allows is processed: no limit to report.
            dmrl: 0,
            dmrsl,
            dmsl: 0,
        }
    }

    pub(super) fn identify(&mut self, index: u16) -> Outcome {
        let command = self.slots.get(index).command;
        let Some(controller) = self.admin_controller() else {
            return Outcome::status(Status::INTERNAL_ERROR);
        };
        let subsystem = Arc::clone(&controller.subsystem);
        let discovery = subsystem.is_discovery();
        let max_nsid = subsystem.settings().max_namespaces;
        let namespace_page = |nsid: u32| -> Result<Option<Arc<Namespace>>, Status> {
            if nsid == 0 || nsid == NSID_ALL || nsid > max_nsid {
                return Err(Status::INVALID_NAMESPACE);
            }
            Ok(subsystem.namespace(nsid))
        };
        if discovery && command.cns() != cns::CONTROLLER {
            return Outcome::status(Status::INVALID_FIELD);
        }
        let page = match command.cns() {
            cns::CONTROLLER => self.identify_controller(&controller).encode(),
            cns::NAMESPACE => match namespace_page(command.nsid) {
                Err(status) => return Outcome::status(status),
                // An inactive NSID in range: a zeroed page.
                Ok(None) => Box::new([0u8; 4096]),
                Ok(Some(namespace)) => identify_namespace(&namespace).encode(),
            },
            cns::ACTIVE_NAMESPACES | cns::ACTIVE_NAMESPACES_COMMAND_SET => {
                if command.cns() == cns::ACTIVE_NAMESPACES_COMMAND_SET && command.csi() != CSI_NVM {
                    return Outcome::status(Status::INVALID_FIELD);
                }
                if command.nsid >= 0xFFFF_FFFE {
                    return Outcome::status(Status::INVALID_NAMESPACE);
                }
                let nsids = subsystem.namespaces().iter().map(|ns| ns.nsid).collect::<Vec<_>>();
                encode_active_namespaces(nsids, command.nsid)
            }
            cns::NAMESPACE_DESCRIPTORS => match namespace_page(command.nsid) {
                Ok(Some(namespace)) => {
                    let mut ids = Vec::with_capacity(4);
                    if let Some(eui64) = namespace.eui64 {
                        ids.push(NamespaceId::Eui64(eui64));
                    }
                    ids.push(NamespaceId::Nguid(namespace.nguid));
                    ids.push(NamespaceId::Uuid(*namespace.uuid.as_bytes()));
                    ids.push(NamespaceId::CommandSet(CSI_NVM));
                    encode_namespace_descriptors(&ids)
                }
                _ => return Outcome::status(Status::INVALID_NAMESPACE),
            },
            cns::NAMESPACE_COMMAND_SET => {
                if command.csi() != CSI_NVM {
                    return Outcome::status(Status::INVALID_FIELD);
                }
                match namespace_page(command.nsid) {
                    Err(status) => return Outcome::status(status),
                    // The NVM command set's namespace structure: nothing beyond the defaults.
                    Ok(_) => Box::new([0u8; 4096]),
                }
            }
            cns::CONTROLLER_COMMAND_SET => {
                if command.csi() != CSI_NVM {
                    return Outcome::status(Status::INVALID_FIELD);
                }
                Self::identify_controller_nvm(&subsystem).encode()
            }
            _ => return Outcome::status(Status::INVALID_FIELD),
        };
        self.reply_data(index, &page[..])
    }

    pub(super) fn get_log_page(&mut self, index: u16) -> Outcome {
        let command = self.slots.get(index).command;
        let Some(controller) = self.admin_controller() else {
            return Outcome::status(Status::INTERNAL_ERROR);
        };
        let offset = command.log_offset_bytes();
        if !offset.is_multiple_of(4) {
            return Outcome::status(Status::INVALID_FIELD);
        }
        let discovery = controller.subsystem.is_discovery();
        let page: Vec<u8> = match (command.log_page_id(), discovery) {
            (log_id::DISCOVERY, true) => {
                super::discovery::discovery_log(&self.shared, &controller.host_nqn)
            }
            (log_id::ERROR, false) => vec![0u8; ERROR_ENTRY_BYTES],
            (log_id::SMART, false) => self.smart_log(&controller.subsystem).encode().to_vec(),
            (log_id::FIRMWARE_SLOT, false) => {
                let revision: String = crate::VERSION.chars().take(8).collect();
                encode_firmware_slot(&revision).to_vec()
            }
            (log_id::CHANGED_NAMESPACES, false) => {
                let nsids = controller.read_changed_namespaces(command.log_retain_event());
                encode_changed_namespaces(&nsids).to_vec()
            }
            _ => return Outcome::status(Status::INVALID_FIELD),
        };
        let Ok(offset) = usize::try_from(offset) else {
            return Outcome::status(Status::INVALID_FIELD);
        };
        if offset > page.len() || (offset == page.len() && offset > 0) {
            return Outcome::status(Status::INVALID_FIELD);
        }
        let asked = usize::try_from(command.log_length_bytes()).unwrap_or(usize::MAX);
        let window = &page[offset..page.len().min(offset.saturating_add(asked))];
        match self.reply_data(index, window) {
            Outcome::Complete { status, dw0, dw1, data_bytes } => Outcome::Complete {
                status,
                dw0,
                dw1,
                data_bytes: data_bytes.min(u32::try_from(asked).unwrap_or(u32::MAX)),
            },
            other => other,
        }
    }

    /// SMART / health: IO counted by the namespaces' bdevs.
    fn smart_log(&self, subsystem: &Subsystem) -> SmartLog {
        let mut smart = SmartLog {
            available_spare_percent: 100,
            spare_threshold_percent: 10,
            ..SmartLog::default()
        };
        for namespace in subsystem.namespaces() {
            let stats = namespace.bdev().iostat();
            smart.data_units_read += stats.read.bytes.div_ceil(512_000);
            smart.data_units_written += stats.write.bytes.div_ceil(512_000);
            smart.host_read_commands += stats.read.ops;
            smart.host_write_commands += stats.write.ops;
            smart.media_errors += stats.failed;
        }
        smart
    }
}
