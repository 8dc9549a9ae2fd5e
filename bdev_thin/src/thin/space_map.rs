//! Data-block allocation beside the reference counts: holds, reservations and grace periods,
//! all in memory, never in the map that commits (DESIGN.md "Discard with passdown", steps 3
//! and 6, and the allocation rule). Owned and touched only by the pool owner.
//!
//! A block is handed out only if its count is zero in the open transaction *and* in the last
//! committed one, and it is neither held (a passdown deallocate is pending or in flight),
//! reserved (allocated for a provision or copy whose mapping is not inserted yet), nor inside
//! its grace period. Every such state is one flag byte per data block, so the check is O(1)
//! and a crash loses nothing that matters: none of it is durable.

use std::collections::VecDeque;

use super::types::DataBlock;

/// Allocations [`SpaceMap::recent_allocations`] remembers, so a test can check I2 at each one
/// between two owner polls (an owner poll allocates at most one block per op slot).
pub const ALLOCATION_LOG_ENTRIES: usize = crate::limits::OWNER_OPS_MAX;

const HELD: u8 = 1;
const RESERVED: u8 = 2;
const IN_GRACE: u8 = 4;

/// Reference counts as the allocator needs them (the metadata layer provides them).
pub trait Counts {
    fn open_count(&self, block: DataBlock) -> u32;
    fn committed_count(&self, block: DataBlock) -> u32;
}

/// Why no block could be handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoBlock {
    /// Blocks will come back (held, in grace, or freed but not yet committed): wait.
    /// `uncommitted`: some only need a commit to come back.
    Pending { uncommitted: bool },
    /// Nothing will come back: the pool is out of data space.
    Exhausted,
}

/// The allocator's in-memory state.
pub struct SpaceMap {
    flags: Vec<u8>,
    cursor: u64,
    /// Blocks released at an epoch, waiting for their grace period: (epoch, block), in order.
    grace: VecDeque<(u64, DataBlock)>,
    held_count: u64,
    reserved_count: u64,
    /// Blocks handed out so far, and the last `ALLOCATION_LOG_ENTRIES` of them (a ring).
    allocation_count: u64,
    allocation_log: Box<[DataBlock]>,
}

impl SpaceMap {
    pub fn new(data_blocks: u64) -> SpaceMap {
        let length = usize::try_from(data_blocks).expect("data block count fits memory");
        SpaceMap {
            flags: vec![0; length],
            cursor: 0,
            grace: VecDeque::new(),
            held_count: 0,
            reserved_count: 0,
            allocation_count: 0,
            allocation_log: vec![DataBlock(0); ALLOCATION_LOG_ENTRIES].into(),
        }
    }

    pub fn data_blocks(&self) -> u64 {
        self.flags.len() as u64
    }

    /// Adds blocks at the end (the data device grew).
    pub fn grow(&mut self, data_blocks: u64) {
        let length = usize::try_from(data_blocks).expect("data block count fits memory");
        if length > self.flags.len() {
            self.flags.resize(length, 0);
        }
    }

    fn flag(&self, block: DataBlock) -> u8 {
        self.flags[block.0 as usize]
    }

    fn set(&mut self, block: DataBlock, flag: u8) {
        self.flags[block.0 as usize] |= flag;
    }

    fn clear(&mut self, block: DataBlock, flag: u8) {
        self.flags[block.0 as usize] &= !flag;
    }

    pub fn is_held(&self, block: DataBlock) -> bool {
        self.flag(block) & HELD != 0
    }

    pub fn is_reserved(&self, block: DataBlock) -> bool {
        self.flag(block) & RESERVED != 0
    }

    /// Whether `block` is inside its grace period (read from its flag, not the queue).
    pub fn is_in_grace(&self, block: DataBlock) -> bool {
        self.flag(block) & IN_GRACE != 0
    }

    pub fn held_count(&self) -> u64 {
        self.held_count
    }

    pub fn reserved_count(&self) -> u64 {
        self.reserved_count
    }

    /// Blocks still inside a grace period.
    pub fn in_grace_count(&self) -> usize {
        self.grace.len()
    }

