#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The broker stops under load (spool.ack = durable, the default) for as long as dev-1 takes to
# have 1,500 readings acknowledged (30 s at its 50 a second). The sensors keep getting 2.04 for
# what the spool holds; once the broker is back every acknowledged reading arrives, in order per
# device, under the device's own identity.
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
t_down=$(gw_now_ms)
gw_log "broker stopped; dev-1 had $before readings acknowledged"
# The outage is a backlog, not a time: the drain below has 1,500 of dev-1's readings to send,
# or, on a machine too slow for that, all its sensor got acknowledged before its -t 50 ran out.
outage=1500
gw_wait_for "[ \$((\$(acked dev-1) - $before)) -ge $outage ] ||
  grep -q ' stopped\$' '$WORK/sensor-dev-1.out'" 60 ||
  gw_fail "dev-1's sensor stalled while the broker was down: $(tail -n 3 "$WORK/sensor-dev-1.out")"
during=$(($(acked dev-1) - before))
# Durable means answered from the spool: the sensors never stopped.
[ "$during" -ge 100 ] || gw_fail "dev-1: only $during readings acknowledged while the broker was down"
# ... and what was answered is there: nothing leaves the spool while the broker is down, so it
# holds at least every reading acknowledged since.
spooled=$(gw_gwctl metrics |
  awk '$1 == "gatewayd_device_spool_messages{device=\"dev-1\"}" { print $2 }')
[ "${spooled:-0}" -ge "$during" ] ||
  gw_fail "dev-1: $during readings acknowledged during the outage, '$spooled' in the spool"

mv "$WORK/mosquitto.log" "$WORK/mosquitto-1.log"
gw_run_broker || gw_fail "mosquitto did not restart on port $BROKER_PORT: $(cat "$WORK/mosquitto.log")"
t0=$(gw_now_ms)
outage_s=$(((t0 - t_down) / 1000))
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
gw_log "$during readings of dev-1 acknowledged during the $outage_s s outage; $DELIVERED delivered in" \
  "order, $DUPLICATES duplicates, all in within $(($(gw_now_ms) - t0)) ms of the restart"
gw_pass
