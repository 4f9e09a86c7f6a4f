//! `kvmem.Engine` (moves blocks between layouts) and `kvmem.Handle` (one transfer).

use crate::errors::{IntoPy, invalid, to_py};
use crate::ids::block_ids;
use crate::layout::Layout;
use crate::nixl::{RegisteredLayout, RemoteLayout};
use kvmem::Completion;
use kvmem::transfer::{DiskBackend, EngineConfig, TransferEngine, TransferHandle, TransferStats};
use pyo3::exceptions::PyTimeoutError;
use pyo3::prelude::*;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How long one slice of a blocking wait lasts before Python's signal handlers run.
const WAIT_SLICE: Duration = Duration::from_millis(20);

/// Moves KV blocks between layouts of any two tiers (host, pinned, device, disk) and to and from
/// NIXL peers. Thread-safe; one engine per process is enough.
#[pyclass(module = "kvmem", frozen)]
pub struct Engine {
    pub(crate) inner: Arc<TransferEngine>,
}

#[pymethods]
impl Engine {
    /// An engine. `host_threads` copy host memory (default: all cores); `disk_backend` is
    /// `"io_uring"` (default) or `"nixl_posix"`; `queue_depth` disk requests stay in flight;
    /// `bounce_bytes` is the size of each pinned bounce buffer for pageable/disk ↔ GPU copies;
    /// `staging_bytes` the device memory per GPU of the staged method's ring (default 256 MiB).
    /// `beside_compute=True` says the engine runs its own kernels while kvmem copies: small GPU
    /// ↔ pinned copies then take the staged method, which leaves the SMs to those kernels, instead
    /// of the copy kernel (`CopyMethod::AutoBesideCompute`; slower alone, see PERFORMANCE.md).
    #[new]
    #[pyo3(signature = (*, host_threads=None, disk_backend=None, queue_depth=None, bounce_bytes=None, staging_bytes=None, beside_compute=false))]
    fn new(
        host_threads: Option<usize>,
        disk_backend: Option<&str>,
        queue_depth: Option<u32>,
        bounce_bytes: Option<usize>,
        staging_bytes: Option<usize>,
        beside_compute: bool,
    ) -> PyResult<Self> {
        let mut config = EngineConfig::default();
        if beside_compute {
            config.gpu_method = kvmem::transfer::CopyMethod::AutoBesideCompute;
        }
        if let Some(t) = host_threads {
            config.host_threads = t.max(1);
        }
        if let Some(b) = disk_backend {
            config.disk_backend = match b {
                "io_uring" => DiskBackend::IoUring,
                "nixl_posix" => DiskBackend::NixlPosix,
                other => {
                    return Err(invalid(format!(
                        "disk_backend {other:?}: use 'io_uring' or 'nixl_posix'"
                    )));
                }
            };
        }
        if let Some(q) = queue_depth {
            config.queue_depth = q;
        }
        if let Some(b) = bounce_bytes {
            config.bounce_bytes = b;
        }
        if let Some(s) = staging_bytes {
            config.staging_bytes = s;
        }
        Ok(Self {
            inner: Arc::new(TransferEngine::new(config).py()?),
        })
    }

