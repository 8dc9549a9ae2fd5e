"""Writes BENCH.md's tables from docs/bench/results.json (ci/bench.py): each table replaces the
text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in BENCH.md, so the prose around
them stays hand-written. Every cell is a median with the min and max of its runs; every ratio is
the ratio of the medians with the min and max of the per-round ratios.

Usage: bench_tables.py [RESULTS.json [BENCH.md]]
"""

import json
import re
import sys


def num(value, unit=""):
    """Three significant digits: 769 k, 1.18 M, 92.5 k, 616."""
    if value is None:
        return "-"
    suffix, scaled = "", value
    for name, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            suffix, scaled = f" {name}", value / scale
            break
    digits = 0 if abs(scaled) >= 100 else 1 if abs(scaled) >= 10 else 2
    if not suffix and float(scaled).is_integer():
        digits = 0
    return f"{scaled:.{digits}f}{suffix}{unit}"


def cell(side, key, unit=""):
    if side is None or key not in side["summary"]:
        return "-"
    s = side["summary"][key]
    return f"{num(s['median'], unit)} ({num(s['min'])}–{num(s['max'])})"


def ratio_cell(row, a, b):
    r = next((r for r in row["ratios"] if r["of"] == [a, b]), None)
    if not r or r["median"] is None:
        return "-"
    return f"**{r['median']:.2f}** ({r['min']:.2f}–{r['max']:.2f})"


def steal_pct(row):
    """The most CPU time the hypervisor took from this VM in any run of the row (steal, % of
    one core): other guests of the host, which no process list here shows."""
    return max((run["cpu"].get("steal_pct", 0.0) for s in row["sides"] for run in s["runs"]),
               default=0.0)


def disturbed_cell(row):
    runs = sum(len(s["runs"]) for s in row["sides"])
    context = f"load {row['load_before'][0]:.2f}, steal ≤ {steal_pct(row):.0f} %"
    if not row["disturbed"]:
        return f"no ({context})"
    worst = {}
    for d in row["disturbed"]:
        for o in d["by"]:
            worst[o["comm"]] = max(worst.get(o["comm"], 0), o["cpu_pct"])
    who = ", ".join(f"{c} {p:.0f} %" for c, p in sorted(worst.items(), key=lambda x: -x[1]))
    return f"**{len(row['disturbed'])} of {runs} runs** ({who}; {context})"


def side(row, label):
    return next((s for s in row["sides"] if s["label"] == label), None)


def find(doc, section, name):
    return next((r for r in doc["rows"] if r["section"] == section and r["name"] == name), None)


def rows(doc, section):
    return [r for r in doc["rows"] if r["section"] == section]


def table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def pair_table(doc, items, a, b, key="iops", unit="", a_name=None, b_name=None):
    """items: [(what, section, row name)]; columns b, a, a/b."""
    lines = []
    for what, section, name in items:
        row = find(doc, section, name)
        if row is None:
            continue
        lines.append([what, cell(side(row, b), key, unit), cell(side(row, a), key, unit),
                      ratio_cell(row, a, b), disturbed_cell(row)])
    if not lines:
        return None
    return table(["what", b_name or b, a_name or a, f"{a_name or a} / {b_name or b}",
                  "disturbed"], lines)


def section_table(doc, section, key="iops", unit="", ratio=None):
    """Every row of a section: one column per side, then the ratios named (or all)."""
    rs = rows(doc, section)
    if not rs:
        return None
    labels = [s["label"] for s in rs[0]["sides"]]
    ratios = ratio if ratio is not None else [tuple(r["of"]) for r in rs[0]["ratios"]]
    header = ["what", *labels, *[f"{a} / {b}" for a, b in ratios], "disturbed"]
    lines = [[r["name"], *[cell(side(r, label), key, unit) for label in labels],
              *[ratio_cell(r, a, b) for a, b in ratios], disturbed_cell(r)] for r in rs]
    return table(header, lines)


def idle_table(row):
    if row is None:
        return None
    return table(["idle `thin_tgt -m 0x3`", "parking (% of one core)", "`--no-park`",
                  "disturbed"],
                 [["CPU over the run", cell(side(row, "parking"), "cpu_pct"),
                   cell(side(row, "--no-park"), "cpu_pct"), disturbed_cell(row)]])


