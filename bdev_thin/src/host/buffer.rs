//! IO buffers: aligned heap memory that an in-flight IO owns until it completes.
//!
//! An [`IoBuffer`] is a view of one aligned allocation. Views are created whole and only ever
//! split into disjoint pieces (`split_off`) or joined back (`unsplit`), so no two live views
//! overlap: `&mut IoBuffer` is exclusive access to its bytes, on any core. The allocation is
//! shared through an `Arc`, so splitting and joining never allocate; the memory is freed when
//! the last piece is dropped. Every buffer starts at a multiple of
//! [`limits::IO_BUFFER_ALIGN_BYTES`] from an aligned base, which O_DIRECT requires.
//!
//! This module is one of the few allowed `unsafe`: raw allocation and the slices over it.
#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::ptr::NonNull;
use std::sync::Arc;

use arrayvec::ArrayVec;

use crate::limits;

struct Storage {
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY: `Storage` owns a plain heap allocation with no thread affinity; the bytes are only
// reached through `IoBuffer` views, which are disjoint, so sharing the owner is sound.
unsafe impl Send for Storage {}
// SAFETY: as above; `Storage` itself exposes no access to the bytes.
unsafe impl Sync for Storage {}

impl Drop for Storage {
    fn drop(&mut self) {
        // SAFETY: `base` was returned by `alloc_zeroed(self.layout)` and is freed exactly once,
        // here, when the last view (the last `Arc`) is gone.
        unsafe { dealloc(self.base.as_ptr(), self.layout) }
    }
}

/// An owned, aligned byte buffer, or a disjoint piece of one.
pub struct IoBuffer {
    storage: Arc<Storage>,
    offset: u32,
    len: u32,
}

impl std::fmt::Debug for IoBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuffer").field("offset", &self.offset).field("len", &self.len).finish()
    }
}

impl IoBuffer {
    /// A zeroed buffer of `len_bytes`, aligned to [`limits::IO_BUFFER_ALIGN_BYTES`]. Allocates:
    /// call when a channel, job or connection is set up, never per IO.
    pub fn new(len_bytes: usize) -> Self {
        let len = u32::try_from(len_bytes).expect("IO buffers are smaller than 4 GiB by limits");
        let size = len_bytes.max(1).next_multiple_of(limits::IO_BUFFER_ALIGN_BYTES);
        let layout = Layout::from_size_align(size, limits::IO_BUFFER_ALIGN_BYTES)
            .expect("size is a multiple of a power-of-two alignment");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(base) = NonNull::new(raw) else { handle_alloc_error(layout) };
        Self { storage: Arc::new(Storage { base, layout }), offset: 0, len }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *const u8 {
        // SAFETY: `offset` is within the allocation (views only shrink inside it).
        unsafe { self.storage.base.as_ptr().add(self.offset as usize) }
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: as in `as_ptr`.
        unsafe { self.storage.base.as_ptr().add(self.offset as usize) }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the range [offset, offset+len) lies in the live allocation and no other view
        // overlaps it; `&self` forbids a concurrent `&mut` to this view.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only access to the range.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), len) }
    }

    /// Splits off the bytes from `at` on into a new view, keeping `[0, at)`. Never allocates.
    pub fn split_off(&mut self, at: usize) -> IoBuffer {
        assert!(at <= self.len(), "split point {at} beyond buffer of {}", self.len);
        let at = at as u32; // fits: at <= len, a u32
        let tail = IoBuffer {
            storage: Arc::clone(&self.storage),
            offset: self.offset + at,
            len: self.len - at,
        };
        self.len = at;
        tail
    }

    /// Joins `next` back onto the end of `self` if it is the piece that directly follows it in
    /// the same allocation; otherwise hands it back.
    pub fn unsplit(&mut self, next: IoBuffer) -> Result<(), IoBuffer> {
        if Arc::ptr_eq(&self.storage, &next.storage) && self.offset + self.len == next.offset {
            self.len += next.len;
            Ok(())
        } else {
            Err(next)
        }
    }
}

/// A scatter-gather list: the buffers of one IO, in order.
#[derive(Debug, Default)]
pub struct SgList {
    segments: ArrayVec<IoBuffer, { limits::IO_SEGMENTS_MAX }>,
}

impl SgList {
    pub const fn new() -> Self {
        Self { segments: ArrayVec::new_const() }
    }

    pub fn single(buffer: IoBuffer) -> Self {
        let mut list = Self::new();
        list.segments.push(buffer);
        list
    }

    /// Appends a segment, joining it to the last one when they are adjacent pieces.
    pub fn push(&mut self, buffer: IoBuffer) -> Result<(), IoBuffer> {
        let buffer = match self.segments.last_mut() {
            Some(last) => match last.unsplit(buffer) {
                Ok(()) => return Ok(()),
                Err(buffer) => buffer,
            },
            None => buffer,
        };
        self.segments.try_push(buffer).map_err(|e| e.element())
    }

    /// Appends every segment of `other` (joining adjacent pieces).
    pub fn append(&mut self, other: SgList) -> Result<(), SgList> {
        let mut rest = other.segments.into_iter();
        while let Some(segment) = rest.next() {
            if let Err(segment) = self.push(segment) {
                let mut back = SgList::new();
                back.segments.push(segment);
                back.segments.extend(rest);
                return Err(back);
            }
        }
        Ok(())
    }

    pub fn segments(&self) -> &[IoBuffer] {
        &self.segments
    }

