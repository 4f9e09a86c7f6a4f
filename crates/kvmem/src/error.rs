//! The crate's error type. Every message says what was wrong and, where there is one, what to do.

use std::path::PathBuf;

/// Result with kvmem's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in kvmem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A size of zero was given where at least one byte is needed.
    #[error("{what} must not be zero bytes; pass a positive size")]
    ZeroSize {
        /// What the size was for.
        what: &'static str,
    },

    /// A range does not lie inside the region it was taken from.
    #[error(
        "range of {len} bytes at offset {offset} does not fit in a region of {size} bytes; \
         keep offset + len <= {size}"
    )]
    OutOfBounds {
        /// Requested offset.
        offset: usize,
        /// Requested length.
        len: usize,
        /// Size of the region.
        size: usize,
    },

    /// Arithmetic on sizes or addresses overflowed.
    #[error("{what} overflows the address space; use smaller sizes or offsets")]
    Overflow {
        /// The computation that overflowed.
        what: &'static str,
    },

    /// A value is not a multiple of the alignment it needs.
    #[error("{what} = {value} is not a multiple of {align}; align it to {align} bytes")]
    Misaligned {
        /// What is misaligned.
        what: &'static str,
        /// The misaligned value.
        value: u64,
        /// The alignment it needs.
        align: u64,
    },

    /// An operation needs a different kind of memory than it was given.
    #[error("{op} needs {expected} memory, but got {actual}")]
    WrongStorageKind {
        /// The operation.
        op: &'static str,
        /// What it needs.
        expected: &'static str,
        /// What it got.
        actual: crate::StorageKind,
    },

    /// A host allocation failed.
    #[error(
        "could not allocate {size} bytes of host memory: {source}; free memory or ask for less"
    )]
    HostAlloc {
        /// Requested size.
        size: usize,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// A worker thread could not be started.
    #[error(
        "could not start the {name} thread: {source}; the process may be at its thread or memory \
         limit (ulimit -u, the cgroup's pids.max): end idle threads or raise the limit"
    )]
    ThreadSpawn {
        /// The thread's name.
        name: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// A file-system operation failed.
    #[error("could not {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// A read or write moved fewer bytes than asked.
    #[error("{op} of {expected} bytes at offset {offset} moved only {actual} bytes")]
    ShortIo {
        /// `read` or `write`.
        op: &'static str,
        /// Offset in the file.
        offset: u64,
        /// Bytes asked for.
        expected: usize,
        /// Bytes moved.
        actual: usize,
    },

    /// The arena has no free range large enough.
    #[error(
        "arena exhausted: {requested} bytes requested, {free} bytes free (largest free range \
         {largest} bytes); free buffers or make the arena larger"
    )]
    ArenaExhausted {
        /// Requested size in bytes.
        requested: usize,
        /// Free bytes in total.
        free: usize,
        /// Largest contiguous free range in bytes.
        largest: usize,
    },

    /// A tensor description is inconsistent.
    #[error("invalid tensor descriptor: {0}")]
    InvalidTensor(String),

    /// A topology file (sysfs, procfs) holds something that cannot be parsed.
    #[error("invalid topology data: {0}")]
    InvalidTopology(String),

    /// A feature this machine, driver or build does not offer was asked for explicitly.
    #[error("not available here: {what}")]
    Unsupported {
        /// What is missing and why.
        what: String,
    },

    /// The NIXL runtime library cannot be loaded.
    #[error(
        "the NIXL runtime (libnixl_capi.so) is not available ({searched}). Install it with \
         `scripts/setup.sh` (a venv with `pip install --no-deps nixl-cu12==1.5.1`), or point \
         KVMEM_NIXL_LIB_DIR at the directory holding libnixl_capi.so"
    )]
    NixlUnavailable {
        /// Where kvmem looked and what failed.
        searched: String,
    },

    /// A block layout's description or regions are inconsistent.
    #[error("invalid block layout: {0}")]
    InvalidLayout(String),

    /// A region handed to a block layout is smaller than the layout needs.
    #[error(
        "layout region {region} holds {size} bytes but the layout needs {needed}; allocate \
         at least {needed} bytes or describe fewer blocks"
    )]
    RegionTooSmall {
        /// Index of the region (0 for a fully contiguous layout, the layer for a layer-separate one).
        region: usize,
        /// Bytes the layout needs in that region.
        needed: usize,
        /// Bytes the region has.
        size: usize,
    },

    /// A block id does not exist in the layout it names.
    #[error(
        "{side} block id {block} is out of range: the layout has {num_blocks} blocks (ids 0..{num_blocks})"
    )]
    BlockOutOfRange {
        /// `source` or `destination`.
        side: &'static str,
        /// The offending id.
        block: usize,
        /// Blocks in the layout.
        num_blocks: usize,
    },

    /// Source and destination block lists differ in length.
    #[error(
        "{src} source block ids but {dst} destination block ids; pass one destination per source"
    )]
    BlockCountMismatch {
        /// Number of source ids.
        src: usize,
        /// Number of destination ids.
        dst: usize,
    },

    /// The same destination block is named twice, so two copies would write one place.
    #[error(
        "destination block {block} appears more than once; each destination may be written once per transfer"
    )]
    DuplicateBlock {
        /// The repeated id.
        block: usize,
    },

    /// Two layouts cannot be copied block for block because their shapes differ.
    #[error(
        "layouts differ in {what}: source has {src}, destination has {dst}; copy between layouts of the same chunk size, layer count and k/v dimension"
    )]
    LayoutMismatch {
        /// The differing property (`chunk size`, `layers`, `outer dimension`).
        what: &'static str,
        /// Source value.
        src: usize,
        /// Destination value.
        dst: usize,
    },

    /// The destination of a region copy is smaller than its source.
    #[error(
        "destination holds {dst} bytes but the source has {src}; give a destination of at least {src} bytes"
    )]
    DestinationTooSmall {
        /// Source bytes.
        src: usize,
        /// Destination bytes.
        dst: usize,
    },

    /// Ranges of one transfer overlap, which would make the copy's result depend on its order.
    #[error(
        "{what} overlap at address {addr:#x}; source and destination ranges of one transfer must be disjoint"
    )]
    OverlappingCopy {
        /// Which ranges overlap (`destination ranges`, `source and destination ranges`).
        what: &'static str,
        /// An address inside the overlap.
        addr: usize,
    },

    /// The two ends of a transfer cannot be joined (e.g. both are remote, or a remote end meets
    /// a local layout that is not registered with NIXL).
    #[error("this transfer is not supported: {reason}")]
    UnsupportedEndpoints {
        /// Why, and what to do instead.
        reason: String,
    },

    /// No executor in this build can move bytes between these two kinds of storage.
    #[error("transfers from {src} to {dst} memory are not supported: {reason}")]
    UnsupportedTransfer {
        /// Source kind.
        src: crate::StorageKind,
        /// Destination kind.
        dst: crate::StorageKind,
        /// Why, and what to use instead.
        reason: &'static str,
    },

    /// The disk I/O backend could not be started.
    #[error(
        "the {backend} disk backend is unavailable: {source}; check that the kernel allows it (e.g. /proc/sys/kernel/io_uring_disabled)"
    )]
    DiskBackendUnavailable {
        /// The backend.
        backend: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// A read or write of a transfer failed.
    #[error("transfer {op} of {len} bytes at file offset {offset} (fd {fd}) failed: {source}")]
    TransferIo {
        /// `read` or `write`.
        op: &'static str,
        /// The file descriptor.
        fd: i32,
        /// Offset in the file.
        offset: u64,
        /// Bytes asked for.
        len: usize,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// A transfer was cancelled before it finished; the destination may be partly written.
    #[error("transfer cancelled after {done} of {total} bytes; the destination is partly written")]
    TransferCancelled {
        /// Bytes known to be copied.
        done: usize,
        /// Bytes the transfer would have copied.
        total: usize,
    },

    /// A transfer worker stopped without reporting a result.
    #[error(
        "the transfer worker stopped before finishing (it panicked or was shut down); the destination is undefined"
    )]
    TransferAborted,

    /// A NIXL call failed.
    #[error("NIXL failed to {op}: {source}")]
    Nixl {
        /// The operation.
        op: &'static str,
        /// NIXL's error.
        #[source]
        source: nixl_sys::NixlError,
    },

    /// CUDA cannot be used in this process: no driver library, a driver too old, or no device.
    #[error(
        "CUDA is not available: {reason}. Install the NVIDIA driver (it provides libcuda.so.1) \
         and check that `nvidia-smi` lists a GPU"
    )]
    CudaUnavailable {
        /// What is missing.
        reason: String,
    },

    /// A CUDA device ordinal beyond the devices present.
    #[error(
        "CUDA device {ordinal} does not exist: this machine has {count} device(s); use an \
         ordinal below {count} (CUDA_VISIBLE_DEVICES may hide some)"
    )]
    CudaDeviceNotFound {
        /// The ordinal asked for.
        ordinal: usize,
        /// Devices present.
        count: usize,
    },

    /// A device allocation did not fit in the GPU's free memory.
    #[error(
        "out of memory on CUDA device {device}: {requested} bytes requested, {free} of {total} \
         bytes free; free device buffers or ask for less"
    )]
    DeviceOutOfMemory {
        /// CUDA ordinal.
        device: u32,
        /// Requested size in bytes.
        requested: usize,
        /// Free device memory in bytes when the allocation failed.
        free: usize,
        /// Total device memory in bytes.
        total: usize,
    },

    /// Page-locked host memory could not be allocated or locked.
    #[error(
        "could not page-lock {requested} bytes of host memory ({available} bytes available \
         according to /proc/meminfo); free memory, ask for less, or raise RLIMIT_MEMLOCK"
    )]
    PinnedOutOfMemory {
        /// Requested size in bytes.
        requested: usize,
        /// `MemAvailable` in bytes when the allocation failed (0 when unknown).
        available: u64,
    },

    /// A CUDA driver call failed.
    #[error("CUDA failed to {op}: {name} (error {code}): {message}")]
    Cuda {
        /// The operation.
        op: &'static str,
        /// The `CUresult` value.
        code: u32,
        /// The `CUresult` name, e.g. `CUDA_ERROR_INVALID_VALUE`.
        name: String,
        /// The driver's description.
        message: String,
    },

    /// Two regions that must be the same size are not.
    #[error("{op} needs regions of equal size, got {src} bytes to copy into {dst} bytes")]
    SizeMismatch {
        /// The operation.
        op: &'static str,
        /// Source size in bytes.
        src: usize,
        /// Destination size in bytes.
        dst: usize,
    },

    /// An address range is not device memory the CUDA driver knows.
    #[error(
        "{op}: {size} bytes at {addr:#x} are not inside one device allocation ({reason}); pass \
         memory allocated on a CUDA device"
    )]
    NotDeviceMemory {
        /// The operation.
        op: &'static str,
        /// Start of the range.
        addr: usize,
        /// Length of the range.
        size: usize,
        /// What the driver said about it.
        reason: String,
    },

    /// Memory could not be placed on the requested NUMA node.
    #[error(
        "could not place memory on NUMA node {node}: {source}; pass a node that exists \
         (see /sys/devices/system/node) or none"
    )]
    NumaPlacement {
        /// The node asked for.
        node: u32,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },

    /// A NIXL agent configuration (from code, a TOML file or the environment) is invalid.
    #[error("invalid NIXL agent configuration ({origin}): {message}")]
    Config {
        /// Where the configuration came from: `code`, a file path, or an environment variable.
        origin: String,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A configured NIXL backend has no plugin on this machine.
    #[error(
        "NIXL backend '{backend}' is not installed (installed plugins: {installed}); check the \
         spelling or install the plugin into NIXL's plugin directory"
    )]
    UnknownBackend {
        /// The backend that was asked for.
        backend: String,
        /// The plugins NIXL can load here, comma-separated.
        installed: String,
    },

    /// An agent does not run a backend an operation needs.
    #[error(
        "agent '{agent}' has no running '{backend}' backend (running: {running}{failed}); add it \
         to the agent's backends (config `backends`, or KVMEM_NIXL_BACKENDS)"
    )]
    BackendUnavailable {
        /// The agent's name.
        agent: String,
        /// The backend that was asked for.
        backend: String,
        /// The backends that did start, comma-separated.
        running: String,
        /// Backends that were configured but failed to start, with their errors.
        failed: String,
    },

    /// A range overlaps memory the agent already registered.
    #[error(
        "{mem_type:?} range {addr:#x}+{len} (device {device_id}) overlaps {existing_addr:#x}+\
         {existing_len}, which agent '{agent}' already registered; register each range once and \
         share the registered value (for example through a Buffer)"
    )]
    AlreadyRegistered {
        /// The agent's name.
        agent: String,
        /// NIXL memory type of the range.
        mem_type: nixl_sys::MemType,
        /// Device id (CUDA ordinal, file descriptor, or 0).
        device_id: u64,
        /// Start of the refused range.
        addr: u64,
        /// Length of the refused range.
        len: usize,
        /// Start of the registration it overlaps.
        existing_addr: u64,
        /// Length of the registration it overlaps.
        existing_len: usize,
    },

    /// Memory given to a transfer is not registered with NIXL.
    #[error(
        "{what} is not registered with a NIXL agent; register it (kvmem::nixl::register) and \
         use the registered value, or a view of it, in transfers"
    )]
    NotRegistered {
        /// What was not registered.
        what: String,
    },

    /// A peer name the agent has no metadata for.
    #[error(
        "agent '{agent}' knows no peer named '{peer}' (known: {known}); load its metadata first \
         (load_peer, connect_listener or connect_etcd)"
    )]
    UnknownPeer {
        /// The local agent's name.
        agent: String,
        /// The unknown peer.
        peer: String,
        /// The peers the agent does know, comma-separated.
        known: String,
    },

    /// A peer was invalidated and has not been reconnected.
    #[error(
        "peer '{peer}' was invalidated on agent '{agent}'; reconnect to it (Agent::reconnect, or \
         load its metadata again) and prepare its lists again before transferring"
    )]
    PeerInvalidated {
        /// The local agent's name.
        agent: String,
        /// The invalidated peer.
        peer: String,
    },

    /// NIXL dropped a peer's metadata on its own (the peer disconnected or withdrew it).
    #[error(
        "NIXL on agent '{agent}' no longer holds metadata for peer '{peer}' (it disconnected, \
         exited or withdrew its metadata); reconnect to it"
    )]
    PeerUnavailable {
        /// The local agent's name.
        agent: String,
        /// The peer.
        peer: String,
    },

    /// A remote block does not lie inside memory the peer registered.
    #[error(
        "remote block {index} ({addr:#x}+{len}, {mem_type:?}, device {device_id}) is not inside \
         one region peer '{peer}' registered; use addresses inside the peer's registered regions"
    )]
    RemoteOutOfBounds {
        /// The peer.
        peer: String,
        /// Index of the block in its list.
        index: usize,
        /// Start of the block.
        addr: u64,
        /// Length of the block.
        len: usize,
        /// NIXL memory type of the block.
        mem_type: nixl_sys::MemType,
        /// Device id of the block.
        device_id: u64,
    },

    /// Peer metadata could not be parsed or loaded.
    #[error("malformed NIXL peer metadata: {reason}")]
    MalformedMetadata {
        /// What was wrong with it.
        reason: String,
        /// NIXL's error, when NIXL refused it.
        #[source]
        source: Option<nixl_sys::NixlError>,
    },

    /// The two sides of a transfer do not fit together.
    #[error("transfer lists do not fit together: {reason}")]
    TransferMismatch {
        /// What does not fit.
        reason: String,
    },

    /// A transfer failed after it was posted.
    #[error("{op} with '{peer}' failed: {source}; the data it moved is incomplete")]
    TransferFailed {
        /// `READ` or `WRITE`.
        op: &'static str,
        /// The peer (or the agent itself, for files).
        peer: String,
        /// NIXL's error.
        #[source]
        source: nixl_sys::NixlError,
    },

    /// A wait ran out of time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        waited: std::time::Duration,
    },

    /// etcd metadata exchange without etcd configured.
    #[error(
        "agent '{agent}' cannot use etcd: NIXL_ETCD_ENDPOINTS was not set in the environment when \
         the agent was created; export it (e.g. http://127.0.0.1:2379) before starting the process"
    )]
    EtcdNotConfigured {
        /// The agent's name.
        agent: String,
    },
}

impl Error {
    pub(crate) fn nixl(op: &'static str, source: nixl_sys::NixlError) -> Self {
        Error::Nixl { op, source }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
