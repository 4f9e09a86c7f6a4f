//! The transfer engine: copy blocks of one [`BlockLayout`] to blocks of another, across tiers.
//!
//! A request goes through three steps:
//!
//! 1. **Plan** ([`TransferPlan`]): validate (block ids, counts, layout shapes, overlaps,
//!    alignment), turn every (block, layer, outer) chunk pair into a `(src, dst, len)`
//!    [`CopyOp`], merge chunks contiguous on both sides, and pick the [`TransferPath`] from the
//!    two storage kinds. Nothing has moved yet; every bad input fails here with a typed error.
//! 2. **Route**: [`TransferEngine::submit`] finds the executor for the path, or fails with
//!    [`UnsupportedError::Transfer`] — still before any byte moves.
//! 3. **Execute** in the background; the returned [`TransferHandle`] waits, polls or cancels.
//!
//! | path | executor here | notes |
//! |---|---|---|
//! | host ↔ host (system or pinned) | CPU copies on a rayon pool, split by bytes and with streaming stores when large | |
//! | host ↔ disk | [`DiskBackend::IoUring`] (default): kvmem's own `io_uring` loop, `O_DIRECT`; or [`DiskBackend::NixlPosix`]: NIXL's POSIX backend, Linux AIO, `O_DIRECT` | both at `queue_depth` requests of at most `max_io_bytes`; NIXL needs its runtime ([`NixlError::Unavailable`](crate::error::NixlError::Unavailable) at submit otherwise) |
//! | pinned ↔ device, device ↔ device | a CUDA copy stream: `cuMemcpyBatchAsync` or kvmem's PTX copy kernel, chosen by copy size ([`CopyMethod`]) | needs the CUDA driver |
//! | pageable host ↔ device, disk ↔ device | the same, through two pinned bounce buffers, pipelined | the file side runs on the configured [`DiskBackend`], at its queue depth |
//! | disk ↔ disk | none: [`UnsupportedError::Transfer`] | stage through host memory |
//! | local ↔ remote | NIXL READ/WRITE over the prepared lists of a [`RegisteredLayout`] and a [`RemoteLayout`] ([`TransferEngine::write_remote`], [`read_remote`](TransferEngine::read_remote)), completed by a polling thread | needs the NIXL runtime; one descriptor per chunk |
//! | remote ↔ remote | none: [`UnsupportedError::Endpoints`] from [`TransferEngine::transfer`] | read into a local layout, then write |
//!
//! # Memory safety
//! Executors write through raw addresses, so a transfer must be the only writer of its
//! destination, and nothing may write its source, while it runs. The planner enforces this
//! within a transfer (destination ranges pairwise disjoint and disjoint from sources); across
//! transfers and other code it is the caller's contract: do not read a destination, or write a
//! source or destination, until the handle reports completion. The engine guarantees the other
//! half: every buffer a transfer touches stays allocated until the transfer has stopped, even if
//! the handle is dropped.

#[cfg(test)]
mod deadline_tests;
mod disk;
mod disk_queue;
mod files;
mod gpu;
mod handle;
mod host;
/// The stalled-host-copy test double, for other modules' tests.
#[cfg(test)]
pub(crate) use host::stall as host_stall;
mod nixl_posix;
mod plan;
mod remote;
mod uring;
mod worker;

pub use handle::{TransferHandle, TransferStats};
use plan::{BlockRequest, PlanRest};
pub use plan::{CopyBatch, CopyOp, TransferPath, TransferPlan};
pub use remote::{
    LAYOUT_DESCRIPTOR_FORMAT, LayoutDescriptor, MAX_REMOTE_CHUNKS, RegisteredLayout, RemoteLayout,
};

