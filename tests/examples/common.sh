# SPDX-License-Identifier: BSL-1.0
# Sourced by the example tests (same_accuracy.sh, char_lm.sh) after they set
# demo (the binary), flags (mpiexec's) and common (the demo's arguments of
# every run): a scratch folder, the pass/fail count, check, run and finish.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
check() {  # check NAME CONDITION-AS-PYTHON
  if python3 -c "import sys; sys.exit(0 if ($2) else 1)"; then echo "ok      $1"; passed=$((passed + 1))
  else echo "FAILED  $1 ($2)"; failed=$((failed + 1)); fi
}
run() {  # run LOG RANKS ARGS...
  local log=$1 n=$2; shift 2
  mpiexec "${flags[@]}" -n "$n" "$demo" "${common[@]}" "$@" >"$log" 2>&1 || { echo "run failed: $*"; tail -n 5 "$log"; }
}
finish() {  # the count line; fails the test when a check failed
  echo "parallax-test-cases: $passed passed, $failed failed (examples)"
  [ "$failed" = 0 ]
}
