#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Reload while sensors send: SIGHUP and gwctl reload apply a changed config without dropping
# the devices it does not concern. A new route serves at once and a removed one answers 4.04;
# a policy that takes one device's command subscription away restarts that device's upstream
# session only; every DTLS session stays. A config with errors, or with a change that needs a
# restart, is refused with its reasons and the running one stays.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_broker
gw_start_subscriber

# $1: more policies; $2: more routes; $3: more lines at the end.
write_config() {
  GW_CONFIG_EXTRA="
downlink = { topic = \"devices/\${device}/commands/#\"; resource = \"cmd\"; };
policies = (
  { name = \"all\"; devices = (\"*\"); statements = (
    { effect = \"allow\"; actions = (\"*\"); resources = (\"*\"); } ); }
  ${1:-}
);
${3:-}"
  gw_write_config
  # Keep the sensor port: gw_write_config picks a free one each time.
  sed -i "s/^  port = [0-9]*;/  port = $PORT;/" "$WORK/gateway.conf"
  COAP_PORT=$PORT
  if [ -n "${2:-}" ]; then
    sed -i "s|^routes = (|routes = (\n  $2,|" "$WORK/gateway.conf"
  fi
}
connects() { grep -c "$1: upstream connected" "$WORK/gatewayd.log"; }
handshakes() { grep -c "$1: sensor connected from" "$WORK/gatewayd.log"; }

PORT=$(gw_free_port udp)
write_config
gw_start_flowing 3 dev-3 10 -n 100000 -i 50 -t 14

# 1. SIGHUP: a new route, nothing else. No session starts again.
write_config "" '{ resource = "pressure"; topic = "devices/${device}/pressure"; }'
kill -HUP "$GATEWAY_PID"
gw_wait_for "grep -q 'reloaded .*: 0 of 3 upstream sessions started again' '$WORK/gatewayd.log'" 10 ||
  gw_fail "SIGHUP did not reload: $(grep -i reload "$WORK/gatewayd.log" | tail -n 3)"
gw_expect_code 2.04 dev-1 post pressure p-1
gw_wait_received "devices/dev-1/pressure p-1"

# 2. gwctl reload: dev-2 may no longer subscribe (its session starts again, without the
# subscription); the route humidity goes.
sed_routes='{ resource = "pressure"; topic = "devices/${device}/pressure"; }'
write_config ', { name = "quiet-dev-2"; devices = ("dev-2"); statements = (
    { effect = "deny"; actions = ("mqtt:subscribe"); resources = ("*"); } ); }' "$sed_routes"
sed -i '/resource = "humidity"/d; s/^\(  { resource = "temp";.*}\),$/\1/' "$WORK/gateway.conf"
out=$(gw_gwctl reload 2>&1) || gw_fail "gwctl reload failed: $out"
grep -q 'reloaded .*: 1 of 3 upstream sessions started again; sensor sessions kept' <<<"$out" ||
  gw_fail "gwctl reload said: $out"
gw_wait_for "[ \$(connects dev-2) -eq 2 ]" 15 || gw_fail "dev-2's session did not start again"
grep -q "dev-2: subscription to devices/dev-2/commands/# refused" "$WORK/gatewayd.log" ||
  gw_fail "dev-2's subscription was not refused by the new policy"
gw_expect_code 4.04 dev-3 post humidity h-1
gw_expect_code 2.04 dev-3 post pressure p-3

# 3. Errors: all reported as FILE:LINE, the running config stays.
cp "$WORK/gateway.conf" "$WORK/good.conf"
sed -i 's/^  reconnect_min = 1;/  reconect_min = 1;/; s/^  publish_timeout = 5;/  publish_timeout = 0;/' \
  "$WORK/gateway.conf"
# gwctl cannot read the broken file either: it asks the daemon on the socket given.
out=$(gw_gwctl -s "$WORK/control.sock" reload 2>&1) && gw_fail "gwctl reload accepted a broken config: $out"
grep -q "gateway.conf:[0-9]*: .*'reconect_min'.*did you mean 'reconnect_min'" <<<"$out" ||
  gw_fail "no did-you-mean for the typo: $out"
grep -q "gateway.conf:[0-9]*: .*publish_timeout" <<<"$out" || gw_fail "range error not reported: $out"
grep -q "the running configuration stays" <<<"$out" || gw_fail "gwctl reload said: $out"
grep -q "the running configuration stays" "$WORK/gatewayd.log" || gw_fail "the failed reload was not logged"
gw_expect_code 2.04 dev-1 post pressure p-1b

# 4. A change that needs a restart: refused, nothing applied.
cp "$WORK/good.conf" "$WORK/gateway.conf"
sed -i "s/^  port = [0-9]*;/  port = $(gw_free_port udp);/" "$WORK/gateway.conf"
sed -i '/resource = "pressure"/d' "$WORK/gateway.conf"
out=$(gw_gwctl reload 2>&1) && gw_fail "gwctl reload accepted a new sensors.port: $out"
grep -q "sensors.port changed .*needs a restart" <<<"$out" || gw_fail "gwctl reload said: $out"
gw_expect_code 2.04 dev-2 post pressure p-2

# 5. The command resource moves to the path of the route removed in 2, then a reload changes
# nothing: the sensors' sessions stay and the commands are served at the new path.
cp "$WORK/good.conf" "$WORK/gateway.conf"
sed -i 's/resource = "cmd"/resource = "humidity"/' "$WORK/gateway.conf"
out=$(gw_gwctl reload 2>&1) || gw_fail "moving the command resource: $out"
out=$(gw_gwctl reload 2>&1) || gw_fail "reloading the same again: $out"
grep -q ': 0 of 3 upstream sessions started again' <<<"$out" || gw_fail "gwctl reload said: $out"
gw_expect_code 2.05 dev-3 get humidity ""
gw_expect_code 4.04 dev-3 get cmd ""

# The sensors kept their DTLS sessions and every reading they sent was acknowledged; dev-1 and
# dev-3 kept their upstream sessions too.
for id in dev-1 dev-2 dev-3; do
  wait "$(sensor_pid "$id")" || true
  if grep -qvE ' (2\.04|stopped)$' "$WORK/sensor-$id.out"; then
    gw_fail "$id got other answers: $(grep -vE ' (2\.04|stopped)$' "$WORK/sensor-$id.out" | head -3)"
  fi
done
# One handshake per gwsensor run, plus one per gw_expect_code (coap-client).
[ "$(handshakes dev-1)" -eq 3 ] || gw_fail "dev-1: $(handshakes dev-1) DTLS handshakes, want 3"
[ "$(handshakes dev-2)" -eq 2 ] || gw_fail "dev-2: $(handshakes dev-2) DTLS handshakes, want 2"
[ "$(connects dev-1)" -eq 1 ] || gw_fail "dev-1 reconnected upstream ($(connects dev-1) connects)"
[ "$(connects dev-3)" -eq 1 ] || gw_fail "dev-3 reconnected upstream ($(connects dev-3) connects)"
gw_wait_delivered 15 dev-1 dev-2 dev-3
gw_pass
