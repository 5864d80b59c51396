#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gwctl while gatewayd runs: a device added and given a certificate comes up without a
# restart; a removed one loses its upstream session and its PSK at once; bad certificates are
# refused with their reason; libcoap's handshake limit follows the fleet. Without gatewayd, gwctl works on the store itself.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_broker
gw_start_subscriber
gw_write_config
gw_add_device dev-a # gatewayd not running: gwctl opens the store under its lock
gw_start_gateway 1

# Added through the daemon: up within seconds, no restart.
gw_add_device dev-b
gw_wait_for "grep -q 'dev-b: upstream connected' '$WORK/gatewayd.log'" 15 ||
  gw_fail "dev-b did not connect after gwctl added it"
grep -q 'control: gwctl device add' "$WORK/gatewayd.log" || gw_fail "gwctl did not go through the daemon"
gw_expect_code 2.04 dev-b post temp hello-b
gw_wait_received "devices/dev-b/telemetry/temp hello-b"

list=$(gw_gwctl device list)
# ID STATE BACKEND SENSOR UPSTREAM LAST-SEEN UP CERT-EXPIRY CERT-SUBJECT
grep -qE '^dev-a +active +soft +none +connected +never +0 +[0-9-]{10} +/CN=dev-a$' <<<"$list" || gw_fail "device list: $list"
grep -qE '^dev-b +active +soft +none +connected +[0-9T:-]{19}Z +1 +[0-9-]{10} +/CN=dev-b$' <<<"$list" ||
  gw_fail "device list (dev-b sent 1 message): $list"
show=$(gw_gwctl device show dev-b)
grep -qx 'psk-identity: dev-b' <<<"$show" || gw_fail "device show: $show"
grep -qx 'certificate-subject: /CN=dev-b' <<<"$show" || gw_fail "device show: $show"
grep -qx 'upstream: connected' <<<"$show" || gw_fail "device show: $show"
grep -qx 'messages-up: 1 (7 bytes)' <<<"$show" || gw_fail "device show (messages): $show"
grep -qE '^last-seen: [0-9-]{10} [0-9:]{8} UTC$' <<<"$show" || gw_fail "device show (last seen): $show"
grep -qx 'sensor: 0 DTLS sessions' <<<"$show" || gw_fail "device show (DTLS): $show"
if grep -q "$(gw_psk dev-b)" <<<"$list$show"; then gw_fail "list or show printed the PSK"; fi

# Certificates that are not the device's are refused, each with its reason.
out=$(gw_gwctl device import-cert dev-a "$WORK/pki/dev-b.pem" 2>&1) && gw_fail "dev-b's certificate accepted for dev-a"
grep -q "is not device dev-a's key" <<<"$out" || gw_fail "mismatch message: $out"
gw_pki_init_other() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=other CA" \
    -keyout "$WORK/pki/other.key" -out "$WORK/pki/other.pem" 2>/dev/null
}
gw_pki_init_other
openssl x509 -req -in "$WORK/pki/dev-a.csr" -CA "$WORK/pki/other.pem" -CAkey "$WORK/pki/other.key" \
  -CAcreateserial -days 2 -out "$WORK/pki/dev-a-other.pem" 2>/dev/null
out=$(gw_gwctl device import-cert dev-a "$WORK/pki/dev-a-other.pem" 2>&1) && gw_fail "foreign CA accepted"
grep -q "does not chain to the device CA" <<<"$out" || gw_fail "chain message: $out"
# Expired: issued by the right CA for the right key, but over.
cat >"$WORK/pki/ca.cnf" <<CNF
[ca]
default_ca = test
[test]
database = $WORK/pki/index.txt
new_certs_dir = $WORK/pki
serial = $WORK/pki/serial
default_md = sha256
policy = any
copy_extensions = none
[any]
commonName = supplied
CNF
: >"$WORK/pki/index.txt"
echo 1000 >"$WORK/pki/serial"
openssl ca -batch -config "$WORK/pki/ca.cnf" -cert "$WORK/pki/ca.pem" -keyfile "$WORK/pki/ca.key" \
  -in "$WORK/pki/dev-a.csr" -startdate 20200101000000Z -enddate 20200201000000Z \
  -out "$WORK/pki/dev-a-expired.pem" >/dev/null 2>&1 || gw_fail "could not issue the expired certificate"
out=$(gw_gwctl device import-cert dev-a "$WORK/pki/dev-a-expired.pem" 2>&1) && gw_fail "expired certificate accepted"
grep -q "it expired on 2020-02-01" <<<"$out" || gw_fail "expiry message: $out"
# dev-a still has its good certificate and still publishes.
gw_expect_code 2.04 dev-a post temp still-a

