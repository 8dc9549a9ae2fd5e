//! The `uring` device: a regular file or a block device, opened O_DIRECT and exclusively, driven
//! through one io_uring per channel. Every operation goes through the ring, so nothing blocks a
//! reactor: reads and writes (FUA = `RWF_DSYNC`), flush = `fdatasync`, unmap = punch-hole
//! (files) or `BLOCK_URING_CMD_DISCARD` (block devices on Linux 6.12+, else punch-hole, which a
//! block device turns into write-zeroes with unmap), write_zeroes = zero-range. Completions are
//! reaped by peeking the completion queue; its eventfd is armed only while the reactor parks.

mod ring;

use std::fs::{File, OpenOptions};
use std::io::Seek;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::{DeallocateMethod, PushError, Ring};

use crate::host::{
    BlockDevice, DeviceChannel, DeviceError, DeviceInfo, IoCompletion, IoKind, IoRequest, IoStatus,
};
use crate::limits;
use crate::sys::{self, EventFd};

/// Entries of each channel's submission queue (and slots for in-flight IO).
const RING_ENTRIES: u32 = limits::DEVICE_CHANNEL_DEPTH_MAX as u32;

#[derive(Debug)]
pub struct UringDevice {
    path: PathBuf,
    file: Arc<File>,
    is_block_device: bool,
    block_size_bytes: u32,
    num_blocks: Arc<AtomicU64>,
    deallocate: DeallocateMethod,
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let found_major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let found_minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (found_major, found_minor) >= (major, minor)
}

impl UringDevice {
    /// Opens `path` for O_DIRECT IO. `block_size` must be a power of two in the bdev range
    /// (`limits::BDEV_BLOCK_BYTES_*`) and ≥ the device's logical block size; it is detected if
    /// not given (512 for files).
    pub fn open(path: &Path, block_size: Option<u32>) -> Result<UringDevice, DeviceError> {
        let open_error = |source| DeviceError::Open { path: path.display().to_string(), source };
        let metadata = std::fs::metadata(path).map_err(open_error)?;
        let is_block_device = metadata.file_type().is_block_device();
        if !is_block_device && !metadata.is_file() {
            return Err(DeviceError::Invalid(format!(
                "{} is neither a regular file nor a block device",
                path.display()
            )));
        }
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        // O_EXCL on a block device is the kernel's exclusive claim; files take an flock below.
        let extra = if is_block_device { libc::O_EXCL } else { 0 };
        options.custom_flags(libc::O_DIRECT | libc::O_CLOEXEC | extra);
        let file = options.open(path).map_err(|source| match source.raw_os_error() {
            Some(libc::EBUSY) => DeviceError::Busy { path: path.display().to_string() },
            _ => open_error(source),
        })?;
        if !sys::lock_exclusive(&file)? {
            return Err(DeviceError::Busy { path: path.display().to_string() });
        }
        let logical =
            if is_block_device { sys::block_device_logical_block_size(&file)? } else { 512 };
        let block_size_bytes = block_size.unwrap_or(logical);
        if !block_size_bytes.is_power_of_two()
            || block_size_bytes < logical.max(limits::BDEV_BLOCK_BYTES_MIN)
            || block_size_bytes > limits::BDEV_BLOCK_BYTES_MAX
        {
            return Err(DeviceError::Invalid(format!(
                "block_size: {block_size_bytes} is not a power of two from {} to {} bytes",
                logical.max(limits::BDEV_BLOCK_BYTES_MIN),
                limits::BDEV_BLOCK_BYTES_MAX
            )));
        }
        let deallocate = if is_block_device && kernel_at_least(6, 12) {
            DeallocateMethod::UringCmdDiscard
        } else {
            DeallocateMethod::Fallocate
        };
        let device = UringDevice {
            path: path.to_path_buf(),
            file: Arc::new(file),
            is_block_device,
            block_size_bytes,
            num_blocks: Arc::new(AtomicU64::new(0)),
            deallocate,
        };
        device.rescan()?;
        if device.num_blocks.load(Ordering::Relaxed) == 0 {
            return Err(DeviceError::Invalid(format!(
                "{} is smaller than one block of {block_size_bytes} bytes",
                path.display()
            )));
        }
        Ok(device)
    }

