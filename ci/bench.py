"""Every figure of BENCH.md, by section (ci/bench.sh runs them; see its header for the settings).

Each section builds its comparisons fair by construction: both sides get the same working set
(1 GiB: a raw 1 GiB device against a 1 GiB thin volume on a base of 1.25 GiB, or SPDK's thin lvol
on the same base), block size, queue depth, core (0; clients of a server on 1), prefill and run
length; the sides alternate ROUNDS times (bench_lib.compare). Results go to
docs/bench/results.json (merged: a section run again replaces its rows), the text to stdout.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_lib import (  # noqa: E402
    CpuWatch,
    Daemon,
    Recorder,
    Side,
    compare,
    free_port,
    loadavg,
    pin_harness,
    run_command,
    wait_for,
    wait_rpc,
)
from bench_tools import (  # noqa: E402
    GIB,
    MIB,
    Tools,
    bdev_config,
    have,
    malloc,
    null,
    pool,
    uring,
    volume,
)

WORKING_SET = GIB
THIN_BASE = 1280 * MIB
QDS = (1, 4, 16, 64, 256)


def test(name, workload, qd, io_size=4096, **extra):
    return {"name": name, "workload": workload, "qd": qd, "io_size": io_size, **extra}


def nbd_subsystem(exports, port):
    config = [
        {"method": "nbd_export_add", "params": {"bdev_name": bdev, "export_name": name}}
        for name, bdev in exports
    ]
    config.append(
        {"method": "nbd_server_start", "params": {"listen_address": "127.0.0.1", "port": port}}
    )
    return {"subsystem": "nbd", "config": config}


def dd_zeros(path, size_bytes):
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size_bytes // MIB}",
         "conv=fsync", "status=none"],
        check=True,
    )


def wipe_pool(path):
    """Zeroes the superblocks (blocks 0 and 1, docs/format.md) so the file holds no pool."""
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=1", "conv=notrunc,fsync",
         "status=none"],
        check=True,
    )


class Bench:
    def __init__(self, args, tools, recorder):
        self.args = args
        self.t = tools
        self.r = recorder
        self.rounds = args.rounds
        self.sweep_rounds = args.sweep_rounds
        self.spdk = bool(args.spdk_dir)
        self._files = {}

    # ---- shared devices ----

    def raw_malloc(self):
        return bdev_config([malloc("Malloc0", WORKING_SET)])

    def thin_malloc(self, block_bytes=65536, base=THIN_BASE, discard="passdown"):
        return bdev_config(
            [malloc("Malloc0", base), pool("Malloc0", block_bytes=block_bytes, discard=discard),
             volume(WORKING_SET)]
        )

    def raw_file(self):
        """A 1 GiB file under the repository, written by dd and then by perf's 64 KiB prefill:
        the same history as the thin pool's file below."""
        if "raw" not in self._files:
            path = os.path.join(self.t.work, "raw.img")
            dd_zeros(path, WORKING_SET)
            config = bdev_config([uring("Uring0", path)])
            self._prefill(config, None)
            self._files["raw"] = (path, config)
        return self._files["raw"]

    def thin_file(self):
        """A 1.25 GiB file written by dd, a pool on it and a 1 GiB volume mapped in full by
        perf's 64 KiB prefill; runs reopen it by examine (the config names the file only)."""
        if "thin" not in self._files:
            path = os.path.join(self.t.work, "thin.img")
            dd_zeros(path, THIN_BASE)
            self._prefill(
                bdev_config([uring("Uring0", path), pool("Uring0"), volume(WORKING_SET)]),
                "pool0/vol0",
            )
            self._files["thin"] = (path, bdev_config([uring("Uring0", path)]))
        return self._files["thin"]

    def _prefill(self, config, target):
        argv = [self.t.perf, "-c", self.t.write_config("prefill", config), "-q", "32", "-o",
                "64k", "-w", "write", "-t", "0", "--prefill"]
        if target:
            argv += ["-T", target]
        run_command(argv, timeout_s=600)

    # ---- sections ----

    def foundation(self):
        t = self.t
        null_config = bdev_config([null("Null0", WORKING_SET)])
        compare(
            self.r, "foundation", [test("null randread 4 KiB QD128", "randread", 128)],
            [Side("perf", t.perf_side("perf null", null_config)),
             Side("fio", t.fio_side(["--ioengine=null", "--size=1g"]))],
            self.rounds, ratios=[("perf", "fio")],
        )
        compare(
            self.r, "foundation",
            [test("malloc randread 4 KiB QD64 per core", "randread", 64)],
            [Side("1 core", t.perf_side("one core", self.raw_malloc(), prefill=True)),
             Side("2 cores", t.perf_side("two cores", self.raw_malloc(), prefill=True,
                                         cores="0x3", flags=("-C",)))],
            self.rounds, ratios=[("2 cores", "1 core")],
        )
        compare(
            self.r, "foundation", [{"name": "idle thin_tgt -m 0x3, CPU"}],
            [Side("parking", self.idle_daemon(park=True)),
             Side("--no-park", self.idle_daemon(park=False))],
            self.sweep_rounds, key="cpu_pct",
        )

    def idle_daemon(self, park):
        def run(tests):
            out = []
            for _ in tests:
                sock = self.t.path("idle.sock")
                argv = [self.t.thin_tgt_bin, "-m", "0x3", "-r", sock]
                if not park:
                    argv.append("--no-park")
                daemon = Daemon(argv, self.t.path("idle.log"))
                try:
                    wait_rpc(sock, daemon)
                    watch = CpuWatch([daemon.pid]).start()
                    time.sleep(self.args.seconds)  # the interval measured, not a wait
                    cpu = watch.stop()
                finally:
                    daemon.stop()
                out.append({"cpu_pct": cpu["measured_cpu_pct"], "cpu": cpu})
            return out

        return run

    def spdk_section(self):
        if not self.spdk:
            print("spdk: SPDK_DIR not set; skipped", flush=True)
            return
        t = self.t
        null_config = bdev_config([null("Null0", WORKING_SET)])
        compare(
            self.r, "spdk", [test("null randread 4 KiB QD128", "randread", 128)],
            [Side("perf", t.perf_side("perf null", null_config)),
             Side("bdevperf", t.bdevperf_side("bdevperf null", null_config, "Null0",
                                              write_pass=False))],
            self.rounds, ratios=[("perf", "bdevperf")],
        )
        print("spdk: malloc and thin lvol side by side are rows of the sweep", flush=True)

    def malloc_sides(self, prefill, spdk, keep_buckets=False):
        t = self.t
        sides = [
            Side("raw", t.perf_side("raw malloc", self.raw_malloc(), prefill=prefill,
                                    keep_buckets=keep_buckets)),
            Side("thin", t.perf_side("thin malloc", self.thin_malloc(), target="pool0/vol0",
                                     prefill=prefill, keep_buckets=keep_buckets)),
        ]
        if spdk and self.spdk:
            sides.append(Side("SPDK malloc", t.bdevperf_side(
                "bdevperf malloc", self.raw_malloc(), "Malloc0")))
            sides.append(Side("SPDK lvol", t.bdevperf_side(
                "bdevperf lvol", bdev_config([malloc("Malloc0", THIN_BASE)]), "lvs0/lvol0",
                setup_rpcs=[
                    ("bdev_lvol_create_lvstore",
                     {"bdev_name": "Malloc0", "lvs_name": "lvs0", "cluster_sz": MIB}),
                    ("bdev_lvol_create",
                     {"lvol_name": "lvol0", "size_in_mib": WORKING_SET // MIB,
                      "thin_provision": True, "lvs_name": "lvs0"}),
                ])))
        return sides

    def uring_sides(self, keep_buckets=False, fio=False):
        t = self.t
        raw_path, raw_config = self.raw_file()
        _, thin_config = self.thin_file()
        sides = [
            Side("raw", t.perf_side("raw uring", raw_config, keep_buckets=keep_buckets)),
            Side("thin", t.perf_side("thin uring", thin_config, target="pool0/vol0",
                                     keep_buckets=keep_buckets)),
        ]
        if fio:
            sides.append(Side("fio", t.fio_side(
                [f"--filename={raw_path}", "--ioengine=io_uring", "--direct=1"])))
        return sides

    def thin(self):
        t = self.t
        compare(
            self.r, "thin",
            [test("malloc randwrite 4 KiB QD64, fresh (provisions 64 KiB blocks, zeroing)",
                  "randwrite", 64)],
            self.malloc_sides(prefill=False, spdk=False), self.rounds, ratios=[("thin", "raw")],
        )
        raw_path, raw_config = self.raw_file()
        fresh = os.path.join(t.work, "fresh.img")
        dd_zeros(fresh, THIN_BASE)
        compare(
            self.r, "thin",
            [test("uring O_DIRECT randwrite 4 KiB QD64, fresh (provisioning)", "randwrite", 64)],
            [Side("raw", t.perf_side("raw uring", raw_config)),
             Side("thin", t.perf_side(
                 "fresh uring", bdev_config([uring("Uring0", fresh), pool("Uring0"),
                                             volume(WORKING_SET)]),
                 target="pool0/vol0", before=lambda: wipe_pool(fresh)))],
            self.rounds, ratios=[("thin", "raw")],
        )
        os.remove(fresh)
        compare(
            self.r, "thin", [test("thin malloc randread 4 KiB QD64 per core, mapped",
                                  "randread", 64)],
            [Side("1 core", t.perf_side("thin one core", self.thin_malloc(), target="pool0/vol0",
                                        prefill=True)),
             Side("2 cores", t.perf_side("thin two cores", self.thin_malloc(),
                                         target="pool0/vol0", prefill=True, cores="0x3",
                                         flags=("-C",)))],
            self.rounds, ratios=[("2 cores", "1 core")],
        )

    def sweep(self):
        """4 KiB random IO against queue depth on one core: randread at every depth, randwrite
        at 1 and 64. The depths 1 and 64 are the ratio rows of BENCH.md (ROUNDS runs each,
        latency histograms kept at depth 1); the others feed the plots (SWEEP_ROUNDS runs)."""
        seconds = self.args.sweep_seconds
        ratio_tests = [
            test(f"{w} 4 KiB QD{qd}", w, qd, seconds=seconds, keep_buckets=qd == 1)
            for w in ("randread", "randwrite") for qd in (1, 64)
        ]
        plot_tests = [test(f"randread 4 KiB QD{qd}", "randread", qd, seconds=seconds)
                      for qd in QDS if qd not in (1, 64)]
        malloc_ratios = [("thin", "raw")]
        if self.spdk:
            malloc_ratios += [("raw", "SPDK malloc"), ("thin", "SPDK lvol"),
                              ("SPDK lvol", "SPDK malloc")]
        for section, sides, ratios in (
            ("sweep malloc", self.malloc_sides(prefill=True, spdk=True), malloc_ratios),
            ("sweep uring", self.uring_sides(fio=True), [("thin", "raw"), ("raw", "fio")]),
        ):
            compare(self.r, section, ratio_tests, sides, self.rounds, ratios=ratios)
            compare(self.r, section, plot_tests, sides, self.sweep_rounds, ratios=ratios)

    def large(self):
        s = self.args.sweep_seconds
        tests = [test(f"{w} {size // 1024} KiB QD8", w, 8, size, seconds=s)
                 for w in ("read", "write") for size in (131072, MIB)]
        compare(self.r, "large malloc", tests, self.malloc_sides(prefill=True, spdk=False),
                self.sweep_rounds, ratios=[("thin", "raw")], key="mibps")
        compare(self.r, "large uring", tests, self.uring_sides(), self.sweep_rounds,
                ratios=[("thin", "raw")], key="mibps")

    def provision(self):
        """Every IO a new block: perf's prefill pass (-t 0) over a fresh volume, IO size = the
        pool's block size, against the same pass over the raw device."""
        t = self.t
        for block in (65536, 4096):
            compare(
                self.r, "provision",
                [test(f"malloc, {block // 1024} KiB blocks, sequential {block // 1024} KiB writes",
                      "write", 32, block, seconds=0, prefill=True)],
                [Side("raw", t.perf_side("raw malloc", self.raw_malloc(),
                                         rate_of_bytes=WORKING_SET)),
                 Side("thin", t.perf_side("thin malloc", self.thin_malloc(block_bytes=block),
                                          target="pool0/vol0", rate_of_bytes=WORKING_SET))],
                self.sweep_rounds, ratios=[("thin", "raw")],
            )
        raw_path, raw_config = self.raw_file()
        fresh = os.path.join(t.work, "provision.img")
        dd_zeros(fresh, THIN_BASE)
        compare(
            self.r, "provision",
            [test("uring file, 64 KiB blocks, sequential 64 KiB writes", "write", 32, 65536,
                  seconds=0, prefill=True)],
            [Side("raw", t.perf_side("raw uring", raw_config, rate_of_bytes=WORKING_SET)),
             Side("thin", t.perf_side(
                 "thin uring", bdev_config([uring("Uring0", fresh), pool("Uring0"),
                                            volume(WORKING_SET)]),
                 target="pool0/vol0", rate_of_bytes=WORKING_SET,
                 before=lambda: wipe_pool(fresh)))],
            self.sweep_rounds, ratios=[("thin", "raw")],
        )
        os.remove(fresh)

    # ---- NBD sections (bench_nbd.py) ----

    def nbd(self):
        import bench_nbd

        bench_nbd.nbd_section(self)

    def passdown(self):
        import bench_nbd

        bench_nbd.passdown_section(self)

    def fua(self):
        import bench_nbd

        bench_nbd.fua_section(self)

    def cow(self):
        import bench_nbd

        bench_nbd.cow_section(self)

    # ---- NVMe-oF/TCP (bench_nvmf.py) ----

    def nvmf(self):
        import bench_nvmf

        bench_nvmf.nvmf_section(self)


