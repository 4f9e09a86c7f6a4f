//! Emitting a block transfer's chunks as merged copies, in destination address order: on the
//! calling thread, or for large transfers split across the planner's thread pool.
//!
//! Every destination layout emits its chunks the same way: a list of *groups* of parts (one
//! part per (layer, outer)), and each group pair by pair, each pair's chunks in the group's
//! order. A fully contiguous destination is one group of all parts; a block-first
//! layer-separate one, one group per layer; a block-second one, one group per part. That
//! shape is what lets a large transfer be cut into pieces (a group and a range of its pairs)
//! whose copies are consecutive in the plan, planned side by side and joined where they meet.
//!
//! Unsafe code: the parallel plan is written into a list's uninitialised capacity (zeroing it
//! first would cost what the threads save), and one `set_len` makes what was written its
//! contents.
#![allow(unsafe_code)]

use super::{CopyOp, Pairs, Part};
use crate::layout::{BlockDim, BlockLayout, LayoutKind};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::OnceLock;

/// Transfers of at least this many chunks are planned on the planner's threads (below it, a
/// thread's wake-up costs more than it saves: planning runs at a few ns per chunk).
pub(super) const PARALLEL_MIN_CHUNKS: usize = 16 << 10;
/// The fewest chunks one piece of a parallel plan covers.
const PIECE_MIN_CHUNKS: usize = 2 << 10;
/// The most threads the planner uses.
const MAX_PLAN_THREADS: usize = 8;

/// The groups of `parts` (layer-major, `outer_dim` per layer) in the destination's emission
/// order (module docs): layers sorted by their destination address, so that the copies come
/// out in destination address order within each address space.
pub(super) fn groups<'p>(dst: &BlockLayout, parts: &'p [Part]) -> Vec<&'p [Part]> {
    let outer_dim = dst.config().outer_dim.max(1);
    let mut layers: Vec<&[Part]> = parts.chunks(outer_dim).collect();
    layers.sort_by_key(|l| l.first().map(|p| p.dst));
    match dst.kind() {
        LayoutKind::FullyContiguous => vec![parts],
        LayoutKind::LayerSeparate(BlockDim::First) => layers,
        LayoutKind::LayerSeparate(BlockDim::Second) => {
            layers.into_iter().flat_map(|l| l.chunks(1)).collect()
        }
    }
}

