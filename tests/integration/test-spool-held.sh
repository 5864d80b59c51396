#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A device the broker refuses keeps the readings it was answered 2.04 for: gwctl device show
# and the metrics say they are held; a certificate the broker accepts delivers them under it.
# gwctl device drop-spool drops another refused device's (counted, and never delivered), and
# is refused for a device whose session is up and delivering.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_pki_crl_init
gw_start_broker
gw_start_subscriber
gw_write_config
for id in dev-a dev-b dev-c; do gw_add_device "$id"; done
gw_start_gateway 3

# The broker away: readings are spooled and answered 2.04 (spool.ack durable).
kill "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true
gw_expect_code 2.04 dev-a post temp held-a1
gw_expect_code 2.04 dev-a post temp held-a2
gw_expect_code 2.04 dev-b post temp held-b1
# dev-a and dev-b revoked while it was away: at its return both are refused.
gw_pki_revoke dev-a
gw_pki_revoke dev-b
gw_run_broker || gw_fail "mosquitto did not restart: $(cat "$WORK/mosquitto.out")"
# The observer subscribed again before anything can be delivered: mosquitto_sub's own
# reconnect may come after dev-a's held readings went.
gw_start_subscriber
for id in dev-a dev-b; do
  gw_wait_for "grep -q '$id: rejected upstream: .*certificate revoked' '$WORK/gatewayd.log'" 30 ||
    gw_fail "$id not refused: $(grep "$id" "$WORK/gatewayd.log" | tail -3)"
done

show=$(gw_gwctl device show dev-a)
grep -q '^spooled: 2 messages' <<<"$show" || gw_fail "device show dev-a: $show"
grep -q '^spool-held: the broker refuses this device: its 2 spooled messages wait' <<<"$show" ||
  gw_fail "device show dev-a says nothing of its held messages: $show"
metrics=$(gw_gwctl metrics)
grep -qx 'gatewayd_device_spool_held_messages{device="dev-a"} 2' <<<"$metrics" ||
  gw_fail "held metric: $(grep spool_held <<<"$metrics")"
grep -qx 'gatewayd_device_spool_held_messages{device="dev-c"} 0' <<<"$metrics" ||
  gw_fail "held metric of a connected device: $(grep spool_held <<<"$metrics")"

# Dropped by the operator: counted, said, and never delivered.
out=$(gw_gwctl device drop-spool dev-b 2>&1) || gw_fail "drop-spool dev-b: $out"
grep -q '^dev-b: 1 spooled messages ([0-9]* bytes) dropped$' <<<"$out" || gw_fail "drop-spool said: $out"
gw_gwctl device show dev-b | gw_has '^spooled: 0 messages' || gw_fail "dev-b: $(gw_gwctl device show dev-b)"
gw_gwctl device show dev-b | gw_has '^spool-held' && gw_fail "dev-b still shows held messages"
gw_gwctl metrics | gw_has -x 'gatewayd_dropped_total{reason="operator"} 1' ||
  gw_fail "operator drops: $(gw_gwctl metrics | grep dropped_total)"
# A device connected and delivering: refused, with what to do. dev-c reconnects after the
# broker's restart on its own backoff: up first.
gw_wait_for "$GWCTL -c '$WORK/gateway.conf' device show dev-c | grep -qx 'upstream: connected'" 10 ||
  gw_fail "dev-c did not reconnect: $(gw_gwctl device show dev-c)"
out=$(gw_gwctl device drop-spool dev-c 2>&1) && gw_fail "drop-spool of a connected device: $out"
grep -q 'its upstream session is up' <<<"$out" || gw_fail "drop-spool dev-c said: $out"

# New certificates (the same keys, new serials), which the broker accepts: dev-a's held
# readings go under it, in order; dev-b's next reading goes, its dropped one never.
for id in dev-a dev-b; do
  openssl x509 -req -in "$WORK/pki/$id.csr" -CA "$WORK/pki/ca.pem" -CAkey "$WORK/pki/ca.key" \
    -CAcreateserial -days 2 -subj "/CN=$id" -extfile "$WORK/pki/client.ext" \
    -out "$WORK/pki/$id-new.pem" 2>/dev/null || gw_fail "test CA could not sign $id again"
  out=$(gw_gwctl device import-cert "$id" "$WORK/pki/$id-new.pem" 2>&1) ||
    gw_fail "import-cert $id: $out"
done
gw_wait_received "devices/dev-a/telemetry/temp held-a1" 30
gw_wait_received "devices/dev-a/telemetry/temp held-a2"
[ "$(grep -o 'held-a[12]' "$WORK/sub.out" | tr '\n' ' ')" = "held-a1 held-a2 " ] ||
  gw_fail "dev-a's held readings, not once each in order: $(grep dev-a "$WORK/sub.out")"
gw_wait_for "grep -q 'dev-b: upstream connected' '$WORK/gatewayd.log'" 30 || gw_fail "dev-b did not reconnect"
gw_expect_code 2.04 dev-b post temp after-b
# dev-b's reading after the drop arrived: per-device order, so the dropped one would be before it.
gw_wait_received "devices/dev-b/telemetry/temp after-b"
grep -q 'held-b1' "$WORK/sub.out" && gw_fail "dev-b's dropped reading was delivered"
gw_gwctl device show dev-a | gw_has '^spooled: 0 messages' || gw_fail "dev-a: $(gw_gwctl device show dev-a)"
gw_pass
