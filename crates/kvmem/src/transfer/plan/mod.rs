//! Turning a transfer request into the fewest copies, and choosing the path that executes them.
//!
//! Planning is pure: it reads addresses, validates, merges and never touches a byte. Its output,
//! a [`TransferPlan`] — per pair of storage kinds, a list of `(src, dst, len)` [`CopyOp`]s — is
//! the input of every executor, each in its own module of [`transfer`](super): host memcpy
//! (`host`), `io_uring` (`uring`), NIXL POSIX (`nixl_posix`), CUDA copy streams (`gpu`) and NIXL
//! with a peer (`remote`).

use crate::descriptor::{Buffer, MemoryDescriptor};
use crate::error::{BoundsError, Error, LayoutError, Result, SizeRule};
use crate::kind::StorageKind;
use crate::layout::{BlockLayout, LayoutConfig};
use crate::region::AddressSpace;
use crate::storage::DIRECT_IO_ALIGN;
use serde::Serialize;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

mod emit;
mod request;

pub(crate) use request::{BlockRequest, PlanRest};

/// One contiguous copy: `len` bytes from `src` to `dst`.
///
/// Addresses are virtual addresses for host and device memory, and file offsets for disk; the
/// [`CopyBatch`] holding the op says which. `repr(C)`: on 64-bit targets the GPU executor reads
/// a list of them as the CUDA layer's copies (the same three 64-bit fields) without converting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct CopyOp {
    /// Source address or file offset.
    pub src: usize,
    /// Destination address or file offset.
    pub dst: usize,
    /// Bytes to copy.
    pub len: usize,
}

/// The copies between one source and one destination storage (for disk, one file each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyBatch {
    /// Kind of the source storage (for disk, carries the file descriptor).
    pub src_kind: StorageKind,
    /// Kind of the destination storage.
    pub dst_kind: StorageKind,
    /// The copies, merged, in destination address order; destination ranges are pairwise
    /// disjoint.
    pub ops: Vec<CopyOp>,
}

/// Which link a transfer crosses, chosen from the two storage kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum TransferPath {
    /// Host memory (system or pinned) to host memory: CPU copies.
    HostToHost,
    /// Host memory to a file.
    HostToDisk,
    /// A file to host memory.
    DiskToHost,
    /// A file to a file.
    DiskToDisk,
    /// Host memory (pinned, or system through bounce buffers) to GPU memory.
    HostToDevice,
    /// GPU memory to host memory.
    DeviceToHost,
    /// GPU memory to GPU memory.
    DeviceToDevice,
    /// GPU memory to a file (through pinned bounce buffers).
    DeviceToDisk,
    /// A file to GPU memory (through pinned bounce buffers).
    DiskToDevice,
    /// Local registered memory to a NIXL peer's (a WRITE).
    LocalToRemote,
    /// A NIXL peer's memory to local registered memory (a READ).
    RemoteToLocal,
}

impl TransferPath {
    /// The path between a source of kind `src` and a destination of kind `dst` (both local;
    /// the remote paths are taken by [`TransferEngine::write_remote`](super::TransferEngine::write_remote)
    /// and [`read_remote`](super::TransferEngine::read_remote)).
    pub(crate) fn select(src: StorageKind, dst: StorageKind) -> Self {
        use StorageKind::*;
        match (src, dst) {
            (System | Pinned, System | Pinned) => Self::HostToHost,
            (System | Pinned, Disk(_)) => Self::HostToDisk,
            (Disk(_), System | Pinned) => Self::DiskToHost,
            (Disk(_), Disk(_)) => Self::DiskToDisk,
            (System | Pinned, Device(_)) => Self::HostToDevice,
            (Device(_), System | Pinned) => Self::DeviceToHost,
            (Device(_), Device(_)) => Self::DeviceToDevice,
            (Device(_), Disk(_)) => Self::DeviceToDisk,
            (Disk(_), Device(_)) => Self::DiskToDevice,
        }
    }

    /// True when either end is a file.
    pub(crate) fn touches_disk(&self) -> bool {
        matches!(
            self,
            Self::HostToDisk
                | Self::DiskToHost
                | Self::DiskToDisk
                | Self::DeviceToDisk
                | Self::DiskToDevice
        )
    }

