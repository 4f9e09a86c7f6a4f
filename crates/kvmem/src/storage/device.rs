// This module owns a raw device allocation: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]
use crate::cuda::{CudaDevice, driver};
use crate::error::{BoundsError, Error, Result};
use crate::kind::StorageKind;
use cudarc::driver::result;
use std::fmt;

/// Memory of one CUDA device (`cuMemAlloc`), freed on drop with the device's context bound.
///
/// The CPU cannot read it directly; move data in and out with the
/// [`cuda`](crate::cuda) copy helpers or a transfer engine. Its contents start undefined.
pub struct DeviceStorage {
    ptr: u64,
    size: usize,
    device: CudaDevice,
}

impl DeviceStorage {
    /// Allocates `size` bytes on `device`.
    ///
    /// # Errors
    /// [`BoundsError::ZeroSize`] for `size == 0`, [`CudaError::OutOfMemory`](crate::error::CudaError::OutOfMemory) (with the device's free
    /// and total memory) when it does not fit, [`CudaError::Driver`](crate::error::CudaError::Driver) for other driver failures.
    pub fn new(device: &CudaDevice, size: usize) -> Result<Self> {
        if size == 0 {
            return Err(Error::Bounds(BoundsError::ZeroSize {
                what: "device storage",
            }));
        }
        device.bind()?;
        // SAFETY: a plain allocation call; the memory is owned by the value built below.
        let ptr = unsafe { result::malloc_sync(size) }.map_err(|e| {
            if driver::is_out_of_memory(&e) {
                device.out_of_memory(size)
            } else {
                driver::error("allocate device memory (cuMemAlloc)", e)
            }
        })?;
        Ok(Self {
            ptr,
            size,
            device: device.clone(),
        })
    }

    /// The device address.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for DeviceStorage {
    fn drop(&mut self) {
        let call = "free device memory (cuMemFree)";
        self.device.release_logged(call, self.size, || {
            // SAFETY: `ptr` came from cuMemAlloc and is freed exactly once, here.
            unsafe { result::free_sync(self.ptr) }
        });
    }
}

impl fmt::Debug for DeviceStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceStorage")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("size", &self.size)
            .field("device", &self.device.ordinal())
            .finish()
    }
}

storage_region!(
    DeviceStorage,
    |s| s.ptr as usize,
    s.size,
    StorageKind::Device(s.device.kind_id())
);
