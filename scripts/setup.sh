#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Installs the Debian packages parallax builds, tests and runs with, when they
# are missing (quiet when everything is present), then configures and builds
# into ./build. Sourced by demo.sh and test.sh; runs as root or through sudo.
set -euo pipefail

PARALLAX_PACKAGES=(
  g++ meson ninja-build pkg-config cmake python3
  libboost-mpi-dev libboost-serialization-dev libopenmpi-dev openmpi-bin
  libxtensor-dev libxtensor-blas-dev libopenblas-dev
  doctest-dev libcli11-dev nlohmann-json3-dev zlib1g-dev libxxhash-dev libhdf5-openmpi-dev
  clang libclang-rt-14-dev gzip
  dataset-fashion-mnist
  iproute2
  slurm-wlm munge
  python3-matplotlib
)

parallax_install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "parallax: need root or sudo to install: ${missing[*]}" >&2; return 1; }
    sudo=(sudo)
  fi
  echo "parallax: installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# parallax_build DIR [meson options...]: configure once, then build. The
# optional HDF5 datasets (meson feature hdf5) are on: -Dhdf5=enabled.
parallax_build() {
  local dir=$1; shift
  set -- -Dhdf5=enabled "$@"
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$PARALLAX_ROOT" "$@" >/dev/null || { meson setup "$dir" "$PARALLAX_ROOT" "$@"; return 1; }
  elif ! grep -q '"name": "hdf5", "value": "enabled"' "$dir/meson-info/intro-buildoptions.json" 2>/dev/null; then
    meson configure "$dir" -Dhdf5=enabled >/dev/null  # a folder configured before the feature existed
  fi
  meson compile -C "$dir" -j "$(parallax_cores)" | grep -v '^\[\|^INFO\|^ninja: Entering' || true
  test "${PIPESTATUS[0]}" = 0
}

# parallax_cores: the cores this process may use, for the compiler's jobs.
# GNU nproc also obeys OMP_NUM_THREADS, which this file sets to 1 for the
# ranks, so it is asked without it.
parallax_cores() {
  env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc
}

# parallax_pick_blas_core: on a CPU with OpenBLAS's AVX-512 kernels
# (avx512f, avx512bw, avx512vl and avx512dq in /proc/cpuinfo), exports
# OPENBLAS_CORETYPE=SkylakeX unless it already names an AVX-512 core. Debian's
# OpenBLAS 0.3.21 predates some recent CPUs and may run older kernels on them,
# and an environment may pin an older core: measured single-thread SGEMM here
# 115-126 GFLOP/s with the Haswell kernels against 200-230 with SkylakeX. A non-AVX-512 value set by the environment is
# replaced, with a note; PARALLAX_KEEP_CORETYPE=1 keeps it. Pass the result to
# the ranks with `mpiexec -x OPENBLAS_CORETYPE`.
parallax_pick_blas_core() {
  local flags f current=${OPENBLAS_CORETYPE:-}
  flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
  for f in avx512f avx512bw avx512vl avx512dq; do
    [[ $flags == *" $f "* ]] || return 0
  done
  case "${current,,}" in
    skylakex|cooperlake|sapphirerapids) return 0 ;;
    "") ;;
    *)
      [ "${PARALLAX_KEEP_CORETYPE:-0}" = 1 ] && return 0
      echo "parallax: OPENBLAS_CORETYPE=$current would run older kernels on this AVX-512 CPU; using SkylakeX (PARALLAX_KEEP_CORETYPE=1 keeps $current)" >&2
      ;;
  esac
  export OPENBLAS_CORETYPE=SkylakeX
}

PARALLAX_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
parallax_install_missing "${PARALLAX_PACKAGES[@]}"
