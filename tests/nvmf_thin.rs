//! A thin volume over NVMe-oF/TCP, from `examples/nvmf_thin.json` (the README's command, on a
//! free port): the namespace advertises what a thin volume does (deallocated blocks read
//! zeroes and Write Zeroes deallocates: DLFEAT 09h; the pool's data block as preferred write and
//! deallocate granularity and optimal write size), as `bdev_get_bdevs` does; a host's Dataset
//! Management deallocate returns the pool's blocks with their passdowns completed by the time
//! it is acknowledged; Write Zeroes with DEAC provisions nothing while without it provisions;
//! a Flush commits, and so does a shutdown (CC.SHN) before CSTS reads complete; SIGTERM ends
//! cleanly with a host still connected.

mod common;
#[path = "../bdev_thin/tests/nvmf_client/mod.rs"]
mod nvmf_client;

use bdev_thin::nvme::command::{Status, io_opcode};
use bdev_thin::nvme::fabrics::{cc, csts, property};
use bdev_thin::nvme::identify::{IdentifyControllerNvm, IdentifyNamespace};
use common::spdk::ROOT;
use common::{Daemon, Scratch};
use nvmf_client::{BOUND, HOSTNQN, admin_queue, assert_data, io_queue, pattern};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
/// The example's pool: 64 KiB data blocks of 16 logical blocks of 4 KiB.
const BLOCKS_PER_DATA_BLOCK: u64 = 16;

fn result(daemon: &Daemon, method: &str, params: Value) -> Value {
    let reply = daemon.call(method, params);
    assert!(reply.get("error").is_none(), "{method}: {reply}");
    reply["result"].clone()
}

fn pool(daemon: &Daemon) -> Value {
    result(daemon, "bdev_thin_get_pools", json!({"pool_name": "pool0"}))[0].clone()
}

fn used(daemon: &Daemon) -> u64 {
    pool(daemon)["used_data_blocks"].as_u64().expect("used_data_blocks")
}

