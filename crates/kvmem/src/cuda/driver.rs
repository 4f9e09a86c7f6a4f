//! Loading the CUDA driver (`libcuda`) at run time, and turning its status codes into [`Error`]s.
//!
//! kvmem builds without CUDA and loads the driver the first time CUDA is used, through `cudarc`'s
//! dynamic loading. cudarc's lazy loader panics when the library or one of its symbols is missing,
//! so kvmem checks both first, once per process: [`load`] looks for the library the way cudarc
//! will, resolves every driver function kvmem calls (directly or through cudarc), and runs
//! `cuInit`. Only when all of that succeeds does any other function of this crate call into
//! cudarc; every CUDA entry point goes through [`load`] (usually via
//! [`CudaDevice::new`](super::CudaDevice::new)) and returns [`CudaError::Unavailable`] otherwise.
//!
//! **The one door to the raw driver API.** This is the only module of kvmem that names
//! `cudarc::driver::sys`. Everything else uses cudarc's safe types (`CudaContext`, `CudaStream`,
//! `CudaEvent`, `CudaModule`, `CudaFunction`) or its checked `result` layer; the few driver
//! functions cudarc does not wrap (`cuMemcpyAsync`, `cuMemcpyBatchAsync`, `cuMemHostRegister`,
//! `cuMemHostGetDevicePointer`, `cuPointerGetAttribute`, `cuMemPoolCreate`'s properties) are
//! wrapped here, each with its safety contract, together with the constants and enums the other
//! modules need under kvmem's own names.

// This module is the one module that calls the raw CUDA driver API: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]

use crate::error::{CudaError, Error, Result};
use cudarc::driver::{CudaContext, CudaStream, result::DriverError, sys};
use std::ffi::c_void;
use std::sync::OnceLock;

/// A CUDA stream handle as the driver API passes it (`CUstream`): how a stream that another
/// library owns (torch's `stream.cuda_stream`, CuPy's `stream.ptr`) reaches kvmem.
pub type RawStream = sys::CUstream;

/// A device attribute, as [`CudaContext::attribute`] takes it.
pub(crate) use sys::CUdevice_attribute as DeviceAttribute;
/// A memory-pool attribute (`cuMemPoolGetAttribute` / `cuMemPoolSetAttribute`).
pub(crate) use sys::CUmemPool_attribute as PoolAttribute;
/// The driver's handle of a memory pool.
pub(crate) type PoolHandle = sys::CUmemoryPool;

/// `cuMemHostAlloc` flags for pinned storages: usable from every context and mapped into the
/// device address space.
pub(crate) const HOST_ALLOC_MAPPED: u32 =
    sys::CU_MEMHOSTALLOC_PORTABLE | sys::CU_MEMHOSTALLOC_DEVICEMAP;
/// `cuMemHostAlloc` flags for staging buffers only the driver's copies read: usable from every
/// context.
pub(crate) const HOST_ALLOC_PORTABLE: u32 = sys::CU_MEMHOSTALLOC_PORTABLE;
/// Flags for every registration kvmem makes: usable from every context, and mapped into the
/// device address space.
const REGISTER_FLAGS: u32 = sys::CU_MEMHOSTREGISTER_PORTABLE | sys::CU_MEMHOSTREGISTER_DEVICEMAP;

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
    "cuStreamCreateWithPriority",
    "cuCtxGetStreamPriorityRange",
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

/// Logs a failed driver call on a path that cannot return it (a `Drop`).
pub(crate) fn log_failure(op: &'static str, outcome: std::result::Result<(), DriverError>) {
    if let Err(e) = outcome {
        tracing::warn!(error = %error(op, e), "CUDA call on a release path failed");
    }
}

/// Logs, and clears, the failures cudarc recorded in `ctx` while dropping its safe types
/// (streams, events, modules record a failed destroy in their context instead of reporting it).
///
/// Hold one as the last field of a struct that owns cudarc values: fields drop in order, so it
/// runs after them.
pub(crate) struct DeferredErrors {
    ctx: std::sync::Arc<CudaContext>,
    what: &'static str,
}

impl DeferredErrors {
    /// A guard that logs what releasing `what` in `ctx` recorded.
    pub(crate) fn new(ctx: std::sync::Arc<CudaContext>, what: &'static str) -> Self {
        Self { ctx, what }
    }
}

impl Drop for DeferredErrors {
    fn drop(&mut self) {
        if let Err(e) = self.ctx.check_err() {
            tracing::warn!(error = %error(self.what, e), "releasing a CUDA resource failed");
        }
    }
}

