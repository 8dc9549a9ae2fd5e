//! The deterministic single-threaded host for tests and the simulator (feature `testing`).
//!
//! Nothing here runs by itself: the test decides which poller runs when ([`Stepper`]), what
//! time it is ([`SteppingHost`]), and, for every IO of a [`SimDevice`], when it takes effect on
//! the device's content and when (and how) it completes. The same thin-core code that runs on
//! the embedded runtime runs here, as SPDK's `ut_multithread` runs real threads' messages in an
//! order the test picks.

mod device;
mod host;
pub mod sim;

pub use device::{PendingIo, SimChannel, SimDevice, SimFault};
pub use host::{Stepper, SteppingHost};
