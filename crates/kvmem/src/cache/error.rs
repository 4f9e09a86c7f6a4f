//! The cache's errors: the [`Cache`](crate::Error::Cache) domain of kvmem's error.

use super::key::BlockKey;
use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong in the block cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The configuration cannot work.
    #[error("invalid cache configuration: {0}")]
    Config(String),
    /// `keys` and `block_ids` differ in length.
    #[error("{keys} keys but {ids} block ids; pass one GPU block id per key")]
    CountMismatch {
        /// Keys passed.
        keys: usize,
        /// Block ids passed.
        ids: usize,
    },
    /// The GPU layout's blocks are not the cache's geometry.
    #[error(
        "the layout's blocks ({layers} layers x {outer} parts x {chunk} bytes) differ from the \
         cache's ({want_layers} x {want_outer} x {want_chunk}); build the cache from the same \
         LayoutConfig as the engine's KV cache"
    )]
    Geometry {
        /// Layers of the layout passed.
        layers: usize,
        /// Outer dimension of the layout passed.
        outer: usize,
        /// Chunk bytes of the layout passed.
        chunk: usize,
        /// The cache's layers.
        want_layers: usize,
        /// The cache's outer dimension.
        want_outer: usize,
        /// The cache's chunk bytes.
        want_chunk: usize,
    },
    /// The operation did not finish before its deadline; the keys it stored stay absent and
    /// the keys it loaded must not be used.
    #[error(
        "cache {op} of {keys} block(s) timed out after {waited:?}; retry with a longer timeout"
    )]
    Timeout {
        /// The operation.
        op: &'static str,
        /// How many keys it covered.
        keys: usize,
        /// How long it waited.
        waited: Duration,
    },
    /// A copy of the operation failed; `keys` are the blocks it did not complete.
    #[error("cache {op} failed for {} block(s) (first {:?}): {source}", keys.len(), keys.first())]
    Failed {
        /// The operation.
        op: &'static str,
        /// The keys that failed.
        keys: Vec<BlockKey>,
        /// The copy's error.
        #[source]
        source: Box<crate::Error>,
    },
    /// The operation was cancelled through its handle.
    #[error("cache {op} cancelled; its stores stay absent and its loads must not be used")]
    Cancelled {
        /// The operation.
        op: &'static str,
    },
    /// The disk directory was written for another geometry, capacity or model.
    #[error(
        "the cache directory {} was written for {found}, not {expected}; use another directory \
         or delete this one",
        dir.display()
    )]
    DirectoryMismatch {
        /// The directory.
        dir: PathBuf,
        /// What this cache expects.
        expected: String,
        /// What the directory says.
        found: String,
    },
    /// The disk directory is used by another open cache.
    #[error(
        "the cache directory {} is in use by another process (its lock is held); give each \
         cache its own directory",
        dir.display()
    )]
    DirectoryLocked {
        /// The directory.
        dir: PathBuf,
    },
    /// The cache's worker threads are gone (the cache is shutting down).
    #[error("the cache is shutting down; no new operations are accepted")]
    ShutDown,
}

/// The cache's result type: kvmem's [`Error`](crate::Error), whose
/// [`Cache`](crate::Error::Cache) domain holds a [`CacheError`].
pub type CacheResult<T> = crate::Result<T>;
