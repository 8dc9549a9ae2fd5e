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

/// Smallest and largest block size of a bdev. Exports serve only powers of two in this range:
/// NBD's minimum block size must be a power of two of at most 64 KiB (libnbd refuses more),
/// NVMe's LBA data size is a power of two, and Linux takes logical blocks of 512 B to 64 KiB.
pub const BDEV_BLOCK_BYTES_MIN: u32 = 512;
pub const BDEV_BLOCK_BYTES_MAX: u32 = 64 << 10;

/// Largest size of a bdev, in bytes: NBD clients and Linux (`loff_t`) hold sizes and offsets
/// as signed 64-bit numbers, and QEMU further rounds its limit down to 1 GiB (its
/// `BDRV_MAX_LENGTH`, 2^63 - 2^30), so every export of every bdev opens in every client.
pub const BDEV_SIZE_BYTES_MAX: u64 = (1 << 63) - (1 << 30);

const _: () = assert!(BDEV_BLOCK_BYTES_MAX as usize <= IO_BYTES_MAX);
const _: () = assert!(BDEV_SIZE_BYTES_MAX.is_multiple_of(BDEV_BLOCK_BYTES_MAX as u64));

/// Longest bdev name a create method takes, in bytes (SPDK bounds only pool and volume names,
/// at 63 bytes; see `names`).
pub const BDEV_NAME_BYTES_MAX: usize = 255;

/// Time after the last busy poll before a reactor parks, in microseconds (DESIGN.md: 1 ms).
pub const REACTOR_IDLE_BEFORE_PARK_US: u64 = 1000;

/// Longest a parked reactor sleeps without an event, in milliseconds. A bound, not a
/// correctness mechanism: every wake source is registered, this only limits the damage of a
/// missed one.
pub const REACTOR_PARK_TIMEOUT_MS: i32 = 1000;

/// Longest a stopping runtime waits for in-flight IO to drain, in milliseconds.
pub const SHUTDOWN_DRAIN_TIMEOUT_MS: u64 = 30_000;

/// Entries of one metadata btree node (leaf or internal): a 4 KiB block holds a 32-byte header
/// and 24-byte entries (key + two 64-bit words), 169 at most; an even capacity splits evenly,
/// and merging keeps every non-root node at least half full (docs/format.md's bound).
pub const METADATA_NODE_ENTRIES_MAX: usize = 168;

/// Fewest entries of a non-root btree node after a remove (half of the capacity).
pub const METADATA_NODE_ENTRIES_MIN: usize = METADATA_NODE_ENTRIES_MAX / 2;

/// Deepest metadata btree, root level included. A node of level n has children of level n - 1,
/// so decoding untrusted blocks recurses at most this deep; 84^7 leaves dwarf any pool.
pub const METADATA_BTREE_DEPTH_MAX: usize = 8;

/// Volumes (thin volumes and snapshots) of one pool: the volume table is rewritten whole on a
/// commit that changes it, 28 records per block, under one index block of 254 entries.
pub const POOL_VOLUMES_MAX: usize = 4096;

/// Metadata blocks one mutation (insert, remove, snapshot) may allocate: per level a shadow of
/// the path node and of one neighbour (rebalance, or entries handed over on overflow) or a
/// split, plus a new root; twice that for margin.
pub const METADATA_MUTATION_BLOCKS_MAX: u64 = 4 * METADATA_BTREE_DEPTH_MAX as u64 + 2;

/// The metadata reserve is min(this, 10 % of the region) (dm-thin's min(16 MiB, 10 %)):
/// mutations stop when free blocks reach it, so a commit never runs out.
pub const METADATA_RESERVE_BLOCKS_MAX: u64 = (16 << 20) / 4096;

/// Smallest metadata region, in 4 KiB blocks (4 MiB): room for the superblocks, a full volume
/// table twice over and a reserve above one mutation for the tiniest pools.
pub const METADATA_REGION_BLOCKS_MIN: u64 = 1024;

/// Largest metadata region, in 4 KiB blocks (64 GiB): metadata reference counts are a u32 per
/// block in memory; this caps that table at 64 MiB.
pub const METADATA_REGION_BLOCKS_MAX: u64 = 16 << 20;

const _: () = assert!(IO_BYTES_MAX.is_multiple_of(IO_BUFFER_ALIGN_BYTES));
const _: () = assert!(DEVICE_CHANNEL_DEPTH_MAX <= u16::MAX as usize);
const _: () = assert!(REACTOR_EVENTS_PER_TURN_MAX <= REACTOR_EVENT_RING_ENTRIES);

/// Entries of a pool owner's inbox (requests from every channel of every core). A full inbox
/// makes the channel keep the request in its own queue (back-pressure).
pub const POOL_INBOX_ENTRIES: usize = 4096;

