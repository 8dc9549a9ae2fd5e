//! Frontends that serve bdevs to other processes over the network: [`nbd`] (NBD over TCP) and
//! [`nvmf_tcp`] (an NVMe-oF/TCP target). An export holds its bdev open (`Bdev::open`), so the
//! bdev cannot be deleted or claimed underneath it; each connection is a poller on one reactor
//! and submits to a bdev channel opened on that reactor. Control state (export and subsystem
//! tables) sits behind mutexes that only RPC methods and connection set-up take; the IO path
//! never does. [`arena`] is the bounded data buffer a connection shares among its requests.

pub mod arena;
pub mod nbd;
pub mod nvmf_tcp;
