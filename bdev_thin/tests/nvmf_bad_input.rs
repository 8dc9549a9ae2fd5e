//! Bad input to the NVMe-oF/TCP target, each from a raw-socket host on 127.0.0.1: wrong header
//! lengths, unknown PDU types, a PLEN past the maximum, PDUs before ICReq and commands before
//! Connect, IO to a missing namespace or past its end, Dataset Management with data shorter
//! than its ranges or ranges past the end, H2CData never asked for or outside its R2T, header
//! and data digest mismatches, a keep alive timeout, a host that stops reading, connections
//! past the cap, and random bytes (proptest). Each gets its status or its C2HTermReq and close,
//! while a witness association on another connection keeps its IO going and every write it had
//! acknowledged reads back.

mod nvmf_client;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bdev_thin::admission::ConnectionTimeouts;
use bdev_thin::nvme::command::{Command, SglDescriptor, Status, admin_opcode, io_opcode};
use bdev_thin::nvme::fabrics::CNTLID_DYNAMIC;
use bdev_thin::nvme::tcp::{self, DataHeader, Digests, Encoder, IcReq, Pdu, fes};
use nvmf_client::{
    BLOCK, BOUND, HOSTNQN, Host, NQN, TestTarget, admin_queue, assert_data, call, io_queue,
    io_queue_sized, io_queue_with, pattern, start_target, start_target_with,
};
use serde_json::{Value, json};

type Daemon = TestTarget;

/// A transport made with `transport`; `NQN` for any host.
fn daemon_with(transport: Value) -> Daemon {
    start_target(transport, json!({"allow_any_host": true}))
}

fn daemon() -> Daemon {
    daemon_with(json!({"trtype": "TCP"}))
}

/// An association that writes before the bad input and checks after it: every write it had
/// acknowledged reads back, and it can still do IO.
struct Witness {
    _admin: Host,
    io: Host,
    written: Vec<(u64, Vec<u8>)>,
    checks: u64,
}

impl Witness {
    fn new(daemon: &Daemon) -> Witness {
        let mut admin = admin_queue(daemon.address, NQN, HOSTNQN, 0);
        assert_eq!(admin.set_queues(4).status, Status::SUCCESS);
        let io = io_queue(daemon.address, NQN, HOSTNQN, admin.cntlid, 1);
        let mut witness = Witness { _admin: admin, io, written: Vec::new(), checks: 0 };
        witness.write(100_000, 1);
        witness
    }

    fn write(&mut self, lba: u64, seed: u8) {
        let data = pattern(lba, 64, BLOCK as usize, seed);
        assert_eq!(self.io.write(1, lba, &data, BLOCK, false), Status::SUCCESS);
        self.written.retain(|(l, _)| *l != lba);
        self.written.push((lba, data));
    }

    /// Everything acknowledged reads back, and a new write (to one of 8 regions, round
    /// robin) works.
    fn check(&mut self) {
        for (lba, data) in self.written.clone() {
            let (status, read) = self.io.read(1, lba, 64, BLOCK);
            assert_eq!(status, Status::SUCCESS);
            assert_data(&read, &data, "the witness's acknowledged write");
        }
        self.checks += 1;
        self.write(100_000 + 64 * (self.checks % 8), self.checks as u8);
    }
}

/// A host past ICReq on an IO queue of its own association.
fn io_host(daemon: &Daemon, digests: Digests) -> (Host, Host) {
    let mut admin = admin_queue(daemon.address, NQN, HOSTNQN, 0);
    assert_eq!(admin.set_queues(4).status, Status::SUCCESS);
    let io = io_queue_with(daemon.address, NQN, HOSTNQN, admin.cntlid, 1, digests);
    (admin, io)
}

fn common_header(pdu_type: u8, flags: u8, hlen: u8, pdo: u8, plen: u32) -> Vec<u8> {
    let mut bytes = vec![pdu_type, flags, hlen, pdo];
    bytes.extend_from_slice(&plen.to_le_bytes());
    bytes
}

