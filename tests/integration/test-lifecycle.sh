#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Suspend, resume, disable and revoke one device of 20 under load: within one second its
# sensor's DTLS session is closed and its upstream session disconnected; nothing more of it is
# forwarded; every other device keeps flowing without losing a reading.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_broker
gw_start_subscriber
gw_write_config
fleet=20
gw_start_fleet "$fleet"

# Suspend dev-7.
t0=$(gw_now_ms)
gw_gwctl device suspend dev-7 >/dev/null
wait "$(sensor_pid dev-7)" && gw_fail "dev-7's sensor finished normally after the suspend"
end=$(tail -n 1 "$WORK/sensor-dev-7.out")
case "$end" in
  *closed | *" 4.03") ;;
  *) gw_fail "dev-7's sensor ended with: $end" ;;
esac
t1=${end%% *}
[ $((t1 - t0)) -le 1000 ] || gw_fail "dev-7's sensor was cut off $((t1 - t0)) ms after the suspend"
gw_wait_for "grep -q 'Client dev-7 disconnected' '$WORK/mosquitto.log'" 1 ||
  gw_fail "dev-7's upstream session still open 1 s after the suspend"
gw_log "dev-7 cut off $((t1 - t0)) ms after gwctl returned"
last7=$(acked dev-7)
# A suspended device's sensor cannot even handshake.
[ "$(gw_sensor dev-7 post temp "dev-7 999999")" = none ] || gw_fail "suspended dev-7 still answered"

# Resume: it flows again, from where it stopped.
gw_gwctl device resume dev-7 >/dev/null
gw_wait_for "grep -q 'dev-7: upstream connected' <(tail -n 200 '$WORK/gatewayd.log')" 10 ||
  gw_fail "dev-7 did not reconnect after resume"
sensor dev-7 -n 5 -s $((last7 + 1)) -t 10
wait "$(sensor_pid dev-7)" || gw_fail "dev-7 after resume: $(tail -n 2 "$WORK/sensor-dev-7.out")"
# The sentinel: its last reading after the resume is upstream, so anything of dev-7 forwarded
# while it was suspended (per-device order) is in before it. Nothing is: no reading past the
# five its sensor sent since (the probe, 999999, above all).
gw_wait_received "devices/dev-7/telemetry/temp dev-7 $((last7 + 5))" 30
beyond=$(awk -v n="$last7" '$2 == "dev-7" && $3 > n + 5' "$WORK/sub.out")
[ -z "$beyond" ] || gw_fail "dev-7 forwarded while suspended: $beyond"

# enabled=false acts as suspend; removing the attribute undoes it.
gw_gwctl device set dev-3 enabled=false location=barn-2 >/dev/null
wait "$(sensor_pid dev-3)" && gw_fail "dev-3's sensor finished normally while disabled"
gw_gwctl device list | gw_has -E '^dev-3 +disabled ' || gw_fail "dev-3 not listed as disabled"
gw_gwctl device show dev-3 | gw_has -x 'attr.location: barn-2' || gw_fail "dev-3's attribute not shown"
before=$(grep -c 'dev-3: upstream connected' "$WORK/gatewayd.log")
gw_gwctl device set dev-3 enabled= >/dev/null
gw_wait_for "[ \$(grep -c 'dev-3: upstream connected' '$WORK/gatewayd.log') -gt $before ]" 10 ||
  gw_fail "dev-3 did not reconnect once enabled again"
gw_expect_code 2.04 dev-3 post temp "dev-3 999999"

# Revoke is final: key and PSK destroyed, state kept.
gw_gwctl device revoke dev-9 >/dev/null
wait "$(sensor_pid dev-9)" && gw_fail "dev-9's sensor finished normally after revoke"
for f in key.pem keyref.pem psk.key; do
  [ ! -e "$WORK/state/keystore/dev-9/$f" ] || gw_fail "revoked dev-9 still has $f"
done
out=$(gw_gwctl device resume dev-9 2>&1) && gw_fail "a revoked device was resumed"
grep -q "revoked, which is final" <<<"$out" || gw_fail "resume of a revoked device: $out"
gw_gwctl device list | gw_has -E '^dev-9 +revoked ' || gw_fail "dev-9 not listed as revoked"

# Everyone else ran to the end of their time without a refusal, and every reading that was
# acknowledged reached the broker: no gaps, per device.
gw_check_flowing "$fleet" dev-3 dev-7 dev-9
gw_pass
