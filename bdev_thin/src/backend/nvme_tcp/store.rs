//! Command data as the queue pairs' owners keep it: the admin queue's pages (Identify, log
//! pages, Connect data) and an IO queue pair's requests (their scatter-gather lists), Dataset
//! Management range lists and Connect data. Each is a [`DataStore`]: a queue pair reads and
//! fills command data through it by [`DataRef`], never holding a reference across polls.
//! Everything is allocated when the queue pair is built; nothing per command.

use super::queue::{DataRef, DataStore};
use crate::host::{IoBuffer, IoRequest, IoStatus, SgList};
use crate::limits;
use crate::nvme::command::{DSM_RANGE_BYTES, DSM_RANGES_MAX};
use crate::nvme::fabrics::CONNECT_DATA_BYTES;
use crate::nvme::identify::IDENTIFY_BYTES;

/// The contiguous run of `list` that holds byte `position`, at most `max` bytes long.
fn sg_run(list: &SgList, mut position: usize, max: usize) -> &[u8] {
    for segment in list.segments() {
        let bytes = segment.as_slice();
        if position < bytes.len() {
            let end = bytes.len().min(position + max);
            return &bytes[position..end];
        }
        position -= bytes.len();
    }
    &[]
}

fn sg_run_mut(list: &mut SgList, mut position: usize, max: usize) -> &mut [u8] {
    for segment in list.segments_mut() {
        let len = segment.len();
        if position < len {
            let end = len.min(position + max);
            return &mut segment.as_mut_slice()[position..end];
        }
        position -= len;
    }
    &mut []
}

/// The bytes of `data` from `at` within one buffer, or nothing if out of range.
fn buffer_run(buffer: &IoBuffer, data: DataRef, at: u32) -> &[u8] {
    let start = (data.offset + at) as usize;
    let end = (data.offset + data.len) as usize;
    buffer.as_slice().get(start..end).unwrap_or(&[])
}

fn buffer_run_mut(buffer: &mut IoBuffer, data: DataRef, at: u32) -> &mut [u8] {
    let start = (data.offset + at) as usize;
    let end = (data.offset + data.len) as usize;
    buffer.as_mut_slice().get_mut(start..end).unwrap_or(&mut [])
}

/// The admin queue's buffers: one page for the command in progress (the attach sequence and
/// rescans send one data command at a time) and the Connect data.
pub(super) struct AdminStore {
    pub page: IoBuffer,
    pub connect: IoBuffer,
}

impl AdminStore {
    pub const PAGE: u32 = 0;
    pub const CONNECT: u32 = 1;

    pub fn new() -> AdminStore {
        AdminStore {
            page: IoBuffer::new(IDENTIFY_BYTES),
            connect: IoBuffer::new(CONNECT_DATA_BYTES),
        }
    }

    pub fn page_ref() -> DataRef {
        DataRef { key: Self::PAGE, offset: 0, len: IDENTIFY_BYTES as u32 }
    }

    pub fn connect_ref() -> DataRef {
        DataRef { key: Self::CONNECT, offset: 0, len: CONNECT_DATA_BYTES as u32 }
    }

    /// The page as the fixed-size array the decoders take.
    pub fn page_bytes(&self) -> &[u8; IDENTIFY_BYTES] {
        self.page.as_slice().try_into().expect("the page is IDENTIFY_BYTES long")
    }

    fn buffer(&self, key: u32) -> Option<&IoBuffer> {
        match key {
            Self::PAGE => Some(&self.page),
            Self::CONNECT => Some(&self.connect),
            _ => None,
        }
    }
}

impl DataStore for AdminStore {
    fn run(&self, data: DataRef, at: u32) -> &[u8] {
        self.buffer(data.key).map_or(&[], |b| buffer_run(b, data, at))
    }

    fn run_mut(&mut self, data: DataRef, at: u32) -> &mut [u8] {
        let buffer = match data.key {
            Self::PAGE => &mut self.page,
            Self::CONNECT => &mut self.connect,
            _ => return &mut [],
        };
        buffer_run_mut(buffer, data, at)
    }
}

/// Where a request stands in its queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RequestState {
    /// Commands left to issue (it sits in the queue pair's issue queue).
    Issuing,
    /// Every command issued; answers awaited.
    Issued,
    /// Answered; waits for its channel to take it.
    Done,
    /// Its channel closed: dropped when its commands are answered.
    Orphaned,
}

/// A bdev IO held by an IO queue pair while its NVMe commands are in flight.
pub(super) struct RequestSlot {
    pub request: IoRequest,
    pub channel: u16,
    pub nsid: u32,
    pub block_bytes: u32,
    /// Submission order, to reissue in order after a reconnect.
    pub sequence: u64,
    /// Blocks (from the request's start) that commands have been issued for.
    pub issued_blocks: u64,
    pub outstanding: u16,
    pub status: IoStatus,
    pub state: RequestState,
}

/// An IO queue pair's command data.
pub(super) struct IoStore {
    pub requests: Vec<Option<RequestSlot>>,
    free_requests: Vec<u16>,
    pub dsm: Vec<IoBuffer>,
    free_dsm: Vec<u16>,
    pub connect: IoBuffer,
}

