#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gatewayd is killed with SIGKILL under load and started again: every reading it had
# acknowledged (2.04 after its record was fsync'd) arrives upstream. The sensors then resend
# what was not acknowledged, as a real sensor does, so duplicates are possible: counted and
# reported, not failed.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_broker
gw_start_subscriber
gw_write_config
N=3
for i in $(seq 1 $N); do gw_add_device "dev-$i"; done
gw_start_gateway $N
for i in $(seq 1 $N); do sensor "dev-$i" -n 100000 -i 10 -t 8; done
gw_wait_for "[ \$(acked dev-1) -ge 50 ]" 10 || gw_fail "dev-1 is not flowing: $(tail -n 3 "$WORK/sensor-dev-1.out")"
# Stop the broker first: then the spool holds what the kill must not lose.
kill "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true
gw_wait_for "[ \$(acked dev-1) -ge 150 ]" 10 || gw_fail "dev-1 stopped while the broker was down"
kill -KILL "$GATEWAY_PID"
wait "$GATEWAY_PID" 2>/dev/null || true
killed=$(acked dev-1)
gw_log "gatewayd killed; dev-1 had $killed readings acknowledged"
for i in $(seq 1 $N); do wait "$(sensor_pid "dev-$i")" || true; done

mv "$WORK/mosquitto.log" "$WORK/mosquitto-1.log"
gw_run_broker || gw_fail "mosquitto did not restart: $(cat "$WORK/mosquitto.log")"
gw_start_subscriber
mv "$WORK/gatewayd.log" "$WORK/gatewayd-1.log"
gw_start_gateway $N
grep -q 'dev-1: [0-9]* messages in the spool' "$WORK/gatewayd.log" ||
  gw_fail "the restarted gateway found nothing of dev-1 in its spool"
# The sensors go on from their last acknowledged reading.
for i in $(seq 1 $N); do
  sensor "dev-$i" -s $(($(acked "dev-$i") + 1)) -n 50 -i 10 -t 10
done
for i in $(seq 1 $N); do wait "$(sensor_pid "dev-$i")" || true; done
gw_wait_delivered 30 $(for i in $(seq 1 $N); do echo "dev-$i"; done)
gw_log "after SIGKILL: $DELIVERED readings delivered in order, $DUPLICATES duplicates"
gw_pass
