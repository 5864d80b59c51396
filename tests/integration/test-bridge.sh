#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The mapping from CoAP to MQTT, and access policies, against the real broker:
# - the request's Content-Format travels as the MQTT 5 content type (or as a topic level);
# - a CON becomes QoS 1, a NON QoS 0;
# - an upload in RFC 7959 blocks arrives whole; one past sensors.max_payload gets 4.13 + Size1;
# - a retransmitted CON (same message ID) is answered again but published once;
# - a policy's deny wins over its allow, by device attribute; a denied uplink gets 4.03.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_broker
# An observer that prints the content type and QoS as well.
gw_start_subscriber5 '%t qos=%q ct=%C %p'
gw_start_subscriber
GW_CONFIG_EXTRA='
policies = (
  { name = "sensors"; devices = ("*");
    statements = (
      { effect = "allow"; actions = ("coap:post", "coap:put");
        resources = ("coap:temp", "coap:humidity", "coap:env/+"); },
      { effect = "allow"; actions = ("mqtt:publish"); resources = ("mqtt:devices/${device}/#"); },
      { effect = "deny"; actions = ("coap:post", "coap:put"); resources = ("coap:humidity");
        conditions = ( { attribute = "site"; equals = ("lab"); } ); }
    ); }
);'
gw_write_config 'connect_timeout = 5;'
# sensors.max_payload 256, and a route that names the format in its topic.
sed -i 's/^  port = \([0-9]*\);$/  port = \1;\n  max_payload = 256;/' "$WORK/gateway.conf"
sed -i 's|^routes = (|routes = (\n  { resource = "env/fmt"; topic = "devices/${device}/fmt"; content_type = "suffix"; },|' \
  "$WORK/gateway.conf"
"$GATEWAYD" -n -c "$WORK/gateway.conf" 2>&1 | gw_has 'configuration OK' ||
  gw_fail "test config rejected: $("$GATEWAYD" -n -c "$WORK/gateway.conf" 2>&1)"
gw_add_device dev-a
gw_add_device dev-b
gw_start_gateway 2
ka=$(gw_psk dev-a)

# Content-Format 50 (application/json) as the MQTT 5 property; a CON is QoS 1.
timeout 30 coap-client-openssl -v 6 -B 10 -m post -u dev-a -k "$ka" -t 50 -e '{"t":21.5}' \
  "coaps://127.0.0.1:$COAP_PORT/temp" >"$WORK/coap-json.out" 2>&1
gw_wait_for "grep -qF 'devices/dev-a/telemetry/temp qos=1 ct=application/json {\"t\":21.5}' '$WORK/sub5.out'" 10 ||
  gw_fail "no QoS 1 JSON message with its content type: $(cat "$WORK/sub5.out")"
# A NON is QoS 0 (the observer subscribed at 1: it sees the publish's own QoS).
timeout 30 coap-client-openssl -v 6 -B 3 -N -m post -u dev-a -k "$ka" -e 'non-1' \
  "coaps://127.0.0.1:$COAP_PORT/temp" >"$WORK/coap-non.out" 2>&1
gw_wait_for "grep -qF 'devices/dev-a/telemetry/temp qos=0 ct= non-1' '$WORK/sub5.out'" 10 ||
  gw_fail "the NON did not arrive at QoS 0: $(grep non-1 "$WORK/sub5.out")"
# The format as a last topic level (MQTT 3.1.1 readers): 60 is cbor.
timeout 30 coap-client-openssl -v 6 -B 10 -m post -u dev-a -k "$ka" -t 60 -e 'cbor-ish' \
  "coaps://127.0.0.1:$COAP_PORT/env/fmt" >/dev/null 2>&1
gw_wait_received "devices/dev-a/fmt/cbor cbor-ish"

# Block1: 200 bytes in 64-byte blocks arrive as one message; 400 bytes are refused at once.
big=$(head -c 200 /dev/zero | tr '\0' 'x')
timeout 30 coap-client-openssl -v 6 -B 10 -b 64 -m post -u dev-a -k "$ka" -e "$big" \
  "coaps://127.0.0.1:$COAP_PORT/temp" >"$WORK/coap-block.out" 2>&1
