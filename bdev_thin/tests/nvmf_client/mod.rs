//! A small synchronous NVMe/TCP host for tests: raw PDUs over a blocking 127.0.0.1 socket,
//! built with the crate's `nvme` codec (whose layouts its own tests pin to the specifications)
//! plus raw byte access for the bad-input tests. One command at a time unless a test drives
//! the lower-level `send_capsule` / `receive` itself. Also an in-process target to test
//! against ([`start_target`]).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bdev_thin::admission::ConnectionTimeouts;
use bdev_thin::rpc::{RpcError, call_blocking};
use bdev_thin::runtime::{CoreMask, Runtime, RuntimeOptions};
use bdev_thin::target::Target;
use serde_json::{Value, json};

use bdev_thin::nvme::command::{
    Command, Completion, SglDescriptor, Status, admin_opcode, io_opcode,
};
use bdev_thin::nvme::fabrics::{
    CNTLID_DYNAMIC, ConnectCommand, ConnectData, PropertyAccess, cc, csts, property,
};
use bdev_thin::nvme::identify::IDENTIFY_BYTES;
use bdev_thin::nvme::tcp::{
    self, COMMON_HEADER_BYTES, CommonHeader, DataHeader, Digests, Encoder, IcReq, IcResp, Pdu,
    ReceiveRules, Role,
};

pub const BOUND: Duration = Duration::from_secs(20);
/// The subsystem `start_target` makes.
pub const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
/// Its namespace's block size.
pub const BLOCK: u32 = 512;

/// A target in this process: two reactors, listening on 127.0.0.1 at `address`.
pub struct TestTarget {
    _runtime: Runtime,
    pub target: Arc<Target>,
    pub address: SocketAddr,
}

pub fn call(target: &Arc<Target>, method: &str, params: Value) -> Result<Value, RpcError> {
    call_blocking(target, method, Some(params))
}

/// Two reactors, a TCP transport made with `transport`, subsystem `NQN` made with `subsystem`
/// (`nqn` added) with a 64 MiB malloc namespace of 512-byte blocks (`Malloc0`, NSID 1),
/// listening on 127.0.0.1 (a free port).
pub fn start_target(transport: Value, subsystem: Value) -> TestTarget {
    start_target_with(transport, subsystem, ConnectionTimeouts::default())
}

/// As [`start_target`], closing connections on `timeouts`.
pub fn start_target_with(
    transport: Value,
    mut subsystem: Value,
    timeouts: ConnectionTimeouts,
) -> TestTarget {
    let options = RuntimeOptions {
        mask: CoreMask(0x3),
        park: true,
        pin: false,
        idle_before_park_us: 200,
        ..Default::default()
    };
    let runtime = Runtime::start(options).expect("reactors start");
    let target = Target::with_connection_timeouts(runtime.handle(), timeouts);
    let malloc = json!({"name": "Malloc0", "num_blocks": 131072, "block_size": BLOCK});
    call(&target, "bdev_malloc_create", malloc).unwrap();
    call(&target, "nvmf_create_transport", transport).unwrap();
    subsystem["nqn"] = json!(NQN);
    call(&target, "nvmf_create_subsystem", subsystem).unwrap();
    let ns = json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}});
    assert_eq!(call(&target, "nvmf_subsystem_add_ns", ns).unwrap(), json!(1));
    let listen = json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "0"});
    call(&target, "nvmf_subsystem_add_listener", json!({"nqn": NQN, "listen_address": listen}))
        .unwrap();
    let listen = bdev_thin::export::nvmf_tcp::ListenAddress {
        adrfam: "IPv4".into(),
        traddr: "127.0.0.1".into(),
        trsvcid: "0".into(),
    };
    let address = target.nvmf.bound_address(&listen).expect("the listener is bound");
    TestTarget { _runtime: runtime, target, address }
}
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";

