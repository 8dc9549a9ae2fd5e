"""The sides ci/bench.py compares, one factory per tool: our `perf`, fio, SPDK's `bdevperf` in
RPC mode, and clients (fio's nbd engine, `qemu-img bench`) of an NBD export served by thin_tgt.

Every side's `run(tests)` takes the list of tests of a comparison (dicts of workload, queue
depth, IO size) and returns one figures dict per test, each with the CpuWatch figures of the
process that ran it under "cpu". Our perf runs one process per test (a fresh RAM disk, prefilled
when asked); bdevperf runs one process for all the tests of a round (after its write pass), as a
user of `-z` does. Every measured process is pinned to core 0; clients of a server run on core 1.
"""

import json
import os
import shutil
import subprocess

from bench_lib import (
    CpuWatch,
    Daemon,
    fio_figures,
    perf_figures,
    rpc_client,
    run_command,
    spdk_latency_summary,
    wait_for,
    wait_rpc,
)

MIB = 1 << 20
GIB = 1 << 30
BLOCK = 4096


def bdev_config(entries, extra_subsystems=()):
    return {
        "subsystems": [{"subsystem": "bdev", "config": list(entries)}, *extra_subsystems]
    }


def malloc(name, size_bytes):
    return {
        "method": "bdev_malloc_create",
        "params": {"name": name, "num_blocks": size_bytes // BLOCK, "block_size": BLOCK},
    }


def null(name, size_bytes):
    return {
        "method": "bdev_null_create",
        "params": {"name": name, "num_blocks": size_bytes // BLOCK, "block_size": BLOCK},
    }


def uring(name, filename):
    return {
        "method": "bdev_uring_create",
        "params": {"name": name, "filename": filename, "block_size": BLOCK},
    }


def pool(bdev, name="pool0", block_bytes=65536, discard="passdown"):
    return {
        "method": "bdev_thin_pool_create",
        "params": {
            "bdev_name": bdev,
            "pool_name": name,
            "data_block_size": block_bytes,
            "discard": discard,
        },
    }


def volume(size_bytes, pool_name="pool0", name="vol0"):
    return {
        "method": "bdev_thin_create",
        "params": {"pool_name": pool_name, "volume_name": name, "size_in_mib": size_bytes // MIB},
    }


class Tools:
    """Paths and settings shared by every side."""

    def __init__(self, root, work, seconds, spdk_dir=None):
        self.root = root
        self.work = work
        self.seconds = seconds
        self.perf = os.path.join(root, "target/release/perf")
        self.thin_tgt_bin = os.path.join(root, "target/release/thin_tgt")
        self.spdk_dir = spdk_dir
        self.working_set_bytes = GIB
        self.counter = 0

    def path(self, name):
        self.counter += 1
        return os.path.join(self.work, f"{self.counter:04d}-{name}")

    def write_config(self, name, config):
        path = self.path(name + ".json")
        with open(path, "w") as f:
            json.dump(config, f)
        return path

    # ---- our perf ----

    def perf_side(self, label, config, target=None, prefill=False, flags=(), keep_buckets=False,
                  cores="0x1", before=None, rate_of_bytes=None):
        """perf --no-park, one process per test. `before` runs (unmeasured) before each;
        `rate_of_bytes`: the run is a prefill pass alone (-t 0) over that many bytes, and its
        rate is that pass's IOs over its time (perf's runtime covers the pass and its flush)."""
        config_path = self.write_config(label.replace(" ", "_"), config)

        def run(tests):
            out = []
            for test in tests:
                if before:
                    before()
                results = self.path("perf-results.json")
                argv = [
                    self.perf, "-c", config_path, "-m", cores, "--no-park",
                    "-q", str(test["qd"]), "-o", str(test["io_size"]), "-w", test["workload"],
                    "-t", str(test.get("seconds", self.seconds)), "--json-results", results,
                    *flags,
                ]
                if target:
                    argv += ["-T", target]
                if prefill or test.get("prefill"):
                    argv.append("--prefill")
                _, _, cpu, _ = run_command(argv, timeout_s=600)
                figures = perf_figures(results, keep_buckets or test.get("keep_buckets", False))
                if rate_of_bytes:
                    ios = rate_of_bytes // test["io_size"]
                    figures["iops"] = ios / figures["runtime_s"]
                    figures["mibps"] = rate_of_bytes / MIB / figures["runtime_s"]
                    for key in ("avg_us", "p50_us", "p99_us", "p999_us"):
                        figures.pop(key, None)
                figures["cpu"] = cpu
                out.append(figures)
            return out

        return run

    # ---- fio ----

    def fio_side(self, base_args, cpus="0", servers=()):
        """fio with the test's workload, depth and size; JSON output with total-latency
        percentiles. Against a server (an NBD export), the server is measured with it."""

        def run(tests):
            out = []
            for test in tests:
                argv = [
                    "fio", "--name=bench", "--output-format=json", "--lat_percentiles=1",
                    f"--cpus_allowed={cpus}", f"--rw={test['workload']}",
                    f"--bs={test['io_size']}", f"--iodepth={test['qd']}",
                    *base_args,
                ]
                if test.get("time_based", True):
                    argv += ["--time_based", f"--runtime={test.get('seconds', self.seconds)}"]
                if servers:
                    argv = ["taskset", "-c", cpus, *argv]
                text, _, cpu, _ = run_command(argv, timeout_s=600,
                                              servers=[d.pid for d in servers])
                figures = fio_figures(text)
                figures["cpu"] = cpu
                out.append(figures)
            return out

        return run

    # ---- SPDK's bdevperf ----

    def spdk_env(self):
        env = dict(os.environ)
        lib = os.path.join(self.spdk_dir, "build/lib")
        if env.get("LD_LIBRARY_PATH"):
            lib += ":" + env["LD_LIBRARY_PATH"]
        env["LD_LIBRARY_PATH"] = lib
        return env

    def spdk_version(self):
        out = subprocess.run(
            [os.path.join(self.spdk_dir, "build/bin/spdk_tgt"), "--version"],
            capture_output=True, text=True, env=self.spdk_env(), check=False,
        )
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[-1] if text else "?"

    def bdevperf_side(self, label, config, target, write_pass=True, setup_rpcs=(),
                      memory_mib=2048, servers=()):
        """SPDK's bdevperf -z on core 0, without hugepages; per round one process: the RPCs of
        `setup_rpcs`, a sequential write pass over the whole bdev (128 KiB, QD32, long enough to
        cover it), then each test through `perform_tests`. Latency percentiles from its `-l`
        summary (a histogram per job, which our perf also keeps). `servers` (daemons: a target
        it is attached to) are measured with it."""
        config_path = self.write_config(label.replace(" ", "_"), config)
        binary = os.path.join(self.spdk_dir, "build/examples/bdevperf")

        def run(tests):
            sock = self.path("bdevperf.sock")
            log = self.path("bdevperf.log")
            argv = [
                binary, "--no-huge", "-s", str(memory_mib), "-u", "-m", "0x1", "-z", "-l",
                "-r", sock, "-c", config_path, "-T", target,
            ]
            daemon = Daemon(argv, log, env=self.spdk_env())
            try:
                wait_rpc(sock, daemon)
                client = rpc_client(sock, timeout_s=600)
                for method, params in setup_rpcs:
                    client.call(method, params)
                coverage = None
                if write_pass:
                    client.call("perform_tests", {"workload_type": "write", "io_size": "131072",
                                                  "queue_depth": 32, "time_in_sec": 2})
                    if "/" in target:
                        # A thin lvol: the write pass must have allocated every cluster.
                        lvol = client.call("bdev_lvol_get_lvols")[0]
                        coverage = lvol["num_allocated_clusters"] * MIB
                        # bdevperf's write pass wraps; short of the size, the reads would find
                        # unallocated clusters.
                        if coverage < self.working_set_bytes:
                            raise RuntimeError(f"bdevperf's write pass allocated {coverage} "
                                               f"bytes of {target} only")
                out = []
                for test in tests:
                    summaries = _summary_count(log)
                    watch = CpuWatch([daemon.pid, *(d.pid for d in servers)]).start()
                    result = client.call("perform_tests", {
                        "workload_type": test["workload"],
                        "io_size": str(test["io_size"]),
                        "queue_depth": test["qd"],
                        "time_in_sec": test.get("seconds", self.seconds),
                    })
                    cpu = watch.stop()
                    job = result["results"][0]
                    figures = {
                        "iops": job["iops"], "mibps": job["mibps"],
                        "avg_us": job["avg_latency_us"], "runtime_s": job["runtime"],
                        "io_failed": job["io_failed"],
                    }
                    # The summary is printed after the RPC's reply.
                    wait_for(lambda: _summary_count(log) > summaries, "bdevperf's summary", 30)
                    with open(log) as f:
                        figures.update(spdk_latency_summary(f.read()))
                    figures["cpu"] = cpu
                    if coverage is not None:
                        figures["write_pass_allocated_bytes"] = coverage
                    out.append(figures)
                return out
            finally:
                daemon.stop()

        return run

    # ---- thin_tgt with NBD exports ----

    def thin_tgt(self, name, config):
        """Starts thin_tgt -m 0x1 (core 0, parking when idle) on `config`; returns the daemon
        and its RPC client."""
        sock = self.path(name + ".sock")
        config_path = self.write_config(name, config)
        daemon = Daemon(
            ["taskset", "-c", "0", self.thin_tgt_bin, "-m", "0x1", "-r", sock, "-c", config_path],
            self.path(name + ".log"),
        )
        wait_rpc(sock, daemon)
        return daemon, rpc_client(sock, timeout_s=600)

    def client_side(self, argv_for, figures_from, servers):
        """A client command on core 1 against servers (daemons measured with it)."""

        def run(tests):
            out = []
            for test in tests:
                argv = ["taskset", "-c", "1", *argv_for(test)]
                text, _, cpu, elapsed = run_command(argv, timeout_s=600,
                                                    servers=[d.pid for d in servers])
                figures = figures_from(test, text, elapsed)
                figures["cpu"] = cpu
                out.append(figures)
            return out

        return run


def _summary_count(log):
    try:
        with open(log) as f:
            return f.read().count("Latency summary")
    except OSError:
        return 0


def qemu_img_bench_figures(test, text, _elapsed):
    """`qemu-img bench` prints 'Run completed in X seconds.'; IOPS from its count."""
    for line in text.splitlines():
        if line.startswith("Run completed in"):
            seconds = float(line.split()[3])
            iops = test["count"] / seconds
            return {"iops": iops, "mibps": iops * test["io_size"] / MIB, "runtime_s": seconds}
    raise RuntimeError(f"qemu-img bench: no result in {text[-500:]}")


def have(tool):
    return shutil.which(tool) is not None
