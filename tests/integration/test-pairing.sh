#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Pairing as a technician does it: the identity and key gwctl prints complete a DTLS handshake;
# after a rotation the old ones work for the grace period (5 s here), then never again; bulk pairing from
# a CSV writes a machine-readable file, mode 0600, whose keys work too.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_broker
gw_start_subscriber
GW_KEYSTORE_EXTRA="psk_grace = 5;" gw_write_config
gw_add_device dev-a
gw_start_gateway 1
gw_expect_code 2.04 dev-a post temp "before pairing"

# Rotate dev-a's PSK through the running daemon, QR code and all.
out=$(gw_gwctl -q device pair dev-a) || gw_fail "device pair: $out"
identity=$(sed -n 's/^psk-identity: //p' <<<"$out")
key=$(sed -n 's/^psk-key: //p' <<<"$out")
hex=$(sed -n 's/^psk-key-hex: //p' <<<"$out")
b64=$(sed -n 's/^psk-key-base64: //p' <<<"$out")
[ -n "$identity" ] && [ "$identity" != dev-a ] || gw_fail "no new identity: $out"
[ "$(printf '%s' "$key" | od -An -tx1 | tr -d ' \n')" = "$hex" ] || gw_fail "hex is not the key"
[ "$(printf '%s' "$b64" | base64 -d)" = "$key" ] || gw_fail "base64 is not the key"
grep -q "^previous-identity: dev-a (accepted until " <<<"$out" || gw_fail "no grace line: $out"
[ "$(grep -c $'\033\\[30;47m' <<<"$out")" -ge 15 ] || gw_fail "no QR code drawn"

# A sensor flashed with the printed values works; the unflashed one too, for the grace period.
code=$(gw_sensor "$identity" post temp "new key" "$key")
[ "$code" = 2.04 ] || gw_fail "the printed identity and key did not work: $code"
code=$(gw_sensor dev-a post temp "old key in grace")
[ "$code" = 2.04 ] || gw_fail "the previous key was refused within its grace period: $code"
gw_gwctl device show dev-a | gw_has "^psk-previous-identity: dev-a " || gw_fail "show lacks the grace"
# After it, the old key never again; the new one still. The grace is over once show no longer
# lists it (psk_grace = 5: bounded at 15 s); the output in full, as a failed gwctl or grep -q's
# early exit (SIGPIPE) must not read as "gone".
in_grace() {
  local out
  out=$(gw_gwctl device show dev-a) || gw_fail "gwctl device show dev-a: $out"
  grep -q '^psk-previous-identity:' <<<"$out"
}
gw_wait_for "! in_grace" 15 ||
  gw_fail "the grace period did not end: $(gw_gwctl device show dev-a | grep '^psk-previous')"
code=$(gw_sensor dev-a post temp "old key after grace")
[ "$code" = none ] || gw_fail "the previous key still works after its grace period: $code"
code=$(gw_sensor "$identity" post temp "new key after grace" "$key")
[ "$code" = 2.04 ] || gw_fail "the new key stopped working: $code"

# Without grace, a sensor already connected with the old identity is cut off at once.
"$GWSENSOR" -a 127.0.0.1 -p "$COAP_PORT" -u "$identity" -k "$key" -n 100000 -i 50 -t 10 \
  >"$WORK/sensor-rotated.out" 2>&1 &
rotated=$!
gw_wait_for "[ \$(grep -c ' 2.04\$' '$WORK/sensor-rotated.out') -ge 5 ]" 10 ||
  gw_fail "the sensor did not get going: $(tail -n 2 "$WORK/sensor-rotated.out")"
gw_gwctl device pair dev-a --grace 0 >/dev/null
wait "$rotated" && gw_fail "the sensor on the rotated-out identity kept its session"
tail -n 1 "$WORK/sensor-rotated.out" | gw_has -E ' (closed|4\.03)$' ||
  gw_fail "rotated-out sensor ended with: $(tail -n 1 "$WORK/sensor-rotated.out")"

# Bulk: three new devices from a CSV, one with a key of its own (the ASCII of 0123456789abcdef).
printf 'id\n# sensors of barn 2\nbarn-1\nbarn-2,30313233343536373839616263646566\nbarn-3\n' >"$WORK/barn.csv"
gw_gwctl -o "$WORK/barn-keys.csv" device pair --from "$WORK/barn.csv" 2>"$WORK/bulk.err" ||
  gw_fail "bulk pairing: $(cat "$WORK/bulk.err")"
[ "$(stat -c %a "$WORK/barn-keys.csv")" = 600 ] || gw_fail "the key file is readable by others"
head -n 1 "$WORK/barn-keys.csv" | gw_has -x 'id,psk_identity,psk_key_hex' || gw_fail "no CSV header"
[ "$(grep -c '^barn-' "$WORK/barn-keys.csv")" -eq 3 ] || gw_fail "bulk output: $(cat "$WORK/barn-keys.csv")"
grep -qx 'barn-2,barn-2,30313233343536373839616263646566' "$WORK/barn-keys.csv" ||
  gw_fail "barn-2's given key not used: $(cat "$WORK/barn-keys.csv")"
# A new device has no certificate yet, so no upstream: 5.03, after a complete handshake.
while IFS=, read -r id ident hexkey; do
  [ "$id" = id ] && continue
  k=$(printf '%s' "$hexkey" | sed 's/../\\x&/g')
  code=$(gw_sensor "$ident" post temp "$id" "$(printf "$k")")
  [ "$code" = 5.03 ] || gw_fail "$id's paired key: $code"
done <"$WORK/barn-keys.csv"

if grep -qF "$key" "$WORK/gatewayd.log"; then gw_fail "a PSK appears in the gateway's log"; fi
gw_pass
