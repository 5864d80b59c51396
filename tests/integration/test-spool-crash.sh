#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gatewayd is killed with SIGKILL under load and started again: every reading it had
# acknowledged (2.04 after its record was fsync'd) arrives upstream. The sensors then resend
# what was not acknowledged, as a real sensor does, so duplicates are possible: counted and
# reported, not failed. Then a power loss's damage: a segment cut mid-record and a flipped bit;
# gatewayd still starts, logs and counts the loss, and keeps every good record.
source "$(dirname "$0")/lib.sh"
gw_setup
# The broker is stopped with messages it has acknowledged to a device (so gone from the spool)
# still on their way to the observer: its store and the observer's lasting session keep them
# across the restart. Without them the broker, not the gateway, loses one now and then.
GW_BROKER_PERSIST=true
gw_pki_init
gw_start_broker
gw_start_subscriber
gw_write_config
N=3
gw_start_flowing $N dev-1 50 -n 100000 -i 10 -t 8
# Stop the broker first: then the spool holds what the kill must not lose.
kill "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true
gw_wait_for "[ \$(acked dev-1) -ge 150 ]" 10 || gw_fail "dev-1 stopped while the broker was down"
# gwctl shows what waits in the spool.
out=$(gw_gwctl device show dev-1)
spooled=$(sed -n 's/^spooled: \([0-9]*\) messages.*/\1/p' <<<"$out")
[ "${spooled:-0}" -gt 0 ] || gw_fail "device show dev-1 shows nothing spooled: $(grep -E '^(spooled|commands)' <<<"$out")"
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

# Damage: records spooled with the broker away, then gatewayd killed and dev-1's segment hurt.
kill "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true
for i in $(seq 1 $N); do sensor "dev-$i" -s $(($(acked "dev-$i") + 1)) -n 40 -i 5 -t 10; done
for i in $(seq 1 $N); do wait "$(sensor_pid "dev-$i")" || true; done
kill -KILL "$GATEWAY_PID"
wait "$GATEWAY_PID" 2>/dev/null || true
seg=$(ls "$WORK/state/spool/dev-1/"*.seg | tail -n 1)
size=$(stat -c %s "$seg")
truncate -s $((size - 7)) "$seg"
# One bit of a payload byte in the middle of the file.
off=$((size / 2))
printf "$(printf '\\x%02x' $(($(od -An -tu1 -j "$off" -N1 "$seg") ^ 1)))" |
  dd of="$seg" bs=1 seek="$off" conv=notrunc 2>/dev/null
mv "$WORK/gatewayd.log" "$WORK/gatewayd-2.log"
gw_run_broker || gw_fail "mosquitto did not restart: $(cat "$WORK/mosquitto.log")"
gw_start_subscriber
gw_start_gateway $N
grep -q "spool: device dev-1: segment .* damaged" "$WORK/gatewayd.log" ||
  gw_fail "no log line for the damaged segment: $(grep spool "$WORK/gatewayd.log")"
lost=$(sed -n 's/.*spool: \([0-9]*\) damaged records.*/\1/p' "$WORK/gatewayd.log")
[ "${lost:-0}" -ge 2 ] || gw_fail "the loss was not counted: $(grep spool "$WORK/gatewayd.log")"
# Every other device's readings, and dev-1's undamaged ones, still arrive.
gw_wait_delivered 30 dev-2 dev-3
gw_wait_for "[ \$(undelivered dev-1 | wc -l) -le $lost ]" 30 ||
  gw_fail "dev-1 lost more than the $lost damaged records: $(undelivered dev-1 | wc -l) missing"
gw_log "damaged segment: $lost records lost and counted, $(acknowledged dev-1 | wc -l) acknowledged, the rest delivered"
gw_pass
