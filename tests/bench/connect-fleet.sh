#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Benchmark: N devices (default 1,000) connect upstream at once through one gatewayd, on the
# tpm backend (swtpm, no resource manager) and, as the baseline in the same run, on the soft
# backend. For each: time from gatewayd's start until all N are connected, whether they stay
# connected (HOLD seconds, default 15), TPM commands and
# TPM time per full handshake, gatewayd's RSS with the devices loaded but the broker away
# (before) and with all N connected (after). Prints the figures; asserts nothing.
# Local only: mosquitto, swtpm and gatewayd on 127.0.0.1, stopped at the end.
#   tests/bench/connect-fleet.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-1000}
hold=${HOLD:-15} # seconds all N must stay connected
GW_TEST=bench-connect
source tests/bench/bench.sh
gw_pki_init
gw_start_swtpm
gw_start_broker

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
now() { date +%s.%N; }
connected() { grep -c 'upstream connected' "$WORK/gatewayd.log" || true; }

declare -A result
bench() {
  local b=$1 t0 t1 tadd before after stats drops
  rm -rf "$WORK/state"
  mkdir -m 700 "$WORK/state"
  GW_BACKEND=$b gw_write_config

  # Provision through the running daemon, as a technician would.
  gw_start_gateway 0
  t0=$(now)
  for i in $(seq 1 "$n"); do gw_add_device "dev-$i"; done
  tadd=$(echo "$(now) - $t0" | bc)
  gw_wait_for "[ \$(connected) -ge $n ]" 120 || gw_fail "$b: only $(connected) of $n connected after adding"
  stop_gateway

  # Before: every device loaded, none connected (the broker is away).
  kill "$BROKER_PID"
  wait "$BROKER_PID" 2>/dev/null || true
  gw_start_gateway 0
  sleep 2
  before=$(rss_kib "$GATEWAY_PID")
  stop_gateway
  gw_run_broker || gw_fail "mosquitto did not restart"

  # Cold start with the broker up: all N connect at once.
  t0=$(now)
  : >"$WORK/gatewayd.log"
  "$GATEWAYD" -d -c "$WORK/gateway.conf" >>"$WORK/gatewayd.log" 2>&1 &
  GATEWAY_PID=$!
  GW_PIDS+=("$GATEWAY_PID")
  gw_wait_for "[ \$(connected) -ge $n ]" 300 || gw_fail "$b: only $(connected) of $n connected"
  t1=$(now)
  # They must stay connected, not merely arrive.
  sleep "$hold"
  after=$(rss_kib "$GATEWAY_PID")
  drops=$(grep -c 'upstream connection .* lost' "$WORK/gatewayd.log" || true)
  stop_gateway
  # TPM commands per handshake: those of the run less those at start (storage key, master key).
  stats=$(awk -v n="$n" '
    /keystore: [0-9]+ TPM commands at start/ { start = $3 }
    /keystore: [0-9]+ TPM commands, [0-9]+ signatures/ {
      printf "%.2f TPM commands and %s ms per handshake (%d signatures)", ($3 - start) / $6, $8, $6 }
  ' "$WORK/gatewayd.log")
  [ -n "$stats" ] || stats="no TPM"
  result[$b]="$(printf '%-5s %8.2f %10.2f %10d %10d %10.1f %6d  %s' "$b" "$(echo "$t1 - $t0" | bc)" \
    "$tadd" "$before" "$after" "$(echo "($after - $before) / $n" | bc -l)" "$drops" "$stats")"
  gw_log "$b done"
}

bench soft
bench tpm
echo
echo "connect-fleet: $n devices, one gatewayd, mosquitto and swtpm on 127.0.0.1, $(nproc) cores"
printf '%-5s %8s %10s %10s %10s %10s %6s  %s\n' backend connect-s provision-s rss-before \
  rss-after KiB/device drops "TPM per full handshake"
echo "(rss in KiB; drops: sessions lost during the ${hold} s all were held connected)"
echo "${result[soft]}"
echo "${result[tpm]}"
gw_pass