impl IoStore {
    /// Keys from here on name DSM range buffers; below, requests.
    pub const DSM_KEY_BASE: u32 = 1 << 16;
    pub const CONNECT_KEY: u32 = 2 << 16;
    /// Bytes of one DSM range list buffer (the most ranges one command carries).
    pub const DSM_BUFFER_BYTES: usize = DSM_RANGES_MAX * DSM_RANGE_BYTES;

    pub fn new() -> IoStore {
        let requests = limits::NVME_REQUESTS_PER_QPAIR_MAX;
        let dsm = limits::NVME_DSM_BUFFERS_PER_QPAIR;
        IoStore {
            requests: (0..requests).map(|_| None).collect(),
            free_requests: (0..requests as u16).rev().collect(),
            dsm: (0..dsm).map(|_| IoBuffer::new(Self::DSM_BUFFER_BYTES)).collect(),
            free_dsm: (0..dsm as u16).rev().collect(),
            connect: IoBuffer::new(CONNECT_DATA_BYTES),
        }
    }

    /// Holds `slot`; `None` when the table is full.
    pub fn take_request(&mut self, slot: RequestSlot) -> Result<u16, RequestSlot> {
        let Some(index) = self.free_requests.pop() else { return Err(slot) };
        self.requests[usize::from(index)] = Some(slot);
        Ok(index)
    }

    pub fn release_request(&mut self, index: u16) -> Option<RequestSlot> {
        let slot = self.requests.get_mut(usize::from(index))?.take()?;
        self.free_requests.push(index);
        Some(slot)
    }

    pub fn request_mut(&mut self, index: u16) -> Option<&mut RequestSlot> {
        self.requests.get_mut(usize::from(index))?.as_mut()
    }

    pub fn take_dsm(&mut self) -> Option<u16> {
        self.free_dsm.pop()
    }

    pub fn release_dsm(&mut self, index: u16) {
        debug_assert!(!self.free_dsm.contains(&index));
        self.free_dsm.push(index);
    }

    pub fn connect_ref() -> DataRef {
        DataRef { key: Self::CONNECT_KEY, offset: 0, len: CONNECT_DATA_BYTES as u32 }
    }
}

impl DataStore for IoStore {
    fn run(&self, data: DataRef, at: u32) -> &[u8] {
        if at >= data.len {
            return &[];
        }
        match data.key {
            Self::CONNECT_KEY => buffer_run(&self.connect, data, at),
            key if key >= Self::DSM_KEY_BASE => self
                .dsm
                .get((key - Self::DSM_KEY_BASE) as usize)
                .map_or(&[], |b| buffer_run(b, data, at)),
            key => self.requests.get(key as usize).and_then(Option::as_ref).map_or(&[], |r| {
                sg_run(&r.request.buffers, (data.offset + at) as usize, (data.len - at) as usize)
            }),
        }
    }

    fn run_mut(&mut self, data: DataRef, at: u32) -> &mut [u8] {
        if at >= data.len {
            return &mut [];
        }
        match data.key {
            Self::CONNECT_KEY => buffer_run_mut(&mut self.connect, data, at),
            key if key >= Self::DSM_KEY_BASE => self
                .dsm
                .get_mut((key - Self::DSM_KEY_BASE) as usize)
                .map_or(&mut [], |b| buffer_run_mut(b, data, at)),
            key => match self.requests.get_mut(key as usize).and_then(Option::as_mut) {
                Some(r) => sg_run_mut(
                    &mut r.request.buffers,
                    (data.offset + at) as usize,
                    (data.len - at) as usize,
                ),
                None => &mut [],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::IoKind;

    #[test]
    fn runs_follow_segments() {
        let mut list = SgList::single(IoBuffer::new(4096));
        list.push(IoBuffer::new(4096)).unwrap();
        list.copy_from(4090, &[7u8; 12]);
        let request = IoRequest::new(IoKind::Read, 0, 16, 0).with_buffers(list);
        let mut store = IoStore::new();
        let slot = RequestSlot {
            request,
            channel: 0,
            nsid: 1,
            block_bytes: 512,
            sequence: 0,
            issued_blocks: 0,
            outstanding: 0,
            status: IoStatus::Success,
            state: RequestState::Issuing,
        };
        let index = store.take_request(slot).ok().unwrap();
        let data = DataRef { key: u32::from(index), offset: 4000, len: 200 };
        assert_eq!(store.run(data, 0).len(), 96, "to the end of the first segment");
        assert_eq!(store.run(data, 96).len(), 104, "then the second, to the end of the data");
        assert_eq!(&store.run(data, 90)[..6], &[7u8; 6]);
        assert!(store.run(data, 200).is_empty());
        super::super::queue::copy_into(&mut store, data, 95, &[9, 9]);
        assert_eq!(store.run(data, 95)[0], 9);
        assert_eq!(store.run(data, 96)[0], 9);
        let dsm = DataRef { key: IoStore::DSM_KEY_BASE, offset: 0, len: 32 };
        assert_eq!(store.run(dsm, 0).len(), 32);
        let missing = DataRef { key: IoStore::DSM_KEY_BASE + 999, offset: 0, len: 32 };
        assert!(store.run(missing, 0).is_empty());
    }
}
