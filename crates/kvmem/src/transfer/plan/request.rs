//! A block request, validated whole before any of it is planned, and its chunks emitted as
//! merged copies: all at once ([`BlockRequest::plan`]), or its first eighth as a plan of its own
//! and the rest afterwards ([`BlockRequest::plan_head`], [`PlanRest`]), each part planned as a
//! request of its own.
//!
//! The second form is the GPU executor's: it starts the head's copies, then plans the rest while
//! they run. On the H200 machine, planning a 65,536-chunk vLLM transfer and reading its list took
//! 0.6–0.8 ms before the first copy could start, 3–4 % of the transfer with the GPU idle
//! (docs/PERFORMANCE.md, sixth session).

use super::emit::{self, push_merged};
use super::{
    CopyBatch, CopyOp, Extent, Pairs, Part, TransferPlan, by_destination, check_shapes,
    regions_disjoint,
};
use crate::descriptor::MemoryDescriptor;
use crate::error::{BoundsError, Error, Result};
use crate::kind::StorageKind;
use crate::layout::{BlockLayout, LayoutKind};
use crate::region::AddressSpace;
use std::ops::Range;

/// Requests of fewer chunks are planned whole: their planning is short.
const HEAD_MIN_CHUNKS: usize = 4096;
/// The head is this fraction of the request's positions (an eighth).
const HEAD_SHARE: usize = 8;

/// A block request, validated: every check [`TransferPlan::blocks`] documents has passed for
/// the whole request, so any part of it plans without error.
pub(crate) struct BlockRequest<'a> {
    src: &'a BlockLayout,
    dst: &'a BlockLayout,
    src_ids: &'a [usize],
    dst_ids: &'a [usize],
    pairs: Pairs<'a>,
    /// Block 0's chunk at each (layer, outer), with the list its copies go to.
    parts: Vec<Part>,
    /// Each list's pair of storage kinds, by index.
    kinds: Vec<(StorageKind, StorageKind)>,
    bytes: usize,
    /// Regions overlap: every copy must be checked against the others.
    per_op_check: bool,
}

/// The part of a request left to plan after its head ([`BlockRequest::plan_head`]).
pub(crate) struct PlanRest<'a> {
    rest: Rest<'a>,
    share: (usize, usize),
    one_run: (bool, bool),
}

/// What is left of a request after its head.
enum Rest<'a> {
    /// The pairs after the head's as the request lists them, a request of their own.
    Listed {
        src: &'a BlockLayout,
        dst: &'a BlockLayout,
        src_ids: &'a [usize],
        dst_ids: &'a [usize],
    },
    /// The whole request's pairs at these positions (in destination order).
    Positions {
        request: BlockRequest<'a>,
        positions: Range<usize>,
    },
}

impl PlanRest<'_> {
    /// How much of the request the head was, as `(part, whole)` (in pairs; about, for a request
    /// for nearly every block split in destination order, counted in destination blocks).
    pub(crate) fn head_share(&self) -> (usize, usize) {
        self.share
    }

    /// Whether the whole request's source and destination ranges each tile one run of
    /// addresses (which its head alone may not show).
    pub(crate) fn one_run(&self) -> (bool, bool) {
        self.one_run
    }

    /// The rest's copies, merged, one list per pair of storage kinds (as the head's).
    ///
    /// # Errors
    /// None in practice: the whole request was validated, and these are some of its pairs; a
    /// check that failed anyway is reported.
    pub(crate) fn emit(self) -> Result<Vec<CopyBatch>> {
        match self.rest {
            Rest::Listed {
                src,
                dst,
                src_ids,
                dst_ids,
            } => {
                let rest = BlockRequest::new(src, src_ids, dst, dst_ids)?;
                Ok(rest.emit(0..rest.pairs.end()))
            }
            Rest::Positions { request, positions } => Ok(request.emit(positions)),
        }
    }
}

