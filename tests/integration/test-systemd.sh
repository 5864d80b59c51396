#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The systemd service, without a running systemd:
#  - `systemd-analyze security --offline=true` rates the built unit 2.0 or lower, and parses
#    it without a warning (a misspelt or invalid directive is ignored, and so is its hardening);
#  - the unit is Type=notify with a watchdog and a reload command;
#  - gatewayd speaks the notify protocol to a stand-in manager: READY=1 once its sockets are
#    open, WATCHDOG=1 every WATCHDOG_USEC/2, none for another WATCHDOG_PID, STOPPING=1 on
#    SIGTERM.
# Usage: test-systemd.sh UNIT_FILE (meson passes build/systemd/gatewayd.service).
source "$(dirname "$0")/lib.sh"
: "${GW_TEST_DATA:?}"
unit=${1:?usage: test-systemd.sh UNIT_FILE}
max_exposure=2.0

gw_require systemd-analyze python3 ss
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gw-$GW_TEST.XXXXXX")
trap gw_cleanup EXIT
trap 'GW_FAILED=1; gw_log "FAIL: line $LINENO: $BASH_COMMAND"' ERR

# ---- the score ----

SYSTEMD_COLORS=0 systemd-analyze security --offline=true "$unit" >"$WORK/security.out" \
  2>"$WORK/security.err" || gw_fail "systemd-analyze security failed: $(cat "$WORK/security.err")"
if grep -F "$unit:" "$WORK/security.err" >&2; then
  gw_fail "systemd-analyze warns about $unit (above)"
fi
score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p' "$WORK/security.out")
[ -n "$score" ] || gw_fail "no overall exposure level in: $(tail -n 3 "$WORK/security.out")"
gw_log "systemd-analyze security: overall exposure $score (at most $max_exposure); exposed:"
grep -E '^✗' "$WORK/security.out" | sed 's/  */ /g' >&2 || true
awk -v s="$score" -v max="$max_exposure" 'BEGIN { exit !(s <= max) }' ||
  gw_fail "exposure $score is above $max_exposure: see the ✗ lines above"

for want in '^Type=notify$' '^NotifyAccess=main$' '^WatchdogSec=[1-9]' \
  '^ExecReload=/bin/kill -HUP \$MAINPID$' '^SupplementaryGroups=tss$' \
  '^DeviceAllow=/dev/tpmrm0 rw$' '^RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6$'; do
  grep -qE "$want" "$unit" || gw_fail "$unit has no line matching $want"
done
# The daemon talks to sensors and the cloud: the sandbox must leave it the network.
if grep -qE '^(PrivateNetwork=(yes|true)|IPAddressDeny=any)' "$unit"; then
  gw_fail "$unit cuts gatewayd off the network"
fi

# ---- the notify protocol, with gatewayd and a stand-in for systemd ----

port=$(gw_free_port udp)
cat >"$WORK/gateway.conf" <<EOF
gateway = { id = "gw-notify"; state_dir = "$WORK/state"; control_socket = "$WORK/control.sock"; };
sensors = { listen = "127.0.0.1"; port = $port; };
keystore = { backend = "soft"; };
upstream = { broker = "mqtts://127.0.0.1:1"; ca_file = "$GW_TEST_DATA/conf/ca.pem"; };
routes = ( { resource = "temp"; topic = "devices/\${device}/telemetry/\${path}"; } );
EOF
mkdir -m 700 "$WORK/state"

# Each datagram as one line: when it came (ms), whether the control socket existed then, and
# its text with newlines as '|'.
cat >"$WORK/manager.py" <<'EOF'
import os, socket, sys, time
sock, ctl, out = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sock)
with open(out, "a", buffering=1) as f:
    while True:
        msg = s.recv(4096).decode()
        f.write("%d %d %s\n" % (time.monotonic() * 1000, os.path.exists(ctl),
                                 msg.replace("\n", "|")))
EOF
python3 "$WORK/manager.py" "$WORK/notify.sock" "$WORK/control.sock" "$WORK/notify.out" &
GW_PIDS+=("$!")
gw_wait_for "[ -S '$WORK/notify.sock' ]" 10 || gw_fail "the stand-in manager did not start"

