//! The kvmem NIXL agent: one `nixl_sys::Agent`, the backends that really started on it, and the
//! bookkeeping kvmem keeps next to it (registered ranges, known peers, received notifications).

use super::config::AgentConfig;
use super::metadata::PeerTable;
use super::registry::Registry;
use crate::error::{Error, NixlError, Result};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A NIXL agent: registers memory, exchanges metadata with peers and moves data.
///
/// Cheap to clone; clones share the agent. The NIXL agent itself is destroyed when the last clone,
/// the last [`Registered`](super::Registered) region and the last transfer of it are gone.
///
/// ```no_run
/// use kvmem::nixl::{Agent, AgentConfig};
/// let agent = Agent::new(AgentConfig {
///     backends: vec!["UCX".into(), "POSIX".into()],
///     ..AgentConfig::new("prefill-0")
/// })?;
/// agent.require_backend("ucx")?; // names are case-insensitive
/// # Ok::<(), kvmem::Error>(())
/// ```
#[derive(Clone)]
pub struct Agent {
    pub(crate) shared: Arc<Shared>,
}

/// State shared by the clones of an [`Agent`].
pub(crate) struct Shared {
    pub(crate) nixl: nixl_sys::Agent,
    pub(crate) name: String,
    pub(crate) config: AgentConfig,
    backends: Vec<RunningBackend>,
    failed: Vec<(String, String)>,
    etcd: bool,
    pub(crate) registry: Mutex<Registry>,
    pub(crate) peers: Mutex<PeerTable>,
    pub(crate) inbox: Inbox,
}

/// Received notifications, per sending peer.
#[derive(Default)]
pub(crate) struct Inbox {
    pub(crate) queues: Mutex<HashMap<String, VecDeque<Vec<u8>>>>,
    /// Notifications dropped because their sender is not on the allowlist.
    pub(crate) refused: std::sync::atomic::AtomicU64,
}

struct RunningBackend {
    name: String,
    // Kept for NIXL calls that name a backend; NIXL owns and destroys it with the agent.
    #[allow(dead_code)]
    handle: nixl_sys::Backend,
}

