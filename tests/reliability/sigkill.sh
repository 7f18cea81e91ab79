#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# shellcheck source-path=SCRIPTDIR disable=SC2317  # the checks are functions that case_ calls
# Suite reliability: a lost node. In a 2-rank job, rank 1 SIGKILLs itself
# after step 22 (mid-epoch: epoch 2, step 4 of 9), when checkpoints of steps
# 12, 16 and 20 are on disk (every 4 steps, keep 3). Then:
#   - the whole job ends within 30 s of the kill (Open MPI 4.1 aborts a job
#     whose process dies on a signal: orte_abort_on_non_zero_status is true by
#     default; the survivor, blocked in a collective, gets SIGTERM and, after
#     odls_base_sigkill_timeout = 1 s, SIGKILL: about 1 s in all),
#   - no process of the job is left,
#   - the last complete checkpoint (step 20) is intact: it loads, and
#     resume_latest() picks it,
#   - a new job resumed from it reaches, at step 30, the parameters of an
#     uninterrupted run bit for bit.
# For DataParallel (2 ranks) and a 2-stage ModelParallel pipeline.
# Usage: sigkill.sh CKPT_TOOL MPIEXEC [MPIEXEC_FLAGS...]
here=$(dirname "$0")
# shellcheck source=common.sh
. "$here/common.sh"
mpi_flags=("$@")
limit=30

for mode in dp pipe; do
  d="$scratch/$mode"
  mkdir -p "$d"
  name="$mode"
  [ "$mode" = dp ] && name="DataParallel 2 ranks" || name="ModelParallel 2 stages"

  job_ends() {
    local rc start end
    mpi 2 --mode "$mode" --steps 30 --out "$d/full.bin" >/dev/null || { echo "uninterrupted run failed"; return 1; }
    start=$(date +%s.%N)
    mpi 2 --mode "$mode" --steps 30 --every 4 --keep 3 --dir "$d/ckpt" --kill-rank 1 --kill-step 22 \
      --kill-stamp "$d/killed_at" --out "$d/never.bin"
    rc=$?
    end=$(date +%s.%N)
    echo "mpiexec exit status $rc"
    [ "$rc" != 0 ] || { echo "the job reported success"; return 1; }
    [ -s "$d/killed_at" ] || { echo "rank 1 did not reach its kill step"; return 1; }
    [ ! -e "$d/never.bin" ] || { echo "the job finished despite the kill"; return 1; }
    local took
    took=$(awk -v a="$(cat "$d/killed_at")" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
    echo "kill to job exit: $took s (job ran $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }') s)"
    echo "$took" >"$d/took"
    awk -v t="$took" -v l="$limit" 'BEGIN { exit !(t >= 0 && t <= l) }'
  }
  case_ "$name: rank 1 SIGKILLed mid-epoch, the job ends on every rank within ${limit} s" job_ends
  [ -s "$d/took" ] && note "$name: kill to mpiexec exit $(cat "$d/took") s"

  case_ "$name: no process of the killed job is left" no_tool_left "ckpt_tool.*$d/ckpt"

  intact() {
    ls "$d/ckpt"
    local newest
    newest=$(newest_complete "$d/ckpt")
    [ "$(basename "$newest")" = step-000000000020 ] || { echo "newest complete checkpoint: '$newest'"; return 1; }
    mpi 2 --mode "$mode" --dir "$d/ckpt" --verify "$newest" | tee "$d/verify.out" || return 1
    grep -q "verify: loaded step-000000000020 step 20" "$d/verify.out" &&
      grep -q "verify: resume_latest step-000000000020 skipped 0" "$d/verify.out"
  }
  case_ "$name: the last complete checkpoint (step 20) is intact, loads and is resumed" intact

  resumes() {
    mpi 2 --mode "$mode" --steps 30 --every 4 --dir "$d/ckpt" --resume --out "$d/resumed.bin" | tee "$d/resume.out" ||
      return 1
    grep -q "resumed from step-000000000020, steps 20 -> 30" "$d/resume.out" || return 1
    same_bits "$d/full.bin" "$d/resumed.bin"
  }
  case_ "$name: resumed after the kill, step 30 bitwise equal to an uninterrupted run" resumes
done
finish "reliability SIGKILL"
