#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The TPM as an asynchronous co-processor, checked by order, not by time: while one device's
# TLS handshake waits for a signature the TPM holds (tests/tools/tpmslow keeps every
# TPM2_Sign answer back on request), another device's reading is published and acknowledged
# by the broker (ack = upstream: the sensor's 2.04 is the broker's PUBACK), and the waiting
# device is still connecting. Once the TPM answers, it connects.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_swtpm
gw_start_tpmslow none
gw_start_broker
gw_start_subscriber
GW_BACKEND=tpm GW_CONFIG_EXTRA='spool = { ack = "upstream"; };' gw_write_config
gw_add_device dev-a
gw_add_device dev-b
gw_start_gateway 2
gw_expect_code 2.04 dev-a post temp before
gw_wait_received "devices/dev-a/telemetry/temp before"

# dev-b's session goes, with its TLS session (suspend): its next connect needs a signature.
gw_gwctl device suspend dev-b >/dev/null || gw_fail "cannot suspend dev-b"
gw_tpmslow_control hold-sign
gw_gwctl device resume dev-b >/dev/null || gw_fail "cannot resume dev-b"
gw_wait_for "grep -q 'holding TPM2_Sign' '$WORK/tpmslow.out'" 15 ||
  gw_fail "dev-b's handshake never asked the TPM for a signature"

# Meanwhile: dev-a's reading goes up and is acknowledged, dev-b still waits.
gw_expect_code 2.04 dev-a post temp during-the-signature
gw_wait_received "devices/dev-a/telemetry/temp during-the-signature"
grep -q 'released TPM2_Sign' "$WORK/tpmslow.out" &&
  gw_fail "the signature was released before dev-a's reading went up: the test proves nothing"
state=$(gw_gwctl device show dev-b | sed -n 's/^upstream: //p')
[[ $state == connecting* ]] || gw_fail "dev-b is '$state' while its signature is held"
status=$(gw_gwctl status)
grep -qE '^tpm-worker: busy [0-9]+% over the last 5 s; running' <<<"$status" ||
  gw_fail "status does not show the TPM worker busy: $status"

# The TPM answers: dev-b connects.
gw_tpmslow_control
gw_wait_for "[ \$(grep -c 'dev-b: upstream connected' '$WORK/gatewayd.log') -ge 2 ]" 20 ||
  gw_fail "dev-b did not connect once the signature came"
gw_expect_code 2.04 dev-b post temp after
gw_wait_received "devices/dev-b/telemetry/temp after"
gw_pass
