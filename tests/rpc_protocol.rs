//! The JSON-RPC server of the real `thin_tgt`, over its Unix socket with raw bytes: SPDK's
//! framing, notifications, batches, every error code, bad input of every kind (each a test), a
//! crowd of clients, the connection cap, stale sockets and the SIGTERM drain. After each bad
//! input the daemon must still serve another client.

mod common;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};

use common::{Client, Daemon, Scratch, error_of};
use serde_json::{Value, json};

/// The daemon still answers a fresh client.
fn still_serves(daemon: &Daemon) {
    let reply = daemon.call("spdk_get_version", Value::Null);
    assert!(reply["result"]["version"].is_string(), "{reply}");
}

#[test]
fn pretty_printed_split_and_pipelined_requests_are_answered_in_order() {
    let dir = Scratch::new("rpc_frames");
    let daemon = Daemon::start(&dir.0, &[]);
    let mut client = daemon.connect();
    // Two pretty-printed requests in one write, as SPDK's client sends them.
    let first = serde_json::to_string_pretty(
        &json!({"jsonrpc":"2.0","method":"spdk_get_version","id":"a"}),
    )
    .unwrap();
    let second = serde_json::to_string_pretty(&json!({"jsonrpc":"2.0","method":"bdev_get_bdevs",
        "id":2,"params":{"name":null}}))
    .unwrap();
    client.send(format!("{first}\n{second}").as_bytes());
    // A third, one byte per write.
    for byte in br#" {"method":"rpc_get_methods","id":3.5} "# {
        client.send(std::slice::from_ref(byte));
    }
    let replies: Vec<Value> = (0..3).map(|_| client.read_reply().unwrap()).collect();
    assert_eq!(replies[0]["id"], "a");
    assert_eq!(replies[0]["jsonrpc"], "2.0");
    assert!(replies[0]["result"]["fields"]["major"].is_u64());
    assert_eq!(replies[1]["id"], 2);
    assert_eq!(replies[1]["result"], json!([]));
    assert_eq!(replies[2]["id"], 3.5);
    let methods = replies[2]["result"].as_array().unwrap();
    for name in ["framework_get_subsystems", "framework_get_config", "bdev_malloc_create"] {
        assert!(methods.contains(&json!(name)), "{name} listed");
    }
}

#[test]
fn notifications_are_answered_only_on_error() {
    let dir = Scratch::new("rpc_notify");
    let daemon = Daemon::start(&dir.0, &[]);
    let mut client = daemon.connect();
    client.send(
        br#"{"jsonrpc":"2.0","method":"spdk_get_version"}
            {"jsonrpc":"2.0","method":"spdk_get_version","id":null}
            {"jsonrpc":"2.0","method":"no_such_method"}
            {"jsonrpc":"2.0","method":"spdk_get_version","id":9}"#,
    );
    let error = client.read_reply().unwrap();
    assert_eq!(error["id"], Value::Null);
    assert_eq!(error_of(&error), (-32601, "Method not found: no_such_method".into()));
    assert_eq!(client.read_reply().unwrap()["id"], 9, "the successes were not answered");
}

#[test]
fn batches_get_one_array_without_notifications() {
    let dir = Scratch::new("rpc_batch");
    let daemon = Daemon::start(&dir.0, &[]);
    let mut client = daemon.connect();
    client.send(
        br#"[{"jsonrpc":"2.0","method":"spdk_get_version","id":1},
             {"jsonrpc":"2.0","method":"spdk_get_version"},
             {"jsonrpc":"2.0","method":"nope","id":2},
             {"jsonrpc":"2.0","id":3},
             5]"#,
    );
    let reply = client.read_reply().unwrap();
    let replies = reply.as_array().expect("an array");
    assert_eq!(replies.len(), 4, "{reply}");
    let by_id = |id: Value| replies.iter().find(|r| r["id"] == id).cloned().unwrap();
    assert!(by_id(json!(1))["result"].is_object());
    assert_eq!(error_of(&by_id(json!(2))).0, -32601);
    assert_eq!(error_of(&by_id(json!(3))).0, -32600);
    assert_eq!(error_of(&by_id(Value::Null)).0, -32600);
    // An empty batch is an invalid request; a batch of notifications gets no reply at all.
    client.send(b"[]");
    assert_eq!(error_of(&client.read_reply().unwrap()).0, -32600);
    client.send(br#"[{"method":"spdk_get_version"}] {"method":"spdk_get_version","id":4}"#);
    assert_eq!(client.read_reply().unwrap()["id"], 4);
}

