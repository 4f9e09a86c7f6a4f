//! File and disk errors.

use std::path::PathBuf;

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
