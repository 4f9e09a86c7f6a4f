"""kvmem.BlockCache from Python on host memory and disk: random blocks stored, evicted to disk,
loaded back into a poisoned layout and compared byte for byte; bad input is a Python exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kvmem
import numpy as np
import pytest
from kvref import make

LAYERS, BS, HEADS, HD = 3, 16, 2, 64  # 24 KiB blocks: whole pages, as the disk tier needs


def layout(kv: Any) -> kvmem.Layout:
    return kvmem.Layout.from_tensors(kv, "flash_attn")


def block(kv: Any, b: int) -> bytes:
    return b"".join(t[:, b].tobytes() for t in kv)


def disk_backed(tmp_path: Path, seed: int) -> tuple[list[Any], list[Any], kvmem.BlockCache]:
    """8 random source blocks, 8 poisoned destination blocks, and a cache over the source with
    4 host slots and 16 on disk under `tmp_path`."""
    src_kv = make("flash_attn", 8, LAYERS, BS, HEADS, HD, np.random.default_rng(seed))
    dst_kv = [np.full_like(t, 0xA5) for t in src_kv]
    cache = kvmem.BlockCache(layout(src_kv), host_blocks=4, disk_dir=tmp_path / "disk", disk_blocks=16)
    return src_kv, dst_kv, cache


def test_store_evict_to_disk_and_load_back_byte_exact(tmp_path: Path) -> None:
    src_kv, dst_kv, cache = disk_backed(tmp_path, 11)
    src, dst = layout(src_kv), layout(dst_kv)
    assert cache.block_bytes == LAYERS * 2 * BS * HEADS * HD * 2
    keys = [(1 << 100) + 3 * i for i in range(8)]
    assert cache.store(keys[:4], src, [0, 1, 2, 3])["stored"] == 4
    # Room for the next four: the first four are written back to disk.
    r = cache.store(keys[4:], src, np.arange(4, 8))
    assert (r["stored"], r["written_to_disk"]) == (4, 4)
    assert cache.lookup(keys) == (8, 4, 4), "0-3 only on disk, 4-7 in host memory"
    assert all(cache.contains(k) for k in keys)
    first = cache.load(keys[:4], dst, [7, 6, 5, 4])
    assert first["from_disk"] == 4 and not first["missing"] and not first["corrupt"]
    second = cache.load(keys[4:], dst, [3, 2, 1, 0])
    assert second["from_host"] + second["from_disk"] == 4, second
    for i in range(8):
        assert block(dst_kv, 7 - i) == block(src_kv, i), f"block of key {i}"
    assert cache.remove([keys[0], 12345]) == 1
    assert not cache.contains(keys[0])
    assert cache.load([keys[0]], dst, [0])["missing"] == [keys[0]]
    assert cache.lookup(keys) == (0, 0, 0)


def test_prefetch_brings_disk_blocks_into_host_memory(tmp_path: Path) -> None:
    src_kv, dst_kv, cache = disk_backed(tmp_path, 12)
    src, dst = layout(src_kv), layout(dst_kv)
    keys = [(7 << 90) + i for i in range(8)]
    cache.store(keys[:4], src, [0, 1, 2, 3])
    cache.store(keys[4:], src, [4, 5, 6, 7])  # 0-3 written back to disk, out of host memory
    assert cache.lookup(keys[:2]) == (2, 0, 2)
    r = cache.prefetch(keys[:2])
    assert (r["from_disk"], r["missing"], r["corrupt"]) == (2, [], [])
    assert cache.lookup(keys[:2]) == (2, 2, 0), "both in host memory now"
    got = cache.load(keys[:2], dst, [0, 1])
    assert got["from_host"] == 2 and got["from_disk"] == 0
    assert block(dst_kv, 0) == block(src_kv, 0) and block(dst_kv, 1) == block(src_kv, 1)


def test_present_keys_are_skipped() -> None:
    rng = np.random.default_rng(3)
    kv = make("flash_attn", 4, LAYERS, BS, HEADS, HD, rng)
    cache = kvmem.BlockCache(layout(kv), host_blocks=8, policy="s3fifo")
    assert cache.store([1, 2], layout(kv), [0, 1])["stored"] == 2
    r = cache.store([1, 2, 3], layout(kv), [0, 1, 2])
    assert (r["stored"], r["present"]) == (1, 2)
    cache.touch([1, 99])
    assert cache.lookup([1, 2, 3, 4]) == (3, 3, 0)


def test_bad_input_raises() -> None:
    rng = np.random.default_rng(5)
    kv = make("flash_attn", 4, LAYERS, BS, HEADS, HD, rng)
    cache = kvmem.BlockCache(layout(kv), host_blocks=4)
    with pytest.raises(ValueError, match="keys"):
        cache.store([1, 2], layout(kv), [0])
    other = make("flash_attn", 4, LAYERS, BS, HEADS, HD * 2, rng)
    with pytest.raises(ValueError):
        cache.store([1], layout(other), [0])
    with pytest.raises(ValueError):
        cache.load([1], layout(kv), [0], timeout=-1.0)
    with pytest.raises(ValueError, match="policy"):
        kvmem.BlockCache(layout(kv), host_blocks=4, policy="fifo")  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        cache.lookup([-1])
    with pytest.raises(ValueError, match="host tier"):
        kvmem.BlockCache(layout(kv), host_blocks=0, disk_dir="/nonexistent/x", disk_blocks=4)
