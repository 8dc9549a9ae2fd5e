//! The NVMe-oF/TCP target spoken to by a raw NVMe/TCP host over 127.0.0.1 (in-process target on
//! two reactors): the Linux host's connect sequence (Connect, properties, Identify controller,
//! CNS 06h, namespaces, descriptors, Set Features queues), IO queues on both cores, reads and
//! writes in-capsule and through R2T, FUA, Flush, Write Zeroes with and without DEAC, Dataset
//! Management, digests, the discovery log, log pages, features, AERs on namespace add, remove
//! and resize, a host NQN refused, and the bdev held while exported.

mod nvmf_client;

use bdev_thin::nvme::command::{Status, admin_opcode, io_opcode};
use bdev_thin::nvme::fabrics::{CNTLID_DYNAMIC, connect_status, property};
use bdev_thin::nvme::identify::{
    IDENTIFY_BYTES, IdentifyController, IdentifyControllerNvm, IdentifyNamespace, NamespaceId,
    decode_active_namespaces, decode_namespace_descriptors,
};
use bdev_thin::nvme::log::{DISCOVERY_ENTRY_BYTES, DiscoveryEntry, decode_discovery_header};
use bdev_thin::nvme::tcp::Digests;
use nvmf_client::{
    HOSTNQN, Host, NQN, TestTarget, admin_queue, assert_data, call, io_queue, io_queue_with,
    pattern, start_target,
};
use serde_json::json;

type Daemon = TestTarget;

/// `NQN` for any host, its serial number "SN42".
fn daemon() -> Daemon {
    start_target(json!({"trtype": "TCP"}), json!({"allow_any_host": true, "serial_number": "SN42"}))
}

/// An admin queue and one IO queue on `NQN`.
fn association(daemon: &Daemon) -> (Host, Host) {
    let mut admin = admin_queue(daemon.address, NQN, HOSTNQN, 0);
    assert_eq!(admin.set_queues(2).status, Status::SUCCESS);
    let io = io_queue(daemon.address, NQN, HOSTNQN, admin.cntlid, 1);
    (admin, io)
}

