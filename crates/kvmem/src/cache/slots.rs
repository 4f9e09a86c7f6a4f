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
    /// Slots a copy that timed out may still write: never handed out again (empty unless a
    /// backend stalled).
    retired: Vec<Slot>,
}

impl SlotAllocator {
    /// All `capacity` slots free; the lowest slots are handed out first.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            free: (0..capacity as Slot).rev().collect(),
            capacity,
            retired: Vec::new(),
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
            retired: Vec::new(),
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

    /// Returns `slot` to the free list, unless it is retired.
    pub(crate) fn release(&mut self, slot: Slot) {
        debug_assert!((slot as usize) < self.capacity);
        if !self.retired.contains(&slot) {
            self.free.push(slot);
        }
    }

    /// Takes the allocated `slot` out of use for good: a copy into it timed out and may still
    /// be writing it, so no block may ever be placed there again. Counted as used.
    pub(crate) fn retire(&mut self, slot: Slot) {
        debug_assert!(!self.free.contains(&slot));
        if !self.retired.contains(&slot) {
            self.retired.push(slot);
        }
    }

    /// The retired slots (for invariant checks and reports).
    pub(crate) fn retired(&self) -> &[Slot] {
        &self.retired
    }

    /// Bytes of memory the allocator holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        (self.free.capacity() + self.retired.capacity()) * std::mem::size_of::<Slot>()
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
        // A retired slot stays used after its release.
        a.release(2);
        let r = a.alloc().unwrap();
        a.retire(r);
        a.release(r);
        assert_eq!((a.used(), a.alloc(), a.retired()), (3, None, &[r][..]));
        let mut b = SlotAllocator::with_used(4, &[false, false, true]);
        assert_eq!(b.used(), 1);
        assert_eq!(
            [b.alloc(), b.alloc(), b.alloc(), b.alloc()],
            [Some(0), Some(1), Some(3), None]
        );
    }
}
