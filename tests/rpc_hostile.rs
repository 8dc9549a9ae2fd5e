//! Clients of the real `thin_tgt` that push its JSON-RPC server to its bounds, over its Unix
//! socket with raw bytes: a flood of pool queries larger than a pool's control ring. Each test
//! also shows a second, well-behaved client served throughout, and the daemon stopping cleanly
//! on SIGTERM after it.

mod common;

use std::path::PathBuf;

use common::{Client, Daemon, Scratch};
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
