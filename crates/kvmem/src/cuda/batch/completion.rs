//! The completion of a list of copies: an event recorded after them, polled or waited on, with
//! a deadline.

use super::{CopyMethod, CopyStream, DescBuffers, DeviceCopy, Location};
use crate::backoff::Backoff;
use crate::cuda::driver::{self, DeferredErrors};
use crate::error::{Error, Result, TransferError};
use cudarc::driver::CudaEvent;
use std::mem::ManuallyDrop;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The completion of one [`CopyStream::copy_async`]: poll it, wait for it (through
/// [`Completion`](crate::Completion)), or drop it (which waits).
///
/// Copies queued on a stream cannot be taken back: [`cancel`](crate::Completion::cancel) does
/// nothing, and the copies run to their end.
///
/// # Deadline
/// [`wait`](crate::Completion::wait) gives the copies
/// [`DEFAULT_DEADLINE`](crate::completion::DEFAULT_DEADLINE) plus
/// [`DEFAULT_DEADLINE_PER_GIB`](crate::completion::DEFAULT_DEADLINE_PER_GIB) per GiB they move,
/// from `copy_async` on. Copies still running then (the stream stalled: it waits for an event
/// that never completes, or the GPU hangs) are reported as
/// [`TransferError::TimedOut`], and the completion is quarantined: its event, its descriptor
/// buffers (counted in [`accounting`](crate::accounting)) and its hold on the stream are kept
/// for the rest of the process, never freed under the GPU. The copies have not finished, so
/// every range they name stays in use for good: never free nor reuse those ranges, and make a
/// new [`CopyStream`] (work queued on this one waits behind the stall).
/// [`wait_timeout`](crate::Completion::wait_timeout) waits for any time you choose and
/// quarantines nothing.
pub struct CopyCompletion {
    /// Dropped in [`Drop`] once the copies finished; never, when the completion is quarantined.
    parts: ManuallyDrop<Parts>,
    method: CopyMethod,
    /// What the copies move, for a timeout's report.
    bytes: u64,
    route: (Location, Location),
    started: Instant,
    /// When [`wait`](crate::Completion::wait) gives up.
    deadline: Instant,
    /// Drop, too, waits only until `deadline` (and quarantines copies still running then):
    /// completions of the GPU executor, whose transfer's memory its handle quarantines.
    bounded_drop: bool,
    state: Mutex<CopyState>,
}

/// What a quarantined completion leaves in place, in drop order.
struct Parts {
    event: CudaEvent,
    /// After `event`: logs what destroying it recorded.
    _deferred: DeferredErrors,
    stream: CopyStream,
}

/// What a [`CopyCompletion`] learned so far.
struct CopyState {
    /// The event completed (successfully or not); the descriptors went back to the stream.
    finished: bool,
    /// The failure an `is_done` saw, kept for `wait`.
    failed: Option<Error>,
    descs: Option<DescBuffers>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Host => f.write_str("host"),
            Location::Device(d) => write!(f, "device {d}"),
        }
    }
}

impl CopyCompletion {
    /// Records the completion of the copies just enqueued on `stream`: `bytes` from `route.0`
    /// to `route.1`.
    pub(super) fn record(
        stream: CopyStream,
        method: CopyMethod,
        descs: Option<DescBuffers>,
        bytes: u64,
        route: (Location, Location),
    ) -> Result<Self> {
        let ctx = stream.inner.device.context();
        // Without flags cudarc creates it with timing disabled, the cheap kind.
        let event = match ctx.new_event(None) {
            Ok(event) => event,
            Err(e) => {
                if let Some(d) = descs {
                    // Synchronize before the descriptors are reused.
                    driver::log_failure(
                        "synchronize the copy stream",
                        stream.inner.stream.synchronize(),
                    );
                    stream.give_back(d);
                }
                return Err(driver::error("create an event", e));
            }
        };
        let started = Instant::now();
        let limit = crate::completion::deadline_for(
            crate::completion::DEFAULT_DEADLINE,
            crate::completion::DEFAULT_DEADLINE_PER_GIB,
            usize::try_from(bytes).unwrap_or(usize::MAX),
        );
        let completion = Self {
            parts: ManuallyDrop::new(Parts {
                event,
                _deferred: DeferredErrors::new(ctx.clone(), "release a copy completion's event"),
                stream,
            }),
            method,
            bytes,
            route,
            started,
            deadline: crate::completion::instant_after(started, limit),
            bounded_drop: false,
            state: Mutex::new(CopyState {
                finished: false,
                failed: None,
                descs,
            }),
        };
        completion
            .parts
            .event
            .record(&completion.parts.stream.inner.stream)
            .map_err(|e| driver::error("record an event", e))?;
        Ok(completion)
    }

    /// The completion with `deadline` (a transfer's) for [`wait`](crate::Completion::wait) and
    /// for its drop, which then quarantines copies still running at `deadline` instead of
    /// waiting for them: for an owner that keeps the copies' memory for good when they time out.
    pub(crate) fn until(mut self, deadline: Instant) -> Self {
        self.deadline = deadline;
        self.bounded_drop = true;
        self
    }