gw_wait_received "devices/dev-a/telemetry/temp $big"
# The answer to the last of the 4 blocks echoes its Block1 option (RFC 7959 section 2.3).
grep -q 'Block1:3/_/64' "$WORK/coap-block.out" || gw_fail "the upload did not go in 4 blocks: $(grep -o 'Block1:[^ ]*' "$WORK/coap-block.out")"
huge=$(head -c 400 /dev/zero | tr '\0' 'y')
timeout 30 coap-client-openssl -v 6 -B 10 -b 64 -m post -u dev-a -k "$ka" -e "$huge" \
  "coaps://127.0.0.1:$COAP_PORT/temp" >"$WORK/coap-huge.out" 2>&1
grep -q 'c:4.13' "$WORK/coap-huge.out" || gw_fail "no 4.13 for 400 bytes: $(grep -o 'c:[0-9.]*' "$WORK/coap-huge.out" | tr '\n' ' ')"
grep -q 'Size1:256' "$WORK/coap-huge.out" || gw_fail "4.13 without Size1 256: $(grep 4.13 "$WORK/coap-huge.out")"
timeout 30 coap-client-openssl -v 6 -B 10 -m post -u dev-a -k "$ka" -e "$huge" \
  "coaps://127.0.0.1:$COAP_PORT/temp" >"$WORK/coap-huge1.out" 2>&1
grep -q 'c:4.13' "$WORK/coap-huge1.out" || gw_fail "no 4.13 for 400 bytes in one message"
# The sentinel: a later reading of dev-a's upstream; per-device order puts the refused ones,
# had they been published, before it.
gw_expect_code 2.04 dev-a post temp after-huge
gw_wait_received "devices/dev-a/telemetry/temp after-huge"
grep -q "$huge" "$WORK/sub.out" && gw_fail "a message past max_payload was published"

# A retransmitted CON: answered 2.04 again, published once.
sensor dev-b -n 5 -R -t 20
wait "$(sensor_pid dev-b)" || gw_fail "gwsensor -R failed: $(cat "$WORK/sensor-dev-b.out")"
[ "$(grep -c ' again 2.04$' "$WORK/sensor-dev-b.out")" = 5 ] ||
  gw_fail "retransmissions were not answered 2.04: $(cat "$WORK/sensor-dev-b.out")"
# The sentinel: a duplicate publish of a retransmission would be in before it (per-device order).
gw_expect_code 2.04 dev-b post temp sentinel-b
gw_wait_received "devices/dev-b/telemetry/temp sentinel-b"
for n in 1 2 3 4 5; do
  c=$(gw_count -xF "devices/dev-b/telemetry/temp dev-b $n" "$WORK/sub.out")
  [ "$c" = 1 ] || gw_fail "reading $n of dev-b was published $c times"
done

# Policies: dev-b at site lab may not POST humidity; temp still goes. dev-a may.
out=$(gw_gwctl device set dev-b site=lab 2>&1) || gw_fail "gwctl device set: $out"
gw_expect_code 4.03 dev-b post humidity 55
grep -q "dev-b: POST to humidity refused: denied by policy 'sensors'" "$WORK/gatewayd.log" ||
  gw_fail "no log line for the denial: $(grep refused "$WORK/gatewayd.log" | tail -2)"
gw_expect_code 2.04 dev-b post temp 20
gw_expect_code 2.04 dev-a post humidity 56
gw_wait_received "devices/dev-a/telemetry/humidity 56"
# The sentinel for dev-b's denied humidity is dev-b's temp after it (per-device order).
gw_wait_received "devices/dev-b/telemetry/temp 20"
grep -q 'telemetry/humidity 55' "$WORK/sub.out" && gw_fail "a denied message was published"
# The denial is counted (shown at stop until metrics come).
kill -TERM "$GATEWAY_PID"
wait "$GATEWAY_PID" || gw_fail "gatewayd exited $? on SIGTERM: $(tail -n 20 "$WORK/gatewayd.log")"
grep -q 'router: .* 1 denied by policy, ' "$WORK/gatewayd.log" ||
  gw_fail "the denial was not counted: $(grep 'router:' "$WORK/gatewayd.log")"
gw_pass
