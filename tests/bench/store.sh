#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Benchmark: the cost of a large store (issue 15). N devices (default 300), each with a PSK and
# a certificate, on the soft backend, added through a running gatewayd (gwctl, as a technician
# does). Then, with gatewayd stopped: the time of one offline gwctl call (device show, device
# list, device add of one more and its removal), the median of 5 each; and gatewayd's time from
# its start to its ready line, with the broker away (no upstream connects), and its RSS then.
# Prints figures, asserts nothing. Local only (127.0.0.1, free ports, a temp dir).
#   tests/bench/store.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-300}
GW_TEST=bench-store
source tests/bench/bench.sh
gw_pki_init
gw_start_broker
write_config
gw_start_gateway 0
for i in $(seq 1 "$n"); do gw_add_device "dev-$i"; done
stop_gateway

add_remove() { gw_gwctl device add extra >/dev/null && gw_gwctl device remove extra; }
show_ms=$(median_ms gw_gwctl device show dev-1)
list_ms=$(median_ms gw_gwctl device list)
add_ms=$(median_ms add_remove)

# gatewayd's start with the broker away: loading the store, the spool, ready.
kill "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true
starts=()
for i in 1 2 3; do
  bench_start_gateway
  starts+=("$started_ms")
  rss=$(gateway_rss_kib)
  stop_gateway
done
start_ms=$(printf '%s\n' "${starts[@]}" | sort -n | sed -n 2p)

echo
echo "store: $n devices (soft backend, each with a PSK and a certificate), release build"
printf '%-34s %8s %12s\n' "" ms "ms/device"
for row in "gwctl device show (offline):$show_ms" "gwctl device list (offline):$list_ms" \
  "gwctl device add + remove (offline):$add_ms" "gatewayd start to ready:$start_ms"; do
  printf '%-34s %8d %12.3f\n' "${row%%:*}" "${row##*:}" "$(echo "${row##*:} / $n" | bc -l)"
done
echo "gatewayd RSS when ready, the broker away: $rss KiB ($(echo "$rss / $n" | bc -l | awk '{ printf "%.1f", $1 }') KiB per device)"
gw_pass
