//! The CUDA executor: every path with device memory at one end.
//!
//! - pinned ↔ device and device ↔ device: the plan's copies go straight to a
//!   [`CopyStream`] (batched DMA or the copy kernel, chosen per transfer by size); a waiter thread
//!   waits for the stream's event, then releases the plan and completes the handle;
//! - pageable host ↔ device and disk ↔ device: through two pinned bounce buffers per device,
//!   pipelined — while the GPU moves one buffer, the CPU (memcpy) or the disk works on the
//!   other. Disk I/O goes through the engine's disk backend ([`DiskLane`]: `io_uring` or NIXL
//!   POSIX, at the configured queue depth and request size), as a host ↔ disk plan between the
//!   file and the bounce buffer.
//!
//! A transfer that uses a [`BackgroundPinnedStorage`] still being page-locked goes to the
//! worker, which first waits (bounded) for the chunks its copies touch.
//!
//! Direct copies are enqueued at submission, on the caller's thread, so the GPU starts at once;
//! a [`Worker`] thread waits for them (and runs staged transfers) in submission order, reports
//! every failure through the handle, and releases a transfer's memory only after its copies
//! finished.
//!
//! Every wait of the worker ends at the transfer's deadline; a stream that stalled is
//! quarantined and replaced (`streams.rs`).

// This module enqueues device copies over raw addresses and reads files into pinned memory: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]

use super::disk::DiskLane;
use super::handle::Work;
use super::plan::{CopyBatch, PlanRest, TransferPath, TransferPlan};
use super::worker::{Backend, Health, Worker};
use crate::Completion;
use crate::cuda::batch::{CopyCompletion, CopyMethod, CopyStream, DeviceCopy, Location};
use crate::cuda::interop::Event;
use crate::descriptor::{Buffer, MemoryDescriptor};
use crate::error::{Error, Result, TransferError, UnsupportedError};
use crate::kind::StorageKind;
use crate::storage::{BackgroundPinnedStorage, PinnedStorage};
use bounce::{staged_from_device, staged_to_device};
use copies::{Cuts, copy_within, device_copies, registration_cuts};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use streams::{Lanes, Streams};

mod bounce;
mod copies;
mod streams;

/// Default size of each of the two bounce buffers per device.
pub const DEFAULT_BOUNCE_BYTES: usize = 16 << 20;

