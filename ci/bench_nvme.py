"""The initiator sections of ci/bench.py (`initiator`; with SPDK_DIR, `initiator spdk` too).

`initiator`: our `perf` over NVMe/TCP on 127.0.0.1 against `thin_tgt`'s target exporting a 1 GiB
malloc bdev, against `perf` on the same malloc bdev in its own process: 4 KiB randread and
randwrite at QD1, QD32 and QD128. One core each side: perf (the initiator) on core 0, the
target on core 1 (`-m 0x2`), measured with it. The remote malloc is written whole once, before
the first run (perf's 64 KiB prefill over the wire); the in-process side prefills likewise.

`initiator spdk` (SPDK_DIR set): the same tests, our `perf` against SPDK's `bdevperf`, both
attached (`bdev_nvme_attach_controller` in their config) to SPDK's `nvmf_tgt` exporting a 1 GiB
malloc bdev, on core 1; both initiators on core 0, alternating. SPDK's apps run without
hugepages (`--no-huge`; `-s 1024` for bdevperf, 2048 for the target, whose 1 GiB malloc and
transport buffers need more); nothing of SPDK is built here.
"""

import os

from bench_lib import Daemon, Side, compare, free_port, perf_figures, run_command, wait_for
from bench_lib import port_open, wait_rpc
from bench_tools import GIB, bdev_config, malloc

NQN = "nqn.2016-06.io.spdk:bench"
QDS = (1, 32, 128)
WORKLOADS = ("randread", "randwrite")


def tests(seconds):
    return [
        {"name": f"{w} 4 KiB QD{qd}", "workload": w, "qd": qd, "io_size": 4096,
         "seconds": seconds}
        for w in WORKLOADS for qd in QDS
    ]


def nvmf_config(port):
    """A target config: a 1 GiB malloc bdev as namespace 1 of NQN on 127.0.0.1:port (the same
    JSON for thin_tgt and SPDK's nvmf_tgt)."""
    listen = {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    return bdev_config(
        [malloc("Malloc0", GIB)],
        [{"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem",
             "params": {"nqn": NQN, "allow_any_host": True, "serial_number": "BENCH0"}},
            {"method": "nvmf_subsystem_add_ns",
             "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}},
            {"method": "nvmf_subsystem_add_listener",
             "params": {"nqn": NQN, "listen_address": listen}},
        ]}],
    )


def attach_config(port):
    """An initiator config: the target's namespace as bdev Nvme0n1 (perf and bdevperf alike)."""
    return bdev_config([{
        "method": "bdev_nvme_attach_controller",
        "params": {"name": "Nvme0", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
                   "trsvcid": str(port), "subnqn": NQN},
    }])


class Target:
    """A target process on core 1 exporting NQN on a free port, measured with each run."""

    def __init__(self, bench, name, argv_for, env=None):
        t = bench.t
        self.port = free_port()
        config = t.write_config(name, nvmf_config(self.port))
        sock = t.path(name + ".sock")
        self.daemon = Daemon(argv_for(config, sock), t.path(name + ".log"), env=env)
        wait_rpc(sock, self.daemon)
        wait_for(lambda: port_open(self.port), f"{name} listening on {self.port}")

    def prefill(self, t):
        """Writes the whole namespace once (64 KiB, QD32) so that reads find written memory."""
        config = t.write_config("nvme_prefill", attach_config(self.port))
        run_command([t.perf, "-c", config, "-T", "Nvme0n1", "-q", "32", "-o", "64k", "-w",
                     "write", "-t", "0", "--prefill"], timeout_s=600)

    def stop(self):
        self.daemon.stop()


def perf_over_nvme(t, target):
    """Our perf on core 0 attached to `target`; the target's CPU counts as measured."""
    config = t.write_config("perf_nvme", attach_config(target.port))

    def run(tests_):
        out = []
        for test in tests_:
            results = t.path("perf-results.json")
            argv = [t.perf, "-c", config, "-m", "0x1", "--no-park", "-T", "Nvme0n1",
                    "-q", str(test["qd"]), "-o", str(test["io_size"]), "-w", test["workload"],
                    "-t", str(test.get("seconds", t.seconds)), "--json-results", results]
            _, _, cpu, _ = run_command(argv, timeout_s=600, servers=[target.daemon.pid])
            figures = perf_figures(results, False)
            figures["cpu"] = cpu
            out.append(figures)
        return out

    return run


def initiator_section(bench):
    t = bench.t
    target = Target(bench, "thin_tgt_nvmf",
                    lambda config, sock: [t.thin_tgt_bin, "-m", "0x2", "-r", sock, "-c", config])
    try:
        target.prefill(t)
        compare(
            bench.r, "initiator", tests(bench.args.seconds),
            [Side("in-process", t.perf_side("malloc in-process", bench.raw_malloc(),
                                            prefill=True)),
             Side("NVMe/TCP", perf_over_nvme(t, target))],
            bench.rounds, ratios=[("NVMe/TCP", "in-process")],
        )
    finally:
        target.stop()


def initiator_spdk_section(bench):
    if not bench.spdk:
        print("initiator spdk: SPDK_DIR not set; skipped", flush=True)
        return
    t = bench.t
    nvmf_tgt = os.path.join(t.spdk_dir, "build/bin/nvmf_tgt")
    target = Target(
        bench, "spdk_nvmf_tgt",
        # 1 GiB of malloc and the transport's buffers do not fit in 1024 MiB.
        lambda config, sock: [nvmf_tgt, "--no-huge", "-s", "2048", "-m", "0x2", "-r", sock,
                              "-c", config],
        env=t.spdk_env(),
    )
    try:
        target.prefill(t)
        bdevperf = t.bdevperf_side("bdevperf nvme", attach_config(target.port), "Nvme0n1",
                                   write_pass=False, memory_mib=1024, servers=[target.daemon])
        compare(
            bench.r, "initiator spdk", tests(bench.args.seconds),
            [Side("perf", perf_over_nvme(t, target)), Side("bdevperf", bdevperf)],
            bench.rounds, ratios=[("perf", "bdevperf")],
        )
    finally:
        target.stop()
