#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Suite install: installs parallax into a temporary prefix and builds a small
# consumer three ways (pkg-config, CMake find_package, meson subproject), then
# runs each at 2 ranks; with the MPI-enabled HDF5 installed, an HDF5 consumer
# through pkg-config parallax-hdf5 too; and the README's mpicxx line for a
# clone, as it reads there. Each way is one test case.
# Usage: check_install.sh SOURCE_DIR
set -uo pipefail
src=$(cd "$1" && pwd)
here="$src/tests/install/consumer"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
flags=(--oversubscribe)
[ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
export OPENBLAS_NUM_THREADS=1
passed=0
failed=0
log="$tmp/log"

# case NAME COMMANDS...: runs the commands; the case passes when all succeed.
case_() {
  local name=$1; shift
  : >"$log"
  if "$@" >>"$log" 2>&1; then
    echo "ok      $name"; passed=$((passed + 1))
  else
    echo "FAILED  $name"; sed 's/^/    /' "$log" | tail -n 40; failed=$((failed + 1))
  fi
}
run2() {
  mpiexec "${flags[@]}" -n 2 "$1" | tee /dev/stderr | grep -q "consumer: parallax .* 2 ranks, sum of ranks 1 ok"
}

install_parallax() {
  meson setup "$tmp/build" "$src" --prefix "$tmp/prefix" -Dtests=false -Dexamples=false -Dbenchmarks=false &&
    meson install -C "$tmp/build" &&
    test -f "$tmp/prefix/include/parallax/parallax.hpp"
}
via_pkg_config() {
  local pc
  pc=$(find "$tmp/prefix" -name parallax.pc | head -n 1)
  [ -n "$pc" ] || { echo "parallax.pc was not installed"; return 1; }
  export PKG_CONFIG_PATH
  PKG_CONFIG_PATH=$(dirname "$pc")
  # shellcheck disable=SC2046
  c++ "$here/consumer.cpp" -o "$tmp/consumer_pc" $(pkg-config --cflags --libs parallax) && run2 "$tmp/consumer_pc"
}
via_pkg_config_hdf5() {
  local pc
  pc=$(find "$tmp/prefix" -name parallax-hdf5.pc | head -n 1)
  [ -n "$pc" ] || { echo "parallax-hdf5.pc was not installed"; return 1; }
  export PKG_CONFIG_PATH
  PKG_CONFIG_PATH=$(dirname "$pc")
  # shellcheck disable=SC2046
  c++ "$here/consumer_hdf5.cpp" -o "$tmp/consumer_hdf5" $(pkg-config --cflags --libs parallax-hdf5) &&
    mpiexec "${flags[@]}" -n 2 "$tmp/consumer_hdf5" | tee /dev/stderr | grep -q "consumer: parallax-hdf5, 2 ranks, sum of rows 45 ok"
}
via_cmake() {
  cmake -S "$here" -B "$tmp/cmake" -DCMAKE_PREFIX_PATH="$tmp/prefix" -DCMAKE_BUILD_TYPE=Release &&
    cmake --build "$tmp/cmake" && run2 "$tmp/cmake/consumer"
}
from_a_clone() {  # the README's line for a clone, run as it reads there
  local line
  line=$(sed -n '/^Or without installing, straight from a clone:/,/^```$/{/^mpicxx/,/^```$/p}' "$src/README.md" |
         grep -v '^```' | sed 's/\\$//' | tr '\n' ' ')
  [ -n "$line" ] || { echo "README.md has no mpicxx line for a clone"; return 1; }
  line=${line//parallax\/include/$src\/include}
  line=${line//app.cpp/$here\/consumer.cpp}
  line=${line//-o app/-o $tmp\/consumer_clone}
  echo "$line"
  eval "$line" && run2 "$tmp/consumer_clone"
}
via_meson_subproject() {
  mkdir -p "$tmp/sub/subprojects/parallax" &&
    cp "$here/meson.build" "$here/consumer.cpp" "$tmp/sub/" &&
    cp -r "$src/meson.build" "$src/meson_options.txt" "$src/include" "$src/cmake" "$tmp/sub/subprojects/parallax/" &&
    meson setup "$tmp/sub/build" "$tmp/sub" && meson compile -C "$tmp/sub/build" && run2 "$tmp/sub/build/consumer"
}

: >"$log"
if install_parallax >>"$log" 2>&1; then
  case_ "pkg-config consumer at 2 ranks" via_pkg_config
  case_ "CMake find_package consumer at 2 ranks" via_cmake
  if pkg-config --exists hdf5-openmpi; then
    case_ "pkg-config parallax-hdf5 consumer (HDF5 shard read) at 2 ranks" via_pkg_config_hdf5
  else
    echo "skipped pkg-config parallax-hdf5 consumer: no hdf5-openmpi (libhdf5-openmpi-dev)"
  fi
else
  echo "FAILED  meson install into a temporary prefix"; tail -n 40 "$log"
  failed=$((failed + 2))
fi
case_ "meson subproject consumer at 2 ranks" via_meson_subproject
case_ "README's mpicxx line for a clone at 2 ranks" from_a_clone
echo "parallax-test-cases: $passed passed, $failed failed (install)"
[ "$failed" = 0 ]
