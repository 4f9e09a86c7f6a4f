//! The crate's error type: a small top-level [`Error`] over one error enum per domain.
//!
//! Match on the domain first, then on its variant:
//!
//! ```
//! use kvmem::error::{BoundsError, Error};
//! use kvmem::SystemStorage;
//!
//! match SystemStorage::new(0) {
//!     Err(Error::Bounds(BoundsError::ZeroSize { what })) => println!("{what} was zero"),
//!     Err(other) => println!("{other}"),
//!     Ok(_) => unreachable!("a zero-byte storage is refused"),
//! }
//! ```
//!
//! Every message says what was wrong and, where there is one, what to do. None names a file of
//! kvmem's own repository: how to install a missing runtime is the application's to say.

use std::path::PathBuf;
use std::time::Duration;

use crate::kind::StorageKind;
use crate::region::MemType;

/// Result with kvmem's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in kvmem, by domain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Host memory could not be allocated, placed or sub-allocated.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A size, offset, range or alignment is wrong.
    #[error(transparent)]
    Bounds(#[from] BoundsError),
    /// A block layout, a block list or a tensor description is inconsistent.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The CUDA driver is missing or a CUDA call failed.
    #[error(transparent)]
    Cuda(#[from] CudaError),
    /// The NIXL runtime is missing, a NIXL call failed, or memory is (not) registered.
    #[error(transparent)]
    Nixl(#[from] NixlError),
    /// A peer is unknown or gone, or its metadata or blocks are wrong.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// A file or disk operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A transfer failed, was cancelled, or its two sides do not fit together.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// A configuration or system description could not be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Something this machine, driver or build does not offer was asked for.
    #[error(transparent)]
    Unsupported(#[from] UnsupportedError),
    /// The block cache refused an operation or could not complete it.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// A wait ran out of time.
    #[error(
        "timed out after {waited:?} waiting for {what}; wait longer or check that the other side is running"
    )]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        waited: Duration,
    },
}

/// Host memory could not be allocated, placed or sub-allocated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
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
}

/// How the sizes of a copy's two sides must relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRule {
    /// Source and destination must be the same size.
    Equal,
    /// The destination must hold at least the source.
    AtLeast,
}

impl std::fmt::Display for SizeRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SizeRule::Equal => "exactly as large as",
            SizeRule::AtLeast => "at least as large as",
        })
    }
}

/// A size, offset, range or alignment is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BoundsError {
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

    /// The two sides of a copy have sizes that do not fit together.
    #[error(
        "{op}: the source has {src} bytes and the destination {dst}; give a destination {rule} \
         the source"
    )]
    SizeMismatch {
        /// The operation.
        op: &'static str,
        /// Source size in bytes.
        src: usize,
        /// Destination size in bytes.
        dst: usize,
        /// How the two sizes must relate.
        rule: SizeRule,
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
}

/// A block layout, a block list or a tensor description is inconsistent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A block layout's description or regions are inconsistent.
    #[error("invalid block layout: {0}")]
    Invalid(String),

    /// A tensor description is inconsistent.
    #[error("invalid tensor descriptor: {0}")]
    InvalidTensor(String),

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
    Mismatch {
        /// The differing property (`chunk size`, `layers`, `outer dimension`).
        what: &'static str,
        /// Source value.
        src: usize,
        /// Destination value.
        dst: usize,
    },
}

