//! Switches that each break one safety mechanism, for tests that must show the mechanism is
//! what keeps the invariants (DESIGN.md "Invariants", issue 13's list). They are one
//! [`Mutations`] value per pool that carries switches only with the cargo feature `mutations`;
//! without it the value is empty and every check is the constant `false`, so no production
//! build contains a switch and the checks compile away.

/// One safety mechanism a test may switch off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Mutation {
    /// Passdown candidates are not held: the allocator may hand them out while the
    /// deallocate is in flight (the seed's bug).
    NoHold = 0,
    /// Holds are dropped when the deallocate is issued instead of when it completes.
    HoldDroppedAtIssue = 1,
    /// Released blocks are reusable at once: no grace period.
    NoGrace = 2,
    /// The grace period counts owner polls instead of in-flight IO.
    GraceCountsPolls = 3,
    /// A commit does not flush the data device first.
    NoDataFlushBeforeCommit = 4,
}

/// The switched-on mutations of one pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations {
    #[cfg(feature = "mutations")]
    bits: u32,
}

impl Mutations {
    /// No mutation: the only value a build without the feature can make.
    pub const NONE: Mutations = Mutations {
        #[cfg(feature = "mutations")]
        bits: 0,
    };

    /// `self` with `mutation` switched on.
    #[cfg(feature = "mutations")]
    pub fn with(self, mutation: Mutation) -> Mutations {
        Mutations { bits: self.bits | 1 << mutation as u32 }
    }

    /// Whether `mutation` is on (always false without the `mutations` feature).
    #[inline(always)]
    pub fn is_on(self, mutation: Mutation) -> bool {
        #[cfg(feature = "mutations")]
        {
            self.bits & (1 << mutation as u32) != 0
        }
        #[cfg(not(feature = "mutations"))]
        {
            let _ = mutation;
            false
        }
    }
}
