#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# shellcheck source-path=SCRIPTDIR disable=SC2317  # the checks are functions that case_ calls
# Suite reliability: the checkpoint writer killed at random moments. A 2-rank
# DataParallel job with a wide model (hidden width 1024: 25 MB per
# checkpoint, parameters and both Adam moments) saves a checkpoint after
# every step, so it spends most of its time writing; rank 0 (the one writer)
# is SIGKILLed from outside after a random delay, 20 times, each new job
# resuming from what the last one left. After every kill:
#   - the newest complete checkpoint (a step folder with a MANIFEST) loads,
#   - resume_latest() picks exactly it, skipping newer incomplete folders and
#     ignoring the killed writer's ".tmp." files,
#   - the next job resumes from it.
# A last job finishes cleanly and must leave no temporary file and no
# incomplete folder behind. The writer's --progress log says whether each
# kill landed inside a save; the test requires that some did.
# Usage: kill_during_write.sh CKPT_TOOL MPIEXEC [MPIEXEC_FLAGS...]
here=$(dirname "$0")
# shellcheck source=common.sh
. "$here/common.sh"
mpi_flags=("$@")
kills=${PARALLAX_RELIABILITY_KILLS:-20}
ck="$scratch/ckpt"
wide=(--mode dp --hidden 1024 --dir "$ck")

loads_ok=0       # kills after which the newest complete checkpoint loaded
picked_ok=0      # ... and resume_latest() chose exactly it
resumed_ok=0     # jobs that resumed from the newest complete checkpoint
in_save=0        # kills that landed inside a save (progress log: "saving N" last)
in_file=0        #   ... while a file of the checkpoint was being written (a .tmp. file of the writer)
between=0        #   ... between the data file and the MANIFEST
after_manifest=0 #   ... after the MANIFEST (pruning older checkpoints)
before_files=0   #   ... before any file was written
skipped_total=0  # incomplete checkpoints resume_latest() skipped, over all kills
failures="$scratch/failures"
: >"$failures"
fail() { echo "kill $1: $2" | tee -a "$failures"; }

