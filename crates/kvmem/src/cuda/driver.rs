//! Loading the CUDA driver (`libcuda`) at run time, and turning its status codes into [`Error`]s.
//!
//! kvmem builds without CUDA and loads the driver the first time CUDA is used, through `cudarc`'s
//! dynamic loading. cudarc's lazy loader panics when the library or one of its symbols is missing,
//! so kvmem checks both first, once per process: [`load`] looks for the library the way cudarc
//! will, resolves every driver function kvmem calls (directly or through cudarc), and runs
//! `cuInit`. Only when all of that succeeds does any other function of this crate call into
//! cudarc; every CUDA entry point goes through [`load`] (usually via
//! [`CudaDevice::new`](super::CudaDevice::new)) and returns [`CudaError::Unavailable`] otherwise.

use crate::error::{CudaError, Error, Result};
use cudarc::driver::{result::DriverError, sys};
use std::sync::OnceLock;

/// Every driver function kvmem calls, directly or through cudarc's `result`/`safe` layers.
///
/// Keep this list in step with the code: a function missing here and missing from an old driver
/// would make cudarc panic instead of kvmem returning an error.
const REQUIRED_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuGetErrorName",
    "cuGetErrorString",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDeviceGetAttribute",
    "cuDeviceTotalMem_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuStreamCreate",
    "cuStreamSynchronize",
    "cuStreamDestroy_v2",
    "cuMemGetInfo_v2",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemHostAlloc",
    "cuMemFreeHost",
    "cuMemHostRegister_v2",
    "cuMemHostUnregister",
    "cuMemHostGetDevicePointer_v2",
    "cuMemcpyHtoD_v2",
    "cuMemcpyDtoH_v2",
    "cuMemcpyDtoD_v2",
    "cuPointerGetAttribute",
    "cuMemPoolCreate",
    "cuMemPoolDestroy",
    "cuMemPoolSetAttribute",
    "cuMemPoolGetAttribute",
    "cuMemPoolTrimTo",
    "cuMemAllocFromPoolAsync",
    "cuMemFreeAsync",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventQuery",
    "cuEventSynchronize",
    "cuEventDestroy_v2",
    "cuStreamWaitEvent",
    "cuMemcpyAsync",
    "cuMemcpyHtoDAsync_v2",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuModuleUnload",
    "cuLaunchKernel",
];

/// The CUDA driver this process loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DriverInfo {
    /// The CUDA version the driver implements, e.g. `(13, 0)`.
    pub cuda_version: (u32, u32),
}

static DRIVER: OnceLock<std::result::Result<DriverInfo, String>> = OnceLock::new();

/// Loads and initialises the CUDA driver once per process.
///
/// # Errors
/// [`CudaError::Unavailable`] when `libcuda` cannot be loaded, lacks a function kvmem needs, or
/// `cuInit` fails (no device, a driver/kernel-module mismatch, …). The outcome is cached: later
/// calls return the same answer without retrying.
pub fn load() -> Result<&'static DriverInfo> {
    DRIVER.get_or_init(probe).as_ref().map_err(|reason| {
        Error::Cuda(CudaError::Unavailable {
            reason: reason.clone(),
        })
    })
}

fn probe() -> std::result::Result<DriverInfo, String> {
    // SAFETY: `is_culib_present` only tries to dlopen the candidate library names (running their
    // initialisers, which have no preconditions) and closes them again.
    if !unsafe { sys::is_culib_present() } {
        return Err(
            "the driver library libcuda.so.1 was not found on the dynamic loader's path".into(),
        );
    }
    // SAFETY: the library was just found under one of the names `culib` tries, in the same order,
    // so `culib` loads it instead of panicking.
    let lib = unsafe { sys::culib() };
    let missing: Vec<&str> = REQUIRED_SYMBOLS
        .iter()
        .copied()
        // SAFETY: only looks the symbol up; the pointer is never called through this type.
        .filter(|name| unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the installed driver is too old: libcuda lacks {}; kvmem needs a CUDA 12.x or \
             newer driver",
            missing.join(", ")
        ));
    }
    cudarc::driver::result::init().map_err(|e| match e.0 {
        sys::CUresult::CUDA_ERROR_NO_DEVICE => {
            "the driver found no CUDA device (cuInit: CUDA_ERROR_NO_DEVICE)".to_string()
        }
        _ => format!("cuInit failed: {}", describe(e)),
    })?;
    let mut version = 0;
    // SAFETY: the symbol was checked above; `version` is a valid out-pointer.
    let status = unsafe { sys::cuDriverGetVersion(&mut version) };
    status
        .result()
        .map_err(|e| format!("cuDriverGetVersion failed: {}", describe(e)))?;
    let version = u32::try_from(version).unwrap_or(0);
    let info = DriverInfo {
        cuda_version: (version / 1000, (version % 1000) / 10),
    };
    tracing::debug!(?info, "CUDA driver loaded");
    Ok(info)
}

/// True when the loaded driver exports `name` (for optional functions such as
/// `cuMemcpyBatchAsync_v2`, which older drivers lack). False without a driver.
pub(crate) fn has_symbol(name: &str) -> bool {
    if load().is_err() {
        return false;
    }
    // SAFETY: `load` succeeded, so the library is present and `culib` returns it without
    // panicking; the lookup only resolves the symbol, it never calls it.
    unsafe {
        sys::culib()
            .get::<unsafe extern "C" fn()>(name.as_bytes())
            .is_ok()
    }
}

/// `NAME (code): message` for a driver status.
fn describe(e: DriverError) -> String {
    let (name, message) = names(e);
    format!("{name} ({}): {message}", e.0 as u32)
}

pub(crate) fn names(e: DriverError) -> (String, String) {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("CUresult {}", e.0 as u32));
    let message = e
        .error_string()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "no description".into());
    (name, message)
}

/// [`CudaError::Driver`] for a failed driver call. Only call once the driver is loaded.
pub(crate) fn error(op: &'static str, e: DriverError) -> Error {
    let (name, message) = names(e);
    Error::Cuda(CudaError::Driver {
        op,
        code: e.0 as u32,
        name,
        message,
    })
}

/// Turns a driver status into `Ok(())` or [`CudaError::Driver`].
pub(crate) fn check(op: &'static str, status: sys::CUresult) -> Result<()> {
    status.result().map_err(|e| error(op, e))
}

/// True for `CUDA_ERROR_OUT_OF_MEMORY`.
pub(crate) fn is_out_of_memory(e: &DriverError) -> bool {
    e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
}

/// `MemAvailable` from `/proc/meminfo` in bytes, 0 when it cannot be read.
pub(crate) fn host_memory_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemAvailable:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read() {
        // Every Linux machine the tests run on has /proc/meminfo.
        assert!(host_memory_available() > 0);
    }
}
