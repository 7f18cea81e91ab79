#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Quick start, command 2: installs what is missing, builds with warnings as
# errors, runs every test suite (MPI suites at 1-4 ranks) and ends with one
# line "N passed, M failed": test cases summed over all suites and rank
# counts. Exits non-zero when M > 0. Extra arguments go to `meson test`
# (e.g. --suite comm). Usage: scripts/test.sh [meson test options]
set -euo pipefail
source "$(dirname "$0")/setup.sh"
dir="$PARALLAX_ROOT/build-test"
parallax_build "$dir" -Dwerror=true
status=0
meson test -C "$dir" --print-errorlogs "$@" || status=$?
python3 "$PARALLAX_ROOT/scripts/count_tests.py" "$dir/meson-logs/testlog.json" || status=1
exit "$status"
