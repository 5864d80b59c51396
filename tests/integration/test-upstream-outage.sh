#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# With spool.ack = upstream, while the broker is down a sensor is told 5.03 with Max-Age,
# never 2.04; when the broker is back the gateway reconnects by itself and messages flow again.
# (With the default, durable, the spool answers instead: test-spool-outage.sh.)
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_broker
GW_CONFIG_EXTRA='spool = { ack = "upstream"; };'
gw_write_config
gw_add_device dev-a
gw_start_gateway 1
gw_expect_code 2.04 dev-a post temp before

kill "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true
gw_wait_for "grep -q 'dev-a: upstream connection to .* lost' '$WORK/gatewayd.log'" 10 ||
  gw_fail "gateway did not notice the broker going away"
gw_expect_code 5.03 dev-a post temp during
grep -q 'Max-Age' "$WORK/coap-last.out" || gw_fail "5.03 without Max-Age"

# Same port, fresh broker: the gateway's backoff (at most 2 s here) brings dev-a back.
mv "$WORK/mosquitto.log" "$WORK/mosquitto-1.log"
gw_run_broker || gw_fail "mosquitto did not restart on port $BROKER_PORT: $(cat "$WORK/mosquitto.log")"
gw_start_subscriber
gw_wait_for "[ \$(grep -c 'dev-a: upstream connected' '$WORK/gatewayd.log') -ge 2 ]" 15 ||
  gw_fail "dev-a did not reconnect"
gw_expect_code 2.04 dev-a post temp after
gw_wait_received "devices/dev-a/telemetry/temp after"
grep -q during "$WORK/sub.out" && gw_fail "the message refused during the outage was published"
gw_pass
