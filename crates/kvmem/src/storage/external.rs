// This module wraps memory owned by others, by raw address: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]
use crate::error::{BoundsError, Error, Result};
use crate::host::HostMemory;
use crate::kind::StorageKind;

/// Device memory that another owner (a framework's KV-cache tensor, say) allocated.
///
/// kvmem never frees it and never dereferences it on the host; it only describes it, so that it
/// can be viewed, registered with NIXL and used as a transfer source or destination.
#[derive(Debug)]
pub struct ExternalDeviceMemory {
    ptr: *const u8,
    size: usize,
    device_id: u64,
}

// SAFETY: the wrapper holds an address, never dereferences it on the host, and the constructor's
// contract makes the owner keep the memory valid while the wrapper exists, from any thread.
unsafe impl Send for ExternalDeviceMemory {}
// SAFETY: as for Send: all methods take `&self` and only read the three plain fields.
unsafe impl Sync for ExternalDeviceMemory {}

impl ExternalDeviceMemory {
    /// Describes `size` bytes of device memory at `ptr` on CUDA device `device_id`.
    ///
    /// # Safety
    /// `ptr..ptr + size` must be device memory of device `device_id` that stays allocated, and is
    /// not freed by its owner, for as long as this value (and anything registered or viewed from
    /// it) exists.
    ///
    /// # Errors
    /// [`BoundsError::ZeroSize`] for `size == 0`; [`BoundsError::Overflow`] for a null pointer, a
    /// range that wraps the address space, or a device id beyond `u32` (no CUDA ordinal is).
    pub unsafe fn new(ptr: *const u8, size: usize, device_id: u64) -> Result<Self> {
        check_range(ptr, size, "external device memory")?;
        if u32::try_from(device_id).is_err() {
            return Err(Error::Bounds(BoundsError::Overflow {
                what: "external device memory's CUDA device id",
            }));
        }
        Ok(Self {
            ptr,
            size,
            device_id,
        })
    }

    /// The start of the region.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// The CUDA device the memory lives on.
    pub fn device_id(&self) -> u64 {
        self.device_id
    }
}

fn check_range(ptr: *const u8, size: usize, what: &'static str) -> Result<()> {
    if size == 0 {
        return Err(Error::Bounds(BoundsError::ZeroSize { what }));
    }
    if ptr.is_null() || (ptr as usize).checked_add(size).is_none() {
        return Err(Error::Bounds(BoundsError::Overflow { what }));
    }
    Ok(())
}

storage_region!(
    ExternalDeviceMemory,
    |s| s.ptr as usize,
    s.size,
    StorageKind::Device(s.device_id as u32)
);

/// Host memory that another owner allocated — a framework's pinned tensor, a shared-memory
/// segment — described without taking ownership.
///
/// Unlike device memory, host memory can be read and written through [`HostMemory`]; the
/// constructor's contract makes that sound.
#[derive(Debug)]
pub struct ExternalHostMemory {
    ptr: *mut u8,
    size: usize,
    pinned: bool,
    /// For pinned memory: the allocations or registrations over it, as the driver reported
    /// them when this value was made (they cannot change while it exists: the range stays
    /// page-locked); `None` when the driver did not say.
    registrations: Option<Vec<std::ops::Range<usize>>>,
}

// SAFETY: the constructor's contract gives this value exclusive use of the range for its
// lifetime, and the owner keeps it valid; access goes through `&self`/`&mut self` borrows, so
// Rust's aliasing rules hold across threads as for a `Vec<u8>`.
unsafe impl Send for ExternalHostMemory {}
// SAFETY: shared access only hands out `&[u8]`, which is `Sync`.
unsafe impl Sync for ExternalHostMemory {}

impl ExternalHostMemory {
    /// Describes `size` bytes of pageable host memory at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + size` must be readable and writable host memory that stays valid for as long
    /// as this value exists, and nothing else may read or write it while a slice obtained through
    /// [`HostMemory`] is alive.
    ///
    /// # Errors
    /// [`BoundsError::ZeroSize`] for `size == 0`; [`BoundsError::Overflow`] for a null pointer or a range that
    /// wraps the address space.
    pub unsafe fn new(ptr: *mut u8, size: usize) -> Result<Self> {
        Self::checked(ptr, size, false)
    }

