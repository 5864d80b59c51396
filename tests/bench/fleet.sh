#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Benchmark: what a reading costs as the fleet grows (issue 15). One gatewayd with N devices
# (default 1,000) on the soft backend, added through the running daemon (gwctl, as a
# technician does), every one of them connected upstream (mutual TLS to mosquitto). Then:
#   burst-added    at once after the N were added to the running daemon: all N sensors start
#                  together, R readings each (default 20); the time until the last finished
#   burst-restart  the same after gatewayd restarted with the N in its store
#   rate-S         then S sensors (default 50) back to back for T seconds (default 10)
#   rate-N         then all N sensors back to back for T seconds
# the two rates K times in turn (default 3; the machine's cores are shared, and one pair's
# ratio ranged 0.84-1.05 over 11 pairs of one build), and the median of the K ratios,
# and the same bursts and rates against coapsink, libcoap serving the same DTLS-PSK load alone
# (the same keys, socket buffer and session limits, driven as bridges/coap drives libcoap), on
# the same port, after gatewayd stopped: the baseline, and what the sensors themselves cost.
# The sensors are one gwfleet process (tests/tools/gwfleet.c), all started at once.
# For each: sensors up, readings acknowledged, seconds (a burst: until the last sensor was
# done; a rate: from all sensors up to the end), per second, p50/p99 of a reading's send to its
# 2.04 (ms), CPU of the server (gatewayd or coapsink) per reading in microseconds. Then the
# ratios of the targets: rate-N / rate-S (target >= 0.9) and gatewayd's burst time against
# coapsink's (target <= 1.5).
# The machine's cores are shared by the sensors, mosquitto and the server. Prints figures,
# asserts nothing. Local only (127.0.0.1, free ports, a temp dir), everything stopped by PID.
# GATEWAYD=path/to/gatewayd runs another build (of another tree, built with the same options).
#   tests/bench/fleet.sh [N] [S] [T] [R] [K]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-1000}
small=${2:-50}
secs=${3:-10}
burst_readings=${4:-20}
rounds=${5:-3}
[ "$small" -le "$n" ] || {
  echo "fleet.sh: S ($small) must not exceed N ($n)" >&2
  exit 2
}
GW_TEST=bench-fleet
want_gatewayd=${GATEWAYD:-}
source tests/bench/bench.sh
[ -z "$want_gatewayd" ] || GATEWAYD=$want_gatewayd
COAPSINK=$BENCH_BUILD/tests/tools/coapsink
GWFLEET=$BENCH_BUILD/tests/tools/gwfleet
gw_pki_init
gw_start_broker
broker_operator_log

connected() { grep -c 'upstream connected' "$WORK/gatewayd.log" || true; }

declare -A line rate seconds up_s
# measure MODE SERVER_PID COUNT burst|SECONDS: the first COUNT sensors at once (gwfleet, one
# process), R readings each (burst) or back to back for SECONDS; its figures kept.
measure() {
  local mode=$1 pid=$2 count=$3 limit=$4 c0 out cpu opts sensors up acked others failed \
    all_up done per_s p50 p99
  (umask 077 && head -n "$count" "$WORK/sink-keys" >"$WORK/keys-$count")
  if [ "$limit" = burst ]; then
    opts=(-n "$burst_readings" -t 300)
  else
    opts=(-t "$limit")
  fi
  c0=$(cpu_s "$pid")
  out=$(timeout 400 "$GWFLEET" -a 127.0.0.1 -p "$COAP_PORT" -K "$WORK/keys-$count" "${opts[@]}") ||
    gw_log "$mode: gwfleet failed"
  cpu=$(minus "$(cpu_s "$pid")" "$c0")
  grep '^gwfleet:' <<<"$out" >&2 || true
  read -r _ sensors up acked others failed all_up done per_s p50 p99 \
    < <(grep '^result ' <<<"$out" || echo "result 0 0 0 0 0 -1 0 0 - -")
  if [ "$limit" = burst ]; then
    seconds[$mode]=$done
    up_s[$mode]=$all_up
    rate[$mode]=$(echo "$acked / $done" | bc -l)
  else
    # The rate leaves the handshakes out: from all up to the end.
    seconds[$mode]=$(echo "$done - $all_up" | bc -l)
    rate[$mode]=$per_s
  fi
  line[$mode]=$(printf '%-22s %6d %8d %8.2f %9.0f %7s %7s %9.0f %s' "$mode" "$up" "$acked" \
    "${seconds[$mode]}" "${rate[$mode]}" "$p50" "$p99" \
    "$(echo "$cpu * 1000000 / ($acked + ($acked == 0))" | bc -l)" \
    "$([ "$others$failed" = 00 ] || echo "($others other answers, $failed sensors failed)")")
  gw_log "${line[$mode]}"
}

