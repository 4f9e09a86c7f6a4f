//! Safe byte access to host-accessible memory.
//!
//! Only storages the CPU can load from implement [`HostMemory`]; device and disk memory never hand
//! out slices. Slices are borrowed from the owner, so Rust's aliasing rules hold: `&self` gives
//! `&[u8]`, `&mut self` gives `&mut [u8]`.

use crate::descriptor::MemoryDescriptor;
use crate::error::{BoundsError, Error, Result};

/// Host memory the CPU can read and write directly.
pub trait HostMemory: MemoryDescriptor {
    /// The whole region as bytes.
    fn as_slice(&self) -> &[u8];

    /// The whole region as mutable bytes.
    fn as_mut_slice(&mut self) -> &mut [u8];

    /// For memory page-locked with CUDA in several registrations: the address range of each
    /// (one DMA copy must not cross from one registration into the next). `None`, the default,
    /// when one copy may cover the whole region.
    fn page_locked_ranges(&self) -> Option<Vec<std::ops::Range<usize>>> {
        None
    }

    /// Sets every byte to `value`.
    fn memset(&mut self, value: u8) {
        self.as_mut_slice().fill(value);
    }

    /// Copies `src` into the region at `offset`.
    ///
    /// # Errors
    /// [`BoundsError::OutOfBounds`] when `offset + src.len()` exceeds the region.
    fn copy_from(&mut self, offset: usize, src: &[u8]) -> Result<()> {
        let dst = self.as_mut_slice();
        let range = checked_range(offset, src.len(), dst.len())?;
        dst[range].copy_from_slice(src);
        Ok(())
    }

    /// Copies `dst.len()` bytes of the region, from `offset`, into `dst`.
    ///
    /// # Errors
    /// [`BoundsError::OutOfBounds`] when `offset + dst.len()` exceeds the region.
    fn copy_to(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        let src = self.as_slice();
        let range = checked_range(offset, dst.len(), src.len())?;
        dst.copy_from_slice(&src[range]);
        Ok(())
    }
}

/// `offset..offset + len` if it lies inside `0..size`.
pub(crate) fn checked_range(
    offset: usize,
    len: usize,
    size: usize,
) -> Result<std::ops::Range<usize>> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(offset..end),
        _ => Err(Error::Bounds(BoundsError::OutOfBounds {
            offset,
            len,
            size,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemStorage;

    #[test]
    fn copies_are_bounds_checked() {
        let mut s = SystemStorage::new(16).unwrap();
        s.copy_from(12, &[1, 2, 3, 4]).unwrap();
        let mut out = [0u8; 4];
        s.copy_to(12, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
        assert!(matches!(
            s.copy_from(13, &[0; 4]),
            Err(Error::Bounds(BoundsError::OutOfBounds { .. }))
        ));
        assert!(matches!(
            s.copy_to(usize::MAX, &mut out),
            Err(Error::Bounds(BoundsError::OutOfBounds { .. }))
        ));
    }
}
