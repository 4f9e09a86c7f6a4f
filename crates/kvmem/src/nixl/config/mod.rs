//! How a kvmem NIXL [`Agent`](super::Agent) is set up: its name, the backends it starts (with
//! their parameters), NIXL's threads, and how large one registration may be.
//!
//! A configuration comes from code ([`AgentConfig::new`] and struct-update syntax over its public fields), from a TOML
//! file ([`AgentConfig::from_toml_file`]), or from the environment ([`AgentConfig::from_env`]),
//! which starts from the file named by `KVMEM_NIXL_CONFIG` (if set) and then applies the variables
//! below on top.
//!
//! # TOML
//!
//! ```toml
//! name = "prefill-0"            # agent name, unique among the agents that talk to each other
//! backends = ["UCX", "POSIX"]   # started in this order; the order is NIXL's preference order
//! progress_thread = true        # NIXL's progress thread
//! progress_delay_us = 100       # 0 makes NIXL's UCX progress thread busy-poll a core
//! listen = true                 # NIXL's metadata listener socket
//! listen_port = 5555            # 0 = NIXL's default port (8888)
//! listener_delay_us = 100000    # how often NIXL's listener/etcd thread wakes up
//! thread_sync = "rw"            # none | strict | rw | default (NIXL's thread-safety mode)
//! registration_chunk = "64GiB"  # bytes (integer) or with a binary suffix K/M/G/T[iB]
//! allowed_peers = ["decode-0"]  # peers whose metadata and notifications are taken; [] = any
//!
//! [backend_params.UCX]          # parameters handed to a backend, on top of NIXL's defaults
//! ucx_error_handling_mode = "peer"
//!
//! [backend_params.GDS_MT]       # names with underscores need no escaping here
//! thread_count = 8              # strings, integers, floats and booleans are all accepted
//! ```
//!
//! # Environment variables
//!
//! | variable | meaning |
//! |---|---|
//! | `KVMEM_NIXL_CONFIG` | path of a TOML file to start from |
//! | `KVMEM_NIXL_NAME` | agent name |
//! | `KVMEM_NIXL_BACKENDS` | comma-separated backends, e.g. `UCX,POSIX` |
//! | `KVMEM_NIXL_BACKEND_<BACKEND>__<PARAM>` | one backend parameter: the backend name, then a **double** underscore, then the parameter name, e.g. `KVMEM_NIXL_BACKEND_GDS_MT__THREAD_COUNT=8` or `KVMEM_NIXL_BACKEND_UCX__UCX_DEVICES=mlx5_0:1`. The backend is matched case-insensitively against the configured backends; the parameter name is lower-cased (NIXL's parameter names are lower case) |
//! | `KVMEM_NIXL_PROGRESS_THREAD` | `1`/`0`, `true`/`false`, `on`/`off`, `yes`/`no` |
//! | `KVMEM_NIXL_PROGRESS_DELAY_US` | microseconds |
//! | `KVMEM_NIXL_LISTEN` | enable the metadata listener (boolean as above) |
//! | `KVMEM_NIXL_LISTEN_PORT` | listener port |
//! | `KVMEM_NIXL_LISTENER_DELAY_US` | microseconds |
//! | `KVMEM_NIXL_ALLOWED_PEERS` | comma-separated peer agent names (empty: any peer) |
//! | `KVMEM_NIXL_THREAD_SYNC` | `none`, `strict`, `rw` or `default` |
//! | `KVMEM_NIXL_REGISTRATION_CHUNK` | bytes, e.g. `68719476736` or `64GiB` |
//!
//! NIXL itself reads `NIXL_ETCD_ENDPOINTS` (and `NIXL_ETCD_NAMESPACE`) when an agent is created;
//! see [`peer`](super::peer) for etcd metadata exchange. Any other `KVMEM_NIXL_*` variable is an
//! error, so that a typo does not go unnoticed.