/// A PDU as received: its decoded header, the raw header bytes and its data.
#[derive(Debug)]
pub struct Received {
    pub pdu: Pdu,
    pub header: Vec<u8>,
    pub data: Vec<u8>,
    /// The data digest matched (or there was none).
    pub data_digest_ok: bool,
}

pub struct Host {
    pub stream: TcpStream,
    pub encoder: Encoder,
    pub rules: ReceiveRules,
    next_cid: u16,
    pub maxh2cdata: u32,
    pub cntlid: u16,
    /// In-capsule data the queue takes (admin: 8 KiB; IO: from IOCCSZ).
    pub capsule_data_max: u32,
    pub qid: u16,
    /// SQSIZE this host connects with (0's based).
    pub sqsize: u16,
}

impl Host {
    /// A TCP connection, no ICReq yet.
    pub fn tcp(address: SocketAddr) -> Host {
        let stream = TcpStream::connect(address).expect("connect to the target");
        stream.set_read_timeout(Some(BOUND)).unwrap();
        stream.set_nodelay(true).unwrap();
        Host {
            stream,
            encoder: Encoder::default(),
            rules: ReceiveRules {
                role: Role::Host,
                initialized: false,
                digests: Digests::default(),
                data_alignment: 0,
                capsule_data_max: 0,
                data_pdu_max: u32::MAX,
            },
            next_cid: 1,
            maxh2cdata: 0,
            cntlid: 0,
            capsule_data_max: 8192,
            qid: 0,
            sqsize: 31,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// ICReq / ICResp with `digests`.
    pub fn initialize(&mut self, digests: Digests) -> IcResp {
        let request = IcReq { pfv: 0, hpda: 0, digests, maxr2t: 0 };
        let bytes = Encoder::ic_req(&request);
        self.send_raw(bytes.as_bytes());
        let received = self.receive();
        let Pdu::IcResp(response) = received.pdu else {
            panic!("expected ICResp, got {:?}", received.pdu);
        };
        assert_eq!(response.digests, digests, "the target grants the digests asked for");
        self.encoder.digests = response.digests;
        self.rules.digests = response.digests;
        self.rules.initialized = true;
        self.maxh2cdata = response.maxh2cdata;
        response
    }

    /// Reads one PDU (panics on a malformed one or a closed socket).
    pub fn receive(&mut self) -> Received {
        self.try_receive().expect("a PDU from the target")
    }

    /// Reads one PDU, or `None` if the target closed the connection.
    pub fn try_receive(&mut self) -> Option<Received> {
        let mut common_raw = [0u8; COMMON_HEADER_BYTES];
        if self.stream.read_exact(&mut common_raw).is_err() {
            return None;
        }
        let common = CommonHeader::decode(&common_raw);
        let framing = tcp::frame(&common, &self.rules).expect("a well-framed PDU from the target");
        let mut header = common_raw.to_vec();
        header.resize(framing.header_bytes, 0);
        self.stream.read_exact(&mut header[COMMON_HEADER_BYTES..]).ok()?;
        let hlen = usize::from(common.hlen);
        if framing.header_bytes > hlen {
            tcp::check_header_digest(&header, hlen).expect("the target's header digest");
        }
        let pdu = tcp::decode(&header[..hlen], &framing).expect("a decodable PDU");
        let mut pad = vec![0u8; framing.pad_bytes];
        self.stream.read_exact(&mut pad).ok()?;
        let mut data = vec![0u8; framing.data_bytes];
        self.stream.read_exact(&mut data).ok()?;
        let mut data_digest_ok = true;
        if framing.data_digest {
            let mut digest = [0u8; 4];
            self.stream.read_exact(&mut digest).ok()?;
            data_digest_ok = u32::from_le_bytes(digest) == tcp::digest(&data);
        }
        Some(Received { pdu, header: header[..hlen].to_vec(), data, data_digest_ok })
    }

    /// Waits for the target to close the connection, discarding what it sends; returns the
    /// TermReq's (FES, FEI) if one came.
    pub fn expect_closed(&mut self) -> Option<(u16, u32)> {
        let mut term = None;
        loop {
            let mut common_raw = [0u8; COMMON_HEADER_BYTES];
            if self.stream.read_exact(&mut common_raw).is_err() {
                return term;
            }
            let common = CommonHeader::decode(&common_raw);
            let mut rest = vec![0u8; (common.plen as usize).saturating_sub(COMMON_HEADER_BYTES)];
            if self.stream.read_exact(&mut rest).is_err() {
                return term;
            }
            if common.pdu_type == tcp::pdu_type::C2H_TERM_REQ {
                let fes = u16::from_le_bytes([rest[0], rest[1]]);
                let fei = u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]);
                term = Some((fes, fei));
            }
        }
    }

