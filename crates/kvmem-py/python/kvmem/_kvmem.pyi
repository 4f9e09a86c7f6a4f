"""Type stubs of kvmem's native module."""

from collections.abc import Awaitable, Callable, Generator, Sequence
from os import PathLike
from typing import Any, Literal, TypedDict

__version__: str

Format = Literal["flash_attn", "vllm", "flashinfer", "cross_layer", "mla"]
Ids = Sequence[int] | Any
"""A list/tuple of ints, or a 1-D integer array in host memory (numpy, torch CPU)."""
StreamLike = int | Any
"""A torch.cuda.Stream (``.cuda_stream``), a CuPy stream (``.ptr``) or a raw CUstream int."""

class Error(Exception):
    """Base class of every error kvmem raises; the message is the library's and says what to do."""

class InvalidArgumentError(Error, ValueError):
    """Bad input: wrong dtype, shape, strides or device, ids out of range, a layout that does not fit."""

class OutOfMemoryError(Error, MemoryError):
    """An allocation of host, pinned or device memory failed."""

class TransferError(Error):
    """A transfer failed after it started (I/O error, short I/O, NIXL failure, aborted)."""

class CancelledError(TransferError):
    """A transfer stopped early by Handle.cancel()."""

class UnavailableError(Error):
    """A missing component: the CUDA driver, a device, the NIXL runtime or a backend."""

class NixlError(Error):
    """NIXL refused an agent, registration, peer, metadata or notification operation."""

def nixl_available() -> bool:
    """True when the NIXL runtime (libnixl_capi.so) could be loaded."""

def cuda_available() -> bool:
    """True when the CUDA driver could be loaded."""

class Tier:
    """A memory tier new layouts can be allocated in."""

    @staticmethod
    def host() -> Tier:
        """Plain (pageable) host memory, page-aligned and zeroed."""
    @staticmethod
    def pinned(device: int = 0, numa_node: int | None = None) -> Tier:
        """Pinned host memory on kvmem's fast pinned path, optionally on NUMA node ``numa_node``."""
    @staticmethod
    def disk(directory: str | PathLike[str]) -> Tier:
        """Files in ``directory`` (O_DIRECT where possible, removed with the layout)."""
    @staticmethod
    def device(device: int = 0) -> Tier:
        """Memory of CUDA device ``device``."""

class Region:
    """One region of a layout; ``numpy.asarray(region)`` / ``cupy.asarray(region)`` view it as uint8."""

    def __len__(self) -> int:
        """Bytes the layout uses in this region."""
    @property
    def __array_interface__(self) -> dict[str, Any]:
        """NumPy's array interface (host memory only)."""
    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        """The CUDA array interface (device memory only)."""

class Layout:
    """KV-cache blocks over memory of one tier; keeps its memory (and source tensors) alive."""

    @staticmethod
    def from_tensors(
        tensors: Sequence[Any] | Any,
        format: Format = "flash_attn",
        *,
        device: int | str | None = None,
        dtype: str | Any | None = None,
    ) -> Layout:
        """A layout over the engine's own KV tensors (one per layer, or one for ``cross_layer``)."""
    @staticmethod
    def allocate(
        tier: Tier,
        *,
        num_blocks: int,
        num_layers: int,
        block_size: int,
        dtype: str | Any,
        format: Format = "flash_attn",
        heads: int = 1,
        head_dim: int | None = None,
        latent_dim: int | None = None,
    ) -> Layout:
        """A new layout of the given geometry in ``tier``, laid out as ``format``."""
    def allocate_like(self, tier: Tier, *, num_blocks: int | None = None) -> Layout:
        """A new layout in ``tier`` with this layout's geometry and format."""
    @property
    def num_blocks(self) -> int:
        """Blocks in the layout."""
    @property
    def num_layers(self) -> int:
        """Layers in the layout."""
    @property
    def block_size(self) -> int:
        """Tokens per block."""
    @property
    def outer_dim(self) -> int:
        """2 (k and v) or 1 (MLA)."""
    @property
    def inner_dim(self) -> int:
        """Elements per token of one chunk."""
    @property
    def chunk_bytes(self) -> int:
        """Bytes of one chunk (one block's k or v of one layer)."""
    @property
    def block_bytes(self) -> int:
        """Bytes of one block over all layers."""
    @property
    def dtype(self) -> str:
        """The element type's name."""
    @property
    def format(self) -> str:
        """The engine format the layout is laid out as."""
    @property
    def tier(self) -> str:
        """``"system"``, ``"pinned"``, ``"device:N"`` or ``"disk"``."""
    @property
    def region_shape(self) -> list[int]:
        """The shape of each region as the format describes it."""
    def regions(self) -> list[Region]:
        """The regions, viewable through the array interfaces."""

