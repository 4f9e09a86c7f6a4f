//! Many copies on one CUDA stream, by one of three methods:
//!
//! - [`CopyMethod::Batched`]: `cuMemcpyBatchAsync` (CUDA 12.8+), one driver call for the whole
//!   list, executed by the copy engines;
//! - [`CopyMethod::Kernel`]: kvmem's copy kernel (`kernels/copy.cu`, shipped as PTX and loaded
//!   through the driver at run time), 16-byte vector loads with several in flight per thread,
//!   reading and writing pinned host memory through its device mapping (`kernel.rs`);
//! - [`CopyMethod::PerCopy`]: one `cuMemcpyAsync` per copy — the fallback;
//! - [`CopyMethod::Staged`]: between device and host memory, the copy kernel gathers the device
//!   chunks into a ring of device staging slots (or scatters them from it) and the copy engines
//!   move each slot with one DMA per contiguous host run, pipelined on two streams (`staged.rs`).
//!
//! [`CopyMethod::Auto`] picks between them by the average copy size and, for the staged
//! method, the transfer's size and the shape of its host side, with thresholds taken from
//! measurements (`docs/PERFORMANCE.md`; see [`CopyStream::resolve`]). Completion is an event recorded after the copies; a
//! [`CopyCompletion`] can be polled or waited on, and waits on drop so nothing it uses is freed
//! while the GPU still reads or writes it.

// This module owns a CUDA stream, kernel and pinned/device descriptor buffers, and enqueues raw copies: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]

mod completion;
mod kernel;
mod shape;
mod staged;

pub use completion::CopyCompletion;
pub use staged::DEFAULT_STAGING_BYTES;
pub(crate) use staged::HostJoins;

use super::CudaDevice;
use super::driver::{self, DeferredErrors};
use crate::Completion;
use crate::error::{BoundsError, Error, Result, TransferError, UnsupportedError};
use cudarc::driver::{CudaFunction, CudaStream, result};
use kernel::{DescBuffers, split_for_kernel};
use shape::Shape;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The copy kernel, as PTX.
const COPY_PTX: &str = include_str!("../../../kernels/copy.ptx");
const KERNEL_NAME: &str = "kvmem_copy_chunks";
/// Threads per block of the copy kernel.
const KERNEL_THREADS: u32 = 256;
/// Blocks per multiprocessor the kernel is launched with (when there are enough copies).
const KERNEL_BLOCKS_PER_SM: u32 = 8;
/// The threshold of [`CopyMethod::Auto`]: copies to or from host memory averaging at
/// most this many bytes go to the kernel under [`CopyMethod::Auto`], larger ones to the copy
/// engines (`cuMemcpyBatchAsync`); device-to-device copies use the kernel up to four times this.
/// Chosen from the H100 measurements in PERFORMANCE.md.
pub const DEFAULT_KERNEL_MAX_AVG_LEN: usize = 1 << 20;
/// Device-to-device copies use the kernel up to this many times [`DEFAULT_KERNEL_MAX_AVG_LEN`].
const D2D_KERNEL_FACTOR: usize = 4;
/// The kernel splits longer copies into pieces of at most this many bytes, so that one large
/// copy is spread over many thread blocks instead of occupying one; pieces shrink (down to
/// [`KERNEL_MIN_PIECE`]) until there are enough to fill every block the launch can run at once.
const KERNEL_PIECE: u64 = 256 * 1024;
/// The smallest piece a long copy is split into.
const KERNEL_MIN_PIECE: u64 = 16 * 1024;
/// Lists of at least this many kernel descriptors are launched in two parts, the first eighth
/// first (`enqueue_kernel`).
const KERNEL_HEAD_MIN: usize = 2048;

/// One copy of `len` bytes between two device-accessible addresses (device memory, or pinned
/// host memory, whose host address is also its device address under unified addressing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct DeviceCopy {
    /// Source address.
    pub src: u64,
    /// Destination address.
    pub dst: u64,
    /// Bytes.
    pub len: u64,
}

/// Where the bytes of one side of a copy live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// Pinned host memory.
    Host,
    /// Memory of the device with this ordinal.
    Device(u32),
}