use crate::error::{ConfigError, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Environment variable naming a TOML configuration file.
pub const ENV_CONFIG: &str = "KVMEM_NIXL_CONFIG";
/// Prefix of every environment variable this module reads.
pub const ENV_PREFIX: &str = "KVMEM_NIXL_";
/// Prefix of backend-parameter variables: `KVMEM_NIXL_BACKEND_<BACKEND>__<PARAM>`.
pub const ENV_BACKEND_PARAM_PREFIX: &str = "KVMEM_NIXL_BACKEND_";

/// kvmem's default delay between progress-thread iterations: 100 µs.
///
/// NIXL's UCX progress thread busy-polls when the delay is 0: four idle agents kept 1.3 of this
/// machine's 2 cores busy; with any positive delay the thread waits for events instead (4 % of a
/// core), so kvmem does not use 0 by default.
pub const DEFAULT_PROGRESS_DELAY_US: u64 = 100;

/// The default largest single registration: 64 GiB.
pub const DEFAULT_REGISTRATION_CHUNK: u64 = 64 << 30;

/// NIXL's thread-safety mode for an agent (`nixl_thread_sync_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ThreadSync {
    /// No locking inside NIXL: only for agents used from one thread with no listener or etcd.
    None,
    /// One exclusive lock around every agent call.
    Strict,
    /// Reader/writer locking: transfers run concurrently, metadata changes exclusively. kvmem's
    /// default, because NIXL's own listener/etcd thread changes metadata in the background.
    #[default]
    Rw,
    /// NIXL's default (currently the same as `None`).
    Default,
}

impl ThreadSync {
    fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "none" => Some(Self::None),
            "strict" => Some(Self::Strict),
            "rw" => Some(Self::Rw),
            "default" => Some(Self::Default),
            _ => None,
        }
    }

    pub(crate) fn to_nixl(self) -> nixl_sys::ThreadSync {
        match self {
            Self::None => nixl_sys::ThreadSync::None,
            Self::Strict => nixl_sys::ThreadSync::Strict,
            Self::Rw => nixl_sys::ThreadSync::Rw,
            Self::Default => nixl_sys::ThreadSync::Default,
        }
    }
}

/// Everything needed to start a kvmem NIXL agent. See the [module docs](self) for the TOML and
/// environment forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's name; peers address it by this name. Empty: a unique `kvmem-<pid>-<n>`.
    pub name: String,
    /// Backends to start, in NIXL's preference order (names are matched case-insensitively
    /// against the installed plugins).
    pub backends: Vec<String>,
    /// Parameters per backend, on top of the plugin's defaults.
    #[serde(deserialize_with = "deserialize_params")]
    pub backend_params: BTreeMap<String, BTreeMap<String, String>>,
    /// Run NIXL's progress thread. Without it, data only moves while this process calls into
    /// NIXL (waiting on a transfer, polling notifications), on both sides of a transfer.
    pub progress_thread: bool,
    /// Delay between progress-thread iterations, in microseconds (default
    /// [`DEFAULT_PROGRESS_DELAY_US`]; 0 busy-polls).
    pub progress_delay_us: u64,
    /// Run NIXL's metadata listener socket so that peers can fetch this agent's metadata.
    pub listen: bool,
    /// Port of the listener; 0 means NIXL's default (8888).
    pub listen_port: u16,
    /// How often NIXL's listener/etcd thread wakes up, in microseconds.
    pub listener_delay_us: u64,
    /// NIXL's thread-safety mode.
    pub thread_sync: ThreadSync,
    /// The largest single NIXL registration in bytes; larger regions are registered in chunks of
    /// this size. A multiple of [`PAGE_SIZE`](crate::PAGE_SIZE).
    #[serde(deserialize_with = "deserialize_bytes")]
    pub registration_chunk: u64,
    /// The peer agents this agent takes metadata and notifications from; empty: any peer.
    /// Metadata of another agent is refused ([`PeerError::NotAllowed`](crate::error::PeerError::NotAllowed)),
    /// its notifications are dropped and logged. See docs/SECURITY.md for what this does not
    /// stop (NIXL's listener serves this agent's metadata to anyone who asks).
    pub allowed_peers: Vec<String>,
}

/// Owned strings from any list of string-likes (names of backends or peers).
fn strings(items: impl IntoIterator<Item = impl Into<String>>) -> Vec<String> {
    items.into_iter().map(Into::into).collect()
}

/// The names in a comma-separated list, trimmed, empty ones left out.
fn comma_list(value: &str) -> Vec<String> {
    strings(value.split(',').map(str::trim).filter(|s| !s.is_empty()))
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            backends: vec!["UCX".to_owned()],
            backend_params: BTreeMap::new(),
            progress_thread: true,
            progress_delay_us: DEFAULT_PROGRESS_DELAY_US,
            listen: false,
            listen_port: 0,
            listener_delay_us: 100_000,
            thread_sync: ThreadSync::Rw,
            registration_chunk: DEFAULT_REGISTRATION_CHUNK,
            allowed_peers: Vec::new(),
        }
    }
}

impl AgentConfig {
    /// The default configuration (UCX only, progress thread on, no listener) under `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// True when `peer` may send this agent metadata and notifications.
    pub fn allows_peer(&self, peer: &str) -> bool {
        self.allowed_peers.is_empty() || self.allowed_peers.iter().any(|p| p == peer)
    }

