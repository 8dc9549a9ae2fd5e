//! The rig the thin-pool tests share: a pool on a simulated device with its owner on the
//! deterministic stepping host, channels opened as cores would, control operations answered
//! by polling, and requests built block by block. Every IO's completion is held, reordered or
//! delivered as the test says (`testing::SimDevice`).
// Each test file uses the part of the rig it needs.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use bdev_thin::host::{
    DeviceChannel, IoBuffer, IoCompletion, IoKind, IoRequest, IoStatus, NoopWaker, SgList,
};
use bdev_thin::testing::{SimDevice, SteppingHost};
use bdev_thin::thin::channel::{ChannelGeometry, VolumeChannel};
use bdev_thin::thin::metadata::{Layout, METADATA_BLOCK_BYTES, PoolMetadata, check};
use bdev_thin::thin::mutations::Mutations;
use bdev_thin::thin::owner::{ControlOp, Owner, OwnerSettings, PoolError};
use bdev_thin::thin::pool::{PoolLimits, PoolShared};
use bdev_thin::thin::types::{DiscardMode, MetaBlock, OutOfSpaceMode, PoolSettings, VolumeId};
use crossbeam_queue::ArrayQueue;

pub const LBA: u32 = 512;
pub const BLOCK: u32 = 4096;
pub const LBAS_PER_BLOCK: u64 = (BLOCK / LBA) as u64;

pub type Channel = VolumeChannel<SimDevice, NoopWaker>;

/// Where a control operation's answer lands once the owner gives it.
pub type Answer<T> = Arc<Mutex<Option<Result<T, PoolError>>>>;

pub struct Rig {
    pub device: SimDevice,
    pub shared: Arc<PoolShared<NoopWaker>>,
    pub control: Arc<ArrayQueue<ControlOp>>,
    pub owner: Owner<SimDevice, SteppingHost>,
    pub geometry: ChannelGeometry,
    pub settings: OwnerSettings,
}

pub fn settings(discard: DiscardMode, mutations: Mutations) -> OwnerSettings {
    OwnerSettings {
        pool: PoolSettings {
            discard,
            zero_new_blocks: true,
            out_of_space: OutOfSpaceMode::Error,
            no_space_timeout_s: 60,
            low_water_mark: 0,
            commit_interval_ms: 1000,
        },
        mutations,
        limits: PoolLimits::PRODUCTION,
    }
}

impl Rig {
    /// A pool whose data area holds `data_blocks` blocks of 4 KiB.
    pub fn new(data_blocks: u64, settings: OwnerSettings) -> Rig {
        Rig::growable(data_blocks, 0, settings)
    }

    /// As [`Rig::new`], on a device `spare_blocks` data blocks larger than the pool, with
    /// room in the metadata to grow onto them (`bdev_thin_pool_grow` after the device grew).
    pub fn growable(data_blocks: u64, spare_blocks: u64, settings: OwnerSettings) -> Rig {
        let mut device_bytes = 64 << 20;
        let layout = loop {
            let max_bytes = device_bytes + spare_blocks * u64::from(BLOCK);
            let layout = Layout::on_data_device(device_bytes, BLOCK, max_bytes).unwrap();
            if layout.data_blocks == data_blocks {
                break layout;
            }
            device_bytes = layout.data_offset_bytes + data_blocks * u64::from(BLOCK);
        };
        let record = settings.to_record([7; 16], "pool0");
        let meta = PoolMetadata::format(layout, record).unwrap();
        let device_bytes = device_bytes + spare_blocks * u64::from(BLOCK);
        let device = SimDevice::new(LBA, device_bytes / u64::from(LBA));
        Rig::with_metadata(device, meta, settings)
    }

    /// A pool on `device` whose metadata is `meta` (formatted or opened by the test).
    pub fn with_metadata(device: SimDevice, meta: PoolMetadata, settings: OwnerSettings) -> Rig {
        let layout = *meta.layout();
        let shared = PoolShared::new(NoopWaker);
        let control = Arc::new(ArrayQueue::new(16));
        let host = SteppingHost::new();
        let owner =
            Owner::new(host, Arc::clone(&shared), Arc::clone(&control), meta, &device, settings)
                .unwrap();
        let geometry = ChannelGeometry {
            lba_bytes: u64::from(LBA),
            lbas_per_block: LBAS_PER_BLOCK,
            data_offset_lbas: layout.data_offset_bytes / u64::from(LBA),
        };
        Rig { device, shared, control, owner, geometry, settings }
    }

