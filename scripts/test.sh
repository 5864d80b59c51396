#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs the whole test suite (unit; integration against real mosquitto and coap-client; tpm on swtpm)
# twice: on a -Werror build, and on an AddressSanitizer + UndefinedBehaviorSanitizer build; the
# unit suite of an arm64 build under qemu (scripts/test-arm64.sh); the Debian packages and the
# package test; then runs each fuzz harness briefly (GW_FUZZ_SECONDS, default 10) with clang's
# libFuzzer.
# Installs what it needs. Exits non-zero if anything fails. Builds live in .build/.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh all || exit 1

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}

passed=0
failed=0
run() {
  local name=$1 dir=$2
  shift 2
  echo "== $name: building in $dir" >&2
  if ! scripts/build.sh "$dir" -Dwerror=true "$@"; then
    echo "== $name: build failed" >&2
    failed=$((failed + 1))
    return
  fi
  echo "== $name: testing" >&2
  tested "$dir" meson test -C "$dir" --suite unit --suite integration --suite tpm --print-errorlogs
}

# tested DIR COMMAND...: runs COMMAND, a `meson test` of build dir DIR, and adds the results in
# its test log to the totals (the last run's log removed first, so that none of its passes count).
tested() {
  local dir=$1 log=$1/meson-logs/testlog.json ok bad
  shift
  rm -f "$log"
  "$@"
  if [ ! -f "$log" ]; then
    echo "== $dir: no test log: the tests did not run" >&2
    failed=$((failed + 1))
    return
  fi
  ok=$(grep -c '"result": "OK"' "$log" || true)
  bad=$(grep -c '"result": "\(FAIL\|TIMEOUT\|ERROR\)"' "$log" || true)
  if [ "$ok" -eq 0 ] && [ "$bad" -eq 0 ]; then
    bad=1 # a run that ran nothing is a failure, not a pass
  fi
  passed=$((passed + ok))
  failed=$((failed + bad))
}

run werror .build/werror
run sanitize .build/sanitize -Db_sanitize=address,undefined -Db_lundef=false

# The unit suite of the arm64 build (the boards' architecture: char is unsigned there, and
# alignment and atomics differ), cross-built and run under qemu-user. Its integration suite
# takes about 8 minutes more: `scripts/test-arm64.sh integration`.
echo "== arm64: building in .build/arm64 and testing under qemu" >&2
tested .build/arm64 scripts/test-arm64.sh unit

# The Debian packages (amd64, and arm64 cross-built; lintian), and the package test: it installs
# the native .deb on this machine, checks it and purges it (it refuses to touch a gatewayd
# installed already).
echo "== package: building the .debs, installing and purging the amd64 one" >&2
if scripts/package.sh all >.build/package.log 2>&1 && tests/package/test-package.sh >>.build/package.log 2>&1; then
  passed=$((passed + 1))
else
  tail -n 40 .build/package.log >&2
  failed=$((failed + 1))
fi

# Each fuzz harness for a short, fixed time from its corpus (the two runs above replayed every
# corpus file already): a crash, a leak or a sanitizer report fails the suite.
echo "== fuzz: ${GW_FUZZ_SECONDS:-10} s per harness" >&2
if tests/fuzz/run.sh all "${GW_FUZZ_SECONDS:-10}" >.build/fuzz.log 2>&1; then
  passed=$((passed + 1))
else
  tail -n 60 .build/fuzz.log >&2
  failed=$((failed + 1))
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
