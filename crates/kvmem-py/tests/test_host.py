"""kvmem from Python on host memory, disk and NIXL loopback: random data, poisoned destinations,
every byte compared with a numpy reference; bad input is a Python exception."""

from __future__ import annotations

import array
import asyncio
import gc
import sys
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kvmem

if TYPE_CHECKING:
    from kvmem._kvmem import Format
import numpy as np
import pytest
from kvref import FORMATS, aligned, chunk, eq, expected, make, outer_dim, same

LAYERS, BS, HEADS, HD = 3, 16, 2, 64


def poisoned(kv: Any) -> Any:
    if isinstance(kv, list):
        for t in kv:
            t.view(np.uint8)[...] = 0xA5
    else:
        kv.view(np.uint8)[...] = 0xA5
    return kv


@pytest.fixture(scope="module")
def engine() -> kvmem.Engine:
    return kvmem.Engine()


PAIRS = [(s, d) for s in FORMATS for d in FORMATS if (s == "mla") == (d == "mla")]


def test_mla_and_kv_layouts_do_not_mix(engine: kvmem.Engine) -> None:
    rng = np.random.default_rng(2)
    mla = kvmem.Layout.from_tensors(make("mla", 4, LAYERS, BS, HEADS, HD, rng), "mla")
    kv = kvmem.Layout.from_tensors(make("flash_attn", 4, LAYERS, BS, HEADS, HD, rng), "flash_attn")
    assert mla.outer_dim == 1 and kv.outer_dim == 2
    with pytest.raises(ValueError):
        engine.copy(mla, [0], kv, [0])


@pytest.mark.parametrize(("fmt_s", "fmt_d"), PAIRS)
def test_host_to_host_every_format_pair(engine: kvmem.Engine, fmt_s: Format, fmt_d: Format) -> None:
    rng = np.random.default_rng(hash((fmt_s, fmt_d)) & 0xFFFF)
    src_kv = make(fmt_s, 12, LAYERS, BS, HEADS, HD, rng)
    dst_kv = poisoned(make(fmt_d, 9, LAYERS, BS, HEADS, HD, rng))
    src = kvmem.Layout.from_tensors(src_kv, fmt_s)
    dst = kvmem.Layout.from_tensors(dst_kv, fmt_d)
    assert src.num_blocks == 12 and dst.num_blocks == 9
    assert src.chunk_bytes == BS * HEADS * HD * 2
    s_ids = rng.choice(12, 6, replace=False).tolist()
    d_ids = rng.choice(9, 6, replace=False).tolist()
    want = expected(fmt_s, src_kv, fmt_d, dst_kv, LAYERS, s_ids, d_ids)
    stats = engine.copy(src, np.array(s_ids, dtype=np.int64), dst, d_ids).wait()
    assert stats.bytes == 6 * LAYERS * outer_dim(fmt_s) * src.chunk_bytes
    assert same(dst_kv, want)


class DLPackOnly:
    """Exposes an array through DLPack alone (as JAX and some torch builds do): no array
    interface, no buffer protocol."""

    def __init__(self, a: Any) -> None:
        self._a = a

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._a.__dlpack_device__()  # type: ignore[no-any-return]


