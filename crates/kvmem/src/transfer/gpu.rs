//! The CUDA executor: every path with device memory at one end.
//!
//! - pinned ↔ device and device ↔ device: the plan's copies go straight to a
//!   [`CopyStream`] (batched DMA or the copy kernel, chosen per transfer by size); a waiter thread
//!   waits for the stream's event, then releases the plan and completes the handle;
//! - pageable host ↔ device and disk ↔ device: through two pinned bounce buffers per device,
//!   pipelined — while the GPU moves one buffer, the CPU (memcpy) or the disk (`pread`/`pwrite`)
//!   works on the other.
//!
//! Direct copies are enqueued at submission, on the caller's thread, so the GPU starts at once;
//! a worker thread waits for them (and runs staged transfers) in submission order, reports every
//! failure through the handle, and releases a transfer's memory only after its copies finished.

use super::handle::Work;
use super::plan::{CopyOp, TransferPath};
use crate::Completion;
use crate::cuda::CudaDevice;
use crate::cuda::batch::{CopyCompletion, CopyMethod, CopyStream, DeviceCopy, Location};
use crate::cuda::interop::Event;
use crate::descriptor::MemoryDescriptor;
use crate::error::{Error, IoError, Result, TransferError, UnsupportedError};
use crate::host::HostMemory;
use crate::kind::StorageKind;
use crate::storage::{PinnedStorage, expect_full, pread_all, pwrite_all};
use rustix::fd::{AsRawFd, BorrowedFd};
use std::collections::HashMap;
use std::sync::mpsc;

/// Default size of each of the two bounce buffers per device.
pub const DEFAULT_BOUNCE_BYTES: usize = 16 << 20;

/// Where the non-device side of a staged transfer lives.
#[derive(Clone, Copy)]
enum Staged<'a> {
    /// Pageable host memory, copied with memcpy.
    Memory,
    /// A file, borrowed from the `DiskStorage` that owns it, read or written with
    /// `pread`/`pwrite`.
    File(BorrowedFd<'a>),
}

/// What the worker thread does with a transfer.
enum Task {
    /// Copies already enqueued on their streams (by `submit`, on the caller's thread): wait for
    /// them, then complete. On an enqueue error, `error` is set and the completions hold what was
    /// enqueued before it.
    Enqueued {
        work: Work,
        completions: Vec<CopyCompletion>,
        error: Option<Error>,
    },
    /// Copies staged through bounce buffers: run them on the worker.
    Staged(Work),
}

/// One copy stream per device, shared by `submit` (direct paths) and the worker.
#[derive(Default)]
struct Streams {
    by_device: std::sync::Mutex<HashMap<u32, CopyStream>>,
}

impl Streams {
    fn get(&self, ordinal: u32) -> Result<CopyStream> {
        let mut map = self.by_device.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(&ordinal) {
            return Ok(s.clone());
        }
        let gpu = CudaDevice::new(ordinal as usize)?;
        let stream = CopyStream::new(&gpu)?;
        map.insert(ordinal, stream.clone());
        Ok(stream)
    }
}

