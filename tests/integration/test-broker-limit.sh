#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A broker that takes packets of at most 300 bytes (its CONNACK says so): a spooled message
# larger than that is dropped with a warning instead of ending the device's session again and
# again, and the device's later messages still flow.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
GW_BROKER_EXTRA='max_packet_size 300'
gw_start_broker
gw_start_subscriber
gw_write_config
gw_add_device dev-a
gw_start_gateway 1
big=$(head -c 400 /dev/zero | tr '\0' 'z')
# Acknowledged: it is on disk (spool.ack = durable); the broker will never take it.
gw_expect_code 2.04 dev-a post temp "$big"
gw_wait_for "grep -q 'dev-a: spooled message 1 is larger than the broker accepts: dropped' '$WORK/gatewayd.log'" 10 ||
  gw_fail "no warning for the message the broker cannot take: $(grep -i 'dev-a' "$WORK/gatewayd.log" | tail -3)"
gw_expect_code 2.04 dev-a post temp after
gw_wait_received "devices/dev-a/telemetry/temp after"
grep -q 'dev-a: upstream connection .* lost' "$WORK/gatewayd.log" &&
  gw_fail "the session was lost over the large message"
grep -q "$big" "$WORK/sub.out" && gw_fail "the large message went through"
gw_pass
