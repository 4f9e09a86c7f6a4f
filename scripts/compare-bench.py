#!/usr/bin/env python3
"""Compares two builds' `kvmem bench` runs point by point: DIR holds old-1, old-2, new-1, new-2
(each a `--out-dir` with bench.json). Prints each point's mean ratio, old and new, and a summary."""

from __future__ import annotations

import json
import statistics as st
import sys

Key = tuple[str, str, int]


def load(path: str) -> dict[Key, float]:
    with open(path) as f:
        points = json.load(f)["points"]
    return {(p["path"], p["pattern"], p["block_bytes"]): p["ratio"] for p in points}


def main(base: str) -> None:
    old = [load(f"{base}/old-{i}/bench.json") for i in (1, 2)]
    new = [load(f"{base}/new-{i}/bench.json") for i in (1, 2)]
    changes = []
    for key in old[0]:
        if key not in new[0]:
            continue
        o = st.mean(d[key] for d in old if key in d)
        n = st.mean(d[key] for d in new if key in d)
        changes.append(n / o - 1)
        path, pattern, size = key
        print(f"{path:36s} {pattern:10s} {size >> 10:6d}K old {o:.3f} new {n:.3f} {(n / o - 1) * 100:+.1f}%")
    within = sum(abs(c) <= 0.02 for c in changes)
    print(
        f"points {len(changes)}; mean change {st.mean(changes) * 100:+.2f}%; within 2%: {within}; "
        f"worst {min(changes) * 100:+.1f}% best {max(changes) * 100:+.1f}%"
    )


if __name__ == "__main__":
    main(sys.argv[1])
