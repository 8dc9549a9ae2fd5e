//! The benchmark scripts without benchmarking (no timing is asserted anywhere): the shell
//! scripts parse and answer `--help`, the Python harness compiles, its statistics (median, min,
//! max, ratio spread, disturbed runs) come out right on runs with known figures, and the tables
//! land between BENCH.md-style markers. Needs python3 (`ci/install.sh`); without it the test
//! prints a loud SKIPPED, and fails with `CI=true`.

mod common;

use std::path::Path;
use std::process::Command;

use common::Scratch;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn python() -> Option<&'static str> {
    if Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some("python3");
    }
    let message = "python3 not found; run ci/install.sh";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    eprintln!("\n*** SKIPPED: {message} ***\n");
    None
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn the_shell_scripts_parse_and_answer_help() {
    for script in ["bench.sh", "bench_thin.sh", "bench_nbd.sh", "bench_nvmf.sh", "demo.sh"] {
        run(Command::new("bash").arg("-n").arg(Path::new(ROOT).join("ci").join(script)));
    }
    for script in ["bench.sh", "bench_thin.sh", "bench_nbd.sh", "bench_nvmf.sh"] {
        let help =
            run(Command::new("bash").arg(Path::new(ROOT).join("ci").join(script)).arg("--help"));
        assert!(help.contains("ci/bench.sh"), "{script} --help:\n{help}");
    }
    let help = run(Command::new("bash").arg(Path::new(ROOT).join("ci/bench.sh")).arg("--help"));
    assert!(help.contains("Sections: foundation spdk sweep"), "{help}");
}

/// Runs the harness's `compare` on two fake sides whose runs have known figures and checks the
/// recorded row, then renders it as a BENCH.md table.
const HARNESS_CHECK: &str = r##"
import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "ci"))
import bench_lib, bench_tables

def cpu(disturber_pct):
    others = [{"pid": 7, "comm": "rustc", "kernel": False, "cpu_pct": disturber_pct},
              {"pid": 2, "comm": "kworker/0:1", "kernel": True, "cpu_pct": 40.0}]
    return {"others": others, "disturbed": disturber_pct > bench_lib.DISTURBED_PCT,
            "steal_pct": 2.0}

def side(label, iops_per_round, disturber):
    rounds = iter(range(len(iops_per_round)))
    def run(tests):
        r = next(rounds)
        return [{"iops": iops_per_round[r], "p50_us": 10.0 + r, "cpu": cpu(disturber[r])}
                for _ in tests]
    return bench_lib.Side(label, run)

recorder = bench_lib.Recorder(sys.argv[2], {"commit": "abc1234", "date": "today"})
recorder.begin_section("thin", "today")
rows = bench_lib.compare(
    recorder, "thin", [{"name": "randread 4 KiB QD64", "workload": "randread", "qd": 64}],
    [side("raw", [100.0, 300.0, 200.0, 250.0, 150.0], [0, 0, 0, 0, 0]),
     side("thin", [90.0, 240.0, 200.0, 225.0, 150.0], [0, 6.5, 0, 0, 0])],
    5, ratios=[("thin", "raw")])
row = rows[0]
raw, thin = row["sides"]
assert raw["summary"]["iops"] == {"median": 200.0, "min": 100.0, "max": 300.0}, raw["summary"]
assert thin["summary"]["iops"]["median"] == 200.0, thin["summary"]
ratio = row["ratios"][0]
assert ratio["median"] == 1.0 and ratio["min"] == 0.8 and ratio["max"] == 1.0, ratio
# Only the user-space process above 5 % of a core marks a run; kernel threads are listed only.
assert [(d["side"], d["round"]) for d in row["disturbed"]] == [("thin", 1)], row["disturbed"]
assert row["disturbed"][0]["by"][0]["comm"] == "rustc"
with open(sys.argv[2]) as f:
    saved = json.load(f)
assert saved["rows"][0]["name"] == "randread 4 KiB QD64"

md = "# B\n<!-- bench:thin -->\nold\n<!-- /bench:thin -->\ntail\n"
tables = bench_tables.tables(saved)
out, found = bench_tables.splice(md, "thin", tables["thin"])
assert found and "old" not in out and out.endswith("<!-- /bench:thin -->\ntail\n"), out
assert "**1.00** (0.80–1.00)" in out, out
assert "**1 of 10 runs** (rustc 6 %" in out, out

# spdk_nvme_perf's report as its printf formats write it (app/spdk_nvme_perf/perf.c).
import bench_nvmf
perf = (
    "========================================================\n"
    "                                                                           Laten"
    "cy(us)\n"
    "Device Information                                     :       IOPS      MiB/s  "
    "  Average        min        max\n"
    "TCP  (addr:127.0.0.1 subnqn:nqn.2016-06.io.spdk:bench) NSID 1 from core  1:   63"
    "420.00     247.73      15.75      14.05    5757.12\n"
    "========================================================\n"
    "Total                                                  :   63420.00     247.73  "
    "    15.75      14.05    5757.12\n"
    "\n"
    "Summary latency data for TCP  (addr:127.0.0.1 subnqn:nqn.2016-06.io.spdk:bench) "
    "NSID 1  from core 1:\n"
    "================================================================================"
    "=\n"
    "  1.00000% :    14.470us\n"
    " 50.00000% :    15.065us\n"
    " 99.00000% :    22.154us\n"
    " 99.90000% :    62.622us\n"
    " 99.99000% :   500.000us\n"
)
figures = bench_nvmf.perf_figures(perf)
assert figures["iops"] == 63420.0 and figures["avg_us"] == 15.75, figures
assert (figures["p50_us"], figures["p99_us"], figures["p999_us"]) == (15.065, 22.154, 62.622)
print("harness ok")
"##;

#[test]
fn the_harness_computes_medians_spreads_and_disturbance() {
    let Some(python) = python() else { return };
    let dir = Scratch::new("bench_scripts");
    for file in std::fs::read_dir(Path::new(ROOT).join("ci")).expect("ci/") {
        let path = file.expect("entry").path();
        if path.extension().is_some_and(|e| e == "py") {
            // Compiled into the scratch directory, not next to the sources.
            run(Command::new(python)
                .env("PYTHONPYCACHEPREFIX", dir.path("pycache"))
                .args(["-m", "py_compile"])
                .arg(&path));
        }
    }
    let results = dir.path("results.json");
    let out = run(Command::new(python)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-c", HARNESS_CHECK, ROOT])
        .arg(&results));
    assert!(out.contains("harness ok"), "{out}");
}