    /// The pool as a restarted process finds it: what the device holds, opened anew (the
    /// old owner and its channels are gone; IO still in flight on the device is lost).
    pub fn reopen(self) -> Rig {
        let device = self.device.clone();
        let settings = self.settings;
        drop(self);
        device.crash();
        let meta = PoolMetadata::open(&mut metadata_reader(&device)).expect("the pool opens");
        Rig::with_metadata(device, meta, settings)
    }

    /// Hands `op` to the owner without polling; the answer lands in the returned slot.
    pub fn push_control<T: Send + 'static>(
        &self,
        make: impl FnOnce(Box<dyn FnOnce(Result<T, PoolError>) + Send>) -> ControlOp,
    ) -> Answer<T> {
        let slot = Arc::new(Mutex::new(None));
        let answer = Arc::clone(&slot);
        let op = make(Box::new(move |result| *answer.lock().unwrap() = Some(result)));
        assert!(self.control.push(op).is_ok(), "the control ring is full");
        slot
    }

    pub fn control<T: Send + 'static>(
        &mut self,
        make: impl FnOnce(Box<dyn FnOnce(Result<T, PoolError>) + Send>) -> ControlOp,
    ) -> Result<T, PoolError> {
        let slot = self.push_control(make);
        for _ in 0..1000 {
            self.owner.poll();
            if let Some(result) = slot.lock().unwrap().take() {
                return result;
            }
        }
        panic!("control operation not answered after 1000 polls");
    }

    pub fn try_create_volume(&mut self, name: &str, blocks: u64) -> Result<VolumeId, PoolError> {
        let name = name.to_string();
        self.control(|done| ControlOp::CreateVolume {
            uuid: [1; 16],
            name,
            size_bytes: blocks * u64::from(BLOCK),
            done,
        })
    }

    pub fn create_volume(&mut self, name: &str, blocks: u64) -> VolumeId {
        self.try_create_volume(name, blocks).unwrap()
    }

    pub fn snapshot(&mut self, origin: VolumeId, name: &str) -> VolumeId {
        let name = name.to_string();
        self.control(|done| ControlOp::Snapshot { origin, uuid: [2; 16], name, done }).unwrap()
    }

    pub fn channel(&self, volume: VolumeId) -> Channel {
        let view = self.shared.view(volume).unwrap();
        let limits = PoolLimits::PRODUCTION;
        VolumeChannel::open(
            Arc::clone(&self.shared),
            view,
            &self.device,
            self.geometry,
            limits,
            NoopWaker,
        )
        .unwrap()
    }

    /// Commits, then checks the metadata on the device as `thinctl check` does: checksums,
    /// structure, committed counts = committed references. Every test ends with it.
    pub fn check(&mut self) {
        let commit = self.control(|done| ControlOp::Commit { done });
        assert_eq!(commit, Ok(()));
        if let Err(problems) = check(&mut metadata_reader(&self.device)) {
            panic!("thinctl check failed: {problems:#?}");
        }
    }

    /// Submits and runs owner and channel until the request completes (or panics).
    pub fn run(&mut self, channel: &mut Channel, request: IoRequest) -> IoCompletion {
        channel.submit(request).unwrap();
        self.wait(channel, 1000).expect("the request did not complete")
    }

    /// Polls owner and channel up to `rounds` times; the first completion, if any.
    pub fn wait(&mut self, channel: &mut Channel, rounds: usize) -> Option<IoCompletion> {
        for _ in 0..rounds {
            let mut done = None;
            channel.poll(&mut |c| done = Some(c));
            if done.is_some() {
                return done;
            }
            self.owner.poll();
        }
        None
    }

    /// Polls the owner until `answer` is given (at most `rounds` polls).
    pub fn answer<T>(&mut self, answer: &Answer<T>, rounds: usize) -> Option<Result<T, PoolError>> {
        for _ in 0..rounds {
            if let Some(result) = answer.lock().unwrap().take() {
                return Some(result);
            }
            self.owner.poll();
        }
        answer.lock().unwrap().take()
    }

    /// Commits every change so far (the pool answers a FLUSH the same way).
    pub fn commit(&mut self) {
        assert_eq!(self.control(|done| ControlOp::Commit { done }), Ok(()));
    }

    /// The first LBA of the data area: below it lies the metadata region.
    pub fn metadata_region_lbas(&self) -> u64 {
        self.geometry.data_offset_lbas
    }

    /// The device LBA where data block `block` starts.
    pub fn data_lba(&self, block: u64) -> u64 {
        self.geometry.data_offset_lbas + block * LBAS_PER_BLOCK
    }
}

