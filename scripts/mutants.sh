#!/usr/bin/env bash
# Mutation testing of flow-runtime with cargo-mutants (installed at a pinned version by
# scripts/install-mutants.sh). Configuration, and the reason for each exclusion, in
# .cargo/mutants.toml: the tests of flow-runtime and of the facade `flow` (its tests/ drive
# the runtime through the macros) run for each mutant, unit and integration tests only
# (no doctests, no trybuild ui cases), and a hung mutant is ended after a timeout.
#
#   scripts/mutants.sh                                   # every mutant of flow-runtime (hours on 2 cores)
#   scripts/mutants.sh --file flow-runtime/src/policy/backoff.rs   # one file
#   scripts/mutants.sh --list | wc -l                    # how many mutants
#
# Extra arguments go to `cargo mutants` (`--file`, `--re`, `--list`, `-j 2`, `--in-diff`, ..).
# Results: target/mutants.out/ (outcomes.json, caught.txt, missed.txt, timeout.txt, unviable.txt);
# MUTANTS.md records the last full results. Not run by CI: one mutant costs a rebuild of
# flow-runtime and its dependents plus the test suites.
#
# CARGO_TARGET_DIR: cargo-mutants builds a copy of the tree; a fixed target dir (default
# target/mutants here, apart from the usual target/ since it is built without debug info)
# keeps the dependencies built between runs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-mutants.sh >&2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/mutants}"
# No debug info in the mutants' builds: linking the dozen test binaries again after every
# mutant is most of a mutant's time, and a failing test's backtrace is not needed here.
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-false}"
exec cargo mutants --package flow-runtime "$@"