/// Frontend requests one thin volume channel admits at once, of any size up to the volume's
/// (this, the credits below and the owner's op slots, copy buffers and view-fill slice are a
/// pool's `PoolLimits`, which tests may lower).
pub const THIN_CHANNEL_DEPTH_MAX: usize = 1024;

/// Pieces (data-block parts of requests) one thin volume channel keeps in flight, on the data
/// device and with the owner together: its *credits*. The owner's reply ring, the channel's
/// outbox and its device backlog hold this many, and the data device's channel takes this many,
/// so no ring overflows whatever the requests split into; a request that finds no credit waits
/// in the channel (back-pressure).
pub const THIN_CHANNEL_PIECES_IN_FLIGHT_MAX: usize = 1024;

/// Pieces one request keeps in flight; the next is issued as one comes back (a sliding
/// window). Bounds each channel slot's bookkeeping; 8 pieces of 64 KiB keep a device busy.
pub const THIN_REQUEST_PIECES_IN_FLIGHT_MAX: usize = 8;

/// Requests the owner takes from its inbox per poll, so one poll's work stays bounded.
pub const OWNER_MESSAGES_PER_POLL_MAX: usize = 64;

/// Owner operations in progress at once (provisions, copies, range ops); further requests
/// wait in the inbox.
pub const OWNER_OPS_MAX: usize = 1024;

/// Bytes one copy or zeroing step moves when breaking sharing (a data block may be 1 GiB).
pub const OWNER_COPY_CHUNK_BYTES_MAX: usize = 1 << 20;

/// Copy buffers the owner keeps for breaking sharing; more concurrent copies wait.
pub const OWNER_COPY_BUFFERS: usize = 16;

/// Data blocks of one unmap or write_zeroes the owner sorts into passdown runs at a time, in a
/// scratch allocated once per owner: a larger range is sorted a slice at a time and its runs
/// are merged in place afterwards, with the same runs as one sort of the whole.
pub const OWNER_RANGE_SORT_BLOCKS: usize = 4096;

/// Passdown runs the run list of each owner op slot holds from the start (256 KiB of lists
/// per pool). The lists go back to the owner with their op slot and keep their capacity, so a
/// range of more runs grows a list once, not every request.
pub const OWNER_RANGE_RUNS_PER_OP: usize = 16;

const _: () = assert!(THIN_CHANNEL_DEPTH_MAX <= DEVICE_CHANNEL_DEPTH_MAX);
const _: () = assert!(THIN_CHANNEL_PIECES_IN_FLIGHT_MAX <= DEVICE_CHANNEL_DEPTH_MAX);
const _: () = assert!(THIN_CHANNEL_DEPTH_MAX <= 1 << 48, "a slot number fits a piece's token");
const _: () = assert!(OWNER_COPY_CHUNK_BYTES_MAX <= IO_BYTES_MAX);
const _: () = assert!(METADATA_NODE_ENTRIES_MAX * 24 + 32 <= 4096);
const _: () = assert!(METADATA_NODE_ENTRIES_MAX.is_multiple_of(2));
const _: () = assert!(METADATA_REGION_BLOCKS_MIN / 10 > 2 * METADATA_MUTATION_BLOCKS_MAX);

/// How far a volume can grow in place: its view reserves chunk slots (24 bytes per 4096
/// virtual blocks) for this many times its size at creation or open.
pub const VOLUME_GROWTH_FACTOR: u64 = 4;
/// Chunk slots (one per 4096 virtual blocks) one volume's view may take: 48 MiB of slots, a
/// volume of up to 2^33 blocks (32 TiB of 4 KiB blocks). The table is allocated whole when
/// the view is made, so a larger volume is refused instead of allocating it.
pub const VOLUME_VIEW_CHUNKS_MAX: u64 = 1 << 21;
/// Chunk slots all views of one pool may take (384 MiB): a create or snapshot past it is
/// refused with ENOSPC.
pub const POOL_VIEW_CHUNKS_MAX: u64 = 1 << 24;
/// JSON-RPC connections served at once. SPDK accepts 64; we take twice that so a burst of 100
/// clients (a test, a script that fans out) is served rather than refused. At the cap, the
/// connection that has waited longest without sending a request is closed to make room; with
/// none, the new client is accepted and closed at once, so it sees a clean EOF, not a hang.
pub const RPC_CONNECTIONS_MAX: usize = 128;