    /// A short name (`host->disk`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::HostToHost => "host->host",
            Self::HostToDisk => "host->disk",
            Self::DiskToHost => "disk->host",
            Self::DiskToDisk => "disk->disk",
            Self::HostToDevice => "host->device",
            Self::DeviceToHost => "device->host",
            Self::DeviceToDevice => "device->device",
            Self::DeviceToDisk => "device->disk",
            Self::DiskToDevice => "disk->device",
            Self::LocalToRemote => "local->remote",
            Self::RemoteToLocal => "remote->local",
        }
    }
}

impl fmt::Display for TransferPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated transfer: the path, the merged copies, and the buffers they touch.
///
/// The plan holds clones of every source and destination [`Buffer`], so the memory (and files)
/// it addresses stay allocated for as long as the plan — and any transfer executing it — lives.
#[derive(Debug, Clone)]
pub struct TransferPlan {
    path: TransferPath,
    src_kind: StorageKind,
    dst_kind: StorageKind,
    batches: Vec<CopyBatch>,
    bytes: usize,
    keep_alive: Vec<Buffer>,
}

impl TransferPlan {
    /// Plans copying blocks `src_ids[i]` of `src` to blocks `dst_ids[i]` of `dst`, every layer
    /// and outer part of each.
    ///
    /// Source ids may repeat; destination ids may not. Adjacent chunks (contiguous in both
    /// source and destination) become one copy, so the plan holds the fewest copies. Planning
    /// costs a few nanoseconds per chunk and sorts nothing but, for a few blocks of a large
    /// layout, the destination ids.
    ///
    /// # Errors
    /// Before anything is copied: [`LayoutError::BlockCountMismatch`], [`LayoutError::Mismatch`]
    /// (chunk size, layer count or outer dimension differ), [`LayoutError::BlockOutOfRange`],
    /// [`LayoutError::DuplicateBlock`], [`BoundsError::OverlappingCopy`] (e.g. a copy within one layout onto
    /// its own source blocks), and for paths touching disk [`BoundsError::Misaligned`] when an address
    /// or length is not a multiple of [`DIRECT_IO_ALIGN`].
    pub fn blocks(
        src: &BlockLayout,
        src_ids: &[usize],
        dst: &BlockLayout,
        dst_ids: &[usize],
    ) -> Result<Self> {
        BlockRequest::new(src, src_ids, dst, dst_ids)?.plan()
    }

    /// Adds copies planned after the plan was made (a [`PlanRest`]'s) to its lists.
    pub(crate) fn append(&mut self, batches: Vec<CopyBatch>) {
        for b in batches.into_iter().filter(|b| !b.ops.is_empty()) {
            match self
                .batches
                .iter_mut()
                .find(|a| (a.src_kind, a.dst_kind) == (b.src_kind, b.dst_kind))
            {
                Some(a) => a.ops.extend_from_slice(&b.ops),
                None => self.batches.push(b),
            }
        }
    }

    /// Plans copying all of `src` to the start of `dst` as one copy — the reference a block
    /// transfer is measured against.
    ///
    /// # Errors
    /// [`BoundsError::SizeMismatch`]; [`BoundsError::OverlappingCopy`]; [`BoundsError::Misaligned`] as for
    /// [`blocks`](Self::blocks).
    pub(crate) fn region(src: &Buffer, dst: &Buffer) -> Result<Self> {
        if dst.size() < src.size() {
            return Err(Error::Bounds(BoundsError::SizeMismatch {
                op: "a region copy",
                src: src.size(),
                dst: dst.size(),
                rule: SizeRule::AtLeast,
            }));
        }
        for b in [src, dst] {
            b.end_addr().ok_or(Error::Bounds(BoundsError::Overflow {
                what: "region end address",
            }))?;
        }
        let batches = vec![CopyBatch {
            src_kind: src.storage_kind(),
            dst_kind: dst.storage_kind(),
            ops: vec![CopyOp {
                src: src.addr(),
                dst: dst.addr(),
                len: src.size(),
            }],
        }];
        Self::finish(
            (src.storage_kind(), dst.storage_kind()),
            batches,
            src.size(),
            vec![src.clone(), dst.clone()],
            true,
        )
    }