# Sections whose rows are kept apart by device.
SPLIT = ("sweep", "large", "fua", "cow")
SECTIONS = ("foundation", "spdk", "sweep", "large", "thin", "provision", "passdown",
            "fua", "cow", "nbd", "nvmf")


def machine_meta(root, spdk_dir, tools):
    def sh(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=root).stdout.strip()
        except OSError:
            return "?"

    meta = {
        "commit": sh("git", "rev-parse", "--short", "HEAD"),
        "commit_subject": sh("git", "log", "-1", "--format=%s"),
        # Changes to what is measured; the outputs of this very run do not count.
        "dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                         ":!docs/bench", ":!BENCH.md")),
        "kernel": platform.release(),
        "cores": os.cpu_count(),
        "rustc": sh("rustc", "--version"),
        "fio": sh("fio", "--version"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if spdk_dir:
        meta["spdk"] = tools.spdk_version()
        meta["spdk_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=spdk_dir
        ).stdout.strip()
    return meta


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default all)")
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", 5)))
    parser.add_argument("--sweep-rounds", type=int,
                        default=int(os.environ.get("SWEEP_ROUNDS", 3)))
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("SECONDS_PER_RUN", 2)))
    parser.add_argument("--sweep-seconds", type=int,
                        default=int(os.environ.get("SWEEP_SECONDS", 1)))
    parser.add_argument("--spdk-dir", default=os.environ.get("SPDK_DIR") or None)
    parser.add_argument("--results", default="docs/bench/results.json")
    parser.add_argument("--work", default=".bench")
    args = parser.parse_args()
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    sections = args.sections or list(SECTIONS)

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(root)
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    work = os.path.abspath(args.work)
    # The harness and its sampler stay off core 0, where every measured process runs.
    pin_harness({1} if os.cpu_count() > 1 else {0})
    tools = Tools(root, work, args.seconds, args.spdk_dir)
    meta = machine_meta(root, args.spdk_dir, tools)
    recorder = Recorder(args.results, meta)
    bench = Bench(args, tools, recorder)
    print(f"bench: commit {meta['commit']}{' (dirty)' if meta['dirty'] else ''}, "
          f"{meta['cores']} cores, kernel {meta['kernel']}, load {loadavg()}, "
          f"sections {' '.join(sections)}", flush=True)
    started_all = time.monotonic()
    try:
        for section in sections:
            started = time.monotonic()
            names = [f"{section} malloc", f"{section} uring"] if section in SPLIT else [section]
            for name in names:
                recorder.begin_section(name, meta["date"])
            getattr(bench, "spdk_section" if section == "spdk" else section)()
            for name in names:
                recorder.end_section(name, time.monotonic() - started)
            print(f"bench: {section} took {time.monotonic() - started:.0f} s", flush=True)
    finally:
        Daemon.kill_all()
        for name in os.listdir(work):
            path = os.path.join(work, name)
            if os.path.isfile(path) or os.path.islink(path):
                os.remove(path)
    print(f"bench: {len(sections)} sections in {time.monotonic() - started_all:.0f} s; "
          f"load {loadavg()}; results in {args.results}", flush=True)


if __name__ == "__main__":
    main()
