//! Unit tests of the plan module.

use super::emit::push_merged;
use super::*;
use crate::SystemStorage;
use crate::layout::{BlockDim, LayoutConfig, LayoutKind};

/// A quarantined plan's buffers are counted, exactly, in the accounting snapshot.
#[test]
fn a_quarantined_plan_is_counted_in_the_snapshot() {
    let src = Buffer::new(SystemStorage::new(8192).unwrap());
    let dst = Buffer::new(SystemStorage::new(8192).unwrap());
    let plan = TransferPlan::region(&src, &dst).unwrap();
    let (n, bytes) = (
        plan.buffers().len() as u64,
        plan.buffers().iter().map(|b| b.size() as u64).sum::<u64>(),
    );
    assert!(n >= 2 && bytes >= 16384, "{n} buffers, {bytes} bytes");
    let before = crate::accounting::snapshot();
    plan.quarantine();
    let after = crate::accounting::snapshot();
    // Other tests of this binary quarantine nothing; at least this plan is counted.
    assert!(after.quarantined_buffers >= before.quarantined_buffers + n);
    assert!(after.quarantined_bytes >= before.quarantined_bytes + bytes);
}

fn layout(kind: LayoutKind, blocks: usize) -> BlockLayout {
    let c = LayoutConfig {
        num_blocks: blocks,
        num_layers: 4,
        outer_dim: 2,
        page_size: 2,
        inner_dim: 8,
        dtype_bytes: 2,
    };
    BlockLayout::allocate(c, kind, 32, |n| Ok(Buffer::new(SystemStorage::new(n)?))).unwrap()
}

#[test]
fn merging_yields_the_fewest_copies() {
    let fc = layout(LayoutKind::FullyContiguous, 16);
    let fc2 = layout(LayoutKind::FullyContiguous, 16);
    let first = layout(LayoutKind::LayerSeparate(BlockDim::First), 16);
    let second = layout(LayoutKind::LayerSeparate(BlockDim::Second), 16);
    let seq: Vec<usize> = (2..10).collect();
    // Whole run of blocks, contiguous on both sides: one copy.
    assert_eq!(
        TransferPlan::blocks(&fc, &seq, &fc2, &seq)
            .unwrap()
            .op_count(),
        1
    );
    // Per layer contiguous on both sides: one copy per layer.
    let first2 = layout(LayoutKind::LayerSeparate(BlockDim::First), 16);
    let p = TransferPlan::blocks(&first, &seq, &first2, &(0..8).collect::<Vec<_>>());
    assert_eq!(p.unwrap().op_count(), 4);
    // vLLM order: contiguous per (layer, outer).
    let p = TransferPlan::blocks(
        &second,
        &seq,
        &layout(LayoutKind::LayerSeparate(BlockDim::Second), 16),
        &seq,
    );
    assert_eq!(p.unwrap().op_count(), 8);
    // fully contiguous -> block-first: a block's (layer) pieces are contiguous on the source
    // but in different regions on the destination: one copy per (block, layer).
    assert_eq!(
        TransferPlan::blocks(&fc, &seq, &first, &seq)
            .unwrap()
            .op_count(),
        8 * 4
    );
    // Reversed ids: nothing merges.
    let rev: Vec<usize> = seq.iter().rev().copied().collect();
    let p = TransferPlan::blocks(&fc, &seq, &fc2, &rev).unwrap();
    assert_eq!(p.op_count(), 8);
    assert_eq!(p.total_bytes(), 8 * 4 * 2 * 32);
    assert_eq!(p.path(), TransferPath::HostToHost);
}

#[test]
fn push_merged_extends_only_copies_contiguous_on_both_sides() {
    let op = |src, dst, len| CopyOp { src, dst, len };
    let mut ops = Vec::new();
    for o in [
        op(0, 500, 50),
        op(50, 550, 50), // continues both sides
        op(100, 0, 10),  // source continues, destination does not
        op(110, 10, 10), // continues both sides
        op(200, 20, 10), // destination continues, source does not
    ] {
        push_merged(&mut ops, o);
    }
    assert_eq!(ops, vec![op(0, 500, 100), op(100, 0, 20), op(200, 20, 10)]);
}