    /// A plan of copies already resolved to addresses and file offsets, all between one pair
    /// of storages (the GPU executor's disk staging), keeping `keep_alive` allocated. It is
    /// checked as [`region`](Self::region) plans are: disjoint copies, and `O_DIRECT`
    /// alignment when it touches disk.
    pub(crate) fn copies(
        (src_kind, dst_kind): (StorageKind, StorageKind),
        ops: Vec<CopyOp>,
        keep_alive: Vec<Buffer>,
    ) -> Result<Self> {
        let bytes = ops.iter().map(|op| op.len).sum();
        let batches = vec![CopyBatch {
            src_kind,
            dst_kind,
            ops,
        }];
        Self::finish((src_kind, dst_kind), batches, bytes, keep_alive, true)
    }

    fn finish(
        (src_kind, dst_kind): (StorageKind, StorageKind),
        mut batches: Vec<CopyBatch>,
        bytes: usize,
        keep_alive: Vec<Buffer>,
        per_op_check: bool,
    ) -> Result<Self> {
        batches.retain(|b| !b.ops.is_empty());
        let path = TransferPath::select(src_kind, dst_kind);
        if per_op_check {
            check_disjoint(&batches)?;
        }
        if path.touches_disk() {
            check_direct_io_alignment(&batches)?;
        }
        Ok(Self {
            path,
            src_kind,
            dst_kind,
            batches,
            bytes,
            keep_alive,
        })
    }

    /// The path the transfer crosses.
    pub(crate) fn path(&self) -> TransferPath {
        self.path
    }

    /// The storage kinds of the source and the destination (of their first regions, for
    /// layouts over several files).
    pub(crate) fn kinds(&self) -> (StorageKind, StorageKind) {
        (self.src_kind, self.dst_kind)
    }

    /// The copies, grouped by pair of storages.
    pub(crate) fn batches(&self) -> &[CopyBatch] {
        &self.batches
    }

    /// Bytes the transfer moves.
    pub(crate) fn total_bytes(&self) -> usize {
        self.bytes
    }

    /// Number of copies after merging.
    pub fn op_count(&self) -> usize {
        self.batches.iter().map(|b| b.ops.len()).sum()
    }

    /// The buffers the plan keeps alive.
    pub(crate) fn buffers(&self) -> &[Buffer] {
        &self.keep_alive
    }

    /// Keeps the plan's buffers alive for the rest of the process (a backend may still write
    /// into them) and counts them in [`accounting`](crate::accounting)'s quarantine.
    pub(crate) fn quarantine(self) {
        let bytes = self.keep_alive.iter().map(|b| b.size() as u64).sum();
        crate::accounting::quarantined(self.keep_alive.len() as u64, bytes);
        std::mem::forget(self);
    }
}

/// Block 0's chunk at one (layer, outer): its source and destination addresses (or file
/// offsets), and the batch its copies go to.
struct Part {
    batch: usize,
    src: usize,
    dst: usize,
}

/// Checks what every block transfer needs of its two sides: as many source as destination
/// ids, the same chunk size, layer count and outer dimension, and source ids in range.
pub(crate) fn check_shapes(
    sc: &LayoutConfig,
    src_ids: &[usize],
    dc: &LayoutConfig,
    dst_ids: &[usize],
) -> Result<()> {
    if src_ids.len() != dst_ids.len() {
        return Err(Error::Layout(LayoutError::BlockCountMismatch {
            src: src_ids.len(),
            dst: dst_ids.len(),
        }));
    }
    for (what, s, d) in [
        ("chunk size", sc.chunk_bytes()?, dc.chunk_bytes()?),
        ("layers", sc.num_layers, dc.num_layers),
        ("outer dimension", sc.outer_dim, dc.outer_dim),
    ] {
        if s != d {
            return Err(Error::Layout(LayoutError::Mismatch {
                what,
                src: s,
                dst: d,
            }));
        }
    }
    if let Some(&block) = src_ids.iter().find(|&&id| id >= sc.num_blocks) {
        return Err(Error::Layout(LayoutError::BlockOutOfRange {
            side: "source",
            block,
            num_blocks: sc.num_blocks,
        }));
    }
    Ok(())
}