    /// Copies blocks `src_ids[i]` of `src` to blocks `dst_ids[i]` of `dst` and returns at once
    /// with a `Handle`. Ids are lists of ints or 1-D integer arrays in host memory. Nothing has
    /// moved when this raises (bad ids, mismatched layouts, a path without an executor).
    ///
    /// `stream` (a `torch.cuda.Stream`, a CuPy stream or a raw `CUstream` int) orders the copy
    /// after the work already queued on that stream, without a CPU synchronize (GPU transfers).
    #[pyo3(signature = (src, src_ids, dst, dst_ids, stream=None))]
    fn copy(
        &self,
        py: Python<'_>,
        src: &Layout,
        src_ids: &Bound<'_, PyAny>,
        dst: &Layout,
        dst_ids: &Bound<'_, PyAny>,
        stream: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Handle> {
        self.start(py, src, src_ids, dst, dst_ids, stream)
            .map(|(h, _)| h)
    }

    /// Benchmark aid, not part of the API a user needs: `copy` (no `stream`), also returning
    /// `(wrapper_seconds, submit_seconds)`: from entering Rust to the start of the submission
    /// (ids read, arguments checked), and the submission itself (planning, handing off), timed
    /// inside the call. Tells the wrapper's share of the Python path from the submission's.
    fn _copy_timed(
        &self,
        py: Python<'_>,
        src: &Layout,
        src_ids: &Bound<'_, PyAny>,
        dst: &Layout,
        dst_ids: &Bound<'_, PyAny>,
    ) -> PyResult<(Handle, f64, f64)> {
        let (h, [entered, submitting, submitted]) =
            self.start(py, src, src_ids, dst, dst_ids, None)?;
        Ok((
            h,
            (submitting - entered).as_secs_f64(),
            (submitted - submitting).as_secs_f64(),
        ))
    }

    /// Benchmark aid, not part of the API a user needs: the same copy as `copy` (no `stream`),
    /// `iters` times through the Rust engine alone (ids converted once, outside the timing),
    /// each waited for before the next. Returns `(submit_seconds, total_seconds)` per run, so a
    /// benchmark can subtract the Rust path from the Python path in one process.
    fn _rust_copy_timings(
        &self,
        py: Python<'_>,
        src: &Layout,
        src_ids: &Bound<'_, PyAny>,
        dst: &Layout,
        dst_ids: &Bound<'_, PyAny>,
        iters: usize,
    ) -> PyResult<Vec<(f64, f64)>> {
        let r = self.local_copy(src, src_ids, dst, dst_ids)?;
        py.detach(move || {
            (0..iters)
                .map(|_| {
                    let t0 = Instant::now();
                    // The end event is kept until the copy has finished, as `Handle` keeps it:
                    // dropping it at once would time its destruction as part of the submission.
                    let (h, end) = r.submit(None)?;
                    let submitted = t0.elapsed().as_secs_f64();
                    h.wait()?;
                    let total = t0.elapsed().as_secs_f64();
                    drop(end);
                    Ok((submitted, total))
                })
                .collect::<kvmem::Result<Vec<_>>>()
        })
        .py()
    }

    /// Writes blocks `src_ids[i]` of the registered local `src` to blocks `dst_ids[i]` of the
    /// peer's `dst` (one NIXL WRITE); `notification` reaches the peer once the data has landed.
    #[pyo3(signature = (src, src_ids, dst, dst_ids, notification=None))]
    fn write_remote(
        &self,
        py: Python<'_>,
        src: &RegisteredLayout,
        src_ids: &Bound<'_, PyAny>,
        dst: &RemoteLayout,
        dst_ids: &Bound<'_, PyAny>,
        notification: Option<Vec<u8>>,
    ) -> PyResult<Handle> {
        let (src, dst) = (Arc::clone(&src.inner), Arc::clone(&dst.inner));
        self.post_remote(py, src_ids, dst_ids, move |engine, s, d| {
            engine.write_remote(&src, s, &dst, d, notification.as_deref())
        })
    }

    /// Reads blocks `src_ids[i]` of the peer's `src` into blocks `dst_ids[i]` of the registered
    /// local `dst` (one NIXL READ).
    fn read_remote(
        &self,
        py: Python<'_>,
        src: &RemoteLayout,
        src_ids: &Bound<'_, PyAny>,
        dst: &RegisteredLayout,
        dst_ids: &Bound<'_, PyAny>,
    ) -> PyResult<Handle> {
        let (src, dst) = (Arc::clone(&src.inner), Arc::clone(&dst.inner));
        self.post_remote(py, src_ids, dst_ids, move |engine, s, d| {
            engine.read_remote(&src, s, &dst, d)
        })
    }
}

impl Engine {
    /// `copy`: returns the handle and when the call entered Rust, started submitting and had
    /// submitted (three clock reads, tens of ns: `_copy_timed` times the very path `copy` runs).
    fn start(
        &self,
        py: Python<'_>,
        src: &Layout,
        src_ids: &Bound<'_, PyAny>,
        dst: &Layout,
        dst_ids: &Bound<'_, PyAny>,
        stream: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(Handle, [Instant; 3])> {
        let entered = Instant::now();
        let r = self.local_copy(src, src_ids, dst, dst_ids)?;
        let stream = stream.map(crate::stream::raw_stream).transpose()?;
        let (started, submitting, submitted) = py.detach(move || {
            let submitting = Instant::now();
            let started = r.submit(stream);
            (started, submitting, Instant::now())
        });
        let h = started.map(|(h, end)| Handle::new(h, end)).py()?;
        Ok((h, [entered, submitting, submitted]))
    }

    /// Checks the destination is writable and reads both id lists. The layouts are borrowed,
    /// not cloned: the caller's arguments keep them alive for the call, and a clone is an atomic
    /// increment (and later decrement) per region, each on a cold cache line right after the
    /// previous copy.
    fn local_copy<'a>(
        &'a self,
        src: &'a Layout,
        src_ids: &Bound<'_, PyAny>,
        dst: &'a Layout,
        dst_ids: &Bound<'_, PyAny>,
    ) -> PyResult<LocalCopy<'a>> {
        if dst.readonly {
            return Err(invalid("dst: the destination's memory is read-only"));
        }
        Ok(LocalCopy {
            engine: &self.inner,
            src: &src.inner,
            src_ids: block_ids("src_ids", src_ids)?,
            dst: &dst.inner,
            dst_ids: block_ids("dst_ids", dst_ids)?,
        })
    }

