#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `gatewayd -n` prints every config error as FILE:LINE: message and exits 1, or prints
# "configuration OK"; gatewayd refuses to start on a keystore secret others can read.
source "$(dirname "$0")/lib.sh"
: "${GW_TEST_DATA:?}"
gw_setup

bad="$GW_TEST_DATA/conf/bad-values.conf"
rc=0
"$GATEWAYD" -n -c "$bad" >"$WORK/check.out" 2>&1 || rc=$?
[ "$rc" -eq 1 ] || gw_fail "gatewayd -n on a bad config exited $rc, want 1"
while IFS= read -r line; do
  want="$bad${line#FILE}"
  grep -qxF "$want" "$WORK/check.out" || gw_fail "missing error: $want; got: $(cat "$WORK/check.out")"
done <"$GW_TEST_DATA/conf/bad-values.err"
grep -qx "$bad: 16 errors; gatewayd not started" "$WORK/check.out" || gw_fail "no error count line"

out=$("$GATEWAYD" -n -c "$GW_TEST_DATA/conf/good-minimal.conf" 2>&1) || gw_fail "good config refused: $out"
[ "$out" = "configuration OK" ] || gw_fail "gatewayd -n printed '$out'"

# A secret readable by others stops the daemon before it talks to anyone.
gw_pki_init
BROKER_PORT=1
gw_write_config
gw_add_device dev-a
chmod 644 "$WORK/state/keystore/dev-a/psk.key"
rc=0
timeout 10 "$GATEWAYD" -d -c "$WORK/gateway.conf" >"$WORK/gatewayd.log" 2>&1 || rc=$?
[ "$rc" -eq 1 ] || gw_fail "gatewayd started with a world-readable PSK (exit $rc)"
grep -q "psk.key has mode 0644 .* must be mode 0600" "$WORK/gatewayd.log" ||
  gw_fail "no clear message about the PSK file's mode: $(cat "$WORK/gatewayd.log")"
gw_pass
