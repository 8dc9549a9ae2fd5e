//! The discovery log (log page 70h): one entry per listener of every NVMe subsystem the host
//! may connect to, and one per listener added to the discovery subsystem itself (subtype
//! "current discovery subsystem"), as SPDK builds it. `nvme discover` reads it.

use super::NvmfShared;
use super::subsystem::SubsystemKind;
use crate::nvme::log::{
    DiscoveryEntry, TREQ_SECURE_CHANNEL_NOT_REQUIRED, TRTYPE_TCP, encode_discovery_log, subtype,
};

/// The discovery log as `hostnqn` sees it.
pub(super) fn discovery_log(shared: &NvmfShared, hostnqn: &str) -> Vec<u8> {
    let asqsz = shared.transport().map_or(0, |t| t.max_aq_depth.min(u32::from(u16::MAX)) as u16);
    let mut entries = Vec::new();
    let mut port_ids: Vec<super::ListenAddress> = Vec::new();
    for subsystem in shared.subsystems() {
        if subsystem.is_deleted() || !subsystem.host_allowed(hostnqn) {
            continue;
        }
        for listener in subsystem.settings().listeners {
            let port_id = match port_ids.iter().position(|l| l.same_as(&listener)) {
                Some(index) => index,
                None => {
                    port_ids.push(listener.clone());
                    port_ids.len() - 1
                }
            };
            entries.push(DiscoveryEntry {
                trtype: TRTYPE_TCP,
                adrfam: listener.adrfam_code(),
                subtype: match subsystem.kind {
                    SubsystemKind::Nvme => subtype::NVME,
                    SubsystemKind::Discovery => subtype::CURRENT_DISCOVERY,
                },
                treq: TREQ_SECURE_CHANNEL_NOT_REQUIRED,
                port_id: port_id as u16, // listeners are bounded far below 65536
                cntlid: crate::nvme::fabrics::CNTLID_DYNAMIC,
                asqsz,
                trsvcid: listener.trsvcid,
                subnqn: subsystem.nqn.clone(),
                traddr: listener.traddr,
            });
        }
    }
    encode_discovery_log(shared.discovery_generation(), &entries)
}
