//! Errors for what this machine, driver or build does not offer.

use crate::kind::StorageKind;

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
