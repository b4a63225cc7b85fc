#!/usr/bin/env bash
# Runs every test of the workspace and ends with one summary line, "N passed, N failed",
# summed over all test binaries (cargo's own last line is a doc-test binary's, often "0 passed").
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
{ cargo build --workspace --release --bins && cargo test --workspace --release -- --test-threads 2; } 2>&1 | tee "$log" || status=$?
passed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
