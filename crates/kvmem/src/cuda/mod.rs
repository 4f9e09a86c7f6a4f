//! CUDA through the driver API: loading the driver, one primary context per device, device
//! information, page-locking host memory, whole-region copies for verification, and a compute
//! load to measure copies beside ([`compute`]).
//!
//! kvmem uses [`cudarc`] (re-exported as [`cuda::cudarc`](self::cudarc)) with dynamic loading:
//! the crate builds and runs on machines without CUDA, and every entry point here returns
//! [`CudaError::Unavailable`] there rather than panicking. A [`CudaDevice`] can only be obtained
//! once the driver is loaded, so everything that takes one can rely on it.
//!
//! **Contexts.** kvmem uses the device's *primary* context, the one the CUDA runtime (and so
//! PyTorch) uses too, retained once per device for the life of the process. CUDA binds contexts
//! per thread; every kvmem function that calls the driver binds the right one first
//! ([`CudaDevice::bind`]), so storages can be created on one thread and used or dropped on another.
//!
//! ```no_run
//! use kvmem::cuda::{self, CudaDevice};
//! use kvmem::{DeviceStorage, HostMemory, PinnedStorage};
//!
//! let gpu = CudaDevice::new(0)?;
//! let mut host = PinnedStorage::new(&gpu, 1 << 20)?;
//! host.memset(7);
//! let dev = DeviceStorage::new(&gpu, 1 << 20)?;
//! cuda::copy_host_to_device(&host, &dev)?;
//! # Ok::<(), kvmem::Error>(())
//! ```

pub mod batch;
pub mod compute;
mod copy;
pub mod driver;
pub mod interop;
pub(crate) mod page_lock;

pub use copy::{copy_device_to_device, copy_device_to_host, copy_host_to_device};
pub use cudarc;
pub use driver::{DriverInfo, load as load_driver};
pub use page_lock::{MAX_HOST_REGISTRATION, mapped_device_pointer};

use crate::error::{CudaError, Error, Result};
use cudarc::driver::{CudaContext, result};
use serde::Serialize;
use std::fmt;
use std::sync::{Arc, Mutex};

/// The primary context of every device opened so far, by ordinal; retained for the whole process.
static CONTEXTS: Mutex<Vec<Option<Arc<CudaContext>>>> = Mutex::new(Vec::new());

/// One CUDA device and its primary context. Cheap to clone; all clones share the context.
#[derive(Clone)]
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
}

impl CudaDevice {
    /// Opens device `ordinal`: loads the driver if needed and retains the device's primary context
    /// (once per process; later calls return the same context). Binds it to the calling thread.
    ///
    /// # Errors
    /// [`CudaError::Unavailable`] without a usable driver, [`CudaError::DeviceNotFound`] for an
    /// ordinal beyond the devices present, [`CudaError::Driver`] if the context cannot be created.
    pub fn new(ordinal: usize) -> Result<Self> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::Cuda(CudaError::DeviceNotFound { ordinal, count }));
        }
        let mut contexts = CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
        if contexts.len() <= ordinal {
            contexts.resize(ordinal + 1, None);
        }
        let ctx = match &contexts[ordinal] {
            Some(ctx) => ctx.clone(),
            None => {
                let ctx = CudaContext::new(ordinal)
                    .map_err(|e| driver::error("retain the device's primary context", e))?;
                contexts[ordinal] = Some(ctx.clone());
                ctx
            }
        };
        drop(contexts);
        let device = Self { ctx };
        device.bind()?;
        Ok(device)
    }

    /// The CUDA ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// The ordinal as a [`StorageKind::Device`](crate::StorageKind::Device) carries it.
    pub(crate) fn kind_id(&self) -> u32 {
        // CUDA ordinals are small `int`s; `new` only accepts ordinals below the device count.
        u32::try_from(self.ordinal()).unwrap_or(u32::MAX)
    }

    /// Makes this device's primary context current on the calling thread (a no-op when it
    /// already is).
    ///
    /// # Errors
    /// [`CudaError::Driver`] if the driver refuses.
    pub fn bind(&self) -> Result<()> {
        // The context is retained by `self.ctx` (and the process-wide registry) for as long as
        // this value exists.
        driver::make_current(&self.ctx)
    }

    /// Waits for all work on the device's context to finish.
    ///
    /// # Errors
    /// [`CudaError::Driver`] if any of that work failed.
    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        result::ctx::synchronize().map_err(|e| driver::error("synchronize the context", e))
    }

    /// Free and total device memory in bytes.
    ///
    /// # Errors
    /// [`CudaError::Driver`] if the driver cannot say.
    pub fn memory_info(&self) -> Result<MemoryInfo> {
        self.bind()?;
        let (free, total) =
            result::mem_get_info().map_err(|e| driver::error("query device memory", e))?;
        Ok(MemoryInfo { free, total })
    }

    /// Name, memory, compute capability, PCI address and host NUMA node of the device.
    ///
    /// # Errors
    /// [`CudaError::Driver`] if the driver cannot say.
    pub fn info(&self) -> Result<DeviceInfo> {
        let attribute = |attr: driver::DeviceAttribute| {
            self.ctx
                .attribute(attr)
                .map_err(|e| driver::error("query a device attribute", e))
        };
        use driver::DeviceAttribute as A;
        let name = self
            .ctx
            .name()
            .map_err(|e| driver::error("query the device name", e))?;
        let memory = self.memory_info()?;
        let pci_bus_id = format!(
            "{:04x}:{:02x}:{:02x}.0",
            attribute(A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
            attribute(A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?,
            attribute(A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?,
        );
        let host_numa_node = u32::try_from(attribute(A::CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID)?).ok();
        Ok(DeviceInfo {
            ordinal: self.ordinal(),
            name,
            total_memory: memory.total,
            free_memory: memory.free,
            compute_capability: (
                attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            multiprocessors: attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            pci_bus_id,
            host_numa_node,
        })
    }

    /// The host NUMA node nearest the device: from sysfs (the PCI device's `numa_node`) when it
    /// names one, else from the driver (`CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID`); `None` when neither
    /// knows. Pass it to [`MappedPinnedOptions::numa_node`](crate::MappedPinnedOptions::numa_node)
    /// to place pinned memory next to the GPU.
    ///
    /// # Errors
    /// [`CudaError::Driver`] if the driver cannot be queried.
    pub fn numa_node(&self) -> Result<Option<u32>> {
        let info = self.info()?;
        Ok(crate::topology::Topology::detect()
            .gpu_numa_node(&info.pci_bus_id)
            .or(info.host_numa_node))
    }

    /// The cudarc context, for calling CUDA beyond what kvmem wraps (launching kernels, say).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The drop path of a resource this device's context owns: binds the context, then runs
    /// `release`, the driver call `call` names ("free device memory (cuMemFree)", say), and logs
    /// a refusal of either with `size` (the bytes concerned, 0 when none) instead of panicking.
    pub(crate) fn release_logged(
        &self,
        call: &'static str,
        size: usize,
        release: impl FnOnce() -> std::result::Result<(), cudarc::driver::DriverError>,
    ) {
        let released = self
            .bind()
            .and_then(|()| release().map_err(|e| driver::error(call, e)));
        if let Err(e) = released {
            tracing::error!(error = %e, size, "could not {call}");
        }
    }

    /// [`CudaError::OutOfMemory`] for a request of `requested` bytes, with the device's current
    /// free and total memory in it.
    pub(crate) fn out_of_memory(&self, requested: usize) -> Error {
        let (free, total) = self
            .memory_info()
            .map_or((0, 0), |info| (info.free, info.total));
        Error::Cuda(CudaError::OutOfMemory {
            device: self.kind_id(),
            requested,
            free,
            total,
        })
    }
}

impl fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal())
            .finish()
    }
}

