// This module owns a mapping that background threads page-lock with the driver: unsafe code is
// allowed here (denied at the crate root).
#![allow(unsafe_code)]
//! Pinned host pools that are usable at once and page-locked chunk by chunk in the background.

use super::host_mapping::{HostMapping, MappingOptions, PageTier, populate};
use super::mapped_pinned::MappedPinnedOptions;
use crate::cuda::CudaDevice;
use crate::cuda::page_lock::{register_range, unregister_range};
use crate::error::{BoundsError, Error, MemoryError, Result};
use crate::host::HostMemory;
use crate::kind::StorageKind;
use std::fmt;
use std::iter::once;
use std::mem::ManuallyDrop;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default bytes per `cuMemHostRegister` call of a [`BackgroundPinnedStorage`]: 256 MiB, a few
/// milliseconds of driver time each, so the first chunk is ready soon after the call returns.
pub const DEFAULT_PIN_CHUNK: usize = 256 << 20;

/// How [`BackgroundPinnedStorage`] gets and page-locks its memory; set single fields with
/// struct-update syntax (`BackgroundPinnedOptions { threads: 8, ..Default::default() }`).
#[derive(Debug, Clone)]
pub struct BackgroundPinnedOptions {
    /// Where the memory comes from, as for [`MappedPinnedStorage`](super::MappedPinnedStorage):
    /// its NUMA node, hugetlb and transparent-huge-page settings apply (default: the defaults);
    /// its touch threads and registration chunk do not (see [`threads`](Self::threads) and
    /// [`chunk`](Self::chunk)).
    pub memory: MappedPinnedOptions,
    /// Bytes per `cuMemHostRegister` call (default [`DEFAULT_PIN_CHUNK`]); rounded up to whole
    /// pages of the mapping (2 MiB at least) and capped at
    /// [`MAX_HOST_REGISTRATION`](crate::cuda::MAX_HOST_REGISTRATION). One CUDA copy must stay
    /// inside one chunk ([`registered_ranges`](BackgroundPinnedStorage::registered_ranges)).
    pub chunk: usize,
    /// Threads that page-lock chunks in parallel (default 4, at least 1). Chunks are taken in
    /// address order, so the start of the pool is pinned first.
    pub threads: usize,
    /// How long a GPU transfer waits for the chunks it uses before it fails with
    /// [`MemoryError::PinningTimeout`] (default 30 s).
    pub wait_timeout: Duration,
}

impl Default for BackgroundPinnedOptions {
    fn default() -> Self {
        Self {
            memory: MappedPinnedOptions::default(),
            chunk: DEFAULT_PIN_CHUNK,
            threads: 4,
            wait_timeout: Duration::from_secs(30),
        }
    }
}

/// How far the background page-locking of a [`BackgroundPinnedStorage`] has come.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PinProgress {
    /// Bytes page-locked so far.
    pub pinned_bytes: usize,
    /// Bytes in the pool.
    pub total_bytes: usize,
    /// Chunks page-locked so far.
    pub pinned_chunks: usize,
    /// Chunks in the pool.
    pub chunks: usize,
    /// From the call that created the pool until its first chunk was pinned.
    pub first_chunk: Option<Duration>,
    /// From the call that created the pool until every chunk was pinned.
    pub fully_pinned: Option<Duration>,
    /// Why page-locking stopped early, if it did.
    pub failure: Option<String>,
}

/// What the pinning threads and the storage share.
struct Shared {
    device: CudaDevice,
    base: usize,
    /// The next chunk index a pinning thread takes.
    next: AtomicUsize,
    /// Set by drop: threads stop after their current chunk.
    stop: AtomicBool,
    chunks: Chunks,
}

