//! Page-locking host memory that is already mapped (`cuMemHostRegister`), and the device
//! addresses of pinned host memory.

// This module page-locks raw host ranges with the driver: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]

use super::{CudaDevice, driver};
use crate::error::{Error, MemoryError, Result};
use std::time::{Duration, Instant};

/// The largest range kvmem page-locks with one `cuMemHostRegister` call: 64 GiB. Drivers from
/// R580 refuse single registrations of 512 GiB or more; larger regions are registered in chunks.
///
/// One CUDA copy must not cross from one registration into the next: the driver refuses it with
/// `CUDA_ERROR_INVALID_VALUE` (seen with driver 580 on an H100). kvmem's copy helpers split at
/// the boundaries; other code that moves data out of a large pinned region should use the
/// storage's `registered_ranges()` to do the same.
pub const MAX_HOST_REGISTRATION: usize = 64 << 30;

/// A failed [`HostRegistration::new`].
#[derive(Debug)]
pub(crate) struct RegistrationError {
    /// What went wrong.
    pub(crate) error: Error,
    /// True when undoing the chunks already registered failed too: the range must then never be
    /// unmapped.
    pub(crate) still_registered: bool,
}

/// A host range page-locked with `cuMemHostRegister`, in chunks of at most
/// [`MAX_HOST_REGISTRATION`] bytes; unregistered on drop (or by [`unregister`](Self::unregister)).
pub(crate) struct HostRegistration {
    device: CudaDevice,
    /// `(start, len)` of each registered chunk not yet unregistered.
    chunks: Vec<(usize, usize)>,
    elapsed: Duration,
}