pub use crate::cuda::batch::CopyMethod;
use crate::descriptor::Buffer;
use crate::error::{BoundsError, Error, Result, UnsupportedError};
use crate::layout::BlockLayout;
use crate::nixl::raw::TransferOp;
use disk::DiskLane;
use disk_queue::DiskQueue;
pub use gpu::DEFAULT_BOUNCE_BYTES;
use gpu::GpuExecutor;
use host::HostExecutor;
use remote::{Flight, RemotePoller};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How host ↔ disk transfers reach the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DiskBackend {
    /// Linux `io_uring` with `O_DIRECT`, one worker thread per engine. The default: it needs no
    /// NIXL runtime, and the two backends' measured speeds and fixed costs per transfer are in
    /// the repository's docs/PERFORMANCE.md ("Disk backends").
    #[default]
    IoUring,
    /// NIXL's POSIX backend (Linux AIO underneath, `O_DIRECT`), one worker thread and one NIXL
    /// agent per engine; needs the NIXL runtime. Dropping the engine waits for the disk
    /// transfers already submitted, and for the agent to be destroyed.
    NixlPosix,
}

impl DiskBackend {
    /// Every backend.
    pub const ALL: [DiskBackend; 2] = [Self::IoUring, Self::NixlPosix];

    /// The backend's name (`io_uring`, `nixl-posix`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::IoUring => "io_uring",
            Self::NixlPosix => "nixl-posix",
        }
    }
}

impl std::fmt::Display for DiskBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Tuning of a [`TransferEngine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Threads copying host memory (default: the machine's available parallelism).
    pub host_threads: usize,
    /// Host transfers of at least this many bytes are split over the threads (default 1 MiB).
    pub parallel_threshold: usize,
    /// Host transfers of at least this many bytes use non-temporal (cache-bypassing) stores
    /// (default 8 MiB; `usize::MAX` never streams).
    pub streaming_threshold: usize,
    /// How host ↔ disk transfers are executed (default [`DiskBackend::IoUring`]).
    pub disk_backend: DiskBackend,
    /// Disk requests kept in flight (default 32).
    pub queue_depth: u32,
    /// Largest single disk request in bytes; longer copies are split (default 1 MiB).
    pub max_io_bytes: usize,
    /// How GPU copy lists are executed (default: chosen by copy size).
    pub gpu_method: CopyMethod,
    /// Size of each of the two pinned bounce buffers per device, for pageable host and disk
    /// ↔ device transfers (default 16 MiB; a multiple of 4 KiB keeps `O_DIRECT` alignment).
    pub bounce_bytes: usize,
    /// Device memory per GPU for the staging ring of [`CopyMethod::Staged`] (and
    /// [`CopyMethod::AutoBesideCompute`]), allocated on first staged transfer (default
    /// [`DEFAULT_STAGING_BYTES`](crate::cuda::batch::DEFAULT_STAGING_BYTES), 256 MiB; eight slots
    /// of an eighth each, in whole MiB, at least 1 MiB: below 8 MiB the ring is 8 MiB). A larger ring keeps the copy engines busy through longer
    /// waits of the packing kernel for a multiprocessor beside an engine's kernels, and its
    /// larger slots mean fewer DMAs.
    pub staging_bytes: usize,
    /// The time every transfer is given before it is reported as
    /// [`TransferError::TimedOut`](crate::error::TransferError::TimedOut), whatever its size
    /// (default 60 s); see [`TransferHandle`'s deadline](TransferHandle#deadline).
    pub deadline: Duration,
    /// The time added per GiB a transfer moves (default 10 s, about 100 MiB/s: far below any
    /// working disk, GPU link or network).
    pub deadline_per_gib: Duration,
}

impl EngineConfig {
    /// The time a transfer of `bytes` bytes is given: [`deadline`](Self::deadline) plus
    /// [`deadline_per_gib`](Self::deadline_per_gib) per GiB.
    pub fn deadline_for(&self, bytes: usize) -> Duration {
        crate::completion::deadline_for(self.deadline, self.deadline_per_gib, bytes)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            host_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            parallel_threshold: 1 << 20,
            streaming_threshold: 8 << 20,
            disk_backend: DiskBackend::default(),
            queue_depth: 32,
            max_io_bytes: 1 << 20,
            gpu_method: CopyMethod::Auto,
            bounce_bytes: DEFAULT_BOUNCE_BYTES,
            staging_bytes: crate::cuda::batch::DEFAULT_STAGING_BYTES,
            deadline: crate::completion::DEFAULT_DEADLINE,
            deadline_per_gib: crate::completion::DEFAULT_DEADLINE_PER_GIB,
        }
    }
}

/// Moves blocks between layouts in any supported pair of tiers. Shareable between threads.
///
/// ```
/// use kvmem::layout::{BlockDim, BlockLayout, LayoutConfig, LayoutKind};
/// use kvmem::transfer::TransferEngine;
/// use kvmem::{Buffer, Completion, SystemStorage};
///
/// let config = LayoutConfig {
///     num_blocks: 16, num_layers: 2, outer_dim: 2, page_size: 16, inner_dim: 64, dtype_bytes: 2,
/// };
/// let host = |bytes| Ok(Buffer::new(SystemStorage::new(bytes)?));
/// let src = BlockLayout::allocate(config, LayoutKind::FullyContiguous, 64, host)?;
/// let dst = BlockLayout::allocate(config, LayoutKind::LayerSeparate(BlockDim::Second), 64, host)?;
///
/// let engine = TransferEngine::new(Default::default())?;
/// let handle = engine.copy_blocks(&src, &[3, 7, 8], &dst, &[0, 1, 2])?;
/// let stats = handle.wait()?;
/// assert_eq!(stats.bytes, 3 * 2 * 2 * 16 * 64 * 2);
/// # Ok::<(), kvmem::Error>(())
/// ```
pub struct TransferEngine {
    config: EngineConfig,
    host: HostExecutor,
    /// Shared with the GPU executor, which stages disk ↔ device transfers through it.
    disk: Arc<DiskLane>,
    gpu: Mutex<Option<GpuExecutor>>,
    remote: Mutex<Option<RemotePoller>>,
}

/// One end of a block transfer, for [`TransferEngine::transfer`].
#[derive(Debug, Clone, Copy)]
pub enum Endpoint<'a> {
    /// A layout in this process's memory or files.
    Local(&'a BlockLayout),
    /// A local layout registered with a NIXL agent (usable locally and with that agent's peers).
    Registered(&'a RegisteredLayout),
    /// A NIXL peer's layout.
    Remote(&'a RemoteLayout),
}

impl<'a> From<&'a BlockLayout> for Endpoint<'a> {
    fn from(layout: &'a BlockLayout) -> Self {
        Self::Local(layout)
    }
}

impl<'a> From<&'a RegisteredLayout> for Endpoint<'a> {
    fn from(layout: &'a RegisteredLayout) -> Self {
        Self::Registered(layout)
    }
}

impl<'a> From<&'a RemoteLayout> for Endpoint<'a> {
    fn from(layout: &'a RemoteLayout) -> Self {
        Self::Remote(layout)
    }
}

