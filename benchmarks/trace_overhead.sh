#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# What the timeline trace (core/trace.hpp) costs: one Fashion-MNIST epoch of
# the MLP 784-256-128-10 (benchmarks/mlp_epoch, batch 64 per rank) at N ranks,
# three ways side by side in one run, in interleaved rounds:
#   compiled out  mlp_epoch_untraced (-DPARALLAX_NO_TRACE): the baseline
#   off           mlp_epoch, tracing off (a span tests a flag)
#   on            mlp_epoch with PARALLAX_TRACE set (every span recorded and written)
# Each run times 3 epochs and keeps the fastest (the least disturbed by the
# machine); prints each way's median of those over the rounds (min-max), its
# ratio to the baseline, and the size of the trace file.
#
#   benchmarks/trace_overhead.sh [--rounds 5] [--ranks 2] [--build build-bench]
#
# Run it on an otherwise idle machine.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build-bench"
rounds=5
ranks=2
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    -h|--help) sed -n '3,15p' "$0"; exit 0 ;;
    *) echo "trace_overhead.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$build" in /*) ;; *) build="$PWD/$build" ;; esac
# shellcheck source=../scripts/setup.sh
source "$root/scripts/setup.sh"
parallax_pick_blas_core
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Build only the two benchmarks this needs.
if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" "$root" >"$tmp/setup.log" 2>&1 || { cat "$tmp/setup.log"; exit 1; }
fi
meson compile -C "$build" benchmarks/mlp_epoch benchmarks/mlp_epoch_untraced >"$tmp/build.log" 2>&1 ||
  { cat "$tmp/build.log"; exit 1; }
flags=(--oversubscribe -x OPENBLAS_NUM_THREADS -x OPENBLAS_CORETYPE -n "$ranks")
[ "$(id -u)" = 0 ] && flags=(--allow-run-as-root "${flags[@]}")
epoch() {  # epoch WAY BINARY [env...]: one epoch, its time appended to $tmp/WAY
  local way=$1 exe=$2; shift 2
  env "$@" mpiexec "${flags[@]}" -x PARALLAX_TRACE "$exe" --repeats 3 --json "$tmp/$way.json" >/dev/null
  /usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rows'][0]['min'])" "$tmp/$way.json" >>"$tmp/$way.s"
}
for r in $(seq "$rounds"); do
  epoch compiled_out "$build/benchmarks/mlp_epoch_untraced" PARALLAX_TRACE=
  epoch off "$build/benchmarks/mlp_epoch" PARALLAX_TRACE=
  epoch on "$build/benchmarks/mlp_epoch" PARALLAX_TRACE="$tmp/trace.json"
  echo "round $r of $rounds done"
done
/usr/bin/python3 - "$tmp" "$ranks" <<'PY'
import os, statistics, sys
tmp, ranks = sys.argv[1], sys.argv[2]
times = {w: [float(x) for x in open(os.path.join(tmp, w + ".s"))] for w in ("compiled_out", "off", "on")}
base = statistics.median(times["compiled_out"])
print(f"one MLP epoch at {ranks} ranks (fastest of 3 per run), median of {len(times['off'])} interleaved rounds:")
for way, label in (("compiled_out", "trace compiled out"), ("off", "trace off"), ("on", "trace on")):
    t = times[way]
    print(f"  {label:20s} {statistics.median(t):.3f} s ({min(t):.3f}-{max(t):.3f})  {statistics.median(t) / base:.3f}x")
size = os.path.getsize(os.path.join(tmp, "trace.json"))
print(f"  trace file {size / 1e6:.1f} MB")
PY