    /// Parses a TOML document.
    ///
    /// # Errors
    /// [`ConfigError::Agent`] for invalid TOML, unknown keys or invalid values.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::parse_toml(text, "TOML")
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// [`IoError::File`](crate::error::IoError::File) when the file cannot be read; [`ConfigError::Agent`] as for
    /// [`from_toml_str`](Self::from_toml_str).
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        Self::parse_toml(&text, &path.display().to_string())
    }

    fn parse_toml(text: &str, origin: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| {
            Error::Config(ConfigError::Agent {
                origin: origin.to_owned(),
                message: e.to_string(),
            })
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// The configuration from the process environment: the file named by `KVMEM_NIXL_CONFIG`
    /// (or the defaults), with the `KVMEM_NIXL_*` variables applied on top.
    ///
    /// # Errors
    /// [`ConfigError::Agent`] for an unknown `KVMEM_NIXL_*` variable or an invalid value;
    /// [`IoError::File`](crate::error::IoError::File) when the configuration file cannot be read.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(std::env::vars_os().filter_map(|(k, v)| {
            Some((k.into_string().ok()?, v.into_string().unwrap_or_default()))
        }))
    }

    /// As [`from_env`](Self::from_env), from an explicit list of variables (for tests and for
    /// embedding: the process environment is not read).
    ///
    /// # Errors
    /// As for [`from_env`](Self::from_env).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let mut config = match vars.get(ENV_CONFIG) {
            Some(path) if !path.is_empty() => Self::from_toml_file(path)?,
            _ => Self::default(),
        };
        config.apply_vars(&vars)?;
        config.validate("environment")?;
        Ok(config)
    }

    /// Applies `KVMEM_NIXL_*` overrides (other variables are ignored).
    fn apply_vars(&mut self, vars: &BTreeMap<String, String>) -> Result<()> {
        let bad = |var: &str, message: String| {
            Error::Config(ConfigError::Agent {
                origin: var.to_owned(),
                message,
            })
        };
        // Plain settings first: the backend list decides which parameter variables are valid.
        let mut params = Vec::new();
        for (var, value) in vars {
            let Some(key) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            match key {
                "CONFIG" => {}
                "NAME" => self.name = value.trim().to_owned(),
                "BACKENDS" => self.backends = comma_list(value),
                "PROGRESS_THREAD" => self.progress_thread = parse_bool(var, value)?,
                "PROGRESS_DELAY_US" => self.progress_delay_us = parse_u64(var, value)?,
                "LISTEN" => self.listen = parse_bool(var, value)?,
                "LISTEN_PORT" => {
                    self.listen_port = value.trim().parse().map_err(|_| {
                        bad(var, format!("'{value}' is not a port number (0-65535)"))
                    })?;
                }
                "LISTENER_DELAY_US" => self.listener_delay_us = parse_u64(var, value)?,
                "ALLOWED_PEERS" => self.allowed_peers = comma_list(value),
                "THREAD_SYNC" => {
                    self.thread_sync = ThreadSync::parse(value).ok_or_else(|| {
                        bad(
                            var,
                            format!("'{value}' is not one of none, strict, rw, default"),
                        )
                    })?;
                }
                "REGISTRATION_CHUNK" => {
                    self.registration_chunk = parse_bytes(value).map_err(|m| bad(var, m))?;
                }
                _ if var.starts_with(ENV_BACKEND_PARAM_PREFIX) => params.push((var, value)),
                _ => {
                    return Err(bad(
                        var,
                        "unknown kvmem NIXL variable; see kvmem::nixl::config for the names"
                            .to_owned(),
                    ));
                }
            }
        }
        for (var, value) in params {
            let rest = &var[ENV_BACKEND_PARAM_PREFIX.len()..];
            let Some((backend, param)) = rest.split_once("__") else {
                return Err(bad(
                    var,
                    "expected KVMEM_NIXL_BACKEND_<BACKEND>__<PARAM> (two underscores between the \
                     backend and the parameter)"
                        .to_owned(),
                ));
            };
            if backend.is_empty() || param.is_empty() {
                return Err(bad(
                    var,
                    "backend and parameter names must not be empty".into(),
                ));
            }
            let Some(configured) = self
                .backends
                .iter()
                .find(|b| b.eq_ignore_ascii_case(backend))
                .cloned()
            else {
                return Err(bad(
                    var,
                    format!(
                        "backend '{backend}' is not among the configured backends ({}); add it \
                         to KVMEM_NIXL_BACKENDS",
                        self.backends.join(", ")
                    ),
                ));
            };
            // Parameters given for the same backend under another spelling are merged.
            let key = self
                .backend_params
                .keys()
                .find(|k| k.eq_ignore_ascii_case(&configured))
                .cloned()
                .unwrap_or(configured);
            self.backend_params
                .entry(key)
                .or_default()
                .insert(param.to_ascii_lowercase(), value.clone());
        }
        Ok(())
    }

    /// Checks the configuration for values NIXL would reject or misread.
    ///
    /// # Errors
    /// [`ConfigError::Agent`] naming the problem.
    pub(crate) fn validate(&self, origin: &str) -> Result<()> {
        let bad = |message: String| {
            Err(Error::Config(ConfigError::Agent {
                origin: origin.to_owned(),
                message,
            }))
        };
        if self.name.contains('\0') {
            return bad("the agent name must not contain NUL bytes".into());
        }
        if self.backends.is_empty() {
            return bad("configure at least one backend (e.g. backends = [\"UCX\"])".into());
        }
        for (i, b) in self.backends.iter().enumerate() {
            if b.trim().is_empty() || b.contains('\0') {
                return bad(format!("backend name '{b}' is empty or contains NUL"));
            }
            if self.backends[..i].iter().any(|o| o.eq_ignore_ascii_case(b)) {
                return bad(format!("backend '{b}' is listed twice"));
            }
        }
        for backend in self.backend_params.keys() {
            if !self
                .backends
                .iter()
                .any(|b| b.eq_ignore_ascii_case(backend))
            {
                return bad(format!(
                    "parameters are given for backend '{backend}', which is not among the \
                     configured backends ({})",
                    self.backends.join(", ")
                ));
            }
        }
        let page = crate::PAGE_SIZE as u64;
        if self.registration_chunk < page || self.registration_chunk % page != 0 {
            return bad(format!(
                "registration_chunk = {} must be a positive multiple of {page} bytes",
                self.registration_chunk
            ));
        }
        Ok(())
    }

    /// The parameters configured for `backend` (matched case-insensitively).
    pub(crate) fn params_for(&self, backend: &str) -> Option<&BTreeMap<String, String>> {
        self.backend_params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(backend))
            .map(|(_, v)| v)
    }

    pub(crate) fn to_nixl(&self) -> nixl_sys::AgentConfig {
        nixl_sys::AgentConfig {
            enable_prog_thread: self.progress_thread,
            enable_listen_thread: self.listen,
            listen_port: i32::from(self.listen_port),
            thread_sync: self.thread_sync.to_nixl(),
            pthr_delay_us: self.progress_delay_us,
            lthr_delay_us: self.listener_delay_us,
            ..nixl_sys::AgentConfig::default()
        }
    }
}