# WatchdogSec=1s, for the process the manager started (as systemd sets it).
(
  # Its stderr is the journal's stream (systemd sets JOURNAL_STREAM): priorities as "<N>".
  export NOTIFY_SOCKET="$WORK/notify.sock" WATCHDOG_USEC=1000000 WATCHDOG_PID=$BASHPID \
    JOURNAL_STREAM=8:12345
  exec "$GATEWAYD" -d -c "$WORK/gateway.conf"
) >"$WORK/gatewayd.log" 2>&1 &
gw_pid=$!
GW_PIDS+=("$gw_pid")
gw_wait_for "grep -q 'READY=1' '$WORK/notify.out' 2>/dev/null" 10 ||
  gw_fail "no READY=1 from gatewayd"
grep -qx '[0-9]* 1 READY=1|WATCHDOG=1|STATUS=ready: 0 devices, upstream ssl://127.0.0.1:1' \
  "$WORK/notify.out" || gw_fail "READY=1 before the control socket, or not as expected: \
$(cat "$WORK/notify.out")"
[ -n "$(ss -Hlun "sport = :$port")" ] || gw_fail "READY=1 but nothing listens on UDP $port"
# Then every 500 ms (half of WATCHDOG_USEC): late on a loaded machine maybe, never early.
gw_wait_for "[ \$(grep -c ' 1 WATCHDOG=1\$' '$WORK/notify.out') -ge 4 ]" 10 ||
  gw_fail "$(grep -c ' 1 WATCHDOG=1$' "$WORK/notify.out") watchdog pings in 10 s, want 4"
gaps=$(awk '/ READY=1/ || / 1 WATCHDOG=1$/ { if (last) printf "%d ", $1 - last; last = $1 }' \
  "$WORK/notify.out")
gw_log "READY=1 once the sockets were open, then WATCHDOG=1 at intervals of ${gaps}ms"
for gap in $gaps; do
  [ "$gap" -ge 450 ] || gw_fail "watchdog pings ${gaps}ms apart, want 500 ms"
done
grep -q 'watchdog: pinging the service manager every 500 ms' "$WORK/gatewayd.log" ||
  gw_fail "gatewayd does not say how often it pings: $(cat "$WORK/gatewayd.log")"
# journald reads each line's syslog priority from its "<N>" prefix (sd-daemon(3)).
grep -qx '<6>gatewayd: ready: gateway [^ ]*, 0 devices, .*' "$WORK/gatewayd.log" ||
  gw_fail "no <6> (info) on the ready line: $(head -n 3 "$WORK/gatewayd.log")"
grep -q '^<4>gatewayd: warning: no devices in the keystore' "$WORK/gatewayd.log" ||
  gw_fail "no <4> (warning) on a warning: $(head -n 5 "$WORK/gatewayd.log")"
grep -v '^<[0-7]>' "$WORK/gatewayd.log" | gw_has . &&
  gw_fail "lines without a priority: $(grep -v '^<[0-7]>' "$WORK/gatewayd.log" | head -n 3)"
# ExecReload's SIGHUP: RELOADING=1, then READY=1 with the outcome (systemd.service(5)).
kill -HUP "$gw_pid"
gw_wait_for "grep -q 'READY=1|STATUS=ready: configuration reloaded' '$WORK/notify.out'" 10 ||
  gw_fail "no READY=1 after SIGHUP: $(tail -n 3 "$WORK/notify.out")"
grep -q ' RELOADING=1|STATUS=reloading the configuration$' "$WORK/notify.out" ||
  gw_fail "no RELOADING=1 before it: $(tail -n 3 "$WORK/notify.out")"
kill -TERM "$gw_pid"
rc=0
wait "$gw_pid" || rc=$?
[ "$rc" -eq 0 ] || gw_fail "gatewayd exited $rc on SIGTERM"
gw_wait_for "grep -qx '[0-9]* [01] STOPPING=1|STATUS=stopping: disconnecting upstream sessions' '$WORK/notify.out'" 10 ||
  gw_fail "no STOPPING=1 on SIGTERM: $(cat "$WORK/notify.out")"

