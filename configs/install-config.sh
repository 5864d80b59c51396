#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# meson install script: installs the example config SOURCE as DEST (an absolute path, under
# $DESTDIR when set) unless a file is there already: the operator's config is never replaced.
# Usage: install-config.sh SOURCE DEST
set -eu
src=$1
dest=${DESTDIR:-}$2
if [ -e "$dest" ]; then
  echo "Keeping $dest (the example is in the doc folder, as examples/gateway.conf)"
  exit 0
fi
mkdir -p "$(dirname "$dest")"
install -m 0644 "$src" "$dest"
echo "Installing $src to $dest"
