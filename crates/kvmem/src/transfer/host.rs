//! Host ↔ host copies on the CPU, spread over a thread pool when the batch is large.
//!
//! Large transfers use non-temporal (streaming) stores: they bypass the caches, so the CPU does
//! not first read every destination line it is about to overwrite, and a copy much larger than
//! the caches does not evict everything else. Measured on a 2-core EPYC VM, a 64 MiB copy ran at
//! about 5 GiB/s with `memcpy` and 8–10 GiB/s with streaming stores (docs/PERFORMANCE.md).
//! Small transfers, whose destination is likely read soon, keep ordinary cached `memcpy`.

// This module copies between raw host addresses: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]

use super::handle::{Completion, Work};
use super::plan::{CopyOp, TransferPlan};
use crate::error::{Error, Result, TransferError};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest piece copied without checking for cancellation.
const PIECE: usize = 4 << 20;

/// Runs host copies on a dedicated rayon pool.
pub(crate) struct HostExecutor {
    pool: rayon::ThreadPool,
    tuning: Tuning,
}

/// When to split a transfer over threads and when to stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    pub(crate) threads: usize,
    pub(crate) parallel_threshold: usize,
    pub(crate) streaming_threshold: usize,
}

impl HostExecutor {
    pub(crate) fn new(tuning: Tuning) -> Result<Self> {
        let tuning = Tuning {
            threads: tuning.threads.max(1),
            ..tuning
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(tuning.threads)
            .thread_name(|i| format!("kvmem-copy-{i}"))
            .build()
            .map_err(|e| Error::spawn("host copy pool", std::io::Error::other(e)))?;
        Ok(Self { pool, tuning })
    }

    /// Starts `work` on the pool and returns at once.
    pub(crate) fn submit(&self, work: Work) {
        let tuning = self.tuning;
        self.pool.spawn(move || {
            let Work { plan, completion } = work;
            let result = run(&plan, &completion, tuning);
            drop(plan);
            completion.complete(result);
        });
    }
}

/// Copies every op of a host ↔ host plan; from `parallel_threshold` bytes on, in about
/// `4 * threads` tasks balanced by bytes that the pool's threads steal from each other.
fn run(plan: &TransferPlan, completion: &Completion, tuning: Tuning) -> Result<()> {
    let total = plan.total_bytes();
    #[cfg(test)]
    stall::wait_if(total);
    let done = AtomicUsize::new(0);
    let streaming = total >= tuning.streaming_threshold;
    let ops = plan.batches().iter().flat_map(|b| b.ops.iter().copied());
    if tuning.threads <= 1 || total < tuning.parallel_threshold {
        let task: Vec<CopyOp> = ops.collect();
        copy_task(&task, streaming, completion, &done);
    } else {
        let target = (total / (tuning.threads * 4)).max(PIECE / 4);
        let tasks = split(ops, target);
        tasks
            .par_iter()
            .for_each(|task| copy_task(task, streaming, completion, &done));
    }
    let done = done.into_inner();
    if done < total {
        return Err(Error::Transfer(TransferError::Cancelled { done, total }));
    }
    Ok(())
}

/// Test double for a stalled host copy: a transfer of exactly one of the held numbers of bytes
/// waits until that number is released (several tests may each hold their own at once).
#[cfg(test)]
pub(crate) mod stall {
    use std::sync::{Condvar, Mutex};

    static HELD: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    static RELEASED: Condvar = Condvar::new();

    /// Transfers of `bytes` bytes stall from now on.
    pub(crate) fn hold(bytes: usize) {
        HELD.lock().unwrap().push(bytes);
    }

    /// Lets stalled transfers of `bytes` bytes go on.
    pub(crate) fn release(bytes: usize) {
        HELD.lock().unwrap().retain(|&b| b != bytes);
        RELEASED.notify_all();
    }

    pub(super) fn wait_if(bytes: usize) {
        let held = HELD.lock().unwrap();
        let _held = RELEASED.wait_while(held, |h| h.contains(&bytes)).unwrap();
    }
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
fn copy_task(task: &[CopyOp], streaming: bool, completion: &Completion, done: &AtomicUsize) {
    let copy = if streaming {
        streaming_copy()
    } else {
        cached_copy as CopyFn
    };
    // Counted locally and published once: a shared counter bumped per copy would bounce its
    // cache line between the copying cores.
    let mut copied = 0;
    for op in task {
        let mut off = 0;
        while off < op.len {
            if completion.cancelled() {
                break;
            }
            let n = (op.len - off).min(PIECE);
            // SAFETY: the plan was validated by `TransferPlan`: both ranges lie inside host
            // buffers (system or pinned memory the CPU can access) that the plan keeps allocated
            // until this transfer completes, and source and destination ranges of one transfer
            // are disjoint, as are all destination ranges, so no other copy of this transfer
            // writes these bytes. The addresses were exposed by the storages that handed them out
            // (`ptr as usize`), so recovering their provenance is sound. `copy` is one of the
            // functions below, chosen for the features this CPU has.
            unsafe {
                let src = std::ptr::with_exposed_provenance::<u8>(op.src + off);
                let dst = std::ptr::with_exposed_provenance_mut::<u8>(op.dst + off);
                copy(src, dst, n);
            }
            off += n;
            copied += n;
        }
    }
    done.fetch_add(copied, Ordering::Relaxed);
    if streaming {
        store_fence();
    }
}

/// Copies `len` bytes from `src` to `dst`; the ranges must be valid and must not overlap.
type CopyFn = unsafe fn(*const u8, *mut u8, usize);

/// # Safety
/// `src..src+len` readable, `dst..dst+len` writable, not overlapping.
unsafe fn cached_copy(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

/// The best streaming copy this CPU supports (plain `memcpy` where it has none).
fn streaming_copy() -> CopyFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            return stream_avx2;
        }
        stream_sse2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        cached_copy
    }
}

