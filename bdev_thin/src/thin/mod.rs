//! The thin core: pools of data blocks holding thin volumes and snapshots, generic over the
//! host traits (DESIGN.md). It imports only `host`, `limits` and itself.
//!
//! - [`types`]: the block-number newtypes and pool modes.
//! - [`metadata`]: the transactional, checksummed metadata (mappings, counts, volumes).
//! - [`space_map`]: allocation beside the counts: holds, reservations, grace periods.
//! - [`view`]: the lock-free mapping view channels resolve against.
//! - [`grace`]: epochs that delay reuse of released blocks.
//! - [`owner`]: the pool's single writer; [`discard`]: the passdown pipeline's runs.
//! - [`channel`]: the per-core fast path; everything else is a message to the owner.
//! - [`pool`]: what owner and channels share.

pub mod channel;
pub mod discard;
pub mod grace;
pub mod metadata;
pub mod mutations;
pub mod owner;
pub mod pool;
pub mod space_map;
pub mod types;
pub mod view;
