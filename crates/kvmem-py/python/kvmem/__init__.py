"""kvmem: move an LLM engine's own KV-cache blocks between GPU, pinned host, host, disk and NIXL peers.

The engine's tensors are taken as they are (``Layout.from_tensors``), through
``__cuda_array_interface__``, ``__array_interface__``, DLPack or the buffer protocol — kvmem never
imports torch. ``Layout.allocate`` creates layouts in kvmem's own tiers (``Tier``), ``Engine.copy``
moves blocks between any two, and ``Agent`` reaches other nodes over NIXL.

Example::

    import numpy as np, kvmem

    kv = [np.zeros((2, 64, 16, 8, 128), np.float16) for _ in range(4)]   # vLLM, 4 layers
    gpu_like = kvmem.Layout.from_tensors(kv, "flash_attn")
    host = gpu_like.allocate_like(kvmem.Tier.host())
    engine = kvmem.Engine()
    engine.copy(gpu_like, [3, 7, 9], host, [0, 1, 2]).wait()
"""

from ._kvmem import (
    Agent,
    BlockCache,
    CancelledError,
    Engine,
    Error,
    Handle,
    InvalidArgumentError,
    Layout,
    NixlError,
    OutOfMemoryError,
    Region,
    RegisteredLayout,
    RemoteLayout,
    Stats,
    Tier,
    TransferError,
    UnavailableError,
    __version__,
    cuda_available,
    nixl_available,
)

__all__ = [
    "Agent",
    "BlockCache",
    "CancelledError",
    "Engine",
    "Error",
    "Handle",
    "InvalidArgumentError",
    "Layout",
    "NixlError",
    "OutOfMemoryError",
    "Region",
    "RegisteredLayout",
    "RemoteLayout",
    "Stats",
    "Tier",
    "TransferError",
    "UnavailableError",
    "__version__",
    "cuda_available",
    "nixl_available",
]