impl HostRegistration {
    /// Page-locks `ptr..ptr + len` in chunks of `chunk` bytes (clamped to
    /// `PAGE_SIZE..=MAX_HOST_REGISTRATION` and rounded down to whole pages). If a chunk fails, the
    /// chunks already registered are unregistered before the error is returned.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be mapped host memory that stays mapped until this value is dropped
    /// or [`unregister`](Self::unregister)ed successfully.
    ///
    /// # Errors
    /// [`MemoryError::PinnedOutOfMemory`] when the driver cannot lock that much memory;
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) for other refusals (the range is already registered, say).
    pub(crate) unsafe fn new(
        device: &CudaDevice,
        ptr: *mut u8,
        len: usize,
        chunk: usize,
    ) -> std::result::Result<Self, RegistrationError> {
        let chunk = (chunk.clamp(crate::PAGE_SIZE, MAX_HOST_REGISTRATION) / crate::PAGE_SIZE)
            * crate::PAGE_SIZE;
        device.bind().map_err(|error| RegistrationError {
            error,
            still_registered: false,
        })?;
        let started = Instant::now();
        let mut registration = Self {
            device: device.clone(),
            chunks: Vec::with_capacity(len.div_ceil(chunk)),
            elapsed: Duration::ZERO,
        };
        let base = ptr as usize;
        let mut offset = 0;
        while offset < len {
            let n = chunk.min(len - offset);
            let start = base + offset;
            // SAFETY: the caller guarantees the whole range is mapped host memory that outlives
            // the registration; this chunk lies inside it.
            let status = unsafe { driver::host_register(start, n) };
            if let Err(e) = status {
                let error = registration_error(e, len);
                // Undo the chunks done so far; if that fails, the caller must not unmap.
                let still_registered = registration.unregister_all().is_err();
                return Err(RegistrationError {
                    error,
                    still_registered,
                });
            }
            registration.chunks.push((start, n));
            offset += n;
        }
        registration.elapsed = started.elapsed();
        Ok(registration)
    }

    /// Number of `cuMemHostRegister` calls the range took.
    pub(crate) fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The registered ranges, as absolute addresses, in address order.
    pub(crate) fn ranges(&self) -> Vec<std::ops::Range<usize>> {
        self.chunks
            .iter()
            .map(|&(start, len)| start..start + len)
            .collect()
    }

    /// How long registering took.
    pub(crate) fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Unregisters every chunk. On error, some chunks may still be registered: the caller must
    /// then not unmap the memory.
    ///
    /// # Errors
    /// The first failure, as [`CudaError::Driver`](crate::error::CudaError::Driver).
    pub(crate) fn unregister(mut self) -> Result<()> {
        self.unregister_all()
    }

    fn unregister_all(&mut self) -> Result<()> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        self.device.bind()?;
        let mut first_error = None;
        for (start, _) in std::mem::take(&mut self.chunks) {
            // SAFETY: `start` was registered by `new` and has not been unregistered since.
            let status = unsafe { driver::host_unregister(start) };
            if let Err(e) =
                status.map_err(|e| driver::error("unregister host memory (cuMemHostUnregister)", e))
            {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for HostRegistration {
    fn drop(&mut self) {
        if let Err(e) = self.unregister_all() {
            tracing::error!(error = %e, "could not unregister page-locked host memory");
        }
    }
}

/// The error for a refused `cuMemHostRegister` of (a part of) `requested` bytes.
fn registration_error(e: cudarc::driver::result::DriverError, requested: usize) -> Error {
    if driver::is_out_of_memory(&e) {
        Error::Memory(MemoryError::PinnedOutOfMemory {
            requested,
            available: driver::host_memory_available(),
        })
    } else {
        driver::error("page-lock host memory (cuMemHostRegister)", e)
    }
}

/// Page-locks `start..start + len` with one `cuMemHostRegister` call (portable, device-mapped),
/// binding `device` on the calling thread first; `pool` is the size of the whole allocation the
/// range belongs to, for the error's message. Undo with [`unregister_range`].
///
/// # Safety
/// The range must be mapped host memory that stays mapped until it is unregistered, and must not
/// overlap a range registered before.
///
/// # Errors
/// [`MemoryError::PinnedOutOfMemory`] when the driver cannot lock that much memory;
/// [`CudaError::Driver`](crate::error::CudaError::Driver) for other refusals.
pub(crate) unsafe fn register_range(
    device: &CudaDevice,
    start: usize,
    len: usize,
    pool: usize,
) -> Result<()> {
    device.bind()?;
    // SAFETY: forwarded to the caller.
    unsafe { driver::host_register(start, len) }.map_err(|e| registration_error(e, pool))
}

/// Undoes [`register_range`] of the range starting at `start`.
///
/// # Safety
/// `start` must start a range registered by [`register_range`] and not unregistered since; no
/// work in flight may still use it as pinned memory.
///
/// # Errors
/// [`CudaError::Driver`](crate::error::CudaError::Driver) if the driver refuses: the range is then
/// still page-locked and must not be unmapped.
pub(crate) unsafe fn unregister_range(device: &CudaDevice, start: usize) -> Result<()> {
    device.bind()?;
    // SAFETY: forwarded to the caller.
    unsafe { driver::host_unregister(start) }
        .map_err(|e| driver::error("unregister host memory (cuMemHostUnregister)", e))
}

/// The address under which kernels of `device` read and write page-locked, device-mapped host
/// memory at host address `addr` directly: the memory of kvmem's pinned storages
/// ([`PinnedStorage`](crate::PinnedStorage), [`MappedPinnedStorage`](crate::MappedPinnedStorage),
/// [`ExternalPinnedMemory`](crate::ExternalPinnedMemory); pass their
/// [`addr`](crate::MemoryDescriptor::addr)), or memory another library pinned. Only asks the
/// driver; nothing is read or written.
///
/// # Errors
/// [`CudaError::Driver`](crate::error::CudaError::Driver) when the driver does not know `addr` as
/// pinned memory it mapped.
pub fn mapped_device_pointer(device: &CudaDevice, addr: usize) -> Result<u64> {
    device.bind()?;
    driver::host_device_pointer(addr as *const u8)
        .map_err(|e| driver::error("find the device address of pinned host memory", e))
}
