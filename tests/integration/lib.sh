# SPDX-License-Identifier: Apache-2.0
# Shared by the integration tests: real peers (mosquitto as the cloud, coap-client-openssl as
# sensors, openssl as the CA), all on 127.0.0.1 with free ports in a temp dir, stopped by PID.
# Sourced, not run. Each test calls gw_setup first and ends with gw_pass.

set -euo pipefail

: "${GATEWAYD:?set GATEWAYD to the gatewayd binary (meson test sets it)}"
: "${GWCTL:?set GWCTL to the gwctl binary (meson test sets it)}"

GW_PIDS=()
GW_FAILED=0
GW_ARCH_BIN=
GW_WAITING=
GW_TEST=${GW_TEST:-$(basename "$0" .sh)}

gw_log() { printf '%s: %s\n' "$GW_TEST" "$*" >&2; }

# GW_EXE_WRAPPER (scripts/test-arm64.sh sets it): the programs under test are built for another
# architecture and run through this command, e.g. "qemu-aarch64-static -L /". Each program named
# by GATEWAYD, GWCTL and the test tools' variables is replaced by a script that execs it through
# the wrapper, so that every test runs them unchanged and a PID the test keeps is the program's.
gw_wrap_programs() {
  local var
  GW_ARCH_BIN=$(mktemp -d "${TMPDIR:-/tmp}/gw-arch-bin.XXXXXX")
  # Until the test sets gw_cleanup (which removes it too) as its EXIT trap.
  trap 'rm -rf "$GW_ARCH_BIN"' EXIT
  for var in GATEWAYD GWCTL GWSENSOR COAPRAW TPMSLOW NETCUT MQTTSTAMP; do
    [ -n "${!var:-}" ] || continue
    printf '#!/bin/bash\nexec %s %q "$@"\n' "$GW_EXE_WRAPPER" "${!var}" >"$GW_ARCH_BIN/${var,,}"
    chmod 755 "$GW_ARCH_BIN/${var,,}"
    printf -v "$var" '%s' "$GW_ARCH_BIN/${var,,}"
  done
  gw_log "programs under test run through: $GW_EXE_WRAPPER"
}
[ -z "${GW_EXE_WRAPPER:-}" ] || gw_wrap_programs

gw_fail() {
  gw_log "FAIL: $*"
  GW_FAILED=1
  gw_show_logs
  exit 1
}

# The last lines of gatewayd's and mosquitto's logs, which say what they were doing.
gw_show_logs() {
  local f
  [ -n "${WORK:-}" ] || return 0
  for f in "$WORK"/gatewayd.log "$WORK"/mosquitto.log; do
    [ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -n 25 "$f" >&2; }
  done
  return 0
}

gw_require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 ||
      gw_fail "needs '$tool', which is not installed: run scripts/test.sh (it installs the test peers)"
  done
}

gw_cleanup() {
  local rc=$? pid
  # An exit by set -u or a failing command outside gw_fail still fails the test, loudly.
  if [ "$rc" -ne 0 ] && [ "$GW_FAILED" = 0 ]; then
    GW_FAILED=1
    gw_log "FAIL: exited with status $rc"
  fi
  for pid in "${GW_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${GW_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  # What the sanitizers say as gatewayd exits (leaks) comes after the test's own checks.
  if grep -qE '^(==[0-9]+==ERROR: [A-Za-z]+Sanitizer|.*runtime error: )' "$WORK"/gatewayd*.log 2>/dev/null; then
    GW_FAILED=1
    gw_log "FAIL: a sanitizer reported in $(grep -lE 'Sanitizer|runtime error: ' "$WORK"/gatewayd*.log | xargs -n1 basename):"
    grep -hE -A12 '^(==[0-9]+==ERROR: [A-Za-z]+Sanitizer|.*runtime error: )' "$WORK"/gatewayd*.log | head -n 40 >&2
  fi
  [ -z "$GW_ARCH_BIN" ] || rm -rf "$GW_ARCH_BIN"
  if [ "$GW_FAILED" = 0 ] && [ -z "${GW_KEEP:-}" ]; then
    rm -rf "$WORK"
  else
    gw_log "files kept in $WORK"
  fi
  [ "$GW_FAILED" = 0 ] || exit 1
}

gw_setup() {
  gw_require openssl mosquitto mosquitto_sub mosquitto_pub coap-client-openssl ss timeout
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/gw-$GW_TEST.XXXXXX")
  trap gw_cleanup EXIT
  # set -e ends the test at a failing command: say which, rather than end in silence.
  trap 'GW_FAILED=1; gw_log "FAIL: line $LINENO: $BASH_COMMAND"' ERR
  # meson's timeout: keep the files, which say where it hung.
  # What it was waiting for, or running (LINENO would be the trap's own line).
  trap 'GW_FAILED=1; gw_log "FAIL: stopped by SIGTERM (timed out?) ${SECONDS}s in, ${GW_WAITING:+waiting for: $GW_WAITING, }running: $BASH_COMMAND"; gw_show_logs; exit 143' TERM
  mkdir -m 700 "$WORK/state"
}