/// Calls `emit(part, dst_block, src_block)` for every chunk, in emission order.
pub(super) fn each_chunk(
    groups: &[&[Part]],
    pairs: &Pairs<'_>,
    mut emit: impl FnMut(&Part, usize, usize),
) {
    for group in groups {
        pairs.for_each_in(0..pairs.len(), |d, s| {
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

/// One piece of a parallel plan: a group and a range of its pairs.
struct Piece<'g> {
    group: &'g [Part],
    pairs: Range<usize>,
}

impl Piece<'_> {
    fn chunks(&self) -> usize {
        self.pairs.len() * self.group.len()
    }
}

/// The merged copies of every chunk (`total` of them), in emission order, planned on the
/// planner's threads; `None` when there are none (a machine with one CPU, or the pool could
/// not start), and the caller plans on its own thread.
///
/// Each piece writes its merged copies into its own stretch of one list sized for every chunk
/// unmerged; the stretches are then moved together and each joined to the previous one where
/// its first copy continues the previous stretch's last. The result is the list that merging
/// chunk by chunk on one thread gives.
pub(super) fn parallel(
    groups: &[&[Part]],
    pairs: &Pairs<'_>,
    total: usize,
    op: impl Fn(&Part, usize, usize) -> CopyOp + Sync,
) -> Option<Vec<CopyOp>> {
    let pool = pool()?;
    let target = (total / (pool.current_num_threads() * 4)).max(PIECE_MIN_CHUNKS);
    let mut pieces = Vec::new();
    for &group in groups {
        let step = (target / group.len().max(1)).max(1);
        let n = pairs.len();
        pieces.extend((0..n).step_by(step).map(|start| Piece {
            group,
            pairs: start..(start + step).min(n),
        }));
    }
    debug_assert_eq!(pieces.iter().map(Piece::chunks).sum::<usize>(), total);
    // Sized for every chunk unmerged and never zeroed: each piece writes its stretch, and
    // only what was written becomes the list's contents.
    let mut out: Vec<CopyOp> = Vec::with_capacity(total);
    let mut stretches = Vec::with_capacity(pieces.len());
    let mut rest = &mut out.spare_capacity_mut()[..total];
    for piece in &pieces {
        let (mine, after) = rest.split_at_mut(piece.chunks());
        stretches.push((piece, mine));
        rest = after;
    }
    let written: Vec<Stretch> = pool.install(|| {
        stretches
            .into_par_iter()
            .map(|(piece, out)| {
                let mut st = Stretch::default();
                let mut cur: Option<CopyOp> = None;
                pairs.for_each_in(piece.pairs.clone(), |d, s| {
                    for p in piece.group {
                        let o = op(p, d, s);
                        match &mut cur {
                            Some(c) if continues(c, &o) => c.len += o.len,
                            _ => {
                                if let Some(c) = cur.replace(o) {
                                    st.push(out, c);
                                }
                            }
                        }
                    }
                });
                if let Some(c) = cur {
                    st.push(out, c);
                }
                st
            })
            .collect()
    });
    // Move the stretches together, joining each to the one before where they continue.
    let spare = &mut out.spare_capacity_mut()[..total];
    let (mut end, mut start) = (0, 0);
    let mut last: Option<CopyOp> = None;
    for (piece, st) in pieces.iter().zip(written) {
        if let (Some(first), Some(tail)) = (st.first, st.last) {
            let mut from = start;
            match &mut last {
                Some(prev) if continues(prev, &first) => {
                    prev.len += first.len;
                    spare[end - 1].write(*prev);
                    from += 1;
                    if st.len > 1 {
                        last = Some(tail);
                    }
                }
                _ => last = Some(tail),
            }
            let len = start + st.len - from;
            if from != end {
                spare.copy_within(from..from + len, end);
            }
            end += len;
        }
        start += piece.chunks();
    }
    // SAFETY: the first `end` elements of the spare capacity were all written: each piece
    // wrote the first `st.len` elements of its stretch, and the loop above moved those (less
    // a first element joined into the one before) down to `0..end`, writing every joined one.
    unsafe { out.set_len(end) };
    Some(out)
}

/// What one piece wrote: how many copies, the first and the last.
#[derive(Default)]
struct Stretch {
    len: usize,
    first: Option<CopyOp>,
    last: Option<CopyOp>,
}

impl Stretch {
    /// Writes `op` after the copies written so far into `out`, the piece's stretch.
    #[inline]
    fn push(&mut self, out: &mut [MaybeUninit<CopyOp>], op: CopyOp) {
        out[self.len].write(op);
        self.len += 1;
        self.first.get_or_insert(op);
        self.last = Some(op);
    }
}

/// The planner's threads, started on first use: `KVMEM_PLAN_THREADS` of them when set (`1`
/// keeps all planning on the caller's thread), else as many as the machine has CPUs, at most
/// [`MAX_PLAN_THREADS`]. `None` with one thread, or when the threads cannot be started (then
/// planning stays on the caller's thread, as for small transfers).
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let default = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_PLAN_THREADS);
        let threads = match std::env::var("KVMEM_PLAN_THREADS") {
            Err(_) => default,
            Ok(v) => v.trim().parse::<usize>().unwrap_or_else(|_| {
                tracing::warn!(
                    "KVMEM_PLAN_THREADS={v:?} is not a thread count; planning on {default} threads"
                );
                default
            }),
        };
        if threads < 2 {
            return None;
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("kvmem-plan-{i}"))
            .build()
            .inspect_err(|e| {
                tracing::warn!("planning large transfers on the caller's thread only: {e}")
            })
            .ok()
    })
    .as_ref()
}
