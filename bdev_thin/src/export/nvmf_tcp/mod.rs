//! The NVMe-oF/TCP target: subsystems of namespaces (any bdev), served to hosts such as the
//! Linux kernel's `nvme-tcp` over NVMe/TCP, configured with SPDK's `nvmf_*` methods.
//!
//! Who runs what. [`NvmfTarget`] lives in the `Target`: RPC methods create the transport,
//! subsystems, namespaces, hosts and listeners (control plane, behind mutexes). Each listener
//! is a poller on the first core that accepts connections and deals them round-robin to every
//! core, where each becomes a queue pair poller (`qpair`): it negotiates (ICReq), takes
//! Fabrics Connect for the admin queue or an IO queue, then serves commands, submitting IO to
//! bdev channels it opened on its own core. No thread per connection; sockets are the
//! reactors' wake sources. A controller (`controller`) is what the queues of one association
//! share across cores. A housekeeping poller (`housekeeping`) announces namespace resizes
//! and ends controllers whose keep alive timer expired.
//!
//! Admission (`crate::admission`, shared with the RPC and NBD servers): at most
//! `NVMF_CONNECTIONS_MAX` connections; one that sends no ICReq within the handshake timeout is
//! closed, and at the cap the one waiting longest for its ICReq makes room for a newcomer.
//!
//! Bounds (limits.rs): a queue pair holds at most `max_queue_depth` commands, each in a slot,
//! with its data in a piece of the connection's arena; a command that finds no room waits and
//! the connection stops reading (back-pressure through TCP). Input never panics: malformed PDUs
//! end the connection with a C2HTermReq naming the fault, bad commands get an NVMe status, and
//! neither touches another connection or an acknowledged write. Namespaces hold their bdev
//! open (`Bdev::open`), so it cannot be deleted while exported (-16).

mod admin;
mod controller;
mod discovery;
mod fabrics;
mod housekeeping;
mod io;
mod listener;
pub mod options;
mod output;
mod pages;
mod qpair;
mod receive;
mod slot;
pub mod subsystem;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::admission::{Admission, ConnectionTimeouts};
use crate::bdev::{Bdev, BdevError};
use crate::nvme::DISCOVERY_NQN;
use crate::runtime::{ReactorWaker, RuntimeHandle};
use crate::{limits, nvme};
pub use controller::{Controller, QueueInfo};
use listener::Listener;
pub use options::{OptionError, TransportOptions};
pub use subsystem::{NamespaceIds, Subsystem, SubsystemKind, SubsystemSettings};

/// Errors of the target's control plane (mapped to JSON-RPC errors in `rpc/methods/nvmf.rs`).
#[derive(Debug, thiserror::Error)]
pub enum NvmfError {
    #[error("transport TCP already exists")]
    TransportExists,
    #[error("transport {0} not found (create it with nvmf_create_transport)")]
    NoTransport(String),
    #[error("trtype: {0} is not a transport of this target (only TCP)")]
    Trtype(String),
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("Subsystem with NQN '{0}' already exists")]
    SubsystemExists(String),
    #[error("Subsystem with NQN '{0}' not found")]
    SubsystemNotFound(String),
    #[error("nqn: '{0}' is not a valid NQN")]
    InvalidNqn(String),
    #[error("the discovery subsystem cannot be changed this way")]
    Discovery,
    #[error("nsid {nsid} is outside 1..={max} (max_namespaces)")]
    InvalidNsid { nsid: u32, max: u32 },
    #[error("namespace {0} already exists")]
    NamespaceExists(u32),
    #[error("namespace {0} not found")]
    NamespaceNotFound(u32),
    #[error("no free NSID (max_namespaces {0})")]
    NamespaceLimit(u32),
    #[error("bdev {0} is already a namespace of this subsystem")]
    BdevInUse(String),
    #[error("host {0} already allowed")]
    HostExists(String),
    #[error("host {0} not found")]
    HostNotFound(String),
    #[error("listener {0} already exists")]
    ListenerExists(String),
    #[error("listener {0} not found")]
    ListenerNotFound(String),
    #[error("{0}: not an IP address this target can listen on")]
    Address(String),
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("{0} is not supported by this target")]
    Unsupported(String),
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
    #[error("too many {0}")]
    TooMany(&'static str),
    #[error("the runtime is stopping")]
    Stopping,
    #[error(transparent)]
    Bdev(#[from] BdevError),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A transport address as SPDK's RPC names it (`listen_address`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddress {
    /// "IPv4" or "IPv6", SPDK's spelling.
    pub adrfam: String,
    pub traddr: String,
    pub trsvcid: String,
}

impl ListenAddress {
    /// Same listener: address family (case-insensitive), address and service ID.
    pub fn same_as(&self, other: &ListenAddress) -> bool {
        self.adrfam.eq_ignore_ascii_case(&other.adrfam)
            && self.traddr == other.traddr
            && self.trsvcid == other.trsvcid
    }

    pub fn socket_address(&self) -> Result<SocketAddr, NvmfError> {
        let ip: IpAddr =
            self.traddr.parse().map_err(|_| NvmfError::Address(self.traddr.clone()))?;
        let port: u16 =
            self.trsvcid.parse().map_err(|_| NvmfError::Address(self.trsvcid.clone()))?;
        Ok(SocketAddr::new(ip, port))
    }

    /// The discovery log's address family code.
    pub fn adrfam_code(&self) -> u8 {
        if self.adrfam.eq_ignore_ascii_case("ipv6") {
            nvme::log::ADRFAM_IPV6
        } else {
            nvme::log::ADRFAM_IPV4
        }
    }
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TCP {} {}:{}", self.adrfam, self.traddr, self.trsvcid)
    }
}

