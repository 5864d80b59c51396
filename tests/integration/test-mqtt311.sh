#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# upstream.mqtt_version = "3.1.1" against the real broker: each device's session is MQTT 3.1.1
# (mosquitto logs it as protocol p2, MQTT 5 as p5) under the device's own certificate
# identity; a reading arrives without a content type (3.1.1 has no properties: content_type
# defaults to "drop") or with the format as a last level ("suffix"); the command subscription
# works; presence says "online" at connect and, with no DISCONNECT reason code to ask for the
# will, "offline" is published before a clean stop. "property" is refused as FILE:LINE.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_broker
# An MQTT 5 observer too, to see that no content type travels.
gw_start_subscriber5 '%t ct=%C %p'
gw_start_subscriber
GW_CONFIG_EXTRA='
downlink = { topic = "devices/${device}/commands/#"; resource = "cmd"; expiry = 60; };
presence = { topic = "devices/${device}/status"; };'
gw_write_config 'mqtt_version = "3.1.1";'
sed -i 's|^routes = (|routes = (\n  { resource = "env/fmt"; topic = "devices/${device}/fmt"; content_type = "suffix"; },|' \
  "$WORK/gateway.conf"
out=$("$GATEWAYD" -n -c "$WORK/gateway.conf" 2>&1) || gw_fail "test config rejected: $out"

# The same config with content_type "property" is refused, pointing to suffix and drop.
sed 's|topic = "devices/${device}/fmt"; content_type = "suffix";|topic = "devices/${device}/fmt"; content_type = "property";|' \
  "$WORK/gateway.conf" >"$WORK/bad.conf"
out=$("$GATEWAYD" -n -c "$WORK/bad.conf" 2>&1) && gw_fail "content_type property accepted under 3.1.1"
line=$(grep -n 'content_type = "property"' "$WORK/bad.conf" | cut -d: -f1)
grep -qF "$WORK/bad.conf:$line: 'route.content_type' \"property\" is an MQTT 5 property, and 'upstream.mqtt_version' is \"3.1.1\": use \"suffix\"" <<<"$out" ||
  gw_fail "no FILE:LINE error for property under 3.1.1: $out"

gw_add_device dev-a
gw_add_device dev-b
gw_start_gateway 2
for d in dev-a dev-b; do
  # p2: mosquitto's name for MQTT 3.1.1 (p5 for 5); the user is the certificate's identity.
  grep -q "as $d (p2, c1, k60, u'$d')" "$WORK/mosquitto.log" ||
    gw_fail "$d did not connect with MQTT 3.1.1 as user $d: $(grep "as $d " "$WORK/mosquitto.log")"
  gw_wait_received "devices/$d/status online"
done

# A reading with Content-Format 50: published, under the device's identity (the broker's ACL
# lets user dev-a write only under devices/dev-a/), and without a content type.
ka=$(gw_psk dev-a)
timeout 30 coap-client-openssl -v 6 -B 10 -m post -u dev-a -k "$ka" -t 50 -e '{"t":21.5}' \
  "coaps://127.0.0.1:$COAP_PORT/temp" >"$WORK/coap-json.out" 2>&1
grep -q 'c:2.04' "$WORK/coap-json.out" || gw_fail "no 2.04 for the reading: $(tail -n 3 "$WORK/coap-json.out")"
gw_wait_received 'devices/dev-a/telemetry/temp {"t":21.5}'
gw_wait_for "grep -qxF 'devices/dev-a/telemetry/temp ct= {\"t\":21.5}' '$WORK/sub5.out'" 10 ||
  gw_fail "the reading did not arrive without a content type: $(grep telemetry "$WORK/sub5.out")"
# QoS 1 over 3.1.1 with spool.ack upstream semantics is covered by the PUBACK path: a CON
# reading is answered only after the spool or the broker has it; here, it did arrive.
timeout 30 coap-client-openssl -v 6 -B 10 -m post -u dev-a -k "$ka" -t 60 -e 'cbor-ish' \
  "coaps://127.0.0.1:$COAP_PORT/env/fmt" >/dev/null 2>&1
gw_wait_received "devices/dev-a/fmt/cbor cbor-ish"
gw_expect_code 2.04 dev-b put humidity 55
gw_wait_received "devices/dev-b/telemetry/humidity 55"

# A command over dev-a's 3.1.1 subscription reaches its sensor.
mosquitto_pub -h localhost -p "$BROKER_PORT" --cafile "$WORK/pki/ca.pem" \
  --cert "$WORK/pki/observer.pem" --key "$WORK/pki/observer.key" -i cloud -q 1 \
  -t devices/dev-a/commands/valve -m open-valve-311 || gw_fail "mosquitto_pub of the command failed"
gw_wait_for "grep -q 'dev-a: command of 14 bytes' '$WORK/gatewayd.log'" 10 ||
  gw_fail "the command did not reach the gateway: $(grep -i 'command\|subscri' "$WORK/gatewayd.log" | tail -3)"
timeout 30 coap-client-openssl -v 6 -B 10 -m get -u dev-a -k "$ka" \
  "coaps://127.0.0.1:$COAP_PORT/cmd" >"$WORK/cmd.out" 2>&1
grep -q 'open-valve-311' "$WORK/cmd.out" || gw_fail "the sensor did not get the command: $(tail -n 5 "$WORK/cmd.out")"

# A clean stop: "offline" before each DISCONNECT, and the broker saw clean disconnects.
kill -TERM "$GATEWAY_PID"
rc=0
wait "$GATEWAY_PID" || rc=$?
[ "$rc" -eq 0 ] || gw_fail "gatewayd exited $rc after SIGTERM"
for d in dev-a dev-b; do
  grep -q "Client $d disconnected\.$" "$WORK/mosquitto.log" || gw_fail "$d did not disconnect cleanly"
  gw_wait_received "devices/$d/status offline"
done
gw_pass
