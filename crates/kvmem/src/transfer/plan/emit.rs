//! Emitting a block transfer's chunks as merged copies, in destination address order.
//!
//! Every destination layout emits its chunks the same way: a list of *groups* of parts (one
//! part per (layer, outer)), and each group pair by pair, each pair's chunks in the group's
//! order. A fully contiguous destination is one group of all parts; a block-first
//! layer-separate one, one group per layer; a block-second one, one group per part.
//!
//! Planning stays on the caller's thread. Planning large transfers in pieces on a thread pool
//! was measured on the H200 machine and made transfers slower, not faster: waking the threads
//! cost more than they saved (docs/PERFORMANCE.md, fifth session).

use super::{CopyOp, Pairs, Part};
use crate::layout::{BlockDim, BlockLayout, LayoutKind};
use std::ops::Range;

/// The groups of `parts` (layer-major, `outer_dim` per layer) in the destination's emission
/// order (module docs): layers sorted by their destination address, so that the copies come
/// out in destination address order within each address space.
pub(super) fn groups<'p>(dst: &BlockLayout, parts: &'p [Part]) -> Vec<&'p [Part]> {
    let layers = || {
        let mut layers: Vec<&[Part]> = parts.chunks(dst.config().outer_dim.max(1)).collect();
        layers.sort_by_key(|l| l.first().map(|p| p.dst));
        layers
    };
    match dst.kind() {
        LayoutKind::FullyContiguous => vec![parts],
        LayoutKind::LayerSeparate(BlockDim::First) => layers(),
        LayoutKind::LayerSeparate(BlockDim::Second) => {
            layers().into_iter().flat_map(|l| l.chunks(1)).collect()
        }
    }
}

/// Calls `emit(part, dst_block, src_block)` for every chunk of the pairs at `positions`, in
/// emission order.
pub(super) fn each_chunk(
    groups: &[&[Part]],
    (pairs, positions): (&Pairs<'_>, Range<usize>),
    mut emit: impl FnMut(&Part, usize, usize),
) {
    for group in groups {
        pairs.for_each_in(positions.clone(), |d, s| {
            for p in *group {
                emit(p, d, s);
            }
        });
    }
}

/// True when `op` continues `last` on both sides (so one copy can do both).
#[inline]
fn continues(last: &CopyOp, op: &CopyOp) -> bool {
    last.src.checked_add(last.len) == Some(op.src) && last.dst.checked_add(last.len) == Some(op.dst)
}

/// Appends `op`, extending the last copy instead when `op` continues it on both sides.
#[inline]
pub(super) fn push_merged(ops: &mut Vec<CopyOp>, op: CopyOp) {
    match ops.last_mut() {
        Some(last) if continues(last, &op) => last.len += op.len,
        _ => ops.push(op),
    }
}
