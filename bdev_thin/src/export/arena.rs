//! A connection's data buffer: one aligned allocation handed out in pieces, first fit, each a
//! multiple of the IO alignment, so requests in flight share a bounded amount of memory and a
//! full arena is back-pressure (the connection stops reading) rather than an allocation.
//!
//! Pieces come back whole (their owner joins any parts it split off first) and merge with free
//! neighbours. Never allocates after creation: the free list holds at most one more piece than
//! are handed out, which the owner's slot count bounds. Owned by one connection on one core.

use crate::host::IoBuffer;
use crate::limits;

pub struct Arena {
    /// Free pieces and their offsets, sorted by offset, never adjacent.
    free: Vec<(u32, IoBuffer)>,
    bytes: usize,
}

impl Arena {
    /// An arena of `bytes` (at most 4 GiB) for up to `pieces_max` pieces out at once.
    pub fn new(bytes: usize, pieces_max: usize) -> Arena {
        let mut free = Vec::with_capacity(pieces_max + 2);
        free.push((0, IoBuffer::new(bytes)));
        Arena { free, bytes }
    }

    pub fn capacity_bytes(&self) -> usize {
        self.bytes
    }

    /// A piece of at least `len_bytes` (rounded up to the alignment) and its offset, or `None`
    /// while no free piece is large enough.
    pub fn alloc(&mut self, len_bytes: usize) -> Option<(u32, IoBuffer)> {
        let want = len_bytes.max(1).next_multiple_of(limits::IO_BUFFER_ALIGN_BYTES);
        let index = self.free.iter().position(|(_, b)| b.len() >= want)?;
        if self.free[index].1.len() == want {
            return Some(self.free.remove(index));
        }
        let (offset, buffer) = &mut self.free[index];
        let tail = buffer.split_off(want);
        let head = std::mem::replace(buffer, tail);
        let head_offset = *offset;
        *offset += want as u32; // below the arena's size, a u32 by `new`'s contract
        Some((head_offset, head))
    }

    /// Gives a piece back (whole, at the offset `alloc` returned).
    pub fn free(&mut self, offset: u32, mut buffer: IoBuffer) {
        let index = self.free.partition_point(|(o, _)| *o < offset);
        let end = offset as usize + buffer.len();
        let joins_next = self.free.get(index).is_some_and(|(o, _)| *o as usize == end);
        if joins_next {
            let (_, next) = self.free.remove(index);
            if let Err(next) = buffer.unsplit(next) {
                debug_assert!(false, "adjacent arena pieces share their allocation");
                drop(next);
            }
        }
        if index > 0 {
            let (prev_offset, prev) = &mut self.free[index - 1];
            if *prev_offset as usize + prev.len() == offset as usize {
                match prev.unsplit(buffer) {
                    Ok(()) => return,
                    Err(back) => buffer = back,
                }
            }
        }
        self.free.insert(index, (offset, buffer));
    }

    /// Whether every piece is back (a single free piece spans the arena).
    pub fn is_whole(&self) -> bool {
        self.free.len() == 1 && self.free[0].1.len() == self.bytes.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_aligned_pieces_and_merges_them_back() {
        let align = limits::IO_BUFFER_ALIGN_BYTES;
        let mut arena = Arena::new(16 * align, 8);
        let (a_offset, a) = arena.alloc(1).unwrap();
        let (b_offset, b) = arena.alloc(3 * align).unwrap();
        let (c_offset, c) = arena.alloc(align + 1).unwrap();
        assert_eq!((a_offset, b_offset, c_offset), (0, align as u32, 4 * align as u32));
        assert_eq!((a.len(), b.len(), c.len()), (align, 3 * align, 2 * align));
        assert!(arena.alloc(11 * align).is_none(), "only 10 pages are left");
        arena.free(b_offset, b);
        arena.free(a_offset, a);
        assert_eq!(arena.free.len(), 2, "a and b merged");
        arena.free(c_offset, c);
        assert!(arena.is_whole(), "everything merged");
        let (offset, whole) = arena.alloc(16 * align).unwrap();
        assert_eq!((offset, whole.len()), (0, 16 * align));
    }
}
