//! The memory descriptor trait every region implements, and [`Buffer`], a type-erased handle.

use crate::kind::StorageKind;
use crate::region::{MemType, NixlCompatible, NixlDescriptor};
use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// A region of memory in one storage tier.
///
/// The five required methods are the whole contract; foreign types (a framework's own tensor
/// wrapper, say) implement them and can then be viewed, sub-allocated and registered like kvmem's
/// own storages. Methods added later always have a default body.
pub trait MemoryDescriptor: Send + Sync + fmt::Debug {
    /// Start address of the region. For disk storage this is the offset in the file.
    fn addr(&self) -> usize;

    /// Length of the region in bytes.
    fn size(&self) -> usize;

    /// The tier the region lives in.
    fn storage_kind(&self) -> StorageKind;

    /// The concrete value, for downcasting.
    fn as_any(&self) -> &dyn Any;

    /// The NIXL descriptor of the region once it is registered with an agent; `None` before.
    fn nixl_descriptor(&self) -> Option<NixlDescriptor>;

    /// One past the last address of the region, or `None` if that overflows `usize`.
    fn end_addr(&self) -> Option<usize> {
        self.addr().checked_add(self.size())
    }
}

/// A memory region kvmem can view, sub-allocate and hand to NIXL: a [`MemoryDescriptor`] that is
/// also [`NixlCompatible`]. Implemented for every such type.
pub trait Storage: MemoryDescriptor + NixlCompatible + 'static {}

impl<T: MemoryDescriptor + NixlCompatible + 'static> Storage for T {}

/// A cheap-to-clone, type-erased, shared handle over any [`Storage`].
///
/// The storage is freed when the last clone is dropped. [`Buffer::downcast_ref`] recovers the
/// concrete type.
///
/// ```
/// use kvmem::{Buffer, MemoryDescriptor, SystemStorage};
/// let buffer = Buffer::new(SystemStorage::new(8192)?);
/// let copy = buffer.clone();
/// assert_eq!(copy.addr(), buffer.addr());
/// assert!(buffer.downcast_ref::<SystemStorage>().is_some());
/// # Ok::<(), kvmem::Error>(())
/// ```
#[derive(Clone)]
pub struct Buffer {
    inner: Arc<dyn Storage>,
}

impl Buffer {
    /// Wraps a storage; the buffer (and its clones) now own it.
    pub fn new<S: Storage>(storage: S) -> Self {
        Self {
            inner: Arc::new(storage),
        }
    }

    /// Wraps a storage that is already shared.
    pub fn from_arc(storage: Arc<dyn Storage>) -> Self {
        Self { inner: storage }
    }

    /// The concrete storage, if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.inner.as_any().downcast_ref::<T>()
    }

    /// True if both handles refer to the same storage.
    pub(crate) fn ptr_eq(&self, other: &Buffer) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Buffer").field(&self.inner).finish()
    }
}

impl MemoryDescriptor for Buffer {
    fn addr(&self) -> usize {
        self.inner.addr()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn storage_kind(&self) -> StorageKind {
        self.inner.storage_kind()
    }
    fn as_any(&self) -> &dyn Any {
        self.inner.as_any()
    }
    fn nixl_descriptor(&self) -> Option<NixlDescriptor> {
        self.inner.nixl_descriptor()
    }
}

impl NixlCompatible for Buffer {
    fn nixl_params(&self) -> (*const u8, usize, MemType, u64) {
        self.inner.nixl_params()
    }
}
