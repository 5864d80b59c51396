#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Benchmark: on-demand upstream sessions (issue 15). N paired devices (default 1,000) on the
# soft backend with upstream.sessions = "on-demand", added through the running daemon; A of
# them (default N/10) active at a time. Prints:
#   - gatewayd's start to ready and its RSS: with no device, with the N idle (no session), and
#     with all N connected (upstream.sessions = "always", the baseline), per device;
#   - gwctl device list and device show through the daemon;
#   - three waves of A sensors (one gwfleet process), each sending one reading (-T: its send
#     time in the payload) that mqttstamp times at the broker: "cold" (no TLS session kept: a full
#     handshake each), "idled-out" (after every session went idle: a resumed handshake each),
#     and "connected" (at once after, their sessions still up: no connect, the baseline).
#     For each: delivery p50/p99/max (send to the broker's delivery, including the sensor's own
#     DTLS handshake), upstream connects made and how many resumed, and connects per second.
# Prints figures, asserts nothing. Local only (127.0.0.1, free ports, a temp dir), every
# process stopped by PID.
#   tests/bench/on-demand.sh [N] [A]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-1000}
active=${2:-$((n / 10))}
[ "$active" -ge 1 ] && [ "$active" -le "$n" ] || {
  echo "on-demand.sh: A ($active) must be 1 to N ($n)" >&2
  exit 2
}
# Long enough for a wave to end within it (the "connected" wave needs its sessions up).
idle_timeout=15
GW_TEST=bench-on-demand
source tests/bench/bench.sh
GWFLEET=$BENCH_BUILD/tests/tools/gwfleet
gw_pki_init
gw_start_broker
broker_operator_log
gw_start_stamper 'devices/+/telemetry/#'

count() { grep -c "$1" "$WORK/gatewayd.log" || true; }
handshakes() { gw_gwctl status | sed -n 's/^upstream-connects: .*TLS handshakes \([0-9]*\) full, \([0-9]*\) resumed$/\1 \2/p'; }

