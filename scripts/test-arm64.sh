#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The suites of an arm64 build, under qemu: builds the tree for arm64 with Debian's cross
# toolchain and the arm64 -dev libraries (multiarch) in .build/arm64 (-Werror), and runs
#  - unit (the default): `meson test --suite unit`, each test through qemu-aarch64-static
#    (meson's exe_wrapper);
#  - integration: the integration and tpm suites, the arm64 gatewayd, gwctl and test tools
#    (through qemu, GW_EXE_WRAPPER in tests/integration/lib.sh) against this machine's own
#    mosquitto, coap-client and swtpm on loopback.
# Installs what it needs (scripts/deps.sh build arm64, and peers for integration). Exits
# non-zero if anything fails.
#   scripts/test-arm64.sh [unit|integration] [MESON_TEST_ARG...]
set -euo pipefail
cd "$(dirname "$0")/.."
what=unit
case "${1:-}" in
  unit | integration) what=$1 && shift ;;
esac
scripts/deps.sh build
scripts/deps.sh arm64
[ "$what" = unit ] || scripts/deps.sh peers

dir=.build/arm64
qemu=(qemu-aarch64-static -L /)
mkdir -p .build
# The loader and libraries of the arm64 programs are Debian's multiarch ones (libc6:arm64 and
# the rest in /lib/aarch64-linux-gnu), as on a real board: -L / keeps qemu off the cross
# toolchain's loader in /usr/aarch64-linux-gnu/lib. That loader is an older build of glibc than
# libc6:arm64, and the two share private structures: with it, the multiarch libc.so.6 walked a
# list in ld.so's globals at the wrong offset and every child of fork() spun there for ever.
cat >.build/arm64-cross.new <<CROSS
[binaries]
c = 'aarch64-linux-gnu-gcc'
ar = 'aarch64-linux-gnu-ar'
strip = 'aarch64-linux-gnu-strip'
pkgconfig = 'aarch64-linux-gnu-pkg-config'
exe_wrapper = [$(printf "'%s', " "${qemu[@]}")]

[host_machine]
system = 'linux'
cpu_family = 'aarch64'
cpu = 'aarch64'
endian = 'little'
CROSS
# Replaced only when it changed: meson reconfigures the build when its cross file is newer.
if cmp -s .build/arm64-cross.new .build/arm64-cross.txt; then
  rm .build/arm64-cross.new
else
  mv .build/arm64-cross.new .build/arm64-cross.txt
fi
if [ ! -d "$dir/meson-private" ]; then
  meson setup "$dir" --cross-file .build/arm64-cross.txt -Dwerror=true >/dev/null
fi
ninja -C "$dir" >/dev/null
if [ "$what" = unit ]; then
  meson test -C "$dir" --suite unit --print-errorlogs "$@"
else
  # Under emulation the tests take 1.6 to 4.5 times as long as native ones (hostile: 200 s
  # against 44 s here): twice meson's timeouts.
  GW_EXE_WRAPPER="${qemu[*]}" \
    meson test -C "$dir" --suite integration --suite tpm --timeout-multiplier 2 --print-errorlogs "$@"
fi