/// The `(destination, source)` block pairs of a request, in destination id order.
///
/// Ids already in order are the request's own slices, so the common sequential request plans
/// without copying (or allocating for) its ids; requests for nearly every block are read from
/// buckets by destination id, the others sorted into a vector.
pub(crate) enum Pairs<'a> {
    /// Destination ids were already ascending: `dst[i]` takes `src[i]`.
    InOrder {
        /// Destination ids, ascending.
        dst: &'a [usize],
        /// Source ids, one per destination id.
        src: &'a [usize],
    },
    /// A request for nearly every destination block, bucketed by destination id: `slot[d]` is
    /// the source block of destination block `d`, [`NO_BLOCK`] where `d` is not in the request.
    Slots {
        /// One entry per destination block of the layout.
        slot: Vec<usize>,
        /// How many entries name a source block.
        len: usize,
    },
    /// The pairs, sorted by destination id.
    Sorted(Vec<(usize, usize)>),
}

/// A bucket of [`Pairs::Slots`] that no pair fills.
const NO_BLOCK: usize = usize::MAX;

impl Pairs<'_> {
    /// The end of the positions [`for_each_in`](Self::for_each_in) walks: the pairs' for a
    /// list, the destination blocks' for buckets.
    fn end(&self) -> usize {
        match self {
            Self::InOrder { dst, .. } => dst.len(),
            Self::Slots { slot, .. } => slot.len(),
            Self::Sorted(pairs) => pairs.len(),
        }
    }

    /// At most how many pairs lie at `positions`.
    fn len_in(&self, positions: &Range<usize>) -> usize {
        match self {
            Self::Slots { len, .. } => positions.len().min(*len),
            _ => positions.len(),
        }
    }

    /// About how many copies a plan of the pairs at `positions` with `parts` chunks per block
    /// holds: one per part when both sides look like one run of consecutive blocks of layouts
    /// of the same kind (`same_kind`: the chunks merge), else one per chunk. Only sizes a list;
    /// the plan is right either way.
    fn expected_copies(&self, positions: &Range<usize>, parts: usize, same_kind: bool) -> usize {
        let run = |ids: &[usize]| match (ids.first(), ids.last()) {
            (Some(&a), Some(&b)) => b.checked_sub(a) == Some(ids.len() - 1),
            _ => true,
        };
        match self {
            Self::InOrder { dst, src }
                if same_kind && run(&dst[positions.clone()]) && run(&src[positions.clone()]) =>
            {
                parts
            }
            _ => self.len_in(positions) * parts,
        }
    }

    /// Calls `f(dst_block, src_block)` for every pair at `positions` (below [`end`](Self::end)),
    /// in destination order.
    #[inline]
    fn for_each_in(&self, positions: Range<usize>, mut f: impl FnMut(usize, usize)) {
        match self {
            Self::InOrder { dst, src } => {
                for (&d, &s) in dst[positions.clone()].iter().zip(&src[positions]) {
                    f(d, s);
                }
            }
            Self::Slots { slot, .. } => {
                let first = positions.start;
                for (i, &s) in slot[positions].iter().enumerate() {
                    if s != NO_BLOCK {
                        f(first + i, s);
                    }
                }
            }
            Self::Sorted(pairs) => {
                for &(d, s) in &pairs[positions] {
                    f(d, s);
                }
            }
        }
    }
}

/// The `(destination, source)` block pairs sorted by destination id, checking that destination
/// ids are distinct.
///
/// Ids already in order cost one pass and no copy; dense requests are bucketed by destination
/// id (linear), and read back from the buckets when they fill nearly all of them; sparse ones
/// (few blocks of a large layout) are sorted.
pub(crate) fn by_destination<'a>(
    num_blocks: usize,
    dst_ids: &'a [usize],
    src_ids: &'a [usize],
) -> Result<Pairs<'a>> {
    if let Some(&block) = dst_ids.iter().find(|&&id| id >= num_blocks) {
        return Err(Error::Layout(LayoutError::BlockOutOfRange {
            side: "destination",
            block,
            num_blocks,
        }));
    }
    let zipped = || dst_ids.iter().copied().zip(src_ids.iter().copied());
    // One pass: ascending, hence (with no two equal neighbours) distinct.
    let mut in_order = true;
    for w in dst_ids.windows(2) {
        if w[0] == w[1] {
            return Err(Error::Layout(LayoutError::DuplicateBlock { block: w[0] }));
        }
        if w[0] > w[1] {
            in_order = false;
            break;
        }
    }
    if in_order {
        return Ok(Pairs::InOrder {
            dst: dst_ids,
            src: src_ids,
        });
    }
    if num_blocks / 4 <= dst_ids.len() {
        let mut slot = vec![NO_BLOCK; num_blocks];
        for (d, s) in zipped() {
            if std::mem::replace(&mut slot[d], s) != NO_BLOCK {
                return Err(Error::Layout(LayoutError::DuplicateBlock { block: d }));
            }
        }
        // The buckets are walked once per emission group (64 for a vLLM layout): read in place
        // only when nearly every one is filled, else collected once into the filled ones.
        if dst_ids.len() * 8 >= num_blocks * 7 {
            return Ok(Pairs::Slots {
                slot,
                len: dst_ids.len(),
            });
        }
        let mut sorted = Vec::with_capacity(dst_ids.len());
        sorted.extend(slot.into_iter().enumerate().filter(|&(_, s)| s != NO_BLOCK));
        return Ok(Pairs::Sorted(sorted));
    }
    let mut pairs: Vec<(usize, usize)> = zipped().collect();
    pairs.sort_unstable_by_key(|p| p.0);
    if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::Layout(LayoutError::DuplicateBlock { block: w[0].0 }));
    }
    Ok(Pairs::Sorted(pairs))
}

