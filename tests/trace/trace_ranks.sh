#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Suite comm: trace::write() when the ranks are out of step (trace_ranks.cpp):
# a rank that leaves without write() (3 ranks), a rank past the 10 s deadline
# (2 ranks), and a second write() with nothing new (2 ranks). No run hangs or
# crashes; the files are valid JSON with the expected tracks.
# Usage: trace_ranks.sh TRACE_RANKS_BINARY [mpiexec flags...]
set -uo pipefail
exe=$1; shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok() { echo "ok      $1"; passed=$((passed + 1)); }
bad() { echo "FAILED  $1"; failed=$((failed + 1)); }
tracks() {  # tracks FILE: the ranks whose spans FILE holds, e.g. "0 1 2"
  /usr/bin/python3 -c '
import json, sys
events = json.load(open(sys.argv[1]))["traceEvents"]
print(" ".join(str(r) for r in sorted({e["pid"] for e in events if e.get("ph") == "X" and e["name"] == "work"})))' "$1" 2>/dev/null
}

# A rank that leaves: the others' write() gets its spans, written once.
timeout 60 mpiexec "$@" -n 3 "$exe" "$tmp/leave.json" leave >"$tmp/leave.log" 2>&1
status=$?
if [ "$status" = 0 ] && [ "$(grep -c ': 1$' "$tmp/leave.log")" = 2 ] && [ "$(tracks "$tmp/leave.json")" = "0 1 2" ] &&
    ! ls "$tmp"/leave.json.rank* >/dev/null 2>&1 && ! grep -q "within 10 s" "$tmp/leave.log"; then
  ok "a rank that leaves without write() brings its spans from MPI_Finalize; nothing is written twice"
else
  bad "a rank that leaves without write() (status $status)"; cat "$tmp/leave.log"
fi

# A rank past the deadline: false everywhere, each rank's own file, a clean exit.
timeout 60 mpiexec "$@" -n 2 "$exe" "$tmp/late.json" late >"$tmp/late.log" 2>&1
status=$?
if [ "$status" = 0 ] && [ "$(grep -c ': 0$' "$tmp/late.log")" = 2 ] && [ "$(tracks "$tmp/late.json.rank0")" = 0 ] &&
    [ "$(tracks "$tmp/late.json.rank1")" = 1 ] && [ ! -e "$tmp/late.json" ]; then
  ok "a rank past the 10 s deadline: false on every rank, each writes its own file, a clean exit"
else
  bad "a rank past the 10 s deadline (status $status)"; cat "$tmp/late.log"; ls "$tmp"
fi

# Two calls with nothing recorded between: both true, the file as the first wrote it.
timeout 60 mpiexec "$@" -n 2 "$exe" "$tmp/twice.json" twice >"$tmp/twice.log" 2>&1
status=$?
if [ "$status" = 0 ] && [ "$(grep -c ': 1$' "$tmp/twice.log")" = 4 ] && [ "$(tracks "$tmp/twice.json")" = "0 1" ]; then
  ok "a second write() with nothing new is true on every rank"
else
  bad "a second write() with nothing new (status $status)"; cat "$tmp/twice.log"
fi
echo "parallax-test-cases: $passed passed, $failed failed (comm)"
[ "$failed" = 0 ]