#[test]
fn wrong_header_lengths_and_unknown_types_end_the_connection() {
    let daemon = daemon();
    let mut witness = Witness::new(&daemon);
    let cases: [(Vec<u8>, u16, u32); 4] = [
        // A CapsuleCmd whose HLEN is 71.
        ([common_header(0x04, 0, 71, 0, 71), vec![0; 63]].concat(), fes::INVALID_HEADER_FIELD, 2),
        // An H2CData whose HLEN is 72.
        ([common_header(0x06, 0, 72, 0, 72), vec![0; 64]].concat(), fes::INVALID_HEADER_FIELD, 2),
        // Type 0x0F does not exist.
        ([common_header(0x0F, 0, 24, 0, 24), vec![0; 16]].concat(), fes::INVALID_HEADER_FIELD, 0),
        // A CapsuleResp is the controller's to send.
        ([common_header(0x05, 0, 24, 0, 24), vec![0; 16]].concat(), fes::INVALID_HEADER_FIELD, 0),
    ];
    for (bytes, expected_fes, expected_fei) in cases {
        let (_admin, mut io) = io_host(&daemon, Digests::default());
        io.send_raw(&bytes);
        assert_eq!(io.expect_closed(), Some((expected_fes, expected_fei)), "{bytes:02x?}");
        witness.check();
    }
}

#[test]
fn a_plen_past_the_maximum_ends_the_connection() {
    let daemon = daemon();
    let mut witness = Witness::new(&daemon);
    // In-capsule data past the IO queue's 4 KiB.
    let (_admin, mut io) = io_host(&daemon, Digests::default());
    let mut command = io.io(io_opcode::WRITE, 1, 0, 9, 0);
    command.sgl = SglDescriptor::in_capsule(4608);
    let header = Encoder::default().capsule_cmd(&command, 4608);
    io.send_raw(header.as_bytes());
    assert_eq!(io.expect_closed(), Some((fes::INVALID_HEADER_FIELD, 4)));
    witness.check();
    // An H2CData past MAXH2CDATA (128 KiB): PLEN is refused before any data is read.
    let (_admin, mut io) = io_host(&daemon, Digests::default());
    let huge = common_header(0x06, 0x04, 24, 24, 24 + (1 << 20));
    io.send_raw(&[huge, vec![0; 16]].concat());
    assert_eq!(io.expect_closed(), Some((fes::INVALID_HEADER_FIELD, 4)));
    // A transfer past MDTS.
    let (_admin, mut io) = io_host(&daemon, Digests::default());
    let mut command = io.io(io_opcode::READ, 1, 0, 512, 0);
    command.sgl = SglDescriptor::transport(512 * BLOCK);
    io.send_capsule(&command, &[]);
    assert_eq!(io.expect_closed(), Some((fes::DATA_LIMIT_EXCEEDED, 0)));
    witness.check();
}

#[test]
fn pdus_before_icreq_and_commands_before_connect() {
    let daemon = daemon();
    let mut witness = Witness::new(&daemon);
    // A capsule before ICReq: a PDU sequence error.
    let mut host = Host::tcp(daemon.address);
    host.rules.initialized = true;
    host.send_capsule(&Command::new(admin_opcode::IDENTIFY, 1), &[]);
    assert_eq!(host.expect_closed(), Some((fes::PDU_SEQUENCE_ERROR, 0)));
    // A second ICReq.
    let mut host = Host::tcp(daemon.address);
    host.initialize(Digests::default());
    host.send_raw(Encoder::ic_req(&IcReq::default()).as_bytes());
    assert_eq!(host.expect_closed(), Some((fes::PDU_SEQUENCE_ERROR, 0)));
    // Commands before Connect: a command sequence error each, and the queue stays usable.
    let mut host = Host::tcp(daemon.address);
    host.initialize(Digests::default());
    assert_eq!(host.identify(0x01, 0, 0).0, Status::COMMAND_SEQUENCE_ERROR);
    assert_eq!(host.read(1, 0, 1, BLOCK).0, Status::COMMAND_SEQUENCE_ERROR);
    let get = bdev_thin::nvme::fabrics::PropertyAccess { offset: 0, eight_bytes: true, value: 0 };
    assert_eq!(host.execute(get.encode_get(0), &[], 0).0.status, Status::COMMAND_SEQUENCE_ERROR);
    assert_eq!(host.connect(NQN, HOSTNQN, 0, CNTLID_DYNAMIC, 0).status, Status::SUCCESS);
    // An IO queue for a controller that does not exist, or before the controller is enabled.
    let mut io = Host::tcp(daemon.address);
    io.initialize(Digests::default());
    let refused = io.connect(NQN, HOSTNQN, 1, 0xBEEF, 0);
    assert_eq!((refused.status.sct, refused.status.sc), (1, 0x82));
    let early = io.connect(NQN, HOSTNQN, 1, host.cntlid, 0);
    assert_eq!(early.status, Status::COMMAND_SEQUENCE_ERROR, "CC.EN is still 0");
    witness.check();
}

