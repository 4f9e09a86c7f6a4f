//! Sub-allocation of one storage into many buffers.

use crate::PAGE_SIZE;
use crate::descriptor::{Buffer, MemoryDescriptor, Storage};
use crate::error::{BoundsError, Error, MemoryError, Result};
use crate::view::OffsetBuffer;
use offset_allocator::{Allocation, Allocator};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// Hands out page-granular, non-overlapping ranges of one storage as [`ArenaBuffer`]s.
///
/// Built on the `offset-allocator` crate (a two-level segregated-fit allocator with O(1)
/// allocation and free). Thread-safe; cloning shares the arena. Each buffer keeps the arena and
/// its storage alive and returns its range when dropped.
#[derive(Clone)]
pub struct ArenaAllocator {
    inner: Arc<ArenaInner>,
}

struct ArenaInner {
    base: Buffer,
    pages: u32,
    allocator: Mutex<Allocator>,
}

impl ArenaInner {
    fn lock(&self) -> MutexGuard<'_, Allocator> {
        // The allocator holds plain data; a panic elsewhere cannot leave it half-updated in a
        // way that matters for memory safety, so a poisoned lock is still usable.
        self.allocator.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ArenaAllocator {
    /// An arena over `storage`. Only whole pages are used: a tail shorter than a page is left
    /// unused.
    ///
    /// # Errors
    /// As for [`from_buffer`](Self::from_buffer).
    pub fn new<S: Storage>(storage: S) -> Result<Self> {
        Self::from_buffer(Buffer::new(storage))
    }

    /// An arena over a shared buffer.
    ///
    /// # Errors
    /// [`BoundsError::Misaligned`] when the base address is not page-aligned; [`BoundsError::ZeroSize`] when
    /// the buffer holds less than one page; [`BoundsError::Overflow`] when it holds more than
    /// 2^32 pages (16 TiB).
    pub fn from_buffer(base: Buffer) -> Result<Self> {
        if base.addr() % PAGE_SIZE != 0 {
            return Err(Error::Bounds(BoundsError::Misaligned {
                what: "arena base address",
                value: base.addr() as u64,
                align: PAGE_SIZE as u64,
            }));
        }
        let pages = base.size() / PAGE_SIZE;
        if pages == 0 {
            return Err(Error::Bounds(BoundsError::ZeroSize {
                what: "arena (needs at least one page)",
            }));
        }
        let pages = u32::try_from(pages).map_err(|_| {
            Error::Bounds(BoundsError::Overflow {
                what: "arena page count",
            })
        })?;
        Ok(Self {
            inner: Arc::new(ArenaInner {
                base,
                pages,
                allocator: Mutex::new(Allocator::new(pages)),
            }),
        })
    }

    /// Allocates `size` bytes, rounded up to whole pages.
    ///
    /// # Errors
    /// [`BoundsError::ZeroSize`] for `size == 0`; [`MemoryError::ArenaExhausted`] when no free range is large
    /// enough.
    pub fn allocate(&self, size: usize) -> Result<ArenaBuffer> {
        if size == 0 {
            return Err(Error::Bounds(BoundsError::ZeroSize {
                what: "arena allocation",
            }));
        }
        let pages = size.div_ceil(PAGE_SIZE);
        let allocation = u32::try_from(pages)
            .ok()
            .filter(|p| *p <= self.inner.pages)
            .and_then(|p| self.inner.lock().allocate(p));
        let Some(allocation) = allocation else {
            return Err(Error::Memory(MemoryError::ArenaExhausted {
                requested: size,
                free: self.free_bytes(),
                largest: self.largest_free_bytes(),
            }));
        };
        let offset = allocation.offset as usize * PAGE_SIZE;
        match OffsetBuffer::new(self.inner.base.clone(), offset, size) {
            Ok(view) => Ok(ArenaBuffer {
                arena: Arc::clone(&self.inner),
                allocation,
                view,
            }),
            Err(e) => {
                // The allocator only hands out ranges inside its pages, so this is unreachable in
                // practice; still, never leak the range.
                self.inner.lock().free(allocation);
                Err(e)
            }
        }
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> usize {
        self.inner.lock().storage_report().total_free_space as usize * PAGE_SIZE
    }

    /// The largest single allocation that could succeed now, in bytes.
    pub(crate) fn largest_free_bytes(&self) -> usize {
        self.inner.lock().storage_report().largest_free_region as usize * PAGE_SIZE
    }

    /// Bytes the arena manages (whole pages of its storage).
    pub fn capacity(&self) -> usize {
        self.inner.pages as usize * PAGE_SIZE
    }

    /// The storage the arena carves up.
    pub fn base(&self) -> &Buffer {
        &self.inner.base
    }
}

impl fmt::Debug for ArenaAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaAllocator")
            .field("base", &self.inner.base)
            .field("capacity", &self.capacity())
            .field("free", &self.free_bytes())
            .finish()
    }
}

/// A range of an arena's storage; returned to the arena on drop.
pub struct ArenaBuffer {
    arena: Arc<ArenaInner>,
    allocation: Allocation,
    view: OffsetBuffer,
}

impl ArenaBuffer {
    /// Offset of the buffer in the arena's storage.
    pub fn offset(&self) -> usize {
        self.view.offset()
    }

    /// The buffer as a view of the arena's storage.
    pub fn view(&self) -> &OffsetBuffer {
        &self.view
    }
}

impl Drop for ArenaBuffer {
    fn drop(&mut self) {
        self.arena.lock().free(self.allocation);
    }
}

impl fmt::Debug for ArenaBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaBuffer")
            .field("offset", &self.view.offset())
            .field("size", &self.view.size())
            .field("kind", &self.view.storage_kind())
            .finish()
    }
}

crate::forward_memory_descriptor!(ArenaBuffer => view, as_any: self);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemStorage;

    #[test]
    fn allocate_free_and_exhaust() {
        let arena = ArenaAllocator::new(SystemStorage::new(16 * PAGE_SIZE).unwrap()).unwrap();
        assert_eq!(arena.capacity(), 16 * PAGE_SIZE);
        let a = arena.allocate(1).unwrap();
        let b = arena.allocate(PAGE_SIZE + 1).unwrap();
        assert_eq!(a.addr() % PAGE_SIZE, 0);
        assert!(a.offset() + PAGE_SIZE <= b.offset() || b.offset() + 2 * PAGE_SIZE <= a.offset());
        assert!(matches!(
            arena.allocate(16 * PAGE_SIZE),
            Err(Error::Memory(MemoryError::ArenaExhausted { .. }))
        ));
        drop((a, b));
        assert_eq!(arena.free_bytes(), 16 * PAGE_SIZE);
        let all = arena.allocate(16 * PAGE_SIZE).unwrap();
        assert_eq!(all.size(), 16 * PAGE_SIZE);
    }

    #[test]
    fn misaligned_or_tiny_bases_are_refused() {
        let base = Buffer::new(SystemStorage::new(3 * PAGE_SIZE).unwrap());
        let off = OffsetBuffer::new(base.clone(), 8, 2 * PAGE_SIZE).unwrap();
        assert!(matches!(
            ArenaAllocator::new(off),
            Err(Error::Bounds(BoundsError::Misaligned { .. }))
        ));
        let small = OffsetBuffer::new(base, 0, PAGE_SIZE - 1).unwrap();
        assert!(matches!(
            ArenaAllocator::new(small),
            Err(Error::Bounds(BoundsError::ZeroSize { .. }))
        ));
    }
}
