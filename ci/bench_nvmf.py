"""The NVMe-oF/TCP section of ci/bench.py: SPDK's `spdk_nvme_perf` (the initiator, on core 1)
over NVMe/TCP on 127.0.0.1 against our `thin_tgt` and, alternating, SPDK's own `nvmf_tgt` (each
the target on core 0), both exporting a 1 GiB malloc bdev of 4 KiB blocks made by the same JSON
config and configured with the same stock `spdk-rpc nvmf_*` commands; and our thin volume (1 GiB
on a 1.25 GiB malloc base) behind our target against the malloc behind it.

Each side, each round: one target process, the nvmf commands, one sequential write pass over the
whole namespace (128 KiB, QD32, exactly one pass: reads then move real data, and every block of
the thin volume is mapped), then every test, each one `spdk_nvme_perf` process. Target and
initiator are both measured; anything else is watched (bench_lib).
"""

import os
import re
import subprocess

from bench_lib import (
    Daemon,
    Side,
    compare,
    free_port,
    port_open,
    rpc_client,
    run_command,
    wait_for,
    wait_rpc,
)
from bench_tools import GIB, MIB, bdev_config, malloc, pool, volume

NQN = "nqn.2016-06.io.spdk:bench"
SERIAL = "SPDK00000000000001"
WORKING_SET = GIB
THIN_BASE = 1280 * MIB
PREFILL_IO_BYTES = 128 * 1024
# DPDK memory without hugepages (MiB): the 1 GiB malloc bdev and the transport's buffers.
TARGET_MEMORY_MIB = 2048
INITIATOR_MEMORY_MIB = 1024


def spdk_binary(bench, name):
    return os.path.join(bench.args.spdk_dir, "build/bin", name)


def nvmf_commands(bdev, port):
    """The stock `spdk-rpc` commands that export `bdev` on 127.0.0.1:`port`, for either target."""
    return [
        ["nvmf_create_transport", "-t", "TCP"],
        ["nvmf_create_subsystem", NQN, "-a", "-s", SERIAL],
        ["nvmf_subsystem_add_ns", NQN, bdev],
        ["nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-f", "ipv4", "-a", "127.0.0.1",
         "-s", str(port)],
    ]


def transport_id(port):
    return f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}"


def start_target(bench, kind, name, entries):
    """Our thin_tgt or SPDK's nvmf_tgt on core 0 with the bdevs of `entries`; returns (daemon,
    its RPC socket)."""
    t = bench.t
    sock = t.path(name + ".sock")
    config = t.write_config(name, bdev_config(entries))
    log = t.path(name + ".log")
    if kind == "ours":
        argv = ["taskset", "-c", "0", t.thin_tgt_bin, "-m", "0x1", "-r", sock, "-c", config]
        daemon = Daemon(argv, log)
    else:
        argv = ["taskset", "-c", "0", spdk_binary(bench, "nvmf_tgt"), "--no-huge", "-s",
                str(TARGET_MEMORY_MIB), "-m", "0x1", "-r", sock, "-c", config]
        daemon = Daemon(argv, log, env=t.spdk_env())
    wait_rpc(sock, daemon)
    return daemon, sock


def spdk_rpc(bench, sock, args):
    argv = [os.path.join(bench.t.root, ".venv/bin/spdk-rpc"), "-s", sock, *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr}")
    return result.stdout


def perf_argv(bench, port, workload, qd, io_bytes, seconds, ios=None):
    """spdk_nvme_perf on core 1, latency summary on (-L)."""
    argv = ["taskset", "-c", "1", spdk_binary(bench, "spdk_nvme_perf"), "--no-huge", "-s",
            str(INITIATOR_MEMORY_MIB), "-c", "0x2", "-q", str(qd), "-o", str(io_bytes), "-w",
            workload, "-t", str(seconds), "-L", "-r", transport_id(port)]
    if ios:
        argv += ["-d", str(ios)]
    return argv