    /// Blocks handed out so far.
    pub fn allocation_count(&self) -> u64 {
        self.allocation_count
    }

    /// The blocks handed out after the first `seen` allocations, oldest first, as far as the
    /// log reaches (its last `ALLOCATION_LOG_ENTRIES`).
    pub fn recent_allocations(&self, seen: u64) -> impl Iterator<Item = DataBlock> + '_ {
        let first = seen.max(self.allocation_count.saturating_sub(ALLOCATION_LOG_ENTRIES as u64));
        (first..self.allocation_count)
            .map(|n| self.allocation_log[(n % ALLOCATION_LOG_ENTRIES as u64) as usize])
    }

    fn is_allocatable(&self, block: DataBlock, counts: &impl Counts) -> bool {
        self.flag(block) == 0 && counts.open_count(block) == 0 && counts.committed_count(block) == 0
    }

    /// Hands out a block and reserves it until [`SpaceMap::unreserve`]. Scans from a cursor,
    /// so a run of allocations costs what it skips once.
    pub fn allocate(&mut self, counts: &impl Counts) -> Result<DataBlock, NoBlock> {
        let total = self.data_blocks();
        let mut pending = false;
        let mut uncommitted = false;
        for step in 0..total {
            let block = DataBlock((self.cursor + step) % total);
            if self.is_allocatable(block, counts) {
                self.cursor = (block.0 + 1) % total;
                self.set(block, RESERVED);
                self.reserved_count += 1;
                let slot = (self.allocation_count % ALLOCATION_LOG_ENTRIES as u64) as usize;
                self.allocation_log[slot] = block;
                self.allocation_count += 1;
                return Ok(block);
            }
            if counts.open_count(block) == 0 {
                pending = true;
                uncommitted |= self.flag(block) == 0;
            }
        }
        Err(if pending { NoBlock::Pending { uncommitted } } else { NoBlock::Exhausted })
    }

    /// The reservation ends: the block's mapping is inserted (it now has a count) or the
    /// operation failed (it is free again, and was never referenced).
    pub fn unreserve(&mut self, block: DataBlock) {
        debug_assert!(self.is_reserved(block), "{block} was not reserved");
        self.clear(block, RESERVED);
        self.reserved_count -= 1;
    }

    /// Takes a passdown hold (the seed's `inc_data_range`, kept out of the counts).
    pub fn hold(&mut self, block: DataBlock) {
        assert!(!self.is_held(block), "{block} held twice");
        self.set(block, HELD);
        self.held_count += 1;
    }

    /// Drops a passdown hold (the seed's `dec_data_range`).
    pub fn release_hold(&mut self, block: DataBlock) {
        assert!(self.is_held(block), "{block} was not held");
        self.clear(block, HELD);
        self.held_count -= 1;
    }

    /// A block's count reached zero while the epoch was `epoch`: no reuse before its grace
    /// period has passed.
    pub fn enter_grace(&mut self, block: DataBlock, epoch: u64) {
        self.set(block, IN_GRACE);
        self.grace.push_back((epoch, block));
    }

    /// Ends the grace period of every block released at an epoch for which `has_passed` says
    /// so. Returns how many blocks came back.
    pub fn end_grace(&mut self, has_passed: impl Fn(u64) -> bool) -> usize {
        let mut count = 0;
        while let Some(&(epoch, block)) = self.grace.front() {
            if !has_passed(epoch) {
                break;
            }
            self.grace.pop_front();
            self.clear(block, IN_GRACE);
            count += 1;
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference counts of a model pool (shared with the proptests below).
    pub(super) struct Model {
        pub(super) open: Vec<u32>,
        pub(super) committed: Vec<u32>,
    }

    impl Counts for Model {
        fn open_count(&self, block: DataBlock) -> u32 {
            self.open[block.0 as usize]
        }
        fn committed_count(&self, block: DataBlock) -> u32 {
            self.committed[block.0 as usize]
        }
    }

    #[test]
    fn the_allocation_rule() {
        let mut model = Model { open: vec![0; 4], committed: vec![0; 4] };
        let mut map = SpaceMap::new(4);
        model.open[0] = 1; // mapped
        model.committed[1] = 1; // freed in the open transaction
        map.hold(DataBlock(2));
        let got = map.allocate(&model).unwrap();
        assert_eq!(got, DataBlock(3));
        assert_eq!(
            map.allocate(&model),
            Err(NoBlock::Pending { uncommitted: true }),
            "1 and 2 come back later"
        );
        map.release_hold(DataBlock(2));
        assert_eq!(map.allocate(&model), Ok(DataBlock(2)));
        model.committed[1] = 0;
        map.enter_grace(DataBlock(1), 5);
        assert_eq!(map.allocate(&model), Err(NoBlock::Pending { uncommitted: false }));
        assert_eq!(map.end_grace(|e| e + 2 <= 6), 0);
        assert_eq!(map.end_grace(|e| e + 2 <= 7), 1);
        assert_eq!(map.allocate(&model), Ok(DataBlock(1)));
        model.open = vec![1; 4];
        for b in 0..4 {
            if map.is_reserved(DataBlock(b)) {
                map.unreserve(DataBlock(b));
            }
        }
        assert_eq!(map.allocate(&model), Err(NoBlock::Exhausted));
    }
}

#[cfg(test)]
mod proptests {
    use super::tests::Model;
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Allocate,
        Map(usize),
        Free(usize),
        Commit,
        Hold(usize),
        Release(usize),
        Advance,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Allocate),
            (0..16usize).prop_map(Step::Map),
            (0..16usize).prop_map(Step::Free),
            Just(Step::Commit),
            (0..16usize).prop_map(Step::Hold),
            (0..16usize).prop_map(Step::Release),
            Just(Step::Advance),
        ]
    }

    proptest! {
        /// Against a model of counts, holds, reservations and grace: the allocator hands out
        /// only blocks free in both transactions, unheld, unreserved and out of grace, and
        /// says "pending" exactly when such a block will come back.
        #[test]
        fn allocation_follows_the_rule(steps in prop::collection::vec(step(), 1..200)) {
            let mut model = Model { open: vec![0; 16], committed: vec![0; 16] };
            let mut map = SpaceMap::new(16);
            let mut epoch = 0u64;
            let mut reserved: Vec<usize> = Vec::new();
            for step in steps {
                match step {
                    Step::Allocate => match map.allocate(&model) {
                        Ok(block) => {
                            let b = block.0 as usize;
                            prop_assert_eq!(model.open[b], 0);
                            prop_assert_eq!(model.committed[b], 0);
                            prop_assert!(!map.is_held(block) && !reserved.contains(&b));
                            reserved.push(b);
                        }
                        Err(reason) => {
                            let free_open = (0..16).any(|b| model.open[b] == 0);
                            match reason {
                                NoBlock::Exhausted => prop_assert!(!free_open),
                                NoBlock::Pending { .. } => prop_assert!(free_open),
                            }
                        }
                    },
                    Step::Map(i) => {
                        if let Some(pos) = reserved.iter().position(|&b| b == i % 16) {
                            let b = reserved.remove(pos);
                            model.open[b] += 1;
                            map.unreserve(DataBlock(b as u64));
                        }
                    }
                    Step::Free(i) => {
                        let b = i % 16;
                        if model.open[b] > 0 {
                            model.open[b] -= 1;
                            if model.open[b] == 0 {
                                map.enter_grace(DataBlock(b as u64), epoch);
                            }
                        }
                    }
                    Step::Commit => model.committed.clone_from(&model.open),
                    Step::Hold(i) => {
                        let b = DataBlock((i % 16) as u64);
                        let free = model.open[i % 16] == 0 && !reserved.contains(&(i % 16));
                        if free && !map.is_held(b) {
                            map.hold(b);
                        }
                    }
                    Step::Release(i) => {
                        let b = DataBlock((i % 16) as u64);
                        if map.is_held(b) {
                            map.release_hold(b);
                        }
                    }
                    Step::Advance => {
                        epoch += 1;
                        map.end_grace(|e| e + 2 <= epoch);
                    }
                }
                prop_assert_eq!(map.reserved_count() as usize, reserved.len());
            }
        }
    }
}