previous=""  # the newest complete checkpoint before the current job
for ((k = 1; k <= kills; k++)); do
  rm -f "$scratch/pid" "$scratch/progress"
  # Teardown is not what this test measures (sigkill.sh does): the survivor
  # gets SIGKILL at once instead of SIGTERM and a 1 s grace period.
  "$mpiexec_bin" "${mpi_flags[@]}" --mca odls_base_sigkill_timeout 0 -n 2 -x OPENBLAS_NUM_THREADS "$tool" "${wide[@]}" --steps 1000000000 --every 1 \
    --keep 2 --resume --pid-file "$scratch/pid" --progress "$scratch/progress" >"$scratch/writer.out" 2>&1 &
  job=$!
  cleanups+=("kill $job 2>/dev/null")
  for ((i = 0; i < 1000; i++)); do
    [ -s "$scratch/pid" ] && break
    sleep 0.02
  done
  # The first job is let finish one checkpoint, so there is always one to load.
  for ((i = 0; i < 1000 && k == 1; i++)); do
    grep -q "^saved" "$scratch/progress" 2>/dev/null && break
    sleep 0.02
  done
  if [ ! -s "$scratch/pid" ]; then
    fail "$k" "the writer did not start"
    cat "$scratch/writer.out"
    kill "$job"
    wait "$job"
    continue
  fi
  writer=$(cat "$scratch/pid")
  delay=$(printf '0.%03d' $((50 + RANDOM % 700)))
  sleep "$delay"
  kill -9 "$writer"
  wait "$job"
  # Did this job resume from what the previous one left?
  if [ -n "$previous" ]; then
    if grep -q "ckpt_tool: resuming from $(basename "$previous") at step" "$scratch/writer.out"; then
      resumed_ok=$((resumed_ok + 1))
    else
      fail "$k" "the job did not resume from $(basename "$previous"): $(grep -m1 "ckpt_tool: resuming" "$scratch/writer.out")"
    fi
  else
    resumed_ok=$((resumed_ok + 1))  # the first job starts fresh
  fi
  # Where the kill landed.
  last=$(tail -n 1 "$scratch/progress" 2>/dev/null)
  where="between saves"
  if [ "${last%% *}" = saving ]; then
    in_save=$((in_save + 1))
    folder="$ck/$(printf 'step-%012d' "${last##* }")"
    if compgen -G "$folder/.*.tmp.$writer" >/dev/null; then
      in_file=$((in_file + 1))
      temp=("$folder"/.*.tmp."$writer")
      where="inside a save: writing $(basename "${temp[0]}")"
    elif [ -f "$folder/MANIFEST" ]; then
      after_manifest=$((after_manifest + 1))
      where="inside a save: after the MANIFEST (pruning)"
    elif [ -f "$folder/state.bin" ]; then
      between=$((between + 1))
      where="inside a save: between state.bin and MANIFEST"
    else
      before_files=$((before_files + 1))
      where="inside a save: before any file"
    fi
  fi
  newest=$(newest_complete "$ck")
  echo "kill $k after ${delay}s: $where; newest complete $(basename "${newest:-none}"); folders: $(cd "$ck" && echo step-*)"
  if [ -z "$newest" ]; then
    fail "$k" "no complete checkpoint"
    continue
  fi
  # The newest complete checkpoint loads, and resume_latest() picks it.
  # stdout alone is parsed: rank 0's stderr notes (which checkpoint it skipped)
  # may land in the middle of a stdout line.
  if mpi 2 "${wide[@]}" --verify "$newest" >"$scratch/verify.out" 2>"$scratch/verify.err"; then :; fi
  if grep -q "verify: loaded $(basename "$newest") " "$scratch/verify.out"; then
    loads_ok=$((loads_ok + 1))
  else
    fail "$k" "$(basename "$newest") does not load"
    cat "$scratch/verify.out" "$scratch/verify.err"
  fi
  skipped=$(sed -n "s/^verify: resume_latest $(basename "$newest") skipped \([0-9]*\)$/\1/p" "$scratch/verify.out")
  if [ -n "$skipped" ]; then
    picked_ok=$((picked_ok + 1))
    skipped_total=$((skipped_total + skipped))
  else
    fail "$k" "resume_latest did not pick $(basename "$newest")"
    cat "$scratch/verify.out" "$scratch/verify.err"
  fi
  previous=$newest
done

case_ "after each of $kills kills, the newest complete checkpoint loads ($loads_ok/$kills)" test "$loads_ok" = "$kills"
case_ "after each kill, resume_latest() picks the newest complete checkpoint ($picked_ok/$kills; $skipped_total incomplete skipped)" \
  test "$picked_ok" = "$kills"
case_ "after each kill, the next job resumes from it ($resumed_ok/$kills)" test "$resumed_ok" = "$kills"
note "kills inside a save: $in_save of $kills (writing a file: $in_file, between state.bin and MANIFEST: $between," \
  "after the MANIFEST: $after_manifest, before any file: $before_files)"
case_ "kills landed inside checkpoint writes ($in_save of $kills, $in_file while a file was open)" \
  test $((in_save * 4)) -ge "$kills" -a "$in_file" -ge 1

clean_finish() {
  local newest steps
  newest=$(newest_complete "$ck")
  steps=$((10#$(basename "$newest" | cut -d- -f2) + 3))
  mpi 2 "${wide[@]}" --steps "$steps" --every 1 --keep 2 --resume || return 1
  ls -A "$ck"/*
  [ "$(basename "$(newest_complete "$ck")")" = "$(printf 'step-%012d' "$steps")" ] || { echo "no checkpoint of step $steps"; return 1; }
  [ -z "$(find "$ck" -name '*.tmp.*')" ] || { echo "temporary files left:"; find "$ck" -name '*.tmp.*'; return 1; }
  local d
  for d in "$ck"/step-*; do
    [ -f "$d/MANIFEST" ] || { echo "incomplete folder left: $d"; return 1; }
  done
  local folders=("$ck"/step-*)
  [ "${#folders[@]}" = 2 ] || { echo "keep = 2 not honoured: ${#folders[@]} folders"; return 1; }
}
case_ "a clean job after the kills resumes, and leaves no temporary file or incomplete folder" clean_finish
[ -s "$failures" ] && { echo "failures:"; cat "$failures"; }
finish "reliability kill during checkpoint write"
