//! Turning a transfer request into the fewest copies, and choosing the path that executes them.
//!
//! Planning is pure: it reads addresses, validates, merges and never touches a byte. Its output,
//! a [`TransferPlan`] — per pair of storage kinds, a list of `(src, dst, len)` [`CopyOp`]s — is
//! the input of every executor: the host memcpy and the `io_uring` executors in this module, and
//! the CUDA (batched memcpy, copy kernel) and NIXL executors that build on the same lists.

use crate::descriptor::{Buffer, MemoryDescriptor};
use crate::error::{Error, Result};
use crate::kind::StorageKind;
use crate::layout::BlockLayout;
use crate::storage::DIRECT_IO_ALIGN;
use serde::Serialize;
use std::collections::HashSet;
use std::fmt;

/// One contiguous copy: `len` bytes from `src` to `dst`.
///
/// Addresses are virtual addresses for host and device memory, and file offsets for disk; the
/// [`CopyBatch`] holding the op says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// The copies, merged and sorted by source address; ranges are pairwise disjoint.
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
}

impl TransferPath {
    /// The path between a source of kind `src` and a destination of kind `dst`.
    pub fn select(src: StorageKind, dst: StorageKind) -> Self {
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
    pub fn touches_disk(&self) -> bool {
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
    /// source and destination) become one copy.
    ///
    /// # Errors
    /// Before anything is copied: [`Error::BlockCountMismatch`], [`Error::LayoutMismatch`]
    /// (chunk size, layer count or outer dimension differ), [`Error::BlockOutOfRange`],
    /// [`Error::DuplicateBlock`], [`Error::OverlappingCopy`] (e.g. a copy within one layout onto
    /// its own source blocks), and for paths touching disk [`Error::Misaligned`] when an address
    /// or length is not a multiple of [`DIRECT_IO_ALIGN`].
    pub fn blocks(
        src: &BlockLayout,
        src_ids: &[usize],
        dst: &BlockLayout,
        dst_ids: &[usize],
    ) -> Result<Self> {
        if src_ids.len() != dst_ids.len() {
            return Err(Error::BlockCountMismatch {
                src: src_ids.len(),
                dst: dst_ids.len(),
            });
        }
        let (sc, dc) = (src.config(), dst.config());
        for (what, s, d) in [
            ("chunk size", src.chunk_bytes(), dst.chunk_bytes()),
            ("layers", sc.num_layers, dc.num_layers),
            ("outer dimension", sc.outer_dim, dc.outer_dim),
        ] {
            if s != d {
                return Err(Error::LayoutMismatch {
                    what,
                    src: s,
                    dst: d,
                });
            }
        }
        for &id in src_ids {
            src.check_block("source", id)?;
        }
        let mut seen = vec![false; dst.num_blocks()];
        for &id in dst_ids {
            dst.check_block("destination", id)?;
            if std::mem::replace(&mut seen[id], true) {
                return Err(Error::DuplicateBlock { block: id });
            }
        }
        let chunk = src.chunk_bytes();
        let mut batches: Vec<CopyBatch> = Vec::new();
        for layer in 0..sc.num_layers {
            // The region (hence storage kind) of a chunk depends only on its layer.
            let s_region = src.chunk_unchecked(0, layer, 0).region;
            let d_region = dst.chunk_unchecked(0, layer, 0).region;
            let key = (
                src.regions()[s_region].storage_kind(),
                dst.regions()[d_region].storage_kind(),
            );
            let batch = match batches.iter().position(|b| (b.src_kind, b.dst_kind) == key) {
                Some(i) => i,
                None => {
                    batches.push(CopyBatch {
                        src_kind: key.0,
                        dst_kind: key.1,
                        ops: Vec::new(),
                    });
                    batches.len() - 1
                }
            };
            let ops = &mut batches[batch].ops;
            ops.reserve(src_ids.len() * sc.outer_dim);
            // Region base addresses are fixed per layer: read them once, not per chunk (each is a
            // call through the buffer's trait object).
            let (s_base, d_base) = (
                src.chunk_unchecked(0, layer, 0).addr - src.chunk_offset_unchecked(0, layer, 0),
                dst.chunk_unchecked(0, layer, 0).addr - dst.chunk_offset_unchecked(0, layer, 0),
            );
            for (&s, &d) in src_ids.iter().zip(dst_ids) {
                for outer in 0..sc.outer_dim {
                    ops.push(CopyOp {
                        src: s_base + src.chunk_offset_unchecked(s, layer, outer),
                        dst: d_base + dst.chunk_offset_unchecked(d, layer, outer),
                        len: chunk,
                    });
                }
            }
        }
        let bytes = chunk
            .checked_mul(sc.num_layers)
            .and_then(|n| n.checked_mul(sc.outer_dim))
            .and_then(|n| n.checked_mul(src_ids.len()))
            .ok_or(Error::Overflow {
                what: "transfer size",
            })?;
        // Chunks of distinct blocks never overlap inside one layout region; only regions that
        // overlap each other (or a copy within one layout) need the per-copy check.
        let used = |l: &BlockLayout| -> Vec<Extent> {
            l.regions()
                .iter()
                .map(|r| (space(r.storage_kind()), r.addr(), l.region_bytes()))
                .collect()
        };
        let per_op_check = !regions_disjoint(&used(src), &used(dst));
        let mut keep_alive = src.regions().to_vec();
        keep_alive.extend_from_slice(dst.regions());
        Self::finish(
            (src.storage_kind(), dst.storage_kind()),
            batches,
            bytes,
            keep_alive,
            per_op_check,
        )
    }

    /// Plans copying all of `src` to the start of `dst` as one copy — the reference a block
    /// transfer is measured against.
    ///
    /// # Errors
    /// [`Error::DestinationTooSmall`]; [`Error::OverlappingCopy`]; [`Error::Misaligned`] as for
    /// [`blocks`](Self::blocks).
    pub fn region(src: &Buffer, dst: &Buffer) -> Result<Self> {
        if dst.size() < src.size() {
            return Err(Error::DestinationTooSmall {
                src: src.size(),
                dst: dst.size(),
            });
        }
        for b in [src, dst] {
            b.end_addr().ok_or(Error::Overflow {
                what: "region end address",
            })?;
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

    fn finish(
        (src_kind, dst_kind): (StorageKind, StorageKind),
        mut batches: Vec<CopyBatch>,
        bytes: usize,
        keep_alive: Vec<Buffer>,
        per_op_check: bool,
    ) -> Result<Self> {
        for batch in &mut batches {
            merge(&mut batch.ops);
        }
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
    pub fn path(&self) -> TransferPath {
        self.path
    }

    /// The storage kinds of the source and the destination (of their first regions, for
    /// layouts over several files).
    pub fn kinds(&self) -> (StorageKind, StorageKind) {
        (self.src_kind, self.dst_kind)
    }

    /// The copies, grouped by pair of storages.
    pub fn batches(&self) -> &[CopyBatch] {
        &self.batches
    }

    /// Bytes the transfer moves.
    pub fn total_bytes(&self) -> usize {
        self.bytes
    }

    /// Number of copies after merging.
    pub fn op_count(&self) -> usize {
        self.batches.iter().map(|b| b.ops.len()).sum()
    }

    /// The buffers the plan keeps alive.
    pub fn buffers(&self) -> &[Buffer] {
        &self.keep_alive
    }
}

/// Merges copies contiguous in both source and destination, and sorts them by source address.
///
/// A first pass merges neighbours in request order (cheap, and all that sequential block ids
/// need); then, if the rest is out of order, a sort by source address brings every copy that
/// continues another's source run directly after it (source ranges of distinct chunks are
/// disjoint), and a second pass finds the remaining merges.
fn merge(ops: &mut Vec<CopyOp>) {
    merge_neighbours(ops);
    if !ops.is_sorted_by_key(|o| o.src) {
        ops.sort_unstable_by_key(|o| o.src);
        merge_neighbours(ops);
    }
}

fn merge_neighbours(ops: &mut Vec<CopyOp>) {
    let mut out = 0;
    for i in 0..ops.len() {
        let op = ops[i];
        if out > 0 {
            let last = &mut ops[out - 1];
            if last.src.checked_add(last.len) == Some(op.src)
                && last.dst.checked_add(last.len) == Some(op.dst)
            {
                last.len += op.len;
                continue;
            }
        }
        ops[out] = op;
        out += 1;
    }
    ops.truncate(out);
}

/// The address space a kind's addresses live in: all host memory shares one, each device and
/// each file descriptor has its own.
fn space(kind: StorageKind) -> (u8, u64) {
    match kind {
        StorageKind::System | StorageKind::Pinned => (0, 0),
        StorageKind::Device(d) => (1, u64::from(d)),
        StorageKind::Disk(fd) => (2, fd),
    }
}

/// A range in an address space: `(space, start, length)`.
type Extent = ((u8, u64), usize, usize);

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
        let (ds, ss) = (space(b.dst_kind), space(b.src_kind));
        dst.extend(b.ops.iter().map(|o| (ds, o.dst, o.len)));
        src.extend(b.ops.iter().map(|o| (ss, o.src, o.len)));
    }
    dst.sort_unstable();
    for w in dst.windows(2) {
        if w[0].0 == w[1].0 && w[0].1.saturating_add(w[0].2) > w[1].1 {
            return Err(Error::OverlappingCopy {
                what: "destination ranges",
                addr: w[1].1,
            });
        }
    }
    let dst_spaces: HashSet<(u8, u64)> = dst.iter().map(|d| d.0).collect();
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
            return Err(Error::OverlappingCopy {
                what: "source and destination ranges",
                addr: d.1.max(s.1),
            });
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
                return Err(Error::Misaligned {
                    what,
                    value: value as u64,
                    align: align as u64,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemStorage;
    use crate::layout::{BlockDim, LayoutConfig, LayoutKind};

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
    fn merge_keeps_every_byte() {
        let mut ops = vec![
            CopyOp {
                src: 100,
                dst: 0,
                len: 10,
            },
            CopyOp {
                src: 0,
                dst: 500,
                len: 50,
            },
            CopyOp {
                src: 50,
                dst: 550,
                len: 50,
            },
            CopyOp {
                src: 110,
                dst: 20,
                len: 10,
            },
        ];
        merge(&mut ops);
        assert_eq!(
            ops,
            vec![
                CopyOp {
                    src: 0,
                    dst: 500,
                    len: 100
                },
                CopyOp {
                    src: 100,
                    dst: 0,
                    len: 10
                },
                CopyOp {
                    src: 110,
                    dst: 20,
                    len: 10
                },
            ]
        );
    }

    #[test]
    fn overlapping_copies_within_one_layout_are_refused() {
        let fc = layout(LayoutKind::FullyContiguous, 8);
        assert!(TransferPlan::blocks(&fc, &[0, 1], &fc, &[2, 3]).is_ok());
        assert!(matches!(
            TransferPlan::blocks(&fc, &[0, 1], &fc, &[1, 2]),
            Err(Error::OverlappingCopy { .. })
        ));
        let whole = fc.regions()[0].clone();
        assert!(matches!(
            TransferPlan::region(&whole, &whole),
            Err(Error::OverlappingCopy { .. })
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
}