    pub fn next_cid(&mut self) -> u16 {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        cid
    }

    /// Sends a command capsule; `data` goes in the capsule.
    pub fn send_capsule(&mut self, command: &Command, data: &[u8]) {
        let header = self.encoder.capsule_cmd(command, data.len() as u32);
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(data);
        if self.encoder.digests.data && !data.is_empty() {
            bytes.extend_from_slice(&tcp::digest(data).to_le_bytes());
        }
        self.send_raw(&bytes);
    }

    /// Sends H2CData for `data` at `offset`.
    pub fn send_h2c(&mut self, cccid: u16, ttag: u16, offset: u32, data: &[u8], last: bool) {
        let header =
            DataHeader { cccid, ttag, offset, length: data.len() as u32, last, success: false };
        let encoded = self.encoder.h2c_data(&header);
        let mut bytes = encoded.as_bytes().to_vec();
        bytes.extend_from_slice(data);
        if self.encoder.digests.data {
            bytes.extend_from_slice(&tcp::digest(data).to_le_bytes());
        }
        self.send_raw(&bytes);
    }

    /// Runs one command to completion: `data_out` goes in the capsule or after R2T;
    /// `data_in` bytes come back in C2HData. Returns the completion and the data.
    pub fn execute(
        &mut self,
        mut command: Command,
        data_out: &[u8],
        data_in: u32,
    ) -> (Completion, Vec<u8>) {
        command.cid = self.next_cid();
        let in_capsule = !data_out.is_empty() && data_out.len() as u32 <= self.capsule_data_max;
        command.sgl = if in_capsule {
            SglDescriptor::in_capsule(data_out.len() as u32)
        } else {
            SglDescriptor::transport(data_out.len() as u32 + data_in)
        };
        self.send_capsule(&command, if in_capsule { data_out } else { &[] });
        let mut data = Vec::new();
        loop {
            let received = self.receive();
            match received.pdu {
                Pdu::R2t(r2t) => {
                    assert_eq!(r2t.cccid, command.cid);
                    let end = (r2t.offset + r2t.length) as usize;
                    let mut offset = r2t.offset as usize;
                    while offset < end {
                        let n = (end - offset).min(self.maxh2cdata as usize);
                        let last = offset + n == end;
                        let chunk = data_out[offset..offset + n].to_vec();
                        self.send_h2c(command.cid, r2t.ttag, offset as u32, &chunk, last);
                        offset += n;
                    }
                }
                Pdu::C2hData(header) => {
                    assert_eq!(header.cccid, command.cid);
                    assert!(received.data_digest_ok, "C2HData digest");
                    assert_eq!(header.offset as usize, data.len());
                    data.extend_from_slice(&received.data);
                    if header.success {
                        let completion = Completion { cid: command.cid, ..Completion::default() };
                        return (completion, data);
                    }
                }
                Pdu::CapsuleResp(completion) => {
                    assert_eq!(completion.cid, command.cid, "responses in order here");
                    return (completion, data);
                }
                other => panic!("unexpected PDU {other:?}"),
            }
        }
    }