/// Waits for every enqueued completion, even after an error (the memory must not be released
/// while the GPU still uses it); each wait ends at the transfer's deadline
/// (`CopyCompletion::until`), and a completion still running then marks its stream stalled.
/// Returns the first error: `error` (the enqueue's) first.
fn wait_enqueued(completions: Vec<CopyCompletion>, error: Option<Error>) -> Result<()> {
    let mut result = error.map_or(Ok(()), Err);
    for c in completions {
        let r = c.wait();
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// A task the worker can no longer take: waits for its enqueued copies as the worker would,
/// then quarantines the transfer's buffers if a copy may still run (a failure on a stalled
/// stream), or drops the work (reported as aborted).
fn abandon(task: Task) {
    if let Task::Enqueued {
        completions,
        work,
        error,
        lanes,
    } = task
    {
        let stalled =
            wait_enqueued(completions, error).is_err() && lanes.stalled().next().is_some();
        drop(lanes);
        let Work { plan, completion } = work;
        if stalled {
            completion.time_out();
        }
        drop(plan);
    }
}

/// Where the non-device side of a staged transfer lives.
#[derive(Clone, Copy)]
enum Staged<'a> {
    /// Pageable host memory, copied with memcpy.
    Memory,
    /// A file, read or written through the disk backend; the plan is the transfer's own, whose
    /// buffers (the file among them) the staging plans keep alive too.
    File {
        kind: StorageKind,
        plan: &'a TransferPlan,
    },
}

/// What the worker thread does with a transfer.
enum Task {
    /// Copies already enqueued on their streams (by `submit`, on the caller's thread): wait for
    /// them, then complete. On an enqueue error, `error` is set and the completions hold what was
    /// enqueued before it.
    /// Fields drop in this order: the completions (which wait for their copies) before the
    /// work (whose drop releases the transfer's buffers).
    Enqueued {
        completions: Vec<CopyCompletion>,
        work: Work,
        error: Option<Error>,
        lanes: Lanes,
    },
    /// Copies staged through bounce buffers: run them on the worker (on the streams of `lanes`,
    /// and on the devices' current streams for the others).
    Staged { work: Work, lanes: Lanes },
}

impl super::worker::Deadlined for Task {
    fn deadline(&self) -> Instant {
        match self {
            Task::Enqueued { work, .. } | Task::Staged { work, .. } => work.completion.deadline(),
        }
    }
}

/// Runs GPU transfers: direct ones are enqueued at submission, staged ones on a worker thread,
/// which also waits for completions and reports them, in submission order. Dropping it waits
/// for every queued transfer.
pub(crate) struct GpuExecutor {
    streams: Arc<Streams>,
    method: CopyMethod,
    worker: Worker<Task>,
}

/// The worker's backend: the streams, the bounce buffers per device, and the way to the disk.
struct Staging {
    streams: Arc<Streams>,
    bounce: HashMap<u32, [Buffer; 2]>,
    method: CopyMethod,
    bounce_bytes: usize,
    disk: Arc<DiskLane>,
}

impl Backend for Staging {
    type Job = Task;

    fn run(&mut self, task: Task) -> Health {
        let (work, lanes, result, staged) = match task {
            Task::Enqueued {
                work,
                completions,
                error,
                lanes,
            } => (work, lanes, wait_enqueued(completions, error), false),
            Task::Staged { work, mut lanes } => {
                let result = if work.completion.cancelled() {
                    Err(Error::Transfer(TransferError::Cancelled {
                        done: 0,
                        total: work.plan.total_bytes(),
                    }))
                } else {
                    run_staged(self, &work, &mut lanes)
                };
                (work, lanes, result, true)
            }
        };
        // The transfer failed with copies on a stream that stalled: some of them may have been
        // left to the stream (a completion that timed out, or one dropped on an error path past
        // the deadline), and the GPU may still use everything they name. Whatever the error,
        // treat it as the timeout it may hide (the safe side: nothing is released).
        let stalled = result.is_err() && lanes.stalled().next().is_some();
        if stalled {
            for ordinal in lanes.stalled() {
                if let Some(bufs) = self.bounce.remove(&ordinal) {
                    let bytes = bufs.iter().map(|b| b.size() as u64).sum();
                    crate::accounting::quarantined(bufs.len() as u64, bytes);
                    // Never freed: stalled copies may still read or write them.
                    std::mem::forget(bufs);
                }
            }
        }
        if staged && result.is_err() {
            // A failed staging step may have left I/O in flight into a bounce buffer (its plan
            // is then leaked, keeping the buffer allocated): never reuse one; the next staged
            // transfer allocates fresh buffers.
            self.bounce.clear();
        }
        // The claims go first, so that a transfer submitted once this one is reported does
        // not see it as still open on its stream.
        drop(lanes);
        let Work { plan, completion } = work;
        if stalled {
            // The handle quarantines the plan's buffers (unless its timeout was reported
            // already, which quarantined them): the plan's own clones may then go.
            completion.time_out();
            drop(plan);
        } else {
            drop(plan);
            completion.complete(result);
        }
        Health::Ok
    }
}

impl GpuExecutor {
    pub(crate) fn start(
        method: CopyMethod,
        bounce_bytes: usize,
        staging_bytes: usize,
        disk: Arc<DiskLane>,
    ) -> Result<Self> {
        // Fail before any transfer is accepted when there is no driver.
        crate::cuda::load_driver()?;
        let streams = Arc::new(Streams::new(staging_bytes));
        let shared = Arc::clone(&streams);
        let worker = Worker::start("kvmem-gpu", move || {
            Ok(Staging {
                streams: Arc::clone(&shared),
                bounce: HashMap::new(),
                method,
                bounce_bytes,
                disk: Arc::clone(&disk),
            })
        })?;
        Ok(Self {
            streams,
            method,
            worker,
        })
    }

    pub(crate) fn submit(&self, work: Work, rest: Option<PlanRest<'_>>) {
        self.submit_on(work, Lanes::default(), rest);
    }

    /// [`submit`](Self::submit) on the streams `lanes` holds already (and on the devices'
    /// current streams for the others). With `rest`, `work`'s plan is a request's head
    /// ([`BlockRequest::plan_head`](super::plan::BlockRequest::plan_head)): its copies are
    /// enqueued, then the rest is planned (on this thread, while they run), enqueued after them
    /// on the same streams, and added to the plan; every list goes with the method the whole
    /// transfer would take.
    fn submit_on(&self, mut work: Work, mut lanes: Lanes, rest: Option<PlanRest<'_>>) {
        let task = if is_direct(&work.plan) {
            let cuts = registration_cuts(&work.plan);
            let deadline = work.completion.deadline();
            let share = rest.as_ref().map(|r| (r.head_share(), r.one_run()));
            let mut methods: Vec<((StorageKind, StorageKind), CopyMethod)> = Vec::new();
            let mut completions = Vec::new();
            // Each list on its device's stream, with the method chosen once per pair of kinds
            // (for a head, the whole transfer's); stops at the first error.
            let mut enqueue_all = |batches: &[CopyBatch]| -> Result<()> {
                for batch in batches.iter().filter(|b| !b.ops.is_empty()) {
                    let kinds = (batch.src_kind, batch.dst_kind);
                    let stream = device_of(kinds.0, kinds.1)
                        .and_then(|ordinal| lanes.stream(&self.streams, ordinal, deadline))?;
                    let copies = device_copies(&batch.ops, kinds.0, kinds.1, &cuts.split);
                    let method = match (methods.iter().find(|(k, _)| *k == kinds), share) {
                        (Some(&(_, m)), _) => m,
                        (None, Some(share)) => {
                            let m = whole_method(
                                &stream,
                                (&copies, kinds),
                                (&cuts, self.method),
                                share,
                            )?;
                            methods.push((kinds, m));
                            m
                        }
                        (None, None) => self.method,
                    };
                    completions.push(self.enqueue_direct(
                        &stream,
                        (&copies, kinds),
                        &cuts,
                        (method, deadline),
                    )?);
                }
                Ok(())
            };
            let mut error = enqueue_all(work.plan.batches()).err();
            if let (Some(rest), None) = (rest, &error) {
                error = rest
                    .emit()
                    .and_then(|batches| {
                        let enqueued = enqueue_all(&batches);
                        work.plan.append(batches);
                        work.completion.set_ops(work.plan.op_count());
                        enqueued
                    })
                    .err();
            }
            Task::Enqueued {
                work,
                completions,
                error,
                lanes,
            }
        } else {
            // The worker runs it whole (after the pinning it waits for, or through bounce
            // buffers): plan the rest now.
            match rest.map(PlanRest::emit) {
                Some(Ok(batches)) => {
                    work.plan.append(batches);
                    work.completion.set_ops(work.plan.op_count());
                    Task::Staged { work, lanes }
                }
                // Nothing has moved: report the error through the handle.
                Some(Err(e)) => Task::Enqueued {
                    work,
                    completions: Vec::new(),
                    error: Some(e),
                    lanes,
                },
                None => Task::Staged { work, lanes },
            }
        };
        // A submit fails only if the worker died: the copies already enqueued are waited for
        // here (each wait ends at the transfer's deadline); copies left to a stalled stream
        // quarantine the transfer's buffers, else the dropped Work reports
        // `TransferError::Aborted`.
        if let Err(task) = self.worker.submit(task) {
            abandon(task);
        }
    }

    /// [`submit`](Self::submit) ordered with a foreign stream: the copy stream first waits (on
    /// the GPU) for `after`, then the work is submitted; for direct paths an event recorded
    /// after the copies is returned (staged paths record none: their copies are enqueued later
    /// by the worker). On an error before submission the work is dropped, which reports
    /// `TransferError::Aborted` to its handle; nothing has moved.
    pub(crate) fn submit_ordered(
        &self,
        work: Work,
        rest: Option<PlanRest<'_>>,
        after: Option<&Event>,
    ) -> Result<Option<Event>> {
        let Some(first) = work.plan.batches().first() else {
            self.submit(work, rest);
            return Ok(None);
        };
        // The copies go to the very stream that waits for `after`.
        let mut lanes = Lanes::default();
        let stream = lanes.stream(
            &self.streams,
            device_of(first.src_kind, first.dst_kind)?,
            work.completion.deadline(),
        )?;
        if let Some(event) = after {
            // SAFETY: the copy stream is live (held by `stream`) and of the device's primary
            // context, which `Event` binds.
            unsafe { event.wait_in(stream.raw()) }?;
        }
        let direct = is_direct(&work.plan);
        self.submit_on(work, lanes, rest);
        if !direct {
            return Ok(None);
        }
        // The transfer is running: a failure here only loses the GPU-side signal.
        let end = Event::new(stream.device()).and_then(|end| {
            // SAFETY: as above.
            unsafe { end.record(stream.raw()) }.map(|()| end)
        });
        Ok(end
            .inspect_err(|e| tracing::warn!(error = %e, "cannot record a transfer's end event"))
            .ok())
    }

    fn enqueue_direct(
        &self,
        stream: &CopyStream,
        (copies, (src, dst)): (&[DeviceCopy], (StorageKind, StorageKind)),
        cuts: &Cuts,
        (method, deadline): (CopyMethod, Instant),
    ) -> Result<CopyCompletion> {
        // SAFETY: the plan validated every range against the buffers it keeps alive; the plan
        // travels with the completion to the worker, which drops it only after waiting (or,
        // when the copies outlive the deadline, after the handle quarantined its buffers);
        // pinned memory is device-mapped; destinations are pairwise disjoint and disjoint from
        // sources; no copy crosses a registration cut (`device_copies` split them there).
        unsafe { copy_within(stream, copies, method, (src, dst), &cuts.joins) }
            .map(|c| c.until(deadline))
    }
}

/// The method a transfer whose head's copies from `src` to `dst` are `copies` takes with the
/// executor's `method`, among the joins `cuts` allows ([`CopyStream::settle_whole`]): `share`
/// is `(part, whole)` of the request the head is, and whether the whole request's source and
/// destination each are one run.
fn whole_method(
    stream: &CopyStream,
    (copies, (src, dst)): (&[DeviceCopy], (StorageKind, StorageKind)),
    (cuts, method): (&Cuts, CopyMethod),
    (share, (src_run, dst_run)): ((usize, usize), (bool, bool)),
) -> Result<CopyMethod> {
    let (from, to) = (location(src), location(dst));
    // The host side `Shape` looks at: the destination's when it is the host's.
    let host_one_run = if to == Location::Host {
        dst_run
    } else {
        src_run
    };
    stream.settle_whole(
        method,
        copies,
        (from, to),
        &cuts.joins,
        (share, host_one_run),
    )
}

/// True for the kinds that cannot be reached by the GPU directly: pageable memory and files.
fn needs_staging(kind: StorageKind) -> bool {
    matches!(kind, StorageKind::System | StorageKind::Disk(_))
}

/// True when the plan's copies can be enqueued at once, on the caller's thread: every side is
/// reachable by the GPU, and no background-pinned pool of the plan is still being page-locked
/// (such a transfer goes to the worker, which waits for the chunks it uses first).
fn is_direct(plan: &TransferPlan) -> bool {
    plan.batches()
        .iter()
        .all(|b| !needs_staging(b.src_kind) && !needs_staging(b.dst_kind))
        && !plan
            .buffers()
            .iter()
            .any(|b| background_pool(b).is_some_and(|pool| !pool.is_fully_pinned()))
}

/// The background-pinned pool `buffer` is, or is a view, arena block or registration of.
fn background_pool(buffer: &Buffer) -> Option<&BackgroundPinnedStorage> {
    super::files::storage_under::<BackgroundPinnedStorage>(buffer.as_any())
}

/// Waits (bounded by each pool's wait timeout) until every byte the plan's copies use in a
/// background-pinned pool is page-locked, so that no copy uses unpinned memory as pinned.
fn wait_for_pinning(plan: &TransferPlan) -> Result<()> {
    for buffer in plan.buffers() {
        let Some(pool) = background_pool(buffer) else {
            continue;
        };
        if pool.is_fully_pinned() {
            continue;
        }
        let ranges = plan.batches().iter().flat_map(|b| {
            let (src, dst) = (
                b.src_kind == StorageKind::Pinned,
                b.dst_kind == StorageKind::Pinned,
            );
            b.ops.iter().flat_map(move |op| {
                let src = src.then(|| op.src..op.src + op.len);
                let dst = dst.then(|| op.dst..op.dst + op.len);
                src.into_iter().chain(dst)
            })
        });
        pool.wait_addresses(ranges)?;
    }
    Ok(())
}

fn location(kind: StorageKind) -> Location {
    match kind {
        StorageKind::Device(d) => Location::Device(d),
        _ => Location::Host,
    }
}

fn device_of(src: StorageKind, dst: StorageKind) -> Result<u32> {
    src.device_id()
        .or(dst.device_id())
        .ok_or(Error::Unsupported(UnsupportedError::Transfer {
            src,
            dst,
            reason: "the CUDA executor needs device memory at one end",
        }))
}

fn run_staged(staging: &mut Staging, work: &Work, lanes: &mut Lanes) -> Result<()> {
    wait_for_pinning(&work.plan)?;
    let (method, bounce_bytes) = (staging.method, staging.bounce_bytes);
    let deadline = work.completion.deadline();
    let cuts = registration_cuts(&work.plan);
    for batch in work.plan.batches() {
        let (src, dst) = (batch.src_kind, batch.dst_kind);
        let ordinal = device_of(src, dst)?;
        let stream = lanes.stream(&staging.streams, ordinal, deadline)?;
        let bufs = match staging.bounce.entry(ordinal) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let gpu = stream.device().clone();
                e.insert([
                    Buffer::new(PinnedStorage::new(&gpu, bounce_bytes)?),
                    Buffer::new(PinnedStorage::new(&gpu, bounce_bytes)?),
                ])
            }
        };
        let staged = |kind: StorageKind| match kind {
            StorageKind::Disk(_) => Staged::File {
                kind,
                plan: &work.plan,
            },
            _ => Staged::Memory,
        };
        let disk = &*staging.disk;
        match (src, dst) {
            (StorageKind::System | StorageKind::Disk(_), StorageKind::Device(_)) => {
                staged_to_device(
                    &stream,
                    bufs,
                    &batch.ops,
                    (staged(src), disk),
                    (method, deadline),
                    bounce_bytes,
                )?
            }
            (StorageKind::Device(_), StorageKind::System | StorageKind::Disk(_)) => {
                staged_from_device(
                    &stream,
                    bufs,
                    &batch.ops,
                    (staged(dst), disk),
                    (method, deadline),
                    bounce_bytes,
                )?
            }
            _ => {
                let copies = device_copies(&batch.ops, src, dst, &cuts.split);
                // SAFETY: as in `GpuExecutor::enqueue_direct`; waited for right here.
                let c = unsafe { copy_within(&stream, &copies, method, (src, dst), &cuts.joins)? };
                c.until(deadline).wait()?;
            }
        }
    }
    Ok(())
}

/// True when copies from `src` to `dst` go straight to a copy stream at submission (pinned or
/// device memory at both ends), where a plan's rest can be planned while its head's copies run.
pub(crate) fn enqueues_at_once(src: StorageKind, dst: StorageKind) -> bool {
    handles(TransferPath::select(src, dst)) && !needs_staging(src) && !needs_staging(dst)
}

/// True for the paths this executor handles.
pub(crate) fn handles(path: TransferPath) -> bool {
    matches!(
        path,
        TransferPath::HostToDevice
            | TransferPath::DeviceToHost
            | TransferPath::DeviceToDevice
            | TransferPath::DeviceToDisk
            | TransferPath::DiskToDevice
    )
}

#[cfg(test)]
mod tests;