/// State shared by the target, its listeners, its connections and the housekeeping poller.
pub(crate) struct NvmfShared {
    transport: Mutex<Option<TransportOptions>>,
    /// The discovery subsystem first, then the NVMe subsystems in creation order.
    subsystems: Mutex<Vec<Arc<Subsystem>>>,
    listeners: Mutex<Vec<Arc<Listener>>>,
    /// The discovery log's generation counter: bumped on every change hosts can see.
    discovery_generation: AtomicU64,
    /// The cap on connections and the deadline for their ICReq.
    pub(crate) admission: Arc<Admission<ReactorWaker>>,
    /// Set when the target stops serving (the runtime stops): connections finish and close.
    stopping: AtomicBool,
}

impl NvmfShared {
    pub(crate) fn transport(&self) -> Option<TransportOptions> {
        lock(&self.transport).clone()
    }

    pub(crate) fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        lock(&self.subsystems).iter().find(|s| s.nqn == nqn).cloned()
    }

    pub(crate) fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        lock(&self.subsystems).clone()
    }

    pub(crate) fn discovery_generation(&self) -> u64 {
        self.discovery_generation.load(Ordering::Acquire)
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}

/// The NVMe-oF target of a `Target`.
pub struct NvmfTarget {
    shared: Arc<NvmfShared>,
}

impl NvmfTarget {
    /// A target whose listeners close connections that send no ICReq within
    /// `timeouts.handshake_ms`.
    pub fn new(timeouts: ConnectionTimeouts) -> Self {
        let discovery = Subsystem::new(
            DISCOVERY_NQN.to_string(),
            SubsystemKind::Discovery,
            SubsystemSettings { allow_any_host: true, ..SubsystemSettings::default() },
        );
        NvmfTarget {
            shared: Arc::new(NvmfShared {
                transport: Mutex::new(None),
                subsystems: Mutex::new(vec![discovery]),
                listeners: Mutex::new(Vec::new()),
                discovery_generation: AtomicU64::new(0),
                admission: Admission::new("nvmf", limits::NVMF_CONNECTIONS_MAX, timeouts),
                stopping: AtomicBool::new(false),
            }),
        }
    }
}

/// Whether `nqn` is an NQN SPDK would take: `nqn.yyyy-mm.reverse.domain:...` or a UUID NQN,
/// printable, at most 223 bytes.
pub fn valid_nqn(nqn: &str) -> bool {
    let well_formed = nqn.len() <= nvme::NQN_BYTES_MAX
        && nqn.bytes().all(|b| b.is_ascii_graphic())
        && nqn.starts_with("nqn.");
    let dated = nqn.len() > 12
        && nqn.as_bytes()[4..8].iter().all(u8::is_ascii_digit)
        && nqn.as_bytes()[8] == b'-'
        && nqn.as_bytes()[9..11].iter().all(u8::is_ascii_digit)
        && nqn.as_bytes()[11] == b'.';
    well_formed && (dated || nqn.starts_with("nqn.2014-08.org.nvmexpress:uuid:"))
}

impl NvmfTarget {
    /// `nvmf_create_transport`: the one TCP transport; starts the housekeeping poller.
    pub fn create_transport(
        &self,
        runtime: &RuntimeHandle,
        options: TransportOptions,
    ) -> Result<(), NvmfError> {
        options.validate()?;
        let mut transport = lock(&self.shared.transport);
        if transport.is_some() {
            return Err(NvmfError::TransportExists);
        }
        housekeeping::start(runtime, Arc::clone(&self.shared)).map_err(|_| NvmfError::Stopping)?;
        *transport = Some(options);
        Ok(())
    }