gw_pass() {
  gw_check_no_secrets
  gw_log "PASS"
  exit 0
}

# Secrets never reach a log: no sensor key this test made (as text or hex) and no private key
# is in gatewayd's logs. Every integration test checks this as it passes.
gw_check_no_secrets() {
  local f key hex log
  for log in "$WORK"/gatewayd*.log; do
    [ -f "$log" ] || continue
    for f in "$WORK"/psk-*; do
      [ -s "$f" ] || continue
      key=$(cat "$f")
      hex=$(printf '%s' "$key" | od -An -v -tx1 | tr -d ' \n')
      if grep -qiF -e "$key" -e "$hex" "$log"; then
        gw_fail "the sensor key of ${f##*/psk-} is in ${log##*/}"
      fi
    done
    if grep -q 'PRIVATE KEY' "$log"; then
      gw_fail "a private key is in ${log##*/}"
    fi
  done
}

# A port nobody listens on (proto: tcp or udp), below the kernel's ephemeral range so that no
# outgoing connection (gatewayd has one per device) takes it before our server binds it.
# Parallel tests may still pick the same one: the servers' starters retry.
gw_free_port() {
  local proto=$1 flag port i low
  [ "$proto" = tcp ] && flag=-Hltn || flag=-Hlun
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  for i in $(seq 1 100); do
    port=$((10000 + RANDOM % (low - 10000)))
    if [ -z "$(ss $flag "sport = :$port" 2>/dev/null)" ]; then
      echo "$port"
      return 0
    fi
  done
  gw_fail "no free $proto port found"
}

# A free port P whose P+1 is free too (swtpm's and tpmslow's command and control ports).
gw_free_port_pair() {
  local p i
  for i in $(seq 1 50); do
    p=$(gw_free_port tcp)
    [ -n "$(ss -Hltn "sport = :$((p + 1))")" ] || break
  done
  echo "$p"
}

# Waits up to $2 seconds for $1 (a shell condition) to hold. A deadline on the clock, not a
# count of tries: a condition that runs gwctl takes a while itself on a loaded machine, and
# 1,200 tries of "120 s" once outlasted meson's timeout.
gw_wait_for() {
  local cond=$1 secs=${2:-10} end
  end=$((${EPOCHREALTIME/[.,]/} + secs * 1000000))
  GW_WAITING=$cond # for the timeout's message
  until eval "$cond"; do
    if [ "${EPOCHREALTIME/[.,]/}" -ge "$end" ]; then
      GW_WAITING=
      return 1
    fi
    sleep 0.1
  done
  GW_WAITING=
}

# gw_grep ARG...: grep, for a filter whose "no line matched" (exit 1) is an answer, not an
# error: it returns 0 then, with no output. grep's own errors (exit 2: a file missing or
# unreadable, a bad pattern) still fail the test, which `grep ... || true` would hide.
gw_grep() {
  local rc=0
  grep "$@" || rc=$?
  [ "$rc" -le 1 ] || gw_fail "grep $* failed (exit $rc)"
}

# gw_count [GREP_OPTION...] PATTERN FILE: how many lines of FILE match (0 is an answer).
gw_count() { gw_grep -c "$@"; }

# CMD | gw_has [GREP_OPTION...] PATTERN: grep -q that reads all of its input first. Under
# pipefail, grep -q leaving at its first match kills a writer that writes in more than one
# piece (gwctl metrics does) with SIGPIPE, and the check failed though the line was there.
gw_has() {
  local in
  in=$(cat)
  grep -q "$@" <<<"$in"
}

# ---- a throwaway PKI ----

gw_pki_init() {
  mkdir -p "$WORK/pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=gatewayd test CA" -keyout "$WORK/pki/ca.key" -out "$WORK/pki/ca.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    2>/dev/null
}

# gw_pki_cert NAME CN EXT: key and certificate signed by the test CA into pki/NAME.{key,pem}.
gw_pki_cert() {
  local name=$1 cn=$2 ext=$3
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
    -keyout "$WORK/pki/$name.key" -out "$WORK/pki/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$WORK/pki/$name.ext"
  openssl x509 -req -in "$WORK/pki/$name.csr" -CA "$WORK/pki/ca.pem" -CAkey "$WORK/pki/ca.key" \
    -CAcreateserial -days 2 -extfile "$WORK/pki/$name.ext" -out "$WORK/pki/$name.pem" 2>/dev/null
  chmod 600 "$WORK/pki/$name.key"
}

# Revocation: an `openssl ca` database beside the test CA, and a CRL at pki/crl.pem.
gw_pki_crl_init() {
  cat >"$WORK/pki/ca.cnf" <<CNF
[ca]
default_ca = test
[test]
database = $WORK/pki/index.txt
crlnumber = $WORK/pki/crlnumber
certificate = $WORK/pki/ca.pem
private_key = $WORK/pki/ca.key
default_md = sha256
default_crl_days = 2
CNF
  : >"$WORK/pki/index.txt"
  echo 1000 >"$WORK/pki/crlnumber"
  gw_pki_crl_update
}

