#!/usr/bin/env bash
# gotest.sh ARGS...: go test ARGS, the whole output kept in var/test.log.
# On a failure the output ends with a summary: the failed tests and, after a
# timeout, the tests that were still running. go test prints those first,
# before the goroutine dump, so a log cut to its tail would lose them.
set -uo pipefail
mkdir -p var
log=var/test.log
"${GO:-go}" test "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
	echo "=== what failed (the whole output is in $log)"
	grep -E -- '^[[:space:]]*--- FAIL|^FAIL|^panic:' "$log" | head -60
	grep -A 30 -E '^[[:space:]]*running tests:' "$log" | grep -E '^[[:space:]]+(running tests:|Test)' | head -40
fi
exit "$rc"
