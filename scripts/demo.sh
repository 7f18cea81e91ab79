#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Quick start, command 1: installs what is missing, builds, and runs the main
# demo at 2 ranks: examples/fashion_mnist trains an MLP on Fashion-MNIST with
# DataParallel and reports the test accuracy (well under a minute on 2 cores
# once built).
# Usage: scripts/demo.sh [fashion_mnist options, e.g. --model cnn; see --help]
set -euo pipefail
source "$(dirname "$0")/setup.sh"
parallax_build "$PARALLAX_ROOT/build"
demo="$PARALLAX_ROOT/build/examples/fashion_mnist"
if [ ! -x "$demo" ]; then
  echo "parallax: $demo was not built: it needs CLI11 (Debian package libcli11-dev)" >&2
  exit 1
fi
parallax_pick_blas_core
flags=(--oversubscribe -x OPENBLAS_NUM_THREADS)
[ -n "${OPENBLAS_CORETYPE:-}" ] && flags+=(-x OPENBLAS_CORETYPE)
[ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
exec mpiexec "${flags[@]}" -n 2 "$demo" "$@"
