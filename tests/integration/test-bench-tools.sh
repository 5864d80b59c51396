#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The storm benchmark's instruments against the real daemon (tests/bench/storm.sh relies on
# them): tpmslow relays gatewayd's TPM commands to swtpm at an SLB9672's per-command times and
# counts them, holds a signature on request while the chip stays busy; netcut cuts gatewayd's
# broker connections and refuses new ones for its time, then relays again; mqttstamp stamps
# what arrives, and gwsensor -T puts the send time in the payload.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_swtpm
gw_start_tpmslow slb9672
gw_start_broker
gw_start_netcut 3
gw_start_stamper 'devices/#'
GW_BACKEND=tpm gw_write_config
gw_add_device dev-a
gw_add_device dev-b

# Relays, at the chip's pace: each handshake is a Load, a Sign and a FlushContext, and gatewayd
# itself sees the chip's 54.6 ms for them.
gw_start_gateway 2
gw_tpmslow_stats
for cc in TPM2_Load TPM2_Sign TPM2_FlushContext; do
  got=$(awk -v cc="$cc" '$1 == cc { print $2 }' "$WORK/tpmslow.stats")
  [ "${got:-0}" -ge 2 ] || gw_fail "tpmslow counted ${got:-no} $cc for 2 handshakes: $(cat "$WORK/tpmslow.stats")"
done
metrics=$(gw_gwctl metrics)
per_sign=$(awk '/^gatewayd_tpm_operation_duration_seconds_sum\{op="sign"\}/ { s = $2 }
  /^gatewayd_tpm_operation_duration_seconds_count\{op="sign"\}/ { n = $2 }
  END { if (n > 0) printf "%.4f", s / n }' <<<"$metrics")
[ -n "$per_sign" ] || gw_fail "no sign operations in the metrics: $(grep tpm_operation <<<"$metrics")"
awk -v t="$per_sign" 'BEGIN { exit !(t >= 0.0546) }' ||
  gw_fail "gatewayd's signatures took $per_sign s each, less than the chip's 0.0546 s"

# Holds: dev-b reconnects, its signature is held, and its handshake cannot end before the
# release.
gw_tpmslow_control hold-sign
gw_gwctl device suspend dev-b >/dev/null
gw_gwctl device resume dev-b >/dev/null
gw_wait_for "grep -q 'holding TPM2_Sign' '$WORK/tpmslow.out'" 10 || gw_fail "no signature was held"
[ "$(grep -c 'dev-b: upstream connected' "$WORK/gatewayd.log")" = 1 ] ||
  gw_fail "dev-b connected while its signature was held"
gw_tpmslow_control 'chip slb9672'
gw_wait_for "[ \$(grep -c 'dev-b: upstream connected' '$WORK/gatewayd.log') -ge 2 ]" 15 ||
  gw_fail "dev-b did not connect once its signature was released"
grep -q 'released TPM2_Sign after' "$WORK/tpmslow.out" || gw_fail "tpmslow did not say it released"

# Cuts: both sessions are reset, a new connection is refused during the cut, and both
# devices are back once netcut relays again.
kill -USR1 "$NETCUT_PID"
gw_wait_for "grep -q 'netcut: cut: 2 connections reset' '$WORK/netcut.out'" 5 ||
  gw_fail "netcut did not reset the 2 sessions: $(cat "$WORK/netcut.out")"
if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$NETCUT_PORT" 2>/dev/null; then
  gw_fail "netcut accepted a connection during the cut"
fi
gw_wait_for "grep -q 'relaying again' '$WORK/netcut.out'" 10 || gw_fail "netcut did not relay again"
for id in dev-a dev-b; do
  grep -q "$id: upstream connection .* lost" "$WORK/gatewayd.log" || gw_fail "$id's session survived the cut"
done
gw_wait_for "[ \$(grep -c 'dev-a: upstream connected' '$WORK/gatewayd.log') -ge 2 ] &&
  [ \$(grep -c 'dev-b: upstream connected' '$WORK/gatewayd.log') -ge 3 ]" 15 ||
  gw_fail "the devices did not reconnect after the cut"

# Stamps: a reading's send time (gwsensor -T) and its arrival (mqttstamp), in that order.
sensor dev-a -T -n 3 -t 20
wait "$(sensor_pid dev-a)" || gw_fail "dev-a's sensor failed: $(cat "$WORK/sensor-dev-a.out")"
gw_wait_for "grep -q ' devices/dev-a/telemetry/temp dev-a 3 ' '$WORK/stamp.out'" 10 ||
  gw_fail "mqttstamp did not get dev-a's readings: $(cat "$WORK/stamp.out")"
awk '$2 == "devices/dev-a/telemetry/temp" && !($5 > 0 && $1 >= $5) { bad = 1 } END { exit bad }' \
  "$WORK/stamp.out" || gw_fail "a reading arrived before it was sent: $(cat "$WORK/stamp.out")"
gw_pass
