//! The NVMe/TCP initiator driven by SPDK's own client (`spdk-rpc` from `.venv/`, made by
//! `ci/install.sh`), between two real `thin_tgt` processes on 127.0.0.1: one exports a malloc
//! bdev over NVMe/TCP, the other attaches it with `bdev_nvme_attach_controller` as SPDK's CLI
//! sends it, lists it (`bdev_nvme_get_controllers`, `bdev_get_bdevs`), saves its config and
//! comes back from it after a restart with the same bdev and UUID, refuses what it lacks
//! (`--psk`), and detaches.
//!
//! Without the client the test prints a loud SKIPPED; with `CI=true` it fails instead.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Daemon, Scratch};
use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const NQN: &str = "nqn.2016-06.io.spdk:cnode7";
const MALLOC_UUID: &str = "6e9c8d6a-43a4-4f7e-9d55-2a3f0d1b7c11";

fn client_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("SPDK_CLIENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join(".venv/bin"));
    if dir.join("spdk-rpc").is_file() {
        return Some(dir);
    }
    let message = "SPDK's client (spdk-rpc) not found in .venv/bin or $SPDK_CLIENT_BIN; run \
                   ci/install.sh";
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
    eprintln!("\n*** SKIPPED: {message} ***\n");
    None
}

fn spdk_rpc(bin: &Path, socket: &Path, args: &[&str]) -> Output {
    Command::new(bin.join("spdk-rpc")).arg("-s").arg(socket).args(args).output().expect("spdk-rpc")
}

fn ok(bin: &Path, socket: &Path, args: &[&str]) -> String {
    let output = spdk_rpc(bin, socket, args);
    assert!(
        output.status.success(),
        "spdk-rpc {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// A `thin_tgt` exporting a 32 MiB malloc bdev as namespace 1 of `NQN` on `port`.
fn remote(scratch: &Scratch, port: u16) -> Daemon {
    let dir = scratch.path("remote");
    std::fs::create_dir_all(&dir).unwrap();
    let config = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create",
             "params": {"name": "Malloc0", "num_blocks": 8192, "block_size": 4096,
                        "uuid": MALLOC_UUID}}]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
            {"method": "nvmf_subsystem_add_ns",
             "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}},
            {"method": "nvmf_subsystem_add_listener",
             "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
                        "traddr": "127.0.0.1", "trsvcid": port.to_string()}}}]}]});
    let path = dir.join("remote.json");
    std::fs::write(&path, config.to_string()).unwrap();
    Daemon::start(&dir, &["-c", path.to_str().unwrap()])
}

#[test]
fn spdk_client_attaches_lists_saves_and_detaches() {
    let Some(bin) = client_bin() else { return };
    let scratch = Scratch::new("nvme_cli");
    let port = free_port();
    let _remote = remote(&scratch, port);
    let local_dir = scratch.path("local");
    std::fs::create_dir_all(&local_dir).unwrap();
    let mut local = Daemon::start(&local_dir, &[]);
    let socket = local.socket.clone();
    let port_text = port.to_string();
    let attach = [
        "bdev_nvme_attach_controller",
        "-b",
        "Nvme0",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-f",
        "ipv4",
        "-s",
        &port_text,
        "-n",
        NQN,
    ];
    assert_eq!(ok(&bin, &socket, &attach).trim(), "Nvme0n1");

    let controllers: Value =
        serde_json::from_str(&ok(&bin, &socket, &["bdev_nvme_get_controllers"])).unwrap();
    let controller = &controllers[0];
    assert_eq!(controller["name"], "Nvme0");
    let path = &controller["ctrlrs"][0];
    assert_eq!(path["state"], "enabled");
    assert_eq!(
        path["trid"],
        json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
               "trsvcid": port_text, "subnqn": NQN})
    );
    assert!(path["cntlid"].as_u64().is_some_and(|c| c > 0), "{path}");
    assert!(path["host"]["nqn"].as_str().is_some_and(|n| n.starts_with("nqn.2014-08")));

    let bdevs: Value =
        serde_json::from_str(&ok(&bin, &socket, &["bdev_get_bdevs", "-b", "Nvme0n1"])).unwrap();
    let bdev = &bdevs[0];
    assert_eq!(bdev["product_name"], "NVMe disk");
    assert_eq!(
        bdev["uuid"], MALLOC_UUID,
        "the namespace's UUID, which our target takes from the bdev"
    );
    assert_eq!(
        (bdev["block_size"].as_u64(), bdev["num_blocks"].as_u64()),
        (Some(4096), Some(8192))
    );
    assert_eq!(bdev["supported_io_types"]["unmap"], true);
    assert_eq!(bdev["supported_io_types"]["write_zeroes"], true);
    assert_eq!(bdev["driver_specific"]["nvme"][0]["ns_data"]["id"], 1);

    let again = spdk_rpc(&bin, &socket, &attach);
    assert!(!again.status.success(), "a second Nvme0 is refused");
    assert!(String::from_utf8_lossy(&again.stdout).contains("already exists"));
    let mut with_psk = attach.to_vec();
    with_psk[2] = "Nvme1";
    with_psk.extend(["--psk", "key0"]);
    let refused = spdk_rpc(&bin, &socket, &with_psk);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).contains("psk: TLS"), "names psk");

    let saved = ok(&bin, &socket, &["save_config"]);
    let saved_json: Value = serde_json::from_str(&saved).unwrap();
    let entries = saved_json["subsystems"][0]["config"].as_array().unwrap();
    let entry = entries
        .iter()
        .find(|e| e["method"] == "bdev_nvme_attach_controller")
        .expect("the attach is saved");
    assert_eq!(entry["params"]["trsvcid"], port_text);
    assert_eq!(entry["params"]["prchk_reftag"], false);
    let saved_path = local_dir.join("saved.json");
    std::fs::write(&saved_path, &saved).unwrap();
    local.stop();

    let local = Daemon::start(&local_dir, &["-c", saved_path.to_str().unwrap()]);
    let bdevs: Value =
        serde_json::from_str(&ok(&bin, &local.socket, &["bdev_get_bdevs", "-b", "Nvme0n1"]))
            .unwrap();
    assert_eq!(bdevs[0]["uuid"], MALLOC_UUID, "back from the saved config");
    ok(&bin, &local.socket, &["bdev_nvme_detach_controller", "Nvme0"]);
    let gone = spdk_rpc(&bin, &local.socket, &["bdev_get_bdevs", "-b", "Nvme0n1"]);
    assert!(!gone.status.success(), "Nvme0n1 is gone after the detach");
    assert_eq!(ok(&bin, &local.socket, &["bdev_nvme_get_controllers"]).trim(), "[]");
}
