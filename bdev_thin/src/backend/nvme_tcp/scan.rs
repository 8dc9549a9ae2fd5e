//! Finding a controller's namespaces on its admin queue: the active namespace list (CNS 02h,
//! in pages of 1024), then Identify Namespace (CNS 00h) and the namespace identification
//! descriptors (CNS 03h) of each, one command at a time. At an association the result becomes
//! the controller's namespaces (compared with the old ones after a reconnect); after an AER
//! it is a rescan: sizes are updated in place, new namespaces added, missing ones removed.
//!
//! A namespace we cannot serve (metadata in its LBA format, a block size outside 512 B to
//! 64 KiB) is skipped with a log line, never trusted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use uuid::Uuid;

use super::admin::{AdminOp, AdminPoller};
use super::queue::{Finished, LinkError};
use super::{NvmeNamespace, lock};
use crate::limits;
use crate::nvme::host;
use crate::nvme::identify::{
    self, ACTIVE_NAMESPACES_PER_PAGE, IdentifyNamespace, NamespaceId, decode_active_namespaces,
    decode_namespace_descriptors,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum ScanPurpose {
    /// Part of an association (the first, or a reconnect).
    #[default]
    Associate,
    /// Asked for by a namespace notice while live.
    Rescan,
}

/// A namespace as Identify described it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Found {
    nsid: u32,
    block_size_bytes: u32,
    num_blocks: u64,
    uuid: Uuid,
    reads_zeroes: bool,
}

#[derive(Debug, Default)]
pub(super) struct Scan {
    purpose: ScanPurpose,
    nsids: Vec<u32>,
    index: usize,
    current: Option<IdentifyNamespace>,
    found: Vec<Found>,
}

impl AdminPoller {
    pub(super) fn begin_scan(&mut self, purpose: ScanPurpose, now: u64) {
        self.scan = Scan { purpose, ..Scan::default() };
        self.list_namespaces_after(0, now);
    }

    fn list_namespaces_after(&mut self, after: u32, now: u64) {
        let command = host::identify(identify::cns::ACTIVE_NAMESPACES, after, identify::CSI_NVM);
        self.issue(AdminOp::ActiveNamespaces { after }, command, now);
    }

    /// Identify Namespace of the next NSID, or the end of the scan.
    fn identify_next(&mut self, now: u64) {
        match self.scan.nsids.get(self.scan.index) {
            Some(&nsid) => {
                let command = host::identify(identify::cns::NAMESPACE, nsid, identify::CSI_NVM);
                self.issue(AdminOp::IdentifyNamespace { nsid }, command, now);
            }
            None => self.finish_scan(now),
        }
    }

    fn skip_namespace(&mut self, nsid: u32, why: &str, now: u64) {
        eprintln!("nvme {}: namespace {nsid} skipped: {why}", self.controller.name());
        self.scan.index += 1;
        self.identify_next(now);
    }

    pub(super) fn scan_step(&mut self, op: AdminOp, answer: Finished, now: u64) {
        match op {
            AdminOp::ActiveNamespaces { after } => {
                if !answer.status.is_success() {
                    let error = format!("Identify active namespaces: {:?}", answer.status);
                    return self.lose(LinkError::Protocol(error), now);
                }
                let page = decode_active_namespaces(self.store.page_bytes());
                let mut last = after;
                for nsid in page.iter().copied() {
                    // The list is ascending; anything else is not to be trusted.
                    if nsid <= last || self.scan.nsids.len() >= limits::NVME_NAMESPACES_MAX {
                        break;
                    }
                    self.scan.nsids.push(nsid);
                    last = nsid;
                }
                let full_page = page.len() == ACTIVE_NAMESPACES_PER_PAGE;
                if full_page && last > after && self.scan.nsids.len() < limits::NVME_NAMESPACES_MAX
                {
                    self.list_namespaces_after(last, now);
                } else {
                    self.identify_next(now);
                }
            }
            AdminOp::IdentifyNamespace { nsid } => {
                if !answer.status.is_success() {
                    return self.skip_namespace(nsid, "Identify Namespace failed", now);
                }
                let page = self.store.page_bytes();
                let data = IdentifyNamespace::decode(page);
                let format = usize::from(page[26] & 0xF);
                let metadata_bytes =
                    u16::from_le_bytes([page[128 + 4 * format], page[129 + 4 * format]]);
                if data.size_blocks == 0 {
                    return self.skip_namespace(nsid, "inactive (size 0)", now);
                }
                if metadata_bytes != 0 || page[26] & 0x10 != 0 {
                    return self.skip_namespace(nsid, "its LBA format has metadata", now);
                }
                if !(9..=16).contains(&data.lba_data_size_log2) {
                    return self.skip_namespace(nsid, "block size outside 512 B..64 KiB", now);
                }
                self.scan.current = Some(data);
                let command =
                    host::identify(identify::cns::NAMESPACE_DESCRIPTORS, nsid, identify::CSI_NVM);
                self.issue(AdminOp::Descriptors { nsid }, command, now);
            }
            AdminOp::Descriptors { nsid } => {
                let ids = if answer.status.is_success() {
                    decode_namespace_descriptors(self.store.page_bytes())
                } else {
                    Vec::new()
                };
                let Some(data) = self.scan.current.take() else {
                    return self.skip_namespace(nsid, "no Identify data", now);
                };
                let uuid = namespace_uuid(&ids, &data).unwrap_or_else(|| {
                    eprintln!(
                        "nvme {}: namespace {nsid} has no UUID, NGUID or EUI64; its bdev gets \
                         a random UUID (examine cannot pair it across restarts)",
                        self.controller.name()
                    );
                    Uuid::new_v4()
                });
                self.scan.found.push(Found {
                    nsid,
                    block_size_bytes: 1 << data.lba_data_size_log2,
                    num_blocks: data.size_blocks,
                    uuid,
                    reads_zeroes: data.dlfeat & 0x7 == identify::DLFEAT_READS_ZEROES,
                });
                self.scan.index += 1;
                self.identify_next(now);
            }
            _ => {}
        }
    }

