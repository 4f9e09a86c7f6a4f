//! CUDA driver errors.

/// The CUDA driver is missing or a CUDA call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// CUDA cannot be used in this process: no driver library, a driver too old, or no device.
    #[error(
        "CUDA is not available: {reason}. Install the NVIDIA driver (it provides libcuda.so.1) \
         and check that `nvidia-smi` lists a GPU"
    )]
    Unavailable {
        /// What is missing.
        reason: String,
    },

    /// A CUDA device ordinal beyond the devices present.
    #[error(
        "CUDA device {ordinal} does not exist: this machine has {count} device(s); use an \
         ordinal below {count} (CUDA_VISIBLE_DEVICES may hide some)"
    )]
    DeviceNotFound {
        /// The ordinal asked for.
        ordinal: usize,
        /// Devices present.
        count: usize,
    },

    /// A device allocation did not fit in the GPU's free memory.
    #[error(
        "out of memory on CUDA device {device}: {requested} bytes requested, {free} of {total} \
         bytes free; free device buffers or ask for less"
    )]
    OutOfMemory {
        /// CUDA ordinal.
        device: u32,
        /// Requested size in bytes.
        requested: usize,
        /// Free device memory in bytes when the allocation failed.
        free: usize,
        /// Total device memory in bytes.
        total: usize,
    },

    /// A CUDA driver call failed.
    #[error("CUDA failed to {op}: {name} (error {code}): {message}")]
    Driver {
        /// The operation.
        op: &'static str,
        /// The `CUresult` value.
        code: u32,
        /// The `CUresult` name, e.g. `CUDA_ERROR_INVALID_VALUE`.
        name: String,
        /// The driver's description.
        message: String,
    },

    /// An address range is not device memory the CUDA driver knows.
    #[error(
        "{op}: {size} bytes at {addr:#x} are not inside one device allocation ({reason}); pass \
         memory allocated on a CUDA device"
    )]
    NotDeviceMemory {
        /// The operation.
        op: &'static str,
        /// Start of the range.
        addr: usize,
        /// Length of the range.
        size: usize,
        /// What the driver said about it.
        reason: String,
    },
}