#[test]
fn the_linux_connect_sequence() {
    let daemon = daemon();
    let mut host = Host::tcp(daemon.address);
    let response = host.initialize(Digests::default());
    assert_eq!((response.pfv, response.cpda, response.maxh2cdata), (0, 0, 131072));
    let connect = host.connect(NQN, HOSTNQN, 0, CNTLID_DYNAMIC, 5000);
    assert_eq!(connect.status, Status::SUCCESS);
    assert_eq!(connect.dw0 as u16, host.cntlid);
    assert!(host.cntlid >= 1);
    let cap = host.property_get(property::CAP, true);
    assert_eq!(cap & 0xFFFF, 127, "MQES: max_queue_depth - 1");
    assert_eq!((cap >> 16) & 1, 1, "CQR");
    // Admin commands before CC.EN: command sequence error.
    let (status, _) = host.identify(0x01, 0, 0);
    assert_eq!(status, Status::COMMAND_SEQUENCE_ERROR);
    host.enable();
    assert_eq!(host.property_get(property::VS, false), 0x0001_0300);

    let (status, data) = host.identify(0x01, 0, 0);
    assert_eq!(status, Status::SUCCESS);
    let controller = IdentifyController::decode(&data[..].try_into().unwrap());
    assert_eq!(controller.cntlid, host.cntlid, "Linux checks CNTLID against Connect's");
    assert_eq!(controller.identity.subnqn, NQN);
    assert_eq!(controller.identity.serial, "SN42");
    assert_eq!(controller.limits.mdts, 5);
    assert_eq!(controller.limits.icdoff, 0, "Linux refuses ICDOFF != 0");
    assert_eq!(controller.support.sgls & 0x3, 1, "Linux needs SGL support");
    assert_eq!(controller.support.vwc, 0x05, "a volatile write cache: Linux sends Flush and FUA");
    assert_eq!(controller.support.oncs & 0xC, 0xC, "DSM and Write Zeroes");
    assert_eq!(controller.limits.ioccsz, 260);
    assert_eq!(controller.support.lpa, 0);
    assert_eq!(controller.support.cmic, 0);
    assert_eq!(controller.limits.nn, 32);

    let (status, data) = host.identify(0x06, 0, 0);
    assert_eq!(status, Status::SUCCESS, "CNS 06h answered");
    let nvm = IdentifyControllerNvm::decode(&data[..].try_into().unwrap());
    assert_eq!(nvm.wzsl, 12);
    assert_eq!(nvm.dmrsl, 131072, "min(dmrsl, the bdev's unmap limit)");

    assert_eq!(host.set_queues(2).dw0, 0x0001_0001);
    let (status, data) = host.identify(0x02, 0, 0);
    assert_eq!(status, Status::SUCCESS);
    assert_eq!(decode_active_namespaces(&data[..].try_into().unwrap()), vec![1]);
    let (status, data) = host.identify(0x00, 1, 0);
    assert_eq!(status, Status::SUCCESS);
    let ns = IdentifyNamespace::decode(&data[..].try_into().unwrap());
    assert_eq!(ns.size_blocks, 131072);
    assert_eq!(ns.lba_data_size_log2, 9);
    assert_eq!(ns.dlfeat, 0x09, "malloc deallocates to zeroes");
    let (status, data) = host.identify(0x03, 1, 0);
    assert_eq!(status, Status::SUCCESS);
    let ids = decode_namespace_descriptors(&data[..].try_into().unwrap());
    let bdev = call(&daemon.target, "bdev_get_bdevs", json!({"name": "Malloc0"})).unwrap();
    let uuid: uuid::Uuid = bdev[0]["uuid"].as_str().unwrap().parse().unwrap();
    assert!(ids.contains(&NamespaceId::Uuid(*uuid.as_bytes())), "the bdev's UUID");
    assert!(ids.contains(&NamespaceId::Nguid(*uuid.as_bytes())));
    assert!(ids.contains(&NamespaceId::CommandSet(0)));
    let (status, _) = host.identify(0x00, 33, 0);
    assert_eq!(status, Status::INVALID_NAMESPACE);
    let (status, data) = host.identify(0x00, 2, 0);
    assert_eq!(status, Status::SUCCESS, "an inactive NSID in range");
    assert!(data.iter().all(|&b| b == 0));

    // Keep Alive, Get Features, log pages.
    let (keep_alive, _) = host.admin(admin_opcode::KEEP_ALIVE, 0, 0, 0, 0);
    assert_eq!(keep_alive.status, Status::SUCCESS);
    let (kato, _) = host.admin(admin_opcode::GET_FEATURES, 0, 0x0F, 0, 0);
    assert_eq!(kato.dw0, 10_000, "5 s raised to min_kato");
    let (unknown, _) = host.admin(admin_opcode::GET_FEATURES, 0, 0x7E, 0, 0);
    assert_eq!(unknown.status, Status::INVALID_FIELD);
    let (status, smart) = host.get_log_page(0x02, 512, 0);
    assert_eq!((status, smart.len()), (Status::SUCCESS, 512));
    let (status, _) = host.get_log_page(0x01, 64, 0);
    assert_eq!(status, Status::SUCCESS);
    let (status, _) = host.get_log_page(0x70, 1024, 0);
    assert_eq!(status, Status::INVALID_FIELD, "no discovery log on an IO controller");
    let (status, list) = host.get_log_page(0x04, 4096, 0);
    assert_eq!((status, list[0]), (Status::SUCCESS, 0));

    let controllers =
        call(&daemon.target, "nvmf_subsystem_get_controllers", json!({"nqn": NQN})).unwrap();
    assert_eq!(controllers[0]["cntlid"], json!(host.cntlid));
    assert_eq!(controllers[0]["hostnqn"], json!(HOSTNQN));
}

#[test]
fn reads_and_writes_in_capsule_and_through_r2t() {
    let daemon = daemon();
    let (_admin, mut io) = association(&daemon);
    let small = pattern(8, 8, 512, 1);
    assert_eq!(io.write(1, 8, &small, 512, false), Status::SUCCESS, "4 KiB in-capsule");
    let large = pattern(1024, 256, 512, 2);
    assert_eq!(io.write(1, 1024, &large, 512, true), Status::SUCCESS, "128 KiB via R2T, FUA");
    let (status, data) = io.read(1, 8, 8, 512);
    assert_eq!(status, Status::SUCCESS);
    assert_data(&data, &small, "4 KiB read");
    let (status, data) = io.read(1, 1024, 256, 512);
    assert_eq!(status, Status::SUCCESS);
    assert_data(&data, &large, "128 KiB read");
    assert_eq!(io.flush(1), Status::SUCCESS);
    // Deallocate and write zeroes read back zeroes (malloc).
    assert_eq!(io.deallocate(1, &[(1024, 64), (1100, 8)]), Status::SUCCESS);
    let (status, data) = io.read(1, 1024, 64, 512);
    assert_eq!(status, Status::SUCCESS);
    assert!(data.iter().all(|&b| b == 0));
    assert_data(&io.read(1, 1088, 8, 512).1, &large[64 * 512..72 * 512], "between the ranges");
    let zeroes = io.io(io_opcode::WRITE_ZEROES, 1, 1200, 16, 1 << 25);
    assert_eq!(io.execute(zeroes, &[], 0).0.status, Status::SUCCESS);
    let no_dealloc = io.io(io_opcode::WRITE_ZEROES, 1, 1232, 16, 1 << 30);
    assert_eq!(io.execute(no_dealloc, &[], 0).0.status, Status::SUCCESS);
    let (_, data) = io.read(1, 1200, 48, 512);
    assert!(data[..16 * 512].iter().all(|&b| b == 0));
    assert!(data[32 * 512..].iter().all(|&b| b == 0));
    assert_data(&data[16 * 512..32 * 512], &large[192 * 512..208 * 512], "between zeroes");
    let stats = call(&daemon.target, "bdev_get_iostat", json!({"name": "Malloc0"})).unwrap();
    assert!(stats["bdevs"][0]["num_unmap_ops"].as_u64().unwrap() >= 2);
}

