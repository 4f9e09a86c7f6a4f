"""kvmem from Python against the plain torch way, on the GPU machine (Llama-3-8B geometry: 32
layers, 8 KV heads, head 128, bf16, 16-token blocks; vLLM FlashAttention layout).

- 256 scattered blocks between the GPU cache and a contiguous pinned buffer, each direction:
  kvmem vs torch (index_select into a GPU staging tensor + one copy to pinned; one copy to a GPU
  staging tensor + index_copy_ back), both as ratios to one large pinned<->GPU copy of the same
  bytes in this process;
- Python overhead: a 4096-block copy through kvmem.Engine.copy, per-call time and bandwidth, to
  compare with the Rust benchmark (`kvmem bench`) of the same shape;
- the points of `kvmem bench --preset vllm` (``vllm_points``): 16 and 32 KiB chunks (16-token
  blocks of 4 or 8 heads), as many blocks as that bench moves (1 GiB per transfer, at most 1024
  blocks), every block of the GPU cache in a random order: gather (GPU cache -> one contiguous
  pinned run, the offload) and scatter (the reverse, the onboard), by kvmem (host side
  ``cross_layer``, as in `kvmem bench`) and by plain torch (``index_select`` into a GPU staging
  tensor + one copy per layer; one copy + ``index_copy_`` back), each checked byte for byte once
  and timed as the median of ``--iters`` runs against the median of one large pinned<->GPU copy
  of the same bytes.

Usage: python bench/bench_gpu.py [--iters N] [--json out.json] [--vllm-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import kvmem
import numpy as np
import torch
from bench_overhead import measure

LAYERS, HEADS, HEAD, BS = 32, 8, 128, 16


def run_times(fn: Callable[[], Any], iters: int) -> list[float]:
    """Seconds of each of ``iters`` runs of ``fn`` (synchronized), after one untimed run."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def timed(fn: Callable[[], Any], iters: int) -> float:
    """Best seconds of ``fn`` over ``iters`` runs."""
    return min(run_times(fn, iters))


def median_time(fn: Callable[[], Any], iters: int) -> float:
    """Median seconds of ``fn`` over ``iters`` runs."""
    return statistics.median(run_times(fn, iters))


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (bf16 NaN payloads compare unequal as numbers)."""
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


Tensors = list[torch.Tensor]


def torch_gather(kv: Tensors, idx: torch.Tensor, stage: Tensors, host: Tensors) -> None:
    """torch's own offload: per layer, gather the blocks ``idx`` into a GPU staging tensor, then
    copy it to that layer's pinned host tensor."""
    for layer, st, h in zip(kv, stage, host, strict=True):
        torch.index_select(layer, 1, idx, out=st)
        h.copy_(st, non_blocking=True)


def torch_scatter(kv: Tensors, idx: torch.Tensor, stage: Tensors, host: Tensors) -> None:
    """The reverse of `torch_gather`: host tensors to GPU staging, then into blocks ``idx``."""
    for layer, st, h in zip(kv, stage, host, strict=True):
        st.copy_(h, non_blocking=True)
        layer.index_copy_(1, idx, st)


def one_copy_times(nbytes: int, iters: int, measure: Callable[[Callable[[], Any], int], float]) -> tuple[float, float]:
    """Seconds of one ``nbytes`` pinned copy device-to-host and host-to-device, by ``measure``."""
    big_host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    big_dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    d2h = measure(lambda: big_host.copy_(big_dev, non_blocking=True), iters)
    h2d = measure(lambda: big_dev.copy_(big_host, non_blocking=True), iters)
    return d2h, h2d


