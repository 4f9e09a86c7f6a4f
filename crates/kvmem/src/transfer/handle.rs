//! The handle a submitted transfer returns, and the executor's side of it.

use super::plan::{TransferPath, TransferPlan};
use super::worker::Health;
use crate::error::{Error, Result, TransferError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a finished transfer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferStats {
    /// The path it crossed.
    pub path: TransferPath,
    /// Bytes copied.
    pub bytes: usize,
    /// Copies after merging.
    pub ops: usize,
    /// From submission to completion.
    pub elapsed: Duration,
}

enum State {
    Running { detached: bool },
    Done(Result<TransferStats>),
    Taken,
}

/// State shared by a [`TransferHandle`] and the executor running its transfer.
pub(crate) struct Job {
    state: Mutex<State>,
    done: Condvar,
    /// Set (after `state`) once the transfer finished: what a waiter spins on before it sleeps.
    finished: AtomicBool,
    cancel: AtomicBool,
    path: TransferPath,
    bytes: usize,
    ops: usize,
    submitted: Instant,
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a plain enum updated in single assignments; a poisoned lock holds a
        // consistent value.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once the handle's [`cancel`](crate::Completion::cancel) was called.
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn finish(&self, result: Result<()>) {
        let result = result.map(|()| TransferStats {
            path: self.path,
            bytes: self.bytes,
            ops: self.ops,
            elapsed: self.submitted.elapsed(),
        });
        let mut state = self.lock();
        if let State::Running { detached: true } = *state
            && let Err(e) = &result
        {
            tracing::warn!(path = %self.path, error = %e, "a transfer whose handle was dropped failed");
        }
        *state = State::Done(result);
        self.finished.store(true, Ordering::Release);
        drop(state);
        self.done.notify_all();
    }

    /// Spins a little for the transfer to finish before a waiter goes to sleep on the condition
    /// variable: a short GPU copy ends within microseconds, and waking a sleeping thread costs
    /// about as much again (see [`backoff::handoff_spin`](crate::backoff::handoff_spin)). True if
    /// it finished meanwhile.
    fn spin_for_finish(&self, limit: Duration) -> bool {
        crate::backoff::spin_until(limit, || self.finished.load(Ordering::Acquire))
    }
}

/// A transfer handed to an executor: the plan (which keeps the memory alive) and the
/// completion to report through.
pub(crate) struct Work {
    /// What to copy; the executor drops it once no copy or I/O into it can still be running.
    pub(crate) plan: TransferPlan,
    /// Where the outcome goes.
    pub(crate) completion: Completion,
}

impl Work {
    /// Reports how a disk backend ran this work's plan and tells the backend's worker what to do
    /// next. `Ok(result)`: every request has settled, so the plan (and the memory and files it
    /// keeps alive) is dropped before `result` is reported. `Err(error)`: I/O may still be in
    /// flight into the plan's buffers, so they are quarantined (kept for the rest of the
    /// process, never freed, counted in [`accounting`](crate::accounting)); `error` is
    /// reported and the backend is [`Broken`](Health::Broken), to be rebuilt.
    pub(crate) fn settle(
        plan: TransferPlan,
        completion: Completion,
        outcome: std::result::Result<Result<()>, Error>,
    ) -> Health {
        match outcome {
            Ok(result) => {
                drop(plan);
                completion.complete(result);
                Health::Ok
            }
            Err(error) => {
                plan.quarantine();
                completion.complete(Err(error));
                Health::Broken
            }
        }
    }
}

/// The executor's side of a [`TransferHandle`]. Dropping it without
/// [`complete`](Self::complete) (an executor that panicked or was shut down) reports
/// [`TransferError::Aborted`].
pub(crate) struct Completion {
    job: Arc<Job>,
    reported: bool,
}

impl Completion {
    /// True once the handle asked the transfer to stop.
    pub(crate) fn cancelled(&self) -> bool {
        self.job.cancelled()
    }

    /// Reports the outcome. Drop the plan before calling this, so that a caller who waits and
    /// then drops its own references sees the memory and files freed.
    pub(crate) fn complete(mut self, result: Result<()>) {
        self.reported = true;
        self.job.finish(result);
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.reported {
            self.job
                .finish(Err(Error::Transfer(TransferError::Aborted)));
        }
    }
}

/// A submitted transfer: wait for it (optionally with a timeout), poll it, or cancel it, through
/// [`Completion`](crate::Completion).
///
/// Dropping the handle does not stop the transfer: it runs to completion in the background, and
/// the executor keeps every source and destination buffer alive until then, so no copy ever runs
/// into freed memory. A failure nobody waits for is logged with `tracing`.
#[must_use = "a transfer's result is only known by waiting on its handle"]
pub struct TransferHandle {
    job: Arc<Job>,
}

impl TransferHandle {
    /// A handle and the executor's side for `plan`.
    pub(crate) fn new(plan: TransferPlan) -> (Self, Work) {
        let (handle, completion) = Self::start(plan.path(), plan.total_bytes(), plan.op_count());
        (handle, Work { plan, completion })
    }

    /// A handle and the executor's side for a transfer of `bytes` in `ops` copies over `path`
    /// that is not described by a [`TransferPlan`] (a NIXL transfer to or from a peer).
    pub(crate) fn start(path: TransferPath, bytes: usize, ops: usize) -> (Self, Completion) {
        let job = Arc::new(Job {
            state: Mutex::new(State::Running { detached: false }),
            done: Condvar::new(),
            finished: AtomicBool::new(false),
            cancel: AtomicBool::new(false),
            path,
            bytes,
            ops,
            submitted: Instant::now(),
        });
        let completion = Completion {
            job: Arc::clone(&job),
            reported: false,
        };
        (Self { job }, completion)
    }

    /// The path the transfer crosses.
    pub fn path(&self) -> TransferPath {
        self.job.path
    }

    /// Bytes the transfer moves.
    pub fn bytes(&self) -> usize {
        self.job.bytes
    }
}

impl crate::Completion for TransferHandle {
    type Output = TransferStats;

    fn is_done(&self) -> bool {
        !matches!(*self.job.lock(), State::Running { .. })
    }

    fn wait_timeout(&self, timeout: Duration) -> bool {
        if self
            .job
            .spin_for_finish(timeout.min(crate::backoff::handoff_spin()))
        {
            return true;
        }
        let state = self.job.lock();
        let (state, _) = self
            .job
            .done
            .wait_timeout_while(state, timeout, |s| matches!(s, State::Running { .. }))
            .unwrap_or_else(|e| e.into_inner());
        !matches!(*state, State::Running { .. })
    }

    /// Waits for the transfer to finish and returns its outcome.
    ///
    /// # Errors
    /// What the transfer failed with: [`IoError::Transfer`](crate::error::IoError::Transfer),
    /// [`IoError::Short`](crate::error::IoError::Short), [`TransferError::Failed`] (NIXL),
    /// [`TransferError::Cancelled`], [`TransferError::Aborted`].
    fn wait(self) -> Result<TransferStats> {
        let _ = self.job.spin_for_finish(crate::backoff::handoff_spin());
        let state = self.job.lock();
        let mut state = self
            .job
            .done
            .wait_while(state, |s| matches!(s, State::Running { .. }))
            .unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *state, State::Taken) {
            State::Done(result) => result,
            // `wait` consumes the only handle, so the result cannot have been taken before.
            State::Taken | State::Running { .. } => Err(Error::Transfer(TransferError::Aborted)),
        }
    }

    /// Asks the transfer to stop early. Copies already running finish (for disk, the I/O in
    /// flight completes); the rest are skipped and the transfer reports
    /// [`TransferError::Cancelled`] unless it had already finished.
    fn cancel(&self) {
        self.job.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for TransferHandle {
    fn drop(&mut self) {
        if let State::Running { detached } = &mut *self.job.lock() {
            *detached = true;
        }
    }
}

impl std::fmt::Debug for TransferHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferHandle")
            .field("path", &self.job.path)
            .field("bytes", &self.job.bytes)
            .field("finished", &crate::Completion::is_done(self))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Completion as _;

    /// A waiter sees the outcome whether the transfer ends while it spins or after it went to
    /// sleep, and `wait_timeout` reports both states.
    #[test]
    fn waits_see_a_finish_during_and_after_the_spin() {
        for delay in [Duration::ZERO, Duration::from_millis(20)] {
            let (handle, completion) = TransferHandle::start(TransferPath::HostToHost, 10, 1);
            let finisher = std::thread::spawn(move || {
                std::thread::sleep(delay);
                completion.complete(Ok(()));
            });
            assert_eq!(handle.wait().unwrap().bytes, 10);
            finisher.join().unwrap();
        }
        // The spin itself (which `handoff_spin` turns off on machines of fewer than four CPUs)
        // ends when the executor reports.
        let (handle, completion) = TransferHandle::start(TransferPath::HostToHost, 10, 1);
        let finisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1));
            completion.complete(Ok(()));
        });
        assert!(handle.job.spin_for_finish(Duration::from_secs(30)));
        assert!(handle.is_done());
        finisher.join().unwrap();
        let (handle, completion) = TransferHandle::start(TransferPath::HostToHost, 10, 1);
        assert!(!handle.wait_timeout(Duration::from_millis(1)));
        assert!(!handle.is_done());
        completion.complete(Err(Error::Transfer(TransferError::Aborted)));
        assert!(handle.wait_timeout(Duration::from_millis(1)));
        assert!(matches!(
            handle.wait(),
            Err(Error::Transfer(TransferError::Aborted))
        ));
    }
}