#[test]
fn io_to_a_missing_namespace_or_past_its_end() {
    let daemon = daemon();
    let mut witness = Witness::new(&daemon);
    let (_admin, mut io) = io_host(&daemon, Digests::default());
    assert_eq!(io.read(2, 0, 1, BLOCK).0, Status::INVALID_NAMESPACE);
    assert_eq!(io.read(0xFFFF_FFFF, 0, 1, BLOCK).0, Status::INVALID_NAMESPACE);
    assert_eq!(io.write(7, 0, &[0; 512], BLOCK, false), Status::INVALID_NAMESPACE);
    assert_eq!(io.read(1, 131071, 2, BLOCK).0, Status::LBA_OUT_OF_RANGE);
    assert_eq!(io.read(1, u64::MAX, 1, BLOCK).0, Status::LBA_OUT_OF_RANGE);
    assert_eq!(io.write(1, 131070, &[1; 2048], BLOCK, false), Status::LBA_OUT_OF_RANGE);
    let zeroes = io.io(io_opcode::WRITE_ZEROES, 1, 131000, 1000, 0);
    assert_eq!(io.execute(zeroes, &[], 0).0.status, Status::LBA_OUT_OF_RANGE);
    // The transfer must match NLB.
    let mut command = io.io(io_opcode::READ, 1, 0, 8, 0);
    command.cid = io.next_cid();
    command.sgl = SglDescriptor::transport(512);
    io.send_capsule(&command, &[]);
    let Pdu::CapsuleResp(completion) = io.receive().pdu else { panic!("a response") };
    assert_eq!(completion.status, Status::DATA_SGL_LENGTH_INVALID);
    let unknown = io.io(0x7E, 1, 0, 1, 0);
    assert_eq!(io.execute(unknown, &[], 0).0.status, Status::INVALID_OPCODE);
    witness.check();
    // The last block is fine.
    assert_eq!(io.write(1, 131071, &[9; 512], BLOCK, false), Status::SUCCESS);
}

#[test]
fn dataset_management_with_short_data_or_ranges_past_the_end() {
    let daemon = daemon();
    let mut witness = Witness::new(&daemon);
    let (_admin, mut io) = io_host(&daemon, Digests::default());
    let data = pattern(0, 64, BLOCK as usize, 3);
    assert_eq!(io.write(1, 0, &data, BLOCK, false), Status::SUCCESS);
    let range = |slba: u64, blocks: u32| {
        bdev_thin::nvme::command::DsmRange { attributes: 0, length_blocks: blocks, slba }.encode()
    };
    let mut dsm = Command::new(io_opcode::DATASET_MANAGEMENT, 0);
    dsm.nsid = 1;
    dsm.cdw11 = 1 << 2;
    // NR says 2 ranges, 1 is sent (and none): too short.
    dsm.cdw10 = 1;
    assert_eq!(io.execute(dsm, &range(0, 8), 0).0.status, Status::DATA_SGL_LENGTH_INVALID);
    assert_eq!(io.execute(dsm, &[], 0).0.status, Status::DATA_SGL_LENGTH_INVALID);
    // NR says 1 range and a page of ranges comes, as Linux sends it: only the first counts.
    dsm.cdw10 = 0;
    let page = [range(64, 8).to_vec(), vec![0xFF; 4096 - 16]].concat();
    assert_eq!(io.execute(dsm, &page, 0).0.status, Status::SUCCESS);
    dsm.cdw10 = 1;
    // The second range passes the end: nothing is deallocated.
    let ranges = [range(0, 8), range(131000, 1000)].concat();
    assert_eq!(io.execute(dsm, &ranges, 0).0.status, Status::LBA_OUT_OF_RANGE);
    let (_, read) = io.read(1, 0, 64, BLOCK);
    assert_data(&read, &data, "no range of a refused DSM is deallocated");
    // 256 ranges (NR = 255), the most there are: every one deallocated.
    let all: Vec<u8> = (0..256).flat_map(|i| range(200 + 2 * i, 1)).collect();
    dsm.cdw10 = 255;
    assert_eq!(io.execute(dsm, &all, 0).0.status, Status::SUCCESS);
    witness.check();
}

