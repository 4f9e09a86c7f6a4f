//! Host ↔ disk transfers through NIXL's POSIX backend: the same [`CopyBatch`] lists the
//! `io_uring` executor runs, posted as NIXL file transfers by one worker thread that owns a NIXL
//! agent running the POSIX backend only.
//!
//! # What the POSIX backend does underneath
//! NIXL 1.5.1's POSIX plugin queues every descriptor of a request as one `pread`/`pwrite` and
//! runs them through an I/O queue: Linux AIO (`libaio`, `io_submit`/`io_getevents`) by default,
//! or `liburing` / POSIX AIO when asked (`use_uring` / `use_posix_aio`). It submits at most 64
//! I/Os per call and only makes progress while the request is polled. Its tunables map onto
//! [`EngineConfig`](super::EngineConfig) as follows:
//!
//! | kvmem | POSIX backend |
//! |---|---|
//! | `queue_depth` | `kernel_queue_size`: the AIO context's size, i.e. I/Os in the kernel at once (NIXL clamps it to 16..=1024) |
//! | `max_io_bytes` | none: kvmem splits copies into descriptors of at most this many bytes, and each descriptor is one I/O |
//! | — | `ios_pool_size` (I/Os queued per backend, default 65536): kvmem queues at most two requests of `kernel_queue_size` descriptors, far below it |
//!
//! # Registration
//! NIXL only moves registered memory and files. Per transfer, the executor registers the
//! plan's buffers with its own agent — overlapping or touching buffers of one address space
//! (host memory, or one file) merged into one registration — and deregisters them when the
//! transfer has finished, before the plan (which keeps the memory and files alive) is dropped.
//! Each registration is a [`Registered`] over a [`Span`] that itself holds clones of the
//! buffers it covers, so it cannot outlive them even by mistake. Nothing is cached between
//! transfers: the POSIX backend's registration is bookkeeping only (no pinning, no I/O), a small
//! part of a transfer's fixed cost (measured by `benches/transfer_host.rs`; figures in the
//! repository's docs/PERFORMANCE.md, "Disk backends").
//!
//! # Failure and cancellation
//! A transfer is posted as requests of one kernel queue's worth of descriptors, two at a time
//! (while the older completes, the newer's I/O waits queued, so the kernel queue stays full);
//! [`cancel`](crate::Completion::cancel) is honoured before each request is
//! posted (the I/O of posted requests always completes first). A request NIXL reports as failed
//! is an error of the transfer, never a success. Because NIXL does not promise that every I/O
//! of a failed request has stopped when it reports the failure, the executor then keeps the
//! request, its registrations and the plan's buffers alive for the rest of the process (a
//! leak, where the alternative could be a write into freed memory; a leaked `DiskStorage` also
//! keeps its file), and continues with a fresh agent.

use super::disk_queue::DiskQueue;
use super::handle::{Completion, Work};
use super::plan::{TransferPath, TransferPlan};
use super::worker::{Backend, Health, Worker};
use crate::descriptor::{Buffer, MemoryDescriptor};
use crate::error::{Error, LayoutError, Result, TransferError};
use crate::kind::StorageKind;
use crate::nixl::raw::{LocalBlocks, RawTransfers, Transfer};
use crate::nixl::{
    AddressSpace, Agent, AgentConfig, MemType, NixlCompatible, NixlDescriptor, Registered,
};
use std::any::Any;
use std::collections::VecDeque;
use std::time::Instant;

/// NIXL's name of the backend.
const BACKEND: &str = "POSIX";

