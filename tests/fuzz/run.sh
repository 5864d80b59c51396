#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tests/fuzz/run.sh [NAME [SECONDS [LIBFUZZER_OPTION...]]]: builds tests/fuzz/fuzz-NAME.c (default
# mqttcodec) with clang's libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer into
# .build/fuzz/, and fuzzes it for SECONDS (default 60) starting from tests/fuzz/corpus/NAME.
# New inputs go to .build/fuzz/corpus-NAME (kept between runs), crashes to .build/fuzz/crash-*:
# copy a crash into tests/fuzz/corpus/NAME once fixed, so the unit suite replays it.
# Exits non-zero if the fuzzer found a crash, a leak or a broken check.
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:-mqttcodec}
secs=${2:-60}
shift $(($# < 2 ? $# : 2))

# What each harness is built from: the parser's sources, not the daemon's whole library.
case "$name" in
  mqttcodec) src=(bridges/mqtt/mqttcodec.c) inc=(-Ibridges/mqtt) ;;
  *)
    echo "$0: no harness named '$name'" >&2
    exit 2
    ;;
esac

scripts/deps.sh build # clang and libclang-rt-14-dev (libFuzzer) among them
out=.build/fuzz
mkdir -p "$out/corpus-$name"
clang -std=gnu11 -g -O1 -Wall -Wextra -Werror \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  "${inc[@]}" "${src[@]}" "tests/fuzz/fuzz-$name.c" -o "$out/fuzz-$name"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
# The first directory receives what the fuzzer finds; the seeds stay as committed.
exec "$out/fuzz-$name" -max_total_time="$secs" -print_final_stats=1 \
  -artifact_prefix="$out/" "$@" "$out/corpus-$name" "tests/fuzz/corpus/$name"