/// Every (block, layer, outer) chunk pair of the request, as `(src, dst, len)`.
fn expected_chunks(
    src: &BlockLayout,
    s_ids: &[usize],
    dst: &BlockLayout,
    d_ids: &[usize],
) -> Vec<CopyOp> {
    let c = src.config();
    let mut out = Vec::new();
    for (&s, &d) in s_ids.iter().zip(d_ids) {
        for l in 0..c.num_layers {
            for o in 0..c.outer_dim {
                let (a, b) = (src.chunk(s, l, o).unwrap(), dst.chunk(d, l, o).unwrap());
                out.push(CopyOp {
                    src: a.addr,
                    dst: b.addr,
                    len: a.len,
                });
            }
        }
    }
    out.sort_unstable_by_key(|o| o.dst);
    out
}

fn kind_of(i: u8) -> LayoutKind {
    match i % 3 {
        0 => LayoutKind::FullyContiguous,
        1 => LayoutKind::LayerSeparate(BlockDim::First),
        _ => LayoutKind::LayerSeparate(BlockDim::Second),
    }
}

proptest::proptest! {
    /// The plan covers exactly the request's chunks, and no two of its copies could be
    /// merged: it holds the fewest copies.
    #[test]
    fn plans_cover_every_chunk_with_the_fewest_copies(
        kinds in (0u8..3, 0u8..3),
        blocks in 1usize..24,
        picks in proptest::collection::vec((0usize..24, 0usize..24), 1..24),
        sparse in proptest::bool::ANY,
    ) {
        // A layout of `blocks` blocks, or (sparse) of many more, so that every way of
        // ordering destination ids is exercised.
        let n = if sparse { blocks * 8 } else { blocks };
        let src = layout(kind_of(kinds.0), n);
        let dst = layout(kind_of(kinds.1), n);
        let mut d_ids: Vec<usize> = picks.iter().map(|p| p.1 % n).collect();
        let mut seen = HashSet::new();
        d_ids.retain(|d| seen.insert(*d));
        let s_ids: Vec<usize> = picks.iter().take(d_ids.len()).map(|p| p.0 % n).collect();
        check_plan(&src, &s_ids, &dst, &d_ids)?;
    }

    /// The same for large transfers: runs of consecutive blocks, whose copies merge, between
    /// runs of scattered ones, in a layout of up to half as many blocks again; the pairs in
    /// destination order, or (when `shuffled`) in a random order, which requests for nearly
    /// every block read back from buckets.
    #[test]
    fn large_plans_cover_every_chunk_with_the_fewest_copies(
        kinds in (0u8..3, 0u8..3),
        runs in proptest::collection::vec((1usize..600, proptest::bool::ANY), 1..12),
        spare in 0usize..2048,
        seed in 0u64..1000,
        shuffled in proptest::bool::ANY,
    ) {
        let total: usize = runs.iter().map(|r| r.0).sum();
        let n = total + spare % (total / 2 + 1);
        let (src, dst) = (layout(kind_of(kinds.0), n), layout(kind_of(kinds.1), n));
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut free: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut free);
        let (mut s_ids, mut d_ids) = (Vec::new(), Vec::new());
        let mut next = 0;
        for (len, consecutive) in runs {
            let len = len.min(n - next);
            if consecutive {
                // Consecutive on both sides: these chunks merge (in a layout where they can).
                s_ids.extend(next..next + len);
                d_ids.extend(next..next + len);
            } else {
                d_ids.extend(next..next + len);
                s_ids.extend(free[next..next + len].iter().copied());
            }
            next += len;
        }
        if shuffled {
            let mut pairs: Vec<(usize, usize)> = s_ids.iter().copied().zip(d_ids.iter().copied()).collect();
            rng.shuffle(&mut pairs);
            (s_ids, d_ids) = pairs.into_iter().unzip();
            if d_ids.len() * 8 >= n * 7 && !d_ids.is_sorted() {
                let pairs = by_destination(n, &d_ids, &s_ids).unwrap();
                let bucketed = matches!(pairs, Pairs::Slots { .. });
                proptest::prop_assert!(bucketed, "a nearly full unordered request was not bucketed");
            }
        }
        check_plan(&src, &s_ids, &dst, &d_ids)?;
    }
}

