"""The measuring harness of ci/bench*.sh: runs each side of a comparison pinned alike, alternating,
watches every other process's CPU use from /proc while it runs, and keeps the figures as JSON.

Fairness is built in rather than left to each section: a `Row` holds the sides of one comparison
(same working set, block size, queue depth, core, prefill and run length, by construction of the
section that makes it), `compare` runs them in turn ROUNDS times (A B A B ...), and every figure
reported is the median of its runs with their min and max; a ratio's spread is the min and max of
the ratios of the adjacent runs of one round. A run is *disturbed* when any other user-space
process took more than 5 % of a core while it ran; the load average before each row is kept.

Standard library only: it runs in the repository's .venv, whose only extra packages are SPDK's
RPC client (for thin_tgt and bdevperf) and matplotlib (for ci/bench_plot.py).
"""

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Another process above this share of one core during a run marks the run disturbed.
DISTURBED_PCT = 5.0
# Processes listed per run: those above this share of one core.
LISTED_PCT = 0.5
SAMPLE_PERIOD_S = 0.25
PF_KTHREAD = 0x00200000


def read_processes():
    """{pid: (comm, ppid, cpu_ticks, is_kernel_thread)} of every process now."""
    processes = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        close = data.rindex(")")
        comm = data[data.index("(") + 1 : close]
        fields = data[close + 2 :].split()
        # After comm: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        # utime stime (proc(5) fields 3..15).
        ppid, flags = int(fields[1]), int(fields[6])
        ticks = int(fields[11]) + int(fields[12])
        processes[int(name)] = (comm, ppid, ticks, bool(flags & PF_KTHREAD))
    return processes