impl<'a> BlockRequest<'a> {
    /// Validates copying blocks `src_ids[i]` of `src` to blocks `dst_ids[i]` of `dst`
    /// ([`TransferPlan::blocks`] documents the errors).
    pub(crate) fn new(
        src: &'a BlockLayout,
        src_ids: &'a [usize],
        dst: &'a BlockLayout,
        dst_ids: &'a [usize],
    ) -> Result<Self> {
        check_shapes(src.config(), src_ids, dst.config(), dst_ids)?;
        let sc = src.config();
        let pairs = by_destination(dst.num_blocks(), dst_ids, src_ids)?;
        let chunk = src.chunk_bytes();
        // A chunk's region (hence storage kind and base address) depends only on its layer, and
        // its address is the address of block 0's chunk at the same (layer, outer) plus the block
        // id times the block stride: read the regions once per layer, not per chunk (each is a
        // call through a trait object), and keep one base address pair per (layer, outer).
        let mut kinds: Vec<(StorageKind, StorageKind)> = Vec::new();
        let mut parts = Vec::with_capacity(sc.num_layers * sc.outer_dim);
        for layer in 0..sc.num_layers {
            let (s_chunk, d_chunk) = (
                src.chunk_unchecked(0, layer, 0),
                dst.chunk_unchecked(0, layer, 0),
            );
            let key = (
                src.regions()[s_chunk.region].storage_kind(),
                dst.regions()[d_chunk.region].storage_kind(),
            );
            let batch = match kinds.iter().position(|&k| k == key) {
                Some(i) => i,
                None => {
                    kinds.push(key);
                    kinds.len() - 1
                }
            };
            for outer in 0..sc.outer_dim {
                parts.push(Part {
                    batch,
                    src: src.chunk_unchecked(0, layer, outer).addr,
                    dst: dst.chunk_unchecked(0, layer, outer).addr,
                });
            }
        }
        let bytes = chunk
            .checked_mul(sc.num_layers)
            .and_then(|n| n.checked_mul(sc.outer_dim))
            .and_then(|n| n.checked_mul(src_ids.len()))
            .ok_or(Error::Bounds(BoundsError::Overflow {
                what: "transfer size",
            }))?;
        // Chunks of distinct blocks never overlap inside one layout region; only regions that
        // overlap each other (or a copy within one layout) need the per-copy check.
        let used = |l: &BlockLayout| -> Vec<Extent> {
            l.regions()
                .iter()
                .map(|r| {
                    (
                        AddressSpace::of_kind(r.storage_kind()),
                        r.addr(),
                        l.region_bytes(),
                    )
                })
                .collect()
        };
        let per_op_check = !regions_disjoint(&used(src), &used(dst));
        Ok(Self {
            src,
            dst,
            src_ids,
            dst_ids,
            pairs,
            parts,
            kinds,
            bytes,
            per_op_check,
        })
    }

    /// The storage kinds of the source and the destination (of their first regions).
    pub(crate) fn kinds(&self) -> (StorageKind, StorageKind) {
        (self.src.storage_kind(), self.dst.storage_kind())
    }

    /// The whole request's plan.
    pub(crate) fn plan(self) -> Result<TransferPlan> {
        let batches = self.emit(0..self.pairs.end());
        self.finish(batches)
    }

    /// True when the request is planned in two parts ([`plan_head`](Self::plan_head)): 4,096
    /// chunks or more, regions that need no copy checked against the others (only the whole
    /// list can be), and no file at either end (its executors take whole plans).
    pub(crate) fn plans_in_two(&self) -> bool {
        let chunks = self.src_ids.len() * self.parts.len();
        let (src, dst) = self.kinds();
        let disk = matches!(src, StorageKind::Disk(_)) || matches!(dst, StorageKind::Disk(_));
        chunks >= HEAD_MIN_CHUNKS
            && self.src_ids.len() / HEAD_SHARE > 0
            && !self.per_op_check
            && !disk
    }

    /// The plan of the request's first eighth (whose [`total_bytes`](TransferPlan::total_bytes)
    /// are the whole request's) and what is left to plan. When the source ids come in
    /// ascending order, the head is the first pairs as listed, planned as a request of its own:
    /// an onboard lists its blocks in the order of its contiguous host buffer, so each part's
    /// host side is one run where the whole's is (the first eighth in destination order would
    /// read scattered host blocks, whose staging must sort them and moves one DMA per block).
    /// Otherwise it is the first eighth in destination order, read from the request's own pairs.
    /// Meant for requests that [`plans_in_two`](Self::plans_in_two); any other is planned
    /// whole, with an empty rest.
    ///
    /// # Errors
    /// None in practice (the whole request was validated, and the head is part of it); a check
    /// that failed anyway is reported.
    pub(crate) fn plan_head(self) -> Result<(TransferPlan, PlanRest<'a>)> {
        let in_two = self.plans_in_two();
        let one_run = (
            one_run(self.src, self.src_ids),
            one_run(self.dst, self.dst_ids),
        );
        if !self.src_ids.is_sorted() {
            let end = self.pairs.end();
            let cut = if in_two { end / HEAD_SHARE } else { end };
            let plan = self.finish(self.emit(0..cut))?;
            let rest = Rest::Positions {
                request: self,
                positions: cut..end,
            };
            let share = (cut, end);
            return Ok((
                plan,
                PlanRest {
                    rest,
                    share,
                    one_run,
                },
            ));
        }
        let n = self.src_ids.len();
        let cut = if in_two { n / HEAD_SHARE } else { n };
        let (src_ids, dst_ids) = (self.src_ids, self.dst_ids);
        let head = BlockRequest::new(self.src, &src_ids[..cut], self.dst, &dst_ids[..cut])?;
        let mut plan = head.plan()?;
        plan.bytes = self.bytes;
        let rest = Rest::Listed {
            src: self.src,
            dst: self.dst,
            src_ids: &src_ids[cut..],
            dst_ids: &dst_ids[cut..],
        };
        let share = (cut, n);
        Ok((
            plan,
            PlanRest {
                rest,
                share,
                one_run,
            },
        ))
    }

