//! Every bound of the system, with its reason. Relations between bounds are checked at compile
//! time, so a change that breaks one fails the build instead of a run.

/// Entries of each reactor's control-event ring. Control events (RPC work, channel set-up) are
/// rare; a full ring makes the sender retry, it never blocks an IO.
pub const REACTOR_EVENT_RING_ENTRIES: usize = 4096;

/// Control events a reactor runs per loop turn, so a burst cannot starve its pollers.
pub const REACTOR_EVENTS_PER_TURN_MAX: usize = 64;

/// Most cores a core mask may name (a `u64` mask).
pub const CORES_MAX: usize = 64;

/// Segments of one IO's scatter-gather list. NBD and perf use one; splitting a request at
/// thin-block boundaries never adds segments beyond what the request had.
pub const IO_SEGMENTS_MAX: usize = 8;

/// Alignment of every IO buffer: the largest logical block size O_DIRECT may demand.
pub const IO_BUFFER_ALIGN_BYTES: usize = 4096;

/// IOs one device channel keeps in flight (io_uring SQ entries; slots of malloc and null).
/// bdevperf's default maximum depth is 4096; 1024 per channel covers every depth we bench.
pub const DEVICE_CHANNEL_DEPTH_MAX: usize = 1024;

/// Largest single IO a base device takes, in bytes (SPDK's default `max_io_size` is 128 KiB;
/// larger frontend IOs are split by the frontend).
pub const IO_BYTES_MAX: usize = 4 << 20;

/// Time after the last busy poll before a reactor parks, in microseconds (DESIGN.md: 1 ms).
pub const REACTOR_IDLE_BEFORE_PARK_US: u64 = 1000;

/// Longest a parked reactor sleeps without an event, in milliseconds. A bound, not a
/// correctness mechanism: every wake source is registered, this only limits the damage of a
/// missed one.
pub const REACTOR_PARK_TIMEOUT_MS: i32 = 1000;

/// Longest a stopping runtime waits for in-flight IO to drain, in milliseconds.
pub const SHUTDOWN_DRAIN_TIMEOUT_MS: u64 = 30_000;

const _: () = assert!(IO_BYTES_MAX.is_multiple_of(IO_BUFFER_ALIGN_BYTES));
const _: () = assert!(DEVICE_CHANNEL_DEPTH_MAX <= u16::MAX as usize);
const _: () = assert!(REACTOR_EVENTS_PER_TURN_MAX <= REACTOR_EVENT_RING_ENTRIES);

/// JSON-RPC connections served at once. SPDK accepts 64; we take twice that so a burst of 100
/// clients (a test, a script that fans out) is served rather than refused. A client past the
/// cap is accepted and closed at once, so it sees a clean EOF instead of a hang.
pub const RPC_CONNECTIONS_MAX: usize = 128;

/// Largest JSON-RPC request, in bytes (SPDK's 256 KiB). Also the size of a connection's input
/// buffer: a longer request gets an error and the connection closes, so a 64 MiB request costs
/// 256 KiB, not 64 MiB.
pub const RPC_REQUEST_BYTES_MAX: usize = 256 << 10;

/// Deepest nesting of objects and arrays in a request. Our deepest method takes 4 levels; SPDK
/// bounds requests at 8192 tokens. Checked while framing, so a deep request is refused before
/// it is parsed (the parser recurses).
pub const RPC_JSON_DEPTH_MAX: usize = 32;

/// Requests in one JSON-RPC batch. Each takes a reply-ring slot until it completes.
pub const RPC_BATCH_ENTRIES_MAX: usize = 128;

/// Entries of the server's reply ring. Requests in flight never exceed it: a request is
/// dispatched only with a slot reserved, so a reply from another core can always be queued.
pub const RPC_REPLY_RING_ENTRIES: usize = 1024;

/// Largest reply, in bytes (SPDK's 32 MiB); a larger result is replaced by an error.
pub const RPC_REPLY_BYTES_MAX: usize = 32 << 20;

/// Output a connection may hold unsent before the server stops reading its requests
/// (back-pressure on a client that writes but does not read).
pub const RPC_OUTPUT_PAUSE_BYTES: usize = 1 << 20;

/// Output a connection may hold unsent at all; past it the client is not reading and is closed.
pub const RPC_OUTPUT_BYTES_MAX: usize = RPC_REPLY_BYTES_MAX + RPC_OUTPUT_PAUSE_BYTES;

/// Bytes read from one connection per poll, so one busy client cannot starve the others.
pub const RPC_READ_BYTES_PER_POLL: usize = 64 << 10;

/// Requests of one connection running at once (pipelining without reading replies is
/// bounded by it and by `RPC_OUTPUT_PAUSE_BYTES`).
pub const RPC_CONNECTION_IN_FLIGHT_MAX: usize = 64;

/// Requests started from one connection per poll.
pub const RPC_REQUESTS_PER_POLL_MAX: usize = 16;

/// Replies taken from the ring per poll.
pub const RPC_REPLIES_PER_POLL_MAX: usize = 256;

/// Connections accepted per poll.
pub const RPC_ACCEPTS_PER_POLL_MAX: usize = 16;

const _: () = assert!(RPC_CONNECTIONS_MAX >= 64);
const _: () = assert!(RPC_BATCH_ENTRIES_MAX <= RPC_REPLY_RING_ENTRIES);
const _: () = assert!(RPC_OUTPUT_PAUSE_BYTES < RPC_OUTPUT_BYTES_MAX);
