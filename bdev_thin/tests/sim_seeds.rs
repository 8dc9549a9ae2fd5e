//! The deterministic simulator in `cargo test`: the regression list (every seed that ever
//! failed) and a quick prefix of the CI seed list. `ci/test.sh` runs the whole CI list through
//! `thin_sim --ci` in release.

use bdev_thin::testing::sim::{self, QUICK_SEED_COUNT, SimConfig};

fn run_all(seeds: impl IntoIterator<Item = u64>) {
    for seed in seeds {
        if let Err(failure) = sim::run(SimConfig::new(seed)) {
            panic!("{failure}\nreplay: cargo run --release --bin thin_sim -- --seed {seed}");
        }
    }
}

#[test]
fn regression_seeds_run_clean() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/regression_seeds.txt");
    let text = std::fs::read_to_string(path).expect("the regression list exists");
    let seeds = sim::parse_seed_list(&text).expect("the regression list parses");
    assert!(!seeds.is_empty());
    run_all(seeds);
}

#[test]
fn quick_seeds_run_clean() {
    run_all(sim::ci_seeds().into_iter().take(QUICK_SEED_COUNT));
}

#[test]
fn a_seed_replays_identically() {
    let a = sim::run(SimConfig::new(4242)).expect("clean");
    let b = sim::run(SimConfig::new(4242)).expect("clean");
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}