# A watchdog meant for another process (gatewayd forked from the one the manager started):
# no pings; without NOTIFY_SOCKET nothing is sent and gatewayd runs as before.
: >"$WORK/notify.out"
(
  export NOTIFY_SOCKET="$WORK/notify.sock" WATCHDOG_USEC=200000 WATCHDOG_PID=1
  exec "$GATEWAYD" -d -c "$WORK/gateway.conf"
) >"$WORK/gatewayd.log" 2>&1 &
gw_pid=$!
GW_PIDS+=("$gw_pid")
gw_wait_for "grep -q 'READY=1' '$WORK/notify.out' 2>/dev/null" 10 ||
  gw_fail "no READY=1 from gatewayd"
# "No ping" needs time to show: a watchdog armed by mistake would ping every 100 ms. The window
# is the daemon's own life, as its loop tells gwctl: 2 s of uptime (counted in whole seconds,
# so at least 1 s since READY=1, 10 pings' worth).
uptime_s() {
  gw_gwctl status 2>/dev/null | awk -F'[: ]+' '$1 == "uptime" { print $2 * 3600 + $3 * 60 + $4 }'
}
gw_wait_for '[ "$(uptime_s)" -ge 2 ] 2>/dev/null' 15 || gw_fail "gwctl status: $(gw_gwctl status 2>&1)"
kill -TERM "$gw_pid"
wait "$gw_pid" || gw_fail "gatewayd did not stop cleanly"
# The sentinel: STOPPING=1 is its last datagram, so once the stand-in manager wrote it down it
# wrote down every ping sent before (one sender, one socket: in order).
gw_wait_for "grep -q 'STOPPING=1' '$WORK/notify.out'" 10 || gw_fail "no STOPPING=1 on SIGTERM"
if grep -q ' WATCHDOG=1$' "$WORK/notify.out"; then
  gw_fail "gatewayd pinged a watchdog meant for another process: $(cat "$WORK/notify.out")"
fi
grep -q 'watchdog: pinging' "$WORK/gatewayd.log" &&
  gw_fail "gatewayd armed a watchdog meant for another process: $(grep watchdog "$WORK/gatewayd.log")"
window=$(awk '/ READY=1/ { r = $1 } / STOPPING=1/ { s = $1 } END { print s - r }' "$WORK/notify.out")
[ "$window" -ge 1000 ] || gw_fail "only $window ms between READY=1 and STOPPING=1: the check proves nothing"

: >"$WORK/notify.out"
env -u NOTIFY_SOCKET WATCHDOG_USEC=200000 "$GATEWAYD" -d -c "$WORK/gateway.conf" \
  >"$WORK/gatewayd.log" 2>&1 &
gw_pid=$!
GW_PIDS+=("$gw_pid")
gw_wait_for "grep -q 'ready:' '$WORK/gatewayd.log'" 10 || gw_fail "gatewayd did not start"
kill -TERM "$gw_pid"
wait "$gw_pid" || gw_fail "gatewayd did not stop cleanly"
grep -q 'gatewayd: stopped$' "$WORK/gatewayd.log" || gw_fail "no 'stopped' line: $(tail -n 3 "$WORK/gatewayd.log")"
# The sentinel: a datagram of our own, sent once gatewayd is gone, written down after anything
# gatewayd sent (READY=1 at start, STOPPING=1 at stop); so the file holds it and nothing else.
python3 -c 'import socket, sys
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"SENTINEL=1", sys.argv[1])' \
  "$WORK/notify.sock" || gw_fail "cannot write to the stand-in manager"
gw_wait_for "grep -q ' SENTINEL=1\$' '$WORK/notify.out'" 10 || gw_fail "the stand-in manager lost the sentinel"
[ "$(wc -l <"$WORK/notify.out")" -eq 1 ] || gw_fail "sent without NOTIFY_SOCKET: $(cat "$WORK/notify.out")"
gw_pass
