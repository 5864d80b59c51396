#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Benchmark: the system calls gatewayd makes per reading. One sensor sends COUNT confirmable
# readings (default 2000) back to back to gatewayd (spool.ack = durable, the default), which
# runs under strace -f -c; the observer waits until the broker delivered all of them, then
# gatewayd is stopped and strace's counts are printed per reading, with the spool's file calls
# (pwrite64, pread64, fdatasync/fsync/syncfs) first. Start and stop are part of the count; at
# 2000 readings they add well under 0.1 per reading. Prints figures, asserts nothing.
# To compare two trees, run it in each (GATEWAYD=path/to/other/gatewayd picks another binary
# built with the same options).
#   tests/bench/syscalls.sh [COUNT]
set -euo pipefail
cd "$(dirname "$0")/../.."
count=${1:-2000}
n=1
GW_TEST=bench-syscalls
want_gatewayd=${GATEWAYD:-}
source tests/bench/bench.sh
[ -n "$want_gatewayd" ] && GATEWAYD=$want_gatewayd
gw_pki_init
gw_start_broker
gw_start_subscriber
gw_write_config
gw_add_device dev-1

# gatewayd under strace: the wrapper is what lib.sh starts; strace ends when gatewayd does.
real=$GATEWAYD
GATEWAYD=$WORK/gatewayd-strace
cat >"$GATEWAYD" <<EOF
#!/bin/sh
exec strace -f -c -o '$WORK/strace.out' '$real' "\$@"
EOF
chmod +x "$GATEWAYD"
gw_start_gateway 1
sensor dev-1 -n "$count"
wait "$(sensor_pid dev-1)" || true
acked=$(total_acked)
gw_wait_for "[ \$(grep -c '^devices/dev-1/' '$WORK/sub.out') -ge $acked ]" 60 ||
  gw_fail "the broker delivered $(grep -c '^devices/dev-1/' "$WORK/sub.out") of $acked readings"
# Stop gatewayd itself (strace's child), so that strace writes its table.
kill -TERM "$(pgrep -P "$GATEWAY_PID")"
wait "$GATEWAY_PID" || true

echo "gatewayd: $real"
echo "readings acknowledged: $acked (2.04), delivered to the broker: $(grep -c '^devices/dev-1/' "$WORK/sub.out")"
printf '%-16s %10s %12s\n' syscall calls per-reading
# strace -c's rows: % time, seconds, usecs/call, calls, [errors], syscall.
awk -v n="$acked" '
  $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { c[$NF] = $4; total += $4 }
  END {
    split("pwrite64 pread64 fdatasync fsync syncfs sendmsg sendto recvmsg recvfrom read write epoll_wait", show, " ")
    for (i = 1; i in show; i++)
      if (show[i] in c) printf "%-16s %10d %12.2f\n", show[i], c[show[i]], c[show[i]] / n
    printf "%-16s %10d %12.2f\n", "all", total, total / n
  }' "$WORK/strace.out"
echo "strace's table:"
cat "$WORK/strace.out"