    /// A plan of `batches` (copies of this request) with the request's bytes and buffers.
    fn finish(&self, batches: Vec<CopyBatch>) -> Result<TransferPlan> {
        let mut keep_alive = self.src.regions().to_vec();
        keep_alive.extend_from_slice(self.dst.regions());
        TransferPlan::finish(
            self.kinds(),
            batches,
            self.bytes,
            keep_alive,
            self.per_op_check,
        )
    }

    /// The copies of the pairs at `positions`, merged, one list per pair of storage kinds.
    fn emit(&self, positions: Range<usize>) -> Vec<CopyBatch> {
        let (src, dst) = (self.src, self.dst);
        let chunk = src.chunk_bytes();
        let (ss, ds) = (src.block_stride(), dst.block_stride());
        let op = |p: &Part, d: usize, s: usize| CopyOp {
            src: p.src + s * ss,
            dst: p.dst + d * ds,
            len: chunk,
        };
        let mut batches: Vec<CopyBatch> = self
            .kinds
            .iter()
            .map(|&(src_kind, dst_kind)| CopyBatch {
                src_kind,
                dst_kind,
                ops: Vec::new(),
            })
            .collect();
        // Chunks are emitted in destination address order (`emit`'s module docs), so every
        // chunk that continues another's destination range comes right after it, and merging
        // with the previous copy as it is emitted finds every merge. The lists are sized up
        // front (a large transfer's list would otherwise grow, and be copied, a dozen times):
        // for every chunk unmerged unless the chunks will merge (`expected_copies`), and shrunk
        // afterwards when merging made them much shorter.
        let groups = emit::groups(dst, &self.parts);
        let pairs = &self.pairs;
        if let [only] = batches.as_mut_slice() {
            let ops = &mut only.ops;
            let same_kind = src.kind() == dst.kind();
            ops.reserve(pairs.expected_copies(&positions, self.parts.len(), same_kind));
            emit::each_chunk(&groups, (pairs, positions), |p, d, s| {
                push_merged(ops, op(p, d, s))
            });
        } else {
            let n = pairs.len_in(&positions);
            for (i, b) in batches.iter_mut().enumerate() {
                b.ops
                    .reserve(self.parts.iter().filter(|p| p.batch == i).count() * n);
            }
            emit::each_chunk(&groups, (pairs, positions), |p, d, s| {
                push_merged(&mut batches[p.batch].ops, op(p, d, s))
            });
        }
        for b in &mut batches {
            if b.ops.len() < b.ops.capacity() / 2 {
                b.ops.shrink_to_fit();
            }
        }
        batches
    }
}

/// True when blocks `ids` of `layout` tile one run of addresses: a fully contiguous layout
/// without padding between blocks, and ids that are each of one consecutive range once.
fn one_run(layout: &BlockLayout, ids: &[usize]) -> bool {
    let c = layout.config();
    let dense = layout.chunk_bytes() * c.num_layers * c.outer_dim == layout.block_stride();
    if layout.kind() != LayoutKind::FullyContiguous || !dense {
        return false;
    }
    let (Some(&lo), Some(&hi)) = (ids.iter().min(), ids.iter().max()) else {
        return true;
    };
    if hi - lo + 1 != ids.len() {
        return false;
    }
    let mut seen = vec![false; ids.len()];
    ids.iter()
        .all(|&id| !std::mem::replace(&mut seen[id - lo], true))
}