/// Checks the plan of one request: it covers exactly the request's chunks, each batch in
/// destination order, and no two of its copies could be merged: it holds the fewest copies.
fn check_plan(
    src: &BlockLayout,
    s_ids: &[usize],
    dst: &BlockLayout,
    d_ids: &[usize],
) -> Result<(), proptest::test_runner::TestCaseError> {
    let plan = TransferPlan::blocks(src, s_ids, dst, d_ids).unwrap();
    let mut ops: Vec<CopyOp> = plan.batches().iter().flat_map(|b| b.ops.clone()).collect();
    for b in plan.batches() {
        proptest::prop_assert!(b.ops.is_sorted_by_key(|o| o.dst));
    }
    ops.sort_unstable_by_key(|o| o.dst);
    for w in ops.windows(2) {
        proptest::prop_assert!(
            !(w[0].src + w[0].len == w[1].src && w[0].dst + w[0].len == w[1].dst),
            "mergeable copies left apart: {:?}",
            w
        );
    }
    let chunk = src.chunk_bytes();
    let expected = expected_chunks(src, s_ids, dst, d_ids);
    proptest::prop_assert_eq!(&chunks_of(&plan, chunk), &expected);
    // Planned in two parts (a head, then the rest): the same chunks, the same bytes.
    let request = BlockRequest::new(src, s_ids, dst, d_ids).unwrap();
    let two = request.plans_in_two();
    let (mut head, rest) = request.plan_head().unwrap();
    proptest::prop_assert_eq!(head.total_bytes(), plan.total_bytes());
    if !two {
        proptest::prop_assert_eq!(head.op_count(), plan.op_count());
    }
    head.append(rest.emit().unwrap());
    proptest::prop_assert_eq!(&chunks_of(&head, chunk), &expected);
    proptest::prop_assert!(head.op_count() >= plan.op_count());
    Ok(())
}

/// A plan's copies cut into chunks of `chunk` bytes, in destination order.
fn chunks_of(plan: &TransferPlan, chunk: usize) -> Vec<CopyOp> {
    let mut ops: Vec<CopyOp> = plan.batches().iter().flat_map(|b| b.ops.clone()).collect();
    ops.sort_unstable_by_key(|o| o.dst);
    ops.iter()
        .flat_map(|o| {
            (0..o.len / chunk).map(move |i| CopyOp {
                src: o.src + i * chunk,
                dst: o.dst + i * chunk,
                len: chunk,
            })
        })
        .collect()
}

#[test]
fn large_requests_plan_in_two_parts_of_every_kind_of_request() {
    // 1024 blocks of 8 chunks: in order, nearly every block shuffled (buckets), and a few
    // blocks of a larger layout (sorted); each must plan in two, and cover every chunk once.
    let (src, dst) = (
        layout(LayoutKind::FullyContiguous, 2048),
        layout(LayoutKind::LayerSeparate(BlockDim::Second), 2048),
    );
    let mut rng = fastrand::Rng::with_seed(11);
    let in_order: Vec<usize> = (0..1024).collect();
    let mut dense: Vec<usize> = (0..2048).collect();
    rng.shuffle(&mut dense);
    let sparse = dense[..600].to_vec();
    for (s_ids, d_ids, what) in [
        (in_order.clone(), in_order.clone(), "in order"),
        (dense.clone(), dense.clone(), "bucketed"),
        (sparse.clone(), sparse.clone(), "sorted"),
        // An onboard: sources in host order, destinations scattered (split as listed).
        ((0..2048).collect(), dense.clone(), "listed"),
    ] {
        let request = BlockRequest::new(&src, &s_ids, &dst, &d_ids).unwrap();
        assert!(request.plans_in_two(), "{what}");
        check_plan(&src, &s_ids, &dst, &d_ids).unwrap();
    }
    // Small requests, and copies within one layout (checked copy by copy), plan whole.
    let few: Vec<usize> = (0..100).collect();
    assert!(
        !BlockRequest::new(&src, &few, &dst, &few)
            .unwrap()
            .plans_in_two()
    );
    let (a, b): (Vec<usize>, Vec<usize>) = ((0..1000).collect(), (1000..2000).collect());
    assert!(
        !BlockRequest::new(&src, &a, &src, &b)
            .unwrap()
            .plans_in_two()
    );
}

