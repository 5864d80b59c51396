#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# What a session is called upstream, against the real broker (here one that takes the user
# name from CONNECT, not from the certificate, so that mosquitto's log shows what was sent):
# - upstream.client_id and .username templates, expanded per device with its attributes; a
#   device whose attribute is missing gets no session, and says why;
# - the azure profile: MQTT 3.1.1, user name HOST/DEVICE/?api-version=2021-04-12, a route
#   without a topic publishes to devices/DEVICE/messages/events/ with the resource and the
#   content type ($.ct, $.ce) in the property bag;
# - upstream.alpn: the protocols are offered in the TLS handshake (seen by openssl s_server).
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_broker
# The user name as sent, no password file (certificates still required); per-user ACLs.
kill "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true
sed -i 's/^use_identity_as_username true$/use_identity_as_username false\nallow_anonymous true/' \
  "$WORK/mosquitto.conf"
cat >>"$WORK/acl" <<'ACL'
user dev-a@lab
topic write devices/dev-a/#
user localhost/dev-a/?api-version=2021-04-12
topic write devices/dev-a/messages/events/#
ACL
gw_run_broker || gw_fail "mosquitto did not restart: $(cat "$WORK/mosquitto.out")"
# The observer, too, names its user itself now.
mosquitto_sub -h localhost -p "$BROKER_PORT" --cafile "$WORK/pki/ca.pem" \
  --cert "$WORK/pki/observer.pem" --key "$WORK/pki/observer.key" -i observer -u observer \
  -t 'devices/#' -q 1 -v >>"$WORK/sub.out" 2>"$WORK/sub.err" &
GW_PIDS+=("$!")
gw_wait_for "grep -q \"observer.*u'observer'\" '$WORK/mosquitto.log' 2>/dev/null" 10 ||
  gw_fail "subscriber did not connect: $(cat "$WORK/sub.err")"

# ---- generic, with client id and user name templates ----
gw_write_config 'client_id = "${gateway}.${device}"; username = "${device}@${attr.site}";'
gw_add_device dev-a
gw_add_device dev-b
out=$(gw_gwctl device set dev-a site=lab 2>&1) || gw_fail "gwctl device set: $out"
gw_start_gateway 1
user=$(gw_broker_username gw-test.dev-a)
[ "$user" = dev-a@lab ] ||
  gw_fail "broker saw client gw-test.dev-a as user '$user': $(grep 'New client' "$WORK/mosquitto.log")"
grep -q "as gw-test.dev-a (p5, " "$WORK/mosquitto.log" || gw_fail "dev-a's session is not MQTT 5 by default"
# dev-b has no site: no session, and the log says which part is missing.
gw_wait_for "grep -q 'dev-b: no upstream session: cannot build its MQTT client id or user name' '$WORK/gatewayd.log'" 10 ||
  gw_fail "no log line for dev-b's missing attribute"
grep -q 'dev-b: no upstream session: .*an attribute they name is not set' "$WORK/gatewayd.log" ||
  gw_fail "dev-b's log line does not say why: $(grep 'dev-b: no upstream' "$WORK/gatewayd.log")"
grep -q "gw-test.dev-b\|as dev-b " "$WORK/mosquitto.log" && gw_fail "dev-b connected without its attribute"
gw_expect_code 2.04 dev-a post temp 21
gw_wait_received "devices/dev-a/telemetry/temp 21"
kill -TERM "$GATEWAY_PID"
wait "$GATEWAY_PID" || gw_fail "gatewayd exited $? after SIGTERM"
mv "$WORK/gatewayd.log" "$WORK/gatewayd-generic.log"

# ---- azure, on the same broker (whose host name is localhost) ----
gw_write_config 'profile = "azure";'
# Routes without a topic: the profile's. A presence group would be refused (tested in units).
sed -i '/^routes = ($/,/^);$/c\routes = ( { resource = "env/temp"; } );' "$WORK/gateway.conf"
out=$("$GATEWAYD" -n -c "$WORK/gateway.conf" 2>&1) || gw_fail "azure config rejected: $out"
gw_start_gateway 1
user=$(gw_broker_username dev-a)
[ "$user" = "localhost/dev-a/?api-version=2021-04-12" ] ||
  gw_fail "azure: broker saw dev-a as user '$user'"
grep -q "as dev-a (p2, c1, " "$WORK/mosquitto.log" || gw_fail "azure: dev-a's session is not MQTT 3.1.1"
timeout 30 coap-client-openssl -v 6 -B 10 -m post -u dev-a -k "$(gw_psk dev-a)" -t 50 \
  -e '{"t":19}' "coaps://127.0.0.1:$COAP_PORT/env/temp" >"$WORK/coap-azure.out" 2>&1
grep -q 'c:2.04' "$WORK/coap-azure.out" || gw_fail "azure: no 2.04: $(tail -n 3 "$WORK/coap-azure.out")"
gw_wait_received 'devices/dev-a/messages/events/path=env%2Ftemp&$.ct=application%2Fjson&$.ce=utf-8 {"t":19}'
kill -TERM "$GATEWAY_PID"
wait "$GATEWAY_PID" || gw_fail "gatewayd exited $? after SIGTERM"
mv "$WORK/gatewayd.log" "$WORK/gatewayd-azure.log"

# ---- ALPN: what the TLS handshake offers, seen by openssl s_server ----
TLS_PORT=$(gw_free_port tcp)
stdbuf -oL openssl s_server -accept "$TLS_PORT" -cert "$WORK/pki/broker.pem" -key "$WORK/pki/broker.key" \
  -alpn x-amzn-mqtt-ca -www >"$WORK/s_server.out" 2>&1 </dev/null &
GW_PIDS+=("$!")
gw_wait_for "[ -n \"\$(ss -Hltn 'sport = :$TLS_PORT')\" ]" 10 || gw_fail "openssl s_server did not start"
BROKER_PORT=$TLS_PORT gw_write_config 'profile = "aws"; alpn = ("mqtt", "x-amzn-mqtt-ca");'
: >"$WORK/gatewayd.log"
"$GATEWAYD" -d -c "$WORK/gateway.conf" >>"$WORK/gatewayd.log" 2>&1 &
GATEWAY_PID=$!
GW_PIDS+=("$GATEWAY_PID")
gw_wait_for "grep -q 'ALPN protocols advertised by the client' '$WORK/s_server.out'" 15 ||
  gw_fail "no ALPN offered: $(head -c 600 "$WORK/s_server.out")"
grep -q 'ALPN protocols advertised by the client: mqtt, x-amzn-mqtt-ca' "$WORK/s_server.out" ||
  gw_fail "ALPN offered: $(grep ALPN "$WORK/s_server.out")"
# s_server speaks no MQTT: the connect fails and is tried again, and every try offers the
# list again (one TLS context holds it for all connects).
gw_wait_for "[ \$(grep -c 'ALPN protocols advertised by the client: mqtt, x-amzn-mqtt-ca' '$WORK/s_server.out') -ge 3 ]" 20 ||
  gw_fail "the retries did not offer ALPN: $(grep -c ALPN "$WORK/s_server.out") handshakes seen"
gw_pass