def perf_figures(text):
    """spdk_nvme_perf's output: the `Total` line (IOPS, MiB/s, average, min, max µs) and the
    percentiles of its `-L` latency summary."""
    total = next((line for line in text.splitlines() if line.startswith("Total")), None)
    if total is None:
        raise RuntimeError(f"spdk_nvme_perf: no Total line in:\n{text[-2000:]}")
    iops, mibps, avg_us, min_us, max_us = (float(x) for x in total.split(":", 1)[1].split())
    figures = {"iops": iops, "mibps": mibps, "avg_us": avg_us, "min_us": min_us,
               "max_us": max_us}
    summary = text.split("Summary latency data", 1)
    if len(summary) == 2:
        found = {float(p): float(us) for p, us in
                 re.findall(r"([0-9.]+)% : +([0-9.]+)us", summary[1])}
        for want, name in ((50.0, "p50_us"), (99.0, "p99_us"), (99.9, "p999_us")):
            at_or_above = [us for p, us in found.items() if p >= want]
            if at_or_above:
                figures[name] = min(at_or_above)
    return figures


def target_side(bench, kind, name, entries, bdev, thin_pool=False):
    """One side: per round a fresh target, the nvmf commands, the write pass, then each test."""

    def run(tests):
        daemon, sock = start_target(bench, kind, name, entries)
        try:
            port = free_port()
            for command in nvmf_commands(bdev, port):
                spdk_rpc(bench, sock, command)
            wait_for(lambda: port_open(port), f"NVMe/TCP port {port}")
            ios = WORKING_SET // PREFILL_IO_BYTES
            run_command(perf_argv(bench, port, "write", 32, PREFILL_IO_BYTES, 600, ios=ios),
                        timeout_s=900, env=bench.t.spdk_env(), servers=[daemon.pid])
            if thin_pool:
                pools = rpc_client(sock).call("bdev_thin_get_pools")
                used = pools[0]["used_data_blocks"] * pools[0]["data_block_size"]
                if used < WORKING_SET:
                    raise RuntimeError(f"the write pass mapped {used} bytes of {WORKING_SET}")
            out = []
            for test in tests:
                argv = perf_argv(bench, port, test["workload"], test["qd"], test["io_size"],
                                 test.get("seconds", bench.args.seconds))
                text, _, cpu, _ = run_command(argv, timeout_s=600, env=bench.t.spdk_env(),
                                              servers=[daemon.pid])
                figures = perf_figures(text)
                figures["cpu"] = cpu
                out.append(figures)
            return out
        finally:
            daemon.stop()

    return run


def nvmf_section(bench):
    if not bench.spdk:
        print("nvmf: SPDK_DIR not set (spdk_nvme_perf and nvmf_tgt come from it); skipped",
              flush=True)
        return
    for name in ("spdk_nvme_perf", "nvmf_tgt"):
        if not os.access(spdk_binary(bench, name), os.X_OK):
            raise RuntimeError(f"nvmf: no build/bin/{name} under SPDK_DIR")
    seconds = bench.args.seconds
    tests = [{"name": f"{w} 4 KiB QD{qd}", "workload": w, "qd": qd, "io_size": 4096,
              "seconds": seconds}
             for w in ("randread", "randwrite") for qd in (1, 32, 128)]
    tests += [{"name": f"{w} 128 KiB QD32", "workload": w, "qd": 32, "io_size": 131072,
               "seconds": seconds} for w in ("read", "write")]
    sides = [
        Side("SPDK nvmf_tgt", target_side(bench, "spdk", "spdk-nvmf",
                                          [malloc("Malloc0", WORKING_SET)], "Malloc0")),
        Side("thin_tgt", target_side(bench, "ours", "ours-nvmf",
                                     [malloc("Malloc0", WORKING_SET)], "Malloc0")),
        Side("thin_tgt thin", target_side(
            bench, "ours", "ours-nvmf-thin",
            [malloc("Malloc0", THIN_BASE), pool("Malloc0"), volume(WORKING_SET)], "pool0/vol0",
            thin_pool=True)),
    ]
    compare(bench.r, "nvmf", tests, sides, bench.rounds,
            ratios=[("thin_tgt", "SPDK nvmf_tgt"), ("thin_tgt thin", "thin_tgt")])
