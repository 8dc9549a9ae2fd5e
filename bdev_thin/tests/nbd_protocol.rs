//! The NBD export spoken to by a raw TCP client over 127.0.0.1: negotiation (LIST, INFO, GO,
//! unknown and oversized options), every command, requests split at the device IO bound,
//! back-pressure past the slot count, bad input (unknown commands, misaligned, out-of-range and
//! oversized requests, bad magic, clients vanishing mid-request) with other clients carrying
//! on, and the `nbd_*` RPC methods.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bdev_thin::rpc::{RpcError, call_blocking};
use bdev_thin::runtime::{CoreMask, Runtime, RuntimeOptions};
use bdev_thin::target::Target;
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(20);

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const FLAG_FUA: u16 = 1;
const FLAG_NO_HOLE: u16 = 2;
const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

struct Daemon {
    _runtime: Runtime,
    target: Arc<Target>,
    address: SocketAddr,
}

fn call(target: &Arc<Target>, method: &str, params: Value) -> Result<Value, RpcError> {
    call_blocking(target, method, Some(params))
}

/// A runtime on two reactors (connections are dealt to both), a 64 MiB malloc bdev exported
/// as `disk`, a 1 MiB one exported read-only as `ro`, and the server on a free port.
fn daemon() -> Daemon {
    let options = RuntimeOptions {
        mask: CoreMask(0x3),
        park: true,
        pin: false,
        idle_before_park_us: 200,
        ..Default::default()
    };
    let runtime = Runtime::start(options).expect("reactors start");
    let target = Target::new(runtime.handle());
    let malloc = json!({"name": "Malloc0", "num_blocks": 131072, "block_size": 512});
    call(&target, "bdev_malloc_create", malloc).unwrap();
    let small = json!({"name": "Small", "num_blocks": 256, "block_size": 4096});
    call(&target, "bdev_malloc_create", small).unwrap();
    let started = call(&target, "nbd_server_start", json!({"port": 0})).unwrap();
    assert_eq!(started, json!(true));
    let name =
        call(&target, "nbd_export_add", json!({"bdev_name": "Malloc0", "export_name": "disk"}));
    assert_eq!(name.unwrap(), json!("disk"));
    let ro = json!({"bdev_name": "Small", "export_name": "ro", "read_only": true});
    call(&target, "nbd_export_add", ro).unwrap();
    let address = target.nbd.local_address().expect("the server runs");
    Daemon { _runtime: runtime, target, address }
}

struct Client {
    stream: TcpStream,
}

