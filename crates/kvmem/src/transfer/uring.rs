//! Host ↔ disk transfers through `io_uring`: `O_DIRECT` reads and writes kept at a fixed queue
//! depth by one worker thread that owns the ring.

// This module submits io_uring requests over raw buffers: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]

use super::disk::DiskQueue;
use super::handle::Work;
use super::plan::{TransferPath, TransferPlan};
use super::worker::{Backend, Health, Worker};
use crate::error::{Error, IoError, LayoutError, Result, TransferError};
use io_uring::{IoUring, opcode, types};
use rustix::fd::AsRawFd;
use rustix::io::Errno;

/// Starts the worker that owns the ring. Transfers run one after another, each at the full
/// queue depth. The worker creates the ring on its own thread (so that the ring can be
/// single-issuer) and reports whether that worked; a kernel without `io_uring` is reported
/// here, as [`IoError::BackendUnavailable`].
pub(crate) fn start(config: DiskQueue) -> Result<Worker<Work>> {
    Worker::start("kvmem-io-uring", move || {
        new_ring(config.queue_depth)
            .map(|ring| Ring { ring, config })
            .map_err(|source| {
                Error::Io(IoError::BackendUnavailable {
                    backend: "io_uring",
                    source,
                })
            })
    })
}

/// A ring for one submitting thread: single issuer with deferred task work (completions are run
/// when this thread asks for them, not by interrupting it) where the kernel has them (6.1+),
/// else cooperative task work (5.19+), else a plain ring.
fn new_ring(queue_depth: u32) -> std::io::Result<IoUring> {
    let entries = queue_depth.max(1).next_power_of_two();
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
        .or_else(|_| IoUring::builder().setup_coop_taskrun().build(entries))
        .or_else(|_| IoUring::new(entries))
}

/// The worker's backend: the ring and its settings.
struct Ring {
    ring: IoUring,
    config: DiskQueue,
}

impl Backend for Ring {
    type Job = Work;

    fn run(&mut self, Work { plan, completion }: Work) -> Health {
        let cancelled = || completion.cancelled();
        match run(&mut self.ring, &plan, self.config, &cancelled) {
            Ok(result) => {
                drop(plan);
                completion.complete(result);
                Health::Ok
            }
            Err(fatal) => {
                // The ring failed with I/O possibly still in flight into the plan's buffers:
                // never free them; the worker starts over with a fresh ring.
                tracing::error!(error = %fatal, "io_uring failed with I/O in flight; leaking the transfer's buffers");
                plan.quarantine();
                completion.complete(Err(fatal));
                Health::Broken
            }
        }
    }
}

/// Errors after which the same request is simply tried again.
fn transient(errno: i32) -> bool {
    let e = Errno::from_raw_os_error(errno);
    e == Errno::INTR || e == Errno::AGAIN
}

/// One read or write of a file range into or out of host memory.
#[derive(Debug, Clone, Copy)]
struct Io {
    fd: i32,
    mem: usize,
    offset: u64,
    len: usize,
    write: bool,
}

impl Io {
    fn advance(self, n: usize) -> Self {
        Self {
            mem: self.mem + n,
            offset: self.offset + n as u64,
            len: self.len - n,
            ..self
        }
    }

    fn op(&self) -> &'static str {
        if self.write { "write" } else { "read" }
    }
}

/// The I/O requests of a plan, each at most `max` bytes.
fn requests(plan: &TransferPlan, max: usize) -> Result<Vec<Io>> {
    let write = match plan.path() {
        TransferPath::HostToDisk => true,
        TransferPath::DiskToHost => false,
        other => {
            return Err(Error::Layout(LayoutError::Invalid(format!(
                "the io_uring executor runs host<->disk plans, not {other}"
            ))));
        }
    };
    let mut out = Vec::new();
    for batch in plan.batches() {
        let file = if write {
            batch.dst_kind
        } else {
            batch.src_kind
        };
        // The file is reached through the `DiskStorage` among the plan's buffers that owns it
        // (the plan keeps it open until the I/O has finished), never by trusting the raw number.
        let fd = plan.file(file)?.as_raw_fd();
        for op in &batch.ops {
            let (mem, offset) = if write {
                (op.src, op.dst)
            } else {
                (op.dst, op.src)
            };
            let mut io = Io {
                fd,
                mem,
                offset: offset as u64,
                len: op.len,
                write,
            };
            while io.len > 0 {
                let n = io.len.min(max);
                out.push(Io { len: n, ..io });
                io = io.advance(n);
            }
        }
    }
    Ok(out)
}

