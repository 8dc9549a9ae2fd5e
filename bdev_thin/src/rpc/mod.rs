//! JSON-RPC methods in SPDK's names and shapes. `methods` decodes parameters, calls the layer
//! below and encodes the result; `error` is the one place errors become JSON-RPC codes;
//! `framing` splits a byte stream into requests; `server` serves a Unix socket from a poller.
//! The server and `-c` config loading both call [`methods::call`].

pub mod error;
pub mod framing;
pub mod methods;
pub mod params;
pub mod server;

pub use error::RpcError;
pub use methods::{Reply, call, call_blocking};
