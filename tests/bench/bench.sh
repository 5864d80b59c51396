# SPDX-License-Identifier: Apache-2.0
# Sourced by each benchmark, from the project's root, after it set n (its number of devices or
# senders) and GW_TEST (bench-WHAT): installs what is missing, builds a release without
# sanitizers in .build/bench, points tests/integration/lib.sh at that build, and makes the temp
# dir (removed at the end, as the tests do).
scripts/deps.sh all
scripts/build.sh .build/bench -Dbuildtype=release -Db_sanitize=none

BENCH_BUILD=$PWD/.build/bench
export GATEWAYD=$BENCH_BUILD/gatewayd GWCTL=$BENCH_BUILD/gwctl
export GWSENSOR=$BENCH_BUILD/tests/tools/gwsensor GW_TEST
source tests/integration/lib.sh
# One socket per device on each side, plus files.
ulimit -n $((4 * n + 1024))
gw_setup
