//! The pool lifecycle as an RPC client drives it, in-process: every refusal of
//! `bdev_thin_pool_create` and of the volume methods keeps its JSON-RPC code (negated errno,
//! or -32602 for a parameter) and names its cause, and a refused or deleted pool leaves its
//! bdevs unclaimed, so they can be deleted.

use std::sync::Arc;

use bdev_thin::rpc::{RpcError, call_blocking};
use bdev_thin::runtime::{Runtime, RuntimeOptions};
use bdev_thin::target::Target;
use serde_json::{Value, json};

fn target() -> (Runtime, Arc<Target>) {
    let runtime = Runtime::start(RuntimeOptions { pin: false, ..Default::default() }).unwrap();
    let target = Target::new(runtime.handle());
    (runtime, target)
}

fn call(target: &Arc<Target>, method: &str, params: Value) -> Result<Value, RpcError> {
    call_blocking(target, method, Some(params))
}

/// `method` is refused with `code`, in a message that contains `cause`.
fn refused(target: &Arc<Target>, method: &str, params: Value, code: i32, cause: &str) {
    let error = call(target, method, params.clone()).expect_err(&format!("{method} {params}"));
    assert_eq!(error.code, code, "{method} {params}: {}", error.message);
    assert!(error.message.contains(cause), "{method} {params}: {}", error.message);
}

fn malloc(target: &Arc<Target>, name: &str, num_blocks: u64) {
    let params = json!({"name": name, "num_blocks": num_blocks, "block_size": 4096});
    call(target, "bdev_malloc_create", params).unwrap();
}

#[test]
fn refusals_keep_their_codes_and_name_their_cause() {
    let (_runtime, target) = target();
    malloc(&target, "Malloc0", 4096);
    malloc(&target, "Malloc1", 4096);
    malloc(&target, "Tiny", 8);
    call(
        &target,
        "bdev_null_create",
        json!({"name": "Null0", "num_blocks": 4096, "block_size": 4096}),
    )
    .unwrap();
    let pool = json!({"bdev_name": "Malloc0", "pool_name": "pool0", "data_block_size": 65536});
    let create = |bdev: &str, pool: &str| json!({"bdev_name": bdev, "pool_name": pool});

    refused(&target, "bdev_thin_pool_create", create("Nope", "p"), -libc::ENODEV, "Nope");
    refused(
        &target,
        "bdev_thin_pool_create",
        create("Null0", "p"),
        -libc::EINVAL,
        "stores no data",
    );
    refused(&target, "bdev_thin_pool_create", create("Tiny", "p"), -libc::ENOSPC, "Tiny");
    let mut too_large = create("Malloc1", "p");
    too_large["max_growable_size_mib"] = json!(u64::MAX);
    refused(&target, "bdev_thin_pool_create", too_large, -32602, "max_growable_size_mib");
    let mut same_metadata = create("Malloc1", "p");
    same_metadata["metadata_bdev_name"] = json!("Malloc1");
    refused(&target, "bdev_thin_pool_create", same_metadata, -32602, "metadata_bdev_name");
    // Nothing above kept a claim: the pool goes on the first bdev it was refused on.
    let uuid = call(&target, "bdev_thin_pool_create", pool.clone()).unwrap();
    assert!(uuid.as_str().is_some_and(|u| u.len() == 36), "{uuid}");

    refused(&target, "bdev_thin_pool_create", pool, -libc::EEXIST, "pool pool0 already exists");
    refused(&target, "bdev_thin_pool_create", create("Malloc0", "p"), -libc::EEXIST, "holds pool");
    refused(&target, "bdev_malloc_delete", json!({"name": "Malloc0"}), -libc::EBUSY, "claimed");
    refused(
        &target,
        "bdev_malloc_create",
        json!({"name": "Malloc1", "num_blocks": 8, "block_size": 4096}),
        -libc::EEXIST,
        "Malloc1",
    );

    let volume = json!({"pool_name": "pool0", "volume_name": "v", "size_in_mib": 4});
    let name = call(&target, "bdev_thin_create", volume.clone()).unwrap();
    refused(&target, "bdev_thin_create", volume, -libc::EEXIST, "volume pool0/v already exists");
    let on_volume = create(name.as_str().unwrap(), "p");
    refused(&target, "bdev_thin_pool_create", on_volume, -libc::EINVAL, "is a thin volume");
    let on_base = json!({"name": "Malloc1", "snapshot_name": "s"});
    refused(&target, "bdev_thin_snapshot", on_base, -libc::ENODEV, "not a thin volume");
    let missing = json!({"pool_name": "nopool", "volume_name": "w", "size_in_mib": 4});
    refused(&target, "bdev_thin_create", missing, -libc::ENODEV, "pool nopool not found");
    let check = json!({"pool_name": "pool0"});
    refused(&target, "bdev_thin_pool_check", check, -libc::EBUSY, "read-only pool");
    let grow = json!({"pool_name": "pool0"});
    refused(&target, "bdev_thin_pool_grow", grow, -libc::ENOSPC, "nothing");

    // A deleted pool takes its volumes along and lets go of its bdev.
    assert_eq!(
        call(&target, "bdev_thin_pool_delete", json!({"pool_name": "pool0"})).unwrap(),
        true
    );
    assert!(target.bdevs.get("pool0/v").is_err(), "the volume's bdev is gone");
    assert_eq!(call(&target, "bdev_malloc_delete", json!({"name": "Malloc0"})).unwrap(), true);
    assert_eq!(call(&target, "bdev_thin_get_pools", json!({})).unwrap(), json!([]));
}
