//! The thin core: pools of data blocks holding thin volumes and snapshots, generic over the
//! host traits (DESIGN.md). It imports only `host`, `limits` and itself.

pub mod metadata;
pub mod types;
