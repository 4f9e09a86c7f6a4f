//! The memory descriptor trait every region implements, and [`Buffer`], a type-erased handle.

use crate::kind::StorageKind;
use crate::region::{NixlCompatible, NixlDescriptor};
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

/// Implements [`MemoryDescriptor`] and [`NixlCompatible`] for a wrapper by forwarding every
/// method to one of its fields, for a type that adds something (ownership, a registration, a
/// check on drop) to a region it holds without changing where the region lies.
///
/// `forward_memory_descriptor!(Wrapper => field)` forwards all five methods and
/// [`nixl_params`](NixlCompatible::nixl_params). Generics go in brackets after `impl`. Two
/// methods may be given instead of forwarded: `as_any: self` makes the wrapper itself the value
/// [`as_any`](MemoryDescriptor::as_any) downcasts to, and `nixl_descriptor: f` answers
/// [`nixl_descriptor`](MemoryDescriptor::nixl_descriptor) with `f(&wrapper)`.
///
/// ```
/// use kvmem::{MemoryDescriptor, SystemStorage};
///
/// /// A host buffer that counts as never registered.
/// #[derive(Debug)]
/// struct Unregistered<S> {
///     inner: S,
/// }
///
/// kvmem::forward_memory_descriptor!(
///     impl[S: kvmem::Storage] Unregistered<S> => inner,
///     as_any: self,
///     nixl_descriptor: |_| None,
/// );
///
/// let wrapped = Unregistered { inner: SystemStorage::new(4096)? };
/// assert_eq!(wrapped.size(), 4096);
/// assert!(wrapped.nixl_descriptor().is_none());
/// assert!(wrapped.as_any().downcast_ref::<Unregistered<SystemStorage>>().is_some());
/// # Ok::<(), kvmem::Error>(())
/// ```
#[macro_export]
macro_rules! forward_memory_descriptor {
    (
        impl[$($gen:tt)*] $ty:ty => $field:ident
        $(, as_any: $as_any:tt)?
        $(, nixl_descriptor: $descriptor:expr)?
        $(,)?
    ) => {
        impl<$($gen)*> $crate::MemoryDescriptor for $ty {
            fn addr(&self) -> usize {
                $crate::__forward_or!(self.$field.addr())
            }
            fn size(&self) -> usize {
                $crate::__forward_or!(self.$field.size())
            }
            fn storage_kind(&self) -> $crate::StorageKind {
                $crate::__forward_or!(self.$field.storage_kind())
            }
            fn as_any(&self) -> &dyn ::std::any::Any {
                $crate::__forward_or!(self.$field.as_any() $(, $as_any)?)
            }
            fn nixl_descriptor(&self) -> Option<$crate::region::NixlDescriptor> {
                $crate::__forward_or!(self.$field.nixl_descriptor() $(, $descriptor)?)
            }
        }

        impl<$($gen)*> $crate::region::NixlCompatible for $ty {
            fn nixl_params(&self) -> (*const u8, usize, $crate::region::MemType, u64) {
                $crate::__forward_or!(self.$field.nixl_params())
            }
        }
    };
    ($ty:ty => $($rest:tt)*) => {
        $crate::forward_memory_descriptor!(impl[] $ty => $($rest)*);
    };
}

/// One method of [`forward_memory_descriptor!`]: the field's answer, with `self` the wrapper
/// itself, or with a function what it says for the wrapper.
#[doc(hidden)]
#[macro_export]
macro_rules! __forward_or {
    ($this:ident . $field:ident . $method:ident()) => {{
        #[allow(unused_imports)] // in scope already where the wrapper is defined in kvmem
        use $crate::{MemoryDescriptor as _, region::NixlCompatible as _};
        $this.$field.$method()
    }};
    ($this:ident . $field:ident . $method:ident(), self) => {
        $this
    };
    ($this:ident . $field:ident . $method:ident(), $answer:expr) => {
        ($answer)($this)
    };
}

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

crate::forward_memory_descriptor!(Buffer => inner);