class Stats:
    """Statistics of a finished transfer."""

    bytes: int
    """Bytes moved."""
    ops: int
    """Copies (after merging) or NIXL descriptors."""
    elapsed: float
    """Seconds from submission to completion."""
    path: str
    """The path crossed, e.g. ``"host->disk"``."""
    @property
    def bandwidth(self) -> float:
        """Bytes per second."""

class Handle(Awaitable[Stats]):
    """One submitted transfer."""

    def done(self) -> bool:
        """True once the transfer has finished."""
    def wait(self, timeout: float | None = None) -> Stats:
        """Waits (GIL released); TimeoutError after ``timeout`` s; KeyboardInterrupt cancels."""
    def cancel(self) -> None:
        """Asks the transfer to stop early."""
    def wait_on(self, stream: StreamLike) -> None:
        """Makes ``stream`` wait on the GPU for this transfer's copies (CPU wait without a GPU end)."""
    @property
    def bytes(self) -> int:
        """Bytes the transfer moves."""
    @property
    def path(self) -> str:
        """The path the transfer crosses."""
    def _on_done(self, callback: Callable[[], object]) -> None:
        """Calls ``callback()`` from another thread once finished."""
    def __await__(self) -> Generator[Any, None, Stats]:
        """``await handle`` returns the Stats without blocking the event loop."""

class BlockCache:
    """A block cache: a host tier of block slots (pinned when a CUDA device is present) and an
    optional disk directory, indexed by 128-bit block keys (the engine's prefix hashes)."""

    def __init__(
        self,
        like: Layout,
        *,
        host_blocks: int,
        disk_dir: str | PathLike[str] | None = None,
        disk_blocks: int = 0,
        policy: Literal["lru", "s3fifo"] = "lru",
        fingerprint: str = "",
    ) -> None:
        """A cache for blocks shaped like ``like``'s; the disk directory is recovered when
        reopened with the same geometry and ``fingerprint``."""
    @property
    def block_bytes(self) -> int:
        """Bytes of one block."""
    @property
    def host_blocks(self) -> int:
        """Capacity of the host tier in blocks."""
    @property
    def disk_blocks(self) -> int:
        """Capacity of the disk tier in blocks (0 without one)."""
    def store(self, keys: Sequence[int], layout: Layout, block_ids: Ids, timeout: float = 60.0) -> StoreReport:
        """Copies ``layout``'s blocks ``block_ids[i]`` in under ``keys[i]`` and waits; present
        keys are skipped. Raises ``TimeoutError`` past ``timeout`` seconds (keys stay absent)."""
    def load(self, keys: Sequence[int], layout: Layout, block_ids: Ids, timeout: float = 60.0) -> LoadReport:
        """Copies the blocks of ``keys`` into ``layout``'s blocks ``block_ids[i]`` and waits;
        the keys listed in the report were not loaded."""
    def prefetch(self, keys: Sequence[int], timeout: float = 60.0) -> LoadReport:
        """Brings the blocks of ``keys`` found only on disk into host memory and waits."""
    def lookup(self, keys: Sequence[int]) -> tuple[int, int, int]:
        """The longest present prefix: ``(hits, in_host, only_on_disk)``. No I/O."""
    def contains(self, key: int) -> bool:
        """True when ``key`` is loadable from some tier."""
    def touch(self, keys: Sequence[int]) -> None:
        """Marks ``keys`` as used now, for eviction."""
    def remove(self, keys: Sequence[int]) -> int:
        """Removes ``keys`` from every tier; returns how many were present."""

