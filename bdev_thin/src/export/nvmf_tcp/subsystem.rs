//! Subsystems: an NQN, its settings (serial, model, allowed hosts, listeners, controller ID
//! range, limits), its namespaces (each a bdev held open) and its live controllers.
//!
//! Control-plane state behind mutexes that RPC methods, Connect and admin commands take; the
//! IO path never does. IO queue pairs notice namespace changes through
//! [`Subsystem::namespace_generation`], one relaxed load per poll, and only then lock to resync.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use super::controller::Controller;
use super::{ListenAddress, NvmfError};
use crate::bdev::{Bdev, BdevDescriptor};
use crate::limits;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Control-plane state is plain data; a panic elsewhere must not stop the target.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubsystemKind {
    Discovery,
    Nvme,
}

/// SPDK's defaults for `nvmf_create_subsystem`.
pub const DEFAULT_SERIAL_NUMBER: &str = "00000000000000000000";
pub const DEFAULT_MODEL_NUMBER: &str = "SPDK bdev Controller";
pub const DEFAULT_MAX_NAMESPACES: u32 = 32;
pub const DEFAULT_MIN_CNTLID: u16 = 1;
pub const DEFAULT_MAX_CNTLID: u16 = 0xFFEF;
pub const DEFAULT_DMRSL: u32 = 2_097_152;
pub const DEFAULT_WZSL: u8 = 12;

/// What `nvmf_create_subsystem` and the host and listener methods set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsystemSettings {
    pub serial_number: String,
    pub model_number: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    /// The largest NSID (Identify Controller NN).
    pub max_namespaces: u32,
    pub min_cntlid: u16,
    pub max_cntlid: u16,
    /// Dataset Management range size limit, logical blocks (0: none).
    pub dmrsl: u32,
    /// Write Zeroes size limit, a power of two of 4 KiB pages (0: none).
    pub wzsl: u8,
    pub listeners: Vec<ListenAddress>,
}

impl Default for SubsystemSettings {
    fn default() -> Self {
        SubsystemSettings {
            serial_number: DEFAULT_SERIAL_NUMBER.into(),
            model_number: DEFAULT_MODEL_NUMBER.into(),
            allow_any_host: false,
            hosts: Vec::new(),
            max_namespaces: DEFAULT_MAX_NAMESPACES,
            min_cntlid: DEFAULT_MIN_CNTLID,
            max_cntlid: DEFAULT_MAX_CNTLID,
            dmrsl: DEFAULT_DMRSL,
            wzsl: DEFAULT_WZSL,
            listeners: Vec::new(),
        }
    }
}

/// A namespace: a bdev held open (so it cannot be deleted under its hosts) and its identifiers.
pub struct Namespace {
    pub nsid: u32,
    descriptor: BdevDescriptor,
    pub uuid: Uuid,
    pub nguid: [u8; 16],
    pub eui64: Option<[u8; 8]>,
    /// The size hosts were last told, in blocks (the housekeeping poller compares).
    announced_blocks: AtomicU64,
}

impl Namespace {
    pub fn bdev(&self) -> &Arc<Bdev> {
        self.descriptor.bdev()
    }

    /// If the bdev's size changed since hosts were last told, records and returns true.
    pub fn take_resize(&self) -> bool {
        let now = self.bdev().info().num_blocks;
        self.announced_blocks.swap(now, Ordering::Relaxed) != now
    }
}

/// Optional identifiers of `nvmf_subsystem_add_ns`.
#[derive(Clone, Debug, Default)]
pub struct NamespaceIds {
    pub nsid: Option<u32>,
    pub uuid: Option<Uuid>,
    pub nguid: Option<[u8; 16]>,
    pub eui64: Option<[u8; 8]>,
}

struct ControllerTable {
    live: Vec<Arc<Controller>>,
    next_cntlid: u16,
}

/// One subsystem (or the discovery subsystem).
pub struct Subsystem {
    pub nqn: String,
    pub kind: SubsystemKind,
    settings: Mutex<SubsystemSettings>,
    namespaces: Mutex<Vec<Option<Arc<Namespace>>>>,
    namespace_generation: AtomicU64,
    controllers: Mutex<ControllerTable>,
    /// Set by `nvmf_delete_subsystem`: its controllers are torn down, new Connects refused.
    deleted: AtomicBool,
}

impl Subsystem {
    pub fn new(nqn: String, kind: SubsystemKind, settings: SubsystemSettings) -> Arc<Subsystem> {
        let first = settings.min_cntlid;
        Arc::new(Subsystem {
            nqn,
            kind,
            settings: Mutex::new(settings),
            namespaces: Mutex::new(Vec::new()),
            namespace_generation: AtomicU64::new(0),
            controllers: Mutex::new(ControllerTable { live: Vec::new(), next_cntlid: first }),
            deleted: AtomicBool::new(false),
        })
    }

    pub fn settings(&self) -> SubsystemSettings {
        lock(&self.settings).clone()
    }

    pub fn update_settings<R>(&self, change: impl FnOnce(&mut SubsystemSettings) -> R) -> R {
        change(&mut lock(&self.settings))
    }

    pub fn is_discovery(&self) -> bool {
        self.kind == SubsystemKind::Discovery
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    /// Whether `hostnqn` may connect (the discovery subsystem admits every host).
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        let settings = lock(&self.settings);
        self.is_discovery()
            || settings.allow_any_host
            || settings.hosts.iter().any(|h| h == hostnqn)
    }

