// This module owns a CUDA memory pool and its raw allocations: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]
use crate::cuda::{CudaDevice, driver};
use crate::error::{BoundsError, Error, Result};
use crate::kind::StorageKind;
use cudarc::driver::{CudaStream, result};
use std::fmt;
use std::sync::Arc;

/// A stream-ordered pool of device memory (`cuMemPoolCreate`, `cuMemAllocFromPoolAsync`,
/// `cuMemFreeAsync`) that keeps up to `release_threshold` bytes reserved between uses.
///
/// CUDA pools give freed memory back to the device at every synchronization once they hold more
/// than their release threshold, and the default threshold is 0: without one, every
/// synchronize hands the whole reserve back and the next allocation pays for `cuMemAlloc`
/// again. kvmem sets the threshold at creation, and [`reserve`](Self::reserve) fills the pool up
/// front.
///
/// Allocation and free are ordered on the pool's own stream; [`alloc`](Self::alloc) waits for the
/// allocation before it returns, so the memory can be used from any stream. Dropping a
/// [`PooledDeviceStorage`] returns its memory to the pool; the caller must have finished (waited
/// for) all work using it first, as for any free.
#[derive(Clone)]
pub struct DevicePool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    pool: driver::PoolHandle,
    stream: Arc<CudaStream>,
    device: CudaDevice,
    release_threshold: u64,
}

// SAFETY: `pool` is a driver handle usable from any thread once the owning context is bound,
// which every method does; the handle is destroyed only in Drop, after the last user is gone.
unsafe impl Send for PoolInner {}
// SAFETY: as above; the driver's pool functions are thread-safe.
unsafe impl Sync for PoolInner {}