def read_cpu_ticks():
    """(busy, steal) ticks of all CPUs together, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


class CpuWatch:
    """Samples every process's CPU time while a run goes on (a thread of the harness, pinned away
    from the measured core). Processes seen at the first sample count from there; processes that
    appear later count from zero, so anything that ran at least one sample period is seen."""

    def __init__(self, measured_pids=()):
        self.measured = set(measured_pids)
        self.roots = set(measured_pids)
        self.first = {}
        self.last = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def add_measured(self, pid):
        self.roots.add(pid)
        self.measured.add(pid)

    def _sample(self):
        now = read_processes()
        for pid, entry in now.items():
            if pid not in self.first:
                self.first[pid] = entry if self.started is None else (*entry[:2], 0, entry[3])
            self.last[pid] = entry
            # Children of measured processes (fio's job processes, a shell's command) are
            # measured too.
            if entry[1] in self.measured:
                self.measured.add(pid)

    def _loop(self):
        while not self.stop_event.wait(SAMPLE_PERIOD_S):
            self._sample()

    def start(self):
        self.started = None
        self.wall_start = time.monotonic()
        self.cpu_start = read_cpu_ticks()
        self._sample()
        self.started = True
        self.thread.start()
        return self

    def stop(self):
        self._sample()
        self.stop_event.set()
        self.thread.join()
        wall_s = max(time.monotonic() - self.wall_start, 1e-3)
        busy, steal = read_cpu_ticks()
        own = os.getpid()
        pct = {}
        for pid, (comm, ppid, ticks, kernel) in self.last.items():
            used = ticks - self.first[pid][2]
            if used > 0:
                pct[pid] = (comm, kernel, used / CLK_TCK / wall_s * 100.0)
        measured = sum(p for pid, (_, _, p) in pct.items() if pid in self.measured)
        harness = pct.get(own, ("", False, 0.0))[2]
        others = sorted(
            (
                {"pid": pid, "comm": comm, "kernel": kernel, "cpu_pct": round(p, 1)}
                for pid, (comm, kernel, p) in pct.items()
                if pid not in self.measured and pid != own and p >= LISTED_PCT
            ),
            key=lambda o: -o["cpu_pct"],
        )
        user_others = [o for o in others if not o["kernel"]]
        system_busy = (busy - self.cpu_start[0]) / CLK_TCK / wall_s * 100.0
        return {
            "wall_s": round(wall_s, 3),
            "measured_cpu_pct": round(measured, 1),
            "harness_cpu_pct": round(harness, 1),
            # Busy time of the whole machine not spent by the measured processes or the
            # harness: other processes, kernel threads, interrupts (some of it serves our IO).
            "unaccounted_cpu_pct": round(max(system_busy - measured - harness, 0.0), 1),
            "steal_pct": round((steal - self.cpu_start[1]) / CLK_TCK / wall_s * 100.0, 1),
            "others": others,
            "disturbed": any(o["cpu_pct"] > DISTURBED_PCT for o in user_others),
        }


# The cores the harness may use, taken before pin_harness narrows them: its children get
# every core back (each pins itself as its side asks).
ALL_CORES = os.sched_getaffinity(0)


def pin_harness(cores):
    """Keeps the harness (and its sampling thread) off the measured core."""
    try:
        os.sched_setaffinity(0, cores)
    except OSError:
        pass


def unpin_child():
    os.sched_setaffinity(0, ALL_CORES)


def run_command(argv, timeout_s, env=None, cwd=None, servers=()):
    """Runs argv to its end under a CpuWatch that counts it and `servers` (pids) as measured;
    returns (stdout, stderr, watch figures, wall seconds)."""
    watch = CpuWatch(servers).start()
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=unpin_child,
    )
    watch.add_measured(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        watch.stop()
        raise RuntimeError(f"{argv[0]} did not finish within {timeout_s} s:\n{err[-2000:]}")
    elapsed = time.monotonic() - started
    cpu = watch.stop()
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {proc.returncode}:\n{out[-2000:]}{err[-2000:]}"
        )
    return out, err, cpu, elapsed


# ---- figures from each tool ---------------------------------------------------------------


def perf_figures(path, keep_buckets):
    """One perf --json-results file: the sum over its jobs (one job in every row here)."""
    with open(path) as f:
        results = json.load(f)["results"]
    first = results[0]
    figures = {
        "iops": sum(r["iops"] for r in results),
        "mibps": sum(r["mibps"] for r in results),
        "avg_us": first["avg_latency_us"],
        "p50_us": first["p50_latency_us"],
        "p99_us": first["p99_latency_us"],
        "p999_us": first["p99_9_latency_us"],
        "runtime_s": first["runtime"],
        "io_failed": sum(r["io_failed"] for r in results),
    }
    if keep_buckets:
        figures["latency_buckets"] = first["latency_buckets"]
    return figures


def fio_figures(text, keep_buckets=False):
    """fio --output-format=json (with --lat_percentiles=1): the first job, all directions."""
    job = json.loads(text[text.index("{") :])["jobs"][0]
    iops = mibps = 0.0
    latency = None
    for direction in ("read", "write", "trim"):
        d = job.get(direction) or {}
        if d.get("total_ios", 0) == 0:
            continue
        iops += d["iops"]
        mibps += d["bw_bytes"] / 2**20
        latency = latency or d.get("lat_ns")
    figures = {"iops": iops, "mibps": mibps, "io_failed": job.get("error", 0)}
    if latency:
        pct = latency.get("percentile", {})
        figures["avg_us"] = latency["mean"] / 1000.0
        for key, name in (("50.000000", "p50_us"), ("99.000000", "p99_us"),
                          ("99.900000", "p999_us")):
            if key in pct:
                figures[name] = pct[key] / 1000.0
    return figures


def spdk_latency_summary(text):
    """bdevperf -l prints 'PP.PPPPP% : X.XXXus' lines after each test; the last block's
    p50/p99/p99.9."""
    block = text.rsplit("Latency summary", 1)[-1]
    found = {}
    for pct, us in re.findall(r"([0-9.]+)% : +([0-9.]+)us", block):
        found[float(pct)] = float(us)
    out = {}
    for want, name in ((50.0, "p50_us"), (99.0, "p99_us"), (99.9, "p999_us")):
        if want in found:
            out[name] = found[want]
    return out


# ---- statistics and rows --------------------------------------------------------------------

FIGURES = ("iops", "mibps", "avg_us", "p50_us", "p99_us", "p999_us")


def summarise(runs, key="iops"):
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


class Side:
    """One side of a comparison: a label and `run(tests)`, which performs one run of every test
    and returns their figures (at least the row's key, e.g. `iops`, and "cpu")."""

    def __init__(self, label, run):
        self.label = label
        self.run = run


class Recorder:
    """Collects rows, prints each as it completes and keeps the JSON file current."""

    def __init__(self, path, meta):
        self.path = path
        self.doc = {"meta": meta, "rows": []}
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            self.doc["rows"] = old.get("rows", [])
            self.doc["meta"]["previous_sections"] = old.get("meta", {}).get("sections", {})
        self.doc["meta"]["sections"] = dict(self.doc["meta"].get("previous_sections", {}))
        self.doc["meta"].pop("previous_sections", None)

    def begin_section(self, section, started):
        """A rerun of a section replaces its rows; other sections' rows are kept."""
        self.doc["rows"] = [r for r in self.doc["rows"] if r["section"] != section]
        self.doc["meta"]["sections"][section] = {
            "started": started, "load_before": loadavg(), "commit": self.doc["meta"]["commit"]
        }
        self.save()

    def end_section(self, section, seconds):
        self.doc["meta"]["sections"][section]["seconds"] = round(seconds, 1)
        self.save()

    def add(self, row):
        self.doc["rows"].append(row)
        print(describe(row), flush=True)
        self.save()

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(dump(self.doc))
        os.replace(tmp, self.path)


def dump(doc):
    """The results as JSON with one row per line: compact, yet a rerun's diff shows its rows."""
    rows = ",\n".join(json.dumps(row, separators=(",", ":")) for row in doc["rows"])
    meta = json.dumps(doc["meta"], indent=1)
    return f'{{"meta": {meta},\n"rows": [\n{rows}\n]}}\n'


def compare(recorder, section, tests, sides, rounds, ratios=(), key="iops"):
    """Runs every side on every test, side after side, `rounds` times (A B A B ...), and records
    one row per test. A test is a dict with at least "name" (the row's name) and what the sides
    need (workload, qd, io_size...). `ratios` lists (a, b) label pairs: a/b is the median of a
    over the median of b, its spread the min and max of the per-round ratios."""
    loads = loadavg()
    runs = {side.label: [[] for _ in tests] for side in sides}
    for _ in range(rounds):
        for side in sides:
            for i, figures in enumerate(side.run(tests)):
                runs[side.label][i].append(figures)
    rows = []
    for i, test in enumerate(tests):
        row = {
            "section": section,
            "name": test["name"],
            "test": {k: v for k, v in test.items() if k != "name"},
            "rounds": rounds,
            "load_before": loads,
            "key": key,
            "sides": [],
            "ratios": [],
        }
        for side in sides:
            side_runs = runs[side.label][i]
            summary = {f: summarise(side_runs, f) for f in (*FIGURES, key)}
            # Histograms are kept for the median run only (the one the plots draw).
            by_key = sorted(side_runs, key=lambda run: run.get(key) or 0)
            for run in side_runs:
                if run is not by_key[len(by_key) // 2]:
                    run.pop("latency_buckets", None)
            row["sides"].append({
                "label": side.label,
                "runs": side_runs,
                "summary": {k: v for k, v in summary.items() if v is not None},
            })
        for a, b in ratios:
            xs, ys = runs[a][i], runs[b][i]
            per_round = [x[key] / y[key] for x, y in zip(xs, ys) if y[key]]
            mb = statistics.median(y[key] for y in ys)
            row["ratios"].append({
                "of": [a, b],
                "median": statistics.median(x[key] for x in xs) / mb if mb else None,
                "min": min(per_round, default=None),
                "max": max(per_round, default=None),
            })
        row["disturbed"] = [
            {
                "side": side.label,
                "round": r,
                "by": [o for o in run["cpu"]["others"]
                       if not o["kernel"] and o["cpu_pct"] > DISTURBED_PCT],
            }
            for side in sides
            for r, run in enumerate(runs[side.label][i])
            if run["cpu"]["disturbed"]
        ]
        recorder.add(row)
        rows.append(row)
    return rows


def si(value):
    if value is None:
        return "-"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            scaled = value / scale
            return f"{scaled:.3g}{unit}" if scaled < 100 else f"{scaled:.0f}{unit}"
    return f"{value:.3g}"


def describe(row):
    """The row as text: medians [min-max] of each side, the ratios, load and disturbance."""
    key = row["key"]
    parts = []
    for side in row["sides"]:
        s = side["summary"].get(key)
        if s:
            parts.append(f"{side['label']} {si(s['median'])} [{si(s['min'])}-{si(s['max'])}]")
    text = f"{row['section']}: {row['name']}: " + ", ".join(parts)
    for r in row["ratios"]:
        if r["median"] is not None:
            text += f"; {r['of'][0]}/{r['of'][1]} {r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]"
    others = [
        max((o["cpu_pct"] for o in run["cpu"]["others"] if not o["kernel"]), default=0.0)
        for side in row["sides"]
        for run in side["runs"]
    ]
    steal = max((run["cpu"].get("steal_pct", 0.0) for side in row["sides"]
                 for run in side["runs"]), default=0.0)
    text += (f"  (load {row['load_before'][0]:.2f}, others <= {max(others, default=0):.1f}%, "
             f"steal <= {steal:.0f}%")
    if row["disturbed"]:
        culprits = sorted({o["comm"] for d in row["disturbed"] for o in d["by"]})
        text += f", DISTURBED in {len(row['disturbed'])} runs by {', '.join(culprits)}"
    return text + ")"


# ---- processes the sections start -----------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, what, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Daemon:
    """A server process (thin_tgt, SPDK's bdevperf -z, nbdkit) that a section starts, talks to
    and stops; killed whole (its session) when the harness exits."""

    live = []

    def __init__(self, argv, log_path, env=None):
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=unpin_child,
        )
        self.pid = self.proc.pid
        self.log_path = log_path
        Daemon.live.append(self)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout_s=60.0):
        if self.alive():
            try:
                os.killpg(self.pid, sig)
                self.proc.wait(timeout=timeout_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        if self in Daemon.live:
            Daemon.live.remove(self)
        return self.proc.returncode

    @classmethod
    def kill_all(cls):
        for daemon in list(cls.live):
            daemon.stop(signal.SIGKILL)


def rpc_client(sock, timeout_s=120.0):
    from spdk.rpc.client import JSONRPCClient

    return JSONRPCClient(sock, timeout=timeout_s, log_level="ERROR")


def wait_rpc(sock, daemon, timeout_s=60.0):
    def ready():
        if not daemon.alive():
            with open(daemon.log_path) as f:
                raise RuntimeError(f"{daemon.log_path}: exited at start:\n{f.read()[-3000:]}")
        if not os.path.exists(sock):
            return False
        try:
            rpc_client(sock, 5.0).call("spdk_get_version")
            return True
        except Exception:
            return False

    wait_for(ready, f"RPC on {sock}", timeout_s)
