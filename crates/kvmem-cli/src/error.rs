//! The CLI's error type.

/// Errors the `kvmem` command reports.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// An error from the kvmem library.
    #[error(transparent)]
    Kvmem(#[from] kvmem::Error),
    /// Writing output failed.
    #[error("could not write output: {0}")]
    Output(#[from] std::io::Error),
    /// JSON encoding failed.
    #[error("could not encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `kvmem bench` was given settings it cannot run, or could not write its output.
    #[error("bench: {0}")]
    Bench(String),
    /// An error from the block cache.
    #[error(transparent)]
    Cache(#[from] kvmem::cache::CacheError),
    /// `kvmem replay` was given a trace or settings it cannot use.
    #[error("replay: {0}")]
    Replay(String),
    /// A check the demo makes failed: the library returned wrong data.
    #[error("demo check failed: {0}")]
    Check(String),
}

/// Result with [`CliError`].
pub type Result<T> = std::result::Result<T, CliError>;
