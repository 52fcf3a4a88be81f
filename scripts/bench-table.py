#!/usr/bin/env python3
"""Prints the table of BENCHMARKS.md from the last `cargo bench --bench overhead` run.

Reads criterion's estimates (the median of each case) from
`$CARGO_TARGET_DIR/criterion` (default `target/criterion`) and computes, per group, the
figures against the group's baseline measured in the same run.

    python3 scripts/bench-table.py [criterion-dir]
"""

import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")


def median(group, case):
    path = os.path.join(root, group, case, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except FileNotFoundError:
        return None


def fmt(ns):
    if ns is None:
        return "-"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} us"
    return f"{ns:.1f} ns"


# (group, baseline, units per run, unit name, cases)
GROUPS = [
    ("chain10", "hand", 10, "step",
     ["boxed", "flow_macro", "workflow_attr", "workflow_attr_direct_call",
      "flow_macro_observed", "workflow_attr_observed", "dagx", "sayiir"]),
    ("chain10_1us", "hand", 10, "step",
     ["flow_macro", "workflow_attr", "flow_macro_observed", "workflow_attr_observed"]),
    ("fanout100", "join_all", 100, "branch", ["try_join_all", "flow_map"]),
    ("map1000_c16", "buffer_unordered", 1000, "item", ["buffered", "flow_map"]),
    ("retry", "hand_loop", 1, "run", ["flow_macro", "workflow_attr", "backon_no_sleep"]),
    ("retry_timer", None, 1, "run", ["backon_tokio_sleep_zero_delay"]),
]

print("| group | case | median per run | per unit | added per unit vs baseline | ratio |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
for group, base, units, unit, cases in GROUPS:
    b = median(group, base) if base else None
    if base:
        print(f"| {group} | **{base}** (baseline) | {fmt(b)} | {fmt(b / units if b else None)} / {unit} | | 1.00x |")
    for case in cases:
        v = median(group, case)
        if v is None:
            continue
        added = f"{fmt((v - b) / units)} / {unit}" if b else ""
        ratio = f"{v / b:.2f}x" if b else ""
        print(f"| {group} | {case} | {fmt(v)} | {fmt(v / units)} / {unit} | {added} | {ratio} |")
