//! The device copies of a plan: its copy operations as [`DeviceCopy`]s, split where a pinned
//! host side crosses from one page-lock registration into the next (a CUDA copy must not cross
//! one).

use super::super::plan::{CopyOp, TransferPlan};
use crate::cuda::batch::{CopyCompletion, CopyMethod, CopyStream, DeviceCopy};
use crate::descriptor::{Buffer, MemoryDescriptor};
use crate::error::Result;
use crate::kind::StorageKind;
use crate::storage::BackgroundPinnedStorage;
use std::borrow::Cow;

/// Where a plan's pinned host memory may not be crossed by one CUDA copy (the driver refuses
/// such a copy with `CUDA_ERROR_INVALID_VALUE`).
pub(super) struct Cuts {
    /// The host addresses inside the plan's pinned buffers where one page-lock registration ends
    /// and the next begins (sorted): copies are split there. Empty, and free, for memory
    /// registered in one piece.
    pub(super) split: Vec<usize>,
    /// `split` and the start and end of every pinned storage the plan uses (sorted): where the
    /// staged method must not join two host ranges into one DMA, even when they adjoin (two
    /// allocations may lie next to each other).
    pub(super) joins: Vec<u64>,
}

/// The [`Cuts`] of `plan`'s pinned buffers.
pub(super) fn registration_cuts(plan: &TransferPlan) -> Cuts {
    let mut split: Vec<usize> = plan
        .buffers()
        .iter()
        .filter_map(registered_ranges)
        .flat_map(|ranges| ranges.into_iter().skip(1).map(|r| r.start))
        .collect();
    split.sort_unstable();
    split.dedup();
    let mut joins: Vec<u64> = split.iter().map(|&c| c as u64).collect();
    for b in plan.buffers() {
        let mut base = b;
        while let Some(view) = base.downcast_ref::<crate::OffsetBuffer>() {
            base = view.base();
        }
        if base.storage_kind() == StorageKind::Pinned {
            joins.extend([base.addr() as u64, (base.addr() + base.size()) as u64]);
        }
    }
    joins.sort_unstable();
    joins.dedup();
    Cuts { split, joins }
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

/// The device copies of `ops`, each split where its pinned host side crosses one of `cuts`;
/// with no cuts, `ops` themselves, read in place (no pass over a plan's copies at submission).
pub(super) fn device_copies<'a>(
    ops: &'a [CopyOp],
    src: StorageKind,
    dst: StorageKind,
    cuts: &[usize],
) -> Cow<'a, [DeviceCopy]> {
    if cuts.is_empty() {
        return as_device_copies(ops);
    }
    let mut out: Vec<DeviceCopy> = Vec::with_capacity(ops.len());
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
    Cow::Owned(out)
}

/// `ops` as device copies: borrowed where the two types are laid out alike (64-bit targets),
/// converted elsewhere.
fn as_device_copies(ops: &[CopyOp]) -> Cow<'_, [DeviceCopy]> {
    use std::mem::{align_of, size_of};
    if size_of::<usize>() == size_of::<u64>()
        && size_of::<CopyOp>() == size_of::<DeviceCopy>()
        && align_of::<CopyOp>() == align_of::<DeviceCopy>()
    {
        // SAFETY: both are `repr(C)` structs of three unsigned integers in the order src, dst,
        // len, and here `usize` is as wide as `u64` (checked just above), so they have the same
        // size, alignment and field offsets, no padding, and every bit pattern is valid for both;
        // the slice keeps its length and the borrow of `ops`.
        Cow::Borrowed(unsafe { std::slice::from_raw_parts(ops.as_ptr().cast(), ops.len()) })
    } else {
        Cow::Owned(ops.iter().map(device_copy).collect())
    }
}

fn device_copy(op: &CopyOp) -> DeviceCopy {
    DeviceCopy {
        src: op.src as u64,
        dst: op.dst as u64,
        len: op.len as u64,
    }
}

/// `copies` on `stream`, the staged method kept from joining host ranges across `joins`
/// ([`Cuts::joins`]: the plan's registration boundaries and pinned storages' ends).
///
/// # Safety
/// As for [`CopyStream::copy_async`]; no copy crosses a registration boundary.
pub(super) unsafe fn copy_within(
    stream: &CopyStream,
    copies: &[DeviceCopy],
    method: CopyMethod,
    (src, dst): (StorageKind, StorageKind),
    joins: &[u64],
) -> Result<CopyCompletion> {
    // SAFETY: this function's contract.
    unsafe {
        stream.copy_async_within(
            copies,
            method,
            super::location(src),
            super::location(dst),
            joins,
        )
    }
}
