#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Three sensors publish through gatewayd; the broker sees three identities, each confined to
# its own topics by the broker's ACL; SIGTERM disconnects every session cleanly. With
# spool.ack = upstream a sensor hears the broker's own verdict (PUBACK) on each message.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_broker
gw_start_subscriber
GW_CONFIG_EXTRA='spool = { ack = "upstream"; };'
gw_write_config
for d in dev-a dev-b dev-c; do gw_add_device "$d"; done
# An impostor: device dev-x whose certificate was (mis)issued for CN=dev-a, so the broker
# knows it as user "dev-a".
gw_add_device dev-x dev-a
gw_start_gateway 4

for d in dev-a dev-b dev-c; do
  gw_expect_code 2.04 "$d" post temp "reading-$d"
  gw_wait_received "devices/$d/telemetry/temp reading-$d"
  user=$(gw_broker_username "$d")
  [ "$user" = "$d" ] || gw_fail "broker saw client $d as user '$user', want '$d'"
done
gw_expect_code 2.04 dev-b put humidity 55
gw_wait_received "devices/dev-b/telemetry/humidity 55"

# The impostor connects as user dev-a and may not write under devices/dev-x: the broker's
# PUBACK says "not authorised" and the sensor is told 4.03, not a false 2.04.
[ "$(gw_broker_username dev-x)" = dev-a ] || gw_fail "impostor not seen as user dev-a"
gw_expect_code 4.03 dev-x post temp stolen
grep -q "dev-x: broker refused a publish: Not authorized" "$WORK/gatewayd.log" ||
  gw_fail "no log line for the refused publish"

# The broker's ACL itself: a certificate for dev-a cannot publish into devices/dev-b/#.
gw_pki_cert forger dev-a "extendedKeyUsage=clientAuth"
out=$(timeout 10 mosquitto_pub -h localhost -p "$BROKER_PORT" --cafile "$WORK/pki/ca.pem" \
  --cert "$WORK/pki/forger.pem" --key "$WORK/pki/forger.key" -i forger -V mqttv5 -q 1 \
  -t devices/dev-b/telemetry/temp -m forged 2>&1 || true)
case "$out" in
  *"Not authorized"*) ;;
  *) gw_fail "mosquitto_pub as dev-a into devices/dev-b was not refused: $out" ;;
esac

# Resources without a route and methods other than POST/PUT are not forwarded.
gw_expect_code 4.04 dev-a post nowhere x
gw_expect_code 4.05 dev-a get temp x

# A control message after everything above: anything forged or stolen would be in by now.
gw_expect_code 2.04 dev-c post temp last
gw_wait_received "devices/dev-c/telemetry/temp last"
if grep -qE 'forged|stolen' "$WORK/sub.out"; then
  gw_fail "a refused message reached the subscriber: $(cat "$WORK/sub.out")"
fi
[ "$(wc -l <"$WORK/sub.out")" -eq 5 ] || gw_fail "want 5 messages upstream, got: $(cat "$WORK/sub.out")"

# SIGTERM: every device sends DISCONNECT, and the daemon exits 0.
kill -TERM "$GATEWAY_PID"
gw_wait_for "! kill -0 $GATEWAY_PID 2>/dev/null" 10 || gw_fail "gatewayd still running 10 s after SIGTERM"
rc=0
wait "$GATEWAY_PID" || rc=$?
[ "$rc" -eq 0 ] || gw_fail "gatewayd exited $rc after SIGTERM"
for d in dev-a dev-b dev-c dev-x; do
  grep -q "Client $d disconnected\.$" "$WORK/mosquitto.log" ||
    gw_fail "$d did not disconnect cleanly"
done
gw_pass