    pub fn segments_mut(&mut self) -> &mut [IoBuffer] {
        &mut self.segments
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn take(&mut self) -> SgList {
        std::mem::take(self)
    }

    pub fn len_bytes(&self) -> usize {
        self.segments.iter().map(IoBuffer::len).sum()
    }

    /// Splits the list at byte `at`: `self` keeps `[0, at)`, the result holds the rest.
    /// Returns `None` (and changes nothing) if the split would need more segments than a list
    /// holds.
    pub fn split_off(&mut self, at: usize) -> Option<SgList> {
        let mut seen = 0usize;
        for index in 0..self.segments.len() {
            let len = self.segments[index].len();
            if seen + len > at {
                let inner = at - seen;
                let mut tail = SgList::new();
                if inner == 0 {
                    tail.segments.extend(self.segments.drain(index..));
                } else {
                    if self.segments.len() - index + 1 > limits::IO_SEGMENTS_MAX {
                        return None;
                    }
                    let piece = self.segments[index].split_off(inner);
                    tail.segments.push(piece);
                    tail.segments.extend(self.segments.drain(index + 1..));
                }
                return Some(tail);
            }
            seen += len;
        }
        Some(SgList::new())
    }

    /// Takes the first segment out of the list.
    pub fn pop_front(&mut self) -> Option<IoBuffer> {
        if self.segments.is_empty() { None } else { Some(self.segments.remove(0)) }
    }

    /// Appends `other`, joining each of its segments onto the last one where they are adjacent
    /// pieces of one allocation (undoing [`SgList::split_off`]), so a list split into many
    /// pieces comes back with its original segment count. A list that would exceed
    /// `IO_SEGMENTS_MAX` is left unchanged and `other` handed back.
    pub fn rejoin(&mut self, mut other: SgList) -> Result<(), SgList> {
        let mut extra = other.segments.len();
        if let (Some(last), Some(first)) = (self.segments.last(), other.segments.first())
            && Arc::ptr_eq(&last.storage, &first.storage)
            && last.offset + last.len == first.offset
        {
            extra -= 1;
        }
        if self.segments.len() + extra > limits::IO_SEGMENTS_MAX {
            return Err(other);
        }
        for segment in other.segments.drain(..) {
            match self.segments.last_mut() {
                Some(last) => {
                    if let Err(segment) = last.unsplit(segment) {
                        self.segments.push(segment);
                    }
                }
                None => self.segments.push(segment),
            }
        }
        Ok(())
    }

    /// Copies bytes of the list starting at byte `offset` into `out`.
    pub fn copy_to(&self, mut offset: usize, out: &mut [u8]) {
        let mut done = 0;
        for segment in &self.segments {
            if done == out.len() {
                break;
            }
            let bytes = segment.as_slice();
            if offset >= bytes.len() {
                offset -= bytes.len();
                continue;
            }
            let n = (bytes.len() - offset).min(out.len() - done);
            out[done..done + n].copy_from_slice(&bytes[offset..offset + n]);
            done += n;
            offset = 0;
        }
    }

    /// Copies `input` into the list starting at byte `offset`.
    pub fn copy_from(&mut self, mut offset: usize, input: &[u8]) {
        let mut done = 0;
        for segment in &mut self.segments {
            if done == input.len() {
                break;
            }
            let bytes = segment.as_mut_slice();
            if offset >= bytes.len() {
                offset -= bytes.len();
                continue;
            }
            let n = (bytes.len() - offset).min(input.len() - done);
            bytes[offset..offset + n].copy_from_slice(&input[done..done + n]);
            done += n;
            offset = 0;
        }
    }

    /// Takes the segments out, first to last (pools that keep buffers apart put them back).
    pub fn into_segments(self) -> impl Iterator<Item = IoBuffer> {
        self.segments.into_iter()
    }

    /// Sets every byte to `value`.
    pub fn fill(&mut self, value: u8) {
        for segment in &mut self.segments {
            segment.as_mut_slice().fill(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        let buffer = IoBuffer::new(8192);
        assert_eq!(buffer.as_ptr() as usize % limits::IO_BUFFER_ALIGN_BYTES, 0);
        assert!(buffer.as_slice().iter().all(|&b| b == 0));
    }

    #[test]
    fn split_and_unsplit_round_trip() {
        let mut head = IoBuffer::new(16384);
        head.as_mut_slice()[4096] = 7;
        let mut tail = head.split_off(4096);
        assert_eq!(head.len(), 4096);
        assert_eq!(tail.len(), 12288);
        assert_eq!(tail.as_slice()[0], 7);
        tail.as_mut_slice()[1] = 9;
        head.unsplit(tail).expect("adjacent pieces join");
        assert_eq!(head.len(), 16384);
        assert_eq!(head.as_slice()[4097], 9);
    }

    #[test]
    fn unsplit_refuses_strangers_and_gaps() {
        let mut a = IoBuffer::new(4096);
        let b = IoBuffer::new(4096);
        assert!(a.unsplit(b).is_err());
        let mut c = IoBuffer::new(12288);
        let mut d = c.split_off(4096);
        let e = d.split_off(4096);
        assert!(c.unsplit(e).is_err());
    }

    #[test]
    fn sg_list_split_and_copy() {
        let mut list = SgList::single(IoBuffer::new(4096));
        list.push(IoBuffer::new(4096)).unwrap();
        list.copy_from(4000, &[1u8; 200]);
        let mut tail = list.split_off(6000).unwrap();
        assert_eq!(list.len_bytes(), 6000);
        assert_eq!(tail.len_bytes(), 2192);
        let mut out = [0u8; 200];
        list.copy_to(4000, &mut out);
        assert_eq!(out, [1u8; 200]);
        tail.fill(3);
        list.append(tail).unwrap();
        assert_eq!(list.segments().len(), 2, "the split piece joins back");
        assert_eq!(list.len_bytes(), 8192);
    }
}
