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
gw_gwctl device list | gw_has -E '^dev-7 +active +soft +[a-z]+ +rejected-upstream ' ||
  gw_fail "device list: $(gw_gwctl device list | grep dev-7)"
gw_gwctl device show dev-7 | gw_has '^upstream-last-error: .*certificate revoked' ||
  gw_fail "device show: $(gw_gwctl device show dev-7)"
gw_gwctl device list | grep -E '^dev-' | grep -v '^dev-7 ' | gw_has -v ' connected ' &&
  gw_fail "another device is not connected: $(gw_gwctl device list)"

# dev-7's sensor keeps its readings: once told 5.03, never 2.04 again. (Its run may end
# just as the refusal is known: TLS 1.3 delivers the broker's alert after the handshake, so the
# first refused connect can look like a network failure, spooled for, and only the next
# connect, a backoff later, names the revocation. Hence a reading of its own after that.)
wait "$(sensor_pid dev-7)" || true
last=$(acked dev-7)
awk '$3 == "5.03" { refused = 1 } refused && $3 == "2.04" { print; exit 1 }' "$WORK/sensor-dev-7.out" ||
  gw_fail "dev-7's sensor got 2.04 after it was told 5.03"
gw_expect_code 5.03 dev-7 post temp after-refusal
awk -v n="$last" '$2 == "dev-7" && $3 > n + 1' "$WORK/sub.out" | gw_has . &&
  gw_fail "dev-7 published after it was refused"

gw_check_flowing "$fleet" dev-7
gw_pass
