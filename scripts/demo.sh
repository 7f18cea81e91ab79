#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Quick start, command 1: installs what is missing, builds, and runs the demo
# at 2 ranks. Usage: scripts/demo.sh
set -euo pipefail
source "$(dirname "$0")/setup.sh"
parallax_build "$PARALLAX_ROOT/build"
flags=(--oversubscribe)
[ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
exec mpiexec "${flags[@]}" -n 2 "$PARALLAX_ROOT/build/examples/hello_allreduce"
