//! Configuration errors.

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
