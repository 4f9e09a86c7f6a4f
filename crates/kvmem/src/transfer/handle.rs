//! The handle a submitted transfer returns, and the executor's side of it.

use super::plan::{TransferPath, TransferPlan};
use super::worker::{Deadlined, Health};
use crate::descriptor::Buffer;
use crate::error::{Error, Result, TransferError};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// Copies after merging (a plan whose rest is planned after submission adds its copies).
    ops: AtomicUsize,
    submitted: Instant,
    /// When the transfer is reported [`TransferError::TimedOut`] if it has not finished.
    deadline: Instant,
    /// Clones of the buffers the transfer uses: dropped when it finishes, leaked (quarantined)
    /// when it misses its deadline, so that memory a stalled backend may still touch is never
    /// freed, whatever the executor does later.
    held: Mutex<Vec<Buffer>>,
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

    /// Reports the executor's outcome, unless the transfer already timed out (the first outcome
    /// wins: a copy that ends after its deadline never turns the timeout into a success).
    fn finish(&self, result: Result<()>) {
        let result = result.map(|()| TransferStats {
            path: self.path,
            bytes: self.bytes,
            ops: self.ops.load(Ordering::Relaxed),
            elapsed: self.submitted.elapsed(),
        });
        let mut state = self.lock();
        let State::Running { detached } = *state else {
            drop(state);
            tracing::warn!(path = %self.path, late = ?result.as_ref().err().map(ToString::to_string), "a transfer ended after its deadline; it was reported as timed out and its buffers stay quarantined");
            return;
        };
        if detached && let Err(e) = &result {
            tracing::warn!(path = %self.path, error = %e, "a transfer whose handle was dropped failed");
        }
        // The executor has stopped touching the memory: release the clones before reporting,
        // so that a caller who waits and then drops its own references sees the memory freed.
        drop(std::mem::take(
            &mut *self.held.lock().unwrap_or_else(|e| e.into_inner()),
        ));
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

    /// Under the state lock: if the transfer still runs past its deadline, asks it to stop,
    /// quarantines the buffers it uses and reports [`TransferError::TimedOut`].
    fn expire_if_late(&self, state: &mut State) {
        if !matches!(state, State::Running { .. }) || Instant::now() < self.deadline {
            return;
        }
        self.expire(state);
    }

    /// Under the state lock, for a transfer still running: asks it to stop, quarantines the
    /// buffers it uses and reports [`TransferError::TimedOut`].
    fn expire(&self, state: &mut State) {
        self.cancel.store(true, Ordering::Relaxed);
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()));
        let held_bytes: u64 = held
            .iter()
            .map(|b| crate::MemoryDescriptor::size(b) as u64)
            .sum();
        crate::accounting::quarantined(held.len() as u64, held_bytes);
        let error = TransferError::TimedOut {
            path: self.path.to_string(),
            bytes: self.bytes,
            waited: self.deadline.saturating_duration_since(self.submitted),
            held_buffers: held.len(),
            held_bytes,
        };
        tracing::error!(error = %error, "transfer timed out");
        // Never freed: the backend may still read or write them.
        std::mem::forget(held);
        *state = State::Done(Err(Error::Transfer(error)));
        self.done.notify_all();
    }

    /// Waits on the condition variable until the transfer is no longer running or `until`
    /// (capped at the deadline, where it is expired) has passed.
    fn wait_until<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        until: Option<Instant>,
    ) -> MutexGuard<'a, State> {
        loop {
            self.expire_if_late(&mut state);
            if !matches!(*state, State::Running { .. }) {
                return state;
            }
            let now = Instant::now();
            let stop = until.map_or(self.deadline, |u| u.min(self.deadline));
            if until.is_some_and(|u| now >= u) {
                return state;
            }
            let (s, _) = self
                .done
                .wait_timeout(state, stop.saturating_duration_since(now))
                .unwrap_or_else(|e| e.into_inner());
            state = s;
        }
    }
}