/// How a list of copies is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum CopyMethod {
    /// Choose by average copy size among what this device and driver support.
    #[default]
    Auto,
    /// `cuMemcpyBatchAsync`: one DMA per copy. Fast for large copies (2 MiB: 0.95–0.97× of one
    /// large copy on the H200), slow for many small ones (about 2 µs each there: 16,384 copies
    /// of 4 KiB at 0.04–0.09×); `Auto` takes it only for large copies.
    Batched,
    /// The PTX copy kernel.
    Kernel,
    /// One `cuMemcpyAsync` per copy.
    PerCopy,
    /// Between device and pinned host memory: the copy kernel packs device chunks into device
    /// staging slots (or unpacks them), the copy engines move each slot with one DMA per
    /// contiguous host run, pipelined. Device-to-device copies run on the kernel. `Auto` takes it
    /// instead of the copy kernel where it measured faster (see [`CopyStream::resolve`]), and
    /// [`AutoBesideCompute`](Self::AutoBesideCompute) wherever `Auto` takes the kernel.
    Staged,
    /// `Auto` for an engine that runs its own kernels while kvmem copies: where `Auto` would
    /// put copies between device and pinned host memory on the copy kernel, they go to
    /// [`Staged`](Self::Staged), which keeps the SMs busy only while it packs or unpacks a
    /// staging slot; everything else as `Auto`. Measured on the H200 (docs/PERFORMANCE.md):
    /// beside an SM-saturating kernel the copy kernel slowed that kernel by 310–350% on the vLLM
    /// gather and scatter points, the staged method by under 1.2%, at 0.6× of link speed
    /// instead of 0.9×. Device-to-device copies stay on the kernel (not measured beside compute).
    AutoBesideCompute,
}

struct Inner {
    device: CudaDevice,
    stream: Arc<CudaStream>,
    /// The copy kernel; it keeps its module loaded.
    kernel: Option<CudaFunction>,
    batch_supported: bool,
    host_pointers_are_device_pointers: bool,
    sm_count: u32,
    kernel_max_avg_len: usize,
    free_descs: Mutex<Vec<DescBuffers>>,
    /// The staging ring of [`CopyMethod::Staged`], set up on first use.
    ring: Mutex<Option<staged::Ring>>,
    /// The size of that ring.
    staging_bytes: usize,
    /// When allocating the ring last failed (`Auto` then copies with the kernel for a while).
    ring_failed: Mutex<Option<std::time::Instant>>,
    /// Set once a completion of this stream timed out: work queued here waits behind the stall.
    stalled: AtomicBool,
    /// Last field: logs what destroying the stream and unloading the module recorded.
    _deferred: DeferredErrors,
}

/// A CUDA stream that executes lists of copies. Cheap to clone; clones share the stream.
#[derive(Clone)]
pub struct CopyStream {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CopyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyStream")
            .field("device", &self.inner.device.ordinal())
            .field("batch_supported", &self.inner.batch_supported)
            .field("kernel", &self.inner.kernel.is_some())
            .finish()
    }
}