/// The CUDA driver is missing or a CUDA call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// CUDA cannot be used in this process: no driver library, a driver too old, or no device.
    #[error(
        "CUDA is not available: {reason}. Install the NVIDIA driver (it provides libcuda.so.1) \
         and check that `nvidia-smi` lists a GPU"
    )]
    Unavailable {
        /// What is missing.
        reason: String,
    },

    /// A CUDA device ordinal beyond the devices present.
    #[error(
        "CUDA device {ordinal} does not exist: this machine has {count} device(s); use an \
         ordinal below {count} (CUDA_VISIBLE_DEVICES may hide some)"
    )]
    DeviceNotFound {
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
    OutOfMemory {
        /// CUDA ordinal.
        device: u32,
        /// Requested size in bytes.
        requested: usize,
        /// Free device memory in bytes when the allocation failed.
        free: usize,
        /// Total device memory in bytes.
        total: usize,
    },

    /// A CUDA driver call failed.
    #[error("CUDA failed to {op}: {name} (error {code}): {message}")]
    Driver {
        /// The operation.
        op: &'static str,
        /// The `CUresult` value.
        code: u32,
        /// The `CUresult` name, e.g. `CUDA_ERROR_INVALID_VALUE`.
        name: String,
        /// The driver's description.
        message: String,
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
}

/// The status a failed NIXL call returned (kvmem's own copy, so that the error does not expose
/// the bindings' types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NixlStatus {
    /// NIXL refused a parameter.
    #[error("NIXL refused a parameter")]
    InvalidParam,
    /// A NIXL backend reported an error.
    #[error("a NIXL backend reported an error")]
    Backend,
    /// A name passed to NIXL contains a NUL byte.
    #[error("a name passed to NIXL contains a NUL byte")]
    InvalidString,
    /// An index passed to NIXL is out of range.
    #[error("an index passed to NIXL is out of range")]
    IndexOutOfBounds,
    /// NIXL was given or returned an invalid pointer.
    #[error("NIXL was given or returned an invalid pointer")]
    InvalidDataPointer,
    /// NIXL could not create a transfer request.
    #[error("NIXL could not create a transfer request")]
    CreateRequest,
    /// NIXL could not create a registration list.
    #[error("NIXL could not create a registration descriptor list")]
    CreateRegistrationList,
    /// NIXL could not add a registration descriptor.
    #[error("NIXL could not add a registration descriptor")]
    AddRegistration,
    /// NIXL could not prepare a descriptor list.
    #[error("NIXL could not prepare a descriptor list")]
    PrepareList,
    /// NIXL could not create a backend.
    #[error("NIXL could not create a backend")]
    CreateBackend,
    /// NIXL has no telemetry for a request.
    #[error("NIXL has no telemetry for this request (telemetry off, or the request not done)")]
    NoTelemetry,
    /// NIXL does not know the object named (a peer, a request, a backend).
    #[error("NIXL does not know the object named")]
    NotFound,
}

impl NixlStatus {
    /// kvmem's status for an error of the NIXL bindings.
    pub(crate) fn of(e: &nixl_sys::NixlError) -> Self {
        use nixl_sys::NixlError as E;
        match e {
            E::InvalidParam => Self::InvalidParam,
            E::BackendError => Self::Backend,
            E::StringConversionError(_) => Self::InvalidString,
            E::IndexOutOfBounds => Self::IndexOutOfBounds,
            E::InvalidDataPointer => Self::InvalidDataPointer,
            E::FailedToCreateXferRequest => Self::CreateRequest,
            E::RegDescListCreationFailed => Self::CreateRegistrationList,
            E::RegDescAddFailed => Self::AddRegistration,
            E::FailedToCreateXferDlistHandle => Self::PrepareList,
            E::FailedToCreateBackend => Self::CreateBackend,
            E::NoTelemetry => Self::NoTelemetry,
            E::NotFound => Self::NotFound,
        }
    }
}

/// The NIXL runtime is missing, a NIXL call failed, or memory is (not) registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NixlError {
    /// The NIXL runtime library cannot be loaded.
    #[error(
        "the NIXL runtime (libnixl_capi.so) is not available ({searched}); install NIXL (for \
         example the nixl-cu12 or nixl-cu13 Python package) and point KVMEM_NIXL_LIB_DIR at the \
         directory holding libnixl_capi.so"
    )]
    Unavailable {
        /// Where kvmem looked and what failed.
        searched: String,
    },

    /// A NIXL call failed.
    #[error("NIXL failed to {op}: {source}")]
    Call {
        /// The operation.
        op: &'static str,
        /// NIXL's status.
        #[source]
        source: NixlStatus,
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
        mem_type: MemType,
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
}