# Regenerates pki/crl.pem, atomically: mosquitto reading a half-written CRL would run without
# one (it fails open).
gw_pki_crl_update() {
  openssl ca -batch -config "$WORK/pki/ca.cnf" -gencrl -out "$WORK/pki/crl.pem.new" 2>/dev/null ||
    gw_fail "could not generate the CRL"
  mv "$WORK/pki/crl.pem.new" "$WORK/pki/crl.pem"
}

gw_pki_revoke() {
  openssl ca -batch -config "$WORK/pki/ca.cnf" -revoke "$WORK/pki/$1.pem" 2>/dev/null ||
    gw_fail "could not revoke $1's certificate"
  gw_pki_crl_update
}

gw_pki_server() { gw_pki_cert "$1" "$2" "subjectAltName=$3
extendedKeyUsage=serverAuth"; }
gw_pki_client() { gw_pki_cert "$1" "$1" "extendedKeyUsage=clientAuth"; }

# ---- the TPM: swtpm without a resource manager, as DESIGN.md describes ----

# Starts swtpm on free ports P (commands) and P+1 (control); sets SWTPM_PORT.
gw_start_swtpm() {
  local p
  gw_require swtpm
  p=$(gw_free_port_pair)
  mkdir -p -m 700 "$WORK/tpm"
  swtpm socket --tpm2 --server type=tcp,port="$p",bindaddr=127.0.0.1 \
    --ctrl type=tcp,port=$((p + 1)),bindaddr=127.0.0.1 --tpmstate dir="$WORK/tpm" \
    --flags not-need-init,startup-clear >"$WORK/swtpm.log" 2>&1 &
  SWTPM_PID=$!
  GW_PIDS+=("$SWTPM_PID")
  SWTPM_PORT=$p
  gw_wait_for "[ -n \"\$(ss -Hltn 'sport = :$p')\" ]" 10 ||
    gw_fail "swtpm did not start: $(cat "$WORK/swtpm.log")"
}

# gw_start_relay NAME LOG PROGRAM ARG...: starts a relay tool, which prints "listening" once
# it does, and waits for it; an ARG "@PORT@" is its listening port, a free one (for tpmslow,
# with the next one free too). Retries with another port when one was taken meanwhile.
# Sets RELAY_PID and RELAY_PORT.
gw_start_relay() {
  local name=$1 log=$2 try port a args
  shift 2
  for try in 1 2 3 4 5; do
    if [ "$name" = tpmslow ]; then port=$(gw_free_port_pair); else port=$(gw_free_port tcp); fi
    args=()
    for a in "$@"; do args+=("${a//@PORT@/$port}"); done
    "${args[@]}" >"$log" 2>"$log.err" &
    RELAY_PID=$!
    GW_PIDS+=("$RELAY_PID")
    gw_wait_for "grep -q listening '$log' || ! kill -0 $RELAY_PID 2>/dev/null" 10
    if grep -q listening "$log"; then
      RELAY_PORT=$port
      return 0
    fi
    grep -q 'cannot listen' "$log.err" || gw_fail "$name did not start: $(cat "$log.err")"
  done
  gw_fail "$name found no free port in 5 tries"
}

# ---- a TPM at a real chip's speed: tests/tools/tpmslow between gatewayd and swtpm ----

# gw_start_tpmslow CHIP: tpmslow in front of the swtpm gw_start_swtpm started, with that chip
# model (tpmslow -L lists them); sets TPMSLOW_PID, TPMSLOW_PORT and GW_TPM_PORT, so that
# gw_write_config's TCTI goes through it. Its events go to $WORK/tpmslow.out, its counts to
# $WORK/tpmslow.stats (gw_tpmslow_stats), its control file is $WORK/tpmslow.ctl.
gw_start_tpmslow() {
  : "${TPMSLOW:?set TPMSLOW to the tpmslow test tool (meson test sets it)}"
  : "${SWTPM_PORT:?gw_start_swtpm first}"
  : >"$WORK/tpmslow.ctl"
  gw_start_relay tpmslow "$WORK/tpmslow.out" "$TPMSLOW" -l @PORT@ -u "$SWTPM_PORT" -c "$1" \
    -C "$WORK/tpmslow.ctl" -o "$WORK/tpmslow.stats" -t "${GW_TOOL_LIFETIME:-3600}"
  TPMSLOW_PID=$RELAY_PID TPMSLOW_PORT=$RELAY_PORT GW_TPM_PORT=$RELAY_PORT
}

# gw_tpmslow_control LINE...: writes tpmslow's control file ("chip NAME", "hold-sign",
# "hold-sign MS"; none: the chip it started with, nothing held) and waits until it applied it.
gw_tpmslow_control() {
  local before
  before=$(gw_count ' control: ' "$WORK/tpmslow.out")
  printf '%s\n' "$@" >"$WORK/tpmslow.ctl"
  kill -HUP "$TPMSLOW_PID"
  gw_wait_for "[ \$(grep -c ' control: ' '$WORK/tpmslow.out') -gt $before ]" 10 ||
    gw_fail "tpmslow did not apply its control file: $(cat "$WORK/tpmslow.out.err")"
}

# gw_tpmslow_stats: tpmslow's counts now, in $WORK/tpmslow.stats ("name value" lines).
gw_tpmslow_stats() {
  rm -f "$WORK/tpmslow.stats"
  kill -USR1 "$TPMSLOW_PID"
  gw_wait_for "[ -f '$WORK/tpmslow.stats' ]" 10 || gw_fail "tpmslow wrote no stats"
}

# ---- a network that can be cut: tests/tools/netcut between gatewayd and the broker ----

# gw_start_netcut [SECONDS]: netcut in front of the broker (cuts last SECONDS, default 5);
# sets NETCUT_PID, NETCUT_PORT and GW_UPSTREAM_PORT, so that gw_write_config's broker address
# goes through it. Its events go to $WORK/netcut.out.
gw_start_netcut() {
  : "${NETCUT:?set NETCUT to the netcut test tool (meson test sets it)}"
  gw_start_relay netcut "$WORK/netcut.out" "$NETCUT" -l @PORT@ -u "$BROKER_PORT" -s "${1:-5}" \
    -t "${GW_TOOL_LIFETIME:-3600}"
  NETCUT_PID=$RELAY_PID NETCUT_PORT=$RELAY_PORT GW_UPSTREAM_PORT=$RELAY_PORT NETCUT_SECS=${1:-5}
}

# gw_netcut_cut: cuts every connection through netcut and refuses new ones for its SECONDS;
# returns once it relays again, and prints that moment (epoch ms).
gw_netcut_cut() {
  local before
  before=$(gw_count 'relaying again' "$WORK/netcut.out")
  kill -USR1 "$NETCUT_PID"
  gw_wait_for "[ \$(grep -c 'relaying again' '$WORK/netcut.out') -gt $before ]" $((NETCUT_SECS + 10)) ||
    gw_fail "netcut did not relay again"
  awk '/ netcut: relaying again/ { t = $1 } END { print t }' "$WORK/netcut.out"
}

# ---- the cloud: mosquitto with mutual TLS, identity as username, per-device ACL ----

# gw_start_broker [SERVER_CERT_NAME]: the server certificate defaults to one for localhost.
gw_start_broker() {
  local cert=${1:-broker}
  [ -f "$WORK/pki/$cert.pem" ] || gw_pki_server "$cert" localhost "DNS:localhost,IP:127.0.0.1"
  [ -f "$WORK/pki/observer.pem" ] || gw_pki_client observer
  cat >"$WORK/acl" <<ACL
# Each device writes under its own id and reads its own commands; the test's observer, the
# cloud, reads everything and sends commands.
pattern write devices/%u/#
pattern read devices/%u/commands/#
user observer
topic readwrite devices/#
ACL
  local try
  for try in 1 2 3 4 5; do
    BROKER_PORT=$(gw_free_port tcp)
    gw_write_broker_config "$cert"
    gw_run_broker && return 0
    grep -q 'Address already in use' "$WORK/mosquitto.log" ||
      gw_fail "mosquitto did not start: $(cat "$WORK/mosquitto.out" "$WORK/mosquitto.log")"
  done
  gw_fail "mosquitto found no free port in 5 tries"
}

gw_write_broker_config() {
  local cert=$1
  rm -f "$WORK/mosquitto.log"
  cat >"$WORK/mosquitto.conf" <<CONF
per_listener_settings false
# Started as root, mosquitto would switch to its own user, who cannot read our temp dir.
user $(id -un)
# A slow observer must not lose messages: mosquitto drops QoS 1 past 1,000 queued by default.
# (Not 0, "no limit": with it mosquitto 2.0.11 drops a client whose publish its ACL denied.)
max_queued_messages 1000000
persistence ${GW_BROKER_PERSIST:-false}
persistence_location $WORK/
log_dest file $WORK/mosquitto.log
log_type all
connection_messages true
listener $BROKER_PORT 127.0.0.1
cafile $WORK/pki/ca.pem
certfile $WORK/pki/$cert.pem
keyfile $WORK/pki/$cert.key
require_certificate true
use_identity_as_username true
acl_file $WORK/acl
${GW_BROKER_EXTRA:-}
CONF
  [ ! -f "$WORK/pki/crl.pem" ] || echo "crlfile $WORK/pki/crl.pem" >>"$WORK/mosquitto.conf"
}

# (Re)starts mosquitto with the config gw_start_broker wrote, on the same port.
gw_run_broker() {
  mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.out" 2>&1 &
  BROKER_PID=$!
  GW_PIDS+=("$BROKER_PID")
  gw_wait_for "[ -n \"\$(ss -Hltn 'sport = :$BROKER_PORT')\" ] || ! kill -0 $BROKER_PID 2>/dev/null" 10
  kill -0 "$BROKER_PID" 2>/dev/null || return 1
}

# Subscribes as the observer to devices/# and writes "topic payload" lines to $WORK/sub.out.
# With GW_BROKER_PERSIST=true its session outlives a broker restart (no clean session), so the
# broker keeps for it what arrives while it reconnects.
gw_start_subscriber() {
  local keep=()
  [ "${GW_BROKER_PERSIST:-false}" != true ] || keep=(-c)
  # One observer at a time: mosquitto_sub reconnects by itself after a broker restart, and two
  # clients with one id take the session from each other (and lose messages meanwhile).
  if [ -n "${SUB_PID:-}" ]; then
    kill "$SUB_PID" 2>/dev/null || true
    wait "$SUB_PID" 2>/dev/null || true
  fi
  # Subscribed, not only connected: a message published before the broker has the
  # subscription reaches nobody (mosquitto's PUBACK then says "no matching subscribers").
  local subacks
  subacks=$(gw_count "Sending SUBACK to observer$" "$WORK/mosquitto.log")
  mosquitto_sub -h localhost -p "$BROKER_PORT" --cafile "$WORK/pki/ca.pem" \
    --cert "$WORK/pki/observer.pem" --key "$WORK/pki/observer.key" -i observer "${keep[@]}" \
    -t 'devices/#' -q 1 -v >>"$WORK/sub.out" 2>"$WORK/sub.err" &
  SUB_PID=$!
  GW_PIDS+=("$!")
  gw_wait_for "[ \$(gw_count 'Sending SUBACK to observer\$' '$WORK/mosquitto.log') -gt ${subacks:-0} ]" 10 ||
    gw_fail "subscriber did not subscribe: $(cat "$WORK/sub.err")"
}

# gw_start_stamper TOPIC: tests/tools/mqttstamp as the observer (client id observer-stamp):
# "<epoch-ms> <topic> <payload>" per message in $WORK/stamp.out, from when it returns. Its
# session outlives its connection: with GW_BROKER_PERSIST=true nothing is lost to it across a
# broker restart, and it reconnects within 50 ms.
gw_start_stamper() {
  : "${MQTTSTAMP:?set MQTTSTAMP to the mqttstamp test tool (meson test sets it)}"
  "$MQTTSTAMP" -h localhost -p "$BROKER_PORT" -C "$WORK/pki/ca.pem" -c "$WORK/pki/observer.pem" \
    -k "$WORK/pki/observer.key" -i observer-stamp -t "$1" -q 1 -T "${GW_TOOL_LIFETIME:-3600}" \
    >>"$WORK/stamp.out" 2>"$WORK/stamp.err" &
  STAMPER_PID=$!
  GW_PIDS+=("$STAMPER_PID")
  gw_wait_for "grep -q 'mqttstamp: subscribed' '$WORK/stamp.out' ||
    ! kill -0 $STAMPER_PID 2>/dev/null" 10
  grep -q 'mqttstamp: subscribed' "$WORK/stamp.out" ||
    gw_fail "mqttstamp did not subscribe: $(cat "$WORK/stamp.out" "$WORK/stamp.err")"
}

# ---- devices, added the way a technician does: gwctl, a CSR, the CA's certificate ----

# gw_start_subscriber5 FORMAT: a second observer of devices/#, over MQTT 5, that prints each
# message as FORMAT (mosquitto_sub -F: %C content type, %q QoS) to $WORK/sub5.out.
gw_start_subscriber5() {
  mosquitto_sub -h localhost -p "$BROKER_PORT" --cafile "$WORK/pki/ca.pem" \
    --cert "$WORK/pki/observer.pem" --key "$WORK/pki/observer.key" -i observer-v5 -V mqttv5 \
    -t 'devices/#' -q 1 -F "$1" >"$WORK/sub5.out" 2>"$WORK/sub5.err" &
  GW_PIDS+=("$!")
}

gw_gwctl() { "$GWCTL" -c "$WORK/gateway.conf" "$@"; }

# gw_command TOPIC PAYLOAD [MOSQUITTO_PUB_OPTION...]: the cloud sends a command: the observer
# (whom the broker's ACL lets write commands) publishes it, MQTT 5, QoS 1.
gw_command() {
  mosquitto_pub -h localhost -p "$BROKER_PORT" --cafile "$WORK/pki/ca.pem" \
    --cert "$WORK/pki/observer.pem" --key "$WORK/pki/observer.key" -i cloud -V mqttv5 -q 1 \
    -t "$1" -m "$2" "${@:3}" || gw_fail "mosquitto_pub to $1 failed"
}

# gw_add_device ID [CN]: gwctl device add (the PSK it prints is kept in $WORK/psk-ID), then a
# certificate for the device key, with subject CN (default ID), from the test CA.
# Needs gw_write_config first. Works with gatewayd running (control socket) or not.
gw_add_device() {
  local id=$1 cn=${2:-$1} out
  gw_add_uncertified "$id"
  out=$(gw_gwctl -o "$WORK/pki/$id.csr" device csr "$id" 2>&1) || gw_fail "gwctl device csr $id: $out"
  printf 'extendedKeyUsage=clientAuth\n' >"$WORK/pki/client.ext"
  openssl x509 -req -in "$WORK/pki/$id.csr" -CA "$WORK/pki/ca.pem" -CAkey "$WORK/pki/ca.key" \
    -CAcreateserial -days 2 -subj "/CN=$cn" -extfile "$WORK/pki/client.ext" \
    -out "$WORK/pki/$id.pem" 2>/dev/null || gw_fail "test CA could not sign $id's request"
  out=$(gw_gwctl device import-cert "$id" "$WORK/pki/$id.pem" 2>&1) ||
    gw_fail "gwctl device import-cert $id: $out"
}

# gw_add_uncertified ID: gwctl device add only (the PSK it prints is kept in $WORK/psk-ID).
gw_add_uncertified() {
  local id=$1 out
  out=$(gw_gwctl device add "$id" 2>&1) || gw_fail "gwctl device add $id: $out"
  sed -n 's/^psk-key: //p' <<<"$out" | tr -d '\n' >"$WORK/psk-$id"
  [ -s "$WORK/psk-$id" ] || gw_fail "gwctl device add $id printed no PSK: $out"
}

gw_psk() { cat "$WORK/psk-$1"; }

# ---- the gateway ----

# gw_write_config [EXTRA_UPSTREAM_LINES]: $WORK/gateway.conf for the broker started above.
# GW_BACKEND=tpm (with gw_start_swtpm) puts the keystore in the TPM; GW_CONFIG_EXTRA is added
# at the end (more groups). GW_TPM_PORT (gw_start_tpmslow sets it) and GW_UPSTREAM_PORT
# (gw_start_netcut) put a relay between gatewayd and swtpm or the broker.
gw_write_config() {
  COAP_PORT=$(gw_free_port udp)
  cat >"$WORK/gateway.conf" <<CONF
gateway = {
  id = "gw-test";
  state_dir = "$WORK/state";
  control_socket = "$WORK/control.sock";
  log_level = "debug";
};
keystore = {
  backend = "${GW_BACKEND:-soft}";
  tcti = "swtpm:host=127.0.0.1,port=${GW_TPM_PORT:-${SWTPM_PORT:-0}}";
  ${GW_KEYSTORE_EXTRA:-}
};
sensors = {
  listen = "127.0.0.1";
  port = $COAP_PORT;
};
upstream = {
  broker = "mqtts://${GW_BROKER_HOST:-localhost}:${GW_UPSTREAM_PORT:-$BROKER_PORT}";
  ca_file = "$WORK/pki/ca.pem";
  reconnect_min = 1;
  reconnect_max = 2;
  publish_timeout = 5;
  ${1:-}
};
routes = (
  { resource = "temp"; topic = "devices/\${device}/telemetry/\${path}"; },
  { resource = "humidity"; topic = "devices/\${device}/telemetry/\${path}"; qos = 1; }
);
${GW_CONFIG_EXTRA:-}
CONF
}

# gw_start_gateway N: starts gatewayd and waits until N devices are connected upstream.
gw_start_gateway() {
  local want=${1:-0}
  # Emptied here: the redirection of a job started with & happens in the child, perhaps
  # after the wait below read the last run's "ready:" in the old file.
  : >"$WORK/gatewayd.log"
  "$GATEWAYD" -d -c "$WORK/gateway.conf" >>"$WORK/gatewayd.log" 2>&1 &
  GATEWAY_PID=$!
  GW_PIDS+=("$GATEWAY_PID")
  gw_wait_for "grep -q 'ready:' '$WORK/gatewayd.log'" 10 || gw_fail "gatewayd did not start"
  gw_wait_for "[ \$(grep -c 'upstream connected' '$WORK/gatewayd.log') -ge $want ]" 30 ||
    gw_fail "only $(grep -c 'upstream connected' "$WORK/gatewayd.log") of $want devices connected upstream"
}

# gw_sensor ID METHOD PATH PAYLOAD [KEY]: one CoAP request over DTLS-PSK, bounded in time.
# Prints the response code ("2.04", "5.03", ...) or "none"; the whole exchange, as coap-client
# logged it, is in $WORK/coap-last.out.
gw_sensor() {
  local id=$1 method=$2 path=$3 payload=$4 key=${5:-} code
  [ -n "$key" ] || key=$(gw_psk "$id")
  timeout 30 coap-client-openssl -v 6 -B 10 -m "$method" -u "$id" -k "$key" -e "$payload" \
    "coaps://127.0.0.1:$COAP_PORT/$path" >"$WORK/coap-last.out" 2>&1 || true
  # Response lines look like "v:1 t:ACK c:2.04 i:..."; the request's is "c:POST".
  code=$(grep -o 'c:[0-9]\.[0-9][0-9]' "$WORK/coap-last.out" | tail -n 1 | cut -c3-)
  echo "${code:-none}"
}

# gw_expect_code WANT ID METHOD PATH PAYLOAD [KEY]
gw_expect_code() {
  local want=$1 got
  shift
  got=$(gw_sensor "$@")
  [ "$got" = "$want" ] || gw_fail "$1 $2 /$3 '$4': got $got, want $want: $(tail -n 5 "$WORK/coap-last.out")"
}

# gw_wait_received LINE [SECS]: waits until the observer received exactly this "topic payload".
gw_wait_received() {
  gw_wait_for "grep -qxF '$1' '$WORK/sub.out'" "${2:-10}" ||
    gw_fail "the broker's subscriber never got '$1'; it got: $(cat "$WORK/sub.out")"
}

# The username mosquitto gave the client with this id (from its connection log line).
gw_broker_username() {
  grep -o "as $1 (p[0-9], c[0-9], k[0-9]*, u'[^']*')" "$WORK/mosquitto.log" | tail -n 1 |
    sed "s/.*u'\([^']*\)')/\1/"
}

# ---- sensors under load: tests/tools/gwsensor, one DTLS session, numbered readings ----

gw_now_ms() { date +%s%3N; }

# sensor ID [gwsensor options]: readings in the background, answers in $WORK/sensor-ID.out.
sensor() {
  local id=$1
  : "${GWSENSOR:?set GWSENSOR to the gwsensor test tool (meson test sets it)}"
  shift
  "$GWSENSOR" -a 127.0.0.1 -p "$COAP_PORT" -u "$id" -k "$(gw_psk "$id")" "$@" \
    >>"$WORK/sensor-$id.out" 2>&1 &
  eval "sensor_pid_${id//-/_}=$!"
}
sensor_pid() { eval "echo \$sensor_pid_${1//-/_}"; }
# The last reading of ID the gateway acknowledged.
acked() { awk '$3 == "2.04" { n = $2 } END { print n + 0 }' "$WORK/sensor-$1.out"; }

# gw_check_flowing N [EXCEPT...]: after the sensors of dev-1..dev-N (but EXCEPT) have run out
# their time, each got only 2.04s, and the broker holds every reading acknowledged to it
# (waited for, up to 30 s: acknowledged is spooled, not yet upstream).
gw_check_flowing() {
  local n=$1 i id k got missing
  shift
  for i in $(seq 1 "$n"); do
    id=dev-$i
    [[ " $* " == *" $id "* ]] && continue
    wait "$(sensor_pid "$id")" || true
    # Every answer 2.04; the run may end with its time limit ("stopped").
    if grep -qvE ' (2\.04|stopped)$' "$WORK/sensor-$id.out"; then
      gw_fail "$id got other answers: $(grep -vE ' (2\.04|stopped)$' "$WORK/sensor-$id.out" | head -3)"
    fi
  done
  for i in $(seq 1 "$n"); do
    id=dev-$i
    [[ " $* " == *" $id "* ]] && continue
    # The check below names what is still missing once this gives up.
    gw_wait_for "[ -z \"\$(undelivered $id)\" ]" 30 || break
  done
  for i in $(seq 1 "$n"); do
    id=dev-$i
    [[ " $* " == *" $id "* ]] && continue
    k=$(acked "$id")
    # "Keeps flowing" means flowing: a sensor that barely got through proves nothing.
    [ "$k" -ge "${GW_MIN_READINGS:-20}" ] || gw_fail "$id: only $k readings acknowledged"
    got=$(awk -v id="$id" '$1 == "devices/" id "/telemetry/temp" && $2 == id { print $3 }' \
      "$WORK/sub.out" | sort -u)
    missing=$(comm -23 <(seq 1 "$k" | sort) <(printf '%s\n' "$got") | head -3)
    [ -z "$missing" ] || gw_fail "$id: acknowledged readings missing upstream: $missing"
  done
  gw_log "$(wc -l <"$WORK/sub.out") readings upstream; every acknowledged one arrived"
}

# Readings of ID in the order the subscriber got them, and those acknowledged to its sensor.
received() {
  awk -v id="$1" '$1 == "devices/" id "/telemetry/temp" && $2 == id { print $3 }' "$WORK/sub.out"
}
acknowledged() { awk '$3 == "2.04" { print $2 }' "$WORK/sensor-$1.out" | sort -n -u; }
# Readings acknowledged to ID's sensor that the subscriber has not got.
undelivered() { comm -23 <(acknowledged "$1" | sort) <(received "$1" | sort -u) | sort -n; }

# gw_check_delivery ID...: every reading the sensors of these devices had acknowledged (2.04
# in $WORK/sensor-ID.out) reached the subscriber, and per device they arrived in order (the
# first time each was seen). Duplicates are allowed (MQTT's at-least-once after a failure),
# counted and reported. Sets DELIVERED and DUPLICATES (totals).
gw_check_delivery() {
  local id first n_ack n_got dups missing
  DELIVERED=0 DUPLICATES=0
  for id in "$@"; do
    n_ack=$(acknowledged "$id" | wc -l)
    [ "$n_ack" -gt 0 ] || gw_fail "$id: no reading was acknowledged"
    missing=$(undelivered "$id" | head -5)
    [ -z "$missing" ] || gw_fail "$id: acknowledged readings never arrived: $(echo $missing)"
    first=$(received "$id" | awk '!seen[$1]++')
    sort -n -C <<<"$first" ||
      gw_fail "$id: readings arrived out of order: $(awk 'NR > 1 && $1 < prev { print prev " then " $1; exit } { prev = $1 }' <<<"$first")"
    n_got=$(wc -l <<<"$first")
    dups=$(($(received "$id" | wc -l) - n_got))
    gw_log "$id: $n_ack acknowledged, $n_got arrived in order, $dups duplicates"
    DELIVERED=$((DELIVERED + n_got))
    DUPLICATES=$((DUPLICATES + dups))
  done
}

# gw_wait_delivered SECS ID...: waits until every reading acknowledged to these devices'
# sensors reached the subscriber (the spool drains after an outage), then checks them.
gw_wait_delivered() {
  local secs=$1 id
  shift
  for id in "$@"; do
    gw_wait_for "[ -z \"\$(undelivered $id)\" ]" "$secs" || break
  done
  gw_check_delivery "$@"
}

# gw_start_fleet N: dev-1..dev-N added and connected, each with a sensor sending 20 readings a
# second for 10 s; returns once dev-7 is flowing (the device the fleet tests act on).
gw_start_fleet() { gw_start_flowing "$1" dev-7 10 -n 100000 -i 50 -t 10; }

# gw_start_flowing N DEV MIN [gwsensor options]: dev-1..dev-N added and connected, each with a
# sensor started with these options; returns once DEV has MIN readings acknowledged.
gw_start_flowing() {
  local n=$1 dev=$2 min=$3 i
  shift 3
  for i in $(seq 1 "$n"); do gw_add_device "dev-$i"; done
  gw_start_gateway "$n"
  for i in $(seq 1 "$n"); do sensor "dev-$i" "$@"; done
  gw_wait_for "[ \$(acked $dev) -ge $min ]" 10 ||
    gw_fail "$dev is not flowing: $(tail -n 3 "$WORK/sensor-$dev.out")"
}

# ---- certificate enrolment: the test suite's own EST server (tests/tools/est-server.py) ----

# gw_start_est LIFETIME: an EST server on a free port that issues device certificates from the
# test CA, valid LIFETIME seconds, and authenticates clients by certificates of that CA. A
# second CA (pki/alt.pem), which the broker does not trust, serves its "untrusted" mode.
# Its mode is the first line of $WORK/est-mode; issued certificates go to $WORK/est-issued.
# Sets EST_PORT, EST_PID.
gw_start_est() {
  gw_require python3
  [ -f "$WORK/pki/est.pem" ] || gw_pki_server est localhost "DNS:localhost,IP:127.0.0.1"
  if [ ! -f "$WORK/pki/alt.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=gatewayd test CA (not trusted by the broker)" -keyout "$WORK/pki/alt.key" \
      -out "$WORK/pki/alt.pem" -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  fi
  : >"$WORK/est-mode"
  rm -f "$WORK/est-port"
  python3 "$(dirname "${BASH_SOURCE[0]}")/../tools/est-server.py" --cert "$WORK/pki/est.pem" \
    --key "$WORK/pki/est.key" --client-ca "$WORK/pki/ca.pem" --ca-cert "$WORK/pki/ca.pem" \
    --ca-key "$WORK/pki/ca.key" --alt-ca-cert "$WORK/pki/alt.pem" \
    --alt-ca-key "$WORK/pki/alt.key" --state-dir "$WORK/est" --lifetime "$1" \
    --port-file "$WORK/est-port" --mode-file "$WORK/est-mode" \
    --issued-log "$WORK/est-issued" 2>"$WORK/est.log" &
  EST_PID=$!
  GW_PIDS+=("$EST_PID")
  gw_wait_for "[ -s '$WORK/est-port' ] || ! kill -0 $EST_PID 2>/dev/null" 10
  [ -s "$WORK/est-port" ] || gw_fail "the EST server did not start: $(cat "$WORK/est.log")"
  EST_PORT=$(cat "$WORK/est-port")
}

# The est group for gatewayd, appended to the config gw_write_config wrote.
gw_config_est() {
  cat >>"$WORK/gateway.conf" <<CONF
est = {
  url = "https://localhost:$EST_PORT/.well-known/est";
  ca_file = "$WORK/pki/ca.pem";
  ${1:-}
};
CONF
}

# The gateway's own certificate, from the test CA: the identity it enrols devices with.
gw_gateway_cert() {
  local out
  out=$(gw_gwctl -o "$WORK/pki/gateway.csr" gateway csr 2>&1) || gw_fail "gwctl gateway csr: $out"
  printf 'extendedKeyUsage=clientAuth\n' >"$WORK/pki/client.ext"
  openssl x509 -req -in "$WORK/pki/gateway.csr" -CA "$WORK/pki/ca.pem" -CAkey "$WORK/pki/ca.key" \
    -CAcreateserial -days 2 -extfile "$WORK/pki/client.ext" -out "$WORK/pki/gateway.pem" \
    2>/dev/null || gw_fail "test CA could not sign the gateway's request"
  out=$(gw_gwctl gateway import-cert "$WORK/pki/gateway.pem" 2>&1) ||
    gw_fail "gwctl gateway import-cert: $out"
}

# The serial of the certificate a device presents now.
gw_serial() {
  openssl x509 -noout -serial -in "$WORK/state/keystore/$1/cert.pem" | cut -d= -f2
}
