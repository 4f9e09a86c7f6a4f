//! Reaching the files of a plan: through the [`DiskStorage`] that owns each, never by
//! re-borrowing the raw descriptor a [`StorageKind::Disk`] carries.

use super::plan::TransferPlan;
use crate::arena::ArenaBuffer;
use crate::descriptor::{Buffer, MemoryDescriptor, Storage};
use crate::error::{Error, LayoutError, Result};
use crate::kind::StorageKind;
use crate::nixl::Registered;
use crate::storage::DiskStorage;
use crate::view::OffsetBuffer;
use rustix::fd::{AsRawFd, BorrowedFd};
use std::any::Any;

impl TransferPlan {
    /// The open file behind `kind` (a [`StorageKind::Disk`]), borrowed from the
    /// [`DiskStorage`] among the plan's buffers that owns it: it stays open as long as the plan.
    ///
    /// # Errors
    /// [`LayoutError::Invalid`] when no buffer of the plan owns that file (a foreign storage
    /// that reports a file descriptor it does not own, say).
    pub(crate) fn file(&self, kind: StorageKind) -> Result<BorrowedFd<'_>> {
        let StorageKind::Disk(fd) = kind else {
            return Err(Error::Layout(LayoutError::Invalid(format!(
                "{kind} memory is not a file"
            ))));
        };
        self.buffers()
            .iter()
            .filter_map(|b| storage_under::<DiskStorage>(b.as_any()))
            .find(|d| d.fd().as_raw_fd() as u64 == fd)
            .map(DiskStorage::fd)
            .ok_or_else(|| {
                Error::Layout(LayoutError::Invalid(format!(
                    "file descriptor {fd} belongs to none of the plan's disk storages; disk \
                     regions must be kvmem DiskStorages (or views and registrations of one)"
                )))
            })
    }
}

/// The storage of type `T` (a storage, not a view or wrapper) that `any` (a buffer's storage)
/// is, or is a view, arena block or NIXL registration of, through any nesting of those: a plan's
/// file (`DiskStorage`), or a pinned pool whose registrations the GPU executor needs.
pub(super) fn storage_under<T: Storage>(any: &dyn Any) -> Option<&T> {
    storage_as(innermost(any))
}

/// `storage` (an [`innermost`] value) as a `T`, or the `T` a NIXL registration of it holds.
pub(super) fn storage_as<T: Storage>(storage: &dyn Any) -> Option<&T> {
    storage.downcast_ref::<T>().or_else(|| {
        storage
            .downcast_ref::<Registered<T>>()
            .map(Registered::storage)
    })
}

/// What is under any nesting of views, arena blocks and NIXL registrations of buffers or views
/// that `any` is; `any` itself when it is none of those.
pub(super) fn innermost(any: &dyn Any) -> &dyn Any {
    if let Some(v) = any.downcast_ref::<OffsetBuffer>() {
        innermost(v.base().as_any())
    } else if let Some(a) = any.downcast_ref::<ArenaBuffer>() {
        innermost(a.view().base().as_any())
    } else if let Some(r) = any.downcast_ref::<Registered<Buffer>>() {
        innermost(r.storage().as_any())
    } else if let Some(r) = any.downcast_ref::<Registered<OffsetBuffer>>() {
        innermost(r.storage().base().as_any())
    } else {
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemStorage;

    /// Executors reach a file through the `DiskStorage` that owns it, through views of it; a
    /// storage that only claims a file descriptor is refused.
    #[test]
    fn files_are_found_through_the_disk_storage_that_owns_them() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Buffer::new(crate::DiskStorage::new_in(dir.path(), 64 << 10).unwrap());
        let file = Buffer::new(OffsetBuffer::new(disk.clone(), 8192, 8192).unwrap());
        let host = Buffer::new(SystemStorage::new(8192).unwrap());
        let plan = TransferPlan::region(&host, &file).unwrap();
        let kind = file.storage_kind();
        let owned = disk.downcast_ref::<DiskStorage>().unwrap().fd().as_raw_fd();
        assert_eq!(plan.file(kind).unwrap().as_raw_fd(), owned);
        assert!(matches!(
            plan.file(StorageKind::Disk(owned as u64 + 1000)),
            Err(Error::Layout(LayoutError::Invalid(_)))
        ));
        assert!(matches!(
            plan.file(StorageKind::System),
            Err(Error::Layout(LayoutError::Invalid(_)))
        ));
    }
}
