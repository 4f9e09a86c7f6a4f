//! kvmem's errors as a Python exception hierarchy.
//!
//! ```text
//! kvmem.Error (Exception)
//! ├── kvmem.InvalidArgumentError (also ValueError): bad layouts, ids, sizes, tensors
//! ├── kvmem.UnavailableError: a missing CUDA driver, NIXL runtime or backend
//! ├── kvmem.OutOfMemoryError (also MemoryError)
//! ├── kvmem.TransferError: a transfer that failed after it started
//! │   └── kvmem.CancelledError: a transfer stopped by cancel()
//! └── kvmem.NixlError: NIXL agents, registration, peers and metadata
//! ```
//!
//! Every exception carries the library's message, which says what to do.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyMemoryError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

create_exception!(
    _kvmem,
    Error,
    PyException,
    "Base class of every error kvmem raises; the message is the library's and says what to do."
);
create_exception!(
    _kvmem,
    TransferError,
    Error,
    "A transfer failed after it started (I/O error, short I/O, NIXL failure, aborted)."
);
create_exception!(
    _kvmem,
    CancelledError,
    TransferError,
    "A transfer stopped early by Handle.cancel()."
);
create_exception!(
    _kvmem,
    UnavailableError,
    Error,
    "A component kvmem needs is missing here: the CUDA driver, a device, the NIXL runtime or a backend."
);
create_exception!(
    _kvmem,
    NixlError,
    Error,
    "NIXL refused an agent, registration, peer, metadata or notification operation."
);

/// `kvmem.InvalidArgumentError` and `kvmem.OutOfMemoryError` derive from a builtin too
/// (`ValueError`, `MemoryError`), which `create_exception!` cannot express; they are created
/// once at import with `type()`.
pub(crate) struct Classes {
    pub invalid: Py<PyAny>,
    pub oom: Py<PyAny>,
}

static CLASSES: std::sync::OnceLock<Classes> = std::sync::OnceLock::new();

/// Creates the two classes with two bases and adds every class to `m`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let make = |name: &str, builtin: Bound<'_, PyAny>, doc: &str| -> PyResult<Py<PyAny>> {
        let bases = PyTuple::new(py, [py.get_type::<Error>().into_any(), builtin])?;
        let ns = pyo3::types::PyDict::new(py);
        ns.set_item("__doc__", doc)?;
        ns.set_item("__module__", "kvmem")?;
        let cls = py
            .import("builtins")?
            .getattr("type")?
            .call1((name, bases, ns))?;
        Ok(cls.unbind())
    };
    let invalid = make(
        "InvalidArgumentError",
        py.get_type::<PyValueError>().into_any(),
        "Bad input: a tensor of the wrong dtype, shape, strides or device, ids out of range, \
         a layout that does not fit. Also a ValueError.",
    )?;
    let oom = make(
        "OutOfMemoryError",
        py.get_type::<PyMemoryError>().into_any(),
        "An allocation of host, pinned or device memory failed. Also a MemoryError.",
    )?;
    m.add("InvalidArgumentError", invalid.bind(py))?;
    m.add("OutOfMemoryError", oom.bind(py))?;
    let _ = CLASSES.set(Classes { invalid, oom });
    m.add("Error", py.get_type::<Error>())?;
    m.add("TransferError", py.get_type::<TransferError>())?;
    m.add("CancelledError", py.get_type::<CancelledError>())?;
    m.add("UnavailableError", py.get_type::<UnavailableError>())?;
    m.add("NixlError", py.get_type::<NixlError>())?;
    for name in [
        "Error",
        "TransferError",
        "CancelledError",
        "UnavailableError",
        "NixlError",
    ] {
        m.getattr(name)?.setattr("__module__", "kvmem")?;
    }
    Ok(())
}

/// A Python exception of class `cls` (one of the two-base classes) with `msg`.
fn with_class(pick: fn(&Classes) -> &Py<PyAny>, msg: String) -> PyErr {
    Python::attach(|py| match CLASSES.get() {
        Some(c) => match pick(c).bind(py).call1((msg.clone(),)) {
            Ok(instance) => PyErr::from_value(instance),
            Err(e) => e,
        },
        None => Error::new_err(msg),
    })
}

/// A `kvmem.InvalidArgumentError` (a `ValueError`) with `msg`.
pub(crate) fn invalid(msg: impl Into<String>) -> PyErr {
    with_class(|c| &c.invalid, msg.into())
}

/// The Python exception for a kvmem error.
pub(crate) fn to_py(e: kvmem::Error) -> PyErr {
    use kvmem::Error as E;
    use kvmem::error::{
        ConfigError as Config, CudaError as Cuda, IoError as Io, MemoryError as Memory,
        NixlError as Nixl, TransferError as Transfer, UnsupportedError as Unsupported,
    };
    let msg = e.to_string();
    match e {
        E::Transfer(Transfer::Cancelled { .. }) => CancelledError::new_err(msg),
        E::Transfer(Transfer::Mismatch { .. }) => NixlError::new_err(msg),
        E::Transfer(_) | E::Io(Io::Transfer { .. } | Io::Short { .. }) => {
            TransferError::new_err(msg)
        }
        E::Memory(Memory::HostAlloc { .. } | Memory::PinnedOutOfMemory { .. })
        | E::Cuda(Cuda::OutOfMemory { .. }) => with_class(|c| &c.oom, msg),
        E::Unsupported(Unsupported::WrongStorageKind { .. }) => invalid(msg),
        E::Cuda(Cuda::Unavailable { .. } | Cuda::DeviceNotFound { .. })
        | E::Nixl(
            Nixl::Unavailable { .. }
            | Nixl::UnknownBackend { .. }
            | Nixl::BackendUnavailable { .. },
        )
        | E::Io(Io::BackendUnavailable { .. })
        | E::Unsupported(_) => UnavailableError::new_err(msg),
        E::Nixl(_) | E::Peer(_) => NixlError::new_err(msg),
        E::Timeout { .. } | E::Cache(kvmem::error::CacheError::Timeout { .. }) => {
            pyo3::exceptions::PyTimeoutError::new_err(msg)
        }
        E::Cache(
            kvmem::error::CacheError::Config(_)
            | kvmem::error::CacheError::CountMismatch { .. }
            | kvmem::error::CacheError::Geometry { .. },
        ) => invalid(msg),
        E::Bounds(_)
        | E::Layout(_)
        | E::Cuda(Cuda::NotDeviceMemory { .. })
        | E::Config(Config::Agent { .. }) => invalid(msg),
        _ => Error::new_err(msg),
    }
}

/// `?` for kvmem results inside Python entry points.
pub(crate) trait IntoPy<T> {
    /// The result with its error turned into a Python exception.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for kvmem::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