/// Default time a connection has from accept to the end of its handshake (NBD negotiation, a
/// JSON-RPC connection's first request); then it is closed. qemu-nbd's `--handshake-limit`
/// defaults to the same 10 s: ample for any client on a loopback or LAN, short enough that
/// connections that say nothing cannot hold the server's slots for long.
pub const CONNECTION_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Default time a JSON-RPC connection may stay idle (no request running, nothing to send, no
/// complete request received) before it is closed. Long, as scripts keep a client open between
/// calls; it bounds how long idle clients can hold the server's slots.
pub const RPC_IDLE_TIMEOUT_MS: u64 = 300_000;

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

/// Virtual blocks of a new snapshot's view the owner fills per poll (bounded work per poll;
/// 64 Ki entries are about 0.1 ms).
pub const VIEW_BUILD_BLOCKS_PER_POLL: u64 = 65536;
/// NBD connections one server serves at once. At the cap, the connection that has waited
/// longest in its negotiation is closed to make room; with none, a further client is closed at
/// accept. Each holds an arena of [`NBD_CONNECTION_BUFFER_BYTES`] (virtual until touched) and a
/// bdev channel.
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

/// Deepest queue an NVMe-oF/TCP queue pair takes (`max_queue_depth`, `max_aq_depth`): the
/// command slots of one connection. SPDK's default is 128.
pub const NVMF_QUEUE_DEPTH_MAX: usize = 1024;

/// Largest in-capsule data of an IO queue (`in_capsule_data_size`; SPDK's default 4 KiB).
pub const NVMF_IN_CAPSULE_DATA_BYTES_MAX: usize = 64 << 10;

/// In-capsule data the admin queue and fabrics commands may carry whatever the transport says:
/// the NVMe/TCP specification lets hosts send 8 KiB there (Linux does).
pub const NVMF_ADMIN_IN_CAPSULE_DATA_BYTES: usize = 8 << 10;

/// Data buffer of one queue pair, split among its commands (first fit, like NBD's arena):
/// `max_queue_depth × max_io_size`, capped here. A command that finds no room waits, and the
/// connection stops reading: back-pressure through TCP.
pub const NVMF_QPAIR_BUFFER_BYTES_MAX: usize = 16 << 20;

/// Connections (queue pairs) the target serves at once; one more is accepted and closed.
pub const NVMF_CONNECTIONS_MAX: usize = 256;

/// Subsystems of a target (SPDK's default `max_subsystems`).
pub const NVMF_SUBSYSTEMS_MAX: usize = 1024;

/// Namespaces of one subsystem (`max_namespaces`, SPDK's default 32): each IO queue pair opens
/// a bdev channel per namespace, and a poll looks only at channels with IO in flight.
pub const NVMF_NAMESPACES_MAX: usize = 1024;

/// Hosts one subsystem lists, and listeners of one target.
pub const NVMF_HOSTS_MAX: usize = 1024;
pub const NVMF_LISTENERS_MAX: usize = 64;

/// Controllers one subsystem hosts at once (each an admin queue and its IO queues).
pub const NVMF_CONTROLLERS_MAX: usize = 256;

/// Bdev IOs one command keeps in flight: Write Zeroes and Dataset Management split into
/// pieces of at most [`NVMF_ZEROES_BYTES_PER_IO`] and the device's unmap limit.
pub const NVMF_IOS_PER_COMMAND_MAX: usize = 8;

/// Bytes one write-zeroes or deallocate bdev IO covers, so one 256 MiB Write Zeroes cannot make
/// one device call hog a reactor (malloc zeroes in place).
pub const NVMF_ZEROES_BYTES_PER_IO: usize = 64 << 20;

/// Staging buffer of one connection: PDU headers and small data read from the socket in one
/// call; larger data goes straight from the socket into the command's buffer.
pub const NVMF_INPUT_BUFFER_BYTES: usize = 64 << 10;

/// PDUs one connection decodes per poll, so one host cannot starve the others.
pub const NVMF_PDUS_PER_POLL_MAX: usize = 64;

/// Buffers handed to one `writev` of PDUs (headers, data, digests).
pub const NVMF_OUTPUT_IOVECS_MAX: usize = 64;

/// Asynchronous Event Requests a controller holds (AERL + 1; SPDK holds 4).
pub const NVMF_ASYNC_EVENTS_MAX: usize = 4;

/// How often the target looks for namespaces that changed size and controllers whose keep
/// alive timer expired, in microseconds: the latency of a resize notice and of a keep-alive
/// teardown, at a cost proportional to namespaces and controllers only every period.
pub const NVMF_HOUSEKEEPING_PERIOD_US: u64 = 50_000;

/// Keep alive timeout of a discovery controller whose host asked for none (NVMe-oF 1.1 lets
/// the transport choose; SPDK uses two minutes), so stale discovery sessions end.
pub const NVMF_DISCOVERY_KATO_MS: u32 = 120_000;

/// Worst-case time to enable, reset or shut down a controller, in 500 ms units (CAP.TO): a
/// shutdown flushes every namespace, which commits every pool.
pub const NVMF_CONTROLLER_TIMEOUT_500MS: u8 = 60;

const _: () = assert!(NVMF_QUEUE_DEPTH_MAX <= u16::MAX as usize);
const _: () = assert!(NVMF_QPAIR_BUFFER_BYTES_MAX >= IO_BYTES_MAX + NVMF_IN_CAPSULE_DATA_BYTES_MAX);
const _: () = assert!(NVMF_QPAIR_BUFFER_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(NVMF_INPUT_BUFFER_BYTES >= 2 * crate::nvme::tcp::RECEIVED_HEADER_BYTES_MAX);

/// Entries of an NVMe/TCP initiator's admin queue (SQSIZE 31, as Linux asks): the attach
/// sequence sends one command at a time, and steady state holds the AERs and a keep alive.
pub const NVME_ADMIN_QUEUE_ENTRIES: u16 = 32;

/// Most entries an initiator IO queue asks for; the controller's MQES + 1 and MAXCMD cap it.
/// Linux's nvmet offers 1024, SPDK's target 128 by default.
pub const NVME_IO_QUEUE_ENTRIES_MAX: u16 = 1024;

/// Bdev IOs one core's IO queue pair holds at once, across the channels of that core (a
/// request is split into as many NVMe commands as MDTS and the DSM limits need, issued as
/// queue entries free up). Past it, `submit` hands the request back (back-pressure).
pub const NVME_REQUESTS_PER_QPAIR_MAX: usize = 1024;

/// Buffers for Dataset Management range lists one IO queue pair keeps: each holds the 256
/// ranges of one command; more concurrent unmaps wait for one.
pub const NVME_DSM_BUFFERS_PER_QPAIR: usize = 16;

/// Staging buffer of one initiator connection: PDU headers and small data read in one call;
/// larger read data goes from the socket straight into the request's buffers.
pub const NVME_INPUT_BUFFER_BYTES: usize = 64 << 10;

/// PDUs one initiator connection decodes per poll, so one queue cannot starve the reactor.
pub const NVME_PDUS_PER_POLL_MAX: usize = 64;

/// Buffers handed to one `writev` of an initiator connection (headers, data, digests).
pub const NVME_OUTPUT_IOVECS_MAX: usize = 64;

/// How often a controller's admin poller runs, in microseconds: admin traffic is rare (the
/// attach sequence, keep alives, AERs), so it need not cost the IO path a syscall per turn.
pub const NVME_ADMIN_POLL_PERIOD_US: u64 = 1000;

/// Keep alive timeout an initiator asks for at Connect (SPDK's default); keep alives go out at
/// half of it, and one unanswered past it counts the connection lost.
pub const NVME_KEEP_ALIVE_TIMEOUT_MS: u32 = 10_000;

/// Longest an initiator's admin command (Identify, Get Log Page, a Property Get) may take
/// before the connection counts as lost.
pub const NVME_ADMIN_COMMAND_TIMEOUT_MS: u64 = 10_000;

/// Fabrics Connect and TCP connect timeout when `fabrics_connect_timeout_us` is not given.
/// SPDK's 500 ms is tight for a target in an emulated guest; a given value is honoured.
pub const NVME_CONNECT_TIMEOUT_US_DEFAULT: u64 = 10_000_000;

/// Longest an IO queue pair with commands outstanding may go without receiving a PDU before
/// its connection counts as lost (a target that stopped answering but kept the socket open).
pub const NVME_IO_PROGRESS_TIMEOUT_MS: u64 = 30_000;

/// Attempts and spacing of an IO queue's Fabrics Connect refused with Command Sequence Error:
/// a queue pair reopened on a core reuses its QID, and Linux's target refuses the QID until
/// it has torn down the previous connection of that QID (asynchronously, milliseconds).
pub const NVME_IO_CONNECT_RETRIES: u32 = 50;
pub const NVME_IO_CONNECT_RETRY_DELAY_MS: u64 = 20;

/// Namespaces one controller exposes as bdevs (the active list is read in pages of 1024).
pub const NVME_NAMESPACES_MAX: usize = 1024;

/// Asynchronous Event Requests an initiator keeps outstanding (AERL + 1 of the controller,
/// capped here; SPDK's host keeps up to 4).
pub const NVME_ASYNC_EVENTS_MAX: usize = 4;

const _: () = assert!(NVME_IO_QUEUE_ENTRIES_MAX as usize <= NVME_REQUESTS_PER_QPAIR_MAX);
const _: () = assert!(NVME_INPUT_BUFFER_BYTES >= 2 * crate::nvme::tcp::RECEIVED_HEADER_BYTES_MAX);
const _: () = assert!(NVME_ASYNC_EVENTS_MAX + 2 < NVME_ADMIN_QUEUE_ENTRIES as usize);
