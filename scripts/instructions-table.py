#!/usr/bin/env python3
"""Prints the instruction-count table of BENCHMARKS.md from gungraun's JSON output.

Reads the JSON lines written by `cargo bench --bench instructions -- --output-format=json`
(one object per benchmark; `scripts/bench-instructions.sh` saves them) and computes, per
group, the instructions each case adds per step (branch, item, run) over the group's
hand-written baseline, measured in the same run:

    added per unit = (case - baseline) / (RUNS * units per run)

RUNS is read from `benches/instructions.rs` (`const RUNS: u64 = ..`).

    python3 scripts/instructions-table.py instructions.json
"""

import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# group -> (unit, units per run, baseline (group, function))
GROUPS = {
    "chain10": ("step", 10, ("chain10", "hand_chain")),
    "step1": ("step", 1, ("step1", "hand_1_step")),
    "chain10_observed": ("step", 10, ("chain10", "hand_chain")),
    "retry": ("run", 1, ("retry", "hand_loop")),
    "map1000_c16": ("item", 1000, ("map1000_c16", "buffer_unordered_16")),
    "fanout100": ("branch", 100, ("fanout100", "join_all_100")),
}


def runs():
    with open(os.path.join(ROOT, "benches", "instructions.rs")) as f:
        m = re.search(r"const RUNS: u64 = ([0-9_]+);", f.read())
    return int(m.group(1).replace("_", ""))


def load(path):
    ir = {}
    order = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            d = json.loads(line)
            key = (d["group"], d["function_name"])
            total = d["profiles"][0]["data"]["total"]["metrics"]
            ir[key] = total["Ir"]["values"]["new"]
            order.append(key)
    return ir, order


def num(x, digits=0):
    return f"{x:,.{digits}f}"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    n_runs = runs()
    ir, order = load(sys.argv[1])
    print(f"Instructions (callgrind `Ir`) for {n_runs} runs of each case; per unit = / ({n_runs} x units per run).")
    print()
    print("| group | case | instructions | per run | per unit | added per unit vs baseline | ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for key in order:
        group, case = key
        unit, per_run, base_key = GROUPS.get(group, ("run", 1, None))
        v = ir[key]
        base = ir.get(base_key) if base_key else None
        per_unit = v / (n_runs * per_run)
        name = f"**{case}** (baseline)" if key == base_key else case
        if base is None or key == base_key:
            added, ratio = "", "1.00x" if key == base_key else ""
        else:
            added = f"{num((v - base) / (n_runs * per_run), 1)} / {unit}"
            ratio = f"{v / base:.2f}x"
        print(
            f"| {group} | {name} | {num(v)} | {num(v / n_runs, 1)} | "
            f"{num(per_unit, 1)} / {unit} | {added} | {ratio} |"
        )

    # The run's fixed cost and the cost of each further step, from the 1-step and 10-step runs.
    one = ir.get(("step1", "flow_macro_1_step"))
    one_hand = ir.get(("step1", "hand_1_step"))
    ten = ir.get(("chain10", "flow_macro"))
    ten_hand = ir.get(("chain10", "hand_chain"))
    if None not in (one, one_hand, ten, ten_hand):
        run1 = (one - one_hand) / n_runs
        run10 = (ten - ten_hand) / n_runs
        print()
        print(
            f"`flow!` adds {num(run1)} instructions to a 1-step run and {num(run10)} to a 10-step run: "
            f"about {num(run1 - (run10 - run1) / 9)} per run (fixed) plus {num((run10 - run1) / 9)} per further step."
        )
    boxed = ir.get(("chain10", "boxed_chain"))
    if None not in (boxed, ten, ten_hand):
        print(
            f"Boxed steps (DESIGN's reference) add {num((boxed - ten_hand) / (n_runs * 10), 1)} a step; "
            f"`flow!` adds {num((ten - ten_hand) / (n_runs * 10), 1)}."
        )


main()