# ---- provisioning through the running daemon: each device connects upstream as it is added.
write_config
gw_start_gateway 0
t0=$(date +%s.%N)
for i in $(seq 1 "$n"); do gw_add_device "dev-$i"; done
provision_s=$(echo "$(date +%s.%N) - $t0" | bc -l)
gw_wait_for "[ \$(connected) -ge $n ]" 300 || gw_fail "only $(connected) of $n connected upstream"
(
  umask 077
  for i in $(seq 1 "$n"); do printf 'dev-%s %s\n' "$i" "$(gw_psk "dev-$i")"; done >"$WORK/sink-keys"
)

measure "gatewayd burst-added" "$GATEWAY_PID" "$n" burst
stop_gateway
cp "$WORK/gatewayd.log" "$WORK/gatewayd-added.log"
gw_start_gateway "$n"
gw_wait_for "[ \$(connected) -ge $n ]" 300 || gw_fail "only $(connected) of $n connected upstream"
measure "gatewayd burst-restart" "$GATEWAY_PID" "$n" burst
for k in $(seq 1 "$rounds"); do
  measure "gatewayd rate-$small #$k" "$GATEWAY_PID" "$small" "$secs"
  measure "gatewayd rate-$n #$k" "$GATEWAY_PID" "$n" "$secs"
done
rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$GATEWAY_PID/status")
stop_gateway

"$COAPSINK" -a 127.0.0.1 -p "$COAP_PORT" -K "$WORK/sink-keys" -t 900 >"$WORK/coapsink.out" 2>&1 &
sink=$!
GW_PIDS+=("$sink")
gw_wait_for "grep -q listening '$WORK/coapsink.out' || ! kill -0 $sink 2>/dev/null" 10
grep -q listening "$WORK/coapsink.out" || gw_fail "coapsink did not start: $(cat "$WORK/coapsink.out")"
measure "coapsink burst" "$sink" "$n" burst
for k in $(seq 1 "$rounds"); do
  measure "coapsink rate-$small #$k" "$sink" "$small" "$secs"
  measure "coapsink rate-$n #$k" "$sink" "$n" "$secs"
done
kill -TERM "$sink"
wait "$sink" 2>/dev/null || true

# over A B: A / B, two decimals.
over() { echo "$1 / $2" | bc -l | awk '{ printf "%.2f", $1 }'; }
ratio() { over "${rate[$1]}" "${rate[$2]}"; }
# ratios SERVER: each round's rate-N / rate-S, then the median.
ratios() {
  local k all=()
  for k in $(seq 1 "$rounds"); do
    all+=("$(ratio "$1 rate-$n #$k" "$1 rate-$small #$k")")
  done
  printf '%s (rounds: %s)' "$(printf '%s\n' "${all[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')" "${all[*]}"
}
echo
echo "fleet: $n devices connected upstream (soft backend), one gatewayd ($GATEWAYD),"
echo "mosquitto on 127.0.0.1,"
echo "release build, $(nproc) cores shared by the sensors (all in one gwfleet process), the"
echo "server and mosquitto. Bursts: $burst_readings readings per sensor, all sensors at once,"
echo "seconds until the last was done. Rates: from all sensors up (first reading answered) to"
echo "the end. p50/p99: a reading's send to its 2.04. up: sensors whose first reading was answered."
printf '%-22s %6s %8s %8s %9s %7s %7s %9s\n' run up readings seconds per_s p50_ms p99_ms cpu_us/rd
for m in "gatewayd burst-added" "gatewayd burst-restart" "coapsink burst"; do
  echo "${line[$m]}"
done
for s in gatewayd coapsink; do
  for k in $(seq 1 "$rounds"); do
    echo "${line[$s rate-$small #$k]}"
    echo "${line[$s rate-$n #$k]}"
  done
done
echo "provisioning $n devices through the daemon: $(printf '%.1f' "$provision_s") s;" \
  "gatewayd RSS with all $n connected after the rates: $rss KiB"
echo "rate-$n / rate-$small, median of $rounds rounds: gatewayd $(ratios gatewayd) (target >= 0.9);" \
  "coapsink $(ratios coapsink)"
echo "bursts, all $n sensors up (first reading answered) after: gatewayd added" \
  "${up_s[gatewayd burst-added]} s, restart ${up_s[gatewayd burst-restart]} s, coapsink" \
  "${up_s[coapsink burst]} s"
echo "handshake burst (all up) against coapsink's: added" \
  "$(over "${up_s[gatewayd burst-added]}" "${up_s[coapsink burst]}"), restart" \
  "$(over "${up_s[gatewayd burst-restart]}" "${up_s[coapsink burst]}") (target <= 1.5)"
echo "whole burst ($burst_readings readings each) against coapsink's: added" \
  "$(over "${seconds[gatewayd burst-added]}" "${seconds[coapsink burst]}"), restart" \
  "$(over "${seconds[gatewayd burst-restart]}" "${seconds[coapsink burst]}")"
gw_pass
