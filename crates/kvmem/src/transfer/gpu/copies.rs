//! The device copies of a plan: its copy operations as [`DeviceCopy`]s, split where a pinned
//! host side crosses from one page-lock registration into the next (a CUDA copy must not cross
//! one).

use super::super::files::{innermost, storage_as};
use super::super::plan::{CopyOp, TransferPlan};
use crate::cuda::batch::{CopyCompletion, CopyMethod, CopyStream, DeviceCopy, HostJoins};
use crate::descriptor::MemoryDescriptor;
use crate::error::Result;
use crate::kind::StorageKind;
use crate::storage::BackgroundPinnedStorage;
use std::any::Any;
use std::borrow::Cow;
use std::ops::Range;

/// Where a plan's pinned host memory may not be crossed by one CUDA copy (the driver refuses
/// such a copy with `CUDA_ERROR_INVALID_VALUE`).
pub(super) struct Cuts {
    /// The host addresses inside the plan's pinned buffers where one page-lock registration ends
    /// and the next begins (sorted): copies are split there. Empty, and free, for memory
    /// registered in one piece.
    pub(super) split: Vec<usize>,
    /// Where the staged method may join adjoining host ranges into one DMA: everywhere but at
    /// `split` and the ends of every pinned storage the plan uses (two allocations may lie next
    /// to each other), or nowhere when a pinned buffer's registrations can be learnt neither
    /// from its type nor from the driver.
    pub(super) joins: HostJoins,
}

/// The [`Cuts`] of `plan`'s pinned buffers.
pub(super) fn registration_cuts(plan: &TransferPlan) -> Cuts {
    let mut split: Vec<usize> = Vec::new();
    let mut ends: Vec<u64> = Vec::new();
    let mut opaque = false;
    for b in plan.buffers() {
        let bytes = b.end_addr().map(|end| b.addr()..end);
        match pinned_base(b.as_any(), b.storage_kind(), bytes) {
            PinnedBase::Known {
                range,
                registrations,
            } => {
                split.extend(registrations.iter().skip(1).map(|r| r.start));
                ends.extend([range.start as u64, range.end as u64]);
            }
            PinnedBase::NotPinned => {}
            PinnedBase::Opaque => opaque = true,
        }
    }
    split.sort_unstable();
    split.dedup();
    let joins = if opaque {
        HostJoins::Nowhere
    } else {
        ends.extend(split.iter().map(|&c| c as u64));
        ends.sort_unstable();
        ends.dedup();
        HostJoins::Except(ends)
    };
    Cuts { split, joins }
}

/// What the GPU executor knows of the page-locked memory under a buffer.
enum PinnedBase {
    /// One of kvmem's pinned storages (its whole range and its registrations, in order), or
    /// pinned memory kvmem did not pin (the buffer's range and the allocations or
    /// registrations the driver reports over it, cut to the range).
    Known {
        range: Range<usize>,
        registrations: Vec<Range<usize>>,
    },
    /// Not pinned host memory.
    NotPinned,
    /// Pinned memory whose registrations neither its type nor the driver tells.
    Opaque,
}

/// What kvmem knows of the pinned memory under `any` (a buffer's storage, of kind `kind`,
/// over `bytes`, `None` for a range that wraps). Memory kvmem did not pin is known as far as
/// the driver reports the allocations or registrations over it
/// ([`pinned_ranges`](crate::cuda::interop::pinned_ranges)): an engine's `pin_memory()`
/// tensor (`ExternalHostMemory`) from what the driver said when kvmem took it, pinned storages
/// of other types over `bytes`, asked at each transfer.
fn pinned_base(any: &dyn Any, kind: StorageKind, bytes: Option<Range<usize>>) -> PinnedBase {
    use crate::storage::{
        ExternalHostMemory, ExternalPinnedMemory, MappedPinnedStorage, PinnedStorage,
    };
    if kind != StorageKind::Pinned {
        return PinnedBase::NotPinned;
    }
    let known = |d: &dyn MemoryDescriptor, registrations: Vec<Range<usize>>| PinnedBase::Known {
        range: d.addr()..d.addr().saturating_add(d.size()),
        registrations,
    };
    // The wrappers are walked once; then the storage is one of these, or unknown.
    let storage = innermost(any);
    if let Some(p) = storage_as::<BackgroundPinnedStorage>(storage) {
        known(p, p.registered_ranges())
    } else if let Some(p) = storage_as::<MappedPinnedStorage>(storage) {
        known(p, p.registered_ranges())
    } else if let Some(p) = storage_as::<ExternalPinnedMemory>(storage) {
        known(p, p.registered_ranges())
    } else if let Some(p) = storage_as::<PinnedStorage>(storage) {
        // One `cuMemHostAlloc`.
        known(p, Vec::new())
    } else if let Some((p, r)) = storage_as::<ExternalHostMemory>(storage)
        .and_then(|p| p.registered_ranges().map(|r| (p, r)))
    {
        // An engine's pinned memory: what the driver said when kvmem took it (if it did not
        // say then, it is asked below, as for other types).
        known(p, r.to_vec())
    } else {
        bytes
            .and_then(|range| {
                let registrations = crate::cuda::interop::pinned_ranges(range.start, range.len())?;
                Some(PinnedBase::Known {
                    range,
                    registrations,
                })
            })
            .unwrap_or(PinnedBase::Opaque)
    }
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
    joins: &HostJoins,
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
