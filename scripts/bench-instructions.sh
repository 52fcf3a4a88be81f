#!/usr/bin/env bash
# Instruction counts (callgrind, through gungraun) of the chain, one step, the observed chain,
# the retry path, the map and the fan-out against the same work written by hand: the
# repeatable companion of `cargo bench --bench overhead`, whose wall-clock figures vary 2-3x
# from run to run on shared machines.
#
#   scripts/bench-instructions.sh                 # installs the tools if needed, runs, prints the table
#   scripts/bench-instructions.sh chain10         # only benchmarks matching a filter (gungraun's own)
#
# Installs valgrind (apt-get) and gungraun-runner (same version as the gungraun library) when
# missing (scripts/install-bench-tools.sh). The raw JSON of the run is kept in
# $CARGO_TARGET_DIR/gungraun/instructions.json; the table comes from
# scripts/instructions-table.py. Not run by CI (CI only compiles benches/ through clippy).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-bench-tools.sh >&2

target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target/gungraun"
json="$target/gungraun/instructions.json"
# One JSON object per benchmark on stdout; gungraun's progress and cargo's output on stderr.
cargo bench --bench instructions -- --output-format=json "$@" >"$json"
python3 scripts/instructions-table.py "$json"
