//! `thin_tgt -c` with a config as a real `spdk_tgt` saves it (the fixture in
//! `bdev_thin/tests/fixtures/`, see its README): subsystems we lack are skipped, option setters
//! of modules we lack are accepted, every key SPDK saves for malloc, null and uring is taken,
//! and the bdevs come up with the saved names, sizes and UUIDs. A bad entry stops the start
//! with one line naming the method and the parameter.

mod common;

use common::{Daemon, Scratch};
use serde_json::{Value, json};

const FIXTURE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/bdev_thin/tests/fixtures/spdk_tgt_saved_config.json");

#[test]
fn a_config_saved_by_spdk_tgt_loads() {
    let dir = Scratch::new("cfg_fixture");
    let image = dir.path("uring0.img");
    std::fs::File::create(&image).unwrap().set_len(16 << 20).unwrap();
    let text = std::fs::read_to_string(FIXTURE).unwrap();
    let text = text.replace("@URING_FILE@", image.to_str().unwrap());
    let config = dir.path("config.json");
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&dir.0, &["-c", config.to_str().unwrap()]);
    let bdevs = daemon.call("bdev_get_bdevs", Value::Null)["result"].clone();
    let summary: Vec<Value> = bdevs
        .as_array()
        .unwrap()
        .iter()
        .map(|b| json!([b["name"], b["uuid"], b["block_size"], b["num_blocks"]]))
        .collect();
    assert_eq!(
        summary,
        vec![
            json!(["Malloc0", "5f2a3c4e-8d71-4b0a-9e36-0c1f2d3e4a51", 512, 65536]),
            json!(["Null0", "a1b2c3d4-0e0f-4a1b-8c2d-3e4f5a6b7c8d", 4096, 262144]),
            json!(["uring0", "0d9e8f7a-6b5c-4d3e-8f21-9a8b7c6d5e4f", 4096, 4096]),
        ]
    );
    let log = daemon.log_text();
    for skipped in ["iobuf", "sock", "accel", "scheduler", "iscsi"] {
        assert!(log.contains(&format!("subsystem {skipped}")), "{skipped} skipped: {log}");
    }
    for ignored in ["bdev_nvme_set_options", "bdev_raid_set_options", "nvmf_set_config"] {
        assert!(log.contains(ignored), "{ignored} accepted and ignored: {log}");
    }
    assert!(daemon.stop().success());
}

#[test]
fn a_bad_entry_stops_the_start_naming_method_and_parameter() {
    let dir = Scratch::new("cfg_bad");
    let config = dir.path("bad.json");
    std::fs::write(
        &config,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"num_blocks":"x","block_size":512}}]}]}"#,
    )
    .unwrap();
    let mut daemon = Daemon::spawn(&dir.0, &["-c", config.to_str().unwrap()]);
    let status = daemon.wait_exit();
    assert!(!status.success());
    let log = daemon.log_text();
    assert!(log.contains("bdev_malloc_create: num_blocks: expected an unsigned integer"), "{log}");
    assert!(!daemon.socket.exists(), "no socket is left behind");
}
