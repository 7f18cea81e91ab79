#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# A compile-fail test: SOURCE must compile with -DPARALLAX_EXPECT_OK (the
# control: the file is otherwise well formed) and must fail without it, with
# EXPECTED (a fixed string) in the compiler's messages.
# Usage: expect_error.sh INCLUDE_DIR SOURCE EXPECTED [COMPILER...]
set -uo pipefail
include=$1 source=$2 expected=$3
shift 3
compiler=("$@")
[ ${#compiler[@]} -eq 0 ] && compiler=(c++)
# shellcheck disable=SC2207
flags=(-std=c++20 -fsyntax-only -I "$include" $(pkg-config --cflags mpi-cxx xtensor 2>/dev/null))
name=$(basename "$source")
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "${compiler[@]}" "${flags[@]}" -DPARALLAX_EXPECT_OK "$source" >"$log" 2>&1; then
  echo "FAILED $name: the control (-DPARALLAX_EXPECT_OK) does not compile:"; head -n 30 "$log"
  echo "parallax-test-cases: 0 passed, 1 failed (compile-fail)"; exit 1
fi
if "${compiler[@]}" "${flags[@]}" "$source" >"$log" 2>&1; then
  echo "FAILED $name: compiled, but should not"
  echo "parallax-test-cases: 0 passed, 1 failed (compile-fail)"; exit 1
fi
if ! grep -qF -- "$expected" "$log"; then
  echo "FAILED $name: the error does not say: $expected"; grep -m 5 'error' "$log"
  echo "parallax-test-cases: 0 passed, 1 failed (compile-fail)"; exit 1
fi
echo "ok $name: $(grep -m 1 -F -- "$expected" "$log" | sed 's/^.*error: //' | cut -c1-200)"
echo "parallax-test-cases: 1 passed, 0 failed (compile-fail)"