def vllm_point(engine: kvmem.Engine, chunk: int, iters: int, seed: int) -> dict[str, Any]:
    """One gather and one scatter point of `kvmem bench --preset vllm` at ``chunk`` bytes."""
    heads = chunk // (BS * HEAD * 2)
    n = min((1 << 30) // (LAYERS * 2) // chunk, 1024)
    nbytes = n * LAYERS * 2 * chunk
    shape = (2, n, BS, heads, HEAD)
    kv = [torch.empty(shape, dtype=torch.bfloat16, device="cuda") for _ in range(LAYERS)]
    for t in kv:
        t.view(torch.uint8).random_()
    gpu = kvmem.Layout.from_tensors(kv, "flash_attn")
    # kvmem's host side: one contiguous pinned run, block-major (all layers of a block together).
    host = torch.empty((n, LAYERS, 2, BS, heads, HEAD), dtype=torch.bfloat16, pin_memory=True)
    pinned = kvmem.Layout.from_tensors(host, "cross_layer")
    ids = np.random.default_rng(seed).permutation(n).astype(np.int64)
    idx = torch.from_numpy(ids).cuda()
    run = list(range(n))
    # torch's host side: one pinned tensor per layer, and one GPU staging tensor per layer.
    stage = [torch.empty(shape, dtype=torch.bfloat16, device="cuda") for _ in range(LAYERS)]
    host_t = [torch.empty(shape, dtype=torch.bfloat16, pin_memory=True) for _ in range(LAYERS)]

    def kvmem_gather() -> None:
        engine.copy(gpu, ids, pinned, run).wait()

    def kvmem_scatter() -> None:
        engine.copy(pinned, run, gpu, ids).wait()

    moves: dict[str, Callable[[], None]] = {
        "kvmem_gather": kvmem_gather,
        "torch_gather": lambda: torch_gather(kv, idx, stage, host_t),
        "kvmem_scatter": kvmem_scatter,
        "torch_scatter": lambda: torch_scatter(kv, idx, stage, host_t),
    }

    def gathered_ok(h_of: Callable[[int], torch.Tensor]) -> bool:
        """Host block k of every layer holds GPU block ids[k], byte for byte."""
        return all(same_bytes(h_of(i).cuda(), kv[i].index_select(1, idx)) for i in range(LAYERS))

    # Checks: poison the destination, move once, compare every byte. Scatters go from what was
    # gathered (random bytes) into a poisoned GPU cache.
    def kvmem_host(i: int) -> torch.Tensor:
        return host[:, i].transpose(0, 1)

    def torch_host(i: int) -> torch.Tensor:
        return host_t[i]

    checks: dict[str, bool] = {}
    for name, poisoned, host_of in [
        ("kvmem_gather", [host], kvmem_host),
        ("torch_gather", host_t, torch_host),
        ("kvmem_scatter", kv, kvmem_host),
        ("torch_scatter", kv, torch_host),
    ]:
        for p in poisoned:
            p.view(torch.uint8).fill_(0xA5)
        moves[name]()
        torch.cuda.synchronize()
        checks[name] = gathered_ok(host_of)
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise SystemExit(f"vllm point {chunk} B chunks: wrong bytes after {', '.join(bad)}")

    one_d2h, one_h2d = one_copy_times(nbytes, iters, median_time)
    t = {name: median_time(move, iters) for name, move in moves.items()}
    res: dict[str, Any] = {
        "chunk_bytes": chunk,
        "heads": heads,
        "blocks": n,
        "chunks": n * LAYERS * 2,
        "bytes": nbytes,
        "verified": sorted(checks),
        "one_copy_d2h_GiBps": nbytes / one_d2h / 2**30,
        "one_copy_h2d_GiBps": nbytes / one_h2d / 2**30,
    }
    for k, secs in t.items():
        one = one_d2h if k.endswith("gather") else one_h2d
        res[f"{k}_GiBps"] = nbytes / secs / 2**30
        res[f"{k}_ratio"] = one / secs
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=8192)
    ap.add_argument("--json")
    ap.add_argument("--vllm-only", action="store_true", help="only the `kvmem bench --preset vllm` points")
    ap.add_argument("--vllm-chunks", default="16384,32768", help="chunk bytes of the vllm points")
    a = ap.parse_args()
    engine = kvmem.Engine()
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d")}
    res["vllm_points"] = []
    for i, c in enumerate(a.vllm_chunks.split(",")):
        res["vllm_points"].append(vllm_point(engine, int(c), a.iters, seed=i))
        torch.cuda.empty_cache()  # the point's tensors are gone once it returns
    if not a.vllm_only:
        res.update(legacy(a, engine))
        torch.cuda.empty_cache()
        res["overhead"] = overhead(engine, a.blocks, rounds=a.iters)
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


