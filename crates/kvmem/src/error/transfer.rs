//! Transfer errors.

use super::NixlStatus;
use std::time::Duration;

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

    /// A transfer did not finish by its deadline: the backend (disk, GPU, NIXL peer) stalled.
    /// It was asked to stop, but it may still read the sources and write the destinations, so
    /// the buffers it uses are quarantined: kept allocated (and their files open) for the rest
    /// of the process, never freed, and counted in [`accounting`](crate::accounting).
    #[error(
        "{path} transfer of {bytes} bytes did not finish within {waited:?}: the backend stalled; \
         {held_buffers} buffers ({held_bytes} bytes) it uses are quarantined for the rest of the \
         process because it may still touch them (a NIXL request keeps its own); do not read \
         its destination nor reuse its blocks, and check the disk, GPU or peer"
    )]
    TimedOut {
        /// The path (`host->disk`, `local->remote`, …).
        path: String,
        /// Bytes the transfer was to move.
        bytes: usize,
        /// How long it had.
        waited: Duration,
        /// Buffers quarantined because of it.
        held_buffers: usize,
        /// Their bytes.
        held_bytes: u64,
    },

    /// The two sides of a transfer do not fit together.
    #[error("transfer lists do not fit together: {reason}")]
    Mismatch {
        /// What does not fit.
        reason: String,
    },
}
