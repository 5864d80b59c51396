#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Benchmark: connect storms at a real TPM's speed (issue 12; DESIGN.md's storm targets).
# N devices (default 200) on the tpm backend, every TPM command answered at a chip's
# per-command time (tests/tools/tpmslow between gatewayd and swtpm); F of them (default 10)
# with a sensor sending a reading every 200 ms (gwsensor -T: the send time in the payload);
# a subscriber stamping arrivals (tests/tools/mqttstamp, straight to the broker); gatewayd's
# broker connections through tests/tools/netcut. For each chip model given (default slb9672;
# `tpmslow -L` lists them), three phases, each followed by QUIET seconds (default 5) of flow
# with nothing else going on:
#   cold    gatewayd starts, the broker up: all N connect
#   broker  mosquitto restarts (same port; persistent, so the subscriber loses nothing): all N
#           reconnect
#   cut     netcut resets every connection and refuses new ones for CUT seconds (default 5),
#           the broker up: all N reconnect
# Each phase starts when the broker can be reached (gatewayd started; the new broker started;
# netcut relaying again) and prints:
#   - the time until all N were connected ("upstream connected" in gatewayd's log, stamped as
#     written, within 10 ms), and its ratio to N x (load + sign + flush) of the chip (target
#     1.1);
#   - delivery (the sensor's send to the subscriber's receipt) of the readings that flowing
#     devices sent once their session was back (gatewayd logged it connected) and before all N
#     were: p50/p99/max (target p99 100 ms), and the same in the quiet periods;
#   - the sensors' answer times while the storm lasted against the quiet periods of the same
#     run: p50/p99/max (the gap between two answers less the 200 ms pacing, 1 ms resolution;
#     target: the same p99 within 2 ms);
#   - when each flowing device delivered again after the start (and when it was connected),
#     and the last of them, against F x (load + sign + flush) + 1 s;
#   - TPM commands per reconnect (tpmslow's counts over the phase by command, per connect
#     logged; at a cold start less the keystore's own at start), and connect attempts per
#     connect (gwctl metrics).
# Then a summary table. Figures and ratios only: it asserts nothing. Local only (127.0.0.1,
# free ports, a temp dir); every wait bounded; everything stopped by PID.
# Environment: QUIET, CUT, STORM_LIMIT (seconds a storm may last; default 5 x the TPM's
# share + 60), STORM_UPSTREAM (more lines for gatewayd's upstream group, e.g.
# "connect_timeout = 60;"; the rest is lib.sh's test config: reconnect 1 to 2 s).
#   tests/bench/storm.sh [N] [F] [CHIP...]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-200}
flows=${2:-10}
shift $(($# < 2 ? $# : 2))
chips=("$@")
[ ${#chips[@]} -gt 0 ] || chips=(slb9672)
quiet=${QUIET:-5}
cut_s=${CUT:-5}
pace=200 # ms between a sensor's answer and its next reading
GW_TEST=bench-storm
source tests/bench/bench.sh
[ "$flows" -ge 1 ] && [ "$flows" -le "$n" ] || gw_fail "F must be 1 to N"

# load + sign + flush of a chip model, in ms (tpmslow's table is the one source).
handshake_ms() { "$TPMSLOW" -L -c "$1" | awk '$2 == "handshake" { print $3 }'; }
hs_max=0
for chip in "${chips[@]}"; do
  hs=$(handshake_ms "$chip") || gw_fail "no chip model $chip: $("$TPMSLOW" -L | awk '!seen[$1]++ { print $1 }')"
  hs_max=$(echo "if ($hs > $hs_max) $hs else $hs_max" | bc)
done
# Bounds: a storm may take 5 times the TPM's share, plus a minute (STORM_LIMIT seconds).
storm_limit=${STORM_LIMIT:-$(echo "$n * $hs_max * 5 / 1000 + 60" | bc | cut -d. -f1)}
phase_limit=$((storm_limit + 60 + quiet + 10))
sensor_limit=$((3 * phase_limit + cut_s + 120))
export GW_TOOL_LIFETIME=$((n * 2 + 300 + ${#chips[@]} * (sensor_limit + 120)))

gw_pki_init
gw_start_swtpm
GW_BROKER_PERSIST=true
gw_start_broker
broker_operator_log
gw_start_tpmslow none
gw_start_netcut "$cut_s"
gw_start_stamper 'devices/+/telemetry/#'
GW_BACKEND=tpm gw_write_config "${STORM_UPSTREAM:-}"
sed -i 's/log_level = "debug";/log_level = "info";/' "$WORK/gateway.conf"

# Provisioning at swtpm's own speed (chip "none"), through the running daemon as a technician
# does (gwctl on the store alone gets slower with every device: 380 s for 1,000, against about
# 65 s through the daemon, as connect-fleet.sh found).
gw_log "provisioning $n devices"
t=$(gw_now_ms)
gw_start_gateway 0
for id in $(devices); do gw_add_device "$id"; done
kill -TERM "$GATEWAY_PID"
wait "$GATEWAY_PID" 2>/dev/null || true
gw_log "provisioned in $((($(gw_now_ms) - t) / 1000)) s"
cp -a "$WORK/state" "$WORK/state-template"

# ---- measuring ----

# gatewayd's log from line $1 on (to line $2, or the end); connects and losses in it.
log_part() { sed -n "$(($1 + 1)),${2:-\$}p" "$WORK/gatewayd.log"; }
connects_in() { log_part "$@" | grep -c ': upstream connected' || true; }
lost_in() { log_part "$@" | grep -c ': upstream connection .* lost' || true; }
log_lines() { wc -l <"$WORK/gatewayd.log"; }

# watch_connects OUT: stamps gatewayd's "upstream connected" lines as they are written:
# "epoch-ms device" to OUT (the log polled every 10 ms). Sets WATCH_PID.
watch_connects() {
  python3 -u -c '
import os, sys, time
log, out, parent, end = sys.argv[1], sys.argv[2], os.getppid(), time.time() + float(sys.argv[3])
pos, rest, f = 0, b"", None
with open(out, "a") as o:
    while os.getppid() == parent and time.time() < end:
        if f is None:
            try:
                f = open(log, "rb")
            except FileNotFoundError:
                time.sleep(0.01)
                continue
        if os.fstat(f.fileno()).st_size < pos:  # truncated: a new gatewayd
            pos, rest = 0, b""
        f.seek(pos)
        data = f.read()
        if not data:
            time.sleep(0.01)
            continue
        t = int(time.time() * 1000)
        pos += len(data)
        *lines, rest = (rest + data).split(b"\n")
        for line in lines:
            w = line.split()
            if len(w) >= 4 and w[2] == b"upstream" and w[3] == b"connected":
                o.write("%d %s\n" % (t, w[1].decode().rstrip(":")))
        o.flush()
' "$WORK/gatewayd.log" "$1" "$GW_TOOL_LIFETIME" &
  WATCH_PID=$!
  GW_PIDS+=("$WATCH_PID")
}

# wait_connected BEGIN OUT: waits until all N devices were connected at or after BEGIN (epoch
# ms), as watch_connects saw them; writes each device's first such time to OUT ("epoch-ms
# device", in order) and prints the time the last of them was (nothing if not all within the
# storm's bound).
wait_connected() {
  local end=$(($(gw_now_ms) + storm_limit * 1000))
  while :; do
    awk -v b="$1" '$1 >= b && !seen[$2]++' "$WORK/connects" >"$2"
    if [ "$(wc -l <"$2")" -ge "$n" ]; then
      awk 'END { print $1 }' "$2"
      return 0
    fi
    [ "$(gw_now_ms)" -lt "$end" ] || return 0
    sleep 0.05
  done
}

# Every flowing device delivered a reading it sent at or after $1 (epoch ms).
caught_up() {
  awk -v t="$1" -v f="$flows" '$2 ~ /\/telemetry\// && $5 >= t && !seen[$3]++ { n++ }
    END { exit !(n >= f) }' "$WORK/stamp.out"
}

# Readings as first received: "recv id seq sent" (seq restarts with each chip's sensors).
received() { awk '$2 ~ /\/telemetry\// && !seen[$3 " " $4 " " $5]++ { print $1, $3, $4, $5 }' "$WORK/stamp.out"; }

# Numbers on stdin: "p50 p99 max count" ("- - - 0" for none).
pctl() {
  sort -n | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "- - - 0"; exit }
    printf "%d %d %d %d\n", v[int(NR * 0.5) + 1], v[int(NR * 0.99) + 1], v[NR], NR }'
}

# Sensors' answers: "time answer_ms" (the gap to the previous 2.04 less the pacing).
answers() {
  local f
  for f in "$WORK"/sensor-*.out; do
    awk -v pace="$pace" '$3 == "2.04" { if (prev) print $1, $1 - prev - pace; prev = $1; next }
      { prev = 0 }' "$f"
  done
}
# Answers other than 2.04 between $1 and $2.
other_answers() {
  cat "$WORK"/sensor-*.out | awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b && $3 != "2.04"' | wc -l
}
# in_windows "a:b a:b ...": the lines whose first field falls in one of them, that field dropped.
in_windows() {
  awk -v w="$1" 'BEGIN { k = split(w, ws, " "); for (i = 1; i <= k; i++) { split(ws[i], ab, ":")
      a[i] = ab[1]; b[i] = ab[2] } }
    { for (i = 1; i <= k; i++) if ($1 >= a[i] && $1 <= b[i]) { $1 = ""; print; next } }'
}

# again T0 CONNECTED: per flowing device "dev seconds-to-connected seconds-to-first-delivery"
# after T0 ("never" for either that did not happen).
again() {
  received | awk -v t0="$1" -v f="$flows" 'FILENAME == ARGV[1] { if (!($2 in up)) up[$2] = $1; next }
    $1 >= t0 && (!($2 in got) || $1 < got[$2]) { got[$2] = $1 }
    END { for (i = 1; i <= f; i++) { d = "dev-" i
        printf "%s %s %s\n", d, d in up ? sprintf("%.2f", (up[d] - t0) / 1000) : "never",
          d in got ? sprintf("%.2f", (got[d] - t0) / 1000) : "never" } }' "$2" -
}

# storm_delivery T0 T_ALL CONNECTED: delivery (ms) of the readings that flowing devices sent
# once their session was up again (CONNECTED: "epoch-ms device", wait_connected's) and before
# all N were.
storm_delivery() {
  received | awk -v t0="$1" -v t1="$2" 'FILENAME == ARGV[1] { if (!($2 in up)) up[$2] = $1; next }
    ($2 in up) && $4 >= up[$2] && $4 >= t0 && $4 <= t1 { print $1 - $4 }' "$3" -
}
# Delivery (ms) of readings sent in the windows "a:b ...".
window_delivery() { received | awk '{ print $4, $1 - $4 }' | in_windows "$1"; }

# An upstream setting of gateway.conf, or its default ($2).
conf_value() {
  awk -v k="$1" -v d="$2" '$1 == k && $2 == "=" { v = $3 } END { sub(/;$/, "", v); print v == "" ? d : v }' \
    "$WORK/gateway.conf"
}
# A counter's value in gwctl metrics' text (0 where absent: no gatewayd before a cold start).
metric() { awk -v m="$1" '$1 == m { v = $2 } END { printf "%d\n", v }' <<<"$2"; }
metrics_now() { gw_gwctl metrics 2>/dev/null || true; }
stat_of() { awk -v k="$1" '$1 == k { print $2; exit }' "$2"; }

# Per phase ("CHIP NAME"): t0, tall (empty: not all connected), the log lines at its start
# and end, and a note; files: stats-CHIP-NAME-{before,after} (tpmslow), metrics-CHIP-NAME-
# {before,after} (gwctl metrics; none before a cold start).
declare -A ph_begin ph_t0 ph_tall ph_off ph_end ph_note summary ready_s
summary_rows=()

# phase_begin CHIP NAME: snapshots before the phase's event.
phase_begin() {
  gw_tpmslow_stats
  cp "$WORK/tpmslow.stats" "$WORK/stats-$1-$2-before"
  if [ "$2" = cold ]; then : >"$WORK/metrics-$1-$2-before"; else metrics_now >"$WORK/metrics-$1-$2-before"; fi
  ph_off["$1 $2"]=$([ "$2" = cold ] && echo 0 || log_lines)
  ph_begin["$1 $2"]=$(gw_now_ms)
}

# phase_end CHIP NAME T0: waits for all N, lets the flow settle and a quiet period go by;
# snapshots; adds the quiet period to QUIET_WINDOWS.
phase_end() {
  local key="$1 $2" tall q0
  ph_t0[$key]=$3
  tall=$(wait_connected "${ph_begin[$key]}" "$WORK/connected-$1-$2")
  ph_tall[$key]=$tall
  gw_wait_for "caught_up ${tall:-$(gw_now_ms)}" 60 ||
    gw_log "$key: the flowing devices had not all caught up 60 s after the storm"
  q0=$(gw_now_ms)
  sleep "$quiet" # the quiet period is a measurement window, not a wait for something
  QUIET_WINDOWS+="$q0:$(gw_now_ms) "
  gw_tpmslow_stats
  cp "$WORK/tpmslow.stats" "$WORK/stats-$1-$2-after"
  metrics_now >"$WORK/metrics-$1-$2-after"
  ph_end[$key]=$(log_lines)
}

report_phase() {
  local chip=$1 name=$2 key="$1 $2" hs tpm_s ratio=- s=- t0 tall off end sb sa
  local conns lost d_st d_q a_st a_q ag last target cmds start=0 att per=- bycc=
  t0=${ph_t0[$key]} tall=${ph_tall[$key]} off=${ph_off[$key]} end=${ph_end[$key]}
  sb=$WORK/stats-$chip-$name-before sa=$WORK/stats-$chip-$name-after
  hs=$(handshake_ms "$chip")
  tpm_s=$(echo "$n * $hs / 1000" | bc -l)
  target=$(echo "$flows * $hs / 1000 + 1" | bc -l)
  conns=$(connects_in "$off" "$end")
  lost=$(lost_in "$off" "$end")
  echo
  printf '[%s] %s%s\n' "$chip" "$name" "${ph_note[$key]}"
  if [ -n "$tall" ]; then
    s=$(printf '%.2f' "$(echo "($tall - $t0) / 1000" | bc -l)")
    ratio=$(printf '%.2f' "$(echo "$s / $tpm_s" | bc -l)")
    printf '  all %d connected after %s s = %s x %d x %.1f ms (load + sign + flush; target 1.1)\n' \
      "$n" "$s" "$ratio" "$n" "$hs"
  else
    tall=$((t0 + storm_limit * 1000))
    printf '  only %d of %d connected within %d s\n' "$(wc -l <"$WORK/connected-$chip-$name")" "$n" \
      "$storm_limit"
  fi
  d_st=$(storm_delivery "$t0" "$tall" "$WORK/connected-$chip-$name" | pctl)
  d_q=$(window_delivery "$QUIET_WINDOWS" | pctl)
  a_st=$(answers | in_windows "$t0:$tall" | pctl)
  a_q=$(answers | in_windows "$QUIET_WINDOWS" | pctl)
  # shellcheck disable=SC2086 # the fields of pctl's line
  printf '  delivery of readings sent by devices already connected again during the storm: p50 %s, p99 %s, max %s ms (%s readings); quiet: p50 %s, p99 %s, max %s ms (%s)\n' \
    $d_st $d_q
  # shellcheck disable=SC2086
  printf "  sensors' answer times during the storm: p50 %s, p99 %s, max %s ms (%s answers, %d other than 2.04); quiet: p50 %s, p99 %s, max %s ms (%s)\n" \
    $a_st "$(other_answers "$t0" "$tall")" $a_q
  ag=$(again "$t0" "$WORK/connected-$chip-$name")
  last=$(awk '$3 == "never" { never = 1 } $3 != "never" && $3 > m { m = $3 }
    END { if (never) print "never"; else printf "%.2f\n", m }' <<<"$ag")
  printf '  flowing devices delivering again after: %s s (the last; target %.2f s = %d x %.1f ms + 1 s)\n' \
    "$last" "$target" "$flows" "$hs"
  echo "    (device: connected / first delivery, s) $(sort -V <<<"$ag" |
    awk '{ printf "%s %s / %s, ", $1, $2, $3 }' | sed 's/, $//')"
  # TPM: the phase's commands per connect; at a cold start less the keystore's own at start.
  cmds=$(($(stat_of commands "$sa") - $(stat_of commands "$sb")))
  if [ "$name" = cold ]; then
    start=$(log_part "$off" "$end" | awk '/keystore: [0-9]+ TPM commands at start/ { print $3 }')
  fi
  if [ "$conns" -gt 0 ]; then
    per=$(printf '%.2f' "$(echo "($cmds - ${start:-0}) / $conns" | bc -l)")
    bycc=$(awk -v c="$conns" 'FNR == NR { b[$1] = $2; next }
      $1 ~ /^TPM2_/ && $2 - b[$1] > 0 { printf "%s %.2f, ", substr($1, 6), ($2 - b[$1]) / c }' \
      "$sb" "$sa" | sed 's/, $//')
  fi
  att=$(($(metric gatewayd_upstream_connect_attempts_total "$(cat "$WORK/metrics-$chip-$name-after")") -
    $(metric gatewayd_upstream_connect_attempts_total "$(cat "$WORK/metrics-$chip-$name-before")")))
  printf '  TPM: %d commands for %d connects%s: %s per connect (%s); %d connect attempts; %d sessions lost\n' \
    "$cmds" "$conns" "$([ "$name" = cold ] && echo ", ${start:-0} of them at start")" "$per" \
    "${bycc:-none}" "$att" "$lost"
  summary_rows+=("$key")
  # shellcheck disable=SC2086
  summary[$key]=$(printf '%-8s %-7s %8s %6s %9s %9s %11s %12s %8s %7s' "$chip" "$name" "$s" "$ratio" \
    $(cut -d' ' -f1-2 <<<"$d_st") "$(cut -d' ' -f2 <<<"$a_st")/$(cut -d' ' -f2 <<<"$a_q")" \
    "$last/$(printf '%.2f' "$target")" "$per" "$(cut -d' ' -f2 <<<"$d_q")")
}

run_chip() {
  local chip=$1 tk t0 cut_at i name
  QUIET_WINDOWS=
  gw_tpmslow_control "chip $chip"
  rm -rf "$WORK/state" && cp -a "$WORK/state-template" "$WORK/state"
  rm -f "$WORK"/sensor-*.out "$WORK/connects"
  : >"$WORK/gatewayd.log"
  watch_connects "$WORK/connects"

  gw_log "$chip: cold start"
  phase_begin "$chip" cold
  t0=$(gw_now_ms)
  # Not gw_start_gateway: with a slow TPM, "ready" may take longer than its 10 s.
  : >"$WORK/gatewayd.log"
  "$GATEWAYD" -d -c "$WORK/gateway.conf" >>"$WORK/gatewayd.log" 2>&1 &
  GATEWAY_PID=$!
  GW_PIDS+=("$GATEWAY_PID")
  gw_wait_for "grep -q 'ready:' '$WORK/gatewayd.log'" "$storm_limit" || gw_fail "gatewayd did not start"
  ready_s["$chip"]=$(printf '%.2f' "$(echo "($(gw_now_ms) - $t0) / 1000" | bc -l)")
  for i in $(seq 1 "$flows"); do
    sensor "dev-$i" -T -i "$pace" -n 1000000000 -t "$sensor_limit"
  done
  ph_note["$chip cold"]=": gatewayd started, the broker up; it said ready after ${ready_s[$chip]} s, and the sensors started"
  phase_end "$chip" cold "$t0"

  gw_log "$chip: broker restart"
  phase_begin "$chip" broker
  tk=$(gw_now_ms)
  kill "$BROKER_PID"
  wait "$BROKER_PID" 2>/dev/null || true
  t0=$(gw_now_ms)
  gw_run_broker || gw_fail "mosquitto did not restart"
  ph_note["$chip broker"]=": mosquitto stopped (saving its state) and started again, $((t0 - tk)) ms down"
  phase_end "$chip" broker "$t0"

  gw_log "$chip: network cut"
  phase_begin "$chip" cut
  t0=$(gw_netcut_cut)
  cut_at=$(awk '/ netcut: cut: / { t = $1 } END { print t }' "$WORK/netcut.out")
  ph_note["$chip cut"]=": every connection reset, new ones refused for $(((t0 - cut_at + 500) / 1000)) s; from the end of the cut"
  phase_end "$chip" cut "$t0"

  for i in $(seq 1 "$flows"); do kill "$(sensor_pid "dev-$i")" 2>/dev/null || true; done
  for i in $(seq 1 "$flows"); do wait "$(sensor_pid "dev-$i")" 2>/dev/null || true; done
  kill -TERM "$GATEWAY_PID"
  wait "$GATEWAY_PID" 2>/dev/null || true
  kill "$WATCH_PID"
  wait "$WATCH_PID" 2>/dev/null || true

  echo
  echo "== $chip: $n devices, $flows flowing (a reading every $pace ms each), load + sign + flush $(handshake_ms "$chip") ms"
  echo "   (gatewayd: spool.ack durable, upstream.connect_timeout $(conf_value connect_timeout 10) s, reconnect_min $(conf_value reconnect_min 1) s, reconnect_max $(conf_value reconnect_max 60) s)"
  for name in cold broker cut; do report_phase "$chip" "$name"; done
  echo "  gatewayd at stop: $(grep -o 'keystore: [0-9]* TPM commands, .*' "$WORK/gatewayd.log" || echo 'no TPM figures')"
  cp "$WORK/gatewayd.log" "$WORK/gatewayd-$chip.log"
  for f in "$WORK"/sensor-*.out; do mv "$f" "$WORK/$chip-${f##*/}"; done
}

for chip in "${chips[@]}"; do run_chip "$chip"; done

echo
echo "storm: $n devices on the tpm backend (swtpm behind tpmslow), $flows flowing, one gatewayd,"
echo "mosquitto on 127.0.0.1 (persistent), $(nproc) cores shared by everything, release build."
printf '%-8s %-7s %8s %6s %9s %9s %11s %12s %8s %7s\n' chip phase all_s ratio deliv_p50 deliv_p99 \
  ans_p99 again_s per_conn q_p99
for r in "${summary_rows[@]}"; do echo "${summary[$r]}"; done
echo "(all_s: until all N connected, ratio to N x (load + sign + flush), target 1.1; deliv: ms"
echo " from a flowing device's send to the subscriber for readings sent once its session was back"
echo " and before all N were, target p99 100; ans_p99: sensors' answer p99 during the storm /"
echo " in the quiet periods, ms, target within 2; again_s: the last flowing device's first delivery"
echo " / the target F x (load + sign + flush) + 1 s; per_conn: TPM commands per connect, target 0"
echo " for a resumed one; q_p99: delivery p99 in the quiet periods, ms)"
gw_pass