def legacy(a: argparse.Namespace, engine: kvmem.Engine) -> dict[str, Any]:
    """256 scattered blocks of 32 KiB chunks out of ``--blocks``, best of ``--iters``; the Python
    overhead of a 4096-block copy."""
    kv = [torch.empty((2, a.blocks, BS, HEADS, HEAD), dtype=torch.bfloat16, device="cuda") for _ in range(LAYERS)]
    gpu = kvmem.Layout.from_tensors(kv, "flash_attn")
    ids = np.random.default_rng(0).choice(a.blocks, 256, replace=False).astype(np.int64)
    idx = torch.from_numpy(ids).cuda()
    n = len(ids)
    pinned = gpu.allocate_like(kvmem.Tier.pinned(0), num_blocks=n)
    nbytes = n * gpu.block_bytes
    one_d2h, one_h2d = one_copy_times(nbytes, a.iters, timed)
    dst_ids = list(range(n))
    k_d2h = timed(lambda: engine.copy(gpu, ids, pinned, dst_ids).wait(), a.iters)
    k_h2d = timed(lambda: engine.copy(pinned, dst_ids, gpu, ids).wait(), a.iters)
    stage = [torch.empty((2, n, BS, HEADS, HEAD), dtype=torch.bfloat16, device="cuda") for _ in range(LAYERS)]
    host = [torch.empty_like(s, device="cpu").pin_memory() for s in stage]
    t_d2h = timed(lambda: torch_gather(kv, idx, stage, host), a.iters)
    t_h2d = timed(lambda: torch_scatter(kv, idx, stage, host), a.iters)
    return {
        "bytes_256_blocks": nbytes,
        "one_copy_d2h_GBps": nbytes / one_d2h / 1e9,
        "one_copy_h2d_GBps": nbytes / one_h2d / 1e9,
        "kvmem_d2h_ratio": one_d2h / k_d2h,
        "kvmem_h2d_ratio": one_h2d / k_h2d,
        "torch_d2h_ratio": one_d2h / t_d2h,
        "torch_h2d_ratio": one_h2d / t_h2d,
    }


def overhead(engine: kvmem.Engine, blocks: int, rounds: int, n: int = 4096) -> dict[str, Any]:
    """The Python path against the Rust path, in this process: ``n`` scattered blocks of a
    layer-separate GPU cache with 16 KiB chunks (4 KV heads) into a contiguous pinned layout,
    measured by ``bench_overhead.measure`` (its docstring says what is compared with what:
    ``Engine.copy`` + ``Handle.wait`` against ``Engine._rust_copy_timings``, alternating, and
    the wrapper alone right after a copy, which tells whether the extra time is the wrapper's
    own work on the caches the copy left cold); then the bytes of the last copy are checked."""
    heads = 4
    kv = [torch.empty((2, blocks, BS, heads, HEAD), dtype=torch.bfloat16, device="cuda") for _ in range(LAYERS)]
    for layer in kv:
        layer.view(torch.int16).random_()
    gpu = kvmem.Layout.from_tensors(kv, "flash_attn")
    n = min(n, blocks)
    ids = np.random.default_rng(2).choice(blocks, n, replace=False).astype(np.int64)
    dst_ids = np.arange(n, dtype=np.int64)
    pinned = gpu.allocate_like(kvmem.Tier.pinned(0), num_blocks=n)
    res = measure(engine, gpu, ids, pinned, dst_ids, rounds)
    # The bytes of the last copy, block by block, against the GPU cache.
    idx = torch.from_numpy(ids).cuda()
    host = [np.asarray(r) for r in pinned.regions()]
    if len(host) != LAYERS or not all(
        np.array_equal(
            h.reshape(2, n, -1),
            layer.index_select(1, idx).view(torch.uint8).reshape(2, n, -1).cpu().numpy(),
        )
        for h, layer in zip(host, kv, strict=True)
    ):
        raise SystemExit("overhead point: the pinned copy differs from the GPU cache")
    res["verified"] = True
    return res


if __name__ == "__main__":
    main()
