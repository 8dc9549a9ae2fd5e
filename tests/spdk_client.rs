//! `thin_tgt` driven by SPDK's own client from PyPI (`spdk-rpc` and
//! `spdk.rpc.client.JSONRPCClient`), installed by `ci/install.sh` in the repository's `.venv/`:
//! base bdevs created and listed in SPDK's schema, `save_config` then a restart with `-c` (and
//! the client's own `load_config`) bringing back the same bdevs and UUIDs, a Python session with
//! errors and a batch, and our CLI plugin `python/bdev_thin_rpc.py`. With pools: made with the
//! plugin and with `JSONRPCClient`, listed in SPDK's schema, saved (no `bdev_thin_*` call in the
//! file), written between runs, and back by examine after a restart with the same UUIDs, sizes
//! and mapped blocks; `thinctl check` passes after the final stop.
//!
//! Without the client the tests print a loud SKIPPED; with `CI=true` they fail instead.

mod common;

use std::path::Path;
use std::process::Command;

use common::spdk::{ROOT, Spdk, client_bin, request_and_error};
use common::{Daemon, Scratch};
use serde_json::{Value, json};

/// The keys SPDK's `bdev_get_bdevs` writes, in its order (`numa_id` only where known).
fn assert_spdk_bdev_schema(bdev: &Value) {
    let keys: Vec<&str> = bdev.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = vec![
        "name",
        "aliases",
        "product_name",
        "block_size",
        "num_blocks",
        "preferred_write_alignment",
        "preferred_write_granularity",
        "optimal_write_size",
        "preferred_unmap_alignment",
        "preferred_unmap_granularity",
        "uuid",
    ];
    if keys.contains(&"numa_id") {
        expected.push("numa_id");
    }
    expected.extend([
        "assigned_rate_limits",
        "claimed",
        "zoned",
        "supported_io_types",
        "driver_specific",
    ]);
    assert_eq!(keys, expected, "{bdev}");
    assert_eq!(bdev["aliases"], json!([bdev["uuid"]]), "a named bdev lists its UUID as alias");
    assert_eq!(bdev["supported_io_types"].as_object().unwrap().len(), 22);
}

fn identity(bdevs: &Value) -> Vec<Value> {
    bdevs
        .as_array()
        .unwrap()
        .iter()
        .map(|b| json!([b["name"], b["uuid"], b["block_size"], b["num_blocks"], b["product_name"]]))
        .collect()
}

#[test]
fn cli_session_saves_and_restores_the_same_bdevs() {
    let Some(bin) = client_bin() else { return };
    let dir = Scratch::new("spdk_cli");
    let image = dir.path("disk.img");
    std::fs::File::create(&image).unwrap().set_len(32 << 20).unwrap();
    let mut daemon = Daemon::start(&dir.0, &[]);
    let spdk = Spdk { bin, socket: daemon.socket.clone() };

    assert_eq!(
        spdk.ok(&["bdev_uring_create", image.to_str().unwrap(), "Uring0", "4096"]).trim(),
        "Uring0"
    );
    assert_eq!(spdk.ok(&["bdev_malloc_create", "16", "4096", "-b", "Malloc0"]).trim(), "Malloc0");
    let uuid = "3d2c1b0a-9f8e-4d7c-a6b5-443322110000";
    assert_eq!(spdk.ok(&["bdev_malloc_create", "8", "512", "-u", uuid]).trim(), "Malloc1");
    let bdevs = spdk.json(&["bdev_get_bdevs"]);
    for bdev in bdevs.as_array().unwrap() {
        assert_spdk_bdev_schema(bdev);
    }
    let uring = spdk.json(&["bdev_get_bdevs", "-b", "Uring0"]);
    assert_eq!(uring[0]["product_name"], "URING bdev");
    assert_eq!(uring[0]["num_blocks"], 8192);
    assert_eq!(uring[0]["driver_specific"]["uring"]["filename"], image.to_str().unwrap());
    let by_uuid = spdk.json(&["bdev_get_bdevs", "-b", uuid]);
    assert_eq!(by_uuid[0]["name"], "Malloc1");
    assert_eq!(by_uuid[0]["num_blocks"], 16384);

    let saved = spdk.ok(&["save_config"]);
    let saved_path = dir.path("saved.json");
    std::fs::write(&saved_path, &saved).unwrap();
    let saved: Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved["subsystems"][0]["subsystem"], "bdev");
    assert!(daemon.stop().success(), "{}", daemon.log_text());

    // Restart from the saved file: the same bdevs, names and UUIDs.
    let mut daemon = Daemon::start(&dir.0, &["-c", saved_path.to_str().unwrap()]);
    assert_eq!(identity(&spdk.json(&["bdev_get_bdevs"])), identity(&bdevs));
    assert!(daemon.stop().success());

    // The client's own load_config into an empty daemon does the same.
    let mut daemon = Daemon::start(&dir.0, &["--no-park"]);
    spdk.ok(&["load_config", "-j", saved_path.to_str().unwrap()]);
    assert_eq!(identity(&spdk.json(&["bdev_get_bdevs"])), identity(&bdevs));
    assert!(daemon.stop().success());
}

