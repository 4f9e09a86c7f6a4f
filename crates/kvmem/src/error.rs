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

    /// A NIXL call failed.
    #[error("NIXL failed to {op}: {source}")]
    Nixl {
        /// The operation.
        op: &'static str,
        /// NIXL's error.
        #[source]
        source: nixl_sys::NixlError,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
