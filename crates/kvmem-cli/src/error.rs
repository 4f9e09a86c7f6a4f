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
    /// `kvmem replay` was given a trace or settings it cannot use.
    #[error("replay: {0}")]
    Replay(String),
    /// `--metrics-addr` could not be served.
    #[error("metrics: {0}; pick a free HOST:PORT, or leave --metrics-addr out")]
    Metrics(String),
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

/// How to install what a library error says is missing, as this repository sets it up; the library's
/// own messages name no repository files.
pub fn install_hint(e: &kvmem::Error) -> Option<&'static str> {
    match e {
        kvmem::Error::Nixl(kvmem::error::NixlError::Unavailable { .. }) => Some(
            "in a kvmem checkout, `scripts/setup.sh` installs the NIXL runtime (a .venv with \
             `pip install --no-deps nixl-cu12==1.5.1`) and `source scripts/env.sh` points \
             KVMEM_NIXL_LIB_DIR at it",
        ),
        _ => None,
    }
}

/// A library error's message followed by its install hint, if it has one.
pub fn with_hint(e: &kvmem::Error) -> String {
    match install_hint(e) {
        Some(hint) => format!("{e}\n  hint: {hint}"),
        None => e.to_string(),
    }
}

impl CliError {
    /// The install hint of the library error inside, if any.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            CliError::Kvmem(e) => install_hint(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_adds_the_install_hint_the_library_leaves_out() {
        let missing = kvmem::Error::Nixl(kvmem::error::NixlError::Unavailable {
            searched: "nothing found".into(),
        });
        assert!(!missing.to_string().contains("setup.sh"), "{missing}");
        let text = with_hint(&missing);
        assert!(text.starts_with(&missing.to_string()), "{text}");
        assert!(text.contains("scripts/setup.sh"), "{text}");
        assert!(CliError::Kvmem(missing).hint().is_some());
        let other = kvmem::Error::Bounds(kvmem::error::BoundsError::ZeroSize { what: "x" });
        assert_eq!(with_hint(&other), other.to_string());
        assert!(CliError::Bench("x".into()).hint().is_none());
    }
}