declare -A line
# wave NAME: dev-1..dev-A send one reading each, all at once; waits until the broker delivered
# all A; keeps the wave's figures.
wave() {
  local name=$1 i t0 t1 h0 h1 c0 c1 lat
  read -r -a h0 < <(handshakes)
  c0=$(count 'upstream connected')
  : >"$WORK/stamp.out"
  t0=$(date +%s%3N)
  timeout 200 "$GWFLEET" -a 127.0.0.1 -p "$COAP_PORT" -K "$WORK/wave-keys" -n 1 -T -t 120 \
    >"$WORK/gwfleet-$name.out" 2>&1 || gw_log "$name: gwfleet: $(tail -n 2 "$WORK/gwfleet-$name.out")"
  gw_wait_for "[ \$(grep -c ' devices/dev-[0-9]*/telemetry/' '$WORK/stamp.out') -ge $active ]" 300 ||
    gw_fail "$name: the broker delivered $(grep -c telemetry "$WORK/stamp.out") of $active readings"
  t1=$(awk '$2 ~ /telemetry/ { if ($1 > m) m = $1 } END { print m }' "$WORK/stamp.out")
  read -r -a h1 < <(handshakes)
  c1=$(count 'upstream connected')
  lat=$(awk '$2 ~ /telemetry/ { print $1 - $5 }' "$WORK/stamp.out" | sort -n | awk '{ v[NR] = $1 }
    END { printf "%d %d %d", v[int(NR * 0.5) + 1], v[int(NR * 0.99) + 1], v[NR] }')
  read -r p50 p99 max <<<"$lat"
  line[$name]=$(printf '%-10s %8d %7d %7d %7d %9d %8d %10.1f' "$name" "$active" "$p50" "$p99" \
    "$max" $((c1 - c0)) $((h1[1] - h0[1])) \
    "$(echo "($c1 - $c0) * 1000 / ($t1 - $t0 + ($t1 == $t0))" | bc -l)")
  gw_log "${line[$name]}"
}

# ---- no device: the process's own footprint.
gw_write_config "sessions = \"on-demand\"; idle_timeout = $idle_timeout;"
# As production runs it (write_config): info, not the tests' debug.
sed -i 's/log_level = "debug";/log_level = "info";/' "$WORK/gateway.conf"
bench_start_gateway
rss0=$(gateway_rss_kib)

# ---- N devices, added through the daemon: none connects.
t0=$(date +%s)
for i in $(seq 1 "$n"); do gw_add_device "dev-$i"; done
provision_s=$(($(date +%s) - t0))
stop_gateway
bench_start_gateway
start_ms=$started_ms
rss_idle=$(gateway_rss_kib)
list_ms=$(median_ms gw_gwctl device list)
show_ms=$(median_ms gw_gwctl device show "dev-$n")
[ "$(count 'upstream connected')" = 0 ] || gw_fail "on demand, $(count 'upstream connected') devices connected at the start"

(
  umask 077
  for i in $(seq 1 "$active"); do printf 'dev-%s %s\n' "$i" "$(gw_psk "dev-$i")"; done >"$WORK/wave-keys"
)
wave cold
gw_wait_for "[ \$(grep -c 'upstream idle for' '$WORK/gatewayd.log') -ge $active ]" $((idle_timeout * 4 + 60)) ||
  gw_fail "only $(count 'upstream idle for') of $active sessions went idle"
# gatewayd gives freed memory back to the system a second after sessions park (malloc_trim):
# its RSS once it fell below what it was as the last one parked.
rss_parked=$(gateway_rss_kib)
gw_wait_for "[ \$(gateway_rss_kib) -lt $rss_parked ]" 10 ||
  gw_log "gatewayd's RSS did not fall from $rss_parked KiB after the sessions parked"
rss_kept=$(gateway_rss_kib)
wave idled-out
wave connected
stop_gateway

# ---- the baseline: every session up.
sed -i 's/sessions = "on-demand";/sessions = "always";/' "$WORK/gateway.conf"
bench_start_gateway
start_always_ms=$started_ms
gw_wait_for "[ \$(grep -c 'upstream connected' '$WORK/gatewayd.log') -ge $n ]" 600 ||
  gw_fail "only $(count 'upstream connected') of $n connected"
rss_always=$(gateway_rss_kib)
stop_gateway

per() { echo "($1 - $2) / $3" | bc -l | awk '{ printf "%.1f", $1 }'; }
echo
echo "on-demand: $n paired devices (soft backend, each with a PSK and a certificate), $active"
echo "active at a time, upstream.idle_timeout $idle_timeout s, mosquitto on 127.0.0.1, release"
echo "build, $(nproc) cores shared by the sensors, gatewayd and mosquitto."
echo "provisioning $n devices through the daemon: $provision_s s"
echo "gatewayd start to ready: $start_ms ms on demand; $start_always_ms ms with sessions always (ready"
echo "comes before the connects)"
echo "gwctl through the daemon: device list $list_ms ms, device show $show_ms ms (median of 5)"
echo "gatewayd RSS: $rss0 KiB with no device; $rss_idle KiB with $n idle ($(per "$rss_idle" "$rss0" "$n") KiB per idle"
echo "device); $rss_kept KiB after $active went idle with a TLS session kept ($(per "$rss_kept" "$rss_idle" "$active") KiB each);"
echo "$rss_always KiB with all $n connected ($(per "$rss_always" "$rss0" "$n") KiB per connected device)"
echo "waves of $active sensors, one reading each, all at once; delivery = the sensor's send to the"
echo "broker's delivery (ms), including the sensor's own DTLS handshake:"
printf '%-10s %8s %7s %7s %7s %9s %8s %10s\n' wave readings p50 p99 max connects resumed connects/s
for w in cold idled-out connected; do echo "${line[$w]}"; done
gw_pass
