//! Host ↔ host copies: `memcpy` on the CPU, spread over a thread pool when the batch is large.

use super::handle::{Completion, Work};
use super::plan::{CopyOp, TransferPlan};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest piece copied without checking for cancellation.
const PIECE: usize = 4 << 20;

/// Runs host copies on a dedicated rayon pool.
pub(crate) struct HostExecutor {
    pool: rayon::ThreadPool,
    threads: usize,
    parallel_threshold: usize,
}

impl HostExecutor {
    pub(crate) fn new(threads: usize, parallel_threshold: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("kvmem-copy-{i}"))
            .build()
            .map_err(|e| Error::HostAlloc {
                size: 0,
                source: std::io::Error::other(format!("could not start copy threads: {e}")),
            })?;
        Ok(Self {
            pool,
            threads: threads.max(1),
            parallel_threshold,
        })
    }

    /// Starts `work` on the pool and returns at once.
    pub(crate) fn submit(&self, work: Work) {
        let threads = self.threads;
        let threshold = self.parallel_threshold;
        self.pool.spawn(move || {
            let Work { plan, completion } = work;
            let result = run(&plan, &completion, threads, threshold);
            drop(plan);
            completion.complete(result);
        });
    }
}

/// Copies every op of a host ↔ host plan; on more than `threshold` bytes, in about
/// `4 * threads` tasks balanced by bytes that the pool's threads steal from each other.
fn run(
    plan: &TransferPlan,
    completion: &Completion,
    threads: usize,
    threshold: usize,
) -> Result<()> {
    let total = plan.total_bytes();
    let done = AtomicUsize::new(0);
    let ops = plan.batches().iter().flat_map(|b| b.ops.iter().copied());
    if threads <= 1 || total < threshold {
        let task: Vec<CopyOp> = ops.collect();
        copy_task(&task, completion, &done);
    } else {
        let target = (total / (threads * 4)).max(PIECE / 4);
        let tasks = split(ops, target);
        tasks
            .par_iter()
            .for_each(|task| copy_task(task, completion, &done));
    }
    let done = done.into_inner();
    if done < total {
        return Err(Error::TransferCancelled { done, total });
    }
    Ok(())
}

/// Groups ops into tasks of about `target` bytes, splitting ops that straddle a boundary.
fn split(ops: impl Iterator<Item = CopyOp>, target: usize) -> Vec<Vec<CopyOp>> {
    let mut tasks = Vec::new();
    let mut task = Vec::new();
    let mut room = target;
    for mut op in ops {
        while op.len > 0 {
            let n = op.len.min(room);
            task.push(CopyOp {
                src: op.src,
                dst: op.dst,
                len: n,
            });
            // Inside the op's range, so no overflow.
            op = CopyOp {
                src: op.src + n,
                dst: op.dst + n,
                len: op.len - n,
            };
            room -= n;
            if room == 0 {
                tasks.push(std::mem::take(&mut task));
                room = target;
            }
        }
    }
    if !task.is_empty() {
        tasks.push(task);
    }
    tasks
}

/// Copies a task's ops in pieces of at most [`PIECE`] bytes, stopping early on cancellation.
fn copy_task(task: &[CopyOp], completion: &Completion, done: &AtomicUsize) {
    for op in task {
        let mut off = 0;
        while off < op.len {
            if completion.cancelled() {
                return;
            }
            let n = (op.len - off).min(PIECE);
            // SAFETY: the plan was validated by `TransferPlan`: both ranges lie inside host
            // buffers (system or pinned memory the CPU can access) that the plan keeps allocated
            // until this transfer completes, and source and destination ranges of one transfer
            // are disjoint, as are all destination ranges, so no other copy of this transfer
            // writes these bytes. The addresses were exposed by the storages that handed them out
            // (`ptr as usize`), so recovering their provenance is sound.
            unsafe {
                let src = std::ptr::with_exposed_provenance::<u8>(op.src + off);
                let dst = std::ptr::with_exposed_provenance_mut::<u8>(op.dst + off);
                std::ptr::copy_nonoverlapping(src, dst, n);
            }
            off += n;
            done.fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_byte_once_in_balanced_tasks() {
        let ops = vec![
            CopyOp {
                src: 0,
                dst: 1000,
                len: 10,
            },
            CopyOp {
                src: 20,
                dst: 2000,
                len: 25,
            },
            CopyOp {
                src: 100,
                dst: 3000,
                len: 5,
            },
        ];
        let tasks = split(ops.into_iter(), 16);
        let sizes: Vec<usize> = tasks
            .iter()
            .map(|t| t.iter().map(|o| o.len).sum())
            .collect();
        assert_eq!(sizes, vec![16, 16, 8]);
        let flat: Vec<CopyOp> = tasks.into_iter().flatten().collect();
        assert_eq!(
            flat[0],
            CopyOp {
                src: 0,
                dst: 1000,
                len: 10
            }
        );
        assert_eq!(
            flat[1],
            CopyOp {
                src: 20,
                dst: 2000,
                len: 6
            }
        );
        assert_eq!(
            flat[2],
            CopyOp {
                src: 26,
                dst: 2006,
                len: 16
            }
        );
        assert_eq!(
            flat[3],
            CopyOp {
                src: 42,
                dst: 2022,
                len: 3
            }
        );
        assert_eq!(
            flat[4],
            CopyOp {
                src: 100,
                dst: 3000,
                len: 5
            }
        );
    }
}