class StoreReport(TypedDict):
    """What ``BlockCache.store`` did."""

    stored: int
    present: int
    no_space: list[int]
    written_to_disk: int

class LoadReport(TypedDict):
    """What ``BlockCache.load`` did."""

    from_host: int
    from_disk: int
    missing: list[int]
    corrupt: list[int]
    no_space: list[int]

class Engine:
    """Moves KV blocks between layouts of any two tiers and to and from NIXL peers."""

    def __init__(
        self,
        *,
        host_threads: int | None = None,
        disk_backend: Literal["io_uring", "nixl_posix"] | None = None,
        queue_depth: int | None = None,
        bounce_bytes: int | None = None,
        staging_bytes: int | None = None,
        beside_compute: bool = False,
    ) -> None:
        """An engine; ``beside_compute=True`` when the engine's kernels run while kvmem copies
        (small GPU copies then leave the SMs to them)."""
    def copy(self, src: Layout, src_ids: Ids, dst: Layout, dst_ids: Ids, stream: StreamLike | None = None) -> Handle:
        """Copies blocks ``src_ids[i]`` of ``src`` to ``dst_ids[i]`` of ``dst``; ordered after ``stream``."""
    def write_remote(
        self,
        src: RegisteredLayout,
        src_ids: Ids,
        dst: RemoteLayout,
        dst_ids: Ids,
        notification: bytes | None = None,
    ) -> Handle:
        """NIXL WRITE of local blocks to a peer's layout, then ``notification``."""
    def read_remote(self, src: RemoteLayout, src_ids: Ids, dst: RegisteredLayout, dst_ids: Ids) -> Handle:
        """NIXL READ of a peer's blocks into a local registered layout."""
    def _rust_copy_timings(
        self, src: Layout, src_ids: Ids, dst: Layout, dst_ids: Ids, iters: int
    ) -> list[tuple[float, float]]:
        """Benchmark aid: ``iters`` runs of the same copy through the Rust engine alone, each
        waited for; ``(submit_seconds, total_seconds)`` per run."""
    def _copy_timed(self, src: Layout, src_ids: Ids, dst: Layout, dst_ids: Ids) -> tuple[Handle, float, float]:
        """Benchmark aid: ``copy`` (no ``stream``) and ``(wrapper_seconds, submit_seconds)``
        timed inside the call: ids read and arguments checked, then the submission itself."""

class Agent:
    """A NIXL agent."""

    def __init__(
        self,
        name: str | None = None,
        *,
        backends: Sequence[str] | None = None,
        config: str | None = None,
        listen_port: int | None = None,
    ) -> None:
        """An agent by name, from a TOML ``config``, or (neither) from ``KVMEM_NIXL_*`` variables."""
    @property
    def name(self) -> str:
        """The agent's name."""
    @property
    def backends(self) -> list[str]:
        """The backends that started."""
    def metadata(self) -> bytes:
        """This agent's metadata, for a peer's ``load_peer``."""
    def load_peer(self, metadata: bytes) -> str:
        """Loads a peer's metadata; returns its name."""
    def register(self, layout: Layout) -> RegisteredLayout:
        """Registers the layout's regions and prepares it for transfers with peers."""
    def import_layout(self, peer: str, descriptor: bytes) -> RemoteLayout:
        """A peer's layout from its ``descriptor()`` bytes."""
    def notify(self, peer: str, message: bytes) -> None:
        """Sends a notification."""
    def wait_notification(self, peer: str, timeout: float = 10.0) -> bytes:
        """Waits for the next notification from ``peer``."""
    def take_notifications(self, peer: str) -> list[bytes]:
        """The notifications received from ``peer`` so far."""

class RegisteredLayout:
    """A local layout registered with an agent."""

    def descriptor(self) -> bytes:
        """The layout descriptor (JSON) to send to peers."""
    @property
    def num_blocks(self) -> int:
        """Blocks in the layout."""

class RemoteLayout:
    """A peer's layout."""

    @property
    def peer(self) -> str:
        """The peer's name."""
    @property
    def num_blocks(self) -> int:
        """Blocks in the layout."""
