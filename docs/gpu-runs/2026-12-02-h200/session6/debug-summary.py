#!/usr/bin/env python3
"""Medians of the GPU submission timings in a `RUST_LOG=kvmem=debug kvmem bench` log (xz or plain):
per run of transfers with the same method and copy count, the method resolution (call B: the
list's one pass included), the whole enqueue, the staged method's first slot, and the planning
time and page faults the bench logged (call B only)."""

import lzma
import re
import statistics as st
import sys


def med(xs: list[float]) -> str:
    return f"{st.median(xs):.0f}" if xs else "-"


for path in sys.argv[1:]:
    opener = lzma.open if path.endswith(".xz") else open
    rows: list[tuple] = []
    first: float | None = None
    plans: list[tuple[float, int]] = []
    with opener(path, "rt") as f:
        for line in f:
            m = re.search(r"plan_us=([\d.]+) page_faults=(\d+)", line)
            if m:
                plans.append((float(m[1]), int(m[2])))
                continue
            m = re.search(r"first_slot_us=([\d.]+)", line)
            if m:
                first = float(m[1])
                continue
            m = re.search(r"method=(\w+) copies=(\d+) resolve_us=([\d.]+) enqueue_us=([\d.]+)", line)
            if m and int(m[2]) > 1:
                rows.append((m[1], int(m[2]), float(m[3]), float(m[4]), first, plans[-1] if plans else None))
            if m:
                first = None
    groups: list[tuple[tuple, list[tuple]]] = []
    for r in rows:
        if groups and groups[-1][0] == r[:2]:
            groups[-1][1].append(r)
        else:
            groups.append((r[:2], [r]))
    print("==", path)
    for (method, copies), g in groups:
        print(
            f"{method:7} {copies:6} copies, {len(g)} transfers: resolve {med([r[2] for r in g])} us, "
            f"enqueue {med([r[3] for r in g])} us, first slot {med([r[4] for r in g if r[4]])} us, "
            f"plan {med([r[5][0] for r in g if r[5]])} us, page faults {[r[5][1] for r in g if r[5]]}"
        )