def nvmf_table(doc):
    """spdk_nvme_perf against SPDK's nvmf_tgt, our thin_tgt (both on malloc) and our thin volume
    behind thin_tgt: IOPS, the two ratios, p99 latency."""
    rs = rows(doc, "nvmf")
    if not rs:
        return None

    def p99(s):
        return num(s["summary"]["p99_us"]["median"]) if s and "p99_us" in s["summary"] else "-"

    lines = []
    for r in rs:
        spdk, ours, thin = (side(r, label) for label in
                            ("SPDK nvmf_tgt", "thin_tgt", "thin_tgt thin"))
        lines.append([r["name"], cell(spdk, "iops"), cell(ours, "iops"),
                      ratio_cell(r, "thin_tgt", "SPDK nvmf_tgt"), cell(thin, "iops"),
                      ratio_cell(r, "thin_tgt thin", "thin_tgt"),
                      f"{p99(spdk)} / {p99(ours)} / {p99(thin)}", disturbed_cell(r)])
    return table(["what", "SPDK nvmf_tgt IOPS", "thin_tgt IOPS", "thin_tgt / SPDK",
                  "thin volume IOPS", "thin volume / malloc", "p99 µs (SPDK / ours / thin)",
                  "disturbed"], lines)


def caption(doc, sections):
    meta = doc["meta"]
    info = [meta["sections"].get(s) for s in sections if meta["sections"].get(s)]
    if not info:
        return ""
    commits = sorted({i["commit"] for i in info})
    loads = ", ".join(f"{i['load_before'][0]:.2f}" for i in info)
    return (f"*Commit `{'`, `'.join(commits)}`, run started {info[0]['started']}; load average "
            f"before each section: {loads}.*\n\n")


