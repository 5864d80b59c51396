#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tests/fuzz/run.sh [NAME|all [SECONDS [LIBFUZZER_OPTION...]]]: builds the harnesses with clang's
# libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer in .build/fuzz (the whole library
# instrumented, -Dfuzzing=true), and fuzzes tests/fuzz/fuzz-NAME.c, or each harness in turn, for
# SECONDS each (default 60), starting from tests/fuzz/corpus/NAME.
# New inputs go to .build/fuzz/corpus-NAME (kept between runs), crashes to
# .build/fuzz/crash-NAME-*: copy a crash into tests/fuzz/corpus/NAME once fixed, so that the unit
# suite replays it. Exits non-zero if any harness found a crash, a leak or a broken check.
# FUZZ_BUILD names another build folder than .build/fuzz, e.g. for a long campaign while the
# test suite runs its own short one.
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:-all}
secs=${2:-60}
shift $(($# < 2 ? $# : 2))

# The harness list is meson's; read it from there so that the two never disagree.
mapfile -t all < <(sed -n "s/^fuzz_harnesses = \[\(.*\)\]/\1/p" tests/fuzz/meson.build |
  tr -d "' " | tr ',' '\n')
if [ "$name" = all ]; then
  names=("${all[@]}")
elif printf '%s\n' "${all[@]}" | grep -qx -- "$name"; then
  names=("$name")
else
  echo "$0: no harness named '$name' (there are: ${all[*]})" >&2
  exit 2
fi

scripts/deps.sh build # clang and libclang-rt-14-dev (libFuzzer) among them
out=${FUZZ_BUILD:-.build/fuzz}
CC=clang scripts/build.sh "$out" -Dfuzzing=true -Db_sanitize=address,undefined \
  -Db_lundef=false -Dbuildtype=debugoptimized

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}
failed=()
for n in "${names[@]}"; do
  mkdir -p "$out/corpus-$n"
  echo "== fuzz-$n: ${secs} s" >&2
  # The first directory receives what the fuzzer finds; the seeds stay as committed.
  if ! "$out/tests/fuzz/fuzz-$n" -max_total_time="$secs" -print_final_stats=1 \
    -artifact_prefix="$out/crash-$n-" "$@" "$out/corpus-$n" "tests/fuzz/corpus/$n"; then
    failed+=("$n")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "$0: found a crash in: ${failed[*]} (inputs in $out/crash-*)" >&2
  exit 1
fi
