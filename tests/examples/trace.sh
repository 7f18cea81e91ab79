#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Suite examples: fashion_mnist's timeline traces (--trace FILE and the
# PARALLAX_TRACE environment variable, core/trace.hpp). Short MLP runs on the
# first 2000 training images, global batch 128 (16 steps): the trace of a
# data-parallel run at 1 and 2 ranks and of a pipeline at 2 and 3 ranks holds
# what tests/examples/check_trace.py checks; tracing leaves the accuracy as it
# is; a file that cannot be written fails the run before training;
# benchmarks/plot.py draws a trace.
# Usage: trace.sh FASHION_MNIST_BINARY [mpiexec flags...]
set -uo pipefail
demo=$1; shift
flags=("$@" -x OPENBLAS_NUM_THREADS=1)
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
common=(--epochs 1 --limit 2000 --batch-size 128 --quiet)
steps=16 micro=4
passed=0 failed=0
ok() { echo "ok      $1"; passed=$((passed + 1)); }
bad() { echo "FAILED  $1"; failed=$((failed + 1)); }
accuracy() { sed -n 's/^accuracy \([0-9.]*\),.*/\1/p' "$1" | tail -n 1; }
run() {  # run LOG RANKS ARGS...
  local log=$1 n=$2; shift 2
  mpiexec "${flags[@]}" -n "$n" "$demo" "${common[@]}" "$@" >"$log" 2>&1
}
traced() {  # traced NAME RANKS STRATEGY [ARGS...]: a run with --trace, then its checks
  local name=$1 n=$2 strategy=$3; shift 3
  if ! run "$tmp/$name.log" "$n" --strategy "$strategy" --micro-batches "$micro" --trace "$tmp/$name.json" \
      --checkpoint-dir "$tmp/ckpt-$name" --checkpoint-every 8 "$@"; then
    bad "$name: the traced run failed"; tail -n 5 "$tmp/$name.log"; return
  fi
  if python3 "$here/check_trace.py" "$tmp/$name.json" "$n" "$strategy" "$steps" "$micro"; then
    ok "$name: the trace has every rank's spans"
  else
    bad "$name: the trace has every rank's spans"
  fi
}

traced data1 1 data
traced data2 2 data
traced pipeline2 2 pipeline
traced pipeline3 3 pipeline

# Tracing changes nothing the run computes.
run "$tmp/plain.log" 2 --strategy data --checkpoint-dir "$tmp/ckpt-plain" --checkpoint-every 8
plain=$(accuracy "$tmp/plain.log") with=$(accuracy "$tmp/data2.log")
if [ -n "$plain" ] && [ "$plain" = "$with" ]; then ok "the traced run's accuracy equals the untraced run's ($plain)"
else bad "the traced run's accuracy ($with) equals the untraced run's ($plain)"; fi

# The environment variable alone turns tracing on.
PARALLAX_TRACE="$tmp/env.json" mpiexec "${flags[@]}" -x PARALLAX_TRACE -n 2 "$demo" "${common[@]}" \
  --checkpoint-dir "$tmp/ckpt-env" --checkpoint-every 8 >"$tmp/env.log" 2>&1
if python3 "$here/check_trace.py" "$tmp/env.json" 2 data "$steps" "$micro"; then ok "PARALLAX_TRACE writes the trace"
else bad "PARALLAX_TRACE writes the trace"; fi

# A trace file that cannot be written: an error before training, status 1.
run "$tmp/unwritable.log" 2 --trace "$tmp/no-such-folder/t.json"
status=$?
if [ "$status" = 1 ] && grep -q -- "--trace: cannot write" "$tmp/unwritable.log" && ! grep -q "^epoch" "$tmp/unwritable.log"; then
  ok "an unwritable --trace fails before training"
else
  bad "an unwritable --trace fails before training (status $status)"; tail -n 3 "$tmp/unwritable.log"
fi

# The Gantt picture (benchmarks/plot.py, Debian's python3-matplotlib: the
# test command installs it).
if /usr/bin/python3 -c "import matplotlib" 2>/dev/null; then
  if /usr/bin/python3 "$here/../../benchmarks/plot.py" "$tmp/pipeline2.json" --steps 2:3 --out "$tmp/p.png" >/dev/null &&
      [ -s "$tmp/p.png" ]; then ok "plot.py draws a pipeline trace"
  else bad "plot.py draws a pipeline trace"; fi
else
  bad "plot.py draws a pipeline trace (python3-matplotlib, which setup.sh installs, is missing)"
fi
echo "parallax-test-cases: $passed passed, $failed failed (examples)"
[ "$failed" = 0 ]