    /// Reads both id lists, then posts a NIXL write or read (`post`) without the GIL.
    fn post_remote(
        &self,
        py: Python<'_>,
        src_ids: &Bound<'_, PyAny>,
        dst_ids: &Bound<'_, PyAny>,
        post: impl FnOnce(&TransferEngine, &[usize], &[usize]) -> kvmem::Result<TransferHandle> + Send,
    ) -> PyResult<Handle> {
        let s = block_ids("src_ids", src_ids)?;
        let d = block_ids("dst_ids", dst_ids)?;
        let engine = Arc::clone(&self.inner);
        py.detach(move || post(&engine, &s, &d))
            .map(|h| Handle::new(h, None))
            .py()
    }
}

/// A local copy checked and converted from Python's arguments, ready to submit without the GIL.
/// It borrows the engine and both layouts from the call's arguments.
struct LocalCopy<'a> {
    engine: &'a TransferEngine,
    src: &'a kvmem::layout::BlockLayout,
    src_ids: Vec<usize>,
    dst: &'a kvmem::layout::BlockLayout,
    dst_ids: Vec<usize>,
}

impl LocalCopy<'_> {
    /// Submits the copy, ordered after `stream` (a raw `CUstream`) when given.
    fn submit(
        &self,
        stream: Option<u64>,
    ) -> kvmem::Result<(TransferHandle, Option<kvmem::cuda::interop::Event>)> {
        let Self {
            engine,
            src,
            src_ids,
            dst,
            dst_ids,
        } = self;
        crate::stream::copy(engine, src, src_ids, dst, dst_ids, stream)
    }
}

/// Statistics of a finished transfer.
#[pyclass(module = "kvmem", frozen, get_all)]
#[derive(Debug, Clone)]
pub struct Stats {
    /// Bytes moved.
    pub bytes: usize,
    /// Copies (after merging adjacent chunks) or NIXL descriptors.
    pub ops: usize,
    /// Seconds from submission to completion.
    pub elapsed: f64,
    /// The path crossed, e.g. `"host->disk"`.
    pub path: String,
}

#[pymethods]
impl Stats {
    /// Bytes per second over `elapsed`.
    #[getter]
    fn bandwidth(&self) -> f64 {
        if self.elapsed > 0.0 {
            self.bytes as f64 / self.elapsed
        } else {
            f64::INFINITY
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Stats(bytes={}, ops={}, elapsed={:.6}, path={:?})",
            self.bytes, self.ops, self.elapsed, self.path
        )
    }
}

impl From<TransferStats> for Stats {
    fn from(s: TransferStats) -> Self {
        Self {
            bytes: s.bytes,
            ops: s.ops,
            elapsed: s.elapsed.as_secs_f64(),
            path: s.path.name().to_string(),
        }
    }
}

/// The shared state of one transfer: the library's handle (read-locked by waiters, taken
/// under the write lock only once it has finished) and the outcome once taken.
pub(crate) struct HandleState {
    transfer: RwLock<Option<TransferHandle>>,
    outcome: Mutex<Option<Result<Stats, PyErr>>>,
}

impl HandleState {
    fn finished(&self) -> bool {
        match &*self.transfer.read().unwrap_or_else(|e| e.into_inner()) {
            Some(h) => h.is_done(),
            None => true,
        }
    }

    /// Waits up to `slice`; true once finished.
    fn wait_slice(&self, slice: Duration) -> bool {
        match &*self.transfer.read().unwrap_or_else(|e| e.into_inner()) {
            Some(h) => h.wait_timeout(slice),
            None => true,
        }
    }

    /// The outcome of a finished transfer (taking it from the library on first call).
    fn outcome(&self, py: Python<'_>) -> PyResult<Stats> {
        let mut out = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if out.is_none() {
            let taken = self
                .transfer
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            *out = Some(match taken {
                Some(h) => py.detach(|| h.wait()).map(Stats::from).map_err(to_py),
                None => Err(crate::errors::TransferError::new_err(
                    "the transfer's outcome is unknown",
                )),
            });
        }
        match out.as_ref() {
            Some(Ok(s)) => Ok(s.clone()),
            Some(Err(e)) => Err(e.clone_ref(py)),
            None => unreachable_outcome(),
        }
    }
}

fn unreachable_outcome() -> PyResult<Stats> {
    Err(crate::errors::TransferError::new_err(
        "the transfer's outcome is unknown",
    ))
}

