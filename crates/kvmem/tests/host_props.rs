//! Property tests over views, the arena and tensor descriptors: every invalid argument is an
//! `Err`, nothing panics, and live arena buffers never overlap and always lie inside their storage.

use kvmem::error::{BoundsError, LayoutError, MemoryError};
use kvmem::{
    ArenaAllocator, ArenaBuffer, Buffer, Error, MemoryDescriptor, OffsetBuffer, PAGE_SIZE,
    SystemStorage, TensorDescriptor,
};
use proptest::prelude::*;

fn any_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..20_000,
        Just(usize::MAX),
        Just(usize::MAX - 1),
        (usize::MAX - 10_000)..=usize::MAX,
        any::<usize>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn views_accept_exactly_the_ranges_inside_their_base(
        base_size in 1usize..16_384, offset in any_len(), size in any_len(),
        inner_offset in any_len(), inner_size in any_len(),
    ) {
        let base = Buffer::new(SystemStorage::new(base_size).unwrap());
        let valid = size > 0 && offset.checked_add(size).is_some_and(|end| end <= base_size);
        match OffsetBuffer::new(base.clone(), offset, size) {
            Ok(view) => {
                prop_assert!(valid);
                prop_assert_eq!(view.addr(), base.addr() + offset);
                prop_assert!(view.end_addr().unwrap() <= base.end_addr().unwrap());
                let inner_valid = inner_size > 0
                    && inner_offset.checked_add(inner_size).is_some_and(|e| e <= size);
                match view.slice(inner_offset, inner_size) {
                    Ok(w) => {
                        prop_assert!(inner_valid);
                        prop_assert_eq!(w.addr(), view.addr() + inner_offset);
                        prop_assert!(w.end_addr().unwrap() <= view.end_addr().unwrap());
                    }
                    Err(e) => {
                        prop_assert!(!inner_valid);
                        prop_assert!(matches!(e, Error::Bounds(BoundsError::OutOfBounds { .. }) | Error::Bounds(BoundsError::ZeroSize { .. })), "unexpected error {}", e);
                    }
                }
            }
            Err(e) => {
                prop_assert!(!valid);
                prop_assert!(matches!(e, Error::Bounds(BoundsError::OutOfBounds { .. }) | Error::Bounds(BoundsError::ZeroSize { .. })), "unexpected error {}", e);
            }
        }
    }

    #[test]
    fn arena_buffers_never_overlap_and_stay_inside(
        pages in 1usize..64,
        ops in prop::collection::vec((any::<bool>(), any_len(), any::<prop::sample::Index>()), 1..80),
    ) {
        let storage = SystemStorage::new(pages * PAGE_SIZE).unwrap();
        let arena = ArenaAllocator::new(storage).unwrap();
        let (lo, hi) = (arena.base().addr(), arena.base().end_addr().unwrap());
        let mut live: Vec<ArenaBuffer> = Vec::new();
        for (alloc, size, pick) in ops {
            if alloc || live.is_empty() {
                match arena.allocate(size) {
                    Ok(b) => {
                        prop_assert!(size > 0);
                        prop_assert_eq!(b.size(), size);
                        prop_assert_eq!(b.addr() % PAGE_SIZE, 0);
                        prop_assert!(b.addr() >= lo && b.end_addr().unwrap() <= hi);
                        for other in &live {
                            // Compare page-rounded extents: the arena hands out whole pages.
                            let a_end = b.addr() + b.size().div_ceil(PAGE_SIZE) * PAGE_SIZE;
                            let o_end = other.addr() + other.size().div_ceil(PAGE_SIZE) * PAGE_SIZE;
                            prop_assert!(a_end <= other.addr() || o_end <= b.addr(),
                                "overlap: {:?} and {:?}", b, other);
                        }
                        live.push(b);
                    }
                    Err(Error::Bounds(BoundsError::ZeroSize { .. })) => prop_assert_eq!(size, 0),
                    Err(Error::Memory(MemoryError::ArenaExhausted { requested, free, largest })) => {
                        prop_assert_eq!(requested, size);
                        prop_assert!(largest <= free && free <= arena.capacity());
                        prop_assert!(size.div_ceil(PAGE_SIZE) as u128 * PAGE_SIZE as u128 > largest as u128);
                    }
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                }
            } else {
                live.swap_remove(pick.index(live.len()));
            }
        }
        let used: usize = live.iter().map(|b| b.size().div_ceil(PAGE_SIZE) * PAGE_SIZE).sum();
        prop_assert!(arena.free_bytes() + used <= arena.capacity());
        drop(live);
        prop_assert_eq!(arena.free_bytes(), arena.capacity());
    }

    #[test]
    fn tensor_descriptors_validate_without_panicking(
        shape in prop::collection::vec(any_len(), 0..5),
        strides in prop::collection::vec(any_len(), 0..5),
        elem in any_len(),
    ) {
        match TensorDescriptor::new(&shape, &strides, elem) {
            Ok(t) => {
                prop_assert_eq!(shape.len(), strides.len());
                prop_assert!(elem > 0 && shape.iter().all(|d| *d > 0));
                prop_assert!(t.span_bytes() >= elem);
                prop_assert_eq!(t.nbytes(), t.numel() * elem);
                prop_assert!(t.check_fits(0, t.span_bytes()).is_ok());
                prop_assert!(t.check_fits(1, t.span_bytes()).is_err());
                if t.is_contiguous() {
                    prop_assert_eq!(t.span_bytes(), t.nbytes());
                }
            }
            Err(e) => prop_assert!(matches!(e, Error::Layout(LayoutError::InvalidTensor(_)) | Error::Bounds(BoundsError::Overflow { .. })), "unexpected error {}", e),
        }
        if let Ok(t) = TensorDescriptor::contiguous(&shape, elem) {
            prop_assert!(t.is_contiguous());
            prop_assert_eq!(t.span_bytes(), t.nbytes());
        }
    }
}
