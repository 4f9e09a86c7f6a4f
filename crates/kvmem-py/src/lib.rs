//! `kvmem._kvmem`: the native module of the `kvmem` Python package. PyO3 with the stable ABI
//! (abi3, CPython 3.10+), built by maturin. The Python-facing documentation is in the docstrings
//! and in `python/kvmem/_kvmem.pyi`.

mod cache;
mod engine;
mod errors;
mod foreign;
mod ids;
mod layout;
mod nixl;
mod stream;

use pyo3::prelude::*;

/// The native part of `kvmem`.
#[pymodule]
fn _kvmem(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<layout::Tier>()?;
    m.add_class::<layout::Layout>()?;
    m.add_class::<layout::Region>()?;
    m.add_class::<cache::BlockCache>()?;
    m.add_class::<engine::Engine>()?;
    m.add_class::<engine::Handle>()?;
    m.add_class::<engine::Stats>()?;
    m.add_class::<nixl::Agent>()?;
    m.add_class::<nixl::RegisteredLayout>()?;
    m.add_class::<nixl::RemoteLayout>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(nixl_available, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_available, m)?)?;
    Ok(())
}

/// True when the NIXL runtime (`libnixl_capi.so`) could be loaded.
#[pyfunction]
fn nixl_available() -> bool {
    kvmem::nixl::runtime::is_available()
}

/// True when the CUDA driver could be loaded.
#[pyfunction]
fn cuda_available() -> bool {
    kvmem::cuda::load_driver().is_ok()
}
