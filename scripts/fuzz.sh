#!/usr/bin/env bash
# Runs the cargo-fuzz targets (pipeline, wire) for N seconds each (default 60).
# cargo-fuzz needs nightly-only compiler flags; the stable toolchain accepts them with
# RUSTC_BOOTSTRAP=1 (no other toolchain can be installed here).
set -euo pipefail
secs="${1:-60}"
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install -q cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
mkdir -p corpus/wire
for t in pipeline wire; do
  # The pipeline seeds are valid inputs for the wire target too (after the selector byte).
  seeds=corpus/pipeline
  [ "$t" = wire ] && seeds="corpus/wire corpus/pipeline"
  echo "fuzz: $t for ${secs}s"
  # shellcheck disable=SC2086
  cargo fuzz run -s none "$t" $seeds -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
    | grep -E '^(Done|stat::number_of_executed_units|==|SUMMARY|thread|panicked)' || true
  # A crash leaves an artifact and a non-zero status from cargo fuzz; surface it.
  if ls artifacts/"$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz: $t found a crash: $(ls artifacts/"$t"/crash-*)" >&2
    exit 1
  fi
done