    /// Fabrics Connect on this queue.
    pub fn connect(
        &mut self,
        subnqn: &str,
        hostnqn: &str,
        qid: u16,
        cntlid: u16,
        kato_ms: u32,
    ) -> Completion {
        let connect = ConnectCommand { recfmt: 0, qid, sqsize: self.sqsize, cattr: 0, kato_ms };
        let data = ConnectData {
            host_id: [0x11; 16],
            cntlid,
            subnqn: subnqn.to_string(),
            hostnqn: hostnqn.to_string(),
        };
        let (completion, _) = self.execute(connect.encode(0), &data.encode(), 0);
        if completion.status.is_success() {
            self.cntlid = completion.dw0 as u16;
            self.qid = qid;
        }
        completion
    }

    pub fn property_get(&mut self, offset: u32, eight_bytes: bool) -> u64 {
        let access = PropertyAccess { offset, eight_bytes, value: 0 };
        let (completion, _) = self.execute(access.encode_get(0), &[], 0);
        assert_eq!(completion.status, Status::SUCCESS, "property get {offset:#x}");
        u64::from(completion.dw0) | (u64::from(completion.dw1) << 32)
    }

    pub fn property_set(&mut self, offset: u32, value: u32) -> Status {
        let access = PropertyAccess { offset, eight_bytes: false, value: u64::from(value) };
        self.execute(access.encode_set(0), &[], 0).0.status
    }

    /// CC.EN = 1 (IOSQES 6, IOCQES 4), then CSTS.RDY.
    pub fn enable(&mut self) {
        let value = cc::ENABLE | (6 << cc::IOSQES_SHIFT) | (4 << cc::IOCQES_SHIFT);
        assert_eq!(self.property_set(property::CC, value), Status::SUCCESS);
        assert_eq!(self.property_get(property::CSTS, false) as u32 & csts::READY, csts::READY);
    }

    pub fn admin(
        &mut self,
        opcode: u8,
        nsid: u32,
        cdw10: u32,
        cdw11: u32,
        data_in: u32,
    ) -> (Completion, Vec<u8>) {
        let mut command = Command::new(opcode, 0);
        command.nsid = nsid;
        command.cdw10 = cdw10;
        command.cdw11 = cdw11;
        self.execute(command, &[], data_in)
    }

    pub fn identify(&mut self, cns: u8, nsid: u32, csi: u8) -> (Status, Vec<u8>) {
        let (completion, data) = self.admin(
            admin_opcode::IDENTIFY,
            nsid,
            u32::from(cns),
            u32::from(csi) << 24,
            IDENTIFY_BYTES as u32,
        );
        (completion.status, data)
    }

    pub fn set_queues(&mut self, count: u32) -> Completion {
        let value = (count - 1) | ((count - 1) << 16);
        self.admin(admin_opcode::SET_FEATURES, 0, 0x07, value, 0).0
    }

    pub fn get_log_page(&mut self, lid: u8, bytes: u32, offset: u64) -> (Status, Vec<u8>) {
        let mut command = Command::new(admin_opcode::GET_LOG_PAGE, 0);
        let dwords = bytes / 4 - 1;
        command.nsid = 0xFFFF_FFFF;
        command.cdw10 = u32::from(lid) | ((dwords & 0xFFFF) << 16);
        command.cdw11 = dwords >> 16;
        command.cdw12 = offset as u32;
        command.cdw13 = (offset >> 32) as u32;
        let (completion, data) = self.execute(command, &[], bytes);
        (completion.status, data)
    }

    pub fn io(
        &mut self,
        opcode: u8,
        nsid: u32,
        slba: u64,
        blocks: u32,
        cdw12_flags: u32,
    ) -> Command {
        let mut command = Command::new(opcode, 0);
        command.nsid = nsid;
        command.cdw10 = slba as u32;
        command.cdw11 = (slba >> 32) as u32;
        command.cdw12 = (blocks - 1) | cdw12_flags;
        command
    }

