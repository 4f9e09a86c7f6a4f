"""kvmem from Python against the plain torch way, on the GPU machine (Llama-3-8B geometry: 32
layers, 8 KV heads, head 128, bf16, 16-token blocks; vLLM FlashAttention layout).

- 256 scattered blocks between the GPU cache and a contiguous pinned buffer, each direction:
  kvmem vs torch (index_select into a GPU staging tensor + one copy to pinned; one copy to a GPU
  staging tensor + index_copy_ back), both as ratios to one large pinned<->GPU copy of the same
  bytes in this process;
- Python overhead: a 4096-block copy through kvmem.Engine.copy, per-call time and bandwidth, to
  compare with the Rust benchmark (`kvmem bench`) of the same shape.

Usage: python bench/bench_gpu.py [--iters N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import kvmem

LAYERS, HEADS, HEAD, BS = 32, 8, 128, 16


def timed(fn, iters: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=8192)
    ap.add_argument("--json")
    a = ap.parse_args()
    kv = [torch.empty((2, a.blocks, BS, HEADS, HEAD), dtype=torch.bfloat16, device="cuda") for _ in range(LAYERS)]
    gpu = kvmem.Layout.from_tensors(kv, "flash_attn")
    engine = kvmem.Engine()
    ids = np.random.default_rng(0).choice(a.blocks, 256, replace=False).astype(np.int64)
    idx = torch.from_numpy(ids).cuda()
    n = len(ids)
    pinned = gpu.allocate_like(kvmem.Tier.pinned(0), num_blocks=n)
    nbytes = n * gpu.block_bytes
    big_host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    big_dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    one_d2h = timed(lambda: big_host.copy_(big_dev, non_blocking=True), a.iters)
    one_h2d = timed(lambda: big_dev.copy_(big_host, non_blocking=True), a.iters)
    dst_ids = list(range(n))
    k_d2h = timed(lambda: engine.copy(gpu, ids, pinned, dst_ids).wait(), a.iters)
    k_h2d = timed(lambda: engine.copy(pinned, dst_ids, gpu, ids).wait(), a.iters)
    stage = [torch.empty((2, n, BS, HEADS, HEAD), dtype=torch.bfloat16, device="cuda") for _ in range(LAYERS)]
    host = [torch.empty_like(s, device="cpu").pin_memory() for s in stage]

    def torch_d2h() -> None:
        for layer, s, h in zip(kv, stage, host):
            torch.index_select(layer, 1, idx, out=s)
            h.copy_(s, non_blocking=True)

    def torch_h2d() -> None:
        for layer, s, h in zip(kv, stage, host):
            s.copy_(h, non_blocking=True)
            layer.index_copy_(1, idx, s)

    t_d2h = timed(torch_d2h, a.iters)
    t_h2d = timed(torch_h2d, a.iters)
    # Python overhead: 4096 blocks, per-call latency of the submit and the bandwidth.
    big = min(4096, a.blocks)
    pinned_big = gpu.allocate_like(kvmem.Tier.pinned(0), num_blocks=big)
    ids_big = np.random.default_rng(1).choice(a.blocks, big, replace=False)
    t_big = timed(lambda: engine.copy(gpu, ids_big, pinned_big, np.arange(big)).wait(), a.iters)
    t0 = time.perf_counter()
    handles = [engine.copy(gpu, ids_big, pinned_big, np.arange(big)) for _ in range(10)]
    submit = (time.perf_counter() - t0) / 10
    for h in handles:
        h.wait()
    res = {
        "device": torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d"),
        "bytes_256_blocks": nbytes,
        "one_copy_d2h_GBps": nbytes / one_d2h / 1e9,
        "one_copy_h2d_GBps": nbytes / one_h2d / 1e9,
        "kvmem_d2h_ratio": one_d2h / k_d2h,
        "kvmem_h2d_ratio": one_h2d / k_h2d,
        "torch_d2h_ratio": one_d2h / t_d2h,
        "torch_h2d_ratio": one_h2d / t_h2d,
        "kvmem_4096_blocks_s": t_big,
        "kvmem_4096_blocks_GBps": big * gpu.block_bytes / t_big / 1e9,
        "kvmem_submit_us_per_call": submit * 1e6,
    }
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