impl Client {
    /// Connects and completes the greeting (fixed newstyle, no zeroes).
    fn connect(address: SocketAddr) -> Client {
        let stream = TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(BOUND)).unwrap();
        let mut client = Client { stream };
        let mut greeting = [0u8; 18];
        client.stream.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        assert_eq!(u64::from_be_bytes(greeting[8..16].try_into().unwrap()), IHAVEOPT);
        assert_eq!(u16::from_be_bytes([greeting[16], greeting[17]]) & 3, 3);
        client.stream.write_all(&3u32.to_be_bytes()).unwrap();
        client
    }

    fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut message = IHAVEOPT.to_be_bytes().to_vec();
        message.extend_from_slice(&option.to_be_bytes());
        message.extend_from_slice(&(data.len() as u32).to_be_bytes());
        message.extend_from_slice(data);
        self.stream.write_all(&message).unwrap();
    }

    fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut header = [0u8; 20];
        self.stream.read_exact(&mut header).unwrap();
        assert_eq!(u64::from_be_bytes(header[..8].try_into().unwrap()), OPTION_REPLY_MAGIC);
        let option = u32::from_be_bytes(header[8..12].try_into().unwrap());
        let reply_type = u32::from_be_bytes(header[12..16].try_into().unwrap());
        let length = u32::from_be_bytes(header[16..20].try_into().unwrap()) as usize;
        let mut data = vec![0u8; length];
        self.stream.read_exact(&mut data).unwrap();
        (option, reply_type, data)
    }

    fn info_request(name: &str, requests: &[u16]) -> Vec<u8> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        for request in requests {
            data.extend_from_slice(&request.to_be_bytes());
        }
        data
    }

    /// INFO or GO for `name` asking for the block sizes; returns every INFO reply and the
    /// final reply type.
    fn info_or_go(&mut self, option: u32, name: &str) -> (Vec<Vec<u8>>, u32) {
        self.send_option(option, &Self::info_request(name, &[3]));
        let mut infos = Vec::new();
        loop {
            let (replied, reply_type, data) = self.option_reply();
            assert_eq!(replied, option);
            if reply_type == REP_INFO {
                infos.push(data);
            } else {
                return (infos, reply_type);
            }
        }
    }

    fn go(address: SocketAddr, name: &str) -> Client {
        let mut client = Client::connect(address);
        let (_, reply) = client.info_or_go(OPT_GO, name);
        assert_eq!(reply, REP_ACK, "GO {name}");
        client
    }

    fn send_request(&mut self, flags: u16, command: u16, handle: u64, offset: u64, length: u32) {
        let mut header = REQUEST_MAGIC.to_be_bytes().to_vec();
        header.extend_from_slice(&flags.to_be_bytes());
        header.extend_from_slice(&command.to_be_bytes());
        header.extend_from_slice(&handle.to_be_bytes());
        header.extend_from_slice(&offset.to_be_bytes());
        header.extend_from_slice(&length.to_be_bytes());
        self.stream.write_all(&header).unwrap();
    }

    /// Reads one simple reply: (error, handle).
    fn reply(&mut self) -> (u32, u64) {
        let mut header = [0u8; 16];
        self.stream.read_exact(&mut header).unwrap();
        assert_eq!(u32::from_be_bytes(header[..4].try_into().unwrap()), REPLY_MAGIC);
        let error = u32::from_be_bytes(header[4..8].try_into().unwrap());
        (error, u64::from_be_bytes(header[8..].try_into().unwrap()))
    }

    fn command(&mut self, flags: u16, command: u16, offset: u64, length: u32) -> u32 {
        self.send_request(flags, command, 7, offset, length);
        let (error, handle) = self.reply();
        assert_eq!(handle, 7);
        error
    }

    fn write(&mut self, flags: u16, offset: u64, data: &[u8]) -> u32 {
        self.send_request(flags, CMD_WRITE, 9, offset, data.len() as u32);
        self.stream.write_all(data).unwrap();
        let (error, handle) = self.reply();
        assert_eq!(handle, 9);
        error
    }

    fn read(&mut self, offset: u64, length: u32) -> Result<Vec<u8>, u32> {
        self.send_request(0, CMD_READ, 11, offset, length);
        let (error, handle) = self.reply();
        assert_eq!(handle, 11);
        if error != 0 {
            return Err(error);
        }
        let mut data = vec![0u8; length as usize];
        self.stream.read_exact(&mut data).unwrap();
        Ok(data)
    }

    /// True once the server closed the connection (EOF or reset), within the bound.
    fn is_closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