/// Makes `ctx` current on the calling thread.
///
/// # Errors
/// [`CudaError::Driver`] if the driver refuses.
pub(crate) fn make_current(ctx: &CudaContext) -> Result<()> {
    let current = cudarc::driver::result::ctx::get_current()
        .map_err(|e| error("query the current context", e))?;
    if current != Some(ctx.cu_ctx()) {
        // SAFETY: `ctx` is a live (retained) context for as long as the borrow lasts, and the
        // caller keeps it retained while the thread uses it.
        unsafe { cudarc::driver::result::ctx::set_current(ctx.cu_ctx()) }
            .map_err(|e| error("make the device's context current", e))?;
    }
    Ok(())
}

/// `cuMemcpyAsync` of `len` bytes from `src` to `dst` on `stream` (cudarc wraps only the
/// direction-specific copies; this one infers the direction from unified addresses).
///
/// # Safety
/// `src..src + len` must be readable and `dst..dst + len` writable by the device until the copy
/// has finished on `stream`; nothing else may write the destination meanwhile.
pub(crate) unsafe fn memcpy_async(
    dst: u64,
    src: u64,
    len: usize,
    stream: &CudaStream,
) -> std::result::Result<(), DriverError> {
    // SAFETY: forwarded to the caller; the stream is alive for the borrow.
    unsafe { sys::cuMemcpyAsync(dst, src, len, stream.cu_stream()) }.result()
}

/// `cuMemcpyBatchAsync` (CUDA 12.8+; cudarc has no wrapper): `dsts.len()` copies in one call,
/// every source on `src_device` (`None`: pinned host memory) and every destination on
/// `dst_device`, ordered after earlier work on `stream`.
///
/// # Safety
/// The three slices must have the same length (checked: a mismatch is refused with
/// `CUDA_ERROR_INVALID_VALUE`); the ranges they name must be valid for the device until the
/// copies have finished on `stream`; destinations pairwise disjoint and disjoint from sources.
pub(crate) unsafe fn memcpy_batch_async(
    dsts: &mut [u64],
    srcs: &mut [u64],
    sizes: &mut [usize],
    src_device: Option<u32>,
    dst_device: Option<u32>,
    stream: &CudaStream,
) -> std::result::Result<(), DriverError> {
    if dsts.len() != srcs.len() || dsts.len() != sizes.len() {
        return Err(DriverError(sys::CUresult::CUDA_ERROR_INVALID_VALUE));
    }
    let location = |device: Option<u32>| match device {
        None => sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST,
            id: 0,
        },
        Some(d) => sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: i32::try_from(d).unwrap_or(i32::MAX),
        },
    };
    let mut attrs = [sys::CUmemcpyAttributes {
        srcAccessOrder: sys::CUmemcpySrcAccessOrder::CU_MEMCPY_SRC_ACCESS_ORDER_STREAM,
        srcLocHint: location(src_device),
        dstLocHint: location(dst_device),
        flags: 0,
    }];
    let mut attr_idx = [0usize];
    // SAFETY: the three arrays hold `dsts.len()` entries each (checked above) and live across
    // the call, during which the driver reads them; one attribute applies to every copy (index
    // 0); the ranges are valid per this function's contract.
    unsafe {
        sys::cuMemcpyBatchAsync_v2(
            dsts.as_mut_ptr(),
            srcs.as_mut_ptr(),
            sizes.as_mut_ptr(),
            dsts.len(),
            attrs.as_mut_ptr(),
            attr_idx.as_mut_ptr(),
            1,
            stream.cu_stream(),
        )
    }
    .result()
}

/// Page-locks `ptr..ptr + len` with `cuMemHostRegister` (portable, device-mapped).
///
/// # Safety
/// The range must be mapped host memory that stays mapped until it is unregistered.
pub(crate) unsafe fn host_register(ptr: usize, len: usize) -> std::result::Result<(), DriverError> {
    // SAFETY: forwarded to the caller.
    unsafe { sys::cuMemHostRegister_v2(ptr as *mut c_void, len, REGISTER_FLAGS) }.result()
}

/// Undoes [`host_register`] of the range starting at `ptr`.
///
/// # Safety
/// `ptr` must start a range registered by [`host_register`] and not unregistered since; no
/// work in flight may still use it as pinned memory.
pub(crate) unsafe fn host_unregister(ptr: usize) -> std::result::Result<(), DriverError> {
    // SAFETY: forwarded to the caller.
    unsafe { sys::cuMemHostUnregister(ptr as *mut c_void) }.result()
}

/// The device address of pinned, device-mapped host memory at `host`, in the current context.
pub(crate) fn host_device_pointer(host: *const u8) -> std::result::Result<u64, DriverError> {
    let mut dptr: sys::CUdeviceptr = 0;
    // SAFETY: `dptr` is a valid out-pointer; the driver only looks `host` up in its tables.
    unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dptr, host as *mut c_void, 0) }.result()?;
    Ok(dptr)
}