/// A peer is unknown or gone, or its metadata or blocks are wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// A peer name the agent has no metadata for.
    #[error(
        "agent '{agent}' knows no peer named '{peer}' (known: {known}); load its metadata first \
         (load_peer, connect_listener or connect_etcd)"
    )]
    Unknown {
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
    Invalidated {
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
    Unavailable {
        /// The local agent's name.
        agent: String,
        /// The peer.
        peer: String,
    },

    /// A peer that is not on the agent's allowlist ([`AgentConfig::allowed_peers`](crate::nixl::AgentConfig::allowed_peers)).
    #[error(
        "agent '{agent}' does not take metadata from '{peer}': it is not on the allowlist \
         ({allowed}); add it to allowed_peers (KVMEM_NIXL_ALLOWED_PEERS) if it should be"
    )]
    NotAllowed {
        /// The local agent's name.
        agent: String,
        /// The refused peer.
        peer: String,
        /// The allowed peers, comma-separated.
        allowed: String,
    },

    /// A remote block does not lie inside memory the peer registered.
    #[error(
        "remote block {index} ({addr:#x}+{len}, {mem_type:?}, device {device_id}) is not inside \
         one region peer '{peer}' registered; use addresses inside the peer's registered regions"
    )]
    OutOfBounds {
        /// The peer.
        peer: String,
        /// Index of the block in its list.
        index: usize,
        /// Start of the block.
        addr: u64,
        /// Length of the block.
        len: usize,
        /// NIXL memory type of the block.
        mem_type: MemType,
        /// Device id of the block.
        device_id: u64,
    },

    /// Peer metadata could not be parsed or loaded.
    #[error("malformed NIXL peer metadata: {reason}; send the peer's current metadata again")]
    MalformedMetadata {
        /// What was wrong with it.
        reason: String,
        /// NIXL's status, when NIXL refused it.
        #[source]
        source: Option<NixlStatus>,
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

/// A file or disk operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// A file-system operation failed.
    #[error("could not {op} {}: {source}", path.display())]
    File {
        /// What was being done.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// A read or write moved fewer bytes than asked.
    #[error(
        "{op} of {expected} bytes at offset {offset} moved only {actual} bytes; check that the \
         file is as large as the transfer assumes"
    )]
    Short {
        /// `read` or `write`.
        op: &'static str,
        /// Offset in the file.
        offset: u64,
        /// Bytes asked for.
        expected: usize,
        /// Bytes moved.
        actual: usize,
    },

    /// The disk I/O backend could not be started.
    #[error(
        "the {backend} disk backend is unavailable: {source}; check that the kernel allows it (e.g. /proc/sys/kernel/io_uring_disabled)"
    )]
    BackendUnavailable {
        /// The backend.
        backend: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// A read or write of a transfer failed.
    #[error("transfer {op} of {len} bytes at file offset {offset} (fd {fd}) failed: {source}")]
    Transfer {
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
}

/// A transfer failed, was cancelled, or its two sides do not fit together.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// A transfer was cancelled before it finished; the destination may be partly written.
    #[error("transfer cancelled after {done} of {total} bytes; the destination is partly written")]
    Cancelled {
        /// Bytes known to be copied.
        done: usize,
        /// Bytes the transfer would have copied.
        total: usize,
    },

    /// A transfer worker stopped without reporting a result.
    #[error(
        "the transfer worker stopped before finishing (it panicked or was shut down); the destination is undefined"
    )]
    Aborted,

    /// A transfer worker thread could not be started.
    #[error(
        "could not start the {worker} thread: {source}; the process may have reached its thread \
         or memory limit"
    )]
    WorkerSpawn {
        /// The worker.
        worker: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// A transfer failed after it was posted.
    #[error("{op} with '{peer}' failed: {source}; the data it moved is incomplete")]
    Failed {
        /// `READ` or `WRITE`.
        op: &'static str,
        /// The peer (or the agent itself, for files).
        peer: String,
        /// NIXL's status.
        #[source]
        source: NixlStatus,
    },

    /// The two sides of a transfer do not fit together.
    #[error("transfer lists do not fit together: {reason}")]
    Mismatch {
        /// What does not fit.
        reason: String,
    },
}

/// A configuration or system description could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A NIXL agent configuration (from code, a TOML file or the environment) is invalid.
    #[error("invalid NIXL agent configuration ({origin}): {message}")]
    Agent {
        /// Where the configuration came from: `code`, a file path, or an environment variable.
        origin: String,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A topology file (sysfs, procfs) holds something that cannot be parsed.
    #[error("invalid topology data: {0}")]
    Topology(String),
}