impl Shared {
    /// One pinning thread: takes chunks in order until none is left, drop stops it, or a chunk
    /// fails (which stops the others too).
    fn pin(&self) {
        let chunks = &self.chunks;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            if i >= chunks.count() {
                return;
            }
            // The first chunk is pinned alone: registrations running side by side slow each
            // other down, and the first block should be usable as early as one thread can make
            // it (H200, 64 GiB in 256 MiB chunks: 54 ms with one thread, 239 ms with eight).
            if i > 0 && !chunks.wait_first(&self.stop) {
                return;
            }
            let range = chunks.range(i);
            let start = self.base + range.start;
            // Fault the pages in first without writing them (the pool's users may already be
            // using them): the driver's own faulting is single-threaded and slower.
            // SAFETY: the chunk lies inside the mapping, kept mapped until this thread is joined.
            unsafe { populate(start, range.len()) };
            // SAFETY: the chunk lies inside the mapping, which the storage keeps mapped until
            // every pinning thread has been joined and every pinned chunk unregistered (Drop);
            // chunks are disjoint and each is taken by exactly one thread (the atomic counter).
            match unsafe { register_range(&self.device, start, range.len(), chunks.len) } {
                Ok(()) => chunks.mark_pinned(i),
                Err(e) => {
                    tracing::error!(error = %e, chunk = i, "background pinning failed");
                    self.stop.store(true, Ordering::Release);
                    chunks.fail(e.to_string());
                }
            }
        }
    }
}

/// Which chunks of a pool are page-locked, and waiting for them. Holds no CUDA resource.
struct Chunks {
    len: usize,
    chunk: usize,
    started: Instant,
    /// Bytes pinned so far (read without the lock).
    pinned: AtomicUsize,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    /// One per chunk: page-locked (and so to be unregistered).
    ready: Vec<bool>,
    pinned_chunks: usize,
    first_chunk: Option<Duration>,
    fully_pinned: Option<Duration>,
    failure: Option<String>,
}

impl Chunks {
    /// `len` bytes in chunks of `chunk` bytes (`chunk > 0`), none pinned yet.
    fn new(len: usize, chunk: usize, started: Instant) -> Self {
        Self {
            len,
            chunk,
            started,
            pinned: AtomicUsize::new(0),
            state: Mutex::new(State {
                ready: vec![false; len.div_ceil(chunk)],
                pinned_chunks: 0,
                first_chunk: None,
                fully_pinned: None,
                failure: None,
            }),
            changed: Condvar::new(),
        }
    }

    fn count(&self) -> usize {
        self.len.div_ceil(self.chunk)
    }