/// Makes `stream` wait (on the GPU) until the work recorded in `event` has completed
/// (`cuStreamWaitEvent`; cudarc wraps it only for its own streams).
///
/// # Safety
/// `stream` must be a live stream of `event`'s context (or 0, the legacy default stream) for the
/// duration of the call.
pub(crate) unsafe fn stream_wait_event(
    stream: RawStream,
    event: &cudarc::driver::CudaEvent,
) -> std::result::Result<(), DriverError> {
    // SAFETY: the event is alive for the borrow; the caller vouches for the stream.
    unsafe {
        cudarc::driver::result::stream::wait_event(
            stream,
            event.cu_event(),
            sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
        )
    }
}

/// The kind of memory the driver reports for an address (`CU_POINTER_ATTRIBUTE_MEMORY_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemoryKind {
    /// Page-locked host memory the driver knows.
    Host,
    /// Device memory.
    Device,
    /// Another `CUmemorytype` value (array, unified), kept for messages.
    Other(u32),
}

/// One pointer attribute of the type `T` the driver writes for it.
fn pointer_attribute<T: Default>(
    attribute: sys::CUpointer_attribute,
    addr: u64,
) -> std::result::Result<T, DriverError> {
    let mut value = T::default();
    // SAFETY: `value` is a live `T`, and every caller asks for an attribute of type `T` (an
    // unsigned int, an int, a CUdeviceptr or a size_t); the driver only reads its tables, and
    // an unknown address makes it return an error, not fault.
    unsafe { sys::cuPointerGetAttribute((&raw mut value).cast(), attribute, addr) }.result()?;
    Ok(value)
}

/// The kind of memory at `addr`.
pub(crate) fn pointer_memory_kind(addr: u64) -> std::result::Result<MemoryKind, DriverError> {
    let raw: u32 = pointer_attribute(
        sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
        addr,
    )?;
    Ok(match raw {
        r if r == sys::CUmemorytype::CU_MEMORYTYPE_HOST as u32 => MemoryKind::Host,
        r if r == sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32 => MemoryKind::Device,
        other => MemoryKind::Other(other),
    })
}

/// The allocation (or registration) of page-locked host memory that contains `addr`, as its
/// start and size (`cuPointerGetAttribute`'s range attributes); an error for any other memory.
pub(crate) fn host_pinned_range(addr: u64) -> std::result::Result<(u64, usize), DriverError> {
    use sys::CUpointer_attribute as A;
    if pointer_memory_kind(addr)? != MemoryKind::Host {
        return Err(DriverError(sys::CUresult::CUDA_ERROR_INVALID_VALUE));
    }
    let start: sys::CUdeviceptr =
        pointer_attribute(A::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, addr)?;
    let size: usize = pointer_attribute(A::CU_POINTER_ATTRIBUTE_RANGE_SIZE, addr)?;
    Ok((start, size))
}

/// The ordinal of the device that owns the memory at `addr`.
pub(crate) fn pointer_device_ordinal(addr: u64) -> std::result::Result<i32, DriverError> {
    pointer_attribute(
        sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
        addr,
    )
}

/// What the driver knows about the allocation that contains an address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PointerRange {
    /// True for device memory (`CU_MEMORYTYPE_DEVICE`).
    pub(crate) is_device: bool,
    /// The raw `CUmemorytype` value, for messages.
    pub(crate) memory_type: u32,
    /// The device the memory belongs to.
    pub(crate) ordinal: i32,
    /// Start of the allocation.
    pub(crate) start: u64,
    /// Bytes in the allocation.
    pub(crate) size: usize,
}

/// Asks the driver which allocation contains `addr` (`cuPointerGetAttribute`).
pub(crate) fn pointer_range(addr: u64) -> std::result::Result<PointerRange, DriverError> {
    use sys::CUpointer_attribute as A;
    let memory_type: u32 = pointer_attribute(A::CU_POINTER_ATTRIBUTE_MEMORY_TYPE, addr)?;
    let ordinal: i32 = pointer_attribute(A::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, addr)?;
    let start: sys::CUdeviceptr =
        pointer_attribute(A::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, addr)?;
    let size: usize = pointer_attribute(A::CU_POINTER_ATTRIBUTE_RANGE_SIZE, addr)?;
    Ok(PointerRange {
        is_device: memory_type == sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32,
        memory_type,
        ordinal,
        start,
        size,
    })
}

/// Creates a device memory pool of pinned device memory on device `ordinal`
/// (`cuMemPoolCreate`, through cudarc's `result` layer; the properties are built here).
pub(crate) fn mem_pool_create(ordinal: i32) -> std::result::Result<PoolHandle, DriverError> {
    // SAFETY: CUmemPoolProps is a plain C struct for which all-zero bytes are valid (and are
    // what the driver expects in its reserved fields).
    let mut props: sys::CUmemPoolProps = unsafe { std::mem::zeroed() };
    props.allocType = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    props.handleTypes = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE;
    props.location = sys::CUmemLocation {
        type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
        id: ordinal,
    };
    // SAFETY: `props` is a valid, initialised CUmemPoolProps.
    unsafe { cudarc::driver::result::mem_pool::create(&props) }
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
