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
    /// A bench point's destination did not hold its source's bytes after a transfer that
    /// reported success.
    #[error(
        "bench: WRONG BYTES: {0}. The transfer reported success, so this is a kvmem bug: \
         report it with the command line and `kvmem info`"
    )]
    Verify(String),
    /// A check the demo makes failed: the library returned wrong data.
    #[error("demo check failed: {0}")]
    Check(String),
}

/// Result with [`CliError`].
pub type Result<T> = std::result::Result<T, CliError>;
