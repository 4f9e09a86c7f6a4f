// This module owns a raw pinned host allocation: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]
use super::host_mapping::{parallel_chunks, worker_threads};
use crate::cuda::{CudaDevice, driver};
use crate::error::{BoundsError, CudaError, Error, MemoryError, Result};
use crate::host::HostMemory;
use crate::kind::StorageKind;
use cudarc::driver::result;
use std::fmt;
use std::ptr::NonNull;

/// Page-locked host memory from the driver's own allocator (`cuMemHostAlloc`, portable and
/// device-mapped), zero-filled, freed on drop with the device's context bound.
///
/// The region starts on a [`PAGE_SIZE`](crate::PAGE_SIZE) boundary, so it can take part in
/// `O_DIRECT` I/O: the driver aligns small allocations to less than a page (512 bytes for a
/// 64 KiB one was seen on an H200), so up to a page more is allocated and the region starts at
/// the first page boundary inside it.
///
/// This is the classic way to get pinned memory and the baseline the faster
/// [`MappedPinnedStorage`](super::MappedPinnedStorage) is measured against; prefer that one for
/// pools of many GiB.
pub struct PinnedStorage {
    /// What `cuMemHostAlloc` returned, freed on drop.
    raw: NonNull<u8>,
    /// The first page boundary at or after `raw`: the start of the region.
    ptr: NonNull<u8>,
    size: usize,
    device: CudaDevice,
}

// SAFETY: the allocation is owned exclusively by this value and is valid host memory from any
// thread; access goes through `&self`/`&mut self` borrows as for a `Vec<u8>`, and the free in
// `Drop` binds the context on whichever thread runs it.
unsafe impl Send for PinnedStorage {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for PinnedStorage {}

impl PinnedStorage {
    /// Allocates `size` bytes of pinned memory through `device`'s context.
    ///
    /// # Errors
    /// [`BoundsError::ZeroSize`] for `size == 0`, [`MemoryError::PinnedOutOfMemory`] when the driver cannot
    /// lock that much memory, [`CudaError::Driver`] for other driver failures.
    pub fn new(device: &CudaDevice, size: usize) -> Result<Self> {
        if size == 0 {
            return Err(Error::Bounds(BoundsError::ZeroSize {
                what: "pinned storage",
            }));
        }
        let page = crate::PAGE_SIZE;
        let alloc = size
            .checked_add(page)
            .ok_or(Error::Bounds(BoundsError::Overflow {
                what: "pinned storage size",
            }))?;
        device.bind()?;
        let flags = driver::HOST_ALLOC_MAPPED;
        // SAFETY: a plain allocation call; the returned memory is owned by the value built below.
        let raw = unsafe { result::malloc_host(alloc, flags) }.map_err(|e| {
            if driver::is_out_of_memory(&e) {
                Error::Memory(MemoryError::PinnedOutOfMemory {
                    requested: size,
                    available: driver::host_memory_available(),
                })
            } else {
                driver::error("allocate pinned host memory (cuMemHostAlloc)", e)
            }
        })?;
        let raw = NonNull::new(raw.cast::<u8>()).ok_or_else(|| {
            Error::Cuda(CudaError::Driver {
                op: "allocate pinned host memory (cuMemHostAlloc)",
                code: 0,
                name: "CUDA_SUCCESS".into(),
                message: "the driver returned a null pointer".into(),
            })
        })?;
        let skip = raw.as_ptr().align_offset(page);
        // SAFETY: `skip < page`, so `raw + skip .. raw + skip + size` lies inside the `size + page`
        // bytes just allocated, and the result is not null (it is at or after `raw`).
        let ptr = unsafe { NonNull::new_unchecked(raw.as_ptr().add(skip)) };
        let storage = Self {
            raw,
            ptr,
            size,
            device: device.clone(),
        };
        // The driver does not promise zeroed memory; make it so (in parallel: this is GiBs).
        let base = ptr.as_ptr() as usize;
        parallel_chunks(size, crate::PAGE_SIZE, worker_threads(size, None), |r| {
            // SAFETY: `r` lies inside the allocation, which is alive and exclusively ours for the
            // whole call; the ranges of different threads are disjoint.
            unsafe { std::ptr::write_bytes((base + r.start) as *mut u8, 0, r.len()) };
        });
        Ok(storage)
    }
}

impl Drop for PinnedStorage {
    fn drop(&mut self) {
        let call = "free pinned host memory (cuMemFreeHost)";
        self.device.release_logged(call, self.size, || {
            // SAFETY: `raw` came from cuMemHostAlloc and is freed exactly once, here.
            unsafe { result::free_host(self.raw.as_ptr().cast()) }
        });
    }
}

impl fmt::Debug for PinnedStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedStorage")
            .field("addr", &self.ptr)
            .field("size", &self.size)
            .field("device", &self.device.ordinal())
            .finish()
    }
}

storage_region!(
    PinnedStorage,
    |s| s.ptr.as_ptr() as usize,
    s.size,
    StorageKind::Pinned
);

impl HostMemory for PinnedStorage {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+size` is a live allocation owned by `self`, zero-initialised in `new`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.size) }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only live slice.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.size) }
    }
}
