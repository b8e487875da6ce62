#!/usr/bin/env bash
# make demo: start everything (scripts/run.sh) and run the demo program.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/run.sh go run ./demo