    /// Like [`new`](Self::new), for memory that its owner has already page-locked
    /// (`cudaHostAlloc`, `cudaHostRegister`); it is then reported as [`StorageKind::Pinned`].
    /// The allocations or registrations over it are asked of the driver once, here, so that
    /// copies can be split where one ends and joined within one.
    ///
    /// # Safety
    /// As for [`new`](Self::new), and the range must stay page-locked while this value exists.
    ///
    /// # Errors
    /// As for [`new`](Self::new).
    pub unsafe fn new_pinned(ptr: *mut u8, size: usize) -> Result<Self> {
        Self::checked(ptr, size, true)
    }

    /// The value, once the range is checked (the constructors' callers vouch for the memory).
    fn checked(ptr: *mut u8, size: usize, pinned: bool) -> Result<Self> {
        let what = if pinned {
            "external pinned memory"
        } else {
            "external host memory"
        };
        check_range(ptr, size, what)?;
        let registrations = pinned
            .then(|| crate::cuda::interop::pinned_ranges(ptr as usize, size))
            .flatten();
        Ok(Self {
            ptr,
            size,
            pinned,
            registrations,
        })
    }

    /// For pinned memory: the allocations or registrations over it, in address order, each cut
    /// to the range, as the driver reported them when this value was made; `None` for pageable
    /// memory or when the driver did not say.
    pub fn registered_ranges(&self) -> Option<&[std::ops::Range<usize>]> {
        self.registrations.as_deref()
    }
}

storage_region!(
    ExternalHostMemory,
    |s| s.ptr as usize,
    s.size,
    if s.pinned {
        StorageKind::Pinned
    } else {
        StorageKind::System
    }
);

impl HostMemory for ExternalHostMemory {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: the constructor's contract: `ptr..ptr+size` is valid, readable host memory
        // (non-null, checked) that nothing else writes while this borrow of `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.size) }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only live slice of the range.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryDescriptor;
    use crate::nixl::{MemType, NixlCompatible};

    #[test]
    fn external_host_memory_reads_and_writes_the_owners_bytes() {
        let mut owner = vec![1u8; 64];
        {
            // SAFETY: `owner` outlives `ext` and is not touched while `ext` is used.
            let mut ext = unsafe { ExternalHostMemory::new(owner.as_mut_ptr(), 64) }.unwrap();
            assert_eq!(ext.storage_kind(), StorageKind::System);
            ext.copy_from(8, &[9, 9]).unwrap();
        }
        assert_eq!(&owner[7..11], &[1, 9, 9, 1]);
    }

    #[test]
    fn bad_ranges_are_errors() {
        // SAFETY: these calls fail validation before any memory could be touched.
        unsafe {
            assert!(matches!(
                ExternalHostMemory::new(std::ptr::null_mut(), 4),
                Err(Error::Bounds(BoundsError::Overflow { .. }))
            ));
            assert!(matches!(
                ExternalDeviceMemory::new(0x1000 as *const u8, 0, 0),
                Err(Error::Bounds(BoundsError::ZeroSize { .. }))
            ));
            assert!(matches!(
                ExternalDeviceMemory::new(usize::MAX as *const u8, 2, 0),
                Err(Error::Bounds(BoundsError::Overflow { .. }))
            ));
            // No CUDA ordinal exceeds u32: refused rather than reported as another device.
            assert!(matches!(
                ExternalDeviceMemory::new(0x1000 as *const u8, 2, 1 << 32),
                Err(Error::Bounds(BoundsError::Overflow { .. }))
            ));
        }
        // SAFETY: only described, never dereferenced.
        let d = unsafe { ExternalDeviceMemory::new(0x2000 as *const u8, 10, 3) }.unwrap();
        assert_eq!(d.storage_kind(), StorageKind::Device(3));
        assert_eq!(d.nixl_params().2, MemType::Vram);
        assert_eq!(d.nixl_params().3, 3);
    }
}
