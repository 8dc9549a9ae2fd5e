//! The NVMe-oF/TCP target configured with SPDK's stock client (`spdk-rpc nvmf_*` from PyPI, in
//! `.venv/`): transport, subsystem, host, namespace on a thin volume and listener made with the
//! CLI and listed in SPDK's schemas; a raw NVMe/TCP host connects and writes; `save_config`
//! puts `nvmf` after `bdev`; SIGTERM; `thin_tgt -c` with the saved file brings back the same
//! subsystem (examine brings back the volume) and the host reads its data back; the client's
//! own `load_config` does the same into an empty daemon. Also: a config saved by a real
//! `nvmf_tgt` loads, and what we lack (TLS, ANA, DH-HMAC-CHAP) is refused by name.

mod common;
#[path = "../bdev_thin/tests/nvmf_client/mod.rs"]
mod nvmf_client;

use bdev_thin::nvme::command::Status;
use common::spdk::{ROOT, Spdk, client_bin};
use common::{Daemon, Scratch};
use nvmf_client::{admin_queue, assert_data, io_queue, pattern};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// What survives a restart of a subsystem listing: everything but live state.
fn subsystems(spdk: &Spdk) -> Value {
    spdk.json(&["nvmf_get_subsystems"])
}

#[test]
fn the_stock_cli_configures_the_target_and_save_config_restores_it() {
    let Some(bin) = client_bin() else { return };
    let dir = Scratch::new("nvmf_cli");
    let image = dir.path("pool.img");
    std::fs::File::create(&image).unwrap().set_len(256 << 20).unwrap();
    let mut daemon = Daemon::start(&dir.0, &["-m", "0x3"]);
    let spdk = Spdk { bin, socket: daemon.socket.clone() };
    let port = free_port().to_string();

    spdk.ok(&["bdev_uring_create", image.to_str().unwrap(), "Uring0", "4096"]);
    spdk.thin_text(&["bdev_thin_pool_create", "Uring0", "pool0"]);
    let volume = spdk.thin_text(&["bdev_thin_create", "-l", "pool0", "vol0", "64"]);
    spdk.ok(&["nvmf_create_transport", "-t", "TCP", "-q", "64", "-c", "8192"]);
    spdk.ok(&["nvmf_create_subsystem", NQN, "-s", "SN0001", "-d", "bdev_thin volume", "-m", "8"]);
    spdk.ok(&["nvmf_subsystem_add_host", NQN, HOST]);
    spdk.ok(&["nvmf_subsystem_add_ns", NQN, &volume, "-n", "3"]);
    spdk.ok(&[
        "nvmf_subsystem_add_listener",
        NQN,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
        "-f",
        "ipv4",
    ]);

    let transports = spdk.json(&["nvmf_get_transports"]);
    assert_eq!(transports[0]["trtype"], "TCP");
    assert_eq!(transports[0]["max_queue_depth"], 64);
    assert_eq!(transports[0]["in_capsule_data_size"], 8192);
    let listed = subsystems(&spdk);
    assert_eq!(listed[0]["subtype"], "Discovery");
    let ours = &listed[1];
    let keys: Vec<&str> = ours.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "nqn",
            "subtype",
            "listen_addresses",
            "allow_any_host",
            "hosts",
            "serial_number",
            "model_number",
            "max_namespaces",
            "passthrough",
            "min_cntlid",
            "max_cntlid",
            "dmrsl",
            "wzsl",
            "namespaces"
        ],
        "SPDK's keys, in its order"
    );
    assert_eq!(ours["hosts"], json!([{"nqn": HOST}]));
    assert_eq!(ours["namespaces"][0]["nsid"], 3);
    assert_eq!(ours["namespaces"][0]["bdev_name"], volume);
    assert_eq!(ours["namespaces"][0]["uuid"], volume, "the namespace UUID is the volume's");
    assert_eq!(
        ours["listen_addresses"],
        json!([{"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port}])
    );
    let listeners = spdk.json(&["nvmf_subsystem_get_listeners", NQN]);
    assert_eq!(listeners[0]["address"]["trsvcid"], port);

    // A host connects and writes; the controller and its queues are listed.
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut admin = admin_queue(address, NQN, HOST, 0);
    assert_eq!(admin.set_queues(1).status, Status::SUCCESS);
    let mut io = io_queue(address, NQN, HOST, admin.cntlid, 1);
    let data = pattern(2048, 256, 4096, 9);
    for chunk in 0..8u64 {
        let part = &data[(chunk as usize) * 32 * 4096..(chunk as usize + 1) * 32 * 4096];
        assert_eq!(io.write(3, 2048 + chunk * 32, part, 4096, false), Status::SUCCESS);
    }
    assert_eq!(io.flush(3), Status::SUCCESS);
    let controllers = spdk.json(&["nvmf_subsystem_get_controllers", NQN]);
    assert_eq!(controllers[0]["hostnqn"], HOST);
    assert_eq!(controllers[0]["num_io_qpairs"], 1);
    let qpairs = spdk.json(&["nvmf_subsystem_get_qpairs", NQN]);
    assert_eq!(qpairs.as_array().unwrap().len(), 2, "{qpairs}");
    assert_eq!(qpairs[0]["listen_address"]["trsvcid"], port);
    let busy = spdk.run(&["--plugin", "bdev_thin_rpc", "bdev_thin_delete", &volume]);
    assert!(!busy.status.success(), "an exported volume cannot be deleted");
    drop((io, admin));

    let saved = spdk.ok(&["save_config"]);
    let saved_path = dir.path("saved.json");
    std::fs::write(&saved_path, &saved).unwrap();
    let saved: Value = serde_json::from_str(&saved).unwrap();
    let names: Vec<&str> = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["subsystem"].as_str())
        .collect();
    let bdev_at = names.iter().position(|n| *n == "bdev").unwrap();
    let nvmf_at = names.iter().position(|n| *n == "nvmf").expect("nvmf is saved");
    assert!(bdev_at < nvmf_at, "nvmf after bdev: {names:?}");
    let nvmf = &saved["subsystems"][nvmf_at]["config"];
    let methods: Vec<&str> =
        nvmf.as_array().unwrap().iter().filter_map(|e| e["method"].as_str()).collect();
    assert_eq!(
        methods,
        [
            "nvmf_create_transport",
            "nvmf_create_subsystem",
            "nvmf_subsystem_add_host",
            "nvmf_subsystem_add_ns",
            "nvmf_subsystem_add_listener"
        ]
    );
    assert!(daemon.stop().success(), "{}", daemon.log_text());

    // Restart from the saved file: the volume comes back by examine, then its namespace.
    let mut daemon = Daemon::start(&dir.0, &["-c", saved_path.to_str().unwrap()]);
    assert_eq!(subsystems(&spdk), listed);
    let mut admin = admin_queue(address, NQN, HOST, 0);
    assert_eq!(admin.set_queues(1).status, Status::SUCCESS);
    let mut io = io_queue(address, NQN, HOST, admin.cntlid, 1);
    let mut read = Vec::new();
    for chunk in 0..8u64 {
        let (status, part) = io.read(3, 2048 + chunk * 32, 32, 4096);
        assert_eq!(status, Status::SUCCESS);
        read.extend_from_slice(&part);
    }
    assert_data(&read, &data, "written before the restart");
    drop((io, admin));
    assert!(daemon.stop().success());

    // The client's own load_config into an empty daemon does the same.
    let mut daemon = Daemon::start(&dir.0, &["--no-park"]);
    spdk.ok(&["load_config", "-j", saved_path.to_str().unwrap()]);
    assert_eq!(subsystems(&spdk), listed);
    assert!(daemon.stop().success());
}

#[test]
fn a_config_saved_by_spdk_nvmf_tgt_loads() {
    let Some(bin) = client_bin() else { return };
    let dir = Scratch::new("nvmf_spdk_saved");
    let fixture =
        std::path::Path::new(ROOT).join("bdev_thin/tests/fixtures/spdk_nvmf_tgt_saved_config.json");
    let port = free_port().to_string();
    let text = std::fs::read_to_string(fixture).unwrap().replace("@PORT@", &port);
    let config = dir.path("spdk_saved.json");
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&dir.0, &["-c", config.to_str().unwrap()]);
    let spdk = Spdk { bin, socket: daemon.socket.clone() };
    let listed = spdk.json(&["nvmf_get_subsystems", NQN]);
    assert_eq!(listed[0]["serial_number"], "SPDK00000000000001");
    assert_eq!(listed[0]["namespaces"][0]["bdev_name"], "Malloc0");
    assert_eq!(listed[0]["namespaces"][0]["nguid"], "DDA5FD37D960443E96D2C0656ABF257A");
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut admin = admin_queue(address, NQN, HOST, 0);
    assert_eq!(admin.identify(0x01, 0, 0).0, Status::SUCCESS);
    drop(admin);
    let log = daemon.log_text();
    for ignored in ["nvmf_set_config", "nvmf_set_max_subsystems", "nvmf_set_crdt"] {
        assert!(log.contains(ignored), "{ignored} accepted and ignored: {log}");
    }
    assert!(daemon.stop().success());
}

