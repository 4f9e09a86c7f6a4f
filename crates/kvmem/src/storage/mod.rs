//! Storages: types that own (or, for external memory, wrap) one region of one tier.
//!
//! | type | tier | owns its memory |
//! |---|---|---|
//! | [`SystemStorage`] | [`StorageKind::System`](crate::StorageKind::System) | yes, page-aligned anonymous mapping |
//! | [`DiskStorage`] | [`StorageKind::Disk`](crate::StorageKind::Disk) | yes, a file it created (or an opened one it leaves in place) |
//! | [`ExternalHostMemory`] | system or pinned host memory | no |
//! | [`ExternalDeviceMemory`] | [`StorageKind::Device`](crate::StorageKind::Device) | no |
//! | [`DeviceStorage`] | [`StorageKind::Device`](crate::StorageKind::Device) | yes, `cuMemAlloc` |
//! | [`PooledDeviceStorage`] | [`StorageKind::Device`](crate::StorageKind::Device) | yes, from a stream-ordered [`DevicePool`] |
//! | [`PinnedStorage`] | [`StorageKind::Pinned`](crate::StorageKind::Pinned) | yes, `cuMemHostAlloc` |
//! | [`MappedPinnedStorage`] | [`StorageKind::Pinned`](crate::StorageKind::Pinned) | yes, huge-page mapping page-locked with `cuMemHostRegister` (the fast path) |
//! | [`ExternalPinnedMemory`] | [`StorageKind::Pinned`](crate::StorageKind::Pinned) | no, but page-locks it while alive |
//!
//! The CUDA storages need a [`CudaDevice`](crate::cuda::CudaDevice), and so a loaded driver.

mod device;
mod disk;
mod external;
mod external_pinned;
mod host_mapping;
mod mapped_pinned;
mod pinned;
mod pool;
mod system;

pub use device::DeviceStorage;
pub use disk::{DIRECT_IO_ALIGN, DISK_DIR_ENV, DiskStorage};
pub use external::{ExternalDeviceMemory, ExternalHostMemory};
pub use external_pinned::ExternalPinnedMemory;
pub use host_mapping::PageTier;
pub use mapped_pinned::{MappedPinnedOptions, MappedPinnedStorage, PinnedAllocationReport};
pub use pinned::PinnedStorage;
pub use pool::{DevicePool, PooledDeviceStorage};
pub use system::{HostPages, SystemStorage};