/// One submitted transfer. `wait()` for it (also with a timeout), poll `done()`, `cancel()` it,
/// or `await` it in asyncio. The memory of both ends stays alive until its copies have stopped,
/// whatever happens to this handle.
#[pyclass(module = "kvmem", frozen)]
pub struct Handle {
    state: Arc<HandleState>,
    /// For GPU transfers: the event recorded after the copies (for `wait_on`).
    end: Option<Arc<kvmem::cuda::interop::Event>>,
    bytes: usize,
    path: &'static str,
}

impl Handle {
    pub(crate) fn new(h: TransferHandle, end: Option<kvmem::cuda::interop::Event>) -> Self {
        let bytes = h.bytes();
        let path = h.path().name();
        Self {
            state: Arc::new(HandleState {
                transfer: RwLock::new(Some(h)),
                outcome: Mutex::new(None),
            }),
            end: end.map(Arc::new),
            bytes,
            path,
        }
    }
}

#[pymethods]
impl Handle {
    /// True once the transfer has finished, successfully or not.
    fn done(&self) -> bool {
        self.state.finished()
    }

    /// Waits for the transfer and returns its `Stats`, with the GIL released. With `timeout`
    /// (seconds), raises `TimeoutError` if it has not finished by then (it keeps running).
    /// Raises the transfer's error (`kvmem.TransferError`, `kvmem.CancelledError`, …).
    /// Ctrl-C raises `KeyboardInterrupt` and cancels the transfer; its memory stays alive
    /// until its copies have stopped.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Stats> {
        let deadline = match timeout {
            Some(t) if !(t >= 0.0 && t.is_finite()) => {
                return Err(invalid(format!(
                    "timeout {t} must be a finite number of seconds >= 0"
                )));
            }
            Some(t) => Some(Instant::now() + Duration::from_secs_f64(t)),
            None => None,
        };
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(WAIT_SLICE),
                None => WAIT_SLICE,
            };
            let state = Arc::clone(&self.state);
            if py.detach(move || state.wait_slice(slice)) {
                return self.state.outcome(py);
            }
            if let Err(e) = py.check_signals() {
                self.cancel();
                return Err(e);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(PyTimeoutError::new_err(format!(
                    "the transfer ({} bytes, {}) did not finish within {} s; it is still running",
                    self.bytes,
                    self.path,
                    timeout.unwrap_or_default()
                )));
            }
        }
    }

    /// Asks the transfer to stop early; copies already running finish. `wait()` then raises
    /// `kvmem.CancelledError` unless it had already finished.
    fn cancel(&self) {
        if let Some(h) = &*self
            .state
            .transfer
            .read()
            .unwrap_or_else(|e| e.into_inner())
        {
            h.cancel();
        }
    }

    /// Makes `stream` (an engine's CUDA stream) wait for this transfer's copies on the GPU,
    /// without blocking the CPU: work queued on `stream` afterwards sees the copied bytes.
    /// For transfers with no GPU end, waits on the CPU instead.
    fn wait_on(&self, py: Python<'_>, stream: &Bound<'_, PyAny>) -> PyResult<()> {
        let raw = crate::stream::raw_stream(stream)?;
        match &self.end {
            Some(end) => crate::stream::wait_on(end, raw).py(),
            None => self.wait(py, None).map(|_| ()),
        }
    }

    /// Bytes the transfer moves.
    #[getter]
    fn bytes(&self) -> usize {
        self.bytes
    }

    /// The path the transfer crosses, e.g. `"host->disk"`.
    #[getter]
    fn path(&self) -> &str {
        self.path
    }

    /// Calls `callback()` (from another thread, with the GIL) once the transfer has finished.
    /// Used by `__await__`.
    fn _on_done(&self, callback: Py<PyAny>) -> PyResult<()> {
        let state = Arc::clone(&self.state);
        std::thread::Builder::new()
            .name("kvmem-await".into())
            .spawn(move || {
                while !state.wait_slice(Duration::from_secs(1)) {}
                Python::attach(|py| {
                    if let Err(e) = callback.call0(py) {
                        e.write_unraisable(py, None);
                    }
                });
            })
            .map_err(|e| {
                crate::errors::Error::new_err(format!("cannot start a waiter thread: {e}"))
            })?;
        Ok(())
    }

    /// `await handle` returns the `Stats` without blocking the event loop.
    fn __await__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        py.import("kvmem._aio")?
            .getattr("wait")?
            .call1((slf,))?
            .call_method0("__await__")
    }

    fn __repr__(&self) -> String {
        format!(
            "Handle(bytes={}, path={:?}, done={})",
            self.bytes,
            self.path,
            self.state.finished()
        )
    }
}