/// Runs a plan's I/O at the configured queue depth.
///
/// The outer `Err` is fatal: the ring failed and I/O may still be in flight, so the caller must
/// not free the plan's buffers. The inner result is the transfer's outcome; every path to it has
/// waited for all submitted I/O to complete.
fn run(
    ring: &mut IoUring,
    plan: &TransferPlan,
    config: DiskQueue,
    cancelled: &dyn Fn() -> bool,
) -> std::result::Result<Result<()>, Error> {
    let max = config.max_io_bytes.clamp(crate::PAGE_SIZE, 1 << 30);
    let reqs = match requests(plan, max) {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let total = plan.total_bytes();
    let depth = (config.queue_depth.max(1) as usize).min(ring.params().sq_entries() as usize);
    let mut slots: Vec<Option<Io>> = vec![None; depth];
    let mut free: Vec<usize> = (0..depth).rev().collect();
    let mut next = reqs.into_iter();
    let mut retry: Vec<Io> = Vec::new();
    let mut inflight = 0usize;
    let mut done = 0usize;
    let mut failure: Option<Error> = None;
    loop {
        if failure.is_none() && !cancelled() {
            let mut sq = ring.submission();
            while let Some(&slot) = free.last() {
                let Some(io) = retry.pop().or_else(|| next.next()) else {
                    break;
                };
                // Lengths are at most 1 GiB (clamped above), so they fit in u32.
                let entry = if io.write {
                    opcode::Write::new(
                        types::Fd(io.fd),
                        std::ptr::with_exposed_provenance::<u8>(io.mem),
                        io.len as u32,
                    )
                    .offset(io.offset)
                    .build()
                } else {
                    opcode::Read::new(
                        types::Fd(io.fd),
                        std::ptr::with_exposed_provenance_mut::<u8>(io.mem),
                        io.len as u32,
                    )
                    .offset(io.offset)
                    .build()
                }
                .user_data(slot as u64);
                // SAFETY: the entry names host memory and a file range that the validated plan
                // covers: the plan keeps both buffers (and the file descriptor's storage) alive,
                // and this function does not return normally until every submitted entry has
                // completed (the fatal path makes the caller leak the plan instead). Ranges of one
                // transfer are disjoint, so no two in-flight requests write the same bytes, and
                // the CPU does not touch them meanwhile.
                if unsafe { sq.push(&entry) }.is_err() {
                    retry.push(io);
                    break;
                }
                free.pop();
                slots[slot] = Some(io);
                inflight += 1;
            }
        }
        if inflight == 0 {
            break;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            // Interrupted, or the completion queue is full: reap below and go on.
            if !e
                .raw_os_error()
                .is_some_and(|n| transient(n) || n == Errno::BUSY.raw_os_error())
            {
                return Err(Error::Io(IoError::BackendUnavailable {
                    backend: "io_uring",
                    source: e,
                }));
            }
        }
        for cqe in ring.completion() {
            let slot = cqe.user_data() as usize;
            let Some(io) = slots.get_mut(slot).and_then(Option::take) else {
                tracing::error!(slot, "io_uring completion for an unknown request");
                continue;
            };
            inflight -= 1;
            free.push(slot);
            let res = cqe.result();
            if res < 0 {
                let errno = -res;
                if transient(errno) {
                    retry.push(io);
                } else if failure.is_none() {
                    failure = Some(Error::Io(IoError::Transfer {
                        op: io.op(),
                        fd: io.fd,
                        offset: io.offset,
                        len: io.len,
                        source: std::io::Error::from_raw_os_error(errno),
                    }));
                }
            } else if res == 0 {
                if failure.is_none() {
                    failure = Some(Error::Io(IoError::Short {
                        op: io.op(),
                        offset: io.offset,
                        expected: io.len,
                        actual: 0,
                    }));
                }
            } else {
                let n = (res as usize).min(io.len);
                done += n;
                if n < io.len {
                    retry.push(io.advance(n));
                }
            }
        }
    }
    if let Some(e) = failure {
        return Ok(Err(e));
    }
    if done < total {
        return Ok(Err(Error::Transfer(TransferError::Cancelled {
            done,
            total,
        })));
    }
    Ok(Ok(()))
}