    pub fn write(&mut self, nsid: u32, slba: u64, data: &[u8], block: u32, fua: bool) -> Status {
        let flags = if fua { 1 << 30 } else { 0 };
        let command = self.io(io_opcode::WRITE, nsid, slba, data.len() as u32 / block, flags);
        self.execute(command, data, 0).0.status
    }

    pub fn read(&mut self, nsid: u32, slba: u64, blocks: u32, block: u32) -> (Status, Vec<u8>) {
        let command = self.io(io_opcode::READ, nsid, slba, blocks, 0);
        let (completion, data) = self.execute(command, &[], blocks * block);
        (completion.status, data)
    }

    pub fn flush(&mut self, nsid: u32) -> Status {
        let mut command = Command::new(io_opcode::FLUSH, 0);
        command.nsid = nsid;
        self.execute(command, &[], 0).0.status
    }

    /// Dataset Management deallocate of `ranges` (slba, blocks).
    pub fn deallocate(&mut self, nsid: u32, ranges: &[(u64, u32)]) -> Status {
        let mut command = Command::new(io_opcode::DATASET_MANAGEMENT, 0);
        command.nsid = nsid;
        command.cdw10 = ranges.len() as u32 - 1;
        command.cdw11 = 1 << 2;
        let mut data = Vec::new();
        for &(slba, blocks) in ranges {
            let range =
                bdev_thin::nvme::command::DsmRange { attributes: 0, length_blocks: blocks, slba };
            data.extend_from_slice(&range.encode());
        }
        self.execute(command, &data, 0).0.status
    }
}

/// An admin queue connected to `subnqn` and enabled.
pub fn admin_queue(address: SocketAddr, subnqn: &str, hostnqn: &str, kato_ms: u32) -> Host {
    let mut host = Host::tcp(address);
    host.initialize(Digests::default());
    let completion = host.connect(subnqn, hostnqn, 0, CNTLID_DYNAMIC, kato_ms);
    assert_eq!(completion.status, Status::SUCCESS, "admin Connect");
    host.enable();
    host
}

/// IO queue `qid` of controller `cntlid`.
pub fn io_queue(address: SocketAddr, subnqn: &str, hostnqn: &str, cntlid: u16, qid: u16) -> Host {
    io_queue_with(address, subnqn, hostnqn, cntlid, qid, Digests::default())
}

pub fn io_queue_with(
    address: SocketAddr,
    subnqn: &str,
    hostnqn: &str,
    cntlid: u16,
    qid: u16,
    digests: Digests,
) -> Host {
    io_queue_sized(address, subnqn, hostnqn, cntlid, qid, digests, 31)
}

/// An IO queue of `sqsize + 1` entries.
pub fn io_queue_sized(
    address: SocketAddr,
    subnqn: &str,
    hostnqn: &str,
    cntlid: u16,
    qid: u16,
    digests: Digests,
    sqsize: u16,
) -> Host {
    let mut host = Host::tcp(address);
    host.sqsize = sqsize;
    host.initialize(digests);
    let completion = host.connect(subnqn, hostnqn, qid, cntlid, 0);
    assert_eq!(completion.status, Status::SUCCESS, "IO Connect");
    host.capsule_data_max = 4096;
    host
}

/// A deterministic pattern for block `lba` written with `seed`.
pub fn pattern(lba: u64, blocks: usize, block: usize, seed: u8) -> Vec<u8> {
    let mut data = vec![0u8; blocks * block];
    for (index, byte) in data.iter_mut().enumerate() {
        let at = lba * block as u64 + index as u64;
        *byte = (at.wrapping_mul(2654435761) >> 7) as u8 ^ seed;
    }
    data
}

/// Compares data without printing megabytes: the first differing offset and the lengths.
#[track_caller]
pub fn assert_data(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first = actual.iter().zip(expected).position(|(a, b)| a != b);
    panic!(
        "{what}: {} bytes read, {} expected, first difference at {first:?}",
        actual.len(),
        expected.len()
    );
}