#[test]
fn a_thin_volume_namespace_advertises_its_blocks_and_deallocates_through_the_pool() {
    let dir = Scratch::new("nvmf_thin");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let example =
        std::fs::read_to_string(std::path::Path::new(ROOT).join("examples/nvmf_thin.json"))
            .expect("the example")
            .replace("\"4420\"", &format!("\"{port}\""))
            // Only Flush and shutdown commit here, so the test sees that they do.
            .replace(
                "\"pool_name\": \"pool0\" }",
                "\"pool_name\": \"pool0\", \"commit_interval_ms\": 3600000 }",
            );
    assert!(example.contains("commit_interval_ms"), "the example's pool_create changed");
    let config = dir.path("nvmf_thin.json");
    std::fs::write(&config, example).unwrap();
    let mut daemon = Daemon::start(&dir.0, &["-m", "0x3", "-c", config.to_str().unwrap()]);

    let bdev = &result(&daemon, "bdev_get_bdevs", json!({"name": "pool0/vol0"}))[0];
    for key in [
        "optimal_write_size",
        "preferred_write_granularity",
        "preferred_write_alignment",
        "preferred_unmap_granularity",
        "preferred_unmap_alignment",
    ] {
        assert_eq!(bdev[key], BLOCKS_PER_DATA_BLOCK, "{key}: {bdev}");
    }

    let address = format!("127.0.0.1:{port}").parse().unwrap();
    let mut admin = admin_queue(address, NQN, HOSTNQN, 0);
    let (status, data) = admin.identify(0x00, 1, 0);
    assert_eq!(status, Status::SUCCESS);
    let ns = IdentifyNamespace::decode(&data[..].try_into().unwrap());
    assert_eq!(ns.size_blocks, 512 << 8, "512 MiB of 4 KiB blocks");
    assert_eq!(ns.lba_data_size_log2, 12);
    assert_eq!(ns.dlfeat, 0x09, "deallocated blocks read zeroes; Write Zeroes deallocates");
    let g = ns.granularity;
    for blocks in [
        g.write_granularity_blocks,
        g.write_alignment_blocks,
        g.deallocate_granularity_blocks,
        g.deallocate_alignment_blocks,
        g.optimal_write_blocks,
    ] {
        assert_eq!(u64::from(blocks), BLOCKS_PER_DATA_BLOCK, "{g:?}");
    }
    let (_, data) = admin.identify(0x06, 0, 0);
    let nvm = IdentifyControllerNvm::decode(&data[..].try_into().unwrap());
    assert_eq!(nvm.dmrsl, 512 << 8, "the volume's unmap limit: its size");
    assert_eq!(admin.set_queues(1).status, Status::SUCCESS);
    let mut io = io_queue(address, NQN, HOSTNQN, admin.cntlid, 1);

    // 1 MiB written: 16 data blocks provisioned.
    let data = pattern(0, 256, 4096, 1);
    for chunk in 0..8 {
        let part = &data[chunk * 32 * 4096..(chunk + 1) * 32 * 4096];
        assert_eq!(io.write(1, chunk as u64 * 32, part, 4096, false), Status::SUCCESS);
    }
    assert_eq!(used(&daemon), 16);
    let before_flush = pool(&daemon)["transaction_id"].as_u64().unwrap();
    assert_eq!(io.flush(1), Status::SUCCESS);
    assert!(pool(&daemon)["transaction_id"].as_u64().unwrap() > before_flush, "Flush commits");

    // Deallocate it, the edges partially: whole data blocks come back, passed down, by the time
    // the command is acknowledged; the partial edge blocks keep their data.
    let passdowns = pool(&daemon)["passdowns_completed"].as_u64().unwrap();
    assert_eq!(io.deallocate(1, &[(8, 240)]), Status::SUCCESS);
    let after = pool(&daemon);
    assert_eq!(after["used_data_blocks"], 2, "the two partial edge blocks stay: {after}");
    assert!(after["passdowns_completed"].as_u64().unwrap() > passdowns, "{after}");
    assert_eq!(after["held_data_blocks"], 0, "{after}");
    for chunk in 0..7 {
        let (_, read) = io.read(1, 16 + chunk * 32, 32, 4096);
        assert!(read.iter().all(|&b| b == 0), "deallocated blocks read zeroes");
    }
    let (_, edge) = io.read(1, 0, 16, 4096);
    assert_data(&edge, &data[..16 * 4096], "a partly deallocated block keeps its data");

    // Write Zeroes with DEAC over 2 MiB never written provisions nothing; without it, it does.
    let zeroes = io.io(io_opcode::WRITE_ZEROES, 1, 1024, 512, 1 << 25);
    assert_eq!(io.execute(zeroes, &[], 0).0.status, Status::SUCCESS);
    assert_eq!(used(&daemon), 2, "DEAC: nothing provisioned");
    let written = io.io(io_opcode::WRITE_ZEROES, 1, 2048, 512, 0);
    assert_eq!(io.execute(written, &[], 0).0.status, Status::SUCCESS);
    assert_eq!(used(&daemon), 2 + 32, "without DEAC the zeroes are written");
    let (_, read) = io.read(1, 2048, 32, 4096);
    assert!(read.iter().all(|&b| b == 0));

    // A normal shutdown (CC.SHN) reports complete only once every namespace's pool committed
    // what was written before it.
    assert_eq!(io.write(1, 4096, &pattern(4096, 16, 4096, 2), 4096, false), Status::SUCCESS);
    let before_shutdown = pool(&daemon)["transaction_id"].as_u64().unwrap();
    let cc = admin.property_get(property::CC, false) as u32;
    assert_eq!(admin.property_set(property::CC, cc | 1 << cc::SHN_SHIFT), Status::SUCCESS);
    let deadline = std::time::Instant::now() + BOUND;
    while admin.property_get(property::CSTS, false) as u32 & csts::SHST_MASK != csts::SHST_COMPLETE
    {
        assert!(std::time::Instant::now() < deadline, "CSTS.SHST never read complete");
    }
    let committed = pool(&daemon)["transaction_id"].as_u64().unwrap();
    assert!(committed > before_shutdown, "shutdown complete before its commit");

    // SIGTERM with the host connected: commands are done, pools commit, exit 0.
    assert!(daemon.stop().success(), "{}", daemon.log_text());
    assert_eq!(admin.try_receive().map(|r| r.pdu), None, "the connection closed");
}
