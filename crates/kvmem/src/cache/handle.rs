//! Handles of cache operations and what they report.

use super::error::{CacheError, CacheResult};
use super::key::BlockKey;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What a finished [`store`](super::BlockCache::store) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreReport {
    /// Blocks copied into the host tier; loadable now.
    pub stored: usize,
    /// Keys already present (or being written by another store): skipped, counted as hits.
    pub present: usize,
    /// Keys not stored because every host slot was claimed or being written.
    pub no_space: Vec<BlockKey>,
    /// Blocks also written to disk by this store (write-through, or write-back of evicted
    /// blocks); their journal entries are appended.
    pub written_to_disk: usize,
}

/// What a finished [`load`](super::BlockCache::load) or
/// [`prefetch`](super::BlockCache::prefetch) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Blocks copied from the host tier.
    pub from_host: usize,
    /// Blocks read from disk (through host memory) and checked.
    pub from_disk: usize,
    /// Keys that were not present: their GPU blocks were not written.
    pub missing: Vec<BlockKey>,
    /// Keys whose disk bytes failed their checksum: dropped from the cache, not loaded.
    pub corrupt: Vec<BlockKey>,
    /// Disk keys not loaded because no host slot was free to stage them in (every one held by
    /// this or another operation): still on disk, retry with fewer keys.
    pub no_space: Vec<BlockKey>,
}

impl LoadReport {
    /// True when every key was loaded.
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty() && self.no_space.is_empty()
    }

    /// The keys not loaded (missing, corrupt, or without a staging slot).
    pub fn failed(&self) -> impl Iterator<Item = &BlockKey> {
        self.missing
            .iter()
            .chain(self.corrupt.iter())
            .chain(self.no_space.iter())
    }
}

/// The state an operation shares with its handle. The first outcome reported wins: a copy that
/// completes after its operation timed out or was cancelled never turns it into a success.
pub(crate) struct OpState<T> {
    result: Mutex<Option<CacheResult<T>>>,
    reported: AtomicBool,
    done: Condvar,
    cancel: AtomicBool,
}

impl<T> OpState<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            result: Mutex::new(None),
            reported: AtomicBool::new(false),
            done: Condvar::new(),
            cancel: AtomicBool::new(false),
        })
    }

    /// Reports the outcome unless one was reported already; true if this one was kept.
    pub(crate) fn report(&self, result: CacheResult<T>) -> bool {
        let mut slot = self.result.lock().unwrap_or_else(|e| e.into_inner());
        if self.reported.load(Ordering::Acquire) {
            return false;
        }
        *slot = Some(result);
        self.reported.store(true, Ordering::Release);
        drop(slot);
        self.done.notify_all();
        true
    }

    pub(crate) fn is_reported(&self) -> bool {
        self.reported.load(Ordering::Acquire)
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// A cache operation in flight: wait for it (optionally with a timeout), poll it, or cancel it,
/// through [`Completion`](crate::Completion).
///
/// Dropping the handle does not stop the operation; it finishes (or fails at its deadline) in
/// the background and the cache's state is updated either way.
#[must_use = "an operation's outcome is only known by waiting on its handle"]
pub struct CacheHandle<T> {
    state: Arc<OpState<T>>,
}

impl<T> CacheHandle<T> {
    pub(crate) fn new(state: Arc<OpState<T>>) -> Self {
        Self { state }
    }
}

impl<T> crate::Completion for CacheHandle<T> {
    type Output = T;

    /// True once the operation has an outcome.
    fn is_done(&self) -> bool {
        self.state.is_reported()
    }

    /// Waits up to `timeout` for the outcome; true if there is one.
    fn wait_timeout(&self, timeout: Duration) -> bool {
        let slot = self.state.result.lock().unwrap_or_else(|e| e.into_inner());
        let (_slot, _) = self
            .state
            .done
            .wait_timeout_while(slot, timeout, |_| !self.state.is_reported())
            .unwrap_or_else(|e| e.into_inner());
        self.state.is_reported()
    }

    /// Waits for the outcome. Every operation ends by its deadline, so this returns by then
    /// (plus the time the worker needs to notice).
    ///
    /// # Errors
    /// [`Error::Cache`](crate::Error::Cache) with [`CacheError::Timeout`],
    /// [`CacheError::Failed`] (with the keys that failed), [`CacheError::Cancelled`] or
    /// [`CacheError::ShutDown`].
    fn wait(self) -> crate::Result<T> {
        let slot = self.state.result.lock().unwrap_or_else(|e| e.into_inner());
        let mut slot = self
            .state
            .done
            .wait_while(slot, |_| !self.state.is_reported())
            .unwrap_or_else(|e| e.into_inner());
        slot.take().unwrap_or(Err(CacheError::ShutDown.into()))
    }

    /// Asks the operation to stop: it fails with [`CacheError::Cancelled`] unless it already
    /// has an outcome. Blocks it stored stay absent.
    fn cancel(&self) {
        self.state.cancel.store(true, Ordering::Relaxed);
    }
}

impl<T> std::fmt::Debug for CacheHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheHandle")
            .field("done", &self.state.is_reported())
            .finish()
    }
}
