#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A sensor that sends what RFC 7252/7959 forbid is refused, and nothing of it goes upstream:
# - Block1 blocks of the wrong size (longer than SZX says, or shorter with more to come) get
#   4.00, never a message put together from them; the reserved SZX 7 gets 4.00;
# - a payload past sensors.max_payload in one datagram gets 4.13 with Size1, however large;
# - a handshake with a known identity and a wrong key is logged, once per identity per
#   interval, without the key;
# and an operator's careless or hostile input:
# - the control socket answers a request whose sender shut down its sending side, and idle
#   clients filling every slot do not lock gwctl out;
# - a reload of a config that takes libconfig seconds to read does not stop sensors being
#   answered meanwhile;
# - enabled=maybe, and a NUL byte or \x00 in a config's string, are refused with the reason.
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

# ---- a wrong key: one line per identity per interval, never the key ----
wrong_key() {
  timeout 30 coap-client-openssl -v 6 -B 2 -m post -u "$1" -k "not-the-key-of-$1" -e x \
    "coaps://127.0.0.1:$COAP_PORT/temp" >/dev/null 2>&1 || true
}
mismatch_lines() { grep -c "$1: DTLS handshake from .* did not finish: the sensor's PSK does not match" "$WORK/gatewayd.log"; }
mismatches() {
  gw_gwctl metrics | sed -n 's/^gatewayd_dtls_handshake_failures_total{reason="key_mismatch"} //p'
}
# The server gives up on a handshake whose Finished it cannot decrypt after its own DTLS
# retransmissions, which double from 1 s (libcoap counts 4): 31 s after the handshake began.
# When OpenSSL had stopped its timer on the sensor's flight and the sensor gave up (after 2 s,
# -B 2), no retransmission is left to count: gatewayd ends such a handshake at its 40 s
# deadline, checked every 10 s (without it, libcoap's idle timeout of 300 s did). Two at once,
# so that both fall within the 60 s log interval (one after the other, a second one past it
# was rightly logged again). The wait allows 120 s for a loaded machine.
wrong_key dev-a &
first=$!
wrong_key dev-a &
second=$!
wait "$first" "$second"
gw_wait_for '[ "$(mismatches)" = 2 ]' 120 ||
  gw_fail "dev-a's two wrong keys were not both counted: $(gw_gwctl metrics | grep handshake_failures)"
# Logged once, and not again within the interval.
[ "$(mismatch_lines dev-a)" = 1 ] ||
  gw_fail "dev-a's wrong keys were logged $(mismatch_lines dev-a) times, not once, within the interval: $(grep 'did not finish' "$WORK/gatewayd.log")"
gw_check_no_secrets
grep -q 'not-the-key-of' "$WORK/gatewayd.log" && gw_fail "a sensor's (wrong) key is in the log"

# ---- the control socket ----
# A whole request, then the client shuts down its sending side: it still gets its answer.
python3 - "$WORK/control.sock" <<'PY' || gw_fail "no answer to a half-closed request"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
words = [b"status"]
s.sendall(b"GWCTL1" + struct.pack(">I", len(words)) +
          b"".join(struct.pack(">I", len(w)) + w for w in words) + struct.pack(">I", 0))
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
status, n = struct.unpack(">II", data[:8])
out = data[8:8 + n]
if status != 0 or b"gw-test" not in out:
    sys.exit("status %d, answer %r" % (status, data[:300]))
PY
# Eight clients that connect and send nothing hold every slot: gwctl still gets in.
python3 - "$WORK/control.sock" "$WORK/idle.ready" <<'PY' &
import socket, sys, time
held = []
for _ in range(8):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    held.append(s)
open(sys.argv[2], "w").close()
time.sleep(20)  # bounded; the test stops it by PID
PY
GW_PIDS+=("$!")
gw_wait_for "[ -e '$WORK/idle.ready' ]" 10 || gw_fail "the idle clients did not connect"
out=$(timeout 10 "$GWCTL" -c "$WORK/gateway.conf" status 2>&1) ||
  gw_fail "gwctl status was locked out by 8 idle clients: $out"
grep -q "dropped one that sent no request" "$WORK/gatewayd.log" || gw_fail "no log line for the idle client dropped"

# ---- loose values ----
out=$(gw_gwctl device set dev-a enabled=maybe 2>&1) && gw_fail "enabled=maybe was accepted: $out"
grep -q 'must be true or false' <<<"$out" || gw_fail "enabled=maybe: no reason given: $out"
gw_gwctl device show dev-a | gw_has 'enabled' && gw_fail "enabled=maybe was stored"
cp "$WORK/gateway.conf" "$WORK/good.conf"
sed 's/id = "gw-test";/id = "gw\\x00test";/' "$WORK/good.conf" >"$WORK/escape.conf"
out=$("$GATEWAYD" -n -c "$WORK/escape.conf" 2>&1) && gw_fail "gateway.id with \\x00 was accepted: $out"
grep -q 'escape.conf:2: the escape \\x00 in a string' <<<"$out" || gw_fail "\\x00: wrong error: $out"
python3 -c 'import sys; sys.stdout.buffer.write(open(sys.argv[1], "rb").read().replace(b"\"gw-test\"", b"\"gw\0test\""))' "$WORK/good.conf" >"$WORK/nul.conf"
out=$("$GATEWAYD" -n -c "$WORK/nul.conf" 2>&1) && gw_fail "a NUL byte in gateway.id was accepted: $out"
grep -q 'nul.conf:2: a NUL byte' <<<"$out" || gw_fail "NUL byte: wrong error: $out"

# ---- a reload that takes libconfig seconds does not hold the loop ----
# 40,000 keys in one group: libconfig's check for a key defined twice is quadratic.
python3 -c 'print("junk = {" + " ".join("k%d = 1;" % i for i in range(40000)) + "};")' >>"$WORK/gateway.conf"
"$GWCTL" -s "$WORK/control.sock" reload >"$WORK/reload.out" 2>&1 &
reload_pid=$!
GW_PIDS+=("$reload_pid")
gw_wait_for "grep -q 'reloading ' '$WORK/gatewayd.log'" 10 || gw_fail "the reload did not start"
gw_expect_code 2.04 dev-a post temp during-reload
kill -0 "$reload_pid" 2>/dev/null ||
  gw_fail "the reload ended before the sensor was answered: the test's file is too small to show it"
gw_wait_received "devices/dev-a/telemetry/temp during-reload"
rc=0
wait "$reload_pid" || rc=$?
[ "$rc" = 1 ] || gw_fail "the broken reload exited $rc, want 1: $(cat "$WORK/reload.out")"
grep -q "unknown key 'junk' in the top level" "$WORK/reload.out" ||
  gw_fail "the reload did not say why: $(cat "$WORK/reload.out")"
cp "$WORK/good.conf" "$WORK/gateway.conf"
out=$(gw_gwctl reload 2>&1) || gw_fail "reload of the good config failed: $out"
gw_expect_code 2.04 dev-a post temp after-reload
gw_pass
