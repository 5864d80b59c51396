#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The broker stops for 30 s under load (spool.ack = durable, the default). The sensors keep
# getting 2.04 for what the spool holds; once the broker is back every acknowledged reading
# arrives, in order per device, under the device's own identity.
source "$(dirname "$0")/lib.sh"
gw_setup
# The observer's session outlives the restart, so nothing replayed is missed while it
# reconnects.
GW_BROKER_PERSIST=true
gw_pki_init
gw_start_broker
gw_start_subscriber
gw_write_config
N=3
gw_start_flowing $N dev-1 20 -n 100000 -i 20 -t 50

kill "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true
before=$(acked dev-1)
gw_log "broker stopped; dev-1 had $before readings acknowledged"
sleep 30
during=$(($(acked dev-1) - before))
# Durable means answered from the spool: the sensors never stopped.
[ "$during" -ge 100 ] || gw_fail "dev-1: only $during readings acknowledged while the broker was down"
grep -q 'messages in the spool\|spool' "$WORK/gatewayd.log" || true

mv "$WORK/mosquitto.log" "$WORK/mosquitto-1.log"
gw_run_broker || gw_fail "mosquitto did not restart on port $BROKER_PORT: $(cat "$WORK/mosquitto.log")"
t0=$(gw_now_ms)
gw_start_subscriber
for i in $(seq 1 $N); do wait "$(sensor_pid "dev-$i")" || true; done
gw_wait_delivered 90 $(for i in $(seq 1 $N); do echo "dev-$i"; done)
for i in $(seq 1 $N); do
  [ "$(gw_broker_username "dev-$i")" = "dev-$i" ] || gw_fail "dev-$i did not reconnect under its own identity"
done
# No other answer than 2.04 (and the time limit's "stopped").
for i in $(seq 1 $N); do
  ! grep -qvE ' (2\.04|stopped)$' "$WORK/sensor-dev-$i.out" ||
    gw_fail "dev-$i got other answers: $(grep -vE ' (2\.04|stopped)$' "$WORK/sensor-dev-$i.out" | head -3)"
done
gw_log "$during readings of dev-1 acknowledged during the 30 s outage; $DELIVERED delivered in" \
  "order, $DUPLICATES duplicates, all in within $(($(gw_now_ms) - t0)) ms of the restart"
gw_pass
