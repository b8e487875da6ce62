#!/usr/bin/env bash
# The fleet figures of BENCHMARKS.md ("Fleet"): both dispatch layouts, one
# after the other, at each fleet size, with 10,000 jobs offered at 1,000/s,
# then both at a rate the cluster keeps up with (dispatch latency without
# queueing), then a node kill. Each run's whole output goes to
# $OUT/<name>.txt; the summary lines are printed as they come. Minutes per
# run; the whole set takes about half an hour on a 2-core machine.
#
#   scripts/fleet-figures.sh [sizes]     sizes default to "100 1000 2000"
#   OUT=dir JOBS=n RATE=r scripts/fleet-figures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${1:-100 1000 2000}
out=${OUT:-var/fleet-figures}
jobs=${JOBS:-10000}
rate=${RATE:-1000}
mkdir -p "$out"
# The production ack wait: a 2-minute silence before a job counts as lost.
common=(-duration 1s -ack-wait 2m -nats-bench "${NATS_BENCH:-}")
if [ -z "${NATS_BENCH:-}" ]; then common=(-duration 1s -ack-wait 2m); fi

run() {
	local name=$1
	shift
	echo "== $name: go run ./tests/fleet $*"
	uptime
	go run ./tests/fleet "$@" >"$out/$name.txt" 2>&1 || echo "(exit $?)"
	grep -E '^(fleet_up_s|fleet:|jobs:|fault:)|^  (node|api|harness)|operations per job' "$out/$name.txt" || true
}

for n in $sizes; do
	for d in limits workqueue; do
		run "$d-$n" -hosts "$n" -jobs "$jobs" -rate "$rate" -dispatch "$d" "${common[@]}"
	done
done
for d in limits workqueue; do
	run "$d-latency" -hosts 1000 -jobs 1000 -rate 25 -dispatch "$d" "${common[@]}"
	run "$d-ops" -hosts 100 -jobs 1000 -rate 100 -dispatch "$d" -count-ops "${common[@]}"
done
run limits-kill-leader -hosts 1000 -jobs 3000 -rate 1000 -fault kill-leader -duration 1s