fn parse_bool(var: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err(Error::Config(ConfigError::Agent {
            origin: var.to_owned(),
            message: format!("'{value}' is not a boolean (1/0, true/false, on/off, yes/no)"),
        })),
    }
}

fn parse_u64(var: &str, value: &str) -> Result<u64> {
    value.trim().parse().map_err(|_| {
        Error::Config(ConfigError::Agent {
            origin: var.to_owned(),
            message: format!("'{value}' is not a non-negative integer"),
        })
    })
}

/// Parses a byte count: an integer, optionally followed by a binary suffix (`K`, `KiB`, `M`,
/// `MiB`, `G`, `GiB`, `T`, `TiB`, case-insensitive; `B` alone means bytes).
pub(crate) fn parse_bytes(value: &str) -> std::result::Result<u64, String> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, suffix) = v.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("'{value}' is not a byte count (e.g. 4096, 64MiB, 64GiB)"))?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{value}'; use K, M, G or T (binary: KiB, MiB, GiB, TiB)"
            ));
        }
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{value}' does not fit in 64 bits"))
}

/// A TOML scalar given as a backend parameter; NIXL takes every parameter as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::Str(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

fn deserialize_params<'de, D>(
    deserializer: D,
) -> std::result::Result<BTreeMap<String, BTreeMap<String, String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw = BTreeMap::<String, BTreeMap<String, Scalar>>::deserialize(deserializer)?;
    Ok(raw
        .into_iter()
        .map(|(b, params)| {
            (
                b,
                params
                    .into_iter()
                    .map(|(k, v)| (k, v.into_string()))
                    .collect(),
            )
        })
        .collect())
}

fn deserialize_bytes<'de, D>(deserializer: D) -> std::result::Result<u64, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Bytes {
        Int(u64),
        Str(String),
    }
    match Bytes::deserialize(deserializer)? {
        Bytes::Int(n) => Ok(n),
        Bytes::Str(s) => parse_bytes(&s).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests;
