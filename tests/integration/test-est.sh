#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Certificates from an EST server (RFC 7030), the gateway enrolling with its own certificate on
# behalf of its devices: devices added without a certificate are enrolled and connect; a
# refusal by the EST server is reported in words by gwctl device enroll and device show; a
# pending answer (202) is asked again; short-lived certificates are renewed with a new key
# and the session switches to them; a renewal the broker refuses leaves the device on its old
# certificate; an expired certificate is never presented. GW_BACKEND=tpm: keys in swtpm.
source "$(dirname "$0")/lib.sh"
gw_setup
[ "${GW_BACKEND:-soft}" = tpm ] && gw_start_swtpm
gw_pki_init
gw_start_broker
gw_start_subscriber
# Certificates live 30 s: renewed from 18.5 s to 20 s after issue, expired at 30 s.
lifetime=30
gw_start_est "$lifetime"
# The gateway accepts the second CA's certificates; the broker does not.
cat "$WORK/pki/ca.pem" "$WORK/pki/alt.pem" >"$WORK/pki/device-cas.pem"
GW_KEYSTORE_EXTRA="device_ca_file = \"$WORK/pki/device-cas.pem\";" gw_write_config
gw_config_est "retry_min = 1; retry_max = 2; timeout = 10;"
log=$WORK/gatewayd.log

# Without the gateway's own certificate there is nothing to authenticate with: said so.
gw_add_uncertified dev-1
out=$(gw_gwctl device enroll dev-1 2>&1) && gw_fail "enrolment without a gateway certificate: $out"
grep -q 'the gateway has no certificate of its own' <<<"$out" || gw_fail "unclear: $out"

gw_gateway_cert
gw_gwctl gateway show | gw_has '^certificate-subject: .*gw-test' ||
  gw_fail "gateway show: $(gw_gwctl gateway show)"
gw_add_uncertified dev-2
for id in dev-1 dev-2; do
  gw_gwctl device show "$id" | gw_has '^certificate: none' || gw_fail "$id has a certificate"
done

# Enrolled on their own at start, and connected under their own names.
gw_start_gateway 2
for id in dev-1 dev-2; do
  grep -q "simpleenroll $id " "$WORK/est-issued" || gw_fail "$id was not enrolled: $(cat "$WORK/est-issued")"
  [ "$(gw_broker_username "$id")" = "$id" ] || gw_fail "$id connected as '$(gw_broker_username "$id")'"
done
first_1=$(gw_serial dev-1)
gw_add_uncertified dev-9
gw_wait_for "[ \$(grep -c 'upstream connected' '$log') -ge 3 ]" 15 ||
  gw_fail "dev-9, added to the running gateway, was not enrolled"

# Refused: the operator hears why, and so does device show.
echo "refuse" >"$WORK/est-mode"
gw_add_uncertified dev-3
gw_wait_for "grep -q 'dev-3: enrolment failed: .*refused' '$log'" 10 ||
  gw_fail "dev-3's refusal was not logged"
# A retry of its own may be under way: gwctl then hears that one's outcome, a refusal too.
out=$(gw_gwctl device enroll dev-3 2>&1) && gw_fail "a refused enrolment succeeded: $out"
grep -q 'refused simpleenroll (HTTP 403): enrolment refused by EST server policy for CN=dev-3' <<<"$out" ||
  gw_fail "gwctl device enroll said: $out"
gw_gwctl device show dev-3 | gw_has '^enrolment: enrolment failed: .*HTTP 403' ||
  gw_fail "device show dev-3: $(gw_gwctl device show dev-3)"
echo "ok" >"$WORK/est-mode"
# A retry sent before the policy changed is still refused; the operator asks again, as here.
gw_wait_for "gw_gwctl device enroll dev-3 >'$WORK/enroll.out' 2>&1" 30 ||
  gw_fail "gwctl device enroll dev-3: $(cat "$WORK/enroll.out")"