def tables(doc):
    out = {}
    out["foundation"] = caption(doc, ["foundation", "sweep uring"]) + "\n\n".join(filter(None, [
        pair_table(doc, [
            ("null, randread 4 KiB QD128: `perf` vs `fio --ioengine=null`", "foundation",
             "null randread 4 KiB QD128"),
        ], "perf", "fio"),
        pair_table(doc, [
            ("uring, O_DIRECT 1 GiB file, randread 4 KiB QD64: `perf` vs `fio --ioengine=io_uring`",
             "sweep uring", "randread 4 KiB QD64"),
            ("same, QD1", "sweep uring", "randread 4 KiB QD1"),
        ], "raw", "fio", a_name="perf"),
        pair_table(doc, [("malloc 1 GiB, randread 4 KiB QD64 per core, `-m 0x3 -C` vs `-m 0x1`",
                          "foundation", "malloc randread 4 KiB QD64 per core")],
                   "2 cores", "1 core"),
        idle_table(find(doc, "foundation", "idle thin_tgt -m 0x3, CPU")),
    ]))
    spdk_items = [
        ("null, randread 4 KiB QD128", "spdk", "null randread 4 KiB QD128", "perf", "bdevperf"),
        ("malloc 1 GiB, randread 4 KiB QD64", "sweep malloc", "randread 4 KiB QD64", "raw",
         "SPDK malloc"),
        ("malloc 1 GiB, randwrite 4 KiB QD64", "sweep malloc", "randwrite 4 KiB QD64", "raw",
         "SPDK malloc"),
        ("thin volume vs thin lvol (1 MiB clusters), randread 4 KiB QD64", "sweep malloc",
         "randread 4 KiB QD64", "thin", "SPDK lvol"),
        ("thin volume vs thin lvol, randwrite 4 KiB QD64", "sweep malloc",
         "randwrite 4 KiB QD64", "thin", "SPDK lvol"),
        ("thin volume vs thin lvol, randread 4 KiB QD1", "sweep malloc",
         "randread 4 KiB QD1", "thin", "SPDK lvol"),
    ]
    lines = []
    for what, section, name, ours, theirs in spdk_items:
        row = find(doc, section, name)
        if row is None or side(row, theirs) is None:
            continue
        lines.append([what, cell(side(row, theirs), "iops"), cell(side(row, ours), "iops"),
                      ratio_cell(row, ours, theirs), disturbed_cell(row)])
    for name in ("randread 4 KiB QD64", "randwrite 4 KiB QD64"):
        row = find(doc, "sweep malloc", name)
        if row is not None and side(row, "SPDK lvol") is not None:
            lines.append([f"thin / raw, {name}: SPDK's lvol / malloc vs our thin / raw",
                          ratio_cell(row, "SPDK lvol", "SPDK malloc"),
                          ratio_cell(row, "thin", "raw"), "", disturbed_cell(row)])
    if not lines:
        out["spdk"] = "*Not measured by the last run of the sweep: `SPDK_DIR` was not set.*"
    else:
        meta = doc["meta"]
        out["spdk"] = (caption(doc, ["spdk", "sweep malloc"])
                       + f"SPDK: `{meta.get('spdk', '?')}` "
                       + f"(commit `{meta.get('spdk_commit', '?')}`)"
                       + "\n\n" + table(["what", "SPDK bdevperf IOPS", "our perf IOPS",
                                          "ours / SPDK", "disturbed"], lines))
    thin_items = [(f"{dev}, {name}", f"sweep {dev}", name) for dev in ("malloc", "uring")
                  for name in ("randread 4 KiB QD64", "randwrite 4 KiB QD64",
                               "randread 4 KiB QD1", "randwrite 4 KiB QD1")]
    thin_items += [(r["name"], "thin", r["name"]) for r in rows(doc, "thin")
                   if side(r, "raw") is not None]
    block = pair_table(doc, thin_items, "thin", "raw")
    if block:
        scaling = pair_table(doc, [(r["name"], "thin", r["name"]) for r in rows(doc, "thin")
                                   if side(r, "2 cores") is not None], "2 cores", "1 core")
        out["thin"] = (caption(doc, ["sweep malloc", "sweep uring", "thin"]) + block
                       + ("\n\n" + scaling if scaling else ""))
    block = nvmf_table(doc)
    if block:
        meta = doc["meta"]
        out["nvmf"] = (caption(doc, ["nvmf"]) + f"SPDK: `{meta.get('spdk', '?')}` "
                       + f"(commit `{meta.get('spdk_commit', '?')}`)\n\n" + block)
    for name, sections, key, unit in (
        ("large", ["large malloc", "large uring"], "mibps", "MiB/s"),
        ("provision", ["provision"], "iops", ""),
        ("passdown", ["passdown"], "iops", ""),
        ("fua", ["fua malloc", "fua uring"], "iops", ""),
        ("cow", ["cow malloc", "cow uring"], "iops", ""),
        ("nbd", ["nbd"], "iops", ""),
        ("initiator", ["initiator", "initiator spdk"], "iops", ""),
    ):
        blocks = []
        for section in sections:
            t = section_table(doc, section, key, unit)
            if t:
                blocks.append((f"**{section}**\n\n" if len(sections) > 1 else "") + t)
        if name == "initiator":
            # IOPS and p99 latency; the recorded ratios are of IOPS, so the latency tables have
            # none.
            for section in sections:
                t = section_table(doc, section, "p99_us", " µs", ratio=[])
                if t:
                    blocks.append(f"**{section}, p99 latency**\n\n" + t)
        if blocks:
            out[name] = caption(doc, sections) + "\n\n".join(blocks)
    return out


def splice(markdown, name, body):
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    if not pattern.search(markdown):
        return markdown, False
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), markdown), True


def main():
    results = sys.argv[1] if len(sys.argv) > 1 else "docs/bench/results.json"
    bench_md = sys.argv[2] if len(sys.argv) > 2 else "BENCH.md"
    with open(results) as f:
        doc = json.load(f)
    with open(bench_md) as f:
        markdown = f.read()
    for name, body in tables(doc).items():
        markdown, found = splice(markdown, name, body)
        print(f"bench_tables: {name}: {'written' if found else 'no marker in ' + bench_md}")
    with open(bench_md, "w") as f:
        f.write(markdown)


if __name__ == "__main__":
    main()