    /// Whether a connection that came in on `address` may reach this subsystem: it must be one
    /// of its listeners; the discovery subsystem answers on every listener.
    pub fn listener_allowed(&self, address: &ListenAddress) -> bool {
        self.is_discovery() || lock(&self.settings).listeners.iter().any(|l| l.same_as(address))
    }

    /// Bumped on every namespace add or remove.
    pub fn namespace_generation(&self) -> u64 {
        self.namespace_generation.load(Ordering::Acquire)
    }

    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        let index = usize::try_from(nsid).ok()?.checked_sub(1)?;
        lock(&self.namespaces).get(index).cloned().flatten()
    }

    /// Every namespace, by NSID.
    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        lock(&self.namespaces).iter().flatten().cloned().collect()
    }

    /// The namespace table indexed by NSID - 1 (for a queue pair's resync).
    pub fn namespace_table(&self) -> Vec<Option<Arc<Namespace>>> {
        lock(&self.namespaces).clone()
    }

    /// Adds `bdev` as a namespace (opening it) with the lowest free NSID unless one is given.
    /// The UUID and NGUID default to the bdev's UUID, as SPDK's do.
    pub fn add_namespace(&self, bdev: &Arc<Bdev>, ids: NamespaceIds) -> Result<u32, NvmfError> {
        let max = lock(&self.settings).max_namespaces;
        let mut table = lock(&self.namespaces);
        let nsid = match ids.nsid {
            Some(nsid) if nsid == 0 || nsid > max => {
                return Err(NvmfError::InvalidNsid { nsid, max });
            }
            Some(nsid) => nsid,
            None => (1..=max)
                .find(|n| table.get(*n as usize - 1).is_none_or(Option::is_none))
                .ok_or(NvmfError::NamespaceLimit(max))?,
        };
        let index = nsid as usize - 1;
        if table.get(index).is_some_and(Option::is_some) {
            return Err(NvmfError::NamespaceExists(nsid));
        }
        if table.iter().flatten().any(|ns| Arc::ptr_eq(ns.bdev(), bdev)) {
            return Err(NvmfError::BdevInUse(bdev.name().to_string()));
        }
        let uuid = ids.uuid.unwrap_or_else(|| bdev.uuid());
        let descriptor = bdev.open()?;
        let namespace = Arc::new(Namespace {
            nsid,
            descriptor,
            uuid,
            nguid: ids.nguid.unwrap_or(*uuid.as_bytes()),
            eui64: ids.eui64,
            announced_blocks: AtomicU64::new(bdev.info().num_blocks),
        });
        if table.len() <= index {
            table.resize(index + 1, None);
        }
        table[index] = Some(namespace);
        self.namespace_generation.fetch_add(1, Ordering::AcqRel);
        Ok(nsid)
    }

    /// Removes a namespace; queue pairs drop their channels once their IO to it drained, and
    /// the bdev is closed with the last one.
    pub fn remove_namespace(&self, nsid: u32) -> Result<Arc<Namespace>, NvmfError> {
        let mut table = lock(&self.namespaces);
        let slot = usize::try_from(nsid)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|index| table.get_mut(index))
            .ok_or(NvmfError::NamespaceNotFound(nsid))?;
        let namespace = slot.take().ok_or(NvmfError::NamespaceNotFound(nsid))?;
        while table.last().is_some_and(Option::is_none) {
            table.pop();
        }
        self.namespace_generation.fetch_add(1, Ordering::AcqRel);
        Ok(namespace)
    }

    /// Drops every namespace (subsystem deletion).
    pub fn clear_namespaces(&self) {
        lock(&self.namespaces).clear();
        self.namespace_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Registers a new controller with the next free controller ID of the subsystem's range.
    pub fn add_controller(
        &self,
        make: impl FnOnce(u16) -> Arc<Controller>,
    ) -> Result<Arc<Controller>, NvmfError> {
        let (min, max) = {
            let settings = lock(&self.settings);
            (settings.min_cntlid, settings.max_cntlid)
        };
        let mut table = lock(&self.controllers);
        if table.live.len() >= limits::NVMF_CONTROLLERS_MAX {
            return Err(NvmfError::TooMany("controllers"));
        }
        let span = u32::from(max - min) + 1;
        for _ in 0..span {
            let candidate =
                if (min..=max).contains(&table.next_cntlid) { table.next_cntlid } else { min };
            table.next_cntlid = if candidate == max { min } else { candidate + 1 };
            if !table.live.iter().any(|c| c.cntlid == candidate) {
                let controller = make(candidate);
                table.live.push(Arc::clone(&controller));
                return Ok(controller);
            }
        }
        Err(NvmfError::TooMany("controller IDs"))
    }

    pub fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        lock(&self.controllers).live.iter().find(|c| c.cntlid == cntlid).cloned()
    }

    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        lock(&self.controllers).live.clone()
    }

    pub fn remove_controller(&self, cntlid: u16) {
        lock(&self.controllers).live.retain(|c| c.cntlid != cntlid);
    }
}

/// Parses a hex NGUID (32 digits) or EUI-64 (16 digits), as SPDK's RPC takes them.
pub fn parse_hex_id<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (index, pair) in digits.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[index] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Uppercase hex, as SPDK writes NGUIDs and EUI-64s.
pub fn hex_id(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_round_trip() {
        let nguid: [u8; 16] = parse_hex_id("DDA5FD37D960443E96D2C0656ABF257A").unwrap();
        assert_eq!(nguid[0], 0xDD);
        assert_eq!(hex_id(&nguid), "DDA5FD37D960443E96D2C0656ABF257A");
        assert!(parse_hex_id::<8>("0011").is_none());
        assert!(parse_hex_id::<8>("00112233445566zz").is_none());
    }
}