fn pattern(length: usize, seed: u8) -> Vec<u8> {
    (0..length).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn connections(target: &Arc<Target>) -> u32 {
    target.nbd.exports().iter().map(|e| e.connection_count).sum()
}

#[test]
fn negotiation_lists_describes_and_refuses() {
    let daemon = daemon();
    let mut client = Client::connect(daemon.address);
    client.send_option(99, b"whatever");
    let (option, reply, message) = client.option_reply();
    assert_eq!((option, reply), (99, REP_ERR_UNSUP));
    assert!(!message.is_empty(), "errors say why");

    client.send_option(OPT_LIST, &[]);
    let mut names = Vec::new();
    loop {
        let (_, reply, data) = client.option_reply();
        if reply == REP_ACK {
            break;
        }
        assert_eq!(reply, REP_SERVER);
        let length = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        names.push(String::from_utf8(data[4..4 + length].to_vec()).unwrap());
    }
    assert_eq!(names, ["disk", "ro"]);

    let (_, reply) = client.info_or_go(OPT_INFO, "nope");
    assert_eq!(reply, REP_ERR_UNKNOWN);

    // An option longer than the server takes is skipped and refused; the session goes on.
    client.send_option(OPT_INFO, &vec![0u8; 100_000]);
    let (_, reply, _) = client.option_reply();
    assert_eq!(reply, REP_ERR_TOO_BIG);

    let (infos, reply) = client.info_or_go(OPT_INFO, "disk");
    assert_eq!(reply, REP_ACK);
    let export = infos.iter().find(|i| i[..2] == [0, 0]).expect("NBD_INFO_EXPORT");
    assert_eq!(u64::from_be_bytes(export[2..10].try_into().unwrap()), 64 << 20);
    let flags = u16::from_be_bytes([export[10], export[11]]);
    assert_eq!(flags & 0b110_1101, 0b110_1101, "flags: has_flags, flush, fua, trim, zeroes");
    assert_eq!(flags & 2, 0, "writable");
    let sizes = infos.iter().find(|i| i[..2] == [0, 3]).expect("NBD_INFO_BLOCK_SIZE");
    let size = |at: usize| u32::from_be_bytes(sizes[at..at + 4].try_into().unwrap());
    assert_eq!((size(2), size(6), size(10)), (512, 4096, 32 << 20));

    let (infos, reply) = client.info_or_go(OPT_GO, "ro");
    assert_eq!(reply, REP_ACK);
    let export = infos.iter().find(|i| i[..2] == [0, 0]).unwrap();
    assert_eq!(u16::from_be_bytes([export[10], export[11]]) & 2, 2, "read-only flag");
    assert_eq!(client.write(0, 0, &[1u8; 4096]), EPERM, "writes to a read-only export");
    assert_eq!(client.command(0, CMD_TRIM, 0, 4096), EPERM);
    assert_eq!(client.read(0, 4096).unwrap(), vec![0u8; 4096]);
    // The read-only export has 4 KiB blocks: a 512-byte read is misaligned.
    assert_eq!(client.read(512, 512), Err(EINVAL));
    client.send_request(0, CMD_DISC, 1, 0, 0);
    assert!(client.is_closed_by_server());
}

#[test]
fn export_name_option_and_the_default_export() {
    let daemon = daemon();
    // The old EXPORT_NAME option: size and flags, then transmission (no zeroes: negotiated).
    let mut client = Client::connect(daemon.address);
    client.send_option(1, b"disk");
    let mut answer = [0u8; 10];
    client.stream.read_exact(&mut answer).unwrap();
    assert_eq!(u64::from_be_bytes(answer[..8].try_into().unwrap()), 64 << 20);
    assert_eq!(client.write(0, 4096, &pattern(4096, 5)), 0);
    assert_eq!(client.read(4096, 4096).unwrap(), pattern(4096, 5));
    // An unknown name has no error reply in EXPORT_NAME: the server closes.
    let mut unknown = Client::connect(daemon.address);
    unknown.send_option(1, b"nope");
    assert!(unknown.is_closed_by_server());
    // "" is the default export: the first one.
    let mut default = Client::go(daemon.address, "");
    assert_eq!(default.read(4096, 4096).unwrap(), pattern(4096, 5));
}

#[test]
fn commands_round_trip_and_bad_requests_get_errors() {
    let daemon = daemon();
    let mut client = Client::go(daemon.address, "disk");
    let data = pattern(64 << 10, 3);
    assert_eq!(client.write(FLAG_FUA, 1 << 20, &data), 0);
    assert_eq!(client.read(1 << 20, 64 << 10).unwrap(), data);
    assert_eq!(client.command(0, CMD_FLUSH, 0, 0), 0);
    assert_eq!(client.command(FLAG_NO_HOLE, CMD_WRITE_ZEROES, (1 << 20) + 4096, 4096), 0);
    let read = client.read(1 << 20, 12288).unwrap();
    assert_eq!(read[..4096], data[..4096]);
    assert!(read[4096..8192].iter().all(|&b| b == 0), "write_zeroes zeroed");
    assert_eq!(read[8192..], data[8192..12288]);
    assert_eq!(client.command(0, CMD_TRIM, 1 << 20, 64 << 10), 0);

    // Bad requests: each gets an error and the connection carries on.
    assert_eq!(client.command(0, 42, 0, 0), EINVAL, "unknown command");
    assert_eq!(client.read(64 << 20, 512), Err(EINVAL), "past the end");
    assert_eq!(client.read(u64::MAX - 511, 512), Err(EINVAL), "offset overflow");
    assert_eq!(client.read(100, 512), Err(EINVAL), "misaligned");
    assert_eq!(client.read(0, 64 << 20), Err(EINVAL), "over the maximum payload");
    assert_eq!(client.write(0, (64 << 20) - 512, &[5u8; 1024]), ENOSPC, "write past the end");
    assert_eq!(client.command(0, CMD_TRIM, 64 << 20, 4096), EINVAL);
    assert_eq!(client.command(0, CMD_WRITE_ZEROES, 0, 100), EINVAL);
    assert_eq!(client.read(0, 0).unwrap(), Vec::<u8>::new(), "length 0");
    assert_eq!(client.read(1 << 20, 4096).unwrap(), vec![0u8; 4096], "malloc trims to zeroes");

    // The largest payload, split into device IOs of at most IO_BYTES_MAX, both ways.
    let big = pattern(32 << 20, 9);
    assert_eq!(client.write(0, 16 << 20, &big), 0);
    assert!(client.read(16 << 20, 32 << 20).unwrap() == big, "32 MiB round trip");

    // More pipelined requests than the connection has slots: back-pressure, all answered.
    let count = 300u64;
    for handle in 0..count {
        client.send_request(0, CMD_READ, handle, (handle % 64) * 4096, 4096);
    }
    let mut seen = vec![false; count as usize];
    for _ in 0..count {
        let (error, handle) = client.reply();
        assert_eq!(error, 0);
        let mut block = vec![0u8; 4096];
        client.stream.read_exact(&mut block).unwrap();
        seen[handle as usize] = true;
    }
    assert!(seen.iter().all(|&s| s), "every handle answered once");
    client.send_request(0, CMD_DISC, 1, 0, 0);
    assert!(client.is_closed_by_server());
    wait_until("the connection to end", || connections(&daemon.target) == 0);
}

#[test]
fn broken_clients_end_only_their_own_connection() {
    let daemon = daemon();
    let mut good = Client::go(daemon.address, "disk");
    assert_eq!(good.write(0, 0, &pattern(8192, 1)), 0);

    // A client that vanishes in the middle of a write's payload.
    let mut vanishing = Client::go(daemon.address, "disk");
    vanishing.send_request(0, CMD_WRITE, 1, 0, 1 << 20);
    vanishing.stream.write_all(&[0xee; 1000]).unwrap();
    drop(vanishing);
    // One that vanishes right after asking for a large read.
    let mut reader = Client::go(daemon.address, "disk");
    reader.send_request(0, CMD_READ, 1, 0, 8 << 20);
    drop(reader);
    // A bad request magic closes the connection.
    let mut bad_magic = Client::go(daemon.address, "disk");
    bad_magic.stream.write_all(&[0x55u8; 28]).unwrap();
    assert!(bad_magic.is_closed_by_server());
    // Unknown client flags close it during negotiation.
    let mut bad_flags = TcpStream::connect(daemon.address).unwrap();
    bad_flags.set_read_timeout(Some(BOUND)).unwrap();
    let mut greeting = [0u8; 18];
    bad_flags.read_exact(&mut greeting).unwrap();
    bad_flags.write_all(&0xffff_ffffu32.to_be_bytes()).unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(bad_flags.read(&mut byte), Ok(0) | Err(_)));
    // Garbage instead of an option, and a client gone before it said anything.
    let mut garbage = Client::connect(daemon.address);
    garbage.stream.write_all(&[0u8; 64]).unwrap();
    assert!(garbage.is_closed_by_server());
    drop(TcpStream::connect(daemon.address).unwrap());

    // The first client carries on, and the half-sent write changed nothing.
    assert_eq!(good.read(0, 8192).unwrap(), pattern(8192, 1));
    let mut late = Client::go(daemon.address, "disk");
    assert_eq!(late.read(0, 8192).unwrap(), pattern(8192, 1));
    drop(late);
    drop(good);
    wait_until("every connection to end", || connections(&daemon.target) == 0);
}

