#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the Debian package from this tree (debian/, debhelper compat 13, meson) and checks it
# with lintian: .build/package/gatewayd_VERSION_ARCH.deb. Installs what it needs (apt-get,
# only what is missing; sudo when not root). The tree is copied as it is (committed or not,
# without .build/ and what .gitignore ignores), so that the build's own files stay out of it.
#   scripts/package.sh           for this machine's architecture
# Exits non-zero if the build fails or lintian reports an error or a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/.build/package

scripts/deps.sh build
scripts/deps.sh package

rm -rf "$out"
mkdir -p "$out/src"
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf - | tar -xf - -C "$out/src"

cd "$out/src"
echo "== dpkg-buildpackage ($(dpkg --print-architecture))" >&2
dpkg-buildpackage -us -uc -b >"$out/build.log" 2>&1 || {
  tail -n 40 "$out/build.log" >&2
  echo "package.sh: dpkg-buildpackage failed (whole log: $out/build.log)" >&2
  exit 1
}
cd "$out"
changes=$(ls gatewayd_*.changes)
echo "== lintian $changes" >&2
# Errors and warnings fail; informational tags are printed. lintian warns that it runs as root.
lintian --info "$changes" 2>&1 | grep -v '^running with root privileges' | tee lintian.out || true
if grep -qE '^[EW]: ' lintian.out; then
  echo "package.sh: lintian reports errors or warnings (above)" >&2
  exit 1
fi
ls -1 "$out"/*.deb
