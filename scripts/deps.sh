#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs the Debian 12 packages gatewayd needs, only those missing (safe to run again).
#   scripts/deps.sh build   compilers, meson and the -dev libraries; clang and libclang-rt-14-dev
#                           (libFuzzer) for tests/fuzz/run.sh
#   scripts/deps.sh peers   the real peers of the demo and the tests: mosquitto, coap-client,
#                           swtpm, tpm2-tools, openssl, python3 (the tests' EST server),
#                           systemd (systemd-analyze scores the unit), groff-base and man-db
#                           (test-docs formats the man pages), curl (scrapes the metrics),
#                           strace (tests/bench/syscalls.sh counts gatewayd's system calls)
#   scripts/deps.sh package debhelper, dpkg-dev, fakeroot and lintian, for scripts/package.sh;
#                           debootstrap, for tests/package/test-package-arm64.sh
#   scripts/deps.sh arm64   the arm64 cross toolchain, the -dev libraries for arm64 (Debian's
#                           multiarch: adds the architecture arm64 to dpkg) and qemu-user-static,
#                           for scripts/package.sh arm64 and scripts/test-arm64.sh
#   scripts/deps.sh all     build and peers (default)
set -euo pipefail

# libmosquitto-dev: the test tools' MQTT clients (tests/tools/mqttload, mqttstamp), not gatewayd.
build=(meson ninja-build pkg-config gcc libc6-dev libssl-dev libcoap3-dev libmosquitto-dev
  libconfig-dev libcmocka-dev libtss2-dev libsystemd-dev libqrencode-dev libcurl4-openssl-dev
  clang libclang-rt-14-dev)
package=(debhelper dpkg-dev fakeroot lintian debootstrap)
arm64=(crossbuild-essential-arm64 qemu-user-static libssl-dev:arm64 libcoap3-dev:arm64
  libconfig-dev:arm64 libtss2-dev:arm64 libcurl4-openssl-dev:arm64 libqrencode-dev:arm64
  libcmocka-dev:arm64 libmosquitto-dev:arm64)
peers=(mosquitto mosquitto-clients libcoap3-bin swtpm swtpm-tools tpm2-tools tpm2-openssl openssl iproute2
  procps coreutils bc python3 systemd groff-base man-db curl strace)

case "${1:-all}" in
  build) want=("${build[@]}") ;;
  peers) want=("${peers[@]}") ;;
  package) want=("${package[@]}") ;;
  arm64) want=("${arm64[@]}") ;;
  all) want=("${build[@]}" "${peers[@]}") ;;
  *)
    echo "usage: $0 [build|peers|package|arm64|all]" >&2
    exit 2
    ;;
esac

# PKG[:ARCH] is installed for ARCH, or for this machine's architecture (or all) when no ARCH is
# named: with arm64 added, libconfig-dev:arm64 alone must not pass for the native libconfig-dev.
installed() {
  local archs="$native|all"
  [ "${1#*:}" = "$1" ] || archs=${1#*:}
  dpkg-query -W -f='${Architecture} ${Status}\n' "${1%%:*}" 2>/dev/null |
    grep -qE "^($archs) install ok installed$"
}
native=$(dpkg --print-architecture)
missing=()
for pkg in "${want[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || {
    echo "$0: need root or sudo to install: ${missing[*]}" >&2
    exit 1
  }
  sudo=(sudo)
fi
# The :arm64 packages need dpkg to know the architecture before apt reads its lists.
if [ "${1:-all}" = arm64 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  "${sudo[@]}" dpkg --add-architecture arm64
fi
echo "installing: ${missing[*]}" >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  "${missing[@]}" >/dev/null
