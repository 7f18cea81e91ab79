#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# The long fuzz campaign: installs what is missing, builds the fuzz targets
# (clang++ and libFuzzer, ASan + UBSan) in ./build-fuzz, and runs every
# target for RUNS inputs (default 1000000) from a random seed, with the same
# bounds as the short runs of `meson test --suite fuzz`. Each target's
# corpus grows in build-fuzz/fuzz-corpus/<target> from one campaign to the
# next. Ends with one line per target (executions, edges covered, features,
# corpus units, findings, seconds) — the figures docs/fuzzing.md records —
# and exits non-zero on any finding (its input is kept in
# build-fuzz/tests/fuzz/finding-*). TARGETs (e.g. fuzz_idx) run only those.
# Usage: scripts/fuzz.sh [RUNS] [TARGET...]
set -euo pipefail
source "$(dirname "$0")/setup.sh"
dir="$PARALLAX_ROOT/build-fuzz"
if [ ! -f "$dir/build.ninja" ]; then
  meson setup "$dir" "$PARALLAX_ROOT" -Dfuzz=enabled -Dexamples=false -Dbenchmarks=false >/dev/null
fi
# Only what the fuzz suite needs: the targets, the seed writer and the seeds.
mapfile -t targets < <(meson introspect "$dir" --targets | python3 -c '
import json, sys
for t in json.load(sys.stdin):
    if "/tests/fuzz/" in t["defined_in"]:
        print(t["name"])')
meson compile -C "$dir" -j "$(parallax_cores)" "${targets[@]}" >/dev/null
runs=${1:-1000000}
shift || true
status=0
PARALLAX_FUZZ_RUNS=$runs PARALLAX_FUZZ_SEED=random PARALLAX_FUZZ_CORPUS="$dir/fuzz-corpus" \
  meson test -C "$dir" --no-rebuild --suite fuzz --timeout-multiplier 0 "$@" >/dev/null || status=$?
grep -h "^parallax-fuzz:" "$dir"/meson-logs/testlog.txt || { echo "parallax: no fuzz target ran" >&2; exit 1; }
exit "$status"
