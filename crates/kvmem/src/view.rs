//! Checked views of part of a buffer.

use crate::descriptor::{Buffer, MemoryDescriptor};
use crate::error::{BoundsError, Error, Result};
use crate::host::checked_range;
use crate::kind::StorageKind;
use crate::region::{MemType, NixlCompatible, NixlDescriptor};
use std::any::Any;

/// `size` bytes starting `offset` bytes into a [`Buffer`].
///
/// All arithmetic is checked at construction, so a view always lies inside its base. The view
/// keeps the base alive, shares its storage kind, and derives its NIXL descriptor (and NIXL
/// parameters) from the base's: a view of a registered region is a registered range.
#[derive(Debug, Clone)]
pub struct OffsetBuffer {
    base: Buffer,
    offset: usize,
    size: usize,
}

impl OffsetBuffer {
    /// A view of `size` bytes at `offset` in `base`.
    ///
    /// # Errors
    /// [`BoundsError::ZeroSize`] for `size == 0`; [`BoundsError::OutOfBounds`] when the range leaves the base;
    /// [`BoundsError::Overflow`] when the address would overflow.
    pub fn new(base: Buffer, offset: usize, size: usize) -> Result<Self> {
        if size == 0 {
            return Err(Error::Bounds(BoundsError::ZeroSize { what: "view" }));
        }
        checked_range(offset, size, base.size())?;
        base.addr()
            .checked_add(offset)
            .and_then(|a| a.checked_add(size))
            .ok_or(Error::Bounds(BoundsError::Overflow {
                what: "view address",
            }))?;
        Ok(Self { base, offset, size })
    }

    /// A view of `size` bytes at `offset` within this view, sharing the same base.
    ///
    /// # Errors
    /// As for [`new`](Self::new), relative to this view.
    pub fn slice(&self, offset: usize, size: usize) -> Result<Self> {
        checked_range(offset, size, self.size)?;
        Self::new(self.base.clone(), self.offset + offset, size)
    }

    /// The buffer this view looks into.
    pub fn base(&self) -> &Buffer {
        &self.base
    }

    /// Offset of the view in its base, in bytes.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl MemoryDescriptor for OffsetBuffer {
    fn addr(&self) -> usize {
        // Cannot overflow: checked in `new`.
        self.base.addr() + self.offset
    }
    fn size(&self) -> usize {
        self.size
    }
    fn storage_kind(&self) -> StorageKind {
        self.base.storage_kind()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn nixl_descriptor(&self) -> Option<NixlDescriptor> {
        self.base
            .nixl_descriptor()
            .and_then(|d| d.slice(self.offset, self.size))
    }
}

impl NixlCompatible for OffsetBuffer {
    fn nixl_params(&self) -> (*const u8, usize, MemType, u64) {
        let (ptr, _, mem_type, device) = self.base.nixl_params();
        // An address computation only: for files the "pointer" is an offset, so no provenance
        // is needed and `wrapping_add` never dereferences.
        (ptr.wrapping_add(self.offset), self.size, mem_type, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemStorage;

    #[test]
    fn nested_views_compose() {
        let base = Buffer::new(SystemStorage::new(4096).unwrap());
        let v = OffsetBuffer::new(base.clone(), 100, 1000).unwrap();
        let w = v.slice(50, 10).unwrap();
        assert_eq!(w.offset(), 150);
        assert_eq!(w.addr(), base.addr() + 150);
        assert_eq!(w.nixl_params().0 as usize, base.addr() + 150);
        assert!(v.slice(995, 10).is_err());
        assert!(w.nixl_descriptor().is_none());
    }
}
