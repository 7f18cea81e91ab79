#!/usr/bin/python3
# SPDX-License-Identifier: BSL-1.0
"""Turns benchmark JSON files into PNG pictures (Debian's python3-matplotlib).

Each file's "benchmark" field picks the picture:
  vs_pytorch     (benchmarks/run_vs_pytorch.sh)  epoch time, parallax vs PyTorch (and numpy + mpi4py
                                                 in newer files), by process count
  data_parallel  (benchmarks/data_parallel)      step time per configuration, split into
                                                 compute / all-reduce / update, with speedups
  allreduce      (benchmarks/allreduce)          time per all-reduce against buffer size, and the ratio
  pipeline       (benchmarks/pipeline)           efficiency against micro-batches, both schedules, with
                                                 the ideal m / (m + p - 1), and saved activations
A Chrome trace (PARALLAX_TRACE, fashion_mnist --trace; a "traceEvents" list)
becomes a Gantt picture: one lane per rank, nested spans stacked inside it,
over the training steps --steps FIRST:LAST (default 1:2).

  /usr/bin/python3 benchmarks/plot.py build-bench/vs_pytorch.json --out docs/images/vs_pytorch.png
  /usr/bin/python3 benchmarks/plot.py build-bench/data_parallel.json build-bench/allreduce.json --out-dir build-bench
  /usr/bin/python3 benchmarks/plot.py run.json --steps 3:4 --out run.png

Only pictures meant for the README belong in the repository (docs/images/);
everything else stays in the build directory.
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import matplotlib.patches  # noqa: E402

PARALLAX = "#1f5fa8"
PYTORCH = "#e07b22"
NUMPY = "#3c9a4a"
GREY = "#8a8a8a"


def machine_line(meta):
    """'2 cores, OpenBLAS core SkylakeX, 1 BLAS thread per process'."""
    parts = []
    cores = meta.get("cores")
    cpu = meta.get("cpu", "")
    if cores:
        parts.append(f"{int(cores)} cores" + (f" {cpu}" if cpu else ""))
    core = meta.get("blas_core")
    if core:
        parts.append(f"OpenBLAS core {core}")
    threads = meta.get("OPENBLAS_NUM_THREADS")
    if threads and threads != "(unset)":
        parts.append(f"{threads} BLAS thread per process")
    return ", ".join(parts)


def finish(fig, out):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=150, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    print(f"wrote {out}")


# The vs_pytorch frameworks in bar order: (colour, legend). Older files have no numpy+mpi4py rows.
VS_PYTORCH = {"parallax": (PARALLAX, "parallax (C++, MPI)"), "pytorch": (PYTORCH, "PyTorch {torch}"),
              "numpy+mpi4py": (NUMPY, "numpy {numpy} + mpi4py {mpi4py} (by hand)")}


def plot_vs_pytorch(doc, out):
    meta, rows = doc["meta"], doc["rows"]
    counts = sorted({r["processes"] for r in rows})
    frameworks = [f for f in VS_PYTORCH if any(r["framework"] == f for r in rows)]
    fig, ax = plt.subplots(figsize=(7.5 + 1.5 * (len(frameworks) - 2), 4.6))
    width = 0.72 / len(frameworks)
    small = 8 if len(frameworks) < 3 else 7  # the labels of three bars side by side
    tallest = max(r["max"] for r in rows)
    for i, n in enumerate(counts):
        for j, framework in enumerate(frameworks):
            r = next((r for r in rows if r["processes"] == n and r["framework"] == framework), None)
            if r is None:
                continue
            x = i + (j - (len(frameworks) - 1) / 2) * width
            ax.bar(x, r["epoch_s"], width, color=VS_PYTORCH[framework][0], zorder=2,
                   yerr=[[r["epoch_s"] - r["min"]], [r["max"] - r["epoch_s"]]], capsize=3,
                   error_kw={"elinewidth": 1, "ecolor": "#333333"})
            label = f"{r['epoch_s']:.2f} s\n{r['samples_per_s'] / 1000:.0f}k samples/s"
            if framework != "parallax":
                label += f"\n{r['ratio_to_parallax']:.2f}x parallax's time"
            ax.text(x, r["max"] + 0.02 * tallest, label, ha="center", va="bottom", fontsize=small)
    names = {1: "1 process", **{n: f"{n} processes" for n in counts if n > 1}}
    ax.set_xticks(range(len(counts)))
    ax.set_xticklabels([f"{names[n]}\n(PyTorch: {'single' if n == 1 else 'DDP, gloo'}"
                        + ("" if "numpy+mpi4py" not in frameworks or n == 1 else "; numpy: MPI Allreduce") + ")"
                        for n in counts])
    ax.set_ylabel("seconds per epoch (lower is better)")
    ax.set_ylim(0, tallest * 1.38)
    ax.grid(axis="y", color="#dddddd", zorder=0)
    ax.spines[["top", "right"]].set_visible(False)
    versions = {"torch": meta.get("torch_debian_package") or meta.get("torch", ""),
                "numpy": meta.get("numpy", ""), "mpi4py": meta.get("mpi4py", "")}
    handles = [plt.Rectangle((0, 0), 1, 1, color=VS_PYTORCH[f][0]) for f in frameworks]
    labels = [VS_PYTORCH[f][1].format(**versions).replace("  ", " ") for f in frameworks]
    # Three frameworks' legend is wider: over the group whose bars are shorter.
    loc = "upper right"
    if len(frameworks) > 2:
        def group(n):
            return max(r["max"] for r in rows if r["processes"] == n)
        loc = "upper left" if group(counts[0]) <= group(counts[-1]) else "upper right"
    ax.legend(handles, labels, loc=loc, frameon=False, fontsize=9)
    batch = rows[0]["batch_per_process"]
    ax.set_title(f"Fashion-MNIST, one epoch: MLP 784-256-128-10, batch {batch} per process, SGD momentum\n"
                 f"{machine_line(meta)}", fontsize=10)
    date = meta.get("date", "")[:10]
    fig.text(0.99, 0.005, f"median of {rows[0].get('repeats', '?')} epochs, bars: min-max; {date}",
             ha="right", va="bottom", fontsize=7, color=GREY)
    finish(fig, out)


def plot_data_parallel(doc, out):
    meta, rows = doc["meta"], doc["rows"]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.8))
    # Whiskers stop at 1.5 x the slowest median, so one stray step cannot squash the bars.
    limit = 1.5 * max(r["step_s"] for r in rows) * 1e3
    labels = []
    for y, r in enumerate(reversed(rows)):
        labels.append(r["name"])
        step = r["step_s"] * 1e3
        if r["kind"] == "DataParallel":
            compute, comm, update = r["compute_s"] * 1e3, r["comm_s"] * 1e3, r["update_s"] * 1e3
            ax.barh(y, compute, color=PARALLAX, zorder=2)
            ax.barh(y, comm, left=compute, color="#d62728", zorder=2)
            ax.barh(y, update, left=compute + comm, color="#7fb3e6", zorder=2)
            rest = step - compute - comm - update
            if rest > 0:
                ax.barh(y, rest, left=compute + comm + update, color="#dddddd", zorder=2)
        else:
            ax.barh(y, step, color=GREY, zorder=2)
        right = min(r["max"] * 1e3, limit)
        ax.plot([r["min"] * 1e3, right], [y, y], color="#333333", lw=1, zorder=3)
        note = f"{step:.1f} ms"
        if r.get("role") != "1 rank":
            note += f", speedup {r['speedup']:.2f}" + (" (bound)" if r.get("role") == "bound" else "")
        ax.text(max(step, right) + 0.01 * limit, y, note, va="center", fontsize=8)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("milliseconds per step (median; line: min-max)")
    ax.set_xlim(0, limit * 1.3)
    ax.grid(axis="x", color="#eeeeee", zorder=0)
    ax.spines[["top", "right"]].set_visible(False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (PARALLAX, "#d62728", "#7fb3e6", GREY)]
    ax.legend(handles, ["compute", "all-reduce", "update", "hand-written (total)"], loc="lower right",
              fontsize=8, frameon=False)
    ax.set_title(f"{meta.get('model', 'model')}: step time at global batch {int(meta.get('global_batch', 0))}\n"
                 f"{machine_line(meta)}", fontsize=9)
    finish(fig, out)


def plot_allreduce(doc, out):
    meta, rows = doc["meta"], doc["rows"]
    rows = sorted(rows, key=lambda r: r["bytes"])
    sizes = [r["bytes"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    top.loglog(sizes, [r["ours_s"] * 1e3 for r in rows], "o-", color=PARALLAX, label="parallax::allreduce_mean")
    top.loglog(sizes, [r["baseline_s"] * 1e3 for r in rows], "s--", color=GREY, label="MPI_Allreduce + scaling")
    if all("raw_sum_only_s" in r for r in rows):
        top.loglog(sizes, [r["raw_sum_only_s"] * 1e3 for r in rows], ":", color="#555555",
                   label="MPI_Allreduce (sum only)")
    top.set_ylabel("ms per all-reduce (median)")
    top.legend(frameon=False, fontsize=8)
    top.grid(color="#eeeeee", which="both")
    bottom.semilogx(sizes, [r["ratio"] for r in rows], "o-", color=PARALLAX)
    bottom.axhline(1.0, color=GREY, lw=1)
    bottom.set_ylabel("ours / MPI")
    bottom.set_xlabel("buffer (bytes, float)")
    bottom.grid(color="#eeeeee", which="both")
    ranks = rows[0]["ranks"] if rows else "?"
    top.set_title(f"all-reduce mean at {ranks} ranks\n{machine_line(meta)}", fontsize=9)
    finish(fig, out)


def plot_pipeline(doc, out):
    meta, rows = doc["meta"], doc["rows"]
    p = rows[0]["ranks"] if rows else 0
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    styles = {"pipeline_gpipe": ("GPipe", "s-", GREY), "pipeline_1f1b": ("1F1B", "o-", PARALLAX),
              "pipeline_zero_bubble": ("zero bubble", "^-", "#d1495b")}
    for name, (label, marker, colour) in styles.items():
        mine = sorted((r for r in rows if r["name"] == name), key=lambda r: r["micro_batches"])
        if not mine:
            continue
        m = [r["micro_batches"] for r in mine]
        left.plot(m, [r["efficiency"] for r in mine], marker, color=colour, label=f"{label} (vs whole-batch serial)")
        if all("efficiency_same_micro" in r for r in mine):
            left.plot(m, [r["efficiency_same_micro"] for r in mine], marker.replace("-", ":"), color=colour,
                      alpha=0.6, label=f"{label} (vs serial with the same micro-batches)")
        right.plot(m, [r["peak_saved_bytes_stage0"] / 2**20 for r in mine], marker, color=colour, label=label)
    ms = sorted({r["micro_batches"] for r in rows})
    fine = [m / 8 for m in range(8, 8 * int(max(ms)) + 1)] if ms else []
    left.plot(fine, [m / (m + p - 1) for m in fine], "-", color="#2a9d3a", lw=1, label="ideal m / (m + p - 1)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ms)
        ax.set_xticklabels([str(int(m)) for m in ms])
        ax.set_xlabel("micro-batches per step (m)")
        ax.grid(color="#eeeeee")
    left.set_ylabel("efficiency = serial / (p x pipeline time)")
    left.set_ylim(0, 1)
    left.legend(frameon=False, fontsize=7, loc="lower right")
    right.set_ylabel("peak saved activations, stage 0 (MiB)")
    right.legend(frameon=False, fontsize=8)
    batch = int(rows[0]["batch"]) if rows else 0
    fig.suptitle(f"ModelParallel, 8 x Linear(1024, 1024) + ReLU, batch {batch}, {p} stages\n{machine_line(meta)}",
                 fontsize=9)
    finish(fig, out)


# Colours of a trace's spans by name (pipeline operations) or category.
TRACE_COLOURS = {"forward": PARALLAX, "backward": "#3c9a4a", "backward input": "#3c9a4a", "backward weight": "#9bd18f",
                 "recompute": "#7fb0e0", "receive activation": GREY,
                 "receive gradient": GREY, "send activation": "#c9c9c9", "send gradient": "#c9c9c9",
                 "communication": "#c0392b", "update": PYTORCH, "data": "#8e44ad", "io": "#6d4c41",
                 "train": "#ececec", "evaluate": "#f1c40f", "compute": "#d6e4f5", "sync": "#2c3e50", "hooks": "#b0b0b0"}
# Short labels on a pipeline operation's bar: F3 is micro-batch 3's forward.
TRACE_LABELS = {"forward": "F", "backward": "B", "backward input": "B", "backward weight": "W", "recompute": "R"}


def trace_spans(doc):
    """The complete events ("ph": "X") per rank, each with its nesting depth."""
    by_rank = {}
    for e in doc["traceEvents"]:
        if e.get("ph") == "X":
            by_rank.setdefault(e["pid"], []).append(e)
    for spans in by_rank.values():
        spans.sort(key=lambda e: (e["ts"], -e["dur"]))
        open_ends = []
        for e in spans:
            while open_ends and open_ends[-1] <= e["ts"]:
                open_ends.pop()
            e["depth"] = len(open_ends)
            open_ends.append(e["ts"] + e["dur"])
    return by_rank


def plot_trace(doc, out, steps="1:2"):
    by_rank = trace_spans(doc)
    if not by_rank:
        sys.exit("plot.py: the trace has no spans")
    first, last = (int(x) for x in steps.split(":"))
    chosen = [e for spans in by_rank.values() for e in spans
              if e["name"] == "step" and first <= e.get("args", {}).get("index", -1) <= last]
    if chosen:
        begin = min(e["ts"] for e in chosen)
        end = max(e["ts"] + e["dur"] for e in chosen)
    else:  # no such steps: the whole trace
        begin = min(e["ts"] for spans in by_rank.values() for e in spans)
        end = max(e["ts"] + e["dur"] for spans in by_rank.values() for e in spans)
    depth = 1 + max(e["depth"] for spans in by_rank.values() for e in spans)
    ranks = sorted(by_rank)
    fig, ax = plt.subplots(figsize=(11, 0.9 + 0.55 * depth * len(ranks)))
    row = 0.9 / depth
    for lane, rank in enumerate(ranks):
        top = len(ranks) - lane
        for e in by_rank[rank]:
            if e["ts"] + e["dur"] < begin or e["ts"] > end:
                continue
            x0 = (max(e["ts"], begin) - begin) / 1000
            width = (min(e["ts"] + e["dur"], end) - max(e["ts"], begin)) / 1000
            y = top - 0.05 - row * (e["depth"] + 1)
            colour = TRACE_COLOURS.get(e["name"], TRACE_COLOURS.get(e.get("cat"), GREY))
            ax.broken_barh([(x0, width)], (y, row * 0.9), facecolors=colour, edgecolor="white", linewidth=0.3)
            index = e.get("args", {}).get("index", -1)
            if e.get("cat") == "pipeline" and e["name"] in TRACE_LABELS and index >= 0:
                ax.text(x0 + width / 2, y + row * 0.45, f"{TRACE_LABELS[e['name']]}{index}", ha="center",
                        va="center", fontsize=7, color="white", clip_on=True)
    ax.set_yticks([len(ranks) - lane - 0.5 for lane in range(len(ranks))])
    ax.set_yticklabels([f"rank {r}" for r in ranks])
    ax.set_ylim(0, len(ranks))
    ax.set_xlim(0, (end - begin) / 1000)
    ax.set_xlabel("time (ms)")
    shown = sorted({e["name"] if e["name"] in TRACE_COLOURS else e.get("cat") for spans in by_rank.values()
                    for e in spans if (e["name"] in TRACE_COLOURS or e.get("cat") in TRACE_COLOURS)})
    handles = [matplotlib.patches.Patch(color=TRACE_COLOURS[k], label=k) for k in shown]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=6, fontsize=8, frameon=False)
    ax.set_title(f"steps {first}-{last}" if chosen else "the whole trace", fontsize=10)
    finish(fig, out)


PLOTS = {"vs_pytorch": plot_vs_pytorch, "data_parallel": plot_data_parallel, "allreduce": plot_allreduce,
         "pipeline": plot_pipeline, "trace": plot_trace}


def main():
    parser = argparse.ArgumentParser(description="Turn benchmark JSON files into PNG pictures.")
    parser.add_argument("inputs", nargs="+", help="JSON files written by the benchmarks")
    parser.add_argument("--out", help="the PNG to write (one input only)")
    parser.add_argument("--out-dir", help="directory for <benchmark>.png (default: beside each input)")
    parser.add_argument("--steps", default="1:2", help="a trace's training steps to draw, FIRST:LAST")
    args = parser.parse_args()
    if args.out and len(args.inputs) > 1:
        parser.error("--out takes one input; use --out-dir for several")
    for path in args.inputs:
        with open(path) as f:
            doc = json.load(f)
        kind = "trace" if "traceEvents" in doc else doc.get("benchmark")
        if kind not in PLOTS:
            sys.exit(f"plot.py: {path}: no picture for benchmark '{kind}' (known: {', '.join(PLOTS)})")
        out = args.out or os.path.join(args.out_dir or os.path.dirname(os.path.abspath(path)), kind + ".png")
        if kind == "trace":
            plot_trace(doc, out, args.steps)
        else:
            PLOTS[kind](doc, out)


if __name__ == "__main__":
    main()
