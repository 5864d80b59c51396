#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# TLS session resumption, on the tpm backend: after the network between the gateway and the
# broker is cut (the broker stays up), every device reconnects with a resumed session and the
# TPM signs nothing; a device suspended and resumed, and one given a new certificate, connect
# with a full handshake (one signature each). A relay (tests/tools/netcut) stands for the
# network.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_swtpm
gw_start_broker
# The gateway reaches the broker through the relay; a cut lasts a second.
gw_start_netcut 1
GW_BACKEND=tpm gw_write_config
for id in dev-a dev-b dev-c; do gw_add_device "$id"; done
gw_start_gateway 3

# Signatures so far, from the TPM's operation histogram.
signatures() {
  gw_gwctl metrics | awk '/^gatewayd_tpm_operation_duration_seconds_count\{op="sign"\}/ { print $2 }'
}
connects() { gw_count "$1: upstream connected" "$WORK/gatewayd.log"; }
resumed() { gw_count "$1: upstream connected .*(TLS session resumed)" "$WORK/gatewayd.log"; }

before=$(signatures)
[ "$before" -ge 3 ] || gw_fail "expected a signature per device so far, metrics say $before"
gw_netcut_cut >/dev/null
for id in dev-a dev-b dev-c; do
  gw_wait_for "[ \$(connects $id) -ge 2 ]" 20 || gw_fail "$id did not reconnect after the cut"
  [ "$(resumed "$id")" -eq 1 ] || gw_fail "$id reconnected with a full handshake: $(grep "$id: upstream" "$WORK/gatewayd.log")"
done
after=$(signatures)
[ "$after" -eq "$before" ] || gw_fail "the TPM signed $((after - before)) times for resumed reconnects"
metrics=$(gw_gwctl metrics)
grep -q '^gatewayd_upstream_tls_handshakes_total{kind="resumed"} 3$' <<<"$metrics" ||
  gw_fail "metrics do not count 3 resumed handshakes: $(grep tls_handshakes <<<"$metrics")"

# Suspended and resumed: its session was dropped, so a full handshake.
gw_gwctl device suspend dev-b >/dev/null || gw_fail "cannot suspend dev-b"
gw_gwctl device resume dev-b >/dev/null || gw_fail "cannot resume dev-b"
gw_wait_for "[ \$(connects dev-b) -ge 3 ]" 20 || gw_fail "dev-b did not reconnect after resume"
[ "$(resumed dev-b)" -eq 1 ] || gw_fail "dev-b resumed its old TLS session after a suspend"
[ "$(signatures)" -eq $((after + 1)) ] || gw_fail "dev-b's new session took $(($(signatures) - after)) signatures, not 1"

# A new certificate for the same key: a full handshake under it.
openssl x509 -req -in "$WORK/pki/dev-c.csr" -CA "$WORK/pki/ca.pem" -CAkey "$WORK/pki/ca.key" \
  -CAcreateserial -days 3 -subj "/CN=dev-c" -extfile "$WORK/pki/client.ext" \
  -out "$WORK/pki/dev-c-2.pem" 2>/dev/null || gw_fail "test CA could not sign dev-c's request"
out=$(gw_gwctl device import-cert dev-c "$WORK/pki/dev-c-2.pem" 2>&1) || gw_fail "import-cert: $out"
gw_wait_for "[ \$(connects dev-c) -ge 3 ]" 20 || gw_fail "dev-c did not reconnect with its new certificate"
[ "$(resumed dev-c)" -eq 1 ] || gw_fail "dev-c resumed a session of its old certificate"
[ "$(signatures)" -eq $((after + 2)) ] || gw_fail "dev-c's new certificate took $(($(signatures) - after - 1)) signatures, not 1"

# A broker restart loses its ticket keys: the first refused resumption drops every older
# session, and each device connects with one full handshake.
before=$(signatures)
kill "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true
mv "$WORK/mosquitto.log" "$WORK/mosquitto-1.log"
gw_run_broker || gw_fail "mosquitto did not restart on port $BROKER_PORT"
for id in dev-a dev-b dev-c; do
  gw_wait_for "grep -q 'New client connected .* as $id (' '$WORK/mosquitto.log'" 20 ||
    gw_fail "$id did not reconnect after the broker restarted"
done
gw_wait_for "grep -q 'the broker resumes no earlier TLS session' '$WORK/gatewayd.log'" 10 ||
  gw_fail "the stale sessions were not dropped after the broker restart"
gw_wait_for "[ \$(signatures) -eq $((before + 3)) ]" 10 ||
  gw_fail "3 devices reconnected to a restarted broker with $(($(signatures) - before)) signatures"

# Readings still flow on a resumed session.
gw_start_subscriber
gw_expect_code 2.04 dev-a post temp resumed-ok
gw_wait_received "devices/dev-a/telemetry/temp resumed-ok"
gw_pass