/// Makes this thread's streaming stores visible before the completion that follows: they are
/// weakly ordered, and the mutex that publishes completion does not order them.
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no preconditions; SSE is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    }
}

/// Defines a streaming copy through `$vector` registers of `$width` bytes: an ordinary copy up
/// to the first `$width`-aligned destination byte, four vectors per iteration, then one at a time,
/// then an ordinary copy of the tail.
#[cfg(target_arch = "x86_64")]
macro_rules! streaming_copy {
    ($(#[$attr:meta])* $name:ident, $vector:ident, $width:literal, $load:ident, $store:ident) => {
        $(#[$attr])*
        unsafe fn $name(src: *const u8, dst: *mut u8, len: usize) {
            use std::arch::x86_64::{$load, $store, $vector};
            const W: usize = $width;
            // SAFETY: every access below stays inside `src..src+len` / `dst..dst+len` (the
            // caller's contract); loads are unaligned loads; streaming stores go to `W`-byte
            // aligned addresses because the head copy advances `dst` to that alignment; the CPU
            // has the instructions (the caller's contract, or part of x86_64).
            unsafe {
                let head = dst.align_offset(W).min(len);
                std::ptr::copy_nonoverlapping(src, dst, head);
                let (mut s, mut d, mut n) = (src.add(head), dst.add(head), len - head);
                while n >= 4 * W {
                    let a = $load(s.cast::<$vector>());
                    let b = $load(s.add(W).cast::<$vector>());
                    let c = $load(s.add(2 * W).cast::<$vector>());
                    let e = $load(s.add(3 * W).cast::<$vector>());
                    $store(d.cast::<$vector>(), a);
                    $store(d.add(W).cast::<$vector>(), b);
                    $store(d.add(2 * W).cast::<$vector>(), c);
                    $store(d.add(3 * W).cast::<$vector>(), e);
                    (s, d, n) = (s.add(4 * W), d.add(4 * W), n - 4 * W);
                }
                while n >= W {
                    $store(d.cast::<$vector>(), $load(s.cast::<$vector>()));
                    (s, d, n) = (s.add(W), d.add(W), n - W);
                }
                std::ptr::copy_nonoverlapping(s, d, n);
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
streaming_copy!(
    /// Streaming copy with 32-byte AVX stores.
    ///
    /// # Safety
    /// As for [`cached_copy`], and the CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    stream_avx2,
    __m256i,
    32,
    _mm256_loadu_si256,
    _mm256_stream_si256
);

#[cfg(target_arch = "x86_64")]
streaming_copy!(
    /// Streaming copy with 16-byte SSE2 stores (every x86_64 CPU has them).
    ///
    /// # Safety
    /// As for [`cached_copy`].
    stream_sse2,
    __m128i,
    16,
    _mm_loadu_si128,
    _mm_stream_si128
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_copies_are_exact_at_every_alignment_and_length() {
        let src: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut copies: Vec<(&str, CopyFn)> =
            vec![("cached", cached_copy), ("best", streaming_copy())];
        #[cfg(target_arch = "x86_64")]
        copies.push(("sse2", stream_sse2));
        for (name, copy) in copies {
            for src_off in [0, 1, 5, 16, 33] {
                for dst_off in [0, 3, 16, 31, 32] {
                    for len in [0, 1, 15, 16, 31, 64, 127, 128, 129, 300, 600] {
                        let mut dst = vec![0xEEu8; 700];
                        // SAFETY: both ranges are inside their vectors and distinct allocations.
                        unsafe { copy(src[src_off..].as_ptr(), dst[dst_off..].as_mut_ptr(), len) };
                        store_fence();
                        assert_eq!(
                            &dst[dst_off..dst_off + len],
                            &src[src_off..src_off + len],
                            "{name} {src_off} {dst_off} {len}"
                        );
                        assert!(
                            dst[..dst_off].iter().all(|b| *b == 0xEE),
                            "{name} wrote before"
                        );
                        assert!(
                            dst[dst_off + len..].iter().all(|b| *b == 0xEE),
                            "{name} wrote after"
                        );
                    }
                }
            }
        }
    }

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
