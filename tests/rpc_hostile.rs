//! Clients of the real `thin_tgt` that push its JSON-RPC server to its bounds, over its Unix
//! socket with raw bytes: a flood of pool queries larger than a pool's control ring, pool
//! deletes racing the operations queued for the same pool, silent and idle connections at the
//! connection cap and past the (configurable) handshake and idle timeouts, names at and past
//! their bounds and names that would split log lines. Each test also shows a second,
//! well-behaved client served throughout, and the daemon stopping cleanly on SIGTERM after it.

mod common;

use std::path::PathBuf;

use common::{Client, Daemon, Scratch, error_of};
use serde_json::{Value, json};

/// A config with a 64 MiB RAM disk and a pool `pool0` of 64 KiB blocks on it.
fn pool_config(dir: &Scratch) -> PathBuf {
    let path = dir.path("pool.json");
    let config = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create",
         "params": {"name": "Malloc0", "num_blocks": 16384, "block_size": 4096}},
        {"method": "bdev_thin_pool_create",
         "params": {"bdev_name": "Malloc0", "pool_name": "pool0"}},
    ]}]});
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

fn request(method: &str, id: u64, params: Value) -> String {
    json!({"jsonrpc": "2.0", "method": method, "id": id, "params": params}).to_string()
}

/// The well-behaved client: a pool query on a fresh connection is answered.
fn pool_query_is_answered(daemon: &Daemon) {
    let reply = daemon.call("bdev_thin_get_pools", json!({"pool_name": "pool0"}));
    assert_eq!(reply["result"][0]["name"], "pool0", "{reply}");
}

/// More pool queries at once than a pool's control ring holds (256), from many connections
/// pipelining 16 each and from batches, while the pool's owner runs on the RPC server's core:
/// every one is answered, a fresh client is answered while they wait, and SIGTERM stops it.
fn flood_of_pool_queries(mask: &str) {
    const CONNECTIONS: u64 = 48;
    const PIPELINED: u64 = 16;
    let dir = Scratch::new("rpc_flood");
    let config = pool_config(&dir);
    let mut daemon = Daemon::start(&dir.0, &["-m", mask, "-c", config.to_str().unwrap()]);
    let mut clients: Vec<Client> = (0..CONNECTIONS).map(|_| daemon.connect()).collect();
    for (c, client) in clients.iter_mut().enumerate() {
        let requests: String = (0..PIPELINED)
            .map(|i| request("bdev_thin_get_pools", c as u64 * PIPELINED + i, json!({})))
            .collect();
        client.send(requests.as_bytes());
    }
    // Three batches of 128 on three connections: 384 queries started by one poll each.
    let mut batchers: Vec<Client> = (0..3).map(|_| daemon.connect()).collect();
    for (b, client) in batchers.iter_mut().enumerate() {
        let batch: Vec<Value> = (0..128)
            .map(|i| json!({"jsonrpc": "2.0", "method": "bdev_thin_get_pools", "id": b * 128 + i}))
            .collect();
        client.send(Value::Array(batch).to_string().as_bytes());
    }
    pool_query_is_answered(&daemon);
    for (c, client) in clients.iter_mut().enumerate() {
        for i in 0..PIPELINED {
            let reply = client.read_reply().expect("every pipelined query is answered");
            assert_eq!(reply["id"], c as u64 * PIPELINED + i);
            assert_eq!(reply["result"][0]["name"], "pool0", "{reply}");
        }
    }
    for client in &mut batchers {
        let replies = client.read_reply().expect("every batch is answered");
        let replies = replies.as_array().expect("a batch reply is an array");
        assert_eq!(replies.len(), 128);
        assert!(replies.iter().all(|r| r["result"][0]["name"] == "pool0"));
    }
    pool_query_is_answered(&daemon);
    let status = daemon.stop();
    assert!(status.success(), "exit status {status}: {}", daemon.log_text());
}

#[test]
fn a_flood_of_pool_queries_on_one_core_is_answered_in_turn() {
    flood_of_pool_queries("0x1");
}

