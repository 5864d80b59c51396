#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the Debian package from this tree (debian/, debhelper compat 13, meson) and checks it
# with lintian: .build/package/gatewayd_VERSION_ARCH.deb. Installs what it needs (apt-get,
# only what is missing; sudo when not root). The tree is copied as it is (committed or not,
# without .build/ and what .gitignore ignores), so that the build's own files stay out of it.
#   scripts/package.sh [ARCH...]   this machine's architecture by default; "all": amd64 and
#                                  arm64. Another architecture than the machine's is cross-built
#                                  (Debian's cross toolchain, -Pcross,nocheck: its unit suite
#                                  runs under qemu in scripts/test-arm64.sh instead).
# Exits non-zero if a build fails or lintian reports an error or a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/.build/package
native=$(dpkg --print-architecture)
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=("$native")
[ "${archs[*]}" != all ] || archs=(amd64 arm64)
for a in "${archs[@]}"; do
  case $a in
    "$native") ;;
    arm64) cross=yes ;;
    *)
      echo "package.sh: can build $native and arm64, not $a" >&2
      exit 2
      ;;
  esac
done

scripts/deps.sh build
scripts/deps.sh package
[ -z "${cross:-}" ] || scripts/deps.sh arm64

rm -rf "$out"
mkdir -p "$out/src"
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf - | tar -xf - -C "$out/src"

for a in "${archs[@]}"; do
  opts=()
  [ "$a" = "$native" ] || opts=(-a"$a" --build-profiles=cross,nocheck)
  cd "$out/src"
  echo "== dpkg-buildpackage ($a)" >&2
  dpkg-buildpackage -us -uc -b "${opts[@]}" >"$out/build-$a.log" 2>&1 || {
    tail -n 40 "$out/build-$a.log" >&2
    echo "package.sh: dpkg-buildpackage failed for $a (whole log: $out/build-$a.log)" >&2
    exit 1
  }
  # The next architecture starts from a clean tree.
  dh_clean >/dev/null 2>&1 || true
  rm -rf obj-*
  cd "$out"
  echo "== lintian gatewayd_*_$a.changes" >&2
  # Errors and warnings fail; informational tags are printed. lintian warns that it runs as root.
  lintian --info gatewayd_*_"$a".changes 2>&1 | grep -v '^running with root privileges' |
    tee "lintian-$a.out" || true
  if grep -qE '^[EW]: ' "lintian-$a.out"; then
    echo "package.sh: lintian reports errors or warnings for $a (above)" >&2
    exit 1
  fi
done
ls -1 "$out"/*.deb
