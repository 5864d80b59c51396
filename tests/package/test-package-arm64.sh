#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The package test of the arm64 .deb, in an arm64 Debian 12 root: debootstraps one into
# .build/arm64-root (once; minbase with systemd and man-db, from Debian's archive), lets the
# kernel run its arm64 programs through qemu-user (binfmt_misc, Debian's qemu-aarch64 entry)
# and runs tests/package/test-package.sh in it on the arm64 .deb: apt resolves the package's
# arm64 dependencies from the archive, the maintainer scripts run, the arm64 gatewayd refuses
# the shipped config, and remove and purge leave what they should. Root only (mount, chroot).
#   tests/package/test-package-arm64.sh [DEB]   default: .build/package/gatewayd_*_arm64.deb
# The binfmt_misc entry stays registered until reboot; nothing else outside .build changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || {
  echo "test-package-arm64: needs root (it mounts and chroots)" >&2
  exit 2
}
if [ $# -ge 1 ]; then
  deb=$1
else
  debs=(.build/package/gatewayd_*_arm64.deb)
  deb=${debs[0]}
fi
[ -f "$deb" ] || {
  echo "test-package-arm64: no arm64 .deb (run scripts/package.sh arm64 first, or name one)" >&2
  exit 2
}
scripts/deps.sh arm64
scripts/deps.sh package

# The kernel hands arm64 programs to qemu: the chroot's own /bin/sh, dpkg and maintainer
# scripts are arm64. The F flag opens the interpreter now, so it works inside the chroot.
binfmt=/proc/sys/fs/binfmt_misc
mountpoint -q "$binfmt" || mount -t binfmt_misc binfmt_misc "$binfmt"
[ -e "$binfmt/qemu-aarch64" ] || /lib/systemd/systemd-binfmt /usr/lib/binfmt.d/qemu-aarch64.conf
[ -e "$binfmt/qemu-aarch64" ] || {
  echo "test-package-arm64: could not register qemu-aarch64 with binfmt_misc" >&2
  exit 1
}

root=$PWD/.build/arm64-root
if [ ! -x "$root/usr/bin/apt-get" ]; then
  rm -rf "$root" "$root.tmp"
  echo "test-package-arm64: debootstrapping an arm64 Debian 12 into $root (minutes)" >&2
  debootstrap --arch=arm64 --variant=minbase --include=systemd,man-db bookworm "$root.tmp" \
    http://deb.debian.org/debian >.build/arm64-root.log 2>&1 || {
    tail -n 20 .build/arm64-root.log >&2
    echo "test-package-arm64: debootstrap failed (whole log: .build/arm64-root.log)" >&2
    exit 1
  }
  mv "$root.tmp" "$root"
fi

mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[i]}" || true; done
  rm -rf "$root/tmp/package-test"
}
trap cleanup EXIT
# Fresh proc and sysfs, and /dev bound without its submounts: unmounting a recursive bind's
# copy of /dev/pts could unmount the host's own (mount propagation).
for m in proc sys dev; do
  mountpoint -q "$root/$m" && continue
  case $m in
    proc) mount -t proc proc "$root/proc" ;;
    sys) mount -t sysfs sysfs "$root/sys" ;;
    dev) mount --bind /dev "$root/dev" ;;
  esac
  mounted+=("$root/$m")
done
cp /etc/resolv.conf "$root/etc/resolv.conf"

mkdir -p "$root/tmp/package-test/tests/package"
cp tests/package/test-package.sh "$root/tmp/package-test/tests/package/"
cp "$deb" "$root/tmp/package-test/"
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
chroot "$root" /tmp/package-test/tests/package/test-package.sh "/tmp/package-test/${deb##*/}"
