//! Base devices: `malloc` (RAM), `null` (no data), `uring` (a file or block device through
//! io_uring) and `nvme_tcp` (a namespace of a remote NVMe-oF controller), and [`BaseDevice`],
//! the enum a pool's data device is: static dispatch over the four, so the IO path never goes
//! through a vtable.

pub mod instant;
pub mod malloc;
pub mod null;
pub mod nvme_tcp;
pub mod uring;

use std::sync::Arc;

use crate::host::{
    BlockDevice, DeviceChannel, DeviceError, DeviceInfo, IoCompletion, IoKind, IoRequest,
};
use crate::limits;

pub use malloc::MallocDevice;
pub use null::NullDevice;
pub use nvme_tcp::NvmeDevice;
pub use uring::UringDevice;

/// Checks a base device's block size and block count against what bdevs and their exports can
/// serve (`limits::BDEV_*`). The message names the parameter and the limit.
pub fn check_geometry(block_size_bytes: u32, num_blocks: u64) -> Result<(), String> {
    let (min, max) = (limits::BDEV_BLOCK_BYTES_MIN, limits::BDEV_BLOCK_BYTES_MAX);
    if !block_size_bytes.is_power_of_two() || !(min..=max).contains(&block_size_bytes) {
        return Err(format!(
            "block_size: {block_size_bytes} is not a power of two from {min} to {max} bytes \
             (the block sizes NBD and NVMe-oF exports serve)"
        ));
    }
    if num_blocks == 0 {
        return Err("num_blocks: must be greater than 0".into());
    }
    let max_blocks = limits::BDEV_SIZE_BYTES_MAX / u64::from(block_size_bytes);
    if num_blocks > max_blocks {
        return Err(format!(
            "num_blocks: {num_blocks} blocks of {block_size_bytes} bytes are more than \
             {max_blocks}, the most that fit in {} bytes (the largest size every NBD client and \
             Linux open)",
            limits::BDEV_SIZE_BYTES_MAX
        ));
    }
    Ok(())
}

/// A base device of any kind: what a pool's data and metadata devices are.
#[derive(Clone)]
pub enum BaseDevice {
    Malloc(Arc<MallocDevice>),
    Null(Arc<NullDevice>),
    Uring(Arc<UringDevice>),
    Nvme(NvmeDevice),
}

pub enum BaseChannel {
    Malloc(malloc::MallocChannel),
    Null(null::NullChannel),
    Uring(uring::UringChannel),
    Nvme(nvme_tcp::NvmeChannel),
}

impl BaseDevice {
    /// SPDK's product name.
    pub fn product_name(&self) -> &'static str {
        match self {
            BaseDevice::Malloc(_) => "Malloc disk",
            BaseDevice::Null(_) => "Null disk",
            BaseDevice::Uring(_) => "URING bdev",
            BaseDevice::Nvme(_) => "NVMe disk",
        }
    }

    /// Reads `out.len()` bytes at `offset_bytes`, blocking: for examine and offline tools on
    /// the control plane, never on a reactor's IO path. Both must be multiples of the block
    /// size.
    pub fn read_sync(&self, offset_bytes: u64, out: &mut [u8]) -> std::io::Result<()> {
        match self {
            BaseDevice::Malloc(d) => d.read_sync(offset_bytes, out),
            BaseDevice::Null(_) => {
                out.fill(0);
                Ok(())
            }
            BaseDevice::Uring(d) => d.read_sync(offset_bytes, out),
            BaseDevice::Nvme(d) => d.0.read_sync(offset_bytes, out),
        }
    }

    /// Whether the device keeps what is written (a pool refuses `null`).
    pub fn stores_data(&self) -> bool {
        !matches!(self, BaseDevice::Null(_))
    }
}

impl BlockDevice for BaseDevice {
    type Channel = BaseChannel;

    fn info(&self) -> DeviceInfo {
        match self {
            BaseDevice::Malloc(d) => d.info(),
            BaseDevice::Null(d) => d.info(),
            BaseDevice::Uring(d) => d.info(),
            BaseDevice::Nvme(d) => d.info(),
        }
    }

    fn supports(&self, kind: IoKind) -> bool {
        match self {
            BaseDevice::Malloc(d) => d.supports(kind),
            BaseDevice::Null(d) => d.supports(kind),
            BaseDevice::Uring(d) => d.supports(kind),
            BaseDevice::Nvme(d) => d.supports(kind),
        }
    }

    fn open_channel(&self) -> Result<BaseChannel, DeviceError> {
        Ok(match self {
            BaseDevice::Malloc(d) => BaseChannel::Malloc(d.open_channel()?),
            BaseDevice::Null(d) => BaseChannel::Null(d.open_channel()?),
            BaseDevice::Uring(d) => BaseChannel::Uring(d.open_channel()?),
            BaseDevice::Nvme(d) => BaseChannel::Nvme(d.open_channel()?),
        })
    }
}

impl DeviceChannel for BaseChannel {
    #[inline]
    fn submit(&mut self, request: IoRequest) -> Result<(), IoRequest> {
        match self {
            BaseChannel::Malloc(c) => c.submit(request),
            BaseChannel::Null(c) => c.submit(request),
            BaseChannel::Uring(c) => c.submit(request),
            BaseChannel::Nvme(c) => c.submit(request),
        }
    }

    #[inline]
    fn poll(&mut self, complete: &mut impl FnMut(IoCompletion)) -> usize {
        match self {
            BaseChannel::Malloc(c) => c.poll(complete),
            BaseChannel::Null(c) => c.poll(complete),
            BaseChannel::Uring(c) => c.poll(complete),
            BaseChannel::Nvme(c) => c.poll(complete),
        }
    }

    fn in_flight(&self) -> usize {
        match self {
            BaseChannel::Malloc(c) => c.in_flight(),
            BaseChannel::Null(c) => c.in_flight(),
            BaseChannel::Uring(c) => c.in_flight(),
            BaseChannel::Nvme(c) => c.in_flight(),
        }
    }

    fn prepare_park(&mut self) -> bool {
        match self {
            BaseChannel::Malloc(c) => c.prepare_park(),
            BaseChannel::Null(c) => c.prepare_park(),
            BaseChannel::Uring(c) => c.prepare_park(),
            BaseChannel::Nvme(c) => c.prepare_park(),
        }
    }
}
