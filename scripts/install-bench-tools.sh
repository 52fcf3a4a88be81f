#!/usr/bin/env bash
# Installs what `benches/instructions.rs` (gungraun, callgrind) needs at run time:
#
#   - valgrind (apt-get, when `valgrind` is not on PATH);
#   - gungraun-runner, the binary that `cargo bench --bench instructions` hands the benchmark
#     to. Its version must equal the `gungraun` library's in Cargo.toml's [dev-dependencies]
#     (read from there, so the two cannot drift): installed with `cargo install --locked`
#     when it is missing or reports another version.
#
# Idempotent: a second run does nothing. Compiling the benchmark (clippy --all-targets in CI)
# needs neither tool; only running it does.
#
#   scripts/install-bench-tools.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The version pinned in Cargo.toml: `gungraun = "=X.Y.Z"` or `gungraun = { version = "=X.Y.Z", .. }`.
GUNGRAUN_VERSION="$(sed -nE 's/^gungraun[[:space:]]*=.*"=?([0-9]+\.[0-9]+\.[0-9]+)".*/\1/p' Cargo.toml | head -n1)"
if [[ -z "$GUNGRAUN_VERSION" ]]; then
    echo "install-bench-tools: no pinned gungraun version found in Cargo.toml" >&2
    exit 1
fi

sudo_if_needed() {
    if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

if command -v valgrind >/dev/null 2>&1; then
    echo "valgrind: $(valgrind --version)"
else
    echo "valgrind: missing, installing with apt-get"
    sudo_if_needed apt-get update
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends valgrind
    valgrind --version
fi

installed=""
if command -v gungraun-runner >/dev/null 2>&1; then
    # `gungraun-runner --version` prints "gungraun-runner X.Y.Z".
    installed="$(gungraun-runner --version 2>/dev/null | awk '{print $NF}' || true)"
fi
if [[ "$installed" == "$GUNGRAUN_VERSION" ]]; then
    echo "gungraun-runner: $installed (matches the gungraun library)"
else
    echo "gungraun-runner: ${installed:-missing}, installing $GUNGRAUN_VERSION"
    cargo install gungraun-runner --version "$GUNGRAUN_VERSION" --locked
fi