/// Reads metadata blocks from what `device` holds now, as `thinctl` reads a file.
pub fn metadata_reader(
    device: &SimDevice,
) -> impl FnMut(MetaBlock, &mut [u8]) -> std::io::Result<()> + '_ {
    let lbas = (METADATA_BLOCK_BYTES / LBA as usize) as u64;
    move |block: MetaBlock, out: &mut [u8]| {
        out.copy_from_slice(&device.read_content(block.0 * lbas, lbas));
        Ok(())
    }
}

pub fn block_data(byte: u8, blocks: u64) -> SgList {
    let mut buffer = IoBuffer::new((blocks * u64::from(BLOCK)) as usize);
    buffer.as_mut_slice().fill(byte);
    SgList::single(buffer)
}

pub fn write(vblock: u64, byte: u8) -> IoRequest {
    IoRequest::new(IoKind::Write, vblock * LBAS_PER_BLOCK, LBAS_PER_BLOCK, 0)
        .with_buffers(block_data(byte, 1))
}

pub fn read(vblock: u64) -> IoRequest {
    IoRequest::new(IoKind::Read, vblock * LBAS_PER_BLOCK, LBAS_PER_BLOCK, 0)
        .with_buffers(block_data(0xee, 1))
}

/// A write of `lbas` sectors at `lba_in_block` inside virtual block `vblock`.
pub fn partial_write(vblock: u64, lba_in_block: u64, lbas: u64, byte: u8) -> IoRequest {
    let mut buffer = IoBuffer::new((lbas * u64::from(LBA)) as usize);
    buffer.as_mut_slice().fill(byte);
    IoRequest::new(IoKind::Write, vblock * LBAS_PER_BLOCK + lba_in_block, lbas, 0)
        .with_buffers(SgList::single(buffer))
}

pub fn bytes_of(completion: &IoCompletion) -> Vec<u8> {
    let mut out = vec![0; completion.request.buffers.len_bytes()];
    completion.request.buffers.copy_to(0, &mut out);
    out
}

pub fn unmap(vblock: u64, blocks: u64) -> IoRequest {
    IoRequest::new(IoKind::Unmap, vblock * LBAS_PER_BLOCK, blocks * LBAS_PER_BLOCK, 0)
}

pub fn flush() -> IoRequest {
    IoRequest::new(IoKind::Flush, 0, 0, 0)
}

/// Block `vblock` read through `channel` is `byte` throughout.
pub fn assert_reads(rig: &mut Rig, channel: &mut Channel, vblock: u64, byte: u8) {
    let done = rig.run(channel, read(vblock));
    assert_eq!(done.status, IoStatus::Success, "read of block {vblock}");
    assert_eq!(bytes_of(&done), vec![byte; BLOCK as usize], "block {vblock}");
}

/// Fills every data block but one through volume `filler`, so the next provision in the pool
/// can only take the last block.
pub fn fill_all_but_one(rig: &mut Rig, data_blocks: u64) -> (VolumeId, Channel) {
    let filler = rig.create_volume("filler", data_blocks);
    let mut channel = rig.channel(filler);
    for vblock in 0..data_blocks - 1 {
        let done = rig.run(&mut channel, write(vblock, 0x11));
        assert_eq!(done.status, IoStatus::Success);
    }
    (filler, channel)
}

pub fn passdowns(rig: &Rig) -> u64 {
    rig.shared.counters.passdowns_completed.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn commits(rig: &Rig) -> u64 {
    rig.shared.counters.commits.load(std::sync::atomic::Ordering::Relaxed)
}

/// Commits `meta` straight onto `device` as the owner would (blocks, flush, superblock,
/// flush), for tests that build a pool's metadata by hand before starting its owner.
pub fn commit_directly(device: &SimDevice, meta: &mut PoolMetadata) {
    use bdev_thin::host::BlockDevice;
    let plan = meta.begin_commit();
    let mut channel = device.open_channel().unwrap();
    let lbas_per_block = (METADATA_BLOCK_BYTES / LBA as usize) as u64;
    let mut submit = |request: IoRequest| {
        channel.submit(request).unwrap();
        let mut status = None;
        channel.poll(&mut |c| status = Some(c.status));
        assert_eq!(status, Some(IoStatus::Success));
    };
    let write_block = |block: MetaBlock, bytes: &[u8]| {
        let mut buffer = IoBuffer::new(bytes.len());
        buffer.as_mut_slice().copy_from_slice(bytes);
        IoRequest::new(IoKind::Write, block.0 * lbas_per_block, lbas_per_block, 0)
            .with_buffers(SgList::single(buffer))
    };
    for (block, bytes) in &plan.blocks {
        submit(write_block(*block, bytes));
    }
    submit(flush());
    submit(write_block(plan.superblock.0, &plan.superblock.1));
    submit(flush());
    meta.commit_done();
}
