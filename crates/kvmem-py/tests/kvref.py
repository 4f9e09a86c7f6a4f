"""Reference geometry for the tests: numpy views of one chunk (block, layer, outer) of an engine's
KV tensors, written from the formats' documented shapes and independent of kvmem."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from kvmem._kvmem import Format

FORMATS: list[Format] = ["flash_attn", "flashinfer", "cross_layer", "mla"]


def make(
    fmt: str, blocks: int, layers: int, bs: int, heads: int, hd: int, rng: np.random.Generator, dtype: Any = np.float16
) -> Any:
    """Random KV tensors of ``fmt``: a list per layer, or one array for cross_layer."""
    if fmt == "flash_attn":
        shape: tuple[int, ...] = (2, blocks, bs, heads, hd)
    elif fmt == "flashinfer":
        shape = (blocks, 2, bs, heads, hd)
    elif fmt == "mla":
        shape = (blocks, bs, heads * hd)
    else:
        shape = (blocks, layers, 2, bs, heads, hd)
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize

    def one() -> np.ndarray:
        buf = aligned(n)
        buf[...] = rng.integers(0, 256, n, dtype=np.uint8)
        return buf.view(dtype).reshape(shape)

    if fmt == "cross_layer":
        return one()
    return [one() for _ in range(layers)]


def aligned(n: int, align: int = 4096) -> np.ndarray:
    """``n`` uint8 starting on an ``align`` boundary (O_DIRECT disk I/O needs page-aligned host memory)."""
    raw = np.empty(n + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off : off + n]


def outer_dim(fmt: str) -> int:
    return 1 if fmt == "mla" else 2


def chunk(fmt: str, kv: Any, block: int, layer: int, outer: int) -> np.ndarray:
    """The chunk as a numpy view (writable)."""
    if fmt == "flash_attn":
        return kv[layer][outer, block]
    if fmt == "flashinfer":
        return kv[layer][block, outer]
    if fmt == "mla":
        return kv[layer][block]
    return kv[block, layer, outer]


def expected(fmt_s: str, src: Any, fmt_d: str, dst: Any, layers: int, s_ids: list[int], d_ids: list[int]) -> Any:
    """A copy of ``dst`` after copying blocks ``s_ids[i]`` of ``src`` to ``d_ids[i]``."""
    out = dst.copy() if fmt_d == "cross_layer" else [t.copy() for t in dst]
    for s, d in zip(s_ids, d_ids, strict=True):
        for layer in range(layers):
            for o in range(outer_dim(fmt_s)):
                chunk(fmt_d, out, d, layer, o)[...] = chunk(fmt_s, src, s, layer, o)
    return out


def same(a: Any, b: Any) -> bool:
    """Byte equality of two KV caches (lists or arrays)."""
    if isinstance(a, list):
        return all(np.array_equal(x.view(np.uint8), y.view(np.uint8)) for x, y in zip(a, b, strict=True))
    return bool(np.array_equal(a.view(np.uint8), b.view(np.uint8)))


def eq(a: np.ndarray, b: np.ndarray) -> bool:
    """Byte equality (random bytes include NaNs, which compare unequal as floats)."""
    return bool(np.array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8)))