/// A range in an address space, `(space, start, length)`: the planner's sort key (a
/// [`NixlDescriptor`](crate::nixl::NixlDescriptor) names a range, this tuple sorts fast).
type Extent = (AddressSpace, usize, usize);

fn overlap(a: &Extent, b: &Extent) -> bool {
    a.0 == b.0 && a.1 < b.1.saturating_add(b.2) && b.1 < a.1.saturating_add(a.2)
}

/// True when no destination region overlaps another destination region or a source region.
fn regions_disjoint(src: &[Extent], dst: &[Extent]) -> bool {
    dst.iter().enumerate().all(|(i, d)| {
        dst[i + 1..].iter().all(|e| !overlap(d, e)) && src.iter().all(|s| !overlap(d, s))
    })
}

/// Destination ranges must not overlap each other, nor any source range in the same space.
fn check_disjoint(batches: &[CopyBatch]) -> Result<()> {
    let mut dst: Vec<Extent> = Vec::new();
    let mut src: Vec<Extent> = Vec::new();
    for b in batches {
        let (ds, ss) = (
            AddressSpace::of_kind(b.dst_kind),
            AddressSpace::of_kind(b.src_kind),
        );
        dst.extend(b.ops.iter().map(|o| (ds, o.dst, o.len)));
        src.extend(b.ops.iter().map(|o| (ss, o.src, o.len)));
    }
    dst.sort_unstable();
    for w in dst.windows(2) {
        if w[0].0 == w[1].0 && w[0].1.saturating_add(w[0].2) > w[1].1 {
            return Err(Error::Bounds(BoundsError::OverlappingCopy {
                what: "destination ranges",
                addr: w[1].1,
            }));
        }
    }
    let dst_spaces: HashSet<AddressSpace> = dst.iter().map(|d| d.0).collect();
    src.retain(|s| dst_spaces.contains(&s.0));
    if src.is_empty() {
        return Ok(());
    }
    src.sort_unstable();
    // Both lists sorted; destinations are disjoint, so sweep them against the sources.
    let mut j = 0;
    for s in &src {
        while j < dst.len()
            && (dst[j].0 < s.0 || (dst[j].0 == s.0 && dst[j].1.saturating_add(dst[j].2) <= s.1))
        {
            j += 1;
        }
        if let Some(d) = dst.get(j)
            && d.0 == s.0
            && d.1 < s.1.saturating_add(s.2)
        {
            return Err(Error::Bounds(BoundsError::OverlappingCopy {
                what: "source and destination ranges",
                addr: d.1.max(s.1),
            }));
        }
    }
    Ok(())
}

fn check_direct_io_alignment(batches: &[CopyBatch]) -> Result<()> {
    let align = DIRECT_IO_ALIGN;
    for op in batches.iter().flat_map(|b| &b.ops) {
        for (what, value) in [
            ("O_DIRECT transfer source address", op.src),
            ("O_DIRECT transfer destination address", op.dst),
            ("O_DIRECT transfer length", op.len),
        ] {
            if value % align != 0 {
                return Err(Error::Bounds(BoundsError::Misaligned {
                    what,
                    value: value as u64,
                    align: align as u64,
                }));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
