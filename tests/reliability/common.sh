# shellcheck shell=bash
# SPDX-License-Identifier: BSL-1.0
# Shared by the reliability scripts (sourced, not run): arguments, a scratch
# folder removed at exit, mpiexec with meson's flags, test cases that count
# themselves, and the summary line the test command sums.
#
# Every script is called as: SCRIPT CKPT_TOOL MPIEXEC [MPIEXEC_FLAGS...]
# (two_hosts.sh takes the fashion_mnist program and the hdf5_shard_tool, or
# "none" for either, after MPIEXEC).

set -uo pipefail

tool=$1
mpiexec_bin=$2
shift 2
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
scratch=$(mktemp -d /tmp/parallax-reliability-XXXXXX)
passed=0
failed=0
log="$scratch/case.log"

# Cleanup hooks run at exit, newest first; the scratch folder goes last.
cleanups=()
on_exit() {
  local i
  for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do eval "${cleanups[i]}"; done
  rm -rf "$scratch"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# mpiexec's flags: the remaining arguments, set by the script once it has
# taken its own.
mpi_flags=()

# mpi N ARGS...: ckpt_tool on N ranks.
mpi() {
  local n=$1
  shift
  "$mpiexec_bin" "${mpi_flags[@]}" -n "$n" -x OPENBLAS_NUM_THREADS "$tool" "$@"
}

# case_ NAME COMMANDS...: runs the commands; the case passes when they succeed.
# What the commands print is shown only when the case fails.
case_() {
  local name=$1
  shift
  : >"$log"
  if "$@" >>"$log" 2>&1; then
    echo "ok      $name"
    passed=$((passed + 1))
  else
    echo "FAILED  $name"
    sed 's/^/    /' "$log" | tail -n 40
    failed=$((failed + 1))
  fi
}

# note TEXT: a line for the test log (stdout), outside any case.
note() { echo "        $*"; }

# same_bits A B: the two parameter files are equal byte for byte and not empty.
same_bits() {
  [ -s "$1" ] || { echo "missing or empty: $1"; return 1; }
  [ -s "$2" ] || { echo "missing or empty: $2"; return 1; }
  cmp "$1" "$2" && echo "bitwise equal: $(basename "$1") $(basename "$2") ($(stat -c %s "$1") bytes)"
}

# newest_complete DIR: the newest step folder holding a MANIFEST ("" if none).
newest_complete() {
  local d newest=""
  for d in "$1"/step-*; do  # zero-padded: the last in glob order is the newest
    [ -f "$d/MANIFEST" ] && newest=$d
  done
  echo "$newest"
}

# matching PATTERN: "PID COMMAND LINE" of each process whose command line
# matches the extended regular expression (from /proc, so procps is not
# needed; an exited process not yet reaped has an empty command line).
matching() {
  local f parts line
  for f in /proc/[0-9]*/cmdline; do
    mapfile -d '' parts <"$f" 2>/dev/null || continue
    line="${parts[*]}"
    [[ $line =~ $1 ]] && echo "${f:6:-8} $line"
  done
  return 0
}

# no_tool_left PATTERN: no live process whose command line matches PATTERN,
# waiting up to 5 s for the job's processes to be reaped.
no_tool_left() {
  local i left
  for ((i = 0; i < 50; i++)); do
    left=$(matching "$1")
    [ -z "$left" ] && { echo "no process matches '$1'"; return 0; }
    sleep 0.1
  done
  echo "processes left:"
  echo "$left"
  return 1
}

# finish SUITE_NOTE: the summary line; the exit status says whether all passed.
finish() {
  echo "parallax-test-cases: $passed passed, $failed failed ($1)"
  [ "$failed" = 0 ]
  exit
}