out=$(cat "$WORK/enroll.out")
grep -q '^enrolled: /CN=dev-3, valid until' <<<"$out" || gw_fail "gwctl device enroll said: $out"
gw_wait_for "grep -q 'dev-3: upstream connected' '$log'" 10 || gw_fail "dev-3 did not connect"

# Pending (202): asked again after Retry-After until the certificate is issued.
echo "pending" >"$WORK/est-mode"
gw_add_uncertified dev-4
gw_wait_for "grep -q 'dev-4: .*certificate not issued yet.*asking again in 2 s' '$log'" 10 ||
  gw_fail "dev-4's pending answer was not logged"
echo "ok" >"$WORK/est-mode"
gw_wait_for "grep -q 'dev-4: upstream connected' '$log'" 10 || gw_fail "dev-4 was not enrolled after 202"

# Renewal: a new key and certificate before two thirds of the lifetime, the session switched.
for id in dev-1 dev-2; do
  gw_wait_for "grep -q '$id: renewed (the broker accepted the new certificate)' '$log'" 30 ||
    gw_fail "$id was not renewed: $(grep -a "$id" "$log" | tail -5)"
done
grep -q "simplereenroll dev-1 " "$WORK/est-issued" || gw_fail "dev-1 did not use simplereenroll"
[ "$(gw_serial dev-1)" != "$first_1" ] || gw_fail "dev-1 presents its first certificate still"
ls "$WORK"/state/keystore/dev-1/next.* 2>/dev/null && gw_fail "leftovers of the renewal"
gw_expect_code 2.04 dev-1 post temp 21.5
gw_wait_received "devices/dev-1/telemetry/temp 21.5"
gw_log "dev-1 renewed: serial $first_1 -> $(gw_serial dev-1)"

# A renewal the broker refuses: back on the old certificate, reported, tried again later.
echo "untrusted simplereenroll" >"$WORK/est-mode"
kept=$(gw_serial dev-2)
gw_wait_for "grep -aq 'dev-2: renewal failed: the new certificate could not connect: ' '$log'" 30 ||
  gw_fail "dev-2's refused renewal was not reported: $(grep -a dev-2 "$log" | tail -5)"
[ "$(gw_serial dev-2)" = "$kept" ] || gw_fail "dev-2 lost its certificate"
gw_wait_for "gw_gwctl device list | gw_has -E '^dev-2 +active +[a-z]+ +[a-z]+ +connected '" 10 ||
  gw_fail "dev-2 is not back on its old certificate: $(gw_gwctl device list)"
# The next try comes within 2 s: the status shows the failure in between.
gw_wait_for "gw_gwctl device show dev-2 | gw_has '^enrolment: renewal failed: .*keeps its certificate'" 10 ||
  gw_fail "device show dev-2: $(gw_gwctl device show dev-2)"

# Still refused when the old one runs out: the expired certificate is not presented.
gw_wait_for "grep -q 'dev-2: its certificate expired on .*: not used' '$log'" 30 ||
  gw_fail "dev-2 kept using an expired certificate: $(grep -a dev-2 "$log" | tail -5)"
gw_wait_for "gw_gwctl device show dev-2 | gw_has '^upstream-last-error: its certificate expired'" 10 ||
  gw_fail "device show dev-2: $(gw_gwctl device show dev-2)"
gw_expect_code 5.03 dev-2 post temp 23.5

# The EST server issues again: the device comes back by itself.
echo "ok" >"$WORK/est-mode"
gw_wait_for "gw_gwctl device list | gw_has -E '^dev-2 +active +[a-z]+ +[a-z]+ +connected '" 20 ||
  gw_fail "dev-2 did not come back: $(grep -a dev-2 "$log" | tail -5)"
gw_expect_code 2.04 dev-2 post temp 24.5
gw_wait_received "devices/dev-2/telemetry/temp 24.5"
gw_log "$(grep -c '^simpleenroll ' "$WORK/est-issued") enrolments and $(grep -c '^simplereenroll ' "$WORK/est-issued") renewals issued"
gw_pass