/// Runs GPU transfers: direct ones are enqueued at submission, staged ones on a worker thread,
/// which also waits for completions and reports them, in submission order.
pub(crate) struct GpuExecutor {
    streams: std::sync::Arc<Streams>,
    method: CopyMethod,
    tx: Option<mpsc::Sender<Task>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl GpuExecutor {
    pub(crate) fn start(method: CopyMethod, bounce_bytes: usize) -> Result<Self> {
        // Fail before any transfer is accepted when there is no driver.
        crate::cuda::load_driver()?;
        let streams = std::sync::Arc::new(Streams::default());
        let (tx, rx) = mpsc::channel::<Task>();
        let shared = std::sync::Arc::clone(&streams);
        let worker = std::thread::Builder::new()
            .name("kvmem-gpu".into())
            .spawn(move || {
                let mut bounce: HashMap<u32, [PinnedStorage; 2]> = HashMap::new();
                for task in rx {
                    let (work, result) = match task {
                        Task::Enqueued {
                            work,
                            completions,
                            error,
                        } => {
                            // Wait for everything enqueued, even after an error: the memory must
                            // not be released while the GPU still uses it.
                            let mut result = error.map_or(Ok(()), Err);
                            for c in completions {
                                let r = c.wait();
                                if result.is_ok() {
                                    result = r;
                                }
                            }
                            (work, result)
                        }
                        Task::Staged(work) => {
                            let result = if work.completion.cancelled() {
                                Err(Error::Transfer(TransferError::Cancelled {
                                    done: 0,
                                    total: work.plan.total_bytes(),
                                }))
                            } else {
                                run_staged(&shared, &mut bounce, &work, method, bounce_bytes)
                            };
                            (work, result)
                        }
                    };
                    let Work { plan, completion } = work;
                    drop(plan);
                    completion.complete(result);
                }
            })
            .map_err(|source| Error::spawn("CUDA copy worker", source))?;
        Ok(Self {
            streams,
            method,
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    pub(crate) fn submit(&self, work: Work) {
        let direct = work
            .plan
            .batches()
            .iter()
            .all(|b| !needs_staging(b.src_kind) && !needs_staging(b.dst_kind));
        let task = if direct {
            let mut completions = Vec::new();
            let mut error = None;
            for batch in work.plan.batches() {
                match self.enqueue_direct(batch.src_kind, batch.dst_kind, &batch.ops) {
                    Ok(c) => completions.push(c),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            Task::Enqueued {
                work,
                completions,
                error,
            }
        } else {
            Task::Staged(work)
        };
        if let Some(tx) = &self.tx {
            // A send fails only if the worker died; the returned task then drops its
            // completions (which wait) and its Work (which reports `TransferAborted`).
            let _ = tx.send(task);
        }
    }

    /// [`submit`](Self::submit) ordered with a foreign stream: the copy stream first waits (on
    /// the GPU) for `after`, then the work is submitted; for direct paths an event recorded
    /// after the copies is returned (staged paths record none: their copies are enqueued later
    /// by the worker). On an error before submission the work is dropped, which reports
    /// `TransferAborted` to its handle; nothing has moved.
    pub(crate) fn submit_ordered(
        &self,
        work: Work,
        after: Option<&Event>,
    ) -> Result<Option<Event>> {
        let Some(first) = work.plan.batches().first() else {
            self.submit(work);
            return Ok(None);
        };
        let stream = self
            .streams
            .get(device_of(first.src_kind, first.dst_kind)?)?;
        if let Some(event) = after {
            // SAFETY: the copy stream is live (held by `stream`) and of the device's primary
            // context, which `Event` binds.
            unsafe { event.wait_in(stream.raw()) }?;
        }
        let direct = work
            .plan
            .batches()
            .iter()
            .all(|b| !needs_staging(b.src_kind) && !needs_staging(b.dst_kind));
        self.submit(work);
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
        src: StorageKind,
        dst: StorageKind,
        ops: &[CopyOp],
    ) -> Result<CopyCompletion> {
        let stream = self.streams.get(device_of(src, dst)?)?;
        let copies: Vec<DeviceCopy> = ops.iter().map(device_copy).collect();
        // SAFETY: the plan validated every range against the buffers it keeps alive; the plan
        // travels with the completion to the worker, which drops it only after waiting; pinned
        // memory is device-mapped; destinations are pairwise disjoint and disjoint from sources.
        unsafe { stream.copy_async(&copies, self.method, location(src), location(dst)) }
    }
}

impl Drop for GpuExecutor {
    fn drop(&mut self) {
        // Close the queue and let the worker finish what it has: it owns the memory of every
        // queued transfer until its copies are done.
        self.tx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// True for the kinds that cannot be reached by the GPU directly: pageable memory and files.
fn needs_staging(kind: StorageKind) -> bool {
    matches!(kind, StorageKind::System | StorageKind::Disk(_))
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

fn run_staged(
    streams: &Streams,
    bounce: &mut HashMap<u32, [PinnedStorage; 2]>,
    work: &Work,
    method: CopyMethod,
    bounce_bytes: usize,
) -> Result<()> {
    for batch in work.plan.batches() {
        let (src, dst) = (batch.src_kind, batch.dst_kind);
        let ordinal = device_of(src, dst)?;
        let stream = streams.get(ordinal)?;
        let bufs = match bounce.entry(ordinal) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let gpu = stream.device().clone();
                e.insert([
                    PinnedStorage::new(&gpu, bounce_bytes)?,
                    PinnedStorage::new(&gpu, bounce_bytes)?,
                ])
            }
        };
        let staged = |kind: StorageKind| -> Result<Staged> {
            match kind {
                StorageKind::Disk(_) => Ok(Staged::File(work.plan.file(kind)?)),
                _ => Ok(Staged::Memory),
            }
        };
        match (src, dst) {
            (StorageKind::System | StorageKind::Disk(_), StorageKind::Device(_)) => {
                staged_to_device(
                    &stream,
                    bufs,
                    &batch.ops,
                    staged(src)?,
                    method,
                    bounce_bytes,
                )?
            }
            (StorageKind::Device(_), StorageKind::System | StorageKind::Disk(_)) => {
                staged_from_device(
                    &stream,
                    bufs,
                    &batch.ops,
                    staged(dst)?,
                    method,
                    bounce_bytes,
                )?
            }
            _ => {
                let copies: Vec<DeviceCopy> = batch.ops.iter().map(device_copy).collect();
                // SAFETY: as in `GpuExecutor::enqueue_direct`; waited for right here.
                let c =
                    unsafe { stream.copy_async(&copies, method, location(src), location(dst))? };
                c.wait()?;
            }
        }
    }
    Ok(())
}

fn device_copy(op: &CopyOp) -> DeviceCopy {
    DeviceCopy {
        src: op.src as u64,
        dst: op.dst as u64,
        len: op.len as u64,
    }
}

/// Splits `ops` into pieces of at most `max` bytes and groups them into slabs of at most `max`
/// bytes each, so every slab fits one bounce buffer. Pieces keep the alignment of their ops when
/// `max` is a multiple of it.
fn slabs(ops: &[CopyOp], max: usize) -> Vec<Vec<CopyOp>> {
    let mut out: Vec<Vec<CopyOp>> = Vec::new();
    let mut cur: Vec<CopyOp> = Vec::new();
    let mut used = 0;
    for op in ops {
        let mut done = 0;
        while done < op.len {
            let room = max - used;
            let len = (op.len - done).min(room);
            cur.push(CopyOp {
                src: op.src + done,
                dst: op.dst + done,
                len,
            });
            done += len;
            used += len;
            if used == max {
                out.push(std::mem::take(&mut cur));
                used = 0;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Fills `buf` from the staged side of `slab`, packed in order.
fn stage_in(buf: &mut PinnedStorage, slab: &[CopyOp], from: Staged<'_>) -> Result<()> {
    let mut off = 0;
    let dst = buf.as_mut_slice();
    for op in slab {
        let piece = &mut dst[off..off + op.len];
        match from {
            Staged::Memory => {
                // SAFETY: `op.src..+len` lies in a host buffer the plan validated and keeps alive;
                // nothing writes it during the transfer (the engine's contract).
                let src = unsafe { std::slice::from_raw_parts(op.src as *const u8, op.len) };
                piece.copy_from_slice(src);
            }
            Staged::File(fd) => read_exact_at(fd, piece, op.src as u64)?,
        }
        off += op.len;
    }
    Ok(())
}

/// Writes the packed contents of `buf` out to the staged side of `slab`.
fn stage_out(buf: &PinnedStorage, slab: &[CopyOp], to: Staged<'_>) -> Result<()> {
    let mut off = 0;
    let src = buf.as_slice();
    for op in slab {
        let piece = &src[off..off + op.len];
        match to {
            Staged::Memory => {
                // SAFETY: `op.dst..+len` lies in a host buffer the plan validated and keeps
                // alive; this transfer is its only writer and its ranges are pairwise disjoint.
                let dst = unsafe { std::slice::from_raw_parts_mut(op.dst as *mut u8, op.len) };
                dst.copy_from_slice(piece);
            }
            Staged::File(fd) => write_all_at(fd, piece, op.dst as u64)?,
        }
        off += op.len;
    }
    Ok(())
}

fn read_exact_at(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<()> {
    let len = buf.len();
    let done = pread_all(fd, buf, offset).map_err(|source| {
        Error::Io(IoError::Transfer {
            op: "read",
            fd: fd.as_raw_fd(),
            offset,
            len,
            source,
        })
    })?;
    expect_full("read", offset, len, done)
}

fn write_all_at(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> Result<()> {
    let len = buf.len();
    let done = pwrite_all(fd, buf, offset).map_err(|source| {
        Error::Io(IoError::Transfer {
            op: "write",
            fd: fd.as_raw_fd(),
            offset,
            len,
            source,
        })
    })?;
    expect_full("write", offset, len, done)
}

/// The device copies moving a packed bounce buffer at `base` to (or from) the slab's device side.
fn bounce_copies(slab: &[CopyOp], base: u64, to_device: bool) -> Vec<DeviceCopy> {
    let mut off = 0u64;
    slab.iter()
        .map(|op| {
            let staged = base + off;
            off += op.len as u64;
            if to_device {
                DeviceCopy {
                    src: staged,
                    dst: op.dst as u64,
                    len: op.len as u64,
                }
            } else {
                DeviceCopy {
                    src: op.src as u64,
                    dst: staged,
                    len: op.len as u64,
                }
            }
        })
        .collect()
}

/// Host or disk → device through the two bounce buffers: the CPU fills one while the GPU drains
/// the other.
fn staged_to_device(
    stream: &CopyStream,
    bufs: &mut [PinnedStorage; 2],
    ops: &[CopyOp],
    from: Staged,
    method: CopyMethod,
    bounce_bytes: usize,
) -> Result<()> {
    let ordinal = stream.device().ordinal() as u32;
    let mut pending: [Option<CopyCompletion>; 2] = [None, None];
    for (i, slab) in slabs(ops, bounce_bytes).iter().enumerate() {
        let k = i % 2;
        if let Some(c) = pending[k].take() {
            c.wait()?;
        }
        stage_in(&mut bufs[k], slab, from)?;
        let copies = bounce_copies(slab, bufs[k].addr() as u64, true);
        // SAFETY: sources are the bounce buffer (pinned, device-mapped, owned by this executor
        // and not touched again until this completion is waited for); destinations are device
        // ranges the plan validated and keeps alive, pairwise disjoint.
        pending[k] = Some(unsafe {
            stream.copy_async(&copies, method, Location::Host, Location::Device(ordinal))?
        });
    }
    for c in pending.into_iter().flatten() {
        c.wait()?;
    }
    Ok(())
}

/// Device → host or disk through the two bounce buffers: the GPU fills one while the CPU empties
/// the other.
fn staged_from_device(
    stream: &CopyStream,
    bufs: &mut [PinnedStorage; 2],
    ops: &[CopyOp],
    to: Staged,
    method: CopyMethod,
    bounce_bytes: usize,
) -> Result<()> {
    let ordinal = stream.device().ordinal() as u32;
    let all = slabs(ops, bounce_bytes);
    let mut prev: Option<(usize, CopyCompletion)> = None;
    for (i, slab) in all.iter().enumerate() {
        let k = i % 2;
        let copies = bounce_copies(slab, bufs[k].addr() as u64, false);
        // SAFETY: sources are device ranges the plan validated and keeps alive; the destination
        // is bounce buffer `k`, whose previous contents were written out in the last iteration
        // (slab i-2) and which nothing else touches until this completion is waited for.
        let c = unsafe {
            stream.copy_async(&copies, method, Location::Device(ordinal), Location::Host)?
        };
        if let Some((j, done)) = prev.take() {
            done.wait()?;
            stage_out(&bufs[j % 2], &all[j], to)?;
        }
        prev = Some((i, c));
    }
    if let Some((j, done)) = prev {
        done.wait()?;
        stage_out(&bufs[j % 2], &all[j], to)?;
    }
    Ok(())
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
mod tests {
    use super::*;

    #[test]
    fn slabs_split_and_pack_within_the_bounce_size() {
        let ops = [
            CopyOp {
                src: 0,
                dst: 1000,
                len: 10,
            },
            CopyOp {
                src: 100,
                dst: 2000,
                len: 25,
            },
            CopyOp {
                src: 500,
                dst: 3000,
                len: 3,
            },
        ];
        let s = slabs(&ops, 16);
        assert!(
            s.iter()
                .all(|slab| slab.iter().map(|o| o.len).sum::<usize>() <= 16)
        );
        let flat: Vec<CopyOp> = s.concat();
        let total: usize = flat.iter().map(|o| o.len).sum();
        assert_eq!(total, 38);
        // Pieces of one op are contiguous on both sides and in order.
        assert_eq!(
            flat[1],
            CopyOp {
                src: 100,
                dst: 2000,
                len: 6
            }
        );
        assert_eq!(
            flat[2],
            CopyOp {
                src: 106,
                dst: 2006,
                len: 16
            }
        );
        assert_eq!(
            flat[3],
            CopyOp {
                src: 122,
                dst: 2022,
                len: 3
            }
        );
        let copies = bounce_copies(&s[0], 0x1_0000, true);
        assert_eq!(copies[1].src, 0x1_0000 + 10);
    }
}
