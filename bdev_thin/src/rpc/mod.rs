//! JSON-RPC methods in SPDK's names and shapes. `methods` decodes parameters, calls the layer
//! below and encodes the result; `error` is the one place errors become JSON-RPC codes. The
//! socket server (a later issue) and `-c` config loading both call [`methods::call`].

pub mod error;
pub mod methods;
pub mod params;

pub use error::RpcError;
pub use methods::{Reply, call, call_blocking};
