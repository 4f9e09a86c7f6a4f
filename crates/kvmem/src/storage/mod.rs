//! Storages: types that own (or, for external memory, wrap) one region of one tier.
//!
//! | type | tier | owns its memory |
//! |---|---|---|
//! | [`SystemStorage`] | [`StorageKind::System`](crate::StorageKind::System) | yes, page-aligned anonymous mapping |
//! | [`DiskStorage`] | [`StorageKind::Disk`](crate::StorageKind::Disk) | yes, a file it created (or an opened one it leaves in place) |
//! | [`ExternalHostMemory`] | system or pinned host memory | no |
//! | [`ExternalDeviceMemory`] | [`StorageKind::Device`](crate::StorageKind::Device) | no |

mod disk;
mod external;
mod system;

pub use disk::{DIRECT_IO_ALIGN, DISK_DIR_ENV, DiskStorage};
pub use external::{ExternalDeviceMemory, ExternalHostMemory};
pub use system::SystemStorage;