impl DevicePool {
    /// Creates a pool on `device` that keeps up to `release_threshold` bytes reserved across
    /// synchronizations (`u64::MAX`: never release on its own).
    ///
    /// # Errors
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) if the device does not support memory pools or the driver refuses.
    pub fn new(device: &CudaDevice, release_threshold: u64) -> Result<Self> {
        device.bind()?;
        let ordinal = i32::try_from(device.ordinal()).map_err(|_| {
            Error::Bounds(BoundsError::Overflow {
                what: "CUDA device ordinal",
            })
        })?;
        let pool = driver::mem_pool_create(ordinal)
            .map_err(|e| driver::error("create a device memory pool", e))?;
        let stream = match device.context().new_stream() {
            Ok(stream) => stream,
            Err(e) => {
                // SAFETY: the pool was just created and has no allocations.
                let _ = unsafe { result::mem_pool::destroy(pool) };
                return Err(driver::error("create the pool's stream", e));
            }
        };
        let inner = PoolInner {
            pool,
            stream,
            device: device.clone(),
            release_threshold,
        };
        let mut threshold = release_threshold;
        // SAFETY: the attribute takes a cuuint64_t, which `threshold` is; the pool is valid.
        // On error `inner` is dropped, destroying the pool.
        unsafe {
            result::mem_pool::set_attribute(
                inner.pool,
                driver::PoolAttribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&raw mut threshold).cast(),
            )
        }
        .map_err(|e| driver::error("set the pool's release threshold", e))?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Allocates `size` bytes from the pool (growing it when the reserve is too small) and waits
    /// until the allocation is usable.
    ///
    /// # Errors
    /// [`BoundsError::ZeroSize`] for `size == 0`, [`CudaError::OutOfMemory`](crate::error::CudaError::OutOfMemory) when the device has no
    /// room, [`CudaError::Driver`](crate::error::CudaError::Driver) for other driver failures.
    pub fn alloc(&self, size: usize) -> Result<PooledDeviceStorage> {
        if size == 0 {
            return Err(Error::Bounds(BoundsError::ZeroSize {
                what: "pool allocation",
            }));
        }
        let inner = &self.inner;
        inner.device.bind()?;
        // SAFETY: pool and stream are valid; the memory is owned by the value built below.
        let attempt =
            unsafe { result::mem_pool::alloc_async(inner.pool, size, inner.stream.cu_stream()) };
        let ptr = match attempt {
            Ok(ptr) => ptr,
            Err(e) if driver::is_out_of_memory(&e) => {
                // A failed allocation can leave the pool holding nearly all of the device's free
                // memory until its next synchronize (seen on an H100, driver 580); give back what
                // exceeds the threshold now, so other users (and the error's numbers) see it.
                let keep = usize::try_from(inner.release_threshold).unwrap_or(usize::MAX);
                if let Err(trim) = self.trim_to(keep) {
                    tracing::warn!(error = %trim, "could not trim the pool after a failed allocation");
                }
                return Err(inner.device.out_of_memory(size));
            }
            Err(e) => {
                return Err(driver::error(
                    "allocate from the device pool (cuMemAllocFromPoolAsync)",
                    e,
                ));
            }
        };
        let storage = PooledDeviceStorage {
            ptr,
            size,
            pool: self.inner.clone(),
        };
        // On error `storage` is dropped, which frees the allocation again.
        self.synchronize()?;
        Ok(storage)
    }

    /// Makes sure the pool holds at least `bytes` reserved, by allocating them once and giving
    /// them back. They stay reserved as long as the release threshold is at least `bytes`.
    ///
    /// # Errors
    /// As for [`alloc`](Self::alloc).
    pub fn reserve(&self, bytes: usize) -> Result<()> {
        drop(self.alloc(bytes)?);
        self.synchronize()
    }

    /// Waits for the pool's stream: every allocation and free issued so far has happened.
    ///
    /// # Errors
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) if work on the stream failed.
    pub fn synchronize(&self) -> Result<()> {
        self.inner.device.bind()?;
        // SAFETY: the stream is alive for as long as `inner`.
        unsafe { result::stream::synchronize(self.inner.stream.cu_stream()) }
            .map_err(|e| driver::error("synchronize the pool's stream", e))
    }

    /// Device memory the pool currently holds from the driver, in use or not.
    ///
    /// # Errors
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) if the driver cannot say.
    pub fn reserved_bytes(&self) -> Result<u64> {
        self.attribute(driver::PoolAttribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)
    }

    /// Device memory currently handed out by the pool.
    ///
    /// # Errors
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) if the driver cannot say.
    pub fn used_bytes(&self) -> Result<u64> {
        self.attribute(driver::PoolAttribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
    }

    /// The release threshold the pool was created with.
    pub fn release_threshold(&self) -> u64 {
        self.inner.release_threshold
    }

    /// Gives reserved but unused memory back to the device until at most `keep` bytes remain
    /// reserved.
    ///
    /// # Errors
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) if the driver refuses.
    pub fn trim_to(&self, keep: usize) -> Result<()> {
        self.synchronize()?;
        // SAFETY: the pool is valid.
        unsafe { result::mem_pool::trim_to(self.inner.pool, keep) }
            .map_err(|e| driver::error("trim the device pool", e))
    }

    fn attribute(&self, attr: driver::PoolAttribute) -> Result<u64> {
        self.inner.device.bind()?;
        let mut value: u64 = 0;
        // SAFETY: the queried attributes are cuuint64_t, which `value` is; the pool is valid.
        unsafe { result::mem_pool::get_attribute(self.inner.pool, attr, (&raw mut value).cast()) }
            .map_err(|e| driver::error("query a pool attribute", e))?;
        Ok(value)
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        self.device
            .release_logged("destroy the device memory pool", 0, || {
                // SAFETY: every allocation holds an `Arc` to this value, so all have been freed
                // (in stream order); waiting on the stream lets those frees complete first.
                unsafe {
                    result::stream::synchronize(self.stream.cu_stream())
                        .and_then(|()| result::mem_pool::destroy(self.pool))
                }
            });
    }
}

impl fmt::Debug for DevicePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevicePool")
            .field("device", &self.inner.device.ordinal())
            .field("release_threshold", &self.inner.release_threshold)
            .finish()
    }
}

/// Device memory allocated from a [`DevicePool`]; returned to the pool (stream-ordered) on drop.
pub struct PooledDeviceStorage {
    ptr: u64,
    size: usize,
    pool: Arc<PoolInner>,
}

impl PooledDeviceStorage {
    /// The device address.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for PooledDeviceStorage {
    fn drop(&mut self) {
        let call = "return memory to the device pool (cuMemFreeAsync)";
        self.pool.device.release_logged(call, self.size, || {
            // SAFETY: `ptr` came from this pool and is freed exactly once, here, on the stream it
            // was allocated on.
            unsafe { result::free_async(self.ptr, self.pool.stream.cu_stream()) }
        });
    }
}

impl fmt::Debug for PooledDeviceStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledDeviceStorage")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("size", &self.size)
            .field("device", &self.pool.device.ordinal())
            .finish()
    }
}

storage_region!(
    PooledDeviceStorage,
    |s| s.ptr as usize,
    s.size,
    StorageKind::Device(s.pool.device.kind_id())
);
