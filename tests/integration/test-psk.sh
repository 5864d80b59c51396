#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Sensors must prove their PSK: an unknown identity and a wrong key both fail the handshake
# (there is no default key to fall back to), and nothing of theirs reaches the broker.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_broker
gw_start_subscriber
gw_write_config
gw_add_device dev-a
gw_start_gateway 1

# Unknown identity, with a key that would be libcoap's default if one were configured.
code=$(gw_sensor intruder post temp unknown-identity 0123456789abcdef0123456789abcdef)
[ "$code" = none ] || gw_fail "unknown identity got a response: $code"
grep -q 'unknown PSK identity "intruder": handshake refused' "$WORK/gatewayd.log" ||
  gw_fail "no log line for the unknown identity"

# Known identity, wrong key: DTLS drops the bad Finished, so the client only times out.
code=$(gw_sensor dev-a post temp wrong-key 0123456789abcdef0123456789abcdef)
[ "$code" = none ] || gw_fail "wrong key got a response: $code"

# The right key still works, and only its messages go upstream: a second one is the sentinel
# (per-device order puts anything of dev-a's before it), and the broker holds just the two.
gw_expect_code 2.04 dev-a post temp right-key
gw_expect_code 2.04 dev-a post temp right-key-2
gw_wait_received "devices/dev-a/telemetry/temp right-key-2"
[ "$(cat "$WORK/sub.out")" = "devices/dev-a/telemetry/temp right-key
devices/dev-a/telemetry/temp right-key-2" ] || gw_fail "unexpected messages upstream: $(cat "$WORK/sub.out")"
# The secrets never reach the log.
if grep -qF "$(gw_psk dev-a)" "$WORK/gatewayd.log" ||
  grep -qF "$(cat "$WORK/state/keystore/dev-a/psk.key")" "$WORK/gatewayd.log"; then
  gw_fail "a PSK appears in the gateway's log"
fi
gw_pass