#[test]
fn rpc_methods_manage_server_and_exports() {
    let daemon = daemon();
    let target = &daemon.target;
    let exports = call(target, "nbd_get_exports", json!({})).unwrap();
    assert_eq!(exports[0]["export_name"], "disk");
    assert_eq!(exports[0]["bdev_name"], "Malloc0");
    assert_eq!(exports[1]["read_only"], true);

    let error =
        call(target, "nbd_export_add", json!({"bdev_name": "Malloc0", "export_name": "disk"}))
            .unwrap_err();
    assert_eq!(error.code, -libc::EEXIST);
    let error = call(target, "nbd_export_add", json!({"bdev_name": "nope"})).unwrap_err();
    assert_eq!(error.code, -libc::ENODEV);
    let error = call(target, "nbd_export_add", json!({"bdev_nam": "Malloc0"})).unwrap_err();
    assert_eq!(error.code, -32602);
    // A second export of the same bdev defaults to the bdev's name.
    let name = call(target, "nbd_export_add", json!({"bdev_name": "Malloc0"})).unwrap();
    assert_eq!(name, "Malloc0");

    // An exported bdev cannot be deleted; after its exports are removed it can.
    let error = call(target, "bdev_malloc_delete", json!({"name": "Small"})).unwrap_err();
    assert_eq!(error.code, -libc::EBUSY);
    call(target, "nbd_export_remove", json!({"export_name": "ro"})).unwrap();
    let error = call(target, "nbd_export_remove", json!({"export_name": "ro"})).unwrap_err();
    assert_eq!(error.code, -libc::ENODEV);
    call(target, "bdev_malloc_delete", json!({"name": "Small"})).unwrap();

    // Removing an export closes its connections.
    let mut client = Client::go(daemon.address, "Malloc0");
    assert_eq!(client.read(0, 512).unwrap().len(), 512);
    call(target, "nbd_export_remove", json!({"export_name": "Malloc0"})).unwrap();
    assert!(client.is_closed_by_server());

    let error = call(target, "nbd_start_disk", json!({"bdev_name": "Malloc0"})).unwrap_err();
    assert!(error.message.contains("NBD over TCP"), "{}", error.message);
    assert_eq!(call(target, "nbd_get_disks", json!({})).unwrap(), json!([]));

    let entries = bdev_thin::rpc::methods::nbd::config_entries(target);
    assert_eq!(entries.len(), 2, "one export left, then the server");
    let disk = json!({"bdev_name": "Malloc0", "export_name": "disk", "read_only": false});
    assert_eq!(entries[0], json!({"method": "nbd_export_add", "params": disk}));
    assert_eq!(entries[1]["method"], "nbd_server_start");
    assert_eq!(entries[1]["params"]["port"], daemon.address.port());

    let error = call(target, "nbd_server_start", json!({"port": 0})).unwrap_err();
    assert_eq!(error.code, -1, "already running");
    // Stop replies once the port is closed, so the same port binds again at once.
    call(target, "nbd_server_stop", json!({})).unwrap();
    assert!(TcpStream::connect(daemon.address).is_err(), "nothing listens");
    let error = call(target, "nbd_server_stop", json!({})).unwrap_err();
    assert_eq!(error.code, -1, "not running");
    let port = daemon.address.port();
    call(target, "nbd_server_start", json!({"listen_address": "127.0.0.1", "port": port})).unwrap();
    let mut client = Client::go(daemon.address, "disk");
    assert_eq!(client.read(0, 512).unwrap().len(), 512);
    let error = call(target, "nbd_server_start", json!({"listen_address": "example"})).unwrap_err();
    assert_eq!(error.code, -1, "already running is checked first");
}