    /// The method the copies ran with.
    pub fn method(&self) -> CopyMethod {
        self.method
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CopyState> {
        // Plain flags updated in single assignments: a poisoned lock holds a consistent value.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queries the event once: true once the copies finished, successfully or not.
    fn query(&self, state: &mut CopyState) -> bool {
        if state.finished || state.failed.is_some() {
            return true;
        }
        if let Err(e) = self.parts.stream.inner.device.bind() {
            state.failed = Some(e);
            return true;
        }
        match self.parts.event.try_is_complete() {
            Ok(true) => {
                self.finish(state);
                true
            }
            Ok(false) => false,
            Err(e) => {
                state.failed = Some(driver::error("query copy completion", e));
                true
            }
        }
    }

    /// Blocks until the event completes (for as long as that takes) and reports how the copies
    /// went.
    fn synchronize(&self, state: &mut CopyState) -> Result<()> {
        if state.finished {
            return state.failed.take().map_or(Ok(()), Err);
        }
        let waited = self.parts.stream.inner.device.bind().and_then(|()| {
            self.parts
                .event
                .synchronize()
                .map_err(|e| driver::error("wait for copies", e))
        });
        // A failure an earlier query saw comes first.
        let result = match state.failed.take() {
            Some(e) => Err(e),
            None => waited,
        };
        self.settle(state, result)
    }

    /// Ends the wait with `result`: the descriptors go back to the stream after a success and
    /// are never reused after a failure.
    fn settle(&self, state: &mut CopyState, result: Result<()>) -> Result<()> {
        if result.is_err() {
            // The copies may still read the descriptors: never reuse them (a small leak on a
            // context that has failed anyway).
            state.finished = true;
            if state.descs.take().is_some() {
                tracing::warn!("leaking a copy-descriptor buffer after a failed wait");
            }
            return result;
        }
        self.finish(state);
        result
    }

    fn finish(&self, state: &mut CopyState) {
        state.finished = true;
        if let Some(d) = state.descs.take() {
            self.parts.stream.give_back(d);
        }
    }

    /// Polls until the copies finished or `deadline` passed: their outcome, or `None` while they
    /// still run. Never blocks past `deadline`.
    fn finish_by(&self, deadline: Instant) -> Option<Result<()>> {
        let mut backoff = Backoff::new();
        loop {
            {
                let mut state = self.lock();
                if self.query(&mut state) {
                    if state.finished {
                        return Some(state.failed.take().map_or(Ok(()), Err));
                    }
                    // The query failed: report it without waiting on a context that failed.
                    let failed = state.failed.take().map_or(Ok(()), Err);
                    return Some(self.settle(&mut state, failed));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            backoff.snooze();
        }
    }

    /// For copies still running past the deadline: counts what the completion leaves in place
    /// (its descriptor buffers) as quarantined, marks the stream stalled, and returns the
    /// timeout to report. The caller then leaks the parts.
    fn leak(&self) -> TransferError {
        let state = self.lock();
        let (held_buffers, held_bytes) = state.descs.as_ref().map_or((0, 0), |d| {
            // A pinned and a device buffer of `capacity` descriptors each.
            (
                2,
                2 * (d.capacity * std::mem::size_of::<DeviceCopy>()) as u64,
            )
        });
        drop(state);
        crate::accounting::quarantined(held_buffers as u64, held_bytes);
        self.parts.stream.mark_stalled();
        let error = TransferError::TimedOut {
            path: format!(
                "CUDA copy list ({} -> {}; the GPU may still use every range it names: keep them \
                 allocated for good)",
                self.route.0, self.route.1
            ),
            bytes: usize::try_from(self.bytes).unwrap_or(usize::MAX),
            waited: self.deadline.saturating_duration_since(self.started),
            held_buffers,
            held_bytes,
        };
        tracing::error!(error = %error, "CUDA copies timed out; their stream is stalled");
        error
    }

    /// Leaves the copies to their stalled stream for good (see [`leak`](Self::leak)) and returns
    /// the timeout.
    fn quarantine(self) -> Error {
        let error = self.leak();
        // Never dropped: the event, the descriptors and the stream stay for the rest of the
        // process, since the GPU may still run the copies.
        std::mem::forget(self);
        Error::Transfer(error)
    }
}

impl crate::Completion for CopyCompletion {
    type Output = ();

    fn is_done(&self) -> bool {
        let mut state = self.lock();
        self.query(&mut state)
    }

    fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new();
        loop {
            if self.is_done() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            backoff.snooze();
        }
    }

    /// Waits for the copies to finish, but not past their [deadline](CopyCompletion#deadline).
    ///
    /// # Errors
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) if a copy failed;
    /// [`TransferError::TimedOut`] when the copies were still running at the deadline: the
    /// completion is then quarantined and every range the copies name stays in use for good.
    fn wait(self) -> Result<()> {
        match self.finish_by(self.deadline) {
            Some(result) => result,
            None => Err(self.quarantine()),
        }
    }

    /// Does nothing: copies queued on a CUDA stream cannot be taken back.
    fn cancel(&self) {}
}

impl Drop for CopyCompletion {
    fn drop(&mut self) {
        let finished = if self.bounded_drop {
            self.finish_by(self.deadline).map(|r| {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "copies failed after their completion was dropped");
                }
            })
        } else {
            let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
            let mut state = std::mem::replace(
                state,
                CopyState {
                    finished: true,
                    failed: None,
                    descs: None,
                },
            );
            if let Err(e) = self.synchronize(&mut state) {
                tracing::warn!(error = %e, "copies failed after their completion was dropped");
            }
            Some(())
        };
        if finished.is_none() {
            // Still running at the deadline: the parts stay for good.
            let _ = self.leak();
            return;
        }
        // SAFETY: `parts` is dropped once, here, at the end of the completion's life; nothing
        // uses it afterwards.
        unsafe { ManuallyDrop::drop(&mut self.parts) };
    }
}
