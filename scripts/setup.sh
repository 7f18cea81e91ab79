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
  doctest-dev libcli11-dev nlohmann-json3-dev
  dataset-fashion-mnist
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

# parallax_build DIR [meson options...]: configure once, then build.
parallax_build() {
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$PARALLAX_ROOT" "$@" >/dev/null || { meson setup "$dir" "$PARALLAX_ROOT" "$@"; return 1; }
  fi
  meson compile -C "$dir" -j "$(nproc)" | grep -v '^\[\|^INFO\|^ninja: Entering' || true
  test "${PIPESTATUS[0]}" = 0
}

PARALLAX_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
parallax_install_missing "${PARALLAX_PACKAGES[@]}"