    /// Offsets of chunk `i`.
    fn range(&self, i: usize) -> Range<usize> {
        let start = i * self.chunk;
        start..(start + self.chunk).min(self.len)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pinned_bytes(&self) -> usize {
        self.pinned.load(Ordering::Acquire)
    }

    /// Records chunk `i` as page-locked and wakes the waiters.
    fn mark_pinned(&self, i: usize) {
        let mut state = self.lock();
        if i >= state.ready.len() || state.ready[i] {
            return;
        }
        state.ready[i] = true;
        state.pinned_chunks += 1;
        self.pinned.fetch_add(self.range(i).len(), Ordering::AcqRel);
        let elapsed = self.started.elapsed();
        state.first_chunk.get_or_insert(elapsed);
        if state.pinned_chunks == state.ready.len() {
            state.fully_pinned = Some(elapsed);
            tracing::debug!(bytes = self.len, ?elapsed, "background pinning finished");
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Waits until chunk 0 is pinned (true), or until pinning failed or `stop` is set (false).
    /// Checks `stop` every 10 ms: drop sets it without notifying.
    fn wait_first(&self, stop: &AtomicBool) -> bool {
        let mut state = self.lock();
        loop {
            if state.ready.first().copied().unwrap_or(true) {
                return true;
            }
            if state.failure.is_some() || stop.load(Ordering::Acquire) {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(10))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Records that pinning stopped early (the first reason wins) and wakes the waiters.
    fn fail(&self, reason: String) {
        self.lock().failure.get_or_insert(reason);
        self.changed.notify_all();
    }

    /// The chunks that hold any byte of `ranges` (offsets inside the pool).
    fn needed(&self, ranges: impl IntoIterator<Item = Range<usize>>) -> Vec<usize> {
        let mut want = vec![false; self.count()];
        for r in ranges {
            let end = r.end.min(self.len);
            if r.start >= end {
                continue;
            }
            for w in &mut want[r.start / self.chunk..=(end - 1) / self.chunk] {
                *w = true;
            }
        }
        want.iter()
            .enumerate()
            .filter_map(|(i, w)| w.then_some(i))
            .collect()
    }

    fn all_ready(&self, chunks: &[usize]) -> bool {
        let state = self.lock();
        chunks
            .iter()
            .all(|&c| state.ready.get(c).copied().unwrap_or(false))
    }

    /// Waits until every chunk in `chunks` is pinned, `timeout` passes, or pinning fails;
    /// `span` (offsets) names what was asked for in the errors.
    fn wait(&self, chunks: &[usize], span: Range<usize>, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let mut state = self.lock();
        loop {
            if chunks
                .iter()
                .all(|&c| state.ready.get(c).copied().unwrap_or(false))
            {
                return Ok(());
            }
            if let Some(reason) = &state.failure {
                return Err(Error::Memory(MemoryError::PinningFailed {
                    reason: reason.clone(),
                    offset: span.start,
                    end: span.end,
                }));
            }
            let waited = started.elapsed();
            let Some(left) = timeout.checked_sub(waited).filter(|d| !d.is_zero()) else {
                return Err(Error::Memory(MemoryError::PinningTimeout {
                    offset: span.start,
                    end: span.end,
                    waited,
                    pinned: self.pinned_bytes(),
                    total: self.len,
                }));
            };
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn progress(&self) -> PinProgress {
        let state = self.lock();
        PinProgress {
            pinned_bytes: self.pinned_bytes(),
            total_bytes: self.len,
            pinned_chunks: state.pinned_chunks,
            chunks: state.ready.len(),
            first_chunk: state.first_chunk,
            fully_pinned: state.fully_pinned,
            failure: state.failure.clone(),
        }
    }
}

/// A pinned host pool that is usable as soon as it is mapped: the memory (huge pages where the
/// system has them, zeroed) is page-locked with `cuMemHostRegister` chunk by chunk by background
/// threads, start of the pool first, so a large pool does not hold up start-up.
///
/// The CPU may read and write every byte at once. The GPU may use a byte as pinned memory only
/// once its chunk is page-locked: [`is_pinned`](Self::is_pinned) and
/// [`wait_range_pinned`](Self::wait_range_pinned) say and wait (bounded, with
/// [`MemoryError::PinningTimeout`] on timeout). kvmem's transfer engine does this by itself: a GPU
/// transfer touching chunks not yet pinned waits for them on the engine's worker thread, up to
/// [`BackgroundPinnedOptions::wait_timeout`], before any copy is enqueued, and fails with that
/// error otherwise. Code that hands the memory to CUDA itself (or registers it with NIXL) must
/// call [`wait_pinned`](Self::wait_pinned) first.
///
/// On drop the threads are stopped and joined (a chunk being registered finishes first), the
/// pinned chunks unregistered, then the memory unmapped; if the driver refuses to unregister a
/// chunk, the mapping is leaked rather than unmapped under the driver's feet.
pub struct BackgroundPinnedStorage {
    // Field order matters only for the explicit Drop below.
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    mapping: ManuallyDrop<HostMapping>,
    tier: PageTier,
    wait_timeout: Duration,
}

impl BackgroundPinnedStorage {
    /// Maps `size` bytes with the default options and starts pinning them.
    ///
    /// # Errors
    /// As for [`with_options`](Self::with_options).
    pub fn new(device: &CudaDevice, size: usize) -> Result<Self> {
        Self::with_options(device, size, &BackgroundPinnedOptions::default())
    }

    /// Maps `size` bytes for (and pinned through the context of) `device`, and starts the
    /// pinning threads; returns without waiting for any chunk.
    ///
    /// # Errors
    /// [`BoundsError::ZeroSize`] for `size == 0`; [`MemoryError::HostAlloc`] when the OS refuses
    /// the mapping; [`TransferError::WorkerSpawn`](crate::error::TransferError::WorkerSpawn) when
    /// it refuses a pinning thread; [`MemoryError::NumaPlacement`] for a NUMA node that does not
    /// exist. A chunk the driver refuses later is reported by the waits
    /// ([`MemoryError::PinningFailed`]) and by [`progress`](Self::progress).
    pub fn with_options(
        device: &CudaDevice,
        size: usize,
        options: &BackgroundPinnedOptions,
    ) -> Result<Self> {
        if size == 0 {
            return Err(Error::Bounds(BoundsError::ZeroSize {
                what: "background-pinned storage",
            }));
        }
        device.bind()?;
        let started = Instant::now();
        let mut mapping = HostMapping::new(
            size,
            &MappingOptions {
                threads: None,
                touch: false,
                ..options.memory.mapping()
            },
        )?;
        let chunk = pin_chunk(options.chunk, mapping.page_size());
        let base = mapping.as_mut_ptr() as usize;
        let shared = Arc::new(Shared {
            device: device.clone(),
            base,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            chunks: Chunks::new(size, chunk, started),
        });
        let tier = mapping.tier();
        let mut storage = Self {
            shared,
            threads: Vec::new(),
            mapping: ManuallyDrop::new(mapping),
            tier,
            wait_timeout: options.wait_timeout,
        };
        for t in 0..options.threads.clamp(1, storage.shared.chunks.count()) {
            let shared = Arc::clone(&storage.shared);
            let spawned = std::thread::Builder::new()
                .name(format!("kvmem-pin-{t}"))
                .spawn(move || shared.pin());
            match spawned {
                Ok(handle) => storage.threads.push(handle),
                // Drop stops and joins the threads started so far and undoes their chunks.
                Err(source) => return Err(Error::spawn("background pinning", source)),
            }
        }
        Ok(storage)
    }

    /// True once every chunk is page-locked (without taking the lock: the transfer engine asks
    /// before every GPU copy).
    pub(crate) fn is_fully_pinned(&self) -> bool {
        self.shared.chunks.pinned_bytes() == self.shared.chunks.len
    }

    /// True when every byte of `offset..offset + len` is page-locked.
    ///
    /// # Errors
    /// [`BoundsError::OutOfBounds`] for a range outside the pool.
    pub fn is_pinned(&self, offset: usize, len: usize) -> Result<bool> {
        let range = self.check(offset, len)?;
        let chunks = &self.shared.chunks;
        Ok(chunks.all_ready(&chunks.needed(once(range))))
    }

    /// Waits until the whole pool is page-locked, at most `timeout`.
    ///
    /// # Errors
    /// [`MemoryError::PinningTimeout`] when it is not by then; [`MemoryError::PinningFailed`]
    /// when a chunk was refused (it never will be).
    pub fn wait_pinned(&self, timeout: Duration) -> Result<()> {
        self.wait_range_pinned(0, self.shared.chunks.len, timeout)
    }

    /// Waits until every byte of `offset..offset + len` is page-locked, at most `timeout`.
    ///
    /// # Errors
    /// [`BoundsError::OutOfBounds`] for a range outside the pool; otherwise as for
    /// [`wait_pinned`](Self::wait_pinned).
    pub fn wait_range_pinned(&self, offset: usize, len: usize, timeout: Duration) -> Result<()> {
        let range = self.check(offset, len)?;
        let chunks = self.shared.chunks.needed(once(range.clone()));
        self.shared.chunks.wait(&chunks, range, timeout)
    }

    /// Waits, at most the pool's [`wait_timeout`](BackgroundPinnedOptions::wait_timeout), until
    /// every byte of the given absolute address ranges that lies inside the pool is pinned
    /// (bytes outside it are ignored): what the transfer engine calls before the GPU uses them.
    pub(crate) fn wait_addresses(
        &self,
        ranges: impl IntoIterator<Item = Range<usize>>,
    ) -> Result<()> {
        if self.is_fully_pinned() {
            return Ok(());
        }
        let (base, len) = (self.shared.base, self.shared.chunks.len);
        let mut span: Option<Range<usize>> = None;
        let inside: Vec<Range<usize>> = ranges
            .into_iter()
            .filter_map(|r| {
                let start = r.start.max(base);
                let end = r.end.min(base + len);
                (start < end).then(|| (start - base)..(end - base))
            })
            .inspect(|r| {
                let s = span.get_or_insert(r.clone());
                s.start = s.start.min(r.start);
                s.end = s.end.max(r.end);
            })
            .collect();
        let Some(span) = span else {
            return Ok(());
        };
        let chunks = self.shared.chunks.needed(inside);
        self.shared.chunks.wait(&chunks, span, self.wait_timeout)
    }

    /// How far page-locking has come, and how long its milestones took.
    pub fn progress(&self) -> PinProgress {
        self.shared.chunks.progress()
    }

    /// The ranges (absolute addresses) page-locked, or to be page-locked, by one
    /// `cuMemHostRegister` call each, in address order. A single CUDA copy must stay inside one.
    pub fn registered_ranges(&self) -> Vec<Range<usize>> {
        (0..self.shared.chunks.count())
            .map(|i| {
                let r = self.shared.chunks.range(i);
                self.shared.base + r.start..self.shared.base + r.end
            })
            .collect()
    }

    /// The pages backing the memory (transparent huge pages show as base pages here: they are
    /// only known once touched).
    pub fn page_tier(&self) -> PageTier {
        self.tier
    }

    fn check(&self, offset: usize, len: usize) -> Result<Range<usize>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.shared.chunks.len => Ok(offset..end),
            _ => Err(Error::Bounds(BoundsError::OutOfBounds {
                offset,
                len,
                size: self.shared.chunks.len,
            })),
        }
    }
}

/// The registration chunk for `asked` bytes over pages of `page` bytes: whole pages, at least
/// 2 MiB, at most [`MAX_HOST_REGISTRATION`](crate::cuda::MAX_HOST_REGISTRATION).
fn pin_chunk(asked: usize, page: usize) -> usize {
    let unit = page.max(2 << 20);
    let max = crate::cuda::MAX_HOST_REGISTRATION / unit * unit;
    asked.clamp(unit, max.max(unit)).div_ceil(unit) * unit
}

impl Drop for BackgroundPinnedStorage {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let mut clean = true;
        for handle in self.threads.drain(..) {
            // A thread that panicked may have left a chunk registered that `ready` does not
            // show: the mapping must not be unmapped then.
            clean &= handle.join().is_ok();
        }
        let ready: Vec<usize> = {
            let state = self.shared.chunks.lock();
            (0..state.ready.len()).filter(|&i| state.ready[i]).collect()
        };
        for i in ready {
            let start = self.shared.base + self.shared.chunks.range(i).start;
            // SAFETY: chunk `i` was registered by a pinning thread (it is marked ready) and not
            // unregistered since; every thread has been joined, so nothing registers or uses
            // it concurrently; the pool's owner has finished its GPU work (as for any free).
            if let Err(e) = unsafe { unregister_range(&self.shared.device, start) } {
                tracing::error!(error = %e, "could not unregister a pinned chunk");
                clean = false;
            }
        }
        // SAFETY: taken exactly once, here, and never used again.
        let mapping = unsafe { ManuallyDrop::take(&mut self.mapping) };
        if clean {
            drop(mapping);
        } else {
            mapping.leak();
        }
    }
}

impl fmt::Debug for BackgroundPinnedStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundPinnedStorage")
            .field("addr", &format_args!("{:#x}", self.shared.base))
            .field("size", &self.shared.chunks.len)
            .field("device", &self.shared.device.ordinal())
            .field("pinned_bytes", &self.shared.chunks.pinned_bytes())
            .finish()
    }
}

storage_region!(
    BackgroundPinnedStorage,
    |s| s.shared.base,
    s.shared.chunks.len,
    StorageKind::Pinned
);

impl HostMemory for BackgroundPinnedStorage {
    fn as_slice(&self) -> &[u8] {
        self.mapping.as_slice()
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // The pinning threads only populate and page-lock the range by address, which neither
        // reads nor writes its bytes, so this borrow is the only access to them.
        self.mapping.as_mut_slice()
    }
    fn page_locked_ranges(&self) -> Option<Vec<Range<usize>>> {
        Some(self.registered_ranges())
    }
}

#[cfg(test)]
#[path = "background_pinned_tests.rs"]
mod tests;