#[test]
fn python_client_session_with_errors_and_a_batch() {
    let Some(bin) = client_bin() else { return };
    let dir = Scratch::new("spdk_py");
    let daemon = Daemon::start(&dir.0, &[]);
    let spdk = Spdk { bin, socket: daemon.socket.clone() };
    let output = spdk
        .command("python3")
        .arg(Path::new(ROOT).join("tests/python/client_session.py"))
        .arg(&daemon.socket)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "client_session.py failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).expect("a JSON summary");
    assert_eq!(seen["created"], json!(["PyMalloc0", "PyNull0"]));
    assert_eq!(seen["get"], json!({"name":"PyMalloc0","block_size":4096,"num_blocks":2048}));
    let errors: Vec<&str> =
        seen["errors"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(errors[0].contains("-19"), "{}", errors[0]);
    assert!(errors[1].contains("-32602") && errors[1].contains("num_blocks"), "{}", errors[1]);
    assert!(errors[2].contains("-32601"), "{}", errors[2]);
    assert_eq!(seen["sequential"], 50);
    assert_eq!(seen["batch"], json!({"results": 2, "errors": [-19]}));
}

#[test]
fn the_plugin_loads_and_its_requests_reach_the_daemon() {
    let Some(bin) = client_bin() else { return };
    let dir = Scratch::new("spdk_plugin");
    let daemon = Daemon::start(&dir.0, &[]);
    let spdk = Spdk { bin, socket: daemon.socket.clone() };
    let help = spdk.ok(&["--plugin", "bdev_thin_rpc", "bdev_thin_pool_create", "-h"]);
    for flag in ["bdev_name", "pool_name", "--data-block-size", "--discard", "--zero-new-blocks"] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
    for method in [
        "bdev_thin_pool_delete",
        "bdev_thin_pool_grow",
        "bdev_thin_create",
        "bdev_thin_snapshot",
        "bdev_thin_delete",
        "bdev_thin_resize",
        "bdev_thin_get_volumes",
        "nbd_server_start",
        "nbd_server_stop",
        "nbd_export_add",
        "nbd_export_remove",
        "nbd_get_exports",
    ] {
        spdk.ok(&["--plugin", "bdev_thin_rpc", method, "-h"]);
    }

    // The request arrives with API.md's parameter names; the daemon answers -19 (no such bdev).
    let output = spdk.run(&[
        "--plugin",
        "bdev_thin_rpc",
        "bdev_thin_pool_create",
        "NoSuchBdev",
        "pool0",
        "--data-block-size",
        "65536",
        "--discard",
        "no_passdown",
        "--no-zero-new-blocks",
    ]);
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let (request, error) = request_and_error(&text);
    assert_eq!(request["method"], "bdev_thin_pool_create");
    assert_eq!(request["bdev_name"], "NoSuchBdev");
    assert_eq!(request["pool_name"], "pool0");
    assert_eq!(request["data_block_size"], 65536);
    assert_eq!(request["discard"], "no_passdown");
    assert_eq!(request["zero_new_blocks"], false);
    assert!(request.get("out_of_space").is_none(), "unset flags are not sent: {request}");
    assert_eq!(error["code"], -19, "{error}");

    let output = spdk.run(&["--plugin", "bdev_thin_rpc", "bdev_thin_get_pools", "-l", "pool0"]);
    assert!(!output.status.success());
    let (request, error) = request_and_error(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(request["method"], "bdev_thin_get_pools");
    assert_eq!(request["pool_name"], "pool0");
    assert_eq!(error["code"], -19, "{error}");
    assert!(spdk.thin(&["bdev_thin_get_pools"]).as_array().unwrap().is_empty());
}

/// The entries of `value` (an array of objects) sorted by `key`.
fn sorted_by(value: &Value, key: &str) -> Vec<Value> {
    let mut items = value.as_array().expect("an array").clone();
    items.sort_by(|a, b| a[key].as_str().cmp(&b[key].as_str()));
    items
}

/// A pool as listed, without what writes and commits change.
fn pool_identity(pool: &Value) -> Value {
    let mut pool = pool.clone();
    let object = pool.as_object_mut().expect("a pool object");
    for key in ["transaction_id", "used_data_blocks", "free_data_blocks", "metadata_used_bytes"] {
        assert!(object.remove(key).is_some(), "{key} listed");
    }
    pool
}

/// The thin volumes of `bdev_get_bdevs`, as (name, uuid, aliases, sizes, pool), sorted.
fn thin_bdevs(bdevs: &Value) -> Vec<Value> {
    let mut out: Vec<Value> = bdevs
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["driver_specific"].get("thin").is_some())
        .map(|b| {
            json!([
                b["name"],
                b["uuid"],
                b["aliases"],
                b["block_size"],
                b["num_blocks"],
                b["driver_specific"]["thin"]["pool_uuid"]
            ])
        })
        .collect();
    out.sort_by_key(Value::to_string);
    out
}

#[test]
fn pools_volumes_and_snapshots_come_back_by_examine_after_save_config() {
    let Some(bin) = client_bin() else { return };
    let dir = Scratch::new("spdk_pools");
    let image0 = dir.path("pool0.img");
    let image1 = dir.path("pool1.img");
    std::fs::File::create(&image0).unwrap().set_len(256 << 20).unwrap();
    std::fs::File::create(&image1).unwrap().set_len(64 << 20).unwrap();
    let mut daemon = Daemon::start(&dir.0, &[]);
    let spdk = Spdk { bin, socket: daemon.socket.clone() };

    // With the CLI and the plugin: pool0 on Uring0, two volumes and a snapshot.
    assert_eq!(
        spdk.ok(&["bdev_uring_create", image0.to_str().unwrap(), "Uring0", "4096"]).trim(),
        "Uring0"
    );
    let pool0 = spdk.thin_text(&["bdev_thin_pool_create", "Uring0", "pool0", "-d", "65536"]);
    let vol0 = spdk.thin_text(&["bdev_thin_create", "vol0", "64", "-l", "pool0"]);
    let vol1 = spdk.thin_text(&["bdev_thin_create", "vol1", "32", "-u", &pool0]);
    let snap0 = spdk.thin_text(&["bdev_thin_snapshot", "pool0/vol0", "snap0"]);
    for uuid in [&pool0, &vol0, &vol1, &snap0] {
        assert!(uuid::Uuid::parse_str(uuid).is_ok(), "a UUID: {uuid}");
    }
    let one = spdk.thin(&["bdev_thin_get_volumes", "-b", "pool0/snap0"]);
    assert_eq!(one[0]["uuid"], snap0.as_str());
    assert_eq!(one[0]["origin"], "pool0/vol0");
    assert_eq!(one[0]["num_blocks"], 16384);
    let listed = spdk.thin(&["bdev_thin_get_volumes", "-l", "pool0"]);
    let aliases: Vec<&str> =
        listed.as_array().unwrap().iter().filter_map(|v| v["alias"].as_str()).collect();
    assert_eq!(aliases, ["pool0/vol0", "pool0/vol1", "pool0/snap0"]);
    assert_eq!(listed[0]["name"], vol0.as_str());
    assert_eq!(listed[1]["name"], vol1.as_str());
    assert_eq!(listed[1]["num_blocks"], 8192);
    let pools = spdk.thin(&["bdev_thin_get_pools", "-l", "pool0"]);
    assert_eq!(pools[0]["uuid"], pool0.as_str());
    assert_eq!(pools[0]["base_bdev"], "Uring0");
    assert_eq!(pools[0]["data_block_size"], 65536);
    assert_eq!(pools[0]["mode"], "write");

    // With JSONRPCClient: pool1 on Uring1, two volumes, a snapshot, and the errors.
    let output = spdk
        .command("python3")
        .arg(Path::new(ROOT).join("tests/python/pool_session.py"))
        .arg(&daemon.socket)
        .arg(&image1)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "pool_session.py failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).expect("a JSON summary");
    assert_eq!(seen["uring"], "Uring1");
    assert_eq!(seen["get_pools"][0]["uuid"], seen["pool"]);
    assert_eq!(seen["get_pools"][0]["data_block_size"], 32768);
    assert_eq!(seen["get_pools"][0]["discard"], "no_passdown");
    assert_eq!(seen["get_volumes"].as_array().unwrap().len(), 3);
    assert_eq!(seen["get_bdevs"][0]["aliases"], json!(["pool1/snapA"]));
    assert_eq!(seen["get_bdevs"][0]["name"], seen["snapshot"]);
    assert!(seen["errors"][2].as_str().unwrap().contains("size_in_mib"), "{}", seen["errors"]);

    // bdev_get_bdevs in SPDK's schema: volumes named by UUID with the alias pool/volume.
    let bdevs = spdk.json(&["bdev_get_bdevs"]);
    let uring = spdk.json(&["bdev_get_bdevs", "-b", "Uring0"]);
    assert_eq!(uring[0]["claimed"], true, "the pool claims its bdev");
    assert_eq!(uring[0]["claim_type"], "exclusive_write");
    let thin = thin_bdevs(&bdevs);
    assert_eq!(thin.len(), 6, "{bdevs}");
    for bdev in bdevs.as_array().unwrap() {
        let mut bdev = bdev.clone();
        let object = bdev.as_object_mut().unwrap();
        // SPDK adds claim_type after claimed on a claimed bdev.
        if object["claimed"] == true {
            assert!(object.shift_remove("claim_type").is_some(), "claim_type: {bdev}");
        }
        if object["driver_specific"].get("thin").is_some() {
            // A volume is named by its UUID; its only alias is pool/volume.
            assert_eq!(object["name"], object["uuid"]);
            object["aliases"] = json!([object["uuid"]]);
        }
        assert_spdk_bdev_schema(&bdev);
    }
    let by_alias = spdk.json(&["bdev_get_bdevs", "-b", "pool0/vol0"]);
    assert_eq!(by_alias[0]["name"], vol0.as_str());
    assert_eq!(by_alias[0]["uuid"], vol0.as_str());
    assert_eq!(by_alias[0]["aliases"], json!(["pool0/vol0"]));
    assert_eq!(by_alias[0]["num_blocks"], 16384);
    assert_eq!(by_alias[0]["driver_specific"]["thin"]["pool_name"], "pool0");
    assert_eq!(by_alias[0]["driver_specific"]["thin"]["pool_uuid"], pool0.as_str());

    // save_config holds the base bdevs and bdev_wait_for_examine, no bdev_thin_* call.
    let saved_text = spdk.ok(&["save_config"]);
    let saved_path = dir.path("saved.json");
    std::fs::write(&saved_path, &saved_text).unwrap();
    let saved: Value = serde_json::from_str(&saved_text).unwrap();
    let methods: Vec<&str> = saved["subsystems"][0]["config"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|entry| entry["method"].as_str())
        .collect();
    assert!(!saved_text.contains("bdev_thin"), "{saved_text}");
    assert_eq!(methods.iter().filter(|m| **m == "bdev_uring_create").count(), 2, "{methods:?}");
    assert_eq!(methods.last(), Some(&"bdev_wait_for_examine"));
    let pools_before = sorted_by(&spdk.thin(&["bdev_thin_get_pools"]), "name");
    let volumes_before = sorted_by(&spdk.thin(&["bdev_thin_get_volumes"]), "alias");
    assert_eq!(pools_before.len(), 2);
    assert_eq!(volumes_before.len(), 6);
    assert!(daemon.stop().success(), "{}", daemon.log_text());

    // Data written between the runs (pools found by examine on the saved config): vol0 gets 4
    // data blocks, the snapshot 1 of its own, volB 2 (32 KiB blocks of 8 LBAs).
    let written = common::writer::write_volumes(
        &saved_path,
        &[("pool0/vol0", &[0, 16, 32, 4096]), ("pool0/snap0", &[0]), ("pool1/volB", &[0, 8])],
    );
    let written = sorted_by(&written, "alias");
    let mapped: Vec<(String, u64)> = written
        .iter()
        .map(|v| (v["alias"].as_str().unwrap().to_string(), v["mapped_blocks"].as_u64().unwrap()))
        .collect();
    let expected = [
        ("pool0/snap0", 1),
        ("pool0/vol0", 4),
        ("pool0/vol1", 0),
        ("pool1/snapA", 0),
        ("pool1/volA", 0),
        ("pool1/volB", 2),
    ];
    assert_eq!(mapped, expected.map(|(a, n)| (a.to_string(), n)));
    for (before, after) in volumes_before.iter().zip(&written) {
        let mut before = before.clone();
        before["mapped_blocks"] = after["mapped_blocks"].clone();
        assert_eq!(&before, after, "only mapped_blocks changed");
    }

    // Restart with the saved config: the same pools, volumes, snapshots, UUIDs, sizes and
    // mapped blocks, found by examine, with nothing replayed twice.
    let mut daemon = Daemon::start(&dir.0, &["-c", saved_path.to_str().unwrap()]);
    let log = daemon.log_text();
    assert!(!log.contains("already exists"), "{log}");
    assert!(log.contains("examine Uring0: found pool pool0"), "{log}");
    assert!(log.contains("examine Uring1: found pool pool1"), "{log}");
    let volumes_after = sorted_by(&spdk.thin(&["bdev_thin_get_volumes"]), "alias");
    assert_eq!(volumes_after, written);
    let pools_after = sorted_by(&spdk.thin(&["bdev_thin_get_pools"]), "name");
    assert_eq!(pools_after.len(), 2);
    for (before, after) in pools_before.iter().zip(&pools_after) {
        assert_eq!(pool_identity(before), pool_identity(after));
    }
    assert_eq!(pools_after[0]["used_data_blocks"], 5);
    assert_eq!(pools_after[1]["used_data_blocks"], 2);
    assert_eq!(thin_bdevs(&spdk.json(&["bdev_get_bdevs"])), thin);
    // Saving again gives the same file: it replays as often as needed.
    assert_eq!(spdk.ok(&["save_config"]), saved_text);
    assert!(daemon.stop().success(), "{}", daemon.log_text());

    // Offline, after the final stop, both pools check clean.
    for image in [&image0, &image1] {
        let check = Command::new(env!("CARGO_BIN_EXE_thinctl"))
            .arg("check")
            .arg(image)
            .output()
            .expect("thinctl");
        assert!(
            check.status.success(),
            "thinctl check {}:\n{}{}",
            image.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

/// Writes `needs_check` into the pool on `image` (metadata at its start) the way the pool's
/// owner does after a failed metadata write: a superblock alone over the last commit.
fn flag_needs_check(image: &Path) {
    use bdev_thin::thin::metadata::{METADATA_BLOCK_BYTES, PoolMetadata};
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(image).unwrap();
    let block_bytes = METADATA_BLOCK_BYTES as u64;
    let mut read = |block: bdev_thin::thin::types::MetaBlock, out: &mut [u8]| {
        file.read_exact_at(out, block.0 * block_bytes)
    };
    let metadata = PoolMetadata::open(&mut read).unwrap();
    let (block, bytes) = metadata.needs_check_superblock(true);
    file.write_all_at(&bytes, block.0 * block_bytes).unwrap();
}

/// `spdk-rpc --plugin bdev_thin_rpc ARGS` that must fail; returns the JSON-RPC error code.
fn thin_error_code(spdk: &Spdk, args: &[&str]) -> Value {
    let mut all = vec!["--plugin", "bdev_thin_rpc"];
    all.extend_from_slice(args);
    let output = spdk.run(&all);
    assert!(!output.status.success(), "{args:?} succeeded");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    request_and_error(&text).1["code"].clone()
}

#[test]
fn a_pool_that_needs_a_check_opens_read_only_until_bdev_thin_pool_check_clears_it() {
    let Some(bin) = client_bin() else { return };
    let dir = Scratch::new("spdk_check");
    let image = dir.path("pool.img");
    std::fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let image_path = image.to_str().unwrap();
    let mut daemon = Daemon::start(&dir.0, &[]);
    let spdk = Spdk { bin: bin.clone(), socket: daemon.socket.clone() };
    spdk.ok(&["bdev_uring_create", image_path, "Uring0", "4096"]);
    spdk.thin_text(&["bdev_thin_pool_create", "Uring0", "pool0", "-d", "65536"]);
    let vol0 = spdk.thin_text(&["bdev_thin_create", "vol0", "16", "-l", "pool0"]);
    // A writable pool is not checked online: its metadata changes under the check.
    assert_eq!(thin_error_code(&spdk, &["bdev_thin_pool_check", "-l", "pool0"]), -16);
    assert!(daemon.stop().success(), "{}", daemon.log_text());

    // As a failed metadata write leaves it; the restarted pool is read-only.
    flag_needs_check(&image);
    let mut daemon = Daemon::start(&dir.0, &[]);
    let spdk = Spdk { bin, socket: daemon.socket.clone() };
    spdk.ok(&["bdev_uring_create", image_path, "Uring0", "4096"]);
    spdk.ok(&["bdev_wait_for_examine"]);
    let pools = spdk.thin(&["bdev_thin_get_pools", "-l", "pool0"]);
    assert_eq!((&pools[0]["mode"], &pools[0]["needs_check"]), (&json!("read_only"), &json!(true)));
    // A delete the pool refuses leaves the volume's bdev as it was.
    assert_eq!(thin_error_code(&spdk, &["bdev_thin_delete", "pool0/vol0"]), -30);
    assert_eq!(spdk.json(&["bdev_get_bdevs", "-b", "pool0/vol0"])[0]["name"], vol0.as_str());
    // A check alone reports and keeps the flag.
    let checked = spdk.thin(&["bdev_thin_pool_check", "-l", "pool0"]);
    assert_eq!((&checked["clean"], &checked["needs_check"]), (&json!(true), &json!(true)));
    assert_eq!(checked["volumes"], 1);
    assert_eq!(spdk.thin(&["bdev_thin_get_pools"])[0]["mode"], "read_only");
    // Clean: cleared, and the pool takes writes and control operations again.
    let cleared = spdk.thin(&["bdev_thin_pool_check", "-l", "pool0", "--clear-needs-check"]);
    assert_eq!((&cleared["clean"], &cleared["needs_check"]), (&json!(true), &json!(false)));
    let pools = spdk.thin(&["bdev_thin_get_pools", "-l", "pool0"]);
    assert_eq!((&pools[0]["mode"], &pools[0]["needs_check"]), (&json!("write"), &json!(false)));
    spdk.thin_text(&["bdev_thin_create", "vol1", "16", "-l", "pool0"]);
    assert_eq!(spdk.thin(&["bdev_thin_delete", "pool0/vol0"]), json!(true));
    assert!(spdk.run(&["bdev_get_bdevs", "-b", "pool0/vol0"]).status.code() != Some(0));
    assert!(daemon.stop().success(), "{}", daemon.log_text());

    // And it stays cleared: the next start finds a writable pool.
    let mut daemon = Daemon::start(&dir.0, &[]);
    spdk.ok(&["bdev_uring_create", image_path, "Uring0", "4096"]);
    spdk.ok(&["bdev_wait_for_examine"]);
    let pools = spdk.thin(&["bdev_thin_get_pools", "-l", "pool0"]);
    assert_eq!((&pools[0]["mode"], &pools[0]["needs_check"]), (&json!("write"), &json!(false)));
    assert!(daemon.stop().success(), "{}", daemon.log_text());
}

/// `spdk-rpc --plugin bdev_thin_rpc ARGS` that must fail; returns the JSON-RPC error.
fn thin_error(spdk: &Spdk, args: &[&str]) -> Value {
    let mut all = vec!["--plugin", "bdev_thin_rpc"];
    all.extend_from_slice(args);
    let output = spdk.run(&all);
    assert!(!output.status.success(), "{args:?} succeeded");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    request_and_error(&text).1
}

#[test]
fn sizes_a_pool_cannot_serve_are_refused_and_the_daemon_serves_on() {
    let Some(bin) = client_bin() else { return };
    let dir = Scratch::new("spdk_sizes");
    let image = dir.path("pool.img");
    std::fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let mut daemon = Daemon::start(&dir.0, &[]);
    let spdk = Spdk { bin, socket: daemon.socket.clone() };
    spdk.ok(&["bdev_uring_create", image.to_str().unwrap(), "Uring0", "4096"]);
    spdk.thin_text(&["bdev_thin_pool_create", "Uring0", "pool0", "-d", "65536"]);
    // 2^40 MiB once aborted the daemon allocating the view; 1 PiB took gigabytes.
    for size_in_mib in ["1099511627776", "1073741824"] {
        let error = thin_error(&spdk, &["bdev_thin_create", "huge", size_in_mib, "-l", "pool0"]);
        assert_eq!(error["code"], -22, "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("bytes a volume of this pool can address"), "{message}");
    }
    spdk.thin_text(&["bdev_thin_create", "vol0", "16", "-l", "pool0"]);
    // Growing past the view says what the limit is and why: 4 times the size, in whole
    // chunks of 4096 blocks of 64 KiB.
    let error = thin_error(&spdk, &["bdev_thin_resize", "pool0/vol0", "1025"]);
    assert_eq!(error["code"], -22, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("can grow to 1073741824 bytes"), "{message}");
    assert!(message.contains("4 times its size"), "{message}");
    assert_eq!(spdk.thin(&["bdev_thin_resize", "pool0/vol0", "1024"]), json!(true));
    // The device did not grow: nothing to grow, not `true`.
    let error = thin_error(&spdk, &["bdev_thin_pool_grow", "-l", "pool0"]);
    assert_eq!(error["code"], -28, "{error}");
    assert!(error["message"].as_str().unwrap().contains("nothing to grow"), "{error}");
    let volumes = spdk.thin(&["bdev_thin_get_volumes"]);
    assert_eq!(volumes.as_array().map(Vec::len), Some(1), "{volumes}");
    assert!(daemon.stop().success(), "{}", daemon.log_text());
}
