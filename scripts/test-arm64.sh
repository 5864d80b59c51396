#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The unit suite of an arm64 build, under qemu: builds the tree for arm64 with Debian's cross
# toolchain and the arm64 -dev libraries (multiarch) in .build/arm64 (-Werror), and runs
# `meson test --suite unit` there, each test through qemu-aarch64-static (meson's exe_wrapper).
# Installs what it needs (scripts/deps.sh build arm64). Exits non-zero if anything fails.
#   scripts/test-arm64.sh [MESON_TEST_ARG...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh build
scripts/deps.sh arm64

dir=.build/arm64
mkdir -p .build
# The loader and libraries of the arm64 programs are Debian's multiarch ones (libc6:arm64 and
# the rest in /lib/aarch64-linux-gnu), as on a real board: -L / keeps qemu off the cross
# toolchain's loader in /usr/aarch64-linux-gnu/lib. That loader is an older build of glibc than
# libc6:arm64, and the two share private structures: with it, the multiarch libc.so.6 walked a
# list in ld.so's globals at the wrong offset and every child of fork() spun there for ever.
cat >.build/arm64-cross.txt <<'CROSS'
[binaries]
c = 'aarch64-linux-gnu-gcc'
ar = 'aarch64-linux-gnu-ar'
strip = 'aarch64-linux-gnu-strip'
pkgconfig = 'aarch64-linux-gnu-pkg-config'
exe_wrapper = ['qemu-aarch64-static', '-L', '/']

[host_machine]
system = 'linux'
cpu_family = 'aarch64'
cpu = 'aarch64'
endian = 'little'
CROSS
if [ ! -d "$dir/meson-private" ]; then
  meson setup "$dir" --cross-file .build/arm64-cross.txt -Dwerror=true >/dev/null
fi
ninja -C "$dir" >/dev/null
meson test -C "$dir" --suite unit --print-errorlogs "$@"
