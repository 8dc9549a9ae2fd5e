//! Writes data into thin volumes in-process, for the daemon tests while `thin_tgt` has no data
//! frontend of its own: a runtime loads a saved config (pools come back by examine), a poller
//! writes 4 KiB at each given LBA of each volume, and the runtime stops, which commits every
//! pool as `thin_tgt`'s stop does.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};

use bdev_thin::bdev::{Bdev, BdevChannel};
use bdev_thin::host::{DeviceChannel, IoBuffer, IoKind, IoRequest, PollStatus, Poller, SgList};
use bdev_thin::runtime::{CoreMask, Runtime, RuntimeOptions};
use bdev_thin::target::Target;
use serde_json::Value;

use super::BOUND;

struct Writer {
    bdev: Arc<Bdev>,
    lbas: Vec<u64>,
    channel: Option<BdevChannel>,
    submitted: usize,
    completed: usize,
    failed: usize,
    done: Option<Sender<usize>>,
}

impl Poller for Writer {
    fn poll(&mut self) -> PollStatus {
        if self.done.is_none() {
            return PollStatus::Idle;
        }
        let channel = self
            .channel
            .get_or_insert_with(|| self.bdev.open_channel().expect("a channel on the volume"));
        while self.submitted < self.lbas.len() {
            let mut buffer = IoBuffer::new(4096);
            buffer.as_mut_slice().fill(0x5a);
            let lba = self.lbas[self.submitted];
            let request =
                IoRequest::new(IoKind::Write, lba, 1, lba).with_buffers(SgList::single(buffer));
            if channel.submit(request).is_err() {
                break;
            }
            self.submitted += 1;
        }
        let (mut completed, mut failed) = (0, 0);
        channel.poll(&mut |completion| {
            completed += 1;
            failed += usize::from(!completion.status.is_success());
        });
        self.completed += completed;
        self.failed += failed;
        if self.completed == self.lbas.len()
            && let Some(done) = self.done.take()
        {
            let _ = done.send(self.failed);
        }
        PollStatus::busy_if(completed > 0)
    }

    fn is_finished(&self) -> bool {
        self.done.is_none()
    }

    fn prepare_park(&mut self) -> bool {
        self.channel.as_mut().is_none_or(|c| c.prepare_park())
    }
}

/// Loads `config`, writes 4 KiB (4096-byte LBAs) at `lbas` of each named volume, and returns
/// `bdev_thin_get_volumes` as seen before the stop that commits them.
pub fn write_volumes(config: &Path, writes: &[(&str, &[u64])]) -> Value {
    let runtime = Runtime::start(RuntimeOptions {
        mask: CoreMask(0b1),
        park: true,
        pin: false,
        idle_before_park_us: 200,
        ..Default::default()
    })
    .expect("runtime");
    let target = Target::new(runtime.handle());
    bdev_thin::config::load(&target, config).expect("the saved config loads");
    for (volume, lbas) in writes {
        let bdev = target.bdevs.get(volume).expect("the volume came back by examine");
        let lbas = lbas.to_vec();
        let (sender, receiver) = channel();
        let sent = target.runtime.send(0, move |ctx| {
            let writer = Writer {
                bdev,
                lbas,
                channel: None,
                submitted: 0,
                completed: 0,
                failed: 0,
                done: Some(sender),
            };
            ctx.add_local_poller(Box::new(writer));
        });
        assert!(sent.is_ok());
        assert_eq!(receiver.recv_timeout(BOUND).expect("the writes complete"), 0, "{volume}");
    }
    let volumes = bdev_thin::rpc::call_blocking(&target, "bdev_thin_get_volumes", None)
        .unwrap_or_else(|e| panic!("bdev_thin_get_volumes: {}", e.message));
    drop(target);
    runtime.stop();
    volumes
}
