// This module page-locks memory owned by others, by raw address: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]
use super::ExternalHostMemory;
use crate::cuda::page_lock::HostRegistration;
use crate::cuda::{CudaDevice, MAX_HOST_REGISTRATION};
use crate::descriptor::MemoryDescriptor;
use crate::error::Result;
use crate::kind::StorageKind;
use std::fmt;

/// Host memory someone else allocated, page-locked by kvmem (`cuMemHostRegister`, portable and
/// device-mapped) for as long as this value lives, and unregistered on drop.
///
/// Use it to make a framework's buffer or a shared-memory segment DMA-capable without copying.
/// For memory that is already pinned by its owner, describe it with
/// [`ExternalHostMemory::new_pinned`] instead.
pub struct ExternalPinnedMemory {
    // Dropped first: the registration ends before the owner can free the memory.
    registration: HostRegistration,
    host: ExternalHostMemory,
    device: CudaDevice,
}

impl ExternalPinnedMemory {
    /// Page-locks `size` bytes at `ptr` through `device`'s context.
    ///
    /// # Safety
    /// `ptr..ptr + size` must be readable and writable host memory, not already page-locked,
    /// that stays mapped while this value exists; nothing else may read or write it while a
    /// slice obtained through [`HostMemory`] is alive.
    ///
    /// # Errors
    /// [`BoundsError::ZeroSize`](crate::error::BoundsError::ZeroSize) / [`BoundsError::Overflow`](crate::error::BoundsError::Overflow)
    /// for a bad range; [`MemoryError::PinnedOutOfMemory`](crate::error::MemoryError::PinnedOutOfMemory) or
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) when the driver refuses (for example
    /// `CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED`).
    pub unsafe fn new(device: &CudaDevice, ptr: *mut u8, size: usize) -> Result<Self> {
        // SAFETY: the caller's contract covers ExternalHostMemory's (valid, exclusive range).
        let host = unsafe { ExternalHostMemory::new_pinned(ptr, size) }?;
        // SAFETY: the caller keeps the range mapped while this value (and so the registration)
        // exists. A failed registration is undone before returning; if even that fails, the
        // range stays registered, which is harmless to the owner's memory.
        let registration =
            unsafe { HostRegistration::new(device, ptr, size, MAX_HOST_REGISTRATION) }
                .map_err(|failure| failure.error)?;
        Ok(Self {
            registration,
            host,
            device: device.clone(),
        })
    }

    /// The ranges (absolute addresses) page-locked by one `cuMemHostRegister` call each, in
    /// address order. A single CUDA copy must stay inside one of them (see
    /// [`MAX_HOST_REGISTRATION`]).
    pub(crate) fn registered_ranges(&self) -> Vec<std::ops::Range<usize>> {
        self.registration.ranges()
    }
}

impl fmt::Debug for ExternalPinnedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalPinnedMemory")
            .field("addr", &format_args!("{:#x}", self.host.addr()))
            .field("size", &self.host.size())
            .field("device", &self.device.ordinal())
            .field("chunks", &self.registration.chunk_count())
            .finish()
    }
}

storage_region!(
    ExternalPinnedMemory,
    |s| s.host.addr(),
    s.host.size(),
    StorageKind::Pinned,
    host: s.host.as_slice(), s.host.as_mut_slice(),
    page_locked: s.registered_ranges()
);