#[test]
fn a_flood_of_pool_queries_on_two_cores_is_answered_in_turn() {
    flood_of_pool_queries("0x3");
}

/// Creates `pool0` on `Malloc0` and, when `with_volume`, a volume `pool0/vol0` in it.
fn make_pool(daemon: &Daemon, with_volume: bool) {
    let reply =
        daemon.call("bdev_thin_pool_create", json!({"bdev_name": "Malloc0", "pool_name": "pool0"}));
    assert!(reply["result"].is_string(), "{reply}");
    if with_volume {
        let reply = daemon.call(
            "bdev_thin_create",
            json!({"pool_name": "pool0", "volume_name": "vol0", "size_in_mib": 4}),
        );
        assert!(reply["result"].is_string(), "{reply}");
    }
}

/// The operations a pool delete can race, each with whether it needs `pool0/vol0`.
fn racing_operations() -> Vec<(&'static str, Value, bool)> {
    vec![
        ("bdev_thin_delete", json!({"name": "pool0/vol0"}), true),
        (
            "bdev_thin_create",
            json!({"pool_name": "pool0", "volume_name": "vol1", "size_in_mib": 4}),
            false,
        ),
        ("bdev_thin_snapshot", json!({"name": "pool0/vol0", "snapshot_name": "snap0"}), true),
        ("bdev_thin_resize", json!({"name": "pool0/vol0", "size_in_mib": 8}), true),
    ]
}

/// An operation that raced a pool delete either ran first (a result) or found its pool gone.
fn ran_or_pool_gone(method: &str, reply: &Value) {
    if reply.get("result").is_some() {
        return;
    }
    let (code, message) = error_of(reply);
    assert_eq!(code, -19, "{method}: {message}");
}

/// After the pool is gone no bdev of it is left (a volume made just before the delete too).
fn only_the_base_bdev_is_left(daemon: &Daemon) {
    let bdevs = daemon.call("bdev_get_bdevs", Value::Null);
    let names: Vec<&str> =
        bdevs["result"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Malloc0"], "{bdevs}");
    let pools = daemon.call("bdev_thin_get_pools", Value::Null);
    assert_eq!(pools["result"], json!([]), "{pools}");
}

/// A pool delete sent at once after a volume operation on the same pool, in one batch and from
/// two clients: every request gets exactly one answer (the operation ran first, or -19 if its
/// pool went away), no volume outlives its pool, fresh clients are served, SIGTERM stops it.
#[test]
fn a_pool_delete_racing_queued_operations_answers_every_request() {
    const ROUNDS: usize = 3;
    let dir = Scratch::new("rpc_pool_race");
    let config = dir.path("malloc.json");
    let entries = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create",
         "params": {"name": "Malloc0", "num_blocks": 16384, "block_size": 4096}},
    ]}]});
    std::fs::write(&config, entries.to_string()).unwrap();
    let mut daemon = Daemon::start(&dir.0, &["-m", "0x1", "-c", config.to_str().unwrap()]);
    let delete_pool = json!({"pool_name": "pool0"});
    for (method, params, with_volume) in racing_operations() {
        for round in 0..ROUNDS {
            // One batch: both requests start in one poll of the server.
            make_pool(&daemon, with_volume);
            let mut client = daemon.connect();
            let batch = format!(
                "[{},{}]",
                request(method, 1, params.clone()),
                request("bdev_thin_pool_delete", 2, delete_pool.clone())
            );
            client.send(batch.as_bytes());
            let replies = client.read_reply().expect("the batch is answered");
            let replies = replies.as_array().expect("an array");
            assert_eq!(replies.len(), 2, "{method} round {round}: {replies:?}");
            let by_id = |id: u64| replies.iter().find(|r| r["id"] == id).unwrap();
            ran_or_pool_gone(method, by_id(1));
            assert_eq!(by_id(2)["result"], true, "{:?}", by_id(2));
            only_the_base_bdev_is_left(&daemon);

            // Two clients, the delete sent before the operation's answer could come.
            make_pool(&daemon, with_volume);
            let (mut first, mut second) = (daemon.connect(), daemon.connect());
            first.send(request(method, 3, params.clone()).as_bytes());
            second.send(request("bdev_thin_pool_delete", 4, delete_pool.clone()).as_bytes());
            ran_or_pool_gone(method, &first.read_reply().expect("the operation is answered"));
            let deleted = second.read_reply().expect("the delete is answered");
            assert_eq!(deleted["result"], true, "{deleted}");
            only_the_base_bdev_is_left(&daemon);
        }
    }
    pool_query_is_answered_after_all(&daemon);
    let status = daemon.stop();
    assert!(status.success(), "exit status {status}: {}", daemon.log_text());
}