/// Starts the worker that owns the agent; transfers run one after another. The worker creates
/// the agent and reports whether that worked, so that a missing runtime or plugin is reported
/// here.
///
/// Dropping the worker waits for it to finish what was queued and destroy its agent, so that
/// the agent never outlives the engine: a process that returns from `main` while another thread
/// is still tearing down a NIXL agent races the exit-time destructors of NIXL's libraries
/// (without the join, 2 of 40 short `kvmem bench` runs with this backend died of SIGSEGV at
/// exit; with it, 0 of 60).
///
/// # Errors
/// [`NixlError::Unavailable`](crate::error::NixlError::Unavailable) without the NIXL runtime;
/// [`NixlError::UnknownBackend`](crate::error::NixlError::UnknownBackend) when the POSIX plugin
/// is not installed; [`NixlError::BackendUnavailable`](crate::error::NixlError::BackendUnavailable)
/// when it fails to start; [`TransferError::WorkerSpawn`] when the worker thread cannot be
/// started.
pub(crate) fn start(config: DiskQueue) -> Result<Worker<Work>> {
    crate::nixl::ensure_loaded()?;
    Worker::start("kvmem-nixl-posix", move || {
        new_agent(config).map(|agent| PosixAgent { agent, config })
    })
}

/// An agent running the POSIX backend alone, polled by the worker (no progress thread: the
/// POSIX backend moves data only when polled).
fn new_agent(config: DiskQueue) -> Result<Agent> {
    crate::nixl::ensure_loaded()?;
    let depth = kernel_queue_size(config.queue_depth);
    let agent = Agent::new(AgentConfig {
        progress_thread: false,
        backends: vec![BACKEND.to_owned()],
        backend_params: [(
            BACKEND.to_owned(),
            [("kernel_queue_size".to_owned(), depth.to_string())].into(),
        )]
        .into(),
        ..AgentConfig::new("")
    })?;
    agent.require_backend(BACKEND)?;
    Ok(agent)
}

/// The worker's backend: the agent and its settings.
struct PosixAgent {
    agent: Agent,
    config: DiskQueue,
}

impl Backend for PosixAgent {
    type Job = Work;

    fn run(&mut self, Work { plan, completion }: Work) -> Health {
        let outcome = run(&self.agent, &plan, self.config, &completion).map_err(|unsettled| {
            let Unsettled { error, keep } = *unsettled;
            tracing::error!(error = %error, "NIXL POSIX transfer failed with I/O possibly in flight; leaking its buffers and starting a fresh agent");
            std::mem::forget(keep);
            error
        });
        Work::settle(plan, completion, outcome)
    }
}

/// A failure after which NIXL may still touch the memory: what must never be freed.
struct Unsettled {
    error: Error,
    keep: (Vec<Transfer>, Vec<SpanEntry>),
}

/// A range of host memory or of one file covering some of a plan's buffers; registered with
/// the executor's agent for one transfer. It holds clones of the buffers it covers, so its
/// registration can never outlive them.
#[derive(Debug)]
pub(crate) struct Span {
    region: NixlDescriptor,
    kind: StorageKind,
    _covers: Vec<Buffer>,
}

