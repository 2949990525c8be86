"""Draws the charts of ci/redis-bench.sh's run from its CSV: one PNG per figure, kernel and
shim paths side by side. Usage: charts.py RESULTS.csv OUTDIR (Debian's python3-matplotlib)."""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = list(csv.DictReader(open(sys.argv[1])))
out = sys.argv[2]
data = [r for r in rows if r["scenario"] not in ("idle", "syscalls") and r["rps"]]
paths = list(dict.fromkeys(r["path"] for r in data))
scens = list(dict.fromkeys(r["scenario"] for r in data))
tests = list(dict.fromkeys(r["test"] for r in data))


def grouped(metric, test, ylabel, title, fname, scale=1.0):
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(paths))
    for i, p in enumerate(paths):
        vals = []
        for s in scens:
            r = next((r for r in data if r["path"] == p and r["scenario"] == s and r["test"] == test), None)
            vals.append(float(r[metric]) * scale if r else 0)
        ax.bar([x + i * width for x in range(len(scens))], vals, width, label=p)
    ax.set_xticks([x + width * (len(paths) - 1) / 2 for x in range(len(scens))])
    ax.set_xticklabels(scens)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig("%s/%s" % (out, fname), dpi=90)
    plt.close(fig)


t = "get" if "get" in tests else tests[0]
grouped("rps", t, "thousand requests / s", "redis-benchmark %s: throughput by scenario" % t.upper(), "redis-rps.png", 1e-3)
grouped("cpu_us_per_req", t, "server CPU µs / request", "redis-server CPU per %s request (utime+stime / requests)" % t.upper(), "redis-cpu.png")
grouped("p99_ms", t, "p99 latency (ms)", "redis-benchmark %s: p99 latency" % t.upper(), "redis-p99.png")

# Syscalls per request and idle CPU per path.
extra = {(r["path"], r["scenario"]): float(r["cpu_us_per_req"]) for r in rows if r["scenario"] in ("idle", "syscalls")}
if extra:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key, label in ((axes[0], "syscalls", "syscalls / GET (-c 50)"), (axes[1], "idle", "idle CPU (% of a core)")):
        ps = [p for p in paths if (p, key) in extra]
        ax.bar(ps, [extra[(p, key)] for p in ps], color="tab:gray")
        ax.set_title(label)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig("%s/redis-syscalls-idle.png" % out, dpi=90)
    plt.close(fig)
