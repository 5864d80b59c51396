#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The tpm backend on swtpm without a resource manager: GW_FLEET devices (default 200) connect
# upstream at the same time, each under its own username; no private key is on disk in clear;
# device keys are fixedTPM and fixedParent; a gatewayd killed while adding devices leaves a
# usable store.
source "$(dirname "$0")/lib.sh"
gw_setup
fleet=${GW_FLEET:-200}
ulimit -n 8192 2>/dev/null || ulimit -n 4096 2>/dev/null || true
gw_start_swtpm
gw_pki_init
gw_start_broker
GW_BACKEND=tpm gw_write_config

t0=$(date +%s.%N)
for i in $(seq 1 "$fleet"); do gw_add_device "dev-$i"; done
t1=$(date +%s.%N)
gw_log "added $fleet devices in $(echo "$t1 - $t0" | bc) s"

gw_start_gateway "$fleet"
t2=$(date +%s.%N)
gw_log "$fleet devices connected upstream $(echo "$t2 - $t1" | bc) s after start"
users=$(grep -o "as dev-[0-9]* (p5, c1, k60, u'dev-[0-9]*')" "$WORK/mosquitto.log" |
  sed "s/as \(dev-[0-9]*\) .*u'\(dev-[0-9]*\)')/\1 \2/" | awk '$1 == $2' | sort -u | wc -l)
[ "$users" -eq "$fleet" ] || gw_fail "broker saw $users devices under their own usernames, want $fleet"
grep -q "TPM_RC_OBJECT_MEMORY\|0x902" "$WORK/gatewayd.log" && gw_fail "the TPM ran out of object slots"
gw_expect_code 2.04 "dev-$fleet" post temp from-the-last

# No private key in clear anywhere under the state dir: no PEM private key but the
# TPM-wrapped TSS2 kind, and no file that parses as a DER private key.
# Every PEM private key header, as FILE:LINE; the TPM-wrapped ones match too ("TSS2"), so
# none found means the check sees nothing.
pem_keys=$(gw_grep -rH -- '-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----' "$WORK/state")
[ -n "$pem_keys" ] || gw_fail "no PEM private key under $WORK/state: the check below sees nothing"
bad=$(gw_grep -v -- ':-----BEGIN TSS2 PRIVATE KEY-----$' <<<"$pem_keys")
[ -z "$bad" ] || gw_fail "private key in clear: $bad"
while IFS= read -r -d '' f; do
  if openssl pkey -inform DER -in "$f" -noout 2>/dev/null; then gw_fail "DER private key in clear: $f"; fi
done < <(find "$WORK/state" -type f -print0)
tss2_keys=$(find "$WORK/state" -name key.tss2.pem | wc -l)
[ "$tss2_keys" -eq "$fleet" ] || gw_fail "$tss2_keys TSS2 keys for $fleet devices"

# The key's public area (TPM 2.0 Part 2, 12.2.4): the TPMKey's first OCTET STRING is the
# TPM2B_PUBLIC: size (2 bytes), type (2), nameAlg (2), then objectAttributes (4, 8.3).
pub=$(openssl asn1parse -in "$WORK/state/keystore/dev-1/key.tss2.pem" |
  grep -m 1 'OCTET STRING' | sed 's/.*\[HEX DUMP\]://')
attrs=$((16#${pub:12:8}))
for bit in fixedTPM:0x2 fixedParent:0x10 sensitiveDataOrigin:0x20 userWithAuth:0x40 sign:0x40000; do
  (((attrs & ${bit#*:}) != 0)) || gw_fail "device key lacks ${bit%%:*} (objectAttributes $(printf %#x "$attrs"))"
done
(((attrs & 0x20000) == 0)) || gw_fail "device key may decrypt (objectAttributes $(printf %#x "$attrs"))"

# gatewayd killed (SIGKILL) while gwctl adds devices through it: the store stays usable.
for i in $(seq 1 5); do
  gw_gwctl device add "crash-$i" >/dev/null 2>&1 &
  adder=$!
  sleep "0.00$((RANDOM % 9))"
  kill -KILL "$GATEWAY_PID"
  wait "$adder" 2>/dev/null || true
  wait "$GATEWAY_PID" 2>/dev/null || true
  : >"$WORK/gatewayd.log"
  gw_start_gateway "$fleet"
done
list=$(gw_gwctl device list) || gw_fail "device list after crashes: $list"
[ "$(grep -c '^dev-' <<<"$list")" -eq "$fleet" ] || gw_fail "devices lost in the crashes: $list"
ls -a "$WORK/state/keystore" | gw_has '\.new$' && gw_fail "a half-added device is left"
gw_expect_code 2.04 dev-1 post temp after-crashes

# What the operator sees of the TPM: reachable, and the signatures of this run's handshakes.
status=$(gw_gwctl status)
grep -qE '^tpm: reachable at swtpm:host=127.0.0.1,port=[0-9]+ \(answered in [0-9.]+ ms\)$' <<<"$status" ||
  gw_fail "status: $status"
signs=$(gw_gwctl metrics | awk '$1 == "gatewayd_tpm_operation_duration_seconds_count{op=\"sign\"}" { print $2 }')
[ "${signs:-0}" -ge "$fleet" ] || gw_fail "metrics: $signs signatures timed, want at least $fleet"
gw_log "$signs signatures in the TPM latency histogram"
gw_pass
