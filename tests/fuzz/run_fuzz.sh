#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Runs one fuzz target for RUNS inputs from the seed files given, with the
# bounds every run keeps: 10 s per input, 64 MiB per allocation (the targets
# also bound the peak per input), 2 GiB of RSS, inputs up to 4 KiB. Exits
# 1 on any finding; a finding's input is kept next to the target as
# finding-<target>-<kind>-<hash>. Ends with one line
# "parallax-fuzz: <target> runs <n> cov <edges> ft <features> corpus <units>
# findings <0|1> seconds <s>".
# The environment changes a run: PARALLAX_FUZZ_RUNS replaces RUNS,
# PARALLAX_FUZZ_SEED the fixed seed 1 ("random": libFuzzer picks one),
# PARALLAX_FUZZ_CORPUS a folder whose <target>/ corpus persists between runs
# (by default a scratch folder, removed after). scripts/fuzz.sh sets them.
# Usage: run_fuzz.sh TARGET RUNS SEED...
set -uo pipefail
target=$1 runs=${PARALLAX_FUZZ_RUNS:-$2}
shift 2
name=$(basename "$target")
if [ -n "${PARALLAX_FUZZ_CORPUS:-}" ]; then
  corpus=$PARALLAX_FUZZ_CORPUS/$name
  mkdir -p "$corpus"
else
  corpus=$(mktemp -d "${TMPDIR:-/tmp}/parallax-fuzz-corpus.XXXXXX")
  trap 'rm -rf "$corpus"' EXIT
fi
[ $# -gt 0 ] && cp "$@" "$corpus/"
seed=(-seed="${PARALLAX_FUZZ_SEED:-1}")
[ "${PARALLAX_FUZZ_SEED:-1}" = random ] && seed=()
log=$(dirname "$target")/$name.log
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
start=$SECONDS
# libFuzzer's own exit codes for a finding (77) and a timeout (70) would
# read as "skipped" and "failed" to meson: every finding exits 1.
"$target" -runs="$runs" "${seed[@]}" -max_len=4096 -timeout=10 -malloc_limit_mb=64 -rss_limit_mb=2048 \
  -error_exitcode=1 -timeout_exitcode=1 -print_final_stats=1 -artifact_prefix="$(dirname "$target")/finding-$name-" "$corpus" >"$log" 2>&1
status=$?
grep -E "ERROR|runtime error|finding|Seed:|DONE|stat::" "$log" | head -40
done_line=$(grep -E "^#[0-9]+[[:space:]]+DONE" "$log" | tail -1)
field() { sed -n "s/.* $1: *\([0-9]*\).*/\1/p" <<<"$done_line"; }
executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
echo "parallax-fuzz: $name runs ${executed:-0} cov $(field cov) ft $(field ft) corpus $(field corp)" \
  "findings $([ $status = 0 ] && echo 0 || echo 1) seconds $((SECONDS - start))"
[ $status = 0 ] || exit 1
