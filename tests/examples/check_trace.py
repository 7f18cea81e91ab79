#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""Checks a Chrome trace written by parallax (core/trace.hpp) for a run of
fashion_mnist's MLP at RANKS ranks with STRATEGY (data or pipeline,
MICRO micro-batches per step) and STEPS training steps: valid JSON, one named
track per rank, spans nested within each other on each track, and the spans
the trace promises for that strategy. Prints one line per failed check and
exits 1 when any failed.

  check_trace.py TRACE.json RANKS STRATEGY STEPS MICRO
"""
import json
import sys

path, ranks, strategy, steps, micro = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


with open(path) as f:
    events = json.load(f)["traceEvents"]
tracks = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == "process_name"}
check(tracks == {r: f"rank {r}" for r in range(ranks)}, f"one track per rank, named: {tracks}")
spans = {r: [e for e in events if e.get("ph") == "X" and e["pid"] == r] for r in range(ranks)}

for r, mine in spans.items():
    check(all(e["dur"] >= 0 and e["ts"] >= 0 for e in mine), f"rank {r}: times are not negative")
    # Spans are scopes: any two are nested or apart, never overlapping.
    ordered = sorted(mine, key=lambda e: (e["ts"], -e["dur"]))
    open_ends = []
    for e in ordered:
        while open_ends and open_ends[-1] <= e["ts"]:
            open_ends.pop()
        if open_ends and e["ts"] + e["dur"] > open_ends[-1]:
            check(False, f"rank {r}: '{e['name']}' at {e['ts']} overlaps the span around it")
            break
        open_ends.append(e["ts"] + e["dur"])

    def count(name, category=None):
        return sum(1 for e in mine if e["name"] == name and (category is None or e.get("cat") == category))

    def indices(name, category):
        return sorted({e["args"]["index"] for e in mine if e["name"] == name and e.get("cat") == category})

    check(indices("step", "train") == list(range(steps)), f"rank {r}: a step span for each of steps 0-{steps - 1}")
    check(count("batch", "data") == steps, f"rank {r}: a data batch span per step")
    check(count("optimizer", "update") == steps, f"rank {r}: an optimizer span per step")
    check(count("checkpoint save", "io") >= 1, f"rank {r}: a checkpoint save span")
    check(count("evaluate batch", "evaluate") >= 1, f"rank {r}: evaluation batches")
    if ranks > 1:  # a library operation waits for the other ranks only when there are some
        check(any(e.get("cat") == "sync" and e["name"].endswith("train_step()") for e in mine),
              f"rank {r}: the entry of train_step() (an operation) is a span")
    layer_names = {e["name"] for e in mine if e.get("cat") in ("forward", "backward")}
    if strategy == "data":
        expected = {"layer 0 Linear(784 -> 256)", "layer 1 ReLU", "layer 2 Linear(256 -> 128)", "layer 3 ReLU",
                    "layer 4 Linear(128 -> 10)"}
        check(layer_names == expected, f"rank {r}: a span per layer forward and backward: {sorted(layer_names)}")
        for name in expected:
            check(count(name, "backward") == steps, f"rank {r}: '{name}' backward once per step")
        check(count("all-reduce", "communication") >= steps, f"rank {r}: at least one bucket all-reduce per step")
        check(count("loss and gradient", "compute") == steps, f"rank {r}: loss and gradient once per step")
    else:
        check(indices("forward", "pipeline")[:micro] == list(range(micro)),
              f"rank {r}: forward spans of micro-batches 0-{micro - 1}")
        check(count("backward", "pipeline") == steps * micro, f"rank {r}: a backward span per micro-batch")
        check(len(layer_names) >= 1, f"rank {r}: spans of the stage's layers")
        first, last = r == 0, r == ranks - 1
        check((count("receive activation", "pipeline") > 0) == (not first),
              f"rank {r}: activations received exactly on the stages after the first")
        check((count("receive gradient", "pipeline") > 0) == (not last),
              f"rank {r}: gradients received exactly on the stages before the last")
if ranks > 1 and strategy == "pipeline":
    stages = [{e["name"] for e in spans[r] if e.get("cat") == "backward"} for r in range(ranks)]
    check(all(not (a & b) for i, a in enumerate(stages) for b in stages[i + 1:]), f"each layer on one stage: {stages}")

for f in failures:
    print(f"check_trace.py: {path}: {f}")
sys.exit(1 if failures else 0)
