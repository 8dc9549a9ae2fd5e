//! The `null` device: accepts reads and writes and keeps nothing, like SPDK's null bdev (no
//! unmap, no flush). For benchmarks of the layers above a device; a pool refuses it.

use std::sync::atomic::{AtomicU64, Ordering};

use super::instant::{InstantChannel, InstantStore};
use crate::host::{BlockDevice, DeviceError, DeviceInfo, IoKind, IoRequest, IoStatus};

#[derive(Debug)]
pub struct NullDevice {
    block_size_bytes: u32,
    num_blocks: AtomicU64,
}

impl NullDevice {
    pub fn new(block_size_bytes: u32, num_blocks: u64) -> Result<NullDevice, DeviceError> {
        super::check_geometry(block_size_bytes, num_blocks).map_err(DeviceError::Invalid)?;
        Ok(NullDevice { block_size_bytes, num_blocks: AtomicU64::new(num_blocks) })
    }

    /// `bdev_null_resize`: the new size in blocks (grow or shrink; nothing is stored).
    pub fn resize(&self, num_blocks: u64) {
        self.num_blocks.store(num_blocks, Ordering::Relaxed);
    }
}

impl BlockDevice for NullDevice {
    type Channel = NullChannel;

    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            block_size_bytes: self.block_size_bytes,
            num_blocks: self.num_blocks.load(Ordering::Relaxed),
            max_unmap_blocks: 0,
            unmap_reads_zeroes: false,
        }
    }

    fn supports(&self, kind: IoKind) -> bool {
        matches!(kind, IoKind::Read | IoKind::Write | IoKind::WriteZeroes | IoKind::Reset)
    }

    fn open_channel(&self) -> Result<NullChannel, DeviceError> {
        Ok(InstantChannel::new(self.info(), NullStore))
    }
}

/// A channel of a null device.
pub type NullChannel = InstantChannel<NullStore>;

/// Nothing to read or write: reads leave their buffers as they are, as SPDK's null bdev does.
pub struct NullStore;

impl InstantStore for NullStore {
    #[inline]
    fn execute(&self, request: &mut IoRequest) -> IoStatus {
        if matches!(request.kind, IoKind::Unmap | IoKind::Flush) {
            IoStatus::Failed(libc::ENOTSUP)
        } else {
            IoStatus::Success
        }
    }
}