# Removed through the daemon: its session goes, its sensor is refused.
out=$(gw_gwctl device remove dev-b) || gw_fail "remove: $out"
gw_wait_for "grep -q 'Client dev-b disconnected' '$WORK/mosquitto.log'" 10 ||
  gw_fail "dev-b's upstream session stayed after remove"
code=$(gw_sensor dev-b post temp after-remove)
[ "$code" = none ] || gw_fail "removed device's sensor got $code"
[ ! -e "$WORK/state/keystore/dev-b" ] || gw_fail "dev-b's folder is still there"

# libcoap's limit on DTLS handshakes at once follows the paired fleet as devices come and go
# (at least libcoap's 100): sized at start only, a fleet added to a running gatewayd handshook
# through 100 slots. dev-a and 100 more make 101; one removed, 100.
for i in $(seq 1 100); do
  out=$(gw_gwctl device add "fleet-$i" 2>&1) || gw_fail "gwctl device add fleet-$i: $out"
done
gw_wait_for "grep -q 'coap: up to 101 DTLS handshakes at once (101 devices paired' '$WORK/gatewayd.log'" 10 ||
  gw_fail "the handshake limit did not follow the fleet: $(grep 'DTLS handshakes at once' "$WORK/gatewayd.log")"
out=$(gw_gwctl device remove fleet-100 2>&1) || gw_fail "remove fleet-100: $out"
gw_wait_for "grep -q 'coap: up to 100 DTLS handshakes at once (100 devices paired' '$WORK/gatewayd.log'" 10 ||
  gw_fail "the handshake limit did not follow a removal: $(grep 'DTLS handshakes at once' "$WORK/gatewayd.log")"

# device list in pages: two rows, then where the next page starts (the ids in byte order:
# dev-a, fleet-1, fleet-10, ...).
out=$(gw_gwctl device list --limit 2 2>"$WORK/list.err") || gw_fail "device list --limit 2: $out"
[ "$(tail -n +2 <<<"$out" | awk '{ print $1 }' | tr '\n' ' ')" = "dev-a fleet-1 " ] ||
  gw_fail "device list --limit 2: $out"
grep -qx 'more after fleet-1: gwctl device list --after fleet-1 --limit 2' "$WORK/list.err" ||
  gw_fail "device list --limit 2 said: $(cat "$WORK/list.err")"
out=$(gw_gwctl device list --after fleet-98 2>&1) || gw_fail "device list --after: $out"
[ "$(tail -n +2 <<<"$out" | awk '{ print $1 }' | tr '\n' ' ')" = "fleet-99 " ] ||
  gw_fail "device list --after fleet-98: $out"

# With the daemon holding the store, a second writer is kept out.
out=$(gw_gwctl -s "$WORK/nothing.sock" device list 2>&1) && gw_fail "gwctl opened a store gatewayd holds"
grep -q "gatewayd holds the keystore" <<<"$out" || gw_fail "lock message: $out"

# Without gatewayd, a command on one device reads that device's folder alone: a damaged
# folder elsewhere in the store, which fails a command that loads every device, is not read.
kill -TERM "$GATEWAY_PID"
rc=0
wait "$GATEWAY_PID" || rc=$?
[ "$rc" -eq 0 ] || gw_fail "gatewayd exited $rc after SIGTERM"
mkdir -m 700 "$WORK/state/keystore/broken-1"
out=$(gw_gwctl device list 2>&1) && gw_fail "device list took a folder without a record: $out"
grep -q 'broken-1 has no device record' <<<"$out" || gw_fail "device list said: $out"
out=$(gw_gwctl device show dev-a 2>&1) || gw_fail "device show dev-a, offline: $out"
grep -qx 'psk-identity: dev-a' <<<"$out" || gw_fail "device show dev-a, offline: $out"
grep -q broken-1 <<<"$out" && gw_fail "device show dev-a read another device's folder: $out"
out=$(gw_gwctl device suspend fleet-7 2>&1) || gw_fail "device suspend fleet-7, offline: $out"
gw_gwctl device show fleet-7 | gw_has -x 'state: suspended' ||
  gw_fail "fleet-7 after suspend: $(gw_gwctl device show fleet-7)"
out=$(gw_gwctl device show nosuch 2>&1) && gw_fail "device show of no such device: $out"
grep -q 'nosuch' <<<"$out" || gw_fail "device show nosuch said: $out"
gw_pass