impl MemoryDescriptor for Span {
    fn addr(&self) -> usize {
        // A host address or file offset of a live buffer: it fits in usize.
        self.region.addr as usize
    }
    fn size(&self) -> usize {
        self.region.size
    }
    fn storage_kind(&self) -> StorageKind {
        self.kind
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn nixl_descriptor(&self) -> Option<NixlDescriptor> {
        None
    }
}

impl NixlCompatible for Span {
    fn nixl_params(&self) -> (*const u8, usize, MemType, u64) {
        // An address only (a file offset for files): NIXL's registration reads it as a number.
        let r = self.region;
        (
            std::ptr::without_provenance(r.addr as usize),
            r.size,
            r.mem_type,
            r.device_id,
        )
    }
}

/// A registered span: its address space and range, and the registered buffer.
struct SpanEntry {
    space: AddressSpace,
    start: usize,
    end: usize,
    registered: Buffer,
}

/// Buffers as merged spans per address space (overlapping or touching ranges become one),
/// sorted by (space, start).
fn spans(buffers: &[Buffer]) -> Vec<(AddressSpace, Span)> {
    let mut ranges: Vec<(NixlDescriptor, &Buffer)> = buffers
        .iter()
        .map(|b| (b.nixl_region(), b))
        .filter(|(r, _)| r.size > 0)
        .collect();
    ranges.sort_by_key(|(r, _)| (r.space(), r.addr, r.end()));
    let mut out: Vec<(AddressSpace, Span)> = Vec::new();
    for (region, buffer) in ranges {
        let end = region.end().unwrap_or(u64::MAX);
        match out.last_mut() {
            Some((s, span))
                if *s == region.space() && span.region.end().is_some_and(|e| region.addr <= e) =>
            {
                // Within one live address range: the difference fits in usize.
                span.region.size = span.region.size.max((end - span.region.addr) as usize);
                span._covers.push(buffer.clone());
            }
            _ => out.push((
                region.space(),
                Span {
                    region,
                    kind: buffer.storage_kind(),
                    _covers: vec![buffer.clone()],
                },
            )),
        }
    }
    out
}

/// Registers the plan's spans with `agent`.
fn register(agent: &Agent, plan: &TransferPlan) -> Result<Vec<SpanEntry>> {
    spans(plan.buffers())
        .into_iter()
        .map(|(space, span)| {
            let (start, end) = (span.addr(), span.addr() + span.size());
            let registered: Registered<Span> = agent.register(span)?;
            Ok(SpanEntry {
                space,
                start,
                end,
                registered: Buffer::new(registered),
            })
        })
        .collect()
}

/// The registered span holding `addr..addr+len` of `space`, and the offset of `addr` in it.
fn locate(
    entries: &[SpanEntry],
    space: AddressSpace,
    addr: usize,
    len: usize,
) -> Result<(&Buffer, usize)> {
    let i = entries.partition_point(|e| (e.space, e.start) <= (space, addr));
    i.checked_sub(1)
        .map(|i| &entries[i])
        .filter(|e| e.space == space && addr.checked_add(len).is_some_and(|end| end <= e.end))
        .map(|e| (&e.registered, addr - e.start))
        .ok_or_else(|| {
            Error::Layout(LayoutError::Invalid(format!(
                "copy range {addr:#x}+{len} ({:?}, device {}) lies in none of the plan's buffers",
                space.mem_type(),
                space.device_id()
            )))
        })
}

/// One NIXL request being filled: memory blocks and the file blocks they pair with.
#[derive(Default)]
struct Request {
    mem: LocalBlocks,
    file: LocalBlocks,
    bytes: usize,
}

/// Runs a plan's copies as NIXL requests. The outer `Err` means NIXL may still touch the
/// plan's memory; the inner result is the transfer's outcome, reached with nothing in flight.
fn run(
    agent: &Agent,
    plan: &TransferPlan,
    config: DiskQueue,
    completion: &Completion,
) -> std::result::Result<Result<()>, Box<Unsettled>> {
    let write = match plan.path() {
        TransferPath::HostToDisk => true,
        TransferPath::DiskToHost => false,
        other => {
            return Ok(Err(Error::Layout(LayoutError::Invalid(format!(
                "the NIXL POSIX executor runs host<->disk plans, not {other}"
            )))));
        }
    };
    let started = Instant::now();
    let entries = match register(agent, plan) {
        Ok(e) => e,
        Err(e) => return Ok(Err(e)),
    };
    tracing::trace!(spans = entries.len(), elapsed = ?started.elapsed(), "NIXL POSIX registration");
    let mut session = Session {
        agent,
        write,
        request_descs: kernel_queue_size(config.queue_depth) as usize,
        done: 0,
        total: plan.total_bytes(),
        completion,
        entries,
        inflight: VecDeque::new(),
    };
    let result = session.execute(plan, config.max_io_bytes);
    let Session {
        entries, inflight, ..
    } = session;
    match result {
        Ok(outcome) => {
            // Every request has completed: deregister, then let the caller drop the plan.
            drop(inflight);
            drop(entries);
            Ok(outcome)
        }
        Err(error) => Err(Box::new(Unsettled {
            error,
            keep: (inflight.into_iter().map(|(t, _)| t).collect(), entries),
        })),
    }
}

/// The POSIX backend's `kernel_queue_size` for a queue depth (NIXL's own bounds).
fn kernel_queue_size(queue_depth: u32) -> u32 {
    queue_depth.clamp(16, 1024)
}

/// How the posting of a transfer's requests ended.
enum Issued {
    All,
    Cancelled,
    /// Refused before NIXL queued anything of the refused request.
    Refused(Error),
}

/// The state of one transfer's execution.
struct Session<'a> {
    agent: &'a Agent,
    write: bool,
    /// Descriptors per request: one kernel queue's worth, so that with two requests in flight
    /// the queue stays full and a cancellation stops within two requests.
    request_descs: usize,
    done: usize,
    total: usize,
    completion: &'a Completion,
    entries: Vec<SpanEntry>,
    /// Posted requests and their bytes, oldest first; at most [`IN_FLIGHT`].
    inflight: VecDeque<(Transfer, usize)>,
}