    /// Applies what the scan found to the controller's namespaces.
    fn finish_scan(&mut self, now: u64) {
        let found = std::mem::take(&mut self.scan.found);
        let purpose = self.scan.purpose;
        let events = Arc::clone(&self.controller.events);
        let mut added = Vec::new();
        let mut removed = Vec::new();
        {
            let mut namespaces = lock(&self.controller.namespaces);
            namespaces.retain(|namespace| {
                let keep = found.iter().any(|f| {
                    f.nsid == namespace.nsid
                        && f.uuid == namespace.uuid
                        && f.block_size_bytes == namespace.block_size_bytes
                });
                if !keep {
                    namespace.mark_removed();
                    removed.push(Arc::clone(namespace));
                }
                keep
            });
            for f in &found {
                if let Some(namespace) = namespaces.iter().find(|n| n.nsid == f.nsid) {
                    if namespace.num_blocks() != f.num_blocks {
                        eprintln!(
                            "nvme {}: namespace {} is now {} blocks (was {})",
                            self.controller.name(),
                            f.nsid,
                            f.num_blocks,
                            namespace.num_blocks()
                        );
                        namespace.set_num_blocks(f.num_blocks);
                    }
                    continue;
                }
                let namespace = Arc::new(NvmeNamespace {
                    controller: Arc::clone(&self.controller),
                    nsid: f.nsid,
                    block_size_bytes: f.block_size_bytes,
                    num_blocks: AtomicU64::new(f.num_blocks),
                    uuid: f.uuid,
                    deallocate_reads_zeroes: f.reads_zeroes,
                    removed: AtomicBool::new(false),
                });
                namespaces.push(Arc::clone(&namespace));
                added.push(namespace);
            }
            namespaces.sort_by_key(|n| n.nsid);
        }
        let first = self.controller.state() == super::ControllerState::Connecting;
        if purpose == ScanPurpose::Associate {
            // The bdevs of the first association are registered by `attached`.
            self.go_live(now);
            if first {
                added.clear();
            }
        } else {
            self.back_to_live();
        }
        for namespace in &removed {
            events.namespace_removed(namespace);
        }
        for namespace in &added {
            events.namespace_added(namespace);
        }
    }
}

/// The UUID a namespace's bdev takes: its UUID descriptor, else its NGUID, else its EUI64.
fn namespace_uuid(ids: &[NamespaceId], data: &IdentifyNamespace) -> Option<Uuid> {
    let described = ids.iter().find_map(|id| match id {
        NamespaceId::Uuid(bytes) => Some(Uuid::from_bytes(*bytes)),
        _ => None,
    });
    let nguid = ids
        .iter()
        .find_map(|id| match id {
            NamespaceId::Nguid(bytes) => Some(*bytes),
            _ => None,
        })
        .or(Some(data.nguid))
        .filter(|bytes| bytes.iter().any(|&b| b != 0))
        .map(Uuid::from_bytes);
    let eui64 = Some(data.eui64).filter(|bytes| bytes.iter().any(|&b| b != 0)).map(|eui| {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&eui);
        Uuid::from_bytes(bytes)
    });
    described.filter(|u| !u.is_nil()).or(nguid).or(eui64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_prefers_the_descriptor_then_nguid_then_eui64() {
        let mut data = IdentifyNamespace { nguid: [2; 16], eui64: [3; 8], ..Default::default() };
        let ids = [NamespaceId::Nguid([4; 16]), NamespaceId::Uuid([1; 16])];
        assert_eq!(namespace_uuid(&ids, &data), Some(Uuid::from_bytes([1; 16])));
        assert_eq!(namespace_uuid(&ids[..1], &data), Some(Uuid::from_bytes([4; 16])));
        assert_eq!(namespace_uuid(&[], &data), Some(Uuid::from_bytes([2; 16])));
        data.nguid = [0; 16];
        let mut eui = [0u8; 16];
        eui[..8].copy_from_slice(&[3; 8]);
        assert_eq!(namespace_uuid(&[], &data), Some(Uuid::from_bytes(eui)));
        data.eui64 = [0; 8];
        assert_eq!(namespace_uuid(&[NamespaceId::Uuid([0; 16])], &data), None);
    }
}