impl CopyStream {
    /// A new non-blocking stream on `device`, with the copy kernel loaded.
    ///
    /// A kernel that fails to load is logged and leaves [`CopyMethod::Kernel`] unavailable; it is
    /// not an error, since the other methods still work.
    ///
    /// # Errors
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) if the stream cannot be created.
    pub fn new(device: &CudaDevice) -> Result<Self> {
        let ctx = device.context();
        let (stream, kernel) =
            super::stream_and_kernel(device, COPY_PTX, KERNEL_NAME, "load the copy kernel")?;
        let kernel = kernel
            .map_err(|e| tracing::warn!(error = %e, "copy kernel unavailable"))
            .ok();
        // An attribute the driver cannot report counts as 0 (feature absent).
        let attr = |a| ctx.attribute(a).unwrap_or(0);
        use driver::DeviceAttribute as A;
        let inner = Inner {
            device: device.clone(),
            stream,
            kernel,
            batch_supported: driver::has_symbol("cuMemcpyBatchAsync_v2"),
            host_pointers_are_device_pointers: attr(
                A::CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM,
            ) == 1
                && attr(A::CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING) == 1,
            sm_count: u32::try_from(attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).max(1))
                .unwrap_or(1),
            kernel_max_avg_len: DEFAULT_KERNEL_MAX_AVG_LEN,
            free_descs: Mutex::new(Vec::new()),
            ring: Mutex::new(None),
            staging_bytes: DEFAULT_STAGING_BYTES,
            ring_failed: Mutex::new(None),
            stalled: AtomicBool::new(false),
            _deferred: DeferredErrors::new(ctx.clone(), "release a copy stream"),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// This stream with a staging ring of `bytes` for [`CopyMethod::Staged`] (eight slots of an
    /// eighth each, in whole MiB; default [`DEFAULT_STAGING_BYTES`]), before the stream is
    /// shared: a clone keeps the size it had.
    pub(crate) fn with_staging_bytes(mut self, bytes: usize) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.staging_bytes = bytes;
        }
        self
    }

    /// The device the stream belongs to.
    pub(crate) fn device(&self) -> &CudaDevice {
        &self.inner.device
    }

    /// The raw stream handle, for ordering it with other streams through events
    /// ([`interop::Event`](super::interop::Event)).
    pub(crate) fn raw(&self) -> driver::RawStream {
        self.inner.stream.cu_stream()
    }

    /// True once copies on this stream missed their deadline (a
    /// [`CopyCompletion`] reported [`TransferError::TimedOut`](crate::error::TransferError::TimedOut)):
    /// work queued on the stream now waits behind the stall, so its owner moves to a fresh one.
    pub(crate) fn is_stalled(&self) -> bool {
        self.inner.stalled.load(Ordering::SeqCst)
    }

    fn mark_stalled(&self) {
        self.inner.stalled.store(true, Ordering::SeqCst);
    }

    /// True when the driver offers `cuMemcpyBatchAsync`.
    pub fn batch_supported(&self) -> bool {
        self.inner.batch_supported
    }

    /// True when the copy kernel is loaded.
    pub fn kernel_loaded(&self) -> bool {
        self.inner.kernel.is_some()
    }

    /// The method `Auto` resolves to for `copies` between `src` and `dst`, or the requested one
    /// if it is available.
    ///
    /// `Auto`: copies averaging at most [`DEFAULT_KERNEL_MAX_AVG_LEN`] to or from host memory
    /// (four times that device to device) go to the copy kernel, larger ones to batched DMA;
    /// among the kernel's, a transfer between device and host whose host side is one
    /// contiguous run (an engine's offload into, or onboard from, a contiguous buffer) goes to
    /// [`CopyMethod::Staged`] from 256 MiB, or from 16 MiB when its copies average 64 KiB or
    /// more: it moves the bytes by DMA in whole staging slots, faster on the H200, and leaves the
    /// multiprocessors to the engine's kernels.
    ///
    /// # Errors
    /// [`UnsupportedError::Feature`] when the requested method is not available here.
    pub fn resolve(
        &self,
        method: CopyMethod,
        copies: &[DeviceCopy],
        src: Location,
        dst: Location,
    ) -> Result<CopyMethod> {
        self.resolve_shaped(method, &Shape::between(copies, src, dst), src, dst)
    }

    /// [`resolve`](Self::resolve) for a list of this shape.
    fn resolve_shaped(
        &self,
        method: CopyMethod,
        shape: &Shape,
        src: Location,
        dst: Location,
    ) -> Result<CopyMethod> {
        let involves_host = src == Location::Host || dst == Location::Host;
        let kernel_ok = self.inner.kernel.is_some()
            && (!involves_host || self.inner.host_pointers_are_device_pointers);
        match method {
            CopyMethod::AutoBesideCompute => Ok(
                match self.resolve_shaped(CopyMethod::Auto, shape, src, dst)? {
                    CopyMethod::Kernel if involves_host => CopyMethod::Staged,
                    auto => auto,
                },
            ),
            CopyMethod::Auto => {
                let avg = shape.average();
                // Device to device, the kernel keeps up with the copy engines to larger copies
                // (H100: ~800 GiB/s from 1 to 16 MiB, where batched DMA only passes it at 16).
                let limit = if involves_host {
                    self.inner.kernel_max_avg_len
                } else {
                    self.inner
                        .kernel_max_avg_len
                        .saturating_mul(D2D_KERNEL_FACTOR)
                };
                Ok(if kernel_ok && avg <= limit as u64 {
                    if staged::suits(shape, src, dst) {
                        CopyMethod::Staged
                    } else {
                        CopyMethod::Kernel
                    }
                } else if self.inner.batch_supported {
                    CopyMethod::Batched
                } else if kernel_ok {
                    CopyMethod::Kernel
                } else {
                    CopyMethod::PerCopy
                })
            }
            CopyMethod::Batched if !self.inner.batch_supported => {
                Err(Error::Unsupported(UnsupportedError::Feature {
                    what: "cuMemcpyBatchAsync: the driver lacks it (needs CUDA 12.8 or newer)"
                        .into(),
                }))
            }
            // The staging kernel only touches device memory: no host pointers needed.
            CopyMethod::Staged if self.inner.kernel.is_none() => {
                Err(Error::Unsupported(UnsupportedError::Feature {
                    what: "the staged method: the copy kernel did not load".into(),
                }))
            }
            // Staging is between device and host; anything else runs on the kernel, if it can.
            CopyMethod::Staged
                if !matches!(
                    (src, dst),
                    (Location::Device(_), Location::Host) | (Location::Host, Location::Device(_))
                ) =>
            {
                self.resolve_shaped(CopyMethod::Kernel, shape, src, dst)
            }
            CopyMethod::Kernel if !kernel_ok => {
                Err(Error::Unsupported(UnsupportedError::Feature {
                    what:
                        "the copy kernel: it did not load, or this device cannot use host pointers \
                       of pinned memory directly"
                            .into(),
                }))
            }
            m => Ok(m),
        }
    }

    /// The method a list of shape `shape` from `src` to `dst` runs with when `asked` is
    /// requested: [`resolve`](Self::resolve)'s, except that `Auto` does not stage where `joins`
    /// allows no join (host memory of unknown make), and `Auto` and `AutoBesideCompute` take the
    /// copy kernel where the staging ring cannot be allocated. Binds the stream's context.
    fn settle(
        &self,
        asked: CopyMethod,
        shape: &Shape,
        (src, dst): (Location, Location),
        joins: &HostJoins,
    ) -> Result<CopyMethod> {
        let mut method = self.resolve_shaped(asked, shape, src, dst)?;
        self.inner.device.bind()?;
        if method == CopyMethod::Staged && asked == CopyMethod::Auto && *joins == HostJoins::Nowhere
        {
            method = CopyMethod::Kernel;
        }
        if method == CopyMethod::Staged
            && matches!(asked, CopyMethod::Auto | CopyMethod::AutoBesideCompute)
            && let Err(e) = self.staging_ring_ready()
        {
            // `Auto` chose the staged method for speed; without the device memory for its ring
            // (a GPU the engine has filled), the copy kernel still does the job.
            tracing::warn!(error = %e, "no staging ring; copying with the kernel instead");
            method = CopyMethod::Kernel;
        }
        Ok(method)
    }

    /// The method, as [`copy_async_within`](Self::copy_async_within) would settle it, of a
    /// transfer whose first copies are `head`, `part` of `whole` of it, whose host side is one
    /// run of addresses or not as `host_one_run` says (the rest is planned while the head's
    /// copies run, and every part is then enqueued with this method, so that the transfer runs as
    /// one list of its size would).
    ///
    /// # Errors
    /// As for [`resolve`](Self::resolve); [`CudaError::Driver`](crate::error::CudaError::Driver)
    /// when the context cannot be bound.
    pub(crate) fn settle_whole(
        &self,
        asked: CopyMethod,
        head: &[DeviceCopy],
        (src, dst): (Location, Location),
        joins: &HostJoins,
        ((part, whole), host_one_run): ((usize, usize), bool),
    ) -> Result<CopyMethod> {
        let shape = Shape::between(head, src, dst);
        let total = u128::from(shape.total) * whole as u128 / part.max(1) as u128;
        let total = u64::try_from(total).unwrap_or(u64::MAX);
        let shape = shape.scaled_to(total, host_one_run);
        self.settle(asked, &shape, (src, dst), joins)
    }

    /// Enqueues `copies` and returns their completion.
    ///
    /// # Safety
    /// Every source range must be readable and every destination range writable by the device
    /// (device memory of this stream's device, or pinned, device-mapped host memory) until the
    /// returned completion has finished (it waits on drop) — for good when its
    /// [`wait`](crate::Completion::wait) reports
    /// [`TransferError::TimedOut`](crate::error::TransferError::TimedOut) (see
    /// [`CopyCompletion`'s deadline](CopyCompletion#deadline)): the copies never finished then;
    /// destination ranges must not overlap each other or any source range, and nothing else may
    /// write them meanwhile.
    ///
    /// # Errors
    /// [`BoundsError::ZeroSize`] for an empty list or a zero-length copy; [`UnsupportedError::Feature`] for a
    /// method not available here; [`CudaError::Driver`](crate::error::CudaError::Driver) when the driver refuses. On error, nothing
    /// reports success: copies already enqueued are waited for before returning, up to their
    /// deadline; if they are still running then, the error is
    /// [`TransferError::TimedOut`](crate::error::TransferError::TimedOut) (not the enqueue error)
    /// and the ranges stay in use for good, as above.
    ///
    /// [`CopyMethod::Staged`] (which `Auto` picks for large offloads and onboards, see
    /// [`resolve`](Self::resolve)) moves adjoining host ranges as one DMA, which fails with a
    /// driver error where two adjoining ranges lie in different page-lock registrations or
    /// allocations: pass host memory whose adjoining ranges share one, or go through the
    /// transfer engine, which knows the registrations of kvmem's storages. The staged method
    /// allocates its device ring ([`DEFAULT_STAGING_BYTES`]) on first use.
    pub unsafe fn copy_async(
        &self,
        copies: &[DeviceCopy],
        method: CopyMethod,
        src: Location,
        dst: Location,
    ) -> Result<CopyCompletion> {
        // SAFETY: the caller upholds this function's contract, which is the one below.
        unsafe { self.copy_async_within(copies, method, src, dst, &HostJoins::Except(Vec::new())) }
    }

    /// [`copy_async`](Self::copy_async) with what the caller knows of the host memory: the
    /// staged method joins adjoining host ranges only where `joins` allows, and `Auto` stages
    /// only when it allows some. Every copy must lie inside one registration.
    ///
    /// # Safety
    /// As for [`copy_async`](Self::copy_async).
    pub(crate) unsafe fn copy_async_within(
        &self,
        copies: &[DeviceCopy],
        method: CopyMethod,
        src: Location,
        dst: Location,
        joins: &HostJoins,
    ) -> Result<CopyCompletion> {
        // Submission timings, for `RUST_LOG=kvmem=debug` (no clock read otherwise).
        let started = tracing::enabled!(tracing::Level::DEBUG).then(std::time::Instant::now);
        // The one pass over the list before its copies start.
        let shape = Shape::between(copies, src, dst);
        if shape.count == 0 {
            return Err(Error::Bounds(BoundsError::ZeroSize { what: "copy list" }));
        }
        if shape.shortest == 0 {
            return Err(Error::Bounds(BoundsError::ZeroSize { what: "copy" }));
        }
        let method = self.settle(method, &shape, (src, dst), joins)?;
        let resolved = started.map(|t| t.elapsed());
        let mut descs = None;
        let enqueued = match method {
            CopyMethod::Kernel => self.enqueue_kernel(copies, &shape, &mut descs),
            CopyMethod::Batched => self.enqueue_batched(copies, src, dst),
            CopyMethod::Staged => {
                self.enqueue_staged((copies, &shape), src, dst, joins, &mut descs)
            }
            CopyMethod::PerCopy | CopyMethod::Auto | CopyMethod::AutoBesideCompute => {
                self.enqueue_per_copy(copies)
            }
        };
        let bytes = shape.total;
        if let (Some(t), Some(r)) = (started, resolved) {
            tracing::debug!(
                ?method,
                copies = copies.len(),
                resolve_us = r.as_secs_f64() * 1e6,
                enqueue_us = t.elapsed().as_secs_f64() * 1e6,
                "copies enqueued"
            );
        }
        let completion = CopyCompletion::record(self.clone(), method, descs, bytes, (src, dst));
        match (enqueued, completion) {
            (Ok(()), Ok(c)) => Ok(c),
            (Err(e), Ok(c)) => match c.wait() {
                // Copies enqueued before the error are still running at their deadline: report
                // that, not the enqueue error, so the caller knows the ranges stay in use.
                Err(t @ Error::Transfer(TransferError::TimedOut { .. })) => Err(t),
                // Whatever was enqueued has finished: the memory may be freed.
                _ => Err(e),
            },
            (_, Err(e)) => {
                // Let whatever was enqueued finish before the caller may free memory.
                driver::log_failure(
                    "synchronize the copy stream",
                    self.inner.stream.synchronize(),
                );
                Err(e)
            }
        }
    }

    fn enqueue_per_copy(&self, copies: &[DeviceCopy]) -> Result<()> {
        for c in copies {
            let len = usize::try_from(c.len).map_err(|_| {
                Error::Bounds(BoundsError::Overflow {
                    what: "copy length",
                })
            })?;
            // SAFETY: the caller of `copy_async` guarantees both ranges are valid for the device
            // until completion; the stream is ours.
            unsafe { driver::memcpy_async(c.dst, c.src, len, &self.inner.stream) }
                .map_err(|e| driver::error("enqueue a copy (cuMemcpyAsync)", e))?;
        }
        Ok(())
    }

    fn enqueue_batched(&self, copies: &[DeviceCopy], src: Location, dst: Location) -> Result<()> {
        let device = |l: Location| match l {
            Location::Host => None,
            Location::Device(d) => Some(d),
        };
        // The driver takes the whole list in one call; split very long lists to bound the
        // temporary arrays.
        for chunk in copies.chunks(1 << 16) {
            let mut dsts: Vec<u64> = chunk.iter().map(|c| c.dst).collect();
            let mut srcs: Vec<u64> = chunk.iter().map(|c| c.src).collect();
            let mut sizes = chunk
                .iter()
                .map(|c| {
                    usize::try_from(c.len).map_err(|_| {
                        Error::Bounds(BoundsError::Overflow {
                            what: "copy length",
                        })
                    })
                })
                .collect::<Result<Vec<usize>>>()?;
            // SAFETY: the three arrays hold `chunk.len()` entries each; the ranges they name are
            // valid for the device, and destinations disjoint, per `copy_async`'s contract.
            unsafe {
                driver::memcpy_batch_async(
                    &mut dsts,
                    &mut srcs,
                    &mut sizes,
                    device(src),
                    device(dst),
                    &self.inner.stream,
                )
            }
            .map_err(|e| driver::error("enqueue batched copies (cuMemcpyBatchAsync)", e))?;
        }
        Ok(())
    }

    /// Waits for everything enqueued on the stream.
    ///
    /// # Errors
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) if any of that work failed.
    pub fn synchronize(&self) -> Result<()> {
        self.inner
            .stream
            .synchronize()
            .map_err(|e| driver::error("synchronize the copy stream", e))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.device.bind().is_err() {
            tracing::warn!("cannot bind the context to release a copy stream; leaking its buffers");
            // The staging ring too: its kernels may still run.
            std::mem::forget(
                self.ring
                    .get_mut()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(),
            );
            return;
        }
        // Every completion holds an `Arc<Inner>`, so none is pending; the synchronize is for
        // work whose completion could not be recorded.
        driver::log_failure("synchronize the copy stream", self.stream.synchronize());
        for d in self
            .free_descs
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            // SAFETY: both buffers were allocated by `take_descs`, are freed once, here, and no
            // work uses them (the stream is idle).
            driver::log_failure("free pinned copy descriptors", unsafe {
                result::free_host(d.host.cast())
            });
            // SAFETY: as above.
            driver::log_failure("free device copy descriptors", unsafe {
                result::free_sync(d.dev)
            });
        }
        // The stream, kernel and module are released by their own drops, after this; the
        // `_deferred` field logs what they record.
    }
}
