#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Benchmark: what reloads cost the traffic. N sensors (default 50) send confirmable readings
# back to back for T seconds (default 10) through gatewayd into mosquitto, twice in the same
# invocation:
#   baseline  no reload
#   reloads   a SIGHUP every 500 ms, each one adding or removing a route (so that routes,
#             policies and every device's session are compared each time; no session changes)
# For each: readings acknowledged per second, answer time p50/p99 (ms), answers other than
# 2.04, DTLS handshakes and upstream connects beyond the first; then the ratio to the baseline
# and the time a reload took (as gatewayd logs it: parse, compare, apply; median and max).
# Prints figures, asserts nothing. Local only, stopped at the end.
#   tests/bench/reload-load.sh [N] [T]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-50}
secs=${2:-10}
GW_TEST=bench-reload
source tests/bench/bench.sh
gw_pki_init
gw_start_broker
gw_start_subscriber

gw_write_config
for id in $(devices); do gw_add_device "$id"; done
extra_route='  { resource = "pressure"; topic = "devices/${device}/pressure"; },'

declare -A result rate
run() {
  local mode=$1 got stop i=0
  rm -f "$WORK"/sensor-*.out
  gw_start_gateway "$n"
  for id in $(devices); do sensor "$id" -n 100000000 -t "$secs"; done
  if [ "$mode" = reloads ]; then
    stop=$(($(gw_now_ms) + secs * 1000))
    while [ "$(gw_now_ms)" -lt "$stop" ]; do
      if grep -q 'resource = "pressure"' "$WORK/gateway.conf"; then
        sed -i '/resource = "pressure"/d' "$WORK/gateway.conf"
      else
        sed -i "s|^routes = (|routes = (\n$extra_route|" "$WORK/gateway.conf"
      fi
      i=$((i + 1))
      kill -HUP "$GATEWAY_PID"
      gw_wait_for "[ \$(grep -c '^gatewayd: reloaded' '$WORK/gatewayd.log') -ge $i ]" 10 ||
        gw_fail "reload $i did not finish"
      sleep 0.5
    done
  fi
  for id in $(devices); do wait "$(sensor_pid "$id")" || true; done
  got=$(total_acked)
  rate[$mode]=$(echo "$got / $secs" | bc -l)
  result[$mode]=$(printf '%-9s %9d %9.0f %7s %7s %7d %11d %9d' "$mode" "$got" "${rate[$mode]}" \
    $(latency) "$(others)" $(($(grep -c 'sensor connected from' "$WORK/gatewayd.log") - n)) \
    $(($(grep -c 'upstream connected' "$WORK/gatewayd.log") - n)))
  if [ "$mode" = reloads ]; then
    reloads=$i
    sed -n 's/^gatewayd: reloaded .* applied in \([0-9]*\) ms on it)$/\1/p' "$WORK/gatewayd.log" | sort -n >"$WORK/reload-ms"
    reload_p50=$(awk '{ v[NR] = $1 } END { print v[int(NR / 2) + 1] }' "$WORK/reload-ms")
    reload_max=$(tail -n 1 "$WORK/reload-ms")
    grep -q ': 0 of [0-9]* upstream sessions started again' "$WORK/gatewayd.log" ||
      gw_log "no reload said 0 sessions started again: $(grep '^gatewayd: reloaded' "$WORK/gatewayd.log" | head -n 2)"
  fi
  kill -TERM "$GATEWAY_PID"
  wait "$GATEWAY_PID" 2>/dev/null || true
  : >"$WORK/gatewayd.log"
}

run baseline
run reloads

echo
echo "reload under load: $n sensors, $secs s each run, $(nproc) cores"
printf '%-9s %9s %9s %7s %7s %7s %11s %9s\n' mode readings per_s p50_ms p99_ms other extra_dtls extra_mqtt
echo "${result[baseline]}"
echo "${result[reloads]}"
printf 'ratio reloads/baseline: %.2f\n' "$(echo "${rate[reloads]} / ${rate[baseline]}" | bc -l)"
echo "reloads: $reloads, each on the loop (compare and apply, as gatewayd logs it; the parse runs off the loop): median ${reload_p50} ms, max ${reload_max} ms"
gw_pass
