#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Benchmark: what the spool costs and how fast it drains. N sensors (default 50), each sending
# confirmable readings back to back (one outstanding, as a sensor does) for T seconds (default
# 10), through gatewayd into mosquitto:
#   upstream  spool.ack = upstream: answered after the PUBACK (the baseline: no fsync wait)
#   durable   spool.ack = durable, fsync per batch (the default)
#   interval  spool.ack = durable, fsync every 100 ms
# For each: readings acknowledged per second, the answer time p50/p99 (ms, from the gaps
# between a sensor's answers), and the ratio to the baseline. Then the drain: with the broker
# stopped, T seconds of readings go into the spool (durable); the broker comes back and the
# time until the subscriber holds all of them gives the replay rate, against the baseline's
# live rate. Prints figures, asserts nothing. Local only, stopped at the end.
#   tests/bench/uplink-spool.sh [N] [T]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-50}
secs=${2:-10}
GW_TEST=bench-spool
source tests/bench/bench.sh
# The observer's session outlives the broker's restart in the drain, so that what the devices
# replay before it reconnects is kept for it.
GW_BROKER_PERSIST=true
gw_pki_init
gw_start_broker
gw_start_subscriber

first=1
run() {
  local mode=$1 extra t0 got
  case $mode in
  upstream) extra='spool = { ack = "upstream"; };' ;;
  durable) extra='' ;;
  interval) extra='spool = { fsync = "interval"; fsync_interval = 100; };' ;;
  esac
  rm -rf "$WORK/state" "$WORK"/sensor-*.out
  mkdir -m 700 "$WORK/state"
  GW_CONFIG_EXTRA=$extra gw_write_config
  if [ "$first" = 1 ]; then
    for id in $(devices); do gw_add_device "$id"; done
    cp -a "$WORK/state" "$WORK/state-template"
    first=0
  else
    rm -rf "$WORK/state" && cp -a "$WORK/state-template" "$WORK/state"
  fi
  gw_start_gateway "$n"
  for id in $(devices); do sensor "$id" -n 100000000 -t "$secs"; done
  for id in $(devices); do wait "$(sensor_pid "$id")" || true; done
  got=$(total_acked)
  result[$mode]=$(printf '%-9s %9d %9.0f %7s %7s' "$mode" "$got" "$(echo "$got / $secs" | bc -l)" $(latency))
  rate[$mode]=$(echo "$got / $secs" | bc -l)
  kill -TERM "$GATEWAY_PID"
  wait "$GATEWAY_PID" 2>/dev/null || true
  gw_log "$mode: $got readings"
}

declare -A result rate
run upstream
run durable
run interval

# The drain: a backlog built with the broker away, then replayed.
rm -rf "$WORK/state" "$WORK"/sensor-*.out && cp -a "$WORK/state-template" "$WORK/state"
gw_write_config
gw_start_gateway "$n"
kill "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true
for id in $(devices); do sensor "$id" -n 100000000 -t "$secs"; done
for id in $(devices); do wait "$(sensor_pid "$id")" || true; done
backlog=$(total_acked)
: >"$WORK/sub.out"
mv "$WORK/mosquitto.log" "$WORK/mosquitto-1.log"
gw_run_broker || gw_fail "mosquitto did not restart"
gw_start_subscriber
t0=$(gw_now_ms)
gw_wait_for "[ \$(wc -l <'$WORK/sub.out') -ge $backlog ]" 600 ||
  gw_log "only $(wc -l <"$WORK/sub.out") of $backlog replayed in 600 s"
tdrain=$(($(gw_now_ms) - t0))
kill -TERM "$GATEWAY_PID"
wait "$GATEWAY_PID" 2>/dev/null || true

printf '\n%d sensors, %d s each, CON readings back to back, mosquitto on 127.0.0.1\n' "$n" "$secs"
printf '%-9s %9s %9s %7s %7s %s\n' mode readings per-s p50-ms p99-ms "vs upstream"
for m in upstream durable interval; do
  printf '%s %7.2f\n' "${result[$m]}" "$(echo "${rate[$m]} / ${rate[upstream]}" | bc -l)"
done
printf 'drain: %d readings spooled with the broker away, replayed in %.2f s (subscriber and\n' \
  "$backlog" "$(echo "$tdrain / 1000" | bc -l)"
printf '       sessions reconnecting included): %.0f per s, %.2f of the upstream live rate\n' \
  "$(echo "$backlog * 1000 / $tdrain" | bc -l)" \
  "$(echo "$backlog * 1000 / $tdrain / ${rate[upstream]}" | bc -l)"
