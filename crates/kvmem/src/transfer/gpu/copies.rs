//! The device copies of a plan: its copy operations as [`DeviceCopy`]s, split where a pinned
//! host side crosses from one page-lock registration into the next (a CUDA copy must not cross
//! one).

use super::super::plan::{CopyOp, TransferPlan};
use crate::cuda::batch::DeviceCopy;
use crate::descriptor::Buffer;
use crate::kind::StorageKind;
use crate::storage::BackgroundPinnedStorage;

/// The host addresses inside the plan's pinned buffers where one page-lock registration ends and
/// the next begins (sorted): a CUDA copy must not cross one (the driver refuses it with
/// `CUDA_ERROR_INVALID_VALUE`). Empty, and free, for memory registered in one piece.
pub(super) fn registration_cuts(plan: &TransferPlan) -> Vec<usize> {
    let mut cuts: Vec<usize> = plan
        .buffers()
        .iter()
        .filter_map(registered_ranges)
        .flat_map(|ranges| ranges.into_iter().skip(1).map(|r| r.start))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// The registrations of the pinned storage `buffer` is, or is a view of, when there are several.
fn registered_ranges(buffer: &Buffer) -> Option<Vec<std::ops::Range<usize>>> {
    use crate::storage::MappedPinnedStorage;
    let ranges = if let Some(pool) = buffer.downcast_ref::<BackgroundPinnedStorage>() {
        pool.registered_ranges()
    } else if let Some(mapped) = buffer.downcast_ref::<MappedPinnedStorage>() {
        mapped.registered_ranges()
    } else if let Some(external) = buffer.downcast_ref::<crate::storage::ExternalPinnedMemory>() {
        external.registered_ranges()
    } else {
        return buffer
            .downcast_ref::<crate::OffsetBuffer>()
            .and_then(|view| registered_ranges(view.base()));
    };
    (ranges.len() > 1).then_some(ranges)
}

/// The device copies of `ops`, each split where its pinned host side crosses one of `cuts`.
pub(super) fn device_copies(
    ops: &[CopyOp],
    src: StorageKind,
    dst: StorageKind,
    cuts: &[usize],
) -> Vec<DeviceCopy> {
    if cuts.is_empty() {
        return ops.iter().map(device_copy).collect();
    }
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let mut op = *op;
        loop {
            // The first cut strictly inside the host side of what is left of `op`.
            let inside = |start: usize| {
                let i = cuts.partition_point(|&c| c <= start);
                cuts.get(i).copied().filter(|&c| c < start + op.len)
            };
            let cut = match (src == StorageKind::Pinned, dst == StorageKind::Pinned) {
                (true, true) => match (inside(op.src), inside(op.dst)) {
                    (Some(a), Some(b)) => Some((a - op.src).min(b - op.dst)),
                    (a, b) => a.map(|a| a - op.src).or(b.map(|b| b - op.dst)),
                },
                (true, false) => inside(op.src).map(|c| c - op.src),
                (false, true) => inside(op.dst).map(|c| c - op.dst),
                (false, false) => None,
            };
            match cut {
                Some(n) => {
                    out.push(device_copy(&CopyOp { len: n, ..op }));
                    op = CopyOp {
                        src: op.src + n,
                        dst: op.dst + n,
                        len: op.len - n,
                    };
                }
                None => {
                    out.push(device_copy(&op));
                    break;
                }
            }
        }
    }
    out
}

fn device_copy(op: &CopyOp) -> DeviceCopy {
    DeviceCopy {
        src: op.src as u64,
        dst: op.dst as u64,
        len: op.len as u64,
    }
}
