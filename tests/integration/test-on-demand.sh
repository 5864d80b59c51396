#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# On-demand upstream sessions (upstream.sessions = "on-demand"): a device holds no connection
# to the broker until it has work. Its first reading connects it and is delivered; after
# upstream.idle_timeout with nothing to do it disconnects, and the broker keeps its MQTT
# session: a command sent while it is away reaches its sensor through a GET (the GET that
# finds the device away connects it; the command is there for the next one), and the
# reconnect resumes the TLS session (no signature). A sensor that observes its commands keeps
# the session up. A device whose attribute sessions is "always" connects at the start; the
# attribute switches a running device either way. A new certificate is tried at once.
source "$(dirname "$0")/lib.sh"
gw_setup
gw_pki_init
gw_start_broker
gw_start_subscriber
GW_CONFIG_EXTRA='
downlink = { topic = "devices/${device}/commands/#"; resource = "cmd"; expiry = 600; qos = 1; };'
gw_write_config 'sessions = "on-demand"; idle_timeout = 2;'
gw_add_device dev-a
gw_add_device dev-b
gw_add_device dev-c
gw_gwctl device set dev-c sessions=always >/dev/null || gw_fail "gwctl device set dev-c sessions=always failed"
out=$(gw_gwctl device set dev-c sessions=sometimes 2>&1) && gw_fail "sessions=sometimes was taken"
grep -q 'attribute sessions is "sometimes": it must be always or on-demand' <<<"$out" ||
  gw_fail "no reason for sessions=sometimes: $out"

# Only dev-c connects at the start; the others are idle from the start.
gw_start_gateway 1
grep -q 'dev-c: upstream connected' "$WORK/gatewayd.log" || gw_fail "the connected device is not dev-c"
show() { gw_gwctl device show "$1" | sed -n 's/^upstream: //p'; }
[ "$(show dev-a)" = idle ] || gw_fail "dev-a's upstream is '$(show dev-a)' at the start, want idle"
[ "$(show dev-c)" = connected ] || gw_fail "dev-c's upstream is '$(show dev-c)', want connected"
gw_gwctl status | gw_has '^upstream-sessions: connected 1, .*idle 2, none 0$' ||
  gw_fail "status: $(gw_gwctl status | grep upstream-sessions)"

# A reading connects dev-a and is delivered (the spool takes it, durable, meanwhile).
gw_expect_code 2.04 dev-a post temp 21.5
gw_wait_received "devices/dev-a/telemetry/temp 21.5"
[ "$(gw_count 'dev-a: upstream connected' "$WORK/gatewayd.log")" = 1 ] ||
  gw_fail "dev-a connected $(gw_count 'dev-a: upstream connected' "$WORK/gatewayd.log") times for one reading"

# With nothing to do for 2 s it disconnects; the broker keeps its session and subscription.
gw_wait_for "grep -q 'dev-a: upstream idle for 2 s' '$WORK/gatewayd.log'" 30 ||
  gw_fail "dev-a did not disconnect when idle"
gw_wait_for '[ "$(show dev-a)" = idle ]' 10 || gw_fail "dev-a's upstream is '$(show dev-a)', want idle"
gw_wait_for "grep -q 'Client dev-a disconnected' '$WORK/mosquitto.log'" 10 ||
  gw_fail "the broker did not see dev-a disconnect: $(grep dev-a "$WORK/mosquitto.log" | tail -n 3)"

# A command while it is away waits at the broker (QoS 1, a kept session).
gw_command devices/dev-a/commands/valve open-while-away
# The sensor's GET finds none here yet (its answer is made before the device connects) and
# brings the session up, resumed: the broker hands over the command, which the next GET takes.
gw_expect_code 2.05 dev-a get cmd ""
gw_wait_for "grep -q 'dev-a: command of 15 bytes from devices/dev-a/commands/valve queued' '$WORK/gatewayd.log'" 30 ||
  gw_fail "the command kept at the broker did not reach the gateway: $(grep dev-a "$WORK/gatewayd.log" | tail -n 4)"
gw_expect_code 2.05 dev-a get cmd ""
grep -q 'open-while-away' "$WORK/coap-last.out" ||
  gw_fail "GET did not return the command: $(tail -n 4 "$WORK/coap-last.out")"
[ "$(gw_count 'dev-a: upstream connected' "$WORK/gatewayd.log")" = 2 ] ||
  gw_fail "dev-a connected $(gw_count 'dev-a: upstream connected' "$WORK/gatewayd.log") times, want 2"
grep -q 'dev-a: upstream connected to .* (TLS session resumed)' "$WORK/gatewayd.log" ||
  gw_fail "dev-a's reconnect did not resume its TLS session"

# dev-b's sensor observes its commands: its session comes up and stays up while it observes.
timeout 60 coap-client-openssl -v 6 -B 55 -s 50 -m get -u dev-b -k "$(gw_psk dev-b)" \
  "coaps://127.0.0.1:$COAP_PORT/cmd" >"$WORK/observe.out" 2>&1 &
OBSERVER_PID=$!
GW_PIDS+=("$OBSERVER_PID")
gw_wait_for "grep -q 'dev-b: upstream connected' '$WORK/gatewayd.log'" 30 ||
  gw_fail "dev-b's observation did not bring its session up"
# Sentinel: dev-a's next idle-out comes more than 2 s after dev-b connected, so dev-b would
# have gone idle by then if its observer did not keep it up.
idled=$(gw_count 'dev-a: upstream idle for' "$WORK/gatewayd.log")
gw_expect_code 2.04 dev-a post temp 22.5
gw_wait_for "[ \$(grep -c 'dev-a: upstream idle for' '$WORK/gatewayd.log') -gt $idled ]" 30 ||
  gw_fail "dev-a did not go idle again"
grep -q 'dev-b: upstream idle' "$WORK/gatewayd.log" && gw_fail "dev-b went idle while its sensor observes"
[ "$(show dev-b)" = connected ] || gw_fail "dev-b's upstream is '$(show dev-b)', want connected"
# Its commands reach the observer at once.
gw_command devices/dev-b/commands/valve pushed-to-observer
gw_wait_for "grep -q 'pushed-to-observer' '$WORK/observe.out'" 10 ||
  gw_fail "the command did not reach dev-b's observer: $(tail -n 5 "$WORK/observe.out")"
[ "$(show dev-c)" = connected ] || gw_fail "dev-c (always) is '$(show dev-c)', want connected"

# A new certificate is tried at once, on demand too (a renewal on trial waits for the broker's
# verdict): a device added to the running gateway connects once, then goes idle.
gw_add_device dev-d
gw_wait_for "grep -q 'dev-d: upstream connected' '$WORK/gatewayd.log'" 30 ||
  gw_fail "dev-d's new certificate was not tried at once"
gw_wait_for "grep -q 'dev-d: upstream idle for 2 s' '$WORK/gatewayd.log'" 30 || gw_fail "dev-d did not go idle"

# Switched while running, without a new session: dev-c to on demand goes idle, dev-a to always
# connects.
gw_gwctl device set dev-c sessions=on-demand >/dev/null || gw_fail "device set dev-c sessions=on-demand failed"
gw_wait_for '[ "$(show dev-c)" = idle ]' 30 || gw_fail "dev-c is '$(show dev-c)' after its switch to on demand, want idle"
gw_gwctl device set dev-a sessions=always >/dev/null || gw_fail "device set dev-a sessions=always failed"
gw_wait_for '[ "$(show dev-a)" = connected ]' 30 || gw_fail "dev-a is '$(show dev-a)' after its switch to always, want connected"
gw_pass