def test_dlpack_only_tensors_are_read_through_their_capsule(engine: kvmem.Engine) -> None:
    rng = np.random.default_rng(5)
    src_kv = make("flash_attn", 8, LAYERS, BS, HEADS, HD, rng)
    dst_kv = poisoned(make("flash_attn", 8, LAYERS, BS, HEADS, HD, rng))
    src = kvmem.Layout.from_tensors([DLPackOnly(t) for t in src_kv], "flash_attn", dtype="float16")
    dst = kvmem.Layout.from_tensors(dst_kv, "flash_attn")
    ids = [3, 0, 6]
    want = expected("flash_attn", src_kv, "flash_attn", dst_kv, LAYERS, ids, ids)
    engine.copy(src, ids, dst, ids).wait()
    assert same(dst_kv, want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_host_to_disk_and_back(engine: kvmem.Engine, fmt: Format, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    src_kv = make(fmt, 32, LAYERS, BS, HEADS, HD, rng)
    src = kvmem.Layout.from_tensors(src_kv, fmt)
    disk = src.allocate_like(kvmem.Tier.disk(tmp_path), num_blocks=20)
    assert disk.tier == "disk" and disk.num_blocks == 20
    s_ids = rng.choice(32, 16, replace=False).tolist()
    d_ids = rng.choice(20, 16, replace=False).tolist()
    engine.copy(src, s_ids, disk, d_ids).wait(timeout=60)
    back_kv = poisoned(make(fmt, 32, LAYERS, BS, HEADS, HD, rng))
    back = kvmem.Layout.from_tensors(back_kv, fmt)
    engine.copy(disk, d_ids, back, s_ids).wait(timeout=60)
    for s in s_ids:
        for layer in range(LAYERS):
            for o in range(outer_dim(fmt)):
                assert eq(chunk(fmt, back_kv, s, layer, o), chunk(fmt, src_kv, s, layer, o))
    untouched = [b for b in range(32) if b not in s_ids]
    assert all((chunk(fmt, back_kv, b, 0, 0).view(np.uint8) == 0xA5).all() for b in untouched)


def test_allocated_host_tier_views(engine: kvmem.Engine) -> None:
    rng = np.random.default_rng(3)
    kv = make("flash_attn", 8, LAYERS, BS, HEADS, HD, rng)
    src = kvmem.Layout.from_tensors(kv, "flash_attn", dtype="float16", device="cpu")
    host = kvmem.Layout.allocate(
        kvmem.Tier.host(), num_blocks=8, num_layers=LAYERS, block_size=BS, dtype="float16", heads=HEADS, head_dim=HD
    )
    assert host.region_shape == [2, 8, BS, HEADS * HD]
    engine.copy(src, list(range(8)), host, list(range(8))).wait()
    for layer, region in enumerate(host.regions()):
        view = np.asarray(region).view(np.float16).reshape(2, 8, BS, HEADS, HD)
        assert eq(view, kv[layer])


def test_nixl_loopback_write_and_read(engine: kvmem.Engine) -> None:
    assert kvmem.nixl_available(), "the NIXL runtime must be installed (./scripts/setup.sh)"
    a = kvmem.Agent(f"py-a-{time.monotonic_ns()}")
    b = kvmem.Agent(f"py-b-{time.monotonic_ns()}")
    rng = np.random.default_rng(11)
    src_kv = make("flashinfer", 10, LAYERS, BS, HEADS, HD, rng)
    dst_kv = poisoned(make("flash_attn", 10, LAYERS, BS, HEADS, HD, rng))
    back_kv = poisoned(make("cross_layer", 10, LAYERS, BS, HEADS, HD, rng))
    local = a.register(kvmem.Layout.from_tensors(src_kv, "flashinfer"))
    back = a.register(kvmem.Layout.from_tensors(back_kv, "cross_layer"))
    target = b.register(kvmem.Layout.from_tensors(dst_kv, "flash_attn"))
    peer = a.load_peer(b.metadata())
    assert peer == b.name
    b.load_peer(a.metadata())
    remote = a.import_layout(peer, target.descriptor())
    assert remote.num_blocks == 10
    s_ids, d_ids = [1, 4, 9, 0], [7, 2, 3, 5]
    want = expected("flashinfer", src_kv, "flash_attn", dst_kv, LAYERS, s_ids, d_ids)
    engine.write_remote(local, s_ids, remote, d_ids, notification=b"landed").wait(timeout=30)
    assert b.wait_notification(a.name, timeout=10) == b"landed"
    assert same(dst_kv, want)
    engine.read_remote(remote, d_ids, back, s_ids).wait(timeout=30)
    for s in s_ids:
        for layer in range(LAYERS):
            for o in range(2):
                assert eq(chunk("cross_layer", back_kv, s, layer, o), chunk("flashinfer", src_kv, s, layer, o))


def test_source_stays_alive_after_the_caller_dropped_it(engine: kvmem.Engine, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    blocks = 256
    kv = make("cross_layer", blocks, 4, 16, 8, 128, rng)  # 256 blocks of 128 KiB: 32 MiB
    reference = kv.copy()
    alive = weakref.ref(kv)
    src = kvmem.Layout.from_tensors(kv, "cross_layer")
    disk = src.allocate_like(kvmem.Tier.disk(tmp_path))
    handle = engine.copy(src, list(range(blocks)), disk, list(range(blocks)))
    del kv, src
    gc.collect()
    if not handle.done():
        assert alive() is not None, "the array was freed while its copy was running"
    handle.wait(timeout=120)
    back_kv = poisoned(aligned(reference.nbytes).view(reference.dtype).reshape(reference.shape))
    back = kvmem.Layout.from_tensors(back_kv, "cross_layer")
    engine.copy(disk, list(range(blocks)), back, list(range(blocks))).wait(timeout=120)
    assert np.array_equal(back_kv.view(np.uint8), reference.view(np.uint8))
    del handle
    for _ in range(100):  # the executor releases the plan (and the array) after the copy
        gc.collect()
        if alive() is None:
            break
        time.sleep(0.01)
    assert alive() is None, "the array is still referenced after its copy finished (leak)"


def test_asyncio_await_does_not_block_the_loop(engine: kvmem.Engine, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    kv = make("cross_layer", 256, 4, 16, 8, 128, rng)  # 32 MiB to disk
    src = kvmem.Layout.from_tensors(kv, "cross_layer")
    disk = src.allocate_like(kvmem.Tier.disk(tmp_path))

    async def main() -> tuple[kvmem.Stats, bool, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        h = engine.copy(src, list(range(256)), disk, list(range(256)))
        running, before = not h.done(), ticks
        stats = await h
        t.cancel()
        return stats, running, ticks - before

    stats, running, ticks = asyncio.run(main())
    assert stats.bytes == 256 * src.block_bytes
    if running:  # the loop kept running other tasks while the copy was in flight
        assert ticks > 0


def test_wait_timeout_and_cancel(engine: kvmem.Engine, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    kv = make("cross_layer", 512, 8, 16, 8, 128, rng)  # 128 MiB
    src = kvmem.Layout.from_tensors(kv, "cross_layer")
    disk = src.allocate_like(kvmem.Tier.disk(tmp_path))
    h = engine.copy(src, list(range(512)), disk, list(range(512)))
    try:
        h.wait(timeout=0)
    except TimeoutError:
        pass  # still running, as expected on most machines
    h.cancel()
    try:
        h.wait(timeout=120)
    except kvmem.CancelledError as e:
        assert "cancel" in str(e).lower()
    assert h.done()
    with pytest.raises(ValueError):
        h.wait(timeout=-1)


def test_many_ids_from_numpy_are_read_in_rust(engine: kvmem.Engine) -> None:
    n = 100_000
    kv = np.zeros((n, 1, 2, 1, 1, 8), np.uint8)
    src = kvmem.Layout.from_tensors(kv, "cross_layer")
    dst_kv = np.zeros_like(kv)
    dst = kvmem.Layout.from_tensors(dst_kv, "cross_layer")
    kv.reshape(n, 16)[:, 0] = np.arange(n) % 251
    kv.reshape(n, 16)[:, 9] = np.arange(n) // 251
    ids = np.random.default_rng(0).permutation(n).astype(np.int32)
    engine.copy(src, ids, dst, ids).wait(timeout=60)
    assert np.array_equal(dst_kv, kv)


class CountingIds(np.ndarray):
    """An id array that counts reads of its ``__array_interface__`` (numpy builds that dict on
    every access: the slow way to read ids right after a copy)."""

    reads = 0

    @property
    def __array_interface__(self) -> dict[str, Any]:  # type: ignore[override]
        CountingIds.reads += 1
        return super().__array_interface__  # type: ignore[misc,no-any-return]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the buffer protocol joined the stable ABI in 3.11")
def test_id_arrays_are_read_through_the_buffer_protocol(engine: kvmem.Engine) -> None:
    n = 64
    kv = np.random.default_rng(5).integers(0, 256, (n, 1, 2, 1, 1, 16), dtype=np.uint8)
    src = kvmem.Layout.from_tensors(kv, "cross_layer")
    perm = np.random.default_rng(6).permutation(n)
    CountingIds.reads = 0
    for dtype in (np.int64, np.int32, np.int16, np.uint64, np.uint32, np.uint16, np.intp):
        dst_kv = np.full_like(kv, 0xA5)
        dst = kvmem.Layout.from_tensors(dst_kv, "cross_layer")
        ids = perm.astype(dtype).view(CountingIds)
        engine.copy(src, ids, dst, np.arange(n, dtype=dtype).view(CountingIds)).wait(timeout=60)
        assert np.array_equal(dst_kv, kv[perm]), dtype
    assert CountingIds.reads == 0
    # Other exporters of the buffer protocol, and uint8 ids.
    small = perm[perm < 256][:8]
    exporters: list[Any] = [
        array.array("q", small.tolist()),
        small.astype(np.int32).data,
        bytes(small.astype(np.uint8)),
    ]
    for other in exporters:
        dst_kv = np.full_like(kv, 0xA5)
        dst = kvmem.Layout.from_tensors(dst_kv, "cross_layer")
        engine.copy(src, other, dst, list(range(len(small)))).wait(timeout=60)
        assert np.array_equal(dst_kv[: len(small)], kv[small]), type(other)
    # What the buffer protocol does not describe as 1-D native integers goes the general way,
    # with its errors.
    a = kvmem.Layout.from_tensors(kv, "cross_layer")
    with pytest.raises(ValueError, match="big-endian"):
        engine.copy(a, np.arange(4, dtype=">i8"), a, [4, 5, 6, 7])
    with pytest.raises(ValueError, match="not contiguous"):
        engine.copy(a, np.arange(8, dtype=np.int64)[::2], a, [8, 9, 10, 11])
    with pytest.raises(ValueError, match="not an integer"):
        engine.copy(a, np.zeros(1, np.float64), a, [8])
    with pytest.raises(ValueError, match="1-D"):
        engine.copy(a, np.zeros((1, 1), np.int32), a, [8])
    with pytest.raises(ValueError, match="not a valid block id"):
        engine.copy(a, np.array([-2], np.int32), a, [8])


def test_rust_copy_timings_moves_the_same_blocks(engine: kvmem.Engine) -> None:
    """The benchmark aid behind the Python-overhead figure runs the copy it is given."""
    n = 512
    kv = np.random.default_rng(3).integers(0, 256, (n, 1, 2, 1, 1, 64), dtype=np.uint8)
    dst_kv = np.full_like(kv, 0xA5)
    src = kvmem.Layout.from_tensors(kv, "cross_layer")
    dst = kvmem.Layout.from_tensors(dst_kv, "cross_layer")
    ids = np.random.default_rng(4).permutation(n)
    runs = engine._rust_copy_timings(src, ids, dst, ids[::-1].copy(), 3)
    assert len(runs) == 3 and all(0 < sub <= tot for sub, tot in runs)
    assert np.array_equal(dst_kv[ids[::-1]], kv[ids])
    with pytest.raises(ValueError):
        engine._rust_copy_timings(src, [n], dst, [0], 1)


# --- bad input: each a Python exception, never a crash -------------------------------------------


class FakeCuda:
    """An object claiming to be a CUDA tensor on ``device``; its pointer is never touched."""

    def __init__(self, device: int, shape: tuple[int, ...] = (2, 4, 16, 2, 64)) -> None:
        self.device = device
        self.shape = shape

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"data": (0x7F0000000000, False), "shape": self.shape, "typestr": "<f2", "version": 3, "strides": None}

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, self.device)


def test_tensor_on_another_device_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cuda:1 but tensor 0 is on cuda:0"):
        kvmem.Layout.from_tensors([FakeCuda(0), FakeCuda(1)], "flash_attn")
    with pytest.raises(ValueError, match="device=cuda:0"):
        kvmem.Layout.from_tensors([FakeCuda(3)], "flash_attn", device=0)
    cpu = np.zeros((2, 4, 16, 2, 64), np.float16)
    with pytest.raises(ValueError, match="on cpu but tensor 0 is on cuda:2"):
        kvmem.Layout.from_tensors([FakeCuda(2), cpu], "flash_attn")


def test_bad_tensors_are_value_errors(engine: kvmem.Engine) -> None:
    good = [np.zeros((2, 4, 16, 2, 64), np.float16) for _ in range(2)]
    with pytest.raises(ValueError, match="not contiguous"):
        kvmem.Layout.from_tensors([np.zeros((2, 4, 16, 2, 128), np.float16)[..., ::2]] * 2, "flash_attn")
    with pytest.raises(ValueError, match="dtype"):
        kvmem.Layout.from_tensors([good[0], good[1].view(np.int16)], "flash_attn")
    with pytest.raises(ValueError, match="dtype float16 but dtype=bfloat16"):
        kvmem.Layout.from_tensors(good, "flash_attn", dtype="bfloat16")
    with pytest.raises(ValueError, match="shape"):
        kvmem.Layout.from_tensors([np.zeros((3, 4, 16, 2, 64), np.float16)], "flash_attn")
    with pytest.raises(ValueError, match="shape"):
        kvmem.Layout.from_tensors([good[0], np.zeros((2, 5, 16, 2, 64), np.float16)], "flash_attn")
    with pytest.raises(ValueError, match="unknown format"):
        kvmem.Layout.from_tensors(good, "paged")  # type: ignore[arg-type]  # deliberately not a Format
    with pytest.raises(ValueError, match="none of"):
        kvmem.Layout.from_tensors([object()], "flash_attn")
    with pytest.raises(ValueError, match="big-endian"):
        kvmem.Layout.from_tensors([np.zeros((2, 4, 16, 2, 64), ">f2")], "flash_attn")
    with pytest.raises(ValueError, match="empty"):
        kvmem.Layout.from_tensors([], "flash_attn")
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros((2, 4, 16, 2, 64), np.float16)
        ro.flags.writeable = False
        src = kvmem.Layout.from_tensors(good[:1], "flash_attn")
        engine.copy(src, [0], kvmem.Layout.from_tensors([ro], "flash_attn"), [0])


def test_bad_ids_are_value_errors(engine: kvmem.Engine) -> None:
    a = kvmem.Layout.from_tensors([np.zeros((2, 4, 16, 2, 64), np.float16)], "flash_attn")
    b = kvmem.Layout.from_tensors([np.zeros((2, 4, 16, 2, 64), np.float16)], "flash_attn")
    with pytest.raises(kvmem.InvalidArgumentError, match="out of range"):
        engine.copy(a, [4], b, [0])
    with pytest.raises(ValueError, match="out of range"):
        engine.copy(a, [0], b, np.array([9]))
    with pytest.raises(ValueError, match="negative"):
        engine.copy(a, [-1], b, [0])
    with pytest.raises(ValueError, match="not a valid block id"):
        engine.copy(a, np.array([-3]), b, [0])
    with pytest.raises(ValueError, match="not an integer"):
        engine.copy(a, np.array([0.0]), b, [0])
    with pytest.raises(ValueError, match="1-D"):
        engine.copy(a, np.zeros((1, 1), np.int64), b, [0])
    with pytest.raises(ValueError):
        engine.copy(a, [0, 1], b, [0])
    with pytest.raises(ValueError):
        engine.copy(a, [0, 1], b, [2, 2])
    with pytest.raises(ValueError, match="ids on cuda:0"):
        engine.copy(a, FakeCuda(0, (1,)), b, [0])
    with pytest.raises(ValueError, match="every id must be an int"):
        engine.copy(a, ["x"], b, [0])


def test_error_hierarchy() -> None:
    assert issubclass(kvmem.InvalidArgumentError, kvmem.Error)
    assert issubclass(kvmem.InvalidArgumentError, ValueError)
    assert issubclass(kvmem.CancelledError, kvmem.TransferError)
    assert issubclass(kvmem.OutOfMemoryError, MemoryError)
    with pytest.raises(kvmem.UnavailableError if not kvmem.cuda_available() else kvmem.Error):
        kvmem.Layout.allocate(
            kvmem.Tier.device(0), num_blocks=1, num_layers=1, block_size=16, dtype="bfloat16", head_dim=128
        )