#[test]
fn a_side_is_one_run_only_for_consecutive_distinct_blocks_of_a_dense_contiguous_layout() {
    let fc = layout(LayoutKind::FullyContiguous, 64);
    let ls = layout(LayoutKind::LayerSeparate(BlockDim::Second), 64);
    let mut ids: Vec<usize> = (8..48).collect();
    fastrand::Rng::with_seed(2).shuffle(&mut ids);
    let rest = |s: &[usize], d: &[usize]| {
        let (_, rest) = BlockRequest::new(&fc, s, &ls, d)
            .unwrap()
            .plan_head()
            .unwrap();
        rest.one_run()
    };
    assert_eq!(rest(&ids, &ids), (true, false), "layer-separate is no run");
    let mut repeated = ids.clone();
    repeated[0] = repeated[1];
    assert!(!rest(&repeated, &ids).0, "a block read twice");
    let holed: Vec<usize> = ids.iter().map(|&i| if i == 8 { 60 } else { i }).collect();
    assert!(!rest(&holed, &ids).0, "a hole");
}

#[test]
fn overlapping_copies_within_one_layout_are_refused() {
    let fc = layout(LayoutKind::FullyContiguous, 8);
    assert!(TransferPlan::blocks(&fc, &[0, 1], &fc, &[2, 3]).is_ok());
    assert!(matches!(
        TransferPlan::blocks(&fc, &[0, 1], &fc, &[1, 2]),
        Err(Error::Bounds(BoundsError::OverlappingCopy { .. }))
    ));
    let whole = fc.regions()[0].clone();
    assert!(matches!(
        TransferPlan::region(&whole, &whole),
        Err(Error::Bounds(BoundsError::OverlappingCopy { .. }))
    ));
}

#[test]
fn path_selection() {
    use StorageKind::*;
    assert_eq!(
        TransferPath::select(Pinned, System),
        TransferPath::HostToHost
    );
    assert_eq!(
        TransferPath::select(System, Disk(3)),
        TransferPath::HostToDisk
    );
    assert_eq!(
        TransferPath::select(Disk(3), Pinned),
        TransferPath::DiskToHost
    );
    assert_eq!(
        TransferPath::select(Device(0), Pinned),
        TransferPath::DeviceToHost
    );
    assert_eq!(
        TransferPath::select(Device(0), Disk(1)),
        TransferPath::DeviceToDisk
    );
    assert!(TransferPath::DiskToDevice.touches_disk());
    assert!(!TransferPath::HostToDevice.touches_disk());
}

/// Every way of ordering destination ids refuses a repeated one and yields the pairs in
/// destination order; ids already in order are borrowed, not copied.
#[test]
fn destination_pairs_are_ordered_checked_and_borrowed_when_in_order() {
    let collect = |p: &Pairs<'_>| {
        let mut v = Vec::new();
        p.for_each_in(0..p.end(), |d, s| v.push((d, s)));
        v
    };
    let dup = |r: Result<Pairs<'_>>, block| {
        assert!(
            matches!(r, Err(Error::Layout(LayoutError::DuplicateBlock { block: b })) if b == block),
            "expected duplicate {block}"
        );
    };
    // In order: the request's own slices.
    let (d, s) = (vec![1, 2, 5], vec![7, 8, 9]);
    let p = by_destination(8, &d, &s).unwrap();
    assert!(matches!(p, Pairs::InOrder { dst, .. } if std::ptr::eq(dst, d.as_slice())));
    assert_eq!(collect(&p), vec![(1, 7), (2, 8), (5, 9)]);
    dup(by_destination(8, &[1, 2, 2, 5], &[0, 0, 0, 0]), 2);
    // Dense, out of order (bucketed), and sparse (sorted).
    let p = by_destination(4, &[3, 0, 2], &[1, 2, 3]).unwrap();
    assert_eq!(collect(&p), vec![(0, 2), (2, 3), (3, 1)]);
    dup(by_destination(4, &[3, 0, 3], &[1, 2, 3]), 3);
    let p = by_destination(1000, &[900, 5], &[1, 2]).unwrap();
    assert_eq!(collect(&p), vec![(5, 2), (900, 1)]);
    dup(by_destination(1000, &[900, 5, 900], &[1, 2, 3]), 900);
    // A repeat before the first descent, in an otherwise unordered list.
    dup(by_destination(8, &[1, 1, 0], &[0, 0, 0]), 1);
    assert!(matches!(
        by_destination(8, &[1, 8], &[0, 0]),
        Err(Error::Layout(LayoutError::BlockOutOfRange { block: 8, .. }))
    ));
}
