#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Suite examples: fashion_mnist with --strategy pipeline at 2, 3 and 4 ranks
# reaches the accuracy of --strategy data at 2 ranks (same initial weights,
# same global batches; only floating-point rounding differs), and a run
# resumed from a mid-epoch checkpoint at another rank count ends where the
# uninterrupted run ends; --pipeline-schedule zero_bubble ends with 1F1B's
# accuracy. Short runs on the first 6000 training images.
# Usage: same_accuracy.sh FASHION_MNIST_BINARY [mpiexec flags...]
set -uo pipefail
demo=$1; shift
flags=("$@" -x OPENBLAS_NUM_THREADS=1)
common=(--epochs 2 --limit 6000 --quiet)
source "$(dirname "$0")/common.sh"
accuracy() { sed -n 's/^accuracy \([0-9.]*\),.*/\1/p' "$1" | tail -n 1; }

run "$tmp/data.log" 2 --strategy data
reference=$(accuracy "$tmp/data.log")
echo "data parallel, 2 ranks: accuracy ${reference:-none}"
for n in 2 3 4; do
  run "$tmp/pipe$n.log" "$n" --strategy pipeline --micro-batches 4
  a=$(accuracy "$tmp/pipe$n.log")
  echo "pipeline, $n stages: accuracy ${a:-none}"
  check "pipeline at $n ranks reaches the data-parallel accuracy" "'${a}' != '' and '${reference}' != '' and abs(${a:-0} - ${reference:-1}) <= 0.005"
done

# Zero bubble gives 1F1B's bits, so the same accuracy to the last digit.
run "$tmp/zero_bubble.log" 2 --strategy pipeline --micro-batches 4 --pipeline-schedule zero_bubble
z=$(accuracy "$tmp/zero_bubble.log")
p2=$(accuracy "$tmp/pipe2.log")
echo "pipeline, 2 stages, zero bubble: accuracy ${z:-none}"
said=$(grep -c "4 micro-batches, zero_bubble" "$tmp/zero_bubble.log")  # the flag took effect
check "zero bubble at 2 ranks ends with 1F1B's accuracy" "'${z}' != '' and '${z}' == '${p2}' and ${said} == 1"

# Interrupted at a mid-epoch checkpoint, resumed at 3 ranks: same end.
run "$tmp/full.log" 2 --strategy data --checkpoint-dir "$tmp/ckpt" --checkpoint-every 30
full=$(accuracy "$tmp/full.log")
newest=$(ls -d "$tmp/ckpt"/step-* | sort | tail -n 1)
rm -rf "$newest" "$(ls -d "$tmp/ckpt"/step-* | sort | tail -n 1)"   # keep a mid-epoch one
run "$tmp/resumed.log" 3 --strategy data --checkpoint-dir "$tmp/ckpt" --resume
resumed=$(accuracy "$tmp/resumed.log")
grep -h "resumed from" "$tmp/resumed.log"
check "a run resumed at 3 ranks ends with the uninterrupted run's accuracy" "'${resumed}' != '' and '${resumed}' == '${full}'"
finish
