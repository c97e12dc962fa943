#!/usr/bin/env python3
"""Merges the rounds of one scenario (run.sh's hf: every tool once per round) into one file in
hyperfine's JSON form, which report.py reads, and prints each tool's median.

    merge_rounds.py RAW_DIR SCENARIO ROUNDS

Reads RAW_DIR/rounds/SCENARIO-1.json ... SCENARIO-ROUNDS.json (round 0, the warm-up, is left
out) and writes RAW_DIR/SCENARIO.json."""

import json
import os
import statistics
import sys

raw, scen, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
# Command name -> times, in the order they were queued (round 0 ran them in that order).
with open(os.path.join(raw, "rounds", f"{scen}-0.json")) as f:
    times = {result["command"]: [] for result in json.load(f)["results"]}
for r in range(1, rounds + 1):
    with open(os.path.join(raw, "rounds", f"{scen}-{r}.json")) as f:
        for result in json.load(f)["results"]:
            times[result["command"]].extend(result["times"])
results = [
    {
        "command": name,
        "times": t,
        "median": statistics.median(t),
        "mean": statistics.fmean(t),
        "min": min(t),
        "max": max(t),
    }
    for name, t in times.items()
]
with open(os.path.join(raw, f"{scen}.json"), "w") as f:
    json.dump({"results": results}, f, indent=1)
for r in results:
    print(f"  {r['command']:<24} median {r['median']:.3f} s  (min {r['min']:.3f}, "
          f"max {r['max']:.3f}, {len(r['times'])} runs)")