#[test]
fn digests_cover_headers_and_data() {
    let daemon = daemon();
    let admin = admin_queue(daemon.address, NQN, HOSTNQN, 0);
    let digests = Digests { header: true, data: true };
    let mut io = io_queue_with(daemon.address, NQN, HOSTNQN, admin.cntlid, 1, digests);
    let data = pattern(0, 16, 512, 7);
    assert_eq!(io.write(1, 0, &data, 512, false), Status::SUCCESS);
    let big = pattern(4096, 256, 512, 8);
    assert_eq!(io.write(1, 4096, &big, 512, false), Status::SUCCESS);
    let (status, read) = io.read(1, 0, 16, 512);
    assert_eq!(status, Status::SUCCESS);
    assert_data(&read, &data, "in-capsule write read back");
    let (status, read) = io.read(1, 4096, 256, 512);
    assert_eq!(status, Status::SUCCESS);
    assert_data(&read, &big, "R2T write read back");
}

#[test]
fn discovery_lists_the_subsystems_the_host_may_reach() {
    let daemon = daemon();
    let restricted = json!({"nqn": "nqn.2016-06.io.spdk:private", "allow_any_host": false});
    call(&daemon.target, "nvmf_create_subsystem", restricted).unwrap();
    let listen = json!({"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "0"});
    let add = json!({"nqn": "nqn.2016-06.io.spdk:private", "listen_address": listen});
    call(&daemon.target, "nvmf_subsystem_add_listener", add).unwrap();
    let mut host = admin_queue(daemon.address, bdev_thin::nvme::DISCOVERY_NQN, HOSTNQN, 0);
    let (status, data) = host.identify(0x01, 0, 0);
    assert_eq!(status, Status::SUCCESS);
    let controller = IdentifyController::decode(&data[..].try_into().unwrap());
    assert_eq!(controller.controller_type, 2, "a discovery controller");
    let (status, header) = host.get_log_page(0x70, 1024, 0);
    assert_eq!(status, Status::SUCCESS);
    let (generation, records) = decode_discovery_header(&header[..].try_into().unwrap());
    assert_eq!(records, 1, "the private subsystem is hidden from this host");
    let (status, page) = host.get_log_page(0x70, 1024 * (1 + records as u32), 0);
    assert_eq!(status, Status::SUCCESS);
    let entry =
        DiscoveryEntry::decode(&page[1024..1024 + DISCOVERY_ENTRY_BYTES].try_into().unwrap());
    assert_eq!((entry.trtype, entry.adrfam, entry.subtype), (3, 1, 2));
    assert_eq!(entry.subnqn, NQN);
    assert_eq!((entry.traddr.as_str(), entry.cntlid), ("127.0.0.1", 0xFFFF));
    let (_, header) = host.get_log_page(0x70, 1024, 0);
    assert_eq!(decode_discovery_header(&header[..].try_into().unwrap()).0, generation);
    let (status, _) = host.get_log_page(0x70, 1024, 1 << 20);
    assert_eq!(status, Status::INVALID_FIELD, "offset past the log");
    let (refused, _) = host.admin(admin_opcode::ABORT, 0, 0, 0, 0);
    assert_eq!(refused.status, Status::INVALID_OPCODE);
    let allow = json!({"nqn": "nqn.2016-06.io.spdk:private", "host": HOSTNQN});
    call(&daemon.target, "nvmf_subsystem_add_host", allow).unwrap();
    let (_, header) = host.get_log_page(0x70, 1024, 0);
    let (newer, records) = decode_discovery_header(&header[..].try_into().unwrap());
    assert!(newer > generation && records == 2, "the host now sees both");
}

#[test]
fn a_host_not_allowed_is_refused() {
    let daemon = daemon();
    let private = json!({"nqn": "nqn.2016-06.io.spdk:private"});
    call(&daemon.target, "nvmf_create_subsystem", private).unwrap();
    let listen = json!({"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "0"});
    let add = json!({"nqn": "nqn.2016-06.io.spdk:private", "listen_address": listen});
    call(&daemon.target, "nvmf_subsystem_add_listener", add).unwrap();
    let mut host = Host::tcp(daemon.address);
    host.initialize(Digests::default());
    let refused = host.connect("nqn.2016-06.io.spdk:private", HOSTNQN, 0, CNTLID_DYNAMIC, 0);
    assert_eq!(refused.status, connect_status::INVALID_HOST);
    let unknown = host.connect("nqn.2016-06.io.spdk:nothing", HOSTNQN, 0, CNTLID_DYNAMIC, 0);
    assert_eq!(unknown.status, connect_status::INVALID_PARAMETERS);
    assert_eq!(unknown.dw0, 0x1_0100, "IATTR data, IPO subnqn (256)");
    let allow = json!({"nqn": "nqn.2016-06.io.spdk:private", "host": HOSTNQN});
    call(&daemon.target, "nvmf_subsystem_add_host", allow).unwrap();
    let accepted = host.connect("nqn.2016-06.io.spdk:private", HOSTNQN, 0, CNTLID_DYNAMIC, 0);
    assert_eq!(accepted.status, Status::SUCCESS);
}

#[test]
fn namespaces_added_removed_and_resized_raise_an_event() {
    let daemon = daemon();
    let (mut admin, mut io) = association(&daemon);
    // Hold an AER, as Linux does.
    let mut aer = bdev_thin::nvme::command::Command::new(admin_opcode::ASYNC_EVENT_REQUEST, 0);
    aer.cid = 900;
    admin.send_capsule(&aer, &[]);
    let null = json!({"name": "Null0", "num_blocks": 2048, "block_size": 4096});
    call(&daemon.target, "bdev_null_create", null).unwrap();
    let ns = json!({"nqn": NQN, "namespace": {"bdev_name": "Null0", "nsid": 5}});
    assert_eq!(call(&daemon.target, "nvmf_subsystem_add_ns", ns).unwrap(), json!(5));
    let event = admin.receive();
    let bdev_thin::nvme::tcp::Pdu::CapsuleResp(completion) = event.pdu else {
        panic!("expected the AER's completion, got {:?}", event.pdu);
    };
    assert_eq!(completion.cid, 900);
    assert_eq!(completion.dw0, 0x0004_0002, "notice, namespace attribute changed, log 04h");
    let (_, list) = admin.get_log_page(0x04, 4096, 0);
    assert_eq!(&list[..8], &[5, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(io.read(5, 0, 1, 4096).0, Status::SUCCESS, "the IO queue sees the new namespace");
    let busy = call(&daemon.target, "bdev_null_delete", json!({"name": "Null0"})).unwrap_err();
    assert_eq!(busy.code, -16, "exported: cannot be deleted");

    admin.send_capsule(&aer, &[]);
    call(&daemon.target, "bdev_null_resize", json!({"name": "Null0", "new_size": 16})).unwrap();
    let bdev_thin::nvme::tcp::Pdu::CapsuleResp(completion) = admin.receive().pdu else {
        panic!("expected the AER's completion");
    };
    assert_eq!(completion.dw0, 0x0004_0002, "a resize is an attribute change");
    let (_, data) = admin.identify(0x00, 5, 0);
    let ns = IdentifyNamespace::decode(&data[..].try_into().unwrap());
    assert_eq!(ns.size_blocks, 4096, "16 MiB of 4 KiB blocks");
    let _ = admin.get_log_page(0x04, 4096, 0);

    admin.send_capsule(&aer, &[]);
    call(&daemon.target, "nvmf_subsystem_remove_ns", json!({"nqn": NQN, "nsid": 5})).unwrap();
    let bdev_thin::nvme::tcp::Pdu::CapsuleResp(completion) = admin.receive().pdu else {
        panic!("expected the AER's completion");
    };
    assert_eq!(completion.dw0, 0x0004_0002);
    assert_eq!(io.read(5, 0, 1, 4096).0, Status::INVALID_NAMESPACE);
    call(&daemon.target, "bdev_null_delete", json!({"name": "Null0"})).unwrap();
    assert_eq!(admin.identify(0x02, 0, 0).1[..8], [1, 0, 0, 0, 0, 0, 0, 0]);
    let _ = IDENTIFY_BYTES;
}
