# SPDX-License-Identifier: Apache-2.0
# Sourced by each benchmark, from the project's root, after it set n (its number of devices or
# senders) and GW_TEST (bench-WHAT): installs what is missing, builds a release without
# sanitizers in .build/bench, points tests/integration/lib.sh at that build, and makes the temp
# dir (removed at the end, as the tests do).
scripts/deps.sh all
scripts/build.sh .build/bench -Dbuildtype=release -Db_sanitize=none

BENCH_BUILD=$PWD/.build/bench
export GATEWAYD=$BENCH_BUILD/gatewayd GWCTL=$BENCH_BUILD/gwctl
export GWSENSOR=$BENCH_BUILD/tests/tools/gwsensor GW_TEST
export TPMSLOW=$BENCH_BUILD/tests/tools/tpmslow NETCUT=$BENCH_BUILD/tests/tools/netcut
export MQTTSTAMP=$BENCH_BUILD/tests/tools/mqttstamp
source tests/integration/lib.sh
# One socket per device on each side, plus files; no more than the hard limit allows (this
# machine's: 20,000).
want_files=$((4 * n + 1024))
hard_files=$(ulimit -Hn)
[ "$hard_files" = unlimited ] || [ "$want_files" -le "$hard_files" ] || want_files=$hard_files
ulimit -n "$want_files"
gw_setup

# dev-1 .. dev-N.
devices() { for i in $(seq 1 "$n"); do echo "dev-$i"; done; }
# Readings acknowledged in all sensor outputs, and answers other than 2.04 (or the time limit).
total_acked() { cat "$WORK"/sensor-*.out | awk '$3 == "2.04"' | wc -l; }
others() { cat "$WORK"/sensor-*.out | awk '$3 != "2.04" && $3 != "stopped"' | wc -l; }
# Answer-time percentiles (ms) from the gaps between a sensor's answers, less the pacing
# interval $1 (0 when back to back): "p50 p99".
latency() {
  local pace=${1:-0} f
  for f in "$WORK"/sensor-*.out; do
    awk -v pace="$pace" '$3 == "2.04" { if (prev) print $1 - prev - pace; prev = $1 }' "$f"
  done | sort -n | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "- -"; exit }
    printf "%d %d", v[int(NR * 0.5) + 1], v[int(NR * 0.99) + 1] }'
}
# The broker, restarted to log what an operator keeps (errors, warnings, notices, information),
# not every packet as the tests' broker does (log_type all): that costs the shared cores.
broker_operator_log() {
  kill "$BROKER_PID"
  wait "$BROKER_PID" 2>/dev/null || true
  sed -i 's/^log_type all$/log_type error\nlog_type warning\nlog_type notice\nlog_type information/' \
    "$WORK/mosquitto.conf"
  mv "$WORK/mosquitto.log" "$WORK/mosquitto-setup.log"
  gw_run_broker || gw_fail "mosquitto did not restart: $(cat "$WORK/mosquitto.out")"
}
# CPU seconds (user + system) a process has used so far.
cpu_s() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' \
    "/proc/$1/stat" 2>/dev/null || echo 0
}
minus() { echo "$1 - $2" | bc -l | awk '{ printf "%.2f", $1 }'; }
# write_config [EXTRA]: gw_write_config with gatewayd's log level as production runs it: info,
# not the tests' debug.
write_config() {
  GW_CONFIG_EXTRA=${1:-} gw_write_config
  sed -i 's/log_level = "debug";/log_level = "info";/' "$WORK/gateway.conf"
}
# bench_start_gateway: starts gatewayd on $WORK/gateway.conf and waits for its ready line (at
# most 120 s); started_ms is the time from its start to that line.
bench_start_gateway() {
  local t0
  t0=$(date +%s%N)
  : >"$WORK/gatewayd.log"
  "$GATEWAYD" -d -c "$WORK/gateway.conf" >>"$WORK/gatewayd.log" 2>&1 &
  GATEWAY_PID=$!
  GW_PIDS+=("$GATEWAY_PID")
  gw_wait_for "grep -q 'ready:' '$WORK/gatewayd.log'" 120 || gw_fail "gatewayd did not start"
  started_ms=$((($(date +%s%N) - t0) / 1000000))
}
stop_gateway() {
  kill -TERM "$GATEWAY_PID"
  wait "$GATEWAY_PID" 2>/dev/null || true
}
# gatewayd's resident memory now, in KiB.
gateway_rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$GATEWAY_PID/status"; }
# median_ms CMD...: the median wall time of 5 runs of CMD, in ms.
median_ms() {
  local i t0
  for i in 1 2 3 4 5; do
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1 || gw_fail "$* failed"
    echo $((($(date +%s%N) - t0) / 1000000))
  done | sort -n | sed -n 3p
}
