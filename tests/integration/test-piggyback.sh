#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# How the answer to a confirmable reading travels (sensors.piggyback_wait, RFC 7252 section 5.2),
# with the spool's fsync every 400 ms so that each answer is ready 400 ms after its reading:
# - with the default wait (1 s) the 2.04 rides on the ACK;
# - with a wait of 100 ms (a reload) the sensor gets an empty ACK, then the 2.04 as a CON;
# - with 0 the same, the empty ACK at once;
# - a sensor that sends its CON again while the ACK is held back gets the empty ACK at once
#   and one 2.04, and its reading goes upstream once;
# gatewayd_coap_answers_total counts each kind, and every reading reaches the broker once.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_require "$COAPRAW"
gw_pki_init
gw_start_broker
gw_start_subscriber
GW_CONFIG_EXTRA='spool = { fsync = "interval"; fsync_interval = 400; };'
gw_write_config
gw_add_device dev-a
gw_start_gateway 1

# set_wait MS: sensors.piggyback_wait becomes MS, by a reload.
set_wait() {
  if grep -q '^  piggyback_wait = ' "$WORK/gateway.conf"; then
    sed -i "s/^  piggyback_wait = .*/  piggyback_wait = $1;/" "$WORK/gateway.conf"
  else
    sed -i "s/^  port = \([0-9]*\);\$/  port = \1;\n  piggyback_wait = $1;/" "$WORK/gateway.conf"
  fi
  out=$(gw_gwctl reload 2>&1) || gw_fail "gwctl reload failed: $out"
}
# shape: how the last reading's 2.04 came, from coap-client's log of the exchange (which shows
# the messages with a code: a separate 2.04 is a CON, and its empty ACK is not shown).
shape() {
  if gw_has -E 't:ACK c:2\.04' <"$WORK/coap-last.out"; then
    echo piggybacked
  elif gw_has -E 't:CON c:2\.04' <"$WORK/coap-last.out"; then
    echo separate
  else
    echo "unknown: $(grep -E 'c:[0-9]\.[0-9]{2}' "$WORK/coap-last.out" | tr '\n' ' ')"
  fi
}
# reading PAYLOAD WANT_SHAPE
reading() {
  gw_expect_code 2.04 dev-a post temp "$1"
  got=$(shape)
  [ "$got" = "$2" ] || gw_fail "reading $1: its 2.04 came $got, want $2"
  gw_wait_received "devices/dev-a/telemetry/temp $1"
}
answers() {
  gw_gwctl metrics | awk -v how="$1" '$1 == "gatewayd_coap_answers_total{how=\"" how "\"}" { print $2 }'
}

reading r1 piggybacked
set_wait 100
reading r2 separate
set_wait 0
reading r3 separate

set_wait 1000
got=$("$COAPRAW" -a 127.0.0.1 -p "$COAP_PORT" -u dev-a -k "$(gw_psk dev-a)" -t 10 twice:8:t)
[ "$got" = 2.04 ] || gw_fail "a CON sent twice while its ACK was held: got '$got', want 2.04"
# A sentinel after it: were the copy forwarded too, it would be upstream by now.
reading r5 piggybacked
n=$(gw_count -xF 'devices/dev-a/telemetry/temp tttttttt' "$WORK/sub.out")
[ "$n" = 1 ] || gw_fail "the CON sent twice went upstream $n times, want once"

[ "$(answers piggybacked)" = 2 ] || gw_fail "piggybacked answers: '$(answers piggybacked)', want 2"
[ "$(answers separate)" = 3 ] || gw_fail "separate answers: '$(answers separate)', want 3"
[ "$(wc -l <"$WORK/sub.out")" -eq 5 ] || gw_fail "want 5 messages upstream, got: $(cat "$WORK/sub.out")"
gw_pass