/// Locks a mutex, recovering the data if another thread panicked while holding it: every
/// critical section in this module leaves the protected maps consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    /// Starts an agent: loads the NIXL runtime, creates the agent and starts every configured
    /// backend with its parameters on top of the plugin's defaults.
    ///
    /// A backend whose plugin is installed but fails to start (GDS without a GPU, say) does not
    /// stop the agent: it is logged and reported by [`failed_backends`](Self::failed_backends),
    /// and [`require_backend`](Self::require_backend) explains it. At least one backend must start.
    ///
    /// # Errors
    /// [`NixlError::Unavailable`] without the NIXL runtime; [`ConfigError::Agent`](crate::error::ConfigError::Agent) for an invalid
    /// configuration; [`NixlError::UnknownBackend`] for a backend with no installed plugin;
    /// [`NixlError::BackendUnavailable`] when no backend started; [`NixlError::Call`] when NIXL refuses
    /// to create the agent (a listener port already in use, for example).
    pub fn new(config: AgentConfig) -> Result<Self> {
        super::ensure_loaded()?;
        config.validate("code")?;
        let name = if config.name.is_empty() {
            static SEQ: AtomicU64 = AtomicU64::new(0);
            format!(
                "kvmem-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            )
        } else {
            config.name.clone()
        };
        let nixl = nixl_sys::Agent::new_configured(&name, &config.to_nixl())
            .map_err(|e| Error::nixl("create the agent (is the listener port free?)", e))?;
        let installed: Vec<String> = nixl
            .get_available_plugins()
            .map_err(|e| Error::nixl("list the installed plugins", e))?
            .iter()
            .filter_map(|p| p.ok().map(str::to_owned))
            .collect();

        let mut backends = Vec::new();
        let mut failed = Vec::new();
        for wanted in &config.backends {
            let Some(plugin) = installed.iter().find(|p| p.eq_ignore_ascii_case(wanted)) else {
                return Err(Error::Nixl(NixlError::UnknownBackend {
                    backend: wanted.clone(),
                    installed: sorted_list(&installed),
                }));
            };
            match start_backend(&nixl, plugin, config.params_for(wanted)) {
                Ok(handle) => backends.push(RunningBackend {
                    name: plugin.clone(),
                    handle,
                }),
                Err(e) => {
                    tracing::warn!(agent = %name, backend = %plugin, error = %e, "NIXL backend failed to start");
                    failed.push((plugin.clone(), e.to_string()));
                }
            }
        }
        if backends.is_empty() {
            return Err(Error::Nixl(NixlError::BackendUnavailable {
                agent: name,
                backend: config.backends.join(", "),
                running: "none".to_owned(),
                failed: describe_failures(&failed),
            }));
        }
        let etcd = std::env::var_os("NIXL_ETCD_ENDPOINTS").is_some_and(|v| !v.is_empty());
        tracing::debug!(agent = %name, backends = ?backends.iter().map(|b| &b.name).collect::<Vec<_>>(), etcd, "NIXL agent started");
        Ok(Self {
            shared: Arc::new(Shared {
                nixl,
                name,
                config,
                backends,
                failed,
                etcd,
                registry: Mutex::new(Registry::default()),
                peers: Mutex::new(PeerTable::default()),
                inbox: Inbox::default(),
            }),
        })
    }

    /// The agent's name, by which peers address it.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configuration the agent was started with.
    pub(crate) fn config(&self) -> &AgentConfig {
        &self.shared.config
    }

    /// The backends that started, as NIXL names them (`UCX`, `POSIX`, …), in preference order.
    pub fn backends(&self) -> Vec<&str> {
        self.shared
            .backends
            .iter()
            .map(|b| b.name.as_str())
            .collect()
    }

    /// Configured backends that failed to start, with NIXL's error.
    pub fn failed_backends(&self) -> &[(String, String)] {
        &self.shared.failed
    }

    /// True when `backend` (case-insensitive) started on this agent.
    pub fn has_backend(&self, backend: &str) -> bool {
        self.shared
            .backends
            .iter()
            .any(|b| b.name.eq_ignore_ascii_case(backend))
    }

    /// Succeeds when `backend` (case-insensitive) started on this agent.
    ///
    /// # Errors
    /// [`NixlError::BackendUnavailable`] listing the backends that did start and why others failed.
    pub fn require_backend(&self, backend: &str) -> Result<()> {
        if self.has_backend(backend) {
            return Ok(());
        }
        Err(Error::Nixl(NixlError::BackendUnavailable {
            agent: self.shared.name.clone(),
            backend: backend.to_owned(),
            running: self.backends().join(", "),
            failed: describe_failures(&self.shared.failed),
        }))
    }

    /// True when NIXL_ETCD_ENDPOINTS was set when the agent was created, so that NIXL exchanges
    /// metadata through etcd.
    pub fn uses_etcd(&self) -> bool {
        self.shared.etcd
    }

    pub(crate) fn nixl(&self) -> &nixl_sys::Agent {
        &self.shared.nixl
    }
}

fn start_backend(
    nixl: &nixl_sys::Agent,
    plugin: &str,
    overrides: Option<&std::collections::BTreeMap<String, String>>,
) -> std::result::Result<nixl_sys::Backend, nixl_sys::NixlError> {
    let (_mems, mut params) = nixl.get_plugin_params(plugin)?;
    if let Some(overrides) = overrides {
        let known: Vec<String> = params
            .iter()
            .map(|it| {
                it.filter_map(|kv| kv.ok())
                    .map(|(k, _)| k.to_owned())
                    .collect()
            })
            .unwrap_or_default();
        for (key, value) in overrides {
            if !known.iter().any(|k| k == key) {
                tracing::warn!(backend = %plugin, param = %key, known = ?known, "parameter is not among the plugin's defaults; passing it on anyway");
            }
            params.set(key, value)?;
        }
    }
    nixl.create_backend(plugin, &params)
}

fn sorted_list(items: &[String]) -> String {
    let mut v = items.to_vec();
    v.sort();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

fn describe_failures(failed: &[(String, String)]) -> String {
    if failed.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = failed.iter().map(|(b, e)| format!("{b}: {e}")).collect();
        format!("; failed to start: {}", list.join("; "))
    }
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.shared.name)
            .field("backends", &self.backends())
            .field("etcd", &self.shared.etcd)
            .finish()
    }
}