#[test]
fn h2c_data_never_asked_for_or_outside_its_r2t() {
    let daemon = daemon();
    let mut witness = Witness::new(&daemon);
    // No R2T outstanding at all.
    let (_admin, mut io) = io_host(&daemon, Digests::default());
    io.send_h2c(1, 1, 0, &[0; 512], true);
    assert_eq!(io.expect_closed(), Some((fes::INVALID_HEADER_FIELD, 10)));
    // A write asks for 64 KiB; the host sends data at the wrong offset, then past the end.
    for (offset, length) in [(4096u32, 4096usize), (0, 65536 + 512)] {
        let (_admin, mut io) = io_host(&daemon, Digests::default());
        let mut command = io.io(io_opcode::WRITE, 1, 0, 128, 0);
        command.cid = io.next_cid();
        command.sgl = SglDescriptor::transport(65536);
        io.send_capsule(&command, &[]);
        let Pdu::R2t(r2t) = io.receive().pdu else { panic!("an R2T") };
        assert_eq!((r2t.offset, r2t.length), (0, 65536));
        io.send_h2c(command.cid, r2t.ttag, offset, &vec![0; length], true);
        assert_eq!(io.expect_closed(), Some((fes::DATA_OUT_OF_RANGE, 0)));
    }
    // The wrong command ID for the transfer tag.
    let (_admin, mut io) = io_host(&daemon, Digests::default());
    let mut command = io.io(io_opcode::WRITE, 1, 0, 128, 0);
    command.cid = io.next_cid();
    command.sgl = SglDescriptor::transport(65536);
    io.send_capsule(&command, &[]);
    let Pdu::R2t(r2t) = io.receive().pdu else { panic!("an R2T") };
    io.send_h2c(command.cid + 1, r2t.ttag, 0, &[0; 512], false);
    assert_eq!(io.expect_closed(), Some((fes::PDU_SEQUENCE_ERROR, 0)));
    witness.check();
    let (_, read) = witness.io.read(1, 0, 128, BLOCK);
    assert!(read.iter().all(|&b| b == 0), "no refused transfer reached the namespace");
}

#[test]
fn a_header_digest_mismatch_ends_the_connection() {
    let daemon = daemon();
    let mut witness = Witness::new(&daemon);
    let digests = Digests { header: true, data: false };
    let (_admin, mut io) = io_host(&daemon, digests);
    let command = io.io(io_opcode::READ, 1, 0, 1, 0);
    let mut bytes = io.encoder.capsule_cmd(&command, 0).as_bytes().to_vec();
    bytes[72] ^= 0xFF;
    io.send_raw(&bytes);
    assert_eq!(io.expect_closed(), Some((fes::HEADER_DIGEST_ERROR, 0)));
    witness.check();
}

#[test]
fn a_data_digest_mismatch_is_a_transient_transport_error() {
    let daemon = daemon();
    let mut witness = Witness::new(&daemon);
    let digests = Digests { header: true, data: true };
    let (_admin, mut io) = io_host(&daemon, digests);
    let before = pattern(0, 8, BLOCK as usize, 4);
    assert_eq!(io.write(1, 0, &before, BLOCK, false), Status::SUCCESS);
    // In-capsule data with a bad digest.
    let mut command = io.io(io_opcode::WRITE, 1, 0, 8, 0);
    command.cid = io.next_cid();
    command.sgl = SglDescriptor::in_capsule(4096);
    let mut bytes = io.encoder.capsule_cmd(&command, 4096).as_bytes().to_vec();
    bytes.extend_from_slice(&[0xEE; 4096]);
    bytes.extend_from_slice(&(tcp::digest(&[0xEE; 4096]) ^ 1).to_le_bytes());
    io.send_raw(&bytes);
    let Pdu::CapsuleResp(completion) = io.receive().pdu else { panic!("a response") };
    assert_eq!(completion.status, Status::TRANSIENT_TRANSPORT_ERROR);
    // H2CData with a bad digest.
    let mut command = io.io(io_opcode::WRITE, 1, 0, 128, 0);
    command.cid = io.next_cid();
    command.sgl = SglDescriptor::transport(65536);
    io.send_capsule(&command, &[]);
    let Pdu::R2t(r2t) = io.receive().pdu else { panic!("an R2T") };
    let header = DataHeader {
        cccid: command.cid,
        ttag: r2t.ttag,
        offset: 0,
        length: 65536,
        last: true,
        success: false,
    };
    let mut bytes = io.encoder.h2c_data(&header).as_bytes().to_vec();
    bytes.extend_from_slice(&[0xDD; 65536]);
    bytes.extend_from_slice(&0u32.to_le_bytes());
    io.send_raw(&bytes);
    let Pdu::CapsuleResp(completion) = io.receive().pdu else { panic!("a response") };
    assert_eq!(completion.status, Status::TRANSIENT_TRANSPORT_ERROR);
    // Neither write happened; the connection goes on.
    let (status, read) = io.read(1, 0, 8, BLOCK);
    assert_eq!(status, Status::SUCCESS);
    assert_data(&read, &before, "a write with a bad data digest is not executed");
    witness.check();
}

