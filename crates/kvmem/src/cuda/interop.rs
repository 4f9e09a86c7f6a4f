//! Memory and streams that another library owns (torch, CuPy): what the driver knows about a
//! pointer, and ordering kvmem's copies with an engine's own CUDA stream through events.
//!
//! These are the checks a binding makes before it wraps foreign memory in
//! [`ExternalDeviceMemory`](crate::ExternalDeviceMemory) or
//! [`ExternalHostMemory`](crate::ExternalHostMemory), and the two halves of stream ordering:
//! an [`Event`] recorded on the engine's stream that a transfer waits for
//! ([`TransferEngine::copy_blocks_ordered`](crate::transfer::TransferEngine::copy_blocks_ordered)),
//! and the event a transfer records after its copies, which the engine's stream can wait for.

// This module hands raw stream handles of other libraries to the driver: unsafe code is allowed
// here (denied at the crate root).
#![allow(unsafe_code)]

use super::driver::{self, DeferredErrors, MemoryKind};
use super::{CudaDevice, copy::check_device_range};
use crate::error::{CudaError, Error, Result};
use cudarc::driver::{CudaEvent, result};

pub use super::driver::RawStream;

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
    let unknown = |e| {
        let (name, _) = driver::names(e);
        not_device(format!("the driver does not know the address: {name}"))
    };
    let kind = driver::pointer_memory_kind(addr as u64).map_err(unknown)?;
    let ordinal = driver::pointer_device_ordinal(addr as u64).map_err(unknown)?;
    if kind != MemoryKind::Device {
        return Err(not_device(format!(
            "memory type {kind:?} is not device memory"
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
    // An unknown (pageable) address is an error from the driver, hence not pinned.
    [addr, last]
        .into_iter()
        .all(|a| driver::pointer_memory_kind(a as u64) == Ok(MemoryKind::Host))
}

/// The most registrations [`pinned_ranges`] walks through before it gives up on a range.
const MAX_PINNED_RANGES: usize = 4096;

/// The page-locked allocations or registrations (`cudaHostAlloc`, `cudaHostRegister`, torch's
/// `pin_memory()`) that cover host range `addr..addr + size`, in address order, each cut to the
/// range, as the driver reports them: where one DMA may go (a DMA across two of them is
/// refused). `None` without a driver, for an empty range, when any byte of it is not
/// page-locked memory the driver knows, or past 4096 registrations.
pub fn pinned_ranges(addr: usize, size: usize) -> Option<Vec<std::ops::Range<usize>>> {
    let end = addr.checked_add(size)?;
    if size == 0 || driver::load().is_err() {
        return None;
    }
    let mut ranges = Vec::new();
    let mut at = addr;
    while at < end {
        if ranges.len() == MAX_PINNED_RANGES {
            return None;
        }
        let (start, len) = driver::host_pinned_range(at as u64).ok()?;
        let start = usize::try_from(start).ok()?;
        let stop = start.checked_add(len)?;
        // The allocation must contain `at`, or the driver's answer is not one to build on.
        if !(start <= at && at < stop) {
            return None;
        }
        ranges.push(at..stop.min(end));
        at = stop;
    }
    Some(ranges)
}

/// A CUDA event of one device's primary context, for ordering kvmem's copy stream with a stream
/// that another library owns (torch, CuPy): record it on one stream, make the other wait for it.
/// Neither blocks the CPU.
pub struct Event {
    event: CudaEvent,
    /// After `event`: logs what destroying it recorded.
    _deferred: DeferredErrors,
    device: CudaDevice,
}

impl Event {
    /// A new event (without timing) on `device`'s primary context.
    ///
    /// # Errors
    /// [`CudaError::Driver`] if the driver refuses.
    pub fn new(device: &CudaDevice) -> Result<Self> {
        let ctx = device.context();
        // Without flags cudarc creates the event with timing disabled.
        let event = ctx
            .new_event(None)
            .map_err(|e| driver::error("create an event", e))?;
        Ok(Self {
            event,
            _deferred: DeferredErrors::new(ctx.clone(), "release an event"),
            device: device.clone(),
        })
    }

    /// Records the event on `stream`: it completes once the work queued there so far has.
    ///
    /// # Safety
    /// `stream` must be a live stream of this device's primary context (or null, the legacy
    /// default stream), for the duration of the call.
    ///
    /// # Errors
    /// [`CudaError::Driver`] if the driver refuses (for example a stream of another context).
    pub unsafe fn record(&self, stream: RawStream) -> Result<()> {
        self.device.bind()?;
        // SAFETY: a live event of the current context; the caller vouches for the stream.
        unsafe { result::event::record(self.event.cu_event(), stream) }
            .map_err(|e| driver::error("record an event on a stream", e))
    }

    /// Makes `stream` wait (on the GPU) until this event completes; the CPU does not block.
    ///
    /// # Safety
    /// As for [`record`](Self::record).
    ///
    /// # Errors
    /// [`CudaError::Driver`] if the driver refuses.
    pub unsafe fn wait_in(&self, stream: RawStream) -> Result<()> {
        self.device.bind()?;
        // SAFETY: the caller vouches for the stream.
        unsafe { driver::stream_wait_event(stream, &self.event) }
            .map_err(|e| driver::error("make a stream wait for an event", e))
    }

    /// Blocks the calling thread until the event completes.
    ///
    /// # Errors
    /// [`CudaError::Driver`] if the work before it failed.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.event
            .synchronize()
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
