//! Frontends that serve bdevs to other processes over the network: [`nbd`] (NBD over TCP) now,
//! NVMe-oF/TCP later. An export holds its bdev open (`Bdev::open`), so the bdev cannot be
//! deleted or claimed underneath it; each connection is a poller on one reactor and submits to
//! a bdev channel opened on that reactor. Control state (the export table) sits behind a mutex
//! that only RPC methods and connection negotiation take; the IO path never does.

pub mod nbd;
