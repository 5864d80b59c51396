#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The gateway's main job end to end, on this machine only: a software TPM (swtpm) holding the
# device keys, a throwaway CA, mosquitto on 127.0.0.1 as the cloud (mutual TLS, certificate
# identity as username, per-device ACL), gatewayd, and three sensors sending readings with
# coap-client-openssl over DTLS-PSK.
# Prints what the broker received and under which username; stops everything it started.
# Installs what it needs. Set GW_KEEP=1 to keep the temp dir with every log and config.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh all
scripts/build.sh .build/demo

export GATEWAYD=$PWD/.build/demo/gatewayd GWCTL=$PWD/.build/demo/gwctl GW_TEST=demo
source tests/integration/lib.sh
gw_setup

say() { printf '\n== %s\n' "$*"; }

say "a throwaway CA and mosquitto on 127.0.0.1 as the cloud: require_certificate,"
say "use_identity_as_username, and an ACL that lets each device write only devices/<its id>/#"
gw_pki_init
gw_start_broker
gw_start_subscriber
echo "listening on port $BROKER_PORT"
say "swtpm as the gateway's TPM 2.0 (no resource manager), keystore backend \"tpm\""
gw_start_swtpm
echo "swtpm on port $SWTPM_PORT"
GW_BACKEND=tpm gw_write_config

say "three devices: gwctl device add (key in the TPM, and a PSK), csr, the CA signs, import-cert"
sensors=(sensor-1 sensor-2 sensor-3)
for s in "${sensors[@]}"; do gw_add_device "$s"; done
gw_gwctl device list | sed 's/^/  /'
echo "  on disk, TPM-wrapped keys only:"
for s in "${sensors[@]}"; do
  printf '    %s: %s\n' "$s" "$(head -n 1 "$WORK/state/keystore/$s/key.tss2.pem")"
done

say "gatewayd: one MQTT session per device, each with its own certificate"
gw_start_gateway ${#sensors[@]}
grep -E 'ready:|upstream connected' "$WORK/gatewayd.log" | sed 's/^/  /'

say "three sensors POST readings over CoAP/DTLS, each with its own PSK identity and key"
readings=(21.5 19.8 23.1)
for i in "${!sensors[@]}"; do
  s=${sensors[$i]}
  code=$(gw_sensor "$s" post temp "${readings[$i]}")
  printf '  %s: POST coaps://127.0.0.1:%s/temp "%s" -> %s\n' "$s" "$COAP_PORT" "${readings[$i]}" "$code"
  [ "$code" = 2.04 ] || gw_fail "$s got $code"
done
for i in "${!sensors[@]}"; do
  gw_wait_received "devices/${sensors[$i]}/telemetry/temp ${readings[$i]}"
done

say "what the broker received, and the username (certificate identity) each came in under"
printf '  %-32s %-8s %-10s %s\n' TOPIC PAYLOAD CLIENT USERNAME
# mosquitto logs "Received PUBLISH from CLIENT (d0, q1, r0, m1, 'TOPIC', ... (N bytes))".
grep -o "Received PUBLISH from [^ ]* (d[0-9], q[0-9], r[0-9], m[0-9]*, 'devices/[^']*'" \
  "$WORK/mosquitto.log" | sed "s/Received PUBLISH from \([^ ]*\) .*'\(devices\/[^']*\)'/\1 \2/" |
  while read -r client topic; do
    payload=$(grep -F "$topic " "$WORK/sub.out" | head -n 1 | cut -d' ' -f2-)
    printf '  %-32s %-8s %-10s %s\n' "$topic" "$payload" "$client" "$(gw_broker_username "$client")"
  done

say "what the operator sees: gwctl status, and a few of gwctl metrics"
gw_gwctl status | sed 's/^/  /'
gw_gwctl metrics | grep -E '^gatewayd_(messages_total|upstream_sessions |upstream_tls_handshakes_total|tpm_commands_total|tpm_operation_duration_seconds_(count|sum)\{op="sign"\})' |
  sed 's/^/  /'

say "stopping gatewayd (SIGTERM), then mosquitto and the subscriber"
kill -TERM "$GATEWAY_PID"
gw_wait_for "! kill -0 $GATEWAY_PID 2>/dev/null" 10 || gw_fail "gatewayd did not stop"
grep -E 'keystore: [0-9]+ TPM commands, ' "$WORK/gatewayd.log" | sed 's/^/  /' || true
tail -n 1 "$WORK/gatewayd.log" | sed 's/^/  /'
echo
echo "demo OK"
