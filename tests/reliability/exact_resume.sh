#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# shellcheck source-path=SCRIPTDIR disable=SC2317  # the checks are functions that case_ calls
# Suite reliability: a run stopped at step 13 (mid-epoch: 9 steps per epoch)
# and resumed from its checkpoint by a NEW mpiexec reaches, at step 30, the
# parameters of an uninterrupted run bit for bit — DataParallel at 2 ranks
# and a 2-stage ModelParallel pipeline, both with Adam and a cosine learning
# rate, so the parameters, both Adam moments, the step counter and the
# sampler's epoch and position must all come back exactly.
# Usage: exact_resume.sh CKPT_TOOL MPIEXEC [MPIEXEC_FLAGS...]
here=$(dirname "$0")
# shellcheck source=common.sh
. "$here/common.sh"
mpi_flags=("$@")

# resume_case MODE: uninterrupted 0 -> 30 against 0 -> 13 | new job 13 -> 30.
resume_case() {
  local mode=$1 d="$scratch/$1"
  mkdir -p "$d"
  mpi 2 --mode "$mode" --steps 30 --out "$d/full.bin" || return 1
  mpi 2 --mode "$mode" --steps 13 --every 5 --dir "$d/ckpt" --out "$d/at13.bin" || return 1
  ls "$d/ckpt"
  [ -f "$d/ckpt/step-000000000013/MANIFEST" ] || { echo "no checkpoint at step 13"; return 1; }
  mpi 2 --mode "$mode" --steps 30 --every 5 --dir "$d/ckpt" --resume --out "$d/resumed.bin" | tee "$d/resume.out" ||
    return 1
  grep -q "resumed from step-000000000013, steps 13 -> 30" "$d/resume.out" || { echo "did not resume at 13"; return 1; }
  # Training moved the parameters (the comparison below is not trivially true).
  ! cmp -s "$d/at13.bin" "$d/full.bin" || { echo "parameters at 13 and 30 are equal"; return 1; }
  same_bits "$d/full.bin" "$d/resumed.bin"
}

# Three jobs: 0 -> 13, 13 -> 22, 22 -> 30, each resuming the previous one's
# newest checkpoint (every 5 steps plus one at the end of each job).
twice_case() {
  local mode=$1 d="$scratch/$1-twice"
  mkdir -p "$d"
  mpi 2 --mode "$mode" --steps 30 --out "$d/full.bin" || return 1
  mpi 2 --mode "$mode" --steps 13 --every 5 --dir "$d/ckpt" || return 1
  mpi 2 --mode "$mode" --steps 22 --every 5 --dir "$d/ckpt" --resume | tee "$d/second.out" || return 1
  grep -q "resumed from step-000000000013" "$d/second.out" || return 1
  mpi 2 --mode "$mode" --steps 30 --every 5 --dir "$d/ckpt" --resume --out "$d/resumed.bin" | tee "$d/third.out" || return 1
  grep -q "resumed from step-000000000022" "$d/third.out" || return 1
  same_bits "$d/full.bin" "$d/resumed.bin"
}

case_ "DataParallel 2 ranks, Adam: new mpiexec resumes step 13 -> 30, bitwise equal to uninterrupted" resume_case dp
case_ "ModelParallel 2 stages, Adam: new mpiexec resumes step 13 -> 30, bitwise equal to uninterrupted" resume_case pipe
case_ "DataParallel 2 ranks: resumed twice (13, 22) over three jobs, bitwise equal" twice_case dp
case_ "ModelParallel 2 stages: resumed twice (13, 22) over three jobs, bitwise equal" twice_case pipe
finish "reliability exact resume"