#[test]
fn garbage_bytes_get_a_parse_error_and_a_close() {
    let dir = Scratch::new("rpc_garbage");
    let daemon = Daemon::start(&dir.0, &[]);
    let mut client = daemon.connect();
    client.send(b"\x00\xff\xfe garbage {{{");
    let reply = client.read_reply().unwrap();
    assert_eq!(reply["id"], Value::Null);
    assert_eq!(error_of(&reply).0, -32700);
    client.expect_closed();
    // Invalid UTF-8 inside a string is also a parse error.
    let mut client = daemon.connect();
    client.send(b"{\"method\":\"\xff\xfe\",\"id\":1}");
    assert_eq!(error_of(&client.read_reply().unwrap()).0, -32700);
    client.expect_closed();
    // A stray closing bracket.
    let mut client = daemon.connect();
    client.send(b"}");
    assert_eq!(error_of(&client.read_reply().unwrap()).0, -32700);
    client.expect_closed();
    still_serves(&daemon);
}

#[test]
fn truncated_json_then_half_close_gets_nothing_and_a_close() {
    let dir = Scratch::new("rpc_truncated");
    let daemon = Daemon::start(&dir.0, &[]);
    let mut client = daemon.connect();
    client.send(br#"{"jsonrpc":"2.0","method":"spdk_get_version","id":1} {"jsonrpc":"2.0","met"#);
    client.stream().shutdown(std::net::Shutdown::Write).unwrap();
    // The complete request before the cut is still answered; the fragment is dropped.
    assert_eq!(client.read_reply().unwrap()["id"], 1);
    client.expect_closed();
    still_serves(&daemon);
}

#[test]
fn a_client_that_disconnects_mid_request_does_not_disturb_the_others() {
    let dir = Scratch::new("rpc_disconnect");
    let daemon = Daemon::start(&dir.0, &[]);
    let mut bystander = daemon.connect();
    for round in 0..20 {
        let mut leaver = daemon.connect();
        leaver.send(br#"{"jsonrpc":"2.0","method":"bdev_malloc_create","params":{"num_bl"#);
        drop(leaver);
        // One that sends a whole request and leaves before the reply.
        let mut impatient = daemon.connect();
        impatient.send(br#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":1}"#);
        drop(impatient);
        bystander.send(format!(r#"{{"method":"spdk_get_version","id":{round}}}"#).as_bytes());
        assert_eq!(bystander.read_reply().unwrap()["id"], round);
    }
}

#[test]
fn deeply_nested_json_gets_a_parse_error_and_a_close() {
    let dir = Scratch::new("rpc_deep");
    let daemon = Daemon::start(&dir.0, &[]);
    let mut client = daemon.connect();
    let mut deep = br#"{"jsonrpc":"2.0","method":"spdk_get_version","id":1,"params":"#.to_vec();
    deep.extend(std::iter::repeat_n(b'[', 100_000));
    client.send(&deep);
    let reply = client.read_reply().unwrap();
    let (code, message) = error_of(&reply);
    assert_eq!(code, -32700);
    assert!(message.contains("nested"), "{message}");
    client.expect_closed();
    still_serves(&daemon);
}

#[test]
fn a_64_mib_request_gets_an_error_and_a_close_without_the_memory() {
    let dir = Scratch::new("rpc_huge");
    let daemon = Daemon::start(&dir.0, &[]);
    let stream = UnixStream::connect(&daemon.socket).unwrap();
    let mut writer = stream.try_clone().unwrap();
    // The writer fails (EPIPE) once the daemon closes; that is expected.
    let sender = std::thread::spawn(move || {
        let mut request =
            br#"{"jsonrpc":"2.0","method":"bdev_malloc_create","id":1,"params":{"name":""#.to_vec();
        request.resize(64 << 20, b'x');
        let _ = writer.write_all(&request);
    });
    let mut client = Client::from_stream(stream);
    let reply = client.read_reply().expect("an error before the close");
    let (code, message) = error_of(&reply);
    assert_eq!(code, -32600);
    assert!(message.contains("larger than"), "{message}");
    client.expect_closed();
    sender.join().unwrap();
    still_serves(&daemon);
    let peak_kib = daemon.peak_rss_kib();
    assert!(peak_kib < 48 * 1024, "the daemon peaked at {peak_kib} KiB: it buffered the request");
}

#[test]
fn wrong_missing_and_unknown_params_name_the_parameter() {
    let dir = Scratch::new("rpc_params");
    let daemon = Daemon::start(&dir.0, &[]);
    let cases = [
        (
            "bdev_malloc_create",
            json!({"num_blocks":"x","block_size":512}),
            "num_blocks: expected an unsigned integer",
        ),
        ("bdev_malloc_create", json!({"num_blocks":8}), "block_size: missing required parameter"),
        (
            "bdev_malloc_create",
            json!({"num_blocks":8,"block_size":512,"bogus":1}),
            "bogus: unknown parameter",
        ),
        (
            "bdev_null_create",
            json!({"name":5,"num_blocks":8,"block_size":512}),
            "name: expected a string",
        ),
        ("bdev_get_bdevs", json!([1, 2]), "params: expected an object"),
        ("framework_get_config", json!({}), "name: missing required parameter"),
        ("framework_get_config", json!({"name":"iscsi"}), "Subsystem 'iscsi' not found"),
        ("spdk_get_version", json!({"x":1}), "spdk_get_version method requires no parameters"),
    ];
    for (method, params, message) in cases {
        let reply = daemon.call(method, params.clone());
        assert_eq!(error_of(&reply), (-32602, message.to_string()), "{method} {params}");
    }
    let reply = daemon.call("bdev_get_bdevs", json!({"name":"nope"}));
    assert_eq!(error_of(&reply).0, -19);
    let reply = daemon.call("no_such_method", Value::Null);
    assert_eq!(error_of(&reply), (-32601, "Method not found: no_such_method".to_string()));
    // Invalid requests keep the connection open.
    let mut client = daemon.connect();
    client.send(br#"{"jsonrpc":"1.0","method":"x","id":7} {"method":3,"id":8} "text" 42 "#);
    for id in [json!(7), json!(8), Value::Null, Value::Null] {
        let reply = client.read_reply().unwrap();
        assert_eq!(reply["id"], id);
        assert_eq!(error_of(&reply).0, -32600);
    }
    client.send(br#"{"method":"spdk_get_version","id":9}"#);
    assert_eq!(client.read_reply().unwrap()["id"], 9);
}

#[test]
fn a_hundred_clients_at_once_are_all_served() {
    let dir = Scratch::new("rpc_crowd");
    let daemon = Daemon::start(&dir.0, &[]);
    let mut clients: Vec<Client> = (0..100).map(|_| daemon.connect()).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let request = json!({"jsonrpc":"2.0","method":"bdev_malloc_create","id":i,
            "params":{"name":format!("M{i}"),"num_blocks":16,"block_size":512}});
        client.send(request.to_string().as_bytes());
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let reply = client.read_reply().unwrap();
        assert_eq!(reply["id"], i);
        assert_eq!(reply["result"], format!("M{i}"));
    }
    let bdevs = daemon.call("bdev_get_bdevs", Value::Null);
    assert_eq!(bdevs["result"].as_array().unwrap().len(), 100);
}

#[test]
fn past_the_connection_cap_a_client_gets_a_clean_close() {
    const CAP: usize = bdev_thin::limits::RPC_CONNECTIONS_MAX;
    let dir = Scratch::new("rpc_cap");
    let daemon = Daemon::start(&dir.0, &[]);
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..CAP {
        let mut client = daemon.connect();
        client.send(format!(r#"{{"method":"spdk_get_version","id":{i}}}"#).as_bytes());
        assert_eq!(client.read_reply().unwrap()["id"], i, "connection {i} is served");
        clients.push(client);
    }
    let mut refused = daemon.connect();
    refused.expect_closed();
    drop(clients.pop());
    // The freed place is taken by the next client (the close is seen within the bound).
    common::wait_until("a freed connection slot", || {
        let mut client = daemon.connect();
        client.send(br#"{"method":"spdk_get_version","id":1}"#);
        client.read_reply().is_some()
    });
}

#[test]
fn sigterm_stops_accepting_answers_and_exits_zero() {
    let dir = Scratch::new("rpc_stop");
    let mut daemon = Daemon::start(&dir.0, &[]);
    let mut client = daemon.connect();
    client.send(br#"{"method":"spdk_get_version","id":1}"#);
    assert_eq!(client.read_reply().unwrap()["id"], 1);
    let status = daemon.stop();
    assert!(status.success(), "exit status {status}: {}", daemon.log_text());
    assert!(!daemon.socket.exists(), "the socket file is removed");
    client.expect_closed();
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_refused() {
    let dir = Scratch::new("rpc_stale");
    // A socket file left behind by a dead process.
    drop(UnixListener::bind(dir.path("spdk.sock")).unwrap());
    assert!(dir.path("spdk.sock").exists());
    let daemon = Daemon::start(&dir.0, &[]);
    // A second daemon on the same socket fails and leaves the first serving.
    let mut second = Daemon::spawn(&dir.0, &["--no-park"]);
    let status = second.wait_exit();
    assert!(!status.success());
    assert!(second.log_text().contains("another process"), "{}", second.log_text());
    still_serves(&daemon);
}

#[test]
fn save_config_through_framework_methods_replays_with_the_same_uuids() {
    let dir = Scratch::new("rpc_save");
    let mut daemon = Daemon::start(&dir.0, &[]);
    let subsystems = daemon.call("framework_get_subsystems", Value::Null);
    assert_eq!(subsystems["result"][0], json!({"subsystem":"bdev","depends_on":[]}));
    daemon.call("bdev_malloc_create", json!({"name":"M0","num_blocks":64,"block_size":4096}));
    daemon.call("bdev_null_create", json!({"name":"N0","num_blocks":64,"block_size":512}));
    let config = daemon.call("framework_get_config", json!({"name":"bdev","with_batches":false}));
    let entries = config["result"].as_array().unwrap().clone();
    let methods: Vec<&str> = entries.iter().map(|e| e["method"].as_str().unwrap()).collect();
    assert_eq!(
        methods,
        ["bdev_set_options", "bdev_malloc_create", "bdev_null_create", "bdev_wait_for_examine"]
    );
    let bdevs = daemon.call("bdev_get_bdevs", Value::Null)["result"].clone();
    let saved = json!({"subsystems":[{"subsystem":"bdev","config":entries}]});
    std::fs::write(dir.path("saved.json"), saved.to_string()).unwrap();
    assert!(daemon.stop().success());
    let config_path = dir.path("saved.json");
    let daemon = Daemon::start(&dir.0, &["-c", config_path.to_str().unwrap()]);
    assert_eq!(daemon.call("bdev_get_bdevs", Value::Null)["result"], bdevs);
}

/// A seeded stream of bytes, JSON's structural characters and request fragments over-represented
/// (xorshift64: deterministic, so a failure replays).
fn noise(seed: u64, length: usize) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b"\\",
        b":",
        b",",
        b" ",
        b"\n",
        b"1",
        b"-0.5e3",
        b"null",
        b"\"method\"",
        b"\"id\"",
        b"\"params\"",
        b"\"jsonrpc\":\"2.0\"",
        b"\"spdk_get_version\"",
        b"\"bdev_malloc_create\"",
        b"\xff",
        b"\x00",
        b"\"\\u00e9\"",
    ];
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut bytes = Vec::new();
    while bytes.len() < length {
        let pick = next();
        if pick % 4 == 0 {
            bytes.push((pick >> 8) as u8);
        } else {
            bytes.extend_from_slice(PIECES[(pick >> 8) as usize % PIECES.len()]);
        }
    }
    bytes
}

#[test]
fn seeded_noise_over_the_socket_never_stops_the_daemon() {
    let dir = Scratch::new("rpc_noise");
    let mut daemon = Daemon::start(&dir.0, &[]);
    for seed in 0..300u64 {
        let mut client = daemon.connect();
        let bytes = noise(seed, 16 + (seed as usize * 37) % 2048);
        // The daemon may close before everything is written; that is one allowed outcome.
        let _ = client.stream().write_all(&bytes);
        let _ = client.stream().shutdown(std::net::Shutdown::Write);
        // Every reply is one well-formed JSON-RPC reply line, then the connection ends.
        while let Some(reply) = client.read_reply() {
            let replies = match reply {
                Value::Array(replies) => replies,
                single => vec![single],
            };
            for reply in replies {
                assert_eq!(reply["jsonrpc"], "2.0", "seed {seed}: {reply}");
                assert!(reply.get("result").is_some() || reply.get("error").is_some());
            }
        }
        assert!(daemon.try_exit().is_none(), "seed {seed} stopped the daemon");
    }
    still_serves(&daemon);
}

#[test]
fn large_pipelined_replies_arrive_whole_to_a_slow_reader() {
    let dir = Scratch::new("rpc_large");
    let daemon = Daemon::start(&dir.0, &[]);
    let mut client = daemon.connect();
    let mut requests = String::new();
    for i in 0..1000 {
        let request = json!({"method":"bdev_null_create","id":i,
            "params":{"name":format!("Null{i}"),"num_blocks":8,"block_size":512}});
        requests.push_str(&request.to_string());
    }
    client.send(requests.as_bytes());
    for i in 0..1000 {
        assert_eq!(client.read_reply().unwrap()["id"], i);
    }
    // Ten replies of ~1 MB each, asked for at once: more than the output the server keeps for
    // a connection before it stops starting requests, so it must pause and resume.
    let asks: String =
        (0..10).map(|i| format!(r#"{{"method":"bdev_get_bdevs","id":{i}}}"#)).collect();
    client.send(asks.as_bytes());
    for i in 0..10 {
        let reply = client.read_reply().unwrap();
        assert_eq!(reply["id"], i);
        assert_eq!(reply["result"].as_array().unwrap().len(), 1000);
    }
}
