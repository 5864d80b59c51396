#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The cloud revokes one device of 20 under load: its certificate goes on the CRL and mosquitto
# reloads it. mosquitto 2.0.11 keeps sessions that are already up (measured), so the device is
# refused when it next connects: here after its session is taken over. It is then marked
# rejected-upstream with the broker's reason, and its sensor is told 5.03, never 2.04; the
# other 19 keep flowing without losing an acknowledged reading.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_pki_crl_init
gw_start_broker
gw_start_subscriber
gw_write_config
fleet=20
gw_start_fleet "$fleet"

gw_pki_revoke dev-7
kill -HUP "$BROKER_PID"
gw_wait_for "grep -q 'Reloading config' '$WORK/mosquitto.log'" 5 || gw_fail "mosquitto did not reload"
# Another client taking dev-7's client id makes the broker drop the gateway's session.
timeout 10 mosquitto_pub -h localhost -p "$BROKER_PORT" --cafile "$WORK/pki/ca.pem" \
  --cert "$WORK/pki/observer.pem" --key "$WORK/pki/observer.key" -i dev-7 -V mqttv5 \
  -t devices/none -m takeover >/dev/null 2>&1 || true
gw_wait_for "grep -q 'dev-7: rejected upstream: .*certificate revoked' '$WORK/gatewayd.log'" 15 ||
  gw_fail "dev-7 not marked rejected: $(grep dev-7 "$WORK/gatewayd.log" | tail -3)"
gw_gwctl device list | grep -qE '^dev-7 +active +soft +rejected-upstream ' ||
  gw_fail "device list: $(gw_gwctl device list | grep dev-7)"
gw_gwctl device show dev-7 | grep -q '^upstream-last-error: .*certificate revoked' ||
  gw_fail "device show: $(gw_gwctl device show dev-7)"
gw_gwctl device list | grep -E '^dev-' | grep -v '^dev-7 ' | grep -qv ' connected ' &&
  gw_fail "another device is not connected: $(gw_gwctl device list)"

# dev-7's sensor keeps its readings: everything after the revocation is 5.03.
wait "$(sensor_pid dev-7)" || true
last=$(acked dev-7)
tail -n 3 "$WORK/sensor-dev-7.out" | grep -q ' 5.03$' || gw_fail "dev-7's sensor was not told 5.03: $(tail -n 3 "$WORK/sensor-dev-7.out")"
awk -v n="$last" '$2 == "dev-7" && $3 > n + 1' "$WORK/sub.out" | grep -q . &&
  gw_fail "dev-7 published after it was refused"

gw_check_flowing "$fleet" dev-7
gw_pass