#[test]
fn a_keep_alive_timeout_ends_the_association() {
    // KAS 1 (100 ms), min_kato 100 ms: the host's 200 ms stand.
    let daemon = daemon_with(json!({"trtype": "TCP", "kas": 1, "min_kato": 100}));
    let mut witness = Witness::new(&daemon);
    let mut admin = admin_queue(daemon.address, NQN, HOSTNQN, 200);
    assert_eq!(admin.set_queues(1).status, Status::SUCCESS);
    let mut io = io_queue(daemon.address, NQN, HOSTNQN, admin.cntlid, 1);
    let (kato, _) = admin.admin(admin_opcode::GET_FEATURES, 0, 0x0F, 0, 0);
    assert_eq!(kato.dw0, 200);
    let cntlid = admin.cntlid;
    // No Keep Alive: both queues close (bounded wait, no timing asserted).
    assert_eq!(admin.expect_closed(), None);
    assert_eq!(io.expect_closed(), None);
    let listed =
        call(&daemon.target, "nvmf_subsystem_get_controllers", json!({"nqn": NQN})).unwrap();
    assert!(
        listed.as_array().unwrap().iter().all(|c| c["cntlid"] != json!(cntlid)),
        "the controller is gone: {listed}"
    );
    // The witness (KATO 0: no timer) is untouched.
    witness.check();
}

#[test]
fn a_host_that_stops_reading_holds_only_its_own_connection() {
    let daemon = daemon();
    let mut witness = Witness::new(&daemon);
    let (_admin, mut stuck) = io_host(&daemon, Digests::default());
    // 256 reads of 128 KiB, twice the slots and far more than the socket buffers, never read.
    let mut sent = 0;
    let deadline = Instant::now() + BOUND;
    stuck.stream.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    for _ in 0..256 {
        let mut command = stuck.io(io_opcode::READ, 1, 0, 256, 0);
        command.cid = stuck.next_cid();
        command.sgl = SglDescriptor::transport(256 * BLOCK);
        let header = stuck.encoder.capsule_cmd(&command, 0);
        if stuck.stream.write_all(header.as_bytes()).is_err() || Instant::now() > deadline {
            break; // the target stopped reading us: back-pressure
        }
        sent += 1;
    }
    assert!(sent > 0);
    // Other connections are served meanwhile, and their writes stay.
    for round in 0..4 {
        witness.write(110_000 + 64 * round, 10 + round as u8);
    }
    witness.check();
    // The stuck host goes away; the target drops its association and serves on.
    drop(stuck);
    drop(_admin);
    witness.check();
}

/// True when the target closed `stream` without answering the ICReq sent on it.
fn closed_without_answer(stream: &mut std::net::TcpStream) -> bool {
    let request = IcReq { pfv: 0, hpda: 0, digests: Digests::default(), maxr2t: 0 };
    stream.set_read_timeout(Some(BOUND)).unwrap();
    // The target may already have closed it: a refused write says the same.
    let _ = stream.write_all(Encoder::ic_req(&request).as_bytes());
    let mut byte = [0u8; 1];
    match std::io::Read::read(stream, &mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    }
}

