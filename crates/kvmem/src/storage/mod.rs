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
//! | [`BackgroundPinnedStorage`] | [`StorageKind::Pinned`](crate::StorageKind::Pinned) | yes, like the fast path, but usable at once and page-locked chunk by chunk in the background |
//! | [`ExternalPinnedMemory`] | [`StorageKind::Pinned`](crate::StorageKind::Pinned) | no, but page-locks it while alive |
//!
//! The CUDA storages need a [`CudaDevice`](crate::cuda::CudaDevice), and so a loaded driver.
//!
//! Each storage states its region once — address, length, tier — with `storage_region!`; its
//! [`MemoryDescriptor`](crate::MemoryDescriptor) and [`NixlCompatible`](crate::nixl::NixlCompatible)
//! impls follow from that (the NIXL memory type and device follow from the tier).

/// Implements [`MemoryDescriptor`](crate::MemoryDescriptor) and
/// [`NixlCompatible`](crate::nixl::NixlCompatible) for an owning storage from one statement of its
/// region: `storage_region!(Type, |s| address, length, kind)`. A storage is not registered by
/// itself ([`nixl_descriptor`](crate::MemoryDescriptor::nixl_descriptor) is `None`); its NIXL
/// memory type and device follow from its kind.
macro_rules! storage_region {
    ($ty:ty, |$s:ident| $addr:expr, $size:expr, $kind:expr) => {
        impl $crate::descriptor::MemoryDescriptor for $ty {
            #[allow(unused_variables)] // a region may not need its storage: a file starts at 0
            fn addr(&self) -> usize {
                let $s = self;
                $addr
            }
            #[allow(unused_variables)] // a region may not need its storage: a file starts at 0
            fn size(&self) -> usize {
                let $s = self;
                $size
            }
            #[allow(unused_variables)] // a region may not need its storage: a file starts at 0
            fn storage_kind(&self) -> $crate::kind::StorageKind {
                let $s = self;
                $kind
            }
            fn as_any(&self) -> &dyn std::any::Any {
                self
            }
            fn nixl_descriptor(&self) -> Option<$crate::region::NixlDescriptor> {
                None
            }
        }

        impl $crate::region::NixlCompatible for $ty {
            fn nixl_params(&self) -> (*const u8, usize, $crate::region::MemType, u64) {
                use $crate::descriptor::MemoryDescriptor as _;
                let space = $crate::region::AddressSpace::of_kind(self.storage_kind());
                // An address only (a file offset for files): NIXL reads it as a number.
                (
                    std::ptr::without_provenance(self.addr()),
                    self.size(),
                    space.mem_type(),
                    space.device_id(),
                )
            }
        }
    };
}

mod background_pinned;
mod device;
mod disk;
mod external;
mod external_pinned;
mod host_mapping;
mod mapped_pinned;
mod pinned;
mod pool;
mod system;

pub use background_pinned::{
    BackgroundPinnedOptions, BackgroundPinnedStorage, DEFAULT_PIN_CHUNK, PinProgress,
};
pub use device::DeviceStorage;
pub use disk::{DIRECT_IO_ALIGN, DISK_DIR_ENV, DiskStorage};
pub use external::{ExternalDeviceMemory, ExternalHostMemory};
pub use external_pinned::ExternalPinnedMemory;
pub use host_mapping::PageTier;
pub use mapped_pinned::{MappedPinnedOptions, MappedPinnedStorage, PinnedAllocationReport};
pub use pinned::PinnedStorage;
pub use pool::{DevicePool, PooledDeviceStorage};
pub use system::{HostPages, SystemStorage};
