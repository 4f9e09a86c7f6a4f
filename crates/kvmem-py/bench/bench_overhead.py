"""The Python path against the Rust path, in one process: what ``Engine.copy`` + ``Handle.wait``
cost per call more than the same copy submitted and waited for by the Rust engine alone
(``Engine._rust_copy_timings``, ids converted once outside its timing).

``measure`` is shared with ``bench_gpu.py`` (its ``overhead`` point, GPU -> pinned); run as a
script, this file measures the same shape over plain host memory, where no GPU is needed: a
layer-separate cache (32 layers, k/v), ``--blocks`` scattered blocks into a contiguous layout of
the same format, with small chunks so that the planning of the 262,144 chunks of 4096 blocks
dominates the submission as the enqueueing does on the GPU.

Like against like: both paths plan and submit the same copy on the caller's thread and wait for
it, each call starting right after the previous copy has finished; the Rust path keeps the
copy's end event until the copy has finished (as ``Handle`` does). What the Python path does
more per call is reading the two id arrays and checking the arguments (the wrapper), the GIL
released and taken back, and building the ``Handle``. ``wrapper_us_after_copy`` times that
wrapper alone (``_rust_copy_timings`` with no run: ids converted, layouts checked, nothing
submitted) right after a finished copy, when the copy has left the caches cold, and
``wrapper_us_hot`` the same call repeated at once: if the extra submission time is about
``wrapper_us_after_copy``, the gap is the wrapper's own work on cold caches. The same split
timed inside ``Engine.copy``'s own path (``Engine._copy_timed``): ``python_in_call_wrapper_us``
(ids read, arguments checked) and ``python_in_call_submit_us`` (the submission), to set against
``rust_submit_us``: a submission slower there than in the Rust loop would mean the process is
in another state when the Python path submits, not that the wrapper costs more; and
``python_in_call_outside_us``, the rest of the call (the call itself and its arguments, taking
the GIL back and building the ``Handle`` after the submission has evicted the caches in turn). Minor page faults
per call (``getrusage``) tell whether either path maps memory afresh per call.

Usage: python bench/bench_overhead.py [--blocks N] [--rounds R] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from typing import Any

import kvmem
import numpy as np


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(
    engine: kvmem.Engine,
    src: kvmem.Layout,
    ids: np.ndarray,
    dst: kvmem.Layout,
    dst_ids: np.ndarray,
    rounds: int,
    reps: int = 5,
) -> dict[str, Any]:
    """Per round, ``reps`` copies through ``Engine.copy`` + ``Handle.wait``, ``reps`` through
    ``Engine._copy_timed`` (the same path, timed inside: wrapper, then submission), ``reps``
    through the Rust engine in one call, ``reps`` through it one call per run, and one probe of
    the wrapper alone after a copy; alternating so that drift hits every path. Medians."""
    engine.copy(src, ids, dst, dst_ids).wait()  # warm-up (plans, staging, threads)
    engine._rust_copy_timings(src, ids, dst, dst_ids, 1)
    py_submit: list[float] = []
    py_total: list[float] = []
    rust_submit: list[float] = []
    rust_total: list[float] = []
    single: list[float] = []
    in_wrapper: list[float] = []
    in_submit: list[float] = []
    in_outside: list[float] = []
    wrap_cold: list[float] = []
    wrap_hot: list[float] = []
    py_faults: list[float] = []
    rust_faults: list[float] = []
    for _ in range(rounds):
        f0 = _minor_faults()
        for _ in range(reps):
            t0 = time.perf_counter()
            h = engine.copy(src, ids, dst, dst_ids)
            t1 = time.perf_counter()
            h.wait()
            t2 = time.perf_counter()
            del h  # dropped outside the timing, as the Rust loop drops its handle after its own
            py_submit.append(t1 - t0)
            py_total.append(t2 - t0)
        py_faults.append((_minor_faults() - f0) / reps)
        # The same calls timed inside Rust: the wrapper's share, and the submission itself.
        for _ in range(reps):
            t0 = time.perf_counter()
            h, wrapper, submit = engine._copy_timed(src, ids, dst, dst_ids)
            t1 = time.perf_counter()
            in_outside.append(t1 - t0 - wrapper - submit)
            h.wait()
            del h
            in_wrapper.append(wrapper)
            in_submit.append(submit)
        f0 = _minor_faults()
        for sub, tot in engine._rust_copy_timings(src, ids, dst, dst_ids, reps):
            rust_submit.append(sub)
            rust_total.append(tot)
        rust_faults.append((_minor_faults() - f0) / reps)
        # The Rust path entered once per run from Python: if this is as slow as the Python path,
        # the difference is the state the process is in between calls, not the Python wrapper.
        for _ in range(reps):
            single.append(engine._rust_copy_timings(src, ids, dst, dst_ids, 1)[0][0])
        # The wrapper alone, right after a finished copy and then again at once.
        engine._rust_copy_timings(src, ids, dst, dst_ids, 1)
        t0 = time.perf_counter()
        engine._rust_copy_timings(src, ids, dst, dst_ids, 0)
        t1 = time.perf_counter()
        engine._rust_copy_timings(src, ids, dst, dst_ids, 0)
        t2 = time.perf_counter()
        wrap_cold.append(t1 - t0)
        wrap_hot.append(t2 - t1)
    med = statistics.median
    nbytes = len(ids) * src.block_bytes
    return {
        "blocks": len(ids),
        "chunk_bytes": src.chunk_bytes,
        "chunks": len(ids) * src.num_layers * src.outer_dim,
        "bytes": nbytes,
        "runs_each": len(py_total),
        "python_submit_us": med(py_submit) * 1e6,
        "rust_submit_us": med(rust_submit) * 1e6,
        "rust_submit_us_one_run_per_call": med(single) * 1e6,
        "python_extra_us_per_call": (med(py_total) - med(rust_total)) * 1e6,
        "python_extra_submit_us": (med(py_submit) - med(rust_submit)) * 1e6,
        "python_in_call_wrapper_us": med(in_wrapper) * 1e6,
        "python_in_call_submit_us": med(in_submit) * 1e6,
        "python_in_call_outside_us": med(in_outside) * 1e6,
        "wrapper_us_after_copy": med(wrap_cold) * 1e6,
        "wrapper_us_hot": med(wrap_hot) * 1e6,
        "python_minor_faults_per_call": med(py_faults),
        "rust_minor_faults_per_call": med(rust_faults),
        "python_GiBps": nbytes / med(py_total) / 2**30,
        "rust_GiBps": nbytes / med(rust_total) / 2**30,
        "python_to_rust_bandwidth": med(rust_total) / med(py_total),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=4096, help="blocks per copy")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--head-dim", type=int, default=64, help="bytes per chunk (uint8, 1 token, 1 head)")
    p.add_argument("--json", help="write the result here")
    a = p.parse_args()
    n = a.blocks
    src = kvmem.Layout.allocate(
        kvmem.Tier.host(),
        num_blocks=2 * n,
        num_layers=32,
        block_size=1,
        dtype="uint8",
        heads=1,
        head_dim=a.head_dim,
    )
    dst = src.allocate_like(kvmem.Tier.host(), num_blocks=n)
    for r in src.regions():
        np.asarray(r)[:] = np.random.default_rng(1).integers(0, 256, len(r), dtype=np.uint8)
    ids = np.random.default_rng(2).choice(2 * n, n, replace=False).astype(np.int64)
    dst_ids = np.arange(n, dtype=np.int64)
    res = measure(kvmem.Engine(), src, ids, dst, dst_ids, a.rounds)
    # The bytes of the last copy, block by block.
    for s, d in zip(src.regions(), dst.regions(), strict=True):
        want = np.asarray(s).reshape(2, 2 * n, -1)[:, ids]
        if not np.array_equal(np.asarray(d).reshape(2, n, -1), want):
            raise SystemExit("the copy differs from the source blocks")
    res["verified"] = True
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
