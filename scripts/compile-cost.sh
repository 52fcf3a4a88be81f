#!/usr/bin/env bash
# Compile cost of the macros: times `cargo check` of three generated crates that depend on this
# workspace's `flow` by path: a 50-step `flow!`, a 50-step `#[workflow]`, and the same chain
# hand-written. Each crate is checked once to build its dependencies, then its source is
# touched and re-checked RUNS times; the difference to the hand-written crate is what the
# expansion (and the checking of the code it generates) costs.
#
#   scripts/compile-cost.sh            # RUNS=10 by default; uses hyperfine when installed
#   RUNS=5 KEEP=1 scripts/compile-cost.sh
#
# Not run by CI. The generated crates live in a temp dir (kept with KEEP=1).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUNS="${RUNS:-10}"
STEPS="${STEPS:-50}"
WORK="$(mktemp -d /tmp/flow-compile-cost.XXXXXX)"
if [[ -z "${KEEP:-}" ]]; then trap 'rm -rf "$WORK"' EXIT; fi
export CARGO_TARGET_DIR="$WORK/target"

steps() {
    for i in $(seq 1 "$STEPS"); do
        printf 'pub async fn s%d(x: u64) -> Result<u64, E> {\n    Ok(x + 1)\n}\n' "$i"
    done
}

header() {
    cat <<'EOF'
#![allow(dead_code)]
#[derive(Debug)]
pub struct E;
impl std::fmt::Display for E {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("e")
    }
}
EOF
}

make_crate() { # name, body generator
    local name="$1"
    mkdir -p "$WORK/$name/src"
    cat >"$WORK/$name/Cargo.toml" <<EOF
[package]
name = "$name"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
flow = { path = "$ROOT" }

[workspace]
EOF
    { header; steps; "$2"; } >"$WORK/$name/src/lib.rs"
}

body_flow() {
    printf 'pub async fn run(x: u64) -> u64 {\n    let f = flow::flow! { '
    for i in $(seq 1 "$STEPS"); do
        [[ $i -gt 1 ]] && printf ' -> '
        printf 's%d' "$i"
    done
    printf ' };\n    f.run(x).await.unwrap_or(0)\n}\n'
}

body_workflow() {
    printf '#[flow::workflow]\npub async fn run(x: u64) -> Result<u64, E> {\n'
    for i in $(seq 1 $((STEPS - 1))); do printf '    let x = s%d(x).await?;\n' "$i"; done
    printf '    s%d(x).await\n}\n' "$STEPS"
}

body_hand() {
    printf 'pub async fn run(x: u64) -> Result<u64, E> {\n'
    for i in $(seq 1 $((STEPS - 1))); do printf '    let x = s%d(x).await?;\n' "$i"; done
    printf '    s%d(x).await\n}\n' "$STEPS"
}

make_crate cc_hand body_hand
make_crate cc_flow body_flow
make_crate cc_workflow body_workflow

echo "rustc: $(rustc --version); $STEPS steps; $RUNS runs each; work dir $WORK"
for c in cc_hand cc_flow cc_workflow; do
    (cd "$WORK/$c" && cargo check --quiet)
done

if command -v hyperfine >/dev/null; then
    args=()
    for c in cc_hand cc_flow cc_workflow; do
        args+=(-n "$c" "cd $WORK/$c && touch src/lib.rs && cargo check --quiet")
    done
    hyperfine --warmup 1 --runs "$RUNS" --export-markdown "$WORK/compile-cost.md" "${args[@]}"
    cat "$WORK/compile-cost.md"
else
    for c in cc_hand cc_flow cc_workflow; do
        total=0
        best=0
        for _ in $(seq 1 "$RUNS"); do
            touch "$WORK/$c/src/lib.rs"
            t0=$(date +%s%N)
            (cd "$WORK/$c" && cargo check --quiet)
            t=$(( ($(date +%s%N) - t0) / 1000000 ))
            total=$((total + t))
            if [[ $best -eq 0 || $t -lt $best ]]; then best=$t; fi
        done
        echo "$c: mean $((total / RUNS)) ms, best $best ms over $RUNS runs"
    done
fi