impl PartialEq for CudaDevice {
    fn eq(&self, other: &Self) -> bool {
        self.ordinal() == other.ordinal()
    }
}

impl Eq for CudaDevice {}

/// Binds `device`'s context to the calling thread, and returns a new stream in it and the kernel
/// `name` of the PTX module `ptx`. `what` names the kernel in errors: the binding's and the
/// stream's errors are returned as is; the kernel's comes second, so a caller may carry on without
/// it.
///
/// A kernel is loaded once per device and process and then shared by every stream that asks for
/// it (its module stays loaded for the rest of the process): a stream made to replace one that
/// stalled must not load a module, since loading one may synchronize the context and so wait
/// for the stall.
pub(crate) fn stream_and_kernel(
    device: &CudaDevice,
    ptx: &'static str,
    name: &'static str,
    what: &'static str,
) -> Result<(
    Arc<cudarc::driver::CudaStream>,
    Result<cudarc::driver::CudaFunction>,
)> {
    device.bind()?;
    /// The kernels loaded so far, by device ordinal and kernel name.
    type Loaded = Vec<((usize, &'static str), cudarc::driver::CudaFunction)>;
    static LOADED: Mutex<Loaded> = Mutex::new(Vec::new());
    let ctx = device.context();
    let stream = ctx
        .new_stream()
        .map_err(|e| driver::error("create a stream", e))?;
    let key = (device.ordinal(), name);
    // Held while loading, so that two streams made at once load the kernel once.
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, kernel)) = loaded.iter().find(|(k, _)| *k == key) {
        return Ok((stream, Ok(kernel.clone())));
    }
    let kernel = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .map_err(|e| driver::error(what, e))
        .and_then(|module| {
            module
                .load_function(name)
                .map_err(|e| driver::error(what, e))
        });
    if let Ok(kernel) = &kernel {
        loaded.push((key, kernel.clone()));
    }
    Ok((stream, kernel))
}

/// Free and total memory of a device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryInfo {
    /// Bytes free.
    pub free: usize,
    /// Bytes in total.
    pub total: usize,
}

/// What the driver says about one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// CUDA ordinal.
    pub ordinal: usize,
    /// Marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total memory in bytes.
    pub total_memory: usize,
    /// Free memory in bytes when asked.
    pub free_memory: usize,
    /// Compute capability `(major, minor)`.
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors.
    pub multiprocessors: i32,
    /// PCI address `domain:bus:device.function`, as in `/sys/bus/pci/devices`.
    pub pci_bus_id: String,
    /// The host NUMA node nearest the device, when the driver knows one.
    pub host_numa_node: Option<u32>,
}

/// Number of CUDA devices visible to this process.
///
/// # Errors
/// [`CudaError::Unavailable`] without a usable driver.
pub fn device_count() -> Result<usize> {
    driver::load()?;
    let count = result::device::get_count().map_err(|e| driver::error("count devices", e))?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// [`DeviceInfo`] for every visible device.
///
/// # Errors
/// [`CudaError::Unavailable`] without a usable driver; [`CudaError::Driver`] if a query fails.
pub fn devices() -> Result<Vec<DeviceInfo>> {
    (0..device_count()?)
        .map(|ordinal| CudaDevice::new(ordinal)?.info())
        .collect()
}
