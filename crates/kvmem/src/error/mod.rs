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

mod bounds;
mod cache;
mod config;
mod cuda;
mod io;
mod layout;
mod memory;
mod nixl;
mod peer;
#[cfg(test)]
mod tests;
mod transfer;
mod unsupported;

pub use bounds::{BoundsError, SizeRule};
pub use cache::{CacheError, CacheResult};
pub use config::ConfigError;
pub use cuda::CudaError;
pub use io::IoError;
pub use layout::LayoutError;
pub use memory::MemoryError;
pub use nixl::{NixlError, NixlStatus};
pub use peer::PeerError;
pub use transfer::TransferError;
pub use unsupported::UnsupportedError;

use std::path::PathBuf;
use std::time::Duration;

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
    Cache(#[from] CacheError),
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
