#!/usr/bin/env bash
# Installs cargo-mutants (mutation testing, `scripts/mutants.sh`) from crates.io at a pinned
# version, with its own lock file (`--locked`). Idempotent: does nothing when that version is
# already installed.
#
#   scripts/install-mutants.sh
set -euo pipefail

CARGO_MUTANTS_VERSION="${CARGO_MUTANTS_VERSION:-27.1.0}"

installed=""
if command -v cargo-mutants >/dev/null 2>&1; then
    # `cargo mutants --version` prints "cargo-mutants X.Y.Z".
    installed="$(cargo mutants --version 2>/dev/null | awk '{print $NF}' || true)"
fi
if [[ "$installed" == "$CARGO_MUTANTS_VERSION" ]]; then
    echo "cargo-mutants: $installed"
else
    echo "cargo-mutants: ${installed:-missing}, installing $CARGO_MUTANTS_VERSION"
    cargo install cargo-mutants --version "$CARGO_MUTANTS_VERSION" --locked
fi
