#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The daemon's folders are layers (README, "Where things are"): a file may include a header
of its own folder or of a lower layer, never of a higher one or of a sibling at its own level.
Checks every #include "..." in gateway/, bridges/ and keystore/ against LAYERS; prints each
include that breaks the order (file:line, and the two folders) and exits 1 if there is one.
Usage: check-layers.py SOURCE_ROOT"""
import os
import re
import sys

# Lowest first; folders on one line are siblings, which may not include one another.
LAYERS = [
    ["gateway/base"],
    ["gateway/conf", "keystore"],
    ["gateway/data"],
    ["bridges/coap", "bridges/mqtt"],
    ["gateway/lifecycle"],
    ["gateway/ops"],
    ["gateway"],
    ["gateway/gwctl"],
]
LEVEL = {folder: i for i, row in enumerate(LAYERS) for folder in row}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def main(root):
    headers, sources = {}, []
    for folder in LEVEL:
        path = os.path.join(root, folder)
        for name in sorted(os.listdir(path)):
            if name.endswith((".c", ".h")):
                sources.append((folder, name))
                if name.endswith(".h"):
                    if name in headers:
                        sys.exit(f"{folder}/{name}: a second {name} (also in "
                                 f"{headers[name]}): includes are by name")
                    headers[name] = folder
    bad = 0
    for folder, name in sources:
        with open(os.path.join(root, folder, name), encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                m = INCLUDE.match(line)
                if not m:
                    continue
                target = headers.get(os.path.basename(m.group(1)))
                if target is None or target == folder or LEVEL[target] < LEVEL[folder]:
                    continue
                how = "a sibling of" if LEVEL[target] == LEVEL[folder] else "a higher layer than"
                print(f"{folder}/{name}:{lineno}: includes {m.group(1)} of {target}/, "
                      f"{how} {folder}/")
                bad += 1
    if bad:
        print(f"{bad} include(s) against the layers (tests/layers/check-layers.py)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