#[test]
fn what_the_target_lacks_is_refused_by_name() {
    let Some(bin) = client_bin() else { return };
    let dir = Scratch::new("nvmf_refused");
    let daemon = Daemon::start(&dir.0, &[]);
    let spdk = Spdk { bin, socket: daemon.socket.clone() };
    spdk.ok(&["nvmf_create_transport", "-t", "TCP"]);
    let (_, error) = spdk.fails(&["nvmf_create_transport", "-t", "TCP"]);
    assert_eq!(error["code"], -32603, "a second transport: {error}");
    let (_, error) = spdk.fails(&["nvmf_create_transport", "-t", "RDMA"]);
    assert!(error["message"].as_str().unwrap().contains("trtype"), "{error}");
    let (_, error) = spdk.fails(&["nvmf_create_subsystem", NQN, "-r"]);
    assert!(error["message"].as_str().unwrap().contains("ana_reporting"), "{error}");
    spdk.ok(&["nvmf_create_subsystem", NQN]);
    let (_, error) = spdk.fails(&["nvmf_create_subsystem", NQN]);
    assert_eq!(error["code"], -17, "{error}");
    let (_, error) = spdk.fails(&["nvmf_subsystem_add_host", NQN, HOST, "--psk", "key0"]);
    assert!(error["message"].as_str().unwrap().contains("psk"), "{error}");
    let (_, error) = spdk.fails(&["nvmf_subsystem_add_host", NQN, HOST, "--dhchap-key", "key1"]);
    assert!(error["message"].as_str().unwrap().contains("dhchap_key"), "{error}");
    let listener = ["nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", "0"];
    let (_, error) = spdk.fails(&[&listener[..], &["-k"]].concat());
    assert!(error["message"].as_str().unwrap().contains("secure_channel"), "{error}");
    let (_, error) = spdk.fails(&["nvmf_subsystem_add_ns", NQN, "Nothing"]);
    assert_eq!(error["code"], -19, "no such bdev: {error}");
    let (_, error) = spdk.fails(&["nvmf_delete_subsystem", "nqn.2016-06.io.spdk:none"]);
    assert_eq!(error["code"], -32602, "SPDK's code for an unknown NQN: {error}");
    spdk.ok(&["nvmf_delete_subsystem", NQN]);
    assert_eq!(spdk.json(&["nvmf_get_subsystems"]).as_array().unwrap().len(), 1);
}
