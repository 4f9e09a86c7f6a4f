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
    // Failure persistence stays on (proptest's default): the cases in
    // tests/host_props.proptest-regressions run first, before any new case.

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
        // Whether the constructors must accept, worked out here independently in u128.
        let valid = tensor_is_valid(&shape, &strides, elem);
        match TensorDescriptor::new(&shape, &strides, elem) {
            Ok(t) => {
                prop_assert!(valid, "accepted an invalid tensor");
                check_descriptor(&t, &shape, &strides, elem)?;
            }
            Err(e) => {
                prop_assert!(!valid, "refused a valid tensor: {}", e);
                prop_assert!(matches!(e, Error::Layout(LayoutError::InvalidTensor(_)) | Error::Bounds(BoundsError::Overflow { .. })), "unexpected error {}", e);
            }
        }
        let contiguous_valid = row_major(&shape).is_some_and(|s| tensor_is_valid(&shape, &s, elem));
        match TensorDescriptor::contiguous(&shape, elem) {
            Ok(t) => {
                prop_assert!(contiguous_valid, "accepted an invalid contiguous tensor");
                prop_assert!(t.is_contiguous());
                prop_assert_eq!(t.span_bytes(), t.nbytes());
            }
            Err(e) => prop_assert!(!contiguous_valid, "refused a valid contiguous tensor: {}", e),
        }
    }

    /// Valid inputs are rare among arbitrary ones: these are valid by construction, and every one
    /// must be accepted with the right numbers.
    #[test]
    fn valid_tensor_descriptors_are_accepted(
        dims in prop::collection::vec((1usize..9, 0usize..5000), 0..5),
        elem in 1usize..17,
    ) {
        let shape: Vec<usize> = dims.iter().map(|d| d.0).collect();
        // A stride of zero only where the dimension is 1 (else elements would alias).
        let strides: Vec<usize> = dims.iter().map(|&(d, s)| if d == 1 { s } else { s.max(1) }).collect();
        let t = TensorDescriptor::new(&shape, &strides, elem);
        prop_assert!(t.is_ok(), "refused {:?} / {:?} / {}: {:?}", shape, strides, elem, t);
        check_descriptor(&t.unwrap(), &shape, &strides, elem)?;
        let c = TensorDescriptor::contiguous(&shape, elem);
        prop_assert!(c.is_ok(), "refused contiguous {:?} / {}: {:?}", shape, elem, c);
        let c = c.unwrap();
        prop_assert!(c.is_contiguous());
        prop_assert_eq!(c.span_bytes(), shape.iter().product::<usize>() * elem);
    }
}

/// The committed regression (tests/host_props.proptest-regressions), as a plain test too: a
/// request for `usize::MAX` bytes from an empty one-page arena is refused, without overflow.
#[test]
fn arena_refuses_usize_max_on_an_empty_arena() {
    let arena = ArenaAllocator::new(SystemStorage::new(PAGE_SIZE).unwrap()).unwrap();
    match arena.allocate(usize::MAX) {
        Err(Error::Memory(MemoryError::ArenaExhausted {
            requested,
            free,
            largest,
        })) => {
            assert_eq!(requested, usize::MAX);
            assert_eq!((free, largest), (PAGE_SIZE, PAGE_SIZE));
        }
        other => panic!("expected ArenaExhausted, got {other:?}"),
    }
    assert_eq!(arena.free_bytes(), arena.capacity());
    // The arena still serves what fits.
    assert_eq!(arena.allocate(PAGE_SIZE).unwrap().size(), PAGE_SIZE);
}

/// Row-major strides (in elements) of `shape`, or `None` when the element count overflows.
fn row_major(shape: &[usize]) -> Option<Vec<usize>> {
    let mut strides = vec![0usize; shape.len()];
    let mut acc: usize = 1;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.checked_mul(d)?;
    }
    Some(strides)
}

/// The documented rules of `TensorDescriptor::new`, in wide arithmetic: equal ranks, a positive
/// element size and dimensions, no zero stride on a dimension longer than one, and an element
/// count, byte count and byte span that fit a `usize`.
fn tensor_is_valid(shape: &[usize], strides: &[usize], elem: usize) -> bool {
    if shape.len() != strides.len() || elem == 0 {
        return false;
    }
    let fits = |v: Option<u128>| v.is_some_and(|v| v <= usize::MAX as u128);
    let (mut numel, mut last) = (Some(1u128), Some(0u128));
    for (&d, &s) in shape.iter().zip(strides) {
        if d == 0 || (s == 0 && d > 1) {
            return false;
        }
        numel = numel
            .and_then(|n| n.checked_mul(d as u128))
            .filter(|n| fits(Some(*n)));
        last = last
            .and_then(|l| l.checked_add((d as u128 - 1).checked_mul(s as u128)?))
            .filter(|l| fits(Some(*l)));
    }
    let span = last.and_then(|l| (l + 1).checked_mul(elem as u128));
    let nbytes = numel.and_then(|n| n.checked_mul(elem as u128));
    fits(numel) && fits(span) && fits(nbytes)
}

/// What an accepted descriptor must report.
fn check_descriptor(
    t: &TensorDescriptor,
    shape: &[usize],
    strides: &[usize],
    elem: usize,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(t.shape(), shape);
    prop_assert_eq!(t.strides(), strides);
    prop_assert_eq!(t.elem_size(), elem);
    prop_assert_eq!(t.numel(), shape.iter().product::<usize>());
    let last: usize = shape.iter().zip(strides).map(|(d, s)| (d - 1) * s).sum();
    prop_assert_eq!(t.span_bytes(), (last + 1) * elem);
    prop_assert_eq!(t.nbytes(), t.numel() * elem);
    prop_assert!(t.check_fits(0, t.span_bytes()).is_ok());
    prop_assert!(t.check_fits(1, t.span_bytes()).is_err());
    if t.is_contiguous() {
        prop_assert_eq!(t.span_bytes(), t.nbytes());
    }
    Ok(())
}
