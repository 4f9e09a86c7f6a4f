//! NIXL from Python: `kvmem.Agent`, layouts registered with it, peers' layouts, and
//! notifications. Moves go through `Engine.write_remote` / `Engine.read_remote`.

use crate::errors::{IntoPy, invalid};
use crate::layout::Layout;
use kvmem::Buffer;
use kvmem::layout::BlockLayout;
use kvmem::nixl::{Agent as NixlAgent, AgentConfig, Peer};
use kvmem::transfer::{LayoutDescriptor, RegisteredLayout as Registered, RemoteLayout as Remote};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Arc;
use std::time::Duration;

/// A NIXL agent: registers memory, exchanges metadata with peers, moves blocks to and from them.
#[pyclass(module = "kvmem", frozen)]
pub struct Agent {
    inner: NixlAgent,
}

#[pymethods]
impl Agent {
    /// An agent named `name` with `backends` (default `["UCX"]`). Alternatively `config` is a
    /// TOML text of kvmem's agent configuration (see docs), or `from_env=True` reads `KVMEM_NIXL_*`.
    /// Raises `kvmem.UnavailableError` without the NIXL runtime.
    #[new]
    #[pyo3(signature = (name=None, *, backends=None, config=None, listen_port=None))]
    fn new(
        py: Python<'_>,
        name: Option<String>,
        backends: Option<Vec<String>>,
        config: Option<&str>,
        listen_port: Option<u16>,
    ) -> PyResult<Self> {
        let mut cfg = match (config, name) {
            (Some(toml), None) => AgentConfig::from_toml_str(toml).py()?,
            (None, Some(name)) => AgentConfig::new(name),
            (None, None) => AgentConfig::from_env().py()?,
            (Some(_), Some(_)) => {
                return Err(invalid("pass either name or config, not both"));
            }
        };
        if let Some(b) = backends {
            cfg.backends = b;
        }
        if let Some(p) = listen_port {
            cfg.listen = true;
            cfg.listen_port = p;
        }
        let inner = py.detach(|| NixlAgent::new(cfg)).py()?;
        Ok(Self { inner })
    }

    /// The agent's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The backends that started.
    #[getter]
    fn backends(&self) -> Vec<String> {
        self.inner
            .backends()
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// This agent's metadata (NIXL blob and kvmem's manifest of registered regions), for a peer's
    /// `load_peer`.
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let m = py.detach(|| self.inner.local_metadata()).py()?;
        Ok(PyBytes::new(py, &m))
    }

    /// Loads a peer's `metadata()`; returns the peer's name.
    fn load_peer(&self, py: Python<'_>, metadata: Vec<u8>) -> PyResult<String> {
        let peer = py.detach(|| self.inner.load_peer(&metadata)).py()?;
        Ok(peer.name().to_string())
    }

    /// Registers every region of `layout` with this agent and prepares it for transfers with the
    /// agent's peers. The layout's memory stays registered while the result lives.
    fn register(&self, py: Python<'_>, layout: &Layout) -> PyResult<RegisteredLayout> {
        let agent = self.inner.clone();
        let l = layout.inner.clone();
        let registered = py
            .detach(move || -> kvmem::Result<Registered> {
                let regions = l
                    .regions()
                    .iter()
                    .map(|r| {
                        agent
                            .register(r.clone())
                            .map(Buffer::new)
                            .map_err(|e| e.error)
                    })
                    .collect::<kvmem::Result<Vec<_>>>()?;
                let relaid = BlockLayout::new(*l.config(), l.kind(), regions, l.alignment())?;
                Registered::new(&agent, relaid)
            })
            .py()?;
        Ok(RegisteredLayout {
            inner: Arc::new(registered),
        })
    }

    /// A peer's layout from the `descriptor()` bytes it sent; `peer` (its name) must be loaded.
    fn import_layout(
        &self,
        py: Python<'_>,
        peer: &str,
        descriptor: Vec<u8>,
    ) -> PyResult<RemoteLayout> {
        let d: LayoutDescriptor = serde_json::from_slice(&descriptor)
            .map_err(|e| invalid(format!("descriptor: not a kvmem layout descriptor: {e}")))?;
        let peer: Peer = self.inner.peer(peer).py()?;
        let remote = py.detach(|| Remote::new(&self.inner, &peer, d)).py()?;
        Ok(RemoteLayout {
            inner: Arc::new(remote),
        })
    }

    /// Sends `message` to `peer` as a notification.
    fn notify(&self, py: Python<'_>, peer: &str, message: Vec<u8>) -> PyResult<()> {
        py.detach(|| self.inner.notify(peer, &message)).py()
    }

    /// Waits up to `timeout` seconds for the next notification from `peer`; raises
    /// `TimeoutError` when none came.
    #[pyo3(signature = (peer, timeout=10.0))]
    fn wait_notification<'py>(
        &self,
        py: Python<'py>,
        peer: &str,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let t = Duration::try_from_secs_f64(timeout).map_err(|_| {
            invalid(format!(
                "timeout {timeout} is not a valid number of seconds"
            ))
        })?;
        let m = py.detach(|| self.inner.wait_notification(peer, t)).py()?;
        Ok(PyBytes::new(py, &m))
    }

    /// The notifications received from `peer` so far (taken).
    fn take_notifications<'py>(
        &self,
        py: Python<'py>,
        peer: &str,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        py.detach(|| self.inner.poll_notifications()).py()?;
        let all = self.inner.take_notifications(peer).py()?;
        Ok(all.iter().map(|m| PyBytes::new(py, m)).collect())
    }
}

/// A local layout registered with an agent.
#[pyclass(module = "kvmem", frozen)]
pub struct RegisteredLayout {
    pub(crate) inner: Arc<Registered>,
}

#[pymethods]
impl RegisteredLayout {
    /// The layout descriptor (JSON bytes) to send to peers, which pass it to `import_layout`.
    fn descriptor<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let d = serde_json::to_vec(&self.inner.descriptor()).map_err(|e| {
            crate::errors::Error::new_err(format!("cannot encode the descriptor: {e}"))
        })?;
        Ok(PyBytes::new(py, &d))
    }

    /// Blocks in the layout.
    #[getter]
    fn num_blocks(&self) -> usize {
        self.inner.layout().num_blocks()
    }
}

/// A peer's layout, as imported from its descriptor.
#[pyclass(module = "kvmem", frozen)]
pub struct RemoteLayout {
    pub(crate) inner: Arc<Remote>,
}

#[pymethods]
impl RemoteLayout {
    /// The peer's name.
    #[getter]
    fn peer(&self) -> String {
        self.inner.peer().name().to_string()
    }

    /// Blocks in the layout.
    #[getter]
    fn num_blocks(&self) -> usize {
        self.inner.config().num_blocks
    }
}
