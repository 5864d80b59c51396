#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The gateway verifies the broker: a certificate issued for another host name is refused with
# a log line that says so, and the sensor is told 5.03 (never a false 2.04; with the default
# spool.ack = durable the spool would keep the reading for a broker that can be trusted).
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_pki_server wrong-host wrong.example "DNS:wrong.example"
gw_start_broker wrong-host
GW_CONFIG_EXTRA='spool = { ack = "upstream"; };'
gw_write_config
gw_add_device dev-a
gw_start_gateway 0
gw_wait_for "grep -q 'dev-a: refusing broker' '$WORK/gatewayd.log'" 15 ||
  gw_fail "no log line for the broker's wrong host name"
grep -q "dev-a: refusing broker ssl://localhost:$BROKER_PORT: its certificate is not issued for the host name \"localhost\"" \
  "$WORK/gatewayd.log" || gw_fail "log line does not name the host: $(grep refusing "$WORK/gatewayd.log" | head -1)"
gw_expect_code 5.03 dev-a post temp 1
grep -q 'Max-Age' "$WORK/coap-last.out" || gw_fail "5.03 without Max-Age"
grep -q "u'dev-a'" "$WORK/mosquitto.log" && gw_fail "dev-a completed a session with the impostor broker"
gw_pass
