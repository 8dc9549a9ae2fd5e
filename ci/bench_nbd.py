"""The sections of ci/bench.py that go through thin_tgt's NBD export: fio and nbdkit over NBD,
passdown against the raw device's own discard, the cost of FUA and FLUSH, and copy-on-write
after a snapshot. Servers run on core 0 (`taskset -c 0 thin_tgt -m 0x1`, parking when idle),
clients on core 1; both are measured, anything else is watched.
"""

import json
import os
import statistics
import subprocess

from bench_lib import Daemon, Side, compare, free_port, port_open, run_command, wait_for
from bench_tools import GIB, MIB, bdev_config, have, malloc, pool, uring, volume

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(HERE, "bench_nbd_client.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def nbd_config(entries, exports, port):
    config = bdev_config(entries)
    nbd = [{"method": "nbd_export_add", "params": {"bdev_name": bdev, "export_name": name}}
           for name, bdev in exports]
    nbd.append({"method": "nbd_server_start",
                "params": {"listen_address": "127.0.0.1", "port": port}})
    config["subsystems"].append({"subsystem": "nbd", "config": nbd})
    return config


def start_target(bench, name, entries, exports):
    """thin_tgt on core 0 serving `exports` [(export, bdev)]; returns (daemon, client, uri of
    export)."""
    port = free_port()
    daemon, client = bench.t.thin_tgt(name, nbd_config(entries, exports, port))
    wait_for(lambda: port_open(port), f"NBD port {port}")
    return daemon, client, lambda export: f"nbd://127.0.0.1:{port}/{export}"


def client_run(uri, mode, qd, io_bytes, span_bytes, seconds, step=None, max_ios=None,
               servers=()):
    """One bench_nbd_client.py run on core 1; figures with latency percentiles."""
    argv = ["taskset", "-c", "1", SYSTEM_PYTHON, CLIENT, uri, mode, str(qd), str(io_bytes),
            str(span_bytes), str(seconds)]
    if step:
        argv += [str(step), str(max_ios or 0)]
    text, _, cpu, _ = run_command(argv, timeout_s=600, servers=[d.pid for d in servers])
    result = json.loads(text)
    latencies = sorted(result["latencies_us"])
    iops = result["ios"] / result["seconds"]

    def quantile(q):
        return latencies[min(int(q * len(latencies)), len(latencies) - 1)] if latencies else None

    return {
        "iops": iops,
        "mibps": iops * io_bytes / MIB,
        "avg_us": statistics.fmean(latencies) if latencies else None,
        "p50_us": quantile(0.5),
        "p99_us": quantile(0.99),
        "p999_us": quantile(0.999),
        "ios": result["ios"],
        "cpu": cpu,
    }


def fill(uri, span_bytes, servers):
    """Writes the span once (1 MiB writes, QD16), unmeasured."""
    client_run(uri, "plain", 16, MIB, span_bytes, 600, step=MIB, max_ios=span_bytes // MIB,
               servers=servers)


def fio_nbd(bench, uri, servers, size="1g"):
    return bench.t.fio_side(["--ioengine=nbd", f"--uri={uri}", f"--size={size}"], cpus="1",
                            servers=servers)


# ---- fio and nbdkit over NBD ---------------------------------------------------------------


def nbd_section(bench):
    for tool in ("nbdkit", "taskset"):
        if not have(tool):
            raise RuntimeError(f"nbd: {tool} missing (ci/install.sh)")
    thin_d, _, thin_uri = start_target(
        bench, "nbd-thin", [malloc("Malloc1", 1280 * MIB), pool("Malloc1"), volume(GIB)],
        [("vol0", "pool0/vol0")])
    raw_d, _, raw_uri = start_target(bench, "nbd-raw", [malloc("Malloc0", GIB)],
                                     [("Malloc0", "Malloc0")])
    port = free_port()
    nbdkit = Daemon(["taskset", "-c", "0", "nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port),
                     "memory", "1G"], bench.t.path("nbdkit.log"))
    try:
        wait_for(lambda: port_open(port), "nbdkit")
        peer_uri = f"nbd://127.0.0.1:{port}"
        servers = {"thin": thin_d, "raw": raw_d, "nbdkit": nbdkit}
        uris = {"thin": thin_uri("vol0"), "raw": raw_uri("Malloc0"), "nbdkit": peer_uri}
        for label in uris:  # every block written once: reads move real data on all three
            fill(uris[label], GIB, [servers[label]])
        compare(
            bench.r, "nbd",
            [{"name": f"fio nbd {w} 4 KiB QD32", "workload": w, "qd": 32, "io_size": 4096,
              "seconds": bench.args.sweep_seconds} for w in ("randread", "randwrite")],
            [Side(label, fio_nbd(bench, uris[label], [servers[label]])) for label in uris],
            bench.rounds, ratios=[("thin", "raw"), ("raw", "nbdkit")],
        )
    finally:
        for daemon in (thin_d, raw_d, nbdkit):
            daemon.stop()


# ---- passdown vs the device's own discard --------------------------------------------------

PASSDOWN_SPAN = 32 * MIB


def passdown_section(bench):
    if os.geteuid() != 0 or not have("losetup"):
        print("passdown: needs root and losetup (a loop device); skipped", flush=True)
        return
    image = os.path.join(bench.t.work, "loop.img")
    subprocess.run(["truncate", "-s", str(1280 * MIB), image], check=True)
    loop = subprocess.run(["losetup", "--direct-io=on", "-f", "--show", image],
                          capture_output=True, text=True, check=True).stdout.strip()
    try:
        tests = [{"name": f"64 KiB unmaps of {PASSDOWN_SPAN // MIB} MiB written, QD{qd}",
                  "qd": qd, "io_size": 65536} for qd in (32,)]
        compare(
            bench.r, "passdown", tests,
            [Side("device", device_trim(bench, loop)),
             Side("raw (NBD)", nbd_trim(bench, loop, thin=False)),
             Side("thin (NBD)", nbd_trim(bench, loop, thin=True))],
            bench.sweep_rounds, ratios=[("thin (NBD)", "device"), ("thin (NBD)", "raw (NBD)")],
        )
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
        os.remove(image)


def device_trim(bench, loop):
    """fio --rw=trim on the loop device itself: BLKDISCARD, which punches holes in its file.
    fio discards synchronously, so QD N is N jobs, each on its own 1/N of the span."""

    def run(tests):
        out = []
        for test in tests:
            subprocess.run(["fio", "--name=fill", f"--filename={loop}", "--rw=write", "--bs=1m",
                            f"--size={PASSDOWN_SPAN}", "--direct=1", "--ioengine=libaio",
                            "--iodepth=8", "--output=/dev/null"], check=True)
            jobs = test["qd"]
            argv = ["fio", "--name=trim", "--output-format=json", "--cpus_allowed=0",
                    f"--filename={loop}", "--rw=trim", f"--bs={test['io_size']}",
                    "--ioengine=psync", f"--numjobs={jobs}", f"--size={PASSDOWN_SPAN // jobs}",
                    f"--offset_increment={PASSDOWN_SPAN // jobs}", "--group_reporting",
                    "--lat_percentiles=1"]
            text, _, cpu, _ = run_command(argv, timeout_s=600)
            from bench_lib import fio_figures

            figures = fio_figures(text)
            figures["cpu"] = cpu
            out.append(figures)
        return out

    return run


def nbd_trim(bench, loop, thin):
    """fio --rw=trim over NBD on a fresh thin volume (pool on the loop device, passdown: each
    unmap is acknowledged once its blocks are deallocated on the device) or on the uring bdev
    of the loop device itself; the span is written through NBD first (provisioning it)."""

    def run(tests):
        out = []
        for test in tests:
            if thin:
                from bench import wipe_pool

                wipe_pool(loop)
                entries = [uring("Loop0", loop), pool("Loop0"), volume(GIB)]
                exports = [("vol0", "pool0/vol0")]
            else:
                entries = [uring("Loop0", loop)]
                exports = [("vol0", "Loop0")]
            daemon, client, uri_of = start_target(bench, "passdown", entries, exports)
            try:
                uri = uri_of("vol0")
                fill(uri, PASSDOWN_SPAN, [daemon])
                before = client.call("bdev_thin_get_pools")[0] if thin else None
                side = bench.t.fio_side(["--ioengine=nbd", f"--uri={uri}",
                                         f"--size={PASSDOWN_SPAN}"], cpus="1", servers=[daemon])
                figures = side([{**test, "workload": "trim", "time_based": False}])[0]
                if thin:
                    after = client.call("bdev_thin_get_pools")[0]
                    figures["free_blocks_before"] = before["free_data_blocks"]
                    figures["free_blocks_after"] = after["free_data_blocks"]
                    figures["passdowns"] = (after["passdowns_completed"]
                                            - before["passdowns_completed"])
                out.append(figures)
            finally:
                daemon.stop()
        return out

    return run


# ---- FUA and FLUSH -------------------------------------------------------------------------

FUA_SPAN = 256 * MIB


def fua_section(bench):
    if not os.path.exists(SYSTEM_PYTHON) or subprocess.run(
            [SYSTEM_PYTHON, "-c", "import nbd"], capture_output=True).returncode != 0:
        raise RuntimeError("fua: libnbd's Python binding is missing (apt-get install "
                           "python3-libnbd; ci/bench.sh installs it)")
    raw_path, _ = bench.raw_file()
    thin_path, _ = bench.thin_file()
    entries = [malloc("Malloc0", GIB), malloc("Malloc1", 1280 * MIB),
               pool("Malloc1", name="mpool"), volume(GIB, pool_name="mpool"),
               uring("Uring0", raw_path), uring("Uring1", thin_path)]
    exports = [("raw-malloc", "Malloc0"), ("thin-malloc", "mpool/vol0"),
               ("raw-uring", "Uring0"), ("thin-uring", "pool0/vol0")]
    daemon, _, uri_of = start_target(bench, "fua", entries, exports)
    try:
        fill(uri_of("raw-malloc"), FUA_SPAN, [daemon])
        fill(uri_of("thin-malloc"), FUA_SPAN, [daemon])
        seconds = bench.args.sweep_seconds
        tests = [{"name": f"{label} 4 KiB QD{qd}", "mode": mode, "qd": qd}
                 for qd in (1, 16)
                 for mode, label in (("plain", "write"), ("fua", "write+FUA"),
                                     ("flush", "write, FLUSH"))]

        def side(export):
            return lambda ts: [client_run(uri_of(export), t["mode"], t["qd"], 4096, FUA_SPAN,
                                          seconds, servers=[daemon]) for t in ts]

        for device in ("malloc", "uring"):
            compare(bench.r, f"fua {device}", tests,
                    [Side("raw", side(f"raw-{device}")), Side("thin", side(f"thin-{device}"))],
                    bench.sweep_rounds, ratios=[("thin", "raw")])
    finally:
        daemon.stop()


# ---- copy-on-write -------------------------------------------------------------------------


COW_SPAN = 256 * MIB
COW_PASSES = 4
# The volume's span and a snapshot's copy of it, with room to spare.
COW_BASE = 768 * MIB


def passes(bench, uri, daemon, before_each=None):
    """COW_PASSES fio runs over the span; one figures dict per test: writes over summed time."""
    fio = fio_nbd(bench, uri, [daemon], size=str(COW_SPAN))

    def run(tests):
        out = []
        for test in tests:
            runs = []
            for _ in range(COW_PASSES):
                if before_each:
                    before_each()
                runs.append(fio([test])[0])
            seconds = sum(COW_SPAN // 65536 / r["iops"] for r in runs)
            iops = COW_PASSES * (COW_SPAN // 65536) / seconds
            cpu = max((r["cpu"] for r in runs), key=lambda c: len(c["others"]))
            cpu = {**cpu, "disturbed": any(r["cpu"]["disturbed"] for r in runs),
                   "others": [o for r in runs for o in r["cpu"]["others"]]}
            out.append({"iops": iops, "mibps": iops * test["io_size"] / MIB,
                        "passes_iops": [r["iops"] for r in runs], "cpu": cpu})
        return out

    return run


def cow_section(bench):
    from bench import dd_zeros

    raw_path, _ = bench.raw_file()
    cow_path = os.path.join(bench.t.work, "cow.img")
    dd_zeros(cow_path, COW_BASE)
    # no_passdown: a deleted snapshot's blocks stay written in the file, so every round copies
    # into written extents (passdown would punch holes that the next round fills).
    entries = [malloc("Malloc0", GIB), malloc("Malloc1", COW_BASE),
               pool("Malloc1", name="mpool", discard="no_passdown"),
               volume(GIB, pool_name="mpool"),
               uring("Uring0", raw_path), uring("Uring1", cow_path),
               pool("Uring1", name="upool", discard="no_passdown"),
               volume(GIB, pool_name="upool")]
    exports = [("raw-malloc", "Malloc0"), ("thin-malloc", "mpool/vol0"),
               ("raw-uring", "Uring0"), ("thin-uring", "upool/vol0")]
    daemon, client, uri_of = start_target(bench, "cow", entries, exports)
    try:
        for export in ("raw-malloc", "thin-malloc", "thin-uring"):
            fill(uri_of(export), COW_SPAN, [daemon])
        # fio's "write:60k": 4 KiB writes 64 KiB apart, one per data block of the span. A pass
        # is short (4096 writes), so each run is COW_PASSES passes, the rate their writes over
        # their summed time; on the snapshot side each pass follows a new snapshot.
        test = {"name": f"4 KiB writes 64 KiB apart (one per block) over {COW_SPAN // MIB} MiB, "
                        "QD16", "qd": 16, "workload": "write:60k", "io_size": 4096,
                "time_based": False}
        for device, pool_name in (("malloc", "mpool"), ("uring", "upool")):
            snapshots = []

            def resnapshot(pool_name=pool_name, snapshots=snapshots):
                if snapshots:
                    client.call("bdev_thin_delete", {"name": f"{pool_name}/{snapshots[-1]}"})
                snapshots.append(f"snap{len(snapshots)}")
                client.call("bdev_thin_snapshot", {"name": f"{pool_name}/vol0",
                                                   "snapshot_name": snapshots[-1]})

            compare(bench.r, f"cow {device}", [test],
                    [Side("raw", passes(bench, uri_of(f"raw-{device}"), daemon)),
                     Side("thin, after a snapshot",
                          passes(bench, uri_of(f"thin-{device}"), daemon, resnapshot)),
                     Side("thin, overwrite", passes(bench, uri_of(f"thin-{device}"), daemon))],
                    bench.sweep_rounds,
                    ratios=[("thin, after a snapshot", "raw"), ("thin, overwrite", "raw")])
    finally:
        daemon.stop()
        os.remove(cow_path)