    pub fn transport(&self) -> Option<TransportOptions> {
        self.shared.transport()
    }

    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.shared.subsystems()
    }

    pub fn subsystem(&self, nqn: &str) -> Result<Arc<Subsystem>, NvmfError> {
        self.shared.subsystem(nqn).ok_or_else(|| NvmfError::SubsystemNotFound(nqn.to_string()))
    }

    fn nvme_subsystem(&self, nqn: &str) -> Result<Arc<Subsystem>, NvmfError> {
        let subsystem = self.subsystem(nqn)?;
        if subsystem.is_discovery() {
            return Err(NvmfError::Discovery);
        }
        Ok(subsystem)
    }

    /// `nvmf_create_subsystem`.
    pub fn create_subsystem(
        &self,
        nqn: &str,
        settings: SubsystemSettings,
    ) -> Result<(), NvmfError> {
        if !valid_nqn(nqn) {
            return Err(NvmfError::InvalidNqn(nqn.to_string()));
        }
        let mut subsystems = lock(&self.shared.subsystems);
        if subsystems.iter().any(|s| s.nqn == nqn) {
            return Err(NvmfError::SubsystemExists(nqn.to_string()));
        }
        if subsystems.len() > limits::NVMF_SUBSYSTEMS_MAX {
            return Err(NvmfError::TooMany("subsystems"));
        }
        subsystems.push(Subsystem::new(nqn.to_string(), SubsystemKind::Nvme, settings));
        drop(subsystems);
        self.discovery_changed();
        Ok(())
    }

    /// `nvmf_delete_subsystem`: its controllers end, its namespaces close once their IO
    /// drained, its listeners go when no other subsystem uses them.
    pub fn delete_subsystem(&self, runtime: &RuntimeHandle, nqn: &str) -> Result<(), NvmfError> {
        let subsystem = self.nvme_subsystem(nqn)?;
        lock(&self.shared.subsystems).retain(|s| !Arc::ptr_eq(s, &subsystem));
        subsystem.mark_deleted();
        for controller in subsystem.controllers() {
            controller.fail();
        }
        subsystem.clear_namespaces();
        for address in subsystem.settings().listeners {
            self.release_listener(&address);
        }
        self.discovery_changed();
        wake_all(runtime);
        Ok(())
    }

    /// `nvmf_subsystem_add_ns`: returns the NSID.
    pub fn add_namespace(
        &self,
        runtime: &RuntimeHandle,
        nqn: &str,
        bdev: &Arc<Bdev>,
        ids: NamespaceIds,
    ) -> Result<u32, NvmfError> {
        let subsystem = self.nvme_subsystem(nqn)?;
        let nsid = subsystem.add_namespace(bdev, ids)?;
        notify_namespace(runtime, &subsystem, nsid);
        Ok(nsid)
    }

    /// `nvmf_subsystem_remove_ns`.
    pub fn remove_namespace(
        &self,
        runtime: &RuntimeHandle,
        nqn: &str,
        nsid: u32,
    ) -> Result<(), NvmfError> {
        let subsystem = self.nvme_subsystem(nqn)?;
        subsystem.remove_namespace(nsid)?;
        notify_namespace(runtime, &subsystem, nsid);
        Ok(())
    }

    /// `nvmf_subsystem_add_host` / `remove_host` / `allow_any_host`.
    pub fn add_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        if !valid_nqn(host) {
            return Err(NvmfError::InvalidNqn(host.to_string()));
        }
        self.nvme_subsystem(nqn)?.update_settings(|settings| {
            if settings.hosts.iter().any(|h| h == host) {
                return Err(NvmfError::HostExists(host.to_string()));
            }
            if settings.hosts.len() >= limits::NVMF_HOSTS_MAX {
                return Err(NvmfError::TooMany("hosts"));
            }
            settings.hosts.push(host.to_string());
            Ok(())
        })?;
        self.discovery_changed();
        Ok(())
    }

    /// Removing a host ends its controllers on the subsystem, as SPDK does.
    pub fn remove_host(
        &self,
        runtime: &RuntimeHandle,
        nqn: &str,
        host: &str,
    ) -> Result<(), NvmfError> {
        let subsystem = self.nvme_subsystem(nqn)?;
        subsystem.update_settings(|settings| {
            let before = settings.hosts.len();
            settings.hosts.retain(|h| h != host);
            if settings.hosts.len() == before {
                return Err(NvmfError::HostNotFound(host.to_string()));
            }
            Ok(())
        })?;
        if !subsystem.settings().allow_any_host {
            for controller in subsystem.controllers().iter().filter(|c| c.host_nqn == host) {
                controller.fail();
            }
        }
        self.discovery_changed();
        wake_all(runtime);
        Ok(())
    }

    pub fn allow_any_host(&self, nqn: &str, allow: bool) -> Result<(), NvmfError> {
        self.nvme_subsystem(nqn)?.update_settings(|settings| settings.allow_any_host = allow);
        self.discovery_changed();
        Ok(())
    }

    /// `nvmf_subsystem_add_listener`: binds the address unless another subsystem already did.
    pub fn add_listener(
        &self,
        runtime: &RuntimeHandle,
        nqn: &str,
        address: ListenAddress,
    ) -> Result<(), NvmfError> {
        if self.shared.transport().is_none() {
            return Err(NvmfError::NoTransport("TCP".into()));
        }
        let subsystem = self.subsystem(nqn)?;
        if subsystem.settings().listeners.iter().any(|l| l.same_as(&address)) {
            return Err(NvmfError::ListenerExists(address.to_string()));
        }
        let mut listeners = lock(&self.shared.listeners);
        match listeners.iter().find(|l| l.address.same_as(&address)) {
            Some(listener) => listener.retain(),
            None => {
                if listeners.len() >= limits::NVMF_LISTENERS_MAX {
                    return Err(NvmfError::TooMany("listeners"));
                }
                listeners.push(listener::start(runtime, &self.shared, address.clone())?);
            }
        }
        drop(listeners);
        subsystem.update_settings(|settings| settings.listeners.push(address));
        self.discovery_changed();
        Ok(())
    }

    /// `nvmf_subsystem_remove_listener`: the subsystem's controllers with a queue that came in
    /// on it end, as SPDK's do; the socket closes when no subsystem uses it.
    pub fn remove_listener(
        &self,
        runtime: &RuntimeHandle,
        nqn: &str,
        address: &ListenAddress,
    ) -> Result<(), NvmfError> {
        let subsystem = self.subsystem(nqn)?;
        subsystem.update_settings(|settings| {
            let before = settings.listeners.len();
            settings.listeners.retain(|l| !l.same_as(address));
            if settings.listeners.len() == before {
                return Err(NvmfError::ListenerNotFound(address.to_string()));
            }
            Ok(())
        })?;
        for controller in subsystem.controllers() {
            if controller.queues().iter().any(|q| q.listen.same_as(address)) {
                controller.fail();
            }
        }
        self.release_listener(address);
        self.discovery_changed();
        wake_all(runtime);
        Ok(())
    }

    fn release_listener(&self, address: &ListenAddress) {
        let mut listeners = lock(&self.shared.listeners);
        if let Some(index) = listeners.iter().position(|l| l.address.same_as(address))
            && listeners[index].release()
        {
            listeners.remove(index);
        }
    }

    /// Connections admitted and not yet closed, on every listener.
    pub fn connection_count(&self) -> usize {
        self.shared.admission.admitted_count()
    }

    /// The addresses a listener is bound to (port 0 resolved), for tests and logs.
    pub fn bound_address(&self, address: &ListenAddress) -> Option<SocketAddr> {
        lock(&self.shared.listeners)
            .iter()
            .find(|l| l.address.same_as(address))
            .map(|l| l.local_address)
    }

    /// Something hosts see in the discovery log changed.
    fn discovery_changed(&self) {
        self.shared.discovery_generation.fetch_add(1, Ordering::AcqRel);
        if let Some(discovery) = self.shared.subsystem(DISCOVERY_NQN) {
            for controller in discovery.controllers() {
                controller.discovery_changed();
            }
        }
    }

    /// Stops accepting and serving: listeners close, connections finish their IO and close.
    pub fn stop(&self, runtime: &RuntimeHandle) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for listener in lock(&self.shared.listeners).drain(..) {
            listener.stop();
        }
        wake_all(runtime);
    }
}

/// Tells every controller of `subsystem` that namespace `nsid` changed, and wakes their admin
/// queues so the AER completes now.
pub(crate) fn notify_namespace(runtime: &RuntimeHandle, subsystem: &Subsystem, nsid: u32) {
    for controller in subsystem.controllers() {
        controller.namespace_changed(nsid);
        let _ = runtime.send(controller.admin_core, |_| {});
    }
}

/// Wakes every reactor so its connections notice a change now.
pub(crate) fn wake_all(runtime: &RuntimeHandle) {
    for core in runtime.cores() {
        let _ = runtime.send(core, |_| {});
    }
}
