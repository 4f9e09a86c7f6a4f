//! Per-tier slot allocators: which block slots of a pool are free.

/// A slot number in one tier's pool.
pub(crate) type Slot = u32;

/// "No slot": the record has no residency in that tier.
pub(crate) const NO_SLOT: Slot = Slot::MAX;

/// The free slots of one pool of `capacity` slots. Allocation and release are O(1) and never
/// allocate after construction.
#[derive(Debug)]
pub(crate) struct SlotAllocator {
    free: Vec<Slot>,
    capacity: usize,
}

impl SlotAllocator {
    /// All `capacity` slots free; the lowest slots are handed out first.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            free: (0..capacity as Slot).rev().collect(),
            capacity,
        }
    }

    /// A pool of `capacity` slots of which those with `used[slot]` are taken.
    pub(crate) fn with_used(capacity: usize, used: &[bool]) -> Self {
        Self {
            free: (0..capacity as Slot)
                .rev()
                .filter(|s| !used.get(*s as usize).copied().unwrap_or(false))
                .collect(),
            capacity,
        }
    }

    /// Slots in the pool.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots in use.
    pub(crate) fn used(&self) -> usize {
        self.capacity - self.free.len()
    }

    /// A free slot, if any.
    pub(crate) fn alloc(&mut self) -> Option<Slot> {
        self.free.pop()
    }

    /// Returns `slot` to the free list.
    pub(crate) fn release(&mut self, slot: Slot) {
        debug_assert!((slot as usize) < self.capacity);
        self.free.push(slot);
    }

    /// Bytes of memory the allocator holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.free.capacity() * std::mem::size_of::<Slot>()
    }

    /// The free slots (for invariant checks).
    pub(crate) fn free_slots(&self) -> &[Slot] {
        &self.free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_each_slot_once() {
        let mut a = SlotAllocator::new(3);
        let s: Vec<_> = (0..3).map(|_| a.alloc().unwrap()).collect();
        assert_eq!(s, [0, 1, 2]);
        assert_eq!(a.alloc(), None);
        a.release(1);
        assert_eq!(a.used(), 2);
        assert_eq!(a.alloc(), Some(1));
        let mut b = SlotAllocator::with_used(4, &[false, false, true]);
        assert_eq!(b.used(), 1);
        assert_eq!(
            [b.alloc(), b.alloc(), b.alloc(), b.alloc()],
            [Some(0), Some(1), Some(3), None]
        );
    }
}
