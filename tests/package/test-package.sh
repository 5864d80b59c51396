#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The package test: installs the built .deb on this machine (apt-get, which brings its
# dependencies; root or sudo), checks what a technician meets first, then removes and purges it.
#   - the files are where the unit and the man pages say; /etc/gateway/gateway.conf is a
#     conffile;
#   - gatewayd -n on the shipped config refuses it, naming the keys to fill in (the broker and
#     its CA file), not a crash;
#   - systemd-analyze verify passes on the installed unit, and its security score is 2.0 or
#     lower;
#   - gwctl --help prints the commands; man finds gatewayd(8), gwctl(1), gateway.conf(5);
#   - the user gatewayd and /var/lib/gateway (0700) exist when systemd-sysusers and
#     systemd-tmpfiles are there (the maintainer scripts run them);
#   - remove leaves the config and /var/lib/gateway; purge takes the config and keeps
#     /var/lib/gateway, as documented, unless GATEWAYD_PURGE_STATE=yes, which takes it too;
#   - nothing else of the package is left after the purge.
# Refuses to run where gatewayd is installed already (it would remove it).
#   tests/package/test-package.sh [DEB]   default: .build/package/gatewayd_*_ARCH.deb
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -ge 1 ]; then
  deb=$1
else
  debs=(.build/package/gatewayd_*_"$(dpkg --print-architecture)".deb)
  deb=${debs[0]}
fi
[ -f "$deb" ] || {
  echo "test-package: no .deb (run scripts/package.sh first, or name one)" >&2
  exit 2
}
deb=$(realpath "$deb")
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
fail() {
  echo "test-package: FAIL: $*" >&2
  exit 1
}
if dpkg-query -W -f='${Status}' gatewayd 2>/dev/null | grep -q 'ok installed'; then
  echo "test-package: gatewayd is installed on this machine already: not touching it" >&2
  exit 2
fi
# What the package may leave: the purge's documented keep, and what was there before.
state_before=$([ -e /var/lib/gateway ] && echo yes || echo no)
work=$(mktemp -d)
# A failed check must not leave the package it installed behind (the next run would refuse to
# start): purged, with the state when there was none before.
cleanup() {
  if dpkg-query -W -f='${Status}' gatewayd 2>/dev/null | grep -q 'ok installed\|config-files'; then
    local purge_state=yes
    [ "$state_before" = no ] || purge_state=
    "${sudo[@]}" env GATEWAYD_PURGE_STATE=$purge_state dpkg --purge gatewayd >/dev/null 2>&1 ||
      echo "test-package: could not purge gatewayd after the failure: dpkg --purge gatewayd" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

install_it() {
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" >"$work/apt.out" 2>&1 ||
    fail "apt-get install $deb: $(tail -n 20 "$work/apt.out")"
}
install_it

# ---- installed
for f in /usr/sbin/gatewayd /usr/bin/gwctl /lib/systemd/system/gatewayd.service \
  /usr/lib/sysusers.d/gatewayd.conf /usr/lib/tmpfiles.d/gatewayd.conf \
  /usr/lib/sysctl.d/60-gatewayd.conf /etc/gateway/gateway.conf \
  /usr/share/doc/gatewayd/examples/gateway.conf; do
  [ -e "$f" ] || fail "$f is not installed"
done
dpkg-query -W -f='${Conffiles}\n' gatewayd | grep -q ' /etc/gateway/gateway.conf ' ||
  fail "/etc/gateway/gateway.conf is not a conffile"

# The shipped config names a broker CA that is not there yet: refused, and told which key.
rc=0
out=$(gatewayd -n -c /etc/gateway/gateway.conf 2>&1) || rc=$?
[ "$rc" -eq 1 ] || fail "gatewayd -n on the shipped config exited $rc (want 1, a refusal): $out"
for key in upstream.broker upstream.ca_file; do
  grep -q "'$key'" <<<"$out" || fail "gatewayd -n did not name $key, a key to fill in: $out"
done

SYSTEMD_COLORS=0 systemd-analyze verify /lib/systemd/system/gatewayd.service >"$work/verify.out" 2>&1 ||
  fail "systemd-analyze verify: $(cat "$work/verify.out")"
SYSTEMD_COLORS=0 systemd-analyze security --offline=true /lib/systemd/system/gatewayd.service \
  >"$work/security.out" 2>&1 || true
score=$(sed -n 's/.*Overall exposure level for gatewayd.service: \([0-9.]*\).*/\1/p' "$work/security.out")
[ -n "$score" ] || fail "no security score: $(tail -n 5 "$work/security.out")"
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "the installed unit's exposure is $score (want 2.0 or lower)"

rc=0
gwctl --help >"$work/help.out" 2>&1 || rc=$?
grep -q 'device add' "$work/help.out" || fail "gwctl --help (exit $rc): $(cat "$work/help.out")"
for page in gatewayd.8 gwctl.1 gateway.conf.5; do
  man -w "${page##*.}" "${page%.*}" >/dev/null 2>&1 || fail "man does not find ${page%.*}(${page##*.})"
done

if command -v systemd-sysusers >/dev/null; then
  getent passwd gatewayd >/dev/null || fail "no user gatewayd after the install"
fi
if command -v systemd-tmpfiles >/dev/null; then
  [ "$(stat -c '%a %U' /var/lib/gateway)" = "700 gatewayd" ] ||
    fail "/var/lib/gateway is $(stat -c '%a %U' /var/lib/gateway), want 700 gatewayd"
fi

# ---- remove: the config and the state stay
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq gatewayd >/dev/null 2>&1 ||
  fail "apt-get remove gatewayd"
[ ! -e /usr/sbin/gatewayd ] || fail "/usr/sbin/gatewayd is still there after remove"
[ -e /etc/gateway/gateway.conf ] || fail "remove took the config (a conffile stays until purge)"

# ---- purge: the config goes; the state stays, and says so
"${sudo[@]}" dpkg --purge gatewayd >"$work/purge.out" 2>&1 || fail "dpkg --purge: $(cat "$work/purge.out")"
[ ! -e /etc/gateway/gateway.conf ] || fail "purge left /etc/gateway/gateway.conf"
if [ -e /var/lib/gateway ]; then
  grep -q 'kept /var/lib/gateway' "$work/purge.out" || fail "purge kept /var/lib/gateway without a word"
fi

# ---- purge with GATEWAYD_PURGE_STATE=yes: the state goes too
install_it
"${sudo[@]}" env GATEWAYD_PURGE_STATE=yes dpkg --purge gatewayd >"$work/purge.out" 2>&1 ||
  fail "dpkg --purge with GATEWAYD_PURGE_STATE=yes: $(cat "$work/purge.out")"
[ ! -e /var/lib/gateway ] || [ "$state_before" = yes ] ||
  fail "GATEWAYD_PURGE_STATE=yes left /var/lib/gateway"

# ---- nothing else left
for f in /usr/sbin/gatewayd /usr/bin/gwctl /lib/systemd/system/gatewayd.service \
  /usr/lib/sysusers.d/gatewayd.conf /usr/lib/tmpfiles.d/gatewayd.conf \
  /usr/lib/sysctl.d/60-gatewayd.conf /etc/gateway /usr/share/doc/gatewayd \
  /etc/systemd/system/multi-user.target.wants/gatewayd.service; do
  [ ! -e "$f" ] || fail "$f is left after the purge"
done
echo "test-package: PASS ($deb)"
