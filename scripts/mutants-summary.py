#!/usr/bin/env python3
"""Summarises one or more cargo-mutants output directories as Markdown (for MUTANTS.md).

    python3 scripts/mutants-summary.py mutants.out [more/mutants.out ..]

Prints, per source file and in total, how many mutants were caught, missed, unviable or timed
out, the wall time of the runs, and the list of missed (surviving) mutants.
"""

import collections
import json
import os
import sys
from datetime import datetime


def load(d):
    path = os.path.join(d, "outcomes.json")
    with open(path) as f:
        return json.load(f)


def when(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


KINDS = {
    "CaughtMutant": "caught",
    "MissedMutant": "missed",
    "Unviable": "unviable",
    "Timeout": "timeout",
}


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    per_file = collections.defaultdict(collections.Counter)
    missed = []
    seconds = 0.0
    mutant_seconds = []
    for d in sys.argv[1:]:
        o = load(d)
        # An interrupted run has no end time: count its mutants' own times instead.
        if o.get("end_time"):
            seconds += (when(o["end_time"]) - when(o["start_time"])).total_seconds()
        else:
            seconds += sum(
                p["duration"] for out in o["outcomes"] for p in out.get("phase_results", [])
            )
        for out in o["outcomes"]:
            sc = out["scenario"]
            if not isinstance(sc, dict) or "Mutant" not in sc:
                continue
            m = sc["Mutant"]
            kind = KINDS.get(out["summary"], out["summary"])
            per_file[m["file"]][kind] += 1
            mutant_seconds.append(sum(p["duration"] for p in out["phase_results"]))
            if kind == "missed":
                missed.append(f'{m["file"]}:{m["span"]["start"]["line"]}:{m["span"]["start"]["column"]}: {m["name"].split(": ", 1)[-1] if ": " in m["name"] else m["name"]}')
    cols = ["caught", "missed", "unviable", "timeout"]
    print("| file | mutants | " + " | ".join(cols) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in cols) + " |")
    total = collections.Counter()
    for f in sorted(per_file):
        c = per_file[f]
        total.update(c)
        print(f"| `{f}` | {sum(c.values())} | " + " | ".join(str(c[k]) for k in cols) + " |")
    print(f"| **total** | {sum(total.values())} | " + " | ".join(str(total[k]) for k in cols) + " |")
    viable = total["caught"] + total["missed"] + total["timeout"]
    if viable:
        print()
        print(f"Score: {total['caught'] + total['timeout']} of {viable} viable mutants caught "
              f"({100 * (total['caught'] + total['timeout']) / viable:.0f}%).")
    if mutant_seconds:
        mutant_seconds.sort()
        print(f"Wall time {seconds / 60:.1f} min; per mutant (build + test) median "
              f"{mutant_seconds[len(mutant_seconds) // 2]:.1f} s.")
    print()
    print(f"Missed ({len(missed)}):")
    print()
    for m in missed:
        print(f"- `{m}`")


main()