    /// Control-plane read (examine), blocking, through an aligned bounce buffer (the file is
    /// O_DIRECT).
    pub fn read_sync(&self, offset_bytes: u64, out: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut buffer = crate::host::IoBuffer::new(out.len());
        self.file.read_exact_at(buffer.as_mut_slice(), offset_bytes)?;
        out.copy_from_slice(buffer.as_slice());
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    /// Re-reads the size of the file or device (`bdev_uring_rescan`); returns the block count.
    pub fn rescan(&self) -> Result<u64, DeviceError> {
        let bytes = if self.is_block_device {
            // A block device's end is its size (lseek, no ioctl). Moving the file position
            // changes nothing: every IO names its offset.
            let mut file: &File = &self.file;
            file.seek(std::io::SeekFrom::End(0))?
        } else {
            self.file.metadata()?.len()
        };
        if bytes > limits::BDEV_SIZE_BYTES_MAX {
            return Err(DeviceError::Invalid(format!(
                "{}: {bytes} bytes are more than {}, the largest bdev",
                self.path.display(),
                limits::BDEV_SIZE_BYTES_MAX
            )));
        }
        let blocks = bytes / u64::from(self.block_size_bytes);
        self.num_blocks.store(blocks, Ordering::Relaxed);
        Ok(blocks)
    }
}

impl BlockDevice for UringDevice {
    type Channel = UringChannel;

    fn info(&self) -> DeviceInfo {
        let num_blocks = self.num_blocks.load(Ordering::Relaxed);
        DeviceInfo {
            block_size_bytes: self.block_size_bytes,
            num_blocks,
            max_unmap_blocks: num_blocks,
            // A punched hole in a file reads zeroes; a discarded block-device range need not.
            unmap_reads_zeroes: !self.is_block_device,
        }
    }

    fn supports(&self, kind: IoKind) -> bool {
        kind != IoKind::Reset
    }

