//! The channel of devices that finish every IO at submission (`malloc`, `null`): the device's
//! store does the IO inside `submit`, and the completion is delivered at the channel's next
//! poll, so a submitter is never re-entered from `submit`. Completions wait in a queue
//! bounded by the channel depth; a full queue refuses the IO (back-pressure). A channel
//! belongs to the core that opened it.

use std::collections::VecDeque;

use crate::host::{DeviceChannel, DeviceInfo, IoCompletion, IoRequest, IoStatus};
use crate::limits;

/// What an instant device does with an IO.
pub trait InstantStore: 'static {
    /// Does `request`, already checked against the device's geometry, and says how it went.
    fn execute(&self, request: &mut IoRequest) -> IoStatus;
}

/// A channel of an instant device: its store, the geometry it had when the channel opened, and
/// the completions the next poll delivers.
pub struct InstantChannel<S> {
    info: DeviceInfo,
    store: S,
    completions: VecDeque<IoCompletion>,
}

impl<S: InstantStore> InstantChannel<S> {
    pub(crate) fn new(info: DeviceInfo, store: S) -> InstantChannel<S> {
        InstantChannel {
            info,
            store,
            completions: VecDeque::with_capacity(limits::DEVICE_CHANNEL_DEPTH_MAX),
        }
    }
}

impl<S: InstantStore> DeviceChannel for InstantChannel<S> {
    #[inline]
    fn submit(&mut self, mut request: IoRequest) -> Result<(), IoRequest> {
        if self.completions.len() >= limits::DEVICE_CHANNEL_DEPTH_MAX {
            return Err(request);
        }
        let status = match request.validate(self.info.block_size_bytes, self.info.num_blocks) {
            Err(status) => status,
            Ok(()) => self.store.execute(&mut request),
        };
        self.completions.push_back(IoCompletion { request, status });
        Ok(())
    }

    #[inline]
    fn poll(&mut self, complete: &mut impl FnMut(IoCompletion)) -> usize {
        // Only what was queued before this poll: a completion handler that submits again
        // sees its IO completed at the next poll, as with any other device.
        let count = self.completions.len();
        for _ in 0..count {
            if let Some(completion) = self.completions.pop_front() {
                complete(completion);
            }
        }
        count
    }

    fn in_flight(&self) -> usize {
        self.completions.len()
    }
}