/// A fresh client is served once the races are over: no connection slot was left behind.
fn pool_query_is_answered_after_all(daemon: &Daemon) {
    let clients: Vec<Client> = (0..100).map(|_| daemon.connect()).collect();
    let reply = daemon.call("spdk_get_version", Value::Null);
    assert!(reply["result"]["version"].is_string(), "{reply}");
    drop(clients);
}

/// As many silent connections as the cap (128) do not shut out a real client: it is served at
/// once, and the silent connection that waited longest is closed (it reads EOF) to make room;
/// logged. Connections that all sent a request are not evicted: a client past the cap is then
/// refused with a clean EOF, and that is logged too.
#[test]
fn silent_connections_at_the_cap_make_room_for_a_real_client() {
    const CAP: usize = bdev_thin::limits::RPC_CONNECTIONS_MAX;
    let dir = Scratch::new("rpc_silent_cap");
    let daemon = Daemon::start(&dir.0, &[]);
    let mut silent: Vec<Client> = (0..CAP).map(|_| daemon.connect()).collect();
    let reply = daemon.call("spdk_get_version", Value::Null);
    assert!(reply["result"]["version"].is_string(), "{reply}");
    silent[0].expect_closed();
    let log = daemon.log_text();
    assert!(log.contains("rpc: 128 connections (the most served): closing"), "{log}");

    // Every connection now past its first request: nobody to evict, the next one is refused.
    drop(silent);
    let mut busy: Vec<Client> = Vec::new();
    common::wait_until("every place taken by a served client", || {
        let mut client = daemon.connect();
        client.send(br#"{"method":"spdk_get_version","id":1}"#);
        match client.read_reply() {
            Some(_) => {
                busy.push(client);
                false
            }
            None => true,
        }
    });
    assert_eq!(busy.len(), CAP, "the refused client came at the cap");
    assert!(daemon.log_text().contains("refused a new one"), "{}", daemon.log_text());
    for client in &mut busy {
        client.send(br#"{"method":"spdk_get_version","id":2}"#);
        assert_eq!(client.read_reply().unwrap()["id"], 2, "the served clients stay served");
    }
}

/// A connection that sends no request within the handshake timeout, and one idle past the idle
/// timeout after its request was answered, are closed (both flags tiny here; the test watches
/// the sockets, not the clock); fresh clients are served before and after; both are logged.
#[test]
fn silent_and_idle_connections_are_closed_after_their_timeouts() {
    let dir = Scratch::new("rpc_timeouts");
    let daemon =
        Daemon::start(&dir.0, &["--handshake-timeout-ms", "100", "--idle-timeout-ms", "200"]);
    let mut silent = daemon.connect();
    let mut partial = daemon.connect();
    partial.send(br#"{"method":"spdk_get_ver"#);
    let mut idle = daemon.connect();
    idle.send(br#"{"method":"spdk_get_version","id":1}"#);
    assert_eq!(idle.read_reply().unwrap()["id"], 1);
    silent.expect_closed();
    partial.expect_closed();
    idle.expect_closed();
    let reply = daemon.call("spdk_get_version", Value::Null);
    assert!(reply["result"]["version"].is_string(), "{reply}");
    let log = daemon.log_text();
    assert!(log.contains("did not finish its handshake within 100 ms"), "{log}");
    assert!(log.contains("closed a connection idle for 200 ms"), "{log}");
}

/// Every name a create method takes is bounded as SPDK bounds it: no NUL anywhere (SPDK's
/// decoder refuses it; a NUL in a filename was -5), bdev names of 1 to 255 bytes (an empty and
/// a 100 kB name were taken), pool and volume names of 1 to 63; each refusal is -32602 naming
/// the parameter, and the well-behaved client is served after each. Names that SPDK allows to
/// hold a newline are logged escaped: a restart's examine of a pool named "p\nforged..." on a
/// bdev named likewise logs one line, and no forged line.
#[test]
fn names_are_bounded_and_logged_on_one_line() {
    const LONGEST: usize = bdev_thin::limits::BDEV_NAME_BYTES_MAX;
    let dir = Scratch::new("rpc_names");
    let image = dir.path("names.img");
    std::fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let image = image.to_str().unwrap().to_string();
    let config = pool_config(&dir);
    let mut daemon = Daemon::start(&dir.0, &["-c", config.to_str().unwrap()]);
    let refused = |method: &str, params: Value, key: &str| {
        let (code, message) = error_of(&daemon.call(method, params.clone()));
        let shown: String = params.to_string().chars().take(200).collect();
        assert_eq!(code, -32602, "{method} {shown}: {message}");
        assert!(message.starts_with(&format!("{key}: ")), "{method} {shown}: {message}");
        pool_query_is_answered(&daemon);
    };
    let too_long = "n".repeat(LONGEST + 1);
    let huge = "n".repeat(100_000);
    for name in ["", too_long.as_str(), huge.as_str(), "nul\0inside"] {
        let sized = json!({"name": name, "num_blocks": 16, "block_size": 512});
        refused("bdev_malloc_create", sized.clone(), "name");
        refused("bdev_null_create", sized, "name");
        refused("bdev_uring_create", json!({"name": name, "filename": image}), "name");
    }
    let nul_file = format!("{image}\0.img");
    refused("bdev_uring_create", json!({"name": "U0", "filename": nul_file}), "filename");
    let pool = json!({"bdev_name": "Malloc0", "pool_name": "p\0"});
    refused("bdev_thin_pool_create", pool, "pool_name");
    let volume = json!({"pool_name": "pool0", "volume_name": "v\0", "size_in_mib": 1});
    refused("bdev_thin_create", volume, "volume_name");
    let volume = json!({"pool_name": "pool0", "volume_name": "v".repeat(64), "size_in_mib": 1});
    refused("bdev_thin_create", volume, "volume_name");
    let export = json!({"bdev_name": "Malloc0", "export_name": "e\0"});
    refused("nbd_export_add", export, "export_name");
    let longest = "n".repeat(LONGEST);
    let sized = json!({"name": longest, "num_blocks": 16, "block_size": 512});
    assert_eq!(daemon.call("bdev_malloc_create", sized)["result"], longest.as_str());

    // Newlines are allowed in names, as in SPDK; the log escapes them.
    let bdev_name = "u\nforged: bdev line";
    let uring = json!({"name": bdev_name, "filename": image});
    assert_eq!(daemon.call("bdev_uring_create", uring)["result"], bdev_name);
    let pool = json!({"bdev_name": bdev_name, "pool_name": "p\nforged: pool line"});
    assert!(daemon.call("bdev_thin_pool_create", pool)["result"].is_string());
    assert!(daemon.stop().success(), "{}", daemon.log_text());
    let restart = dir.path("restart.json");
    let entries = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_uring_create", "params": {"name": bdev_name, "filename": image}},
    ]}]});
    std::fs::write(&restart, entries.to_string()).unwrap();
    let mut daemon = Daemon::start(&dir.0, &["-c", restart.to_str().unwrap(), "-m", "0x1"]);
    let reply = daemon.call("bdev_thin_get_pools", json!({}));
    assert_eq!(reply["result"][0]["name"], "p\nforged: pool line", "{reply}");
    let log = daemon.log_text();
    let examined = r"examine u\nforged: bdev line: found pool p\nforged: pool line (";
    assert!(log.contains(examined), "{log}");
    assert!(!log.lines().any(|line| line.starts_with("forged")), "{log}");
    assert!(daemon.stop().success(), "{}", daemon.log_text());
}