/// Whether the target closes `stream` (which sends nothing) before answering anything.
fn closed_by_target(stream: &mut std::net::TcpStream) -> bool {
    stream.set_read_timeout(Some(BOUND)).unwrap();
    let mut byte = [0u8; 1];
    match std::io::Read::read(stream, &mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// Waits (bounded) until the target has admitted `count` connections.
fn admitted(daemon: &Daemon, count: usize) {
    let deadline = Instant::now() + BOUND;
    while daemon.target.nvmf.connection_count() != count {
        assert!(Instant::now() < deadline, "the target admits {count} connections");
        std::thread::yield_now();
    }
}

/// Sends ICReq on `stream` and reads the whole ICResp: the connection is past its handshake.
fn initialize(stream: &mut std::net::TcpStream) {
    let request = IcReq { pfv: 0, hpda: 0, digests: Digests::default(), maxr2t: 0 };
    stream.set_read_timeout(Some(BOUND)).unwrap();
    stream.write_all(Encoder::ic_req(&request).as_bytes()).expect("ICReq sent");
    let mut response = [0u8; tcp::IC_BYTES];
    std::io::Read::read_exact(stream, &mut response).expect("an ICResp");
    assert_eq!(response[0], tcp::pdu_type::IC_RESP);
}

#[test]
fn connections_past_the_cap_evict_the_oldest_without_icreq_then_are_refused() {
    // No connection may time out while the test fills the target, however slow the machine.
    let timeouts = ConnectionTimeouts { handshake_ms: 3_600_000, ..ConnectionTimeouts::default() };
    let any_host = json!({"allow_any_host": true});
    let daemon = start_target_with(json!({"trtype": "TCP"}), any_host, timeouts);
    let mut witness = Witness::new(&daemon); // two of the connections, past ICReq
    let cap = bdev_thin::limits::NVMF_CONNECTIONS_MAX;
    // Connections that send no ICReq fill the rest, in batches the listen backlog holds so
    // that they are admitted in order; the one after them finds the target full and the first
    // of them, waiting longest for its ICReq, makes room.
    let mut silent = Vec::new();
    while silent.len() < cap - 2 {
        let batch = (cap - 2 - silent.len()).min(32);
        silent.extend(
            (0..batch).map(|_| std::net::TcpStream::connect(daemon.address).expect("connect")),
        );
        admitted(&daemon, 2 + silent.len());
    }
    let mut newcomer = std::net::TcpStream::connect(daemon.address).expect("connect");
    assert!(closed_by_target(&mut silent[0]), "the oldest connection without ICReq is evicted");
    initialize(&mut newcomer);
    witness.check();
    // Every connection past its ICReq: none may be evicted, so one more is refused.
    silent.remove(0);
    for stream in &mut silent {
        initialize(stream);
    }
    let mut refused = std::net::TcpStream::connect(daemon.address).expect("connect");
    assert!(closed_without_answer(&mut refused), "a connection past the cap is closed");
    witness.check();
    // One ends: once the target has seen it close, a host gets in again.
    drop(silent.pop());
    let deadline = Instant::now() + BOUND;
    loop {
        let mut stream = std::net::TcpStream::connect(daemon.address).expect("connect");
        if !closed_without_answer(&mut stream) {
            break;
        }
        assert!(Instant::now() < deadline, "no room after a connection ended");
    }
    witness.check();
}

#[test]
fn more_commands_than_slots_wait_and_an_aer_past_the_limit_is_refused() {
    let daemon = daemon();
    let mut admin = admin_queue(daemon.address, NQN, HOSTNQN, 0);
    assert_eq!(admin.set_queues(1).status, Status::SUCCESS);
    let mut io =
        io_queue_sized(daemon.address, NQN, HOSTNQN, admin.cntlid, 1, Digests::default(), 3);
    // Eight writes pipelined into a queue of four entries: the rest wait in the socket, and
    // each completes, in any order.
    let mut cids = Vec::new();
    for index in 0..8u64 {
        let mut command = io.io(io_opcode::WRITE, 1, index * 8, 8, 0);
        command.cid = io.next_cid();
        command.sgl = SglDescriptor::in_capsule(4096);
        io.send_capsule(&command, &pattern(index * 8, 8, BLOCK as usize, 5));
        cids.push(command.cid);
    }
    for _ in 0..8 {
        let Pdu::CapsuleResp(completion) = io.receive().pdu else { panic!("a response") };
        assert_eq!(completion.status, Status::SUCCESS);
        cids.retain(|&cid| cid != completion.cid);
    }
    assert!(cids.is_empty());
    let (_, read) = io.read(1, 0, 64, BLOCK);
    let expected: Vec<u8> = (0..8).flat_map(|i| pattern(i * 8, 8, BLOCK as usize, 5)).collect();
    assert_data(&read, &expected, "pipelined writes");
    // Four AERs are held (AERL 3); a fifth is refused.
    for cid in 900..904 {
        let mut aer = Command::new(admin_opcode::ASYNC_EVENT_REQUEST, cid);
        aer.cid = cid;
        admin.send_capsule(&aer, &[]);
    }
    let (completion, _) = admin.admin(admin_opcode::ASYNC_EVENT_REQUEST, 0, 0, 0, 0);
    assert_eq!(completion.status, Status::ASYNC_EVENT_LIMIT_EXCEEDED);
    // Abort takes a held AER back.
    let mut abort = Command::new(admin_opcode::ABORT, 950);
    abort.cdw10 = 901 << 16;
    admin.send_capsule(&abort, &[]);
    let mut answers = Vec::new();
    for _ in 0..2 {
        let Pdu::CapsuleResp(completion) = admin.receive().pdu else { panic!("a response") };
        answers.push((completion.cid, completion.status, completion.dw0));
    }
    answers.sort_by_key(|a| a.0);
    assert_eq!(answers[0], (901, Status::ABORTED_BY_REQUEST, 0), "the AER, aborted");
    assert_eq!(answers[1], (950, Status::SUCCESS, 0), "Abort: DW0 bit 0 clear, it was aborted");
}

mod fuzz {
    //! Random bytes after a valid ICReq, and mutated valid PDUs, each on its own connection:
    //! the target answers or closes, never stops serving the witness (proptest, bounded).
    use super::*;
    use proptest::prelude::*;

    fn shared() -> &'static std::sync::Mutex<(Daemon, Witness)> {
        static SHARED: std::sync::OnceLock<std::sync::Mutex<(Daemon, Witness)>> =
            std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            let daemon = daemon();
            let witness = Witness::new(&daemon);
            std::sync::Mutex::new((daemon, witness))
        })
    }

    fn send_and_drain(address: SocketAddr, bytes: &[u8]) {
        let mut host = Host::tcp(address);
        host.stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let _ = host.stream.write_all(Encoder::ic_req(&IcReq::default()).as_bytes());
        let _ = host.stream.write_all(bytes);
        let _ = host.stream.shutdown(std::net::Shutdown::Write);
        // Read whatever comes until the target closes or stays quiet for a moment.
        let mut sink = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut host.stream, &mut sink) {
            if n == 0 {
                break;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_after_icreq(bytes in proptest::collection::vec(any::<u8>(), 1..600)) {
            let mut guard = shared().lock().unwrap_or_else(|p| p.into_inner());
            let (daemon, witness) = &mut *guard;
            send_and_drain(daemon.address, &bytes);
            witness.check();
        }

        #[test]
        fn a_corrupted_capsule(at in 0usize..72, value in any::<u8>(), data_len in 0u32..600) {
            let mut guard = shared().lock().unwrap_or_else(|p| p.into_inner());
            let (daemon, witness) = &mut *guard;
            let mut command = Command::new(io_opcode::WRITE, 7);
            command.nsid = 1;
            command.cdw12 = 0;
            command.sgl = SglDescriptor::in_capsule(data_len);
            let mut bytes = Encoder::default().capsule_cmd(&command, data_len).as_bytes().to_vec();
            bytes[at] = value;
            bytes.extend(std::iter::repeat_n(0xA5, data_len as usize));
            send_and_drain(daemon.address, &bytes);
            witness.check();
        }
    }
}

#[test]
fn a_connection_without_icreq_is_closed_after_the_handshake_timeout() {
    // Generous against a loaded machine: the witness's ICReq must arrive within it.
    let timeouts = ConnectionTimeouts { handshake_ms: 2000, ..ConnectionTimeouts::default() };
    let daemon =
        start_target_with(json!({"trtype": "TCP"}), json!({"allow_any_host": true}), timeouts);
    let mut witness = Witness::new(&daemon);
    let mut silent = std::net::TcpStream::connect(daemon.address).expect("connect");
    assert!(closed_by_target(&mut silent), "closed for want of an ICReq");
    // The witness, accepted before it, outlived its own handshake deadline: past ICReq, it
    // stays served.
    witness.check();
}
