#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A sensor that sends what RFC 7252/7959 forbid is refused, and nothing of it goes upstream:
# - Block1 blocks of the wrong size (longer than SZX says, or shorter with more to come) get
#   4.00, never a message put together from them; the reserved SZX 7 gets 4.00;
# - a payload past sensors.max_payload in one datagram gets 4.13 with Size1, however large;
# - a handshake with a known identity and a wrong key is logged, once per identity per
#   interval, without the key.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_require "$COAPRAW"
gw_pki_init
gw_start_broker
gw_start_subscriber
gw_write_config
sed -i 's/^  port = \([0-9]*\);$/  port = \1;\n  max_payload = 1024;/' "$WORK/gateway.conf"
gw_add_device dev-a
gw_start_gateway 1
ka=$(gw_psk dev-a)
raw() { "$COAPRAW" -a 127.0.0.1 -p "$COAP_PORT" -u dev-a -k "$ka" -t 10 "$@"; }
# raw_expect WANT... -- REQUEST...: each request's answer, in order.
raw_expect() {
  local want=() got
  while [ "$1" != -- ]; do
    want+=("$1")
    shift
  done
  shift
  got=$(raw "$@" | tr '\n' ' ')
  [ "$got" = "${want[*]} " ] || gw_fail "requests $*: got answers '$got', want '${want[*]}'"
}

# Block 0 of 16 bytes (SZX 0) with more to come, carrying 200 bytes; then block 1, the last:
# before, 200 bytes were published with 16 of them overwritten, and answered 2.04.
raw_expect 4.00 4.08 -- block:0:1:0:200:a block:1:0:0:16:b
# Shorter than its size with more to come.
raw_expect 2.31 4.00 4.08 -- block:0:1:2:64:c block:1:1:2:10:c block:2:0:2:5:c
# SZX 7 is reserved: before, this was published as a whole message.
raw_expect 4.00 4.00 -- block:0:1:7:16:d block:0:0:7:16:d
# A well-formed upload in the same session still goes through.
raw_expect 2.31 2.04 -- block:0:1:2:64:e block:1:0:2:7:e
gw_wait_received "devices/dev-a/telemetry/temp $(printf 'e%.0s' $(seq 71))"

# One datagram past max_payload (1024): 4.13 with Size1, not a Reset or silence, up to what
# libcoap reads of a datagram (1472 bytes with the DTLS record's own 29 to 37).
raw_expect 4.13 4.13 4.13 -- post:1100:f post:1300:f post:1400:f
# Longer than that, libcoap cuts the datagram and its DTLS record fails (nothing to answer);
# the session goes on.
raw -t 2 post:3000:f >/dev/null

# The sentinel: published after everything above, so anything refused would be in by now.
gw_expect_code 2.04 dev-a post temp sentinel
gw_wait_received "devices/dev-a/telemetry/temp sentinel"
if grep -E 'temp [a-d]|temp f' "$WORK/sub.out"; then
  gw_fail "a refused upload was published"
fi
gw_pass
