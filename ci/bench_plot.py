"""Turns docs/bench/results.json (ci/bench.py) into the PNGs of BENCH.md under docs/bench/.

Usage: bench_plot.py [RESULTS.json [OUT_DIR]]. Needs matplotlib (ci/bench.sh installs it into
the repository's .venv). Each figure shows medians; error bars span the min and max of the runs.
A plot whose rows are missing from the results (a section not run) is skipped with a line.
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

COLORS = {
    "raw": "#1f77b4",
    "thin": "#d62728",
    "fio": "#7f7f7f",
    "SPDK malloc": "#2ca02c",
    "SPDK lvol": "#ff7f0e",
    "device": "#7f7f7f",
    "raw (NBD)": "#1f77b4",
    "thin (NBD)": "#d62728",
    "thin, after a snapshot": "#ff7f0e",
    "thin, overwrite": "#d62728",
}
PERCENTILES = (("p50_us", "p50", "-"), ("p99_us", "p99", "--"), ("p999_us", "p99.9", ":"))


def rows_of(doc, section):
    return [r for r in doc["rows"] if r["section"] == section]


def side(row, label):
    return next((s for s in row["sides"] if s["label"] == label), None)


def labels(rows):
    seen = []
    for row in rows:
        for s in row["sides"]:
            if s["label"] not in seen:
                seen.append(s["label"])
    return seen


def stat(row, label, key):
    s = side(row, label)
    return s["summary"].get(key) if s else None


def footer(fig, doc, sections):
    """The run the plotted sections come from: commit, start, load before, disturbed runs."""
    meta = doc["meta"]
    info = [meta["sections"][s] for s in sections if s in meta["sections"]]
    commits = "/".join(sorted({i["commit"] for i in info})) or meta["commit"]
    started = "/".join(sorted({i["started"] for i in info})) or meta["date"]
    loads = "/".join(f"{i['load_before'][0]:.2f}" for i in info) or "?"
    disturbed = sum(len(r["disturbed"]) for s in sections for r in rows_of(doc, s))
    text = (f"commit {commits}, run started {started}, {meta['cores']} cores, load before "
            f"{loads}; runs disturbed by other processes: {disturbed}")
    fig.text(0.01, 0.005, text, fontsize=7, color="#555555")


def save(fig, out_dir, name):
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"bench_plot: {path}")


def plot_sweep(doc, out_dir):
    sections = ("sweep malloc", "sweep uring")
    if not all(rows_of(doc, s) for s in sections):
        return print("bench_plot: no sweep rows; sweep.png skipped")
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for (iops_ax, lat_ax), section in zip(axes, sections):
        rows = sorted((r for r in rows_of(doc, section) if r["test"]["workload"] == "randread"),
                      key=lambda r: r["test"]["qd"])
        qds = [r["test"]["qd"] for r in rows]
        for label in labels(rows):
            color = COLORS.get(label)
            med, lo, hi = [], [], []
            for r in rows:
                s = stat(r, label, "iops")
                med.append(s["median"] / 1e3 if s else float("nan"))
                lo.append((s["median"] - s["min"]) / 1e3 if s else 0)
                hi.append((s["max"] - s["median"]) / 1e3 if s else 0)
            iops_ax.errorbar(qds, med, yerr=[lo, hi], marker="o", capsize=3, label=label,
                             color=color)
            for key, name, style in PERCENTILES:
                values = [(stat(r, label, key) or {}).get("median", float("nan")) for r in rows]
                lat_ax.plot(qds, values, style, marker=".", color=color)
        device = section.split()[-1]
        iops_ax.set_title(f"4 KiB randread, {device}: IOPS (thousands)")
        lat_ax.set_title(f"4 KiB randread, {device}: latency p50 / p99 / p99.9 (µs)")
        for ax in (iops_ax, lat_ax):
            ax.set_xscale("log", base=2)
            ax.set_xticks(qds, [str(q) for q in qds])
            ax.set_xlabel("queue depth (one core)")
            ax.grid(True, which="both", alpha=0.3)
        lat_ax.set_yscale("log")
        iops_ax.set_ylim(bottom=0)
        iops_ax.legend(fontsize=8)
        # One entry per side (its colour) and one per percentile (its line style), where the
        # curves leave room: low latency at deep queues.
        handles = [Line2D([], [], color=COLORS.get(label), label=label) for label in labels(rows)]
        handles += [Line2D([], [], linestyle=style, color="black", label=name)
                    for _, name, style in PERCENTILES]
        lat_ax.legend(handles=handles, fontsize=7, loc="lower right")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    footer(fig, doc, sections)
    save(fig, out_dir, "sweep.png")


def cdf(buckets):
    total = sum(b["count"] for b in buckets)
    xs, ys, seen = [], [], 0
    for b in buckets:
        seen += b["count"]
        xs.append(b["high_us"])
        ys.append(seen / total)
    return xs, ys


def cdf_span(row):
    """From the 0.05th to the 99.99th percentile of the plotted runs: the maxima (a scheduler
    slice, a page fault) would squeeze the body of the curve into a line."""
    lows, highs = [], []
    for s in row["sides"]:
        run = median_run(s)
        if not run.get("latency_buckets"):
            continue
        xs, ys = cdf(run["latency_buckets"])
        lows.append(next(x for x, y in zip(xs, ys) if y >= 0.0005))
        highs.append(next(x for x, y in zip(xs, ys) if y >= 0.9999))
    return (min(lows) / 1.3, max(highs) * 1.3) if lows else (None, None)


def median_run(s, key="iops"):
    """The run whose histogram the harness kept (the median by the row's key)."""
    with_buckets = [r for r in s["runs"] if r.get("latency_buckets")]
    if with_buckets:
        return with_buckets[0]
    runs = sorted(s["runs"], key=lambda r: r.get(key, 0))
    return runs[len(runs) // 2]


def plot_qd1(doc, out_dir):
    """Latency CDFs at queue depth 1 from the sweep's histograms (thin and raw)."""
    sections = ("sweep malloc", "sweep uring")
    qd1 = {s: [r for r in rows_of(doc, s) if r["test"]["qd"] == 1] for s in sections}
    if not all(qd1.values()):
        return print("bench_plot: no QD1 rows in the sweep; qd1_latency.png skipped")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax_row, section in zip(axes, sections):
        for ax, row in zip(ax_row, qd1[section]):
            for s in row["sides"]:
                if s["label"] not in ("raw", "thin"):
                    continue
                run = median_run(s)
                if not run.get("latency_buckets"):
                    continue
                xs, ys = cdf(run["latency_buckets"])
                ax.step(xs, ys, where="post", color=COLORS.get(s["label"]),
                        label=f"{s['label']}: p50 {run['p50_us']:.1f}, p99 {run['p99_us']:.1f}, "
                              f"p99.9 {run['p999_us']:.1f} µs")
            ax.set_xscale("log")
            ax.set_xlim(*cdf_span(row))
            ax.set_ylim(0, 1.001)
            ax.set_title(f"{row['name']}, {section.split()[-1]}: latency CDF (median run)")
            ax.set_xlabel("latency (µs)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    footer(fig, doc, sections)
    save(fig, out_dir, "qd1_latency.png")


def bars(ax, rows, key, scale=1.0, log=False, ratio_of=None):
    """Grouped bars: one group per row, one bar per side; median with min-max whiskers."""
    names = labels(rows)
    width = 0.8 / max(len(names), 1)
    for i, label in enumerate(names):
        xs, med, lo, hi = [], [], [], []
        for j, row in enumerate(rows):
            s = stat(row, label, key)
            if not s:
                continue
            xs.append(j + (i - (len(names) - 1) / 2) * width)
            med.append(s["median"] * scale)
            lo.append((s["median"] - s["min"]) * scale)
            hi.append((s["max"] - s["median"]) * scale)
        ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, label=label,
               color=COLORS.get(label), alpha=0.9)
    ax.set_xticks(range(len(rows)), [wrap(r["name"], 16) for r in rows], fontsize=8)
    if ratio_of:
        for j, row in enumerate(rows):
            ratio = next((r for r in row["ratios"] if r["of"] == list(ratio_of)), None)
            if ratio and ratio["median"]:
                ax.annotate(f"{ratio['median']:.2f}×", (j, 1), xycoords=("data", "axes fraction"),
                            ha="center", va="bottom", fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)


def wrap(text, width=28):
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def plot_pair(doc, out_dir, sections, name, key, ylabel, title, scale=1.0, log=False,
              ratio_of=("thin", "raw")):
    present = [s for s in sections if rows_of(doc, s)]
    if not present:
        return print(f"bench_plot: no rows of {', '.join(sections)}; {name} skipped")
    groups = max(len(rows_of(doc, s)) for s in present)
    width = max(6.5, 1.4 * groups)
    fig, axes = plt.subplots(1, len(present), figsize=(width * len(present), 5.6), squeeze=False)
    for ax, section in zip(axes[0], present):
        bars(ax, rows_of(doc, section), key, scale, log, ratio_of)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {section}" + (f"  ({ratio_of[0]}/{ratio_of[1]} above)"
                                               if ratio_of else ""), fontsize=10, pad=16)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    footer(fig, doc, present)
    save(fig, out_dir, name)


def main():
    results = sys.argv[1] if len(sys.argv) > 1 else "docs/bench/results.json"
    out_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(results)
    with open(results) as f:
        doc = json.load(f)
    plot_sweep(doc, out_dir)
    plot_qd1(doc, out_dir)
    plot_pair(doc, out_dir, ("large malloc", "large uring"), "large.png", "mibps", "MiB/s",
              "sequential large IO, QD8")
    plot_pair(doc, out_dir, ("provision",), "provision.png", "iops",
              "writes per second, thousands (on thin each provisions a block)",
              "every write a new block",
              scale=1e-3, log=True)
    plot_pair(doc, out_dir, ("passdown",), "passdown.png", "iops",
              "64 KiB blocks discarded per second", "passdown vs the device's own discard",
              ratio_of=("thin (NBD)", "device"))
    plot_pair(doc, out_dir, ("fua malloc", "fua uring"), "fua.png", "iops",
              "writes per second (NBD)", "cost of FUA and FLUSH", log=True)
    plot_pair(doc, out_dir, ("cow malloc", "cow uring"), "cow.png", "iops",
              "writes per second (NBD)", "copy-on-write after a snapshot", log=False,
              ratio_of=("thin, after a snapshot", "raw"))


if __name__ == "__main__":
    main()
