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

/// NBD connections one server serves at once; a further client is closed at accept. Each holds
/// an arena of [`NBD_CONNECTION_BUFFER_BYTES`] (virtual until touched) and a bdev channel.
pub const NBD_CONNECTIONS_MAX: usize = 64;

/// Requests one NBD connection keeps in flight (slots sized at negotiation); more wait in the
/// socket. fio's deepest queue in our benches is 128.
pub const NBD_REQUESTS_PER_CONNECTION_MAX: usize = 128;

/// Largest NBD payload (read or write) we accept, advertised as the maximum block size. 32 MiB
/// is the size every NBD client assumes when the server states none (the NBD spec).
pub const NBD_PAYLOAD_BYTES_MAX: usize = 32 << 20;

/// Data buffer of one NBD connection, split among its in-flight requests (first fit). One
/// request of the largest payload fits whole.
pub const NBD_CONNECTION_BUFFER_BYTES: usize = NBD_PAYLOAD_BYTES_MAX;

/// Device IOs one NBD request keeps in flight: a payload splits into IOs of at most
/// [`IO_BYTES_MAX`]; trim and write-zeroes issue their pieces this many at a time.
pub const NBD_IOS_PER_REQUEST_MAX: usize = 8;

/// Bytes one trim or write-zeroes device IO covers, so a 4 GiB request cannot make one device
/// call (malloc zeroes in place) hog a reactor.
pub const NBD_ZEROES_BYTES_PER_IO: usize = 64 << 20;

/// Staging buffer for NBD request headers, options and small payloads read from the socket in
/// one call. Holds the largest option ([`NBD_OPTION_BYTES_MAX`]) with its header.
pub const NBD_INPUT_BUFFER_BYTES: usize = 64 << 10;

/// Largest option payload during negotiation: a 4096-byte export name (the spec's bound) with
/// its length and information requests. Longer options are skipped and refused (TOO_BIG).
pub const NBD_OPTION_BYTES_MAX: usize = 4096 + 64;

/// Requests one NBD connection decodes per poll, so one client cannot starve the others.
pub const NBD_REQUESTS_PER_POLL_MAX: usize = 64;

/// Buffers handed to one `writev` of NBD replies (headers and read data).
pub const NBD_REPLY_IOVECS_MAX: usize = 64;

/// Loop turns between two looks at the NBD listener socket: accepting is rare, and a busy
/// reactor turns thousands of times per millisecond, so new clients still wait only microseconds.
pub const NBD_LISTENER_TURNS_PER_CHECK: u32 = 64;

/// Connections the NBD listener accepts per poll.
pub const NBD_ACCEPTS_PER_POLL_MAX: usize = 16;

/// Exports one NBD server lists (bounds the LIST reply and the lookup at negotiation).
pub const NBD_EXPORTS_MAX: usize = 1024;

const _: () = assert!(NBD_PAYLOAD_BYTES_MAX <= NBD_IOS_PER_REQUEST_MAX * IO_BYTES_MAX);
const _: () = assert!(NBD_CONNECTION_BUFFER_BYTES >= NBD_PAYLOAD_BYTES_MAX);
const _: () = assert!(NBD_INPUT_BUFFER_BYTES >= NBD_OPTION_BYTES_MAX + 16);
const _: () = assert!(NBD_CONNECTION_BUFFER_BYTES <= u32::MAX as usize);
const _: () = assert!(NBD_REQUESTS_PER_CONNECTION_MAX <= u16::MAX as usize);
