//! The `malloc` device: blocks in RAM, shared by every core's channel. Unmap and write_zeroes
//! zero the range, so deallocated blocks read zeroes.
//!
//! The store is an array of `AtomicU64` accessed with relaxed loads and stores: channels on
//! different cores may touch the same bytes (a frontend racing itself), and relaxed atomics make
//! that defined behaviour without a lock; on x86 they compile to plain moves.

use std::sync::atomic::{AtomicU64, Ordering};

use super::instant::{InstantChannel, InstantStore};
use crate::host::{BlockDevice, DeviceError, DeviceInfo, IoKind, IoRequest, IoStatus, SgList};
use std::sync::Arc;

#[derive(Debug)]
pub struct MallocDevice {
    block_size_bytes: u32,
    num_blocks: u64,
    words: Arc<[AtomicU64]>,
}

impl MallocDevice {
    pub fn new(block_size_bytes: u32, num_blocks: u64) -> Result<MallocDevice, DeviceError> {
        super::check_geometry(block_size_bytes, num_blocks).map_err(DeviceError::Invalid)?;
        let too_big = || {
            DeviceError::Invalid(format!(
                "num_blocks: {num_blocks} blocks of {block_size_bytes} bytes do not fit in memory"
            ))
        };
        let bytes = num_blocks
            .checked_mul(u64::from(block_size_bytes))
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(too_big)?;
        // A size from a config or an RPC must fail as an error, not abort the process: refuse
        // more than the memory available now, and probe the allocation (address space only, no
        // page is touched) before the real one, which zero-fills.
        if available_memory_bytes().is_some_and(|total| bytes as u64 > total) {
            return Err(too_big());
        }
        let mut probe: Vec<AtomicU64> = Vec::new();
        probe.try_reserve_exact(bytes / 8).map_err(|_| too_big())?;
        drop(probe);
        let words: Arc<[AtomicU64]> = (0..bytes / 8).map(|_| AtomicU64::new(0)).collect();
        Ok(MallocDevice { block_size_bytes, num_blocks, words })
    }
}

impl MallocDevice {
    /// Control-plane read (examine): copies bytes out of the store.
    pub fn read_sync(&self, offset_bytes: u64, out: &mut [u8]) -> std::io::Result<()> {
        let end = offset_bytes.checked_add(out.len() as u64);
        if !offset_bytes.is_multiple_of(8)
            || !out.len().is_multiple_of(8)
            || end.is_none_or(|e| e / 8 > self.words.len() as u64)
        {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let first = (offset_bytes / 8) as usize;
        for (chunk, word) in out.chunks_exact_mut(8).zip(&self.words[first..]) {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        Ok(())
    }
}

/// `MemAvailable` of `/proc/meminfo` (memory usable without swapping), if it can be read.
fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

impl BlockDevice for MallocDevice {
    type Channel = MallocChannel;

    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            block_size_bytes: self.block_size_bytes,
            num_blocks: self.num_blocks,
            max_unmap_blocks: self.num_blocks,
            unmap_reads_zeroes: true,
        }
    }

    fn supports(&self, _kind: IoKind) -> bool {
        true
    }

    fn open_channel(&self) -> Result<MallocChannel, DeviceError> {
        let store = MallocStore {
            words: Arc::clone(&self.words),
            words_per_block: self.block_size_bytes as usize / 8,
        };
        Ok(InstantChannel::new(self.info(), store))
    }
}

/// A channel of a malloc device.
pub type MallocChannel = InstantChannel<MallocStore>;

/// The blocks a malloc channel reads and writes: the device's, shared by every channel.
pub struct MallocStore {
    words: Arc<[AtomicU64]>,
    words_per_block: usize,
}

impl MallocStore {
    fn word_range(&self, request: &IoRequest) -> std::ops::Range<usize> {
        let first = request.offset_blocks as usize * self.words_per_block;
        first..first + request.num_blocks as usize * self.words_per_block
    }

    fn read(&self, range: std::ops::Range<usize>, buffers: &mut SgList) {
        let mut words = &self.words[range];
        for segment in buffers.segments_mut() {
            let bytes = segment.as_mut_slice();
            let (here, rest) = words.split_at(bytes.len() / 8);
            for (chunk, word) in bytes.chunks_exact_mut(8).zip(here) {
                chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
            }
            words = rest;
        }
    }

    fn write(&self, range: std::ops::Range<usize>, buffers: &SgList) {
        let mut words = &self.words[range];
        for segment in buffers.segments() {
            let bytes = segment.as_slice();
            let (here, rest) = words.split_at(bytes.len() / 8);
            for (chunk, word) in bytes.chunks_exact(8).zip(here) {
                let value = u64::from_ne_bytes(chunk.try_into().expect("chunks of 8"));
                word.store(value, Ordering::Relaxed);
            }
            words = rest;
        }
    }
}

impl InstantStore for MallocStore {
    #[inline]
    fn execute(&self, request: &mut IoRequest) -> IoStatus {
        match request.kind {
            IoKind::Read => {
                let range = self.word_range(request);
                self.read(range, &mut request.buffers);
            }
            IoKind::Write => self.write(self.word_range(request), &request.buffers),
            IoKind::Unmap | IoKind::WriteZeroes => {
                for word in &self.words[self.word_range(request)] {
                    word.store(0, Ordering::Relaxed);
                }
            }
            IoKind::Flush | IoKind::Reset => {}
        }
        IoStatus::Success
    }
}
