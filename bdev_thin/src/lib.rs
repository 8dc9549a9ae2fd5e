//! bdev_thin: a thin-provisioning block device in the SPDK style.
//!
//! Architecture map (see `../shared/DESIGN.md` for the why):
//!
//! - [`host`] is the seam: block-device IO with completions, pollers, message rings and the
//!   clock, as traits. Everything else is written against it.
//! - [`runtime`] is the embedded host: one pinned reactor per core, busy/idle pollers, timed
//!   pollers, bounded rings, parking in one `epoll_wait` when idle.
//! - [`backend`] holds the base devices (`malloc`, `null`, `uring`).
//! - [`bdev`] is the registry of named devices, per-core channels and `bdev_get_iostat`.
//! - [`export`] serves bdevs to other processes: the NBD server and the NVMe-oF/TCP target.
//! - [`admission`] caps the connections of every server, with handshake deadlines.
//! - [`names`] bounds the names clients choose and escapes them in logs.
//! - [`nvme`] is NVMe and NVMe/TCP on the wire: commands, Identify, log pages, PDUs (no IO).
//! - [`testing`] (feature `testing`) is the deterministic stepping host and its simulated device.
//!
//! Modules allowed `unsafe` (the workspace denies it everywhere else), each block with a
//! `// SAFETY:` line:
//! - `host::buffer`: aligned IO buffers that split into disjoint owned pieces;
//! - `backend::uring::ring`: submission entries that point into buffers the kernel fills;
//! - `sys`: the Linux calls std lacks, through `rustix`; its one `unsafe` names an open
//!   descriptor by its number for the runtime's watch calls.

pub mod admission;
pub mod backend;
pub mod bdev;
pub mod config;
pub mod export;
pub mod host;
pub mod limits;
pub mod names;
pub mod nvme;
pub mod rpc;
pub mod runtime;
pub mod sys;
pub mod target;
#[cfg(feature = "testing")]
pub mod testing;
pub mod thin;

/// The version `--version` and `spdk_get_version` report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

static BUILD_COMMIT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records the commit the binary was built from (its `build.rs` knows it; the library does not).
pub fn set_build_commit(commit: &str) {
    let _ = BUILD_COMMIT.set(commit.to_string());
}

/// The commit recorded by [`set_build_commit`], or "".
pub fn build_commit() -> &'static str {
    BUILD_COMMIT.get().map_or("", String::as_str)
}