impl TransferEngine {
    /// An engine with `config`. The disk backend starts on the first disk transfer.
    ///
    /// # Errors
    /// [`TransferError::WorkerSpawn`](crate::error::TransferError::WorkerSpawn) when the copy threads cannot be started.
    pub fn new(config: EngineConfig) -> Result<Self> {
        let host = HostExecutor::new(host::Tuning {
            threads: config.host_threads,
            parallel_threshold: config.parallel_threshold,
            streaming_threshold: config.streaming_threshold,
        })?;
        Ok(Self {
            config,
            host,
            disk: Arc::new(
                DiskLane::new(
                    config.disk_backend,
                    DiskQueue {
                        queue_depth: config.queue_depth,
                        max_io_bytes: config.max_io_bytes,
                    },
                )
                .with_deadlines(config),
            ),
            gpu: Mutex::new(None),
            remote: Mutex::new(None),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Copies blocks `src_ids[i]` of `src` to blocks `dst_ids[i]` of `dst`.
    ///
    /// Between pinned and device memory, a request of 4,096 chunks or more starts copying
    /// before it is fully planned: it is validated whole, its first eighth (as listed) is planned
    /// and its copies enqueued, and the rest is planned while they run and enqueued behind them,
    /// all with the method the whole transfer takes. List an offload's or onboard's blocks in the
    /// order of the contiguous host buffer, so that each part's host side is one run.
    ///
    /// # Errors
    /// Everything [`TransferPlan::blocks`] and [`submit`](Self::submit) return, before any
    /// byte moves.
    pub fn copy_blocks(
        &self,
        src: &BlockLayout,
        src_ids: &[usize],
        dst: &BlockLayout,
        dst_ids: &[usize],
    ) -> Result<TransferHandle> {
        let (plan, rest) = planned(BlockRequest::new(src, src_ids, dst, dst_ids)?)?;
        self.submit_with(plan, rest)
    }

    /// [`copy_blocks`](Self::copy_blocks) ordered with another library's CUDA stream (an
    /// engine's): the copies start only after `after` (an event the caller recorded on its
    /// stream) has completed, without a CPU synchronize. For a transfer whose copies go straight
    /// to a copy stream (pinned or device memory at both ends), also returns an event recorded
    /// after them, which the caller's stream can wait for
    /// ([`Event::wait_in`](crate::cuda::interop::Event::wait_in)). Paths without a GPU end wait
    /// for `after` on the calling thread before they start.
    ///
    /// # Errors
    /// As for [`copy_blocks`](Self::copy_blocks), and [`CudaError::Driver`](crate::error::CudaError::Driver) when the stream cannot
    /// be made to wait.
    pub fn copy_blocks_ordered(
        &self,
        src: &BlockLayout,
        src_ids: &[usize],
        dst: &BlockLayout,
        dst_ids: &[usize],
        after: Option<&crate::cuda::interop::Event>,
    ) -> Result<(TransferHandle, Option<crate::cuda::interop::Event>)> {
        let (plan, rest) = planned(BlockRequest::new(src, src_ids, dst, dst_ids)?)?;
        if !gpu::handles(plan.path()) {
            if let Some(event) = after {
                event.synchronize()?;
            }
            return Ok((self.submit(plan)?, None));
        }
        self.check_supported(&plan)?;
        let path = plan.path();
        let limit = self.config.deadline_for(plan.total_bytes());
        let (handle, work) = TransferHandle::new(plan, limit);
        let end = self.with_gpu(path, |executor| executor.submit_ordered(work, rest, after))??;
        Ok((handle, end))
    }

    /// Runs `f` with the GPU executor, starting it on first use. For a path staged through the
    /// disk, the disk backend is started first, so that a backend that cannot run fails here,
    /// before any byte moves.
    fn with_gpu<T>(&self, path: TransferPath, f: impl FnOnce(&GpuExecutor) -> T) -> Result<T> {
        if path.touches_disk() {
            self.disk.start()?;
        }
        let mut gpu = self.gpu.lock().unwrap_or_else(|e| e.into_inner());
        let executor = match &mut *gpu {
            Some(executor) => executor,
            empty => empty.insert(GpuExecutor::start(
                self.config.gpu_method,
                self.config.bounce_bytes,
                self.config.staging_bytes,
                Arc::clone(&self.disk),
            )?),
        };
        Ok(f(executor))
    }

    /// Copies blocks `src_ids[i]` of `src` to blocks `dst_ids[i]` of `dst`, wherever the two
    /// ends are: both local ([`copy_blocks`](Self::copy_blocks)), local to a NIXL peer
    /// ([`write_remote`](Self::write_remote)) or back ([`read_remote`](Self::read_remote)).
    ///
    /// # Errors
    /// [`UnsupportedError::Endpoints`] when both ends are remote, or one is remote and the
    /// other a local layout not registered with NIXL; otherwise as for the method the pair
    /// dispatches to. Nothing has moved when this returns an error.
    pub fn transfer<'a>(
        &self,
        src: impl Into<Endpoint<'a>>,
        src_ids: &[usize],
        dst: impl Into<Endpoint<'a>>,
        dst_ids: &[usize],
    ) -> Result<TransferHandle> {
        use Endpoint::*;
        let unregistered = |side: &str, peer: &str| {
            Error::Unsupported(UnsupportedError::Endpoints {
                reason: format!(
                    "the {side} is a local layout not registered with NIXL and the other end is in \
                 peer '{peer}'; build its regions from memory registered with the agent \
                 (Agent::register) and wrap it with RegisteredLayout::new"
                ),
            })
        };
        match (src.into(), dst.into()) {
            (Local(s), Local(d)) => self.copy_blocks(s, src_ids, d, dst_ids),
            (Local(s), Registered(d)) => self.copy_blocks(s, src_ids, d.layout(), dst_ids),
            (Registered(s), Local(d)) => self.copy_blocks(s.layout(), src_ids, d, dst_ids),
            (Registered(s), Registered(d)) => {
                self.copy_blocks(s.layout(), src_ids, d.layout(), dst_ids)
            }
            (Registered(s), Remote(d)) => self.write_remote(s, src_ids, d, dst_ids, None),
            (Remote(s), Registered(d)) => self.read_remote(s, src_ids, d, dst_ids),
            (Local(_), Remote(d)) => Err(unregistered("source", d.peer().name())),
            (Remote(s), Local(_)) => Err(unregistered("destination", s.peer().name())),
            (Remote(s), Remote(d)) => Err(Error::Unsupported(UnsupportedError::Endpoints {
                reason: format!(
                    "both ends are remote (peers '{}' and '{}'); NIXL moves data between this \
                     process's memory and one peer: read into a local RegisteredLayout, then \
                     write from it",
                    s.peer().name(),
                    d.peer().name()
                ),
            })),
        }
    }

    /// Writes blocks `src_ids[i]` of the local `src` to blocks `dst_ids[i]` of the peer's
    /// `dst` (a NIXL WRITE over both layouts' prepared lists); `notification` reaches the peer
    /// once the data has landed there.
    ///
    /// # Errors
    /// Before anything moves: [`LayoutError::BlockCountMismatch`](crate::error::LayoutError::BlockCountMismatch), [`LayoutError::Mismatch`](crate::error::LayoutError::Mismatch),
    /// [`LayoutError::BlockOutOfRange`](crate::error::LayoutError::BlockOutOfRange), [`LayoutError::DuplicateBlock`](crate::error::LayoutError::DuplicateBlock) (destination ids),
    /// [`TransferError::Mismatch`](crate::error::TransferError::Mismatch) (layouts prepared with different agents), the peer's errors
    /// ([`PeerError::Invalidated`](crate::error::PeerError::Invalidated), …) and NIXL's. A failure after posting, such as the peer
    /// going away, is reported by the handle as [`TransferError::Failed`](crate::error::TransferError::Failed).
    pub fn write_remote(
        &self,
        src: &RegisteredLayout,
        src_ids: &[usize],
        dst: &RemoteLayout,
        dst_ids: &[usize],
        notification: Option<&[u8]>,
    ) -> Result<TransferHandle> {
        let posted = remote::post(TransferOp::Write, src, src_ids, dst, dst_ids, notification)?;
        Ok(self.watch(TransferPath::LocalToRemote, posted))
    }

    /// Reads blocks `src_ids[i]` of the peer's `src` into blocks `dst_ids[i]` of the local
    /// `dst` (a NIXL READ over both layouts' prepared lists).
    ///
    /// # Errors
    /// As for [`write_remote`](Self::write_remote).
    pub fn read_remote(
        &self,
        src: &RemoteLayout,
        src_ids: &[usize],
        dst: &RegisteredLayout,
        dst_ids: &[usize],
    ) -> Result<TransferHandle> {
        let posted = remote::post(TransferOp::Read, dst, dst_ids, src, src_ids, None)?;
        Ok(self.watch(TransferPath::RemoteToLocal, posted))
    }

    fn watch(&self, path: TransferPath, posted: remote::Posted) -> TransferHandle {
        let limit = self.config.deadline_for(posted.bytes);
        let (handle, completion) = TransferHandle::start(path, posted.bytes, posted.chunks, limit);
        let flight = Flight { posted, completion };
        let mut poller = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *poller {
            Some(poller) => poller.watch(flight),
            empty => match RemotePoller::start() {
                Ok(p) => empty.insert(p).watch(flight),
                Err(e) => {
                    // No thread to poll on: wait here, so the outcome is still reported.
                    tracing::warn!(error = %e, "cannot start the NIXL polling thread");
                    flight.finish_here();
                }
            },
        }
        handle
    }

    /// Copies all of `src` to the start of `dst` as one copy.
    ///
    /// # Errors
    /// [`BoundsError::SizeMismatch`] when `dst` is smaller than `src`,
    /// [`BoundsError::Overflow`], [`BoundsError::OverlappingCopy`], [`BoundsError::Misaligned`] as for
    /// [`TransferPlan::blocks`]; then everything [`submit`](Self::submit) returns.
    pub fn copy_region(&self, src: &Buffer, dst: &Buffer) -> Result<TransferHandle> {
        self.submit(TransferPlan::region(src, dst)?)
    }

    /// Checks that this engine can execute `path`.
    ///
    /// # Errors
    /// [`UnsupportedError::Transfer`] naming the path's kinds and what is missing.
    pub(crate) fn check_supported(&self, plan: &TransferPlan) -> Result<()> {
        let reason = match plan.path() {
            TransferPath::HostToHost | TransferPath::HostToDisk | TransferPath::DiskToHost => {
                return Ok(());
            }
            TransferPath::DiskToDisk => {
                "no executor copies file to file; stage through a host layout"
            }
            path if gpu::handles(path) => {
                if self.config.bounce_bytes == 0 || self.config.bounce_bytes % crate::PAGE_SIZE != 0
                {
                    return Err(Error::Bounds(BoundsError::Misaligned {
                        what: "EngineConfig::bounce_bytes",
                        value: self.config.bounce_bytes as u64,
                        align: crate::PAGE_SIZE as u64,
                    }));
                }
                // Fails with `CudaError::Unavailable` (and what to do) on machines without a driver.
                crate::cuda::load_driver()?;
                return Ok(());
            }
            _ => "no executor handles this pair of storage kinds",
        };
        let (src, dst) = plan.kinds();
        Err(Error::Unsupported(UnsupportedError::Transfer {
            src,
            dst,
            reason,
        }))
    }

    /// Starts executing a plan.
    ///
    /// # Errors
    /// [`UnsupportedError::Transfer`] for a path without an executor;
    /// [`IoError::BackendUnavailable`](crate::error::IoError::BackendUnavailable) when the disk backend cannot start; for
    /// [`DiskBackend::NixlPosix`], [`NixlError::Unavailable`](crate::error::NixlError::Unavailable) without the NIXL runtime and
    /// [`NixlError::UnknownBackend`](crate::error::NixlError::UnknownBackend) / [`NixlError::BackendUnavailable`](crate::error::NixlError::BackendUnavailable) without a working POSIX plugin
    /// (for disk ↔ device transfers too: they are staged through the disk backend).
    /// Nothing has been copied when this returns an error.
    pub fn submit(&self, plan: TransferPlan) -> Result<TransferHandle> {
        self.submit_with(plan, None)
    }

    /// [`submit`](Self::submit) of a plan, or of a request's head and its `rest` ([`planned`]
    /// gives one only for a path the GPU executor enqueues at once).
    fn submit_with(
        &self,
        plan: TransferPlan,
        rest: Option<PlanRest<'_>>,
    ) -> Result<TransferHandle> {
        self.check_supported(&plan)?;
        let path = plan.path();
        let limit = self.config.deadline_for(plan.total_bytes());
        if gpu::handles(path) {
            // If the executor cannot start, `work` is dropped with the closure, and the error
            // returned: nothing has moved.
            let (handle, work) = TransferHandle::new(plan, limit);
            self.with_gpu(path, |executor| executor.submit(work, rest))?;
            return Ok(handle);
        }
        if path == TransferPath::HostToHost {
            let (handle, work) = TransferHandle::new(plan, limit);
            self.host.submit(work);
            return Ok(handle);
        }
        self.disk.submit(plan)
    }
}

/// The plan of `request`: whole, or, between pinned or device memory at both ends (where the
/// GPU executor enqueues copies at once), its head and the rest to plan while the head's copies
/// run ([`BlockRequest::plan_head`]).
fn planned(request: BlockRequest<'_>) -> Result<(TransferPlan, Option<PlanRest<'_>>)> {
    let (src, dst) = request.kinds();
    if !gpu::enqueues_at_once(src, dst) || !request.plans_in_two() {
        return Ok((request.plan()?, None));
    }
    let (head, rest) = request.plan_head()?;
    Ok((head, Some(rest)))
}

impl std::fmt::Debug for TransferEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferEngine")
            .field("config", &self.config)
            .finish()
    }
}
