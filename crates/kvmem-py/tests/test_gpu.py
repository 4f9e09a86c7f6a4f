"""GPU tests (run on the GPU machine with KVMEM_GPU_TESTS=1): real torch KV caches in vLLM's
FlashAttention shapes for a Llama-3-8B geometry, CuPy arrays, and ordering with the engine's
CUDA stream."""

from __future__ import annotations

from pathlib import Path

import kvmem
import numpy as np
import pytest

pytestmark = pytest.mark.gpu

LAYERS, HEADS, HEAD, BS, BLOCKS = 32, 8, 128, 16, 1024  # Llama-3-8B, 16-token blocks, bf16


def torch_cache():  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    g = torch.Generator(device="cuda").manual_seed(0)
    kv = [
        torch.randint(-32768, 32767, (2, BLOCKS, BS, HEADS, HEAD), dtype=torch.int16, device="cuda", generator=g).view(
            torch.bfloat16
        )
        for _ in range(LAYERS)
    ]
    return torch, kv


def scattered(n: int = 256, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).choice(BLOCKS, n, replace=False).tolist()


@pytest.mark.parametrize("beside_compute", [False, True])
@pytest.mark.parametrize("tier", ["pinned", "disk"])
def test_torch_offload_and_back_byte_exact(tier: str, beside_compute: bool, tmp_path: Path) -> None:
    torch, kv = torch_cache()
    gpu = kvmem.Layout.from_tensors(kv, "flash_attn", device=0, dtype="bfloat16")
    assert gpu.tier == "device:0" and gpu.chunk_bytes == BS * HEADS * HEAD * 2
    t = kvmem.Tier.pinned(0) if tier == "pinned" else kvmem.Tier.disk(tmp_path)
    store = gpu.allocate_like(t, num_blocks=256)
    ids = scattered()
    engine = kvmem.Engine(beside_compute=beside_compute)
    stats = engine.copy(gpu, ids, store, list(range(256))).wait(timeout=120)
    assert stats.bytes == 256 * gpu.block_bytes
    back_kv = [torch.full_like(x, float("nan")) for x in kv]
    back = kvmem.Layout.from_tensors(back_kv, "flash_attn")
    engine.copy(store, list(range(256)), back, torch.tensor(ids)).wait(timeout=120)
    idx = torch.tensor(ids, device="cuda")
    for a, b in zip(kv, back_kv, strict=True):
        assert torch.equal(a[:, idx].view(torch.int16), b[:, idx].view(torch.int16))


def test_cupy_arrays_round_trip() -> None:
    cp = pytest.importorskip("cupy")
    kv = [cp.random.randint(0, 255, (BLOCKS, 2, BS, HEADS, HEAD), dtype=cp.uint8) for _ in range(4)]
    gpu = kvmem.Layout.from_tensors(kv, "flashinfer")
    pinned = gpu.allocate_like(kvmem.Tier.pinned(0), num_blocks=64)
    ids = scattered(64)
    engine = kvmem.Engine()
    engine.copy(gpu, ids, pinned, list(range(64))).wait(timeout=60)
    back = [cp.zeros_like(x) for x in kv]
    engine.copy(pinned, list(range(64)), kvmem.Layout.from_tensors(back, "flashinfer"), ids).wait(timeout=60)
    sel = cp.asarray(ids)
    assert all(bool((a[sel] == b[sel]).all()) for a, b in zip(kv, back, strict=True))


def test_wrong_device_is_a_value_error() -> None:
    torch, kv = torch_cache()
    with pytest.raises(ValueError):
        kvmem.Layout.from_tensors(kv[:1] + [kv[1].cpu()], "flash_attn")
    with pytest.raises(ValueError):
        kvmem.Layout.from_tensors(kv, "flash_attn", device=1)


def _race(use_stream: bool) -> int:
    """A torch kernel writes the KV on a side stream; kvmem offloads right after, ordered with
    that stream or not. Returns the number of (layer, k or v, block) chunks whose offloaded
    bytes differ from what the kernel wrote."""
    torch, kv = torch_cache()
    gpu = kvmem.Layout.from_tensors(kv, "flash_attn")
    pinned = gpu.allocate_like(kvmem.Tier.pinned(0), num_blocks=256)
    ids = scattered()
    engine = kvmem.Engine()
    # A first copy loads the engine's copy kernel; CUDA loads kernels lazily, and loading one may
    # synchronize the whole context, which would order even an unordered copy after the writes.
    engine.copy(gpu, ids, pinned, list(range(256))).wait(timeout=60)
    side = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        # The writes wait behind a spin of about 50 ms on the side stream, so that an offload
        # not ordered with it reads every block before its write: the check cannot pass by luck.
        torch.cuda._sleep(100_000_000)
        for layer in kv:  # zero_, not mul_(0): the random bf16 bits hold NaNs and infinities
            layer.zero_().add_(7)
    h = engine.copy(gpu, ids, pinned, list(range(256)), stream=side if use_stream else None)
    h.wait(timeout=60)
    torch.cuda.synchronize()
    expect = torch.full((BS, HEADS, HEAD), 7, dtype=torch.bfloat16).view(torch.uint8).numpy()
    bad = 0
    for region in pinned.regions():  # every layer, k and v, every block
        view = np.asarray(region).reshape(2, 256, -1)
        bad += int((view != expect.reshape(1, 1, -1)).any(axis=2).sum())
    return bad


def test_stream_orders_the_offload_after_the_engine_kernel() -> None:
    assert _race(use_stream=True) == 0


def test_without_stream_the_race_is_caught() -> None:
    """Shows that the check above can fail: unordered, kvmem reads blocks before the kernel wrote them."""
    assert _race(use_stream=False) > 0


def test_wait_on_orders_the_engine_after_the_load() -> None:
    torch, kv = torch_cache()
    gpu = kvmem.Layout.from_tensors(kv, "flash_attn")
    pinned = gpu.allocate_like(kvmem.Tier.pinned(0), num_blocks=256)
    for region in pinned.regions():
        np.asarray(region)[...] = 0x3F  # bf16 0x3F3F
    engine = kvmem.Engine()
    ids = scattered()
    side = torch.cuda.Stream()
    h = engine.copy(pinned, list(range(256)), gpu, ids)
    h.wait_on(side)
    idx = torch.tensor(ids, device="cuda")
    with torch.cuda.stream(side):
        sums = [layer[:, idx].view(torch.int16).to(torch.int64).sum() for layer in kv]
    side.synchronize()
    want = 0x3F3F * 2 * 256 * BS * HEADS * HEAD
    assert all(int(s) == want for s in sums)