    fn open_channel(&self) -> Result<UringChannel, DeviceError> {
        let ring =
            Ring::new(RING_ENTRIES, limits::DEVICE_CHANNEL_DEPTH_MAX, self.file.as_raw_fd())?;
        let eventfd = EventFd::new()?;
        ring.register_eventfd(eventfd.raw())?;
        let mut channel = UringChannel {
            ring,
            _file: Arc::clone(&self.file),
            block_size_bytes: self.block_size_bytes,
            num_blocks: Arc::clone(&self.num_blocks),
            deallocate: self.deallocate,
            slots: (0..limits::DEVICE_CHANNEL_DEPTH_MAX).map(|_| None).collect(),
            free_slots: (0..limits::DEVICE_CHANNEL_DEPTH_MAX as u16).rev().collect(),
            unsubmitted: 0,
            ready: std::collections::VecDeque::with_capacity(limits::DEVICE_CHANNEL_DEPTH_MAX),
            eventfd,
            armed: false,
        };
        channel.ring.set_eventfd_enabled(false);
        crate::runtime::watch_fd(channel.eventfd.raw());
        Ok(channel)
    }
}

/// One core's handle: its own ring, its in-flight requests by slot.
pub struct UringChannel {
    ring: Ring,
    /// Keeps the file (and its exclusive lock) open while the channel's ring uses it.
    _file: Arc<File>,
    block_size_bytes: u32,
    num_blocks: Arc<AtomicU64>,
    deallocate: DeallocateMethod,
    /// In-flight requests, by the slot their entry's user_data names.
    slots: Vec<Option<IoRequest>>,
    free_slots: Vec<u16>,
    unsubmitted: usize,
    /// Requests finished without the kernel (invalid ones), delivered at the next poll.
    ready: std::collections::VecDeque<IoCompletion>,
    eventfd: EventFd,
    armed: bool,
}

impl UringChannel {
    fn reap(&mut self, complete: &mut impl FnMut(IoCompletion)) -> usize {
        let slots = &mut self.slots;
        let free_slots = &mut self.free_slots;
        let block_size = u64::from(self.block_size_bytes);
        self.ring.reap(|slot, result| {
            let Some(request) = slots.get_mut(usize::from(slot)).and_then(Option::take) else {
                debug_assert!(false, "completion for empty slot {slot}");
                return;
            };
            free_slots.push(slot);
            let status = if result < 0 {
                IoStatus::from_kernel_result(result)
            } else if request.kind.has_data() && result as u64 != request.num_blocks * block_size {
                // A short transfer on O_DIRECT means the file shrank under us.
                IoStatus::Failed(libc::EIO)
            } else {
                IoStatus::Success
            };
            complete(IoCompletion { request, status });
        })
    }
}

impl DeviceChannel for UringChannel {
    fn submit(&mut self, mut request: IoRequest) -> Result<(), IoRequest> {
        let num_blocks = self.num_blocks.load(Ordering::Relaxed);
        if let Err(status) = request.validate(self.block_size_bytes, num_blocks) {
            if self.ready.len() >= limits::DEVICE_CHANNEL_DEPTH_MAX {
                return Err(request);
            }
            self.ready.push_back(IoCompletion { request, status });
            return Ok(());
        }
        let Some(slot) = self.free_slots.pop() else {
            return Err(request);
        };
        let block_size = u64::from(self.block_size_bytes);
        let byte_offset = request.offset_blocks * block_size;
        let byte_length = request.num_blocks * block_size;
        let mut pushed =
            self.ring.push(slot, &mut request, byte_offset, byte_length, self.deallocate);
        if pushed == Err(PushError::Full) {
            // Make room by handing the queued entries to the kernel, then try once more.
            if self.ring.submit().is_ok() {
                self.unsubmitted = 0;
            }
            pushed = self.ring.push(slot, &mut request, byte_offset, byte_length, self.deallocate);
        }
        match pushed {
            Ok(()) => {
                self.slots[usize::from(slot)] = Some(request);
                self.unsubmitted += 1;
                Ok(())
            }
            Err(PushError::Full) => {
                self.free_slots.push(slot);
                Err(request)
            }
            Err(PushError::Invalid) => {
                self.free_slots.push(slot);
                self.ready
                    .push_back(IoCompletion { request, status: IoStatus::Failed(libc::EINVAL) });
                Ok(())
            }
        }
    }

    fn poll(&mut self, complete: &mut impl FnMut(IoCompletion)) -> usize {
        if self.armed {
            self.armed = false;
            self.ring.set_eventfd_enabled(false);
            self.eventfd.drain();
        }
        if self.unsubmitted > 0 || (self.in_flight() > 0 && self.ring.has_task_work()) {
            match self.ring.submit() {
                Ok(_) => self.unsubmitted = 0,
                // EAGAIN/EBUSY: the kernel is short of resources; retry at the next poll.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY)) => {}
                Err(e) => eprintln!("uring: submit failed: {e}"),
            }
        }
        let mut count = 0;
        while let Some(completion) = self.ready.pop_front() {
            complete(completion);
            count += 1;
        }
        count + self.reap(complete)
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len() + self.ready.len()
    }

    fn prepare_park(&mut self) -> bool {
        if self.in_flight() == 0 {
            return true;
        }
        if self.unsubmitted > 0 || !self.ready.is_empty() || self.ring.has_task_work() {
            return false;
        }
        // Arm the eventfd, then look once more: a completion posted before arming would not
        // signal it.
        self.ring.set_eventfd_enabled(true);
        self.armed = true;
        !self.ring.has_completions()
    }
}

impl Drop for UringChannel {
    fn drop(&mut self) {
        // The kernel may still write into in-flight buffers: wait for every entry before the
        // requests (and their buffers) are freed.
        let mut discarded = |_completion: IoCompletion| {};
        while self.slots.len() > self.free_slots.len() {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            self.reap(&mut discarded);
        }
        self.ring.unregister_file();
        crate::runtime::unwatch_fd(self.eventfd.raw());
    }
}
