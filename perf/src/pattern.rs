//! Data patterns: every written block's content is a function of (the bdev's UUID, the block,
//! a seed) alone, so a later process can verify it without any record of what was written.
//! Zeroes never match a pattern, so a lost or unmapped block is always detected.

use uuid::Uuid;

#[inline]
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The per-block seed of block `lba` of the bdev `uuid` under pattern `seed`.
#[inline]
pub fn block_key(uuid: &Uuid, lba: u64, seed: u64) -> u64 {
    let (hi, lo) = uuid.as_u64_pair();
    splitmix64(hi ^ splitmix64(lo ^ splitmix64(lba ^ splitmix64(seed))))
}

/// Fills one block with the stream of `key`. The first word carries the low bit set, so no
/// block of a pattern is all zeroes.
#[inline]
pub fn fill_block(out: &mut [u8], key: u64) {
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        let mut word = splitmix64(key.wrapping_add(i as u64));
        if i == 0 {
            word |= 1;
        }
        chunk.copy_from_slice(&word.to_le_bytes());
    }
}

#[inline]
pub fn block_matches(data: &[u8], key: u64) -> bool {
    data.chunks_exact(8).enumerate().all(|(i, chunk)| {
        let mut word = splitmix64(key.wrapping_add(i as u64));
        if i == 0 {
            word |= 1;
        }
        chunk == word.to_le_bytes()
    })
}

/// A small fast generator for offsets and mixes (xorshift64*), seeded per job.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(splitmix64(seed) | 1)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..bound` (bound > 0), by multiply-shift.
    #[inline]
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_by_block_seed_and_bdev() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let mut block = vec![0u8; 512];
        fill_block(&mut block, block_key(&a, 7, 1));
        assert!(block_matches(&block, block_key(&a, 7, 1)));
        assert!(!block_matches(&block, block_key(&a, 8, 1)));
        assert!(!block_matches(&block, block_key(&a, 7, 2)));
        assert!(!block_matches(&block, block_key(&b, 7, 1)));
        assert!(!block_matches(&[0u8; 512], block_key(&a, 7, 1)), "zeroes never match");
    }
}
