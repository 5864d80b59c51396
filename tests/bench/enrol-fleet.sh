#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Benchmark: N devices (default 200) added without certificates to a running gatewayd, which
# enrols them over EST (the test suite's EST server) and connects them; then all N renewed at
# once (gwctl device enroll, a new key each). On the tpm backend (swtpm, no resource manager)
# and, as the baseline in the same run, on the soft backend. Prints, for each: seconds from the
# first add until all N are connected, seconds for all N renewals to be committed, and the
# TPM's share; asserts nothing. Local only: mosquitto, swtpm, the EST server and gatewayd on
# 127.0.0.1, stopped at the end.
#   tests/bench/enrol-fleet.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-200}
GW_TEST=bench-enrol
source tests/bench/bench.sh
gw_pki_init
gw_start_swtpm
gw_start_broker
gw_start_est 86400

now() { date +%s.%N; }
count() { grep -c "$1" "$WORK/gatewayd.log" || true; }

declare -A result
bench() {
  local b=$1 t0 tenrol trenew stats
  rm -rf "$WORK/state"
  mkdir -m 700 "$WORK/state"
  GW_BACKEND=$b gw_write_config
  gw_config_est
  gw_gateway_cert
  gw_start_gateway 0

  t0=$(now)
  for i in $(seq 1 "$n"); do gw_gwctl device add "dev-$i" >/dev/null; done
  gw_wait_for "[ \$(count 'upstream connected') -ge $n ]" 600 ||
    gw_fail "$b: only $(count 'upstream connected') of $n enrolled and connected"
  tenrol=$(echo "$(now) - $t0" | bc)

  t0=$(now)
  # Six at a time: the control socket serves 8 clients at once, and gwctl enroll waits.
  seq 1 "$n" | xargs -P 6 -I{} "$GWCTL" -c "$WORK/gateway.conf" device enroll dev-{} >/dev/null
  gw_wait_for "[ \$(count 'renewed (the broker accepted') -ge $n ]" 600 ||
    gw_fail "$b: only $(count 'renewed (the broker accepted') of $n renewals committed"
  trenew=$(echo "$(now) - $t0" | bc)
  kill -TERM "$GATEWAY_PID"
  wait "$GATEWAY_PID" 2>/dev/null || true
  stats=$(awk '
    /keystore: [0-9]+ TPM commands, [0-9]+ signatures/ {
      printf "%s TPM commands, %s signatures, %s ms per signature", $3, $6, $8 }
  ' "$WORK/gatewayd.log")
  result[$b]="$(printf '%-5s %10.2f %10.2f  %s' "$b" "$tenrol" "$trenew" "${stats:-no TPM}")"
  gw_log "$b done"
}

bench soft
bench tpm
printf '\n%d devices, EST on 127.0.0.1, at most 4 requests in flight\n' "$n"
printf '%-5s %10s %10s  %s\n' backend enrol-s renew-s "TPM (whole run)"
printf '%s\n' "${result[soft]}" "${result[tpm]}"
printf 'tpm/soft: enrol %.2f, renew %.2f\n' \
  "$(echo "$(awk '{print $2}' <<<"${result[tpm]}") / $(awk '{print $2}' <<<"${result[soft]}")" | bc -l)" \
  "$(echo "$(awk '{print $3}' <<<"${result[tpm]}") / $(awk '{print $3}' <<<"${result[soft]}")" | bc -l)"