impl Deadlined for Work {
    fn deadline(&self) -> Instant {
        self.completion.deadline()
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

    /// When the transfer times out.
    pub(crate) fn deadline(&self) -> Instant {
        self.job.deadline
    }

    /// The transfer's copies after merging, once its plan is complete (a plan whose rest was
    /// planned after submission, `PlanRest`, knew only its head's when the handle was made).
    pub(crate) fn set_ops(&self, ops: usize) {
        self.job.ops.store(ops, Ordering::Relaxed);
    }

    /// Reports the outcome. Drop the plan before calling this, so that a caller who waits and
    /// then drops its own references sees the memory and files freed.
    pub(crate) fn complete(mut self, result: Result<()>) {
        self.reported = true;
        self.job.finish(result);
    }

    /// Reports [`TransferError::TimedOut`] and quarantines the buffers the transfer uses (if its
    /// handle has not reported an outcome yet): for an executor that gave up on a transfer past
    /// its deadline, whose backend may still touch its memory. Unlike
    /// [`complete`](Self::complete) with an error, this never releases the buffers, so the
    /// executor may drop the plan afterwards.
    pub(crate) fn time_out(mut self) {
        self.reported = true;
        let mut state = self.job.lock();
        if matches!(*state, State::Running { .. }) {
            self.job.expire(&mut state);
        }
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
///
/// # Deadline
/// Every transfer has a deadline, set at submission from
/// [`EngineConfig::deadline`](super::EngineConfig::deadline) and
/// [`deadline_per_gib`](super::EngineConfig::deadline_per_gib). No verb blocks past it: a
/// transfer still running then (a stalled disk, GPU or peer) is asked to stop and reported as
/// [`TransferError::TimedOut`], which says how many buffers (and bytes) it holds. Those buffers
/// are quarantined — kept allocated, their files open, for the rest of the process, and counted
/// in [`accounting::snapshot`](crate::accounting::snapshot) — because the backend may still
/// touch them; an outcome the executor reports later is ignored. After a timeout the caller may
/// reuse nothing the transfer named: not its destination blocks (they may still be written),
/// not its source blocks (they may still be read). Drop its layouts (the memory stays
/// allocated) and use fresh ones; the engine itself goes on taking transfers.
#[must_use = "a transfer's result is only known by waiting on its handle"]
pub struct TransferHandle {
    job: Arc<Job>,
}

impl TransferHandle {
    /// A handle and the executor's side for `plan`.
    /// The transfer times out `limit` after submission.
    pub(crate) fn new(plan: TransferPlan, limit: Duration) -> (Self, Work) {
        let (handle, completion) =
            Self::start(plan.path(), plan.total_bytes(), plan.op_count(), limit);
        *handle.job.held.lock().unwrap_or_else(|e| e.into_inner()) = plan.buffers().to_vec();
        (handle, Work { plan, completion })
    }

    /// A handle and the executor's side for a transfer of `bytes` in `ops` copies over `path`
    /// that is not described by a [`TransferPlan`] (a NIXL transfer to or from a peer, whose
    /// request keeps its own buffers), timing out `limit` after submission.
    pub(crate) fn start(
        path: TransferPath,
        bytes: usize,
        ops: usize,
        limit: Duration,
    ) -> (Self, Completion) {
        let submitted = Instant::now();
        let job = Arc::new(Job {
            state: Mutex::new(State::Running { detached: false }),
            done: Condvar::new(),
            finished: AtomicBool::new(false),
            cancel: AtomicBool::new(false),
            path,
            bytes,
            ops: AtomicUsize::new(ops),
            submitted,
            deadline: crate::completion::instant_after(submitted, limit),
            held: Mutex::new(Vec::new()),
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

    /// When the transfer is reported as [`TransferError::TimedOut`] if it has not finished.
    pub fn deadline(&self) -> Instant {
        self.job.deadline
    }
}

impl crate::Completion for TransferHandle {
    type Output = TransferStats;

    fn is_done(&self) -> bool {
        let mut state = self.job.lock();
        self.job.expire_if_late(&mut state);
        !matches!(*state, State::Running { .. })
    }

    fn wait_timeout(&self, timeout: Duration) -> bool {
        if self
            .job
            .spin_for_finish(timeout.min(crate::backoff::handoff_spin()))
        {
            return true;
        }
        let until = Instant::now().checked_add(timeout);
        let state = self
            .job
            .wait_until(self.job.lock(), until.or(Some(self.job.deadline)));
        !matches!(*state, State::Running { .. })
    }

    /// Waits for the transfer to finish and returns its outcome.
    ///
    /// # Errors
    /// What the transfer failed with: [`IoError::Transfer`](crate::error::IoError::Transfer),
    /// [`IoError::Short`](crate::error::IoError::Short), [`TransferError::Failed`] (NIXL),
    /// [`TransferError::Cancelled`], [`TransferError::Aborted`], and
    /// [`TransferError::TimedOut`] at the transfer's [deadline](TransferHandle#deadline): this
    /// never blocks past it.
    fn wait(self) -> Result<TransferStats> {
        let _ = self.job.spin_for_finish(crate::backoff::handoff_spin());
        let mut state = self.job.wait_until(self.job.lock(), None);
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

    /// An executor that gives up on a stalled transfer (`time_out`) never releases its buffers:
    /// the handle reports `TimedOut` and quarantines them, and the executor may drop its plan
    /// (the GPU executor does, after a stalled stream).
    #[test]
    fn an_executor_time_out_reports_a_timeout_and_quarantines_the_buffers() {
        use crate::{MemoryDescriptor, StorageKind, SystemStorage};
        const BYTES: usize = 2 * crate::PAGE_SIZE;
        let src = Buffer::new(SystemStorage::new(BYTES).unwrap());
        let dst = Buffer::new(SystemStorage::new(BYTES).unwrap());
        let op = super::super::plan::CopyOp {
            src: src.addr(),
            dst: dst.addr(),
            len: BYTES,
        };
        let plan = TransferPlan::copies(
            (StorageKind::System, StorageKind::System),
            vec![op],
            vec![src.clone(), dst.clone()],
        )
        .unwrap();
        let (handle, work) = TransferHandle::new(plan, Duration::from_secs(600));
        let before = crate::accounting::snapshot();
        let Work { plan, completion } = work;
        completion.time_out();
        drop(plan);
        let after = crate::accounting::snapshot();
        assert!(after.quarantined_buffers >= before.quarantined_buffers + 2);
        match handle.wait() {
            Err(Error::Transfer(TransferError::TimedOut {
                held_buffers,
                held_bytes,
                ..
            })) => assert_eq!((held_buffers, held_bytes), (2, 2 * BYTES as u64)),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    /// A waiter sees the outcome whether the transfer ends while it spins or after it went to
    /// sleep, and `wait_timeout` reports both states.
    #[test]
    fn waits_see_a_finish_during_and_after_the_spin() {
        for delay in [Duration::ZERO, Duration::from_millis(20)] {
            let (handle, completion) =
                TransferHandle::start(TransferPath::HostToHost, 10, 1, Duration::from_secs(600));
            let finisher = std::thread::spawn(move || {
                std::thread::sleep(delay);
                completion.complete(Ok(()));
            });
            assert_eq!(handle.wait().unwrap().bytes, 10);
            finisher.join().unwrap();
        }
        // The spin itself (which `handoff_spin` turns off on machines of fewer than four CPUs)
        // ends when the executor reports.
        let (handle, completion) =
            TransferHandle::start(TransferPath::HostToHost, 10, 1, Duration::from_secs(600));
        let finisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1));
            completion.complete(Ok(()));
        });
        assert!(handle.job.spin_for_finish(Duration::from_secs(30)));
        assert!(handle.is_done());
        finisher.join().unwrap();
        let (handle, completion) =
            TransferHandle::start(TransferPath::HostToHost, 10, 1, Duration::from_secs(600));
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