/// Requests kept posted at once: while the oldest completes, the next one's I/O is queued.
const IN_FLIGHT: usize = 2;

impl Session<'_> {
    /// Posts the plan's copies and waits for all of them. `Err`: NIXL failed with I/O possibly
    /// in flight (the requests stay in `inflight`).
    fn execute(&mut self, plan: &TransferPlan, max_io_bytes: usize) -> Result<Result<()>> {
        let issued = self.issue(plan, max_io_bytes)?;
        while !self.inflight.is_empty() {
            if let Err(e) = self.complete_oldest() {
                // Posted I/O failed, which is what the caller must hear (its memory stays
                // held); a refusal met while posting later requests is logged, not lost.
                if let Issued::Refused(refused) = &issued {
                    tracing::warn!(error = %refused, "a disk request was refused after earlier requests of the same transfer failed");
                }
                return Err(e);
            }
        }
        Ok(match issued {
            Issued::All => Ok(()),
            Issued::Cancelled => Err(Error::Transfer(TransferError::Cancelled {
                done: self.done,
                total: self.total,
            })),
            Issued::Refused(e) => Err(e),
        })
    }

    fn issue(&mut self, plan: &TransferPlan, max_io_bytes: usize) -> Result<Issued> {
        let max = max_io_bytes.clamp(crate::PAGE_SIZE, 1 << 30);
        let host = AddressSpace::HOST;
        let mut request = Request::default();
        for batch in plan.batches() {
            let file_kind = if self.write {
                batch.dst_kind
            } else {
                batch.src_kind
            };
            let StorageKind::Disk(_) = file_kind else {
                return Ok(Issued::Refused(Error::Layout(LayoutError::Invalid(
                    format!("disk side of a {} batch is {file_kind} memory", plan.path()),
                ))));
            };
            let file_space = AddressSpace::of_kind(file_kind);
            for op in &batch.ops {
                let (mut mem, mut offset) = if self.write {
                    (op.src, op.dst)
                } else {
                    (op.dst, op.src)
                };
                let mut left = op.len;
                while left > 0 {
                    let n = left.min(max);
                    let pushed = locate(&self.entries, host, mem, n).and_then(|(m, mo)| {
                        let (f, fo) = locate(&self.entries, file_space, offset, n)?;
                        request.mem.push_range(m, mo, n)?;
                        request.file.push_range(f, fo, n)?;
                        Ok(())
                    });
                    if let Err(e) = pushed {
                        return Ok(Issued::Refused(e));
                    }
                    request.bytes += n;
                    if request.mem.len() >= self.request_descs
                        && let Some(end) = self.post(std::mem::take(&mut request))?
                    {
                        return Ok(end);
                    }
                    (mem, offset, left) = (mem + n, offset + n, left - n);
                }
            }
        }
        if !request.mem.is_empty()
            && let Some(end) = self.post(request)?
        {
            return Ok(end);
        }
        Ok(Issued::All)
    }

    /// Posts one request once fewer than [`IN_FLIGHT`] are posted. `Some`: stop issuing.
    fn post(&mut self, request: Request) -> Result<Option<Issued>> {
        while self.inflight.len() >= IN_FLIGHT {
            self.complete_oldest()?;
        }
        if self.completion.cancelled() {
            return Ok(Some(Issued::Cancelled));
        }
        let posted = if self.write {
            self.agent.write_to_file(&request.mem, &request.file)
        } else {
            self.agent.read_from_file(&request.mem, &request.file)
        };
        match posted {
            Ok(transfer) => {
                self.inflight.push_back((transfer, request.bytes));
                Ok(None)
            }
            // Refused while posting: NIXL may have queued part of the request.
            Err(e @ Error::Transfer(TransferError::Failed { .. })) => Err(e),
            // Refused while building the request: nothing was queued.
            Err(e) => Ok(Some(Issued::Refused(e))),
        }
    }

    /// Polls every posted request until the oldest has completed. The POSIX backend only
    /// submits more I/O when polled, so polls follow each other closely (the crate's
    /// [`Backoff`](crate::backoff::Backoff)). On error the requests stay in `inflight`.
    fn complete_oldest(&mut self) -> Result<()> {
        let mut backoff = crate::backoff::Backoff::new();
        loop {
            let mut oldest_done = false;
            for (i, (transfer, _)) in self.inflight.iter_mut().enumerate() {
                let done = transfer.poll()?;
                if i == 0 {
                    oldest_done = done;
                }
            }
            if oldest_done {
                if let Some((transfer, bytes)) = self.inflight.pop_front() {
                    drop(transfer);
                    self.done += bytes;
                }
                return Ok(());
            }
            backoff.snooze();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OffsetBuffer, SystemStorage};

    #[test]
    fn spans_merge_overlapping_and_touching_buffers_per_space() {
        let base = Buffer::new(SystemStorage::new(64 << 10).unwrap());
        let view = |o, l| Buffer::new(OffsetBuffer::new(base.clone(), o, l).unwrap());
        // A view with a page of its own allocation on either side, so that it never touches
        // `base` even when the two mappings are adjacent (as successive mmaps usually are).
        let other_base = Buffer::new(SystemStorage::new(4 * 4096).unwrap());
        let other = Buffer::new(OffsetBuffer::new(other_base, 4096, 8192).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let file = Buffer::new(crate::DiskStorage::new_in(dir.path(), 64 << 10).unwrap());
        let fview = |o, l| Buffer::new(OffsetBuffer::new(file.clone(), o, l).unwrap());
        // Two touching views and one overlapping: one span. A separate allocation: another.
        let plan = TransferPlan::region(&view(0, 8192), &fview(0, 8192)).unwrap();
        let mut all: Vec<Buffer> = plan.buffers().to_vec();
        all.extend([view(8192, 4096), view(4096, 16384), other.clone()]);
        all.push(fview(32768, 4096));
        let got = spans(&all);
        let host = AddressSpace::HOST;
        let host_spans: Vec<(usize, usize)> = got
            .iter()
            .filter(|(s, _)| *s == host)
            .map(|(_, sp)| (sp.addr(), sp.size()))
            .collect();
        let mut want = vec![(base.addr(), 20480), (other.addr(), 8192)];
        want.sort();
        assert_eq!(host_spans, want);
        let file_spans: Vec<(usize, usize)> = got
            .iter()
            .filter(|(s, _)| *s != host)
            .map(|(_, sp)| (sp.addr(), sp.size()))
            .collect();
        assert_eq!(file_spans, vec![(0, 8192), (32768, 4096)]);
    }
}
