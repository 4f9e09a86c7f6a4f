//! Memory and streams that another library owns (torch, CuPy): what the driver knows about a
//! pointer, and ordering kvmem's copies with an engine's own CUDA stream through events.
//!
//! These are the checks a binding makes before it wraps foreign memory in
//! [`ExternalDeviceMemory`](crate::ExternalDeviceMemory) or
//! [`ExternalHostMemory`](crate::ExternalHostMemory), and the two halves of stream ordering:
//! an [`Event`] recorded on the engine's stream that a transfer waits for
//! ([`TransferEngine::copy_blocks_ordered`](crate::transfer::TransferEngine::copy_blocks_ordered)),
//! and the event a transfer records after its copies, which the engine's stream can wait for.

use super::{CudaDevice, copy::check_device_range, driver};
use crate::error::{CudaError, Error, Result};
use cudarc::driver::sys;

/// The ordinal of the CUDA device that owns device pointer `addr`.
///
/// # Errors
/// [`CudaError::Unavailable`] without a driver; [`CudaError::NotDeviceMemory`] when the driver does
/// not know `addr` as device memory.
pub fn device_of_pointer(addr: usize) -> Result<u32> {
    driver::load()?;
    let not_device = |reason: String| {
        Error::Cuda(CudaError::NotDeviceMemory {
            op: "find the device of a pointer",
            addr,
            size: 0,
            reason,
        })
    };
    let mut memory_type: u32 = 0;
    let mut ordinal: i32 = -1;
    for (attribute, out) in [
        (
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
            (&raw mut memory_type).cast::<std::ffi::c_void>(),
        ),
        (
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
            (&raw mut ordinal).cast(),
        ),
    ] {
        // SAFETY: `out` points to a live local of the type the attribute writes (an unsigned
        // int and an int); the driver only reads its tables.
        let status =
            unsafe { sys::cuPointerGetAttribute(out, attribute, addr as sys::CUdeviceptr) };
        if let Err(e) = status.result() {
            let (name, _) = driver::names(e);
            return Err(not_device(format!(
                "the driver does not know the address: {name}"
            )));
        }
    }
    if memory_type != sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32 {
        return Err(not_device(format!(
            "memory type {memory_type} is not device memory"
        )));
    }
    u32::try_from(ordinal).map_err(|_| not_device(format!("device ordinal {ordinal}")))
}

/// Checks with the driver that `addr..addr + size` lies inside one allocation of device
/// `ordinal`.
///
/// # Errors
/// [`CudaError::Unavailable`] without a driver, [`CudaError::DeviceNotFound`] for a bad
/// ordinal, [`CudaError::NotDeviceMemory`] naming what the driver said otherwise.
pub fn check_device_pointer(ordinal: u32, addr: usize, size: usize) -> Result<()> {
    let device = CudaDevice::new(ordinal as usize)?;
    check_device_range("take external device memory", &device, addr, size)
}

/// True when the driver is loaded and reports host range `addr..addr + size` (first and last
/// byte) as page-locked host memory (`cudaHostAlloc`, `cudaHostRegister`, torch's
/// `pin_memory()`). False without a driver and for pageable memory.
pub fn host_is_pinned(addr: usize, size: usize) -> bool {
    if size == 0 || driver::load().is_err() {
        return false;
    }
    let Some(last) = addr.checked_add(size - 1) else {
        return false;
    };
    [addr, last].into_iter().all(|a| {
        let mut memory_type: u32 = 0;
        // SAFETY: `memory_type` is a live unsigned int, the type this attribute writes; an
        // unknown (pageable) address makes the driver return an error, not fault.
        let status = unsafe {
            sys::cuPointerGetAttribute(
                (&raw mut memory_type).cast(),
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                a as sys::CUdeviceptr,
            )
        };
        status.result().is_ok() && memory_type == sys::CUmemorytype::CU_MEMORYTYPE_HOST as u32
    })
}

/// A CUDA event of one device's primary context, for ordering kvmem's copy stream with a stream
/// that another library owns (torch, CuPy): record it on one stream, make the other wait for it.
/// Neither blocks the CPU.
pub struct Event {
    event: sys::CUevent,
    device: CudaDevice,
}

// SAFETY: a CUevent may be recorded, waited for and destroyed from any thread once its context is
// current, which every method makes it first.
unsafe impl Send for Event {}
// SAFETY: as above; shared use only issues driver calls, which are thread-safe.
unsafe impl Sync for Event {}

impl Event {
    /// A new event (without timing) on `device`'s primary context.
    ///
    /// # Errors
    /// [`CudaError::Driver`] if the driver refuses.
    pub fn new(device: &CudaDevice) -> Result<Self> {
        device.bind()?;
        let mut event = std::ptr::null_mut();
        // SAFETY: the context is current; `event` is a valid out-pointer.
        unsafe {
            sys::cuEventCreate(
                &mut event,
                sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32,
            )
        }
        .result()
        .map_err(|e| driver::error("create an event", e))?;
        Ok(Self {
            event,
            device: device.clone(),
        })
    }

    /// The device whose context the event belongs to.
    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    /// Records the event on `stream`: it completes once the work queued there so far has.
    ///
    /// # Safety
    /// `stream` must be a live stream of this device's primary context (or 0, the legacy
    /// default stream), for the duration of the call.
    ///
    /// # Errors
    /// [`CudaError::Driver`] if the driver refuses (for example a stream of another context).
    pub unsafe fn record(&self, stream: sys::CUstream) -> Result<()> {
        self.device.bind()?;
        // SAFETY: a live event of the current context; the caller vouches for the stream.
        unsafe { sys::cuEventRecord(self.event, stream) }
            .result()
            .map_err(|e| driver::error("record an event on a stream", e))
    }

    /// Makes `stream` wait (on the GPU) until this event completes; the CPU does not block.
    ///
    /// # Safety
    /// As for [`record`](Self::record).
    ///
    /// # Errors
    /// [`CudaError::Driver`] if the driver refuses.
    pub unsafe fn wait_in(&self, stream: sys::CUstream) -> Result<()> {
        self.device.bind()?;
        // SAFETY: a live event of the current context; the caller vouches for the stream.
        unsafe { sys::cuStreamWaitEvent(stream, self.event, 0) }
            .result()
            .map_err(|e| driver::error("make a stream wait for an event", e))
    }

    /// Blocks the calling thread until the event completes.
    ///
    /// # Errors
    /// [`CudaError::Driver`] if the work before it failed.
    pub fn synchronize(&self) -> Result<()> {
        self.device.bind()?;
        // SAFETY: a live event of the current context.
        unsafe { sys::cuEventSynchronize(self.event) }
            .result()
            .map_err(|e| driver::error("wait for an event", e))
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("device", &self.device.ordinal())
            .finish()
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: created by `new`, destroyed once; the driver defers the release until any
            // pending record or wait has completed.
            unsafe { sys::cuEventDestroy_v2(self.event) };
        }
    }
}
