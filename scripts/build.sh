#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# scripts/build.sh DIR [MESON_OPTION...]: configures DIR once (or reconfigures with the options
# given), then builds it. Installs the build dependencies first.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/build.sh DIR [MESON_OPTION...]}
shift
scripts/deps.sh build
if [ -f "$dir/build.ninja" ]; then
  [ $# -eq 0 ] || meson configure "$dir" "$@" >/dev/null
else
  meson setup "$dir" "$@" >/dev/null
fi
# --quiet: no progress lines, but a failing command and its errors are shown.
ninja -C "$dir" --quiet