/// Something this machine, driver or build does not offer was asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnsupportedError {
    /// A feature this machine, driver or build does not offer was asked for explicitly.
    #[error("not available here: {what}")]
    Feature {
        /// What is missing and why.
        what: String,
    },

    /// An operation needs a different kind of memory than it was given.
    #[error("{op} needs {expected} memory, but got {actual}")]
    WrongStorageKind {
        /// The operation.
        op: &'static str,
        /// What it needs.
        expected: &'static str,
        /// What it got.
        actual: StorageKind,
    },

    /// No executor in this build can move bytes between these two kinds of storage.
    #[error("transfers from {src} to {dst} memory are not supported: {reason}")]
    Transfer {
        /// Source kind.
        src: StorageKind,
        /// Destination kind.
        dst: StorageKind,
        /// Why, and what to use instead.
        reason: &'static str,
    },

    /// The two ends of a transfer cannot be joined (e.g. both are remote, or a remote end meets
    /// a local layout that is not registered with NIXL).
    #[error("this transfer is not supported: {reason}")]
    Endpoints {
        /// Why, and what to do instead.
        reason: String,
    },
}

impl Error {
    /// A failed NIXL call.
    pub(crate) fn nixl(op: &'static str, source: nixl_sys::NixlError) -> Self {
        NixlError::Call {
            op,
            source: NixlStatus::of(&source),
        }
        .into()
    }

    /// A failed file-system operation on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IoError::File {
            op,
            path: path.into(),
            source,
        }
        .into()
    }

    /// A worker thread that could not be started.
    pub(crate) fn spawn(worker: &'static str, source: std::io::Error) -> Self {
        TransferError::WorkerSpawn { worker, source }.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Library messages say what to do without naming files of kvmem's own repository.
    #[test]
    fn messages_name_no_repository_files() {
        let errors: Vec<Error> = vec![
            NixlError::Unavailable {
                searched: "KVMEM_NIXL_LIB_DIR unset".into(),
            }
            .into(),
            CudaError::Unavailable {
                reason: "no libcuda.so.1".into(),
            }
            .into(),
            Error::spawn("test worker", std::io::Error::other("no threads left")),
        ];
        for e in errors {
            let text = e.to_string();
            for word in ["scripts/", "setup.sh", ".venv", "==1."] {
                assert!(!text.contains(word), "{text:?} names {word:?}");
            }
        }
    }

    #[test]
    fn nixl_status_is_kvmem_own_and_keeps_the_distinction_callers_need() {
        assert_eq!(
            NixlStatus::of(&nixl_sys::NixlError::NotFound),
            NixlStatus::NotFound
        );
        assert_eq!(
            NixlStatus::of(&nixl_sys::NixlError::BackendError),
            NixlStatus::Backend
        );
        let nul = std::ffi::CString::new("a\0b").unwrap_err();
        assert_eq!(
            NixlStatus::of(&nixl_sys::NixlError::StringConversionError(nul)),
            NixlStatus::InvalidString
        );
        let e = Error::nixl("list plugins", nixl_sys::NixlError::InvalidParam);
        assert!(matches!(
            e,
            Error::Nixl(NixlError::Call {
                op: "list plugins",
                source: NixlStatus::InvalidParam
            })
        ));
        assert!(std::error::Error::source(&e).is_some(), "{e}");
    }

    #[test]
    fn a_failed_thread_spawn_is_not_an_allocation_failure() {
        let e = Error::spawn("NIXL polling", std::io::Error::other("EAGAIN"));
        assert!(
            matches!(
                e,
                Error::Transfer(TransferError::WorkerSpawn {
                    worker: "NIXL polling",
                    ..
                })
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("NIXL polling thread"), "{e}");
    }

    #[test]
    fn size_rules_say_how_the_sizes_must_relate() {
        let e: Error = BoundsError::SizeMismatch {
            op: "a region copy",
            src: 8,
            dst: 4,
            rule: SizeRule::AtLeast,
        }
        .into();
        assert!(e.to_string().contains("at least as large as"), "{e}");
    }
}
